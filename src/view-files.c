/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: the files a view shows.  The single-file view shows
 * one, the disk, as the root of the mount.  The directory view (-P DIR)
 * shows a directory holding "disk" (the whole disk) and "pN" for each
 * partition N of the disk's partition table that
 * fde_partition_entry_check accepts, each a window (formats/partition.c)
 * over that same disk, so that all of them show the same bytes.
 *
 * When the table is changed (sfdisk, parted on "disk"), the files follow
 * it once the writer closes or fsyncs its file (view_files_rescan; only
 * writes that touched the bytes the table was read from count):
 * a partition at the same place keeps its file; one with the same start
 * and a new size keeps its file, resized; one moved or removed loses it
 * (marked gone: every operation on it fails with EIO) and a partition at
 * a new place gets a new file, with a new inode.  A file object is never
 * freed before the export closes and its inode number is never reused:
 * the kernel may hold an inode (an open descriptor, a dentry) long after
 * the table changed, and must then get EIO from it, never the bytes of
 * another partition.  So the objects only grow, up to MAX_OBJECTS. */
#include <config.h>

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blkid-view.h"
#include "internal.h"
#include "layer.h"

#define FIRST_INO 2             /* FUSE_ROOT_ID is the directory */
#define MAX_OBJECTS 4096        /* files made over the export's life */
#define MAX_WARNINGS 32         /* left-out partitions named one by one */
#define MAX_SCAN_WRITES 64      /* writes kept while a scan reads */

struct view_dir {
  pthread_rwlock_t lock;        /* objects, nobjects, current */
  struct view_file **objects;   /* by inode - FIRST_INO; only grows */
  size_t nobjects, cap;
  struct view_file *current[VIEW_MAX_FILES];  /* [0] disk, [N] pN, or NULL */
  pthread_mutex_t rescan_lock;  /* one scan at a time; what follows */
  /* When is the table read again?  Only after a write touched the bytes
   * the last scan read it from (watch): nothing else can change what
   * libblkid finds.  All of this is under watch_lock. */
  pthread_mutex_t watch_lock;
  bool written;                 /* such a write landed: the next rescan
                                 * reads the table */
  struct fde_byte_range *watch; /* the bytes (fde_part_table.read) */
  size_t nwatch;
  bool watch_all;               /* not known (no scan yet, or it failed):
                                 * every write counts */
  bool scanning;                /* a scan is reading the table: writes that
                                 * land meanwhile are kept in scan_writes,
                                 * and checked against the bytes it read */
  struct fde_byte_range scan_writes[MAX_SCAN_WRITES];
  size_t nscan_writes;
  bool scan_writes_lost;        /* more than MAX_SCAN_WRITES: all count */
  bool read_failed;             /* the last scan could not read the table
                                 * (said once, until one can) */
  char *warnings;               /* the warnings the last scan gave */
  bool started;                 /* the first scan is done: log changes */
  bool full_warned;             /* MAX_OBJECTS reached, said so */
};

/* The attributes a new file starts with: the image file's owner and
 * times, mode as given. */
static void
init_attrs(struct export *exp, struct view_file *f, mode_t mode)
{
  f->mode = mode;
  f->uid = exp->image_st.st_uid;
  f->gid = exp->image_st.st_gid;
  f->atim = exp->image_st.st_atim;
  f->mtim = exp->image_st.st_mtim;
  f->ctim = exp->image_st.st_ctim;
}

/* A new file object showing disk, not yet in the table; NULL if out of
 * memory. */
static struct view_file *
new_file(struct export *exp, struct fde_disk *disk, unsigned partno,
         uint64_t start)
{
  struct view_file *f = calloc(1, sizeof *f);

  if (f == NULL)
    return NULL;
  f->disk = disk;
  f->partno = partno;
  f->start = start;
  f->whole = partno == 0;
  if (partno == 0)
    snprintf(f->name, sizeof f->name, "disk");
  else
    snprintf(f->name, sizeof f->name, "p%u", partno);
  init_attrs(exp, f, exp->mode);
  return f;
}

/* Free f and its window (a partition's; the disk stays the export's). */
static void
free_file(struct view_file *f)
{
  if (f->partno > 0)
    fde_disk_close(f->disk);
  free(f);
}

/* Give f the next inode and make it the current file of its name; with
 * the table lock held.  false when the table is full or out of memory. */
static bool
insert_file(struct view_dir *dir, struct view_file *f)
{
  if (dir->nobjects == MAX_OBJECTS)
    return false;
  if (dir->nobjects == dir->cap) {
    size_t cap = dir->cap ? dir->cap * 2 : 64;
    struct view_file **o = realloc(dir->objects, cap * sizeof *o);
    if (o == NULL)
      return false;
    dir->objects = o;
    dir->cap = cap;
  }
  f->ino = FIRST_INO + dir->nobjects;
  dir->objects[dir->nobjects++] = f;
  dir->current[f->partno] = f;
  return true;
}

/* What the table says of partition N: shown at [start, start + size). */
struct wanted {
  bool shown;
  uint64_t start, size;
};

/* Does the disk look as if it had a GPT: a GPT header signature in
 * sector 1, or a protective MBR entry (type 0xee) in sector 0?  A blank
 * disk, one holding a file system (a FAT boot sector has the MBR's
 * signature too) or a DOS table libblkid does not take gets no warning
 * when libblkid finds no table; a GPT it refuses (a bad CRC) does. */
static bool
looks_gpt(struct fde_disk *disk)
{
  uint8_t sec[1024];

  if (disk->size < sizeof sec
      || disk->format->pread(disk, sec, sizeof sec, 0) < 0)
    return false;
  if (memcmp(sec + 512, "EFI PART", 8) == 0)
    return true;
  for (int i = 0; i < 4; i++)
    if (sec[510] == 0x55 && sec[511] == 0xaa && sec[446 + 16 * i + 4] == 0xee)
      return true;
  return false;
}

/* Does [off, off + len) touch a byte of ranges (sorted, disjoint)? */
static bool
touches(const struct fde_byte_range *ranges, size_t n, uint64_t off,
        uint64_t len)
{
  size_t lo = 0, hi = n;

  while (lo < hi) {             /* the first range ending after off */
    size_t mid = lo + (hi - lo) / 2;
    if (ranges[mid].off + ranges[mid].len <= off)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo < n && ranges[lo].off < off + len;
}

/* A scan begins reading the table, if a write asked for one: true, and
 * the writes that land from now on are kept (scan_writes). */
static bool
begin_scan(struct view_dir *dir)
{
  bool go;

  pthread_mutex_lock(&dir->watch_lock);
  go = dir->written;
  if (go) {
    dir->written = false;
    dir->scanning = true;
    dir->nscan_writes = 0;
    dir->scan_writes_lost = false;
  }
  pthread_mutex_unlock(&dir->watch_lock);
  return go;
}

/* The scan is over: from now on writes count if they touch read (the
 * bytes it read the table from, nread ranges; taken), and so do the
 * writes that landed while it read, which it may have missed.  read NULL:
 * the scan failed; the next rescan tries again. */
static void
end_scan(struct view_dir *dir, struct fde_byte_range *read, size_t nread)
{
  pthread_mutex_lock(&dir->watch_lock);
  free(dir->watch);
  dir->watch = read;
  dir->nwatch = nread;
  dir->watch_all = read == NULL;
  if (read == NULL || dir->scan_writes_lost)
    dir->written = true;
  for (size_t i = 0; i < dir->nscan_writes && !dir->written; i++)
    dir->written = touches(read, nread, dir->scan_writes[i].off,
                           dir->scan_writes[i].len);
  dir->scanning = false;
  pthread_mutex_unlock(&dir->watch_lock);
}

/* Read the table and check each entry: want[N] for the partitions shown,
 * one line per partition left out (or no table at all) written to
 * warnings, the bytes it was read from in *read (malloc'd, *nread
 * ranges).  0, or -errno if the table could not be read. */
static int
read_table(struct export *exp, struct wanted want[VIEW_MAX_FILES],
           FILE *warnings, struct fde_byte_range **read, size_t *nread)
{
  struct fde_part_table tab;
  struct fde_part_entry *parts;
  size_t nparts, said = 0;
  const char *why, *type;
  uint64_t start, size;
  int r = fde_part_table_details(exp->disk, &tab);

  if (r < 0) {
    fde_part_table_free(&tab);
    return r;
  }
  *read = tab.read;             /* taken: fde_part_table_free skips it */
  *nread = tab.nread;
  tab.read = NULL;
  if (*read == NULL) {          /* not known: as a failed read */
    fde_part_table_free(&tab);
    return -ENOMEM;
  }
  parts = tab.entries;
  nparts = tab.nparts;
  type = tab.type;
  if (nparts == 0 && looks_gpt(exp->disk))
    fprintf(warnings, "libblkid accepts no partition table on it (its GPT "
            "fails libblkid's checks, such as a bad CRC): only disk is "
            "shown\n");
  for (size_t i = 0; i < nparts; i++) {
    if (parts[i].extended)      /* the container of 5, 6...: not a file */
      continue;
    r = fde_partition_entry_check(parts, nparts, i, exp->disk->size, &start,
                                  &size, &why);
    if (r == 0)
      want[parts[i].partno] = (struct wanted) { true, start, size };
    else if (said++ < MAX_WARNINGS)
      fprintf(warnings, "partition %d left out: %s (%s partition table)\n",
              parts[i].partno, why, type[0] ? type : "unknown");
  }
  if (said > MAX_WARNINGS)
    fprintf(warnings, "%zu more partitions left out\n", said - MAX_WARNINGS);
  fde_part_table_free(&tab);
  return 0;
}

/* Print the scan's warnings, one line each, unless the last scan gave
 * exactly these: a table that stays as it is is not reported at every
 * close.  Takes text (malloc'd). */
static void
give_warnings(struct export *exp, char *text)
{
  struct view_dir *dir = exp->dir;

  if (dir->warnings != NULL && strcmp(dir->warnings, text) == 0) {
    free(text);
    return;
  }
  for (char *line = text, *nl; *line != '\0'; line = nl + 1) {
    nl = strchr(line, '\n');
    *nl = '\0';
    fde_warn("%s: %s", exp->image, line);
    *nl = '\n';
  }
  free(dir->warnings);
  dir->warnings = text;
}

/* Make partition n's file follow the table: keep it, resize it, or
 * replace it (the old one gone, a new one at the new place).  With
 * rescan_lock held. */
static void
follow(struct export *exp, unsigned n, const struct wanted *w)
{
  struct view_dir *dir = exp->dir;
  struct view_file *old = dir->current[n], *f = NULL;
  struct fde_disk *win;

  if (old != NULL && w->shown && old->start == w->start) {
    if (fde_disk_size(old->disk) != w->size
        && fde_window_resize(old->disk, w->size) == 0 && dir->started)
      fde_debug("%s: %s/p%u: resized to %llu bytes", exp->image,
                exp->mountpoint, n, (unsigned long long) w->size);
    return;
  }
  if (old == NULL && !w->shown)
    return;
  if (w->shown && fde_partition_open(exp->disk, n, w->start, w->size,
                                     &win) == 0) {
    ((struct fde_layer *) win)->lower_shared = true;  /* the export's */
    if ((f = new_file(exp, win, n, w->start)) == NULL)
      fde_disk_close(win);
  }
  if (w->shown && f == NULL)
    fde_warn("%s: partition %u not shown: out of memory", exp->image, n);
  pthread_rwlock_wrlock(&dir->lock);
  if (old != NULL) {
    __atomic_store_n(&old->gone, true, __ATOMIC_RELEASE);
    dir->current[n] = NULL;
  }
  if (f != NULL && !insert_file(dir, f)) {
    if (!dir->full_warned)
      fde_warn("%s: partition %u not shown: the view has made %d files "
               "already (restart the export to show it)", exp->image, n,
               MAX_OBJECTS);
    dir->full_warned = true;
    free_file(f);
    f = NULL;
  }
  pthread_rwlock_unlock(&dir->lock);
  if (dir->started && (f != NULL || old != NULL))
    fde_debug("%s: %s/p%u: %s", exp->image, exp->mountpoint, n,
              f == NULL ? "removed" : old == NULL ? "added" : "moved");
}

/* Read the table and make the files follow it; with rescan_lock held,
 * after begin_scan.  A table that cannot be read leaves the files as they
 * are (an I/O error is no new table), is said once, and is tried again at
 * the next rescan. */
static void
scan(struct export *exp)
{
  struct view_dir *dir = exp->dir;
  struct wanted want[VIEW_MAX_FILES] = { { 0 } };
  struct fde_byte_range *read = NULL;
  size_t nread = 0, len = 0;
  char *text = NULL;
  FILE *warnings = open_memstream(&text, &len);
  int r = warnings == NULL ? -ENOMEM
    : read_table(exp, want, warnings, &read, &nread);

  if (warnings != NULL && fclose(warnings) != 0 && r == 0)
    r = -ENOMEM;
  if (r < 0) {
    if (!dir->read_failed)
      fde_warn("%s: cannot read the partition table: %s; the files in %s "
               "stay as they were", exp->image, strerror(-r),
               exp->mountpoint);
    dir->read_failed = true;
    free(read);
    free(text);
    end_scan(dir, NULL, 0);
    return;
  }
  dir->read_failed = false;
  end_scan(dir, read, nread);
  give_warnings(exp, text);
  for (unsigned n = 1; n < VIEW_MAX_FILES; n++)
    follow(exp, n, &want[n]);
}

int
view_files_open(struct export *exp)
{
  struct view_file *root = &exp->root, *disk;
  struct view_dir *dir;

  root->ino = FUSE_ROOT_ID;
  init_attrs(exp, root, exp->mode);
  if (exp->opts->partitions_dir == NULL) {
    root->disk = exp->disk;
    return 0;
  }
  root->mode = fde_disk_can_write(exp->disk) ? 0700 : 0500;
  if (exp->opts->probe_only)
    return 0;
  dir = calloc(1, sizeof *dir);
  disk = new_file(exp, exp->disk, 0, 0);
  if (dir == NULL || disk == NULL || !insert_file(dir, disk)) {
    fde_error("%s: out of memory", exp->image);
    free(disk);
    free(dir);
    return EXIT_FAIL;
  }
  pthread_rwlock_init(&dir->lock, NULL);
  pthread_mutex_init(&dir->rescan_lock, NULL);
  pthread_mutex_init(&dir->watch_lock, NULL);
  dir->watch_all = dir->written = true;
  exp->dir = dir;
  pthread_mutex_lock(&dir->rescan_lock);
  if (begin_scan(dir))
    scan(exp);
  dir->started = true;
  pthread_mutex_unlock(&dir->rescan_lock);
  return 0;
}

struct view_file *
view_file_of(struct export *exp, fuse_ino_t ino)
{
  struct view_dir *dir = exp->dir;
  struct view_file *f = NULL;

  if (ino == FUSE_ROOT_ID)
    return &exp->root;
  if (dir == NULL || ino < FIRST_INO)
    return NULL;
  pthread_rwlock_rdlock(&dir->lock);
  if (ino - FIRST_INO < dir->nobjects)
    f = dir->objects[ino - FIRST_INO];
  pthread_rwlock_unlock(&dir->lock);
  return f;
}

/* The index in current[] of a file name: 0 for "disk", N for "pN" (no
 * leading zero), -1 for any other name. */
static int
index_of(const char *name)
{
  char *end;
  unsigned long n;

  if (strcmp(name, "disk") == 0)
    return 0;
  if (name[0] != 'p' || name[1] < '1' || name[1] > '9')
    return -1;
  n = strtoul(name + 1, &end, 10);
  return *end == '\0' && n < VIEW_MAX_FILES ? (int) n : -1;
}

struct view_file *
view_file_named(struct export *exp, const char *name)
{
  struct view_dir *dir = exp->dir;
  struct view_file *f;
  int i = index_of(name);

  if (dir == NULL || i < 0)
    return NULL;
  pthread_rwlock_rdlock(&dir->lock);
  f = dir->current[i];
  pthread_rwlock_unlock(&dir->lock);
  return f;
}

size_t
view_files_now(struct export *exp, struct view_file **files, size_t max)
{
  struct view_dir *dir = exp->dir;
  size_t n = 0;

  if (dir == NULL)
    return 0;
  pthread_rwlock_rdlock(&dir->lock);
  for (size_t i = 0; i < VIEW_MAX_FILES; i++)
    if (dir->current[i] != NULL) {
      if (n < max)
        files[n] = dir->current[i];
      n++;
    }
  pthread_rwlock_unlock(&dir->lock);
  return n;
}

void
view_files_written(struct export *exp, const struct view_file *f,
                   uint64_t off, uint64_t len)
{
  struct view_dir *dir = exp->dir;
  uint64_t at = f->start + off;  /* inside the disk: no overflow */

  if (dir == NULL || len == 0)
    return;
  pthread_mutex_lock(&dir->watch_lock);
  if (dir->scanning) {
    if (dir->nscan_writes < MAX_SCAN_WRITES)
      dir->scan_writes[dir->nscan_writes++] = (struct fde_byte_range) { at,
                                                                        len };
    else
      dir->scan_writes_lost = true;
  }
  else if (!dir->written)
    dir->written = dir->watch_all || touches(dir->watch, dir->nwatch, at, len);
  pthread_mutex_unlock(&dir->watch_lock);
}

void
view_files_rescan(struct export *exp)
{
  struct view_dir *dir = exp->dir;

  if (dir == NULL)
    return;
  /* A write sets the mark after it has landed; the mark is taken before
   * the table is read, and writes landing during the read are checked
   * against what it read (end_scan): every write that touched the table
   * is read by this scan or makes the next one happen. */
  pthread_mutex_lock(&dir->rescan_lock);
  if (begin_scan(dir))
    scan(exp);
  pthread_mutex_unlock(&dir->rescan_lock);
}

unsigned
view_files_names(struct export *exp, FILE *out)
{
  struct view_file *files[VIEW_MAX_FILES];
  size_t n = view_files_now(exp, files, VIEW_MAX_FILES);

  for (size_t i = 0; i < n; i++)
    fprintf(out, "%s%s", i ? ", " : "", files[i]->name);
  return n > 0 ? (unsigned) n - 1 : 0;
}

void
view_files_log(struct export *exp)
{
  struct view_file *files[VIEW_MAX_FILES];
  size_t n = view_files_now(exp, files, VIEW_MAX_FILES);

  for (size_t i = 0; i < n; i++) {
    uint64_t size = fde_disk_size(files[i]->disk);
    if (files[i]->whole)
      fde_info("%s: %s/%s: the whole disk, %llu bytes", exp->image,
               exp->mountpoint, files[i]->name, (unsigned long long) size);
    else
      fde_info("%s: %s/%s: partition %u, %llu bytes from byte %llu",
               exp->image, exp->mountpoint, files[i]->name,
               files[i]->partno, (unsigned long long) size,
               (unsigned long long) files[i]->start);
  }
}

void
view_files_close(struct export *exp)
{
  struct view_dir *dir = exp->dir;

  if (dir == NULL)
    return;
  for (size_t i = 0; i < dir->nobjects; i++)
    free_file(dir->objects[i]);
  free(dir->objects);
  free(dir->warnings);
  free(dir->watch);
  pthread_rwlock_destroy(&dir->lock);
  pthread_mutex_destroy(&dir->rescan_lock);
  pthread_mutex_destroy(&dir->watch_lock);
  free(dir);
  exp->dir = NULL;
}
