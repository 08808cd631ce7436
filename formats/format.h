/* fuse-disk-export: the interface every format backend implements.
 *
 * A backend turns an open image file into a flat, byte-addressed virtual
 * disk.  The front end (src/) owns options, mounting and FUSE; it calls
 * only the members of struct fde_format below and never looks inside a
 * backend's handle beyond the common struct fde_disk it starts with.
 *
 * Conventions shared by every member:
 *  - Offsets and lengths are 64-bit bytes of the *virtual* disk.  The
 *    front end never passes a range beyond disk->size.
 *  - Errors are returned as a negative errno; a message for the user is
 *    logged with fde_error() where the failure happens (naming the image
 *    and what went wrong).
 *  - Every member except open and close may be called from several FUSE
 *    worker threads at once: backends do their own locking.
 *  - New members are only ever added at the end of the struct.
 */
#ifndef FDE_FORMAT_H
#define FDE_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

struct fde_format;

/* Common head of every backend handle ("must come first"). */
struct fde_disk {
  const struct fde_format *format;
  uint64_t size;          /* virtual size in bytes */
  bool read_only;         /* writes are refused by the front end */
  char *path;             /* image name as given (malloc'd, for messages) */
};

/* Devices and inodes of the layers opened so far, for loop detection. */
#define FDE_MAX_CHAIN 32  /* documented cap on backing-chain depth */
struct fde_chain {
  const char *top;                  /* the image being exported */
  unsigned depth;                   /* layers recorded */
  dev_t dev[FDE_MAX_CHAIN];
  ino_t ino[FDE_MAX_CHAIN];
};

struct fde_open_params {
  const char *path;       /* name as given; also the base for relative backing names */
  int fd;                 /* open image; owned by the backend once open succeeds */
  bool read_only;         /* the backend must not write to fd */
  const char *snapshot;   /* internal snapshot name or id to export, or NULL */
  uint64_t cache_bytes;   /* metadata cache budget (0 = backend default) */
  uint64_t zcache_bytes;  /* decompressed-cluster cache budget (0: default) */
  bool allow_bdev_backing;/* block devices allowed as backing files */
  int verbose;            /* >0: print notes (backing probe warnings...) */
  struct fde_chain *chain;/* layers above this one (already recorded) */
};

/* block_status result bits. */
#define FDE_BS_DATA 1u    /* the range is allocated somewhere in the chain */
#define FDE_BS_ZERO 2u    /* the range is known to read as zeros */

struct fde_format {
  const char *name;

  /* Score how likely the first bytes of a file are this format:
   * 100 certain, 1 a fallback guess, 0 not this format. */
  int (*probe)(const uint8_t *buf, size_t len);

  /* Open an image.  On success store a handle in *out (its first member a
   * struct fde_disk with every field set) and return 0.  On failure log
   * one line naming the image and the problem, leave params->fd open for
   * the caller and return a negative errno (-EINVAL for a malformed or
   * hostile image, -ENOTSUP for an unsupported feature). */
  int (*open)(const struct fde_open_params *params, struct fde_disk **out);

  /* Read exactly len bytes at off into buf; 0 or -errno. */
  int (*pread)(struct fde_disk *disk, void *buf, size_t len, uint64_t off);

  /* Write exactly len bytes at off; 0 or -errno.  NULL if read-only format. */
  int (*pwrite)(struct fde_disk *disk, const void *buf, size_t len,
                uint64_t off);

  /* Make [off, off+len) read as zeros.  punch: the backend may deallocate
   * the range (discard); otherwise it may still choose the cheapest way
   * that guarantees zeros.  0 or -errno. */
  int (*zero)(struct fde_disk *disk, uint64_t off, uint64_t len, bool punch);

  /* Make every acknowledged write durable (data and metadata). */
  int (*flush)(struct fde_disk *disk);

  /* Status of the run starting at off: store its length (> 0, at most len)
   * in *run and its FDE_BS_* bits in *status.  0 or -errno. */
  int (*block_status)(struct fde_disk *disk, uint64_t off, uint64_t len,
                      uint64_t *run, unsigned *status);

  /* Bytes of host storage the image uses (for st_blocks / du). */
  uint64_t (*allocated_bytes)(struct fde_disk *disk);

  /* Print "key: value" lines describing the image for --probe and -v. */
  void (*describe)(struct fde_disk *disk, FILE *out);

  /* Flush nothing, free everything, close the file descriptors. */
  void (*close)(struct fde_disk *disk);

  /* Where the run starting at off is stored verbatim, so that a read can
   * be answered by splicing straight from the file instead of copying
   * through the daemon.  Store the run's length (> 0, at most len) in
   * *run.  Return 1, with *fd and *host set, when the run's bytes are the
   * bytes of file *fd at *host and lie wholly inside that file; 0 when the
   * run must be read with pread (holes, zeros, compressed clusters, data
   * past the end of the file); -errno on error.  The answer may be stale
   * by the time the caller reads, exactly as a pread racing a write would
   * be; it must never name bytes that are not the disk's, old or new.
   * NULL: every read goes through pread. */
  int (*map)(struct fde_disk *disk, uint64_t off, uint64_t len, int *fd,
             uint64_t *host, uint64_t *run);
};

/* formats/registry.c */
extern const struct fde_format fde_format_raw;
extern const struct fde_format fde_format_qcow2;

/* The format named name ("raw", "qcow2"), or NULL. */
const struct fde_format *fde_format_by_name(const char *name);

/* The served format with the highest probe score (raw at worst). */
const struct fde_format *fde_format_probe(const uint8_t *buf, size_t len);

/* Open a layer by descriptor with a given format (NULL: probe between the
 * served formats).  Records (dev, ino) in params->chain and refuses loops
 * and chains deeper than FDE_MAX_CHAIN.  0 or -errno, message logged. */
int fde_disk_open(const struct fde_format *format,
                  const struct fde_open_params *params,
                  struct fde_disk **out);

/* Close a disk opened with fde_disk_open (NULL is fine). */
void fde_disk_close(struct fde_disk *disk);

/* pread() that retries short reads and EINTR and zero-fills past EOF;
 * returns 0 or -errno. */
int fde_pread_full(int fd, void *buf, size_t len, uint64_t off);

/* Bytes of storage a file uses on its file system (0 if unknown). */
uint64_t fde_file_allocated(int fd);

/* pwrite() that retries short writes and EINTR; 0 or -errno. */
int fde_pwrite_full(int fd, const void *buf, size_t len, uint64_t off);

/* formats/lock.c: take QEMU's image locks (shared OFD locks on bytes
 * 100-103 and 200-203) for a reader or a writer; -EBUSY, with a message,
 * when QEMU or another export holds a conflicting lock. */
int fde_lock_image(int fd, const char *path, bool writable);

/* Logging (src/log.c, or a stub in the fuzzers): one line each, printf
 * style, to stderr in the foreground and to syslog once daemonized. */
void fde_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void fde_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void fde_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void fde_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* While a backing layer opens, prefix messages with the exported image's
 * name (NULL: no prefix), so a refusal deep in a chain says which export
 * it belongs to.  Opens happen before any thread starts. */
void fde_log_context(const char *image);

#endif /* FDE_FORMAT_H */
