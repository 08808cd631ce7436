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
