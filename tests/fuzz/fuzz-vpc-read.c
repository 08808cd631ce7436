/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: libFuzzer harness for the VHD reader (formats/vpc.c).
 *
 * The input is a whole image file, opened read-only through
 * fde_disk_open(&fde_format_vpc, ...) from a memfd; if it opens, a
 * bounded set of reads, maps and block_status calls derived from the
 * input's hash is made (see fuzz-common.h for the invariants checked),
 * then it is closed.  The fixed-VHD probe (fde_vpc_fixed_footer, through
 * the table's fde_format_identify) and the head probe see every input
 * too.
 *
 * Holes: QEMU's dynamic VHDs have 2 MiB blocks, more than -max_len, so an
 * input may end in a list of holes to put back (fuzz_holes_memfd in
 * fuzz-common.h: records of (at, len), then "FDEHOLES" and a count).
 * make-corpus.sh writes qemu-img's images that way.
 *
 * Differencing disks: the sandbox (fuzz-common.h) also holds base.vhd, a
 * fixed VHD of 64 KiB (byte i = i * 13 + 5) with unique id
 * "FDE-FUZZ-BASEVHD", creator "win " (sized by current_size); the seeds'
 * differencing disks name it (make-corpus.sh builds the same file to take
 * its unique id).
 *
 * Build and run: make fuzz (see Makefile.am), or by hand
 *   ./tests/fuzz/fuzz-vpc-read -dict=tests/fuzz/vpc.dict CORPUS */
#include "fuzz-common.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
remove_base_vhd(void)
{
  char name[64];

  snprintf(name, sizeof name, "%s/base.vhd", fuzz_sandbox);
  unlink(name);
}

/* base.vhd (see the top of the file). */
static void
make_base_vhd(void)
{
  static uint8_t img[65536 + 512];
  uint8_t *f = img + 65536;
  uint32_t sum = 0;

  for (size_t i = 0; i < 65536; i++)
    img[i] = (uint8_t) (i * 13 + 5);
  memcpy(f, "conectix", 8);
  fuzz_be32(f + 8, 2);                          /* features */
  fuzz_be32(f + 12, 0x10000);                   /* version */
  fuzz_be64(f + 16, ~0ull);                     /* data offset: none */
  memcpy(f + 28, "win ", 4);                    /* creator */
  fuzz_be32(f + 32, 0xa0000);
  memcpy(f + 36, "Wi2k", 4);
  fuzz_be64(f + 40, 65536);                     /* original size */
  fuzz_be64(f + 48, 65536);                     /* current size */
  f[56] = 0;                                    /* 4 cylinders, */
  f[57] = 4;
  f[58] = 4;                                    /* 4 heads, */
  f[59] = 8;                                    /* 8 sectors */
  fuzz_be32(f + 60, 2);                         /* fixed */
  memcpy(f + 68, "FDE-FUZZ-BASEVHD", 16);
  for (size_t i = 0; i < 512; i++)
    sum += f[i];
  fuzz_be32(f + 64, ~sum);
  fuzz_write_file("base.vhd", img, sizeof img);
  atexit(remove_base_vhd);    /* runs before fuzz_remove_sandbox */
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
  (void) argc;
  (void) argv;
  fuzz_init_target();
  make_base_vhd();
  return 0;
}

static const struct fuzz_target vpc_target = {
  .format = &fde_format_vpc,
  .whole_sectors = true,
  .no_write_members = true,
  .tail_probe = true,
  .image = fuzz_holes_memfd,
};

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  return fuzz_run_input(&vpc_target, data, size);
}
