#!/usr/bin/env bats
# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
# The libFuzzer harnesses (tests/fuzz/) build, replay without a crash
# every saved regression input and every seed image, and survive a short
# fuzzing run.  Longer runs: "make fuzz".

load helpers

bats_require_minimum_version 1.5.0

setup() {
  : "${FDE_BUILDDIR:=$(dirname "$FDE")}"
  : "${FDE_SRCDIR:=$FDE_BUILDDIR}"
  WORK=$(mktemp -d "${BATS_TMPDIR:-/tmp}/fde-fuzz-test.XXXXXX")
}
teardown() { rm -rf "$WORK"; }

# Skip unless clang can link a libFuzzer target (libclang-rt-14-dev).
requires_libfuzzer() {
  requires clang
  printf '%s\n' '#include <stddef.h>' '#include <stdint.h>' \
    'int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void) d; (void) n; return 0; }' \
    >"$WORK/t.c"
  clang -fsanitize=fuzzer,address,undefined -o "$WORK/t" "$WORK/t.c" \
    >/dev/null 2>&1 ||
    skip "clang cannot link -fsanitize=fuzzer (install libclang-rt-14-dev)"
}

@test "the fuzz harnesses replay tests/fuzz/regressions and the seed corpus cleanly" {
  requires_libfuzzer
  run make -C "$FDE_BUILDDIR" fuzz-build
  assert_success
  local seeds=
  if command -v qemu-img >/dev/null && command -v qemu-io >/dev/null; then
    run make -C "$FDE_BUILDDIR" fuzz-corpus
    assert_success
    seeds=$FDE_BUILDDIR/tests/fuzz/work/seeds
    [ "$(ls "$seeds" | wc -l)" -ge 20 ] || fail "too few seeds in $seeds"
  fi
  local h
  for h in qcow2-read qcow2-write partition vdi-read vpc-read vhdx-read ova vmdk-read; do
    # the partition harness also checks that the sectors copied for
    # libblkid give the table libblkid reads from the whole disk
    run --separate-stderr env FDE_FUZZ_STRICT_COPY=1 \
      "$FDE_BUILDDIR/tests/fuzz/fuzz-$h" -runs=0 \
      -close_fd_mask=2 -timeout=10 -rss_limit_mb=2048 \
      -artifact_prefix="$WORK/" \
      "$FDE_SRCDIR/tests/fuzz/regressions" ${seeds:+"$seeds"}
    [ "$status" = 0 ] || fail "fuzz-$h crashed (status $status): $stderr"
  done
}

@test "the write harness checks writes against the raw backend (harness self-test)" {
  requires_libfuzzer
  run make -C "$FDE_BUILDDIR" fuzz-build
  assert_success
  mkdir "$WORK/c"
  head -c 300000 /dev/urandom >"$WORK/c/a"
  head -c 4096 /dev/zero >"$WORK/c/b"
  export FDE_FUZZ_FORMAT=raw
  run --separate-stderr \
    "$FDE_BUILDDIR/tests/fuzz/fuzz-qcow2-write" -runs=300 -seed=1 \
    -close_fd_mask=2 -artifact_prefix="$WORK/" "$WORK/c"
  [ "$status" = 0 ] || fail "the write harness failed on raw (status $status): $stderr"
}

@test "a short fuzzing run of each harness finds nothing" {
  requires_libfuzzer
  requires qemu-img
  run make -C "$FDE_BUILDDIR" fuzz-build fuzz-corpus
  assert_success
  local h e f info="sh $FDE_SRCDIR/tests/fuzz/harness.sh"
  for h in qcow2-read qcow2-write partition vdi-read vpc-read vhdx-read ova vmdk-read; do
    # the harness's own seeds, dictionary and -max_len; -timeout=30, as
    # the 2000-deep EBR chain of fuzz-partition's seeds takes 4 s on a
    # machine running make check -j (a hang still fails)
    mkdir -p "$WORK/$h"
    for e in $($info "$h" seeds); do
      for f in "$FDE_BUILDDIR"/tests/fuzz/work/seeds/*."$e"; do
        [ ! -f "$f" ] || cp "$f" "$WORK/$h/"
      done
    done
    [ -n "$(ls "$WORK/$h")" ] || fail "no seeds for fuzz-$h"
    run --separate-stderr "$FDE_BUILDDIR/tests/fuzz/fuzz-$h" \
      -max_total_time="${FDE_FUZZ_SMOKE_SECONDS:-15}" -seed=1 \
      -dict="$FDE_SRCDIR/tests/fuzz/$($info "$h" dict).dict" \
      -max_len="$($info "$h" max_len)" \
      -close_fd_mask=2 -timeout=30 -rss_limit_mb=2048 \
      -artifact_prefix="$WORK/" "$WORK/$h"
    [ "$status" = 0 ] || fail "fuzz-$h found a problem (status $status): $(echo "$stderr" | tail -30)"
  done
}
