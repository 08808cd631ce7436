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
 * input may end in a list of holes to put back: up to 16 records of two
 * little-endian u32 (at, len), then "FDEHOLES" and a little-endian u32
 * count.  The records and the trailer are cut off and len zero bytes are
 * inserted at offset at of the file (offsets of the file being built, in
 * increasing order; a record that goes backwards is ignored; 64 MiB of
 * holes at most).  make-corpus.sh writes qemu-img's images that way.
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

#define HOLES_MAGIC "FDEHOLES"
#define HOLES_TRAILER 12
#define HOLES_MAX 16
#define HOLES_BYTES_MAX (64u << 20)

static uint8_t *buf, *buf2;
static FILE *devnull;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint32_t
get_le32(const uint8_t *p)
{
  return (uint32_t) p[0] | (uint32_t) p[1] << 8 | (uint32_t) p[2] << 16
         | (uint32_t) p[3] << 24;
}

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
  fuzz_init_harness(&devnull, &buf, &buf2, NULL);
  make_base_vhd();
  return 0;
}

/* The image file for an input: its bytes with the holes put back. */
static int
image_memfd(const uint8_t *data, size_t size)
{
  uint32_t n = 0, holes = 0;
  uint64_t out = 0;
  const uint8_t *rec;
  int fd;

  if (size >= HOLES_TRAILER
      && memcmp(data + size - HOLES_TRAILER, HOLES_MAGIC, 8) == 0) {
    n = get_le32(data + size - 4);
    if (n > HOLES_MAX || size - HOLES_TRAILER < 8 * (size_t) n)
      n = 0;
    else
      size -= HOLES_TRAILER + 8 * (size_t) n;
  }
  rec = data + size;
  fd = fuzz_memfd(NULL, 0);
  for (uint32_t i = 0; i < n; i++) {
    uint64_t at = get_le32(rec + 8 * i), len = get_le32(rec + 8 * i + 4);
    size_t piece;
    if (at < out || len > HOLES_BYTES_MAX - holes)
      continue;
    piece = (size_t) (at - out < size ? at - out : size);
    if (piece > 0 && fde_pwrite_full(fd, data, piece, out) < 0)
      fuzz_fail("writing the memfd failed");
    data += piece;
    size -= piece;
    out += piece + len;
    holes += (uint32_t) len;
  }
  if (size > 0 && fde_pwrite_full(fd, data, size, out) < 0)
    fuzz_fail("writing the memfd failed");
  if (fde_io_ftruncate(fd, out + size) < 0)
    fuzz_fail("cannot size the memfd");
  return fd;
}

/* Open the image in fd (consumed) read-only and exercise it. */
static void
run_once(int fd, uint64_t *rng)
{
  struct fde_chain chain = { .depth = 0 };
  struct fde_open_params params = {
    .path = fuzz_path,
    .fd = fd,
    .read_only = true,
    .chain = &chain,
  };
  static const uint8_t no_head[1];
  struct fde_disk *disk = NULL;
  int r;

  (void) fde_format_identify(no_head, 0, fd);  /* the fixed-footer probe */
  r = fde_disk_open(&fde_format_vpc, &params, &disk);
  fuzz_check_ret(r, "open");
  if (r < 0) {
    if (disk != NULL)
      fuzz_fail("open failed but set *out");
    close(fd);                  /* still ours after a failed open */
    return;
  }
  if (disk == NULL || disk->format != &fde_format_vpc || disk->path == NULL)
    fuzz_fail("open succeeded without a proper handle");
  if (!disk->read_only || fde_disk_can_write(disk) || disk->size % 512 != 0)
    fuzz_fail("open gave a writable disk or a size of %llu bytes",
              (unsigned long long) disk->size);
  fuzz_exercise_reads(disk, rng, buf, buf2, devnull);
  fde_disk_close(disk);         /* closes fd and the parent */
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  uint64_t rng = fuzz_hash(data, size);
  int fds = fuzz_count_fds();

  (void) fde_format_vpc.probe(data, size);
  run_once(image_memfd(data, size), &rng);

  int now = fuzz_count_fds();
  if (now != fds)
    fuzz_fail("file descriptor leak: %d open before, %d after", fds, now);
  return 0;
}
