/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: libFuzzer harness for the qcow2 write path.
 *
 * The input is a whole image file, copied into a memfd and opened with
 * read_only = false.  qcow2 writing is not implemented yet, so today the
 * backend opens every image read-only and this harness only exercises the
 * read side (as fuzz-qcow2-read does).  Once the backend hands back a
 * writable disk, the harness:
 *   1. reads a window of up to 1 MiB (the shadow copy);
 *   2. applies pwrite / zero (punch or not) / flush operations derived from
 *      the input's hash inside that window, mirroring them in the shadow;
 *   3. reads the window back through the same handle and compares;
 *   4. closes, reopens the resulting memfd read-only, reads the window
 *      again and compares, then exercises the reopened image.
 * Any difference aborts.  Bytes whose operation failed are not compared.
 *
 * FDE_FUZZ_FORMAT=raw in the environment tests the harness itself against
 * the raw backend, which can write. */
#include "fuzz-common.h"

#define FUZZ_WRITES 12

static uint8_t *buf, *buf2, *shadow, *known;
static FILE *devnull;
static const struct fde_format *format = &fde_format_qcow2;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
  const char *name = getenv("FDE_FUZZ_FORMAT");

  (void) argc;
  (void) argv;
  if (name != NULL && (format = fde_format_by_name(name)) == NULL)
    fuzz_fail("FDE_FUZZ_FORMAT=%s: unknown format", name);
  fuzz_init_harness(&devnull, &buf, &buf2, &shadow, &known, NULL);
  return 0;
}

static int
open_disk(int fd, bool read_only, struct fde_chain *chain,
          struct fde_disk **disk)
{
  struct fde_open_params params = {
    .path = fuzz_path,
    .fd = fd,
    .read_only = read_only,
    .cache_bytes = FUZZ_CACHE_BYTES,
    .chain = chain,
  };
  int r;

  *disk = NULL;
  chain->depth = 0;
  r = fde_disk_open(format, &params, disk);
  fuzz_check_ret(r, "open");
  if (r == 0 && (*disk == NULL || (*disk)->format != format))
    fuzz_fail("open succeeded without a proper handle");
  if (r == 0 && read_only && !(*disk)->read_only)
    fuzz_fail("a read-only open gave a writable disk");
  return r;
}

/* Compare the known bytes of [0, wlen) of got with the shadow. */
FUZZ_NO_COVERAGE static void
compare_window(const uint8_t *got, uint64_t wstart, size_t wlen,
               const char *when)
{
  for (size_t i = 0; i < wlen; i++)
    if (known[i] && got[i] != shadow[i])
      fuzz_fail("%s: byte at %#llx is %#x, wrote %#x", when,
                (unsigned long long) (wstart + i), got[i], shadow[i]);
}

FUZZ_NO_COVERAGE static void
fill_pattern(uint8_t *p, size_t len, uint64_t seed)
{
  for (size_t k = 0; k < len; k++)
    p[k] = (uint8_t) (seed + k * 7 + (k % 3 != 0));
}

/* The write phase on a writable disk; returns true if the image should
 * reopen cleanly (no operation failed). */
static bool
exercise_writes(struct fde_disk *disk, uint64_t *rng, uint64_t *wstart,
                size_t *wlen)
{
  const struct fde_format *f = disk->format;
  bool clean = true;

  /* The window: a range like the reads pick, at least a few KiB. */
  fuzz_pick_range(rng, disk->size, wstart, wlen);
  if (*wlen == 0 || fuzz_pread(disk, shadow, *wlen, *wstart) < 0)
    return false;               /* unreadable to start with: not compared */
  memset(known, 1, *wlen);

  for (int i = 0; i < FUZZ_WRITES; i++) {
    uint64_t r = fuzz_next(rng);
    uint64_t o = fuzz_next(rng) % *wlen;
    size_t l = 1 + fuzz_next(rng) % (*wlen - o);
    unsigned zflags;
    int ret;

    if ((r & 1) == 0)           /* mostly short, cluster-ish ranges */
      l = l > 4096 ? 1 + l % 4096 : l;
    if ((r & 6) == 0 && o >= 512) {
      o &= ~511ull;
      l = (l + 511) & ~(size_t) 511;
      if (l > *wlen - o)
        l = *wlen - o;
    }
    switch ((r >> 8) % 5) {
    case 0: case 1: case 2:     /* pwrite of a pattern */
      if (f->pwrite == NULL)
        continue;
      fill_pattern(buf, l, r >> 16);
      ret = f->pwrite(disk, buf, l, *wstart + o);
      fuzz_check_ret(ret, "pwrite");
      memcpy(shadow + o, buf, l);
      break;
    case 3:                     /* zero (punch, fast, both or neither) */
      if (f->zero == NULL)
        continue;
      zflags = (r >> 12) & (FDE_ZERO_PUNCH | FDE_ZERO_FAST);
      ret = f->zero(disk, *wstart + o, l, zflags);
      fuzz_check_ret(ret, "zero");
      if (ret == -ENOTSUP && (zflags & FDE_ZERO_FAST))
        continue;               /* refused: nothing may have changed */
      memset(shadow + o, 0, l);
      break;
    default:
      if (f->flush == NULL)
        continue;
      ret = f->flush(disk);
      fuzz_check_ret(ret, "flush");
      if (ret < 0)
        clean = false;
      continue;
    }
    /* A failed write or zero leaves its range undefined. */
    memset(known + o, ret == 0, l);
    if (ret < 0)
      clean = false;
  }

  /* Read back through the same handle. */
  if (fuzz_pread(disk, buf2, *wlen, *wstart) == 0)
    compare_window(buf2, *wstart, *wlen, "read back before close");
  if (f->flush != NULL) {
    int ret = f->flush(disk);
    fuzz_check_ret(ret, "flush");
    if (ret < 0)
      clean = false;
  }
  fuzz_exercise_reads(disk, rng, buf, buf2, devnull);
  return clean;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  uint64_t rng = fuzz_hash(data, size);
  int fds = fuzz_count_fds();
  struct fde_chain chain;
  struct fde_disk *disk;
  int fd = fuzz_memfd(data, size);
  int keep = dup(fd);           /* survives the backend closing fd */

  if (keep == -1)
    fuzz_fail("dup: %s", strerror(errno));
  if (open_disk(fd, false, &chain, &disk) < 0) {
    close(fd);
    close(keep);
    goto out;
  }

  if (disk->read_only || disk->format->pwrite == NULL) {
    /* Today's qcow2: nothing to write, exercise the reads. */
    fuzz_exercise_reads(disk, &rng, buf, buf2, devnull);
    fde_disk_close(disk);
    close(keep);
    goto out;
  }

  uint64_t wstart = 0;
  size_t wlen = 0;
  bool clean = exercise_writes(disk, &rng, &wstart, &wlen);
  fde_disk_close(disk);

  /* Reopen what the writer left, read-only, from a fresh descriptor. */
  int fd2 = dup(keep);
  if (fd2 == -1)
    fuzz_fail("dup: %s", strerror(errno));
  close(keep);
  if (open_disk(fd2, true, &chain, &disk) < 0) {
    close(fd2);
    if (clean && wlen > 0)
      fuzz_fail("the image no longer opens after a clean write session");
    goto out;
  }
  if (wlen > 0 && wstart + wlen <= disk->size
      && fuzz_pread(disk, buf2, wlen, wstart) == 0)
    compare_window(buf2, wstart, wlen, "read back after reopen");
  fuzz_exercise_reads(disk, &rng, buf, buf2, devnull);
  fde_disk_close(disk);

out:;
  int now = fuzz_count_fds();
  if (now != fds)
    fuzz_fail("file descriptor leak: %d open before, %d after", fds, now);
  return 0;
}
