#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
"""Randomized write workload through a fuse-disk-export view, mirrored on a
plain model file.

usage: write-workload.py [--no-fallocate] [--log FILE] VIEW MODEL OPS SEED

VIEW is the exported path (it reads and writes as the raw disk), MODEL a
raw file of the same size holding what the disk should contain (start it
as `qemu-img convert -O raw IMAGE MODEL`).  Every operation applied to the
view is applied to the model too:

  * writes of odd sizes (1 byte .. 1 MiB + 1) at odd, sector-, page- and
    cluster-aligned offsets, some straddling the end of the disk (the view
    must write the part that fits and return a short count), some of all
    zero bytes, some in a small "hot" window so that clusters and L2 tables
    are rewritten many times;
  * fallocate PUNCH_HOLE|KEEP_SIZE and ZERO_RANGE (through ctypes), which
    must read back as zeros;
  * fsync, fdatasync, and closing and reopening the view;
  * writes starting at or past the end, which must fail with ENOSPC;
  * read-back checks of what was just written and of random ranges.

At the end the view is fsynced and compared with the model in full.  The
sequence is a function of SEED (and of the model's size) only.  Prints a
one-line summary; exits 1 on the first mismatch or unexpected error,
naming the operation index, the offset and the operations that touched it.
"""

import argparse
import ctypes
import ctypes.util
import errno
import os
import random
import sys

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int,
                           ctypes.c_longlong, ctypes.c_longlong]
libc.fallocate.restype = ctypes.c_int

MiB = 1 << 20


class Failure(Exception):
    pass


def fallocate(fd, mode, off, length):
    if libc.fallocate(fd, mode, off, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


class Workload:
    def __init__(self, view, model, seed, use_fallocate=True, log=None):
        self.view = view
        self.rnd = random.Random(seed)
        self.fd = os.open(view, os.O_RDWR)
        self.md = os.open(model, os.O_RDWR)
        self.size = os.fstat(self.md).st_size
        vsize = os.lseek(self.fd, 0, os.SEEK_END)
        if vsize != self.size:
            raise Failure("view is %d bytes, model %d" % (vsize, self.size))
        self.use_fallocate = use_fallocate
        self.history = []           # (index, kind, off, len)
        self.counts = {}
        self.bytes_written = 0
        self.bytes_checked = 0
        self.log = log
        # a small window that gets most of the rewrites
        hot_len = min(self.size, 4 * MiB)
        self.hot = (self.rnd.randrange(self.size - hot_len + 1), hot_len)
        self.i = -1

    # -- choosing ranges ---------------------------------------------------
    def pick_len(self):
        r = self.rnd.random()
        if r < 0.10:
            return self.rnd.randint(1, 16)
        if r < 0.20:
            return self.rnd.choice([511, 512, 513, 1023, 1024, 1536])
        if r < 0.40:
            return self.rnd.randint(1, 4096)
        if r < 0.55:
            return 4096 * self.rnd.randint(1, 16)
        if r < 0.70:
            return self.rnd.choice([65535, 65536, 65537, 131072, 2 * MiB // 4,
                                    MiB, MiB + 1, 4096 * 3 + 7])
        return self.rnd.randint(1, MiB)

    def pick_off(self, length):
        r = self.rnd.random()
        if r < 0.40:
            base, span = self.hot
        else:
            base, span = 0, self.size
        off = base + self.rnd.randrange(span)
        a = self.rnd.random()
        if a < 0.15:
            off &= ~511
        elif a < 0.35:
            off &= ~4095
        elif a < 0.45:
            off &= ~65535
        elif a < 0.50:
            off = (off & ~65535) + 65536 - self.rnd.randint(1, 600)
        if self.rnd.random() < 0.03:
            # near the end: some of these straddle it
            off = self.size - self.rnd.randint(1, 3 * 65536)
        return max(0, min(off, self.size - 1))

    def pick_data(self, length):
        r = self.rnd.random()
        if r < 0.08:
            return bytes(length)
        if r < 0.20:
            pat = self.rnd.randbytes(self.rnd.choice([1, 7, 512]))
            return (pat * (length // len(pat) + 1))[:length]
        return self.rnd.randbytes(length)

    # -- bookkeeping -------------------------------------------------------
    def note(self, kind, off=0, length=0):
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.history.append((self.i, kind, off, length))
        if self.log:
            self.log.write("%d %s %d %d\n" % (self.i, kind, off, length))

    def touching(self, pos):
        return [h for h in self.history
                if h[1] in ("write", "punch", "zero", "write-end")
                and h[2] <= pos < h[2] + h[3]][-8:]

    def check(self, off, length, what):
        length = min(length, self.size - off)
        pos = off
        while pos < off + length:
            n = min(MiB, off + length - pos)
            a = os.pread(self.fd, n, pos)
            b = os.pread(self.md, n, pos)
            if a != b:
                bad = next((k for k in range(min(len(a), len(b)))
                            if a[k] != b[k]), min(len(a), len(b)))
                bad += pos
                raise Failure(
                    "op %d (%s): view differs from model at offset %d "
                    "(0x%x): view %r model %r (read %d of %d bytes); "
                    "last ops touching it: %r"
                    % (self.i, what, bad, bad,
                       a[bad - pos:bad - pos + 8], b[bad - pos:bad - pos + 8],
                       len(a), n, self.touching(bad)))
            pos += n
        self.bytes_checked += length

    # -- operations --------------------------------------------------------
    def op_write(self):
        length = self.pick_len()
        off = self.pick_off(length)
        data = self.pick_data(length)
        n = os.pwrite(self.fd, data, off)
        want = min(length, self.size - off)
        if n != want:
            raise Failure("op %d: pwrite(%d bytes at %d) returned %d, want %d"
                          % (self.i, length, off, n, want))
        os.pwrite(self.md, data[:want], off)
        self.bytes_written += want
        self.note("write" if want == length else "write-end", off, want)
        if self.rnd.random() < 0.25:
            self.check(off, want, "read back the write")

    def op_fallocate(self, punch):
        length = self.pick_len()
        if self.rnd.random() < 0.3:
            length = 65536 * self.rnd.randint(1, 8)
        off = self.pick_off(length)
        mode = (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE if punch
                else FALLOC_FL_ZERO_RANGE | (FALLOC_FL_KEEP_SIZE
                                             if self.rnd.random() < 0.5
                                             else 0))
        fallocate(self.fd, mode, off, length)
        want = min(length, self.size - off)
        os.pwrite(self.md, bytes(want), off)
        self.note("punch" if punch else "zero", off, want)
        if self.rnd.random() < 0.5:
            self.check(off, want, "read back the punch/zero")

    def op_past_end(self):
        off = self.size + self.rnd.choice([0, 0, 1, 511, 4096, MiB])
        try:
            n = os.pwrite(self.fd, b"x" * self.rnd.choice([1, 512, 4096]), off)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise Failure("op %d: write at %d (past the end) failed with "
                              "%s, want ENOSPC" % (self.i, off, e))
            self.note("past-end", off, 0)
            return
        raise Failure("op %d: write at %d (past the end of a %d-byte disk) "
                      "returned %d, want ENOSPC" % (self.i, off, self.size, n))

    def op_reopen(self):
        os.close(self.fd)
        self.fd = os.open(self.view, os.O_RDWR)
        self.note("reopen")

    def step(self):
        r = self.rnd.random()
        if r < 0.60:
            self.op_write()
        elif r < 0.67 and self.use_fallocate:
            self.op_fallocate(punch=True)
        elif r < 0.74 and self.use_fallocate:
            self.op_fallocate(punch=False)
        elif r < 0.77:
            os.fsync(self.fd)
            self.note("fsync")
        elif r < 0.79:
            os.fdatasync(self.fd)
            self.note("fdatasync")
        elif r < 0.80:
            self.op_reopen()
        elif r < 0.81:
            self.op_past_end()
        else:
            length = self.pick_len()
            self.check(self.pick_off(length), length, "random read")
            self.note("read")

    def run(self, nops):
        for self.i in range(nops):
            try:
                self.step()
            except OSError as e:
                raise Failure("op %d: unexpected error: %s; last ops: %r"
                              % (self.i, e, self.history[-3:]))
        self.i = nops
        os.fsync(self.fd)
        self.check(0, self.size, "final full compare")
        os.close(self.fd)
        os.fsync(self.md)
        os.close(self.md)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("view")
    ap.add_argument("model")
    ap.add_argument("ops", type=int)
    ap.add_argument("seed", type=int)
    ap.add_argument("--no-fallocate", action="store_true",
                    help="only writes, syncs and reads")
    ap.add_argument("--log", help="write one line per operation to this file")
    a = ap.parse_args()
    log = open(a.log, "w") if a.log else None
    w = None
    try:
        w = Workload(a.view, a.model, a.seed, not a.no_fallocate, log)
        w.run(a.ops)
    except Failure as e:
        print("FAIL seed %d: %s" % (a.seed, e))
        sys.exit(1)
    except OSError as e:
        print("FAIL seed %d: op %s: %s" % (a.seed, w.i if w else "-", e))
        sys.exit(1)
    finally:
        if log:
            log.close()
    print("ok: %d ops, seed %d, %d bytes written, %d bytes compared; %s"
          % (a.ops, a.seed, w.bytes_written, w.bytes_checked,
             " ".join("%s=%d" % kv for kv in sorted(w.counts.items()))))


if __name__ == "__main__":
    main()
