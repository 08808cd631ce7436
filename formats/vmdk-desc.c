/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: parsing a VMDK descriptor's text (see vmdk-desc.h).
 *
 * VMware's "Virtual Disk Format 5.0" ("The Descriptor File") as QEMU's
 * block/vmdk.c reads it.  QEMU scans each extent line with
 * sscanf("%10s %lld %10s \"%511[^\n\r\"]\" %lld"); the small scanner
 * below does the same field by field, within one line. */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "format.h"
#include "vmdk-desc.h"

#define WORD_MAX 10     /* QEMU's %10s */

/* ---- Probe -------------------------------------------------------------- */

/* Does buf (len bytes) start with "version=N" for N in 1..3, ended by
 * "\n" or "\r\n"? */
static bool
version_line(const char *p, size_t len)
{
  if (len < 10 || strncmp(p, "version=", 8) != 0 || p[8] < '1' || p[8] > '3')
    return false;
  return p[9] == '\n' || (len >= 11 && p[9] == '\r' && p[10] == '\n');
}

bool
vmdk_desc_probe(const char *buf, size_t len)
{
  const char *p = buf, *end = buf + len;

  while (p < end) {
    if (*p == '#') {                    /* a comment line */
      while (p < end && *p != '\n')
        p++;
      p++;
      continue;
    }
    if (*p == ' ') {                    /* a line of spaces only */
      while (p < end && *p == ' ')
        p++;
      if (p < end && *p == '\r')
        p++;
      if (p == end || *p != '\n')
        return false;
      p++;
      continue;
    }
    return version_line(p, (size_t) (end - p));
  }
  return false;
}

/* ---- One line, as sscanf reads it --------------------------------------- */

struct scan {
  const char *p, *end;          /* the rest of the line ('\n' excluded) */
};

/* sscanf's white space, less '\n' (the line's end). */
static bool
is_space(char c)
{
  return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

static void
skip_space(struct scan *s)
{
  while (s->p < s->end && is_space(*s->p))
    s->p++;
}

/* %10s: up to WORD_MAX characters that are not white space. */
static bool
scan_word(struct scan *s, char word[WORD_MAX + 1])
{
  size_t n = 0;

  skip_space(s);
  while (s->p < s->end && !is_space(*s->p) && n < WORD_MAX)
    word[n++] = *s->p++;
  word[n] = '\0';
  return n > 0;
}

/* %lld: 1 with *v set, 0 if there is no number, -ERANGE if it does not
 * fit in 64 bits (sscanf would saturate; we refuse). */
static int
scan_int(struct scan *s, int64_t *v)
{
  bool neg = false, range = false;
  uint64_t x = 0;
  const char *start;

  skip_space(s);
  if (s->p < s->end && (*s->p == '+' || *s->p == '-'))
    neg = *s->p++ == '-';
  start = s->p;
  while (s->p < s->end && *s->p >= '0' && *s->p <= '9') {
    unsigned d = (unsigned) (*s->p++ - '0');
    if (x > (UINT64_MAX - d) / 10)
      range = true;
    else
      x = x * 10 + d;
  }
  if (s->p == start)
    return 0;
  if (range || x > (uint64_t) INT64_MAX)
    return -ERANGE;
  *v = neg ? -(int64_t) x : (int64_t) x;
  return 1;
}

/* The fields of an extent line (QEMU's five conversions) and how many of
 * them were read (sscanf's count), or -errno (logged) for a field we
 * refuse where QEMU would go on: a name over VMDK_NAME_MAX bytes, a
 * number outside the signed 64-bit range (QEMU reads them as int64_t). */
struct extent_fields {
  char access[WORD_MAX + 1], type[WORD_MAX + 1];
  int64_t sectors, offset;
  const char *name;
  size_t name_len;
};

static int
scan_fields(struct scan *s, struct extent_fields *f, const char *where)
{
  const char *q;
  int r;

  if (!scan_word(s, f->access))
    return 0;
  if ((r = scan_int(s, &f->sectors)) <= 0)
    goto number;
  if (!scan_word(s, f->type))
    return 2;
  skip_space(s);
  if (s->p == s->end || *s->p != '"')
    return 3;
  for (q = ++s->p; q < s->end && *q != '"' && *q != '\r'; q++)
    ;
  if (q == s->p)
    return 3;
  if ((size_t) (q - s->p) > VMDK_NAME_MAX) {
    fde_error("%s: VMDK extent file name longer than %u bytes", where,
              VMDK_NAME_MAX);
    return -EINVAL;
  }
  f->name = s->p;
  f->name_len = (size_t) (q - s->p);
  if (q == s->end || *q != '"')
    return 4;
  s->p = q + 1;
  if ((r = scan_int(s, &f->offset)) <= 0)
    goto number;
  return 5;

number:
  if (r == 0)
    return f->name != NULL ? 4 : 1;
  fde_error("%s: VMDK extent line has a number outside the signed 64-bit "
            "range", where);
  return -EINVAL;
}

/* ---- Extent lines ------------------------------------------------------- */

static const struct {
  const char *name;
  enum vmdk_extent_type type;
} extent_types[] = {
  { "FLAT", VMDK_EXT_FLAT }, { "VMFS", VMDK_EXT_VMFS },
  { "SPARSE", VMDK_EXT_SPARSE }, { "VMFSSPARSE", VMDK_EXT_VMFSSPARSE },
};

/* The extent type named type; false for ZERO, VMFSRDM and the others
 * that QEMU skips. */
static bool
known_type(const char *type, enum vmdk_extent_type *t)
{
  for (size_t i = 0; i < sizeof extent_types / sizeof extent_types[0]; i++)
    if (strcmp(type, extent_types[i].name) == 0) {
      *t = extent_types[i].type;
      return true;
    }
  return false;
}

/* Our rule for an extent's name: relative to the descriptor's directory
 * and never leaving it (no leading '/', no ".." component).  QEMU takes
 * any name; an image must not make us show /etc/shadow or ../x. */
static bool
name_allowed(const char *name)
{
  const char *c = name;

  if (name[0] == '/')
    return false;
  while (*c != '\0') {
    size_t n = strcspn(c, "/");
    if (n == 2 && c[0] == '.' && c[1] == '.')
      return false;
    c += n;
    c += *c == '/';
  }
  return true;
}

/* Add the extent of f (matches fields read) to d. */
static int
add_extent(struct vmdk_desc *d, const struct extent_fields *f,
           enum vmdk_extent_type type, const char *path, unsigned lineno)
{
  struct vmdk_desc_extent *e;
  char *name;

  if (f->sectors > INT64_MAX / 512
      || (type == VMDK_EXT_FLAT && f->offset > INT64_MAX / 512)) {
    fde_error("%s: VMDK descriptor line %u: extent size or offset too "
              "large", path, lineno);
    return -EINVAL;
  }
  if (d->n_ext == VMDK_MAX_EXTENTS) {
    fde_error("%s: VMDK descriptor has more than %u extents", path,
              VMDK_MAX_EXTENTS);
    return -EINVAL;
  }
  if ((name = strndup(f->name, f->name_len)) == NULL)
    return -ENOMEM;
  if (!name_allowed(name)) {
    fde_error("%s: VMDK extent file name '%s' is absolute or goes up "
              "with '..' (extents must be in the descriptor's directory)",
              path, name);
    free(name);
    return -EINVAL;
  }
  if (d->n_ext % 16 == 0) {
    e = realloc(d->ext, (d->n_ext + 16) * sizeof *e);
    if (e == NULL) {
      free(name);
      return -ENOMEM;
    }
    d->ext = e;
  }
  d->ext[d->n_ext++] = (struct vmdk_desc_extent) {
    .type = type, .sectors = (uint64_t) f->sectors, .name = name,
    .offset = type == VMDK_EXT_FLAT ? (uint64_t) f->offset : 0,
  };
  return 0;
}

/* One line (len bytes, no '\n') of a descriptor file, as
 * vmdk_parse_extents takes it: skipped, an extent, or refused. */
static int
parse_line(struct vmdk_desc *d, const char *line, size_t len,
           const char *path, unsigned lineno)
{
  struct scan s = { line, line + len };
  struct extent_fields f = { .offset = -1 };
  enum vmdk_extent_type type;
  int matches = scan_fields(&s, &f, path);
  bool ok;

  if (matches < 0)
    return matches;
  if (matches < 4 || strcmp(f.access, "RW") != 0)
    return 0;                           /* not an extent QEMU reads */
  if (strcmp(f.type, "FLAT") == 0)
    ok = matches == 5 && f.offset >= 0;
  else
    ok = matches == 4;
  if (!ok) {
    fde_error("%s: invalid VMDK extent line %u: %.*s", path, lineno,
              (int) (len > 80 ? 80 : len), line);
    return -EINVAL;
  }
  if (strcmp(f.type, "SESPARSE") == 0 && f.sectors > 0) {
    fde_error("%s: VMDK seSparse extents are not supported", path);
    return -ENOTSUP;
  }
  if (f.sectors <= 0 || !known_type(f.type, &type))
    return 0;                           /* QEMU skips them too */
  return add_extent(d, &f, type, path, lineno);
}

/* ---- createType --------------------------------------------------------- */

/* QEMU's vmdk_parse_description(text, "createType"): the first
 * "createType" anywhere (a comment too), two characters skipped ("=\""),
 * the value up to the next '"', which must fit in the buffer. */
static int
create_type(const char *text, const char *path, char *out, size_t size)
{
  const char *p = strstr(text, "createType"), *q;

  if (p != NULL && strlen(p) > strlen("createType") + 2) {
    p += strlen("createType") + 2;
    if ((q = strchr(p, '"')) != NULL && (size_t) (q - p) < size) {
      memcpy(out, p, (size_t) (q - p));
      out[q - p] = '\0';
      return 0;
    }
  }
  fde_error("%s: invalid VMDK descriptor (no createType=\"...\")", path);
  return -EINVAL;
}

static int
check_create_type(const char *ct, const char *path)
{
  static const char *const served[] = {
    "monolithicFlat", "vmfs", "vmfsSparse", "twoGbMaxExtentSparse",
    "twoGbMaxExtentFlat",
  };

  for (size_t i = 0; i < sizeof served / sizeof served[0]; i++)
    if (strcmp(ct, served[i]) == 0)
      return 0;
  fde_error("%s: VMDK descriptor file of type '%s' is not supported%s",
            path, ct, strcmp(ct, "seSparse") == 0 ? " (seSparse)"
            : " (QEMU reads monolithicFlat, vmfs, vmfsSparse, "
            "twoGbMaxExtentSparse and twoGbMaxExtentFlat)");
  return -ENOTSUP;
}

/* ---- ddb lines ---------------------------------------------------------- */

/* Copy the printable ASCII of [p, p + n) into out (size bytes). */
static void
copy_printable(char *out, size_t size, const char *p, size_t n)
{
  size_t o = 0;

  for (size_t i = 0; i < n && o + 1 < size; i++)
    if (p[i] >= 0x20 && p[i] < 0x7f)
      out[o++] = p[i];
  out[o] = '\0';
}

/* One "ddb.KEY = "VALUE"" line (len bytes): the keys --probe shows. */
static void
parse_ddb_line(struct vmdk_ddb *ddb, const char *line, size_t len)
{
  static const struct { const char *key; size_t off, size; } keys[] = {
#define KEY(k, f) { k, offsetof(struct vmdk_ddb, f), \
                    sizeof ((struct vmdk_ddb *) 0)->f }
    KEY("ddb.adapterType", adapter_type),
    KEY("ddb.geometry.cylinders", cylinders),
    KEY("ddb.geometry.heads", heads),
    KEY("ddb.geometry.sectors", sectors),
    KEY("ddb.virtualHWVersion", hw_version),
#undef KEY
  };
  struct scan s = { line, line + len };
  const char *key, *v;

  skip_space(&s);
  key = s.p;
  while (s.p < s.end && !is_space(*s.p) && *s.p != '=')
    s.p++;
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
    if ((size_t) (s.p - key) != strlen(keys[i].key)
        || memcmp(key, keys[i].key, strlen(keys[i].key)) != 0)
      continue;
    skip_space(&s);
    if (s.p == s.end || *s.p++ != '=')
      return;
    skip_space(&s);
    if (s.p < s.end && *s.p == '"')
      s.p++;
    for (v = s.p; s.p < s.end && *s.p != '"'; s.p++)
      ;
    copy_printable((char *) ddb + keys[i].off, keys[i].size, v,
                   (size_t) (s.p - v));
  }
}

void
vmdk_desc_parse_ddb(const char *text, struct vmdk_ddb *ddb)
{
  for (const char *p = text; *p != '\0';) {
    const char *nl = strchr(p, '\n');
    size_t len = nl != NULL ? (size_t) (nl - p) : strlen(p);
    parse_ddb_line(ddb, p, len);
    p += len + (nl != NULL);
  }
}

/* ---- The whole descriptor ----------------------------------------------- */

int
vmdk_desc_parse(const char *text, const char *path, struct vmdk_desc *d)
{
  unsigned lineno = 0;
  int r;

  *d = (struct vmdk_desc) { .n_ext = 0 };
  if ((r = create_type(text, path, d->create_type, sizeof d->create_type))
      < 0 || (r = check_create_type(d->create_type, path)) < 0)
    return r;
  for (const char *p = text; *p != '\0';) {
    const char *nl = strchr(p, '\n');
    size_t len = nl != NULL ? (size_t) (nl - p) : strlen(p);
    if (++lineno > VMDK_MAX_LINES) {
      fde_error("%s: VMDK descriptor has more than %u lines", path,
                VMDK_MAX_LINES);
      return -EINVAL;
    }
    if ((r = parse_line(d, p, len, path, lineno)) < 0)
      return r;
    parse_ddb_line(&d->ddb, p, len);
    p += len + (nl != NULL);
  }
  return 0;
}

void
vmdk_desc_free(struct vmdk_desc *d)
{
  for (unsigned i = 0; i < d->n_ext; i++)
    free(d->ext[i].name);
  free(d->ext);
  d->ext = NULL;
  d->n_ext = 0;
}

/* ---- CID, parentCID, parentFileNameHint --------------------------------- */

/* sscanf's %x after key (QEMU's vmdk_read_cid: the first occurrence of
 * key, then strlen(key) + 1 characters skipped: "CID=", "parentCID=").
 * Digits past 32 bits are kept modulo 2^32 (sscanf's is undefined). */
static bool
read_hex(const char *text, const char *key, uint32_t *out)
{
  const char *p = strstr(text, key);
  uint64_t x = 0;
  bool neg = false, any = false;

  if (p == NULL || strlen(p) < strlen(key) + 1)
    return false;
  p += strlen(key) + 1;
  while (*p == ' ' || (*p >= '\t' && *p <= '\r'))
    p++;
  if (*p == '+' || *p == '-')
    neg = *p++ == '-';
  if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')
      && strchr("0123456789abcdefABCDEF", p[2]) != NULL && p[2] != '\0')
    p += 2;
  for (; *p != '\0' && strchr("0123456789abcdefABCDEF", *p) != NULL; p++) {
    x = x << 4 | (uint64_t) (*p <= '9' ? *p - '0' : (*p | 0x20) - 'a' + 10);
    any = true;
  }
  *out = (uint32_t) (neg ? -x : x);
  return any;
}

/* QEMU's vmdk_parent_open: "parentFileNameHint", two more characters
 * skipped ("=\""), the name up to the next '"'. */
static int
parent_hint(const char *text, const char *path, char **hint)
{
  const char *p = strstr(text, "parentFileNameHint"), *q;

  *hint = NULL;
  if (p == NULL)
    return 0;
  if (strlen(p) >= strlen("parentFileNameHint") + 2)
    p += strlen("parentFileNameHint") + 2;
  else
    p = "";
  if ((q = strchr(p, '"')) == NULL || (size_t) (q - p) > VMDK_HINT_MAX) {
    fde_error("%s: VMDK parentFileNameHint has no closing quote or is "
              "longer than %u bytes", path, VMDK_HINT_MAX);
    return -EINVAL;
  }
  if (q == p)
    return 0;                           /* empty: no parent, as QEMU */
  return (*hint = strndup(p, (size_t) (q - p))) == NULL ? -ENOMEM : 0;
}

int
vmdk_desc_ids(const char *text, size_t id_len, const char *path,
              struct vmdk_ids *ids)
{
  char *t = strndup(text, id_len < VMDK_DESC_ID_BYTES - 1 ? id_len
                    : VMDK_DESC_ID_BYTES - 1);
  int r;

  *ids = (struct vmdk_ids) { .parent_hint = NULL };
  if (t == NULL)
    return -ENOMEM;
  if (!read_hex(t, "CID", &ids->cid) || !read_hex(t, "parentCID",
                                                  &ids->parent_cid)) {
    fde_error("%s: VMDK descriptor has no CID or parentCID in its first "
              "%u bytes", path, VMDK_DESC_ID_BYTES);
    r = -EINVAL;
  } else
    r = parent_hint(t, path, &ids->parent_hint);
  free(t);
  return r;
}
