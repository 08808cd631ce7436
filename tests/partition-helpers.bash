# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
# Partition tables for the partition suites (partition.bats,
# partitions-dir.bats, partitions-fs.bats): layouts made by sfdisk, and
# byte pokes for the hostile ones.

# The MBR layout: three primaries, an extended partition (4) holding three
# logical ones (5, 6, 7).  Start and size in 512-byte sectors.
MBR_PARTS="1:2048:8192 2:10240:8192 3:18432:8192 5:28672:4096 6:34816:4096 7:40960:4096"
# The GPT layout: entries 1, 2 and 128 (the gaps stay empty).
GPT_PARTS="1:2048:4096 2:6144:4096 128:10240:4096"

# make_mbr FILE: a 64 MiB raw disk full of random bytes with the MBR table.
make_mbr() {
  head -c 64M /dev/urandom >"$1"
  printf '%s\n' 'label: dos' \
    'start=2048, size=8192, type=83' 'start=10240, size=8192, type=83' \
    'start=18432, size=8192, type=83' 'start=26624, type=5' \
    'start=28672, size=4096, type=83' 'start=34816, size=4096, type=83' \
    'start=40960, size=4096, type=83' | sfdisk --quiet "$1" >/dev/null 2>&1
}

# make_gpt FILE: a 64 MiB raw disk of random bytes with GPT entries 1, 2,
# 128 (sfdisk numbers a partition by the name its line gives).
make_gpt() {
  head -c 64M /dev/urandom >"$1"
  printf '%s\n' 'label: gpt' "$1""1 : start=2048, size=4096" \
    "$1""2 : start=6144, size=4096" "$1""128 : start=10240, size=4096" |
    sfdisk --quiet "$1" >/dev/null
}

# range FILE START SIZE: the bytes of sectors [START, START+SIZE) of FILE.
range() {
  dd if="$1" bs=512 skip="$2" count="$3" status=none
}

# poke FILE OFFSET HEX: write bytes into a file.
poke() {
  printf "$(sed 's/\(..\)/\\x\1/g' <<<"$3")" |
    dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}

# le32 N: N as 4 little-endian bytes in hex.
le32() { printf '%02x%02x%02x%02x' $(($1 & 255)) $(($1 >> 8 & 255)) $(($1 >> 16 & 255)) $(($1 >> 24 & 255)); }

