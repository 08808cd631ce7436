#!/usr/bin/env bats
# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
# I/O errors injected into the read-only backends of issue 12 (VMDK
# sparse, stream and split, VHDX, VHD, VDI, OVA), end to end through the
# daemon with tests/fault-shim.so preloaded (it fails chosen calls on one
# file, matched by device and inode; see tests/fault-shim.c).
#
#  - Opening: a run that only counts gives the K reads of the file that
#    an export makes before it is live; then each of them is failed in
#    turn (EIO): the export must end with exit status 1 and one line
#    naming the image and the error, leave nothing mounted and no pid
#    file, and never crash (under ASan, leak) or hang.
#  - Reading (--no-splice, so that data goes through pread too): with
#    every read of the file failing, a read of the view fails with EIO;
#    with one read failing somewhere in a whole pass, that pass fails;
#    each time, the next pass reads exactly `qemu-img convert -O raw` of
#    the image (nothing half-read is kept: a failed read can be retried),
#    and SIGINT then ends the daemon with exit status 0.
#
# The oracle for contents is qemu-img (convert -O raw of the same image).

load helpers

bats_require_minimum_version 1.5.0

SHIM_SO=${FDE_BUILDDIR:-$FDE_SRCDIR}/tests/fault-shim.so

setup() {
  common_setup
  requires qemu-img
  [ -f "$SHIM_SO" ] ||
    fail "$SHIM_SO is missing: make check builds it (make tests/fault-shim.so)"
  CTL=$WORK/fault.ctl
  LOG=$WORK/fault.log
}

teardown() { common_teardown; }

# make_raw FILE: 3 MiB + 5 sectors: random data in the first and third
# MiB, a hole between, a random tail (sizes that are no multiple of a
# grain or block).
make_raw() {
  truncate -s $((3 * 1024 * 1024 + 2560)) "$1"
  head -c $((1024 * 1024)) /dev/urandom | dd of="$1" conv=notrunc status=none
  head -c $((1024 * 1024 + 2560)) /dev/urandom |
    dd of="$1" bs=1M seek=2 conv=notrunc status=none
}

# shimmed FILE COMMAND...: COMMAND with the shim failing calls on FILE as
# $CTL says (FDE_FAULT_NTH etc. from the environment when no $CTL).
shimmed() {
  local file=$1
  shift
  FDE_FAULT_FILE=$(readlink -f "$file") FDE_FAULT_LOG=$LOG LD_PRELOAD=$SHIM_SO \
    ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0 \
    "$@"
}

# open_faults IMAGE FILE [OPTION]...: fail each read of FILE (IMAGE
# itself or one of its extents) that exporting IMAGE -r -d makes before
# it is live, one per run (see the top of the file).
open_faults() {
  local img=$1 file=$2 k n
  shift 2
  : >"$LOG"
  run --separate-stderr shimmed "$file" env FDE_FAULT_OP=pread FDE_FAULT_NTH=0 \
    timeout -k 2 30 "$FDE" -r -d -p "$WORK/count.pid" "$@" "$img"
  [ "$status" = 0 ] || fail "$img: the counting run failed ($status): $stderr"
  k=$(grep -c pread "$LOG") || true
  kill -INT "$(cat "$WORK/count.pid")"
  wait_pid_gone "$(cat "$WORK/count.pid")" || fail "$img: the daemon did not exit"
  [ "$k" -gt 0 ] || fail "$img: the export read nothing of $file"
  for n in $(seq "$k"); do
    : >"$LOG"
    run --separate-stderr shimmed "$file" env FDE_FAULT_OP=pread FDE_FAULT_NTH=$n \
      FDE_FAULT_ERRNO=EIO timeout -k 2 30 "$FDE" -r -d -p "$WORK/f.pid" "$@" "$img"
    grep -q injected "$LOG" || fail "$img: read $n of $k: no fault injected"
    [ "$status" = 1 ] ||
      fail "$img: read $n of $k failing: exit status $status, want 1: $stderr"
    [ "${#stderr_lines[@]}" = 1 ] ||
      fail "$img: read $n of $k failing: want one line, got: $stderr"
    [[ "$stderr" == *"$img"*"Input/output error"* ]] ||
      fail "$img: read $n of $k failing: the message does not name the image and the error: $stderr"
    [ ! -e "$WORK/f.pid" ] || fail "$img: read $n of $k failing: a pid file was left"
    nothing_mounted || fail "$img: read $n of $k failing: a view was left mounted"
  done
  echo "# $img: $k reads of $(basename "$file") failed in turn" >&3
}

# read_pass VIEW EXPECT: read VIEW whole with O_DIRECT (past the page
# cache, so every pass asks the daemon) and compare with EXPECT.  Prints
# "ok", "differs" or dd's error.
read_pass() {
  local out
  if out=$(dd if="$1" of="$WORK/pass.out" bs=64k iflag=direct status=none 2>&1); then
    cmp -s "$WORK/pass.out" "$2" && echo ok || echo differs
  else
    echo "$out"
  fi
}

# arm SPEC: the shim's control file says SPEC (tests/fault-shim.c).
arm() {
  echo "$1" >"$CTL.tmp" && mv "$CTL.tmp" "$CTL"
}

# read_faults IMAGE FILE EXPECT [OPTION]...: export IMAGE (-r
# --no-splice) with reads of FILE failing as the top of the file says;
# EXPECT is what the view must read.
read_faults() {
  local img=$1 file=$2 expect=$3 got nth
  shift 3
  : >"$CTL"
  : >"$LOG"
  FDE_FAULT_CTL=$CTL shimmed "$file" start_fg -r --no-splice "$@" "$img"
  arm "all pread 1 EIO 0"
  got=$(read_pass "$img" "$expect")
  [[ "$got" == *"Input/output error"* ]] ||
    fail "$img: every read of $file failing: a pass gave '$got', not EIO"
  arm ""
  [ "$(read_pass "$img" "$expect")" = ok ] ||
    fail "$img: the pass after the faults does not read what qemu-img reads"
  for nth in 2 5; do
    arm "one$nth pread $nth EIO 1"
    got=$(read_pass "$img" "$expect")
    grep -q "^one$nth .*injected" "$LOG" ||
      fail "$img: a pass made fewer than $nth reads of $file"
    [[ "$got" == *"Input/output error"* ]] ||
      fail "$img: read $nth of $file failing: the pass gave '$got', not EIO"
    arm ""
    [ "$(read_pass "$img" "$expect")" = ok ] ||
      fail "$img: after read $nth failed, the next pass does not read what qemu-img reads"
  done
  kill -INT "$FG_PID"
  wait_pid_gone "$FG_PID" || fail "$img: the daemon did not exit"
  local st=0
  wait "$FG_PID" || st=$?
  rm -f "$WORK/fg-$FG_PID.pid"
  [ "$st" = 0 ] || fail "$img: exit status $st after SIGINT: $(cat "$WORK/fg.err")"
  nothing_mounted
}

# both IMAGE FILE: open_faults, and read_faults with `qemu-img convert
# -O raw` of IMAGE as what the view must read.
both() {
  open_faults "$1" "$2"
  qemu-img convert -O raw "$1" "$WORK/expect.raw"
  read_faults "$1" "$2" "$WORK/expect.raw"
}

# convert_both FORMAT IMAGE [OPTION]...: IMAGE made by qemu-img convert
# -O FORMAT [OPTION]... from make_raw's data, then both IMAGE IMAGE.
convert_both() {
  local fmt=$1 img=$2
  shift 2
  make_raw src.raw
  qemu-img convert -f raw -O "$fmt" "$@" src.raw "$img"
  both "$img" "$img"
}

@test "VMDK monolithicSparse: a failed read at open refuses the export in one line; failed reads of the view are EIO and can be retried" {
  convert_both vmdk s.vmdk
}

@test "VMDK streamOptimized: the same (compressed grains, the decompressed cache keeps nothing half-read)" {
  convert_both vmdk st.vmdk -o subformat=streamOptimized
}

@test "VMDK twoGbMaxExtentSparse: failed reads of an extent file, at open and while reading" {
  make_raw src.raw
  qemu-img convert -f raw -O vmdk -o subformat=twoGbMaxExtentSparse src.raw sp.vmdk
  [ -f sp-s001.vmdk ] || fail "qemu-img made no sp-s001.vmdk: $(ls)"
  both sp.vmdk sp-s001.vmdk
  open_faults sp.vmdk sp.vmdk
}

@test "VHDX dynamic: the same" {
  convert_both vhdx d.vhdx
}

@test "VHD dynamic: the same" {
  convert_both vpc d.vhd
}

@test "VDI dynamic: the same" {
  convert_both vdi d.vdi
}

@test "OVA with a streamOptimized VMDK: the same, through the archive" {
  make_raw src.raw
  qemu-img convert -f raw -O vmdk -o subformat=streamOptimized src.raw disk1.vmdk
  cat >app.ovf <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"
          xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References><File ovf:id="file1" ovf:href="disk1.vmdk"/></References>
  <DiskSection><Info>disks</Info>
    <Disk ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:capacity="3148288"/>
  </DiskSection>
</Envelope>
EOF
  tar --format=ustar -cf app.ova app.ovf disk1.vmdk
  open_faults app.ova app.ova
  # what the view must read: qemu-img's reading of the member (QEMU
  # itself reads an OVA as raw)
  qemu-img convert -O raw disk1.vmdk "$WORK/member.raw"
  read_faults app.ova app.ova "$WORK/member.raw"
}
