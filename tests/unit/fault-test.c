/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: fault injection through the backends' I/O seam.
 *
 *   fault-test [WORKLOAD...]
 *
 * For each workload (all of them when none is named): build an image with
 * qemu-img in a temporary directory, run the workload once with the seam
 * counting (K calls; this run must leave `qemu-img check` fully clean, no
 * leaks), then for N in 1..K (at most FDE_FAULT_CAP values, spread evenly
 * over 1..K) rerun it on a fresh copy with call N failing with EIO, and
 * again with ENOSPC.  Then the refusals, each aimed at the call it models
 * (the Nth call of that kind, for every N up to the cap): EXDEV at a
 * copy_file_range, the kernel refusing to copy between the files, which
 * the backend must take by reading and writing instead; EOPNOTSUPP at a
 * fallocate, a file system without it, which the backend must take by
 * writing zeros (or, punching, by leaving the bytes).  A refusal is no
 * failure: nothing may fail and `qemu-img check` must be clean.  A
 * workload marked .copies must make copy_file_range calls, one marked
 * .allocates_zeros fallocate calls (and, once one is refused, no more).
 * And once more with call N a short transfer (half its bytes, as the
 * kernel may return): no error at all, so that run must end exactly as
 * the run without faults, every step succeeded and `qemu-img check`
 * clean.  Each run carries on as a user
 * would: a failed write or zero is left failed, a failed flush is retried,
 * more data is written and flushed, and the disk is closed (the "close"
 * workload instead flushes once, as export_close does, and closes whatever
 * the result).  Then, with
 * qemu-img as the oracle:
 *  - `qemu-img check` reports no corruption (exit 0, or 3: leaks only);
 *  - every internal snapshot reads exactly as it did before;
 *  - every backing file is byte for byte what it was;
 *  - every byte whose last write (or zero) succeeded and was followed by a
 *    successful flush reads back as written, and every byte nothing wrote
 *    reads as before, through qemu-img convert and through the library.
 * An injected fault returns the error without making the call: it models
 * a call whose effect did not land (format.h, "testing only").  Each run
 * happens in a child process, so a crash or a sanitizer report names the
 * run.  First, without faults, "random-writes" checks that 3,000 random
 * 4 KiB writes to a 200 GiB image leak no cluster (issue 10's L2 leak).
 * Prints the faults injected per workload and errno and the total.  Exit
 * 0 if all passed, 1 on a failure, 77 (skip) without qemu-img.
 * Environment: FDE_FAULT_CAP, runs per workload and errno (default 60, 20
 * when built with sanitizers); FDE_FAULT_JOBS, runs at once (default 2);
 * FDE_FAULT_KEEP=1 keeps the directory. */
#include <config.h>

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "format.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define DEFAULT_CAP 20
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define DEFAULT_CAP 20
#endif
#endif
#ifndef DEFAULT_CAP
#define DEFAULT_CAP 60
#endif

#define KiB 1024ull
#define MiB (1024ull * 1024)
#define MAX_OPS 24

/* One step of a workload: count ranges of len bytes, stride apart from
 * off (count 0 means 1).  Writes fill their range with a pattern that
 * depends on the byte's offset and the step's index. */
enum op_kind { OP_END, OP_WRITE, OP_ZERO, OP_DISCARD, OP_FLUSH };
struct op {
  enum op_kind kind;
  uint64_t off, len;
  uint64_t stride, count;
};
#define W(o, l) { OP_WRITE, (o), (l), 0, 0 }
#define Z(o, l) { OP_ZERO, (o), (l), 0, 0 }
#define D(o, l) { OP_DISCARD, (o), (l), 0, 0 }
#define F       { OP_FLUSH, 0, 0, 0, 0 }
#define W_EVERY(o, l, stride, count) { OP_WRITE, (o), (l), (stride), (count) }

/* What the counting run must have changed in the image, so that the
 * workload provably exercises the path it is named after. */
enum grows { GROWS_NOTHING, GROWS_REFBLOCKS, GROWS_REFTABLE, GROWS_L1 };

struct workload {
  const char *name;
  const char *setup;            /* sh commands in the directory: base.qcow2 */
  const char *snapshots[3];     /* internal snapshots to compare */
  const char *backing[2];       /* backing files to compare */
  uint64_t cache_bytes;         /* L2 cache budget (0: default) */
  uint64_t autoclear;           /* autoclear bits set in base.qcow2 */
  bool close_flushes_once;      /* end like export_close: one flush, close */
  bool copies;                  /* copies on write: copy_file_range */
  bool allocates_zeros;         /* zeros in new clusters: fallocate */
  enum grows grows;
  uint64_t extra_off;           /* the "write more" phase writes here */
  struct op ops[MAX_OPS];
};

/* lowent.raw (made before every setup): 2 MiB of low-entropy bytes, so
 * that compressed clusters take about a third of a 4 KiB cluster and
 * often straddle a host cluster boundary. */
#define LOWENT_SIZE (2 * MiB)

static const struct workload workloads[] = {
  { .name = "allocating-writes", .allocates_zeros = true,
    .setup = "qemu-img create -q -f qcow2 base.qcow2 16M",
    .extra_off = 12 * MiB,
    .ops = { W(0, 4096), W(70000, 5000), W(1 * MiB, 200 * KiB), F,
             W(4 * MiB - 100, 300), W(8 * MiB, 64 * KiB), F } },
  { .name = "cow-snapshot", .copies = true,
    .setup = "qemu-img create -q -f qcow2 base.qcow2 8M"
    " && qemu-io -c 'write -P 0x11 0 4M' base.qcow2 >/dev/null"
    " && qemu-img snapshot -c s1 base.qcow2"
    " && qemu-io -c 'write -P 0x22 1M 64k' base.qcow2 >/dev/null",
    .snapshots = { "s1" },
    .extra_off = 6 * MiB,
    .ops = { W(0, 4096), W(128 * KiB, 64 * KiB), W(1 * MiB + 512, 1000), F,
             D(2 * MiB, 128 * KiB), W(3 * MiB, 100), F } },
  { .name = "cow-backing", .copies = true,
    .setup = "qemu-img create -q -f raw backing.raw 8M"
    " && qemu-io -f raw -c 'write -P 0x33 0 8M' backing.raw >/dev/null"
    " && qemu-img create -q -f qcow2 -b backing.raw -F raw base.qcow2 8M",
    .backing = { "backing.raw" },
    .extra_off = 7 * MiB,
    /* the third write runs in place over clusters 1-2, then allocates
     * 3-4 as one run, its tail read from the backing file */
    .ops = { W(100, 200), W(64 * KiB + 1000, 70000), F,
             W(100 * KiB, 200 * KiB), W(5 * MiB, 4096),
             Z(6 * MiB + 512, 1024), F } },
  { .name = "cow-backing-extl2", .copies = true,
    .setup = "qemu-img create -q -f qcow2 backing.qcow2 8M"
    " && qemu-io -c 'write -P 0x34 0 8M' backing.qcow2 >/dev/null"
    " && qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=64k"
    " -b backing.qcow2 -F qcow2 base.qcow2 8M",
    .backing = { "backing.qcow2" },
    .extra_off = 7 * MiB,
    .ops = { W(100, 200), W(64 * KiB + 2048, 3000), W(200 * KiB, 70000), F,
             Z(64 * KiB + 4096, 8192), D(1 * MiB, 64 * KiB), F } },
  { .name = "compressed-overwrite",
    .setup = "qemu-img convert -q -c -O qcow2 -o cluster_size=4096"
    " lowent.raw base.qcow2 && qemu-img resize -q base.qcow2 4M"
    " && qemu-img snapshot -c s1 base.qcow2",
    .snapshots = { "s1" },
    .extra_off = 3 * MiB,
    .ops = { W(0, 100), W(3 * 4096, 4096), W(10000, 20000), D(64 * KiB, 8192),
             F, W(1 * MiB + 7, 5000), Z(1 * MiB + 20000, 12000), F } },
  { .name = "discard-and-zero",
    .setup = "qemu-img create -q -f raw backing.raw 8M"
    " && qemu-io -f raw -c 'write -P 0x44 0 8M' backing.raw >/dev/null"
    " && qemu-img create -q -f qcow2 -b backing.raw -F raw base.qcow2 8M"
    " && qemu-io -c 'write -P 0x55 0 2M' base.qcow2 >/dev/null"
    " && qemu-img snapshot -c s1 base.qcow2",
    .snapshots = { "s1" },
    .backing = { "backing.raw" },
    .extra_off = 6 * MiB,
    .ops = { D(0, 64 * KiB), Z(100 * KiB, 10 * KiB), D(512 * KiB, 256 * KiB),
             Z(1 * MiB + 4096, 128 * KiB), F, W(0, 4096), D(4 * MiB, 1 * MiB),
             Z(5 * MiB, 64 * KiB), F } },
  { .name = "discard-then-append",
    .setup = "qemu-img create -q -f qcow2 base.qcow2 32M"
    " && qemu-io -c 'write -P 0x5a 0 9M' base.qcow2 >/dev/null",
    .extra_off = 24 * MiB,
    /* 9 MiB of deferred frees, then writes the free map cannot serve:
     * the write flushes first so that they are reused (qcow2-write.c,
     * flush_to_reuse, QCOW2_REUSE_FLUSH_BYTES) */
    .ops = { D(0, 9 * MiB), W(16 * MiB, 64 * KiB), W(20 * MiB + 100, 5000),
             F } },
  { .name = "refblock-growth",
    .setup = "qemu-img create -q -f qcow2 -o cluster_size=512 base.qcow2 4M"
    " && qemu-io -c 'write -P 0x66 0 122k' base.qcow2 >/dev/null",
    .grows = GROWS_REFBLOCKS,
    .extra_off = 3 * MiB,
    /* 122k of data end the file at cluster 253: the first write reaches
     * cluster 256, the first one the existing refblock cannot count */
    .ops = { W(1 * MiB, 2 * KiB), F } },
  { .name = "reftable-growth",
    .setup = "qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=64"
    " base.qcow2 4M"
    " && qemu-io -c 'write -P 0x77 0 1980k' base.qcow2 >/dev/null",
    .grows = GROWS_REFTABLE,
    .extra_off = 3 * MiB,
    .ops = { W(2 * MiB, 8 * KiB), W(2 * MiB + 64 * KiB, 8 * KiB), F,
             W(2 * MiB + 128 * KiB, 8 * KiB), F } },
  { .name = "l2-allocation",   /* 512 B clusters: one table per 32 KiB */
    .allocates_zeros = true,
    .setup = "qemu-img create -q -f qcow2 -o cluster_size=512 base.qcow2 8M",
    /* 224 new tables through a cache of 64 in 8 shards, as the default
     * is at 64 KiB clusters: a flush every 32 dirty tables */
    .cache_bytes = 64 * 512,
    .grows = GROWS_L1,
    .extra_off = 8 * MiB - 64 * KiB,
    .ops = { W_EVERY(0, 512, 32 * KiB, 200), F,
             W_EVERY(7 * MiB + 100, 1000, 32 * KiB, 24), F } },
  { .name = "autoclear-header",
    .setup = "qemu-img create -q -f qcow2 base.qcow2 8M"
    " && qemu-io -c 'write -P 0x88 0 1M' base.qcow2 >/dev/null",
    .autoclear = 1ull << 7,     /* unknown to us: cleared before writing */
    .extra_off = 6 * MiB,
    .ops = { W(512 * KiB, 4096), W(2 * MiB, 64 * KiB), F } },
  { .name = "close",
    .setup = "qemu-img create -q -f qcow2 base.qcow2 8M"
    " && qemu-io -c 'write -P 0x99 0 2M' base.qcow2 >/dev/null"
    " && qemu-img snapshot -c s1 base.qcow2",
    .snapshots = { "s1" },
    .close_flushes_once = true,
    .extra_off = 5 * MiB,
    .ops = { W(0, 4096), W(1 * MiB, 64 * KiB), F, W(64 * KiB, 512),
             D(512 * KiB, 128 * KiB), W(4 * MiB, 4096) } },
};
#define NR_WORKLOADS (sizeof workloads / sizeof workloads[0])

/* The operations one run performed, in order, with their outcome. */
struct done {
  enum op_kind kind;
  uint64_t off, len, stride, count;
  unsigned seed;
  bool ok;
};

struct run {
  const struct workload *w;
  struct fde_disk *disk;
  struct fde_chain chain;
  struct done done[2 * MAX_OPS + 16];
  unsigned nr_done;
  bool final_flush_ok;
};

static char dir[] = "/tmp/fde-fault-XXXXXX";
static uint8_t *orig, *snap_orig[3];    /* the workload's base contents */
static uint64_t disk_size;
static uint64_t backing_hash[2];
static char context[160];               /* the run, for messages */
/* The files of the run in this process (see struct job). */
static char run_image[32] = "run.qcow2", out_raw[32] = "out.raw";
static char check_log[32] = "check.log";

/* Print a failure line for the current run. */
static void
fail(const char *fmt, ...)
{
  va_list ap;

  printf("FAIL %s: ", context);
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  putchar('\n');
  fflush(stdout);
}

/* Run a shell command in the directory; its exit status (-1: not run). */
static int
sh(const char *fmt, ...)
{
  char cmd[2048], full[2400];
  va_list ap;
  int r;

  va_start(ap, fmt);
  vsnprintf(cmd, sizeof cmd, fmt, ap);
  va_end(ap);
  snprintf(full, sizeof full, "cd '%s' && { %s ; }", dir, cmd);
  r = system(full);
  return r == -1 || !WIFEXITED(r) ? -1 : WEXITSTATUS(r);
}

/* Run a program (NULL-terminated arguments, file names relative to the
 * directory) with its output to dir/log, or nowhere; its exit status, -1
 * if it could not run.  No shell: every run starts several of these. */
static int
tool(const char *log, const char *prog, ...)
{
  const char *argv[16] = { prog };
  posix_spawn_file_actions_t fa;
  char out[512];
  va_list ap;
  pid_t pid;
  int n = 1, status, r;

  va_start(ap, prog);
  while (n < 15 && (argv[n] = va_arg(ap, const char *)) != NULL)
    n++;
  va_end(ap);
  argv[n] = NULL;
  snprintf(out, sizeof out, "%s/%s", dir, log != NULL ? log : "");
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addchdir_np(&fa, dir);
  posix_spawn_file_actions_addopen(&fa, 1, log != NULL ? out : "/dev/null",
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  r = posix_spawnp(&pid, prog, &fa, NULL, (char *const *) argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  if (r != 0 || waitpid(pid, &status, 0) == -1 || !WIFEXITED(status))
    return -1;
  return WEXITSTATUS(status);
}

/* Copy dir/from to dir/to. */
static int
copy_file(const char *from, const char *to)
{
  char a[512], b[512];
  struct stat st;
  int in, out, r = -1;

  snprintf(a, sizeof a, "%s/%s", dir, from);
  snprintf(b, sizeof b, "%s/%s", dir, to);
  in = open(a, O_RDONLY | O_CLOEXEC);
  out = open(b, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (in != -1 && out != -1 && fstat(in, &st) == 0) {
    off_t left = st.st_size;
    ssize_t n;
    while (left > 0 && (n = copy_file_range(in, NULL, out, NULL,
                                            (size_t) left, 0)) > 0)
      left -= n;
    r = left == 0 ? 0 : -1;
  }
  if (in != -1)
    close(in);
  if (out != -1)
    close(out);
  return r;
}

/* Plain I/O for the test's own files, outside the seam it counts. */
static int
read_all(int fd, uint8_t *buf, size_t len)
{
  while (len > 0) {
    ssize_t r = read(fd, buf, len);
    if (r <= 0)
      return -1;
    buf += r;
    len -= (size_t) r;
  }
  return 0;
}

static int
write_all(int fd, const uint8_t *buf, size_t len)
{
  while (len > 0) {
    ssize_t r = write(fd, buf, len);
    if (r <= 0)
      return -1;
    buf += r;
    len -= (size_t) r;
  }
  return 0;
}

/* The whole contents of dir/name, malloc'd; NULL on error. */
static uint8_t *
slurp(const char *name, uint64_t *size)
{
  char path[512];
  struct stat st;
  uint8_t *buf = NULL;
  int fd;

  snprintf(path, sizeof path, "%s/%s", dir, name);
  fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd == -1 || fstat(fd, &st) == -1
      || (buf = malloc(st.st_size + 1)) == NULL
      || read_all(fd, buf, (size_t) st.st_size) < 0) {
    free(buf);
    buf = NULL;
  } else
    *size = (uint64_t) st.st_size;
  if (fd != -1)
    close(fd);
  return buf;
}

/* The virtual disk of dir/image (or of its snapshot), read by qemu-img. */
static uint8_t *
qemu_contents(const char *image, const char *snapshot, uint64_t *size)
{
  char opt[160];

  snprintf(opt, sizeof opt, "snapshot.name=%s", snapshot ? snapshot : "");
  if ((snapshot != NULL
       ? tool(NULL, "qemu-img", "convert", "-U", "-l", opt, "-O", "raw",
              image, out_raw, NULL)
       : tool(NULL, "qemu-img", "convert", "-U", "-O", "raw", image,
              out_raw, NULL)) != 0)
    return NULL;
  return slurp(out_raw, size);
}

/* FNV-1a of dir/name's bytes (0 if unreadable). */
static uint64_t
hash_file(const char *name)
{
  uint64_t size, h = 0xcbf29ce484222325ull;
  uint8_t *buf = slurp(name, &size);

  if (buf == NULL)
    return 0;
  for (uint64_t i = 0; i < size; i++)
    h = (h ^ buf[i]) * 0x100000001b3ull;
  free(buf);
  return h;
}

/* The bytes a write of step seed puts at [off, off+len). */
static void
pattern(uint8_t *buf, uint64_t off, uint64_t len, unsigned seed)
{
  for (uint64_t i = 0; i < len; i++) {
    uint64_t x = off + i;
    buf[i] = (uint8_t) (x * 131 + (x >> 9) * 7 + seed * 29 + 1);
  }
}

/* Low-entropy bytes (0, 17, 34 or 51 at random) for the compressed
 * workload. */
static int
make_lowent(void)
{
  char path[512];
  uint8_t *buf = malloc(LOWENT_SIZE);
  uint64_t s = 12345;
  int fd, r;

  snprintf(path, sizeof path, "%s/lowent.raw", dir);
  if (buf == NULL)
    return -1;
  for (uint64_t i = 0; i < LOWENT_SIZE; i++) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    buf[i] = (uint8_t) ((s >> 60) & 3) * 17;
  }
  fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  r = fd == -1 ? -1 : write_all(fd, buf, LOWENT_SIZE);
  if (fd != -1)
    close(fd);
  free(buf);
  return r < 0 ? -1 : 0;
}

/* Set autoclear bits in dir/name's header (bytes 88..95, v3). */
static int
set_autoclear(const char *name, uint64_t bits)
{
  char path[512];
  uint64_t be;
  int fd, r = -1;

  snprintf(path, sizeof path, "%s/%s", dir, name);
  fd = open(path, O_RDWR | O_CLOEXEC);
  if (fd != -1 && pread(fd, &be, 8, 88) == 8) {
    be = htobe64(be64toh(be) | bits);
    r = pwrite(fd, &be, 8, 88) == 8 ? 0 : -1;
  }
  if (fd != -1)
    close(fd);
  return r;
}

/* Nonzero 64-bit entries of the big-endian table at off, n entries. */
static uint64_t
count_entries(int fd, uint64_t off, uint64_t n)
{
  uint64_t count = 0, e;

  for (uint64_t i = 0; i < n; i++)
    if (pread(fd, &e, 8, (off_t) (off + i * 8)) == 8 && e != 0)
      count++;
  return count;
}

/* The size of what the workload must grow, read from dir/name's header:
 * refcount table clusters, refblocks, or L2 tables. */
static uint64_t
metric(const char *name, enum grows g)
{
  char path[512];
  uint8_t h[64];
  uint64_t v = 0;
  int fd;

  snprintf(path, sizeof path, "%s/%s", dir, name);
  fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd == -1)
    return 0;
  if (pread(fd, h, sizeof h, 0) == sizeof h) {
    uint32_t cluster_bits = be32toh(*(uint32_t *) (h + 20));
    uint32_t l1_size = be32toh(*(uint32_t *) (h + 36));
    uint64_t l1_off = be64toh(*(uint64_t *) (h + 40));
    uint64_t rt_off = be64toh(*(uint64_t *) (h + 48));
    uint32_t rt_clusters = be32toh(*(uint32_t *) (h + 56));
    if (g == GROWS_REFTABLE)
      v = rt_clusters;
    else if (g == GROWS_REFBLOCKS)
      v = count_entries(fd, rt_off,
                        ((uint64_t) rt_clusters << cluster_bits) / 8);
    else if (g == GROWS_L1)
      v = count_entries(fd, l1_off, l1_size);
  }
  close(fd);
  return v;
}

/* Open dir/run.qcow2 as the program would. */
static int
open_run(struct run *r, bool read_only)
{
  static char path[512];
  struct fde_open_params p = {
    .path = path, .read_only = read_only,
    .cache_bytes = r->w->cache_bytes, .chain = &r->chain,
  };
  int rc;

  snprintf(path, sizeof path, "%s/%s", dir, run_image);
  p.fd = open(path, (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
  if (p.fd == -1)
    return -errno;
  r->chain.depth = 0;
  rc = fde_disk_open(&fde_format_qcow2, &p, &r->disk);
  if (rc < 0)
    close(p.fd);
  return rc;
}

/* Do one range of a step; 0 or -errno. */
static int
do_range(struct fde_disk *disk, enum op_kind kind, uint64_t off,
         uint64_t len, unsigned seed)
{
  const struct fde_format *f = disk->format;
  uint8_t *buf;
  int rc = -ENOMEM;

  switch (kind) {
  case OP_WRITE:
    if ((buf = malloc(len)) != NULL) {
      pattern(buf, off, len, seed);
      rc = f->pwrite(disk, buf, len, off);
      free(buf);
    }
    break;
  case OP_ZERO:
  case OP_DISCARD:
    rc = f->zero(disk, off, len, kind == OP_DISCARD ? FDE_ZERO_PUNCH : 0);
    break;
  default:
    rc = f->flush(disk);
  }
  if (rc > 0 || rc < -4095)
    fail("step %u returned %d, not 0 or -errno", seed, rc);
  return rc;
}

/* Close the run's disk (no flush: format.h). */
static void
close_run(struct run *r)
{
  fde_disk_close(r->disk);
  r->disk = NULL;
}

/* Perform one step, every range even after a failure, and record it;
 * true if every range succeeded. */
static bool
step(struct run *r, struct op o)
{
  struct done *d = &r->done[r->nr_done];

  *d = (struct done) { o.kind, o.off, o.len, o.stride,
                       o.count ? o.count : 1, r->nr_done + 1, true };
  for (uint64_t k = 0; k < d->count; k++)
    if (do_range(r->disk, o.kind, o.off + k * o.stride, o.len, d->seed) < 0)
      d->ok = false;
  r->nr_done++;
  return d->ok;
}

/* What the disk must hold after the run, over orig: every step as the
 * open handle shows it (durable false), or only what a successful flush
 * covered (durable true: steps after the last one are unknown).  A failed
 * step leaves its ranges unknown. */
static void
expected(const struct run *r, bool durable, uint8_t *exp, uint8_t *known)
{
  unsigned last = 0;            /* steps [0, last) are covered by a flush */

  memcpy(exp, orig, disk_size);
  memset(known, 1, disk_size);
  for (unsigned i = 0; i < r->nr_done; i++)
    if (!durable || (r->done[i].kind == OP_FLUSH && r->done[i].ok))
      last = i + 1;
  for (unsigned i = 0; i < r->nr_done; i++) {
    const struct done *d = &r->done[i];
    for (uint64_t k = 0; d->kind != OP_FLUSH && k < d->count; k++) {
      uint64_t off = d->off + k * d->stride;
      if (!d->ok || i >= last)
        memset(known + off, 0, d->len);
      else if (d->kind == OP_WRITE)
        pattern(exp + off, off, d->len, d->seed);
      else
        memset(exp + off, 0, d->len);
    }
  }
}

/* Compare the known bytes; report the first difference. */
static bool
compare(const char *what, const uint8_t *got, uint64_t size,
        const uint8_t *exp, const uint8_t *known)
{
  uint64_t bad = 0, first = 0;

  if (got == NULL || size < disk_size) {
    fail("%s: could not read the disk", what);
    return false;
  }
  for (uint64_t blk = 0; blk < disk_size; blk += 4096) {
    uint64_t n = disk_size - blk < 4096 ? disk_size - blk : 4096;
    if (memcmp(got + blk, exp + blk, n) == 0)
      continue;                 /* the common case, fast */
    for (uint64_t i = blk; i < blk + n; i++)
      if ((known == NULL || known[i]) && got[i] != exp[i] && bad++ == 0)
        first = i;
  }
  if (bad > 0)
    fail("%s: %" PRIu64 " bytes differ, the first at %#" PRIx64 " is %#x, "
         "expected %#x", what, bad, first, got[first], exp[first]);
  return bad == 0;
}

/* The whole disk through the library. */
static uint8_t *
library_contents(struct fde_disk *disk)
{
  uint8_t *buf = malloc(disk_size);

  for (uint64_t off = 0; buf != NULL && off < disk_size; off += MiB) {
    uint64_t n = disk_size - off < MiB ? disk_size - off : MiB;
    if (disk->format->pread(disk, buf + off, n, off) < 0) {
      free(buf);
      return NULL;
    }
  }
  return buf;
}

/* The workload's steps, then "write more, flush (retrying)", or the
 * single flush of export_close.  false if the run could not go on. */
static bool
perform(struct run *r)
{
  const struct workload *w = r->w;
  const struct op *first = &w->ops[0];
  int rc = -EIO;

  for (int tries = 0; tries < 3 && rc < 0; tries++)
    rc = open_run(r, false);
  if (rc < 0) {
    fail("open still fails after retries: %s", strerror(-rc));
    return false;
  }
  for (const struct op *o = w->ops; o->kind != OP_END; o++)
    step(r, *o);
  if (w->close_flushes_once) {
    r->final_flush_ok = step(r, (struct op) F);
    return true;
  }
  step(r, (struct op) W(w->extra_off, 1 * KiB + 100));
  step(r, (struct op) W(first->off, first->len));
  for (int tries = 0; tries < 4 && !r->final_flush_ok; tries++)
    r->final_flush_ok = step(r, (struct op) F);
  if (!r->final_flush_ok)
    fail("flush still fails after retries");
  return r->final_flush_ok;
}

/* The oracle's verdict on dir/run.qcow2 after a run. */
static bool
check_image(struct run *r, bool strict, uint8_t *exp, uint8_t *known)
{
  const struct workload *w = r->w;
  uint8_t *got;
  uint64_t size = 0;
  bool ok = true;
  int rc = tool(check_log, "qemu-img", "check", run_image, NULL);

  if (rc != 0 && (strict || rc != 3)) {
    fail("qemu-img check exits %d%s", rc, strict ? " (no fault)" : "");
    sh("grep -v '^$' %s | head -n 12", check_log);
    ok = false;
  }
  for (int i = 0; i < 3 && w->snapshots[i] != NULL; i++) {
    got = qemu_contents(run_image, w->snapshots[i], &size);
    ok &= compare(w->snapshots[i], got, size, snap_orig[i], NULL);
    free(got);
  }
  for (int i = 0; i < 2 && w->backing[i] != NULL; i++)
    if (hash_file(w->backing[i]) != backing_hash[i]) {
      fail("backing file %s changed", w->backing[i]);
      ok = false;
    }
  expected(r, true, exp, known);
  got = qemu_contents(run_image, NULL, &size);
  ok &= compare("qemu-img convert", got, size, exp, known);
  free(got);
  if (open_run(r, true) < 0) {
    fail("the image no longer opens read-only");
    return false;
  }
  got = library_contents(r->disk);
  ok &= compare("reopened", got, disk_size, exp, known);
  free(got);
  close_run(r);
  return ok;
}

#define COUNTS 4                /* one_run's counts */

/* The call a refusal models: EXDEV copy_file_range's, EOPNOTSUPP
 * fallocate's; FDE_IO_NONE for a failure of any call. */
static enum fde_io_call
refused_call(int err)
{
  return err == EXDEV ? FDE_IO_COPY_RANGE
    : err == EOPNOTSUPP ? FDE_IO_FALLOCATE : FDE_IO_NONE;
}

/* One run from a fresh copy of base.qcow2, failing seam call nth (0:
 * none; for a refusal, the nth call it models) with err; counts[0] gets
 * the calls, counts[1] the faults, counts[2] and [3] the copy_file_range
 * and fallocate calls. */
static bool
one_run(const struct workload *w, uint64_t nth, int err,
        uint64_t counts[COUNTS])
{
  struct run *r = calloc(1, sizeof *r);
  uint8_t *exp = malloc(disk_size), *known = malloc(disk_size), *got;
  bool ok, refused;

  if (r == NULL || exp == NULL || known == NULL
      || copy_file("base.qcow2", run_image) != 0) {
    fail("setting up the run");
    exit(2);
  }
  r->w = w;
  fde_io_fault_arm_kind(nth, err, refused_call(err));
  ok = perform(r);
  fde_io_fault_disarm();
  counts[0] = fde_io_fault_calls();
  counts[1] = fde_io_fault_injected();
  counts[2] = fde_io_fault_calls_of(FDE_IO_COPY_RANGE);
  counts[3] = fde_io_fault_calls_of(FDE_IO_FALLOCATE);
  /* Not failures: a short transfer, a refusal (taken another way; armed
   * at the call it models, so injected means met).  Nothing may fail
   * then. */
  refused = refused_call(err) != FDE_IO_NONE && counts[1] > 0;
  /* Refused once, never asked again (a workload marked .allocates_zeros
   * makes no other fallocate call). */
  if (refused && err == EOPNOTSUPP && w->allocates_zeros
      && counts[3] != nth) {
    fail("%" PRIu64 " fallocate calls after the refusal", counts[3] - nth);
    ok = false;
  }
  if (err == FDE_FAULT_SHORT || refused)
    for (unsigned i = 0; ok && i < r->nr_done; i++)
      if (!r->done[i].ok) {
        fail("step %u failed after %s", i + 1,
             refused ? "a refusal" : "a short transfer");
        ok = false;
      }
  if (r->disk != NULL && ok) {          /* what the open handle shows */
    expected(r, false, exp, known);
    got = library_contents(r->disk);
    ok = compare("read before close", got, disk_size, exp, known);
    free(got);
  }
  close_run(r);
  ok &= check_image(r, nth == 0 || err == FDE_FAULT_SHORT || refused, exp,
                    known);
  if (nth == 0 && w->grows != GROWS_NOTHING
      && metric(run_image, w->grows) <= metric("base.qcow2", w->grows)) {
    fail("the workload did not grow what it is named after");
    ok = false;
  }
  free(exp);
  free(known);
  free(r);
  return ok;
}

/* A run in a child process, so that a crash or a sanitizer report is
 * reported with the run that caused it, and so that runs can overlap.
 * Slot s (one per run in flight) names its files: runS.qcow2, outS.raw,
 * checkS.log, backendS.log (the backend's messages). */
struct job {
  const struct workload *w;
  uint64_t nth;
  int err;
  unsigned slot;
  pid_t pid;
  int pipe;                     /* the child's counts[COUNTS] */
};

static const char *
err_name(int err)
{
  return err == ENOSPC ? "ENOSPC" : err == EXDEV ? "EXDEV"
    : err == EOPNOTSUPP ? "EOPNOTSUPP"
    : err == FDE_FAULT_SHORT ? "a short transfer" : "EIO";
}

static void
set_context(const struct job *j)
{
  if (j->nth == 0)
    snprintf(context, sizeof context, "%s, no fault", j->w->name);
  else
    snprintf(context, sizeof context, "%s, %s at call %" PRIu64, j->w->name,
             err_name(j->err), j->nth);
}

/* Start a run; false if it could not start. */
static bool
start_run(struct job *j)
{
  int p[2];

  set_context(j);
  fflush(stdout);
  if (pipe(p) == -1 || (j->pid = fork()) == -1) {
    fail("fork: %s", strerror(errno));
    return false;
  }
  if (j->pid == 0) {
    uint64_t counts[COUNTS] = { 0 };
    char log[512];
    int fd;
    snprintf(run_image, sizeof run_image, "run%u.qcow2", j->slot);
    snprintf(out_raw, sizeof out_raw, "out%u.raw", j->slot);
    snprintf(check_log, sizeof check_log, "check%u.log", j->slot);
    snprintf(log, sizeof log, "%s/backend%u.log", dir, j->slot);
    fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd != -1)
      dup2(fd, 2);
    close(p[0]);
    bool ok = one_run(j->w, j->nth, j->err, counts);
    if (write(p[1], counts, sizeof counts) < 0)
      ok = false;
    exit(ok ? 0 : 1);
  }
  close(p[1]);
  j->pipe = p[0];
  return true;
}

/* Wait for a run: its counts (one_run's) and whether it passed. */
static bool
finish_run(struct job *j, uint64_t counts[COUNTS])
{
  int status;

  if (read(j->pipe, counts, COUNTS * sizeof counts[0])
      != COUNTS * sizeof counts[0])
    memset(counts, 0, COUNTS * sizeof counts[0]);
  close(j->pipe);
  if (waitpid(j->pid, &status, 0) == -1
      || !WIFEXITED(status) || WEXITSTATUS(status) > 1) {
    set_context(j);
    fail("the run died (status %#x); its log:", status);
    sh("tail -n 40 backend%u.log", j->slot);
    return false;
  }
  return WEXITSTATUS(status) == 0;
}

/* Build base.qcow2 and what the checks compare with. */
static bool
setup(const struct workload *w)
{
  uint64_t size;

  snprintf(context, sizeof context, "%s, setup", w->name);
  free(orig);
  orig = NULL;
  for (int i = 0; i < 3; i++) {
    free(snap_orig[i]);
    snap_orig[i] = NULL;
  }
  if (sh("rm -f ./*.qcow2 ./*.raw") != 0 || make_lowent() < 0
      || sh("%s", w->setup) != 0
      || (w->autoclear && set_autoclear("base.qcow2", w->autoclear) < 0)
      || (orig = qemu_contents("base.qcow2", NULL, &disk_size)) == NULL) {
    fail("cannot build the image");
    return false;
  }
  for (int i = 0; i < 3 && w->snapshots[i] != NULL; i++)
    if ((snap_orig[i] = qemu_contents("base.qcow2", w->snapshots[i], &size))
        == NULL || size != disk_size) {
      fail("cannot read snapshot %s", w->snapshots[i]);
      return false;
    }
  for (int i = 0; i < 2 && w->backing[i] != NULL; i++)
    backing_hash[i] = hash_file(w->backing[i]);
  return true;
}

/* The call the i-th of runs runs fails: all of 1..k, or spread evenly. */
static uint64_t
nth_call(uint64_t i, uint64_t runs, uint64_t k)
{
  return runs == k ? i + 1 : 1 + i * (k - 1) / (runs - 1);
}

/* Plan n runs failing calls spread over 1..k with err into plan[*np]. */
static void
plan_runs(struct job *plan, size_t *np, const struct workload *w, int err,
          uint64_t k, uint64_t cap)
{
  uint64_t runs = k < cap ? k : cap;

  for (uint64_t i = 0; i < runs; i++)
    plan[(*np)++] = (struct job) { w, nth_call(i, runs, k), err, 0, 0, -1 };
}

/* Count the workload's calls, then fail each chosen one with each errno
 * (and make it a short transfer), and aim each refusal at the calls it
 * models, jobs runs at a time.  Adds the faults injected to *total; false
 * on any failure (after MAX_FAILED failed runs, no more start). */
#define MAX_FAILED 10
static bool
test_workload(const struct workload *w, uint64_t cap, unsigned jobs,
              uint64_t *total)
{
  static const int errs[] = { EIO, ENOSPC, FDE_FAULT_SHORT, EXDEV,
                              EOPNOTSUPP };
  struct job job[8] = { { .w = w } }, *plan;
  uint64_t counts[COUNTS], k, faults[5] = { 0 };
  size_t n_plan = 0;
  unsigned failed = 0;
  bool ok = setup(w) && start_run(&job[0]) && finish_run(&job[0], counts);

  k = ok ? counts[0] : 0;
  if (ok && k == 0) {
    fail("the workload made no I/O calls");
    ok = false;
  }
  if (ok && ((w->copies && counts[2] == 0)
             || (w->allocates_zeros && counts[3] == 0))) {
    fail("the workload made no %s calls",
         w->copies && counts[2] == 0 ? "copy_file_range" : "fallocate");
    ok = false;
  }
  if ((plan = calloc(5 * (cap + 1), sizeof *plan)) == NULL)
    ok = false;
  for (int e = 0; ok && e < 3; e++)
    plan_runs(plan, &n_plan, w, errs[e], k, cap);
  if (ok) {
    plan_runs(plan, &n_plan, w, EXDEV, counts[2], cap);
    plan_runs(plan, &n_plan, w, EOPNOTSUPP, counts[3], cap);
  }
  for (size_t n = 0; ok && n < n_plan + jobs; n++) {
    struct job *j = &job[n % jobs];
    if (n >= jobs && j->pid > 0) {      /* the run started jobs ago */
      int e = 0;
      failed += !finish_run(j, counts);
      while (errs[e] != j->err)
        e++;
      faults[e] += counts[1];
      j->pid = 0;
    }
    if (n < n_plan && failed < MAX_FAILED) {
      *j = plan[n];
      j->slot = (unsigned) (n % jobs);
      failed += !start_run(j);
    }
  }
  free(plan);
  ok &= failed == 0;
  printf("%-22s %5" PRIu64 " calls, %3" PRIu64 " EIO, %3" PRIu64
         " ENOSPC, %3" PRIu64 " short, %3" PRIu64 " EXDEV and %3" PRIu64
         " EOPNOTSUPP injected faults: %s\n", w->name, k, faults[0],
         faults[1], faults[2], faults[3], faults[4], ok ? "ok" : "FAILED");
  fflush(stdout);
  for (int e = 0; e < 5; e++)
    *total += faults[e];
  return ok;
}

/* Issue 10's smaller defect: a new L2 table that met a full cache shard
 * leaked its cluster (3,000 random 4 KiB writes to a fresh 200 GiB image
 * left "1 leaked clusters").  A shard fills up only by chance, so several
 * rounds (seeds and cache budgets; on the old code 4 of these 6 leaked).
 * No faults: the image must come out clean, holding every write. */
#define RANDOM_WRITES 3000
#define RANDOM_SIZE (200ull << 30)

/* The writes (offsets into offs), then a flush; false on an error. */
static bool
write_randomly(struct run *r, uint64_t seed, uint64_t *offs)
{
  uint8_t buf[4096];
  int rc;

  for (unsigned i = 0; i < RANDOM_WRITES; i++) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    offs[i] = (seed >> 20) % (RANDOM_SIZE / 4096) * 4096;
    pattern(buf, offs[i], 4096, i + 1);
    if ((rc = r->disk->format->pwrite(r->disk, buf, 4096, offs[i])) < 0) {
      fail("write %u: %s", i, strerror(-rc));
      return false;
    }
  }
  if ((rc = r->disk->format->flush(r->disk)) < 0) {
    fail("flush: %s", strerror(-rc));
    return false;
  }
  return true;
}

/* Every write not overwritten later reads back, through the library. */
static bool
read_back_randomly(struct run *r, const uint64_t *offs)
{
  uint8_t buf[4096], got[4096];

  for (unsigned i = RANDOM_WRITES; i-- > 0;) {
    bool later = false;
    for (unsigned j = i + 1; j < RANDOM_WRITES && !later; j++)
      later = offs[j] == offs[i];
    pattern(buf, offs[i], 4096, i + 1);
    if (!later && (r->disk->format->pread(r->disk, got, 4096, offs[i]) < 0
                   || memcmp(got, buf, 4096) != 0)) {
      fail("write %u at %#" PRIx64 " does not read back", i, offs[i]);
      return false;
    }
  }
  return true;
}

static bool
random_writes_leave_no_leak(uint64_t seed, uint64_t cache_bytes)
{
  const struct workload w = { .name = "random-writes",
                              .cache_bytes = cache_bytes };
  struct run *r = calloc(1, sizeof *r);
  uint64_t *offs = malloc(RANDOM_WRITES * sizeof *offs);
  bool ok = r != NULL && offs != NULL;

  snprintf(context, sizeof context, "%s, seed %" PRIu64 ", cache %" PRIu64,
           w.name, seed, cache_bytes);
  if (ok) {
    r->w = &w;
    ok = sh("rm -f ./*.qcow2 ./*.raw && qemu-img create -q -f qcow2 "
            "run.qcow2 %llu", RANDOM_SIZE) == 0 && open_run(r, false) == 0;
    if (!ok)
      fail("cannot create and open the image");
  }
  ok = ok && write_randomly(r, seed, offs);
  if (r != NULL)
    close_run(r);
  if (ok && tool("check.log", "qemu-img", "check", "run.qcow2", NULL) != 0) {
    fail("qemu-img check is not clean");
    sh("grep -v '^$' check.log | head -n 12");
    ok = false;
  }
  ok = ok && open_run(r, true) == 0 && read_back_randomly(r, offs);
  if (r != NULL)
    close_run(r);
  printf("%-22s %5u writes, seed %" PRIu64 ", cache %7" PRIu64 ": %s\n",
         w.name, RANDOM_WRITES, seed, cache_bytes,
         ok ? "ok, qemu-img check clean" : "FAILED");
  sh("rm -f run.qcow2");
  free(offs);
  free(r);
  return ok;
}

static bool
selected(const char *name, int argc, char **argv)
{
  for (int i = 1; i < argc; i++)
    if (strcmp(argv[i], name) == 0)
      return true;
  return argc < 2;
}

int
main(int argc, char **argv)
{
  const char *env_cap = getenv("FDE_FAULT_CAP");
  const char *env_jobs = getenv("FDE_FAULT_JOBS");
  uint64_t cap = env_cap ? strtoull(env_cap, NULL, 10) : DEFAULT_CAP;
  uint64_t total = 0;
  unsigned jobs = env_jobs ? (unsigned) atoi(env_jobs) : 2;
  bool ok = true;

  if (system("qemu-img --version >/dev/null 2>&1") != 0
      || system("qemu-io --version >/dev/null 2>&1") != 0) {
    printf("SKIP: qemu-img and qemu-io are needed\n");
    return 77;
  }
  if (cap < 2)
    cap = 2;
  if (jobs < 1 || jobs > 8)
    jobs = jobs < 1 ? 1 : 8;
  if (mkdtemp(dir) == NULL) {
    perror("mkdtemp");
    return 1;
  }
  for (uint64_t seed = 1; seed <= 3 && selected("random-writes", argc, argv);
       seed++) {
    ok &= random_writes_leave_no_leak(seed, 0);
    ok &= random_writes_leave_no_leak(seed, 1536 * KiB);
  }
  for (size_t i = 0; i < NR_WORKLOADS; i++)
    if (selected(workloads[i].name, argc, argv))
      ok &= test_workload(&workloads[i], cap, jobs, &total);
  printf("%" PRIu64 " injected faults in total\n", total);
  if (getenv("FDE_FAULT_KEEP") == NULL)
    sh("cd / && rm -rf '%s'", dir);
  else
    printf("kept %s\n", dir);
  return ok ? 0 : 1;
}
