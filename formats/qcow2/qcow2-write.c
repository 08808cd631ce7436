/* fuse-disk-export: qcow2 backend — writing, zeroing and flushing.
 *
 * A write into a cluster this layer owns alone (COPIED, allocated) goes
 * straight to the file, with no lock beyond the mapping lookup.  Anything
 * else (unallocated, zero, compressed, shared with a snapshot, partially
 * allocated subclusters) takes q->alloc_lock and copies on write: a new
 * cluster is allocated (refcount on disk first), filled with what the
 * guest saw there plus the new bytes, and only then referenced.
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

static int
sync_file(struct qcow2_disk *q)
{
  return fdatasync(q->fd) == 0 ? 0 : -errno;
}

/* Write the dirty range of the active L1 (host order in memory). */
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
  if (r == 0)
    q->l1_dirty_lo = q->l1_dirty_hi = 0;
  return r;
}

/* The flush sequence; alloc_lock held. */
int
qcow2_flush_locked(struct qcow2_disk *q)
{
  int r;

  if ((r = sync_file(q)) < 0)
    return r;
  if (qcow2_l2_dirty_count(q) > 0
      && ((r = qcow2_l2_write_dirty(q)) < 0 || (r = sync_file(q)) < 0))
    return r;
  if (q->l1_dirty_hi > q->l1_dirty_lo
      && ((r = write_l1(q)) < 0 || (r = sync_file(q)) < 0))
    return r;
  for (size_t i = 0; i < q->nr_frees; i++)
    if ((r = qcow2_free_clusters(q, q->frees[i].offset, q->frees[i].len)) < 0)
      return r;
  q->nr_frees = 0;
  qcow2_punch_freed(q);
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
  r = qcow2_alloc_cluster(q, &host);
  /* Write the new table's first contents at once, though nothing points
   * at it yet: the file gets its blocks now, so that flush, which rewrites
   * the table in place, cannot fail for lack of space later. */
  if (r == 0)
    r = fde_pwrite_full(q->fd, old ? (const void *) src.table : q->zeros,
                        q->cluster_size, host);
  if (r == 0)
    r = qcow2_l2_install(q, host, old ? src.table : NULL, ref);
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

/* Write [start, start+span) of the guest disk to host, with buf (n bytes
 * at off, NULL for zeros) over the current contents.  Skips the read when
 * the new bytes cover everything. */
static int
write_merged(struct qcow2_disk *q, uint64_t host, uint64_t start,
             uint64_t span, const void *buf, uint64_t n, uint64_t off)
{
  char *tmp = malloc(span);
  int r = 0;

  if (tmp == NULL)
    return -ENOMEM;
  if (off != start || n != span)
    r = read_guest(q, tmp, start, span);
  if (r == 0) {
    if (buf != NULL)
      memcpy(tmp + (off - start), buf, n);
    else
      memset(tmp + (off - start), 0, n);
    r = fde_pwrite_full(q->fd, tmp, span, host);
  }
  free(tmp);
  /* Before the L2 entry shows the cluster: splicing readers (qcow2_map_file)
   * may use it only once the file really holds its bytes. */
  if (r == 0 && host + span > q->data_end)
    q->data_end = host + span;
  return r;
}

/* Extended L2, cluster allocated and ours: fill the touched subclusters
 * and mark them allocated. */
static int
write_subclusters(struct qcow2_disk *q, const struct qcow2_l2_ref *ref,
                  uint32_t i, const struct entry *e, const void *buf,
                  uint64_t n, uint64_t off)
{
  uint64_t gs = 1ull << q->granule_bits;
  uint64_t start = off & ~(gs - 1);
  uint64_t span = ((off + n + gs - 1) & ~(gs - 1)) - start;
  uint32_t mask = granule_mask(q, off, n);
  uint64_t cstart = off & ~((uint64_t) q->cluster_size - 1);
  int r = write_merged(q, e->host + (start - cstart), start, span, buf, n, off);

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

/* Where [off, off+n) can be written in place, if it can: a cluster of
 * ours, allocated, every touched subcluster allocated.  1 and *host, or 0. */
static int
in_place(struct qcow2_disk *q, uint64_t off, uint64_t n, uint64_t *host)
{
  uint64_t l1_index = off / qcow2_l1_span(q), l1e;
  uint32_t i = (off >> q->cluster_bits) & (qcow2_l2_entries(q) - 1);
  struct qcow2_l2_ref ref;
  struct entry e;
  int ok = 0;

  pthread_rwlock_rdlock(&q->map_lock);
  l1e = q->l1[l1_index];
  if ((l1e & QCOW_OFLAG_COPIED)
      && qcow2_l2_get(q, l1e & L1E_OFFSET_MASK, &ref) == 0) {
    e = decode_entry(q, ref.table, i);
    if (e.host && e.copied && !e.zero
        && (!q->extended_l2
            || ((uint32_t) e.bitmap & granule_mask(q, off, n))
               == granule_mask(q, off, n))) {
      *host = e.host + qcow2_offset_into_cluster(q, off);
      ok = 1;
    }
    qcow2_l2_put(q, &ref);
  }
  pthread_rwlock_unlock(&q->map_lock);
  return ok;
}

/* Write len bytes at guest offset off. */
int
qcow2_pwrite(struct fde_disk *d, const void *buf, size_t len, uint64_t off)
{
  struct qcow2_disk *q = to_qcow2(d);
  const char *p = buf;
  int r = 0;

  while (len > 0 && r == 0) {
    uint64_t n = q->cluster_size - qcow2_offset_into_cluster(q, off), host;
    if (n > len)
      n = len;
    if (in_place(q, off, n, &host))
      r = fde_pwrite_full(q->fd, p, n, host);
    else {
      pthread_mutex_lock(&q->alloc_lock);
      r = write_alloc(q, p, n, off);
      pthread_mutex_unlock(&q->alloc_lock);
    }
    p += n;
    off += n;
    len -= n;
  }
  return r;
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

  if ((!whole && !granules) || !zero_entry(q, &raw, &bitmap))
    return write_alloc(q, NULL, n, off);        /* zeros written out */
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

/* Make [off, off+len) read as zeros (punch and zero-range alike: whole
 * clusters become zero or unallocated entries, partial ones are written). */
int
qcow2_zero(struct fde_disk *d, uint64_t off, uint64_t len, bool punch)
{
  struct qcow2_disk *q = to_qcow2(d);
  int r = 0;

  pthread_mutex_lock(&q->alloc_lock);
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
