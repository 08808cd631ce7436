#!/usr/bin/env bats
# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
# VMDK images, read-only (formats/vmdk.c, vmdk-desc.c; the grain tables
# are formats/vmdk-sparse.c's).
#
# Which oracle decides:
#  - every variant qemu-img makes (create and convert -O vmdk with each
#    subformat, zeroed_grain=on, a delta with -b): QEMU.  The view must
#    equal `qemu-img convert -O raw` byte for byte and SEEK_DATA/SEEK_HOLE
#    must give the data ranges of `qemu-img map --output=json`;
#  - libvmdk's vmdkmount (Debian libvmdk-utils) is a second oracle for the
#    single-layer images, where installed;
#  - hostile images (qemu-img's with fields changed by tests/vmdk-poke.py
#    or with edited descriptors) are refused at open: exit 3, one line
#    naming the image and the problem, nothing mounted.  Where we refuse
#    what QEMU reads (absolute and ".." extent names, a descriptor over
#    1 MiB, a parentCID mismatch at open), the test says so.

load helpers
load format-helpers

bats_require_minimum_version 1.5.0

setup() {
  common_setup
  requires qemu-img
  requires qemu-io
  requires_python
  POKE="$PYTHON $FDE_SRCDIR/tests/vmdk-poke.py"
}
teardown() { common_teardown; }

MiB=$((1 << 20))
# not a multiple of the 64 KiB grain (qemu-img rounds it up to a sector)
SIZE=$((5 * MiB + 3 * 65536 + 1000))
SUBFORMATS="monolithicSparse monolithicFlat twoGbMaxExtentSparse twoGbMaxExtentFlat streamOptimized"

# make_raw FILE SIZE: random data with holes: a run at 0, one inside a
# grain, one across a grain boundary, the (partial) last grain.
make_raw() {
  truncate -s "$2" "$1"
  put_random "$1" 0 $MiB
  put_random "$1" $((2 * MiB + 100000)) 4096
  put_random "$1" $((4 * MiB - 512)) 1536
  put_random "$1" $(($2 - 1536)) 1536
}

# check_view IMG [OPTION]...: the view of IMG equals qemu-img's raw
# conversion; SEEK_DATA/SEEK_HOLE give qemu-img map's data ranges (sets
# SEEK_RUNS); $WORK/expect.raw is qemu-img's view.
check_view() {
  local img=$1
  shift
  qemu-img convert -f vmdk -O raw "$img" "$WORK/expect.raw"
  qemu-img map -f vmdk --output=json "$img" >"$WORK/map.json"
  start_export "$@" "$img"
  compare_view "$img" "$WORK/expect.raw" 65536
  seek_matches_map "$img" "$WORK/map.json"
  stop_export
}

# vmdkmount_matches IMG EXPECT: libvmdk's vmdkmount shows IMG as EXPECT;
# nothing checked without vmdkmount, or for a kind it does not read
# (libvmdk 20200926 says "Unsupported disk type." for monolithicFlat).
vmdkmount_matches() {
  command -v vmdkmount >/dev/null || return 0
  local m="$WORK/vmdk.mnt" rc out
  mkdir -p "$m"
  out=$(vmdkmount "$1" "$m" 2>&1) || {
    [[ "$out" == *"Unsupported disk type"* ]] && return 0
    fail "vmdkmount $1 failed: $out"
  }
  cmp "$m/vmdk1" "$2"
  rc=$?
  fusermount3 -u "$m" 2>/dev/null || fusermount -u "$m" 2>/dev/null ||
    umount "$m"
  [ "$rc" = 0 ] || fail "vmdkmount shows $1 differently from $2"
}

qemu_refuses() {
  run qemu-img info -f vmdk "$1"
  [ "$status" != 0 ] || fail "qemu-img accepts $1: $output"
}

# ---- every subformat qemu-img makes --------------------------------------

@test "empty VMDKs of every subformat from qemu-img create read as qemu-img shows them (zeros, no data)" {
  local s
  for s in $SUBFORMATS; do
    qemu-img create -q -f vmdk -o subformat=$s "$s.vmdk" $SIZE
    check_view "$s.vmdk"
    [ "$(stat -c %s "$WORK/expect.raw")" = $(((SIZE + 511) / 512 * 512)) ] ||
      fail "$s: qemu-img's size is not the size rounded to a sector"
    # (a flat extent's file is data where the file system has it: qemu-img
    # writes a new one out, and seek_matches_map has compared that)
    [[ "$s" == *Flat ]] || [ "$SEEK_RUNS" = 0 ] ||
      fail "$s: empty image shows $SEEK_RUNS data ranges"
  done
}

@test "random data with holes converted to every subformat reads as qemu-img convert -O raw; SEEK_DATA/SEEK_HOLE as qemu-img map; vmdkmount agrees" {
  make_raw src.raw $SIZE
  local s
  for s in $SUBFORMATS; do
    qemu-img convert -f raw -O vmdk -o subformat=$s src.raw "$s.vmdk"
    check_view "$s.vmdk"
    cmp -n $SIZE "$WORK/expect.raw" src.raw || fail "$s: qemu-img's round trip differs"
    [ "$SEEK_RUNS" -ge 3 ] || fail "$s: only $SEEK_RUNS data ranges"
    vmdkmount_matches "$s.vmdk" "$WORK/expect.raw"
    check_view "$s.vmdk" --no-splice
  done
}

@test "fully allocated VMDKs of random data, and ones written by qemu-io, read as qemu-img shows them" {
  head -c $((3 * MiB + 4096 + 512)) /dev/urandom >full.raw
  local s
  for s in $SUBFORMATS; do
    qemu-img convert -f raw -O vmdk -o subformat=$s full.raw "full-$s.vmdk"
    check_view "full-$s.vmdk"
    cmp -n $(stat -c %s full.raw) "$WORK/expect.raw" full.raw ||
      fail "$s: qemu-img's round trip differs"
    [ "$SEEK_RUNS" = 1 ] || fail "$s: $SEEK_RUNS data ranges, want 1"
  done
  for s in monolithicSparse monolithicFlat twoGbMaxExtentSparse; do
    qemu-img create -q -f vmdk -o subformat=$s "io-$s.vmdk" 16M
    qemu-io -f vmdk -c 'write -P 0x5a 10M 4k' -c 'write -P 0xa5 1M 512' \
      -c 'write -P 0x33 2047k 2k' -c 'write -P 0x44 16380k 4k' \
      "io-$s.vmdk" >/dev/null
    check_view "io-$s.vmdk"
    vmdkmount_matches "io-$s.vmdk" "$WORK/expect.raw"
  done
}

@test "zeroed-grain entries (zeroed_grain=on, qemu-io write -z) read as zeros, block status says zero, as qemu-img shows" {
  make_raw src.raw $SIZE
  local s
  for s in monolithicSparse twoGbMaxExtentSparse; do
    qemu-img convert -f raw -O vmdk -o subformat=$s,zeroed_grain=on src.raw "zg-$s.vmdk"
    # whole grains over data become zeroed-grain entries
    qemu-io -f vmdk -c 'write -z 0 128k' -c 'write -z 4M 64k' \
      "zg-$s.vmdk" >/dev/null
    check_view "zg-$s.vmdk"
    cmp -n 131072 "$WORK/expect.raw" /dev/zero || fail "$s: qemu-img does not read zeros"
    run --separate-stderr "$FDE" -r --probe "zg-$s.vmdk"
    assert_line "  zeroed-grains: yes"
  done
}

@test "a twoGbMaxExtent image over 2 GiB is split into extents: the view joins them as qemu-img does" {
  local s w
  for s in twoGbMaxExtentSparse twoGbMaxExtentFlat; do
    qemu-img create -q -f vmdk -o subformat=$s "big-$s.vmdk" 2100M
    qemu-io -f vmdk -c 'write -P 0x61 0 64k' -c 'write -P 0x62 2047M 2M' \
      -c 'write -P 0x63 2099M 1M' "big-$s.vmdk" >/dev/null
    run --separate-stderr "$FDE" -r --probe "big-$s.vmdk"
    assert_success
    assert_line "extents: 2"
    qemu-img convert -f vmdk -O raw "big-$s.vmdk" "$WORK/expect.raw"
    qemu-img map -f vmdk --output=json "big-$s.vmdk" >"$WORK/map.json"
    start_export "big-$s.vmdk"
    [ "$(stat -c %s "big-$s.vmdk")" = $((2100 * MiB)) ] || fail "$s: view size"
    # (not all 2 GiB twice: the first MiB, the MiBs around the extents'
    # boundary at 2 GiB, the last MiB, and the holes by SEEK_DATA)
    for w in 0 2046 2047 2048 2049 2099; do
      cmp <(dd if="big-$s.vmdk" bs=1M skip=$w count=1 status=none) \
        <(dd if="$WORK/expect.raw" bs=1M skip=$w count=1 status=none) ||
        fail "$s: MiB $w differs"
    done
    seek_matches_map "big-$s.vmdk" "$WORK/map.json"
    stop_export
    rm -f "$WORK/expect.raw"
  done
}

@test "--probe shows format vmdk, the size, the subformat, CIDs, extents and the sparse header" {
  make_raw src.raw $SIZE
  local s want=$(((SIZE + 511) / 512 * 512))
  for s in $SUBFORMATS; do
    qemu-img convert -f raw -O vmdk -o subformat=$s src.raw "$s.vmdk"
    run --separate-stderr "$FDE" --probe "$s.vmdk"
    assert_success
    assert_line "format: vmdk"
    assert_line "virtual-size: $want"
    assert_line "subformat: $s"
    assert_line "writable: no"
    assert_line "adapter-type: ide"
    assert_line --regexp '^cid: [0-9a-f]{8}$'
    assert_line "parent-cid: ffffffff"
    assert_line "extents: 1"
  done
  run --separate-stderr "$FDE" --probe monolithicFlat.vmdk
  assert_line "extent: FLAT $want monolithicFlat-flat.vmdk offset 0"
  run --separate-stderr "$FDE" --probe streamOptimized.vmdk
  assert_line "  compressed: yes"
  run --separate-stderr "$FDE" --probe twoGbMaxExtentSparse.vmdk
  assert_line "extent: SPARSE $want twoGbMaxExtentSparse-s001.vmdk"
}

@test "a VMDK is served read-only without -r: the live line says so, writes fail with EROFS, extents unchanged" {
  make_raw src.raw $SIZE
  local s sum
  for s in monolithicSparse monolithicFlat; do
    qemu-img convert -f raw -O vmdk -o subformat=$s src.raw "$s.vmdk"
    sum=$(cat "$s"*.vmdk | sha256sum)
    start_fg "$s.vmdk"
    grep -q 'read-only: vmdk images are served read-only' "$WORK/fg.out" "$WORK/fg.err" ||
      fail "the live line does not say read-only: $(cat "$WORK/fg.out" "$WORK/fg.err")"
    run dd if=/dev/zero of="$s.vmdk" bs=512 count=1 conv=notrunc status=none
    assert_failure
    assert_output --partial "Read-only file system"
    kill -INT "$FG_PID"
    wait "$FG_PID" || fail "the export did not end cleanly: $(cat "$WORK/fg.err")"
    [ "$(cat "$s"*.vmdk | sha256sum)" = "$sum" ] || fail "$s: the image changed"
  done
}

# ---- deltas ----------------------------------------------------------------

@test "a delta (qemu-img create -b parent.vmdk -F vmdk) reads its grains from itself and the rest from its parent; --probe shows the chain" {
  make_raw src.raw $SIZE
  local s
  for s in monolithicSparse monolithicFlat streamOptimized; do
    qemu-img convert -f raw -O vmdk -o subformat=$s src.raw "par-$s.vmdk"
    qemu-img create -q -f vmdk -b "par-$s.vmdk" -F vmdk "child-$s.vmdk"
    qemu-io -f vmdk -c 'write -P 0x11 64k 4k' -c 'write -P 0x22 3M 100k' \
      "child-$s.vmdk" >/dev/null
    check_view "child-$s.vmdk"
    run --separate-stderr "$FDE" --probe "child-$s.vmdk"
    assert_success
    assert_line "backing-file: par-$s.vmdk"
    assert_line "backing-format: vmdk (probed)"
    assert_line "  subformat: $s"
    refute_line "parent-cid: ffffffff"
  done
  # a grandchild (twoGbMaxExtentSparse: a delta's descriptor file) on a
  # delta
  qemu-img create -q -f vmdk -o subformat=twoGbMaxExtentSparse \
    -b child-monolithicSparse.vmdk -F vmdk grand.vmdk
  qemu-io -f vmdk -c 'write -P 0x33 1M 64k' grand.vmdk >/dev/null
  check_view grand.vmdk
  run --separate-stderr "$FDE" --probe grand.vmdk
  assert_line "  backing-file: par-monolithicSparse.vmdk"
}

@test "a delta whose parentCID is not its parent's CID is refused at open (QEMU fails its reads of the parent)" {
  make_raw src.raw $SIZE
  qemu-img convert -f raw -O vmdk src.raw par.vmdk
  qemu-img create -q -f vmdk -b par.vmdk -F vmdk child.vmdk
  start_export child.vmdk                       # the control opens
  stop_export
  local pcid
  pcid=$($POKE child.vmdk desc | sed -n 's/^parentCID=//p')
  $POKE child.vmdk replace-desc "parentCID=$pcid" "parentCID=0badc1d0"
  run qemu-img convert -f vmdk -O raw child.vmdk q.raw
  assert_failure                              # QEMU: EINVAL on the read
  expect_refused child.vmdk "parent .*par.vmdk has CID [0-9a-f]{8}, not the parentCID 0badc1d0"
  # a parent that is no VMDK has no CID: refused too
  qemu-img create -q -f vmdk -b par.vmdk -F vmdk child2.vmdk
  qemu-img convert -f vmdk -O raw par.vmdk par.raw
  $POKE child2.vmdk replace-desc 'parentFileNameHint="par.vmdk"' \
    'parentFileNameHint="par.raw"'
  expect_refused child2.vmdk "parent .*par.raw is a raw image, not a VMDK"
}

@test "a delta whose parent is missing, is itself, or loops back is refused" {
  make_raw src.raw $SIZE
  qemu-img convert -f raw -O vmdk src.raw par.vmdk
  qemu-img create -q -f vmdk -b par.vmdk -F vmdk child.vmdk
  cp child.vmdk gone.vmdk
  $POKE gone.vmdk replace-desc 'parentFileNameHint="par.vmdk"' \
    'parentFileNameHint="nope.vmdk"'
  expect_refused gone.vmdk "nope.vmdk: No such file"
  run qemu-img convert -f vmdk -O raw gone.vmdk q.raw
  assert_failure
  cp child.vmdk self.vmdk
  $POKE self.vmdk replace-desc 'parentFileNameHint="par.vmdk"' \
    'parentFileNameHint="self.vmdk"'
  expect_refused self.vmdk "loop"
  # a -> b -> a
  cp child.vmdk a.vmdk
  cp child.vmdk b.vmdk
  $POKE a.vmdk replace-desc 'parentFileNameHint="par.vmdk"' 'parentFileNameHint="b.vmdk"'
  $POKE b.vmdk replace-desc 'parentFileNameHint="par.vmdk"' 'parentFileNameHint="a.vmdk"'
  expect_refused a.vmdk "loop"
}

# ---- hostile images --------------------------------------------------------

# flat_desc NAME EXTENT-LINE: a monolithicFlat descriptor NAME whose only
# extent line is EXTENT-LINE (qemu-img's own descriptor, edited).
flat_desc() {
  qemu-img create -q -f vmdk -o subformat=monolithicFlat tmpl.vmdk 1M
  sed "s|^RW .*|$2|" tmpl.vmdk >"$1"
}

@test "a descriptor naming /etc/passwd, ../ files or a device as an extent is refused by name or by type" {
  flat_desc ok.vmdk 'RW 2048 FLAT "tmpl-flat.vmdk" 0'
  start_export ok.vmdk                          # the control opens
  stop_export
  flat_desc passwd.vmdk 'RW 2 FLAT "/etc/passwd" 0'
  expect_refused passwd.vmdk "extent file name '/etc/passwd' is absolute"
  mkdir sub
  flat_desc sub/up.vmdk 'RW 2048 FLAT "../tmpl-flat.vmdk" 0'
  expect_refused sub/up.vmdk "'../tmpl-flat.vmdk' is absolute or goes up"
  flat_desc devnull.vmdk 'RW 2048 FLAT "/dev/null" 0'
  expect_refused devnull.vmdk "'/dev/null' is absolute"
  # a name in the directory that is a device, or a symlink to one
  ln -s /dev/null null-link
  flat_desc link.vmdk 'RW 2048 FLAT "null-link" 0'
  expect_refused link.vmdk "null-link.*(not a regular file|regular)"
  mkfifo fifo
  flat_desc fifo.vmdk 'RW 2048 FLAT "fifo" 0'
  expect_refused fifo.vmdk "fifo.*(not a regular file|regular)"
}

@test "an extent that is the descriptor itself or a layer of the chain is refused (extent loops); two extents may share a file" {
  flat_desc self.vmdk 'RW 2048 FLAT "self.vmdk" 0'
  expect_refused self.vmdk "extent .*self.vmdk is the VMDK image itself"
  # the same file twice (as QEMU reads it: nothing is written)
  qemu-img create -q -f vmdk -o subformat=monolithicFlat two.vmdk 1M
  qemu-io -f vmdk -c 'write -P 0x71 0 1M' two.vmdk >/dev/null
  sed -i 's|^\(RW .*\)$|\1\n\1|' two.vmdk
  check_view two.vmdk
  [ "$(stat -c %s "$WORK/expect.raw")" = $((2 * MiB)) ] || fail "qemu-img does not read two extents"
  # a sparse file whose embedded descriptor names the file itself: QEMU
  # opens it again and again (capacity 0 makes it a descriptor file)
  qemu-img create -q -f vmdk loop.vmdk 1M
  printf '# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType="twoGbMaxExtentSparse"\nRW 2048 SPARSE "loop.vmdk"\n' >loop.desc
  $POKE loop.vmdk embed loop.desc
  expect_refused loop.vmdk "extent .*loop.vmdk is the VMDK image itself"
  # a delta whose extent is its own parent (a layer below it)
  qemu-img create -q -f vmdk -o subformat=monolithicFlat par.vmdk 1M
  printf '# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=%s\ncreateType="monolithicFlat"\nparentFileNameHint="par.vmdk"\nRW 2048 FLAT "par.vmdk" 0\n' \
    "$(sed -n 's/^CID=//p' par.vmdk)" >layer.vmdk
  expect_refused layer.vmdk "extent .*par.vmdk is a layer of the backing chain"
}

@test "a 1 GiB descriptor file is refused at once without being read; caps on lines, extents and sizes" {
  qemu-img create -q -f vmdk -o subformat=monolithicFlat huge.vmdk 1M
  truncate -s 1G huge.vmdk
  # (not expect_refused: hashing 1 GiB twice would take the time we save)
  local t0=$SECONDS
  run --separate-stderr "$FDE" -d -p "$WORK/refused.pid" huge.vmdk
  [ $((SECONDS - t0)) -lt 5 ] || fail "refusing took $((SECONDS - t0)) s"
  [ "$status" = 3 ] || fail "exit status $status, want 3: $stderr"
  [ "${#stderr_lines[@]}" = 1 ] || fail "want one line: $stderr"
  [[ "$stderr" == *"huge.vmdk: VMDK descriptor file is 1073741824 bytes, more than the 1048575"* ]] ||
    fail "unexpected message: $stderr"
  [ ! -e "$WORK/refused.pid" ] || fail "a pid file was left behind"
  nothing_mounted
  # 70000 lines (140000 bytes)
  { head -c 400 huge.vmdk | sed -n '1,5p'; yes '#' | head -n 70000; } >lines.vmdk
  expect_refused lines.vmdk "more than 65536 lines"
  # 5000 extents of one sector each
  qemu-img create -q -f vmdk -o subformat=monolithicFlat many.vmdk 1M
  { sed -n '1,5p' many.vmdk; for i in $(seq 5000); do echo 'RW 1 FLAT "many-flat.vmdk" 0'; done; } >many2.vmdk
  expect_refused many2.vmdk "more than 4096 extents"
  flat_desc big.vmdk 'RW 18014398509481984 FLAT "tmpl-flat.vmdk" 0'
  expect_refused big.vmdk "extent size or offset too large"
  flat_desc inv.vmdk 'RW 2048 FLAT "tmpl-flat.vmdk"'
  expect_refused inv.vmdk "invalid VMDK extent line"
  qemu_refuses inv.vmdk
}

@test "a truncated sparse file or a grain directory past the end is refused; seSparse and unknown createTypes by name" {
  make_raw src.raw $SIZE
  qemu-img convert -f raw -O vmdk src.raw ok.vmdk
  start_export ok.vmdk                          # the control opens
  stop_export
  cp ok.vmdk trunc.vmdk
  truncate -s 20000 trunc.vmdk
  expect_refused trunc.vmdk "trunc.vmdk"
  run --separate-stderr "$FDE" -r --probe trunc.vmdk
  refute_output --partial "not supported"
  cp ok.vmdk gd.vmdk
  $POKE gd.vmdk set gd_offset 0x7fffffff
  expect_refused gd.vmdk "gd.vmdk"
  run --separate-stderr "$FDE" -r --probe gd.vmdk
  [[ "$stderr" != *"images are not supported"* ]] || fail "refused as an unknown format: $stderr"
  qemu-img create -q -f vmdk -o subformat=monolithicFlat se.vmdk 1M
  sed -i 's/createType="monolithicFlat"/createType="seSparse"/' se.vmdk
  expect_refused se.vmdk "type 'seSparse' is not supported"
  qemu-img create -q -f vmdk -o subformat=monolithicFlat raw.vmdk 1M
  sed -i 's/createType="monolithicFlat"/createType="vmfsRaw"/' raw.vmdk
  expect_refused raw.vmdk "type 'vmfsRaw' is not supported"
  qemu_refuses raw.vmdk
  qemu-img create -q -f vmdk -o subformat=monolithicFlat nocid.vmdk 1M
  sed -i '/CID=/d' nocid.vmdk
  expect_refused nocid.vmdk "no CID or parentCID"
  qemu_refuses nocid.vmdk
}

@test "extent lines QEMU skips (RDONLY, NOACCESS, ZERO, size 0) shrink the disk as in QEMU; VMFS extents read at offset 0" {
  head -c $((2 * MiB)) /dev/urandom >data.bin
  cat >mixed.vmdk <<'EOF'
# Disk DescriptorFile
version=1
CID=12345678
parentCID=ffffffff
createType="twoGbMaxExtentFlat"

# Extent description
RW 1024 FLAT "data.bin" 2048
RDONLY 100 FLAT "data.bin" 0
NOACCESS 100 FLAT "data.bin" 0
RW 100 ZERO "data.bin"
RW 0 FLAT "data.bin" 0
  RW   512 VMFS "data.bin"
RW 10 FLAT "data.bin" 4000

ddb.adapterType = "lsilogic"
EOF
  check_view mixed.vmdk
  [ "$(stat -c %s "$WORK/expect.raw")" = $(((1024 + 512 + 10) * 512)) ] ||
    fail "qemu-img's size is $(stat -c %s "$WORK/expect.raw")"
  run --separate-stderr "$FDE" --probe mixed.vmdk
  assert_line "extents: 3"
  assert_line "adapter-type: lsilogic"
}

@test "QEMU's descriptor probe: comments and blank lines before version=N; other first lines are raw" {
  qemu-img create -q -f vmdk -o subformat=monolithicFlat d.vmdk 1M
  { printf '#c\n   \n  \r\n'; sed 1d d.vmdk; } >comments.vmdk
  run --separate-stderr "$FDE" --probe comments.vmdk
  assert_success
  assert_line "format: vmdk"
  { printf 'x=1\n'; sed 1d d.vmdk; } >other.vmdk
  run --separate-stderr "$FDE" --probe other.vmdk
  assert_success
  assert_line "format: raw"
  sed 's/^version=1/version=4/' d.vmdk >v4.vmdk
  run --separate-stderr "$FDE" --probe v4.vmdk
  [ "$status" = 3 ] || fail "v4.vmdk: exit status $status"
  [[ "$stderr" == *"VMDK (unknown version) images are not supported"* ]] ||
    fail "v4.vmdk: $stderr"
}

# A sector of comments, then a monolithicFlat descriptor naming secret.img
# (printed on stdout).
late_descriptor() {
  head -c 511 /dev/zero | tr '\0' '#'
  printf '\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n'
  printf 'createType="monolithicFlat"\nRW 2048 FLAT "secret.img" 0\n'
}

@test "probing sees the first 512 bytes as QEMU does: a raw view cannot be written into a descriptor naming a neighbour" {
  printf 'SECRET' >secret.img
  truncate -s 1M secret.img
  late_descriptor >late.vmdk
  truncate -s 600K late.vmdk
  # QEMU decides: its probe reads BLOCK_PROBE_BUF_SIZE (512) bytes
  run qemu-img info --output=json late.vmdk
  assert_success
  assert_output --partial '"format": "raw"'
  run --separate-stderr "$FDE" --probe late.vmdk
  assert_success
  assert_line "format: raw"
  # a guest writes the same bytes through a writable raw view, sector 1
  # first (unguarded), then sector 0 (the guard sees only comments)
  truncate -s 600K disk.img
  start_export disk.img
  late_descriptor | tail -c +513 | dd of=disk.img bs=512 seek=1 conv=notrunc status=none
  late_descriptor | head -c 512 | dd of=disk.img conv=notrunc status=none
  stop_export
  run --separate-stderr "$FDE" --probe disk.img
  assert_success
  assert_line "format: raw"
  refute_output --partial "secret.img"
}

# make_ova OVA OVF DISK [FILE]...: an OVA (ustar) holding OVF (one disk,
# DISK), DISK and the FILEs.
make_ova() {
  local ova=$1 ovf=$2 disk=$3
  printf '%s\n' '<?xml version="1.0"?>' \
    '<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">' \
    "<References><File ovf:id=\"f1\" ovf:href=\"$disk\"/></References>" \
    '<DiskSection><Info>disks</Info><Disk ovf:diskId="d1" ovf:fileRef="f1"/></DiskSection></Envelope>' \
    >"$ovf"
  shift 2
  tar --format=ustar -cf "$ova" "$ovf" "$@"
}

@test "inside an OVA a streamOptimized VMDK is read in place; a descriptor naming other files, or a delta, is refused" {
  requires tar
  make_raw src.raw $SIZE
  qemu-img convert -f raw -O vmdk -o subformat=streamOptimized src.raw s.vmdk
  qemu-img convert -f vmdk -O raw s.vmdk s.raw
  make_ova app.ova s.ovf s.vmdk
  start_export app.ova
  compare_view app.ova s.raw 65536
  stop_export
  run --separate-stderr "$FDE" --probe app.ova
  assert_line "subformat: streamOptimized"
  qemu-img convert -f raw -O vmdk -o subformat=monolithicFlat src.raw d.vmdk
  make_ova desc.ova d.ovf d.vmdk d-flat.vmdk
  expect_refused desc.ova "VMDK descriptor file in an OVA"
  qemu-img create -q -f vmdk -b s.vmdk -F vmdk delta.vmdk
  make_ova delta.ova e.ovf delta.vmdk
  expect_refused delta.ova "VMDK in an OVA names a parent"
}
