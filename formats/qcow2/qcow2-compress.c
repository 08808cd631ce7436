/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: qcow2 backend — compressed clusters.
 *
 * A compressed cluster is decompressed whole (deflate or zstd), into a
 * buffer of exactly one cluster which the codec may never overrun, and
 * must fill it completely.  A small cache of decompressed clusters keeps
 * sequential 4 KiB reads from decompressing the same cluster again and
 * again; its lock is held only to look up or swap entries, never across
 * I/O or decompression.  Entries are keyed by the whole descriptor; why
 * the reuse of freed clusters can never make one stale is explained at
 * the top of qcow2-refcount.c. */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

#include "format.h"
#include "qcow2.h"

#define ZCACHE_DEFAULT_BYTES (4u << 20)
#define ZCACHE_MAX_SLOTS 256    /* lookups scan the slots */
#define MAX_IDLE_WORKERS 16

struct zslot {
  uint64_t desc;                /* compressed descriptor; valid if data */
  uint8_t *data;                /* one decompressed cluster */
};

/* What one decompression needs, kept between calls so that the hot path
 * does not allocate (large allocations are mmap/munmap, which serialise
 * threads).  Taken from the pool by one thread at a time. */
struct zworker {
  struct zworker *next;
  ZSTD_DCtx *dctx;              /* created on first zstd use */
  z_stream zs;
  bool zs_ready;                /* inflateInit2 done */
  uint8_t *in;                  /* 2 clusters: the largest csize */
  uint8_t *out;                 /* 1 cluster, or NULL after a cache swap */
};

struct qcow2_zcache {
  pthread_mutex_t lock;         /* slots */
  unsigned next;                /* round-robin replacement */
  unsigned nr_slots;            /* the budget in clusters, 1..ZCACHE_MAX_SLOTS */
  struct zslot *slots;
  pthread_mutex_t pool_lock;    /* idle workers */
  struct zworker *idle;
  unsigned nr_idle;
  uint32_t cluster_size;
};

/* An empty cache for clusters of cluster_size bytes, holding as many as
 * budget bytes allow (0: the default), at least one. */
struct qcow2_zcache *
qcow2_zcache_new(uint32_t cluster_size, uint64_t budget)
{
  struct qcow2_zcache *z = calloc(1, sizeof *z);
  uint64_t n = (budget ? budget : ZCACHE_DEFAULT_BYTES) / cluster_size;

  if (z == NULL)
    return NULL;
  z->nr_slots = n < 1 ? 1 : n > ZCACHE_MAX_SLOTS ? ZCACHE_MAX_SLOTS
    : (unsigned) n;
  if ((z->slots = calloc(z->nr_slots, sizeof *z->slots)) == NULL) {
    free(z);
    return NULL;
  }
  pthread_mutex_init(&z->lock, NULL);
  pthread_mutex_init(&z->pool_lock, NULL);
  z->cluster_size = cluster_size;
  return z;
}

/* Free a worker and its codec state. */
static void
free_worker(struct zworker *w)
{
  if (w == NULL)
    return;
  if (w->zs_ready)
    inflateEnd(&w->zs);
  ZSTD_freeDCtx(w->dctx);
  free(w->in);
  free(w->out);
  free(w);
}

void
qcow2_zcache_free(struct qcow2_zcache *z)
{
  if (z == NULL)
    return;
  for (unsigned i = 0; i < z->nr_slots; i++)
    free(z->slots[i].data);
  free(z->slots);
  while (z->idle != NULL) {
    struct zworker *w = z->idle;
    z->idle = w->next;
    free_worker(w);
  }
  pthread_mutex_destroy(&z->lock);
  pthread_mutex_destroy(&z->pool_lock);
  free(z);
}

/* An idle worker, or a new one; NULL if out of memory. */
static struct zworker *
get_worker(struct qcow2_zcache *z)
{
  struct zworker *w;

  pthread_mutex_lock(&z->pool_lock);
  w = z->idle;
  if (w != NULL) {
    z->idle = w->next;
    z->nr_idle--;
  }
  pthread_mutex_unlock(&z->pool_lock);
  if (w == NULL) {
    w = calloc(1, sizeof *w);
    if (w != NULL && (w->in = malloc(2 * (size_t) z->cluster_size)) == NULL) {
      free(w);
      w = NULL;
    }
  }
  if (w != NULL && w->out == NULL
      && (w->out = malloc(z->cluster_size)) == NULL) {
    free_worker(w);
    w = NULL;
  }
  return w;
}

/* Return a worker to the pool (or free it if the pool is full). */
static void
put_worker(struct qcow2_zcache *z, struct zworker *w)
{
  pthread_mutex_lock(&z->pool_lock);
  if (z->nr_idle < MAX_IDLE_WORKERS) {
    w->next = z->idle;
    z->idle = w;
    z->nr_idle++;
    w = NULL;
  }
  pthread_mutex_unlock(&z->pool_lock);
  free_worker(w);
}

/* Copy [in_cluster, +len) of a cached cluster to buf; false on a miss. */
static bool
zcache_copy(struct qcow2_zcache *z, uint64_t desc, uint32_t in_cluster,
            void *buf, size_t len)
{
  bool hit = false;

  pthread_mutex_lock(&z->lock);
  for (unsigned i = 0; i < z->nr_slots; i++) {
    if (z->slots[i].data != NULL && z->slots[i].desc == desc) {
      memcpy(buf, z->slots[i].data + in_cluster, len);
      hit = true;
      break;
    }
  }
  pthread_mutex_unlock(&z->lock);
  return hit;
}

/* Put the worker's decompressed cluster in the cache; the worker gets
 * the evicted buffer back (or NULL) for its next use.  If another thread
 * cached the same cluster meanwhile, nothing changes. */
static void
zcache_insert(struct qcow2_zcache *z, uint64_t desc, struct zworker *w)
{
  uint8_t *old;

  pthread_mutex_lock(&z->lock);
  for (unsigned i = 0; i < z->nr_slots; i++) {
    if (z->slots[i].data != NULL && z->slots[i].desc == desc) {
      pthread_mutex_unlock(&z->lock);
      return;
    }
  }
  old = z->slots[z->next].data;
  z->slots[z->next].data = w->out;
  z->slots[z->next].desc = desc;
  z->next = (z->next + 1) % z->nr_slots;
  pthread_mutex_unlock(&z->lock);
  w->out = old;
}

/* Raw deflate into exactly one cluster.  windowBits -15 reads QEMU's -12
 * streams and those of tools using a larger window.  Trailing input after
 * the end of the stream is fine; a short output is not. */
static int
inflate_cluster(struct zworker *w, size_t in_len, size_t out_len)
{
  z_stream *zs = &w->zs;
  int r;

  if (!w->zs_ready) {
    memset(zs, 0, sizeof *zs);
    if (inflateInit2(zs, -15) != Z_OK)
      return -ENOMEM;
    w->zs_ready = true;
  }
  else if (inflateReset(zs) != Z_OK)
    return -EIO;
  zs->next_in = w->in;
  zs->avail_in = (uInt) in_len;
  zs->next_out = w->out;
  zs->avail_out = (uInt) out_len;
  r = inflate(zs, Z_FINISH);
  if ((r == Z_STREAM_END || r == Z_BUF_ERROR) && zs->avail_out == 0)
    return 0;
  return -EIO;
}

/* The zstd window the decoder may allocate: enough for a frame of one
 * cluster plus a margin, never more than 8 MiB. */
static int
zstd_window_log_max(unsigned cluster_bits)
{
  int log = (cluster_bits > 10 ? (int) cluster_bits : 10) + 2;

  return log > 23 ? 23 : log;
}

/* The worker's zstd context, created once with the window cap. */
static ZSTD_DCtx *
worker_dctx(struct zworker *w, unsigned cluster_bits)
{
  if (w->dctx != NULL) {
    ZSTD_DCtx_reset(w->dctx, ZSTD_reset_session_only);
    return w->dctx;
  }
  w->dctx = ZSTD_createDCtx();
  if (w->dctx != NULL
      && ZSTD_isError(ZSTD_DCtx_setParameter(
           w->dctx, ZSTD_d_windowLogMax, zstd_window_log_max(cluster_bits)))) {
    ZSTD_freeDCtx(w->dctx);
    w->dctx = NULL;
  }
  return w->dctx;
}

/* Stream-decompress zstd frames into exactly one cluster.  Every pass
 * must make progress, and the last frame must end exactly at the end of
 * the cluster (a nonzero hint means the content is larger). */
static int
zstd_cluster(struct zworker *w, size_t in_len, size_t out_len,
             unsigned cluster_bits)
{
  ZSTD_DCtx *dctx = worker_dctx(w, cluster_bits);
  ZSTD_inBuffer ib = { w->in, in_len, 0 };
  ZSTD_outBuffer ob = { w->out, out_len, 0 };
  size_t ret = 1;

  if (dctx == NULL)
    return -ENOMEM;
  while (ob.pos < ob.size) {
    size_t in_pos = ib.pos, out_pos = ob.pos;
    ret = ZSTD_decompressStream(dctx, &ob, &ib);
    if (ZSTD_isError(ret) || (ib.pos == in_pos && ob.pos == out_pos))
      return -EIO;
  }
  return ret == 0 ? 0 : -EIO;
}

/* Split a compressed descriptor into host offset and length (from the
 * offset to the end of the sector holding the last byte). */
void
qcow2_compressed_span(const struct qcow2_disk *q, uint64_t desc,
                      uint64_t *coffset, uint64_t *csize)
{
  unsigned x = 62 - (q->cluster_bits - 8);
  uint64_t nsec = (desc >> x) & ((1ull << (q->cluster_bits - 8)) - 1);

  *coffset = desc & ((1ull << x) - 1);
  *csize = (nsec + 1) * 512 - (*coffset & 511);    /* <= 2 clusters */
}

/* The same, checked (trap 19). */
static int
parse_descriptor(struct qcow2_disk *q, uint64_t desc, uint64_t *coffset,
                 size_t *csize)
{
  uint64_t len;

  qcow2_compressed_span(q, desc, coffset, &len);
  *csize = (size_t) len;
  if (*coffset > QCOW2_MAX_HOST_OFFSET || *coffset < q->cluster_size) {
    qcow2_corruption(q, "compressed cluster offset %#" PRIx64 " is invalid",
                     *coffset);
    return -EIO;
  }
  return 0;
}

/* Read and decompress the cluster desc describes into w->out.  A
 * compressed cluster running past the end of the file reads zeros there,
 * as in QEMU. */
static int
decompress(struct qcow2_disk *q, uint64_t desc, struct zworker *w)
{
  uint64_t coffset;
  size_t csize;
  int r = parse_descriptor(q, desc, &coffset, &csize);

  if (r < 0)
    return r;
  r = fde_pread_full(q->fd, w->in, csize, coffset);
  if (r == 0 && q->compression_type == QCOW2_COMPRESSION_ZSTD)
    r = zstd_cluster(w, csize, q->cluster_size, q->cluster_bits);
  else if (r == 0)
    r = inflate_cluster(w, csize, q->cluster_size);
  if (r == -EIO)
    qcow2_corruption(q, "compressed cluster at %#" PRIx64 " (%zu bytes) "
                     "does not decompress to one cluster", coffset, csize);
  return r;
}

/* Read [in_cluster, +len) of the compressed cluster desc into buf. */
int
qcow2_read_compressed(struct qcow2_disk *q, uint64_t desc,
                      uint32_t in_cluster, void *buf, size_t len)
{
  struct zworker *w;
  int r;

  if (zcache_copy(q->zcache, desc, in_cluster, buf, len))
    return 0;
  if ((w = get_worker(q->zcache)) == NULL)
    return -ENOMEM;
  r = decompress(q, desc, w);
  if (r == 0) {
    memcpy(buf, w->out + in_cluster, len);
    zcache_insert(q->zcache, desc, w);
  }
  put_worker(q->zcache, w);
  return r;
}
