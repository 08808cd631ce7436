/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: opening an image to serve it (formats/image.h), shared
 * by the FUSE program and the nbdkit plugin. */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "image.h"
#include "layer.h"

int
fde_parse_size(const char *s, uint64_t *out)
{
  char *end;
  uint64_t v, mult = 1;

  errno = 0;
  if (*s < '0' || *s > '9')     /* strtoull takes spaces and signs */
    return -1;
  v = strtoull(s, &end, 10);
  if (errno != 0 || end == s)
    return -1;
  switch (*end) {
  case 'k': case 'K': mult = 1ULL << 10; end++; break;
  case 'm': case 'M': mult = 1ULL << 20; end++; break;
  case 'g': case 'G': mult = 1ULL << 30; end++; break;
  case '\0': break;
  default: return -1;
  }
  if (*end != '\0' || v > UINT64_MAX / mult)
    return -1;
  *out = v * mult;
  return 0;
}

int
fde_parse_number(const char *s, unsigned max, unsigned *out)
{
  char *end;
  unsigned long long v;

  errno = 0;
  if (*s < '0' || *s > '9')     /* strtoull takes spaces and signs */
    return -1;
  v = strtoull(s, &end, 10);
  if (errno != 0 || *end != '\0' || v > max)
    return -1;
  *out = (unsigned) v;
  return 0;
}

/* Why opening the image for writing failed (err), said once it is known
 * that the image's format would have written; a status. */
static int
open_failed(const struct fde_image_spec *spec, int err)
{
  if (!spec->read_only && geteuid() == 0
      && (err == EACCES || err == EROFS || err == EPERM))
    fde_error("%s: %s (use %s for a read-only export)", spec->path,
              strerror(err), spec->names->read_only);
  else
    fde_error("%s: %s", spec->path, strerror(err));
  return err == EISDIR ? FDE_EXIT_IMAGE : FDE_EXIT_FAIL;
}

/* Open abspath for writing, or for reading when spec says so.  Where
 * writing is not permitted, open it for reading anyway and store the
 * reason in *write_err: an image in a format served read-only needs no
 * more (fde_image_open_file decides).  O_NONBLOCK so that a FIFO cannot
 * hang us (cleared by the caller).  The descriptor, or -1 with errno. */
static int
open_for_serving(const struct fde_image_spec *spec, const char *abspath,
                 int *write_err)
{
  int flags = O_CLOEXEC | O_NONBLOCK, fd;

  *write_err = 0;
  if (spec->read_only)
    return open(abspath, O_RDONLY | flags);
  fd = open(abspath, O_RDWR | flags);
  if (fd == -1 && (errno == EACCES || errno == EROFS || errno == EPERM)) {
    *write_err = errno;
    fd = open(abspath, O_RDONLY | flags);
    if (fd == -1)
      errno = *write_err;
  }
  return fd;
}

/* A descriptor of fd's file open for reading only (a new open file
 * description of the same file, through /proc: no name is looked up
 * again), fd closed; fd itself if /proc cannot give one. */
static int
reopen_read_only(int fd)
{
  char proc[40];
  int ro;

  snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
  ro = open(proc, O_RDONLY | O_CLOEXEC);
  if (ro == -1)
    return fd;
  close(fd);
  return ro;
}

/* The image's format: spec->format (front ends accept only served
 * names), else what the table of formats makes of its first bytes
 * (m->format NULL: recognised but refused; fde_image_open_disk says
 * so).  A status. */
static int
identify(const struct fde_image_spec *spec, int fd,
         struct fde_format_match *m)
{
  uint8_t head[4096];
  int r;

  if (spec->format != NULL) {
    *m = (struct fde_format_match) {
      .info = fde_format_info_by_name(spec->format),
      .format = fde_format_by_name(spec->format),
    };
    return FDE_EXIT_OK;
  }
  r = fde_pread_full(fd, head, sizeof head, 0);
  if (r < 0) {
    fde_error("%s: read: %s", spec->path, strerror(-r));
    return FDE_EXIT_FAIL;
  }
  *m = fde_format_identify(head, sizeof head, fd);
  if (m->error < 0) {
    fde_error("%s: reading its last sector to probe its format: %s",
              spec->path, strerror(-m->error));
    return FDE_EXIT_FAIL;
  }
  return FDE_EXIT_OK;
}

int
fde_image_open_file(struct fde_image *img, const struct fde_image_spec *spec,
                    const char *abspath)
{
  int write_err, r, fd;

  memset(img, 0, sizeof *img);
  img->spec = spec;
  img->fd = -1;
  if ((fd = open_for_serving(spec, abspath, &write_err)) == -1)
    return open_failed(spec, errno);
  if (fstat(fd, &img->st) == -1 || !S_ISREG(img->st.st_mode)
      || fcntl(fd, F_SETFL, 0) == -1) {
    fde_error("%s: not a regular file", spec->path);
    close(fd);
    return FDE_EXIT_IMAGE;
  }
  if ((r = identify(spec, fd, &img->match)) != FDE_EXIT_OK) {
    close(fd);
    return r;
  }
  img->format_read_only = !spec->read_only && img->match.format != NULL
    && fde_format_read_only(img->match.format);
  if (write_err != 0 && !img->format_read_only) {
    close(fd);
    return open_failed(spec, write_err);
  }
  if (img->format_read_only && write_err == 0)
    fd = reopen_read_only(fd);
  img->fd = fd;
  return FDE_EXIT_OK;
}

/* The format to serve the image with, or a status for one we recognise
 * and refuse, or a --disk on anything but an OVA. */
static int
choose_format(const struct fde_image *img, const struct fde_format **fmt)
{
  const struct fde_image_spec *spec = img->spec;

  if (img->match.format == NULL) {
    fde_error("%s: %s images are not supported; convert it with "
              "'qemu-img convert -O qcow2 %s NEW.qcow2', or use %s "
              "to export its bytes as they are", spec->path, img->match.what,
              spec->path, spec->names->format_raw);
    return FDE_EXIT_IMAGE;
  }
  *fmt = img->match.format;
  if (spec->disk > 0 && *fmt != &fde_format_ova) {
    fde_error("%s: %s%u is for OVA appliances, and this is %s %s image",
              spec->path, spec->names->disk, spec->disk,
              fde_article(fde_format_title(*fmt)), fde_format_title(*fmt));
    return FDE_EXIT_USAGE;
  }
  return FDE_EXIT_OK;
}

/* Wrap img->disk in the layers spec asks for: the guard on sector 0 and
 * the last sector over the whole disk of a probed raw image (so that it
 * also guards a partition starting at sector 0), then the window on
 * spec->partition.  On failure the disk is closed.  A status. */
static int
add_layers(struct fde_image *img, bool probed_raw)
{
  const struct fde_image_spec *spec = img->spec;
  unsigned n = spec->partition;
  struct fde_disk *top;
  uint64_t start, size;
  int r = 0;

  if (probed_raw) {
    r = fde_guard_open(img->disk, spec->path, spec->names->format_raw,
                       fde_format_head_is_image,
                       fde_format_tail_is_image, &top);
    if (r < 0)
      fde_error("%s: %s", spec->path, strerror(-r));
    else
      img->disk = top;
  }
  if (r == 0 && n > 0
      && (r = fde_partition_find(img->disk, spec->path, n, &start,
                                 &size)) == 0) {     /* find logs its errors */
    r = fde_partition_open(img->disk, n, start, size, &top);
    if (r < 0)
      fde_error("%s: partition %u: %s", spec->path, n, strerror(-r));
    else
      img->disk = top;
  }
  if (r == 0)
    return FDE_EXIT_OK;
  fde_disk_close(img->disk);
  img->disk = NULL;
  return r == -ENOMEM || r == -EIO ? FDE_EXIT_FAIL : FDE_EXIT_IMAGE;
}

int
fde_image_open_disk(struct fde_image *img)
{
  const struct fde_image_spec *spec = img->spec;
  const struct fde_format *fmt;
  struct fde_chain chain = { 0 };
  int r;

  if ((r = choose_format(img, &fmt)) != FDE_EXIT_OK)
    return r;
  struct fde_open_params params = {
    .path = spec->path, .fd = img->fd,
    .read_only = spec->read_only || img->format_read_only,
    .snapshot = spec->snapshot, .cache_bytes = spec->cache_bytes,
    .zcache_bytes = spec->zcache_bytes, .disk = spec->disk,
    .allow_bdev_backing = spec->allow_bdev_backing,
    .verbose = spec->verbose, .chain = &chain, .names = spec->names,
    /* what is served is the owner's: every file the chain names must be */
    .owner = fde_owner_of(img->st.st_uid, img->st.st_gid),
  };
  r = fde_disk_open(fmt, &params, &img->disk);
  if (r < 0) {
    /* -EADDRINUSE: another program holds the image's locks.  -ENOMEM is
     * the image's: open allocates what its metadata asks for (the
     * backend has said so in one line), so it is refused as too big. */
    return r == -EIO ? FDE_EXIT_FAIL : r == -EADDRINUSE ? FDE_EXIT_BUSY
      : FDE_EXIT_IMAGE;
  }
  img->fd = -1;                 /* the backend owns it now */
  return add_layers(img, spec->format == NULL && fmt == &fde_format_raw);
}

void
fde_image_close(struct fde_image *img)
{
  if (img->disk != NULL)
    fde_disk_close(img->disk);
  else if (img->fd != -1)
    close(img->fd);
  img->disk = NULL;
  img->fd = -1;
}
