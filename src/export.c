/* fuse-disk-export: one export's life: open the image (before anything is
 * mounted), mount the view on its path, serve it in a multi-threaded loop,
 * unmount and close. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define READ_AHEAD_KB 1024      /* one or more read requests (max_read) */

/* Refuse a path that is already a mount point, saying what to do. */
static int
check_not_mounted(const char *abspath)
{
  char type[64];

  switch (mount_state_of(abspath, type, sizeof type)) {
  case MOUNT_NONE:
    return 0;
  case MOUNT_LIVE:
    fde_error("%s: already exported (a live %s mount is on it); "
              "stop that export first", abspath, type);
    return EXIT_BUSY;
  case MOUNT_DEAD:
    fde_error("%s: a dead FUSE mount from a crashed export is on it; "
              "clear it with: fusermount3 -u '%s'", abspath, abspath);
    return EXIT_BUSY;
  case MOUNT_OTHER:
  default:
    fde_error("%s: is a mount point (%s); refusing to mount over it",
              abspath, type);
    return EXIT_BUSY;
  }
}

/* Open the image file for the export's access mode; an exit status. */
static int
open_image_file(struct export *exp, const char *abspath, int *fdp)
{
  /* O_NONBLOCK so that a FIFO cannot hang us; cleared below. */
  int flags = (exp->opts->read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC
    | O_NONBLOCK;
  int fd = open(abspath, flags);

  if (fd == -1) {
    int err = errno;
    if (!exp->opts->read_only && geteuid() == 0
        && (err == EACCES || err == EROFS || err == EPERM))
      fde_error("%s: %s (use -r for a read-only export)", exp->image,
                strerror(err));
    else
      fde_error("%s: %s", exp->image, strerror(err));
    return err == EISDIR ? EXIT_IMAGE : EXIT_FAIL;
  }
  if (fstat(fd, &exp->image_st) == -1 || !S_ISREG(exp->image_st.st_mode)
      || fcntl(fd, F_SETFL, 0) == -1) {
    fde_error("%s: not a regular file", exp->image);
    close(fd);
    return EXIT_IMAGE;
  }
  *fdp = fd;
  return 0;
}

/* Pick the format: -f, else probe (refusing formats we do not serve). */
static int
choose_format(struct export *exp, int fd, const struct fde_format **fmt)
{
  uint8_t buf[4096];
  const char *unsupported;
  int r;

  if (exp->opts->format != NULL) {
    *fmt = fde_format_by_name(exp->opts->format);
    return 0;
  }
  r = fde_pread_full(fd, buf, sizeof buf, 0);
  if (r < 0) {
    fde_error("%s: read: %s", exp->image, strerror(-r));
    return EXIT_FAIL;
  }
  unsupported = probe_unsupported(fd, buf, sizeof buf);
  if (unsupported != NULL) {
    fde_error("%s: %s images are not supported; convert it with "
              "'qemu-img convert -O qcow2 %s NEW.qcow2', or use -f raw "
              "to export its bytes as they are", exp->image, unsupported,
              exp->image);
    return EXIT_IMAGE;
  }
  *fmt = fde_format_probe(buf, sizeof buf);
  exp->format_probed_raw = *fmt == &fde_format_raw;
  return 0;
}

/* path made absolute with its directory resolved but its last component
 * untouched: a dead mount there fails every stat, and must still be found
 * in the mount table and reported.  NULL with errno on failure. */
static char *
lexical_abspath(const char *path)
{
  char *copy = strdup(path), *slash, *dir, *base, *out = NULL;

  if (copy == NULL)
    return NULL;
  slash = strrchr(copy, '/');
  dir = slash == NULL ? "." : slash == copy ? "/" : copy;
  base = slash == NULL ? copy : slash + 1;
  if (slash != NULL && slash != copy)
    *slash = '\0';
  if (*base == '\0' || strcmp(base, ".") == 0 || strcmp(base, "..") == 0)
    out = realpath(path, NULL);
  else {
    char *res = realpath(dir, NULL);
    if (res != NULL && asprintf(&out, "%s/%s", strcmp(res, "/") ? res : "",
                                base) == -1)
      out = NULL;
    free(res);
  }
  free(copy);
  return out;
}

/* Resolve path for the mount table: absolute, symlinks followed, and
 * refused if something is mounted there.  An exit status. */
static int
resolve_unmounted(const char *path, char **out)
{
  char *lex = lexical_abspath(path);
  int r;

  *out = NULL;
  if (lex == NULL) {
    fde_error("%s: %s", path, strerror(errno));
    return EXIT_IMAGE;
  }
  if ((r = check_not_mounted(lex)) != 0) {
    free(lex);
    return r;
  }
  *out = realpath(lex, NULL);
  if (*out == NULL) {
    fde_error("%s: %s", path, strerror(errno));
    r = errno == ENOENT ? EXIT_IMAGE : EXIT_FAIL;
  }
  else if (strcmp(*out, lex) != 0)    /* it was a symlink */
    r = check_not_mounted(*out);
  free(lex);
  return r;
}

/* The view's path: the image itself, or the -m file (absolute, resolved).
 * A user who is not root mounts through fusermount3, which needs write
 * permission on the mount point even for a read-only export. */
static int
resolve_mountpoint(struct export *exp)
{
  const char *target = exp->opts->mountpoint ? exp->opts->mountpoint
                                             : exp->image;
  struct stat st;
  int r = resolve_unmounted(target, &exp->mountpoint);

  if (r != 0)
    return r;
  if (stat(exp->mountpoint, &st) == -1) {
    fde_error("%s: %s", target, strerror(errno));
    return EXIT_IMAGE;
  }
  if (!S_ISREG(st.st_mode)) {
    fde_error("%s: %s", target, S_ISDIR(st.st_mode) ? "is a directory"
              : "not a regular file");
    return EXIT_IMAGE;
  }
  if (geteuid() != 0 && access(exp->mountpoint, W_OK) == -1) {
    fde_error("%s: no write permission: a user other than root mounts "
              "through fusermount3, which needs it on the mount point, even "
              "with -r", target);
    return EXIT_FAIL;
  }
  return 0;
}

/* Open the image and its whole chain; nothing is mounted.  An exit status. */
int
export_open(struct export *exp, const struct options *opts, const char *image)
{
  const struct fde_format *fmt;
  struct fde_chain chain = { 0 };
  char *abspath;
  int fd = -1, r;

  memset(exp, 0, sizeof *exp);
  exp->lock_pipe = -1;
  exp->opts = opts;
  exp->image = image;
  pthread_mutex_init(&exp->sector0_lock, NULL);
  pthread_mutex_init(&exp->attr_lock, NULL);
  pthread_mutex_init(&exp->init_lock, NULL);
  pthread_cond_init(&exp->init_cond, NULL);
  if ((r = resolve_mountpoint(exp)) != 0)
    return r;
  if ((r = resolve_unmounted(image, &abspath)) != 0)
    goto out;
  if ((r = open_image_file(exp, abspath, &fd)) != 0
      || (r = choose_format(exp, fd, &fmt)) != 0)
    goto out;
  struct fde_open_params params = {
    .path = image, .fd = fd, .read_only = opts->read_only,
    .snapshot = opts->snapshot, .cache_bytes = opts->cache_bytes,
    .zcache_bytes = opts->zcache_bytes,
    .allow_bdev_backing = opts->allow_bdev_backing,
    .verbose = opts->verbose, .chain = &chain,
  };
  r = fde_disk_open(fmt, &params, &exp->disk);
  if (r < 0) {
    r = r == -ENOMEM || r == -EIO ? EXIT_FAIL : EXIT_IMAGE;
    goto out;
  }
  fd = -1;                      /* the backend owns it now */
  exp->mode = exp->disk->read_only ? 0400 : 0600;
  r = 0;
out:
  if (fd != -1)
    close(fd);
  exp->image_abspath = abspath;
  return r;
}

/* Print what --probe shows. */
int
export_describe(struct export *exp, FILE *out)
{
  struct fde_disk *d = exp->disk;

  fprintf(out, "image: %s\n", exp->image);
  fprintf(out, "format: %s\n", d->format->name);
  fprintf(out, "virtual-size: %llu\n", (unsigned long long) d->size);
  fprintf(out, "allocated: %llu\n",
          (unsigned long long) d->format->allocated_bytes(d));
  fprintf(out, "writable: %s\n", d->read_only ? "no" : "yes");
  d->format->describe(d, out);
  /* Only before mounting: afterwards the path is the view itself. */
  if (d->format == &fde_format_raw && !exp->mounted) {
    int fd = open(exp->image_abspath, O_RDONLY | O_CLOEXEC);
    if (fd != -1) {
      probe_describe_raw(fd, out);
      close(fd);
    }
  }
  return 0;
}

/* May this user pass allow_other?  Root may; others need user_allow_other
 * in /etc/fuse.conf (fusermount3 refuses otherwise). */
static bool
allow_other_permitted(void)
{
  FILE *f;
  char line[256];
  bool ok = false;

  if (geteuid() == 0)
    return true;
  f = fopen("/etc/fuse.conf", "re");
  if (f == NULL)
    return false;
  while (fgets(line, sizeof line, f) != NULL) {
    char *p = line + strspn(line, " \t");
    if (strncmp(p, "user_allow_other", 16) == 0
        && strchr(" \t\n", p[16]) != NULL)
      ok = true;
  }
  fclose(f);
  return ok;
}

/* Append s to the option string, escaping what libfuse's parser splits on. */
static void
append_escaped(char *buf, size_t cap, const char *s)
{
  size_t n = strlen(buf);

  for (; *s != '\0' && n + 2 < cap; s++) {
    if (*s == ',' || *s == '\\')
      buf[n++] = '\\';
    buf[n++] = *s;
  }
  buf[n] = '\0';
}

/* The -o string for this export's mount. */
static int
mount_options(struct export *exp, char *buf, size_t cap)
{
  enum allow_other ao = exp->opts->allow_other;

  if (ao == ALLOW_OTHER_ON && !allow_other_permitted()) {
    fde_error("%s: --allow-other=on needs 'user_allow_other' in "
              "/etc/fuse.conf", exp->image);
    return -1;
  }
  exp->allow_other = ao == ALLOW_OTHER_ON
    || (ao == ALLOW_OTHER_AUTO && allow_other_permitted());
  snprintf(buf, cap, "fsname=");
  append_escaped(buf, cap, exp->mountpoint);
  snprintf(buf + strlen(buf), cap - strlen(buf),
           ",subtype=fuse-disk-export,default_permissions%s%s,max_read=%u",
           exp->allow_other ? ",allow_other" : "",
           exp->disk->read_only ? ",ro" : "", (unsigned) exp->max_read);
  return 0;
}

/* Create the FUSE session and mount it on the view's path.  0 or -1. */
int
export_mount(struct export *exp)
{
  char opts[PATH_MAX * 2 + 128];
  char *argv[] = { "fuse-disk-export", "-o", opts, NULL };
  struct fuse_args args = FUSE_ARGS_INIT(3, argv);

  fuse_ops_plan(exp);
  if (mount_options(exp, opts, sizeof opts) == -1)
    return -1;
  exp->se = fuse_session_new(&args, &fde_fuse_ops, fde_fuse_ops_size, exp);
  fuse_opt_free_args(&args);
  if (exp->se == NULL) {
    fde_error("%s: cannot create the FUSE session", exp->image);
    return -1;
  }
  if (fuse_session_mount(exp->se, exp->mountpoint) != 0) {
    fde_error("%s: cannot mount the view on %s", exp->image, exp->mountpoint);
    fuse_session_destroy(exp->se);
    exp->se = NULL;
    return -1;
  }
  exp->mounted = true;
  return 0;
}

static void *
loop_thread(void *arg)
{
  struct export *exp = arg;
  struct fuse_loop_config cfg = { .clone_fd = 1, .max_idle_threads = 8 };

  fuse_session_loop_mt(exp->se, &cfg);
  __atomic_store_n(&exp->loop_running, false, __ATOMIC_SEQ_CST);
  kill(getpid(), SIGUSR1);      /* wake the main thread's sigwait */
  return NULL;
}

int
export_start_loop(struct export *exp)
{
  exp->loop_running = true;
  if (pthread_create(&exp->loop_thread, NULL, loop_thread, exp) != 0) {
    exp->loop_running = false;
    fde_error("%s: cannot start the FUSE loop", exp->image);
    return -1;
  }
  exp->loop_started = true;
  return 0;
}

/* The kernel caps a FUSE mount's read-ahead at the default 128 KiB
 * whatever max_readahead says; root may raise it through sysfs so that
 * sequential reads arrive as 1 MiB requests.  Not being able to is fine. */
static void
raise_readahead(dev_t dev)
{
  char path[64];
  FILE *f;

  snprintf(path, sizeof path, "/sys/class/bdi/%u:%u/read_ahead_kb",
           major(dev), minor(dev));
  f = fopen(path, "we");
  if (f == NULL)
    return;
  fprintf(f, "%u\n", READ_AHEAD_KB);
  fclose(f);
}

/* Wait until the kernel's FUSE_INIT has been answered and the mount is in
 * the mount table: from then on any process sees the view. */
int
export_wait_live(struct export *exp)
{
  struct timespec deadline;
  dev_t dev;
  bool done;

  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += 30;
  pthread_mutex_lock(&exp->init_lock);
  while (!exp->init_done)
    if (pthread_cond_timedwait(&exp->init_cond, &exp->init_lock,
                               &deadline) == ETIMEDOUT)
      break;
  done = exp->init_done;
  pthread_mutex_unlock(&exp->init_lock);
  /* No thread of ours ever touches the view itself: a request to our own
   * mount in flight when SIGKILL arrives would never be answered, and the
   * dying process would hang in the kernel. */
  if (!done || !mount_device(exp->mountpoint, &dev)) {
    fde_error("%s: the view on %s did not come up", exp->image,
              exp->mountpoint);
    return -1;
  }
  raise_readahead(dev);
  return 0;
}

/* The lock holder: open the view, take the locks, report one status byte
 * on fd 3, then wait until fd 4 reaches end of file (the daemon closed it
 * or died).  It keeps no other descriptor, least of all /dev/fuse (the
 * connection must end with the daemon), and its view descriptor stays
 * open: closing it would drop the locks. */
static void __attribute__((noreturn))
lock_holder(struct export *exp, int ready, int hold)
{
  unsigned char status = 1;
  char c;
  int fd;

  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (dup2(ready, 3) == -1 || dup2(hold, 4) == -1
      || syscall(SYS_close_range, 5, ~0u, 0) == -1)
    _exit(1);
  fd = open(exp->mountpoint, O_RDONLY | O_CLOEXEC);
  if (fd != -1 && fde_lock_image(fd, exp->image, !exp->disk->read_only) == 0)
    status = 0;
  else if (fd == -1)
    fde_error("%s: cannot open the view: %s", exp->mountpoint,
              strerror(errno));
  if (write(3, &status, 1) != 1 || status != 0)
    _exit(1);
  /* Let go of the terminal or the pipe that reads -d's messages. */
  if ((fd = open("/dev/null", O_RDWR)) != -1) {
    dup2(fd, 0);
    dup2(fd, 1);
    dup2(fd, 2);
  }
  while (read(4, &c, 1) == -1 && errno == EINTR)
    ;
  _exit(0);
}

/* A program that opens the image's path while it is exported reaches the
 * view, not the file underneath, so the image locks must be visible on the
 * view too (the kernel keeps locks on FUSE files itself): a small child
 * process holds them on a descriptor of the view, so that QEMU refuses to
 * open the exported image for writing as it would for an image in use.  A
 * child, not a thread: no thread of the daemon may wait on its own mount. */
int
export_lock_view(struct export *exp)
{
  int ready[2], hold[2];
  unsigned char status = 1;
  pid_t pid;

  if (pipe2(ready, O_CLOEXEC) == -1)
    return -1;
  if (pipe2(hold, O_CLOEXEC) == -1) {
    close(ready[0]);
    close(ready[1]);
    return -1;
  }
  fflush(NULL);
  pid = fork();
  if (pid == 0)
    lock_holder(exp, ready[1], hold[0]);
  close(ready[1]);
  close(hold[0]);
  if (pid != -1 && read(ready[0], &status, 1) == 1 && status == 0) {
    exp->lock_pid = pid;
    exp->lock_pipe = hold[1];
    close(ready[0]);
    return 0;
  }
  close(ready[0]);
  close(hold[1]);
  if (pid != -1)
    waitpid(pid, NULL, 0);
  return -1;
}

/* Let the lock holder go, and wait until it has closed the view. */
static void
release_view_locks(struct export *exp)
{
  if (exp->lock_pipe == -1)
    return;
  close(exp->lock_pipe);
  exp->lock_pipe = -1;
  while (waitpid(exp->lock_pid, NULL, 0) == -1 && errno == EINTR)
    ;
}

/* Unmount the view; the kernel then ends the connection and the loop.  If
 * the view is still in use (a loop device, an open file), detach it lazily:
 * the loop keeps serving those users until they close it. */
void
export_unmount(struct export *exp)
{
  int r;

  release_view_locks(exp);     /* or the unmount would find it busy */
  if (!exp->mounted)
    return;
  r = unmount_path(exp->mountpoint, false);
  if (r == -EBUSY) {
    fde_warn("%s: still in use; detaching the view lazily, it is served "
             "until its last user closes it", exp->mountpoint);
    r = unmount_path(exp->mountpoint, true);
  }
  if (r < 0 && mount_is_listed(exp->mountpoint)) {
    fde_error("%s: cannot unmount: %s; clear it with: fusermount3 -u '%s'",
              exp->mountpoint, strerror(-r), exp->mountpoint);
    exp->unmount_failed = true;
  }
  exp->mounted = false;
}

/* Wait for the loop to end and release the session. */
void
export_join(struct export *exp)
{
  if (exp->loop_started && !exp->unmount_failed) {
    pthread_join(exp->loop_thread, NULL);
    exp->loop_started = false;
  }
  if (exp->se != NULL && !exp->loop_started) {
    fuse_session_unmount(exp->se);
    fuse_session_destroy(exp->se);
    exp->se = NULL;
  }
}

/* Flush and close the image; an exit status. */
int
export_close(struct export *exp)
{
  int r = 0;

  if (exp->disk != NULL) {
    if (!exp->disk->read_only && exp->disk->format->flush(exp->disk) < 0) {
      fde_error("%s: flush failed; recent writes may not be on disk",
                exp->image);
      r = EXIT_FAIL;
    }
    fde_disk_close(exp->disk);
    exp->disk = NULL;
  }
  free(exp->mountpoint);
  free(exp->image_abspath);
  exp->mountpoint = exp->image_abspath = NULL;
  return r;
}
