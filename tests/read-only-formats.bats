#!/usr/bin/env bats
# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
# Formats served read-only: a row of the table of formats whose backend
# has no can_write (formats/format.h).  Such an image is exported
# read-only without -r, and the live line and -v say why; the image file
# is opened for reading only and holds QEMU's reader lock bytes only, so
# QEMU may read it at the same time but not write it (block/file-posix.c:
# a reader takes "consistent read" and shares it, and does not share
# "write"); a write through the view gets EROFS.  Every format that
# `fuse-disk-export --list-formats` marks read-only is tried; its name is
# QEMU's, so qemu-img makes the images and qemu-io is the other party.

load helpers

setup() {
  requires qemu-img
  requires qemu-io
  requires_root
  common_setup
  FORMATS=$("$FDE" --list-formats 2>&1) || fail "--list-formats: $FORMATS"
  RO_FORMATS=$(awk '$2 == "read-only" { print $1 }' <<<"$FORMATS")
  [ -n "$RO_FORMATS" ] || skip "no format is served read-only"
}

teardown() {
  local p
  for p in "${BG_PIDS[@]:-}"; do
    [ -n "$p" ] && kill "$p" 2>/dev/null
  done
  # an immutable file would outlive rm -rf
  [ -n "${WORK:-}" ] && chattr -i "$WORK"/*.img 2>/dev/null
  common_teardown
}

BG_PIDS=()

# make_image FORMAT FILE: a 16 MiB image from qemu-img with 1 MiB of 0x5a
# at offset 0 (written by qemu-io), or skip the format (return 1).
make_image() {
  qemu-img create -q -f "$1" "$2" 16M 2>/dev/null &&
    qemu-io -f "$1" -c 'write -q -P 0x5a 0 1M' "$2" >/dev/null 2>&1 || {
    echo "# qemu-img cannot make and fill a $1 image; not tried" >&3
    return 1
  }
}

# The live line: wait (up to 10 s) until the foreground export's stdout
# has it (it is printed just after the view appears in the mount table).
live_line() {
  for _ in $(seq 100); do
    grep -q "press ^C to revert" "$WORK/fg.out" && break
    sleep 0.1
  done
  cat "$WORK/fg.out"
}

# How /proc/locks names file $1: MAJOR:MINOR:INODE (hex device numbers).
lock_id() {
  local dev
  dev=$(stat -c %d "$1")
  printf '%02x:%02x:%d' $(((dev >> 8) & 0xfff)) $(((dev & 0xff) | ((dev >> 12) & 0xfff00))) \
    "$(stat -c %i "$1")"
}

# The byte ranges (FIRST-LAST) of the OFD locks held on file id $1,
# sorted, on one line.
lock_bytes() {
  awk -v id="$1" '$2 == "OFDLCK" && $6 == id { print $7 "-" $8 }' /proc/locks |
    sort -n | tr '\n' ' '
}

# The access modes (0 read, 1 write, 2 both) of process $1's descriptors
# of file $2, one per line.
access_modes() {
  local fd want
  want=$(readlink -f "$2")
  for fd in /proc/"$1"/fd/*; do
    [ "$(readlink "$fd")" = "$want" ] || continue
    awk '$1 == "flags:" { print substr($2, length($2)) % 4 }' \
      /proc/"$1"/fdinfo/"${fd##*/}"
  done
}

@test "a read-only format without -r: read-only, said on the live line and by -v, reader locks only, QEMU reads alongside, writes get EROFS" {
  local fmt id sum tried=0
  for fmt in $RO_FORMATS; do
    make_image "$fmt" "x.$fmt" || continue
    tried=$((tried + 1))
    sum=$(sha "x.$fmt")
    id=$(lock_id "x.$fmt")
    touch view
    FG_MOUNT=view start_fg -v -m "$WORK/view" "x.$fmt" ||
      fail "$fmt: not exported without -r"
    # the reason, on the live line and in -v's
    [ "$(live_line)" = "x.$fmt: $fmt image shown as a raw disk on $WORK/view (read-only: $fmt images are served read-only); press ^C to revert" ] ||
      fail "$fmt: live line: $(cat "$WORK/fg.out")"
    grep -qE "^fuse-disk-export: x\.$fmt: $fmt, [0-9]+ bytes \(read-only: $fmt images are served read-only\)$" \
      "$WORK/fg.err" || fail "$fmt: -v: $(cat "$WORK/fg.err")"
    grep -qx "writable: no" "$WORK/fg.err" || fail "$fmt: -v says writable"
    # a read-only mount, the image open for reading only, reader's bytes
    awk -v p="$WORK/view" '$5 == p { exit $6 !~ /^ro(,|$)/ }' /proc/self/mountinfo ||
      fail "$fmt: the view is not mounted read-only"
    [ "$(access_modes "$FG_PID" "x.$fmt" | sort -u)" = 0 ] ||
      fail "$fmt: the image is open for writing: $(access_modes "$FG_PID" "x.$fmt")"
    [ "$(lock_bytes "$id")" = "100-100 201-201 203-203 " ] ||
      fail "$fmt: lock bytes $(lock_bytes "$id") (a reader holds 100, 201, 203)"
    # the view shows the data
    cmp -n 1048576 view <(head -c 1048576 /dev/zero | tr '\0' '\132') ||
      fail "$fmt: the view does not show the data"
    # QEMU reads the image at the same time, and may not write it
    run qemu-io -r -f "$fmt" -c 'read -P 0x5a 0 64k' "x.$fmt"
    assert_success
    refute_output --partial "lock"
    run qemu-io -f "$fmt" -c 'write 0 512' "x.$fmt"
    assert_failure
    assert_output --partial 'Failed to get "write" lock'
    # writes through the view: EROFS
    run dd if=/dev/zero of=view bs=512 count=1 conv=notrunc status=none
    assert_failure
    assert_output --partial "Read-only file system"
    run fallocate -p -o 0 -l 4096 view
    assert_failure
    assert_output --partial "Read-only file system"
    kill -INT "$FG_PID"
    wait "$FG_PID" || fail "$fmt: exit status $?: $(cat "$WORK/fg.err")"
    wait_unmounted "$WORK/view"
    [ "$(sha "x.$fmt")" = "$sum" ] || fail "$fmt: the image changed"
  done
  [ "$tried" -gt 0 ] || skip "qemu-img makes none of: $RO_FORMATS"
}

@test "a read-only format: exported while QEMU reads it, refused while QEMU writes it (exit 3); with -r the line says only (read-only)" {
  local fmt tried=0 qemu
  for fmt in $RO_FORMATS; do
    make_image "$fmt" "x.$fmt" || continue
    tried=$((tried + 1))
    touch view
    # a QEMU reader holding the image: a reader and a reader share it
    rm -f qin
    mkfifo qin
    qemu-io -r -f "$fmt" "x.$fmt" <qin >/dev/null 2>&1 &
    qemu=$!
    BG_PIDS+=($qemu)
    exec 7>qin
    for _ in $(seq 50); do
      grep -q " $(lock_id "x.$fmt") " /proc/locks && break
      sleep 0.1
    done
    run "$FDE" -dp "$WORK/r.pid" -m "$WORK/view" "x.$fmt" 3>&- 7>&-
    assert_success
    kill -INT "$(cat "$WORK/r.pid")"
    wait_gone "$WORK/r.pid"
    wait_unmounted "$WORK/view"
    exec 7>&-
    wait "$qemu" || true
    # a QEMU writer holding it: refused, naming it
    rm -f qin
    mkfifo qin
    qemu-io -f "$fmt" "x.$fmt" <qin >/dev/null 2>&1 &
    qemu=$!
    BG_PIDS+=($qemu)
    exec 7>qin
    for _ in $(seq 50); do
      grep -q " $(lock_id "x.$fmt") " /proc/locks && break
      sleep 0.1
    done
    run "$FDE" -dp "$WORK/w.pid" -m "$WORK/view" "x.$fmt" 3>&- 7>&-
    assert_failure 3
    assert_output --partial "in use by qemu-io (pid $qemu), which holds the write permission"
    [ ! -e "$WORK/w.pid" ] || fail "$fmt: a pid file was written"
    exec 7>&-
    wait "$qemu" || true
    nothing_mounted
    # with -r, the reason is -r's: nothing more is said
    FG_MOUNT=view start_fg -r -m "$WORK/view" "x.$fmt" ||
      fail "$fmt: not exported with -r"
    [ "$(live_line)" = "x.$fmt: $fmt image shown as a raw disk on $WORK/view (read-only); press ^C to revert" ] ||
      fail "$fmt: live line with -r: $(cat "$WORK/fg.out")"
    kill -INT "$FG_PID"
    wait "$FG_PID" || fail "$fmt: exit status $?"
    wait_unmounted "$WORK/view"
  done
  [ "$tried" -gt 0 ] || skip "qemu-img makes none of: $RO_FORMATS"
}

@test "a read-only format needs no write permission: an immutable image is exported without -r; a qcow2 one still asks for -r" {
  requires chattr
  requires qemu-img
  local fmt tried=0
  qemu-img create -q -f qcow2 q.img 16M
  chattr +i q.img 2>/dev/null || skip "chattr +i does not work here"
  run "$FDE" -dp "$WORK/q.pid" q.img 3>&-
  assert_failure 1
  assert_output --partial "q.img: Operation not permitted (use -r for a read-only export)"
  [ ! -e "$WORK/q.pid" ] || fail "a pid file was written"
  for fmt in $RO_FORMATS; do
    make_image "$fmt" "$fmt.img" || continue
    tried=$((tried + 1))
    chattr +i "$fmt.img"
    touch view
    run "$FDE" -dp "$WORK/i.pid" -m "$WORK/view" "$fmt.img" 3>&-
    assert_success
    is_mounted "$WORK/view" || fail "$fmt: not mounted"
    kill -INT "$(cat "$WORK/i.pid")"
    wait_gone "$WORK/i.pid"
    wait_unmounted "$WORK/view"
    chattr -i "$fmt.img"
  done
  nothing_mounted
  [ "$tried" -gt 0 ] || skip "qemu-img makes none of: $RO_FORMATS"
}
