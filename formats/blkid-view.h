/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: what libblkid finds on a disk's virtual bytes, read
 * through a sparse copy of the areas it looks at, never through a mount
 * (see blkid-view.c).  fde_partition_table_read (layer.h) is the short
 * form of fde_partition_table_details for the partition window.
 *
 * Every string below comes from the image as libblkid decoded it and is
 * untrusted: any byte but NUL may appear, control characters and invalid
 * UTF-8 included.  Escape it before printing. */
#ifndef FDE_BLKID_VIEW_H
#define FDE_BLKID_VIEW_H

#include "layer.h"

/* What libblkid says of one entry of a partition table, beyond the
 * number, start and size of its struct fde_part_entry. */
struct fde_part_info {
  char table[16];               /* the table the entry belongs to: "dos",
                                 * "gpt", or "bsd"... for a label nested in
                                 * a DOS partition */
  char type[40];                /* the type as a string (a GPT type GUID in
                                 * lower case, a Mac type name), or empty */
  int type_id;                  /* the type as a number (the DOS system id,
                                 * 0x83), when type is empty */
  char name[128];               /* the partition name (GPT), or empty */
  char uuid[40];                /* PARTUUID: the GPT entry's GUID, for DOS
                                 * the disk id and number ("1234abcd-01"),
                                 * or empty */
};

/* A range of bytes of a disk. */
struct fde_byte_range {
  uint64_t off, len;
};

/* A partition table as libblkid reads it. */
struct fde_part_table {
  char type[16];                /* PTTYPE: "dos", "gpt", "PMBR" (a
                                 * protective MBR whose GPT libblkid
                                 * refuses)...; empty if none */
  char id[40];                  /* PTUUID: the GPT disk GUID, the DOS disk
                                 * id ("1234abcd"), or empty */
  size_t nparts;
  struct fde_part_entry *entries; /* nparts (malloc'd), unchecked: pass
                                   * each to fde_partition_entry_check */
  struct fde_part_info *info;   /* nparts (malloc'd), entries[i]'s details */
  /* The bytes of the disk the table was read from (sorted, disjoint;
   * malloc'd; NULL when unknown).  libblkid read nothing else, and what
   * was copied for it was chosen from these bytes alone: a write that
   * touches none of them cannot change the table it finds. */
  struct fde_byte_range *read;
  size_t nread;
};

/* Read the partition table of disk's virtual bytes into *tab (zeroed
 * first; free it with fde_part_table_free even on failure).  No table,
 * or one libblkid refuses (a GPT whose headers both fail their CRC), is
 * no error: nparts is 0.  0, -EFBIG (a disk past INT64_MAX bytes),
 * -ENOMEM, -EIO (libblkid cannot be set up), or the disk's read error. */
int fde_part_table_details(struct fde_disk *disk, struct fde_part_table *tab);
void fde_part_table_free(struct fde_part_table *tab);

/* What libblkid finds in an area: one file system (or swap, LVM, RAID
 * member, LUKS... whatever it calls a superblock), none, or several it
 * will not choose between. */
enum fde_contents_kind {
  FDE_CONTENTS_NONE,
  FDE_CONTENTS_FOUND,
  FDE_CONTENTS_AMBIVALENT,
};

struct fde_contents {
  enum fde_contents_kind kind;
  char type[32];                /* TYPE: "ext4", "vfat", "swap"... */
  char label[128];              /* LABEL, or empty */
  char uuid[64];                /* UUID, or empty */
};

/* Probe the bytes [start, start + size) of disk (a partition, or the
 * whole disk) for a file system, from its first and last MiB only (see
 * blkid-view.c for which superblocks live there).  0 with *c filled;
 * -EINVAL if the area is empty or outside the disk, -EFBIG, -ENOMEM,
 * -EIO (libblkid cannot be set up or fails), or the disk's read error. */
int fde_contents_read(struct fde_disk *disk, uint64_t start, uint64_t size,
                      struct fde_contents *c);

#endif /* FDE_BLKID_VIEW_H */
