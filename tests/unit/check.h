/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors
 *
 * CHECK(cond) for the C unit tests that report each failed condition by
 * its text and go on: a failure prints "FILE:LINE: check failed: COND"
 * on stderr and counts in failures, which main returns (nonzero fails
 * the test).  One per test program (static). */
#ifndef FDE_TESTS_UNIT_CHECK_H
#define FDE_TESTS_UNIT_CHECK_H

#include <stdio.h>

static int failures;

#define CHECK(cond)                                                     \
  do {                                                                  \
    if (!(cond)) {                                                      \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__,  \
              #cond);                                                   \
      failures++;                                                       \
    }                                                                   \
  } while (0)

#endif
