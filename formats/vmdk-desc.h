/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: the text of a VMDK descriptor (internal to
 * formats/vmdk.c; formats/vmdk-desc.c).
 *
 * Pure parsing, no I/O: the caller reads the text and opens the files.
 * Follows QEMU's block/vmdk.c (vmdk_open_desc_file, vmdk_parse_extents,
 * vmdk_parse_description, vmdk_read_cid, vmdk_parent_open), see
 * ../shared/reference/formats.md section 2.5, with the caps below.
 * Errors: negative errno with one line logged naming path and the problem
 * (-EINVAL malformed or over a cap, -ENOTSUP a createType or extent type
 * QEMU refuses or we do not serve, -ENOMEM). */
#ifndef FDE_VMDK_DESC_H
#define FDE_VMDK_DESC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A descriptor is at most this many bytes: QEMU's vmdk_read_desc reads
 * no more (it silently cuts a longer file; we refuse one). */
#define VMDK_DESC_MAX      ((1u << 20) - 1)
/* QEMU looks for CID, parentCID and parentFileNameHint in the first
 * DESC_SIZE bytes of the descriptor only (at 0x200 of a sparse file). */
#define VMDK_DESC_ID_BYTES 10240u
/* Ours: lines of a descriptor, and extents (each an open file). */
#define VMDK_MAX_LINES     65536u
#define VMDK_MAX_EXTENTS   4096u
/* QEMU's %511[^\n\r"] for an extent's file name. */
#define VMDK_NAME_MAX      511u
/* QEMU's backing-name buffer (PATH_MAX) for parentFileNameHint. */
#define VMDK_HINT_MAX      4095u

enum vmdk_extent_type {
  VMDK_EXT_FLAT,        /* raw bytes at an offset of the file */
  VMDK_EXT_VMFS,        /* the same, at offset 0 */
  VMDK_EXT_SPARSE,      /* a hosted sparse file (KDMV, or COWD) */
  VMDK_EXT_VMFSSPARSE,  /* an ESX sparse file (COWD, or KDMV) */
};

struct vmdk_desc_extent {
  enum vmdk_extent_type type;
  uint64_t sectors;     /* > 0, at most INT64_MAX / 512 */
  uint64_t offset;      /* FLAT: sectors into the file; else 0 */
  char *name;           /* as written (malloc'd): relative, no ".." */
};

/* The ddb.* values --probe shows ("" when absent; printable ASCII). */
struct vmdk_ddb {
  char adapter_type[32];
  char cylinders[16], heads[16], sectors[16];
  char hw_version[16];
};

struct vmdk_desc {
  char create_type[128];          /* QEMU's buffer size */
  struct vmdk_desc_extent *ext;   /* in descriptor order (malloc'd) */
  unsigned n_ext;
  struct vmdk_ddb ddb;
};

/* The first-sector probe of a descriptor file, as QEMU's vmdk_probe: its
 * first line that is not a '#' comment or blank is "version=1|2|3"
 * ended by "\n" or "\r\n".  len bytes of buf (no NUL needed). */
bool vmdk_desc_probe(const char *buf, size_t len);

/* Parse text (NUL-terminated, at most VMDK_DESC_MAX bytes: QEMU reads up
 * to the first NUL) as a descriptor file: its createType (one of
 * monolithicFlat, vmfs, vmfsSparse, twoGbMaxExtentSparse,
 * twoGbMaxExtentFlat; seSparse and the others are -ENOTSUP), its extent
 * lines and ddb lines into *d (free with vmdk_desc_free, also after a
 * failure).  At most VMDK_MAX_LINES lines and VMDK_MAX_EXTENTS extents.
 * Extent lines follow QEMU: "ACCESS SECTORS TYPE "NAME" [OFFSET]"; lines
 * that are not RW, have fewer than four fields, a size <= 0 or another
 * type (ZERO...) are skipped as QEMU skips them (so the disk is
 * smaller); a FLAT line without an offset, a VMFS or sparse one with one
 * is refused.  Ours: each line is read alone (QEMU's sscanf may take a
 * field from the next line), a name must be relative without a ".."
 * component, and at most VMDK_NAME_MAX bytes. */
int vmdk_desc_parse(const char *text, const char *path, struct vmdk_desc *d);

/* Only the ddb.* lines of text (an embedded descriptor: QEMU parses
 * nothing else of it). */
void vmdk_desc_parse_ddb(const char *text, struct vmdk_ddb *ddb);

void vmdk_desc_free(struct vmdk_desc *d);

/* What QEMU reads from the first VMDK_DESC_ID_BYTES of a descriptor. */
struct vmdk_ids {
  uint32_t cid;         /* after the first "CID" (parentCID's, if first) */
  uint32_t parent_cid;
  char *parent_hint;    /* parentFileNameHint (malloc'd), NULL if none or
                         * empty */
};

/* text: the bytes QEMU's vmdk_read_cid reads (id_len bytes, at most
 * VMDK_DESC_ID_BYTES; a NUL ends it earlier).  Both CIDs must be there;
 * a hint without its closing quote or over VMDK_HINT_MAX bytes is
 * refused, as QEMU does.  0 or -errno; free ids->parent_hint. */
int vmdk_desc_ids(const char *text, size_t id_len, const char *path,
                  struct vmdk_ids *ids);

#endif /* FDE_VMDK_DESC_H */
