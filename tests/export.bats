#!/usr/bin/env bats
# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
# What the view looks like and how it behaves, checked with ordinary tools.

load helpers

setup() { common_setup; }

# Undo what a test stacked on the view (file system mounts, loop devices)
# before common_teardown stops the exports.
teardown() {
  undo_stacked_on_views
  common_teardown
}

@test "file and sfdisk see the partition table through the view; the bytes are the image's" {
  requires sfdisk
  requires file
  make_dos_image img 16
  printf 'some data' | dd of=img bs=1 seek=$((3 << 20)) conv=notrunc status=none
  cp img copy
  local before
  before=$(sfdisk -l img | grep '^img')
  start_export img
  run file -b img
  assert_output --partial "DOS/MBR boot sector"
  assert_output --partial "partition 1"
  run sfdisk -l img
  assert_success
  assert_output --partial "Disklabel type: dos"
  [ "$(grep -c '^img[12] ' <<<"$output")" = 2 ] || fail "sfdisk does not list 2 partitions: $output"
  [ "$(grep '^img' <<<"$output")" = "$before" ] || fail "partitions differ from the image's"
  cmp img copy || fail "the view differs from a copy of the image"
  stop_export
}

@test "a file system made on a partition inside the view survives the revert" {
  requires_root
  requires losetup
  requires mkfs.ext4
  requires sfdisk
  make_dos_image img 16
  start_export img
  # partition 2: 9 MiB .. 16 MiB
  local dev
  dev=$(losetup -f --show -o $((18432 * 512)) --sizelimit $((14336 * 512)) img) ||
    fail "losetup on the view failed"
  run mkfs.ext4 -q -F -L fdetest "$dev"
  assert_success
  mkdir mnt
  mount "$dev" mnt || fail "cannot mount the new file system"
  echo "written through the view" >mnt/hello
  umount mnt
  losetup -d "$dev"
  stop_export
  wait_unmounted "$WORK/img"
  # the image itself now holds the file system
  dev=$(losetup -f --show -r -o $((18432 * 512)) --sizelimit $((14336 * 512)) img)
  mount -o ro "$dev" mnt || fail "the file system is not in the image after revert"
  run cat mnt/hello
  umount mnt
  losetup -d "$dev"
  assert_output "written through the view"
  # partition 1 is untouched (zeros) and the table is intact
  run sfdisk -l img
  assert_output --partial "img2"
}

@test "read-only export: opening for write fails, the image is byte-identical afterwards" {
  requires_root
  requires sfdisk
  requires_python
  make_dos_image img 16
  cp img copy
  local sum
  sum=$(sha img)
  start_export -r img
  [ "$(stat -c %a img)" = 400 ] || fail "mode $(stat -c %a img), want 400"
  run dd if=/dev/zero of=img bs=512 count=1 conv=notrunc
  assert_failure
  assert_output --partial "Read-only file system"
  run "$PYTHON" -c 'import os; os.open("img", os.O_RDWR)'
  assert_failure
  assert_output --partial "Read-only file system"
  run truncate -s 1M img
  assert_failure
  run chmod 644 img
  assert_failure
  run fallocate --punch-hole --keep-size -o 0 -l 4096 img
  assert_failure
  # reading works, and reads the image
  cmp img copy || fail "the read-only view differs from the image"
  sfdisk -l img >/dev/null || fail "sfdisk cannot read the read-only view"
  stop_export
  [ "$(sha img)" = "$sum" ] || fail "the image changed during a read-only export"
}

@test "punch-hole and zero-range through the view read back zeros; other modes fail" {
  requires fallocate
  truncate -s 4M img
  head -c $((4 << 20)) /dev/urandom >img
  cp img expect
  start_export img
  run fallocate --punch-hole --keep-size -o $((1 << 20)) -l 65536 img
  assert_success
  run fallocate --zero-range --keep-size -o $((2 << 20)) -l 12345 img
  assert_success
  run fallocate --zero-range -o 100 -l 1000 img
  assert_success
  # build the expected result on the copy with dd
  dd if=/dev/zero of=expect bs=1 seek=$((1 << 20)) count=65536 conv=notrunc status=none
  dd if=/dev/zero of=expect bs=1 seek=$((2 << 20)) count=12345 conv=notrunc status=none
  dd if=/dev/zero of=expect bs=1 seek=100 count=1000 conv=notrunc status=none
  cmp img expect || fail "the view after punch/zero differs from the expected bytes"
  [ "$(stat -c %s img)" = $((4 << 20)) ] || fail "size changed"
  # plain allocation (mode 0) and collapse/insert are not supported
  run fallocate -l 1M img
  assert_failure
  assert_output --partial "Operation not supported"
  run fallocate --collapse-range -o 0 -l 65536 img
  assert_failure
  run fallocate --punch-hole -o 0 -l 65536 img   # --punch-hole implies keep-size
  assert_success
  stop_export
  dd if=/dev/zero of=expect bs=1 count=65536 conv=notrunc status=none
  cmp img expect || fail "the image after revert differs"
}

@test "SEEK_DATA/SEEK_HOLE through the view match the sparse image" {
  requires_python
  truncate -s 8M img
  printf 'data at 1 MiB' | dd of=img bs=4096 seek=256 conv=notrunc status=none
  printf 'data at 5 MiB' | dd of=img bs=4096 seek=1280 conv=notrunc status=none
  local script='
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(fd).st_size
out = []
for off in range(0, size, 256 * 1024):
    r = []
    for w in (os.SEEK_DATA, os.SEEK_HOLE):
        try: r.append(os.lseek(fd, off, w))
        except OSError as e: r.append("E%d" % e.errno)
    out.append("%d %s %s" % (off, r[0], r[1]))
print("\n".join(out))'
  local want
  want=$("$PYTHON" -c "$script" img)
  grep -q "^0 1048576 " <<<"$want" || skip "the scratch file system does not report holes"
  start_export img
  run "$PYTHON" -c "$script" img
  assert_success
  [ "$output" = "$want" ] || fail "$(diff <(echo "$want") <(echo "$output"))"
  # past the end: ENXIO
  run "$PYTHON" -c 'import os; fd = os.open("img", os.O_RDONLY); os.lseek(fd, 8 << 20, os.SEEK_DATA)'
  assert_failure
  assert_output --partial "No such device or address"
}

@test "writes past the end fail with ENOSPC; a write straddling the end is short" {
  requires_python
  truncate -s 1M img
  start_export img
  run dd if=/dev/zero of=img bs=512 seek=2048 count=1 conv=notrunc
  assert_failure
  assert_output --partial "No space left on device"
  run "$PYTHON" -c '
import os
fd = os.open("img", os.O_WRONLY)
print(os.pwrite(fd, b"x" * 100, (1 << 20) - 40))
try:
    os.pwrite(fd, b"y", (1 << 20) + 4096)
except OSError as e:
    print(e.strerror)'
  assert_success
  assert_line --index 0 40
  assert_line --index 1 "No space left on device"
  [ "$(stat -c %s img)" = 1048576 ] || fail "size changed: $(stat -c %s img)"
  stop_export
  [ "$(stat -c %s img)" = 1048576 ] || fail "image size changed: $(stat -c %s img)"
  [ "$(tail -c 40 img)" = "$(printf 'x%.0s' $(seq 40))" ] || fail "the short write did not land"
}

@test "truncating to another size fails; O_TRUNC is ignored" {
  truncate -s 1M img
  printf 'keep me' | dd of=img bs=1 seek=4096 conv=notrunc status=none
  start_export img
  run truncate -s 2M img
  assert_failure
  assert_output --partial "Operation not permitted"
  run truncate -s 0 img
  assert_failure
  run truncate -s 1M img
  assert_success
  # shell > opens with O_TRUNC: size and the rest of the disk stay
  echo new >img || fail "writing with O_TRUNC failed"
  [ "$(stat -c %s img)" = 1048576 ] || fail "size after O_TRUNC: $(stat -c %s img)"
  [ "$(head -c 4 img | od -An -c)" = "   n   e   w  \n" ] || fail "head: $(head -c 4 img | od -c)"
  [ "$(dd if=img bs=1 skip=4096 count=7 status=none)" = "keep me" ] || fail "O_TRUNC lost data"
  stop_export
  [ "$(stat -c %s img)" = 1048576 ] || fail "image size changed"
}

@test "the view's size, mode and owner" {
  requires_root
  truncate -s 3M img
  chown 1234:5678 img
  chmod 0644 img
  start_export img
  run stat -c '%s %a %u %g %F' img
  assert_output "3145728 600 1234 5678 regular file"
  # chmod on the view changes the view only
  chmod 0640 img
  run stat -c %a img
  assert_output 640
  stop_export
  run stat -c '%s %a %u %g' img
  assert_output "3145728 644 1234 5678"
}

# Issue 13: one fio job at depth 16 must not wait for a slot in the kernel
# (its default is 12 asynchronous requests per connection).
@test "the view's connection keeps 64 asynchronous requests in flight (fusectl)" {
  requires_root
  needs_fusectl
  truncate -s 1M img
  start_export img
  local dev conn
  dev=$(mountpoint -d img) || fail "the view is not a mount point"
  conn=/sys/fs/fuse/connections/$(( (${dev%%:*} << 20) | ${dev#*:} ))
  [ -d "$conn" ] || fail "no fusectl directory $conn for the view ($dev)"
  run cat "$conn/max_background" "$conn/congestion_threshold"
  assert_output "64
48"
  stop_export
}

@test "sector-0 guard: a probed raw export refuses to write an image header" {
  truncate -s 1M img
  start_export img
  run dd of=img conv=notrunc status=none < <(printf 'QFI\xfb\0\0\0\x03')
  assert_failure
  assert_output --partial "Operation not permitted"
  run dd of=img conv=notrunc status=none < <(printf 'KDMV')
  assert_failure
  assert_output --partial "Operation not permitted"
  run dd of=img bs=4 seek=16 conv=notrunc status=none < <(printf '\x7f\x10\xda\xbe')
  assert_failure
  assert_output --partial "Operation not permitted"
  # ordinary data at offset 0 is fine
  run dd of=img conv=notrunc status=none < <(printf 'QFI-not-magic')
  assert_success
  stop_export
  [ "$(head -c 13 img)" = "QFI-not-magic" ] || fail "image starts with $(head -c 16 img | od -c)"
  run od -An -tx1 -j64 -N4 img
  assert_output " 00 00 00 00"
}

@test "sector-0 guard: with -f raw the header write is allowed" {
  truncate -s 1M img
  start_export -f raw img
  run dd of=img conv=notrunc status=none < <(printf 'QFI\xfb\0\0\0\x03')
  assert_success
  stop_export
  wait_unmounted "$WORK/img"
  run od -An -tx1 -N8 img
  assert_output " 51 46 49 fb 00 00 00 03"
  # the file now probes as qcow2: nothing below exports it again;
  # common_teardown only removes it.
}

@test "cp --sparse=always of the view stays sparse" {
  truncate -s 64M img
  printf 'a' | dd of=img bs=1 seek=$((32 << 20)) conv=notrunc status=none
  start_export img
  cp --sparse=always img copy
  cmp img copy || fail "the copy differs"
  local kib
  kib=$(du -k copy | cut -f1)
  [ "$kib" -lt 1024 ] || fail "the copy uses $kib KiB"
}

@test "data written through the view is in the image after revert" {
  truncate -s 2M img
  head -c 100000 /dev/urandom >data
  start_export img
  dd if=data of=img bs=4096 seek=10 conv=notrunc,fsync status=none
  cmp <(dd if=img bs=4096 skip=10 count=25 status=none | head -c 100000) data ||
    fail "reading back through the view differs"
  stop_export
  cmp <(dd if=img bs=4096 skip=10 count=25 status=none | head -c 100000) data ||
    fail "the image does not hold what was written"
  [ "$(stat -c %s img)" = 2097152 ] || fail "image size changed"
}
