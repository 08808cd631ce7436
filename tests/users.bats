#!/usr/bin/env bats
# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
# Other users: allow_other, default_permissions, and exports run by an
# unprivileged user through fusermount3.

load helpers

# One new user for the whole suite, removed at the end whatever happened;
# /etc/fuse.conf saved first and restored byte for byte after every test.
setup_file() {
  requires_root
  save_fuse_conf
  create_test_user
}

teardown_file() {
  local ok=0
  check_fuse_conf_restored || ok=1
  remove_test_user || ok=1
  return $ok
}

setup() {
  common_setup
  requires_root
  ensure_test_user
  as_user "$FDE" --version >/dev/null 2>&1 ||
    skip "$TEST_USER cannot run $FDE (a directory on its path is closed)"
  # let the test user reach files in the scratch directory
  chmod 0755 "$WORK"
  mkdir "$WORK/u"
  chown "$TEST_USER": "$WORK/u"
}

teardown() {
  restore_fuse_conf
  common_teardown
}

# Can the test user mount FUSE file systems at all here?
requires_user_fuse() {
  requires fusermount3
  as_user test -r /dev/fuse -a -w /dev/fuse ||
    skip "$TEST_USER cannot open /dev/fuse ($(stat -c '%A %U' /dev/fuse))"
  [ -u "$(command -v fusermount3)" ] || skip "fusermount3 is not setuid"
}

# Start an export as the test user, in $WORK/u; EXPORT_PID set, and the
# pid copied to $WORK so that common_teardown stops it.
start_user_export() {
  local out rc=0
  out=$(cd "$WORK/u" && as_user "$FDE" -dp user.pid "$@" 2>&1 3>&-) || rc=$?
  [ "$rc" = 0 ] || { echo "# export as $TEST_USER failed ($rc): $out" >&2; return 1; }
  EXPORT_PIDFILE="$WORK/u/user.pid"
  EXPORT_PID=$(cat "$EXPORT_PIDFILE")
  echo "$EXPORT_PID" >"$WORK/user-copy.pid"
}

mount_options_of() {
  awk -v p="$1" '$5 == p { print $NF }' /proc/self/mountinfo
}

@test "--allow-other=auto as root: other users may read the view when its mode lets them" {
  truncate -s 1M img
  printf 'shared' | dd of=img conv=notrunc status=none
  start_export --allow-other=auto img
  [[ ",$(mount_options_of "$WORK/img")," == *,allow_other,* ]] ||
    fail "no allow_other: $(mount_options_of "$WORK/img")"
  # the view is 0600 root: default_permissions refuses the other user
  run as_user head -c 6 "$WORK/img"
  assert_failure
  assert_output --partial "Permission denied"
  # open it up through the view
  chmod 0644 img
  run as_user head -c 6 "$WORK/img"
  assert_success
  assert_output "shared"
  # but not for writing
  run as_user dd of="$WORK/img" conv=notrunc status=none < /dev/null
  assert_failure
  assert_output --partial "Permission denied"
  stop_export
}

@test "--allow-other=on as root: the image's owner (another user) reads the 0600 view" {
  truncate -s 1M img
  printf 'mine' | dd of=img conv=notrunc status=none
  chown "$TEST_USER": img
  start_export --allow-other=on img
  run stat -c '%a %U' img
  assert_output "600 $TEST_USER"
  run as_user head -c 4 "$WORK/img"
  assert_success
  assert_output "mine"
  # the owner may write too
  run as_user dd of="$WORK/img" bs=1 seek=100 conv=notrunc status=none < <(printf 'w')
  assert_success
  stop_export
  [ "$(dd if=img bs=1 skip=100 count=1 status=none)" = w ] || fail "the owner's write is not in the image"
}

@test "--allow-other=off as root: other users get Permission denied even when the mode allows" {
  truncate -s 1M img
  chown "$TEST_USER": img
  start_export --allow-other=off img
  [[ ",$(mount_options_of "$WORK/img")," != *,allow_other,* ]] ||
    fail "allow_other is set: $(mount_options_of "$WORK/img")"
  chmod 0666 img
  run as_user head -c 4 "$WORK/img"
  assert_failure
  assert_output --partial "Permission denied"
  # root, the mounter, still reads it
  head -c 4 img >/dev/null || fail "root cannot read its own export"
  stop_export
}

@test "an unprivileged user runs the whole -dp cycle through fusermount3" {
  requires_user_fuse
  local img="$WORK/u/disk.img"
  as_user truncate -s 2M "$img"
  printf 'user data' | as_user dd of="$img" conv=notrunc status=none
  local ino
  ino=$(stat -c %i "$img")
  start_user_export disk.img
  is_mounted "$img" || fail "not mounted"
  grep -q "user_id=$(id -u "$TEST_USER")" <<<"$(mount_options_of "$img")" ||
    fail "not mounted as $TEST_USER: $(mount_options_of "$img")"
  [ "$(stat -c %u "/proc/$EXPORT_PID")" = "$(id -u "$TEST_USER")" ] ||
    fail "the daemon does not run as $TEST_USER"
  run as_user head -c 9 "$img"
  assert_output "user data"
  printf 'more' | as_user dd of="$img" bs=1 seek=512 conv=notrunc status=none ||
    fail "the user cannot write through the view"
  kill -INT "$EXPORT_PID"
  wait_pid_gone "$EXPORT_PID"
  wait_unmounted "$img"
  [ ! -e "$EXPORT_PIDFILE" ] || fail "pid file left behind"
  [ "$(stat -c %i "$img")" = "$ino" ] || fail "not reverted"
  [ "$(dd if="$img" bs=1 skip=512 count=4 status=none)" = more ] || fail "the write is not in the image"
  nothing_mounted
}

@test "as a user without user_allow_other, --allow-other=on fails clearly" {
  set_user_allow_other 0
  as_user truncate -s 1M "$WORK/u/disk.img"
  run bash -c "cd '$WORK/u' && runuser -u $TEST_USER -- '$FDE' -dp user.pid --allow-other=on disk.img 3>&-"
  assert_failure
  assert_output --partial "user_allow_other"
  assert_output --partial "/etc/fuse.conf"
  [ ! -e "$WORK/u/user.pid" ] || fail "pid file written"
  nothing_mounted
}

@test "as a user, --allow-other=auto follows user_allow_other in /etc/fuse.conf" {
  requires_user_fuse
  local img="$WORK/u/disk.img"
  as_user truncate -s 1M "$img"
  printf 'abcd' | as_user dd of="$img" conv=notrunc status=none
  # without it: off, so even root is refused
  set_user_allow_other 0
  start_user_export disk.img
  run head -c 4 "$img"
  assert_failure
  assert_output --partial "Permission denied"
  kill -INT "$EXPORT_PID"
  wait_pid_gone "$EXPORT_PID"
  wait_unmounted "$img"
  # with it: on, and root reads (mode 0600, but root passes default_permissions)
  set_user_allow_other 1
  start_user_export disk.img
  [[ ",$(mount_options_of "$img")," == *,allow_other,* ]] ||
    fail "no allow_other: $(mount_options_of "$img")"
  run head -c 4 "$img"
  assert_success
  assert_output abcd
  kill -INT "$EXPORT_PID"
  wait_pid_gone "$EXPORT_PID"
  wait_unmounted "$img"
}

# fusermount3 needs write access to the mount point, even for -r: a user
# who cannot write the image cannot export it at all, and the message
# should say that write permission is needed (not suggest -r).
make_root_image() {
  truncate -s 1M "$WORK/u/root.img"
  chmod 0644 "$WORK/u/root.img"
}

@test "a user exporting an image they cannot write: refused, told write permission is needed" {
  make_root_image
  run bash -c "cd '$WORK/u' && runuser -u $TEST_USER -- '$FDE' -dp user.pid root.img 3>&-"
  assert_failure
  nothing_mounted
  [ ! -e "$WORK/u/user.pid" ] || fail "pid file written"
  assert_output --partial "root.img"
  [[ "$output" =~ write\ (permission|access) ]] ||
    fail "the message does not say write permission is needed: $output"
}

@test "a user exporting an image they cannot write with -r: refused, told write permission is needed" {
  requires_user_fuse
  make_root_image
  run bash -c "cd '$WORK/u' && runuser -u $TEST_USER -- '$FDE' -r -dp user.pid root.img 3>&-"
  assert_failure
  nothing_mounted
  [ ! -e "$WORK/u/user.pid" ] || fail "pid file written"
  [[ "$output" =~ write\ (permission|access) ]] ||
    fail "-r: the message does not say write permission is needed: $output"
}
