/* fuse-disk-export: whole-range pread/pwrite helpers shared by backends. */
#include <config.h>

#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "format.h"

int
fde_pread_full(int fd, void *buf, size_t len, uint64_t off)
{
  char *p = buf;

  if (off > (uint64_t) INT64_MAX - len)
    return -EINVAL;
  while (len > 0) {
    ssize_t r = pread(fd, p, len, (off_t) off);
    if (r < 0) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    if (r == 0) {               /* past the end of the file: zeros, as QEMU */
      memset(p, 0, len);
      return 0;
    }
    p += r;
    off += (uint64_t) r;
    len -= (size_t) r;
  }
  return 0;
}

uint64_t
fde_file_allocated(int fd)
{
  struct stat st;

  if (fstat(fd, &st) == -1)
    return 0;
  return (uint64_t) st.st_blocks * 512;
}

int
fde_pwrite_full(int fd, const void *buf, size_t len, uint64_t off)
{
  const char *p = buf;

  if (off > (uint64_t) INT64_MAX - len)
    return -EINVAL;
  while (len > 0) {
    ssize_t r = pwrite(fd, p, len, (off_t) off);
    if (r < 0) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    if (r == 0)
      return -EIO;
    p += r;
    off += (uint64_t) r;
    len -= (size_t) r;
  }
  return 0;
}
