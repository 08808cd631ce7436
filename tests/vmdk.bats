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

@test "a descriptor with no extent lines, or whose only one has an empty name, is refused (QEMU 7.2 fails an assertion on both)" {
  printf '# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="monolithicFlat"\n' >none.vmdk
  expect_refused none.vmdk "none.vmdk: VMDK descriptor names no extents"
  flat_desc emptyname.vmdk 'RW 8 FLAT "" 0'
  expect_refused emptyname.vmdk "emptyname.vmdk: VMDK descriptor names no extents"
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
  # a name in the directory that is a device (a symlink to one leaves
  # the directory: the next test)
  if mknod null-dev c 1 3 2>/dev/null; then
    flat_desc dev.vmdk 'RW 2048 FLAT "null-dev" 0'
    expect_refused dev.vmdk "null-dev.*(not a regular file|regular)"
  fi
  mkfifo fifo
  flat_desc fifo.vmdk 'RW 2048 FLAT "fifo" 0'
  expect_refused fifo.vmdk "fifo.*(not a regular file|regular)"
}

# QEMU follows any symbolic link; we open an extent with openat2
# RESOLVE_BENEATH from the descriptor's directory (formats/owner.c), so a
# root-owned descriptor unpacked from a tar cannot name /etc/shadow
# through a symlink.  Links that stay inside the directory still work,
# and read as qemu-img convert reads them.
@test "an extent symlink that stays in the descriptor's directory reads as qemu-img convert; one leading out (/etc/shadow, a directory link, ../, /proc) is refused" {
  mkdir -p d/data
  qemu-img create -q -f vmdk -o subformat=monolithicFlat d/tmpl.vmdk 1M
  qemu-io -f vmdk -c 'write -P 0x5a 4096 300000' d/tmpl.vmdk >/dev/null
  mv d/tmpl-flat.vmdk d/data/flat.img
  ln -s data/flat.img d/in-link
  ln -s data d/dir-link
  sed 's|^RW .*|RW 2048 FLAT "in-link" 0|' d/tmpl.vmdk >d/in.vmdk
  sed 's|^RW .*|RW 2048 FLAT "dir-link/flat.img" 0|' d/tmpl.vmdk >d/indir.vmdk
  check_view d/in.vmdk
  cmp -s "$WORK/expect.raw" d/data/flat.img || fail "qemu-img does not read the linked extent"
  check_view d/indir.vmdk
  local name
  ln -s /etc/shadow d/shadow-link
  ln -s /etc d/etc-link
  cp d/data/flat.img outside.img
  ln -s ../outside.img d/up-link
  ln -s /proc/self/status d/proc-link
  for name in shadow-link etc-link/shadow up-link proc-link; do
    sed "s|^RW .*|RW 2048 FLAT \"$name\" 0|" d/tmpl.vmdk >d/esc.vmdk
    expect_refused d/esc.vmdk "extent .*$name leads out of the image's directory"
  done
  # QEMU follows the one outside that it can read as raw bytes
  sed 's|^RW .*|RW 2048 FLAT "up-link" 0|' d/tmpl.vmdk >d/esc.vmdk
  qemu-img convert -f vmdk -O raw d/esc.vmdk up.raw
}

# procfs mounted inside the descriptor's directory: the name stays
# beneath it, the file is on procfs (refused as a mount point on procfs
# is; QEMU reads it).
@test "an extent on procfs inside the descriptor's directory (a bind mount of /proc) is refused" {
  requires_root
  mkdir -p d/p
  mount --bind /proc d/p 2>/dev/null || skip "cannot bind-mount /proc"
  qemu-img create -q -f vmdk -o subformat=monolithicFlat d/tmpl.vmdk 1M
  sed 's|^RW .*|RW 1 FLAT "p/version" 0|' d/tmpl.vmdk >d/proc.vmdk
  run --separate-stderr "$FDE" -r -d -p "$WORK/refused.pid" d/proc.vmdk
  umount d/p
  [ "$status" = 3 ] || fail "exit status $status, want 3: $stderr"
  [ "${#stderr_lines[@]}" = 1 ] || fail "want one line: $stderr"
  [[ "$stderr" == *"d/proc.vmdk: extent "*"p/version is on procfs"* ]] || fail "$stderr"
  [ ! -e "$WORK/refused.pid" ] || fail "a pid file was left behind"
  nothing_mounted
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
  # 8 EiB from one line (each value passes): over QEMU's BDRV_MAX_LENGTH
  # (2^63 - 2^30 bytes); QEMU refuses it ("File too large")
  flat_desc huge8e.vmdk 'RW 18014398509481983 FLAT "tmpl-flat.vmdk" 0'
  qemu_refuses huge8e.vmdk
  [[ "$output" == *"File too large"* ]] || fail "qemu-img: $output"
  expect_refused huge8e.vmdk "larger than the 9223372035781033984 bytes QEMU opens"
  # two lines adding up to more
  flat_desc two8e.vmdk 'RW 9007199254740000 FLAT "tmpl-flat.vmdk" 0'
  sed -i 's|^\(RW .*\)$|\1\n\1|' two8e.vmdk
  qemu_refuses two8e.vmdk
  expect_refused two8e.vmdk "larger than the 9223372035781033984 bytes QEMU opens"
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

# ---- damaged sparse extents (review 12 F4, F5) ----------------------------
# QEMU's file layer zero-fills reads past the end of a file (formats.md
# 1.1): a GT past the end is unallocated, a grain past the end reads
# zeros there (and is data in qemu-img map: QEMU's block status does not
# look at the file), a grain pointing into the header or the GD reads
# those bytes (formats.md 2.8).  The view reads them the same way: each
# of these is compared with qemu-img convert and qemu-img map.

@test "damaged monolithicSparse files (cut by a byte or in half; GD or GT entries past the end, across it, into the header or the GD) read as qemu-img convert reads them; SEEK_DATA/SEEK_HOLE as qemu-img map" {
  local f size gd
  make_raw src.raw $SIZE
  qemu-img convert -f raw -O vmdk -o subformat=monolithicSparse src.raw ok.vmdk
  size=$(stat -c %s ok.vmdk)
  gd=$($POKE ok.vmdk header | awk '$1 == "gd_offset" { print $2 }')
  # the last grain, written last and padded to 64 KiB, holds the disk's
  # last 2 sectors: cut one byte of them
  head -c $((size - 65536 + 1024 - 1)) ok.vmdk >cut1.vmdk
  head -c $((size / 2)) ok.vmdk >half.vmdk
  cp ok.vmdk gdpast.vmdk
  $POKE gdpast.vmdk gd 0 0xfffffff0
  cp ok.vmdk gdacross.vmdk                      # a GT half past the end
  $POKE gdacross.vmdk gd 0 $((size / 512 - 2))
  cp ok.vmdk gtpast.vmdk
  $POKE gtpast.vmdk gt 0 3 0xfffffff0
  cp ok.vmdk gtacross.vmdk                      # a grain across the end
  $POKE gtacross.vmdk gt 0 5 $((size / 512 - 3))
  cp ok.vmdk header.vmdk
  $POKE header.vmdk gt 0 2 1                    # no zeroed-grain flag: sector 1
  $POKE header.vmdk gt 0 6 2
  $POKE header.vmdk gt 0 7 "$gd"                # over the GD and the GTs
  for f in cut1 half gdpast gdacross gtpast gtacross header; do
    check_view $f.vmdk
  done
}

@test "a twoGbMaxExtentSparse whose extent file is cut short reads as qemu-img convert reads it (zeros past the cut)" {
  make_raw src.raw $SIZE
  qemu-img convert -f raw -O vmdk -o subformat=twoGbMaxExtentSparse src.raw split.vmdk
  [ -f split-s001.vmdk ] || fail "qemu-img made no split-s001.vmdk"
  truncate -s $(($(stat -c %s split-s001.vmdk) / 2 + 100)) split-s001.vmdk
  check_view split.vmdk
}

# make_cowd NAME GD GT [SECTORS GRANULARITY GD_ENTRIES]: a COWD (VMDK3)
# extent NAME.vmdk built as QEMU's vmdk_open_vmfs_sparse reads it (header
# at 0, CID text at 0x200, GD at sector 40, one GT of 4096 entries at
# sector 48, random data from sector 100 to the end of its 128 KiB); GD
# and GT: comma-separated entries.  qemu-img cannot make one.
make_cowd() {
  "$PYTHON" - "$@" <<'PY'
import os, struct, sys
name, gd, gt = sys.argv[1:4]
sectors, gran, l1size = (int(v, 0) for v in (sys.argv[4:7] or ["2048", "8", "1"]))
b = bytearray(128 * 1024)
struct.pack_into("<4sIIIIII", b, 0, b"COWD", 1, 3, sectors, gran, 40, l1size)
t = b"CID=fffffffe\nparentCID=ffffffff\n"
b[0x200:0x200 + len(t)] = t
b[100 * 512:] = os.urandom(len(b) - 100 * 512)
for base, vals in ((40, gd), (48, gt)):
    for i, v in enumerate(vals.split(",") if vals else []):
        struct.pack_into("<I", b, base * 512 + 4 * i, int(v, 0))
open(name + ".vmdk", "wb").write(b)
PY
}

@test "damaged COWD (VMDK3) extents (GD or GT entries past the end or across it, grains in the header, a cut file) read as qemu-img convert reads them; a capacity beyond the GD is refused (qemu-img convert fails too)" {
  local f
  make_cowd hdr 48 100,108,0,1,2,116             # sectors 1, 2: the header
  make_cowd gdpast 0xffffff00 ""
  make_cowd gdacross 250 ""                       # a GT of random entries, cut
  make_cowd gtpast 48 100,0xfffffff0,108
  make_cowd gtacross 48 100,252,108               # a grain across the end
  make_cowd cut 48 100,108,116,240
  truncate -s $((108 * 512 + 1000)) cut.vmdk
  for f in hdr gdpast gdacross gtpast gtacross cut; do
    check_view $f.vmdk
  done
  # 2 TiB of 1-sector grains, one GD entry: QEMU's block status fails
  # past the first 2 MiB (VMDK_ERROR), so convert fails; refused at open
  make_cowd l1small 48 100 0xffffffff 1 1
  run qemu-img convert -f vmdk -O raw l1small.vmdk l1small.raw
  [ "$status" != 0 ] || fail "qemu-img converts l1small.vmdk"
  rm -f l1small.raw
  expect_refused l1small.vmdk "beyond its grain directory"
}

# make_aliased_gd FILE NGT: a monolithicSparse VMDK of 2 TiB in 1-sector
# grains whose 8 Mi GD entries cycle over NGT all-zero grain tables
# (entry j names table j mod NGT): every lookup of the disk finds an
# unallocated grain, and with NGT over the GT cache's 64 every table
# read is a miss.
make_aliased_gd() {
  "$PYTHON" - "$1" "$2" <<'PY'
import array, struct, sys
name, ngt = sys.argv[1], int(sys.argv[2])
n, gran, gtes, gdsec = 8 << 20, 1, 512, 21
h = bytearray(512)
struct.pack_into("<4sIIQQQQIQQQ", h, 0, b"KDMV", 1, 3, n * gtes * gran, gran,
                 1, 20, gtes, 0, gdsec, 0)
desc = b'# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicSparse"\n'
gtsec = gdsec + n * 4 // 512 + 1
gt = array.array("I", range(gtsec, gtsec + 4 * ngt, 4))
with open(name, "wb") as f:
    f.write(h)
    f.write(desc.ljust(20 * 512, b"\0"))
    f.write((gt * (n // ngt + 1))[:n].tobytes())
    f.truncate((gtsec + 4 * max(ngt, 2)) * 512)
PY
}

@test "SEEK_DATA on 2 TiB of 1-sector grains whose 8 Mi GD entries all name one zero GT returns at once (it walked grain by grain)" {
  make_aliased_gd alias.vmdk 1
  start_export alias.vmdk
  # KILL: a process blocked on a FUSE request ignores TERM; teardown
  # ends the daemon
  run timeout -s KILL 10 "$PYTHON" -c '
import errno, os
fd = os.open("alias.vmdk", os.O_RDONLY)
try:
    print(os.lseek(fd, 0, os.SEEK_DATA))
except OSError as e:
    print(errno.errorcode[e.errno])
print(os.lseek(fd, 12345, os.SEEK_HOLE), os.fstat(fd).st_size)'
  [ "$status" = 0 ] || fail "lseek did not return within 10 s (status $status)"
  assert_output "ENXIO
12345 $((8 << 20 << 9 << 9))"
  stop_export
}

@test "SEEK_DATA over 2 TiB whose GD entries cycle over 128 zero GTs (more than the cache holds) gives a safe answer within its time budget" {
  make_aliased_gd cycle.vmdk 128
  start_export cycle.vmdk
  # lseek(2) lets any hole be reported as data: SEEK_DATA may stop at
  # the budget (an offset whose data reads as zeros) or walk to the end
  # (ENXIO), but must not block the caller for a minute
  run timeout -s KILL 20 "$PYTHON" -c '
import errno, os
fd = os.open("cycle.vmdk", os.O_RDONLY)
try:
    p = os.lseek(fd, 0, os.SEEK_DATA)
    assert 0 <= p < os.fstat(fd).st_size, p
    print("data", p % 512, os.pread(fd, 4096, p) == bytes(4096))
except OSError as e:
    print(errno.errorcode[e.errno])
print(os.lseek(fd, 12345, os.SEEK_HOLE))'
  [ "$status" = 0 ] || fail "lseek did not return within 20 s (status $status): $output"
  [[ "${lines[0]}" == "data 0 True" || "${lines[0]}" == ENXIO ]] ||
    fail "SEEK_DATA: ${lines[0]}"
  [ "${lines[1]}" = 12345 ] || fail "SEEK_HOLE at a hole: ${lines[1]}"
  stop_export
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

# ---- memory bounded per disk, whatever its extent count ------------------

# many_lines_desc FILE LINE COUNT: a twoGbMaxExtentSparse descriptor with
# COUNT copies of the extent line LINE.
many_lines_desc() {
  { printf '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="twoGbMaxExtentSparse"\n'
    yes "$2" | head -n "$3"; } >"$1"
}

# sanitized: is $FDE built with AddressSanitizer (--enable-sanitizers)?
# (ulimit -v cannot be used: ASan maps terabytes of shadow memory)
sanitized() { ldd "$FDE" 2>/dev/null | grep -q libasan; }

# partial_reads VIEW EXTENT_BYTES: a 4 KiB read inside each of the first 8
# grains (64 KiB) of every extent (each is base.raw) equals base.raw there.
partial_reads() {
  run "$PYTHON" - "$1" "$2" <<'PY'
import os, sys
fd, ext = os.open(sys.argv[1], os.O_RDONLY), int(sys.argv[2])
base, bad = open("base.raw", "rb").read(), 0
for i in range(os.fstat(fd).st_size // ext):
    for j in range(8):
        off = j * 65536 + 512
        bad += os.pread(fd, 4096, i * ext + off) != base[off:off + 4096]
sys.exit("%d reads differ from base.raw" % bad if bad else 0)
PY
  assert_success
}

@test "a descriptor naming one streamOptimized file 1024 times shares one reader: daemon memory and fds stay small, qemu-img compare agrees" {
  head -c $((512 * 1024)) /dev/urandom >base.raw
  qemu-img convert -f raw -O vmdk -o subformat=streamOptimized base.raw s.vmdk
  many_lines_desc many.vmdk 'RW 1024 SPARSE "s.vmdk"' 1024
  cp many.vmdk many-q.vmdk      # for qemu-img: many.vmdk becomes the view
  # ASan's quarantine would keep every freed grain buffer: keep it small
  export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}quarantine_size_mb=4"
  start_export many.vmdk
  partial_reads many.vmdk $((512 * 1024))
  # one cache of at most 4 MiB, not 512 KiB of grains per extent (the old
  # code's peak here: 534 MB and 1039 fds)
  local hwm fds
  hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$EXPORT_PID/status")
  fds=$(ls "/proc/$EXPORT_PID/fd" | wc -l)
  echo "# daemon VmHWM ${hwm} KiB, $fds fds" >&3
  [ "$hwm" -lt $(( $(sanitized && echo 192 || echo 64) * 1024 )) ] ||
    fail "the daemon's peak RSS is $hwm KiB after partial reads of 1024 extents"
  [ "$fds" -lt 64 ] || fail "the daemon holds $fds open files"
  run qemu-img compare -f vmdk -F raw many-q.vmdk many.vmdk
  assert_success
  stop_export
  # --decompressed-cache is the disk's: 8 distinct stream files (copies)
  # split 64 KiB, less than a grain each, so none caches; reads still right
  local i
  for i in 1 2 3 4 5 6 7; do cp s.vmdk s$i.vmdk; done
  { printf '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="twoGbMaxExtentSparse"\n'
    for i in $(seq 64); do echo "RW 1024 SPARSE \"s$((i % 8)).vmdk\""; done; } |
    sed 's/"s0.vmdk"/"s.vmdk"/' >mixed.vmdk
  cp mixed.vmdk mixed-q.vmdk
  start_export --decompressed-cache=64K mixed.vmdk
  partial_reads mixed.vmdk $((512 * 1024))
  run qemu-img compare -f vmdk -F raw mixed-q.vmdk mixed.vmdk
  assert_success
  stop_export
}

# big_grain_stream FILE RAW: a streamOptimized extent (version 3,
# compressed grains with markers, deflate) of 1 MiB grains that
# qemu-img cannot make (it writes 64 KiB ones), and RAW, its contents:
# grain 0 random (its compressed size, over 1 MiB, needs more than the
# first 256 KiB read after the marker), grain 1 unallocated, grain 2 a
# pattern (a few KiB compressed), grain 3 random and partial (capacity
# 3.5 MiB + 4 KiB, the last grain's stream inflating to that much only).
big_grain_stream() {
  "$PYTHON" - "$1" "$2" <<'PY'
import os, struct, sys, zlib
G = 2048                                    # granularity, sectors
cap = 3 * G + 1024 + 8                      # sectors
grains = [os.urandom(G * 512), None, bytes(range(256)) * (G * 2),
          os.urandom((cap - 3 * G) * 512)]
desc = ('# Disk DescriptorFile\nversion=1\nCID=12345678\n'
        'parentCID=ffffffff\ncreateType="streamOptimized"\n'
        'RW %d SPARSE "%s"\n' % (cap, os.path.basename(sys.argv[1]))).encode()
h = bytearray(512)
struct.pack_into("<4sIIQQQQIQQQ", h, 0, b"KDMV", 3, 1 | 1 << 16 | 1 << 17,
                 cap, G, 1, 20, 512, 0, 21, 128)
h[73:77] = b"\n \r\n"
struct.pack_into("<H", h, 77, 1)            # deflate
img = bytearray(h) + desc.ljust(20 * 512, b"\0")
img += struct.pack("<I", 22).ljust(512, b"\0")      # GD: one GT, sector 22
gt_at = len(img)
img += bytes(4 * 512)                               # GT: 512 entries
img += bytes(128 * 512 - len(img))
for i, g in enumerate(grains):
    if g is None:
        continue
    struct.pack_into("<I", img, gt_at + 4 * i, len(img) // 512)
    z = zlib.compress(g)
    rec = struct.pack("<QI", i * G, len(z)) + z
    img += rec + bytes(-len(rec) % 512)
open(sys.argv[1], "wb").write(img)
open(sys.argv[2], "wb").write(b"".join(g or bytes(G * 512) for g in grains))
PY
}

@test "a streamOptimized extent of 1 MiB grains (hand-built: qemu-img makes 64 KiB ones) reads as qemu-img convert, in whole and in partial reads" {
  big_grain_stream big.vmdk big.raw
  # the builder is right by QEMU's reading
  run qemu-img compare -f vmdk -F raw big.vmdk big.raw
  assert_success
  check_view big.vmdk
  start_export big.vmdk
  run "$PYTHON" - big.vmdk big.raw <<'PY'
import os, sys
fd, want = os.open(sys.argv[1], os.O_RDONLY), open(sys.argv[2], "rb").read()
bad = 0
for off in list(range(0, len(want), 333333)) + [len(want) - 4096, 1 << 20]:
    n = min(4096, len(want) - off)
    bad += os.pread(fd, n, off) != want[off:off + n]
sys.exit("%d partial reads differ" % bad if bad else 0)
PY
  assert_success
  stop_export
}

# big_gd_file FILE: a hosted sparse file of 129 MiB, 4 KiB on disk:
# granularity 1 sector, 512 GTEs, capacity 2^34 sectors, so a grain
# directory of 32 Mi entries (128 MiB, QEMU's cap), all in a hole.
big_gd_file() {
  "$PYTHON" - "$1" <<'PY'
import struct, sys
n = 32 << 20
h = bytearray(512)
struct.pack_into("<4sIIQQQQIQQQ", h, 0, b"KDMV", 1, 3, n * 512, 1, 0, 0,
                 512, 0, 1, 0)
with open(sys.argv[1], "wb") as f:
    f.write(h)
    f.truncate(512 + n * 4 + 512)
PY
}

@test "a descriptor naming a sparse file with a 128 MiB grain directory 16 or 4096 times reads it once; over 256 MiB of them, or out of memory, is refused" {
  local cap=$((1 << 34)) k
  big_gd_file big1.vmdk
  for k in 1 16 4096; do
    many_lines_desc big-$k.vmdk "RW $cap SPARSE \"big1.vmdk\"" $k
  done
  if sanitized; then
    run --separate-stderr "$FDE" --probe big-16.vmdk
    [ "$status" = 0 ] || fail "--probe big-16.vmdk: exit $status: $stderr"
  else
    # one copy of the grain directory: 1.5 GB of address space is plenty
    # (the old code ran out of memory and exited 1)
    for k in 16 4096; do
      run --separate-stderr bash -c "ulimit -v 1500000 && exec \"\$0\" --probe big-$k.vmdk" "$FDE"
      [ "$status" = 0 ] || fail "--probe big-$k.vmdk in 1.5 GB: exit $status: $stderr"
    done
    run --separate-stderr bash -c 'ulimit -v 1500000 && exec "$0" -d -p "$1" big-4096.vmdk' \
      "$FDE" "$WORK/big.pid"
    [ "$status" = 0 ] || fail "big-4096.vmdk does not mount in 1.5 GB: $stderr"
    EXPORT_PID=$(cat "$WORK/big.pid") EXPORT_PIDFILE=$WORK/big.pid
    [ "$(stat -c %s big-4096.vmdk)" = $((4096 * cap * 512)) ] ||
      fail "big-4096.vmdk: size $(stat -c %s big-4096.vmdk)"
    [ "$(tail -c 4096 big-4096.vmdk | tr -d '\0' | wc -c)" = 0 ] ||
      fail "the last bytes are not zeros"
    stop_export
    # out of memory for even one grain directory: exit 3, one line
    run --separate-stderr bash -c "ulimit -v 100000 && exec \"\$0\" --probe big-1.vmdk" "$FDE"
    [ "$status" = 3 ] || fail "--probe in 100 MB: exit $status, want 3: $stderr"
    [ "${#stderr_lines[@]}" = 1 ] && [[ "$stderr" == *big-1.vmdk*"out of memory"* ]] ||
      fail "--probe in 100 MB: want one line naming big-1.vmdk: $stderr"
  fi
  # three distinct files: 384 MiB of grain directories, over the disk's cap
  cp --sparse=always big1.vmdk big2.vmdk
  cp --sparse=always big1.vmdk big3.vmdk
  many_lines_desc three.vmdk "RW $cap SPARSE \"big1.vmdk\"" 1
  for k in 2 3; do echo "RW $cap SPARSE \"big$k.vmdk\"" >>three.vmdk; done
  expect_refused three.vmdk "extent .*big3.vmdk: the grain directories .* more than 256 MiB"
}
