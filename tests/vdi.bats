#!/usr/bin/env bats
# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
# VDI (VirtualBox) images, read-only (formats/vdi.c).  The oracle is QEMU:
# every image is made by qemu-img (create, convert -O vdi, dynamic and
# static), and the view must equal `qemu-img convert -O raw` byte for byte
# and give the data ranges of `qemu-img map` through SEEK_DATA/SEEK_HOLE.
# Hostile images are qemu-img's with header fields or map entries poked
# (tests/vdi-poke.py); each must be refused at open (exit 3, one line
# naming the image and the problem, nothing mounted).  Where QEMU refuses
# the same image, the test checks that it does.

load helpers
load format-helpers

bats_require_minimum_version 1.5.0

setup() {
  common_setup
  requires qemu-img
  requires_python
  POKE="$PYTHON $FDE_SRCDIR/tests/vdi-poke.py"
  RANDOM_READS="$FDE_SRCDIR/tests/random-reads.py"
}
teardown() { common_teardown; }

MiB=$((1 << 20))
SIZE=$((5 * MiB + 3584))        # six blocks, the last one partial

# make_raw FILE SIZE: random data with holes.  Block 0 is all data, block 1
# and 4 are holes, block 2 holds a little data, one run crosses from block
# 2 into 3, and the last (partial) block ends in data.
make_raw() {
  truncate -s "$2" "$1"
  put_random "$1" 0 $MiB
  put_random "$1" $((2 * MiB + 4096)) 65536
  put_random "$1" $((3 * MiB - 512)) 1024
  put_random "$1" $(($2 - 1536)) 1536
}

# field IMG NAME: a header field (decimal), as vdi-poke.py reads it.
field() { $POKE "$1" header | awk -v f="$2" '$1 == f { print $2 }'; }

# check_view IMG [OPTION]...: export IMG read-only with OPTIONs; the view
# equals `qemu-img convert -O raw` (read whole, and by random reads) and
# SEEK_DATA/SEEK_HOLE agree with `qemu-img map`.  Sets SEEK_RUNS (the
# number of data ranges).
check_view() {
  local img=$1
  shift
  qemu-img convert -f vdi -O raw "$img" "$WORK/expect.raw"
  qemu-img map -f vdi --output=json "$img" >"$WORK/map.json"
  start_export -r "$@" "$img"
  [ "$(stat -c %s "$img")" = "$(stat -c %s "$WORK/expect.raw")" ] ||
    fail "$img: view size $(stat -c %s "$img"), qemu-img: $(stat -c %s "$WORK/expect.raw")"
  cmp "$img" "$WORK/expect.raw" || fail "$img: the view differs from qemu-img convert"
  if [ -s "$WORK/expect.raw" ]; then
    run "$PYTHON" "$RANDOM_READS" --count 400 --cluster $MiB "$img" \
      "$WORK/expect.raw"
    assert_success
  fi
  seek_matches_map "$img" "$WORK/map.json"
  stop_export
}

@test "empty VDIs from qemu-img create (dynamic, static, size not a block multiple, size 0) read as qemu-img shows them" {
  qemu-img create -q -f vdi dyn.vdi $SIZE
  qemu-img create -q -f vdi -o static=on static.vdi $SIZE
  [ "$(field static.vdi image_type)" = 2 ] || fail "static=on did not make a static image"
  [ "$(field dyn.vdi blocks_allocated)" = 0 ] || fail "the dynamic image has blocks"
  check_view dyn.vdi
  # QEMU asks the file system about a static image's blocks: the file's
  # holes are holes of the disk (only its first 4 KiB block, shared with
  # the header, holds data)
  check_view static.vdi
  [ "$SEEK_RUNS" -le 1 ] || fail "a sparse static image shows $SEEK_RUNS data ranges"
  qemu-img create -q -f vdi zero.vdi 0
  check_view zero.vdi
}

@test "VDIs converted from random data with holes read as qemu-img convert -O raw, by SEEK_DATA/SEEK_HOLE as qemu-img map" {
  make_raw src.raw $SIZE
  qemu-img convert -f raw -O vdi src.raw dyn.vdi
  qemu-img convert -f raw -O vdi -o static=on src.raw static.vdi
  # the dynamic image has allocated and unallocated blocks
  local n
  n=$(field dyn.vdi blocks_allocated)
  [ "$n" -gt 1 ] && [ "$n" -lt 6 ] || fail "dyn.vdi has $n of 6 blocks allocated"
  check_view dyn.vdi
  [ "$SEEK_RUNS" -ge 3 ] || fail "only $SEEK_RUNS data ranges in dyn.vdi"
  cmp "$WORK/expect.raw" src.raw || fail "qemu-img's round trip differs from the source"
  check_view dyn.vdi --no-splice
  check_view static.vdi
  [ "$SEEK_RUNS" -ge 3 ] || fail "only $SEEK_RUNS data ranges in static.vdi"
  check_view static.vdi --no-splice
}

@test "a fully allocated VDI of random data reads as qemu-img convert -O raw" {
  head -c $((3 * MiB + 512)) /dev/urandom >full.raw
  qemu-img convert -f raw -O vdi full.raw full.vdi
  [ "$(field full.vdi blocks_allocated)" = 4 ] || fail "not all 4 blocks are allocated"
  check_view full.vdi
  [ "$SEEK_RUNS" = 1 ] || fail "$SEEK_RUNS data ranges, want 1"
  cmp "$WORK/expect.raw" full.raw || fail "qemu-img's round trip differs from the source"
}

@test "discarded and unallocated map entries read as zeros; an odd disk size is rounded up to a sector, as QEMU does" {
  make_raw src.raw $SIZE
  qemu-img convert -f raw -O vdi src.raw img.vdi
  [ "$($POKE img.vdi bmap 0)" = 0x0 ] || fail "block 0 is not data block 0"
  $POKE img.vdi bmap 0 0xfffffffe
  $POKE img.vdi bmap 5 0xffffffff
  $POKE img.vdi set disk_size $((SIZE - 100))
  check_view img.vdi
  [ "$(stat -c %s "$WORK/expect.raw")" = $SIZE ] || fail "qemu-img did not round the size up"
  # the data of block 0 is still in the file, but not in the view
  cmp -n $MiB "$WORK/expect.raw" /dev/zero || fail "discarded block 0 is not zeros"
}

@test "--probe shows format vdi, the virtual size and the subformat" {
  make_raw src.raw $SIZE
  qemu-img convert -f raw -O vdi src.raw dyn.vdi
  qemu-img create -q -f vdi -o static=on static.vdi $SIZE
  run --separate-stderr "$FDE" -r --probe dyn.vdi
  assert_success
  assert_line "format: vdi"
  assert_line "virtual-size: $SIZE"
  assert_line "subformat: dynamic"
  assert_line "block-size: 1048576"
  assert_line "blocks-allocated: $(field dyn.vdi blocks_allocated)"
  assert_line --regexp '^uuid: [0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}$'
  assert_line "writable: no"
  run --separate-stderr "$FDE" -r --probe static.vdi
  assert_success
  assert_line "format: vdi"
  assert_line "subformat: static"
}

@test "the served formats are listed the same way wherever a message lists them (-f's error, a backing format refused), vdi among them" {
  run --separate-stderr "$FDE" -f bochs --probe nothing.img
  local f_list chain_list
  f_list=$(sed -n 's/.*(formats served: \([^)]*\)).*/\1/p' <<<"$stderr")
  qemu-img create -q -f qcow2 -b base.img -F bochs -u top.qcow2 1M
  run --separate-stderr "$FDE" -r --probe top.qcow2
  assert_failure 3
  chain_list=$(sed -n 's/.*is not supported (only \([^)]*\)).*/\1/p' <<<"$stderr")
  [ -n "$f_list" ] && [ "$f_list" = "$chain_list" ] ||
    fail "-f's error lists '$f_list', the backing-format refusal '$chain_list'"
  [[ "$f_list" == *vdi* ]] || fail "vdi is not listed: $f_list"
}

@test "a VDI is served read-only without -r: the live line says so, writes fail with EROFS, the image is unchanged" {
  make_raw src.raw $SIZE
  qemu-img convert -f raw -O vdi src.raw img.vdi
  local sum
  sum=$(sha img.vdi)
  start_fg img.vdi
  # the live line follows the mount: give it a moment (sanitizer builds)
  local i
  for i in $(seq 50); do
    grep -q 'read-only: vdi images' "$WORK/fg.out" "$WORK/fg.err" && break
    sleep 0.1
  done
  grep -q 'read-only: vdi images are served read-only' "$WORK/fg.out" "$WORK/fg.err" ||
    fail "the live line does not say read-only: $(cat "$WORK/fg.out" "$WORK/fg.err")"
  run dd if=/dev/zero of=img.vdi bs=512 count=1 conv=notrunc status=none
  assert_failure
  assert_output --partial "Read-only file system"
  run "$PYTHON" -c 'import os, sys; os.open(sys.argv[1], os.O_RDWR)' img.vdi
  assert_failure
  cmp -n $MiB img.vdi src.raw || fail "the view does not show the disk"
  kill -INT "$FG_PID"
  wait_pid_gone "$FG_PID" || fail "the exporter did not exit"
  { wait "$FG_PID"; } 2>/dev/null || true
  nothing_mounted
  [ "$(sha img.vdi)" = "$sum" ] || fail "the image changed"
}

@test "a differencing VDI is refused, naming the reason: its parent is known only by UUID (as VirtualBox makes it; QEMU refuses it too)" {
  # VirtualBox's differencing image, byte by byte from VDICore.h: image
  # type 4 (VDI_IMAGE_TYPE_DIFF), uuidLinkage = the parent's image UUID,
  # uuidParentModify = the parent's modification UUID; the parent sits
  # next to it, which changes nothing: no file name is recorded anywhere
  make_raw src.raw $SIZE
  qemu-img convert -f raw -O vdi src.raw base.vdi
  cp base.vdi diff.vdi
  $POKE diff.vdi set image_type 4
  $POKE diff.vdi uuid uuid_image 00112233445566778899aabbccddeeff
  $POKE diff.vdi uuid uuid_link "$($POKE base.vdi uuid uuid_image)"
  $POKE diff.vdi uuid uuid_parent "$($POKE base.vdi uuid uuid_last_snap)"
  run qemu-img info -f vdi diff.vdi
  assert_failure
  local parent
  parent=$("$FDE" -r --probe base.vdi | sed -n 's/^uuid: //p')
  [ -n "$parent" ] || fail "no uuid line for base.vdi"
  expect_refused diff.vdi "differencing VDI image \(parent $parent\): not supported, as its parent is named only by UUID"
  expect_refused diff.vdi "differencing VDI image" -f vdi
  # as the backing file of a qcow2 overlay: the same one line
  qemu-img create -q -f qcow2 -b diff.vdi -F vdi -u top.qcow2 $SIZE
  expect_refused top.qcow2 "diff.vdi: differencing VDI image"
  # type 4 alone, or only the parent-modification UUID set, is differencing too
  cp base.vdi type4.vdi
  $POKE type4.vdi set image_type 4
  expect_refused type4.vdi 'differencing VDI image: not supported'
  cp base.vdi modify.vdi
  $POKE modify.vdi uuid uuid_parent 0123456789abcdef0123456789abcdef
  expect_refused modify.vdi 'differencing VDI image: not supported'
}

@test "hostile VDI images are refused: exit 3, one line naming the image and the problem, nothing mounted" {
  make_raw src.raw $SIZE
  qemu-img convert -f raw -O vdi src.raw good.vdi
  local blocks alloc data
  blocks=$(field good.vdi blocks_in_image)
  alloc=$(field good.vdi blocks_allocated)
  data=$(field good.vdi offset_data)
  [ "$blocks" = 6 ] && [ "$(field good.vdi offset_bmap)" = 512 ] ||
    fail "unexpected layout: $($POKE good.vdi header)"

  # bad IMG POKE-ARGS...: a copy of good.vdi with one change
  bad() { local img=$1; shift; cp good.vdi "$img"; $POKE "$img" "$@"; }
  # qemu_refuses IMG: QEMU refuses it too
  qemu_refuses() {
    run qemu-img info -f vdi "$1"
    [ "$status" != 0 ] || fail "qemu-img accepts $1: $output"
  }

  # fields QEMU checks the same way
  bad sig.vdi set signature 0x12345678
  qemu_refuses sig.vdi
  expect_refused sig.vdi 'not a VDI image.*signature' -f vdi
  bad ver.vdi set version 0x00010002
  qemu_refuses ver.vdi
  expect_refused ver.vdi 'version 1\.2'
  bad huge.vdi set disk_size 0xffffffffffffff00
  qemu_refuses huge.vdi
  expect_refused huge.vdi 'disk size [0-9]+ is too large'
  bad over.vdi set disk_size $((blocks * MiB + 512))
  qemu_refuses over.vdi
  expect_refused over.vdi 'larger than its 6 blocks'
  bad bsize.vdi set block_size 4096
  qemu_refuses bsize.vdi
  expect_refused bsize.vdi 'block size 4096'
  bad ssize.vdi set sector_size 4096
  qemu_refuses ssize.vdi
  expect_refused ssize.vdi 'sector size 4096'
  bad align.vdi set offset_data $((data + 256))
  qemu_refuses align.vdi
  expect_refused align.vdi 'multiple of 512'
  bad parent.vdi uuid uuid_parent 0123456789abcdef0123456789abcdef
  qemu_refuses parent.vdi
  expect_refused parent.vdi 'differencing'
  bad many.vdi set blocks_in_image 0x40000000
  qemu_refuses many.vdi
  expect_refused many.vdi 'too many VDI blocks'

  # what QEMU lets through (reading zeros, or junk) and we refuse
  bad bmap-eof.vdi set offset_bmap $((64 * MiB))
  $POKE bmap-eof.vdi set offset_data $((65 * MiB))
  expect_refused bmap-eof.vdi 'block map .* beyond the end of the file'
  bad entry.vdi bmap 2 "$alloc"
  expect_refused entry.vdi "entry 2 names data block $alloc, past the $alloc allocated"
  bad entry-big.vdi bmap 3 0xfffffffd
  expect_refused entry-big.vdi 'entry 3 names data block 4294967293'
  cp good.vdi trunc.vdi
  # the last data block holds the last, partial block of the disk (3584
  # bytes): cut inside those
  truncate -s $((data + (alloc - 1) * MiB + 1024)) trunc.vdi
  expect_refused trunc.vdi 'beyond the end of the file.*truncated'
  head -c 300 good.vdi >short.vdi
  expect_refused short.vdi 'truncated VDI image \(300 bytes'
  bad type.vdi set image_type 3
  expect_refused type.vdi 'image type 3'
  bad hsize.vdi set header_size 0
  expect_refused hsize.vdi 'header size 0 is less than 384'
  bad bmap0.vdi set offset_bmap 0
  expect_refused bmap0.vdi 'block map at 0 lies inside the header'
  bad bmapodd.vdi set offset_bmap 1000
  expect_refused bmapodd.vdi 'VDI block map offset 0x3e8 is not a multiple of 512'
  bad overlap.vdi set offset_data 512
  expect_refused overlap.vdi 'overlaps the data'
  bad nalloc.vdi set blocks_allocated 7
  expect_refused nalloc.vdi '7 blocks are allocated, of 6'
  bad extra.vdi set block_extra 4096
  expect_refused extra.vdi 'extra data'
}
