/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: OVA appliances, read-only.
 *
 * An OVA is a tar archive holding an OVF descriptor (XML) and the files it
 * names, disks among them (DMTF DSP0243 "OVF": the .ovf first, then the
 * optional .mf and .cert, then the files).  Its disk N is exported in
 * place: the tar member holding it is opened with its own format (a
 * streamOptimized VMDK usually, raw too) on a window of the archive
 * (fde_open_params file_offset/file_length), and the "ova" disk is a
 * layer (formats/layer.h) forwarding every member to it, as an nbdkit
 * filter does.  Nothing is extracted or copied.  QEMU has no OVA driver:
 * virt-v2v opens a member through the raw driver's offset and size, which
 * is what the window is (reference formats.md, section 6).
 *
 * The tar walk (POSIX ustar, GNU tar's format and pax extended headers)
 * validates every header before use: its checksum (the unsigned sum, or
 * the historic signed one, as GNU tar accepts), its magic, the size (octal
 * or GNU base-256; negative or past INT64_MAX refused) and that the data
 * lies inside the file (64-bit overflow-checked); names are non-empty,
 * valid UTF-8 without control characters, backslashes, a leading '/' or a
 * ".." component, and unique; pax records and GNU long names are bounded
 * (OVA_MAX_NAME), so is the number of members (OVA_MAX_MEMBERS); a header
 * that is neither all zeros nor valid is refused, never skipped.  The end
 * is a zero block or the end of the file.
 *
 * The OVF is parsed with libxml2 (no network, no DTD: a DOCTYPE, and so
 * any entity declaration, stops the parse; no entity is expanded) and
 * only References/File (id, href, size, compression, chunkSize) and
 * DiskSection/Disk (diskId, fileRef, format) are read.  The disks are the
 * DiskSection's, in its order (a Disk without a file, a blank disk made
 * at deployment, is skipped); without a DiskSection, the files References
 * names, in the order of the archive.  A file named but missing, a disk
 * member that is not a regular file (a link, a device, a GNU or pax
 * sparse member), compressed or chunked files, and a size that differs
 * from the member's are refused.  A disk's format is probed from its own
 * bytes by the table of formats, and must be one that may be opened on a
 * window (fde_format.in_container); others are refused by name.
 *
 * Everything is read at open; the layer holds no state that changes, so
 * its members need no locking beyond the inner disk's.  Errors: one line
 * naming the OVA and the problem, -EINVAL for a malformed or hostile
 * archive, -ENOTSUP for what is valid but not supported. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libxml/parser.h>
#include <libxml/tree.h>

#include "format.h"
#include "layer.h"

#define TAR_BLOCK        512u
#define OVA_MAX_MEMBERS  10000u         /* members of one archive */
#define OVA_MAX_NAME     4096u          /* a pax path or GNU long name */
#define OVA_MAX_PAX      65536u         /* one pax extended header's data */
#define OVA_MAX_OVF      (4u << 20)     /* the OVF descriptor's bytes */
#define OVA_MAX_DISKS    256u           /* disks an OVF names */
#define OVA_MAX_FILES    1024u          /* files its References list */

/* ---- The tar walk ------------------------------------------------------ */

/* Header fields (POSIX ustar; GNU tar's format shares them up to 345). */
enum {
  TAR_NAME = 0, TAR_NAME_LEN = 100, TAR_SIZE = 124, TAR_SIZE_LEN = 12,
  TAR_CHKSUM = 148, TAR_CHKSUM_LEN = 8, TAR_TYPE = 156, TAR_MAGIC = 257,
  TAR_PREFIX = 345, TAR_PREFIX_LEN = 155,
};

/* One member of the archive. */
struct ova_member {
  char *name;           /* as the archive names it, a leading "./" dropped */
  uint64_t offset;      /* its data: bytes of the OVA file */
  uint64_t size;
  char type;            /* typeflag ('0' for a regular file; NUL made '0') */
  bool sparse;          /* a pax GNU.sparse member: its data is no file */
};

struct ova_tar {
  struct ova_member *members;
  size_t n;
};

/* What a pax 'x' header or a GNU 'L' header says of the next member. */
struct tar_pending {
  char *name;           /* malloc'd, or NULL */
  bool has_size;
  uint64_t size;
  bool sparse;
};

static void
tar_free(struct ova_tar *t)
{
  for (size_t i = 0; i < t->n; i++)
    free(t->members[i].name);
  free(t->members);
  t->members = NULL;
  t->n = 0;
}

/* Is h a valid header by its checksum: the sum of its bytes with the
 * checksum field counted as spaces, unsigned (POSIX) or signed (the
 * historic tars GNU tar still accepts), equal to the field's octal? */
static bool
tar_checksum_ok(const uint8_t *h)
{
  uint64_t stored = 0, usum = 0;
  int64_t ssum = 0;
  size_t i = 0;
  bool digits = false;

  while (i < TAR_CHKSUM_LEN && h[TAR_CHKSUM + i] == ' ')
    i++;
  for (; i < TAR_CHKSUM_LEN && h[TAR_CHKSUM + i] >= '0'
         && h[TAR_CHKSUM + i] <= '7'; i++, digits = true)
    stored = stored * 8 + (uint64_t) (h[TAR_CHKSUM + i] - '0');
  for (; i < TAR_CHKSUM_LEN; i++)
    if (h[TAR_CHKSUM + i] != ' ' && h[TAR_CHKSUM + i] != '\0')
      return false;
  if (!digits)
    return false;
  for (i = 0; i < TAR_BLOCK; i++) {
    uint8_t c = i >= TAR_CHKSUM && i < TAR_CHKSUM + TAR_CHKSUM_LEN ? ' '
                : h[i];
    usum += c;
    ssum += (int8_t) c;
  }
  return stored == usum || (ssum >= 0 && stored == (uint64_t) ssum);
}

/* The size field: octal digits between optional leading spaces and
 * trailing spaces or NULs, or GNU base-256 (bit 7 of the first byte; bit
 * 6 set is a negative number).  NULL, or why it is refused. */
static const char *
tar_size(const uint8_t *f, uint64_t *out)
{
  uint64_t v = 0;
  size_t i = 0;

  if (f[0] & 0x80) {
    if (f[0] & 0x40)
      return "a negative size";
    v = f[0] & 0x3f;
    for (i = 1; i < TAR_SIZE_LEN; i++) {
      if (v > (UINT64_MAX >> 8))
        return "a size past 2^63";
      v = v << 8 | f[i];
    }
    if (v > INT64_MAX)
      return "a size past 2^63";
    *out = v;
    return NULL;
  }
  while (i < TAR_SIZE_LEN && f[i] == ' ')
    i++;
  for (; i < TAR_SIZE_LEN && f[i] >= '0' && f[i] <= '7'; i++)
    v = v * 8 + (uint64_t) (f[i] - '0');   /* 12 digits: < 2^36 */
  for (; i < TAR_SIZE_LEN; i++)
    if (f[i] != ' ' && f[i] != '\0')
      return "a size field that is not octal";
  *out = v;
  return NULL;
}

/* Is s (NUL-terminated) valid UTF-8 without control characters? */
static bool
utf8_ok(const char *s)
{
  const unsigned char *p = (const unsigned char *) s;

  while (*p != '\0') {
    unsigned c = *p, n;
    uint32_t cp;
    if (c < 0x20 || c == 0x7f)
      return false;
    if (c < 0x80) {
      p++;
      continue;
    }
    if (c >= 0xc2 && c <= 0xdf) { n = 1; cp = c & 0x1f; }
    else if (c >= 0xe0 && c <= 0xef) { n = 2; cp = c & 0x0f; }
    else if (c >= 0xf0 && c <= 0xf4) { n = 3; cp = c & 0x07; }
    else return false;
    for (unsigned k = 1; k <= n; k++) {
      if ((p[k] & 0xc0) != 0x80)
        return false;
      cp = cp << 6 | (p[k] & 0x3f);
    }
    if ((n == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff)))
        || (n == 3 && (cp < 0x10000 || cp > 0x10ffff)))
      return false;
    p += n + 1;
  }
  return true;
}

/* A member name's problem, or NULL: empty, absolute, a backslash, a ".."
 * component, not UTF-8 or a control character. */
static const char *
name_problem(const char *name)
{
  if (name[0] == '\0')
    return "an empty name";
  if (name[0] == '/')
    return "an absolute name";
  if (strchr(name, '\\') != NULL)
    return "a backslash in a name";
  for (const char *p = name; p != NULL; p = strchr(p, '/')) {
    if (*p == '/')
      p++;
    if (p[0] == '.' && p[1] == '.' && (p[2] == '/' || p[2] == '\0'))
      return "a \"..\" component in a name";
  }
  if (!utf8_ok(name))
    return "a name that is not UTF-8 text";
  return NULL;
}

/* The name a plain header gives: POSIX prefix "/" name (the prefix field
 * is GNU tar's times in its own format), each field NUL- or
 * length-terminated.  malloc'd, or NULL. */
static char *
header_name(const uint8_t *h, bool posix)
{
  size_t nlen = strnlen((const char *) h + TAR_NAME, TAR_NAME_LEN);
  size_t plen = posix ? strnlen((const char *) h + TAR_PREFIX,
                                TAR_PREFIX_LEN) : 0;
  char *s = malloc(plen + 1 + nlen + 1);

  if (s == NULL)
    return NULL;
  if (plen > 0) {
    memcpy(s, h + TAR_PREFIX, plen);
    s[plen++] = '/';
  }
  memcpy(s + plen, h + TAR_NAME, nlen);
  s[plen + nlen] = '\0';
  return s;
}

/* Read the len bytes of data at off (the caller checked they are inside
 * the file) into a malloc'd, NUL-terminated buffer.  0 or -errno. */
static int
read_data(int fd, uint64_t off, size_t len, char **out)
{
  char *buf = malloc(len + 1);
  int r;

  if (buf == NULL)
    return -ENOMEM;
  if ((r = fde_pread_full(fd, buf, len, off)) < 0) {
    free(buf);
    return r;
  }
  buf[len] = '\0';
  *out = buf;
  return 0;
}

/* Apply the records of a pax extended header ("LEN key=value\n"...) to
 * pend: path, size, and GNU.sparse.* (which makes the member's data a
 * sparse map, not the file).  NULL, or why it is refused. */
static const char *
pax_apply(char *data, size_t len, struct tar_pending *pend)
{
  size_t pos = 0;

  while (pos < len) {
    char *rec = data + pos, *end, *key, *eq;
    unsigned long long rlen;
    if (rec[0] < '1' || rec[0] > '9')
      return "a malformed pax record";
    errno = 0;
    rlen = strtoull(rec, &end, 10);
    if (errno != 0 || *end != ' ' || rlen > len - pos
        || rlen < (unsigned long long) (end - rec) + 3
        || rec[rlen - 1] != '\n')
      return "a malformed pax record";
    rec[rlen - 1] = '\0';
    key = end + 1;
    if ((eq = strchr(key, '=')) == NULL || eq == key)
      return "a malformed pax record";
    *eq = '\0';
    if (strlen(eq + 1) != (size_t) (rec + rlen - 1 - (eq + 1)))
      return "a NUL inside a pax record";
    if (strcmp(key, "path") == 0) {
      if (strlen(eq + 1) > OVA_MAX_NAME)
        return "a pax path longer than 4096 bytes";
      free(pend->name);
      if ((pend->name = strdup(eq + 1)) == NULL)
        return "out of memory";
    } else if (strcmp(key, "size") == 0) {
      const char *v = eq + 1;
      if (*v < '0' || *v > '9')
        return "a malformed pax size";
      errno = 0;
      pend->size = strtoull(v, &end, 10);
      if (errno != 0 || *end != '\0' || pend->size > INT64_MAX)
        return "a malformed pax size";
      pend->has_size = true;
    } else if (strncmp(key, "GNU.sparse.", 11) == 0) {
      pend->sparse = true;      /* GNU.sparse.name: the file's own name */
      if (strcmp(key, "GNU.sparse.name") == 0) {
        if (strlen(eq + 1) > OVA_MAX_NAME)
          return "a pax path longer than 4096 bytes";
        free(pend->name);
        if ((pend->name = strdup(eq + 1)) == NULL)
          return "out of memory";
      }
    }
    pos += rlen;
  }
  return NULL;
}

/* Walk state for one archive. */
struct tar_walk {
  int fd;
  const char *path;             /* the OVA, for messages */
  uint64_t file_size;
  struct ova_tar *tar;
  struct tar_pending pend;
};

/* Add the member whose header h is at off (its pending long name or pax
 * values applied), or, for a pax or GNU long-name header, record what it
 * says of the next one.  *next: where the next header is.  0 or -errno
 * (logged). */
static int
tar_member(struct tar_walk *w, const uint8_t *h, uint64_t off,
           uint64_t *next)
{
  bool posix = memcmp(h + TAR_MAGIC, "ustar\0" "00", 8) == 0;
  char type = h[TAR_TYPE] == '\0' ? '0' : (char) h[TAR_TYPE];
  const char *why;
  uint64_t size, data = off + TAR_BLOCK;
  struct ova_member *m;
  char *name;
  int r;

  if (!posix && memcmp(h + TAR_MAGIC, "ustar  \0", 8) != 0) {
    fde_error("%s: the tar header at byte %" PRIu64 " is not a ustar or GNU "
              "tar header", w->path, off);
    return -EINVAL;
  }
  if ((why = tar_size(h + TAR_SIZE, &size)) != NULL) {
    fde_error("%s: the tar header at byte %" PRIu64 " has %s", w->path, off,
              why);
    return -EINVAL;
  }
  if (type != 'x' && type != 'g' && type != 'L' && type != 'K'
      && w->pend.has_size)
    size = w->pend.size;
  if (data > w->file_size || size > w->file_size - data) {
    fde_error("%s: the tar member at byte %" PRIu64 " (%" PRIu64 " bytes) "
              "runs past the end of the file (%" PRIu64 " bytes): truncated "
              "or corrupt", w->path, off, size, w->file_size);
    return -EINVAL;
  }
  /* size <= INT64_MAX: no overflow; past the end only when data ends the
   * file without its padding, and then the walk ends there */
  *next = data + ((size + TAR_BLOCK - 1) / TAR_BLOCK) * TAR_BLOCK;
  if (type == 'x' || type == 'L') {
    char *buf;
    if (size > (type == 'x' ? OVA_MAX_PAX : OVA_MAX_NAME + 1)) {
      fde_error("%s: the %s at byte %" PRIu64 " has %" PRIu64 " bytes, more "
                "than we accept", w->path, type == 'x' ? "pax extended header"
                : "GNU long name", off, size);
      return -EINVAL;
    }
    if ((r = read_data(w->fd, data, (size_t) size, &buf)) < 0) {
      fde_error("%s: read: %s", w->path, strerror(-r));
      return r;
    }
    why = NULL;
    if (type == 'x')
      why = pax_apply(buf, (size_t) size, &w->pend);
    else if (strlen(buf) > OVA_MAX_NAME)
      why = "a GNU long name longer than 4096 bytes";
    else {
      free(w->pend.name);
      w->pend.name = buf;
      buf = NULL;
    }
    free(buf);
    if (why != NULL) {
      fde_error("%s: the tar header at byte %" PRIu64 " has %s", w->path,
                off, why);
      return -EINVAL;
    }
    return 0;
  }
  if (type == 'g' || type == 'K')
    return 0;                   /* global pax values, long link names */
  if (w->tar->n >= OVA_MAX_MEMBERS) {
    fde_error("%s: more than %u members in the archive", w->path,
              OVA_MAX_MEMBERS);
    return -EINVAL;
  }
  name = w->pend.name != NULL ? w->pend.name : header_name(h, posix);
  w->pend.name = NULL;
  if (name == NULL) {
    fde_error("%s: out of memory", w->path);
    return -ENOMEM;
  }
  if ((why = name_problem(name)) != NULL) {
    fde_error("%s: the tar member at byte %" PRIu64 " has %s", w->path, off,
              why);
    free(name);
    return -EINVAL;
  }
  while (name[0] == '.' && name[1] == '/' && name[2] != '\0')
    memmove(name, name + 2, strlen(name + 2) + 1);
  m = &w->tar->members[w->tar->n++];
  *m = (struct ova_member) { .name = name, .offset = data, .size = size,
                             .type = type, .sparse = w->pend.sparse };
  w->pend.has_size = w->pend.sparse = false;
  return 0;
}

static int
cmp_names(const void *a, const void *b)
{
  const struct ova_member *const *x = a, *const *y = b;

  return strcmp((*x)->name, (*y)->name);
}

/* Refuse two members of one name (one of them would be hidden). */
static int
tar_unique(const struct ova_tar *t, const char *path)
{
  const struct ova_member **v = malloc((t->n + 1) * sizeof *v);
  int r = 0;

  if (v == NULL) {
    fde_error("%s: out of memory", path);
    return -ENOMEM;
  }
  for (size_t i = 0; i < t->n; i++)
    v[i] = &t->members[i];
  qsort(v, t->n, sizeof *v, cmp_names);
  for (size_t i = 1; i < t->n && r == 0; i++)
    if (strcmp(v[i - 1]->name, v[i]->name) == 0) {
      fde_error("%s: the archive holds \"%s\" twice", path, v[i]->name);
      r = -EINVAL;
    }
  free(v);
  return r;
}

/* Is the block all zeros (the end of the archive)? */
static bool
zero_block(const uint8_t *b)
{
  for (size_t i = 0; i < TAR_BLOCK; i++)
    if (b[i] != 0)
      return false;
  return true;
}

/* Read the members of the tar archive that is the file_size bytes of fd.
 * 0 with *t filled (free with tar_free), or -errno (logged). */
static int
tar_read(int fd, const char *path, uint64_t file_size, struct ova_tar *t)
{
  struct tar_walk w = { .fd = fd, .path = path, .file_size = file_size,
                        .tar = t };
  uint8_t h[TAR_BLOCK];
  uint64_t off = 0;
  int r = 0;

  *t = (struct ova_tar) { 0 };
  t->members = calloc(64, sizeof *t->members);
  for (size_t cap = 64; r == 0 && t->members != NULL && off < file_size; ) {
    if (file_size - off < TAR_BLOCK) {
      fde_error("%s: the archive ends inside a tar header (byte %" PRIu64
                "): truncated", path, off);
      r = -EINVAL;
      break;
    }
    if ((r = fde_pread_full(fd, h, sizeof h, off)) < 0) {
      fde_error("%s: read: %s", path, strerror(-r));
      break;
    }
    if (zero_block(h))
      break;
    if (!tar_checksum_ok(h)) {
      /* the first header: most likely not a tar archive at all (-f ova
       * on another image), and the message should say so */
      fde_error("%s: %sthe tar header at byte %" PRIu64 " has a bad "
                "checksum", path, off == 0 ? "not an OVA (a tar archive): "
                : "", off);
      r = -EINVAL;
      break;
    }
    if (t->n == cap) {
      struct ova_member *m = reallocarray(t->members, cap * 2, sizeof *m);
      if (m == NULL) {
        fde_error("%s: out of memory", path);
        r = -ENOMEM;
        break;
      }
      t->members = m;
      cap *= 2;
    }
    r = tar_member(&w, h, off, &off);
  }
  free(w.pend.name);
  if (r == 0 && t->members == NULL) {
    fde_error("%s: out of memory", path);
    r = -ENOMEM;
  }
  if (r == 0 && t->n == 0) {
    fde_error("%s: not an OVA: the tar archive holds no member", path);
    r = -EINVAL;
  }
  if (r == 0)
    r = tar_unique(t, path);
  if (r < 0)
    tar_free(t);
  return r;
}

/* The member named name (a leading "./" ignored), or NULL. */
static const struct ova_member *
tar_find(const struct ova_tar *t, const char *name)
{
  while (name[0] == '.' && name[1] == '/' && name[2] != '\0')
    name += 2;
  for (size_t i = 0; i < t->n; i++)
    if (strcmp(t->members[i].name, name) == 0)
      return &t->members[i];
  return NULL;
}

/* ---- The OVF descriptor ------------------------------------------------- */

/* One disk of the appliance. */
struct ova_entry {
  const struct ova_member *member;      /* its file in the archive */
  char *ovf_format;                     /* Disk ovf:format, or NULL */
  const struct fde_format *format;      /* probed from its bytes */
  char what[64];                        /* what messages call that format */
};

/* OVF attributes are in the OVF namespace (ovf:href); take an attribute
 * of that name in no namespace or in the element's own. */
static char *
ovf_attr(xmlNode *n, const char *name)
{
  for (xmlAttr *a = n->properties; a != NULL; a = a->next)
    if (strcmp((const char *) a->name, name) == 0
        && (a->ns == NULL || (n->ns != NULL && a->ns->href != NULL
                              && n->ns->href != NULL
                              && strcmp((const char *) a->ns->href,
                                        (const char *) n->ns->href) == 0)))
      return (char *) xmlNodeListGetString(n->doc, a->children, 1);
  return NULL;
}

/* The first child element of n named name, or NULL. */
static xmlNode *
ovf_child(xmlNode *n, const char *name)
{
  for (xmlNode *c = n != NULL ? n->children : NULL; c != NULL; c = c->next)
    if (c->type == XML_ELEMENT_NODE
        && strcmp((const char *) c->name, name) == 0)
      return c;
  return NULL;
}

/* State of one OVF's reading. */
struct ovf_read {
  const char *path;             /* the OVA, for messages */
  const struct ova_tar *tar;
  struct ova_entry *disks;
  size_t ndisks;
  size_t blank;                 /* Disks without a file, skipped */
};

/* The member holding References/File f, checked: it exists, is a regular
 * file, is neither compressed nor chunked, and has the size the OVF says.
 * NULL (logged) if not. */
static const struct ova_member *
ovf_file_member(struct ovf_read *o, xmlNode *f)
{
  char *href = ovf_attr(f, "href"), *size = ovf_attr(f, "size");
  char *comp = ovf_attr(f, "compression"), *chunk = ovf_attr(f, "chunkSize");
  const struct ova_member *m = href != NULL ? tar_find(o->tar, href) : NULL;
  const char *why = NULL;
  char size_why[96];
  char *end;

  if (href == NULL || href[0] == '\0')
    why = "a File without ovf:href";
  else if (comp != NULL && strcmp(comp, "identity") != 0)
    why = "a compressed file (ovf:compression): not supported";
  else if (chunk != NULL)
    why = "a file in chunks (ovf:chunkSize): not supported";
  else if (m == NULL)
    why = "not in the archive";
  else if (m->type != '0' || m->sparse)
    why = m->type == '2' ? "a symbolic link, not a regular file"
          : m->type == '1' ? "a hard link, not a regular file"
          : m->sparse || m->type == 'S' ? "a sparse tar member (not supported)"
          : "not a regular file";
  else if (size != NULL) {
    errno = 0;
    unsigned long long v = strtoull(size, &end, 10);
    if (size[0] < '0' || size[0] > '9' || errno != 0 || *end != '\0'
        || v != m->size) {
      /* ovf:size is untrusted text: say its length-capped value only
       * when it is a plain number */
      if (size[0] >= '0' && size[0] <= '9' && errno == 0 && *end == '\0')
        snprintf(size_why, sizeof size_why, "the member is %" PRIu64
                 " bytes, the OVF's ovf:size says %llu", m->size, v);
      else
        snprintf(size_why, sizeof size_why, "the member is %" PRIu64
                 " bytes, the OVF's ovf:size is not a number", m->size);
      why = size_why;
    }
  }
  if (why != NULL) {
    if (href != NULL && utf8_ok(href) && strlen(href) <= OVA_MAX_NAME)
      fde_error("%s: the OVF names \"%s\": %s", o->path, href, why);
    else
      fde_error("%s: the OVF names a file: %s", o->path, why);
    m = NULL;
  }
  xmlFree(href);
  xmlFree(size);
  xmlFree(comp);
  xmlFree(chunk);
  return m;
}

/* The References/File whose ovf:id is id, or NULL. */
static xmlNode *
ovf_file_by_id(xmlNode *refs, const char *id)
{
  for (xmlNode *c = refs != NULL ? refs->children : NULL; c; c = c->next) {
    char *fid;
    bool same;
    if (c->type != XML_ELEMENT_NODE || strcmp((const char *) c->name, "File"))
      continue;
    fid = ovf_attr(c, "id");
    same = fid != NULL && strcmp(fid, id) == 0;
    xmlFree(fid);
    if (same)
      return c;
  }
  return NULL;
}

/* Add the disk stored in member m (ovf_format: the Disk's ovf:format, or
 * NULL; taken).  0 or -errno (logged). */
static int
ovf_add_disk(struct ovf_read *o, const struct ova_member *m, char *ovf_format)
{
  if (o->ndisks >= OVA_MAX_DISKS) {
    xmlFree(ovf_format);
    fde_error("%s: the OVF names more than %u disks", o->path,
              OVA_MAX_DISKS);
    return -EINVAL;
  }
  o->disks[o->ndisks].member = m;
  o->disks[o->ndisks].ovf_format = NULL;
  if (ovf_format != NULL) {
    o->disks[o->ndisks].ovf_format = strdup(ovf_format);
    xmlFree(ovf_format);
    if (o->disks[o->ndisks].ovf_format == NULL) {
      fde_error("%s: out of memory", o->path);
      return -ENOMEM;
    }
  }
  o->ndisks++;
  return 0;
}

/* The disks of DiskSection, in its order.  0 or -errno (logged). */
static int
ovf_disk_section(struct ovf_read *o, xmlNode *refs, xmlNode *section)
{
  for (xmlNode *d = section->children; d != NULL; d = d->next) {
    const struct ova_member *m;
    char *ref;
    xmlNode *f;
    int r;
    if (d->type != XML_ELEMENT_NODE || strcmp((const char *) d->name, "Disk"))
      continue;
    if ((ref = ovf_attr(d, "fileRef")) == NULL || ref[0] == '\0') {
      xmlFree(ref);
      o->blank++;
      continue;
    }
    f = ovf_file_by_id(refs, ref);
    xmlFree(ref);
    if (f == NULL) {
      fde_error("%s: the OVF's Disk names a file References does not list",
                o->path);
      return -EINVAL;
    }
    if ((m = ovf_file_member(o, f)) == NULL)
      return -EINVAL;
    if ((r = ovf_add_disk(o, m, ovf_attr(d, "format"))) < 0)
      return r;
  }
  return 0;
}

static int
cmp_entries(const void *a, const void *b)
{
  const struct ova_entry *x = a, *y = b;

  return x->member->offset < y->member->offset ? -1
         : x->member->offset > y->member->offset;
}

/* Without a DiskSection: every file References lists, in archive order. */
static int
ovf_references(struct ovf_read *o, xmlNode *refs)
{
  for (xmlNode *f = refs != NULL ? refs->children : NULL; f; f = f->next) {
    const struct ova_member *m;
    int r;
    if (f->type != XML_ELEMENT_NODE || strcmp((const char *) f->name, "File"))
      continue;
    if ((m = ovf_file_member(o, f)) == NULL)
      return -EINVAL;
    if ((r = ovf_add_disk(o, m, NULL)) < 0)
      return r;
  }
  qsort(o->disks, o->ndisks, sizeof *o->disks, cmp_entries);
  return 0;
}

/* libxml2 calls these on a DOCTYPE and on an entity declaration: an OVF
 * has neither (it is described by an XML Schema), so the parse stops,
 * and no entity is ever expanded. */
static void
ovf_refuse_dtd(void *ctx, const xmlChar *name, const xmlChar *external_id,
               const xmlChar *system_id)
{
  xmlParserCtxtPtr ctxt = ctx;

  (void) name;
  (void) external_id;
  (void) system_id;
  *(bool *) ctxt->_private = true;
  xmlStopParser(ctxt);
}

/* Parse the OVF text (len bytes).  *doc: the tree, or NULL (logged). */
static int
ovf_parse(const char *path, const char *text, size_t len, xmlDoc **doc)
{
  xmlParserCtxtPtr ctxt;
  bool dtd = false;

  xmlInitParser();              /* once; opens happen before threads */
  ctxt = xmlNewParserCtxt();

  *doc = NULL;
  if (ctxt == NULL) {
    fde_error("%s: out of memory", path);
    return -ENOMEM;
  }
  ctxt->_private = &dtd;
  ctxt->sax->internalSubset = ovf_refuse_dtd;
  ctxt->sax->externalSubset = ovf_refuse_dtd;
  *doc = xmlCtxtReadMemory(ctxt, text, (int) len, "descriptor.ovf", NULL,
                           XML_PARSE_NONET | XML_PARSE_NOERROR
                           | XML_PARSE_NOWARNING | XML_PARSE_NOCDATA);
  if (dtd || *doc == NULL || !ctxt->wellFormed) {
    const xmlError *e = xmlCtxtGetLastError(ctxt);
    char msg[81] = "?";
    if (e != NULL && e->message != NULL) {
      snprintf(msg, sizeof msg, "%s", e->message);
      msg[strcspn(msg, "\r\n")] = '\0';    /* libxml2's end in "\n" */
    }
    if (dtd)
      fde_error("%s: the OVF descriptor has a DOCTYPE (refused: an OVF has "
                "none)", path);
    else
      fde_error("%s: the OVF descriptor is not well-formed XML (line %d: "
                "%s)", path, e != NULL ? e->line : 0, msg);
    xmlFreeDoc(*doc);
    *doc = NULL;
  }
  xmlFreeParserCtxt(ctxt);
  return *doc != NULL ? 0 : -EINVAL;
}

/* The number of element children of n named name. */
static size_t
ovf_count(xmlNode *n, const char *name)
{
  size_t count = 0;

  for (xmlNode *c = n != NULL ? n->children : NULL; c != NULL; c = c->next)
    count += c->type == XML_ELEMENT_NODE
             && strcmp((const char *) c->name, name) == 0;
  return count;
}

/* The disks the OVF (member ovf of the archive) describes.  0 with
 * o->disks and o->ndisks set, or -errno (logged). */
static int
ovf_read_disks(int fd, const struct ova_member *ovf, struct ovf_read *o)
{
  xmlDoc *doc = NULL;
  xmlNode *root, *refs, *section;
  char *text;
  int r;

  if (ovf->size > OVA_MAX_OVF) {
    fde_error("%s: the OVF descriptor has %" PRIu64 " bytes, more than %u",
              o->path, ovf->size, OVA_MAX_OVF);
    return -EINVAL;
  }
  if ((r = read_data(fd, ovf->offset, (size_t) ovf->size, &text)) < 0) {
    fde_error("%s: read: %s", o->path, strerror(-r));
    return r;
  }
  r = ovf_parse(o->path, text, (size_t) ovf->size, &doc);
  free(text);
  if (r < 0)
    return r;
  root = xmlDocGetRootElement(doc);
  if (root == NULL || strcmp((const char *) root->name, "Envelope") != 0) {
    fde_error("%s: the OVF descriptor is no OVF Envelope", o->path);
    xmlFreeDoc(doc);
    return -EINVAL;
  }
  refs = ovf_child(root, "References");
  section = ovf_child(root, "DiskSection");
  o->disks = calloc(OVA_MAX_DISKS, sizeof *o->disks);
  if (o->disks == NULL)
    r = -ENOMEM;
  else if (ovf_count(refs, "File") > OVA_MAX_FILES) {
    fde_error("%s: the OVF lists more than %u files", o->path,
              OVA_MAX_FILES);
    r = -EINVAL;
  }
  else if (section != NULL)
    r = ovf_disk_section(o, refs, section);
  else
    r = ovf_references(o, refs);
  xmlFreeDoc(doc);
  if (r == -ENOMEM)
    fde_error("%s: out of memory", o->path);
  if (r == 0 && o->ndisks == 0) {
    fde_error("%s: the OVF names no disk stored in the archive", o->path);
    r = -EINVAL;
  }
  return r;
}

/* ---- The "ova" disk ---------------------------------------------------- */

struct ova_disk {
  struct fde_layer layer;       /* must come first: the inner disk below */
  int fd;                       /* the OVA (the inner disk has a dup) */
  struct ova_tar tar;
  struct ova_entry *disks;
  size_t ndisks;
  size_t blank;
  unsigned chosen;              /* index into disks */
  struct fde_open_params params;/* for describe's opens of other disks */
};

static void
free_entries(struct ova_entry *disks, size_t n)
{
  for (size_t i = 0; disks != NULL && i < n; i++)
    free(disks[i].ovf_format);
  free(disks);
}

/* The row of the table of formats whose signature at the end of a file
 * (a fixed VHD's footer, a DMG trailer) ends member m, into *row (NULL
 * if none): the table's own tail probe reads the end of the whole
 * archive.  0, or -errno if the member's end cannot be read. */
static int
probe_member_tail(int fd, const struct ova_member *m,
                  const struct fde_format_info **row)
{
  uint8_t tail[FDE_TAIL_BYTES];
  size_t len = m->size < sizeof tail ? (size_t) m->size : sizeof tail;
  int r = fde_pread_full(fd, tail, len, m->offset + m->size - len);

  *row = NULL;
  for (size_t i = 0; r == 0 && i < fde_format_table_len; i++)
    if (fde_format_table[i].tail_magic != NULL
        && fde_format_table[i].tail_magic(tail, len, m->size)) {
      *row = &fde_format_table[i];
      break;
    }
  return r;
}

/* The format of disk e, probed from its member's bytes by the table of
 * formats as a file's would be (its first bytes, then its last sector):
 * e->format, or NULL for a format that cannot be opened inside an OVA
 * (fde_format.in_container) or is refused anyway; e->what names it.
 * 0, or -errno (logged) if the member cannot be read. */
static int
probe_entry(int fd, const char *path, struct ova_entry *e)
{
  uint8_t head[TAR_BLOCK] = { 0 };
  size_t len = e->member->size < sizeof head ? (size_t) e->member->size
               : sizeof head;
  struct fde_format_match m;
  const struct fde_format_info *tail = NULL;
  int r = fde_pread_full(fd, head, len, e->member->offset);

  if (r < 0) {
    fde_error("%s: read: %s", path, strerror(-r));
    return r;
  }
  m = fde_format_identify(head, len, -1);
  if (m.format == &fde_format_raw
      && (r = probe_member_tail(fd, e->member, &tail)) < 0) {
    fde_error("%s: read: %s", path, strerror(-r));
    return r;
  }
  if (m.format == &fde_format_raw && tail != NULL) {
    m.format = tail->backend;
    snprintf(m.what, sizeof m.what, "%s", tail->title);
  }
  snprintf(e->what, sizeof e->what, "%s", m.what);
  e->format = m.format != NULL && m.format->in_container ? m.format : NULL;
  return 0;
}

/* Open disk e (number n, for messages) of the OVA open on fd with its
 * format on the member's window, read-only, on a dup of fd: 0 with *out,
 * or -errno (logged). */
static int
open_entry(const struct fde_open_params *p, int fd, struct ova_entry *e,
           unsigned n, struct fde_disk **out)
{
  struct fde_open_params q = *p;
  char name[512];
  int r;

  snprintf(name, sizeof name, "%s (disk %u, %s)", p->path, n,
           e->member->name);
  q.path = name;
  q.read_only = true;
  q.file_offset = e->member->offset;
  q.file_length = e->member->size;
  if ((q.fd = fcntl(fd, F_DUPFD_CLOEXEC, 0)) < 0) {
    r = -errno;
    fde_error("%s: %s", p->path, strerror(-r));
    return r;
  }
  if ((r = e->format->open(&q, out)) < 0)
    close(q.fd);
  else
    (*out)->read_only = true;
  return r;
}

/* --probe: the disks (number, member name, format, virtual size), then
 * what the exported disk's format says of it. */
static void
ova_describe(struct fde_disk *d, FILE *out)
{
  struct ova_disk *o = (struct ova_disk *) d;

  fprintf(out, "ova-disks: %zu\n", o->ndisks);
  if (o->blank > 0)
    fprintf(out, "ova-blank-disks: %zu (no file: made at deployment)\n",
            o->blank);
  for (size_t i = 0; i < o->ndisks; i++) {
    struct ova_entry *e = &o->disks[i];
    struct fde_disk *inner = NULL;
    uint64_t size = 0;
    if (e->format == NULL) {
      fprintf(out, "ova-disk %zu: %s, %s, not supported inside an OVA\n",
              i + 1, e->member->name, e->what);
      continue;
    }
    if (i == o->chosen)
      size = o->layer.lower->size;
    else if (open_entry(&o->params, o->fd, e, (unsigned) i + 1, &inner) == 0)
      size = inner->size;
    fprintf(out, "ova-disk %zu: %s, %s, ", i + 1, e->member->name,
            e->format->name);
    if (i == o->chosen || inner != NULL)
      fprintf(out, "%" PRIu64 " bytes", size);
    else
      fprintf(out, "unreadable");
    fprintf(out, "%s\n", i == o->chosen ? " (exported)" : "");
    fde_disk_close(inner);
  }
  fprintf(out, "ova-exported-disk: %u\n", o->chosen + 1);
  fprintf(out, "ova-disk-format: %s\n", o->layer.lower->format->name);
  o->layer.lower->format->describe(o->layer.lower, out);
}

static void
ova_close(struct fde_disk *d)
{
  struct ova_disk *o = (struct ova_disk *) d;

  free(o->layer.disk.path);
  close(o->fd);
  free_entries(o->disks, o->ndisks);
  tar_free(&o->tar);
  fde_layer_close(d);           /* closes the inner disk, frees o */
}

/* The first member whose name ends in ".ovf": the descriptor (DSP0243
 * puts it first; a tool that put it later is warned about). */
static const struct ova_member *
find_ovf(const struct ova_tar *t, const char *path)
{
  for (size_t i = 0; i < t->n; i++) {
    size_t len = strlen(t->members[i].name);
    if (len > 4 && strcasecmp(t->members[i].name + len - 4, ".ovf") == 0
        && t->members[i].type == '0' && !t->members[i].sparse) {
      if (i > 0)
        fde_warn("%s: the OVF descriptor is not the archive's first member",
                 path);
      return &t->members[i];
    }
  }
  fde_error("%s: the archive holds no OVF descriptor (.ovf)", path);
  return NULL;
}

/* Read the archive and its OVF into o; check that disk number n (1..)
 * exists and its format may be opened in an OVA.  0 or -errno (logged). */
static int
ova_read(struct ova_disk *o, const struct fde_open_params *p, unsigned n)
{
  struct ovf_read rd = { .path = p->path, .tar = &o->tar };
  const struct ova_member *ovf;
  struct stat st;
  int r;

  if (fstat(p->fd, &st) == -1) {
    r = -errno;
    fde_error("%s: %s", p->path, strerror(-r));
    return r;
  }
  if (!S_ISREG(st.st_mode)) {
    fde_error("%s: an OVA must be a regular file", p->path);
    return -EINVAL;
  }
  if ((r = tar_read(p->fd, p->path, (uint64_t) st.st_size, &o->tar)) < 0)
    return r;
  if ((ovf = find_ovf(&o->tar, p->path)) == NULL)
    return -EINVAL;
  r = ovf_read_disks(p->fd, ovf, &rd);
  o->disks = rd.disks;
  o->ndisks = rd.ndisks;
  o->blank = rd.blank;
  if (r < 0)
    return r;
  if (n > o->ndisks) {
    fde_error("%s: %s%u: the OVA holds %zu disk%s", p->path,
              fde_option_names_of(p)->disk, n, o->ndisks,
              o->ndisks == 1 ? "" : "s");
    return -ENOENT;
  }
  /* Every disk is probed (--probe lists them all); only the exported
   * one must be of a format that can be read in place. */
  for (size_t i = 0; i < o->ndisks; i++)
    if ((r = probe_entry(p->fd, p->path, &o->disks[i])) < 0)
      return r;
  if (o->disks[n - 1].format == NULL) {
    fde_error("%s: disk %u (%s) is %s %s image: not supported inside an OVA",
              p->path, n, o->disks[n - 1].member->name,
              fde_article(o->disks[n - 1].what), o->disks[n - 1].what);
    return -ENOTSUP;
  }
  return 0;
}

/* The layer's own members: everything else is the inner disk's. */
static const struct fde_format ova_layer_ops = {
  .name     = "ova",
  .describe = ova_describe,
  .close    = ova_close,
};

static int
ova_open(const struct fde_open_params *p, struct fde_disk **out)
{
  struct ova_disk *o = calloc(1, sizeof *o);
  struct fde_disk *inner = NULL;
  unsigned n = p->disk > 0 ? p->disk : 1;
  char *path = NULL;
  int r;

  if (o == NULL || (path = strdup(p->path)) == NULL) {
    free(o);
    fde_error("%s: out of memory", p->path);
    return -ENOMEM;
  }
  if (p->file_offset != 0 || p->file_length != 0) {
    fde_error("%s: an OVA inside an OVA is not supported", p->path);
    r = -ENOTSUP;
  } else if ((r = ova_read(o, p, n)) == 0)
    r = open_entry(p, p->fd, &o->disks[n - 1], n, &inner);
  if (r < 0) {
    free_entries(o->disks, o->ndisks);
    tar_free(&o->tar);
    free(path);
    free(o);
    return r;
  }
  o->fd = p->fd;
  o->chosen = n - 1;
  o->params = *p;
  o->params.path = path;
  o->params.snapshot = NULL;
  o->params.chain = NULL;
  fde_layer_init(&o->layer, &ova_layer_ops, inner, inner->size);
  /* an OVA is read-only, whatever its disk's format could do */
  o->layer.ops.pwrite = NULL;
  o->layer.ops.zero = NULL;
  o->layer.ops.can_write = NULL;
  o->layer.ops.can_zero = NULL;
  o->layer.ops.can_discard = NULL;
  o->layer.disk.path = path;
  o->layer.disk.read_only = true;
  *out = &o->layer.disk;
  return 0;
}

/* A tar archive whose first header is valid (magic and checksum) and
 * names a file ending in ".ovf" (a pax extended header for it is named
 * after it too, "PaxHeaders/NAME.ovf"). */
static int
ova_probe(const uint8_t *buf, size_t len)
{
  size_t nlen;

  if (len < TAR_BLOCK
      || (memcmp(buf + TAR_MAGIC, "ustar\0" "00", 8) != 0
          && memcmp(buf + TAR_MAGIC, "ustar  \0", 8) != 0)
      || !tar_checksum_ok(buf))
    return 0;
  nlen = strnlen((const char *) buf, TAR_NAME_LEN);
  return nlen > 4 && strncasecmp((const char *) buf + nlen - 4, ".ovf", 4)
         == 0 ? 100 : 0;
}

/* Reads of an ova disk: its inner disk's (the layer's vtable calls the
 * inner disk directly; this one serves callers of the static vtable). */
static int
ova_pread(struct fde_disk *d, void *buf, size_t len, uint64_t off)
{
  struct fde_disk *inner = fde_layer_lower(d);

  return inner->format->pread(inner, buf, len, off);
}

/* ova_open hands back a layer with its own vtable (every member the inner
 * disk's, as formats/layer.h describes, writes removed).  No can_write:
 * served read-only, opened with reader locks. */
const struct fde_format fde_format_ova = {
  .name  = "ova",
  .probe = ova_probe,
  .open  = ova_open,
  .pread = ova_pread,
  .close = ova_close,
};
