/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: opening the files an image names (backing files; the
 * extents of formats to come) as the image's owner would.
 *
 * The view of an image belongs to the image file's owner.  When root (or
 * anyone else) exports a user's image, a backing name such as /etc/shadow,
 * a symlink to it, or a middle layer without a recorded format that names
 * it, would otherwise show the user a file the user cannot read.  So every
 * such file is opened by a short-lived child process that has taken the
 * owner's credentials and nothing else: the kernel applies the same checks
 * it would apply to the owner (mode, ACLs, groups, search permission on
 * each directory of the path, symlink protections), and the descriptor it
 * opened is passed back over a socket (SCM_RIGHTS) and used as it is, so
 * no name is looked up twice.
 *
 * Whoever opens it, a name is never resolved through a /proc magic link,
 * and an extent's name never leads out of its descriptor's directory,
 * not even through a symbolic link (openat2 RESOLVE_NO_MAGICLINKS,
 * RESOLVE_BENEATH; a root-owned descriptor unpacked from a tar could
 * otherwise name /etc/shadow through one); when the exporter opens it
 * itself (not as the owner, whom a swap could only show what the owner
 * may read) that directory, looked up again by name, must still hold
 * the image that was opened (its device and inode); a file on procfs, sysfs or another kernel pseudo
 * file system is refused, as is a mount point on one (src/export.c). */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/magic.h>
#include <linux/openat2.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "format.h"

/* O_NONBLOCK: opening a FIFO named by a hostile image must not hang (it is
 * cleared once the file is known to be a regular file or a device).
 * O_NOCTTY: a terminal named by one must not become ours. */
#define NAMED_OPEN_FLAGS (O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY)

/* Open name with openat2(2) (Linux 5.6; glibc 2.36 has no wrapper)
 * relative to the directory dfd (AT_FDCWD: as it is); beneath: it must
 * not leave that directory (RESOLVE_BENEATH: no "..", absolute name or
 * symlink leads out of it).  Never through a magic link (/proc/PID/fd/N,
 * /proc/PID/cwd and the like: RESOLVE_NO_MAGICLINKS).  The descriptor,
 * or -errno: -EXDEV for a name leaving the directory, -ELOOP for a magic
 * link, -ENOSYS without openat2.  Only system calls: it also runs in the
 * child of open_in_child. */
static int
open_at(int dfd, const char *name, bool beneath)
{
  struct open_how how = { .flags = NAMED_OPEN_FLAGS,
                          .resolve = RESOLVE_NO_MAGICLINKS };
  int fd;

  if (beneath)
    how.resolve |= RESOLVE_BENEATH;
  fd = (int) syscall(SYS_openat2, dfd, name, &how, sizeof how);
  return fd == -1 ? -errno : fd;
}

/* open_at beneath the directory dir or, with dir NULL, name as it is. */
static int
open_resolved(const char *dir, const char *name)
{
  int dfd, fd;

  if (dir == NULL)
    return open_at(AT_FDCWD, name, false);
  if ((dfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC)) == -1)
    return -errno;
  fd = open_at(dfd, name, true);
  close(dfd);
  return fd;
}

/* open_resolved(dir, name) where dir is the directory of the image's path
 * (p->path), which was looked up when the image was opened and is looked
 * up again here: it must still hold the image that was opened (p->fd),
 * under the last component of p->path (its device and inode), else a
 * directory renamed or swapped for a symlink in between would decide
 * what name is beneath (review 35: a root-owned descriptor's extent read
 * from a root-only directory).  The descriptor, or -errno (-ESTALE: the
 * directory no longer holds the image). */
static int
open_beside_image(const struct fde_open_params *p, const char *dir,
                  const char *name)
{
  const char *slash = strrchr(p->path, '/');
  const char *base = slash != NULL ? slash + 1 : p->path;
  struct stat image, here;
  int dfd, fd;

  if ((dfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC)) == -1)
    return -errno;
  fd = open_at(dfd, name, true);
  if (fd >= 0 && (fstat(p->fd, &image) == -1 || base[0] == '\0'
                  || fstatat(dfd, base, &here, 0) == -1
                  || image.st_dev != here.st_dev
                  || image.st_ino != here.st_ino)) {
    close(fd);
    fd = -ESTALE;
  }
  close(dfd);
  return fd;
}

struct fde_owner
fde_owner_of(uid_t uid, gid_t gid)
{
  struct fde_owner owner = { .check = uid != geteuid(), .uid = uid,
                             .gid = gid };
  return owner;
}

/* The credentials the owner would have after logging in: primary gid and
 * supplementary groups from the passwd and group databases, or only the
 * image's group when the uid has no passwd entry (a uid from a container,
 * say).  Looked up in the parent: NSS must not run after fork. */
struct owner_cred {
  uid_t uid;
  gid_t gid;
  int ngroups;
  gid_t *groups;          /* malloc'd; NULL without a passwd entry */
};

/* The passwd entry of uid into *pw (buf holds its strings); 1 found,
 * 0 no such user, -errno when the database cannot be read. */
static int
passwd_of(uid_t uid, struct passwd *pw, char **buf)
{
  size_t size = 1024;
  struct passwd *found;

  for (;;) {
    int err;
    char *b = realloc(*buf, size);
    if (b == NULL)
      return -ENOMEM;
    *buf = b;
    err = getpwuid_r(uid, pw, b, size, &found);
    if (err == ERANGE && size < (1u << 20)) {
      size *= 2;
      continue;
    }
    if (err == 0 || err == ENOENT || err == ESRCH)
      return found != NULL;
    return -err;
  }
}

/* Fill *c for owner (free c->groups after); 0 or -errno. */
static int
owner_cred_get(const struct fde_owner *owner, struct owner_cred *c)
{
  struct passwd pw;
  char *buf = NULL;
  int r = passwd_of(owner->uid, &pw, &buf);

  *c = (struct owner_cred) { .uid = owner->uid, .gid = owner->gid };
  if (r > 0) {
    c->gid = pw.pw_gid;
    for (int n = 16;;) {
      gid_t *g = realloc(c->groups, (size_t) n * sizeof *g);
      if (g == NULL) {
        r = -ENOMEM;
        break;
      }
      c->groups = g;
      int want = n;
      if (getgrouplist(pw.pw_name, pw.pw_gid, g, &want) >= 0) {
        c->ngroups = want;
        r = 0;
        break;
      }
      if (want <= n || want > NGROUPS_MAX) {     /* no progress: give up */
        r = -EINVAL;
        break;
      }
      n = want;
    }
  }
  free(buf);
  if (r < 0) {
    free(c->groups);
    c->groups = NULL;
  }
  return r < 0 ? r : 0;
}

/* What the child reports: which step failed, and its errno. */
enum { STEP_CRED = 1, STEP_OPEN = 2 };
struct child_reply {
  int step;               /* 0: opened, the descriptor is attached */
  int err;
};

/* Send the reply, with fd attached when it is not -1. */
static void
send_reply(int sock, const struct child_reply *rep, int fd)
{
  union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } ctl;
  struct iovec iov = { .iov_base = (void *) rep, .iov_len = sizeof *rep };
  struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };

  if (fd != -1) {
    struct cmsghdr *cm;
    memset(&ctl, 0, sizeof ctl);
    msg.msg_control = ctl.buf;
    msg.msg_controllen = sizeof ctl.buf;
    cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &fd, sizeof fd);
  }
  while (sendmsg(sock, &msg, MSG_NOSIGNAL) == -1 && errno == EINTR)
    ;
}

/* Leave the child nothing of the parent's that a name could reach
 * without the owner's permission: /proc/self/fd/N would reopen the
 * parent's descriptors, /proc/self/cwd would enter a directory the owner
 * may not reach (path is absolute, so the working directory is not
 * otherwise used).  Every descriptor but sock is closed.  0 or -1. */
static int
child_shed(int sock)
{
  if (chdir("/") == -1
      || (sock > 0 && close_range(0, (unsigned) sock - 1, 0) == -1)
      || close_range((unsigned) sock + 1, ~0u, 0) == -1)
    return -1;
  return 0;
}

/* In the child: drop to the owner's credentials (groups first, while we
 * may still set them; uid last), open name (open_resolved: beneath dir
 * unless dir is NULL), send the result, exit.  Only
 * async-signal-safe calls: images are opened before any thread starts,
 * but the rule costs nothing here.  setuid from root to another uid also
 * clears every capability, so the open gets no override. */
static void __attribute__((noreturn))
child_open(int sock, const struct owner_cred *c, const char *dir,
           const char *name)
{
  struct child_reply rep = { .step = STEP_CRED };
  int fd = -1;

  if (child_shed(sock) == -1
      || setgroups((size_t) c->ngroups, c->groups) == -1
      || setresgid(c->gid, c->gid, c->gid) == -1
      || setresuid(c->uid, c->uid, c->uid) == -1)
    rep.err = errno;
  else if ((fd = open_resolved(dir, name)) < 0) {
    rep.step = STEP_OPEN;
    rep.err = -fd;
    fd = -1;
  }
  else
    rep.step = 0;
  send_reply(sock, &rep, fd);
  _exit(0);
}

/* In the parent: the child's reply and, when it opened the file, the
 * descriptor it passed (*fd, close-on-exec).  0, or -EIO for a child that
 * died without a well-formed reply. */
static int
receive_reply(int sock, struct child_reply *rep, int *fd)
{
  union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } ctl;
  struct iovec iov = { .iov_base = rep, .iov_len = sizeof *rep };
  struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1,
                        .msg_control = ctl.buf,
                        .msg_controllen = sizeof ctl.buf };
  struct cmsghdr *cm;
  ssize_t n;

  *fd = -1;
  while ((n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC)) == -1 && errno == EINTR)
    ;
  cm = n > 0 ? CMSG_FIRSTHDR(&msg) : NULL;
  if (cm != NULL && cm->cmsg_level == SOL_SOCKET
      && cm->cmsg_type == SCM_RIGHTS && cm->cmsg_len == CMSG_LEN(sizeof(int)))
    memcpy(fd, CMSG_DATA(cm), sizeof *fd);
  if (n != (ssize_t) sizeof *rep || (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC))
      || (rep->step == 0) != (*fd != -1)) {
    if (*fd != -1)
      close(*fd);
    *fd = -1;
    return -EIO;
  }
  return 0;
}

/* Open name (beneath dir unless dir is NULL; both absolute) with the
 * owner's credentials in a child process.  The descriptor, or -errno
 * with *step saying which step failed. */
static int
open_in_child(const struct owner_cred *c, const char *dir, const char *name,
              int *step)
{
  struct child_reply rep = { .step = STEP_OPEN };
  int sv[2], fd = -1, r, status;
  pid_t pid;

  *step = STEP_OPEN;
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == -1)
    return -errno;
  pid = fork();
  if (pid == -1) {
    r = -errno;
    close(sv[0]);
    close(sv[1]);
    return r;
  }
  if (pid == 0) {
    close(sv[0]);
    child_open(sv[1], c, dir, name);
  }
  close(sv[1]);
  r = receive_reply(sv[0], &rep, &fd);
  close(sv[0]);
  while (waitpid(pid, &status, 0) == -1 && errno == EINTR)
    ;
  if (r < 0)
    return r;
  *step = rep.step;
  return rep.step == 0 ? fd : -rep.err;
}

/* path made absolute against the working directory, so that the child
 * checks search permission on every directory from the root (a relative
 * lookup would start below directories the owner may not enter).
 * malloc'd, or NULL with errno set. */
static char *
absolute_path(const char *path)
{
  char *cwd, *out;

  if (path[0] == '/')
    return strdup(path);
  cwd = getcwd(NULL, 0);
  if (cwd == NULL)
    return NULL;
  if (asprintf(&out, "%s/%s", strcmp(cwd, "/") ? cwd : "", path) == -1)
    out = NULL;
  free(cwd);
  return out;
}

/* The directory that inside, the tail of path, must stay beneath: what
 * path names before it ("." when it is all of path).  malloc'd, or NULL
 * with errno set. */
static char *
dir_before(const char *path, const char *inside)
{
  return inside == path ? strdup(".")
    : strndup(path, (size_t) (inside - path));
}

/* Open path (inside: as fde_open_named) with the owner's credentials;
 * the descriptor, or -errno with *step saying which step failed. */
static int
open_as_owner(const struct fde_open_params *p, const char *path,
              const char *inside, int *step)
{
  struct owner_cred cred;
  char *dir = NULL, *abspath = NULL;
  int fd = owner_cred_get(&p->owner, &cred);

  *step = STEP_CRED;
  if (fd < 0)
    return fd;
  *step = STEP_OPEN;
  if (inside == NULL)
    abspath = absolute_path(path);
  else if ((dir = dir_before(path, inside)) != NULL)
    abspath = absolute_path(dir);
  if (abspath == NULL)
    fd = -errno;
  else if (inside == NULL)
    fd = open_in_child(&cred, NULL, abspath, step);
  else
    fd = open_in_child(&cred, abspath, inside, step);
  free(cred.groups);
  free(dir);
  free(abspath);
  return fd;
}

/* Open path by the rules of fde_open_named, as the owner when
 * p->owner.check; the descriptor or -errno, message logged. */
static int
open_path(const struct fde_open_params *p, const char *what,
          const char *path, const char *inside)
{
  int step = STEP_OPEN, fd;
  char *dir;

  if (p->owner.check)
    fd = open_as_owner(p, path, inside, &step);
  else if (inside == NULL)
    fd = open_resolved(NULL, path);
  else {
    fd = (dir = dir_before(path, inside)) != NULL
      ? open_beside_image(p, dir, inside) : -errno;
    free(dir);
  }
  if (fd >= 0)
    return fd;
  if (step == STEP_CRED)
    fde_error("%s: %s %s: cannot take the credentials of the image's owner "
              "(uid %lu) to open it as that user: %s", p->path, what, path,
              (unsigned long) p->owner.uid, strerror(-fd));
  else if (fd == -EXDEV)
    fde_error("%s: %s %s leads out of the image's directory (through a "
              "symbolic link): refused", p->path, what, path);
  else if (fd == -ELOOP)
    fde_error("%s: %s %s: a /proc magic link or too many levels of "
              "symbolic links: refused", p->path, what, path);
  else if (fd == -ESTALE)
    fde_error("%s: %s %s: the image's directory was renamed or replaced "
              "while the image was being opened: refused", p->path, what,
              path);
  else if (fd == -ENOSYS)
    fde_error("%s: %s %s: this kernel has no openat2 (Linux 5.6 or later) "
              "to open it safely: refused", p->path, what, path);
  else if (p->owner.check && (fd == -EACCES || fd == -EPERM))
    fde_error("%s: %s %s: not readable by the image's owner (uid %lu): %s",
              p->path, what, path, (unsigned long) p->owner.uid,
              strerror(-fd));
  else
    fde_error("%s: %s %s: %s", p->path, what, path, strerror(-fd));
  return fd;
}

const char *
fde_pseudo_fs_of(int fd)
{
  static const struct { uint32_t magic; const char *name; } pseudo[] = {
    { PROC_SUPER_MAGIC, "procfs" }, { SYSFS_MAGIC, "sysfs" },
    { DEBUGFS_MAGIC, "debugfs" }, { TRACEFS_MAGIC, "tracefs" },
    { SECURITYFS_MAGIC, "securityfs" }, { SELINUX_MAGIC, "selinuxfs" },
    { SMACK_MAGIC, "smackfs" }, { CGROUP_SUPER_MAGIC, "cgroup" },
    { CGROUP2_SUPER_MAGIC, "cgroup2" }, { BPF_FS_MAGIC, "bpf" },
    { EFIVARFS_MAGIC, "efivarfs" }, { PSTOREFS_MAGIC, "pstore" },
    { BINFMTFS_MAGIC, "binfmt_misc" }, { NSFS_MAGIC, "nsfs" },
  };
  struct statfs sfs;

  if (fstatfs(fd, &sfs) == -1)
    return NULL;
  for (size_t i = 0; i < sizeof pseudo / sizeof pseudo[0]; i++)
    if ((uint32_t) sfs.f_type == pseudo[i].magic)   /* 32-bit magics */
      return pseudo[i].name;
  return NULL;
}

/* The descriptor fd, opened on path, if it is a file a layer may use: on
 * no pseudo file system, a regular file (or an allowed block device);
 * made blocking.  fd, or -errno with fd closed and one line logged. */
static int
check_opened(const struct fde_open_params *p, const char *what,
             const char *path, int fd)
{
  struct stat st;
  const char *pseudo;
  int err;

  if (fstat(fd, &st) == -1) {
    err = errno;
    fde_error("%s: %s %s: fstat: %s", p->path, what, path, strerror(err));
    close(fd);
    return -err;
  }
  if ((pseudo = fde_pseudo_fs_of(fd)) != NULL) {
    fde_error("%s: %s %s is on %s, a kernel pseudo file system: refused",
              p->path, what, path, pseudo);
    close(fd);
    return -EINVAL;
  }
  if (S_ISREG(st.st_mode) || (S_ISBLK(st.st_mode) && p->allow_bdev_backing)) {
    if (fcntl(fd, F_SETFL, 0) == 0)
      return fd;
    err = errno;
    fde_error("%s: %s %s: fcntl: %s", p->path, what, path, strerror(err));
    close(fd);
    return -err;
  }
  fde_error("%s: %s %s is not a regular file%s", p->path, what, path,
            S_ISBLK(st.st_mode) ? " (block devices need the option to allow "
            "them)" : "");
  close(fd);
  return -EINVAL;
}

int
fde_open_named(const struct fde_open_params *p, const char *what,
               const char *path, const char *inside)
{
  int fd = open_path(p, what, path, inside);

  return fd < 0 ? fd : check_opened(p, what, path, fd);
}
