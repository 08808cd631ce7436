# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
# The qcow2 image recipes the write tests (tests/qcow2-write.bats) and the
# soak (tests/write-soak.sh) run the randomized workload on.  Sourced; all
# functions work in the current directory and need qemu-img and qemu-io.
#
# make_case NAME builds img.qcow2 (and for the chains base.qcow2) for one
# recipe.  The contents are deterministic (no /dev/urandom), so a failure
# reproduces from the recipe name and the workload seed.

WRITE_CASES="empty full prealloc-metadata v2-4k c512 c2m zlib zstd
  refcount1 refcount64 lazy extl2 extl2-backing snapshot chain chain-v2
  chain-short-base odd-size"

# qemu-io, quietly (it has no -q; its errors go to stderr).
qio() { qemu-io "$@" >/dev/null; }

# deterministic_raw FILE SIZE_MIB: text-like, compressible data with zero
# gaps, the same every time.
deterministic_raw() {
  "${PYTHON:-python3}" - "$1" "$2" <<'EOF'
import random, sys
path, mib = sys.argv[1], int(sys.argv[2])
rnd = random.Random(4242)
words = [bytes(rnd.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(2, 9)))
         for _ in range(300)]
texts = [b" ".join(rnd.choice(words) for _ in range(12000))[: 1 << 16]
         for _ in range(8)]
with open(path, "wb") as f:
    f.truncate(mib << 20)
    for chunk in range(mib * 16):          # 64 KiB chunks
        r = rnd.random()
        if r < 0.25:
            continue                        # a hole: reads as zeros
        f.seek(chunk << 16)
        if r < 0.35:
            f.write(rnd.randbytes(1 << 16)) # incompressible
        else:                               # text, a little varied
            t = bytearray(rnd.choice(texts))
            t[rnd.randrange(1 << 16)] = 0x41 + chunk % 26
            f.write(t)
EOF
}

# Some scattered pre-existing data written with qemu-io: unaligned bits,
# whole clusters, zeroed clusters.  $1 image, $2 format (default qcow2).
scatter_data() {
  local img=$1 fmt=${2:-qcow2}
  qio -f "$fmt" \
    -c 'write -P 0x11 0 64k' \
    -c 'write -P 0x22 100k 3k' \
    -c 'write -P 0x33 1M 1M' \
    -c 'write -P 0x44 5000k 512' \
    -c 'write -z 1536k 128k' \
    -c 'write -P 0x55 9M 300k' \
    -c 'write -P 0x66 20000k 70k' \
    "$img"
}

# make_case NAME: run the recipe in a separate shell with -e, so that any
# failing step fails make_case (whatever context it is called in).
QCOW2_WRITE_CASES_FILE=$(readlink -f "${BASH_SOURCE[0]}")
make_case() {
  PYTHON=${PYTHON:-python3} bash -e -o pipefail -c \
    '. "$1"; make_case_body "$2"' make_case "$QCOW2_WRITE_CASES_FILE" "$1"
}

make_case_body() {
  local name=$1
  rm -f img.qcow2 base.qcow2 src.raw
  case $name in
  empty)
    qemu-img create -q -f qcow2 img.qcow2 64M ;;
  full)
    # every cluster allocated and holding data
    deterministic_raw src.raw 24
    qemu-img convert -O qcow2 -S 0 src.raw img.qcow2 ;;
  prealloc-metadata)
    qemu-img create -q -f qcow2 -o preallocation=metadata img.qcow2 48M
    scatter_data img.qcow2 ;;
  v2-4k)
    qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=4096 img.qcow2 48M
    scatter_data img.qcow2 ;;
  c512)
    qemu-img create -q -f qcow2 -o cluster_size=512 img.qcow2 24M
    scatter_data img.qcow2 ;;
  c2m)
    qemu-img create -q -f qcow2 -o cluster_size=2M img.qcow2 64M
    scatter_data img.qcow2 ;;
  zlib)
    deterministic_raw src.raw 24
    qemu-img convert -c -O qcow2 -o compression_type=zlib src.raw img.qcow2 ;;
  zstd)
    deterministic_raw src.raw 24
    qemu-img convert -c -O qcow2 -o compression_type=zstd src.raw img.qcow2 ;;
  refcount1)
    qemu-img create -q -f qcow2 -o refcount_bits=1 img.qcow2 48M
    scatter_data img.qcow2 ;;
  refcount64)
    qemu-img create -q -f qcow2 -o refcount_bits=64 img.qcow2 48M
    scatter_data img.qcow2 ;;
  lazy)
    qemu-img create -q -f qcow2 -o lazy_refcounts=on img.qcow2 48M
    scatter_data img.qcow2 ;;
  extl2)
    # 64 KiB clusters with 32 subclusters of 2 KiB: partly allocated
    # clusters, zero subclusters, unallocated subclusters
    qemu-img create -q -f qcow2 -o extended_l2=on img.qcow2 48M
    scatter_data img.qcow2
    qio -c 'write -P 0x77 2M 2k' -c 'write -P 0x78 2052k 6k' \
      -c 'write -z 2060k 4k' -c 'write -z 3M 2k' -c 'write -P 0x79 3080k 1k' \
      img.qcow2 ;;
  extl2-backing)
    qemu-img create -q -f qcow2 base.qcow2 48M
    qio -c 'write -P 0xa1 0 48M' base.qcow2
    qemu-img create -q -f qcow2 -o extended_l2=on -b base.qcow2 -F qcow2 img.qcow2
    qio -c 'write -P 0x77 2M 2k' -c 'write -P 0x78 2052k 6k' \
      -c 'write -z 2060k 4k' -c 'write -z 3M 2k' -c 'write -P 0x79 3080k 1k' \
      -c 'write -P 0x7a 10270k 1k' -c 'write -z 11M 64k' img.qcow2 ;;
  snapshot)
    # data shared between the active layer and snapshot s1 (refcount 2),
    # then partly overwritten after the snapshot
    qemu-img create -q -f qcow2 img.qcow2 48M
    scatter_data img.qcow2
    qemu-img snapshot -c s1 img.qcow2
    qio -c 'write -P 0x99 1028k 8k' -c 'write -P 0x9a 30M 1M' img.qcow2
    qemu-img snapshot -c s2 img.qcow2
    qio -c 'write -P 0x9b 9M 64k' img.qcow2 ;;
  chain)
    qemu-img create -q -f qcow2 base.qcow2 48M
    scatter_data base.qcow2
    qio -c 'write -P 0xb1 16M 8M' base.qcow2
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 img.qcow2
    qio -c 'write -P 0xc1 100k 5k' -c 'write -P 0xc2 17M 64k' \
      -c 'write -z 18M 128k' img.qcow2 ;;
  chain-v2)
    qemu-img create -q -f qcow2 -o compat=0.10 base.qcow2 48M
    scatter_data base.qcow2
    qio -c 'write -P 0xb1 16M 8M' base.qcow2
    qemu-img create -q -f qcow2 -o compat=0.10 -b base.qcow2 -F qcow2 img.qcow2
    qio -c 'write -P 0xc1 100k 5k' -c 'write -P 0xc2 17M 64k' \
      -c 'write -z 18M 128k' img.qcow2 ;;
  chain-short-base)
    # the backing file is shorter than the top (and not a cluster multiple)
    qemu-img create -q -f qcow2 base.qcow2 $((20 * 1048576 + 3 * 512))
    qio -c "write -P 0xd1 0 $((20 * 1048576 + 3 * 512))" base.qcow2
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 img.qcow2 40M ;;
  odd-size)
    # not a multiple of the cluster size (nor of 4 KiB)
    qemu-img create -q -f qcow2 img.qcow2 $((40 * 1048576 + 7 * 512))
    scatter_data img.qcow2
    qio -c "write -P 0xe1 $((40 * 1048576 - 65536)) $((65536 + 7 * 512))" img.qcow2 ;;
  *)
    echo "make_case: unknown case $name" >&2
    return 1 ;;
  esac
  rm -f src.raw
}

# record_state: what must not change while the active layer is written
# (snapshot list and contents, backing file bytes), into state.before.
# record_state FILE writes to FILE instead.
record_state() {
  local out=${1:-state.before} s
  {
    qemu-img snapshot -l img.qcow2
    for s in $(qemu-img snapshot -l img.qcow2 | awk 'NR > 2 { print $2 }'); do
      qemu-img convert -U -l snapshot.name="$s" -O raw img.qcow2 snap.raw
      echo "snapshot $s $(sha256sum <snap.raw)"
      rm -f snap.raw
    done
    [ ! -e base.qcow2 ] || echo "backing $(sha256sum <base.qcow2)"
  } >"$out"
}
