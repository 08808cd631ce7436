/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: one VMDK sparse extent, read-only.
 *
 * The grain directory / grain table reader shared by every VMDK kind that
 * stores grains: hosted sparse extents ("KDMV", VMDK4: monolithicSparse,
 * twoGbMaxExtentSparse's extents, streamOptimized with deflate-compressed
 * grains and its footer-located grain directory) and ESX sparse extents
 * ("COWD", VMDK3: vmfsSparse).  formats/vmdk.c owns the descriptor, the
 * list of extents, the parent and the fde_format; it asks this file what
 * each range of one extent holds and reads it.
 *
 * Follows VMware's "Virtual Disk Format 5.0" ("Hosted Sparse Extent
 * Header", "Grain Directories and Grain Tables", "Stream-Optimized
 * Compressed Sparse Extents") as QEMU's block/vmdk.c reads it
 * (vmdk_open_vmdk4, vmdk_open_vmfs_sparse, get_cluster_offset,
 * vmdk_read_extent); see ../shared/reference/formats.md section 2.
 *
 * Units: offsets and lengths are bytes of the extent (0 = the extent's
 * first byte), 64-bit; host offsets are bytes of the extent's file, the
 * window base already added.  Errors: negative errno with one line logged
 * naming the extent's path and the problem (-EINVAL malformed or hostile,
 * -ENOTSUP a version or feature QEMU refuses too, -EIO/-ENOMEM).  After a
 * successful open every function is thread safe.
 */
#ifndef FDE_VMDK_SPARSE_H
#define FDE_VMDK_SPARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

struct vmdk_sparse;

struct vmdk_sparse_params {
  int fd;               /* the extent's file; borrowed (the caller closes it
                         * after vmdk_sparse_close) */
  const char *path;     /* the extent's name, for messages */
  uint64_t base;        /* byte offset of the extent in fd (an OVA member's
                         * offset; else 0) */
  uint64_t length;      /* bytes of fd from base that are the extent (the
                         * file's size less base, or the OVA member's size):
                         * nothing past it is ever read; a stream footer is
                         * looked for at length - 1024 */
  uint64_t zcache_bytes;/* decompressed-grain cache budget (0: default) */
  uint64_t *gd_budget;  /* in/out, or NULL: bytes of grain directory the
                         * caller's disk may still hold; the GD's size is
                         * taken off it, and a GD larger than what is left
                         * is -E2BIG, not logged (the caller names the
                         * disk's cap) and nothing is allocated */
};

/* What a run of an extent holds (vmdk_sparse_lookup). */
enum vmdk_grain_kind {
  VMDK_GRAIN_UNALLOCATED, /* GD or GT entry 0: the parent's bytes (zeros
                           * without a parent) */
  VMDK_GRAIN_ZERO,        /* zeroed-grain entry (GTE 1 with flag bit 2):
                           * zeros, never the parent's */
  VMDK_GRAIN_DATA,        /* stored verbatim at *host in the file */
  VMDK_GRAIN_COMPRESSED,  /* a compressed grain: read with vmdk_sparse_read */
  VMDK_GRAIN_PAST_END,    /* an allocated verbatim grain (or its part)
                           * past the extent's end: data for block status
                           * (as QEMU's vmdk_co_block_status, which does
                           * not look at the file), zeros when read (its
                           * file layer zero-fills past EOF); no *host */
};

/* Open the sparse extent at p->base of p->fd: check the magic ("KDMV" or
 * "COWD"), the header's fields (version, granularity, GTEs per GT,
 * capacity, table offsets and sizes all inside p->length, 64-bit
 * overflow-checked), find a streamOptimized image's footer, and read the
 * grain directory.  *out: the extent, freed with vmdk_sparse_close.
 * 0 or -errno (one line logged). */
int vmdk_sparse_open(const struct vmdk_sparse_params *p,
                     struct vmdk_sparse **out);

/* The extent's virtual size in bytes (the header's capacity: QEMU sizes a
 * sparse extent by its header, not by the descriptor's sector count). */
uint64_t vmdk_sparse_capacity(const struct vmdk_sparse *s);

/* The descriptor embedded in a hosted sparse extent (descriptorOffset,
 * descriptorSize), NUL-terminated, at most max_len bytes (longer: -EFBIG);
 * *text is malloc'd, the caller frees it.  -ENOENT when the extent has
 * none (COWD, or descriptorSize 0).  0 or -errno.
 * With capacity 0 and a descriptorOffset (QEMU then reads the text as a
 * descriptor file, vmdk_open_vmdk4), the text runs from descriptorOffset
 * to the first NUL or the extent's end, whatever descriptorSize says, as
 * QEMU's vmdk_read_desc reads it; only this function works on such an
 * extent (capacity 0: no lookup, no read). */
int vmdk_sparse_descriptor(struct vmdk_sparse *s, size_t max_len,
                           char **text);

/* What the run at off (< capacity) holds: its length (> 0, at most len,
 * never crossing a grain of another kind) in *run, its kind in *kind and,
 * for VMDK_GRAIN_DATA, its host offset in *host (bytes of the file, base
 * added; the whole run lies inside base + length).  As QEMU reads a
 * damaged extent: a GT past the end is unallocated, a grain pointing
 * into the header or tables is DATA there, one past the end PAST_END;
 * only a compressed grain past the end is -EINVAL (logged once; QEMU
 * fails its read too).  The run may stop short of the kind's end (a
 * bound on the work of one call): callers loop.  0 or -errno. */
int vmdk_sparse_lookup(struct vmdk_sparse *s, uint64_t off, uint64_t len,
                       uint64_t *run, enum vmdk_grain_kind *kind,
                       uint64_t *host);

/* Read len bytes at off that lookup said are DATA, ZERO or COMPRESSED
 * (any mix; an UNALLOCATED part reads as zeros: the caller reads the
 * parent there instead).  A compressed grain read in part is inflated
 * once and kept in the decompressed-grain cache; one read whole is
 * inflated into buf and not kept.  0 or -errno. */
int vmdk_sparse_read(struct vmdk_sparse *s, void *buf, size_t len,
                     uint64_t off);

/* Bytes of the file the extent's grains and tables use (for st_blocks). */
uint64_t vmdk_sparse_allocated(struct vmdk_sparse *s);

/* Is the extent's data compressed (streamOptimized)? */
bool vmdk_sparse_compressed(const struct vmdk_sparse *s);

/* Give a compressed extent share/th of budget bytes (0: the default,
 * 4 MiB) for its decompressed-grain cache, dropping what it caches; for
 * a disk whose --decompressed-cache is split over several readers.
 * share 1 is what open does: 2 to 256 grains.  share > 1: as many
 * grains as fit, at most 256, and none at all when not one fits (every
 * partial read of a grain then inflates it again, as QEMU always does),
 * so that n readers hold at most budget bytes of grains together.
 * Not thread safe: call it between open and the first read.  Nothing to
 * do for an uncompressed extent.  0 or -ENOMEM. */
int vmdk_sparse_share_zcache(struct vmdk_sparse *s, uint64_t budget,
                             unsigned share);

/* --probe lines for this extent, each prefixed by indent: "version: N",
 * "grain-size: BYTES", "compressed: yes/no", "stream: yes/no" ... */
void vmdk_sparse_describe(struct vmdk_sparse *s, const char *indent,
                          FILE *out);

/* Free the extent (not its fd). */
void vmdk_sparse_close(struct vmdk_sparse *s);

#endif /* FDE_VMDK_SPARSE_H */
