/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: qcow2 backend, private declarations shared by the
 * files of formats/qcow2/.
 *
 * Layout follows QEMU's block/qcow2.h: on-disk structures (packed, big
 * endian, converted only in the accessors), feature bits and masks, the
 * per-image state, small inline helpers, then prototypes grouped by the
 * file that defines them.  Cross-file symbols carry the qcow2_ prefix;
 * file-local helpers do not. */
#ifndef FDE_QCOW2_H
#define FDE_QCOW2_H

#include <endian.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "format.h"

/* ---- On-disk structures ---------------------------------------------- */

#define QCOW2_MAGIC 0x514649fbu         /* "QFI\xfb" */

/* The header up to and including compression_type's padding (v3 layout;
 * v2 ends at incompatible_features). */
struct qcow2_header {
  uint32_t magic;
  uint32_t version;
  uint64_t backing_file_offset;
  uint32_t backing_file_size;
  uint32_t cluster_bits;
  uint64_t size;
  uint32_t crypt_method;
  uint32_t l1_size;
  uint64_t l1_table_offset;
  uint64_t refcount_table_offset;
  uint32_t refcount_table_clusters;
  uint32_t nb_snapshots;
  uint64_t snapshots_offset;
  /* v3 */
  uint64_t incompatible_features;
  uint64_t compatible_features;
  uint64_t autoclear_features;
  uint32_t refcount_order;
  uint32_t header_length;
  /* optional, present when header_length > 104 */
  uint8_t compression_type;
  uint8_t padding[7];
} __attribute__((packed));
_Static_assert(sizeof(struct qcow2_header) == 112, "qcow2 header size");

#define QCOW2_V2_HEADER_LENGTH 72
#define QCOW2_V3_HEADER_LENGTH 104

/* Header extension record head; payload and padding to 8 follow. */
struct qcow2_ext {
  uint32_t type;
  uint32_t len;
} __attribute__((packed));
_Static_assert(sizeof(struct qcow2_ext) == 8, "qcow2 extension size");

#define QCOW2_EXT_END             0x00000000u
#define QCOW2_EXT_BACKING_FORMAT  0xe2792acau
#define QCOW2_EXT_FEATURE_TABLE   0x6803f857u
#define QCOW2_EXT_BITMAPS         0x23852875u
#define QCOW2_EXT_CRYPTO          0x0537be77u
#define QCOW2_EXT_DATA_FILE       0x44415441u

/* One entry of the feature-name table extension. */
struct qcow2_feature_name {
  uint8_t type;                 /* 0 incompatible, 1 compatible, 2 autoclear */
  uint8_t bit;
  char name[46];                /* NUL padded, not necessarily terminated */
} __attribute__((packed));
_Static_assert(sizeof(struct qcow2_feature_name) == 48, "feature name size");

/* Payload of the bitmaps extension. */
struct qcow2_bitmaps_ext {
  uint32_t nb_bitmaps;
  uint32_t reserved;
  uint64_t directory_size;
  uint64_t directory_offset;
} __attribute__((packed));
_Static_assert(sizeof(struct qcow2_bitmaps_ext) == 24, "bitmaps ext size");

/* Fixed part of a snapshot table entry; extra data, id and name follow. */
struct qcow2_snapshot_header {
  uint64_t l1_table_offset;
  uint32_t l1_size;
  uint16_t id_str_size;
  uint16_t name_size;
  uint32_t date_sec;
  uint32_t date_nsec;
  uint64_t vm_clock_nsec;
  uint32_t vm_state_size;
  uint32_t extra_data_size;
} __attribute__((packed));
_Static_assert(sizeof(struct qcow2_snapshot_header) == 40,
               "snapshot header size");

/* Known part of a snapshot's extra data. */
struct qcow2_snapshot_extra {
  uint64_t vm_state_size_large;
  uint64_t disk_size;
  uint64_t icount;
} __attribute__((packed));
_Static_assert(sizeof(struct qcow2_snapshot_extra) == 24,
               "snapshot extra size");

/* ---- Feature bits, limits and masks ---------------------------------- */

#define QCOW2_INCOMPAT_DIRTY_BITNR        0
#define QCOW2_INCOMPAT_CORRUPT_BITNR      1
#define QCOW2_INCOMPAT_DATA_FILE_BITNR    2
#define QCOW2_INCOMPAT_COMPRESSION_BITNR  3
#define QCOW2_INCOMPAT_EXTL2_BITNR        4
#define QCOW2_INCOMPAT_DIRTY        (1ull << QCOW2_INCOMPAT_DIRTY_BITNR)
#define QCOW2_INCOMPAT_CORRUPT      (1ull << QCOW2_INCOMPAT_CORRUPT_BITNR)
#define QCOW2_INCOMPAT_DATA_FILE    (1ull << QCOW2_INCOMPAT_DATA_FILE_BITNR)
#define QCOW2_INCOMPAT_COMPRESSION  (1ull << QCOW2_INCOMPAT_COMPRESSION_BITNR)
#define QCOW2_INCOMPAT_EXTL2        (1ull << QCOW2_INCOMPAT_EXTL2_BITNR)
#define QCOW2_INCOMPAT_MASK         0x1full

#define QCOW2_COMPAT_LAZY_REFCOUNTS     (1ull << 0)
#define QCOW2_AUTOCLEAR_BITMAPS         (1ull << 0)
#define QCOW2_AUTOCLEAR_DATA_FILE_RAW   (1ull << 1)

#define QCOW2_COMPRESSION_ZLIB  0
#define QCOW2_COMPRESSION_ZSTD  1

#define QCOW2_CRYPT_NONE  0
#define QCOW2_CRYPT_AES   1
#define QCOW2_CRYPT_LUKS  2

#define QCOW2_MIN_CLUSTER_BITS        9
#define QCOW2_MAX_CLUSTER_BITS        21
#define QCOW2_MIN_EXTL2_CLUSTER_BITS  14        /* subcluster >= 512 B */
#define QCOW2_SUBCLUSTERS             32
#define QCOW2_MAX_L1_SIZE       (32u * 1024 * 1024 / 8)    /* entries */
#define QCOW2_MAX_REFTABLE_BYTES (8u * 1024 * 1024)
#define QCOW2_MAX_SNAPSHOTS     65536u
#define QCOW2_MAX_SNAPSHOT_TABLE (64u * 1024 * 1024)
#define QCOW2_MAX_SNAPSHOT_EXTRA 1024u
#define QCOW2_MAX_BACKING_NAME  1023u
#define QCOW2_MAX_FORMAT_NAME   16u             /* incl. the NUL */
#define QCOW2_MAX_BITMAPS       65535u
#define QCOW2_MAX_BITMAP_DIR    (1024ull * 65535)

#define L1E_OFFSET_MASK         0x00fffffffffffe00ull
#define L1E_RESERVED_MASK       0x7f000000000001ffull
#define L2E_OFFSET_MASK         0x00fffffffffffe00ull
#define L2E_STD_RESERVED_MASK   0x3f000000000001feull
#define QCOW_OFLAG_COPIED       (1ull << 63)
#define QCOW_OFLAG_COMPRESSED   (1ull << 62)
#define QCOW_OFLAG_ZERO         1ull
#define QCOW2_COMPRESSED_DESC_MASK  0x3fffffffffffffffull
#define QCOW2_MAX_HOST_OFFSET   ((1ull << 56) - 1)

/* ---- Per-image state ---------------------------------------------------- */

/* A reference to drop once the tables that replaced it are durable.  At
 * most QCOW2_MAX_DEFERRED_FREES wait (16 bytes each): reaching it forces a
 * flush, whose fdatasync waits for the disk, so it is large enough that a
 * long run of overwrites of compressed clusters (two or more frees per
 * cluster) flushes once per gigabytes, not once per few hundred MiB. */
#define QCOW2_MAX_DEFERRED_FREES 65536

/* Deferred frees covering at least this many bytes (entries times the
 * cluster size) make an allocation that would otherwise extend the file
 * flush first, so that they are applied and reused (qcow2-write.c,
 * flush_to_reuse).  That flush costs three fdatasyncs and runs at most
 * once per 8 MiB of references dropped, and only when the free map is
 * empty: far less than writing the 8 MiB it saves from being appended,
 * yet small enough that a discard (fstrim) followed by writes, with no
 * fsync in between, reuses the space as QEMU's immediate frees do. */
#define QCOW2_REUSE_FLUSH_BYTES (8ull << 20)
struct qcow2_free {
  uint64_t offset;
  uint64_t len;
};

/* Runs of clusters [first, first+n), in the order they were added. */
struct qcow2_run {
  uint64_t first;
  uint64_t n;
};
struct qcow2_runs {
  struct qcow2_run *run;
  size_t nr, cap;
};

struct qcow2_l2_cache;          /* qcow2-cache.c, opaque */
struct qcow2_zcache;            /* qcow2-compress.c, opaque */

/* One internal snapshot, as parsed from the table. */
struct qcow2_snapshot {
  uint64_t l1_table_offset;
  uint32_t l1_size;
  uint64_t disk_size;           /* from extra data, else the header's size */
  uint64_t vm_state_size;
  uint32_t date_sec;
  char *id;                     /* NUL-terminated copies */
  char *name;
};

/* Guest clusters [first, end) whose new host clusters are being written
 * outside alloc_lock (qcow2-write.c, write_allocating): no other
 * allocating write, zeroing or discard touches them until the run's L2
 * entries are stored.  QEMU's "dependent requests" (qcow2.c,
 * handle_dependencies) do the same for its allocating writes.  Each lives
 * on its writer's stack, on q->inflight's list while alloc_lock says so. */
struct qcow2_inflight {
  uint64_t first, end;
  struct qcow2_inflight *next;
};

struct qcow2_disk {
  struct fde_disk disk;         /* must come first */
  int fd;
  uint64_t file_size;           /* at open time, then past every allocation */
  /* The file is at least this long, and holds every byte below it that
   * an L2 entry names (a run still being written, not yet named, may lie
   * below it: runs end in any order, qcow2-write.c). */
  _Atomic uint64_t data_end;

  /* geometry */
  unsigned version;
  unsigned cluster_bits;
  uint32_t cluster_size;
  bool extended_l2;
  unsigned l2_bits;             /* log2(entries per L2 table) */
  unsigned granule_bits;        /* subcluster (extended L2) or cluster */
  unsigned refcount_order;
  uint8_t compression_type;
  uint64_t header_size;         /* the header's size field, unrounded */

  /* features */
  uint64_t incompatible, compatible, autoclear;
  struct qcow2_feature_name *feature_names;
  unsigned nr_feature_names;
  uint32_t nb_bitmaps;          /* 0 when absent or stale */

  /* the L1 being exported (active or a snapshot's), host order */
  uint64_t *l1;
  uint32_t l1_size;
  const struct qcow2_snapshot *exported;   /* NULL: active layer */

  /* snapshots */
  struct qcow2_snapshot *snapshots;
  uint32_t nb_snapshots;

  /* backing chain */
  char *backing_name;           /* as stored */
  char backing_format[QCOW2_MAX_FORMAT_NAME];   /* "" if no extension */
  struct fde_disk *backing;     /* (formats/chain.h) its path: as resolved */

  /* caches and run-time error reporting */
  struct qcow2_l2_cache *l2_cache;
  struct qcow2_zcache *zcache;
  atomic_uint errors_logged;

  /* where the tables are (for writing) */
  uint64_t l1_offset;           /* active L1 */
  uint32_t l1_size_active;      /* its entries */
  uint64_t snapshots_offset;
  uint64_t snapshots_size;      /* bytes of the snapshot table */

  /* writing: refcounts (qcow2-refcount.c) */
  uint64_t *reftable;           /* host order; entries are refblock offsets */
  uint64_t reftable_offset;
  uint32_t reftable_clusters;
  uint64_t reftable_entries;
  uint64_t next_free;           /* first cluster never allocated */
  uint64_t next_counted;        /* first at or past next_free with a
                                 * refcount (UINT64_MAX: none) */
  uint64_t *free_map;           /* bit c: cluster c may be allocated */
  uint64_t free_map_clusters;   /* clusters the map covers */
  uint64_t free_cursor;         /* no free bit below it */

  /* reuse of freed clusters (qcow2-refcount.c): grace periods */
  atomic_uint io_gen;           /* generation that new guarded I/O joins */
  atomic_uint_fast64_t io_count[2];     /* guarded I/O in flight, per gen */
  struct qcow2_runs freed;      /* refcount 0, may still be in use */
  struct qcow2_runs waiting;    /* freed before the last flip of io_gen */
  unsigned waiting_gen;         /* its I/O must end before they are reused */

  /* writing: pending updates (qcow2-write.c) */
  pthread_mutex_t alloc_lock;   /* allocation, metadata updates, flush */
  pthread_rwlock_t map_lock;    /* L1/L2 entries: lookups vs updates */
  pthread_cond_t inflight_done; /* with alloc_lock: a run below ended */
  struct qcow2_inflight *inflight;      /* runs being written (alloc_lock) */
  uint32_t l1_dirty_lo, l1_dirty_hi;    /* L1 entries not yet written */
  struct qcow2_free *frees;     /* references to drop after the next sync */
  void *zeros;                  /* one cluster of zeros (writable images) */
  atomic_bool no_copy_range;    /* copy_file_range refused: copy by reading */
  atomic_bool no_fallocate;     /* fallocate refused: write zeros instead */
  size_t nr_frees, cap_frees;
};

#define to_qcow2(d) ((struct qcow2_disk *) (d))

/* ---- Inline helpers ----------------------------------------------------- */

static inline uint64_t
qcow2_offset_into_cluster(const struct qcow2_disk *q, uint64_t off)
{
  return off & (q->cluster_size - 1);
}

static inline bool
qcow2_is_cluster_aligned(const struct qcow2_disk *q, uint64_t off)
{
  return qcow2_offset_into_cluster(q, off) == 0;
}

/* Does [off, off+len) meet [start, start+size)? */
static inline bool
qcow2_ranges_meet(uint64_t off, uint64_t len, uint64_t start, uint64_t size)
{
  return size > 0 && off < start + size && start < off + len;
}

/* Does a cluster at off overlap the structures whose place the header
 * gives: header cluster, active L1, refcount table, snapshot table?  (An
 * L2 table there would be a hostile image's trick, iotest 060.) */
static inline bool
qcow2_overlaps_fixed_metadata(const struct qcow2_disk *q, uint64_t off)
{
  uint64_t cs = q->cluster_size;

  return off < cs
    || qcow2_ranges_meet(off, cs, q->l1_offset, q->l1_size_active * 8ull)
    || qcow2_ranges_meet(off, cs, q->reftable_offset,
                         (uint64_t) q->reftable_clusters * cs)
    || qcow2_ranges_meet(off, cs, q->snapshots_offset, q->snapshots_size);
}

static inline uint32_t
qcow2_l2_entries(const struct qcow2_disk *q)
{
  return 1u << q->l2_bits;
}

/* Bytes of guest disk one L1 entry (one L2 table) covers. */
static inline uint64_t
qcow2_l1_span(const struct qcow2_disk *q)
{
  return 1ull << (q->cluster_bits + q->l2_bits);
}

/* L1 entries needed to cover size bytes (l1_vm_state_index). */
static inline uint64_t
qcow2_l1_entries_for(const struct qcow2_disk *q, uint64_t size)
{
  return size / qcow2_l1_span(q) + (size % qcow2_l1_span(q) != 0);
}

/* Entry i of a big-endian table of 64-bit words. */
static inline uint64_t
qcow2_be64_at(const uint64_t *table, size_t i)
{
  return be64toh(table[i]);
}

/* ---- Prototypes by file ------------------------------------------------- */

/* qcow2.c */
int qcow2_flush(struct fde_disk *d);
void qcow2_corruption(struct qcow2_disk *q, const char *fmt, ...)
  __attribute__((format(printf, 2, 3)));
int qcow2_load_l1(struct qcow2_disk *q, uint64_t offset, uint32_t entries,
                  uint64_t disk_size, const char *what);

/* qcow2-map.c */
enum qcow2_kind {
  QCOW2_DATA,                   /* at host offset in the image file */
  QCOW2_ZERO,                   /* reads as zeros, backing not consulted */
  QCOW2_BACKING,                /* unallocated: backing file or zeros */
  QCOW2_COMPRESSED,             /* one compressed cluster */
};
struct qcow2_extent {
  enum qcow2_kind kind;
  uint64_t len;                 /* guest bytes from the queried offset */
  uint64_t host;                /* QCOW2_DATA: host offset of the first byte */
  uint64_t desc;                /* QCOW2_COMPRESSED: the L2 descriptor */
};
int qcow2_map(struct qcow2_disk *q, uint64_t off, uint64_t len,
              struct qcow2_extent *ext);
int qcow2_pread(struct fde_disk *d, void *buf, size_t len, uint64_t off);
int qcow2_block_status(struct fde_disk *d, uint64_t off, uint64_t len,
                       uint64_t *run, unsigned *status);
int qcow2_map_file(struct fde_disk *d, uint64_t off, uint64_t len, int *fd,
                   uint64_t *host, uint64_t *run);

/* qcow2-cache.c */
struct qcow2_l2_ref {                   /* a pinned L2 table */
  const uint64_t *table;                /* big endian entries */
  void *slot;                           /* private to the cache */
};
struct qcow2_l2_cache *qcow2_l2_cache_new(uint32_t table_bytes,
                                          uint64_t budget);
void qcow2_l2_cache_free(struct qcow2_l2_cache *c);
int qcow2_l2_get(struct qcow2_disk *q, uint64_t l2_offset,
                 struct qcow2_l2_ref *ref);
void qcow2_l2_put(struct qcow2_disk *q, struct qcow2_l2_ref *ref);
int qcow2_l2_get_for_update(struct qcow2_disk *q, uint64_t l2_offset,
                            struct qcow2_l2_ref *ref);
int qcow2_l2_install(struct qcow2_disk *q, uint64_t l2_offset,
                     const uint64_t *copy, struct qcow2_l2_ref *ref);
void qcow2_l2_mark_dirty(struct qcow2_disk *q, struct qcow2_l2_ref *ref);
int qcow2_l2_write_dirty(struct qcow2_disk *q);
void qcow2_l2_clean_written(struct qcow2_disk *q);
unsigned qcow2_l2_dirty_count(struct qcow2_disk *q);
unsigned qcow2_l2_capacity(struct qcow2_disk *q);
void qcow2_l2_forget(struct qcow2_disk *q, uint64_t l2_offset);

/* qcow2-compress.c */
struct qcow2_zcache *qcow2_zcache_new(uint32_t cluster_size, uint64_t budget);
void qcow2_zcache_free(struct qcow2_zcache *z);
int qcow2_read_compressed(struct qcow2_disk *q, uint64_t desc,
                          uint32_t in_cluster, void *buf, size_t len);
void qcow2_compressed_span(const struct qcow2_disk *q, uint64_t desc,
                           uint64_t *coffset, uint64_t *csize);

/* qcow2-snapshot.c */
int qcow2_read_snapshots(struct qcow2_disk *q, uint64_t offset,
                         uint32_t count);
void qcow2_free_snapshots(struct qcow2_disk *q);
const struct qcow2_snapshot *qcow2_find_snapshot(const struct qcow2_disk *q,
                                                 const char *id_or_name);
int qcow2_select_snapshot(struct qcow2_disk *q, const char *id_or_name);

/* qcow2-refcount.c (alloc_lock held) */
int qcow2_refs_load(struct qcow2_disk *q, uint64_t offset, uint32_t clusters);
int qcow2_refs_find_end(struct qcow2_disk *q);
int qcow2_refcount_get(struct qcow2_disk *q, uint64_t cluster, uint64_t *rc);
int qcow2_refcounts_scan(struct qcow2_disk *q, uint64_t nr,
                         void (*visit)(void *ctx, uint64_t cluster,
                                       uint64_t refcount),
                         void *ctx);
int qcow2_alloc_cluster(struct qcow2_disk *q, uint64_t *host);
int qcow2_alloc_clusters(struct qcow2_disk *q, uint64_t want, uint64_t *host,
                         uint64_t *got, bool *appended);
int qcow2_free_clusters(struct qcow2_disk *q, uint64_t offset, uint64_t len);
void qcow2_recycle_freed(struct qcow2_disk *q);
bool qcow2_have_free_cluster(struct qcow2_disk *q);
void qcow2_runs_free(struct qcow2_runs *runs);

/* qcow2-refcount.c, any thread, no lock: the grace-period guard around a
 * use of host offsets taken from the mapping (reads, in-place writes,
 * spliced replies).  qcow2_io_enter returns the token for qcow2_io_leave;
 * neither blocks, and guards may nest. */
unsigned qcow2_io_enter(struct qcow2_disk *q);
void qcow2_io_leave(struct qcow2_disk *q, unsigned token);

/* qcow2-check.c */
int qcow2_check_for_writing(struct qcow2_disk *q,
                            const char *read_only_opt);

/* qcow2-write.c */
int qcow2_pwrite(struct fde_disk *d, const void *buf, size_t len,
                 uint64_t off);
int qcow2_zero(struct fde_disk *d, uint64_t off, uint64_t len,
               unsigned flags);
int qcow2_flush_locked(struct qcow2_disk *q);

#endif /* FDE_QCOW2_H */
