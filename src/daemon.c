/* fuse-disk-export: going into the background with a readiness pipe, and
 * the pid file.  The parent of a daemon returns only when the child says
 * every export is live (status byte 0) or failed (its exit status). */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
