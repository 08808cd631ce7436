/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: the pass-through members every layer starts from
 * (nbdkit's filters get the same from their next_ops). */
#include <config.h>

#include <stdlib.h>

#include "layer.h"

#define LOWER(d) fde_layer_lower(d)

static int
pass_pread(struct fde_disk *d, void *buf, size_t len, uint64_t off)
{
  return LOWER(d)->format->pread(LOWER(d), buf, len, off);
}

static int
pass_pwrite(struct fde_disk *d, const void *buf, size_t len, uint64_t off)
{
  return LOWER(d)->format->pwrite(LOWER(d), buf, len, off);
}

static int
pass_zero(struct fde_disk *d, uint64_t off, uint64_t len, unsigned flags)
{
  return LOWER(d)->format->zero(LOWER(d), off, len, flags);
}

static int
pass_flush(struct fde_disk *d)
{
  return LOWER(d)->format->flush(LOWER(d));
}

static int
pass_block_status(struct fde_disk *d, uint64_t off, uint64_t len,
                  uint64_t *run, unsigned *status)
{
  return LOWER(d)->format->block_status(LOWER(d), off, len, run, status);
}

static uint64_t
pass_allocated_bytes(struct fde_disk *d)
{
  return LOWER(d)->format->allocated_bytes(LOWER(d));
}

static void
pass_describe(struct fde_disk *d, FILE *out)
{
  LOWER(d)->format->describe(LOWER(d), out);
}

static int
pass_map(struct fde_disk *d, uint64_t off, uint64_t len, int *fd,
         uint64_t *host, uint64_t *run)
{
  return LOWER(d)->format->map(LOWER(d), off, len, fd, host, run);
}

static unsigned
pass_io_begin(struct fde_disk *d)
{
  return LOWER(d)->format->io_begin(LOWER(d));
}

static void
pass_io_end(struct fde_disk *d, unsigned token)
{
  LOWER(d)->format->io_end(LOWER(d), token);
}

/* The capabilities are the lower disk's: a layer changes where bytes go,
 * not what can be done to them. */
static bool
pass_can_write(struct fde_disk *d)
{
  return LOWER(d)->format->can_write(LOWER(d));
}

static bool
pass_can_zero(struct fde_disk *d)
{
  return LOWER(d)->format->can_zero(LOWER(d));
}

static bool
pass_can_discard(struct fde_disk *d)
{
  return LOWER(d)->format->can_discard(LOWER(d));
}

static bool
pass_can_map(struct fde_disk *d)
{
  return LOWER(d)->format->can_map(LOWER(d));
}

void
fde_layer_close(struct fde_disk *d)
{
  if (!((struct fde_layer *) d)->lower_shared)
    fde_disk_close(LOWER(d));
  free(d);
}

/* m = own's member, else the pass-through one, else NULL when lower has
 * none (a capability the disk below lacks stays absent). */
#define TAKE(m, pass)                                                   \
  ops->m = own->m != NULL ? own->m : pass;                              \
  if (low->m == NULL)                                                   \
    ops->m = NULL

void
fde_layer_init(struct fde_layer *l, const struct fde_format *own,
               struct fde_disk *lower, uint64_t size)
{
  const struct fde_format *low = lower->format;
  struct fde_format *ops = &l->ops;

  *ops = *own;
  ops->name = own->name != NULL ? own->name : low->name;
  ops->probe = NULL;            /* a layer is never probed or opened */
  ops->open = NULL;
  TAKE(pread, pass_pread);
  TAKE(pwrite, pass_pwrite);
  TAKE(zero, pass_zero);
  TAKE(flush, pass_flush);
  TAKE(block_status, pass_block_status);
  TAKE(allocated_bytes, pass_allocated_bytes);
  TAKE(describe, pass_describe);
  TAKE(map, pass_map);
  TAKE(io_begin, pass_io_begin);
  TAKE(io_end, pass_io_end);
  TAKE(can_write, pass_can_write);
  TAKE(can_zero, pass_can_zero);
  TAKE(can_discard, pass_can_discard);
  TAKE(can_map, pass_can_map);
  ops->close = own->close != NULL ? own->close : fde_layer_close;
  l->lower = lower;
  l->disk.format = ops;
  l->disk.size = size;
  l->disk.read_only = lower->read_only;
  l->disk.path = lower->path;   /* borrowed: lower frees it */
}
