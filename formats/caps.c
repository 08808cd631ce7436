/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: what a disk can do (format.h's can_* members), and
 * the emulation of what it cannot, as nbdkit's server does for a plugin
 * without .zero (it writes zeros instead).  A discard the disk cannot do
 * is not dropped as nbdkit may drop a trim: FUSE's PUNCH_HOLE promises
 * that the range reads back as zeros, so it becomes zeroing. */
#include <config.h>

#include <errno.h>
#include <stdlib.h>

#include "format.h"

#define ZERO_CHUNK (1u << 20)   /* bytes written at a time when emulating */

bool
fde_format_read_only(const struct fde_format *format)
{
  return format->can_write == NULL;
}

bool
fde_disk_can_write(struct fde_disk *disk)
{
  const struct fde_format *f = disk->format;

  return !disk->read_only && f->can_write != NULL && f->pwrite != NULL
    && f->can_write(disk);
}

bool
fde_disk_can_zero(struct fde_disk *disk)
{
  const struct fde_format *f = disk->format;

  return f->can_zero != NULL && f->zero != NULL && fde_disk_can_write(disk)
    && f->can_zero(disk);
}

bool
fde_disk_can_discard(struct fde_disk *disk)
{
  const struct fde_format *f = disk->format;

  return f->can_discard != NULL && f->zero != NULL
    && fde_disk_can_write(disk) && f->can_discard(disk);
}

bool
fde_disk_can_map(struct fde_disk *disk)
{
  const struct fde_format *f = disk->format;

  return f->can_map != NULL && f->map != NULL && f->can_map(disk);
}

/* Zero [off, off+len) by writing zeros through the disk's pwrite. */
static int
write_zeros(struct fde_disk *disk, uint64_t off, uint64_t len)
{
  size_t chunk = len < ZERO_CHUNK ? (size_t) len : ZERO_CHUNK;
  void *zeros = calloc(1, chunk);
  int r = 0;

  if (zeros == NULL)
    return -ENOMEM;
  while (len > 0 && r == 0) {
    size_t n = len < chunk ? (size_t) len : chunk;
    r = disk->format->pwrite(disk, zeros, n, off);
    off += n;
    len -= n;
  }
  free(zeros);
  return r;
}

int
fde_disk_zero(struct fde_disk *disk, uint64_t off, uint64_t len,
              unsigned flags)
{
  if (!fde_disk_can_write(disk))
    return -EROFS;
  if (len == 0)
    return 0;
  if ((flags & FDE_ZERO_PUNCH) && fde_disk_can_discard(disk))
    return disk->format->zero(disk, off, len, flags);
  if (fde_disk_can_zero(disk))
    return disk->format->zero(disk, off, len, flags & ~FDE_ZERO_PUNCH);
  if (flags & FDE_ZERO_FAST)
    return -ENOTSUP;
  return write_zeros(disk, off, len);
}
