/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: the VHD backend (QEMU's "vpc"), read-only.
 *
 * Microsoft's "Virtual Hard Disk Image Format Specification" (2006) and
 * QEMU's block/vpc.c; the reference is ../shared/reference/formats.md,
 * section 3.  A VHD is one of:
 *  - fixed (disk type 2): the disk's bytes, then a 512-byte footer in the
 *    file's last sector, nothing else.  The view is the file without its
 *    footer.  QEMU's probe looks for the footer at offset 0 only, so
 *    without -f vpc QEMU shows a fixed VHD as raw, footer included; we
 *    probe the last sector too (fde_vpc_fixed_footer);
 *  - dynamic (3): a copy of the footer at offset 0, a dynamic disk header
 *    ("cxsparse") at the footer's data offset, a block allocation table
 *    (BAT) of big-endian sector numbers, and blocks, each a sector bitmap
 *    followed by the block's data.  As QEMU does, an allocated block is
 *    read whole and its bitmap never consulted; an unallocated one
 *    (0xffffffff) reads as zeros;
 *  - differencing (4): a dynamic disk over a parent VHD.  QEMU opens it
 *    as a plain dynamic disk and ignores the parent; we follow the
 *    specification ("Implementing a Differencing Hard Disk"): an
 *    unallocated block, and a sector of an allocated block whose bitmap
 *    bit (most significant bit first) is clear, read from the parent,
 *    found through the parent locators and opened by formats/chain.c.
 *
 * Every field is checked before it is used, with 64-bit arithmetic that
 * cannot overflow (the limits below).  Where QEMU would read an image we
 * refuse, the refusal is deliberate and listed in vpc_open's comment.
 * The disk never changes after open: the members need no lock. */
#include <config.h>

#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chain.h"
#include "format.h"
#include "utf16.h"

#define SECTOR            512u
#define FOOTER_SIZE       512u    /* "Hard Disk Footer Format" */
#define DYN_HEADER_SIZE   1024u   /* "Dynamic Disk Header Format" */

#define TYPE_FIXED        2u
#define TYPE_DYNAMIC      3u
#define TYPE_DIFFERENCING 4u

#define BAT_UNUSED        0xffffffffu

/* QEMU's limits (block/vpc.c): 2040 GiB, and the CHS geometry that means
 * "the size is in current_size" (65535 cylinders, 16 heads, 255 sectors). */
#define MAX_SECTORS       0xff000000ull
#define MAX_GEOMETRY      (65535ull * 16 * 255)

/* Ours.  Blocks under 4 KiB: QEMU's bitmap size formula gives 0 bytes
 * there where the specification has one sector, so the two disagree on
 * where the data is; no tool makes such blocks.  Over 256 MiB: no tool
 * makes them either (the specification's default is 2 MiB).  The BAT
 * entries kept in memory (those that cover the disk) are capped at
 * 64 MiB; QEMU's cap on the table (INT_MAX / 4 entries) still applies to
 * the entries read. */
#define MIN_BLOCK         4096u
#define MAX_BLOCK         (256u << 20)
#define MAX_KEPT_ENTRIES  (16u << 20)
#define MAX_TABLE_ENTRIES ((uint32_t) INT_MAX / 4)
#define MAX_LOCATOR       8192u   /* bytes of a parent locator's name */

/* Bitmap bytes looked at per step of a differencing block (4096 sectors,
 * 2 MiB of data). */
#define BITMAP_WINDOW     512u

struct vpc_disk {
  struct fde_disk disk;         /* must come first */
  int fd;
  uint64_t file_size;           /* at open; every range followed lies inside */
  uint32_t type;                /* TYPE_* of the footer */
  bool footer_copy;             /* the footer was read at offset 0 */

  /* footer fields, for describe and the parent check */
  char creator[4];
  uint32_t creator_version;
  char host_os[4];
  uint64_t current_size;
  uint16_t cyls;
  uint8_t heads, spt;
  const char *size_rule;        /* static: how disk.size was chosen */
  uint8_t uuid[16];

  /* fixed: the disk's bytes are the file's [0, data_end); zeros after */
  uint64_t data_end;

  /* dynamic and differencing */
  uint64_t header_offset, bat_offset;
  uint32_t block_size;
  uint32_t bitmap_size;         /* bytes before each block's data */
  uint32_t max_entries;         /* the table's length, as the header says */
  uint32_t nr_blocks;           /* entries covering the disk, kept in bat */
  uint32_t allocated;           /* of those, allocated */
  uint32_t *bat;                /* host order */

  /* differencing */
  struct fde_disk *parent;
  const char *locator;          /* static: where the parent's name came from */
  uint8_t parent_uuid[16];
};

#define to_vpc(d) ((struct vpc_disk *) (d))

static uint16_t
get_be16(const uint8_t *p)
{
  return (uint16_t) (p[0] << 8 | p[1]);
}

static uint32_t
get_be32(const uint8_t *p)
{
  uint32_t v;

  memcpy(&v, p, 4);
  return be32toh(v);
}

static uint64_t
get_be64(const uint8_t *p)
{
  uint64_t v;

  memcpy(&v, p, 8);
  return be64toh(v);
}

static uint64_t
min_u64(uint64_t a, uint64_t b)
{
  return a < b ? a : b;
}

/* The specification's checksum: the one's complement of the sum of the
 * bytes of buf (len), the 4-byte checksum field at field counted as 0. */
static uint32_t
vhd_checksum(const uint8_t *buf, size_t len, size_t field)
{
  uint32_t sum = 0;

  for (size_t i = 0; i < len; i++)
    if (i < field || i >= field + 4)
      sum += buf[i];
  return ~sum;
}

/* Does buf (512 bytes) hold a footer: the cookie and a checksum that
 * matches (footer offset 64)? */
static bool
footer_valid(const uint8_t *buf)
{
  return memcmp(buf, "conectix", 8) == 0
    && vhd_checksum(buf, FOOTER_SIZE, 64) == get_be32(buf + 64);
}

/* QEMU's probe (vpc_probe): the footer's copy at offset 0. */
static int
vpc_probe(const uint8_t *buf, size_t len)
{
  return len >= 8 && memcmp(buf, "conectix", 8) == 0 ? 100 : 0;
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

/* A fixed VHD, recognised by its last sector (the table of formats'
 * tail_magic, see format.h): the footer with a valid checksum, disk type
 * fixed, and a current size that is the file less the footer.  QEMU does
 * not look there (see the top of the file). */
bool
fde_vpc_fixed_footer(const uint8_t *tail, size_t len, uint64_t size)
{
  return len == FOOTER_SIZE && size >= FOOTER_SIZE && footer_valid(tail)
    && get_be32(tail + 60) == TYPE_FIXED
    && get_be64(tail + 48) == size - FOOTER_SIZE;
}

/* ---- Opening: the footer ----------------------------------------------- */

/* Read the footer as QEMU finds it: the copy at offset 0 if the file
 * starts with the cookie, else the last sector.  Checks the cookie, the
 * checksum and the disk type, and that the footer's place fits the type
 * (a fixed disk has no copy at 0; a dynamic one has one). */
static int
read_footer(struct vpc_disk *v, uint8_t *buf)
{
  const char *path = v->disk.path;
  int r = fde_pread_full(v->fd, buf, FOOTER_SIZE, 0);

  if (r == 0 && memcmp(buf, "conectix", 8) == 0)
    v->footer_copy = true;
  else if (r == 0 && v->file_size < FOOTER_SIZE) {
    fde_error("%s: not a VHD image (shorter than its footer)", path);
    return -EINVAL;
  } else if (r == 0)
    r = fde_pread_full(v->fd, buf, FOOTER_SIZE, v->file_size - FOOTER_SIZE);
  if (r < 0) {
    fde_error("%s: read: %s", path, strerror(-r));
    return r;
  }
  if (memcmp(buf, "conectix", 8) != 0) {
    fde_error("%s: not a VHD image (no 'conectix' footer at the start or "
              "the end)", path);
    return -EINVAL;
  }
  if (!footer_valid(buf)) {
    fde_error("%s: VHD footer checksum mismatch (stored %#" PRIx32
              ", computed %#" PRIx32 ")", path, get_be32(buf + 64),
              vhd_checksum(buf, FOOTER_SIZE, 64));
    return -EINVAL;
  }
  v->type = get_be32(buf + 60);
  if (v->type < TYPE_FIXED || v->type > TYPE_DIFFERENCING) {
    fde_error("%s: VHD disk type %" PRIu32 " is not fixed (2), dynamic (3) "
              "or differencing (4)", path, v->type);
    return -EINVAL;
  }
  if (v->footer_copy != (v->type != TYPE_FIXED)) {
    fde_error("%s: VHD footer says %s, but %s", path,
              v->type == TYPE_FIXED ? "fixed" : "dynamic or differencing",
              v->footer_copy ? "a fixed disk has no copy of it at offset 0"
              : "there is no copy of it at offset 0");
    return -EINVAL;
  }
  return 0;
}

/* The virtual size as QEMU (block/vpc.c vpc_open, since the 2025 change
 * "vpc: Read images exported from Azure correctly") finds it: the CHS
 * geometry for images made by Virtual PC ("vpc ") and old QEMU ("qemu"),
 * which size disks by it; current_size for every other creator (Hyper-V
 * "win ", disk2vhd "d2v ", QEMU's force_size "qem2", XenServer, Azure...)
 * and for the largest geometry, which means "too large for CHS".  QEMU
 * before 10.0 used CHS for every creator except win, qem2, d2v, CTXS and
 * tap, so it sizes Azure's "wa\0\0" images (and unknown creators) by CHS.
 * We follow QEMU 10 on purpose: the change's reason (its commit message)
 * is that every creator since Virtual PC writes a reliable current_size
 * (sized by CHS, Azure's disks were unusable with qemu-nbd), and listing
 * the creators one by one missed each new one.  tests/vpc.bats
 * says which oracle decides.  In 512-byte sectors; over QEMU's 2040 GiB
 * is refused. */
static int
choose_size(struct vpc_disk *v)
{
  uint64_t chs = (uint64_t) v->cyls * v->heads * v->spt, sectors;
  bool use_chs = memcmp(v->creator, "vpc ", 4) == 0
    || memcmp(v->creator, "qemu", 4) == 0;

  if (use_chs && chs != MAX_GEOMETRY) {
    sectors = chs;
    v->size_rule = "chs";
  } else {
    sectors = v->current_size / SECTOR;
    v->size_rule = use_chs ? "current-size (largest chs geometry)"
      : "current-size";
  }
  if (sectors > MAX_SECTORS) {
    fde_error("%s: VHD virtual size %" PRIu64 " bytes (by %s) is over "
              "2040 GiB, the format's limit", v->disk.path,
              sectors * SECTOR, v->size_rule);
    return -EFBIG;
  }
  v->disk.size = sectors * SECTOR;
  return 0;
}

/* Decode the footer fields we use and choose the size. */
static int
parse_footer(struct vpc_disk *v, const uint8_t *buf)
{
  memcpy(v->creator, buf + 28, 4);
  v->creator_version = get_be32(buf + 32);
  memcpy(v->host_os, buf + 36, 4);
  v->current_size = get_be64(buf + 48);
  v->cyls = get_be16(buf + 56);
  v->heads = buf[58];
  v->spt = buf[59];
  memcpy(v->uuid, buf + 68, 16);
  return choose_size(v);
}

/* A fixed disk: the file up to its footer.  A size larger than that (a
 * CHS geometry past current_size) reads as zeros past the data; QEMU
 * shows the footer's bytes there, then zeros. */
static void
open_fixed(struct vpc_disk *v)
{
  v->data_end = min_u64(v->disk.size, v->file_size - FOOTER_SIZE);
}

/* ---- Opening: the dynamic disk header and the BAT ---------------------- */

/* Read and check the dynamic disk header at the footer's data offset
 * (footer offset 16) into hdr (DYN_HEADER_SIZE bytes): inside the file
 * and past the footer's copy, the cookie, the checksum (offset 36, which
 * QEMU does not check) and the header version (1.x). */
static int
read_dyn_header(struct vpc_disk *v, const uint8_t *footer, uint8_t *hdr)
{
  const char *path = v->disk.path;
  uint64_t off = get_be64(footer + 16);
  uint32_t version;
  int r;

  if (off < FOOTER_SIZE || off > v->file_size
      || v->file_size - off < DYN_HEADER_SIZE) {
    fde_error("%s: VHD dynamic disk header offset %#" PRIx64 " is outside "
              "the file (%" PRIu64 " bytes)", path, off, v->file_size);
    return -EINVAL;
  }
  if ((r = fde_pread_full(v->fd, hdr, DYN_HEADER_SIZE, off)) < 0) {
    fde_error("%s: read: %s", path, strerror(-r));
    return r;
  }
  if (memcmp(hdr, "cxsparse", 8) != 0) {
    fde_error("%s: no VHD dynamic disk header ('cxsparse') at offset %#"
              PRIx64, path, off);
    return -EINVAL;
  }
  if (vhd_checksum(hdr, DYN_HEADER_SIZE, 36) != get_be32(hdr + 36)) {
    fde_error("%s: VHD dynamic disk header checksum mismatch (stored %#"
              PRIx32 ", computed %#" PRIx32 ")", path, get_be32(hdr + 36),
              vhd_checksum(hdr, DYN_HEADER_SIZE, 36));
    return -EINVAL;
  }
  version = get_be32(hdr + 24);
  if (version >> 16 != 1) {
    fde_error("%s: VHD dynamic disk header version %#" PRIx32 " is not 1.x",
              path, version);
    return -ENOTSUP;
  }
  v->header_offset = off;
  return 0;
}

/* Block size, table length and table place (header offsets 32, 28, 16),
 * as QEMU checks them and tighter (see the limits at the top). */
static int
check_table(struct vpc_disk *v, const uint8_t *hdr)
{
  const char *path = v->disk.path;
  uint32_t bs = get_be32(hdr + 32);
  uint64_t end;

  if (bs < MIN_BLOCK || bs > MAX_BLOCK || (bs & (bs - 1)) != 0) {
    fde_error("%s: VHD block size %" PRIu32 " is not a power of 2 from "
              "4 KiB to 256 MiB", path, bs);
    return -EINVAL;
  }
  v->block_size = bs;
  /* QEMU's formula; the specification's for blocks of 4 KiB and more */
  v->bitmap_size = (bs / (8 * SECTOR) + SECTOR - 1) & ~(SECTOR - 1);
  v->max_entries = get_be32(hdr + 28);
  if (v->max_entries > MAX_TABLE_ENTRIES) {
    fde_error("%s: VHD block table has %" PRIu32 " entries, more than %"
              PRIu32, path, v->max_entries, MAX_TABLE_ENTRIES);
    return -EINVAL;
  }
  if ((uint64_t) v->max_entries * bs < v->disk.size) {
    fde_error("%s: VHD block table too small: %" PRIu32 " blocks of %"
              PRIu32 " bytes cover less than the virtual size %" PRIu64,
              path, v->max_entries, bs, v->disk.size);
    return -EINVAL;
  }
  /* QEMU: the table, rounded up to a sector, ends inside the file */
  v->bat_offset = get_be64(hdr + 16);
  end = v->bat_offset + (uint64_t) v->max_entries * 4;  /* < 2^64: below */
  if (v->bat_offset > v->file_size
      || ((end + SECTOR - 1) & ~(uint64_t) (SECTOR - 1)) > v->file_size) {
    fde_error("%s: VHD block table (%" PRIu32 " entries at %#" PRIx64
              ") runs past the end of the file (%" PRIu64 " bytes)", path,
              v->max_entries, v->bat_offset, v->file_size);
    return -EINVAL;
  }
  v->nr_blocks = (uint32_t) ((v->disk.size + bs - 1) / bs);
  if (v->nr_blocks > MAX_KEPT_ENTRIES) {
    fde_error("%s: VHD disk has %" PRIu32 " blocks of %" PRIu32 " bytes, "
              "more than the %u this program reads", path, v->nr_blocks,
              bs, MAX_KEPT_ENTRIES);
    return -ENOTSUP;
  }
  return 0;
}

/* Check one BAT entry i (host order) and keep it if it covers the disk:
 * its bitmap and block must lie inside the file (QEMU's "image has been
 * truncated" check, free_data_block_offset, which covers every entry). */
static int
take_entry(struct vpc_disk *v, uint32_t i, uint32_t e)
{
  uint64_t end = (uint64_t) e * SECTOR + v->bitmap_size + v->block_size;

  if (e != BAT_UNUSED && end > v->file_size) {
    fde_error("%s: VHD block %" PRIu32 " (at %#" PRIx64 ") runs past the "
              "end of the file (%" PRIu64 " bytes): the image is truncated",
              v->disk.path, i, (uint64_t) e * SECTOR, v->file_size);
    return -EINVAL;
  }
  if (i < v->nr_blocks) {
    v->bat[i] = e;
    v->allocated += e != BAT_UNUSED;
  }
  return 0;
}

/* Read the whole table in 64 KiB pieces, check every entry, keep those
 * that cover the disk. */
static int
load_bat(struct vpc_disk *v)
{
  enum { PIECE = 16384 };       /* entries */
  uint32_t *piece = malloc(PIECE * 4);
  int r = 0;

  v->bat = malloc(((size_t) v->nr_blocks + 1) * 4);
  if (piece == NULL || v->bat == NULL) {
    free(piece);
    return -ENOMEM;
  }
  for (uint32_t i = 0; i < v->max_entries && r == 0; i += PIECE) {
    uint32_t n = min_u64(PIECE, v->max_entries - i);
    r = fde_pread_full(v->fd, piece, (size_t) n * 4,
                       v->bat_offset + (uint64_t) i * 4);
    if (r < 0)
      fde_error("%s: read: %s", v->disk.path, strerror(-r));
    for (uint32_t k = 0; k < n && r == 0; k++)
      r = take_entry(v, i + k, be32toh(piece[k]));
  }
  free(piece);
  return r;
}

/* ---- Opening: the parent of a differencing disk ------------------------ */

/* A name of len bytes of UTF-16 as a malloc'd UTF-8 string in *name, up
 * to its first NUL; NULL (and 0) when it is no valid UTF-16 (the name is
 * then unusable, as libvhdi treats it).  -ENOMEM. */
static int
utf16_name(const uint8_t *in, size_t len, bool big, char **name)
{
  int r = fde_utf16_to_utf8(in, len, big, FDE_UTF16_NUL_ENDS, name);

  return r == -EINVAL ? 0 : r;
}

/* A Windows path made a POSIX one: backslashes become slashes.  A drive
 * letter ("C:\...") or a UNC name ("\\host\...") names nothing here:
 * false (the name is then not used). */
static bool
from_windows(char *name)
{
  if (name[0] == '\0' || name[1] == ':'
      || (name[0] == '\\' && name[1] == '\\'))
    return false;
  for (char *c = name; *c != '\0'; c++)
    if (*c == '\\')
      *c = '/';
  return true;
}

/* A MacX locator's file URL made a path: "file://" and an optional
 * "localhost" dropped (vhd-util writes "file://./name" for relative
 * names).  false if it is no file URL. */
static bool
from_file_url(char *name)
{
  const char *rest;

  if (strncmp(name, "file://", 7) != 0)
    return false;
  rest = name + 7;
  if (strncmp(rest, "localhost/", 10) == 0)
    rest += 9;
  memmove(name, rest, strlen(rest) + 1);
  return name[0] != '\0';
}

/* The name in parent locator k (header offset 576 + 24 k: platform code,
 * data space, data length, reserved, data offset), when its code is code:
 * *name malloc'd, or NULL when there is no such locator or its name is
 * unusable here.  A locator with that code must lie inside the file and
 * after the footer's copy, its length at most MAX_LOCATOR bytes. */
static int
locator_name(struct vpc_disk *v, const uint8_t *hdr, uint32_t code,
             char **name)
{
  uint8_t *raw;
  int r = 0;

  *name = NULL;
  for (unsigned k = 0; k < 8 && *name == NULL && r == 0; k++) {
    const uint8_t *l = hdr + 576 + 24 * k;
    uint32_t len = get_be32(l + 8);
    uint64_t off = get_be64(l + 16);
    if (get_be32(l) != code)
      continue;
    if (len == 0 || len > MAX_LOCATOR || off < FOOTER_SIZE
        || off > v->file_size || v->file_size - off < len) {
      fde_error("%s: VHD parent locator %u (%" PRIu32 " bytes at %#" PRIx64
                ") %s", v->disk.path, k, len, off,
                len == 0 ? "is empty"
                : len > MAX_LOCATOR ? "is longer than this program reads"
                : off < FOOTER_SIZE ? "overlaps the footer copy"
                : "runs past the end of the file");
      return -EINVAL;
    }
    if ((raw = malloc(len + 1)) == NULL)
      return -ENOMEM;
    if ((r = fde_pread_full(v->fd, raw, len, off)) < 0)
      fde_error("%s: read: %s", v->disk.path, strerror(-r));
    else if (code == 0x4d616358) {              /* "MacX": UTF-8 URL */
      raw[len] = '\0';
      if ((*name = strdup((char *) raw)) == NULL)
        r = -ENOMEM;
    } else
      r = utf16_name(raw, len, false, name);
    free(raw);
  }
  return r;
}

/* The parent's name: from the first usable locator of Windows relative
 * ("W2ru"), Mac ("MacX", a file URL) and Windows absolute ("W2ku", only
 * if it is no drive or UNC path), else the header's parent name (offset
 * 64, 512 bytes of UTF-16BE) taken as a file beside the image, as
 * libvhdi's vhdimount looks for it.  One name only, never a second try.
 * The deprecated "Wi2r", "Wi2k" and "Mac " locators are not read. */
static int
parent_name(struct vpc_disk *v, const uint8_t *hdr, char **name)
{
  static const struct { uint32_t code; const char *what; } order[] = {
    { 0x57327275, "W2ru" }, { 0x4d616358, "MacX" }, { 0x57326b75, "W2ku" },
  };
  char *slash;
  int r;

  for (unsigned i = 0; i < sizeof order / sizeof order[0]; i++) {
    if ((r = locator_name(v, hdr, order[i].code, name)) < 0)
      return r;
    if (*name != NULL && (order[i].code == 0x4d616358 ? from_file_url(*name)
                          : from_windows(*name))) {
      v->locator = order[i].what;
      return 0;
    }
    free(*name);
    *name = NULL;
  }
  if ((r = utf16_name(hdr + 64, 512, true, name)) < 0)
    return r;
  if (*name != NULL) {
    for (char *c = *name; *c != '\0'; c++)
      if (*c == '\\')
        *c = '/';
    if ((slash = strrchr(*name, '/')) != NULL)
      memmove(*name, slash + 1, strlen(slash + 1) + 1);
  }
  if (*name == NULL || (*name)[0] == '\0') {
    free(*name);
    *name = NULL;
    fde_error("%s: VHD differencing disk names no usable parent (no "
              "W2ru, MacX or W2ku locator, no parent name)", v->disk.path);
    return -EINVAL;
  }
  v->locator = "parent name";
  return 0;
}

/* Open the parent (format vpc) through the chain, and check that it is
 * the disk this one was made on: its footer's unique id (offset 68) is
 * the header's parent unique id (offset 40), as Hyper-V requires. */
static int
open_parent(const struct fde_open_params *p, struct vpc_disk *v,
            const uint8_t *hdr)
{
  char *name = NULL;
  int r = parent_name(v, hdr, &name);

  if (r < 0)
    return r;
  memcpy(v->parent_uuid, hdr + 40, 16);
  r = fde_chain_open_backing(p, name, "vpc", "parent", &v->parent);
  free(name);
  if (r < 0)
    return r;
  if (v->parent->format != &fde_format_vpc
      || memcmp(to_vpc(v->parent)->uuid, v->parent_uuid, 16) != 0) {
    fde_error("%s: VHD parent %s is not the disk this one was made on "
              "(its unique id differs from the one recorded)", p->path,
              v->parent->path);
    return -EINVAL;
  }
  return 0;
}

/* ---- Reading ------------------------------------------------------------ */

/* Where the bytes at in (in-block offset) of the allocated block with
 * BAT entry e lie in the file: after the block's sector bitmap. */
static uint64_t
block_host(const struct vpc_disk *v, uint32_t e, uint64_t in)
{
  return (uint64_t) e * SECTOR + v->bitmap_size + in;
}

/* A window on the sector bitmap of one differencing block: bits for the
 * sectors first .. first + 8 * len - 1 of the block, as read from the
 * file (len 0: nothing read yet). */
struct bitmap_window {
  uint32_t entry;
  uint64_t first;
  uint32_t len;
  uint8_t bits[BITMAP_WINDOW];
};

/* Is the bit of sector s (in the window) set (most significant first)? */
static bool
sector_present(const struct bitmap_window *w, uint64_t s)
{
  uint64_t i = s - w->first;

  return w->bits[i / 8] & (0x80u >> (i % 8));
}

/* The run of [in, in + n) of the allocated differencing block with entry
 * e whose sectors all have the same bitmap bit: its length (> 0, at most
 * n, ending at a sector boundary or at in + n) in *run and the bit in
 * *present (set: the sector is in this file; clear: in the parent).
 * Reads the bitmap through w as needed.  0 or -errno. */
static int
bitmap_run(struct vpc_disk *v, struct bitmap_window *w, uint32_t e,
           uint64_t in, uint64_t n, uint64_t *run, bool *present)
{
  uint64_t s = in / SECTOR, last = (in + n - 1) / SECTOR, t;
  int r;

  if (w->len == 0 || w->entry != e || s < w->first
      || s >= w->first + 8ull * w->len) {
    w->entry = e;
    w->first = s & ~7ull;
    w->len = min_u64(BITMAP_WINDOW, v->bitmap_size - w->first / 8);
    r = fde_pread_full(v->fd, w->bits, w->len,
                       (uint64_t) e * SECTOR + w->first / 8);
    if (r < 0) {
      w->len = 0;
      return r;
    }
  }
  *present = sector_present(w, s);
  last = min_u64(last, w->first + 8ull * w->len - 1);
  for (t = s + 1; t <= last && sector_present(w, t) == *present; t++)
    ;
  *run = min_u64(t * SECTOR, in + n) - in;
  return 0;
}

/* Read [off, off + n) of a fixed disk: the file, then zeros. */
static int
read_fixed(struct vpc_disk *v, uint8_t *buf, size_t n, uint64_t off)
{
  size_t here = off < v->data_end ? min_u64(n, v->data_end - off) : 0;

  memset(buf + here, 0, n - here);
  return here > 0 ? fde_pread_full(v->fd, buf, here, off) : 0;
}

/* Read [in, in + n) of the allocated differencing block with entry e,
 * at disk offset off: each run from this file or from the parent. */
static int
read_diff_block(struct vpc_disk *v, uint32_t e, uint8_t *buf, uint64_t in,
                uint64_t n, uint64_t off)
{
  struct bitmap_window w = { .len = 0 };
  uint64_t done = 0, run;
  bool present;
  int r = 0;

  while (done < n && r == 0) {
    r = bitmap_run(v, &w, e, in + done, n - done, &run, &present);
    if (r == 0)
      r = present ? fde_pread_full(v->fd, buf + done, run,
                                   block_host(v, e, in + done))
        : fde_chain_read_lower(v->parent, buf + done, run, off + done);
    done += run;
  }
  return r;
}

/* Read n bytes at off, inside one block. */
static int
read_block(struct vpc_disk *v, uint8_t *buf, size_t n, uint64_t off)
{
  uint32_t e = v->bat[off / v->block_size];
  uint64_t in = off % v->block_size;

  if (e == BAT_UNUSED && v->parent != NULL)
    return fde_chain_read_lower(v->parent, buf, n, off);
  if (e == BAT_UNUSED) {
    memset(buf, 0, n);
    return 0;
  }
  if (v->parent != NULL)
    return read_diff_block(v, e, buf, in, n, off);
  return fde_pread_full(v->fd, buf, n, block_host(v, e, in));
}

static int
vpc_pread(struct fde_disk *d, void *buf, size_t len, uint64_t off)
{
  struct vpc_disk *v = to_vpc(d);
  uint8_t *p = buf;
  int r = 0;

  if (v->type == TYPE_FIXED)
    return read_fixed(v, p, len, off);
  while (len > 0 && r == 0) {
    size_t n = min_u64(len, v->block_size - off % v->block_size);
    r = read_block(v, p, n, off);
    p += n;
    off += n;
    len -= n;
  }
  return r;
}

/* ---- Allocation: block_status and map ---------------------------------- */

/* Status of a fixed disk: the file's holes (SEEK_DATA/SEEK_HOLE, as
 * QEMU's block status recurses into the file), zeros past the data. */
static void
status_fixed(struct vpc_disk *v, uint64_t off, uint64_t len, uint64_t *run,
             unsigned *status)
{
  *run = len;
  *status = FDE_BS_ZERO;
  if (off < v->data_end
      && fde_file_data_run(v->fd, off, min_u64(len, v->data_end - off), run))
    *status = FDE_BS_DATA;
}

/* The run of blocks from index i (at most len bytes from off, which lies
 * in block i) that are all allocated or all unallocated. */
static uint64_t
same_blocks(const struct vpc_disk *v, uint64_t off, uint64_t len)
{
  uint64_t i = off / v->block_size;
  bool used = v->bat[i] != BAT_UNUSED;
  uint64_t run = min_u64(len, v->block_size - off % v->block_size);

  while (run < len && ++i < v->nr_blocks
         && (v->bat[i] != BAT_UNUSED) == used)
    run = min_u64(len, run + v->block_size);
  return run;
}

static int
vpc_block_status(struct fde_disk *d, uint64_t off, uint64_t len,
                 uint64_t *run, unsigned *status)
{
  struct vpc_disk *v = to_vpc(d);
  uint32_t e;
  uint64_t in;
  bool present;
  struct bitmap_window w = { .len = 0 };
  int r;

  if (v->type == TYPE_FIXED) {
    status_fixed(v, off, len, run, status);
    return 0;
  }
  e = v->bat[off / v->block_size];
  in = off % v->block_size;
  if (v->parent == NULL) {                      /* dynamic: as QEMU */
    *run = same_blocks(v, off, len);
    *status = e == BAT_UNUSED ? FDE_BS_ZERO : FDE_BS_DATA;
    return 0;
  }
  len = min_u64(len, v->block_size - in);
  if (e == BAT_UNUSED)
    return fde_chain_status_lower(v->parent, off, len, run, status);
  if ((r = bitmap_run(v, &w, e, in, len, run, &present)) < 0)
    return r;
  if (!present)
    return fde_chain_status_lower(v->parent, off, *run, run, status);
  *status = FDE_BS_DATA;
  return 0;
}

/* format.h's map: the data of an allocated block (of a sector present in
 * this file, for a differencing disk), or of a fixed disk, is the file's
 * at block_host; open checked that it lies inside the file.  Zeros are
 * left to pread; a differencing disk's other ranges to its parent. */
static int
vpc_map(struct fde_disk *d, uint64_t off, uint64_t len, int *fd,
        uint64_t *host, uint64_t *run)
{
  struct vpc_disk *v = to_vpc(d);
  struct bitmap_window w = { .len = 0 };
  uint32_t e;
  uint64_t in;
  bool present = true;
  int r;

  *fd = v->fd;
  if (v->type == TYPE_FIXED) {
    *run = off < v->data_end ? min_u64(len, v->data_end - off) : len;
    *host = off;
    return off < v->data_end;
  }
  e = v->bat[off / v->block_size];
  in = off % v->block_size;
  *run = min_u64(len, v->block_size - in);
  if (e != BAT_UNUSED && v->parent != NULL
      && (r = bitmap_run(v, &w, e, in, *run, run, &present)) < 0)
    return r;
  if (e == BAT_UNUSED || !present)
    return v->parent == NULL ? 0
      : fde_chain_map_lower(v->parent, off, *run, fd, host, run);
  *host = block_host(v, e, in);
  return 1;
}

/* ---- Open, describe, close ---------------------------------------------- */

/* Free everything but the descriptor. */
static void
free_disk(struct vpc_disk *v)
{
  if (v == NULL)
    return;
  fde_disk_close(v->parent);
  free(v->bat);
  free(v->disk.path);
  free(v);
}

/* The dynamic and differencing part of open. */
static int
open_dynamic(const struct fde_open_params *p, struct vpc_disk *v,
             const uint8_t *footer)
{
  uint8_t hdr[DYN_HEADER_SIZE];
  int r;

  if ((r = read_dyn_header(v, footer, hdr)) < 0
      || (r = check_table(v, hdr)) < 0 || (r = load_bat(v)) < 0)
    return r;
  return v->type == TYPE_DIFFERENCING ? open_parent(p, v, hdr) : 0;
}

/* Open a VHD read-only.  Refused where QEMU would read the image:
 *  - a dynamic disk header with a bad checksum or a version other than
 *    1.x (QEMU checks neither);
 *  - disk types other than 2, 3 and 4 (QEMU opens any type with a footer
 *    copy at 0 as dynamic), and a footer copy at 0 that says fixed (QEMU
 *    then reads the file through, from offset 0);
 *  - blocks under 4 KiB or over 256 MiB, more than 16 Mi blocks covering
 *    the disk, a header overlapping the footer copy or past the end;
 *  - a differencing disk whose parent cannot be found or differs (QEMU
 *    ignores the parent and shows unallocated blocks as zeros).
 * The view differs from QEMU's for a fixed disk whose size reaches past
 * its footer (zeros there, not the footer), for sectors a differencing
 * disk leaves to its parent, and for creators QEMU before 10.0 sized by
 * CHS (choose_size). */
static int
vpc_open(const struct fde_open_params *p, struct fde_disk **out)
{
  struct vpc_disk *v = calloc(1, sizeof *v);
  uint8_t footer[FOOTER_SIZE];
  int r = -ENOMEM;

  if (v == NULL || (v->disk.path = strdup(p->path)) == NULL)
    goto fail;
  v->disk.format = &fde_format_vpc;
  v->disk.read_only = true;
  v->fd = p->fd;
  if ((r = file_size(p->fd, &v->file_size)) < 0) {
    fde_error("%s: cannot find the file size: %s", p->path, strerror(-r));
    goto fail;
  }
  if ((r = read_footer(v, footer)) < 0 || (r = parse_footer(v, footer)) < 0)
    goto fail;
  if (v->type == TYPE_FIXED)
    open_fixed(v);
  else if ((r = open_dynamic(p, v, footer)) < 0)
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
vpc_allocated_bytes(struct fde_disk *d)
{
  return fde_file_allocated(to_vpc(d)->fd);
}

/* A four-character code from the image, unprintable bytes as '?' and
 * trailing NULs and spaces dropped. */
static void
print_code(FILE *out, const char *code)
{
  int n = 4;

  while (n > 0 && (code[n - 1] == '\0' || code[n - 1] == ' '))
    n--;
  for (int i = 0; i < n; i++)
    fputc((unsigned char) code[i] < 0x20 || code[i] >= 0x7f ? '?' : code[i],
          out);
}

static void
vpc_describe(struct fde_disk *d, FILE *out)
{
  static const char *const types[] = { "fixed", "dynamic", "differencing" };
  struct vpc_disk *v = to_vpc(d);

  fprintf(out, "subformat: %s\n", types[v->type - TYPE_FIXED]);
  fputs("creator: ", out);
  print_code(out, v->creator);
  fprintf(out, " %u.%u (", v->creator_version >> 16,
          v->creator_version & 0xffff);
  print_code(out, v->host_os);
  fputs(")\n", out);
  fprintf(out, "size-rule: %s\n", v->size_rule);
  fprintf(out, "current-size: %" PRIu64 "\n", v->current_size);
  fprintf(out, "geometry: %u/%u/%u\n", v->cyls, v->heads, v->spt);
  if (v->type == TYPE_FIXED)
    return;
  fprintf(out, "block-size: %" PRIu32 "\n", v->block_size);
  fprintf(out, "blocks: %" PRIu32 "\n", v->nr_blocks);
  fprintf(out, "blocks-allocated: %" PRIu32 "\n", v->allocated);
  if (v->parent != NULL) {
    fprintf(out, "parent-locator: %s\n", v->locator);
    fde_chain_describe(v->parent, false, out);
  }
}

static void
vpc_close(struct fde_disk *d)
{
  struct vpc_disk *v = to_vpc(d);
  int fd = v->fd;

  free_disk(v);
  close(fd);
}

static bool
vpc_can_map(struct fde_disk *d)
{
  (void) d;
  return true;
}

const struct fde_format fde_format_vpc = {
  .name            = "vpc",
  .probe           = vpc_probe,
  .open            = vpc_open,
  .close           = vpc_close,

  .pread           = vpc_pread,
  .block_status    = vpc_block_status,

  .allocated_bytes = vpc_allocated_bytes,
  .describe        = vpc_describe,
  .map             = vpc_map,
  .can_map         = vpc_can_map,
};
