/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: letting libblkid read the virtual disk (blkid-view.h).
 *
 * libblkid reads only through a file descriptor of a regular file or
 * block device at least as large as the area probed (lseek and read; 2.38
 * has no read callback and no buffer interface), and the virtual disk has
 * no descriptor before the view is mounted; the daemon must never read
 * its own mount (a request in flight at SIGKILL would never be answered),
 * and /proc/self/mem is refused (its size is 0).  So libblkid reads an
 * area: a memfd as large as the part of the disk probed, sparse, into
 * which the ranges libblkid looks at have been copied from the disk first.
 *
 * For the partition table the area is the whole disk, and what is copied:
 *
 *  - the first and the last MiB (MBR, GPT header and entries at their
 *    usual places, the backup GPT, BSD, Sun, SGI, Mac, AIX and Atari
 *    labels, which libblkid looks for there);
 *  - GPT entry arrays wherever the primary and backup headers put them;
 *  - every EBR of the extended chain, followed as libblkid follows it
 *    (at most MAX_EBRS, stopping at a loop);
 *  - the first 64 KiB of every MBR partition (where libblkid looks for
 *    nested BSD, Solaris, UnixWare and Minix labels).
 *
 * For the file system inside a partition (or inside the whole disk when
 * it has no table), the area is the partition, one at a time, and what is
 * copied is its first and last MiB (at most 2 MiB of memory whatever the
 * partition's size).  That holds the superblocks libblkid reads: at the
 * start ext2/3/4 (1 KiB), xfs, vfat, exfat, ntfs, bitlocker (0), btrfs
 * (64 KiB; libblkid reads only the primary copy), swap and its suspend
 * images (the end of the first page, up to 64 KiB pages), iso9660 and its
 * volume descriptors (32 KiB on), LVM2 (the label in the first four
 * sectors), LUKS 1 and 2 (0), md/linux_raid 1.1 and 1.2 (0, 4 KiB), f2fs,
 * erofs, nilfs2, hfs+, jfs, reiserfs, gfs2, bcache, squashfs; at the end
 * md/linux_raid 0.90 and 1.0 (the last 64 and 8 KiB), the firmware RAID
 * metadata of Intel, DDF, LSI and NVIDIA (the last sectors), DRBD; and
 * ZFS, whose four 256 KiB labels sit two at the start and two at the
 * end.  Not held, so not found: what libblkid looks for past the first
 * MiB (VMFS at 1 and 2 MiB, UDF with blocks of 4 KiB and more, a Promise
 * RAID set's farthest copy).
 *
 * Copying decides nothing: libblkid alone says what the table or the
 * partition holds; a sector it reads that was not copied reads as zeros,
 * which can only make a table look shorter (an entry missing) or hide a
 * file system, never put an entry elsewhere or invent a file system.
 * Sectors are 512 bytes, as for a loop device: a table written for
 * 4096-byte sectors is not found. */
#include <config.h>

#include <blkid.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "blkid-view.h"

#define SECTOR 512              /* libblkid's unit for start and size */
#define HEAD_TAIL (1u << 20)
#define NESTED (64u << 10)
#define MAX_EBRS 1024
#define MAX_ENTRIES_BYTES (4u << 20)

static uint16_t get16(const uint8_t *p) { return (uint16_t) (p[0] | p[1] << 8); }
static uint32_t get32(const uint8_t *p) { return get16(p) | (uint32_t) get16(p + 2) << 16; }
static uint64_t get64(const uint8_t *p) { return get32(p) | (uint64_t) get32(p + 4) << 32; }

/* An area of a disk as libblkid reads it: a sparse memfd as large as the
 * area, holding the ranges copied into it at their offsets in the area. */
struct area {
  struct fde_disk *disk;
  uint64_t base;                /* the area's first byte in the disk */
  uint64_t size;                /* its length in bytes, the memfd's size */
  int memfd;
  /* the ranges copied (bytes of the disk), when asked for (track) */
  bool track;
  bool track_failed;            /* out of memory: the list is incomplete */
  struct fde_byte_range *copied;
  size_t ncopied, cap;
};

/* Set up the area [base, base + size) of disk (inside it), nothing copied
 * yet.  0 or -errno (-EFBIG past INT64_MAX bytes). */
static int
area_open(struct area *a, struct fde_disk *disk, uint64_t base,
          uint64_t size)
{
  int r;

  *a = (struct area) { .disk = disk, .base = base, .size = size,
                       .memfd = -1 };
  if (size > INT64_MAX)
    return -EFBIG;
  if ((a->memfd = memfd_create("fde-blkid-view", MFD_CLOEXEC)) == -1)
    return -errno;
  if (ftruncate(a->memfd, (off_t) size) == -1) {
    r = -errno;
    close(a->memfd);
    a->memfd = -1;
    return r;
  }
  return 0;
}

static void
area_close(struct area *a)
{
  if (a->memfd != -1)
    close(a->memfd);
  a->memfd = -1;
  free(a->copied);
  a->copied = NULL;
}

/* Note that [off, off + len) was copied (if the area tracks copies). */
static void
note_copied(struct area *a, uint64_t off, uint64_t len)
{
  if (!a->track || a->track_failed)
    return;
  if (a->ncopied > 0
      && a->copied[a->ncopied - 1].off + a->copied[a->ncopied - 1].len == off) {
    a->copied[a->ncopied - 1].len += len;
    return;
  }
  if (a->ncopied == a->cap) {
    size_t cap = a->cap ? 2 * a->cap : 64;
    struct fde_byte_range *c = realloc(a->copied, cap * sizeof *c);
    if (c == NULL) {
      a->track_failed = true;
      return;
    }
    a->copied = c;
    a->cap = cap;
  }
  a->copied[a->ncopied++] = (struct fde_byte_range) { off, len };
}

static int
compare_ranges(const void *x, const void *y)
{
  const struct fde_byte_range *a = x, *b = y;

  return a->off < b->off ? -1 : a->off > b->off;
}

/* The copied ranges, sorted and merged, moved into *out (NULL, 0 if the
 * list is incomplete: then every write counts). */
static void
take_copied(struct area *a, struct fde_byte_range **out, size_t *n)
{
  size_t k = 0;

  *out = NULL;
  *n = 0;
  if (a->track_failed || a->ncopied == 0)
    return;
  qsort(a->copied, a->ncopied, sizeof *a->copied, compare_ranges);
  for (size_t i = 1; i < a->ncopied; i++) {
    struct fde_byte_range *last = &a->copied[k], *r = &a->copied[i];
    if (r->off <= last->off + last->len) {
      if (r->off + r->len > last->off + last->len)
        last->len = r->off + r->len - last->off;
    }
    else
      a->copied[++k] = *r;
  }
  *out = a->copied;
  *n = k + 1;
  a->copied = NULL;
}

/* Copy [off, off + len) of the area, clipped to it, into the memfd. */
static int
copy_range(struct area *a, uint64_t off, uint64_t len)
{
  uint8_t buf[64 << 10];

  if (off >= a->size)
    return 0;
  if (len > a->size - off)
    len = a->size - off;
  note_copied(a, a->base + off, len);
  while (len > 0) {
    size_t n = len < sizeof buf ? (size_t) len : sizeof buf;
    int r = a->disk->format->pread(a->disk, buf, n, a->base + off);
    if (r < 0 || (r = fde_pwrite_full(a->memfd, buf, n, off)) < 0)
      return r;
    off += n;
    len -= n;
  }
  return 0;
}

/* Read one copied sector back (zeros if outside the area). */
static int
copied_sector(struct area *a, uint64_t lba, uint8_t sec[SECTOR])
{
  memset(sec, 0, SECTOR);
  if (lba >= a->size / SECTOR)
    return 0;
  return fde_pread_full(a->memfd, sec, SECTOR, lba * SECTOR);
}

/* A probe reading the area's memfd, or NULL (-ENOMEM, -EIO in *r). */
static blkid_probe
area_probe(struct area *a, int *r)
{
  blkid_probe pr = blkid_new_probe();

  *r = -ENOMEM;
  if (pr == NULL)
    return NULL;
  if (blkid_probe_set_device(pr, a->memfd, 0, (blkid_loff_t) a->size) != 0) {
    blkid_free_probe(pr);
    *r = -EIO;
    return NULL;
  }
  *r = 0;
  return pr;
}

/* ---- The partition table ------------------------------------------------- */

/* The GPT header at lba (if it is one): copy its entry array. */
static int
copy_gpt_entries(struct area *a, uint64_t lba)
{
  uint8_t h[SECTOR];
  int r = copy_range(a, lba * SECTOR, SECTOR);

  if (r < 0 || (r = copied_sector(a, lba, h)) < 0)
    return r;
  if (memcmp(h, "EFI PART", 8) != 0)
    return 0;
  uint64_t entries = get64(h + 72);
  uint64_t bytes = (uint64_t) get32(h + 80) * get32(h + 84);
  if (bytes > MAX_ENTRIES_BYTES)
    return 0;                   /* hidden at the end: hide_huge_gpt */
  if (entries > a->size / SECTOR)
    return 0;
  if ((r = copy_range(a, entries * SECTOR, bytes)) < 0)
    return r;
  uint64_t alternate = get64(h + 32);
  if (alternate != lba && lba == 1 && alternate < a->size / SECTOR)
    return copy_gpt_entries(a, alternate);
  return 0;
}

static bool
is_extended(uint8_t type)
{
  return type == 0x05 || type == 0x0f || type == 0x85;
}

/* Copy the EBRs of the chain starting at ext (an LBA), and the first
 * NESTED bytes of each logical partition. */
static int
copy_ebr_chain(struct area *a, uint64_t ext)
{
  uint64_t seen[MAX_EBRS], cur = ext;
  uint8_t sec[SECTOR];
  int r;

  for (unsigned n = 0; n < MAX_EBRS; n++) {
    for (unsigned i = 0; i < n; i++)
      if (seen[i] == cur)
        return 0;               /* a loop: libblkid decides what it is */
    seen[n] = cur;
    if ((r = copy_range(a, cur * SECTOR, SECTOR)) < 0
        || (r = copied_sector(a, cur, sec)) < 0)
      return r;
    if (get16(sec + 510) != 0xaa55)
      return 0;
    /* The link is the first extended entry (libblkid and Linux take no
     * other; the rest are junk).  Following the first one with a nonzero
     * start copies what libblkid reads whether it ends the chain at a
     * link to start 0 or goes on past it (more copied is harmless). */
    uint64_t next = 0;
    for (int i = 0; i < 4; i++) {
      const uint8_t *e = sec + 446 + 16 * i;
      uint64_t start = get32(e + 8);
      if (e[4] == 0 || get32(e + 12) == 0)
        continue;
      if (is_extended(e[4])) {
        if (next == 0 && start != 0)
          next = ext + start;
      }
      else if ((r = copy_range(a, (cur + start) * SECTOR, NESTED)) < 0)
        return r;
    }
    if (next == 0)
      return 0;
    cur = next;
  }
  return 0;
}

/* If the copied sector at lba is a GPT header whose entry array is
 * larger than MAX_ENTRIES_BYTES, blank it: libblkid would allocate and
 * read the whole array (33 million entries: 4 GiB of memory and 12 s, at
 * every re-read of the table), so it is hidden, as a header libblkid
 * refused.  Done last: a later copy (the protective MBR's partition
 * starts at LBA 1) would bring it back. */
static int
hide_huge_gpt(struct area *a, uint64_t lba)
{
  static const uint8_t zero[SECTOR];
  uint8_t h[SECTOR];
  int r = copied_sector(a, lba, h);

  if (r < 0 || memcmp(h, "EFI PART", 8) != 0
      || (uint64_t) get32(h + 80) * get32(h + 84) <= MAX_ENTRIES_BYTES)
    return r;
  return fde_pwrite_full(a->memfd, zero, SECTOR, lba * SECTOR);
}

/* hide_huge_gpt on the primary header, the one its alternate field names
 * and the last sector (where libblkid looks for the backup). */
static int
hide_huge_gpts(struct area *a)
{
  uint8_t h[SECTOR];
  uint64_t last = a->size / SECTOR - 1;
  int r = copied_sector(a, 1, h);

  if (r < 0 || a->size < 2 * SECTOR)
    return r;
  uint64_t alternate = memcmp(h, "EFI PART", 8) == 0 ? get64(h + 32) : last;
  if ((r = hide_huge_gpt(a, 1)) < 0 || (r = hide_huge_gpt(a, last)) < 0)
    return r;
  if (alternate > 1 && alternate < last)
    r = hide_huge_gpt(a, alternate);
  return r;
}

/* Copy into the area (the whole disk) what libblkid reads to find a
 * partition table. */
static int
copy_table_sectors(struct area *a)
{
  uint8_t mbr[SECTOR];
  uint64_t tail = a->size > HEAD_TAIL ? a->size - HEAD_TAIL : 0;
  int r;

  if ((r = copy_range(a, 0, HEAD_TAIL)) < 0
      || (r = copy_range(a, tail, HEAD_TAIL)) < 0
      || (r = copy_gpt_entries(a, 1)) < 0
      || (a->size >= 2 * SECTOR
          && (r = copy_gpt_entries(a, a->size / SECTOR - 1)) < 0)
      || (r = copied_sector(a, 0, mbr)) < 0)
    return r;
  if (get16(mbr + 510) != 0xaa55)
    return hide_huge_gpts(a);
  for (int i = 0; i < 4; i++) {
    const uint8_t *e = mbr + 446 + 16 * i;
    uint64_t start = get32(e + 8);
    if (e[4] == 0 || get32(e + 12) == 0)
      continue;
    if (is_extended(e[4]))
      r = copy_ebr_chain(a, start);
    else
      r = copy_range(a, start * SECTOR, NESTED);
    if (r < 0)
      return r;
  }
  return hide_huge_gpts(a);
}

/* Copy a libblkid string (NULL: none) into dst, cut to fit. */
static void
copy_string(char *dst, size_t cap, const char *src)
{
  snprintf(dst, cap, "%s", src != NULL ? src : "");
}

/* Entry i of libblkid's list into tab. */
static void
fill_entry(struct fde_part_table *tab, size_t i, blkid_partition p)
{
  blkid_parttable pt = blkid_partition_get_table(p);
  struct fde_part_info *info = &tab->info[i];

  blkid_partition outer = pt != NULL ? blkid_parttable_get_parent(pt) : NULL;

  tab->entries[i] = (struct fde_part_entry) {
    .partno = blkid_partition_get_partno(p),
    .start = blkid_partition_get_start(p),
    .size = blkid_partition_get_size(p),
    .extended = blkid_partition_is_extended(p) != 0,
  };
  if (outer != NULL) {          /* a nested label's partition */
    tab->entries[i].outer_start = blkid_partition_get_start(outer);
    tab->entries[i].outer_size = blkid_partition_get_size(outer);
  }
  copy_string(info->table, sizeof info->table,
              pt != NULL ? blkid_parttable_get_type(pt) : NULL);
  copy_string(info->type, sizeof info->type,
              blkid_partition_get_type_string(p));
  info->type_id = blkid_partition_get_type(p);
  copy_string(info->name, sizeof info->name, blkid_partition_get_name(p));
  copy_string(info->uuid, sizeof info->uuid, blkid_partition_get_uuid(p));
}

/* A DOS logical partition must lie inside an extended partition of its
 * table (libblkid and Linux follow the chain of every extended primary):
 * make the one holding its first sector its outer partition, or, if none
 * does, the first one (which it then lies outside).  libblkid does not
 * say which chain gave a logical: one of B's chain that libblkid's 32-bit
 * sum put inside A is judged against A, which only keeps it inside some
 * extended partition (it is still checked against every shown one). */
static void
set_dos_containers(struct fde_part_table *tab, blkid_partlist ls)
{
  for (size_t i = 0; i < tab->nparts; i++) {
    blkid_partition p = blkid_partlist_get_partition(ls, (int) i);
    blkid_parttable pt = blkid_partition_get_table(p);
    struct fde_part_entry *e = &tab->entries[i];
    const struct fde_part_entry *ext = NULL;
    if (pt == NULL || blkid_parttable_get_parent(pt) != NULL
        || !blkid_partition_is_logical(p))
      continue;
    for (size_t k = 0; k < tab->nparts; k++) {
      const struct fde_part_entry *x = &tab->entries[k];
      if (!x->extended)
        continue;
      if (ext == NULL || (e->start >= x->start && e->start - x->start < x->size))
        ext = x;
      if (e->start >= x->start && e->start - x->start < x->size)
        break;
    }
    /* none: an empty outer range, which no window lies inside */
    e->outer_start = ext != NULL ? ext->start : 0;
    e->outer_size = ext != NULL ? ext->size : -1;
  }
}

/* Probe the area for partitions only, into tab.  0 or -errno. */
static int
probe_parts(struct area *a, struct fde_part_table *tab)
{
  blkid_partlist ls;
  const char *value;
  int r, n;
  blkid_probe pr = area_probe(a, &r);

  if (pr == NULL)
    return r;
  blkid_probe_enable_superblocks(pr, 0);
  blkid_probe_enable_partitions(pr, 1);
  if (blkid_do_safeprobe(pr) != 0)
    goto out;
  if (blkid_probe_lookup_value(pr, "PTTYPE", &value, NULL) == 0)
    copy_string(tab->type, sizeof tab->type, value);
  if (blkid_probe_lookup_value(pr, "PTUUID", &value, NULL) == 0)
    copy_string(tab->id, sizeof tab->id, value);
  if ((ls = blkid_probe_get_partitions(pr)) == NULL
      || (n = blkid_partlist_numof_partitions(ls)) <= 0)
    goto out;
  tab->entries = calloc((size_t) n, sizeof *tab->entries);
  tab->info = calloc((size_t) n, sizeof *tab->info);
  if (tab->entries == NULL || tab->info == NULL) {
    r = -ENOMEM;
    goto out;
  }
  for (int i = 0; i < n; i++)
    fill_entry(tab, (size_t) i, blkid_partlist_get_partition(ls, i));
  tab->nparts = (size_t) n;
  set_dos_containers(tab, ls);
out:
  blkid_free_probe(pr);
  return r;
}

int
fde_part_table_details(struct fde_disk *disk, struct fde_part_table *tab)
{
  struct area a;
  int r;

  memset(tab, 0, sizeof *tab);
  if ((r = area_open(&a, disk, 0, fde_disk_size(disk))) == 0) {
    a.track = true;
    if ((r = copy_table_sectors(&a)) == 0)
      r = probe_parts(&a, tab);
    if (r == 0)
      take_copied(&a, &tab->read, &tab->nread);
  }
  area_close(&a);
  return r;
}

void
fde_part_table_free(struct fde_part_table *tab)
{
  free(tab->entries);
  free(tab->info);
  free(tab->read);
  tab->entries = NULL;
  tab->info = NULL;
  tab->read = NULL;
  tab->nparts = tab->nread = 0;
}

int
fde_partition_table_read(struct fde_disk *disk, struct fde_part_entry **parts,
                         size_t *nparts, char *type, size_t type_len)
{
  struct fde_part_table tab;
  int r = fde_part_table_details(disk, &tab);

  *parts = NULL;
  *nparts = 0;
  type[0] = '\0';
  if (r == 0 && tab.nparts > 0) {
    *parts = tab.entries;       /* handed over */
    *nparts = tab.nparts;
    tab.entries = NULL;
    copy_string(type, type_len, tab.type);
  }
  fde_part_table_free(&tab);
  return r;
}

/* ---- The file system in a partition -------------------------------------- */

/* Probe the area for superblocks only, into c.  0 or -errno. */
static int
probe_contents(struct area *a, struct fde_contents *c)
{
  const char *value;
  int r;
  blkid_probe pr = area_probe(a, &r);

  if (pr == NULL)
    return r;
  blkid_probe_enable_partitions(pr, 0);
  blkid_probe_enable_superblocks(pr, 1);
  blkid_probe_set_superblocks_flags(pr, BLKID_SUBLKS_TYPE | BLKID_SUBLKS_LABEL
                                    | BLKID_SUBLKS_UUID);
  switch (blkid_do_safeprobe(pr)) {
  case 0:
    c->kind = FDE_CONTENTS_FOUND;
    if (blkid_probe_lookup_value(pr, "TYPE", &value, NULL) == 0)
      copy_string(c->type, sizeof c->type, value);
    if (blkid_probe_lookup_value(pr, "LABEL", &value, NULL) == 0)
      copy_string(c->label, sizeof c->label, value);
    if (blkid_probe_lookup_value(pr, "UUID", &value, NULL) == 0)
      copy_string(c->uuid, sizeof c->uuid, value);
    break;
  case 1:
    c->kind = FDE_CONTENTS_NONE;
    break;
  case -2:
    c->kind = FDE_CONTENTS_AMBIVALENT;
    break;
  default:
    r = -EIO;
  }
  blkid_free_probe(pr);
  return r;
}

int
fde_contents_read(struct fde_disk *disk, uint64_t start, uint64_t size,
                  struct fde_contents *c)
{
  struct area a;
  int r;

  memset(c, 0, sizeof *c);
  if (fde_window_check(fde_disk_size(disk), start, size) != NULL)
    return -EINVAL;
  if ((r = area_open(&a, disk, start, size)) == 0
      && (r = copy_range(&a, 0, HEAD_TAIL)) == 0
      && (r = copy_range(&a, size > HEAD_TAIL ? size - HEAD_TAIL : 0,
                         HEAD_TAIL)) == 0
      /* some superblock probes ask whether a partition table covers
       * them, and libblkid then reads the table too */
      && (r = hide_huge_gpts(&a)) == 0)
    r = probe_contents(&a, c);
  area_close(&a);
  return r;
}
