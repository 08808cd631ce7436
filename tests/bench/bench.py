#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
# Benchmark for fuse-disk-export (issue 6): "make bench", never part of
# "make check".
#
# What it does, in one invocation:
#
#   * builds four images in a scratch directory (BENCH_DIR, else $TMPDIR,
#     else /var/tmp): raw; a fully allocated qcow2; a zstd-compressed qcow2
#     (qemu-img convert -c -o compression_type=zstd); and the top of a
#     backing chain (a qcow2 overlay over the fully allocated qcow2 with
#     every other MiB rewritten in the overlay).  The data is ~50%
#     compressible (fio buffer_compress_percentage=50) so that the zstd image
#     really holds compressed clusters;
#   * and issue 12's images, qemu-img convert of the same data (FOREIGN):
#     a monolithicSparse and a streamOptimized VMDK, a VHDX, a VDI and a
#     VHD.  These formats are served read-only, so only the read jobs run
#     on them (qemu-storage-daemon exports them read-only too); a format
#     the binary does not serve yet (its --list-formats says "refused")
#     shows "n/a (backend missing)" in our column instead of failing;
#   * runs the fio jobs of JOBS below through the raw view of each image,
#     served by each peer of PEERS: fuse-disk-export itself,
#     qemu-storage-daemon's FUSE export, and libqcow's qcowmount (read jobs
#     only, qcow images only);
#   * runs the same jobs on a plain raw file in the host page cache (direct=0,
#     no invalidation) as a ceiling;
#   * issue 13's fresh overlays: the same jobs on a new empty qcow2 overlay
#     for every run (allocating writes; see bench_fresh), and tar -x of a
#     large tree into ext4 on a fresh overlay's partition (bench_tar);
#   * issue 14's NBD group (BENCH_IMAGES name "nbd"): fio's nbd engine
#     against our nbdkit plugin (nbdkit-fde-plugin.so next to the --fde
#     binary) and qemu-nbd, each serving a copy of the fully allocated
#     qcow2 over a Unix socket (NBD_JOBS; see bench_nbd).  Skipped with a
#     note when the plugin, nbdkit or qemu-nbd is missing;
#   * times "fuse-disk-export -d" on 100 GiB and 1 TiB sparse qcow2 images
#     (command to live view) next to qemu-storage-daemon's export and
#     "qemu-img convert -O raw" of the same image;
#   * records each daemon's peak RSS (VmHWM just before it is stopped, after
#     the jobs);
#   * checks issue 6's targets (TARGETS below) and prints each as met or not.
#
# How to read the results:
#
#   * Each throughput cell is "IOPS / MiB/s", the median of BENCH_REPEAT runs
#     of BENCH_RUNTIME seconds.  "ours/best" is fuse-disk-export's IOPS over
#     the best peer's IOPS for the same job and image: > 1 means we are
#     faster.
#   * Compare numbers within one run only.  Machines (VMs especially) are
#     noisy; a ratio moving by 10-20% between runs means nothing.  Absolute
#     numbers depend on the CPU, the kernel's FUSE and the page cache: the
#     read jobs read images in the page cache, so they measure the FUSE and
#     format overhead, not the disk.  Every write-job run of the image
#     groups and the fresh overlays starts with the files it writes to or
#     copies from (the image, its backing files) written back and evicted
#     from the page cache, for every peer alike (see image_chain): what is
#     cached, and in what folio sizes, would otherwise decide the result
#     more than the view does.
#   * Each peer gets a fresh copy of each image, and all of them serve their
#     copies at once: the peers take turns run by run (ours, qsd, qcowmount,
#     ours, ...), each run after a sync, so a slow moment of the machine or
#     the writeback of an earlier run does not fall on one peer only.  raw
#     and the fully allocated qcow2 are served and measured together in the
#     same way, so that "qcow2 within 15% of raw" is as fair a comparison.
#     The read jobs run first, then the write jobs, in JOBS order, so
#     the write jobs see the writes of the previous write jobs (the same
#     sequence for every peer).  Writes to compressed clusters or to
#     clusters of the backing file allocate new clusters: that is part of
#     what those images cost.
#   * psync jobs use direct=0 (buffered; writes may be absorbed by the page
#     cache if the view allows it); the libaio jobs use direct=1.  fio
#     invalidates the view's page cache before each run.
#   * "n/a (error)" means the job failed (for example writes to a qcow2 image
#     while its write support is unfinished, or qcowmount refusing a zstd
#     image); the notes under the table give the reason.  "-" means the peer
#     does not do that (qcowmount: writes, raw images).
#
# Settings (environment, or the matching options; see --help):
#   BENCH_SIZE=1G   image size        BENCH_RUNTIME=5  seconds per job run
#   BENCH_REPEAT=3  runs per job      BENCH_BIG_SIZE=100G,1T  startup sizes
#   BENCH_DIR       scratch parent    BENCH_JOBS / BENCH_IMAGES  comma lists
#   BENCH_TAR_TREE=/usr/share  trees the tar job extracts
#   BENCH_TAR_DISK=4G          the tar job's disk
#   BENCH_IMAGES=nbd           the NBD group alone: no ceiling, no startup
#                              timing; BENCH_JOBS does not apply to it
#
# Needs root (FUSE mounts on files), fio, qemu-utils; qemu-system-common
# (qemu-storage-daemon) and libqcow-utils (qcowmount) are optional peers;
# nbdkit (and the plugin, built with nbdkit-plugin-dev) for the NBD group.
# Missing packages are reported and what needs them is skipped.  Mounts,
# daemons, NBD servers and their sockets are cleaned up on any exit, ^C
# included.

import argparse
import datetime
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

MiB = 1 << 20

# The fio jobs: name -> (is_write, fio options).  Read jobs run before write
# jobs (see main), each in this order.
JOBS = [
    ("seq-read-1M",        False, dict(rw="read",      bs="1M", ioengine="psync", direct=0)),
    ("rand-read-4k-qd1",   False, dict(rw="randread",  bs="4k", ioengine="psync", direct=0)),
    ("rand-read-4k-aio16x2", False, dict(rw="randread", bs="4k", ioengine="libaio", direct=1,
                                         iodepth=16, numjobs=2, group_reporting=1)),
    ("seq-write-1M",       True,  dict(rw="write",     bs="1M", ioengine="psync", direct=0)),
    ("rand-write-4k-qd1",  True,  dict(rw="randwrite", bs="4k", ioengine="psync", direct=0)),
    ("rand-write-4k-aio16x2", True, dict(rw="randwrite", bs="4k", ioengine="libaio", direct=1,
                                         iodepth=16, numjobs=2, group_reporting=1)),
]

# Options every job gets.  allow_file_create=0: never write a file where a
# view should be; fallocate=none: the views are fixed-size disks.
FIO_COMMON = dict(time_based=1, fallocate="none", allow_file_create=0,
                  norandommap=1, randrepeat=0)

# The images: name -> format (the recipe is in make_images).
IMAGES = [("raw", "raw"), ("qcow2-full", "qcow2"), ("qcow2-zstd", "qcow2"),
          ("qcow2-chain-top", "qcow2"),
          ("vmdk-sparse", "vmdk"), ("vmdk-stream", "vmdk"), ("vhdx", "vhdx"),
          ("vdi", "vdi"), ("vhd", "vpc"),
          ("fresh-overlay", "qcow2"), ("fresh-raw", "raw"),
          ("fresh-image", "qcow2"), ("tar", "qcow2"),
          ("nbd", "qcow2")]
# Of these, made per run by bench_fresh and bench_tar, not by make_images
# (nbd: bench_nbd serves copies of the fully allocated qcow2 over NBD).
PER_RUN = ("fresh-overlay", "fresh-raw", "fresh-image", "tar", "nbd")

# Issue 12's images: qemu-img convert of the raw image with these options.
# Each is one format served read-only: only the read jobs run on it, and
# qemu-storage-daemon exports it read-only too.
FOREIGN = {
    "vmdk-sparse": ["-O", "vmdk", "-o", "subformat=monolithicSparse"],
    "vmdk-stream": ["-O", "vmdk", "-o", "subformat=streamOptimized"],
    "vhdx": ["-O", "vhdx"],
    "vdi": ["-O", "vdi"],
    "vhd": ["-O", "vpc", "-o", "force_size=on"],   # the exact size, not CHS
}

# Commands -> the Debian package that ships them.
PACKAGES = [("fio", "fio"), ("qemu-img", "qemu-utils"), ("qemu-io", "qemu-utils"),
            ("qemu-nbd", "qemu-utils"), ("nbdkit", "nbdkit"),
            ("qemu-storage-daemon", "qemu-system-common"),
            ("qcowmount", "libqcow-utils"), ("fusermount3", "fuse3")]

NA_ERR = "n/a (error)"
NA_BACKEND = "n/a (backend missing)"
STARTUP_OURS = "fuse-disk-export -d (command to live view)"
NA = "-"


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def have(cmd):
    return shutil.which(cmd) is not None


def parse_size(s):
    s = s.strip().upper().rstrip("B").rstrip("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    if s and s[-1] in mult:
        return int(float(s[:-1]) * mult[s[-1]])
    return int(s)


def fmt_size(n):
    for unit, m in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= m and n % m == 0:
            return f"{n // m}{unit}"
    return str(n)


def run(cmd, **kw):
    """Run a command; raise with its stderr on failure."""
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    p = subprocess.run(cmd, text=True, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{os.path.basename(cmd[0])} failed ({p.returncode}): "
                           f"{(p.stderr or p.stdout or '').strip()[:300]}")
    return p


# ---------------------------------------------------------------- mounts

def mountpoints():
    pts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4]
            for esc, ch in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
                mp = mp.replace(esc, ch)
            pts.append(mp)
    return pts


def is_mounted(path):
    return os.path.abspath(path) in mountpoints()


def wait_for(pred, timeout, step=0.02):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


def pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def vmhwm_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def read_pid(path):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def unmount(path):
    for cmd in (["fusermount3", "-u", path], ["umount", path], ["umount", "-l", path]):
        if not is_mounted(path):
            return
        if have(cmd[0]):
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_for(lambda: not is_mounted(path), 2)


def stop_pid(pid, sig, timeout=30):
    """Signal a daemon we started and wait for it to go; escalate if stuck."""
    if pid is None or not pid_alive(pid):
        return
    for s in (sig, signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, s)
        except ProcessLookupError:
            return
        if wait_for(lambda: not pid_alive(pid), timeout if s == sig else 5, 0.05):
            return


# ---------------------------------------------------------------- peers
#
# A peer serves a raw view of an image.  start(image, fmt, workdir) returns
# the path fio should use; stop() stops it and returns its VmHWM in KiB.
# cleanup() is stop() that never raises, for the exit path.

# The write jobs of the image groups and of the fresh overlays start from
# files that are not in the host page cache.  What is cached decides what a
# write costs: a 4 KiB write into a file cached in large folios (a
# sequential read or copy leaves those) makes ext4's write_begin walk every
# block of the folio, a cost that has nothing to do with the view
# (measured: qcow2-full at 0.23 of raw with the files as earlier work left
# them, 0.91 with both evicted), and the kernel's DAMON reclaim evicts a
# backing file on some runs and not others.  So before each such run the
# files a view writes to or copies on write from are written back and
# evicted, for every peer alike; before a fresh overlay's read run, its
# base is read into the cache.  The NBD and tar groups are left as they
# are.

def image_chain(path):
    """The image and its backing files, top first."""
    info = json.loads(run(["qemu-img", "info", "-U", "--backing-chain",
                           "--output=json", path]).stdout)
    return [i["filename"] for i in (info if isinstance(info, list) else [info])]


def evict_fds(fds):
    for fd in fds:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def evict_paths(paths):
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            evict_fds([fd])
        finally:
            os.close(fd)


def warm_paths(paths):
    """Read files whole into the page cache (a read job's base)."""
    for p in paths:
        with open(p, "rb") as f:
            while f.read(1 << 20):
                pass


class Peer:
    name = "?"
    writes = True          # does it do writes at all?
    command = None         # the program it needs

    def __init__(self):
        self.pid = None
        self.mnt = None
        self.files = []    # fds of the image files it serves (see evict)

    def available(self):
        return have(self.command)

    def fresh(self):
        """A new instance like this one, to serve another view."""
        return type(self)()

    def supports(self, fmt):
        return True

    def stop(self):
        raise NotImplementedError

    def hold_files(self, image):
        """Keep the image and its backing files open, to evict them from
        the page cache later: the view's mount covers the image's path."""
        for f in image_chain(image):
            self.files.append(os.open(f, os.O_RDONLY))

    def release_files(self):
        for fd in self.files:
            os.close(fd)
        self.files = []

    def evict(self):
        """Write back and drop the page cache of the files it serves."""
        evict_fds(self.files)

    def cleanup(self):
        try:
            self.stop()
        except Exception as e:          # noqa: BLE001 -- exit path
            log(f"cleanup of {self.name}: {e}")
        if self.mnt:
            unmount(self.mnt)
        stop_pid(self.pid, signal.SIGKILL, 5)
        self.release_files()


class FuseDiskExport(Peer):
    name = "fuse-disk-export"

    def __init__(self, binary):
        super().__init__()
        self.command = binary

    def fresh(self):
        return FuseDiskExport(self.command)

    def start(self, image, fmt, workdir, writable=True):
        pidfile = os.path.join(workdir, "fde.pid")
        self.mnt = image
        self.pidfile = pidfile
        run([self.command, "-q", "-dp", pidfile, image], timeout=120)
        self.pid = read_pid(pidfile)
        if not is_mounted(image):
            raise RuntimeError("fuse-disk-export -d returned but the view is not mounted")
        return image

    def stop(self):
        if self.pid is None:
            return None
        hwm = vmhwm_kib(self.pid)
        stop_pid(self.pid, signal.SIGINT)
        wait_for(lambda: not os.path.exists(self.pidfile), 5)
        if is_mounted(self.mnt):
            unmount(self.mnt)
        self.pid = None
        self.mnt = None
        return hwm


class QemuStorageDaemon(Peer):
    name = "qemu-storage-daemon"
    command = "qemu-storage-daemon"

    def start(self, image, fmt, workdir, writable=True):
        # Absolute paths only: Debian 12's qsd leaves a dead mount for a
        # relative mountpoint.
        mnt = os.path.abspath(os.path.join(workdir, "qsd-view"))
        pidfile = os.path.abspath(os.path.join(workdir, "qsd.pid"))
        open(mnt, "w").close()
        self.mnt = mnt
        run([self.command,
             "--blockdev", f"driver=file,node-name=file,filename={os.path.abspath(image)}",
             "--blockdev", f"driver={fmt},node-name=fmt,file=file",
             "--export", f"type=fuse,id=exp,node-name=fmt,mountpoint={mnt},"
             f"writable={'on' if writable else 'off'}",
             "--daemonize", "--pidfile", pidfile], timeout=120)
        self.pid = read_pid(pidfile)
        if not wait_for(lambda: is_mounted(mnt), 10):
            raise RuntimeError("qemu-storage-daemon started but its export is not mounted")
        return mnt

    def stop(self):
        if self.pid is None:
            return None
        hwm = vmhwm_kib(self.pid)
        stop_pid(self.pid, signal.SIGTERM)
        if is_mounted(self.mnt):
            unmount(self.mnt)
        self.pid = None
        self.mnt = None
        return hwm


class QcowMount(Peer):
    name = "qcowmount"
    command = "qcowmount"
    writes = False

    def supports(self, fmt):
        return fmt == "qcow2"

    def start(self, image, fmt, workdir, writable=False):
        mnt = os.path.abspath(os.path.join(workdir, "qcowmount-dir"))
        os.makedirs(mnt, exist_ok=True)
        self.mnt = mnt
        errpath = os.path.join(workdir, "qcowmount.err")
        # -v keeps it in the foreground, so the pid is ours; its own session
        # so a ^C at the terminal reaches us, and we stop it in order.
        with open(errpath, "w") as err:
            self.proc = subprocess.Popen([self.command, "-v", image, mnt],
                                         stdout=subprocess.DEVNULL, stderr=err,
                                         start_new_session=True)
        self.pid = self.proc.pid
        ok = wait_for(lambda: is_mounted(mnt) or self.proc.poll() is not None, 10)
        if not ok or not is_mounted(mnt):
            with open(errpath) as f:
                lines = [l.strip() for l in f if "unsupported" in l or "unable" in l]
            msg = lines[0] if lines else ""
            self.stop()
            raise RuntimeError(f"qcowmount failed: {msg[:200] or 'not mounted'}")
        # One file per layer of the chain (qcow1 = bottom); the top is the disk.
        files = sorted(os.listdir(mnt), key=lambda n: int(n[4:]) if n[4:].isdigit() else 0)
        if not files:
            raise RuntimeError("qcowmount mounted an empty directory")
        return os.path.join(mnt, files[-1])

    def stop(self):
        if self.pid is None:
            return None
        hwm = vmhwm_kib(self.pid)
        unmount(self.mnt)
        stop_pid(self.pid, signal.SIGTERM, 10)
        try:
            self.proc.wait(5)
        except Exception:               # noqa: BLE001
            pass
        self.pid = None
        self.mnt = None
        return hwm


# ---------------------------------------------------------------- fio

def fio_run(job, path, size, runtime, extra=None):
    """One fio run; returns (iops, bytes/s) or raises with the reason."""
    _, opts = job[1], dict(job[2])
    opts.update(FIO_COMMON)
    opts.update(extra or {})
    opts.update(name=job[0], filename=path, size=size, runtime=runtime)
    cmd = ["fio", "--output-format=json"] + [f"--{k}={v}" for k, v in opts.items()]
    return fio_parse(cmd, "write" if "write" in opts["rw"] else "read", runtime + 120)


def fio_parse(cmd, side, timeout):
    """Run fio (cmd, JSON output); (iops, bytes/s) summed over its jobs for
    side ("read" or "write"), or raise with the reason."""
    try:
        p = subprocess.run(cmd, text=True, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError("fio timed out")
    out = p.stdout
    data = None
    if "{" in out:
        try:
            data = json.loads(out[out.index("{"):])
        except ValueError:
            data = None
    errs = [j.get("error", 0) for j in (data or {}).get("jobs", [])]
    if p.returncode != 0 or data is None or any(errs):
        # fio prints "fio: pid=N, err=30/file:..., func=open(F), error=..."
        # before the JSON (or on stderr).
        text = (out[:out.index("{")] if data is not None else out) + "\n" + p.stderr
        lines = [l.strip() for l in text.splitlines() if l.strip()]
        found = [l for l in lines if "err=" in l] or lines
        func = re.search(r"func=(\w+)", found[0]) if found else None
        if any(errs):                   # fio truncates long messages: rebuild
            reason = os.strerror(max(errs)) + (f" ({func.group(1)})" if func else "")
        elif found:
            reason = re.sub(r"^fio: pid=\d+, ", "", found[0])
        else:
            reason = f"fio exit {p.returncode}"
        raise RuntimeError(reason[:200])
    iops = sum(j[side]["iops"] for j in data["jobs"])
    bw = sum(j[side]["bw_bytes"] for j in data["jobs"])
    return iops, bw


def measure(job, path, cfg, extra=None):
    """Median over cfg.repeat runs: (iops, bytes/s); raises on any failure."""
    res = []
    for _ in range(cfg.repeat):
        if not os.path.exists(path):
            raise RuntimeError(f"{path} vanished")
        res.append(fio_run(job, path, cfg.size, cfg.runtime, extra))
    return (statistics.median(r[0] for r in res), statistics.median(r[1] for r in res))


# ---------------------------------------------------------------- images

def make_images(cfg, d, wanted):
    """Build the pristine images; return {name: (path, fmt)} and notes."""
    imgs, notes = {}, []
    src = os.path.join(d, "raw.img")
    log(f"writing {fmt_size(cfg.size)} of ~50% compressible data")
    run(["fio", "--name=fill", f"--filename={src}", "--rw=write", "--bs=1M",
         f"--size={cfg.size}", "--ioengine=psync", "--buffer_compress_percentage=50",
         "--buffer_compress_chunk=4k", "--refill_buffers", "--output-format=terse"])
    imgs["raw"] = (src, "raw")
    if not (have("qemu-img") and have("qemu-io")):
        notes.append("qcow2 images skipped: qemu-img/qemu-io missing (qemu-utils)")
        return imgs, notes
    full = os.path.join(d, "full.qcow2")
    if any(n in ("qcow2-full", "qcow2-chain-top", "fresh-overlay", "nbd") for n in wanted):
        log("converting to a fully allocated qcow2")
        run(["qemu-img", "convert", "-S", "0", "-f", "raw", "-O", "qcow2", src, full])
        imgs["qcow2-full"] = (full, "qcow2")
    if "qcow2-zstd" in wanted:
        log("converting to a zstd-compressed qcow2")
        z = os.path.join(d, "zstd.qcow2")
        run(["qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2",
             "-o", "compression_type=zstd", src, z])
        imgs["qcow2-zstd"] = (z, "qcow2")
    if "qcow2-chain-top" in wanted:
        log("building a backing chain (every other MiB rewritten in the overlay)")
        top = os.path.join(d, "top.qcow2")
        # A relative backing path: libqcow mangles absolute ones.  Working
        # copies elsewhere get an absolute one (working_copy).
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", os.path.basename(full),
             "-F", "qcow2", top])
        cmds = "".join(f"write -P 0x5a {off} 1M\n" for off in range(0, cfg.size - MiB + 1, 2 * MiB))
        run(["qemu-io", "-f", "qcow2", top], input=cmds)
        imgs["qcow2-chain-top"] = (top, "qcow2")
    fmts = dict(IMAGES)
    for name, opts in FOREIGN.items():
        if name in wanted:
            log(f"converting to {name}")
            out = os.path.join(d, f"{name}.img")
            run(["qemu-img", "convert", "-f", "raw"] + opts + [src, out])
            imgs[name] = (out, fmts[name])
    os.sync()                           # see working_copy
    return imgs, notes


def served_formats(fde):
    """{format: "read-write" | "read-only" | "refused"} from the table of
    formats (fuse-disk-export --list-formats); {} if it cannot say."""
    p = subprocess.run([fde, "--list-formats"], text=True,
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    if p.returncode != 0:
        return {}
    return {f[0]: f[1] for f in (l.split() for l in p.stdout.splitlines()) if len(f) >= 2}


def working_copy(src, dst, fmt="raw"):
    """A fresh copy of an image; a chain top's relative backing path is made
    absolute so that the copy still finds the pristine base."""
    run(["cp", "--reflink=auto", "--sparse=auto", src, dst])
    if fmt == "qcow2":
        info = json.loads(run(["qemu-img", "info", "--output=json", "-U", src]).stdout)
        backing = info.get("backing-filename")
        if backing and not os.path.isabs(backing):
            base = os.path.join(os.path.dirname(os.path.abspath(src)), backing)
            run(["qemu-img", "rebase", "-u", "-b", base,
                 "-F", info.get("backing-filename-format", "qcow2"), dst])
    # Written back now, not by the kernel's flusher half a minute into the
    # jobs, when it would slow whichever peer is running then.
    fd = os.open(dst, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return dst


# ---------------------------------------------------------------- startup

def bench_startup(cfg, d, fde, results, notes):
    """Time command -> live raw view of big sparse qcow2 images, next to
    qemu-img convert of the same image; {(label, size): seconds or None}."""
    times = {}

    def timed(label, size, start, stop):
        ts = []
        for _ in range(cfg.repeat):
            t0 = time.monotonic()
            try:
                start()
            except Exception as e:      # noqa: BLE001
                notes.append(f"startup, {label}, {fmt_size(size)}: {e}")
                stop()
                times[(label, size)] = None
                return
            ts.append(time.monotonic() - t0)
            stop()
        times[(label, size)] = statistics.median(ts)

    for size in cfg.big_sizes:
        big = os.path.join(d, "big.qcow2")
        run(["qemu-img", "create", "-q", "-f", "qcow2", big, str(size)])
        p = FuseDiskExport(fde)
        results["active"].append(p)
        timed(STARTUP_OURS, size, lambda: p.start(big, "qcow2", d), p.stop)
        if have("qemu-storage-daemon"):
            q = QemuStorageDaemon()
            results["active"].append(q)
            timed("qemu-storage-daemon FUSE export (command to mounted)", size,
                  lambda: q.start(big, "qcow2", d), q.stop)
        out = os.path.join(d, "big.raw")
        timed("qemu-img convert -O raw", size,
              lambda: run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", big, out]),
              lambda: os.path.exists(out) and os.unlink(out))
        os.unlink(big)
    return times


# ---------------------------------------------------------------- fresh overlays
#
# Issue 13: what users write first is a fresh overlay (qemu-img create -b),
# where every write allocates.  Each run of each job gets a new empty
# qcow2 overlay over the pristine fully allocated qcow2 (the base), served
# by us and by qemu-storage-daemon, next to our export of a new sparse raw
# file of the same size (the in-place ceiling: FRESH_RAW).  The write jobs
# are sized so that every write allocates: seq-write-1M writes the disk
# once; the 4 KiB random writes replay (fio read_iolog) a shuffled list of
# every cluster of the disk, one 4 KiB write at a random 4 KiB offset of
# each, split in two halves for the two jobs of the aio16x2 job.  The read
# jobs read through the empty overlay from the base.  The write jobs also
# run on a new qcow2 image with no backing file (FRESH_NEW), ours next to
# qemu-storage-daemon's: where the disk shows zeros, copy-on-write has
# nothing to copy (mkfs or an install into a new image).

FRESH = "fresh-overlay"
FRESH_RAW = "fresh-raw"
FRESH_NEW = "fresh-image"
CLUSTER = 64 << 10                      # qemu-img create's default


def fresh_image(kind, base, path, size):
    """A new empty image at path: an overlay over base, a qcow2 image of
    size with no backing file, or sparse raw."""
    if os.path.exists(path):
        os.unlink(path)
    if kind == FRESH:
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
             f"cluster_size={CLUSTER}", "-b", os.path.abspath(base), "-F", "qcow2", path])
    elif kind == FRESH_NEW:
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
             f"cluster_size={CLUSTER}", path, str(size)])
    else:
        with open(path, "wb") as f:
            f.truncate(size)


def cluster_iologs(view, size, parts, seed):
    """fio iolog texts (version 2) for `parts` jobs: every cluster of the
    disk once, in a shuffled order, a 4 KiB write at a random 4 KiB
    offset inside it; the list split evenly between the jobs."""
    rnd = random.Random(seed)
    offs = [c + rnd.randrange(CLUSTER // 4096) * 4096 for c in range(0, size, CLUSTER)]
    rnd.shuffle(offs)
    logs = []
    for i in range(parts):
        lines = ["fio version 2 iolog", f"{view} add", f"{view} open"]
        lines += [f"{view} write {o} 4096" for o in offs[i::parts]]
        lines.append(f"{view} close")
        logs.append("\n".join(lines) + "\n")
    return logs


def fresh_fio(job, view, cfg, wdir, seed):
    """One run of job on a fresh view: (iops, bytes/s)."""
    name, is_write, opts = job
    if not is_write:
        return fio_run(job, view, cfg.size, cfg.runtime)
    if opts["rw"] == "write":           # one pass: every 1 MiB allocates
        return fio_run(job, view, cfg.size, cfg.runtime * 20,
                       extra=dict(time_based=0))
    parts = opts.get("numjobs", 1)
    jobfile = [f"[global]\nioengine={opts['ioengine']}\ndirect={opts['direct']}\n"
               f"iodepth={opts.get('iodepth', 1)}\nreplay_no_stall=1\n"
               "group_reporting=1\n"]
    for i, text in enumerate(cluster_iologs(view, cfg.size, parts, seed)):
        log_path = os.path.join(wdir, f"{name}-{i}.iolog")
        with open(log_path, "w") as f:
            f.write(text)
        jobfile.append(f"[{name}-{i}]\nread_iolog={log_path}\n")
    path = os.path.join(wdir, f"{name}.fio")
    with open(path, "w") as f:
        f.write("".join(jobfile))
    return fio_parse(["fio", "--output-format=json", path], "write",
                     cfg.runtime * 20 + 120)


def bench_fresh(peers, cfg, base, work, res, notes):
    """Every job of cfg on a fresh overlay (ours, qemu-storage-daemon) and
    a fresh sparse raw file (ours), the write jobs on a new qcow2 image
    (ours, qemu-storage-daemon), each run on new images, the views taking
    turns run by run; medians into res[(peer, image, job)]."""
    qcow2_peers = [p for p in peers if p.writes and p.supports("qcow2")]
    all_views = [(FRESH, p) for p in qcow2_peers] + [(FRESH_RAW, peers[0])]
    all_views += [(FRESH_NEW, p) for p in qcow2_peers]
    wdir = os.path.join(work, "fresh")
    os.makedirs(wdir, exist_ok=True)
    for job in ordered_jobs(cfg):
        log(f"fresh overlay: {job[0]}")
        views = [(img, p) for img, p in all_views if job[1] or img != FRESH_NEW]
        runs = {(img, p.name): [] for img, p in views}
        for rep in range(cfg.repeat):
            for img, proto in views:
                key = (img, proto.name)
                if runs[key] is None:
                    continue
                peer = proto.fresh()
                fmt = "raw" if img == FRESH_RAW else "qcow2"
                path = os.path.join(wdir, f"{img}.{fmt}")
                try:
                    fresh_image(img, base, path, cfg.size)
                    os.sync()
                    if job[1]:
                        evict_paths([base])
                    else:
                        warm_paths([base])
                    view = peer.start(path, fmt, wdir)
                    runs[key].append(fresh_fio(job, view, cfg, wdir, rep))
                except Exception as e:  # noqa: BLE001
                    runs[key] = None
                    notes.append(f"{proto.name} on {img}, {job[0]}: {e}")
                finally:
                    peer.cleanup()
        for (img, name), rs in runs.items():
            res[(name, img, job[0])] = NA_ERR if rs is None else (
                statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs))
    shutil.rmtree(wdir, ignore_errors=True)


# ---------------------------------------------------------------- tar -x
#
# Issue 13's whole job: tar -x of a large tree (BENCH_TAR_TREE, made into
# a tarball once) into ext4 on partition 1 of a fresh overlay over a disk
# holding an empty ext4 (BENCH_TAR_DISK, GPT), then sync; timed as a
# whole.  The partition is mounted through a loop device at its offset for
# every contender alike: our view of the overlay, qemu-storage-daemon's,
# and (the baseline) a copy of the raw disk itself.  On a FUSE view the
# loop device does direct I/O (losetup --direct-io=on, as the README
# advises): buffered, it would keep a second copy of every block in the
# view's page cache and send the view one synchronous write at a time.
# The raw file's loop device stays buffered, as losetup makes it: the
# baseline is what a user gets without an image format in the way.

TAR_PART_START = 1 << 20
TAR_OURS, TAR_QSD, TAR_LOOP = ("fuse-disk-export", "qemu-storage-daemon",
                               "ext4 on a raw file through a loop device")


def make_tar_inputs(cfg, work):
    """(tarball, raw disk, qcow2 base of the same disk)."""
    tarball = os.path.join(work, "tree.tar")
    log(f"tar job: a tarball of {', '.join(cfg.tar_tree)}")
    run(["tar", "-cf", tarball, "--one-file-system"] + cfg.tar_tree,
        stderr=subprocess.DEVNULL)
    raw = os.path.join(work, "tar-disk.raw")
    with open(raw, "wb") as f:
        f.truncate(cfg.tar_disk)
    run(["sfdisk", "--quiet", raw], input="label: gpt\nstart=2048, type=linux\n")
    dev = run(["losetup", "--find", "--show", f"--offset={TAR_PART_START}",
               f"--sizelimit={tar_part_size(cfg)}", raw]).stdout.strip()
    try:
        run(["mkfs.ext4", "-q", "-F", dev])
    finally:
        run(["losetup", "-d", dev])
    base = os.path.join(work, "tar-base.qcow2")
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, base])
    os.sync()
    return tarball, raw, base


def tar_part_size(cfg):
    # GPT: the partition ends 34 sectors before the disk (backup table)
    return (cfg.tar_disk - TAR_PART_START - 34 * 512) // 4096 * 4096


def tar_once(cfg, tarball, disk, wdir, direct_io):
    """Mount partition 1 of disk (a view or a raw file) through a loop
    device (direct I/O if direct_io), time tar -x of tarball into it and
    a sync; unmount."""
    mnt = os.path.join(wdir, "mnt")
    os.makedirs(mnt, exist_ok=True)
    dev = run(["losetup", "--find", "--show", f"--offset={TAR_PART_START}",
               f"--sizelimit={tar_part_size(cfg)}",
               f"--direct-io={'on' if direct_io else 'off'}", disk]).stdout.strip()
    try:
        with open(f"/sys/block/{os.path.basename(dev)}/loop/dio") as f:
            if (f.read().strip() == "1") != direct_io:
                raise RuntimeError(f"{dev}: direct I/O is not {'on' if direct_io else 'off'}")
        run(["mount", "-t", "ext4", dev, mnt])
        try:
            os.sync()
            t0 = time.monotonic()
            run(["tar", "-xf", tarball, "-C", mnt])
            os.sync()
            return time.monotonic() - t0
        finally:
            run(["umount", mnt])
    finally:
        run(["losetup", "-d", dev])


def bench_tar(peers, cfg, work, notes):
    """{contender: median seconds or None} for the tar job."""
    for cmd in ("tar", "sfdisk", "mkfs.ext4", "losetup", "mount"):
        if not have(cmd):
            notes.append(f"tar job skipped: {cmd} missing")
            return {}
    wdir = os.path.join(work, "tar")
    os.makedirs(wdir, exist_ok=True)
    try:
        tarball, raw, base = make_tar_inputs(cfg, wdir)
    except Exception as e:              # noqa: BLE001
        notes.append(f"tar job skipped: {e}")
        return {}
    contenders = [(p.name, p) for p in peers if p.writes and p.supports("qcow2")]
    contenders.append((TAR_LOOP, None))
    times = {name: [] for name, _ in contenders}
    for _ in range(cfg.repeat):
        for name, proto in contenders:
            if times[name] is None:
                continue
            peer = proto.fresh() if proto else None
            disk = os.path.join(wdir, "disk.qcow2" if proto else "disk.raw")
            try:
                if proto:
                    fresh_image(FRESH, base, disk, 0)
                    view = peer.start(disk, "qcow2", wdir)
                else:
                    run(["cp", "--sparse=always", raw, disk])
                    view = disk
                times[name].append(tar_once(cfg, tarball, view, wdir,
                                            direct_io=proto is not None))
            except Exception as e:      # noqa: BLE001
                times[name] = None
                notes.append(f"tar job, {name}: {e}")
            finally:
                if peer:
                    peer.cleanup()
                if os.path.exists(disk):
                    os.unlink(disk)
    shutil.rmtree(wdir, ignore_errors=True)
    return {n: None if t is None else statistics.median(t) for n, t in times.items()}


# ---------------------------------------------------------------- NBD
#
# Issue 14: the nbdkit plugin (nbdkit-fde-plugin.so, found next to the
# fuse-disk-export binary) against qemu-nbd, both serving a copy of the
# fully allocated qcow2 over a Unix socket, measured with fio's nbd engine
# (libnbd; one connection per fio job).  Both servers are live at once and
# take turns run by run, like the views of bench_group.  qemu-nbd runs with
# its defaults (cache=writeback, aio=threads), -f qcow2, -t (persistent,
# so that it outlives fio's connections) and --shared=NBD_CONNS (it
# accepts one client at a time otherwise); nbdkit with its defaults
# (the plugin's parallel thread model, 16 threads per connection).

NBD = "nbd"                             # its name in BENCH_IMAGES
NBD_PLUGIN = "nbdkit-fde-plugin.so"
NBD_CONNS = 2                           # numjobs of the depth-16 jobs
# name -> (is_write, fio options); reads first, as in JOBS.
NBD_JOBS = [
    ("seq-read-1M",           False, dict(rw="read",      bs="1M", iodepth=1)),
    (f"rand-read-4k-qd16x{NBD_CONNS}",  False, dict(rw="randread",  bs="4k", iodepth=16,
                                               numjobs=NBD_CONNS, group_reporting=1)),
    ("seq-write-1M",          True,  dict(rw="write",     bs="1M", iodepth=1)),
    (f"rand-write-4k-qd16x{NBD_CONNS}", True,  dict(rw="randwrite", bs="4k", iodepth=16,
                                               numjobs=NBD_CONNS, group_reporting=1)),
]
NBD_OURS, NBD_QEMU = "nbdkit + fde plugin", "qemu-nbd"


class NbdServer(Peer):
    """An NBD server on a Unix socket: start(image, sockdir, workdir)
    returns the NBD URI; stop() stops it (TERM: both flush), removes its
    socket and pidfile, and returns its VmHWM in KiB."""
    tag = "?"

    def start(self, image, sockdir, wdir):
        self.sock = os.path.join(sockdir, f"{self.tag}.sock")
        self.pidfile = os.path.join(wdir, f"{self.tag}.pid")
        for f in (self.sock, self.pidfile):
            if os.path.exists(f):
                os.unlink(f)
        run(self.argv(os.path.abspath(image)), timeout=120)
        # nbdkit's child writes its pidfile after its parent has returned
        if not wait_for(lambda: read_pid(self.pidfile) is not None
                        and os.path.exists(self.sock), 10):
            self.pid = read_pid(self.pidfile)
            raise RuntimeError(f"{self.command} started but has no socket or pidfile")
        self.pid = read_pid(self.pidfile)
        if not pid_alive(self.pid):
            raise RuntimeError(f"{self.command} exited after its start")
        return f"nbd+unix:///?socket={self.sock}"

    def alive(self):
        return self.pid is not None and pid_alive(self.pid)

    def stop(self):
        hwm = None
        if self.pid is not None:
            hwm = vmhwm_kib(self.pid)
            stop_pid(self.pid, signal.SIGTERM, 60)
            self.pid = None
        # nbdkit leaves both behind; qemu-nbd its pidfile
        for f in (getattr(self, "sock", None), getattr(self, "pidfile", None)):
            if f and os.path.lexists(f):
                os.unlink(f)
        return hwm


class NbdkitFde(NbdServer):
    name = NBD_OURS
    command = "nbdkit"
    tag = "nbdkit"

    def __init__(self, plugin):
        super().__init__()
        self.plugin = plugin

    def fresh(self):
        return NbdkitFde(self.plugin)

    def available(self):
        return have(self.command) and os.path.exists(self.plugin)

    def argv(self, image):
        return ["nbdkit", "-U", self.sock, "-P", self.pidfile, self.plugin,
                f"file={image}"]


class QemuNbd(NbdServer):
    name = NBD_QEMU
    command = "qemu-nbd"
    tag = "qemu-nbd"

    def argv(self, image):
        return ["qemu-nbd", "-f", "qcow2", "-k", self.sock, f"--shared={NBD_CONNS}",
                "-t", "--fork", f"--pid-file={self.pidfile}", image]


def nbd_fio(job, uri, cfg):
    """One fio run of an NBD job: (iops, bytes/s) or raise with the reason."""
    opts = dict(job[2])
    opts.update(FIO_COMMON)
    opts.update(name=job[0], ioengine="nbd", uri=uri, size=cfg.size,
                runtime=cfg.runtime)
    cmd = ["fio", "--output-format=json"] + [f"--{k}={v}" for k, v in opts.items()]
    return fio_parse(cmd, "write" if job[1] else "read", cfg.runtime + 120)


def nbd_missing(cfg):
    """Why the NBD group cannot run here, or None."""
    plugin = os.path.join(os.path.dirname(cfg.fde), NBD_PLUGIN)
    if not os.path.exists(plugin):
        return f"{plugin} not built (needs nbdkit-plugin-dev at configure time)"
    for cmd, pkg in (("nbdkit", "nbdkit"), ("qemu-nbd", "qemu-utils"),
                     ("qemu-img", "qemu-utils")):
        if not have(cmd):
            return f"{cmd} not installed ({pkg})"
    return None


def bench_nbd(cfg, full, work, state, res, rss, notes):
    """The NBD jobs on our plugin and qemu-nbd, each serving its own copy
    of the fully allocated qcow2 `full`; medians into res[(server, job)],
    peak RSS into rss[server]."""
    wdir = os.path.join(work, "nbd")
    os.makedirs(wdir)
    # sun_path holds 108 bytes: a long BENCH_DIR gets its sockets elsewhere
    sockdir = wdir if len(wdir) < 80 else tempfile.mkdtemp(prefix="fde-nbd.", dir="/tmp")
    servers = [NbdkitFde(os.path.join(os.path.dirname(cfg.fde), NBD_PLUGIN)), QemuNbd()]
    live = []
    try:
        for s in servers:
            state["active"].append(s)
            log(f"nbd: starting {s.name}")
            try:
                copy = working_copy(full, os.path.join(wdir, f"{s.tag}.qcow2"), "qcow2")
                live.append((s, s.start(copy, sockdir, wdir)))
            except Exception as e:      # noqa: BLE001
                notes.append(f"NBD, {s.name}: could not start: {e}")
                for j in NBD_JOBS:
                    res[(s.name, j[0])] = NA_ERR
                s.cleanup()
        for job in NBD_JOBS:
            log(f"nbd: {job[0]}")
            runs = {s.name: [] for s, _ in live}
            for _ in range(cfg.repeat):
                for s, uri in live:
                    if runs[s.name] is None:
                        continue
                    os.sync()
                    try:
                        if not s.alive():
                            raise RuntimeError(f"{s.command} is no longer running")
                        runs[s.name].append(nbd_fio(job, uri, cfg))
                    except Exception as e:  # noqa: BLE001
                        runs[s.name] = None
                        notes.append(f"NBD, {s.name}, {job[0]}: {e}")
            for name, rs in runs.items():
                res[(name, job[0])] = NA_ERR if rs is None else (
                    statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs))
    finally:
        for s in servers:
            try:
                hwm = s.stop()
            except Exception as e:      # noqa: BLE001
                log(f"stopping {s.name}: {e}")
                hwm = None
            if hwm is not None:
                rss[s.name] = hwm
            s.cleanup()
        if sockdir != wdir:
            shutil.rmtree(sockdir, ignore_errors=True)
        shutil.rmtree(wdir, ignore_errors=True)


def nbd_ratio(res, job):
    o, q = res.get((NBD_OURS, job)), res.get((NBD_QEMU, job))
    if isinstance(o, tuple) and isinstance(q, tuple) and q[0] > 0:
        return o[0] / q[0]
    return None


# ---------------------------------------------------------------- report

def cell(r):
    if r is None:
        return NA
    if isinstance(r, str):
        return r
    return f"{r[0]:,.0f} / {r[1] / MiB:,.1f}"


def report(cfg, res, ceiling, startup, rss, notes, peers, images, tar_times,
           nbd_res=None, nbd_rss=None):
    L = []
    L.append("# fuse-disk-export benchmark")
    L.append("")
    L.append(f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}, "
             f"{platform.node()}, Linux {platform.release()}, {os.cpu_count()} CPUs; "
             f"image size {fmt_size(cfg.size)}, {cfg.runtime} s per run, "
             f"median of {cfg.repeat}.  Cells: IOPS / MiB/s.  "
             "ours/best = fuse-disk-export IOPS / best peer IOPS (same run only; "
             "machines are noisy).")
    L.append("")
    names = [p.name for p in peers]
    if images:
        L.append("## Jobs through the raw view")
        L.append("")
        L.append("| image | job | " + " | ".join(names) + " | ours/best |")
        L.append("|---|---|" + "---:|" * len(names) + "---:|")
    for img in images:
        for job in ordered_jobs(cfg):
            if img == FRESH_NEW and not job[1]:
                continue                # write jobs only (bench_fresh)
            row = [res.get((p.name, img, job[0])) for p in peers]
            ours = row[0]
            best = [r[0] for r in row[1:] if isinstance(r, tuple)]
            if not isinstance(ours, tuple):
                ratio = "n/a"
            elif not best:
                ratio = NA
            else:
                ratio = f"{ours[0] / max(best):.2f}"
            L.append(f"| {img} | {job[0]} | " + " | ".join(cell(r) for r in row) + f" | {ratio} |")
    if images:
        L.append("")
    if nbd_res:
        L.append(f"## NBD: fio's nbd engine over a Unix socket, fully allocated qcow2")
        L.append("")
        L.append(f"(one connection per fio job; qemu-nbd -f qcow2 -t --shared={NBD_CONNS}, "
                 "default cache and aio; ours/qemu-nbd = IOPS ratio, same run)")
        L.append("")
        L.append(f"| job | {NBD_OURS} | {NBD_QEMU} | ours/qemu-nbd |")
        L.append("|---|---:|---:|---:|")
        for job, _, _ in NBD_JOBS:
            r = nbd_ratio(nbd_res, job)
            L.append(f"| {job} | {cell(nbd_res.get((NBD_OURS, job)))} | "
                     f"{cell(nbd_res.get((NBD_QEMU, job)))} | "
                     f"{'n/a' if r is None else f'{r:.2f}'} |")
        if nbd_rss:
            L.append("")
            L.append("Peak RSS (VmHWM after the jobs): " + ", ".join(
                f"{n} {v / 1024:.1f} MiB" for n, v in nbd_rss.items()) + ".")
        L.append("")
    if tar_times:
        L.append(f"## tar -x of {', '.join(cfg.tar_tree)} into ext4 on a fresh overlay, then sync")
        L.append("")
        L.append(f"({fmt_size(cfg.tar_disk)} disk, partition 1 mounted through a loop "
                 f"device, with direct I/O on a FUSE view; median of {cfg.repeat} runs)")
        L.append("")
        L.append("| contender | seconds |")
        L.append("|---|---:|")
        for name, t in tar_times.items():
            L.append(f"| {name} | {NA_ERR if t is None else f'{t:.2f}'} |")
        L.append("")
    rows = target_rows(res, startup, peers, images, [j[0] for j in ordered_jobs(cfg)],
                       tar_times, nbd_res)
    if rows:
        L.append("## Targets (issues 6, 12, 13 and 14)")
        L.append("")
        L.append("| target | measured | met |")
        L.append("|---|---|---|")
        for target, measured, met in rows:
            shown = "-" if met is None else "yes" if met else "**no**"
            L.append(f"| {target} | {measured} | {shown} |")
        L.append("")
    if ceiling:
        L.append("## Ceiling: the same jobs on a plain raw file in the page cache")
        L.append("")
        L.append("(direct=0 for every job, so the libaio jobs stay in the page cache too)")
        L.append("")
        L.append("| job | page cache |")
        L.append("|---|---:|")
        for job in ordered_jobs(cfg):
            L.append(f"| {job[0]} | {cell(ceiling.get(job[0]))} |")
        L.append("")
    if startup:
        sizes = list(dict.fromkeys(size for _, size in startup))
        labels = list(dict.fromkeys(label for label, _ in startup))
        L.append("## Startup: big sparse qcow2 images (qemu-img create)")
        L.append("")
        L.append("| seconds | " + " | ".join(fmt_size(z) for z in sizes) + " |")
        L.append("|---|" + "---:|" * len(sizes))
        for label in labels:
            vals = [startup.get((label, z), NA) for z in sizes]
            L.append(f"| {label} | " + " | ".join(
                NA_ERR if t is None else t if isinstance(t, str) else f"{t:.3f}"
                for t in vals) + " |")
        L.append("")
    if rss and images:
        L.append("## Peak RSS (VmHWM after the jobs, MiB)")
        L.append("")
        L.append("| image | " + " | ".join(names) + " |")
        L.append("|---|" + "---:|" * len(names))
        for img in images:
            vals = []
            for p in peers:
                v = rss.get((p.name, img))
                vals.append(NA if v is None else f"{v / 1024:.1f}")
            L.append(f"| {img} | " + " | ".join(vals) + " |")
        L.append("")
    if notes:
        L.append("## Notes")
        L.append("")
        seen = set()
        for n in notes:
            if n not in seen:
                seen.add(n)
                L.append(f"- {n}")
        L.append("")
    return "\n".join(L)


# Issue 6's targets: job -> least ratio of ours to the best peer on the
# fully allocated qcow2; every other job and image must reach FLOOR.
TARGETS = {"seq-read-1M": 1.5, "rand-read-4k-aio16x2": 1.5,
           "rand-write-4k-aio16x2": 1.5, "rand-write-4k-qd1": 1.5,
           "rand-read-4k-qd1": 1.0, "seq-write-1M": 1.0}
TARGET_IMAGE = "qcow2-full"
FLOOR = 0.9
# Issue 12's targets on each of its images: job -> least ratio.
FOREIGN_TARGETS = {"seq-read-1M": 1.5, "rand-read-4k-qd1": 1.0,
                   "rand-read-4k-aio16x2": 1.0}
QCOW2_VS_RAW = 0.85                     # "within 15% of the raw export"
# Issue 13's on the fresh overlay: job -> least ratio; the tar job's.
FRESH_TARGETS = {"seq-write-1M": 1.5, "rand-write-4k-qd1": 1.5,
                 "rand-write-4k-aio16x2": 1.5}
TAR_VS_QSD = 1.2
# Issue 14's, NBD: job -> least ratio of our plugin to qemu-nbd.
NBD_TARGETS = {"seq-read-1M": 1.5, f"rand-read-4k-qd16x{NBD_CONNS}": 1.5,
               "seq-write-1M": 1.0, f"rand-write-4k-qd16x{NBD_CONNS}": 1.0}
STARTUP_LIMIT = (1 << 40, 0.050)        # -d on a 1 TiB sparse qcow2


def ours_vs_best(res, peers, img, job):
    """Ours / best peer IOPS, or None when either side has no number."""
    ours = res.get((peers[0].name, img, job))
    best = [r[0] for r in (res.get((p.name, img, job)) for p in peers[1:])
            if isinstance(r, tuple)]
    if not isinstance(ours, tuple) or not best:
        return None
    return ours[0] / max(best)


def target_rows(res, startup, peers, images, jobs, tar_times=None, nbd_res=None):
    """[(target, measured, met)] for the targets this run could measure."""
    rows = []
    for job, _, _ in NBD_JOBS:
        want = NBD_TARGETS.get(job)
        r = nbd_ratio(nbd_res or {}, job)
        if want is not None and r is not None:
            rows.append((f"NBD {job} >= {want}x qemu-nbd", f"{r:.2f}x", r >= want))
    for job in jobs:
        want = FRESH_TARGETS.get(job)
        r = ours_vs_best(res, peers, FRESH, job)
        if want is not None and r is not None:
            rows.append((f"{job} on {FRESH} >= {want}x the best peer",
                         f"{r:.2f}x", r >= want))
    q = res.get((peers[0].name, FRESH, "seq-write-1M"))
    r = res.get((peers[0].name, FRESH_RAW, "seq-write-1M"))
    if isinstance(q, tuple) and isinstance(r, tuple) and r[0] > 0:
        rows.append((f"seq-write-1M on {FRESH} within {100 - QCOW2_VS_RAW * 100:.0f}% "
                     f"of ours on {FRESH_RAW}", f"{q[0] / r[0]:.2f} of raw",
                     q[0] / r[0] >= QCOW2_VS_RAW))
    t = (tar_times or {}).get(TAR_OURS)
    if isinstance(t, float):
        for other, want, what in ((TAR_QSD, TAR_VS_QSD, "qemu-storage-daemon"),
                                  (TAR_LOOP, QCOW2_VS_RAW, "the loop device")):
            o = tar_times.get(other)
            if isinstance(o, float):
                rows.append((f"tar job: {what}'s time / ours >= {want}",
                             f"{o / t:.2f}", o / t >= want))
        q, b = tar_times.get(TAR_QSD), tar_times.get(TAR_LOOP)
        if isinstance(q, float) and isinstance(b, float):
            # the loop device on the raw file does the same ext4 work with
            # no FUSE server at all: no view can beat qsd by more than this
            rows.append((f"(ceiling) tar job: qemu-storage-daemon's time / "
                         f"the loop device's", f"{q / b:.2f}", None))
    for job in jobs:
        want = TARGETS.get(job)
        r = ours_vs_best(res, peers, TARGET_IMAGE, job)
        if want is not None and r is not None:
            rows.append((f"{job} on {TARGET_IMAGE} >= {want}x the best peer",
                         f"{r:.2f}x", r >= want))
    for img in images:
        for job in jobs:
            want = FOREIGN_TARGETS.get(job) if img in FOREIGN else None
            r = ours_vs_best(res, peers, img, job)
            if want is not None and r is not None:
                rows.append((f"{job} on {img} >= {want}x the best peer",
                             f"{r:.2f}x", r >= want))
    ratios = [(ours_vs_best(res, peers, img, job), img, job)
              for img in images for job in jobs]
    ratios = [t for t in ratios if t[0] is not None]
    if ratios:
        low = min(ratios)
        rows.append((f"no job below {FLOOR}x the best peer",
                     f"lowest {low[0]:.2f}x ({low[1]}, {low[2]})", low[0] >= FLOOR))
    ours = peers[0].name
    rel = []
    for job in jobs:
        q, r = res.get((ours, TARGET_IMAGE, job)), res.get((ours, "raw", job))
        if isinstance(q, tuple) and isinstance(r, tuple) and r[0] > 0:
            rel.append((q[0] / r[0], job))
    if rel:
        low = min(rel)
        rows.append((f"{TARGET_IMAGE} within {100 - QCOW2_VS_RAW * 100:.0f}% of raw "
                     "(ours, every job)", f"lowest {low[0]:.2f} of raw ({low[1]})",
                     low[0] >= QCOW2_VS_RAW))
    size, limit = STARTUP_LIMIT
    t = startup.get((STARTUP_OURS, size))
    if isinstance(t, float):
        rows.append((f"-d on a {fmt_size(size)} sparse qcow2 within {limit * 1000:.0f} ms",
                     f"{t * 1000:.0f} ms", t <= limit))
    return rows


def ordered_jobs(cfg):
    js = [j for j in JOBS if j[0] in cfg.jobs]
    return [j for j in js if not j[1]] + [j for j in js if j[1]]


# ---------------------------------------------------------------- main

def start_peers(peers, cfg, group, work, res, notes):
    """Start a fresh instance of every peer that serves the format of each
    image of the group, on its own copy (the read-only peers on the
    pristine image); return [(image, peer, view, jobs)]."""
    live = []
    for img, (path, fmt) in group:
        read_only = img in FOREIGN
        for proto in peers:
            if not proto.supports(fmt):
                continue
            peer = proto.fresh()
            jobs = [j for j in ordered_jobs(cfg)
                    if not j[1] or (peer.writes and not read_only)]
            if isinstance(peer, FuseDiskExport) and cfg.served.get(fmt, "refused") == "refused":
                for j in jobs:
                    res[(peer.name, img, j[0])] = NA_BACKEND
                notes.append(f"{peer.name} on {img}: no {fmt} backend in this build "
                             "(the row is kept for the final run)")
                continue
            wdir = os.path.join(work, f"{peer.name}-{img}")
            os.makedirs(wdir)
            src = path
            if peer.writes:
                src = working_copy(path, os.path.join(wdir, os.path.basename(path)), fmt)
            log(f"{peer.name}: {img}")
            try:
                if peer.writes and not read_only:
                    peer.hold_files(src)
                live.append((img, peer, peer.start(src, fmt, wdir, not read_only), jobs))
            except Exception as e:      # noqa: BLE001
                notes.append(f"{peer.name} on {img}: could not start: {e}")
                for j in jobs:
                    res[(peer.name, img, j[0])] = NA_ERR
                peer.cleanup()
    return live


def bench_group(peers, cfg, group, work, res, rss, notes):
    """Every job on every peer's view of each image of the group.  All the
    views are live at once and take turns run by run (after a sync, so that
    no run pays for the writeback of an earlier one), so the machine's slow
    and fast moments fall on all of them alike; the median of each view's
    runs is kept.  Grouping raw with the fully allocated qcow2 makes their
    comparison as fair as the peers'."""
    live = start_peers(peers, cfg, group, work, res, notes)
    failed = {}                         # (peer, image, reason) -> jobs
    try:
        for job in ordered_jobs(cfg):
            log(f"{', '.join(img for img, _ in group)}: {job[0]}")
            runs = {(img, p.name): [] for img, p, _, jobs in live if job in jobs}
            for _ in range(cfg.repeat):
                for img, peer, view, _ in live:
                    key = (img, peer.name)
                    if not isinstance(runs.get(key), list):
                        continue        # not this peer's job, or failed
                    os.sync()
                    try:
                        if not is_mounted(peer.mnt) or not os.path.exists(view):
                            raise RuntimeError("view no longer mounted")
                        if job[1]:
                            peer.evict()
                        runs[key].append(fio_run(job, view, cfg.size, cfg.runtime))
                    except Exception as e:  # noqa: BLE001
                        runs[key] = None
                        failed.setdefault((peer.name, img, str(e)), []).append(job[0])
            for (img, name), rs in runs.items():
                res[(name, img, job[0])] = NA_ERR if rs is None else (
                    statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs))
    finally:
        for img, peer, _, _ in live:
            rss[(peer.name, img)] = peer.stop()
            peer.release_files()
        for (name, img, reason), js in failed.items():
            notes.append(f"{name} on {img}, {', '.join(js)}: {reason}")
        for img, peer, _, _ in live:
            shutil.rmtree(os.path.join(work, f"{peer.name}-{img}"), ignore_errors=True)


def image_groups(imgs):
    """raw and qcow2-full together (their ratio is a target), the rest
    alone: fewer live copies at once than one big group."""
    together = [(k, imgs[k]) for k in ("raw", TARGET_IMAGE) if k in imgs]
    rest = [[(k, v)] for k, v in imgs.items() if k not in ("raw", TARGET_IMAGE)]
    return ([together] if together else []) + rest


def parse_args():
    env = os.environ.get
    ap = argparse.ArgumentParser(description="fio through fuse-disk-export and its peers")
    ap.add_argument("--fde", default=env("FDE", "./fuse-disk-export"),
                    help="the fuse-disk-export binary")
    ap.add_argument("--size", default=env("BENCH_SIZE", "1G"), help="image size (BENCH_SIZE)")
    ap.add_argument("--runtime", type=int, default=int(env("BENCH_RUNTIME", "5")),
                    help="seconds per fio run (BENCH_RUNTIME)")
    ap.add_argument("--repeat", type=int, default=int(env("BENCH_REPEAT", "3")),
                    help="runs per job, median reported (BENCH_REPEAT)")
    ap.add_argument("--big-size", default=env("BENCH_BIG_SIZE", "100G,1T"),
                    help="comma list of sparse image sizes for the startup timing "
                         "(BENCH_BIG_SIZE)")
    ap.add_argument("--jobs", default=env("BENCH_JOBS", ",".join(j[0] for j in JOBS)),
                    help="comma list of jobs (BENCH_JOBS)")
    ap.add_argument("--images", default=env("BENCH_IMAGES", ",".join(i[0] for i in IMAGES)),
                    help="comma list of images (BENCH_IMAGES); nbd alone runs only "
                         "the NBD group")
    ap.add_argument("--dir", default=env("BENCH_DIR", env("TMPDIR", "/var/tmp")),
                    help="parent of the scratch directory (BENCH_DIR, TMPDIR)")
    ap.add_argument("--tar-tree", default=env("BENCH_TAR_TREE", "/usr/share"),
                    help="comma list of trees the tar job extracts (BENCH_TAR_TREE)")
    ap.add_argument("--tar-disk", default=env("BENCH_TAR_DISK", "4G"),
                    help="disk size of the tar job (BENCH_TAR_DISK)")
    ap.add_argument("--out", default="bench-results.md", help="also write the table here")
    cfg = ap.parse_args()
    cfg.size = parse_size(cfg.size)
    cfg.big_sizes = [parse_size(z) for z in cfg.big_size.split(",") if z]
    cfg.tar_tree = [t for t in cfg.tar_tree.split(",") if t]
    cfg.tar_disk = parse_size(cfg.tar_disk)
    cfg.jobs = [j for j in cfg.jobs.split(",") if j]
    cfg.images = [i for i in cfg.images.split(",") if i]
    for j in cfg.jobs:
        if j not in [x[0] for x in JOBS]:
            ap.error(f"unknown job {j}")
    for i in cfg.images:
        if i not in [x[0] for x in IMAGES]:
            ap.error(f"unknown image {i}")
    if cfg.size < 4 * MiB or cfg.size % MiB:
        ap.error("size must be a multiple of 1 MiB, at least 4 MiB")
    cfg.fde = os.path.abspath(cfg.fde)
    return cfg


def main():
    cfg = parse_args()
    if not os.access(cfg.fde, os.X_OK):
        sys.exit(f"bench: {cfg.fde}: not an executable (build it, or pass --fde)")
    if os.geteuid() != 0:
        log("warning: not root; FUSE mounts on files may fail")

    notes = []
    missing = sorted({pkg for cmd, pkg in PACKAGES if not have(cmd)})
    if missing:
        log("missing packages: " + " ".join(missing))
        notes.append("missing packages (what needs them was skipped): " + " ".join(missing))

    cfg.served = served_formats(cfg.fde)
    peers = [FuseDiskExport(cfg.fde)]
    for cls in (QemuStorageDaemon, QcowMount):
        p = cls()
        if p.available():
            peers.append(p)
        else:
            notes.append(f"peer {p.name} skipped: {p.command} not installed")

    # BENCH_IMAGES=nbd: the NBD group alone (no ceiling, no startup timing)
    nbd_only = set(cfg.images) == {NBD}
    nbd_skip = nbd_missing(cfg) if NBD in cfg.images else None
    if nbd_skip:
        log(f"NBD group skipped: {nbd_skip}")
        notes.append(f"NBD group skipped: {nbd_skip}")

    state = {"active": list(peers)}
    work = os.path.abspath(tempfile.mkdtemp(prefix="fde-bench.", dir=cfg.dir))

    def on_signal(sig, _frame):
        raise KeyboardInterrupt(f"signal {sig}")
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)

    res, rss, ceiling, startup, tar_times = {}, {}, {}, {}, {}
    nbd_res, nbd_rss = {}, {}
    try:
        imgs = {}
        if have("fio") and not (nbd_only and nbd_skip):
            imgs, n = make_images(cfg, work, cfg.images)
            notes += n
        # make_images may have built a base the list does not name
        imgs = {k: v for k, v in imgs.items() if k in cfg.images}

        if have("fio") and not nbd_only:
            log("ceiling: plain raw file in the page cache")
            plain = working_copy(os.path.join(work, "raw.img"), os.path.join(work, "plain.raw"))
            run(["cat", plain], stdout=subprocess.DEVNULL)
            for j in ordered_jobs(cfg):
                try:
                    ceiling[j[0]] = measure(j, plain, cfg, extra=dict(direct=0, invalidate=0))
                except Exception as e:  # noqa: BLE001
                    ceiling[j[0]] = NA_ERR
                    notes.append(f"ceiling, {j[0]}: {e}")
            os.unlink(plain)

            per_run = [i for i in PER_RUN if i in cfg.images]
            for group in image_groups(imgs):
                bench_group(peers, cfg, group, work, res, rss, notes)
            full = os.path.join(work, "full.qcow2")
            if {FRESH, FRESH_RAW, FRESH_NEW} & set(per_run):
                if os.path.exists(full):
                    bench_fresh(peers, cfg, full, work, res, notes)
                    imgs.update({k: None for k in (FRESH, FRESH_RAW, FRESH_NEW)
                                 if k in per_run})
                else:
                    notes.append("fresh overlays skipped: no qcow2 base (qemu-img missing)")
            if "tar" in per_run and have("qemu-img"):
                tar_times = bench_tar(peers, cfg, work, notes)
        if have("fio") and NBD in cfg.images and not nbd_skip:
            full = os.path.join(work, "full.qcow2")
            bench_nbd(cfg, full, work, state, nbd_res, nbd_rss, notes)
        if not have("fio"):
            notes.append("throughput skipped: fio missing")

        if nbd_only:
            pass
        elif have("qemu-img"):
            log("startup: " + ", ".join(fmt_size(z) for z in cfg.big_sizes)
                + " sparse qcow2")
            startup = bench_startup(cfg, work, cfg.fde, state, notes)
        else:
            notes.append("startup timing skipped: qemu-img missing")

        text = report(cfg, res, ceiling, startup, rss, notes, peers, list(imgs),
                      tar_times, nbd_res, nbd_rss)
        print(text)
        with open(cfg.out, "w") as f:
            f.write(text + "\n")
        log(f"results also in {os.path.abspath(cfg.out)}")
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # finish cleaning up
        for p in state["active"]:
            p.cleanup()
        left = [m for m in mountpoints() if m == work or m.startswith(work + "/")]
        for m in left:
            unmount(m)
        left = [m for m in mountpoints() if m == work or m.startswith(work + "/")]
        if left:
            log("still mounted, scratch directory kept: " + " ".join(left))
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
