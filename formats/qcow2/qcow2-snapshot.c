/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: qcow2 backend — the internal snapshot table, and
 * exporting one snapshot (read-only) instead of the active layer.
 *
 * The table is parsed entry by entry with every length bounded before it
 * is used: at most 65536 entries (checked with the header), 1 KiB of extra
 * data each, 64 MiB in all, every byte inside the file. */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "format.h"
#include "qcow2.h"

/* Check that len bytes at pos stay inside the file and inside the
 * table's 64 MiB limit from start. */
static int
check_entry_bounds(struct qcow2_disk *q, uint32_t index, uint64_t start,
                   uint64_t pos, uint64_t len)
{
  if (pos - start > QCOW2_MAX_SNAPSHOT_TABLE
      || len > QCOW2_MAX_SNAPSHOT_TABLE - (pos - start)) {
    fde_error("%s: snapshot table is larger than %u bytes", q->disk.path,
              QCOW2_MAX_SNAPSHOT_TABLE);
    return -EINVAL;
  }
  if (pos > q->file_size || len > q->file_size - pos) {
    fde_error("%s: snapshot table entry %" PRIu32 " at %#" PRIx64 " is "
              "beyond the end of the file", q->disk.path, index, pos);
    return -EINVAL;
  }
  return 0;
}

/* Fill s from the entry's fixed part and its variable part var (extra
 * data, id, name). */
static int
decode_entry(struct qcow2_disk *q, const struct qcow2_snapshot_header *sh,
             const uint8_t *var, struct qcow2_snapshot *s)
{
  uint32_t extra = be32toh(sh->extra_data_size);
  uint16_t id_len = be16toh(sh->id_str_size);
  uint16_t name_len = be16toh(sh->name_size);
  struct qcow2_snapshot_extra ex = { 0 };

  memcpy(&ex, var, extra < sizeof ex ? extra : sizeof ex);
  s->l1_table_offset = be64toh(sh->l1_table_offset);
  s->l1_size = be32toh(sh->l1_size);
  s->date_sec = be32toh(sh->date_sec);
  s->vm_state_size = extra >= 8 ? be64toh(ex.vm_state_size_large)
    : be32toh(sh->vm_state_size);
  s->disk_size = extra >= 16 ? be64toh(ex.disk_size) : q->header_size;
  s->id = strndup((const char *) var + extra, id_len);
  s->name = strndup((const char *) var + extra + id_len, name_len);
  return s->id == NULL || s->name == NULL ? -ENOMEM : 0;
}

/* Read entry index at *pos and advance *pos past it (8-byte aligned). */
static int
read_entry(struct qcow2_disk *q, uint32_t index, uint64_t start,
           uint64_t *pos, struct qcow2_snapshot *s)
{
  struct qcow2_snapshot_header sh;
  uint64_t var_len;
  uint8_t *var;
  int r;

  if ((r = check_entry_bounds(q, index, start, *pos, sizeof sh)) < 0)
    return r;
  if ((r = fde_pread_full(q->fd, &sh, sizeof sh, *pos)) < 0)
    goto io_error;
  if (be32toh(sh.extra_data_size) > QCOW2_MAX_SNAPSHOT_EXTRA) {
    fde_error("%s: snapshot table entry %" PRIu32 " has too much extra data "
              "(%" PRIu32 " bytes)", q->disk.path, index,
              be32toh(sh.extra_data_size));
    return -EINVAL;
  }
  var_len = (uint64_t) be32toh(sh.extra_data_size) + be16toh(sh.id_str_size)
    + be16toh(sh.name_size);
  if ((r = check_entry_bounds(q, index, start, *pos + sizeof sh, var_len)) < 0)
    return r;
  if ((var = malloc(var_len + 1)) == NULL)
    return -ENOMEM;
  r = fde_pread_full(q->fd, var, var_len, *pos + sizeof sh);
  if (r == 0)
    r = decode_entry(q, &sh, var, s);
  free(var);
  if (r == -ENOMEM)
    return r;
  if (r < 0)
    goto io_error;
  *pos = (*pos + sizeof sh + var_len + 7) & ~(uint64_t) 7;
  return 0;

io_error:
  fde_error("%s: reading snapshot table entry %" PRIu32 ": %s", q->disk.path,
            index, strerror(-r));
  return r;
}

/* Parse the snapshot table of count entries at offset (validated by the
 * header checks: aligned, count <= 65536). */
int
qcow2_read_snapshots(struct qcow2_disk *q, uint64_t offset, uint32_t count)
{
  uint64_t pos = offset;

  if (count == 0)
    return 0;
  q->snapshots = calloc(count, sizeof *q->snapshots);
  if (q->snapshots == NULL)
    return -ENOMEM;
  for (uint32_t i = 0; i < count; i++) {
    int r = read_entry(q, i, offset, &pos, &q->snapshots[i]);
    q->nb_snapshots = i + 1;    /* so that a failure frees its strings */
    if (r < 0)
      return r;
  }
  q->snapshots_offset = offset;
  q->snapshots_size = pos - offset;
  return 0;
}

void
qcow2_free_snapshots(struct qcow2_disk *q)
{
  for (uint32_t i = 0; i < q->nb_snapshots; i++) {
    free(q->snapshots[i].id);
    free(q->snapshots[i].name);
  }
  free(q->snapshots);
  q->snapshots = NULL;
  q->nb_snapshots = 0;
}

/* The snapshot with this id, else the first with this name (QEMU's
 * order), or NULL. */
const struct qcow2_snapshot *
qcow2_find_snapshot(const struct qcow2_disk *q, const char *id_or_name)
{
  for (uint32_t i = 0; i < q->nb_snapshots; i++)
    if (strcmp(q->snapshots[i].id, id_or_name) == 0)
      return &q->snapshots[i];
  for (uint32_t i = 0; i < q->nb_snapshots; i++)
    if (strcmp(q->snapshots[i].name, id_or_name) == 0)
      return &q->snapshots[i];
  return NULL;
}

/* Export the snapshot id_or_name: its L1 table and its disk size. */
int
qcow2_select_snapshot(struct qcow2_disk *q, const char *id_or_name)
{
  const struct qcow2_snapshot *s = qcow2_find_snapshot(q, id_or_name);
  int r;

  if (s == NULL) {
    fde_error("%s: no snapshot with the id or name '%s'", q->disk.path,
              id_or_name);
    return -ENOENT;
  }
  if (s->disk_size > INT64_MAX) {
    fde_error("%s: snapshot '%s' has an invalid disk size %" PRIu64,
              q->disk.path, id_or_name, s->disk_size);
    return -EINVAL;
  }
  r = qcow2_load_l1(q, s->l1_table_offset, s->l1_size, s->disk_size,
                    "snapshot L1 table");
  if (r < 0)
    return r;
  q->disk.size = s->disk_size & ~(uint64_t) 511;
  q->exported = s;
  return 0;
}
