/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: the table of formats, and identifying a file by it.
 *
 * One row per format the program knows: the ones it serves (with their
 * backend) and the ones it recognises only to refuse by name, so that
 * such an image is never exported as raw by mistake.  --help, --format's
 * names and its error, probing (what is served, what is refused) and the
 * man page's FORMATS section (fuse-disk-export --list-formats=man) are
 * all made from this table: adding a format is one backend file and one
 * row here. */
#include <config.h>

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "format.h"

/* A signature of len bytes at off; variant (optional) is what messages
 * call a file carrying it. */
#define MAGIC(off, str) { off, sizeof str - 1, str, NULL }
#define MAGIC_AS(off, str, variant) { off, sizeof str - 1, str, variant }

static bool dmg_trailer(int fd);

/* Signatures are QEMU's probes (block/<format>.c).  Order matters only
 * between rows whose signatures overlap: qcow (version 1) is tested
 * before qcow2's unknown versions (refused rows come first). */
const struct fde_format_info fde_format_table[] = {
  { .name = "raw", .title = "raw", .backend = &fde_format_raw,
    .description = "the file's bytes as they are (no other format matches)" },
  { .name = "qcow2", .title = "qcow2", .backend = &fde_format_qcow2,
    .magic = { MAGIC(0, "QFI\xfb") },
    .description = "QEMU copy-on-write v2, v3: backing files, snapshots" },
  { .name = "qcow", .title = "qcow (version 1)",
    .magic = { MAGIC(0, "QFI\xfb\0\0\0\x01") },
    .description = "QEMU copy-on-write version 1" },
  { .name = "qed", .title = "QED", .magic = { MAGIC(0, "QED\0") },
    .description = "QEMU enhanced disk" },
  { .name = "vmdk", .title = "VMDK",
    .magic = { MAGIC_AS(0, "KDMV", "VMDK (sparse extent)"),
               MAGIC_AS(0, "COWD", "VMDK (ESX sparse extent)"),
               MAGIC_AS(0, "# Disk DescriptorFile",
                        "VMDK (descriptor file)") },
    .description = "VMware virtual disk" },
  { .name = "vdi", .title = "VDI", .backend = &fde_format_vdi,
    .magic = { MAGIC(64, "\x7f\x10\xda\xbe") },
    .description = "VirtualBox virtual disk: dynamic, static" },
  { .name = "vpc", .title = "VHD", .backend = &fde_format_vpc,
    .magic = { MAGIC(0, "conectix") }, .tail_magic = fde_vpc_fixed_footer,
    .description = "Microsoft VHD: fixed, dynamic, differencing" },
  { .name = "vhdx", .title = "VHDX", .magic = { MAGIC(0, "vhdxfile") },
    .description = "Microsoft Hyper-V virtual disk (VHDX)" },
  { .name = "luks", .title = "LUKS", .magic = { MAGIC(0, "LUKS\xba\xbe") },
    .description = "LUKS encrypted volume" },
  { .name = "parallels", .title = "Parallels",
    .magic = { MAGIC(0, "WithoutFreeSpace"), MAGIC(0, "WithouFreSpacExt") },
    .description = "Parallels virtual disk" },
  { .name = "dmg", .title = "DMG", .tail_magic = dmg_trailer,
    .description = "Apple disk image" },
  { .name = "bochs", .title = "bochs",
    .magic = { MAGIC(0, "Bochs Virtual HD Image") },
    .description = "Bochs virtual disk" },
  { .name = "cloop", .title = "cloop",
    .magic = { MAGIC(0, "#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0") },
    .description = "compressed loop image" },
};
const size_t fde_format_table_len =
  sizeof fde_format_table / sizeof fde_format_table[0];

/* DMG keeps its "koly" trailer in the last 512 bytes of the file. */
static bool
dmg_trailer(int fd)
{
  struct stat st;
  uint8_t tail[4];

  if (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode) || st.st_size < 512)
    return false;
  if (fde_pread_full(fd, tail, sizeof tail, (uint64_t) st.st_size - 512) < 0)
    return false;
  return memcmp(tail, "koly", 4) == 0;
}

/* The first of row's signatures found in head, or NULL. */
static const struct fde_magic *
find_magic(const struct fde_format_info *row, const uint8_t *head, size_t len)
{
  for (size_t i = 0; i < FDE_FORMAT_MAGICS; i++) {
    const struct fde_magic *m = &row->magic[i];
    if (m->len > 0 && m->offset <= len && m->len <= len - m->offset
        && memcmp(head + m->offset, m->bytes, m->len) == 0)
      return m;
  }
  return NULL;
}

const struct fde_format_info *
fde_format_info_by_name(const char *name)
{
  for (size_t i = 0; i < fde_format_table_len; i++)
    if (strcmp(fde_format_table[i].name, name) == 0)
      return &fde_format_table[i];
  return NULL;
}

const struct fde_format *
fde_format_by_name(const char *name)
{
  const struct fde_format_info *row = fde_format_info_by_name(name);

  return row != NULL ? row->backend : NULL;
}

const struct fde_format *
fde_format_probe(const uint8_t *buf, size_t len)
{
  const struct fde_format *best = &fde_format_raw;
  int best_score = 0;

  for (size_t i = 0; i < fde_format_table_len; i++) {
    const struct fde_format *f = fde_format_table[i].backend;
    int score = f != NULL ? f->probe(buf, len) : 0;
    if (score > best_score) {
      best = f;
      best_score = score;
    }
  }
  return best;
}

/* A refused row whose signature is in head (or at the end of fd). */
static bool
match_refused(const uint8_t *head, size_t len, int fd,
              struct fde_format_match *m)
{
  for (size_t i = 0; i < fde_format_table_len; i++) {
    const struct fde_format_info *row = &fde_format_table[i];
    const struct fde_magic *magic;
    if (row->backend != NULL)
      continue;
    if ((magic = find_magic(row, head, len)) != NULL
        || (fd >= 0 && row->tail_magic != NULL && row->tail_magic(fd))) {
      m->info = row;
      snprintf(m->what, sizeof m->what, "%s",
               magic != NULL && magic->variant != NULL ? magic->variant
               : row->title);
      return true;
    }
  }
  return false;
}

/* A served row whose signature is in head although its backend's probe
 * refused the file (a version it does not know). */
static bool
match_unknown_version(const uint8_t *head, size_t len,
                      struct fde_format_match *m)
{
  for (size_t i = 0; i < fde_format_table_len; i++) {
    const struct fde_format_info *row = &fde_format_table[i];
    if (row->backend != NULL && find_magic(row, head, len) != NULL) {
      m->info = row;
      snprintf(m->what, sizeof m->what, "%s (unknown version)", row->title);
      return true;
    }
  }
  return false;
}

/* The backend of the first served row whose signature is at the end of
 * fd, or raw's. */
static const struct fde_format *
match_served_tail(int fd)
{
  for (size_t i = 0; i < fde_format_table_len; i++) {
    const struct fde_format_info *row = &fde_format_table[i];
    if (row->backend != NULL && row->tail_magic != NULL
        && row->tail_magic(fd))
      return row->backend;
  }
  return &fde_format_raw;
}

struct fde_format_match
fde_format_identify(const uint8_t *head, size_t len, int fd)
{
  struct fde_format_match m = { 0 };

  if (match_refused(head, len, fd, &m))
    return m;
  m.format = fde_format_probe(head, len);
  if (m.format == &fde_format_raw && fd >= 0)
    m.format = match_served_tail(fd);
  if (m.format == &fde_format_raw && match_unknown_version(head, len, &m)) {
    m.format = NULL;
    return m;
  }
  for (size_t i = 0; i < fde_format_table_len; i++)
    if (fde_format_table[i].backend == m.format)
      m.info = &fde_format_table[i];
  snprintf(m.what, sizeof m.what, "%s", m.info->title);
  return m;
}

bool
fde_format_head_is_image(const uint8_t *head, size_t len)
{
  return fde_format_identify(head, len, -1).format != &fde_format_raw;
}
