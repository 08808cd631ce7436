#!/usr/bin/env bats
# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
# -P DIR / --partitions=DIR (issue 11): a directory holding "disk" and one
# file per partition, all views of the same open image.  Tables are made
# by sfdisk, images by qemu-img; what the files show is compared with dd
# of the ranges of `qemu-img convert -O raw`, and the table is changed
# through DIR/disk with sfdisk, as a user would.

load helpers
load partition-helpers

setup() {
  common_setup
  requires qemu-img
  requires sfdisk
  mkdir dir
}

teardown() {
  undo_stacked_on_views
  common_teardown
}

# files_in DIR: the names in DIR in the order readdir gives them.
files_in() {
  ls -U "$1" | tr '\n' ' ' | sed 's/ $//'
}

# check_dir RAW PARTS: dir holds exactly disk and the partitions of PARTS
# (N:START:SIZE), in that order; disk is RAW, each pN its range of RAW.
check_dir() {
  local raw=$1 p n start size want="disk"
  for p in $2; do want="$want p${p%%:*}"; done
  [ "$(files_in dir)" = "$want" ] || fail "dir holds '$(files_in dir)', not '$want'"
  [ "$(stat -c %s dir/disk)" = "$(stat -c %s "$raw")" ] || fail "size of disk"
  cmp dir/disk "$raw" || fail "dir/disk differs from $raw"
  for p in $2; do
    IFS=: read -r n start size <<<"$p"
    [ "$(stat -c %s "dir/p$n")" = $((size * 512)) ] ||
      fail "p$n: size $(stat -c %s "dir/p$n"), not $((size * 512))"
    cmp "dir/p$n" <(range "$raw" "$start" "$size") ||
      fail "dir/p$n differs from its range of $raw"
  done
}

# dir_is_plain: dir is no mount point any more, and empty again.
dir_is_plain() {
  ! is_mounted "$WORK/dir" || fail "dir is still mounted"
  [ -z "$(ls -A dir)" ] || fail "dir is not empty: $(ls -A dir)"
}

@test "MBR: disk, p1-p3 and p5-p7, each its range, on a qcow2 image and on a qcow2 over a raw backing file holding the table" {
  make_mbr disk.raw
  qemu-img convert -O qcow2 disk.raw vm.qcow2
  cp disk.raw base.raw
  qemu-img create -q -f qcow2 -b base.raw -F raw top.qcow2
  # the overlay changes partition 6; the table stays in the backing file
  qemu-io -f qcow2 -c "write -P 0x5a $((34816 * 512 + 4096)) 64k" top.qcow2 >/dev/null
  qemu-img convert -O raw top.qcow2 top.raw
  start_export -r -P dir vm.qcow2
  check_dir disk.raw "$MBR_PARTS"
  stop_export
  dir_is_plain
  start_export -P dir top.qcow2
  check_dir top.raw "$MBR_PARTS"
  stop_export
  dir_is_plain
}

@test "GPT with entries 1, 2 and 128: disk, p1, p2, p128" {
  make_gpt disk.raw
  qemu-img convert -O qcow2 disk.raw disk.qcow2
  start_export -P dir disk.qcow2
  check_dir disk.raw "$GPT_PARTS"
  run ls dir/p3
  assert_failure
  assert_output --partial "No such file or directory"
}

@test "a write through p2 is seen through disk at once, and the reverse" {
  make_mbr disk.raw
  qemu-img convert -O qcow2 disk.raw disk.qcow2
  head -c 8192 /dev/urandom >a
  head -c 8192 /dev/urandom >b
  start_export -P dir disk.qcow2
  # read first, so that a page cache of the other file would be stale
  cmp <(range dir/disk $((10240 + 8)) 16) <(range disk.raw $((10240 + 8)) 16)
  dd if=a of=dir/p2 bs=512 seek=8 conv=notrunc,fsync status=none
  cmp <(range dir/disk $((10240 + 8)) 16) a || fail "disk does not show the write through p2"
  cmp <(range dir/p6 100 16) <(range disk.raw $((34816 + 100)) 16)
  dd if=b of=dir/disk bs=512 seek=$((34816 + 100)) conv=notrunc,fsync status=none
  cmp <(range dir/p6 100 16) b || fail "p6 does not show the write through disk"
  stop_export
  qemu-img check -q disk.qcow2
  qemu-img convert -O raw disk.qcow2 after.raw
  cp disk.raw want.raw
  dd if=a of=want.raw bs=512 seek=$((10240 + 8)) conv=notrunc status=none
  dd if=b of=want.raw bs=512 seek=$((34816 + 100)) conv=notrunc status=none
  cmp after.raw want.raw || fail "the image is not the original plus the two writes"
}

@test "past a partition's end ENOSPC; zero-range and punch on p6 read back zeros, the neighbours intact" {
  requires fallocate
  make_mbr disk.raw
  qemu-img convert -O qcow2 disk.raw disk.qcow2
  start_export -P dir disk.qcow2
  run dd if=/dev/zero of=dir/p2 bs=512 count=1 seek=8192 conv=notrunc status=none
  assert_failure
  assert_output --partial "No space left on device"
  # a write crossing the end is cut short there: the rest gets ENOSPC
  run dd if=/dev/zero of=dir/p2 bs=1024 count=1 seek=$((8192 * 512 - 512)) \
    oflag=seek_bytes conv=notrunc status=none
  assert_failure
  assert_output --partial "No space left on device"
  [ "$(stat -c %s dir/p2)" = $((8192 * 512)) ]
  fallocate -z -o 65536 -l 131072 dir/p6
  fallocate -p -o 1048576 -l 262144 dir/p6
  fallocate -p -o $((4096 * 512 - 4096)) -l 4096 dir/p6
  cmp <(range dir/p6 128 256) <(head -c 131072 /dev/zero) || fail "zero-range"
  cmp <(range dir/p6 2048 512) <(head -c 262144 /dev/zero) || fail "punch"
  cmp <(range dir/p6 $((4096 - 8)) 8) <(head -c 4096 /dev/zero) || fail "punch at the end"
  # the same zeros through disk, and p5 and p7 around p6 untouched
  cmp <(range dir/disk $((34816 + 128)) 256) <(head -c 131072 /dev/zero) || fail "zero-range through disk"
  cmp dir/p5 <(range disk.raw 28672 4096) || fail "p5 changed"
  cmp dir/p7 <(range disk.raw 40960 4096) || fail "p7 changed"
  stop_export
  qemu-img check -q disk.qcow2
  qemu-img convert -O raw disk.qcow2 after.raw
  # the last sector of p2 was zeroed, the first of p3 is intact
  cmp <(range after.raw $((10240 + 8191)) 1) <(head -c 512 /dev/zero) ||
    fail "the write up to the end of p2 is lost"
  cmp <(range after.raw 18432 8192) <(range disk.raw 18432 8192) || fail "p3 changed"
  local p6=34816
  for r in "0 $((10240 + 8191))" "18432 $((p6 + 128 - 18432))" "$((p6 + 384)) $((2048 - 384))" \
           "$((p6 + 2560)) $((4096 - 2560 - 8))" "$((p6 + 4096)) $((131072 - p6 - 4096))"; do
    set -- $r
    cmp <(range after.raw "$1" "$2") <(range disk.raw "$1" "$2") ||
      fail "sectors $1 + $2 changed"
  done
}

@test "SEEK_DATA, SEEK_HOLE and st_blocks of a sparse partition" {
  requires_python
  truncate -s 64M disk.img
  printf 'label: dos\nstart=2048, size=8192, type=83\nstart=10240, size=16384, type=83\n' |
    sfdisk --quiet disk.img >/dev/null
  head -c 65536 /dev/urandom | dd of=disk.img bs=512 seek=$((10240 + 2048)) conv=notrunc status=none
  head -c 65536 /dev/urandom | dd of=disk.img bs=512 seek=4096 conv=notrunc status=none
  qemu-img convert -O qcow2 disk.img disk.qcow2
  start_export -P dir disk.qcow2
  run "$PYTHON" -c '
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
d = os.lseek(fd, 0, os.SEEK_DATA)
h = os.lseek(fd, d, os.SEEK_HOLE)
try:
    os.lseek(fd, h, os.SEEK_DATA); nxt = "data"
except OSError as e:
    nxt = e.errno
print(d, h, nxt, os.lseek(fd, 0, os.SEEK_HOLE))' dir/p2
  assert_success
  assert_output "1048576 1114112 6 0"
  [ "$(stat -c %b dir/p2)" = 128 ] || fail "st_blocks $(stat -c %b dir/p2), not 128"
}

@test "-r: every file refuses writes (EROFS); modes 0500 and 0400" {
  make_mbr disk.raw
  qemu-img convert -O qcow2 disk.raw disk.qcow2
  local before
  before=$(sha disk.qcow2)
  start_export -r -P dir disk.qcow2
  [ "$(stat -c %a dir)" = 500 ] || fail "dir mode $(stat -c %a dir)"
  for f in disk p1 p2 p3 p5 p6 p7; do
    [ "$(stat -c %a dir/$f)" = 400 ] || fail "$f mode $(stat -c %a dir/$f)"
    run dd if=/dev/zero of=dir/$f bs=512 count=1 conv=notrunc status=none
    assert_failure
    assert_output --partial "Read-only file system"
  done
  stop_export
  [ "$(sha disk.qcow2)" = "$before" ] || fail "the image changed"
}

@test "the sector-0 guard protects disk, and a partition starting at sector 0, of a probed raw image" {
  truncate -s 16M disk.img
  printf 'label: dos\nstart=2048, size=8192, type=83\n' | sfdisk --quiet disk.img >/dev/null
  # entry 2 starts at sector 0 (a hostile table; it overlaps nothing earlier)
  poke disk.img $((446 + 16 + 4)) 83
  poke disk.img $((446 + 16 + 8)) "$(le32 0)$(le32 1024)"
  qemu-img create -q -f qcow2 hdr.qcow2 1M
  local before
  before=$(sha disk.img)
  start_export -P dir disk.img
  [ "$(files_in dir)" = "disk p1 p2" ] || fail "dir holds $(files_in dir)"
  for f in disk p2; do
    run dd if=hdr.qcow2 of=dir/$f bs=512 count=1 conv=notrunc,fsync status=none
    assert_failure
    assert_output --partial "Operation not permitted"
  done
  # other writes to sector 0 pass
  head -c 512 dir/disk >s0
  dd if=s0 of=dir/disk bs=512 count=1 conv=notrunc,fsync status=none
  stop_export
  [ "$(sha disk.img)" = "$before" ] || fail "the image changed"
}

@test "SIGINT reverts: dir is empty again, the image clean with exactly what was written" {
  make_mbr disk.raw
  qemu-img convert -O qcow2 disk.raw disk.qcow2
  head -c 4096 /dev/urandom >a
  FG_MOUNT=dir start_fg -P dir disk.qcow2
  local i
  for i in $(seq 50); do
    grep -q "press ^C to revert" fg.out && break
    sleep 0.1
  done
  run cat fg.out
  assert_output "disk.qcow2: the qcow2 image's disk and its 6 partitions shown in $WORK/dir (disk, p1, p2, p3, p5, p6, p7); press ^C to revert"
  dd if=a of=dir/p7 bs=512 seek=16 conv=notrunc status=none
  kill -INT "$FG_PID"
  wait "$FG_PID"
  dir_is_plain
  [ ! -s fg.err ] || fail "stderr: $(cat fg.err)"
  qemu-img check -q disk.qcow2
  qemu-img convert -O raw disk.qcow2 after.raw
  dd if=a of=disk.raw bs=512 seek=$((40960 + 16)) conv=notrunc status=none
  cmp after.raw disk.raw || fail "the image is not the original plus the write"
}

# bad_dir EXIT MESSAGE ARGS...: the export is refused with that exit
# status and one line holding MESSAGE (a usage error adds the --help
# hint); nothing is mounted and the image is unchanged.
bad_dir() {
  local want=$1 msg=$2 before
  shift 2
  before=$(sha img)
  run "$FDE" "$@"
  assert_failure "$want"
  [ "${lines[0]}" = "fuse-disk-export: $msg" ] || fail "first line: ${lines[0]}"
  if [ "$want" = 2 ]; then
    [ "${#lines[@]}" = 2 ] && [[ "${lines[1]}" == *--help* ]] || fail "output: $output"
  else
    [ "${#lines[@]}" = 1 ] || fail "more than one line: $output"
  fi
  nothing_mounted
  [ "$(sha img)" = "$before" ] || fail "the image changed"
}

@test "usage: -P with -m, with --partition, with two images; DIR not empty, a file, missing" {
  make_mbr img
  truncate -s 1M other target
  bad_dir 2 "--partitions and --mountpoint do not go together: the view goes on DIR" \
    -P dir -m target img
  bad_dir 2 "--partitions and --partition do not go together: DIR shows every partition" \
    -P dir --partition=1 img
  bad_dir 2 "--partitions works with one image only" --partitions=dir img other
  touch dir/x
  bad_dir 3 "dir: not empty (it holds x); the directory view needs an empty directory" -P dir img
  bad_dir 3 "target: not a directory; --partitions needs an existing empty directory" -P target img
  bad_dir 3 "nodir: No such file or directory" -P nodir img
  [ -z "$(ls -A nodir 2>/dev/null)" ] && [ ! -e nodir ]
}

@test "sfdisk grows p1 through disk: p1 keeps its inode, an open descriptor sees the new size" {
  requires_python
  truncate -s 64M disk.img
  printf 'label: dos\nstart=2048, size=4096, type=83\nstart=20480, size=4096, type=83\n' |
    sfdisk --quiet disk.img >/dev/null
  head -c 8M /dev/urandom | dd of=disk.img bs=512 seek=2048 conv=notrunc status=none
  qemu-img convert -O qcow2 disk.img disk.qcow2
  start_export -P dir disk.qcow2
  local ino1 ino2
  ino1=$(stat -c %i dir/p1)
  ino2=$(stat -c %i dir/p2)
  [ "$(stat -c %s dir/p1)" = $((4096 * 512)) ]
  exec 7<dir/p1
  echo ', +' | sfdisk --quiet -N 1 dir/disk >/dev/null 2>&1
  # p1 now runs up to p2's start: 18432 sectors
  run "$PYTHON" -c '
import os
st = os.fstat(7)
print(st.st_size, len(os.pread(7, 4096, st.st_size - 4096)))'
  exec 7<&-
  assert_success
  assert_output "$((18432 * 512)) 4096"
  [ "$(stat -c %s dir/p1)" = $((18432 * 512)) ] || fail "stat: $(stat -c %s dir/p1)"
  [ "$(stat -c %i dir/p1)" = "$ino1" ] || fail "p1 got a new inode"
  [ "$(stat -c %i dir/p2)" = "$ino2" ] || fail "p2 got a new inode"
  cmp dir/p1 <(range disk.img 2048 18432) || fail "p1 does not show its new range"
}

@test "a partition removed or moved: EIO on its open descriptor, the name shows the new place" {
  requires_python
  make_mbr disk.raw
  qemu-img convert -O qcow2 disk.raw disk.qcow2
  start_export -P dir disk.qcow2
  local ino2
  ino2=$(stat -c %i dir/p2)
  exec 7<dir/p3 8<dir/p2
  sfdisk --quiet --delete dir/disk 3 >/dev/null 2>&1
  [ "$(files_in dir)" = "disk p1 p2 p5 p6 p7" ] || fail "dir holds $(files_in dir)"
  # p2 moves to where p3 was
  echo 'start=18432, size=8192, type=83' | sfdisk --quiet -N 2 dir/disk >/dev/null 2>&1
  run "$PYTHON" -c '
import os
for fd in (7, 8):
    for what, f in (("fstat", lambda: os.fstat(fd)), ("read", lambda: os.pread(fd, 512, 0))):
        try:
            f(); print(fd, what, "ok")
        except OSError as e:
            print(fd, what, e.strerror)'
  exec 7<&- 8<&-
  assert_success
  assert_output "7 fstat Input/output error
7 read Input/output error
8 fstat Input/output error
8 read Input/output error"
  [ "$(files_in dir)" = "disk p1 p2 p5 p6 p7" ] || fail "dir holds $(files_in dir)"
  [ "$(stat -c %i dir/p2)" != "$ino2" ] || fail "the moved p2 kept its inode"
  cmp dir/p2 <(range disk.raw 18432 8192) || fail "p2 does not show its new place"
}

@test "hostile table: p2 past the end and p3 overlapping p1 are left out with one warning each, given again only when the table changes" {
  truncate -s 16M far.img
  printf 'label: dos\nstart=2048, size=8192, type=83\n' | sfdisk --quiet far.img >/dev/null
  # entry 2 past the end of the disk, entry 3 over p1, entry 4 valid
  poke far.img $((446 + 16 + 4)) 83
  poke far.img $((446 + 16 + 8)) "$(le32 1000000)$(le32 2048)"
  poke far.img $((446 + 32 + 4)) 83
  poke far.img $((446 + 32 + 8)) "$(le32 4096)$(le32 8192)"
  poke far.img $((446 + 48 + 4)) 83
  poke far.img $((446 + 48 + 8)) "$(le32 12288)$(le32 2048)"
  FG_MOUNT=dir start_fg -P dir far.img
  [ "$(files_in dir)" = "disk p1 p4" ] || fail "dir holds $(files_in dir)"
  run cat fg.err
  assert_output "fuse-disk-export: warning: far.img: partition 2 left out: it starts past the end of the disk (dos partition table)
fuse-disk-export: warning: far.img: partition 3 left out: it overlaps an earlier partition of the table (dos partition table)"
  # writes through disk that leave the table as it is: no new warning
  dd if=/dev/zero of=dir/disk bs=512 seek=30000 count=8 conv=notrunc,fsync status=none
  [ "$(wc -l <fg.err)" = 2 ] || fail "warnings repeated: $(cat fg.err)"
  # entry 3 made valid (after p4): its warning goes, p2's is given again
  poke dir/disk $((446 + 32 + 8)) "$(le32 16384)$(le32 2048)"
  [ "$(files_in dir)" = "disk p1 p3 p4" ] || fail "dir holds $(files_in dir)"
  run tail -n +3 fg.err
  assert_output "fuse-disk-export: warning: far.img: partition 2 left out: it starts past the end of the disk (dos partition table)"
  # p4 removed: the same warnings, not given again
  poke dir/disk $((446 + 48)) 00000000000000000000000000000000
  [ "$(files_in dir)" = "disk p1 p3" ] || fail "dir holds $(files_in dir)"
  kill -INT "$FG_PID"
  wait "$FG_PID"
  dir_is_plain
  # nothing more on stderr, up to the exit (a sanitizer's report included)
  [ "$(wc -l <fg.err)" = 3 ] || fail "stderr: $(cat fg.err)"
}

@test "a table that cannot be read (EIO injected) leaves the files as they were, with a warning" {
  local shim=${FDE_BUILDDIR:-$FDE_SRCDIR}/tests/fault-shim.so
  [ -f "$shim" ] || fail "$shim is missing: make check builds it (make tests/fault-shim.so)"
  truncate -s 16M disk.img
  printf 'label: dos\nstart=2048, size=4096, type=83\nstart=6144, size=4096, type=83\n' |
    sfdisk --quiet disk.img >/dev/null
  : >fault.ctl
  # the shim fails the daemon's reads of the image file once armed
  FDE_FAULT_FILE=$WORK/disk.img FDE_FAULT_CTL=$WORK/fault.ctl LD_PRELOAD=$shim \
    ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0 \
    FG_MOUNT=dir start_fg -f raw -P dir disk.img
  # remove p2's entry with every read of the image failing: the table read
  # after the close fails, the files stay
  echo "1 pread 1 EIO 0" >fault.tmp && mv fault.tmp fault.ctl
  dd if=/dev/zero of=dir/disk bs=1 seek=$((446 + 16)) count=16 conv=notrunc status=none
  [ "$(files_in dir)" = "disk p1 p2" ] || fail "dir holds $(files_in dir)"
  run cat fg.err
  assert_output "fuse-disk-export: warning: disk.img: cannot read the partition table: Input/output error; the files in $WORK/dir stay as they were"
  # reads work again: the next close after a write reads the table
  : >fault.tmp && mv fault.tmp fault.ctl
  dd if=/dev/zero of=dir/disk bs=1 seek=$((446 + 16)) count=16 conv=notrunc status=none
  [ "$(files_in dir)" = "disk p1" ] || fail "dir holds $(files_in dir)"
  kill -INT "$FG_PID"
  wait "$FG_PID"
  dir_is_plain
  [ "$(wc -l <fg.err)" = 1 ] || fail "stderr: $(cat fg.err)"
}

@test "a second export on DIR, or of the image, is refused (exit 4); the image's path stays the image" {
  make_mbr disk.img
  truncate -s 1M other.img
  mkdir dir2
  start_export -P dir disk.img
  # the image's own path is no mount point: it shows the file itself
  ! is_mounted "$WORK/disk.img" || fail "the image's path is mounted"
  run qemu-img info -U --output=json disk.img
  assert_output --partial '"format": "raw"'
  run "$FDE" -P dir other.img
  assert_failure 4
  assert_output --partial "$WORK/dir: already exported"
  run "$FDE" -P dir2 disk.img
  assert_failure 4
  run "$FDE" disk.img
  assert_failure 4
  ! is_mounted "$WORK/dir2" || fail "dir2 is mounted"
  ! is_mounted "$WORK/disk.img" || fail "the image's path is mounted"
  stop_export
  dir_is_plain
}

@test "names in DIR cannot be made, removed or renamed by hand: EPERM, not ENOSYS" {
  make_gpt disk.raw
  qemu-img convert -f raw -O qcow2 disk.raw disk.qcow2
  FG_MOUNT=dir start_fg -P dir disk.qcow2
  local op
  for op in "touch dir/new" "mkdir dir/sub" "rm -f dir/p1" "mv dir/p1 dir/p9" \
            "ln -s p1 dir/link" "ln dir/p1 dir/hard" "mknod dir/fifo p"; do
    run $op
    [ "$status" -ne 0 ] || fail "$op succeeded"
    [[ "$output" == *"Operation not permitted"* ]] || fail "$op: $output"
  done
  [ "$(files_in dir)" = "disk p1 p2 p128" ] || fail "dir holds $(files_in dir)"
  kill -INT "$FG_PID"
  wait "$FG_PID"
  dir_is_plain
}

@test "no table: a blank disk gets no warning; a GPT that fails libblkid's CRC check gets one" {
  truncate -s 64M blank.img
  FG_MOUNT=dir start_fg -P dir blank.img
  [ "$(files_in dir)" = "disk" ] || fail "dir holds $(files_in dir)"
  kill -INT "$FG_PID"
  wait "$FG_PID"
  [ ! -s fg.err ] || fail "stderr for a blank disk: $(cat fg.err)"
  make_gpt bad.img
  # corrupt both GPT headers' CRC fields (bytes 16..19 of LBA 1 and of the last LBA)
  poke bad.img $((512 + 16)) 01020304
  poke bad.img $(( $(stat -c %s bad.img) - 512 + 16 )) 01020304
  FG_MOUNT=dir start_fg -P dir bad.img
  [ "$(files_in dir)" = "disk" ] || fail "dir holds $(files_in dir)"
  kill -INT "$FG_PID"
  wait "$FG_PID"
  run cat fg.err
  assert_output "fuse-disk-export: warning: bad.img: libblkid accepts no partition table on it (its GPT fails libblkid's checks, such as a bad CRC): only disk is shown"
}

@test "only writes that touch the table's sectors make a flush read the table again (the others cost no table read)" {
  local shim=${FDE_BUILDDIR:-$FDE_SRCDIR}/tests/fault-shim.so
  [ -f "$shim" ] || fail "$shim is missing: make check builds it (make tests/fault-shim.so)"
  truncate -s 16M disk.img
  printf 'label: dos\nstart=4096, size=4096, type=83\nstart=8192, size=4096, type=83\n' |
    sfdisk --quiet disk.img >/dev/null
  : >fault.ctl
  FDE_FAULT_FILE=$WORK/disk.img FDE_FAULT_CTL=$WORK/fault.ctl LD_PRELOAD=$shim \
    ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0 \
    FG_MOUNT=dir start_fg -f raw -P dir disk.img
  # from now on every read of the image fails: a table read would warn
  echo "1 pread 1 EIO 0" >fault.tmp && mv fault.tmp fault.ctl
  # data written (and fsynced) through disk between the partitions, past
  # the first MiB, and through p2 past its first 64 KiB: no table read
  head -c 64k /dev/urandom | dd of=dir/disk bs=64k seek=$((3 * 16)) conv=notrunc,fsync status=none
  head -c 64k /dev/urandom | dd of=dir/p2 bs=64k seek=4 conv=notrunc,fsync status=none
  [ ! -s fg.err ] || fail "the table was read again: $(cat fg.err)"
  # a write into p1's first 64 KiB (where a nested label would be): its
  # flush reads the table (and fails to, said once)
  head -c 4k /dev/urandom | dd of=dir/p1 bs=4k seek=2 conv=notrunc,fsync status=none
  [ "$(grep -c 'cannot read the partition table' fg.err)" = 1 ] || fail "stderr: $(cat fg.err)"
  # reads work again: the failed read is tried again at the next flush,
  # with no new write
  : >fault.tmp && mv fault.tmp fault.ctl
  "$PYTHON" -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.fsync(fd)' dir/p2
  echo "1 pread 1 EIO 0" >fault.tmp && mv fault.tmp fault.ctl
  head -c 64k /dev/urandom | dd of=dir/disk bs=64k seek=$((3 * 16)) conv=notrunc,fsync status=none
  [ "$(grep -c 'cannot read the partition table' fg.err)" = 1 ] || fail "the retry failed: $(cat fg.err)"
  # a write to the MBR: its flush reads the table again (and fails to)
  head -c 512 disk.img >mbr           # the image file itself is not covered
  dd if=mbr of=dir/disk bs=512 count=1 conv=notrunc,fsync status=none
  [ "$(grep -c 'cannot read the partition table' fg.err)" = 2 ] || fail "stderr: $(cat fg.err)"
  : >fault.tmp && mv fault.tmp fault.ctl
  [ "$(files_in dir)" = "disk p1 p2" ] || fail "dir holds $(files_in dir)"
  kill -INT "$FG_PID"
  wait "$FG_PID"
  dir_is_plain
}
