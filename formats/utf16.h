/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: UTF-16 names stored in images (VHD parent locators
 * and header names, VHDX parent locators), decoded to UTF-8 for use as
 * POSIX file names. */
#ifndef FDE_UTF16_H
#define FDE_UTF16_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* How fde_utf16_to_utf8 treats a NUL code unit. */
enum fde_utf16_nul {
  FDE_UTF16_NUL_ENDS,           /* the name ends at its first NUL (VHD) */
  FDE_UTF16_NUL_REFUSED,        /* a NUL makes the name invalid (VHDX) */
};

/* Decode the first len bytes of in (UTF-16, big endian if big, else
 * little endian; a trailing odd byte is ignored) into a malloc'd,
 * NUL-terminated UTF-8 string in *out, owned by the caller.  Surrogate
 * pairs are joined; an unpaired surrogate, or a NUL when nul is
 * FDE_UTF16_NUL_REFUSED, makes the name invalid.  Returns 0, -EINVAL for
 * an invalid name (*out NULL) or -ENOMEM (*out NULL). */
int fde_utf16_to_utf8(const uint8_t *in, size_t len, bool big,
                      enum fde_utf16_nul nul, char **out);

#endif
