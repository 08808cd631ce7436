#!/usr/bin/env bats
# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
# Mixed-format backing chains (issue 12, item 6): a qcow2 overlay whose
# backing file is an image of another format, as virt-v2v and migrations
# make them (`qemu-img create -f qcow2 -b base.vdi -F vdi top.qcow2`).
# The oracle is QEMU: the view equals `qemu-img convert -O raw` of the
# top, SEEK_DATA/SEEK_HOLE agree with `qemu-img map` of it, writes land in
# the qcow2 only (the base's bytes unchanged, `qemu-img check` of the top
# clean, the top then reads as QEMU shows it) and --probe shows the chain.
# Bases here (KINDS): VDI (dynamic, static), VHD (dynamic, fixed), VMDK
# (monolithicSparse, streamOptimized) and VHDX (dynamic).  A VMDK delta on
# a VMDK and a VHDX differencing disk on a VHDX are tested in their own
# suites.

load helpers
load format-helpers

bats_require_minimum_version 1.5.0

setup() {
  common_setup
  requires qemu-img
  requires qemu-io
  requires_python
}
teardown() { common_teardown; }

MiB=$((1 << 20))
SIZE=$((6 * MiB))       # a whole number of VHD CHS sectors (qemu-img keeps it)

# make_base FMT NAME: NAME, a FMT image (vdi, vdi-static, vpc, vpc-fixed)
# of SIZE bytes converted from random data with holes; the data it was
# made from stays in NAME.src.
make_base() {
  local src="$2.src"
  truncate -s $SIZE "$src"
  put_random "$src" 0 $MiB
  put_random "$src" $((2 * MiB + 4096)) 65536
  put_random "$src" $((3 * MiB - 512)) 1024
  put_random "$src" $((SIZE - 1536)) 1536
  case "$1" in
    vdi) qemu-img convert -f raw -O vdi "$src" "$2" ;;
    vdi-static) qemu-img convert -f raw -O vdi -o static=on "$src" "$2" ;;
    vpc) qemu-img convert -f raw -O vpc -o force_size=on "$src" "$2" ;;
    vpc-fixed)
      qemu-img convert -f raw -O vpc -o subformat=fixed,force_size=on \
        "$src" "$2" ;;
    vmdk-sparse)
      qemu-img convert -f raw -O vmdk -o subformat=monolithicSparse \
        "$src" "$2" ;;
    vmdk-stream)
      qemu-img convert -f raw -O vmdk -o subformat=streamOptimized \
        "$src" "$2" ;;
    vhdx) qemu-img convert -f raw -O vhdx "$src" "$2" ;;
  esac
}

# qemu_fmt KIND: the format name QEMU gives a base of make_base's KIND.
qemu_fmt() { echo "${1%-*}"; }

# The kinds of base tested (MIXED_CHAIN_KINDS overrides the list, to
# look at one).
KINDS=${MIXED_CHAIN_KINDS:-"vdi vdi-static vpc vpc-fixed vmdk-sparse vmdk-stream vhdx"}

# make_top BASE FMT: top.qcow2 over BASE (backing format FMT), with some
# clusters written by qemu-io: whole clusters, and 4 KiB inside a cluster
# whose rest stays in the base.
make_top() {
  qemu-img create -q -f qcow2 -b "$1" -F "$2" top.qcow2
  qemu-io -f qcow2 -c 'write -P 0x99 1M 64k' -c 'write -P 0x98 2M 4k' \
    -c 'write -z 4M 128k' top.qcow2 >/dev/null
}

# check_top: the view of top.qcow2 (read-only) equals qemu-img's, by
# cmp, random reads and SEEK_DATA/SEEK_HOLE.
check_top() {
  qemu-img convert -O raw top.qcow2 "$WORK/expect.raw"
  qemu-img map --output=json top.qcow2 >"$WORK/map.json"
  start_export -r "$@" top.qcow2
  compare_view top.qcow2 "$WORK/expect.raw" 65536
  seek_matches_map top.qcow2 "$WORK/map.json"
  stop_export
}

@test "a qcow2 overlay on a VDI, VHD, VMDK (sparse, stream) or VHDX reads through as qemu-img convert shows the top" {
  local kind
  for kind in $KINDS; do
    rm -f top.qcow2
    make_base "$kind" "base-$kind"
    make_top "base-$kind" "$(qemu_fmt "$kind")"
    check_top
    [ "$SEEK_RUNS" -ge 2 ] || fail "$kind: only $SEEK_RUNS data ranges"
    check_top --no-splice
    # the base's own data shows where the top has none
    start_export -r top.qcow2
    cmp -n $MiB top.qcow2 "base-$kind.src" ||
      fail "$kind: the first MiB is not the base's"
    stop_export
  done
}

@test "writes to a qcow2 overlay on a VDI, VHD, VMDK or VHDX land in the qcow2 only: the base unchanged, qemu-img check clean, the top reads back as written" {
  local kind base_sum
  for kind in $KINDS; do
    rm -f top.qcow2
    make_base "$kind" "base-$kind"
    make_top "base-$kind" "$(qemu_fmt "$kind")"
    base_sum=$(sha "base-$kind")
    qemu-img convert -O raw top.qcow2 "$WORK/want.raw"
    head -c 200000 /dev/urandom >"$WORK/data"
    # inside a cluster the top lacks (the rest of it comes from the base),
    # across the written and zeroed ranges, and the disk's last bytes
    start_export top.qcow2
    local off
    for off in $((3 * MiB - 700)) $((MiB + 60000)) $((4 * MiB + 100000)) \
               $((SIZE - 200000)); do
      dd if="$WORK/data" of=top.qcow2 bs=200000 seek=$off oflag=seek_bytes \
        conv=notrunc,fsync status=none || fail "$kind: write at $off failed"
      dd if="$WORK/data" of="$WORK/want.raw" bs=200000 seek=$off \
        oflag=seek_bytes conv=notrunc status=none
    done
    cmp top.qcow2 "$WORK/want.raw" || fail "$kind: the view does not read back what was written"
    stop_export
    [ "$(sha "base-$kind")" = "$base_sum" ] || fail "$kind: the base changed"
    run qemu-img check top.qcow2
    assert_success
    qemu-img convert -O raw top.qcow2 "$WORK/got.raw"
    cmp "$WORK/got.raw" "$WORK/want.raw" || fail "$kind: qemu-img reads the top differently"
    qemu-img convert -f "$(qemu_fmt "$kind")" -O raw "base-$kind" "$WORK/base.raw"
    cmp -n $SIZE "$WORK/base.raw" "base-$kind.src" || fail "$kind: the base's disk changed"
  done
}

@test "--probe shows the mixed chain: qcow2 on top, the backing file's format (recorded or probed), its subformat" {
  make_base vdi base.vdi
  make_top base.vdi vdi
  run --separate-stderr "$FDE" --probe top.qcow2
  assert_success
  assert_line "format: qcow2"
  assert_line "backing-file: base.vdi"
  assert_line "backing-format: vdi"
  assert_line "backing:"
  assert_line "  format: vdi"
  assert_line "  virtual-size: $SIZE"
  assert_line "  subformat: dynamic"
  # no recorded format: probed (a fixed VHD by its footer, which QEMU's
  # probe misses; the bytes are the same, as the disk is the file's start)
  make_base vpc-fixed base.vhd
  qemu-img create -q -f qcow2 -b base.vhd -F raw -u top2.qcow2 $SIZE
  # the backing-format extension renamed to an unknown type, which QEMU
  # and we ignore (as owner.bats does): no format recorded
  local type off poke="$PYTHON $FDE_SRCDIR/tests/qcow2-poke.py"
  read -r type off _ < <($poke top2.qcow2 exts)
  [ "$type" = 0xe2792aca ] || fail "no backing format extension in top2.qcow2"
  $poke top2.qcow2 poke "$off" 4 0x0fde0001
  run --separate-stderr "$FDE" --probe top2.qcow2
  assert_success
  assert_line "backing-format: vpc (probed)"
  assert_line "  subformat: fixed"
  qemu-img convert -O raw top2.qcow2 "$WORK/expect.raw" 2>/dev/null
  start_export -r top2.qcow2
  compare_view top2.qcow2 "$WORK/expect.raw"
  stop_export
}

@test "a refused base in a mixed chain: one line naming the top and the base, nothing mounted" {
  make_base vdi base.vdi
  make_top base.vdi vdi
  # a differencing VDI as the base: refused by its own message
  printf '\x04' | dd of=base.vdi bs=1 seek=$((0x4c)) conv=notrunc status=none
  expect_refused top.qcow2 "base.vdi: differencing VDI image: not supported, as its parent is named only by UUID"
  # a backing format recorded as vdi, but the file is a VHD
  make_base vpc base.vhd
  qemu-img create -q -f qcow2 -b base.vhd -F vdi -u wrong.qcow2 $SIZE
  expect_refused wrong.qcow2 "base.vhd.*(signature|not a VDI)"
}

