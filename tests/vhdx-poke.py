#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
"""Build and edit VHDX images byte by byte, from [MS-VHDX] (tests/vhdx.bats,
tests/fuzz/make-corpus.sh).  Written from the specification, not from
formats/vhdx.c, so that it can act as an independent oracle where QEMU
cannot (differencing disks, 4096-byte logical sectors, logs to replay).

  build OUT --size N [--block-size N] [--sector 512|4096] [--fixed]
        [--data RAW] [--parent P --relative NAME | --absolute NAME]
        [--linkage GUID] [--write OFF:LEN:BYTE]... [--zero-block B]...
        [--expect OUT.raw --parent-raw P.raw]
      a new image: the data of RAW (blocks of zeros left NOT_PRESENT unless
      --fixed), or for a differencing disk over P (its parent_linkage P's
      current DataWriteGuid unless --linkage) the sectors --write names
      (FULLY_PRESENT blocks where a block is wholly written, else
      PARTIALLY_PRESENT with the chunk's sector bitmap, bit 0 of byte 0
      first); --zero-block gives block B the state ZERO.  --expect writes
      the disk as the specification reads it (P's view from --parent-raw
      under the written sectors).
  log IMG --block B [--stale] [--resize N] [--wrap]
      the crash of a writer half way: the file grows by one block, and a
      log (two entries, tail to head, in the current header's log) holds
      that block's new data (random sectors, a zero descriptor), the BAT
      sector giving block B the new place (FULLY_PRESENT), a zeroed 4 KiB
      of block 0 and a changed 4 KiB in block 0; --resize also rewrites the
      virtual disk size item through the log; --stale adds an older valid
      entry that must not be replayed (it zeroes block 0 entirely); --wrap
      puts the sequence at the log's end, its second entry wrapping round.
  log-outside IMG    a valid one-entry log whose data sector lies past EOF
  log-bad-descriptor IMG   a one-entry log (CRC right) whose data
                     descriptor's file offset is not 4 KiB-aligned
  bad-header IMG 1|2       flip a byte of header 1 or 2 (CRC left stale)
  bad-region IMG 1|2       flip a byte of region table 1 or 2
  region-overlap IMG       the metadata region moved onto the BAT region
                           (both region tables rewritten with good CRCs)
  set-bat IMG INDEX VALUE  BAT entry INDEX (of the BAT array) := VALUE
  set-sector IMG 512|4096  the logical sector size item
  header IMG               print the current header's fields
  map IMG                  the data ranges by the BAT, as qemu-img map's JSON
"""
import os
import struct
import sys
import uuid

MiB = 1 << 20
GUID_BAT = uuid.UUID("2DC27766-F623-4200-9D64-115E9BFD4A08").bytes_le
GUID_META = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E").bytes_le
GUID_PARAMS = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B").bytes_le
GUID_SIZE = uuid.UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8").bytes_le
GUID_PAGE83 = uuid.UUID("BECA12AB-B2E6-4523-93EF-C309E000C746").bytes_le
GUID_LSEC = uuid.UUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F").bytes_le
GUID_PSEC = uuid.UUID("CDA348C7-445D-4471-9CC9-E9885251C556").bytes_le
GUID_LOC = uuid.UUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C").bytes_le
GUID_PARENT_TYPE = uuid.UUID("B04AEFB7-D19E-4A81-B789-25B8E9445913").bytes_le


def _table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t.append(c)
    return t


CRC_TABLE = _table()


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c = CRC_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def seal(buf, off, length):
    """Store the CRC-32C of buf[off:off+length] at off + 4."""
    struct.pack_into("<I", buf, off + 4, 0)
    struct.pack_into("<I", buf, off + 4, crc32c(buf[off:off + length]))


def parse_size(s):
    units = {"K": 1 << 10, "M": MiB, "G": 1 << 30}
    return int(s[:-1]) * units[s[-1]] if s[-1] in units else int(s, 0)


# ---- reading an image ----------------------------------------------------------

def current_header(img):
    """(offset, sequence) of the valid header with the higher sequence."""
    best = None
    for off in (64 << 10, 128 << 10):
        h = bytearray(img[off:off + 4096])
        crc = struct.unpack_from("<I", h, 4)[0]
        struct.pack_into("<I", h, 4, 0)
        if h[:4] == b"head" and crc32c(h) == crc:
            seq = struct.unpack_from("<Q", h, 8)[0]
            if best is None or seq > best[1]:
                best = (off, seq)
    return best


def regions(img):
    t = img[192 << 10:256 << 10]
    out = {}
    for i in range(struct.unpack_from("<I", t, 8)[0]):
        g, off, length = struct.unpack_from("<16sQI", t, 16 + 32 * i)
        out[g] = (off, length)
    return out


def metadata_items(img):
    moff = regions(img)[GUID_META][0]
    count = struct.unpack_from("<H", img, moff + 10)[0]
    out = {}
    for i in range(count):
        g, off, length = struct.unpack_from("<16sII", img, moff + 32 + 32 * i)
        out[g] = (moff + off, length)
    return out


def geometry(img):
    items = metadata_items(img)
    bs = struct.unpack_from("<I", img, items[GUID_PARAMS][0])[0]
    flags = struct.unpack_from("<I", img, items[GUID_PARAMS][0] + 4)[0]
    lsec = struct.unpack_from("<I", img, items[GUID_LSEC][0])[0]
    size = struct.unpack_from("<Q", img, items[GUID_SIZE][0])[0]
    return bs, lsec, size, bool(flags & 2)


# ---- building an image ---------------------------------------------------------

def header(seq, data_guid, log_guid, log_off, log_len):
    h = bytearray(4096)
    struct.pack_into("<4sIQ16s16s16sHHIQ", h, 0, b"head", 0, seq,
                     uuid.uuid4().bytes_le, data_guid, log_guid, 0, 1,
                     log_len, log_off)
    seal(h, 0, 4096)
    return h


def region_table(bat, meta):
    t = bytearray(64 << 10)
    struct.pack_into("<4sIII", t, 0, b"regi", 0, 2, 0)
    struct.pack_into("<16sQII", t, 16, GUID_BAT, bat[0], bat[1], 1)
    struct.pack_into("<16sQII", t, 48, GUID_META, meta[0], meta[1], 1)
    seal(t, 0, len(t))
    return t


def utf16(s):
    return s.encode("utf-16-le")


def locator(linkage, paths):
    kv = [("parent_linkage", linkage)] + paths
    head = bytearray(20 + 12 * len(kv))
    struct.pack_into("<16sHH", head, 0, GUID_PARENT_TYPE, 0, len(kv))
    blob = bytearray()
    for i, (k, v) in enumerate(kv):
        ko = len(head) + len(blob)
        blob += utf16(k)
        vo = len(head) + len(blob)
        blob += utf16(v)
        struct.pack_into("<IIHH", head, 20 + 12 * i, ko, vo, len(utf16(k)),
                         len(utf16(v)))
    return bytes(head + blob)


def metadata(bs, flags, size, lsec, psec, loc):
    m = bytearray(MiB)
    items = [(GUID_PARAMS, struct.pack("<II", bs, flags), 4),
             (GUID_SIZE, struct.pack("<Q", size), 6),
             (GUID_PAGE83, uuid.uuid4().bytes_le, 6),
             (GUID_LSEC, struct.pack("<I", lsec), 6),
             (GUID_PSEC, struct.pack("<I", psec), 6)]
    if loc is not None:
        items.append((GUID_LOC, loc, 4))
    struct.pack_into("<8sHH", m, 0, b"metadata", 0, len(items))
    off = 64 << 10
    for i, (g, val, fl) in enumerate(items):
        struct.pack_into("<16sIII", m, 32 + 32 * i, g, off, len(val), fl)
        m[off:off + len(val)] = val
        off += (len(val) + 4095) // 4096 * 4096
    return m


def parse_writes(specs):
    out = []
    for w in specs:
        off, length, byte = w.split(":")
        out.append((int(off, 0), int(length, 0), int(byte, 0)))
    return out


def build(args):
    opts = {"--block-size": "1M", "--sector": "512", "--write": [],
            "--zero-block": []}
    flags_only = {"--fixed"}
    out = args[0]
    i = 1
    while i < len(args):
        if args[i] in flags_only:
            opts[args[i]] = True
            i += 1
        elif isinstance(opts.get(args[i]), list):
            opts[args[i]].append(args[i + 1])
            i += 2
        else:
            opts[args[i]] = args[i + 1]
            i += 2
    size = parse_size(opts["--size"])
    bs = parse_size(opts["--block-size"])
    lsec = int(opts["--sector"])
    cr = (1 << 23) * lsec // bs
    nblocks = (size + bs - 1) // bs
    diff = "--parent" in opts
    if diff:
        link = opts.get("--linkage")
        if link is None:
            pimg = open(opts["--parent"], "rb").read()
            hoff, _ = current_header(pimg)
            pguid = pimg[hoff + 32:hoff + 48]
            link = "{%s}" % str(uuid.UUID(bytes_le=bytes(pguid)))
        paths = []
        if "--relative" in opts:
            paths.append(("relative_path", opts["--relative"]))
        if "--absolute" in opts:
            paths.append(("absolute_win32_path", opts["--absolute"]))
        base = opts.get("--relative", opts.get("--absolute", "p"))
        paths.append(("volume_path", "\\\\?\\Volume{00000000-0000-0000-0000-"
                      "000000000000}\\vms\\" + base.split("/")[-1]))
        loc = locator(link, paths)
        nentries = (nblocks + cr - 1) // cr * (cr + 1)
    else:
        loc = None
        nentries = nblocks + (nblocks - 1) // cr if nblocks else 0
    content = bytearray(nblocks * bs)
    present = bytearray(nblocks * bs // lsec)      # 1: sector in this file
    if "--data" in opts:
        d = open(opts["--data"], "rb").read()[:size]
        content[:len(d)] = d
        for s in range(len(present)):
            blk = s * lsec // bs
            if opts.get("--fixed") or any(content[blk * bs:(blk + 1) * bs]):
                present[s] = 1
    for off, length, byte in parse_writes(opts["--write"]):
        assert off % lsec == 0 and length % lsec == 0
        content[off:off + length] = bytes([byte]) * length
        present[off // lsec:(off + length) // lsec] = b"\1" * (length // lsec)
    zero_blocks = {int(b) for b in opts["--zero-block"]}

    bat_len = (nentries * 8 + MiB - 1) // MiB * MiB or MiB
    log_off, meta_off, bat_off = MiB, 2 * MiB, 3 * MiB
    end = bat_off + bat_len
    bat = bytearray(bat_len)
    spb = bs // lsec
    blocks = []
    bitmaps = {}
    for b in range(nblocks):
        bits = present[b * spb:(b + 1) * spb]
        state, where = 0, 0
        if b in zero_blocks:
            state = 2
        elif all(bits):
            state, where = 6, end
        elif any(bits):
            assert diff, "a partially present block needs a parent"
            state, where = 7, end
            chunk = b // cr
            bm = bitmaps.setdefault(chunk, bytearray(MiB))
            for s in range(spb):
                if bits[s]:
                    k = (b % cr) * spb + s
                    bm[k // 8] |= 1 << (k % 8)
        if where:
            blocks.append((where, content[b * bs:(b + 1) * bs]))
            end += bs
        struct.pack_into("<Q", bat, 8 * (b + b // cr), where | state)
    for chunk, bm in sorted(bitmaps.items()):
        struct.pack_into("<Q", bat, 8 * (chunk * (cr + 1) + cr), end | 6)
        blocks.append((end, bm))
        end += MiB
    data_guid = uuid.uuid4().bytes_le
    img = bytearray(end)
    img[0:8] = b"vhdxfile"
    img[8:8 + len(utf16("vhdx-poke.py"))] = utf16("vhdx-poke.py")
    img[64 << 10:(64 << 10) + 4096] = header(1, data_guid, bytes(16),
                                             log_off, MiB)
    img[128 << 10:(128 << 10) + 4096] = header(2, data_guid, bytes(16),
                                               log_off, MiB)
    rt = region_table((bat_off, bat_len), (meta_off, MiB))
    img[192 << 10:256 << 10] = rt
    img[256 << 10:320 << 10] = rt
    flags = (1 if opts.get("--fixed") else 0) | (2 if diff else 0)
    img[meta_off:meta_off + MiB] = metadata(bs, flags, size, lsec, 4096, loc)
    img[bat_off:bat_off + bat_len] = bat
    for where, data in blocks:
        img[where:where + len(data)] = data
    with open(out, "wb") as f:
        f.write(img)
    if "--expect" in opts:
        view = bytearray(size)
        if diff:
            p = open(opts["--parent-raw"], "rb").read()[:size]
            view[:len(p)] = p
        for s in range(size // lsec):
            blk = s * lsec // bs
            if blk in zero_blocks:
                view[s * lsec:(s + 1) * lsec] = bytes(lsec)
            elif present[s]:
                view[s * lsec:(s + 1) * lsec] = content[s * lsec:(s + 1) * lsec]
        open(opts["--expect"], "wb").write(view)


# ---- logs ------------------------------------------------------------------------

def log_entry(seq, log_guid, tail, descs, file_size, last=None):
    """An entry: descs are ("data", off, 4096 bytes) or ("zero", off, len);
    FlushedFileOffset file_size, LastFileOffset last (default the same)."""
    count = len(descs)
    dsec = (64 + 32 * count + 4095) // 4096
    datas = [d for d in descs if d[0] == "data"]
    e = bytearray((dsec + len(datas)) * 4096)
    struct.pack_into("<4sIIIQII16sQQ", e, 0, b"loge", 0, len(e), tail, seq,
                     count, 0, log_guid, file_size,
                     file_size if last is None else last)
    k = dsec
    for i, d in enumerate(descs):
        at = 64 + 32 * i
        if d[0] == "zero":
            struct.pack_into("<4sIQQQ", e, at, b"zero", 0, d[2], d[1], seq)
        else:
            sec = d[2]
            e[at:at + 4] = b"desc"
            e[at + 4:at + 8] = sec[4092:4096]
            e[at + 8:at + 16] = sec[0:8]
            struct.pack_into("<QQ", e, at + 16, d[1], seq)
            s = bytearray(4096)
            struct.pack_into("<4sI", s, 0, b"data", seq >> 32)
            s[8:4092] = sec[8:4092]
            struct.pack_into("<I", s, 4092, seq & 0xFFFFFFFF)
            e[k * 4096:(k + 1) * 4096] = s
            k += 1
    seal(e, 0, len(e))
    return e


def set_log_guid(img, log_guid):
    """Give the current header log_guid; returns (log offset, length)."""
    hoff, _ = current_header(img)
    img[hoff + 48:hoff + 64] = log_guid
    seal(img, hoff, 4096)
    return struct.unpack_from("<QI", img, hoff + 72)[0], \
        struct.unpack_from("<I", img, hoff + 68)[0]


def bat_sector(img, index):
    boff = regions(img)[GUID_BAT][0]
    at = boff + 8 * index
    return at // 4096 * 4096, at % 4096


def add_log(path, args):
    img = bytearray(open(path, "rb").read())
    block = int(args[args.index("--block") + 1])
    bs, lsec, size, _ = geometry(img)
    cr = (1 << 23) * lsec // bs
    new = (len(img) + MiB - 1) // MiB * MiB
    img += bytes(new + bs - len(img))            # the grown file, zeros
    log_guid = uuid.uuid4().bytes_le
    log_off, log_len = set_log_guid(img, log_guid)
    rnd = os.urandom(8 * 4096)
    # entry 1: the new block's first 8 sectors of data, then zeros for the
    # next 8 (they are zeros already: a zero descriptor all the same)
    d1 = [("data", new + 4096 * i, rnd[4096 * i:4096 * (i + 1)])
          for i in range(8)] + [("zero", new + 8 * 4096, 8 * 4096)]
    # entry 2: the BAT sector, 4 KiB of block 0 zeroed, 4 KiB changed
    sec_off, in_sec = bat_sector(img, block + block // cr)
    sec = bytearray(img[sec_off:sec_off + 4096])
    struct.pack_into("<Q", sec, in_sec, new | 6)
    b0 = struct.unpack_from("<Q", img, bat_sector(img, 0)[0]
                            + bat_sector(img, 0)[1])[0]
    d2 = [("data", sec_off, bytes(sec))]
    if b0 & 7 == 6:
        b0off = b0 & ~0xFFFFF
        d2 += [("zero", b0off + 4096, 4096),
               ("data", b0off + 8192, bytes([0x5A]) * 4096)]
    if "--resize" in args:
        soff = metadata_items(img)[GUID_SIZE][0]
        s = bytearray(img[soff // 4096 * 4096:soff // 4096 * 4096 + 4096])
        struct.pack_into("<Q", s, soff % 4096,
                         parse_size(args[args.index("--resize") + 1]))
        d2.append(("data", soff // 4096 * 4096, bytes(s)))
    # --wrap: the sequence ends the log, its second entry wrapping around
    at = log_len - 4096 if "--wrap" in args else 0
    e1 = log_entry(100, log_guid, 0, d1, len(img))
    if at:
        at -= len(e1)
    e1 = log_entry(100, log_guid, at, d1, len(img))
    e2 = log_entry(101, log_guid, at, d2, len(img))
    log = bytearray(log_len)
    for e, pos in ((e1, at), (e2, at + len(e1))):
        for k in range(0, len(e), 4096):
            p = (pos + k) % log_len
            log[p:p + 4096] = e[k:k + 4096]
    if "--stale" in args and b0 & 7 == 6:
        at = (at + len(e1) + len(e2) + 4096) % log_len
        stale = log_entry(7, log_guid, at, [("zero", b0 & ~0xFFFFF, bs)],
                          len(img))
        log[at:at + len(stale)] = stale
    img[log_off:log_off + log_len] = log
    open(path, "wb").write(img)


def log_outside(path, how="past"):
    """A one-entry log that writes past the end of the file (past), over
    the file identifier at 0 (identifier), or, writing inside the file,
    says the file grows to 8 MiB more (extend: LastFileOffset) or was
    flushed at 8 MiB more (flushed: FlushedFileOffset, a truncation)."""
    img = bytearray(open(path, "rb").read())
    log_guid = uuid.uuid4().bytes_le
    log_off, log_len = set_log_guid(img, log_guid)
    at = {"past": len(img) // 4096 * 4096 + 4 * MiB, "identifier": 0}.get(
        how, len(img) // 4096 * 4096 - 4096)
    size, last = len(img), len(img)
    if how == "extend":
        last += 8 * MiB
    elif how == "flushed":
        size = last = len(img) + 8 * MiB
    e = log_entry(5, log_guid, 0, [("data", at, bytes(4096))], size, last)
    img[log_off:log_off + len(e)] = e
    open(path, "wb").write(img)


def log_bad_descriptor(path):
    """A one-entry log, its CRC right, whose data descriptor's FileOffset
    is not 4 KiB-aligned: QEMU's vhdx_log_desc_is_valid fails the open."""
    img = bytearray(open(path, "rb").read())
    log_guid = uuid.uuid4().bytes_le
    log_off, log_len = set_log_guid(img, log_guid)
    e = log_entry(5, log_guid, 0, [("data", 4 * MiB + 512, bytes(4096))],
                  len(img))
    img[log_off:log_off + len(e)] = e
    open(path, "wb").write(img)


# ---- small edits -------------------------------------------------------------------

def flip(path, off):
    with open(path, "r+b") as f:
        f.seek(off)
        b = f.read(1)
        f.seek(off)
        f.write(bytes([b[0] ^ 0x40]))


def region_overlap(path):
    img = bytearray(open(path, "rb").read())
    r = regions(img)
    for t in (192 << 10, 256 << 10):
        for i in range(struct.unpack_from("<I", img, t + 8)[0]):
            if img[t + 16 + 32 * i:t + 32 + 32 * i] == GUID_META:
                struct.pack_into("<Q", img, t + 32 + 32 * i, r[GUID_BAT][0])
        seal(img, t, 64 << 10)
    open(path, "wb").write(img)


def set_bat(path, index, value):
    img = bytearray(open(path, "rb").read())
    struct.pack_into("<Q", img, regions(img)[GUID_BAT][0] + 8 * index, value)
    open(path, "wb").write(img)


def set_sector(path, lsec):
    img = bytearray(open(path, "rb").read())
    struct.pack_into("<I", img, metadata_items(img)[GUID_LSEC][0], lsec)
    open(path, "wb").write(img)


def data_map(path):
    """The disk's data ranges by the BAT (a disk without a parent: the
    FULLY_PRESENT blocks), as `qemu-img map --output=json` entries."""
    import json
    img = open(path, "rb").read()
    bs, lsec, size, _ = geometry(img)
    cr = (1 << 23) * lsec // bs
    boff = regions(img)[GUID_BAT][0]
    out = []
    for b in range((size + bs - 1) // bs):
        e = struct.unpack_from("<Q", img, boff + 8 * (b + b // cr))[0]
        if e & 7 != 6:
            continue
        start, end = b * bs, min(size, (b + 1) * bs)
        if out and out[-1]["start"] + out[-1]["length"] == start:
            out[-1]["length"] = end - out[-1]["start"]
        else:
            out.append({"start": start, "length": end - start,
                        "data": True, "zero": False})
    print(json.dumps(out))


def main(argv):
    cmd = argv[1]
    if cmd == "build":
        build(argv[2:])
    elif cmd == "log":
        add_log(argv[2], argv[3:])
    elif cmd == "log-outside":
        log_outside(argv[2], *argv[3:4])
    elif cmd == "log-bad-descriptor":
        log_bad_descriptor(argv[2])
    elif cmd == "bad-header":
        flip(argv[2], (64 << 10) * int(argv[3]) + 100)
    elif cmd == "bad-region":
        flip(argv[2], (128 << 10) + (64 << 10) * int(argv[3]) + 20)
    elif cmd == "region-overlap":
        region_overlap(argv[2])
    elif cmd == "set-bat":
        set_bat(argv[2], int(argv[3], 0), int(argv[4], 0))
    elif cmd == "set-sector":
        set_sector(argv[2], int(argv[3]))
    elif cmd == "map":
        data_map(argv[2])
    elif cmd == "header":
        img = open(argv[2], "rb").read()
        hoff, seq = current_header(img)
        lo, ll = struct.unpack_from("<Q", img, hoff + 72)[0], \
            struct.unpack_from("<I", img, hoff + 68)[0]
        print("header", 1 if hoff == 64 << 10 else 2)
        print("sequence", seq)
        print("log_guid", uuid.UUID(bytes_le=bytes(img[hoff + 48:hoff + 64])))
        print("log_offset", lo)
        print("log_length", ll)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
