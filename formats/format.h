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
#include <sys/uio.h>

struct fde_format;

/* Common head of every backend handle ("must come first"). */
struct fde_disk {
  const struct fde_format *format;
  uint64_t size;          /* virtual size in bytes */
  bool read_only;         /* opened read-only: never written, and
                           * fde_disk_can_write says no */
  char *path;             /* image name as given (malloc'd, for messages) */
};

/* Devices and inodes of the layers opened so far, for loop detection. */
#define FDE_MAX_CHAIN 32  /* documented cap on backing-chain depth */

/* The largest virtual disk opened, in bytes: QEMU's BDRV_MAX_LENGTH
 * (include/block/block_int-common.h in 7.2: INT64_MAX aligned down to
 * BDRV_MAX_ALIGNMENT, 1 GiB), which bdrv_refresh_total_sectors enforces
 * for every driver ("File too large").  fde_disk_open refuses a larger
 * layer (-EFBIG), whatever its format. */
#define FDE_MAX_DISK_LENGTH \
  ((uint64_t) INT64_MAX & ~(((uint64_t) 1 << 30) - 1))
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

/* How the front end spells the options a message may suggest, so that
 * the FUSE program says "-r" where the nbdkit plugin says
 * "readonly=true". */
struct fde_option_names {
  const char *read_only;    /* "-r" */
  const char *format_raw;   /* "-f raw" */
  const char *disk;         /* "--disk=", followed by the number */
  const char *snapshot;     /* "--snapshot=", followed by the name */
};

/* The FUSE program's spellings (formats/registry.c). */
extern const struct fde_option_names fde_program_option_names;

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
  /* The image is the file_length bytes of fd starting at byte file_offset
   * (a member of an OVA's tar, formats/ova.c); both 0: the whole file.
   * Only backends whose fde_format.in_container is true are ever opened
   * with a window; they add file_offset to every host offset they read
   * (and map returns) and treat file_length as the file's size (a VMDK
   * stream footer sits at file_length - 1024).  Always read-only. */
  uint64_t file_offset;
  uint64_t file_length;
  /* --disk=N: which disk of a container (an OVA's, formats/ova.c) to
   * export, from 1; 0: the first.  Other formats ignore it. */
  unsigned disk;
  /* The front end's option names for messages; NULL: the program's
   * (fde_option_names_of). */
  const struct fde_option_names *names;
};

/* params->names, or the program's when it is NULL. */
const struct fde_option_names *
fde_option_names_of(const struct fde_open_params *params);

/* zero's flags. */
#define FDE_ZERO_PUNCH 1u /* the range may be deallocated (a discard) */
#define FDE_ZERO_FAST  2u /* fail with -ENOTSUP rather than write zeros
                           * (NBD's fast zero, QEMU's BDRV_REQ_NO_FALLBACK) */

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

  /* Make [off, off+len) read as zeros; flags are FDE_ZERO_* (below).
   * Without FDE_ZERO_PUNCH the backend may still choose the cheapest way
   * that guarantees zeros.  0 or -errno; -ENOTSUP for FDE_ZERO_FAST where
   * zeroing would write data, before anything was changed. */
  int (*zero)(struct fde_disk *disk, uint64_t off, uint64_t len,
              unsigned flags);

  /* Make every acknowledged write durable (data and metadata). */
  int (*flush)(struct fde_disk *disk);

  /* Status of the run starting at off: store its length (> 0, at most len)
   * in *run and its FDE_BS_* bits in *status.  0 or -errno. */
  int (*block_status)(struct fde_disk *disk, uint64_t off, uint64_t len,
                      uint64_t *run, unsigned *status);

  /* Bytes of host storage the image uses (for st_blocks / du, and
   * --probe's "allocated").  Advisory, as st_blocks is: a backend that
   * counts from its tables gives what it could count when one of them
   * cannot be read (the read itself reports the error). */
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

  /* ---- Capabilities (nbdkit's can_write, can_zero, can_trim...) ----
   * What an open disk supports, answered by the backend and forwarded by
   * layers (formats/layer.c).  The front end asks them through the
   * fde_disk_can_* helpers below and never infers a capability from
   * which other members are NULL.  Each answer stays the same from open
   * to close.  A NULL member means "no" for every disk of the format. */

  /* May pwrite be called?  Yes only for a disk opened writable
   * (params->read_only false) that accepts writes (qcow2: not a snapshot
   * view); its read_only flag is then false.  NULL: the format is served
   * read-only: its images are opened read-only without -r, the front end
   * says so, takes QEMU's reader locks only, and a write gets EROFS. */
  bool (*can_write)(struct fde_disk *disk);

  /* Does zero(disk, off, len, 0) work, more cheaply than writing
   * zeros?  Asked only when the disk can write.  No: fde_disk_zero
   * writes zeros with pwrite instead, as nbdkit emulates .zero. */
  bool (*can_zero)(struct fde_disk *disk);

  /* Does zero(disk, off, len, FDE_ZERO_PUNCH) work (it may deallocate, as a
   * discard)?  Asked only when the disk can write.  No: fde_disk_zero
   * zeroes the range instead (a punched range must read as zeros). */
  bool (*can_discard)(struct fde_disk *disk);

  /* May map be called (reads spliced from the image file)?  No: every
   * read goes through pread. */
  bool (*can_map)(struct fde_disk *disk);

  /* May this format be opened on a window of a file (params->file_offset
   * and file_length, an OVA member)?  false: never (the OVA backend then
   * refuses such a member by name). */
  bool in_container;

  /* Does the format have internal snapshots (params->snapshot)?  false:
   * fde_disk_open refuses a snapshot name for its images, by name, before
   * the backend is called. */
  bool has_snapshots;
};

/* ---- formats/caps.c: asking a disk what it can do ---------------------- */

/* The disk's answers, each false where the member it needs is NULL:
 * can_write also false while disk->read_only is set (a disk opened
 * read-only stays so whatever a backend answers); can_zero and
 * can_discard also false when the disk cannot write.  Thread safe. */
bool fde_disk_can_write(struct fde_disk *disk);
bool fde_disk_can_zero(struct fde_disk *disk);
bool fde_disk_can_discard(struct fde_disk *disk);
bool fde_disk_can_map(struct fde_disk *disk);

/* Is format served read-only, whatever the command line says (its
 * can_write member is NULL)?  Known before any image of it is opened, so
 * that the image is opened and locked as a reader's (fde_disk_open). */
bool fde_format_read_only(const struct fde_format *format);

/* Make [off, off+len) of disk read as zeros, as FUSE's fallocate modes
 * (FDE_ZERO_PUNCH: PUNCH_HOLE, may deallocate; else ZERO_RANGE) and NBD's
 * zero, trim and fast zero ask (flags: FDE_ZERO_*), emulating what the
 * disk cannot do as nbdkit does: a discard it cannot do is done as
 * zeroing, zeroing it cannot do by writing zeros through pwrite (1 MiB
 * at a time; through the top layer, so a layer such as the sector-0
 * guard sees them) unless FDE_ZERO_FAST asks for -ENOTSUP instead.
 * -EROFS when the disk cannot write; else 0, -ENOTSUP (fast zero not
 * possible, nothing changed), -ENOMEM (the zero buffer) or the member's
 * -errno (part of the range may then be zeroed already). */
int fde_disk_zero(struct fde_disk *disk, uint64_t off, uint64_t len,
                  unsigned flags);

/* The backends (each defined at the end of its own file). */
extern const struct fde_format fde_format_raw;
extern const struct fde_format fde_format_qcow2;
extern const struct fde_format fde_format_vdi;    /* formats/vdi.c */
extern const struct fde_format fde_format_vpc;    /* formats/vpc.c */
extern const struct fde_format fde_format_vhdx;   /* formats/vhdx.c */
extern const struct fde_format fde_format_vmdk;   /* formats/vmdk.c */
extern const struct fde_format fde_format_ova;    /* formats/ova.c */

/* formats/vpc.c: is tail (the last len bytes of a file of size bytes)
 * a fixed VHD's footer (valid checksum, disk type fixed, current size =
 * the file less the footer)?  The vpc row's tail_magic: QEMU's probe
 * looks at offset 0 only. */
bool fde_vpc_fixed_footer(const uint8_t *tail, size_t len, uint64_t size);

/* ---- formats/formats-table.c: the table of formats ----------------------
 *
 * Every format the program knows is one row: those it serves, with their
 * backend, and those it recognises only to refuse them by name (so that
 * such an image is never exported as raw by mistake).  --help's list,
 * --format's names and its error, probing and the man page's FORMATS
 * section (--list-formats=man) are all made from it.  Adding a format is
 * one backend file and one row. */

/* A signature: len bytes (0: an unused slot) at offset in the file. */
struct fde_magic {
  uint32_t offset;
  uint32_t len;
  const char *bytes;
  const char *variant;    /* what messages call a file with this one
                           * ("VMDK (descriptor file)"); NULL: the title */
};
#define FDE_FORMAT_MAGICS 3
#define FDE_TAIL_BYTES 512      /* what tail_magic sees: the last sector */

struct fde_format_info {
  const char *name;       /* --format's name: QEMU's, lower case ("vpc") */
  const char *title;      /* what messages call it ("VHD") */
  const struct fde_format *backend;   /* NULL: recognised but refused;
                                       * served read-only when its
                                       * can_write is NULL */
  /* The magic test.  Served: the backend's probe decides (a score), and
   * a file carrying one of magic[] that the probe refuses is refused as
   * "TITLE (unknown version)" rather than served as raw.  Refused: any of
   * magic[] at the start of the file, or tail_magic, marks the file. */
  struct fde_magic magic[FDE_FORMAT_MAGICS];
  /* A signature at the end of the file (DMG's trailer, a fixed VHD's
   * footer), or NULL: tail is the file's last len bytes (len is
   * FDE_TAIL_BYTES, or size when the file is shorter), size the file's
   * size in bytes.  The table reads the tail (through the I/O seam); the
   * sector guard asks the same question of a write's result. */
  bool (*tail_magic)(const uint8_t *tail, size_t len, uint64_t size);
  const char *description;    /* one line, lower case, at most 54
                               * columns (--help adds " (read-only)") */
};

extern const struct fde_format_info fde_format_table[];
extern const size_t fde_format_table_len;

/* The served formats' names in table order, "raw, qcow2, vdi and vpc",
 * NUL-terminated into buf (len > 0 bytes; cut short if it does not fit),
 * for messages that list what may be asked for.  Returns buf. */
const char *fde_format_served_names(char *buf, size_t len);

/* The row named name (served or refused), or NULL. */
const struct fde_format_info *fde_format_info_by_name(const char *name);

/* What messages call a served format: its row's title ("VHD" for vpc,
 * "OVA"), or its name without a row. */
const char *fde_format_title(const struct fde_format *format);

/* The indefinite article for noun, a format's title or a what of
 * fde_format_identify: "an" before a vowel sound ("an OVA", "an
 * unreadable file", "an LVM"), else "a" ("a VHD", "a qcow2", "a LUKS"). */
const char *fde_article(const char *noun);

/* The served format named name ("raw", "qcow2"), or NULL (unknown or
 * refused). */
const struct fde_format *fde_format_by_name(const char *name);

/* How many leading bytes of a file probing looks at: QEMU's
 * BLOCK_PROBE_BUF_SIZE (every QEMU probe decides from the first 512
 * bytes).  The sector-0 guard (formats/guard.c) covers exactly these, so
 * that a guest writing its raw disk can never make the image probe as
 * something else (a VMDK descriptor whose version line sits in sector 1
 * behind a sector of comments, found by a hostile review). */
#define FDE_PROBE_BYTES 512

/* The served format whose backend probe scores buf highest (raw at
 * worst), looking at its first FDE_PROBE_BYTES bytes at most; signatures
 * of refused formats are not looked at. */
const struct fde_format *fde_format_probe(const uint8_t *buf, size_t len);

/* What a file is, by the table. */
struct fde_format_match {
  const struct fde_format_info *info; /* its row (raw's if nothing else) */
  const struct fde_format *format;    /* the backend to serve it with, or
                                       * NULL: refused */
  char what[64];                      /* what messages call it ("VMDK
                                       * (descriptor file)") */
  int error;                          /* 0, or -errno: the end of fd could
                                       * not be read (format NULL: nothing
                                       * may be decided from the head) */
};

/* Identify a file from its first len bytes (head; from 512 on, every
 * signature is seen) and, where fd >= 0, signatures at its end.  In this
 * order: a refused format's signature; the best served probe; a served
 * format's signature at the end; a served format's signature that its
 * probe refused ("qcow2 (unknown version)", refused); else raw. */
struct fde_format_match fde_format_identify(const uint8_t *head, size_t len,
                                            int fd);

/* Would a disk whose first sector is head look like an image file (any
 * format but raw, served or refused) the next time it is probed?  The
 * sector-0 guard's test (formats/guard.c). */
bool fde_format_head_is_image(const uint8_t *head, size_t len);

/* Would a disk of size bytes whose last len bytes are tail (len as for
 * tail_magic) look like an image file by a signature at its end (a fixed
 * VHD's footer, a DMG trailer) the next time it is probed?  The guard's
 * test for the last sector (formats/guard.c). */
bool fde_format_tail_is_image(const uint8_t *tail, size_t len,
                              uint64_t size);

/* ---- formats/registry.c: opening a layer ------------------------------- */

/* Open a layer by descriptor with a given format (NULL: identify it by
 * the table of formats; one recognised but refused is -ENOTSUP).
 * Records (dev, ino) in params->chain and refuses loops and chains deeper
 * than FDE_MAX_CHAIN, and a disk larger than FDE_MAX_DISK_LENGTH
 * (-EFBIG).  A format served read-only (fde_format_read_only)
 * is opened read-only, with QEMU's reader locks, whatever
 * params->read_only says.  0 or -errno, message logged. */
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
 * used is the one that was opened.  path is opened with openat2(2),
 * never through a /proc magic link (RESOLVE_NO_MAGICLINKS: QEMU allows
 * absolute and "../" backing names, so nothing more is asked of them);
 * inside, when not NULL, is a tail of path (path itself, or what follows
 * a '/' in it) that must resolve beneath the directory path names before
 * it, symbolic links included (RESOLVE_BENEATH: a VMDK extent stays in
 * its descriptor's directory).  Only a regular file is accepted (or a
 * block device when params->allow_bdev_backing), and none on a kernel
 * pseudo file system (fde_pseudo_fs_of).  Returns the descriptor
 * (O_CLOEXEC, blocking) or -errno with one line logged naming the file:
 * -EACCES/-EPERM when the owner may not read it or the owner's
 * credentials cannot be taken, -EXDEV when it leads out of the
 * directory, -ESTALE when that directory, looked up again, no longer
 * holds the image params->fd is (renamed or swapped meanwhile), -ELOOP for a magic link (or a symlink loop), -ENOSYS on a
 * kernel without openat2, -EINVAL for a file of another type or on a
 * pseudo file system. */
int fde_open_named(const struct fde_open_params *params, const char *what,
                   const char *path, const char *inside);

/* The name of the kernel pseudo file system fd is on ("procfs", "sysfs",
 * "debugfs", "cgroup2"...; by fstatfs f_type), or NULL (also when fstatfs
 * fails).  Its files belong to the kernel or to one process, and can
 * change or vanish under a view: neither a mount point nor a file a
 * layer names may be on one. */
const char *fde_pseudo_fs_of(int fd);

/* ---- formats/io.c: the I/O seam -----------------------------------------
 *
 * Every pread, pwrite, pwritev, copy_file_range, fdatasync, fallocate and
 * ftruncate a backend makes on an image file (or a backing file) goes
 * through the functions below and through nothing else, so that the
 * fault-injection test can make any one of them fail (see "testing"
 * below).  Offsets and lengths are bytes of the file; fd and buf stay the
 * caller's (nothing is kept after the call).  Each returns -errno on
 * failure (-EINVAL for an offset or length past INT64_MAX) and does not
 * retry EINTR itself (the *_full helpers do).  Thread safe: they are the
 * system calls plus an atomic counter. */

/* One pread(2)/pwrite(2): bytes transferred (0 at end of file), or -errno. */
ssize_t fde_io_pread(int fd, void *buf, size_t len, uint64_t off);
ssize_t fde_io_pwrite(int fd, const void *buf, size_t len, uint64_t off);
/* One pwritev(2) of iovcnt buffers, written one after the other from off:
 * bytes written, or -errno. */
ssize_t fde_io_pwritev(int fd, const struct iovec *iov, int iovcnt,
                       uint64_t off);

/* One copy_file_range(2) of len bytes from fd_in at off_in to fd_out at
 * off_out, done by the kernel without a trip through a buffer of ours
 * (on one file system; between two, most kernels refuse it): bytes
 * copied (0 at fd_in's end of file), or -errno.  Counts as one call. */
ssize_t fde_io_copy_range(int fd_in, uint64_t off_in, int fd_out,
                          uint64_t off_out, size_t len);

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

/* What the file system says of the len (> 0) bytes of fd at off, by
 * SEEK_DATA/SEEK_HOLE: true when they start with data, false when they
 * start in a hole (or lie past the end of the file), which reads as
 * zeros; the run of the same kind from off, at most len, in *run.  Where
 * the file system cannot say (no SEEK_DATA), all of it is data.  For
 * raw files and for formats whose data is stored as in a raw file (QEMU's
 * file driver answers block status the same way: file-posix.c
 * find_allocation). */
bool fde_file_data_run(int fd, uint64_t off, uint64_t len, uint64_t *run);

/* pwrite() that retries short writes and EINTR; 0 or -errno. */
int fde_pwrite_full(int fd, const void *buf, size_t len, uint64_t off);

/* len bytes of zeros written at off (in 64 KiB pwrites): the fallback
 * where fallocate cannot zero, and a copy's source past its end.  0 or
 * -errno. */
int fde_pwrite_zeros(int fd, uint64_t off, uint64_t len);

/* copy_file_range() of all len bytes, retrying short copies and EINTR;
 * what lies past fd_in's end (a file that shrank) is written as zeros,
 * as fde_pread_full reads it.  0, or FDE_COPY_RANGE_UNSUPPORTED (> 0)
 * when the kernel will not copy between these files (EXDEV, EOPNOTSUPP,
 * ENOSYS, EPERM, EINVAL, from the first call or after a short copy: the
 * caller reads and writes the whole range instead, the part already
 * copied again), or -errno. */
#define FDE_COPY_RANGE_UNSUPPORTED 1
int fde_copy_range_full(int fd_in, uint64_t off_in, int fd_out,
                        uint64_t off_out, uint64_t len);

/* pwritev() of at most FDE_IOV_MAX buffers that retries short writes and
 * EINTR: the buffers' bytes, one after the other, land at off.  0 or
 * -errno (-EINVAL for more buffers).  iov is not changed. */
#define FDE_IOV_MAX 8
int fde_pwritev_full(int fd, const struct iovec *iov, int iovcnt,
                     uint64_t off);

/* ---- Testing only: fault injection at the I/O seam ----------------------
 *
 * For tests/unit/fault-test.c; the program never calls these.  Process
 * wide and thread safe (atomic counters).  While disarmed (the default) a
 * seam call costs one relaxed atomic load.  An injected failure returns
 * the chosen -errno without making the system call: it models a call whose
 * effect did not land. */

/* Start counting seam calls from 0, and fail call number nth (1-based,
 * counted across pread, pwrite, pwritev, copy_range, fdatasync, fallocate
 * and ftruncate alike; a retried EINTR or a short transfer's next call
 * counts again) with -err (EIO if err <= 0).  nth == 0: count only, fail
 * nothing.  err == FDE_FAULT_SHORT: call nth does not fail but, if it is
 * a pread, pwrite, pwritev (of at most FDE_IOV_MAX buffers) or copy_range
 * of 2 bytes or more, moves only the first half of them, as a short
 * transfer; any other call goes through (and counts no fault). */
#define FDE_FAULT_SHORT (-1)
void fde_io_fault_arm(uint64_t nth, int err);

/* The seam's calls, by kind (pwritev counts as FDE_IO_PWRITE). */
enum fde_io_call {
  FDE_IO_NONE, FDE_IO_PREAD, FDE_IO_PWRITE, FDE_IO_COPY_RANGE,
  FDE_IO_FDATASYNC, FDE_IO_FALLOCATE, FDE_IO_FTRUNCATE,
};
#define FDE_IO_KINDS (FDE_IO_FTRUNCATE + 1)

/* fde_io_fault_arm, with nth counted among the calls of kind only (every
 * call when FDE_IO_NONE): a refusal (EXDEV, EOPNOTSUPP) aimed at the
 * call it models. */
void fde_io_fault_arm_kind(uint64_t nth, int err, enum fde_io_call kind);

/* After fde_io_fault_arm(nth, ...) with nth > 0: fail call nth + 1 as
 * well, with -err (err <= 0: not).  For a fault that follows a short
 * transfer, which a whole-range helper meets in its next call. */
void fde_io_fault_arm_next(int err);

/* Stop counting and injecting; the counts stay readable. */
void fde_io_fault_disarm(void);

/* Seam calls counted since the last arm. */
uint64_t fde_io_fault_calls(void);

/* Faults injected (failed or shortened calls) since the last arm. */
uint64_t fde_io_fault_injected(void);

/* Seam calls of one kind counted since the last arm. */
uint64_t fde_io_fault_calls_of(enum fde_io_call kind);

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

/* What process pid is, for a message: if it runs our own executable, what
 * we are ("fuse-disk-export", or "nbdkit" in the plugin), else its
 * /proc/PID/comm ("fuse-disk-export" for its 15-byte comm too);
 * NUL-terminated into buf (len bytes).  false if unknown. */
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
