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

#include <ctype.h>

#include <linux/fs.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

#include "format.h"

/* A signature of len bytes at off; variant (optional) is what messages
 * call a file carrying it. */
#define MAGIC(off, str) { off, sizeof str - 1, str, NULL }
#define MAGIC_AS(off, str, variant) { off, sizeof str - 1, str, variant }

static bool dmg_trailer(const uint8_t *tail, size_t len, uint64_t size);

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
  { .name = "vmdk", .title = "VMDK", .backend = &fde_format_vmdk,
    .magic = { MAGIC_AS(0, "KDMV", "VMDK (sparse extent)"),
               MAGIC_AS(0, "COWD", "VMDK (ESX sparse extent)"),
               MAGIC_AS(0, "# Disk DescriptorFile",
                        "VMDK (descriptor file)") },
    .description = "VMware VMDK: sparse, stream, flat, split, delta" },
  { .name = "vdi", .title = "VDI", .backend = &fde_format_vdi,
    .magic = { MAGIC(64, "\x7f\x10\xda\xbe") },
    .description = "VirtualBox virtual disk: dynamic, static" },
  { .name = "vpc", .title = "VHD", .backend = &fde_format_vpc,
    .magic = { MAGIC(0, "conectix") }, .tail_magic = fde_vpc_fixed_footer,
    .description = "Microsoft VHD: fixed, dynamic, differencing" },
  /* no magic: a plain tar is raw; the probe wants a first member *.ovf */
  { .name = "ova", .title = "OVA", .backend = &fde_format_ova,
    .description = "OVF appliance (tar): its disks, --disk=N" },
  { .name = "vhdx", .title = "VHDX", .backend = &fde_format_vhdx,
    .magic = { MAGIC(0, "vhdxfile") },
    .description = "Microsoft VHDX: fixed, dynamic, differencing" },
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
dmg_trailer(const uint8_t *tail, size_t len, uint64_t size)
{
  (void) size;
  return len == 512 && memcmp(tail, "koly", 4) == 0;
}

/* The last bytes of fd (FDE_TAIL_BYTES, fewer for a shorter file) into
 * tail, their number in *len and the file's size in *size, for the
 * tail_magic tests: 1; 0 when fd is neither a regular file nor a block
 * device (no tail signature then matches); -errno when the file cannot
 * be read (a signature there may not be overlooked: a fixed VHD's footer
 * would be shown as data). */
static int
read_tail(int fd, uint8_t *tail, size_t *len, uint64_t *size)
{
  struct stat st;
  int r;

  if (fstat(fd, &st) == -1)
    return -errno;
  if (S_ISREG(st.st_mode))
    *size = (uint64_t) st.st_size;
  else if (!S_ISBLK(st.st_mode))
    return 0;
  else if (ioctl(fd, BLKGETSIZE64, size) != 0)
    return -errno;
  *len = *size < FDE_TAIL_BYTES ? (size_t) *size : FDE_TAIL_BYTES;
  r = fde_pread_full(fd, tail, *len, *size - *len);
  return r < 0 ? r : 1;
}

/* Does row's tail_magic match the tail read (have: read_tail said yes)? */
static bool
match_tail(const struct fde_format_info *row, bool have, const uint8_t *tail,
           size_t len, uint64_t size)
{
  return have && row->tail_magic != NULL && row->tail_magic(tail, len, size);
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

const char *
fde_format_served_names(char *buf, size_t len)
{
  size_t n = 0, left = 0;

  for (size_t i = 0; i < fde_format_table_len; i++)
    left += fde_format_table[i].backend != NULL;
  buf[0] = '\0';
  for (size_t i = 0; i < fde_format_table_len && n < len; i++) {
    if (fde_format_table[i].backend == NULL)
      continue;
    left--;
    n += (size_t) snprintf(buf + n, len - n, "%s%s",
                           n == 0 ? "" : left == 0 ? " and " : ", ",
                           fde_format_table[i].name);
  }
  return buf;
}

const struct fde_format_info *
fde_format_info_by_name(const char *name)
{
  for (size_t i = 0; i < fde_format_table_len; i++)
    if (strcmp(fde_format_table[i].name, name) == 0)
      return &fde_format_table[i];
  return NULL;
}

const char *
fde_format_title(const struct fde_format *format)
{
  for (size_t i = 0; i < fde_format_table_len; i++)
    if (fde_format_table[i].backend == format)
      return fde_format_table[i].title;
  return format->name;
}

const char *
fde_article(const char *noun)
{
  /* acronyms said as a word, not letter by letter */
  static const char *const words[] = { "LUKS" };
  size_t len = strcspn(noun, " (");
  bool initialism = len >= 2 && isupper((unsigned char) noun[0])
                    && isupper((unsigned char) noun[1]);

  for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
    if (len == strlen(words[i]) && strncmp(noun, words[i], len) == 0)
      initialism = false;
  /* a letter whose name starts with a vowel sound: "an F" ("ef") */
  return strchr(initialism ? "AEFHILMNORSX" : "AEIOUaeiou", noun[0])
    != NULL && noun[0] != '\0' ? "an" : "a";
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

  if (len > FDE_PROBE_BYTES)
    len = FDE_PROBE_BYTES;
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
match_refused(const uint8_t *head, size_t len, const uint8_t *tail,
              size_t tail_len, uint64_t size, bool have_tail,
              struct fde_format_match *m)
{
  for (size_t i = 0; i < fde_format_table_len; i++) {
    const struct fde_format_info *row = &fde_format_table[i];
    const struct fde_magic *magic;
    if (row->backend != NULL)
      continue;
    if ((magic = find_magic(row, head, len)) != NULL
        || match_tail(row, have_tail, tail, tail_len, size)) {
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

/* The backend of the first served row whose signature is in the tail,
 * or raw's. */
static const struct fde_format *
match_served_tail(const uint8_t *tail, size_t len, uint64_t size,
                  bool have_tail)
{
  for (size_t i = 0; i < fde_format_table_len; i++) {
    const struct fde_format_info *row = &fde_format_table[i];
    if (row->backend != NULL && match_tail(row, have_tail, tail, len, size))
      return row->backend;
  }
  return &fde_format_raw;
}

struct fde_format_match
fde_format_identify(const uint8_t *head, size_t len, int fd)
{
  struct fde_format_match m = { 0 };
  uint8_t tail[FDE_TAIL_BYTES];
  size_t tail_len = 0;
  uint64_t size = 0;
  int r = fd >= 0 ? read_tail(fd, tail, &tail_len, &size) : 0;
  bool have_tail = r == 1;

  if (r < 0) {
    m.error = r;
    snprintf(m.what, sizeof m.what, "unreadable file");
    return m;
  }
  if (match_refused(head, len, tail, tail_len, size, have_tail, &m))
    return m;
  m.format = fde_format_probe(head, len);
  if (m.format == &fde_format_raw)
    m.format = match_served_tail(tail, tail_len, size, have_tail);
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

bool
fde_format_tail_is_image(const uint8_t *tail, size_t len, uint64_t size)
{
  for (size_t i = 0; i < fde_format_table_len; i++)
    if (match_tail(&fde_format_table[i], true, tail, len, size))
      return true;
  return false;
}
