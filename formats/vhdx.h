/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: what formats/vhdx.c and formats/vhdx-log.c share
 * (internal to the VHDX backend).
 *
 * [MS-VHDX] "Virtual Hard Disk v2 (VHDX) File Format" and QEMU's
 * block/vhdx.h, vhdx-log.c; the reference is ../shared/reference/
 * formats.md, section 4.  Every structure is little-endian; GUIDs are
 * kept as the 16 bytes the file stores. */
#ifndef FDE_VHDX_H
#define FDE_VHDX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define VHDX_MiB          (1ull << 20)
#define VHDX_LOG_SECTOR   4096u         /* the log's unit ("Log" section) */

/* CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of
 * every VHDX structure: initial value and final XOR 0xffffffff.  With
 * field < len, the 4 bytes at field are counted as zeros (the checksum's
 * own place, as the specification computes it). */
uint32_t fde_vhdx_crc32c(const uint8_t *buf, size_t len, size_t field);

/* The log replayed in memory: the writes of the active sequence, in the
 * order they are applied (a later one wins where they overlap).  Every
 * range lies inside the image file and is 4 KiB aligned. */
struct vhdx_write {
  uint64_t off, len;            /* bytes of the file */
  uint8_t *data;                /* len bytes (malloc'd), or NULL: zeros */
};

struct vhdx_overlay {
  struct vhdx_write *w;
  size_t n;
  uint64_t lo, hi;              /* smallest start, largest end (n > 0) */
  uint64_t entries;             /* log entries replayed */
  uint64_t head_seq;            /* the active sequence's head */
};

/* What formats/vhdx-log.c needs from the header (section "Header"). */
struct vhdx_log_place {
  const char *path;             /* for messages */
  int fd;
  uint64_t file_size;           /* the file as opened; no write past it */
  uint64_t offset;              /* LogOffset */
  uint32_t length;              /* LogLength */
  const uint8_t *guid;          /* LogGuid (16 bytes) */
};

/* Find the active sequence of the log at place ("Log Replay": the
 * sequence of consecutive entries with the highest head sequence number
 * whose head's Tail is one of its entries), check every entry of it
 * (CRC-32C, sequence numbers of the entry, its descriptors and data
 * sectors, 4 KiB alignment, every write inside the file and outside the
 * log, FlushedFileOffset and LastFileOffset not past the file) and store
 * its writes in *ov (zeroed first; empty when no entry is valid: nothing
 * to replay).  Never writes the file.  0, or -errno with one line
 * logged: -EINVAL for a log the active sequence of which is unusable
 * (writes outside the file), -ENOTSUP for a log larger than the
 * program reads, or a read's error; -ENOMEM with nothing logged (the
 * caller says it). */
int fde_vhdx_log_replay(const struct vhdx_log_place *place,
                        struct vhdx_overlay *ov);

/* Free the overlay's writes (ov itself is the caller's). */
void fde_vhdx_overlay_free(struct vhdx_overlay *ov);

/* Read len bytes of the file at off as the replayed log leaves them:
 * the file's bytes (zeros past its end), then every overlapping write of
 * ov in order.  0 or -errno. */
int fde_vhdx_read(int fd, const struct vhdx_overlay *ov, void *buf,
                  size_t len, uint64_t off);

/* Does any write of ov touch [off, off + len)? */
bool fde_vhdx_overlaid(const struct vhdx_overlay *ov, uint64_t off,
                       uint64_t len);

#endif /* FDE_VHDX_H */
