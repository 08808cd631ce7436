/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: logging for unit tests and tools linked without
 * src/log.c — every message goes to stderr, one line each. */
#include <config.h>

#include <stdarg.h>
#include <stdio.h>

#include "format.h"

static const char *context;

void
fde_log_context(const char *image)
{
  context = image;
}

/* Print one prefixed line to stderr. */
static void
log_line(const char *level, const char *fmt, va_list ap)
{
  fprintf(stderr, "%s: %s%s", level, context ? context : "",
          context ? ": " : "");
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
}

#define DEFINE_LOG(fn, level)                   \
  void                                          \
  fn(const char *fmt, ...)                      \
  {                                             \
    va_list ap;                                 \
    va_start(ap, fmt);                          \
    log_line(level, fmt, ap);                   \
    va_end(ap);                                 \
  }

DEFINE_LOG(fde_error, "error")
DEFINE_LOG(fde_warn, "warning")
DEFINE_LOG(fde_info, "info")
DEFINE_LOG(fde_debug, "debug")
