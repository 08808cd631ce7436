# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
# Making qcow2 test images with qemu-img and qemu-io, and their raw
# oracles.  Load after helpers.bash (`load helpers; load qcow2-helpers`).
#
# The image matrix: build_qcow2_matrix DIR builds every case below into
# DIR/NAME/ (the exported image is always DIR/NAME/disk.qcow2, next to its
# backing files if any) with
#   DIR/NAME.raw      the oracle: qemu-img convert -O raw of the image
#   DIR/NAME.vsize    "virtual-size" from qemu-img info --output=json
#   DIR/NAME.cluster  "cluster-size" of the top layer
#   DIR/NAME.json     qemu-img info --output=json of the top layer
# and, for the snapshot case, DIR/snap.<snapshot>.raw.  A case that cannot
# be built leaves DIR/NAME.failed with qemu's messages instead.
#
# use_qcow2_case DIR NAME copies DIR/NAME/ into $WORK/NAME/ (tests export
# the copy, so common_teardown unmounts it) and sets IMG, ORACLE, VSIZE,
# CLUSTER.

QCOW2_CASES="v2-64k v2-zlib-4k v3-64k c512 c4k c2m zlib-64k zstd-64k \
zlib-2m zstd-2m zstd-512 refcount1 refcount64 extl2-64k extl2-2m-zstd \
extl2-backed zeros oddsize snap chain huge"

# qio IMG CMD...: run the qemu-io commands on qcow2 image IMG; on failure
# print qemu-io's output and return 1.  (qemu-io has no -q.)
qio() {
  local img=$1 c out
  shift
  local args=()
  for c in "$@"; do args+=(-c "$c"); done
  out=$(qemu-io -f qcow2 -t unsafe "${args[@]}" "$img" 2>&1) || {
    echo "# qemu-io on $img failed: $out" >&2
    return 1
  }
  if grep -qiE 'failed|error|invalid|usage' <<<"$out"; then
    echo "# qemu-io on $img: $out" >&2
    return 1
  fi
}

# qimg_field IMG KEY: a number from qemu-img info --output=json (top
# layer); with IMG "-", from that JSON on stdin.
qimg_field() {
  if [ "$1" = - ]; then cat; else qemu-img info --output=json "$1"; fi |
    sed -n "s/^    \"$2\": \\([0-9]*\\),\\{0,1\\}\$/\\1/p" | head -n 1
}

# put FILE OFFSET: copy stdin into FILE at byte OFFSET (no truncation).
put() {
  dd of="$1" bs=64k seek="$2" oflag=seek_bytes conv=notrunc status=none
}

# make_seed_raw FILE SIZE: a raw disk of SIZE bytes with random data,
# compressible text and sparse bytes at a few places, holes elsewhere.
make_seed_raw() {
  local f=$1 s=$2
  truncate -s "$s" "$f"
  head -c $((s / 16 + 4321)) /dev/urandom | put "$f" $((s / 16 + 333))
  seq 1 200000 | head -c $((s / 8 + 777)) | put "$f" $((s / 4 + 1001))
  head -c 100000 /dev/urandom | put "$f" $((s * 5 / 8 + 4097))
  printf 'sparse byte' | put "$f" $((s * 7 / 8 + 13))
  seq 7 99999 | head -c 1000 | put "$f" $((s - 1000))
}

# pattern_writes SIZE CLUSTER: qemu-io commands writing patterns at odd
# offsets, across cluster edges and up to the very end.
pattern_writes() {
  local s=$1 c=$2
  echo "write -P 0x11 123 4567"
  echo "write -P 0x22 $((c - 100)) 300"
  echo "write -P 0x33 $((s / 3 + 777)) $((2 * c + 1234))"
  echo "write -P 0x44 $((s / 2 - 5)) 10"
  echo "write -P 0x55 $((s * 3 / 4 + 1)) 100000"
  echo "write -P 0xa5 $((s * 5 / 8 + 50000)) 3000"
  echo "write -P 0x66 $((s - 3333)) 3333"
}

# zero_writes SIZE CLUSTER: zero writes over allocated and unallocated
# ranges (aligned, unaligned, unmapping) and discards.
zero_writes() {
  local s=$1 c=$2
  echo "write -z $((s / 16)) $((2 * c))"
  echo "write -z -u $((s / 16 + 2 * c)) $c"
  echo "write -z $((s / 4 + 1001 + 100)) 5000"
  echo "write -z $((s * 5 / 8 + 4096 + c)) $((c + 4096))"
  echo "write -z $((s / 2 + 2 * c)) $((4 * c))"
  echo "write -z $((s / 2 + 8 * c + 777)) 3000"
  echo "discard $((s * 3 / 4)) $((2 * c))"
  echo "discard $((s / 3 + 1000)) $((c + 5000))"
}

# subcluster_writes SIZE CLUSTER: extended-L2 work: single subclusters,
# partial subclusters, zeroed and discarded subclusters.
subcluster_writes() {
  local s=$1 c=$2 sc=$(($2 / 32)) b
  b=$(((s / 2 / c) * c)) # a cluster boundary in the middle
  echo "write -P 0x71 $((b + sc)) $sc"
  echo "write -P 0x72 $((b + 2 * c + 100)) 333"
  echo "write -P 0x73 $((b + 3 * c + 5 * sc)) $((3 * sc + 17))"
  echo "write -z $((b + 4 * c + 2 * sc)) $((4 * sc))"
  echo "write -P 0x74 $((b + 5 * c)) $c"
  echo "write -z $((b + 5 * c + 8 * sc)) $sc"
  echo "write -z -u $((b + 5 * c + 12 * sc)) $((2 * sc))"
  echo "discard $((b + 5 * c + 20 * sc)) $((2 * sc))"
  echo "write -P 0x75 $((b + 6 * c)) $((2 * c))"
  echo "discard $((b + 6 * c)) $c"
}

# lines_to_qio IMG < commands: qio with one command per input line.
lines_to_qio() {
  local cmds=() l
  while IFS= read -r l; do cmds+=("$l"); done
  qio "$1" "${cmds[@]}"
}

# finish_case DIR NAME: the oracle and the recorded sizes.
finish_case() {
  local d=$1 n=$2
  qemu-img convert -O raw "$d/$n/disk.qcow2" "$d/$n.raw" || return 1
  # simple_case already asked (writes change neither size)
  [ -s "$d/$n.json" ] ||
    qemu-img info --output=json "$d/$n/disk.qcow2" >"$d/$n.json" || return 1
  qimg_field - virtual-size <"$d/$n.json" >"$d/$n.vsize"
  qimg_field - cluster-size <"$d/$n.json" >"$d/$n.cluster"
  [ -s "$d/$n.vsize" ] && [ -s "$d/$n.cluster" ]
}

# simple_case DIR NAME SIZE OPTS [COMPRESS [EXTRA]]: seed raw -> qemu-img
# convert -O qcow2 -o OPTS (with -c when COMPRESS is "c") -> pattern writes
# (and EXTRA: "zeros" or "subclusters").
simple_case() {
  local d=$1 n=$2 s=$3 opts=$4 comp=${5:-} extra=${6:-} c
  mkdir -p "$d/$n"
  make_seed_raw "$d/$n.seed" "$s"
  qemu-img convert ${comp:+-c} -O qcow2 -o "$opts" "$d/$n.seed" \
    "$d/$n/disk.qcow2" || return 1
  rm -f "$d/$n.seed"
  if [ -n "$comp" ]; then # the case is about compressed clusters: are there?
    qemu-img check --output=json "$d/$n/disk.qcow2" |
      grep -q '"compressed-clusters": [1-9]' ||
      { echo "# $n: qemu-img convert -c made no compressed cluster" >&2; return 1; }
  fi
  qemu-img info --output=json "$d/$n/disk.qcow2" >"$d/$n.json" || return 1
  c=$(qimg_field - cluster-size <"$d/$n.json")
  s=$(qimg_field - virtual-size <"$d/$n.json")
  {
    pattern_writes "$s" "$c"
    case $extra in
      zeros) zero_writes "$s" "$c" ;;
      subclusters) subcluster_writes "$s" "$c" ;;
    esac
  } | lines_to_qio "$d/$n/disk.qcow2" || return 1
  finish_case "$d" "$n"
}

# The extended-L2 overlay over a raw base full of random data: unallocated
# subclusters must show the base, zeroed ones must hide it.
case_extl2_backed() {
  local d=$1 n=extl2-backed s=$((8 << 20)) c=32768
  mkdir -p "$d/$n"
  head -c "$s" /dev/urandom >"$d/$n/base.raw"
  qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=$c \
    -b base.raw -F raw "$d/$n/disk.qcow2" "$s" || return 1
  { pattern_writes "$s" "$c"; subcluster_writes "$s" "$c"
    echo "write -z 0 $((c / 32))"; echo "write -z $((2 * c + 1024)) 2048"; } |
    lines_to_qio "$d/$n/disk.qcow2" || return 1
  finish_case "$d" "$n"
}

# Internal snapshots: snap1 (16 MiB), snap2 (id 2), then the active layer
# changes and grows to 20 MiB (so snap1's disk size is smaller).
case_snap() {
  local d=$1 n=snap s=$((16 << 20)) c=65536
  mkdir -p "$d/$n"
  make_seed_raw "$d/$n.seed" "$s"
  qemu-img convert -O qcow2 "$d/$n.seed" "$d/$n/disk.qcow2" || return 1
  rm -f "$d/$n.seed"
  pattern_writes "$s" "$c" | lines_to_qio "$d/$n/disk.qcow2" || return 1
  qemu-img snapshot -c snap1 "$d/$n/disk.qcow2" || return 1
  qio "$d/$n/disk.qcow2" "write -P 0xc1 1000 200000" "write -z $((4 << 20)) 1M" \
    "discard $((s * 3 / 4)) 128k" "write -P 0xc2 $((s - 512)) 512" || return 1
  qemu-img snapshot -c snap2 "$d/$n/disk.qcow2" || return 1
  qemu-img resize -q "$d/$n/disk.qcow2" 20M || return 1
  qio "$d/$n/disk.qcow2" "write -P 0xd1 3333 7777" "write -z $((s / 3)) 64k" \
    "write -P 0xd2 $(((20 << 20) - 70000)) 70000" || return 1
  qemu-img convert -O raw -l snapshot.name=snap1 "$d/$n/disk.qcow2" \
    "$d/$n.snap1.raw" || return 1
  qemu-img convert -O raw -l snapshot.name=snap2 "$d/$n/disk.qcow2" \
    "$d/$n.snap2.raw" || return 1
  finish_case "$d" "$n"
}

# Three layers: base.raw (3 MiB + 4608, random with a hole), sub/mid.qcow2
# (8 MiB, 32 KiB clusters, zstd compressed clusters and plain writes,
# backing "../base.raw"), disk.qcow2 (16 MiB, backing "sub/mid.qcow2"),
# all created with -F and relative names.
case_chain() {
  local d=$1/chain
  mkdir -p "$d/sub"
  head -c $(((3 << 20) + 4608)) /dev/urandom >"$d/base.raw"
  dd if=/dev/zero of="$d/base.raw" bs=64k seek=8 count=4 conv=notrunc status=none
  qemu-img create -q -f qcow2 -o cluster_size=32768,compression_type=zstd \
    -b ../base.raw -F raw "$d/sub/mid.qcow2" 8M || return 1
  local t
  t=$(mktemp)
  seq 1 100000 | head -c 65536 >"$t"
  qio "$d/sub/mid.qcow2" "write -c -P 0x31 0 32k" "write -c -s $t 1M 64k" \
    "write -c -P 0x32 $(((3 << 20) - 32768)) 64k" "write -c -s $t 5M 64k" \
    "write -P 0x33 $((2 << 20)) 12345" "write -z $((512 << 10)) 64k" \
    "write -P 0x34 $((6 << 20)) 100000" "write -z -u $((2 << 20)) 32k" ||
    { rm -f "$t"; return 1; }
  rm -f "$t"
  qemu-img create -q -f qcow2 -b sub/mid.qcow2 -F qcow2 "$d/disk.qcow2" 16M ||
    return 1
  qio "$d/disk.qcow2" "write -P 0x41 $((1 << 20)) 1000" \
    "write -z $((5 << 20)) 64k" "write -z -u $(((1 << 20) + 65536)) 64k" \
    "write -P 0x42 $((3 << 20)) 20000" "write -z 3000 5000" \
    "write -P 0x43 $(((16 << 20) - 1)) 1" "write -P 0x44 $((7 << 20)) 2M" ||
    return 1
  finish_case "$1" chain
}

# 4 TiB, sparse: data at 0, in the middle and right up to the end.
HUGE_SIZE=$((4 << 40))
case_huge() {
  local d=$1 n=huge s=$HUGE_SIZE
  mkdir -p "$d/$n"
  qemu-img create -q -f qcow2 "$d/$n/disk.qcow2" 4T || return 1
  qio "$d/$n/disk.qcow2" "write -P 0x17 0 1000" \
    "write -P 0x27 $((s / 2 + 12345)) 100000" \
    "write -P 0x37 $((s - 70000)) 70000" "write -z $((s - 300000)) 64k" \
    "write -P 0x47 $((s - 200000 - 7)) 7" || return 1
  finish_case "$d" "$n"
}

# build_qcow2_case DIR NAME
build_qcow2_case() {
  local d=$1
  case $2 in
    v2-64k) simple_case "$d" "$2" $((24 << 20)) compat=0.10 "" zeros ;;
    v2-zlib-4k) simple_case "$d" "$2" $(((12 << 20) + 1024)) \
      compat=0.10,cluster_size=4096 c ;;
    v3-64k) simple_case "$d" "$2" $((32 << 20)) compat=1.1 ;;
    c512) simple_case "$d" "$2" $(((6 << 20) + 1536)) cluster_size=512 ;;
    c4k) simple_case "$d" "$2" $((16 << 20)) cluster_size=4096 ;;
    c2m) simple_case "$d" "$2" $(((37 << 20) + 3584)) cluster_size=2M ;;
    zlib-64k) simple_case "$d" "$2" $((32 << 20)) compression_type=zlib c ;;
    zstd-64k) simple_case "$d" "$2" $((32 << 20)) compression_type=zstd c ;;
    zlib-2m) simple_case "$d" "$2" $((40 << 20)) cluster_size=2M c ;;
    zstd-2m) simple_case "$d" "$2" $(((40 << 20) + 512)) \
      cluster_size=2M,compression_type=zstd c ;;
    zstd-512) simple_case "$d" "$2" $((4 << 20)) \
      cluster_size=512,compression_type=zstd c ;;
    refcount1) simple_case "$d" "$2" $((16 << 20)) refcount_bits=1 "" zeros ;;
    refcount64) simple_case "$d" "$2" $((16 << 20)) refcount_bits=64 ;;
    extl2-64k) simple_case "$d" "$2" $((16 << 20)) extended_l2=on "" subclusters ;;
    extl2-2m-zstd) simple_case "$d" "$2" $((40 << 20)) \
      extended_l2=on,cluster_size=2M,compression_type=zstd c subclusters ;;
    extl2-backed) case_extl2_backed "$d" ;;
    zeros) simple_case "$d" "$2" $((16 << 20)) compat=1.1 "" zeros ;;
    oddsize) simple_case "$d" "$2" $(((10 << 20) + 1536)) compat=1.1 ;;
    snap) case_snap "$d" ;;
    chain) case_chain "$d" ;;
    huge) case_huge "$d" ;;
    *) echo "unknown case $2" >&2; return 1 ;;
  esac
}

# build_qcow2_matrix DIR [NAME...]: build the cases (default: all), a few
# at a time (qemu-img and qemu-io mostly wait for their start-up and I/O).
build_qcow2_matrix() {
  local d=$1 n jobs=$(($(nproc 2>/dev/null || echo 2) * 2))
  shift
  mkdir -p "$d"
  for n in ${*:-$QCOW2_CASES}; do
    while [ "$(jobs -pr | wc -l)" -ge "$jobs" ]; do wait -n 2>/dev/null || true; done
    (build_qcow2_case "$d" "$n" >"$d/$n.log" 2>&1 ||
      mv "$d/$n.log" "$d/$n.failed") &
  done
  wait
}

# use_qcow2_case DIR NAME: copy the case into $WORK; set IMG (the top
# image), ORACLE, VSIZE, CLUSTER.  Fails with the build log if the case
# could not be built.
use_qcow2_case() {
  local d=$1 n=$2
  if [ -e "$d/$n.failed" ]; then
    echo "# building image $n failed: $(cat "$d/$n.failed")" >&2
    return 1
  fi
  [ -f "$d/$n/disk.qcow2" ] || { echo "# image $n was not built" >&2; return 1; }
  cp -a --sparse=always "$d/$n" "$WORK/$n"
  IMG=$WORK/$n/disk.qcow2
  ORACLE=$d/$n.raw
  VSIZE=$(cat "$d/$n.vsize")
  CLUSTER=$(cat "$d/$n.cluster")
}

# make_deep_chain DIR N: DIR/l00 (raw, 1 MiB, "bottom" at 4097), DIR/l01
# (qcow2 over it) .. DIR/lNN, each backed by the one below with -F and a
# relative name; N+1 files, N+1 layers under lNN.  Only two qemu-img runs:
# the upper layers are copies of l02 with the backing name patched.
make_deep_chain() {
  local d=$1 n=$2 i off len
  mkdir -p "$d"
  truncate -s 1M "$d/l00"
  printf 'bottom' | put "$d/l00" 4097
  qemu-img create -q -f qcow2 -b l00 -F raw -u "$d/l01" 1M || return 1
  qemu-img create -q -f qcow2 -b l01 -F qcow2 -u "$d/l02" 1M || return 1
  off=$(od -An -tu8 --endian=big -j 8 -N 8 "$d/l02" | tr -d ' ')
  len=$(od -An -tu4 --endian=big -j 16 -N 4 "$d/l02" | tr -d ' ')
  [ "$len" = 3 ] || { echo "# unexpected backing name length $len" >&2; return 1; }
  for i in $(seq -w 3 "$n"); do
    cp "$d/l02" "$d/l$i"
    printf 'l%02d' $((10#$i - 1)) | put "$d/l$i" "$off"
  done
}

# tree_sums DIR: sha256 of every file below DIR (to prove nothing changed).
tree_sums() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum); }
