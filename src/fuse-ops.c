/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: the FUSE low-level operations of a single-file
 * filesystem whose root is the raw view of one disk: a backend, or the
 * top of a stack of layers (formats/layer.h: a partition window, the
 * sector-0 guard), served alike.  Every handler replies exactly once;
 * backend errors (negative errno) are converted here and nowhere else. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "internal.h"

#define ATTR_TIMEOUT 1.0
#define MAX_REQUEST (1u << 20)  /* max_read and max_write */
#define MAX_SPLICE_BUFS 16      /* pieces in one spliced read reply */
#define SPLICE_MIN_PAGE 4096    /* libfuse copies replies under two pages */
#define MIN_SPLICE_READ (128u << 10)  /* below: copy 1 MiB requests instead */

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

static void
fill_stat(struct export *exp, struct stat *st)
{
  struct fde_disk *d = exp->disk;

  memset(st, 0, sizeof *st);
  st->st_ino = FUSE_ROOT_ID;
  st->st_nlink = 1;
  st->st_size = (off_t) d->size;
  st->st_blksize = 4096;
  st->st_blocks = (blkcnt_t) (d->format->allocated_bytes(d) / 512);
  pthread_mutex_lock(&exp->attr_lock);
  st->st_mode = S_IFREG | exp->mode;
  st->st_uid = exp->image_st.st_uid;
  st->st_gid = exp->image_st.st_gid;
  st->st_atim = exp->image_st.st_atim;
  st->st_mtim = exp->image_st.st_mtim;
  st->st_ctim = exp->image_st.st_ctim;
  pthread_mutex_unlock(&exp->attr_lock);
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

  if (!exp->opts->no_splice && exp->disk->format->map != NULL)
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
  if (exp->splice_max > 0 && (conn->capable & FUSE_CAP_SPLICE_WRITE))
    conn->want |= FUSE_CAP_SPLICE_WRITE;
  else
    exp->splice_max = 0;
  pthread_mutex_lock(&exp->init_lock);
  exp->init_done = true;
  pthread_cond_broadcast(&exp->init_cond);
  pthread_mutex_unlock(&exp->init_lock);
}

/** The root is a file: there is nothing to look up. */
static void
fde_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
  fuse_reply_err(req, ENOTDIR);
}

/** Size = virtual size; blocks = host allocation; the image's owner. */
static void
fde_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  struct stat st;

  fill_stat(export_of(req), &st);
  fuse_reply_attr(req, &st, ATTR_TIMEOUT);
}

/* Apply chmod/chown/utimens in memory; 0 or an errno. */
static int
apply_attrs(fuse_req_t req, struct export *exp, struct stat *attr, int to_set)
{
  if ((to_set & FUSE_SET_ATTR_MODE) && exp->disk->read_only
      && (attr->st_mode & 0222))
    return EROFS;
  if ((to_set & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID))
      && fuse_req_ctx(req)->uid != 0)
    return EPERM;
  pthread_mutex_lock(&exp->attr_lock);
  if (to_set & FUSE_SET_ATTR_MODE)
    exp->mode = attr->st_mode & 07777;
  if (to_set & FUSE_SET_ATTR_UID)
    exp->image_st.st_uid = attr->st_uid;
  if (to_set & FUSE_SET_ATTR_GID)
    exp->image_st.st_gid = attr->st_gid;
  if (to_set & FUSE_SET_ATTR_ATIME)
    exp->image_st.st_atim = attr->st_atim;
  if (to_set & FUSE_SET_ATTR_MTIME)
    exp->image_st.st_mtim = attr->st_mtim;
  if (to_set & (FUSE_SET_ATTR_ATIME_NOW | FUSE_SET_ATTR_MTIME_NOW)) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    if (to_set & FUSE_SET_ATTR_ATIME_NOW)
      exp->image_st.st_atim = now;
    if (to_set & FUSE_SET_ATTR_MTIME_NOW)
      exp->image_st.st_mtim = now;
  }
  pthread_mutex_unlock(&exp->attr_lock);
  return 0;
}

/** The disk has a fixed size: truncating to any other size is refused. */
static void
fde_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
            struct fuse_file_info *fi)
{
  struct export *exp = export_of(req);
  struct stat st;
  int err = 0;

  if ((to_set & FUSE_SET_ATTR_SIZE)
      && (uint64_t) attr->st_size != exp->disk->size)
    err = exp->disk->read_only ? EROFS : EPERM;
  if (err == 0)
    err = apply_attrs(req, exp, attr, to_set);
  if (err != 0) {
    fuse_reply_err(req, err);
    return;
  }
  fill_stat(exp, &st);
  fuse_reply_attr(req, &st, ATTR_TIMEOUT);
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
 * block device ignores it: the disk keeps its size and contents.  The page
 * cache is kept across opens: this mount is the only way to the data, and
 * the kernel drops cached pages itself on writes, punches and zeroing.
 * Open files are counted, and refused (EBUSY) once the revert has begun
 * (export_quiesce). */
static void
fde_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  struct export *exp = export_of(req);
  bool reverting;

  if ((fi->flags & O_ACCMODE) != O_RDONLY && exp->disk->read_only) {
    fuse_reply_err(req, EROFS);
    return;
  }
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

/* Answer a read with splice where the backend allows it; reads too small
 * to gain (libfuse copies those anyway) or too large for the pipe are
 * copied through buf. */
static void
reply_read(fuse_req_t req, struct export *exp, char *buf, size_t size,
           uint64_t off)
{
  struct fde_disk *d = exp->disk;
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
  struct export *exp = export_of(req);
  uint64_t disk_size = exp->disk->size;
  char *buf = get_worker_buf();

  if (off < 0 || (uint64_t) off >= disk_size) {
    fuse_reply_buf(req, NULL, 0);
    return;
  }
  size = (size_t) min_u64(size, disk_size - (uint64_t) off);
  if (buf == NULL || size > MAX_REQUEST) {
    fuse_reply_err(req, buf == NULL ? ENOMEM : EINVAL);
    return;
  }
  reply_read(req, exp, buf, size, (uint64_t) off);
}

/* Write (buf) or zero (buf NULL) [off, off+len) on the disk. */
static int
update(struct export *exp, const void *buf, uint64_t len, uint64_t off,
       bool punch)
{
  struct fde_disk *d = exp->disk;

  if (buf != NULL)
    return d->format->pwrite(d, buf, (size_t) len, off);
  return d->format->zero(d, off, len, punch);
}

/** Write; a write starting at or past the end gets ENOSPC, as on a disk. */
static void
fde_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size,
          off_t off, struct fuse_file_info *fi)
{
  struct export *exp = export_of(req);
  uint64_t disk_size = exp->disk->size;
  int r;

  if (exp->disk->read_only) {
    fuse_reply_err(req, EROFS);
    return;
  }
  if (off < 0 || (uint64_t) off >= disk_size) {
    /* A write reply carries a count: an empty write succeeds with 0. */
    if (size == 0 && off >= 0)
      fuse_reply_write(req, 0);
    else
      fuse_reply_err(req, off < 0 ? EINVAL : ENOSPC);
    return;
  }
  size = (size_t) min_u64(size, disk_size - (uint64_t) off);
  r = update(exp, buf, size, (uint64_t) off, false);
  if (r < 0)
    fuse_reply_err(req, -r);
  else
    fuse_reply_write(req, size);
}

static int
flush_disk(struct export *exp)
{
  if (exp->disk->read_only)
    return 0;
  return exp->disk->format->flush(exp->disk);
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
  fuse_reply_err(req, -flush_disk(export_of(req)));
}

/** fsync/fdatasync: everything acknowledged reaches stable storage. */
static void
fde_fsync(fuse_req_t req, fuse_ino_t ino, int datasync,
          struct fuse_file_info *fi)
{
  fuse_reply_err(req, -flush_disk(export_of(req)));
}

/** PUNCH_HOLE|KEEP_SIZE and ZERO_RANGE: the range reads back as zeros. */
static void
fde_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off,
              off_t length, struct fuse_file_info *fi)
{
  struct export *exp = export_of(req);
  uint64_t size = exp->disk->size;
  bool punch = mode == (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE);
  bool zero = (mode & ~FALLOC_FL_KEEP_SIZE) == FALLOC_FL_ZERO_RANGE;
  int r;

  if (!punch && !zero) {
    fuse_reply_err(req, EOPNOTSUPP);
    return;
  }
  if (exp->disk->read_only) {
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
  r = update(exp, NULL, min_u64((uint64_t) length, size - (uint64_t) off),
             (uint64_t) off, punch);
  fuse_reply_err(req, -r);
}

/* Is the run at off a hole (reads as zeros, nothing allocated)?  Stores
 * the run length.  0 or -errno. */
static int
hole_run(struct fde_disk *d, uint64_t off, bool *hole, uint64_t *run)
{
  unsigned status;
  int r = d->format->block_status(d, off, d->size - off, run, &status);

  if (r < 0)
    return r;
  if (*run == 0)
    *run = d->size - off;       /* a backend must advance; never loop */
  *hole = (status & FDE_BS_ZERO) || !(status & FDE_BS_DATA);
  return 0;
}

/** SEEK_DATA and SEEK_HOLE from the backend's allocation status. */
static void
fde_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
          struct fuse_file_info *fi)
{
  struct fde_disk *d = export_of(req)->disk;
  uint64_t pos = (uint64_t) off, run;
  bool hole;

  if (whence != SEEK_DATA && whence != SEEK_HOLE) {
    fuse_reply_err(req, EINVAL);
    return;
  }
  if (off < 0 || pos >= d->size) {
    fuse_reply_err(req, ENXIO);
    return;
  }
  while (pos < d->size) {
    int r = hole_run(d, pos, &hole, &run);
    if (r < 0) {
      fuse_reply_err(req, -r);
      return;
    }
    if (hole == (whence == SEEK_HOLE)) {
      fuse_reply_lseek(req, (off_t) pos);
      return;
    }
    pos += run;
  }
  if (whence == SEEK_HOLE)
    fuse_reply_lseek(req, (off_t) d->size);
  else
    fuse_reply_err(req, ENXIO);
}

/** df on the view: the disk's size, used = allocated. */
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

const struct fuse_lowlevel_ops fde_fuse_ops = {
  .init      = fde_init,
  .lookup    = fde_lookup,
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
