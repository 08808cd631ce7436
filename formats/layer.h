/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: layers, disks that wrap another disk.
 *
 * A layer changes how a lower disk is seen (a window on one partition,
 * a guard on sector 0) the way an nbdkit filter changes a plugin: it is
 * itself a struct fde_disk with a struct fde_format vtable, so the front
 * end serves a layer exactly as it serves a backend and knows nothing of
 * what the layer does.  Layers stack: the top one is what is exported.
 *
 * A layer implements only what it changes; every other member passes
 * straight to the lower disk (fde_layer_init fills them in), the
 * capabilities (can_write, can_zero, can_discard, can_map) included.
 * Where the lower disk lacks an optional member (pwrite or can_write on a
 * read-only format, map, io_begin/io_end), the layer lacks it too, so a
 * capability never appears through a layer that the disk below does not
 * have.
 *
 * Offsets are bytes of the layer's own disk (0 .. disk.size); a layer
 * that shifts them (the partition window) adds its offset before calling
 * down and never calls down outside the lower disk.  The lower disk is
 * owned by the layer: closing the layer closes it.  Thread safety is as
 * for any disk (see format.h): a layer with state of its own locks it.
 */
#ifndef FDE_LAYER_H
#define FDE_LAYER_H

#include "format.h"

struct fde_layer {
  struct fde_disk disk;         /* must come first: the layer is a disk */
  struct fde_format ops;        /* disk.format points here */
  struct fde_disk *lower;       /* owned, unless lower_shared */
  bool lower_shared;            /* several layers share lower (the files
                                 * of a directory view): closing the layer
                                 * leaves lower open, for its owner */
};

/* Set up l (allocated by the caller, zeroed) over lower: disk.size =
 * size, read_only and path as lower's, ops = *own with every NULL member
 * taken from the pass-through set, and the optional members dropped
 * where lower has none.  own->name may be NULL: the lower disk's format
 * name is used (the view still shows "qcow2" through a window). */
void fde_layer_init(struct fde_layer *l, const struct fde_format *own,
                    struct fde_disk *lower, uint64_t size);

/* The lower disk of a layer made by fde_layer_init. */
static inline struct fde_disk *
fde_layer_lower(struct fde_disk *d)
{
  return ((struct fde_layer *) d)->lower;
}

/* Is d a layer (its vtable is its own ops member)? */
static inline bool
fde_disk_is_layer(struct fde_disk *d)
{
  return d->format == &((struct fde_layer *) d)->ops;
}

/* The backend at the bottom of a stack of layers (d itself if d is no
 * layer). */
static inline struct fde_disk *
fde_disk_bottom(struct fde_disk *d)
{
  while (fde_disk_is_layer(d))
    d = fde_layer_lower(d);
  return d;
}

/* Close the lower disk (unless lower_shared) and free l (the pass-through
 * close). */
void fde_layer_close(struct fde_disk *d);

/* ---- formats/partition.c: the window on one partition -------------------
 *
 * A window [start, start + size) of the lower disk, in bytes.  Every
 * offset is shifted by start and every range is clipped to the window
 * by the front end (which never asks past disk.size); block_status and
 * map runs are clipped by the lower disk to the length asked for. */

/* Is the window start, size (bytes) inside a disk of disk_size bytes,
 * non-empty and overflow-free?  0, or a static message saying why not. */
const char *fde_window_check(uint64_t disk_size, uint64_t start,
                             uint64_t size);

/* Partition number n (Linux numbering) of lower, found with libblkid on
 * the virtual disk's bytes (see blkid-view.c for how libblkid reads them).
 * Stores its first byte and length.  0, or -errno with one line logged
 * naming image, the partition and the problem: -ENOENT (no table, or no
 * such partition), -EINVAL (an entry outside the disk, an extended
 * container, a repeat from a looping chain, too many entries), -EFBIG (a
 * disk past INT64_MAX bytes), -ENOMEM, or the disk's read error. */
int fde_partition_find(struct fde_disk *lower, const char *image,
                       unsigned n, uint64_t *start, uint64_t *size);

/* The same lookup on libblkid's answer alone, for the fuzzer and the unit
 * test: the partitions of a disk of disk_size bytes given as parallel
 * arrays of partno, start and size in 512-byte sectors, with extended
 * marking DOS extended containers.  Same returns; why (static) says the
 * problem when nonzero. */
struct fde_part_entry {
  int partno;
  int64_t start;                /* 512-byte sectors, as libblkid gives */
  int64_t size;
  bool extended;
  /* The partition this one must lie inside, in sectors (outer_size 0:
   * none): the extended partition for a DOS logical one (libblkid adds
   * its offsets in 32 bits and checks only some entries), the slice
   * holding a nested label (BSD...) for that label's partitions. */
  int64_t outer_start, outer_size;
};
int fde_partition_pick(const struct fde_part_entry *parts, size_t nparts,
                       uint64_t disk_size, unsigned n, uint64_t *start,
                       uint64_t *size, const char **why);

/* Is entry i of parts (libblkid's answer for a disk of disk_size bytes)
 * a partition a window may show?  Its number must be 1..256 and unique,
 * it must not be an extended container or repeat an earlier entry (a
 * looping EBR chain), nor have more than 256 entries before it; its
 * window must pass fde_window_check, lie inside its outer partition if
 * it has one, and not overlap the window of an earlier entry that is
 * itself accepted, other than its outer partition (the earlier one is kept; an
 * entry refused for any reason knocks nothing out).  0 with *start and
 * *size (bytes), or -EINVAL with why (static) saying the problem. */
int fde_partition_entry_check(const struct fde_part_entry *parts,
                              size_t nparts, size_t i, uint64_t disk_size,
                              uint64_t *start, uint64_t *size,
                              const char **why);

/* The partition table libblkid finds on disk's virtual bytes (read as
 * described in blkid-view.c, never through a mount): *parts (malloc'd,
 * the caller frees it; *nparts entries, none when there is no table or
 * libblkid refuses it, such as a GPT with a bad CRC) and the table type
 * ("dos", "gpt"...; empty if none) in type.  Entries are unchecked: pass
 * each through fde_partition_entry_check.  0, -EFBIG (disk past
 * INT64_MAX bytes), -ENOMEM, or the disk's read error. */
int fde_partition_table_read(struct fde_disk *disk,
                             struct fde_part_entry **parts, size_t *nparts,
                             char *type, size_t type_len);

/* Wrap lower in a window on [start, start + size) (checked with
 * fde_window_check), numbered n for describe.  On success *out owns
 * lower; on failure lower is left to the caller.  0 or -errno. */
int fde_partition_open(struct fde_disk *lower, unsigned n, uint64_t start,
                       uint64_t size, struct fde_disk **out);

/* Change the size of window d (made by fde_partition_open) to new_size
 * bytes, keeping its start: the directory view follows a partition that
 * a new table makes larger or smaller.  Other threads may be using d:
 * the size is stored atomically (read it with fde_disk_size), and a
 * request that read the old size may still reach up to the old end,
 * which stays inside the lower disk.  0, or -EINVAL if d is no window
 * or the new window fails fde_window_check. */
int fde_window_resize(struct fde_disk *d, uint64_t new_size);

/* d->size read atomically: the size of a window may change while it is
 * in use (fde_window_resize); every other disk's size is fixed. */
static inline uint64_t
fde_disk_size(const struct fde_disk *d)
{
  return __atomic_load_n(&d->size, __ATOMIC_RELAXED);
}

/* ---- formats/guard.c: the sector-0 guard --------------------------------
 *
 * QEMU's rule for a raw image whose format was probed (block/raw-format.c,
 * raw_check_write): the guest may not write a first sector that would make
 * the image probe as another format the next time it is opened.  The
 * guard reads sector 0, applies the write or zeroing to a copy, and
 * refuses the write with -EPERM (and one warning naming image) when
 * is_image says the result looks like an image header.
 *
 * Our probe also looks at the end of a file (a fixed VHD is known by the
 * footer in its last sector; QEMU's probe does not look there, so QEMU
 * has no such rule): when tail_is_image is not NULL, a write reaching
 * into the last sector (the disk's last min(512, size) bytes) is checked
 * the same way, tail_is_image(copy, its length, disk size) deciding.
 * Writes touching neither sector pass straight through. */
int fde_guard_open(struct fde_disk *lower, const char *image,
                   const char *allow_opt,
                   bool (*is_image)(const uint8_t *sector, size_t len),
                   bool (*tail_is_image)(const uint8_t *tail, size_t len,
                                         uint64_t size),
                   struct fde_disk **out);

#endif /* FDE_LAYER_H */
