/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: show disk images as raw disks on their own paths.
 *
 * The order matters: open every image and its backing chain first (errors
 * come out before anything changes), fork if asked, mount every view and
 * wait until each is live, publish the pid file, then serve until a signal
 * and revert every view. */
#include <config.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Open every image; on failure close those already open.  Exit status. */
static int
open_all(struct export *exps, const struct options *opts)
{
  for (int i = 0; i < opts->nr_images; i++) {
    int r = export_open(&exps[i], opts, opts->images[i]);
    for (int j = 0; r == 0 && j < i; j++) {
      if (strcmp(exps[j].mountpoint, exps[i].mountpoint) == 0) {
        fde_error("%s: given twice", exps[i].mountpoint);
        r = EXIT_USAGE;
      }
    }
    if (r != 0) {
      for (int j = 0; j <= i; j++)
        export_close(&exps[j]);
      return r;
    }
  }
  return 0;
}

/* --probe: describe each image and exit. */
static int
probe_all(struct export *exps, const struct options *opts)
{
  int status = EXIT_OK;

  for (int i = 0; i < opts->nr_images; i++) {
    if (i > 0)
      putchar('\n');
    if (export_describe(&exps[i], stdout) != 0)
      status = EXIT_FAIL;       /* a read failed: said on stderr */
    export_close(&exps[i]);
  }
  return fflush(stdout) == 0 ? status : EXIT_FAIL;
}

/* Revert every view, in the order that lets a script trust the path the
 * moment it shows the image again: flush while the views still serve;
 * refuse new opens and, where nobody has the view open, flush again and
 * drop the image locks (export_quiesce); unmount; wait for the loops
 * (lazily detached views serve their last users first); flush whatever
 * arrived since; close, releasing the remaining locks.  The pid file goes
 * last (daemon_finish).  An exit status: nonzero if any step failed. */
static int
revert_all(struct export *exps, int n)
{
  int status = EXIT_OK;

  for (int i = 0; i < n; i++)
    if (export_flush(&exps[i]) != 0)
      status = EXIT_FAIL;
  for (int i = 0; i < n; i++)
    if (export_quiesce(&exps[i]) != 0)
      status = EXIT_FAIL;
  for (int i = 0; i < n; i++)
    export_unmount(&exps[i]);
  for (int i = 0; i < n; i++) {
    if (export_join(&exps[i]) != 0)
      status = EXIT_FAIL;
    if (exps[i].unmount_failed)
      status = EXIT_FAIL;
    if (export_close(&exps[i]) != 0)
      status = EXIT_FAIL;
  }
  return status;
}

/* Free the exports, unless a FUSE loop still runs on one (export_join
 * gave up waiting for it): its workers use it until the process exits. */
static void
free_exports(struct export *exps, int n)
{
  for (int i = 0; i < n; i++)
    if (exps[i].loop_started)
      return;
  free(exps);
}

/* What the announcement and -v say of a read-only view: "" for a
 * writable one, " (read-only)" with -r, and the reason when the image's
 * format is served read-only (written into buf, len bytes). */
static const char *
read_only_note(struct export *exp, char *buf, size_t len)
{
  if (fde_disk_can_write(exp->disk))
    return "";
  if (!exp->format_read_only)
    return " (read-only)";
  snprintf(buf, len, " (read-only: %s images are served read-only)",
           exp->disk->format->name);
  return buf;
}

/* Mount every view and wait until all are live.  0 or -1. */
static int
mount_all(struct export *exps, int n)
{
  for (int i = 0; i < n; i++) {
    if (exps[i].opts->verbose > 0) {
      char note[96];
      fde_info("%s: %s, %llu bytes%s", exps[i].image,
               exps[i].disk->format->name,
               (unsigned long long) exps[i].disk->size,
               read_only_note(&exps[i], note, sizeof note));
      export_describe(&exps[i], stderr);
      view_files_log(&exps[i]);
    }
    if (export_mount(&exps[i]) == -1 || export_start_loop(&exps[i]) == -1
        || export_wait_live(&exps[i]) == -1)
      return -1;
    export_release_claim(&exps[i]);
  }
  return 0;
}

static bool
all_loops_ended(struct export *exps, int n)
{
  bool all = true;

  for (int i = 0; i < n; i++) {
    if (!__atomic_load_n(&exps[i].loop_running, __ATOMIC_SEQ_CST)
        && exps[i].mounted) {
      fde_warn("%s: the view was unmounted from outside", exps[i].mountpoint);
      exps[i].mounted = false;
    }
    all = all && !__atomic_load_n(&exps[i].loop_running, __ATOMIC_SEQ_CST);
  }
  return all;
}

/* Serve until SIGINT, SIGTERM or SIGHUP (or every view is gone). */
static void
wait_for_signal(const sigset_t *set, struct export *exps, int n)
{
  for (;;) {
    int sig;
    if (sigwait(set, &sig) != 0)
      continue;
    if (sig != SIGUSR1) {
      fde_debug("signal %d: reverting", sig);
      return;
    }
    if (all_loops_ended(exps, n))
      return;
  }
}

/* The -P view's part of the announcement: "the qcow2 image's disk and
 * its 2 partitions shown in DIR (disk, p1, p2)". */
static void
announce_dir(FILE *f, struct export *exp)
{
  char *names = NULL, note[96];
  size_t size = 0;
  FILE *list = open_memstream(&names, &size);
  unsigned n;

  if (list == NULL)
    return;
  n = view_files_names(exp, list);
  fclose(list);
  fprintf(f, "the %s image's disk", exp->disk->format->name);
  if (n > 0)
    fprintf(f, " and its %u partition%s", n, n == 1 ? "" : "s");
  fprintf(f, " shown in %s (%s)%s", exp->mountpoint, names,
          read_only_note(exp, note, sizeof note));
  free(names);
}

/* The one line a user at a terminal waits for: every view is live. */
static void
announce(struct export *exps, int n)
{
  char *line = NULL, note[96];
  size_t size = 0;
  FILE *f = open_memstream(&line, &size);

  if (f == NULL)
    return;
  for (int i = 0; i < n; i++) {
    fprintf(f, "%s%s: ", i ? "; " : "", exps[i].image);
    if (exps[i].dir != NULL) {
      announce_dir(f, &exps[i]);
      continue;
    }
    if (exps[i].opts->partition > 0)
      fprintf(f, "partition %u of the ", exps[i].opts->partition);
    fprintf(f, "%s image shown as a raw disk on %s%s",
            exps[i].disk->format->name, exps[i].mountpoint,
            read_only_note(&exps[i], note, sizeof note));
  }
  fputs("; press ^C to revert", f);
  fclose(f);
  log_message("%s", line);
  free(line);
}

int
main(int argc, char **argv)
{
  struct options opts;
  struct daemon_state ds = { .ready_fd = -1, .pid_tmp_fd = -1 };
  struct export *exps;
  sigset_t set;
  int r, status;

  r = parse_options(argc, argv, &opts);
  if (r != 0)
    return r > 0 ? EXIT_OK : EXIT_USAGE;
  log_set_verbosity(opts.verbose);
  if (opts.stop_pid_file != NULL)
    return daemon_stop(opts.stop_pid_file, opts.stop_timeout);
  signal(SIGPIPE, SIG_IGN);
  exps = calloc((size_t) opts.nr_images, sizeof *exps);
  if (exps == NULL) {
    fde_error("out of memory");
    return EXIT_FAIL;
  }
  /* 1. Open everything before anything changes. */
  status = open_all(exps, &opts);
  if (status != 0 || opts.probe_only) {
    status = status != 0 ? status : probe_all(exps, &opts);
    free(exps);
    return status;
  }
  /* 2. Fork (with -d); the parent waits for the child's readiness. */
  if (daemon_start(&opts, &ds) == -1) {
    revert_all(exps, opts.nr_images);
    return EXIT_FAIL;
  }
  /* 3. Signals are taken by sigwait below, never by a FUSE worker. */
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  sigaddset(&set, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &set, NULL);
  /* 4. Mount every view; only then publish the pid file and detach. */
  if (daemon_prepare_pid_file(&ds, opts.pid_file) == -1
      || mount_all(exps, opts.nr_images) == -1
      || daemon_ready(&ds, opts.daemonize) == -1) {
    revert_all(exps, opts.nr_images);
    daemon_cleanup(&ds);
    daemon_fail(&ds, EXIT_FAIL);
    free_exports(exps, opts.nr_images);
    return EXIT_FAIL;
  }
  if (!opts.daemonize)
    announce(exps, opts.nr_images);
  /* 5. Serve, then revert. */
  wait_for_signal(&set, exps, opts.nr_images);
  status = revert_all(exps, opts.nr_images);
  daemon_finish(&ds, status);
  free_exports(exps, opts.nr_images);
  return status;
}
