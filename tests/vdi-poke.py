#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
"""Inspect and corrupt VDI images for tests/vdi.bats (layout: QEMU's
block/vdi.c VdiHeader, little-endian).  Python 3 standard library only.

  vdi-poke.py IMG header              print "field value" lines (decimal)
  vdi-poke.py IMG set FIELD VALUE     set a header field (name as printed)
  vdi-poke.py IMG bmap INDEX [VALUE]  print (hex) or set a block map entry
  vdi-poke.py IMG uuid FIELD [HEX]    print (32 hex digits, as stored) or set
                                      a 16-byte UUID field

Numbers accept 0x prefixes.
"""

import struct
import sys

FIELDS = [  # name, offset, struct format
    ("signature", 0x40, "<I"), ("version", 0x44, "<I"),
    ("header_size", 0x48, "<I"), ("image_type", 0x4c, "<I"),
    ("image_flags", 0x50, "<I"), ("offset_bmap", 0x154, "<I"),
    ("offset_data", 0x158, "<I"), ("sector_size", 0x168, "<I"),
    ("disk_size", 0x170, "<Q"), ("block_size", 0x178, "<I"),
    ("block_extra", 0x17c, "<I"), ("blocks_in_image", 0x180, "<I"),
    ("blocks_allocated", 0x184, "<I"),
]
UUIDS = {"uuid_image": 0x188, "uuid_last_snap": 0x198, "uuid_link": 0x1a8,
         "uuid_parent": 0x1b8}


def num(s):
    return int(s, 0)


def field(name):
    for f in FIELDS:
        if f[0] == name:
            return f
    sys.exit("vdi-poke.py: unknown field %s" % name)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    path, cmd, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    with open(path, "r+b") as f:
        def get(off, fmt):
            f.seek(off)
            return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

        def put(off, fmt, value):
            f.seek(off)
            f.write(struct.pack(fmt, value))

        if cmd == "header":
            for name, off, fmt in FIELDS:
                print(name, get(off, fmt))
        elif cmd == "set":
            _, off, fmt = field(args[0])
            put(off, fmt, num(args[1]))
        elif cmd == "bmap":
            off = get(0x154, "<I") + 4 * num(args[0])
            if len(args) > 1:
                put(off, "<I", num(args[1]))
            else:
                print(hex(get(off, "<I")))
        elif cmd == "uuid" and len(args) == 1:
            f.seek(UUIDS[args[0]])
            print(f.read(16).hex())
        elif cmd == "uuid":
            f.seek(UUIDS[args[0]])
            f.write(bytes.fromhex(args[1]))
        else:
            sys.exit(__doc__)


if __name__ == "__main__":
    main()
