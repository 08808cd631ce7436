/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: --probe's account of what libblkid sees inside the
 * virtual disk.  (Recognising the formats we do not serve, and the
 * sector-0 guard's test, are the table of formats': formats-table.c.) */
#include <config.h>

#include <inttypes.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>

#include "blkid-view.h"
#include "internal.h"

/* Names of the common partition types, spelt as sfdisk --list-types
 * spells them (util-linux 2.38). */
static const struct { unsigned id; const char *name; } mbr_types[] = {
  { 0x01, "FAT12" }, { 0x04, "FAT16 <32M" }, { 0x05, "Extended" },
  { 0x06, "FAT16" }, { 0x07, "HPFS/NTFS/exFAT" }, { 0x0b, "W95 FAT32" },
  { 0x0c, "W95 FAT32 (LBA)" }, { 0x0e, "W95 FAT16 (LBA)" },
  { 0x0f, "W95 Ext'd (LBA)" }, { 0x27, "Hidden NTFS WinRE" },
  { 0x82, "Linux swap / Solaris" }, { 0x83, "Linux" },
  { 0x85, "Linux extended" }, { 0x8e, "Linux LVM" }, { 0xa5, "FreeBSD" },
  { 0xa6, "OpenBSD" }, { 0xa9, "NetBSD" }, { 0xaf, "HFS / HFS+" },
  { 0xbf, "Solaris" }, { 0xda, "Non-FS data" },
  { 0xea, "Linux extended boot" }, { 0xee, "GPT" },
  { 0xef, "EFI (FAT-12/16/32)" }, { 0xfb, "VMware VMFS" },
  { 0xfd, "Linux raid autodetect" },
};

static const struct { const char *guid; const char *name; } gpt_types[] = {
  { "c12a7328-f81f-11d2-ba4b-00a0c93ec93b", "EFI System" },
  { "21686148-6449-6e6f-744e-656564454649", "BIOS boot" },
  { "e3c9e316-0b5c-4db8-817d-f92df00215ae", "Microsoft reserved" },
  { "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7", "Microsoft basic data" },
  { "5808c8aa-7e8f-42e0-85d2-e1e90434cfb3", "Microsoft LDM metadata" },
  { "af9b60a0-1431-4f62-bc68-3311714a69ad", "Microsoft LDM data" },
  { "de94bba4-06d1-4d40-a16a-bfd50179d6ac", "Windows recovery environment" },
  { "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f", "Linux swap" },
  { "0fc63daf-8483-4772-8e79-3d69d8477de4", "Linux filesystem" },
  { "3b8f8425-20e0-4f3b-907f-1a25a76f98e8", "Linux server data" },
  { "44479540-f297-41b2-9af7-d131d5f0458a", "Linux root (x86)" },
  { "4f68bce3-e8cd-4db1-96e7-fbcaf984b709", "Linux root (x86-64)" },
  { "b921b045-1df0-41c3-af44-4c6f280d3fae", "Linux root (ARM-64)" },
  { "8da63339-0007-60c0-c436-083ac8230908", "Linux reserved" },
  { "933ac7e1-2eb4-4f13-b844-0e14e2aef915", "Linux home" },
  { "a19d880f-05fc-4d3b-a006-743f0f84911e", "Linux RAID" },
  { "e6d6d379-f507-44c2-a23c-238f2a3df928", "Linux LVM" },
  { "4d21b016-b534-45c2-a9fb-5c16e091fd2d", "Linux variable data" },
  { "7ec6f557-3bc5-4aca-b293-16ef5df639d1", "Linux temporary data" },
  { "8484680c-9521-48c6-9c11-b0720656f69e", "Linux /usr (x86-64)" },
  { "b0e01050-ee5f-4390-949a-9101b17104e9", "Linux /usr (ARM-64)" },
  { "bc13c2ff-59e6-4262-a352-b275fd6f7172", "Linux extended boot" },
  { "516e7cb4-6ecf-11d6-8ff8-00022d09712b", "FreeBSD data" },
  { "83bd6b9d-7f41-11dc-be0b-001560b84f0f", "FreeBSD boot" },
  { "516e7cb5-6ecf-11d6-8ff8-00022d09712b", "FreeBSD swap" },
  { "516e7cb6-6ecf-11d6-8ff8-00022d09712b", "FreeBSD UFS" },
  { "516e7cba-6ecf-11d6-8ff8-00022d09712b", "FreeBSD ZFS" },
  { "48465300-0000-11aa-aa11-00306543ecac", "Apple HFS/HFS+" },
  { "7c3457ef-0000-11aa-aa11-00306543ecac", "Apple APFS" },
  { "fe3a2a5d-4f32-41a7-b725-accc3285a309", "ChromeOS kernel" },
  { "3cb8e202-3b7e-47dd-8a3c-7ff2a13cfcec", "ChromeOS root fs" },
  { "aa31e02a-400f-11db-9590-000c2911d1b8", "VMware VMFS" },
};

#define ARRAY_LEN(a) (sizeof (a) / sizeof (a)[0])
#define SECTOR 512              /* libblkid's unit: sector numbers shown */
/* At most this many entries are listed; the rest is one line (Linux
 * numbers 256 partitions, fde_partition_entry_check refuses the rest). */
#define LISTED_MAX 256

/* The length of the UTF-8 sequence at s if it is one character that may
 * be printed as it is (not a C1 control, a line or paragraph separator or
 * a bidirectional override, which could reorder or split what a terminal
 * shows), else 0. */
static size_t
printable_utf8(const unsigned char *s)
{
  uint32_t c;
  size_t len;

  if (s[0] >= 0xc2 && s[0] <= 0xdf)
    len = 2, c = s[0] & 0x1f;
  else if (s[0] >= 0xe0 && s[0] <= 0xef)
    len = 3, c = s[0] & 0x0f;
  else if (s[0] >= 0xf0 && s[0] <= 0xf4)
    len = 4, c = s[0] & 0x07;
  else
    return 0;
  for (size_t i = 1; i < len; i++) {
    if ((s[i] & 0xc0) != 0x80)
      return 0;
    c = c << 6 | (s[i] & 0x3f);
  }
  if ((len == 3 && c < 0x800) || (len == 4 && (c < 0x10000 || c > 0x10ffff))
      || (c >= 0xd800 && c <= 0xdfff) || c <= 0x9f
      || c == 0x2028 || c == 0x2029 || (c >= 0x202a && c <= 0x202e)
      || (c >= 0x2066 && c <= 0x2069))
    return 0;
  return len;
}

/* Print s, a string from the image (untrusted), so that it stays on its
 * line and cannot pass for other output: printable ASCII and printable
 * UTF-8 as they are, a backslash doubled, every other byte as \xNN. */
static void
put_escaped(FILE *out, const char *s)
{
  const unsigned char *p = (const unsigned char *) s;

  while (*p != '\0') {
    size_t len;
    if (*p == '\\') {
      fputs("\\\\", out);
      p++;
    }
    else if (*p >= 0x20 && *p < 0x7f)
      putc(*p++, out);
    else if ((len = printable_utf8(p)) > 0) {
      fwrite(p, 1, len, out);
      p += len;
    }
    else
      fprintf(out, "\\x%02x", *p++);
  }
}

/* "prefix key: value\n" with value escaped; nothing if value is empty. */
static void
put_field(FILE *out, const char *prefix, const char *key, const char *value)
{
  if (value[0] == '\0')
    return;
  fprintf(out, "%s%s: ", prefix, key);
  put_escaped(out, value);
  putc('\n', out);
}

/* The name of a partition type, or "unknown". */
static const char *
type_name(const struct fde_part_info *info)
{
  if (strcmp(info->table, "gpt") == 0) {
    for (size_t i = 0; i < ARRAY_LEN(gpt_types); i++)
      if (strcasecmp(info->type, gpt_types[i].guid) == 0)
        return gpt_types[i].name;
  }
  else if (strcmp(info->table, "dos") == 0) {
    for (size_t i = 0; i < ARRAY_LEN(mbr_types); i++)
      if ((int) mbr_types[i].id == info->type_id)
        return mbr_types[i].name;
  }
  return "unknown";
}

/* The lines for what libblkid finds in [start, start + size) of disk,
 * each line starting with prefix.  0 or -errno (logged). */
static int
describe_contents(struct fde_disk *disk, const char *image, uint64_t start,
                  uint64_t size, const char *prefix, FILE *out)
{
  struct fde_contents c;
  int r = fde_contents_read(disk, start, size, &c);

  if (r < 0) {
    fde_error("%s: %scannot be read to probe for a file system: %s", image,
              prefix, strerror(-r));
    fprintf(out, "%scontents: unreadable (%s)\n", prefix, strerror(-r));
    return r;
  }
  switch (c.kind) {
  case FDE_CONTENTS_FOUND:
    put_field(out, prefix, "filesystem", c.type);
    put_field(out, prefix, "filesystem-label", c.label);
    put_field(out, prefix, "filesystem-uuid", c.uuid);
    break;
  case FDE_CONTENTS_AMBIVALENT:
    fprintf(out, "%scontents: more than one signature; libblkid does not "
            "choose (wipefs lists them)\n", prefix);
    break;
  case FDE_CONTENTS_NONE:
    fprintf(out, "%scontents: nothing libblkid recognises\n", prefix);
    break;
  }
  return 0;
}

/* "start B (sector S), size B (N sectors)" of an entry, if its sectors
 * are byte counts that fit. */
static bool
put_extent(FILE *out, const struct fde_part_entry *e)
{
  if (e->start < 0 || e->size < 0 || (uint64_t) e->start > UINT64_MAX / SECTOR
      || (uint64_t) e->size > UINT64_MAX / SECTOR)
    return false;
  fprintf(out, "start %" PRIu64 " (sector %" PRId64 "), size %" PRIu64
          " (%" PRId64 " sectors)", (uint64_t) e->start * SECTOR, e->start,
          (uint64_t) e->size * SECTOR, e->size);
  return true;
}

/* The lines of entry i of tab: where it is, its type, name and uuid, and
 * the file system inside it; an entry no view would show
 * (fde_partition_entry_check) is one line saying why.  0 or -errno. */
static int
describe_entry(struct fde_disk *disk, const char *image,
               const struct fde_part_table *tab, size_t i, FILE *out)
{
  const struct fde_part_entry *e = &tab->entries[i];
  const struct fde_part_info *info = &tab->info[i];
  uint64_t start, size;
  const char *why;
  char prefix[32];

  if (!e->extended && fde_partition_entry_check(tab->entries, tab->nparts, i,
                                                fde_disk_size(disk), &start,
                                                &size, &why) < 0) {
    fprintf(out, "partition %d: left out: %s\n", e->partno, why);
    return 0;
  }
  fprintf(out, "partition %d: ", e->partno);
  if (!put_extent(out, e))
    fputs("left out: its start or size is out of range", out);
  else if (e->extended)
    fputs(" (extended)", out);
  putc('\n', out);
  snprintf(prefix, sizeof prefix, "partition %d ", e->partno);
  fprintf(out, "%stype: ", prefix);
  if (info->type[0] != '\0')
    put_escaped(out, info->type);
  else
    fprintf(out, "0x%02x", (unsigned) info->type_id);
  fprintf(out, " (%s)\n", type_name(info));
  put_field(out, prefix, "name", info->name);
  put_field(out, prefix, "uuid", info->uuid);
  if (e->extended)
    return 0;                   /* a container: its logicals follow */
  return describe_contents(disk, image, start, size, prefix, out);
}

/* The lines of a partition table libblkid accepts. */
static int
describe_table(struct fde_disk *disk, const char *image,
               const struct fde_part_table *tab, FILE *out)
{
  int r = 0;

  put_field(out, "", "partition-table", tab->type);
  if (strcmp(tab->type, "dos") == 0 && tab->id[0] != '\0') {
    fputs("partition-table-uuid: 0x", out);   /* as fdisk and sfdisk */
    put_escaped(out, tab->id);
    putc('\n', out);
  }
  else
    put_field(out, "", "partition-table-uuid", tab->id);
  for (size_t i = 0; i < tab->nparts && i < LISTED_MAX; i++)
    if (describe_entry(disk, image, tab, i, out) < 0)
      r = -1;
  if (tab->nparts > LISTED_MAX)
    fprintf(out, "partitions: %zu more entries left out: the table holds "
            "more than %d partitions\n", tab->nparts - LISTED_MAX,
            LISTED_MAX);
  return r;
}

/* Print what libblkid sees inside the virtual disk (--probe): the
 * partition table and each partition with the file system inside it, or
 * the file system on the whole disk when there is no table.  Read through
 * the disk's own pread, as copies in memory (formats/blkid-view.c): never
 * the image file's bytes, which are not the disk's for qcow2, and never
 * a mount.  Strings from the image are escaped.  0, or -1 if something
 * could not be read (logged, and said on its line). */
int
probe_describe_disk(struct fde_disk *disk, const char *image, FILE *out)
{
  struct fde_part_table tab;
  int r;

  if (fde_disk_size(disk) == 0) {
    fprintf(out, "contents: nothing libblkid recognises\n");
    return 0;
  }
  if ((r = fde_part_table_details(disk, &tab)) < 0) {
    fde_error("%s: cannot read the partition table: %s", image,
              strerror(-r));
    fprintf(out, "partition-table: unreadable (%s)\n", strerror(-r));
  }
  else if (tab.nparts > 0 || (tab.type[0] != '\0'
                              && strcmp(tab.type, "PMBR") != 0))
    r = describe_table(disk, image, &tab, out);
  else {
    if (tab.type[0] != '\0')
      fprintf(out, "partition-table: none libblkid accepts (a protective "
              "MBR whose GPT fails libblkid's checks, such as a bad "
              "CRC)\n");
    r = describe_contents(disk, image, 0, fde_disk_size(disk), "", out);
  }
  fde_part_table_free(&tab);
  return r < 0 ? -1 : 0;
}
