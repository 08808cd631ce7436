/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
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
#include <sys/stat.h>
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

/* Whose permissions the files a chain names (backing files, and any file
 * a later format names) are opened with, so that a view never shows a
 * file its owner could not read (see fde_open_named in formats/owner.c).
 * All zero: the exporting process's own, as when it owns the image. */
struct fde_owner {
  bool check;             /* the exporter is not the image's owner */
  uid_t uid;              /* the image file's owner */
  gid_t gid;              /* the image file's group: the primary group only
                           * when uid has no passwd entry */
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
  struct fde_owner owner; /* the top image's owner (fde_owner_of) */
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

  /* Free everything and close the file descriptors.  Flushes nothing:
   * the caller flushes first (once) if it wants the writes kept, and what
   * no flush covered is lost (never corrupting the image). */
  void (*close)(struct fde_disk *disk);

  /* Where the run starting at off is stored verbatim, so that a read can
   * be answered by splicing straight from the file instead of copying
   * through the daemon.  Store the run's length (> 0, at most len) in
   * *run.  Return 1, with *fd and *host set, when the run's bytes are the
   * bytes of file *fd at *host and lie wholly inside that file; 0 when the
   * run must be read with pread (holes, zeros, compressed clusters, data
   * past the end of the file); -errno on error.  The answer may be stale
   * by the time the caller reads, exactly as a pread racing a write would
   * be; it must never name bytes that are not the disk's, old or new
   * (where the backend has io_begin, as long as the caller uses the range
   * inside an io_begin/io_end bracket that began before the map).
   * NULL: every read goes through pread. */
  int (*map)(struct fde_disk *disk, uint64_t off, uint64_t len, int *fd,
             uint64_t *host, uint64_t *run);

  /* Bracket the use of ranges that map returned: between io_begin and
   * the matching io_end, no host range map named may be given to other
   * data (qcow2, which reuses freed clusters as QEMU does, hands a freed
   * one out again only once every bracket begun before the free ended).
   * Call io_begin before the first map and io_end once the ranges have
   * been read (for a spliced reply: after fuse_reply_data returns), from
   * the same or another thread, passing io_begin's token.  Neither
   * blocks; brackets may nest and overlap.  NULL (both) when every range
   * map names stays the disk's (raw: the disk is the file). */
  unsigned (*io_begin)(struct fde_disk *disk);
  void (*io_end)(struct fde_disk *disk, unsigned token);
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

/* formats/owner.c: the owner of the exported image file (uid and gid from
 * the fstat of the descriptor opened, never from a name), with check set
 * when the exporting process (its effective uid) is someone else. */
struct fde_owner fde_owner_of(uid_t uid, gid_t gid);

/* Open a file that layer params->path names (what: "backing file"), the
 * one way every format opens such a file: read-only, without hanging on a
 * FIFO, and, when params->owner.check, by a short-lived child process
 * holding the owner's credentials (uid, primary gid, supplementary groups
 * from getgrouplist), so that the kernel itself decides (mode, ACLs,
 * search permission on every directory, symlinks) and the descriptor
 * used is the one that was opened.  Only a regular file is accepted (or a
 * block device when params->allow_bdev_backing).  Returns the descriptor
 * (O_CLOEXEC, blocking) or -errno with one line logged naming the file:
 * -EACCES/-EPERM when the owner may not read it or the owner's
 * credentials cannot be taken, -EINVAL for a file of another type. */
int fde_open_named(const struct fde_open_params *params, const char *what,
                   const char *path);

/* ---- formats/io.c: the I/O seam -----------------------------------------
 *
 * Every pread, pwrite, fdatasync, fallocate and ftruncate a backend makes
 * on an image file (or a backing file) goes through the functions below
 * and through nothing else, so that the fault-injection test can make any
 * one of them fail (see "testing" below).  Offsets and lengths are bytes
 * of the file; fd and buf stay the caller's (nothing is kept after the
 * call).  Each returns -errno on failure (-EINVAL for an offset or length
 * past INT64_MAX) and does not retry EINTR itself (the *_full helpers
 * do).  Thread safe: they are the system calls plus an atomic counter. */

/* One pread(2)/pwrite(2): bytes transferred (0 at end of file), or -errno. */
ssize_t fde_io_pread(int fd, void *buf, size_t len, uint64_t off);
ssize_t fde_io_pwrite(int fd, const void *buf, size_t len, uint64_t off);

/* fdatasync(2): 0 or -errno.  After a real -EIO, Linux may already have
 * dropped the dirty pages that failed to reach the disk and cleared the
 * error, so a later fdatasync can succeed without writing them: a caller
 * must not assume that retrying the sync alone makes earlier writes
 * durable.  (The backends keep what they must rewrite dirty in memory
 * until a sync after its write succeeds, and rewrite it on retry.) */
int fde_io_fdatasync(int fd);

/* fallocate(2) with FALLOC_FL_* mode over [off, off+len): 0 or -errno
 * (-EOPNOTSUPP where the file system lacks the mode). */
int fde_io_fallocate(int fd, int mode, uint64_t off, uint64_t len);

/* ftruncate(2) to size bytes: 0 or -errno. */
int fde_io_ftruncate(int fd, uint64_t size);

/* pread() that retries short reads and EINTR and zero-fills past EOF;
 * returns 0 or -errno. */
int fde_pread_full(int fd, void *buf, size_t len, uint64_t off);

/* Bytes of storage a file uses on its file system (0 if unknown). */
uint64_t fde_file_allocated(int fd);

/* pwrite() that retries short writes and EINTR; 0 or -errno. */
int fde_pwrite_full(int fd, const void *buf, size_t len, uint64_t off);

/* ---- Testing only: fault injection at the I/O seam ----------------------
 *
 * For tests/unit/fault-test.c; the program never calls these.  Process
 * wide and thread safe (atomic counters).  While disarmed (the default) a
 * seam call costs one relaxed atomic load.  An injected failure returns
 * the chosen -errno without making the system call: it models a call whose
 * effect did not land. */

/* Start counting seam calls from 0, and fail call number nth (1-based,
 * counted across pread, pwrite, fdatasync, fallocate and ftruncate alike;
 * a retried EINTR or a short transfer's next call counts again) with -err
 * (EIO if err <= 0).  nth == 0: count only, fail nothing. */
void fde_io_fault_arm(uint64_t nth, int err);

/* Stop counting and injecting; the counts stay readable. */
void fde_io_fault_disarm(void);

/* Seam calls counted since the last arm. */
uint64_t fde_io_fault_calls(void);

/* Faults injected since the last arm (0 or 1). */
uint64_t fde_io_fault_injected(void);

/* formats/lock.c: take QEMU's image locks (shared OFD locks on bytes
 * 100-103 and 200-203) for a reader or a writer; with a message naming
 * the holder where /proc shows it, -EADDRINUSE when another
 * fuse-disk-export holds a conflicting lock, -EBUSY when another program
 * (QEMU) does.  Our bytes are set
 * before the conflict test and dropped again on failure, as QEMU does, so
 * two users starting at once cannot both pass. */
int fde_lock_image(int fd, const char *path, bool writable);

/* Drop the locks fde_lock_image took on fd's open file description (any
 * descriptor of it); the image stays open. */
void fde_unlock_image(int fd);

/* Who holds a lock, for messages only (the answer may be stale at once).
 * The pid of a process holding a lock of kind ("FLOCK" or "OFDLCK", as
 * /proc/locks names them) on the file st names (its st_dev and st_ino)
 * that covers byte (-1: any byte), or 0 if none is found.  From
 * /proc/locks; where it gives no pid (OFD locks: -1), from the "lock:"
 * lines of /proc/PID/fdinfo/FD, so only processes we may inspect.  With
 * others_only, this process's locks are skipped. */
long fde_lock_holder(const struct stat *st, const char *kind, long long byte,
                     bool others_only);

/* What process pid is, for a message: "fuse-disk-export" if it runs this
 * program (its executable, or its 15-byte comm), else its
 * /proc/PID/comm; NUL-terminated into buf (len bytes).  false if unknown. */
bool fde_process_name(long pid, char *buf, size_t len);

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
