/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* nbdkit-fde-plugin: fuse-disk-export's format backends served over NBD
 * by nbdkit (man/nbdkit-fde-plugin.1).
 *
 * The image is opened once, in .get_ready (before nbdkit forks into the
 * background and before it accepts a connection), by the same code as
 * the FUSE program (formats/image.h): its format probed or given, its
 * whole backing chain, QEMU's image locks, the owner rule, the partition
 * window.  So a refused image stops nbdkit at start with the backend's
 * one-line message, and the locks are held from then until nbdkit exits.
 * Every connection serves that one disk: a flush covers the writes of
 * every connection, so multi-conn is safe (.can_multi_conn).  The
 * backends are thread safe (the FUSE program serves them from many
 * threads), so the thread model is parallel.  .unload flushes and
 * closes: a clean nbdkit exit leaves the image consistent. */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "format.h"
#include "image.h"

/* Extents added by one .extents call at most: the client asks again for
 * the rest (nbdkit needs one; a very fragmented image need not be walked
 * whole for one request). */
#define MAX_EXTENTS 1024

/* The parameters, in the order fde_config_help lists them. */
enum { K_FILE, K_FORMAT, K_READONLY, K_SNAPSHOT, K_CACHE_SIZE,
       K_DECOMPRESSED_CACHE, K_ALLOW_BDEV, K_PARTITION, K_DISK, K_COUNT };
static const char *const keys[K_COUNT] = {
  "file", "format", "readonly", "snapshot", "cache-size",
  "decompressed-cache", "allow-block-device-backing", "partition", "disk",
};

/* What the command line said (config), then the image (get_ready).
 * nbdkit's plugin interface has no per-plugin handle, so this is the
 * plugin's one global; connections' handles point at its disk. */
static struct {
  char *given[K_COUNT];         /* each parameter's value (malloc'd), or
                                 * NULL: parsed once all are known */
  char *file;                   /* absolute, from nbdkit_absolute_path */
  const char *log_context;      /* fde_log_context's image, or NULL */
  struct fde_image_spec spec;
  struct fde_image image;       /* image.disk: what is served */
} plugin = { .image = { .fd = -1 } };

/* -D fde.verbose=1: the notes the program prints with -v (a backing
 * file's probed format, a VHDX log replayed...), through nbdkit's debug
 * messages (which -v shows).  nbdkit sets it before .config. */
NBDKIT_DLL_PUBLIC int fde_debug_verbose = 0;

/* How this plugin's parameters are spelled, for the library's messages. */
static const struct fde_option_names plugin_option_names = {
  .read_only = "readonly=true", .format_raw = "format=raw",
  .disk = "disk=", .snapshot = "snapshot=",
};

/* ---- Messages: the library's fde_error... through nbdkit ---------------- */

/* One line to nbdkit's log; an error also becomes the failing request's
 * message.  nbdkit has no warning level: warnings are logged as errors
 * would be (they are rare and worth seeing), info and debug need -v. */
static void
vlog_error(const char *prefix, const char *fmt, va_list ap)
{
  const char *ctx = plugin.log_context;
  char line[1024];

  vsnprintf(line, sizeof line, fmt, ap);
  nbdkit_error("%s%s%s%s", prefix, ctx ? ctx : "", ctx ? ": " : "", line);
}

void
fde_error(const char *fmt, ...)
{
  va_list ap;

  va_start(ap, fmt);
  vlog_error("", fmt, ap);
  va_end(ap);
}

void
fde_warn(const char *fmt, ...)
{
  va_list ap;

  va_start(ap, fmt);
  vlog_error("warning: ", fmt, ap);
  va_end(ap);
}

void
fde_info(const char *fmt, ...)
{
  va_list ap;

  va_start(ap, fmt);
  nbdkit_vdebug(fmt, ap);
  va_end(ap);
}

void
fde_debug(const char *fmt, ...)
{
  va_list ap;

  va_start(ap, fmt);
  nbdkit_vdebug(fmt, ap);
  va_end(ap);
}

/* A message about a layer deep in the chain names the served image
 * first, as the program's do.  Opens happen in .get_ready, before any
 * connection thread exists. */
void
fde_log_context(const char *image)
{
  plugin.log_context = image;
}

/* ---- Configuration ------------------------------------------------------ */

static void
fde_unload(void)
{
  struct fde_disk *d = plugin.image.disk;

  if (d != NULL && fde_disk_can_write(d) && d->format->flush(d) < 0)
    nbdkit_error("%s: the final flush failed: writes since the last "
                 "successful flush may be lost", plugin.spec.path);
  fde_image_close(&plugin.image);
  free(plugin.file);
  plugin.file = NULL;
  for (int k = 0; k < K_COUNT; k++) {
    free(plugin.given[k]);
    plugin.given[k] = NULL;
  }
}

/* A boolean as nbdkit spells one (nbdkit_parse_bool, whose own message
 * would not name the parameter).  0, or -1 with one line logged. */
static int
parse_bool(int k, bool *out)
{
  static const char *const yes[] = { "1", "true", "yes", "on" };
  static const char *const no[] = { "0", "false", "no", "off" };
  const char *v = plugin.given[k];

  for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++)
    if (strcasecmp(v, yes[i]) == 0 || strcasecmp(v, no[i]) == 0) {
      *out = strcasecmp(v, yes[i]) == 0;
      return 0;
    }
  nbdkit_error("%s=%s: not a boolean (true or false)", keys[k], v);
  return -1;
}

/* A size as the program takes one (fde_parse_size); nonzero: 0 refused.
 * 0, or -1 with one line logged. */
static int
parse_size(int k, bool nonzero, uint64_t *out)
{
  const char *v = plugin.given[k];

  if (fde_parse_size(v, out) < 0) {
    nbdkit_error("%s=%s: not a size (bytes, or a number with K, M or G)",
                 keys[k], v);
    return -1;
  }
  if (nonzero && *out == 0) {
    nbdkit_error("%s=%s: must be more than 0", keys[k], v);
    return -1;
  }
  return 0;
}

/* A number from 1 to max (fde_parse_number).  0, or -1 with one line
 * logged. */
static int
parse_number(int k, unsigned max, unsigned *out)
{
  const char *v = plugin.given[k];

  if (fde_parse_number(v, max, out) < 0 || *out == 0) {
    nbdkit_error("%s=%s: not a number from 1 to %u", keys[k], v, max);
    return -1;
  }
  return 0;
}

static int
parse_format(const char *value)
{
  char names[256];

  if (fde_format_by_name(value) == NULL) {
    nbdkit_error("format=%s: not a format this plugin serves (it serves "
                 "%s)", value, fde_format_served_names(names, sizeof names));
    return -1;
  }
  plugin.spec.format = value;
  return 0;
}

/* Keep each parameter's value; they are parsed once all are known
 * (fde_config_complete).  A parameter given twice is refused: the last
 * one winning would serve another image than the first file= named. */
static int
fde_config(const char *key, const char *value)
{
  int k = 0;

  while (k < K_COUNT && strcmp(key, keys[k]) != 0)
    k++;
  if (k == K_COUNT) {
    nbdkit_error("unknown parameter '%s' (see nbdkit-fde-plugin(1))", key);
    return -1;
  }
  if (plugin.given[k] != NULL) {
    nbdkit_error("%s= given twice (%s and %s)", key, plugin.given[k], value);
    return -1;
  }
  if ((plugin.given[k] = strdup(value)) == NULL) {
    nbdkit_error("strdup: %m");
    return -1;
  }
  return 0;
}

static int
fde_config_complete(void)
{
  struct fde_image_spec *s = &plugin.spec;
  char **g = plugin.given;

  if (g[K_FILE] == NULL || g[K_FILE][0] == '\0') {
    nbdkit_error(g[K_FILE] ? "file=: an empty image name"
                 : "file=IMAGE is required");
    return -1;
  }
  if ((plugin.file = nbdkit_absolute_path(g[K_FILE])) == NULL)
    return -1;
  if ((g[K_FORMAT] && parse_format(g[K_FORMAT]) < 0)
      || (g[K_READONLY] && parse_bool(K_READONLY, &s->read_only) < 0)
      || (g[K_CACHE_SIZE] && parse_size(K_CACHE_SIZE, false,
                                        &s->cache_bytes) < 0)
      || (g[K_DECOMPRESSED_CACHE]
          && parse_size(K_DECOMPRESSED_CACHE, true, &s->zcache_bytes) < 0)
      || (g[K_ALLOW_BDEV] && parse_bool(K_ALLOW_BDEV,
                                        &s->allow_bdev_backing) < 0)
      || (g[K_PARTITION] && parse_number(K_PARTITION, FDE_MAX_PARTITION,
                                         &s->partition) < 0)
      || (g[K_DISK] && parse_number(K_DISK, FDE_MAX_DISK, &s->disk) < 0))
    return -1;
  s->path = plugin.file;
  s->snapshot = g[K_SNAPSHOT];
  if (s->snapshot != NULL)      /* a snapshot is served read-only */
    s->read_only = true;
  s->names = &plugin_option_names;
  s->verbose = fde_debug_verbose;
  return 0;
}

#define fde_config_help \
  "file=IMAGE                  (required) the disk image to serve\n" \
  "format=FORMAT               its format (default: probed)\n" \
  "readonly=BOOL               open the image for reading only\n" \
  "snapshot=NAME|ID            serve a qcow2 internal snapshot (read-only)\n" \
  "cache-size=SIZE             qcow2 metadata cache per layer\n" \
  "decompressed-cache=SIZE     cache of decompressed clusters and grains\n" \
  "allow-block-device-backing=BOOL  block devices as backing files\n" \
  "partition=N                 serve partition N of the disk\n" \
  "disk=N                      serve disk N of an OVA appliance"

/* Open the image (see the top of the file). */
static int
fde_get_ready(void)
{
  int r = fde_image_open_file(&plugin.image, &plugin.spec, plugin.file);

  if (r == FDE_EXIT_OK)
    r = fde_image_open_disk(&plugin.image);
  if (r != FDE_EXIT_OK) {
    fde_image_close(&plugin.image);
    return -1;                  /* the message is logged */
  }
  if (plugin.image.format_read_only)
    nbdkit_debug("%s: %s images are served read-only",
                 plugin.spec.path, plugin.image.disk->format->name);
  return 0;
}

static void
fde_dump_plugin(void)
{
  char names[256];

  printf("fde_version=%s\n", PACKAGE_VERSION);
  printf("fde_formats=%s\n", fde_format_served_names(names, sizeof names));
}

/* ---- Connections and requests ------------------------------------------ */

static void *
fde_open(int readonly)
{
  (void) readonly;              /* nbdkit refuses writes on its own then */
  return plugin.image.disk;
}

static int64_t
fde_get_size(void *handle)
{
  struct fde_disk *d = handle;

  return (int64_t) d->size;     /* at most FDE_MAX_DISK_LENGTH */
}

static int
fde_can_write(void *handle)
{
  return fde_disk_can_write(handle);
}

/* Zeroing the backend cannot do natively is left to nbdkit, which writes
 * zeros; fast zero (NBD_CMD_FLAG_FAST_ZERO) is offered where zeroing is
 * native, and fde_zero refuses the requests that would write. */
static int
fde_can_zero(void *handle)
{
  return fde_disk_can_zero(handle);
}

static int
fde_can_fast_zero(void *handle)
{
  return fde_disk_can_zero(handle);
}

static int
fde_can_trim(void *handle)
{
  return fde_disk_can_discard(handle);
}

static int
fde_can_flush(void *handle)
{
  (void) handle;
  return 1;
}

/* Writes without FUA are flushed by .flush; nbdkit turns FUA into one. */
static int
fde_can_fua(void *handle)
{
  (void) handle;
  return NBDKIT_FUA_EMULATE;
}

static int
fde_can_extents(void *handle)
{
  struct fde_disk *d = handle;

  return d->format->block_status != NULL;
}

/* One disk for every connection: a flush on any covers them all. */
static int
fde_can_multi_conn(void *handle)
{
  (void) handle;
  return 1;
}

/* A failed request: errno for the client, the message already logged by
 * the backend where it had one. */
static int
failed(int r)
{
  nbdkit_set_error(-r);
  return -1;
}

static int
fde_pread(void *handle, void *buf, uint32_t count, uint64_t offset,
          uint32_t flags)
{
  struct fde_disk *d = handle;
  int r = d->format->pread(d, buf, count, offset);

  (void) flags;
  return r < 0 ? failed(r) : 0;
}

static int
fde_pwrite(void *handle, const void *buf, uint32_t count, uint64_t offset,
           uint32_t flags)
{
  struct fde_disk *d = handle;
  int r = d->format->pwrite(d, buf, count, offset);

  (void) flags;                 /* FUA: nbdkit flushes (fde_can_fua) */
  return r < 0 ? failed(r) : 0;
}

/* NBD's zero: may-trim lets the backend deallocate; fast zero fails with
 * ENOTSUP, nothing changed, where the backend would write zeros (a
 * partial qcow2 cluster, a file system without fallocate). */
static int
fde_zero(void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  unsigned zf = (flags & NBDKIT_FLAG_MAY_TRIM ? FDE_ZERO_PUNCH : 0)
    | (flags & NBDKIT_FLAG_FAST_ZERO ? FDE_ZERO_FAST : 0);
  int r = fde_disk_zero(handle, offset, count, zf);

  return r < 0 ? failed(r) : 0;
}

/* A trim deallocates where the backend can (fde_can_trim); the range
 * then reads as zeros, more than NBD asks. */
static int
fde_trim(void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  int r = fde_disk_zero(handle, offset, count, FDE_ZERO_PUNCH);

  (void) flags;
  return r < 0 ? failed(r) : 0;
}

static int
fde_flush(void *handle, uint32_t flags)
{
  struct fde_disk *d = handle;
  int r = fde_disk_can_write(d) ? d->format->flush(d) : 0;

  (void) flags;
  return r < 0 ? failed(r) : 0;
}

/* Block status as NBD's base:allocation: a range allocated nowhere in the
 * chain is a hole, one known to read as zeros is zero (qemu-img map's
 * data and zero, as qemu-nbd reports them). */
static int
fde_extents(void *handle, uint32_t count, uint64_t offset, uint32_t flags,
            struct nbdkit_extents *extents)
{
  struct fde_disk *d = handle;
  uint64_t end = offset + count;

  for (int n = 0; offset < end && n < MAX_EXTENTS; n++) {
    uint64_t run;
    unsigned status;
    int r = d->format->block_status(d, offset, end - offset, &run, &status);
    if (r < 0)
      return failed(r);
    uint32_t type = (status & FDE_BS_DATA ? 0 : NBDKIT_EXTENT_HOLE)
      | (status & FDE_BS_ZERO ? NBDKIT_EXTENT_ZERO : 0);
    if (nbdkit_add_extent(extents, offset, run, type) == -1)
      return -1;
    offset += run;
    if (flags & NBDKIT_FLAG_REQ_ONE)
      break;
  }
  return 0;
}

static struct nbdkit_plugin fde_plugin = {
  .name = "fde",
  .longname = "fuse-disk-export's format backends",
  .version = PACKAGE_VERSION,
  .description = "Serve a disk image (qcow2 with its backing chain, VMDK, "
    "VHD, VHDX, VDI, OVA, raw) as a raw disk",
  .magic_config_key = "file",
  .config = fde_config,
  .config_complete = fde_config_complete,
  .config_help = fde_config_help,
  .get_ready = fde_get_ready,
  .unload = fde_unload,
  .dump_plugin = fde_dump_plugin,
  .open = fde_open,
  .get_size = fde_get_size,
  .can_write = fde_can_write,
  .can_zero = fde_can_zero,
  .can_fast_zero = fde_can_fast_zero,
  .can_trim = fde_can_trim,
  .can_flush = fde_can_flush,
  .can_fua = fde_can_fua,
  .can_extents = fde_can_extents,
  .can_multi_conn = fde_can_multi_conn,
  .pread = fde_pread,
  .pwrite = fde_pwrite,
  .zero = fde_zero,
  .trim = fde_trim,
  .flush = fde_flush,
  .extents = fde_extents,
};

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL
NBDKIT_REGISTER_PLUGIN(fde_plugin)
