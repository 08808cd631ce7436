#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
# Make the seed corpus for the qcow2 fuzzers: small images made by
# qemu-img/qemu-io that together reach every feature the reader handles.
#
# Usage: make-corpus.sh OUTDIR
#
# Seeds are under 300 KiB, except the three 64 KiB-cluster images that hold
# data (about 320 KiB: header, reftable, refblock, L1, L2 and data are one
# cluster each, the last one cut short); most seeds use 512 B .. 16 KiB
# clusters.
# Needs qemu-img and qemu-io; exits 77 (automake's "skipped") without them.
set -eu

out=${1:?usage: make-corpus.sh OUTDIR}
for t in qemu-img qemu-io; do
  command -v "$t" >/dev/null 2>&1 || { echo "$0: $t is not installed" >&2; exit 77; }
done
mkdir -p "$out"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/fde-corpus.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"

# mk NAME SIZE [qemu-img create -o OPTIONS]: a fresh image NAME.qcow2.
mk() {
  name=$1 size=$2
  shift 2
  qemu-img create -q -f qcow2 ${1:+-o "$1"} "$name.qcow2" "$size"
}

# io NAME COMMAND...: run qemu-io commands on NAME.qcow2.
io() {
  name=$1
  shift
  for c in "$@"; do
    set -- "$@" -c "$c"
    shift
  done
  qemu-io -f qcow2 "$@" "$name.qcow2" >/dev/null
}

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
# entries 1, 2 and 128, on 1 MiB disks.
if command -v sfdisk >/dev/null 2>&1; then
  truncate -s 1M mbr.part gpt.part
  printf '%s\n' 'label: dos' 'start=8, size=64' 'start=72, size=64' \
    'start=136, size=64' 'start=200, type=5' 'start=208, size=64' \
    'start=280, size=64' 'start=352, size=64' |
    try sfdisk --quiet mbr.part
  printf '%s\n' 'label: gpt' 'first-lba: 34' 'gpt.part1 : start=40, size=64' \
    'gpt.part2 : start=104, size=64' 'gpt.part128 : start=168, size=64' |
    try sfdisk --quiet gpt.part
fi

for f in *.qcow2 *.part; do
  [ -f "$f" ] && cp "$f" "$out/seed-$f"
done
echo "$0: $(ls "$out" | wc -l) seeds in $out"
