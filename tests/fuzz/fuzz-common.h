/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: helpers shared by the libFuzzer harnesses in this
 * directory (fuzz-qcow2-read.c, fuzz-qcow2-write.c).
 *
 * Each harness puts the fuzz input in a memfd, opens it through
 * fde_disk_open() and drives the backend with operations derived
 * deterministically from a hash of the input, so that every crash
 * reproduces from the saved input alone.  Besides the sanitizers, the
 * helpers abort on contract violations of formats/format.h: a leaked file
 * descriptor, an error that is not a negative errno, a block_status run
 * outside (0, len], a range reported as zero that does not read as zeros,
 * or a read whose result depends on how the range was split. */
#ifndef FDE_FUZZ_COMMON_H
#define FDE_FUZZ_COMMON_H

#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdarg.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "format.h"

#define FUZZ_CACHE_BYTES (256u * 1024)
#define FUZZ_MAX_IO      (128u * 1024)  /* largest single read or write */
#define FUZZ_READS       16
#define FUZZ_STATUS      4

/* Where fuzz_fail() reports: a copy of stderr taken at start-up, so the
 * report survives libFuzzer's -close_fd_mask=2 (which silences the
 * backends' log lines). */
static int fuzz_err_fd = 2;

/* Report a broken invariant and abort (libFuzzer saves the input). */
#define fuzz_fail(...)                                         \
  do {                                                         \
    dprintf(fuzz_err_fd, "fuzz: " __VA_ARGS__);                \
    dprintf(fuzz_err_fd, "\n");                                \
    abort();                                                   \
  } while (0)

/* Byte loops of the harness itself: keep them out of the coverage
 * instrumentation (a traced compare per byte costs more than the code
 * under test). */
#define FUZZ_NO_COVERAGE __attribute__((no_sanitize("coverage"), noinline))

/* 64-bit FNV-1a of the input: the seed for every derived operation. */
FUZZ_NO_COVERAGE static inline uint64_t
fuzz_hash(const uint8_t *data, size_t size)
{
  uint64_t h = 0xcbf29ce484222325ull;

  for (size_t i = 0; i < size; i++) {
    h ^= data[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

/* splitmix64 step. */
static inline uint64_t
fuzz_next(uint64_t *state)
{
  uint64_t z = (*state += 0x9e3779b97f4a7c15ull);

  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* Number of open file descriptors of this process. */
static inline int
fuzz_count_fds(void)
{
  DIR *d = opendir("/proc/self/fd");
  struct dirent *e;
  int n = 0;

  if (d == NULL)
    fuzz_fail("opendir /proc/self/fd: %s", strerror(errno));
  while ((e = readdir(d)) != NULL)
    if (e->d_name[0] != '.')
      n++;
  closedir(d);
  return n;
}

/* A memfd holding data (NULL-safe for size 0). */
static inline int
fuzz_memfd(const uint8_t *data, size_t size)
{
  int fd = memfd_create("fuzz-image", MFD_CLOEXEC);

  if (fd == -1)
    fuzz_fail("memfd_create: %s", strerror(errno));
  if (size > 0 && fde_pwrite_full(fd, data, size, 0) < 0)
    fuzz_fail("writing the memfd failed");
  return fd;
}

/* Big-endian store helpers for the hand-made backing image. */
static inline void
fuzz_be32(uint8_t *p, uint32_t v)
{
  for (int i = 0; i < 4; i++)
    p[i] = (uint8_t) (v >> (24 - 8 * i));
}

static inline void
fuzz_be64(uint8_t *p, uint64_t v)
{
  fuzz_be32(p, (uint32_t) (v >> 32));
  fuzz_be32(p + 4, (uint32_t) v);
}

static char fuzz_sandbox[32];
static char fuzz_path[64];      /* the image's name: sandbox/fuzz.qcow2 */

static inline void
fuzz_remove_sandbox(void)
{
  char name[64];

  snprintf(name, sizeof name, "%s/base.raw", fuzz_sandbox);
  unlink(name);
  snprintf(name, sizeof name, "%s/base.qcow2", fuzz_sandbox);
  unlink(name);
  rmdir(fuzz_sandbox);
}

static inline void
fuzz_write_file(const char *base, const uint8_t *data, size_t len)
{
  char name[64];
  int fd;

  snprintf(name, sizeof name, "%s/%s", fuzz_sandbox, base);
  fd = open(name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0444);
  if (fd == -1 || fde_pwrite_full(fd, data, len, 0) < 0 || close(fd) == -1)
    fuzz_fail("cannot write %s in the sandbox", name);
}

/* Make a private directory and name the fuzzed image fuzz_path inside it,
 * so that relative backing names in the input resolve there and can only
 * reach the two backing files made here (absolute names, and ones climbing
 * out with "..", still reach real files: read-only, regular files only):
 *   base.raw    64 KiB, byte i = i*31+7 (mod 256)
 *   base.qcow2  v3, 512 B clusters, 64 KiB, guest cluster 0 = 0xb5 bytes,
 *               the rest unallocated (no refblock: fine for reading).
 * The seeds made by make-corpus.sh name these two files.  (The harness
 * does not chdir there: libFuzzer resolves corpus paths after start-up.) */
static inline void
fuzz_init_sandbox(void)
{
  static uint8_t raw[65536], q[2560];
  int fd = fcntl(2, F_DUPFD_CLOEXEC, 3);

  if (fd != -1)
    fuzz_err_fd = fd;

  strcpy(fuzz_sandbox, "/tmp/fde-fuzz.XXXXXX");
  if (mkdtemp(fuzz_sandbox) == NULL)
    fuzz_fail("cannot make a private directory: %s", strerror(errno));
  snprintf(fuzz_path, sizeof fuzz_path, "%s/fuzz.qcow2", fuzz_sandbox);
  atexit(fuzz_remove_sandbox);

  for (size_t i = 0; i < sizeof raw; i++)
    raw[i] = (uint8_t) (i * 31 + 7);
  fuzz_write_file("base.raw", raw, sizeof raw);

  fuzz_be32(q + 0, 0x514649fb);                 /* magic */
  fuzz_be32(q + 4, 3);                          /* version */
  fuzz_be32(q + 20, 9);                         /* cluster_bits */
  fuzz_be64(q + 24, 65536);                     /* size */
  fuzz_be32(q + 36, 2);                         /* l1_size */
  fuzz_be64(q + 40, 1024);                      /* l1_table_offset */
  fuzz_be64(q + 48, 512);                       /* refcount_table_offset */
  fuzz_be32(q + 56, 1);                         /* refcount_table_clusters */
  fuzz_be32(q + 96, 4);                         /* refcount_order */
  fuzz_be32(q + 100, 104);                      /* header_length */
  fuzz_be64(q + 1024, (1ull << 63) | 1536);     /* L1[0] -> L2 */
  fuzz_be64(q + 1536, (1ull << 63) | 2048);     /* L2[0] -> data */
  memset(q + 2048, 0xb5, 512);
  fuzz_write_file("base.qcow2", q, sizeof q);
}

/* Start-up of a harness: each buffer in the NULL-terminated list gets
 * FUZZ_MAX_IO bytes, *devnull is /dev/null, and the sandbox is made. */
static inline void
fuzz_init_harness(FILE **devnull, uint8_t **first, ...)
{
  va_list ap;

  va_start(ap, first);
  for (uint8_t **p = first; p != NULL; p = va_arg(ap, uint8_t **))
    if ((*p = malloc(FUZZ_MAX_IO)) == NULL)
      fuzz_fail("initialisation failed: out of memory");
  va_end(ap);
  if ((*devnull = fopen("/dev/null", "w")) == NULL)
    fuzz_fail("initialisation failed: /dev/null: %s", strerror(errno));
  fuzz_init_sandbox();
}

/* Is r a plausible result of a format member: 0 or a negative errno? */
static inline void
fuzz_check_ret(int r, const char *what)
{
  if (r > 0 || r < -4095)
    fuzz_fail("%s returned %d, not 0 or a negative errno", what, r);
}

FUZZ_NO_COVERAGE static inline bool
fuzz_all_zero(const uint8_t *p, size_t len)
{
  uint8_t acc = 0;

  for (size_t i = 0; i < len; i++)
    acc |= p[i];
  return acc == 0;
}

/* A range [off, off+len) of the disk derived from the PRNG: lengths are a
 * mix of tiny, cluster-ish and large, never above FUZZ_MAX_IO or the
 * disk.  len is 0 only for an empty disk. */
static inline void
fuzz_pick_range(uint64_t *rng, uint64_t disk_size, uint64_t *off,
                size_t *len)
{
  uint64_t r = fuzz_next(rng);
  uint64_t l;

  if (disk_size == 0) {
    *off = 0;
    *len = 0;
    return;
  }
  switch (r & 3) {
  case 0:  l = 1 + (r >> 8) % 512; break;
  case 1:  l = 1 + (r >> 8) % 8192; break;
  case 2:  l = 512u << ((r >> 8) % 12); break;
  default: l = 1 + (r >> 8) % FUZZ_MAX_IO; break;
  }
  if (l > FUZZ_MAX_IO)
    l = FUZZ_MAX_IO;
  if (l > disk_size)
    l = disk_size;
  r = fuzz_next(rng);
  switch (r & 3) {
  case 0:  *off = 0; break;                         /* start of the disk */
  case 1:  *off = disk_size - l; break;             /* its tail */
  case 2:  *off = ((r >> 2) % (disk_size - l + 1)) & ~511ull; break;
  default: *off = (r >> 2) % (disk_size - l + 1); break;
  }
  *len = (size_t) l;
}

/* Read len bytes at off, checking the result; 0 or -errno. */
static inline int
fuzz_pread(struct fde_disk *disk, void *buf, size_t len, uint64_t off)
{
  if (off > disk->size || len > disk->size - off)
    fuzz_fail("harness bug: read beyond the disk");
  int r = disk->format->pread(disk, buf, len, off);
  fuzz_check_ret(r, "pread");
  return r;
}

/* The map member's promise (formats/format.h): every run it names as a
 * file range lies inside that file and holds exactly the bytes pread gave
 * (got, len bytes read at off).  scratch holds FUZZ_MAX_IO bytes. */
static inline void
fuzz_check_map(struct fde_disk *disk, const uint8_t *got, size_t len,
               uint64_t off, uint8_t *scratch)
{
  size_t pos = 0;

  while (disk->format->map != NULL && pos < len) {
    uint64_t host = 0, run = 0;
    int fd = -1;
    struct stat st;
    int r = disk->format->map(disk, off + pos, len - pos, &fd, &host, &run);

    if (r < 0) {
      fuzz_check_ret(r, "map");
      return;
    }
    if (r > 1 || run == 0 || run > len - pos)
      fuzz_fail("map(%#llx, %zu) returned %d with run %llu",
                (unsigned long long) (off + pos), len - pos, r,
                (unsigned long long) run);
    if (r == 1) {
      if (fstat(fd, &st) == -1)
        fuzz_fail("map named descriptor %d: %s", fd, strerror(errno));
      if (host > (uint64_t) st.st_size || run > (uint64_t) st.st_size - host)
        fuzz_fail("map named [%#llx, +%llu), past the end of the file (%lld)",
                  (unsigned long long) host, (unsigned long long) run,
                  (long long) st.st_size);
      if (fde_pread_full(fd, scratch, run, host) < 0
          || memcmp(scratch, got + pos, run) != 0)
        fuzz_fail("map named file bytes at %#llx for disk offset %#llx "
                  "that differ from what pread gives",
                  (unsigned long long) host, (unsigned long long) (off + pos));
    }
    pos += run;
  }
}

/* Drive the read side of an open disk: ranged reads (re-read in two pieces
 * to compare, mapped to file ranges to compare), block_status walks
 * checked against the data, describe and allocated_bytes.  buf and buf2
 * hold FUZZ_MAX_IO bytes. */
static inline void
fuzz_exercise_reads(struct fde_disk *disk, uint64_t *rng, uint8_t *buf,
                    uint8_t *buf2, FILE *devnull)
{
  const struct fde_format *f = disk->format;

  if (disk->size == 0)
    return;
  for (int i = 0; i < FUZZ_READS; i++) {
    uint64_t off;
    size_t len;

    fuzz_pick_range(rng, disk->size, &off, &len);
    if (fuzz_pread(disk, buf, len, off) < 0)
      continue;
    if (len >= 2 && (fuzz_next(rng) & 3) == 0) {
      /* The same bytes read as two requests must match. */
      size_t cut = 1 + fuzz_next(rng) % (len - 1);
      if (fuzz_pread(disk, buf2, cut, off) == 0
          && fuzz_pread(disk, buf2 + cut, len - cut, off + cut) == 0
          && memcmp(buf, buf2, len) != 0)
        fuzz_fail("read of %zu bytes at %#llx differs when split at +%zu",
                  len, (unsigned long long) off, cut);
    } else if ((fuzz_next(rng) & 1) == 0) {
      fuzz_check_map(disk, buf, len, off, buf2);
    }
  }

  for (int i = 0; i < FUZZ_STATUS && f->block_status != NULL; i++) {
    uint64_t off, run;
    size_t len;
    unsigned status;

    fuzz_pick_range(rng, disk->size, &off, &len);
    /* Walk a few runs from off. */
    for (int step = 0; step < 8 && len > 0; step++) {
      int r = f->block_status(disk, off, len, &run, &status);
      fuzz_check_ret(r, "block_status");
      if (r < 0)
        break;
      if (run == 0 || run > len)
        fuzz_fail("block_status(%#llx, %zu) gave run %llu",
                  (unsigned long long) off, len, (unsigned long long) run);
      if (status & ~(FDE_BS_DATA | FDE_BS_ZERO))
        fuzz_fail("block_status gave unknown bits %#x", status);
      if ((status & FDE_BS_ZERO) && run <= FUZZ_MAX_IO
          && fuzz_pread(disk, buf, run, off) == 0
          && !fuzz_all_zero(buf, run))
        fuzz_fail("block_status says %llu bytes at %#llx are zero, "
                  "but they do not read as zeros",
                  (unsigned long long) run, (unsigned long long) off);
      off += run;
      len -= run;
    }
  }

  if (f->allocated_bytes != NULL)
    (void) f->allocated_bytes(disk);
  if (f->describe != NULL && devnull != NULL) {
    f->describe(disk, devnull);
    fflush(devnull);
  }
}

#endif /* FDE_FUZZ_COMMON_H */
