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

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The active layer; one input in four is opened again at snapshot "1". */
static int
qcow2_opens(const uint8_t *data, size_t size, uint64_t *rng,
            struct fuzz_open *opens)
{
  (void) data;
  (void) size;
  opens[1].snapshot = "1";
  return (fuzz_next(rng) & 3) == 0 ? 2 : 1;
}

static const struct fuzz_target qcow2_target = {
  .format = &fde_format_qcow2,
  .cache_bytes = FUZZ_CACHE_BYTES,
  .opens = qcow2_opens,
};

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
  (void) argc;
  (void) argv;
  fuzz_init_target();
  return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  return fuzz_run_input(&qcow2_target, data, size);
}
