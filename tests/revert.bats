#!/usr/bin/env bats
# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
# The revert: the moment the path shows the image again, the image is
# complete, clean and unlocked; --stop signals the daemon and returns only
# once it has exited, with its verdict; an empty write at the end of the
# disk is answered properly.

load helpers

setup() {
  requires qemu-img
  requires qemu-io
  requires_python
  common_setup
}

teardown() {
  [ -z "${HOLDER:-}" ] || kill "$HOLDER" 2>/dev/null
  common_teardown
}

# random_writes VIEW MODEL N SEED: N writes of 4 KiB of random bytes at
# random 4 KiB-aligned offsets, through VIEW and into MODEL alike; no
# fsync (the revert must make them durable).
random_writes() {
  "$PYTHON" - "$@" <<'PY'
import os, random, sys
view, model, n, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
v = os.open(view, os.O_RDWR)
m = os.open(model, os.O_RDWR)
blocks = os.fstat(v).st_size // 4096
for _ in range(n):
    data = rng.randbytes(4096)
    off = rng.randrange(blocks) * 4096
    if os.pwrite(v, data, off) != 4096 or os.pwrite(m, data, off) != 4096:
        sys.exit("short write")
os.close(v)
os.close(m)
PY
}

# At the moment the mount is gone (polled without sleeping), the image
# must already be complete and clean, and QEMU must be able to open it for
# writing: each check runs at once, before the daemon has exited.
check_at_revert() {
  local img=$1 model=$2 pid=$3 sum
  while is_mounted "$img"; do :; done
  sum=$(sha "$img")
  run qemu-img check "$img"
  [ "$status" = 0 ] || fail "qemu-img check at the revert: $output"
  run qemu-io -f qcow2 -c 'read 0 4k' "$img"
  [ "$status" = 0 ] || fail "qemu-io could not open the image for writing at the revert: $output"
  run qemu-img compare -f qcow2 -F raw "$img" "$model"
  [ "$status" = 0 ] || fail "the image at the revert differs from what was written: $output"
  wait_pid_gone "$pid" || fail "the daemon did not exit"
  [ "$(sha "$img")" = "$sum" ] || fail "the image changed after the path had reverted"
}

@test "SIGINT after 3,000 random writes: the moment the path reverts the image is complete, clean and unlocked" {
  qemu-img create -q -f qcow2 img.qcow2 1G
  truncate -s 1G model
  start_export img.qcow2
  random_writes "$WORK/img.qcow2" "$WORK/model" 3000 1
  kill -INT "$EXPORT_PID"
  check_at_revert "$WORK/img.qcow2" "$WORK/model" "$EXPORT_PID"
  [ ! -e "$EXPORT_PIDFILE" ] || fail "pid file left behind"
}

@test "--stop returns once the daemon has exited and reverted: path, image, locks and pid file at once" {
  qemu-img create -q -f qcow2 img.qcow2 1G
  truncate -s 1G model
  start_export img.qcow2
  random_writes "$WORK/img.qcow2" "$WORK/model" 1000 2
  run "$FDE" --stop="$EXPORT_PIDFILE"
  assert_success
  assert_output ""
  ! alive "$EXPORT_PID" || fail "the daemon is still running after --stop"
  ! is_mounted "$WORK/img.qcow2" || fail "still mounted after --stop"
  [ ! -e "$EXPORT_PIDFILE" ] || fail "pid file left behind"
  run qemu-img check img.qcow2
  assert_success
  run qemu-io -f qcow2 -c 'write -z 0 4k' img.qcow2
  assert_success
  # the write above changed one block of the image: put it in the model
  dd if=/dev/zero of=model bs=4k count=1 conv=notrunc status=none
  run qemu-img compare -f qcow2 -F raw img.qcow2 model
  assert_success
}

@test "--stop waits for a view still in use (up to --stop-timeout), then reports the daemon's exit" {
  truncate -s 16M disk.raw
  start_export -f raw disk.raw
  # a reader keeps the view open: the daemon detaches it lazily and serves
  # it until the reader closes it
  sleep 1000 <"$WORK/disk.raw" &
  HOLDER=$!
  run "$FDE" --stop="$EXPORT_PIDFILE" --stop-timeout=1
  assert_failure 1
  assert_output --partial "still running after 1 s"
  alive "$EXPORT_PID" || fail "the daemon is gone while its view is open"
  kill "$HOLDER"
  wait "$HOLDER" 2>/dev/null || true
  HOLDER=
  wait_pid_gone "$EXPORT_PID" || fail "the daemon did not exit after its last user"
  [ ! -e "$EXPORT_PIDFILE" ] || fail "pid file left behind"
  nothing_mounted
}

@test "--stop reports a failed revert (nonzero, with the daemon's status) from the record the daemon leaves in its pid file" {
  local shim=${FDE_BUILDDIR:-$FDE_SRCDIR}/tests/fault-shim.so
  [ -f "$shim" ] || fail "$shim is missing: make check builds it (make tests/fault-shim.so)"
  qemu-img create -q -f qcow2 img.qcow2 64M
  touch ctl
  # every fdatasync of the image fails once armed: the revert's flushes too
  FDE_FAULT_FILE=$WORK/img.qcow2 FDE_FAULT_CTL=$WORK/ctl LD_PRELOAD=$shim \
    ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0 \
    "$FDE" -dp "$WORK/fde.pid" img.qcow2 3>&- || fail "the export failed"
  local pid
  pid=$(cat fde.pid)
  dd if=/dev/urandom of=img.qcow2 bs=64k count=1 conv=notrunc status=none
  echo "g1 sync 1 EIO 0" >ctl.new && mv ctl.new ctl
  run "$FDE" --stop="$WORK/fde.pid"
  assert_failure 1
  assert_output --partial "daemon $pid did not revert cleanly (exit status 1)"
  ! alive "$pid" || fail "the daemon is still running"
  [ ! -e fde.pid ] || fail "the failure record was not consumed"
  run "$FDE" --stop="$WORK/fde.pid"
  assert_failure 1
  assert_output --partial "no such pid file"
}

@test "--stop refuses a pid file naming another program, and reports a daemon that is gone" {
  sleep 1000 &
  HOLDER=$!
  echo "$HOLDER" >other.pid
  run "$FDE" --stop="$WORK/other.pid"
  assert_failure 1
  assert_output --partial "is not fuse-disk-export"
  alive "$HOLDER" || fail "the other program was signalled"
  kill "$HOLDER"
  wait "$HOLDER" 2>/dev/null || true
  HOLDER=
  # a daemon killed with SIGKILL left its pid file
  run "$FDE" --stop="$WORK/other.pid"
  assert_failure 1
  assert_output --partial "is not running"
  echo garbage >bad.pid
  run "$FDE" --stop="$WORK/bad.pid"
  assert_failure 1
  assert_output --partial "not a fuse-disk-export pid file"
  run "$FDE" --stop="$WORK/bad.pid" img
  assert_failure 2
  run "$FDE" --stop="$WORK/bad.pid" --stop-timeout=-1
  assert_failure 2
}

@test "--stop on a FIFO, a directory or a device refuses at once, naming the problem" {
  mkfifo ff
  run timeout 10 "$FDE" --stop="$WORK/ff" --stop-timeout=1
  assert_failure 1
  assert_output --partial "not a regular file"
  run timeout 10 "$FDE" --stop=/dev/null
  assert_failure 1
  assert_output --partial "not a regular file"
  mkdir d
  run timeout 10 "$FDE" --stop="$WORK/d"
  assert_failure 1
  assert_output --partial "Is a directory"
  refute_output --partial "Input/output error"
}

@test "--stop by a user who may not signal the daemon says so, and leaves it running" {
  requires_root
  requires setpriv
  qemu-img create -q -f qcow2 img.qcow2 16M
  start_export img.qcow2 || fail "the export failed"
  chmod 755 "$WORK"
  run setpriv --reuid=65534 --regid=65534 --clear-groups \
    "$FDE" --stop="$EXPORT_PIDFILE" --stop-timeout=5
  assert_failure 1
  assert_output --partial "cannot signal daemon $EXPORT_PID: Operation not permitted"
  refute_output --partial "stale pid file"
  alive "$EXPORT_PID" || fail "the daemon is gone"
  [ -e "$EXPORT_PIDFILE" ] || fail "the pid file is gone"
  run "$FDE" --stop="$EXPORT_PIDFILE"
  assert_success
}

@test "--stop does not trust a failure record naming a live process that is not fuse-disk-export" {
  sleep 1000 &
  HOLDER=$!
  printf '%s\nrevert-failed 0\n' "$HOLDER" >forged.pid
  run "$FDE" --stop="$WORK/forged.pid"
  assert_failure 1
  assert_output --partial "not a fuse-disk-export pid file"
  refute_output --partial "did not revert cleanly"
  [ -e forged.pid ] || fail "--stop deleted a pid file it did not trust"
  alive "$HOLDER" || fail "the other program was signalled"
}
