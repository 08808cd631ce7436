#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
"""Inspect and corrupt qcow2 images for tests/corrupt.bats, the way QEMU's
iotests do with poke_file and qcow2.py.  Python 3 standard library only.

  qcow2-poke.py IMG header                 print "field value" lines, plus the
                                           derived cluster_size, ext_end,
                                           l1_entry (address of L1[0]) ...
  qcow2-poke.py IMG set FIELD VALUE        set a header field (name as printed)
  qcow2-poke.py IMG poke OFF SIZE VALUE    big-endian integer of SIZE bytes
  qcow2-poke.py IMG bytes OFF HEX          raw bytes ("deadbeef")
  qcow2-poke.py IMG feature SET BIT        set a feature bit; SET is
                                           incompatible, compatible or autoclear
  qcow2-poke.py IMG exts                   list extensions: "type offset len"
  qcow2-poke.py IMG add-ext TYPE LEN HEX   append an extension before the end
                                           marker with this (maybe false) len
  qcow2-poke.py IMG l1 INDEX               L1 entry (hex)
  qcow2-poke.py IMG l2addr GUEST_OFF       file offset of the L2 entry that
                                           maps GUEST_OFF
  qcow2-poke.py IMG l2 GUEST_OFF           that L2 entry (hex)
  qcow2-poke.py IMG compressed GUEST_OFF HOST_OFF NSEC
                                           make GUEST_OFF's L2 entry a
                                           compressed descriptor
  qcow2-poke.py IMG append-deflate CLUSTER_MULT
                                           append a raw deflate stream that
                                           inflates to CLUSTER_MULT clusters of
                                           0x5a; print "offset nsec"
  qcow2-poke.py IMG append HEX|@FILE       append bytes; print their offset

Numbers accept 0x prefixes.
"""

import struct
import sys
import zlib

FIELDS = [  # name, offset, size
    ("magic", 0, 4), ("version", 4, 4), ("backing_file_offset", 8, 8),
    ("backing_file_size", 16, 4), ("cluster_bits", 20, 4), ("size", 24, 8),
    ("crypt_method", 32, 4), ("l1_size", 36, 4), ("l1_table_offset", 40, 8),
    ("refcount_table_offset", 48, 8), ("refcount_table_clusters", 56, 4),
    ("nb_snapshots", 60, 4), ("snapshots_offset", 64, 8),
    ("incompatible_features", 72, 8), ("compatible_features", 80, 8),
    ("autoclear_features", 88, 8), ("refcount_order", 96, 4),
    ("header_length", 100, 4), ("compression_type", 104, 1),
]
FEATURE_OFF = {"incompatible": 72, "compatible": 80, "autoclear": 88}


def num(s):
    return int(s, 0)


class Image:
    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            self.data = bytearray(f.read())

    def get(self, off, size):
        return int.from_bytes(self.data[off:off + size].ljust(size, b"\0"), "big")

    def put(self, off, size, value):
        raw = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "big")
        self.put_bytes(off, raw)

    def put_bytes(self, off, raw):
        if off + len(raw) > len(self.data):
            self.data.extend(b"\0" * (off + len(raw) - len(self.data)))
        self.data[off:off + len(raw)] = raw

    def save(self):
        with open(self.path, "r+b") as f:
            f.seek(0)
            f.write(self.data)

    def field(self, name):
        for n, off, size in FIELDS:
            if n == name:
                return off, size
        sys.exit("unknown field " + name)

    def h(self, name):
        return self.get(*self.field(name))

    @property
    def cluster_size(self):
        return 1 << self.h("cluster_bits")

    @property
    def l2_entry_size(self):
        v3 = self.h("version") >= 3
        return 16 if v3 and self.h("incompatible_features") & 16 else 8

    def ext_area(self):
        start = 72 if self.h("version") == 2 else self.h("header_length")
        end = self.h("backing_file_offset") or self.cluster_size
        return start, end

    def exts(self):
        """Yield (type, offset of record, len) until the end marker."""
        off, end = self.ext_area()
        while off + 8 <= end:
            typ, ln = struct.unpack(">II", self.data[off:off + 8])
            if typ == 0:
                return
            yield typ, off, ln
            off += 8 + ((ln + 7) & ~7)

    def end_marker(self):
        off, end = self.ext_area()
        for typ, o, ln in self.exts():
            off = o + 8 + ((ln + 7) & ~7)
        return off

    def l2_entry_addr(self, guest):
        cb = self.h("cluster_bits")
        l2_bits = cb - (4 if self.l2_entry_size == 16 else 3)
        l1_index = guest >> (cb + l2_bits)
        l2_index = (guest >> cb) & ((1 << l2_bits) - 1)
        l1e = self.get(self.h("l1_table_offset") + 8 * l1_index, 8)
        l2 = l1e & 0x00fffffffffffe00
        if l2 == 0:
            sys.exit("guest offset %#x has no L2 table" % guest)
        return l2 + l2_index * self.l2_entry_size


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    img, cmd, args = Image(argv[1]), argv[2], argv[3:]
    if cmd == "header":
        for n, off, size in FIELDS:
            print(n, img.get(off, size))
        print("cluster_size", img.cluster_size)
        print("ext_start", img.ext_area()[0])
        print("ext_end", img.ext_area()[1])
        print("end_marker", img.end_marker())
        print("file_size", len(img.data))
    elif cmd == "set":
        img.put(*img.field(args[0]), num(args[1]))
        img.save()
    elif cmd == "poke":
        img.put(num(args[0]), num(args[1]), num(args[2]))
        img.save()
    elif cmd == "bytes":
        img.put_bytes(num(args[0]), bytes.fromhex(args[1]))
        img.save()
    elif cmd == "feature":
        off = FEATURE_OFF[args[0]]
        img.put(off, 8, img.get(off, 8) | (1 << num(args[1])))
        img.save()
    elif cmd == "exts":
        for typ, off, ln in img.exts():
            print("%#010x %d %d" % (typ, off, ln))
    elif cmd == "add-ext":
        off = img.end_marker()
        payload = bytes.fromhex(args[2]) if len(args) > 2 else b""
        rec = struct.pack(">II", num(args[0]), num(args[1])) + payload
        rec += b"\0" * (-len(rec) % 8) + b"\0" * 8     # pad + end marker
        if off + len(rec) > img.ext_area()[1]:
            sys.exit("no room for the extension")
        img.put_bytes(off, rec)
        img.save()
    elif cmd == "l1":
        print("%#018x" % img.get(img.h("l1_table_offset") + 8 * num(args[0]), 8))
    elif cmd == "l2addr":
        print(img.l2_entry_addr(num(args[0])))
    elif cmd == "l2":
        print("%#018x" % img.get(img.l2_entry_addr(num(args[0])), 8))
    elif cmd == "compressed":
        cb = img.h("cluster_bits")
        x = 62 - (cb - 8)
        host, nsec = num(args[1]), num(args[2])
        desc = (1 << 62) | (nsec << x) | host
        img.put(img.l2_entry_addr(num(args[0])), 8, desc)
        img.save()
    elif cmd == "append-deflate":
        raw = b"\x5a" * (img.cluster_size * num(args[0]))
        c = zlib.compressobj(9, zlib.DEFLATED, -12)
        stream = c.compress(raw) + c.flush()
        off = (len(img.data) + 511) & ~511
        img.put_bytes(off, stream)
        img.data.extend(b"\0" * (-len(img.data) % 512))
        img.save()
        print(off, (len(stream) + 511) // 512 - 1)
    elif cmd == "append":
        blob = (open(args[0][1:], "rb").read() if args[0].startswith("@")
                else bytes.fromhex(args[0]))
        off = (len(img.data) + 511) & ~511
        img.put_bytes(off, blob)
        img.data.extend(b"\0" * (-len(img.data) % 512))
        img.save()
        print(off, (len(blob) + 511) // 512 - 1)
    else:
        sys.exit("unknown command " + cmd)


if __name__ == "__main__":
    main(sys.argv)
