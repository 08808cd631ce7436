#!/usr/bin/env bats
# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
# The nbdkit plugin (plugin/nbdkit-fde-plugin.c): nbdkit serving our format
# backends over NBD on a Unix socket.  The oracle is always QEMU: what
# NBD clients (qemu-img, qemu-io, nbdinfo, nbdcopy) see must equal what
# qemu-img and qemu-io see in the image itself; writes made through NBD
# must leave the image `qemu-img check` clean and equal to a copy to
# which qemu-io made the same writes; block status must equal
# `qemu-img map`.  Also: read-only serving, multi-conn, QEMU's image
# locks while served, hostile images and bad parameters refused at start
# (nbdkit exits nonzero with our message), clients that vanish mid-request,
# partition=, snapshot=.
#
# Every nbdkit is started through nbdkit_run (LD_PRELOAD of the sanitizer
# runtimes in the ASan build) and either runs with --run (it ends with
# the command) or in the background with a pid file in $WORK, which the
# teardown stops.

load helpers

bats_require_minimum_version 1.5.0

setup() {
  [ -n "${FDE_PLUGIN:-}" ] || skip "nbdkit-plugin-dev not installed: plugin not built"
  requires nbdkit
  requires qemu-img
  requires qemu-io
  requires nbdinfo
  requires nbdcopy
  requires_python
  common_setup
  SOCK=$WORK/sock
  NBD="nbd+unix:///?socket=$SOCK"
  NBDKIT_PIDFILE=$WORK/nbdkit.pid
  NBDKIT_OPTS=()
}

teardown() {
  if [ -n "${WORK:-}" ] && [ -f "$WORK/nbdkit.pid" ]; then
    local pid
    pid=$(cat "$WORK/nbdkit.pid")
    kill -TERM "$pid" 2>/dev/null
    # one that does not exit (a failed test's hang) is killed
    wait_gone "$WORK/nbdkit.pid" || kill -KILL "$pid" 2>/dev/null
  fi
  common_teardown
}

MiB=$((1 << 20))
KiB=1024

# nbdkit_run ARG...: nbdkit with ARG..., the one place nbdkit is started;
# killed if it runs for more than 2 minutes (no test needs 10 s of it).
# nbdkit itself is not built with the sanitizers: in the ASan build the
# plugin needs their runtimes preloaded (FDE_PRELOAD), and then
# libp11-kit too, after them.  Why: nbdkit links gnutls, which links
# libp11-kit, whose constructor calls newlocale(), which holds glibc's
# setlocale lock for writing while it calls malloc().  If that is the
# first call into the ASan runtime, ASan initialises right there, and its
# initialisation calls dlerror(), whose gettext takes that lock for
# reading: refused (the thread is the writer), yet unlocked after, which
# releases the write lock, and newlocale's own unlock then leaves the
# lock's reader count at -1.  The first strerror() after that (nbdkit's
# "No such file or directory", "Broken pipe") and exit() then hangs
# forever in libp11-kit's destructor (freelocale() waiting for the
# lock), whatever the plugin: `nbdkit file missing` does it too.
# Preloaded, libp11-kit's constructor runs after libstdc++'s, whose
# malloc initialises ASan first (glibc 2.36, Debian 12).
NBDKIT_P11=
# NBDKIT_SHIM, if set, is preloaded last (tests/fault-shim.so).
nbdkit_run() {
  local pre=() shim=${NBDKIT_SHIM:-}
  if [ -n "${FDE_PRELOAD:-}" ]; then
    [ -n "$NBDKIT_P11" ] || NBDKIT_P11=$(ldd "$(command -v nbdkit)" |
      awk '$1 ~ /^libp11-kit\./ { print $3; exit }')
    pre=(env "LD_PRELOAD=$FDE_PRELOAD${NBDKIT_P11:+ $NBDKIT_P11}${shim:+ $shim}")
  elif [ -n "$shim" ]; then
    pre=(env "LD_PRELOAD=$shim")
  fi
  timeout -s KILL 120 "${pre[@]}" nbdkit "$@" 3>&-
}

# start_nbdkit PARAM...: serve the plugin with PARAM... on $SOCK (nbdkit's
# own options first: NBDKIT_OPTS), nbdkit
# in the foreground (-f) of a background job; its log (stderr) goes to
# $WORK/nbdkit.log.  Returns once nbdkit has written its pid file (it
# does so when it accepts connections); sets NBDKIT_PID and NBDKIT_JOB
# (the job, whose exit status `wait` gives: stop_nbdkit).
start_nbdkit() {
  rm -f "$SOCK" "$NBDKIT_PIDFILE"
  nbdkit_run -f -U "$SOCK" -P "$NBDKIT_PIDFILE" "${NBDKIT_OPTS[@]}" \
    "$FDE_PLUGIN" "$@" \
    >"$WORK/nbdkit.out" 2>"$WORK/nbdkit.log" &
  NBDKIT_JOB=$!
  local i
  for i in $(seq 200); do
    if [ -s "$NBDKIT_PIDFILE" ] && [ -S "$SOCK" ]; then
      NBDKIT_PID=$(cat "$NBDKIT_PIDFILE")
      return 0
    fi
    alive "$NBDKIT_JOB" || break
    sleep 0.05
  done
  echo "# nbdkit did not start: $(cat "$WORK/nbdkit.log")" >&2
  return 1
}

# stop_nbdkit: TERM nbdkit and wait for it to exit; fails unless it exits
# 0 with nothing in its log from the sanitizers.  First, up to 10 s, until
# the last client's connection has ended in nbdkit too (its thread gone:
# idle, nbdkit has only its main thread): a connection that ends after
# the TERM is deliberately not closed in the plugin by nbdkit (1.32,
# free_connection: "Don't call the plugin again if quit has been set"),
# and its context, malloc'd in backend_open, is then reported by
# LeakSanitizer as a 280-byte leak from /usr/bin/nbdkit.
stop_nbdkit() {
  local i
  for i in $(seq 100); do
    [ "$(awk '$1 == "Threads:" { print $2 }' "/proc/$NBDKIT_PID/status" \
         2>/dev/null)" != 1 ] || break
    sleep 0.1
  done
  kill -TERM "$NBDKIT_PID" || return 1
  local rc=0
  wait "$NBDKIT_JOB" || rc=$?
  rm -f "$NBDKIT_PIDFILE"
  if [ "$rc" != 0 ]; then
    echo "# nbdkit exited with status $rc: $(cat "$WORK/nbdkit.log")" >&2
    return 1
  fi
  no_sanitizer_reports
}

no_sanitizer_reports() {
  ! grep -E 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$WORK/nbdkit.log" >&2
}

# refused PARAM...: nbdkit with PARAM... must exit nonzero at start,
# before serving anything (its --run command never runs); sets output
# (nbdkit's log) and status.
refused() {
  rm -f "$WORK/served"
  run nbdkit_run -f -U "$SOCK" "$FDE_PLUGIN" "$@" --run "touch $WORK/served"
  [ ! -e "$WORK/served" ] || fail "nbdkit served it: $output"
  [ "$status" = 1 ] || fail "nbdkit exited $status, not 1: $output"
  [[ "$output" != *'Sanitizer'* && "$output" != *'runtime error:'* ]] ||
    fail "sanitizer report: $output"
}

# put_random FILE OFFSET LEN: LEN random bytes into FILE at OFFSET.
put_random() {
  head -c "$3" /dev/urandom |
    dd of="$1" bs=64k seek="$2" oflag=seek_bytes conv=notrunc status=none
}

# put_text FILE OFFSET LEN: LEN bytes of random base64 text (varied, yet
# compressible to about 3/4, so qemu-img -c keeps the clusters compressed).
put_text() {
  head -c "$3" /dev/urandom | base64 -w 0 | head -c "$3" |
    dd of="$1" bs=64k seek="$2" oflag=seek_bytes conv=notrunc status=none
}

# make_source FILE SIZE: a raw disk of SIZE bytes, data with holes between.
make_source() {
  truncate -s "$2" "$1"
  put_random "$1" 0 $((512 * KiB))
  put_random "$1" $((3 * MiB + 4096)) $((200 * KiB))
  put_random "$1" $((7 * MiB - 100)) 300
  put_random "$1" $(($2 - MiB)) $MiB
}

# make_chain DIR: DIR/base.qcow2 (random data at several offsets) and
# DIR/top.qcow2 on it (random data elsewhere, over part of the base's,
# zero clusters over base data, a discarded range), 32 MiB.
make_chain() {
  local d=$1
  truncate -s $((32 * MiB)) "$d/base.raw"
  put_random "$d/base.raw" 0 $((2 * MiB))
  put_random "$d/base.raw" $((8 * MiB)) $((3 * MiB))
  put_random "$d/base.raw" $((20 * MiB + 12345)) 70000
  put_random "$d/base.raw" $((31 * MiB)) $MiB
  qemu-img convert -q -f raw -O qcow2 "$d/base.raw" "$d/base.qcow2"
  qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$d/top.qcow2"
  head -c $((4 * MiB)) /dev/urandom >"$d/rand"
  qemu-io -f qcow2 \
    -c "write -s $d/rand $((MiB + 65536)) $((MiB + 65536))" \
    -c "write -s $d/rand $((12 * MiB + 5)) 100000" \
    -c "write -s $d/rand $((16 * MiB)) 65536" \
    -c "write -z $((9 * MiB)) $((512 * KiB))" \
    -c "write -z $((31 * MiB + 65536)) 65536" \
    -c "discard $((10 * MiB)) $((256 * KiB))" \
    "$d/top.qcow2" >/dev/null
}

# sanity: the test image must really have what the test is about
map_has() {
  qemu-img map -U --output=json "$1" | grep -q "$2" ||
    fail "qemu-img map of $1 has no $2"
}

# ---- 1: content, compared by qemu-img ------------------------------------

@test "raw image (nbdkit PLUGIN IMAGE, file= by the magic key): qemu-img compare of the NBD export equals the image" {
  make_source src.raw $((16 * MiB))
  start_nbdkit src.raw
  run qemu-img compare -U -f raw -F raw "$NBD" src.raw
  assert_success
  run nbdinfo --size "$NBD"
  assert_output $((16 * MiB))
  stop_nbdkit
}

@test "qcow2 backing chain (data, zero clusters, discards over the base): qemu-img compare of the NBD export equals the top image" {
  make_chain "$WORK"
  map_has top.qcow2 '"depth": 1, "present": true, "zero": false, "data": true'
  map_has top.qcow2 '"depth": 0, "present": true, "zero": true, "data": false'
  start_nbdkit file=top.qcow2
  run qemu-img compare -U -f raw -F qcow2 "$NBD" top.qcow2
  assert_success
  stop_nbdkit
}

# compressed_case TYPE: a qcow2 converted with -c and compression_type
# TYPE (its clusters compressed, checked) equals its source through NBD.
compressed_case() {
  truncate -s $((16 * MiB)) src.raw
  put_text src.raw 0 $((3 * MiB))
  put_text src.raw $((5 * MiB + 777)) $((1 * MiB))
  put_random src.raw $((9 * MiB)) $((256 * KiB))
  put_text src.raw $((15 * MiB)) $MiB
  qemu-img convert -q -f raw -O qcow2 -c -o compression_type="$1" src.raw c.qcow2
  qemu-img info c.qcow2 | grep -q "compression type: $1" ||
    fail "not $1: $(qemu-img info c.qcow2)"
  # (qemu-img map gives no host offset for compressed clusters)
  map_has c.qcow2 '"data": true}'
  start_nbdkit c.qcow2 decompressed-cache=1M
  run qemu-img compare -U -f raw -F raw "$NBD" src.raw
  assert_success
  run qemu-img compare -U -f raw -F qcow2 "$NBD" c.qcow2
  assert_success
  stop_nbdkit
}

@test "zstd-compressed qcow2: qemu-img compare of the NBD export equals the image and its source" {
  compressed_case zstd
}

@test "zlib-compressed qcow2: qemu-img compare of the NBD export equals the image and its source" {
  compressed_case zlib
}

# ---- 2: block status ----------------------------------------------------

# normalised_map nbd|qemu FILE: the JSON map in FILE (nbdinfo --map --json
# or qemu-img map --output=json) as "start length data zero" lines, with
# adjacent runs of the same kind merged.
normalised_map() {
  "$PYTHON" - "$1" "$2" <<'PY'
import json, sys
kind, path = sys.argv[1], sys.argv[2]
runs = []
for e in json.load(open(path)):
    if kind == "nbd":
        start, length = e["offset"], e["length"]
        data, zero = not (e["type"] & 1), bool(e["type"] & 2)
    else:
        start, length = e["start"], e["length"]
        data, zero = e["data"], e["zero"]
    if runs and runs[-1][0] + runs[-1][1] == start and runs[-1][2:] == [data, zero]:
        runs[-1][1] += length
    else:
        runs.append([start, length, data, zero])
for r in runs:
    print(*r)
PY
}

@test "nbdinfo --map of the backing chain equals qemu-img map (data and zero runs)" {
  make_chain "$WORK"
  qemu-img map --output=json top.qcow2 >qemu.json
  start_nbdkit top.qcow2
  nbdinfo --map --json "$NBD" >nbd.json
  stop_nbdkit
  normalised_map qemu qemu.json >qemu.map
  normalised_map nbd nbd.json >nbd.map
  # the chain has every kind of run
  grep -q ' True False$' qemu.map
  grep -q ' False True$' qemu.map
  run diff -u qemu.map nbd.map
  assert_success
}

# ---- 3, 4: writes, zeroing, trimming ------------------------------------

# image_ok IMAGE ORACLE: IMAGE passes qemu-img check and equals ORACLE.
image_ok() {
  run qemu-img check "$1"
  assert_success
  run qemu-img compare "$1" "$2"
  assert_success
}

@test "nbdcopy of a random disk into the export of a backing chain: the top then equals it, check clean, base unchanged" {
  make_chain "$WORK"
  local base_sum
  base_sum=$(sha base.qcow2)
  truncate -s $((32 * MiB)) new.raw
  put_random new.raw 0 $((10 * MiB))
  put_random new.raw $((14 * MiB + 999)) $((3 * MiB))
  put_random new.raw $((30 * MiB)) $((2 * MiB))
  start_nbdkit top.qcow2
  run nbdcopy --flush new.raw "$NBD"
  assert_success
  stop_nbdkit
  image_ok top.qcow2 new.raw
  [ "$(sha base.qcow2)" = "$base_sum" ]
}

# The writes of the qemu-io tests: unaligned, across cluster (64 KiB) and
# L2 (512 MiB: not in 32 MiB) boundaries, into areas only the base has
# data in, partial sectors, data from $WORK/rand.
WRITES=(
  "write -s RAND 1 1"
  "write -s RAND 511 3"
  "write -s RAND 65535 2"
  "write -s RAND $((MiB - 1000)) 200000"
  "write -s RAND $((8 * MiB + 4097)) 65537"
  "write -s RAND $((20 * MiB + 12000)) 3000"
  "write -P 0x5a $((31 * MiB + 100)) 131072"
  "write -P 0xa5 $((9 * MiB + 60000)) 10000"
  "write -s RAND $((32 * MiB - 7)) 7"
)

# qemu_io_writes FMT TARGET [CMD...]: WRITES and then CMD... by qemu-io.
qemu_io_writes() {
  local fmt=$1 target=$2 w args=()
  shift 2
  for w in "${WRITES[@]}" "$@"; do
    args+=(-c "${w//RAND/$WORK/rand}")
  done
  qemu-io -f "$fmt" "${args[@]}" "$target"
}

@test "qemu-io writes through NBD (unaligned, across clusters, over backing-only data) equal qemu-io's writes to a copy; check clean" {
  make_chain "$WORK"
  cp top.qcow2 oracle.qcow2      # backing base.qcow2 too, relative name
  qemu_io_writes qcow2 oracle.qcow2 >/dev/null
  start_nbdkit top.qcow2
  run qemu_io_writes raw "$NBD"
  assert_success
  refute_output --partial 'failed'
  # read back through NBD before the restart, then after it
  run qemu-img compare -U -f raw -F qcow2 "$NBD" oracle.qcow2
  assert_success
  stop_nbdkit
  image_ok top.qcow2 oracle.qcow2
}

@test "zero (write -z) and trim (discard) through NBD read back zeros, over own and backing data; equals the oracle; check clean" {
  make_chain "$WORK"
  # own data of the top too, where the base has none
  qemu-io -f qcow2 -c "write -s $WORK/rand $((24 * MiB)) $((2 * MiB))" top.qcow2 >/dev/null
  cp top.qcow2 oracle.qcow2
  local ranges=(
    "$((24 * MiB)) $((512 * KiB))"            # own data, aligned
    "$((25 * MiB + 1000)) 200000"             # own data, unaligned
    "$((MiB)) $((128 * KiB))"                 # own data over the base's
    "$((8 * MiB + 512)) $((MiB + 3))"         # the base's data only
    "$((31 * MiB + 70000)) 65536"             # across a cluster, base data
  )
  local zargs=() dargs=() oargs=() rargs=() i=0 r
  for r in "${ranges[@]}"; do
    if [ $((i % 2)) = 0 ]; then zargs+=(-c "write -z $r"); else dargs+=(-c "discard $r"); fi
    oargs+=(-c "write -z $r")
    rargs+=(-c "read -P 0 $r")
    i=$((i + 1))
  done
  # and a trim the block layer may not round: whole clusters of the base
  dargs+=(-c "discard $((20 * MiB)) $((128 * KiB))")
  oargs+=(-c "write -z $((20 * MiB)) $((128 * KiB))")
  rargs+=(-c "read -P 0 $((20 * MiB)) $((128 * KiB))")
  qemu-io -f qcow2 "${oargs[@]}" oracle.qcow2 >/dev/null
  start_nbdkit top.qcow2
  run nbdinfo "$NBD"
  assert_line --regexp 'can_zero: true'
  assert_line --regexp 'can_trim: true'
  run qemu-io -f raw "${zargs[@]}" "${dargs[@]}" "$NBD"
  assert_success
  refute_output --partial 'failed'
  run qemu-io -f raw "${rargs[@]}" "$NBD"
  assert_success
  refute_output --partial 'failed'
  refute_output --partial 'Pattern verification'
  stop_nbdkit
  image_ok top.qcow2 oracle.qcow2
  run qemu-io -f qcow2 "${rargs[@]}" top.qcow2
  refute_output --partial 'Pattern verification'
}

# ---- raw NBD clients -----------------------------------------------------

# rude_client SOCK MODE OFFSET LENGTH [DATAFILE]: connect (newstyle
# fixed, NBD_OPT_EXPORT_NAME), send one request and close the socket:
#   read-noreply  a read of LENGTH, closed before any of the reply is read
#   read-half     the same, closed after half of the reply's data
#   write-noreply a write of LENGTH bytes of DATAFILE at OFFSET, closed
#                 before the reply
#   write-short   a write header for LENGTH, only half of its data sent
#   write-reply, zero-reply, trim-reply
#                 a whole write (of DATAFILE's bytes), write-zeroes or
#                 trim request: print the error of the server's reply
#                 (0, or an errno: 1 is EPERM)
rude_client() {
  "$PYTHON" - "$@" <<'PY'
import socket, struct, sys
path, mode, off, length = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
def recv(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise SystemExit("server closed early")
        b += c
    return b
hello = recv(18)
assert hello[:16] == b"NBDMAGICIHAVEOPT", hello
s.sendall(struct.pack(">I", 3))                # fixed newstyle, no zeroes
s.sendall(struct.pack(">QII", 0x49484156454F5054, 1, 0))   # EXPORT_NAME ""
size, flags = struct.unpack(">QH", recv(10))
assert off + length <= size, (size, off, length)
cmd = {"read": 0, "write": 1, "trim": 4, "zero": 6}[mode.split("-")[0]]
s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, cmd, 1, off, length))
if mode == "read-half":
    recv(16 + length // 2)
elif mode.startswith("write"):
    with open(sys.argv[5], "rb") as f:
        f.seek(off)
        data = f.read(length)
    assert len(data) == length
    s.sendall(data if mode in ("write-noreply", "write-reply") else data[:length // 2])
if mode.endswith("-reply"):
    magic, error, handle = struct.unpack(">IIQ", recv(16))
    assert magic == 0x67446698 and handle == 1, (magic, handle)
    print(error)
s.close()
PY
}

# ---- 5: read-only -------------------------------------------------------

# served_read_only DATAFILE: the export is read-only: nbdinfo says so, qemu-io
# cannot open it for writing, and a write, a write-zeroes and a trim sent
# anyway are answered EPERM.
served_read_only() {
  run nbdinfo "$NBD"
  assert_line --regexp 'is_read_only: true'
  run -2 nbdinfo --can write "$NBD"
  run qemu-io -f raw -c "write -P 0x11 0 4096" "$NBD"
  assert_failure
  assert_output --partial 'Permission denied'
  run rude_client "$SOCK" write-reply 4096 4096 "$1"
  assert_output 1
  run rude_client "$SOCK" zero-reply 0 65536
  assert_output 1
  run rude_client "$SOCK" trim-reply 0 65536
  assert_output 1
}

@test "readonly=true: writes, zeroing and trims refused, nbdinfo says read-only, the image unchanged" {
  make_chain "$WORK"
  local sum
  sum=$(sha top.qcow2)
  start_nbdkit top.qcow2 readonly=true
  served_read_only base.raw
  run qemu-img compare -U -f raw -F qcow2 "$NBD" top.qcow2
  assert_success
  stop_nbdkit
  [ "$(sha top.qcow2)" = "$sum" ]
}

@test "a VMDK (a format served read-only) is served read-only without readonly=, with the right content" {
  make_source src.raw $((16 * MiB))
  qemu-img convert -q -f raw -O vmdk src.raw d.vmdk
  local sum
  sum=$(sha d.vmdk)
  start_nbdkit d.vmdk
  served_read_only src.raw
  run qemu-img compare -U -f raw -F raw "$NBD" src.raw
  assert_success
  stop_nbdkit
  [ "$(sha d.vmdk)" = "$sum" ]
}

# ---- 6: several connections ---------------------------------------------

@test "multi-conn: nbdcopy with 4 connections, then two concurrent qemu-io writers to disjoint ranges; equals the oracle, check clean" {
  make_chain "$WORK"
  truncate -s $((32 * MiB)) new.raw
  put_random new.raw 0 $((6 * MiB))
  put_random new.raw $((12 * MiB)) $((4 * MiB + 12345))
  put_random new.raw $((29 * MiB)) $((3 * MiB))
  cp new.raw oracle.raw
  head -c $((2 * MiB)) /dev/urandom >rand2
  local a=() b=() i off
  for i in $(seq 0 15); do
    off=$((i * 2 * MiB))
    a+=(-c "write -s $WORK/rand $((off + 1000)) 70000")
    b+=(-c "write -s $WORK/rand2 $((off + MiB - 33)) 100000")
  done
  qemu-io -f raw "${a[@]}" "${b[@]}" oracle.raw >/dev/null
  start_nbdkit top.qcow2
  run nbdinfo "$NBD"
  assert_line --regexp 'can_multi_conn: true'
  run nbdinfo --can multi-conn "$NBD"
  assert_success
  run nbdcopy --connections=4 --requests=16 --request-size=$((256 * KiB)) new.raw "$NBD"
  assert_success
  qemu-io -f raw "${a[@]}" "$NBD" >a.out 2>&1 &
  local pa=$!
  qemu-io -f raw "${b[@]}" "$NBD" >b.out 2>&1 &
  local pb=$!
  wait $pa || fail "writer a: $(cat a.out)"
  wait $pb || fail "writer b: $(cat b.out)"
  ! grep -q failed a.out b.out
  stop_nbdkit
  image_ok top.qcow2 oracle.raw
}

# ---- 7: locks -----------------------------------------------------------

@test "QEMU's image locks: qemu-io cannot open the image while it is served (nor its backing file for writing), and can once nbdkit exits" {
  make_chain "$WORK"
  start_nbdkit top.qcow2
  run qemu-io -f qcow2 -c "read 0 512" top.qcow2
  assert_failure
  assert_output --partial 'Failed to get'
  assert_output --partial 'lock'
  run qemu-io -f qcow2 -c "write 0 512" base.qcow2
  assert_failure
  assert_output --partial 'lock'
  # a second nbdkit serving it is refused at start, naming the first
  # (our own executable is named as it runs: nbdkit) and its pid
  SOCK="$WORK/sock2" refused top.qcow2
  assert_output --regexp "top\.qcow2: in use by nbdkit \(pid $NBDKIT_PID\)"
  stop_nbdkit
  run qemu-io -f qcow2 -c "read 0 512" top.qcow2
  assert_success
  run qemu-io -f qcow2 -c "write -P 0 0 512" base.qcow2
  assert_success
}

# ---- 8: hostile images --------------------------------------------------

@test "a final flush that fails when nbdkit exits (fdatasync EIO, injected by tests/fault-shim.so) is logged: writes since the last flush may be lost" {
  local shim=${FDE_BUILDDIR:-$FDE_SRCDIR}/tests/fault-shim.so
  [ -f "$shim" ] || fail "$shim is missing: make check builds it"
  truncate -s 16M img.raw
  head -c 1M /dev/urandom >data.raw
  # every fdatasync/fsync of img.raw fails from the first; raw writes do
  # not sync, so only the final flush meets the fault
  echo "g1 sync 1 EIO 0" >"$WORK/fault.ctl"
  FDE_FAULT_FILE=$WORK/img.raw FDE_FAULT_CTL=$WORK/fault.ctl \
    FDE_FAULT_LOG=$WORK/fault.log NBDKIT_SHIM=$shim \
    ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0 \
    start_nbdkit img.raw
  nbdcopy data.raw "$NBD"
  stop_nbdkit
  grep -Eq '^g1 1 sync fdatasync .* -5 injected$' "$WORK/fault.log" ||
    fail "the final fdatasync did not fail: $(cat "$WORK/fault.log")"
  grep -q "img.raw: the final flush failed: writes since the last successful flush may be lost" \
    "$WORK/nbdkit.log" || fail "not logged: $(cat "$WORK/nbdkit.log")"
}

@test "fast zero (qemu-io write -z -n): whole clusters are zeroed; partial clusters and a v2 image over a backing file get ENOTSUP with nothing changed" {
  make_chain "$WORK"
  qemu-img convert -q -f qcow2 -O raw top.qcow2 oracle.raw
  start_nbdkit top.qcow2
  run nbdinfo "$NBD"
  assert_line --regexp 'can_fast_zero: true'
  # partial clusters (64 KiB) at either end: refused, the data stays
  run qemu-io -f raw -c "write -z -n $((MiB + 1000)) 4096" "$NBD"
  assert_output --partial 'Operation not supported'
  run qemu-io -f raw -c "write -z -n $((8 * MiB)) $((64 * KiB + 512))" "$NBD"
  assert_output --partial 'Operation not supported'
  run qemu-img compare -U -f raw -F raw "$NBD" oracle.raw
  assert_success
  # whole clusters, over own and backing data: zeroed
  run qemu-io -f raw -c "write -z -n $((MiB)) $((256 * KiB))" \
    -c "write -z -n $((8 * MiB)) $((128 * KiB))" "$NBD"
  refute_output --partial 'failed'
  stop_nbdkit
  dd if=/dev/zero of=oracle.raw bs=64k seek=16 count=4 conv=notrunc status=none
  dd if=/dev/zero of=oracle.raw bs=64k seek=128 count=2 conv=notrunc status=none
  image_ok top.qcow2 oracle.raw
  # a v2 (compat=0.10) overlay cannot say "zeros" over its backing file
  qemu-img create -q -f qcow2 -o compat=0.10 -b base.qcow2 -F qcow2 v2.qcow2
  start_nbdkit v2.qcow2
  run qemu-io -f raw -c "write -z -n 0 $((64 * KiB))" "$NBD"
  assert_output --partial 'Operation not supported'
  stop_nbdkit
  run qemu-img compare v2.qcow2 base.qcow2
  assert_success
}

@test "a chain deeper than 32 images is refused with a message naming the served image first, then the layer" {
  qemu-img create -q -f qcow2 d0.qcow2 1M
  local i
  for i in $(seq 1 34); do
    qemu-img create -q -f qcow2 -u -b "d$((i - 1)).qcow2" -F qcow2 "d$i.qcow2" 1M
  done
  refused d34.qcow2
  assert_output --regexp "^nbdkit: error: $WORK/d34.qcow2: .*d[0-9]+.qcow2: backing chain deeper than 32"
}

@test "hostile qcow2 (L1 table past the end of the file) is refused at start: nbdkit exits nonzero naming the image and the problem" {
  qemu-img create -q -f qcow2 bad.qcow2 16M
  "$PYTHON" "$FDE_SRCDIR/tests/qcow2-poke.py" bad.qcow2 set l1_table_offset 0x40000000
  refused bad.qcow2
  assert_output --partial "nbdkit: error: $WORK/bad.qcow2:"
  assert_output --regexp 'L1 table .*beyond the end'
  refused file=bad.qcow2 readonly=true
  assert_output --regexp "$WORK/bad.qcow2: L1 table .*beyond the end"
}

@test "hostile qcow2 whose backing file (../ name) its owner cannot read is refused at start; readable, it is served" {
  # a user's image (owned by nobody), its directories searchable by it
  getent passwd 65534 >/dev/null || skip "no user 65534"
  chmod 755 "$WORK"
  mkdir d
  printf 'secret\n' >secret
  chmod 600 secret
  qemu-img create -q -f qcow2 -b ../secret -F raw d/img.qcow2 1M
  chown 65534 d/img.qcow2
  refused d/img.qcow2
  assert_output --partial "nbdkit: error: $WORK/d/img.qcow2: backing file"
  assert_output --partial 'secret'
  assert_output --partial 'not readable by the image'"'"'s owner'
  # the same with /etc/shadow named
  qemu-img rebase -u -b /etc/shadow -F raw d/img.qcow2
  refused d/img.qcow2 readonly=true
  assert_output --partial "nbdkit: error: $WORK/d/img.qcow2: backing file /etc/shadow"
  # readable by the owner: served (the refusals were for that reason)
  qemu-img rebase -u -b ../secret -F raw d/img.qcow2
  chmod 644 secret
  start_nbdkit d/img.qcow2 readonly=true
  run qemu-io -r -f raw -c "read -v 0 7" "$NBD"
  assert_output --partial 'secret'
  stop_nbdkit
}

# ---- 9: clients that vanish ---------------------------------------------

# Does this nbdkit abort (raw_send_socket: Assertion `sock >= 0') when a
# client with several requests in flight on one connection hangs up?
# nbdkit 1.32.4 to 1.33.9 do: nbdkit commit 9d82aa4f "server: Don't
# assert on send if client hangs up early" (Red Hat bug 2173054), in
# 1.33.10 and 1.34.  Not the plugin's bug: with such an nbdkit, one worker
# thread per connection (--threads=1) avoids it, the connections are
# still served in parallel.
nbdkit_aborts_on_hangup() {
  local v
  v=$(nbdkit --version | awk '{ print $2; exit }')
  [ "$(printf '%s\n' 1.32.4 "$v" | sort -V | head -n 1)" = 1.32.4 ] &&
    [ "$(printf '%s\n' 1.33.10 "$v" | sort -V | head -n 1)" != 1.33.10 ]
}

@test "clients that disconnect mid-request (reads, writes, nbdcopy killed) leave nbdkit serving correct data; check clean" {
  make_chain "$WORK"
  qemu-img convert -q -f qcow2 -O raw top.qcow2 oracle.raw
  ! nbdkit_aborts_on_hangup || NBDKIT_OPTS=(--threads=1)
  start_nbdkit top.qcow2
  local round
  for round in 1 2 3; do
    # the writes write what is there: whether or not nbdkit applied one,
    # the disk must still equal the oracle
    rude_client "$SOCK" read-noreply 0 $((32 * MiB))
    rude_client "$SOCK" read-half $((MiB + 1)) $((8 * MiB))
    rude_client "$SOCK" write-noreply $((3 * MiB + 7)) $((4 * MiB)) oracle.raw
    rude_client "$SOCK" write-short $((12 * MiB)) $((8 * MiB)) oracle.raw
    nbdcopy --connections=2 "$NBD" null: &
    local cp=$!
    sleep 0.0$round
    kill -9 $cp 2>/dev/null || true
    wait $cp || true
    alive "$NBDKIT_PID" || fail "nbdkit died in round $round: $(cat "$WORK/nbdkit.log")"
  done
  run qemu-img compare -U -f raw -F raw "$NBD" oracle.raw
  assert_success
  stop_nbdkit
  image_ok top.qcow2 oracle.raw
}

# ---- 10: parameters -----------------------------------------------------

@test "parameter errors (no file=, unknown parameter, format=nonsense, partition=0, bad readonly=) stop nbdkit at start with a message" {
  qemu-img create -q -f qcow2 img.qcow2 16M
  refused
  assert_output --partial 'file=IMAGE is required'
  refused img.qcow2 frobnicate=1
  assert_output --partial "unknown parameter 'frobnicate'"
  refused img.qcow2 format=nonsense
  assert_output --partial 'format=nonsense: not a format this plugin serves'
  refused img.qcow2 partition=0
  assert_output 'nbdkit: error: partition=0: not a number from 1 to 1000000'
  refused img.qcow2 disk=4294967297
  assert_output 'nbdkit: error: disk=4294967297: not a number from 1 to 1000000'
  refused img.qcow2 "partition= 1"
  assert_output --partial 'partition= 1: not a number from 1'
  refused img.qcow2 "cache-size= 1M"
  assert_output --partial 'cache-size= 1M: not a size'
  refused img.qcow2 readonly=perhaps
  assert_output 'nbdkit: error: readonly=perhaps: not a boolean (true or false)'
  refused img.qcow2 cache-size=-1
  assert_output 'nbdkit: error: cache-size=-1: not a size (bytes, or a number with K, M or G)'
  refused img.qcow2 decompressed-cache=0
  assert_output 'nbdkit: error: decompressed-cache=0: must be more than 0'
  refused file=
  assert_output 'nbdkit: error: file=: an empty image name'
  # a second file= (or any parameter) is refused, not the last one served
  qemu-img create -q -f raw other.img 1M
  refused img.qcow2 file=other.img
  assert_output 'nbdkit: error: file= given twice (img.qcow2 and other.img)'
  refused img.qcow2 format=qcow2 format=raw
  assert_output --partial 'format= given twice'
  refused "$WORK/missing.qcow2"
  assert_output --partial "$WORK/missing.qcow2"
  # a partition the disk does not have
  refused img.qcow2 partition=1
  assert_output --partial "$WORK/img.qcow2: partition 1"
}

@test "format=raw on a qcow2 serves the qcow2 file's bytes as they are" {
  make_chain "$WORK"
  start_nbdkit top.qcow2 format=raw readonly=true
  run nbdinfo --size "$NBD"
  assert_output "$(stat -c %s top.qcow2)"
  nbdcopy "$NBD" served.raw
  stop_nbdkit
  cmp served.raw top.qcow2
}

# ---- 11: partition= -----------------------------------------------------

# partition_case LABEL N START SIZE: a 24 MiB qcow2 whose disk has a
# LABEL (dos, gpt) partition table made by sfdisk; partition=N must serve
# exactly bytes START..START+SIZE of the disk as qemu-img converts it.
partition_case() {
  truncate -s $((24 * MiB)) disk.raw
  put_random disk.raw 0 $((24 * MiB))
  if [ "$1" = dos ]; then
    printf 'label: dos\nstart=2048, size=16384, type=83\nstart=18432, type=83\n'
  else
    printf 'label: gpt\nstart=2048, size=8192\nstart=10240, size=20480\n'
  fi | sfdisk --quiet disk.raw >/dev/null
  qemu-img convert -q -f raw -O qcow2 disk.raw disk.qcow2
  qemu-img convert -q -f qcow2 -O raw disk.qcow2 oracle.raw
  dd if=oracle.raw of=part.raw bs=512 skip=$(($3 / 512)) count=$(($4 / 512)) status=none
  start_nbdkit disk.qcow2 partition="$2"
  run nbdinfo --size "$NBD"
  assert_output "$4"
  run qemu-img compare -U -f raw -F raw "$NBD" part.raw
  assert_success
  nbdcopy "$NBD" served.raw
  stop_nbdkit
  cmp served.raw part.raw
}

@test "partition=2 of a dos-labelled qcow2: the export is exactly that partition's bytes" {
  requires sfdisk
  partition_case dos 2 $((18432 * 512)) $(((49152 - 18432) * 512))
}

@test "partition=1 of a GPT-labelled qcow2: the export is exactly that partition's bytes" {
  requires sfdisk
  partition_case gpt 1 $((2048 * 512)) $((8192 * 512))
}

# ---- 12: snapshot= ------------------------------------------------------

@test "snapshot=NAME and snapshot=ID serve a qcow2 internal snapshot's content, read-only" {
  make_source src.raw $((16 * MiB))
  qemu-img convert -q -f raw -O qcow2 src.raw img.qcow2
  qemu-img snapshot -c before img.qcow2
  qemu-io -f qcow2 -c "write -P 0x77 0 $((2 * MiB))" \
    -c "write -z $((15 * MiB)) $MiB" img.qcow2 >/dev/null
  qemu-img convert -q -f qcow2 -O raw -l snapshot.name=before img.qcow2 snap.raw
  cmp snap.raw src.raw       # (the oracle agrees with its source)
  local sum
  sum=$(sha img.qcow2)
  start_nbdkit img.qcow2 snapshot=before
  served_read_only src.raw
  run qemu-img compare -U -f raw -F raw "$NBD" snap.raw
  assert_success
  stop_nbdkit
  start_nbdkit img.qcow2 snapshot=1
  run qemu-img compare -U -f raw -F raw "$NBD" snap.raw
  assert_success
  stop_nbdkit
  [ "$(sha img.qcow2)" = "$sum" ]
  refused img.qcow2 snapshot=nosuch
  assert_output --partial "$WORK/img.qcow2"
  assert_output --partial 'nosuch'
}
