/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: QEMU-compatible image locking.
 *
 * QEMU (block/file-posix.c) announces what it does with an image through
 * shared open-file-description locks on single bytes: byte 100+i means "I
 * use permission i", byte 200+i means "I do not let others use permission
 * i", for i = 0 consistent read, 1 write, 2 write-unchanged, 3 resize.  A
 * user checks for conflicts by testing whether an exclusive lock on the
 * opposite byte would be refused.  Taking the same locks lets a running VM
 * or qemu-img and this program refuse each other. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <string.h>

#include "format.h"

#define LOCK_PERM_BASE   100
#define LOCK_SHARED_BASE 200

enum {
  PERM_CONSISTENT_READ = 0,
  PERM_WRITE = 1,
  PERM_WRITE_UNCHANGED = 2,
  PERM_RESIZE = 3,
  NR_PERMS = 4,
};

static const char *const perm_names[NR_PERMS] = {
  "consistent read", "write", "write unchanged", "resize",
};

/* Would an exclusive lock on byte conflict with someone's shared lock?
 * An OFD lock test ignores the locks of the tested descriptor's own open
 * file description, so our own bytes never count as a conflict. */
static int
byte_is_locked(int fd, off_t byte, bool *locked)
{
  struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET,
                      .l_start = byte, .l_len = 1 };

  if (fcntl(fd, F_OFD_GETLK, &fl) == -1)
    return -errno;
  *locked = fl.l_type != F_UNLCK;
  return 0;
}

/* Take (F_RDLCK) or drop (F_UNLCK) our shared lock on len bytes at byte. */
static int
set_bytes(int fd, short type, off_t byte, off_t len)
{
  struct flock fl = { .l_type = type, .l_whence = SEEK_SET,
                      .l_start = byte, .l_len = len };

  return fcntl(fd, F_OFD_SETLK, &fl) == -1 ? -errno : 0;
}

/* Drop every lock byte QEMU's protocol defines, ours or not yet taken. */
static void
drop_all_bytes(int fd)
{
  set_bytes(fd, F_UNLCK, LOCK_PERM_BASE, NR_PERMS);
  set_bytes(fd, F_UNLCK, LOCK_SHARED_BASE, NR_PERMS);
}

/* Take our shared lock bytes.  0 or -errno. */
static int
set_our_bytes(int fd, unsigned used, unsigned unshared)
{
  int r = 0;

  for (int i = 0; i < NR_PERMS && r == 0; i++) {
    if (used & (1u << i))
      r = set_bytes(fd, F_RDLCK, LOCK_PERM_BASE + i, 1);
    if (r == 0 && (unshared & (1u << i)))
      r = set_bytes(fd, F_RDLCK, LOCK_SHARED_BASE + i, 1);
  }
  return r == -EAGAIN || r == -EACCES ? -EBUSY : r;
}

/* Does anyone else's lock conflict with ours?  0, -EBUSY (message
 * logged) or -errno. */
static int
test_conflicts(int fd, const char *path, unsigned used, unsigned unshared)
{
  bool locked = false;
  int r;

  for (int i = 0; i < NR_PERMS; i++) {
    if ((used & (1u << i))
        && ((r = byte_is_locked(fd, LOCK_SHARED_BASE + i, &locked)) < 0
            || locked)) {
      if (r == 0)
        fde_error("%s: in use by another program (QEMU?) that does not "
                  "share the %s permission; stop it first", path,
                  perm_names[i]);
      return r < 0 ? r : -EBUSY;
    }
    if ((unshared & (1u << i))
        && ((r = byte_is_locked(fd, LOCK_PERM_BASE + i, &locked)) < 0
            || locked)) {
      if (r == 0)
        fde_error("%s: in use by another program (QEMU?) that holds the "
                  "%s permission; stop it first", path, perm_names[i]);
      return r < 0 ? r : -EBUSY;
    }
  }
  return 0;
}

/* Set our bytes first, then test for conflicts, as QEMU does
 * (raw_apply_lock_bytes, then raw_check_lock_bytes, block/file-posix.c):
 * of two users starting at once, each sees the other's bytes, so they
 * cannot both pass (both may fail).  On failure our bytes are dropped.
 * used/unshared are bit masks of permissions. */
static int
apply_locks(int fd, const char *path, unsigned used, unsigned unshared)
{
  int r = set_our_bytes(fd, used, unshared);

  if (r == -EBUSY)
    fde_error("%s: in use by another program (QEMU?) that holds an "
              "exclusive lock on it; stop it first", path);
  if (r == 0)
    r = test_conflicts(fd, path, used, unshared);
  if (r < 0)
    drop_all_bytes(fd);
  return r;
}

/* Lock an image as QEMU would for a writable or read-only user: both need
 * consistent reads and let nobody else write or resize; a writer also
 * writes.  File systems without OFD locks are not an error. */
int
fde_lock_image(int fd, const char *path, bool writable)
{
  unsigned used = 1u << PERM_CONSISTENT_READ;
  unsigned unshared = (1u << PERM_WRITE) | (1u << PERM_RESIZE);
  int r;

  if (writable)
    used |= (1u << PERM_WRITE) | (1u << PERM_WRITE_UNCHANGED);
  r = apply_locks(fd, path, used, unshared);
  if (r == -EINVAL || r == -EOPNOTSUPP || r == -ENOLCK) {
    fde_debug("%s: no byte-range locks here: %s", path, strerror(-r));
    return 0;
  }
  return r;
}

/* Drop the image locks taken by fde_lock_image on fd's open file
 * description (any descriptor of it will do), so that QEMU may open the
 * image again.  For the revert: once nothing can write through us. */
void
fde_unlock_image(int fd)
{
  drop_all_bytes(fd);
}
