#!/usr/bin/env bats
# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
# OVA appliances (formats/ova.c): a tar holding an OVF descriptor and its
# disks, exported read-only as its first disk, --disk=N for another,
# nothing extracted.  The archives are made by GNU tar (ustar, GNU and pax
# formats) or, for what tar will not write, by Python's tarfile with
# headers poked (tests/ova-poke.py).  The oracles: GNU tar's extraction of
# the member (`tar -xf`, compared with cmp), `qemu-img convert -O raw` of
# the extracted disk, and `qemu-img map` of the member as QEMU (and
# virt-v2v) opens it in place: the raw driver's offset and size over the
# archive.  Hostile archives must be refused at open: exit 3, one line
# naming the OVA and the problem, nothing mounted.

load helpers
load format-helpers

bats_require_minimum_version 1.5.0

setup() {
  common_setup
  requires qemu-img
  requires tar
  requires_python
  POKE="$PYTHON $FDE_SRCDIR/tests/ova-poke.py"
  RANDOM_READS="$FDE_SRCDIR/tests/random-reads.py"
}
teardown() { common_teardown; }

MiB=$((1 << 20))

# make_disk FILE SIZE: random data with holes; the size need not be a
# multiple of 512.
make_disk() {
  truncate -s "$2" "$1"
  put_random "$1" 0 65536
  put_random "$1" $(($2 / 2 / 4096 * 4096 + 512)) 100000
  put_random "$1" $(($2 - 700)) 700
}

# make_ovf FILE HREF... : an OVF whose References and DiskSection name
# each HREF, in order (sizes from the files of those names in $WORK).
make_ovf() {
  local out=$1 i=0 h
  shift
  {
    echo '<?xml version="1.0" encoding="UTF-8"?>'
    echo '<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">'
    echo '  <References>'
    for h in "$@"; do
      i=$((i + 1))
      echo "    <File ovf:id=\"file$i\" ovf:href=\"$h\"/>"
    done
    echo '  </References>'
    echo '  <DiskSection><Info>Virtual disks</Info>'
    i=0
    for h in "$@"; do
      i=$((i + 1))
      echo "    <Disk ovf:diskId=\"vmdisk$i\" ovf:fileRef=\"file$i\" ovf:capacity=\"1\"/>"
    done
    echo '  </DiskSection>'
    echo '</Envelope>'
  } >"$out"
}

# qemu_window OVA MEMBER: the json: name under which QEMU opens MEMBER of
# OVA in place (the raw driver's offset and size, as virt-v2v does), and
# FMT its format driver ("raw" unless $2 is given).
qemu_window() {
  local hdr data size
  read -r hdr data size < <($POKE where "$1" "$2")
  echo "json:{\"driver\":\"${3:-raw}\",\"file\":{\"driver\":\"raw\",\"offset\":$data,\"size\":$size,\"file\":{\"driver\":\"file\",\"filename\":\"$PWD/$1\"}}}"
}

# check_disk OVA MEMBER N [OPTION]...: exporting OVA with --disk=N shows
# member MEMBER as GNU tar extracts it (cmp, and random reads), as QEMU
# reads it in place, and SEEK_DATA/SEEK_HOLE agree with qemu-img map of
# it in place.  (QEMU's raw driver takes only a size that is a multiple
# of 512 in place: a raw member of another size is checked against the
# extracted file alone.)
check_disk() {
  local ova=$1 member=$2 n=$3 fmt=${FMT:-raw} inplace=yes
  shift 3
  rm -rf "$WORK/x" && mkdir "$WORK/x"
  tar -xf "$ova" -C "$WORK/x" "$member"
  [ $(($(stat -c %s "$WORK/x/$member") % 512)) = 0 ] || inplace=
  # a raw disk is the member's bytes (the raw backend's size is the
  # file's, where QEMU would round it up to a sector)
  if [ "$fmt" = raw ]; then
    cp "$WORK/x/$member" "$WORK/expect.raw"
  else
    qemu-img convert -f "$fmt" -O raw "$WORK/x/$member" "$WORK/expect.raw"
  fi
  if [ -n "$inplace" ]; then
    qemu-img convert -O raw "$(qemu_window "$ova" "$member" "$fmt")" "$WORK/inplace.raw"
    cmp "$WORK/expect.raw" "$WORK/inplace.raw" ||
      fail "qemu-img reads $member in place and extracted differently"
    qemu-img map --output=json "$(qemu_window "$ova" "$member" "$fmt")" >"$WORK/map.json"
  fi
  start_export --disk="$n" "$@" "$ova"
  [ "$(stat -c %s "$ova")" = "$(stat -c %s "$WORK/expect.raw")" ] ||
    fail "$ova disk $n: view size $(stat -c %s "$ova"), qemu-img $(stat -c %s "$WORK/expect.raw")"
  cmp "$ova" "$WORK/expect.raw" || fail "$ova disk $n: the view differs from $member"
  run "$PYTHON" "$RANDOM_READS" --count 200 --cluster 65536 "$ova" "$WORK/expect.raw"
  assert_success
  [ -z "$inplace" ] || seek_matches_map "$ova" "$WORK/map.json"
  if [ "$fmt" != raw ]; then    # and as qemu-img maps the extracted image
    qemu-img map -f "$fmt" --output=json "$WORK/x/$member" >"$WORK/map-x.json"
    seek_matches_map "$ova" "$WORK/map-x.json"
  fi
  stop_export
}

# make_ova OVA TARFORMAT MEMBER...: an OVF naming the MEMBERs (disks, in
# order), archived by GNU tar with --format=TARFORMAT, the OVF first.
make_ova() {
  local ova=$1 fmt=$2
  shift 2
  make_ovf "${ova%.ova}.ovf" "$@"
  tar --format="$fmt" -cf "$ova.tmp" "${ova%.ova}.ovf" "$@"
  # the archive's runs of zeros made holes, as the disks have: SEEK_DATA
  # and qemu-img map then have holes to find
  cp --sparse=always "$ova.tmp" "$ova"
  rm -f "${ova%.ova}.ovf" "$ova.tmp"
}


@test "an OVA of raw disks in ustar, GNU and pax archives: each disk is the member tar extracts, as qemu-img reads it in place" {
  make_disk disk1.img $((2 * MiB + 1000))
  make_disk disk2.img $((3 * MiB))
  local f
  for f in ustar gnu pax; do
    make_ova "app-$f.ova" "$f" disk1.img disk2.img
    check_disk "app-$f.ova" disk1.img 1
    check_disk "app-$f.ova" disk2.img 2
    [ "$SEEK_RUNS" -ge 2 ] || fail "app-$f.ova: disk 2 shows $SEEK_RUNS data runs: no holes"
  done
  check_disk app-pax.ova disk2.img 2 --no-splice
  # without --disk: the first disk
  start_export app-gnu.ova
  cmp app-gnu.ova disk1.img || fail "the default is not the first disk"
  stop_export
}

@test "long member names: ustar's prefix, GNU's long-name members, pax path records" {
  # split (ustar's prefix): a 120-byte directory, a 90-byte name
  local split=d-$(printf 'x%.0s' $(seq 118))/$(printf 'z%.0s' $(seq 86)).img
  # unsplittable: a name of 150 bytes in itself
  local long=d-$(printf 'x%.0s' $(seq 40))/disk-$(printf 'y%.0s' $(seq 141)).img
  mkdir "${split%/*}" "${long%/*}"
  make_disk "$split" $((MiB + 512))
  make_disk "$long" $((MiB + 1024))
  make_disk short.img $MiB
  make_ova long-ustar.ova ustar short.img "$split"
  check_disk long-ustar.ova "$split" 2
  local f
  for f in gnu pax; do
    make_ova "long-$f.ova" "$f" short.img "$split" "$long"
    check_disk "long-$f.ova" "$split" 2
    check_disk "long-$f.ova" "$long" 3
  done
  # the GNU archive holds a ././@LongLink member, the pax one an x header
  grep -qa '././@LongLink' long-gnu.ova || fail "tar wrote no GNU long name"
  grep -qa "path=$long" long-pax.ova || fail "tar wrote no pax path record"
}

@test "an OVF without a DiskSection: its References' files in archive order" {
  make_disk a.img $MiB
  make_disk b.img $((2 * MiB))
  cat >app.ovf <<'EOF'
<?xml version="1.0"?>
<ovf:Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/2">
  <ovf:References>
    <ovf:File ovf:id="f1" ovf:href="b.img"/>
    <ovf:File ovf:id="f2" ovf:href="a.img"/>
  </ovf:References>
</ovf:Envelope>
EOF
  tar --format=ustar -cf app.ova app.ovf a.img b.img
  check_disk app.ova a.img 1
  check_disk app.ova b.img 2
}

@test "--probe lists the disks (number, name, format, size) and says which is exported" {
  make_disk disk1.img $((2 * MiB + 1000))
  make_disk disk2.img $((3 * MiB))
  make_ova app.ova ustar disk1.img disk2.img
  run --separate-stderr "$FDE" --probe app.ova
  assert_success
  assert_line "format: ova"
  assert_line "virtual-size: $((2 * MiB + 1000))"
  assert_line "writable: no"
  assert_line "ova-disks: 2"
  assert_line "ova-disk 1: disk1.img, raw, $((2 * MiB + 1000)) bytes (exported)"
  assert_line "ova-disk 2: disk2.img, raw, $((3 * MiB)) bytes"
  run --separate-stderr "$FDE" --probe --disk=2 app.ova
  assert_success
  assert_line "virtual-size: $((3 * MiB))"
  assert_line "ova-disk 2: disk2.img, raw, $((3 * MiB)) bytes (exported)"
  assert_line "ova-exported-disk: 2"
  # a plain tar (no .ovf first) is no OVA: raw, as before
  tar --format=ustar -cf plain.tar disk1.img
  run --separate-stderr "$FDE" --probe plain.tar
  assert_success
  assert_line "format: raw"
}

@test "an OVA is served read-only without -r: the live line says so, writes fail with EROFS, the archive is unchanged" {
  make_disk disk1.img $MiB
  make_ova app.ova ustar disk1.img
  local sum
  sum=$(sha app.ova)
  start_fg app.ova
  grep -q 'read-only: ova images are served read-only' "$WORK/fg.out" "$WORK/fg.err" ||
    fail "the live line does not say read-only: $(cat "$WORK/fg.out" "$WORK/fg.err")"
  run dd if=/dev/zero of=app.ova bs=512 count=1 conv=notrunc status=none
  assert_failure
  assert_output --partial "Read-only file system"
  run "$PYTHON" -c 'import os, sys; os.open(sys.argv[1], os.O_RDWR)' app.ova
  assert_failure
  cmp app.ova disk1.img || fail "the view does not show the disk"
  kill -INT "$FG_PID"
  wait_pid_gone "$FG_PID" || fail "the exporter did not exit"
  { wait "$FG_PID"; } 2>/dev/null || true
  nothing_mounted
  [ "$(sha app.ova)" = "$sum" ] || fail "the archive changed"
}

@test "--disk: out of range refused (exit 3), not a number or on an image that is no OVA a usage error (exit 2)" {
  make_disk disk1.img $MiB
  make_disk disk2.img $MiB
  make_ova app.ova ustar disk1.img disk2.img
  expect_refused app.ova 'disk=3: the OVA holds 2 disks' --disk=3
  local bad
  for bad in 0 -1 +1 ' 1' x 1x '' 1000001 4294967297; do
    run --separate-stderr "$FDE" --probe --disk="$bad" app.ova
    [ "$status" = 2 ] || fail "--disk=$bad: exit $status, want 2: $stderr"
  done
  run --separate-stderr "$FDE" --probe --disk=1 disk1.img
  [ "$status" = 2 ] || fail "--disk on a raw image: exit $status, want 2: $stderr"
  assert [ "${#stderr_lines[@]}" = 1 ]
  [[ "$stderr" == *"disk1.img"*"OVA"* ]] || fail "$stderr"
  # the format by its title, with its article
  qemu-img convert -f raw -O vpc disk1.img disk1.vhd
  run --separate-stderr "$FDE" --probe --disk=1 disk1.vhd
  [ "$status" = 2 ] || fail "--disk on a VHD: exit $status, want 2: $stderr"
  [[ "$stderr" == *"this is a VHD image"* ]] || fail "$stderr"
  nothing_mounted
}

@test "a disk of a format that cannot be opened inside an OVA is refused by name; the other disks are still served" {
  make_disk src.img $MiB
  qemu-img convert -f raw -O qcow2 src.img disk1.qcow2
  make_ova q.ova ustar disk1.qcow2
  expect_refused q.ova 'disk 1 \(disk1.qcow2\) is a qcow2 image: not supported inside an OVA'
  # only the exported disk's format matters: disk 1 of an OVA whose disk
  # 2 is a qcow2 is exported, --probe lists disk 2 as not supported, and
  # --disk=2 is refused
  make_ova q2.ova ustar src.img disk1.qcow2
  run --separate-stderr "$FDE" --probe q2.ova
  assert_success
  assert_line "ova-disk 1: src.img, raw, $MiB bytes (exported)"
  assert_line "ova-disk 2: disk1.qcow2, qcow2, not supported inside an OVA"
  expect_refused q2.ova 'disk 2 \(disk1.qcow2\) is a qcow2 image' --disk=2
  check_disk q2.ova src.img 1
  # a fixed VHD, known by the footer in its last sector (not the
  # archive's): served as raw, its footer would be shown as data
  qemu-img convert -f raw -O vpc -o subformat=fixed src.img fixed.vhd
  make_ova vhd.ova ustar fixed.vhd
  expect_refused vhd.ova 'disk 1 \(fixed.vhd\) is a VHD image: not supported inside an OVA'
  # an OVA inside an OVA ("an OVA")
  make_ova inner.ova ustar src.img
  make_ova outer.ova ustar inner.ova
  expect_refused outer.ova 'disk 1 \(inner.ova\) is an OVA image: not supported inside an OVA'
  # a VMDK descriptor naming another file of the archive (the VMDK
  # backend's refusal: extents are files beside the image, not members)
  qemu-img create -q -f vmdk -o subformat=monolithicFlat d.vmdk $MiB
  make_ova flat.ova ustar d.vmdk
  tar --format=ustar -rf flat.ova d-flat.vmdk
  expect_refused flat.ova 'descriptor file in an OVA'
}

@test "-f ova on an image that is no tar archive (a qcow2, zeros) is refused as not an OVA" {
  qemu-img create -q -f qcow2 img.qcow2 1M
  expect_refused img.qcow2 'not an OVA \(a tar archive\): the tar header at byte 0 has a bad checksum' -f ova
  truncate -s 1M zeros.img
  expect_refused zeros.img 'not an OVA: the tar archive holds no member' -f ova
}

@test "hostile headers: bad checksum, size past the end, base-256 negative and huge sizes, a header that is not ustar, a truncated archive" {
  make_disk disk1.img $MiB
  make_ova app.ova ustar disk1.img
  local hdr data size
  read -r hdr data size < <($POKE where app.ova disk1.img)
  cp app.ova sum.ova
  $POKE poke sum.ova $((hdr + 10)) 41        # name changed, checksum not
  expect_refused sum.ova 'bad checksum'
  cp app.ova past.ova                        # size 8 GiB - 1, checksum fixed
  $POKE poke past.ova $((hdr + 124)) "$(printf '37%.0s' $(seq 11))00" $hdr
  expect_refused past.ova 'past the end'
  cp app.ova neg.ova                         # base-256, negative
  $POKE poke neg.ova $((hdr + 124)) ffffffffffffffffffffff00 $hdr
  expect_refused neg.ova 'negative size'
  cp app.ova huge.ova                        # base-256, 2^64 - 1
  $POKE poke huge.ova $((hdr + 124)) 80000000ffffffffffffffff $hdr
  expect_refused huge.ova 'past 2\^63'
  cp app.ova octal.ova
  $POKE poke octal.ova $((hdr + 124)) 3030303038 $hdr   # an 8
  expect_refused octal.ova 'not octal'
  cp app.ova magic.ova
  $POKE poke magic.ova $((hdr + 257)) 7573746172787878 $hdr
  expect_refused magic.ova 'not a ustar or GNU tar header'
  head -c $((data + size / 2)) app.ova >trunc.ova
  expect_refused trunc.ova 'past the end.*truncated'
  head -c $((hdr + 300)) app.ova >trunc2.ova
  expect_refused trunc2.ova 'ends inside a tar header'
}

@test "hostile members: a symbolic link as the disk, '..' and absolute names, duplicates, 100000 members" {
  make_disk disk1.img $MiB
  make_ovf app.ovf disk1.img
  $POKE build link.ova app.ovf symlink:disk1.img:/etc/passwd
  expect_refused link.ova '"disk1.img": a symbolic link, not a regular file'
  $POKE build dots.ova app.ovf file:../disk1.img:disk1.img file:disk1.img:disk1.img
  expect_refused dots.ova '"\.\." component'
  $POKE build abs.ova app.ovf file:/disk1.img:disk1.img file:disk1.img:disk1.img
  expect_refused abs.ova 'absolute name'
  $POKE build dup.ova app.ovf file:disk1.img:disk1.img file:disk1.img:disk1.img
  expect_refused dup.ova 'holds "disk1.img" twice'
  $POKE build many.ova app.ovf file:disk1.img:disk1.img empty:100000
  expect_refused many.ova 'more than 10000 members'
  # the same archives, well-formed: served
  $POKE build good.ova app.ovf file:disk1.img:disk1.img empty:100
  start_export good.ova
  cmp good.ova disk1.img || fail "the well-formed archive is not served"
  stop_export
}

@test "hostile OVFs: a missing file, a file References lacks, a size that differs, a DOCTYPE with entities, compressed or chunked files, 1100 files, not XML" {
  make_disk disk1.img $MiB
  make_ovf app.ovf disk1.img missing.img
  tar --format=ustar -cf miss.ova app.ovf disk1.img
  expect_refused miss.ova '"missing.img": not in the archive'
  sed 's/fileRef="file1"/fileRef="nope"/' app.ovf >ref.ovf
  tar --format=ustar -cf ref.ova ref.ovf disk1.img
  expect_refused ref.ova 'a file References does not list'
  make_ovf size.ovf disk1.img
  sed -i 's|ovf:href="disk1.img"|& ovf:size="12345"|' size.ovf
  tar --format=ustar -cf size.ova size.ovf disk1.img
  expect_refused size.ova "\"disk1.img\": the member is $MiB bytes, the OVF's ovf:size says 12345"
  sed -i 's|ovf:size="12345"|ovf:size="-1"|' size.ovf
  tar --format=ustar -cf size2.ova size.ovf disk1.img
  expect_refused size2.ova "the member is $MiB bytes, the OVF's ovf:size is not a number"
  cat >lol.ovf <<'EOF'
<?xml version="1.0"?>
<!DOCTYPE Envelope [
 <!ENTITY a "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa">
 <!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
 <!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">
 <!ENTITY x SYSTEM "file:///etc/passwd">
]>
<Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
 <References><File ovf:id="f" ovf:href="disk1.img&c;&x;"/></References>
</Envelope>
EOF
  tar --format=ustar -cf lol.ova lol.ovf disk1.img
  expect_refused lol.ova 'has a DOCTYPE'
  printf '<Envelope><References>' >bad.ovf
  tar --format=ustar -cf bad.ova bad.ovf disk1.img
  expect_refused bad.ova 'not well-formed XML'
  make_ovf gz.ovf disk1.img
  sed -i 's|ovf:href="disk1.img"|& ovf:compression="gzip"|' gz.ovf
  tar --format=ustar -cf gz.ova gz.ovf disk1.img
  expect_refused gz.ova 'compressed file'
  make_ovf chunk.ovf disk1.img
  sed -i 's|ovf:href="disk1.img"|& ovf:chunkSize="4096"|' chunk.ovf
  tar --format=ustar -cf chunk.ova chunk.ovf disk1.img
  expect_refused chunk.ova 'in chunks'
  { echo '<Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"><References>'
    for i in $(seq 1100); do echo "<File ovf:id=\"f$i\" ovf:href=\"disk1.img\"/>"; done
    echo '</References></Envelope>'; } >files.ovf
  tar --format=ustar -cf files.ova files.ovf disk1.img
  expect_refused files.ova 'more than 1024 files'
  printf '<Envelope/>' >none.ovf
  tar --format=ustar -cf none.ova none.ovf disk1.img
  expect_refused none.ova 'names no disk'
}

@test "a sparse member (GNU tar --sparse, pax format) is refused as a disk: its data is a map, not the disk" {
  truncate -s $((4 * MiB)) disk1.img
  put_random disk1.img $MiB 4096
  make_ovf app.ovf disk1.img
  tar --format=pax --sparse -cf sparse.ova app.ovf disk1.img
  expect_refused sparse.ova 'sparse tar member'
}

@test "an OVA of an OVF and a streamOptimized VMDK (as tar makes it) exports its disk: qemu-img convert -O raw of the extracted VMDK, qemu-img map" {
  make_disk src.img $((5 * MiB + 3072))
  qemu-img convert -f raw -O vmdk -o subformat=streamOptimized src.img disk1.vmdk
  make_disk src2.img $((2 * MiB))
  qemu-img convert -f raw -O vmdk -o subformat=streamOptimized src2.img disk2.vmdk
  make_ova app.ova ustar disk1.vmdk disk2.vmdk
  FMT=vmdk check_disk app.ova disk1.vmdk 1
  cmp "$WORK/expect.raw" src.img || fail "qemu-img's round trip differs"
  FMT=vmdk check_disk app.ova disk2.vmdk 2
  run --separate-stderr "$FDE" --probe app.ova
  assert_success
  assert_line "format: ova"
  assert_line "ova-disk 1: disk1.vmdk, vmdk, $((5 * MiB + 3072)) bytes (exported)"
  assert_line "ova-disk 2: disk2.vmdk, vmdk, $((2 * MiB)) bytes"
  assert_line "ova-disk-format: vmdk"
}
