/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: the VMDK sparse-extent reader (formats/vmdk-sparse.h)
 * against qemu-img.
 *
 *   vmdk-sparse-test
 *
 * In a temporary directory: a raw disk of random grains, zero grains and
 * holes whose size is not a multiple of the grain is converted by qemu-img
 * to monolithicSparse, monolithicSparse with zeroed_grain=on (and zeroed
 * grains written by qemu-io), streamOptimized, and a streamOptimized copy
 * turned into the GD_AT_END layout (header gdOffset all ones, footer
 * holding the real header: built here, read by QEMU too), plus a COWD
 * (VMDK3) extent built byte by byte (qemu-img cannot make one, but reads
 * it).  For each, `qemu-img convert -O raw` is the oracle: reads of the
 * whole disk, sequential 4 KiB reads, random reads and a walk of
 * vmdk_sparse_lookup (DATA runs read at their host offset, ZERO and
 * UNALLOCATED runs zero in the oracle) must all agree with it.  Damaged
 * copies QEMU reads (cut in half, a GT past or across the end, GT entries
 * into the header or past the end: QEMU zero-fills past EOF) must agree
 * with it too.  Then hostile copies made by poking bytes (cut inside the
 * header, a GD past the end, a lying compressed size, huge grain
 * directories, bad granularity, version, footer) must fail with -EINVAL
 * (-ENOTSUP for version 4) and no crash; every pread of an open and full
 * read is failed in turn through the I/O seam (fde_io_fault_arm), which
 * must surface as the error, never as wrong data, and leave the extent
 * readable on retry (at most FDE_FAULT_CAP calls per image, default 60,
 * 20 with sanitizers, spread evenly); every malloc, calloc and realloc
 * of an open and read (of these images and of a hand-built stream of
 * 1 MiB grains, whose big compressed grain needs inflate_grain's realloc)
 * is failed in turn the same way and must surface as -ENOMEM or be done
 * without; and four threads read at random
 * through a small decompressed-grain cache (for ThreadSanitizer).
 * Last, one disk's budgets (formats/vmdk.c): a grain directory over the
 * disk's gd_budget is -E2BIG, a stream given less than a grain of cache
 * reads right uncached, and a descriptor whose lines name the same files
 * again shares their readers and fds (qemu-img's conversion the oracle,
 * faults injected into its open and reads, no fd left open).
 * Prints what it measured.  Exit 0 if all passed, 1 on a failure, 77
 * (skip) without qemu-img.  FDE_VMDK_KEEP=1 keeps the directory. */
#include <config.h>

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "format.h"
#include "vmdk-sparse.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define DEFAULT_CAP 20
#define THREAD_READS 400
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define DEFAULT_CAP 20
#define THREAD_READS 400
#endif
#endif
#ifndef THREAD_READS
#define THREAD_READS 1500
#endif
#ifndef DEFAULT_CAP
#define DEFAULT_CAP 60
#endif

#define GRAIN   65536u
#define NGRAINS 96u
#define DISK    ((uint64_t) NGRAINS * GRAIN + 3 * 512)  /* not grain aligned */

static char dir[] = "/tmp/vmdk-sparse-test.XXXXXX";
static int failures;

#define CHECK(cond, ...)                                                \
  do {                                                                  \
    if (!(cond)) {                                                      \
      fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);              \
      fprintf(stderr, __VA_ARGS__);                                     \
      fputc('\n', stderr);                                              \
      failures++;                                                       \
    }                                                                   \
  } while (0)

static uint64_t rng = 0x9e3779b97f4a7c15u;

static uint64_t
next_random(void)
{
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

/* Run a shell command built like printf; its exit status. */
static int
sh(const char *fmt, ...)
{
  char cmd[4096];
  va_list ap;
  int r;

  va_start(ap, fmt);
  vsnprintf(cmd, sizeof cmd, fmt, ap);
  va_end(ap);
  r = system(cmd);
  return WIFEXITED(r) ? WEXITSTATUS(r) : 128;
}

static char *
path_of(const char *name)
{
  static char buf[8][512];
  static int next;
  char *p = buf[next++ % 8];

  snprintf(p, sizeof buf[0], "%s/%s", dir, name);
  return p;
}

static uint8_t *
slurp(const char *path, size_t *len)
{
  int fd = open(path, O_RDONLY);
  struct stat st;
  uint8_t *buf;

  if (fd < 0 || fstat(fd, &st) < 0)
    return NULL;
  buf = malloc((size_t) st.st_size + 1);
  if (buf && fde_pread_full(fd, buf, (size_t) st.st_size, 0) < 0) {
    free(buf);
    buf = NULL;
  }
  close(fd);
  *len = (size_t) st.st_size;
  return buf;
}

static void
poke(const char *path, uint64_t off, const void *bytes, size_t n)
{
  int fd = open(path, O_WRONLY);

  if (fd < 0 || pwrite(fd, bytes, n, (off_t) off) != (ssize_t) n) {
    fprintf(stderr, "cannot poke %s\n", path);
    exit(1);
  }
  close(fd);
}

static void
poke32(const char *path, uint64_t off, uint32_t v)
{
  v = htole32(v);
  poke(path, off, &v, 4);
}

static void
poke64(const char *path, uint64_t off, uint64_t v)
{
  v = htole64(v);
  poke(path, off, &v, 8);
}

static uint32_t
peek32(const char *path, uint64_t off)
{
  size_t len;
  uint8_t *b = slurp(path, &len);
  uint32_t v = 0;

  if (b && off + 4 <= len)
    memcpy(&v, b + off, 4);
  free(b);
  return le32toh(v);
}

/* Open path as an extent: fd in *fd; the result of vmdk_sparse_open. */
static int
open_extent(const char *path, uint64_t zcache, int *fd,
            struct vmdk_sparse **s)
{
  struct vmdk_sparse_params p = { 0 };
  struct stat st;

  *s = NULL;
  *fd = open(path, O_RDONLY);
  if (*fd < 0 || fstat(*fd, &st) < 0) {
    fprintf(stderr, "cannot open %s\n", path);
    exit(1);
  }
  p.fd = *fd;
  p.path = path;
  p.length = (uint64_t) st.st_size;
  p.zcache_bytes = zcache;
  return vmdk_sparse_open(&p, s);
}

static void
close_extent(int fd, struct vmdk_sparse *s)
{
  vmdk_sparse_close(s);
  close(fd);
}

static bool
is_zero(const uint8_t *p, size_t n)
{
  for (size_t i = 0; i < n; i++)
    if (p[i])
      return false;
  return true;
}

/* ---- the images ------------------------------------------------------ */

/* The raw source: grain i is a hole (i % 5 == 0), written zeros (1), half
 * random (2) or random (3, 4); the 3 sectors past the last whole grain
 * are random. */
static void
make_raw(const char *path)
{
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  uint8_t *g = malloc(GRAIN);

  if (fd < 0 || !g || ftruncate(fd, (off_t) DISK) < 0)
    exit(1);
  for (uint64_t i = 0; i <= NGRAINS; i++) {
    size_t n = i == NGRAINS ? 3 * 512 : GRAIN;
    if (i % 5 == 0 && i != NGRAINS)
      continue;
    for (size_t j = 0; j < n; j += 8) {
      uint64_t v = next_random();
      memcpy(g + j, &v, 8);
    }
    if (i % 5 == 1)
      memset(g, 0, n);
    if (i % 5 == 2)
      memset(g + n / 2, 0, n / 2);
    if (pwrite(fd, g, n, (off_t) (i * GRAIN)) != (ssize_t) n)
      exit(1);
  }
  free(g);
  close(fd);
}

/* The GD_AT_END layout from a streamOptimized image: the first header's
 * gdOffset set to all ones and footer marker, header copy and
 * end-of-stream marker appended. */
static void
make_gd_at_end(const char *from, const char *to)
{
  size_t len;
  uint8_t *b = slurp(from, &len);
  uint8_t tail[1536] = { 0 };
  int fd;

  if (!b)
    exit(1);
  len = len / 512 * 512;
  tail[12] = 3;                                 /* footer marker */
  memcpy(tail + 512, b, 512);                   /* header, real gdOffset */
  fd = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0 || pwrite(fd, b, len, 0) != (ssize_t) len
      || pwrite(fd, tail, sizeof tail, (off_t) len) != sizeof tail)
    exit(1);
  close(fd);
  free(b);
  poke64(to, 56, UINT64_MAX);
}

/* A COWD (VMDK3) extent of the raw source, byte by byte: header sector
 * 0, GD at sector 4, GTs of 4096 entries from sector 8, grains of
 * granularity 16 sectors (8 KiB) after them; all-zero grains are left
 * unallocated, and grains are stored in reverse order so that no two are
 * contiguous.  Returns its size. */
static void
make_cowd(const char *raw, const char *to)
{
  const uint32_t gran = 16, gbytes = gran * 512;
  size_t len;
  uint8_t *src = slurp(raw, &len);
  uint64_t sectors = (len + 511) / 512;
  uint64_t grains = (sectors + gran - 1) / gran;
  uint32_t gts = (uint32_t) ((grains + 4095) / 4096);
  uint32_t *gt = calloc((size_t) gts * 4096, 4);
  uint8_t hdr[2048] = { 0 };
  uint64_t next;
  int fd = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0644);

  if (!src || !gt || fd < 0)
    exit(1);
  memcpy(hdr, "COWD", 4);
  /* QEMU reads the CID of a sparse file from the text at 0x200 */
  memcpy(hdr + 512, "CID=12345678\nparentCID=ffffffff\n", 32);
  uint32_t f[7] = { htole32(1), htole32(3), htole32((uint32_t) sectors),
                    htole32(gran), htole32(4), htole32(gts),
                    htole32(0) };
  memcpy(hdr + 4, f, sizeof f);
  next = 8 + (uint64_t) gts * 4096 * 4 / 512;
  for (uint64_t i = grains; i-- > 0;) {
    uint8_t g[8192] = { 0 };
    size_t n = len - i * gbytes < gbytes ? len - i * gbytes : gbytes;
    memcpy(g, src + i * gbytes, n);
    if (is_zero(g, gbytes))
      continue;
    gt[i] = htole32((uint32_t) next);
    if (pwrite(fd, g, gbytes, (off_t) (next * 512)) != gbytes)
      exit(1);
    next += gran;
  }
  for (uint32_t t = 0; t < gts; t++) {
    uint32_t e = htole32(8 + t * 4096 * 4 / 512);
    if (pwrite(fd, &e, 4, (off_t) (4 * 512 + t * 4)) != 4)
      exit(1);
  }
  if (pwrite(fd, hdr, sizeof hdr, 0) != sizeof hdr
      || pwrite(fd, gt, (size_t) gts * 4096 * 4, 8 * 512)
         != (ssize_t) gts * 4096 * 4)
    exit(1);
  close(fd);
  free(gt);
  free(src);
}

/* ---- checks against the oracle --------------------------------------- */

/* The oracle: qemu-img convert -O raw of path. */
static uint8_t *
oracle(const char *path, size_t *len)
{
  const char *out = path_of("oracle.raw");

  if (sh("qemu-img convert -O raw '%s' '%s'", path, out) != 0) {
    CHECK(0, "qemu-img convert failed on %s", path);
    return NULL;
  }
  return slurp(out, len);
}

/* Walk vmdk_sparse_lookup over the whole extent; counts runs. */
static void
check_lookup(const char *name, struct vmdk_sparse *s, const uint8_t *want,
             int fd, uint64_t grain)
{
  uint64_t cap = vmdk_sparse_capacity(s), off = 0, runs = 0, longest = 0;
  uint8_t *buf = malloc(cap);

  while (off < cap) {
    enum vmdk_grain_kind kind;
    uint64_t run, host;
    int r = vmdk_sparse_lookup(s, off, cap - off, &run, &kind, &host);

    CHECK(r == 0 && run > 0 && run <= cap - off, "%s: lookup at %" PRIu64
          " = %d", name, off, r);
    if (r < 0 || run == 0)
      break;
    if (kind == VMDK_GRAIN_DATA) {
      CHECK(fde_pread_full(fd, buf, run, host) == 0
            && memcmp(buf, want + off, run) == 0,
            "%s: DATA run at %" PRIu64 " (+%" PRIu64 ") differs", name, off,
            run);
      longest = run > longest ? run : longest;
    } else if (kind != VMDK_GRAIN_COMPRESSED) {
      CHECK(is_zero(want + off, run), "%s: %s run at %" PRIu64
            " is not zero in the oracle", name,
            kind == VMDK_GRAIN_ZERO ? "ZERO" : "UNALLOCATED", off);
    }
    runs++;
    off += run;
  }
  printf("  %s: %" PRIu64 " runs, longest DATA run %" PRIu64 " grains\n",
         name, runs, longest / grain);
  free(buf);
}

/* Everything the oracle can check on one image. */
static void
check_image(const char *name, const char *path, uint64_t grain,
            bool expect_long_runs)
{
  size_t olen;
  uint8_t *want = oracle(path, &olen), *got;
  struct vmdk_sparse *s;
  uint64_t cap, calls;
  int fd, r;

  if (!want)
    return;
  r = open_extent(path, 0, &fd, &s);
  CHECK(r == 0, "%s: open = %d", name, r);
  if (r < 0) {
    free(want);
    close(fd);
    return;
  }
  cap = vmdk_sparse_capacity(s);
  CHECK(cap == olen, "%s: capacity %" PRIu64 " != %zu", name, cap, olen);
  got = malloc(olen);
  r = vmdk_sparse_read(s, got, olen, 0);
  CHECK(r == 0 && memcmp(got, want, olen) == 0, "%s: whole read (%d)", name,
        r);

  /* Sequential 4 KiB reads on a fresh open (empty caches); counting
   * seam calls shows the caches work. */
  close_extent(fd, s);
  CHECK(open_extent(path, 0, &fd, &s) == 0, "%s: reopen", name);
  memset(got, 0xaa, olen);
  fde_io_fault_arm(0, 0);
  for (uint64_t off = 0; off < olen; off += 4096) {
    size_t n = olen - off < 4096 ? olen - off : 4096;
    r = vmdk_sparse_read(s, got + off, n, off);
    if (r < 0)
      break;
  }
  calls = fde_io_fault_calls();
  fde_io_fault_disarm();
  CHECK(r == 0 && memcmp(got, want, olen) == 0, "%s: 4 KiB reads (%d)",
        name, r);
  printf("  %s: %zu 4 KiB reads made %" PRIu64 " preads\n", name,
         (olen + 4095) / 4096, calls);
  /* compressed: each grain read and inflated once, plus its GTs */
  CHECK(!strstr(name, "stream") || calls <= olen / grain + 1 + 4,
        "%s: %" PRIu64 " preads for %zu grains: is a cache missing?", name,
        calls, olen / grain);

  for (int i = 0; i < 400; i++) {
    uint64_t off = next_random() % olen;
    size_t n = (size_t) (next_random() % (3 * grain) + 1);
    if (n > olen - off)
      n = olen - off;
    r = vmdk_sparse_read(s, got, n, off);
    CHECK(r == 0 && memcmp(got, want + off, n) == 0, "%s: read %zu at %"
          PRIu64 " (%d)", name, n, off, r);
  }
  check_lookup(name, s, want, fd, grain);
  if (expect_long_runs) {
    enum vmdk_grain_kind kind;
    uint64_t run, host;
    /* grains 2, 3, 4 hold data, stored one after the other */
    r = vmdk_sparse_lookup(s, 2 * GRAIN, 3 * GRAIN, &run, &kind, &host);
    CHECK(r == 0 && kind == VMDK_GRAIN_DATA && run == 3 * GRAIN,
          "%s: grains 2-4 not one run (%d, %" PRIu64 ")", name, r, run);
  }
  {
    char *text = NULL;
    r = vmdk_sparse_descriptor(s, 1 << 20, &text);
    if (strncmp(name, "cowd", 4) == 0)
      CHECK(r == -ENOENT, "cowd: descriptor = %d", r);
    else
      CHECK(r == 0 && strstr(text, "createType"), "%s: descriptor = %d",
            name, r);
    free(text);
  }
  printf("  %s: allocated %" PRIu64 " of %zu file bytes\n", name,
         vmdk_sparse_allocated(s), (size_t) lseek(fd, 0, SEEK_END));
  free(got);
  free(want);
  close_extent(fd, s);
}

/* ---- hostile copies -------------------------------------------------- */

/* Copy from to name; returns the copy's path. */
static const char *
copy_of(const char *from, const char *name)
{
  const char *to = path_of(name);
  size_t len;
  uint8_t *b = slurp(from, &len);
  int fd = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0644);

  /* in process: a fork is slow under ThreadSanitizer */
  if (!b || fd < 0 || write(fd, b, len) != (ssize_t) len) {
    fprintf(stderr, "cannot copy %s\n", from);
    exit(1);
  }
  close(fd);
  free(b);
  return to;
}

/* Open must give want_open; if it opens, a whole read must give
 * want_read. */
static void
expect(const char *name, const char *path, int want_open, int want_read)
{
  struct vmdk_sparse *s;
  int fd, r = open_extent(path, 0, &fd, &s);

  CHECK(r == want_open, "%s: open = %d, want %d", name, r, want_open);
  if (r == 0) {
    /* the first 64 MiB, in 1 MiB pieces; the first error */
    uint64_t cap = vmdk_sparse_capacity(s);
    uint8_t *buf = malloc(1 << 20);
    if (cap > 64 << 20)
      cap = 64 << 20;
    for (uint64_t off = 0; r == 0 && off < cap; off += 1 << 20)
      r = vmdk_sparse_read(s, buf, cap - off < (1 << 20) ? cap - off
                           : 1 << 20, off);
    CHECK(r == want_read, "%s: read = %d, want %d", name, r, want_read);
    free(buf);
  }
  printf("  %s: refused as expected\n", name);
  close_extent(fd, s);
}

static void check_faults(const char *name, const char *path);

static void
check_hostile(const char *mono, const char *stream, const char *atend)
{
  const char *p;
  uint32_t gd = peek32(mono, 56), gt0, sgd = peek32(stream, 56), sgt0, g0;

  puts("hostile images:");
  expect("truncated to 1000 bytes",
         (p = copy_of(mono, "h1.vmdk"), truncate(p, 1000), p), -EINVAL, 0);
  {
    struct stat st;
    p = copy_of(mono, "h2.vmdk");
    stat(p, &st);
    CHECK(truncate(p, st.st_size / 2) == 0, "truncate");
    /* QEMU zero-fills past the end (formats.md 1.1): read as it reads */
    check_image("truncated to half", p, GRAIN, false);
    p = copy_of(mono, "h2b.vmdk");      /* GT 0 across the end */
    poke32(p, (uint64_t) gd * 512, (uint32_t) (st.st_size / 512 - 2));
    check_image("GT across the end", p, GRAIN, false);
    check_faults("GT across the end", p);
  }
  p = copy_of(stream, "h3.vmdk");
  CHECK(truncate(p, 70000) == 0, "truncate");
  expect("stream truncated", p, 0, -EINVAL);
  p = copy_of(mono, "h4.vmdk");
  poke64(p, 56, UINT64_C(1) << 40);
  expect("GD past the end", p, -EINVAL, 0);
  p = copy_of(mono, "h5.vmdk");
  poke32(p, (uint64_t) gd * 512, 0x7fffffff);
  check_image("GT past the end", p, GRAIN, false);
  gt0 = peek32(mono, (uint64_t) gd * 512);
  p = copy_of(mono, "h6.vmdk");
  poke32(p, (uint64_t) gt0 * 512 + 2 * 4, 2);   /* grain 2 -> sector 2 */
  check_image("GT entry into the header", p, GRAIN, false);
  p = copy_of(mono, "h7.vmdk");
  poke32(p, (uint64_t) gt0 * 512 + 2 * 4, 1);   /* no zeroed-grain flag */
  check_image("GT entry 1 without the zeroed-grain flag", p, GRAIN, false);
  p = copy_of(mono, "h8.vmdk");
  poke32(p, (uint64_t) gt0 * 512 + 3 * 4, 0x7ffffff0);
  check_image("GT entry past the end", p, GRAIN, false);
  p = copy_of(mono, "h9.vmdk");
  poke64(p, 12, UINT64_C(1) << 46);             /* 2^30 GD entries */
  expect("huge grain directory", p, -EINVAL, 0);
  p = copy_of(mono, "h10.vmdk");
  poke64(p, 12, UINT64_C(1) << 38);             /* GD of 16 MiB */
  expect("grain directory larger than the file", p, -EINVAL, 0);
  p = copy_of(mono, "h11.vmdk");
  poke64(p, 12, UINT64_MAX / 256);
  expect("capacity overflowing bytes", p, -EINVAL, 0);
  p = copy_of(mono, "h12.vmdk");
  poke64(p, 20, 0);
  expect("granularity 0", p, -EINVAL, 0);
  p = copy_of(mono, "h13.vmdk");
  poke64(p, 20, UINT64_C(1) << 40);
  expect("granularity 2^40", p, -EINVAL, 0);
  p = copy_of(mono, "h14.vmdk");
  poke32(p, 44, 513);
  expect("513 GTEs per GT", p, -EINVAL, 0);
  p = copy_of(mono, "h15.vmdk");
  poke32(p, 44, 0);
  expect("0 GTEs per GT", p, -EINVAL, 0);
  p = copy_of(mono, "h16.vmdk");
  poke32(p, 4, 4);
  expect("version 4", p, -ENOTSUP, 0);
  p = copy_of(mono, "h17.vmdk");
  poke(p, 0, "KDMW", 4);
  expect("bad magic", p, -EINVAL, 0);
  p = copy_of(mono, "h18.vmdk");
  poke64(p, 64, UINT64_C(1) << 50);
  expect("overHead past the end", p, -EINVAL, 0);

  sgt0 = peek32(stream, (uint64_t) sgd * 512);
  g0 = peek32(stream, (uint64_t) sgt0 * 512 + 2 * 4);   /* grain 2 */
  p = copy_of(stream, "h20.vmdk");
  poke32(p, (uint64_t) g0 * 512 + 8, 0x7fffffff);
  expect("compressed size past the grain", p, 0, -EINVAL);
  p = copy_of(stream, "h21.vmdk");
  poke32(p, (uint64_t) g0 * 512 + 8, 0);
  expect("compressed size 0", p, 0, -EINVAL);
  p = copy_of(stream, "h22.vmdk");
  poke32(p, (uint64_t) g0 * 512 + 8, peek32(stream, (uint64_t) g0 * 512 + 8)
         - 1);
  expect("compressed size one short", p, 0, -EINVAL);
  p = copy_of(stream, "h23.vmdk");
  poke(p, (uint64_t) g0 * 512 + 12 + 100, "garbage!", 8);
  expect("corrupt deflate data", p, 0, -EINVAL);
  {
    /* Grain 4 is random and incompressible: its stored size is close to
     * 2 grains' worth of room only in theory; make it claim 2 grains. */
    uint32_t g4 = peek32(stream, (uint64_t) sgt0 * 512 + 4 * 4);
    p = copy_of(stream, "h24.vmdk");
    poke32(p, (uint64_t) g4 * 512 + 8, 2 * GRAIN - 12 + 1);
    expect("compressed size > 2 grains - marker", p, 0, -EINVAL);
  }

  {
    /* Grain 2 replaced by a stream that inflates to 1000 bytes: as in
     * QEMU (vmdk_read_extent), its first 1000 bytes read, more is
     * -EINVAL; then by one inflating to 2 grains: -EINVAL. */
    uint8_t *raw = calloc(2, GRAIN), z[4096];
    uLongf zlen = sizeof z;
    struct vmdk_sparse *s;
    int fd, r;

    p = copy_of(stream, "h25.vmdk");
    for (int i = 0; i < 1000; i++)
      raw[i] = (uint8_t) (i * 7);
    CHECK(compress(z, &zlen, raw, 1000) == Z_OK, "compress");
    poke32(p, (uint64_t) g0 * 512 + 8, (uint32_t) zlen);
    poke(p, (uint64_t) g0 * 512 + 12, z, zlen);
    CHECK(open_extent(p, 0, &fd, &s) == 0, "short grain: open");
    r = vmdk_sparse_read(s, z, 1000, 2 * GRAIN);
    CHECK(r == 0 && memcmp(z, raw, 1000) == 0, "short grain: head (%d)", r);
    r = vmdk_sparse_read(s, z, 1001, 2 * GRAIN);
    CHECK(r == -EINVAL, "short grain: past its end = %d", r);
    r = vmdk_sparse_read(s, z, 1000, 2 * GRAIN);
    CHECK(r == 0 && memcmp(z, raw, 1000) == 0, "short grain: cached (%d)",
          r);
    close_extent(fd, s);
    printf("  short grain: head read, tail -EINVAL\n");

    p = copy_of(stream, "h26.vmdk");
    memset(raw, 0, 2 * GRAIN);
    zlen = sizeof z;
    CHECK(compress(z, &zlen, raw, 2 * GRAIN) == Z_OK, "compress");
    poke32(p, (uint64_t) g0 * 512 + 8, (uint32_t) zlen);
    poke(p, (uint64_t) g0 * 512 + 12, z, zlen);
    expect("grain inflating to 2 grains", p, 0, -EINVAL);

    /* Grain 2 replaced by a valid stream longer than a grain and a
     * sector (level 0, a full flush every 64 bytes): the reader's first
     * pread stops there, the rest must be read too.  Whole-grain reads
     * inflate into the caller's buffer, partial ones through the cache. */
    {
      size_t big = 2 * GRAIN;
      uint8_t *zb = malloc(big), *back = malloc(GRAIN);
      z_stream zs = { 0 };

      for (size_t i = 0; i < GRAIN; i++)
        raw[i] = (uint8_t) (i * 13 + i / 251);
      CHECK(zb && back && deflateInit(&zs, 0) == Z_OK, "deflateInit");
      zs.next_out = zb;
      zs.avail_out = (uInt) big;
      for (size_t i = 0; i < GRAIN; i += 64) {
        zs.next_in = raw + i;
        zs.avail_in = 64;
        deflate(&zs, i + 64 < GRAIN ? Z_FULL_FLUSH : Z_FINISH);
      }
      CHECK(zs.total_out > GRAIN + 512 && zs.total_out + 12 <= big,
            "long stream: %lu bytes", (unsigned long) zs.total_out);
      p = copy_of(stream, "h27.vmdk");
      poke32(p, (uint64_t) g0 * 512 + 8, (uint32_t) zs.total_out);
      poke(p, (uint64_t) g0 * 512 + 12, zb, zs.total_out);
      deflateEnd(&zs);
      CHECK(open_extent(p, 0, &fd, &s) == 0, "long stream: open");
      r = vmdk_sparse_read(s, back, GRAIN, 2 * GRAIN);
      CHECK(r == 0 && memcmp(back, raw, GRAIN) == 0,
            "long stream: whole grain (%d)", r);
      r = vmdk_sparse_read(s, back, 4096, 2 * GRAIN + GRAIN - 4096);
      CHECK(r == 0 && memcmp(back, raw + GRAIN - 4096, 4096) == 0,
            "long stream: its tail (%d)", r);
      close_extent(fd, s);
      printf("  stream of %lu bytes for one grain: read whole and in part\n",
             (unsigned long) zs.total_out);
      free(zb);
      free(back);
    }
    free(raw);
  }
  {
    struct stat st;
    stat(atend, &st);
    p = copy_of(atend, "h30.vmdk");
    poke32(p, (uint64_t) st.st_size - 1536 + 12, 2);    /* not a footer */
    expect("bad footer marker", p, -EINVAL, 0);
    p = copy_of(atend, "h31.vmdk");
    poke(p, (uint64_t) st.st_size - 1024, "XDMV", 4);
    expect("footer without KDMV", p, -EINVAL, 0);
    p = copy_of(atend, "h32.vmdk");
    poke64(p, (uint64_t) st.st_size - 1024 + 56, UINT64_MAX);
    expect("footer with GD_AT_END", p, -EINVAL, 0);
    p = copy_of(atend, "h33.vmdk");
    poke32(p, (uint64_t) st.st_size - 512 + 12, 1);     /* EOS type */
    expect("bad end-of-stream marker", p, -EINVAL, 0);
  }
}

static void
check_hostile_cowd(const char *cowd)
{
  const char *p;

  p = copy_of(cowd, "c1.vmdk");
  poke32(p, 16, 0);
  expect("COWD granularity 0", p, -EINVAL, 0);
  p = copy_of(cowd, "c2.vmdk");
  poke32(p, 24, 0xffffffff);
  expect("COWD huge GD", p, -EINVAL, 0);
  p = copy_of(cowd, "c3.vmdk");
  poke32(p, 24, 0x100000);
  expect("COWD GD past the end", p, -EINVAL, 0);
  p = copy_of(cowd, "c4.vmdk");
  poke32(p, 12, 0xffffffff);            /* capacity past its 1-entry GD */
  expect("COWD capacity past its GD", p, -EINVAL, 0);
  p = copy_of(cowd, "c5.vmdk");
  poke32(p, 8 * 512 + 4, 3);
  check_image("cowd grain into the header", p, 8192, false);
}

/* ---- lookup work (review 12 F5) -------------------------------------- */

/* A hosted sparse extent of 1-sector grains whose n GD entries name
 * distinct all-zero GTs in turn (distinct of them; 1: every entry the
 * same GT). */
static const char *
make_alias(const char *name, uint32_t n, uint32_t distinct)
{
  const char *p = path_of(name);
  uint32_t gd_sector = 2, gt_sector = gd_sector + (n * 4 + 511) / 512;
  uint8_t h[512] = { 0 };
  uint32_t *gd = calloc(n, 4);
  int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  uint64_t v64;
  uint32_t v32;

  if (!gd || fd < 0)
    exit(1);
  memcpy(h, "KDMV", 4);
  v32 = htole32(1), memcpy(h + 4, &v32, 4);             /* version */
  v64 = htole64((uint64_t) n * 512), memcpy(h + 12, &v64, 8);   /* sectors */
  v64 = htole64(1), memcpy(h + 20, &v64, 8);            /* granularity */
  v32 = htole32(512), memcpy(h + 44, &v32, 4);          /* GTEs per GT */
  v64 = htole64(gd_sector), memcpy(h + 56, &v64, 8);
  for (uint32_t i = 0; i < n; i++)
    gd[i] = htole32(gt_sector + 4 * (i % distinct));
  if (pwrite(fd, h, 512, 0) != 512
      || pwrite(fd, gd, (size_t) n * 4, (off_t) gd_sector * 512)
         != (ssize_t) n * 4
      || ftruncate(fd, ((off_t) gt_sector + 4 * distinct) * 512) < 0)
    exit(1);
  close(fd);
  free(gd);
  return p;
}

/* Lookups over all-zero GTs: GD entries naming one GT cost one GT read
 * and one call for the whole extent; GTs named in turn are loaded at
 * most LOOKUP_GT_LOADS (1024) per call, the run then stops short and the
 * caller's loop reaches the end. */
static void
check_lookup_work(void)
{
  static const struct { const char *name; uint32_t distinct; } c[] = {
    { "alias1.vmdk", 1 }, { "alias2000.vmdk", 2000 },
  };
  const uint32_t n = 1 << 16;

  puts("lookup work:");
  for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
    const char *p = make_alias(c[i].name, n, c[i].distinct);
    struct vmdk_sparse *s;
    uint64_t cap, off = 0, calls = 0, preads, run, host;
    enum vmdk_grain_kind kind;
    int fd, r;

    CHECK(open_extent(p, 0, &fd, &s) == 0, "%s: open", c[i].name);
    cap = vmdk_sparse_capacity(s);
    fde_io_fault_arm(0, 0);
    while (off < cap) {
      r = vmdk_sparse_lookup(s, off, cap - off, &run, &kind, &host);
      CHECK(r == 0 && run > 0 && kind == VMDK_GRAIN_UNALLOCATED,
            "%s: lookup at %" PRIu64 " = %d", c[i].name, off, r);
      if (r < 0 || run == 0)
        break;
      off += run;
      calls++;
    }
    preads = fde_io_fault_calls();
    fde_io_fault_disarm();
    if (c[i].distinct == 1)
      CHECK(calls == 1 && preads == 1, "%s: %" PRIu64 " calls, %" PRIu64
            " preads", c[i].name, calls, preads);
    else
      CHECK(calls > 1 && preads <= calls * 1024, "%s: %" PRIu64 " calls, %"
            PRIu64 " preads", c[i].name, calls, preads);
    printf("  %s: %" PRIu64 " GD entries in %" PRIu64 " lookups, %" PRIu64
           " preads\n", c[i].name, (uint64_t) n, calls, preads);
    close_extent(fd, s);
  }
}

/* ---- faults ---------------------------------------------------------- */

/* Read pieces of at most piece bytes, one every stride bytes from from to
 * len, comparing each with want: a piece that reads but differs sets
 * *wrong, and the first error goes in *first while it is 0.  The offset
 * of the first piece that did not read right, or UINT64_MAX. */
static uint64_t
read_pieces(struct vmdk_sparse *s, uint8_t *buf, const uint8_t *want,
            size_t len, uint64_t from, size_t piece, uint64_t stride,
            bool *wrong, int *first)
{
  uint64_t bad = UINT64_MAX;

  for (uint64_t off = from; off < len; off += stride) {
    size_t n = len - off < piece ? len - off : piece;
    int r = vmdk_sparse_read(s, buf, n, off);
    bool differs = r == 0 && memcmp(buf, want + off, n) != 0;
    if (differs)
      *wrong = true;
    if (r < 0 && *first == 0)
      *first = r;
    if ((r < 0 || differs) && bad == UINT64_MAX)
      bad = off;
  }
  return bad;
}

/* Open and read everything in 1 MiB pieces; -errno of the first
 * failure, which must never be wrong data. */
static int
open_and_read(const char *name, const char *path, const uint8_t *want,
              size_t len, uint64_t nth, bool *wrong)
{
  struct vmdk_sparse *s;
  uint8_t *buf = malloc(1 << 20);
  int fd, r, first = 0;

  fde_io_fault_arm(nth, EIO);
  r = open_extent(path, 256 * 1024, &fd, &s);
  if (r < 0)
    first = r;
  else
    read_pieces(s, buf, want, len, 0, 1 << 20, 1 << 20, wrong, &first);
  fde_io_fault_disarm();
  /* After the fault, everything reads right (nothing cached is bad). */
  if (r == 0) {
    bool differs = false;
    int err = 0;
    uint64_t bad = read_pieces(s, buf, want, len, 0, 1 << 20, 1 << 20,
                               &differs, &err);
    CHECK(bad == UINT64_MAX, "%s: fault %" PRIu64 ": retry at %" PRIu64
          " fails (%d)", name, nth, bad, err);
  }
  close_extent(fd, s);
  free(buf);
  return first;
}

/* Fault runs per image: FDE_FAULT_CAP, else 60 (20 when built with
 * sanitizers), spread evenly over the calls, as in fault-test.c. */
static uint64_t
fault_cap(void)
{
  const char *env = getenv("FDE_FAULT_CAP");

  if (env && atoi(env) > 0)
    return (uint64_t) atoi(env);
  return DEFAULT_CAP;
}

static void
check_faults(const char *name, const char *path)
{
  size_t len;
  uint8_t *want = oracle(path, &len);
  bool wrong = false;
  uint64_t k, injected = 0;

  if (!want)
    return;
  CHECK(open_and_read(name, path, want, len, 0, &wrong) == 0 && !wrong,
        "%s: unfaulted run", name);
  {
    /* count: repeat the run counting only */
    struct vmdk_sparse *s;
    uint8_t *buf = malloc(1 << 20);
    int fd;
    fde_io_fault_arm(0, 0);
    if (open_extent(path, 256 * 1024, &fd, &s) == 0) {
      for (uint64_t off = 0; off < len; off += 1 << 20)
        vmdk_sparse_read(s, buf, len - off < (1 << 20) ? len - off : 1 << 20,
                         off);
    }
    k = fde_io_fault_calls();
    fde_io_fault_disarm();
    close_extent(fd, s);
    free(buf);
  }
  for (uint64_t i = 0, runs = k < fault_cap() ? k : fault_cap(); i < runs;
       i++) {
    uint64_t n = 1 + i * k / runs;      /* spread evenly over 1..k */
    int r = open_and_read(name, path, want, len, n, &wrong);
    injected += fde_io_fault_injected();
    CHECK(!wrong, "%s: fault at call %" PRIu64 " gave wrong data", name, n);
    CHECK(r == -EIO, "%s: fault at call %" PRIu64 " returned %d, not -EIO",
          name, n, r);
  }
  printf("  %s: %" PRIu64 " faults injected (of %" PRIu64 " calls), each "
         "one surfaced as -EIO\n", name, injected, k);
  free(want);
}

/* ---- allocation faults ----------------------------------------------- */

/* This test is linked with -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc
 * (Makefile.am): the calls of its own objects and of libformats.a go
 * through these (libc's, zlib's and libdeflate's own allocations do not).
 * Armed with n > 0, the nth call from then on returns NULL; armed with 0,
 * calls are only counted.  One thread at a time arms it. */
void *__real_malloc(size_t n);
void *__real_calloc(size_t k, size_t n);
void *__real_realloc(void *p, size_t n);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t k, size_t n);
void *__wrap_realloc(void *p, size_t n);

static _Atomic bool alloc_armed;
static _Atomic uint64_t alloc_calls, alloc_fail_at, alloc_failed;
static _Atomic bool alloc_failed_realloc;   /* the failed call a realloc */

static bool
alloc_fails(bool is_realloc)
{
  if (!alloc_armed)
    return false;
  uint64_t n = ++alloc_calls;
  if (n != alloc_fail_at)
    return false;
  alloc_failed++;
  alloc_failed_realloc = is_realloc;
  return true;
}

void *
__wrap_malloc(size_t n)
{
  return alloc_fails(false) ? NULL : __real_malloc(n);
}

void *
__wrap_calloc(size_t k, size_t n)
{
  return alloc_fails(false) ? NULL : __real_calloc(k, n);
}

void *
__wrap_realloc(void *p, size_t n)
{
  return alloc_fails(true) ? NULL : __real_realloc(p, n);
}

static void
alloc_fault_arm(uint64_t nth)
{
  alloc_calls = 0;
  alloc_failed = 0;
  alloc_fail_at = nth;
  alloc_armed = true;
}

static void
alloc_fault_disarm(void)
{
  alloc_armed = false;
}

/* A streamOptimized extent (version 3, compressed grains with markers,
 * deflate, an embedded descriptor) of 1 MiB grains, which qemu-img cannot
 * make (it writes 64 KiB ones): grain 0 random (its compressed size, over
 * 1 MiB, needs more than the first 256 KiB read after the marker: the
 * realloc of inflate_grain), grain 1 unallocated, grain 2 a pattern,
 * grain 3 random and partial (capacity 3.5 MiB + 4 KiB).  QEMU reads it:
 * the oracle decides.  As tests/vmdk.bats's big_grain_stream. */
static void
make_big_grain_stream(const char *path)
{
  const uint64_t g = 2048, cap = 3 * g + 1024 + 8;      /* sectors */
  const size_t grain = (size_t) g * 512;
  uint8_t h[512] = { 0 }, *data = malloc(grain), *z;
  uint8_t *gt = calloc(4, 512);
  char desc[20 * 512] = { 0 };
  uLongf zlen;
  uint64_t at = 128;                                    /* next sector */
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

  CHECK(fd >= 0 && data && gt, "big-grain stream: create");
  memcpy(h, "KDMV", 4);
  memcpy(h + 4, &(uint32_t) { htole32(3) }, 4);
  memcpy(h + 8, &(uint32_t) { htole32(1 | 1 << 16 | 1 << 17) }, 4);
  memcpy(h + 12, &(uint64_t) { htole64(cap) }, 8);
  memcpy(h + 20, &(uint64_t) { htole64(g) }, 8);
  memcpy(h + 28, &(uint64_t) { htole64(1) }, 8);        /* descriptor */
  memcpy(h + 36, &(uint64_t) { htole64(20) }, 8);
  memcpy(h + 44, &(uint32_t) { htole32(512) }, 4);      /* GTEs per GT */
  memcpy(h + 56, &(uint64_t) { htole64(21) }, 8);       /* GD */
  memcpy(h + 64, &(uint64_t) { htole64(128) }, 8);      /* overhead */
  memcpy(h + 73, "\n \r\n", 4);
  h[77] = 1;                                            /* deflate */
  snprintf(desc, sizeof desc, "# Disk DescriptorFile\nversion=1\n"
           "CID=12345678\nparentCID=ffffffff\ncreateType=\"streamOptimized\""
           "\nRW %" PRIu64 " SPARSE \"%s\"\n", cap, strrchr(path, '/') + 1);
  CHECK(pwrite(fd, h, 512, 0) == 512
        && pwrite(fd, desc, sizeof desc, 512) == (ssize_t) sizeof desc
        && pwrite(fd, &(uint32_t) { htole32(22) }, 4, 21 * 512) == 4,
        "big-grain stream: header");
  z = malloc(compressBound(grain) + 12);
  for (uint32_t i = 0; i < 4 && z; i++) {
    size_t n = i == 3 ? (size_t) (cap - 3 * g) * 512 : grain;
    if (i == 1)
      continue;
    for (size_t k = 0; k < n; k += 8) {
      uint64_t r = i == 2 ? 0x0706050403020100u + k * 0x0808080808080808u
                          : next_random();
      memcpy(data + k, &r, 8);
    }
    zlen = compressBound(grain);
    CHECK(compress(z + 12, &zlen, data, n) == Z_OK, "compress");
    memcpy(z, &(uint64_t) { htole64(i * g) }, 8);
    memcpy(z + 8, &(uint32_t) { htole32((uint32_t) zlen) }, 4);
    memcpy(gt + 4 * i, &(uint32_t) { htole32((uint32_t) at) }, 4);
    CHECK(pwrite(fd, z, zlen + 12, (off_t) at * 512) == (ssize_t) zlen + 12,
          "big-grain stream: grain %" PRIu32, i);
    at += (zlen + 12 + 511) / 512;
  }
  CHECK(pwrite(fd, gt, 4 * 512, 22 * 512) == 4 * 512
        && ftruncate(fd, (off_t) at * 512) == 0, "big-grain stream: GT");
  close(fd);
  free(z);
  free(gt);
  free(data);
}

/* Open, read everything in 1 MiB pieces, then 4 KiB pieces at a stride
 * (partial reads of compressed grains, through the cache), with the nth
 * allocation failing (0: none fails); the first error, which must never
 * be wrong data; then, disarmed, everything must read right. */
static int
alloc_run(const char *name, const char *path, const uint8_t *want,
          size_t len, uint64_t nth, bool *wrong)
{
  uint8_t *buf = malloc(1 << 20);
  struct vmdk_sparse *s;
  int fd, r, first;

  alloc_fault_arm(nth);
  first = r = open_extent(path, 256 * 1024, &fd, &s);
  if (r == 0) {
    read_pieces(s, buf, want, len, 0, 1 << 20, 1 << 20, wrong, &first);
    read_pieces(s, buf, want, len, 512, 4096, 333333, wrong, &first);
  }
  alloc_fault_disarm();
  if (r == 0) {
    bool differs = false;
    int err = 0;
    uint64_t bad = read_pieces(s, buf, want, len, 0, 1 << 20, 1 << 20,
                               &differs, &err);
    CHECK(bad == UINT64_MAX, "%s: allocation %" PRIu64 " failed: retry at %"
          PRIu64 " fails (%d)", name, nth, bad, err);
  }
  if (r == 0)
    close_extent(fd, s);
  else
    close(fd);
  free(buf);
  return first;
}

/* Fail each allocation of an open and read of path in turn: each must
 * surface as -ENOMEM, or be done without (a grain table the GT cache
 * could not keep is served uncached), never as wrong data or a crash,
 * and leave the extent readable on retry.  want_realloc: a failed
 * realloc (inflate_grain's second read) must be among the -ENOMEMs. */
static void
check_alloc_faults(const char *name, const char *path, bool want_realloc)
{
  size_t len;
  uint8_t *want = oracle(path, &len);
  bool wrong = false, realloc_seen = false;
  uint64_t k, injected = 0, surfaced = 0;

  if (!want)
    return;
  CHECK(alloc_run(name, path, want, len, 0, &wrong) == 0 && !wrong,
        "%s: unfaulted run", name);
  k = alloc_calls;
  for (uint64_t n = 1; n <= k; n++) {
    int r = alloc_run(name, path, want, len, n, &wrong);
    injected += alloc_failed;
    CHECK(!wrong, "%s: allocation %" PRIu64 " failed: wrong data", name, n);
    CHECK(r == -ENOMEM || r == 0, "%s: allocation %" PRIu64 " failed: "
          "returned %d, not -ENOMEM", name, n, r);
    surfaced += r == -ENOMEM;
    realloc_seen |= r == -ENOMEM && alloc_failed_realloc;
  }
  CHECK(injected == k, "%s: %" PRIu64 " of %" PRIu64 " allocations failed",
        name, injected, k);
  CHECK(surfaced > 0, "%s: no failed allocation surfaced", name);
  CHECK(realloc_seen || !want_realloc, "%s: no failed realloc surfaced",
        name);
  printf("  %s: each of its %" PRIu64 " allocations failed in turn: %"
         PRIu64 " surfaced as -ENOMEM (%s), the others were done "
         "without\n", name, k, surfaced,
         realloc_seen ? "a realloc among them" : "mallocs");
  free(want);
}

/* ---- threads --------------------------------------------------------- */

struct reader {
  struct vmdk_sparse *s;
  const uint8_t *want;
  size_t len;
  uint64_t seed;
  int bad;
};

static void *
reader_main(void *arg)
{
  struct reader *rd = arg;
  uint8_t *buf = malloc(3 * GRAIN);
  uint64_t x = rd->seed;

  for (int i = 0; i < THREAD_READS; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    uint64_t off = x % rd->len;
    size_t n = (size_t) ((x >> 20) % (3 * GRAIN) + 1);
    if (n > rd->len - off)
      n = rd->len - off;
    if (vmdk_sparse_read(rd->s, buf, n, off) != 0
        || memcmp(buf, rd->want + off, n) != 0)
      rd->bad++;
  }
  free(buf);
  return NULL;
}

static void
check_threads(const char *name, const char *path)
{
  size_t len;
  uint8_t *want = oracle(path, &len);
  struct vmdk_sparse *s;
  struct reader rd[4];
  pthread_t t[4];
  int fd;

  if (!want)
    return;
  /* 4 grains of cache for 97 grains: constant eviction. */
  CHECK(open_extent(path, 4 * GRAIN, &fd, &s) == 0, "%s: open", name);
  for (int i = 0; i < 4; i++) {
    rd[i] = (struct reader) { s, want, len, 0x1234567u * (uint64_t) (i + 1),
                              0 };
    pthread_create(&t[i], NULL, reader_main, &rd[i]);
  }
  for (int i = 0; i < 4; i++) {
    pthread_join(t[i], NULL);
    CHECK(rd[i].bad == 0, "%s: thread %d: %d bad reads", name, i, rd[i].bad);
  }
  printf("  %s: 4 threads x %d random reads agree\n", name, THREAD_READS);
  close_extent(fd, s);
  free(want);
}

/* ---- one disk's budgets and shared readers (formats/vmdk.c) -------- */

/* n bytes of path at off read in 4 KiB pieces at odd offsets (partial
 * grains: through the decompressed-grain cache) equal want?  pread is the
 * reader's or the disk's. */
static bool
partial_reads_agree(int (*pread)(void *, void *, size_t, uint64_t),
                    void *h, const uint8_t *want, size_t len)
{
  uint8_t buf[4096];

  for (uint64_t off = 512; off + sizeof buf <= len; off += 3 * 4096 + 512)
    if (pread(h, buf, sizeof buf, off) != 0
        || memcmp(buf, want + off, sizeof buf) != 0)
      return false;
  return true;
}

static int
sparse_pread(void *h, void *buf, size_t n, uint64_t off)
{
  return vmdk_sparse_read(h, buf, n, off);
}

static int
disk_pread(void *h, void *buf, size_t n, uint64_t off)
{
  struct fde_disk *d = h;
  return d->format->pread(d, buf, n, off);
}

/* The reader's part of the disk's budgets: a grain directory over the
 * gd_budget left is -E2BIG and takes nothing, one inside it is taken
 * off; a stream given a share of the cache under one grain caches
 * nothing and still reads right, and can be given a bigger share. */
static void
check_budgets(const char *mono, const char *stream)
{
  struct vmdk_sparse_params p = { .path = mono };
  struct vmdk_sparse *s = NULL;
  uint64_t budget = 0;
  struct stat st;
  uint8_t *want;
  size_t len;
  int fd = open(mono, O_RDONLY), r;

  CHECK(fd >= 0 && fstat(fd, &st) == 0, "budgets: open %s", mono);
  p.fd = fd;
  p.length = (uint64_t) st.st_size;
  p.gd_budget = &budget;
  r = vmdk_sparse_open(&p, &s);
  CHECK(r == -E2BIG && s == NULL && budget == 0,
        "budgets: GD over a budget of 0: %d", r);
  budget = 1 << 20;
  r = vmdk_sparse_open(&p, &s);
  CHECK(r == 0 && budget < 1 << 20 && (1 << 20) - budget >= 4
        && budget % 4 == 0, "budgets: GD in 1 MiB: %d, %" PRIu64 " left",
        r, budget);
  close_extent(fd, s);

  if ((want = oracle(stream, &len)) == NULL)
    return;
  CHECK(open_extent(stream, 0, &fd, &s) == 0, "budgets: open stream");
  CHECK(vmdk_sparse_compressed(s), "budgets: stream not compressed");
  CHECK(vmdk_sparse_share_zcache(s, 64 * 1024, 8) == 0
        && partial_reads_agree(sparse_pread, s, want, len),
        "budgets: a stream with no cache (64 KiB / 8) reads wrong");
  CHECK(vmdk_sparse_share_zcache(s, 0, 2) == 0
        && partial_reads_agree(sparse_pread, s, want, len)
        && partial_reads_agree(sparse_pread, s, want, len),
        "budgets: a stream with half the default cache reads wrong");
  close_extent(fd, s);
  free(want);
  puts("  reader budgets: GD budget taken or -E2BIG, cache shares read right");
}

/* Open descriptor desc as a VMDK disk (NULL on failure: -errno in *r). */
static struct fde_disk *
open_disk(const char *desc, uint64_t zcache, int *r)
{
  struct fde_open_params p = {
    .path = desc, .read_only = true, .zcache_bytes = zcache,
    .owner = fde_owner_of(getuid(), getgid()),
  };
  struct fde_disk *d = NULL;

  p.fd = open(desc, O_RDONLY | O_CLOEXEC);
  if (p.fd < 0) {
    *r = -errno;
    return NULL;
  }
  *r = fde_disk_open(&fde_format_vmdk, &p, &d);
  if (*r < 0)
    close(p.fd);
  return *r < 0 ? NULL : d;
}

static unsigned
open_fds(void)
{
  unsigned n = 0;

  for (int fd = 0; fd < 1024; fd++)
    n += fcntl(fd, F_GETFD) != -1;
  return n;
}

/* A descriptor naming a stream file, a sparse file, the stream again, a
 * copy of the stream and the sparse file again: the lines on one file
 * share its reader and fd, the two streams split the cache.  Read in
 * partial grains, it equals qemu-img's conversion; every pread of the
 * open and the read is failed in turn: an error (no wrong data), every
 * file closed again (no fd leaked or closed twice). */
static void
check_shared_disk(const char *mono, const char *stream)
{
  const char *desc = path_of("shared.vmdk"), *copy;
  uint64_t sectors = (DISK + 511) / 512, k, injected = 0;
  unsigned fds = open_fds();
  struct fde_disk *d;
  uint8_t *want;
  size_t len;
  FILE *f;
  int r;

  copy = copy_of(stream, "stream-copy.vmdk");
  f = fopen(desc, "w");
  CHECK(f != NULL, "shared: cannot write %s", desc);
  if (!f)
    return;
  fprintf(f, "# Disk DescriptorFile\nversion=1\nCID=fffffffe\n"
          "parentCID=ffffffff\ncreateType=\"twoGbMaxExtentSparse\"\n");
  for (int i = 0; i < 5; i++)
    fprintf(f, "RW %" PRIu64 " SPARSE \"%s\"\n", sectors,
            strrchr(i == 3 ? copy : i % 2 ? mono : stream, '/') + 1);
  fclose(f);
  if ((want = oracle(desc, &len)) == NULL)
    return;
  d = open_disk(desc, 2 * GRAIN, &r);
  CHECK(d != NULL && d->size == len, "shared: open %d", r);
  if (d) {
    CHECK(partial_reads_agree(disk_pread, d, want, len),
          "shared: partial reads differ from qemu-img");
    CHECK(open_fds() == fds + 4, "shared: %u files open for 3 files",
          open_fds() - fds);
    fde_disk_close(d);
  }
  fde_io_fault_arm(0, 0);
  if ((d = open_disk(desc, 2 * GRAIN, &r)) != NULL) {
    partial_reads_agree(disk_pread, d, want, len);
    fde_disk_close(d);
  }
  k = fde_io_fault_calls();
  fde_io_fault_disarm();
  for (uint64_t i = 0, runs = k < fault_cap() ? k : fault_cap(); i < runs;
       i++) {
    uint64_t n = 1 + i * k / runs;
    bool agree = true;

    fde_io_fault_arm(n, EIO);
    d = open_disk(desc, 2 * GRAIN, &r);
    if (d)
      agree = partial_reads_agree(disk_pread, d, want, len);
    injected += fde_io_fault_injected();
    fde_io_fault_disarm();
    CHECK(d == NULL ? r == -EIO : !agree,
          "shared: fault at call %" PRIu64 ": open %d, reads %s", n, r,
          agree ? "all right" : "failed");
    fde_disk_close(d);
    CHECK(open_fds() == fds, "shared: fault at call %" PRIu64 ": %u files "
          "left open", n, open_fds() - fds);
  }
  printf("  shared readers: agree with qemu-img; %" PRIu64 " faults "
         "injected (of %" PRIu64 " calls), each an error\n", injected, k);
  free(want);
}

int
main(void)
{
  const char *raw, *mono, *zero, *stream, *atend, *cowd;

  setvbuf(stdout, NULL, _IOLBF, 0);

  if (sh("qemu-img --version >/dev/null 2>&1") != 0) {
    puts("SKIP: qemu-img not found");
    return 77;
  }
  if (!mkdtemp(dir)) {
    perror("mkdtemp");
    return 1;
  }
  raw = strdup(path_of("src.raw"));
  make_raw(raw);
  mono = strdup(path_of("mono.vmdk"));
  zero = strdup(path_of("zeroed.vmdk"));
  stream = strdup(path_of("stream.vmdk"));
  atend = strdup(path_of("atend.vmdk"));
  cowd = strdup(path_of("cowd.vmdk"));
  if (sh("qemu-img convert -q -f raw -O vmdk -o subformat=monolithicSparse "
         "'%s' '%s'", raw, mono)
      || sh("qemu-img convert -q -f raw -O vmdk -o subformat=monolithicSparse"
            ",zeroed_grain=on '%s' '%s'", raw, zero)
      || sh("qemu-io -f vmdk -c 'write -z 196608 131072' "
            "-c 'write -z 1048576 4096' '%s' >/dev/null", zero)
      || sh("qemu-img convert -q -f raw -O vmdk -o subformat=streamOptimized "
            "'%s' '%s'", raw, stream)) {
    fprintf(stderr, "FAIL: qemu-img could not make the images\n");
    return 1;
  }
  make_gd_at_end(stream, atend);
  make_cowd(raw, cowd);

  puts("images against qemu-img convert -O raw:");
  check_image("monolithicSparse", mono, GRAIN, true);
  check_image("zeroed_grain", zero, GRAIN, false);
  check_image("streamOptimized", stream, GRAIN, false);
  check_image("stream GD_AT_END", atend, GRAIN, false);
  check_image("cowd", cowd, 8192, false);
  {
    /* the zeroed grains written by qemu-io are ZERO, not UNALLOCATED */
    struct vmdk_sparse *s;
    enum vmdk_grain_kind kind;
    uint64_t run, host;
    int fd;
    CHECK(open_extent(zero, 0, &fd, &s) == 0, "zeroed: open");
    CHECK(vmdk_sparse_lookup(s, 196608, 131072, &run, &kind, &host) == 0
          && kind == VMDK_GRAIN_ZERO && run == 131072,
          "zeroed: grains 3-4 are not one ZERO run");
    close_extent(fd, s);
  }
  {
    /* capacity 0 with a descriptorOffset: the text to the end of the
     * file, descriptorSize ignored (QEMU's vmdk_read_desc) */
    const char *p = copy_of(mono, "embedded.vmdk");
    struct vmdk_sparse *s;
    char *text = NULL;
    int fd, r;

    poke64(p, 12, 0);
    poke64(p, 36, 0);
    CHECK(open_extent(p, 0, &fd, &s) == 0 && vmdk_sparse_capacity(s) == 0,
          "embedded: open");
    r = vmdk_sparse_descriptor(s, 1 << 20, &text);
    CHECK(r == 0 && strstr(text, "createType=\"monolithicSparse\""),
          "embedded: descriptor = %d", r);
    free(text);
    r = vmdk_sparse_descriptor(s, 100, &text);
    CHECK(r == -EFBIG, "embedded: descriptor over 100 bytes = %d", r);
    close_extent(fd, s);
    poke64(p, 28, UINT64_C(1) << 40);
    CHECK(open_extent(p, 0, &fd, &s) == 0, "embedded past the end: open");
    r = vmdk_sparse_descriptor(s, 1 << 20, &text);
    CHECK(r == -EINVAL, "embedded past the end: descriptor = %d", r);
    close_extent(fd, s);
    puts("  embedded descriptor (capacity 0): read as QEMU reads it");
  }
  {
    /* twoGbMaxExtentSparse: its one extent file against the descriptor's
     * oracle (the extent's descriptor area is there, but empty) */
    const char *desc = path_of("split.vmdk");
    const char *ext = path_of("split-s001.vmdk");
    struct vmdk_sparse *s;
    size_t olen;
    uint8_t *want = NULL, *got = malloc(DISK);
    char *text = NULL;
    int fd, r;

    CHECK(sh("qemu-img convert -q -f raw -O vmdk -o "
             "subformat=twoGbMaxExtentSparse '%s' '%s'", raw, desc) == 0,
          "twoGbMaxExtentSparse: qemu-img");
    want = oracle(desc, &olen);
    r = open_extent(ext, 0, &fd, &s);
    CHECK(r == 0 && want && vmdk_sparse_capacity(s) == olen,
          "twoGbMaxExtentSparse: open %d", r);
    if (r == 0 && want) {
      r = vmdk_sparse_read(s, got, olen, 0);
      CHECK(r == 0 && memcmp(got, want, olen) == 0,
            "twoGbMaxExtentSparse: read (%d)", r);
      r = vmdk_sparse_descriptor(s, 1 << 20, &text);
      CHECK(r == 0 && text[0] == '\0', "twoGbMaxExtentSparse: descriptor "
            "= %d", r);
      free(text);
      puts("  twoGbMaxExtentSparse extent: agrees");
    }
    close_extent(fd, s);
    free(got);
    free(want);
  }
  check_hostile(mono, stream, atend);
  check_hostile_cowd(cowd);
  check_lookup_work();
  puts("faults:");
  check_faults("monolithicSparse", mono);
  check_faults("streamOptimized", stream);
  check_faults("cowd", cowd);
  puts("allocation faults:");
  make_big_grain_stream(path_of("big-grain.vmdk"));
  check_image("1 MiB-grain stream", path_of("big-grain.vmdk"), 1u << 20,
              false);
  check_alloc_faults("1 MiB-grain stream", path_of("big-grain.vmdk"), true);
  check_alloc_faults("streamOptimized", stream, false);
  check_alloc_faults("monolithicSparse", mono, false);
  puts("threads:");
  check_threads("streamOptimized", stream);
  check_threads("monolithicSparse", mono);
  puts("one disk's extents:");
  check_budgets(mono, stream);
  check_shared_disk(mono, stream);

  if (!getenv("FDE_VMDK_KEEP"))
    sh("rm -rf '%s'", dir);
  else
    printf("kept %s\n", dir);
  free((void *) raw);
  free((void *) mono);
  free((void *) zero);
  free((void *) stream);
  free((void *) atend);
  free((void *) cowd);
  printf("%s (%d failures)\n", failures ? "FAIL" : "PASS", failures);
  return failures ? 1 : 0;
}
