/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: libFuzzer harness for the VMDK reader (formats/vmdk.c,
 * vmdk-desc.c and vmdk-sparse.c).
 *
 * The input is a whole image file: a descriptor file or a sparse file
 * (KDMV, COWD), opened read-only through fde_disk_open(&fde_format_vmdk)
 * from a memfd named sandbox/fuzz.qcow2; if it opens, a bounded set of
 * reads, maps and block_status calls derived from the input's hash is
 * made (see fuzz-common.h for the invariants checked), then it is closed.
 * The probe sees every input too.  Inputs whose first byte is 'O' are
 * opened a second time as an OVA member would be: from byte 512 of the
 * file to its end (params->file_offset and file_length).
 *
 * Holes: a sparse VMDK's grains start at 64 KiB and its grain tables
 * are mostly zeros, so an input may end in a list of holes to put back
 * (fuzz_holes_memfd in fuzz-common.h); make-corpus.sh writes qemu-img's
 * images that way, which keeps inputs, and each execution, small.
 *
 * The sandbox (fuzz-common.h: base.raw, base.qcow2) also holds, for
 * descriptors to name (make-corpus.sh's seeds do):
 *   ext.vmdk     a hosted sparse extent of 64 KiB, 4 KiB grains: grain 0
 *                byte i = i*7+1, grain 3 byte i = i*5+3, grain 5 a
 *                zeroed-grain entry, the rest unallocated;
 *   parent.vmdk  a monolithicFlat descriptor, CID=fdefdefd, whose extent
 *                is base.raw (64 KiB): a delta's parent.
 *
 * Build and run: make fuzz (see Makefile.am), or by hand
 *   ./tests/fuzz/fuzz-vmdk-read -dict=tests/fuzz/vmdk.dict CORPUS */
#include "fuzz-common.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
put_le32(uint8_t *p, uint32_t v)
{
  for (int i = 0; i < 4; i++)
    p[i] = (uint8_t) (v >> 8 * i);
}

static void
put_le64(uint8_t *p, uint64_t v)
{
  for (int i = 0; i < 8; i++)
    p[i] = (uint8_t) (v >> 8 * i);
}

static void
remove_files(void)
{
  static const char *const names[] = { "ext.vmdk", "parent.vmdk" };
  char name[64];

  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    snprintf(name, sizeof name, "%s/%s", fuzz_sandbox, names[i]);
    unlink(name);
  }
}

/* ext.vmdk (see the top of the file): header, GD at sector 1, GT at
 * sectors 2-5, grains from sector 8. */
static void
make_ext_vmdk(void)
{
  static uint8_t img[(8 + 16) * 512];
  uint8_t *h = img, *gd = img + 512, *gt = img + 1024;

  memcpy(h, "KDMV", 4);
  put_le32(h + 4, 1);                           /* version */
  put_le32(h + 8, 1 | 4);                       /* NL check, zeroed grain */
  put_le64(h + 12, 128);                        /* capacity: 64 KiB */
  put_le64(h + 20, 8);                          /* granularity: 4 KiB */
  put_le32(h + 44, 512);                        /* GTEs per GT */
  put_le64(h + 56, 1);                          /* GD */
  put_le64(h + 64, 8);                          /* overhead */
  memcpy(h + 73, "\n \r\n", 4);
  put_le32(gd, 2);                              /* GT at sector 2 */
  put_le32(gt + 0, 8);                          /* grain 0 */
  put_le32(gt + 12, 16);                        /* grain 3 */
  put_le32(gt + 20, 1);                         /* grain 5: zeroed */
  for (size_t i = 0; i < 4096; i++) {
    img[8 * 512 + i] = (uint8_t) (i * 7 + 1);
    img[16 * 512 + i] = (uint8_t) (i * 5 + 3);
  }
  fuzz_write_file("ext.vmdk", img, sizeof img);
}

static void
make_parent_vmdk(void)
{
  static const char text[] =
    "# Disk DescriptorFile\nversion=1\nCID=fdefdefd\nparentCID=ffffffff\n"
    "createType=\"monolithicFlat\"\n\nRW 128 FLAT \"base.raw\" 0\n";

  fuzz_write_file("parent.vmdk", (const uint8_t *) text, sizeof text - 1);
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
  (void) argc;
  (void) argv;
  fuzz_init_target();
  make_ext_vmdk();
  make_parent_vmdk();
  atexit(remove_files);         /* runs before fuzz_remove_sandbox */
  return 0;
}

/* One open of the whole file; an input starting with 'O' is opened again
 * as an OVA member from its byte 512 to its end. */
static int
vmdk_opens(const uint8_t *data, size_t size, uint64_t *rng,
           struct fuzz_open *opens)
{
  (void) rng;
  if (size <= 512 || data[0] != 'O')
    return 1;
  opens[1].file_offset = 512;
  opens[1].file_length = size - 512;
  return 2;
}

static const struct fuzz_target vmdk_target = {
  .format = &fde_format_vmdk,
  .whole_sectors = true,
  .image = fuzz_holes_memfd,
  .no_write_members = true,
  .opens = vmdk_opens,
};

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  return fuzz_run_input(&vmdk_target, data, size);
}
