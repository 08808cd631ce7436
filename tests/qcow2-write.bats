#!/usr/bin/env bats
# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
# The qcow2 write path: randomized workloads mirrored on a raw model over a
# matrix of image kinds, fio with verification, a crash (SIGKILL) in the
# middle of fsync'd writes, dirty and locked images, a full host file
# system, a file system made on a partition of the view, punch/zero.
#
# After every export the image must pass `qemu-img check`, compare equal
# to the model, and keep its snapshots and backing files unchanged.  The
# workload seeds are fixed per test (FDE_WRITE_SEED adds an offset, to
# explore); a failure names its case, seed and operation index, and
# reproduces with tests/write-workload.py (see tests/write-soak.sh).

load helpers
load qcow2-write-cases

WORKLOAD="$BATS_TEST_DIRNAME/write-workload.py"
WRITER="$BATS_TEST_DIRNAME/fsync-writer.py"
SEED_OFFSET=${FDE_WRITE_SEED:-0}

setup() {
  requires qemu-img
  requires qemu-io
  requires_python
  common_setup
}

# Undo what a test stacked on the views (file systems on loop devices, loop
# devices, a tmpfs holding the image) and stop the exports, in that order.
teardown() {
  if [ -n "${WORK:-}" ]; then
    local m pidf
    undo_stacked_on_views tmpfs
    for pidf in "$WORK"/*.pid "$WORK"/tmpfs/*.pid; do
      [ -f "$pidf" ] || continue
      kill -TERM "$(cat "$pidf")" 2>/dev/null
      wait_gone "$pidf" || true
    done
    # a FUSE connection whose daemon was killed but hangs (see the
    # SIGKILL test): abort it, or the kernel keeps its users waiting
    abort_dead_connections
    for m in $(awk -v w="$WORK/" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo | sort -r); do
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
    done
  fi
  common_teardown
}

# Abort the FUSE connections of the views still mounted below $WORK, each
# proved ours at the moment it is aborted (helpers.bash).
abort_dead_connections() { abort_own_fuse_connections; }

# Is the dirty (bit 0) or corrupt (bit 1) incompatible feature set in the
# qcow2 v3 header of $1?  Prints the low byte of incompatible_features
# (header bytes 72..79, big-endian), or "v2".
incompat_low_byte() {
  "$PYTHON" - "$1" <<'PY'
import struct, sys
h = open(sys.argv[1], "rb").read(80)
v = struct.unpack(">I", h[4:8])[0]
print("v2" if v < 3 else h[79])
PY
}

# After an export: the image is consistent, equals the model, keeps its
# snapshots and backing file, and has neither the dirty nor the corrupt
# bit set.  $1 names the case for messages.
check_image() {
  run qemu-img check img.qcow2
  [ "$status" = 0 ] || fail "$1: qemu-img check exited $status:
$output"
  run qemu-img compare -f qcow2 -F raw img.qcow2 model
  [ "$status" = 0 ] || fail "$1: the image differs from the model (exit $status): $output"
  record_state state.after
  run diff state.before state.after
  [ "$status" = 0 ] || fail "$1: snapshots or backing file changed:
$output"
  local b
  b=$(incompat_low_byte img.qcow2)
  [ "$b" = v2 ] || [ $((b & 3)) = 0 ] ||
    fail "$1: incompatible features low byte is $b after the revert (dirty/corrupt)"
}

# run_case NAME SEED OPS: build the image, take the model, then two export
# sessions (the second reuses clusters the first freed), each running the
# workload and checked afterwards.
run_case() {
  local name=$1 seed=$(($2 + SEED_OFFSET)) ops=$3 session s n
  make_case "$name" || fail "cannot build the $name image"
  run qemu-img check img.qcow2
  [ "$status" = 0 ] || fail "the $name image is bad before the test: $output"
  record_state state.before
  qemu-img convert -O raw img.qcow2 model
  for session in 1 2; do
    run_session "$name" "$session" $((seed + session - 1)) \
      $((session == 1 ? ops : ops / 2))
  done
}

# run_session NAME SESSION SEED OPS [START]: export img.qcow2 (by the
# function START, default start_export), run OPS operations of the
# workload from SEED on the view and the model, stop, check the image.
run_session() {
  local name=$1 session=$2 s=$3 n=$4 start=${5:-start_export}
  "$start" img.qcow2 || fail "$name: export (session $session) failed"
  run "$PYTHON" "$WORKLOAD" "$WORK/img.qcow2" "$WORK/model" "$n" "$s"
  [ "$status" = 0 ] ||
    fail "$name session $session: write-workload.py VIEW MODEL $n $s failed: $output"
  stop_export || fail "$name session $session: the export did not stop"
  wait_unmounted "$WORK/img.qcow2"
  check_image "$name (session $session, seed $s, $n ops)"
}

# --- 2. the matrix ----------------------------------------------------------

@test "workload: empty image" { run_case empty 101 300; }
@test "workload: fully allocated image" { run_case full 102 300; }
@test "workload: preallocation=metadata" { run_case prealloc-metadata 103 300; }
@test "workload: v2 (compat=0.10) with 4 KiB clusters" { run_case v2-4k 104 300; }
@test "workload: 512-byte clusters" { run_case c512 105 300; }
@test "workload: 2 MiB clusters" { run_case c2m 106 300; }
@test "workload: zlib-compressed clusters" { run_case zlib 107 300; }
@test "workload: zstd-compressed clusters" { run_case zstd 108 300; }
@test "workload: refcount_bits=1" { run_case refcount1 109 300; }
@test "workload: refcount_bits=64" { run_case refcount64 110 300; }
@test "workload: lazy_refcounts=on" { run_case lazy 111 300; }
@test "workload: extended_l2=on with partial and zero subclusters" { run_case extl2 112 300; }
@test "workload: extended_l2=on over a backing file" { run_case extl2-backing 113 300; }
@test "workload: internal snapshots stay intact" { run_case snapshot 114 300; }
@test "workload: top of a backing chain; the base stays byte-identical" { run_case chain 115 300; }
@test "workload: v2 backing chain" { run_case chain-v2 116 300; }
@test "workload: backing file shorter than the top" { run_case chain-short-base 117 300; }
@test "workload: size not a cluster multiple" { run_case odd-size 118 300; }

# --- 3. fio -------------------------------------------------------------------

@test "fio randwrite with crc32c verification: 2 jobs x iodepth 16, then small blocks in shared clusters" {
  requires fio
  qemu-img create -q -f qcow2 img.qcow2 256M
  start_export img.qcow2
  # disjoint 96 MiB regions, blocks of 4..256 KiB
  run fio --name=big --filename="$WORK/img.qcow2" --rw=randwrite \
    --bsrange=4k-256k --ioengine=libaio --direct=1 --iodepth=16 \
    --numjobs=2 --size=96M --offset_increment=128M \
    --verify=crc32c --do_verify=1 --verify_fatal=1 --group_reporting
  [ "$status" = 0 ] || fail "fio (4k-256k) failed: $output"
  assert_output --regexp "err= *0"
  refute_output --partial "verify: bad"
  # 512 B..16 KiB blocks: many writes in flight inside one cluster, over
  # the data the first job left (in-place rewrites) and over the 32 MiB
  # it did not touch (allocation races)
  run fio --name=small --filename="$WORK/img.qcow2" --rw=randwrite \
    --bsrange=512-16k --blockalign=512 --ioengine=libaio --direct=1 \
    --iodepth=32 --numjobs=4 --size=6M --offset_increment=33M \
    --offset=93M --verify=crc32c --do_verify=1 --verify_fatal=1 \
    --group_reporting
  [ "$status" = 0 ] || fail "fio (512-16k) failed: $output"
  assert_output --regexp "err= *0"
  stop_export
  wait_unmounted "$WORK/img.qcow2"
  run qemu-img check img.qcow2
  [ "$status" = 0 ] || fail "qemu-img check after fio exited $status: $output"
}

# --- 4. SIGKILL during fsync'd writes ---------------------------------------

@test "SIGKILL mid-run: every block acknowledged by fsync is intact, check finds leaks at most" {
  qemu-img create -q -f qcow2 img.qcow2 256M
  start_export img.qcow2
  local seed=$((401 + SEED_OFFSET)) writer hung=
  "$PYTHON" "$WRITER" write "$WORK/img.qcow2" "$WORK/acks" "$seed" \
    >"$WORK/writer.out" 2>&1 3>&- &
  writer=$!
  # let it write for a while
  sleep 1.5
  [ -s "$WORK/acks" ] || fail "no batch acknowledged after 1.5 s: $(cat "$WORK/writer.out")"
  kill -9 "$EXPORT_PID"
  local i
  for i in $(seq 50); do
    alive "$EXPORT_PID" || break
    sleep 0.1
  done
  if alive "$EXPORT_PID"; then
    hung="the daemon did not exit within 5 s of SIGKILL (threads: $(for t in /proc/"$EXPORT_PID"/task/*; do echo -n "$(basename "$t"):$(awk '/^State:/ {print $2}' "$t/status"):$(cat "$t/wchan") "; done))"
    # get on with the data checks: end the connection by hand
    abort_dead_connections
    wait_pid_gone "$EXPORT_PID" || true
  fi
  # the writer must stop with an error, not hang
  for i in $(seq 100); do
    kill -0 "$writer" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$writer" 2>/dev/null; then
    abort_dead_connections
    kill -9 "$writer" 2>/dev/null
    fail "the writer hung after the daemon was killed${hung:+; $hung}"
  fi
  wait "$writer" || true
  run cat "$WORK/writer.out"
  assert_output --partial "stopped after"
  # clear the dead mount
  fusermount3 -u "$WORK/img.qcow2" 2>/dev/null || umount -l "$WORK/img.qcow2"
  wait_unmounted "$WORK/img.qcow2"
  rm -f "$EXPORT_PIDFILE"
  run timeout 30 qemu-img check img.qcow2
  [ "$status" = 0 ] || [ "$status" = 3 ] ||
    fail "qemu-img check after SIGKILL exited $status (0 or 3 = leaks only allowed):
$output"
  qemu-img convert -O raw img.qcow2 disk.raw
  run "$PYTHON" "$WRITER" verify disk.raw "$WORK/acks" "$seed"
  [ "$status" = 0 ] || fail "after SIGKILL: $output"
  [ -z "$hung" ] || fail "$hung"
}

# --- 5. a dirty image -------------------------------------------------------

@test "a dirty image is refused for writing, exported with -r, writable after qemu-img check -r all" {
  qemu-img create -q -f qcow2 -o lazy_refcounts=on img.qcow2 16M
  # qemu-io dies by SIGKILL after a write with lazy refcounts: dirty bit set
  qemu-io -c 'write -P 0x5c 0 1M' -c 'sigraise 9' img.qcow2 >/dev/null 2>&1 || true
  [ "$(incompat_low_byte img.qcow2)" = 1 ] ||
    fail "setup: the dirty bit is not set ($(incompat_low_byte img.qcow2))"
  local sum
  sum=$(sha img.qcow2)
  run "$FDE" -dp "$WORK/fde-x.pid" img.qcow2 3>&-
  assert_failure 3
  assert_output --partial "image is dirty, open with -r or run qemu-img check -r all"
  [ "$(sha img.qcow2)" = "$sum" ] || fail "the refused open changed the image"
  nothing_mounted
  # read-only works and reads the data
  start_export -r img.qcow2
  run "$PYTHON" -c '
import sys
d = open(sys.argv[1], "rb").read(2 << 20)
sys.exit(0 if d[:1 << 20] == b"\x5c" * (1 << 20) and d[1 << 20:] == bytes(1 << 20) else 1)' "$WORK/img.qcow2"
  [ "$status" = 0 ] || fail "the read-only view of the dirty image reads wrong data"
  stop_export
  [ "$(sha img.qcow2)" = "$sum" ] || fail "the read-only export changed the dirty image"
  # repaired, it exports writable and stays clean
  qemu-img check -q -r all img.qcow2 >/dev/null
  [ "$(incompat_low_byte img.qcow2)" = 0 ] || fail "still dirty after qemu-img check -r all"
  qemu-img convert -O raw img.qcow2 model
  record_state state.before
  start_export img.qcow2
  run "$PYTHON" "$WORKLOAD" "$WORK/img.qcow2" "$WORK/model" 200 $((501 + SEED_OFFSET))
  [ "$status" = 0 ] || fail "workload on the repaired image: $output"
  stop_export
  wait_unmounted "$WORK/img.qcow2"
  check_image "repaired dirty image"
}

# --- 6. locking ---------------------------------------------------------------

@test "locks: refused while qemu-io writes the image; while exported, qemu-io writes the view as a raw disk, the data lands in the image" {
  qemu-img create -q -f qcow2 img.qcow2 16M
  qemu-io -f qcow2 -c 'sleep 100000' img.qcow2 >/dev/null 2>&1 3>&- &
  local qio_pid=$! ino i
  echo "$qio_pid" >"$WORK/qemu-io.pid"
  ino=$(stat -c %i img.qcow2)
  # wait until qemu-io holds its locks
  for i in $(seq 100); do
    grep -q ":$ino " /proc/locks && break
    sleep 0.05
  done
  run "$FDE" -dp "$WORK/fde-x.pid" img.qcow2 3>&-
  assert_failure 3
  assert_output --partial "in use"
  nothing_mounted
  kill "$qio_pid"
  wait "$qio_pid" 2>/dev/null || true
  rm -f "$WORK/qemu-io.pid"
  start_export img.qcow2
  # the view has no lock bytes of its own (iotest 308's writable export):
  # every write through it goes through the daemon
  run qemu-io -f raw -c 'write -P 0x42 0 64k' img.qcow2
  assert_success
  refute_output --partial "lock"
  run qemu-io -r -f raw -c 'read -P 0x42 0 64k' img.qcow2
  assert_success
  refute_output --partial "Pattern verification failed"
  printf 'through the view' | dd of=img.qcow2 bs=1 seek=65536 conv=notrunc status=none
  stop_export
  wait_unmounted "$WORK/img.qcow2"
  run qemu-io -f qcow2 -c "read -P 0x42 0 64k" -c "read -v 65536 16" img.qcow2
  assert_success
  refute_output --partial "Pattern verification failed"
  assert_output --partial "through.the.view"
  run qemu-img check img.qcow2
  assert_success
}

# --- 6b. copy-on-write by copy_file_range, and without it -------------------

# The calls the daemon made on img.qcow2 (the fault shim's log, nothing
# armed): copy_file_range lines with their result, "-18" for EXDEV.
copies_in_log() { awk '$4 == "copy_file_range" { print $7 }' "$1"; }

# start_export with the fault shim logging the daemon's calls on the image
# to $CALLS_LOG (nothing armed)
start_export_logged() {
  FDE_FAULT_FILE=$(readlink -f "$1") FDE_FAULT_LOG=$CALLS_LOG \
    LD_PRELOAD=${FDE_BUILDDIR:-$FDE_SRCDIR}/tests/fault-shim.so \
    ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0 \
    start_export "$@"
}

# A tmpfs of size $1 at $WORK/tmpfs (teardown unmounts it): a file system
# small enough to fill, or one the kernel will not copy across.
small_tmpfs() {
  mkdir "$WORK/tmpfs"
  mount -t tmpfs -o "size=$1" fdetmpfs "$WORK/tmpfs" || skip "cannot mount a tmpfs"
}

@test "workload: copy-on-write copies from the backing file with copy_file_range on one file system, and reads and writes when the backing file is on another (EXDEV)" {
  requires_root
  local shim=${FDE_BUILDDIR:-$FDE_SRCDIR}/tests/fault-shim.so session
  [ -f "$shim" ] || skip "no $shim (built by make check)"
  make_case chain || fail "cannot build the chain image"
  small_tmpfs 64M
  record_state state.before
  qemu-img convert -O raw img.qcow2 model
  for session in 1 2; do
    if [ "$session" = 2 ]; then
      # the same base, now on the tmpfs: the kernel will not copy across
      mv base.qcow2 tmpfs/base.qcow2
      ln -s tmpfs/base.qcow2 base.qcow2          # for record_state
      qemu-img rebase -u -b tmpfs/base.qcow2 -F qcow2 img.qcow2
    fi
    CALLS_LOG=$WORK/calls-$session.log
    : >"$CALLS_LOG"
    run_session "backing on file system $session" "$session" \
      $((150 + SEED_OFFSET + session)) $((session == 1 ? 300 : 150)) \
      start_export_logged
  done
  # session 1: the kernel copied (positive results), never refused
  copies_in_log calls-1.log | grep -qE '^[1-9]' ||
    fail "session 1 made no copy_file_range: $(head -c 600 calls-1.log)"
  ! copies_in_log calls-1.log | grep -q '^-' ||
    fail "a copy_file_range failed in session 1: $(grep copy_file_range calls-1.log | grep ' -' | head -3)"
  # session 2: refused once (EXDEV), then never tried again; still correct
  [ "$(copies_in_log calls-2.log | tr '\n' ' ')" = "-18 " ] ||
    fail "session 2's copy_file_range results: $(copies_in_log calls-2.log | sort | uniq -c)"
}

# --- 7. the host file system fills up ---------------------------------------

@test "ENOSPC from the host file system reaches the writer; the daemon lives on; fsync'd data survives; the image stays consistent" {
  requires_root
  small_tmpfs 24M
  cd tmpfs
  qemu-img create -q -f qcow2 img.qcow2 64M
  start_export img.qcow2
  # acknowledged before the file system fills up: must survive
  "$PYTHON" -c '
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
os.pwrite(fd, b"\xab" * (2 << 20), 0)
os.pwrite(fd, b"\xcd" * (1 << 20) + b"\xce" * 1000, 50 << 20)
os.fsync(fd)' "$WORK/tmpfs/img.qcow2"
  run dd if=/dev/urandom of=img.qcow2 bs=1M seek=3 count=61 conv=notrunc,fsync
  assert_failure
  assert_output --partial "No space left on device"
  alive "$EXPORT_PID" || fail "the daemon died on ENOSPC"
  # reads still work: every byte of the disk can be read
  run "$PYTHON" -c '
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
size = os.lseek(fd, 0, os.SEEK_END)
n = sum(len(os.pread(fd, 1 << 20, p)) for p in range(0, size, 1 << 20))
assert n == size, (n, size)
assert os.pread(fd, 2 << 20, 0) == b"\xab" * (2 << 20), "data at 0"
print("read", n)' "$WORK/tmpfs/img.qcow2"
  assert_success
  kill -0 "$EXPORT_PID" || fail "the daemon died after ENOSPC"
  # an ordinary reader (dd checks close) should succeed too: closing a
  # read-only descriptor should not report the writers' ENOSPC (checked
  # at the end, after the image checks)
  local reader_err=
  run dd if=img.qcow2 of=/dev/null bs=1M
  [ "$status" = 0 ] || reader_err="reading the view after ENOSPC failed: $output"
  stop_export
  wait_unmounted "$WORK/tmpfs/img.qcow2"
  run qemu-img check img.qcow2
  [ "$status" = 0 ] || [ "$status" = 3 ] ||
    fail "qemu-img check after ENOSPC exited $status:
$output"
  run qemu-io -f qcow2 -c 'read -P 0xab 0 2M' -c 'read -P 0xcd 50M 1M' \
    -c 'read -P 0xce 51M 1000' img.qcow2
  assert_success
  refute_output --partial "verification failed"
  cd "$WORK"
  run qemu-img convert -O raw tmpfs/img.qcow2 after.raw
  assert_success
  umount "$WORK/tmpfs"
  [ -z "$reader_err" ] || fail "$reader_err"
}

# --- 8. the seed example ------------------------------------------------------

@test "parted + losetup --direct-io=on (as the README advises) + mkfs.ext4 on the qcow2 view; the file reads back via -r export and via qemu-img convert" {
  requires_root
  requires parted
  requires losetup
  requires mkfs.ext4
  requires sfdisk
  qemu-img create -q -f qcow2 disk.qcow2 256M
  start_export disk.qcow2
  run parted -s disk.qcow2 mklabel msdos mkpart primary ext4 1MiB 100%
  assert_success
  local start size dev
  read -r start size < <(sfdisk -d disk.qcow2 | awk -F'[=,]' '/^disk.qcow2p?1 :/ { gsub(/ /, ""); print $2, $4 }')
  [ "$start" = 2048 ] || fail "partition 1 starts at sector '$start': $(sfdisk -d disk.qcow2)"
  dev=$(losetup -o $((start * 512)) --sizelimit $((size * 512)) --direct-io=on \
    -f --show disk.qcow2) || fail "losetup on the view failed"
  # losetup falls back to buffered I/O, silently, where the file refuses it
  [ "$(cat "/sys/block/${dev#/dev/}/loop/dio")" = 1 ] ||
    { losetup -d "$dev"; fail "$dev does not do direct I/O on the view"; }
  run mkfs.ext4 -q -F "$dev"
  assert_success
  mkdir mnt
  mount "$dev" mnt || fail "cannot mount the new file system"
  "$PYTHON" -c 'import random,sys; sys.stdout.buffer.write(random.Random(8).randbytes(5 << 20))' >payload
  cp payload mnt/payload
  echo hello >mnt/hello
  umount mnt
  losetup -d "$dev"
  stop_export
  wait_unmounted "$WORK/disk.qcow2"
  run qemu-img check disk.qcow2
  assert_success
  # (a) through a fresh read-only export
  start_export -r disk.qcow2
  dev=$(losetup -r -o $((start * 512)) --sizelimit $((size * 512)) -f --show disk.qcow2)
  mount -o ro "$dev" mnt || fail "cannot mount the file system through a -r export"
  cmp payload mnt/payload || fail "payload differs through the -r export"
  [ "$(cat mnt/hello)" = hello ]
  umount mnt
  losetup -d "$dev"
  stop_export
  wait_unmounted "$WORK/disk.qcow2"
  # (b) through QEMU's own reading of the image
  qemu-img convert -O raw disk.qcow2 disk.raw
  dev=$(losetup -r -o $((start * 512)) --sizelimit $((size * 512)) -f --show disk.raw)
  mount -o ro "$dev" mnt || fail "cannot mount the file system from qemu-img convert's output"
  cmp payload mnt/payload || fail "payload differs in qemu-img convert's output"
  umount mnt
  losetup -d "$dev"
  run qemu-img check disk.qcow2
  assert_success
}

# --- 9. punch, zero, the end, read-only ------------------------------------

@test "punch-hole and zero-range on a qcow2 view read back zeros at once and after the revert, also over a backing file and compressed clusters" {
  requires fallocate
  qemu-img create -q -f qcow2 base.qcow2 8M
  qio -c 'write -P 0xba 0 8M' base.qcow2
  deterministic_raw src.raw 8
  qemu-img convert -c -O qcow2 -B base.qcow2 -F qcow2 src.raw img.qcow2 2>/dev/null ||
    { qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 img.qcow2
      qio -c 'write -c -P 0x33 0 1M' img.qcow2; }
  qio -c 'write -P 0x5a 2M 2M' -c 'write -P 0x5b 6149k 100k' img.qcow2
  record_state state.before
  qemu-img convert -O raw img.qcow2 model
  start_export img.qcow2
  local spec off len mode
  # offset length mode: partial clusters, whole clusters, spans, over
  # compressed data, over backing-only data, straddling the end
  for spec in "100 1000 p" "65536 65536 p" "70000 200000 z" "2M+3 64k p" \
              "3M 1M z" "6M+4k 8k p" "6M+64k 128k z" "7M+12345 1M p" \
              "1M+512 512 z" "5M 4k p"; do
    read -r off len mode <<<"$spec"
    off=${off//M/*1048576}; off=$((${off//k/*1024}))
    len=${len//M/*1048576}; len=$((${len//k/*1024}))
    if [ "$mode" = p ]; then
      fallocate --punch-hole --keep-size -o "$off" -l "$len" img.qcow2
    else
      fallocate --zero-range -o "$off" -l "$len" img.qcow2
    fi || fail "fallocate $spec failed"
    [ $((off + len)) -le $((8 << 20)) ] || len=$(((8 << 20) - off))
    "$PYTHON" -c 'import os,sys; fd=os.open("model",os.O_RDWR); os.pwrite(fd, bytes(int(sys.argv[2])), int(sys.argv[1]))' "$off" "$len"
    run "$PYTHON" -c 'import os,sys; fd=os.open(sys.argv[1],os.O_RDONLY); d=os.pread(fd,int(sys.argv[3]),int(sys.argv[2])); sys.exit(0 if d==bytes(len(d)) and len(d)==int(sys.argv[3]) else 1)' "$WORK/img.qcow2" "$off" "$len"
    [ "$status" = 0 ] || fail "range $spec does not read back as zeros at once"
  done
  cmp img.qcow2 model || fail "the view differs from the model before the revert"
  stop_export
  wait_unmounted "$WORK/img.qcow2"
  check_image "punch/zero"
}

@test "overwriting 80,000 compressed 512-byte clusters (more frees than wait for a flush) ends consistent, the freed space punched" {
  # Each overwritten compressed cluster drops a reference; past
  # QCOW2_MAX_DEFERRED_FREES (65536) pending drops the daemon flushes on its
  # own, in the middle of the stream.
  deterministic_raw src.raw 64
  qemu-img convert -c -O qcow2 -o cluster_size=512,compression_type=zstd src.raw img.qcow2
  record_state state.before
  deterministic_raw model 64
  "$PYTHON" -c 'import sys; d=bytearray(open(sys.argv[1],"rb").read()); d=bytes(b ^ 0x5a for b in d); open(sys.argv[1],"wb").write(d)' model
  start_export img.qcow2
  dd if=model of=img.qcow2 bs=1M conv=notrunc status=none || fail "the overwrite failed"
  cmp img.qcow2 model || fail "the view differs from what was written"
  stop_export
  wait_unmounted "$WORK/img.qcow2"
  check_image "80,000 compressed clusters overwritten"
  # 64 MiB of new data; the old compressed data (~34 MiB) must be gone
  local used
  used=$(($(stat -c %b img.qcow2) * 512))
  [ "$used" -lt $((74 << 20)) ] ||
    fail "the image uses $used bytes for 64 MiB of data: freed clusters were not punched"
}

@test "writes past the end get ENOSPC, a write across the end is cut short; -r refuses writes and leaves the image byte-identical" {
  qemu-img create -q -f qcow2 img.qcow2 $((4 * 1048576 + 512))
  start_export img.qcow2
  run dd if=/dev/zero of=img.qcow2 bs=512 seek=$((8193)) count=1 conv=notrunc
  assert_failure
  assert_output --partial "No space left on device"
  run "$PYTHON" -c '
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
size = os.lseek(fd, 0, os.SEEK_END)
n = os.pwrite(fd, b"\xee" * 4096, size - 100)
assert n == 100, n
assert os.pread(fd, 200, size - 150) == bytes(50) + b"\xee" * 100, "tail"
os.fsync(fd)' "$WORK/img.qcow2"
  assert_success
  stop_export
  wait_unmounted "$WORK/img.qcow2"
  run qemu-io -f qcow2 -c "read -P 0xee $((4 * 1048576 + 412)) 100" -c "read -P 0 $((4 * 1048576 + 362)) 50" img.qcow2
  assert_success
  refute_output --partial "verification failed"
  run qemu-img check img.qcow2
  assert_success
  # read-only
  local sum
  sum=$(sha img.qcow2)
  start_export -r img.qcow2
  run dd if=/dev/zero of=img.qcow2 bs=512 count=1 conv=notrunc
  assert_failure
  assert_output --partial "Read-only file system"
  run fallocate --punch-hole --keep-size -o 0 -l 65536 img.qcow2
  assert_failure
  run "$PYTHON" -c 'import os, sys; os.open(sys.argv[1], os.O_WRONLY)' "$WORK/img.qcow2"
  assert_failure
  # reads work: zeros, then the tail written above
  cmp -n $((4 << 20)) img.qcow2 /dev/zero || fail "the -r view reads wrong data"
  stop_export
  wait_unmounted "$WORK/img.qcow2"
  [ "$(sha img.qcow2)" = "$sum" ] || fail "the -r export changed the image"
}

# A backing file can shrink under the view: its owner truncates it.  QEMU
# reads zeros past a file's end; so must the view (a read must not come
# back short, which the kernel takes for the end of the disk), and the
# copy-on-write around a write must take those zeros, not fail.
@test "a backing file truncated under the view: the view keeps its size and reads zeros past the new end, as QEMU; writes copy those zeros; check clean" {
  qemu-img create -q -f qcow2 base.qcow2 8M
  qemu-io -c 'write -P 0x33 0 8M' base.qcow2 >/dev/null
  qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
  start_export top.qcow2
  truncate -s 1M base.qcow2
  dd if=top.qcow2 of=before.raw bs=1M status=none ||
    fail "reading the view after the truncation failed"
  [ "$(stat -c %s before.raw)" = 8388608 ] ||
    fail "the view read $(stat -c %s before.raw) bytes, not 8 MiB"
  "$PYTHON" - top.qcow2 <<'PY' || fail "a write over the truncated backing file failed"
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
os.pwrite(fd, b"\x5a" * 512, 6 << 20)            # copies the rest of its cluster
os.pwrite(fd, b"\x6b" * 4096, (5 << 20) + 8192)
os.pwrite(fd, b"\x7c" * 65536, 4 << 20)          # a whole cluster
os.fsync(fd)
os.close(fd)
PY
  dd if=top.qcow2 of=after.raw bs=1M status=none
  [ "$(stat -c %s top.qcow2)" = 8388608 ] || fail "the view's size changed"
  stop_export
  run qemu-img check top.qcow2
  [ "$status" = 0 ] || fail "qemu-img check: $output"
  qemu-img convert -f qcow2 -O raw top.qcow2 qemu.raw
  cmp after.raw qemu.raw || fail "the view differs from QEMU's reading of the same files"
  # what nobody wrote reads as QEMU reads it, before the writes too
  cmp <(head -c $((4 << 20)) before.raw) <(head -c $((4 << 20)) qemu.raw) ||
    fail "before the writes the view differed from QEMU"
  [ "$(od -An -tx1 -j $((6 << 20)) -N 2 after.raw | tr -d ' ')" = 5a5a ] ||
    fail "the write at 6 MiB is not there"
  [ "$(od -An -tx1 -j $((6 << 20 | 512)) -N 2 after.raw | tr -d ' ')" = 0000 ] ||
    fail "copy-on-write past the backing file's end did not give zeros"
}

# far_refcount IMG CLUSTER [COUNT]: clusters CLUSTER, CLUSTER+2, ... (COUNT
# of them, default 1; past the end of the file) get a refcount of 1 that
# nothing references -- a leak, or a hostile image's trap -- in the first
# refblock, or in a new one appended to IMG.
far_refcount() {
  "$PYTHON" - "$1" "$2" "${3:-1}" <<'PY'
import sys
path, far, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
d = bytearray(open(path, "rb").read())
be = lambda o, n: int.from_bytes(d[o:o + n], "big")
put = lambda o, n, v: d.__setitem__(slice(o, o + n), v.to_bytes(n, "big"))
cs, rt, width = 1 << be(20, 4), be(48, 8), (1 << be(96, 4)) // 8
rbe, end, rb0 = cs // width, len(d), be(rt, 8)
assert end % cs == 0 and width == 2 and rb0 and far > end // cs
if far // rbe == 0:
    assert (far + 2 * count) // rbe == 0
    for k in range(count):
        put(rb0 + 2 * (far + 2 * k), 2, 1)
else:
    assert count == 1
    d += bytearray(cs)                                # the new refblock
    put(rb0 + 2 * (end // cs), 2, 1)
    put(rt + 8 * (far // rbe), 8, end)
    put(end + 2 * (far % rbe), 2, 1)
open(path, "wb").write(d)
PY
}

# QEMU allocates from the first free cluster; a refcount far past the end
# made us append there (a 2.5 MB image became a 1 TiB sparse file, or
# writes failed with EFBIG).  Appending now starts at the end of the file
# and steps over clusters past it that have a refcount.
@test "a refcount past the end of the file (a leak; hostile) does not move new clusters there: the file grows as qemu-io grows it, data as qemu-io writes it, check clean" {
  local far cs=65536 count
  # one far away; one just past the end; every other cluster past the end
  # (a gap to allocate between each two)
  for far in $((1 << 24)) next every-other; do
    rm -f img.qcow2 q.qcow2
    qemu-img create -q -f qcow2 -o cluster_size=$cs img.qcow2 64M
    qemu-io -c 'write -P 1 0 1M' img.qcow2 >/dev/null
    count=1
    [ "$far" = every-other ] && count=2000
    [ "$far" = next ] || [ "$far" = every-other ] &&
      far=$(( $(stat -c %s img.qcow2) / cs + 1 ))
    far_refcount img.qcow2 "$far" "$count"
    cp img.qcow2 q.qcow2
    qemu-io -c 'write -P 0x2e 8M 192k' -c 'write -P 0x3f 40M 4k' q.qcow2 >/dev/null
    start_export img.qcow2
    "$PYTHON" -c '
import os
fd = os.open("img.qcow2", os.O_WRONLY)
os.pwrite(fd, b"\x2e" * (192 << 10), 8 << 20)
os.pwrite(fd, b"\x3f" * 4096, 40 << 20)
os.fsync(fd)' || fail "far=$far: a write failed"
    stop_export
    run qemu-img check img.qcow2
    { [ "$status" = 0 ] || [ "$status" = 3 ]; } && [[ "$output" != *ERROR* ]] ||
      fail "far=$far: qemu-img check: $output"
    run qemu-img compare img.qcow2 q.qcow2
    [ "$status" = 0 ] || fail "far=$far: not what qemu-io wrote: $output"
    [ "$(stat -c %s img.qcow2)" -le $(( $(stat -c %s q.qcow2) + 2 * cs )) ] ||
      fail "far=$far: the file is $(stat -c %s img.qcow2) bytes, qemu-io's $(stat -c %s q.qcow2)"
  done
}

# data_bytes FILE: the bytes of FILE that SEEK_DATA/SEEK_HOLE call data
# (blocks allocated by fallocate and never written are holes to it on
# ext4 and XFS, unless their zeros were read into the page cache: the
# file's clean pages are dropped first)
data_bytes() {
  "$PYTHON" - "$1" <<'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
os.fdatasync(fd)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
end, pos, data = os.lseek(fd, 0, os.SEEK_END), 0, 0
while pos < end:
    try:
        start = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError:
        break
    pos = os.lseek(fd, start, os.SEEK_HOLE)
    data += pos - start
print(data)
PY
}

# A new cluster over zeros (a new image; unallocated or zero clusters over
# a backing file with nothing there) was filled whole: 60 KiB of zeros
# copied for a 4 KiB write.  Clusters appended past the end of the file
# are allocated as zeros instead (fallocate) and only the request's bytes
# written, as QEMU zeroes them (handle_alloc_space); over data (the
# backing file's) it still copies.
@test "allocating writes over zeros (a new image; holes of a backing file) write only their bytes, the rest allocated as zeros: the view and qemu-img read what was written, check clean" {
  local img falloc_is_hole
  fallocate -l 1M probe 2>/dev/null && [ "$(data_bytes probe)" = 0 ] &&
    falloc_is_hole=1
  qemu-img create -q -f qcow2 -o cluster_size=65536 new.qcow2 64M
  qemu-img create -q -f qcow2 base.qcow2 64M
  qemu-io -c 'write -P 0x11 0 1M' -c 'write -z 2M 64k' base.qcow2 >/dev/null
  qemu-img create -q -f qcow2 -o cluster_size=65536 -b base.qcow2 -F qcow2 top.qcow2
  # a raw backing file's holes are what lseek says, not what tables say:
  # copied, as QEMU copies them (bdrv_is_allocated_above)
  truncate -s 64M base.raw
  qemu-img create -q -f qcow2 -o cluster_size=65536 -b base.raw -F raw rawtop.qcow2
  for img in new top rawtop; do
    qemu-img convert -f qcow2 -O raw $img.qcow2 model.raw
    start_export $img.qcow2
    "$PYTHON" - $img.qcow2 model.raw <<'PY' || fail "$img: writing the view failed"
import os, random, sys
view = os.open(sys.argv[1], os.O_RDWR)
model = os.open(sys.argv[2], os.O_RDWR)
rnd = random.Random(13)
cs = 65536
# a 4 KiB write inside each of 200 clusters in shuffled order (those of
# the first MiB are over the backing file's data), then one at the head
# of the disk's last cluster, the last cluster of the file
clusters = list(range(200))
rnd.shuffle(clusters)
for k, c in enumerate(clusters + [1023]):
    off = c * cs + (0 if c == 1023 else rnd.randrange(16) * 4096)
    data = bytes([(k * 7 + i) % 251 + 1 for i in range(4096)])
    os.pwrite(view, data, off)
    os.pwrite(model, data, off)
os.fsync(view)
PY
    cmp $img.qcow2 model.raw || fail "$img: the view differs from the model"
    stop_export
    run qemu-img check $img.qcow2
    [ "$status" = 0 ] || fail "$img: qemu-img check: $output"
    run qemu-img compare -f qcow2 -F raw $img.qcow2 model.raw
    [ "$status" = 0 ] || fail "$img: qemu-img reads otherwise: $output"
    # 201 clusters with 4 KiB each, 16 of them copied from the backing
    # file's data (1 MiB): zeros written would make 12.6 MiB of data
    [ -z "$falloc_is_hole" ] || [ $img = rawtop ] ||
      [ "$(data_bytes $img.qcow2)" -lt $(( 4 << 20 )) ] ||
      fail "$img: $(data_bytes $img.qcow2) bytes of data: zeros were written"
    [ $img != rawtop ] || [ "$(data_bytes $img.qcow2)" -ge $(( 201 << 16 )) ] ||
      fail "$img: $(data_bytes $img.qcow2) bytes of data: a raw file's holes were trusted"
  done
}

# Leaving the zeros as holes of the file instead would let a later write
# into a cluster the guest has written fail for lack of space, where
# QEMU's cannot (review finding).
@test "a write inside a cluster written before succeeds on a full host file system: the zeros around the first write took their blocks" {
  requires_root
  small_tmpfs 16M
  cd tmpfs
  qemu-img create -q -f qcow2 img.qcow2 64M
  cp img.qcow2 q.qcow2
  start_export img.qcow2
  # zeros after the write in its cluster; and (from cluster 100) zeros
  # before it, in the first of the two clusters it reaches
  "$PYTHON" - img.qcow2 <<'PY' || fail "the first writes failed"
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
for c in range(60):
    os.pwrite(fd, b"\x41" * 4096, c * 65536)
for c in range(100, 140, 2):
    os.pwrite(fd, b"\x43" * 98304, c * 65536 + 32768)
os.fsync(fd)
PY
  dd if=/dev/zero of=filler bs=64k status=none 2>/dev/null || true
  run "$PYTHON" - img.qcow2 <<'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
for c in range(60):
    os.pwrite(fd, b"\x42" * 4096, c * 65536 + 32768)
for c in range(100, 140, 2):
    os.pwrite(fd, b"\x44" * 4096, c * 65536)
os.fsync(fd)
PY
  rm -f filler
  stop_export
  [ "$status" = 0 ] || fail "a write inside a written cluster failed: $output"
  run qemu-img check img.qcow2
  [ "$status" = 0 ] || fail "qemu-img check: $output"
  local cmds=() c
  for c in $(seq 0 59); do
    cmds+=(-c "write -P 0x41 $((c * 65536)) 4k" -c "write -P 0x42 $((c * 65536 + 32768)) 4k")
  done
  for c in $(seq 100 2 138); do
    cmds+=(-c "write -P 0x43 $((c * 65536 + 32768)) 96k" -c "write -P 0x44 $((c * 65536)) 4k")
  done
  qemu-io -f qcow2 "${cmds[@]}" q.qcow2 >/dev/null
  run qemu-img compare img.qcow2 q.qcow2
  [ "$status" = 0 ] || fail "not what qemu-io wrote: $output"
  cd "$WORK"
  umount "$WORK/tmpfs"
}
