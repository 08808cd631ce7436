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
 * starts with "FDESPARS" is a sparse file instead (fuzz_sparse_memfd in
 * fuzz-common.h, fuzz-partition.c's layout).  The seeds of make-corpus.sh
 * are qemu-img images written so, their runs of zeros left out.
 *
 * Build and run: make fuzz (see Makefile.am), or by hand
 *   ./tests/fuzz/fuzz-vdi-read -dict=tests/fuzz/vdi.dict CORPUS */
#include "fuzz-common.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* One read-only open; one input in eight is opened again asking for a
 * writable disk. */
static int
vdi_opens(const uint8_t *data, size_t size, uint64_t *rng,
          struct fuzz_open *opens)
{
  (void) data;
  (void) size;
  opens[1].writable = true;
  return (fuzz_next(rng) & 7) == 0 ? 2 : 1;
}

static const struct fuzz_target vdi_target = {
  .format = &fde_format_vdi,
  .whole_sectors = true,
  .no_write_members = true,
  .image = fuzz_sparse_memfd,
  .opens = vdi_opens,
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
  return fuzz_run_input(&vdi_target, data, size);
}
