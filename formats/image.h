/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: opening an image to serve it, the one way both front
 * ends do it (the FUSE program, src/export.c, and the nbdkit plugin,
 * plugin/nbdkit-fde-plugin.c): the file opened once and identified by
 * what was opened, its format probed or given, the read-only policy of
 * formats served read-only, the whole backing chain with QEMU's image
 * locks and the owner rule (fde_disk_open), and the layers the caller
 * asks for (the sector-0 guard of a probed raw image, a partition
 * window). */
#ifndef FDE_IMAGE_H
#define FDE_IMAGE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>

#include "format.h"

/* How opening an image ended: the program's exit statuses (man page, EXIT
 * STATUS); the plugin fails nbdkit's start with the message logged. */
enum fde_status {
  FDE_EXIT_OK = 0,
  FDE_EXIT_FAIL = 1,      /* I/O failure, or out of memory */
  FDE_EXIT_USAGE = 2,     /* an option that does not fit the image */
  FDE_EXIT_IMAGE = 3,     /* image unsupported, invalid or refused */
  FDE_EXIT_BUSY = 4,      /* another program holds the image's locks */
};

/* What to open, as the front end's options say it. */
struct fde_image_spec {
  const char *path;           /* the image as given: opened, named in
                               * messages, base of relative backing names */
  const char *format;         /* a served format's name, or NULL: probe */
  bool read_only;             /* open the image for reading only */
  const char *snapshot;       /* qcow2 internal snapshot, or NULL */
  uint64_t cache_bytes;       /* metadata cache per layer (0: default) */
  uint64_t zcache_bytes;      /* decompressed-cluster cache (0: default) */
  unsigned disk;              /* an OVA's disk from 1; 0: the first */
  unsigned partition;         /* a window on partition N; 0: whole disk */
  bool allow_bdev_backing;    /* block devices allowed as backing files */
  int verbose;
  const struct fde_option_names *names;  /* how the front end spells the
                                          * options a message suggests */
};

/* Parse a size as both front ends take one (--cache-size=, cache-size=):
 * decimal bytes, or with a suffix K, M or G (binary: 64M is 64 MiB).
 * 0, or -1 for anything else (a sign, another suffix, an overflow). */
int fde_parse_size(const char *s, uint64_t *out);

/* The largest partition number and OVA disk number either front end
 * takes (--partition=, partition=; --disk=, disk=): far past any table
 * or OVF we accept, which refuse a missing one by name anyway. */
#define FDE_MAX_PARTITION 1000000u
#define FDE_MAX_DISK      1000000u

/* Parse a decimal number from 0 to max as both front ends take one
 * (--partition=, partition=, --stop-timeout=): digits only, no sign, no
 * space, no suffix.  0, or -1 for anything else (an overflow too). */
int fde_parse_number(const char *s, unsigned max, unsigned *out);

/* An image being opened, then open.  Owned by the caller; fde_image_close
 * releases what it holds. */
struct fde_image {
  const struct fde_image_spec *spec;
  int fd;                     /* the image file until the backend owns it
                               * (fde_image_open_disk), else -1 */
  struct stat st;             /* fstat of fd when opened: its identity
                               * (dev, ino), owner and times */
  struct fde_format_match match;   /* the format found or given */
  bool format_read_only;      /* read-only because the format is served
                               * read-only, not because spec said so */
  struct fde_disk *disk;      /* what to serve: the image's disk with its
                               * layers; NULL until fde_image_open_disk */
};

/* Open abspath (spec->path made absolute by the caller) for writing, or
 * for reading when spec->read_only or when its format is served
 * read-only (then without asking for write access at all), check that it
 * is a regular file, and identify its format (spec->format, else the
 * table of formats on its first 4 KiB and last sector).  Nothing is
 * locked yet.  An image that may not be written gets a message naming
 * the read-only option.  FDE_EXIT_OK with img->fd and img->st set, else a
 * status with one line logged and img->fd -1. */
int fde_image_open_file(struct fde_image *img,
                        const struct fde_image_spec *spec,
                        const char *abspath);

/* Open the image's disk on img->fd (which the backend then owns), with
 * its whole backing chain, QEMU's image locks (a reader's for a read-only
 * open) and the owner rule (every file the chain names must be readable
 * by img->st's owner: formats/owner.c), then wrap it in the layers spec
 * asks for: the sector-0 guard when raw was chosen by probing, the window
 * on spec->partition.  Refuses a format recognised but not served, and
 * spec->disk on anything but an OVA.  FDE_EXIT_OK with img->disk set,
 * else a status (FDE_EXIT_BUSY: another program holds the locks) with one
 * line logged and nothing left open but img->fd, if the backend did not
 * take it. */
int fde_image_open_disk(struct fde_image *img);

/* Close the disk (not flushing it: the caller flushes first if it wants
 * the writes) or the file.  Safe on an image whose opening failed, and
 * twice. */
void fde_image_close(struct fde_image *img);

#endif
