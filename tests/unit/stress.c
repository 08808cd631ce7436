/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: a multi-threaded stress test of the format backends,
 * linked with libformats.a and no FUSE; "make check" runs it in every
 * build, and configure --enable-sanitizers=thread runs it under
 * ThreadSanitizer (issue 10, item 9).
 *
 *   stress [-s SECONDS] [-w WRITERS] [-r READERS] [-S SEED] [-i NAME] [-k]
 *
 * For each image of the table below (qcow2 with 512 B, 4 KiB, 16 KiB and
 * 64 KiB clusters, an internal snapshot, raw and qcow2 backing files,
 * compressed clusters, extended L2; and a raw image), made with qemu-img
 * and qemu-io in a scratch directory, it opens the image read-write with
 * fde_disk_open, as the program does, and runs these threads at once:
 *  - writers, each owning a disjoint set of stripes of the disk and a
 *    shadow copy of them: allocating writes (stripes not written whole
 *    yet: new clusters, copy on write from a snapshot, a backing file or
 *    a compressed cluster), in-place writes (stripes they wrote whole
 *    before), zeroes with and without punch, flushes, and reads of their
 *    own stripes compared exactly with the shadow.  Stripes of different
 *    owners share clusters, subclusters and L2 tables;
 *  - readers, reading any range: bytes of stripes nobody owns must be the
 *    image's original bytes; bytes of owned stripes the original byte,
 *    zero, or a byte some write could have put at that very offset (every
 *    written byte encodes its offset), so a read racing writes may see
 *    old or new data but never bytes that belong elsewhere (a freed
 *    cluster reused under the reader, say);
 *  - a walker checking block_status's and map's contracts, and the bytes
 *    map names in the file, as the readers check theirs;
 *  - a flusher.
 * Half-way, the threads stop and the disk is flushed, read whole against
 * the shadows, and judged by qemu-img check -U (0, or 3: leaks only) and
 * qemu-img compare -U against a raw file holding the shadows; then the
 * threads run again.  With extended L2, two "neighbours" then race inside
 * one subcluster (see there).  At the end the same checks run after close,
 * and the internal snapshot and the backing file must read exactly as
 * before.
 *
 * -s: total run time, shared by the images (default $STRESS_SECONDS, else
 * 40).  -w, -r: writer and reader threads (default 3 and 2).  -S: seed of
 * the layout and of each thread's choices (the interleaving is up to the
 * scheduler).  -i: only the images whose name contains NAME.  -k: keep
 * the scratch directory.  Prints the operations run per kind.  Exit 0 on
 * success, 1 on a failure, 2 on bad usage, 77 (skip) without qemu-img or
 * qemu-io. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "format.h"

#define KiB ((uint64_t) 1024)
#define MiB (1024 * KiB)
#define MAX_IO (256 * KiB)      /* largest read, write or stripe */
#define MAX_WRITERS 32
#define STATIC_OWNER 255u       /* sector owner: nobody writes it */
#define SECTOR_BITS 9
#define NR_GENS 15              /* a write's bytes: tag(offset) + 1..15 */

/* ---- The images --------------------------------------------------------- */

struct image_spec {
  const char *name;
  bool raw;                     /* a raw image; the rest is for qcow2 */
  unsigned cluster_bits;        /* raw: the stripe layout's block */
  uint64_t size;
  bool extended_l2;
  bool compressed;              /* made by qemu-img convert -c */
  bool snapshot;                /* internal snapshot "s1", then changes */
  enum { NO_BACKING, RAW_BACKING, QCOW2_BACKING } backing;  /* holding the
                                   data; qcow2: 4 KiB clusters, compressed */
  unsigned refcount_bits;
  unsigned data_pct;            /* 64 KiB chunks holding data, in % */
  uint64_t cache_bytes;         /* L2 cache budget (0: default) */
};

/* Small caches on some images make tables get evicted, and every slot of
 * a shard pinned, while other threads use them.  512-byte clusters with
 * 64-bit refcounts need a new refblock every 32 KiB of file, and outgrow
 * their refcount table while the threads run. */
static const struct image_spec images[] = {
  { .name = "512b-clusters", .cluster_bits = 9, .size = 16 * MiB,
    .refcount_bits = 64, .data_pct = 10, .cache_bytes = 16 * KiB },
  { .name = "4k-snapshot", .cluster_bits = 12, .size = 16 * MiB,
    .snapshot = true, .refcount_bits = 16, .data_pct = 67 },
  { .name = "64k-backing", .cluster_bits = 16, .size = 32 * MiB,
    .backing = QCOW2_BACKING, .refcount_bits = 1, .data_pct = 67,
    .cache_bytes = 256 * KiB },
  { .name = "64k-compressed-snapshot", .cluster_bits = 16, .size = 32 * MiB,
    .compressed = true, .snapshot = true, .refcount_bits = 16,
    .data_pct = 67 },
  { .name = "16k-extl2-backing", .cluster_bits = 14, .size = 16 * MiB,
    .extended_l2 = true, .backing = RAW_BACKING, .refcount_bits = 16,
    .data_pct = 67, .cache_bytes = 64 * KiB },
  { .name = "64k-extl2-compressed", .cluster_bits = 16, .size = 32 * MiB,
    .extended_l2 = true, .compressed = true, .refcount_bits = 16,
    .data_pct = 67 },
  { .name = "raw", .raw = true, .cluster_bits = 12, .size = 16 * MiB,
    .data_pct = 67 },
};
#define NR_IMAGES (sizeof images / sizeof images[0])

/* ---- Settings and counts ------------------------------------------------ */

struct settings {
  double seconds;
  unsigned writers, readers;
  uint64_t seed;
  const char *only;
  bool keep;
};

enum kind {
  K_WRITE_ALLOC, K_WRITE_IN_PLACE, K_ZERO_PUNCH, K_ZERO, K_READ_OWN,
  K_FLUSH, K_READ, K_BLOCK_STATUS, K_MAP, K_NEIGHBOUR, NR_KINDS
};
static const char *const kind_names[NR_KINDS] = {
  "allocating writes", "in-place writes", "zeroes (punch)",
  "zeroes (no punch)", "own reads", "flushes", "reads", "block_status",
  "map", "subcluster-neighbour rounds",
};

/* A range of the disk with one owner (a writer, or STATIC_OWNER). */
struct stripe {
  uint64_t off;
  uint32_t len;
  unsigned owner;
  bool written;                 /* owner wrote it whole since its last zero */
};

/* One image's run: what every thread shares. */
struct run {
  const struct settings *set;
  const struct image_spec *spec;
  char path[256];
  struct fde_disk *disk;
  uint64_t size;
  const uint8_t *orig;          /* the disk's bytes before the run */
  uint8_t *shadow;              /* each writer updates its own stripes */
  uint8_t *owner;               /* per 512-byte sector */
  struct stripe *stripes;
  size_t nr_stripes;
  atomic_bool stop, failed;
  pthread_mutex_t report_lock;
  uint64_t count[NR_KINDS];     /* summed after each phase */
};

/* One thread's state. */
struct worker {
  struct run *rn;
  unsigned index;               /* writer: its owner number */
  uint64_t rng;
  uint64_t count[NR_KINDS];
  uint8_t *buf, *buf2;
  size_t *mine;                 /* writer: its stripes */
  size_t nr_mine;
};

static char scratch[64];
static volatile sig_atomic_t interrupted;   /* SIGINT, SIGTERM or SIGHUP */

/* ---- Small helpers ------------------------------------------------------ */

/* splitmix64 step. */
static uint64_t
rnd(uint64_t *state)
{
  uint64_t z = (*state += 0x9e3779b97f4a7c15ull);

  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* The byte every write puts at offset o, minus its generation (1..15). */
static uint8_t
tag(uint64_t o)
{
  return (uint8_t) ((o * 0x9e3779b97f4a7c15ull) >> 56);
}

/* Original data: runs of 64 equal bytes (so they compress), varying with
 * the offset and the image. */
static uint8_t
orig_byte(uint64_t salt, uint64_t o)
{
  uint64_t s = salt ^ (o >> 6);

  return (uint8_t) (rnd(&s) | 1);
}

static double
now(void)
{
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void
sleep_ms(unsigned ms)
{
  struct timespec ts = { ms / 1000, (long) (ms % 1000) * 1000000 };

  nanosleep(&ts, NULL);
}

/* Report a failure once per run (the first one) and stop every thread. */
__attribute__((format(printf, 2, 3))) static void
fail(struct run *rn, const char *fmt, ...)
{
  va_list ap;

  pthread_mutex_lock(&rn->report_lock);
  if (!atomic_load(&rn->failed)) {
    fprintf(stderr, "FAIL %s: ", rn->spec->name);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
  }
  atomic_store(&rn->failed, true);
  atomic_store(&rn->stop, true);
  pthread_mutex_unlock(&rn->report_lock);
}

/* ---- Running qemu-img and qemu-io --------------------------------------- */

/* Run a shell command (only names from the scratch directory and numbers
 * are put in it) with its output in scratch/cmd.log; its exit status, or
 * -1.  On a status other than 0 and those in ok (NULL, or a list ending
 * in 0), print the command and its output. */
__attribute__((format(printf, 2, 3))) static int
run_cmd(const int *ok, const char *fmt, ...)
{
  char cmd[4096], log[96];
  va_list ap;
  int n, st;

  va_start(ap, fmt);
  n = vsnprintf(cmd, sizeof cmd - 128, fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t) n >= sizeof cmd - 128)
    return -1;
  snprintf(log, sizeof log, "%s/cmd.log", scratch);
  snprintf(cmd + n, 128, " >%s 2>&1", log);
  st = system(cmd);
  st = st == -1 || !WIFEXITED(st) ? -1 : WEXITSTATUS(st);
  for (; st != 0 && ok != NULL && *ok != 0; ok++)
    if (st == *ok)
      return st;
  if (st != 0) {
    FILE *f = fopen(log, "r");
    int c;
    fprintf(stderr, "command failed (status %d): %s\n", st, cmd);
    while (f != NULL && (c = fgetc(f)) != EOF)
      fputc(c, stderr);
    if (f != NULL)
      fclose(f);
  }
  return st;
}

/* The first number after key in scratch/cmd.log (JSON output), or -1. */
static long long
log_number(const char *key)
{
  char log[96], text[8192];
  FILE *f;
  size_t n;
  const char *p;

  snprintf(log, sizeof log, "%s/cmd.log", scratch);
  if ((f = fopen(log, "r")) == NULL)
    return -1;
  n = fread(text, 1, sizeof text - 1, f);
  fclose(f);
  text[n] = '\0';
  if ((p = strstr(text, key)) == NULL)
    return -1;
  p += strcspn(p, "0123456789");
  return *p ? strtoll(p, NULL, 10) : -1;
}

/* Write len bytes to a new file. */
static int
write_file(const char *path, const uint8_t *data, uint64_t len)
{
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  int r = -errno;

  if (fd != -1) {
    r = fde_pwrite_full(fd, data, len, 0);
    if (close(fd) == -1 && r == 0)
      r = -errno;
  }
  if (r < 0)
    fprintf(stderr, "writing %s: %s\n", path, strerror(-r));
  return r;
}

/* Read a file of exactly len bytes into a new buffer, or NULL. */
static uint8_t *
read_file(const char *path, uint64_t len)
{
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  uint8_t *data = malloc(len);
  struct stat st;

  if (fd == -1 || data == NULL || fstat(fd, &st) == -1
      || (uint64_t) st.st_size != len
      || fde_pread_full(fd, data, len, 0) < 0) {
    fprintf(stderr, "reading %s (%" PRIu64 " bytes) failed\n", path, len);
    free(data);
    data = NULL;
  }
  if (fd != -1)
    close(fd);
  return data;
}

/* ---- Making an image ---------------------------------------------------- */

/* The source data: data_pct % of the 64 KiB chunks hold data, the rest
 * are holes. */
static uint8_t *
make_source(const struct image_spec *sp, uint64_t salt)
{
  uint8_t *src = calloc(1, sp->size);

  for (uint64_t c = 0; src != NULL && c < sp->size; c += 64 * KiB) {
    uint64_t s = salt + c;
    if (rnd(&s) % 100 >= sp->data_pct)
      continue;
    for (uint64_t o = c; o < c + 64 * KiB && o < sp->size; o++)
      src[o] = orig_byte(salt, o);
  }
  return src;
}

/* qemu-io commands that change the image a little at unaligned places
 * (partial clusters and subclusters; writes and zeroes). */
static void
scribble_commands(const struct image_spec *sp, uint64_t *rng, char *out,
                  size_t cap)
{
  size_t n = 0;

  out[0] = '\0';
  for (int i = 0; i < 12 && n < cap; i++) {
    uint64_t len = 1 + rnd(rng) % (3 * (1ull << sp->cluster_bits));
    uint64_t off = rnd(rng) % (sp->size - len) & ~511ull;
    len = (len + 511) & ~511ull;
    if (i % 4 == 3)
      n += (size_t) snprintf(out + n, cap - n, " -c 'write -z %" PRIu64
                             " %" PRIu64 "'", off, len);
    else
      n += (size_t) snprintf(out + n, cap - n, " -c 'write -P %d %" PRIu64
                             " %" PRIu64 "'", 0x20 + i, off, len);
  }
}

static const char *
format_of(const struct image_spec *sp)
{
  return sp->raw ? "raw" : "qcow2";
}

/* Make the backing file NAME.base (a copy of the source, or a compressed
 * qcow2 of it, and a copy NAME.base.before to compare with at the end),
 * and NAME.qcow2 over it.  0 or -1. */
static int
make_overlay(struct run *rn, const char *opts, const char *src)
{
  const char *nm = rn->spec->name;
  bool raw = rn->spec->backing == RAW_BACKING;

  return run_cmd(NULL, "%s %s %s/%s.base && cp %s/%s.base %s/%s.base.before"
                 " && qemu-img create -q -f qcow2 -o %s -b %s.base -F %s %s %"
                 PRIu64, raw ? "cp" : "qemu-img convert -c -f raw -O qcow2 "
                 "-o cluster_size=4096", src, scratch, nm, scratch, nm,
                 scratch, nm, opts, nm, raw ? "raw" : "qcow2", rn->path,
                 rn->spec->size);
}

/* Make scratch/NAME.qcow2 (and its backing file, NAME.s1.raw), and
 * NAME.orig.raw, what it reads as.  0 or -1. */
static int
make_image(struct run *rn, uint64_t salt)
{
  const struct image_spec *sp = rn->spec;
  const char *nm = sp->name;
  char opts[128], cmds[2048], source[192];
  uint64_t rng = salt;
  uint8_t *src = make_source(sp, salt);
  int r;

  snprintf(opts, sizeof opts, "cluster_size=%u,refcount_bits=%u%s",
           1u << sp->cluster_bits, sp->refcount_bits,
           sp->extended_l2 ? ",extended_l2=on" : "");
  snprintf(source, sizeof source, "%s/%s.src.raw", scratch, nm);
  r = src == NULL ? -1 : write_file(source, src, sp->size);
  free(src);
  if (r < 0)
    return -1;
  /* A qcow2 without a backing file: convert -n into an empty image, so
   * that QEMU grows the refcount table as the data arrives and it covers
   * little more than the file. */
  if (sp->raw ? run_cmd(NULL, "cp %s %s", source, rn->path)
      : sp->backing != NO_BACKING ? make_overlay(rn, opts, source)
      : run_cmd(NULL, "qemu-img create -q -f qcow2 -o %s %s %" PRIu64
                " && qemu-img convert -n -f raw -O qcow2 %s %s %s", opts,
                rn->path, sp->size, sp->compressed ? "-c" : "", source,
                rn->path))
    return -1;
  if (sp->snapshot && run_cmd(NULL, "qemu-img snapshot -c s1 %s", rn->path))
    return -1;
  scribble_commands(sp, &rng, cmds, sizeof cmds);
  if (run_cmd(NULL, "qemu-io -f %s %s %s", format_of(sp), cmds, rn->path)
      || (sp->snapshot
          && run_cmd(NULL, "qemu-img convert -f qcow2 -O raw -l "
                     "snapshot.name=s1 %s %s/%s.s1.raw", rn->path, scratch,
                     nm))
      || run_cmd(NULL, "qemu-img convert -f %s -O raw %s %s/%s.orig.raw",
                 format_of(sp), rn->path, scratch, nm))
    return -1;
  if (sp->compressed
      && (run_cmd(NULL, "qemu-img check --output=json %s", rn->path)
          || log_number("\"compressed-clusters\"") <= 0)) {
    fprintf(stderr, "%s: qemu-img made no compressed clusters\n", nm);
    return -1;
  }
  return 0;
}

/* The refcount table's offset in the header of the qcow2 file at path
 * (0 if unreadable), to report whether the run moved it. */
static uint64_t
reftable_offset(const char *path)
{
  uint8_t h[8];
  uint64_t v = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);

  if (fd != -1 && fde_pread_full(fd, h, 8, 48) == 0)
    for (int i = 0; i < 8; i++)
      v = v << 8 | h[i];
  if (fd != -1)
    close(fd);
  return v;
}

/* ---- Stripes ------------------------------------------------------------ */

/* Cut the disk into stripes: blocks of 1-4 clusters (at least 16 KiB),
 * each either one stripe or cut into pieces of 512 B to 4 KiB with random
 * owners, so that writers share clusters, subclusters and L2 tables.
 * 0 or -1. */
static int
make_stripes(struct run *rn, uint64_t seed)
{
  const struct image_spec *sp = rn->spec;
  uint64_t cs = 1ull << sp->cluster_bits, rng = seed, cap = 0;
  unsigned owners = rn->set->writers + 1;

  for (uint64_t off = 0; off < rn->size;) {
    uint64_t blk = (cs < 16 * KiB ? 16 * KiB : cs) * (1 + rnd(&rng) % 4), end;
    bool split = rnd(&rng) % 3 != 0;
    blk = blk > MAX_IO ? MAX_IO : blk;
    end = rn->size - off < blk ? rn->size : off + blk;
    while (off < end) {
      uint64_t len = split ? 512 * (1 + rnd(&rng) % 8) : end - off;
      unsigned owner = (unsigned) (rnd(&rng) % owners);
      if (len > end - off)
        len = end - off;
      if (rn->nr_stripes == cap) {
        cap = cap ? 2 * cap : 1024;
        struct stripe *s = realloc(rn->stripes, cap * sizeof *s);
        if (s == NULL)
          return -1;
        rn->stripes = s;
      }
      owner = owner == owners - 1 ? STATIC_OWNER : owner;
      rn->stripes[rn->nr_stripes++] = (struct stripe) {
        .off = off, .len = (uint32_t) len, .owner = owner };
      memset(rn->owner + (off >> SECTOR_BITS), (int) owner,
             len >> SECTOR_BITS);
      off += len;
    }
  }
  return 0;
}

/* ---- Checking bytes ----------------------------------------------------- */

/* May the disk hold byte got at offset o while writers run? */
static bool
plausible(const struct run *rn, uint64_t o, uint8_t got)
{
  uint8_t orig = rn->orig[o];

  if (rn->owner[o >> SECTOR_BITS] == STATIC_OWNER)
    return got == orig;
  return got == orig || got == 0 || (uint8_t) (got - tag(o) - 1) < NR_GENS;
}

/* Report the first byte of got[0..len) (read by what at disk offset off)
 * the disk cannot hold there; false if there is one.  A sector's piece
 * that still holds the original bytes passes with one memcmp. */
static bool
check_plausible(struct run *rn, const uint8_t *got, uint64_t len,
                uint64_t off, const char *what)
{
  for (uint64_t i = 0, piece; i < len; i += piece) {
    piece = 512 - ((off + i) & 511);
    piece = piece < len - i ? piece : len - i;
    if (memcmp(got + i, rn->orig + off + i, piece) == 0)
      continue;
    for (uint64_t j = i; j < i + piece; j++) {
      if (!plausible(rn, off + j, got[j])) {
        unsigned owner = rn->owner[(off + j) >> SECTOR_BITS];
        fail(rn, "%s of %" PRIu64 " bytes at %#" PRIx64 ": byte at %#"
             PRIx64 " is %#x; original %#x, %s", what, len, off, off + j,
             got[j], rn->orig[off + j], owner == STATIC_OWNER
             ? "never written" : "not a byte any write puts there");
        return false;
      }
    }
  }
  return true;
}

/* Compare len bytes read at off with the expected ones; false after
 * reporting the first difference. */
static bool
check_exact(struct run *rn, const uint8_t *got, const uint8_t *want,
            uint64_t len, uint64_t off, const char *what)
{
  if (memcmp(got, want, len) == 0)
    return true;
  for (uint64_t i = 0; i < len; i++) {
    if (got[i] != want[i]) {
      unsigned owner = rn->owner[(off + i) >> SECTOR_BITS];
      fail(rn, "%s of %" PRIu64 " bytes at %#" PRIx64 ": byte at %#" PRIx64
           " is %#x, expected %#x (original %#x, owner %d)", what, len, off,
           off + i, got[i], want[i], rn->orig[off + i],
           owner == STATIC_OWNER ? -1 : (int) owner);
      break;
    }
  }
  return false;
}

/* A random range of the disk: lengths small, cluster-ish or large. */
static void
pick_any_range(struct worker *w, uint64_t *off, uint64_t *len)
{
  uint64_t size = w->rn->size, r = rnd(&w->rng);
  uint64_t l = (r & 3) == 0 ? 1 + (r >> 8) % 512
    : (r & 3) == 1 ? 1 + (r >> 8) % (8 * KiB)
    : (r & 3) == 2 ? 512ull << ((r >> 8) % 10) : 1 + (r >> 8) % MAX_IO;

  l = l > size ? size : l;
  *off = rnd(&w->rng) % (size - l + 1);
  if (r & 4)
    *off &= ~511ull;
  *len = l;
}

/* ---- Writers ------------------------------------------------------------ */

/* One of the writer's stripes, preferring ones whose written flag is
 * want (a few random tries). */
static struct stripe *
pick_stripe(struct worker *w, bool want)
{
  struct stripe *s = NULL;

  for (int tries = 0; tries < 8; tries++) {
    s = &w->rn->stripes[w->mine[rnd(&w->rng) % w->nr_mine]];
    if (s->written == want)
      break;
  }
  return s;
}

/* The whole stripe half the time, else a random part of it (sector
 * aligned or not). */
static void
pick_in_stripe(struct worker *w, const struct stripe *s, uint64_t *off,
               uint64_t *len)
{
  uint64_t a, b;

  *off = s->off;
  *len = s->len;
  if (rnd(&w->rng) % 2 == 0)
    return;
  a = rnd(&w->rng) % s->len;
  b = rnd(&w->rng) % s->len;
  if (a > b) {
    uint64_t t = a;
    a = b;
    b = t;
  }
  if (rnd(&w->rng) % 2 == 0) {
    a &= ~511ull;
    b = (b | 511) + 1 > s->len ? s->len - 1 : b | 511;
  }
  *off = s->off + a;
  *len = b - a + 1;
}

/* Write fresh bytes over part of a stripe; the shadow follows. */
static void
writer_write(struct worker *w, struct stripe *s, uint64_t gen)
{
  struct run *rn = w->rn;
  uint64_t off, len;
  int r;

  pick_in_stripe(w, s, &off, &len);
  for (uint64_t i = 0; i < len; i++)
    w->buf[i] = (uint8_t) (tag(off + i) + 1 + gen % NR_GENS);
  w->count[s->written ? K_WRITE_IN_PLACE : K_WRITE_ALLOC]++;
  if ((r = rn->disk->format->pwrite(rn->disk, w->buf, len, off)) < 0) {
    fail(rn, "pwrite of %" PRIu64 " bytes at %#" PRIx64 ": %s", len, off,
         strerror(-r));
    return;
  }
  memcpy(rn->shadow + off, w->buf, len);
  if (len == s->len)
    s->written = true;
}

/* Zero (or punch) part of a stripe; the shadow follows. */
static void
writer_zero(struct worker *w, struct stripe *s, bool punch)
{
  struct run *rn = w->rn;
  uint64_t off, len;
  int r;

  pick_in_stripe(w, s, &off, &len);
  w->count[punch ? K_ZERO_PUNCH : K_ZERO]++;
  if ((r = rn->disk->format->zero(rn->disk, off, len, punch)) < 0) {
    fail(rn, "zero (punch %d) of %" PRIu64 " bytes at %#" PRIx64 ": %s",
         punch, len, off, strerror(-r));
    return;
  }
  memset(rn->shadow + off, 0, len);
  s->written = false;
}

/* Read part of a stripe back: exactly the shadow, whatever else runs. */
static void
writer_read(struct worker *w, struct stripe *s)
{
  struct run *rn = w->rn;
  uint64_t off, len;
  int r;

  pick_in_stripe(w, s, &off, &len);
  w->count[K_READ_OWN]++;
  if ((r = rn->disk->format->pread(rn->disk, w->buf, len, off)) < 0)
    fail(rn, "pread of own %" PRIu64 " bytes at %#" PRIx64 ": %s", len, off,
         strerror(-r));
  else
    check_exact(rn, w->buf, rn->shadow + off, len, off, "read of own stripe");
}

static void
do_flush(struct worker *w)
{
  struct run *rn = w->rn;
  int r;

  w->count[K_FLUSH]++;
  if ((r = rn->disk->format->flush(rn->disk)) < 0)
    fail(rn, "flush: %s", strerror(-r));
}

/* A writer: 40% allocating writes, 30% in-place writes, 10% punches, 5%
 * zeroes, 12% own reads, 3% flushes. */
static void *
writer_main(void *arg)
{
  struct worker *w = arg;

  for (uint64_t gen = 0; !atomic_load(&w->rn->stop); gen++) {
    unsigned r = (unsigned) (rnd(&w->rng) % 100);
    if (r < 40)
      writer_write(w, pick_stripe(w, false), gen);
    else if (r < 70)
      writer_write(w, pick_stripe(w, true), gen);
    else if (r < 80)
      writer_zero(w, pick_stripe(w, true), true);
    else if (r < 85)
      writer_zero(w, pick_stripe(w, true), false);
    else if (r < 97)
      writer_read(w, pick_stripe(w, true));
    else
      do_flush(w);
  }
  return NULL;
}

/* ---- Readers, the block-status/map walker, the flusher ------------------ */

static void *
reader_main(void *arg)
{
  struct worker *w = arg;
  struct run *rn = w->rn;

  while (!atomic_load(&rn->stop)) {
    uint64_t off, len;
    int r;
    pick_any_range(w, &off, &len);
    w->count[K_READ]++;
    if ((r = rn->disk->format->pread(rn->disk, w->buf, len, off)) < 0)
      fail(rn, "pread of %" PRIu64 " bytes at %#" PRIx64 ": %s", len, off,
           strerror(-r));
    else
      check_plausible(rn, w->buf, len, off, "read");
  }
  return NULL;
}

/* block_status runs from off: inside (0, len], known bits, and a run said
 * to be zeros holds only zeros where nobody writes. */
static void
walk_status(struct worker *w, uint64_t off, uint64_t len)
{
  struct run *rn = w->rn;

  for (int step = 0; step < 8 && len > 0 && !atomic_load(&rn->stop); step++) {
    uint64_t run = 0;
    unsigned st = 0;
    int r = rn->disk->format->block_status(rn->disk, off, len, &run, &st);
    w->count[K_BLOCK_STATUS]++;
    if (r < 0 || run == 0 || run > len
        || (st & ~(FDE_BS_DATA | FDE_BS_ZERO))) {
      fail(rn, "block_status(%#" PRIx64 ", %" PRIu64 ") = %d, run %" PRIu64
           ", status %#x", off, len, r, run, st);
      return;
    }
    for (uint64_t o = off; (st & FDE_BS_ZERO) && o < off + run; o++)
      if (rn->owner[o >> SECTOR_BITS] == STATIC_OWNER && rn->orig[o] != 0) {
        fail(rn, "block_status says %" PRIu64 " bytes at %#" PRIx64 " are "
             "zeros; the byte at %#" PRIx64 " is %#x", run, off, o,
             rn->orig[o]);
        return;
      }
    off += run;
    len -= run;
  }
}

/* map runs from off: inside (0, len], and a file range lies inside its
 * file and holds bytes the disk may hold there.  Each step reads the
 * range map named, as a spliced reply would, inside an io_begin/io_end
 * bracket begun before the map (formats/format.h). */
static bool
map_step(struct worker *w, uint64_t off, uint64_t len, uint64_t *run)
{
  struct run *rn = w->rn;
  uint64_t host = 0;
  int fd = -1;
  struct stat st;
  int r = rn->disk->format->map(rn->disk, off, len, &fd, &host, run);

  w->count[K_MAP]++;
  if (r < 0 || r > 1 || *run == 0 || *run > len) {
    fail(rn, "map(%#" PRIx64 ", %" PRIu64 ") = %d, run %" PRIu64, off, len,
         r, *run);
    return false;
  }
  if (r == 1 && (fstat(fd, &st) == -1 || host > (uint64_t) st.st_size
                 || *run > (uint64_t) st.st_size - host)) {
    fail(rn, "map(%#" PRIx64 ") named [%#" PRIx64 ", +%" PRIu64 ") of fd "
         "%d, not inside the file", off, host, *run, fd);
    return false;
  }
  return r == 0 || (fde_pread_full(fd, w->buf2, *run, host) == 0
                    && check_plausible(rn, w->buf2, *run, off,
                                       "file range named by map"));
}

static void
walk_map(struct worker *w, uint64_t off, uint64_t len)
{
  const struct fde_format *f = w->rn->disk->format;
  unsigned token = f->io_begin != NULL ? f->io_begin(w->rn->disk) : 0;

  for (int step = 0; step < 8 && len > 0 && !atomic_load(&w->rn->stop);
       step++) {
    uint64_t run = 0;
    if (!map_step(w, off, len, &run))
      break;
    off += run;
    len -= run;
  }
  if (f->io_end != NULL)
    f->io_end(w->rn->disk, token);
}

static void *
walker_main(void *arg)
{
  struct worker *w = arg;
  struct run *rn = w->rn;

  while (!atomic_load(&rn->stop)) {
    uint64_t off, len;
    pick_any_range(w, &off, &len);
    if (rnd(&w->rng) % 2 == 0 || rn->disk->format->map == NULL)
      walk_status(w, off, len);
    else
      walk_map(w, off, len);
    if (rnd(&w->rng) % 64 == 0)
      (void) rn->disk->format->allocated_bytes(rn->disk);
  }
  return NULL;
}

static void *
flusher_main(void *arg)
{
  struct worker *w = arg;

  while (!atomic_load(&w->rn->stop)) {
    do_flush(w);
    sleep_ms(1 + (unsigned) (rnd(&w->rng) % 20));
  }
  return NULL;
}

/* ---- Phases ------------------------------------------------------------- */

/* Give writer i its stripes; 0 or -1. */
static int
assign_stripes(struct run *rn, struct worker *w)
{
  size_t n = 0;

  for (size_t s = 0; s < rn->nr_stripes; s++)
    n += rn->stripes[s].owner == w->index;
  if (n == 0)
    return -1;                  /* the layout gives every writer some */
  if ((w->mine = malloc(n * sizeof *w->mine)) == NULL)
    return -1;
  for (size_t s = 0; s < rn->nr_stripes; s++)
    if (rn->stripes[s].owner == w->index)
      w->mine[w->nr_mine++] = s;
  return 0;
}

typedef void *thread_fn(void *);

/* Run thread i with fns[i] (writer_main: writer i, with its stripes) for
 * seconds, then stop and join them all; counts are added to rn->count.
 * 0, or -1 if a thread failed or could not start. */
static int
run_threads(struct run *rn, double seconds, uint64_t seed, unsigned nt,
            thread_fn *const *fns)
{
  struct worker *ws = calloc(nt, sizeof *ws);
  pthread_t *tids = calloc(nt, sizeof *tids);
  double end = now() + seconds;
  unsigned started = 0;

  atomic_store(&rn->stop, false);
  for (unsigned i = 0; ws != NULL && tids != NULL && i < nt; i++, started++) {
    struct worker *w = &ws[i];
    *w = (struct worker) { .rn = rn, .index = i, .rng = seed + i };
    w->buf = malloc(MAX_IO);
    w->buf2 = malloc(MAX_IO);
    if (w->buf == NULL || w->buf2 == NULL
        || (fns[i] == writer_main && assign_stripes(rn, w) < 0)
        || pthread_create(&tids[i], NULL, fns[i], w) != 0) {
      fail(rn, "cannot start thread %u", i);
      break;
    }
  }
  while (!atomic_load(&rn->stop) && !interrupted && now() < end)
    sleep_ms(20);
  if (interrupted)
    fail(rn, "interrupted by a signal");
  atomic_store(&rn->stop, true);
  for (unsigned i = 0; i < started; i++)
    pthread_join(tids[i], NULL);
  for (unsigned i = 0; ws != NULL && i < nt; i++) {
    for (int k = 0; k < NR_KINDS; k++)
      rn->count[k] += ws[i].count[k];
    free(ws[i].buf);
    free(ws[i].buf2);
    free(ws[i].mine);
  }
  free(ws);
  free(tids);
  return atomic_load(&rn->failed) ? -1 : 0;
}

/* The main mix: writers, readers, the walker and the flusher. */
static int
run_phase(struct run *rn, double seconds, uint64_t seed)
{
  const struct settings *set = rn->set;
  unsigned nw = set->writers, nt = nw + set->readers + 2;
  thread_fn *fns[MAX_WRITERS + 64 + 2];

  for (unsigned i = 0; i < nt; i++)
    fns[i] = i < nw ? writer_main : i < nw + set->readers ? reader_main
      : i == nt - 2 ? walker_main : flusher_main;
  return run_threads(rn, seconds, seed, nt, fns);
}

/* ---- Neighbours inside one subcluster (extended L2) ------------------------
 *
 * A race the random layout rarely sets up: writer A rewrites bytes
 * [0, 256) of the disk, the start of subcluster 0, which is allocated, so
 * in place; writer B writes [256, SC + 256), the rest of subcluster 0 and
 * the start of subcluster 1, then zeroes subcluster 1 again, so that each
 * of its writes allocates subcluster 1 next to the bytes A writes in
 * place.  A's bytes must read back as A last wrote them: a backend that
 * rewrote all of subcluster 0 from an earlier read while allocating
 * subcluster 1 would lose A's write.  Runs after the main phases (the
 * owners of those bytes are gone), keeping the shadow up to date. */

#define NEIGHBOUR_A_BYTES 256

static void *
neighbour_a(void *arg)
{
  struct worker *w = arg;
  struct run *rn = w->rn;
  const struct fde_format *f = rn->disk->format;

  for (uint64_t gen = 0; !atomic_load(&rn->stop); gen++) {
    int r;
    for (uint64_t i = 0; i < NEIGHBOUR_A_BYTES; i++)
      w->buf[i] = (uint8_t) (tag(i) + 1 + gen % NR_GENS);
    w->count[K_NEIGHBOUR]++;
    if ((r = f->pwrite(rn->disk, w->buf, NEIGHBOUR_A_BYTES, 0)) < 0
        || (r = f->pread(rn->disk, w->buf2, NEIGHBOUR_A_BYTES, 0)) < 0) {
      fail(rn, "neighbour A: I/O at 0: %s", strerror(-r));
      break;
    }
    memcpy(rn->shadow, w->buf, NEIGHBOUR_A_BYTES);
    if (!check_exact(rn, w->buf2, w->buf, NEIGHBOUR_A_BYTES, 0,
                     "read-back next to a subcluster being allocated"))
      break;
  }
  return NULL;
}

static void *
neighbour_b(void *arg)
{
  struct worker *w = arg;
  struct run *rn = w->rn;
  const struct fde_format *f = rn->disk->format;
  uint64_t sc = 1ull << (rn->spec->cluster_bits - 5), off = NEIGHBOUR_A_BYTES;

  for (uint64_t gen = 0; !atomic_load(&rn->stop); gen++) {
    bool punch = gen & 1;
    int r;
    for (uint64_t i = 0; i < sc; i++)
      w->buf[i] = (uint8_t) (tag(off + i) + 1 + gen % NR_GENS);
    w->count[K_NEIGHBOUR]++;
    if ((r = f->pwrite(rn->disk, w->buf, sc, off)) < 0
        || (r = f->zero(rn->disk, sc, sc, punch)) < 0) {
      fail(rn, "neighbour B: I/O at %#" PRIx64 ": %s", off, strerror(-r));
      break;
    }
    memcpy(rn->shadow + off, w->buf, sc);
    memset(rn->shadow + sc, 0, sc);
  }
  return NULL;
}

static int
run_neighbours(struct run *rn, double seconds, uint64_t seed)
{
  static thread_fn *const fns[] = { neighbour_a, neighbour_b };

  return run_threads(rn, seconds, seed, 2, fns);
}

/* Read the whole disk and compare it with the shadows. */
static int
verify_disk(struct run *rn, const char *when)
{
  uint8_t *buf = malloc(MiB);
  char what[64];
  int r = buf == NULL ? -ENOMEM : 0;

  snprintf(what, sizeof what, "read-back %s", when);
  for (uint64_t off = 0; r == 0 && off < rn->size; off += MiB) {
    uint64_t len = rn->size - off < MiB ? rn->size - off : MiB;
    if ((r = rn->disk->format->pread(rn->disk, buf, len, off)) < 0)
      fail(rn, "%s: pread at %#" PRIx64 ": %s", what, off, strerror(-r));
    else if (!check_exact(rn, buf, rn->shadow + off, len, off, what))
      r = -EIO;
  }
  free(buf);
  return r < 0 ? -1 : 0;
}

/* qemu-img check (errors fail, leaks are fine) and qemu-img compare with
 * the shadows written to a raw file.  open: the image is still open (and
 * locked) by us.  0 or -1. */
static int
judge_image(struct run *rn, bool open)
{
  static const int leaks_ok[] = { 3, 0 };
  const char *force = open ? "-U " : "";
  char expect[192];
  int st;

  snprintf(expect, sizeof expect, "%s/%s.expect.raw", scratch,
           rn->spec->name);
  if (write_file(expect, rn->shadow, rn->size) < 0)
    return -1;
  st = rn->spec->raw ? 0
    : run_cmd(leaks_ok, "qemu-img check %s-f qcow2 --output=json %s", force,
              rn->path);
  if (st == 3)
    printf("  qemu-img check%s: %lld leaked clusters (allowed)\n",
           open ? " -U" : "", log_number("\"leaks\""));
  else if (st != 0) {
    fail(rn, "qemu-img check%s found errors", open ? " -U" : "");
    return -1;
  }
  if (run_cmd(NULL, "qemu-img compare %s-f %s -F raw %s %s", force,
              format_of(rn->spec), rn->path, expect) != 0) {
    fail(rn, "qemu-img compare: the image differs from the shadow");
    return -1;
  }
  return 0;
}

/* The internal snapshot reads as before, the backing file is unchanged. */
static int
check_unchanged(struct run *rn)
{
  const struct image_spec *sp = rn->spec;

  if (sp->snapshot
      && run_cmd(NULL, "qemu-img convert -f qcow2 -O raw -l snapshot.name=s1 "
                 "%s %s/%s.s1.after.raw && cmp %s/%s.s1.raw "
                 "%s/%s.s1.after.raw",
                 rn->path, scratch, sp->name, scratch, sp->name, scratch,
                 sp->name) != 0) {
    fail(rn, "internal snapshot s1 no longer reads as before");
    return -1;
  }
  if (sp->backing != NO_BACKING
      && run_cmd(NULL, "cmp %s/%s.base %s/%s.base.before", scratch, sp->name,
                 scratch, sp->name) != 0) {
    fail(rn, "the backing file changed");
    return -1;
  }
  return 0;
}

/* ---- One image ---------------------------------------------------------- */

static int
open_disk(struct run *rn)
{
  struct fde_chain chain = { 0 };
  struct fde_open_params p = {
    .path = rn->path, .read_only = false, .chain = &chain,
    .cache_bytes = rn->spec->cache_bytes,
  };
  int r;

  p.fd = open(rn->path, O_RDWR | O_CLOEXEC);
  if (p.fd == -1) {
    perror(rn->path);
    return -1;
  }
  if ((r = fde_disk_open(NULL, &p, &rn->disk)) < 0) {
    fprintf(stderr, "%s: open failed: %s\n", rn->path, strerror(-r));
    close(p.fd);
    return -1;
  }
  if (rn->disk->size != rn->size || rn->disk->read_only) {
    fprintf(stderr, "%s: opened with size %" PRIu64 ", read-only %d\n",
            rn->path, rn->disk->size, rn->disk->read_only);
    return -1;
  }
  return 0;
}

/* Stop point: flush, read back, judge with the image still open. */
static int
midpoint(struct run *rn)
{
  int r = rn->disk->format->flush(rn->disk);

  if (r < 0) {
    fail(rn, "flush at the mid-point: %s", strerror(-r));
    return -1;
  }
  return verify_disk(rn, "at the mid-point") < 0 || judge_image(rn, true) < 0
    ? -1 : 0;
}

/* The two phases and the final checks, on an opened image. */
static int
exercise(struct run *rn, double seconds, uint64_t seed)
{
  int r;

  double neighbours = rn->spec->extended_l2 ? seconds / 8 : 0;

  seconds -= neighbours;
  if (run_phase(rn, seconds / 2, seed) < 0 || midpoint(rn) < 0
      || run_phase(rn, seconds / 2, seed ^ 0x5eed) < 0
      || (neighbours > 0 && run_neighbours(rn, neighbours, seed) < 0)
      || verify_disk(rn, "at the end") < 0)
    return -1;
  if ((r = rn->disk->format->flush(rn->disk)) < 0) {
    fail(rn, "final flush: %s", strerror(-r));
    return -1;
  }
  fde_disk_close(rn->disk);
  rn->disk = NULL;
  return judge_image(rn, false) < 0 || check_unchanged(rn) < 0 ? -1 : 0;
}

static void
print_counts(const char *what, const uint64_t *count)
{
  printf("%s:", what);
  for (int k = 0; k < NR_KINDS; k++)
    printf("%s %" PRIu64 " %s", k ? "," : "", count[k], kind_names[k]);
  printf("\n");
}

/* One line saying what the image was and how its run ended. */
static void
print_image(const struct image_spec *sp, bool ok, size_t nr_stripes,
            bool reftable_grown)
{
  printf("%s %s: %s", ok ? "ok" : "FAILED", sp->name, format_of(sp));
  if (!sp->raw)
    printf(", %u-byte clusters, %u-bit refcounts%s%s%s%s",
           1u << sp->cluster_bits, sp->refcount_bits,
           sp->extended_l2 ? ", extended L2" : "",
           sp->compressed ? ", compressed clusters" : "",
           sp->snapshot ? ", internal snapshot" : "",
           sp->backing == RAW_BACKING ? ", raw backing file"
           : sp->backing ? ", qcow2 backing file" : "");
  printf(", %" PRIu64 " MiB, %zu stripes%s\n", sp->size / MiB, nr_stripes,
         reftable_grown ? ", refcount table grown" : "");
}

/* Make, stress and judge one image; counts added to total.  0 or -1. */
static int
stress_image(const struct settings *set, const struct image_spec *sp,
             double seconds, uint64_t seed, uint64_t *total)
{
  struct run rn = { .set = set, .spec = sp, .size = sp->size };
  uint8_t *orig = NULL;
  uint64_t reftable = 0;
  char name[192];
  int r = -1;

  pthread_mutex_init(&rn.report_lock, NULL);
  snprintf(rn.path, sizeof rn.path, "%s/%s.%s", scratch, sp->name,
           format_of(sp));
  snprintf(name, sizeof name, "%s/%s.orig.raw", scratch, sp->name);
  rn.owner = malloc(sp->size >> SECTOR_BITS);
  if (rn.owner != NULL && make_image(&rn, seed) == 0
      && (orig = read_file(name, sp->size)) != NULL
      && (rn.shadow = malloc(sp->size)) != NULL
      && make_stripes(&rn, seed) == 0
      && (sp->raw || (reftable = reftable_offset(rn.path)) != 0)
      && open_disk(&rn) == 0) {
    rn.orig = orig;
    memcpy(rn.shadow, orig, sp->size);
    r = exercise(&rn, seconds, seed);
  }
  print_image(sp, r == 0, rn.nr_stripes,
              r == 0 && !sp->raw && reftable_offset(rn.path) != reftable);
  print_counts("  ops", rn.count);
  for (int k = 0; k < NR_KINDS; k++)
    total[k] += rn.count[k];
  fde_disk_close(rn.disk);
  pthread_mutex_destroy(&rn.report_lock);
  free(rn.stripes);
  free(rn.owner);
  free(rn.shadow);
  free(orig);
  return r;
}

static void
on_signal(int sig)
{
  (void) sig;
  interrupted = 1;
}

/* Stop at the next chance on SIGINT, SIGTERM, SIGHUP (make check's
 * timeout, ^C), so that the scratch directory is still removed. */
static void
catch_signals(void)
{
  struct sigaction sa = { .sa_handler = on_signal };

  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGHUP, &sa, NULL);
}

/* ---- Main --------------------------------------------------------------- */

static void
remove_scratch(void)
{
  char cmd[128];

  snprintf(cmd, sizeof cmd, "rm -rf %s", scratch);
  if (system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", scratch);
}

static int
parse_args(int argc, char **argv, struct settings *set)
{
  const char *env = getenv("STRESS_SECONDS");
  int c;

  *set = (struct settings) { .seconds = env ? atof(env) : 40, .writers = 3,
                             .readers = 2, .seed = (uint64_t) time(NULL) };
  while ((c = getopt(argc, argv, "s:w:r:S:i:k")) != -1) {
    switch (c) {
    case 's': set->seconds = atof(optarg); break;
    case 'w': set->writers = (unsigned) atoi(optarg); break;
    case 'r': set->readers = (unsigned) atoi(optarg); break;
    case 'S': set->seed = strtoull(optarg, NULL, 0); break;
    case 'i': set->only = optarg; break;
    case 'k': set->keep = true; break;
    default: return -1;
    }
  }
  if (optind != argc || !(set->seconds > 0) || set->writers < 1
      || set->writers > MAX_WRITERS || set->readers > 64)
    return -1;
  return 0;
}

int
main(int argc, char **argv)
{
  struct settings set;
  uint64_t total[NR_KINDS] = { 0 };
  unsigned nr = 0, failed = 0;
  const char *tmp = getenv("TMPDIR");

  if (parse_args(argc, argv, &set) < 0) {
    fprintf(stderr, "usage: see the comment at the top of %s\n", __FILE__);
    return 2;
  }
  if (system("command -v qemu-img >/dev/null "
             "&& command -v qemu-io >/dev/null") != 0) {
    printf("SKIP: qemu-img and qemu-io (Debian: qemu-utils) are needed\n");
    return 77;
  }
  for (size_t i = 0; i < NR_IMAGES; i++)
    nr += set.only == NULL || strstr(images[i].name, set.only) != NULL;
  snprintf(scratch, sizeof scratch, "%s/fde-stress.XXXXXX",
           tmp != NULL && strlen(tmp) < 32 ? tmp : "/tmp");
  if (nr == 0 || mkdtemp(scratch) == NULL) {
    fprintf(stderr, nr ? "mkdtemp: %s\n" : "no image matches -i\n",
            strerror(errno));
    return 1;
  }
  catch_signals();
  printf("stress: %u images, %.1f s each, %u writers + %u readers + 1 "
         "block-status/map walker + 1 flusher, seed %" PRIu64 "\n", nr,
         set.seconds / nr, set.writers, set.readers, set.seed);
  fflush(stdout);
  for (size_t i = 0; i < NR_IMAGES && !interrupted; i++) {
    if (set.only != NULL && strstr(images[i].name, set.only) == NULL)
      continue;
    failed += stress_image(&set, &images[i], set.seconds / nr,
                           set.seed * 1000003 + i, total) < 0;
    fflush(stdout);
  }
  print_counts("total", total);
  if (set.keep)
    printf("kept %s\n", scratch);
  else
    remove_scratch();
  printf("%u of %u images failed%s\n", failed, nr,
         interrupted ? " (interrupted)" : "");
  return failed || interrupted ? 1 : 0;
}
