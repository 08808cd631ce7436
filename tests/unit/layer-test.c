/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: the layers of formats/layer.h over a disk in memory:
 * the window's arithmetic (checks at the edges of 64 bits, shifting,
 * clipping of runs), libblkid's answer turned into a window (every reason
 * an entry is refused, overlaps, the 256 cap), capabilities
 * passed through or left absent, and the sector-0 guard. */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "layer.h"

#include "check.h"

/* ---- A disk in memory: data in the first half is allocated ------------- */

struct mem_disk {
  struct fde_disk disk;
  uint8_t *bytes;
  uint64_t last_off, last_len;  /* the last range asked for */
  bool closed;
};

#define MEM(d) ((struct mem_disk *) (d))

static void
note(struct fde_disk *d, uint64_t off, uint64_t len)
{
  if (off > d->size || len > d->size - off) {
    fprintf(stderr, "a layer called down outside the disk: %llu+%llu\n",
            (unsigned long long) off, (unsigned long long) len);
    abort();
  }
  MEM(d)->last_off = off;
  MEM(d)->last_len = len;
}

static int
mem_pread(struct fde_disk *d, void *buf, size_t len, uint64_t off)
{
  note(d, off, len);
  memcpy(buf, MEM(d)->bytes + off, len);
  return 0;
}

static int
mem_pwrite(struct fde_disk *d, const void *buf, size_t len, uint64_t off)
{
  note(d, off, len);
  memcpy(MEM(d)->bytes + off, buf, len);
  return 0;
}

static int
mem_zero(struct fde_disk *d, uint64_t off, uint64_t len, unsigned flags)
{
  note(d, off, len);
  memset(MEM(d)->bytes + off, 0, len);
  return 0;
}

static int
mem_flush(struct fde_disk *d)
{
  return 0;
}

/* Runs end at the middle of the disk: data before, a hole after. */
static int
mem_block_status(struct fde_disk *d, uint64_t off, uint64_t len,
                 uint64_t *run, unsigned *status)
{
  uint64_t half = d->size / 2;

  note(d, off, len);
  *status = off < half ? FDE_BS_DATA : FDE_BS_ZERO;
  *run = off < half && half - off < len ? half - off : len;
  return 0;
}

static uint64_t
mem_allocated(struct fde_disk *d)
{
  return d->size / 2;
}

static void
mem_describe(struct fde_disk *d, FILE *out)
{
  fprintf(out, "mem: yes\n");
}

static void
mem_close(struct fde_disk *d)
{
  MEM(d)->closed = true;
}

static const struct fde_format mem_format = {
  .name = "mem",
  .pread = mem_pread, .pwrite = mem_pwrite, .zero = mem_zero,
  .flush = mem_flush, .block_status = mem_block_status,
  .allocated_bytes = mem_allocated, .describe = mem_describe,
  .close = mem_close,             /* no map, no io_begin/io_end */
};

static struct mem_disk *
mem_new(uint64_t size)
{
  struct mem_disk *m = calloc(1, sizeof *m);

  m->disk.format = &mem_format;
  m->disk.size = size;
  m->disk.path = "mem";
  m->bytes = calloc(1, size);
  for (uint64_t i = 0; i < size; i++)
    m->bytes[i] = (uint8_t) (i * 7 + 1);
  return m;
}

/* ---- Tests ---------------------------------------------------------------- */

static void
test_window_check(void)
{
  CHECK(fde_window_check(1000, 0, 1000) == NULL);
  CHECK(fde_window_check(1000, 999, 1) == NULL);
  CHECK(fde_window_check(1000, 999, 2) != NULL);
  CHECK(fde_window_check(1000, 1000, 1) != NULL);
  CHECK(fde_window_check(1000, 10, 0) != NULL);
  /* start + size would wrap around 2^64 */
  CHECK(fde_window_check(UINT64_MAX, 2, UINT64_MAX - 1) != NULL);
  CHECK(fde_window_check(UINT64_MAX, UINT64_MAX - 1, 1) == NULL);
  CHECK(fde_window_check(UINT64_MAX, UINT64_MAX, 1) != NULL);
  CHECK(fde_window_check(0, 0, 1) != NULL);
}

static int
pick(const struct fde_part_entry *p, size_t n, uint64_t disk, unsigned want,
     uint64_t *start, uint64_t *size)
{
  const char *why;
  int r = fde_partition_pick(p, n, disk, want, start, size, &why);

  CHECK((r == 0) == (why == NULL));
  return r;
}

static void
test_pick(void)
{
  const uint64_t disk = 64 << 20;
  struct fde_part_entry t[] = {
    { 1, 2048, 8192, false, 0, 0 },
    { 4, 26624, 104448, true, 0, 0 },
    { 5, 28672, 4096, false, 0, 0 },
    { 6, 28672, 4096, false, 0, 0 },                /* a loop's repeat */
    { 7, 131000, 72, false, 0, 0 },                 /* exactly to the end */
    { 8, 131000, 73, false, 0, 0 },                 /* one sector past it */
    { 9, -1, 10, false, 0, 0 },
    { 10, INT64_MAX, 2, false, 0, 0 },              /* *512 overflows */
    { 11, 2048, INT64_MAX / 256, false, 0, 0 },
    { 12, 131072, 1, false, 0, 0 },                 /* starts at the end */
    { 13, 2048, 0, false, 0, 0 },
  };
  size_t n = sizeof t / sizeof t[0];
  uint64_t start, size;

  CHECK(pick(t, n, disk, 1, &start, &size) == 0);
  CHECK(start == 2048 * 512 && size == 8192 * 512);
  CHECK(pick(t, n, disk, 4, &start, &size) == -EINVAL);
  CHECK(pick(t, n, disk, 5, &start, &size) == 0);
  CHECK(pick(t, n, disk, 6, &start, &size) == -EINVAL);
  CHECK(pick(t, n, disk, 7, &start, &size) == 0);
  CHECK(start + size == disk);
  for (unsigned k = 8; k <= 13; k++)
    CHECK(pick(t, n, disk, k, &start, &size) == -EINVAL);
  CHECK(pick(t, n, disk, 2, &start, &size) == -ENOENT);
  CHECK(pick(t, n, disk, 14, &start, &size) == -ENOENT);
  CHECK(pick(t, 0, disk, 1, &start, &size) == -ENOENT);

  /* more than 256 entries: the first 256 may be shown, as Linux shows
   * them (entry_check decides, for pick as for the directory view) */
  struct fde_part_entry *many = calloc(257, sizeof *many);
  for (int i = 0; i < 257; i++)
    many[i] = (struct fde_part_entry) { i + 1, 2048 + i, 1, false, 0, 0 };
  CHECK(pick(many, 256, disk, 1, &start, &size) == 0);
  CHECK(pick(many, 257, disk, 1, &start, &size) == 0);
  CHECK(pick(many, 257, disk, 256, &start, &size) == 0);
  CHECK(pick(many, 257, disk, 257, &start, &size) == -EINVAL);
  free(many);
}

/* entry_check(t, n, i): its result, and the reason given agrees with it
 * (contains want when refused). */
static int
entry_check(const struct fde_part_entry *t, size_t n, size_t i, uint64_t disk,
            const char *want)
{
  uint64_t start = 1, size = 1;
  const char *why = "unset";
  int r = fde_partition_entry_check(t, n, i, disk, &start, &size, &why);

  if (r == 0) {
    CHECK(why == NULL);
    CHECK(start == (uint64_t) t[i].start * 512
          && size == (uint64_t) t[i].size * 512);
  } else {
    CHECK(r == -EINVAL);
    CHECK(why != NULL && want != NULL && strstr(why, want) != NULL);
    if (why != NULL && (want == NULL || strstr(why, want) == NULL))
      fprintf(stderr, "entry %zu: refused \"%s\", expected \"%s\"\n", i, why,
              want ? want : "accepted");
  }
  return r;
}

/* Every reason fde_partition_entry_check refuses an entry for. */
static void
test_entry_reasons(void)
{
  const uint64_t disk = 1 << 20;            /* 2048 sectors */
  struct fde_part_entry t[] = {
    { 1, 100, 100, false, 0, 0 },                 /* 0: fine */
    { 0, 300, 10, false, 0, 0 },                  /* 1: numbers start at 1 */
    { 257, 320, 10, false, 0, 0 },                /* 2: past Linux's 256 */
    { -1, 340, 10, false, 0, 0 },                 /* 3 */
    { 2, 400, 600, true, 0, 0 },                  /* 4: an extended container */
    { 1, 360, 10, false, 0, 0 },                  /* 5: number 1 again */
    { 5, 100, 100, false, 0, 0 },                 /* 6: entry 0 again (a loop) */
    { 6, -8, 10, false, 0, 0 },                   /* 7: before the disk */
    { 7, 420, -1, false, 0, 0 },                  /* 8: an end before the start */
    { 8, INT64_MAX, 1, false, 0, 0 },             /* 9: *512 overflows */
    { 9, 440, 0, false, 0, 0 },                   /* 10: empty */
    { 10, 2048, 1, false, 0, 0 },                 /* 11: starts at the end */
    { 11, 2000, 49, false, 0, 0 },                /* 12: one sector too long */
    { 12, 150, 10, false, 0, 0 },                 /* 13: inside entry 0 */
    { 13, 2000, 48, false, 0, 0 },                /* 14: to the last sector */
    { 256, 460, 10, false, 0, 0 },                /* 15: the last number */
  };
  size_t n = sizeof t / sizeof t[0];

  CHECK(entry_check(t, n, 0, disk, NULL) == 0);
  CHECK(entry_check(t, n, 1, disk, "number is out of range") != 0);
  CHECK(entry_check(t, n, 2, disk, "number is out of range") != 0);
  CHECK(entry_check(t, n, 3, disk, "number is out of range") != 0);
  CHECK(entry_check(t, n, 4, disk, "extended partition") != 0);
  CHECK(entry_check(t, n, 5, disk, "given to an earlier entry") != 0);
  CHECK(entry_check(t, n, 6, disk, "repeats an earlier entry") != 0);
  CHECK(entry_check(t, n, 7, disk, "start or size is out of range") != 0);
  CHECK(entry_check(t, n, 8, disk, "start or size is out of range") != 0);
  CHECK(entry_check(t, n, 9, disk, "start or size is out of range") != 0);
  CHECK(entry_check(t, n, 10, disk, "empty") != 0);
  CHECK(entry_check(t, n, 11, disk, "starts past the end") != 0);
  CHECK(entry_check(t, n, 12, disk, "ends past the end") != 0);
  CHECK(entry_check(t, n, 13, disk, "overlaps an earlier partition") != 0);
  CHECK(entry_check(t, n, 14, disk, NULL) == 0);
  CHECK(entry_check(t, n, 15, disk, NULL) == 0);

  /* pick(n) is entry_check of the first entry numbered n */
  for (size_t i = 0; i < n; i++) {
    uint64_t s1, z1, s2, z2;
    const char *w1, *w2;
    size_t first = 0;
    if (t[i].partno < 0)
      continue;
    while (t[first].partno != t[i].partno)
      first++;
    int r1 = fde_partition_pick(t, n, disk, (unsigned) t[i].partno, &s1, &z1,
                                &w1);
    int r2 = fde_partition_entry_check(t, n, first, disk, &s2, &z2, &w2);
    CHECK(r1 == r2 && (r1 != 0 || (s1 == s2 && z1 == z2)));
    CHECK(r1 != 0 || w1 == NULL);
  }
}

/* Overlapping windows: the earlier entry is shown, the later refused;
 * an entry that is out of the disk or an extended container knocks no
 * later one out. */
static void
test_entry_overlap(void)
{
  const uint64_t disk = 1 << 20;
  struct fde_part_entry t[] = {
    { 1, 100, 100, false, 0, 0 },                 /* 0: [100, 200) */
    { 2, 50, 60, false, 0, 0 },                   /* 1: [50, 110) */
    { 3, 200, 10, false, 0, 0 },                  /* 2: touches 0's end: fine */
    { 4, 1000, 2000, false, 0, 0 },               /* 3: past the end */
    { 5, 1500, 100, false, 0, 0 },                /* 4: inside 3 only: fine */
    { 6, 300, 1000, true, 0, 0 },                 /* 5: extended, around 6 */
    { 7, 400, 50, false, 0, 0 },                  /* 6: a logical in it: fine */
    { 8, 40, 200, false, 0, 0 },                  /* 7: over 0 and 1 */
    { 9, 199, 1, false, 0, 0 },                   /* 8: 0's last sector */
    { 10, 1700, 348, false, 0, 0 },               /* 9: to the end, after 4 */
    { 11, 0, 2048, false, 0, 0 },                 /* 10: the whole disk */
  };
  size_t n = sizeof t / sizeof t[0];

  CHECK(entry_check(t, n, 0, disk, NULL) == 0);
  CHECK(entry_check(t, n, 1, disk, "overlaps") != 0);
  CHECK(entry_check(t, n, 2, disk, NULL) == 0);
  CHECK(entry_check(t, n, 3, disk, "ends past the end") != 0);
  CHECK(entry_check(t, n, 4, disk, NULL) == 0);
  CHECK(entry_check(t, n, 5, disk, "extended") != 0);
  CHECK(entry_check(t, n, 6, disk, NULL) == 0);
  CHECK(entry_check(t, n, 7, disk, "overlaps") != 0);
  CHECK(entry_check(t, n, 8, disk, "overlaps") != 0);
  CHECK(entry_check(t, n, 9, disk, NULL) == 0);
  CHECK(entry_check(t, n, 10, disk, "overlaps") != 0);

  /* the same two entries the other way round: the earlier still wins */
  struct fde_part_entry u[] = { t[1], t[0] };
  CHECK(entry_check(u, 2, 0, disk, NULL) == 0);
  CHECK(entry_check(u, 2, 1, disk, "overlaps") != 0);
  /* the whole disk first: it wins, everything after it is refused */
  struct fde_part_entry w[] = { t[10], t[0], t[9] };
  CHECK(entry_check(w, 3, 0, disk, NULL) == 0);
  CHECK(entry_check(w, 3, 1, disk, "overlaps") != 0);
  CHECK(entry_check(w, 3, 2, disk, "overlaps") != 0);
}

/* An entry refused for overlapping knocks out nothing, as it is not
 * shown: [100, 200) shown, [150, 250) refused, [220, 300) overlaps only the
 * refused one and is shown. */
/* Outer partitions: a DOS logical must lie inside its extended
 * partition (5 does not: libblkid's 32-bit sum wrapped it to sector 0),
 * and may overlap nothing but it; a nested label's partition (6) may
 * overlap its slice (1) and nothing else; a logical with no extended
 * partition (outer_size -1) lies inside none. */
static void
test_entry_outer(void)
{
  const uint64_t disk = 1 << 30;
  struct fde_part_entry t[] = {
    { 1, 2048, 4096, false, 0, 0 },
    { 4, 8192, 8192, true, 0, 0 },
    { 5, 0, 100, false, 8192, 8192 },
    { 6, 2048, 1024, false, 2048, 4096 },
    { 7, 8200, 100, false, 8192, 8192 },
    { 8, 3000, 1000, false, 8192, 8192 },
    { 9, 20000, 100, false, 0, -1 },
  };

  CHECK(entry_check(t, 7, 0, disk, NULL) == 0);
  CHECK(entry_check(t, 7, 2, disk, "outside the partition that holds it") != 0);
  CHECK(entry_check(t, 7, 3, disk, NULL) == 0);
  CHECK(entry_check(t, 7, 4, disk, NULL) == 0);
  CHECK(entry_check(t, 7, 5, disk, "outside the partition that holds it") != 0);
  CHECK(entry_check(t, 7, 6, disk, "outside the partition that holds it") != 0);

  /* a nested label's partition whose slice (2) is refused (it overlaps
   * 1): refused too, its label being read from another's sectors */
  struct fde_part_entry u[] = {
    { 1, 2048, 4096, false, 0, 0 },
    { 2, 4096, 8192, false, 0, 0 },
    { 5, 8192, 4096, false, 4096, 8192 },
  };
  CHECK(entry_check(u, 3, 1, disk, "overlaps") != 0);
  CHECK(entry_check(u, 3, 2, disk, "holding its label is not shown") != 0);

  /* an extended partition on the same sectors as a shown primary: its
   * logical overlaps the primary (no slice excuses it), in either order */
  struct fde_part_entry v[] = {
    { 1, 2048, 4096, false, 0, 0 },
    { 2, 2048, 4096, true, 0, 0 },
    { 5, 2050, 100, false, 2048, 4096 },
  };
  CHECK(entry_check(v, 3, 0, disk, NULL) == 0);
  CHECK(entry_check(v, 3, 2, disk, "overlaps") != 0);
  struct fde_part_entry w[] = {
    { 1, 2048, 4096, true, 0, 0 },
    { 2, 2048, 4096, false, 0, 0 },
    { 5, 2050, 100, false, 2048, 4096 },
  };
  CHECK(entry_check(w, 3, 1, disk, NULL) == 0);
  CHECK(entry_check(w, 3, 2, disk, "overlaps") != 0);

  /* a slice repeated by a later (refused) copy: its nested partitions
   * stand, the slice being shown */
  struct fde_part_entry x[] = {
    { 1, 4096, 8192, false, 0, 0 },
    { 2, 4096, 8192, false, 0, 0 },
    { 5, 8192, 1024, false, 4096, 8192 },
  };
  CHECK(entry_check(x, 3, 1, disk, "repeats") != 0);
  CHECK(entry_check(x, 3, 2, disk, NULL) == 0);
}

static void
test_entry_overlap_refused_earlier(void)
{
  const uint64_t disk = 1 << 20;
  struct fde_part_entry t[] = {
    { 1, 100, 100, false, 0, 0 }, { 2, 150, 100, false, 0, 0 }, { 3, 220, 80, false, 0, 0 },
  };

  CHECK(entry_check(t, 3, 0, disk, NULL) == 0);
  CHECK(entry_check(t, 3, 1, disk, "overlaps") != 0);
  CHECK(entry_check(t, 3, 2, disk, NULL) == 0);
}

/* The 256-entry cap: entries from the 257th on are refused whatever they
 * are, the ones before are judged as usual. */
static void
test_entry_cap(void)
{
  const uint64_t disk = 1 << 20;
  struct fde_part_entry *t = calloc(300, sizeof *t);

  for (int i = 0; i < 300; i++)             /* numbers 1..300, disjoint */
    t[i] = (struct fde_part_entry) { i + 1, 100 + 2 * i, 1, false, 0, 0 };
  for (size_t i = 0; i < 256; i++)
    CHECK(entry_check(t, 300, i, disk, NULL) == 0);
  for (size_t i = 256; i < 300; i++)
    CHECK(entry_check(t, 300, i, disk, "more than 256") != 0);
  /* numbered from 1 after 256 others (say 256 nested labels): still the
   * 257th entry */
  t[256].partno = 1000;
  for (int i = 0; i < 256; i++)
    t[i].partno = 1000 + i + 1;
  t[256].partno = 1;
  CHECK(entry_check(t, 300, 256, disk, "more than 256") != 0);
  free(t);
}

static void
test_window_layer(void)
{
  struct mem_disk *m = mem_new(1 << 20);
  struct fde_disk *w, *d = &m->disk;
  const uint64_t start = 4096, size = 8192;
  uint8_t buf[512], want[512];
  uint64_t run;
  unsigned status;

  CHECK(fde_partition_open(d, 3, start, (1 << 20) - start + 1, &w)
        == -EINVAL);
  CHECK(fde_partition_open(d, 3, start, size, &w) == 0);
  CHECK(w->size == size && !w->read_only);
  CHECK(strcmp(w->format->name, "mem") == 0);
  CHECK(fde_disk_is_layer(w) && !fde_disk_is_layer(d));
  CHECK(fde_disk_bottom(w) == d);
  /* absent below, absent through the layer */
  CHECK(w->format->map == NULL && w->format->io_begin == NULL
        && w->format->io_end == NULL);
  CHECK(w->format->probe == NULL && w->format->open == NULL);

  /* reads and writes shift by start */
  CHECK(w->format->pread(w, buf, sizeof buf, size - 512) == 0);
  CHECK(memcmp(buf, m->bytes + start + size - 512, 512) == 0);
  CHECK(m->last_off == start + size - 512 && m->last_len == 512);
  memset(want, 0xab, sizeof want);
  CHECK(w->format->pwrite(w, want, sizeof want, 0) == 0);
  CHECK(memcmp(m->bytes + start, want, 512) == 0);
  CHECK(m->bytes[start - 1] == (uint8_t) ((start - 1) * 7 + 1));
  CHECK(w->format->zero(w, 512, 1024, FDE_ZERO_PUNCH) == 0);
  CHECK(m->last_off == start + 512 && m->last_len == 1024);
  CHECK(m->bytes[start + 511] == 0xab && m->bytes[start + 512] == 0
        && m->bytes[start + 1536] == (uint8_t) ((start + 1536) * 7 + 1));

  /* block_status runs stay inside the length asked for */
  CHECK(w->format->block_status(w, 0, size, &run, &status) == 0);
  CHECK(run == size && status == FDE_BS_DATA);
  CHECK(w->format->flush(w) == 0);
  /* allocation counted inside the window only */
  CHECK(w->format->allocated_bytes(w) == size);
  fde_disk_close(w);
  CHECK(m->closed);

  /* a window across the middle: half data, half hole */
  m->closed = false;
  CHECK(fde_partition_open(d, 1, (1 << 19) - 1024, 4096, &w) == 0);
  CHECK(w->format->block_status(w, 0, 4096, &run, &status) == 0);
  CHECK(run == 1024 && status == FDE_BS_DATA);
  CHECK(w->format->allocated_bytes(w) == 1024);
  fde_disk_close(w);
  free(m->bytes);
  free(m);
}

/* "an image header": a sector starting with "IMG!" */
static bool
looks_like_image(const uint8_t *sector, size_t len)
{
  return len >= 4 && memcmp(sector, "IMG!", 4) == 0;
}

static void
test_guard(void)
{
  struct mem_disk *m = mem_new(1 << 16);
  struct fde_disk *g, *w;

  CHECK(fde_guard_open(&m->disk, "mem.img", "-f raw", looks_like_image, NULL, &g) == 0);
  CHECK(g->size == m->disk.size);
  CHECK(g->format->pwrite(g, "IMG!", 4, 0) == -EPERM);
  CHECK(g->format->pwrite(g, "MG!", 3, 1) == 0);    /* "?MG!": fine */
  CHECK(g->format->pwrite(g, "I", 1, 0) == -EPERM); /* completes "IMG!" */
  CHECK(m->bytes[0] == 1);
  CHECK(g->format->zero(g, 0, 1, 0) == 0);      /* "\0MG!": fine */
  CHECK(g->format->pwrite(g, "IMG!", 4, 512) == 0); /* sector 1: no check */
  /* a window over the guard at the disk's start is guarded too */
  CHECK(fde_partition_open(g, 1, 0, 4096, &w) == 0);
  CHECK(w->format->pwrite(w, "I", 1, 0) == -EPERM);
  CHECK(w->format->pwrite(w, "X", 1, 0) == 0);
  fde_disk_close(w);
  CHECK(m->closed);
  free(m->bytes);
  free(m);
}

int
main(void)
{
  test_window_check();
  test_pick();
  test_entry_reasons();
  test_entry_overlap();
  test_entry_overlap_refused_earlier();
  test_entry_outer();
  test_entry_cap();
  test_window_layer();
  test_guard();
  if (failures > 0) {
    fprintf(stderr, "layer-test: %d checks failed\n", failures);
    return 1;
  }
  printf("layer-test: all checks passed\n");
  return 0;
}
