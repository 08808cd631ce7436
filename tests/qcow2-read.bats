#!/usr/bin/env bats
# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
# The qcow2 read path (issue 3): a matrix of images made by qemu-img and
# qemu-io (v2/v3, cluster sizes 512 B .. 2 MiB, zlib/zstd compression,
# refcount widths, extended L2, zero clusters, odd sizes, snapshots, a
# three-layer chain, a 4 TiB sparse disk) read through read-only views and
# compared with `qemu-img convert -O raw`; snapshots, sparseness, a
# partition through losetup, --probe of a chain, and the images the open
# path must refuse (exit 3, one line, nothing mounted).
#
# The matrix is built once (setup_file) into $BATS_FILE_TMPDIR; each test
# exports its own copy in $WORK.

load helpers
load qcow2-helpers

bats_require_minimum_version 1.5.0

RANDOM_READS=$BATS_TEST_DIRNAME/random-reads.py

setup_file() {
  IMGS=$BATS_FILE_TMPDIR/imgs
  export IMGS
  command -v qemu-img >/dev/null && command -v qemu-io >/dev/null || return 0
  build_qcow2_matrix "$IMGS"
}

setup() {
  common_setup
  requires qemu-img
  requires qemu-io
  requires_python
}

# Undo what a test stacked on a view (file system mounts, loop devices on
# files below $WORK) before common_teardown stops the exports.
teardown() {
  undo_stacked_on_views
  common_teardown
}

# random_reads VIEW ORACLE [OPTION]...: 3000 random preads compared.
random_reads() {
  local view=$1 oracle=$2
  shift 2
  run "$PYTHON" "$RANDOM_READS" --seed "$(cksum <<<"$BATS_TEST_NAME" | cut -d' ' -f1)" \
    "$@" "$view" "$oracle"
  [ "$status" = 0 ] || fail "random reads of $view differ from $oracle: $output"
}

# check_case NAME [EXPORT OPTION]...: export the case read-only; st_size is
# qemu-img's virtual size, the whole content hashes like the oracle, random
# reads agree; the revert leaves every file of the case unchanged.
check_case() {
  local n=$1 sums
  shift
  use_qcow2_case "$IMGS" "$n" || fail "no image $n"
  sums=$(tree_sums "$WORK/$n")
  start_export -r "$@" "$IMG" || fail "cannot export $n"
  local size
  size=$(stat -c %s "$IMG")
  [ "$size" = "$VSIZE" ] || fail "$n: st_size $size, qemu-img says virtual size $VSIZE"
  if [ "$(sha "$IMG")" != "$(sha "$ORACLE")" ]; then
    fail "$n: the view's content differs from qemu-img convert -O raw: $(cmp "$IMG" "$ORACLE" 2>&1 | head -n 1)"
  fi
  random_reads "$IMG" "$ORACLE" --cluster "$CLUSTER"
  stop_export || fail "$n: the export did not stop cleanly"
  [ "$(tree_sums "$WORK/$n")" = "$sums" ] || fail "$n: an -r export changed the image files"
}

# ---- the matrix -----------------------------------------------------------

@test "v2 (compat=0.10), 64 KiB clusters, with zero writes and discards" { check_case v2-64k; }
@test "v2, 4 KiB clusters, zlib compressed, size not a multiple of the cluster" { check_case v2-zlib-4k; }
@test "v3, 64 KiB clusters: random data, patterns at odd offsets" { check_case v3-64k; }
@test "v3, 512-byte clusters" { check_case c512; }
@test "v3, 4 KiB clusters" { check_case c4k; }
@test "v3, 2 MiB clusters, size not a multiple of the cluster" { check_case c2m; }
@test "zlib compressed, 64 KiB clusters" { check_case zlib-64k; }
@test "zstd compressed, 64 KiB clusters" { check_case zstd-64k; }
@test "zlib compressed, 2 MiB clusters" { check_case zlib-2m; }
@test "zstd compressed, 2 MiB clusters" { check_case zstd-2m; }
@test "zstd compressed, 512-byte clusters" { check_case zstd-512; }
@test "refcount_bits=1" { check_case refcount1; }
@test "refcount_bits=64" { check_case refcount64; }
@test "extended L2: partial, zeroed and discarded subclusters" { check_case extl2-64k; }
@test "extended L2 with 2 MiB clusters and zstd compressed clusters" { check_case extl2-2m-zstd; }
@test "extended L2 over a raw backing file: unallocated subclusters show the backing" { check_case extl2-backed; }
@test "zero clusters over allocated and unallocated ranges, unmapped zeros, discards" { check_case zeros; }
@test "a size that is not a multiple of the cluster size" { check_case oddsize; }
@test "the active layer of an image with internal snapshots (grown since)" { check_case snap; }
@test "three layers: raw base shorter than the overlays, zstd compressed middle in a subdirectory" { check_case chain; }

@test "the matrix with a tiny metadata cache (--cache-size=4K)" {
  check_case c512 --cache-size=4K
  check_case extl2-64k --cache-size=4K
}

@test "compressed images with a one-cluster decompressed cache (--decompressed-cache=1)" {
  check_case zstd-64k --decompressed-cache=1
  check_case zlib-2m --decompressed-cache=1
  check_case extl2-2m-zstd --decompressed-cache=1
}

# ---- splice: reads answered straight from the image files ------------------

@test "--no-splice reads the chain and the partial subclusters the same as qemu-img" {
  check_case chain --no-splice
  check_case extl2-backed --no-splice
  check_case c512 --no-splice
}

# splice_calls LOG: the splice(2) calls strace logged.
splice_calls() { grep -c '^[0-9]* *splice(' "$1" || true; }

# traced_read LOG [OPTION]...: export $IMG read-only in the foreground under
# strace (splice calls to LOG), check the whole view against $ORACLE, stop.
traced_read() {
  local log=$1
  shift
  # LeakSanitizer cannot run under ptrace (sanitizer builds)
  ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0 \
    strace -f -qq -e trace=splice -o "$log" "$FDE" -r -p "$WORK/traced.pid" "$@" "$IMG" \
    >"$WORK/traced.out" 2>&1 3>&- &
  local tracer=$!
  wait_mounted "$IMG" || { kill "$tracer"; fail "no view: $(cat "$WORK/traced.out")"; }
  for _ in $(seq 50); do [ -s "$WORK/traced.pid" ] && break; sleep 0.1; done
  [ "$(sha "$IMG")" = "$(sha "$ORACLE")" ] || fail "the view differs from qemu-img's ($*)"
  kill -INT "$(cat "$WORK/traced.pid")"
  wait "$tracer" || fail "the traced export failed: $(cat "$WORK/traced.out")"
}

@test "reads are spliced from the image files of the chain; --no-splice copies them" {
  requires strace
  use_qcow2_case "$IMGS" chain || fail "no image chain"
  traced_read "$WORK/spliced.log"
  [ "$(splice_calls "$WORK/spliced.log")" -gt 0 ] ||
    fail "no splice(2) call while reading the view"
  traced_read "$WORK/copied.log" --no-splice
  [ "$(splice_calls "$WORK/copied.log")" = 0 ] ||
    fail "splice(2) called with --no-splice: $(head -n 3 "$WORK/copied.log")"
}

@test "a data cluster cut short by the end of the file reads as QEMU reads it; the view keeps its size" {
  # 64 KiB clusters, 1 MiB of data; the file then ends half way into the
  # last data cluster.  QEMU reads the missing half as zeros; a reply
  # spliced from the file would come up short and shrink the view.
  qemu-img create -q -f qcow2 "$WORK/cut.qcow2" 1M
  qio "$WORK/cut.qcow2" "write -P 0x61 0 1M"
  truncate -s -32K "$WORK/cut.qcow2"
  qemu-img convert -f qcow2 -O raw "$WORK/cut.qcow2" "$WORK/cut.raw"
  [ "$(tail -c 32768 "$WORK/cut.raw" | tr -d '\0' | wc -c)" = 0 ] ||
    fail "setup: QEMU does not read the cut half as zeros"
  start_export -r "$WORK/cut.qcow2"
  dd if="$WORK/cut.qcow2" of="$WORK/tail" bs=64K skip=15 status=none
  [ "$(stat -c %s "$WORK/cut.qcow2")" = 1048576 ] ||
    fail "the view shrank to $(stat -c %s "$WORK/cut.qcow2") bytes after reading the cut cluster"
  cmp "$WORK/tail" <(tail -c 65536 "$WORK/cut.raw") || fail "the cut cluster reads wrong"
  cmp "$WORK/cut.qcow2" "$WORK/cut.raw" || fail "the view differs from qemu-img convert"
  stop_export
}

@test "4 TiB sparse image: size, data at 0, in the middle and at the very end" {
  use_qcow2_case "$IMGS" huge || fail "no image huge"
  [ "$VSIZE" = "$HUGE_SIZE" ] || fail "qemu-img says $VSIZE"
  start_export -r "$IMG"
  [ "$(stat -c %s "$IMG")" = "$HUGE_SIZE" ] || fail "st_size $(stat -c %s "$IMG")"
  local off
  for off in 0 $((HUGE_SIZE / 2)) $((HUGE_SIZE - (1 << 20))) $((HUGE_SIZE / 3)); do
    cmp <(dd if="$IMG" bs=1M iflag=skip_bytes skip="$off" count=1 status=none) \
      <(dd if="$ORACLE" bs=1M iflag=skip_bytes skip="$off" count=1 status=none) ||
      fail "the MiB at $off differs"
  done
  # the last byte, and nothing past the end
  [ "$(tail -c 7 "$IMG" | od -An -tx1 | tr -d ' \n')" = 37373737373737 ] ||
    fail "the last 7 bytes are $(tail -c 7 "$IMG" | od -An -tx1), want 0x37"
  [ "$(dd if="$IMG" bs=4096 iflag=skip_bytes skip="$HUGE_SIZE" status=none | wc -c)" = 0 ] ||
    fail "data past the end"
  random_reads "$IMG" "$ORACLE" --cluster "$CLUSTER" \
    --window 0:$((4 << 20)) --window $((HUGE_SIZE / 2 - (1 << 20))):$((4 << 20)) \
    --window $((HUGE_SIZE - (4 << 20))):$((4 << 20))
  stop_export
}

# ---- read-only exports never write -----------------------------------------

@test "-r never changes a byte of any layer: whole chain read, copied, seeked" {
  use_qcow2_case "$IMGS" chain || fail "no image chain"
  local before
  before=$(tree_sums "$WORK/chain")
  start_export -r "$IMG"
  cat "$IMG" >/dev/null
  cp --sparse=always "$IMG" "$WORK/copy"
  "$PYTHON" -c 'import os,sys
fd = os.open(sys.argv[1], os.O_RDONLY)
for w in (os.SEEK_DATA, os.SEEK_HOLE):
    try: os.lseek(fd, 12345, w)
    except OSError: pass' "$IMG"
  random_reads "$IMG" "$ORACLE" --cluster "$CLUSTER" --count 500
  stop_export
  [ "$(tree_sums "$WORK/chain")" = "$before" ] ||
    fail "files changed: $(diff <(echo "$before") <(tree_sums "$WORK/chain"))"
  cmp "$WORK/copy" "$ORACLE" || fail "the copy differs from the oracle"
}

# ---- internal snapshots -----------------------------------------------------

# check_snapshot SEL ORACLE WANT_SIZE: export --snapshot=SEL; the view has
# the snapshot's recorded size; its bytes are QEMU's (qemu-img convert -l),
# whose extra tail (if QEMU shows the snapshot at the active size) must be
# zeros; random reads agree.
check_snapshot() {
  local sel=$1 oracle=$2 want=$3 size osize n
  start_export -r --snapshot="$sel" "$IMG" || fail "--snapshot=$sel not exported"
  size=$(stat -c %s "$IMG")
  [ "$size" = "$want" ] || fail "--snapshot=$sel: st_size $size, want $want"
  osize=$(stat -c %s "$oracle")
  n=$((size < osize ? size : osize))
  cmp -n "$n" "$IMG" "$oracle" || fail "--snapshot=$sel differs from qemu-img convert -l"
  if [ "$osize" -gt "$n" ]; then
    cmp -n $((osize - n)) <(tail -c +$((n + 1)) "$oracle") /dev/zero ||
      fail "QEMU's tail past the snapshot's size is not zeros"
  fi
  head -c "$n" "$oracle" >"$WORK/oracle-$sel.raw"
  random_reads "$IMG" "$WORK/oracle-$sel.raw" --count 1500
  stop_export
}

@test "--snapshot=NAME and --snapshot=ID export the snapshots, not the active layer" {
  use_qcow2_case "$IMGS" snap || fail "no image snap"
  local before
  before=$(tree_sums "$WORK/snap")
  run "$FDE" -r --probe "$IMG"
  assert_success
  assert_line "snapshots: 2"
  assert_line "snapshot: id=1 name=snap1 disk-size=16777216"
  assert_line "snapshot: id=2 name=snap2 disk-size=16777216"
  cmp -s "$IMGS/snap.snap1.raw" "$IMGS/snap.snap2.raw" &&
    fail "test images are wrong: snap1 equals snap2"
  check_snapshot snap1 "$IMGS/snap.snap1.raw" $((16 << 20))
  check_snapshot 2 "$IMGS/snap.snap2.raw" $((16 << 20))
  # and the active layer is still the active layer
  start_export -r "$IMG"
  [ "$(stat -c %s "$IMG")" = "$VSIZE" ] || fail "active layer: st_size $(stat -c %s "$IMG")"
  cmp "$IMG" "$ORACLE" || fail "the active layer differs after exporting snapshots"
  stop_export
  [ "$(tree_sums "$WORK/snap")" = "$before" ] || fail "the image changed"
}

@test "--snapshot naming no snapshot is refused (exit 3), nothing mounted" {
  use_qcow2_case "$IMGS" snap || fail "no image snap"
  run --separate-stderr "$FDE" -r -d -p "$WORK/x.pid" --snapshot=nosuch "$IMG"
  [ "$status" = 3 ] || fail "exit status $status, want 3: $stderr"
  [[ "$stderr" == *nosuch* ]] || fail "the message does not name the snapshot: $stderr"
  [ "${#stderr_lines[@]}" = 1 ] || fail "want one line: $stderr"
  nothing_mounted
  [ ! -e "$WORK/x.pid" ]
}

# ---- sparseness ---------------------------------------------------------------

@test "cp --sparse=always of the view stays sparse; SEEK_DATA/SEEK_HOLE agree with qemu-img map" {
  use_qcow2_case "$IMGS" zeros || fail "no image zeros"
  local map
  map=$(qemu-img map --output=json "$IMG") || fail "qemu-img map failed"
  start_export -r "$IMG"
  cp --sparse=always "$IMG" "$WORK/copy"
  cmp "$WORK/copy" "$ORACLE" || fail "the copy differs from the oracle"
  local used
  used=$(du -B1 "$WORK/copy" | cut -f1)
  [ "$used" -lt $((VSIZE / 2)) ] || fail "the copy uses $used bytes of $VSIZE"
  # every extent of the map: its first, middle and last byte
  run "$PYTHON" -c '
import json, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
bad = []
for e in json.loads(sys.argv[2]):
    s, n = e["start"], e["length"]
    for off in sorted({s, s + n // 2, s + n - 1}):
        if e["data"]:
            got = os.lseek(fd, off, os.SEEK_DATA)
            if got != off:
                bad.append(f"SEEK_DATA({off}) = {got}, map says data {e}")
        else:
            got = os.lseek(fd, off, os.SEEK_HOLE)
            if got != off:
                bad.append(f"SEEK_HOLE({off}) = {got}, map says no data {e}")
print("\n".join(bad))
sys.exit(1 if bad else 0)' "$IMG" "$map"
  [ "$status" = 0 ] || fail "lseek disagrees with qemu-img map: $output"
  stop_export
}

@test "SEEK_DATA/SEEK_HOLE across the 4 TiB sparse image agree with qemu-img map" {
  use_qcow2_case "$IMGS" huge || fail "no image huge"
  local map
  map=$(qemu-img map --output=json "$IMG") || fail "qemu-img map failed"
  start_export -r "$IMG"
  run "$PYTHON" -c '
import json, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
ext = json.loads(sys.argv[2])
data = [e for e in ext if e["data"]]
bad = []
# from each hole start, SEEK_DATA finds the next data extent of the map
for e in ext:
    if e["data"]:
        continue
    nxt = [d["start"] for d in data if d["start"] > e["start"]]
    try:
        got = os.lseek(fd, e["start"], os.SEEK_DATA)
    except OSError as err:
        got = f"error {err.errno}"
    want = nxt[0] if nxt else "ENXIO"
    if nxt and got != want:
        bad.append("SEEK_DATA(%d) = %s, want %s" % (e["start"], got, want))
    if not nxt and got != "error 6":
        bad.append("SEEK_DATA(%d) = %s, want ENXIO" % (e["start"], got))
for d in data:
    got = os.lseek(fd, d["start"], os.SEEK_HOLE)
    if got < d["start"] + d["length"]:
        bad.append("SEEK_HOLE(%d) = %d inside data %s" % (d["start"], got, d))
print("\n".join(bad))
sys.exit(1 if bad else 0)' "$IMG" "$map"
  [ "$status" = 0 ] || fail "lseek disagrees with qemu-img map: $output"
  stop_export
}

# ---- a partition inside a qcow2 image ------------------------------------------

@test "a partition inside a qcow2 image mounts through losetup -o --sizelimit" {
  requires_root
  requires losetup
  requires sfdisk
  requires mkfs.ext4
  truncate -s 48M disk.raw
  printf 'label: dos\nstart=2048, size=65536, type=83\nstart=67584, type=83\n' |
    sfdisk --quiet disk.raw >/dev/null || fail "sfdisk failed"
  local dev
  dev=$(losetup -f --show -o $((2048 * 512)) --sizelimit $((65536 * 512)) disk.raw) ||
    fail "losetup on the raw file failed"
  mkfs.ext4 -q -F -L qcowpart "$dev" >/dev/null 2>&1 || fail "mkfs.ext4 failed"
  mkdir mnt
  mount "$dev" mnt || fail "cannot mount the new file system"
  head -c 3000000 /dev/urandom >mnt/random.bin
  seq 1 50000 >mnt/numbers.txt
  mkdir mnt/dir && echo "inside a qcow2" >mnt/dir/hello
  (cd mnt && sha256sum random.bin numbers.txt dir/hello) >sums
  umount mnt
  losetup -d "$dev"
  qemu-img convert -O qcow2 -o cluster_size=4096 disk.raw disk.qcow2 ||
    fail "qemu-img convert failed"
  local sum
  sum=$(sha disk.qcow2)
  start_export -r disk.qcow2
  dev=$(losetup -f --show -r -o $((2048 * 512)) --sizelimit $((65536 * 512)) disk.qcow2) ||
    fail "losetup on the view failed"
  mount -o ro,noload "$dev" mnt || fail "cannot mount the partition through the view"
  run bash -c 'cd mnt && sha256sum -c ../sums'
  umount mnt
  losetup -d "$dev"
  [ "$status" = 0 ] || fail "files differ: $output"
  stop_export
  [ "$(sha disk.qcow2)" = "$sum" ] || fail "the image changed"
}

# ---- --probe --------------------------------------------------------------------

@test "--probe of the chain: resolved backing paths, formats and features of each layer" {
  use_qcow2_case "$IMGS" chain || fail "no image chain"
  run --separate-stderr "$FDE" -r --probe "$IMG"
  [ "$status" = 0 ] || fail "exit status $status: $stderr"
  assert_line "image: $IMG"
  assert_line "format: qcow2"
  assert_line "virtual-size: 16777216"
  assert_line "writable: no"
  assert_line "cluster-size: 65536"
  assert_line "backing-file: $WORK/chain/sub/mid.qcow2"
  assert_line "backing-format: qcow2"
  assert_line "backing:"
  assert_line "  format: qcow2"
  assert_line "  virtual-size: 8388608"
  assert_line "  cluster-size: 32768"
  assert_line "  compression: zstd"
  assert_line --regexp "^  incompatible-features: .*compression-type"
  assert_line "  backing-format: raw"
  assert_line "  backing:"
  assert_line "    format: raw"
  assert_line "    virtual-size: $(((3 << 20) + 4608))"
  local b
  b=$(sed -n 's/^  backing-file: //p' <<<"$output")
  [ -n "$b" ] || fail "no backing-file line for the middle layer: $output"
  [ "$(readlink -f "$b")" = "$WORK/chain/base.raw" ] ||
    fail "the middle layer's backing file $b is not $WORK/chain/base.raw"
  # the order: top layer's keys, then the indented middle, then the base
  [ "$(grep -n '^backing:' <<<"$output" | cut -d: -f1)" -lt \
    "$(grep -n '^    format: raw' <<<"$output" | cut -d: -f1)" ] || fail "order: $output"
}

@test "--probe agrees with qemu-img info on every image of the matrix" {
  local n out
  for n in $QCOW2_CASES; do
    [ -f "$IMGS/$n/disk.qcow2" ] || fail "no image $n"
    out=$("$FDE" -r --probe "$IMGS/$n/disk.qcow2" 2>&1) || fail "$n: --probe failed: $out"
    printf '%s\n' "$out" >"$WORK/$n.probe"
  done
  # qemu-img info of each was saved when the matrix was built
  run "$PYTHON" - "$IMGS" "$WORK" $QCOW2_CASES <<'EOF'
import json, sys
imgs, work, bad = sys.argv[1], sys.argv[2], []
for n in sys.argv[3:]:
    i = json.load(open(f"{imgs}/{n}.json"))
    d = i["format-specific"]["data"]
    want = [f"virtual-size: {i['virtual-size']}",
            f"cluster-size: {i['cluster-size']}",
            f"compat: {d['compat']}",
            f"refcount-bits: {d['refcount-bits']}",
            "extended-l2: " + ("yes" if d.get("extended-l2") else "no"),
            "compression: " + d.get("compression-type", "zlib"),
            f"snapshots: {len(i.get('snapshots', []))}"]
    if "backing-filename" in i:
        want.append(f"backing-format: {i['backing-filename-format']}")
    got = open(f"{work}/{n}.probe").read().splitlines()
    for w in want:
        if w not in got:
            bad.append(f"{n}: --probe lacks '{w}'; it says: " + "; ".join(got))
print("\n".join(bad))
sys.exit(1 if bad else 0)
EOF
  [ "$status" = 0 ] || fail "$output"
}

# ---- refusals ---------------------------------------------------------------------

# expect_refused IMG REGEX [OPTION]...: exit 3 with -d -p and the options,
# one line on stderr naming IMG and matching REGEX (ERE, any case), nothing
# mounted, no pid file; --probe refuses too; the image is unchanged.  With
# ANY_LAYER=1 the line may name another layer of IMG's chain instead (the
# test "refusals deep in a chain name the exported image" checks that).
expect_refused() {
  local img=$1 re=$2 sum
  shift 2
  sum=$(sha "$img")
  run --separate-stderr timeout 20 "$FDE" -d -p "$WORK/refused.pid" "$@" "$img"
  [ "$status" = 3 ] ||
    fail "exit status $status, want 3 (refused); stderr: $stderr; stdout: $output"
  [ "${#stderr_lines[@]}" = 1 ] ||
    fail "want one line on stderr, got ${#stderr_lines[@]}: $stderr"
  [ "${ANY_LAYER:-0}" = 1 ] || [[ "$stderr" == *"$img"* ]] ||
    fail "the message does not name $img: $stderr"
  grep -qiE -- "$re" <<<"$stderr" || fail "the message does not match /$re/: $stderr"
  [ ! -e "$WORK/refused.pid" ] || fail "a pid file was left behind"
  nothing_mounted
  run --separate-stderr timeout 20 "$FDE" --probe "$@" "$img"
  [ "$status" = 3 ] || fail "--probe: exit status $status, want 3: $stderr"
  [ "${#stderr_lines[@]}" = 1 ] || fail "--probe: want one line: $stderr"
  [ "$(sha "$img")" = "$sum" ] || fail "the image changed"
}

@test "a missing backing file is refused; the message names the missing file" {
  qemu-img create -q -f qcow2 -b gone.qcow2 -F qcow2 -u top.qcow2 16M
  expect_refused "$WORK/top.qcow2" "gone\.qcow2" -r
  [[ "$stderr" == *"$WORK/gone.qcow2"* ]] || fail "not the resolved path: $stderr"
  expect_refused top.qcow2 "gone\.qcow2"
  # one level further down: the middle layer's backing is missing
  mkdir sub
  truncate -s 1M sub/base.raw
  qemu-img create -q -f qcow2 -b base.raw -F raw sub/mid.qcow2 1M
  qemu-img create -q -f qcow2 -b sub/mid.qcow2 -F qcow2 top2.qcow2 1M
  rm sub/base.raw
  ANY_LAYER=1 expect_refused top2.qcow2 "base\.raw" -r
}

# With several IMAGE arguments only the exported image's path tells the
# user which one was refused, so the line must name it even when the
# problem is found further down the chain.
@test "refusals deep in a chain name the exported image" {
  mkdir sub
  truncate -s 1M sub/base.raw
  qemu-img create -q -f qcow2 -b base.raw -F raw sub/mid.qcow2 1M
  qemu-img create -q -f qcow2 -b sub/mid.qcow2 -F qcow2 missing.qcow2 1M
  rm sub/base.raw
  qemu-img create -q -f qcow2 -b b.qcow2 -F qcow2 -u a.qcow2 1M
  ln -s a.qcow2 alias.qcow2
  qemu-img create -q -f qcow2 -b alias.qcow2 -F qcow2 -u b.qcow2 1M
  make_deep_chain "$WORK" 33 || fail "cannot make the chain"
  local img bad=
  for img in missing.qcow2 a.qcow2 l33; do
    run --separate-stderr "$FDE" -r -d -p "$WORK/x.pid" "$WORK/$img"
    [ "$status" = 3 ] || fail "$img: exit status $status, want 3: $stderr"
    [[ "$stderr" == *"$WORK/$img"* ]] || bad+="  $img: $stderr"$'\n'
  done
  nothing_mounted
  [ -z "$bad" ] || fail "the message does not name the exported image:"$'\n'"$bad"
}

@test "protocol and json: backing names are refused" {
  qemu-img create -q -f qcow2 -b nbd:localhost:10809 -F raw -u nbd.qcow2 16M
  expect_refused nbd.qcow2 "protocol" -r
  [[ "$stderr" == *"nbd:localhost:10809"* ]] || fail "the message does not name it: $stderr"
  truncate -s 16M base.raw
  qemu-img create -q -f qcow2 -u -F raw \
    -b 'json:{"driver":"raw","file":{"driver":"file","filename":"base.raw"}}' \
    json.qcow2 16M
  expect_refused json.qcow2 "json" -r
  qemu-img create -q -f qcow2 -u -F raw -b 'file:base.raw' file.qcow2 16M
  expect_refused file.qcow2 "protocol" -r
}

@test "a backing loop (the image itself; a -> b -> a) is refused" {
  # qemu-img will not name the image itself; create, then rename
  qemu-img create -q -f qcow2 -b self.qcow2 -F qcow2 -u tmp.qcow2 16M
  mv tmp.qcow2 self.qcow2
  expect_refused self.qcow2 "loop" -r
  qemu-img create -q -f qcow2 -b b.qcow2 -F qcow2 -u a.qcow2 16M
  qemu-img create -q -f qcow2 -b a.qcow2 -F qcow2 -u b.qcow2 16M
  expect_refused a.qcow2 "loop" -r
  # the same file under another name is the same image
  ln -s a.qcow2 alias.qcow2
  qemu-img create -q -f qcow2 -b alias.qcow2 -F qcow2 -u a.qcow2 16M
  ANY_LAYER=1 expect_refused a.qcow2 "loop" -r
}

@test "a chain of 32 layers is exported; one of 34 layers is refused" {
  make_deep_chain "$WORK" 33 || fail "cannot make the chain"
  # l31: 32 layers (l31 .. l00)
  start_export -r l31
  [ "$(dd if=l31 bs=1 skip=4097 count=6 status=none)" = bottom ] ||
    fail "the bottom layer's data does not show through 32 layers"
  stop_export
  ANY_LAYER=1 expect_refused "$WORK/l33" "32|deep|depth" -r
}

@test "a backing format recognised but not served (qed) is refused" {
  qemu-img create -q -f qed base.qed 16M
  qemu-img create -q -f qcow2 -b base.qed -F qed top.qcow2 16M
  expect_refused top.qcow2 "qed" -r
}

@test "a backing file that is a FIFO is refused, without hanging" {
  requires mkfifo
  mkfifo fifo
  qemu-img create -q -f qcow2 -b "$WORK/fifo" -F raw -u top.qcow2 16M
  local rc=0
  timeout 3 "$FDE" -r --probe top.qcow2 >/dev/null 2>&1 || rc=$?
  if [ "$rc" = 124 ]; then
    # release anything still blocked opening the FIFO
    timeout 2 sh -c ': >fifo' 2>/dev/null || true
    fail "opening an image whose backing file is a FIFO hangs (open(2) on the FIFO blocks); want exit 3 at once"
  fi
  expect_refused top.qcow2 "regular file|fifo" -r
}

@test "a backing file that is a character device (/dev/zero) is refused" {
  qemu-img create -q -f qcow2 -b /dev/zero -F raw -u top.qcow2 16M
  expect_refused top.qcow2 "regular file" -r
  expect_refused top.qcow2 "regular file|block" -r --allow-block-device-backing
}

# QEMU opens any of these; we refuse files on the kernel's pseudo file
# systems (as for a mount point: src/export.c) and names that pass through
# a /proc magic link (formats/owner.c, openat2 RESOLVE_NO_MAGICLINKS).
@test "a backing file on procfs or sysfs, or reached through a /proc magic link, is refused; a symlink out of the directory is followed as QEMU follows it" {
  qemu-img create -q -f qcow2 -b /proc/version -F raw -u proc.qcow2 16M
  expect_refused proc.qcow2 "/proc/version is on procfs" -r
  ln -s /proc/self/status status-link
  qemu-img create -q -f qcow2 -b status-link -F raw -u plink.qcow2 16M
  expect_refused plink.qcow2 "status-link is on procfs" -r
  if [ -r /sys/kernel/uevent_seqnum ]; then
    qemu-img create -q -f qcow2 -b /sys/kernel/uevent_seqnum -F raw -u sys.qcow2 16M
    expect_refused sys.qcow2 "uevent_seqnum is on sysfs" -r
  fi
  # /proc/self/cwd is a magic link (to $WORK when the name is opened)
  head -c $((1 << 20)) /dev/urandom >base.raw
  qemu-img create -q -f qcow2 -b /proc/self/cwd/base.raw -F raw -u magic.qcow2 1M
  expect_refused magic.qcow2 "magic link" -r
  # the control: a backing file through a symlink that leaves the
  # directory (QEMU allows absolute and ../ names: so do we)
  mkdir sub
  ln -s ../base.raw sub/up-link
  qemu-img create -q -f qcow2 -b up-link -F raw sub/top.qcow2 1M
  qemu-img convert -O raw sub/top.qcow2 "$WORK/oracle.raw"
  start_export -r sub/top.qcow2
  cmp sub/top.qcow2 "$WORK/oracle.raw" || fail "the view differs from qemu-img convert"
  stop_export
}

@test "a block device backing file needs --allow-block-device-backing" {
  requires_root
  requires losetup
  head -c $((4 << 20)) /dev/urandom >base.raw
  local dev
  dev=$(losetup -f --show -r base.raw) || skip "losetup cannot attach a loop device"
  qemu-img create -q -f qcow2 -b "$dev" -F raw -u top.qcow2 4M
  qio top.qcow2 "write -P 0x61 1000 70000" "write -z $((2 << 20)) 64k" || fail "qemu-io failed"
  expect_refused top.qcow2 "block device|regular file" -r
  [[ "$stderr" == *"$dev"* ]] || fail "the message does not name $dev: $stderr"
  qemu-img convert -O raw top.qcow2 "$WORK/oracle.raw"
  start_export -r --allow-block-device-backing top.qcow2
  cmp top.qcow2 "$WORK/oracle.raw" || fail "the view differs from qemu-img convert"
  stop_export
  losetup -d "$dev"
}

# poke_bit IMG BIT: set incompatible feature bit BIT (big-endian u64 at 72).
poke_bit() {
  "$PYTHON" - "$1" "$2" <<'EOF'
import sys
path, bit = sys.argv[1], int(sys.argv[2])
with open(path, "r+b") as f:
    off = 72 + 7 - bit // 8
    f.seek(off)
    b = f.read(1)[0] | (1 << (bit % 8))
    f.seek(off)
    f.write(bytes([b]))
EOF
}

# dirty_or_corrupt BIT: an image with BIT set is refused writable with a
# message mentioning qemu-img check, and read fine with -r.
dirty_or_corrupt() {
  qemu-img create -q -f qcow2 -o compat=1.1 img.qcow2 16M
  qio img.qcow2 "write -P 0x3c 5000 100000" || fail "qemu-io failed"
  qemu-img convert -O raw img.qcow2 oracle.raw
  poke_bit img.qcow2 "$1"
  expect_refused "$WORK/img.qcow2" "$2"
  [[ "$stderr" == *"qemu-img check"* ]] || fail "the message does not mention qemu-img check: $stderr"
  local sum
  sum=$(sha img.qcow2)
  start_export -r img.qcow2
  cmp img.qcow2 oracle.raw || fail "the -r view differs from qemu-img convert"
  stop_export
  [ "$(sha img.qcow2)" = "$sum" ] || fail "-r changed the image (the bit was cleared?)"
}

@test "the dirty bit: refused writable (pointing at qemu-img check), readable with -r" {
  dirty_or_corrupt 0 "dirty"
}

@test "the corrupt bit: refused writable (pointing at qemu-img check), readable with -r" {
  dirty_or_corrupt 1 "corrupt"
}

@test "an unknown incompatible feature (bit 50) is refused even with -r" {
  qemu-img create -q -f qcow2 img.qcow2 16M
  poke_bit img.qcow2 50
  expect_refused img.qcow2 "unknown incompatible feature" -r
  expect_refused img.qcow2 "unknown incompatible feature"
}

@test "an image with an external data file is refused" {
  qemu-img create -q -f qcow2 -o data_file=data.raw img.qcow2 16M
  expect_refused img.qcow2 "external data file" -r
}

@test "a LUKS-encrypted qcow2 image is refused" {
  # qemu-img times its PBKDF to choose the iteration count, and on a
  # loaded machine the timing fails now and then ("Unable to get accurate
  # CPU usage"): try again, longer, before concluding it cannot
  local t out=
  for t in 10 10 10 200 200; do
    out=$(qemu-img create -q -f qcow2 --object secret,id=s,data=x \
      -o encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=$t \
      img.qcow2 16M 2>&1) && break
    rm -f img.qcow2
  done
  [ -f img.qcow2 ] || skip "qemu-img cannot create LUKS-encrypted qcow2 images: $out"
  expect_refused img.qcow2 "LUKS" -r
}
