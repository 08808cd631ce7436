/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: one export's life: open the image (before anything is
 * mounted), mount the view on its path, serve it in a multi-threaded loop,
 * unmount and close. */
#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "image.h"
#include "layer.h"

#define READ_AHEAD_KB 1024      /* one or more read requests (max_read) */
#define QUIESCE_MS 1000         /* export_quiesce's wait for open files */
#define LOOP_END_MS 5000        /* wait for the loop after an abort */

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

/* Take an exclusive flock(2) on fd without waiting.  0, or EXIT_BUSY with
 * a message naming the holder.  File systems without flock are fine: the
 * mount-table check still runs. */
static int
claim_file(int fd, const char *path)
{
  struct stat st;
  long pid;

  if (flock(fd, LOCK_EX | LOCK_NB) == 0)
    return 0;
  if (errno != EWOULDBLOCK) {
    fde_debug("%s: flock: %s", path, strerror(errno));
    return 0;
  }
  pid = fstat(fd, &st) == 0 ? fde_lock_holder(&st, "FLOCK", -1, false) : 0;
  if (pid == (long) getpid()) {   /* our own claim: named twice */
    fde_error("%s: given twice", path);
    return EXIT_USAGE;
  }
  if (pid > 0)
    fde_error("%s: already being exported by fuse-disk-export (pid %ld); "
              "stop that export first", path, pid);
  else
    fde_error("%s: already being exported (another fuse-disk-export "
              "holds it); stop that export first", path);
  return EXIT_BUSY;
}

/* Two launches must never both mount on one path.  From before the "is
 * it exported already?" check until the view is live (see
 * export_release_claim) an export holds an exclusive flock(2) on the file
 * its view will cover: the -m file (through the descriptor resolved
 * once), or without -m the image's open file description.  QEMU takes no
 * flock, so only another fuse-disk-export collides, and the later one
 * exits at once with EXIT_BUSY; our own claim found again means the path
 * was given twice (EXIT_USAGE).  The claim is per mountpoint, not per
 * image: read-only exports of one image on two -m files may start at
 * once; writers are kept apart by QEMU's lock bytes, taken after this
 * (fde_disk_open).  The mount-table check of both paths is repeated under
 * the claim: a launch that opened the path after another's view appeared
 * holds the view, not the image, and finds that view in the mount table.
 * An exit status. */
static int
claim_export(struct export *exp, const char *image_abspath, int fd)
{
  int r;

  exp->claim_fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (exp->claim_fd == -1) {
    fde_error("%s: %s", exp->image, strerror(errno));
    return EXIT_FAIL;
  }
  if (exp->opts->probe_only)     /* a probe mounts nothing: no claim */
    return check_not_mounted(image_abspath);
  if (strcmp(exp->mountpoint, image_abspath) != 0 && exp->mnt_pfd != -1) {
    char proc[40];                /* the -m file we resolved, not its name */
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", exp->mnt_pfd);
    exp->claim_mnt_fd = open(proc, O_RDONLY | O_NONBLOCK | O_CLOEXEC
                             | O_NOCTTY);
    if (exp->claim_mnt_fd != -1
        && (r = claim_file(exp->claim_mnt_fd, exp->mountpoint)) != 0)
      return r;
  }
  else if ((r = claim_file(exp->claim_fd, exp->image)) != 0)
    return r;
  if ((r = check_not_mounted(exp->mountpoint)) != 0)
    return r;
  if (strcmp(exp->mountpoint, image_abspath) != 0)
    r = check_not_mounted(image_abspath);
  return r;
}

/* The view is live: others now find it in the mount table, so the claim
 * can go (read-only exports of one image on two paths may then start).
 * claim_fd stays open: it keeps the image's lock bytes until close. */
void
export_release_claim(struct export *exp)
{
  if (exp->claim_fd != -1)
    flock(exp->claim_fd, LOCK_UN);
  if (exp->claim_mnt_fd != -1) {
    close(exp->claim_mnt_fd);
    exp->claim_mnt_fd = -1;
  }
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

/* "/proc/self/fd/N": the file behind descriptor fd, found by the kernel
 * without looking up any name (it does not cross a mount stacked on the
 * file either). */
static void
fd_path(int fd, char *buf, size_t len)
{
  snprintf(buf, len, "/proc/self/fd/%d", fd);
}

/* The -P directory, opened through its O_PATH descriptor pfd: is it
 * empty?  0, or an exit status with a message naming it.  (A file made
 * in it later is only hidden under the view, as under any mount.) */
static int
check_empty_dir(int pfd, const char *target)
{
  char proc[64];
  struct dirent *e;
  DIR *dir;
  int fd, r = 0;

  fd_path(pfd, proc, sizeof proc);
  fd = open(proc, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd == -1 || (dir = fdopendir(fd)) == NULL) {
    fde_error("%s: %s", target, strerror(errno));
    if (fd != -1)
      close(fd);
    return EXIT_FAIL;
  }
  errno = 0;
  while (r == 0 && (e = readdir(dir)) != NULL)
    if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) {
      fde_error("%s: not empty (it holds %s); the directory view needs an "
                "empty directory", target, e->d_name);
      r = EXIT_IMAGE;
    }
  if (r == 0 && errno != 0) {
    fde_error("%s: %s", target, strerror(errno));
    r = EXIT_FAIL;
  }
  closedir(dir);
  return r;
}

/* Is the mount point of the right type: a regular file for the single
 * file view, an empty directory for -P?  0 or an exit status. */
static int
check_mountpoint_type(struct export *exp, const char *target)
{
  mode_t type = exp->mnt_st.st_mode & S_IFMT;

  if (exp->opts->partitions_dir != NULL) {
    if (type != S_IFDIR) {
      fde_error("%s: not a directory; --partitions needs an existing empty "
                "directory", target);
      return EXIT_IMAGE;
    }
    return check_empty_dir(exp->mnt_pfd, target);
  }
  if (type != S_IFREG) {
    fde_error("%s: %s", target, type == S_IFDIR ? "is a directory"
              : "not a regular file");
    return EXIT_IMAGE;
  }
  return 0;
}

/* The view's path: the image itself, the -m file or the -P directory
 * (absolute, resolved), resolved once: exp->mnt_pfd keeps the file it
 * named, and from then on that descriptor, not the name, says which file
 * the view goes on.  A user who is not root mounts through fusermount3,
 * which needs write permission on the mount point even for a read-only
 * export (--probe mounts nothing and needs none). */
static int
resolve_mountpoint(struct export *exp)
{
  const char *target = exp->opts->partitions_dir ? exp->opts->partitions_dir
                       : exp->opts->mountpoint ? exp->opts->mountpoint
                       : exp->image;
  struct stat *st = &exp->mnt_st;
  char proc[64];
  int r = resolve_unmounted(target, &exp->mountpoint);

  if (r != 0)
    return r;
  /* O_NOFOLLOW: the name was resolved; a symlink now is a swap. */
  exp->mnt_pfd = open(exp->mountpoint, O_PATH | O_NOFOLLOW | O_CLOEXEC);
  if (exp->mnt_pfd == -1 || fstat(exp->mnt_pfd, st) == -1) {
    fde_error("%s: %s", target, strerror(errno));
    return errno == ENOENT ? EXIT_IMAGE : EXIT_FAIL;
  }
  if ((r = check_mountpoint_type(exp, target)) != 0)
    return r;
  const char *pseudo = fde_pseudo_fs_of(exp->mnt_pfd);
  if (pseudo != NULL) {
    fde_error("%s: is on %s, a kernel pseudo file system; refusing to "
              "mount a view on it", target, pseudo);
    return EXIT_IMAGE;
  }
  fd_path(exp->mnt_pfd, proc, sizeof proc);
  if (geteuid() != 0 && !exp->opts->probe_only && access(proc, W_OK) == -1) {
    fde_error("%s: no write permission: a user other than root mounts "
              "through fusermount3, which needs it on the mount point, even "
              "with -r", target);
    return EXIT_FAIL;
  }
  return 0;
}

/* Without -m the view goes on the image itself: the file opened as the
 * image must be the one resolved as the mount point (a rename or a
 * symlink swap between the two lookups would make them differ). */
static int
check_same_file(struct export *exp)
{
  if (exp->opts->mountpoint != NULL || exp->opts->partitions_dir != NULL
      || (exp->image_st.st_dev == exp->mnt_st.st_dev
          && exp->image_st.st_ino == exp->mnt_st.st_ino))
    return 0;
  fde_error("%s: the path changed while it was being opened; not "
            "exported", exp->image);
  return EXIT_FAIL;
}

/* A user other than root may export an image someone else owns (one
 * they may write through its group, or read with -r) only onto a -m file
 * or -P directory: a view on the image's own path would take that path
 * from its owner, who cannot reach a user's mount (allow_other aside).
 * An exit status. */
static int
check_view_place(struct export *exp)
{
  const struct options *o = exp->opts;

  if (geteuid() == 0 || exp->image_st.st_uid == geteuid() || o->probe_only
      || o->mountpoint != NULL || o->partitions_dir != NULL)
    return 0;
  fde_error("%s: owned by another user (uid %u): a user other than root "
            "shows it only on a -m file or -P directory, not on its own path",
            exp->image, (unsigned) exp->image_st.st_uid);
  return EXIT_IMAGE;
}

/* How the program's options say what to open (formats/image.h). */
static void
fill_spec(struct fde_image_spec *spec, const struct options *opts,
          const char *image)
{
  *spec = (struct fde_image_spec) {
    .path = image, .format = opts->format, .read_only = opts->read_only,
    .snapshot = opts->snapshot, .cache_bytes = opts->cache_bytes,
    .zcache_bytes = opts->zcache_bytes, .disk = opts->disk,
    .partition = opts->partition,
    .allow_bdev_backing = opts->allow_bdev_backing,
    .verbose = opts->verbose,
    .names = &fde_program_option_names,
  };
}

/* Open the image and its whole chain; nothing is mounted.  An exit status. */
int
export_open(struct export *exp, const struct options *opts, const char *image)
{
  struct fde_image img = { .fd = -1 };
  char *abspath;
  int r;

  memset(exp, 0, sizeof *exp);
  exp->mnt_pfd = -1;
  exp->claim_fd = exp->claim_mnt_fd = -1;
  pthread_mutex_init(&exp->open_lock, NULL);
  pthread_cond_init(&exp->open_cond, NULL);
  exp->opts = opts;
  exp->image = image;
  pthread_mutex_init(&exp->attr_lock, NULL);
  pthread_mutex_init(&exp->init_lock, NULL);
  pthread_cond_init(&exp->init_cond, NULL);
  fill_spec(&exp->spec, opts, image);
  if ((r = resolve_mountpoint(exp)) != 0)
    return r;
  if ((r = resolve_unmounted(image, &abspath)) != 0)
    goto out;
  if ((r = fde_image_open_file(&img, &exp->spec, abspath)) != 0)
    goto out;
  exp->image_st = img.st;
  exp->format_read_only = img.format_read_only;
  if ((r = check_view_place(exp)) != 0
      || (r = claim_export(exp, abspath, img.fd)) != 0
      || (r = check_same_file(exp)) != 0
      || (r = fde_image_open_disk(&img)) != 0)
    goto out;
  exp->disk = img.disk;
  img.disk = NULL;
  exp->mode = fde_disk_can_write(exp->disk) ? 0600 : 0400;
  /* The view's files show the image's owner.  A user other than root who
   * exports an image another user owns (readable to them with -r, or
   * writable through its group) mounts a view that no one else can
   * reach (allow_other aside): shown as the other user's, mode 0400 or
   * 0600 would shut them out of their own view.  It is shown as theirs. */
  if (geteuid() != 0 && exp->image_st.st_uid != geteuid()) {
    exp->image_st.st_uid = geteuid();
    exp->image_st.st_gid = getegid();
  }
  r = view_files_open(exp);
out:
  fde_image_close(&img);
  exp->image_abspath = abspath;
  return r;
}

/* Print what --probe shows.  0, or -1 if part of the disk could not be
 * read (said on its line and logged). */
int
export_describe(struct export *exp, FILE *out)
{
  struct fde_disk *d = exp->disk;

  fprintf(out, "image: %s\n", exp->image);
  fprintf(out, "format: %s\n", d->format->name);
  fprintf(out, "virtual-size: %llu\n", (unsigned long long) d->size);
  fprintf(out, "allocated: %llu\n",
          (unsigned long long) d->format->allocated_bytes(d));
  fprintf(out, "writable: %s\n", fde_disk_can_write(d) ? "yes" : "no");
  d->format->describe(d, out);
  /* What is inside the disk the view shows (the window's contents with
   * --partition), read through the disk itself: never the image file's
   * bytes, which are not the disk's for qcow2, nor the view's mount. */
  return probe_describe_disk(d, exp->image, out);
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
           fde_disk_can_write(exp->disk) ? "" : ",ro",
           (unsigned) exp->max_read);
  return 0;
}

#define VIEW_FSTYPE "fuse.fuse-disk-export"   /* fuse.<subtype> */

/* The file under the view: its path now (readlink of its descriptor) and
 * the mount it is on.  0 or -1. */
static int
mountpoint_now(struct export *exp, char *path, size_t len, int *mnt_id)
{
  char proc[64];
  struct statx stx;
  ssize_t n;

  fd_path(exp->mnt_pfd, proc, sizeof proc);
  n = readlink(proc, path, len - 1);
  if (n <= 0 || (size_t) n >= len - 1)
    return -1;
  path[n] = '\0';
  *mnt_id = -1;                 /* statx cannot say before Linux 5.8 */
  if (statx(exp->mnt_pfd, "", AT_EMPTY_PATH, STATX_MNT_ID, &stx) == 0
      && (stx.stx_mask & STATX_MNT_ID))
    *mnt_id = (int) stx.stx_mnt_id;
  return 0;
}

/* Find the mount just made (the one new mount of our type and source) and
 * check that it sits on the file resolved at start: its mount point is
 * that file's dentry (the same path, read before and after the table is
 * read again, and on the same mount).  A mount point cannot be renamed or
 * removed in the namespace that sees the mount (EBUSY), so a match cannot
 * be staged by moving files; only renames of the directories above it,
 * racing with this check, could make it miss (we then refuse).  0, or -1
 * with a message (exp->mounted set if the view must still be unmounted). */
static int
identify_view(struct export *exp, const struct mount_snapshot *before)
{
  char path1[PATH_MAX], path2[PATH_MAX];
  struct view_mount vm;
  int mnt1, mnt2, r;

  r = mount_find_new(VIEW_FSTYPE, exp->mountpoint, before, &vm);
  if (r < 0) {
    /* Closing the session's /dev/fuse descriptor then ends the connection
     * of whatever was mounted: it cannot serve anything. */
    fde_error("%s: cannot find the view in /proc/self/mountinfo (%s)",
              exp->image, r == -EEXIST ? "another export of this path "
              "appeared at the same time" : strerror(-r));
    return -1;
  }
  exp->view_dev = vm.dev;
  exp->mounted = true;
  view_mount_free(&vm);
  if (mountpoint_now(exp, path1, sizeof path1, &mnt1) == -1
      || mount_find_device(exp->view_dev, &vm) < 0) {
    fde_error("%s: cannot tell where the view was mounted", exp->image);
    return -1;
  }
  r = mountpoint_now(exp, path2, sizeof path2, &mnt2);
  if (r == -1 || strcmp(path1, vm.path) != 0 || strcmp(path2, vm.path) != 0
      || (mnt1 != -1 && vm.parent != mnt1) || mnt1 != mnt2) {
    fde_error("%s: the view landed on another file, %s (the file opened "
              "as %s is now %s); not exported", exp->image, vm.path,
              exp->mountpoint, r == -1 ? "unknown" : path2);
    view_mount_free(&vm);
    return -1;
  }
  view_mount_free(&vm);
  return 0;
}

/* Create the FUSE session and mount it on the file resolved at start.
 * As root, libfuse's mount(2) gets "/proc/self/fd/N" of that file's
 * O_PATH descriptor: the kernel mounts on exactly that file, whatever its
 * name leads to now (libfuse 3.14's fuse_mount_sys stats that path, which
 * follows the descriptor too, and would record it in /etc/mtab only where
 * that is a writable file rather than the usual link to /proc/mounts; the
 * mount's source is our fsname either way).  A user other than root mounts through fusermount3,
 * which looks the name up again: the name is checked just before, and
 * the mount found afterwards is checked to be on our file (identify_view);
 * a view that landed elsewhere is unmounted again.  0 or -1. */
int
export_mount(struct export *exp)
{
  char opts[PATH_MAX * 2 + 128], target[64];
  char *argv[] = { "fuse-disk-export", "-o", opts, NULL };
  struct fuse_args args = FUSE_ARGS_INIT(3, argv);
  struct mount_snapshot before;
  const char *where = exp->mountpoint;
  struct stat st;
  int r;

  fuse_ops_plan(exp);
  if (mount_options(exp, opts, sizeof opts) == -1)
    return -1;
  exp->se = fuse_session_new(&args, &fde_fuse_ops, fde_fuse_ops_size, exp);
  fuse_opt_free_args(&args);
  if (exp->se == NULL) {
    fde_error("%s: cannot create the FUSE session", exp->image);
    return -1;
  }
  if ((r = mount_snapshot_take(VIEW_FSTYPE, exp->mountpoint, &before)) < 0) {
    fde_error("%s: cannot read /proc/self/mountinfo: %s", exp->image,
              strerror(-r));
    return -1;
  }
  if (geteuid() == 0) {
    fd_path(exp->mnt_pfd, target, sizeof target);
    where = target;
  }
  else if (lstat(exp->mountpoint, &st) == -1
           || st.st_dev != exp->mnt_st.st_dev
           || st.st_ino != exp->mnt_st.st_ino) {
    fde_error("%s: %s is no longer the file it was at start; not exported",
              exp->image, exp->mountpoint);
    mount_snapshot_free(&before);
    return -1;
  }
  /* libfuse keeps this name for fuse_session_unmount, which would
   * unmount by it: export_unmount goes by the device instead, and
   * release_session lets libfuse have it only once the connection ended. */
  if (fuse_session_mount(exp->se, where) != 0) {
    fde_error("%s: cannot mount the view on %s", exp->image, exp->mountpoint);
    mount_snapshot_free(&before);
    return -1;
  }
  r = identify_view(exp, &before);
  mount_snapshot_free(&before);
  return r;
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
  struct view_mount vm;
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
  if (!done || mount_find_device(exp->view_dev, &vm) < 0) {
    fde_error("%s: the view on %s did not come up", exp->image,
              exp->mountpoint);
    return -1;
  }
  view_mount_free(&vm);
  raise_readahead(exp->view_dev);
  return 0;
}

/* Where the view is now (it moves with the directories above it). */
static void
view_path_now(struct export *exp, char *buf, size_t len)
{
  struct view_mount vm;

  if (mount_find_device(exp->view_dev, &vm) == 0) {
    snprintf(buf, len, "%s", vm.path);
    view_mount_free(&vm);
  }
  else
    snprintf(buf, len, "%s", exp->mountpoint);
}

/* The view cannot be unmounted: abort its FUSE connection, so that the
 * loop ends (its reads fail with ENODEV) and nothing is left waiting on
 * us.  The mount stays, dead (ENOTCONN), until removed by hand. */
static void
abort_view(struct export *exp, const char *path)
{
  char why[256];

  if (mount_abort_connection(exp->view_dev, why, sizeof why) == 0) {
    exp->aborted = true;
    fde_error("%s: aborted the view's FUSE connection; the dead mount "
              "stays until removed with: %s '%s'", path,
              geteuid() == 0 ? "umount -l" : "fusermount3 -u -z", path);
  }
  else
    fde_error("%s: cannot abort the view's FUSE connection (%s); it ends "
              "when this process exits", path, why);
}

/* Unmount the view, found by its device wherever it is now; the kernel
 * then ends the connection and the loop.  If the view is still in use (a
 * loop device, an open file), detach it lazily: the loop keeps serving
 * those users until they close it.  If it cannot be unmounted at all
 * (another mount stacked on it, fusermount3 failing), say why and abort
 * the connection. */
void
export_unmount(struct export *exp)
{
  char why[768], path[PATH_MAX];
  int r;

  if (!exp->mounted)
    return;
  view_path_now(exp, path, sizeof path);
  r = mount_unmount_device(exp->view_dev, false, why, sizeof why);
  if (r == -EBUSY) {
    fde_warn("%s: still in use; detaching the view lazily, it is served "
             "until its last user closes it", path);
    r = mount_unmount_device(exp->view_dev, true, why, sizeof why);
  }
  if (r < 0) {
    fde_error("%s: cannot unmount the view: %s", path, why);
    exp->unmount_failed = true;
    abort_view(exp, path);
  }
  exp->mounted = false;
}

/* Destroy a session whose loop has ended.  fuse_session_unmount frees
 * what fuse_session_mount allocated, but unless the connection has ended
 * already (its descriptor polls POLLERR: unmounted or aborted) it also
 * unmounts by the name it was given, whatever is mounted there now: call
 * it only then. */
static void
release_session(struct fuse_session *se)
{
  struct pollfd pfd = { .fd = fuse_session_fd(se), .events = 0 };

  if (pfd.fd != -1 && poll(&pfd, 1, 0) == 1 && (pfd.revents & POLLERR))
    fuse_session_unmount(se);
  fuse_session_destroy(se);
}

/* Has the loop thread returned?  Wait up to ms milliseconds. */
static bool
loop_ended(struct export *exp, int ms)
{
  struct timespec tick = { 0, 10 * 1000000L };

  for (int waited = 0; waited < ms; waited += 10) {
    if (!__atomic_load_n(&exp->loop_running, __ATOMIC_SEQ_CST))
      return true;
    nanosleep(&tick, NULL);
  }
  return !__atomic_load_n(&exp->loop_running, __ATOMIC_SEQ_CST);
}

/* Wait for the loop to end and release the session.  After a normal or
 * lazy unmount the kernel ends the connection (a lazily detached view once
 * its last user has gone), and the loop with it.  After a failed unmount
 * the loop ends only if the connection was aborted: wait a few seconds
 * for it.  A loop that is still running keeps loop_started set, and then
 * neither the session nor the disk may be freed (export_close keeps it):
 * the process exits with them in use.  0, or -1 if the loop still runs. */
int
export_join(struct export *exp)
{
  if (exp->loop_started) {
    if (exp->unmount_failed
        && !loop_ended(exp, exp->aborted ? LOOP_END_MS : 0)) {
      fde_error("%s: the FUSE loop is still running; exiting with the "
                "image open", exp->image);
      return -1;
    }
    pthread_join(exp->loop_thread, NULL);
    exp->loop_started = false;
  }
  if (exp->se != NULL) {
    release_session(exp->se);
    exp->se = NULL;
  }
  return 0;
}

/* Flush the image (the view may still be serving); an exit status. */
int
export_flush(struct export *exp)
{
  if (exp->disk == NULL || !fde_disk_can_write(exp->disk))
    return 0;
  if (exp->disk->format->flush(exp->disk) < 0) {
    fde_error("%s: flush failed; recent writes may not be on disk",
              exp->image);
    return EXIT_FAIL;
  }
  return 0;
}

/* Before the unmount: refuse new opens of the view and wait (up to
 * QUIESCE_MS, for the kernel's RELEASE of files just closed) until nobody
 * has it open.  Then nothing more can be written through us, so flush
 * once more and drop the image's lock bytes: the moment the path shows
 * the image again, the image is complete and QEMU can open it.  If the
 * view is still open (a loop device, a program), the locks stay until
 * export_close, after its last user has gone.  An exit status. */
int
export_quiesce(struct export *exp)
{
  struct timespec deadline;
  bool idle;
  int r;

  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_nsec += QUIESCE_MS * 1000000L;
  deadline.tv_sec += deadline.tv_nsec / 1000000000L;
  deadline.tv_nsec %= 1000000000L;
  pthread_mutex_lock(&exp->open_lock);
  exp->reverting = true;
  while (exp->open_files > 0)
    if (pthread_cond_timedwait(&exp->open_cond, &exp->open_lock,
                               &deadline) == ETIMEDOUT)
      break;
  idle = exp->open_files == 0;
  pthread_mutex_unlock(&exp->open_lock);
  if (!idle)
    return 0;
  if ((r = export_flush(exp)) != 0)
    return r;                   /* export_close retries it */
  exp->final_flushed = true;
  if (exp->claim_fd != -1)
    fde_unlock_image(exp->claim_fd);
  return 0;
}

/* Flush whatever arrived since export_quiesce (nothing, if the view was
 * idle then), close the image and its chain, and release the image's
 * locks (closing the last descriptor of its open file description).  The
 * only flush at close: the backends' close does not flush.  An exit
 * status. */
int
export_close(struct export *exp)
{
  int r = 0;

  /* A loop still running (see export_join) uses the disk, the session and
   * this struct: flush, and leave them to the process's exit. */
  if (exp->loop_started) {
    export_flush(exp);
    return EXIT_FAIL;
  }
  if (exp->mnt_pfd != -1)
    close(exp->mnt_pfd);
  exp->mnt_pfd = -1;
  if (exp->disk != NULL) {
    if (!exp->final_flushed)
      r = export_flush(exp);
    view_files_close(exp);      /* the partitions' windows first */
    fde_disk_close(exp->disk);
    exp->disk = NULL;
  }
  export_release_claim(exp);
  if (exp->claim_fd != -1)
    close(exp->claim_fd);
  exp->claim_fd = -1;
  free(exp->mountpoint);
  free(exp->image_abspath);
  exp->mountpoint = exp->image_abspath = NULL;
  return r;
}
