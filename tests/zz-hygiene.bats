#!/usr/bin/env bats
# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
# Runs last in `make check`: the suites before it left the machine as they
# found it.  Also checks the teardown's FUSE abort: it ends only the
# connections of the test's own mounts, proved at the moment of aborting.

load helpers

setup() { common_setup; }
teardown() { common_teardown; }

@test "hygiene: no test user, group or /etc/fuse.conf change left by a finished suite" {
  run leftovers_of_finished_suites
  assert_success
  [ -z "$output" ] || fail "left behind:
$output"
}

# A connection number remembered from an earlier mount names, once that
# mount is gone, whatever FUSE mount came next: the abort must look at the
# mounts below $WORK as they are when it aborts.
@test "hygiene: the teardown's abort ends its own hung view and no other FUSE connection" {
  requires_root
  requires_python
  [ -d /sys/fs/fuse/connections ] || skip "no fusectl"
  mkdir "$WORK/mine" "$WORK/other"
  truncate -s 1M "$WORK/mine/a.img" "$WORK/mine/b.img" "$WORK/other/c.img"
  printf 'mine' | dd of="$WORK/mine/b.img" conv=notrunc status=none
  printf 'other' | dd of="$WORK/other/c.img" conv=notrunc status=none
  # a view that ends cleanly: its number is free again at once
  start_export "$WORK/mine/a.img"
  local a_dev
  a_dev=$(awk -v p="$WORK/mine/a.img" '$5 == p { print $3 }' /proc/self/mountinfo)
  stop_export
  wait_unmounted "$WORK/mine/a.img"
  # someone else's view (outside the test's own directory), maybe with
  # that very number, and the test's own view, hung
  start_export "$WORK/other/c.img"
  local other_pid=$EXPORT_PID other_dev
  other_dev=$(awk -v p="$WORK/other/c.img" '$5 == p { print $3 }' /proc/self/mountinfo)
  start_export "$WORK/mine/b.img"
  local mine_pid=$EXPORT_PID
  kill -STOP "$mine_pid"
  timeout 30 head -c 4 "$WORK/mine/b.img" >"$WORK/reader.out" 2>&1 3>&- &
  local reader=$!
  sleep 0.5
  kill -0 "$reader" 2>/dev/null || { kill -CONT "$mine_pid"; fail "the read did not hang on the stopped daemon"; }
  # the test's own directory is mine/
  WORK="$WORK/mine" abort_own_fuse_connections
  local i
  for i in $(seq 100); do
    kill -0 "$reader" 2>/dev/null || break
    sleep 0.1
  done
  kill -CONT "$mine_pid"
  ! kill -0 "$reader" 2>/dev/null || fail "the hung read was not ended by the abort"
  # the other view is untouched, even when it reuses the first number
  if [ "$other_dev" != "$a_dev" ]; then
    echo "# (the number $a_dev was not reused: the other view has $other_dev)" >&3
  fi
  run head -c 5 "$WORK/other/c.img"
  assert_success
  assert_output other
  alive "$other_pid" || fail "the other export died"
}
