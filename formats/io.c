/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: the one place where the backends do I/O on image
 * files, and the whole-range helpers built on it.
 *
 * Every pread, pwrite, copy_file_range, fdatasync, fallocate and ftruncate
 * a backend makes on an image file goes through the fde_io_* / fde_* calls
 * below, so that a test can count them and make any one of them fail or
 * transfer short (the "testing" section of format.h).  When no test has
 * armed the seam, the price is one relaxed atomic load per call. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "format.h"

/* The test control (process wide, as the I/O it watches).  armed is the
 * only thing a call reads when no test uses the seam. */
static atomic_bool armed;
static atomic_uint_fast64_t calls;      /* calls counted since arming */
static atomic_uint_fast64_t calls_of[FDE_IO_KINDS];     /* by kind */
static atomic_int fail_kind;            /* count only these, or FDE_IO_NONE */
static atomic_uint_fast64_t fail_at;    /* 1-based call to fail, 0: none */
static atomic_int fail_errno;
static atomic_int next_errno;           /* call fail_at + 1's, 0: none */
static atomic_uint_fast64_t injected;   /* faults injected since arming */

/* The test control: see format.h, "testing only". */
void
fde_io_fault_arm_kind(uint64_t nth, int err, enum fde_io_call kind)
{
  atomic_store(&calls, 0);
  for (int k = 0; k < FDE_IO_KINDS; k++)
    atomic_store(&calls_of[k], 0);
  atomic_store(&fail_kind, kind);
  atomic_store(&injected, 0);
  atomic_store(&fail_errno, err > 0 || err == FDE_FAULT_SHORT ? err : EIO);
  atomic_store(&next_errno, 0);
  atomic_store(&fail_at, nth);
  atomic_store(&armed, true);
}

void
fde_io_fault_arm(uint64_t nth, int err)
{
  fde_io_fault_arm_kind(nth, err, FDE_IO_NONE);
}

void
fde_io_fault_arm_next(int err)
{
  atomic_store(&next_errno, err > 0 ? err : 0);
}

void
fde_io_fault_disarm(void)
{
  atomic_store(&armed, false);
  atomic_store(&fail_at, 0);
}

uint64_t
fde_io_fault_calls(void)
{
  return atomic_load(&calls);
}

uint64_t
fde_io_fault_calls_of(enum fde_io_call kind)
{
  return atomic_load(&calls_of[kind]);
}

uint64_t
fde_io_fault_injected(void)
{
  return atomic_load(&injected);
}

/* Count one call of kind what: 0 to let it through, the errno to fail it
 * with, or FDE_FAULT_SHORT for a transfer to move only part of its bytes
 * (calls that transfer nothing let it through). */
static int
fault(enum fde_io_call what)
{
  uint64_t n, kn;
  int err;

  if (__builtin_expect(!atomic_load_explicit(&armed, memory_order_relaxed),
                       1))
    return 0;
  n = atomic_fetch_add(&calls, 1) + 1;
  kn = atomic_fetch_add(&calls_of[what], 1) + 1;
  if (atomic_load(&fail_kind) != FDE_IO_NONE) {   /* count these only */
    if ((int) what != atomic_load(&fail_kind))
      return 0;
    n = kn;
  }
  if (n == atomic_load(&fail_at) + 1 && atomic_load(&fail_at) > 0
      && (err = atomic_load(&next_errno)) > 0) {
    atomic_fetch_add(&injected, 1);
    return err;
  }
  if (n != atomic_load(&fail_at))
    return 0;
  err = atomic_load(&fail_errno);
  if (err != FDE_FAULT_SHORT)
    atomic_fetch_add(&injected, 1);
  return err;
}

/* The length a transfer armed to be short moves: the first half (as the
 * kernel may return after a signal, at a file system's limit...), or
 * all of a 1-byte one. */
static size_t
shortened(size_t len)
{
  if (len < 2)
    return len;
  atomic_fetch_add(&injected, 1);
  return len / 2;
}

/* The seam's calls: see format.h. */
ssize_t
fde_io_pread(int fd, void *buf, size_t len, uint64_t off)
{
  int err = fault(FDE_IO_PREAD);
  ssize_t r;

  if (err > 0)
    return -err;
  if (err == FDE_FAULT_SHORT)
    len = shortened(len);
  if (off > (uint64_t) INT64_MAX)
    return -EINVAL;
  r = pread(fd, buf, len, (off_t) off);
  return r < 0 ? -errno : r;
}

ssize_t
fde_io_pwrite(int fd, const void *buf, size_t len, uint64_t off)
{
  int err = fault(FDE_IO_PWRITE);
  ssize_t r;

  if (err > 0)
    return -err;
  if (err == FDE_FAULT_SHORT)
    len = shortened(len);
  if (off > (uint64_t) INT64_MAX)
    return -EINVAL;
  r = pwrite(fd, buf, len, (off_t) off);
  return r < 0 ? -errno : r;
}

ssize_t
fde_io_pwritev(int fd, const struct iovec *iov, int iovcnt, uint64_t off)
{
  int err = fault(FDE_IO_PWRITE);
  struct iovec part[FDE_IOV_MAX];
  ssize_t r;

  if (err > 0)
    return -err;
  if (off > (uint64_t) INT64_MAX)
    return -EINVAL;
  if (err == FDE_FAULT_SHORT && iovcnt > 0 && iovcnt <= FDE_IOV_MAX) {
    size_t total = 0, keep;
    int n = 0;
    for (int k = 0; k < iovcnt; k++)
      total += iov[k].iov_len;
    keep = shortened(total);
    for (; n < iovcnt && keep > 0; n++) {     /* the first keep bytes */
      part[n] = iov[n];
      if (part[n].iov_len > keep)
        part[n].iov_len = keep;
      keep -= part[n].iov_len;
    }
    iov = part;
    iovcnt = n;
  }
  r = pwritev(fd, iov, iovcnt, (off_t) off);
  return r < 0 ? -errno : r;
}

ssize_t
fde_io_copy_range(int fd_in, uint64_t off_in, int fd_out, uint64_t off_out,
                  size_t len)
{
  int err = fault(FDE_IO_COPY_RANGE);
  loff_t in = (loff_t) off_in, out = (loff_t) off_out;
  ssize_t r;

  if (err > 0)
    return -err;
  if (err == FDE_FAULT_SHORT)
    len = shortened(len);
  if (off_in > (uint64_t) INT64_MAX || off_out > (uint64_t) INT64_MAX)
    return -EINVAL;
  r = copy_file_range(fd_in, &in, fd_out, &out, len, 0);
  return r < 0 ? -errno : r;
}

int
fde_io_fdatasync(int fd)
{
  int err = fault(FDE_IO_FDATASYNC);

  if (err > 0)
    return -err;
  return fdatasync(fd) == 0 ? 0 : -errno;
}

int
fde_io_fallocate(int fd, int mode, uint64_t off, uint64_t len)
{
  int err = fault(FDE_IO_FALLOCATE);

  if (err > 0)
    return -err;
  if (off > (uint64_t) INT64_MAX || len > (uint64_t) INT64_MAX - off)
    return -EINVAL;
  return fallocate(fd, mode, (off_t) off, (off_t) len) == 0 ? 0 : -errno;
}

int
fde_io_ftruncate(int fd, uint64_t size)
{
  int err = fault(FDE_IO_FTRUNCATE);

  if (err > 0)
    return -err;
  if (size > (uint64_t) INT64_MAX)
    return -EINVAL;
  return ftruncate(fd, (off_t) size) == 0 ? 0 : -errno;
}

/* The whole-range helpers, on top of the seam. */

/* Errors of copy_file_range(2) that say "not between these two files"
 * rather than "the I/O failed": another file system (EXDEV), a file
 * system or kernel without it (EOPNOTSUPP, ENOSYS; seccomp filters answer
 * EPERM), files it refuses (EINVAL: not regular files, for example). */
static bool
copy_range_unsupported(int err)
{
  return err == EXDEV || err == EOPNOTSUPP || err == ENOSYS || err == EPERM
    || err == EINVAL;
}

int
fde_pread_full(int fd, void *buf, size_t len, uint64_t off)
{
  char *p = buf;

  if (off > (uint64_t) INT64_MAX - len)
    return -EINVAL;
  while (len > 0) {
    ssize_t r = fde_io_pread(fd, p, len, off);
    if (r == -EINTR)
      continue;
    if (r < 0)
      return (int) r;
    if (r == 0) {               /* past the end of the file: zeros, as QEMU */
      memset(p, 0, len);
      return 0;
    }
    p += r;
    off += (uint64_t) r;
    len -= (size_t) r;
  }
  return 0;
}

uint64_t
fde_file_allocated(int fd)
{
  struct stat st;

  if (fstat(fd, &st) == -1)
    return 0;
  return (uint64_t) st.st_blocks * 512;
}

bool
fde_file_data_run(int fd, uint64_t off, uint64_t len, uint64_t *run)
{
  off_t data = lseek(fd, (off_t) off, SEEK_DATA), end;

  *run = len;
  if (data == -1)               /* ENXIO: a hole up to EOF; else unknown */
    return errno != ENXIO;
  if ((uint64_t) data > off) {
    *run = (uint64_t) data - off < len ? (uint64_t) data - off : len;
    return false;
  }
  end = lseek(fd, (off_t) off, SEEK_HOLE);
  if (end != -1 && (uint64_t) end > off && (uint64_t) end - off < len)
    *run = (uint64_t) end - off;
  return true;
}

int
fde_pwrite_full(int fd, const void *buf, size_t len, uint64_t off)
{
  const char *p = buf;

  if (off > (uint64_t) INT64_MAX - len)
    return -EINVAL;
  while (len > 0) {
    ssize_t r = fde_io_pwrite(fd, p, len, off);
    if (r == -EINTR)
      continue;
    if (r < 0)
      return (int) r;
    if (r == 0)
      return -EIO;
    p += r;
    off += (uint64_t) r;
    len -= (size_t) r;
  }
  return 0;
}

int
fde_pwrite_zeros(int fd, uint64_t off, uint64_t len)
{
  static const char zeros[64 * 1024];
  int r = 0;

  while (len > 0 && r == 0) {
    size_t n = len < sizeof zeros ? (size_t) len : sizeof zeros;
    r = fde_pwrite_full(fd, zeros, n, off);
    off += n;
    len -= n;
  }
  return r;
}

int
fde_copy_range_full(int fd_in, uint64_t off_in, int fd_out, uint64_t off_out,
                    uint64_t len)
{
  if (off_in > (uint64_t) INT64_MAX - len
      || off_out > (uint64_t) INT64_MAX - len)
    return -EINVAL;
  while (len > 0) {
    size_t chunk = len > SSIZE_MAX ? SSIZE_MAX : (size_t) len;
    ssize_t r = fde_io_copy_range(fd_in, off_in, fd_out, off_out, chunk);
    if (r == -EINTR)
      continue;
    if (r < 0)
      return copy_range_unsupported((int) -r) ? FDE_COPY_RANGE_UNSUPPORTED
        : (int) r;
    if (r == 0)                 /* fd_in ends early (it shrank): zeros */
      return fde_pwrite_zeros(fd_out, off_out, len);
    off_in += (uint64_t) r;
    off_out += (uint64_t) r;
    len -= (uint64_t) r;
  }
  return 0;
}

int
fde_pwritev_full(int fd, const struct iovec *iov, int iovcnt, uint64_t off)
{
  struct iovec v[FDE_IOV_MAX];
  uint64_t total = 0;
  int i = 0;

  if (iovcnt < 0 || iovcnt > FDE_IOV_MAX)
    return -EINVAL;
  for (int k = 0; k < iovcnt; k++) {
    v[k] = iov[k];
    total += v[k].iov_len;
  }
  if (off > (uint64_t) INT64_MAX - total)
    return -EINVAL;
  while (i < iovcnt) {
    ssize_t r;
    if (v[i].iov_len == 0) {
      i++;
      continue;
    }
    r = fde_io_pwritev(fd, v + i, iovcnt - i, off);
    if (r == -EINTR)
      continue;
    if (r < 0)
      return (int) r;
    if (r == 0)
      return -EIO;
    off += (uint64_t) r;
    while (r > 0) {             /* past what was written */
      size_t m = (size_t) r < v[i].iov_len ? (size_t) r : v[i].iov_len;
      v[i].iov_base = (char *) v[i].iov_base + m;
      v[i].iov_len -= m;
      r -= (ssize_t) m;
      if (v[i].iov_len == 0)
        i++;
    }
  }
  return 0;
}
