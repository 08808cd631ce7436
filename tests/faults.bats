#!/usr/bin/env bats
# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
# Faults injected end to end through the daemon (issue 10, item 1).  The
# daemon runs with tests/fault-shim.so preloaded, which makes chosen calls
# on the image file's descriptor (matched by device and inode, recorded
# before the view covers the path) fail with a chosen errno.  A writer
# writes through the view, arms a fault, fsyncs: the fsync must report
# the error, the daemon must live on, a later fsync must succeed, SIGINT
# must end with exit 0, and the image must be consistent (qemu-img check
# finds no errors; leaked clusters are allowed, as after a crash), hold
# every write acknowledged by the successful fsync (qemu-img compare with
# the same writes applied to a raw copy), and keep every internal
# snapshot exactly as it was (qemu-img convert -l).
#
# Where a flush makes K calls on the image, each one is failed in turn, in
# a fresh export of a fresh copy, so a flush that fails part-way and is
# retried is tried at every point where it can fail.  The cases: a failed
# fdatasync (raw, qcow2); ENOSPC on each write of a flush that allocates,
# adds an L2 table and discards; EIO on each call, and ENOSPC on each
# write, of a flush after copy-on-write against an internal snapshot (a
# retry that dropped references twice destroyed the snapshot: issue 10's
# first case); a fault at each call of the flushes at close and SIGINT;
# and a final flush that cannot succeed, which must be reported (nonzero
# exit, message) and leave an image that a later export writes cleanly.

load helpers

SHIM_SO=${FDE_BUILDDIR:-$FDE_SRCDIR}/tests/fault-shim.so

setup() {
  requires qemu-img
  requires_python
  [ -f "$SHIM_SO" ] ||
    fail "$SHIM_SO is missing: make check builds it (make tests/fault-shim.so)"
  common_setup
  CTL=$WORK/fault.ctl
  LOG=$WORK/fault.log
}

teardown() {
  common_teardown
}

# fault_start IMAGE [OPTION]...: export IMAGE in the foreground (start_fg:
# FG_PID) with the shim preloaded on the image file; faults are armed
# through $CTL, calls logged to $LOG.  Only the daemon gets the shim.
fault_start() {
  local img=$1
  shift
  : >"$CTL"
  : >"$LOG"
  FDE_FAULT_FILE=$(readlink -f "$img") FDE_FAULT_CTL=$CTL \
    FDE_FAULT_LOG=$LOG LD_PRELOAD=$SHIM_SO \
    ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0 \
    start_fg "$@" "$img"
}

# fault_stop: SIGINT the daemon of fault_start, wait (10 s at most) for it
# to exit; its exit status in FG_STATUS.
fault_stop() {
  FG_STATUS=
  kill -INT "$FG_PID" || return 1
  wait_pid_gone "$FG_PID" || {
    echo "# the daemon did not exit after SIGINT: $(thread_states "$FG_PID")" >&2
    return 1
  }
  FG_STATUS=0
  wait "$FG_PID" || FG_STATUS=$?
  rm -f "$WORK/fg-$FG_PID.pid"      # reaped: teardown must not signal it
}

# writer PATH STEP...: open PATH read-write and run the steps in order on
# that one descriptor (closing it at the end), printing one line per fsync:
#   write:OFF:LEN:BYTE   pwrite LEN bytes of BYTE (hex) at OFF; prints
#                        "write ERRNO-NAME" if it fails (nothing if not)
#   punch:OFF:LEN        fallocate(PUNCH_HOLE|KEEP_SIZE); prints
#                        "punch ERRNO-NAME" if it fails
#   arm:OP:NTH:ERRNO[:COUNT]
#                        arm the shim (see tests/fault-shim.c) with a new
#                        generation, printed as "armed GEN"
#   disarm               empty the control file
#   fsync                fsync; prints "fsync 0" or "fsync ERRNO-NAME"
#   close                close now; prints "close 0" or "close ERRNO-NAME"
# Run on a plain file (no daemon), it gives the expected contents.  A
# daemon that stops answering fails the test after two minutes instead
# of hanging it.
writer() {
  timeout 120 "$PYTHON" - "$CTL" "$@" <<'EOF'
import ctypes, errno, os, sys

ctl, path, steps = sys.argv[1], sys.argv[2], sys.argv[3:]
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long,
                           ctypes.c_long]
fd = os.open(path, os.O_RDWR)
gen = 0
closed = False


def set_ctl(text):
    tmp = ctl + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, ctl)


for step in steps:
    w = step.split(":")
    if w[0] == "write":
        off, n = int(w[1]), int(w[2])
        try:
            if os.pwrite(fd, bytes([int(w[3], 16)]) * n, off) != n:
                print("write short", flush=True)
        except OSError as e:
            print("write", errno.errorcode.get(e.errno, e.errno), flush=True)
    elif w[0] == "punch":
        if libc.fallocate(fd, 3, int(w[1]), int(w[2])) != 0:  # PUNCH|KEEP
            e = ctypes.get_errno()
            print("punch", errno.errorcode.get(e, e), flush=True)
    elif w[0] == "arm":
        gen += 1
        g = "g%d-%d" % (os.getpid(), gen)
        set_ctl(" ".join([g] + w[1:]) + "\n")
        print("armed", g, flush=True)
    elif w[0] == "disarm":
        set_ctl("")
    elif w[0] == "fsync":
        try:
            os.fsync(fd)
            print("fsync 0", flush=True)
        except OSError as e:
            print("fsync", errno.errorcode.get(e.errno, e.errno), flush=True)
    elif w[0] == "close":
        closed = True
        try:
            os.close(fd)
            print("close 0", flush=True)
        except OSError as e:
            print("close", errno.errorcode.get(e.errno, e.errno), flush=True)
    else:
        sys.exit("bad step " + step)
if not closed:
    os.close(fd)
EOF
}

# expect_raw BASE_RAW STEP...: the writer's steps applied to a copy of
# BASE_RAW, in $WORK/expected.raw.
expect_raw() {
  local base=$1
  shift
  cp --sparse=always "$base" "$WORK/expected.raw"
  CTL=$WORK/unused.ctl writer "$WORK/expected.raw" "$@" >/dev/null
}

# check_clean IMAGE: qemu-img check finds no errors; leaked clusters are
# allowed (a failed flush may leave them, as a crash may), their number in
# LEAKS.
check_clean() {
  local out rc=0
  out=$(qemu-img check "$1" 2>&1) || rc=$?
  if [ "$rc" != 0 ] && [ "$rc" != 3 ]; then
    echo "# qemu-img check $1: status $rc:" >&2
    grep -v '^Leaked cluster' <<<"$out" | head -n 20 >&2
    return 1
  fi
  LEAKS=$(sed -n 's/^\([0-9]*\) leaked clusters.*/\1/p' <<<"$out")
  LEAKS=${LEAKS:-0}
}

# check_image IMAGE: check_clean, and the image reads as
# $WORK/expected.raw.
check_image() {
  local img=$1
  check_clean "$img" || return 1
  same_as_expected "$img" || {
    echo "# $img does not read as the acknowledged writes" >&2
    return 1
  }
}

# same_as_expected QCOW2: it reads as $WORK/expected.raw (qemu-img compare
# skips what is unallocated on both sides: fast on big sparse disks).
same_as_expected() {
  local out
  out=$(qemu-img compare -f qcow2 -F raw "$1" "$WORK/expected.raw" 2>&1) || {
    echo "# $out" >&2
    return 1
  }
}

# check_snapshot IMAGE NAME: the snapshot reads as $WORK/snap.NAME.raw.
check_snapshot() {
  qemu-img convert -l "snapshot.name=$2" -O raw "$1" "$WORK/got-snap.raw"
  qemu-img compare -q -f raw -F raw "$WORK/got-snap.raw" "$WORK/snap.$2.raw" || {
    echo "# snapshot $2 of $1 changed" >&2
    return 1
  }
}

# make_qcow2 IMAGE SIZE [SNAPSHOT]: a qcow2 of 64 KiB clusters with data
# over its first 4 MiB (and a compressed cluster at 8 MiB), $IMAGE.raw its
# contents; with SNAPSHOT, an internal snapshot of that name taken then,
# saved as $WORK/snap.SNAPSHOT.raw.
make_qcow2() {
  local img=$1
  qemu-img create -q -f qcow2 "$img" "$2"
  qemu-io -f qcow2 -c 'write -P 0x11 0 4M' -c 'write -c -P 0x44 8M 64k' \
    "$img" >/dev/null
  if [ -n "${3:-}" ]; then
    qemu-img snapshot -c "$3" "$img"
    qemu-img convert -l "snapshot.name=$3" -O raw "$img" "$WORK/snap.$3.raw"
  fi
  qemu-img convert -O raw "$img" "$img.raw"
}

# One faulted run: a fresh copy of BASE exported, the writer's STEPS with
# "arm:SPEC" between them; afterwards the checks above, and SNAPSHOT (if
# not "-") intact.  Sets WRITER_OUT.
faulted_run() {  # BASE SNAPSHOT ARM_SPEC STEP...
  local base=$1 snap=$2 spec=$3 img=$WORK/disk.qcow2
  shift 3
  cp "$base" "$img"
  fault_start "$img"
  WRITER_OUT=$(writer "$img" "$@" "arm:$spec" fsync disarm fsync) || {
    echo "# writer failed: $WRITER_OUT" >&2
    return 1
  }
  alive "$FG_PID" || { echo "# the daemon died: $(cat "$WORK/fg.err")" >&2; return 1; }
  fault_stop || return 1
  [ "$FG_STATUS" = 0 ] || {
    echo "# exit status $FG_STATUS after the retried flush: $(cat "$WORK/fg.err")" >&2
    return 1
  }
  nothing_mounted || return 1
  check_image "$img" || return 1
  [ "$snap" = - ] || check_snapshot "$img" "$snap" || return 1
}

# fault_every_call BASE SNAPSHOT OPS ERRNO STEP...: count the calls of
# class OPS that the flush after STEPS makes (a run that only counts),
# then fail each one in turn with ERRNO (faulted_run).  The first fsync
# must fail with ERRNO (or succeed, where the failed call was a punch of
# freed clusters, which is advisory), the second must succeed.  Prints
# how many faults it injected.
fault_every_call() {
  local base=$1 snap=$2 ops=$3 err=$4 gen k n line first
  shift 4
  expect_raw "$base.raw" "$@"
  faulted_run "$base" "$snap" "$ops:0:$err" "$@" || return 1
  gen=$(sed -n 's/^armed //p' <<<"$WRITER_OUT" | head -n 1)
  k=$(awk -v g="$gen" '$1 == g && $2 > 0' "$LOG" | wc -l)
  [ "$k" -gt 0 ] || { echo "# the flush made no $ops calls" >&2; return 1; }
  for n in $(seq "$k"); do
    faulted_run "$base" "$snap" "$ops:$n:$err" "$@" || {
      echo "# with call $n of $k ($ops) failing with $err:" >&2
      grep -F injected "$LOG" >&2
      return 1
    }
    line=$(grep -F injected "$LOG")
    [ "$(wc -l <<<"$line")" = 1 ] && [ -n "$line" ] || {
      echo "# call $n of $k: expected one injected fault, got: $line" >&2
      return 1
    }
    first=$(sed -n 2p <<<"$WRITER_OUT")
    case "$first:$line" in
      "fsync $err:"* | "fsync 0:"*" fallocate "*) ;;
      *) echo "# call $n of $k ($line): first fsync gave '$first'" >&2
         return 1 ;;
    esac
    [ "$(sed -n 3p <<<"$WRITER_OUT")" = "fsync 0" ] || {
      echo "# call $n of $k: the retried fsync: $WRITER_OUT" >&2
      return 1
    }
  done
  echo "# $k faults injected ($ops, $err)" >&3
}

@test "the shim wraps every call the program makes to write, sync or size a file" {
  requires nm
  local imported wrapped f
  imported=$(nm -D --undefined-only "$FDE" | awk '{ sub(/@.*/, "", $2); print $2 }' |
    grep -E '^(pread|pwrite|preadv|pwritev|fsync|fdatasync|sync_file_range|syncfs|fallocate|posix_fallocate|ftruncate|copy_file_range)(64|v2|64v2)?$') || true
  [ -n "$imported" ] || fail "nm found no I/O calls in $FDE"
  wrapped=$(nm -D --defined-only "$SHIM_SO" | awk '$2 == "T" { print $3 }')
  for f in $imported; do
    grep -qx "$f" <<<"$wrapped" || fail "$FDE calls $f, which tests/fault-shim.c does not wrap"
  done
}

@test "raw: a failing fdatasync is reported to fsync, the daemon lives on, the retry and SIGINT succeed" {
  truncate -s 16M "$WORK/disk.img"
  head -c 1M /dev/urandom >"$WORK/r"
  dd if="$WORK/r" of="$WORK/disk.img" conv=notrunc status=none
  cp "$WORK/disk.img" "$WORK/disk.img.raw"
  steps=(write:4096:65536:5a write:5000000:12345:a5)
  expect_raw "$WORK/disk.img.raw" "${steps[@]}"
  fault_start "$WORK/disk.img" -f raw
  run writer "$WORK/disk.img" "${steps[@]}" arm:sync:1:EIO fsync disarm fsync
  assert_success
  assert_line --index 1 "fsync EIO"
  assert_line --index 2 "fsync 0"
  grep -q 'sync fdatasync .* injected' "$LOG"
  alive "$FG_PID"
  is_mounted "$WORK/disk.img"
  fault_stop
  [ "$FG_STATUS" = 0 ]
  nothing_mounted
  cmp "$WORK/disk.img" "$WORK/expected.raw"
}

@test "close of a writable descriptor flushes: a failing fdatasync reaches close(), a reader's close never syncs" {
  truncate -s 16M "$WORK/disk.img"
  fault_start "$WORK/disk.img" -f raw
  # The kernel's FLUSH carries no open flags: a flush that looked at them
  # treated every close as a reader's and synced nothing.
  run writer "$WORK/disk.img" write:0:4096:5a arm:sync:1:EIO close
  assert_success
  assert_line --index 1 "close EIO"
  grep -q 'sync fdatasync .* injected' "$LOG"
  : >"$CTL"
  : >"$LOG"
  run writer "$WORK/disk.img" write:0:4096:5b close
  assert_line --index 0 "close 0"
  grep -q 'fdatasync' "$LOG"
  : >"$LOG"
  cat "$WORK/disk.img" >/dev/null
  ! grep -q 'fdatasync' "$LOG"
  alive "$FG_PID"
  fault_stop
  [ "$FG_STATUS" = 0 ]
}

@test "raw: the shim armed from the environment (FDE_FAULT_OP/NTH/ERRNO/COUNT) fails the fsyncs it names" {
  truncate -s 16M "$WORK/disk.img"
  : >"$LOG"
  FDE_FAULT_FILE=$WORK/disk.img FDE_FAULT_OP=fdatasync FDE_FAULT_NTH=2 \
    FDE_FAULT_ERRNO=ENOSPC FDE_FAULT_COUNT=2 FDE_FAULT_LOG=$LOG \
    LD_PRELOAD=$SHIM_SO \
    ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0 \
    start_fg -f raw "$WORK/disk.img"
  run writer "$WORK/disk.img" write:0:4096:11 fsync fsync fsync fsync
  assert_success
  assert_output "$(printf 'fsync 0\nfsync ENOSPC\nfsync ENOSPC\nfsync 0')"
  [ "$(grep -c injected "$LOG")" = 2 ]
  fault_stop
  [ "$FG_STATUS" = 0 ]
}

@test "qcow2: a failing fdatasync in a flush is reported, the daemon lives on, the retry and SIGINT leave the image clean" {
  requires qemu-io
  make_qcow2 "$WORK/base.qcow2" 1G
  # allocating writes, one into a new L2 table, and an overwrite
  steps=(write:65536:8192:22 write:700000000:70000:33 write:100:4000:44)
  expect_raw "$WORK/base.qcow2.raw" "${steps[@]}"
  faulted_run "$WORK/base.qcow2" - sync:1:EIO "${steps[@]}"
  assert_equal "$WRITER_OUT" "$(printf 'armed %s\nfsync EIO\nfsync 0' \
    "$(sed -n 's/^armed //p' <<<"$WRITER_OUT")")"
  [ "$LEAKS" = 0 ] || fail "$LEAKS leaked clusters after a retried flush"
}

@test "qcow2: ENOSPC on each write of a flush (allocation, new L2 table, discard), then retry and SIGINT" {
  requires qemu-io
  make_qcow2 "$WORK/base.qcow2" 1G
  steps=(write:65536:8192:22 write:700000000:70000:33 punch:1048576:1048576
         write:8388608:4096:55)
  fault_every_call "$WORK/base.qcow2" - write ENOSPC "${steps[@]}"
}

@test "qcow2: EIO on each call of a flush after COW against an internal snapshot; the snapshot reads as before" {
  requires qemu-io
  make_qcow2 "$WORK/base.qcow2" 64M snap
  # clusters and an L2 table shared with the snapshot, and a compressed
  # cluster shared with it
  steps=(write:65536:4096:22 write:2102152:4096:33 write:8392704:512:66)
  fault_every_call "$WORK/base.qcow2" snap any EIO "${steps[@]}"
}

@test "qcow2: ENOSPC on each write of a flush after COW against an internal snapshot; the snapshot reads as before" {
  requires qemu-io
  make_qcow2 "$WORK/base.qcow2" 64M snap
  steps=(write:65536:4096:22 write:2102152:4096:33 punch:3145728:131072)
  fault_every_call "$WORK/base.qcow2" snap write ENOSPC "${steps[@]}"
}

# fault_every_write_call BASE SNAPSHOT OPS ERRNO STEP... LAST: after
# STEPS, fail each call of class OPS that the write LAST makes in turn
# (counted first by a run that fails none): the write must fail with ERRNO
# (or succeed), the daemon live on, the same write retried succeed, then
# fsync and SIGINT, and the image read as every step and LAST applied,
# with no errors in qemu-img check and SNAPSHOT intact.
fault_every_write_call() {
  local base=$1 snap=$2 ops=$3 err=$4 k n
  shift 4
  local steps=("${@:1:$#-1}") last=${!#}
  expect_raw "$base.raw" "$@"
  write_fault_run "$base" "$snap" "$ops:0:$err" "${steps[@]}" "$last" ||
    return 1
  k=$(awk -v g="$WRITER_GEN" '$1 == g && $2 > 0' "$LOG" | wc -l)
  [ "$k" -gt 0 ] || { echo "# the write made no $ops calls" >&2; return 1; }
  for n in $(seq "$k"); do
    write_fault_run "$base" "$snap" "$ops:$n:$err" "${steps[@]}" "$last" &&
      grep -q injected "$LOG" || {
      echo "# with call $n of $k ($ops) failing with $err:" >&2
      grep -F injected "$LOG" >&2
      return 1
    }
  done
  echo "# $k faults injected in a write ($ops, $err)" >&3
}

# One run of fault_every_write_call: a fresh copy of BASE exported, STEPS,
# arm:SPEC, LAST, disarm, LAST again, fsync, SIGINT, and the checks.
write_fault_run() {  # BASE SNAPSHOT SPEC STEP... LAST
  local base=$1 snap=$2 spec=$3 img=$WORK/disk.qcow2 out err=${3##*:}
  shift 3
  local steps=("${@:1:$#-1}") last=${!#}
  cp "$base" "$img"
  fault_start "$img"
  out=$(writer "$img" "${steps[@]}" "arm:$spec" "$last" disarm "$last" \
    fsync) || { echo "# writer failed: $out" >&2; return 1; }
  WRITER_GEN=$(sed -n 's/^armed //p' <<<"$out")
  case "$(sed 1d <<<"$out" | tr '\n' ' ')" in
    # the kernel splits a write at page edges: a later piece that fails
    # makes the write short rather than failed
    "fsync 0 " | "${last%%:*} $err fsync 0 " | "write short fsync 0 ") ;;
    *) echo "# $spec: $out" >&2; return 1 ;;
  esac
  fault_stop || return 1
  [ "$FG_STATUS" = 0 ] || {
    echo "# $spec: exit status $FG_STATUS: $(cat "$WORK/fg.err")" >&2
    return 1
  }
  check_image "$img" || return 1
  [ "$snap" = - ] || check_snapshot "$img" "$snap"
}

@test "qcow2: EIO on each call of a copy-on-write against a snapshot fails the write; the retried write, fsync and SIGINT leave the image clean" {
  requires qemu-io
  make_qcow2 "$WORK/base.qcow2" 64M snap
  fault_every_write_call "$WORK/base.qcow2" snap any EIO \
    write:65536:4096:22 write:2102152:4096:33
}

@test "qcow2: ENOSPC on each write of an allocating write into a new L2 table; the retried write, fsync and SIGINT leave the image clean" {
  requires qemu-io
  make_qcow2 "$WORK/base.qcow2" 1G
  fault_every_write_call "$WORK/base.qcow2" - write ENOSPC \
    write:65536:4096:22 write:700000000:70000:33
}

# compare_writes GOT BASE EXPECTED STEP...: outside the steps' ranges GOT
# reads as EXPECTED; inside each, as EXPECTED or as BASE (a write that was
# never acknowledged may or may not have landed, but nothing else).
compare_writes() {
  "$PYTHON" - "$@" <<'EOF'
import sys
got, base, exp = (open(f, "rb").read() for f in sys.argv[1:4])
assert len(got) == len(exp), "size %d, expected %d" % (len(got), len(exp))
mask = bytearray(len(got))
for step in sys.argv[4:]:
    w = step.split(":")
    if w[0] not in ("write", "punch"):
        continue
    off, n = int(w[1]), int(w[2])
    if got[off:off + n] not in (exp[off:off + n], base[off:off + n]):
        sys.exit("%s: neither written nor as before" % step)
    mask[off:off + n] = b"\x01" * n
for i in range(0, len(got), 65536):
    a, b, m = got[i:i + 65536], exp[i:i + 65536], mask[i:i + 65536]
    if a != b and any(x != y and not k for x, y, k in zip(a, b, m)):
        sys.exit("changed outside the writes near offset %d" % i)
EOF
}

# One run where the fault hits the flushes at close and at SIGINT: a fresh
# copy of BASE exported, the writer's STEPS, "arm:SPEC", close, SIGINT.
# Exit 0 must mean every write is in the image; a nonzero exit must come
# with a message.  Either way: nothing mounted, no errors in qemu-img
# check, SNAPSHOT (if not "-") intact, and nothing but the writes changed.
exit_run() {  # BASE SNAPSHOT ARM_SPEC STEP...
  local base=$1 snap=$2 spec=$3 img=$WORK/disk.qcow2
  shift 3
  cp "$base" "$img"
  fault_start "$img"
  WRITER_OUT=$(writer "$img" "$@" "arm:$spec" close) || {
    echo "# writer failed: $WRITER_OUT" >&2
    return 1
  }
  fault_stop || return 1
  nothing_mounted || return 1
  check_clean "$img" || return 1
  [ "$snap" = - ] || check_snapshot "$img" "$snap" || return 1
  if [ "$FG_STATUS" = 0 ]; then
    same_as_expected "$img" || {
      echo "# exit 0, but the image does not hold every write" >&2
      return 1
    }
  else
    qemu-img convert -O raw "$img" "$WORK/got.raw"
    grep -qi flush "$WORK/fg.err" || {
      echo "# exit status $FG_STATUS without a message about the flush: $(cat "$WORK/fg.err")" >&2
      return 1
    }
    compare_writes "$WORK/got.raw" "$base.raw" "$WORK/expected.raw" "$@" >&2
  fi
}

# fault_every_exit_call BASE SNAPSHOT OPS ERRNO STEP...: count the calls of
# class OPS from the close after STEPS to the exit (exit_run with a spec
# that only counts), then fail each one in turn with ERRNO.
fault_every_exit_call() {
  local base=$1 snap=$2 ops=$3 err=$4 gen k n
  shift 4
  expect_raw "$base.raw" "$@"
  exit_run "$base" "$snap" "$ops:0:$err" "$@" || return 1
  [ "$FG_STATUS" = 0 ] || fail "exit status $FG_STATUS without a fault"
  gen=$(sed -n 's/^armed //p' <<<"$WRITER_OUT" | head -n 1)
  k=$(awk -v g="$gen" '$1 == g && $2 > 0' "$LOG" | wc -l)
  [ "$k" -gt 0 ] || { echo "# the exit made no $ops calls" >&2; return 1; }
  for n in $(seq "$k"); do
    exit_run "$base" "$snap" "$ops:$n:$err" "$@" || {
      echo "# with call $n of $k ($ops) failing with $err (exit status $FG_STATUS):" >&2
      grep -F injected "$LOG" >&2
      return 1
    }
    grep -q injected "$LOG" || {
      echo "# call $n of $k: no fault was injected" >&2
      return 1
    }
  done
  echo "# $k faults injected at exit ($ops, $err)" >&3
}

@test "qcow2: EIO on each call of the flushes at close and SIGINT after COW against a snapshot; the snapshot survives" {
  requires qemu-io
  make_qcow2 "$WORK/base.qcow2" 64M snap
  steps=(write:65536:4096:22 write:2102152:4096:33 write:8392704:512:66)
  fault_every_exit_call "$WORK/base.qcow2" snap any EIO "${steps[@]}"
}

# The final flush at SIGINT fails: the daemon says so and exits nonzero,
# leaving nothing mounted; a later export, written and fsynced, ends clean.
final_flush_fails() {  # IMAGE BASE_RAW [OPTION]...
  local img=$1 base=$2
  shift 2
  fault_start "$img" "$@"
  # every sync fails from the close on: nothing written reaches the disk
  # for sure, and the flush at SIGINT fails too
  run writer "$img" write:65536:8192:77 write:3000000:5000:78 \
    arm:sync:1:EIO:0 close
  assert_success
  assert_line --index 1 --regexp '^close (0|EIO)$'  # the view may flush on close
  fault_stop
  [ "$FG_STATUS" != 0 ] || fail "exit status 0 although no flush succeeded"
  grep -q "$(basename "$img")" "$WORK/fg.err" ||
    fail "no message naming the image: $(cat "$WORK/fg.err")"
  grep -qi 'flush' "$WORK/fg.err" ||
    fail "the message does not say the flush failed: $(cat "$WORK/fg.err")"
  nothing_mounted
  # again, without faults: what the retried export acknowledges is there
  steps=(write:131072:4096:79 write:4000000:100:7a)
  start_fg "$@" "$img"
  run writer "$img" "${steps[@]}" fsync
  assert_output "fsync 0"
  fault_stop
  [ "$FG_STATUS" = 0 ] || fail "exit status $FG_STATUS: $(cat "$WORK/fg.err")"
  nothing_mounted
  qemu-img convert -O raw "$img" "$WORK/got.raw"
  "$PYTHON" - "$WORK/got.raw" "$base" <<'EOF'
import sys
got, base = open(sys.argv[1], "rb").read(), open(sys.argv[2], "rb").read()
# the second export's writes are there; the first's may or may not be
assert got[131072:135168] == b"\x79" * 4096, "acknowledged write lost"
assert got[4000000:4000100] == b"\x7a" * 100, "acknowledged write lost"
for off, n, b in ((65536, 8192, 0x77), (3000000, 5000, 0x78)):
    piece = got[off:off + n]
    assert piece in (bytes([b]) * n, base[off:off + n]), "torn at %d" % off
EOF
}

@test "qcow2: a failing final flush at SIGINT is reported (nonzero exit, message); a later export ends clean" {
  requires qemu-io
  make_qcow2 "$WORK/disk.qcow2" 64M snap
  final_flush_fails "$WORK/disk.qcow2" "$WORK/disk.qcow2.raw"
  check_clean "$WORK/disk.qcow2"
  check_snapshot "$WORK/disk.qcow2" snap
}

@test "raw: a failing final flush at SIGINT is reported (nonzero exit, message); a later export ends clean" {
  truncate -s 16M "$WORK/disk.img"
  cp "$WORK/disk.img" "$WORK/disk.img.raw"
  final_flush_fails "$WORK/disk.img" "$WORK/disk.img.raw" -f raw
}
