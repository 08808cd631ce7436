/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: the files a view shows.  The single-file view shows
 * one, the disk, as the root of the mount.  The directory view (-P DIR)
 * shows a directory holding "disk" (the whole disk) and "pN" for each
 * partition N of the disk's partition table that
 * fde_partition_entry_check accepts, each a window (formats/partition.c)
 * over that same disk, so that all of them show the same bytes.
 *
 * When the table is changed through "disk" (sfdisk, parted), the files
 * follow it once the writer closes or fsyncs "disk" (view_files_rescan):
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

struct view_dir {
  pthread_rwlock_t lock;        /* objects, nobjects, current */
  struct view_file **objects;   /* by inode - FIRST_INO; only grows */
  size_t nobjects, cap;
  struct view_file *current[VIEW_MAX_FILES];  /* [0] disk, [N] pN, or NULL */
  pthread_mutex_t rescan_lock;  /* one scan at a time; what follows */
  bool written;                 /* (atomic) a write touched the bytes the
                                 * last scan read the table from */
  pthread_mutex_t watch_lock;   /* watch, nwatch, watch_all, scanning */
  struct fde_byte_range *watch; /* those bytes (from fde_part_table) */
  size_t nwatch;
  bool watch_all;               /* not known: every write counts */
  bool scanning;                /* a scan is reading the table: every
                                 * write counts (the list it will give is
                                 * not known yet) */
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

/* From now on, writes count (view_files_written) if they touch the bytes
 * tab was read from; takes tab->read. */
static void
watch(struct view_dir *dir, struct fde_part_table *tab)
{
  pthread_mutex_lock(&dir->watch_lock);
  free(dir->watch);
  dir->watch = tab->read;
  dir->nwatch = tab->nread;
  dir->watch_all = tab->read == NULL;
  dir->scanning = false;
  pthread_mutex_unlock(&dir->watch_lock);
  tab->read = NULL;
  tab->nread = 0;
}

/* Does [off, off + len) touch a watched range?  With watch_lock held. */
static bool
watched(struct view_dir *dir, uint64_t off, uint64_t len)
{
  size_t lo = 0, hi = dir->nwatch;

  if (dir->watch_all || dir->scanning)
    return true;
  while (lo < hi) {             /* the first range ending after off */
    size_t mid = lo + (hi - lo) / 2;
    if (dir->watch[mid].off + dir->watch[mid].len <= off)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo < dir->nwatch && dir->watch[lo].off < off + len;
}

/* Read the table and check each entry: want[N] for the partitions shown,
 * one line per partition left out (or no table at all) written to
 * warnings.  0, or -errno if the table could not be read. */
static int
read_table(struct export *exp, struct wanted want[VIEW_MAX_FILES],
           FILE *warnings)
{
  struct fde_part_table tab;
  struct fde_part_entry *parts;
  size_t nparts, said = 0;
  const char *why, *type;
  uint64_t start, size;
  int r = fde_part_table_details(exp->disk, &tab);

  watch(exp->dir, &tab);        /* on failure: every write counts */
  if (r < 0) {
    fde_part_table_free(&tab);
    return r;
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

/* Read the table and make the files follow it; with rescan_lock held. */
static void
scan(struct export *exp)
{
  struct wanted want[VIEW_MAX_FILES] = { { 0 } };
  char *text = NULL;
  size_t len = 0;
  FILE *warnings = open_memstream(&text, &len);
  int r;

  if (warnings == NULL) {
    fde_warn("%s: cannot read the partition table: out of memory",
             exp->image);
    return;
  }
  r = read_table(exp, want, warnings);
  if (fclose(warnings) != 0 || r < 0) {
    /* the files stay as they are: an I/O error is no new table */
    fde_warn("%s: cannot read the partition table: %s; the files in %s "
             "stay as they were", exp->image, strerror(r < 0 ? -r : ENOMEM),
             exp->mountpoint);
    free(text);
    return;
  }
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
  root->mode = exp->disk->read_only ? 0500 : 0700;
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
  dir->watch_all = true;
  exp->dir = dir;
  pthread_mutex_lock(&dir->rescan_lock);
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
  bool hit;

  if (dir == NULL || len == 0
      || __atomic_load_n(&dir->written, __ATOMIC_ACQUIRE))
    return;
  pthread_mutex_lock(&dir->watch_lock);
  hit = watched(dir, f->start + off, len);
  pthread_mutex_unlock(&dir->watch_lock);
  if (hit)
    __atomic_store_n(&dir->written, true, __ATOMIC_RELEASE);
}

static void
set_scanning(struct view_dir *dir, bool on)
{
  pthread_mutex_lock(&dir->watch_lock);
  dir->scanning = on;
  pthread_mutex_unlock(&dir->watch_lock);
}

void
view_files_rescan(struct export *exp)
{
  struct view_dir *dir = exp->dir;

  if (dir == NULL)
    return;
  pthread_mutex_lock(&dir->rescan_lock);
  /* From here until the scan installs the ranges it read (watch), every
   * write that completes counts, whatever it touched; the mark is
   * cleared before the table is read, and writers set it after their
   * write has landed: a write this scan may have missed is read by the
   * next one. */
  set_scanning(dir, true);
  if (__atomic_exchange_n(&dir->written, false, __ATOMIC_ACQ_REL))
    scan(exp);
  set_scanning(dir, false);
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
