/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: libFuzzer harness for OVA appliances (formats/ova.c):
 * the tar walk (ustar, GNU, pax headers, long names, checksums, sizes),
 * the OVF descriptor read with libxml2, and the disks opened on windows
 * of the archive (raw, or a VMDK where that format is served).
 *
 * The input is a whole OVA file, opened read-only through
 * fde_disk_open(&fde_format_ova, ...) from a memfd, with --disk=N for N
 * of 0 (the first disk) to 3 chosen by the input's hash; if it opens, a
 * bounded set of reads, maps and block_status calls derived from the
 * hash is made (see fuzz-common.h for the invariants checked), describe
 * runs (it opens every other disk for its size), then it is closed.  The
 * probe sees every input too.
 *
 * Build and run: make fuzz (see Makefile.am), or by hand
 *   ./tests/fuzz/fuzz-ova -dict=tests/fuzz/ova.dict CORPUS */
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

/* Open the OVA in fd (consumed) read-only and exercise it. */
static void
run_once(int fd, uint64_t *rng)
{
  struct fde_chain chain = { .depth = 0 };
  struct fde_open_params params = {
    .path = fuzz_path,
    .fd = fd,
    .read_only = true,
    .chain = &chain,
    .disk = (unsigned) (fuzz_next(rng) % 4),
  };
  struct fde_disk *disk = NULL;
  int r;

  r = fde_disk_open(&fde_format_ova, &params, &disk);
  fuzz_check_ret(r, "open");
  if (r < 0) {
    if (disk != NULL)
      fuzz_fail("open failed but set *out");
    close(fd);                  /* still ours after a failed open */
    return;
  }
  if (disk == NULL || strcmp(disk->format->name, "ova") != 0
      || disk->path == NULL)
    fuzz_fail("open succeeded without a proper handle");
  if (!disk->read_only || fde_disk_can_write(disk)
      || disk->format->pwrite != NULL || disk->format->zero != NULL)
    fuzz_fail("open gave a writable disk");
  fuzz_exercise_reads(disk, rng, buf, buf2, devnull);
  fde_disk_close(disk);         /* closes fd and the inner disk */
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  uint64_t rng = fuzz_hash(data, size);
  int fds = fuzz_count_fds();

  (void) fde_format_ova.probe(data, size);
  run_once(fuzz_memfd(data, size), &rng);

  int now = fuzz_count_fds();
  if (now != fds)
    fuzz_fail("file descriptor leak: %d open before, %d after", fds, now);
  return 0;
}
