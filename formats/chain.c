/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: backing chains (see chain.h): resolving and opening
 * the layer an image names, the loop and depth checks, and reading,
 * mapping and describing through to a lower layer. */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chain.h"

/* ---- Opening ------------------------------------------------------------ */

int
fde_chain_record(const struct fde_open_params *params)
{
  struct fde_chain *chain = params->chain;
  struct stat st;

  if (chain == NULL)
    return 0;
  if (fstat(params->fd, &st) == -1) {
    int err = errno;
    fde_error("%s: fstat: %s", params->path, strerror(err));
    return -err;
  }
  for (unsigned i = 0; i < chain->depth; i++) {
    if (chain->dev[i] == st.st_dev && chain->ino[i] == st.st_ino) {
      fde_error("%s: backing chain loops back to an image already in the chain",
                params->path);
      return -ELOOP;
    }
  }
  if (chain->depth >= FDE_MAX_CHAIN) {
    fde_error("%s: backing chain deeper than %d images", params->path,
              FDE_MAX_CHAIN);
    return -ELOOP;
  }
  chain->dev[chain->depth] = st.st_dev;
  chain->ino[chain->depth] = st.st_ino;
  chain->depth++;
  return 0;
}

/* A name an image stores must not hide anything from a message or a
 * path: no NUL (the backend's copy ended there) or control character. */
static int
check_name(const struct fde_open_params *p, const char *name,
           const char *what)
{
  for (const char *c = name; *c != '\0'; c++) {
    if ((unsigned char) *c < 0x20 || *c == 0x7f) {
      fde_error("%s: %s name contains a NUL or control character", p->path,
                what);
      return -EINVAL;
    }
  }
  return 0;
}

/* Resolve name as QEMU does, lexically: an absolute name as it is, a
 * relative one against the directory of the image's path as given.
 * Protocol names (QEMU's path_has_protocol: a ':' before any '/', as in
 * "nbd:", "json:", "foo:bar") are refused.  *out is malloc'd. */
static int
resolve_name(const struct fde_open_params *p, const char *name,
             const char *what, char **out)
{
  const char *colon = strchr(name, ':');
  const char *slash = strchr(name, '/');
  const char *last;

  *out = NULL;
  if (colon != NULL && (slash == NULL || colon < slash)) {
    fde_error("%s: %s '%s' uses a protocol or json: syntax, which "
              "is not supported", p->path, what, name);
    return -ENOTSUP;
  }
  last = strrchr(p->path, '/');
  if (name[0] == '/' || last == NULL)
    *out = strdup(name);
  else if (asprintf(out, "%.*s/%s", (int) (last - p->path), p->path,
                    name) == -1)
    *out = NULL;
  return *out == NULL ? -ENOMEM : 0;
}

/* Resolve name and open it (fde_chain_open_file; beneath: it must stay
 * in the image's directory, else any name but a magic link). */
static int
open_file(const struct fde_open_params *params, const char *name,
          const char *what, bool beneath, char **path)
{
  int r;

  *path = NULL;
  if ((r = check_name(params, name, what)) < 0
      || (r = resolve_name(params, name, what, path)) < 0)
    return r;
  /* the shared opener: read-only, a regular file on no pseudo file
   * system, readable by the image's owner when someone else exports it
   * (formats/owner.c); *path ends with name (resolve_name) */
  if ((r = fde_open_named(params, what, *path, beneath
                          ? *path + strlen(*path) - strlen(name)
                          : NULL)) < 0) {
    free(*path);
    *path = NULL;
  }
  return r;
}

int
fde_chain_open_file(const struct fde_open_params *params, const char *name,
                    const char *what, char **path)
{
  return open_file(params, name, what, true, path);
}

/* The format the image records: a served format (QEMU opens any format
 * it has a driver for), or NULL (*fmt) to probe between them when it
 * records none.  A name not served is refused, not probed. */
static int
recorded_format(const struct fde_open_params *p, const char *name,
                const struct fde_format **fmt)
{
  char names[256];

  *fmt = NULL;
  if (name == NULL)
    return 0;
  if ((*fmt = fde_format_by_name(name)) != NULL)
    return 0;
  fde_error("%s: backing format '%s' is not supported (only %s)", p->path,
            name, fde_format_served_names(names, sizeof names));
  return -ENOTSUP;
}

/* Start a chain for loop detection when the caller gave none: record the
 * naming image ourselves. */
static int
local_chain(const struct fde_open_params *p, struct fde_chain *chain)
{
  struct stat st;

  if (fstat(p->fd, &st) == -1)
    return -errno;
  chain->top = p->path;
  chain->depth = 1;
  chain->dev[0] = st.st_dev;
  chain->ino[0] = st.st_ino;
  return 0;
}

/* Open the lower layer on fd (resolved name path) with format fmt (NULL:
 * probe), through fde_disk_open, which records it in the chain. */
static int
open_lower(const struct fde_open_params *p, const struct fde_format *fmt,
           int fd, const char *path, struct fde_disk **lower)
{
  struct fde_open_params cp = *p;
  struct fde_chain local;
  int r;

  if (cp.chain == NULL) {
    if ((r = local_chain(p, &local)) < 0)
      return r;
    cp.chain = &local;
  }
  cp.path = path;
  cp.fd = fd;
  cp.read_only = true;
  cp.snapshot = NULL;
  return fde_disk_open(fmt, &cp, lower);
}

int
fde_chain_open_backing(const struct fde_open_params *params,
                       const char *name, const char *format,
                       const char *what, struct fde_disk **lower)
{
  const struct fde_format *fmt;
  char *path;
  int fd, r;

  *lower = NULL;
  if (name == NULL || name[0] == '\0')
    return 0;
  if ((r = recorded_format(params, format, &fmt)) < 0
      || (fd = r = open_file(params, name, what, false, &path)) < 0)
    return r;
  r = open_lower(params, fmt, fd, path, lower);
  if (r < 0) {
    close(fd);
    *lower = NULL;
  }
  else if (fmt == NULL && params->verbose > 0)
    fde_warn("%s: %s %s has no recorded format; probed as %s",
             params->path, what, path, (*lower)->format->name);
  free(path);
  return r;
}

/* ---- Reading through ---------------------------------------------------- */

uint64_t
fde_chain_lower_part(const struct fde_disk *lower, uint64_t off,
                     uint64_t len)
{
  if (lower == NULL || off >= lower->size)
    return 0;
  return lower->size - off < len ? lower->size - off : len;
}

int
fde_chain_read_lower(struct fde_disk *lower, void *buf, size_t len,
                     uint64_t off)
{
  uint64_t n = fde_chain_lower_part(lower, off, len);
  int r;

  if (n > 0 && (r = lower->format->pread(lower, buf, n, off)) < 0)
    return r;
  memset((char *) buf + n, 0, len - n);
  return 0;
}

int
fde_chain_status_lower(struct fde_disk *lower, uint64_t off, uint64_t len,
                       uint64_t *run, unsigned *status)
{
  uint64_t below = fde_chain_lower_part(lower, off, len);

  if (below == 0) {
    *run = len;
    *status = FDE_BS_ZERO;
    return 0;
  }
  return lower->format->block_status(lower, off, below, run, status);
}

int
fde_chain_map_lower(struct fde_disk *lower, uint64_t off, uint64_t len,
                    int *fd, uint64_t *host, uint64_t *run)
{
  uint64_t below = fde_chain_lower_part(lower, off, len);

  *run = len;
  if (below == 0 || !fde_disk_can_map(lower))
    return 0;                   /* zeros below, or no file to splice from */
  return lower->format->map(lower, off, below, fd, host, run);
}

/* ---- Describing --------------------------------------------------------- */

void
fde_print_safe(FILE *out, const char *s)
{
  for (; *s; s++)
    fputc((unsigned char) *s < 0x20 || *s == 0x7f ? '?' : *s, out);
}

void
fde_chain_describe(struct fde_disk *lower, bool probed, FILE *out)
{
  char *text = NULL;
  size_t size = 0;
  FILE *mem;

  if (lower == NULL)
    return;
  fputs("backing-file: ", out);
  fde_print_safe(out, lower->path);
  fprintf(out, "\nbacking-format: %s%s\n", lower->format->name,
          probed ? " (probed)" : "");
  mem = open_memstream(&text, &size);
  if (mem == NULL)
    return;
  fprintf(mem, "format: %s\nvirtual-size: %" PRIu64 "\n",
          lower->format->name, lower->size);
  lower->format->describe(lower, mem);
  fclose(mem);
  fputs("backing:\n", out);
  for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n"))
    fprintf(out, "  %s\n", line);
  free(text);
}
