/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: opening one layer of a chain (its loop and depth
 * checks: chain.c), with the format given or probed by the table of
 * formats (formats-table.c). */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include <sys/stat.h>

#include "chain.h"
#include "format.h"

/* The list of formats, and probing between them, are in the table of
 * formats (formats-table.c): a new format is one row there. */

static int open_layer(const struct fde_format *format,
                      const struct fde_open_params *params,
                      struct fde_disk **out);

const struct fde_option_names fde_program_option_names = {
  .read_only = "-r", .format_raw = "-f raw", .disk = "--disk=",
  .snapshot = "--snapshot=",
};

const struct fde_option_names *
fde_option_names_of(const struct fde_open_params *params)
{
  return params->names != NULL ? params->names : &fde_program_option_names;
}

int
fde_disk_open(const struct fde_format *format,
              const struct fde_open_params *params, struct fde_disk **out)
{
  struct fde_chain *chain = params->chain;
  /* a layer deep in the chain is named after the exported image, unless
   * it has the same name (a chain looping back to the top) */
  bool nested = chain != NULL && chain->depth > 0 && chain->top != NULL
                && strcmp(chain->top, params->path) != 0;
  int r;

  if (chain != NULL && chain->depth == 0)
    chain->top = params->path;
  if (nested)
    fde_log_context(chain->top);
  r = open_layer(format, params, out);
  if (nested)
    fde_log_context(NULL);
  return r;
}

/* The format of the layer params->fd is open on, by the table: a
 * served one, or -ENOTSUP (logged) for one we recognise and refuse. */
static int
probe_layer(const struct fde_open_params *params,
            const struct fde_format **format)
{
  struct fde_format_match m;
  uint8_t buf[512];
  int r = fde_pread_full(params->fd, buf, sizeof buf, 0);

  if (r < 0) {
    fde_error("%s: read: %s", params->path, strerror(-r));
    return r;
  }
  m = fde_format_identify(buf, sizeof buf, params->fd);
  if (m.error < 0) {
    fde_error("%s: reading its last sector to probe its format: %s",
              params->path, strerror(-m.error));
    return m.error;
  }
  if (m.format == NULL) {
    fde_error("%s: %s images are not supported", params->path, m.what);
    return -ENOTSUP;
  }
  *format = m.format;
  return 0;
}

/* fde_disk_open for one layer: record it, probe, lock, open.  A format
 * served read-only is opened, and locked, as a reader's even when
 * params asks for writing; a disk opened read-only stays read-only
 * whatever the backend sets (fde_disk_can_write reads the flag). */
static int
open_layer(const struct fde_format *format,
           const struct fde_open_params *params, struct fde_disk **out)
{
  struct fde_open_params p = *params;
  int r = fde_chain_record(params);

  if (r == 0 && format == NULL)
    r = probe_layer(params, &format);
  if (r < 0)
    return r;
  if (p.snapshot != NULL && !format->has_snapshots) {
    fde_error("%s: %s images have no internal snapshots (%s%s)", p.path,
              fde_format_title(format), fde_option_names_of(params)->snapshot,
              p.snapshot);
    return -EINVAL;
  }
  p.read_only = params->read_only || fde_format_read_only(format);
  if ((r = fde_lock_image(p.fd, p.path, !p.read_only)) < 0
      || (r = format->open(&p, out)) < 0)
    return r;
  if ((*out)->size > FDE_MAX_DISK_LENGTH) {     /* as QEMU, every format */
    fde_error("%s: the %s disk is %" PRIu64 " bytes, larger than the %"
              PRIu64 " bytes QEMU opens (BDRV_MAX_LENGTH)", p.path,
              format->name, (*out)->size, FDE_MAX_DISK_LENGTH);
    fde_disk_close(*out);
    *out = NULL;
    return -EFBIG;
  }
  if (p.read_only)
    (*out)->read_only = true;
  return 0;
}

void
fde_disk_close(struct fde_disk *disk)
{
  if (disk != NULL)
    disk->format->close(disk);
}
