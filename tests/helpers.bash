# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
# Shared set-up for the bats suites: load bats-support/bats-assert, make a
# scratch directory, and make sure every export a test starts is reverted
# even when the test fails.

bats_load_library() { load "/usr/lib/bats/$1/load.bash"; }
bats_load_library bats-support
bats_load_library bats-assert

: "${FDE:?FDE must name the fuse-disk-export binary}"

# Skip (not pass) when something the test needs is truly absent.
requires() {
  command -v "$1" >/dev/null 2>&1 || skip "$1 is not installed"
}

requires_root() {
  [ "$(id -u)" = 0 ] || skip "needs root"
}

common_setup() {
  [ -c /dev/fuse ] || skip "/dev/fuse is missing"
  WORK=$(mktemp -d "${BATS_TMPDIR:-/tmp}/fde-test.XXXXXX")
  cd "$WORK"
}

# Unmount anything still mounted below $WORK, kill leftover daemons, and
# remove $WORK.  Runs after every test, whether it passed or not.
common_teardown() {
  [ -n "${WORK:-}" ] || return 0
  cd /
  local pidf
  for pidf in "$WORK"/*.pid; do
    # CONT: a daemon a failed test left stopped must see the TERM
    [ -f "$pidf" ] && kill -TERM "$(cat "$pidf")" 2>/dev/null &&
      kill -CONT "$(cat "$pidf")" 2>/dev/null
  done
  local mnt
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    mnt=$(awk -v w="$WORK/" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo)
    [ -z "$mnt" ] && break
    sleep 0.2
  done
  # a view whose daemon is stopped or hung: end its connection first, or
  # umount, which looks at the path, would wait on it too
  [ -n "$mnt" ] && abort_own_fuse_connections
  for mnt in $(awk -v w="$WORK/" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo); do
    # as root, umount -f first: on FUSE it aborts the connection, which
    # frees processes stuck on a server that no longer answers
    [ "$(id -u)" = 0 ] && umount -f "$mnt" 2>/dev/null
    is_mounted "$mnt" || continue
    fusermount3 -u -z "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null
  done
  rm -rf "$WORK"
  if [ -n "${FUSECTL_MOUNTED_BY_TEST:-}" ]; then
    umount /sys/fs/fuse/connections 2>/dev/null || true
  fi
}

# needs_fusectl: the test wants the daemon to abort a view's connection
# through fusectl (/sys/fs/fuse/connections), which systemd mounts on
# most machines but nothing mounts on these: mount it for this test
# (root), and common_teardown takes it off again.
needs_fusectl() {
  mountpoint -q /sys/fs/fuse/connections && return 0
  [ "$(id -u)" = 0 ] || skip "fusectl is not mounted and only root can mount it"
  [ -d /sys/fs/fuse/connections ] ||
    skip "no /sys/fs/fuse/connections: the fuse module has no fusectl here"
  mount -t fusectl none /sys/fs/fuse/connections ||
    skip "fusectl is not mounted and cannot be"
  FUSECTL_MOUNTED_BY_TEST=1
}

# Is path a mount point right now?
is_mounted() {
  awk -v p="$1" '$5 == p { found = 1 } END { exit !found }' /proc/self/mountinfo
}

# Wait until the daemon whose pid file is $1 has exited (up to 10 s).
wait_gone() {
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 0
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  return 1
}

# ---------------------------------------------------------------------------
# Helpers shared by the suites below.  Every export a helper starts leaves a
# *.pid file directly in $WORK, so common_teardown stops it even when the
# test fails half-way.

# Poll (up to $2 tenths of a second, default 100) until path $1 is / is not
# a mount point.
wait_mounted() {
  local i
  for i in $(seq "${2:-100}"); do
    is_mounted "$1" && return 0
    sleep 0.1
  done
  echo "# $1 did not become a mount point" >&2
  return 1
}

wait_unmounted() {
  local i
  for i in $(seq "${2:-100}"); do
    is_mounted "$1" || return 0
    sleep 0.1
  done
  echo "# $1 is still mounted:" >&2
  grep -F " $1 " /proc/self/mountinfo >&2
  return 1
}

# Is process $1 running?  A zombie (exited, not yet reaped by whoever
# inherited the daemon) counts as gone.
alive() {
  local t state
  for t in /proc/"$1"/task/*/stat; do
    state=$(sed 's/.*) //' "$t" 2>/dev/null | cut -d' ' -f1)
    [ -n "$state" ] && [ "$state" != Z ] && return 0
  done
  return 1
}

# Describe the threads of process $1 that have not exited (state, wchan).
thread_states() {
  local t
  for t in /proc/"$1"/task/*; do
    printf '%s:%s:%s ' "${t##*/}" "$(sed 's/.*) //' "$t/stat" 2>/dev/null | cut -d' ' -f1)" \
      "$(cat "$t/wchan" 2>/dev/null)"
  done
}

# Wait (up to 10 s) for pid $1 to exit; usable for processes that are not
# our children (daemons).
wait_pid_gone() {
  local i
  for i in $(seq 200); do
    alive "$1" || return 0
    sleep 0.05
  done
  echo "# process $1 is still running" >&2
  return 1
}

# Nothing at all mounted below $WORK?
nothing_mounted() {
  local m
  m=$(awk -v w="$WORK/" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo)
  [ -z "$m" ] || { echo "# still mounted: $m" >&2; return 1; }
}

# start_export [OPTION]... IMAGE...: export as a daemon (-d) with a pid
# file $WORK/fde-N.pid; sets EXPORT_PID and EXPORT_PIDFILE.  Fails (with
# the program's output) if the daemon does not come up.
EXPORT_SEQ=0
start_export() {
  EXPORT_SEQ=$((EXPORT_SEQ + 1))
  EXPORT_PIDFILE="$WORK/fde-$EXPORT_SEQ.pid"
  local out rc=0
  out=$("$FDE" -d -p "$EXPORT_PIDFILE" "$@" 2>&1 3>&-) || rc=$?
  if [ "$rc" != 0 ]; then
    echo "# $FDE -d -p $EXPORT_PIDFILE $* failed with status $rc: $out" >&2
    return 1
  fi
  EXPORT_PID=$(cat "$EXPORT_PIDFILE") || {
    echo "# no pid file after -d returned" >&2
    return 1
  }
}

# stop_export [SIGNAL]: signal the daemon started by start_export and wait
# for it to exit (and for its pid file to go).
stop_export() {
  kill -"${1:-INT}" "$EXPORT_PID" || return 1
  wait_pid_gone "$EXPORT_PID" || return 1
  [ ! -e "$EXPORT_PIDFILE" ] || {
    echo "# pid file $EXPORT_PIDFILE left behind" >&2
    return 1
  }
}

# start_fg [OPTION]... IMAGE: run the program in the foreground, in the
# background of this shell; stdout/stderr go to $WORK/fg.out / fg.err.
# Sets FG_PID (a child: `wait $FG_PID` gives its exit status).  Waits for
# the last argument to become a mount point, then (unless -q is the first
# argument) for the live line: the mount is visible a moment before the
# program prints it.
start_fg() {
  local last="${!#}"
  "$FDE" "$@" >"$WORK/fg.out" 2>"$WORK/fg.err" 3>&- &
  FG_PID=$!
  echo "$FG_PID" >"$WORK/fg-$FG_PID.pid"
  local target i
  target=$(readlink -f "${FG_MOUNT:-$last}")
  wait_mounted "$target" || {
    echo "# stdout: $(cat "$WORK/fg.out")" >&2
    echo "# stderr: $(cat "$WORK/fg.err")" >&2
    return 1
  }
  [ "$1" != -q ] || return 0
  for i in $(seq 100); do
    ! grep -q 'press ^C to revert' "$WORK/fg.out" || return 0
    sleep 0.1
  done
  echo "# no live line; stdout: $(cat "$WORK/fg.out")" >&2
  return 1
}

# make_dos_image FILE SIZE_MIB: a raw disk with a dos partition table and
# two partitions (1 MiB..9 MiB, 9 MiB..end), both type 83.
make_dos_image() {
  truncate -s "${2}M" "$1"
  printf 'label: dos\nstart=2048, size=16384, type=83\nstart=18432, type=83\n' |
    sfdisk --quiet "$1" >/dev/null
}

# sha256 of a file.
sha() { sha256sum "$1" | cut -d' ' -f1; }

# ---------------------------------------------------------------------------
# Test users.  A suite that needs an unprivileged user calls
# create_test_user in setup_file and remove_test_user in teardown_file
# (bats runs teardown_file even when setup_file or a test fails).  The user
# is new and uniquely named, fde-test-<pid of the suite>, with a primary
# group of the same name and a supplementary group $TEST_GROUP
# (fde-test-<pid>-g); a system account, so it gets no home, mail spool,
# lastlog entry or subordinate ids.  Its comment field carries
# TEST_MARK with the creating process's pid and start time:
# remove_test_user deletes only an account whose comment is exactly the
# one it wrote (never an account this suite did not create), and
# tests/zz-hygiene.bats reports any marked account whose creator is gone.
TEST_MARK="fuse-disk-export test suite"

# "pid=N start=T" for process $1 (start: clock ticks after boot), which
# tells a live process from a later one that reuses its pid.
process_tag() {
  local start
  start=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f20) || return 1
  [ -n "$start" ] && echo "pid=$1 start=$start"
}

# Run an account tool, retrying while another one holds /etc/passwd's lock.
account_tool() {
  local i
  for i in 1 2 3 4 5 6 7 8 9 10; do
    "$@" 2>/dev/null && return 0
    sleep 0.3
  done
  "$@"
}

create_test_user() {
  requires_root
  local tool
  for tool in runuser useradd userdel groupadd groupdel getent; do
    requires "$tool"
  done
  export TEST_USER="fde-test-$$" TEST_GROUP="fde-test-$$-g"
  export TEST_USER_COMMENT="$TEST_MARK $(process_tag $$)"
  getent passwd "$TEST_USER" >/dev/null && skip "user $TEST_USER already exists"
  getent group "$TEST_USER" >/dev/null && skip "group $TEST_USER already exists"
  getent group "$TEST_GROUP" >/dev/null && skip "group $TEST_GROUP already exists"
  account_tool groupadd -r "$TEST_USER" || skip "cannot create group $TEST_USER"
  TEST_PRIMARY_GROUP_CREATED=1
  account_tool groupadd -r "$TEST_GROUP" || skip "cannot create group $TEST_GROUP"
  TEST_GROUP_CREATED=1
  account_tool useradd -r -M -N -l -g "$TEST_USER" -G "$TEST_GROUP" \
    -d /nonexistent -s /bin/sh -c "$TEST_USER_COMMENT" "$TEST_USER" ||
    skip "cannot create user $TEST_USER"
  TEST_USER_CREATED=1
}

# Remove what create_test_user created, and only that; fails (so that
# teardown_file reports it) if something could not be removed.
remove_test_user() {
  local ok=0 i
  if [ -n "${TEST_USER_CREATED:-}" ] &&
     [ "$(getent passwd "$TEST_USER" | cut -d: -f5)" = "$TEST_USER_COMMENT" ]; then
    # a daemon of the user's still exiting makes userdel refuse: retry
    for i in 1 2 3 4 5 6 7 8 9 10; do
      userdel "$TEST_USER" 2>/dev/null && break
      sleep 0.5
    done
    getent passwd "$TEST_USER" >/dev/null &&
      { echo "# cannot remove user $TEST_USER: $(userdel "$TEST_USER" 2>&1)" >&2; ok=1; }
  fi
  TEST_USER_CREATED=
  # userdel may have removed the primary group (same name) already
  if [ -n "${TEST_GROUP_CREATED:-}" ] && getent group "$TEST_GROUP" >/dev/null; then
    account_tool groupdel "$TEST_GROUP" || ok=1
  fi
  TEST_GROUP_CREATED=
  if [ -n "${TEST_PRIMARY_GROUP_CREATED:-}" ] && getent group "$TEST_USER" >/dev/null; then
    account_tool groupdel "$TEST_USER" || ok=1
  fi
  TEST_PRIMARY_GROUP_CREATED=
  return $ok
}

# For a test's setup: the suite's user must exist (create_test_user).
ensure_test_user() {
  [ -n "${TEST_USER:-}" ] && id "$TEST_USER" >/dev/null 2>&1 || {
    echo "# no test user: the suite must call create_test_user in setup_file" >&2
    return 1
  }
}

as_user() { runuser -u "$TEST_USER" -- "$@"; }

# Is process tag $1 ("pid=N start=T", from process_tag) a live process?
tag_alive() {
  local pid=${1#pid=}
  pid=${pid%% *}
  [ "$(process_tag "$pid" 2>/dev/null)" = "$1" ]
}

# Print what finished suites left behind: accounts made by
# create_test_user whose creating process is gone (and the fixed-name
# user "fdetest" that older versions of the suites created and never
# removed), and an /etc/fuse.conf still changed by set_user_allow_other.
leftovers_of_finished_suites() {
  local name comment tag pid
  while IFS=: read -r name _ _ _ comment _; do
    case "$comment" in "$TEST_MARK "*) ;; *) continue ;; esac
    tag=${comment#"$TEST_MARK "}
    tag_alive "$tag" || echo "user $name ($comment)"
  done < <(getent passwd)
  while IFS=: read -r name _; do
    [[ "$name" =~ ^fde-test-([0-9]+)(-g)?$ ]] || continue
    pid=${BASH_REMATCH[1]}
    getent passwd "fde-test-$pid" >/dev/null && continue  # reported above
    [ -d "/proc/$pid" ] || echo "group $name"
  done < <(getent group)
  getent passwd fdetest >/dev/null &&
    echo "user fdetest (left by an older version of the test suite; remove it with: userdel fdetest)"
  if [ -f "$FUSE_CONF" ] && grep -q "^# $TEST_MARK" "$FUSE_CONF"; then
    tag=$(sed -n "s/^# $TEST_MARK (\(pid=[0-9]* start=[0-9]*\)).*/\1/p" "$FUSE_CONF" | head -n1)
    tag_alive "$tag" || echo "$FUSE_CONF: still changed by a test ($(grep "^# $TEST_MARK" "$FUSE_CONF"))"
  fi
}

# ---------------------------------------------------------------------------
# /etc/fuse.conf.  A suite that changes it calls save_fuse_conf in
# setup_file, restore_fuse_conf in teardown (after every test) and
# check_fuse_conf_restored in teardown_file, and changes it only through
# set_user_allow_other, which also writes a marker line naming the suite's
# process, so that a copy left changed (the suite killed) is found by
# tests/zz-hygiene.bats.  The saved copy restores it byte for byte, or
# removes it if it did not exist.
FUSE_CONF=/etc/fuse.conf
save_fuse_conf() {
  export FUSE_CONF_SAVED="$BATS_FILE_TMPDIR/fuse.conf.saved"
  if [ -e "$FUSE_CONF" ]; then
    cp -p "$FUSE_CONF" "$FUSE_CONF_SAVED"
  else
    rm -f "$FUSE_CONF_SAVED"
    : >"$FUSE_CONF_SAVED.absent"
  fi
}

restore_fuse_conf() {
  [ -n "${FUSE_CONF_SAVED:-}" ] || return 0
  if [ -e "$FUSE_CONF_SAVED.absent" ]; then
    rm -f "$FUSE_CONF"
  elif ! cmp -s "$FUSE_CONF_SAVED" "$FUSE_CONF"; then
    cat "$FUSE_CONF_SAVED" >"$FUSE_CONF"
  fi
}

check_fuse_conf_restored() {
  [ -n "${FUSE_CONF_SAVED:-}" ] || return 0
  restore_fuse_conf
  if [ -e "$FUSE_CONF_SAVED.absent" ]; then
    [ ! -e "$FUSE_CONF" ] || { echo "# $FUSE_CONF was absent and is not removed" >&2; return 1; }
  else
    cmp "$FUSE_CONF_SAVED" "$FUSE_CONF" >&2 || { echo "# $FUSE_CONF is not restored" >&2; return 1; }
  fi
}

# user_allow_other on (1) or off (0) in /etc/fuse.conf.
set_user_allow_other() {
  [ -n "${FUSE_CONF_SAVED:-}" ] || { echo "# save_fuse_conf was not called in setup_file" >&2; return 1; }
  local rest
  rest=$(grep -v -e '^[[:space:]]*user_allow_other[[:space:]]*$' -e "^# $TEST_MARK" "$FUSE_CONF" 2>/dev/null || true)
  {
    printf '%s\n' "$rest"
    printf '# %s (%s) changed this file and restores it\n' "$TEST_MARK" "$(process_tag $$)"
    if [ "$1" = 1 ]; then printf 'user_allow_other\n'; fi
  } >"$FUSE_CONF"
}

# ---------------------------------------------------------------------------
# Abort the FUSE connection of every FUSE mount below $WORK (views whose
# daemon is dead, stopped or hung), as root; needs fusectl and python.
# Connection numbers are reused as soon as a connection ends, so none is
# ever remembered: each mount is pinned with an O_PATH descriptor (which
# sends FUSE nothing, and keeps the mount, its superblock and so its
# connection number alive while it is open); the descriptor's mount id
# (/proc/self/fdinfo) is looked up in /proc/self/mountinfo, and only if
# that mount is a FUSE mount on that very path below $WORK is the
# connection named by its device number aborted.
abort_own_fuse_connections() {
  [ -n "${WORK:-}" ] && [ "$(id -u)" = 0 ] && [ -d /sys/fs/fuse/connections ] || return 0
  command -v "$PYTHON" >/dev/null 2>&1 || return 0
  local ctl_mounted=
  if ! mountpoint -q /sys/fs/fuse/connections; then
    mount -t fusectl none /sys/fs/fuse/connections 2>/dev/null || return 0
    ctl_mounted=1
  fi
  "$PYTHON" - "$WORK" <<'PY'
import os, re, sys

def unescape(s):
    return re.sub(r'\\([0-7]{3})', lambda m: chr(int(m.group(1), 8)), s)

def mounts():
    table = {}
    with open('/proc/self/mountinfo') as f:
        for line in f:
            a = line.split()
            fstype = a[a.index('-') + 1]
            table[int(a[0])] = (a[2], unescape(a[4]), fstype)
    return table

def is_fuse(fstype):
    return fstype == 'fuse' or fstype.startswith('fuse.')

root = os.path.realpath(sys.argv[1]).rstrip('/') + '/'
paths = sorted({mp for _, mp, t in mounts().values()
                if mp.startswith(root) and is_fuse(t)}, reverse=True)
for path in paths:
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        continue
    try:
        with open('/proc/self/fdinfo/%d' % fd) as f:
            mnt_id = [int(l.split()[1]) for l in f if l.startswith('mnt_id:')]
        entry = mounts().get(mnt_id[0]) if mnt_id else None
        if entry is None or entry[1] != path or not is_fuse(entry[2]):
            continue
        major, minor = (int(x) for x in entry[0].split(':'))
        try:
            with open('/sys/fs/fuse/connections/%d/abort'
                      % ((major << 20) | minor), 'w') as f:
                f.write('1')
        except OSError:
            pass
    finally:
        os.close(fd)
PY
  [ -z "$ctl_mounted" ] || umount /sys/fs/fuse/connections 2>/dev/null
  return 0
}

# python3 for lseek/pwrite checks; prefer the system one (a pyenv shim
# costs a second per start).
if [ -x /usr/bin/python3 ]; then PYTHON=/usr/bin/python3; else PYTHON=python3; fi
requires_python() { requires "$PYTHON"; }

# Undo what a test stacked on its views: unmount the file systems mounted
# below $WORK (not the views themselves, nor the types named as arguments,
# e.g. tmpfs), then detach the loop devices backed by files below $WORK.
# Call it before common_teardown stops the exports.
undo_stacked_on_views() {
  [ -n "${WORK:-}" ] || return 0
  local m dev back keep="fuse.fuse-disk-export $*"
  # the type is the field after "-", which follows a variable number of
  # optional fields (none at all in a private mount namespace)
  for m in $(awk -v w="$WORK/" -v keep=" $keep " '
      { for (i = 7; i < NF && $i != "-"; i++) ; type = $(i + 1) }
      index($5, w) == 1 && index(keep, " " type " ") == 0 { print $5 }' /proc/self/mountinfo | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
  done
  command -v losetup >/dev/null 2>&1 || return 0
  while read -r dev back; do
    case "$back" in "$WORK"/*) losetup -d "$dev" 2>/dev/null ;; esac
  done < <(losetup -l -n -O NAME,BACK-FILE 2>/dev/null)
}
