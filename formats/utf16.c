/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: UTF-16 to UTF-8 for names stored in images. */
#include <config.h>

#include <errno.h>
#include <stdlib.h>

#include "utf16.h"

static uint32_t
unit_at(const uint8_t *p, bool big)
{
  return big ? (uint32_t) (p[0] << 8 | p[1]) : (uint32_t) (p[0] | p[1] << 8);
}

/* Append code point c (below 0x110000) to *out as UTF-8. */
static void
put_utf8(char **out, uint32_t c)
{
  char *p = *out;

  if (c < 0x80) {
    *p++ = (char) c;
  } else if (c < 0x800) {
    *p++ = (char) (0xc0 | c >> 6);
    *p++ = (char) (0x80 | (c & 0x3f));
  } else if (c < 0x10000) {
    *p++ = (char) (0xe0 | c >> 12);
    *p++ = (char) (0x80 | (c >> 6 & 0x3f));
    *p++ = (char) (0x80 | (c & 0x3f));
  } else {
    *p++ = (char) (0xf0 | c >> 18);
    *p++ = (char) (0x80 | (c >> 12 & 0x3f));
    *p++ = (char) (0x80 | (c >> 6 & 0x3f));
    *p++ = (char) (0x80 | (c & 0x3f));
  }
  *out = p;
}

int
fde_utf16_to_utf8(const uint8_t *in, size_t len, bool big,
                  enum fde_utf16_nul nul, char **out)
{
  /* Each unit gives at most 3 bytes; a pair (2 units) gives 4. */
  char *s = malloc(len / 2 * 3 + 1), *p = s;

  *out = NULL;
  if (s == NULL)
    return -ENOMEM;
  for (size_t i = 0; i + 1 < len; i += 2) {
    uint32_t c = unit_at(in + i, big);
    if (c == 0 && nul == FDE_UTF16_NUL_ENDS)
      break;
    if (c >= 0xd800 && c < 0xdc00 && i + 3 < len) {
      uint32_t lo = unit_at(in + i + 2, big);
      if (lo >= 0xdc00 && lo < 0xe000) {
        c = 0x10000 + ((c - 0xd800) << 10) + (lo - 0xdc00);
        i += 2;
      }
    }
    if (c == 0 || (c >= 0xd800 && c < 0xe000)) {
      free(s);
      return -EINVAL;
    }
    put_utf8(&p, c);
  }
  *p = '\0';
  *out = s;
  return 0;
}
