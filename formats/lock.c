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

/* Would an exclusive lock on byte conflict with someone's shared lock? */
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

static int
lock_byte(int fd, off_t byte)
{
  struct flock fl = { .l_type = F_RDLCK, .l_whence = SEEK_SET,
                      .l_start = byte, .l_len = 1 };

  return fcntl(fd, F_OFD_SETLK, &fl) == -1 ? -errno : 0;
}

/* Check for a conflict, then take the locks.  used/unshared are bit masks
 * of permissions. */
static int
apply_locks(int fd, const char *path, unsigned used, unsigned unshared)
{
  bool locked;
  int r;

  for (int i = 0; i < NR_PERMS; i++) {
    if ((used & (1u << i))
        && (r = byte_is_locked(fd, LOCK_SHARED_BASE + i, &locked)) == 0
        && locked) {
      fde_error("%s: in use by another program (QEMU?) that does not share "
                "the %s permission; stop it first", path, perm_names[i]);
      return -EBUSY;
    }
    if ((unshared & (1u << i))
        && (r = byte_is_locked(fd, LOCK_PERM_BASE + i, &locked)) == 0
        && locked) {
      fde_error("%s: in use by another program (QEMU?) that holds the %s "
                "permission; stop it first%s", path, perm_names[i],
                i == PERM_WRITE ? "" : "");
      return -EBUSY;
    }
  }
  for (int i = 0; i < NR_PERMS; i++) {
    if (((used & (1u << i)) && (r = lock_byte(fd, LOCK_PERM_BASE + i)) < 0)
        || ((unshared & (1u << i))
            && (r = lock_byte(fd, LOCK_SHARED_BASE + i)) < 0))
      return r == -EAGAIN || r == -EACCES ? -EBUSY : r;
  }
  return 0;
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
