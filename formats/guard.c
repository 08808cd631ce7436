/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: the sector guard layer: sector 0 and the last
 * sector (see layer.h). */
#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "layer.h"

#define SECTOR 512
/* The head guarded is what probing looks at (format.h). */
_Static_assert(FDE_PROBE_BYTES == SECTOR, "the guard covers the probe's bytes");

struct guard {
  struct fde_layer layer;       /* must come first */
  const char *image;            /* for the warning (the caller's string) */
  const char *allow_opt;        /* the option that allows such writes */
  bool (*is_image)(const uint8_t *sector, size_t len);
  bool (*tail_is_image)(const uint8_t *tail, size_t len, uint64_t size);
  pthread_mutex_t lock;         /* serialises writes touching a guarded
                                 * sector (the first or the last) */
};

#define to_guard(d) ((struct guard *) (d))

static uint64_t
min_u64(uint64_t a, uint64_t b)
{
  return a < b ? a : b;
}

/* Would writing buf (NULL: zeros) over [off, off + len) make sector 0
 * look like an image header?  off < SECTOR; called with the lock held,
 * so that no other write changes sector 0 between check and write. */
static int
check_sector0(struct guard *g, const void *buf, uint64_t len, uint64_t off)
{
  struct fde_disk *lower = g->layer.lower;
  uint8_t sector[SECTOR];
  size_t n = (size_t) min_u64(SECTOR, lower->size);
  size_t end = (size_t) min_u64(n, off + min_u64(len, SECTOR));
  int r = lower->format->pread(lower, sector, n, 0);

  if (r < 0)
    return r;
  if (buf != NULL)
    memcpy(sector + off, buf, end - off);
  else
    memset(sector + off, 0, end - off);
  if (g->is_image(sector, n)) {
    fde_warn("%s: refused a write that would make sector 0 look like a "
             "disk image header (use %s to allow it)", g->image,
             g->allow_opt);
    return -EPERM;
  }
  return 0;
}

/* Would writing buf (NULL: zeros) over [off, off + len) make the last
 * sector (the last min(SECTOR, size) bytes) look like an image's footer
 * or trailer (a fixed VHD's footer makes the file probe as VHD: the
 * table's tail signatures)?  The range reaches into that sector; called
 * with the lock held, as check_sector0. */
static int
check_tail(struct guard *g, const void *buf, uint64_t len, uint64_t off)
{
  struct fde_disk *lower = g->layer.lower;
  uint8_t tail[SECTOR];
  uint64_t size = lower->size;
  size_t n = (size_t) min_u64(SECTOR, size);
  uint64_t start = size - n;    /* the sector's first byte */
  uint64_t from = off > start ? off : start;
  uint64_t to = min_u64(size, off + len);
  const uint8_t *src = buf;
  int r = lower->format->pread(lower, tail, n, start);

  if (r < 0)
    return r;
  if (src != NULL)
    memcpy(tail + (from - start), src + (from - off), (size_t) (to - from));
  else
    memset(tail + (from - start), 0, (size_t) (to - from));
  if (g->tail_is_image(tail, n, size)) {
    fde_warn("%s: refused a write that would make the last sector look "
             "like a disk image footer (use %s to allow it)", g->image,
             g->allow_opt);
    return -EPERM;
  }
  return 0;
}

/* Does [off, off + len) reach into the last sector (and is that guarded)? */
static bool
touches_tail(const struct guard *g, uint64_t off, uint64_t len)
{
  uint64_t size = g->layer.lower->size;

  return g->tail_is_image != NULL && len > 0
    && off + len > size - min_u64(SECTOR, size);
}

/* Write (buf) or zero (buf NULL) under the guard. */
static int
guarded(struct fde_disk *d, const void *buf, uint64_t len, uint64_t off,
        unsigned zero_flags)
{
  struct guard *g = to_guard(d);
  struct fde_disk *lower = g->layer.lower;
  bool head = off < SECTOR, tail = touches_tail(g, off, len);
  bool touches = head || tail;
  int r = 0;

  if (touches) {
    pthread_mutex_lock(&g->lock);
    if (head)
      r = check_sector0(g, buf, len, off);
    if (r == 0 && tail)
      r = check_tail(g, buf, len, off);
  }
  if (r == 0 && buf != NULL)
    r = lower->format->pwrite(lower, buf, (size_t) len, off);
  else if (r == 0)
    r = lower->format->zero(lower, off, len, zero_flags);
  if (touches)
    pthread_mutex_unlock(&g->lock);
  return r;
}

static int
guard_pwrite(struct fde_disk *d, const void *buf, size_t len, uint64_t off)
{
  return guarded(d, buf, len, off, 0);
}

static int
guard_zero(struct fde_disk *d, uint64_t off, uint64_t len, unsigned flags)
{
  return guarded(d, NULL, len, off, flags);
}

static void
guard_close(struct fde_disk *d)
{
  pthread_mutex_destroy(&to_guard(d)->lock);
  fde_layer_close(d);
}

static const struct fde_format guard_ops = {
  .pwrite = guard_pwrite,
  .zero = guard_zero,
  .close = guard_close,
};

int
fde_guard_open(struct fde_disk *lower, const char *image,
               const char *allow_opt,
               bool (*is_image)(const uint8_t *sector, size_t len),
               bool (*tail_is_image)(const uint8_t *tail, size_t len,
                                     uint64_t size),
               struct fde_disk **out)
{
  struct guard *g = calloc(1, sizeof *g);

  if (g == NULL)
    return -ENOMEM;
  fde_layer_init(&g->layer, &guard_ops, lower, lower->size);
  g->image = image;
  g->allow_opt = allow_opt;
  g->is_image = is_image;
  g->tail_is_image = tail_is_image;
  pthread_mutex_init(&g->lock, NULL);
  *out = &g->layer.disk;
  return 0;
}
