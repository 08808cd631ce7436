/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: the VDI (VirtualBox) backend, read-only.
 *
 * A VDI image is a 512-byte header (a 0x48-byte pre-header, then the
 * version 1.1 header), a block map of little-endian u32 entries, one per
 * 1 MiB block of the disk, and the data blocks.  An entry is the index of
 * the block's data in the data area (host offset offset_data + entry x
 * 1 MiB), or 0xffffffff (never allocated) or 0xfffffffe (discarded): both
 * read as zeros.  "Static" images have every block allocated when made.
 *
 * What is accepted follows QEMU's vdi_open (block/vdi.c, QEMU 7.2), and
 * the reads, block status and sizes follow vdi_co_preadv and
 * vdi_co_block_status, so that the view equals `qemu-img convert -O raw`
 * (reference formats.md, section 5).  Where QEMU is looser we refuse, with
 * one line naming the image and the field; each is a divergence from
 * QEMU on images neither QEMU nor VirtualBox writes (VirtualBox's own
 * vdiValidateHeader refuses most of them too):
 *  - header_size below the v1.1 header or running into the block map;
 *  - image types other than dynamic (1) and static (2), and per-block
 *    extra data (block_extra, which VirtualBox skips and QEMU reads as
 *    data: they disagree, so we do not guess);
 *  - blocks_allocated above blocks_in_image; a block map that overlaps
 *    the data area or lies past the end of the file (QEMU reads zeros,
 *    which maps those blocks to block 0);
 *  - a map entry at or above blocks_allocated, or one whose data (the
 *    part of the block inside the disk) lies past the end of the file
 *    (QEMU reads zeros there: a truncated image).
 * Differencing images (image type 4, or a non-null link or parent UUID)
 * are refused, as QEMU does: see refuse_differencing for why we do not
 * look for the parent either.
 *
 * Nothing is written, ever: the format has no can_write, so every image
 * is opened read-only with reader locks (fde_disk_open) and the front end
 * refuses writes with EROFS.  All state is fixed at open, so the members
 * need no locking. */
#include <config.h>

#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "format.h"

#define VDI_HEADER_BYTES   512            /* what is read at offset 0 */
#define VDI_PREHEADER      0x48           /* text, signature, version */
#define VDI_HEADER1_MIN    0x180          /* VirtualBox's VDIHEADER1 */
#define VDI_SIGNATURE      0xbeda107fu
#define VDI_VERSION_1_1    0x00010001u
#define VDI_TYPE_DYNAMIC   1u
#define VDI_TYPE_STATIC    2u
#define VDI_TYPE_DIFF      4u             /* VirtualBox's VDI_IMAGE_TYPE_DIFF */
#define VDI_SECTOR         512u
#define VDI_BLOCK_BITS     20             /* QEMU reads 1 MiB blocks only */
#define VDI_BLOCK_SIZE     (1u << VDI_BLOCK_BITS)
#define VDI_UNALLOCATED    0xffffffffu
#define VDI_DISCARDED      0xfffffffeu
#define VDI_IS_ALLOCATED(e) ((e) < VDI_DISCARDED)
#define VDI_BLOCKS_MAX     0x3fffffffu    /* QEMU's VDI_BLOCKS_IN_IMAGE_MAX */
#define VDI_DISK_SIZE_MAX  ((uint64_t) VDI_BLOCKS_MAX * VDI_BLOCK_SIZE)

/* Byte offsets of the header fields (QEMU's VdiHeader, little-endian). */
enum {
  OFF_SIGNATURE = 0x40, OFF_VERSION = 0x44, OFF_HEADER_SIZE = 0x48,
  OFF_IMAGE_TYPE = 0x4c, OFF_OFFSET_BMAP = 0x154, OFF_OFFSET_DATA = 0x158,
  OFF_SECTOR_SIZE = 0x168, OFF_DISK_SIZE = 0x170, OFF_BLOCK_SIZE = 0x178,
  OFF_BLOCK_EXTRA = 0x17c, OFF_BLOCKS = 0x180, OFF_BLOCKS_ALLOCATED = 0x184,
  OFF_UUID_IMAGE = 0x188, OFF_UUID_LINK = 0x1a8, OFF_UUID_PARENT = 0x1b8,
};

/* The header fields used, in host order. */
struct vdi_header {
  uint32_t signature, version, header_size, image_type;
  uint32_t offset_bmap, offset_data, sector_size, block_size, block_extra;
  uint32_t blocks, blocks_allocated;
  uint64_t disk_size;
  uint8_t uuid_image[16], uuid_link[16], uuid_parent[16];
};

struct vdi_disk {
  struct fde_disk disk;         /* must come first */
  int fd;
  bool is_static;               /* image type 2 */
  uint32_t blocks;              /* entries in bmap (blocks_in_image) */
  uint32_t blocks_allocated;
  uint64_t offset_data;         /* bytes: where data block 0 starts */
  uint32_t *bmap;               /* host order, validated at open */
  uint8_t uuid[16];             /* the image's UUID, as stored */
};

#define to_vdi(d) ((struct vdi_disk *) (d))

static uint32_t
get_le32(const uint8_t *p)
{
  uint32_t v;

  memcpy(&v, p, sizeof v);
  return le32toh(v);
}

static uint64_t
get_le64(const uint8_t *p)
{
  uint64_t v;

  memcpy(&v, p, sizeof v);
  return le64toh(v);
}

/* QEMU's vdi_probe: at least a whole header, and the signature. */
static int
vdi_probe(const uint8_t *buf, size_t len)
{
  if (len < VDI_HEADER_BYTES)
    return 0;
  return get_le32(buf + OFF_SIGNATURE) == VDI_SIGNATURE ? 100 : 0;
}

/* Size of the image file or block device in bytes. */
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

static void
decode_header(const uint8_t *buf, struct vdi_header *h)
{
  h->signature = get_le32(buf + OFF_SIGNATURE);
  h->version = get_le32(buf + OFF_VERSION);
  h->header_size = get_le32(buf + OFF_HEADER_SIZE);
  h->image_type = get_le32(buf + OFF_IMAGE_TYPE);
  h->offset_bmap = get_le32(buf + OFF_OFFSET_BMAP);
  h->offset_data = get_le32(buf + OFF_OFFSET_DATA);
  h->sector_size = get_le32(buf + OFF_SECTOR_SIZE);
  h->disk_size = get_le64(buf + OFF_DISK_SIZE);
  h->block_size = get_le32(buf + OFF_BLOCK_SIZE);
  h->block_extra = get_le32(buf + OFF_BLOCK_EXTRA);
  h->blocks = get_le32(buf + OFF_BLOCKS);
  h->blocks_allocated = get_le32(buf + OFF_BLOCKS_ALLOCATED);
  memcpy(h->uuid_image, buf + OFF_UUID_IMAGE, 16);
  memcpy(h->uuid_link, buf + OFF_UUID_LINK, 16);
  memcpy(h->uuid_parent, buf + OFF_UUID_PARENT, 16);
}

/* The UUID u as VirtualBox prints it (the first three fields are stored
 * little-endian: QEMU's uuid_convert) into buf (len >= 37 bytes). */
static void
format_uuid(char *buf, size_t len, const uint8_t *u)
{
  snprintf(buf, len, "%08" PRIx32 "-%04x-%04x-%02x%02x-%02x%02x%02x%02x%02x"
           "%02x", get_le32(u), (unsigned) (u[4] | u[5] << 8),
           (unsigned) (u[6] | u[7] << 8), u[8], u[9], u[10], u[11], u[12],
           u[13], u[14], u[15]);
}

static bool
uuid_is_null(const uint8_t *uuid)
{
  static const uint8_t null[16];

  return memcmp(uuid, null, sizeof null) == 0;
}

/* A differencing image: VirtualBox's image type 4, or a parent named in
 * the header (uuid_link, VirtualBox's uuidLinkage: the parent's image
 * UUID; uuid_parent, its uuidParentModify), which QEMU refuses. */
static bool
is_differencing(const struct vdi_header *h)
{
  return h->image_type == VDI_TYPE_DIFF || !uuid_is_null(h->uuid_link)
    || !uuid_is_null(h->uuid_parent);
}

/* Refused, as QEMU refuses it (vdi_open: "unsupported VDI image (non-NULL
 * link UUID)"), and deliberately not supported: the header names the
 * parent by UUID only, never by file name.  VirtualBox finds it through
 * its media registry (the VM's .vbox file or the user's VirtualBox.xml),
 * which belongs to whoever runs VirtualBox, not to the image; guessing
 * (opening files near the image until one has that UUID) would read files
 * the image never named.  The message says how to get a whole disk. */
static int
refuse_differencing(const char *path, const struct vdi_header *h)
{
  char uuid[40] = "";

  if (!uuid_is_null(h->uuid_link))
    format_uuid(uuid, sizeof uuid, h->uuid_link);
  fde_error("%s: differencing VDI image%s%s%s: not supported, as its parent "
            "is named only by UUID, in VirtualBox's media registry (merge "
            "it first: VBoxManage clonemedium)", path,
            uuid[0] != '\0' ? " (parent " : "", uuid,
            uuid[0] != '\0' ? ")" : "");
  return -ENOTSUP;
}

/* The checks QEMU's vdi_open makes, in its order: 0, or -errno with the
 * message logged. */
static int
check_qemu_fields(const char *path, const struct vdi_header *h)
{
  if (h->disk_size > VDI_DISK_SIZE_MAX) {
    fde_error("%s: VDI disk size %" PRIu64 " is too large (max %" PRIu64 ")",
              path, h->disk_size, VDI_DISK_SIZE_MAX);
    return -EINVAL;
  }
  if (h->signature != VDI_SIGNATURE) {
    fde_error("%s: not a VDI image (bad signature %#" PRIx32 ")", path,
              h->signature);
    return -EINVAL;
  }
  if (h->version != VDI_VERSION_1_1) {
    fde_error("%s: unsupported VDI version %" PRIu32 ".%" PRIu32
              " (only 1.1 is read)", path, h->version >> 16,
              h->version & 0xffff);
    return -ENOTSUP;
  }
  if (h->offset_bmap % VDI_SECTOR != 0 || h->offset_data % VDI_SECTOR != 0) {
    bool bmap = h->offset_bmap % VDI_SECTOR != 0;
    fde_error("%s: VDI %s offset %#" PRIx32 " is not a multiple of 512",
              path, bmap ? "block map" : "data",
              bmap ? h->offset_bmap : h->offset_data);
    return -EINVAL;
  }
  if (h->sector_size != VDI_SECTOR) {
    fde_error("%s: VDI sector size %" PRIu32 " is not 512", path,
              h->sector_size);
    return -ENOTSUP;
  }
  if (h->block_size != VDI_BLOCK_SIZE) {
    fde_error("%s: VDI block size %" PRIu32 " is not supported (only 1 MiB, "
              "as QEMU)", path, h->block_size);
    return -ENOTSUP;
  }
  if (h->disk_size > (uint64_t) h->blocks * VDI_BLOCK_SIZE) {
    fde_error("%s: VDI disk size %" PRIu64 " is larger than its %" PRIu32
              " blocks", path, h->disk_size, h->blocks);
    return -EINVAL;
  }
  if (is_differencing(h))
    return refuse_differencing(path, h);
  if (h->blocks > VDI_BLOCKS_MAX) {
    fde_error("%s: too many VDI blocks (%" PRIu32 ", max %" PRIu32 ")", path,
              h->blocks, VDI_BLOCKS_MAX);
    return -EINVAL;
  }
  return 0;
}

/* Our own checks (see the top of the file): the layout must make sense
 * and the block map must lie inside the file.  0 or -errno, logged. */
static int
check_layout(const char *path, const struct vdi_header *h, uint64_t fsize)
{
  uint64_t bmap_end = (uint64_t) h->offset_bmap + (uint64_t) h->blocks * 4;

  if (h->header_size < VDI_HEADER1_MIN) {
    fde_error("%s: VDI header size %" PRIu32 " is less than %u", path,
              h->header_size, VDI_HEADER1_MIN);
    return -EINVAL;
  }
  if (VDI_PREHEADER + (uint64_t) h->header_size > h->offset_bmap) {
    fde_error("%s: VDI block map at %#" PRIx32 " lies inside the header "
              "(%" PRIu64 " bytes)", path, h->offset_bmap,
              VDI_PREHEADER + (uint64_t) h->header_size);
    return -EINVAL;
  }
  if (h->image_type != VDI_TYPE_DYNAMIC && h->image_type != VDI_TYPE_STATIC) {
    fde_error("%s: VDI image type %" PRIu32 " is not supported (only "
              "dynamic and static)", path, h->image_type);
    return -ENOTSUP;
  }
  if (h->block_extra != 0) {
    fde_error("%s: VDI blocks with %" PRIu32 " bytes of extra data are not "
              "supported", path, h->block_extra);
    return -ENOTSUP;
  }
  if (h->blocks_allocated > h->blocks) {
    fde_error("%s: VDI header says %" PRIu32 " blocks are allocated, of %"
              PRIu32, path, h->blocks_allocated, h->blocks);
    return -EINVAL;
  }
  if (bmap_end > h->offset_data && h->blocks > 0) {
    fde_error("%s: VDI block map (%" PRIu32 " entries at %#" PRIx32 ") "
              "overlaps the data at %#" PRIx32, path, h->blocks,
              h->offset_bmap, h->offset_data);
    return -EINVAL;
  }
  if (bmap_end > fsize) {
    fde_error("%s: VDI block map (%" PRIu32 " entries at %#" PRIx32 ") is "
              "beyond the end of the file (%" PRIu64 " bytes): truncated?",
              path, h->blocks, h->offset_bmap, fsize);
    return -EINVAL;
  }
  return 0;
}

/* Bytes of block i inside the disk (0 for blocks past its end). */
static uint64_t
block_bytes_used(uint64_t disk_size, uint32_t i)
{
  uint64_t start = (uint64_t) i << VDI_BLOCK_BITS;

  if (start >= disk_size)
    return 0;
  return disk_size - start < VDI_BLOCK_SIZE ? disk_size - start
         : VDI_BLOCK_SIZE;
}

/* Read the block map and check every entry: a block index below
 * blocks_allocated whose data, as far as the disk uses it, lies inside
 * the file.  0 or -errno, logged. */
static int
load_bmap(struct vdi_disk *v, uint32_t offset_bmap, uint64_t fsize)
{
  const char *path = v->disk.path;
  int r;

  v->bmap = malloc(v->blocks > 0 ? (size_t) v->blocks * 4 : 1);
  if (v->bmap == NULL)
    return -ENOMEM;
  r = fde_pread_full(v->fd, v->bmap, (size_t) v->blocks * 4, offset_bmap);
  if (r < 0) {
    fde_error("%s: cannot read the VDI block map: %s", path, strerror(-r));
    return r;
  }
  for (uint32_t i = 0; i < v->blocks; i++) {
    uint32_t e = v->bmap[i] = le32toh(v->bmap[i]);
    uint64_t host = v->offset_data + ((uint64_t) e << VDI_BLOCK_BITS);
    if (!VDI_IS_ALLOCATED(e))
      continue;
    if (e >= v->blocks_allocated) {
      fde_error("%s: VDI block map entry %" PRIu32 " names data block %"
                PRIu32 ", past the %" PRIu32 " allocated", path, i, e,
                v->blocks_allocated);
      return -EINVAL;
    }
    if (host > fsize || block_bytes_used(v->disk.size, i) > fsize - host) {
      fde_error("%s: VDI block %" PRIu32 " has its data at %#" PRIx64
                ", beyond the end of the file (%" PRIu64 " bytes): "
                "truncated?", path, i, host, fsize);
      return -EINVAL;
    }
  }
  return 0;
}

/* Read and check the header, then the block map, into v.  0 or -errno. */
static int
read_image(const struct fde_open_params *p, struct vdi_disk *v)
{
  uint8_t buf[VDI_HEADER_BYTES];
  struct vdi_header h;
  uint64_t fsize;
  int r;

  if ((r = file_size(p->fd, &fsize)) < 0) {
    fde_error("%s: cannot find the file size: %s", p->path, strerror(-r));
    return r;
  }
  if (fsize < VDI_HEADER_BYTES) {
    fde_error("%s: truncated VDI image (%" PRIu64 " bytes, the header "
              "needs %u)", p->path, fsize, VDI_HEADER_BYTES);
    return -EINVAL;
  }
  if ((r = fde_pread_full(p->fd, buf, sizeof buf, 0)) < 0) {
    fde_error("%s: read: %s", p->path, strerror(-r));
    return r;
  }
  decode_header(buf, &h);
  if ((r = check_qemu_fields(p->path, &h)) < 0
      || (r = check_layout(p->path, &h, fsize)) < 0)
    return r;
  /* QEMU rounds an odd size up to a whole sector (VBoxManage
   * convertfromraw writes such images); the maximum was checked first. */
  v->disk.size = (h.disk_size + VDI_SECTOR - 1) & ~(uint64_t) (VDI_SECTOR - 1);
  v->is_static = h.image_type == VDI_TYPE_STATIC;
  v->blocks = h.blocks;
  v->blocks_allocated = h.blocks_allocated;
  v->offset_data = h.offset_data;
  memcpy(v->uuid, h.uuid_image, sizeof v->uuid);
  return load_bmap(v, h.offset_bmap, fsize);
}

static void
vdi_free(struct vdi_disk *v)
{
  if (v == NULL)
    return;
  free(v->bmap);
  free(v->disk.path);
  free(v);
}

static int
vdi_open(const struct fde_open_params *p, struct fde_disk **out)
{
  struct vdi_disk *v;
  int r;

  v = calloc(1, sizeof *v);
  if (v == NULL || (v->disk.path = strdup(p->path)) == NULL) {
    free(v);
    fde_error("%s: out of memory", p->path);
    return -ENOMEM;
  }
  v->disk.format = &fde_format_vdi;
  v->disk.read_only = true;
  v->fd = p->fd;
  r = read_image(p, v);
  if (r < 0) {
    if (r == -ENOMEM)
      fde_error("%s: out of memory", p->path);
    vdi_free(v);
    return r;
  }
  *out = &v->disk;
  return 0;
}

/* The run at off (at most len bytes, inside the disk): whether it is
 * allocated, its length, and for an allocated run its file offset.
 * Allocated blocks stored back to back in the file make one run. */
static bool
find_run(const struct vdi_disk *v, uint64_t off, uint64_t len,
         uint64_t *host, uint64_t *run)
{
  uint64_t block = off >> VDI_BLOCK_BITS;
  uint64_t in_block = off & (VDI_BLOCK_SIZE - 1);
  uint32_t first = v->bmap[block];
  bool allocated = VDI_IS_ALLOCATED(first);
  uint64_t n = VDI_BLOCK_SIZE - in_block;

  /* off + n < off + len <= disk size <= blocks x 1 MiB: block + k is in
   * the map while n < len */
  for (uint64_t k = 1; n < len; k++, n += VDI_BLOCK_SIZE) {
    uint32_t e = v->bmap[block + k];
    if (allocated ? (uint64_t) e != first + k : VDI_IS_ALLOCATED(e))
      break;
  }
  *run = n < len ? n : len;
  if (allocated)
    *host = v->offset_data + ((uint64_t) first << VDI_BLOCK_BITS) + in_block;
  return allocated;
}

/* vdi_co_preadv: zeros for unallocated and discarded blocks, the file's
 * bytes otherwise (zeros past its end, as QEMU). */
static int
vdi_pread(struct fde_disk *d, void *buf, size_t len, uint64_t off)
{
  struct vdi_disk *v = to_vdi(d);
  uint8_t *p = buf;

  while (len > 0) {
    uint64_t host, run;
    int r = 0;
    if (find_run(v, off, len, &host, &run))
      r = fde_pread_full(v->fd, p, (size_t) run, host);
    else
      memset(p, 0, (size_t) run);
    if (r < 0)
      return r;
    p += run;
    off += run;
    len -= (size_t) run;
  }
  return 0;
}

/* vdi_co_block_status: unallocated and discarded blocks are zero,
 * allocated ones data.  For a static image QEMU asks the file system too
 * (BDRV_BLOCK_RECURSE): a hole in the file is data that reads as zeros. */
static int
vdi_block_status(struct fde_disk *d, uint64_t off, uint64_t len,
                 uint64_t *run, unsigned *status)
{
  struct vdi_disk *v = to_vdi(d);
  uint64_t host;

  if (!find_run(v, off, len, &host, run)) {
    *status = FDE_BS_ZERO;
    return 0;
  }
  /* a hole in the file (or past its end) reads as zeros (vdi_pread) */
  *status = FDE_BS_DATA;
  if (v->is_static && !fde_file_data_run(v->fd, host, *run, run))
    *status = FDE_BS_DATA | FDE_BS_ZERO;
  return 0;
}

/* Allocated runs are the file's bytes, as far as the file reaches now
 * (a file truncated since open reads zeros past its end: left to pread). */
static int
vdi_map(struct fde_disk *d, uint64_t off, uint64_t len, int *fd,
        uint64_t *host, uint64_t *run)
{
  struct vdi_disk *v = to_vdi(d);
  uint64_t fsize;
  int r;

  if (!find_run(v, off, len, host, run))
    return 0;
  if ((r = file_size(v->fd, &fsize)) < 0)
    return r;
  if (*host >= fsize)
    return 0;
  if (*run > fsize - *host)
    *run = fsize - *host;
  *fd = v->fd;
  return 1;
}

static uint64_t
vdi_allocated_bytes(struct fde_disk *d)
{
  return fde_file_allocated(to_vdi(d)->fd);
}


static void
vdi_describe(struct fde_disk *d, FILE *out)
{
  struct vdi_disk *v = to_vdi(d);
  char uuid[40];

  fprintf(out, "subformat: %s\n", v->is_static ? "static" : "dynamic");
  fprintf(out, "block-size: %u\n", VDI_BLOCK_SIZE);
  fprintf(out, "blocks: %" PRIu32 "\n", v->blocks);
  fprintf(out, "blocks-allocated: %" PRIu32 "\n", v->blocks_allocated);
  format_uuid(uuid, sizeof uuid, v->uuid);
  fprintf(out, "uuid: %s\n", uuid);
}

/* format.h's capabilities: read-only (no can_write); allocated runs can
 * be spliced from the file (vdi_map). */
static bool
vdi_can_map(struct fde_disk *d)
{
  (void) d;
  return true;
}

static void
vdi_close(struct fde_disk *d)
{
  struct vdi_disk *v = to_vdi(d);

  close(v->fd);
  vdi_free(v);
}

const struct fde_format fde_format_vdi = {
  .name            = "vdi",
  .probe           = vdi_probe,
  .open            = vdi_open,
  .close           = vdi_close,

  .pread           = vdi_pread,
  .block_status    = vdi_block_status,

  .allocated_bytes = vdi_allocated_bytes,
  .describe        = vdi_describe,
  .map             = vdi_map,
  .can_map         = vdi_can_map,
};
