#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
"""Numbered-block writer and checker for the crash (SIGKILL) test.

  fsync-writer.py write VIEW ACKS SEED
      Writes 4 KiB blocks 0, 1, 2, ... at scattered 4 KiB slots of VIEW,
      in batches of 1..64 blocks, and fsyncs after each batch.  After
      each fsync returns it appends "BATCH LAST_BLOCK" to ACKS (flushed at
      once).  Stops at the first error (the daemon was killed: ENOTCONN),
      printing it, or when every slot has been written; exits 0 either way
      (2 on bad usage).

  fsync-writer.py verify RAW ACKS SEED
      RAW is the disk's contents (qemu-img convert -O raw).  Every block
      up to the last acknowledged one must be in its slot, intact; every
      other slot must hold zeros or its own intact block (a write that
      was cut short by the crash may or may not have landed, but nothing
      else may appear).  Exits 1 naming the first bad slot.

Block i holds the 8-byte little-endian i, the seed and the slot repeated,
with a CRC32 of the rest in its last 4 bytes.  The slot of block i is
(A * i + B) mod slots, a permutation of the disk's slots (slots is a power
of two, A is odd).
"""

import os
import random
import struct
import sys
import zlib

BLOCK = 4096


def layout(size, seed):
    slots = 1 << ((size // BLOCK).bit_length() - 1)
    rnd = random.Random(seed)
    a = rnd.randrange(slots) | 1
    b = rnd.randrange(slots)
    return slots, a, b


def block(i, seed, slot):
    body = struct.pack("<QQQ", i, seed, slot) * ((BLOCK - 4) // 24 + 1)
    body = body[:BLOCK - 4]
    return body + struct.pack("<I", zlib.crc32(body))


def write(view, acks, seed):
    fd = os.open(view, os.O_RDWR)
    size = os.lseek(fd, 0, os.SEEK_END)
    slots, a, b = layout(size, seed)
    rnd = random.Random(seed + 1)
    ack = open(acks, "a")
    i = 0
    batch = 0
    try:
        while i < slots:
            n = min(rnd.randint(1, 64), slots - i)
            for _ in range(n):
                slot = (a * i + b) % slots
                os.pwrite(fd, block(i, seed, slot), slot * BLOCK)
                i += 1
            os.fsync(fd)
            ack.write("%d %d\n" % (batch, i - 1))
            ack.flush()
            batch += 1
    except OSError as e:
        print("stopped after %d blocks, %d acknowledged batches: %s"
              % (i, batch, e))
        return
    print("wrote all %d slots" % slots)


def verify(raw, acks, seed):
    last = -1
    with open(acks) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2:
                last = int(parts[1])
    size = os.path.getsize(raw)
    slots, a, b = layout(size, seed)
    inv = {}
    for i in range(slots):
        inv[(a * i + b) % slots] = i
    zero = bytes(BLOCK)
    landed = 0
    with open(raw, "rb") as f:
        for slot in range(slots):
            f.seek(slot * BLOCK)
            got = f.read(BLOCK)
            i = inv[slot]
            want = block(i, seed, slot)
            if got == want:
                if i > last:
                    landed += 1
                continue
            if i <= last:
                print("FAIL: block %d (acknowledged, last acknowledged %d) "
                      "at slot %d (offset %d) is %s"
                      % (i, last, slot, slot * BLOCK,
                         "zeros" if got == zero else "wrong: %r" % got[:32]))
                sys.exit(1)
            if got != zero:
                print("FAIL: unacknowledged block %d at slot %d (offset %d) "
                      "holds neither zeros nor the block: %r"
                      % (i, slot, slot * BLOCK, got[:32]))
                sys.exit(1)
    print("ok: blocks 0..%d intact; %d later blocks landed" % (last, landed))


def main():
    if len(sys.argv) != 5 or sys.argv[1] not in ("write", "verify"):
        print(__doc__)
        sys.exit(2)
    mode, path, acks, seed = sys.argv[1:]
    (write if mode == "write" else verify)(path, acks, int(seed))


if __name__ == "__main__":
    main()
