#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
# Long randomized soak of the qcow2 write path (not part of make check).
#
#   tests/write-soak.sh [-o OPS] [-n SESSIONS] [-s FIRST_SEED] [-d DIR] [CASE]...
#
# For each CASE (default: every recipe in tests/qcow2-write-cases.bash) it
# builds the image once, then runs SESSIONS export sessions on it, each
# running tests/write-workload.py with OPS operations and its own seed, and
# after each revert requires `qemu-img check` to exit 0, `qemu-img compare`
# with the model to find them identical, and snapshots and backing files
# to be unchanged.  Prints one line per session and the totals; exits 1 if
# anything failed (the failing case directories are kept under DIR).
#
# Reproduce a failing session: the line names the case, session and seed;
# run the sessions of that case up to it (-s, -n) or, on the same image
# kept in DIR, `write-workload.py VIEW MODEL OPS SEED`.
#
# FDE names the program (default: ./fuse-disk-export next to tests/).
set -u
here=$(cd "$(dirname "$0")" && pwd)
: "${FDE:=$here/../fuse-disk-export}"
if [ -x /usr/bin/python3 ]; then PYTHON=/usr/bin/python3; else PYTHON=python3; fi
export PYTHON
ops=3000 sessions=4 seed=1000 dir=/tmp/fde-write-soak
while getopts o:n:s:d: opt; do
  case $opt in
  o) ops=$OPTARG ;;
  n) sessions=$OPTARG ;;
  s) seed=$OPTARG ;;
  d) dir=$OPTARG ;;
  *) sed -n '2,20p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
. "$here/qcow2-write-cases.bash"
# shellcheck disable=SC2086
[ $# -gt 0 ] || set -- $WRITE_CASES

total_ops=0 total_sessions=0 failures=0
mkdir -p "$dir"
for c in "$@"; do
  d=$dir/$c
  rm -rf "$d"; mkdir -p "$d"; cd "$d" || exit 1
  if ! make_case "$c" >make.log 2>&1; then
    echo "$c: cannot build the image: $(cat make.log)"
    failures=$((failures + 1)); continue
  fi
  record_state state.before
  qemu-img convert -O raw img.qcow2 model
  ok=1
  for n in $(seq "$sessions"); do
    s=$((seed + n))
    if ! "$FDE" -dp "$d/pid" img.qcow2 >export.log 2>&1; then
      echo "$c session $n: export failed: $(cat export.log)"; ok=0; break
    fi
    out=$("$PYTHON" "$here/write-workload.py" --log "$d/ops.log" "$d/img.qcow2" "$d/model" "$ops" "$s" 2>&1)
    wrc=$?
    pid=$(cat pid)
    kill -INT "$pid"
    for _ in $(seq 300); do [ -e pid ] || break; sleep 0.1; done
    [ ! -e pid ] || { echo "$c session $n: the daemon did not exit"; ok=0; break; }
    check=$(qemu-img check img.qcow2 2>&1); crc=$?
    cmp=$(qemu-img compare -f qcow2 -F raw img.qcow2 model 2>&1); cmprc=$?
    record_state state.after
    diff -q state.before state.after >/dev/null; src=$?
    total_ops=$((total_ops + ops)); total_sessions=$((total_sessions + 1))
    echo "$c session $n seed $s: workload=$wrc check=$crc compare=$cmprc state=$src :: ${out##*$'\n'}"
    if [ $wrc != 0 ] || [ $crc != 0 ] || [ $cmprc != 0 ] || [ $src != 0 ]; then
      echo "$out" | tail -5
      echo "$check" | tail -20
      echo "$cmp"
      cp img.qcow2 "img-failed-session-$n.qcow2"
      ok=0; break
    fi
  done
  if [ $ok = 1 ]; then
    cd "$dir" && rm -rf "$d"
  else
    failures=$((failures + 1))
  fi
done
echo "TOTAL: $total_sessions sessions, $total_ops operations, $failures failing cases"
[ $failures = 0 ]
