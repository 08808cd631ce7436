/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: a driver for the format backends' read path, used to
 * compare them with qemu-img.
 *
 *   qcow2-read-test [OPTS] IMAGE OUTFILE       write the virtual disk
 *   qcow2-read-test [OPTS] --random N SEED IMAGE RAW
 *                                              N random reads against RAW
 *   qcow2-read-test [OPTS] --status IMAGE      print block-status runs
 *   qcow2-read-test [OPTS] --describe IMAGE    print describe() output
 *
 * OPTS: --snapshot NAME, --threads N, --bs BYTES (dump request size),
 * --range OFF LEN (dump only that range), --cache BYTES, --rw (open
 * read-write), -v.  The image is opened with fde_disk_open(NULL, ...),
 * i.e. probed, as the program does.  Exit 0 on success, 1 on a mismatch
 * or error. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "format.h"

struct job {
  struct fde_disk *disk;
  int out_fd;                   /* dump: output; random: reference */
  uint64_t start, end;          /* range to dump */
  size_t bs;
  unsigned threads, index;
  uint64_t nr_random, seed;
  int failed;
};

static struct fde_open_params params = { .read_only = true };
static struct fde_chain chain;
static unsigned nr_threads = 1;
static size_t block_size = 1 << 20;
static uint64_t range_off, range_len;
static bool have_range;

/* Open the image as the program would, or exit. */
static struct fde_disk *
open_image(const char *path)
{
  struct fde_disk *disk;
  int r;

  params.path = path;
  params.chain = &chain;
  params.fd = open(path, O_RDONLY | O_CLOEXEC);
  if (params.fd == -1) {
    perror(path);
    exit(1);
  }
  r = fde_disk_open(NULL, &params, &disk);
  if (r < 0) {
    fprintf(stderr, "open failed: %s\n", strerror(-r));
    close(params.fd);
    exit(1);
  }
  return disk;
}

/* Dump thread: blocks index, index+threads, ... of [start, end). */
static void *
dump_worker(void *arg)
{
  struct job *j = arg;
  char *buf = malloc(j->bs);

  for (uint64_t off = j->start + j->index * (uint64_t) j->bs;
       buf != NULL && off < j->end; off += (uint64_t) j->threads * j->bs) {
    size_t n = j->end - off < j->bs ? j->end - off : j->bs;
    int r = j->disk->format->pread(j->disk, buf, n, off);
    if (r < 0) {
      fprintf(stderr, "pread %zu at %" PRIu64 ": %s\n", n, off, strerror(-r));
      j->failed = 1;
      break;
    }
    if (fde_pwrite_full(j->out_fd, buf, n, off - j->start) < 0) {
      perror("write");
      j->failed = 1;
      break;
    }
  }
  free(buf);
  return NULL;
}

/* A small xorshift generator, one per thread. */
static uint64_t
next_rand(uint64_t *s)
{
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

/* Random thread: reads of mixed sizes compared with the reference. */
static void *
random_worker(void *arg)
{
  struct job *j = arg;
  uint64_t s = j->seed * 0x9e3779b97f4a7c15ull + j->index + 1;
  char *a = malloc(4 << 20), *b = malloc(4 << 20);
  uint64_t size = j->disk->size;

  for (uint64_t i = j->index; a && b && size && i < j->nr_random;
       i += j->threads) {
    uint64_t max = next_rand(&s) % 4 == 0 ? 4 << 20 : 70000;
    uint64_t off = next_rand(&s) % size;
    size_t len = 1 + next_rand(&s) % max;
    if (next_rand(&s) % 3 == 0)
      off &= ~(uint64_t) 4095;
    if (len > size - off)
      len = size - off;
    int r = j->disk->format->pread(j->disk, a, len, off);
    if (r < 0 || fde_pread_full(j->out_fd, b, len, off) < 0
        || memcmp(a, b, len) != 0) {
      fprintf(stderr, "MISMATCH read %zu at %" PRIu64 " (r=%d)\n", len, off,
              r);
      j->failed = 1;
      break;
    }
  }
  free(a);
  free(b);
  return NULL;
}

/* Run fn on nr_threads threads over copies of proto. */
static int
run_threads(void *(*fn)(void *), const struct job *proto)
{
  pthread_t tid[64];
  struct job jobs[64];
  int failed = 0;

  for (unsigned i = 0; i < nr_threads; i++) {
    jobs[i] = *proto;
    jobs[i].index = i;
    jobs[i].threads = nr_threads;
    pthread_create(&tid[i], NULL, fn, &jobs[i]);
  }
  for (unsigned i = 0; i < nr_threads; i++) {
    pthread_join(tid[i], NULL);
    failed |= jobs[i].failed;
  }
  return failed;
}

/* Print merged block-status runs as "offset length data|zero". */
static int
print_status(struct fde_disk *d)
{
  uint64_t off = 0, start = 0;
  unsigned prev = ~0u;

  while (off < d->size) {
    uint64_t run;
    unsigned st;
    int r = d->format->block_status(d, off, d->size - off, &run, &st);
    if (r < 0 || run == 0 || run > d->size - off) {
      fprintf(stderr, "block_status at %" PRIu64 ": r=%d run=%" PRIu64 "\n",
              off, r, run);
      return 1;
    }
    if (st != prev && off > 0)
      printf("%" PRIu64 " %" PRIu64 " %s\n", start, off - start,
             prev & FDE_BS_DATA ? "data" : "zero");
    if (st != prev)
      start = off;
    prev = st;
    off += run;
  }
  if (off > 0)
    printf("%" PRIu64 " %" PRIu64 " %s\n", start, off - start,
           prev & FDE_BS_DATA ? "data" : "zero");
  return 0;
}

/* Dump the disk (or the --range) to outfile; print the throughput. */
static int
dump(struct fde_disk *d, const char *outfile)
{
  struct job j = { .disk = d, .bs = block_size, .start = 0, .end = d->size };
  struct timespec t0, t1;
  struct stat st;
  double secs;
  int failed;

  if (have_range) {
    j.start = range_off < d->size ? range_off : d->size;
    j.end = d->size - j.start < range_len ? d->size : j.start + range_len;
  }
  j.out_fd = open(outfile, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (j.out_fd == -1) {
    perror(outfile);
    return 1;
  }
  clock_gettime(CLOCK_MONOTONIC, &t0);
  failed = run_threads(dump_worker, &j);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  if (fstat(j.out_fd, &st) == 0 && S_ISREG(st.st_mode)
      && ftruncate(j.out_fd, (off_t) (j.end - j.start)) == -1)
    failed = 1;
  close(j.out_fd);
  secs = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
  fprintf(stderr, "read %" PRIu64 " bytes in %.3f s (%.1f MiB/s)\n",
          j.end - j.start, secs, (j.end - j.start) / 1048576.0 / secs);
  return failed;
}

/* Parse leading options; returns the index of the first operand. */
static int
parse_opts(int argc, char **argv)
{
  int i = 1;

  for (; i < argc && argv[i][0] == '-' && argv[i][1] == '-' ; i++) {
    const char *o = argv[i];
    if (strcmp(o, "--snapshot") == 0 && i + 1 < argc)
      params.snapshot = argv[++i];
    else if (strcmp(o, "--threads") == 0 && i + 1 < argc)
      nr_threads = atoi(argv[++i]);
    else if (strcmp(o, "--bs") == 0 && i + 1 < argc)
      block_size = strtoull(argv[++i], NULL, 0);
    else if (strcmp(o, "--cache") == 0 && i + 1 < argc)
      params.cache_bytes = strtoull(argv[++i], NULL, 0);
    else if (strcmp(o, "--range") == 0 && i + 2 < argc) {
      range_off = strtoull(argv[++i], NULL, 0);
      range_len = strtoull(argv[++i], NULL, 0);
      have_range = true;
    }
    else if (strcmp(o, "--rw") == 0)
      params.read_only = false;
    else if (strcmp(o, "--verbose") == 0)
      params.verbose = 1;
    else
      break;
  }
  if (nr_threads < 1 || nr_threads > 64 || block_size < 1
      || block_size > (64 << 20)) {
    fprintf(stderr, "bad --threads or --bs\n");
    exit(2);
  }
  return i;
}

int
main(int argc, char **argv)
{
  int i = parse_opts(argc, argv), failed;
  struct fde_disk *d;

  if (argc - i == 2 && strcmp(argv[i], "--status") == 0) {
    d = open_image(argv[i + 1]);
    failed = print_status(d);
  }
  else if (argc - i == 2 && strcmp(argv[i], "--describe") == 0) {
    d = open_image(argv[i + 1]);
    printf("format: %s\nvirtual-size: %" PRIu64 "\n", d->format->name,
           d->size);
    d->format->describe(d, stdout);
    failed = 0;
  }
  else if (argc - i == 5 && strcmp(argv[i], "--random") == 0) {
    struct job j = { .nr_random = strtoull(argv[i + 1], NULL, 0),
                     .seed = strtoull(argv[i + 2], NULL, 0) };
    d = j.disk = open_image(argv[i + 3]);
    j.out_fd = open(argv[i + 4], O_RDONLY | O_CLOEXEC);
    if (j.out_fd == -1) {
      perror(argv[i + 4]);
      return 1;
    }
    failed = run_threads(random_worker, &j);
    close(j.out_fd);
  }
  else if (argc - i == 2 && argv[i][0] != '-') {
    d = open_image(argv[i]);
    failed = dump(d, argv[i + 1]);
  }
  else {
    fprintf(stderr, "usage: see the comment at the top of %s\n", __FILE__);
    return 2;
  }
  fde_disk_close(d);
  return failed ? 1 : 0;
}
