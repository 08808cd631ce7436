#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
# Per-harness settings of the fuzzers, for Makefile.am's fuzz targets and
# tests/fuzz.bats (one place for them).
#
# Usage: harness.sh HARNESS KEY     (HARNESS: fuzz-vdi-read, vdi-read,
#                                    tests/fuzz/fuzz-vdi-read...)
#   dict     the dictionary's base name (tests/fuzz/DICT.dict)
#   max_len  libFuzzer's -max_len: enough for every structure the format
#            has once its MiB-aligned parts are put in the sparse or holes
#            layout, and for every seed of the harness
#   seeds    extensions of make-corpus.sh's seeds the harness fuzzes from
#            (all seeds are still replayed once by make fuzz-smoke)
set -eu
h=${1##*/}
h=${h#fuzz-}
case $h in
  qcow2-read|qcow2-write) dict=qcow2 max_len=524288 seeds=qcow2 ;;
  partition) dict=partition max_len=1048576 seeds='part sparse' ;;
  vdi-read) dict=vdi max_len=65536 seeds=vdi ;;
  vpc-read) dict=vpc max_len=65536 seeds=vhd ;;
  vhdx-read) dict=vhdx max_len=131072 seeds=vhdx ;;
  vmdk-read) dict=vmdk max_len=131072 seeds=vmdk ;;
  ova) dict=ova max_len=65536 seeds=ova ;;
  *) echo "$0: unknown harness $1" >&2; exit 2 ;;
esac
case $2 in
  dict) echo "$dict" ;;
  max_len) echo "$max_len" ;;
  seeds) echo "$seeds" ;;
  *) echo "$0: unknown key $2" >&2; exit 2 ;;
esac
