#!/usr/bin/env bats
# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
# The mount follows the file, not its name: a view is mounted on the file
# resolved at start (as root, whatever the name leads to by then), found
# again by its FUSE device wherever its directory has moved, and unmounted
# there; an unmount that cannot succeed aborts our own connection and the
# daemon exits with a message instead of hanging.

load helpers

# One new user for the user cases, removed at the end whatever happened.
setup_file() {
  requires_root
  create_test_user
}

teardown_file() { remove_test_user; }

setup() {
  common_setup
  requires_root
  requires qemu-img
  NS_PID= NS_DAEMON=
}

teardown() {
  exec 7<&- 2>/dev/null               # a view held open by a test
  [ -n "${NS_PID:-}" ] && kill "$NS_PID" 2>/dev/null
  # a daemon in a namespace of its own: only its end removes its mounts
  if [ -n "${NS_DAEMON:-}" ] && alive "$NS_DAEMON"; then
    kill -TERM "$NS_DAEMON" 2>/dev/null
    wait_pid_gone "$NS_DAEMON" >/dev/null 2>&1 || kill -KILL "$NS_DAEMON"
  fi
  [ -n "${WORK:-}" ] && [ -d "$WORK/u/dir" ] && chmod 0755 "$WORK/u/dir"
  undo_stacked_on_views
  common_teardown
}

# A 16 MiB qcow2 at $1 and, in $WORK/expected.raw, what its view must show
# once the pattern below is written through it.
make_qcow2() {
  qemu-img create -q -f qcow2 "$1" 16M
  head -c 262144 /dev/urandom >"$WORK/pattern"
  truncate -s 16M "$WORK/expected.raw"
  dd if="$WORK/pattern" of="$WORK/expected.raw" bs=64k seek=3 conv=notrunc \
    status=none
}

# Write the pattern through the view at $1 (and make it reach the image);
# --user: as the test user (the only one a user's view lets in).
write_pattern() {
  local -a pre=()
  [ "$1" = --user ] && { pre=(runuser -u "$TEST_USER" --); shift; }
  "${pre[@]}" dd if="$WORK/pattern" of="$1" bs=64k seek=3 \
    conv=notrunc,fsync status=none
}

# The image at $1 is clean and shows what was written.
image_is_right() {
  run qemu-img check "$1"
  assert_success
  run qemu-img compare -q -f qcow2 -F raw "$1" "$WORK/expected.raw"
  assert_success
}

# start_view [--user] ARG...: run the program in the foreground, in the
# background of this shell (--user: as $TEST_USER, through setpriv, which
# execs it, so that its exit status is ours); FG_PID is its pid, and its
# stderr goes to $WORK/fg.err.  Teardown stops it.
start_view() {
  local -a pre=()
  if [ "$1" = --user ]; then
    shift
    pre=(setpriv --reuid="$TEST_USER" --regid="$TEST_USER" --init-groups)
  fi
  "${pre[@]}" "$FDE" "$@" >"$WORK/fg.out" 2>"$WORK/fg.err" 3>&- &
  FG_PID=$!
  echo "$FG_PID" >"$WORK/fg-$FG_PID.pid"
}

# Signal the foreground export (unless no signal is named), wait (10 s at
# most) until it has exited, and set FG_STATUS.  Fails if it is still
# running: no hang allowed.
stop_view() {
  [ -z "${1:-}" ] || kill -"$1" "$FG_PID"
  wait_pid_gone "$FG_PID" || {
    echo "# still running after SIGINT: $(thread_states "$FG_PID")" >&2
    echo "# stderr: $(cat "$WORK/fg.err")" >&2
    return 1
  }
  FG_STATUS=0
  wait "$FG_PID" || FG_STATUS=$?
}

# A directory owned by the test user, for exports through fusermount3.
user_dir() {
  ensure_test_user || return 1
  requires fusermount3
  runuser -u "$TEST_USER" -- test -r /dev/fuse -a -w /dev/fuse ||
    skip "$TEST_USER cannot open /dev/fuse"
  [ -u "$(command -v fusermount3)" ] || skip "fusermount3 is not setuid"
  chmod 0755 "$WORK"
  mkdir -p "$WORK/u/dir"
  chown -R "$TEST_USER": "$WORK/u"
}

@test "mv of the directory while exported: SIGINT reverts the moved file" {
  mkdir dir
  make_qcow2 dir/a.qcow2
  start_view dir/a.qcow2
  wait_mounted "$WORK/dir/a.qcow2"
  write_pattern dir/a.qcow2
  mv dir dir2
  is_mounted "$WORK/dir2/a.qcow2" || fail "the view did not move with dir"
  stop_view INT
  [ "$FG_STATUS" = 0 ] || fail "exit status $FG_STATUS: $(cat fg.err)"
  nothing_mounted
  image_is_right dir2/a.qcow2
}

@test "mv of the directory while the view is open: lazy detach where it is now" {
  mkdir dir
  make_qcow2 dir/a.qcow2
  start_view dir/a.qcow2
  wait_mounted "$WORK/dir/a.qcow2"
  write_pattern dir/a.qcow2
  exec 7<dir/a.qcow2
  mv dir dir2
  kill -INT "$FG_PID"
  wait_unmounted "$WORK/dir2/a.qcow2" 50
  # detached, still serving its last user
  alive "$FG_PID" || fail "exited while the view was still open"
  cmp -n 262144 -i 196608:0 - "$WORK/pattern" <&7 ||
    fail "the open view does not read back the pattern"
  exec 7<&-
  stop_view ""                          # the last user has gone: it exits
  [ "$FG_STATUS" = 0 ] || fail "exit status $FG_STATUS: $(cat fg.err)"
  grep -q "detaching the view lazily" fg.err || fail "no lazy-detach warning"
  nothing_mounted
  image_is_right dir2/a.qcow2
}

@test "mv of the image itself: EBUSY here, allowed from another namespace" {
  requires unshare
  requires nsenter
  mkdir dir
  make_qcow2 dir/a.qcow2
  # a mount namespace made before the export does not see the view, so
  # the file is no mount point there and may be renamed
  unshare -m --propagation private sleep 600 &
  NS_PID=$!
  # the namespace must exist before the view is mounted (unshare runs in
  # the background: a mount made first would be copied into it)
  for _ in $(seq 50); do
    [ "$(readlink "/proc/$NS_PID/ns/mnt")" != "$(readlink /proc/self/ns/mnt)" ] && break
    sleep 0.1
  done
  start_view dir/a.qcow2
  wait_mounted "$WORK/dir/a.qcow2"
  write_pattern dir/a.qcow2
  run mv dir/a.qcow2 dir/b.qcow2
  assert_failure
  assert_output --partial "busy"
  nsenter -t "$NS_PID" -m mv "$WORK/dir/a.qcow2" "$WORK/dir/b.qcow2"
  is_mounted "$WORK/dir/b.qcow2" || fail "the view did not move with the file"
  stop_view INT
  [ "$FG_STATUS" = 0 ] || fail "exit status $FG_STATUS: $(cat fg.err)"
  nothing_mounted
  [ ! -e dir/a.qcow2 ] || fail "dir/a.qcow2 exists again"
  image_is_right dir/b.qcow2
}

@test "root: a directory swapped for a symlink while mounting never puts the view on another file" {
  requires strace
  mkdir dir evil
  make_qcow2 dir/a.qcow2
  echo "not the image" >evil/a.qcow2
  # hold the daemon for 3 s on entry to mount(2); swap meanwhile.  Hold
  # umount2 too, so that a view put on the wrong file and taken off again
  # at once is seen.
  ASAN_OPTIONS=detect_leaks=0 strace -f -o /dev/null \
    -e inject=mount:delay_enter=3000000 \
    -e inject=umount2:delay_enter=2000000 "$FDE" dir/a.qcow2 \
    >"$WORK/fg.out" 2>"$WORK/fg.err" 3>&- &
  local strace_pid=$! pid= i
  echo "$strace_pid" >"$WORK/strace.pid"
  # libfuse opens /dev/fuse just before mount(2)
  for i in $(seq 200); do
    pid=$(pgrep -P "$strace_pid" | head -1)
    [ -n "$pid" ] && ls -l "/proc/$pid/fd" 2>/dev/null | grep -q /dev/fuse &&
      break
    sleep 0.02
  done
  [ -n "$pid" ] || fail "the traced daemon did not start"
  echo "$pid" >"$WORK/fg-$pid.pid"
  mv dir dir.orig
  ln -s evil dir
  for i in $(seq 100); do
    awk -v w="$WORK/" 'index($5, w) == 1 { f = 1 } END { exit !f }' \
      /proc/self/mountinfo && break
    alive "$pid" || break
    sleep 0.1
  done
  ! is_mounted "$WORK/evil/a.qcow2" ||
    fail "the view was mounted on evil/a.qcow2, a file it was never given"
  [ "$(cat evil/a.qcow2)" = "not the image" ] || fail "evil/a.qcow2 changed"
  if alive "$pid"; then
    is_mounted "$WORK/dir.orig/a.qcow2" ||
      fail "not mounted on the original file: $(grep -F "$WORK" /proc/self/mountinfo)"
    kill -INT "$pid"
    wait_pid_gone "$pid"
    local status=0
    wait "$strace_pid" || status=$?
    [ "$status" = 0 ] || fail "exit status $status: $(cat fg.err)"
  fi
  nothing_mounted
  run qemu-img check dir.orig/a.qcow2
  assert_success
}

@test "root: a mount stacked on the view: no hang, the connection is aborted, a message" {
  needs_fusectl
  mkdir dir
  make_qcow2 dir/a.qcow2
  echo "on top" >top
  start_view dir/a.qcow2
  wait_mounted "$WORK/dir/a.qcow2"
  write_pattern dir/a.qcow2
  mount --bind top dir/a.qcow2
  stop_view INT
  [ "$FG_STATUS" = 1 ] || fail "exit status $FG_STATUS: $(cat fg.err)"
  grep -q "cannot unmount the view: another mount is stacked on it" fg.err ||
    fail "no message saying why: $(cat fg.err)"
  grep -q "aborted the view's FUSE connection" fg.err ||
    fail "no message about the abort: $(cat fg.err)"
  # the stacked mount is left alone; under it, the dead view
  [ "$(cat dir/a.qcow2)" = "on top" ] || fail "the stacked mount was removed"
  umount dir/a.qcow2
  run stat dir/a.qcow2
  assert_failure
  assert_output --partial "not connected"
  umount dir/a.qcow2
  nothing_mounted
  image_is_right dir/a.qcow2
}

@test "root: no fusectl to abort with: the daemon says so and exits, the connection ends with it" {
  requires unshare
  requires nsenter
  mkdir dir
  make_qcow2 dir/a.qcow2
  echo "on top" >top
  # a private mount namespace without fusectl: everything mounted in it
  # goes when its last process (the daemon) exits
  start_view_in_ns() {
    unshare -m --propagation private sh -c \
      'umount /sys/fs/fuse/connections 2>/dev/null; exec "$0" "$@"' \
      "$FDE" dir/a.qcow2 >"$WORK/fg.out" 2>"$WORK/fg.err" 3>&- &
    FG_PID=$! NS_DAEMON=$!
  }
  start_view_in_ns
  local i
  for i in $(seq 100); do
    grep -qF " $WORK/dir/a.qcow2 " "/proc/$FG_PID/mountinfo" 2>/dev/null &&
      break
    sleep 0.1
  done
  grep -qF " $WORK/dir/a.qcow2 " "/proc/$FG_PID/mountinfo" ||
    fail "not mounted: $(cat fg.err)"
  ! grep -q " fusectl " "/proc/$FG_PID/mountinfo" ||
    skip "cannot unmount fusectl in a private namespace"
  nsenter -t "$FG_PID" -m dd if="$WORK/pattern" of="$WORK/dir/a.qcow2" \
    bs=64k seek=3 conv=notrunc,fsync status=none
  nsenter -t "$FG_PID" -m mount --bind "$WORK/top" "$WORK/dir/a.qcow2"
  stop_view INT
  [ "$FG_STATUS" = 1 ] || fail "exit status $FG_STATUS: $(cat fg.err)"
  grep -q "another mount is stacked on it" fg.err || fail "$(cat fg.err)"
  grep -q "fusectl is not mounted" fg.err || fail "$(cat fg.err)"
  grep -q "it ends when this process exits" fg.err || fail "$(cat fg.err)"
  nothing_mounted
  image_is_right dir/a.qcow2
}

@test "user: mv of the directory while exported: SIGINT reverts the moved file" {
  user_dir
  make_qcow2 u/dir/a.qcow2
  chown "$TEST_USER": u/dir/a.qcow2
  start_view --user u/dir/a.qcow2
  wait_mounted "$WORK/u/dir/a.qcow2"
  write_pattern --user u/dir/a.qcow2
  runuser -u "$TEST_USER" -- mv u/dir u/dir2
  stop_view INT
  [ "$FG_STATUS" = 0 ] || fail "exit status $FG_STATUS: $(cat fg.err)"
  nothing_mounted
  image_is_right u/dir2/a.qcow2
}

@test "user: fusermount3 is run by its absolute path, never found through PATH" {
  user_dir
  make_qcow2 u/dir/a.qcow2
  chown "$TEST_USER": u/dir/a.qcow2
  mkdir fakebin
  printf '#!/bin/sh\ntouch %s/fake-ran\nexit 1\n' "$WORK" >fakebin/fusermount3
  chmod 0755 fakebin fakebin/fusermount3
  chmod 0777 "$WORK"                    # for fake-ran
  PATH="$WORK/fakebin:$PATH" start_view --user u/dir/a.qcow2
  wait_mounted "$WORK/u/dir/a.qcow2"
  stop_view INT
  [ ! -e fake-ran ] || fail "the fusermount3 found through PATH was run"
  [ "$FG_STATUS" = 0 ] || fail "exit status $FG_STATUS: $(cat fg.err)"
  nothing_mounted
}

@test "user: a failing fusermount3 is reported as it failed, not as busy; no hang" {
  needs_fusectl
  user_dir
  make_qcow2 u/dir/a.qcow2
  chown "$TEST_USER": u/dir/a.qcow2
  start_view --user u/dir/a.qcow2
  wait_mounted "$WORK/u/dir/a.qcow2"
  write_pattern --user u/dir/a.qcow2
  # fusermount3 -u must enter the directory as the user: make it fail
  chmod 0 u/dir
  stop_view INT
  [ "$FG_STATUS" = 1 ] || fail "exit status $FG_STATUS: $(cat fg.err)"
  grep -q "fusermount3 exited with status 1: .*Permission denied" fg.err ||
    fail "fusermount3's own message is not reported: $(cat fg.err)"
  ! grep -qi "busy" fg.err || fail "reported as busy: $(cat fg.err)"
  grep -q "aborted the view's FUSE connection" fg.err ||
    fail "the connection was not aborted: $(cat fg.err)"
  chmod 0755 u/dir
  run runuser -u "$TEST_USER" -- stat u/dir/a.qcow2
  assert_failure
  assert_output --partial "not connected"
  umount u/dir/a.qcow2
  nothing_mounted
  image_is_right u/dir/a.qcow2
}

@test "user: the file swapped while fusermount3 mounts: the view is refused and taken off" {
  requires strace
  user_dir
  make_qcow2 u/dir/a.qcow2
  echo "not the image" >u/other
  chown "$TEST_USER": u/dir/a.qcow2 u/other
  # fusermount3 looks the name up again itself: hold it for 2 s on its
  # first setfsuid (before it resolves the path) and swap meanwhile
  ASAN_OPTIONS=detect_leaks=0 strace -f -o "$WORK/trace" \
    -e trace=execve,setfsuid \
    -e inject=setfsuid:delay_enter=2000000:when=1 \
    setpriv --reuid="$TEST_USER" --regid="$TEST_USER" --init-groups \
    "$FDE" u/dir/a.qcow2 >"$WORK/fg.out" 2>"$WORK/fg.err" 3>&- &
  local strace_pid=$! i status=0 pid
  echo "$strace_pid" >"$WORK/strace.pid"
  for i in $(seq 100); do
    pid=$(pgrep -P "$strace_pid" | head -1)
    [ -n "$pid" ] && break
    sleep 0.02
  done
  echo "$pid" >"$WORK/fg-$pid.pid"      # setpriv execs the program
  for i in $(seq 250); do
    grep -q '^[0-9]* *execve("[^"]*fusermount3"' "$WORK/trace" 2>/dev/null &&
      break
    sleep 0.02
  done
  grep -q fusermount3 "$WORK/trace" || fail "fusermount3 did not run"
  runuser -u "$TEST_USER" -- mv u/dir/a.qcow2 u/moved.qcow2
  runuser -u "$TEST_USER" -- mv u/other u/dir/a.qcow2
  wait_pid_gone "$pid" ||
    fail "still running: the view went on $(grep -F "$WORK" /proc/self/mountinfo)"
  wait "$strace_pid" || status=$?
  [ "$status" = 1 ] || fail "exit status $status: $(cat fg.err)"
  grep -q "the view landed on another file, $WORK/u/dir/a.qcow2" fg.err ||
    fail "no message: $(cat fg.err)"
  nothing_mounted
  [ "$(cat u/dir/a.qcow2)" = "not the image" ] || fail "the other file changed"
  run qemu-img check u/moved.qcow2
  assert_success
}
