/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: the list of served formats, probing between them, and
 * opening one layer of a chain with loop and depth checks. */
#include <config.h>

#include <errno.h>
#include <string.h>
#include <sys/stat.h>

#include "format.h"

static const struct fde_format *const formats[] = {
  &fde_format_qcow2,
  &fde_format_raw,
};
#define NR_FORMATS (sizeof formats / sizeof formats[0])

const struct fde_format *
fde_format_by_name(const char *name)
{
  for (size_t i = 0; i < NR_FORMATS; i++)
    if (strcmp(formats[i]->name, name) == 0)
      return formats[i];
  return NULL;
}

const struct fde_format *
fde_format_probe(const uint8_t *buf, size_t len)
{
  const struct fde_format *best = &fde_format_raw;
  int best_score = 0;

  for (size_t i = 0; i < NR_FORMATS; i++) {
    int score = formats[i]->probe(buf, len);
    if (score > best_score) {
      best = formats[i];
      best_score = score;
    }
  }
  return best;
}

static int open_layer(const struct fde_format *format,
                      const struct fde_open_params *params,
                      struct fde_disk **out);

/* Record the layer's (dev, ino); refuse a repeat or one layer too many. */
static int
chain_record(const struct fde_open_params *params)
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

int
fde_disk_open(const struct fde_format *format,
              const struct fde_open_params *params, struct fde_disk **out)
{
  struct fde_chain *chain = params->chain;
  bool nested = chain != NULL && chain->depth > 0;
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

/* fde_disk_open for one layer: record it, lock it, probe, open. */
static int
open_layer(const struct fde_format *format,
           const struct fde_open_params *params, struct fde_disk **out)
{
  int r = chain_record(params);

  if (r < 0 || (r = fde_lock_image(params->fd, params->path,
                                   !params->read_only)) < 0)
    return r;
  if (format == NULL) {
    uint8_t buf[512];
    r = fde_pread_full(params->fd, buf, sizeof buf, 0);
    if (r < 0) {
      fde_error("%s: read: %s", params->path, strerror(-r));
      return r;
    }
    format = fde_format_probe(buf, sizeof buf);
  }
  return format->open(params, out);
}

void
fde_disk_close(struct fde_disk *disk)
{
  if (disk != NULL)
    disk->format->close(disk);
}
