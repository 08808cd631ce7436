/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: QEMU-compatible image locking.
 *
 * QEMU (block/file-posix.c) announces what it does with an image through
 * shared open-file-description locks on single bytes: byte 100+i means "I
 * use permission i", byte 200+i means "I do not let others use permission
 * i", for i = 0 consistent read, 1 write, 2 write-unchanged, 3 resize.  A
 * user checks for conflicts by testing whether an exclusive lock on the
 * opposite byte would be refused.  Taking the same locks lets a running VM
 * or qemu-img and this program refuse each other. */
#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "format.h"

#define LOCK_PERM_BASE   100
#define LOCK_SHARED_BASE 200

enum {
  PERM_CONSISTENT_READ = 0,
  PERM_WRITE = 1,
  PERM_WRITE_UNCHANGED = 2,
  PERM_RESIZE = 3,
  NR_PERMS = 4,
};

static const char *const perm_names[NR_PERMS] = {
  "consistent read", "write", "write unchanged", "resize",
};

/* Does line, in /proc/locks' format ("1: OFDLCK ADVISORY READ PID
 * MAJ:MIN:INO START END"), describe a lock of kind on the file st names,
 * covering byte (-1: any byte)?  The pid it gives (-1 when the kernel
 * does not say, as for OFD locks) in *pid.  Waiters ("1: -> FLOCK ...")
 * do not match. */
static bool
lock_line_matches(const char *line, const char *kind, const struct stat *st,
                  long long byte, long *pid)
{
  char type[16], end[24];
  unsigned maj, min;
  unsigned long ino;
  long long start;

  if (sscanf(line, "%*d: %15s %*s %*s %ld %x:%x:%lu %lld %23s", type, pid,
             &maj, &min, &ino, &start, end) != 7
      || strcmp(type, kind) != 0 || maj != major(st->st_dev)
      || min != minor(st->st_dev) || ino != st->st_ino)
    return false;
  return byte < 0 || (start <= byte && (strcmp(end, "EOF") == 0
                                        || byte <= strtoll(end, NULL, 10)));
}

/* Does /proc/PID/fdinfo of process pid list such a lock on one of its
 * descriptors (other than skip_fd, -1 for none)?  Read as text only: the
 * files themselves are never touched (a stat of a hung FUSE view would
 * hang). */
static bool
fdinfo_has_lock(long pid, const char *kind, const struct stat *st,
                long long byte, int skip_fd)
{
  char dir_path[64], path[96], line[256];
  struct dirent *fd_ent;
  bool found = false;
  long line_pid;
  DIR *dir;

  snprintf(dir_path, sizeof dir_path, "/proc/%ld/fdinfo", pid);
  if ((dir = opendir(dir_path)) == NULL)
    return false;
  while (!found && (fd_ent = readdir(dir)) != NULL) {
    FILE *f;

    if (fd_ent->d_name[0] == '.' || atoi(fd_ent->d_name) == skip_fd)
      continue;
    snprintf(path, sizeof path, "%s/%.20s", dir_path, fd_ent->d_name);
    if ((f = fopen(path, "re")) == NULL)
      continue;
    while (!found && fgets(line, sizeof line, f) != NULL)
      found = strncmp(line, "lock:", 5) == 0
              && lock_line_matches(line + 5, kind, st, byte, &line_pid);
    fclose(f);
  }
  closedir(dir);
  return found;
}

/* The process whose fdinfo shows the lock, scanning /proc (only the
 * processes we may inspect), or 0. */
static long
fdinfo_lock_holder(const char *kind, const struct stat *st, long long byte,
                   bool others_only)
{
  struct dirent *ent;
  long found = 0;
  DIR *proc = opendir("/proc");

  if (proc == NULL)
    return 0;
  while (found == 0 && (ent = readdir(proc)) != NULL) {
    char *end;
    long pid = strtol(ent->d_name, &end, 10);

    if (*end != '\0' || pid <= 0 || (others_only && pid == (long) getpid()))
      continue;
    if (fdinfo_has_lock(pid, kind, st, byte, -1))
      found = pid;
  }
  closedir(proc);
  return found;
}

long
fde_lock_holder(const struct stat *st, const char *kind, long long byte,
                bool others_only)
{
  char line[256];
  long pid, found = 0;
  bool unnamed = false;
  FILE *f = fopen("/proc/locks", "re");

  if (f == NULL)
    return 0;
  while (found == 0 && fgets(line, sizeof line, f) != NULL)
    if (lock_line_matches(line, kind, st, byte, &pid)) {
      if (pid <= 0)
        unnamed = true;
      else if (!others_only || pid != (long) getpid())
        found = pid;
    }
  fclose(f);
  if (found == 0 && unnamed)
    found = fdinfo_lock_holder(kind, st, byte, others_only);
  return found;
}

/* The comm of process pid ("self" for 0), NUL-terminated into buf (len
 * bytes), PACKAGE_NAME for ours: comm keeps 15 bytes, "fuse-disk-expor".
 * false if unknown. */
static bool
read_comm(long pid, char *buf, size_t len)
{
  char path[64];
  size_t n;
  FILE *f;

  if (pid > 0)
    snprintf(path, sizeof path, "/proc/%ld/comm", pid);
  else
    snprintf(path, sizeof path, "/proc/self/comm");
  if (len == 0 || (f = fopen(path, "re")) == NULL)
    return false;
  n = fread(buf, 1, len - 1, f);
  fclose(f);
  buf[n] = '\0';
  buf[strcspn(buf, "\n")] = '\0';
  if (strncmp(buf, PACKAGE_NAME, 15) == 0)
    snprintf(buf, len, "%s", PACKAGE_NAME);
  return buf[0] != '\0';
}

/* A process running our own executable is named as we are: this program,
 * or nbdkit when the library runs inside the nbdkit plugin (another
 * nbdkit is not a fuse-disk-export). */
bool
fde_process_name(long pid, char *buf, size_t len)
{
  char path[64];
  struct stat self, other;

  snprintf(path, sizeof path, "/proc/%ld/exe", pid);
  if (stat("/proc/self/exe", &self) == 0 && stat(path, &other) == 0
      && self.st_dev == other.st_dev && self.st_ino == other.st_ino
      && read_comm(0, buf, len))
    return true;
  return read_comm(pid, buf, len);
}

/* A conflict on byte of fd's file (-1: some byte): say who holds it
 * where /proc tells, "in use by NAME (pid N), which WHY" (this process's
 * other descriptors of the file: "in use by this same command"), else
 * "in use by another program (QEMU?) that WHY", WHY naming permission
 * perm if not NULL.  -EADDRINUSE if the holder is another
 * fuse-disk-export (the image is exported already), else -EBUSY. */
static int
report_conflict(int fd, const char *path, long long byte, const char *why,
                const char *perm)
{
  char name[64], reason[96];
  struct stat st;
  bool known = fstat(fd, &st) == 0;
  long pid = known ? fde_lock_holder(&st, "OFDLCK", byte, true) : 0;

  if (perm != NULL)
    snprintf(reason, sizeof reason, "%s the %s permission", why, perm);
  else
    snprintf(reason, sizeof reason, "%s", why);
  if (known && pid == 0
      && fdinfo_has_lock((long) getpid(), "OFDLCK", &st, byte, fd)) {
    fde_error("%s: in use by this same command, which %s: it exports the "
              "image twice, or as well as an image over it; export it once",
              path, reason);
    return -EADDRINUSE;
  }
  if (pid > 0 && fde_process_name(pid, name, sizeof name)) {
    fde_error("%s: in use by %s (pid %ld), which %s; stop it first", path,
              name, pid, reason);
    return strcmp(name, PACKAGE_NAME) == 0 ? -EADDRINUSE : -EBUSY;
  }
  fde_error("%s: in use by another program (QEMU?) that %s; stop it first",
            path, reason);
  return -EBUSY;
}

/* Would an exclusive lock on byte conflict with someone's shared lock?
 * An OFD lock test ignores the locks of the tested descriptor's own open
 * file description, so our own bytes never count as a conflict. */
static int
byte_is_locked(int fd, off_t byte, bool *locked)
{
  struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET,
                      .l_start = byte, .l_len = 1 };

  if (fcntl(fd, F_OFD_GETLK, &fl) == -1)
    return -errno;
  *locked = fl.l_type != F_UNLCK;
  return 0;
}

/* Take (F_RDLCK) or drop (F_UNLCK) our shared lock on len bytes at byte. */
static int
set_bytes(int fd, short type, off_t byte, off_t len)
{
  struct flock fl = { .l_type = type, .l_whence = SEEK_SET,
                      .l_start = byte, .l_len = len };

  return fcntl(fd, F_OFD_SETLK, &fl) == -1 ? -errno : 0;
}

/* Drop every lock byte QEMU's protocol defines, ours or not yet taken. */
static void
drop_all_bytes(int fd)
{
  set_bytes(fd, F_UNLCK, LOCK_PERM_BASE, NR_PERMS);
  set_bytes(fd, F_UNLCK, LOCK_SHARED_BASE, NR_PERMS);
}

/* Take our shared lock bytes.  0 or -errno. */
static int
set_our_bytes(int fd, unsigned used, unsigned unshared)
{
  int r = 0;

  for (int i = 0; i < NR_PERMS && r == 0; i++) {
    if (used & (1u << i))
      r = set_bytes(fd, F_RDLCK, LOCK_PERM_BASE + i, 1);
    if (r == 0 && (unshared & (1u << i)))
      r = set_bytes(fd, F_RDLCK, LOCK_SHARED_BASE + i, 1);
  }
  return r == -EAGAIN || r == -EACCES ? -EBUSY : r;
}

/* Does anyone else's lock conflict with ours?  0, -EBUSY or -EADDRINUSE
 * (message logged, see report_conflict) or -errno. */
static int
test_conflicts(int fd, const char *path, unsigned used, unsigned unshared)
{
  bool locked = false;
  int r;

  for (int i = 0; i < NR_PERMS; i++) {
    if ((used & (1u << i))
        && ((r = byte_is_locked(fd, LOCK_SHARED_BASE + i, &locked)) < 0
            || locked)) {
      return r < 0 ? r : report_conflict(fd, path, LOCK_SHARED_BASE + i,
                                         "does not share",
                                         perm_names[i]);
    }
    if ((unshared & (1u << i))
        && ((r = byte_is_locked(fd, LOCK_PERM_BASE + i, &locked)) < 0
            || locked)) {
      return r < 0 ? r : report_conflict(fd, path, LOCK_PERM_BASE + i,
                                         "holds", perm_names[i]);
    }
  }
  return 0;
}

/* Set our bytes first, then test for conflicts, as QEMU does
 * (raw_apply_lock_bytes, then raw_check_lock_bytes, block/file-posix.c):
 * of two users starting at once, each sees the other's bytes, so they
 * cannot both pass (both may fail).  On failure our bytes are dropped.
 * used/unshared are bit masks of permissions. */
static int
apply_locks(int fd, const char *path, unsigned used, unsigned unshared)
{
  int r = set_our_bytes(fd, used, unshared);

  if (r == -EBUSY)
    r = report_conflict(fd, path, -1, "holds an exclusive lock on it", NULL);
  if (r == 0)
    r = test_conflicts(fd, path, used, unshared);
  if (r < 0)
    drop_all_bytes(fd);
  return r;
}

/* Lock an image as QEMU would for a writable or read-only user: both need
 * consistent reads and let nobody else write or resize; a writer also
 * writes.  File systems without OFD locks are not an error. */
int
fde_lock_image(int fd, const char *path, bool writable)
{
  unsigned used = 1u << PERM_CONSISTENT_READ;
  unsigned unshared = (1u << PERM_WRITE) | (1u << PERM_RESIZE);
  int r;

  if (writable)
    used |= (1u << PERM_WRITE) | (1u << PERM_WRITE_UNCHANGED);
  r = apply_locks(fd, path, used, unshared);
  if (r == -EINVAL || r == -EOPNOTSUPP || r == -ENOLCK) {
    fde_debug("%s: no byte-range locks here: %s", path, strerror(-r));
    return 0;
  }
  return r;
}

/* Drop the image locks taken by fde_lock_image on fd's open file
 * description (any descriptor of it will do), so that QEMU may open the
 * image again.  For the revert: once nothing can write through us. */
void
fde_unlock_image(int fd)
{
  drop_all_bytes(fd);
}
