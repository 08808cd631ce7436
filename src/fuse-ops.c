/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: the FUSE low-level operations.  Each file shows one
 * disk: a backend, or the top of a stack of layers (formats/layer.h: a
 * partition window, the sector-0 guard), served alike.  The root of the
 * mount is either that file (the single-file view) or a directory whose
 * files all show the same disk, whole or one partition each (-P, see
 * view-files.c); the per-file operations are the same for both, on "the
 * file behind this inode".  Every handler replies exactly once; backend
 * errors (negative errno) are converted here and nowhere else. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "layer.h"

#define ATTR_TIMEOUT 1.0        /* the root: the single file, or the -P dir */
/* The -P directory's files: 0 s, so that sizes and existence follow the
 * partition table at once. */
#define DIR_FILE_TIMEOUT 0.0
#define MAX_REQUEST (1u << 20)  /* max_read and max_write */
#define MAX_SPLICE_BUFS 16      /* pieces in one spliced read reply */
#define SPLICE_MIN_PAGE 4096    /* libfuse copies replies under two pages */
#define MIN_SPLICE_READ (128u << 10)  /* below: copy 1 MiB requests instead */
/* Asynchronous requests (O_DIRECT aio, read-ahead) the kernel keeps in
 * flight at once; its default, 12, is fewer than one fio job at depth 16,
 * and a submitter that finds no free slot sleeps in fuse_get_req holding
 * the view's inode lock, so every other submitter waits behind it.  64
 * covers two queues of 16 with room; an unprivileged mount is capped by
 * fuse's max_user_bgreq (thousands by default). */
#define MAX_BACKGROUND 64u

static struct export *
export_of(fuse_req_t req)
{
  return fuse_req_userdata(req);
}

static uint64_t
min_u64(uint64_t a, uint64_t b)
{
  return a < b ? a : b;
}

/* What stat shows of f: a file's size is its disk's, its blocks the
 * disk's allocation; the -P directory (disk NULL) is a directory. */
static void
fill_stat(struct export *exp, struct view_file *f, struct stat *st)
{
  struct fde_disk *d = f->disk;

  memset(st, 0, sizeof *st);
  st->st_ino = f->ino;
  st->st_nlink = d != NULL ? 1 : 2;
  st->st_blksize = 4096;
  if (d != NULL) {
    st->st_size = (off_t) fde_disk_size(d);
    st->st_blocks = (blkcnt_t) (d->format->allocated_bytes(d) / 512);
  }
  pthread_mutex_lock(&exp->attr_lock);
  st->st_mode = (d != NULL ? S_IFREG : S_IFDIR) | f->mode;
  st->st_uid = f->uid;
  st->st_gid = f->gid;
  st->st_atim = f->atim;
  st->st_mtim = f->mtim;
  st->st_ctim = f->ctim;
  pthread_mutex_unlock(&exp->attr_lock);
}

/* How long the kernel may keep f's attributes (and a file's name). */
static double
attr_timeout(struct export *exp, const struct view_file *f)
{
  return exp->dir != NULL && f->disk != NULL ? DIR_FILE_TIMEOUT
                                             : ATTR_TIMEOUT;
}

/* The file (not the -P directory) behind inode ino, for a request on it;
 * NULL after replying ENOENT (no such inode: the kernel never asks for
 * one), EISDIR (the directory) or EIO (its partition moved or was
 * removed from the table). */
static struct view_file *
file_or_reply(fuse_req_t req, fuse_ino_t ino)
{
  struct view_file *f = view_file_of(export_of(req), ino);
  int err = f == NULL ? ENOENT : f->disk == NULL ? EISDIR
            : view_file_gone(f) ? EIO : 0;

  if (err == 0)
    return f;
  fuse_reply_err(req, err);
  return NULL;
}

/* The largest read reply libfuse can splice.  It sizes each worker's pipe
 * to a page per buffer plus two, plus header and data; past
 * /proc/sys/fs/pipe-max-size that needs CAP_SYS_RESOURCE, and a failed
 * attempt would make libfuse copy every later large reply through a fresh
 * allocation.  So try the size once here and stay below what works. */
static size_t
splice_limit(void)
{
  size_t page = (size_t) sysconf(_SC_PAGESIZE);
  size_t slack = page * (MAX_SPLICE_BUFS + 3);
  size_t limit = 0;
  int fds[2];
  FILE *f;

  if (pipe2(fds, O_CLOEXEC) == -1)
    return 0;
  if (fcntl(fds[0], F_SETPIPE_SZ, (int) (MAX_REQUEST + slack)) != -1)
    limit = MAX_REQUEST;
  close(fds[0]);
  close(fds[1]);
  if (limit == 0 && (f = fopen("/proc/sys/fs/pipe-max-size", "re")) != NULL) {
    unsigned long max;
    if (fscanf(f, "%lu", &max) == 1 && max > slack + 2 * page)
      limit = (max - slack) / page * page;
    fclose(f);
  }
  return limit < MAX_REQUEST ? limit : MAX_REQUEST;
}

/* Choose the request sizes before mounting (max_read is a mount option).
 * Splicing pays more than large requests: where the pipe cannot hold a
 * whole MAX_REQUEST reply, reads come in the largest power of two that it
 * can hold, and the kernel's 1 MiB read-ahead sends several at once. */
void
fuse_ops_plan(struct export *exp)
{
  size_t limit = 0;

  if (!exp->opts->no_splice && fde_disk_can_map(exp->disk))
    limit = splice_limit();
  exp->max_read = MAX_REQUEST;
  exp->splice_max = 0;
  if (limit >= MIN_SPLICE_READ) {
    while (exp->max_read > limit)
      exp->max_read /= 2;
    exp->splice_max = exp->max_read;
  }
}

/** The kernel's FUSE_INIT: negotiate, then tell export_wait_live. */
static void
fde_init(void *userdata, struct fuse_conn_info *conn)
{
  struct export *exp = userdata;

  conn->max_write = MAX_REQUEST;
  conn->max_read = (unsigned) exp->max_read;  /* as the mount option says */
  conn->max_readahead = 1u << 20;
  conn->max_background = MAX_BACKGROUND;
  conn->congestion_threshold = MAX_BACKGROUND * 3 / 4;
  if (exp->splice_max > 0 && (conn->capable & FUSE_CAP_SPLICE_WRITE))
    conn->want |= FUSE_CAP_SPLICE_WRITE;
  else
    exp->splice_max = 0;
  pthread_mutex_lock(&exp->init_lock);
  exp->init_done = true;
  pthread_cond_broadcast(&exp->init_cond);
  pthread_mutex_unlock(&exp->init_lock);
}

/** A name in the -P directory: the file it names now (a new inode once
 * the table moved its partition); the single-file root has none. */
static void
fde_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
  struct export *exp = export_of(req);
  struct fuse_entry_param e;
  struct view_file *f;

  if (exp->dir == NULL || parent != FUSE_ROOT_ID) {
    fuse_reply_err(req, ENOTDIR);
    return;
  }
  if ((f = view_file_named(exp, name)) == NULL) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  memset(&e, 0, sizeof e);
  e.ino = f->ino;               /* never reused: generation 0 will do */
  e.attr_timeout = e.entry_timeout = DIR_FILE_TIMEOUT;
  fill_stat(exp, f, &e.attr);
  fuse_reply_entry(req, &e);
}

/** A file: size = virtual size, blocks = allocation; the image's owner. */
static void
fde_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  struct export *exp = export_of(req);
  struct view_file *f = view_file_of(exp, ino);
  struct stat st;

  if (f == NULL || view_file_gone(f)) {
    fuse_reply_err(req, f == NULL ? ENOENT : EIO);
    return;
  }
  fill_stat(exp, f, &st);
  fuse_reply_attr(req, &st, attr_timeout(exp, f));
}

/* Apply chmod/chown/utimens to f in memory; 0 or an errno. */
static int
apply_attrs(fuse_req_t req, struct export *exp, struct view_file *f,
            struct stat *attr, int to_set)
{
  if ((to_set & FUSE_SET_ATTR_MODE) && !fde_disk_can_write(exp->disk)
      && (attr->st_mode & 0222))
    return EROFS;
  if ((to_set & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID))
      && fuse_req_ctx(req)->uid != 0)
    return EPERM;
  pthread_mutex_lock(&exp->attr_lock);
  if (to_set & FUSE_SET_ATTR_MODE)
    f->mode = attr->st_mode & 07777;
  if (to_set & FUSE_SET_ATTR_UID)
    f->uid = attr->st_uid;
  if (to_set & FUSE_SET_ATTR_GID)
    f->gid = attr->st_gid;
  if (to_set & FUSE_SET_ATTR_ATIME)
    f->atim = attr->st_atim;
  if (to_set & FUSE_SET_ATTR_MTIME)
    f->mtim = attr->st_mtim;
  if (to_set & (FUSE_SET_ATTR_ATIME_NOW | FUSE_SET_ATTR_MTIME_NOW)) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    if (to_set & FUSE_SET_ATTR_ATIME_NOW)
      f->atim = now;
    if (to_set & FUSE_SET_ATTR_MTIME_NOW)
      f->mtim = now;
  }
  pthread_mutex_unlock(&exp->attr_lock);
  return 0;
}

/** A disk has a fixed size: truncating to any other size is refused. */
static void
fde_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
            struct fuse_file_info *fi)
{
  struct export *exp = export_of(req);
  struct view_file *f = view_file_of(exp, ino);
  struct stat st;
  int err = 0;

  if (f == NULL || view_file_gone(f))
    err = f == NULL ? ENOENT : EIO;
  else if ((to_set & FUSE_SET_ATTR_SIZE) && f->disk == NULL)
    err = EISDIR;
  else if ((to_set & FUSE_SET_ATTR_SIZE)
           && (uint64_t) attr->st_size != fde_disk_size(f->disk))
    err = fde_disk_can_write(exp->disk) ? EPERM : EROFS;
  if (err == 0)
    err = apply_attrs(req, exp, f, attr, to_set);
  if (err != 0) {
    fuse_reply_err(req, err);
    return;
  }
  fill_stat(exp, f, &st);
  fuse_reply_attr(req, &st, attr_timeout(exp, f));
}

/* One file of the view fewer is open; wake export_quiesce at zero. */
static void
open_file_gone(struct export *exp)
{
  pthread_mutex_lock(&exp->open_lock);
  if (exp->open_files > 0 && --exp->open_files == 0)
    pthread_cond_broadcast(&exp->open_cond);
  pthread_mutex_unlock(&exp->open_lock);
}

/** Writing is refused on a read-only export.  O_TRUNC is ignored, as a
 * block device ignores it: the disk keeps its size and contents.  In the
 * single-file view the page cache is kept across opens: this mount is the
 * only way to the data, and the kernel drops cached pages itself on
 * writes, punches and zeroing.  In the -P directory every file shows the
 * same bytes, and a write through one would leave the others' cached
 * pages stale: every file there is opened with direct_io (no page cache).
 * A file whose partition moved is refused with ESTALE, which makes the
 * kernel look the name up again.  Open files are counted, and refused
 * (EBUSY) once the revert has begun (export_quiesce). */
static void
fde_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  struct export *exp = export_of(req);
  struct view_file *f = view_file_of(exp, ino);
  bool reverting;

  if (f == NULL || f->disk == NULL || view_file_gone(f)) {
    fuse_reply_err(req, f == NULL ? ENOENT : f->disk == NULL ? EISDIR
                   : ESTALE);
    return;
  }
  if ((fi->flags & O_ACCMODE) != O_RDONLY && !fde_disk_can_write(f->disk)) {
    fuse_reply_err(req, EROFS);
    return;
  }
  if (exp->dir != NULL) {
    fi->direct_io = 1;
    fi->keep_cache = 0;
  }
  else
    fi->keep_cache = 1;
  /* A reader's close needs no FLUSH round trip: nothing to flush.  The
   * kernel's FLUSH request carries no open flags (libfuse passes 0), so
   * the access mode travels in fh: 1 for a descriptor that may write. */
  if ((fi->flags & O_ACCMODE) == O_RDONLY)
    fi->noflush = 1;
  fi->fh = (fi->flags & O_ACCMODE) != O_RDONLY;
  pthread_mutex_lock(&exp->open_lock);
  reverting = exp->reverting;
  if (!reverting)
    exp->open_files++;
  pthread_mutex_unlock(&exp->open_lock);
  if (reverting)
    fuse_reply_err(req, EBUSY);
  else if (fuse_reply_open(req, fi) != 0)   /* the open was interrupted */
    open_file_gone(exp);
}

/** The last close of an opened file: one fewer user of the view. */
static void
fde_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  open_file_gone(export_of(req));
  fuse_reply_err(req, 0);
}

/* Each worker thread keeps one read buffer of the largest request size,
 * so the read path neither mallocs nor faults in fresh pages per request
 * (a 1 MiB malloc is an mmap/munmap pair each time). */
static __thread char *worker_buf;
static pthread_once_t worker_buf_once = PTHREAD_ONCE_INIT;
static pthread_key_t worker_buf_key;  /* frees the buffer at thread exit */

static void
make_worker_buf_key(void)
{
  pthread_key_create(&worker_buf_key, free);
}

static char *
get_worker_buf(void)
{
  if (worker_buf == NULL) {
    pthread_once(&worker_buf_once, make_worker_buf_key);
    worker_buf = malloc(MAX_REQUEST);
    if (worker_buf != NULL)
      pthread_setspecific(worker_buf_key, worker_buf);
  }
  return worker_buf;
}

/* A read reply of up to MAX_SPLICE_BUFS pieces: ranges of image files,
 * spliced by the kernel from their page cache into the reply without
 * passing through us, and runs read into the worker buffer. */
struct read_reply {
  struct fuse_bufvec vec;                       /* holds piece 0 */
  struct fuse_buf more[MAX_SPLICE_BUFS - 1];    /* must follow vec */
  bool spliced;                                 /* some piece is a file range */
};

/* Keep a file range the backend named (run bytes at host of fd) inside
 * the file as it is now: a file can shrink under the view (its owner
 * truncates a backing file; the disk keeps its size), and a splice past
 * its end would come back short, which the kernel takes for the end of
 * the view and shrinks it.  Shortens *run to what the file holds; false
 * when none of it is there (or fstat fails): pread, which reads zeros
 * past the end as QEMU does, takes the run instead. */
static bool
inside_file(int fd, uint64_t host, uint64_t *run)
{
  struct stat st;
  uint64_t end;

  if (fstat(fd, &st) == -1)
    return false;
  if (!S_ISREG(st.st_mode))
    return true;                /* a block device keeps its size */
  end = st.st_size > 0 ? (uint64_t) st.st_size : 0;
  if (host >= end)
    return false;
  if (*run > end - host)
    *run = end - host;
  return true;
}

/* Append the run of len bytes at disk offset pos (buffer offset at) to
 * rep: a file range when the backend can name one, else read into buf.
 * The last piece takes whatever is left.  Stores the run length. */
static int
add_piece(struct fde_disk *d, struct read_reply *rep, char *buf, size_t at,
          uint64_t pos, size_t len, size_t *done)
{
  struct fuse_buf *b = rep->vec.buf + rep->vec.count;  /* into more[] */
  uint64_t host, run = len;
  int fd = -1, r = 0;

  if (rep->vec.count < MAX_SPLICE_BUFS - 1
      && (r = d->format->map(d, pos, len, &fd, &host, &run)) < 0)
    return r;
  if (r == 1 && !inside_file(fd, host, &run))
    r = 0;
  if (r == 1) {
    *b = (struct fuse_buf) { .size = run, .fd = fd, .pos = (off_t) host,
                             .flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK };
    rep->spliced = true;
  } else if ((r = d->format->pread(d, buf + at, run, pos)) < 0) {
    return r;
  } else if (rep->vec.count > 0 && b[-1].mem == buf + at - b[-1].size) {
    b[-1].size += run;          /* extend the previous memory piece */
    rep->vec.count--;
  } else {
    *b = (struct fuse_buf) { .size = run, .mem = buf + at };
  }
  rep->vec.count++;
  *done = run;
  return 0;
}

/* Answer a read of d with splice where the backend allows it; reads too
 * small to gain (libfuse copies those anyway) or too large for the pipe
 * are copied through buf. */
static void
reply_read(fuse_req_t req, struct export *exp, struct fde_disk *d, char *buf,
           size_t size, uint64_t off)
{
  struct read_reply rep = { .vec = FUSE_BUFVEC_INIT(0) };
  size_t at = 0, run;
  unsigned token = 0;
  int r = 0;

  if (size < 2 * SPLICE_MIN_PAGE || size > exp->splice_max) {
    r = d->format->pread(d, buf, size, off);
    if (r < 0)
      fuse_reply_err(req, -r);
    else
      fuse_reply_buf(req, buf, size);
    return;
  }
  rep.vec.count = 0;
  /* The file ranges are read by fuse_reply_data, after map returned:
   * the backend must not reuse them for other data until then. */
  if (d->format->io_begin != NULL)
    token = d->format->io_begin(d);
  while (at < size && r == 0) {
    r = add_piece(d, &rep, buf, at, off + at, size - at, &run);
    at += run;
  }
  if (r < 0)
    fuse_reply_err(req, -r);
  else if (!rep.spliced)
    fuse_reply_buf(req, buf, size);
  else
    fuse_reply_data(req, &rep.vec, 0);
  if (d->format->io_end != NULL)
    d->format->io_end(d, token);
}

/** Read from the backend; short at the end of the disk. */
static void
fde_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
         struct fuse_file_info *fi)
{
  struct view_file *f = file_or_reply(req, ino);
  uint64_t disk_size;
  char *buf = get_worker_buf();

  if (f == NULL)
    return;
  disk_size = fde_disk_size(f->disk);
  if (off < 0 || (uint64_t) off >= disk_size) {
    fuse_reply_buf(req, NULL, 0);
    return;
  }
  size = (size_t) min_u64(size, disk_size - (uint64_t) off);
  if (buf == NULL || size > MAX_REQUEST) {
    fuse_reply_err(req, buf == NULL ? ENOMEM : EINVAL);
    return;
  }
  reply_read(req, export_of(req), f->disk, buf, size, (uint64_t) off);
}

/* Write (buf) or zero (buf NULL) [off, off+len) on f's disk, zeroing as
 * the disk can (fde_disk_zero emulates what it cannot).  A write through
 * any file of the -P directory that touches the bytes the partition
 * table was read from may change it: the next flush or fsync reads it
 * again. */
static int
update(struct export *exp, struct view_file *f, const void *buf,
       uint64_t len, uint64_t off, bool punch)
{
  struct fde_disk *d = f->disk;
  int r;

  if (buf != NULL)
    r = d->format->pwrite(d, buf, (size_t) len, off);
  else
    r = fde_disk_zero(d, off, len, punch ? FDE_ZERO_PUNCH : 0);
  /* after the write (failed or not: part of it may have landed), so that
   * a rescan that ran meanwhile cannot have taken the mark for bytes it
   * did not see */
  view_files_written(exp, f, off, len);
  return r;
}

/** Write; a write starting at or past the end gets ENOSPC, as on a disk. */
static void
fde_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size,
          off_t off, struct fuse_file_info *fi)
{
  struct view_file *f = file_or_reply(req, ino);
  uint64_t disk_size;
  int r;

  if (f == NULL)
    return;
  if (!fde_disk_can_write(f->disk)) {
    fuse_reply_err(req, EROFS);
    return;
  }
  disk_size = fde_disk_size(f->disk);
  if (off < 0 || (uint64_t) off >= disk_size) {
    /* A write reply carries a count: an empty write succeeds with 0. */
    if (size == 0 && off >= 0)
      fuse_reply_write(req, 0);
    else
      fuse_reply_err(req, off < 0 ? EINVAL : ENOSPC);
    return;
  }
  size = (size_t) min_u64(size, disk_size - (uint64_t) off);
  r = update(export_of(req), f, buf, size, (uint64_t) off, false);
  if (r < 0)
    fuse_reply_err(req, -r);
  else
    fuse_reply_write(req, size);
}

/* Flush f's disk (every file's: they share it); then, in the -P
 * directory, read the partition table again if a write touched it.  A
 * file whose partition is gone (now, or by this very rescan) still
 * flushes (what it wrote went to the disk) but gets EIO.  0 or an errno. */
static int
flush_file(fuse_req_t req, fuse_ino_t ino)
{
  struct export *exp = export_of(req);
  struct view_file *f = view_file_of(exp, ino);
  int r;

  if (f == NULL || f->disk == NULL)
    return f == NULL ? ENOENT : EISDIR;
  r = fde_disk_can_write(f->disk) ? f->disk->format->flush(f->disk) : 0;
  view_files_rescan(exp);       /* after a failed flush too */
  return r < 0 ? -r : view_file_gone(f) ? EIO : 0;
}

/** close(): make the writes durable before the last close returns.  A
 * descriptor opened for reading wrote nothing, and must not be told about
 * another writer's failure (say, ENOSPC). */
static void
fde_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  if (fi->fh == 0) {            /* opened read-only (see fde_open) */
    fuse_reply_err(req, 0);
    return;
  }
  fuse_reply_err(req, flush_file(req, ino));
}

/** fsync/fdatasync: everything acknowledged reaches stable storage. */
static void
fde_fsync(fuse_req_t req, fuse_ino_t ino, int datasync,
          struct fuse_file_info *fi)
{
  fuse_reply_err(req, flush_file(req, ino));
}

/** PUNCH_HOLE|KEEP_SIZE and ZERO_RANGE: the range reads back as zeros. */
static void
fde_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off,
              off_t length, struct fuse_file_info *fi)
{
  struct view_file *f = file_or_reply(req, ino);
  bool punch = mode == (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE);
  bool zero = (mode & ~FALLOC_FL_KEEP_SIZE) == FALLOC_FL_ZERO_RANGE;
  uint64_t size;
  int r;

  if (f == NULL)
    return;
  size = fde_disk_size(f->disk);
  if (!punch && !zero) {
    fuse_reply_err(req, EOPNOTSUPP);
    return;
  }
  if (!fde_disk_can_write(f->disk)) {
    fuse_reply_err(req, EROFS);
    return;
  }
  if (off < 0 || length <= 0) {
    fuse_reply_err(req, EINVAL);
    return;
  }
  if ((uint64_t) off >= size) {
    fuse_reply_err(req, 0);
    return;
  }
  r = update(export_of(req), f, NULL,
             min_u64((uint64_t) length, size - (uint64_t) off), (uint64_t) off,
             punch);
  fuse_reply_err(req, -r);
}

/* Is the run at off of d (size bytes) a hole (reads as zeros, nothing
 * allocated)?  Stores the run length.  0 or -errno. */
static int
hole_run(struct fde_disk *d, uint64_t size, uint64_t off, bool *hole,
         uint64_t *run)
{
  unsigned status;
  int r = d->format->block_status(d, off, size - off, run, &status);

  if (r < 0)
    return r;
  if (*run == 0)
    *run = size - off;          /* a backend must advance; never loop */
  *hole = (status & FDE_BS_ZERO) || !(status & FDE_BS_DATA);
  return 0;
}

/* How long one SEEK_DATA/SEEK_HOLE may walk the allocation tables, in
 * nanoseconds.  A hostile image can make every run short and every
 * lookup read a table (VMDK grain directories cycling over more grain
 * tables than the cache holds, 8 Mi entries of them): walking 2 TiB of
 * it took 78 s, with the caller's process blocked in the kernel.  Past
 * the budget the answer is the safe one lseek(2) allows, "data here"
 * (every hole may be reported as data): SEEK_DATA returns the position
 * reached, SEEK_HOLE the end of the disk. */
#define LSEEK_BUDGET_NS (INT64_C(2) * 1000000000)

static int64_t
monotonic_ns(void)
{
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t) ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/** SEEK_DATA and SEEK_HOLE from the backend's allocation status. */
static void
fde_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
          struct fuse_file_info *fi)
{
  struct view_file *f = file_or_reply(req, ino);
  struct fde_disk *d;
  uint64_t pos = (uint64_t) off, run, size;
  int64_t deadline = monotonic_ns() + LSEEK_BUDGET_NS;
  bool hole;

  if (f == NULL)
    return;
  d = f->disk;
  size = fde_disk_size(d);
  if (whence != SEEK_DATA && whence != SEEK_HOLE) {
    fuse_reply_err(req, EINVAL);
    return;
  }
  if (off < 0 || pos >= size) {
    fuse_reply_err(req, ENXIO);
    return;
  }
  while (pos < size) {
    int r = hole_run(d, size, pos, &hole, &run);
    if (r < 0) {
      fuse_reply_err(req, -r);
      return;
    }
    if (hole == (whence == SEEK_HOLE)) {
      fuse_reply_lseek(req, (off_t) pos);
      return;
    }
    pos += run;
    if (pos < size && monotonic_ns() > deadline)
      break;                    /* out of budget: "data at pos" */
  }
  if (pos < size && whence == SEEK_DATA)
    fuse_reply_lseek(req, (off_t) pos);
  else if (whence == SEEK_HOLE)
    fuse_reply_lseek(req, (off_t) size);
  else
    fuse_reply_err(req, ENXIO);
}

/** df on the view: the disk's size, used = allocated (the whole disk's
 * in the -P directory). */
static void
fde_statfs(fuse_req_t req, fuse_ino_t ino)
{
  struct fde_disk *d = export_of(req)->disk;
  uint64_t used = d->format->allocated_bytes(d);
  struct statvfs sv;

  memset(&sv, 0, sizeof sv);
  sv.f_bsize = 4096;
  sv.f_frsize = 512;
  sv.f_blocks = d->size / 512;
  sv.f_bfree = sv.f_bavail = used < d->size ? (d->size - used) / 512 : 0;
  sv.f_files = 1;
  sv.f_namemax = 255;
  fuse_reply_statfs(req, &sv);
}

/* One entry of the -P directory into buf (size bytes, pos used): its
 * offset is its key, which stays the same whatever the table does, so a
 * listing read in several parts neither repeats nor skips a file that
 * stays.  false when it does not fit. */
static bool
add_entry(fuse_req_t req, char *buf, size_t size, size_t *pos,
          const char *name, fuse_ino_t ino, mode_t type, off_t key)
{
  struct stat st = { .st_ino = ino, .st_mode = type };
  size_t n = fuse_add_direntry(req, buf + *pos, size - *pos, name, &st, key);

  if (n > size - *pos)
    return false;
  *pos += n;
  return true;
}

/** The -P directory: ".", "..", disk, then the partitions by number. */
static void
fde_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
            struct fuse_file_info *fi)
{
  struct export *exp = export_of(req);
  struct view_file *files[VIEW_MAX_FILES];
  size_t n, pos = 0;
  char *buf;
  bool fits = true;

  if (exp->dir == NULL || ino != FUSE_ROOT_ID) {
    fuse_reply_err(req, ENOTDIR);
    return;
  }
  if ((buf = malloc(size)) == NULL) {
    fuse_reply_err(req, ENOMEM);
    return;
  }
  /* keys: "." 1, ".." 2, disk 3, pN 3 + N */
  if (off < 1)
    fits = add_entry(req, buf, size, &pos, ".", FUSE_ROOT_ID, S_IFDIR, 1);
  if (fits && off < 2)
    fits = add_entry(req, buf, size, &pos, "..", FUSE_ROOT_ID, S_IFDIR, 2);
  n = view_files_now(exp, files, VIEW_MAX_FILES);
  for (size_t i = 0; fits && i < n; i++) {
    off_t key = 3 + (off_t) files[i]->partno;
    if (key > off)
      fits = add_entry(req, buf, size, &pos, files[i]->name, files[i]->ino,
                       S_IFREG, key);
  }
  fuse_reply_buf(req, buf, pos);
  free(buf);
}

/** The -P directory's names are the table's: nothing is created, removed,
 * renamed or linked there by hand ("Operation not permitted", as in a
 * directory one may not write, rather than "Function not implemented"). */
static void
refuse_name(fuse_req_t req)
{
  fuse_reply_err(req, EPERM);
}

static void
fde_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
          dev_t rdev)
{
  refuse_name(req);
}

static void
fde_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
  refuse_name(req);
}

static void
fde_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
  refuse_name(req);
}

static void
fde_symlink(fuse_req_t req, const char *link, fuse_ino_t parent,
            const char *name)
{
  refuse_name(req);
}

static void
fde_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
           fuse_ino_t newparent, const char *newname, unsigned int flags)
{
  refuse_name(req);
}

static void
fde_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent,
         const char *newname)
{
  refuse_name(req);
}

static void
fde_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
           struct fuse_file_info *fi)
{
  refuse_name(req);
}

const struct fuse_lowlevel_ops fde_fuse_ops = {
  .init      = fde_init,
  .lookup    = fde_lookup,
  .readdir   = fde_readdir,
  .mknod     = fde_mknod,
  .mkdir     = fde_mkdir,
  .unlink    = fde_unlink,
  .rmdir     = fde_unlink,
  .symlink   = fde_symlink,
  .rename    = fde_rename,
  .link      = fde_link,
  .create    = fde_create,
  .getattr   = fde_getattr,
  .setattr   = fde_setattr,
  .open      = fde_open,
  .release   = fde_release,
  .read      = fde_read,
  .write     = fde_write,
  .flush     = fde_flush,
  .fsync     = fde_fsync,
  .fallocate = fde_fallocate,
  .lseek     = fde_lseek,
  .statfs    = fde_statfs,
};
const size_t fde_fuse_ops_size = sizeof fde_fuse_ops;
