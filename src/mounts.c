/* fuse-disk-export: what the mount table says about a path, and
 * unmounting (directly as root, through fusermount3 otherwise). */
#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

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

/* Find the last (topmost) mount on abspath; copy its type and device.
 * true if any. */
static bool
find_mount(const char *abspath, char *fstype, size_t fstype_len, dev_t *dev)
{
  FILE *f = fopen("/proc/self/mountinfo", "re");
  char *line = NULL;
  size_t cap = 0;
  bool found = false;

  if (f == NULL)
    return false;
  while (getline(&line, &cap, f) != -1) {
    /* id parent maj:min root mountpoint options [optional...] - type src */
    char *save = NULL, *field, *mnt = NULL, *type = NULL, *majmin = NULL;
    int i = 0;
    bool after_dash = false;
    for (field = strtok_r(line, " \n", &save); field != NULL;
         field = strtok_r(NULL, " \n", &save), i++) {
      if (i == 2)
        majmin = field;
      else if (i == 4)
        mnt = field;
      else if (after_dash) {
        type = field;
        break;
      }
      else if (i > 5 && strcmp(field, "-") == 0)
        after_dash = true;
    }
    if (mnt == NULL || type == NULL)
      continue;
    unescape(mnt);
    if (strcmp(mnt, abspath) == 0) {
      unsigned ma = 0, mi = 0;
      found = true;
      snprintf(fstype, fstype_len, "%s", type);
      if (majmin != NULL && sscanf(majmin, "%u:%u", &ma, &mi) == 2)
        *dev = makedev(ma, mi);
    }
  }
  free(line);
  fclose(f);
  return found;
}

bool
mount_is_listed(const char *abspath)
{
  char type[64];
  dev_t dev;

  return find_mount(abspath, type, sizeof type, &dev);
}

/* The device number of the mount on abspath (for its sysfs bdi). */
bool
mount_device(const char *abspath, dev_t *dev)
{
  char type[64];

  return find_mount(abspath, type, sizeof type, dev);
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
  dev_t dev;

  if (!find_mount(abspath, fstype, fstype_len, &dev))
    return MOUNT_NONE;
  struct stat st;

  if (strncmp(fstype, "fuse", 4) != 0)
    return MOUNT_OTHER;
  return stat_with_timeout(abspath, 2, &st) == ENOTCONN ? MOUNT_DEAD
                                                          : MOUNT_LIVE;
}

/* Run fusermount3 -u [-z] on path; 0 if it succeeded. */
static int
run_fusermount(const char *abspath, bool lazy)
{
  int status;
  pid_t pid = fork();

  if (pid == -1)
    return -errno;
  if (pid == 0) {
    if (lazy)
      execlp("fusermount3", "fusermount3", "-u", "-q", "-z", "--", abspath,
             (char *) NULL);
    else
      execlp("fusermount3", "fusermount3", "-u", "-q", "--", abspath,
             (char *) NULL);
    _exit(127);
  }
  while (waitpid(pid, &status, 0) == -1)
    if (errno != EINTR)
      return -errno;
  return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -EBUSY;
}

/* Unmount abspath: a normal unmount, or a lazy detach. 0 or -errno. */
int
unmount_path(const char *abspath, bool lazy)
{
  if (geteuid() == 0)
    return umount2(abspath, lazy ? MNT_DETACH : 0) == 0 ? 0 : -errno;
  return run_fusermount(abspath, lazy);
}
