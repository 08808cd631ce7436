# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (C) 2026 The fuse-disk-export authors
# Helpers shared by the suites of the formats other than qcow2 (vdi.bats,
# vpc.bats, mixed-chains.bats; the VMDK and VHDX suites may load them too):
# `load helpers` first, then `load format-helpers`.  They use $WORK,
# $PYTHON, $FDE and the bats-assert functions helpers.bash provides.

# put_random FILE OFF LEN: LEN random bytes at byte OFF of FILE.
put_random() {
  head -c "$3" /dev/urandom |
    dd of="$1" bs=64k seek="$2" oflag=seek_bytes conv=notrunc status=none
}

# seek_matches_map VIEW MAP.json: walking VIEW with SEEK_DATA/SEEK_HOLE
# gives the ranges `qemu-img map --output=json` marks data and not zero.
# Sets SEEK_RUNS (the number of data ranges).
seek_matches_map() {
  run "$PYTHON" - "$1" "$2" <<'PY'
import errno, json, os, sys
want = []
for e in json.load(open(sys.argv[2])):
    if e["data"] and not e["zero"]:
        s, end = e["start"], e["start"] + e["length"]
        if want and want[-1][1] == s:
            want[-1][1] = end
        else:
            want.append([s, end])
fd = os.open(sys.argv[1], os.O_RDONLY)
size, pos, got = os.fstat(fd).st_size, 0, []
while pos < size:
    try:
        d = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError as e:
        if e.errno != errno.ENXIO:
            raise
        break
    pos = os.lseek(fd, d, os.SEEK_HOLE)
    got.append([d, pos])
if got != want:
    sys.exit("SEEK_DATA/SEEK_HOLE give %s, qemu-img map %s" % (got, want))
print(len(got))
PY
  [ "$status" = 0 ] || fail "$output"
  SEEK_RUNS=$output
}

# expect_refused IMG REGEX [OPTION]...: IMG is refused at open, with -r -d
# -p and the OPTIONs: exit 3 and one line on stderr naming IMG and
# matching REGEX (ERE, case-insensitive); nothing mounted, no pid file,
# the image unchanged.  The same for --probe.
expect_refused() {
  local img=$1 re=$2 sum
  shift 2
  sum=$(sha "$img")
  run --separate-stderr "$FDE" -r -d -p "$WORK/refused.pid" "$@" "$img"
  [ "$status" = 3 ] ||
    fail "$img: exit status $status, want 3 (refused); stderr: $stderr; stdout: $output"
  [ "${#stderr_lines[@]}" = 1 ] ||
    fail "$img: want one line on stderr, got ${#stderr_lines[@]}: $stderr"
  [[ "$stderr" == *"$img"* ]] || fail "the message does not name $img: $stderr"
  grep -qiE -- "$re" <<<"$stderr" || fail "$img: the message does not match /$re/: $stderr"
  [ ! -e "$WORK/refused.pid" ] || fail "$img: a pid file was left behind"
  nothing_mounted
  run --separate-stderr "$FDE" -r --probe "$@" "$img"
  [ "$status" = 3 ] || fail "$img: --probe: exit status $status, want 3: $stderr"
  [ "${#stderr_lines[@]}" = 1 ] || fail "$img: --probe: want one line: $stderr"
  [ "$(sha "$img")" = "$sum" ] || fail "$img: the image changed"
}

# compare_view VIEW EXPECT [CLUSTER]: same size, same bytes, and random
# reads (aligned to CLUSTER bytes, default 1 MiB) agree.
compare_view() {
  [ "$(stat -c %s "$1")" = "$(stat -c %s "$2")" ] ||
    fail "$1: view size $(stat -c %s "$1"), expected $(stat -c %s "$2")"
  cmp "$1" "$2" || fail "$1: the view differs from $2"
  if [ -s "$2" ]; then
    run "$PYTHON" "$FDE_SRCDIR/tests/random-reads.py" --count 300 \
      --cluster "${3:-$((1 << 20))}" "$1" "$2"
    assert_success
  fi
}
