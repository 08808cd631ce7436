/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: the raw backend.  The virtual disk is the file itself;
 * holes, punching and allocation status come from the host file system.
 * In an OVA (fde_open_params file_offset/file_length, formats/ova.c) the
 * disk is a window of the file, always read-only: host offsets are the
 * disk's plus the window's start, and the disk's size is the window's
 * (QEMU's raw driver with its offset and size options). */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "format.h"

struct raw_disk {
  struct fde_disk disk;         /* must come first */
  int fd;
  uint64_t base;                /* the window's first byte in fd (0: none) */
  bool window;                  /* an OVA member: read-only, size fixed */
  bool can_punch;               /* cleared once the file system says no */
  bool can_zero_range;
};

#define to_raw(d) ((struct raw_disk *) (d))

/* Raw is what is left when nothing else matches. */
static int
raw_probe(const uint8_t *buf, size_t len)
{
  return 1;
}

static int
raw_size(const struct fde_open_params *p, uint64_t *size)
{
  struct stat st;

  if (fstat(p->fd, &st) == -1)
    return -errno;
  if (S_ISREG(st.st_mode)) {
    *size = (uint64_t) st.st_size;
    return 0;
  }
  if (S_ISBLK(st.st_mode) && ioctl(p->fd, BLKGETSIZE64, size) == 0)
    return 0;
  return S_ISBLK(st.st_mode) ? -errno : -EINVAL;
}

static int
raw_open(const struct fde_open_params *p, struct fde_disk **out)
{
  struct raw_disk *h;
  uint64_t size;
  int r = raw_size(p, &size);

  if (r < 0) {
    fde_error("%s: cannot find the size: %s", p->path, strerror(-r));
    return r;
  }
  if ((p->file_offset != 0 || p->file_length != 0)
      && (!p->read_only || p->file_offset > size
          || p->file_length > size - p->file_offset)) {
    fde_error("%s: the window of %llu bytes at byte %llu is not inside the "
              "file (%llu bytes)%s", p->path,
              (unsigned long long) p->file_length,
              (unsigned long long) p->file_offset, (unsigned long long) size,
              p->read_only ? "" : ", or not read-only");
    return -EINVAL;
  }
  h = calloc(1, sizeof *h);
  if (h == NULL || (h->disk.path = strdup(p->path)) == NULL) {
    free(h);
    fde_error("%s: out of memory", p->path);
    return -ENOMEM;
  }
  h->disk.format = &fde_format_raw;
  h->disk.size = size;
  h->disk.read_only = p->read_only;
  h->fd = p->fd;
  if (p->file_offset != 0 || p->file_length != 0) {
    h->window = true;
    h->base = p->file_offset;
    h->disk.size = p->file_length;
  }
  h->can_punch = h->can_zero_range = true;
  *out = &h->disk;
  return 0;
}

static int
raw_pread(struct fde_disk *d, void *buf, size_t len, uint64_t off)
{
  return fde_pread_full(to_raw(d)->fd, buf, len, to_raw(d)->base + off);
}

/* The disk is the file: every run is stored verbatim where it is, as far
 * as the file reaches now.  A regular file may have been truncated since
 * open (the disk keeps its size, and pread reads zeros past the end):
 * the range named stays inside the file's current size, and a run past
 * the end is left to pread.  Block devices keep their size (st_size says
 * nothing there; the front end stays inside the disk). */
static int
raw_map(struct fde_disk *d, uint64_t off, uint64_t len, int *fd,
        uint64_t *host, uint64_t *run)
{
  struct stat st;

  *run = len;
  if (fstat(to_raw(d)->fd, &st) == -1)
    return -errno;
  off += to_raw(d)->base;       /* a window's: never past its end */
  if (S_ISREG(st.st_mode)) {
    uint64_t end = st.st_size > 0 ? (uint64_t) st.st_size : 0;
    if (off >= end)
      return 0;                 /* all past the end: pread's zeros */
    if (len > end - off)
      *run = end - off;
  }
  *fd = to_raw(d)->fd;
  *host = off;
  return 1;
}

static int
raw_pwrite(struct fde_disk *d, const void *buf, size_t len, uint64_t off)
{
  return fde_pwrite_full(to_raw(d)->fd, buf, len, off);
}

/* Try one fallocate mode; on "not supported" remember it and say so. */
static int
try_fallocate(int fd, int mode, uint64_t off, uint64_t len, bool *can)
{
  int r;

  if (!*can)
    return -EOPNOTSUPP;
  r = fde_io_fallocate(fd, mode, off, len);
  if (r == -EOPNOTSUPP || r == -ENOSYS) {
    *can = false;
    return -EOPNOTSUPP;
  }
  return r;
}

static int
raw_zero(struct fde_disk *d, uint64_t off, uint64_t len, unsigned flags)
{
  struct raw_disk *h = to_raw(d);
  bool punch = flags & FDE_ZERO_PUNCH;
  int r;

  /* Punching frees space; ZERO_RANGE keeps it allocated.  Both guarantee
   * zeros, so either serves either request. */
  r = try_fallocate(h->fd, punch ? FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
                    : FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
                    off, len, punch ? &h->can_punch : &h->can_zero_range);
  if (r != -EOPNOTSUPP)
    return r;
  r = try_fallocate(h->fd, punch ? FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE
                    : FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                    off, len, punch ? &h->can_zero_range : &h->can_punch);
  if (r != -EOPNOTSUPP)
    return r;
  return flags & FDE_ZERO_FAST ? -ENOTSUP : fde_pwrite_zeros(h->fd, off, len);
}

static int
raw_flush(struct fde_disk *d)
{
  return fde_io_fdatasync(to_raw(d)->fd);
}

/* SEEK_DATA/SEEK_HOLE on the image: where the host file system has no
 * allocation the disk reads as zeros. */
static int
raw_block_status(struct fde_disk *d, uint64_t off, uint64_t len,
                 uint64_t *run, unsigned *status)
{
  bool data = fde_file_data_run(to_raw(d)->fd, to_raw(d)->base + off, len,
                                run);

  *status = data ? FDE_BS_DATA : FDE_BS_ZERO;
  return 0;
}

static uint64_t
raw_allocated_bytes(struct fde_disk *d)
{
  if (to_raw(d)->window)         /* the member's share of the archive */
    return (d->size + 511) / 512 * 512;
  return fde_file_allocated(to_raw(d)->fd);
}

static void
raw_describe(struct fde_disk *d, FILE *out)
{
}

/* format.h's capabilities: writable unless opened read-only; zeroing
 * and discards always work (raw_zero falls back to writing zeros); every
 * run can be spliced from the file (raw_map). */
static bool
raw_can_write(struct fde_disk *d)
{
  return !d->read_only;
}

static bool
raw_can_always(struct fde_disk *d)
{
  return true;
}

static void
raw_close(struct fde_disk *d)
{
  struct raw_disk *h = to_raw(d);

  close(h->fd);
  free(h->disk.path);
  free(h);
}

const struct fde_format fde_format_raw = {
  .name            = "raw",
  .probe           = raw_probe,
  .open            = raw_open,
  .pread           = raw_pread,
  .pwrite          = raw_pwrite,
  .zero            = raw_zero,
  .flush           = raw_flush,
  .block_status    = raw_block_status,
  .allocated_bytes = raw_allocated_bytes,
  .describe        = raw_describe,
  .close           = raw_close,
  .map             = raw_map,
  .can_write       = raw_can_write,
  .can_zero        = raw_can_always,
  .can_discard     = raw_can_always,
  .can_map         = raw_can_always,
  .in_container    = true,
};
