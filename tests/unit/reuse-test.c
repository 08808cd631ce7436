/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: deterministic tests of cluster reuse and of the locks
 * around it, linking the backends directly (no FUSE).  Driven by
 * tests/reuse.bats, which makes the images with qemu-img and checks them
 * with qemu-img check afterwards.
 *
 *   reuse-test guard IMAGE        a cluster freed while a guarded operation
 *                                 (format io_begin..io_end) may use it is
 *                                 not reused until the operation ends, and
 *                                 is reused after (qcow2, empty, 64 KiB
 *                                 clusters, >= 1 MiB)
 *   reuse-test reftable IMAGE     the refcount table moves (grow_reftable)
 *                                 only under map_lock's write side: not
 *                                 while a reader holds the read side; the
 *                                 old table's cluster is reused after
 *                                 (qcow2, 512-byte clusters, refcount_bits=64)
 *   reuse-test writer-pref IMAGE  map_lock prefers writers: a waiting writer
 *                                 holds new readers back (any qcow2)
 *   reuse-test raw-map FILE       raw map never names a range past the
 *                                 file's end after the file shrank (a raw
 *                                 file of 1 MiB, truncated by the test)
 *
 * Exit 0 on success, 1 with a message on a failure. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "format.h"
#include "qcow2/qcow2.h"

#define WAIT_MS 1500            /* how long a forbidden change may take */
#define PATIENCE_MS 5000        /* how long an expected change may take */

static struct fde_chain chain;

static void
die(const char *what, const char *arg)
{
  fprintf(stderr, "FAIL: %s%s%s\n", what, arg ? " " : "", arg ? arg : "");
  exit(1);
}

static void
check(int ok, const char *what)
{
  if (!ok)
    die(what, NULL);
}

static void
check_r(int r, const char *what)
{
  if (r < 0) {
    fprintf(stderr, "FAIL: %s: %s\n", what, strerror(-r));
    exit(1);
  }
}

static struct fde_disk *
open_rw(const char *path)
{
  struct fde_open_params p = { .path = path, .chain = &chain };
  struct fde_disk *d;

  p.fd = open(path, O_RDWR | O_CLOEXEC);
  if (p.fd == -1)
    die("cannot open", path);
  check_r(fde_disk_open(NULL, &p, &d), "open");
  check(!d->read_only, "the image opened read-only");
  return d;
}

static void
sleep_ms(unsigned ms)
{
  struct timespec ts = { ms / 1000, (long) (ms % 1000) * 1000000 };

  nanosleep(&ts, NULL);
}

/* Host offset of the cluster holding guest offset off (must be data). */
static uint64_t
host_of(struct fde_disk *d, uint64_t off, uint32_t cs)
{
  uint64_t host, run;
  int fd;

  check(d->format->map(d, off, cs, &fd, &host, &run) == 1,
        "a written cluster does not map to the file");
  return host;
}

static void
write_pattern(struct fde_disk *d, uint64_t off, uint32_t cs, int byte)
{
  char *buf = malloc(cs);

  check(buf != NULL, "out of memory");
  memset(buf, byte, cs);
  check_r(d->format->pwrite(d, buf, cs, off), "write");
  check_r(d->format->flush(d), "flush");
  free(buf);
}

/* Does [off, off+cs) of the guest disk (or of the file, if fd >= 0) hold
 * byte everywhere? */
static int
holds(struct fde_disk *d, int fd, uint64_t off, uint32_t cs, int byte)
{
  unsigned char *buf = malloc(cs);
  int ok = buf != NULL;

  if (ok && fd >= 0)
    ok = fde_pread_full(fd, buf, cs, off) == 0;
  else if (ok)
    ok = d->format->pread(d, buf, cs, off) == 0;
  for (uint32_t i = 0; ok && i < cs; i++)
    ok = buf[i] == byte;
  free(buf);
  return ok;
}

static int
test_guard(const char *path)
{
  struct fde_disk *d = open_rw(path);
  struct qcow2_disk *q = to_qcow2(d);
  uint32_t cs = q->cluster_size;
  uint64_t a, b, c;
  unsigned token;

  check(d->format->io_begin != NULL && d->format->io_end != NULL,
        "qcow2 has no io_begin/io_end");
  write_pattern(d, 0, cs, 0xa1);
  /* A reader maps guest cluster 0 and will read the file later. */
  token = d->format->io_begin(d);
  a = host_of(d, 0, cs);
  /* Meanwhile the cluster is discarded; the flush frees it. */
  check_r(d->format->zero(d, 0, cs, FDE_ZERO_PUNCH), "discard");
  check_r(d->format->flush(d), "flush after the discard");
  write_pattern(d, cs, cs, 0xb2);
  b = host_of(d, cs, cs);
  check(b != a, "a cluster was reused while a reader that mapped it was "
        "still in its guarded operation");
  check(holds(d, q->fd, a, cs, 0xa1), "the freed cluster changed (punched "
        "or rewritten) while a reader that mapped it was in flight");
  d->format->io_end(d, token);
  /* The reader is gone: the next allocation takes the freed cluster. */
  write_pattern(d, 2 * cs, cs, 0xc3);
  c = host_of(d, 2 * cs, cs);
  if (c != a) {
    fprintf(stderr, "FAIL: the freed cluster %#" PRIx64 " was not reused "
            "(new data went to %#" PRIx64 ")\n", a, c);
    return 1;
  }
  check(holds(d, -1, 0, cs, 0), "guest cluster 0 does not read as zeros");
  check(holds(d, -1, cs, cs, 0xb2), "guest cluster 1 lost its data");
  check(holds(d, -1, 2 * cs, cs, 0xc3), "guest cluster 2 lost its data");
  fde_disk_close(d);
  printf("ok: cluster %#" PRIx64 " kept while guarded, reused after\n", a);
  return 0;
}

/* ---- grow_reftable vs map_lock readers ---------------------------------- */

static void *
alloc_one(void *arg)
{
  struct qcow2_disk *q = arg;
  uint64_t host;

  pthread_mutex_lock(&q->alloc_lock);
  check_r(qcow2_alloc_cluster(q, &host), "allocation growing the reftable");
  pthread_mutex_unlock(&q->alloc_lock);
  return NULL;
}

static int
test_reftable(const char *path)
{
  struct fde_disk *d = open_rw(path);
  struct qcow2_disk *q = to_qcow2(d);
  uint64_t rbe = ((uint64_t) q->cluster_size * 8) >> q->refcount_order;
  uint64_t limit = q->reftable_entries * rbe, old, host;
  int moved = 0;
  pthread_t t;

  /* Allocate (leaks: nothing references them) up to the last cluster the
   * table covers, so that the next allocation starts by growing it. */
  pthread_mutex_lock(&q->alloc_lock);
  while (q->next_free < limit)
    check_r(qcow2_alloc_cluster(q, &host), "allocation");
  pthread_mutex_unlock(&q->alloc_lock);
  check(q->next_free == limit, "could not stop just before the growth");
  old = q->reftable_offset;

  /* A reader between its L1 lookup and qcow2_overlaps_fixed_metadata. */
  pthread_rwlock_rdlock(&q->map_lock);
  check(pthread_create(&t, NULL, alloc_one, q) == 0, "pthread_create");
  for (unsigned ms = 0; ms < WAIT_MS && !moved; ms += 10) {
    sleep_ms(10);
    moved = __atomic_load_n(&q->reftable_offset, __ATOMIC_SEQ_CST) != old;
  }
  pthread_rwlock_unlock(&q->map_lock);
  pthread_join(t, NULL);
  if (moved) {
    fprintf(stderr, "FAIL: the refcount table moved while a reader held "
            "map_lock\n");
    return 1;
  }
  check(q->reftable_offset != old, "the refcount table did not grow");
  /* The old table's cluster was freed: with no reader in flight, the
   * next allocation reuses it. */
  pthread_mutex_lock(&q->alloc_lock);
  check_r(qcow2_alloc_cluster(q, &host), "allocation after the growth");
  pthread_mutex_unlock(&q->alloc_lock);
  if (host != old) {
    fprintf(stderr, "FAIL: the old refcount table at %#" PRIx64 " was not "
            "reused (got %#" PRIx64 ")\n", old, host);
    return 1;
  }
  host = q->reftable_offset;
  fde_disk_close(d);
  printf("ok: the refcount table moved from %#" PRIx64 " to %#" PRIx64
         " only after the reader left; its old cluster was reused\n", old,
         host);
  return 0;
}

/* ---- map_lock prefers writers ------------------------------------------- */

static void *
take_write_side(void *arg)
{
  pthread_rwlock_t *lock = arg;

  pthread_rwlock_wrlock(lock);
  pthread_rwlock_unlock(lock);
  return NULL;
}

static int
test_writer_pref(const char *path)
{
  struct fde_disk *d = open_rw(path);
  struct qcow2_disk *q = to_qcow2(d);
  int held_back = 0;
  pthread_t t;

  pthread_rwlock_rdlock(&q->map_lock);
  check(pthread_create(&t, NULL, take_write_side, &q->map_lock) == 0,
        "pthread_create");
  /* Once the writer waits, a new reader must not get in ahead of it. */
  for (unsigned ms = 0; ms < PATIENCE_MS && !held_back; ms += 10) {
    sleep_ms(10);
    if (pthread_rwlock_tryrdlock(&q->map_lock) == 0)
      pthread_rwlock_unlock(&q->map_lock);
    else
      held_back = 1;
  }
  pthread_rwlock_unlock(&q->map_lock);
  pthread_join(t, NULL);
  fde_disk_close(d);
  if (!held_back) {
    fprintf(stderr, "FAIL: new readers overtake a waiting writer on "
            "map_lock (writers can starve)\n");
    return 1;
  }
  printf("ok: a waiting writer holds new readers back\n");
  return 0;
}

/* ---- raw map stays inside the file -------------------------------------- */

static int
test_raw_map(const char *path)
{
  struct fde_open_params p = { .path = path, .chain = &chain };
  struct fde_disk *d;
  uint64_t host, run;
  int fd, r;

  p.fd = open(path, O_RDWR | O_CLOEXEC);
  if (p.fd == -1)
    die("cannot open", path);
  check_r(fde_disk_open(&fde_format_raw, &p, &d), "open");
  check(d->size == 1 << 20, "the raw file is not 1 MiB");
  check(ftruncate(p.fd, 300000) == 0, "ftruncate");
  r = d->format->map(d, 512 << 10, 64 << 10, &fd, &host, &run);
  check(r == 0 || (r == 1 && host + run <= 300000),
        "map names a range past the end of a file that shrank");
  r = d->format->map(d, 256 << 10, 64 << 10, &fd, &host, &run);
  check(r == 1 && host == 256 << 10 && run == 300000 - (256 << 10),
        "map of a range across the new end is not cut at the end");
  r = d->format->map(d, 0, 64 << 10, &fd, &host, &run);
  check(r == 1 && host == 0 && run == 64 << 10,
        "map of a range inside the file changed");
  fde_disk_close(d);
  printf("ok: raw map stays inside the file\n");
  return 0;
}

int
main(int argc, char **argv)
{
  if (argc != 3) {
    fprintf(stderr, "usage: %s guard|reftable|writer-pref|raw-map FILE\n",
            argv[0]);
    return 2;
  }
  if (strcmp(argv[1], "guard") == 0)
    return test_guard(argv[2]);
  if (strcmp(argv[1], "reftable") == 0)
    return test_reftable(argv[2]);
  if (strcmp(argv[1], "writer-pref") == 0)
    return test_writer_pref(argv[2]);
  if (strcmp(argv[1], "raw-map") == 0)
    return test_raw_map(argv[2]);
  fprintf(stderr, "unknown test %s\n", argv[1]);
  return 2;
}
