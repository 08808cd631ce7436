/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: libFuzzer harness for the layer that turns a
 * partition table, as libblkid reads it, into a window on the disk
 * (formats/partition.c).
 *
 * The input is the disk itself (an MBR, EBR chains, GPT headers and
 * entries, any other label libblkid reads), followed by a virtual size
 * derived from its hash (zeros past the input), so that backup GPTs and
 * entries past the end are reached.  The disk is held in memory by a
 * backend that aborts on any call outside it; each partition number asked
 * for either is refused (a negative errno, one message) or gives a window
 * inside the disk, which is then read, zeroed and asked for its status. */
#include "fuzz-common.h"
#include "layer.h"

int LLVMFuzzerInitialize(int *argc, char **argv[]);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct mem_disk {
  struct fde_disk disk;
  const uint8_t *data;
  size_t len;                   /* input bytes; zeros from there to size */
};

#define MEM(d) ((struct mem_disk *) (d))

static void
in_disk(struct fde_disk *d, uint64_t off, uint64_t len, const char *what)
{
  if (off > d->size || len > d->size - off)
    fuzz_fail("%s outside the disk: %llu+%llu of %llu", what,
              (unsigned long long) off, (unsigned long long) len,
              (unsigned long long) d->size);
}

static int
mem_pread(struct fde_disk *d, void *buf, size_t len, uint64_t off)
{
  struct mem_disk *m = MEM(d);
  size_t have = off < m->len ? m->len - (size_t) off : 0;

  in_disk(d, off, len, "pread");
  if (have > len)
    have = len;
  memcpy(buf, m->data + off, have);
  memset((uint8_t *) buf + have, 0, len - have);
  return 0;
}

static int
mem_zero(struct fde_disk *d, uint64_t off, uint64_t len, bool punch)
{
  (void) punch;
  in_disk(d, off, len, "zero");
  return 0;                     /* the input stays as it is */
}

static int
mem_block_status(struct fde_disk *d, uint64_t off, uint64_t len,
                 uint64_t *run, unsigned *status)
{
  in_disk(d, off, len, "block_status");
  *run = len;
  *status = off < MEM(d)->len ? FDE_BS_DATA : FDE_BS_ZERO;
  if (off < MEM(d)->len && MEM(d)->len - off < len)
    *run = MEM(d)->len - off;
  return 0;
}

static int
mem_flush(struct fde_disk *d)
{
  (void) d;
  return 0;
}

static uint64_t
mem_allocated(struct fde_disk *d)
{
  return MEM(d)->len;
}

static void
mem_describe(struct fde_disk *d, FILE *out)
{
  (void) d;
  (void) out;
}

static void
mem_close(struct fde_disk *d)
{
  (void) d;                     /* on the stack */
}

static const struct fde_format mem_format = {
  .name = "mem", .pread = mem_pread, .zero = mem_zero, .flush = mem_flush,
  .block_status = mem_block_status, .allocated_bytes = mem_allocated,
  .describe = mem_describe, .close = mem_close,
};

static uint8_t buf[4096];

int
LLVMFuzzerInitialize(int *argc, char **argv[])
{
  int fd = fcntl(2, F_DUPFD_CLOEXEC, 3);

  (void) argc;
  (void) argv;
  if (fd != -1)
    fuzz_err_fd = fd;
  return 0;
}

/* Use the window on partition n: reads at both ends, a zeroing, status. */
static void
use_window(struct mem_disk *m, unsigned n, uint64_t start, uint64_t size)
{
  struct fde_disk *w;
  uint64_t run, len = size < sizeof buf ? size : sizeof buf;
  unsigned status;

  if (size == 0 || start > m->disk.size || size > m->disk.size - start)
    fuzz_fail("partition %u: window %llu+%llu outside the disk of %llu", n,
              (unsigned long long) start, (unsigned long long) size,
              (unsigned long long) m->disk.size);
  if (fde_partition_open(&m->disk, n, start, size, &w) != 0)
    fuzz_fail("partition %u: a checked window was refused", n);
  if (w->size != size)
    fuzz_fail("partition %u: window of the wrong size", n);
  fuzz_check_ret(w->format->pread(w, buf, (size_t) len, 0), "pread");
  fuzz_check_ret(w->format->pread(w, buf, (size_t) len, size - len), "pread");
  fuzz_check_ret(w->format->zero(w, size - len, len, true), "zero");
  fuzz_check_ret(w->format->block_status(w, 0, size, &run, &status),
                 "block_status");
  if (run == 0 || run > size)
    fuzz_fail("partition %u: block_status run %llu of %llu", n,
              (unsigned long long) run, (unsigned long long) size);
  (void) w->format->allocated_bytes(w);
  fde_disk_close(w);            /* closes m too: a no-op */
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  uint64_t rng = fuzz_hash(data, size);
  static const unsigned numbers[] = { 1, 2, 3, 4, 5, 6, 7, 9, 128 };
  struct mem_disk m = {
    .disk = { .format = &mem_format, .read_only = true, .path = "fuzz" },
    .data = data, .len = size,
  };
  int fds = fuzz_count_fds();

  /* the input, sometimes followed by zeros up to 64 MiB */
  m.disk.size = size + ((rng & 1) ? fuzz_next(&rng) % (64u << 20) : 0);
  for (size_t i = 0; i <= sizeof numbers / sizeof numbers[0]; i++) {
    unsigned n = i < sizeof numbers / sizeof numbers[0] ? numbers[i]
      : (unsigned) (fuzz_next(&rng) % 300) + 1;
    uint64_t start = 0, len = 0;
    int r = fde_partition_find(&m.disk, "fuzz", n, &start, &len);
    fuzz_check_ret(r, "fde_partition_find");
    if (r == 0)
      use_window(&m, n, start, len);
  }
  if (fuzz_count_fds() != fds)
    fuzz_fail("file descriptor leak");
  return 0;
}
