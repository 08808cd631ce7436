/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: fde_utf16_to_utf8 (formats/utf16.h) against glibc's
 * iconv as the oracle: random names of code units in both byte orders
 * (ASCII, 2- and 3-byte ranges, surrogate pairs, unpaired surrogates,
 * NULs) decode to what iconv makes of them, and are refused exactly when
 * iconv refuses them; a NUL ends a VHD name and is refused in a VHDX
 * one. */
#include <config.h>

#include <errno.h>
#include <iconv.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "utf16.h"

#include "check.h"

/* iconv's UTF-8 for len bytes of UTF-16 (no BOM), NUL-terminated in out;
 * false if iconv refuses the input. */
static bool
oracle(const uint8_t *in, size_t len, bool big, char *out, size_t out_len)
{
  iconv_t cd = iconv_open("UTF-8", big ? "UTF-16BE" : "UTF-16LE");
  char *ip = (char *) in, *op = out;
  size_t il = len, ol = out_len - 1;
  bool ok;

  if (cd == (iconv_t) -1) {
    perror("iconv_open");
    exit(99);
  }
  ok = iconv(cd, &ip, &il, &op, &ol) != (size_t) -1 && il == 0;
  *op = '\0';
  iconv_close(cd);
  return ok;
}

/* A random code unit: mostly valid characters, sometimes a surrogate
 * half or a NUL. */
static uint16_t
random_unit(unsigned *seed)
{
  unsigned kind = (unsigned) rand_r(seed) % 16, v = (unsigned) rand_r(seed);

  switch (kind) {
  case 0:
    return (uint16_t) (0xd800 + v % 0x400);              /* high half */
  case 1:
    return (uint16_t) (0xdc00 + v % 0x400);              /* low half */
  case 2:
    return v % 8 == 0 ? 0 : (uint16_t) 'a';
  case 3: case 4:
    return (uint16_t) (0x80 + v % 0x780);                /* 2 bytes */
  case 5: case 6:
    return (uint16_t) (0xe000 + v % 0x2000);             /* 3 bytes */
  default:
    return (uint16_t) (0x20 + v % 0x5f);                 /* ASCII */
  }
}

static void
check_one(const uint16_t *units, size_t n, bool big)
{
  uint8_t bytes[64];
  char want[256], *got;
  size_t end = n;
  int r;

  for (size_t i = 0; i < n; i++) {
    bytes[2 * i] = (uint8_t) (big ? units[i] >> 8 : units[i]);
    bytes[2 * i + 1] = (uint8_t) (big ? units[i] : units[i] >> 8);
  }
  /* VHD: the name is what comes before the first NUL. */
  for (size_t i = 0; i < n; i++)
    if (units[i] == 0) {
      end = i;
      break;
    }
  bool valid = oracle(bytes, 2 * end, big, want, sizeof want);
  r = fde_utf16_to_utf8(bytes, 2 * n, big, FDE_UTF16_NUL_ENDS, &got);
  CHECK(valid ? r == 0 && got != NULL && strcmp(got, want) == 0
        : r == -EINVAL && got == NULL);
  free(got);
  /* VHDX: a NUL anywhere refuses the name. */
  valid = end == n && valid;
  r = fde_utf16_to_utf8(bytes, 2 * n, big, FDE_UTF16_NUL_REFUSED, &got);
  CHECK(valid ? r == 0 && got != NULL && strcmp(got, want) == 0
        : r == -EINVAL && got == NULL);
  free(got);
}

int
main(void)
{
  unsigned seed = 12;
  uint16_t units[32];
  static const uint16_t pair[] = { 0xd83d, 0xde00, 'x' };     /* U+1F600 */
  char *got;

  for (int i = 0; i < 200000; i++) {
    size_t n = (size_t) rand_r(&seed) % 32;
    for (size_t k = 0; k < n; k++)
      units[k] = random_unit(&seed);
    check_one(units, n, i % 2 == 0);
  }
  check_one(pair, 3, true);
  check_one(pair, 3, false);
  /* A trailing odd byte is ignored. */
  CHECK(fde_utf16_to_utf8((const uint8_t *) "a\0b", 3, false,
                          FDE_UTF16_NUL_REFUSED, &got) == 0
        && strcmp(got, "a") == 0);
  free(got);
  if (failures != 0)
    fprintf(stderr, "utf16-test: %d checks failed\n", failures);
  return failures != 0;
}
