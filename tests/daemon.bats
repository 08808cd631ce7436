#!/usr/bin/env bats
# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
# Life cycle of an export: daemonizing, pid file, signals, foreground mode,
# refusals, several images, -m.

load helpers

setup() { common_setup; }
teardown() {
  exec 7<&- 2>/dev/null  # a view held open by a test
  common_teardown
}

# A small raw image whose `file` description is distinctive.
make_image() {
  requires sfdisk
  make_dos_image "$1" 16
}

@test "-dp with relative image and pid file from another cwd; SIGINT reverts" {
  requires file
  make_image img
  mkdir sub
  local ino before
  ino=$(stat -c %i img)
  before=$(file -b img)
  cd sub
  run "$FDE" -dp ../fde.pid ../img 3>&-
  assert_success
  cd "$WORK"
  [ -f fde.pid ] || fail "no pid file in $WORK after -d returned"
  is_mounted "$WORK/img" || fail "$WORK/img is not a mount point"
  local pid
  pid=$(cat fde.pid)
  [ "$(stat -c %i img)" != "$ino" ] || fail "the path still shows the image file"
  kill -INT "$pid"
  wait_pid_gone "$pid"
  wait_unmounted "$WORK/img"
  [ ! -e fde.pid ] || fail "pid file left behind"
  [ "$(stat -c %i img)" = "$ino" ] || fail "inode after revert differs from the original"
  [ "$(file -b img)" = "$before" ] || fail "file(1) says '$(file -b img)', before: '$before'"
  nothing_mounted
}

@test "-d -p with absolute paths" {
  truncate -s 4M img
  run "$FDE" -d -p "$WORK/abs.pid" "$WORK/img" 3>&-
  assert_success
  is_mounted "$WORK/img" || fail "not mounted"
  [ "$(cat "$WORK/abs.pid")" -gt 1 ] || fail "bad pid file: $(cat "$WORK/abs.pid")"
  kill -INT "$(cat "$WORK/abs.pid")"
  wait_gone "$WORK/abs.pid"
  wait_unmounted "$WORK/img"
  [ ! -e "$WORK/abs.pid" ] || fail "pid file left behind"
}

@test "the view is live the moment -d returns" {
  truncate -s 3M img
  printf 'X' | dd of=img bs=1 seek=3000000 conv=notrunc status=none
  truncate -s 3M img
  # the original is 3 MiB; a dos label would not change the size, so make
  # the check count: the view's inode is the FUSE root (1)
  "$FDE" -dp fde.pid img 3>&-
  # no sleep, no polling
  grep -q " $WORK/img " /proc/self/mountinfo || fail "not in mountinfo when -d returned"
  [ "$(stat -c '%i %s' img)" = "1 3145728" ] || fail "stat right after -d: $(stat -c '%i %s' img)"
  [ "$(dd if=img bs=1 skip=3000000 count=1 status=none)" = X ] || fail "cannot read the view"
}

@test "pid file holds the daemon's pid and is removed after exit" {
  truncate -s 1M img
  start_export img
  [[ "$EXPORT_PID" =~ ^[0-9]+$ ]] || fail "pid file content: '$EXPORT_PID'"
  alive "$EXPORT_PID" || fail "no process $EXPORT_PID"
  [ "$(cat /proc/"$EXPORT_PID"/comm)" = fuse-disk-expor ] ||
    fail "process $EXPORT_PID is $(cat /proc/"$EXPORT_PID"/comm)"
  # the daemon is the process serving the view: its cwd is /
  [ "$(readlink /proc/"$EXPORT_PID"/cwd)" = / ] || fail "daemon did not chdir /"
  stop_export INT
  wait_unmounted "$WORK/img"
}

@test "-d: SIGTERM and SIGHUP revert too" {
  truncate -s 1M img
  local ino sig
  ino=$(stat -c %i img)
  for sig in TERM HUP; do
    start_export img
    is_mounted "$WORK/img" || fail "not mounted"
    stop_export "$sig"
    wait_unmounted "$WORK/img"
    [ "$(stat -c %i img)" = "$ino" ] || fail "not reverted after SIG$sig"
  done
}

@test "foreground: prints the live line, SIGINT/SIGTERM/SIGHUP revert with status 0" {
  truncate -s 1M img
  local ino sig rc
  ino=$(stat -c %i img)
  for sig in INT TERM HUP; do
    start_fg img
    # the announcement comes once the view is live
    local i
    for i in $(seq 50); do
      grep -q "press ^C to revert" fg.out && break
      sleep 0.1
    done
    run cat fg.out
    assert_line "img: raw image shown as a raw disk on $WORK/img; press ^C to revert"
    kill -"$sig" "$FG_PID"
    rc=0
    wait "$FG_PID" || rc=$?
    [ "$rc" = 0 ] || fail "exit status $rc after SIG$sig; stderr: $(cat fg.err)"
    ! is_mounted "$WORK/img" || fail "still mounted after SIG$sig"
    [ "$(stat -c %i img)" = "$ino" ] || fail "not reverted after SIG$sig"
  done
}

@test "foreground with -p: pid file written while live, removed on exit" {
  truncate -s 1M img
  start_fg -p fg.pidfile img
  for _ in $(seq 50); do [ -s fg.pidfile ] && break; sleep 0.1; done
  [ "$(cat fg.pidfile)" = "$FG_PID" ] || fail "pid file: '$(cat fg.pidfile)', pid $FG_PID"
  kill -INT "$FG_PID"
  wait "$FG_PID"
  [ ! -e fg.pidfile ] || fail "pid file left behind"
}

@test "a missing image: exit 3, a message, no mount, no pid file" {
  run "$FDE" -dp fde.pid nosuch.img 3>&-
  assert_failure 3
  assert_output --partial "nosuch.img"
  [ ! -e fde.pid ] || fail "pid file written"
  nothing_mounted
}

@test "a directory: exit 3, a message, no mount, no pid file" {
  mkdir dir.img
  run "$FDE" -dp fde.pid dir.img 3>&-
  assert_failure 3
  assert_output --partial "dir.img"
  assert_output --regexp "[Dd]irectory|not a regular file"
  [ ! -e fde.pid ] || fail "pid file written"
  nothing_mounted
}

@test "an unwritable pid file: nonzero, a message, no mount, no pid file" {
  truncate -s 1M img
  local ino
  ino=$(stat -c %i img)
  run "$FDE" -dp nodir/fde.pid img 3>&-
  assert_failure
  assert_output --partial "nodir/fde.pid"
  [ ! -e nodir ] || fail "nodir appeared"
  nothing_mounted
  [ "$(stat -c %i img)" = "$ino" ] || fail "the path does not show the image"
  # in the foreground too
  run "$FDE" -p nodir/fde.pid img 3>&-
  assert_failure
  assert_output --partial "pid file"
  nothing_mounted
}

@test "a second export of the same path is refused fast (exit 4); the first keeps working" {
  truncate -s 2M img
  printf 'first' | dd of=img conv=notrunc status=none
  start_export img
  run timeout -k 2 5 "$FDE" -dp second.pid img 3>&-
  [ "$status" != 124 ] || fail "the second export hung"
  assert_failure 4
  assert_output --partial "already exported"
  [ ! -e second.pid ] || fail "the second export wrote a pid file"
  # relative path from elsewhere, in the foreground, and with -m onto it
  cd /
  run timeout -k 2 5 "$FDE" "${WORK#/}/img" 3>&-
  assert_failure 4
  cd "$WORK"
  truncate -s 1M other
  run timeout -k 2 5 "$FDE" -m img other 3>&-
  assert_failure 4
  # the first export is intact
  alive "$EXPORT_PID" || fail "the first daemon died"
  [ "$(head -c 5 img)" = first ] || fail "the view no longer reads"
  [ "$(grep -c " $WORK/img " /proc/self/mountinfo)" = 1 ] || fail "mounted twice"
  stop_export INT
  wait_unmounted "$WORK/img"
}

# Start an export in the foreground and kill -9 it: its mount stays behind,
# dead.
make_dead_mount() {
  start_fg img
  kill -9 "$FG_PID"
  # never `wait` blindly: a process stuck in the kernel would hang the suite
  local i
  for i in $(seq 30); do
    alive "$FG_PID" || break
    sleep 0.1
  done
  ! alive "$FG_PID" ||
    fail "the exporter did not die on kill -9; its threads (tid:state:wchan): $(thread_states "$FG_PID")"
  { wait "$FG_PID"; } 2>/dev/null || true
  is_mounted "$WORK/img" || fail "the mount vanished with the process"
}

# Poll until plain stat(2) on $1 fails with ENOTCONN (the kernel's cached
# attributes of the dead mount have expired).
wait_enotconn() {
  "$PYTHON" - "$1" <<'PY'
import errno, os, sys, time
for _ in range(100):
    try:
        os.stat(sys.argv[1])
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            sys.exit(0)
        raise
    time.sleep(0.1)
sys.exit("stat never failed with ENOTCONN")
PY
}

@test "a dead mount is reported with exit 4 and the fusermount3 -u command" {
  requires fusermount3
  requires_python
  truncate -s 1M img
  make_dead_mount
  run timeout -s KILL 10 stat img
  assert_output --partial "Transport endpoint is not connected"
  wait_enotconn "$WORK/img"
  run timeout -k 2 10 "$FDE" img 3>&-
  [ "$status" != 124 ] || fail "hung on the dead mount"
  assert_failure 4
  assert_output --partial "fusermount3 -u"
  # the advice works
  fusermount3 -u "$WORK/img"
  nothing_mounted
  run stat -c %s img
  assert_output 1048576
}

@test "a dead mount right after the crash is reported as dead, not as live" {
  requires fusermount3
  truncate -s 1M img
  make_dead_mount
  # at once, while the kernel may still hold the view's attributes
  run timeout -k 2 10 "$FDE" -dp fde.pid img 3>&-
  [ "$status" != 124 ] || fail "hung on the dead mount"
  assert_failure 4
  refute_output --partial "already exported"
  assert_output --partial "fusermount3 -u"
  fusermount3 -u "$WORK/img"
  nothing_mounted
}

@test "several images: all live, all reverted on one SIGINT" {
  truncate -s 1M a.img
  truncate -s 2M b.img
  local ia ib
  ia=$(stat -c %i a.img)
  ib=$(stat -c %i b.img)
  start_export a.img b.img
  is_mounted "$WORK/a.img" || fail "a.img not mounted"
  is_mounted "$WORK/b.img" || fail "b.img not mounted"
  [ "$(stat -c %s b.img)" = 2097152 ] || fail "b.img view size $(stat -c %s b.img)"
  stop_export INT
  ! is_mounted "$WORK/a.img" || fail "a.img still mounted"
  ! is_mounted "$WORK/b.img" || fail "b.img still mounted"
  [ "$(stat -c %i a.img)" = "$ia" ] && [ "$(stat -c %i b.img)" = "$ib" ] ||
    fail "not reverted"
}

@test "several images in the foreground: one SIGINT reverts all" {
  truncate -s 1M a.img b.img
  start_fg a.img b.img
  local i
  for i in $(seq 50); do
    grep -q "press ^C to revert" fg.out && break
    sleep 0.1
  done
  is_mounted "$WORK/a.img" && is_mounted "$WORK/b.img" ||
    fail "not both live when the line was printed"
  run cat fg.out
  assert_line "a.img: raw image shown as a raw disk on $WORK/a.img; b.img: raw image shown as a raw disk on $WORK/b.img; press ^C to revert"
  kill -INT "$FG_PID"
  wait "$FG_PID"
  nothing_mounted
}

@test "several images, the second missing: nonzero and the first is not left mounted" {
  truncate -s 1M a.img
  run "$FDE" -dp fde.pid a.img missing.img 3>&-
  assert_failure
  assert_output --partial "missing.img"
  nothing_mounted
  [ ! -e fde.pid ] || fail "pid file written"
  run "$FDE" a.img missing.img 3>&-
  assert_failure
  nothing_mounted
}

@test "several images, the second refused at mount time: the first is reverted" {
  truncate -s 1M a.img b.img
  start_export b.img
  local b_pid=$EXPORT_PID
  # b.img is already exported: refused; a.img must not stay mounted
  run "$FDE" -dp two.pid a.img b.img 3>&-
  assert_failure 4
  ! is_mounted "$WORK/a.img" || fail "a.img left mounted"
  alive "$b_pid" || fail "the b.img export died"
}

@test "the same image twice in one invocation is refused" {
  truncate -s 1M a.img
  run timeout -k 2 5 "$FDE" -dp fde.pid a.img ./a.img 3>&-
  assert_failure
  nothing_mounted
}

@test "-m shows the view on another file; the image path is untouched; revert restores both" {
  requires file
  make_image img
  printf 'target file\n' >target
  local img_ino tgt_ino
  img_ino=$(stat -c %i img)
  tgt_ino=$(stat -c %i target)
  start_export -m target img
  is_mounted "$WORK/target" || fail "target is not a mount point"
  ! is_mounted "$WORK/img" || fail "the image path was mounted over"
  [ "$(stat -c %i img)" = "$img_ino" ] || fail "the image path changed"
  [ "$(stat -c %s target)" = $((16 << 20)) ] || fail "target size $(stat -c %s target)"
  cmp img target || fail "the view on target differs from the image"
  run file -b target
  assert_output --partial "DOS/MBR boot sector"
  # writes through the view land in the image
  printf 'via target' | dd of=target bs=1 seek=1048576 conv=notrunc status=none
  stop_export INT
  wait_unmounted "$WORK/target"
  [ "$(stat -c %i target)" = "$tgt_ino" ] || fail "target inode changed"
  [ "$(cat target)" = "target file" ] || fail "target content changed: $(head -c 40 target)"
  [ "$(dd if=img bs=1 skip=1048576 count=10 status=none)" = "via target" ] ||
    fail "the write through -m did not reach the image"
}

@test "-m onto a missing file or a directory is refused, nothing mounted" {
  truncate -s 1M img
  mkdir dir
  run "$FDE" -m nosuch img 3>&-
  assert_failure
  run "$FDE" -m dir img 3>&-
  assert_failure
  nothing_mounted
}

@test "-q: the foreground prints nothing on stdout" {
  truncate -s 1M img
  start_fg -q img
  kill -INT "$FG_PID"
  wait "$FG_PID" || fail "exit status $?"
  [ ! -s fg.out ] || fail "stdout: $(cat fg.out)"
}

@test "a path with a space and a comma: exported, refused twice, reverted" {
  local img="$WORK/my disk,1.img"
  truncate -s 1M "$img"
  local ino
  ino=$(stat -c %i "$img")
  start_export "$img"
  [ "$(stat -c '%i %s' "$img")" = "1 1048576" ] || fail "not the view: $(stat -c '%i %s' "$img")"
  run timeout -k 2 5 "$FDE" "$img" 3>&-
  assert_failure 4
  assert_output --partial "already exported"
  stop_export
  [ "$(stat -c %i "$img")" = "$ino" ] || fail "not reverted"
  nothing_mounted
}

@test "a view still open at SIGINT: the path reverts at once, the open file works until closed" {
  truncate -s 1M img
  printf 'held' | dd of=img conv=notrunc status=none
  local ino
  ino=$(stat -c %i img)
  start_fg img
  exec 7<img
  kill -INT "$FG_PID"
  wait_unmounted "$WORK/img"
  [ "$(stat -c %i img)" = "$ino" ] || fail "the path does not show the image again"
  alive "$FG_PID" || fail "exited while the view was still open"
  [ "$(head -c 4 <&7)" = held ] || fail "the open view no longer reads"
  exec 7<&-
  local rc=0
  wait_pid_gone "$FG_PID" || fail "did not exit once the view was closed"
  wait "$FG_PID" || rc=$?
  [ "$rc" = 0 ] || fail "exit status $rc; stderr: $(cat fg.err)"
}
