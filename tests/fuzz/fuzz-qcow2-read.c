/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: libFuzzer harness for the qcow2 read path.
 *
 * The input is a whole image file.  It is opened read-only through
 * fde_disk_open(&fde_format_qcow2, ...) from a memfd; if it opens, a
 * bounded set of reads and block_status calls derived from the input's
 * hash is made (see fuzz-common.h for the invariants checked), then it is
 * closed.  One input in four is also opened at internal snapshot "1".
 *
 * Build and run: make fuzz (see Makefile.am), or by hand
 *   ./tests/fuzz/fuzz-qcow2-read -dict=tests/fuzz/qcow2.dict CORPUS */
#include "fuzz-common.h"

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

/* Open the image in fd read-only (at snapshot, or the active layer) and
 * exercise it.  The fd is consumed. */
static void
run_once(int fd, const char *snapshot, uint64_t *rng)
{
  struct fde_chain chain = { .depth = 0 };
  struct fde_open_params params = {
    .path = fuzz_path,
    .fd = fd,
    .read_only = true,
    .snapshot = snapshot,
    .cache_bytes = FUZZ_CACHE_BYTES,
    .chain = &chain,
  };
  struct fde_disk *disk = NULL;
  int r = fde_disk_open(&fde_format_qcow2, &params, &disk);

  fuzz_check_ret(r, "open");
  if (r < 0) {
    if (disk != NULL)
      fuzz_fail("open failed but set *out");
    close(fd);                  /* still ours after a failed open */
    return;
  }
  if (disk == NULL || disk->format != &fde_format_qcow2 || disk->path == NULL)
    fuzz_fail("open succeeded without a proper handle");
  if (!disk->read_only)
    fuzz_fail("a read-only open gave a writable disk");
  fuzz_exercise_reads(disk, rng, buf, buf2, devnull);
  fde_disk_close(disk);         /* closes fd */
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  uint64_t rng = fuzz_hash(data, size);
  int fds = fuzz_count_fds();

  run_once(fuzz_memfd(data, size), NULL, &rng);
  if ((rng & 3) == 0)
    run_once(fuzz_memfd(data, size), "1", &rng);

  int now = fuzz_count_fds();
  if (now != fds)
    fuzz_fail("file descriptor leak: %d open before, %d after", fds, now);
  return 0;
}
