#!/usr/bin/env bats
# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
# Root exporting another user's image: the view belongs to the image's
# owner, so every file the chain opens (backing files, symlinks to them,
# files named by a middle layer) must be readable by that owner, checked
# by the kernel as that user (uid, groups, mode, ACLs, search permission on
# every directory); otherwise the export is refused (exit 3), naming the
# file, and nothing is mounted.  When the exporter owns the image, nothing
# changes.

load helpers

setup_file() {
  requires_root
  create_test_user
}

teardown_file() { remove_test_user; }

setup() {
  common_setup
  requires_root
  requires qemu-img
  ensure_test_user
  # the test user may enter the scratch directory; u/ is the user's own
  chmod 0755 "$WORK"
  mkdir "$WORK/u"
  chown "$TEST_USER": "$WORK/u"
  OWNER_UID=$(id -u "$TEST_USER")
  # a host file the user must never see: root's, 0600
  printf 'SECRET-HOST-DATA' >"$WORK/secret"
  truncate -s 1M "$WORK/secret"
  chmod 0600 "$WORK/secret"
}

teardown() { common_teardown; }

# user_image NAME BACKING FMT: $WORK/u/NAME, a 1 MiB qcow2 owned by the
# test user with backing name BACKING of format FMT ("" for none
# recorded: the backing-format extension is renamed to an unknown type,
# which QEMU and we ignore, so the backing layer is probed).
user_image() {
  local img="$WORK/u/$1" fmt=${3:-raw}
  qemu-img create -q -f qcow2 -u -b "$2" -F "$fmt" "$img" 1M || return 1
  if [ -z "$3" ] && [ $# -ge 3 ]; then
    local type off
    read -r type off _ < <("$PYTHON" "$BATS_TEST_DIRNAME/qcow2-poke.py" "$img" exts)
    [ "$type" = 0xe2792aca ] || { echo "# no backing format extension in $img" >&2; return 1; }
    "$PYTHON" "$BATS_TEST_DIRNAME/qcow2-poke.py" "$img" poke "$off" 4 0x0fde0001 || return 1
  fi
  chown "$TEST_USER": "$img"
}

# refused IMAGE FILE: exporting IMAGE as root fails with exit 3 and a
# one-line message naming IMAGE and FILE as not readable by the owner;
# nothing is mounted, no pid file is written.
refused() {
  run "$FDE" -d -p "$WORK/fde.pid" "$1" 3>&-
  [ "$status" = 3 ] || fail "exit $status, not 3: $output"
  assert_output --partial "$1"
  assert_output --partial "backing file $2"
  assert_output --partial "not readable by the image's owner (uid $OWNER_UID)"
  [ "${#lines[@]}" = 1 ] || fail "not one line: $output"
  [ ! -e "$WORK/fde.pid" ] || fail "pid file written"
  nothing_mounted
}

# allowed IMAGE BYTES: root exports IMAGE, the owner reads BYTES at its
# start through the view, and the export reverts cleanly.
allowed() {
  start_export "$1"
  run as_user head -c "${#2}" "$1"
  assert_success
  assert_output "$2"
  stop_export
  wait_unmounted "$1"
}

@test "owner: a raw backing file the owner cannot read (root's 0600 file) is refused" {
  user_image x.qcow2 "$WORK/secret" raw
  refused "$WORK/u/x.qcow2" "$WORK/secret"
}

@test "owner: a backing symlink to a file the owner cannot read is refused" {
  as_user ln -s "$WORK/secret" "$WORK/u/link"
  user_image x.qcow2 link raw
  refused "$WORK/u/x.qcow2" "$WORK/u/link"
}

@test "owner: a middle qcow2 layer without a backing format naming such a file is refused" {
  user_image mid.qcow2 "$WORK/secret" ""
  run qemu-img info "$WORK/u/mid.qcow2"
  refute_output --partial "backing file format"
  user_image x.qcow2 mid.qcow2 qcow2
  refused "$WORK/u/x.qcow2" "$WORK/secret"
  # the same with no format recorded on the top layer either
  user_image y.qcow2 mid.qcow2 ""
  refused "$WORK/u/y.qcow2" "$WORK/secret"
}

@test "owner: a readable file in a directory the owner cannot search is refused" {
  mkdir -m 0700 "$WORK/closed"
  printf 'public' >"$WORK/closed/pub"
  truncate -s 1M "$WORK/closed/pub"
  chmod 0644 "$WORK/closed/pub"
  user_image x.qcow2 "$WORK/closed/pub" raw
  refused "$WORK/u/x.qcow2" "$WORK/closed/pub"
}

@test "owner: an ACL entry denying the owner is obeyed, though the mode allows others" {
  requires setfacl
  printf 'acl-denied' >"$WORK/aclno"
  truncate -s 1M "$WORK/aclno"
  chmod 0644 "$WORK/aclno"
  setfacl -m "u:$TEST_USER:---" "$WORK/aclno" 2>/dev/null ||
    skip "no POSIX ACLs on $(df --output=fstype "$WORK" | tail -n1)"
  user_image x.qcow2 "$WORK/aclno" raw
  refused "$WORK/u/x.qcow2" "$WORK/aclno"
}

# Names that reach the exporting process's own state through /proc/self
# (its descriptors, its working directory) must not open anything the
# owner could not reach: $WORK/closed/pub is 0644 but in a 0700 directory.
closed_pub() {
  mkdir -m 0700 "$WORK/closed"
  printf 'behind-closed-dir' >"$WORK/closed/pub"
  chmod 0644 "$WORK/closed/pub"
}

# refused_for IMAGE FILE: exit 3, one line naming IMAGE and FILE, nothing
# mounted (whatever the reason the owner's open failed).
refused_for() {
  [ "$status" = 3 ] || fail "exit $status, not 3: $output"
  assert_output --partial "$1"
  assert_output --partial "backing file $2"
  [ "${#lines[@]}" = 1 ] || fail "not one line: $output"
  nothing_mounted
}

@test "owner: /proc/self/fd/N does not reopen a descriptor the exporter inherited" {
  closed_pub
  user_image x.qcow2 /proc/self/fd/7 raw
  run "$FDE" -d -p "$WORK/fde.pid" "$WORK/u/x.qcow2" 7<"$WORK/closed/pub" 3>&-
  refused_for "$WORK/u/x.qcow2" /proc/self/fd/7
}

@test "owner: /proc/self/cwd does not enter the exporter's working directory" {
  closed_pub
  user_image x.qcow2 /proc/self/cwd/pub raw
  run bash -c "cd '$WORK/closed' && exec '$FDE' -d -p '$WORK/fde.pid' '$WORK/u/x.qcow2' 3>&-"
  refused_for "$WORK/u/x.qcow2" /proc/self/cwd/pub
}

@test "owner: a FIFO named as a backing file does not hang the check and is refused" {
  as_user mkfifo "$WORK/u/fifo"
  user_image x.qcow2 fifo raw
  run timeout 20 "$FDE" -d -p "$WORK/fde.pid" "$WORK/u/x.qcow2" 3>&-
  [ "$status" = 3 ] || fail "exit $status, not 3: $output"
  assert_output --partial "backing file $WORK/u/fifo is not a regular file"
  nothing_mounted
}

@test "owner: a file readable through one of the owner's supplementary groups is allowed" {
  printf 'group-data' >"$WORK/grp"
  truncate -s 1M "$WORK/grp"
  chgrp "$TEST_GROUP" "$WORK/grp"
  chmod 0640 "$WORK/grp"
  user_image x.qcow2 "$WORK/grp" raw
  allowed "$WORK/u/x.qcow2" group-data
}

@test "owner: a file readable only through an ACL entry for the owner is allowed" {
  requires setfacl
  printf 'acl-granted' >"$WORK/aclyes"
  truncate -s 1M "$WORK/aclyes"
  chmod 0600 "$WORK/aclyes"
  setfacl -m "u:$TEST_USER:r" "$WORK/aclyes" 2>/dev/null ||
    skip "no POSIX ACLs on $(df --output=fstype "$WORK" | tail -n1)"
  user_image x.qcow2 "$WORK/aclyes" raw
  allowed "$WORK/u/x.qcow2" acl-granted
}

@test "owner: the owner's own chain (qcow2 over qcow2 over raw, 0600 files) is allowed" {
  printf 'own-data' >"$WORK/u/base.raw"
  truncate -s 1M "$WORK/u/base.raw"
  chown "$TEST_USER": "$WORK/u/base.raw"
  chmod 0600 "$WORK/u/base.raw"
  user_image mid.qcow2 base.raw raw
  user_image x.qcow2 mid.qcow2 qcow2
  chmod 0600 "$WORK/u/mid.qcow2" "$WORK/u/x.qcow2"
  # given relative, as a user would type it: the check resolves it from /
  cd "$WORK/u"
  start_export x.qcow2
  run as_user head -c 8 "$WORK/u/x.qcow2"
  assert_output own-data
  stop_export
  wait_unmounted "$WORK/u/x.qcow2"
}

@test "owner: root exporting root's own image still reads root's files" {
  mkdir -m 0700 "$WORK/rootonly"
  qemu-img create -q -f qcow2 -u -b "$WORK/secret" -F raw "$WORK/rootonly/r.qcow2" 1M
  start_export "$WORK/rootonly/r.qcow2"
  [ "$(head -c 16 "$WORK/rootonly/r.qcow2")" = SECRET-HOST-DATA ] ||
    fail "root's export of root's image does not show its backing file"
  stop_export
}

@test "owner: root exporting a user's symlink to root's file: the view is root's, not the user's" {
  as_user ln -s "$WORK/secret" "$WORK/u/top.img"
  start_export -f raw "$WORK/u/top.img"
  # the image is the file opened, /secret: the view is on it and is root's
  is_mounted "$WORK/secret" || fail "the view is not on the symlink's target"
  run stat -c '%U %a' "$WORK/secret"
  assert_output "root 600"
  run as_user head -c 6 "$WORK/secret"
  assert_failure
  assert_output --partial "Permission denied"
  stop_export
}

@test "owner: a user exporting someone else's image cannot check as its owner: a chain is refused" {
  # root's image, writable by all, with a backing file all may read: the
  # user is not its owner and cannot take root's credentials
  printf 'public' >"$WORK/pub"
  chmod 0644 "$WORK/pub"
  qemu-img create -q -f qcow2 -u -b "$WORK/pub" -F raw "$WORK/u/root.qcow2" 1M
  chmod 0666 "$WORK/u/root.qcow2"
  run as_user "$FDE" --probe "$WORK/u/root.qcow2"
  [ "$status" = 3 ] || fail "exit $status, not 3: $output"
  assert_output --partial "backing file $WORK/pub: cannot take the credentials of the image's owner (uid 0)"
  nothing_mounted
}
