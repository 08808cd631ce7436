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
  assert_line "partition 1: start 1048576 (sector 2048), size 8388608 (16384 sectors)"
  assert_line "partition 1 type: 0x83 (Linux)"
  assert_line "partition 2: start 9437184 (sector 18432), size 7340032 (14336 sectors)"
  assert_line "partition 2 contents: nothing libblkid recognises"
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
  assert_line "filesystem-label: probelabel"
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

@test "formats made by qemu-img that the table refuses are refused by name (exit 3)" {
  requires qemu-img
  local list fmt state title tried=0
  # "NAME STATUS TITLE" lines; the names are QEMU's
  list=$("$FDE" --list-formats) || fail "--list-formats failed"
  while read -r fmt state title; do
    [ "$state" = refused ] || continue
    qemu-img create -q -f "$fmt" "x.$fmt" 16M 2>/dev/null ||
      { echo "# qemu-img cannot create $fmt; not checked" >&3; continue; }
    assert_refused "x.$fmt" "$title"
    tried=$((tried + 1))
  done <<<"$list"
  [ "$tried" -ge 3 ] || fail "only $tried refused formats tried: $list"
}

@test "a LUKS volume is refused (exit 3)" {
  requires qemu-img
  # a short key-derivation benchmark first; on a loaded host (the
  # sanitizer run) a short one can fail, so longer ones follow
  local t err=
  for t in 10 100 1000 2000; do
    err=$(qemu-img create -q -f luks --object secret,id=sec0,data=x \
      -o key-secret=sec0,iter-time=$t x.luks 16M 2>&1) && break
    rm -f x.luks
  done
  [ -s x.luks ] || skip "qemu-img cannot create luks images: $err"
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

# ---- What is inside the virtual disk (issue 11) -----------------------------
# Images are made with sfdisk, mkfs.ext4 and mkswap on raw files and
# converted with qemu-img; the listing --probe prints must be exactly what
# sfdisk -J and blkid -p find in `qemu-img convert -O raw` of the image.

# expected_listing RAW: the lines --probe prints for RAW's contents,
# computed from sfdisk -J (the table), sfdisk --list-types (type names)
# and blkid -p on each partition's byte range (file systems).
expected_listing() {
  "$PYTHON" - "$1" <<'PY'
import json, os, subprocess, sys
raw = sys.argv[1]

def run(*argv):
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    return p.returncode, p.stdout.decode().rstrip("\n")

def type_names(label):
    out = run("sfdisk", "--label", label, "--list-types")[1].splitlines()
    return {l.split(None, 1)[0].lower(): l.split(None, 1)[1]
            for l in out[2:] if len(l.split(None, 1)) == 2}

def contents(prefix, off, size):
    def value(tag):
        return run("blkid", "-p", "-O", str(off), "-S", str(size),
                   "-o", "value", "-s", tag, raw)[1]
    fstype = value("TYPE")
    if not fstype:
        return [prefix + "contents: nothing libblkid recognises"]
    lines = [prefix + "filesystem: " + fstype]
    for tag, key in (("LABEL", "filesystem-label"), ("UUID", "filesystem-uuid")):
        if value(tag):
            lines.append(prefix + key + ": " + value(tag))
    return lines

rc, out = run("sfdisk", "-J", raw)
if rc != 0:
    print("\n".join(contents("", 0, os.path.getsize(raw))))
    sys.exit(0)
table = json.loads(out)["partitiontable"]
label, disk_id = table["label"], table["id"]
names = type_names(label)
print("partition-table: " + label)
if label == "dos":
    if int(disk_id, 16):
        print("partition-table-uuid: " + disk_id)
else:
    print("partition-table-uuid: " + disk_id.lower())
for p in table["partitions"]:
    n = int(p["node"][len(raw):].lstrip("p"))
    start, size, ptype = p["start"], p["size"], p["type"].lower()
    extended = label == "dos" and ptype in ("5", "f", "85")
    print("partition %d: start %d (sector %d), size %d (%d sectors)%s"
          % (n, start * 512, start, size * 512, size,
             " (extended)" if extended else ""))
    shown = "0x%02x" % int(ptype, 16) if label == "dos" else ptype
    print("partition %d type: %s (%s)" % (n, shown, names[ptype]))
    if p.get("name"):
        print("partition %d name: %s" % (n, p["name"]))
    uuid = p.get("uuid", "").lower()
    if label == "dos" and int(disk_id, 16):
        uuid = "%s-%02x" % (disk_id[2:], n)
    if uuid:
        print("partition %d uuid: %s" % (n, uuid))
    if not extended:
        print("\n".join(contents("partition %d " % n, start * 512, size * 512)))
PY
}

# listing: the lines of $output from the first that describes the disk's
# contents (the lines before them describe the image and the format).
listing() {
  sed -n '/^\(partition-table\|filesystem\|contents\):/,$p' <<<"$output"
}

# check_listing IMAGE [OPTION]...: --probe of IMAGE lists exactly what
# sfdisk -J and blkid -p find in `qemu-img convert -O raw` of IMAGE.
check_listing() {
  local image=$1
  shift
  qemu-img convert -O raw "$image" oracle.raw
  local want
  want=$(expected_listing oracle.raw)
  probe_ok "$@" "$image"
  [ "$(listing)" = "$want" ] ||
    fail "$image: --probe lists"$'\n'"$(listing)"$'\n'"but sfdisk -J and blkid -p find"$'\n'"$want"
  rm -f oracle.raw
}

# File systems to put in partitions: ext4 with a label, swap with a label.
make_file_systems() {
  truncate -s 4M ext4-a.img ext4-b.img
  mkfs.ext4 -q -F -E nodiscard -L boot ext4-a.img
  mkfs.ext4 -q -F -E nodiscard -L logical6 ext4-b.img
  truncate -s 4M swap.img
  mkswap -q -L swp swap.img
}

# put IMAGE FORMAT FILE SECTOR: write FILE into IMAGE at SECTOR (qemu-io,
# so that on a qcow2 overlay it lands in the overlay).
put() {
  qemu-io -f "$2" -c "write -q -s $3 $(($4 * 512)) $(stat -c %s "$3")" "$1" >/dev/null
}

# make_mbr_disk FILE: 64 MiB, three primaries, an extended partition (4)
# holding two logicals (5, 6): ext4 in 1 and 6, swap in 2, nothing in 3
# and 5.  Only the table if $2 is "table-only".
make_mbr_disk() {
  truncate -s 64M "$1"
  printf '%s\n' 'label: dos' 'label-id: 0x5eedf00d' \
    'start=2048, size=8192, type=83' 'start=10240, size=8192, type=82' \
    'start=18432, size=8192, type=c' 'start=26624, type=5' \
    'start=28672, size=8192, type=8e' 'start=38912, size=16384, type=83' |
    sfdisk --quiet "$1" >/dev/null
  [ "${2:-}" = table-only ] || fill_mbr_disk "$1" raw
}

fill_mbr_disk() {
  put "$1" "$2" ext4-a.img 2048
  put "$1" "$2" swap.img 10240
  put "$1" "$2" ext4-b.img 38912
}

# make_gpt_disk FILE: 64 MiB GPT, named partitions: EFI System (empty),
# root (ext4), swap, and an unnamed Linux home (empty).
make_gpt_disk() {
  truncate -s 64M "$1"
  printf '%s\n' 'label: gpt' \
    'start=2048, size=8192, type=U, name="EFI system"' \
    'start=10240, size=16384, type=L, name="root"' \
    'start=26624, size=8192, type=S, name="swap space"' \
    'start=34816, size=8192, type=H' | sfdisk --quiet "$1" >/dev/null
  [ "${2:-}" = table-only ] || fill_gpt_disk "$1" raw
}

fill_gpt_disk() {
  put "$1" "$2" ext4-a.img 10240
  put "$1" "$2" swap.img 26624
}

requires_listing_tools() {
  requires qemu-img
  requires qemu-io
  requires sfdisk
  requires blkid
  requires mkfs.ext4
  requires mkswap
  requires_python
}

@test "--probe lists an MBR with a logical partition as sfdisk -J and blkid -p do: raw, qcow2, qcow2 over a raw backing file" {
  requires_listing_tools
  make_file_systems
  make_mbr_disk disk.raw
  qemu-img convert -O qcow2 disk.raw disk.qcow2
  # the table in the backing file, the file systems in the overlay
  make_mbr_disk base.raw table-only
  qemu-img create -q -f qcow2 -b base.raw -F raw top.qcow2
  fill_mbr_disk top.qcow2 qcow2
  for image in disk.raw disk.qcow2 top.qcow2; do
    check_listing "$image"
  done
  # what was compared, spelt out once
  assert_line "partition-table: dos"
  assert_line "partition-table-uuid: 0x5eedf00d"
  assert_line "partition 4: start 13631488 (sector 26624), size 53477376 (104448 sectors) (extended)"
  assert_line "partition 6: start 19922944 (sector 38912), size 8388608 (16384 sectors)"
  assert_line "partition 6 type: 0x83 (Linux)"
  assert_line "partition 6 uuid: 5eedf00d-06"
  assert_line "partition 6 filesystem: ext4"
  assert_line "partition 6 filesystem-label: logical6"
  assert_line "partition 2 filesystem: swap"
  assert_line "partition 2 filesystem-label: swp"
  assert_line "partition 5 contents: nothing libblkid recognises"
}

@test "--probe lists a GPT with named partitions as sfdisk -J and blkid -p do: raw, qcow2, qcow2 over a raw backing file" {
  requires_listing_tools
  make_file_systems
  make_gpt_disk disk.raw
  qemu-img convert -O qcow2 disk.raw disk.qcow2
  make_gpt_disk base.raw table-only
  qemu-img create -q -f qcow2 -b base.raw -F raw top.qcow2
  fill_gpt_disk top.qcow2 qcow2
  for image in disk.raw disk.qcow2 top.qcow2; do
    check_listing "$image"
  done
  assert_line "partition-table: gpt"
  assert_line "partition 1 type: c12a7328-f81f-11d2-ba4b-00a0c93ec93b (EFI System)"
  assert_line "partition 1 name: EFI system"
  assert_line "partition 2 name: root"
  assert_line "partition 2 filesystem: ext4"
  assert_line "partition 2 filesystem-label: boot"
  assert_line "partition 3 type: 0657fd6d-a4ab-43c4-84e5-0933c84b4f4f (Linux swap)"
  assert_line "partition 4 type: 933ac7e1-2eb4-4f13-b844-0e14e2aef915 (Linux home)"
  refute_line --partial "partition 4 name:"
}

@test "--probe on a qcow2 disk with ext4 and no partition table" {
  requires_listing_tools
  truncate -s 32M fs.raw
  mkfs.ext4 -q -F -E nodiscard -L wholedisk fs.raw
  qemu-img convert -O qcow2 fs.raw fs.qcow2
  check_listing fs.qcow2
  assert_line "format: qcow2"
  assert_line "filesystem: ext4"
  assert_line "filesystem-label: wholedisk"
  assert_line "filesystem-uuid: $(blkid -p -o value -s UUID fs.raw)"
  refute_line --partial "partition-table"
  refute_line --regexp '^partition [0-9]'
}

@test "--probe --partition=2 describes the file system inside partition 2" {
  requires_listing_tools
  make_file_systems
  make_gpt_disk disk.raw
  qemu-img convert -O qcow2 disk.raw disk.qcow2
  dd if=disk.raw of=p2.raw bs=512 skip=10240 count=16384 status=none
  probe_ok --partition=2 disk.qcow2
  assert_line "partition: 2"
  # the window holds no table, only the file system
  refute_line --partial "partition-table"
  refute_line --regexp '^partition [0-9]'
  assert_line "filesystem: ext4"
  assert_line "filesystem-label: $(blkid -p -o value -s LABEL p2.raw)"
  assert_line "filesystem-uuid: $(blkid -p -o value -s UUID p2.raw)"
}

@test "--probe escapes a hostile file system label and partition name: one line each" {
  requires_listing_tools
  # a label that would forge a line, with an escape and a non-UTF-8 byte
  truncate -s 8M fs.raw
  mkfs.ext4 -q -F -E nodiscard -L $'\e\nfilesystem: \xff' fs.raw
  qemu-img convert -O qcow2 fs.raw fs.qcow2
  for image in fs.raw fs.qcow2; do
    probe_ok "$image"
    assert_line 'filesystem-label: \x1b\x0afilesystem: \xff'
    assert_line "filesystem: ext4"
    [ "$(grep -c '^filesystem:' <<<"$output")" = 1 ] || fail "$image: a forged line: $output"
  done
  # a GPT partition name with a newline, an escape and a backslash
  make_gpt_disk disk.raw table-only
  sfdisk --quiet --part-label disk.raw 2 $'x\npartition 9: \e[2J\\' >/dev/null
  # UTF-8 prints as it is, but not a right-to-left override (U+202E)
  sfdisk --quiet --part-label disk.raw 3 $'donn\xc3\xa9es\xe2\x80\xae' >/dev/null
  qemu-img convert -O qcow2 disk.raw disk.qcow2
  probe_ok disk.qcow2
  assert_line 'partition 2 name: x\x0apartition 9: \x1b[2J\\'
  assert_line 'partition 3 name: donn'$'\xc3\xa9''es\xe2\x80\xae'
  refute_line --regexp '^partition 9'
}

@test "--probe on a GPT whose headers both fail their CRC: no partitions, and libblkid's verdict" {
  requires_listing_tools
  make_gpt_disk disk.raw table-only
  # invert one byte of each header's CRC field (offset 16 of LBA 1 and of
  # the last LBA): writing a fixed byte left a CRC that already held it
  # valid (the GUIDs, and so the CRCs, are random), and the test failed
  invert_byte disk.raw $((512 + 16))
  invert_byte disk.raw $((64 * 1048576 - 512 + 16))
  [ "$(blkid -p -o value -s PTTYPE disk.raw)" = PMBR ] ||
    fail "blkid -p accepts the table: the image is not what the test needs"
  qemu-img convert -O qcow2 disk.raw disk.qcow2
  probe_ok disk.qcow2
  assert_line --regexp '^partition-table: none libblkid accepts \(.*bad CRC\)$'
  refute_line --regexp '^partition [0-9]'
  assert_line "contents: nothing libblkid recognises"
}

# invert_byte FILE OFFSET: replace the byte at OFFSET by its complement,
# which always differs from it.
invert_byte() {
  local byte
  byte=$(od -An -tu1 -j "$2" -N1 "$1" | tr -d ' ')
  printf "\\$(printf %03o $((byte ^ 255)))" |
    dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}

# check_type_names LABEL TYPE...: a table of LABEL with one small partition
# per TYPE (for dos, logical partitions sfdisk places after their EBRs);
# every type line of --probe names its type as sfdisk --list-types does,
# or says unknown.  Sets NAMED to the number of names given.
check_type_names() {
  local label=$1 n=0 t
  shift
  truncate -s 256M "$label.raw"
  {
    echo "label: $label"
    [ "$label" = gpt ] && echo "table-length: 256"
    [ "$label" = dos ] && echo "start=2048, type=5"
    for t; do
      if [ "$label" = gpt ]; then
        echo "start=$((4096 + n * 256)), size=128, type=$t"
      else
        echo "size=8, type=$t"
      fi
      n=$((n + 1))
    done
  } | sfdisk --quiet "$label.raw" >/dev/null
  qemu-img convert -O qcow2 "$label.raw" "$label.qcow2"
  probe_ok "$label.qcow2"
  NAMED=$(count_type_names "$label" "$#") || fail "$label: $NAMED"
}

# count_type_names LABEL COUNT: check the type lines of $output (see
# check_type_names) and print how many name their type.
count_type_names() {
  "$PYTHON" - "$1" "$output" "$2" <<'PY'
import re, subprocess, sys
label, output, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
out = subprocess.run(["sfdisk", "--label", label, "--list-types"],
                     stdout=subprocess.PIPE).stdout.decode().splitlines()
names = {l.split(None, 1)[0].lower(): l.split(None, 1)[1]
         for l in out[2:] if len(l.split(None, 1)) == 2}
lines = re.findall(r"^partition (\d+) type: (\S+) \((.*)\)$", output, re.M)
named = 0
for n, t, name in lines:
    if label == "dos" and n == "1":
        continue                # the extended container
    key = "%x" % int(t, 16) if label == "dos" else t
    if name != "unknown":
        named += 1
        if names.get(key) != name:
            sys.exit("type %s: --probe says %r, sfdisk says %r"
                     % (t, name, names.get(key)))
if len(lines) - (label == "dos") != count:
    sys.exit("%d type lines for %d partitions" % (len(lines), count))
print(named)
PY
}

@test "--probe names partition types as sfdisk --list-types does" {
  requires_listing_tools
  # every type sfdisk knows but the DOS extended ones (at most 200 in a
  # GPT, 50 in a DOS table: sfdisk stops at 60 partitions)
  local gpt dos named=0
  gpt=$(sfdisk --label gpt --list-types | awk 'NR > 2 && NF { print $1 }' | head -200)
  dos=$(sfdisk --label dos --list-types | awk 'NR > 2 && NF { print $1 }' |
    grep -vixE '0|5|f|85')
  check_type_names gpt $gpt
  named=$NAMED
  check_type_names dos $(head -50 <<<"$dos")
  named=$((named + NAMED))
  check_type_names dos $(tail -n +51 <<<"$dos")
  named=$((named + NAMED))
  echo "# $named types named" >&3
  [ "$named" -ge 40 ] || fail "only $named types named"
}

# probe_with_faults SHIM NTH: --probe -r disk.raw with the fault shim
# failing the NTH pread of the image (0: none) with EIO; every pread is
# logged to fault.log ("GEN SEQ OP FUNCTION LENGTH OFFSET RESULT").
probe_with_faults() {
  : >fault.log
  run env FDE_FAULT_FILE="$WORK/disk.raw" FDE_FAULT_OP=pread \
    FDE_FAULT_NTH="$2" FDE_FAULT_ERRNO=EIO FDE_FAULT_LOG="$WORK/fault.log" \
    LD_PRELOAD="$1" \
    ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0 \
    timeout -k 2 10 "$FDE" --probe -r disk.raw
}

@test "--probe on a disk one partition of which cannot be read: that partition says so, the others are listed" {
  requires_listing_tools
  local shim=${FDE_BUILDDIR:-$FDE_SRCDIR}/tests/fault-shim.so nth
  [ -f "$shim" ] ||
    fail "$shim is missing: make check builds it (make tests/fault-shim.so)"
  make_file_systems
  make_mbr_disk disk.raw
  # the first 64 KiB of partition 6 are read twice: with the table's
  # sectors, then to probe its file system; fail the second read
  probe_with_faults "$shim" 0
  assert_line "partition 6 filesystem: ext4"
  nth=$(awk -v off=$((38912 * 512)) '$6 == off && ++n == 2 { print $2 }' fault.log)
  [ -n "$nth" ] || fail "partition 6 is not read twice: $(cat fault.log)"
  probe_with_faults "$shim" "$nth"
  grep -q "$nth pread.*injected" fault.log || fail "no fault injected: $(cat fault.log)"
  [ "$status" -eq 1 ] || fail "exit status $status after a failed read, not 1"
  assert_line "partition 6 contents: unreadable (Input/output error)"
  assert_line "fuse-disk-export: disk.raw: partition 6 cannot be read to probe for a file system: Input/output error"
  assert_line "partition 1 filesystem: ext4"
  assert_line "partition 2 filesystem: swap"
  assert_line "partition 6 type: 0x83 (Linux)"
  refute_line "partition 6 filesystem: ext4"
  # the table itself unreadable (its first read of 64 KiB at 0, after
  # the format's probe): said, and nothing listed
  probe_with_faults "$shim" 0
  nth=$(awk '$5 == 65536 && $6 == 0 { print $2; exit }' fault.log)
  probe_with_faults "$shim" "$nth"
  [ "$status" -eq 1 ] || fail "exit status $status after a failed read, not 1"
  assert_line "partition-table: unreadable (Input/output error)"
  assert_line "fuse-disk-export: disk.raw: cannot read the partition table: Input/output error"
  refute_line --regexp '^partition [0-9]'
}
