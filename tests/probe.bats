#!/usr/bin/env bats
# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
# --probe, and refusing image formats that are not served.

load helpers

setup() { common_setup; }
teardown() { common_teardown; }

# --probe must never mount: nothing mounted, the path shows the same inode.
probe_ok() {
  local ino
  ino=$(stat -c %i "${!#}")
  run timeout -k 2 10 "$FDE" --probe "$@" 3>&-
  nothing_mounted
  [ "$(stat -c %i "${!#}")" = "$ino" ] || fail "the path changed during --probe"
  assert_success
}

@test "--probe on a raw image with a dos partition table" {
  requires sfdisk
  make_dos_image disk.img 16
  probe_ok disk.img
  assert_line "image: disk.img"
  assert_line "format: raw"
  assert_line "virtual-size: 16777216"
  assert_line --regexp '^allocated: [0-9]+$'
  assert_line "writable: yes"
  assert_line "partition-table: dos"
  assert_line "partition 1: start 2048, size 16384 sectors"
  assert_line "partition 2: start 18432, size 14336 sectors"
  refute_line --partial "filesystem:"
}

@test "--probe on an ext4 file system image" {
  requires mkfs.ext4
  truncate -s 8M fs.img
  mkfs.ext4 -q -F -E nodiscard -L probelabel fs.img
  probe_ok fs.img
  assert_line "format: raw"
  assert_line "virtual-size: 8388608"
  assert_line "filesystem: ext4"
  assert_line "label: probelabel"
  refute_line --partial "partition-table:"
}

@test "--probe on an empty image" {
  truncate -s 1M empty.img
  probe_ok empty.img
  assert_line "image: empty.img"
  assert_line "format: raw"
  assert_line "virtual-size: 1048576"
  assert_line "allocated: 0"
  assert_line "writable: yes"
  refute_line --partial "partition-table:"
  refute_line --partial "filesystem:"
  refute_line --regexp '^partition [0-9]'
}

@test "--probe -r says not writable; several images are all described" {
  truncate -s 1M a.img
  truncate -s 2M b.img
  probe_ok -r a.img b.img
  assert_line "image: a.img"
  assert_line "image: b.img"
  assert_line "virtual-size: 2097152"
  [ "$(grep -c '^writable: no$' <<<"$output")" = 2 ] || fail "writable lines: $output"
}

@test "--probe does not touch a zero-length image nor a missing one" {
  : >zero.img
  probe_ok zero.img
  assert_line "virtual-size: 0"
  run "$FDE" --probe missing.img
  assert_failure 3
  assert_output --partial "missing.img"
}

# The refusal: exit 3, the format named, qemu-img convert and -f raw
# suggested, nothing mounted.  $1 file, $2 the name the message must use.
assert_refused() {
  local ino
  ino=$(stat -c %i "$1")
  run timeout -k 2 10 "$FDE" -dp fde.pid "$1" 3>&-
  [ "$status" = 3 ] || fail "$1: exit status $status (want 3): $output"
  assert_output --partial "$2"
  assert_output --partial "qemu-img convert"
  assert_output --partial "-f raw"
  nothing_mounted
  [ ! -e fde.pid ] || fail "$1: pid file written"
  [ "$(stat -c %i "$1")" = "$ino" ] || fail "$1: path changed"
  # --probe refuses it too, and so does the foreground
  run timeout -k 2 10 "$FDE" --probe "$1" 3>&-
  [ "$status" = 3 ] || fail "$1: --probe exit status $status (want 3): $output"
  run timeout -k 2 10 "$FDE" "$1" 3>&-
  [ "$status" = 3 ] || fail "$1: foreground exit status $status (want 3): $output"
  nothing_mounted
}

@test "formats made by qemu-img that are not served are refused (exit 3)" {
  requires qemu-img
  local fmt name
  for fmt in vdi:VDI vhdx:VHDX qed:QED vmdk:VMDK vpc:VHD parallels:Parallels; do
    name=${fmt#*:}
    fmt=${fmt%%:*}
    qemu-img create -q -f "$fmt" "x.$fmt" 16M ||
      { echo "# qemu-img cannot create $fmt; not checked" >&3; continue; }
    assert_refused "x.$fmt" "$name"
  done
}

@test "a LUKS volume is refused (exit 3)" {
  requires qemu-img
  # a short key-derivation benchmark first; it can fail on a loaded host
  qemu-img create -q -f luks --object secret,id=sec0,data=x \
    -o key-secret=sec0,iter-time=10 x.luks 16M 2>/dev/null ||
    qemu-img create -q -f luks --object secret,id=sec0,data=x \
      -o key-secret=sec0 x.luks 16M 2>/dev/null ||
    skip "qemu-img cannot create luks images"
  assert_refused x.luks LUKS
}

@test "formats recognised by their magic are refused (exit 3)" {
  truncate -s 1M qcow1 bochs cloop dmg qcow2v4
  printf 'QFI\xfb\0\0\0\x01' | dd of=qcow1 conv=notrunc status=none
  printf 'Bochs Virtual HD Image\0' | dd of=bochs conv=notrunc status=none
  printf '#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n' |
    dd of=cloop conv=notrunc status=none
  printf 'koly\0\0\0\x04' | dd of=dmg bs=512 seek=2047 conv=notrunc status=none
  printf 'QFI\xfb\0\0\0\x04' | dd of=qcow2v4 conv=notrunc status=none
  assert_refused qcow1 "qcow (version 1)"
  assert_refused bochs bochs
  assert_refused cloop cloop
  assert_refused dmg DMG
  assert_refused qcow2v4 qcow2
}

@test "-f raw exports a refused format as its bytes" {
  requires qemu-img
  qemu-img create -q -f vmdk x.vmdk 16M
  cp x.vmdk copy
  start_export -f raw x.vmdk
  is_mounted "$WORK/x.vmdk" || fail "not mounted"
  [ "$(stat -c %s x.vmdk)" = "$(stat -c %s copy)" ] || fail "size differs"
  cmp x.vmdk copy || fail "the view differs from the file"
  [ "$(head -c 4 x.vmdk)" = KDMV ] || fail "the view does not show the header"
  stop_export
  # --probe -f raw describes it as raw
  probe_ok -f raw x.vmdk
  assert_line "format: raw"
}
