#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
"""Make and break OVA archives for tests/ova.bats.

The archives themselves come from GNU tar (the suite) or from Python's
tarfile module (here), neither of them ours; this script only writes
what those refuse to write (hostile headers), and says where members are.

  ova-poke.py where OVA NAME
      print "HEADER DATA SIZE" of member NAME: byte offsets of its header
      and its data, and its size (tarfile's reading of the archive)
  ova-poke.py poke OVA OFFSET HEX [HEADER]
      write the bytes HEX at OFFSET; with HEADER (a header's offset),
      then recompute that header's checksum as tar does
  ova-poke.py build OVA OVF [KIND]...
      a ustar archive with OVF first, then, per KIND:
        symlink:NAME:TARGET   a symbolic link NAME -> TARGET
        file:NAME:SRC         a regular file NAME holding SRC's bytes
        empty:COUNT           COUNT empty regular files e00000000...
"""
import os
import sys
import tarfile


def where(ova, name):
    with tarfile.open(ova, "r:") as t:
        m = t.getmember(name)
        print(m.offset, m.offset_data, m.size)


def fix_checksum(f, header):
    f.seek(header)
    h = bytearray(f.read(512))
    h[148:156] = b" " * 8
    f.seek(header + 148)
    f.write(b"%06o\0 " % sum(h))


def poke(ova, offset, data, header=None):
    with open(ova, "r+b") as f:
        f.seek(offset)
        f.write(bytes.fromhex(data))
        if header is not None:
            fix_checksum(f, header)


def build(ova, ovf, kinds):
    with tarfile.open(ova, "w", format=tarfile.USTAR_FORMAT) as t:
        t.add(ovf, arcname=ovf.rsplit("/", 1)[-1])
        for kind in kinds:
            what, _, rest = kind.partition(":")
            if what == "symlink":
                name, target = rest.split(":", 1)
                info = tarfile.TarInfo(name)
                info.type = tarfile.SYMTYPE
                info.linkname = target
                t.addfile(info)
            elif what == "file":
                name, src = rest.split(":", 1)
                with open(src, "rb") as f:
                    info = tarfile.TarInfo(name)    # taken as it is
                    info.size = os.fstat(f.fileno()).st_size
                    t.addfile(info, f)
            elif what == "empty":
                for i in range(int(rest)):
                    t.addfile(tarfile.TarInfo("e%08d" % i))
            else:
                sys.exit("unknown kind " + kind)


def main(argv):
    cmd = argv[1] if len(argv) > 1 else ""
    if cmd == "where" and len(argv) == 4:
        where(argv[2], argv[3])
    elif cmd == "poke" and len(argv) in (5, 6):
        poke(argv[2], int(argv[3], 0), argv[4],
             int(argv[5], 0) if len(argv) == 6 else None)
    elif cmd == "build" and len(argv) >= 4:
        build(argv[2], argv[3], argv[4:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
