/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: the VHDX log, replayed in memory (formats/vhdx.h).
 *
 * [MS-VHDX] section "Log" and QEMU's block/vhdx-log.c (read to learn;
 * the reference is ../shared/reference/formats.md, 4.3).  The log is a
 * circular buffer of 4 KiB sectors holding entries: a 64-byte header
 * ("loge"), descriptors of 32 bytes (a "zero" range or a "desc" data
 * sector), then one 4 KiB data sector ("data") per data descriptor.
 * QEMU replays a log only when it opens an image read-write, and refuses
 * a read-only open of an image whose log needs replaying; we replay it
 * in memory: the writes of the active sequence become an overlay that
 * every read of the image goes through (fde_vhdx_read), and the file is
 * never written.
 *
 * Finding the active sequence ("Log Replay"): the log is scanned from its
 * start, an entry or a sector at a time as QEMU does (an entry whose
 * header passes but whose body fails is skipped whole); each fully valid
 * entry is kept.  A sequence is a run of valid entries, each starting
 * where the previous one ends (modulo the log's length) with a sequence
 * number one higher.  The active one is the sequence whose head (last
 * entry) has the highest sequence number among those whose head's Tail
 * names an entry of the same run at or before it; it is replayed from
 * that tail to the head.  QEMU counts a run the same way but checks the
 * tail less strictly (formats.md 4.3 step 3).  Before that, the log is
 * walked once more exactly as QEMU's vhdx_log_search walks it, and the
 * image is refused, as QEMU refuses it (EINVAL, also for qemu-img check
 * -r all), when an entry it reaches has a header that passes and a bad
 * descriptor (qemu_log_check); a bad CRC or data sector only ends a run.
 * Only the active sequence's writes are bounds-checked: one outside the
 * file (or into the log) refuses the image. */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "format.h"
#include "vhdx.h"

#define ENTRY_HEADER      64u
#define DESCRIPTOR        32u
/* The file type identifier's place: the first 64 KiB ([MS-VHDX] 2.1). */
#define VHDX_FILE_IDENTIFIER (64u << 10)
/* Ours: a log over 64 MiB (QEMU and Hyper-V make 1 MiB logs) is not
 * read; it is held in memory while it is scanned. */
#define MAX_LOG           (64u << 20)

static const uint32_t crc32c_table[256] = {
  0x00000000, 0xf26b8303, 0xe13b70f7, 0x1350f3f4, 0xc79a971f, 0x35f1141c,
  0x26a1e7e8, 0xd4ca64eb, 0x8ad958cf, 0x78b2dbcc, 0x6be22838, 0x9989ab3b,
  0x4d43cfd0, 0xbf284cd3, 0xac78bf27, 0x5e133c24, 0x105ec76f, 0xe235446c,
  0xf165b798, 0x030e349b, 0xd7c45070, 0x25afd373, 0x36ff2087, 0xc494a384,
  0x9a879fa0, 0x68ec1ca3, 0x7bbcef57, 0x89d76c54, 0x5d1d08bf, 0xaf768bbc,
  0xbc267848, 0x4e4dfb4b, 0x20bd8ede, 0xd2d60ddd, 0xc186fe29, 0x33ed7d2a,
  0xe72719c1, 0x154c9ac2, 0x061c6936, 0xf477ea35, 0xaa64d611, 0x580f5512,
  0x4b5fa6e6, 0xb93425e5, 0x6dfe410e, 0x9f95c20d, 0x8cc531f9, 0x7eaeb2fa,
  0x30e349b1, 0xc288cab2, 0xd1d83946, 0x23b3ba45, 0xf779deae, 0x05125dad,
  0x1642ae59, 0xe4292d5a, 0xba3a117e, 0x4851927d, 0x5b016189, 0xa96ae28a,
  0x7da08661, 0x8fcb0562, 0x9c9bf696, 0x6ef07595, 0x417b1dbc, 0xb3109ebf,
  0xa0406d4b, 0x522bee48, 0x86e18aa3, 0x748a09a0, 0x67dafa54, 0x95b17957,
  0xcba24573, 0x39c9c670, 0x2a993584, 0xd8f2b687, 0x0c38d26c, 0xfe53516f,
  0xed03a29b, 0x1f682198, 0x5125dad3, 0xa34e59d0, 0xb01eaa24, 0x42752927,
  0x96bf4dcc, 0x64d4cecf, 0x77843d3b, 0x85efbe38, 0xdbfc821c, 0x2997011f,
  0x3ac7f2eb, 0xc8ac71e8, 0x1c661503, 0xee0d9600, 0xfd5d65f4, 0x0f36e6f7,
  0x61c69362, 0x93ad1061, 0x80fde395, 0x72966096, 0xa65c047d, 0x5437877e,
  0x4767748a, 0xb50cf789, 0xeb1fcbad, 0x197448ae, 0x0a24bb5a, 0xf84f3859,
  0x2c855cb2, 0xdeeedfb1, 0xcdbe2c45, 0x3fd5af46, 0x7198540d, 0x83f3d70e,
  0x90a324fa, 0x62c8a7f9, 0xb602c312, 0x44694011, 0x5739b3e5, 0xa55230e6,
  0xfb410cc2, 0x092a8fc1, 0x1a7a7c35, 0xe811ff36, 0x3cdb9bdd, 0xceb018de,
  0xdde0eb2a, 0x2f8b6829, 0x82f63b78, 0x709db87b, 0x63cd4b8f, 0x91a6c88c,
  0x456cac67, 0xb7072f64, 0xa457dc90, 0x563c5f93, 0x082f63b7, 0xfa44e0b4,
  0xe9141340, 0x1b7f9043, 0xcfb5f4a8, 0x3dde77ab, 0x2e8e845f, 0xdce5075c,
  0x92a8fc17, 0x60c37f14, 0x73938ce0, 0x81f80fe3, 0x55326b08, 0xa759e80b,
  0xb4091bff, 0x466298fc, 0x1871a4d8, 0xea1a27db, 0xf94ad42f, 0x0b21572c,
  0xdfeb33c7, 0x2d80b0c4, 0x3ed04330, 0xccbbc033, 0xa24bb5a6, 0x502036a5,
  0x4370c551, 0xb11b4652, 0x65d122b9, 0x97baa1ba, 0x84ea524e, 0x7681d14d,
  0x2892ed69, 0xdaf96e6a, 0xc9a99d9e, 0x3bc21e9d, 0xef087a76, 0x1d63f975,
  0x0e330a81, 0xfc588982, 0xb21572c9, 0x407ef1ca, 0x532e023e, 0xa145813d,
  0x758fe5d6, 0x87e466d5, 0x94b49521, 0x66df1622, 0x38cc2a06, 0xcaa7a905,
  0xd9f75af1, 0x2b9cd9f2, 0xff56bd19, 0x0d3d3e1a, 0x1e6dcdee, 0xec064eed,
  0xc38d26c4, 0x31e6a5c7, 0x22b65633, 0xd0ddd530, 0x0417b1db, 0xf67c32d8,
  0xe52cc12c, 0x1747422f, 0x49547e0b, 0xbb3ffd08, 0xa86f0efc, 0x5a048dff,
  0x8ecee914, 0x7ca56a17, 0x6ff599e3, 0x9d9e1ae0, 0xd3d3e1ab, 0x21b862a8,
  0x32e8915c, 0xc083125f, 0x144976b4, 0xe622f5b7, 0xf5720643, 0x07198540,
  0x590ab964, 0xab613a67, 0xb831c993, 0x4a5a4a90, 0x9e902e7b, 0x6cfbad78,
  0x7fab5e8c, 0x8dc0dd8f, 0xe330a81a, 0x115b2b19, 0x020bd8ed, 0xf0605bee,
  0x24aa3f05, 0xd6c1bc06, 0xc5914ff2, 0x37faccf1, 0x69e9f0d5, 0x9b8273d6,
  0x88d28022, 0x7ab90321, 0xae7367ca, 0x5c18e4c9, 0x4f48173d, 0xbd23943e,
  0xf36e6f75, 0x0105ec76, 0x12551f82, 0xe03e9c81, 0x34f4f86a, 0xc69f7b69,
  0xd5cf889d, 0x27a40b9e, 0x79b737ba, 0x8bdcb4b9, 0x988c474d, 0x6ae7c44e,
  0xbe2da0a5, 0x4c4623a6, 0x5f16d052, 0xad7d5351,
};

#define CRC_STEP(crc, b) ((crc) = crc32c_table[((crc) ^ (b)) & 0xff] \
                                  ^ ((crc) >> 8))

/* Continue crc over len bytes of buf (eight at a step: the 64 KiB region
 * tables are checked at every open). */
static uint32_t
crc32c_update(uint32_t crc, const uint8_t *buf, size_t len)
{
  const uint8_t *end8 = buf + len / 8 * 8, *end = buf + len;

  for (; buf < end8; buf += 8) {
    CRC_STEP(crc, buf[0]);
    CRC_STEP(crc, buf[1]);
    CRC_STEP(crc, buf[2]);
    CRC_STEP(crc, buf[3]);
    CRC_STEP(crc, buf[4]);
    CRC_STEP(crc, buf[5]);
    CRC_STEP(crc, buf[6]);
    CRC_STEP(crc, buf[7]);
  }
  for (; buf < end; buf++)
    CRC_STEP(crc, *buf);
  return crc;
}

uint32_t
fde_vhdx_crc32c(const uint8_t *buf, size_t len, size_t field)
{
  static const uint8_t zeros[4];
  uint32_t crc;

  if (field >= len)
    return crc32c_update(0xffffffffu, buf, len) ^ 0xffffffffu;
  crc = crc32c_update(0xffffffffu, buf, field);
  crc = crc32c_update(crc, zeros, len - field < 4 ? len - field : 4);
  if (len - field > 4)
    crc = crc32c_update(crc, buf + field + 4, len - field - 4);
  return crc ^ 0xffffffffu;
}

static uint32_t
le32(const uint8_t *p)
{
  return (uint32_t) p[0] | (uint32_t) p[1] << 8 | (uint32_t) p[2] << 16
    | (uint32_t) p[3] << 24;
}

static uint64_t
le64(const uint8_t *p)
{
  return (uint64_t) le32(p) | (uint64_t) le32(p + 4) << 32;
}

/* A fully valid entry found by the scan. */
struct entry {
  uint32_t pos, len;            /* bytes from the log's start */
  uint32_t tail;                /* its Tail field */
  uint64_t seq;
  size_t next;                  /* index of the entry that continues its
                                 * run, or SIZE_MAX */
  size_t run, at;               /* its run, and its place in that run */
};

/* The log read into memory (place->length bytes). */
struct scan {
  const struct vhdx_log_place *place;
  uint8_t *log;
  struct entry *e;
  size_t n;
};

/* Sectors of an entry holding its header and count descriptors. */
static uint64_t
descriptor_sectors(uint32_t count)
{
  return (ENTRY_HEADER + (uint64_t) count * DESCRIPTOR + VHDX_LOG_SECTOR - 1)
    / VHDX_LOG_SECTOR;
}

/* The header test (QEMU's vhdx_log_hdr_is_valid, and the Tail a position
 * in the log): "loge", a length in whole sectors no longer than the log,
 * a nonzero sequence number, the header's LogGuid, room for the
 * descriptors. */
static bool
header_passes(const struct scan *s, const uint8_t *h)
{
  uint32_t len = le32(h + 8), tail = le32(h + 12);

  return memcmp(h, "loge", 4) == 0 && len > 0 && len % VHDX_LOG_SECTOR == 0
    && len <= s->place->length && tail % VHDX_LOG_SECTOR == 0
    && tail < s->place->length && le64(h + 16) != 0
    && memcmp(h + 32, s->place->guid, 16) == 0
    && descriptor_sectors(le32(h + 24)) <= len / VHDX_LOG_SECTOR;
}

/* The rest of an entry whose header passed: every descriptor ("zero" or
 * "desc", the entry's sequence number, a 4 KiB-aligned file offset, a
 * zero length in whole sectors), one data sector per data descriptor
 * inside the entry ("data", the sequence number split high and low),
 * and the CRC-32C over the entry. */
static bool
body_valid(const uint8_t *h)
{
  uint32_t len = le32(h + 8), count = le32(h + 24);
  uint64_t seq = le64(h + 16), data = descriptor_sectors(count);

  for (uint32_t i = 0; i < count; i++) {
    const uint8_t *d = h + ENTRY_HEADER + (size_t) i * DESCRIPTOR;
    if (le64(d + 24) != seq || le64(d + 16) % VHDX_LOG_SECTOR != 0)
      return false;
    if (memcmp(d, "zero", 4) == 0) {
      if (le64(d + 8) % VHDX_LOG_SECTOR != 0)
        return false;
      continue;
    }
    if (memcmp(d, "desc", 4) != 0 || data >= len / VHDX_LOG_SECTOR)
      return false;
    const uint8_t *sector = h + data++ * VHDX_LOG_SECTOR;
    if (memcmp(sector, "data", 4) != 0 || le32(sector + 4) != seq >> 32
        || le32(sector + VHDX_LOG_SECTOR - 4) != (uint32_t) seq)
      return false;
  }
  return fde_vhdx_crc32c(h, len, 4) == le32(h + 4);
}

/* ---- QEMU's walk, for the entries it refuses ------------------------- */

/* QEMU's vhdx_log_hdr_is_valid: laxer than header_passes (no Tail test;
 * descriptors need only count x 32 <= entry length). */
static bool
qemu_header_passes(const struct scan *s, const uint8_t *h)
{
  uint32_t len = le32(h + 8);

  return memcmp(h, "loge", 4) == 0 && len <= s->place->length
    && len % VHDX_LOG_SECTOR == 0 && le64(h + 16) != 0
    && memcmp(h + 32, s->place->guid, 16) == 0
    && (uint64_t) le32(h + 24) * DESCRIPTOR <= len;
}

/* What QEMU's vhdx_log_desc_is_valid finds wrong with descriptor d of an
 * entry whose sequence number is seq, or NULL. */
static const char *
qemu_descriptor_problem(const uint8_t *d, uint64_t seq)
{
  if (le64(d + 24) != seq)
    return "its sequence number is not the entry's";
  if (le64(d + 16) % VHDX_LOG_SECTOR != 0)
    return "its file offset is not a multiple of 4 KiB";
  if (memcmp(d, "zero", 4) == 0)
    return le64(d + 8) % VHDX_LOG_SECTOR != 0
      ? "its zero length is not a multiple of 4 KiB" : NULL;
  return memcmp(d, "desc", 4) == 0 ? NULL
    : "its signature is neither \"zero\" nor \"desc\"";
}

/* The CRC-32C QEMU's vhdx_validate_log_entry computes over sectors log
 * sectors from pos (wrapping round the log's end), checksum field
 * zeroed. */
static uint32_t
qemu_entry_crc(const struct scan *s, uint32_t pos, uint64_t sectors)
{
  static const uint8_t zeros[4];
  uint32_t length = s->place->length, crc = 0xffffffffu;

  for (uint64_t k = 0; k < sectors; k++) {
    const uint8_t *sec = s->log + (pos + k * VHDX_LOG_SECTOR) % length;
    if (k == 0) {
      crc = crc32c_update(crc, sec, 4);
      crc = crc32c_update(crc, zeros, 4);
      crc = crc32c_update(crc, sec + 8, VHDX_LOG_SECTOR - 8);
    } else
      crc = crc32c_update(crc, sec, VHDX_LOG_SECTOR);
  }
  return crc ^ 0xffffffffu;
}

/* One call of QEMU's vhdx_validate_log_entry at *pos: an entry following
 * sequence number want (0: any) moves *pos past it, with *valid when its
 * CRC matches (*seq its number); anything else moves *pos one sector.
 * -EINVAL, logged, for a bad descriptor: QEMU fails the open there. */
static int
qemu_step(const struct scan *s, uint32_t *pos, uint64_t want, bool *valid,
          uint64_t *seq)
{
  const uint8_t *h = s->log + *pos;
  uint32_t length = s->place->length, count = le32(h + 24);
  uint64_t sectors, desc_sectors = ((uint64_t) count + 2 + 127) / 128;
  const char *problem;

  *valid = false;
  if (!qemu_header_passes(s, h) || (want > 0 && le64(h + 16) != want + 1)) {
    *pos = (*pos + VHDX_LOG_SECTOR) % length;
    return 0;
  }
  for (uint32_t i = 0; i < count; i++) {
    const uint8_t *d = s->log + (*pos + ENTRY_HEADER
                                 + (uint64_t) i * DESCRIPTOR) % length;
    if ((problem = qemu_descriptor_problem(d, le64(h + 16))) != NULL) {
      fde_error("%s: VHDX log entry at log offset %#" PRIx32 ": descriptor "
                "%" PRIu32 " is invalid (%s); QEMU refuses such a log",
                s->place->path, *pos, i, problem);
      return -EINVAL;
    }
  }
  sectors = le32(h + 8) / VHDX_LOG_SECTOR;
  if (sectors < desc_sectors)
    sectors = desc_sectors;
  *valid = qemu_entry_crc(s, *pos, sectors) == le32(h + 4);
  *seq = le64(h + 16);
  *pos = (uint32_t) ((*pos + sectors * VHDX_LOG_SECTOR) % length);
  return 0;
}

/* Walk the log as QEMU's vhdx_log_search does (from offset 0; a run is
 * followed while entries are valid, the second compared against 0; the
 * walk ends when the position wraps), only to refuse what QEMU refuses:
 * 0 or -EINVAL (logged).  Where QEMU would walk forever (an invalid entry
 * as long as the log brings it back to where it started) we stop.  The
 * descriptors checked are the entry's own: QEMU 7.2 reads every
 * descriptor sector of an entry into the same 4 KiB of its buffer
 * (vhdx_log_read_sectors does not advance it), so beyond 126 descriptors
 * it checks memory it never wrote and refuses; we replay such an entry. */
static int
qemu_log_check(const struct scan *s)
{
  uint32_t pos = 0, tail;
  uint64_t seq = 0, want;
  bool valid;
  int r;

  do {
    tail = pos;
    if ((r = qemu_step(s, &pos, 0, &valid, &seq)) < 0)
      return r;
    for (want = 0; valid; want = seq)
      if ((r = qemu_step(s, &pos, want, &valid, &seq)) < 0)
        return r;
  } while (pos > tail);
  return 0;
}

/* ---- Our scan ---------------------------------------------------------- */

/* The entry of len bytes at pos, contiguous: in the log, or for one that
 * wraps around the log's end, a copy put in *copy (malloc'd, the caller
 * frees it).  NULL: out of memory. */
static const uint8_t *
entry_bytes(const struct scan *s, uint32_t pos, uint32_t len, uint8_t **copy)
{
  uint32_t length = s->place->length, first = length - pos;

  *copy = NULL;
  if (len <= first)
    return s->log + pos;
  if ((*copy = malloc(len)) == NULL)
    return NULL;
  memcpy(*copy, s->log + pos, first);
  memcpy(*copy + first, s->log, len - first);
  return *copy;
}

/* Scan the log (see the top of the file), keeping the valid entries in
 * s->e, ordered by position.  0 or -ENOMEM. */
static int
scan_entries(struct scan *s)
{
  uint32_t length = s->place->length;
  size_t cap = 0;

  for (uint64_t pos = 0; pos < length;) {
    const uint8_t *h = s->log + pos, *whole;
    uint8_t *copy;
    bool valid;
    if (!header_passes(s, h)) {         /* a sector never wraps */
      pos += VHDX_LOG_SECTOR;
      continue;
    }
    if ((whole = entry_bytes(s, (uint32_t) pos, le32(h + 8), &copy)) == NULL)
      return -ENOMEM;
    valid = body_valid(whole);
    free(copy);
    if (valid) {
      if (s->n == cap) {
        struct entry *e;
        cap = cap ? 2 * cap : 16;
        if ((e = realloc(s->e, cap * sizeof *e)) == NULL)
          return -ENOMEM;
        s->e = e;
      }
      s->e[s->n++] = (struct entry) {
        .pos = (uint32_t) pos, .len = le32(h + 8), .tail = le32(h + 12),
        .seq = le64(h + 16), .next = SIZE_MAX, .run = SIZE_MAX,
      };
    }
    pos += le32(h + 8);
  }
  return 0;
}

/* The entry at position pos, or SIZE_MAX. */
static size_t
entry_at(const struct scan *s, uint64_t pos)
{
  size_t lo = 0, hi = s->n;

  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (s->e[mid].pos == pos)
      return mid;
    if (s->e[mid].pos < pos)
      lo = mid + 1;
    else
      hi = mid;
  }
  return SIZE_MAX;
}

/* Link the entries into runs and choose the active sequence: its tail
 * and head entries in *tail and *head (SIZE_MAX: no valid sequence).
 * 0 or -ENOMEM. */
static int
choose_sequence(struct scan *s, size_t *tail, size_t *head)
{
  size_t runs = 0;
  bool *continued = calloc(s->n ? s->n : 1, sizeof *continued);

  *tail = *head = SIZE_MAX;
  if (continued == NULL)
    return -ENOMEM;
  for (size_t i = 0; i < s->n; i++) {
    struct entry *e = &s->e[i];
    size_t j = entry_at(s, ((uint64_t) e->pos + e->len) % s->place->length);
    if (j != SIZE_MAX && j != i && e->seq != UINT64_MAX
        && s->e[j].seq == e->seq + 1) {
      e->next = j;
      continued[j] = true;
    }
  }
  /* sequence numbers only grow along a run, so runs have no cycles */
  for (size_t i = 0; i < s->n; i++) {
    if (continued[i] || s->e[i].run != SIZE_MAX)
      continue;
    size_t at = 0;
    for (size_t j = i; j != SIZE_MAX && s->e[j].run == SIZE_MAX;
         j = s->e[j].next) {
      s->e[j].run = runs;
      s->e[j].at = at++;
    }
    runs++;
  }
  for (size_t i = 0; i < s->n; i++) {
    size_t t = entry_at(s, s->e[i].tail);
    if (t == SIZE_MAX || s->e[t].run != s->e[i].run
        || s->e[t].at > s->e[i].at)
      continue;
    if (*head == SIZE_MAX || s->e[i].seq > s->e[*head].seq) {
      *head = i;
      *tail = t;
    }
  }
  free(continued);
  return 0;
}

/* Append a write of len bytes at off (data: len bytes or NULL for zeros,
 * owned by ov from here on, also on failure).  Refuses a write outside
 * the file or into the log.  0, -EINVAL or -ENOMEM. */
static int
add_write(const struct vhdx_log_place *p, struct vhdx_overlay *ov,
          uint64_t off, uint64_t len, uint8_t *data, size_t *cap)
{
  uint64_t log_end = p->offset + p->length;

  if (off > p->file_size || len > p->file_size - off
      || (off < log_end && off + len > p->offset)
      || (len > 0 && off < VHDX_FILE_IDENTIFIER)) {
    /* Over the file identifier, QEMU's replay leaves a file that no
     * longer opens as a VHDX: there is no view to show after it. */
    fde_error("%s: VHDX log would write %" PRIu64 " bytes at offset %#"
              PRIx64 ", %s: refusing to replay it", p->path, len, off,
              off > p->file_size || len > p->file_size - off
              ? "outside the file" : off < VHDX_FILE_IDENTIFIER
              ? "over the file identifier" : "into the log itself");
    free(data);
    return -EINVAL;
  }
  if (len == 0) {
    free(data);
    return 0;
  }
  if (ov->n == *cap) {
    struct vhdx_write *w;
    *cap = *cap ? 2 * *cap : 64;
    if ((w = realloc(ov->w, *cap * sizeof *w)) == NULL) {
      free(data);
      return -ENOMEM;
    }
    ov->w = w;
  }
  ov->w[ov->n++] = (struct vhdx_write) { .off = off, .len = len,
                                         .data = data };
  if (ov->n == 1 || off < ov->lo)
    ov->lo = off;
  if (ov->n == 1 || off + len > ov->hi)
    ov->hi = off + len;
  return 0;
}

/* The writes of the entry whose header is h, in descriptor order. */
static int
replay_entry(const struct vhdx_log_place *p, struct vhdx_overlay *ov,
             const uint8_t *h, size_t *cap)
{
  uint32_t count = le32(h + 24);
  uint64_t data = descriptor_sectors(count);
  int r = 0;

  for (uint32_t i = 0; i < count && r == 0; i++) {
    const uint8_t *d = h + ENTRY_HEADER + (size_t) i * DESCRIPTOR;
    uint8_t *sector = NULL;
    if (memcmp(d, "desc", 4) == 0) {
      const uint8_t *src = h + data++ * VHDX_LOG_SECTOR;
      if ((sector = malloc(VHDX_LOG_SECTOR)) == NULL)
        return -ENOMEM;
      /* the real sector: LeadingBytes, the 4084 stored, TrailingBytes */
      memcpy(sector, d + 8, 8);
      memcpy(sector + 8, src + 8, VHDX_LOG_SECTOR - 12);
      memcpy(sector + VHDX_LOG_SECTOR - 4, d + 4, 4);
      r = add_write(p, ov, le64(d + 16), VHDX_LOG_SECTOR, sector, cap);
    } else
      r = add_write(p, ov, le64(d + 16), le64(d + 8), NULL, cap);
  }
  return r;
}

/* Replay the active sequence, tail to head, into ov. */
static int
replay(struct scan *s, struct vhdx_overlay *ov, size_t tail, size_t head)
{
  const struct vhdx_log_place *p = s->place;
  const uint8_t *h = s->log + s->e[head].pos;
  uint64_t flushed = le64(h + 48), last = le64(h + 56);
  size_t cap = 0;
  int r = 0;

  if (flushed > p->file_size) {
    fde_error("%s: VHDX log says the file was flushed at %" PRIu64 " bytes, "
              "it has %" PRIu64 " (truncated?): refusing to replay it",
              p->path, flushed, p->file_size);
    return -EINVAL;
  }
  if (last > p->file_size) {
    /* [MS-VHDX] lets a replay extend the file; QEMU does.  A view of a
     * file that is not written cannot show the bytes past its end. */
    fde_error("%s: VHDX log would extend the file to %" PRIu64 " bytes "
              "(it has %" PRIu64 "): refusing to replay it", p->path, last,
              p->file_size);
    return -EINVAL;
  }
  for (size_t i = tail; r == 0; i = s->e[i].next) {
    uint8_t *copy;
    const uint8_t *e = entry_bytes(s, s->e[i].pos, s->e[i].len, &copy);
    r = e == NULL ? -ENOMEM : replay_entry(p, ov, e, &cap);
    free(copy);
    ov->entries++;
    if (i == head)
      break;
  }
  ov->head_seq = s->e[head].seq;
  return r;
}

int
fde_vhdx_log_replay(const struct vhdx_log_place *p, struct vhdx_overlay *ov)
{
  struct scan s = { .place = p };
  size_t tail, head;
  int r;

  memset(ov, 0, sizeof *ov);
  if (p->length > MAX_LOG) {
    fde_error("%s: VHDX log of %" PRIu32 " bytes is larger than the %u MiB "
              "this program reads", p->path, p->length, MAX_LOG >> 20);
    return -ENOTSUP;
  }
  if ((s.log = malloc(p->length)) == NULL)
    return -ENOMEM;
  if ((r = fde_pread_full(p->fd, s.log, p->length, p->offset)) < 0) {
    fde_error("%s: read: %s", p->path, strerror(-r));
    goto out;
  }
  if ((r = qemu_log_check(&s)) < 0 || (r = scan_entries(&s)) < 0)
    goto out;
  if ((r = choose_sequence(&s, &tail, &head)) < 0)
    goto out;
  if (head != SIZE_MAX && (r = replay(&s, ov, tail, head)) < 0)
    fde_vhdx_overlay_free(ov);
out:
  free(s.e);
  free(s.log);
  return r;
}

void
fde_vhdx_overlay_free(struct vhdx_overlay *ov)
{
  for (size_t i = 0; i < ov->n; i++)
    free(ov->w[i].data);
  free(ov->w);
  memset(ov, 0, sizeof *ov);
}

bool
fde_vhdx_overlaid(const struct vhdx_overlay *ov, uint64_t off, uint64_t len)
{
  if (ov->n == 0 || len == 0 || off >= ov->hi || off + len <= ov->lo)
    return false;
  for (size_t i = 0; i < ov->n; i++)
    if (off < ov->w[i].off + ov->w[i].len && ov->w[i].off < off + len)
      return true;
  return false;
}

int
fde_vhdx_read(int fd, const struct vhdx_overlay *ov, void *buf, size_t len,
              uint64_t off)
{
  uint8_t *p = buf;
  int r = fde_pread_full(fd, buf, len, off);

  if (r < 0 || !fde_vhdx_overlaid(ov, off, len))
    return r;
  for (size_t i = 0; i < ov->n; i++) {
    const struct vhdx_write *w = &ov->w[i];
    uint64_t from = w->off > off ? w->off : off;
    uint64_t to = w->off + w->len < off + len ? w->off + w->len : off + len;
    if (from >= to)
      continue;
    if (w->data != NULL)
      memcpy(p + (from - off), w->data + (from - w->off), to - from);
    else
      memset(p + (from - off), 0, to - from);
  }
  return 0;
}
