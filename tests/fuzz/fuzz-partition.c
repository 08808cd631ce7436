/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: libFuzzer harness for the layer that turns a
 * partition table, as libblkid reads it, into a window on the disk
 * (formats/partition.c).
 *
 * The input is the disk itself (an MBR, EBR chains, GPT headers and
 * entries, any other label libblkid reads), followed by a virtual size
 * derived from its hash (zeros past the input), so that backup GPTs and
 * entries past the end are reached.  An input that starts with "FDESPARS"
 * is a sparse disk instead: records of an offset (8 bytes, little-endian,
 * taken modulo SPARSE_SPAN), a length (4 bytes) and that many bytes, laid
 * over zeros in order, so that tables lie past the first and last MiB
 * that fde_partition_table_read copies whole (EBR chains, GPT entry arrays
 * and nested labels far into the disk).  The disk is held in memory by a
 * backend that aborts on any call outside it.
 *
 * The table is read once with fde_partition_table_read and every entry
 * passed through fde_partition_entry_check (what the directory view
 * shows): the accepted windows must lie inside the disk, be non-empty and
 * pairwise disjoint, with unique numbers 1..256; every refusal is -EINVAL
 * with a reason.  fde_partition_pick (what --partition=N uses) must agree
 * with entry_check on the first entry numbered N for every N in the table
 * and a few that are not, and fde_partition_find (the table read plus
 * pick, with its one message) with pick.  Each window given is then read,
 * zeroed and asked for its status.  With FDE_FUZZ_COPY_DIFFS or
 * FDE_FUZZ_STRICT_COPY set, the table read is also compared with libblkid
 * on the whole disk (check_copy). */
#include "fuzz-common.h"
#include "layer.h"

#include <blkid.h>

int LLVMFuzzerInitialize(int *argc, char **argv[]);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define SPARSE_MAGIC "FDESPARS"
#define SPARSE_SPAN (192ull << 20)  /* offsets wrap: disks stay small */
#define MAX_CHUNKS 64

/* A run of input bytes at an offset of the disk. */
struct chunk {
  uint64_t off;
  const uint8_t *data;
  size_t len;
};

struct mem_disk {
  struct fde_disk disk;
  struct chunk chunk[MAX_CHUNKS];  /* laid over zeros in order */
  size_t nchunks;
  const uint8_t *data;          /* the whole input, for its hash */
  size_t size;
  uint64_t len;                 /* the end of the last chunk; zeros from
                                 * there to disk.size */
};

#define MEM(d) ((struct mem_disk *) (d))

static void
in_disk(struct fde_disk *d, uint64_t off, uint64_t len, const char *what)
{
  if (off > d->size || len > d->size - off)
    fuzz_fail("%s outside the disk: %llu+%llu of %llu", what,
              (unsigned long long) off, (unsigned long long) len,
              (unsigned long long) d->size);
}

/* Lay the input out as chunks: the whole input at 0, or the records of
 * a sparse one. */
static void
parse_input(struct mem_disk *m, const uint8_t *data, size_t size)
{
  size_t pos = sizeof SPARSE_MAGIC - 1;

  m->data = data;
  m->size = size;
  if (size < pos || memcmp(data, SPARSE_MAGIC, pos) != 0) {
    m->chunk[0] = (struct chunk) { 0, data, size };
    m->nchunks = 1;
    m->len = size;
    return;
  }
  while (m->nchunks < MAX_CHUNKS && size - pos >= 12) {
    uint64_t off = 0;
    uint32_t len = 0;
    for (int i = 7; i >= 0; i--)
      off = off << 8 | data[pos + i];
    for (int i = 3; i >= 0; i--)
      len = len << 8 | data[pos + 8 + i];
    pos += 12;
    if (len > size - pos)
      len = (uint32_t) (size - pos);
    off %= SPARSE_SPAN;
    m->chunk[m->nchunks++] = (struct chunk) { off, data + pos, len };
    if (off + len > m->len)
      m->len = off + len;
    pos += len;
  }
}

static int
mem_pread(struct fde_disk *d, void *buf, size_t len, uint64_t off)
{
  struct mem_disk *m = MEM(d);

  in_disk(d, off, len, "pread");
  memset(buf, 0, len);
  for (size_t i = 0; i < m->nchunks; i++) {
    const struct chunk *c = &m->chunk[i];
    if (c->off >= off + len || off >= c->off + c->len)
      continue;
    uint64_t from = c->off > off ? c->off : off;
    uint64_t to = c->off + c->len < off + len ? c->off + c->len : off + len;
    memcpy((uint8_t *) buf + (from - off), c->data + (from - c->off),
           (size_t) (to - from));
  }
  return 0;
}

static int
mem_zero(struct fde_disk *d, uint64_t off, uint64_t len, unsigned flags)
{
  (void) flags;
  in_disk(d, off, len, "zero");
  return 0;                     /* the input stays as it is */
}

static int
mem_block_status(struct fde_disk *d, uint64_t off, uint64_t len,
                 uint64_t *run, unsigned *status)
{
  in_disk(d, off, len, "block_status");
  *run = len;
  *status = off < MEM(d)->len ? FDE_BS_DATA : FDE_BS_ZERO;
  if (off < MEM(d)->len && MEM(d)->len - off < len)
    *run = MEM(d)->len - off;
  return 0;
}

static int
mem_flush(struct fde_disk *d)
{
  (void) d;
  return 0;
}

static uint64_t
mem_allocated(struct fde_disk *d)
{
  return MEM(d)->len;           /* an upper bound: enough here */
}

static void
mem_describe(struct fde_disk *d, FILE *out)
{
  (void) d;
  (void) out;
}

static void
mem_close(struct fde_disk *d)
{
  (void) d;                     /* on the stack */
}

static const struct fde_format mem_format = {
  .name = "mem", .pread = mem_pread, .zero = mem_zero, .flush = mem_flush,
  .block_status = mem_block_status, .allocated_bytes = mem_allocated,
  .describe = mem_describe, .close = mem_close,
};

static uint8_t buf[4096];

int
LLVMFuzzerInitialize(int *argc, char **argv[])
{
  int fd = fcntl(2, F_DUPFD_CLOEXEC, 3);

  (void) argc;
  (void) argv;
  if (fd != -1)
    fuzz_err_fd = fd;
  return 0;
}

/* Use the window on partition n: reads at both ends, a zeroing, status. */
static void
use_window(struct mem_disk *m, unsigned n, uint64_t start, uint64_t size)
{
  struct fde_disk *w;
  uint64_t run, len = size < sizeof buf ? size : sizeof buf;
  unsigned status;

  if (size == 0 || start > m->disk.size || size > m->disk.size - start)
    fuzz_fail("partition %u: window %llu+%llu outside the disk of %llu", n,
              (unsigned long long) start, (unsigned long long) size,
              (unsigned long long) m->disk.size);
  if (fde_partition_open(&m->disk, n, start, size, &w) != 0)
    fuzz_fail("partition %u: a checked window was refused", n);
  if (w->size != size)
    fuzz_fail("partition %u: window of the wrong size", n);
  fuzz_check_ret(w->format->pread(w, buf, (size_t) len, 0), "pread");
  fuzz_check_ret(w->format->pread(w, buf, (size_t) len, size - len), "pread");
  fuzz_check_ret(w->format->zero(w, size - len, len, FDE_ZERO_PUNCH), "zero");
  fuzz_check_ret(w->format->block_status(w, 0, size, &run, &status),
                 "block_status");
  if (run == 0 || run > size)
    fuzz_fail("partition %u: block_status run %llu of %llu", n,
              (unsigned long long) run, (unsigned long long) size);
  (void) w->format->allocated_bytes(w);
  fde_disk_close(w);            /* closes m too: a no-op */
}

#define MAX_NUMBER 256          /* Linux's limit, and entry_check's */

/* The oracle for fde_partition_table_read, which lets libblkid read only
 * the sectors it copied: libblkid itself on the whole disk (the chunks
 * over zeros in a sparse memfd).  entry_check judges entry i on entries
 * 0..i alone and refuses all from the 257th on, so the first 256 entries
 * of both lists must be the same (a chain cut at the copy's MAX_EBRS, past
 * them, changes nothing shown).  The difference, if any, goes to diff. */
static void
copy_diff(struct mem_disk *m, const struct fde_part_entry *parts,
          size_t nparts, const char *type, char *diff, size_t diff_len)
{
  int fd = fuzz_memfd(NULL, 0);
  blkid_probe pr = blkid_new_probe();
  blkid_partlist ls = NULL;
  blkid_parttable tab;
  const char *full_type = "";
  int n = 0;

  for (size_t i = 0; i < m->nchunks; i++)
    if (m->chunk[i].len > 0 && fde_pwrite_full(fd, m->chunk[i].data,
                                               m->chunk[i].len,
                                               m->chunk[i].off) < 0)
      fuzz_fail("writing the oracle's memfd failed");
  if (pr == NULL || ftruncate(fd, (off_t) m->disk.size) != 0
      || blkid_probe_set_device(pr, fd, 0, (blkid_loff_t) m->disk.size) != 0)
    fuzz_fail("cannot set up the oracle's probe");
  blkid_probe_enable_superblocks(pr, 0);
  blkid_probe_enable_partitions(pr, 1);
  if (blkid_do_safeprobe(pr) == 0 && (ls = blkid_probe_get_partitions(pr))
      != NULL && (n = blkid_partlist_numof_partitions(ls)) < 0)
    n = 0;
  if (n > 0 && (tab = blkid_partlist_get_table(ls)) != NULL
      && blkid_parttable_get_type(tab) != NULL)
    full_type = blkid_parttable_get_type(tab);
  size_t same = (size_t) n > nparts ? (size_t) n : nparts;
  if (same > MAX_NUMBER)
    same = MAX_NUMBER;
  diff[0] = '\0';
  if ((size_t) n < same || nparts < same)
    snprintf(diff, diff_len, "%zu entries, libblkid on the whole disk %d",
             nparts, n);
  else if (n > 0 && strcmp(type, full_type) != 0)
    snprintf(diff, diff_len, "a %s table, libblkid on the whole disk %s",
             type, full_type);
  for (size_t i = 0; diff[0] == '\0' && i < same; i++) {
    blkid_partition p = blkid_partlist_get_partition(ls, (int) i);
    if (parts[i].partno != blkid_partition_get_partno(p)
        || parts[i].start != blkid_partition_get_start(p)
        || parts[i].size != blkid_partition_get_size(p)
        || parts[i].extended != (blkid_partition_is_extended(p) != 0))
      snprintf(diff, diff_len, "entry %zu is %d %lld+%lld, libblkid on "
               "the whole disk %d %lld+%lld", i, parts[i].partno,
               (long long) parts[i].start, (long long) parts[i].size,
               blkid_partition_get_partno(p),
               (long long) blkid_partition_get_start(p),
               (long long) blkid_partition_get_size(p));
  }
  blkid_free_probe(pr);
  close(fd);
}

/* Compare the table read with the oracle's when asked to: abort on a
 * difference with FDE_FUZZ_STRICT_COPY set; with FDE_FUZZ_COPY_DIFFS=DIR,
 * save the input in DIR (at most 50) and go on, so a long run surveys
 * the differences without stopping at the first. */
static void
check_copy(struct mem_disk *m, const struct fde_part_entry *parts,
           size_t nparts, const char *type)
{
  static unsigned saved;
  bool strict = getenv("FDE_FUZZ_STRICT_COPY") != NULL;
  const char *dir = getenv("FDE_FUZZ_COPY_DIFFS");
  char diff[160], name[4096];
  int out;

  if (!strict && dir == NULL)
    return;
  copy_diff(m, parts, nparts, type, diff, sizeof diff);
  if (diff[0] == '\0')
    return;
  if (strict)
    fuzz_fail("the table read from copied sectors differs: %s", diff);
  if (saved >= 50)
    return;
  snprintf(name, sizeof name, "%s/diff-%016llx", dir,
           (unsigned long long) fuzz_hash(m->data, m->size));
  out = open(name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (out != -1 && fde_pwrite_full(out, m->data, m->size, 0) == 0) {
    saved++;
    dprintf(fuzz_err_fd, "fuzz: copy differs (%s; disk %llu): %s\n", diff,
            (unsigned long long) m->disk.size, name);
  }
  if (out != -1)
    close(out);
}

/* entry_check on every entry of the table: the invariants of what the
 * directory view shows.  Accepted windows go to win[] (by partno). */
static void
check_entries(struct mem_disk *m, const struct fde_part_entry *parts,
              size_t nparts, uint64_t win[][2], bool *shown)
{
  for (size_t i = 0; i < nparts; i++) {
    const struct fde_part_entry *p = &parts[i];
    uint64_t start = 0, len = 0;
    const char *why = "unset";
    int r = fde_partition_entry_check(parts, nparts, i, m->disk.size, &start,
                                      &len, &why);
    if (r != 0) {
      if (r != -EINVAL || why == NULL)
        fuzz_fail("entry %zu (partition %d): refused with %d, why %s", i,
                  p->partno, r, why ? why : "NULL");
      continue;
    }
    if (why != NULL)
      fuzz_fail("entry %zu: accepted with a reason: %s", i, why);
    if (i >= MAX_NUMBER || p->partno < 1 || p->partno > MAX_NUMBER
        || p->extended)
      fuzz_fail("entry %zu: partition %d (extended %d) accepted", i,
                p->partno, p->extended);
    if (len == 0 || start >= m->disk.size || len > m->disk.size - start)
      fuzz_fail("partition %d: window %llu+%llu outside the disk of %llu",
                p->partno, (unsigned long long) start,
                (unsigned long long) len,
                (unsigned long long) m->disk.size);
    if (start != (uint64_t) p->start * 512 || len != (uint64_t) p->size * 512)
      fuzz_fail("partition %d: window %llu+%llu is not entry %zu's", p->partno,
                (unsigned long long) start, (unsigned long long) len, i);
    if (shown[p->partno])
      fuzz_fail("partition %d accepted twice", p->partno);
    /* a partition lies inside its outer one (extended, or the slice of a
     * nested label) and overlaps no shown partition but that one */
    uint64_t ostart = (uint64_t) p->outer_start * 512;
    uint64_t olen = (uint64_t) p->outer_size * 512;
    if (p->outer_size != 0 && (p->outer_size < 0 || start < ostart
                               || len > olen - (start - ostart)))
      fuzz_fail("partition %d lies outside its outer partition", p->partno);
    for (int k = 1; k <= MAX_NUMBER; k++)
      if (shown[k] && win[k][0] < start + len && start < win[k][0] + win[k][1]
          && !(p->outer_size > 0 && win[k][0] == ostart && win[k][1] == olen))
        fuzz_fail("partitions %d and %d overlap", k, p->partno);
    shown[p->partno] = true;
    win[p->partno][0] = start;
    win[p->partno][1] = len;
  }
}

/* pick(n) agrees with entry_check on the first entry numbered n (-ENOENT
 * if none); returns its result, the window in *start, *len. */
static int
check_pick(struct mem_disk *m, const struct fde_part_entry *parts,
           size_t nparts, unsigned n, uint64_t *start, uint64_t *len)
{
  uint64_t cs = 0, cl = 0;
  const char *why = "unset", *cwhy = "no such partition";
  int cr = -ENOENT;
  int r = fde_partition_pick(parts, nparts, m->disk.size, n, start, len,
                             &why);

  for (size_t i = 0; i < nparts; i++)
    if (parts[i].partno >= 0 && (unsigned) parts[i].partno == n) {
      cr = fde_partition_entry_check(parts, nparts, i, m->disk.size, &cs, &cl,
                                     &cwhy);
      break;
    }
  if (r != cr || (r == 0 && (*start != cs || *len != cl)))
    fuzz_fail("partition %u: pick says %d (%llu+%llu), entry_check %d "
              "(%llu+%llu)", n, r, (unsigned long long) *start,
              (unsigned long long) *len, cr, (unsigned long long) cs,
              (unsigned long long) cl);
  if ((r == 0) != (why == NULL))
    fuzz_fail("partition %u: pick returned %d with why %s", n, r,
              why ? why : "NULL");
  return r;
}

/* --partition=N for every number in the table and a few others: pick
 * agrees with entry_check and the table walk; each window is used. */
static void
check_numbers(struct mem_disk *m, const struct fde_part_entry *parts,
              size_t nparts, const bool *shown)
{
  static const unsigned numbers[] = { 1, 2, 3, 4, 5, 6, 7, 9, 128, 256, 257 };

  for (size_t i = 0; i < nparts + sizeof numbers / sizeof numbers[0]; i++) {
    unsigned n = i < nparts ? (unsigned) parts[i].partno
      : numbers[i - nparts];
    uint64_t start = 0, len = 0;
    if (i < nparts && parts[i].partno < 0)
      continue;
    bool picked = check_pick(m, parts, nparts, n, &start, &len) == 0;
    if (n <= MAX_NUMBER && shown[n] != picked)
      fuzz_fail("partition %u: pick and the table walk disagree", n);
    if (picked)
      use_window(m, n, start, len);
  }
}

/* fde_partition_find (the table read again, and pick) says what pick
 * said on the first read, for a random number and one of the table's. */
static void
check_find(struct mem_disk *m, const struct fde_part_entry *parts,
           size_t nparts, uint64_t *rng)
{
  for (int k = 0; k < 2; k++) {
    unsigned n = k == 0 || nparts == 0
      ? (unsigned) (fuzz_next(rng) % 300) + 1
      : (unsigned) parts[fuzz_next(rng) % nparts].partno;
    uint64_t start = 0, len = 0, ps = 0, pl = 0;
    int fr = fde_partition_find(&m->disk, "fuzz", n, &start, &len);
    int pr = check_pick(m, parts, nparts, n, &ps, &pl);
    fuzz_check_ret(fr, "fde_partition_find");
    if (fr != pr || (fr == 0 && (start != ps || len != pl)))
      fuzz_fail("partition %u: find says %d, pick %d", n, fr, pr);
  }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  uint64_t rng = fuzz_hash(data, size);
  struct mem_disk m = {
    .disk = { .format = &mem_format, .read_only = true, .path = "fuzz" },
  };
  static uint64_t win[MAX_NUMBER + 1][2];
  bool shown[MAX_NUMBER + 1] = { false };
  struct fde_part_entry *parts;
  size_t nparts;
  char type[32];
  int fds = fuzz_count_fds();

  /* the input, sometimes followed by zeros up to 64 MiB */
  parse_input(&m, data, size);
  m.disk.size = m.len + ((rng & 1) ? fuzz_next(&rng) % (64u << 20) : 0);
  memset(type, 'x', sizeof type);
  int r = fde_partition_table_read(&m.disk, &parts, &nparts, type,
                                   sizeof type);
  fuzz_check_ret(r, "fde_partition_table_read");
  if (r < 0)                    /* the disk in memory never fails */
    fuzz_fail("the table read failed: %d", r);
  if (memchr(type, '\0', sizeof type) == NULL)
    fuzz_fail("the table type is not a string");
  if (nparts > 0 && type[0] == '\0')
    fuzz_fail("%zu entries in a table of no type", nparts);
  check_copy(&m, parts, nparts, type);
  check_entries(&m, parts, nparts, win, shown);
  check_numbers(&m, parts, nparts, shown);
  check_find(&m, parts, nparts, &rng);
  free(parts);
  if (fuzz_count_fds() != fds)
    fuzz_fail("file descriptor leak");
  return 0;
}
