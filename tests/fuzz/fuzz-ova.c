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
 * probe sees every input too.  An input may end in a list of holes to
 * put back (fuzz_holes_memfd in fuzz-common.h): tar's zero padding and a
 * streamOptimized disk's grain tables cut out of make-corpus.sh's seeds.
 *
 * Build and run: make fuzz (see Makefile.am), or by hand
 *   ./tests/fuzz/fuzz-ova -dict=tests/fuzz/ova.dict CORPUS */
#include "fuzz-common.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* One open, of --disk=0..3. */
static int
ova_opens(const uint8_t *data, size_t size, uint64_t *rng,
          struct fuzz_open *opens)
{
  (void) data;
  (void) size;
  opens[0].disk = (unsigned) (fuzz_next(rng) % 4);
  return 1;
}

/* The disk served is the OVA's wrapper (disk->format named "ova") over
 * the member's backend; its size is the member's (raw: any size). */
static const struct fuzz_target ova_target = {
  .format = &fde_format_ova,
  .image = fuzz_holes_memfd,
  .no_write_members = true,
  .opens = ova_opens,
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
  return fuzz_run_input(&ova_target, data, size);
}
