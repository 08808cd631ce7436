/* SPDX-License-Identifier: GPL-2.0-or-later
 * Copyright (C) 2026 The fuse-disk-export authors */
/* fuse-disk-export: the command line (GNU getopt_long conventions). */
#include <config.h>

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

enum {
  ALLOW_OTHER_OPTION = CHAR_MAX + 1,
  SNAPSHOT_OPTION,
  CACHE_SIZE_OPTION,
  ALLOW_BDEV_OPTION,
  SHORT_OPTIONS_OPTION,
  LONG_OPTIONS_OPTION,
  NO_SPLICE_OPTION,
  DECOMPRESSED_CACHE_OPTION,
  STOP_OPTION,
  STOP_TIMEOUT_OPTION,
  PARTITION_OPTION,
  LIST_FORMATS_OPTION,
  DISK_OPTION,
};

#define DEFAULT_STOP_TIMEOUT 60   /* seconds --stop waits for the daemon */
#define MAX_STOP_TIMEOUT 2000000  /* poll(2) takes milliseconds in an int */

static const char short_options[] = "dp:f:rm:P:nqvhV";
static const struct option long_options[] = {
  { "daemonize",     no_argument,       NULL, 'd' },
  { "pid-file",      required_argument, NULL, 'p' },
  { "format",        required_argument, NULL, 'f' },
  { "read-only",     no_argument,       NULL, 'r' },
  { "allow-other",   required_argument, NULL, ALLOW_OTHER_OPTION },
  { "mountpoint",    required_argument, NULL, 'm' },
  { "probe",         no_argument,       NULL, 'n' },
  { "snapshot",      required_argument, NULL, SNAPSHOT_OPTION },
  { "partition",     required_argument, NULL, PARTITION_OPTION },
  { "partitions",    required_argument, NULL, 'P' },
  { "disk",          required_argument, NULL, DISK_OPTION },
  { "cache-size",    required_argument, NULL, CACHE_SIZE_OPTION },
  { "decompressed-cache", required_argument, NULL, DECOMPRESSED_CACHE_OPTION },
  { "allow-block-device-backing", no_argument, NULL, ALLOW_BDEV_OPTION },
  { "no-splice",     no_argument,       NULL, NO_SPLICE_OPTION },
  { "stop",          required_argument, NULL, STOP_OPTION },
  { "stop-timeout",  required_argument, NULL, STOP_TIMEOUT_OPTION },
  { "quiet",         no_argument,       NULL, 'q' },
  { "verbose",       no_argument,       NULL, 'v' },
  { "help",          no_argument,       NULL, 'h' },
  { "version",       no_argument,       NULL, 'V' },
  { "short-options", no_argument,       NULL, SHORT_OPTIONS_OPTION },
  { "long-options",  no_argument,       NULL, LONG_OPTIONS_OPTION },
  { "list-formats",  optional_argument, NULL, LIST_FORMATS_OPTION },
  { NULL, 0, NULL, 0 }
};

/* ---- The lists made from the table of formats (formats-table.c) ------ */

#define HELP_WIDTH 79           /* --help fits an 80-column terminal */

/* What --list-formats and the man page say of a row. */
static const char *
format_status(const struct fde_format_info *row)
{
  return row->backend == NULL ? "refused"
    : fde_format_read_only(row->backend) ? "read-only" : "read-write";
}

/* --help's list: the served formats with their descriptions, then the
 * names of the refused ones, wrapped. */
static void
print_help_formats(void)
{
  size_t col = 1;

  printf("Formats (-f FMT):\n");
  for (size_t i = 0; i < fde_format_table_len; i++) {
    const struct fde_format_info *row = &fde_format_table[i];
    if (row->backend != NULL)
      printf("  %-10s %s%s\n", row->name, row->description,
             fde_format_read_only(row->backend) ? " (read-only)" : "");
  }
  printf("Recognised and refused (convert them with qemu-img, or use -f raw "
         "to export\ntheir bytes as they are):\n ");
  for (size_t i = 0; i < fde_format_table_len; i++) {
    const char *name = fde_format_table[i].name;
    if (fde_format_table[i].backend != NULL)
      continue;
    if (col > 1)
      col += (size_t) printf(",");
    if (col + 1 + strlen(name) > HELP_WIDTH) {
      printf("\n ");
      col = 1;
    }
    col += (size_t) printf(" %s", name);
  }
  printf("\n\n");
}

/* Text for roff: a backslash and a minus sign escaped. */
static void
put_roff(const char *s)
{
  for (; *s != '\0'; s++) {
    if (*s == '\\')
      fputs("\\e", stdout);
    else if (*s == '-')
      fputs("\\-", stdout);
    else
      putchar(*s);
  }
}

/* --list-formats: "NAME STATUS TITLE" lines (STATUS read-write, read-only
 * or refused; TITLE what messages call it); =man: the man page's list
 * (man/fuse-disk-export.1 holds a copy between its "FORMATS BEGIN" and
 * "FORMATS END" comments, checked by tests/cli.bats, updated by "make
 * man-formats").  0, or -1 for an unknown style. */
static int
list_formats(const char *style)
{
  bool man = style != NULL && strcmp(style, "man") == 0;

  if (style != NULL && !man)
    return -1;
  for (size_t i = 0; i < fde_format_table_len; i++) {
    const struct fde_format_info *row = &fde_format_table[i];
    if (!man) {
      printf("%s %s %s\n", row->name, format_status(row), row->title);
      continue;
    }
    printf(".TP\n.B ");
    put_roff(row->name);
    printf("\n%c", toupper((unsigned char) row->description[0]));
    put_roff(row->description + 1);
    printf(row->backend == NULL ? " (recognised and refused).\n"
           : fde_format_read_only(row->backend) ? " (served read-only).\n"
           : ".\n");
  }
  return 0;
}

static void
usage(void)
{
  printf("Usage: fuse-disk-export [OPTION]... IMAGE...\n"
"Show each disk IMAGE as a raw disk on its own path until interrupted;\n"
"then the path shows the image file again.\n"
"\n"
"  -d, --daemonize          run in the background once every export is live\n"
"  -p, --pid-file=FILE      write the daemon's pid to FILE once live\n"
"  -f, --format=FMT         image format, one of those served below\n"
"                           (default: probe)\n"
"  -r, --read-only          refuse writes; never change the image\n"
"      --allow-other=WHEN   let other users open the view: auto (default),\n"
"                           on or off\n"
"  -m, --mountpoint=FILE    show the view on FILE (an existing regular file)\n"
"                           instead of on the image; one image only\n"
"  -n, --probe              print what would be exported, then exit\n"
"      --snapshot=NAME|ID   export a qcow2 internal snapshot (read-only)\n"
"      --disk=N             export disk N of an OVA appliance (default 1;\n"
"                           --probe lists them)\n"
"      --partition=N        show partition N of the disk instead of the whole\n"
"                           disk (Linux numbering: MBR 1-4, logical from 5;\n"
"                           GPT entries 1-128)\n"
"  -P, --partitions=DIR     mount a directory on DIR (an existing empty\n"
"                           directory) instead: the file 'disk' is the whole\n"
"                           disk, p1, p2, ... its partitions, which follow\n"
"                           the table when it is changed (through 'disk');\n"
"                           one image only (with -n: DIR is checked, nothing\n"
"                           is mounted)\n"
"      --cache-size=BYTES   qcow2 metadata cache budget per qcow2 layer\n"
"                           (K, M, G)\n"
"      --decompressed-cache=BYTES\n"
"                           memory for decompressed qcow2 clusters per layer\n"
"      --allow-block-device-backing\n"
"                           accept block devices as backing files\n"
"      --no-splice          copy read data through the daemon instead of\n"
"                           splicing it from the image file\n"
"      --stop=PIDFILE       stop the daemon whose pid file that is: signal\n"
"                           it, wait until it has reverted and exited; exit\n"
"                           status 0 only if it reverted cleanly\n"
"      --stop-timeout=SECONDS\n"
"                           how long --stop waits (default 60; 0: no limit)\n"
"  -q, --quiet              print nothing but errors\n"
"  -v, --verbose            print what is found and done\n"
"  -h, --help               show this help and exit\n"
"  -V, --version            show the version and exit\n"
"\n");
  print_help_formats();
  printf(
"Send SIGINT (^C), SIGTERM or SIGHUP (or use --stop) to flush, unmount\n"
"and exit.\n"
"Exit status: 0 success, 1 failure, 2 usage error, 3 image refused,\n"
"4 path already exported or a dead mount on it.  See fuse-disk-export(1).\n"
"\n"
"Report bugs at <" PACKAGE_BUGREPORT ">.\n");
}

static int
usage_error(const char *msg, const char *arg)
{
  if (msg != NULL)
    fprintf(stderr, "fuse-disk-export: %s%s%s\n", msg, arg ? ": " : "",
            arg ? arg : "");
  fprintf(stderr, "Try 'fuse-disk-export --help' for more information.\n");
  return -1;
}

static void
print_long_options(void)
{
  for (const struct option *o = long_options; o->name != NULL; o++)
    if (o->val != SHORT_OPTIONS_OPTION && o->val != LONG_OPTIONS_OPTION
        && o->val != LIST_FORMATS_OPTION)
      printf("--%s\n", o->name);
}

static void
print_short_options(void)
{
  for (const char *p = short_options; *p != '\0'; p++)
    if (*p != ':')
      printf("-%c\n", *p);
}

/* Apply one option; -1 on a usage error, 1 to exit 0 at once. */
static int
apply_option(int c, struct options *o)
{
  switch (c) {
  case 'd': o->daemonize = true; break;
  case 'p': o->pid_file = optarg; break;
  case 'f': {
    const struct fde_format_info *row = fde_format_info_by_name(optarg);
    char names[256], msg[384];
    if (row == NULL || row->backend == NULL) {
      snprintf(msg, sizeof msg, "%s: %.64s (formats served: %s)",
               row == NULL ? "unknown format"
               : "a format recognised but not served", optarg,
               fde_format_served_names(names, sizeof names));
      return usage_error(msg, NULL);
    }
    o->format = optarg;
    break;
  }
  case 'r': o->read_only = true; break;
  case ALLOW_OTHER_OPTION:
    if (strcmp(optarg, "auto") == 0) o->allow_other = ALLOW_OTHER_AUTO;
    else if (strcmp(optarg, "on") == 0) o->allow_other = ALLOW_OTHER_ON;
    else if (strcmp(optarg, "off") == 0) o->allow_other = ALLOW_OTHER_OFF;
    else return usage_error("--allow-other takes auto, on or off", optarg);
    break;
  case 'm': o->mountpoint = optarg; break;
  case 'P': o->partitions_dir = optarg; break;
  case 'n': o->probe_only = true; break;
  case SNAPSHOT_OPTION: o->snapshot = optarg; o->read_only = true; break;
  case CACHE_SIZE_OPTION:
    if (fde_parse_size(optarg, &o->cache_bytes) == -1)
      return usage_error("invalid --cache-size", optarg);
    break;
  case DECOMPRESSED_CACHE_OPTION:
    if (fde_parse_size(optarg, &o->zcache_bytes) == -1 || o->zcache_bytes == 0)
      return usage_error("invalid --decompressed-cache", optarg);
    break;
  case ALLOW_BDEV_OPTION: o->allow_bdev_backing = true; break;
  case NO_SPLICE_OPTION: o->no_splice = true; break;
  case STOP_OPTION: o->stop_pid_file = optarg; break;
  case PARTITION_OPTION:
    if (fde_parse_number(optarg, FDE_MAX_PARTITION, &o->partition) == -1
        || o->partition == 0)
      return usage_error("invalid --partition (a number from 1)", optarg);
    break;
  case DISK_OPTION:
    if (fde_parse_number(optarg, FDE_MAX_DISK, &o->disk) == -1 || o->disk == 0)
      return usage_error("invalid --disk (a number from 1)", optarg);
    break;
  case STOP_TIMEOUT_OPTION:
    if (fde_parse_number(optarg, MAX_STOP_TIMEOUT, &o->stop_timeout) == -1)
      return usage_error("invalid --stop-timeout (seconds)", optarg);
    break;
  case 'q': o->verbose = -1; break;
  case 'v': if (o->verbose >= 0) o->verbose++; break;
  case 'h': usage(); return 1;
  case 'V': printf("fuse-disk-export %s\n", PACKAGE_VERSION); return 1;
  case SHORT_OPTIONS_OPTION: print_short_options(); return 1;
  case LONG_OPTIONS_OPTION: print_long_options(); return 1;
  case LIST_FORMATS_OPTION:
    if (list_formats(optarg) == -1)
      return usage_error("--list-formats takes nothing or =man", optarg);
    return 1;
  default: return usage_error(NULL, NULL);
  }
  return 0;
}

/* Fill opts from argv.  Returns 0 to go on, 1 to exit 0 (--help), -1 on a
 * usage error (already reported). */
int
parse_options(int argc, char **argv, struct options *opts)
{
  int c, r;

  memset(opts, 0, sizeof *opts);
  opts->allow_other = ALLOW_OTHER_AUTO;
  opts->stop_timeout = DEFAULT_STOP_TIMEOUT;
  while ((c = getopt_long(argc, argv, short_options, long_options,
                          NULL)) != -1)
    if ((r = apply_option(c, opts)) != 0)
      return r;
  opts->images = argv + optind;
  opts->nr_images = argc - optind;
  if (opts->stop_pid_file != NULL)
    return opts->nr_images == 0 && !opts->daemonize && !opts->probe_only
      && opts->pid_file == NULL ? 0
      : usage_error("--stop takes no image, and no -d, -p or -n", NULL);
  if (opts->nr_images == 0)
    return usage_error("no image given", NULL);
  if (opts->mountpoint != NULL && opts->nr_images != 1)
    return usage_error("--mountpoint works with one image only", NULL);
  if (opts->partitions_dir != NULL) {
    if (opts->mountpoint != NULL)
      return usage_error("--partitions and --mountpoint do not go together: "
                         "the view goes on DIR", NULL);
    if (opts->partition != 0)
      return usage_error("--partitions and --partition do not go together: "
                         "DIR shows every partition", NULL);
    if (opts->nr_images != 1)
      return usage_error("--partitions works with one image only", NULL);
  }
  if (opts->probe_only && (opts->daemonize || opts->pid_file != NULL))
    return usage_error("--probe does not mount: drop -d and -p", NULL);
  return 0;
}
