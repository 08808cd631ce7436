#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
# The walk-through without kpartx (and, as an ordinary user, without
# root): a qcow2 disk gets a GPT and an ext4 partition holding a file,
# all through the partition files of -P; the file is edited with fuse2fs
# (as root: mount -o loop); after the revert, qemu-img and debugfs show
# the edit inside the qcow2 image.  Run from the build directory (or set
# FDE).  Needs qemu-utils, fdisk, e2fsprogs and, as a user, fuse2fs.
set -eu
FDE=${FDE:-$(pwd)/fuse-disk-export}
PATH=$(dirname "$FDE"):$PATH
dir=$(mktemp -d "${TMPDIR:-/tmp}/fde-demo.XXXXXX")
cleanup() {
  if mountpoint -q "$dir/mnt"; then
    umount "$dir/mnt" 2>/dev/null || fusermount3 -u "$dir/mnt" 2>/dev/null || true
  fi
  if [ -f "$dir/pid" ]; then
    fuse-disk-export --stop="$dir/pid" >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
cd "$dir"

# say 'COMMAND': show it, then run it.
say() { printf '\n$ %s\n' "$1"; eval "$1"; }

if [ "$(id -u)" = 0 ]; then
  mount_p2='mount -o loop parts/p2 mnt'
  unmount='umount mnt'
else
  mount_p2='fuse2fs -o fakeroot parts/p2 mnt'
  unmount='fusermount3 -u mnt'
fi
mkdir files parts mnt
echo 'written before the export' >files/notes.txt

say 'qemu-img create -q -f qcow2 vm.qcow2 64M'
say 'fuse-disk-export -dp pid -P parts vm.qcow2'
say 'ls parts'
# p1: 16 MiB from 1 MiB; p2: 40 MiB from 17 MiB
say 'printf "label: gpt\n,16MiB\n,40MiB\n" | sfdisk -q parts/disk'
say 'ls parts'
say 'mkfs.ext4 -q -L data -d files parts/p2'
say "$mount_p2"
say 'echo "edited through parts/p2 as $(id -un)" >>mnt/notes.txt'
say 'cat mnt/notes.txt'
say "$unmount"
say 'fuse-disk-export --stop=pid'
say 'qemu-img check vm.qcow2'
say 'qemu-img convert -O raw vm.qcow2 vm.raw'
say 'dd if=vm.raw of=p2.img bs=1M skip=17 count=40 status=none'
say "debugfs -R 'cat /notes.txt' p2.img"
echo
echo "The demo worked: the file was edited inside the qcow2 image's ext4 partition."
