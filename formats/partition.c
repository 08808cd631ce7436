/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: the partition window layer, and finding a partition
 * with libblkid on the virtual disk's bytes (see layer.h). */
#include <config.h>

#include <blkid.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
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
window_zero(struct fde_disk *d, uint64_t off, uint64_t len, bool punch)
{
  __atomic_store_n(&to_window(d)->alloc_stale, true, __ATOMIC_RELAXED);
  return LOWER(d)->format->zero(LOWER(d), SHIFT(d, off), len, punch);
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
  uint64_t pos = 0, total = 0, run;
  unsigned status;

  while (pos < d->size) {
    if (window_block_status(d, pos, d->size - pos, &run, &status) < 0)
      return total;
    if (run == 0 || run > d->size - pos)
      run = d->size - pos;      /* never loop on a backend's bad answer */
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
  fprintf(out, "partition-size: %" PRIu64 "\n", d->size);
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

int
fde_partition_entry_check(const struct fde_part_entry *parts, size_t nparts,
                          size_t i, uint64_t disk_size, uint64_t *start,
                          uint64_t *size, const char **why)
{
  const struct fde_part_entry *p = &parts[i];

  *why = NULL;
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
  for (size_t k = 0; k < i && k < nparts; k++) {
    const struct fde_part_entry *q = &parts[k];
    if (q->partno == p->partno) {
      *why = "its number is given to an earlier entry too";
      return -EINVAL;
    }
    if (q->start == p->start && q->size == p->size && !q->extended) {
      *why = "it repeats an earlier entry (the extended partition chain "
        "loops)";
      return -EINVAL;
    }
  }
  if (p->start < 0 || p->size < 0 || (uint64_t) p->start > UINT64_MAX / SECTOR
      || (uint64_t) p->size > UINT64_MAX / SECTOR) {
    *why = "its start or size is out of range";
    return -EINVAL;
  }
  *start = (uint64_t) p->start * SECTOR;
  *size = (uint64_t) p->size * SECTOR;
  *why = fde_window_check(disk_size, *start, *size);
  return *why != NULL ? -EINVAL : 0;
}

int
fde_partition_pick(const struct fde_part_entry *parts, size_t nparts,
                   uint64_t disk_size, unsigned n, uint64_t *start,
                   uint64_t *size, const char **why)
{
  size_t i;

  *why = NULL;
  if (nparts > MAX_PARTS) {
    *why = "the table holds more than 256 partitions";
    return -EINVAL;
  }
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

/* ---- Letting libblkid read the virtual disk ------------------------------
 *
 * libblkid reads only through a file descriptor of a regular file or
 * block device at least as large as the area probed (lseek and read; 2.38
 * has no read callback and no buffer interface), and the virtual disk has
 * no descriptor before the view is mounted; the daemon must never read
 * its own mount (a request in flight at SIGKILL would never be answered),
 * and /proc/self/mem is refused (its size is 0).  So libblkid reads a
 * memfd as large as the disk, sparse, into which the sectors a partition
 * table lives in have been copied from the disk first:
 *
 *  - the first and the last MiB (MBR, GPT header and entries at their
 *    usual places, the backup GPT, BSD, Sun, SGI, Mac, AIX and Atari
 *    labels, which libblkid looks for there);
 *  - GPT entry arrays wherever the primary and backup headers put them;
 *  - every EBR of the extended chain, followed as libblkid follows it
 *    (at most MAX_EBRS, stopping at a loop);
 *  - the first 64 KiB of every MBR partition (where libblkid looks for
 *    nested BSD, Solaris, UnixWare and Minix labels).
 *
 * Copying decides nothing: libblkid alone says what the table holds; a
 * sector it reads that was not copied reads as zeros, which can only make
 * a table look shorter (an entry missing), never put an entry elsewhere.
 * Sectors are 512 bytes, as for a loop device: a table written for
 * 4096-byte sectors is not found. */

#define HEAD_TAIL (1u << 20)
#define NESTED (64u << 10)
#define MAX_EBRS 1024
#define MAX_ENTRIES_BYTES (4u << 20)

static uint16_t get16(const uint8_t *p) { return (uint16_t) (p[0] | p[1] << 8); }
static uint32_t get32(const uint8_t *p) { return get16(p) | (uint32_t) get16(p + 2) << 16; }
static uint64_t get64(const uint8_t *p) { return get32(p) | (uint64_t) get32(p + 4) << 32; }

/* Copy [off, off + len) of the disk, clipped to it, into the memfd. */
static int
copy_range(struct fde_disk *disk, int memfd, uint64_t off, uint64_t len)
{
  uint8_t buf[64 << 10];

  if (off >= disk->size)
    return 0;
  if (len > disk->size - off)
    len = disk->size - off;
  while (len > 0) {
    size_t n = len < sizeof buf ? (size_t) len : sizeof buf;
    int r = disk->format->pread(disk, buf, n, off);
    if (r < 0 || (r = fde_pwrite_full(memfd, buf, n, off)) < 0)
      return r;
    off += n;
    len -= n;
  }
  return 0;
}

/* Read one copied sector back (zeros if outside the disk). */
static int
copied_sector(struct fde_disk *disk, int memfd, uint64_t lba,
              uint8_t sec[SECTOR])
{
  memset(sec, 0, SECTOR);
  if (lba >= disk->size / SECTOR)
    return 0;
  return fde_pread_full(memfd, sec, SECTOR, lba * SECTOR);
}

/* The GPT header at lba (if it is one): copy its entry array. */
static int
copy_gpt_entries(struct fde_disk *disk, int memfd, uint64_t lba)
{
  uint8_t h[SECTOR];
  int r = copy_range(disk, memfd, lba * SECTOR, SECTOR);

  if (r < 0 || (r = copied_sector(disk, memfd, lba, h)) < 0)
    return r;
  if (memcmp(h, "EFI PART", 8) != 0)
    return 0;
  uint64_t entries = get64(h + 72);
  uint64_t bytes = (uint64_t) get32(h + 80) * get32(h + 84);
  if (entries > disk->size / SECTOR)
    return 0;
  if (bytes > MAX_ENTRIES_BYTES)
    bytes = MAX_ENTRIES_BYTES;
  if ((r = copy_range(disk, memfd, entries * SECTOR, bytes)) < 0)
    return r;
  uint64_t alternate = get64(h + 32);
  if (alternate != lba && lba == 1 && alternate < disk->size / SECTOR)
    return copy_gpt_entries(disk, memfd, alternate);
  return 0;
}

static bool
is_extended(uint8_t type)
{
  return type == 0x05 || type == 0x0f || type == 0x85;
}

/* Copy the EBRs of the chain starting at ext (an LBA), and the first
 * NESTED bytes of each logical partition. */
static int
copy_ebr_chain(struct fde_disk *disk, int memfd, uint64_t ext)
{
  uint64_t seen[MAX_EBRS], cur = ext;
  uint8_t sec[SECTOR];
  int r;

  for (unsigned n = 0; n < MAX_EBRS; n++) {
    for (unsigned i = 0; i < n; i++)
      if (seen[i] == cur)
        return 0;               /* a loop: libblkid decides what it is */
    seen[n] = cur;
    if ((r = copy_range(disk, memfd, cur * SECTOR, SECTOR)) < 0
        || (r = copied_sector(disk, memfd, cur, sec)) < 0)
      return r;
    if (get16(sec + 510) != 0xaa55)
      return 0;
    uint64_t next = 0;
    for (int i = 0; i < 4; i++) {
      const uint8_t *e = sec + 446 + 16 * i;
      uint64_t start = get32(e + 8);
      if (e[4] == 0 || get32(e + 12) == 0)
        continue;
      if (is_extended(e[4]))
        next = ext + start;
      else if ((r = copy_range(disk, memfd, (cur + start) * SECTOR,
                               NESTED)) < 0)
        return r;
    }
    if (next == 0)
      return 0;
    cur = next;
  }
  return 0;
}

/* Copy into memfd what libblkid reads to find a partition table. */
static int
copy_table_sectors(struct fde_disk *disk, int memfd)
{
  uint8_t mbr[SECTOR];
  uint64_t tail = disk->size > HEAD_TAIL ? disk->size - HEAD_TAIL : 0;
  int r;

  if ((r = copy_range(disk, memfd, 0, HEAD_TAIL)) < 0
      || (r = copy_range(disk, memfd, tail, HEAD_TAIL)) < 0
      || (r = copy_gpt_entries(disk, memfd, 1)) < 0
      || (disk->size >= 2 * SECTOR
          && (r = copy_gpt_entries(disk, memfd,
                                   disk->size / SECTOR - 1)) < 0)
      || (r = copied_sector(disk, memfd, 0, mbr)) < 0)
    return r;
  if (get16(mbr + 510) != 0xaa55)
    return 0;
  for (int i = 0; i < 4; i++) {
    const uint8_t *e = mbr + 446 + 16 * i;
    uint64_t start = get32(e + 8);
    if (e[4] == 0 || get32(e + 12) == 0)
      continue;
    if (is_extended(e[4]))
      r = copy_ebr_chain(disk, memfd, start);
    else
      r = copy_range(disk, memfd, start * SECTOR, NESTED);
    if (r < 0)
      return r;
  }
  return 0;
}

/* Probe the memfd for partitions only; the entries in *parts (malloc'd,
 * *nparts of them; none if no table) and the table type in type (empty
 * if none).  0 or -errno. */
static int
probe_parts(int memfd, uint64_t size, struct fde_part_entry **parts,
            size_t *nparts, char *type, size_t type_len)
{
  blkid_probe pr = blkid_new_probe();
  blkid_partlist ls;
  int r = -ENOMEM, n;

  *parts = NULL;
  *nparts = 0;
  type[0] = '\0';
  if (pr == NULL)
    return r;
  if (blkid_probe_set_device(pr, memfd, 0, (blkid_loff_t) size) != 0) {
    r = -EIO;
    goto out;
  }
  blkid_probe_enable_superblocks(pr, 0);
  blkid_probe_enable_partitions(pr, 1);
  r = 0;
  if (blkid_do_safeprobe(pr) != 0 || (ls = blkid_probe_get_partitions(pr))
      == NULL || (n = blkid_partlist_numof_partitions(ls)) <= 0)
    goto out;
  blkid_parttable tab = blkid_partlist_get_table(ls);
  if (tab != NULL && blkid_parttable_get_type(tab) != NULL)
    snprintf(type, type_len, "%s", blkid_parttable_get_type(tab));
  if ((*parts = calloc((size_t) n, sizeof **parts)) == NULL) {
    r = -ENOMEM;
    goto out;
  }
  for (int i = 0; i < n; i++) {
    blkid_partition p = blkid_partlist_get_partition(ls, i);
    (*parts)[i] = (struct fde_part_entry) {
      .partno = blkid_partition_get_partno(p),
      .start = blkid_partition_get_start(p),
      .size = blkid_partition_get_size(p),
      .extended = blkid_partition_is_extended(p) != 0,
    };
  }
  *nparts = (size_t) n;
out:
  blkid_free_probe(pr);
  return r;
}

int
fde_partition_table_read(struct fde_disk *disk, struct fde_part_entry **parts,
           size_t *nparts, char *type, size_t type_len)
{
  int memfd = memfd_create("fde-partition-table", MFD_CLOEXEC);
  int r;

  *parts = NULL;
  *nparts = 0;
  if (memfd == -1)
    return -errno;
  if (disk->size > INT64_MAX || ftruncate(memfd, (off_t) disk->size) == -1)
    r = disk->size > INT64_MAX ? -EFBIG : -errno;
  else if ((r = copy_table_sectors(disk, memfd)) == 0)
    r = probe_parts(memfd, disk->size, parts, nparts, type, type_len);
  close(memfd);
  return r;
}

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
