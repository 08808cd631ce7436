/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export unit test: the FUSE write handler's replies, driven
 * through libfuse's custom I/O (fuse_session_custom_io) with this test
 * playing the kernel on a socket pair, so that it can send requests the
 * kernel never sends for a regular file (a write of zero bytes: the VFS
 * returns before FUSE sees it), and check each reply's exact shape
 * (include/uapi/linux/fuse.h: a WRITE reply is fuse_out_header followed
 * by fuse_write_out when error is 0, the header alone otherwise).
 *
 * Usage: fuse-write-test (no arguments); exit 0 when every check passes. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "internal.h"

#define DISK_SIZE (1u << 20)

static int failures;

#define CHECK(cond, ...)                                          \
  do {                                                            \
    if (!(cond)) {                                                \
      fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);        \
      fprintf(stderr, __VA_ARGS__);                               \
      fputc('\n', stderr);                                        \
      failures++;                                                 \
    }                                                             \
  } while (0)

/* libfuse's side of the socket pair: one message per request/reply. */
static ssize_t
io_read(int fd, void *buf, size_t len, void *userdata)
{
  return read(fd, buf, len);
}

static ssize_t
io_writev(int fd, struct iovec *iov, int count, void *userdata)
{
  struct msghdr msg = { .msg_iov = iov, .msg_iovlen = (size_t) count };

  return sendmsg(fd, &msg, 0);
}

static void *
serve(void *arg)
{
  fuse_session_loop(arg);
  return NULL;
}

/* Send one request (header + body + data) as the kernel would. */
static void
send_request(int fd, uint32_t opcode, uint64_t unique, const void *body,
             size_t body_len, const void *data, size_t data_len)
{
  struct fuse_in_header in = {
    .len = (uint32_t) (sizeof in + body_len + data_len),
    .opcode = opcode, .unique = unique, .nodeid = FUSE_ROOT_ID,
  };
  struct iovec iov[3] = {
    { &in, sizeof in }, { (void *) body, body_len }, { (void *) data, data_len },
  };
  struct msghdr msg = { .msg_iov = iov, .msg_iovlen = 3 };

  if (sendmsg(fd, &msg, 0) != (ssize_t) in.len) {
    perror("sendmsg");
    exit(2);
  }
}

/* Receive one reply; its length, header in *out, body copied to body. */
static ssize_t
recv_reply(int fd, struct fuse_out_header *out, void *body, size_t body_cap)
{
  char buf[4096];
  ssize_t n = read(fd, buf, sizeof buf);

  if (n < (ssize_t) sizeof *out) {
    fprintf(stderr, "short or no reply (%zd)\n", n);
    exit(2);
  }
  memcpy(out, buf, sizeof *out);
  if (body != NULL && (size_t) n > sizeof *out)
    memcpy(body, buf + sizeof *out,
           (size_t) n - sizeof *out < body_cap ? (size_t) n - sizeof *out
                                               : body_cap);
  return n;
}

/* FUSE_WRITE of len bytes at off; check the reply is a well-formed
 * success with count want, or the error want_err alone. */
static void
check_write(int fd, uint64_t unique, uint64_t off, uint32_t len,
            uint32_t want, int want_err)
{
  static char data[4096];
  struct fuse_write_in w = { .offset = off, .size = len };
  struct fuse_out_header out;
  struct fuse_write_out wo = { .size = ~0u };
  ssize_t n;

  send_request(fd, FUSE_WRITE, unique, &w, sizeof w, data, len);
  n = recv_reply(fd, &out, &wo, sizeof wo);
  CHECK(out.unique == unique, "write %u at %llu: reply to %llu", len,
        (unsigned long long) off, (unsigned long long) out.unique);
  CHECK(out.len == (uint32_t) n, "write %u at %llu: header says %u bytes, "
        "got %zd", len, (unsigned long long) off, out.len, n);
  if (want_err != 0) {
    CHECK(out.error == -want_err && n == sizeof out,
          "write %u at %llu: want error %d alone, got error %d in %zd bytes",
          len, (unsigned long long) off, -want_err, out.error, n);
    return;
  }
  CHECK(out.error == 0, "write %u at %llu: error %d", len,
        (unsigned long long) off, out.error);
  CHECK(n == sizeof out + sizeof wo,
        "write %u at %llu: malformed reply of %zd bytes (want %zu: header "
        "and fuse_write_out)", len, (unsigned long long) off, n,
        sizeof out + sizeof wo);
  CHECK(n != sizeof out + sizeof wo || wo.size == want,
        "write %u at %llu: count %u, want %u", len,
        (unsigned long long) off, wo.size, want);
}

/* A raw disk of DISK_SIZE bytes on a temporary file. */
static struct fde_disk *
open_disk(void)
{
  char path[] = "/tmp/fuse-write-test.XXXXXX";
  struct fde_chain chain = { 0 };
  struct fde_disk *disk;
  int fd = mkstemp(path);

  if (fd == -1 || unlink(path) == -1 || ftruncate(fd, DISK_SIZE) == -1) {
    perror(path);
    exit(2);
  }
  struct fde_open_params params = {
    .path = path, .fd = fd, .chain = &chain,
  };
  if (fde_disk_open(&fde_format_raw, &params, &disk) < 0) {
    fprintf(stderr, "cannot open the raw disk\n");
    exit(2);
  }
  return disk;
}

int
main(void)
{
  static struct options opts;
  static struct export exp;     /* zeroed: mutexes and conds initialised */
  struct fuse_custom_io io = { .read = io_read, .writev = io_writev };
  /* max_read as export_mount passes it (fde_init must agree) */
  char *argv[] = { "fuse-write-test", "-o", "max_read=1048576", NULL };
  struct fuse_args args = FUSE_ARGS_INIT(3, argv);
  struct fuse_init_in init = {
    .major = FUSE_KERNEL_VERSION, .minor = FUSE_KERNEL_MINOR_VERSION,
    .max_readahead = 1u << 20,
  };
  struct fuse_out_header out;
  struct fuse_session *se;
  pthread_t thread;
  int sv[2];

  exp.opts = &opts;
  exp.image = "test";
  exp.disk = open_disk();
  exp.max_read = 1u << 20;
  if (view_files_open(&exp) != 0) {   /* the root: the single file */
    fprintf(stderr, "cannot set up the view's file\n");
    return 2;
  }
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == -1) {
    perror("socketpair");
    return 2;
  }
  se = fuse_session_new(&args, &fde_fuse_ops, fde_fuse_ops_size, &exp);
  fuse_opt_free_args(&args);
  if (se == NULL || fuse_session_custom_io(se, &io, sv[1]) != 0
      || pthread_create(&thread, NULL, serve, se) != 0) {
    fprintf(stderr, "cannot start the session\n");
    return 2;
  }
  send_request(sv[0], FUSE_INIT, 1, &init, sizeof init, NULL, 0);
  recv_reply(sv[0], &out, NULL, 0);
  CHECK(out.error == 0, "FUSE_INIT: error %d", out.error);

  check_write(sv[0], 2, 0, 512, 512, 0);              /* plain write */
  check_write(sv[0], 3, DISK_SIZE - 100, 512, 100, 0); /* cut at the end */
  check_write(sv[0], 4, 4096, 0, 0, 0);               /* empty, inside */
  check_write(sv[0], 5, DISK_SIZE, 0, 0, 0);          /* empty, at the end */
  check_write(sv[0], 6, DISK_SIZE + 4096, 0, 0, 0);   /* empty, past it */
  check_write(sv[0], 7, DISK_SIZE, 512, 0, ENOSPC);   /* at the end */

  /* The end of the connection ends the loop. */
  close(sv[0]);
  pthread_join(thread, NULL);
  fuse_session_destroy(se);
  fde_disk_close(exp.disk);
  if (failures == 0)
    printf("fuse-write-test: all write replies well-formed\n");
  return failures == 0 ? 0 : 1;
}
