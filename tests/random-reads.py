#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
"""Compare many reads of a view with the same reads of an oracle file.

  random-reads.py [options] VIEW ORACLE

Does COUNT preads at pseudo-random offsets and lengths on both files and
compares the results (data and length; reads crossing or starting at the
end must be equally short).  Offsets are drawn uniformly, near multiples of
the cluster size (the places where mappings change) and around the end.
Lengths are mostly small and odd, a few span several clusters.  On the first
mismatch it prints the offset, both lengths and the first differing byte and
exits 1; on success it prints one summary line.  Python 3 stdlib only.

Options:
  --count N        reads to do (default 3000)
  --seed S         random seed (default 1; the seed is printed on failure)
  --cluster BYTES  cluster size, to bias offsets to cluster edges
                   (default 65536)
  --window OFF:LEN only read inside these ranges (repeatable; for huge
                   sparse images); default: the whole file
  --max-len BYTES  longest read (default: 2 clusters + 1, at least 256 KiB)
"""

import argparse
import os
import random
import sys


def parse_window(s):
    off, _, length = s.partition(":")
    return int(off, 0), int(length, 0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("view")
    ap.add_argument("oracle")
    ap.add_argument("--count", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cluster", type=int, default=65536)
    ap.add_argument("--window", type=parse_window, action="append")
    ap.add_argument("--max-len", type=int)
    a = ap.parse_args()

    rnd = random.Random(a.seed)
    vfd = os.open(a.view, os.O_RDONLY)
    ofd = os.open(a.oracle, os.O_RDONLY)
    vsize = os.fstat(vfd).st_size
    osize = os.fstat(ofd).st_size
    if vsize != osize:
        print(f"size differs: view {vsize}, oracle {osize}")
        return 1
    size = vsize
    windows = a.window or [(0, size)]
    windows = [(o, min(n, size - o)) for o, n in windows if o < size]
    cl = a.cluster
    max_len = a.max_len or max(2 * cl + 1, 256 << 10)
    total = 0

    for i in range(a.count):
        w_off, w_len = rnd.choice(windows)
        r = rnd.random()
        if r < 0.45:
            off = w_off + rnd.randrange(w_len)
        elif r < 0.9:
            # around a cluster edge inside the window
            first = (w_off + cl - 1) // cl
            last = (w_off + w_len) // cl
            edge = rnd.randint(first, max(first, last)) * cl
            off = edge + rnd.randint(-600, 600)
        else:
            # around the end of the window (and of the disk)
            off = w_off + w_len - rnd.randint(0, 3 * cl)
        off = max(w_off, min(off, w_off + w_len))
        r = rnd.random()
        if r < 0.6:
            length = rnd.randint(1, 4097)
        elif r < 0.97:
            length = rnd.randint(1, min(2 * cl + 1, 200000))
        else:
            length = rnd.randint(1, max_len)
        want = os.pread(ofd, length, off)
        got = os.pread(vfd, length, off)
        total += len(got)
        if got != want:
            print(f"read #{i} (seed {a.seed}): offset {off} ({off:#x}), "
                  f"length {length}: view returned {len(got)} bytes, "
                  f"oracle {len(want)}")
            for j in range(min(len(got), len(want))):
                if got[j] != want[j]:
                    print(f"  first difference at {off + j} ({off + j:#x}): "
                          f"view {got[j]:#04x}, oracle {want[j]:#04x}; "
                          f"view {got[j:j + 16].hex()} "
                          f"oracle {want[j:j + 16].hex()}")
                    break
            return 1
    print(f"{a.count} reads, {total} bytes: identical")
    return 0


if __name__ == "__main__":
    sys.exit(main())
