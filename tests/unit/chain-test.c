/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: the contract of formats/chain.h that the format
 * backends rely on, checked without qcow2: reading, block status and map
 * through a lower disk in memory (clipped at its end, zeros past it and
 * without one), and opening a lower layer from files in a private
 * directory (name resolution as QEMU does it, protocol and control
 * character refusals, recorded and probed formats, loops with and
 * without a caller's chain, the depth cap, files of other types) and the
 * describe lines.  The qcow2 suites check the same logic end to end with
 * qemu-img as the oracle. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chain.h"

#include "check.h"

/* ---- A lower disk in memory: byte i is i*7+1; data in the first half --- */

struct mem_disk {
  struct fde_disk disk;
  uint8_t *bytes;
  int calls;                    /* calls of any member */
};

#define MEM(d) ((struct mem_disk *) (d))

/* Every call must stay inside the disk: the chain clips for it. */
static void
note(struct fde_disk *d, uint64_t off, uint64_t len)
{
  if (len == 0 || off > d->size || len > d->size - off) {
    fprintf(stderr, "called outside the lower disk: %llu+%llu\n",
            (unsigned long long) off, (unsigned long long) len);
    abort();
  }
  MEM(d)->calls++;
}

static int
mem_pread(struct fde_disk *d, void *buf, size_t len, uint64_t off)
{
  note(d, off, len);
  memcpy(buf, MEM(d)->bytes + off, len);
  return 0;
}

static int
mem_block_status(struct fde_disk *d, uint64_t off, uint64_t len,
                 uint64_t *run, unsigned *status)
{
  uint64_t half = d->size / 2;

  note(d, off, len);
  *status = off < half ? FDE_BS_DATA : FDE_BS_ZERO;
  *run = off < half && half - off < len ? half - off : len;
  return 0;
}

/* The whole disk is "file 42" at host offset off + 1000. */
static int
mem_map(struct fde_disk *d, uint64_t off, uint64_t len, int *fd,
        uint64_t *host, uint64_t *run)
{
  note(d, off, len);
  *fd = 42;
  *host = off + 1000;
  *run = len;
  return 1;
}

static void
mem_describe(struct fde_disk *d, FILE *out)
{
  fprintf(out, "mem: yes\n");
}

/* can_map: yes for mem_format; no for mem_format_mapoff, which has a map
 * member all the same (the chain must ask fde_disk_can_map, not look at
 * the member). */
static bool
mem_can_map(struct fde_disk *d)
{
  return d->format->map != NULL && strcmp(d->format->name, "mem") == 0;
}

static const struct fde_format mem_format = {
  .name = "mem", .pread = mem_pread, .block_status = mem_block_status,
  .describe = mem_describe, .map = mem_map, .can_map = mem_can_map,
};
static const struct fde_format mem_format_mapoff = {
  .name = "mem-mapoff", .pread = mem_pread, .block_status = mem_block_status,
  .describe = mem_describe, .map = mem_map, .can_map = mem_can_map,
};
static const struct fde_format mem_format_nomap = {
  .name = "mem", .pread = mem_pread, .block_status = mem_block_status,
  .describe = mem_describe,
};

static struct mem_disk *
mem_new(uint64_t size, const struct fde_format *format)
{
  struct mem_disk *m = calloc(1, sizeof *m);

  m->disk.format = format;
  m->disk.size = size;
  m->disk.path = "dir/lo\x01wer";
  m->bytes = malloc(size);
  for (uint64_t i = 0; i < size; i++)
    m->bytes[i] = (uint8_t) (i * 7 + 1);
  return m;
}

static void
mem_free(struct mem_disk *m)
{
  free(m->bytes);
  free(m);
}

/* ---- Reading through ------------------------------------------------------ */

static void
test_read(void)
{
  struct mem_disk *m = mem_new(1000, &mem_format);
  uint8_t buf[600];
  bool ok = true;

  CHECK(fde_chain_lower_part(NULL, 0, 10) == 0);
  CHECK(fde_chain_lower_part(&m->disk, 0, 10) == 10);
  CHECK(fde_chain_lower_part(&m->disk, 900, 300) == 100);
  CHECK(fde_chain_lower_part(&m->disk, 1000, 300) == 0);
  CHECK(fde_chain_lower_part(&m->disk, UINT64_MAX, UINT64_MAX) == 0);

  /* across the end: the lower's bytes, then zeros */
  memset(buf, 0xee, sizeof buf);
  CHECK(fde_chain_read_lower(&m->disk, buf, sizeof buf, 700) == 0);
  for (size_t i = 0; i < sizeof buf; i++)
    ok &= buf[i] == (i < 300 ? (uint8_t) ((700 + i) * 7 + 1) : 0);
  CHECK(ok);

  /* past the end, and without a lower disk: zeros, no call */
  m->calls = 0;
  memset(buf, 0xee, sizeof buf);
  CHECK(fde_chain_read_lower(&m->disk, buf, sizeof buf, 5000) == 0);
  CHECK(m->calls == 0);
  memset(buf + 1, 0xee, sizeof buf - 1);
  CHECK(fde_chain_read_lower(NULL, buf + 1, sizeof buf - 1, 0) == 0);
  ok = true;
  for (size_t i = 0; i < sizeof buf; i++)
    ok &= buf[i] == 0;
  CHECK(ok);
  mem_free(m);
}

static void
test_status(void)
{
  struct mem_disk *m = mem_new(1000, &mem_format);
  uint64_t run = 0;
  unsigned st = 0;

  /* the lower's own run */
  CHECK(fde_chain_status_lower(&m->disk, 100, 800, &run, &st) == 0);
  CHECK(run == 400 && st == FDE_BS_DATA);
  /* clipped at its end: the rest is asked again by the caller */
  CHECK(fde_chain_status_lower(&m->disk, 600, 4000, &run, &st) == 0);
  CHECK(run == 400 && st == FDE_BS_ZERO);
  /* past its end and without one: one run of zeros, no call */
  m->calls = 0;
  CHECK(fde_chain_status_lower(&m->disk, 1000, 4000, &run, &st) == 0);
  CHECK(run == 4000 && st == FDE_BS_ZERO && m->calls == 0);
  CHECK(fde_chain_status_lower(NULL, 0, 77, &run, &st) == 0);
  CHECK(run == 77 && st == FDE_BS_ZERO);
  mem_free(m);
}

static void
test_map(void)
{
  struct mem_disk *m = mem_new(1000, &mem_format);
  struct mem_disk *n = mem_new(1000, &mem_format_nomap);
  struct mem_disk *o = mem_new(1000, &mem_format_mapoff);
  uint64_t host = 0, run = 0;
  int fd = -1;

  CHECK(fde_chain_map_lower(&m->disk, 900, 500, &fd, &host, &run) == 1);
  CHECK(fd == 42 && host == 1900 && run == 100);
  run = 0;
  m->calls = 0;
  CHECK(fde_chain_map_lower(&m->disk, 1000, 500, &fd, &host, &run) == 0);
  CHECK(run == 500 && m->calls == 0);
  CHECK(fde_chain_map_lower(&n->disk, 0, 500, &fd, &host, &run) == 0);
  CHECK(run == 500 && n->calls == 0);
  /* a map member, but the disk says it cannot map: read through pread */
  run = 0;
  CHECK(fde_chain_map_lower(&o->disk, 0, 500, &fd, &host, &run) == 0);
  CHECK(run == 500 && o->calls == 0);
  CHECK(fde_chain_map_lower(NULL, 0, 64, &fd, &host, &run) == 0);
  CHECK(run == 64);
  mem_free(m);
  mem_free(n);
  mem_free(o);
}

static void
test_describe(void)
{
  struct mem_disk *m = mem_new(1000, &mem_format);
  char *text = NULL;
  size_t size = 0;
  FILE *out = open_memstream(&text, &size);

  fde_chain_describe(NULL, true, out);
  fde_chain_describe(&m->disk, true, out);
  fde_chain_describe(&m->disk, false, out);
  fclose(out);
  CHECK(strcmp(text,
               "backing-file: dir/lo?wer\n"
               "backing-format: mem (probed)\n"
               "backing:\n"
               "  format: mem\n"
               "  virtual-size: 1000\n"
               "  mem: yes\n"
               "backing-file: dir/lo?wer\n"
               "backing-format: mem\n"
               "backing:\n"
               "  format: mem\n"
               "  virtual-size: 1000\n"
               "  mem: yes\n") == 0);
  free(text);
  mem_free(m);
}

/* ---- Opening, in a private directory -------------------------------------- */

static char dir[] = "/tmp/fde-chain-test.XXXXXX";

/* dir/name with content (len bytes); its full path in path (64 bytes). */
static void
make_file(const char *name, const void *content, size_t len, char *path)
{
  int fd;

  snprintf(path, 64, "%s/%s", dir, name);
  fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd == -1 || write(fd, content, len) != (ssize_t) len || close(fd) == -1) {
    perror(path);
    exit(1);
  }
}

/* Open params for image file path (opened read-only). */
static struct fde_open_params
params_for(const char *path, struct fde_chain *chain)
{
  struct fde_open_params p = { .path = path, .read_only = true,
                               .chain = chain };

  p.fd = open(path, O_RDONLY | O_CLOEXEC);
  if (p.fd == -1) {
    perror(path);
    exit(1);
  }
  if (chain != NULL) {
    *chain = (struct fde_chain) { .depth = 0 };
    if (fde_chain_record(&p) != 0)
      exit(1);
  }
  return p;
}

/* fde_chain_open_backing from image path: its result, and the layer's
 * path and format name (lpath: 128 bytes, lformat: 16; "" for none). */
static int
open_from(const char *image, struct fde_chain *chain, const char *name,
          const char *format, char *lpath, char *lformat)
{
  static struct fde_disk stale;
  struct fde_open_params p = params_for(image, chain);
  struct fde_disk *lower = &stale;      /* must be overwritten */
  int r = fde_chain_open_backing(&p, name, format, "backing file", &lower);

  lpath[0] = lformat[0] = '\0';
  CHECK(lower != &stale);
  CHECK(r == 0 || lower == NULL);
  if (lower != NULL && lower != &stale) {
    snprintf(lpath, 128, "%s", lower->path);
    snprintf(lformat, 16, "%s", lower->format->name);
    fde_disk_close(lower);
  }
  close(p.fd);
  return r;
}

static void
test_open(void)
{
  static const uint8_t qcow2_magic[512] = { 'Q', 'F', 'I', 0xfb, 0, 0, 0, 3 };
  char top[64], base[64], colon[64], qlike[64], lpath[128], lfmt[16];
  struct fde_chain chain;
  char want[128];

  make_file("top", "top", 3, top);
  make_file("base.raw", "base", 4, base);
  make_file("foo:bar", "colon", 5, colon);
  make_file("qlike", qcow2_magic, sizeof qcow2_magic, qlike);

  /* no name: no layer */
  CHECK(open_from(top, &chain, NULL, "raw", lpath, lfmt) == 0 && !*lpath);
  CHECK(open_from(top, &chain, "", NULL, lpath, lfmt) == 0 && !*lpath);
  /* relative to the image's directory; absolute as it is */
  CHECK(open_from(top, &chain, "base.raw", "raw", lpath, lfmt) == 0);
  CHECK(strcmp(lpath, base) == 0 && strcmp(lfmt, "raw") == 0);
  CHECK(open_from(top, &chain, base, NULL, lpath, lfmt) == 0);
  CHECK(strcmp(lpath, base) == 0 && strcmp(lfmt, "raw") == 0);
  snprintf(want, sizeof want, "%s/./foo:bar", dir);
  CHECK(open_from(top, &chain, "./foo:bar", "raw", lpath, lfmt) == 0);
  CHECK(strcmp(lpath, want) == 0);
  /* a recorded format is used as it is; none: probed */
  CHECK(open_from(top, &chain, "qlike", "raw", lpath, lfmt) == 0);
  CHECK(strcmp(lfmt, "raw") == 0);
  CHECK(open_from(top, &chain, "qlike", NULL, lpath, lfmt) < 0);
  /* a recorded format the table refuses (qed), or does not know */
  CHECK(open_from(top, &chain, "base.raw", "qed", lpath, lfmt) == -ENOTSUP);
  CHECK(open_from(top, &chain, "base.raw", "nosuch", lpath, lfmt)
        == -ENOTSUP);
  /* protocol names, control characters, missing files, other types */
  CHECK(open_from(top, &chain, "foo:bar", "raw", lpath, lfmt) == -ENOTSUP);
  CHECK(open_from(top, &chain, "nbd:localhost:10809", "raw", lpath, lfmt)
        == -ENOTSUP);
  CHECK(open_from(top, &chain, "base\t.raw", "raw", lpath, lfmt) == -EINVAL);
  CHECK(open_from(top, &chain, "gone", "raw", lpath, lfmt) == -ENOENT);
  CHECK(open_from(top, &chain, "/dev/null", "raw", lpath, lfmt) == -EINVAL);
  CHECK(open_from(top, &chain, ".", "raw", lpath, lfmt) == -EINVAL);
  /* loops: with the caller's chain, and with none (one is started) */
  CHECK(open_from(top, &chain, "top", "raw", lpath, lfmt) == -ELOOP);
  CHECK(open_from(top, NULL, "top", "raw", lpath, lfmt) == -ELOOP);
  CHECK(open_from(top, NULL, "base.raw", "raw", lpath, lfmt) == 0);
  unlink(top);
  unlink(base);
  unlink(colon);
  unlink(qlike);
}

/* The depth cap: FDE_MAX_CHAIN layers recorded, the next one refused. */
static void
test_depth(void)
{
  char path[64];
  struct fde_chain chain = { .depth = 0 };
  struct fde_open_params p = { .path = path, .chain = &chain };
  int fds[FDE_MAX_CHAIN + 1];

  for (int i = 0; i <= FDE_MAX_CHAIN; i++) {
    char name[16];
    snprintf(name, sizeof name, "l%02d", i);
    make_file(name, "x", 1, path);
    fds[i] = p.fd = open(path, O_RDONLY | O_CLOEXEC);
    CHECK(fde_chain_record(&p) == (i < FDE_MAX_CHAIN ? 0 : -ELOOP));
    unlink(path);
  }
  CHECK(chain.depth == FDE_MAX_CHAIN);
  p.fd = fds[3];
  chain.depth = 5;              /* the same file again: a loop */
  CHECK(fde_chain_record(&p) == -ELOOP);
  for (int i = 0; i <= FDE_MAX_CHAIN; i++)
    close(fds[i]);
}

/* Symlinks (formats/owner.c): an extent's that stays in the image's
 * directory opens, one leading out is -EXDEV; a backing name through a
 * /proc magic link is -ELOOP, a file on procfs -EINVAL.  p is the image
 * dir/top, ext the regular file dir/s001.vmdk. */
static void
test_open_file_links(const struct fde_open_params *p, const char *ext)
{
  char in[64], out[64], *path = NULL;
  struct fde_disk *lower = NULL;
  int fd;

  snprintf(in, sizeof in, "%s/in-link", dir);
  snprintf(out, sizeof out, "%s/out-link", dir);
  CHECK(symlink("s001.vmdk", in) == 0 && symlink(ext, out) == 0);
  fd = fde_chain_open_file(p, "in-link", "extent file", &path);
  CHECK(fd >= 0);
  if (fd >= 0)
    close(fd);
  free(path);
  CHECK(fde_chain_open_file(p, "out-link", "extent file", &path) == -EXDEV);
  CHECK(path == NULL);
  CHECK(fde_chain_open_backing(p, "/proc/self/cwd", "raw", "backing file",
                               &lower) == -ELOOP && lower == NULL);
  CHECK(fde_chain_open_backing(p, "/proc/version", "raw", "backing file",
                               &lower) == -EINVAL && lower == NULL);
  unlink(in);
  unlink(out);
}

/* An extent is opened beneath the directory the image was opened from,
 * not whatever its name names later: the image dir/sub/top opened, then
 * sub swapped for a symlink to a directory holding another s.vmdk (and
 * no top): -ESTALE, nothing opened.  With sub back, the extent opens. */
static void
test_open_file_swapped(void)
{
  char sub[64], old[64], other[64], name[96], *path = NULL;
  struct fde_open_params p;
  int fd;

  snprintf(sub, sizeof sub, "%s/sub", dir);
  snprintf(old, sizeof old, "%s/sub.old", dir);
  snprintf(other, sizeof other, "%s/other", dir);
  CHECK(mkdir(sub, 0700) == 0 && mkdir(other, 0700) == 0);
  make_file("sub/top", "top", 3, name);
  make_file("sub/s.vmdk", "mine", 4, name);
  make_file("other/s.vmdk", "secret", 6, name);
  snprintf(name, sizeof name, "%s/top", sub);
  p = params_for(name, NULL);
  CHECK(rename(sub, old) == 0 && symlink("other", sub) == 0);
  fd = fde_chain_open_file(&p, "s.vmdk", "extent file", &path);
  CHECK(fd == -ESTALE && path == NULL);
  if (fd >= 0)
    close(fd);
  CHECK(unlink(sub) == 0 && rename(old, sub) == 0);
  fd = fde_chain_open_file(&p, "s.vmdk", "extent file", &path);
  CHECK(fd >= 0);
  if (fd >= 0) {
    char buf[4];
    CHECK(pread(fd, buf, 4, 0) == 4 && memcmp(buf, "mine", 4) == 0);
    close(fd);
  }
  free(path);
  close(p.fd);
  snprintf(name, sizeof name, "%s/top", sub);
  unlink(name);
  snprintf(name, sizeof name, "%s/s.vmdk", sub);
  unlink(name);
  snprintf(name, sizeof name, "%s/s.vmdk", other);
  unlink(name);
  rmdir(sub);
  rmdir(other);
}

/* fde_chain_open_file: the descriptor and the resolved name. */
static void
test_open_file(void)
{
  char top[64], ext[64], *path = NULL;
  struct fde_open_params p;
  int fd;

  make_file("top", "top", 3, top);
  make_file("s001.vmdk", "extent", 6, ext);
  p = params_for(top, NULL);
  fd = fde_chain_open_file(&p, "s001.vmdk", "extent file", &path);
  CHECK(fd >= 0 && path != NULL && strcmp(path, ext) == 0);
  if (fd >= 0) {
    char buf[6];
    CHECK(pread(fd, buf, 6, 0) == 6 && memcmp(buf, "extent", 6) == 0);
    CHECK(fcntl(fd, F_GETFD) == FD_CLOEXEC);
    close(fd);
  }
  free(path);
  path = (char *) "stale";
  CHECK(fde_chain_open_file(&p, "http://x", "extent file", &path) == -ENOTSUP);
  CHECK(path == NULL);
  test_open_file_links(&p, ext);
  close(p.fd);
  unlink(top);
  unlink(ext);
}

int
main(void)
{
  if (mkdtemp(dir) == NULL) {
    perror("mkdtemp");
    return 1;
  }
  test_read();
  test_status();
  test_map();
  test_describe();
  test_open();
  test_depth();
  test_open_file();
  test_open_file_swapped();
  rmdir(dir);
  if (failures > 0) {
    fprintf(stderr, "chain-test: %d checks failed\n", failures);
    return 1;
  }
  printf("chain-test: all checks passed\n");
  return 0;
}
