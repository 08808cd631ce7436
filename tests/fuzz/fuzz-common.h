/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: helpers shared by the libFuzzer harnesses in this
 * directory.  The read-only harnesses (fuzz-qcow2-read.c, fuzz-vdi-read.c,
 * fuzz-vpc-read.c, fuzz-vhdx-read.c, fuzz-ova.c, fuzz-vmdk-read.c) are a
 * struct fuzz_target each, run by fuzz_run_input(); fuzz-qcow2-write.c and
 * fuzz-partition.c use the pieces.
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
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdarg.h>
#include <sys/mman.h>
#include <sys/resource.h>
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
 * under test), and out of ASan's (a shadow check per byte of memory
 * that is the harness's own). */
#define FUZZ_NO_COVERAGE \
  __attribute__((no_sanitize("coverage", "address"), noinline))

/* Bytes of an input that seed the derived operations: its first
 * FUZZ_HASH_HEAD and last FUZZ_HASH_TAIL bytes (a holes or sparse list,
 * a trailer) and its size.  Hashing the whole of a 1 MiB input cost more
 * than the operations it seeds; any change to an input still changes what
 * the backend reads, and the operations stay a function of the input. */
#define FUZZ_HASH_HEAD 4096
#define FUZZ_HASH_TAIL 64

FUZZ_NO_COVERAGE static inline uint64_t
fuzz_fnv(uint64_t h, const uint8_t *p, size_t len)
{
  for (size_t i = 0; i < len; i++) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

/* 64-bit FNV-1a of the input's size, head and tail: the seed for every
 * derived operation. */
static inline uint64_t
fuzz_hash(const uint8_t *data, size_t size)
{
  size_t head = size < FUZZ_HASH_HEAD ? size : FUZZ_HASH_HEAD;
  size_t tail = size - head < FUZZ_HASH_TAIL ? size - head : FUZZ_HASH_TAIL;
  uint8_t len[8];

  for (int i = 0; i < 8; i++)
    len[i] = (uint8_t) ((uint64_t) size >> (8 * i));
  return fuzz_fnv(fuzz_fnv(fuzz_fnv(0xcbf29ce484222325ull, len, 8),
                           data, head), data + size - tail, tail);
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

/* File descriptors: which of 0 .. fuzz_fd_span - 1 are open, found by
 * one poll() (a closed descriptor comes back POLLNVAL) instead of reading
 * /proc/self/fd around every input.  fuzz_fds_init() lowers the soft
 * RLIMIT_NOFILE to fuzz_fd_span, so no descriptor can be opened outside
 * the span: the check sees every descriptor a run leaks or closes.  The
 * span is small because poll's cost grows with it (1024 took a third of
 * the time of a VDI input); an input needing more descriptors at once
 * (a VMDK of hundreds of extent files) gets EMFILE: an error path. */
#define FUZZ_FD_SPAN 256
#define FUZZ_FD_SPAN_MAX 4096

static int fuzz_fd_span;
static struct pollfd fuzz_fd_poll[FUZZ_FD_SPAN_MAX];
static uint8_t fuzz_fd_open[FUZZ_FD_SPAN_MAX];  /* before the input */

/* Set the span: FUZZ_FD_SPAN, or more if a descriptor past it is open at
 * start-up (inherited), and the soft RLIMIT_NOFILE to it (one look at
 * /proc/self/fd). */
static inline void
fuzz_fds_init(void)
{
  struct rlimit rl;
  DIR *d;
  struct dirent *e;
  int span = FUZZ_FD_SPAN;

  if ((d = opendir("/proc/self/fd")) == NULL)
    fuzz_fail("opendir /proc/self/fd: %s", strerror(errno));
  while ((e = readdir(d)) != NULL)
    if (e->d_name[0] != '.' && atoi(e->d_name) >= span
        && atoi(e->d_name) != dirfd(d))
      span = atoi(e->d_name) + 1;
  closedir(d);
  if (span > FUZZ_FD_SPAN_MAX)
    fuzz_fail("descriptor %d is open: more than the %d the harness checks",
              span - 1, FUZZ_FD_SPAN_MAX);
  if (getrlimit(RLIMIT_NOFILE, &rl) == -1)
    fuzz_fail("getrlimit: %s", strerror(errno));
  if (rl.rlim_cur > (rlim_t) span) {
    rl.rlim_cur = (rlim_t) span;
    if (setrlimit(RLIMIT_NOFILE, &rl) == -1)
      fuzz_fail("setrlimit: %s", strerror(errno));
  }
  fuzz_fd_span = (int) rl.rlim_cur;
}

/* Which descriptors are open now: flags[fd] = 1 (poll's POLLNVAL). */
FUZZ_NO_COVERAGE static inline void
fuzz_fds_scan(uint8_t *flags)
{
  if (fuzz_fd_span == 0)
    fuzz_fds_init();
  for (int fd = 0; fd < fuzz_fd_span; fd++)
    fuzz_fd_poll[fd] = (struct pollfd) { .fd = fd };
  if (poll(fuzz_fd_poll, (nfds_t) fuzz_fd_span, 0) == -1)
    fuzz_fail("poll over %d descriptors: %s", fuzz_fd_span, strerror(errno));
  for (int fd = 0; fd < fuzz_fd_span; fd++)
    flags[fd] = !(fuzz_fd_poll[fd].revents & POLLNVAL);
}

/* Before an input: note the open descriptors. */
static inline void
fuzz_fds_before(void)
{
  fuzz_fds_scan(fuzz_fd_open);
}

/* After it: the same ones must be open (a leak, or a descriptor the
 * backend closed that it did not own, aborts). */
FUZZ_NO_COVERAGE static inline void
fuzz_fds_after(void)
{
  static uint8_t now[FUZZ_FD_SPAN_MAX];

  fuzz_fds_scan(now);
  for (int fd = 0; fd < fuzz_fd_span; fd++)
    if (now[fd] != fuzz_fd_open[fd])
      fuzz_fail("file descriptor %d was %s before the input, %s after "
                "(a leak or a close of a descriptor not owned)", fd,
                fuzz_fd_open[fd] ? "open" : "closed",
                now[fd] ? "open" : "closed");
}

/* Number of open file descriptors of this process (the harnesses not
 * using fuzz_fds_before/after). */
static inline int
fuzz_count_fds(void)
{
  static uint8_t now[FUZZ_FD_SPAN_MAX];
  int n = 0;

  fuzz_fds_scan(now);
  for (int fd = 0; fd < fuzz_fd_span; fd++)
    n += now[fd];
  return n;
}

/* Are the len bytes at p zeros?  (Each byte equals the next and the first
 * is 0: one memcmp, which ASan checks as a range, not byte by byte.) */
static inline bool
fuzz_all_zero(const uint8_t *p, size_t len)
{
  return len == 0 || (p[0] == 0 && memcmp(p, p + 1, len - 1) == 0);
}

/* A memfd holding data (NULL-safe for size 0).  Whole 4 KiB pages of
 * zeros are left as holes (they read as zeros all the same): images are
 * mostly zeros, and filling the pages cost more than the backend's work. */
static inline int
fuzz_memfd(const uint8_t *data, size_t size)
{
  int fd = memfd_create("fuzz-image", MFD_CLOEXEC);
  size_t pos = 0;

  if (fd == -1)
    fuzz_fail("memfd_create: %s", strerror(errno));
  while (pos < size) {
    size_t start = pos, end;

    while (start + 4096 <= size && fuzz_all_zero(data + start, 4096))
      start += 4096;
    end = start;
    while (end < size && (end + 4096 > size
                          || !fuzz_all_zero(data + end, 4096)))
      end = end + 4096 < size ? end + 4096 : size;
    if (end > start && fde_pwrite_full(fd, data + start, end - start,
                                       start) < 0)
      fuzz_fail("writing the memfd failed");
    pos = end;
  }
  if (fde_io_ftruncate(fd, size) < 0)
    fuzz_fail("cannot size the memfd to %zu bytes", size);
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

/* ---- Input layouts that keep images with MiB-aligned parts small ---- */

/* Little-endian integer of n bytes at p. */
static inline uint64_t
fuzz_get_le(const uint8_t *p, int n)
{
  uint64_t v = 0;

  while (n-- > 0)
    v = v << 8 | p[n];
  return v;
}

#define FUZZ_SPARSE_MAGIC "FDESPARS"
#define FUZZ_SPARSE_SPAN (64ull << 20)  /* offsets wrap: files stay small */

/* The image file for an input in the sparse layout (fuzz-vdi-read.c): if
 * it starts with "FDESPARS", records of an offset (8 bytes, little-endian,
 * taken modulo FUZZ_SPARSE_SPAN), a length (4 bytes) and that many bytes,
 * written over zeros in order; the file ends where the furthest record
 * does (a record of length 0 sets the length).  Any other input is the
 * file itself.  Returns a memfd. */
static inline int
fuzz_sparse_memfd(const uint8_t *data, size_t size)
{
  size_t pos = sizeof FUZZ_SPARSE_MAGIC - 1;
  uint64_t end = 0;
  int fd;

  if (size < pos || memcmp(data, FUZZ_SPARSE_MAGIC, pos) != 0)
    return fuzz_memfd(data, size);
  fd = fuzz_memfd(NULL, 0);
  while (size - pos >= 12) {
    uint64_t off = fuzz_get_le(data + pos, 8) % FUZZ_SPARSE_SPAN;
    uint64_t len = fuzz_get_le(data + pos + 8, 4);
    pos += 12;
    if (len > size - pos)
      len = size - pos;
    if (len > 0 && fde_pwrite_full(fd, data + pos, (size_t) len, off) < 0)
      fuzz_fail("writing the memfd failed");
    if (off + len > end)
      end = off + len;
    pos += (size_t) len;
  }
  if (fde_io_ftruncate(fd, end) < 0)
    fuzz_fail("cannot size the memfd to %llu bytes", (unsigned long long) end);
  return fd;
}

#define FUZZ_HOLES_MAGIC "FDEHOLES"
#define FUZZ_HOLES_TRAILER 12
#define FUZZ_HOLES_MAX 16
#define FUZZ_HOLES_BYTES_MAX (64u << 20)

/* The image file for an input in the holes layout (fuzz-vpc-read.c,
 * fuzz-vhdx-read.c): an input may end in up to FUZZ_HOLES_MAX records of
 * two little-endian u32 (at, len), then "FDEHOLES" and a little-endian
 * u32 count.  The records and the trailer are cut off and len zero bytes
 * are inserted at offset at of the file being built (offsets in
 * increasing order; a record going backwards, or past
 * FUZZ_HOLES_BYTES_MAX bytes of holes in all, is ignored).  Returns a
 * memfd (the holes are holes of it: nothing is written there). */
static inline int
fuzz_holes_memfd(const uint8_t *data, size_t size)
{
  uint32_t n = 0, holes = 0;
  uint64_t out = 0;
  const uint8_t *rec;
  int fd;

  if (size >= FUZZ_HOLES_TRAILER
      && memcmp(data + size - FUZZ_HOLES_TRAILER, FUZZ_HOLES_MAGIC, 8) == 0) {
    n = (uint32_t) fuzz_get_le(data + size - 4, 4);
    if (n > FUZZ_HOLES_MAX || size - FUZZ_HOLES_TRAILER < 8 * (size_t) n)
      n = 0;
    else
      size -= FUZZ_HOLES_TRAILER + 8 * (size_t) n;
  }
  rec = data + size;
  fd = fuzz_memfd(NULL, 0);
  for (uint32_t i = 0; i < n; i++) {
    uint64_t at = fuzz_get_le(rec + 8 * i, 4);
    uint64_t len = fuzz_get_le(rec + 8 * i + 4, 4);
    size_t piece;
    if (at < out || len > FUZZ_HOLES_BYTES_MAX - holes)
      continue;
    piece = (size_t) (at - out < size ? at - out : size);
    if (piece > 0 && fde_pwrite_full(fd, data, piece, out) < 0)
      fuzz_fail("writing the memfd failed");
    data += piece;
    size -= piece;
    out += piece + len;
    holes += (uint32_t) len;
  }
  if (size > 0 && fde_pwrite_full(fd, data, size, out) < 0)
    fuzz_fail("writing the memfd failed");
  if (fde_io_ftruncate(fd, out + size) < 0)
    fuzz_fail("cannot size the memfd");
  return fd;
}

/* ---- The driver of the read-only harnesses ---- */

/* How an input's image is opened: the parameters a harness varies. */
struct fuzz_open {
  bool writable;              /* ask for a writable disk: it must still
                               * come back read-only */
  const char *snapshot;       /* qcow2 internal snapshot, or NULL */
  unsigned disk;              /* --disk=N (OVA) */
  uint64_t file_offset;       /* a window of the file (an OVA member) */
  uint64_t file_length;
};

#define FUZZ_OPENS_MAX 2

/* A read-only harness: the format under test and its hooks. */
struct fuzz_target {
  const struct fde_format *format;
  bool whole_sectors;         /* the disk size is a multiple of 512 */
  bool no_write_members;      /* the open disk has no pwrite nor zero */
  bool tail_probe;            /* run the table's identification (the
                               * fixed-VHD footer probe) on each file */
  uint64_t cache_bytes;       /* params.cache_bytes (0: the default) */
  /* The image file (a memfd) for an input; NULL: the input's bytes. */
  int (*image)(const uint8_t *data, size_t size);
  /* Fill opens[] for an input (rng may be drawn from) and return how many
   * (1 .. FUZZ_OPENS_MAX); NULL: one read-only open. */
  int (*opens)(const uint8_t *data, size_t size, uint64_t *rng,
               struct fuzz_open *opens);
};

static uint8_t *fuzz_buf, *fuzz_buf2;   /* FUZZ_MAX_IO bytes each */
static FILE *fuzz_devnull;

/* LLVMFuzzerInitialize's part for a harness using fuzz_run_input. */
static inline void
fuzz_init_target(void)
{
  fuzz_init_harness(&fuzz_devnull, &fuzz_buf, &fuzz_buf2, NULL);
}

/* Open an image (fd, consumed) as o says, check what open gives (0 or
 * -errno; a proper read-only handle on success, nothing on failure),
 * exercise the disk (fuzz_exercise_reads) and close it. */
static inline void
fuzz_open_exercise(const struct fuzz_target *t, int fd,
                   const struct fuzz_open *o, uint64_t *rng)
{
  struct fde_chain chain = { .depth = 0 };
  struct fde_open_params params = {
    .path = fuzz_path,
    .fd = fd,
    .read_only = !o->writable,
    .snapshot = o->snapshot,
    .cache_bytes = t->cache_bytes,
    .chain = &chain,
    .file_offset = o->file_offset,
    .file_length = o->file_length,
    .disk = o->disk,
  };
  static const uint8_t no_head[1];
  struct fde_disk *disk = NULL;
  int r;

  if (t->tail_probe)
    (void) fde_format_identify(no_head, 0, fd);
  r = fde_disk_open(t->format, &params, &disk);
  fuzz_check_ret(r, "open");
  if (r < 0) {
    if (disk != NULL)
      fuzz_fail("open failed but set *out");
    close(fd);                  /* still ours after a failed open */
    return;
  }
  if (disk == NULL || disk->path == NULL
      || (disk->format != t->format
          && strcmp(disk->format->name, t->format->name) != 0))
    fuzz_fail("open succeeded without a proper handle");
  if (!disk->read_only || fde_disk_can_write(disk))
    fuzz_fail("open gave a writable disk");
  if (t->no_write_members
      && (disk->format->pwrite != NULL || disk->format->zero != NULL))
    fuzz_fail("open gave a disk with write members");
  if (t->whole_sectors && disk->size % 512 != 0)
    fuzz_fail("open gave a size of %llu bytes, not whole sectors",
              (unsigned long long) disk->size);
  fuzz_exercise_reads(disk, rng, fuzz_buf, fuzz_buf2, fuzz_devnull);
  fde_disk_close(disk);         /* closes fd, and what the disk opened */
}

/* LLVMFuzzerTestOneInput of a read-only harness: the format's probe sees
 * the input, each open of t->opens is made on a fresh image file, and no
 * descriptor may be leaked or closed across the input. */
static inline int
fuzz_run_input(const struct fuzz_target *t, const uint8_t *data, size_t size)
{
  struct fuzz_open opens[FUZZ_OPENS_MAX];
  uint64_t rng = fuzz_hash(data, size);
  int n = 1;

  memset(opens, 0, sizeof opens);
  fuzz_fds_before();
  if (t->format->probe != NULL)
    (void) t->format->probe(data, size);
  if (t->opens != NULL)
    n = t->opens(data, size, &rng, opens);
  if (n < 1 || n > FUZZ_OPENS_MAX)
    fuzz_fail("harness bug: %d opens", n);
  for (int i = 0; i < n; i++)
    fuzz_open_exercise(t, t->image != NULL ? t->image(data, size)
                                           : fuzz_memfd(data, size),
                       &opens[i], &rng);
  fuzz_fds_after();
  return 0;
}

#endif /* FDE_FUZZ_COMMON_H */
