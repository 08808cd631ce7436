/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: recognising image formats we do not serve (so that
 * they are never exported as raw by mistake), the sector-0 guard, and
 * libblkid's view of what a raw disk holds. */
#include <config.h>

#include <blkid.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

struct magic {
  const char *name;
  size_t offset;
  const char *bytes;
  size_t len;
};

#define MAGIC(name, off, str) { name, off, str, sizeof str - 1 }

/* Header magics, from each format's specification (QEMU's probes). */
static const struct magic magics[] = {
  MAGIC("qcow (version 1)", 0, "QFI\xfb\0\0\0\x01"),
  MAGIC("QED", 0, "QED\0"),
  MAGIC("VMDK (sparse extent)", 0, "KDMV"),
  MAGIC("VMDK (ESX sparse extent)", 0, "COWD"),
  MAGIC("VMDK (descriptor file)", 0, "# Disk DescriptorFile"),
  MAGIC("VDI", 64, "\x7f\x10\xda\xbe"),
  MAGIC("VHD", 0, "conectix"),
  MAGIC("VHDX", 0, "vhdxfile"),
  MAGIC("LUKS", 0, "LUKS\xba\xbe"),
  MAGIC("Parallels", 0, "WithoutFreeSpace"),
  MAGIC("Parallels", 0, "WithouFreSpacExt"),
  MAGIC("bochs", 0, "Bochs Virtual HD Image"),
  MAGIC("cloop", 0, "#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0"),
};

static const char *
match_magic(const uint8_t *buf, size_t len)
{
  for (size_t i = 0; i < sizeof magics / sizeof magics[0]; i++) {
    const struct magic *m = &magics[i];
    if (m->offset + m->len <= len
        && memcmp(buf + m->offset, m->bytes, m->len) == 0)
      return m->name;
  }
  /* qcow2 with a version we do not know is not raw either. */
  if (len >= 8 && memcmp(buf, "QFI\xfb", 4) == 0
      && fde_format_probe(buf, len) != &fde_format_qcow2)
    return "qcow2 (unknown version)";
  return NULL;
}

/* DMG keeps its "koly" trailer in the last 512 bytes of the file. */
static bool
has_dmg_trailer(int fd)
{
  struct stat st;
  uint8_t tail[4];

  if (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode) || st.st_size < 512)
    return false;
  if (pread(fd, tail, sizeof tail, st.st_size - 512) != sizeof tail)
    return false;
  return memcmp(tail, "koly", 4) == 0;
}

/* The name of an image format we recognise but do not serve, or NULL. */
const char *
probe_unsupported(int fd, const uint8_t *buf, size_t len)
{
  const char *name = match_magic(buf, len);

  if (name == NULL && has_dmg_trailer(fd))
    name = "DMG";
  return name;
}

/* Would this first sector make the disk look like an image file? */
bool
probe_sector0_is_image(const uint8_t *sector, size_t len)
{
  return match_magic(sector, len) != NULL
    || fde_format_probe(sector, len) != &fde_format_raw;
}

/* Print what libblkid sees in a raw disk: partition table, file system. */
void
probe_describe_raw(int fd, FILE *out)
{
  blkid_probe pr = blkid_new_probe();
  const char *value;

  if (pr == NULL)
    return;
  if (blkid_probe_set_device(pr, fd, 0, 0) == 0) {
    blkid_probe_enable_partitions(pr, 1);
    blkid_probe_set_partitions_flags(pr, BLKID_PARTS_ENTRY_DETAILS);
    blkid_probe_enable_superblocks(pr, 1);
    blkid_probe_set_superblocks_flags(pr, BLKID_SUBLKS_TYPE
                                      | BLKID_SUBLKS_LABEL | BLKID_SUBLKS_UUID);
    if (blkid_do_safeprobe(pr) == 0) {
      if (blkid_probe_lookup_value(pr, "PTTYPE", &value, NULL) == 0)
        fprintf(out, "partition-table: %s\n", value);
      if (blkid_probe_lookup_value(pr, "TYPE", &value, NULL) == 0)
        fprintf(out, "filesystem: %s\n", value);
      if (blkid_probe_lookup_value(pr, "LABEL", &value, NULL) == 0)
        fprintf(out, "label: %s\n", value);
    }
    else
      fprintf(out, "contents: nothing libblkid recognises\n");
    blkid_partlist parts = blkid_probe_get_partitions(pr);
    int n = parts != NULL ? blkid_partlist_numof_partitions(parts) : 0;
    for (int i = 0; i < n; i++) {
      blkid_partition p = blkid_partlist_get_partition(parts, i);
      fprintf(out, "partition %d: start %lld, size %lld sectors\n",
              blkid_partition_get_partno(p),
              (long long) blkid_partition_get_start(p),
              (long long) blkid_partition_get_size(p));
    }
  }
  blkid_free_probe(pr);
}
