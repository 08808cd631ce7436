/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: the whole-range I/O helpers (formats/io.c) under
 * short transfers and faults injected at the seam, on files in a private
 * directory: every byte lands as asked whatever the kernel's transfers
 * are cut to, and each error comes back as format.h says (a copy the
 * kernel refuses after a short one is "unsupported", so that the caller
 * reads and writes it all instead; past a source's end, zeros).
 * Exit 0 if every check held. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "format.h"
#include "check.h"

#define LEN 70000u              /* not a multiple of a page */

static char dir[] = "/tmp/fde-io-test-XXXXXX";
static uint8_t src[LEN];

/* A new empty file in dir, open read-write. */
static int
new_file(const char *name)
{
  char path[64];

  snprintf(path, sizeof path, "%s/%s", dir, name);
  unlink(path);
  return open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
}

/* Does fd hold exactly want (len bytes) at off? */
static int
holds(int fd, uint64_t off, const uint8_t *want, size_t len)
{
  uint8_t *got = malloc(len);
  int ok = got != NULL && pread(fd, got, len, (off_t) off) == (ssize_t) len
    && memcmp(got, want, len) == 0;

  free(got);
  return ok;
}

static void
short_reads_and_writes(int in)
{
  uint8_t buf[LEN];
  int out = new_file("w");

  fde_io_fault_arm(1, FDE_FAULT_SHORT);
  CHECK(fde_pread_full(in, buf, LEN, 0) == 0);
  CHECK(fde_io_fault_calls() == 2 && fde_io_fault_injected() == 1);
  CHECK(memcmp(buf, src, LEN) == 0);

  fde_io_fault_arm(1, FDE_FAULT_SHORT);
  CHECK(fde_pwrite_full(out, src, LEN, 100) == 0);
  CHECK(fde_io_fault_calls() == 2 && holds(out, 100, src, LEN));

  fde_io_fault_arm(1, FDE_FAULT_SHORT);         /* 1 byte: nothing to cut */
  CHECK(fde_pwrite_full(out, src, 1, 0) == 0);
  CHECK(fde_io_fault_calls() == 1 && fde_io_fault_injected() == 0);

  for (uint64_t nth = 1; nth <= 3; nth++) {     /* cut inside each buffer */
    struct iovec v[3] = { { src, 3 }, { src + 3, 5000 }, { src + 5003, 7 } };
    fde_io_fault_arm(nth, FDE_FAULT_SHORT);
    CHECK(fde_pwritev_full(out, v, 3, 9) == 0);
    CHECK(holds(out, 9, src, 5010));
    CHECK(memcmp(v[1].iov_base, src + 3, 5000) == 0 && v[1].iov_len == 5000);
  }

  fde_io_fault_arm(1, FDE_FAULT_SHORT);         /* fails after a short one */
  fde_io_fault_arm_next(ENOSPC);
  CHECK(fde_pwrite_full(out, src, LEN, 0) == -ENOSPC);
  fde_io_fault_disarm();
  close(out);
}

static void
short_copies(int in)
{
  int out = new_file("c");

  fde_io_fault_arm(1, FDE_FAULT_SHORT);
  CHECK(fde_copy_range_full(in, 0, out, 4096, LEN) == 0);
  CHECK(fde_io_fault_calls() >= 2 && holds(out, 4096, src, LEN));

  fde_io_fault_arm(2, FDE_FAULT_SHORT);         /* two cuts in a row */
  CHECK(fde_copy_range_full(in, 10, out, 0, LEN - 10) == 0);
  CHECK(holds(out, 0, src + 10, LEN - 10));

  /* Refused on the first call, or on the one after a short copy: the
   * caller is told to read and write the whole range itself. */
  fde_io_fault_arm(1, EXDEV);
  CHECK(fde_copy_range_full(in, 0, out, 0, LEN) == FDE_COPY_RANGE_UNSUPPORTED);
  fde_io_fault_arm(1, FDE_FAULT_SHORT);
  fde_io_fault_arm_next(EXDEV);
  CHECK(fde_copy_range_full(in, 0, out, 0, LEN) == FDE_COPY_RANGE_UNSUPPORTED);
  CHECK(fde_io_fault_calls() == 2 && fde_io_fault_injected() == 2);
  fde_io_fault_arm(1, FDE_FAULT_SHORT);
  fde_io_fault_arm_next(EOPNOTSUPP);
  CHECK(fde_copy_range_full(in, 0, out, 0, LEN) == FDE_COPY_RANGE_UNSUPPORTED);

  /* An I/O error is one, before or after a short copy. */
  fde_io_fault_arm(1, EIO);
  CHECK(fde_copy_range_full(in, 0, out, 0, LEN) == -EIO);
  fde_io_fault_arm(1, FDE_FAULT_SHORT);
  fde_io_fault_arm_next(EIO);
  CHECK(fde_copy_range_full(in, 0, out, 0, LEN) == -EIO);
  fde_io_fault_disarm();

  /* The source ends before the range does (it shrank): the rest reads
   * as zeros, as fde_pread_full reads it, and is written so. */
  {
    uint8_t want[300];
    memset(want, 0, sizeof want);
    memcpy(want, src + LEN - 100, 100);
    CHECK(pwrite(out, src, sizeof want, 0) == sizeof want);
    CHECK(fde_copy_range_full(in, LEN - 100, out, 0, sizeof want) == 0);
    CHECK(holds(out, 0, want, sizeof want));
    CHECK(pwrite(out, src, 1, 0) == 1);
    CHECK(fde_copy_range_full(in, LEN + 5000, out, 0, 1) == 0);
    CHECK(holds(out, 0, want + 299, 1));
  }
  CHECK(fde_copy_range_full(in, UINT64_MAX - 10, out, 0, 100) == -EINVAL);
  close(out);
}

/* The kernel's own refusal: a file on another file system (tmpfs), where
 * Linux answers EXDEV. */
static void
real_cross_device(int in)
{
  char path[] = "/dev/shm/fde-io-test-XXXXXX";
  struct stat a, b;
  int shm = mkstemp(path);

  if (shm == -1) {
    printf("io-test: no /dev/shm: the cross-device copy is not checked\n");
    return;
  }
  unlink(path);
  if (fstat(shm, &a) == 0 && fstat(in, &b) == 0 && a.st_dev != b.st_dev)
    CHECK(fde_copy_range_full(in, 0, shm, 0, LEN)
          == FDE_COPY_RANGE_UNSUPPORTED);
  else
    printf("io-test: /dev/shm is on the test directory's file system: "
           "the cross-device copy is not checked\n");
  close(shm);
}

int
main(void)
{
  int in;

  if (mkdtemp(dir) == NULL) {
    perror("mkdtemp");
    return 1;
  }
  for (size_t i = 0; i < LEN; i++)
    src[i] = (uint8_t) (i * 2654435761u >> 13);
  in = new_file("src");
  CHECK(in != -1 && pwrite(in, src, LEN, 0) == LEN);
  short_reads_and_writes(in);
  short_copies(in);
  real_cross_device(in);
  close(in);
  {
    char cmd[64];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0);
  }
  printf("io-test: %d failed checks\n", failures);
  return failures != 0;
}
