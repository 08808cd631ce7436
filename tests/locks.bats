#!/usr/bin/env bats
# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
# Locks: QEMU's lock bytes are set before they are tested, so that the
# export and a QEMU starting at the same moment never both get an image;
# two launches exporting one image never both mount (the later exits 4 at
# once, naming the other); the view itself carries no lock bytes.
#
# The races are made deterministic by slowing one launch inside a chosen
# system call with strace's delay injection; which call (its index among
# the calls of that kind) is found by a dry run of the same binary under
# strace, so the tests follow the program as it changes.

load helpers

setup() {
  requires qemu-img
  requires qemu-io
  requires strace
  requires_root
  common_setup
  qemu-img create -q -f qcow2 img.qcow2 64M
  IMG=$WORK/img.qcow2
  FILE_ID=$(lock_id "$IMG")
}

# How /proc/locks names file $1: MAJOR:MINOR:INODE (hex device numbers).
lock_id() {
  local dev
  dev=$(stat -c %d "$1")
  printf '%02x:%02x:%d' $(((dev >> 8) & 0xfff)) $(((dev & 0xff) | ((dev >> 12) & 0xfff00))) \
    "$(stat -c %i "$1")"
}

teardown() {
  local p
  for p in "${BG_PIDS[@]:-}"; do
    [ -n "$p" ] && kill "$p" 2>/dev/null
  done
  common_teardown
}

BG_PIDS=()

# call_index SYSCALL PATTERN CMD...: run CMD under strace (its main thread
# only) and print the 1-based index, among its SYSCALL calls, of the first
# one whose line matches the extended regex PATTERN.
call_index() {
  local sys=$1 pat=$2
  shift 2
  ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0 \
    strace -qq -o "$WORK/dry.log" -e trace="$sys" "$@" >/dev/null 2>&1 3>&- || true
  awk -v pat="$pat" '$0 ~ pat { print NR; exit }' "$WORK/dry.log"
}

# slowed SYSCALL INJECT CMD...: run CMD in the background under strace
# (main thread only), with strace's inject=SYSCALL:INJECT; sets TRACER
# (strace's pid, whose exit status is CMD's) and TRACEE (CMD's pid).
slowed() {
  local sys=$1 inject=$2
  shift 2
  ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0 \
    strace -qq -o /dev/null -e trace="$sys" -e inject="$sys:$inject" "$@" \
    >"$WORK/slowed.out" 2>&1 3>&- &
  TRACER=$!
  BG_PIDS+=("$TRACER")
  local i p c
  for i in $(seq 100); do
    # the launch: the first descendant (through strace, and a subshell of
    # bats) that runs the program
    p=$TRACER
    while c=$(ps -o pid= --ppid "$p" | head -n 1 | tr -d ' ') && [ -n "$c" ]; do
      if [ "$(readlink "/proc/$c/exe")" = "$(readlink -f "$FDE")" ]; then
        TRACEE=$c
        return 0
      fi
      p=$c
    done
    sleep 0.05
  done
  fail "the traced launch did not start"
}

# wait_image_locked TENTHS [CONDITION]: wait until /proc/locks lists a lock
# on the image for which the awk CONDITION holds (fields: $2 the kind,
# FLOCK or OFDLCK, $7 and $8 the first and last byte); default: any lock.
wait_image_locked() {
  local i
  for i in $(seq "$1"); do
    awk -v id="$FILE_ID" "\$6 == id && (${2:-1}) { f = 1 } END { exit !f }" \
      /proc/locks && return 0
    sleep 0.1
  done
  return 1
}

# How many mounts are on path $1?
mounts_on() {
  awk -v p="$1" '$5 == p { n++ } END { print n + 0 }' /proc/self/mountinfo
}

# Milliseconds since the epoch.
now_ms() { echo $(($(date +%s%N) / 1000000)); }

@test "lock bytes set before they are tested: a qemu-io starting in between and the export never both get the image" {
  local k
  k=$(call_index fcntl 'F_OFD_GETLK' "$FDE" -n "$IMG")
  [ -n "$k" ] || fail "no F_OFD_GETLK in a dry run: $(cat "$WORK/dry.log")"
  # The launch stops 5 s right after its first conflict test.
  slowed fcntl "delay_exit=5000000:when=$k" "$FDE" -dp "$WORK/a.pid" "$IMG"
  # Once all its lock bytes show (the last is 203; at once, if they are
  # set first), or after 2 s, a QEMU takes the image for writing.
  wait_image_locked 20 '$2 == "OFDLCK" && $8 == "203"' || true
  run qemu-io -f qcow2 -c 'write -P 0x11 0 4k' "$IMG"
  local qemu_status=$status qemu_output=$output
  wait "$TRACER" && export_status=0 || export_status=$?
  # Never both; here the export, which locked first, must win.
  [ "$qemu_status" != 0 ] || [ "$export_status" != 0 ] ||
    fail "both the export and qemu-io got the image for writing"
  [ "$export_status" = 0 ] || fail "the export failed: $(cat "$WORK/slowed.out")"
  [[ "$qemu_output" == *'Failed to get "write" lock'* ]] ||
    fail "qemu-io failed otherwise: $qemu_output"
  kill -INT "$(cat "$WORK/a.pid")"
  wait_gone "$WORK/a.pid"
  wait_unmounted "$IMG"
  run qemu-img check "$IMG"
  assert_success
}

# start_slowed_first [OPTION]...: export $IMG in the foreground, its
# mount(2) delayed 3 s; returns once the launch holds a lock on the image,
# i.e. is inside the window between locking and mounting.
start_slowed_first() {
  slowed mount "delay_enter=3000000" "$FDE" -p "$WORK/a.pid" "$@" "$IMG"
  wait_image_locked 50 || fail "the first launch took no lock: $(cat "$WORK/slowed.out")"
}

# The first launch ($TRACER) becomes live and is the only mount on $IMG;
# stop it and check the image.
first_wins_alone() {
  wait_mounted "$IMG" || fail "the first launch did not mount: $(cat "$WORK/slowed.out")"
  for _ in $(seq 50); do [ -s "$WORK/a.pid" ] && break; sleep 0.1; done
  [ "$(mounts_on "$IMG")" = 1 ] || fail "$(mounts_on "$IMG") mounts stacked on $IMG"
  kill -INT "$(cat "$WORK/a.pid")"
  wait "$TRACER" || fail "the first launch exited $?: $(cat "$WORK/slowed.out")"
  nothing_mounted
  run qemu-img check "$IMG"
  assert_success
}

@test "two launches at once: the one slowed between locking and mounting wins, the other exits 4 at once naming its pid" {
  start_slowed_first
  local t0 t1
  t0=$(now_ms)
  run "$FDE" -dp "$WORK/b.pid" "$IMG" 3>&-
  t1=$(now_ms)
  assert_failure 4
  assert_output --partial "already being exported by fuse-disk-export (pid $TRACEE)"
  [ $((t1 - t0)) -lt 1500 ] || fail "the loser took $((t1 - t0)) ms: it waited"
  alive "$TRACEE" || fail "the first launch is gone already"
  first_wins_alone
}

@test "two read-only launches at once never stack on the path" {
  start_slowed_first -r
  run "$FDE" -r -dp "$WORK/b.pid" "$IMG" 3>&-
  assert_failure 4
  assert_output --partial "already being exported"
  first_wins_alone
}

@test "a launch that opens the path after another's view appeared (it opens the view) exits 4: already exported" {
  local k
  k=$(call_index openat "\"$IMG\", O_RDWR" "$FDE" -n "$IMG")
  [ -n "$k" ] || fail "the dry run did not open $IMG: $(cat "$WORK/dry.log")"
  # The loser checks the mount table, then stops before opening the path.
  slowed openat "delay_enter=3000000:when=$k" "$FDE" -dp "$WORK/b.pid" "$IMG"
  local i
  for i in $(seq 100); do
    [[ "$(cat "/proc/$TRACEE/syscall" 2>/dev/null)" == "257 "* ]] && break
    sleep 0.05
  done
  start_export "$IMG" || fail "the winner failed"
  wait "$TRACER" && rc=0 || rc=$?
  [ "$rc" = 4 ] || fail "the loser exited $rc: $(cat "$WORK/slowed.out")"
  grep -q "already exported" "$WORK/slowed.out" ||
    fail "unclear message: $(cat "$WORK/slowed.out")"
  [ "$(mounts_on "$IMG")" = 1 ] || fail "$(mounts_on "$IMG") mounts on $IMG"
  stop_export
  wait_unmounted "$IMG"
  run qemu-img check "$IMG"
  assert_success
}

@test "20 pairs of launches started together: each time exactly one mounts, the other exits 4" {
  local round a b rc_a rc_b
  for round in $(seq 20); do
    "$FDE" -dp "$WORK/a$round.pid" "$IMG" >"$WORK/a.out" 2>&1 3>&- &
    a=$!
    "$FDE" -dp "$WORK/b$round.pid" "$IMG" >"$WORK/b.out" 2>&1 3>&- &
    b=$!
    wait "$a" && rc_a=0 || rc_a=$?
    wait "$b" && rc_b=0 || rc_b=$?
    [ "$rc_a$rc_b" = 04 ] || [ "$rc_a$rc_b" = 40 ] ||
      fail "round $round: exit statuses $rc_a and $rc_b: $(cat "$WORK/a.out" "$WORK/b.out")"
    [ "$(mounts_on "$IMG")" = 1 ] || fail "round $round: $(mounts_on "$IMG") mounts"
    kill -INT "$(cat "$WORK"/[ab]"$round".pid)"
    wait_gone "$WORK/a$round.pid"
    wait_gone "$WORK/b$round.pid"
    wait_unmounted "$IMG"
    rm -f "$WORK/a$round.pid" "$WORK/b$round.pid"
  done
  run qemu-img check "$IMG"
  assert_success
}

@test "the view carries no lock bytes: QEMU writes it as a raw disk (iotest 308); the image under -m stays locked" {
  start_export "$IMG"
  local view_id
  view_id=$(lock_id "$IMG")
  [ "$view_id" != "$FILE_ID" ] || fail "$IMG is not the view"
  ! grep " $view_id " /proc/locks || fail "lock bytes on the view"
  run qemu-io -f raw -c 'write -P 0x42 0 64k' "$IMG"
  assert_success
  refute_output --partial "lock"
  stop_export
  wait_unmounted "$IMG"
  run qemu-io -f qcow2 -c 'read -P 0x42 0 64k' "$IMG"
  assert_success
  refute_output --partial "verification failed"
  run qemu-img check "$IMG"
  assert_success
  # With -m VIEW IMAGE the image's path is still the file: locked.
  touch view
  start_export -m "$WORK/view" "$IMG"
  run qemu-io -f qcow2 -c 'write 0 512' "$IMG"
  assert_failure
  assert_output --partial 'Failed to get "write" lock'
  run "$FDE" -dp "$WORK/c.pid" "$IMG" 3>&-
  assert_failure 4
  assert_output --partial "in use by fuse-disk-export (pid $EXPORT_PID)"
  stop_export
  wait_unmounted "$WORK/view"
  run qemu-img check "$IMG"
  assert_success
}

@test "two read-only launches of one image on two -m files at once: the claim is per mountpoint, both mount" {
  touch view1 view2
  # deterministic: the first is slowed inside the window between its
  # claim and its mount
  start_slowed_first -r -m "$WORK/view1"
  run "$FDE" -r -dp "$WORK/b.pid" -m "$WORK/view2" "$IMG" 3>&-
  assert_success
  wait_mounted "$WORK/view1" || fail "the first did not mount: $(cat "$WORK/slowed.out")"
  is_mounted "$WORK/view2" || fail "view2 is not live"
  cmp "$WORK/view1" "$WORK/view2" || fail "the views differ"
  kill -INT "$(cat "$WORK/b.pid")"
  for _ in $(seq 50); do [ -s "$WORK/a.pid" ] && break; sleep 0.1; done
  kill -INT "$(cat "$WORK/a.pid")"
  wait "$TRACER" || fail "the first launch exited $?: $(cat "$WORK/slowed.out")"
  wait_gone "$WORK/b.pid"
  wait_unmounted "$WORK/view1"
  wait_unmounted "$WORK/view2"
  # and 10 times started together
  local round a b rc_a rc_b
  for round in $(seq 10); do
    "$FDE" -r -dp "$WORK/a$round.pid" -m "$WORK/view1" "$IMG" >"$WORK/a.out" 2>&1 3>&- &
    a=$!
    "$FDE" -r -dp "$WORK/b$round.pid" -m "$WORK/view2" "$IMG" >"$WORK/b.out" 2>&1 3>&- &
    b=$!
    wait "$a" && rc_a=0 || rc_a=$?
    wait "$b" && rc_b=0 || rc_b=$?
    [ "$rc_a$rc_b" = 00 ] ||
      fail "round $round: exit statuses $rc_a and $rc_b: $(cat "$WORK/a.out" "$WORK/b.out")"
    is_mounted "$WORK/view1" && is_mounted "$WORK/view2" ||
      fail "round $round: a view is not live"
    kill -INT "$(cat "$WORK/a$round.pid")" "$(cat "$WORK/b$round.pid")"
    wait_gone "$WORK/a$round.pid"
    wait_gone "$WORK/b$round.pid"
    wait_unmounted "$WORK/view1"
    wait_unmounted "$WORK/view2"
  done
  nothing_mounted
  run qemu-img check "$IMG"
  assert_success
}

@test "the same image given twice in one launch is a usage error (exit 2), not 'exported by' ourselves" {
  run "$FDE" -q -dp "$WORK/p.pid" "$IMG" "$IMG" 3>&-
  assert_failure 2
  assert_output --partial "given twice"
  refute_output --partial "already being exported"
  [ ! -e "$WORK/p.pid" ] || fail "a pid file was written"
  nothing_mounted
}

# An image and an overlay over it in one launch: the overlay's chain opens
# the image, which this same command holds for writing.  The holder is
# neither "another program (QEMU?)" nor a stranger.
@test "an image and an overlay over it in one launch: refused as held by this same command (exit 4), nothing mounted" {
  qemu-img create -q -f qcow2 -b "$IMG" -F qcow2 "$WORK/top.qcow2"
  run "$FDE" -q -dp "$WORK/p.pid" "$IMG" "$WORK/top.qcow2" 3>&-
  assert_failure 4
  assert_output --partial "$IMG: in use by this same command, which holds the write permission"
  refute_output --partial "QEMU?"
  [ ! -e "$WORK/p.pid" ] || fail "a pid file was written"
  nothing_mounted
  run qemu-img check "$IMG"
  assert_success
}

@test "a lock conflict names the holder: another fuse-disk-export (exit 4) or QEMU's qemu-io (exit 3)" {
  touch view
  start_export -m "$WORK/view" "$IMG"
  local opt
  for opt in -r ""; do
    run "$FDE" $opt -dp "$WORK/c.pid" "$IMG" 3>&-
    assert_failure 4
    assert_output --partial "$IMG: in use by fuse-disk-export (pid $EXPORT_PID), which"
    [ "${#lines[@]}" = 1 ] || fail "not one line: $output"
  done
  stop_export
  wait_unmounted "$WORK/view"
  # qemu-io holding the image open for writing, until its stdin closes
  mkfifo qin
  qemu-io -f qcow2 "$IMG" <qin >/dev/null 2>&1 &
  BG_PIDS+=($!)
  local qemu=$!
  exec 7>qin
  wait_image_locked 50 '$2 == "OFDLCK"' || fail "qemu-io took no lock"
  run "$FDE" -r -dp "$WORK/c.pid" "$IMG" 3>&- 7>&-
  assert_failure 3
  assert_output --partial "in use by qemu-io (pid $qemu), which holds the write permission"
  exec 7>&-
  wait "$qemu" || true
  run qemu-img check "$IMG"
  assert_success
}
