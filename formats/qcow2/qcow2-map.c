/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: qcow2 backend — guest-to-host mapping (L1/L2, standard
 * and extended L2 entries), reads through the backing chain, and block
 * status for SEEK_DATA/SEEK_HOLE.
 *
 * qcow2_map() turns a guest offset into the longest run of one kind that
 * fits in one L2 table: a host-contiguous data run, zeros, unallocated, or
 * one compressed cluster.  Readers then issue one pread per host-contiguous
 * run (merging runs across L2 tables too). */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "chain.h"
#include "format.h"
#include "qcow2.h"

/* What one granule (a cluster, or a subcluster with extended L2) is. */
struct granule {
  enum qcow2_kind kind;
  uint64_t host;                /* QCOW2_DATA: host offset of its start */
  uint64_t desc;                /* QCOW2_COMPRESSED: descriptor */
};

/* Classify a standard or extended entry whose host offset is 0. */
static const char *
classify_unallocated(bool extended, uint64_t bitmap, unsigned sc,
                     struct granule *g)
{
  g->kind = QCOW2_BACKING;
  if (!extended)
    return NULL;
  if ((uint32_t) bitmap != 0)
    return "allocation bits set on an unallocated cluster";
  if (bitmap & (1ull << (32 + sc)))
    g->kind = QCOW2_ZERO;
  return NULL;
}

/* Classify the granule of L2 entry i, subcluster sc (0 for standard L2).
 * Returns NULL, or why the entry is corrupt. */
static const char *
classify(const struct qcow2_disk *q, const uint64_t *table, uint32_t i,
         unsigned sc, struct granule *g)
{
  uint64_t entry = qcow2_be64_at(table, q->extended_l2 ? 2 * i : i);
  uint64_t bitmap = q->extended_l2 ? qcow2_be64_at(table, 2 * i + 1) : 0;
  uint64_t host;

  if (entry & QCOW_OFLAG_COMPRESSED) {
    g->kind = QCOW2_COMPRESSED;         /* the bitmap is ignored */
    g->desc = entry & QCOW2_COMPRESSED_DESC_MASK;
    return NULL;
  }
  if (entry & L2E_STD_RESERVED_MASK)
    return "reserved bits set";
  if (!q->extended_l2 && (entry & QCOW_OFLAG_ZERO)) {
    g->kind = QCOW2_ZERO;
    return q->version < 3 ? "zero flag in a version 2 image" : NULL;
  }
  host = entry & L2E_OFFSET_MASK;
  if (host == 0)
    return classify_unallocated(q->extended_l2, bitmap, sc, g);
  if (!qcow2_is_cluster_aligned(q, host))
    return "data offset not aligned to the cluster size";
  g->kind = QCOW2_DATA;
  g->host = host + ((uint64_t) sc << q->granule_bits);
  if (!q->extended_l2)
    return NULL;
  if ((bitmap >> 32) & bitmap & 0xffffffffu)
    return "subcluster both allocated and zero";
  if (bitmap & (1ull << (32 + sc)))
    g->kind = QCOW2_ZERO;
  else if (!(bitmap & (1ull << sc)))
    g->kind = QCOW2_BACKING;
  return NULL;
}

/* Classify the granule holding guest offset off, from its pinned table. */
static const char *
classify_at(const struct qcow2_disk *q, const uint64_t *table, uint64_t off,
            struct granule *g)
{
  uint32_t i = (off >> q->cluster_bits) & (qcow2_l2_entries(q) - 1);
  unsigned sc = q->extended_l2
    ? (off >> q->granule_bits) & (QCOW2_SUBCLUSTERS - 1) : 0;

  return classify(q, table, i, sc, g);
}

/* Extend ext over the following granules of the same kind (and, for data,
 * host-contiguous) up to end.  A corrupt granule just ends the run; it is
 * reported when a read starts there. */
static void
extend_run(const struct qcow2_disk *q, const uint64_t *table, uint64_t off,
           uint64_t end, struct qcow2_extent *ext)
{
  uint64_t gsize = 1ull << q->granule_bits;
  uint64_t pos = off + ext->len;
  struct granule g;

  while (pos < end) {
    if (classify_at(q, table, pos, &g) != NULL || g.kind != ext->kind
        || g.kind == QCOW2_COMPRESSED
        || (g.kind == QCOW2_DATA && g.host != ext->host + ext->len))
      break;
    pos = end - pos < gsize ? end : pos + gsize;
    ext->len = pos - off;
  }
}

/* Map [off, off+len) as far as the L2 table of off allows.  On success
 * ext describes a run of ext->len > 0 bytes starting at off. */
static int
map_in_table(struct qcow2_disk *q, const uint64_t *table, uint64_t off,
             uint64_t end, struct qcow2_extent *ext)
{
  uint64_t gsize = 1ull << q->granule_bits;
  uint64_t in_granule = off & (gsize - 1);
  struct granule g = { .kind = QCOW2_BACKING };
  const char *why = classify_at(q, table, off, &g);

  if (why != NULL) {
    qcow2_corruption(q, "L2 entry for guest offset %#" PRIx64 " is corrupt: "
                     "%s", off, why);
    return -EIO;
  }
  ext->kind = g.kind;
  ext->desc = g.desc;
  ext->host = g.host + in_granule;
  if (g.kind == QCOW2_COMPRESSED) {       /* exactly one cluster */
    uint64_t left = q->cluster_size - qcow2_offset_into_cluster(q, off);
    ext->len = end - off < left ? end - off : left;
    return 0;
  }
  ext->len = end - off < gsize - in_granule ? end - off : gsize - in_granule;
  extend_run(q, table, off, end, ext);
  return 0;
}

static int map_locked(struct qcow2_disk *q, uint64_t l1_index, uint64_t off,
                      uint64_t end, struct qcow2_extent *ext);

/* Map guest offset off (< disk size) to a run of at most len bytes. */
int
qcow2_map(struct qcow2_disk *q, uint64_t off, uint64_t len,
          struct qcow2_extent *ext)
{
  uint64_t span = qcow2_l1_span(q);
  uint64_t l1_index = off / span;
  uint64_t end = (l1_index + 1) * span - off < len ? (l1_index + 1) * span
    : off + len;
  int r;

  ext->kind = QCOW2_BACKING;
  ext->len = end - off;
  if (l1_index >= q->l1_size)
    return 0;
  pthread_rwlock_rdlock(&q->map_lock);
  r = map_locked(q, l1_index, off, end, ext);
  pthread_rwlock_unlock(&q->map_lock);
  return r;
}

/* qcow2_map's lookup, with map_lock held so that the writer's updates of
 * L1 and L2 entries are never seen half done. */
static int
map_locked(struct qcow2_disk *q, uint64_t l1_index, uint64_t off,
           uint64_t end, struct qcow2_extent *ext)
{
  uint64_t l1e, l2_off;
  struct qcow2_l2_ref ref;
  int r;

  l1e = q->l1[l1_index];
  l2_off = l1e & L1E_OFFSET_MASK;
  if (l1e == 0)
    return 0;
  /* Here an offset of 0 means COPIED alone: corrupt (trap 14). */
  if ((l1e & L1E_RESERVED_MASK) || l2_off == 0
      || !qcow2_is_cluster_aligned(q, l2_off)
      || l2_off > q->file_size || q->file_size - l2_off < q->cluster_size
      || qcow2_overlaps_fixed_metadata(q, l2_off)) {
    qcow2_corruption(q, "L1 entry %" PRIu64 " (%#" PRIx64 ") is corrupt",
                     l1_index, l1e);
    return -EIO;
  }
  if ((r = qcow2_l2_get(q, l2_off, &ref)) < 0)
    return r;
  r = map_in_table(q, ref.table, off, end, ext);
  qcow2_l2_put(q, &ref);
  return r;
}

/* A pending host-contiguous data read, issued when the run breaks. */
struct pending {
  char *buf;
  uint64_t host;
  uint64_t len;
};

/* Issue the pending read, if any. */
static int
flush_pending(struct qcow2_disk *q, struct pending *pd)
{
  int r = 0;

  if (pd->len > 0) {
    r = fde_pread_full(q->fd, pd->buf, pd->len, pd->host);
    if (r < 0)
      qcow2_corruption(q, "read of %" PRIu64 " bytes at host offset %#"
                       PRIx64 ": %s", pd->len, pd->host, strerror(-r));
  }
  pd->len = 0;
  return r;
}

/* Read one mapped run into buf, deferring data so that host-contiguous
 * runs become one pread. */
static int
read_run(struct qcow2_disk *q, const struct qcow2_extent *e, char *buf,
         uint64_t off, struct pending *pd)
{
  int r;

  if (e->kind == QCOW2_DATA && pd->len > 0 && pd->host + pd->len == e->host) {
    pd->len += e->len;
    return 0;
  }
  if ((r = flush_pending(q, pd)) < 0)
    return r;
  switch (e->kind) {
  case QCOW2_DATA:
    pd->buf = buf;
    pd->host = e->host;
    pd->len = e->len;
    return 0;
  case QCOW2_ZERO:
    memset(buf, 0, e->len);
    return 0;
  case QCOW2_BACKING:
    return fde_chain_read_lower(q->backing, buf, e->len, off);
  case QCOW2_COMPRESSED:
    return qcow2_read_compressed(q, e->desc,
                                 qcow2_offset_into_cluster(q, off), buf,
                                 e->len);
  }
  return -EIO;
}

/* Read len bytes of the guest disk at off.  The whole read is one
 * guarded operation (qcow2-refcount.c): no cluster it mapped is reused
 * before its data has been read. */
int
qcow2_pread(struct fde_disk *d, void *buf, size_t len, uint64_t off)
{
  struct qcow2_disk *q = to_qcow2(d);
  struct pending pd = { .len = 0 };
  unsigned guard = qcow2_io_enter(q);
  char *p = buf;
  int r = 0;

  while (len > 0 && r == 0) {
    struct qcow2_extent e;
    if ((r = qcow2_map(q, off, len, &e)) < 0
        || (r = read_run(q, &e, p, off, &pd)) < 0)
      break;
    p += e.len;
    off += e.len;
    len -= e.len;
  }
  if (r == 0)
    r = flush_pending(q, &pd);
  qcow2_io_leave(q, guard);
  return r;
}

/* Status of the run at off: data if allocated here or in a backing layer,
 * zero for zero clusters and unallocated ranges with nothing below. */
int
qcow2_block_status(struct fde_disk *d, uint64_t off, uint64_t len,
                   uint64_t *run, unsigned *status)
{
  struct qcow2_disk *q = to_qcow2(d);
  struct qcow2_extent e;
  int r = qcow2_map(q, off, len, &e);

  if (r < 0)
    return r;
  *run = e.len;
  *status = FDE_BS_ZERO;
  switch (e.kind) {
  case QCOW2_DATA:
  case QCOW2_COMPRESSED:
    *status = FDE_BS_DATA;
    return 0;
  case QCOW2_ZERO:
    return 0;
  case QCOW2_BACKING:
    return fde_chain_status_lower(q->backing, off, e.len, run, status);
  }
  return -EIO;
}

/* The run at off as a range of a file, for replies spliced straight from
 * it: allocated data of this layer that the file already holds, or of a
 * backing layer that can say the same.  The caller brackets the map and
 * its use of the range with io_begin/io_end (qcow2_io_enter/leave) so the
 * cluster is not reused meanwhile; backing layers are opened read-only
 * and never free a cluster. */
int
qcow2_map_file(struct fde_disk *d, uint64_t off, uint64_t len, int *fd,
               uint64_t *host, uint64_t *run)
{
  struct qcow2_disk *q = to_qcow2(d);
  struct qcow2_extent e;
  int r = qcow2_map(q, off, len, &e);

  if (r < 0)
    return r;
  *run = e.len;
  if (e.kind == QCOW2_DATA) {
    /* data_end only grows, and only after the bytes are written. */
    uint64_t end = q->data_end;
    if (e.host > end || e.len > end - e.host)
      return 0;
    *fd = q->fd;
    *host = e.host;
    return 1;
  }
  if (e.kind != QCOW2_BACKING)
    return 0;                   /* zeros or compressed */
  return fde_chain_map_lower(q->backing, off, e.len, fd, host, run);
}
