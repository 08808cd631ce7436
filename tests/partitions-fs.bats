#!/usr/bin/env bats
# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
# -P DIR (issue 11), end to end: file systems made, mounted, edited and
# resized in the partition files of the directory view by tools we did not
# write (mkfs.ext4, the kernel's ext4 over a loop device, fuse2fs as an
# ordinary user, resize2fs), tables changed through DIR/disk by sfdisk and
# parted under open descriptors, and the result checked after the revert
# with qemu-img (check, convert), debugfs and e2fsck on the partition's
# range.  tests/demo-partitions.sh, the walk-through, runs here too.

load helpers
load partition-helpers

setup_file() {
  requires_root
  create_test_user
}

teardown_file() { remove_test_user; }

setup() {
  common_setup
  requires_root
  requires qemu-img
  requires sfdisk
  ensure_test_user
  "$FDE" --help | grep -q -e '--partitions=' ||
    fail "$FDE has no --partitions=DIR (-P)"
  # the test user may enter the scratch directory; u/ is the user's own
  chmod 0755 "$WORK"
  mkdir "$WORK/u"
  chown "$TEST_USER": "$WORK/u"
}

teardown() {
  undo_stacked_on_views
  common_teardown
  restore_dev_fuse
}

# /dev/fuse is 0600 on some machines: an ordinary user's export needs it
# open to all.  Changed only if it was not, and put back after the test.
open_dev_fuse() {
  local mode
  mode=$(stat -c %a /dev/fuse)
  if [ "$mode" != 666 ]; then
    DEV_FUSE_MODE=$mode
    chmod 0666 /dev/fuse
  fi
}

restore_dev_fuse() {
  [ -n "${DEV_FUSE_MODE:-}" ] || return 0
  chmod "$DEV_FUSE_MODE" /dev/fuse
  DEV_FUSE_MODE=
}

# What an ordinary user's FUSE mount needs besides /dev/fuse.
requires_user_fuse() {
  requires fusermount3
  [ -u "$(command -v fusermount3)" ] || skip "fusermount3 is not setuid"
  as_user "$FDE" --version >/dev/null 2>&1 ||
    skip "$TEST_USER cannot run $FDE (a directory on its path is closed)"
  open_dev_fuse
}

# in_u COMMAND...: run as the test user in $WORK/u.
in_u() { (cd "$WORK/u" && runuser -u "$TEST_USER" -- "$@" 3>&-); }

# The layout: a 64 MiB disk with a GPT of three partitions, start and size
# in 512-byte sectors.
P1="2048 8192"       # 1 MiB + 4 MiB
P2="10240 65536"     # 5 MiB + 32 MiB
P3="75776 16384"     # 37 MiB + 8 MiB
DISK_SECTORS=131072

# make_disk RAW: the layout, p1 and p3 full of random bytes, p2 empty;
# sparse everywhere else.
make_disk() {
  truncate -s $((DISK_SECTORS * 512)) "$1"
  printf 'label: gpt\nstart=%s, size=%s\nstart=%s, size=%s\nstart=%s, size=%s\n' \
    $P1 $P2 $P3 | sfdisk --quiet "$1" >/dev/null
  local p
  for p in "$P1" "$P3"; do
    set -- "$1" $p
    head -c $(($3 * 512)) /dev/urandom |
      dd of="$1" bs=512 seek="$2" conv=notrunc status=none
  done
}

# listing DIR: the names in DIR, on one line, sorted.
listing() { ls "$1" | sort | tr '\n' ' ' | sed 's/ $//'; }

# only_p2_changed BEFORE AFTER: the raw disks are equal outside p2 (the
# GPT, its backup, p1, p3 and the free space).
only_p2_changed() {
  local s2 n2
  read -r s2 n2 <<<"$P2"
  cmp <(range "$1" 0 "$s2") <(range "$2" 0 "$s2") ||
    fail "sectors before p2 (GPT, p1) changed"
  cmp <(range "$1" $((s2 + n2)) $((DISK_SECTORS - s2 - n2))) \
      <(range "$2" $((s2 + n2)) $((DISK_SECTORS - s2 - n2))) ||
    fail "sectors after p2 (p3, backup GPT) changed"
}

# debugfs_cat FSIMAGE PATH: the file's bytes, read by debugfs.
debugfs_cat() {
  debugfs -R "cat $2" "$1" 2>/dev/null
}

@test "-P: mkfs.ext4 on DIR/p2, loop-mounted and written; debugfs finds the files in the qcow2, p1 and p3 untouched" {
  requires mkfs.ext4
  requires debugfs
  requires losetup
  make_disk disk.raw
  qemu-img convert -O qcow2 disk.raw disk.qcow2
  mkdir parts mnt
  start_export -P "$WORK/parts" disk.qcow2
  is_mounted "$WORK/parts" || fail "parts is not a mount point"
  [ "$(listing parts)" = "disk p1 p2 p3" ] || fail "parts holds: $(listing parts)"
  [ "$(stat -c %s parts/disk)" = $((DISK_SECTORS * 512)) ] || fail "disk: size $(stat -c %s parts/disk)"
  [ "$(stat -c %s parts/p2)" = $((65536 * 512)) ] || fail "p2: size $(stat -c %s parts/p2)"
  mkfs.ext4 -q -F parts/p2
  local dev
  dev=$(losetup -f --show parts/p2) || skip "no loop device available"
  mount "$dev" mnt || { losetup -d "$dev"; skip "cannot mount $dev here"; }
  head -c 3M /dev/urandom >big
  cp big mnt/big
  echo "written through DIR/p2" >mnt/hello
  mkdir mnt/sub
  printf 'second\nfile\n' >mnt/sub/two
  umount mnt
  losetup -d "$dev"
  ! losetup -j parts/p2 | grep -q . || fail "the loop device is still attached"
  stop_export INT
  wait_unmounted "$WORK/parts"
  [ -z "$(ls -A parts)" ] || fail "parts is not the empty directory again: $(ls -A parts)"
  qemu-img check -q disk.qcow2 || fail "qemu-img check finds errors"
  qemu-img convert -O raw disk.qcow2 after.raw
  range after.raw $P2 >p2.img
  e2fsck -f -n p2.img >/dev/null 2>&1 || fail "e2fsck finds errors in p2: $(e2fsck -f -n p2.img 2>&1)"
  cmp <(debugfs_cat p2.img /big) big || fail "/big differs"
  [ "$(debugfs_cat p2.img /hello)" = "written through DIR/p2" ] || fail "/hello: $(debugfs_cat p2.img /hello)"
  [ "$(debugfs_cat p2.img /sub/two)" = "$(printf 'second\nfile')" ] || fail "/sub/two differs"
  only_p2_changed disk.raw after.raw
}

@test "-P as an ordinary user: mkfs.ext4 and fuse2fs -o fakeroot on DIR/p2, a file edited; the edit is in the qcow2" {
  requires fuse2fs
  requires mkfs.ext4
  requires debugfs
  requires_user_fuse
  make_disk "$WORK/u/disk.raw"
  qemu-img convert -O qcow2 "$WORK/u/disk.raw" "$WORK/u/disk.qcow2"
  chown "$TEST_USER": "$WORK/u/disk.qcow2"
  in_u mkdir parts mnt files
  in_u sh -c 'printf "first line\n" >files/notes.txt; head -c 2M /dev/urandom >big'
  in_u "$FDE" -d -p user.pid -P parts disk.qcow2 || fail "the user's export failed"
  EXPORT_PID=$(cat "$WORK/u/user.pid")
  echo "$EXPORT_PID" >"$WORK/user-copy.pid"   # stopped by the teardown
  [ "$(stat -c %u "/proc/$EXPORT_PID")" = "$(id -u "$TEST_USER")" ] ||
    fail "the daemon does not run as $TEST_USER"
  run in_u ls parts
  assert_success
  assert_output "$(printf 'disk\np1\np2\np3')"
  run in_u stat -c '%U %a' parts/p2
  assert_output "$TEST_USER 600"
  in_u mkfs.ext4 -q -F -d files parts/p2
  # without -o fakeroot the file system's root directory (uid 0, made by
  # mkfs) is closed to the user: no file could be created in it
  run in_u fuse2fs -o fakeroot parts/p2 mnt
  assert_success
  in_u sh -c 'echo "edited by $(id -un)" >>mnt/notes.txt && sed -i s/first/1st/ mnt/notes.txt &&
    cp big mnt/big && mkdir mnt/d && echo new >mnt/d/new'
  in_u fusermount3 -u mnt
  kill -INT "$EXPORT_PID"
  wait_pid_gone "$EXPORT_PID" || fail "the export did not exit"
  wait_unmounted "$WORK/u/parts"
  [ ! -e "$WORK/u/user.pid" ] || fail "pid file left behind"
  nothing_mounted
  qemu-img check -q "$WORK/u/disk.qcow2" || fail "qemu-img check finds errors"
  qemu-img convert -O raw "$WORK/u/disk.qcow2" after.raw
  range after.raw $P2 >p2.img
  e2fsck -f -n p2.img >/dev/null 2>&1 || fail "e2fsck finds errors in p2: $(e2fsck -f -n p2.img 2>&1)"
  [ "$(debugfs_cat p2.img /notes.txt)" = "$(printf '1st line\nedited by %s' "$TEST_USER")" ] ||
    fail "/notes.txt: $(debugfs_cat p2.img /notes.txt)"
  cmp <(debugfs_cat p2.img /big) "$WORK/u/big" || fail "/big differs"
  [ "$(debugfs_cat p2.img /d/new)" = new ] || fail "/d/new: $(debugfs_cat p2.img /d/new)"
  only_p2_changed "$WORK/u/disk.raw" after.raw
}

# hold_open FILE TAG OP...: open FILE (read-write if an OP writes) in the
# background, read its first 4 KiB, then wait for $WORK/TAG.go and do
# each OP: read@OFFSET (4 KiB), write@OFFSET (4 KiB of 0xa5), fsync.
# One line per OP, "OP RESULT" (a byte count, "done" or the errno's
# name), goes to $WORK/TAG.out.  The holder's pid is in $WORK/TAG.pid, so
# the teardown ends it.
hold_open() {
  local file=$1 tag=$2
  shift 2
  "$PYTHON" - "$file" "$WORK/$tag" "$@" <<'PY' 3>&- &
import errno, os, sys, time
path, tag, ops = sys.argv[1], sys.argv[2], sys.argv[3:]
writes = any(op.startswith('write') for op in ops)
fd = os.open(path, os.O_RDWR if writes else os.O_RDONLY)
first = len(os.pread(fd, 4096, 0))
open(tag + '.ready', 'w').write('%d\n' % first)
for _ in range(600):
    if os.path.exists(tag + '.go'):
        break
    time.sleep(0.05)
out = []
for op in ops:
    kind, _, off = op.partition('@')
    try:
        if kind == 'read':
            result = len(os.pread(fd, 4096, int(off)))
        elif kind == 'write':
            result = os.pwrite(fd, b'\xa5' * 4096, int(off))
        else:
            os.fsync(fd)
            result = 'done'
    except OSError as e:
        result = errno.errorcode.get(e.errno, str(e.errno))
    out.append('%s %s\n' % (op, result))
open(tag + '.out', 'w').write(''.join(out))
try:
    os.close(fd)
except OSError:
    pass
PY
  echo $! >"$WORK/$tag.pid"
  local i
  for i in $(seq 100); do
    [ -s "$WORK/$tag.ready" ] && return 0
    sleep 0.05
  done
  echo "# $file could not be opened and read" >&2
  return 1
}

# held_result TAG: let the holder go on; print what it got.
held_result() {
  : >"$WORK/$1.go"
  wait_pid_gone "$(cat "$WORK/$1.pid")"
  rm -f "$WORK/$1.pid"
  cat "$WORK/$1.out"
}

@test "-P: sfdisk on DIR/disk deletes p3 and adds p4 over part of it; p3's open descriptor gets EIO, p4 shows its range" {
  requires_python
  make_disk disk.raw
  qemu-img convert -O qcow2 disk.raw disk.qcow2
  mkdir parts
  start_export -P "$WORK/parts" disk.qcow2
  [ "$(listing parts)" = "disk p1 p2 p3" ] || fail "parts holds: $(listing parts)"
  hold_open parts/p3 p3 read@0 write@0 fsync
  sfdisk --quiet --delete parts/disk 3
  [ "$(listing parts)" = "disk p1 p2" ] || fail "after deleting 3, parts holds: $(listing parts)"
  [ ! -e parts/p3 ] || fail "parts/p3 can still be looked up"
  # GPT entry 4 (sfdisk takes the number from the name), 2 MiB into
  # where p3 was and 2 MiB past its end
  printf '%s4 : start=79872, size=20480\n' "$WORK/parts/disk" |
    sfdisk --quiet --append parts/disk
  [ "$(listing parts)" = "disk p1 p2 p4" ] || fail "after adding 4, parts holds: $(listing parts)"
  run held_result p3
  assert_output "$(printf 'read@0 EIO\nwrite@0 EIO\nfsync EIO')"
  [ "$(stat -c %s parts/p4)" = $((20480 * 512)) ] || fail "p4: size $(stat -c %s parts/p4)"
  cmp parts/p4 <(range parts/disk 79872 20480) || fail "p4 differs from its range of disk"
  cmp <(range parts/p4 0 12288) <(range disk.raw 79872 12288) ||
    fail "p4 does not hold what p3 held there"
  # no stale data between the files: a write through one is read
  # through the other at once, both ways
  head -c 65536 /dev/urandom >a
  dd if=a of=parts/p4 bs=512 seek=4096 conv=notrunc status=none
  cmp <(range parts/disk $((79872 + 4096)) 128) a || fail "disk does not see p4's write"
  head -c 65536 /dev/urandom >b
  dd if=b of=parts/disk bs=512 seek=$((79872 + 4096)) conv=notrunc status=none
  cmp <(range parts/p4 4096 128) b || fail "p4 does not see disk's write"
  # resized: p4 grows by 4 MiB
  echo 'size=28672' | sfdisk --quiet -N 4 parts/disk
  [ "$(stat -c %s parts/p4)" = $((28672 * 512)) ] || fail "p4 after the resize: size $(stat -c %s parts/p4)"
  stop_export INT
  qemu-img check -q disk.qcow2 || fail "qemu-img check finds errors"
  qemu-img convert -O raw disk.qcow2 after.raw
  run sfdisk --dump after.raw
  assert_output --partial "after.raw4 : start=       79872, size=       28672"
  refute_output --partial "after.raw3 :"
  cmp <(range after.raw $((79872 + 4096)) 128) b || fail "the last write is not in the image"
  cmp <(range after.raw $P1) <(range disk.raw $P1) || fail "p1 changed"
  cmp <(range after.raw $P2) <(range disk.raw $P2) || fail "p2 changed"
  # the write through the deleted p3's descriptor went nowhere
  cmp <(range after.raw 75776 8) <(range disk.raw 75776 8) || fail "p3's old start changed"
}

@test "-P: p1 moved and p2 shrunk under open descriptors: EIO for the moved one, ENOSPC past the new end" {
  requires_python
  make_disk disk.raw
  qemu-img convert -O qcow2 disk.raw disk.qcow2
  mkdir parts
  start_export -P "$WORK/parts" disk.qcow2
  hold_open parts/p1 p1 read@0 write@0 fsync
  hold_open parts/p2 p2 write@$((40960 * 512 - 4096)) write@$((40960 * 512)) read@0 fsync
  # p1 now starts 1 MiB later; p2 keeps its start, 20 MiB instead of 32
  sfdisk --dump parts/disk |
    sed -e 's/start= *2048, size= *8192,/start=4096, size=6144,/' \
        -e 's/start= *10240, size= *65536,/start=10240, size=40960,/' |
    sfdisk --quiet parts/disk
  [ "$(listing parts)" = "disk p1 p2 p3" ] || fail "parts holds: $(listing parts)"
  [ "$(stat -c %s parts/p1)" = $((6144 * 512)) ] || fail "p1: size $(stat -c %s parts/p1)"
  [ "$(stat -c %s parts/p2)" = $((40960 * 512)) ] || fail "p2: size $(stat -c %s parts/p2)"
  run held_result p1
  assert_output "$(printf 'read@0 EIO\nwrite@0 EIO\nfsync EIO')"
  run held_result p2
  assert_output "$(printf 'write@%s 4096\nwrite@%s ENOSPC\nread@0 4096\nfsync done' \
    $((40960 * 512 - 4096)) $((40960 * 512)))"
  # the new p1 is the new range, read afresh by name
  cmp parts/p1 <(range disk.raw 4096 6144) || fail "the moved p1 does not show its new range"
  stop_export
  qemu-img check -q disk.qcow2 || fail "qemu-img check finds errors"
  qemu-img convert -O raw disk.qcow2 after.raw
  # nothing but the GPT and p2's last 4 KiB changed
  cmp <(range after.raw 2048 $((10240 - 2048))) <(range disk.raw 2048 $((10240 - 2048))) ||
    fail "the moved p1's descriptor wrote into the disk"
  cmp <(range after.raw $((10240 + 40960 - 8)) 8) <(head -c 4096 /dev/zero | tr '\0' '\245') ||
    fail "the write at p2's new end is not in the image"
  cmp <(range after.raw $((10240 + 40960)) $((DISK_SECTORS - 10240 - 40960 - 33))) \
      <(range disk.raw $((10240 + 40960)) $((DISK_SECTORS - 10240 - 40960 - 33))) ||
    fail "the write past p2's new end reached the disk"
}

@test "-P: sfdisk grows p1 under an ext4 file system, resize2fs DIR/p1 fills it; e2fsck clean, the files intact" {
  requires mkfs.ext4
  requires resize2fs
  requires debugfs
  truncate -s 64M disk.raw
  printf 'label: gpt\nstart=2048, size=32768\n' | sfdisk --quiet disk.raw
  mkdir files parts
  head -c 1M /dev/urandom >files/data
  qemu-img convert -O qcow2 disk.raw disk.qcow2
  start_export -P "$WORK/parts" disk.qcow2
  mkfs.ext4 -q -F -b 4096 -d files parts/p1
  echo 'size=98304' | sfdisk --quiet -N 1 parts/disk
  [ "$(stat -c %s parts/p1)" = $((98304 * 512)) ] || fail "p1: size $(stat -c %s parts/p1)"
  resize2fs parts/p1 >/dev/null 2>&1 || fail "resize2fs: $(resize2fs parts/p1 2>&1)"
  e2fsck -f -n parts/p1 >/dev/null 2>&1 || fail "e2fsck: $(e2fsck -f -n parts/p1 2>&1)"
  stop_export
  qemu-img check -q disk.qcow2 || fail "qemu-img check finds errors"
  qemu-img convert -O raw disk.qcow2 after.raw
  range after.raw 2048 98304 >p1.img
  run dumpe2fs -h p1.img
  assert_line --regexp "^Block count: +$((98304 / 8))\$"
  cmp <(debugfs_cat p1.img /data) files/data || fail "/data differs"
}

@test "-P: parted on DIR/disk: mkpart, resizepart and rm are followed" {
  requires parted
  make_disk disk.raw
  qemu-img convert -O qcow2 disk.raw disk.qcow2
  mkdir parts
  start_export -P "$WORK/parts" disk.qcow2
  # parted runs udevadm after each change: absent here, it says so
  parted -s parts/disk unit s mkpart data ext4 94208 104447 2>/dev/null
  [ "$(listing parts)" = "disk p1 p2 p3 p4" ] || fail "after mkpart, parts holds: $(listing parts)"
  [ "$(stat -c %s parts/p4)" = $((10240 * 512)) ] || fail "p4: size $(stat -c %s parts/p4)"
  parted -s parts/disk unit s resizepart 4 122879 2>/dev/null
  [ "$(stat -c %s parts/p4)" = $((28672 * 512)) ] || fail "p4 after resizepart: size $(stat -c %s parts/p4)"
  parted -s parts/disk rm 2 2>/dev/null
  [ "$(listing parts)" = "disk p1 p3 p4" ] || fail "after rm 2, parts holds: $(listing parts)"
  cmp parts/p3 <(range disk.raw $P3) || fail "p3 changed"
  stop_export
  qemu-img check -q disk.qcow2 || fail "qemu-img check finds errors"
  qemu-img convert -O raw disk.qcow2 after.raw
  run sfdisk --dump after.raw
  assert_output --partial "after.raw4 : start=       94208, size=       28672"
  refute_output --partial "after.raw2 :"
}

@test "-P: a table written with plain writes is read again at fsync, the writer keeping disk open, and at close" {
  requires_python
  truncate -s 64M disk.img
  printf 'label: dos\nstart=2048, size=8192, type=83\n' | sfdisk --quiet disk.img
  # the new table: sector 0 of a copy that sfdisk gives three partitions
  cp --sparse=always disk.img new.img
  printf 'label: dos\nstart=2048, size=8192, type=83\nstart=10240, size=8192, type=83\nstart=18432, size=4096, type=83\n' |
    sfdisk --quiet new.img
  head -c 512 new.img >mbr
  mkdir parts
  start_export -P "$WORK/parts" disk.img
  [ "$(listing parts)" = "disk p1" ] || fail "parts holds: $(listing parts)"
  "$PYTHON" - parts/disk mbr "$WORK/fsynced" "$WORK/checked" <<'PY' 3>&- &
import os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
os.pwrite(fd, open(sys.argv[2], 'rb').read(), 0)
os.fsync(fd)
open(sys.argv[3], 'w').close()
for _ in range(400):
    if os.path.exists(sys.argv[4]):
        break
    time.sleep(0.05)
os.close(fd)
PY
  local writer=$!
  echo "$writer" >"$WORK/writer.pid"
  local i
  for i in $(seq 100); do
    [ -e fsynced ] && break
    sleep 0.05
  done
  [ -e fsynced ] || fail "the writer did not fsync"
  local seen
  seen=$(listing parts)
  : >checked
  wait "$writer"
  rm -f "$WORK/writer.pid"
  [ "$seen" = "disk p1 p2 p3" ] || fail "after the fsync, with disk still open, parts holds: $seen"
  [ "$(stat -c %s parts/p3)" = $((4096 * 512)) ] || fail "p3: size $(stat -c %s parts/p3)"
  # and at a close without fsync: the old table back, written by dd
  stop_export
  start_export -P "$WORK/parts" disk.img
  [ "$(listing parts)" = "disk p1 p2 p3" ] || fail "the new table is not in the image: $(listing parts)"
  truncate -s 64M blank.img
  printf 'label: dos\nstart=2048, size=8192, type=83\n' | sfdisk --quiet blank.img
  dd if=blank.img of=parts/disk bs=512 count=1 conv=notrunc status=none
  [ "$(listing parts)" = "disk p1" ] || fail "after dd closed disk, parts holds: $(listing parts)"
  stop_export
}

@test "-P -r: every file refuses writes; the sector-0 guard protects disk" {
  requires_python
  truncate -s 64M disk.img
  printf 'label: dos\nstart=2048, size=8192, type=83\nstart=10240, size=8192, type=83\n' |
    sfdisk --quiet disk.img
  local before
  before=$(sha disk.img)
  head -c 512 disk.img >sector0
  mkdir parts
  start_export -r -P "$WORK/parts" disk.img
  [ "$(listing parts)" = "disk p1 p2" ] || fail "parts holds: $(listing parts)"
  for f in disk p1 p2; do
    run dd if=/dev/zero of=parts/$f bs=512 count=1 conv=notrunc status=none
    assert_failure
    assert_output --partial "Read-only file system"
  done
  stop_export
  [ "$(sha disk.img)" = "$before" ] || fail "-r: the image changed"
  # read-write: a qcow2 header over sector 0 of disk is refused (the
  # probed raw image would come back as a qcow2 one); in p1 it is data
  start_export -P "$WORK/parts" disk.img
  run "$PYTHON" -c '
import errno, os, sys
for name in sys.argv[1:]:
    fd = os.open(name, os.O_WRONLY)
    try:
        os.pwrite(fd, b"QFI\xfb\0\0\0\3" + bytes(504), 0)
        print(name, "written")
    except OSError as e:
        print(name, errno.errorcode[e.errno])
    os.close(fd)' parts/disk parts/p1
  assert_line "parts/disk EPERM"
  assert_line "parts/p1 written"
  stop_export
  cmp <(head -c 512 disk.img) sector0 || fail "sector 0 changed"
  [ "$(range disk.img 2048 1 | head -c 4 | od -An -tx1 | tr -d ' ')" = 514649fb ] ||
    fail "the write to p1 is not in the image"
}

@test "the walk-through without kpartx, as an ordinary user: tests/demo-partitions.sh" {
  requires fuse2fs
  requires mkfs.ext4
  requires debugfs
  requires_user_fuse
  run in_u env TMPDIR="$WORK/u" FDE="$FDE" sh "$FDE_SRCDIR/tests/demo-partitions.sh"
  assert_success
  assert_line "$ ls parts"
  assert_line "$ fuse2fs -o fakeroot parts/p2 mnt"
  assert_line "No errors were found on the image."
  # debugfs's answer, the last command's output: both lines of the file
  local after
  after=$(printf '%s\n' "$output" | sed -n "/^\$ debugfs -R 'cat \/notes.txt' p2.img\$/,\$p")
  [ -n "$after" ] || fail "no debugfs command in the transcript"
  grep -q -x "written before the export" <<<"$after" || fail "the first line is not in the image"
  grep -q -x "edited through parts/p2 as $TEST_USER" <<<"$after" ||
    fail "the edit is not in the image: $after"
  # it cleaned up after itself
  [ -z "$(ls -A "$WORK/u")" ] || fail "left behind: $(ls -A "$WORK/u")"
  nothing_mounted
}

@test "-P -r as an ordinary user on a root-owned image they may read: the files are theirs to read; --probe -r needs no write permission" {
  requires_user_fuse
  make_disk "$WORK/u/disk.raw"
  qemu-img convert -O qcow2 "$WORK/u/disk.raw" "$WORK/u/root.qcow2"
  chmod 0644 "$WORK/u/root.qcow2"           # root's, readable by all
  local before
  before=$(sha "$WORK/u/root.qcow2")
  run in_u "$FDE" -r --probe root.qcow2
  assert_success
  assert_line "partition-table: gpt"
  in_u mkdir parts
  in_u "$FDE" -r -d -p user.pid -P parts root.qcow2 || fail "the user's export failed"
  echo "$(cat "$WORK/u/user.pid")" >"$WORK/user-ro.pid"   # stopped by the teardown
  run in_u stat -c '%U %a' parts parts/disk parts/p1
  assert_output "$(printf '%s 500\n%s 400\n%s 400' "$TEST_USER" "$TEST_USER" "$TEST_USER")"
  in_u cmp parts/disk disk.raw || fail "parts/disk differs from the image's disk"
  range "$WORK/u/disk.raw" $P1 >"$WORK/u/p1.want"
  in_u cmp parts/p1 p1.want || fail "p1 differs"
  in_u "$FDE" --stop=user.pid || fail "--stop failed"
  [ "$(sha "$WORK/u/root.qcow2")" = "$before" ] || fail "the image changed"
}

@test "an ordinary user may not show another user's group-writable image on its own path (exit 3), only on -P or -m of their own" {
  requires_user_fuse
  make_disk "$WORK/u/disk.raw"
  qemu-img convert -O qcow2 "$WORK/u/disk.raw" "$WORK/u/shared.qcow2"
  chgrp "$(id -gn "$TEST_USER")" "$WORK/u/shared.qcow2"
  chmod 0664 "$WORK/u/shared.qcow2"          # root's, writable by the group
  local before
  before=$(sha "$WORK/u/shared.qcow2")
  run in_u "$FDE" -d -p user.pid shared.qcow2
  assert_failure 3
  assert_output "fuse-disk-export: shared.qcow2: owned by another user (uid 0): a user other than root shows it only on a -m file or -P directory, not on its own path"
  is_mounted "$WORK/u/shared.qcow2" && fail "the image's path was mounted over"
  in_u mkdir parts
  in_u "$FDE" -d -p user.pid -P parts shared.qcow2 || fail "the -P export failed"
  echo "$(cat "$WORK/u/user.pid")" >"$WORK/user-gw.pid"   # stopped by the teardown
  run in_u stat -c '%U %a' parts/p2
  assert_output "$TEST_USER 600"
  in_u "$FDE" --stop=user.pid || fail "--stop failed"
  [ "$(sha "$WORK/u/shared.qcow2")" = "$before" ] || fail "the image changed"
}
