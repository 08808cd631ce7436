/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: what the mount table says, and unmounting (directly as
 * root, through fusermount3 otherwise).
 *
 * A view is identified by its FUSE connection's device number (the
 * "maj:min" field of /proc/self/mountinfo, the st_dev of the view), never
 * by the path it was mounted on: the directories above it can be renamed
 * while it is exported, and a name looked up twice may name two files. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#ifndef FUSERMOUNT3_PATH
#define FUSERMOUNT3_PATH "/usr/bin/fusermount3"
#endif
#define FUSECTL_SUPER_MAGIC 0x65735543   /* linux/magic.h */
#ifndef UMOUNT_NOFOLLOW
#define UMOUNT_NOFOLLOW 8
#endif

/* One line of /proc/self/mountinfo (proc(5)); the strings point into the
 * line being parsed. */
struct mount_entry {
  int id;                       /* mount ID */
  int parent;                   /* mount ID of the mount it sits on */
  dev_t dev;                    /* st_dev of files in this mount */
  const char *path;             /* mount point, unescaped */
  const char *fstype;
  const char *source;           /* unescaped */
};

/* mountinfo escapes space, tab, newline and backslash as \ooo. */
static void
unescape(char *s)
{
  char *d = s;

  while (*s) {
    if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] >= '0'
        && s[2] <= '7' && s[3] >= '0' && s[3] <= '7') {
      *d++ = (char) ((s[1] - '0') * 64 + (s[2] - '0') * 8 + (s[3] - '0'));
      s += 4;
    }
    else
      *d++ = *s++;
  }
  *d = '\0';
}

/* Split one mountinfo line in place:
 *   id parent maj:min root mountpoint options [optional...] - type source
 * false if it is malformed. */
static bool
parse_mount_line(char *line, struct mount_entry *e)
{
  char *save = NULL, *field, *majmin = NULL;
  unsigned ma, mi;
  int i = 0, after_dash = 0;

  memset(e, 0, sizeof *e);
  for (field = strtok_r(line, " \n", &save); field != NULL;
       field = strtok_r(NULL, " \n", &save), i++) {
    if (i == 0)
      e->id = atoi(field);
    else if (i == 1)
      e->parent = atoi(field);
    else if (i == 2)
      majmin = field;
    else if (i == 4)
      e->path = field;
    else if (after_dash == 1) {
      e->fstype = field;
      after_dash++;
    }
    else if (after_dash == 2) {
      e->source = field;
      break;
    }
    else if (i > 5 && strcmp(field, "-") == 0)
      after_dash = 1;
  }
  if (majmin == NULL || e->path == NULL || e->fstype == NULL
      || sscanf(majmin, "%u:%u", &ma, &mi) != 2)
    return false;
  e->dev = makedev(ma, mi);
  unescape((char *) e->path);
  if (e->source == NULL)
    e->source = "";
  unescape((char *) e->source);
  return true;
}

/* Call fn on every mount in the order of the table (a mount stacked on
 * another comes after it) until fn returns true.  0, or -errno if the
 * table cannot be read. */
static int
mount_each(bool (*fn)(const struct mount_entry *, void *), void *arg)
{
  FILE *f = fopen("/proc/self/mountinfo", "re");
  char *line = NULL;
  size_t cap = 0;
  struct mount_entry e;

  if (f == NULL)
    return -errno;
  while (getline(&line, &cap, f) != -1)
    if (parse_mount_line(line, &e) && fn(&e, arg))
      break;
  free(line);
  fclose(f);
  return 0;
}

struct by_path {
  const char *path;
  char *fstype;
  size_t fstype_len;
  bool found;
};

static bool
match_path(const struct mount_entry *e, void *arg)
{
  struct by_path *q = arg;

  if (strcmp(e->path, q->path) == 0) {  /* the last one is the top one */
    q->found = true;
    snprintf(q->fstype, q->fstype_len, "%s", e->fstype);
  }
  return false;
}

struct stat_probe {
  char *path;
  struct stat st;
  int err;                      /* -1 until the stat returns */
  pthread_mutex_t lock;
  pthread_cond_t cond;
  int refs;                     /* the waiter and the thread */
};

static void
stat_probe_put(struct stat_probe *p)
{
  pthread_mutex_lock(&p->lock);
  bool last = --p->refs == 0;
  pthread_mutex_unlock(&p->lock);
  if (last) {
    free(p->path);
    free(p);
  }
}

static void *
stat_thread(void *arg)
{
  struct stat_probe *p = arg;
  struct stat st = { 0 };
  struct statx stx;
  int err;

  /* Force a round trip to the server: cached attributes would make a
   * dead mount look alive for the attribute timeout. */
  err = statx(AT_FDCWD, p->path, AT_STATX_FORCE_SYNC, STATX_BASIC_STATS,
              &stx) == 0 ? 0 : errno;
  if (err == 0) {
    st.st_ino = stx.stx_ino;
    st.st_size = (off_t) stx.stx_size;
    st.st_mode = stx.stx_mode;
    st.st_dev = makedev(stx.stx_dev_major, stx.stx_dev_minor);
  }

  pthread_mutex_lock(&p->lock);
  p->st = st;
  p->err = err;
  pthread_cond_signal(&p->cond);
  pthread_mutex_unlock(&p->lock);
  stat_probe_put(p);
  return NULL;
}

/* stat() a FUSE path without risking a hang on an unresponsive server:
 * the errno it returned, 0 on success (*st filled), or ETIMEDOUT. */
static int
stat_with_timeout(const char *path, int seconds, struct stat *st)
{
  struct stat_probe *p = calloc(1, sizeof *p);
  pthread_t tid;
  struct timespec deadline;
  int err;

  if (p == NULL || (p->path = strdup(path)) == NULL) {
    free(p);
    return ENOMEM;
  }
  p->err = -1;
  p->refs = 2;
  pthread_mutex_init(&p->lock, NULL);
  pthread_cond_init(&p->cond, NULL);
  if (pthread_create(&tid, NULL, stat_thread, p) != 0) {
    free(p->path);
    free(p);
    return EAGAIN;
  }
  pthread_detach(tid);
  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += seconds;
  pthread_mutex_lock(&p->lock);
  while (p->err == -1)
    if (pthread_cond_timedwait(&p->cond, &p->lock, &deadline) == ETIMEDOUT)
      break;
  err = p->err == -1 ? ETIMEDOUT : p->err;
  if (err == 0)
    *st = p->st;
  pthread_mutex_unlock(&p->lock);
  stat_probe_put(p);
  return err;
}

/* Is abspath already a mount point, and is its server alive? */
enum mount_state
mount_state_of(const char *abspath, char *fstype, size_t fstype_len)
{
  struct by_path q = { abspath, fstype, fstype_len, false };
  struct stat st;

  if (mount_each(match_path, &q) < 0 || !q.found)
    return MOUNT_NONE;
  if (strncmp(fstype, "fuse", 4) != 0)
    return MOUNT_OTHER;
  return stat_with_timeout(abspath, 2, &st) == ENOTCONN ? MOUNT_DEAD
                                                          : MOUNT_LIVE;
}

/* The snapshot taken before mounting: mounts of our type and source. */
struct by_source {
  const char *fstype, *source;
  const struct mount_snapshot *before;  /* when finding the new one */
  struct mount_snapshot *snap;          /* when taking the snapshot */
  struct view_mount *found;
  int count;
  int err;
};

static bool
in_snapshot(const struct mount_snapshot *s, const struct mount_entry *e)
{
  for (size_t i = 0; i < s->n; i++)
    if (s->ids[i] == e->id && s->devs[i] == e->dev)
      return true;
  return false;
}

static bool
match_source(const struct mount_entry *e, void *arg)
{
  struct by_source *q = arg;
  struct mount_snapshot *s = q->snap;

  if (strcmp(e->fstype, q->fstype) != 0 || strcmp(e->source, q->source) != 0)
    return false;
  if (s != NULL) {
    if (s->n % 16 == 0) {
      int *ids = realloc(s->ids, (s->n + 16) * sizeof *ids);
      dev_t *devs = ids == NULL ? NULL
        : realloc(s->devs, (s->n + 16) * sizeof *devs);
      if (ids != NULL)
        s->ids = ids;
      if (devs == NULL) {
        q->err = -ENOMEM;
        return true;
      }
      s->devs = devs;
    }
    s->ids[s->n] = e->id;
    s->devs[s->n++] = e->dev;
  }
  else if (!in_snapshot(q->before, e) && q->count++ == 0) {
    q->found->id = e->id;
    q->found->parent = e->parent;
    q->found->dev = e->dev;
    q->found->path = strdup(e->path);
    if (q->found->path == NULL)
      q->err = -ENOMEM;
  }
  return false;
}

int
mount_snapshot_take(const char *fstype, const char *source,
                    struct mount_snapshot *snap)
{
  struct by_source q = { .fstype = fstype, .source = source, .snap = snap };
  int r;

  memset(snap, 0, sizeof *snap);
  r = mount_each(match_source, &q);
  if (r == 0 && q.err != 0)
    r = q.err;
  if (r < 0)
    mount_snapshot_free(snap);
  return r;
}

void
mount_snapshot_free(struct mount_snapshot *snap)
{
  free(snap->ids);
  free(snap->devs);
  memset(snap, 0, sizeof *snap);
}

int
mount_find_new(const char *fstype, const char *source,
               const struct mount_snapshot *before, struct view_mount *vm)
{
  struct by_source q = { .fstype = fstype, .source = source,
                         .before = before, .found = vm };
  int r;

  memset(vm, 0, sizeof *vm);
  r = mount_each(match_source, &q);
  if (r == 0)
    r = q.err != 0 ? q.err : q.count == 0 ? -ENOENT : q.count > 1 ? -EEXIST
      : 0;
  if (r < 0)
    view_mount_free(vm);
  return r;
}

struct by_device {
  dev_t dev;
  struct view_mount *found;
  int err;
};

static bool
match_device(const struct mount_entry *e, void *arg)
{
  struct by_device *q = arg;
  struct view_mount *vm = q->found;

  if (e->dev != q->dev || strncmp(e->fstype, "fuse", 4) != 0)
    return false;
  vm->id = e->id;
  vm->parent = e->parent;
  vm->dev = e->dev;
  vm->path = strdup(e->path);
  if (vm->path == NULL)
    q->err = -ENOMEM;
  return true;
}

/* A mount on top of vm (its parent is vm), wherever it is listed. */
static bool
match_child(const struct mount_entry *e, void *arg)
{
  struct view_mount *vm = arg;

  if (e->parent == vm->id && e->id != vm->id)
    vm->covered = true;
  return vm->covered;
}

int
mount_find_device(dev_t dev, struct view_mount *vm)
{
  struct by_device q = { .dev = dev, .found = vm };
  int r;

  memset(vm, 0, sizeof *vm);
  r = mount_each(match_device, &q);
  if (r == 0)
    r = q.err != 0 ? q.err : vm->path == NULL ? -ENOENT : 0;
  /* A second read: a mount moved on top of ours may be listed before it.
   * A stacked mount that appears in between is caught by the check after
   * the unmount (mount_unmount_device). */
  if (r == 0)
    r = mount_each(match_child, vm);
  if (r < 0)
    view_mount_free(vm);
  return r;
}

void
view_mount_free(struct view_mount *vm)
{
  free(vm->path);
  vm->path = NULL;
}

/* Read what a child wrote to fd (at most len - 1 bytes, the last line
 * kept, trailing newlines cut) and close fd. */
static void
read_message(int fd, char *buf, size_t len)
{
  size_t n = 0;
  ssize_t r;
  char scratch[256];

  buf[0] = '\0';
  for (;;) {
    r = read(fd, n + 1 < len ? buf + n : scratch,
             n + 1 < len ? len - 1 - n : sizeof scratch);
    if (r == -1 && errno == EINTR)
      continue;
    if (r <= 0)
      break;
    if (n + 1 < len)
      n += (size_t) r;
  }
  close(fd);
  buf[n] = '\0';
  while (n > 0 && buf[n - 1] == '\n')
    buf[--n] = '\0';
  char *nl = strrchr(buf, '\n');
  if (nl != NULL)
    memmove(buf, nl + 1, strlen(nl + 1) + 1);
}

/* Run fusermount3 -u [-z] on abspath: the absolute path configure found
 * (it is setuid root: never a PATH lookup), in the C locale so that its
 * message can be read.  0, -EBUSY if the mount is in use, else -EIO with
 * why saying what fusermount3 said and how it exited. */
static int
run_fusermount(const char *abspath, bool lazy, char *why, size_t why_len)
{
  char *argv[6] = { "fusermount3", "-u" }, **arg = argv + 2;
  char *envp[] = { "LC_ALL=C", NULL };
  posix_spawn_file_actions_t fa;
  char msg[512];
  int pipefd[2], status, err;
  pid_t pid;

  if (lazy)
    *arg++ = "-z";
  *arg++ = "--";
  *arg++ = (char *) abspath;
  *arg = NULL;
  if (pipe2(pipefd, O_CLOEXEC) == -1)
    return -errno;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, pipefd[1], 2);
  err = posix_spawn(&pid, FUSERMOUNT3_PATH, &fa, NULL, argv, envp);
  posix_spawn_file_actions_destroy(&fa);
  close(pipefd[1]);
  if (err != 0) {
    close(pipefd[0]);
    snprintf(why, why_len, "cannot run %s: %s", FUSERMOUNT3_PATH,
             strerror(err));
    return -err;
  }
  read_message(pipefd[0], msg, sizeof msg);
  while (waitpid(pid, &status, 0) == -1)
    if (errno != EINTR)
      return -errno;
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
    return 0;
  if (strstr(msg, strerror(EBUSY)) != NULL)
    err = EBUSY;
  else
    err = EIO;
  if (WIFEXITED(status))
    snprintf(why, why_len, "%s exited with status %d%s%s", FUSERMOUNT3_PATH,
             WEXITSTATUS(status), msg[0] ? ": " : "", msg);
  else
    snprintf(why, why_len, "%s killed by signal %d", FUSERMOUNT3_PATH,
             WTERMSIG(status));
  return -err;
}

/* Unmount the top mount on abspath: a normal unmount or a lazy detach.
 * 0 or -errno, with why saying what failed. */
static int
unmount_path(const char *abspath, bool lazy, char *why, size_t why_len)
{
  if (geteuid() != 0)
    return run_fusermount(abspath, lazy, why, why_len);
  if (umount2(abspath, (lazy ? MNT_DETACH : 0) | UMOUNT_NOFOLLOW) == 0)
    return 0;
  snprintf(why, why_len, "umount2: %s", strerror(errno));
  return -errno;
}

int
mount_unmount_device(dev_t dev, bool lazy, char *why, size_t why_len)
{
  char path_before[PATH_MAX] = "";
  int r = 0;

  why[0] = '\0';
  /* Each try reads where the view is now; a rename of a directory above
   * it between reading and unmounting makes a try miss, not do harm:
   * what is unmounted is checked against the device afterwards. */
  for (int attempt = 0; attempt < 5; attempt++) {
    struct view_mount vm;

    r = mount_find_device(dev, &vm);
    if (r == -ENOENT)
      return 0;                 /* gone (or never there) */
    if (r < 0) {
      snprintf(why, why_len, "cannot read /proc/self/mountinfo: %s",
               strerror(-r));
      return r;
    }
    if (vm.covered) {
      snprintf(why, why_len, "another mount is stacked on it");
      view_mount_free(&vm);
      return -ENOTEMPTY;
    }
    snprintf(path_before, sizeof path_before, "%s", vm.path);
    r = unmount_path(vm.path, lazy, why, why_len);
    view_mount_free(&vm);
    if (r == -EBUSY)
      return r;
    if (mount_find_device(dev, &vm) == -ENOENT)
      return 0;
    bool moved = strcmp(vm.path, path_before) != 0;
    view_mount_free(&vm);
    if (!moved && r == 0) {
      snprintf(why, why_len, "still mounted at %s after unmounting it",
               path_before);
      r = -EIO;
    }
    if (!moved)
      return r;
  }
  return r < 0 ? r : -EAGAIN;
}

int
mount_abort_connection(dev_t dev, char *why, size_t why_len)
{
  char path[96];
  int fd;

  /* fusectl names a connection by the kernel's encoding of the device
   * number (fs/fuse/control.c): major << 20 | minor. */
  snprintf(path, sizeof path, "/sys/fs/fuse/connections/%u/abort",
           (major(dev) << 20) | minor(dev));
  fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd == -1) {
    int err = errno;
    struct statfs fs;
    if (statfs("/sys/fs/fuse/connections", &fs) == -1
        || fs.f_type != FUSECTL_SUPER_MAGIC)
      snprintf(why, why_len,
               "fusectl is not mounted on /sys/fs/fuse/connections");
    else
      snprintf(why, why_len, "%s: %s", path, strerror(err));
    return -err;
  }
  if (write(fd, "1", 1) != 1) {
    int err = errno;
    snprintf(why, why_len, "%s: %s", path, strerror(err));
    close(fd);
    return -err;
  }
  close(fd);
  return 0;
}
