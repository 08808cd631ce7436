/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: qcow2 backend — the consistency scan made before an
 * image is opened for writing.
 *
 * Writing trusts the refcounts (to free clusters), the COPIED flags (to
 * write in place) and the tables (to know what is metadata).  A hostile or
 * broken image could lie in any of them and make a write overwrite a
 * snapshot's data or the image's own tables.  So, like `qemu-img check`,
 * count every reference from the header, the tables, every L1 (active and
 * snapshots) and every L2, and compare with the refcounts on disk: more
 * references than the refcount says, a reference outside the file, a
 * COPIED flag that disagrees with the refcount, or a table written in
 * place (header, active L1, refcount table) that something else shares
 * refuses writing (reading stays possible).  Leaks (refcount above the
 * references) are harmless.
 *
 * Memory is one 32-bit counter per host cluster, refused above
 * MAX_SCAN_CLUSTERS; every count is bounded by the file size (trap 25).
 * Counts are exact: the refcounts on disk (up to 64 bits) are compared as
 * they are read, and a cluster with 2^32-1 or more references -- a
 * hostile image, 32 GiB of tables naming one cluster -- refuses writing
 * instead of wrapping.  After the comparison each counter is replaced by
 * what the later checks need: the class of the refcount on disk. */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "format.h"
#include "qcow2.h"

#define MAX_SCAN_CLUSTERS (1ull << 26)  /* 256 MiB of counters */

/* What refs[c] holds once the refcounts on disk have been compared. */
enum {
  RC_FREE,                      /* no reference and refcount 0 */
  RC_ONE,                       /* refcount exactly 1 */
  RC_OTHER,                     /* anything else */
};

struct scan {
  struct qcow2_disk *q;
  uint64_t nr_clusters;         /* clusters of the file */
  uint32_t *refs;               /* references counted; then an RC_* class */
  uint64_t *table;              /* one L2 table being walked */
  const char *problem;          /* why writing is refused, or NULL */
  uint64_t where;               /* host offset the problem is about */
};

static void
problem(struct scan *s, const char *why, uint64_t where)
{
  if (s->problem == NULL) {
    s->problem = why;
    s->where = where;
  }
}

/* Count one reference to every cluster of [offset, offset+len). */
static void
count(struct scan *s, uint64_t offset, uint64_t len)
{
  uint64_t first = offset >> s->q->cluster_bits;
  uint64_t last = (offset + len - 1) >> s->q->cluster_bits;

  if (len == 0)
    return;
  if (offset + len < offset || last >= s->nr_clusters) {
    problem(s, "a reference points beyond the end of the file", offset);
    return;
  }
  for (uint64_t c = first; c <= last; c++) {
    if (s->refs[c] == UINT32_MAX - 1) {
      problem(s, "a cluster has 2^32-1 references or more",
              c << s->q->cluster_bits);
      return;
    }
    s->refs[c]++;
  }
}

/* Count and check the entries of one L2 table. */
static void
walk_l2(struct scan *s)
{
  struct qcow2_disk *q = s->q;
  uint32_t n = qcow2_l2_entries(q), step = q->extended_l2 ? 2 : 1;

  for (uint32_t i = 0; i < n; i++) {
    uint64_t e = be64toh(s->table[i * step]), host, len;
    uint64_t bitmap = q->extended_l2 ? be64toh(s->table[i * step + 1]) : 0;
    if (e & QCOW_OFLAG_COMPRESSED) {
      if (e & QCOW_OFLAG_COPIED)
        problem(s, "a compressed cluster has the COPIED flag", 0);
      qcow2_compressed_span(q, e & QCOW2_COMPRESSED_DESC_MASK, &host, &len);
      if (host < q->cluster_size)
        problem(s, "compressed data in the header cluster", host);
      count(s, host, len);
      continue;
    }
    host = e & L2E_OFFSET_MASK;
    if (e & L2E_STD_RESERVED_MASK)
      problem(s, "an L2 entry has reserved bits set", host);
    if (!q->extended_l2 && (e & QCOW_OFLAG_ZERO) && q->version < 3)
      problem(s, "a zero cluster in a version 2 image", host);
    if (q->extended_l2 && ((bitmap >> 32) & bitmap & 0xffffffffu))
      problem(s, "a subcluster is both allocated and zero", host);
    if (q->extended_l2 && host == 0 && (uint32_t) bitmap != 0)
      problem(s, "an unallocated cluster has allocated subclusters", 0);
    if (host == 0)
      continue;
    if (!qcow2_is_cluster_aligned(q, host))
      problem(s, "a data cluster is not aligned", host);
    count(s, host, q->cluster_size);
  }
}

/* Read the L2 table at offset into s->table after checking where it is. */
static int
load_l2(struct scan *s, uint64_t l2)
{
  struct qcow2_disk *q = s->q;

  if (!qcow2_is_cluster_aligned(q, l2) || l2 >= q->file_size
      || q->file_size - l2 < q->cluster_size) {
    problem(s, "an L2 table is unaligned or beyond the end of the file", l2);
    return 1;
  }
  return fde_pread_full(q->fd, s->table, q->cluster_size, l2);
}

/* Read a big-endian L1 of entries at offset into host order (checked
 * against the file first). */
static int
load_l1(struct scan *s, uint64_t offset, uint32_t entries, uint64_t **l1)
{
  struct qcow2_disk *q = s->q;
  int r;

  *l1 = NULL;
  if (entries == 0)
    return 0;
  if (entries > QCOW2_MAX_L1_SIZE || !qcow2_is_cluster_aligned(q, offset)
      || offset > q->file_size || entries * 8ull > q->file_size - offset) {
    problem(s, "a snapshot L1 table is invalid", offset);
    return 0;
  }
  if ((*l1 = malloc(entries * 8ull)) == NULL)
    return -ENOMEM;
  if ((r = fde_pread_full(q->fd, *l1, entries * 8ull, offset)) < 0)
    return r;
  for (uint32_t i = 0; i < entries; i++)
    (*l1)[i] = be64toh((*l1)[i]);
  return 0;
}

/* Count an L1 table, its L2 tables and their data. */
static int
walk_l1(struct scan *s, const uint64_t *l1, uint32_t entries, uint64_t offset)
{
  count(s, offset, entries * 8ull);
  for (uint32_t i = 0; i < entries; i++) {
    uint64_t l2 = l1[i] & L1E_OFFSET_MASK;
    int r;
    if (l1[i] & L1E_RESERVED_MASK)
      problem(s, "an L1 entry has reserved bits set", l2);
    if (l1[i] != 0 && l2 == 0)
      problem(s, "an L1 entry has COPIED without an L2 table", 0);
    if (l2 == 0)
      continue;
    count(s, l2, s->q->cluster_size);
    if ((r = load_l2(s, l2)) < 0)
      return r;
    if (r == 0)
      walk_l2(s);
  }
  return 0;
}

/* Count every structure that holds a reference. */
static int
count_all(struct scan *s)
{
  struct qcow2_disk *q = s->q;
  int r;

  count(s, 0, q->cluster_size);                         /* header */
  count(s, q->reftable_offset, (uint64_t) q->reftable_clusters
        * q->cluster_size);
  for (uint64_t rt = 0; rt < q->reftable_entries; rt++)
    count(s, q->reftable[rt], q->reftable[rt] ? q->cluster_size : 0);
  count(s, q->snapshots_offset, q->snapshots_size);
  if ((r = walk_l1(s, q->l1, q->l1_size, q->l1_offset)) < 0)
    return r;
  for (uint32_t i = 0; i < q->nb_snapshots; i++) {
    const struct qcow2_snapshot *sn = &q->snapshots[i];
    uint64_t *l1;
    if ((r = load_l1(s, sn->l1_table_offset, sn->l1_size, &l1)) == 0
        && l1 != NULL)
      r = walk_l1(s, l1, sn->l1_size, sn->l1_table_offset);
    free(l1);
    if (r < 0)
      return r;
  }
  return 0;
}

/* One cluster's refcount on disk, as qcow2_refcounts_scan reads it: no
 * more references than the refcount; then keep only its class. */
static void
compare_one(void *ctx, uint64_t c, uint64_t refcount)
{
  struct scan *s = ctx;

  if (s->refs[c] > refcount)
    problem(s, "a cluster has more references than its refcount",
            c << s->q->cluster_bits);
  s->refs[c] = refcount == 1 ? RC_ONE
    : refcount == 0 && s->refs[c] == 0 ? RC_FREE : RC_OTHER;
}

/* Every refblock has exactly one reference. */
static void
check_refblocks(struct scan *s)
{
  for (uint64_t rt = 0; rt < s->q->reftable_entries; rt++) {
    uint64_t c = s->q->reftable[rt] >> s->q->cluster_bits;
    if (s->q->reftable[rt] != 0 && c < s->nr_clusters
        && s->refs[c] != RC_ONE)
      problem(s, "a refcount block's refcount is not 1",
              s->q->reftable[rt]);
  }
}

/* The clusters written in place whatever their flags say -- the header,
 * the active L1 table and the refcount table -- have refcount 1 (and so
 * one reference: this one).  A snapshot's L1 that is the active one, or a
 * table that is also data, would be changed under it (QEMU's overlap
 * check refuses those writes: "inactive L1 table" and the like). */
static void
check_rewritten(struct scan *s)
{
  struct qcow2_disk *q = s->q;
  const struct { uint64_t offset, len; const char *what; } t[] = {
    { 0, q->cluster_size, "the header's refcount is not 1" },
    { q->l1_offset, q->l1_size * 8ull,
      "the active L1 table is shared (its refcount is not 1)" },
    { q->reftable_offset, (uint64_t) q->reftable_clusters * q->cluster_size,
      "the refcount table is shared (its refcount is not 1)" },
  };

  for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
    uint64_t first = t[i].offset >> q->cluster_bits;
    uint64_t last = t[i].len == 0 ? first
      : (t[i].offset + t[i].len - 1) >> q->cluster_bits;
    for (uint64_t c = first; t[i].len > 0 && c <= last
           && c < s->nr_clusters; c++)
      if (s->refs[c] != RC_ONE) {
        problem(s, t[i].what, c << q->cluster_bits);
        break;
      }
  }
}

/* Remember the clusters nothing uses (no reference, refcount 0): the
 * allocator reuses them before it appends.  (Clusters freed during the
 * session join the map after their grace period, qcow2-refcount.c.) */
static int
build_free_map(struct scan *s)
{
  struct qcow2_disk *q = s->q;
  uint64_t words = (s->nr_clusters + 63) / 64;

  q->free_map = calloc(words ? words : 1, 8);
  if (q->free_map == NULL)
    return -ENOMEM;
  for (uint64_t c = 1; c < s->nr_clusters; c++)
    if (s->refs[c] == RC_FREE)
      q->free_map[c / 64] |= 1ull << (c % 64);
  q->free_map_clusters = s->nr_clusters;
  q->free_cursor = 1;
  return 0;
}

/* COPIED in the active L1 and its L2 tables must mean refcount 1. */
static int
check_copied(struct scan *s)
{
  struct qcow2_disk *q = s->q;
  uint32_t step = q->extended_l2 ? 2 : 1;

  for (uint32_t i = 0; i < q->l1_size && s->problem == NULL; i++) {
    uint64_t l2 = q->l1[i] & L1E_OFFSET_MASK;
    int r;
    if (l2 == 0)
      continue;
    if (((q->l1[i] & QCOW_OFLAG_COPIED) != 0)
        != (s->refs[l2 >> q->cluster_bits] == RC_ONE))
      problem(s, "an L1 entry's COPIED flag disagrees with the refcount", l2);
    if ((r = load_l2(s, l2)) != 0)
      return r < 0 ? r : 0;
    for (uint32_t j = 0; j < qcow2_l2_entries(q); j++) {
      uint64_t e = be64toh(s->table[j * step]);
      uint64_t host = e & L2E_OFFSET_MASK;
      if ((e & QCOW_OFLAG_COMPRESSED) || host == 0)
        continue;
      if (((e & QCOW_OFLAG_COPIED) != 0)
          != (s->refs[host >> q->cluster_bits] == RC_ONE))
        problem(s, "an L2 entry's COPIED flag disagrees with the refcount",
                host);
    }
  }
  return 0;
}

/* Refuse writing (with -EACCES and a message) unless the image's
 * references and refcounts agree.  Called at open, before any write. */
int
qcow2_check_for_writing(struct qcow2_disk *q, const char *read_only_opt)
{
  struct scan s = { .q = q };
  int r = -ENOMEM;

  s.nr_clusters = (q->file_size + q->cluster_size - 1) >> q->cluster_bits;
  if (s.nr_clusters > MAX_SCAN_CLUSTERS) {
    fde_error("%s: image file too large to check before writing (%" PRIu64
              " clusters); export it with %s", q->disk.path, s.nr_clusters,
              read_only_opt);
    return -EFBIG;
  }
  s.refs = calloc(s.nr_clusters + 1, sizeof *s.refs);
  s.table = malloc(q->cluster_size);
  if (s.refs != NULL && s.table != NULL && (r = count_all(&s)) == 0
      && (r = qcow2_refcounts_scan(q, s.nr_clusters, compare_one, &s)) == 0) {
    check_refblocks(&s);
    check_rewritten(&s);
    r = check_copied(&s);
    if (r == 0 && s.problem == NULL)
      r = build_free_map(&s);
  }
  free(s.refs);
  free(s.table);
  if (r == 0 && s.problem != NULL) {
    fde_error("%s: inconsistent image (%s, at %#" PRIx64 "); it can only be "
              "exported read-only (%s); 'qemu-img check -r all' may repair "
              "it", q->disk.path, s.problem, s.where, read_only_opt);
    r = -EACCES;
  }
  return r;
}
