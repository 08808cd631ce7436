#!/usr/bin/env bats
# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
# -P DIR under concurrency (issue 11): while the partition table is
# rewritten through DIR/disk again and again (a partition resized, moved,
# removed and added back, each change followed by an fsync or a close,
# which make the view read the table again), other threads read and write
# the partitions that stay, open and read the ones that change, and list
# the directory.  What stays must read exactly as written; what changes
# may fail (EIO, ENOENT, ESTALE) but never show other bytes.  The
# ThreadSanitizer build runs this suite against its daemon: a data race
# there ends the daemon, and the test with it.

load helpers

setup() {
  common_setup
  requires qemu-img
  requires sfdisk
  requires_python
  mkdir dir
}

teardown() {
  undo_stacked_on_views
  common_teardown
}

@test "the table changes under readers, writers and listings" {
  truncate -s 64M disk.img
  printf 'label: dos\nstart=2048, size=8192, type=83\nstart=10240, size=8192, type=83\nstart=20480, size=4096, type=83\n' |
    sfdisk --quiet disk.img >/dev/null
  "$PYTHON" - disk.img <<'PY'
import sys
# every 512-byte sector of the disk holds its own number: a read shows
# at once where its bytes came from
with open(sys.argv[1], 'r+b') as f:
    f.seek(2048 * 512)
    for s in range(2048, 64 * 2048):
        f.write(s.to_bytes(8, 'little') * 64)
PY
  qemu-img convert -O qcow2 disk.img disk.qcow2
  start_export -P dir disk.qcow2
  run timeout 120 "$PYTHON" - dir "${FDE_RACE_SECONDS:-6}" <<'PY'
import errno, os, random, struct, sys, threading, time

d, seconds = sys.argv[1], float(sys.argv[2])
end = time.monotonic() + seconds
failures = []
counts = {}
P2 = (10240, 8192)                  # p2: start, size in sectors

def fail(msg):
    failures.append(msg)

def count(what):
    counts[what] = counts.get(what, 0) + 1

def sector_of(buf, i):
    return int.from_bytes(buf[i * 512:i * 512 + 8], 'little')

def entry(start, size):
    return struct.pack('<B3sB3sII', 0, bytes(3), 0x83, bytes(3), start, size)

# p3 resized in place, moved, removed, and back; p4 comes and goes
LAYOUTS = [
    ((20480, 4096), None),
    ((20480, 8192), (40960, 2048)),
    ((30720, 4096), None),
    (None, (45056, 4096)),
]

def table():
    fd = os.open(d + '/disk', os.O_RDWR)
    n = 0
    while time.monotonic() < end:
        p3, p4 = LAYOUTS[n % len(LAYOUTS)]
        os.pwrite(fd, entry(*p3) if p3 else bytes(16), 446 + 32)
        os.pwrite(fd, entry(*p4) if p4 else bytes(16), 446 + 48)
        if n % 3 == 2:              # a close reads the table too
            os.close(fd)
            fd = os.open(d + '/disk', os.O_RDWR)
        else:
            os.fsync(fd)
        count('table')
        n += 1
    os.close(fd)

def stable_reader():
    # p1 never changes: sector s of the disk holds s
    fd = os.open(d + '/p1', os.O_RDONLY)
    while time.monotonic() < end:
        off = random.randrange(8192 - 64)
        buf = os.pread(fd, 64 * 512, off * 512)
        for i in range(64):
            if sector_of(buf, i) != 2048 + off + i:
                fail('p1 sector %d reads %d' % (off + i, sector_of(buf, i)))
                return
        count('read p1')
    os.close(fd)

def writer(k):
    # each writer owns the sectors of p2 that are k mod 2; it writes them
    # through p2 and reads them back through disk
    fd = os.open(d + '/p2', os.O_RDWR)
    dfd = os.open(d + '/disk', os.O_RDONLY)
    while time.monotonic() < end:
        s = random.randrange(P2[1] // 2) * 2 + k
        tag = random.getrandbits(63) | 1 << 63
        os.pwrite(fd, tag.to_bytes(8, 'little') * 64, s * 512)
        got = os.pread(dfd, 512, (P2[0] + s) * 512)
        if sector_of(got, 0) != tag:
            fail('p2 sector %d: disk shows %x, not %x' % (s, sector_of(got, 0), tag))
            return
        count('write p2')
    os.close(fd)
    os.close(dfd)

def changing_reader(name):
    # p3 and p4 come and go: any of these errors, never foreign bytes
    ok = (errno.ENOENT, errno.EIO, errno.ESTALE)
    while time.monotonic() < end:
        try:
            fd = os.open(d + '/' + name, os.O_RDONLY)
        except OSError as e:
            if e.errno not in ok:
                fail('open %s: %s' % (name, e))
            count('open %s refused' % name)
            continue
        try:
            for _ in range(20):
                size = os.fstat(fd).st_size // 512
                buf = os.pread(fd, 4096, random.randrange(size - 8) * 512)
                first = sector_of(buf, 0)
                if not any(first in range(a, a + n) for a, n in
                           [l for lay in LAYOUTS for l in lay if l]):
                    fail('%s shows sector %d, in no layout' % (name, first))
                    return
                count('read ' + name)
        except OSError as e:
            if e.errno not in ok:
                fail('%s: %s' % (name, e))
            count(name + ' gone')
        finally:
            os.close(fd)

def lister():
    while time.monotonic() < end:
        names = os.listdir(d)
        if names[:1] != ['disk'] or 'p1' not in names or 'p2' not in names:
            fail('listing: %s' % names)
            return
        for n in names:
            try:
                os.stat(d + '/' + n)
            except OSError as e:
                if e.errno not in (errno.ENOENT, errno.EIO):
                    fail('stat %s: %s' % (n, e))
        count('list')

threads = [threading.Thread(target=t, args=a) for t, a in
           [(table, ()), (stable_reader, ()), (stable_reader, ()),
            (writer, (0,)), (writer, (1,)), (changing_reader, ('p3',)),
            (changing_reader, ('p4',)), (lister, ())]]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(' '.join('%s=%d' % kv for kv in sorted(counts.items())))
for f in failures[:10]:
    print('FAIL', f)
sys.exit(1 if failures else 0)
PY
  echo "# $output" >&3
  assert_success
  # the table's last state, as the files show it
  local files
  files=$(ls -U dir | tr '\n' ' ')
  [[ "$files" == "disk p1 p2 "* ]] || fail "dir holds $files"
  stop_export
  qemu-img check -q disk.qcow2
}

@test "a table write racing another file's fsync is still followed when its own fsync returns" {
  truncate -s 64M disk.img
  printf 'start=2048, size=8192, type=83\n' | sfdisk --quiet disk.img >/dev/null
  FG_MOUNT=dir start_fg -P dir disk.img
  # one thread fsyncs p1 without pause (each fsync may read the table);
  # the main one adds and removes p2's entry through disk, fsyncs, and
  # looks: a rescan run by p1's fsync between the write and its mark
  # used to take the mark, leaving the directory one change behind
  run "$PYTHON" - "$WORK/dir" 1000 <<'PY'
import os, struct, sys, threading
d, n = sys.argv[1], int(sys.argv[2])
stop = False
def flusher():
    fd = os.open(d + '/p1', os.O_RDWR)
    while not stop:
        os.fsync(fd)
    os.close(fd)
t = threading.Thread(target=flusher)
t.start()
fd = os.open(d + '/disk', os.O_RDWR)
mbr = bytearray(os.pread(fd, 512, 0))
bad = 0
for k in range(n):
    on = k % 2 == 0
    mbr[462:478] = struct.pack('<B3sB3sII', 0, bytes(3), 0x83 if on else 0,
                               bytes(3), 20480 if on else 0, 8192 if on else 0)
    os.pwrite(fd, bytes(mbr), 0)
    os.fsync(fd)
    if os.path.exists(d + '/p2') != on:
        bad += 1
        print('change', k, 'not followed: p2', 'missing' if on else 'still there')
stop = True
t.join()
print('%d of %d changes not followed' % (bad, n))
sys.exit(1 if bad else 0)
PY
  assert_success
  kill -INT "$FG_PID"
  wait "$FG_PID"
}
