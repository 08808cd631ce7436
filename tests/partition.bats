#!/usr/bin/env bats
# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
# --partition=N (issue 11): the view is one partition of the disk.  Tables
# are made by sfdisk, images by qemu-img; what the view shows is compared
# with dd of the partition's range from `qemu-img convert -O raw`, and
# what was written through it is checked the same way after the revert.

load helpers
load partition-helpers

setup() {
  common_setup
  requires qemu-img
  requires sfdisk
}

teardown() {
  undo_stacked_on_views
  common_teardown
}

# check_every_partition IMAGE RAW PARTS: for each N:START:SIZE in PARTS,
# --partition=N of IMAGE shows exactly that range of RAW, with that size.
check_every_partition() {
  local image=$1 raw=$2 p n start size
  for p in $3; do
    IFS=: read -r n start size <<<"$p"
    start_export -r --partition="$n" "$image"
    [ "$(stat -c %s "$image")" = $((size * 512)) ] ||
      fail "partition $n: size $(stat -c %s "$image"), not $((size * 512))"
    cmp "$image" <(range "$raw" "$start" "$size") ||
      fail "partition $n of $image differs from its range of $raw"
    stop_export
  done
}

@test "MBR, three primaries and three logicals: raw, qcow2 and a qcow2 over a backing file" {
  make_mbr disk.raw
  cp disk.raw plain.img
  qemu-img convert -O qcow2 disk.raw base.qcow2
  # the overlay changes partition 6; the table stays in the backing file
  qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
  qemu-io -f qcow2 -c "write -P 0x5a $((34816 * 512 + 4096)) 64k" top.qcow2 >/dev/null
  qemu-img convert -O raw top.qcow2 top.raw
  check_every_partition plain.img disk.raw "$MBR_PARTS"
  check_every_partition base.qcow2 disk.raw "$MBR_PARTS"
  check_every_partition top.qcow2 top.raw "$MBR_PARTS"
}

@test "GPT with entries 1, 2 and 128: every one, and the gaps refused" {
  make_gpt disk.raw
  qemu-img convert -O qcow2 disk.raw disk.qcow2
  check_every_partition disk.qcow2 disk.raw "$GPT_PARTS"
  for n in 3 127 129; do
    run "$FDE" -r --partition=$n disk.qcow2
    assert_failure 3
    assert_output --partial "disk.qcow2: partition $n: no such partition (gpt partition table)"
  done
  nothing_mounted
}

@test "writes stay inside the partition; past its end ENOSPC, as at the disk's end" {
  make_mbr disk.raw
  qemu-img convert -O qcow2 disk.raw disk.qcow2
  head -c 65536 /dev/urandom >data
  start_export --partition=2 disk.qcow2
  # a write crossing the end is cut short there: the rest gets ENOSPC
  run dd if=/dev/zero of=disk.qcow2 bs=1024 count=1 seek=$((8192 * 512 - 512)) \
    oflag=seek_bytes conv=notrunc status=none
  assert_failure
  assert_output --partial "No space left on device"
  # the last 64 KiB of partition 2, then one sector past its end
  dd if=data of=disk.qcow2 bs=512 seek=$((8192 - 128)) conv=notrunc,fsync status=none
  run dd if=data of=disk.qcow2 bs=512 seek=8192 count=1 conv=notrunc status=none
  assert_failure
  assert_output --partial "No space left on device"
  [ "$(stat -c %s disk.qcow2)" = $((8192 * 512)) ]
  stop_export
  qemu-img check -q disk.qcow2
  qemu-img convert -O raw disk.qcow2 after.raw
  cmp <(range after.raw $((10240 + 8192 - 128)) 128) data || fail "the write is not in partition 2"
  # everything but the last 64 KiB of partition 2 is unchanged: the
  # table, the other partitions, and partition 3 right after the end
  cmp <(range after.raw 0 $((10240 + 8192 - 128))) <(range disk.raw 0 $((10240 + 8192 - 128))) ||
    fail "bytes before the write changed"
  cmp <(range after.raw 18432 $((131072 - 18432))) <(range disk.raw 18432 $((131072 - 18432))) ||
    fail "bytes after partition 2 changed"
}

@test "zero-range and punch on a logical partition read back zeros; the neighbours are intact" {
  requires fallocate
  make_mbr disk.raw
  qemu-img convert -O qcow2 disk.raw disk.qcow2
  start_export --partition=6 disk.qcow2
  fallocate -z -o 65536 -l 131072 disk.qcow2
  fallocate -p -o 1048576 -l 262144 disk.qcow2
  # the last 4 KiB: up to the partition's end, not a byte further
  fallocate -p -o $((4096 * 512 - 4096)) -l 4096 disk.qcow2
  cmp <(range disk.qcow2 128 256) <(head -c 131072 /dev/zero) || fail "zero-range"
  cmp <(range disk.qcow2 2048 512) <(head -c 262144 /dev/zero) || fail "punch"
  cmp <(range disk.qcow2 $((4096 - 8)) 8) <(head -c 4096 /dev/zero) || fail "punch at the end"
  stop_export
  qemu-img check -q disk.qcow2
  qemu-img convert -O raw disk.qcow2 after.raw
  local p6=34816
  for r in "0 $((p6 + 128))" "$((p6 + 384)) $((2048 - 384))" \
           "$((p6 + 2560)) $((4096 - 2560 - 8))" "$((p6 + 4096)) $((131072 - p6 - 4096))"; do
    set -- $r
    cmp <(range after.raw "$1" "$2") <(range disk.raw "$1" "$2") ||
      fail "sectors $1 + $2 changed"
  done
  cmp <(range after.raw $((p6 + 128)) 256) <(head -c 131072 /dev/zero) || fail "zero-range lost"
}

@test "SEEK_DATA, SEEK_HOLE and st_blocks of a sparse partition" {
  requires_python
  truncate -s 64M disk.img
  printf 'label: dos\nstart=2048, size=8192, type=83\nstart=10240, size=16384, type=83\n' |
    sfdisk --quiet disk.img >/dev/null
  # 64 KiB of data 1 MiB into partition 2; data in partition 1 too
  head -c 65536 /dev/urandom | dd of=disk.img bs=512 seek=$((10240 + 2048)) conv=notrunc status=none
  head -c 65536 /dev/urandom | dd of=disk.img bs=512 seek=4096 conv=notrunc status=none
  start_export --partition=2 disk.img
  run "$PYTHON" -c '
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
d = os.lseek(fd, 0, os.SEEK_DATA)
h = os.lseek(fd, d, os.SEEK_HOLE)
try:
    os.lseek(fd, h, os.SEEK_DATA); nxt = "data"
except OSError as e:
    nxt = e.errno
print(d, h, nxt, os.lseek(fd, 0, os.SEEK_HOLE))' disk.img
  assert_success
  assert_output "1048576 1114112 6 0"
  # st_blocks: the 64 KiB allocated inside the window, not the image's
  [ "$(stat -c %b disk.img)" = 128 ] || fail "st_blocks $(stat -c %b disk.img), not 128"
  # counted again (at most once a second) after a write
  head -c 65536 /dev/urandom | dd of=disk.img bs=512 seek=8192 conv=notrunc,fsync status=none
  sleep 1.2
  [ "$(stat -c %b disk.img)" = 256 ] || fail "st_blocks $(stat -c %b disk.img) after a write, not 256"
}

@test "mkfs.ext4 and mount -o loop on --partition=2 of a qcow2 image" {
  requires_root
  requires mkfs.ext4
  requires debugfs
  make_mbr disk.raw
  qemu-img convert -O qcow2 disk.raw disk.qcow2
  start_export --partition=2 disk.qcow2
  mkfs.ext4 -q -F -F disk.qcow2   # twice: the view is a mount point
  mkdir mnt
  mount -o loop disk.qcow2 mnt || skip "mount -o loop is not available here"
  echo "written through a partition view" >mnt/hello
  umount mnt
  stop_export
  qemu-img check -q disk.qcow2
  qemu-img convert -O raw disk.qcow2 after.raw
  range after.raw 10240 8192 >p2.img
  run debugfs -R 'cat /hello' p2.img
  assert_output --partial "written through a partition view"
  for p in 1:2048:8192 3:18432:8192 6:34816:4096; do
    IFS=: read -r n start size <<<"$p"
    cmp <(range after.raw "$start" "$size") <(range disk.raw "$start" "$size") ||
      fail "partition $n changed"
  done
}

# refused IMAGE N MESSAGE: --partition=N of IMAGE exits 3 with one line
# naming the image, the partition and MESSAGE, and mounts nothing.  (-d: a
# view wrongly accepted is a daemon that teardown ends, not a hang.)
refused() {
  local before
  before=$(sha "$1")
  run "$FDE" -d -p "$WORK/refused.pid" --partition="$2" "$1"
  assert_failure 3
  assert_output --partial "$1: partition $2: $3"
  [ "${#lines[@]}" = 1 ] || fail "more than one line: $output"
  nothing_mounted
  [ "$(sha "$1")" = "$before" ] || fail "the image changed"
}

@test "hostile tables are refused with one line naming the image and the partition" {
  # an entry ending past the disk's end (the table written for a larger
  # disk, then the image cut short)
  truncate -s 64M big.img
  printf 'label: dos\nstart=2048, size=8192, type=83\nstart=10240, size=100000, type=83\n' |
    sfdisk --quiet big.img >/dev/null
  truncate -s 16M big.img
  qemu-img convert -O qcow2 big.img big.qcow2
  refused big.qcow2 2 "it ends past the end of the disk"
  # an entry starting past the end
  truncate -s 16M far.img
  printf 'label: dos\nstart=2048, size=8192, type=83\n' | sfdisk --quiet far.img >/dev/null
  poke far.img $((446 + 16 + 4)) 83
  poke far.img $((446 + 16 + 8)) "$(le32 1000000)$(le32 2048)"
  refused far.img 2 "it starts past the end of the disk"
  # overlapping entries: the earlier one is shown, the later refused (two
  # windows on the same sectors are two writers of one file system)
  truncate -s 16M overlap.img
  printf 'label: dos\nstart=2048, size=8192, type=83\n' | sfdisk --quiet overlap.img >/dev/null
  poke overlap.img $((446 + 16 + 4)) 83
  poke overlap.img $((446 + 16 + 8)) "$(le32 4096)$(le32 8192)"
  refused overlap.img 2 "it overlaps an earlier partition of the table"
  run "$FDE" -n --partition=1 overlap.img
  assert_success
  assert_output --partial "partition-start: $((2048 * 512))"
  assert_output --partial "partition-size: $((8192 * 512))"
  # ...unless the earlier one is itself refused (past the disk's end)
  poke overlap.img $((446 + 4)) 83
  poke overlap.img $((446 + 8)) "$(le32 2048)$(le32 100000)"
  refused overlap.img 1 "it ends past the end of the disk"
  run "$FDE" -n --partition=2 overlap.img
  assert_success
  assert_output --partial "partition-start: $((4096 * 512))"
  # the extended partition itself, a missing one, no table at all
  make_mbr mbr.img
  refused mbr.img 4 "it is an extended partition"
  refused mbr.img 8 "no such partition (dos partition table)"
  truncate -s 16M blank.img
  refused blank.img 1 "libblkid finds no partition table"
}

@test "EBR chains that loop or run thousands deep: the first 256 entries only" {
  # two logical partitions, the second EBR linking back to the first:
  # libblkid stops at the loop; what lies beyond it is refused
  truncate -s 64M loop.img
  printf 'label: dos\nstart=2048, size=8192, type=83\nstart=10240, type=5\nstart=12288, size=2048, type=83\nstart=16384, size=2048, type=83\n' |
    sfdisk --quiet loop.img >/dev/null
  # sfdisk put the second EBR at sector 14336; its link entry points back
  # at the extended partition's start, the first EBR
  poke loop.img $((14336 * 512 + 446 + 16 + 4)) 05
  poke loop.img $((14336 * 512 + 446 + 16 + 8)) "$(le32 0)$(le32 2048)"
  run "$FDE" -n --partition=6 loop.img
  assert_success
  assert_output --partial "partition-start: $((16384 * 512))"
  refused loop.img 7 "no such partition (dos partition table)"
  # chains of 300 and 3000 logical partitions (sfdisk stops at 60: written
  # here), more than Linux numbers: as Linux does, the entries from the
  # 257th on are refused, the ones before are shown
  deep_chain deep.img 300 64
  run "$FDE" -n --partition=5 deep.img
  assert_success
  assert_output --partial "partition-start: $(((2048 + 32) * 512))"
  assert_output --partial "partition-size: $((32 * 512))"
  run "$FDE" -n --partition=256 deep.img
  assert_success
  assert_output --partial "partition-start: $(((2048 + 64 * 251 + 32) * 512))"
  refused deep.img 257 "its number is out of range"
  refused deep.img 260 "the table holds more than 256 partitions"
  deep_chain deeper.img 3000 2
  run "$FDE" -n --partition=200 deeper.img
  assert_success
  assert_output --partial "partition-start: $(((2048 + 2 * 195 + 1) * 512))"
  refused deeper.img 1000 "the table holds more than 256 partitions"
  # (past the 1024th EBR the chain is not followed: no such partition)
  run "$FDE" --partition=3004 deeper.img
  assert_failure 3
  assert_output --partial "deeper.img: partition 3004: "
  [ "${#lines[@]}" = 1 ] || fail "more than one line: $output"
  nothing_mounted
}

@test "a GPT of 300 entries: the first 256 are shown, the rest refused" {
  truncate -s 64M gpt300.img
  { printf 'label: gpt\ntable-length: 300\n'
    for i in $(seq 0 299); do echo "start=$((2048 + 64 * i)), size=64"; done
  } | sfdisk --quiet gpt300.img >/dev/null
  for n in 1 256; do
    run "$FDE" -n --partition="$n" gpt300.img
    assert_success
    assert_output --partial "partition-start: $(((2048 + 64 * (n - 1)) * 512))"
  done
  refused gpt300.img 257 "the table holds more than 256 partitions"
  refused gpt300.img 300 "the table holds more than 256 partitions"
  refused gpt300.img 301 "no such partition (gpt partition table)"
}

# deep_chain FILE N STEP: a 64 MiB disk whose extended partition (at
# sector 2048) holds a chain of N EBRs, STEP sectors apart, each followed
# by its logical partition of STEP / 2 sectors at STEP / 2 sectors from it.
deep_chain() {
  truncate -s 64M "$1"
  "$PYTHON" - "$1" "$2" "$3" <<'PY'
import struct, sys
path, n, step = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ext = 2048
def entry(kind, start, size):
    return struct.pack('<B3sB3sII', 0, bytes(3), kind, bytes(3), start, size)
with open(path, 'r+b') as f:
    mbr = bytearray(512)
    mbr[446:462] = entry(0x05, ext, step * n)
    mbr[510:512] = b'\x55\xaa'
    f.write(mbr)
    for i in range(n):
        ebr = bytearray(512)
        ebr[446:462] = entry(0x83, step // 2, step // 2)
        if i + 1 < n:
            ebr[462:478] = entry(0x05, step * (i + 1), step)
        ebr[510:512] = b'\x55\xaa'
        f.seek((ext + step * i) * 512)
        f.write(ebr)
PY
}

@test "a GPT whose headers fail their CRC checks: libblkid's verdict stands" {
  make_gpt gpt.img
  run "$FDE" -n --partition=2 gpt.img
  assert_success
  # one bad primary header: libblkid takes the backup
  poke gpt.img $((512 + 16)) 00000000
  run "$FDE" -n --partition=2 gpt.img
  assert_success
  assert_output --partial "partition-start: $((6144 * 512))"
  # both bad: no table is accepted (the protective MBR is not one)
  poke gpt.img $(( (131072 - 1) * 512 + 16)) 00000000
  refused gpt.img 2 "libblkid finds no partition table it accepts"
  # good headers over an entry array that fails its CRC: the same
  make_gpt gpt.img
  poke gpt.img $((1024 + 32)) 01
  poke gpt.img $(( (131072 - 33) * 512 + 32)) 01
  refused gpt.img 1 "libblkid finds no partition table it accepts"
  # a protective MBR with no GPT behind it
  truncate -s 16M pmbr.img
  printf 'label: dos\nstart=1, type=ee\n' | sfdisk --quiet pmbr.img >/dev/null
  refused pmbr.img 1 "libblkid finds no partition table it accepts"
}

@test "a GPT whose valid header claims 33 million entries: hidden from libblkid, no 4 GiB array read" {
  requires python3
  truncate -s 8G huge.img
  printf 'label: gpt\nstart=2048, size=8192\n' | sfdisk --quiet huge.img >/dev/null
  # both headers: 33554431 entries of 128 bytes (4 GiB), CRCs made valid
  python3 - huge.img <<'PY'
import sys, zlib, struct
with open(sys.argv[1], 'r+b') as f:
    for lba in (1, (f.seek(0, 2) // 512) - 1):
        f.seek(lba * 512); h = bytearray(f.read(512))
        size = struct.unpack_from('<I', h, 12)[0]
        struct.pack_into('<I', h, 80, 33554431)
        struct.pack_into('<I', h, 16, 0)
        struct.pack_into('<I', h, 16, zlib.crc32(bytes(h[:size])))
        f.seek(lba * 512); f.write(h)
PY
  # libblkid given such a header allocates and reads the whole array
  # (2 GB of memory, 12 s): the sectors it reads no longer show it one
  run /usr/bin/time -f 'maxrss %M' "$FDE" -n --partition=1 huge.img
  assert_failure 3
  assert_line --partial "huge.img: partition 1: libblkid finds no partition table it accepts"
  local rss
  rss=$(sed -n 's/^maxrss //p' <<<"$output")
  [ "$rss" -lt 512000 ] || fail "max RSS $rss KiB"
  # --probe too (a superblock probe asks libblkid for the table as well)
  run /usr/bin/time -f 'maxrss %M' "$FDE" -n huge.img
  assert_success
  assert_line --partial "partition-table: none libblkid accepts"
  rss=$(sed -n 's/^maxrss //p' <<<"$output")
  [ "$rss" -lt 512000 ] || fail "--probe: max RSS $rss KiB"
}

@test "a logical partition whose 32-bit start wraps to sector 0 lies outside its extended partition: refused, and left out of -P" {
  truncate -s 64M wrap.img
  # MBR: an extended partition at 51200; its EBR: a logical starting
  # 2^32 - 51200 sectors on, which libblkid adds in 32 bits to sector 0
  poke wrap.img $((446 + 4)) 05
  poke wrap.img $((446 + 8)) "$(le32 51200)$(le32 8000)"
  poke wrap.img 510 55aa
  poke wrap.img $((51200 * 512 + 446 + 4)) 83
  poke wrap.img $((51200 * 512 + 446 + 8)) "$(le32 $(( (1 << 32) - 51200 )))$(le32 100)"
  poke wrap.img $((51200 * 512 + 510)) 55aa
  refused wrap.img 5 "it lies outside the partition that holds it"
  mkdir dir
  FG_MOUNT=dir start_fg -P dir wrap.img
  [ "$(ls dir | tr '\n' ' ')" = "disk " ] || fail "dir holds $(ls dir)"
  kill -INT "$FG_PID"
  wait "$FG_PID"
  run cat fg.err
  assert_output --partial "wrap.img: partition 5 left out: it lies outside the partition that holds it"
}

@test "two extended partitions: the logicals of each lie inside theirs and are shown (as partx shows them)" {
  truncate -s 16M two.img
  # MBR: extended (0x85) at 2048+8192, extended (0x0f) at 10240+8192;
  # EBRs: 5 and 6 in the first (6 to its very end), 7 in the second
  poke two.img $((446 + 4)) 85
  poke two.img $((446 + 8)) "$(le32 2048)$(le32 8192)"
  poke two.img $((446 + 16 + 4)) 0f
  poke two.img $((446 + 16 + 8)) "$(le32 10240)$(le32 8192)"
  poke two.img 510 55aa
  ebr() {   # ebr SECTOR REL-START SIZE [LINK-REL LINK-SIZE]
    poke two.img $(($1 * 512 + 446 + 4)) 83
    poke two.img $(($1 * 512 + 446 + 8)) "$(le32 "$2")$(le32 "$3")"
    if [ $# -gt 3 ]; then
      poke two.img $(($1 * 512 + 446 + 16 + 4)) 05
      poke two.img $(($1 * 512 + 446 + 16 + 8)) "$(le32 "$4")$(le32 "$5")"
    fi
    poke two.img $(($1 * 512 + 510)) 55aa
  }
  ebr 2048 1 2047 4096 4096
  ebr 6144 1 4095
  ebr 10240 1 8191
  local want n
  want=$(partx --show --noheadings -o NR,START,SECTORS two.img | awk '$1 >= 5')
  [ "$(wc -l <<<"$want")" = 3 ] || fail "partx shows: $want"
  for n in 5 6 7; do
    run "$FDE" -n --partition="$n" two.img
    assert_success
    read -r _ start size < <(awk -v n="$n" '$1 == n' <<<"$want")
    assert_line "partition-start: $((start * 512))"
    assert_line "partition-size: $((size * 512))"
  done
  mkdir dir
  FG_MOUNT=dir start_fg -P dir two.img
  [ "$(ls dir | tr '\n' ' ')" = "disk p5 p6 p7 " ] || fail "dir holds $(ls dir)"
  kill -INT "$FG_PID"
  wait "$FG_PID"
  [ ! -s fg.err ] || fail "stderr: $(cat fg.err)"
}

@test "--partition works with --probe, and takes numbers from 1 only" {
  make_mbr disk.img
  run "$FDE" -n --partition=5 disk.img
  assert_success
  assert_output --partial "virtual-size: $((4096 * 512))"
  assert_output --partial "partition: 5"
  assert_output --partial "partition-start: $((28672 * 512))"
  for bad in 0 -1 +2 x 2x "" " 2" 1000001 18446744073709551617; do
    run "$FDE" --partition="$bad" disk.img
    assert_failure 2
    assert_output --partial "invalid --partition"
  done
}

@test "in the foreground the announcement names the partition; ^C reverts" {
  make_mbr disk.img
  start_fg --partition=6 disk.img
  local i
  for i in $(seq 50); do
    grep -q "press ^C to revert" fg.out && break
    sleep 0.1
  done
  run cat fg.out
  assert_line "disk.img: partition 6 of the raw image shown as a raw disk on $WORK/disk.img; press ^C to revert"
  kill -INT "$FG_PID"
  wait "$FG_PID"
  wait_unmounted "$WORK/disk.img"
  [ "$(stat -c %s disk.img)" = $((64 << 20)) ]
}
