/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: messages.  One line each, to stderr while in the
 * foreground and to syslog once daemonized. */
#include <config.h>

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <syslog.h>

#include "internal.h"

/* Set once the daemon has detached, while FUSE workers may be logging. */
static atomic_bool use_syslog;
static int verbosity;
static const char *context;     /* see fde_log_context */

void
fde_log_context(const char *image)
{
  context = image;
}

void
log_to_syslog(void)
{
  openlog("fuse-disk-export", LOG_PID, LOG_DAEMON);
  atomic_store(&use_syslog, true);
}

void
log_set_verbosity(int verbose)
{
  verbosity = verbose;
}

static void
vlog(int priority, const char *prefix, const char *fmt, va_list ap)
{
  if (atomic_load(&use_syslog)) {
    vsyslog(priority, fmt, ap);
    return;
  }
  flockfile(stderr);
  fprintf(stderr, "fuse-disk-export: %s%s%s", context ? context : "",
          context ? ": " : "", prefix);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  funlockfile(stderr);
}

#define DEFINE_LOG(fn, priority, prefix, min_verbosity)         \
  void                                                          \
  fn(const char *fmt, ...)                                      \
  {                                                             \
    va_list ap;                                                 \
    if (verbosity < (min_verbosity))                            \
      return;                                                   \
    va_start(ap, fmt);                                          \
    vlog(priority, prefix, fmt, ap);                            \
    va_end(ap);                                                 \
  }

DEFINE_LOG(fde_error, LOG_ERR, "", -1)
DEFINE_LOG(fde_warn, LOG_WARNING, "warning: ", 0)
DEFINE_LOG(fde_info, LOG_INFO, "", 0)
DEFINE_LOG(fde_debug, LOG_DEBUG, "", 1)

/* Status lines for the user (the "export is live" line): stdout in the
 * foreground, suppressed by -q. */
void
log_message(const char *fmt, ...)
{
  va_list ap;

  if (verbosity < 0 || use_syslog)
    return;
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  putchar('\n');
  fflush(stdout);
}
