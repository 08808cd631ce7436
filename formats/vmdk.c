/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: the VMDK backend, read-only.
 *
 * VMware's "Virtual Disk Format 5.0" as QEMU's block/vmdk.c reads it; the
 * reference is ../shared/reference/formats.md, section 2.  A VMDK image is
 *  - a single sparse file ("KDMV": monolithicSparse, streamOptimized; or
 *    "COWD"), whose embedded descriptor QEMU reads only for CID,
 *    parentCID and parentFileNameHint (at byte 0x200, whatever the header
 *    says) -- unless its capacity is 0, when the embedded text is read
 *    as a descriptor file;
 *  - or a text descriptor file (monolithicFlat, twoGbMaxExtentFlat,
 *    twoGbMaxExtentSparse, vmfs, vmfsSparse) naming extents: FLAT and
 *    VMFS extents are raw bytes of a file, SPARSE and VMFSSPARSE ones are
 *    sparse files (formats/vmdk-sparse.c reads their grain tables).  The
 *    disk is the extents one after the other; a sparse extent's size is
 *    its header's capacity, not the descriptor's count (as QEMU).
 * A delta disk names its parent in parentFileNameHint: it is opened
 * through formats/chain.c (probed; it must be a VMDK, whose CID must be
 * the delta's parentCID), and unallocated grains read from it.
 *
 * Extent files are opened by fde_chain_open_file: relative to the
 * descriptor's directory (vmdk-desc.c refuses absolute names and "..";
 * the open refuses a symlink leading out of it), regular files only,
 * with the image owner's permissions; each must be a file distinct
 * from the descriptor and from every layer of the chain (by dev and
 * inode of what was opened).  Each takes QEMU's reader locks, as QEMU
 * locks every extent it opens.
 * Extent lines naming one file (the same dev and inode once opened; a
 * descriptor's extents all start at byte 0 of their file) share its fd
 * and, for SPARSE and VMFSSPARSE lines, one sparse reader: one grain
 * directory, GT cache and decompressed-grain cache, where QEMU opens the
 * file once per line.  The disk's memory is bounded whatever its extent
 * count: --decompressed-cache is the whole disk's budget, split evenly
 * over its distinct compressed extent files (vmdk_sparse_share_zcache),
 * and their grain directories may take MAX_DISK_GD bytes together (QEMU
 * caps each extent's at 32 Mi entries, 128 MiB, and the disk's not at
 * all).
 *
 * Where we refuse what QEMU reads (each said in one line, exit 3):
 *  - a descriptor file over 1 MiB - 1 bytes (QEMU reads its start);
 *  - extent names that are absolute or contain "..", over 511 bytes, a
 *    descriptor of more than 65536 lines or 4096 extents, sizes past
 *    INT64_MAX bytes;
 *  - an extent that is the descriptor or a layer of the chain;
 *    a sparse extent that is itself a descriptor (capacity 0);
 *  - a parent that is not a VMDK or whose CID is not the delta's
 *    parentCID: QEMU fails only reads of unallocated grains (with
 *    EINVAL, vmdk_is_cid_valid), we refuse at open;
 *  - seSparse images and extents (QEMU reads them);
 *  - grain directories of more than MAX_DISK_GD bytes together.
 * Everything is fixed at open: the members need no lock (the sparse
 * reader locks its own caches). */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chain.h"
#include "format.h"
#include "vmdk-desc.h"
#include "vmdk-sparse.h"

#define SECTOR          512u
#define CID_OFFSET      0x200u  /* of a sparse file: QEMU's desc_offset */
#define MAX_DISK        ((uint64_t) INT64_MAX)
#define MAX_DISK_GD     (UINT64_C(256) << 20)   /* bytes, all extents */

struct vmdk_extent {
  enum vmdk_extent_type type;
  int fd;                       /* owned, or the image's own fd (own) */
  bool own;                     /* fd is the image's (a sparse file) */
  char *path;                   /* resolved name, for messages */
  uint64_t start, size;         /* bytes of the virtual disk */
  uint64_t flat_offset;         /* FLAT, VMFS: byte of the file at start */
  uint64_t file_size;           /* FLAT, VMFS: the file's size at open */
  struct vmdk_sparse *sparse;   /* SPARSE, VMFSSPARSE */
  bool shared_fd;               /* fd is an earlier extent's (same file) */
  bool shared_sparse;           /* sparse is an earlier extent's */
  dev_t dev;
  ino_t ino;
};

struct vmdk_disk {
  struct fde_disk disk;         /* must come first */
  int fd;                       /* the image: descriptor or sparse file */
  uint64_t base, length;        /* the image's bytes of fd (OVA window) */
  bool text;                    /* a descriptor file (else a sparse file) */
  char create_type[128];
  struct vmdk_ddb ddb;
  uint32_t cid, parent_cid;
  struct vmdk_extent *ext;
  unsigned n_ext;
  struct fde_disk *parent;      /* NULL: not a delta */
  uint64_t gd_left;             /* bytes of grain directory the extents
                                 * opened next may still take */
};

#define to_vmdk(d) ((struct vmdk_disk *) (d))

static uint64_t
min_u64(uint64_t a, uint64_t b)
{
  return a < b ? a : b;
}

/* ---- Probe -------------------------------------------------------------- */

/* QEMU's vmdk_probe: a sparse file's magic, or a descriptor's first
 * line that is not a comment or blank being "version=1..3". */
static int
vmdk_probe(const uint8_t *buf, size_t len)
{
  if (len >= 4 && (memcmp(buf, "KDMV", 4) == 0 || memcmp(buf, "COWD", 4) == 0))
    return 100;
  return vmdk_desc_probe((const char *) buf, len) ? 100 : 0;
}

/* ---- Opening: files ----------------------------------------------------- */

/* Size of a regular file or block device in bytes. */
static int
file_size(int fd, uint64_t *size)
{
  struct stat st;

  if (fstat(fd, &st) == -1)
    return -errno;
  if (S_ISREG(st.st_mode)) {
    *size = (uint64_t) st.st_size;
    return 0;
  }
  if (S_ISBLK(st.st_mode))
    return ioctl(fd, BLKGETSIZE64, size) == 0 ? 0 : -errno;
  return -EINVAL;
}

/* Is (dev, ino) the image itself or a layer already in the chain (above
 * this one)?  A message naming what it is, else NULL.  Two extents may
 * share a file (at different offsets: QEMU allows it, and nothing is
 * written). */
static const char *
file_in_use(const struct fde_open_params *p, dev_t dev, ino_t ino)
{
  struct stat st;

  if (fstat(p->fd, &st) == 0 && st.st_dev == dev && st.st_ino == ino)
    return "the VMDK image itself";
  for (unsigned i = 0; p->chain != NULL && i < p->chain->depth; i++)
    if (p->chain->dev[i] == dev && p->chain->ino[i] == ino)
      return "a layer of the backing chain";
  return NULL;
}

/* An extent of v before e on e's file (its dev and ino) and, with
 * reader, one with a sparse reader; else NULL. */
static struct vmdk_extent *
earlier_on_file(struct vmdk_disk *v, const struct vmdk_extent *e,
                bool reader)
{
  for (struct vmdk_extent *o = v->ext; o < e; o++)
    if (o->fd >= 0 && o->dev == e->dev && o->ino == e->ino
        && (!reader || o->sparse != NULL))
      return o;
  return NULL;
}

/* Open the file of extent d into e: a new fd, or an earlier extent's on
 * the same file (this one closed again, before it is locked). */
static int
open_extent_file(struct vmdk_disk *v, const struct fde_open_params *p,
                 const struct vmdk_desc_extent *d, struct vmdk_extent *e)
{
  struct vmdk_extent *first;
  struct stat st;
  const char *dup;
  int r;

  if ((e->fd = r = fde_chain_open_file(p, d->name, "extent", &e->path)) < 0)
    return r;
  if (fstat(e->fd, &st) == -1)
    return -errno;
  e->dev = st.st_dev;
  e->ino = st.st_ino;
  if ((dup = file_in_use(p, e->dev, e->ino)) != NULL) {
    fde_error("%s: VMDK extent %s is %s", p->path, e->path, dup);
    return -ELOOP;
  }
  if ((first = earlier_on_file(v, e, false)) != NULL) {
    close(e->fd);
    e->fd = first->fd;
    e->shared_fd = true;
    e->file_size = first->file_size;
    return 0;
  }
  if ((r = file_size(e->fd, &e->file_size)) < 0) {
    fde_error("%s: VMDK extent %s: cannot find its size: %s", p->path,
              e->path, strerror(-r));
    return r;
  }
  return fde_lock_image(e->fd, e->path, false);
}

/* A sparse extent's reader, on e->fd from base (length bytes); its
 * grain directory taken off v's budget. */
static int
open_sparse(struct vmdk_disk *v, const struct fde_open_params *p,
            struct vmdk_extent *e, uint64_t base, uint64_t length)
{
  struct vmdk_sparse_params sp = {
    .fd = e->fd, .path = e->path, .base = base, .length = length,
    .zcache_bytes = p->zcache_bytes, .gd_budget = &v->gd_left,
  };
  char *name = NULL;
  int r;

  /* the reader's messages name the image, and the extent file when it
   * is another ("disk.vmdk: VMDK extent disk-s001.vmdk: ...") */
  if (strcmp(e->path, p->path) != 0) {
    if (asprintf(&name, "%s: VMDK extent %s", p->path, e->path) < 0)
      return -ENOMEM;
    sp.path = name;
  }
  r = vmdk_sparse_open(&sp, &e->sparse);
  free(name);

  if (r == -E2BIG)
    fde_error("%s: VMDK extent %s: the grain directories of the image's "
              "sparse extent files would take more than %" PRIu64 " MiB",
              p->path, e->path, MAX_DISK_GD >> 20);
  if (r == 0)
    e->size = vmdk_sparse_capacity(e->sparse);
  return r;
}

/* A sparse extent line: the reader of an earlier line on the same file
 * (the same bytes: a descriptor's extents start at byte 0), else a new
 * one. */
static int
open_sparse_line(struct vmdk_disk *v, const struct fde_open_params *p,
                 struct vmdk_extent *e)
{
  struct vmdk_extent *first = earlier_on_file(v, e, true);

  if (first == NULL)
    return open_sparse(v, p, e, 0, e->file_size);
  e->sparse = first->sparse;
  e->shared_sparse = true;
  e->size = first->size;
  return 0;
}

/* --decompressed-cache is the disk's: split evenly over its distinct
 * compressed readers when there are several (one keeps what open gave
 * it). */
static int
share_zcache(struct vmdk_disk *v, const struct fde_open_params *p)
{
  unsigned n = 0;
  int r = 0;

  for (unsigned i = 0; i < v->n_ext; i++)
    n += v->ext[i].sparse != NULL && !v->ext[i].shared_sparse
         && vmdk_sparse_compressed(v->ext[i].sparse);
  for (unsigned i = 0; i < v->n_ext && n > 1 && r == 0; i++)
    if (v->ext[i].sparse != NULL && !v->ext[i].shared_sparse)
      r = vmdk_sparse_share_zcache(v->ext[i].sparse, p->zcache_bytes, n);
  return r;
}

/* Would a sparse extent of capacity 0 have QEMU read its embedded
 * descriptor as a descriptor file?  (vmdk_open_vmdk4) */
static bool
is_descriptor(struct vmdk_sparse *s)
{
  char *text = NULL;
  int r;

  if (vmdk_sparse_capacity(s) != 0)
    return false;
  r = vmdk_sparse_descriptor(s, VMDK_DESC_MAX, &text);
  free(text);
  return r != -ENOENT;
}

/* Open extent d of a descriptor file, appending it to v. */
static int
add_extent(struct vmdk_disk *v, const struct fde_open_params *p,
           const struct vmdk_desc_extent *d, uint64_t *total)
{
  struct vmdk_extent *e = &v->ext[v->n_ext];
  int r;

  *e = (struct vmdk_extent) { .type = d->type, .fd = -1, .start = *total };
  r = open_extent_file(v, p, d, e);
  if (r == 0 && (d->type == VMDK_EXT_FLAT || d->type == VMDK_EXT_VMFS)) {
    e->size = d->sectors * SECTOR;
    e->flat_offset = d->offset * SECTOR;
  } else if (r == 0 && (r = open_sparse_line(v, p, e)) == 0
             && is_descriptor(e->sparse)) {
    fde_error("%s: VMDK extent %s is a descriptor (a descriptor cannot "
              "name another)", p->path, e->path);
    r = -EINVAL;
  }
  v->n_ext++;                   /* counted even on failure: freed later */
  if (r == 0 && e->size > MAX_DISK - *total) {
    fde_error("%s: VMDK extents add up to more than %" PRIu64 " bytes",
              p->path, MAX_DISK);
    r = -EINVAL;
  }
  if (r == 0)
    *total += e->size;
  return r;
}

/* Open every extent of a parsed descriptor. */
static int
open_extents(struct vmdk_disk *v, const struct fde_open_params *p,
             const struct vmdk_desc *desc)
{
  uint64_t total = 0;
  int r = 0;

  if (desc->n_ext > 0
      && (v->ext = calloc(desc->n_ext, sizeof *v->ext)) == NULL)
    return -ENOMEM;
  for (unsigned i = 0; i < desc->n_ext && r == 0; i++)
    r = add_extent(v, p, &desc->ext[i], &total);
  v->disk.size = total;
  return r < 0 ? r : share_zcache(v, p);
}

/* ---- Opening: the descriptor and the parent ----------------------------- */

/* Parse text as a descriptor file and open its extents. */
static int
open_text(struct vmdk_disk *v, const struct fde_open_params *p,
          const char *text)
{
  struct vmdk_desc desc;
  int r = vmdk_desc_parse(text, p->path, &desc);

  if (r == 0 && desc.n_ext == 0) {
    /* QEMU 7.2 fails an assertion (s->num_extents) on it */
    fde_error("%s: VMDK descriptor names no extents", p->path);
    r = -EINVAL;
  }
  if (r == 0) {
    memcpy(v->create_type, desc.create_type, sizeof v->create_type);
    v->ddb = desc.ddb;
    r = open_extents(v, p, &desc);
  }
  vmdk_desc_free(&desc);
  return r;
}

/* A descriptor file: its size capped before anything is read, its text
 * up to the first NUL (as QEMU's strings end there). */
static int
open_descriptor_file(struct vmdk_disk *v, const struct fde_open_params *p,
                     char **text)
{
  int r;

  if (v->length > VMDK_DESC_MAX) {
    fde_error("%s: VMDK descriptor file is %" PRIu64 " bytes, more than "
              "the %u a descriptor may have", p->path, v->length,
              VMDK_DESC_MAX);
    return -EINVAL;
  }
  if ((*text = calloc(1, v->length + 1)) == NULL)
    return -ENOMEM;
  if ((r = fde_pread_full(v->fd, *text, v->length, 0)) < 0) {
    fde_error("%s: read: %s", p->path, strerror(-r));
    return r;
  }
  v->text = true;
  return open_text(v, p, *text);
}

/* Does the sparse reader's describe output have the line want?  (How a
 * streamOptimized file is told from a monolithicSparse one: QEMU by its
 * compressAlgorithm, which only the sparse reader has seen.) */
static bool
sparse_says(struct vmdk_sparse *s, const char *want)
{
  char *text = NULL, *line;
  size_t size = 0;
  bool found = false;
  FILE *mem = open_memstream(&text, &size);

  if (mem == NULL)
    return false;
  vmdk_sparse_describe(s, "", mem);
  fclose(mem);
  for (line = text; line != NULL && !found; line = strchr(line, '\n')) {
    line += *line == '\n';
    found = strncmp(line, want, strlen(want)) == 0;
  }
  free(text);
  return found;
}

/* The sparse file's embedded descriptor read as a descriptor file
 * (capacity 0: QEMU's vmdk_open_vmdk4 does so); not inside an OVA. */
static int
open_embedded(struct vmdk_disk *v, const struct fde_open_params *p)
{
  char *text = NULL;
  int r;

  if (p->file_offset != 0 || p->file_length != 0) {
    fde_error("%s: VMDK in an OVA names other files (capacity 0 with a "
              "descriptor)", p->path);
    return -EINVAL;
  }
  if ((r = vmdk_sparse_descriptor(v->ext[0].sparse, VMDK_DESC_MAX, &text))
      < 0)
    return r;
  vmdk_sparse_close(v->ext[0].sparse);
  free(v->ext[0].path);
  free(v->ext);
  v->ext = NULL;
  v->n_ext = 0;
  r = open_text(v, p, text);
  free(text);
  return r;
}

/* A sparse file as the image: one extent on the image's own fd, or,
 * with capacity 0 and an embedded descriptor, a descriptor file. */
static int
open_sparse_file(struct vmdk_disk *v, const struct fde_open_params *p,
                 bool cowd)
{
  struct vmdk_extent *e;
  int r;

  if ((v->ext = calloc(1, sizeof *v->ext)) == NULL)
    return -ENOMEM;
  e = &v->ext[0];
  *e = (struct vmdk_extent) { .type = VMDK_EXT_SPARSE, .fd = v->fd,
                              .own = true };
  v->n_ext = 1;
  if ((e->path = strdup(p->path)) == NULL)
    return -ENOMEM;
  if ((r = open_sparse(v, p, e, v->base, v->length)) < 0)
    return r;
  v->disk.size = e->size;
  if (is_descriptor(e->sparse))
    return open_embedded(v, p);
  snprintf(v->create_type, sizeof v->create_type, "%s",
           cowd ? "vmfsSparse" : sparse_says(e->sparse, "compressed: yes")
           ? "streamOptimized" : "monolithicSparse");
  return 0;
}

/* CID, parentCID and parentFileNameHint, from the first 10 KiB of a
 * descriptor file, or of a sparse file from byte 0x200 (QEMU's
 * desc_offset, whatever descriptorOffset says); a sparse file's ddb
 * lines from there too. */
static int
read_ids(struct vmdk_disk *v, const struct fde_open_params *p,
         struct vmdk_ids *ids)
{
  uint64_t at = v->text ? 0 : CID_OFFSET;
  size_t len = v->length > at ? min_u64(VMDK_DESC_ID_BYTES, v->length - at)
    : 0;
  char *buf = calloc(1, len + 1);
  int r = 0;

  if (buf == NULL)
    return -ENOMEM;
  if (len > 0 && (r = fde_pread_full(v->fd, buf, len, v->base + at)) < 0)
    fde_error("%s: read: %s", p->path, strerror(-r));
  if (r == 0 && (r = vmdk_desc_ids(buf, len, p->path, ids)) == 0) {
    v->cid = ids->cid;
    v->parent_cid = ids->parent_cid;
    if (!v->text && v->ddb.adapter_type[0] == '\0')
      vmdk_desc_parse_ddb(buf, &v->ddb);
  }
  free(buf);
  return r;
}

/* A delta's parent: opened through the chain (its format probed), a
 * VMDK whose CID is our parentCID (QEMU's vmdk_is_cid_valid); and none
 * of our extents may be a layer below. */
static int
open_parent(struct vmdk_disk *v, const struct fde_open_params *p,
            const char *hint)
{
  unsigned below = p->chain != NULL ? p->chain->depth : 0;
  int r;

  if (hint == NULL)
    return 0;
  if (p->file_offset != 0 || p->file_length != 0) {
    fde_error("%s: VMDK in an OVA names a parent (%s)", p->path, hint);
    return -EINVAL;
  }
  if ((r = fde_chain_open_backing(p, hint, NULL, "parent", &v->parent)) < 0)
    return r;
  if (v->parent->format != &fde_format_vmdk) {
    fde_error("%s: VMDK parent %s is %s %s image, not a VMDK (it has no "
              "CID to match parentCID)", p->path, v->parent->path,
              fde_article(fde_format_title(v->parent->format)),
              fde_format_title(v->parent->format));
    return -EINVAL;
  }
  if (to_vmdk(v->parent)->cid != v->parent_cid) {
    fde_error("%s: VMDK parent %s has CID %08" PRIx32 ", not the "
              "parentCID %08" PRIx32 " this delta was made on", p->path,
              v->parent->path, to_vmdk(v->parent)->cid, v->parent_cid);
    return -EINVAL;
  }
  for (unsigned i = 0; p->chain != NULL && i < v->n_ext; i++)
    for (unsigned k = below; k < p->chain->depth; k++)
      if (p->chain->dev[k] == v->ext[i].dev
          && p->chain->ino[k] == v->ext[i].ino) {
        fde_error("%s: VMDK extent %s is a layer of the backing chain",
                  p->path, v->ext[i].path);
        return -ELOOP;
      }
  return 0;
}

/* ---- Reading ------------------------------------------------------------ */

/* The extent holding byte off (< the disk's size). */
static struct vmdk_extent *
find_extent(const struct vmdk_disk *v, uint64_t off)
{
  unsigned lo = 0, hi = v->n_ext;

  while (hi - lo > 1) {
    unsigned mid = lo + (hi - lo) / 2;
    if (v->ext[mid].start <= off)
      lo = mid;
    else
      hi = mid;
  }
  return &v->ext[lo];           /* the last one starting at or before off:
                                 * never an empty one */
}

/* Bytes of a flat extent's file from in (extent offset) on, 0 past it:
 * the rest of the extent reads as zeros (QEMU: a read past EOF). */
static uint64_t
flat_left(const struct vmdk_extent *e, uint64_t in)
{
  if (e->flat_offset >= e->file_size || in >= e->file_size - e->flat_offset)
    return 0;
  return e->file_size - e->flat_offset - in;
}

static int
read_flat(const struct vmdk_extent *e, uint8_t *buf, size_t n, uint64_t in)
{
  size_t here = min_u64(n, flat_left(e, in));

  memset(buf + here, 0, n - here);
  return here > 0 ? fde_pread_full(e->fd, buf, here, e->flat_offset + in) : 0;
}

/* n bytes at in of a sparse extent that starts at disk byte start:
 * unallocated grains from the parent (zeros without one). */
static int
read_sparse(struct vmdk_disk *v, struct vmdk_extent *e, uint8_t *buf,
            size_t n, uint64_t in)
{
  enum vmdk_grain_kind kind;
  uint64_t done = 0, run, host;
  int r = 0;

  if (v->parent == NULL)
    return vmdk_sparse_read(e->sparse, buf, n, in);
  while (done < n && r == 0) {
    r = vmdk_sparse_lookup(e->sparse, in + done, n - done, &run, &kind,
                           &host);
    if (r == 0 && kind == VMDK_GRAIN_UNALLOCATED)
      r = fde_chain_read_lower(v->parent, buf + done, run,
                               e->start + in + done);
    else if (r == 0)
      r = vmdk_sparse_read(e->sparse, buf + done, run, in + done);
    done += run;
  }
  return r;
}

static int
vmdk_pread(struct fde_disk *d, void *buf, size_t len, uint64_t off)
{
  struct vmdk_disk *v = to_vmdk(d);
  uint8_t *p = buf;
  int r = 0;

  while (len > 0 && r == 0) {
    struct vmdk_extent *e = find_extent(v, off);
    uint64_t in = off - e->start;
    size_t n = min_u64(len, e->size - in);
    r = e->sparse != NULL ? read_sparse(v, e, p, n, in)
      : read_flat(e, p, n, in);
    p += n;
    off += n;
    len -= n;
  }
  return r;
}

/* ---- Allocation: block_status and map ---------------------------------- */

/* A flat extent's status: its file's data and holes (SEEK_DATA and
 * SEEK_HOLE, as QEMU's block status recurses into the file), zeros past
 * its end. */
static void
status_flat(const struct vmdk_extent *e, uint64_t in, uint64_t len,
            uint64_t *run, unsigned *status)
{
  uint64_t left = flat_left(e, in), at = e->flat_offset + in;
  off_t data, hole;

  *run = len;
  *status = FDE_BS_ZERO;
  if (left == 0)
    return;
  *run = len = min_u64(len, left);
  data = lseek(e->fd, (off_t) at, SEEK_DATA);
  if (data == -1 && errno == ENXIO)             /* a hole up to EOF */
    return;
  *status = FDE_BS_DATA;
  if (data == -1)                               /* no SEEK_DATA: all data */
    return;
  if ((uint64_t) data > at) {
    *run = min_u64((uint64_t) data - at, len);
    *status = FDE_BS_ZERO;
    return;
  }
  hole = lseek(e->fd, (off_t) at, SEEK_HOLE);
  if (hole != -1 && (uint64_t) hole > at)
    *run = min_u64((uint64_t) hole - at, len);
}

/* As QEMU's vmdk_co_block_status: an allocated grain (compressed too)
 * is data, a zeroed grain zeros, an unallocated one the parent's. */
static int
vmdk_block_status(struct fde_disk *d, uint64_t off, uint64_t len,
                  uint64_t *run, unsigned *status)
{
  struct vmdk_disk *v = to_vmdk(d);
  struct vmdk_extent *e = find_extent(v, off);
  uint64_t in = off - e->start, host;
  enum vmdk_grain_kind kind;
  int r;

  len = min_u64(len, e->size - in);
  if (e->sparse == NULL) {
    status_flat(e, in, len, run, status);
    return 0;
  }
  if ((r = vmdk_sparse_lookup(e->sparse, in, len, run, &kind, &host)) < 0)
    return r;
  if (kind == VMDK_GRAIN_UNALLOCATED)
    return fde_chain_status_lower(v->parent, off, *run, run, status);
  *status = kind == VMDK_GRAIN_ZERO ? FDE_BS_ZERO : FDE_BS_DATA;
  return 0;
}

/* format.h's map: a flat extent's bytes inside its file, a sparse
 * extent's verbatim grains; zeros and compressed grains are left to
 * pread, unallocated grains to the parent. */
static int
vmdk_map(struct fde_disk *d, uint64_t off, uint64_t len, int *fd,
         uint64_t *host, uint64_t *run)
{
  struct vmdk_disk *v = to_vmdk(d);
  struct vmdk_extent *e = find_extent(v, off);
  uint64_t in = off - e->start, left;
  enum vmdk_grain_kind kind;
  int r;

  len = min_u64(len, e->size - in);
  *fd = e->fd;
  if (e->sparse == NULL) {
    left = flat_left(e, in);
    *run = left > 0 ? min_u64(len, left) : len;
    *host = e->flat_offset + in;
    return left > 0;
  }
  if ((r = vmdk_sparse_lookup(e->sparse, in, len, run, &kind, host)) < 0)
    return r;
  if (kind == VMDK_GRAIN_UNALLOCATED && v->parent != NULL)
    return fde_chain_map_lower(v->parent, off, *run, fd, host, run);
  return kind == VMDK_GRAIN_DATA;
}

/* ---- Open, describe, close ---------------------------------------------- */

/* Free everything but the image's descriptor. */
static void
free_disk(struct vmdk_disk *v)
{
  if (v == NULL)
    return;
  fde_disk_close(v->parent);
  for (unsigned i = 0; i < v->n_ext; i++) {
    struct vmdk_extent *e = &v->ext[i];
    if (e->sparse != NULL && !e->shared_sparse)
      vmdk_sparse_close(e->sparse);
    if (!e->own && !e->shared_fd && e->fd >= 0)
      close(e->fd);
    free(e->path);
  }
  free(v->ext);
  free(v->disk.path);
  free(v);
}

/* The image's window of its file: an OVA member's, or the whole file. */
static int
image_window(struct vmdk_disk *v, const struct fde_open_params *p)
{
  int r;

  if (p->file_offset != 0 || p->file_length != 0) {
    v->base = p->file_offset;
    v->length = p->file_length;
    return 0;
  }
  if ((r = file_size(p->fd, &v->length)) < 0)
    fde_error("%s: cannot find the file size: %s", p->path, strerror(-r));
  return r;
}

/* What the image is, by its first bytes, and that part of the open. */
static int
open_by_kind(struct vmdk_disk *v, const struct fde_open_params *p,
             char **text)
{
  uint8_t magic[4];
  int r;

  if (v->length < sizeof magic) {
    fde_error("%s: file is too small to be a VMDK image", p->path);
    return -EINVAL;
  }
  if ((r = fde_pread_full(v->fd, magic, sizeof magic, v->base)) < 0) {
    fde_error("%s: read: %s", p->path, strerror(-r));
    return r;
  }
  if (memcmp(magic, "KDMV", 4) == 0 || memcmp(magic, "COWD", 4) == 0)
    return open_sparse_file(v, p, magic[0] == 'C');
  if (p->file_offset != 0 || p->file_length != 0) {
    fde_error("%s: VMDK descriptor file in an OVA (only a monolithicSparse "
              "or streamOptimized disk, one file, can be read there)",
              p->path);
    return -EINVAL;
  }
  return open_descriptor_file(v, p, text);
}

/* Open a VMDK read-only (the refusals are listed at the top). */
static int
vmdk_open(const struct fde_open_params *p, struct fde_disk **out)
{
  struct vmdk_disk *v = calloc(1, sizeof *v);
  struct vmdk_ids ids = { .parent_hint = NULL };
  char *text = NULL;
  int r = -ENOMEM;

  if (v == NULL || (v->disk.path = strdup(p->path)) == NULL)
    goto fail;
  v->disk.format = &fde_format_vmdk;
  v->disk.read_only = true;
  v->fd = p->fd;
  v->gd_left = MAX_DISK_GD;
  if ((r = image_window(v, p)) < 0 || (r = open_by_kind(v, p, &text)) < 0
      || (r = read_ids(v, p, &ids)) < 0
      || (r = open_parent(v, p, ids.parent_hint)) < 0)
    goto fail;
  free(text);
  free(ids.parent_hint);
  *out = &v->disk;
  return 0;

fail:
  if (r == -ENOMEM)
    fde_error("%s: out of memory", p->path);
  free(text);
  free(ids.parent_hint);
  free_disk(v);
  return r;
}

static uint64_t
vmdk_allocated_bytes(struct fde_disk *d)
{
  struct vmdk_disk *v = to_vmdk(d);
  uint64_t sum = v->text ? fde_file_allocated(v->fd) : 0;

  for (unsigned i = 0; i < v->n_ext; i++)      /* each file once */
    sum += v->ext[i].shared_fd ? 0 : v->ext[i].sparse != NULL
      ? vmdk_sparse_allocated(v->ext[i].sparse)
      : fde_file_allocated(v->ext[i].fd);
  return sum;
}

static const char *const type_names[] = {
  [VMDK_EXT_FLAT] = "FLAT", [VMDK_EXT_VMFS] = "VMFS",
  [VMDK_EXT_SPARSE] = "SPARSE", [VMDK_EXT_VMFSSPARSE] = "VMFSSPARSE",
};

/* "key: value" for a ddb value, when the image has it. */
static void
describe_ddb(const struct vmdk_ddb *ddb, FILE *out)
{
  if (ddb->adapter_type[0] != '\0')
    fprintf(out, "adapter-type: %s\n", ddb->adapter_type);
  if (ddb->cylinders[0] != '\0' || ddb->heads[0] != '\0')
    fprintf(out, "geometry: %s/%s/%s\n", ddb->cylinders, ddb->heads,
            ddb->sectors);
  if (ddb->hw_version[0] != '\0')
    fprintf(out, "hw-version: %s\n", ddb->hw_version);
}

static void
vmdk_describe(struct fde_disk *d, FILE *out)
{
  struct vmdk_disk *v = to_vmdk(d);

  fputs("subformat: ", out);
  fde_print_safe(out, v->create_type);
  fprintf(out, "\ncid: %08" PRIx32 "\nparent-cid: %08" PRIx32 "\n", v->cid,
          v->parent_cid);
  describe_ddb(&v->ddb, out);
  fprintf(out, "extents: %u\n", v->n_ext);
  for (unsigned i = 0; i < v->n_ext; i++) {
    const struct vmdk_extent *e = &v->ext[i];
    fprintf(out, "extent: %s %" PRIu64 " ", type_names[e->type], e->size);
    fde_print_safe(out, e->path);
    if (e->sparse == NULL)
      fprintf(out, " offset %" PRIu64, e->flat_offset);
    fputc('\n', out);
    if (e->sparse != NULL)
      vmdk_sparse_describe(e->sparse, "  ", out);
  }
  fde_chain_describe(v->parent, true, out);
}

static void
vmdk_close(struct fde_disk *d)
{
  struct vmdk_disk *v = to_vmdk(d);
  int fd = v->fd;

  free_disk(v);
  close(fd);
}

static bool
vmdk_can_map(struct fde_disk *d)
{
  (void) d;
  return true;
}

const struct fde_format fde_format_vmdk = {
  .name            = "vmdk",
  .probe           = vmdk_probe,
  .open            = vmdk_open,
  .close           = vmdk_close,

  .pread           = vmdk_pread,
  .block_status    = vmdk_block_status,

  .allocated_bytes = vmdk_allocated_bytes,
  .describe        = vmdk_describe,
  .map             = vmdk_map,
  .can_map         = vmdk_can_map,
  .in_container    = true,
};
