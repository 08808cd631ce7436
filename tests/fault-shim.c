/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export tests: an LD_PRELOAD library that makes chosen I/O
 * calls on one file fail, so that a test can inject faults into the
 * daemon end to end (tests/faults.bats).
 *
 * The file is named once, at load, by FDE_FAULT_FILE: its device and
 * inode are recorded and every later call is matched by what its
 * descriptor refers to (fstat), never by a name looked up again.  The
 * daemon's view is mounted on that very path, so a name would soon mean
 * the view.
 *
 * Wrapped: pread/pread64/preadv, pwrite/pwrite64/pwritev/pwritev2,
 * copy_file_range, fdatasync/fsync, fallocate/fallocate64,
 * ftruncate/ftruncate64 (on x86-64 the ...64 names are aliases).  A
 * copy_file_range into the file is one of its pwrites, one out of it
 * (into another file) one of its preads.  The program imports pread,
 * pwrite, pwritev, copy_file_range, fdatasync, fallocate and ftruncate
 * today; tests/faults.bats fails if it ever imports an I/O call this file
 * does not wrap (nm -D).  Calls on other descriptors pass through
 * untouched.
 *
 * What fails is read from the control file FDE_FAULT_CTL on every call
 * on the file (a test rewrites it, by rename, to arm and disarm faults
 * while the daemon runs):
 *
 *     GEN OP NTH ERRNO [COUNT]
 *
 *   GEN    any word; when it changes, counting starts again from 0
 *   OP     pwrite, pread, sync (fdatasync, fsync), fallocate, ftruncate,
 *          write (pwrite, fallocate, ftruncate), or any (all of them)
 *   NTH    the NTH matching call after arming is the first to fail;
 *          0 fails none (the calls are only counted and logged)
 *   ERRNO  EIO, ENOSPC, EDQUOT, EROFS, or a number
 *   COUNT  how many matching calls fail from the NTH on (default 1;
 *          0: every one until the file changes)
 *
 * A missing or empty control file arms nothing.  Without FDE_FAULT_CTL,
 * the spec comes from FDE_FAULT_OP, FDE_FAULT_NTH, FDE_FAULT_ERRNO and
 * FDE_FAULT_COUNT, counted from load.  A failed call does nothing and
 * returns -1 with errno set: a write that did not happen, a sync whose
 * data may not be on disk.
 *
 * If FDE_FAULT_LOG names a file, every call on the file is appended to
 * it as one line "GEN SEQ OP FUNCTION LENGTH OFFSET RESULT": GEN is "-"
 * while nothing is armed, SEQ counts the calls that matched OP since
 * arming (0 for one that did not), RESULT is the return value or -ERRNO,
 * followed by "injected" for an injected fault.
 *
 * Thread safety: the daemon serves from several threads; the counters are
 * kept under one mutex, which is never held across the real call.  Files
 * are opened and closed per call (nothing stays open in the daemon, whose
 * descriptors may be closed under us when it daemonizes), with plain
 * open/read/write/close and snprintf: no stdio stream, no allocation. */
#include <config.h>

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

enum op_class {
  OP_PREAD = 1, OP_PWRITE = 2, OP_SYNC = 4, OP_FALLOCATE = 8,
  OP_FTRUNCATE = 16,
  OP_WRITE = OP_PWRITE | OP_FALLOCATE | OP_FTRUNCATE,
  OP_ANY = 31,
};

struct spec {
  char gen[64];
  unsigned ops;                 /* 0: disarmed */
  unsigned long nth, count;
  int err;
};

static dev_t target_dev;
static ino_t target_ino;
static bool have_target;
static const char *ctl_path, *log_path;
static struct spec env_spec;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char seen_gen[64];       /* the spec being counted */
static unsigned long seen_calls;

static ssize_t (*real_pread)(int, void *, size_t, off_t);
static ssize_t (*real_pread64)(int, void *, size_t, off64_t);
static ssize_t (*real_preadv)(int, const struct iovec *, int, off_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off64_t);
static ssize_t (*real_pwritev)(int, const struct iovec *, int, off_t);
static ssize_t (*real_pwritev2)(int, const struct iovec *, int, off_t, int);
static ssize_t (*real_copy_file_range)(int, off64_t *, int, off64_t *,
                                      size_t, unsigned);
static int (*real_fdatasync)(int);
static int (*real_fsync)(int);
static int (*real_fallocate)(int, int, off_t, off_t);
static int (*real_fallocate64)(int, int, off64_t, off64_t);
static int (*real_ftruncate)(int, off_t);
static int (*real_ftruncate64)(int, off64_t);

static void *
next(const char *name)
{
  return dlsym(RTLD_NEXT, name);
}


static unsigned
parse_op(const char *s)
{
  static const struct { const char *name; unsigned ops; } names[] = {
    { "pread", OP_PREAD }, { "pwrite", OP_PWRITE }, { "sync", OP_SYNC },
    { "fdatasync", OP_SYNC }, { "fsync", OP_SYNC },
    { "fallocate", OP_FALLOCATE }, { "ftruncate", OP_FTRUNCATE },
    { "write", OP_WRITE }, { "any", OP_ANY },
  };

  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (strcmp(s, names[i].name) == 0)
      return names[i].ops;
  return 0;
}

static int
parse_errno(const char *s)
{
  if (strcmp(s, "EIO") == 0) return EIO;
  if (strcmp(s, "ENOSPC") == 0) return ENOSPC;
  if (strcmp(s, "EDQUOT") == 0) return EDQUOT;
  if (strcmp(s, "EROFS") == 0) return EROFS;
  int e = atoi(s);
  return e > 0 ? e : EIO;
}

/* Fill sp from the words "GEN OP NTH ERRNO [COUNT]"; false if malformed. */
static bool
parse_spec(char *text, struct spec *sp)
{
  char *save = NULL, *w[5] = { 0 };
  int n = 0;

  for (char *t = strtok_r(text, " \t\n", &save); t != NULL && n < 5;
       t = strtok_r(NULL, " \t\n", &save))
    w[n++] = t;
  if (n < 4)
    return false;
  snprintf(sp->gen, sizeof sp->gen, "%s", w[0]);
  sp->ops = parse_op(w[1]);
  sp->nth = strtoul(w[2], NULL, 10);
  sp->err = parse_errno(w[3]);
  sp->count = n == 5 ? strtoul(w[4], NULL, 10) : 1;
  return sp->ops != 0;
}

/* The spec in force now (the control file, re-read each time). */
static void
current_spec(struct spec *sp)
{
  char buf[256];
  ssize_t n = 0;
  int fd;

  memset(sp, 0, sizeof *sp);
  if (ctl_path == NULL) {
    *sp = env_spec;
    return;
  }
  fd = open(ctl_path, O_RDONLY | O_CLOEXEC);
  if (fd == -1)
    return;
  n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0)
    return;
  buf[n] = '\0';
  if (!parse_spec(buf, sp))
    memset(sp, 0, sizeof *sp);
}

static void
log_call(const char *gen, unsigned long seq, const char *op, const char *fn,
         unsigned long long len, long long off, long long result,
         bool injected)
{
  char line[256];
  int n, fd;

  if (log_path == NULL)
    return;
  n = snprintf(line, sizeof line, "%s %lu %s %s %llu %lld %lld%s\n",
               gen[0] ? gen : "-", seq, op, fn, len, off, result,
               injected ? " injected" : "");
  if (n <= 0 || (size_t) n >= sizeof line)
    return;
  fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd == -1)
    return;
  if (write(fd, line, (size_t) n) != n) {
    /* nothing to do: the log is for the test's eyes */
  }
  close(fd);
}

static bool
is_target(int fd)
{
  struct stat st;

  return have_target && fstat(fd, &st) == 0 && st.st_dev == target_dev
    && st.st_ino == target_ino;
}

/* One call on the target: count it, and decide whether it fails.  Stores
 * the errno to inject in *err (0: let it through), the spec's generation
 * in gen and the call's number in *seq. */
static void
decide(unsigned op, int *err, char *gen, unsigned long *seq)
{
  struct spec sp;

  current_spec(&sp);
  pthread_mutex_lock(&lock);
  if (strcmp(sp.gen, seen_gen) != 0) {
    memcpy(seen_gen, sp.gen, sizeof seen_gen);
    seen_calls = 0;
  }
  *err = 0;
  *seq = 0;
  if (sp.ops & op) {
    *seq = ++seen_calls;
    if (sp.nth > 0 && *seq >= sp.nth
        && (sp.count == 0 || *seq < sp.nth + sp.count))
      *err = sp.err;
  }
  pthread_mutex_unlock(&lock);
  memcpy(gen, sp.gen, sizeof sp.gen);
}

static const char *
op_name(unsigned op)
{
  switch (op) {
  case OP_PREAD: return "pread";
  case OP_PWRITE: return "pwrite";
  case OP_SYNC: return "sync";
  case OP_FALLOCATE: return "fallocate";
  default: return "ftruncate";
  }
}

/* The body of every wrapper: CALL is the real call, evaluated only when no
 * fault is injected; its result must be a long long. */
#define WRAP(fd, op, fn, len, off, call)                                \
  do {                                                                  \
    char gen_[64];                                                      \
    unsigned long seq_;                                                 \
    int err_, saved_;                                                   \
    long long r_;                                                       \
    pthread_once(&resolve_once, resolve);                               \
    if (!is_target(fd))                                                 \
      return call;                                                      \
    decide(op, &err_, gen_, &seq_);                                     \
    if (err_ != 0) {                                                    \
      log_call(gen_, seq_, op_name(op), fn, len, off, -err_, true);     \
      errno = err_;                                                     \
      return -1;                                                        \
    }                                                                   \
    r_ = call;                                                          \
    saved_ = errno;                                                     \
    log_call(gen_, seq_, op_name(op), fn, len, off,                     \
             r_ < 0 ? -saved_ : r_, false);                             \
    errno = saved_;                                                     \
    return r_;                                                          \
  } while (0)

static size_t
iov_bytes(const struct iovec *iov, int n)
{
  size_t sum = 0;

  for (int i = 0; i < n; i++)
    sum += iov[i].iov_len;
  return sum;
}

/* The real functions, looked up once, before the first call through any
 * wrapper (another library's constructor may do I/O before ours runs). */
static pthread_once_t resolve_once = PTHREAD_ONCE_INIT;

static void
resolve(void)
{
  real_pread = next("pread");
  real_pread64 = next("pread64");
  real_preadv = next("preadv");
  real_pwrite = next("pwrite");
  real_pwrite64 = next("pwrite64");
  real_pwritev = next("pwritev");
  real_pwritev2 = next("pwritev2");
  real_copy_file_range = next("copy_file_range");
  real_fdatasync = next("fdatasync");
  real_fsync = next("fsync");
  real_fallocate = next("fallocate");
  real_fallocate64 = next("fallocate64");
  real_ftruncate = next("ftruncate");
  real_ftruncate64 = next("ftruncate64");
}

__attribute__((constructor)) static void
fault_shim_init(void)
{
  const char *file = getenv("FDE_FAULT_FILE");
  struct stat st;

  pthread_once(&resolve_once, resolve);
  ctl_path = getenv("FDE_FAULT_CTL");
  log_path = getenv("FDE_FAULT_LOG");
  if (ctl_path == NULL && getenv("FDE_FAULT_OP") != NULL) {
    char buf[200];
    snprintf(buf, sizeof buf, "env %s %s %s %s", getenv("FDE_FAULT_OP"),
             getenv("FDE_FAULT_NTH") ? getenv("FDE_FAULT_NTH") : "1",
             getenv("FDE_FAULT_ERRNO") ? getenv("FDE_FAULT_ERRNO") : "EIO",
             getenv("FDE_FAULT_COUNT") ? getenv("FDE_FAULT_COUNT") : "1");
    if (!parse_spec(buf, &env_spec))
      memset(&env_spec, 0, sizeof env_spec);
  }
  if (file != NULL && stat(file, &st) == 0) {
    target_dev = st.st_dev;
    target_ino = st.st_ino;
    have_target = true;
  }
}

ssize_t
pread(int fd, void *buf, size_t n, off_t off)
{
  WRAP(fd, OP_PREAD, "pread", n, off, real_pread(fd, buf, n, off));
}

ssize_t
pread64(int fd, void *buf, size_t n, off64_t off)
{
  WRAP(fd, OP_PREAD, "pread64", n, off, real_pread64(fd, buf, n, off));
}

ssize_t
preadv(int fd, const struct iovec *iov, int cnt, off_t off)
{
  WRAP(fd, OP_PREAD, "preadv", iov_bytes(iov, cnt), off,
       real_preadv(fd, iov, cnt, off));
}

ssize_t
pwrite(int fd, const void *buf, size_t n, off_t off)
{
  WRAP(fd, OP_PWRITE, "pwrite", n, off, real_pwrite(fd, buf, n, off));
}

ssize_t
pwrite64(int fd, const void *buf, size_t n, off64_t off)
{
  WRAP(fd, OP_PWRITE, "pwrite64", n, off, real_pwrite64(fd, buf, n, off));
}

ssize_t
pwritev(int fd, const struct iovec *iov, int cnt, off_t off)
{
  WRAP(fd, OP_PWRITE, "pwritev", iov_bytes(iov, cnt), off,
       real_pwritev(fd, iov, cnt, off));
}

ssize_t
pwritev2(int fd, const struct iovec *iov, int cnt, off_t off, int flags)
{
  WRAP(fd, OP_PWRITE, "pwritev2", iov_bytes(iov, cnt), off,
       real_pwritev2(fd, iov, cnt, off, flags));
}

ssize_t
copy_file_range(int in, off64_t *in_off, int out, off64_t *out_off,
                size_t n, unsigned flags)
{
  pthread_once(&resolve_once, resolve);
  if (!is_target(out) && is_target(in))
    WRAP(in, OP_PREAD, "copy_file_range", n, in_off ? *in_off : -1,
         real_copy_file_range(in, in_off, out, out_off, n, flags));
  WRAP(out, OP_PWRITE, "copy_file_range", n, out_off ? *out_off : -1,
       real_copy_file_range(in, in_off, out, out_off, n, flags));
}

int
fdatasync(int fd)
{
  WRAP(fd, OP_SYNC, "fdatasync", 0, 0, real_fdatasync(fd));
}

int
fsync(int fd)
{
  WRAP(fd, OP_SYNC, "fsync", 0, 0, real_fsync(fd));
}

int
fallocate(int fd, int mode, off_t off, off_t len)
{
  WRAP(fd, OP_FALLOCATE, "fallocate", (unsigned long long) len, off,
       real_fallocate(fd, mode, off, len));
}

int
fallocate64(int fd, int mode, off64_t off, off64_t len)
{
  WRAP(fd, OP_FALLOCATE, "fallocate64", (unsigned long long) len, off,
       real_fallocate64(fd, mode, off, len));
}

int
ftruncate(int fd, off_t len)
{
  WRAP(fd, OP_FTRUNCATE, "ftruncate", (unsigned long long) len, 0,
       real_ftruncate(fd, len));
}

int
ftruncate64(int fd, off64_t len)
{
  WRAP(fd, OP_FTRUNCATE, "ftruncate64", (unsigned long long) len, 0,
       real_ftruncate64(fd, len));
}
