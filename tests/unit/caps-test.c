/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: the capability members of format.h and the table of
 * formats, over stub formats in memory:
 *  - a format without can_write is opened read-only by fde_disk_open even
 *    when asked for writing, with QEMU's reader lock bytes only (byte 100
 *    held, 101 "write" not), and a backend that forgets read_only stays
 *    read-only all the same;
 *  - fde_disk_zero uses zero where the disk can, turns a discard it cannot
 *    do into zeroing and zeroing it cannot do into writes of zeros (1 MiB
 *    at a time, errors passed on), and refuses a disk that cannot write;
 *  - layers forward every answer, and lack one the lower disk lacks;
 *  - raw answers as format.h says;
 *  - the table: unique names, served rows named as their backends,
 *    descriptions that fit --help, every refused row with a signature,
 *    and identification (every refused signature refused by its row,
 *    variants, unknown versions, a trailer seen only with the file). */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "layer.h"

#include "check.h"

#define MiB (1u << 20)
#define STUB_SIZE (4 * MiB)

/* ---- A stub disk in memory, counting what it is asked ------------------- */

struct stub_disk {
  struct fde_disk disk;
  uint8_t bytes[STUB_SIZE];
  int fd;                       /* the file it was opened on (not owned) */
  bool opened_read_only;        /* what open was asked */
  unsigned pwrites, zeros, punches;
  size_t largest_pwrite;
  unsigned fail_pwrite;         /* fail this pwrite call (1-based), EIO */
};

#define STUB(d) ((struct stub_disk *) (d))

static int
stub_pread(struct fde_disk *d, void *buf, size_t len, uint64_t off)
{
  memcpy(buf, STUB(d)->bytes + off, len);
  return 0;
}

static int
stub_pwrite(struct fde_disk *d, const void *buf, size_t len, uint64_t off)
{
  struct stub_disk *s = STUB(d);

  if (++s->pwrites == s->fail_pwrite)
    return -EIO;
  if (len > s->largest_pwrite)
    s->largest_pwrite = len;
  memcpy(s->bytes + off, buf, len);
  return 0;
}

static int
stub_zero(struct fde_disk *d, uint64_t off, uint64_t len, unsigned flags)
{
  struct stub_disk *s = STUB(d);

  if (flags & FDE_ZERO_PUNCH)
    s->punches++;
  else
    s->zeros++;
  memset(s->bytes + off, 0, len);
  return 0;
}

static int
stub_flush(struct fde_disk *d)
{
  return 0;
}

static int
stub_block_status(struct fde_disk *d, uint64_t off, uint64_t len,
                  uint64_t *run, unsigned *status)
{
  *run = len;
  *status = FDE_BS_DATA;
  return 0;
}

static uint64_t
stub_allocated(struct fde_disk *d)
{
  return d->size;
}

static void
stub_describe(struct fde_disk *d, FILE *out)
{
}

static void
stub_close(struct fde_disk *d)
{
  free(d);
}

static int
stub_map(struct fde_disk *d, uint64_t off, uint64_t len, int *fd,
         uint64_t *host, uint64_t *run)
{
  *run = len;
  return 0;
}

static bool
stub_yes(struct fde_disk *d)
{
  return true;
}

static bool
stub_can_write(struct fde_disk *d)
{
  return !d->read_only;
}

static const struct fde_format stub_base = {
  .name = "stub",
  .pread = stub_pread, .flush = stub_flush,
  .block_status = stub_block_status, .allocated_bytes = stub_allocated,
  .describe = stub_describe, .close = stub_close,
};

/* A stub disk of format f, outside fde_disk_open. */
static struct stub_disk *
stub_new(const struct fde_format *f, bool read_only)
{
  struct stub_disk *s = calloc(1, sizeof *s);

  if (s == NULL)
    abort();
  s->disk.format = f;
  s->disk.size = STUB_SIZE;
  s->disk.read_only = read_only;
  s->disk.path = "stub";
  s->fd = -1;
  memset(s->bytes, 0xa5, sizeof s->bytes);
  return s;
}

/* The open member: as a backend should, read_only as asked. */
static const struct fde_format *opening;   /* the format being opened */

static int
stub_open(const struct fde_open_params *p, struct fde_disk **out)
{
  struct stub_disk *s = stub_new(opening, p->read_only);

  s->fd = p->fd;
  s->opened_read_only = p->read_only;
  *out = &s->disk;
  return 0;
}

/* A buggy backend: claims to be writable whatever it was asked. */
static int
stub_open_forgetful(const struct fde_open_params *p, struct fde_disk **out)
{
  int r = stub_open(p, out);

  (*out)->read_only = false;
  return r;
}

/* ---- Lock bytes, seen from another open file description ---------------- */

/* Does someone hold a lock on byte of the file named path? */
static bool
byte_locked(const char *path, off_t byte)
{
  struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET,
                      .l_start = byte, .l_len = 1 };
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  bool locked;

  if (fd == -1 || fcntl(fd, F_OFD_GETLK, &fl) == -1) {
    perror(path);
    abort();
  }
  locked = fl.l_type != F_UNLCK;
  close(fd);
  return locked;
}

/* Open a fresh file (named into path) with fde_disk_open and format f,
 * asking for writing unless read_only.  The descriptor is the disk's
 * now: stub_close leaves it, the caller closes it with close_file. */
static struct fde_disk *
open_on_file(const struct fde_format *f, bool read_only, char *path,
             int *fdp)
{
  struct fde_open_params p = { .path = "stub.img", .read_only = read_only };
  struct fde_disk *d = NULL;

  strcpy(path, "/tmp/caps-test-XXXXXX");
  p.fd = mkostemp(path, O_CLOEXEC);
  if (p.fd == -1 || ftruncate(p.fd, STUB_SIZE) == -1) {
    perror("mkostemp");
    abort();
  }
  opening = f;
  CHECK(fde_disk_open(f, &p, &d) == 0);
  *fdp = p.fd;
  return d;
}

static void
close_file(struct fde_disk *d, char *path, int fd)
{
  fde_disk_close(d);
  close(fd);
  unlink(path);
}

/* ---- Tests -------------------------------------------------------------- */

static void
test_read_only_format_opened_read_only(void)
{
  struct fde_format ro = stub_base, rw = stub_base, forgetful;
  char path[64];
  struct fde_disk *d;
  int fd;

  ro.open = stub_open;          /* no can_write: served read-only */
  ro.pwrite = stub_pwrite;      /* present, yet never asked */
  rw = ro;
  rw.can_write = stub_can_write;
  CHECK(fde_format_read_only(&ro) && !fde_format_read_only(&rw));

  d = open_on_file(&ro, false, path, &fd);
  CHECK(STUB(d)->opened_read_only && d->read_only);
  CHECK(!fde_disk_can_write(d) && !fde_disk_can_zero(d));
  CHECK(byte_locked(path, 100) && !byte_locked(path, 101)
        && !byte_locked(path, 102));        /* a reader's bytes only */
  CHECK(byte_locked(path, 201) && byte_locked(path, 203));
  CHECK(fde_disk_zero(d, 0, 4096, 0) == -EROFS
        && STUB(d)->pwrites == 0);
  close_file(d, path, fd);

  /* the same with can_write: a writer's bytes */
  d = open_on_file(&rw, false, path, &fd);
  CHECK(!STUB(d)->opened_read_only && fde_disk_can_write(d));
  CHECK(byte_locked(path, 100) && byte_locked(path, 101));
  close_file(d, path, fd);

  /* -r: read-only, whatever the backend then sets */
  forgetful = rw;
  forgetful.open = stub_open_forgetful;
  d = open_on_file(&forgetful, true, path, &fd);
  CHECK(d->read_only && !fde_disk_can_write(d));
  CHECK(!byte_locked(path, 101));
  close_file(d, path, fd);
}

static void
test_zero_emulated(void)
{
  struct fde_format f = stub_base;
  struct stub_disk *s;
  static const uint8_t zeros[3 * MiB];

  f.pwrite = stub_pwrite;
  f.can_write = stub_can_write;
  f.zero = stub_zero;           /* present, but can_zero says nothing */

  /* neither zero nor discard: writes of zeros, 1 MiB at most each */
  s = stub_new(&f, false);
  CHECK(fde_disk_can_write(&s->disk) && !fde_disk_can_zero(&s->disk)
        && !fde_disk_can_discard(&s->disk));
  CHECK(fde_disk_zero(&s->disk, 4096, 2 * MiB + 512, FDE_ZERO_PUNCH) == 0);
  CHECK(s->pwrites == 3 && s->largest_pwrite == MiB);
  CHECK(s->zeros == 0 && s->punches == 0);
  CHECK(memcmp(s->bytes + 4096, zeros, 2 * MiB + 512) == 0);
  CHECK(s->bytes[4095] == 0xa5 && s->bytes[4096 + 2 * MiB + 512] == 0xa5);
  CHECK(fde_disk_zero(&s->disk, 0, 0, 0) == 0 && s->pwrites == 3);
  /* fast zero (NBD's) is refused rather than written, nothing touched */
  s->bytes[0] = 0xa5;
  CHECK(fde_disk_zero(&s->disk, 0, 4096, FDE_ZERO_FAST) == -ENOTSUP);
  CHECK(fde_disk_zero(&s->disk, 0, 4096, FDE_ZERO_FAST | FDE_ZERO_PUNCH)
        == -ENOTSUP);
  CHECK(s->pwrites == 3 && s->bytes[0] == 0xa5);
  /* a failed write is passed on */
  s->pwrites = 0;
  s->fail_pwrite = 2;
  CHECK(fde_disk_zero(&s->disk, 0, 3 * MiB, 0) == -EIO);
  CHECK(s->pwrites == 2);
  /* opened read-only: nothing is touched */
  s->disk.read_only = true;
  s->pwrites = 0;
  CHECK(fde_disk_zero(&s->disk, 0, 512, FDE_ZERO_PUNCH) == -EROFS && s->pwrites == 0);
  stub_close(&s->disk);

  /* zero but no discard: a discard becomes zeroing */
  f.can_zero = stub_yes;
  s = stub_new(&f, false);
  CHECK(fde_disk_can_zero(&s->disk) && !fde_disk_can_discard(&s->disk));
  CHECK(fde_disk_zero(&s->disk, 0, 3 * MiB, FDE_ZERO_PUNCH) == 0);
  CHECK(s->zeros == 1 && s->punches == 0 && s->pwrites == 0);
  CHECK(memcmp(s->bytes, zeros, 3 * MiB) == 0);
  stub_close(&s->disk);

  /* both: each as asked */
  f.can_discard = stub_yes;
  s = stub_new(&f, false);
  CHECK(fde_disk_zero(&s->disk, 0, 512, FDE_ZERO_PUNCH) == 0 && s->punches == 1);
  CHECK(fde_disk_zero(&s->disk, 0, 512, 0) == 0 && s->zeros == 1);
  CHECK(s->pwrites == 0);
  stub_close(&s->disk);

  /* a can_zero that says yes without a zero member is not believed */
  f.zero = NULL;
  s = stub_new(&f, false);
  CHECK(!fde_disk_can_zero(&s->disk) && !fde_disk_can_discard(&s->disk));
  CHECK(fde_disk_zero(&s->disk, 0, 512, FDE_ZERO_PUNCH) == 0 && s->pwrites == 1);
  stub_close(&s->disk);
}

/* "an image header": a sector starting with "IMG!" */
static bool
looks_like_image(const uint8_t *sector, size_t len)
{
  return len >= 4 && memcmp(sector, "IMG!", 4) == 0;
}

static void
test_layers_forward(void)
{
  struct fde_format f = stub_base, ro = stub_base;
  struct fde_disk *w, *g;
  struct stub_disk *s;

  f.pwrite = stub_pwrite;
  f.zero = stub_zero;
  f.map = stub_map;
  f.can_write = stub_can_write;
  f.can_zero = stub_yes;
  f.can_map = stub_yes;         /* no can_discard */
  s = stub_new(&f, false);
  CHECK(fde_partition_open(&s->disk, 1, MiB, MiB, &w) == 0);
  CHECK(fde_disk_can_write(w) && fde_disk_can_zero(w)
        && !fde_disk_can_discard(w) && fde_disk_can_map(w));
  CHECK(w->format->can_discard == NULL);
  /* a discard through the window is zeroing below, shifted */
  CHECK(fde_disk_zero(w, 0, 4096, FDE_ZERO_PUNCH) == 0);
  CHECK(s->zeros == 1 && s->punches == 0 && s->bytes[MiB] == 0
        && s->bytes[MiB - 1] == 0xa5);
  fde_disk_close(w);

  /* opened read-only below: read-only through the layer */
  s = stub_new(&f, true);
  CHECK(fde_partition_open(&s->disk, 1, 0, MiB, &w) == 0);
  CHECK(!fde_disk_can_write(w) && !fde_disk_can_zero(w)
        && fde_disk_can_map(w));
  fde_disk_close(w);

  /* a read-only format: no can_write through the layer either */
  ro.pwrite = stub_pwrite;
  s = stub_new(&ro, false);     /* even with the flag left clear */
  CHECK(fde_partition_open(&s->disk, 1, 0, MiB, &w) == 0);
  CHECK(w->format->can_write == NULL && !fde_disk_can_write(w));
  CHECK(fde_disk_zero(w, 0, 512, 0) == -EROFS && s->pwrites == 0);
  fde_disk_close(w);

  /* emulated zeroing goes through the top layer: the guard sees it */
  f.zero = NULL;
  f.can_zero = NULL;
  s = stub_new(&f, false);
  memcpy(s->bytes, "IMG?", 4);
  CHECK(fde_guard_open(&s->disk, "stub", "-f raw", looks_like_image, NULL, &g) == 0);
  CHECK(!fde_disk_can_zero(g) && g->format->zero == NULL);
  CHECK(fde_disk_zero(g, 0, 2 * MiB, 0) == 0);
  CHECK(s->pwrites == 2 && s->bytes[0] == 0 && s->bytes[2 * MiB - 1] == 0);
  fde_disk_close(g);
}

static void
test_raw_answers(void)
{
  char path[64];
  struct fde_disk *d;
  int fd;

  d = open_on_file(&fde_format_raw, false, path, &fd);
  CHECK(fde_disk_can_write(d) && fde_disk_can_zero(d)
        && fde_disk_can_discard(d) && fde_disk_can_map(d));
  CHECK(!fde_format_read_only(&fde_format_raw)
        && !fde_format_read_only(&fde_format_qcow2));
  fde_disk_close(d);
  unlink(path);
  d = open_on_file(&fde_format_raw, true, path, &fd);
  CHECK(!fde_disk_can_write(d) && !fde_disk_can_zero(d)
        && !fde_disk_can_discard(d) && fde_disk_can_map(d));
  fde_disk_close(d);
  unlink(path);
}

static void
test_table_rows(void)
{
  size_t served = 0;

  CHECK(fde_format_table_len > 2);
  for (size_t i = 0; i < fde_format_table_len; i++) {
    const struct fde_format_info *row = &fde_format_table[i];
    bool has_magic = row->tail_magic != NULL;
    CHECK(row->name != NULL && row->title != NULL
          && row->description != NULL);
    CHECK(strlen(row->description) > 0 && strlen(row->description) <= 54
          && strchr(row->description, '\n') == NULL);
    for (size_t j = 0; j < i; j++)
      CHECK(strcmp(fde_format_table[j].name, row->name) != 0);
    CHECK(fde_format_info_by_name(row->name) == row);
    CHECK(fde_format_by_name(row->name) == row->backend);
    for (size_t k = 0; k < FDE_FORMAT_MAGICS; k++)
      has_magic = has_magic || row->magic[k].len > 0;
    if (row->backend == NULL) {
      CHECK(has_magic);         /* else it could never be refused */
      continue;
    }
    served++;
    CHECK(strcmp(row->backend->name, row->name) == 0);
    CHECK(row->backend->probe != NULL && row->backend->open != NULL
          && row->backend->pread != NULL && row->backend->close != NULL);
  }
  CHECK(served >= 2);
  CHECK(fde_format_by_name("raw") == &fde_format_raw);
  CHECK(fde_format_by_name("no-such-format") == NULL);
  CHECK(fde_format_info_by_name("no-such-format") == NULL);
}

/* Identify a 4 KiB head holding bytes (len) at off, else zeros. */
static struct fde_format_match
identify_with(const char *bytes, size_t len, size_t off, int fd)
{
  uint8_t head[4096] = { 0 };

  memcpy(head + off, bytes, len);
  return fde_format_identify(head, sizeof head, fd);
}

static void
test_identify(void)
{
  static const uint8_t zeros[4096];
  struct fde_format_match m;
  char path[64];
  int fd;

  m = identify_with("", 0, 0, -1);
  CHECK(m.format == &fde_format_raw && strcmp(m.info->name, "raw") == 0);
  CHECK(!fde_format_head_is_image(zeros, sizeof zeros));
  m = identify_with("QFI\xfb\0\0\0\x03", 8, 0, -1);
  CHECK(m.format == &fde_format_qcow2 && strcmp(m.what, "qcow2") == 0);
  m = identify_with("QFI\xfb\0\0\0\x01", 8, 0, -1);
  CHECK(m.format == NULL && strcmp(m.what, "qcow (version 1)") == 0);
  m = identify_with("QFI\xfb\0\0\0\x04", 8, 0, -1);
  CHECK(m.format == NULL && strcmp(m.what, "qcow2 (unknown version)") == 0
        && strcmp(m.info->name, "qcow2") == 0);
  m = identify_with("QED\0", 4, 0, -1);
  CHECK(m.format == NULL && strcmp(m.what, "QED") == 0);

  /* every signature of every refused row is refused by that row */
  for (size_t i = 0; i < fde_format_table_len; i++) {
    const struct fde_format_info *row = &fde_format_table[i];
    for (size_t k = 0; row->backend == NULL && k < FDE_FORMAT_MAGICS; k++) {
      const struct fde_magic *mg = &row->magic[k];
      if (mg->len == 0)
        continue;
      m = identify_with(mg->bytes, mg->len, mg->offset, -1);
      CHECK(m.format == NULL && m.info == row);
      if (m.info != row)
        fprintf(stderr, "  signature %zu of %s identified as %s\n", k,
                row->name, m.info != NULL ? m.info->name : "nothing");
      CHECK(strstr(m.what, row->title) != NULL
            || (mg->variant != NULL && strcmp(m.what, mg->variant) == 0));
      uint8_t head[4096] = { 0 };
      memcpy(head + mg->offset, mg->bytes, mg->len);
      CHECK(fde_format_head_is_image(head, sizeof head));
    }
  }

  /* DMG's trailer: seen with the file, not from the head alone */
  strcpy(path, "/tmp/caps-test-XXXXXX");
  fd = mkostemp(path, O_CLOEXEC);
  CHECK(fd != -1 && ftruncate(fd, MiB) == 0
        && pwrite(fd, "koly", 4, MiB - 512) == 4);
  m = identify_with("", 0, 0, fd);
  CHECK(m.format == NULL && strcmp(m.what, "DMG") == 0);
  m = identify_with("", 0, 0, -1);
  CHECK(m.format == &fde_format_raw);
  close(fd);
  unlink(path);
}

int
main(void)
{
  test_read_only_format_opened_read_only();
  test_zero_emulated();
  test_layers_forward();
  test_raw_answers();
  test_table_rows();
  test_identify();
  if (failures > 0) {
    fprintf(stderr, "caps-test: %d checks failed\n", failures);
    return 1;
  }
  printf("caps-test: all checks passed\n");
  return 0;
}
