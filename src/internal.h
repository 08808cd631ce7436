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

/* Exit status (documented in the man page). */
enum {
  EXIT_OK = 0,
  EXIT_FAIL = 1,        /* I/O, mount or pid-file failure */
  EXIT_USAGE = 2,       /* bad command line */
  EXIT_IMAGE = 3,       /* image unsupported, invalid or refused */
  EXIT_BUSY = 4,        /* path already exported, or a dead mount on it */
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
  char **images;
  int nr_images;
};
int parse_options(int argc, char **argv, struct options *opts);

/* log.c */
void log_to_syslog(void);
void log_set_verbosity(int verbose);
void log_message(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* probe.c: what a file holds, beyond the formats we serve. */
const char *probe_unsupported(int fd, const uint8_t *buf, size_t len);
bool probe_sector0_is_image(const uint8_t *sector, size_t len);
void probe_describe_raw(int fd, FILE *out);

/* One image being exported. */
struct export {
  const struct options *opts;
  const char *image;            /* as given on the command line */
  char *image_abspath;          /* resolved image path (used before mount) */
  char *mountpoint;             /* absolute path where the view appears */
  struct fde_disk *disk;
  bool format_probed_raw;       /* sector-0 guard applies */
  pthread_mutex_t sector0_lock; /* serialises guarded writes to sector 0 */
  struct stat image_st;         /* owner and times shown by getattr */
  mode_t mode;                  /* permission bits shown by getattr */
  pthread_mutex_t attr_lock;    /* image_st and mode (setattr) */
  bool allow_other;
  struct fuse_session *se;
  pthread_t loop_thread;
  bool loop_started;            /* loop_thread exists and is not joined */
  bool loop_running;            /* the loop has not returned yet */
  bool mounted;
  bool unmount_failed;
  pid_t lock_pid;               /* the child holding QEMU's locks on the view */
  int lock_pipe;                /* closing it lets that child go, or -1 */
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
int export_lock_view(struct export *exp);
int export_start_loop(struct export *exp);
void export_unmount(struct export *exp);
void export_join(struct export *exp);
int export_close(struct export *exp);
int export_describe(struct export *exp, FILE *out);

/* fuse-ops.c */
extern const struct fuse_lowlevel_ops fde_fuse_ops;
extern const size_t fde_fuse_ops_size;
void fuse_ops_plan(struct export *exp);

/* mounts.c: the mount table. */
enum mount_state { MOUNT_NONE, MOUNT_LIVE, MOUNT_DEAD, MOUNT_OTHER };
enum mount_state mount_state_of(const char *abspath, char *fstype,
                                size_t fstype_len);
bool mount_is_listed(const char *abspath);
bool mount_device(const char *abspath, dev_t *dev);
int unmount_path(const char *abspath, bool lazy);

/* daemon.c: forking, readiness, pid file, signals. */
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

#endif /* FDE_INTERNAL_H */
