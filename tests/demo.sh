#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
# The README's demo: make a small qcow2 disk with a partition table, show
# it as a raw disk on its own path, look at it with file and sfdisk, and
# revert.  Run from the build directory (or set FDE).
set -eu
FDE=${FDE:-$(pwd)/fuse-disk-export}
dir=$(mktemp -d /tmp/fde-demo.XXXXXX)
cleanup() {
  [ -f "$dir/pid" ] && kill -INT "$(cat "$dir/pid")" 2>/dev/null && sleep 0.5
  rm -rf "$dir"
}
trap cleanup EXIT INT TERM
cd "$dir"

say() { printf '\n$ %s\n' "$*"; "$@"; }

truncate -s 256M disk.raw
printf 'label: dos\n,128M,L\n,,L\n' | sfdisk -q disk.raw
qemu-img convert -f raw -O qcow2 disk.raw disk.qcow2
rm disk.raw

say file disk.qcow2
say "$FDE" -dp pid disk.qcow2
say file disk.qcow2
say sfdisk -l disk.qcow2
say kill -INT "$(cat pid)"
while [ -e pid ]; do sleep 0.1; done
say file disk.qcow2
echo
echo "The demo worked: the qcow2 image was a raw disk while exported."
