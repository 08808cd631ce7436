#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
# Make the seed corpus for the fuzzers: small images made by qemu-img/qemu-io
# that together reach every feature the qcow2 reader handles, and partition
# tables (*.part) for fuzz-partition.
#
# Usage: make-corpus.sh OUTDIR
#
# Seeds are under 300 KiB, except the three 64 KiB-cluster images that hold
# data (about 320 KiB: header, reftable, refblock, L1, L2 and data are one
# cluster each, the last one cut short); most seeds use 512 B .. 16 KiB
# clusters.  Partition seeds are 128 KiB .. 512 KiB, except the 2000-deep
# EBR chain (1 MiB, the harnesses' -max_len).
# Needs qemu-img and qemu-io; exits 77 (automake's "skipped") without them.
set -eu

out=${1:?usage: make-corpus.sh OUTDIR}
for t in qemu-img qemu-io; do
  command -v "$t" >/dev/null 2>&1 || { echo "$0: $t is not installed" >&2; exit 77; }
done
mkdir -p "$out"
fuzzdir=$(cd "$(dirname "$0")" && pwd)   # for ../vpc-poke.py
tmp=$(mktemp -d "${TMPDIR:-/tmp}/fde-corpus.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"

# ext FORMAT: the file name extension of an image of FORMAT.
ext() { case $1 in vpc) echo vhd ;; *) echo "$1" ;; esac; }

# img FORMAT NAME SIZE [qemu-img create -o OPTIONS]: a fresh image NAME.EXT.
img() {
  fmt=$1 name=$2 size=$3
  shift 3
  qemu-img create -q -f "$fmt" ${1:+-o "$1"} "$name.$(ext "$fmt")" "$size"
}

# qio FORMAT NAME COMMAND...: run qemu-io commands on NAME.EXT.
qio() {
  fmt=$1 name=$2
  shift 2
  for c in "$@"; do
    set -- "$@" -c "$c"
    shift
  done
  qemu-io -f "$fmt" "$@" "$name.$(ext "$fmt")" >/dev/null
}

# holes FILE...: rewrite each file in the harnesses' holes layout
# (fuzz_holes_memfd in fuzz-common.h): its 16 largest runs of 4 KiB or
# more of zeros cut out and listed in an "FDEHOLES" trailer.
holes() {
  for f in "$@"; do
    python3 -c '
import re, struct, sys
name = sys.argv[1]
data = open(name, "rb").read()
runs = [(m.start(), m.end() - m.start())
        for m in re.finditer(rb"\0{4096,}", data)]
holes = sorted(sorted(runs, key=lambda r: -r[1])[:16])
if sum(n for at, n in holes) > 64 << 20:
    sys.exit(name + ": more than the 64 MiB of holes the harnesses put back")
out, pos, recs = bytearray(), 0, b""
for at, n in holes:
    out += data[pos:at]
    recs += struct.pack("<II", at, n)
    pos = at + n
out += data[pos:]
if holes:
    out += recs + b"FDEHOLES" + struct.pack("<I", len(holes))
open(name, "wb").write(out)' "$f"
  done
}

# The qcow2 seeds' shorthands.
mk() { img qcow2 "$@"; }
io() { qio qcow2 "$@"; }

# Optional seeds: qemu-img versions differ in what they can make.
try() { "$@" 2>/dev/null || echo "$0: skipped: $*" >&2; }

# Plain layouts: versions and cluster sizes, data spread over several L2s.
mk v2-64k 1M compat=0.10
mk v2-4k 512K compat=0.10,cluster_size=4096
io v2-4k 'write -P 0x11 0 4k' 'write -P 0x22 300k 6k'
mk v3-64k 1M
mk v3-512 256K cluster_size=512
io v3-512 'write -P 0x33 0 1k' 'write -P 0x44 40k 512' 'write -P 0x55 100k 3k' \
  'write -P 0x66 255k 1k'
mk v3-4k 1M cluster_size=4096
io v3-4k 'write -P 0x77 0 8k' 'write -P 0x88 512k 4k' 'write -P 0x99 1020k 4k'
# 64 KiB clusters with data: the zero tail of the data cluster is cut off
# (data past the end of the file reads as zeros) to keep the seed small.
mk v3-64k-short 1M
io v3-64k-short 'write -P 0xaa 0 512'
truncate -s $((0x50000 + 512)) v3-64k-short.qcow2

# Zero clusters (v3 flag), and discarded ones.
mk v3-zero 256K cluster_size=4096
io v3-zero 'write -P 0x12 0 16k' 'write -z 4k 4k' 'write -z 64k 8k' \
  'discard 8k 4k'

# Compressed clusters: zlib and zstd, several sharing a host cluster.
mk zlib-4k 256K cluster_size=4096
io zlib-4k 'write -c -P 0x21 0 4k' 'write -c -P 0x22 4k 4k' 'write -P 0x23 8k 4k'
mk zlib-512 64K cluster_size=512
io zlib-512 'write -c -P 0x24 0 512' 'write -c -P 0x25 512 512'
mk zlib-64k 1M
io zlib-64k 'write -c -P 0x26 0 64k'
try mk zstd-4k 256K cluster_size=4096,compression_type=zstd
[ -f zstd-4k.qcow2 ] && io zstd-4k 'write -c -P 0x31 0 4k' 'write -c -P 0x32 4k 4k'
try mk zstd-64k 1M compression_type=zstd
[ -f zstd-64k.qcow2 ] && io zstd-64k 'write -c -P 0x33 0 64k'

# Refcount widths.
mk rc1 256K cluster_size=4096,refcount_bits=1
io rc1 'write -P 0x41 0 4k'
mk rc64 256K cluster_size=4096,refcount_bits=64
io rc64 'write -P 0x42 0 4k'
mk rc8-512 64K cluster_size=512,refcount_bits=8
io rc8-512 'write -P 0x43 0 2k'

# Extended L2 (subclusters): partial writes, zeroes, compression.
try mk extl2-16k 512K cluster_size=16384,extended_l2=on
if [ -f extl2-16k.qcow2 ]; then
  io extl2-16k 'write -P 0x51 0 512' 'write -P 0x52 4k 1k' 'write -z 8k 512' \
    'write -c -P 0x53 32k 16k' 'write -z 64k 16k'
fi

# An internal snapshot, then more writes to the active layer.
mk snap 256K cluster_size=4096
io snap 'write -P 0x61 0 8k'
qemu-img snapshot -c snap1 snap.qcow2
io snap 'write -P 0x62 4k 8k'

# Backing file names: relative with a format extension (qcow2 and raw),
# and one whose format extension is renamed to an unknown type (so: no
# format given, plus an unknown extension to skip).
qemu-img create -q -f raw base.raw 64K
mk base 64K cluster_size=4096
qemu-img create -q -f qcow2 -o cluster_size=4096 -b base.qcow2 -F qcow2 \
  backing-qcow2.qcow2 128K
io backing-qcow2 'write -P 0x71 4k 4k'
qemu-img create -q -f qcow2 -o cluster_size=512 -b base.raw -F raw \
  backing-raw.qcow2 64K
io backing-raw 'write -P 0x72 0 512'
if command -v python3 >/dev/null 2>&1; then
  python3 - backing-raw.qcow2 backing-noformat.qcow2 <<'EOF'
import sys
img = bytearray(open(sys.argv[1], "rb").read())
i = img.index(b"\xe2\x79\x2a\xca", 72, 512)
img[i:i + 4] = b"\x12\x34\x56\x78"
open(sys.argv[2], "wb").write(img)
EOF
fi

# A feature-name table (QEMU writes one only for clusters > 4 KiB) and lazy
# refcounts.
mk features-16k 256K cluster_size=16384,lazy_refcounts=on
io features-16k 'write -P 0x81 0 4k'

# A virtual size that is not a cluster multiple (but a sector multiple).
mk oddsize $((196 * 512 + 512 * 7)) cluster_size=4096
io oddsize "write -P 0x91 $((196 * 512)) 3584"

# Refused but parseable: an external data file, a persistent bitmap.
try mk datafile 64K cluster_size=4096,data_file=datafile.raw
try mk bitmap 256K cluster_size=4096
[ -f bitmap.qcow2 ] && try qemu-img bitmap -f qcow2 --add bitmap.qcow2 b0 &&
  io bitmap 'write -P 0x95 0 4k'

# Partition tables for fuzz-partition (made by sfdisk when it is there):
# an MBR with three primaries and three logical partitions, and a GPT with
# entries 1, 2 and 128, on 256 KiB disks.
if command -v sfdisk >/dev/null 2>&1; then
  truncate -s 256K mbr.part gpt.part
  printf '%s\n' 'label: dos' 'start=8, size=64' 'start=72, size=64' \
    'start=136, size=64' 'start=200, type=5' 'start=208, size=64' \
    'start=280, size=64' 'start=352, size=64' |
    try sfdisk --quiet mbr.part
  printf '%s\n' 'label: gpt' 'first-lba: 34' 'gpt.part1 : start=40, size=64' \
    'gpt.part2 : start=104, size=64' 'gpt.part128 : start=168, size=64' |
    try sfdisk --quiet gpt.part
fi

# Hostile tables (issue 11, item 3), written byte by byte since no tool
# makes them: EBR chains that loop or run 2000 deep, GPTs of 128 and 300
# entries, bad header and entry-array CRCs, entries past the end, repeated,
# overlapping or ending before they start, a protective MBR alone, and a
# BSD disklabel nested in a FreeBSD slice (libblkid reads nested labels
# only on disks of 1440 KiB or more: the harness adds the zeros).
if command -v python3 >/dev/null 2>&1; then
  python3 - . <<'EOF'
import os, struct, sys, uuid, zlib
S = 512
out = sys.argv[1]

def img(sectors):
    return bytearray(sectors * S)

def mbr_entry(b, base, i, typ, start, size, boot=0):
    o = base + 446 + 16 * i
    b[o] = boot
    b[o + 4] = typ
    struct.pack_into('<II', b, o + 8, start, size)
    struct.pack_into('<H', b, base + 510, 0xaa55)

def save(name, b):
    open(os.path.join(out, name), 'wb').write(b)

# GPT: entries [(number, first, last)], n entries in the array
def gpt(sectors, entries, n=128, bad_hdr=False, bad_backup=False,
        bad_entries=False, pmbr=True):
    b = img(sectors)
    last = sectors - 1
    if pmbr:
        mbr_entry(b, 0, 0, 0xee, 1, min(sectors - 1, 0xffffffff))
    esz = 128
    esec = (n * esz + S - 1) // S
    arr = bytearray(esec * S)
    for num, first, lastlba in entries:
        o = (num - 1) * esz
        arr[o:o + 16] = uuid.UUID('0fc63daf-8483-4772-8e79-3d69d8477de4').bytes_le
        arr[o + 16:o + 32] = uuid.UUID(int=num).bytes_le
        struct.pack_into('<QQ', arr, o + 32, first, lastlba)
        name = ('p%d' % num).encode('utf-16-le')
        arr[o + 56:o + 56 + len(name)] = name
    ecrc = zlib.crc32(bytes(arr[:n * esz]))
    def header(my, alt, elba, bad):
        h = bytearray(S)
        struct.pack_into('<8sIII I QQQQ 16s QIII', h, 0, b'EFI PART', 0x10000,
                         92, 0, 0, my, alt, 2 + esec, last - 1 - esec,
                         uuid.UUID(int=0x1234).bytes_le, elba, n, esz,
                         ecrc ^ (1 if bad_entries else 0))
        crc = zlib.crc32(bytes(h[:92]))
        struct.pack_into('<I', h, 16, crc ^ (1 if bad else 0))
        return h
    b[S:2 * S] = header(1, last, 2, bad_hdr)
    b[2 * S:2 * S + len(arr)] = arr
    b[(last - esec) * S:last * S] = arr
    b[last * S:] = header(last, 1, last - esec, bad_backup)
    return b

# MBR with primaries 1-3 and an extended 4 holding logicals chained by EBRs
# at ebrs (absolute sectors); each EBR: logical (start rel, size), next rel
def mbr_ext(sectors, primaries, ext, chain):
    b = img(sectors)
    for i, (t, s, n) in enumerate(primaries):
        mbr_entry(b, 0, i, t, s, n)
    ext_start, ext_size = ext
    mbr_entry(b, 0, 3, 0x05, ext_start, ext_size)
    for ebr, logical, nxt in chain:
        if logical:
            mbr_entry(b, ebr * S, 0, 0x83, logical[0], logical[1])
        if nxt is not None:
            mbr_entry(b, ebr * S, 1, 0x05, nxt[0], nxt[1])
        struct.pack_into('<H', b, ebr * S + 510, 0xaa55)
    return b

# looping chains: 100 -> 120 -> 140 -> 120 ...; and one EBR linking to itself
save('ebr-loop.part', mbr_ext(512, [(0x83, 8, 64)], (100, 400), [
    (100, (1, 10), (20, 20)), (120, (1, 10), (40, 20)), (140, (1, 10), (20, 20))]))
save('ebr-self-loop.part', mbr_ext(512, [], (100, 400), [
    (100, (1, 10), (20, 20)), (120, (1, 10), (20, 20))]))
# a loop back to the first EBR at a different logical offset each time
save('ebr-loop-first.part', mbr_ext(512, [], (100, 400), [
    (100, (2, 5), (30, 40)), (130, (3, 5), (0x0, 40))]))

# thousands deep: EBR k at 34+k, its logical at 34+k+1 (one sector each)
deep = 2000
chain = [(34 + k, (1, 1), (k + 1, 2) if k + 1 < deep else None) for k in range(deep)]
save('ebr-deep.part', mbr_ext(2048, [], (34, 2048 - 34), chain))

# GPT: 128 entries all used; 300 entries (more than Linux's 256)
save('gpt-128.part', gpt(512, [(i, 40 + 2 * i, 40 + 2 * i) for i in range(1, 129)]))
n300 = 300
save('gpt-300.part', gpt(1024, [(i, 100 + 2 * i, 100 + 2 * i) for i in range(1, n300 + 1)], n=n300))
# CRCs: primary header bad (backup good), both headers bad, entries bad
few = [(1, 40, 103), (2, 104, 167), (128, 168, 231)]
save('gpt-badcrc-primary.part', gpt(512, few, bad_hdr=True))
save('gpt-badcrc-both.part', gpt(512, few, bad_hdr=True, bad_backup=True))
save('gpt-badcrc-entries.part', gpt(512, few, bad_entries=True))
# entries past the end, overlapping each other, last < first
save('gpt-hostile.part', gpt(512, [(1, 40, 103), (2, 80, 120), (3, 500, 600),
                                   (4, 200, 150), (5, 40, 103), (6, 480, 511)]))

# protective MBR only: no GPT header behind it
b = img(256)
mbr_entry(b, 0, 0, 0xee, 1, 255)
save('pmbr-only.part', b)

# MBR entries past the end of the disk and overlapping
b = img(256)
mbr_entry(b, 0, 0, 0x83, 8, 64)
mbr_entry(b, 0, 1, 0x83, 40, 64)          # overlaps 1
mbr_entry(b, 0, 2, 0x83, 200, 100)        # ends past the end
mbr_entry(b, 0, 3, 0x83, 0xfffffff0, 0x20)  # starts past the end, 32-bit wrap
save('mbr-hostile.part', b)
b = img(256)
mbr_entry(b, 0, 0, 0x83, 8, 64)
mbr_entry(b, 0, 1, 0x83, 8, 64)           # the same twice
mbr_entry(b, 0, 2, 0x83, 8, 0)            # empty
mbr_entry(b, 0, 3, 0x83, 100, 100)
save('mbr-twice.part', b)

# BSD disklabel nested in an MBR FreeBSD slice (type 0xa5) at sector 64:
# label in the slice's sector 1, partitions a, b, c (the whole slice), d
def bsd_label(parts):
    l = bytearray(S)
    struct.pack_into('<I', l, 0, 0x82564557)
    struct.pack_into('<I', l, 40, 512)
    struct.pack_into('<I', l, 132, 0x82564557)
    struct.pack_into('<HII', l, 138, len(parts), 8192, 0)
    for i, (size, off, fst) in enumerate(parts):
        struct.pack_into('<IIIBBH', l, 148 + 16 * i, size, off, 0, fst, 0, 0)
    end = 148 + 16 * len(parts)
    x = 0
    for i in range(0, end, 2):
        x ^= struct.unpack_from('<H', l, i)[0]
    struct.pack_into('<H', l, 136, x)
    return l
b = img(512)
mbr_entry(b, 0, 0, 0xa5, 64, 256)
mbr_entry(b, 0, 1, 0x83, 320, 64)
b[65 * S:66 * S] = bsd_label([(64, 64 + 16, 7), (32, 64 + 80, 1),
                              (256, 64, 0), (64, 64 + 112, 7), (400, 64 + 200, 7)])
save('bsd-in-mbr.part', b)

# Sparse disks (see fuzz-partition.c): "FDESPARS", then records of offset
# (8 bytes), length (4) and data, for tables past the first MiB.
def sparse(name, chunks):
    data = bytearray(b'FDESPARS')
    for off, blob in chunks:
        data += struct.pack('<QI', off, len(blob)) + blob
    save(name, data)
def ebr(logical, links):
    e = bytearray(S)
    if logical:
        mbr_entry(e, 0, 0, 0x83, logical[0], logical[1])
    for i, (start, size) in enumerate(links):
        mbr_entry(e, 0, 1 + i, 0x05, start, size)
    struct.pack_into('<H', e, 510, 0xaa55)
    return e
MiB = 2048                                  # sectors
mbr = img(1)
mbr_entry(mbr, 0, 0, 0x05, 4 * MiB, 4 * MiB)
# an EBR at 4 MiB with two links (libblkid follows the first non-zero one),
# and one whose second link is zero; the next EBRs lie past the 64 KiB
# after each logical partition that the table read copies too
sparse('far-ebr-two-links.sparse', [
    (0, mbr), (4 * MiB * S, ebr((1, 10), [(1000, 50), (2000, 50)])),
    ((4 * MiB + 1000) * S, ebr((1, 10), [])),
    ((4 * MiB + 2000) * S, ebr((2, 20), []))])
sparse('far-ebr-zero-link.sparse', [
    (0, mbr), (4 * MiB * S, ebr((1, 10), [(1000, 50), (0, 50)])),
    ((4 * MiB + 1000) * S, ebr((1, 10), []))])
# 1100 EBRs from 4 MiB on, one sector apart, each logical one sector long
chain = bytearray()
for k in range(1100):
    chain += ebr((1, 1), [(k + 1, 2)] if k + 1 < 1100 else [])
sparse('far-ebr-deep.sparse', [(0, mbr), (4 * MiB * S, chain)])
# a GPT whose entry array lies at 8 MiB, backup header at 32 MiB - 512
g = gpt(32 * MiB, [(1, 10 * MiB, 11 * MiB - 1), (2, 11 * MiB, 12 * MiB - 1),
                        (128, 12 * MiB, 12 * MiB + 7)])
hdr = bytearray(g[S:2 * S])
arr = g[2 * S:34 * S]
struct.pack_into('<Q', hdr, 72, 8 * MiB)
struct.pack_into('<I', hdr, 16, 0)
struct.pack_into('<I', hdr, 16, zlib.crc32(bytes(hdr[:92])))
sparse('far-gpt.sparse', [(0, g[:S]), (S, hdr), (8 * MiB * S, arr),
                          (len(g) - 33 * S, g[-33 * S:])])
# a FreeBSD slice at 4 MiB holding a BSD label, on an 8 MiB disk
b = img(1)
mbr_entry(b, 0, 0, 0xa5, 4 * MiB, 2 * MiB)
label = bsd_label([(64, 4 * MiB + 16, 7), (32, 4 * MiB + 80, 1),
                   (2 * MiB, 4 * MiB, 0)])
sparse('far-bsd.sparse', [(0, b), ((4 * MiB + 1) * S, label),
                          (8 * MiB * S - S, bytes(S))])
EOF
fi

# VDI images for fuzz-vdi-read: dynamic and static, empty, written by
# qemu-io (blocks allocated out of order), converted from raw data with
# holes, a disk of one partial block, and size 0.  Those with data are
# written in the harness's sparse layout ("FDESPARS" and records of offset,
# length and bytes, without the runs of zeros), so that a seed of several
# 1 MiB blocks stays small; the others are kept as they are.
vdi() { img vdi "$@"; }
vdio() { qio vdi "$@"; }
vdi vdi-empty $((3 * 1048576 + 512))
vdi vdi-static-empty 2M static=on
vdi vdi-zero 0
vdi vdi-written $((3 * 1048576 + 512))
vdio vdi-written 'write -P 0x11 0 4k' 'write -P 0x22 2M 8k' \
  'write -P 0x33 1M 512' 'write -P 0x44 3M 512'
vdi vdi-static-written $((2 * 1048576 + 4096)) static=on
vdio vdi-static-written 'write -P 0x55 4k 4k' 'write -P 0x66 2M 4k'
vdi vdi-small 64K
vdio vdi-small 'write -P 0x77 0 512' 'write -P 0x78 60k 4k'
printf 'raw data' >vdi-src.raw
truncate -s 1536K vdi-src.raw
printf 'more data' | dd of=vdi-src.raw bs=1 seek=1100000 conv=notrunc status=none
qemu-img convert -f raw -O vdi vdi-src.raw vdi-converted.vdi
if command -v python3 >/dev/null 2>&1; then
  for f in vdi-*.vdi; do
    python3 - "$f" <<'EOF'
import struct, sys
name = sys.argv[1]
data = open(name, "rb").read()
if len(data) > 65536:
    out, S, off = bytearray(b"FDESPARS"), 512, 0
    while off < len(data):
        if data[off:off + S].strip(b"\0"):
            end = off + S
            while end < len(data) and data[end:end + S].strip(b"\0"):
                end += S
            out += struct.pack("<QI", off, len(data[off:end])) + data[off:end]
            off = end
        else:
            off += S
    out += struct.pack("<QI", len(data), 0)
    open(name, "wb").write(out)
EOF
  done
fi

# VHD images for fuzz-vpc-read: qemu-img's dynamic (empty, written,
# force_size, size 0, converted from data) and fixed ones, and
# differencing disks over the harness's base.vhd made by tests/vpc-poke.py
# (4 and 8 KiB blocks, sectors present and absent in the bitmaps, each
# kind of parent locator).  Runs of 4 KiB or more of zeros are cut out and
# listed in the harness's "FDEHOLES" trailer (holes), so a 2 MiB block
# stays small.
vpc() { img vpc "$@"; }
vpco() { qio vpc "$@"; }
vpc vpc-empty 3M
vpc vpc-zero 0
vpc vpc-written 6M
vpco vpc-written 'write -P 0x11 0 4k' 'write -P 0x22 2049k 1k' \
  'write -P 0x33 5M 512'
vpc vpc-force 5000000 force_size=on
vpco vpc-force 'write -P 0x44 1M 4k'
vpc vpc-fixed 1M subformat=fixed
vpco vpc-fixed 'write -P 0x55 0 512' 'write -P 0x56 700k 4k'
vpc vpc-fixed-force 100000 subformat=fixed,force_size=on
vpco vpc-fixed-force 'write -P 0x57 90k 512'
printf 'vhd data' >vpc-src.raw
truncate -s 3M vpc-src.raw
printf 'more data' | dd of=vpc-src.raw bs=1 seek=2500000 conv=notrunc status=none
qemu-img convert -f raw -O vpc vpc-src.raw vpc-converted.vhd
if command -v python3 >/dev/null 2>&1; then
  # base.vhd exactly as fuzz-vpc-read.c makes it in its sandbox
  python3 -c '
import struct
img = bytearray((i * 13 + 5) & 0xff for i in range(65536))
f = bytearray(512)
struct.pack_into(">8sIIQI4sI4sQQHBBI", f, 0, b"conectix", 2, 0x10000,
                 2**64 - 1, 0, b"win ", 0xa0000, b"Wi2k", 65536, 65536,
                 4, 4, 8, 2)
f[68:84] = b"FDE-FUZZ-BASEVHD"
struct.pack_into(">I", f, 64, ~sum(f) & 0xffffffff)
open("base.vhd", "wb").write(img + f)'
  poke="python3 $fuzzdir/../vpc-poke.py"
  $poke diff base.vhd vpc-diff-w2ru.vhd --block 4096 --w2ru '.\base.vhd' \
    --write 0:4096:0x61 --write 8192:512:0x62 --write 12800:1024:0x63
  $poke diff base.vhd vpc-diff-macx.vhd --block 8192 \
    --macx 'file://./base.vhd' --write 4096:8192:0x64 --write 61440:512:0x65
  $poke diff base.vhd vpc-diff-name.vhd --block 4096 \
    --w2ku 'C:\vms\base.vhd' --name 'C:\vms\base.vhd' --write 32768:2048:0x66
  rm -f base.vhd
  holes vpc-*.vhd
fi

# VHDX images for fuzz-vhdx-read: qemu-img's dynamic (empty, written,
# size 0, converted from data, 1 MiB and 32 MiB blocks) and fixed ones,
# and images made by tests/vhdx-poke.py: 4096-byte logical sectors, a log
# to replay (two entries and a stale one), differencing disks over the
# harness's base.vhdx (partially and fully present blocks).  The
# 16 largest runs of 4 KiB or more of zeros are cut out and listed in the
# harness's "FDEHOLES" trailer.
vhdx() { img vhdx "$@"; }
vhdxo() { qio vhdx "$@"; }
vhdx vhdx-empty 3M block_size=1M
vhdx vhdx-zero 0 block_size=1M
vhdx vhdx-written 5M block_size=1M
vhdxo vhdx-written 'write -P 0x11 0 4k' 'write -P 0x22 2049k 1k' \
  'write -P 0x33 4M 512'
vhdx vhdx-bigblock 40M block_size=32M
vhdxo vhdx-bigblock 'write -P 0x44 33M 4k'
vhdx vhdx-fixed 2M subformat=fixed,block_size=1M
vhdxo vhdx-fixed 'write -P 0x55 0 512' 'write -P 0x56 700k 4k'
printf 'vhdx data' >vhdx-src.raw
truncate -s 3M vhdx-src.raw
qemu-img convert -f raw -O vhdx -o block_size=1M vhdx-src.raw \
  vhdx-converted.vhdx
if command -v python3 >/dev/null 2>&1; then
  poke="python3 $fuzzdir/../vhdx-poke.py"
  printf 'sector data' >vhdx-src.raw
  truncate -s 2M vhdx-src.raw
  $poke build vhdx-4k.vhdx --size 2M --sector 4096 --data vhdx-src.raw
  # over the harness's base.vhdx (its DataWriteGuid, see fuzz-vhdx-read.c)
  base='{2d454446-5546-5a5a-2d42-415345564858}'
  $poke build vhdx-diff.vhdx --size 1M --parent base.vhdx --linkage "$base" \
    --relative base.vhdx --write 0:4096:0x61 --write 8192:512:0x62
  $poke build vhdx-diff4k.vhdx --size 1M --sector 4096 --parent base.vhdx \
    --linkage "$base" --relative base.vhdx --write 4096:8192:0x63
  $poke build vhdx-diff-full.vhdx --size 1M --parent base.vhdx \
    --linkage "$base" --absolute /nonexistent/base.vhdx --relative base.vhdx \
    --write 0:1048576:0 --write 4096:512:0x64
  vhdx vhdx-log 3M block_size=1M,log_size=2M
  vhdxo vhdx-log 'write -P 0x66 0 8k'
  $poke log vhdx-log.vhdx --block 2 --stale
  holes vhdx-*.vhdx
fi
rm -f vhdx-src.raw

# VMDK images for fuzz-vmdk-read: qemu-img's monolithicSparse (written,
# zeroed grains), streamOptimized and monolithicFlat descriptor (naming
# base.raw); a delta made by qemu-img over parent.vmdk (the harness's: CID
# fdefdefd over base.raw); hand-written descriptors naming the sandbox's
# ext.vmdk and base.raw (several extents, a VMFS one, skipped lines); a
# monolithicSparse after a 512-byte prefix starting with 'O' (the harness
# opens such an input as an OVA member too).
vmdk() { img vmdk "$@"; }
vmdko() { qio vmdk "$@"; }
vmdk vmdk-sparse 1M
vmdko vmdk-sparse 'write -P 0x11 0 4k' 'write -P 0x22 700k 1k'
vmdk vmdk-zeroed 256k zeroed_grain=on
vmdko vmdk-zeroed 'write -P 0x33 0 4k' 'write -P 0x33 64k 4k' 'write -z 64k 64k'
printf 'vmdk data' >vmdk-src.raw
truncate -s 200k vmdk-src.raw
qemu-img convert -f raw -O vmdk -o subformat=streamOptimized vmdk-src.raw \
  vmdk-stream.vmdk
if command -v python3 >/dev/null 2>&1; then
  python3 -c '
open("base.raw", "wb").write(bytes((i * 31 + 7) & 0xff for i in range(65536)))'
  printf '# Disk DescriptorFile\nversion=1\nCID=fdefdefd\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\nRW 128 FLAT "base.raw" 0\n' \
    >parent.vmdk
  qemu-img create -q -f vmdk -b parent.vmdk -F vmdk vmdk-delta.vmdk
  vmdko vmdk-delta 'write -P 0x44 8k 4k'
  { printf 'O'; head -c 511 /dev/zero; cat vmdk-sparse.vmdk; } >vmdk-ova.vmdk
  rm -f base.raw parent.vmdk
  holes vmdk-sparse.vmdk vmdk-zeroed.vmdk vmdk-stream.vmdk vmdk-delta.vmdk \
    vmdk-ova.vmdk
fi
printf '# Disk DescriptorFile\nversion=1\nCID=1234abcd\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\nRW 128 FLAT "base.raw" 0\n\nddb.adapterType = "ide"\nddb.geometry.cylinders = "2"\n' \
  >vmdk-flat.vmdk
printf '# Disk DescriptorFile\nversion=1\nCID=2\nparentCID=ffffffff\ncreateType="twoGbMaxExtentSparse"\nRW 128 SPARSE "ext.vmdk"\nRW 64 FLAT "base.raw" 8\nRDONLY 8 FLAT "base.raw" 0\nRW 8 ZERO "base.raw"\nRW 64 VMFS "base.raw"\n' \
  >vmdk-extents.vmdk
printf '# Disk DescriptorFile\nversion=1\nCID=3\nparentCID=fdefdefd\ncreateType="vmfsSparse"\nparentFileNameHint="parent.vmdk"\nRW 128 VMFSSPARSE "ext.vmdk"\n' \
  >vmdk-desc-delta.vmdk
rm -f vmdk-src.raw

# OVAs for fuzz-ova, made by GNU tar (ustar, GNU and pax formats): an OVF
# naming two small raw disks in its DiskSection, long member names (GNU
# long-name members, pax path records), an OVF without a DiskSection, and
# a streamOptimized VMDK inside.  Skipped without tar.
# ovf FILE HREF...: an OVF naming each HREF as a disk, in order.
ovf() {
  o=$1
  shift
  {
    echo '<?xml version="1.0"?>'
    echo '<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">'
    echo '<References>'
    i=0
    for h in "$@"; do i=$((i + 1)); echo "<File ovf:id=\"f$i\" ovf:href=\"$h\"/>"; done
    echo '</References><DiskSection><Info>disks</Info>'
    i=0
    for h in "$@"; do i=$((i + 1)); echo "<Disk ovf:diskId=\"d$i\" ovf:fileRef=\"f$i\"/>"; done
    echo '</DiskSection></Envelope>'
  } >"$o"
}
if command -v tar >/dev/null 2>&1; then
  mkdir ova && (
    cd ova
    printf 'first disk' >d1.img
    truncate -s 16K d1.img
    printf 'second disk' | dd of=d1.img bs=1 seek=9000 conv=notrunc status=none
    printf 'disk two' >d2.img
    truncate -s 8K d2.img
    ovf a.ovf d1.img d2.img
    for fmt in ustar gnu pax; do
      tar --format=$fmt -cf ../ova-$fmt.ova a.ovf d1.img d2.img
    done
    long=disk-with-a-long-name-$(printf 'n%.0s' $(seq 100)).img
    cp d2.img "$long"
    ovf l.ovf d1.img "$long"
    tar --format=gnu -cf ../ova-longname-gnu.ova l.ovf d1.img "$long"
    tar --format=pax -cf ../ova-longname-pax.ova l.ovf d1.img "$long"
    printf '%s\n' '<?xml version="1.0"?>' \
      '<ovf:Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/2">' \
      '<ovf:References><ovf:File ovf:id="x" ovf:href="d2.img" ovf:size="8192"/>' \
      '<ovf:File ovf:id="y" ovf:href="d1.img"/></ovf:References></ovf:Envelope>' \
      >n.ovf
    tar --format=ustar -cf ../ova-nodisksection.ova n.ovf d1.img d2.img
    if qemu-img convert -f raw -O vmdk -o subformat=streamOptimized d1.img \
        s.vmdk 2>/dev/null; then
      ovf s.ovf s.vmdk d2.img
      tar --format=ustar -cf ../ova-vmdk.ova s.ovf s.vmdk d2.img
    fi
  )
  rm -rf ova
  holes ova-*.ova
fi

for f in *.qcow2 *.part *.sparse *.vdi *.vhd *.vhdx *.vmdk *.ova; do
  [ -f "$f" ] && cp "$f" "$out/seed-$f"
done
echo "$0: $(ls "$out" | wc -l) seeds in $out"
