/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: qcow2 backend — header parsing and validation, header
 * extensions, the backing chain, open/close/describe and the format table.
 *
 * Everything read from the image is validated before it is used to
 * allocate memory or to follow an offset (see the trap list in the qcow2
 * reference, section 7).  Opening for writing adds the checks of
 * open_for_writing; the write path itself is in qcow2-write.c. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chain.h"
#include "format.h"
#include "qcow2.h"

#define MAX_ERRORS_LOGGED 10    /* run-time corruption messages per image */

/* Everything the open steps share: the parameters, the state being built,
 * cluster 0 and its decoded header. */
struct open_ctx {
  const struct fde_open_params *p;
  struct qcow2_disk *q;
  uint8_t *cluster0;
  struct qcow2_header h;        /* host byte order */
  uint64_t ext_end;             /* end of the extension area */
  bool has_crypto_ext;
  char *data_file_name;
};

/* Score 100 for the qcow2 magic with version 2 or 3. */
static int
qcow2_probe(const uint8_t *buf, size_t len)
{
  uint32_t magic, version;

  if (len < 8)
    return 0;
  memcpy(&magic, buf, 4);
  memcpy(&version, buf + 4, 4);
  if (be32toh(magic) != QCOW2_MAGIC)
    return 0;
  version = be32toh(version);
  return version == 2 || version == 3 ? 100 : 0;
}

/* Report run-time corruption (bad L2 entry, bad compressed data...): a
 * few messages per image, then silence, so a scan of a broken image does
 * not flood the log.  The caller returns -EIO. */
void
qcow2_corruption(struct qcow2_disk *q, const char *fmt, ...)
{
  unsigned n = atomic_fetch_add(&q->errors_logged, 1);
  char msg[256];
  va_list ap;

  if (n >= MAX_ERRORS_LOGGED)
    return;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fde_error("%s: %s%s", q->disk.path, msg,
            n + 1 == MAX_ERRORS_LOGGED ? " (further errors not logged)" : "");
}

/* Size of the image file or block device. */
static int
file_size(const struct fde_open_params *p, uint64_t *size)
{
  struct stat st;

  if (fstat(p->fd, &st) == -1)
    return -errno;
  if (S_ISREG(st.st_mode)) {
    *size = (uint64_t) st.st_size;
    return 0;
  }
  if (S_ISBLK(st.st_mode))
    return ioctl(p->fd, BLKGETSIZE64, size) == 0 ? 0 : -errno;
  return -EINVAL;
}

/* Convert the packed big-endian header in cluster 0 to host order.
 * Fields past the header's length read as zero, as the spec says. */
static void
decode_header(const uint8_t *buf, uint32_t avail, struct qcow2_header *h)
{
  memset(h, 0, sizeof *h);
  memcpy(h, buf, avail < sizeof *h ? avail : sizeof *h);
  h->magic = be32toh(h->magic);
  h->version = be32toh(h->version);
  h->backing_file_offset = be64toh(h->backing_file_offset);
  h->backing_file_size = be32toh(h->backing_file_size);
  h->cluster_bits = be32toh(h->cluster_bits);
  h->size = be64toh(h->size);
  h->crypt_method = be32toh(h->crypt_method);
  h->l1_size = be32toh(h->l1_size);
  h->l1_table_offset = be64toh(h->l1_table_offset);
  h->refcount_table_offset = be64toh(h->refcount_table_offset);
  h->refcount_table_clusters = be32toh(h->refcount_table_clusters);
  h->nb_snapshots = be32toh(h->nb_snapshots);
  h->snapshots_offset = be64toh(h->snapshots_offset);
  h->incompatible_features = be64toh(h->incompatible_features);
  h->compatible_features = be64toh(h->compatible_features);
  h->autoclear_features = be64toh(h->autoclear_features);
  h->refcount_order = be32toh(h->refcount_order);
  h->header_length = be32toh(h->header_length);
}

/* A v2 header has no v3 fields: make them read as their v2 meaning. */
static void
normalize_v2_header(struct qcow2_header *h)
{
  h->incompatible_features = 0;
  h->compatible_features = 0;
  h->autoclear_features = 0;
  h->refcount_order = 4;
  h->header_length = QCOW2_V2_HEADER_LENGTH;
  h->compression_type = 0;
}

/* Read the magic, version and cluster size, then all of cluster 0 (zero
 * filled past the end of a short file). */
static int
read_cluster0(struct open_ctx *c)
{
  const char *path = c->p->path;
  uint8_t first[sizeof c->h];
  int r = fde_pread_full(c->p->fd, first, sizeof first, 0);

  if (r < 0) {
    fde_error("%s: read: %s", path, strerror(-r));
    return r;
  }
  decode_header(first, sizeof first, &c->h);
  if (c->h.magic != QCOW2_MAGIC) {
    fde_error("%s: not a qcow2 image (bad magic)", path);
    return -EINVAL;
  }
  if (c->h.version != 2 && c->h.version != 3) {
    fde_error("%s: unsupported qcow2 version %" PRIu32, path, c->h.version);
    return -ENOTSUP;
  }
  if (c->h.cluster_bits < QCOW2_MIN_CLUSTER_BITS
      || c->h.cluster_bits > QCOW2_MAX_CLUSTER_BITS) {
    fde_error("%s: cluster_bits %" PRIu32 " is out of range (%d..%d)", path,
              c->h.cluster_bits, QCOW2_MIN_CLUSTER_BITS,
              QCOW2_MAX_CLUSTER_BITS);
    return -EINVAL;
  }
  c->cluster0 = malloc(1u << c->h.cluster_bits);
  if (c->cluster0 == NULL)
    return -ENOMEM;
  r = fde_pread_full(c->p->fd, c->cluster0, 1u << c->h.cluster_bits, 0);
  if (r < 0) {
    fde_error("%s: read: %s", path, strerror(-r));
    return r;
  }
  if (c->h.version == 2)
    normalize_v2_header(&c->h);
  return 0;
}

/* header_length and where the backing name sits (trap list 4 and 8). */
static int
check_layout(struct open_ctx *c)
{
  const char *path = c->p->path;
  const struct qcow2_header *h = &c->h;
  uint32_t cs = 1u << h->cluster_bits;

  if (h->version == 3
      && (h->header_length < QCOW2_V3_HEADER_LENGTH || h->header_length > cs
          || h->header_length % 8 != 0)) {
    fde_error("%s: header length %" PRIu32 " is invalid (must be a multiple "
              "of 8 between 104 and the cluster size %" PRIu32 ")",
              path, h->header_length, cs);
    return -EINVAL;
  }
  if (h->backing_file_offset > cs) {
    fde_error("%s: backing file name offset %#" PRIx64 " is beyond the "
              "first cluster", path, h->backing_file_offset);
    return -EINVAL;
  }
  if (h->backing_file_size > QCOW2_MAX_BACKING_NAME
      || h->backing_file_size > cs - h->backing_file_offset) {
    fde_error("%s: backing file name is too long (%" PRIu32 " bytes)", path,
              h->backing_file_size);
    return -EINVAL;
  }
  if (h->backing_file_size > 0 && h->backing_file_offset < h->header_length) {
    fde_error("%s: backing file name at %#" PRIx64 " overlaps the header",
              path, h->backing_file_offset);
    return -EINVAL;
  }
  c->ext_end = h->backing_file_offset != 0 ? h->backing_file_offset : cs;
  return 0;
}

/* The backing format extension: a short name without NUL bytes. */
static int
ext_backing_format(struct open_ctx *c, const uint8_t *data, uint32_t len)
{
  if (len >= QCOW2_MAX_FORMAT_NAME || memchr(data, 0, len) != NULL) {
    fde_error("%s: backing format extension is invalid (%" PRIu32 " bytes)",
              c->p->path, len);
    return -EINVAL;
  }
  memcpy(c->q->backing_format, data, len);
  c->q->backing_format[len] = '\0';
  return 0;
}

/* The feature-name table: kept only for messages and describe(). */
static int
ext_feature_table(struct open_ctx *c, const uint8_t *data, uint32_t len)
{
  unsigned n = len / sizeof(struct qcow2_feature_name);

  if (n == 0)
    return 0;
  c->q->feature_names = malloc(n * sizeof(struct qcow2_feature_name));
  if (c->q->feature_names == NULL)
    return -ENOMEM;
  memcpy(c->q->feature_names, data, n * sizeof(struct qcow2_feature_name));
  c->q->nr_feature_names = n;
  return 0;
}

/* The bitmaps extension, validated only while autoclear bit 0 says it is
 * current (a stale one is ignored, as QEMU does).  We never use bitmaps. */
static int
ext_bitmaps(struct open_ctx *c, const uint8_t *data, uint32_t len)
{
  struct qcow2_bitmaps_ext b;
  uint64_t dir_off, dir_size;
  uint32_t nb;

  if (!(c->h.autoclear_features & QCOW2_AUTOCLEAR_BITMAPS))
    return 0;
  if (len != sizeof b) {
    fde_error("%s: bitmaps extension has size %" PRIu32 ", expected %zu",
              c->p->path, len, sizeof b);
    return -EINVAL;
  }
  memcpy(&b, data, sizeof b);
  nb = be32toh(b.nb_bitmaps);
  dir_size = be64toh(b.directory_size);
  dir_off = be64toh(b.directory_offset);
  if (nb == 0 || nb > QCOW2_MAX_BITMAPS || b.reserved != 0
      || dir_size > QCOW2_MAX_BITMAP_DIR
      || (dir_off & ((1u << c->h.cluster_bits) - 1)) != 0) {
    fde_error("%s: bitmaps extension is invalid (%" PRIu32 " bitmaps, "
              "directory %#" PRIx64 "+%" PRIu64 ")", c->p->path, nb, dir_off,
              dir_size);
    return -EINVAL;
  }
  c->q->nb_bitmaps = nb;
  return 0;
}

/* The external data file name: kept for the refusal message. */
static int
ext_data_file(struct open_ctx *c, const uint8_t *data, uint32_t len)
{
  c->data_file_name = strndup((const char *) data, len);
  return c->data_file_name == NULL ? -ENOMEM : 0;
}

/* Dispatch one extension record; known types may appear only once. */
static int
handle_extension(struct open_ctx *c, uint32_t type, const uint8_t *data,
                 uint32_t len, unsigned *seen)
{
  static const uint32_t known[] = {
    QCOW2_EXT_BACKING_FORMAT, QCOW2_EXT_FEATURE_TABLE, QCOW2_EXT_BITMAPS,
    QCOW2_EXT_CRYPTO, QCOW2_EXT_DATA_FILE,
  };

  for (unsigned i = 0; i < sizeof known / sizeof known[0]; i++) {
    if (known[i] != type)
      continue;
    if (*seen & (1u << i)) {
      fde_error("%s: header extension %#010" PRIx32 " appears twice",
                c->p->path, type);
      return -EINVAL;
    }
    *seen |= 1u << i;
  }
  switch (type) {
  case QCOW2_EXT_BACKING_FORMAT: return ext_backing_format(c, data, len);
  case QCOW2_EXT_FEATURE_TABLE:  return ext_feature_table(c, data, len);
  case QCOW2_EXT_BITMAPS:        return ext_bitmaps(c, data, len);
  case QCOW2_EXT_DATA_FILE:      return ext_data_file(c, data, len);
  case QCOW2_EXT_CRYPTO:
    if (len != 16) {
      fde_error("%s: encryption header extension has size %" PRIu32
                ", expected 16", c->p->path, len);
      return -EINVAL;
    }
    c->has_crypto_ext = true;
    return 0;
  default:                      /* unknown: skipped */
    return 0;
  }
}

/* Walk the extension area [header_length, ext_end) of cluster 0.  All
 * arithmetic is 64-bit and each length is bounded before it is used. */
static int
parse_extensions(struct open_ctx *c)
{
  uint64_t off = c->h.header_length;
  unsigned seen = 0;

  while (off < c->ext_end) {
    struct qcow2_ext e;
    uint32_t type, len;
    int r;

    if (c->ext_end - off < sizeof e) {
      fde_error("%s: header extension at %#" PRIx64 " is truncated",
                c->p->path, off);
      return -EINVAL;
    }
    memcpy(&e, c->cluster0 + off, sizeof e);
    type = be32toh(e.type);
    len = be32toh(e.len);
    off += sizeof e;
    if (type == QCOW2_EXT_END)
      break;
    if (len > c->ext_end - off) {
      fde_error("%s: header extension %#010" PRIx32 " at %#" PRIx64
                " is too large (%" PRIu32 " bytes)", c->p->path, type,
                off - sizeof e, len);
      return -EINVAL;
    }
    r = handle_extension(c, type, c->cluster0 + off, len, &seen);
    if (r < 0)
      return r;
    off += ((uint64_t) len + 7) & ~(uint64_t) 7;
  }
  return 0;
}

/* Name of a feature bit from the table in the image, or NULL. */
static const char *
table_feature_name(const struct qcow2_disk *q, unsigned type, unsigned bit,
                   char buf[47])
{
  for (unsigned i = 0; i < q->nr_feature_names; i++) {
    const struct qcow2_feature_name *f = &q->feature_names[i];
    if (f->type == type && f->bit == bit) {
      memcpy(buf, f->name, 46);
      buf[46] = '\0';
      for (char *s = buf; *s; s++)
        if ((unsigned char) *s < 0x20 || *s == 0x7f)
          *s = '?';
      return buf;
    }
  }
  return NULL;
}

/* Name of a feature bit: ours for known bits, else the image's table, else
 * "bitN". */
static const char *
feature_name(const struct qcow2_disk *q, unsigned type, unsigned bit,
             char buf[47])
{
  static const char *const incompat[] = {
    "dirty", "corrupt", "external-data-file", "compression-type",
    "extended-l2",
  };
  static const char *const compat[] = { "lazy-refcounts" };
  static const char *const autoclear[] = { "bitmaps", "raw-external-data" };

  if (type == 0 && bit < sizeof incompat / sizeof incompat[0])
    return incompat[bit];
  if (type == 1 && bit < sizeof compat / sizeof compat[0])
    return compat[bit];
  if (type == 2 && bit < sizeof autoclear / sizeof autoclear[0])
    return autoclear[bit];
  if (table_feature_name(q, type, bit, buf) != NULL)
    return buf;
  snprintf(buf, 47, "bit%u", bit);
  return buf;
}

/* Refuse unknown incompatible bits, naming each from the feature table. */
static int
check_unknown_incompatible(struct open_ctx *c)
{
  uint64_t unknown = c->h.incompatible_features & ~QCOW2_INCOMPAT_MASK;
  char msg[512] = "", name[47];
  size_t n = 0;

  if (unknown == 0)
    return 0;
  for (unsigned bit = 0; bit < 64 && n < sizeof msg; bit++) {
    if (!(unknown & (1ull << bit)))
      continue;
    if (table_feature_name(c->q, 0, bit, name) != NULL)
      n += snprintf(msg + n, sizeof msg - n, "%s%u (%s)", n ? ", " : "", bit,
                    name);
    else
      n += snprintf(msg + n, sizeof msg - n, "%s%u", n ? ", " : "", bit);
  }
  fde_error("%s: unknown incompatible feature bit%s %s", c->p->path,
            (unknown & (unknown - 1)) ? "s" : "", msg);
  return -ENOTSUP;
}

/* Compression type against incompatible bit 3 (trap 6). */
static int
check_compression(struct open_ctx *c)
{
  const struct qcow2_header *h = &c->h;
  bool bit = h->incompatible_features & QCOW2_INCOMPAT_COMPRESSION;
  uint8_t type = h->header_length > QCOW2_V3_HEADER_LENGTH
    ? h->compression_type : QCOW2_COMPRESSION_ZLIB;

  if (type != QCOW2_COMPRESSION_ZLIB && type != QCOW2_COMPRESSION_ZSTD) {
    fde_error("%s: unknown compression type %u", c->p->path, type);
    return -ENOTSUP;
  }
  if (bit != (type != QCOW2_COMPRESSION_ZLIB)) {
    fde_error("%s: compression type %s does not match incompatible feature "
              "bit 3 (%s)", c->p->path, type ? "zstd" : "zlib",
              bit ? "set" : "clear");
    return -EINVAL;
  }
  c->q->compression_type = type;
  return 0;
}

/* Features we refuse or allow only read-only (trap 5). */
static int
check_features(struct open_ctx *c)
{
  const char *path = c->p->path;
  uint64_t in = c->h.incompatible_features;
  int r;

  if ((r = check_compression(c)) < 0 || (r = check_unknown_incompatible(c)) < 0)
    return r;
  if (in & QCOW2_INCOMPAT_DATA_FILE) {
    fde_error("%s: external data file%s%s%s is not supported", path,
              c->data_file_name ? " '" : "",
              c->data_file_name ? c->data_file_name : "",
              c->data_file_name ? "'" : "");
    return -ENOTSUP;
  }
  if (c->h.autoclear_features & QCOW2_AUTOCLEAR_DATA_FILE_RAW) {
    fde_error("%s: raw-external-data feature set without a data file", path);
    return -EINVAL;
  }
  if ((in & QCOW2_INCOMPAT_CORRUPT) && !c->p->read_only) {
    fde_error("%s: image is marked corrupt; it can only be opened read-only "
              "(use %s); 'qemu-img check -r all' may repair it", path,
              fde_option_names_of(c->p)->read_only);
    return -EACCES;
  }
  if ((in & QCOW2_INCOMPAT_DIRTY) && !c->p->read_only) {
    fde_error("%s: image is dirty, open with %s or run qemu-img check -r all",
              path, fde_option_names_of(c->p)->read_only);
    return -EACCES;
  }
  return 0;
}

/* Encryption, refcount order and extended L2 geometry. */
static int
check_misc(struct open_ctx *c)
{
  const char *path = c->p->path;
  const struct qcow2_header *h = &c->h;

  if ((h->incompatible_features & QCOW2_INCOMPAT_EXTL2)
      && h->cluster_bits < QCOW2_MIN_EXTL2_CLUSTER_BITS) {
    fde_error("%s: extended L2 entries need clusters of at least 16 KiB "
              "(cluster size %u)", path, 1u << h->cluster_bits);
    return -EINVAL;
  }
  if (h->refcount_order > 6) {
    fde_error("%s: refcount order %" PRIu32 " is invalid (max 6)", path,
              h->refcount_order);
    return -EINVAL;
  }
  switch (h->crypt_method) {
  case QCOW2_CRYPT_NONE:
    if (!c->has_crypto_ext)
      return 0;
    fde_error("%s: encryption header extension in an unencrypted image",
              path);
    return -EINVAL;
  case QCOW2_CRYPT_AES:
    fde_error("%s: AES encryption is not supported", path);
    return -ENOTSUP;
  case QCOW2_CRYPT_LUKS:
    fde_error("%s: LUKS encryption is not supported", path);
    return -ENOTSUP;
  default:
    fde_error("%s: unknown encryption method %" PRIu32, path,
              h->crypt_method);
    return -EINVAL;
  }
}

/* A table of bytes bytes at offset: aligned and inside the file. */
static int
check_table(struct open_ctx *c, const char *what, uint64_t offset,
            uint64_t bytes)
{
  const char *path = c->p->path;

  if (offset > INT64_MAX) {
    fde_error("%s: %s offset %#" PRIx64 " is invalid", path, what, offset);
    return -EINVAL;
  }
  if ((offset & ((1u << c->h.cluster_bits) - 1)) != 0) {
    fde_error("%s: %s offset %#" PRIx64 " is not aligned to the cluster size",
              path, what, offset);
    return -EINVAL;
  }
  if (bytes > 0 && (offset > c->q->file_size
                    || bytes > c->q->file_size - offset)) {
    fde_error("%s: %s at %#" PRIx64 " (%" PRIu64 " bytes) is beyond the end "
              "of the file", path, what, offset, bytes);
    return -EINVAL;
  }
  return 0;
}

/* Virtual size, refcount table, snapshot table and L1 (traps 9-12). */
static int
check_tables(struct open_ctx *c)
{
  const char *path = c->p->path;
  const struct qcow2_header *h = &c->h;
  uint64_t cs = 1u << h->cluster_bits;
  int r;

  if (h->size > INT64_MAX) {
    fde_error("%s: virtual size %" PRIu64 " is too large", path, h->size);
    return -EINVAL;
  }
  if (h->refcount_table_clusters == 0
      || h->refcount_table_clusters > QCOW2_MAX_REFTABLE_BYTES / cs) {
    fde_error("%s: refcount table size of %" PRIu32 " clusters is invalid",
              path, h->refcount_table_clusters);
    return -EINVAL;
  }
  r = check_table(c, "refcount table", h->refcount_table_offset,
                  h->refcount_table_clusters * cs);
  if (r < 0)
    return r;
  if (h->nb_snapshots > QCOW2_MAX_SNAPSHOTS) {
    fde_error("%s: too many snapshots (%" PRIu32 ")", path, h->nb_snapshots);
    return -EINVAL;
  }
  r = check_table(c, "snapshot table", h->snapshots_offset,
                  h->nb_snapshots ? sizeof(struct qcow2_snapshot_header) : 0);
  if (r < 0)
    return r;
  if (h->l1_size > QCOW2_MAX_L1_SIZE) {
    fde_error("%s: L1 table is too large (%" PRIu32 " entries)", path,
              h->l1_size);
    return -EINVAL;
  }
  r = check_table(c, "L1 table", h->l1_table_offset, h->l1_size * 8ull);
  if (r < 0)
    return r;
  if (h->l1_size < qcow2_l1_entries_for(c->q, h->size)) {
    fde_error("%s: L1 table is too small (%" PRIu32 " entries) for the "
              "virtual size %" PRIu64, path, h->l1_size, h->size);
    return -EINVAL;
  }
  return 0;
}

/* Load an L1 table (the active one or a snapshot's) after checking it
 * against the file and the disk size it must cover. */
int
qcow2_load_l1(struct qcow2_disk *q, uint64_t offset, uint32_t entries,
              uint64_t disk_size, const char *what)
{
  const char *path = q->disk.path;
  int r;

  if (entries > QCOW2_MAX_L1_SIZE || !qcow2_is_cluster_aligned(q, offset)
      || offset > q->file_size || entries * 8ull > q->file_size - offset) {
    fde_error("%s: %s (%" PRIu32 " entries at %#" PRIx64 ") is invalid",
              path, what, entries, offset);
    return -EINVAL;
  }
  if (entries < qcow2_l1_entries_for(q, disk_size)) {
    fde_error("%s: %s is too small (%" PRIu32 " entries) for the disk size "
              "%" PRIu64, path, what, entries, disk_size);
    return -EINVAL;
  }
  free(q->l1);
  q->l1 = malloc(entries ? entries * 8ull : 1);
  if (q->l1 == NULL)
    return -ENOMEM;
  r = fde_pread_full(q->fd, q->l1, entries * 8ull, offset);
  if (r < 0) {
    fde_error("%s: reading the %s: %s", path, what, strerror(-r));
    return r;
  }
  for (uint32_t i = 0; i < entries; i++)
    q->l1[i] = be64toh(q->l1[i]);
  q->l1_size = entries;
  return 0;
}

/* Copy the backing name out of cluster 0, refusing NUL and control
 * characters (trap 8). */
static int
read_backing_name(struct open_ctx *c)
{
  const uint8_t *name = c->cluster0 + c->h.backing_file_offset;
  uint32_t len = c->h.backing_file_size;

  if (c->h.backing_file_offset == 0 || len == 0)
    return 0;
  for (uint32_t i = 0; i < len; i++) {
    if (name[i] < 0x20 || name[i] == 0x7f) {
      fde_error("%s: backing file name contains a NUL or control character",
                c->p->path);
      return -EINVAL;
    }
  }
  c->q->backing_name = strndup((const char *) name, len);
  return c->q->backing_name == NULL ? -ENOMEM : 0;
}

/* Open the backing layer the image names, if any (formats/chain.c: name
 * resolution, the owner rule, loop and depth checks, format probing). */
static int
open_backing(const struct fde_open_params *p, struct qcow2_disk *q)
{
  return fde_chain_open_backing(p, q->backing_name,
                                q->backing_format[0] ? q->backing_format
                                : NULL, "backing file", &q->backing);
}

/* Fill the geometry fields of q from the validated header. */
static void
set_geometry(struct open_ctx *c)
{
  struct qcow2_disk *q = c->q;
  const struct qcow2_header *h = &c->h;

  q->version = h->version;
  q->cluster_bits = h->cluster_bits;
  q->cluster_size = 1u << h->cluster_bits;
  q->extended_l2 = h->incompatible_features & QCOW2_INCOMPAT_EXTL2;
  q->l2_bits = h->cluster_bits - (q->extended_l2 ? 4 : 3);
  q->granule_bits = q->extended_l2 ? h->cluster_bits - 5 : h->cluster_bits;
  q->refcount_order = h->refcount_order;
  q->header_size = h->size;
  q->reftable_offset = h->refcount_table_offset;
  q->reftable_clusters = h->refcount_table_clusters;
  q->incompatible = h->incompatible_features;
  q->compatible = h->compatible_features;
  q->autoclear = h->autoclear_features;
}

/* Header validation, in QEMU's order, before anything is followed. */
static int
validate_header(struct open_ctx *c)
{
  int r;

  if ((r = read_cluster0(c)) < 0 || (r = check_layout(c)) < 0)
    return r;
  set_geometry(c);
  if ((r = parse_extensions(c)) < 0 || (r = check_features(c)) < 0
      || (r = check_misc(c)) < 0 || (r = check_tables(c)) < 0)
    return r;
  return read_backing_name(c);
}

/* Choose the L1 to export and the virtual size that goes with it. */
static int
load_exported_l1(struct open_ctx *c)
{
  struct qcow2_disk *q = c->q;
  int r = qcow2_read_snapshots(q, c->h.snapshots_offset, c->h.nb_snapshots);

  q->l1_offset = c->h.l1_table_offset;
  q->l1_size_active = c->h.l1_size;
  if (r < 0)
    return r;
  if (c->p->snapshot != NULL)
    return qcow2_select_snapshot(q, c->p->snapshot);
  q->disk.size = q->header_size & ~(uint64_t) 511;
  return qcow2_load_l1(q, c->h.l1_table_offset, c->h.l1_size, q->header_size,
                       "L1 table");
}

/* Caches: L2 tables within the budget, and decompressed clusters. */
static int
create_caches(const struct fde_open_params *p, struct qcow2_disk *q)
{
  q->l2_cache = qcow2_l2_cache_new(q->cluster_size, p->cache_bytes);
  q->zcache = qcow2_zcache_new(q->cluster_size, p->zcache_bytes);
  return q->l2_cache == NULL || q->zcache == NULL ? -ENOMEM : 0;
}

/* Clear the autoclear bits we do not maintain before the first write, as
 * QEMU does (reference 1.2): one 8-byte write of the field, synced. */
static int
clear_unknown_autoclear(struct qcow2_disk *q)
{
  uint64_t keep = q->autoclear & QCOW2_AUTOCLEAR_BITMAPS, be;
  int r;

  if (q->version < 3 || keep == q->autoclear)
    return 0;
  be = htobe64(keep);
  if ((r = fde_pwrite_full(q->fd, &be, 8, 88)) < 0
      || (r = fde_io_fdatasync(q->fd)) < 0) {
    fde_error("%s: cannot update the header: %s", q->disk.path,
              strerror(-r));
    return r;
  }
  q->autoclear = keep;
  return 0;
}

/* Everything writing needs, and the checks that make it safe: no bitmaps
 * we would make stale, refcounts that agree with every reference. */
static int
open_for_writing(struct open_ctx *c)
{
  struct qcow2_disk *q = c->q;
  int r;

  if (q->nb_bitmaps > 0) {
    fde_error("%s: has %" PRIu32 " persistent bitmap(s) that writing would "
              "make stale; export it with %s, or remove them with "
              "'qemu-img bitmap --remove'", q->disk.path, q->nb_bitmaps,
              fde_option_names_of(c->p)->read_only);
    return -EACCES;
  }
  if ((r = qcow2_refs_load(q, c->h.refcount_table_offset,
                           c->h.refcount_table_clusters)) < 0
      || (r = qcow2_check_for_writing(q, fde_option_names_of(c->p)->read_only)) < 0
      || (r = qcow2_refs_find_end(q)) < 0
      || (r = clear_unknown_autoclear(q)) < 0)
    return r;
  q->zeros = calloc(1, q->cluster_size);
  if (q->zeros == NULL)
    return -ENOMEM;
  q->disk.read_only = false;
  return 0;
}

/* Free the state; close the backing chain but not q->fd. */
static void
free_disk(struct qcow2_disk *q)
{
  if (q == NULL)
    return;
  pthread_mutex_destroy(&q->alloc_lock);
  pthread_rwlock_destroy(&q->map_lock);
  pthread_cond_destroy(&q->inflight_done);
  free(q->reftable);
  free(q->free_map);
  qcow2_runs_free(&q->freed);
  qcow2_runs_free(&q->waiting);
  free(q->frees);
  free(q->zeros);
  fde_disk_close(q->backing);
  qcow2_l2_cache_free(q->l2_cache);
  qcow2_zcache_free(q->zcache);
  qcow2_free_snapshots(q);
  free(q->l1);
  free(q->feature_names);
  free(q->backing_name);
  free(q->disk.path);
  free(q);
}

/* map_lock prefers writers: a steady stream of readers must not starve
 * the writer that updates an L1 or L2 entry (glibc's default lets new
 * readers in while a writer waits).  Such a lock deadlocks a thread that
 * takes the read side twice while a writer waits, so no path does: every
 * read-side section (qcow2_map, in_place in qcow2-write.c) is a lookup
 * that takes no other map_lock and calls nothing that does. */
static void
init_map_lock(pthread_rwlock_t *lock)
{
  pthread_rwlockattr_t attr;

  pthread_rwlockattr_init(&attr);
  pthread_rwlockattr_setkind_np(&attr,
                                PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
  pthread_rwlock_init(lock, &attr);
  pthread_rwlockattr_destroy(&attr);
}

static int
qcow2_open(const struct fde_open_params *p, struct fde_disk **out)
{
  struct open_ctx c = { .p = p };
  struct qcow2_disk *q = calloc(1, sizeof *q);
  int r = -ENOMEM;

  c.q = q;
  if (q == NULL || (q->disk.path = strdup(p->path)) == NULL)
    goto fail;
  q->disk.format = &fde_format_qcow2;
  q->disk.read_only = true;     /* until open_for_writing says otherwise */
  q->fd = p->fd;
  pthread_mutex_init(&q->alloc_lock, NULL);
  init_map_lock(&q->map_lock);
  pthread_cond_init(&q->inflight_done, NULL);
  if ((r = file_size(p, &q->file_size)) < 0) {
    fde_error("%s: cannot find the file size: %s", p->path, strerror(-r));
    goto fail;
  }
  q->data_end = q->file_size;
  if ((r = validate_header(&c)) < 0 || (r = load_exported_l1(&c)) < 0
      || (r = open_backing(p, q)) < 0 || (r = create_caches(p, q)) < 0
      || (!p->read_only && p->snapshot == NULL
          && (r = open_for_writing(&c)) < 0))
    goto fail;
  free(c.cluster0);
  free(c.data_file_name);
  *out = &q->disk;
  return 0;

fail:
  if (r == -ENOMEM)
    fde_error("%s: out of memory", p->path);
  free(c.cluster0);
  free(c.data_file_name);
  free_disk(q);
  return r;
}

/* Host storage used by the top layer. */
static uint64_t
qcow2_allocated_bytes(struct fde_disk *d)
{
  return fde_file_allocated(to_qcow2(d)->fd);
}

/* "key: name name ..." for the set bits of one feature word. */
static void
describe_features(const struct qcow2_disk *q, FILE *out, const char *key,
                  unsigned type, uint64_t bits)
{
  char buf[47];

  fprintf(out, "%s:", key);
  if (bits == 0)
    fputs(" none", out);
  for (unsigned bit = 0; bit < 64; bit++) {
    if (bits & (1ull << bit)) {
      fputc(' ', out);
      fde_print_safe(out, feature_name(q, type, bit, buf));
    }
  }
  fputc('\n', out);
}

/* The snapshot count and one line per snapshot. */
static void
describe_snapshots(const struct qcow2_disk *q, FILE *out)
{
  fprintf(out, "snapshots: %" PRIu32 "\n", q->nb_snapshots);
  for (uint32_t i = 0; i < q->nb_snapshots; i++) {
    const struct qcow2_snapshot *s = &q->snapshots[i];
    fputs("snapshot: id=", out);
    fde_print_safe(out, s->id);
    fputs(" name=", out);
    fde_print_safe(out, s->name);
    fprintf(out, " disk-size=%" PRIu64 "%s\n", s->disk_size,
            s == q->exported ? " (exported)" : "");
  }
}

static void
qcow2_describe(struct fde_disk *d, FILE *out)
{
  struct qcow2_disk *q = to_qcow2(d);

  fprintf(out, "cluster-size: %" PRIu32 "\n", q->cluster_size);
  fprintf(out, "compat: %s\n", q->version == 2 ? "0.10" : "1.1");
  fprintf(out, "compression: %s\n",
          q->compression_type == QCOW2_COMPRESSION_ZSTD ? "zstd" : "zlib");
  describe_features(q, out, "incompatible-features", 0, q->incompatible);
  describe_features(q, out, "compatible-features", 1, q->compatible);
  describe_features(q, out, "autoclear-features", 2, q->autoclear);
  fprintf(out, "refcount-bits: %u\n", 1u << q->refcount_order);
  fprintf(out, "extended-l2: %s\n", q->extended_l2 ? "yes" : "no");
  if (q->nb_bitmaps)
    fprintf(out, "bitmaps: %" PRIu32 "\n", q->nb_bitmaps);
  describe_snapshots(q, out);
  fde_chain_describe(q->backing, q->backing_format[0] == '\0', out);
}

/* Free everything and close the file; no flush (format.h): the caller
 * flushes once before and reports how that went.  Whatever no flush made
 * durable is lost, which leaves leaks at worst (qcow2_flush_locked). */
static void
qcow2_close(struct fde_disk *d)
{
  struct qcow2_disk *q = to_qcow2(d);
  int fd = q->fd;

  free_disk(q);
  close(fd);
}

/* format.h's io_begin/io_end: the grace-period guard of qcow2-refcount.c
 * around a spliced reply. */
static unsigned
qcow2_io_begin(struct fde_disk *d)
{
  return qcow2_io_enter(to_qcow2(d));
}

static void
qcow2_io_end(struct fde_disk *d, unsigned token)
{
  qcow2_io_leave(to_qcow2(d), token);
}

/* format.h's capabilities: writable unless opened read-only or as a
 * snapshot view (read_only is then set); zeroing and discards are
 * native (zero or unallocated clusters, qcow2-write.c), and allocated
 * runs can be spliced from the file (qcow2_map_file). */
static bool
qcow2_can_write(struct fde_disk *d)
{
  return !d->read_only;
}

static bool
qcow2_can_always(struct fde_disk *d)
{
  return true;
}

const struct fde_format fde_format_qcow2 = {
  .name            = "qcow2",
  .probe           = qcow2_probe,
  .open            = qcow2_open,
  .close           = qcow2_close,

  .pread           = qcow2_pread,
  .pwrite          = qcow2_pwrite,
  .zero            = qcow2_zero,
  .flush           = qcow2_flush,
  .block_status    = qcow2_block_status,

  .allocated_bytes = qcow2_allocated_bytes,
  .describe        = qcow2_describe,
  .map             = qcow2_map_file,
  .io_begin        = qcow2_io_begin,
  .io_end          = qcow2_io_end,

  .can_write       = qcow2_can_write,
  .can_zero        = qcow2_can_always,
  .can_discard     = qcow2_can_always,
  .can_map         = qcow2_can_always,
  .has_snapshots   = true,
};
