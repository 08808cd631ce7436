/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: backing chains, the one place where every format
 * opens the layer its image names (qcow2's backing file; a VMDK delta's
 * parent, a VHD or VHDX differencing disk's parent to come) and reads
 * through to it.
 *
 * A chain is a stack of disks: the exported image on top, each layer
 * naming the one below it.  The rules every layer follows here, whatever
 * its format:
 *  - names are resolved lexically as QEMU does (block.c
 *    bdrv_get_full_backing_filename_from_filename): an absolute name as it
 *    is, a relative one against the directory of the naming image's path
 *    as it was given (not its realpath; ".." is not collapsed); protocol
 *    and json: names ("nbd:...", "file:x", "foo:bar") are refused;
 *  - the file is opened read-only with fde_open_named (formats/owner.c):
 *    as the image's owner when someone else exports it, a regular file
 *    only (a block device with --allow-block-device-backing), none on
 *    procfs, sysfs or another kernel pseudo file system, never through a
 *    /proc magic link, no hanging on a FIFO;
 *  - each layer's (dev, ino) goes into params->chain before it is parsed:
 *    a repeat (a loop, also through another name) or a chain deeper than
 *    FDE_MAX_CHAIN layers is refused (-ELOOP);
 *  - the format is the one the image records; without one it is probed
 *    between the served formats (QEMU probes too; only -v says so);
 *  - a lower layer is opened read-only and never written;
 *  - reads of an unallocated range go to the lower layer at the same
 *    offset, and past the lower layer's end read as zeros (QEMU's
 *    block/io.c bdrv_aligned_preadv): a shorter backing file is legal, a
 *    longer one is cut at the upper layer's size.
 *
 * Units: offsets and lengths are bytes of the virtual disk, the same in
 * every layer of a chain.  Errors: a negative errno with one line logged
 * where the problem is found, naming the image (and, for a layer deep in
 * a chain, prefixed with the exported image's name: fde_log_context).
 * Opening happens before any thread starts; the read functions are as
 * thread safe as the lower disk's members (see format.h).
 */
#ifndef FDE_CHAIN_H
#define FDE_CHAIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "format.h"

/* ---- Opening ------------------------------------------------------------ */

/* Open the layer below the image params describes (params->path, fd,
 * chain, owner, allow_bdev_backing, verbose and the cache budgets are the
 * naming image's; they are passed down, with read_only set and snapshot
 * cleared for the lower layer).
 *   name:   the name as the image stores it, NUL-terminated, already
 *           decoded by the backend (UTF-8; control characters refused
 *           here); NULL or "" means no lower layer (QEMU: an empty name
 *           is none): *lower = NULL and 0.
 *   format: the format the image records for it ("raw", "qcow2": any
 *           served format), or NULL to probe between the served formats;
 *           an unknown name is refused, never probed (QEMU iotest 114).
 *   what:   the noun for messages, e.g. "backing file" ("%s: backing file
 *           %s: No such file or directory"); the format, loop and depth
 *           messages say "backing" whatever it is.
 *   lower:  the layer opened (read-only, its path the resolved name),
 *           owned by the caller: fde_disk_close it.  NULL on failure.
 * A chain is started here when params->chain is NULL (the naming image is
 * then recorded first).  0, or -errno with one line logged: -EINVAL (a
 * control character in the name, a file that is not a regular file),
 * -ENOTSUP (a protocol or json: name, a format not served), -ENOENT,
 * -EACCES/-EPERM (the owner may not read it), -ELOOP (a loop, or deeper
 * than FDE_MAX_CHAIN), -ENOMEM, or what the lower format's open returns. */
int fde_chain_open_backing(const struct fde_open_params *params,
                           const char *name, const char *format,
                           const char *what, struct fde_disk **lower);

/* Resolve name against params->path and open it by the rules above,
 * without opening it as a disk or recording it in the chain: for a file
 * an image names that is not itself a layer (a VMDK extent).  It must
 * stay in the image's directory: a relative name whose every symbolic
 * link resolves beneath that directory (openat2 RESOLVE_BENEATH; one
 * leading out is -EXDEV, "leads out of the image's directory").  QEMU
 * follows any symlink; a backing file (fde_chain_open_backing) may be
 * anywhere, as in QEMU.  what and name as for fde_chain_open_backing,
 * but name must be non-empty.
 * Returns the descriptor (read-only, O_CLOEXEC, owned by the caller) and
 * the resolved name in *path (malloc'd, the caller frees it; NULL on
 * failure), or -errno with one line logged (the same errors as above,
 * -ELOOP only for a magic link or a symlink loop; -EXDEV). */
int fde_chain_open_file(const struct fde_open_params *params,
                        const char *name, const char *what, char **path);

/* Record the layer params->fd is open on in params->chain (nothing when
 * chain is NULL): refuse it if its (dev, ino) is already there or the
 * chain already holds FDE_MAX_CHAIN layers.  Called by fde_disk_open for
 * every layer, the exported image first.  0 or -errno (-ELOOP), one line
 * logged naming params->path. */
int fde_chain_record(const struct fde_open_params *params);

/* ---- Reading through ----------------------------------------------------
 * lower may be NULL (no lower layer): everything then reads as zeros. */

/* How many bytes of [off, off + len) lower has: len, less what lies past
 * its end; 0 past its end or without one. */
uint64_t fde_chain_lower_part(const struct fde_disk *lower, uint64_t off,
                              uint64_t len);

/* Read len bytes at off from lower into buf; the part past its end (all
 * of it without one) is zero-filled.  0 or the lower pread's -errno. */
int fde_chain_read_lower(struct fde_disk *lower, void *buf, size_t len,
                         uint64_t off);

/* block_status of [off, off + len) for a range the upper layer leaves to
 * lower: lower's answer (its run clipped to what it has), or a run of len
 * reading as zeros (FDE_BS_ZERO) past its end or without one.  0 or
 * -errno. */
int fde_chain_status_lower(struct fde_disk *lower, uint64_t off,
                           uint64_t len, uint64_t *run, unsigned *status);

/* map (format.h) of [off, off + len) for a range the upper layer leaves to
 * lower: lower's answer when it has the range and can map
 * (fde_disk_can_map: a map member and a yes from can_map); else 0
 * (read it with fde_chain_read_lower) with *run = len.  Lower layers are
 * read-only and never hand a host range to other data, so the upper
 * layer's io_begin/io_end bracket covers them. */
int fde_chain_map_lower(struct fde_disk *lower, uint64_t off, uint64_t len,
                        int *fd, uint64_t *host, uint64_t *run);

/* ---- Describing --------------------------------------------------------- */

/* The --probe lines for a lower layer: "backing-file: PATH", then
 * "backing-format: NAME" (with " (probed)" when probed: the image records
 * no format), then "backing:" and the layer's own format, virtual-size and
 * describe lines, indented by two spaces (recursively, so deeper layers
 * indent further).  Nothing is printed without a lower layer. */
void fde_chain_describe(struct fde_disk *lower, bool probed, FILE *out);

/* Print s, a string from an image, with control characters shown as '?'
 * (for describe lines). */
void fde_print_safe(FILE *out, const char *s);

#endif /* FDE_CHAIN_H */
