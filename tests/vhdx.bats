#!/usr/bin/env bats
# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
# VHDX images, read-only (formats/vhdx.c, formats/vhdx-log.c).
#
# Which oracle decides:
#  - fixed and dynamic VHDX with 512-byte sectors: QEMU.  Every image is
#    made by qemu-img (create, convert -O vhdx, qemu-io writes; block sizes
#    1 to 256 MiB, log sizes, empty, size 0, sizes not a multiple of the
#    block size, fully allocated, sparse); the view must equal `qemu-img
#    convert -f vhdx -O raw` byte for byte.  QEMU 7.2's vhdx driver has no
#    block status (`qemu-img map` calls the whole disk data), so SEEK_DATA/
#    SEEK_HOLE are checked against the FULLY_PRESENT blocks of the BAT as
#    tests/vhdx-poke.py (written from the specification) reads them, and
#    every hole reads as zeros in QEMU's view (the byte comparison).
#  - a log to replay: QEMU, after its own replay.  tests/vhdx-poke.py
#    writes the log a writer leaves when it dies half way (from
#    [MS-VHDX]); QEMU refuses such an image read-only (checked), and
#    `qemu-img check -r all` on a copy replays it into the copy (checked:
#    QEMU then opens the copy read-only): the view of the untouched image
#    must equal `qemu-img convert` of the replayed copy.
#  - 4096-byte logical sectors and differencing disks: the specification,
#    as tests/vhdx-poke.py builds the image and its expected view; libvhdi's
#    vhdimount (a second oracle, where installed) must agree.  QEMU refuses
#    differencing VHDX, and mixes 512- and 4096-byte units for 4096-byte
#    sectors (../shared/reference/formats.md 4.2).
# Hostile images are qemu-img's or vhdx-poke.py's with fields poked by
# tests/vhdx-poke.py; each is refused at open (exit 3, one line naming the
# image and the problem, nothing mounted, the image unchanged).

load helpers
load format-helpers

bats_require_minimum_version 1.5.0

setup() {
  common_setup
  requires qemu-img
  requires qemu-io
  requires_python
  POKE="$PYTHON $FDE_SRCDIR/tests/vhdx-poke.py"
}
teardown() { common_teardown; }

MiB=$((1 << 20))
SIZE=$((10 * MiB + 7 * 512))    # not a multiple of any block size

# make_raw FILE SIZE: random data with holes: 1.5 MiB of data at 0, a hole
# to 4 MiB, 3 MiB of data, a hole, and data in the last 1536 bytes.
make_raw() {
  truncate -s "$2" "$1"
  put_random "$1" 0 $((3 * MiB / 2))
  put_random "$1" $((4 * MiB)) $((3 * MiB))
  put_random "$1" $(($2 - 1536)) 1536
}

# check_view IMG [OPTION]...: export IMG read-only with OPTIONs (the format
# probed); the view equals `qemu-img convert -f vhdx -O raw`, and
# SEEK_DATA/SEEK_HOLE give the FULLY_PRESENT blocks of its BAT (QEMU has
# no block status for VHDX; every hole reads as zeros in QEMU's view by
# the comparison).  Sets SEEK_RUNS.
check_view() {
  local img=$1
  shift
  qemu-img convert -f vhdx -O raw "$img" "$WORK/expect.raw"
  $POKE map "$img" >"$WORK/map.json"
  start_export -r "$@" "$img"
  compare_view "$img" "$WORK/expect.raw"
  seek_matches_map "$img" "$WORK/map.json"
  stop_export
}

# check_expect IMG EXPECT [OPTION]...: the view of IMG is EXPECT.
check_expect() {
  local img=$1 expect=$2
  shift 2
  start_export -r "$@" "$img"
  compare_view "$img" "$expect"
  stop_export
}

# vhdi_matches IMG EXPECT: libvhdi's vhdimount shows IMG as EXPECT (its
# last file is the top layer); nothing without vhdimount.
vhdi_matches() {
  command -v vhdimount >/dev/null || return 0
  local m="$WORK/vhdi.mnt" top
  mkdir -p "$m"
  vhdimount "$1" "$m" >/dev/null || fail "vhdimount $1 failed"
  top=$(ls "$m" | sort -V | tail -n 1)
  cmp "$m/$top" "$2"
  local rc=$?
  fusermount3 -u "$m" 2>/dev/null || umount "$m"
  [ "$rc" = 0 ] || fail "vhdimount shows $1 differently from $2"
}

# probe_line IMG KEY: the value --probe gives for KEY.
probe_line() {
  "$FDE" -r --probe "$1" | awk -v k="$2:" '$1 == k { $1 = ""; sub(/^ /, ""); print; exit }'
}

# ---- fixed and dynamic, QEMU decides ----------------------------------------------

@test "empty VHDX images from qemu-img create (block sizes 1 to 256 MiB, log sizes, size 0, fixed) read as qemu-img shows them" {
  qemu-img create -q -f vhdx -o block_size=1M e1.vhdx $SIZE
  qemu-img create -q -f vhdx -o block_size=256M,log_size=4M e256.vhdx $SIZE
  qemu-img create -q -f vhdx -o log_size=8M,block_size=32M elog.vhdx 100M
  qemu-img create -q -f vhdx zero.vhdx 0
  qemu-img create -q -f vhdx -o subformat=fixed,block_size=2M fixed.vhdx $SIZE
  local img
  for img in e1.vhdx e256.vhdx elog.vhdx zero.vhdx; do
    check_view "$img"
    [ "$SEEK_RUNS" = 0 ] || fail "$img: an empty image shows $SEEK_RUNS data ranges"
  done
  check_view fixed.vhdx
  [ "$(probe_line fixed.vhdx subformat)" = fixed ] || fail "fixed.vhdx: $("$FDE" -r --probe fixed.vhdx)"
  [ "$(probe_line e256.vhdx block-size)" = $((256 * MiB)) ] || fail "e256.vhdx: block size"
}

@test "VHDX converted from random data with holes (block sizes 1, 2, 8, 64 MiB) read as qemu-img convert -O raw, holes by the BAT" {
  make_raw src.raw $SIZE
  local bs
  for bs in 1M 2M 8M 64M; do
    qemu-img convert -f raw -O vhdx -o block_size=$bs src.raw "c$bs.vhdx"
    check_view "c$bs.vhdx"
    cmp "$WORK/expect.raw" src.raw || fail "qemu-img's round trip differs"
  done
  check_view c1M.vhdx --no-splice
  # 1 MiB blocks: [0, 2M), [4M, 7M), the last block
  check_view c1M.vhdx
  [ "$SEEK_RUNS" = 3 ] || fail "$SEEK_RUNS data ranges in c1M.vhdx, want 3"
  vhdi_matches c1M.vhdx src.raw
}

@test "fully allocated, written by qemu-io, and fixed VHDX of random data read as qemu-img shows them" {
  head -c $((5 * MiB + 512)) /dev/urandom >full.raw
  qemu-img convert -f raw -O vhdx -o block_size=1M full.raw full.vhdx
  check_view full.vhdx
  [ "$SEEK_RUNS" = 1 ] || fail "$SEEK_RUNS data ranges, want 1"
  qemu-img convert -f raw -O vhdx -o subformat=fixed,block_size=4M full.raw fixed.vhdx
  check_view fixed.vhdx
  qemu-img create -q -f vhdx -o block_size=1M,log_size=2M io.vhdx $SIZE
  qemu-io -f vhdx -c 'write -P 0x11 0 4k' -c 'write -P 0x22 1535k 2k' \
    -c 'write -P 0x33 9M 512' -c "write -P 0x44 $((SIZE - 512)) 512" io.vhdx >/dev/null
  check_view io.vhdx
  # blocks 0-1 (the write at 1535k crosses into block 1), 9-10
  [ "$SEEK_RUNS" = 2 ] || fail "$SEEK_RUNS data ranges in io.vhdx, want 2"
  vhdi_matches io.vhdx "$WORK/expect.raw"
}

@test "--probe shows format vhdx, the size, the subformat, the block and sector sizes, no log replayed" {
  qemu-img create -q -f vhdx -o block_size=4M img.vhdx 6M
  run --separate-stderr "$FDE" -r --probe img.vhdx
  assert_success
  assert_line "format: vhdx"
  assert_line "virtual-size: $((6 * MiB))"
  assert_line "subformat: dynamic"
  assert_line "block-size: $((4 * MiB))"
  assert_line "logical-sector-size: 512"
  assert_line --regexp "^log-replayed: no"
}

@test "a VHDX is exported read-only without -r: the live line says so, writes fail with EROFS" {
  make_raw src.raw $SIZE
  qemu-img convert -f raw -O vhdx src.raw img.vhdx
  local sum
  sum=$(sha img.vhdx)
  start_fg img.vhdx
  grep -q 'read-only: vhdx images are served read-only' "$WORK/fg.out" "$WORK/fg.err" ||
    fail "the live line does not say read-only: $(cat "$WORK/fg.out" "$WORK/fg.err")"
  run dd if=/dev/zero of=img.vhdx bs=512 count=1 conv=notrunc status=none
  assert_failure
  assert_output --partial "Read-only file system"
  kill -INT "$FG_PID"
  wait "$FG_PID" || fail "the export did not end cleanly: $(cat "$WORK/fg.err")"
  [ "$(sha img.vhdx)" = "$sum" ] || fail "the image changed"
}

# ---- the log: QEMU decides, after its own replay --------------------------------

# replayed_by_qemu IMG OUT.raw: QEMU refuses IMG read-only (a log to
# replay), replays it into a copy with `qemu-img check -r all`, then reads
# the copy read-only: OUT.raw is that view.
replayed_by_qemu() {
  run qemu-img info -f vhdx "$1"
  [ "$status" != 0 ] && [[ "$output" == *"replay"* ]] ||
    fail "QEMU opens $1 read-only, so its log would not need replaying: $output"
  cp "$1" "$WORK/qemu-copy.vhdx"
  qemu-img check -q -r all -f vhdx "$WORK/qemu-copy.vhdx" ||
    fail "qemu-img check -r all failed on the copy"
  qemu-img info -f vhdx "$WORK/qemu-copy.vhdx" >/dev/null ||
    fail "QEMU did not replay the log of the copy"
  qemu-img convert -f vhdx -O raw "$WORK/qemu-copy.vhdx" "$2"
}

@test "a log to replay (BAT, data and zero descriptors, two entries, a stale one, an entry wrapping round) is replayed in memory: the view is QEMU's after its replay, the file unchanged" {
  local wrap sum
  for wrap in "" --wrap; do
    rm -f img.vhdx
    qemu-img create -q -f vhdx -o block_size=1M,log_size=2M img.vhdx 6M
    qemu-io -f vhdx -c 'write -P 0x11 0 1M' -c 'write -P 0x22 4M 8k' img.vhdx >/dev/null
    qemu-img convert -f vhdx -O raw img.vhdx before.raw
    $POKE log img.vhdx --block 2 --stale $wrap
    replayed_by_qemu img.vhdx after.raw
    ! cmp -s before.raw after.raw || fail "the log changes nothing: not a test"
    sum=$(sha img.vhdx)
    check_expect img.vhdx after.raw
    check_expect img.vhdx after.raw --no-splice
    [ "$(sha img.vhdx)" = "$sum" ] || fail "the image changed"
    run --separate-stderr "$FDE" -r --probe img.vhdx
    assert_success
    assert_line --regexp "^log-replayed: yes, in memory \(2 entries"
  done
}

@test "a log that rewrites the metadata (the virtual disk size) changes the view as QEMU's replay does" {
  qemu-img create -q -f vhdx -o block_size=1M img.vhdx 6M
  qemu-io -f vhdx -c 'write -P 0x33 0 2M' img.vhdx >/dev/null
  $POKE log img.vhdx --block 3 --resize 5M
  replayed_by_qemu img.vhdx after.raw
  [ "$(stat -c %s after.raw)" = $((5 * MiB)) ] || fail "QEMU's replay did not resize"
  check_expect img.vhdx after.raw
}

# ---- 4096-byte logical sectors and differencing: the specification decides ------

@test "VHDX with 4096-byte logical sectors read as the specification says (vhdimount agrees)" {
  make_raw src.raw $SIZE
  truncate -s $((10 * MiB)) src.raw
  $POKE build k1.vhdx --size $((10 * MiB)) --sector 4096 --data src.raw --expect k1.raw
  $POKE build k32.vhdx --size $((10 * MiB)) --sector 4096 --block-size 32M \
    --data src.raw --expect k32.raw --fixed
  cmp k1.raw src.raw || fail "vhdx-poke.py's expected view is not the data"
  check_expect k1.vhdx src.raw
  check_expect k32.vhdx src.raw
  [ "$(probe_line k1.vhdx logical-sector-size)" = 4096 ] || fail "sector size"
  vhdi_matches k1.vhdx src.raw
  vhdi_matches k32.vhdx src.raw
  # a differencing disk with 4096-byte sectors: one bit per 4 KiB
  $POKE build kd.vhdx --size $((10 * MiB)) --sector 4096 --parent k1.vhdx \
    --relative k1.vhdx --write 4096:4096:0x61 --write $((2 * MiB)):$((3 * MiB)):0x62 \
    --write $((9 * MiB + 8192)):8192:0x63 --expect kd.raw --parent-raw src.raw
  check_expect kd.vhdx kd.raw
  vhdi_matches kd.vhdx kd.raw
}

@test "BAT states ZERO, UNMAPPED and UNDEFINED read as zeros, as QEMU reads them" {
  head -c $((4 * MiB)) /dev/urandom >full.raw
  qemu-img convert -f raw -O vhdx -o block_size=1M full.raw img.vhdx
  # block b's entry is BAT entry b (one chunk): keep the offset, change the state
  $POKE set-bat img.vhdx 0 2
  $POKE set-bat img.vhdx 1 3
  $POKE set-bat img.vhdx 2 1
  check_view img.vhdx
  [ "$SEEK_RUNS" = 1 ] || fail "$SEEK_RUNS data ranges, want 1 (block 3)"
  cmp -n $MiB -i $((3 * MiB)) "$WORK/expect.raw" full.raw ||
    fail "block 3 is not the data"
}

@test "a differencing VHDX reads its present sectors from itself, the rest from its parent; a grandchild; --probe shows the chain (vhdimount agrees)" {
  make_raw src.raw $((6 * MiB))
  qemu-img convert -f raw -O vhdx -o block_size=1M src.raw base.vhdx
  qemu-img convert -f vhdx -O raw base.vhdx base.raw
  $POKE build child.vhdx --size $((6 * MiB)) --parent base.vhdx --relative base.vhdx \
    --write 0:4096:0x61 --write $MiB:$MiB:0x62 --write $((3 * MiB + 512)):1024:0x63 \
    --expect child.raw --parent-raw base.raw
  # a ZERO block reads as zeros, not as the parent's (libvhdi 20210425
  # reads the parent there: not compared with vhdimount)
  $POKE build zeroed.vhdx --size $((6 * MiB)) --parent base.vhdx --relative base.vhdx \
    --write 0:4096:0x61 --zero-block 4 --expect zeroed.raw --parent-raw base.raw
  cmp -s zeroed.raw base.raw && fail "the ZERO block changes nothing: not a test"
  check_expect zeroed.vhdx zeroed.raw
  $POKE build grand.vhdx --size $((6 * MiB)) --parent child.vhdx --relative './child.vhdx' \
    --write 512:512:0x71 --write $((5 * MiB)):4096:0x72 --expect grand.raw --parent-raw child.raw
  check_expect child.vhdx child.raw
  check_expect grand.vhdx grand.raw
  check_expect grand.vhdx grand.raw --no-splice
  vhdi_matches child.vhdx child.raw
  vhdi_matches grand.vhdx grand.raw
  run --separate-stderr "$FDE" -r --probe grand.vhdx
  assert_success
  assert_line "subformat: differencing"
  assert_line "parent-locator: relative_path"
  assert_line "backing-file: ./child.vhdx"
  assert_line --regexp "^  backing-file: (\./)?base\.vhdx$"
}

@test "hostile differencing VHDX are refused: a parent loop, another disk as parent, a missing parent, no usable name" {
  qemu-img create -q -f vhdx -o block_size=1M base.vhdx 2M
  $POKE build a.vhdx --size 2M --parent base.vhdx --relative base.vhdx --write 0:512:1
  $POKE build b.vhdx --size 2M --parent a.vhdx --relative a.vhdx --write 0:512:2
  $POKE build a.vhdx --size 2M --parent b.vhdx --relative b.vhdx --write 0:512:1
  expect_refused a.vhdx "loop"
  $POKE build other.vhdx --size 2M --parent base.vhdx --relative base.vhdx \
    --linkage '{01234567-89ab-cdef-0123-456789abcdef}' --write 0:512:1
  expect_refused other.vhdx "not the disk this one was made on"
  $POKE build lost.vhdx --size 2M --parent base.vhdx --relative gone.vhdx --write 0:512:1
  expect_refused lost.vhdx "gone.vhdx.*No such file"
  $POKE build drive.vhdx --size 2M --parent base.vhdx --absolute 'C:\vms\base.vhdx' --write 0:512:1
  expect_refused drive.vhdx "no parent usable here"
}

# ---- hostile images ---------------------------------------------------------------

@test "hostile VHDX images are refused: exit 3, one line naming the image and the problem, nothing mounted" {
  make_raw src.raw $((6 * MiB))
  qemu-img convert -f raw -O vhdx -o block_size=1M src.raw good.vhdx
  local size
  size=$(stat -c %s good.vhdx)
  qemu-img convert -f vhdx -O raw good.vhdx good.raw

  cp good.vhdx trunc.vhdx
  truncate -s $((size - 2 * MiB)) trunc.vhdx
  expect_refused trunc.vhdx "block [0-9]+ .* past the end of the file"
  cp good.vhdx short.vhdx
  truncate -s $((512 << 10)) short.vhdx
  expect_refused short.vhdx "shorter than its 1 MiB header area"

  cp good.vhdx batpast.vhdx
  $POKE set-bat batpast.vhdx 1 $(((1000 << 20) | 6))
  expect_refused batpast.vhdx "block 1 .* past the end of the file"
  cp good.vhdx bathead.vhdx
  $POKE set-bat bathead.vhdx 0 6
  expect_refused bathead.vhdx "block 0 .* in the header area"
  cp good.vhdx partial.vhdx
  $POKE set-bat partial.vhdx 0 $(((4 << 20) | 7))
  expect_refused partial.vhdx "BAT state 7, not a payload block state of a disk without a parent"

  cp good.vhdx h1.vhdx
  $POKE bad-header h1.vhdx 1
  check_view h1.vhdx                     # header 2 is still good
  $POKE bad-header h1.vhdx 2
  expect_refused h1.vhdx "no valid header \(header 1: CRC-32C mismatch; header 2: CRC-32C mismatch\)"

  cp good.vhdx r1.vhdx
  $POKE bad-region r1.vhdx 1
  check_expect r1.vhdx good.raw          # region table 2 is still good
  run qemu-img info -f vhdx r1.vhdx      # QEMU reads table 1 only
  assert_failure
  $POKE bad-region r1.vhdx 2
  expect_refused r1.vhdx "no valid region table"

  cp good.vhdx overlap.vhdx
  $POKE region-overlap overlap.vhdx
  expect_refused overlap.vhdx "region .* overlaps"

  cp good.vhdx logout.vhdx
  $POKE log-outside logout.vhdx
  expect_refused logout.vhdx "log would write .* outside the file"
  # over the file identifier: QEMU's replay leaves a file it cannot open
  cp good.vhdx logid.vhdx
  $POKE log-outside logid.vhdx identifier
  expect_refused logid.vhdx "log would write 4096 bytes at offset 0, over the file identifier"
  # a replay that grows the file, and a file shorter than the log says it
  # was when flushed (truncated): told apart
  cp good.vhdx logext.vhdx
  $POKE log-outside logext.vhdx extend
  expect_refused logext.vhdx "log would extend the file to [0-9]+ bytes"
  cp good.vhdx logflush.vhdx
  $POKE log-outside logflush.vhdx flushed
  expect_refused logflush.vhdx "log says the file was flushed at [0-9]+ bytes, it has [0-9]+ \(truncated\?\)"

  # QEMU decides: an entry whose header passes with a bad descriptor
  # fails QEMU's open (EINVAL: not "a log that needs to be replayed"),
  # and qemu-img check -r all cannot repair it either
  cp good.vhdx logdesc.vhdx
  $POKE log-bad-descriptor logdesc.vhdx
  run qemu-img info -f vhdx logdesc.vhdx
  assert_failure
  [[ "$output" == *"Invalid argument"* && "$output" != *"replayed"* ]] ||
    fail "qemu-img info: $output"
  cp logdesc.vhdx logdesc2.vhdx
  run qemu-img check -r all -f vhdx logdesc2.vhdx
  assert_failure
  expect_refused logdesc.vhdx "log entry at log offset 0: descriptor 0 is invalid \(its file offset is not a multiple of 4 KiB\)"

  cp good.vhdx sector.vhdx
  $POKE set-sector sector.vhdx 1024
  expect_refused sector.vhdx "sector sizes 1024 \(logical\)"
}
