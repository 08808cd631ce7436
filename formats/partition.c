/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: the partition window layer, and finding a partition
 * with libblkid on the virtual disk's bytes (see layer.h). */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "layer.h"

#define SECTOR 512              /* libblkid's unit for start and size */
#define MAX_PARTS 256           /* more is a hostile table (Linux: 256) */

/* ---- The window layer ---------------------------------------------------- */

struct window {
  struct fde_layer layer;       /* must come first */
  uint64_t start;               /* first byte in the lower disk */
  unsigned partno;
  /* allocated_bytes walks the window's block status: cached, and counted
   * again after writes at most once per ALLOC_RECOUNT_NS */
  pthread_mutex_t alloc_lock;
  uint64_t alloc_bytes;         /* the last count */
  struct timespec alloc_when;   /* when it was taken (CLOCK_MONOTONIC) */
  bool alloc_valid;             /* a count was taken */
  bool alloc_stale;             /* written since (atomic) */
};

#define ALLOC_RECOUNT_NS 1000000000LL

#define to_window(d) ((struct window *) (d))
#define LOWER(d) fde_layer_lower(d)
#define SHIFT(d, off) ((off) + to_window(d)->start)

static int
window_pread(struct fde_disk *d, void *buf, size_t len, uint64_t off)
{
  return LOWER(d)->format->pread(LOWER(d), buf, len, SHIFT(d, off));
}

static int
window_pwrite(struct fde_disk *d, const void *buf, size_t len, uint64_t off)
{
  __atomic_store_n(&to_window(d)->alloc_stale, true, __ATOMIC_RELAXED);
  return LOWER(d)->format->pwrite(LOWER(d), buf, len, SHIFT(d, off));
}

static int
window_zero(struct fde_disk *d, uint64_t off, uint64_t len, unsigned flags)
{
  __atomic_store_n(&to_window(d)->alloc_stale, true, __ATOMIC_RELAXED);
  return LOWER(d)->format->zero(LOWER(d), SHIFT(d, off), len, flags);
}

static int
window_block_status(struct fde_disk *d, uint64_t off, uint64_t len,
                    uint64_t *run, unsigned *status)
{
  return LOWER(d)->format->block_status(LOWER(d), SHIFT(d, off), len, run,
                                        status);
}

static int
window_map(struct fde_disk *d, uint64_t off, uint64_t len, int *fd,
           uint64_t *host, uint64_t *run)
{
  return LOWER(d)->format->map(LOWER(d), SHIFT(d, off), len, fd, host, run);
}

/* st_blocks of a window: the bytes inside it that block_status calls data
 * (allocated in some layer of the chain), summed run by run.  Not the
 * image's host allocation, which belongs to the whole disk; not a share
 * of it either.  One walk costs a block_status call per run (25 ms for a
 * 190 GiB qcow2 partition with 400 extents), and FUSE asks for it after
 * every write: the count is kept, and taken again after writes at most
 * once a second. */
static uint64_t
count_allocated(struct fde_disk *d)
{
  uint64_t pos = 0, total = 0, run, size = fde_disk_size(d);
  unsigned status;

  while (pos < size) {
    if (window_block_status(d, pos, size - pos, &run, &status) < 0)
      return total;
    if (run == 0 || run > size - pos)
      run = size - pos;         /* never loop on a backend's bad answer */
    if ((status & FDE_BS_DATA) && !(status & FDE_BS_ZERO))
      total += run;
    pos += run;
  }
  return total;
}

static int64_t
ns_since(const struct timespec *then)
{
  struct timespec now;

  clock_gettime(CLOCK_MONOTONIC, &now);
  return (int64_t) (now.tv_sec - then->tv_sec) * 1000000000LL
    + (now.tv_nsec - then->tv_nsec);
}

static uint64_t
window_allocated_bytes(struct fde_disk *d)
{
  struct window *w = to_window(d);
  uint64_t bytes;

  pthread_mutex_lock(&w->alloc_lock);
  if (!w->alloc_valid
      || (__atomic_load_n(&w->alloc_stale, __ATOMIC_RELAXED)
          && ns_since(&w->alloc_when) >= ALLOC_RECOUNT_NS)) {
    __atomic_store_n(&w->alloc_stale, false, __ATOMIC_RELAXED);
    w->alloc_bytes = count_allocated(d);
    clock_gettime(CLOCK_MONOTONIC, &w->alloc_when);
    w->alloc_valid = true;
  }
  bytes = w->alloc_bytes;
  pthread_mutex_unlock(&w->alloc_lock);
  return bytes;
}

static void
window_close(struct fde_disk *d)
{
  pthread_mutex_destroy(&to_window(d)->alloc_lock);
  fde_layer_close(d);
}

static void
window_describe(struct fde_disk *d, FILE *out)
{
  struct window *w = to_window(d);

  LOWER(d)->format->describe(LOWER(d), out);
  fprintf(out, "partition: %u\n", w->partno);
  fprintf(out, "partition-start: %" PRIu64 "\n", w->start);
  fprintf(out, "partition-size: %" PRIu64 "\n", fde_disk_size(d));
  fprintf(out, "disk-size: %" PRIu64 "\n", LOWER(d)->size);
}

static const struct fde_format window_ops = {
  .pread = window_pread,
  .pwrite = window_pwrite,
  .zero = window_zero,
  .block_status = window_block_status,
  .allocated_bytes = window_allocated_bytes,
  .describe = window_describe,
  .map = window_map,
  .close = window_close,
};

int
fde_window_resize(struct fde_disk *d, uint64_t new_size)
{
  struct window *w = to_window(d);

  if (d->format->close != window_close
      || fde_window_check(LOWER(d)->size, w->start, new_size) != NULL)
    return -EINVAL;
  __atomic_store_n(&d->size, new_size, __ATOMIC_RELAXED);
  pthread_mutex_lock(&w->alloc_lock);
  w->alloc_valid = false;       /* count st_blocks again at once */
  pthread_mutex_unlock(&w->alloc_lock);
  return 0;
}

const char *
fde_window_check(uint64_t disk_size, uint64_t start, uint64_t size)
{
  if (size == 0)
    return "it is empty";
  if (start >= disk_size)
    return "it starts past the end of the disk";
  if (size > disk_size - start)
    return "it ends past the end of the disk";
  return NULL;
}

int
fde_partition_open(struct fde_disk *lower, unsigned n, uint64_t start,
                   uint64_t size, struct fde_disk **out)
{
  struct window *w;

  if (fde_window_check(lower->size, start, size) != NULL)
    return -EINVAL;
  if ((w = calloc(1, sizeof *w)) == NULL)
    return -ENOMEM;
  fde_layer_init(&w->layer, &window_ops, lower, size);
  w->start = start;
  w->partno = n;
  pthread_mutex_init(&w->alloc_lock, NULL);
  *out = &w->layer.disk;
  return 0;
}

/* ---- libblkid's answer to a window ------------------------------------- */

/* The window of entry p in bytes, if it lies inside a disk of disk_size
 * bytes; else false with why. */
static bool
entry_window(const struct fde_part_entry *p, uint64_t disk_size,
             uint64_t *start, uint64_t *size, const char **why)
{
  if (p->start < 0 || p->size < 0 || (uint64_t) p->start > UINT64_MAX / SECTOR
      || (uint64_t) p->size > UINT64_MAX / SECTOR) {
    *why = "its start or size is out of range";
    return false;
  }
  *start = (uint64_t) p->start * SECTOR;
  *size = (uint64_t) p->size * SECTOR;
  *why = fde_window_check(disk_size, *start, *size);
  return *why == NULL;
}

/* Entry i judged on its own (everything but overlap): 0 with its window,
 * or -EINVAL with why. */
static int
entry_alone(const struct fde_part_entry *parts, size_t i, uint64_t disk_size,
            uint64_t *start, uint64_t *size, const char **why)
{
  const struct fde_part_entry *p = &parts[i];

  if (i >= MAX_PARTS) {
    *why = "the table holds more than 256 partitions";
    return -EINVAL;
  }
  if (p->partno < 1 || p->partno > MAX_PARTS) {
    *why = "its number is out of range";
    return -EINVAL;
  }
  if (p->extended) {
    *why = "it is an extended partition, a container whose logical "
      "partitions are numbered from 5";
    return -EINVAL;
  }
  /* An extended chain that loops shows the same logical partition again
   * under a new number, and a number given twice is no numbering: refuse
   * the repeats. */
  for (size_t k = 0; k < i; k++) {
    const struct fde_part_entry *q = &parts[k];
    if (q->partno == p->partno) {
      *why = "its number is given to an earlier entry too";
      return -EINVAL;
    }
    if (q->start == p->start && q->size == p->size && !q->extended) {
      *why = "it repeats an earlier entry (a copied entry, or a chain of "
        "extended boot records that loops)";
      return -EINVAL;
    }
  }
  if (!entry_window(p, disk_size, start, size, why))
    return -EINVAL;
  if (p->outer_size != 0
      && (p->outer_start < 0 || p->outer_size < 0
          || p->start < p->outer_start
          || p->size > p->outer_size - (p->start - p->outer_start))) {
    *why = "it lies outside the partition that holds it (the extended "
      "partition, or the slice of a nested label)";
    return -EINVAL;
  }
  return 0;
}

/* Is parts[j] the slice whose nested label gave parts[k] (which may then
 * overlap it)?  Only a slice, never an extended partition: a logical
 * overlaps nothing shown.  A range that is also an extended entry's is a
 * logical's outer partition, whatever else repeats it. */
static bool
is_slice_of(const struct fde_part_entry *parts, size_t nparts, size_t j,
            size_t k)
{
  const struct fde_part_entry *o = &parts[k];

  if (o->outer_size <= 0 || parts[j].extended
      || parts[j].start != o->outer_start || parts[j].size != o->outer_size)
    return false;
  for (size_t x = 0; x < nparts; x++)
    if (parts[x].extended && parts[x].start == o->outer_start
        && parts[x].size == o->outer_size)
      return false;
  return true;
}

int
fde_partition_entry_check(const struct fde_part_entry *parts, size_t nparts,
                          size_t i, uint64_t disk_size, uint64_t *start,
                          uint64_t *size, const char **why)
{
  /* Two windows on the same sectors would be two file systems' worth of
   * writes to one place: of overlapping entries the earlier accepted one
   * wins, as it is shown first; an entry refused for any reason knocks
   * nothing out.  So decide the entries in order up to i. */
  uint64_t ks[MAX_PARTS], kn[MAX_PARTS];
  bool shown[MAX_PARTS];

  *why = NULL;
  if (i >= nparts || i >= MAX_PARTS) {
    *why = i >= nparts ? "no such entry"
      : "the table holds more than 256 partitions";
    return -EINVAL;
  }
  for (size_t k = 0; k <= i; k++) {
    const char *kwhy = NULL;
    int r = entry_alone(parts, k, disk_size, &ks[k], &kn[k], &kwhy);
    bool has_slice = false, slice_shown = false;
    for (size_t j = 0; r == 0 && j < k; j++) {
      bool slice = is_slice_of(parts, nparts, j, k);
      has_slice |= slice;
      slice_shown |= slice && shown[j];
      if (shown[j] && !slice && ks[j] < ks[k] + kn[k]
          && ks[k] < ks[j] + kn[j]) {
        kwhy = "it overlaps an earlier partition of the table";
        r = -EINVAL;
      }
    }
    /* a nested label read from a slice that is not shown decides nothing
     * (its sectors may be another partition's) */
    if (r == 0 && has_slice && !slice_shown) {
      kwhy = "the partition holding its label is not shown";
      r = -EINVAL;
    }
    shown[k] = r == 0;
    if (k == i) {
      *why = kwhy;
      if (r == 0) {
        *start = ks[k];
        *size = kn[k];
      }
      return r;
    }
  }
  return -EINVAL;               /* not reached */
}

int
fde_partition_pick(const struct fde_part_entry *parts, size_t nparts,
                   uint64_t disk_size, unsigned n, uint64_t *start,
                   uint64_t *size, const char **why)
{
  size_t i;

  *why = NULL;
  for (i = 0; i < nparts; i++)
    if (parts[i].partno >= 0 && (unsigned) parts[i].partno == n)
      break;
  if (i == nparts) {
    *why = "no such partition";
    return -ENOENT;
  }
  return fde_partition_entry_check(parts, nparts, i, disk_size, start, size,
                                   why);
}

/* The table is read by fde_partition_table_read (blkid-view.c: how
 * libblkid reads the virtual disk without a descriptor on it). */
int
fde_partition_find(struct fde_disk *lower, const char *image, unsigned n,
                   uint64_t *start, uint64_t *size)
{
  struct fde_part_entry *parts;
  size_t nparts;
  const char *why;
  char type[32];
  int r = fde_partition_table_read(lower, &parts, &nparts, type, sizeof type);

  if (r < 0) {
    fde_error("%s: partition %u: cannot read the partition table: %s",
              image, n, strerror(-r));
    return r;
  }
  if (nparts == 0) {
    fde_error("%s: partition %u: libblkid finds no partition table it "
              "accepts (none, or one that fails its checks, such as a GPT "
              "with a bad CRC)", image, n);
    return -ENOENT;
  }
  r = fde_partition_pick(parts, nparts, lower->size, n, start, size, &why);
  if (r < 0)
    fde_error("%s: partition %u: %s (%s partition table)", image, n, why,
              type[0] ? type : "unknown");
  free(parts);
  return r;
}
