/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: qcow2 backend — refcounts and cluster allocation.
 *
 * Refcount entries are read and written straight from the image file (the
 * host page cache is the cache): an allocation changes a few bytes of one
 * refblock, written before the data and long before the L2 entry that will
 * reference the cluster (qcow2-write.c), so a crash leaves leaks at worst.
 *
 * Allocation takes a cluster from the free map -- clusters the
 * consistency scan (qcow2-check.c) found free at open, and clusters freed
 * during the session once nothing can still be using them (below) -- and
 * otherwise appends at next_free, which starts at the end of the file
 * and steps over any cluster past it that has a refcount.
 *
 * Reuse of freed clusters, as QEMU does, with grace periods in the manner
 * of RCU.  Every operation that uses a host offset it got from the mapping
 * -- qcow2_pread, an in-place write, a spliced read reply between the
 * format's io_begin and io_end -- is counted, while it runs, in
 * io_count[g] of the generation g that was current when it started
 * (qcow2_io_enter).  A cluster whose refcount drops to 0 goes on the
 * "freed" list; qcow2_recycle_freed (at the end of every flush, and when
 * an allocation finds the free map empty) moves the freed list to
 * "waiting" and flips io_gen, and waiting clusters are punched out of the
 * file and become allocatable once io_count of the old generation has
 * dropped to 0: every operation that could have mapped them before they
 * were unlinked has then finished, and operations that started since see
 * the tables without them.  Nothing waits: a grace period that has not
 * ended is looked at again later, so a flush inside an operation (or a
 * stuck reader) delays reuse but never deadlocks.  Frees are applied only
 * after the tables that dropped the references are durable (the flush in
 * qcow2-write.c, grow_reftable here), so a reused cluster is never still
 * named by a table on disk; a write that would extend the file while many
 * frees wait runs that flush first (flush_to_reuse there).
 *
 * Caches keyed by host offset: the L2 cache forgets a freed cluster before
 * it becomes allocatable (qcow2_l2_forget).  The decompressed-cluster
 * cache (qcow2-compress.c) needs nothing: it is keyed by whole compressed
 * descriptors, this program never writes a compressed cluster, so no
 * descriptor naming a reused range can appear in the session, and a
 * reader that still holds an old one is inside its grace period.
 *
 * Except for qcow2_io_enter/qcow2_io_leave, every function here is called
 * with q->alloc_lock held. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/falloc.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "format.h"
#include "qcow2.h"

#define REFT_OFFSET_MASK   0xfffffffffffffe00ull
#define REFT_RESERVED_MASK 0x1ffull

static unsigned
refcount_bits(const struct qcow2_disk *q)
{
  return 1u << q->refcount_order;
}

/* Entries per refblock (one cluster of refcount_bits-wide entries). */
static uint64_t
refblock_entries(const struct qcow2_disk *q)
{
  return ((uint64_t) q->cluster_size * 8) >> q->refcount_order;
}

static uint64_t
refcount_max(const struct qcow2_disk *q)
{
  unsigned bits = refcount_bits(q);

  return bits == 64 ? UINT64_MAX : (1ull << bits) - 1;
}

/* Decode entry i of a refblock fragment that starts at entry first. */
static uint64_t
get_entry(const struct qcow2_disk *q, const uint8_t *buf, uint64_t i)
{
  unsigned bits = refcount_bits(q);
  uint64_t v = 0;

  if (bits < 8)
    return (buf[i * bits / 8] >> (i * bits % 8)) & ((1u << bits) - 1);
  for (unsigned b = 0; b < bits / 8; b++)
    v = (v << 8) | buf[i * (bits / 8) + b];
  return v;
}

static void
set_entry(const struct qcow2_disk *q, uint8_t *buf, uint64_t i, uint64_t v)
{
  unsigned bits = refcount_bits(q);

  if (bits < 8) {
    unsigned shift = i * bits % 8, mask = ((1u << bits) - 1) << shift;
    buf[i * bits / 8] = (uint8_t) ((buf[i * bits / 8] & ~mask)
                                   | ((v << shift) & mask));
    return;
  }
  for (unsigned b = bits / 8; b-- > 0; v >>= 8)
    buf[i * (bits / 8) + b] = (uint8_t) v;
}

/* Load and check the refcount table (trap 11: size and offset were checked
 * with the header; entries are checked here). */
int
qcow2_refs_load(struct qcow2_disk *q, uint64_t offset, uint32_t clusters)
{
  uint64_t n = (uint64_t) clusters * q->cluster_size / 8;
  int r;

  q->reftable = malloc(n * 8);
  if (q->reftable == NULL)
    return -ENOMEM;
  r = fde_pread_full(q->fd, q->reftable, n * 8, offset);
  if (r < 0) {
    fde_error("%s: reading the refcount table: %s", q->disk.path,
              strerror(-r));
    return r;
  }
  for (uint64_t i = 0; i < n; i++) {
    uint64_t e = be64toh(q->reftable[i]);
    uint64_t rb = e & REFT_OFFSET_MASK;
    if ((e & REFT_RESERVED_MASK) || !qcow2_is_cluster_aligned(q, rb)
        || rb > q->file_size || q->file_size - rb < q->cluster_size) {
      fde_error("%s: refcount table entry %" PRIu64 " (%#" PRIx64 ") is "
                "invalid", q->disk.path, i, e);
      return -EINVAL;
    }
    q->reftable[i] = rb;
  }
  q->reftable_offset = offset;
  q->reftable_clusters = clusters;
  q->reftable_entries = n;
  return 0;
}

/* Read or write the refcounts of clusters [first, first+n), all in one
 * refblock, as a byte span of the file.  buf holds the span, and *skip
 * the bit index of entry first inside it. */
static int
refblock_span(const struct qcow2_disk *q, uint64_t first, uint64_t n,
              uint64_t *host, size_t *len, uint64_t *index0)
{
  uint64_t rbe = refblock_entries(q);
  uint64_t rt = first / rbe, i0 = first % rbe;
  unsigned bits = refcount_bits(q);

  if (rt >= q->reftable_entries || q->reftable[rt] == 0)
    return 0;
  /* whole bytes covering entries i0..i0+n-1 */
  uint64_t b0 = i0 * bits / 8, b1 = ((i0 + n) * bits + 7) / 8;
  *host = q->reftable[rt] + b0;
  *len = (size_t) (b1 - b0);
  *index0 = i0 - b0 * 8 / bits;
  return 1;
}

/* Refcount of one cluster (0 where no refblock covers it). */
int
qcow2_refcount_get(struct qcow2_disk *q, uint64_t cluster, uint64_t *rc)
{
  uint8_t buf[8];
  uint64_t host, i;
  size_t len;
  int r;

  *rc = 0;
  if (!refblock_span(q, cluster, 1, &host, &len, &i))
    return 0;
  if ((r = fde_pread_full(q->fd, buf, len, host)) < 0)
    return r;
  *rc = get_entry(q, buf, i);
  return 0;
}

/* Add delta to the refcounts of n clusters inside one refblock that
 * exists.  Refuses to go below 0 or above the maximum (trap 23). */
static int
update_in_refblock(struct qcow2_disk *q, uint64_t first, uint64_t n,
                   int64_t delta)
{
  uint8_t stack[512], *buf = stack;
  uint64_t host, i0;
  size_t len;
  int r;

  if (!refblock_span(q, first, n, &host, &len, &i0))
    return -EIO;
  if (len > sizeof stack && (buf = malloc(len)) == NULL)
    return -ENOMEM;
  if ((r = fde_pread_full(q->fd, buf, len, host)) < 0)
    goto out;
  for (uint64_t i = 0; i < n; i++) {
    uint64_t v = get_entry(q, buf, i0 + i);
    if ((delta < 0 && v < (uint64_t) -delta)
        || (delta > 0 && refcount_max(q) - v < (uint64_t) delta)) {
      qcow2_corruption(q, "refcount of cluster %" PRIu64 " would %s",
                       first + i, delta < 0 ? "drop below 0" : "overflow");
      r = -EIO;
      goto out;
    }
    set_entry(q, buf, i0 + i, v + (uint64_t) delta);
  }
  r = fde_pwrite_full(q->fd, buf, len, host);
out:
  if (buf != stack)
    free(buf);
  return r;
}

/* Write the reftable entry rt (one 8-byte write, as QEMU hooks a new
 * refblock in). */
static int
write_reftable_entry(struct qcow2_disk *q, uint64_t rt)
{
  uint64_t be = htobe64(q->reftable[rt]);

  return fde_pwrite_full(q->fd, &be, 8, q->reftable_offset + rt * 8);
}

/* A new refblock for reftable index rt, placed at cluster next_free, which
 * must lie in rt's own range so the block describes itself. */
static int
new_refblock(struct qcow2_disk *q, uint64_t rt)
{
  uint64_t rbe = refblock_entries(q), c = q->next_free;
  uint8_t *buf;
  int r;

  if (c / rbe != rt)
    return -EIO;                /* callers guarantee this; never guess */
  buf = calloc(1, q->cluster_size);
  if (buf == NULL)
    return -ENOMEM;
  set_entry(q, buf, c % rbe, 1);
  r = fde_pwrite_full(q->fd, buf, q->cluster_size, c << q->cluster_bits);
  free(buf);
  /* The block must be durable before the table points at it. */
  if (r < 0 || (r = fde_io_fdatasync(q->fd)) < 0)
    return r;
  q->reftable[rt] = c << q->cluster_bits;
  if ((r = write_reftable_entry(q, rt)) < 0) {
    /* Not hooked in on disk: forget it, or the next allocation would
     * count in a block the file does not know (and hand out cluster c,
     * the block itself).  A retry writes it again at the same place. */
    q->reftable[rt] = 0;
    return r;
  }
  q->next_free = c + 1;
  return 0;
}

/* Clusters of refblocks and reftable needed to place a new reftable of
 * entries at cluster start, given the refblocks that exist. */
static uint64_t
growth_area(const struct qcow2_disk *q, uint64_t start, uint64_t entries,
            uint64_t *nr_blocks)
{
  uint64_t rbe = refblock_entries(q), cs = q->cluster_size;
  uint64_t table = (entries * 8 + cs - 1) / cs, blocks = 0, prev;

  do {                          /* blocks cover themselves and the table */
    prev = blocks;
    blocks = 0;
    for (uint64_t rt = start / rbe; rt <= (start + prev + table - 1) / rbe;
         rt++)
      if (rt >= q->reftable_entries || q->reftable[rt] == 0)
        blocks++;
  } while (blocks != prev);
  *nr_blocks = blocks;
  return blocks + table;
}

/* Fill the new refblocks (placed first in the area) and the new table. */
static int
write_growth_area(struct qcow2_disk *q, uint64_t start, uint64_t nr_blocks,
                  uint64_t area, uint64_t *table, uint64_t entries)
{
  uint64_t rbe = refblock_entries(q), cs = q->cluster_size, block = start;
  uint8_t *buf = malloc(cs);
  int r = 0;

  if (buf == NULL)
    return -ENOMEM;
  for (uint64_t rt = start / rbe; r == 0 && rt <= (start + area - 1) / rbe;
       rt++) {
    uint64_t lo = rt * rbe > start ? rt * rbe : start;
    uint64_t hi = (rt + 1) * rbe < start + area ? (rt + 1) * rbe
      : start + area;
    if (rt < q->reftable_entries && q->reftable[rt] != 0) {
      r = update_in_refblock(q, lo, hi - lo, 1);
      continue;
    }
    memset(buf, 0, cs);
    for (uint64_t c = lo; c < hi; c++)
      set_entry(q, buf, c % rbe, 1);
    table[rt] = block << q->cluster_bits;
    r = fde_pwrite_full(q->fd, buf, cs, block << q->cluster_bits);
    block++;
  }
  free(buf);
  if (r == 0 && block != start + nr_blocks)
    r = -EIO;
  for (uint64_t i = 0; r == 0 && i < entries; i++)
    table[i] = htobe64(table[i]);
  if (r == 0)
    r = fde_pwrite_full(q->fd, table, entries * 8,
                        (start + nr_blocks) << q->cluster_bits);
  for (uint64_t i = 0; i < entries; i++)
    table[i] = be64toh(table[i]);
  return r;
}

/* Point the header at the new reftable: bytes 48..59 in one write. */
static int
write_reftable_header(struct qcow2_disk *q, uint64_t offset, uint32_t clusters)
{
  uint8_t buf[12];
  uint64_t off_be = htobe64(offset);
  uint32_t n_be = htobe32(clusters);

  memcpy(buf, &off_be, 8);
  memcpy(buf + 8, &n_be, 4);
  return fde_pwrite_full(q->fd, buf, sizeof buf, 48);
}

/* The reftable has no entry for index need: build a larger one at the end
 * of the file together with the refblocks describing it (QEMU's
 * qcow2_refcount_area), switch the header to it, free the old one. */
static int
grow_reftable(struct qcow2_disk *q, uint64_t need)
{
  uint64_t cs = q->cluster_size, start = q->next_free, nr_blocks, area;
  uint64_t entries = q->reftable_entries + q->reftable_entries / 2;
  uint64_t *table, old_off = q->reftable_offset;
  uint32_t old_clusters = q->reftable_clusters;
  int r;

  if (entries <= need)
    entries = need + 1;
  for (;;) {                    /* the area itself must be covered too */
    area = growth_area(q, start, entries, &nr_blocks);
    if ((start + area - 1) / refblock_entries(q) < entries)
      break;
    entries = (start + area) / refblock_entries(q) + 1;
  }
  entries = (entries * 8 + cs - 1) / cs * cs / 8;      /* whole clusters */
  if (entries * 8 > QCOW2_MAX_REFTABLE_BYTES) {
    fde_error("%s: refcount table would exceed %u bytes", q->disk.path,
              QCOW2_MAX_REFTABLE_BYTES);
    return -EFBIG;
  }
  area = growth_area(q, start, entries, &nr_blocks);
  table = calloc(entries, 8);
  if (table == NULL)
    return -ENOMEM;
  memcpy(table, q->reftable, q->reftable_entries * 8);
  r = write_growth_area(q, start, nr_blocks, area, table, entries);
  if (r == 0)
    r = fde_io_fdatasync(q->fd);
  if (r == 0)
    r = write_reftable_header(q, (start + nr_blocks) << q->cluster_bits,
                              (uint32_t) (entries * 8 / cs));
  if (r == 0)
    r = fde_io_fdatasync(q->fd);
  if (r < 0) {
    free(table);
    return r;
  }
  /* Readers check L2 offsets against the table's place under map_lock
   * (qcow2_overlaps_fixed_metadata): swap it under the write side, so
   * that none sees a new offset with an old size.  Everything else here
   * is read only with alloc_lock held. */
  pthread_rwlock_wrlock(&q->map_lock);
  q->reftable_offset = (start + nr_blocks) << q->cluster_bits;
  q->reftable_clusters = (uint32_t) (entries * 8 / cs);
  pthread_rwlock_unlock(&q->map_lock);
  free(q->reftable);
  q->reftable = table;
  q->reftable_entries = entries;
  q->next_free = start + area;
  return qcow2_free_clusters(q, old_off, (uint64_t) old_clusters * cs);
}

/* Make sure a refblock covers cluster next_free. */
static int
cover_next_free(struct qcow2_disk *q)
{
  uint64_t rt = q->next_free / refblock_entries(q);
  int r;

  if (rt >= q->reftable_entries && (r = grow_reftable(q, rt)) < 0)
    return r;
  rt = q->next_free / refblock_entries(q);
  if (q->reftable[rt] == 0)
    return new_refblock(q, rt);
  return 0;
}

/* Readers check table offsets against file_size: keep it past every
 * cluster allocated (refblocks and reftables included). */
static void
grow_file_size(struct qcow2_disk *q)
{
  uint64_t end = q->next_free << q->cluster_bits;

  if (end > q->file_size) {
    pthread_rwlock_wrlock(&q->map_lock);
    q->file_size = end;
    pthread_rwlock_unlock(&q->map_lock);
  }
}

/* A cluster of the free map whose refblock exists: refcount set to 1.
 * 1 and *host if one was found, 0 if none is left, or -errno. */
static int
reuse_free_cluster(struct qcow2_disk *q, uint64_t *host)
{
  uint64_t rbe = refblock_entries(q);

  while (q->free_cursor < q->free_map_clusters) {
    uint64_t c = q->free_cursor, word = q->free_map[c / 64] >> (c % 64);
    if (word == 0) {
      q->free_cursor = (c / 64 + 1) * 64;
      continue;
    }
    c += (uint64_t) __builtin_ctzll(word);
    if (c >= q->free_map_clusters)
      break;
    q->free_map[c / 64] &= ~(1ull << (c % 64));
    q->free_cursor = c + 1;
    if (c / rbe >= q->reftable_entries || q->reftable[c / rbe] == 0)
      continue;                 /* would need a new refblock: append */
    uint64_t rc;
    int r = qcow2_refcount_get(q, c, &rc);
    if (r < 0)
      return r;
    if (rc != 0)                /* taken since open (a refblock, say) */
      continue;
    if ((r = update_in_refblock(q, c, 1, 1)) < 0)
      return r;
    *host = c << q->cluster_bits;
    return 1;
  }
  return 0;
}

/* Allocate one cluster: qcow2_alloc_clusters for one. */
int
qcow2_alloc_cluster(struct qcow2_disk *q, uint64_t *host)
{
  uint64_t got;
  bool appended;

  return qcow2_alloc_clusters(q, 1, host, &got, &appended);
}

/* Allocate up to want (>= 1) clusters, contiguous in the file: a free one
 * (free at open, or freed and past its grace period; one at a time, as
 * the free map hands them out), else a run appended at the end of the
 * file, as long as one refblock covers it, so that one refcount update
 * (one read and one write of its bytes) counts them all.  Their
 * refcounts become 1 (on disk); the first one's offset in *host, their
 * number in *got, and in *appended whether they lie past every byte the
 * file has held (appended at next_free, which starts at the end of the
 * file): such clusters read as zeros until written, a freed one reused
 * may not (its punch may have failed). */
static int counted_runs_from(struct qcow2_disk *q, uint64_t c,
                             uint64_t *free_c, uint64_t *counted);

/* next_free has reached a cluster past the old end of the file that has
 * a refcount: move past it (and any that follow) to the next one without,
 * and find the next that has one.  0 or -errno. */
static int
skip_counted(struct qcow2_disk *q)
{
  uint64_t free_c, counted;
  int r = counted_runs_from(q, q->next_free, &free_c, &counted);

  if (r == 0) {                 /* on failure nothing moves: retried */
    q->next_free = free_c;
    q->next_counted = counted;
  }
  return r;
}

int
qcow2_alloc_clusters(struct qcow2_disk *q, uint64_t want, uint64_t *host,
                     uint64_t *got, bool *appended)
{
  uint64_t rbe = refblock_entries(q), max_clusters, n;
  int r;

  *got = 1;
  *appended = false;
  if ((r = reuse_free_cluster(q, host)) != 0)
    return r < 0 ? r : 0;
  if (q->waiting.nr != 0 || q->freed.nr != 0) {
    qcow2_recycle_freed(q);     /* a grace period may have ended */
    if ((r = reuse_free_cluster(q, host)) != 0)
      return r < 0 ? r : 0;
  }

  max_clusters = QCOW2_MAX_HOST_OFFSET >> q->cluster_bits;
  if (q->next_free > max_clusters)
    return -EFBIG;
  /* A new refblock or reftable takes clusters at next_free, which then
   * needs covering in turn: repeat until a pass leaves next_free where it
   * was.  Each table covers far more clusters than it takes, so a few
   * passes do; the cap only guards against a broken invariant. */
  for (int pass = 0;; pass++) {
    uint64_t before = q->next_free;
    if (pass == 64)
      return -EIO;
    if ((r = cover_next_free(q)) < 0)
      return r;
    if (q->next_free == before)
      break;
  }
  if (q->next_free > max_clusters)      /* the tables took the last ones */
    return -EFBIG;
  if (q->next_free >= q->next_counted) {
    if ((r = skip_counted(q)) < 0)
      return r;
    return qcow2_alloc_clusters(q, want, host, got, appended);  /* again */
  }
  n = rbe - q->next_free % rbe;         /* what its refblock covers */
  if (n > q->next_counted - q->next_free)
    n = q->next_counted - q->next_free;
  if (n > want)
    n = want;
  if (n > max_clusters - q->next_free + 1)
    n = max_clusters - q->next_free + 1;
  if ((r = update_in_refblock(q, q->next_free, n, 1)) < 0)
    return r;
  *host = q->next_free << q->cluster_bits;
  *got = n;
  *appended = true;
  q->next_free += n;
  grow_file_size(q);
  return 0;
}

/* ---- Grace periods and the way back to the free map --------------------- */

unsigned
qcow2_io_enter(struct qcow2_disk *q)
{
  for (;;) {
    unsigned g = atomic_load(&q->io_gen);
    atomic_fetch_add(&q->io_count[g], 1);
    /* Counted in the generation that is still current: the flip that
     * ends it will wait for us.  (Counted after a flip in the old one
     * would only delay reuse; moving over keeps grace periods short.) */
    if (atomic_load(&q->io_gen) == g)
      return g;
    atomic_fetch_sub(&q->io_count[g], 1);
  }
}

void
qcow2_io_leave(struct qcow2_disk *q, unsigned token)
{
  atomic_fetch_sub(&q->io_count[token], 1);
}

/* Append cluster c to runs, extending the last run when c follows it.
 * false when out of memory (c is then never reused in this session:
 * refcount 0 and no reference, it is harmless). */
static bool
runs_add(struct qcow2_runs *runs, uint64_t c)
{
  struct qcow2_run *last = runs->nr ? &runs->run[runs->nr - 1] : NULL;

  if (last != NULL && c == last->first + last->n) {
    last->n++;
    return true;
  }
  if (runs->nr == runs->cap) {
    size_t cap = runs->cap ? runs->cap * 2 : 64;
    struct qcow2_run *r = realloc(runs->run, cap * sizeof *r);
    if (r == NULL)
      return false;
    runs->run = r;
    runs->cap = cap;
  }
  runs->run[runs->nr++] = (struct qcow2_run) { .first = c, .n = 1 };
  return true;
}

void
qcow2_runs_free(struct qcow2_runs *runs)
{
  free(runs->run);
  *runs = (struct qcow2_runs) { 0 };
}

/* Make the free map cover clusters below end (new bits clear). */
static bool
free_map_cover(struct qcow2_disk *q, uint64_t end)
{
  uint64_t words = (q->free_map_clusters + 63) / 64, want;
  uint64_t *map;

  if (end <= q->free_map_clusters)
    return true;
  want = end > 2 * q->free_map_clusters ? end : 2 * q->free_map_clusters;
  want = (want + 63) / 64;
  map = realloc(q->free_map, want * 8);
  if (map == NULL)
    return false;
  memset(map + words, 0, (want - words) * 8);
  q->free_map = map;
  q->free_map_clusters = want * 64;
  return true;
}

/* Punch a run of freed clusters out of the file and hand it to the
 * allocator.  Runs, not single clusters: the host file system frees only
 * whole blocks, which small clusters never fill one at a time.  A failed
 * punch is harmless: the cluster is rewritten before anything reads it
 * (qcow2-write.c writes whole clusters, or whole subclusters that only
 * then become allocated). */
static void
release_run(struct qcow2_disk *q, const struct qcow2_run *run)
{
  int r = fde_io_fallocate(q->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                           run->first << q->cluster_bits,
                           run->n << q->cluster_bits);

  if (r < 0 && r != -EOPNOTSUPP)
    fde_debug("%s: punching %" PRIu64 " freed clusters at cluster %" PRIu64
              ": %s", q->disk.path, run->n, run->first, strerror(-r));
  if (!free_map_cover(q, run->first + run->n))
    return;                     /* out of memory: not reused, harmless */
  for (uint64_t c = run->first; c < run->first + run->n; c++) {
    qcow2_l2_forget(q, c << q->cluster_bits);
    q->free_map[c / 64] |= 1ull << (c % 64);
  }
  if (run->first < q->free_cursor)
    q->free_cursor = run->first;
}

/* The waiting clusters, if the operations of their generation are over. */
static void
release_waiting(struct qcow2_disk *q)
{
  if (q->waiting.nr == 0
      || atomic_load(&q->io_count[q->waiting_gen]) != 0)
    return;
  for (size_t i = 0; i < q->waiting.nr; i++)
    release_run(q, &q->waiting.run[i]);
  q->waiting.nr = 0;
}

/* Move freed clusters one step towards reuse (see the top of the file):
 * release the waiting ones whose grace period is over; then, if none wait,
 * let the freed ones wait on the current generation, flip it, and release
 * them at once when no guarded operation is in flight.  Never blocks. */
void
qcow2_recycle_freed(struct qcow2_disk *q)
{
  struct qcow2_runs spare;

  release_waiting(q);
  if (q->waiting.nr != 0 || q->freed.nr == 0)
    return;
  spare = q->waiting;           /* empty; keep its buffer */
  q->waiting = q->freed;
  q->freed = spare;
  q->waiting_gen = atomic_load(&q->io_gen);
  atomic_store(&q->io_gen, q->waiting_gen ^ 1);
  release_waiting(q);
}

/* Can an allocation take a freed or free cluster now, instead of extending
 * the file?  Moves freed clusters on first (qcow2_recycle_freed, which
 * never blocks).  An approximation: a free-map cluster that turns out to
 * need a new refblock, or to be taken, is skipped by the allocator. */
bool
qcow2_have_free_cluster(struct qcow2_disk *q)
{
  if (q->waiting.nr != 0 || q->freed.nr != 0)
    qcow2_recycle_freed(q);
  while (q->free_cursor < q->free_map_clusters) {
    uint64_t c = q->free_cursor;
    if ((q->free_map[c / 64] >> (c % 64)) != 0)
      return true;
    q->free_cursor = (c / 64 + 1) * 64;       /* as reuse_free_cluster */
  }
  return false;
}

/* Drop one reference from every cluster of [offset, offset+len) (a data
 * cluster, an old table, or the span of a compressed cluster); clusters
 * that become free start on their way back to the allocator.  0, or
 * -errno with the clusters before the failing one done and the rest
 * unchanged. */
int
qcow2_free_clusters(struct qcow2_disk *q, uint64_t offset, uint64_t len)
{
  uint64_t first = offset >> q->cluster_bits;
  uint64_t last = (offset + len - 1) >> q->cluster_bits;
  int r;

  if (len == 0)
    return 0;
  for (uint64_t c = first; c <= last; c++) {
    uint64_t rc;
    /* Read, then write: a failure changes nothing for cluster c, so the
     * flush can retry exactly what did not happen (apply_frees). */
    if ((r = qcow2_refcount_get(q, c, &rc)) < 0
        || (r = update_in_refblock(q, c, 1, -1)) < 0)
      return r;
    if (rc == 1)
      runs_add(&q->freed, c);
  }
  return 0;
}

/* From cluster c on: the first cluster whose refcount is 0 in *free (c
 * itself, unless it has one), and the first after that which has one in
 * *counted (UINT64_MAX: none).  Clusters no refblock covers count 0.
 * Each refblock is read once, and the scan stops at *counted, so skipping
 * costs a read per run of counted clusters, however a hostile image lays
 * them out.  0 or -errno. */
static int
counted_runs_from(struct qcow2_disk *q, uint64_t c, uint64_t *free_c,
                  uint64_t *counted)
{
  uint64_t rbe = refblock_entries(q), rt;
  uint8_t *buf = malloc(q->cluster_size);
  int r = 0;

  *free_c = *counted = UINT64_MAX;
  if (buf == NULL)
    return -ENOMEM;
  for (rt = c / rbe; rt < q->reftable_entries && *counted == UINT64_MAX;
       rt++) {
    uint64_t i = rt == c / rbe ? c % rbe : 0;
    if (q->reftable[rt] == 0) {
      if (*free_c == UINT64_MAX)
        *free_c = rt * rbe + i;
      continue;
    }
    if ((r = fde_pread_full(q->fd, buf, q->cluster_size, q->reftable[rt])) < 0)
      break;
    for (; i < rbe && *counted == UINT64_MAX; i++) {
      bool zero = get_entry(q, buf, i) == 0;
      if (*free_c == UINT64_MAX && zero)
        *free_c = rt * rbe + i;
      else if (*free_c != UINT64_MAX && !zero)
        *counted = rt * rbe + i;
    }
  }
  if (*free_c == UINT64_MAX)    /* counted up to the reftable's end */
    *free_c = rt * rbe > c ? rt * rbe : c;
  free(buf);
  return r;
}

/* Appending starts at the end of the file, as QEMU allocates from the
 * first free cluster: a refcount far past the end (a leak, a hostile
 * image) must not move every new cluster there (a file of a TiB, or
 * EFBIG).  Clusters past the end that do have a refcount are skipped when
 * appending reaches them (next_counted). */
int
qcow2_refs_find_end(struct qcow2_disk *q)
{
  uint64_t end = (q->file_size + q->cluster_size - 1) >> q->cluster_bits;
  uint64_t free_c, counted;
  int r = counted_runs_from(q, end, &free_c, &counted);

  if (r == 0) {
    q->next_free = free_c;
    q->next_counted = counted;
  }
  return r;
}

/* Call visit(ctx, c, refcount) for every cluster c in [0, nr), in order
 * (refcount 0 where no refblock covers c), reading each refblock once:
 * the consistency scan's view of the refcounts, at full width. */
int
qcow2_refcounts_scan(struct qcow2_disk *q, uint64_t nr,
                     void (*visit)(void *ctx, uint64_t cluster,
                                   uint64_t refcount),
                     void *ctx)
{
  uint64_t rbe = refblock_entries(q);
  uint8_t *buf = malloc(q->cluster_size);
  int r = 0;

  if (buf == NULL)
    return -ENOMEM;
  for (uint64_t rt = 0; rt * rbe < nr; rt++) {
    bool have = rt < q->reftable_entries && q->reftable[rt] != 0;
    if (have
        && (r = fde_pread_full(q->fd, buf, q->cluster_size,
                               q->reftable[rt])) < 0)
      break;
    for (uint64_t i = 0; i < rbe && rt * rbe + i < nr; i++)
      visit(ctx, rt * rbe + i, have ? get_entry(q, buf, i) : 0);
  }
  free(buf);
  return r;
}
