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
    [ -f "$pidf" ] && kill -TERM "$(cat "$pidf")" 2>/dev/null
  done
  local mnt
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    mnt=$(awk -v w="$WORK/" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo)
    [ -z "$mnt" ] && break
    sleep 0.2
  done
  for mnt in $(awk -v w="$WORK/" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo); do
    # as root, umount -f first: on FUSE it aborts the connection, which
    # frees processes stuck on a server that no longer answers
    [ "$(id -u)" = 0 ] && umount -f "$mnt" 2>/dev/null
    is_mounted "$mnt" || continue
    fusermount3 -u -z "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null
  done
  rm -rf "$WORK"
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
# the last argument to become a mount point.
start_fg() {
  local last="${!#}"
  "$FDE" "$@" >"$WORK/fg.out" 2>"$WORK/fg.err" 3>&- &
  FG_PID=$!
  echo "$FG_PID" >"$WORK/fg-$FG_PID.pid"
  local target
  target=$(readlink -f "${FG_MOUNT:-$last}")
  wait_mounted "$target" || {
    echo "# stdout: $(cat "$WORK/fg.out")" >&2
    echo "# stderr: $(cat "$WORK/fg.err")" >&2
    return 1
  }
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

# The unprivileged user the users suite runs things as.
TEST_USER=fdetest
ensure_test_user() {
  requires runuser
  if ! id "$TEST_USER" >/dev/null 2>&1; then
    command -v useradd >/dev/null 2>&1 || skip "useradd is not installed"
    useradd -M -s /bin/sh "$TEST_USER" 2>/dev/null ||
      skip "cannot create user $TEST_USER"
  fi
}

as_user() { runuser -u "$TEST_USER" -- "$@"; }

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
  for m in $(awk -v w="$WORK/" -v keep=" $keep " 'index($5, w) == 1 && index(keep, " " $9 " ") == 0 { print $5 }' /proc/self/mountinfo | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
  done
  command -v losetup >/dev/null 2>&1 || return 0
  while read -r dev back; do
    case "$back" in "$WORK"/*) losetup -d "$dev" 2>/dev/null ;; esac
  done < <(losetup -l -n -O NAME,BACK-FILE 2>/dev/null)
}
