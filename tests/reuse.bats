#!/usr/bin/env bats
# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
# Freed clusters are reused within a session, as QEMU reuses them, and
# never while a read that mapped them may still use them; and the smaller
# defects found next to that code: the refcount table moved without the
# readers' lock, map_lock letting writers starve, the consistency scan
# counting references in 16 bits, raw map naming bytes past the end.
#
# QEMU is the oracle: qemu-io runs the same workload on an identical image
# for the size comparison, qemu-img check and convert judge the result.
# The deterministic lock and guard cases are C (tests/unit/reuse-test.c).

load helpers
load qcow2-helpers

bats_require_minimum_version 1.5.0

setup() {
  requires qemu-img
  requires qemu-io
  common_setup
  REUSE_TEST=${FDE_BUILDDIR:-$(dirname "$FDE")}/tests/unit/reuse-test
  [ -x "$REUSE_TEST" ] || skip "$REUSE_TEST is not built (make check builds it)"
}
teardown() {
  undo_stacked_on_views fuse   # ext4 and loop devices of the fstrim test
  common_teardown
}

# check_clean IMG: qemu-img check finds no error (leaks are allowed only
# where a test says so: pass "leaks-ok").
check_clean() {
  run qemu-img check "$1"
  if [ "${2:-}" = leaks-ok ]; then
    [ "$status" = 0 ] || [ "$status" = 3 ] ||
      fail "qemu-img check $1 (status $status): $(head -20 <<<"$output")"
  else
    [ "$status" = 0 ] ||
      fail "qemu-img check $1 (status $status): $(head -20 <<<"$output")"
  fi
}

# --- the discard workload, against QEMU ------------------------------------

# discard_rounds CLUSTER_SIZE [CREATE_OPTIONS]: four rounds of "write 256
# clusters, fsync, punch them, fsync" through the view, then 4 KiB into
# each of 64 clusters (partial clusters, in the freed ones reused; with
# extended L2, partial subclusters too) that stay; qemu-io does the same
# on an identical image with
# write, flush, discard (-d unmap, so that QEMU passes discards on), flush.
# Both images must check clean, ours must hold what was written, and its
# file be no larger than 1.25 times QEMU's.
discard_rounds() {
  local cs=$1 opts=cluster_size=$1${2:+,$2} r off fde_size qemu_size
  local fde_used qemu_used cmds=() tail=$((900 << 20))
  qemu-img create -q -f qcow2 -o "$opts" fde.qcow2 1G
  cp fde.qcow2 qemu.qcow2
  for r in 0 1 2 3; do
    off=$((r * 256 * cs))
    cmds+=(-c "write -P $((0x41 + r)) $off $((256 * cs))" -c flush
           -c "discard $off $((256 * cs))" -c flush)
  done
  for r in $(seq 0 63); do
    cmds+=(-c "write -P 0x7e $((tail + r * cs + 1536)) 4096")
  done
  cmds+=(-c flush)
  qemu-io -f qcow2 -d unmap "${cmds[@]}" qemu.qcow2 >/dev/null ||
    fail "qemu-io failed"

  truncate -s 1G model
  start_export fde.qcow2
  for r in 0 1 2 3; do
    off=$((r * 256 * cs))
    head -c $((256 * cs)) /dev/urandom |
      dd of=fde.qcow2 bs=1M seek="$off" oflag=seek_bytes conv=notrunc,fsync \
        status=none || fail "round $r: the write failed"
    fallocate --punch-hole --keep-size -o "$off" -l $((256 * cs)) fde.qcow2 ||
      fail "round $r: the punch failed"
    sync fde.qcow2 || fail "round $r: fsync after the punch failed"
  done
  for r in $(seq 0 63); do
    head -c 4096 /dev/urandom >piece
    dd if=piece of=fde.qcow2 bs=4096 seek=$((tail + r * cs + 1536)) \
      oflag=seek_bytes conv=notrunc status=none || fail "a last write failed"
    dd if=piece of=model bs=4096 seek=$((tail + r * cs + 1536)) \
      oflag=seek_bytes conv=notrunc status=none
  done
  sync fde.qcow2 || fail "the last fsync failed"
  cmp fde.qcow2 model || fail "the view differs from what was written"
  stop_export
  wait_unmounted "$WORK/fde.qcow2"

  check_clean fde.qcow2
  check_clean qemu.qcow2
  qemu-img convert -O raw fde.qcow2 fde.raw
  cmp fde.raw model || fail "qemu-img convert of the image differs from what was written"
  fde_size=$(stat -c %s fde.qcow2)
  qemu_size=$(stat -c %s qemu.qcow2)
  fde_used=$(($(stat -c %b fde.qcow2) * 512))
  qemu_used=$(($(stat -c %b qemu.qcow2) * 512))
  echo "# $opts: file size ours $fde_size, QEMU $qemu_size; allocated ours $fde_used, QEMU $qemu_used" >&3
  [ $((fde_size * 4)) -le $((qemu_size * 5)) ] ||
    fail "our image is $fde_size bytes, QEMU's $qemu_size: more than 1.25x (freed clusters not reused)"
}

@test "four rounds of write/fsync/punch/fsync, 64 KiB clusters: no larger than 1.25x QEMU's image; check clean; content as written" {
  requires fallocate
  discard_rounds 65536
}

@test "the same with 16 KiB clusters and extended L2 (reused clusters written in part, by subclusters)" {
  requires fallocate
  discard_rounds 16384 extended_l2=on
}

# --- the grace period ---------------------------------------------------------

@test "a cluster freed while a guarded read may use it is not reused until the read ends, then is; check clean" {
  requires_python
  qemu-img create -q -f qcow2 -o cluster_size=65536 img.qcow2 16M
  run "$REUSE_TEST" guard img.qcow2
  echo "# $output" >&3
  [ "$status" = 0 ] || fail "$output"
  check_clean img.qcow2
  qemu-img convert -O raw img.qcow2 img.raw
  run "$PYTHON" -c 'import sys
d = open(sys.argv[1], "rb").read()
c = 65536
ok = d[:c] == bytes(c) and d[c:2*c] == b"\xb2" * c and d[2*c:3*c] == b"\xc3" * c
sys.exit(0 if ok and d[3*c:] == bytes(len(d) - 3*c) else 1)' img.raw
  [ "$status" = 0 ] || fail "qemu-img convert does not show what the test wrote"
}

@test "reads racing discards and rewrites through the view never see another cluster's data; the freed clusters are reused" {
  requires_python
  # Cluster k holds 16-byte records (k, generation).  Two writers rewrite
  # and punch random clusters (fsync now and then, so frees are applied and
  # clusters reused all the time); three readers check that every record
  # they get is zeros or tagged with its own cluster -- a read that mapped
  # a cluster before it was freed and read it after its reuse would see
  # another cluster's tag.  (A record may be torn between generations of
  # its own cluster: that is an ordinary read racing a write.)
  qemu-img create -q -f qcow2 -o cluster_size=4096 img.qcow2 2M
  start_export img.qcow2
  run "$PYTHON" - "$WORK/img.qcow2" <<'EOF'
import ctypes, ctypes.util, os, random, struct, sys, threading, time
path = sys.argv[1]
CS, N = 4096, 512
libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
KEEP_SIZE, PUNCH_HOLE = 1, 2
fd = os.open(path, os.O_RDWR)
def block(k, gen):
    return struct.pack("<QQ", k, gen) * (CS // 16)
def punch(k):
    if libc.fallocate(fd, KEEP_SIZE | PUNCH_HOLE, ctypes.c_long(k * CS),
                      ctypes.c_long(CS)) != 0:
        raise OSError(ctypes.get_errno(), "fallocate")
for k in range(N):
    os.pwrite(fd, block(k, 0), k * CS)
os.fsync(fd)
stop, bad, ops = False, [], [0]
def writer(seed):
    rnd, gen = random.Random(seed), 1
    while not stop:
        k = rnd.randrange(N)
        if rnd.random() < 0.5:
            os.pwrite(fd, block(k, gen), k * CS)
        else:
            punch(k)
        gen += 1
        ops[0] += 1
        if gen % 32 == 0:
            os.fsync(fd)
def reader(seed):
    rnd, rfd = random.Random(seed), os.open(path, os.O_RDONLY)
    while not stop and not bad:
        k0 = rnd.randrange(N - 64)
        n = rnd.choice([1, 16, 64])
        data = os.pread(rfd, n * CS, k0 * CS)
        for i in range(n * CS // 16):
            k, gen = struct.unpack_from("<QQ", data, i * 16)
            if (k, gen) != (0, 0) and k != k0 + i * 16 // CS:
                bad.append((k0 + i * 16 // CS, k))
                break
    os.close(rfd)
threads = [threading.Thread(target=writer, args=(s,)) for s in (1, 2)]
threads += [threading.Thread(target=reader, args=(s,)) for s in (3, 4, 5)]
for t in threads:
    t.start()
time.sleep(6)
stop = True
for t in threads:
    t.join()
os.fsync(fd)
if bad:
    print("a read of cluster %d returned a record of cluster %d" % bad[0])
    sys.exit(1)
print("%d writes and punches" % ops[0])
EOF
  [ "$status" = 0 ] || fail "$output"
  local ops=$output size
  stop_export
  wait_unmounted "$WORK/img.qcow2"
  check_clean img.qcow2
  size=$(stat -c %s img.qcow2)
  echo "# $ops; image file $size bytes" >&3
  # 512 clusters hold data at most; a punched cluster is reused after the
  # next fsync, so only those rewritten in between append (without reuse,
  # every rewrite of a punched cluster does)
  [ "$size" -le $(((2 << 20) + (256 << 10))) ] ||
    fail "the image grew to $size bytes: freed clusters are not reused"
}

# --- the smaller defects --------------------------------------------------------

@test "the refcount table moves only under map_lock's write side (no reader sees it half moved)" {
  qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=64 img.qcow2 64M
  run "$REUSE_TEST" reftable img.qcow2
  [ "$status" = 0 ] || fail "$output"
  check_clean img.qcow2 leaks-ok     # the test allocates without referencing
}

@test "map_lock prefers writers: a waiting writer holds new readers back" {
  qemu-img create -q -f qcow2 img.qcow2 1M
  run "$REUSE_TEST" writer-pref img.qcow2
  [ "$status" = 0 ] || fail "$output"
}

@test "raw map never names bytes past the end of a file that shrank after open" {
  truncate -s 1M disk.raw
  run "$REUSE_TEST" raw-map disk.raw
  [ "$status" = 0 ] || fail "$output"
}

# make_shared_image IMG BITS REFCOUNT: 73,728 references to one data
# cluster (9 L1 entries naming one L2 table whose 8192 entries all name
# it) in a 5 GiB image with BITS-bit refcounts; the table's refcount is set
# to 9, the data cluster's to REFCOUNT.  Sets DATA to its offset.
make_shared_image() {
  qemu-img create -q -f qcow2 -o cluster_size=65536,refcount_bits=$2 "$1" 5G
  qemu-io -f qcow2 -c 'write -P 0x5c 0 64k' "$1" >/dev/null
  # one Python run with tests/qcow2-poke.py's Image (a run per poke is
  # seconds on a loaded machine)
  DATA=$("$PYTHON" - "$FDE_SRCDIR/tests/qcow2-poke.py" "$@" <<'EOF'
import importlib.util, sys
spec = importlib.util.spec_from_file_location("poke", sys.argv[1])
poke = importlib.util.module_from_spec(spec)
spec.loader.exec_module(poke)
img, width, refcount = poke.Image(sys.argv[2]), int(sys.argv[3]) // 8, int(sys.argv[4])
l1, mask = img.h("l1_table_offset"), 0x00fffffffffffe00
l2 = img.get(l1, 8) & mask
data = img.get(l2, 8) & mask
refblock = img.get(img.h("refcount_table_offset"), 8) & mask
if not (l2 and data and refblock):
    sys.exit("setup: no L2 table, data cluster or refblock")
for i in range(9):
    img.put(l1 + 8 * i, 8, l2)
for j in range(8192):
    img.put(l2 + 8 * j, 8, data)
img.put(refblock + width * (l2 >> 16), width, 9)
img.put(refblock + width * (data >> 16), width, refcount)
img.save()
print(data)
EOF
  ) || fail "setup: could not build the image"
}

# With 16-bit refcounts of 65535, a scan counting in 16 bits saturates
# both counts at 65535 and finds them equal.
@test "a cluster with more than 65535 references and a refcount of 65535 is refused for writing (fine with -r); with 32-bit refcounts that agree it is written, copied on write, clean" {
  requires_python
  make_shared_image img.qcow2 16 65535
  # the oracle agrees the image is broken there (QEMU's own count of the
  # references overflows the 16-bit refcount width)
  run qemu-img check img.qcow2
  [ "$status" = 2 ] || fail "setup: qemu-img check does not see the corruption: $output"
  grep -qE "overflow cluster offset=$(printf '%#x' "$DATA")|refcount=65535 reference=73728" <<<"$output" ||
    fail "setup: not the corruption intended: $(head -5 <<<"$output")"
  local sum
  sum=$(sha img.qcow2)
  run --separate-stderr "$FDE" -d -p "$WORK/rw.pid" img.qcow2
  [ "$status" != 0 ] || { kill -INT "$(cat "$WORK/rw.pid")"; wait_gone "$WORK/rw.pid"
    fail "the image was exported for writing"; }
  grep -q "more references than its refcount" <<<"$stderr" ||
    fail "the refusal does not say why: $stderr"
  nothing_mounted
  [ "$(sha img.qcow2)" = "$sum" ] || fail "the image changed"
  start_export -r img.qcow2
  cmp -n 65536 img.qcow2 <(head -c 65536 /dev/zero | tr '\0' '\134') ||
    fail "-r: guest cluster 0 does not read as written"
  stop_export
  wait_unmounted "$WORK/img.qcow2"

  # The same references with 32-bit refcounts that say 73728: correct, so
  # writable; a write copies the shared table and cluster, and the image
  # stays clean (the counts are exact, not merely larger).
  make_shared_image ok.qcow2 32 73728
  check_clean ok.qcow2
  start_export ok.qcow2
  head -c 4096 /dev/zero | tr '\0' '\247' |
    dd of=ok.qcow2 bs=4096 seek=1 conv=notrunc status=none ||
    fail "the write failed"
  stop_export
  wait_unmounted "$WORK/ok.qcow2"
  check_clean ok.qcow2
  # (qemu-io reads: the disk is 4.5 GiB of one shared cluster)
  qio ok.qcow2 'read -P 0xa7 4096 4096' 'read -P 0x5c 0 4096' \
      'read -P 0x5c 8192 57344' 'read -P 0x5c 65536 65536' \
      'read -P 0x5c 4G 65536' ||
    fail "the image does not hold the write next to the shared data"
}

# --- discards with no fsync after them (fstrim), against QEMU ---------------

# trim_rounds VIEW NAME: a loop device on VIEW with ext4 on it (mounted on
# $WORK/mnt-NAME); three rounds of "write a 48 MiB file, fsync, remove it,
# sync, fstrim", then an 8 MiB file that stays; unmounted and detached.
# fstrim's discards are followed by the next round's writes, not by an
# fsync, so the freed clusters are still deferred when those writes
# allocate: reused only after a flush, they would make the file grow by
# two rounds, not one.  (teardown undoes what a failure leaves.)
trim_rounds() {
  local view=$1 mnt=$WORK/mnt-$2 dev r
  mkdir "$mnt"
  dev=$(losetup -f --show "$view") || fail "$2: losetup on the view failed"
  mkfs.ext4 -q -F -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 "$dev" ||
    fail "$2: mkfs.ext4 failed"
  mount -t ext4 "$dev" "$mnt" || fail "$2: mounting the ext4 failed"
  for r in 1 2 3; do
    dd if=/dev/urandom of="$mnt/f" bs=1M count=48 conv=fsync status=none ||
      fail "$2: round $r: the write failed"
    rm "$mnt/f"
    sync -f "$mnt"
    fstrim "$mnt" || fail "$2: round $r: fstrim failed"
  done
  dd if=/dev/urandom of="$mnt/g" bs=1M count=8 conv=fsync status=none ||
    fail "$2: the last write failed"
  umount "$mnt" || fail "$2: unmounting the ext4 failed"
  losetup -d "$dev" || fail "$2: detaching the loop device failed"
}

# image_end IMG: qemu-img check's "Image end offset".
image_end() {
  qemu-img check "$1" | sed -n 's/^Image end offset: //p'
}

# The file's apparent size is the measure: it is how far the file grew at
# any time in the session (the end offset says only where the last
# cluster in use lies, which depends on which free cluster each
# allocation happened to take).
@test "ext4 on the view, rounds of write/rm/fstrim with no fsync after the trim: no larger than 1.25x QEMU's FUSE export (discard=unmap); check clean" {
  requires_root
  requires losetup
  requires mkfs.ext4
  requires fstrim
  requires qemu-storage-daemon
  local fde_size qemu_size qsd_pid
  qemu-img create -q -f qcow2 fde.qcow2 128M
  cp fde.qcow2 qemu.qcow2

  start_export fde.qcow2
  trim_rounds "$WORK/fde.qcow2" fde
  stop_export
  wait_unmounted "$WORK/fde.qcow2"

  # QEMU's FUSE export of an identical image, discards passed down to the
  # qcow2 layer (discard=unmap), started as tests/bench/bench.py starts it:
  # absolute paths (Debian 12's qsd leaves a dead mount for a relative
  # one); its pid file in $WORK, so common_teardown stops it on failure.
  touch qsd-view
  qemu-storage-daemon \
    --blockdev "driver=file,node-name=file,filename=$WORK/qemu.qcow2,discard=unmap" \
    --blockdev driver=qcow2,node-name=fmt,file=file,discard=unmap \
    --export "type=fuse,id=exp,node-name=fmt,mountpoint=$WORK/qsd-view,writable=on" \
    --daemonize --pidfile "$WORK/qsd.pid" 3>&- ||
    fail "qemu-storage-daemon did not start"
  qsd_pid=$(cat "$WORK/qsd.pid")
  wait_mounted "$WORK/qsd-view" || fail "qemu-storage-daemon's export is not mounted"
  trim_rounds "$WORK/qsd-view" qemu
  kill -TERM "$qsd_pid"
  wait_pid_gone "$qsd_pid" || fail "qemu-storage-daemon did not exit"
  wait_unmounted "$WORK/qsd-view" || fail "qemu-storage-daemon left its export mounted"

  check_clean fde.qcow2
  check_clean qemu.qcow2
  fde_size=$(stat -c %s fde.qcow2)
  qemu_size=$(stat -c %s qemu.qcow2)
  echo "# file size ours $fde_size, QEMU $qemu_size; image end offset ours $(image_end fde.qcow2), QEMU $(image_end qemu.qcow2)" >&3
  [ $((fde_size * 4)) -le $((qemu_size * 5)) ] ||
    fail "our image file is $fde_size bytes, QEMU's $qemu_size: more than 1.25x (trimmed clusters not reused by the writes that follow)"
}
