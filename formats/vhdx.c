/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: the VHDX backend, read-only.
 *
 * [MS-VHDX] "Virtual Hard Disk v2 (VHDX) File Format" and QEMU's
 * block/vhdx.c, vhdx.h, vhdx-log.c (read to learn); the reference is
 * ../shared/reference/formats.md, section 4.  A VHDX file holds, in this
 * order of use:
 *  - the file identifier ("vhdxfile") at 0, two headers at 64 and 128 KiB
 *    (the valid one with the higher sequence number is current), two
 *    region tables at 192 and 256 KiB (the first valid one is used), each
 *    with a CRC-32C (formats/vhdx-log.c fde_vhdx_crc32c: no Debian
 *    library on the dependency list exports CRC-32C, zlib has only
 *    CRC-32, so the backend has its own table-driven one);
 *  - the log the current header names: replayed in memory
 *    (formats/vhdx-log.c), every later read of the file goes through it;
 *  - the metadata region: file parameters (block size, fixed, has
 *    parent), virtual disk size, page 83 data, logical and physical
 *    sector sizes, and for a differencing disk the parent locator;
 *  - the BAT region: one entry per payload block, and for every
 *    chunk_ratio payload blocks one sector bitmap entry.
 * Payload block states: NOT_PRESENT (0) and UNDEFINED (1) read as zeros,
 * or from the parent for a differencing disk; ZERO (2), UNMAPPED (3, and
 * 5 of the pre-1.0 drafts, as QEMU) read as zeros; FULLY_PRESENT (6) is
 * the block in the file; PARTIALLY_PRESENT (7, differencing only) takes
 * each logical sector from this file when its bit in the chunk's sector
 * bitmap is set (least significant bit first), else from the parent.
 *
 * Every field is checked before use with 64-bit arithmetic that cannot
 * overflow.  The disk never changes after open: no lock is needed. */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chain.h"
#include "format.h"
#include "utf16.h"
#include "vhdx.h"

#define HEADER1           (64u << 10)
#define HEADER2           (128u << 10)
#define HEADER_SIZE       4096u         /* the part the CRC covers */
#define REGION1           (192u << 10)
#define REGION2           (256u << 10)
#define REGION_SIZE       (64u << 10)
#define MAX_REGIONS       2047u
#define METADATA_TABLE    (64u << 10)
#define MAX_METADATA      2047u
#define MAX_DISK_SIZE     (64ull << 40) /* the specification's limit */
#define MIN_BLOCK         (1u << 20)
#define MAX_BLOCK         (256u << 20)
#define BITMAP_BLOCK      (1u << 20)    /* a sector bitmap block */

/* Ours: the BAT kept in memory is capped at 2^24 entries (128 MiB: 16 TiB
 * of 1 MiB blocks, 4 PiB of 256 MiB ones); a parent locator at 64 KiB. */
#define MAX_BAT_ENTRIES   (1u << 24)
#define MAX_LOCATOR       (64u << 10)
#define BITMAP_WINDOW     512u          /* bitmap bytes read per step */

#define STATE_NOT_PRESENT 0u
#define STATE_UNDEFINED   1u
#define STATE_ZERO        2u
#define STATE_UNMAPPED    3u
#define STATE_UNMAPPED_V0 5u
#define STATE_FULL        6u            /* also: sector bitmap present */
#define STATE_PARTIAL     7u
#define OFFSET_MASK       0xfffffffffff00000ull

static const uint8_t GUID_BAT[16] =  /* 2DC27766-F623-4200-9D64-115E9BFD4A08 */
  { 0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42,
    0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08 };
static const uint8_t GUID_METADATA[16] =  /* 8B7CA206-4790-4B9A-... */
  { 0x06, 0xa2, 0x7c, 0x8b, 0x90, 0x47, 0x9a, 0x4b,
    0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e };
static const uint8_t GUID_VHDX_PARENT[16] =  /* B04AEFB7-D19E-4A81-... */
  { 0xb7, 0xef, 0x4a, 0xb0, 0x9e, 0xd1, 0x81, 0x4a,
    0xb7, 0x89, 0x25, 0xb8, 0xe9, 0x44, 0x59, 0x13 };

/* The metadata items this backend knows, in the order of items[]. */
enum { FILE_PARAMS, DISK_SIZE, PAGE83, LOGICAL_SECTOR, PHYSICAL_SECTOR,
       PARENT_LOCATOR, N_ITEMS };
static const struct {
  uint8_t guid[16];
  uint32_t min_len;             /* bytes the item must have */
  const char *what;
} items[N_ITEMS] = {
  { { 0x37, 0x67, 0xa1, 0xca, 0x36, 0xfa, 0x43, 0x4d,     /* CAA16737 */
      0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b }, 8, "file parameters" },
  { { 0x24, 0x42, 0xa5, 0x2f, 0x1b, 0xcd, 0x76, 0x48,     /* 2FA54224 */
      0xb2, 0x11, 0x5d, 0xbe, 0xd8, 0x3b, 0xf4, 0xb8 }, 8, "virtual disk size" },
  { { 0xab, 0x12, 0xca, 0xbe, 0xe6, 0xb2, 0x23, 0x45,     /* BECA12AB */
      0x93, 0xef, 0xc3, 0x09, 0xe0, 0x00, 0xc7, 0x46 }, 16, "page 83 data" },
  { { 0x1d, 0xbf, 0x41, 0x81, 0x6f, 0xa9, 0x09, 0x47,     /* 8141BF1D */
      0xba, 0x47, 0xf2, 0x33, 0xa8, 0xfa, 0xab, 0x5f }, 4,
    "logical sector size" },
  { { 0xc7, 0x48, 0xa3, 0xcd, 0x5d, 0x44, 0x71, 0x44,     /* CDA348C7 */
      0x9c, 0xc9, 0xe9, 0x88, 0x52, 0x51, 0xc5, 0x56 }, 4,
    "physical sector size" },
  { { 0x2d, 0x5f, 0xd3, 0xa8, 0x0b, 0xb3, 0x4d, 0x45,     /* A8D35F2D */
      0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab, 0x0c }, 20, "parent locator" },
};

/* A region of the file [off, off + len), for the overlap checks. */
struct region {
  uint64_t off, len;
  const char *what;
};

struct vhdx_disk {
  struct fde_disk disk;         /* must come first */
  int fd;
  uint64_t file_size;           /* at open; every range followed lies inside */

  /* the current header */
  unsigned header;              /* 1 or 2 */
  uint64_t sequence;
  uint8_t data_write_guid[16];  /* a child's parent_linkage names it */
  struct region log;

  struct vhdx_overlay ov;       /* the log, replayed in memory */

  struct region bat_region, meta_region;

  /* metadata */
  uint32_t block_size;
  bool leave_allocated, has_parent;
  uint32_t logical_sector, physical_sector;
  uint64_t chunk_ratio;         /* payload blocks per sector bitmap block */

  uint64_t nr_blocks;           /* payload blocks covering the disk */
  uint64_t nr_entries;          /* BAT entries kept */
  uint64_t allocated;           /* blocks fully or partially present */
  uint64_t *bat;                /* host order */

  /* differencing */
  struct fde_disk *parent;
  const char *locator;          /* static: the key the name came from */
  char linkage[40];             /* parent_linkage as checked, "{...}" */
};

#define to_vhdx(d) ((struct vhdx_disk *) (d))

static uint16_t
le16(const uint8_t *p)
{
  return (uint16_t) (p[0] | p[1] << 8);
}

static uint32_t
le32(const uint8_t *p)
{
  return (uint32_t) p[0] | (uint32_t) p[1] << 8 | (uint32_t) p[2] << 16
    | (uint32_t) p[3] << 24;
}

static uint64_t
le64(const uint8_t *p)
{
  return (uint64_t) le32(p) | (uint64_t) le32(p + 4) << 32;
}

static uint64_t
min_u64(uint64_t a, uint64_t b)
{
  return a < b ? a : b;
}

static bool
overlaps(const struct region *a, const struct region *b)
{
  return a->len > 0 && b->len > 0 && a->off < b->off + b->len
    && b->off < a->off + a->len;
}

/* Read len bytes of the file at off as the replayed log leaves them. */
static int
file_read(struct vhdx_disk *v, void *buf, size_t len, uint64_t off)
{
  int r = fde_vhdx_read(v->fd, &v->ov, buf, len, off);

  if (r < 0)
    fde_error("%s: read: %s", v->disk.path, strerror(-r));
  return r;
}

/* QEMU's probe (vhdx_probe): the file identifier. */
static int
vhdx_probe(const uint8_t *buf, size_t len)
{
  return len >= 8 && memcmp(buf, "vhdxfile", 8) == 0 ? 100 : 0;
}

/* Size of the image file or block device. */
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

/* ---- Opening: the headers and the log ----------------------------------- */

/* Why header h (HEADER_SIZE bytes) is not valid, or NULL if it is:
 * "head", its CRC-32C, version 1 ([MS-VHDX] "Header", QEMU's
 * vhdx_parse_header). */
static const char *
header_fault(const uint8_t *h)
{
  if (memcmp(h, "head", 4) != 0)
    return "no 'head' signature";
  if (fde_vhdx_crc32c(h, HEADER_SIZE, 4) != le32(h + 4))
    return "CRC-32C mismatch";
  if (le16(h + 66) != 1)
    return "version is not 1";
  return NULL;
}

/* Choose the current header as the specification and QEMU do: the valid
 * one with the higher sequence number; two valid ones with the same
 * number must be identical (QEMU; Disk2VHD writes them so). */
static int
read_headers(struct vhdx_disk *v, uint8_t *h)
{
  static uint8_t zero_guid[16];
  uint8_t h1[HEADER_SIZE], h2[HEADER_SIZE];
  const char *f1, *f2;
  int r;

  if ((r = file_read(v, h1, HEADER_SIZE, HEADER1)) < 0
      || (r = file_read(v, h2, HEADER_SIZE, HEADER2)) < 0)
    return r;
  f1 = header_fault(h1);
  f2 = header_fault(h2);
  if (f1 != NULL && f2 != NULL) {
    fde_error("%s: VHDX has no valid header (header 1: %s; header 2: %s)",
              v->disk.path, f1, f2);
    return -EINVAL;
  }
  if (f1 == NULL && f2 == NULL && le64(h1 + 8) == le64(h2 + 8)
      && memcmp(h1, h2, 80) != 0) {
    fde_error("%s: VHDX headers differ but have the same sequence number "
              "%" PRIu64, v->disk.path, le64(h1 + 8));
    return -EINVAL;
  }
  v->header = f2 != NULL || (f1 == NULL && le64(h1 + 8) >= le64(h2 + 8))
    ? 1 : 2;
  memcpy(h, v->header == 1 ? h1 : h2, HEADER_SIZE);
  v->sequence = le64(h + 8);
  memcpy(v->data_write_guid, h + 32, 16);
  v->log = (struct region) { le64(h + 72), le32(h + 68), "log" };
  if (memcmp(h + 48, zero_guid, 16) == 0)
    v->log.len = 0;             /* no LogGuid: the log is empty */
  return 0;
}

/* Check the log's place as QEMU does (vhdx_parse_log: a version of 0, an
 * offset that is a nonzero multiple of 1 MiB, even with no log; a length
 * in whole MiB), inside the file, and replay it in memory. */
static int
open_log(struct vhdx_disk *v, const uint8_t *h)
{
  const char *path = v->disk.path;
  struct vhdx_log_place place = {
    .path = path, .fd = v->fd, .file_size = v->file_size,
    .offset = v->log.off, .length = (uint32_t) v->log.len, .guid = h + 48,
  };

  if (le16(h + 64) != 0) {
    fde_error("%s: VHDX log version %u is not 0", path, le16(h + 64));
    return -ENOTSUP;
  }
  if (v->log.off < VHDX_MiB || v->log.off % VHDX_MiB != 0
      || v->log.len % VHDX_MiB != 0) {
    fde_error("%s: VHDX log (%" PRIu64 " bytes at %#" PRIx64 ") is not in "
              "whole MiB past the first", path, v->log.len, v->log.off);
    return -EINVAL;
  }
  if (v->log.len == 0)
    return 0;
  if (v->log.off > v->file_size || v->log.len > v->file_size - v->log.off) {
    fde_error("%s: VHDX log (%" PRIu64 " bytes at %#" PRIx64 ") runs past "
              "the end of the file (%" PRIu64 " bytes)", path, v->log.len,
              v->log.off, v->file_size);
    return -EINVAL;
  }
  return fde_vhdx_log_replay(&place, &v->ov);
}

/* ---- Opening: the region table ------------------------------------------- */

/* Why region table t (REGION_SIZE bytes) is not valid, or NULL. */
static const char *
region_table_fault(const uint8_t *t)
{
  if (memcmp(t, "regi", 4) != 0)
    return "no 'regi' signature";
  if (fde_vhdx_crc32c(t, REGION_SIZE, 4) != le32(t + 4))
    return "CRC-32C mismatch";
  if (le32(t + 8) > MAX_REGIONS)
    return "more than 2047 entries";
  return NULL;
}

/* Check a region the table names: in whole MiB past the first, inside
 * the file, not overlapping the log or the other region. */
static int
check_region(struct vhdx_disk *v, const struct region *r,
             const struct region *other)
{
  const char *path = v->disk.path;

  if (r->off < VHDX_MiB || r->off % VHDX_MiB != 0 || r->len == 0
      || r->len % VHDX_MiB != 0) {
    fde_error("%s: VHDX %s region (%" PRIu64 " bytes at %#" PRIx64 ") is "
              "not in whole MiB past the first", path, r->what, r->len,
              r->off);
    return -EINVAL;
  }
  if (r->off > v->file_size || r->len > v->file_size - r->off) {
    fde_error("%s: VHDX %s region (%" PRIu64 " bytes at %#" PRIx64 ") runs "
              "past the end of the file (%" PRIu64 " bytes)", path, r->what,
              r->len, r->off, v->file_size);
    return -EINVAL;
  }
  if (overlaps(r, &v->log) || (other != NULL && overlaps(r, other))) {
    const struct region *o = overlaps(r, &v->log) ? &v->log : other;
    fde_error("%s: VHDX %s region [%#" PRIx64 ", %#" PRIx64 ") overlaps the "
              "%s [%#" PRIx64 ", %#" PRIx64 ")", path, r->what, r->off,
              r->off + r->len, o->what, o->off, o->off + o->len);
    return -EINVAL;
  }
  return 0;
}

/* Read the region table (the first valid copy: QEMU reads only the
 * first) and find the BAT and metadata regions in it: each exactly once;
 * an unknown region marked required is not supported. */
static int
read_regions(struct vhdx_disk *v)
{
  const char *path = v->disk.path, *f1, *f2;
  uint8_t *t = malloc(REGION_SIZE);
  const uint8_t *e;
  int r;

  if (t == NULL)
    return -ENOMEM;
  if ((r = file_read(v, t, REGION_SIZE, REGION1)) < 0)
    goto out;
  if ((f1 = region_table_fault(t)) != NULL) {
    if ((r = file_read(v, t, REGION_SIZE, REGION2)) < 0)
      goto out;
    if ((f2 = region_table_fault(t)) != NULL) {
      fde_error("%s: VHDX has no valid region table (table 1: %s; table 2: "
                "%s)", path, f1, f2);
      r = -EINVAL;
      goto out;
    }
  }
  r = 0;
  for (uint32_t i = 0; i < le32(t + 8) && r == 0; i++) {
    e = t + 16 + 32 * (size_t) i;
    struct region *dst = memcmp(e, GUID_BAT, 16) == 0 ? &v->bat_region
      : memcmp(e, GUID_METADATA, 16) == 0 ? &v->meta_region : NULL;
    if (dst == NULL && (le32(e + 28) & 1)) {
      fde_error("%s: VHDX region table names an unknown required region",
                path);
      r = -ENOTSUP;
    } else if (dst != NULL && dst->what != NULL) {
      fde_error("%s: VHDX region table names the %s region twice", path,
                dst->what);
      r = -EINVAL;
    } else if (dst != NULL)
      *dst = (struct region) { le64(e + 16), le32(e + 24),
                               dst == &v->bat_region ? "BAT" : "metadata" };
  }
  if (r == 0 && (v->bat_region.what == NULL || v->meta_region.what == NULL)) {
    fde_error("%s: VHDX region table has no %s region", path,
              v->bat_region.what == NULL ? "BAT" : "metadata");
    r = -EINVAL;
  }
  if (r == 0 && (r = check_region(v, &v->bat_region, &v->meta_region)) == 0)
    r = check_region(v, &v->meta_region, NULL);
out:
  free(t);
  return r;
}

/* ---- Opening: the metadata ----------------------------------------------- */

/* Where each known item lies: offset (from the region's start) and
 * length, found[] set for those present. */
struct item_places {
  bool found[N_ITEMS];
  uint32_t off[N_ITEMS], len[N_ITEMS];
};

/* Read the metadata table ("Metadata Region": "metadata", at most 2047
 * entries) and place every known item: once each, at or past 64 KiB,
 * inside the region, at least as long as its fields; an unknown item
 * marked required (flags bit 2) is not supported. */
static int
place_items(struct vhdx_disk *v, struct item_places *ip)
{
  const char *path = v->disk.path;
  uint8_t *t = malloc(METADATA_TABLE);
  uint32_t count;
  int r;

  if (t == NULL)
    return -ENOMEM;
  if ((r = file_read(v, t, METADATA_TABLE, v->meta_region.off)) < 0)
    goto out;
  count = le16(t + 10);
  if (memcmp(t, "metadata", 8) != 0 || count > MAX_METADATA) {
    fde_error("%s: VHDX metadata table is not valid (%s)", path,
              count > MAX_METADATA ? "more than 2047 entries"
              : "no 'metadata' signature");
    r = -EINVAL;
    goto out;
  }
  for (uint32_t i = 0; i < count && r == 0; i++) {
    const uint8_t *e = t + 32 + 32 * (size_t) i;
    uint32_t off = le32(e + 16), len = le32(e + 20);
    int k = 0;
    while (k < N_ITEMS && memcmp(e, items[k].guid, 16) != 0)
      k++;
    if (k == N_ITEMS) {
      if (le32(e + 24) & 4) {
        fde_error("%s: VHDX metadata names an unknown required item", path);
        r = -ENOTSUP;
      }
      continue;
    }
    if (ip->found[k]) {
      fde_error("%s: VHDX metadata has the %s item twice", path,
                items[k].what);
      r = -EINVAL;
    } else if (len < items[k].min_len || off < METADATA_TABLE
               || (uint64_t) off + len > v->meta_region.len) {
      fde_error("%s: VHDX metadata item %s (%" PRIu32 " bytes at %#" PRIx32
                ") is too short or outside its region", path,
                items[k].what, len, off);
      r = -EINVAL;
    }
    ip->found[k] = true;
    ip->off[k] = off;
    ip->len[k] = len;
  }
out:
  free(t);
  return r;
}

/* Read the first len bytes (at most 16) of item k. */
static int
read_item(struct vhdx_disk *v, const struct item_places *ip, int k,
          uint8_t *buf, size_t len)
{
  return file_read(v, buf, len, v->meta_region.off + ip->off[k]);
}

/* The fields of the five required items, checked: block size a power of
 * two from 1 to 256 MiB, sector sizes 512 or 4096, the virtual size a
 * whole number of logical sectors up to 64 TiB. */
static int
read_metadata(struct vhdx_disk *v, struct item_places *ip)
{
  const char *path = v->disk.path;
  uint8_t b[16];
  uint32_t bs, flags;
  int r;

  if ((r = place_items(v, ip)) < 0)
    return r;
  for (int k = 0; k < PARENT_LOCATOR; k++)
    if (!ip->found[k]) {
      fde_error("%s: VHDX metadata has no %s item", path, items[k].what);
      return -EINVAL;
    }
  if ((r = read_item(v, ip, FILE_PARAMS, b, 8)) < 0)
    return r;
  bs = le32(b);
  flags = le32(b + 4);
  v->leave_allocated = flags & 1;
  v->has_parent = flags & 2;
  if (bs < MIN_BLOCK || bs > MAX_BLOCK || (bs & (bs - 1)) != 0) {
    fde_error("%s: VHDX block size %" PRIu32 " is not a power of 2 from "
              "1 MiB to 256 MiB", path, bs);
    return -EINVAL;
  }
  v->block_size = bs;
  if ((r = read_item(v, ip, LOGICAL_SECTOR, b, 4)) < 0)
    return r;
  v->logical_sector = le32(b);
  if ((r = read_item(v, ip, PHYSICAL_SECTOR, b, 4)) < 0)
    return r;
  v->physical_sector = le32(b);
  if ((v->logical_sector != 512 && v->logical_sector != 4096)
      || (v->physical_sector != 512 && v->physical_sector != 4096)) {
    fde_error("%s: VHDX sector sizes %" PRIu32 " (logical) and %" PRIu32
              " (physical) are not 512 or 4096", path, v->logical_sector,
              v->physical_sector);
    return -EINVAL;
  }
  if ((r = read_item(v, ip, DISK_SIZE, b, 8)) < 0)
    return r;
  v->disk.size = le64(b);
  if (v->disk.size > MAX_DISK_SIZE || v->disk.size % v->logical_sector) {
    fde_error("%s: VHDX virtual disk size %" PRIu64 " is over 64 TiB or not "
              "a whole number of %" PRIu32 "-byte sectors", path,
              v->disk.size, v->logical_sector);
    return -EINVAL;
  }
  if (v->has_parent && !ip->found[PARENT_LOCATOR]) {
    fde_error("%s: VHDX differencing disk has no parent locator", path);
    return -EINVAL;
  }
  /* 2^23 sectors per bitmap block; at least 16 with the limits above */
  v->chunk_ratio = (8ull * BITMAP_BLOCK * v->logical_sector) / bs;
  return 0;
}

/* ---- Opening: the BAT ------------------------------------------------------ */

/* BAT index of payload block b, and of the sector bitmap of its chunk. */
static uint64_t
payload_index(const struct vhdx_disk *v, uint64_t b)
{
  return b + b / v->chunk_ratio;
}

static uint64_t
bitmap_index(const struct vhdx_disk *v, uint64_t b)
{
  return (b / v->chunk_ratio) * (v->chunk_ratio + 1) + v->chunk_ratio;
}

/* Check that len bytes at the file offset of BAT entry e (what, number
 * i) lie past the first MiB, inside the file and outside the log, BAT
 * and metadata regions. */
static int
check_extent(struct vhdx_disk *v, const char *what, uint64_t i, uint64_t e,
             uint64_t len)
{
  struct region x = { e & OFFSET_MASK, len, what };

  if (x.off < VHDX_MiB || x.off > v->file_size
      || len > v->file_size - x.off) {
    fde_error("%s: VHDX %s %" PRIu64 " (%" PRIu64 " bytes at %#" PRIx64
              ") is %s", v->disk.path, what, i, len, x.off,
              x.off < VHDX_MiB ? "in the header area"
              : "past the end of the file");
    return -EINVAL;
  }
  if (overlaps(&x, &v->log) || overlaps(&x, &v->bat_region)
      || overlaps(&x, &v->meta_region)) {
    fde_error("%s: VHDX %s %" PRIu64 " (at %#" PRIx64 ") overlaps the log, "
              "BAT or metadata region", v->disk.path, what, i, x.off);
    return -EINVAL;
  }
  return 0;
}

/* Check the state and place of every entry the disk uses ("BAT"):
 * payload states 0-3, 5, 6, and 7 in a differencing disk only, whose
 * chunk then needs a present sector bitmap; bitmap states 0 and 6
 * (differencing disks only: others never read them). */
static int
check_bat(struct vhdx_disk *v)
{
  for (uint64_t b = 0; b < v->nr_blocks; b++) {
    uint64_t e = v->bat[payload_index(v, b)];
    unsigned state = e & 7;
    uint64_t len = min_u64(v->block_size, v->disk.size - b * v->block_size);
    int r;
    if (state == STATE_FULL || (state == STATE_PARTIAL && v->has_parent)) {
      if ((r = check_extent(v, "block", b, e, len)) < 0)
        return r;
      v->allocated++;
    } else if (state > STATE_UNMAPPED && state != STATE_UNMAPPED_V0) {
      fde_error("%s: VHDX block %" PRIu64 " has BAT state %u, not a payload "
                "block state%s", v->disk.path, b, state,
                state == STATE_PARTIAL ? " of a disk without a parent" : "");
      return -EINVAL;
    }
    if (state == STATE_PARTIAL
        && (v->bat[bitmap_index(v, b)] & 7) != STATE_FULL) {
      fde_error("%s: VHDX block %" PRIu64 " is partially present but its "
                "sector bitmap is not", v->disk.path, b);
      return -EINVAL;
    }
  }
  for (uint64_t c = 0; v->has_parent && c < v->nr_entries / (v->chunk_ratio
                                                               + 1); c++) {
    uint64_t e = v->bat[c * (v->chunk_ratio + 1) + v->chunk_ratio];
    int r;
    if ((e & 7) == STATE_FULL
        && (r = check_extent(v, "sector bitmap", c, e, BITMAP_BLOCK)) < 0)
      return r;
    if ((e & 7) != STATE_FULL && (e & 7) != STATE_NOT_PRESENT) {
      fde_error("%s: VHDX sector bitmap %" PRIu64 " has BAT state %u",
                v->disk.path, c, (unsigned) (e & 7));
      return -EINVAL;
    }
  }
  return 0;
}

/* Read the BAT: the entries the disk needs ([MS-VHDX] "BAT": payload
 * blocks, a sector bitmap entry after every chunk_ratio of them, and for
 * a differencing disk the last chunk's bitmap entry too), in the region,
 * then check them. */
static int
load_bat(struct vhdx_disk *v)
{
  const char *path = v->disk.path;
  uint64_t n = (v->disk.size + v->block_size - 1) / v->block_size;
  uint64_t cr = v->chunk_ratio;
  uint8_t *raw;
  int r;

  v->nr_blocks = n;
  v->nr_entries = v->has_parent ? (n + cr - 1) / cr * (cr + 1)
    : n > 0 ? n + (n - 1) / cr : 0;
  if (v->nr_entries > v->bat_region.len / 8) {
    fde_error("%s: VHDX BAT region (%" PRIu64 " bytes) is too small for "
              "the %" PRIu64 " entries of the disk", path, v->bat_region.len,
              v->nr_entries);
    return -EINVAL;
  }
  if (v->nr_entries > MAX_BAT_ENTRIES) {
    fde_error("%s: VHDX BAT has %" PRIu64 " entries, more than the %u this "
              "program reads", path, v->nr_entries, MAX_BAT_ENTRIES);
    return -ENOTSUP;
  }
  if ((v->bat = malloc((v->nr_entries ? v->nr_entries : 1) * 8)) == NULL)
    return -ENOMEM;
  raw = (uint8_t *) v->bat;
  if ((r = file_read(v, raw, v->nr_entries * 8, v->bat_region.off)) < 0)
    return r;
  for (uint64_t i = 0; i < v->nr_entries; i++)
    v->bat[i] = le64(raw + 8 * i);      /* in place: reads ahead of writes */
  return check_bat(v);
}

/* ---- Opening: the parent ------------------------------------------------- */

/* Parse a GUID written "{xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx}" into the
 * 16 bytes a file stores (the first three fields little-endian). */
static bool
parse_guid(const char *s, uint8_t *g)
{
  static const int order[16] = { 3, 2, 1, 0, 5, 4, 7, 6,
                                 8, 9, 10, 11, 12, 13, 14, 15 };
  uint8_t raw[16];
  int n = 0;

  if (strlen(s) != 38 || s[0] != '{' || s[37] != '}')
    return false;
  for (int i = 1; i < 37; i++) {
    if (i == 9 || i == 14 || i == 19 || i == 24) {
      if (s[i] != '-')
        return false;
      continue;
    }
    const char *hex = "0123456789abcdef0123456789ABCDEF";
    const char *a = strchr(hex, s[i]), *b = strchr(hex, s[i + 1]);
    if (s[i] == '\0' || s[i + 1] == '\0' || a == NULL || b == NULL
        || (i + 1 == 9 || i + 1 == 14 || i + 1 == 19 || i + 1 == 24))
      return false;
    raw[n++] = (uint8_t) (((a - hex) % 16) << 4 | ((b - hex) % 16));
    i++;
  }
  for (int i = 0; i < 16; i++)
    g[order[i]] = raw[i];
  return true;
}

/* The keys of a VHDX parent locator this backend reads, in the order a
 * parent's name is looked for ([MS-VHDX] "Parent Locator": relative
 * path, volume path, absolute path; a volume path, "\\?\Volume{...}\",
 * names nothing on this system and is never used). */
enum { KEY_LINKAGE, KEY_LINKAGE2, KEY_RELATIVE, KEY_VOLUME, KEY_ABSOLUTE,
       N_KEYS };
static const char *const key_names[N_KEYS] = {
  "parent_linkage", "parent_linkage2", "relative_path", "volume_path",
  "absolute_win32_path",
};

/* Decode the locator (len bytes: type GUID, reserved, count, then
 * entries of key and value offsets and lengths into the locator) into
 * values[] (malloc'd, NULL where absent).  Unknown keys are skipped; a
 * key twice, an entry outside the locator or bad UTF-16 is refused. */
static int
decode_locator(struct vhdx_disk *v, const uint8_t *loc, uint32_t len,
               char **values)
{
  const char *path = v->disk.path;
  uint32_t count = le16(loc + 18);
  int r = 0;

  if (memcmp(loc, GUID_VHDX_PARENT, 16) != 0) {
    fde_error("%s: VHDX parent locator is not of the VHDX type", path);
    return -ENOTSUP;
  }
  if (20 + 12ull * count > len) {
    fde_error("%s: VHDX parent locator's %" PRIu32 " entries do not fit in "
              "it", path, count);
    return -EINVAL;
  }
  for (uint32_t i = 0; i < count && r == 0; i++) {
    const uint8_t *e = loc + 20 + 12 * (size_t) i;
    uint32_t ko = le32(e), vo = le32(e + 4), kl = le16(e + 8),
      vl = le16(e + 10);
    char *key = NULL, *value = NULL;
    int k;
    if ((uint64_t) ko + kl > len || (uint64_t) vo + vl > len || kl % 2
        || vl % 2 || kl == 0 || vl == 0) {
      fde_error("%s: VHDX parent locator entry %" PRIu32 " is outside the "
                "locator or not UTF-16", path, i);
      return -EINVAL;
    }
    if ((r = fde_utf16_to_utf8(loc + ko, kl, false, FDE_UTF16_NUL_REFUSED,
                                &key)) == 0)
      r = fde_utf16_to_utf8(loc + vo, vl, false, FDE_UTF16_NUL_REFUSED,
                            &value);
    for (k = 0; r == 0 && k < N_KEYS && strcmp(key, key_names[k]) != 0; k++)
      ;
    if (r == 0 && k < N_KEYS && values[k] != NULL) {
      fde_error("%s: VHDX parent locator has %s twice", path, key_names[k]);
      r = -EINVAL;
    } else if (r == 0 && k < N_KEYS) {
      values[k] = value;
      value = NULL;
    } else if (r == -EINVAL)
      fde_error("%s: VHDX parent locator entry %" PRIu32 " is not valid "
                "UTF-16", path, i);
    free(key);
    free(value);
  }
  return r;
}

/* A Windows path from the locator as a name this system can open: the
 * relative path with '\' as '/'; the absolute path only when it is no
 * drive or UNC path (a POSIX path some tools write there). */
static bool
usable_name(char *name, bool absolute)
{
  if (name == NULL || name[0] == '\0' || (name[0] != '\0' && name[1] == ':')
      || (name[0] == '\\' && name[1] == '\\'))
    return false;
  for (char *c = name; *c != '\0'; c++)
    if (*c == '\\')
      *c = '/';
  return absolute == (name[0] == '/');
}

/* Open the parent (format vhdx) that the locator names, through the
 * chain (formats/chain.h: the owner rule, loops, depth), and check that
 * it is the disk this one was made on: its current header's
 * DataWriteGuid is the locator's parent_linkage (or parent_linkage2, the
 * specification's alternative). */
static int
open_parent(const struct fde_open_params *p, struct vhdx_disk *v,
            const struct item_places *ip)
{
  char *values[N_KEYS] = { NULL };
  uint8_t *loc = NULL, want[16], want2[16];
  const char *name = NULL;
  uint32_t len = ip->len[PARENT_LOCATOR];
  int r = -EINVAL;

  if (len > MAX_LOCATOR) {
    fde_error("%s: VHDX parent locator of %" PRIu32 " bytes is larger than "
              "%u", p->path, len, MAX_LOCATOR);
    return -ENOTSUP;
  }
  if ((loc = malloc(len)) == NULL)
    return -ENOMEM;
  if ((r = file_read(v, loc, len, v->meta_region.off + ip->off[PARENT_LOCATOR]))
      < 0 || (r = decode_locator(v, loc, len, values)) < 0)
    goto out;
  r = -EINVAL;
  if (values[KEY_LINKAGE] == NULL || !parse_guid(values[KEY_LINKAGE], want)
      || (values[KEY_LINKAGE2] != NULL
          && !parse_guid(values[KEY_LINKAGE2], want2))) {
    fde_error("%s: VHDX parent locator has no parent_linkage GUID", p->path);
    goto out;
  }
  snprintf(v->linkage, sizeof v->linkage, "%s", values[KEY_LINKAGE]);
  if (usable_name(values[KEY_RELATIVE], false)) {
    name = values[KEY_RELATIVE];
    v->locator = "relative_path";
  } else if (usable_name(values[KEY_ABSOLUTE], true)) {
    name = values[KEY_ABSOLUTE];
    v->locator = "absolute_win32_path";
  } else {
    fde_error("%s: VHDX differencing disk names no parent usable here (no "
              "relative_path, no absolute_win32_path without a drive)",
              p->path);
    goto out;
  }
  if ((r = fde_chain_open_backing(p, name, "vhdx", "parent", &v->parent)) < 0)
    goto out;
  if (v->parent->format != &fde_format_vhdx
      || (memcmp(to_vhdx(v->parent)->data_write_guid, want, 16) != 0
          && (values[KEY_LINKAGE2] == NULL
              || memcmp(to_vhdx(v->parent)->data_write_guid, want2, 16)))) {
    fde_error("%s: VHDX parent %s is not the disk this one was made on (its "
              "DataWriteGuid is not the parent_linkage %s)", p->path,
              v->parent->path, v->linkage);
    r = -EINVAL;
  }
out:
  for (int k = 0; k < N_KEYS; k++)
    free(values[k]);
  free(loc);
  return r;
}

/* ---- Reading ----------------------------------------------------------------- */

/* How a payload block's bytes are found. */
enum source { SRC_ZERO, SRC_FILE, SRC_LOWER, SRC_BITMAP };

static enum source
block_source(const struct vhdx_disk *v, uint64_t e)
{
  switch (e & 7) {
  case STATE_FULL:
    return SRC_FILE;
  case STATE_PARTIAL:
    return SRC_BITMAP;
  case STATE_NOT_PRESENT:
  case STATE_UNDEFINED:
    return v->has_parent ? SRC_LOWER : SRC_ZERO;
  default:                      /* ZERO, UNMAPPED (checked at open) */
    return SRC_ZERO;
  }
}

/* A window on a chunk's sector bitmap: the bits of bitmap bits first ..
 * first + 8 * len - 1 of block b's chunk (len 0: nothing read yet). */
struct bitmap_window {
  uint64_t block;
  uint64_t first;
  uint32_t len;
  uint8_t bits[BITMAP_WINDOW];
};

/* The run of [in, in + n) of partially present block b whose logical
 * sectors all have the same bitmap bit: its length (> 0, at most n,
 * ending at a sector boundary or at in + n) in *run and the bit in
 * *present (set: in this file).  Reads the bitmap through w (and the
 * log's overlay).  0 or -errno. */
static int
bitmap_run(struct vhdx_disk *v, struct bitmap_window *w, uint64_t b,
           uint64_t in, uint64_t n, uint64_t *run, bool *present)
{
  uint64_t spb = v->block_size / v->logical_sector;
  uint64_t base = (b % v->chunk_ratio) * spb;   /* the block's first bit */
  uint64_t s = base + in / v->logical_sector;
  uint64_t last = base + (in + n - 1) / v->logical_sector, t;
  int r;

  if (w->len == 0 || w->block / v->chunk_ratio != b / v->chunk_ratio
      || s < w->first || s >= w->first + 8ull * w->len) {
    w->block = b;
    w->first = s & ~7ull;
    w->len = BITMAP_WINDOW;     /* a bitmap block holds 2^23 bits */
    w->len = (uint32_t) min_u64(w->len, BITMAP_BLOCK - w->first / 8);
    r = file_read(v, w->bits, w->len, (v->bat[bitmap_index(v, b)]
                                       & OFFSET_MASK) + w->first / 8);
    if (r < 0) {
      w->len = 0;
      return r;
    }
  }
  *present = w->bits[(s - w->first) / 8] >> ((s - w->first) % 8) & 1;
  last = min_u64(last, w->first + 8ull * w->len - 1);
  for (t = s + 1; t <= last; t++)
    if ((w->bits[(t - w->first) / 8] >> ((t - w->first) % 8) & 1)
        != *present)
      break;
  *run = min_u64((t - base) * v->logical_sector, in + n) - in;
  return 0;
}

/* Where byte in of block entry e lies in the file. */
static uint64_t
block_host(uint64_t e, uint64_t in)
{
  return (e & OFFSET_MASK) + in;
}

/* Read n bytes at off, inside one block. */
static int
read_block(struct vhdx_disk *v, uint8_t *buf, size_t n, uint64_t off)
{
  uint64_t b = off / v->block_size, in = off % v->block_size;
  uint64_t e = v->bat[payload_index(v, b)];
  struct bitmap_window w = { .len = 0 };
  uint64_t done = 0, run;
  bool present;
  int r = 0;

  switch (block_source(v, e)) {
  case SRC_FILE:
    return file_read(v, buf, n, block_host(e, in));
  case SRC_LOWER:
    return fde_chain_read_lower(v->parent, buf, n, off);
  case SRC_ZERO:
    memset(buf, 0, n);
    return 0;
  case SRC_BITMAP:
    break;
  }
  while (done < n && r == 0) {
    r = bitmap_run(v, &w, b, in + done, n - done, &run, &present);
    if (r == 0)
      r = present ? file_read(v, buf + done, run, block_host(e, in + done))
        : fde_chain_read_lower(v->parent, buf + done, run, off + done);
    done += run;
  }
  return r;
}

static int
vhdx_pread(struct fde_disk *d, void *buf, size_t len, uint64_t off)
{
  struct vhdx_disk *v = to_vhdx(d);
  uint8_t *p = buf;
  int r = 0;

  while (len > 0 && r == 0) {
    size_t n = min_u64(len, v->block_size - off % v->block_size);
    r = read_block(v, p, n, off);
    p += n;
    off += n;
    len -= n;
  }
  return r;
}

/* ---- Allocation: block_status and map -------------------------------- */

/* The run from off (at most len) over blocks whose entries all have
 * source src (SRC_FILE or SRC_ZERO). */
static uint64_t
same_blocks(const struct vhdx_disk *v, uint64_t off, uint64_t len,
            enum source src)
{
  uint64_t b = off / v->block_size;
  uint64_t run = min_u64(len, v->block_size - off % v->block_size);

  while (run < len && ++b < v->nr_blocks
         && block_source(v, v->bat[payload_index(v, b)]) == src)
    run = min_u64(len, run + v->block_size);
  return run;
}

/* QEMU 7.2's vhdx driver has no block status: `qemu-img map` calls the
 * whole disk data.  We answer from the BAT: present blocks (and sectors)
 * are data, the rest zeros or the parent's answer; every range called
 * zero reads as zeros in QEMU's view too. */
static int
vhdx_block_status(struct fde_disk *d, uint64_t off, uint64_t len,
                  uint64_t *run, unsigned *status)
{
  struct vhdx_disk *v = to_vhdx(d);
  uint64_t b = off / v->block_size, in = off % v->block_size;
  enum source src = block_source(v, v->bat[payload_index(v, b)]);
  struct bitmap_window w = { .len = 0 };
  bool present;
  int r;

  if (src == SRC_FILE || src == SRC_ZERO) {
    *run = same_blocks(v, off, len, src);
    *status = src == SRC_FILE ? FDE_BS_DATA : FDE_BS_ZERO;
    return 0;
  }
  len = min_u64(len, v->block_size - in);
  if (src == SRC_LOWER)
    return fde_chain_status_lower(v->parent, off, len, run, status);
  if ((r = bitmap_run(v, &w, b, in, len, run, &present)) < 0)
    return r;
  if (!present)
    return fde_chain_status_lower(v->parent, off, *run, run, status);
  *status = FDE_BS_DATA;
  return 0;
}

/* format.h's map: a present block's (or sector's) bytes are the file's
 * at block_host, checked at open to lie inside it, unless the replayed
 * log overlays them (those are read with pread, from the overlay). */
static int
vhdx_map(struct fde_disk *d, uint64_t off, uint64_t len, int *fd,
         uint64_t *host, uint64_t *run)
{
  struct vhdx_disk *v = to_vhdx(d);
  uint64_t b = off / v->block_size, in = off % v->block_size;
  uint64_t e = v->bat[payload_index(v, b)];
  enum source src = block_source(v, e);
  struct bitmap_window w = { .len = 0 };
  bool present = src == SRC_FILE;
  int r;

  *run = min_u64(len, v->block_size - in);
  if (src == SRC_BITMAP
      && (r = bitmap_run(v, &w, b, in, *run, run, &present)) < 0)
    return r;
  if (src == SRC_LOWER || (src == SRC_BITMAP && !present))
    return fde_chain_map_lower(v->parent, off, *run, fd, host, run);
  if (!present)
    return 0;
  *fd = v->fd;
  *host = block_host(e, in);
  return !fde_vhdx_overlaid(&v->ov, *host, *run);
}

/* ---- Open, describe, close ----------------------------------------------- */

/* Free everything but the descriptor. */
static void
free_disk(struct vhdx_disk *v)
{
  if (v == NULL)
    return;
  fde_disk_close(v->parent);
  fde_vhdx_overlay_free(&v->ov);
  free(v->bat);
  free(v->disk.path);
  free(v);
}

/* Everything after the file size and the identifier, in the order the
 * specification reads them: headers, log, region table, metadata, BAT,
 * parent. */
static int
open_parts(const struct fde_open_params *p, struct vhdx_disk *v)
{
  uint8_t h[HEADER_SIZE];
  struct item_places ip = { .found = { false } };
  int r;

  if ((r = read_headers(v, h)) < 0 || (r = open_log(v, h)) < 0
      || (r = read_regions(v)) < 0 || (r = read_metadata(v, &ip)) < 0
      || (r = load_bat(v)) < 0)
    return r;
  if (v->ov.entries > 0 && p->verbose > 0)
    fde_info("%s: VHDX log replayed in memory (%" PRIu64 " entries); the "
             "file is not changed", p->path, v->ov.entries);
  return v->has_parent ? open_parent(p, v, &ip) : 0;
}

/* Open a VHDX read-only.  Where QEMU (7.2) differs:
 *  - a log that needs replaying: QEMU refuses a read-only open (and
 *    replays it into the file when opened read-write); we replay it in
 *    memory, so the view is what QEMU shows after its replay;
 *  - differencing disks: QEMU refuses them; we read the parent;
 *  - 4096-byte logical sectors: QEMU mixes 512- and 4096-byte units
 *    (formats.md 4.2); we follow the specification;
 *  - refused here, read by QEMU: regions not in whole MiB or past the end
 *    of the file, region table 2 used when table 1 is bad (QEMU refuses),
 *    metadata items outside their region, a virtual size that is not a
 *    whole number of sectors, a block in the header area, sector sizes
 *    other than 512 and 4096, more than 2^24 BAT entries. */
static int
vhdx_open(const struct fde_open_params *p, struct fde_disk **out)
{
  struct vhdx_disk *v = calloc(1, sizeof *v);
  uint8_t ident[8];
  int r = -ENOMEM;

  if (v == NULL || (v->disk.path = strdup(p->path)) == NULL)
    goto fail;
  v->disk.format = &fde_format_vhdx;
  v->disk.read_only = true;
  v->fd = p->fd;
  if ((r = file_size(p->fd, &v->file_size)) < 0) {
    fde_error("%s: cannot find the file size: %s", p->path, strerror(-r));
    goto fail;
  }
  if ((r = file_read(v, ident, 8, 0)) < 0)
    goto fail;
  if (memcmp(ident, "vhdxfile", 8) != 0 || v->file_size < VHDX_MiB) {
    fde_error("%s: not a VHDX image (%s)", p->path,
              memcmp(ident, "vhdxfile", 8) != 0 ? "no 'vhdxfile' identifier"
              : "shorter than its 1 MiB header area: truncated?");
    r = -EINVAL;
    goto fail;
  }
  if ((r = open_parts(p, v)) < 0)
    goto fail;
  *out = &v->disk;
  return 0;

fail:
  if (r == -ENOMEM)
    fde_error("%s: out of memory", p->path);
  free_disk(v);
  return r;
}

static uint64_t
vhdx_allocated_bytes(struct fde_disk *d)
{
  return fde_file_allocated(to_vhdx(d)->fd);
}

static void
vhdx_describe(struct fde_disk *d, FILE *out)
{
  struct vhdx_disk *v = to_vhdx(d);

  fprintf(out, "subformat: %s\n", v->has_parent ? "differencing"
          : v->leave_allocated ? "fixed" : "dynamic");
  fprintf(out, "block-size: %" PRIu32 "\n", v->block_size);
  fprintf(out, "logical-sector-size: %" PRIu32 "\n", v->logical_sector);
  fprintf(out, "physical-sector-size: %" PRIu32 "\n", v->physical_sector);
  fprintf(out, "blocks: %" PRIu64 "\n", v->nr_blocks);
  fprintf(out, "blocks-allocated: %" PRIu64 "\n", v->allocated);
  fprintf(out, "header: %u (sequence %" PRIu64 ")\n", v->header,
          v->sequence);
  if (v->ov.entries > 0)
    fprintf(out, "log-replayed: yes, in memory (%" PRIu64 " entries to "
            "sequence %" PRIu64 "; the file is unchanged, and writing it is "
            "refused until writes are supported)\n", v->ov.entries,
            v->ov.head_seq);
  else
    fprintf(out, "log-replayed: no (%s)\n",
            v->log.len == 0 ? "no log" : "nothing to replay");
  if (v->parent != NULL) {
    fprintf(out, "parent-locator: %s\n", v->locator);
    fputs("parent-linkage: ", out);
    fde_print_safe(out, v->linkage);
    fputc('\n', out);
    fde_chain_describe(v->parent, false, out);
  }
}

static void
vhdx_close(struct fde_disk *d)
{
  struct vhdx_disk *v = to_vhdx(d);
  int fd = v->fd;

  free_disk(v);
  close(fd);
}

static bool
vhdx_can_map(struct fde_disk *d)
{
  (void) d;
  return true;
}

const struct fde_format fde_format_vhdx = {
  .name            = "vhdx",
  .probe           = vhdx_probe,
  .open            = vhdx_open,
  .close           = vhdx_close,

  .pread           = vhdx_pread,
  .block_status    = vhdx_block_status,

  .allocated_bytes = vhdx_allocated_bytes,
  .describe        = vhdx_describe,
  .map             = vhdx_map,
  .can_map         = vhdx_can_map,
};
