/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: going into the background with a readiness pipe, the
 * pid file, and --stop.  The parent of a daemon returns only when the
 * child says every export is live (status byte 0) or failed (its exit
 * status); --stop returns only when the daemon has exited, and says from
 * its pid file whether it reverted cleanly. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/pidfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"

/* In the parent: wait for the child's status byte and exit with it. */
static void __attribute__((noreturn))
parent_wait(int fd, pid_t child)
{
  unsigned char status;
  ssize_t r;
  int wstatus;

  do
    r = read(fd, &status, 1);
  while (r == -1 && errno == EINTR);
  if (r == 1)
    _exit(status);
  /* The child died without a word: report how. */
  while (waitpid(child, &wstatus, 0) == -1 && errno == EINTR)
    ;
  if (WIFSIGNALED(wstatus))
    fprintf(stderr, "fuse-disk-export: daemon killed by signal %d during setup\n",
            WTERMSIG(wstatus));
  else
    fprintf(stderr, "fuse-disk-export: daemon exited during setup\n");
  _exit(WIFEXITED(wstatus) && WEXITSTATUS(wstatus) != 0
        ? WEXITSTATUS(wstatus) : EXIT_FAIL);
}

/* With -d: fork; the parent waits in parent_wait, the child returns 0 with
 * ds->ready_fd set.  Without -d: nothing to do. */
int
daemon_start(const struct options *opts, struct daemon_state *ds)
{
  int fds[2];
  pid_t pid;

  ds->ready_fd = -1;
  if (!opts->daemonize)
    return 0;
  if (pipe2(fds, O_CLOEXEC) == -1) {
    fde_error("pipe: %s", strerror(errno));
    return -1;
  }
  fflush(NULL);
  pid = fork();
  if (pid == -1) {
    fde_error("fork: %s", strerror(errno));
    return -1;
  }
  if (pid > 0) {
    close(fds[1]);
    parent_wait(fds[0], pid);
  }
  close(fds[0]);
  ds->ready_fd = fds[1];
  setsid();
  return 0;
}

/* Make path absolute against the current directory (malloc'd). */
static char *
absolute(const char *path)
{
  char cwd[PATH_MAX];
  char *abs;

  if (path[0] == '/')
    return strdup(path);
  if (getcwd(cwd, sizeof cwd) == NULL)
    return NULL;
  if (asprintf(&abs, "%s/%s", strcmp(cwd, "/") == 0 ? "" : cwd, path) == -1)
    return NULL;
  return abs;
}

/* Create the temporary that becomes the pid file, so that an unwritable
 * location fails before anything is mounted. */
int
daemon_prepare_pid_file(struct daemon_state *ds, const char *pid_file)
{
  ds->pid_tmp_fd = -1;
  if (pid_file == NULL)
    return 0;
  ds->pid_file = absolute(pid_file);
  if (ds->pid_file == NULL
      || asprintf(&ds->pid_tmp, "%s.XXXXXX", ds->pid_file) == -1) {
    ds->pid_tmp = NULL;
    fde_error("%s: %s", pid_file, strerror(errno));
    return -1;
  }
  ds->pid_tmp_fd = mkostemp(ds->pid_tmp, O_CLOEXEC);
  if (ds->pid_tmp_fd == -1) {
    fde_error("cannot write pid file %s: %s", pid_file, strerror(errno));
    free(ds->pid_tmp);
    ds->pid_tmp = NULL;
    return -1;
  }
  return 0;
}

static int
write_pid_file(struct daemon_state *ds)
{
  char buf[32];
  int len = snprintf(buf, sizeof buf, "%ld\n", (long) getpid());

  if (ds->pid_tmp_fd == -1)
    return 0;
  if (fchmod(ds->pid_tmp_fd, 0644) == -1
      || fde_pwrite_full(ds->pid_tmp_fd, buf, (size_t) len, 0) < 0
      || close(ds->pid_tmp_fd) == -1
      || rename(ds->pid_tmp, ds->pid_file) == -1) {
    fde_error("cannot write pid file %s: %s", ds->pid_file, strerror(errno));
    return -1;
  }
  ds->pid_tmp_fd = -1;
  free(ds->pid_tmp);
  ds->pid_tmp = NULL;
  return 0;
}

/* Every export is live: publish the pid file, then (with -d) detach from
 * the terminal and release the waiting parent. */
int
daemon_ready(struct daemon_state *ds, bool detach)
{
  int null;

  if (write_pid_file(ds) == -1)
    return -1;
  if (ds->ready_fd == -1)
    return 0;
  if (chdir("/") == -1)
    fde_warn("chdir /: %s", strerror(errno));
  null = open("/dev/null", O_RDWR);
  if (null != -1) {
    dup2(null, STDIN_FILENO);
    dup2(null, STDOUT_FILENO);
    dup2(null, STDERR_FILENO);
    if (null > STDERR_FILENO)
      close(null);
  }
  log_to_syslog();
  unsigned char ok = 0;
  if (write(ds->ready_fd, &ok, 1) != 1)
    fde_warn("readiness pipe: %s", strerror(errno));
  close(ds->ready_fd);
  ds->ready_fd = -1;
  return 0;
}

/* Setup failed: tell the parent (it exits with status). */
void
daemon_fail(struct daemon_state *ds, int status)
{
  unsigned char byte = (unsigned char) status;

  if (ds->ready_fd == -1)
    return;
  fflush(NULL);
  /* If this fails the parent reports our exit status instead. */
  ssize_t ignored = write(ds->ready_fd, &byte, 1);
  (void) ignored;
  close(ds->ready_fd);
  ds->ready_fd = -1;
}

/* Remove the pid file (or its temporary) on the way out. */
void
daemon_cleanup(struct daemon_state *ds)
{
  if (ds->pid_tmp != NULL) {
    if (ds->pid_tmp_fd != -1)
      close(ds->pid_tmp_fd);
    unlink(ds->pid_tmp);
    free(ds->pid_tmp);
    ds->pid_tmp = NULL;
  }
  else if (ds->pid_file != NULL)
    unlink(ds->pid_file);
  free(ds->pid_file);
  ds->pid_file = NULL;
}

/* The daemon's last act, after the revert.  Success: remove the pid file.
 * Failure: replace it (atomically) by the record --stop reads,
 *   PID
 *   revert-failed STATUS
 * so that whoever waits for the daemon learns that the path may not show
 * a complete image (the messages went to syslog). */
void
daemon_finish(struct daemon_state *ds, int status)
{
  char buf[64];
  int len;

  if (status == EXIT_OK || ds->pid_file == NULL || ds->pid_tmp != NULL) {
    daemon_cleanup(ds);
    return;
  }
  len = snprintf(buf, sizeof buf, "%ld\nrevert-failed %d\n",
                 (long) getpid(), status);
  if (asprintf(&ds->pid_tmp, "%s.XXXXXX", ds->pid_file) == -1
      || (ds->pid_tmp_fd = mkostemp(ds->pid_tmp, O_CLOEXEC)) == -1) {
    free(ds->pid_tmp);
    ds->pid_tmp = NULL;
  }
  if (ds->pid_tmp == NULL || fchmod(ds->pid_tmp_fd, 0644) == -1
      || fde_pwrite_full(ds->pid_tmp_fd, buf, (size_t) len, 0) < 0
      || close(ds->pid_tmp_fd) == -1
      || rename(ds->pid_tmp, ds->pid_file) == -1) {
    fde_error("cannot record the failed revert in %s: %s", ds->pid_file,
              strerror(errno));
    if (ds->pid_tmp != NULL)
      unlink(ds->pid_tmp);
  }
  ds->pid_tmp_fd = -1;
  free(ds->pid_tmp);
  ds->pid_tmp = NULL;
  free(ds->pid_file);
  ds->pid_file = NULL;
}

/* read_pid_file's answer for a pid file that is not a regular file (a
 * FIFO, a device, a socket): outside the range of -errno values. */
enum { PID_FILE_NOT_REGULAR = -4096 };

/* What a pid file says: the daemon's pid and, after a failed revert, its
 * exit status (-1: none recorded).  The file is opened without blocking
 * (a FIFO would wait for a writer for ever) and must be a regular file.
 * 0, or -errno of open/read (-EISDIR for a directory),
 * PID_FILE_NOT_REGULAR, or -EINVAL for contents that are no pid file. */
static int
read_pid_file(const char *pid_file, long *pid, int *failed_status)
{
  char buf[128], *end;
  struct stat st;
  ssize_t n;
  int fd = open(pid_file, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);

  if (fd == -1)
    return -errno;
  if (fstat(fd, &st) == -1) {
    int r = -errno;

    close(fd);
    return r;
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return S_ISDIR(st.st_mode) ? -EISDIR : PID_FILE_NOT_REGULAR;
  }
  n = read(fd, buf, sizeof buf - 1);
  if (n < 0)
    n = -errno;
  close(fd);
  if (n < 0)
    return (int) n;
  buf[n] = '\0';
  errno = 0;
  *pid = strtol(buf, &end, 10);
  if (errno != 0 || end == buf || *pid <= 1 || *pid > INT_MAX
      || (*end != '\n' && *end != '\0'))
    return -EINVAL;
  *failed_status = -1;
  if (*end == '\n' && sscanf(end + 1, "revert-failed %d", failed_status) != 1)
    *failed_status = -1;
  return 0;
}

/* Is process pid an instance of this program?  Its executable is ours, or
 * (when /proc/PID/exe is not ours to read, or the program was replaced
 * since) its argv[0] is named fuse-disk-export. */
static bool
is_fuse_disk_export(long pid)
{
  char path[64], cmd[PATH_MAX];
  struct stat self, other;
  const char *base;
  ssize_t n;
  int fd;

  snprintf(path, sizeof path, "/proc/%ld/exe", pid);
  if (stat("/proc/self/exe", &self) == 0 && stat(path, &other) == 0
      && self.st_dev == other.st_dev && self.st_ino == other.st_ino)
    return true;
  snprintf(path, sizeof path, "/proc/%ld/cmdline", pid);
  if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1)
    return false;
  n = read(fd, cmd, sizeof cmd - 1);
  close(fd);
  if (n <= 0)
    return false;
  cmd[n] = '\0';
  base = strrchr(cmd, '/');
  return strcmp(base != NULL ? base + 1 : cmd, "fuse-disk-export") == 0;
}

/* Open a pidfd on the daemon named by the pid file and check that it is
 * this program.  The check holds for the pidfd's process: if that process
 * is still alive after the check (signal 0 through the pidfd), the pid
 * was not reused in between.  The pidfd, or -1 with a message. */
static int
open_daemon(const char *pid_file, long pid)
{
  int pidfd = pidfd_open((pid_t) pid, 0);

  if (pidfd == -1) {
    if (errno == ESRCH)
      fde_error("%s: daemon %ld is not running, and left its pid file: "
                "it was killed or crashed; check its paths for a dead "
                "mount", pid_file, pid);
    else
      fde_error("%s: pidfd_open %ld: %s", pid_file, pid, strerror(errno));
    return -1;
  }
  if (!is_fuse_disk_export(pid)) {
    fde_error("%s: process %ld is not fuse-disk-export (a stale pid file?); "
              "not signalled", pid_file, pid);
    close(pidfd);
    return -1;
  }
  if (pidfd_send_signal(pidfd, 0, NULL, 0) == -1) {
    if (errno == EPERM)         /* another user's daemon, e.g. root's */
      fde_error("%s: cannot signal daemon %ld: %s", pid_file, pid,
                strerror(errno));
    else
      fde_error("%s: process %ld is not fuse-disk-export (a stale pid "
                "file?); not signalled", pid_file, pid);
    close(pidfd);
    return -1;
  }
  return pidfd;
}

/* A failure record names a pid: believe it only if that process has gone
 * (the daemon that wrote it exited; a zombie not yet reaped counts: its
 * pidfd polls readable) or is this program.  Otherwise the file is forged
 * or foreign, and --stop must neither report nor remove it.  true if the
 * record may be trusted. */
static bool
failure_record_trusted(const char *pid_file, long pid)
{
  struct pollfd pfd = { .events = POLLIN };
  bool trusted;

  pfd.fd = pidfd_open((pid_t) pid, 0);
  if (pfd.fd == -1)
    trusted = errno == ESRCH;
  else {
    trusted = poll(&pfd, 1, 0) == 1 || is_fuse_disk_export(pid);
    close(pfd.fd);
  }
  if (!trusted)
    fde_error("%s: not a fuse-disk-export pid file (process %ld is alive "
              "and not fuse-disk-export); left alone", pid_file, pid);
  return trusted;
}

/* After the daemon has exited: did it revert cleanly?  Its pid file is
 * gone (or already another daemon's) if so.  An exit status. */
static int
stop_outcome(const char *pid_file, long pid)
{
  long now_pid;
  int failed, r = read_pid_file(pid_file, &now_pid, &failed);

  if (r == -ENOENT || (r == 0 && now_pid != pid)) {
    fde_debug("daemon %ld reverted its exports and exited", pid);
    return EXIT_OK;
  }
  if (r == 0 && failed >= 0) {
    if (!failure_record_trusted(pid_file, now_pid))
      return EXIT_FAIL;
    fde_error("daemon %ld did not revert cleanly (exit status %d); its "
              "messages are in the system log", pid, failed);
    unlink(pid_file);           /* reported: the record is consumed */
  }
  else
    fde_error("daemon %ld exited without reverting (killed?); check its "
              "paths for a dead mount", pid);
  return EXIT_FAIL;
}

/* --stop: signal the daemon named by pid_file (SIGTERM, through a pidfd:
 * no pid-reuse race), wait until it has exited (at most timeout_s
 * seconds; 0 waits for ever) and say whether it reverted cleanly.  A
 * failure record left by a daemon that already exited is reported and
 * removed.  An exit status: 0 only for a clean revert. */
int
daemon_stop(const char *pid_file, unsigned timeout_s)
{
  struct pollfd pfd = { .events = POLLIN };
  long pid;
  int failed, r = read_pid_file(pid_file, &pid, &failed);

  if (r < 0) {
    fde_error("%s: %s", pid_file, r == -ENOENT
              ? "no such pid file (no daemon running?)"
              : r == -EINVAL ? "not a fuse-disk-export pid file"
              : r == PID_FILE_NOT_REGULAR ? "not a regular file"
              : strerror(-r));
    return EXIT_FAIL;
  }
  if (failed >= 0)
    return stop_outcome(pid_file, pid);
  if ((pfd.fd = open_daemon(pid_file, pid)) == -1)
    return EXIT_FAIL;
  if (pidfd_send_signal(pfd.fd, SIGTERM, NULL, 0) == -1 && errno != ESRCH) {
    fde_error("%s: cannot signal daemon %ld: %s", pid_file, pid,
              strerror(errno));
    close(pfd.fd);
    return EXIT_FAIL;
  }
  do
    r = poll(&pfd, 1, timeout_s > 0 ? (int) timeout_s * 1000 : -1);
  while (r == -1 && errno == EINTR);
  close(pfd.fd);
  if (r == 0) {
    fde_error("%s: daemon %ld is still running after %u s (a view still in "
              "use?); it reverts once its last user has gone", pid_file,
              pid, timeout_s);
    return EXIT_FAIL;
  }
  return stop_outcome(pid_file, pid);
}
