/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: qcow2 backend — writing, zeroing and flushing.
 *
 * A write into clusters this layer owns alone (COPIED, allocated) goes
 * straight to the file, with no lock beyond the mapping lookup, in one
 * pwrite while they follow one another in the file.  Anything else
 * (unallocated, zero, compressed, shared with a snapshot, partially
 * allocated subclusters) takes q->alloc_lock and copies on write: new
 * clusters are allocated (refcounts on disk first; the run a request
 * needs under one L2 table at once, contiguous), filled with what the
 * guest saw there plus the new bytes, and only then referenced.  What the
 * guest saw is copied by the kernel (copy_file_range) from the file that
 * holds it, where one does; it passes through a buffer only when it must
 * be computed (zeros, compressed clusters) or the kernel refuses.  Zeros
 * around the new bytes are not written at all into clusters appended past
 * the end of the file: they are allocated as zeros (write_run_data).  The
 * data of a run of new clusters is written after alloc_lock is dropped,
 * its guest clusters marked in flight so that overlapping requests wait
 * (write_allocating).
 *
 * Ordering, as QEMU's cache dependencies give it (reference section 4.5):
 * refcount increments are written at once; data is written at once; L2
 * tables and L1 entries change in memory (the L2 cache pins them dirty)
 * and reach the file only in flush: sync (refcounts and data durable),
 * write the L2 tables, sync, write the L1, sync, and only then drop the
 * references the new entries replaced.  A crash at any point leaves leaks
 * at worst, and fsync/flush makes every acknowledged write durable. */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chain.h"
#include "format.h"
#include "qcow2.h"

/* One L2 entry (and its subcluster bitmap), decoded. */
struct entry {
  uint64_t raw;                 /* host order */
  uint64_t bitmap;              /* extended L2 only */
  uint64_t host;                /* data cluster, 0 if none or compressed */
  bool compressed;
  bool copied;
  bool zero;                    /* standard L2 zero flag */
};

static struct entry
decode_entry(const struct qcow2_disk *q, const uint64_t *table, uint32_t i)
{
  struct entry e = { 0 };

  e.raw = qcow2_be64_at(table, q->extended_l2 ? 2 * i : i);
  e.bitmap = q->extended_l2 ? qcow2_be64_at(table, 2 * i + 1) : 0;
  e.compressed = e.raw & QCOW_OFLAG_COMPRESSED;
  e.copied = e.raw & QCOW_OFLAG_COPIED;
  e.host = e.compressed ? 0 : e.raw & L2E_OFFSET_MASK;
  e.zero = !q->extended_l2 && !e.compressed && (e.raw & QCOW_OFLAG_ZERO);
  return e;
}

/* Store entry i of a pinned table; map_lock excludes readers meanwhile. */
static void
store_entry(struct qcow2_disk *q, const uint64_t *table, uint32_t i,
            uint64_t raw, uint64_t bitmap)
{
  uint64_t *t = (uint64_t *) table;

  pthread_rwlock_wrlock(&q->map_lock);
  if (q->extended_l2) {
    t[2 * i] = htobe64(raw);
    t[2 * i + 1] = htobe64(bitmap);
  } else
    t[i] = htobe64(raw);
  pthread_rwlock_unlock(&q->map_lock);
}

/* Mask of subclusters touched by [off, off+n) inside its cluster. */
static uint32_t
granule_mask(const struct qcow2_disk *q, uint64_t off, uint64_t n)
{
  unsigned g0 = qcow2_offset_into_cluster(q, off) >> q->granule_bits;
  unsigned g1 = (qcow2_offset_into_cluster(q, off) + n - 1) >> q->granule_bits;

  return (uint32_t) ((2ull << g1) - (1ull << g0));
}

/* Remember a reference to drop once the new tables are durable. */
static int
defer_free(struct qcow2_disk *q, uint64_t offset, uint64_t len)
{
  if (q->nr_frees == q->cap_frees) {
    size_t cap = q->cap_frees ? q->cap_frees * 2 : 64;
    struct qcow2_free *f = realloc(q->frees, cap * sizeof *f);
    if (f == NULL)
      return -ENOMEM;
    q->frees = f;
    q->cap_frees = cap;
  }
  q->frees[q->nr_frees].offset = offset;
  q->frees[q->nr_frees].len = len;
  q->nr_frees++;
  return 0;
}

/* Drop the reference an old entry held (data, or compressed span). */
static int
release_entry(struct qcow2_disk *q, const struct entry *e)
{
  uint64_t off, len;

  if (e->compressed) {
    qcow2_compressed_span(q, e->raw & QCOW2_COMPRESSED_DESC_MASK, &off, &len);
    return defer_free(q, off, len);
  }
  return e->host ? defer_free(q, e->host, q->cluster_size) : 0;
}

/* fdatasync the image.  A caveat no program can hide: after a real EIO
 * (or ENOSPC) from fdatasync, Linux may already have marked the pages that
 * failed to reach the disk clean and dropped the error, so a later sync
 * succeeds without writing them.  What the flush writes itself (L2 tables,
 * the L1) stays dirty in memory until a sync after its write succeeded, so
 * a retried flush rewrites it; data clusters and refcount increments,
 * written when the guest wrote, cannot be rewritten.  QEMU makes every
 * later flush fail after one failed fdatasync for that reason
 * (file-posix.c, page_cache_inconsistent); we let the caller retry, since
 * the faults a retry can cure (an injected one, a transient error of the
 * storage below) would otherwise cost the whole session. */
static int
sync_file(struct qcow2_disk *q)
{
  return fde_io_fdatasync(q->fd);
}

/* Write the dirty range of the active L1 (host order in memory); the
 * range stays dirty (the caller clears it once a sync made it durable). */
static int
write_l1(struct qcow2_disk *q)
{
  uint32_t lo = q->l1_dirty_lo, n = q->l1_dirty_hi - lo;
  uint64_t *buf = malloc(n * 8ull);
  int r;

  if (buf == NULL)
    return -ENOMEM;
  for (uint32_t i = 0; i < n; i++)
    buf[i] = htobe64(q->l1[lo + i]);
  r = fde_pwrite_full(q->fd, buf, n * 8ull, q->l1_offset + lo * 8ull);
  free(buf);
  return r;
}

/* Drop the deferred references, one cluster at a time (a compressed span
 * can cover two), taking each off the list -- or shrinking its span -- as
 * soon as its refcount is written, so that a retry never drops one twice.
 * qcow2_free_clusters changes nothing when it fails. */
static int
apply_frees(struct qcow2_disk *q)
{
  size_t done = 0;
  int r = 0;

  while (done < q->nr_frees) {
    struct qcow2_free *f = &q->frees[done];
    uint64_t cluster_end = (f->offset | (q->cluster_size - 1ull)) + 1;
    uint64_t n = f->len < cluster_end - f->offset ? f->len
      : cluster_end - f->offset;
    if (n > 0 && (r = qcow2_free_clusters(q, f->offset, n)) < 0)
      break;
    f->offset += n;
    f->len -= n;
    if (f->len == 0)
      done++;
  }
  if (done > 0)
    memmove(q->frees, q->frees + done,
            (q->nr_frees - done) * sizeof *q->frees);
  q->nr_frees -= done;
  return r;
}

/* The flush sequence; alloc_lock held.  It may fail at any step and be
 * called again (the next fsync, a write that needs a cache slot, the
 * caller of close) any number of times: what a step did is forgotten only
 * once it is on disk, so nothing is applied twice.  What each step leaves
 * on disk if it fails, or the system crashes, after it:
 *  1. sync: data and refcount increments written so far are durable.
 *     Nothing else has changed.
 *  2. write every dirty L2 table in place, sync, then mark them clean.
 *     A table on disk may already hold its new entries; each names a
 *     cluster step 1 made durable, and the references they replaced are
 *     still counted: leaks at worst.  Failed: the tables stay dirty and
 *     pinned, and are written again.
 *  3. write the dirty L1 range, sync, then mark it clean.  The L1 on disk
 *     may already point at new tables, durable since step 2; the tables
 *     it no longer names are still counted: leaks at worst.  Failed: the
 *     range stays dirty and is written again.
 *  4. drop the references the new entries replaced (apply_frees), now
 *     that no table on disk holds them.  Each dropped one leaves the list;
 *     the rest are dropped by the next flush.  These refcount writes are
 *     not synced here: a crash before the next sync loses some of them,
 *     which leaks clusters and never frees a referenced one.
 *  5. hand freed clusters on towards reuse (qcow2-refcount.c).
 * An injected fault (tests/unit/fault-test.c) models a call whose effect
 * did not land; see sync_file for what a real failed fdatasync means. */
int
qcow2_flush_locked(struct qcow2_disk *q)
{
  int r;

  if ((r = sync_file(q)) < 0)
    return r;
  if (qcow2_l2_dirty_count(q) > 0) {
    if ((r = qcow2_l2_write_dirty(q)) < 0 || (r = sync_file(q)) < 0)
      return r;
    qcow2_l2_clean_written(q);
  }
  if (q->l1_dirty_hi > q->l1_dirty_lo) {
    if ((r = write_l1(q)) < 0 || (r = sync_file(q)) < 0)
      return r;
    q->l1_dirty_lo = q->l1_dirty_hi = 0;
  }
  if ((r = apply_frees(q)) < 0)
    return r;
  qcow2_recycle_freed(q);       /* freed clusters towards reuse */
  return 0;
}

/* Flush now and then, so pinned dirty tables and deferred frees stay
 * bounded whatever the workload. */
static int
maybe_flush(struct qcow2_disk *q)
{
  if (qcow2_l2_dirty_count(q) >= qcow2_l2_capacity(q) / 2
      || q->nr_frees >= QCOW2_MAX_DEFERRED_FREES)
    return qcow2_flush_locked(q);
  return 0;
}

/* Before an allocating write, with nothing pinned or half-updated: when
 * the allocation would extend the file and enough deferred frees wait
 * (QCOW2_REUSE_FLUSH_BYTES), flush, so that they are applied and their
 * clusters recycled first.  Without this, a discard with no fsync after
 * it (fstrim, say) leaves its clusters waiting while the writes that
 * follow append.  Reuse still waits for the tables to be durable and for
 * the grace period (qcow2-refcount.c): a grace period that has not ended
 * only delays it.  A failed flush is not the write's failure: everything
 * it did not finish stays pending for the next one, and the write
 * appends. */
static void
flush_to_reuse(struct qcow2_disk *q)
{
  int r;

  if (((uint64_t) q->nr_frees << q->cluster_bits) < QCOW2_REUSE_FLUSH_BYTES
      || qcow2_have_free_cluster(q))
    return;
  if ((r = qcow2_flush_locked(q)) < 0)
    fde_debug("%s: flushing to reuse freed clusters: %s", q->disk.path,
              strerror(-r));
}

/* Point L1 entry l1_index at a new table of our own: zeroed, or a copy of
 * a table shared with a snapshot (whose reference is dropped later). */
static int
new_l2_table(struct qcow2_disk *q, uint64_t l1_index,
             struct qcow2_l2_ref *ref)
{
  uint64_t old = q->l1[l1_index] & L1E_OFFSET_MASK, host;
  struct qcow2_l2_ref src = { 0 };
  int r;

  if (old != 0 && (r = qcow2_l2_get(q, old, &src)) < 0)
    return r;
  if ((r = qcow2_alloc_cluster(q, &host)) == 0) {
    /* Write the new table's first contents at once, though nothing points
     * at it yet: the file gets its blocks now, so that flush, which
     * rewrites the table in place, cannot fail for lack of space later. */
    r = fde_pwrite_full(q->fd, old ? (const void *) src.table : q->zeros,
                        q->cluster_size, host);
    if (r == 0)
      r = qcow2_l2_install(q, host, old ? src.table : NULL, ref);
    /* Failed (-EAGAIN: the table's cache shard is full of dirty tables;
     * the caller flushes and tries again): nothing names the cluster, so
     * give it back now rather than leak it.  If even that fails, a leak. */
    if (r < 0)
      qcow2_free_clusters(q, host, q->cluster_size);
  }
  if (old != 0)
    qcow2_l2_put(q, &src);
  if (r < 0)
    return r;
  qcow2_l2_mark_dirty(q, ref);
  pthread_rwlock_wrlock(&q->map_lock);
  q->l1[l1_index] = host | QCOW_OFLAG_COPIED;
  pthread_rwlock_unlock(&q->map_lock);
  if (q->l1_dirty_hi == q->l1_dirty_lo)
    q->l1_dirty_lo = q->l1_dirty_hi = (uint32_t) l1_index;
  if (l1_index < q->l1_dirty_lo)
    q->l1_dirty_lo = (uint32_t) l1_index;
  if (l1_index + 1 > q->l1_dirty_hi)
    q->l1_dirty_hi = (uint32_t) l1_index + 1;
  return old ? defer_free(q, old, q->cluster_size) : 0;
}

/* A pinned L2 table this layer may modify, for guest offset off. */
static int
l2_for_update(struct qcow2_disk *q, uint64_t off, struct qcow2_l2_ref *ref)
{
  uint64_t l1_index = off / qcow2_l1_span(q);
  uint64_t l1e = q->l1[l1_index];
  int r;

  for (int tries = 0; tries < 2; tries++) {
    if (l1e & QCOW_OFLAG_COPIED)
      r = qcow2_l2_get_for_update(q, l1e & L1E_OFFSET_MASK, ref);
    else
      r = new_l2_table(q, l1_index, ref);
    if (r != -EAGAIN)
      return r;
    if ((r = qcow2_flush_locked(q)) < 0)  /* unpins dirty tables */
      return r;
  }
  return -EAGAIN;
}

/* What the guest sees at [start, start+len) now, zero past the disk end. */
static int
read_guest(struct qcow2_disk *q, char *buf, uint64_t start, uint64_t len)
{
  uint64_t n = start >= q->disk.size ? 0
    : q->disk.size - start < len ? q->disk.size - start : len;

  memset(buf + n, 0, len - n);
  return n ? qcow2_pread(&q->disk, buf, n, start) : 0;
}

/* data_end = max(data_end, end), from any thread: allocating runs write
 * their data outside alloc_lock, and end in any order. */
static void
raise_data_end(struct qcow2_disk *q, uint64_t end)
{
  uint64_t cur = atomic_load(&q->data_end);

  while (cur < end
         && !atomic_compare_exchange_weak(&q->data_end, &cur, end))
    ;
}

/* Fill [dst, dst+len) of this layer's file with what the guest sees at
 * [start, start+len) now, without taking the bytes through a buffer of
 * ours where a file holds them verbatim (qcow2_map_file: a cluster of this
 * layer shared with a snapshot, or a backing layer's data): the kernel
 * copies them (copy_file_range).  The rest (zeros, compressed clusters,
 * bytes past the disk's end, or every byte once the kernel refused to
 * copy between these files) is read and written.  The guard keeps the
 * clusters it copies from from being reused meanwhile (allocating runs
 * call this without alloc_lock).  0 or -errno. */
static int
copy_guest(struct qcow2_disk *q, uint64_t dst, uint64_t start, uint64_t len)
{
  unsigned guard;
  int r = 0;

  if (len == 0)
    return 0;                   /* nothing around the request (aligned) */
  guard = qcow2_io_enter(q);
  while (len > 0 && r >= 0) {
    uint64_t host, run = len;
    int fd = -1;
    r = 0;
    if (start < q->disk.size && !atomic_load(&q->no_copy_range))
      r = qcow2_map_file(&q->disk, start, start + len > q->disk.size
                         ? q->disk.size - start : len, &fd, &host, &run);
    if (r == 1) {
      r = fde_copy_range_full(fd, host, q->fd, dst, run);
      if (r == FDE_COPY_RANGE_UNSUPPORTED) {
        atomic_store(&q->no_copy_range, true);
        r = 0;
        continue;               /* the same piece again, by reading */
      }
    } else if (r == 0) {
      char *tmp = malloc(run);
      r = tmp == NULL ? -ENOMEM : read_guest(q, tmp, start, run);
      if (r == 0)
        r = fde_pwrite_full(q->fd, tmp, run, dst);
      free(tmp);
    }
    dst += run;
    start += run;
    len -= run;
  }
  qcow2_io_leave(q, guard);
  return r < 0 ? r : 0;
}

/* Write [start, start+span) of the guest disk to host, with buf (n bytes
 * at off, NULL for zeros) over the current contents: the bytes around buf
 * copied by copy_guest, or, once the kernel refused to copy, the span
 * read whole into a buffer (skipped when the new bytes cover it all) and
 * written in one pwrite. */
static int
write_merged(struct qcow2_disk *q, uint64_t host, uint64_t start,
             uint64_t span, const void *buf, uint64_t n, uint64_t off)
{
  uint64_t head = off - start;
  int r = 0;

  if (!atomic_load(&q->no_copy_range)) {
    r = copy_guest(q, host, start, head);
    if (r == 0)
      r = fde_pwrite_full(q->fd, buf != NULL ? buf : q->zeros, n,
                          host + head);
    if (r == 0)
      r = copy_guest(q, host + head + n, off + n, span - head - n);
  } else {
    char *tmp = malloc(span);
    if (tmp == NULL)
      return -ENOMEM;
    if (off != start || n != span)
      r = read_guest(q, tmp, start, span);
    if (r == 0) {
      if (buf != NULL)
        memcpy(tmp + head, buf, n);
      else
        memset(tmp + head, 0, n);
      r = fde_pwrite_full(q->fd, tmp, span, host);
    }
    free(tmp);
  }
  /* Before the L2 entry shows the cluster: splicing readers (qcow2_map_file)
   * may use it only once the file really holds its bytes. */
  if (r == 0)
    raise_data_end(q, host + span);
  return r;
}

/* Is subcluster g of an extended entry allocated? */
static bool
granule_allocated(const struct entry *e, uint64_t g)
{
  return (e->bitmap >> g) & 1;
}

/* Extended L2, cluster allocated and ours: write [off, off+n) and mark the
 * touched subclusters allocated.  Subclusters already allocated get only
 * the new bytes: an in-place writer (qcow2_pwrite, no lock held) may be
 * writing their other bytes right now, and rewriting them whole from an
 * earlier read would undo its write (tests/unit/stress.c, "neighbours").
 * The others are written whole, merged with what shows through there:
 * nobody writes them in place before their bit is set. */
static int
write_subclusters(struct qcow2_disk *q, const struct qcow2_l2_ref *ref,
                  uint32_t i, const struct entry *e, const void *buf,
                  uint64_t n, uint64_t off)
{
  uint64_t gs = 1ull << q->granule_bits, end = off + n;
  uint64_t cstart = off & ~((uint64_t) q->cluster_size - 1);
  uint32_t mask = granule_mask(q, off, n);
  const char *p = buf;
  int r = 0;

  for (uint64_t pos = off; r == 0 && pos < end;) {
    uint64_t gstart = pos & ~(gs - 1), run_end = gstart + gs, m;
    bool alloc = granule_allocated(e, (gstart - cstart) >> q->granule_bits);
    while (run_end < end
           && granule_allocated(e, (run_end - cstart) >> q->granule_bits)
              == alloc)
      run_end += gs;            /* subclusters of the same kind: one I/O */
    m = (end < run_end ? end : run_end) - pos;
    if (alloc)
      r = fde_pwrite_full(q->fd, p != NULL ? (const void *) p : q->zeros, m,
                          e->host + (pos - cstart));
    else
      r = write_merged(q, e->host + (gstart - cstart), gstart,
                       run_end - gstart, p, m, pos);
    pos += m;
    p = p != NULL ? p + m : NULL;
  }
  if (r < 0)
    return r;
  store_entry(q, ref->table, i, e->raw,
              (e->bitmap | mask) & ~((uint64_t) mask << 32));
  return 0;
}

/* Give the cluster at off a new host cluster of ours holding what the
 * guest saw plus the new bytes; the old reference is dropped later. */
static int
write_new_cluster(struct qcow2_disk *q, const struct qcow2_l2_ref *ref,
                  uint32_t i, const struct entry *e, const void *buf,
                  uint64_t n, uint64_t off)
{
  uint64_t cstart = off & ~((uint64_t) q->cluster_size - 1), host;
  uint64_t gs = 1ull << q->granule_bits, bitmap = 0;
  bool partial = q->extended_l2 && !e->compressed && e->host == 0;
  uint64_t start = partial ? off & ~(gs - 1) : cstart;
  uint64_t span = partial ? ((off + n + gs - 1) & ~(gs - 1)) - start
    : q->cluster_size;
  int r;

  /* host may be a reused cluster holding old bytes (its punch failed):
   * fine, since only the subclusters written whole here are marked
   * allocated, and write_subclusters also writes a subcluster whole
   * before setting its bit, so no old byte is ever read. */
  if ((r = qcow2_alloc_cluster(q, &host)) < 0
      || (r = write_merged(q, host + (start - cstart), start, span, buf, n,
                           off)) < 0)
    return r;
  if (q->extended_l2) {
    /* Only the written subclusters when the cluster had none; else the
     * whole cluster now holds what the guest saw. */
    uint32_t mask = partial ? granule_mask(q, off, n) : 0xffffffffu;
    bitmap = mask | ((e->bitmap >> 32) & ~(uint64_t) mask) << 32;
    if (e->compressed)
      bitmap = mask;
  }
  store_entry(q, ref->table, i, host | QCOW_OFLAG_COPIED, bitmap);
  return release_entry(q, e);
}

/* The slow path for [off, off+n) inside one cluster; alloc_lock held. */
static int
write_alloc(struct qcow2_disk *q, const void *buf, uint64_t n, uint64_t off)
{
  uint32_t i = (off >> q->cluster_bits) & (qcow2_l2_entries(q) - 1);
  struct qcow2_l2_ref ref;
  struct entry e;
  int r;

  if ((r = l2_for_update(q, off, &ref)) < 0)
    return r;
  e = decode_entry(q, ref.table, i);
  if (e.host && e.copied && !e.zero && q->extended_l2)
    r = write_subclusters(q, &ref, i, &e, buf, n, off);
  else if (e.host && e.copied && !e.zero)       /* in place after all */
    r = write_merged(q, e.host + qcow2_offset_into_cluster(q, off), off, n,
                     buf, n, off);
  else if (e.host && e.copied) {                /* ZERO_ALLOC of ours */
    uint64_t cstart = off & ~((uint64_t) q->cluster_size - 1);
    r = write_merged(q, e.host, cstart, q->cluster_size, buf, n, off);
    if (r == 0)
      store_entry(q, ref.table, i, e.host | QCOW_OFLAG_COPIED, 0);
  }
  else
    r = write_new_cluster(q, &ref, i, &e, buf, n, off);
  qcow2_l2_mark_dirty(q, &ref);
  qcow2_l2_put(q, &ref);
  return r < 0 ? r : maybe_flush(q);
}

/* Is [off, off+n), inside one cluster, writable in place by entry e: a
 * cluster of ours, allocated, every touched subcluster allocated? */
static bool
entry_in_place(const struct qcow2_disk *q, const struct entry *e,
               uint64_t off, uint64_t n)
{
  return e->host && e->copied && !e->zero
    && (!q->extended_l2
        || ((uint32_t) e->bitmap & granule_mask(q, off, n))
           == granule_mask(q, off, n));
}

/* How many bytes of [off, off+len) can be written in place with one
 * pwrite: clusters of one L2 table, each writable in place, each
 * following the previous one in the file (qemu-img convert and our own
 * allocating runs lay them out so).  0 when the first cannot; else the
 * bytes, and where they go in *host. */
static uint64_t
in_place_run(struct qcow2_disk *q, uint64_t off, uint64_t len,
             uint64_t *host)
{
  uint64_t l1_index = off / qcow2_l1_span(q), l1e, done = 0, next = 0;
  uint32_t i = (off >> q->cluster_bits) & (qcow2_l2_entries(q) - 1);
  struct qcow2_l2_ref ref;

  pthread_rwlock_rdlock(&q->map_lock);
  l1e = q->l1[l1_index];
  if ((l1e & QCOW_OFLAG_COPIED)
      && qcow2_l2_get(q, l1e & L1E_OFFSET_MASK, &ref) == 0) {
    for (; i < qcow2_l2_entries(q) && done < len; i++) {
      uint64_t at = off + done;
      uint64_t n = q->cluster_size - qcow2_offset_into_cluster(q, at);
      struct entry e = decode_entry(q, ref.table, i);
      if (n > len - done)
        n = len - done;
      if (!entry_in_place(q, &e, at, n)
          || (done > 0 && e.host != next))
        break;
      if (done == 0)
        *host = e.host + qcow2_offset_into_cluster(q, at);
      next = e.host + q->cluster_size;
      done += n;
    }
    qcow2_l2_put(q, &ref);
  }
  pthread_rwlock_unlock(&q->map_lock);
  return done;
}

/* ---- Allocating runs, their data written outside alloc_lock ---------- */

/* Does a run in flight hold a guest cluster of [first, end)? */
static bool
inflight_meets(const struct qcow2_disk *q, uint64_t first, uint64_t end)
{
  for (const struct qcow2_inflight *f = q->inflight; f != NULL; f = f->next)
    if (first < f->end && f->first < end)
      return true;
  return false;
}

/* alloc_lock held: wait until no run in flight holds a cluster of guest
 * bytes [off, off+len) (len > 0), so that nothing changes an entry, or
 * copies on write from one, whose new cluster is still being written. */
static void
wait_inflight(struct qcow2_disk *q, uint64_t off, uint64_t len)
{
  uint64_t first = off >> q->cluster_bits;
  uint64_t end = ((off + len - 1) >> q->cluster_bits) + 1;

  while (inflight_meets(q, first, end))
    pthread_cond_wait(&q->inflight_done, &q->alloc_lock);
}

/* alloc_lock held: take f off the list of runs in flight; wake waiters. */
static void
inflight_end(struct qcow2_disk *q, struct qcow2_inflight *f)
{
  struct qcow2_inflight **p = &q->inflight;

  while (*p != f)
    p = &(*p)->next;
  *p = f->next;
  pthread_cond_broadcast(&q->inflight_done);
}

/* Does entry e need a new cluster of ours that a run can give it (a
 * standard L2 entry that is not an allocated cluster of ours)? */
static bool
entry_needs_cluster(const struct qcow2_disk *q, const struct entry *e)
{
  return !q->extended_l2 && !(e->host && e->copied);
}

/* The guest bytes that surround [off, off+n) in new clusters
 * [cstart, cend): what the guest saw there, read into *head and *tail
 * (malloc'd; NULL when empty).  0 or -errno. */
static int
read_around(struct qcow2_disk *q, uint64_t cstart, uint64_t cend,
            uint64_t off, uint64_t n, char **head, char **tail)
{
  uint64_t hlen = off - cstart, tlen = cend - (off + n);
  int r = 0;

  *head = *tail = NULL;
  if ((hlen && (*head = malloc(hlen)) == NULL)
      || (tlen && (*tail = malloc(tlen)) == NULL))
    r = -ENOMEM;
  if (r == 0 && hlen)
    r = read_guest(q, *head, cstart, hlen);
  if (r == 0 && tlen)
    r = read_guest(q, *tail, off + n, tlen);
  if (r < 0) {
    free(*head);
    free(*tail);
    *head = *tail = NULL;
  }
  return r;
}

/* Does the guest read as zeros at [start, start+len) by the tables alone
 * (true when len is 0; past the disk's end it does)?  Zero clusters, and
 * ranges unallocated down a chain of qcow2 layers to nothing below (no
 * backing file, or past its end).  A backing file of another format
 * counts as data, as QEMU's is_zero_cow asks bdrv_is_allocated_above: a
 * hole that lseek reports in a raw file is not trusted with the guest's
 * bytes (some file systems have misreported them). */
static bool
tables_read_zero(struct qcow2_disk *q, uint64_t start, uint64_t len)
{
  while (len > 0 && start < q->disk.size) {
    uint64_t n = q->disk.size - start < len ? q->disk.size - start : len;
    struct qcow2_extent e;
    if (qcow2_map(q, start, n, &e) < 0 || e.len == 0)
      return false;
    if (e.len > n)
      e.len = n;
    if (e.kind == QCOW2_BACKING) {
      uint64_t below = fde_chain_lower_part(q->backing, start, e.len);
      if (below > 0 && (q->backing->format != &fde_format_qcow2
                        || !tables_read_zero(to_qcow2(q->backing), start,
                                             below)))
        return false;
    } else if (e.kind != QCOW2_ZERO)
      return false;
    start += e.len;
    len -= e.len;
  }
  return true;
}

/* A run of new clusters: guest clusters from gfirst, host clusters from
 * host, n of them, for guest bytes [off, off+bytes). */
struct run {
  uint64_t gfirst, host, n, off, bytes;
  bool appended;                /* past every byte the file held: zeros */
};

/* alloc_lock held: allocate a run for the clusters of [off, off+len) from
 * off's on, in off's L2 table, that all need new clusters (standard L2),
 * at most as many as can be allocated contiguously.  0 and *run (its
 * clusters counted); 1 when off's cluster needs another path
 * (write_alloc); or -errno. */
static int
reserve_run(struct qcow2_disk *q, uint64_t off, uint64_t len,
            struct run *run)
{
  uint32_t i0 = (off >> q->cluster_bits) & (qcow2_l2_entries(q) - 1), k;
  uint64_t head = qcow2_offset_into_cluster(q, off), got;
  struct qcow2_l2_ref ref;
  struct entry e;
  int r;

  if ((r = l2_for_update(q, off, &ref)) < 0)
    return r;
  for (k = 0; i0 + k < qcow2_l2_entries(q)
         && (uint64_t) k * q->cluster_size < head + len; k++) {
    e = decode_entry(q, ref.table, i0 + k);
    if (!entry_needs_cluster(q, &e))
      break;
  }
  qcow2_l2_put(q, &ref);
  if (k == 0)
    return 1;
  if ((r = qcow2_alloc_clusters(q, k, &run->host, &got, &run->appended))
      < 0)
    return r;
  run->gfirst = off >> q->cluster_bits;
  run->n = got;
  run->off = off;
  run->bytes = got * q->cluster_size - head;
  if (run->bytes > len)
    run->bytes = len;
  return 0;
}

/* The first cluster of an appended run of len bytes at host when it has
 * hlen bytes of zeros before the request, and the last when it has tlen
 * after it, allocated as zeros (fallocate, which also extends the file):
 * their blocks are taken now, as a whole write would take them, so that a
 * later write into these clusters cannot fail for lack of space.  The
 * clusters between are written whole by the request: allocating them
 * first would only make the file system convert unwritten extents (a
 * sequential 1 MiB write into a new image ran a tenth slower).
 * 0, -EOPNOTSUPP (write the zeros instead; remembered, as the file
 * system will not change its mind) or -errno. */
static int
allocate_edges(struct qcow2_disk *q, uint64_t host, uint64_t len,
               uint64_t hlen, uint64_t tlen)
{
  uint64_t cs = q->cluster_size;
  int r = 0;

  if (len <= 2 * cs && hlen > 0 && tlen > 0)
    r = fde_io_fallocate(q->fd, 0, host, len);
  else {
    if (hlen > 0)
      r = fde_io_fallocate(q->fd, 0, host, cs);
    if (r == 0 && tlen > 0)
      r = fde_io_fallocate(q->fd, 0, host + len - cs, cs);
  }
  if (r == -EOPNOTSUPP)
    atomic_store(&q->no_fallocate, true);
  return r;
}

/* Write the run's clusters whole (alloc_lock not held; the run's guest
 * clusters are in flight): buf itself straight from the request, the
 * guest's bytes before and after it as they show now (the entries still
 * name the old clusters, or the backing file) copied by the kernel
 * (write_merged).  Where the tables show zeros there and the clusters
 * were appended, the clusters holding them are allocated as zeros
 * instead (allocate_edges) and only buf is written.  Where the kernel
 * will not copy, head and tail are read and all of it goes out in one
 * pwritev, except for a write inside one cluster with bytes on both
 * sides, which reads the cluster once (write_merged): one read of a
 * cluster costs less than two of its parts.  0 or -errno. */
static int
write_run_data(struct qcow2_disk *q, const struct run *run, const void *buf)
{
  uint64_t cstart = run->gfirst << q->cluster_bits;
  uint64_t cend = cstart + run->n * q->cluster_size;
  uint64_t hlen = run->off - cstart, tlen = cend - (run->off + run->bytes);
  char *head, *tail;
  int r;

  if (run->appended && (hlen > 0 || tlen > 0)
      && !atomic_load(&q->no_fallocate)
      && tables_read_zero(q, cstart, hlen)
      && tables_read_zero(q, run->off + run->bytes, tlen)
      && (r = allocate_edges(q, run->host, cend - cstart, hlen, tlen))
         != -EOPNOTSUPP) {
    /* Zeros around buf, in clusters the file never held: only buf is
     * written, as QEMU zeroes such clusters with fallocate instead of
     * copying zeros (handle_alloc_space). */
    if (r == 0)
      r = fde_pwrite_full(q->fd, buf, run->bytes, run->host + hlen);
    if (r == 0)
      raise_data_end(q, run->host + (cend - cstart));
    return r;
  }

  if (!atomic_load(&q->no_copy_range)
      || (run->n == 1 && run->off > cstart && run->off + run->bytes < cend))
    return write_merged(q, run->host, cstart, cend - cstart, buf,
                        run->bytes, run->off);
  r = read_around(q, cstart, cend, run->off, run->bytes, &head, &tail);
  struct iovec v[3] = {
    { head, run->off - cstart },
    { (void *) buf, run->bytes },
    { tail, cend - (run->off + run->bytes) },
  };

  if (r == 0)
    r = fde_pwritev_full(q->fd, v, 3, run->host);
  free(head);
  free(tail);
  /* Before the entries show the clusters (see write_merged). */
  if (r == 0)
    raise_data_end(q, run->host + (cend - cstart));
  return r;
}

/* alloc_lock held: point the run's entries at its clusters (they are
 * written) and drop the references they replace, or on failure (r < 0)
 * give the clusters back.  0 or -errno. */
static int
finish_run(struct qcow2_disk *q, struct run *run, int r)
{
  uint32_t i0 = run->gfirst & (qcow2_l2_entries(q) - 1);
  struct qcow2_l2_ref ref;

  if (r == 0 && (r = l2_for_update(q, run->off, &ref)) == 0) {
    for (uint64_t k = 0; k < run->n; k++) {
      struct entry e = decode_entry(q, ref.table, i0 + (uint32_t) k);
      int rr;
      store_entry(q, ref.table, i0 + (uint32_t) k,
                  (run->host + k * q->cluster_size) | QCOW_OFLAG_COPIED, 0);
      if ((rr = release_entry(q, &e)) < 0 && r == 0)
        r = rr;                 /* a leak, not lost data */
    }
    qcow2_l2_mark_dirty(q, &ref);
    qcow2_l2_put(q, &ref);
  } else {
    /* Nothing names them: give them back (if even that fails, a leak). */
    qcow2_free_clusters(q, run->host, run->n * q->cluster_size);
  }
  return r;
}

/* The allocating path for [off, off+len): bytes of it written (> 0), or
 * -errno.  A run of clusters that need new clusters is allocated at once
 * (contiguous, one refcount update) under alloc_lock and written outside
 * it, so that other allocating writes go on meanwhile (copying on write
 * from a backing file not in the page cache waits for the disk); the
 * run's guest clusters are in flight until its entries are stored, and
 * overlapping requests wait for them (wait_inflight).  Anything else
 * (extended L2, ZERO_ALLOC clusters of ours) takes write_alloc's path for
 * one cluster, under the lock.  Ordering (crash safety) is as for
 * write_alloc: the refcounts are written when the clusters are
 * allocated, the data before the entries name it, the entries reach the
 * file only in flush after a sync; a flush meanwhile leaves the run's
 * clusters counted and unnamed, a leak at worst. */
static int64_t
write_allocating(struct qcow2_disk *q, const char *buf, uint64_t len,
                 uint64_t off)
{
  uint64_t n = q->cluster_size - qcow2_offset_into_cluster(q, off);
  uint64_t table_end = (off / qcow2_l1_span(q) + 1) * qcow2_l1_span(q);
  struct qcow2_inflight f;
  struct run run;
  int r;

  if (len > table_end - off)
    len = table_end - off;      /* one L2 table */
  if (n > len)
    n = len;
  pthread_mutex_lock(&q->alloc_lock);
  wait_inflight(q, off, len);
  flush_to_reuse(q);
  if ((r = reserve_run(q, off, len, &run)) != 0) {
    if (r == 1 && (r = write_alloc(q, buf, n, off)) == 0)
      r = 1;
    pthread_mutex_unlock(&q->alloc_lock);
    return r < 0 ? r : (int64_t) n;
  }
  f = (struct qcow2_inflight) { run.gfirst, run.gfirst + run.n, q->inflight };
  q->inflight = &f;
  pthread_mutex_unlock(&q->alloc_lock);

  r = write_run_data(q, &run, buf);

  pthread_mutex_lock(&q->alloc_lock);
  inflight_end(q, &f);
  r = finish_run(q, &run, r);
  if (r == 0)
    r = maybe_flush(q);
  pthread_mutex_unlock(&q->alloc_lock);
  return r < 0 ? r : (int64_t) run.bytes;
}

/* Write len bytes at guest offset off. */
int
qcow2_pwrite(struct fde_disk *d, const void *buf, size_t len, uint64_t off)
{
  struct qcow2_disk *q = to_qcow2(d);
  const char *p = buf;

  while (len > 0) {
    uint64_t host, n;
    int64_t done;
    int r = 0;
    /* An in-place write is a guarded operation: the clusters it found
     * cannot be reused for other data before the write lands. */
    unsigned guard = qcow2_io_enter(q);
    if ((n = in_place_run(q, off, len, &host)) > 0)
      r = fde_pwrite_full(q->fd, p, n, host);
    qcow2_io_leave(q, guard);
    if (r < 0)
      return r;
    if (n == 0) {
      if ((done = write_allocating(q, p, len, off)) < 0)
        return (int) done;
      n = (uint64_t) done;
    }
    p += n;
    off += n;
    len -= n;
  }
  return 0;
}

/* The entry that makes a whole cluster read as zeros: unallocated where
 * nothing shows through, the zero flag (v3) over a backing file; false
 * when the format cannot say it (v2 over a backing file). */
static bool
zero_entry(const struct qcow2_disk *q, uint64_t *raw, uint64_t *bitmap)
{
  *raw = 0;
  *bitmap = 0;
  if (q->extended_l2) {
    *bitmap = 0xffffffffull << 32;
    return true;
  }
  if (q->backing == NULL)
    return true;
  *raw = QCOW_OFLAG_ZERO;
  return q->version >= 3;
}

/* Zero whole subclusters of an extended L2 cluster by their bits; the
 * host cluster is dropped when no subcluster is left allocated. */
static int
zero_subclusters(struct qcow2_disk *q, const struct qcow2_l2_ref *ref,
                 uint32_t i, const struct entry *e, uint32_t mask)
{
  uint64_t alloc = (uint32_t) e->bitmap & ~mask;
  uint64_t zeros = ((e->bitmap >> 32) | mask) & 0xffffffffu;

  if (alloc == 0 && e->host) {
    store_entry(q, ref->table, i, 0, zeros << 32);
    return release_entry(q, e);
  }
  store_entry(q, ref->table, i, e->raw, alloc | zeros << 32);
  return 0;
}

/* Zero [off, off+n) inside one cluster; alloc_lock held. */
static int
zero_in_cluster(struct qcow2_disk *q, uint64_t off, uint64_t n)
{
  uint64_t cstart = off & ~((uint64_t) q->cluster_size - 1), raw, bitmap;
  uint64_t gs = 1ull << q->granule_bits;
  uint32_t i = (off >> q->cluster_bits) & (qcow2_l2_entries(q) - 1);
  bool whole = off == cstart && (n == q->cluster_size
                                 || off + n >= q->disk.size);
  bool granules = q->extended_l2 && off % gs == 0
    && (n % gs == 0 || off + n >= q->disk.size);
  struct qcow2_l2_ref ref;
  struct entry e;
  int r;

  if ((!whole && !granules) || !zero_entry(q, &raw, &bitmap)) {
    flush_to_reuse(q);
    return write_alloc(q, NULL, n, off);        /* zeros written out */
  }
  if (q->l1[off / qcow2_l1_span(q)] == 0 && raw == 0 && bitmap == 0)
    return 0;                                   /* already nothing there */
  if ((r = l2_for_update(q, off, &ref)) < 0)
    return r;
  e = decode_entry(q, ref.table, i);
  if (q->extended_l2 && !e.compressed && !whole)
    r = zero_subclusters(q, &ref, i, &e, granule_mask(q, off, n));
  else if (q->extended_l2 && e.compressed && !whole)
    r = write_alloc(q, NULL, n, off);
  else if (e.raw != raw || e.bitmap != bitmap) {
    store_entry(q, ref.table, i, raw, bitmap);
    r = release_entry(q, &e);
  }
  qcow2_l2_mark_dirty(q, &ref);
  qcow2_l2_put(q, &ref);
  return r < 0 ? r : maybe_flush(q);
}

/* Can [off, off+len) be zeroed without writing data?  Whole clusters
 * only (or up to the disk's end), and an entry that can say zeros: as
 * QEMU's qcow2 answers BDRV_REQ_NO_FALLBACK, a partial cluster is not
 * fast. */
static bool
zero_is_fast(const struct qcow2_disk *q, uint64_t off, uint64_t len)
{
  uint64_t raw, bitmap, end = off + len;

  return qcow2_offset_into_cluster(q, off) == 0
    && (qcow2_offset_into_cluster(q, end) == 0 || end >= q->disk.size)
    && zero_entry(q, &raw, &bitmap);
}

/* Make [off, off+len) read as zeros (punch and zero-range alike: whole
 * clusters become zero or unallocated entries, partial ones are written,
 * or with FDE_ZERO_FAST the request is refused, -ENOTSUP, if it has
 * any). */
int
qcow2_zero(struct fde_disk *d, uint64_t off, uint64_t len, unsigned flags)
{
  struct qcow2_disk *q = to_qcow2(d);
  int r = 0;

  if ((flags & FDE_ZERO_FAST) && !zero_is_fast(q, off, len))
    return -ENOTSUP;
  pthread_mutex_lock(&q->alloc_lock);
  if (len > 0)
    wait_inflight(q, off, len);
  while (len > 0 && r == 0) {
    uint64_t n = q->cluster_size - qcow2_offset_into_cluster(q, off);
    if (n > len)
      n = len;
    r = zero_in_cluster(q, off, n);
    off += n;
    len -= n;
  }
  pthread_mutex_unlock(&q->alloc_lock);
  return r;
}

/* fsync: every acknowledged write, and the tables that reach it, durable. */
int
qcow2_flush(struct fde_disk *d)
{
  struct qcow2_disk *q = to_qcow2(d);
  int r;

  if (d->read_only)
    return 0;
  pthread_mutex_lock(&q->alloc_lock);
  r = qcow2_flush_locked(q);
  pthread_mutex_unlock(&q->alloc_lock);
  return r;
}
