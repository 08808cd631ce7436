/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: declarations shared by the files of the front end,
 * grouped by the file that owns them. */
#ifndef FDE_INTERNAL_H
#define FDE_INTERNAL_H

#define FUSE_USE_VERSION 35
#include <fuse_lowlevel.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>

#include "format.h"
#include "image.h"

/* Exit status (documented in the man page). */
enum {
  EXIT_OK = FDE_EXIT_OK,
  EXIT_FAIL = FDE_EXIT_FAIL,    /* I/O, mount or pid-file failure */
  EXIT_USAGE = FDE_EXIT_USAGE,  /* bad command line */
  EXIT_IMAGE = FDE_EXIT_IMAGE,  /* image unsupported, invalid or refused */
  EXIT_BUSY = FDE_EXIT_BUSY,    /* path already exported, or a dead mount
                                 * on it, or the image's locks held */
};

enum allow_other { ALLOW_OTHER_AUTO, ALLOW_OTHER_ON, ALLOW_OTHER_OFF };

/* options.c: everything the command line says. */
struct options {
  bool daemonize;
  const char *pid_file;
  const char *format;           /* NULL: probe */
  bool read_only;
  enum allow_other allow_other;
  const char *mountpoint;       /* -m, NULL: the image itself */
  bool probe_only;
  const char *snapshot;
  uint64_t cache_bytes;
  uint64_t zcache_bytes;        /* --decompressed-cache */
  bool allow_bdev_backing;
  bool no_splice;               /* --no-splice: reads copy through us */
  int verbose;                  /* -1 quiet, 0 normal, >0 verbose */
  unsigned partition;           /* --partition=N: 1.., 0 = whole disk */
  unsigned disk;                /* --disk=N: an OVA's disk, 1..; 0 = 1 */
  const char *partitions_dir;   /* -P DIR: the directory view, or NULL */
  const char *stop_pid_file;    /* --stop: stop that daemon and exit */
  unsigned stop_timeout;        /* --stop-timeout, seconds; 0: no limit */
  char **images;
  int nr_images;
};
int parse_options(int argc, char **argv, struct options *opts);

/* log.c */
void log_to_syslog(void);
void log_set_verbosity(int verbose);
void log_message(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* probe.c: what libblkid sees inside a disk (--probe). */
int probe_describe_disk(struct fde_disk *disk, const char *image, FILE *out);

/* One file the view shows: the whole disk or one partition of it.  The
 * single-file view shows one, as the root of the mount (FUSE_ROOT_ID);
 * the directory view (-P) holds several in its root, found by inode
 * (view-files.c).  A file object lives until the export is closed, and
 * its inode number is never given to another. */
struct view_file {
  fuse_ino_t ino;
  struct fde_disk *disk;        /* what it shows: the export's disk, or a
                                 * window on a partition (its size read
                                 * with fde_disk_size: it may change) */
  char name[8];                 /* "disk", "p1".."p256"; "" for the root */
  unsigned partno;              /* 0: the whole disk */
  uint64_t start;               /* the partition's first byte in the disk */
  bool whole;                   /* the whole disk (the directory view's
                                 * "disk", or the single-file view) */
  bool gone;                    /* (atomic) its partition moved or was
                                 * removed: every operation fails, EIO */
  /* what getattr shows and setattr changes (export.attr_lock) */
  mode_t mode;                  /* permission bits */
  uid_t uid;
  gid_t gid;
  struct timespec atim, mtim, ctim;
};

struct view_dir;                /* the directory view's files (view-files.c) */

/* One image being exported. */
struct export {
  const struct options *opts;
  struct fde_image_spec spec;   /* what to open, from opts */
  const char *image;            /* as given on the command line */
  char *image_abspath;          /* resolved image path (used before mount) */
  char *mountpoint;             /* absolute path where the view appears
                                 * (as resolved at start; it may move) */
  int mnt_pfd;                  /* O_PATH descriptor of that file, or -1 */
  struct stat mnt_st;           /* its identity (dev, ino) */
  dev_t view_dev;               /* the view's FUSE device once mounted:
                                 * how the mount table names our mount */
  struct fde_disk *disk;        /* what the view shows: the image's disk,
                                 * or layers over it (formats/layer.h) */
  struct stat image_st;         /* the image file's owner and times, the
                                 * files' attributes at start */
  bool format_read_only;        /* read-only because its format is served
                                 * read-only (not for -r), said when live */
  mode_t mode;                  /* the files' permission bits at start */
  struct view_file root;        /* the root: the single file, or (disk
                                 * NULL) the directory of the -P view */
  struct view_dir *dir;         /* the -P view's files; NULL: single file */
  pthread_mutex_t attr_lock;    /* the files' attributes (setattr) */
  bool allow_other;
  struct fuse_session *se;
  pthread_t loop_thread;
  bool loop_started;            /* loop_thread exists and is not joined */
  bool loop_running;            /* the loop has not returned yet */
  bool mounted;                 /* view_dev is in the mount table */
  bool unmount_failed;
  bool aborted;                 /* its FUSE connection was aborted */
  int claim_fd;                 /* the image's open file description (a
                                 * dup): flock claim, then QEMU's locks */
  int claim_mnt_fd;             /* -m file's claim until live, or -1 */
  pthread_mutex_t open_lock;    /* open_files, reverting */
  pthread_cond_t open_cond;     /* open_files reached 0 */
  unsigned open_files;          /* the kernel's opens not yet released */
  bool reverting;               /* new opens of the view are refused */
  bool final_flushed;           /* flushed with nothing left to write */
  bool init_done;               /* the kernel's FUSE_INIT was answered */
  size_t max_read;              /* largest read request (fuse_ops_plan) */
  size_t splice_max;            /* largest read answered by splice; 0: none */
  pthread_mutex_t init_lock;
  pthread_cond_t init_cond;
};

/* export.c */
int export_open(struct export *exp, const struct options *opts,
                const char *image);
int export_mount(struct export *exp);
int export_wait_live(struct export *exp);
void export_release_claim(struct export *exp);
int export_start_loop(struct export *exp);
void export_unmount(struct export *exp);
int export_join(struct export *exp);
int export_flush(struct export *exp);
int export_quiesce(struct export *exp);
int export_close(struct export *exp);
int export_describe(struct export *exp, FILE *out);

/* view-files.c: the files a view shows. */
/* Set up the root (the single file, or the directory of -P with its
 * files as the partition table says now); after the disk is open.  0 or
 * an exit status, with a message. */
int view_files_open(struct export *exp);
/* The file whose inode is ino (the root, FUSE_ROOT_ID: the single file
 * or the -P directory, whose disk is NULL), or NULL if none. */
struct view_file *view_file_of(struct export *exp, fuse_ino_t ino);
/* The file of the -P directory named name now, or NULL. */
struct view_file *view_file_named(struct export *exp, const char *name);
/* The files of the -P directory now, "disk" first, then the partitions
 * by number: at most max stored in files; returns how many there are. */
size_t view_files_now(struct export *exp, struct view_file **files,
                      size_t max);
#define VIEW_MAX_FILES 257      /* disk and 256 partitions */
/* Has f's partition moved or been removed (-P)? */
static inline bool
view_file_gone(const struct view_file *f)
{
  return __atomic_load_n(&f->gone, __ATOMIC_ACQUIRE);
}
/* [off, off + len) (bytes of f) was just written or zeroed through f, or
 * tried (-P; any file; called after the write has landed): if it touches
 * the bytes the partition table was last read from, or lands while a
 * scan reads the table and touches what that scan read, the next
 * view_files_rescan reads the table again. */
void view_files_written(struct export *exp, const struct view_file *f,
                        uint64_t off, uint64_t len);
/* Read the partition table again if a write touched its bytes since the
 * last time (or the last read failed), and make the files follow it (-P;
 * called after every FLUSH of a descriptor that may write and every
 * FSYNC).  Serialised; may run while other requests are served. */
void view_files_rescan(struct export *exp);
/* "disk, p1, p2" into out; the number of partitions. */
unsigned view_files_names(struct export *exp, FILE *out);
/* Log one line per file (-v). */
void view_files_log(struct export *exp);
/* Free every file object and close the partitions' windows (not the
 * export's disk). */
void view_files_close(struct export *exp);

/* fuse-ops.c */
extern const struct fuse_lowlevel_ops fde_fuse_ops;
extern const size_t fde_fuse_ops_size;
void fuse_ops_plan(struct export *exp);

/* mounts.c: the mount table (/proc/self/mountinfo), unmounting. */
enum mount_state { MOUNT_NONE, MOUNT_LIVE, MOUNT_DEAD, MOUNT_OTHER };
/* What is mounted on abspath (the top mount), and is a FUSE server behind
 * it still answering (asked with a 2 s timeout)? */
enum mount_state mount_state_of(const char *abspath, char *fstype,
                                size_t fstype_len);
/* A mount as the table shows it now. */
struct view_mount {
  int id;                       /* mount ID (reused once it is gone) */
  int parent;                   /* ID of the mount its mount point is on */
  dev_t dev;                    /* the FUSE connection's device number */
  char *path;                   /* where it is now (malloc'd) */
  bool covered;                 /* another mount is stacked on it */
};
void view_mount_free(struct view_mount *vm);
/* The mounts of one type and source before a mount (to tell ours). */
struct mount_snapshot {
  int *ids;
  dev_t *devs;
  size_t n;
};
/* Record the mounts of fstype from source; 0 or -errno. */
int mount_snapshot_take(const char *fstype, const char *source,
                        struct mount_snapshot *snap);
void mount_snapshot_free(struct mount_snapshot *snap);
/* The one mount of fstype from source not in before: 0 (*vm filled, free
 * it with view_mount_free), -ENOENT if none, -EEXIST if several. */
int mount_find_new(const char *fstype, const char *source,
                   const struct mount_snapshot *before, struct view_mount *vm);
/* The FUSE mount whose device is dev, wherever it is now: 0 (*vm filled),
 * -ENOENT if it is not mounted (in this mount namespace), or -errno. */
int mount_find_device(dev_t dev, struct view_mount *vm);
/* Unmount the FUSE mount whose device is dev, found where it is now (not
 * where it was mounted): umount2 as root, fusermount3 -u otherwise; then
 * check that the device is gone.  lazy: detach it (MNT_DETACH / -z).
 * 0 (also if it was not mounted); -EBUSY if it is in use (a lazy detach
 * may then succeed); -ENOTEMPTY if another mount is stacked on it (no
 * unmount could take ours without taking that one); another -errno if it
 * failed otherwise.  why (why_len bytes) says what failed. */
int mount_unmount_device(dev_t dev, bool lazy, char *why, size_t why_len);
/* Abort the FUSE connection of device dev through fusectl (the kernel
 * then fails every request, the server's reads fail with ENODEV and the
 * mount answers ENOTCONN).  0 or -errno, with why saying what failed. */
int mount_abort_connection(dev_t dev, char *why, size_t why_len);

/* daemon.c: forking, readiness, pid file, --stop. */
struct daemon_state {
  int ready_fd;                 /* child's end of the readiness pipe, or -1 */
  char *pid_file;               /* absolute path, or NULL */
  char *pid_tmp;                /* temporary written before the rename */
  int pid_tmp_fd;
};
int daemon_start(const struct options *opts, struct daemon_state *ds);
int daemon_prepare_pid_file(struct daemon_state *ds, const char *pid_file);
int daemon_ready(struct daemon_state *ds, bool detach);
void daemon_fail(struct daemon_state *ds, int status);
void daemon_cleanup(struct daemon_state *ds);
void daemon_finish(struct daemon_state *ds, int status);
int daemon_stop(const char *pid_file, unsigned timeout_s);

#endif /* FDE_INTERNAL_H */
