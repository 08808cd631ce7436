#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
"""Read and change fields of a hosted sparse VMDK ("KDMV") for tests/vmdk.bats.

Layout: VMware "Virtual Disk Format 5.0", "Hosted Sparse Extent Header"
(little-endian; sector units), as ../shared/reference/formats.md 2.2 lists it.

  vmdk-poke.py FILE header                  print "name value" per field
  vmdk-poke.py FILE set NAME VALUE          set a header field (int; 0x ok)
  vmdk-poke.py FILE desc                    print the embedded descriptor
  vmdk-poke.py FILE replace-desc OLD NEW    replace text in the embedded
                                            descriptor (NUL-padded; must fit)
  vmdk-poke.py FILE gd INDEX [VALUE]        print (or set) grain directory
                                            entry INDEX (a GT's sector)
  vmdk-poke.py FILE gt GD_INDEX INDEX [VALUE]
                                            print (or set) entry INDEX of the
                                            GT that GD entry GD_INDEX names
                                            (a grain's sector)
  vmdk-poke.py FILE embed TEXTFILE          make FILE's embedded descriptor
                                            the text of TEXTFILE and its
                                            capacity 0 (QEMU then reads it as
                                            a descriptor file)
"""
import struct
import sys

# name: (offset, struct format)
FIELDS = {
    "version": (4, "<I"),
    "flags": (8, "<I"),
    "capacity": (12, "<Q"),
    "granularity": (20, "<Q"),
    "desc_offset": (28, "<Q"),
    "desc_size": (36, "<Q"),
    "num_gtes": (44, "<I"),
    "rgd_offset": (48, "<Q"),
    "gd_offset": (56, "<Q"),
    "grain_offset": (64, "<Q"),
    "compress": (77, "<H"),
}


def read_header(f):
    f.seek(0)
    h = f.read(512)
    if h[:4] != b"KDMV":
        sys.exit("not a hosted sparse VMDK (no KDMV magic)")
    return h


def field(h, name):
    off, fmt = FIELDS[name]
    return struct.unpack_from(fmt, h, off)[0]


def desc_area(f):
    h = read_header(f)
    off, size = field(h, "desc_offset") * 512, field(h, "desc_size") * 512
    if off == 0 or size == 0:
        sys.exit("no embedded descriptor")
    return off, size


def main():
    path, cmd, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    with open(path, "r+b") as f:
        if cmd == "header":
            h = read_header(f)
            for name in FIELDS:
                print(name, field(h, name))
        elif cmd == "set":
            off, fmt = FIELDS[args[0]]
            read_header(f)
            f.seek(off)
            f.write(struct.pack(fmt, int(args[1], 0)))
        elif cmd == "desc":
            off, size = desc_area(f)
            f.seek(off)
            sys.stdout.write(f.read(size).split(b"\0")[0].decode())
        elif cmd == "replace-desc":
            off, size = desc_area(f)
            f.seek(off)
            text = f.read(size).split(b"\0")[0]
            old, new = args[0].encode(), args[1].encode()
            if old not in text:
                sys.exit("%r not in the descriptor" % args[0])
            text = text.replace(old, new, 1)
            if len(text) > size:
                sys.exit("the new descriptor does not fit")
            f.seek(off)
            f.write(text + b"\0" * (size - len(text)))
        elif cmd in ("gd", "gt"):
            # u32 LE sector numbers (formats.md 2.3)
            h = read_header(f)
            off = field(h, "gd_offset") * 512 + 4 * int(args[0], 0)
            if cmd == "gt":
                f.seek(off)
                off = struct.unpack("<I", f.read(4))[0] * 512 + 4 * int(args[1], 0)
                args = args[1:]
            if len(args) > 1:
                f.seek(off)
                f.write(struct.pack("<I", int(args[1], 0)))
            else:
                f.seek(off)
                print(struct.unpack("<I", f.read(4))[0])
        elif cmd == "embed":
            off, size = desc_area(f)
            text = open(args[0], "rb").read()
            if len(text) >= size:
                sys.exit("the descriptor does not fit")
            f.seek(off)
            f.write(text + b"\0" * (size - len(text)))
            f.seek(FIELDS["capacity"][0])
            f.write(struct.pack("<Q", 0))
        else:
            sys.exit("unknown command " + cmd)


if __name__ == "__main__":
    main()
