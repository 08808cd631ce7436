#!/usr/bin/env bats
# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
# The command line: help, version, usage errors, the option tables.

load helpers

setup() { common_setup; }
teardown() { common_teardown; }

# Is $1 one whole line of $output?
has_line() { grep -qxF -e "$1" <<<"$output"; }

LONG_OPTIONS="daemonize pid-file format read-only allow-other mountpoint probe
  snapshot cache-size decompressed-cache allow-block-device-backing no-splice
  quiet verbose help version"

@test "--help exits 0 and mentions every long option" {
  run "$FDE" --help
  assert_success
  assert_output --partial "Usage: fuse-disk-export"
  local o
  for o in $LONG_OPTIONS; do
    [[ "$output" == *"--$o"* ]] || fail "--help does not mention --$o"
  done
  # and every option the program itself knows about
  run "$FDE" --long-options
  assert_success
  local help
  help=$("$FDE" --help)
  for o in $output; do
    [[ "$help" == *"$o"* ]] || fail "--help does not mention $o"
  done
}

@test "-h is --help" {
  run "$FDE" -h
  assert_success
  assert_output "$("$FDE" --help)"
}

@test "--version prints the name and a version, exits 0" {
  run "$FDE" --version
  assert_success
  assert_output --regexp '^fuse-disk-export [0-9]+(\.[0-9]+)*'
  run "$FDE" -V
  assert_success
  assert_output --regexp '^fuse-disk-export [0-9]'
}

@test "an unknown option is a usage error (exit 2)" {
  truncate -s 1M img
  run "$FDE" --no-such-option img
  assert_failure 2
  assert_output --partial "--help"
  run "$FDE" -Z img
  assert_failure 2
  nothing_mounted
}

@test "no image is a usage error (exit 2)" {
  run "$FDE"
  assert_failure 2
  assert_output --partial "no image"
  run "$FDE" -r
  assert_failure 2
}

# The table of formats as the program lists it ("NAME STATUS TITLE"
# lines), into FORMATS; fails the test if it cannot be listed.
load_formats() {
  FORMATS=$("$FDE" --list-formats 2>&1) || fail "--list-formats: $FORMATS"
  [[ "$FORMATS" == *"raw read-write"* ]] || fail "no raw in: $FORMATS"
}

# The names of the formats whose status matches the regex $1.
formats_with() {
  awk -v want="$1" '$2 ~ want { print $1 }' <<<"$FORMATS"
}

@test "--list-formats lists the table: raw and qcow2 served read-write, one line each" {
  run "$FDE" --list-formats
  assert_success
  has_line "raw read-write raw"
  has_line "qcow2 read-write qcow2"
  ! grep -qvE '^[a-z0-9]+ (read-write|read-only|refused) .+$' <<<"$output" ||
    fail "a line is not NAME STATUS TITLE: $output"
  [ "$(cut -d' ' -f1 <<<"$output" | sort | uniq -d)" = "" ] || fail "a name twice"
  load_formats
  [ -n "$(formats_with refused)" ] || fail "no refused format"
  run "$FDE" --list-formats=roff
  assert_failure 2
}

@test "--format takes every served format and no other name (exit 2, naming the served ones)" {
  truncate -s 1M img
  local served name s
  load_formats
  served=$(formats_with 'read-')
  for name in $served; do
    # not a usage error: the image is then opened as that format
    run "$FDE" --probe --format="$name" img
    [ "$status" != 2 ] || fail "-f $name is a usage error: $output"
  done
  for name in $(formats_with refused) no-such-format; do
    run "$FDE" -f "$name" img
    assert_failure 2
    assert_output --partial "$name"
    for s in $served; do
      assert_output --partial "$s"
    done
  done
  run "$FDE" -f qed img
  assert_output --partial "recognised but not served"
  run "$FDE" --format=no-such-format img
  assert_output --partial "unknown format"
  nothing_mounted
}

@test "--help lists every served format with its description and names every refused one" {
  load_formats
  run "$FDE" --help
  assert_success
  local name
  for name in $(formats_with 'read-'); do
    assert_line --regexp "^  $name +[^ ]"
  done
  for name in $(formats_with 'read-only'); do
    assert_line --regexp "^  $name +.*\(read-only\)$"
  done
  local refused
  refused=$(sed -n '/^Recognised and refused/,/^$/p' <<<"$output")
  for name in $(formats_with refused); do
    [[ "$refused" =~ [\ ,]$name(,|$) ]] || fail "--help does not name refused format $name"
  done
  # and fits an 80-column terminal
  ! awk 'length > 79 { print; bad = 1 } END { exit !bad }' <<<"$output" ||
    fail "--help lines longer than 79 columns"
}

@test "the man page's FORMATS list is the table's (make man-formats updates it)" {
  local man="${FDE_SRCDIR:-$BATS_TEST_DIRNAME/..}/man/fuse-disk-export.1"
  grep -q '^\.\\" FORMATS BEGIN' "$man" || fail "no FORMATS BEGIN mark in $man"
  grep -q '^\.\\" FORMATS END' "$man" || fail "no FORMATS END mark in $man"
  sed -n '/^\.\\" FORMATS BEGIN/,/^\.\\" FORMATS END/p' "$man" |
    grep -v '^\.\\"' >man-list
  "$FDE" --list-formats=man >table-list || fail "--list-formats=man failed"
  diff -u table-list man-list ||
    fail "the man page's FORMATS list differs from the table: run make man-formats"
  # every format is in it, by name
  local name
  load_formats
  for name in $(formats_with .); do
    grep -qx "\.B $name" man-list || fail "$name is not in the man page"
  done
}

@test "a bad --allow-other value is a usage error (exit 2)" {
  truncate -s 1M img
  run "$FDE" --allow-other=maybe img
  assert_failure 2
  assert_output --partial "allow-other"
}

@test "bad --cache-size, --decompressed-cache and --stop-timeout values are usage errors (exit 2)" {
  truncate -s 1M img
  local bad
  # strtoull alone would take the space, the sign and the wrapped number
  for bad in --cache-size=lots --cache-size=-1 --decompressed-cache=0 \
    --decompressed-cache=4Q "--cache-size= 1M" --cache-size=+1M \
    --cache-size=18446744073709551616 --cache-size=17179869184G \
    "--stop-timeout= 5" --stop-timeout=+5 --stop-timeout=2000001 \
    --stop-timeout=18446744073709551617; do
    run "$FDE" "$bad" img
    assert_failure 2
    assert_output --partial "invalid ${bad%%=*}"
  done
  nothing_mounted
}

@test "-m with two images is a usage error (exit 2)" {
  truncate -s 1M a b target
  run "$FDE" -m target a b
  assert_failure 2
  assert_output --partial "one image"
  nothing_mounted
}

@test "--probe with -d or -p is a usage error (exit 2)" {
  truncate -s 1M img
  run "$FDE" --probe -d img
  assert_failure 2
  run "$FDE" --probe -p x.pid img
  assert_failure 2
  [ ! -e x.pid ] || fail "a pid file was written"
}

@test "--long-options lists every long option, one per line" {
  run "$FDE" --long-options
  assert_success
  local o
  for o in $LONG_OPTIONS; do
    has_line "--$o" || fail "--long-options does not list --$o"
  done
  # one option per line, each looking like an option
  refute_line --regexp '^[^-]|^-[^-]|[[:space:]]'
}

@test "--short-options lists every short option, one per line" {
  run "$FDE" --short-options
  assert_success
  local o
  for o in d p f r m n q v h V; do
    has_line "-$o" || fail "--short-options does not list -$o"
  done
  refute_line --regexp '^[^-]|^-.{2,}|:'
}

@test "every long option is documented in the man page" {
  local man="${FDE_SRCDIR:-$BATS_TEST_DIRNAME/..}/man/fuse-disk-export.1"
  [ -f "$man" ] || skip "man/fuse-disk-export.1 is not written yet"
  run "$FDE" --long-options
  assert_success
  # roff writes '-' as '\-'; undo that before searching
  local text o
  text=$(sed 's/\\-/-/g; s/\\f[BIRP]//g' "$man")
  for o in $output; do
    [[ "$text" == *"$o"* ]] || fail "$o is not in $man"
  done
  run "$FDE" --short-options
  for o in $output; do
    [[ "$text" == *"$o"* ]] || fail "$o is not in $man"
  done
}

@test "every source, build and test file carries the licence; COPYING is the GPL" {
  local top="${FDE_SRCDIR:-$BATS_TEST_DIRNAME/..}" f missing=()
  grep -q 'GNU GENERAL PUBLIC LICENSE' "$top/COPYING"
  while IFS= read -r f; do
    grep -q 'SPDX-License-Identifier: GPL-2.0-or-later' "$f" || missing+=("$f")
  done < <(find "$top/src" "$top/formats" "$top/plugin" "$top/tests" "$top/man" \
             "$top/configure.ac" "$top/Makefile.am" "$top/.ci/run" \
             -type f \( -name '*.[ch]' -o -name '*.bats' -o -name '*.bash' \
             -o -name '*.sh' -o -name '*.py' -o -name '*.1' -o -name run-bats \
             -o -name configure.ac -o -name Makefile.am -o -name run \
             -o -name '*.syms' \) \
             -not -path '*/fuzz/work/*')
  [ ${#missing[@]} -eq 0 ] || fail "no licence line in: ${missing[*]}"
  grep -q 'GPL-2.0-or-later' "$top/README"
}

@test "a mountpoint on procfs or sysfs is refused (exit 3), nothing mounted, no pid file" {
  requires qemu-img
  qemu-img create -q -f qcow2 a.qcow2 16M
  local m
  for m in /proc/self/mounts /proc/version /sys/kernel/mm/transparent_hugepage/enabled; do
    [ -f "$m" ] || continue
    run "$FDE" -d -p "$WORK/p.pid" -m "$m" a.qcow2 3>&-
    if is_mounted "$(readlink -f "$m")"; then  # a regression: clean up
      [ -s "$WORK/p.pid" ] && kill -INT "$(cat "$WORK/p.pid")"
      sleep 1
      umount -l "$(readlink -f "$m")" 2>/dev/null
      fail "a view was mounted on $m"
    fi
    assert_failure 3
    assert_output --partial "pseudo file system"
    [ "${#lines[@]}" = 1 ] || fail "not one line: $output"
    [ ! -e "$WORK/p.pid" ] || fail "a pid file was written for $m"
  done
}
