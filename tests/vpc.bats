#!/usr/bin/env bats
# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
# VHD images (QEMU's "vpc"), read-only (formats/vpc.c).
#
# Which oracle decides:
#  - dynamic VHDs: QEMU.  Every image is made by qemu-img (create, convert
#    -O vpc, force_size, sizes that CHS geometry cannot hold, empty, size
#    0); the view must equal `qemu-img convert -f vpc -O raw` byte for
#    byte and give the data ranges of `qemu-img map` by SEEK_DATA and
#    SEEK_HOLE.  libvhdi's vhdimount is a second oracle where installed.
#  - fixed VHDs: QEMU with -f vpc.  Without -f, QEMU probes a fixed VHD as
#    raw (its probe looks for the footer at offset 0 only) and shows the
#    footer as the disk's last sector; we probe the footer at the end, so
#    the view is the file less its footer.  The tests show both.
#  - the size rule: QEMU, for every creator on which the QEMU installed
#    and current QEMU agree; for Azure's "wa\0\0" (and unknown creators),
#    QEMU >= 10.0's rule decides (current_size; commit "vpc: Read images
#    exported from Azure correctly"), which the installed qemu-img 7.2
#    predates (it sizes those by CHS geometry): the test accepts either
#    size from qemu-img, requires current_size from us, and compares the
#    bytes both have.
#  - differencing VHDs: the specification.  QEMU ignores the parent (it
#    reads a differencing disk as a dynamic one), so the expected bytes
#    are built by tests/vpc-poke.py from the parent's view and the
#    sectors written; vhdimount agrees where every 4 KiB page is wholly
#    in the child or wholly in the parent (libvhdi 20210425 reads a page
#    whose first sector is in the child wholly from the child).
# Hostile images are qemu-img's with fields poked by tests/vpc-poke.py;
# each is refused at open (exit 3, one line naming the image and the
# problem, nothing mounted).  Where QEMU refuses the same image, the test
# checks that it does.

load helpers
load format-helpers

bats_require_minimum_version 1.5.0

setup() {
  common_setup
  requires qemu-img
  requires qemu-io
  requires_python
  POKE="$PYTHON $FDE_SRCDIR/tests/vpc-poke.py"
  RANDOM_READS="$FDE_SRCDIR/tests/random-reads.py"
}
teardown() { common_teardown; }

MiB=$((1 << 20))
# not CHS-exact: qemu-img rounds it up to 6203 cylinders x 16 x 63 sectors
SIZE=$((6 * MiB + 3584))

# make_raw FILE SIZE: random data with holes.  Block 0 (2 MiB) starts with
# data, block 1 is a hole, block 2 holds a little data, a run crosses from
# block 2 into 3, and the last (partial) block ends in data.
make_raw() {
  truncate -s "$2" "$1"
  put_random "$1" 0 $MiB
  put_random "$1" $((4 * MiB + 100000)) 4096
  put_random "$1" $((6 * MiB - 512)) 1536
  put_random "$1" $(($2 - 1536)) 1536
}

# field IMG NAME: a footer field as vpc-poke.py prints it.
field() { $POKE "$1" footer | awk -v f="$2" '$1 == f { print $2 }'; }
hfield() { $POKE "$1" header | awk -v f="$2" '$1 == f { print $2 }'; }

# check_view IMG [OPTION]...: export IMG read-only with OPTIONs (the format
# probed); the view equals `qemu-img convert -f vpc -O raw`, and
# SEEK_DATA/SEEK_HOLE agree with `qemu-img map -f vpc`.  Sets SEEK_RUNS.
check_view() {
  local img=$1
  shift
  qemu-img convert -f vpc -O raw "$img" "$WORK/expect.raw"
  qemu-img map -f vpc --output=json "$img" >"$WORK/map.json"
  start_export -r "$@" "$img"
  compare_view "$img" "$WORK/expect.raw" $((2 * MiB))
  seek_matches_map "$img" "$WORK/map.json"
  stop_export
}

# vhdi_matches IMG EXPECT: libvhdi's vhdimount shows IMG as EXPECT (its
# last file is the top layer); skipped without vhdimount.
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

# qemu_refuses IMG: QEMU refuses it too.
qemu_refuses() {
  run qemu-img info -f vpc "$1"
  [ "$status" != 0 ] || fail "qemu-img accepts $1: $output"
}

# ---- dynamic ----------------------------------------------------------------

@test "empty dynamic VHDs from qemu-img create (CHS-exact, rounded up to CHS, force_size, size 0) read as qemu-img shows them" {
  qemu-img create -q -f vpc chs.vhd 10M
  qemu-img create -q -f vpc odd.vhd $SIZE
  qemu-img create -q -f vpc -o force_size=on force.vhd $SIZE
  qemu-img create -q -f vpc zero.vhd 0
  [ "$(field odd.vhd current_size)" -gt $SIZE ] ||
    fail "qemu-img did not round $SIZE up to a CHS geometry"
  [ "$(field force.vhd creator_app)" = qem2 ] &&
    [ "$(field force.vhd current_size)" = $SIZE ] ||
    fail "force_size=on did not keep the size: $($POKE force.vhd footer)"
  local img
  for img in chs.vhd odd.vhd force.vhd zero.vhd; do
    check_view "$img"
    [ "$SEEK_RUNS" = 0 ] || fail "$img: an empty image shows $SEEK_RUNS data ranges"
  done
}

@test "dynamic VHDs converted from random data with holes read as qemu-img convert -O raw, by SEEK_DATA/SEEK_HOLE as qemu-img map" {
  make_raw src.raw $SIZE
  qemu-img convert -f raw -O vpc src.raw dyn.vhd
  qemu-img convert -f raw -O vpc -o force_size=on src.raw force.vhd
  check_view dyn.vhd
  [ "$SEEK_RUNS" = 2 ] || fail "$SEEK_RUNS data ranges in dyn.vhd, want 2"
  cmp -n $SIZE "$WORK/expect.raw" src.raw || fail "qemu-img's round trip differs"
  vhdi_matches dyn.vhd "$WORK/expect.raw"
  check_view dyn.vhd --no-splice
  check_view force.vhd
  [ "$(stat -c %s "$WORK/expect.raw")" = $SIZE ] || fail "force_size changed the size"
  cmp "$WORK/expect.raw" src.raw || fail "qemu-img's round trip differs"
  vhdi_matches force.vhd src.raw
}

@test "a fully allocated dynamic VHD of random data, and one written by qemu-io, read as qemu-img shows them" {
  head -c $((4 * MiB + 512)) /dev/urandom >full.raw
  qemu-img convert -f raw -O vpc -o force_size=on full.raw full.vhd
  check_view full.vhd
  [ "$SEEK_RUNS" = 1 ] || fail "$SEEK_RUNS data ranges, want 1"
  cmp "$WORK/expect.raw" full.raw || fail "qemu-img's round trip differs"
  qemu-img create -q -f vpc io.vhd 16M
  qemu-io -f vpc -c 'write -P 0x5a 10M 4k' -c 'write -P 0xa5 1M 512' \
    -c 'write -P 0x33 2047k 2k' io.vhd >/dev/null
  check_view io.vhd
  vhdi_matches io.vhd "$WORK/expect.raw"
}

# ---- fixed -----------------------------------------------------------------

@test "fixed VHDs are probed by their footer: the view is the file less its footer, as qemu-img -f vpc shows it" {
  make_raw src.raw $SIZE
  qemu-img convert -f raw -O vpc -o subformat=fixed src.raw fixed.vhd
  qemu-img convert -f raw -O vpc -o subformat=fixed,force_size=on src.raw \
    fixed-force.vhd
  local img len
  for img in fixed.vhd fixed-force.vhd; do
    len=$(($(stat -c %s "$img") - 512))
    [ "$(field "$img" disk_type)" = 2 ] || fail "$img is not fixed"
    head -c $len "$img" >"$WORK/less-footer.raw"
    # QEMU probes it as raw, footer included: not the oracle without -f
    run qemu-img info --output=json "$img"
    assert_output --partial '"format": "raw"'
    run --separate-stderr "$FDE" -r --probe "$img"
    assert_success
    assert_line "format: vpc"
    assert_line "subformat: fixed"
    assert_line "virtual-size: $len"
    check_view "$img"
    cmp "$WORK/expect.raw" "$WORK/less-footer.raw" ||
      fail "$img: qemu-img -f vpc does not show the file less its footer"
    [ "$SEEK_RUNS" -ge 3 ] || fail "$img: only $SEEK_RUNS data ranges"
    check_view "$img" --no-splice
    check_view "$img" -f vpc
    vhdi_matches "$img" "$WORK/less-footer.raw"
  done
  cmp -n $SIZE "$WORK/expect.raw" src.raw || fail "qemu-img's round trip differs"
}

@test "a file whose last sector only resembles a fixed VHD footer is raw, and -f vpc refuses it" {
  qemu-img create -q -f vpc -o subformat=fixed fixed.vhd 4M
  local len
  len=$(stat -c %s fixed.vhd)
  cp fixed.vhd cksum.img
  $POKE cksum.img set-footer checksum 0x12345678
  cp fixed.vhd size.img
  $POKE size.img set-footer current_size $((len))
  cp fixed.vhd dyn.img
  $POKE dyn.img set-footer disk_type 3
  local img
  for img in cksum.img size.img dyn.img; do
    run --separate-stderr "$FDE" -r --probe "$img"
    assert_success
    assert_line "format: raw"
    assert_line "virtual-size: $len"
  done
  expect_refused cksum.img 'footer checksum mismatch' -f vpc
  qemu_refuses cksum.img
  expect_refused dyn.img 'no copy of it at offset 0' -f vpc
  # a size that does not match the file: not probed, but readable with -f
  # vpc as QEMU reads it (the disk's bytes up to the footer)
  start_export -r -f vpc size.img
  [ "$(stat -c %s size.img)" = "$((len - 512))" ] ||
    fail "size.img: view size $(stat -c %s size.img)"
  stop_export
}

@test "a probed raw image refuses a write that would make its last sector a fixed VHD footer (it would probe as VHD next time); -f raw allows it" {
  local len=$((4 * MiB))
  # the footer a fixed VHD of this file's size would end in
  qemu-img create -q -f vpc -o subformat=fixed,force_size=on fixed.vhd \
    $((len - 512))
  tail -c 512 fixed.vhd >footer
  truncate -s $len disk.img
  local sum
  sum=$(sha disk.img)
  start_export disk.img
  run dd if=footer of=disk.img bs=512 seek=$((len / 512 - 1)) \
    conv=notrunc status=none
  assert_failure
  assert_output --partial "Operation not permitted"
  # in two writes: the first stops inside the checksum field (allowed),
  # the second completes the footer (refused): the guard merges each
  # write with what the sector holds
  run dd if=footer of=disk.img bs=66 count=1 seek=$((len - 512)) \
    oflag=seek_bytes conv=notrunc status=none
  assert_success
  run dd if=footer of=disk.img bs=446 skip=66 seek=$((len - 446)) \
    iflag=skip_bytes oflag=seek_bytes conv=notrunc status=none
  assert_failure
  assert_output --partial "Operation not permitted"
  # the rest of the disk, and the last sector with other bytes, are fine
  run dd if=/dev/urandom of=disk.img bs=512 count=2 seek=$((len / 512 - 2)) \
    conv=notrunc status=none
  assert_success
  stop_export
  run --separate-stderr "$FDE" -r --probe disk.img
  assert_line "format: raw"
  [ "$(sha disk.img)" != "$sum" ] || fail "the allowed write did not land"
  # with -f raw the footer may be written; the file then probes as VHD
  start_export -f raw disk.img
  run dd if=footer of=disk.img bs=512 seek=$((len / 512 - 1)) \
    conv=notrunc status=none
  assert_success
  stop_export
  run --separate-stderr "$FDE" -r --probe disk.img
  assert_line "format: vpc"
  assert_line "subformat: fixed"
}

# ---- the size rule ------------------------------------------------------------

@test "the size rule: CHS geometry for vpc and qemu, current_size for the other creators and for the largest geometry" {
  qemu-img create -q -f vpc base.vhd 10M
  qemu-io -f vpc -c 'write -P 0x77 9M 1M' base.vhd >/dev/null
  local chs=$(($(field base.vhd cylinders) * $(field base.vhd heads) * $(field base.vhd sectors) * 512))
  local small=$((chs - 3 * MiB))
  # rule CREATOR [SETTINGS]: a copy with creator CREATOR and current_size
  # 3 MiB below the CHS size; sets IMG
  rule() {
    IMG=rule-$(echo "$1" | tr -dc 'a-z0-9').vhd
    cp base.vhd "$IMG"
    $POKE "$IMG" set-footer creator_app "$1"
    $POKE "$IMG" set-footer current_size $small
  }
  local c
  for c in "vpc " qemu; do
    rule "$c"
    check_view "$IMG"
    [ "$(stat -c %s "$WORK/expect.raw")" = $chs ] || fail "$c: QEMU does not size by CHS"
    run --separate-stderr "$FDE" -r --probe "$IMG"
    assert_line "size-rule: chs"
  done
  for c in "win " qem2 "d2v " CTXS tap; do
    rule "$c"
    check_view "$IMG"
    [ "$(stat -c %s "$WORK/expect.raw")" = $small ] || fail "$c: QEMU does not use current_size"
    run --separate-stderr "$FDE" -r --probe "$IMG"
    assert_line "size-rule: current-size"
  done
  # Azure ("wa\0\0") and creators QEMU does not know: the oracle for the
  # SIZE is QEMU >= 10.0's rule (commit "vpc: Read images exported from
  # Azure correctly", Feb 2025: only Virtual PC and old QEMU size by CHS,
  # every other creator's current_size is reliable; before it, Azure
  # images were cut or padded and qemu-nbd could not use them).  The
  # installed qemu-img (7.2 on Debian 12) predates it and sizes these by
  # CHS: it is the oracle for the BYTES only, up to the smaller size.
  local creator
  for creator in wa abcd; do
    rule "$creator"
    run qemu-img info --output=json -f vpc "$IMG"
    [[ "$output" == *"\"virtual-size\": $small,"* || "$output" == *"\"virtual-size\": $chs,"* ]] ||
      fail "qemu-img sizes the $creator image neither way: $output"
    qemu-img convert -f vpc -O raw "$IMG" "$WORK/expect.raw"
    start_export -r "$IMG"
    [ "$(stat -c %s "$IMG")" = $small ] ||
      fail "$creator: view size $(stat -c %s "$IMG"), want $small (current_size, QEMU >= 10's rule)"
    cmp -n $small "$IMG" "$WORK/expect.raw" || fail "$creator: the bytes differ from qemu-img's"
    stop_export
    run --separate-stderr "$FDE" -r --probe "$IMG"
    assert_line "size-rule: current-size"
  done
  # the largest geometry means "too large for CHS": current_size
  rule qemu
  $POKE "$IMG" set-footer cylinders 65535
  $POKE "$IMG" set-footer heads 16
  $POKE "$IMG" set-footer sectors 255
  check_view "$IMG"
  [ "$(stat -c %s "$WORK/expect.raw")" = $small ] || fail "largest CHS: QEMU does not use current_size"
  run --separate-stderr "$FDE" -r --probe "$IMG"
  assert_line "size-rule: current-size (largest chs geometry)"
}

# ---- --probe, read-only ---------------------------------------------------------

@test "--probe shows format vpc, the virtual size, the subformat, the creator and the block table" {
  make_raw src.raw $SIZE
  qemu-img convert -f raw -O vpc src.raw dyn.vhd
  local vsize
  vsize=$(qemu-img info --output=json -f vpc dyn.vhd | sed -n 's/.*"virtual-size": \([0-9]*\).*/\1/p')
  run --separate-stderr "$FDE" -r --probe dyn.vhd
  assert_success
  assert_line "format: vpc"
  assert_line "virtual-size: $vsize"
  assert_line "subformat: dynamic"
  assert_line --regexp '^creator: qemu [0-9]+\.[0-9]+ \(Wi2k\)$'
  assert_line "size-rule: chs"
  assert_line "block-size: 2097152"
  assert_line "blocks: 4"
  assert_line "blocks-allocated: 3"
  assert_line "writable: no"
}

@test "a VHD is exported read-only without -r: the live line says so, writes fail with EROFS" {
  make_raw src.raw $SIZE
  qemu-img convert -f raw -O vpc src.raw img.vhd
  local sum
  sum=$(sha img.vhd)
  start_fg img.vhd
  # the live line follows the mount: give it a moment (sanitizer builds)
  local i
  for i in $(seq 50); do
    grep -q 'read-only: vpc images' "$WORK/fg.out" "$WORK/fg.err" && break
    sleep 0.1
  done
  grep -q 'read-only: vpc images are served read-only' "$WORK/fg.out" "$WORK/fg.err" ||
    fail "the live line does not say read-only: $(cat "$WORK/fg.out" "$WORK/fg.err")"
  run dd if=/dev/zero of=img.vhd bs=512 count=1 conv=notrunc status=none
  assert_failure
  assert_output --partial "Read-only file system"
  kill -INT "$FG_PID"
  wait "$FG_PID" || fail "the export did not end cleanly: $(cat "$WORK/fg.err")"
  [ "$(sha img.vhd)" = "$sum" ] || fail "the image changed"
}

@test "a qcow2 overlay on a dynamic or fixed VHD (backing format vpc) reads as qemu-img shows it" {
  make_raw src.raw $SIZE
  qemu-img convert -f raw -O vpc src.raw dyn.vhd
  qemu-img convert -f raw -O vpc -o subformat=fixed src.raw fixed.vhd
  local base
  for base in dyn.vhd fixed.vhd; do
    qemu-img create -q -f qcow2 -b "$base" -F vpc "top-$base.qcow2"
    qemu-io -f qcow2 -c 'write -P 0x99 1M 64k' -c 'write -P 0x98 5M 4k' \
      "top-$base.qcow2" >/dev/null
    qemu-img convert -O raw "top-$base.qcow2" "$WORK/expect.raw"
    start_export -r "top-$base.qcow2"
    compare_view "top-$base.qcow2" "$WORK/expect.raw" $((2 * MiB))
    stop_export
    run --separate-stderr "$FDE" -r --probe "top-$base.qcow2"
    assert_line "backing-format: vpc"
  done
}

# ---- differencing ---------------------------------------------------------------

# make_parent: par.vhd, a dynamic VHD of random data with holes (par.raw
# is its view), in $WORK.
make_parent() {
  make_raw src.raw $SIZE
  qemu-img convert -f raw -O vpc src.raw par.vhd
  qemu-img convert -f vpc -O raw par.vhd par.raw
}

@test "a differencing VHD reads its own sectors from itself and the rest from its parent (the specification decides; vhdimount agrees)" {
  make_parent
  cp par.raw child.expect
  # whole 4 KiB pages only: libvhdi reads those as the specification says
  $POKE diff par.vhd child.vhd --w2ru '.\par.vhd' --w2ku 'C:\vms\par.vhd' \
    --name par.vhd --write 0:4096:0x11 --write $((2 * MiB + 8192)):65536:0x22 \
    --write $((6 * MiB)):4096:0x33 --expect child.expect
  run --separate-stderr "$FDE" -r --probe child.vhd
  assert_success
  assert_line "subformat: differencing"
  assert_line "parent-locator: W2ru"
  assert_line "backing-file: ./par.vhd"
  assert_line "backing-format: vpc"
  start_export -r child.vhd
  compare_view child.vhd child.expect $((2 * MiB))
  stop_export
  vhdi_matches child.vhd child.expect
  # QEMU reads it as a dynamic disk without its parent: not the oracle
  qemu-img convert -f vpc -O raw child.vhd qemu.raw
  ! cmp -s qemu.raw child.expect || fail "QEMU now reads the parent: make it the oracle"
}

@test "a differencing VHD: single sectors from the bitmap, a grandchild, each kind of parent locator" {
  make_parent
  cp par.raw child.expect
  mkdir sub
  # sectors present and absent within one 4 KiB page, a block with one
  # sector, runs crossing block boundaries
  $POKE diff par.vhd sub/child.vhd --w2ru '..\par.vhd' \
    --write 512:512:0x41 --write 2048:1024:0x42 --write $((2 * MiB - 512)):1024:0x43 \
    --write $((5 * MiB + 7 * 512)):512:0x44 --expect child.expect
  start_export -r sub/child.vhd
  compare_view sub/child.vhd child.expect $((2 * MiB))
  stop_export
  # a grandchild over the child, found by a Mac OS X file URL
  cp child.expect grand.expect
  $POKE diff sub/child.vhd grand.vhd --macx 'file://./sub/child.vhd' \
    --write 1024:2048:0x51 --write $((4 * MiB)):4096:0x52 --expect grand.expect
  run --separate-stderr "$FDE" -r --probe grand.vhd
  assert_line "parent-locator: MacX"
  start_export -r grand.vhd
  compare_view grand.vhd grand.expect $((2 * MiB))
  stop_export
  # an absolute POSIX path in W2ku; a Windows path in W2ku is skipped for
  # the header's parent name, taken beside the image
  cp par.raw abs.expect
  $POKE diff par.vhd abs.vhd --w2ku "$WORK/par.vhd" --write 0:512:0x61 \
    --expect abs.expect
  cp par.raw name.expect
  $POKE diff par.vhd name.vhd --w2ku 'C:\vms\par.vhd' --name 'C:\vms\par.vhd' \
    --write 0:512:0x62 --expect name.expect
  run --separate-stderr "$FDE" -r --probe abs.vhd
  assert_line "parent-locator: W2ku"
  assert_line "backing-file: $WORK/par.vhd"
  run --separate-stderr "$FDE" -r --probe name.vhd
  assert_line "parent-locator: parent name"
  start_export -r abs.vhd
  compare_view abs.vhd abs.expect $((2 * MiB))
  stop_export
  start_export -r name.vhd
  compare_view name.vhd name.expect $((2 * MiB))
  stop_export
}

@test "SEEK_DATA/SEEK_HOLE of a differencing VHD: its present sectors, and its parent's data" {
  qemu-img create -q -f vpc empty.vhd 16M
  $POKE diff empty.vhd child.vhd --w2ru empty.vhd --write 4096:1024:0x11 \
    --write $((5 * MiB)):$((3 * MiB)):0x22
  start_export -r child.vhd
  run "$PYTHON" - child.vhd <<'PY'
import errno, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
size, pos, got = os.fstat(fd).st_size, 0, []
while pos < size:
    try:
        d = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError as e:
        if e.errno != errno.ENXIO:
            raise
        break
    pos = os.lseek(fd, d, os.SEEK_HOLE)
    got.append((d, pos))
print(got)
PY
  assert_success
  assert_output "[(4096, 5120), ($((5 * MiB)), $((8 * MiB)))]"
  stop_export
}

@test "hostile differencing VHDs are refused: a parent loop, another disk as parent, no parent, a locator outside the file" {
  make_parent
  $POKE diff par.vhd a.vhd --w2ru b.vhd --write 0:512:1
  $POKE diff par.vhd b.vhd --w2ru a.vhd --write 0:512:2
  # make each the other's parent: a's parent id is b's id and back
  $POKE a.vhd set-header parent_uuid "$(field b.vhd unique_id)"
  $POKE b.vhd set-header parent_uuid "$(field a.vhd unique_id)"
  expect_refused a.vhd 'loop'
  $POKE diff par.vhd other.vhd --w2ru par.vhd --write 0:512:3
  qemu-img convert -f raw -O vpc src.raw par.vhd    # a new unique id
  expect_refused other.vhd 'par.vhd is not the disk this one was made on'
  $POKE diff par.vhd gone.vhd --w2ru missing.vhd --write 0:512:4
  expect_refused gone.vhd 'missing.vhd.*No such file'
  $POKE diff par.vhd raw.vhd --w2ru src.raw --write 0:512:5
  expect_refused raw.vhd 'src.raw.*not a VHD'
  $POKE diff par.vhd far.vhd --w2ru par.vhd --write 0:512:6
  $POKE far.vhd locator 0 W2ru $((1 << 40)) 14 1
  expect_refused far.vhd 'parent locator 0 .* runs past the end of the file'
  $POKE diff par.vhd none.vhd --write 0:512:7
  expect_refused none.vhd 'names no usable parent'
}

# ---- hostile images ------------------------------------------------------------

@test "hostile VHD images are refused: exit 3, one line naming the image and the problem, nothing mounted" {
  make_raw src.raw $SIZE
  qemu-img convert -f raw -O vpc src.raw good.vhd
  qemu-img create -q -f vpc -o subformat=fixed fixed.vhd 1M
  [ "$(hfield good.vhd table_offset)" = 1536 ] &&
    [ "$(hfield good.vhd max_table_entries)" = 4 ] ||
    fail "unexpected layout: $($POKE good.vhd header)"
  # bad IMG POKE-ARGS...: a copy of good.vhd with one change
  bad() { local img=$1; shift; cp good.vhd "$img"; $POKE "$img" "$@"; }

  # what QEMU refuses too
  bad cksum.vhd set-footer checksum 0x12345678
  qemu_refuses cksum.vhd
  expect_refused cksum.vhd 'footer checksum mismatch'
  bad cookie.vhd set-header parent_timestamp 1
  printf 'xxsparse' | dd of=cookie.vhd bs=1 seek=512 conv=notrunc status=none
  qemu_refuses cookie.vhd
  expect_refused cookie.vhd "no VHD dynamic disk header \('cxsparse'\)"
  bad bs0.vhd set-header block_size 0
  qemu_refuses bs0.vhd
  expect_refused bs0.vhd 'block size 0 is not a power of 2'
  bad bs3000.vhd set-header block_size 3000
  qemu_refuses bs3000.vhd
  expect_refused bs3000.vhd 'block size 3000'
  bad small.vhd set-header max_table_entries 2
  qemu_refuses small.vhd
  expect_refused small.vhd 'block table too small'
  bad many.vhd set-header max_table_entries 0x40000000
  qemu_refuses many.vhd
  expect_refused many.vhd 'block table has 1073741824 entries'
  bad entry.vhd bat 1 0x00ffffff
  qemu_refuses entry.vhd
  expect_refused entry.vhd 'block 1 .* runs past the end of the file'
  cp good.vhd trunc.vhd
  truncate -s $(($(stat -c %s good.vhd) - MiB)) trunc.vhd
  qemu_refuses trunc.vhd
  expect_refused trunc.vhd 'runs past the end of the file.*truncated'
  bad huge.vhd set-footer creator_app "win "
  $POKE huge.vhd set-footer current_size $((2041 << 30))
  qemu_refuses huge.vhd
  expect_refused huge.vhd 'over 2040 GiB'
  # the footer's zero tail is cut too: the footer itself is whole
  head -c 300 good.vhd >short.vhd
  qemu_refuses short.vhd
  expect_refused short.vhd 'header offset 0x200 is outside the file \(300 bytes\)'
  head -c 200 fixed.vhd >short-fixed.vhd
  expect_refused short-fixed.vhd 'not a VHD image \(shorter than its footer\)' -f vpc

  # what QEMU reads (zeros past the end of the file, junk, or a crash)
  # and we refuse
  bad bat-eof.vhd set-header table_offset $((1 << 40))
  expect_refused bat-eof.vhd 'block table .* runs past the end of the file'
  bad hdr-eof.vhd set-footer data_offset $((1 << 40))
  expect_refused hdr-eof.vhd 'dynamic disk header offset .* outside the file'
  bad hdr-zero.vhd set-footer data_offset 0
  expect_refused hdr-zero.vhd 'dynamic disk header offset 0 is outside'
  bad hcksum.vhd set-header checksum 0x12345678
  expect_refused hcksum.vhd 'dynamic disk header checksum mismatch'
  bad version.vhd set-header header_version 0x20000
  expect_refused version.vhd 'header version 0x20000'
  bad bs512.vhd set-header block_size 512
  $POKE bs512.vhd set-header max_table_entries $((SIZE / 512 + 64))
  expect_refused bs512.vhd 'block size 512 is not a power of 2 from 4 KiB'
  bad bshuge.vhd set-header block_size 0x80000000
  expect_refused bshuge.vhd 'block size 2147483648'
  bad type5.vhd set-footer disk_type 5
  expect_refused type5.vhd 'disk type 5'
  bad type2.vhd set-footer disk_type 2
  expect_refused type2.vhd 'a fixed disk has no copy of it at offset 0'
  expect_refused good.vhd 'no internal snapshots' --snapshot=1
}

@test "vhdimount, where installed, shows qemu-img's dynamic and fixed VHDs as the view does" {
  requires vhdimount
  make_raw src.raw $SIZE
  qemu-img convert -f raw -O vpc src.raw dyn.vhd
  qemu-img convert -f raw -O vpc -o subformat=fixed src.raw fixed.vhd
  local img
  for img in dyn.vhd fixed.vhd; do
    qemu-img convert -f vpc -O raw "$img" "$WORK/expect.raw"
    vhdi_matches "$img" "$WORK/expect.raw"
    start_export -r "$img"
    compare_view "$img" "$WORK/expect.raw" $((2 * MiB))
    stop_export
  done
}
