#!/bin/sh
# secure.sh SECURE_TEST - the shim ignores DYNSHIM_* in an AT_SECURE process.
# Needs root (a setgid copy of group nogroup, run by root, has AT_SECURE;
# setgid rather than setuid, so that the copy still reads a build tree no
# other user may enter); exits 77 (skipped) otherwise. The environment
# names a log file in a directory anyone may write, debug logging and a
# segment: the setgid copy must create neither and log nothing at debug
# level; the plain copy, with the same environment, must create both (so
# the test can fail).
set -eu
[ "$(id -u)" = 0 ] || { echo "SKIP: secure.sh needs root (a setgid copy run by root)" >&2; exit 77; }
exe=$1
dir=$(mktemp -d /tmp/dynshim-secure.XXXXXX)
chmod 755 "$dir"
mkdir "$dir/logs" && chmod 1777 "$dir/logs"
seg=/dynshim-t-secure-$$
default_existed=0
[ -e /dev/shm/dynshim ] && default_existed=1
cleanup() {
	rm -rf "$dir"
	rm -f "/dev/shm$seg"
	# the setgid copy uses the default segment: remove it if it made it
	if [ "$default_existed" = 0 ]; then rm -f /dev/shm/dynshim; fi
}
trap cleanup EXIT
cp "$exe" "$dir/plain"
cp "$exe" "$dir/setgid"
chgrp nogroup "$dir/setgid"
chmod 2755 "$dir/setgid"
unset LD_PRELOAD

run() {
	env DYNSHIM_LOG=debug DYNSHIM_LOG_FILE="$dir/logs/$1.log" DYNSHIM_SEGMENT="$seg" \
		DYNSHIM_ON_ERROR=closed DYNSHIM_SCRAPER=hostile "$dir/$1" >"$dir/$1.out" 2>"$dir/$1.err"
}

fail() {
	echo "FAIL: $*" >&2
	for f in "$dir"/*.out "$dir"/*.err; do echo "--- $f" >&2; cat "$f" >&2; done
	exit 1
}

run plain || fail "the plain copy failed"
grep -q 'AT_SECURE=0' "$dir/plain.out" || fail "the plain copy runs with AT_SECURE"
[ -s "$dir/logs/plain.log" ] || fail "control: DYNSHIM_LOG_FILE was not used without AT_SECURE"
grep -q 'debug' "$dir/logs/plain.log" || fail "control: no debug line in the log file"
[ -e "/dev/shm$seg" ] || fail "control: DYNSHIM_SEGMENT was not used without AT_SECURE"
rm -f "/dev/shm$seg"

run setgid || fail "the setgid copy failed"
grep -q 'AT_SECURE=1' "$dir/setgid.out" || fail "the setgid copy does not run with AT_SECURE"
[ ! -e "$dir/logs/setgid.log" ] || fail "DYNSHIM_LOG_FILE was opened with AT_SECURE"
[ ! -e "/dev/shm$seg" ] || fail "DYNSHIM_SEGMENT was used with AT_SECURE"
if grep -q 'debug:' "$dir/setgid.err"; then fail "DYNSHIM_LOG=debug was used with AT_SECURE"; fi
echo "AT_SECURE: DYNSHIM_LOG_FILE, DYNSHIM_LOG and DYNSHIM_SEGMENT ignored; honoured without it"
