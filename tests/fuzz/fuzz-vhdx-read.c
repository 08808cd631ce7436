/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: libFuzzer harness for the VHDX reader (formats/vhdx.c,
 * formats/vhdx-log.c).
 *
 * The input is a whole image file, opened read-only through
 * fde_disk_open(&fde_format_vhdx, ...) from a memfd; if it opens, a
 * bounded set of reads, maps and block_status calls derived from the
 * input's hash is made (see fuzz-common.h for the invariants checked),
 * then it is closed.  The log scan and its in-memory replay run at open.
 *
 * Holes: a VHDX puts its log, metadata, BAT and blocks at MiB offsets, so
 * an input may end in a list of holes to put back (fuzz_holes_memfd in
 * fuzz-common.h: records of (at, len), then "FDEHOLES" and a count; 64
 * MiB of holes at most).  make-corpus.sh writes qemu-img's images that
 * way.
 *
 * Differencing disks: the sandbox (fuzz-common.h) also holds base.vhdx, a
 * dynamic VHDX of 1 MiB (one 1 MiB block, byte i = i * 13 + 5, 512-byte
 * sectors) whose DataWriteGuid is the bytes "FDE-FUZZ-BASEVHX"
 * ({2d454446-5546-5a5a-2d42-415345564858}); make-corpus.sh's differencing
 * seeds name it.
 *
 * Build and run: make fuzz (see Makefile.am), or by hand
 *   ./tests/fuzz/fuzz-vhdx-read -dict=tests/fuzz/vhdx.dict CORPUS */
#include "fuzz-common.h"
#include "vhdx.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
put_le(uint8_t *p, uint64_t v, int n)
{
  for (int i = 0; i < n; i++)
    p[i] = (uint8_t) (v >> (8 * i));
}

static void
remove_base_vhdx(void)
{
  char name[64];

  snprintf(name, sizeof name, "%s/base.vhdx", fuzz_sandbox);
  unlink(name);
}

/* base.vhdx (see the top of the file): headers at 64 and 128 KiB (no
 * log), region tables at 192 and 256 KiB, metadata at 1 MiB, the BAT at
 * 2 MiB, the block at 3 MiB. */
static void
make_base_vhdx(void)
{
  static const uint8_t bat_guid[16] = {
    0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42,
    0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08 };
  static const uint8_t meta_guid[16] = {
    0x06, 0xa2, 0x7c, 0x8b, 0x90, 0x47, 0x9a, 0x4b,
    0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e };
  static const uint8_t items[5][16] = {
    { 0x37, 0x67, 0xa1, 0xca, 0x36, 0xfa, 0x43, 0x4d,     /* parameters */
      0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b },
    { 0x24, 0x42, 0xa5, 0x2f, 0x1b, 0xcd, 0x76, 0x48,     /* size */
      0xb2, 0x11, 0x5d, 0xbe, 0xd8, 0x3b, 0xf4, 0xb8 },
    { 0xab, 0x12, 0xca, 0xbe, 0xe6, 0xb2, 0x23, 0x45,     /* page 83 */
      0x93, 0xef, 0xc3, 0x09, 0xe0, 0x00, 0xc7, 0x46 },
    { 0x1d, 0xbf, 0x41, 0x81, 0x6f, 0xa9, 0x09, 0x47,     /* logical */
      0xba, 0x47, 0xf2, 0x33, 0xa8, 0xfa, 0xab, 0x5f },
    { 0xc7, 0x48, 0xa3, 0xcd, 0x5d, 0x44, 0x71, 0x44,     /* physical */
      0x9c, 0xc9, 0xe9, 0x88, 0x52, 0x51, 0xc5, 0x56 },
  };
  const uint32_t mib = 1u << 20;
  uint8_t *img = calloc(1, 4 * (size_t) mib), *m = img + mib;

  if (img == NULL)
    fuzz_fail("out of memory");
  memcpy(img, "vhdxfile", 8);
  for (int h = 1; h <= 2; h++) {
    uint8_t *p = img + h * (64u << 10);
    memcpy(p, "head", 4);
    put_le(p + 8, (uint64_t) h, 8);
    memcpy(p + 32, "FDE-FUZZ-BASEVHX", 16);     /* DataWriteGuid */
    put_le(p + 66, 1, 2);                       /* version */
    put_le(p + 72, mib, 8);                     /* log offset; no log */
    put_le(p + 4, fde_vhdx_crc32c(p, 4096, 4), 4);
  }
  for (int t = 0; t < 2; t++) {
    uint8_t *p = img + (192u << 10) + t * (64u << 10);
    memcpy(p, "regi", 4);
    put_le(p + 8, 2, 4);
    memcpy(p + 16, bat_guid, 16);
    put_le(p + 32, 2 * (uint64_t) mib, 8);
    put_le(p + 40, mib, 4);
    put_le(p + 44, 1, 4);
    memcpy(p + 48, meta_guid, 16);
    put_le(p + 64, mib, 8);
    put_le(p + 72, mib, 4);
    put_le(p + 76, 1, 4);
    put_le(p + 4, fde_vhdx_crc32c(p, 64u << 10, 4), 4);
  }
  memcpy(m, "metadata", 8);
  put_le(m + 10, 5, 2);
  for (int i = 0; i < 5; i++) {
    memcpy(m + 32 + 32 * i, items[i], 16);
    put_le(m + 48 + 32 * i, (64u << 10) + 4096 * (uint32_t) i, 4);
    put_le(m + 52 + 32 * i, i == 0 || i == 1 ? 8 : i == 2 ? 16 : 4, 4);
    put_le(m + 56 + 32 * i, 4, 4);              /* required */
  }
  put_le(m + (64u << 10), mib, 4);              /* block size */
  put_le(m + (64u << 10) + 4096, mib, 8);       /* virtual size */
  memcpy(m + (64u << 10) + 8192, "FDE-FUZZ-PAGE-83", 16);
  put_le(m + (64u << 10) + 3 * 4096, 512, 4);
  put_le(m + (64u << 10) + 4 * 4096, 512, 4);
  put_le(img + 2 * (size_t) mib, 3 * (uint64_t) mib | 6, 8);
  for (size_t i = 0; i < mib; i++)
    img[3 * (size_t) mib + i] = (uint8_t) (i * 13 + 5);
  fuzz_write_file("base.vhdx", img, 4 * (size_t) mib);
  free(img);
  atexit(remove_base_vhdx);   /* runs before fuzz_remove_sandbox */
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
  (void) argc;
  (void) argv;
  fuzz_init_target();
  make_base_vhdx();
  return 0;
}

static const struct fuzz_target vhdx_target = {
  .format = &fde_format_vhdx,
  .whole_sectors = true,
  .no_write_members = true,
  .tail_probe = true,
  .image = fuzz_holes_memfd,
};

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  return fuzz_run_input(&vhdx_target, data, size);
}
