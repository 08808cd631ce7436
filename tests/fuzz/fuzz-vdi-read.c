/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: libFuzzer harness for the VDI reader (formats/vdi.c).
 *
 * The input is a whole image file, opened read-only through
 * fde_disk_open(&fde_format_vdi, ...) from a memfd; if it opens, a
 * bounded set of reads, maps and block_status calls derived from the
 * input's hash is made (see fuzz-common.h for the invariants checked),
 * then it is closed.  One input in eight is also opened asking for a
 * writable disk, which must give a read-only one (the format has no
 * can_write: fde_disk_open opens it read-only).
 *
 * VDI data blocks are 1 MiB, more than -max_len allows, so an input that
 * starts with "FDESPARS" is a sparse file instead, in fuzz-partition.c's
 * layout: records of an offset (8 bytes, little-endian, taken modulo
 * SPARSE_SPAN), a length (4 bytes) and that many bytes, written over
 * zeros in order; the file ends where the furthest record does (a record
 * of length 0 sets the length).  The seeds of make-corpus.sh are qemu-img
 * images written so, their runs of zeros left out.
 *
 * Build and run: make fuzz (see Makefile.am), or by hand
 *   ./tests/fuzz/fuzz-vdi-read -dict=tests/fuzz/vdi.dict CORPUS */
#include "fuzz-common.h"

#define SPARSE_MAGIC "FDESPARS"
#define SPARSE_SPAN (64ull << 20)   /* offsets wrap: files stay small */

static uint8_t *buf, *buf2;
static FILE *devnull;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
  (void) argc;
  (void) argv;
  fuzz_init_harness(&devnull, &buf, &buf2, NULL);
  return 0;
}

/* Little-endian integer of n bytes at p. */
static uint64_t
get_le(const uint8_t *p, int n)
{
  uint64_t v = 0;

  while (n-- > 0)
    v = v << 8 | p[n];
  return v;
}

/* The image file for an input: the input itself, or the file a sparse
 * input describes (a memfd with holes). */
static int
image_memfd(const uint8_t *data, size_t size)
{
  size_t pos = sizeof SPARSE_MAGIC - 1;
  uint64_t end = 0;
  int fd;

  if (size < pos || memcmp(data, SPARSE_MAGIC, pos) != 0)
    return fuzz_memfd(data, size);
  fd = fuzz_memfd(NULL, 0);
  while (size - pos >= 12) {
    uint64_t off = get_le(data + pos, 8) % SPARSE_SPAN;
    uint64_t len = get_le(data + pos + 8, 4);
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

/* Open the image in fd (consumed), asking for a read-only disk or not,
 * and exercise it: the disk must be read-only either way. */
static void
run_once(int fd, bool read_only, uint64_t *rng)
{
  struct fde_chain chain = { .depth = 0 };
  struct fde_open_params params = {
    .path = fuzz_path,
    .fd = fd,
    .read_only = read_only,
    .chain = &chain,
  };
  struct fde_disk *disk = NULL;
  int r = fde_disk_open(&fde_format_vdi, &params, &disk);

  fuzz_check_ret(r, "open");
  if (r < 0) {
    if (disk != NULL)
      fuzz_fail("open failed but set *out");
    close(fd);                  /* still ours after a failed open */
    return;
  }
  if (disk == NULL || disk->format != &fde_format_vdi || disk->path == NULL)
    fuzz_fail("open succeeded without a proper handle");
  if (!disk->read_only || fde_disk_can_write(disk) || disk->size % 512 != 0)
    fuzz_fail("open gave a writable disk or a size of %llu bytes",
              (unsigned long long) disk->size);
  fuzz_exercise_reads(disk, rng, buf, buf2, devnull);
  fde_disk_close(disk);         /* closes fd */
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  uint64_t rng = fuzz_hash(data, size);
  int fds = fuzz_count_fds();

  (void) fde_format_vdi.probe(data, size);
  run_once(image_memfd(data, size), true, &rng);
  if ((rng & 7) == 0)
    run_once(image_memfd(data, size), false, &rng);

  int now = fuzz_count_fds();
  if (now != fds)
    fuzz_fail("file descriptor leak: %d open before, %d after", fds, now);
  return 0;
}
