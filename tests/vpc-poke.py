#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
"""Inspect, corrupt and build VHD images for tests/vpc.bats, from the
"Virtual Hard Disk Image Format Specification" (footer, dynamic disk
header, BAT, sector bitmaps; big-endian).  Python 3 standard library only.

  vpc-poke.py IMG footer                 "field value" lines (decimal) of the
                                         footer QEMU reads (the copy at 0 if
                                         the file starts with one, else the
                                         last sector)
  vpc-poke.py IMG set-footer FIELD VAL   set a footer field in every copy and
                                         fix the checksum (except when FIELD
                                         is checksum)
  vpc-poke.py IMG header                 the dynamic disk header's fields
  vpc-poke.py IMG set-header FIELD VAL   the same for the dynamic header
  vpc-poke.py IMG bat INDEX [VALUE]      print (hex) or set a BAT entry
  vpc-poke.py IMG locator K CODE OFFSET LENGTH SPACE
                                         set parent locator entry K (CODE a
                                         4-letter code), fix the checksum
  vpc-poke.py diff PARENT CHILD [OPTION]...
      make CHILD, a differencing disk over the VHD PARENT (its size, its
      unique id).  Options:
        --write OFF:LEN:BYTE   sectors [OFF, OFF+LEN) (512-byte aligned)
                               hold BYTE and have their bitmap bits set;
                               the rest of each allocated block holds the
                               fill byte with its bits clear (a reader that
                               ignores the bitmap shows it)
        --w2ru NAME            a Windows relative locator (UTF-16LE)
        --w2ku NAME            a Windows absolute locator
        --macx NAME            a Mac OS X locator (UTF-8 file URL: give
                               the whole URL)
        --name NAME            the header's parent name (UTF-16BE)
        --expect RAW           also write what the child should read as,
                               given PARENT's view in RAW (a file)
        --block SIZE           the block size (default 2 MiB, at least
                               4 KiB)
        --fill BYTE            what the sectors not written hold (0xee)

Numbers accept 0x prefixes; codes and creator fields are 4 characters
(shorter ones are padded with NULs); unique ids are 32 hex digits.
"""

import os
import struct
import sys
import uuid

FOOTER = [  # name, offset, struct format
    ("features", 8, ">I"), ("version", 12, ">I"), ("data_offset", 16, ">Q"),
    ("timestamp", 24, ">I"), ("creator_app", 28, "4s"),
    ("creator_version", 32, ">I"), ("creator_os", 36, "4s"),
    ("original_size", 40, ">Q"), ("current_size", 48, ">Q"),
    ("cylinders", 56, ">H"), ("heads", 58, ">B"), ("sectors", 59, ">B"),
    ("disk_type", 60, ">I"), ("checksum", 64, ">I"),
    ("unique_id", 68, "16s"),
]
HEADER = [
    ("data_offset", 8, ">Q"), ("table_offset", 16, ">Q"),
    ("header_version", 24, ">I"), ("max_table_entries", 28, ">I"),
    ("block_size", 32, ">I"), ("checksum", 36, ">I"),
    ("parent_uuid", 40, "16s"), ("parent_timestamp", 56, ">I"),
]
SECTOR = 512


def num(s):
    return int(s, 0)


def checksum(buf, field):
    total = sum(buf[:field]) + sum(buf[field + 4:])
    return ~total & 0xffffffff


def code(s):
    b = s.encode()
    if len(b) > 4:
        sys.exit("vpc-poke.py: code %r is longer than 4 bytes" % s)
    return b.ljust(4, b"\0")


def lookup(table, name):
    for f in table:
        if f[0] == name:
            return f
    sys.exit("vpc-poke.py: unknown field %s" % name)


def show(buf, table):
    for name, off, fmt in table:
        v = struct.unpack_from(fmt, buf, off)[0]
        if fmt == "16s":
            v = v.hex()
        elif isinstance(v, bytes):
            v = v.decode("latin-1").rstrip("\0")
        print(name, v)


def put(buf, table, name, value, csum_field):
    _, off, fmt = lookup(table, name)
    if fmt == "16s":
        value = bytes.fromhex(value)
    elif fmt == "4s":
        value = code(value)
    else:
        value = num(value)
    struct.pack_into(fmt, buf, off, value)
    if name != "checksum":
        struct.pack_into(">I", buf, csum_field, checksum(buf, csum_field))


class Image:
    def __init__(self, path):
        self.f = open(path, "r+b")
        self.size = os.fstat(self.f.fileno()).st_size

    def read(self, off, n):
        self.f.seek(off)
        return bytearray(self.f.read(n))

    def write(self, off, data):
        self.f.seek(off)
        self.f.write(data)

    def footer_places(self):
        """Offsets of the footers: the copy at 0 (if any) and the end."""
        places = []
        if self.read(0, 8) == b"conectix":
            places.append(0)
        if self.size >= SECTOR and self.read(self.size - SECTOR, 8) == b"conectix":
            places.append(self.size - SECTOR)
        if not places:
            sys.exit("vpc-poke.py: no VHD footer")
        return places

    def header_offset(self):
        return struct.unpack_from(">Q", self.read(self.footer_places()[0], SECTOR), 16)[0]


def footer_cmd(img, args):
    places = img.footer_places()
    if not args:
        show(img.read(places[0], SECTOR), FOOTER)
        return
    for p in places:
        buf = img.read(p, SECTOR)
        put(buf, FOOTER, args[0], args[1], 64)
        img.write(p, buf)


def header_cmd(img, args):
    off = img.header_offset()
    buf = img.read(off, 1024)
    if not args:
        show(buf, HEADER)
        return
    put(buf, HEADER, args[0], args[1], 36)
    img.write(off, buf)


def bat_cmd(img, args):
    hdr = img.read(img.header_offset(), 1024)
    table = struct.unpack_from(">Q", hdr, 16)[0] + 4 * num(args[0])
    if len(args) == 1:
        print(hex(struct.unpack(">I", img.read(table, 4))[0]))
    else:
        img.write(table, struct.pack(">I", num(args[1])))


def locator_cmd(img, args):
    off = img.header_offset()
    hdr = img.read(off, 1024)
    k, c, loff, length, space = args
    struct.pack_into(">4sIIIQ", hdr, 576 + 24 * num(k), code(c), num(space),
                     num(length), 0, num(loff))
    struct.pack_into(">I", hdr, 36, checksum(hdr, 36))
    img.write(off, hdr)


def diff_cmd(parent_path, child_path, opts):
    parent = Image(parent_path)
    pfoot = parent.read(parent.footer_places()[0], SECTOR)
    size = struct.unpack_from(">Q", pfoot, 48)[0]
    block, fill = 2 << 20, 0xee
    writes, locators, name, expect = [], [], "", None
    i = 0
    while i < len(opts):
        o, v = opts[i], opts[i + 1]
        i += 2
        if o == "--block":
            block = num(v)
        elif o == "--fill":
            fill = num(v)
        elif o == "--write":
            off, length, byte = (num(x) for x in v.split(":"))
            writes.append((off, length, byte))
        elif o in ("--w2ru", "--w2ku"):
            locators.append(("W2" + o[4:], v.encode("utf-16-le")))
        elif o == "--macx":
            locators.append(("MacX", v.encode()))
        elif o == "--name":
            name = v
        elif o == "--expect":
            expect = v
        else:
            sys.exit("vpc-poke.py: unknown option %s" % o)

    # layout: footer copy, header (1024), BAT, locator data, blocks, footer
    bat_off = 1536
    entries = (size + block - 1) // block
    bat_len = (entries * 4 + SECTOR - 1) // SECTOR * SECTOR
    loc_off = bat_off + bat_len
    loc_data = b""
    loc_entries = []
    for c, data in locators:
        space = (len(data) + SECTOR - 1) // SECTOR * SECTOR
        loc_entries.append((c, loc_off + len(loc_data), len(data), space))
        loc_data += data.ljust(space, b"\0")
    data_off = loc_off + len(loc_data)
    sectors = block // SECTOR
    bitmap = (sectors // 8 + SECTOR - 1) // SECTOR * SECTOR
    bat = [0xffffffff] * entries
    blocks = {}
    for off, length, byte in writes:
        for s in range(off // SECTOR, (off + length) // SECTOR):
            b = s * SECTOR // block
            if b not in blocks:
                blocks[b] = (bytearray(bitmap), bytearray([fill]) * block)
            bits, data = blocks[b]
            i = s % sectors
            bits[i // 8] |= 0x80 >> (i % 8)
            data[i * SECTOR:(i + 1) * SECTOR] = bytes([byte]) * SECTOR
    body = bytearray()
    for b in sorted(blocks):
        bat[b] = (data_off + len(body)) // SECTOR
        body += blocks[b][0] + blocks[b][1]

    foot = bytearray(SECTOR)
    # the parent's creator and geometry: the same size rule gives the same
    # size; the unique id is derived from the child's name
    struct.pack_into(">8sIIQI4sI4sQQHBBI", foot, 0, b"conectix", 2, 0x10000,
                     SECTOR, 0, bytes(pfoot[28:32]), 0x50003, b"Wi2k", size,
                     size, *struct.unpack_from(">HBB", pfoot, 56), 4)
    foot[68:84] = uuid.uuid5(uuid.NAMESPACE_URL, child_path).bytes
    struct.pack_into(">I", foot, 64, checksum(foot, 64))
    hdr = bytearray(1024)
    struct.pack_into(">8sQQIII", hdr, 0, b"cxsparse", 0xffffffffffffffff,
                     bat_off, 0x10000, entries, block)
    hdr[40:56] = pfoot[68:84]
    enc = name.encode("utf-16-be")[:512]
    hdr[64:64 + len(enc)] = enc
    for k, (c, off, length, space) in enumerate(loc_entries):
        struct.pack_into(">4sIIIQ", hdr, 576 + 24 * k, code(c), space // SECTOR,
                         length, 0, off)
    struct.pack_into(">I", hdr, 36, checksum(hdr, 36))
    with open(child_path, "wb") as f:
        f.write(foot + hdr)
        f.write(b"".join(struct.pack(">I", e) for e in bat).ljust(bat_len, b"\0"))
        f.write(loc_data)
        f.write(body)
        f.write(foot)
    if expect:
        with open(expect, "r+b") as f:
            for off, length, byte in writes:
                f.seek(off)
                f.write(bytes([byte]) * length)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    if sys.argv[1] == "diff":
        diff_cmd(sys.argv[2], sys.argv[3], sys.argv[4:])
        return
    img = Image(sys.argv[1])
    cmd, args = sys.argv[2], sys.argv[3:]
    cmds = {"footer": footer_cmd, "set-footer": footer_cmd,
            "header": header_cmd, "set-header": header_cmd,
            "bat": bat_cmd, "locator": locator_cmd}
    if cmd not in cmds or (cmd.startswith("set-") and len(args) != 2):
        sys.exit(__doc__)
    cmds[cmd](img, args)


if __name__ == "__main__":
    main()
