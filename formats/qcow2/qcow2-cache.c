/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: qcow2 backend — the L2-table cache.
 *
 * L2 tables are loaded on demand (opening even a 1 TiB image reads none)
 * and kept in a bounded cache.  The budget is params->cache_bytes, or
 * DEFAULT_BUDGET: 4 MiB of tables, i.e. 64 tables of 64 KiB, each covering
 * 512 MiB of guest disk, so 32 GiB of disk at the default cluster size
 * stay cached (at 4 KiB clusters, 1024 tables of 2 MiB each: 2 GiB).
 * Whatever the budget, the cache holds at least MIN_ENTRIES tables and at
 * most MAX_SHARDS * MAX_SHARD_ENTRIES (16384).
 *
 * Thread safety without a global I/O lock: the cache is split into
 * shards by table offset, each with its own mutex held only for the
 * lookup and bookkeeping, never across the pread of a table.  Entries are
 * reference counted while a reader uses them; only unreferenced entries
 * are evicted (least recently used first).  Two threads missing on the
 * same table may both read it; the second insert is dropped.  When every
 * entry of a shard is in use, a table is handed out uncached. */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "format.h"
#include "qcow2.h"

#define DEFAULT_BUDGET    (4u * 1024 * 1024)
#define MIN_ENTRIES       4             /* whatever the budget says */
#define MAX_SHARDS        64
#define MAX_SHARD_ENTRIES 256           /* keeps the linear lookup short */
#define ENTRIES_PER_SHARD 8             /* target before adding shards */

struct slot {
  uint64_t offset;              /* table's host offset; 0 = empty slot */
  uint64_t *table;              /* big endian, as on disk */
  unsigned refs;
  uint64_t last_use;
  bool dirty;                   /* changed in memory; holds one pin */
  bool written;                 /* dirty, but written since the change */
};

struct shard {
  pthread_mutex_t lock;
  uint64_t clock;
  unsigned nr_slots;
  struct slot *slots;
};

struct qcow2_l2_cache {
  uint32_t table_bytes;
  unsigned capacity;            /* slots in all shards */
  atomic_uint nr_dirty;
  unsigned nr_shards;
  struct shard shards[];
};

/* Entries the budget allows, within the bounds above. */
static uint64_t
budget_entries(uint32_t table_bytes, uint64_t budget)
{
  uint64_t n = (budget ? budget : DEFAULT_BUDGET) / table_bytes;

  if (n < MIN_ENTRIES)
    n = MIN_ENTRIES;
  if (n > (uint64_t) MAX_SHARDS * MAX_SHARD_ENTRIES)
    n = (uint64_t) MAX_SHARDS * MAX_SHARD_ENTRIES;
  return n;
}

/* Build an empty cache of about budget bytes of tables. */
struct qcow2_l2_cache *
qcow2_l2_cache_new(uint32_t table_bytes, uint64_t budget)
{
  uint64_t entries = budget_entries(table_bytes, budget);
  unsigned nr_shards = entries / ENTRIES_PER_SHARD;
  struct qcow2_l2_cache *c;

  if (nr_shards < 1)
    nr_shards = 1;
  if (nr_shards > MAX_SHARDS)
    nr_shards = MAX_SHARDS;
  c = calloc(1, sizeof *c + nr_shards * sizeof(struct shard));
  if (c == NULL)
    return NULL;
  c->table_bytes = table_bytes;
  c->capacity = (unsigned) entries;
  c->nr_shards = nr_shards;
  for (unsigned i = 0; i < nr_shards; i++) {
    struct shard *s = &c->shards[i];
    s->nr_slots = entries / nr_shards + (i < entries % nr_shards);
    s->slots = calloc(s->nr_slots, sizeof *s->slots);
    pthread_mutex_init(&s->lock, NULL);
    if (s->slots == NULL) {
      c->nr_shards = i + 1;
      qcow2_l2_cache_free(c);
      return NULL;
    }
  }
  return c;
}

/* Free every table; no reader may hold one. */
void
qcow2_l2_cache_free(struct qcow2_l2_cache *c)
{
  if (c == NULL)
    return;
  for (unsigned i = 0; i < c->nr_shards; i++) {
    struct shard *s = &c->shards[i];
    for (unsigned j = 0; j < s->nr_slots; j++)
      free(s->slots[j].table);
    free(s->slots);
    pthread_mutex_destroy(&s->lock);
  }
  free(c);
}

/* The shard a table offset belongs to (a cheap multiplicative hash of
 * the cluster index). */
static struct shard *
shard_of(struct qcow2_l2_cache *c, unsigned cluster_bits, uint64_t offset)
{
  uint64_t h = (offset >> cluster_bits) * 0x9e3779b97f4a7c15ull;

  return &c->shards[(h >> 32) % c->nr_shards];
}

/* Find offset in the shard and pin it; caller holds the lock. */
static struct slot *
lookup_locked(struct shard *s, uint64_t offset)
{
  for (unsigned i = 0; i < s->nr_slots; i++) {
    struct slot *e = &s->slots[i];
    if (e->offset == offset) {
      e->refs++;
      e->last_use = ++s->clock;
      return e;
    }
  }
  return NULL;
}

/* An empty slot, or the least recently used unpinned one; NULL if all
 * are pinned.  Caller holds the lock. */
static struct slot *
victim_locked(struct shard *s)
{
  struct slot *best = NULL;

  for (unsigned i = 0; i < s->nr_slots; i++) {
    struct slot *e = &s->slots[i];
    if (e->offset == 0)
      return e;
    if (e->refs == 0 && (best == NULL || e->last_use < best->last_use))
      best = e;
  }
  return best;
}

/* Read one L2 table from the image (no lock held). */
static int
load_table(struct qcow2_disk *q, uint64_t offset, uint64_t **table)
{
  int r;

  *table = malloc(q->cluster_size);
  if (*table == NULL)
    return -ENOMEM;
  r = fde_pread_full(q->fd, *table, q->cluster_size, offset);
  if (r < 0) {
    qcow2_corruption(q, "reading the L2 table at %#" PRIx64 ": %s", offset,
                     strerror(-r));
    free(*table);
    *table = NULL;
  }
  return r;
}

/* Insert a freshly read table, unless another thread was first or every
 * slot is pinned (then the reader keeps a private copy). */
static void
insert(struct shard *s, uint64_t offset, uint64_t *table,
       struct qcow2_l2_ref *ref)
{
  struct slot *e;
  uint64_t *old = NULL;

  pthread_mutex_lock(&s->lock);
  e = lookup_locked(s, offset);
  if (e == NULL && (e = victim_locked(s)) != NULL) {
    old = e->table;
    e->offset = offset;
    e->table = table;
    e->refs = 1;
    e->last_use = ++s->clock;
    table = NULL;
  }
  pthread_mutex_unlock(&s->lock);
  free(old);
  if (e != NULL) {
    free(table);                /* NULL if ours went in */
    ref->table = e->table;
    ref->slot = e;
  } else {
    ref->table = table;
    ref->slot = NULL;
  }
}

/* Pin the L2 table at l2_offset (cluster aligned, inside the file),
 * reading it if needed.  Release it with qcow2_l2_put.  0 or -errno. */
int
qcow2_l2_get(struct qcow2_disk *q, uint64_t l2_offset,
             struct qcow2_l2_ref *ref)
{
  struct shard *s = shard_of(q->l2_cache, q->cluster_bits, l2_offset);
  struct slot *e;
  uint64_t *table;
  int r;

  pthread_mutex_lock(&s->lock);
  e = lookup_locked(s, l2_offset);
  pthread_mutex_unlock(&s->lock);
  if (e != NULL) {
    ref->table = e->table;      /* stable while pinned */
    ref->slot = e;
    return 0;
  }
  if ((r = load_table(q, l2_offset, &table)) < 0)
    return r;
  insert(s, l2_offset, table, ref);
  return 0;
}

/* Unpin a table from qcow2_l2_get. */
void
qcow2_l2_put(struct qcow2_disk *q, struct qcow2_l2_ref *ref)
{
  struct slot *e = ref->slot;
  struct shard *s;

  if (e == NULL) {              /* an uncached table */
    free((void *) ref->table);
    return;
  }
  s = shard_of(q->l2_cache, q->cluster_bits, e->offset);  /* pinned: stable */
  pthread_mutex_lock(&s->lock);
  e->refs--;
  pthread_mutex_unlock(&s->lock);
}

/* ---- Updates (the writer holds q->alloc_lock) ----------------------------
 *
 * A table the writer changes stays in the cache, pinned, until a flush
 * has written it and a sync has made the write durable: readers always
 * find the newest version there, nothing evicts it unwritten, and a flush
 * that failed after writing it writes it again. */

/* Pin the table at l2_offset in a cache slot (never a private copy, which
 * updates would miss).  -EAGAIN when every slot of its shard is pinned:
 * the caller flushes (unpinning dirty tables) and tries again. */
int
qcow2_l2_get_for_update(struct qcow2_disk *q, uint64_t l2_offset,
                        struct qcow2_l2_ref *ref)
{
  int r = qcow2_l2_get(q, l2_offset, ref);

  if (r == 0 && ref->slot == NULL) {
    qcow2_l2_put(q, ref);
    return -EAGAIN;
  }
  return r;
}

/* Put a new table (zeros, or a copy of another) at l2_offset, pinned.
 * 0, -ENOMEM, or -EAGAIN when every slot of its shard is pinned (nothing
 * is cached then; the caller gives the cluster back, flushes, retries). */
int
qcow2_l2_install(struct qcow2_disk *q, uint64_t l2_offset,
                 const uint64_t *copy, struct qcow2_l2_ref *ref)
{
  struct shard *s = shard_of(q->l2_cache, q->cluster_bits, l2_offset);
  uint64_t *table = malloc(q->cluster_size);

  if (table == NULL)
    return -ENOMEM;
  if (copy != NULL)
    memcpy(table, copy, q->cluster_size);
  else
    memset(table, 0, q->cluster_size);
  insert(s, l2_offset, table, ref);
  if (ref->slot == NULL) {
    qcow2_l2_put(q, ref);
    return -EAGAIN;
  }
  return 0;
}

/* The pinned table was changed: keep it until qcow2_l2_write_dirty. */
void
qcow2_l2_mark_dirty(struct qcow2_disk *q, struct qcow2_l2_ref *ref)
{
  struct slot *e = ref->slot;
  struct shard *s = shard_of(q->l2_cache, q->cluster_bits, e->offset);

  pthread_mutex_lock(&s->lock);
  if (!e->dirty) {
    e->dirty = true;
    e->refs++;
    atomic_fetch_add(&q->l2_cache->nr_dirty, 1);
  }
  e->written = false;
  pthread_mutex_unlock(&s->lock);
}

/* Write every dirty table to its place in the file.  They stay dirty and
 * pinned: only qcow2_l2_clean_written, once a sync has made the writes
 * durable, lets them go, so a failed write or sync is simply retried. */
int
qcow2_l2_write_dirty(struct qcow2_disk *q)
{
  struct qcow2_l2_cache *c = q->l2_cache;

  for (unsigned i = 0; i < c->nr_shards; i++) {
    struct shard *s = &c->shards[i];
    for (unsigned j = 0; j < s->nr_slots; j++) {
      struct slot *e = &s->slots[j];
      int r;
      if (!e->dirty)            /* only the writer sets it: no race */
        continue;
      r = fde_pwrite_full(q->fd, e->table, q->cluster_size, e->offset);
      if (r < 0)
        return r;
      e->written = true;        /* the writer's alone, like dirty */
    }
  }
  return 0;
}

/* The tables written by qcow2_l2_write_dirty and not changed since are
 * durable: mark them clean and unpin them. */
void
qcow2_l2_clean_written(struct qcow2_disk *q)
{
  struct qcow2_l2_cache *c = q->l2_cache;

  for (unsigned i = 0; i < c->nr_shards; i++) {
    struct shard *s = &c->shards[i];
    for (unsigned j = 0; j < s->nr_slots; j++) {
      struct slot *e = &s->slots[j];
      if (!e->dirty || !e->written)
        continue;
      pthread_mutex_lock(&s->lock);
      e->dirty = e->written = false;
      e->refs--;
      pthread_mutex_unlock(&s->lock);
      atomic_fetch_sub(&c->nr_dirty, 1);
    }
  }
}

unsigned
qcow2_l2_dirty_count(struct qcow2_disk *q)
{
  return atomic_load(&q->l2_cache->nr_dirty);
}

unsigned
qcow2_l2_capacity(struct qcow2_disk *q)
{
  return q->l2_cache->capacity;
}

/* The cluster at l2_offset was freed and is about to be given to other
 * data (qcow2-refcount.c, alloc_lock held, its grace period over): drop a
 * clean cached copy of a table that lived there, so that a new table
 * installed at the same offset later never finds the old contents (QEMU
 * discards cache entries of freed clusters the same way).  Nothing can
 * pin such a table now: no L1 entry names it, and readers pin tables only
 * under map_lock after reading the L1; should one still be pinned, its
 * slot stops matching any lookup (an unaligned offset in the same shard)
 * and is evicted once unpinned.  A dirty table is never freed. */
void
qcow2_l2_forget(struct qcow2_disk *q, uint64_t l2_offset)
{
  struct shard *s = shard_of(q->l2_cache, q->cluster_bits, l2_offset);

  pthread_mutex_lock(&s->lock);
  for (unsigned i = 0; i < s->nr_slots; i++) {
    struct slot *e = &s->slots[i];
    if (e->offset != l2_offset || e->dirty)
      continue;
    if (e->refs == 0) {
      free(e->table);
      e->table = NULL;
      e->offset = 0;
    } else
      e->offset |= 1;
  }
  pthread_mutex_unlock(&s->lock);
}
