#!/bin/sh
# passthrough.sh PRELOAD - programs that never use libpq behave the same with
# the shim preloaded: same stdout, stderr and exit status, and no segment is
# created (the shim does nothing until a libpq connection entry point runs).
set -u
preload=$1
seg=/dynshim-t-passthrough-$$
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0

compare() {
	env -u LD_PRELOAD "$@" >"$tmp/out0" 2>"$tmp/err0"
	rc0=$?
	env LD_PRELOAD="$preload" DYNSHIM_SEGMENT="$seg" "$@" >"$tmp/out1" 2>"$tmp/err1"
	rc1=$?
	if [ "$rc0" != "$rc1" ] || ! cmp -s "$tmp/out0" "$tmp/out1" || ! cmp -s "$tmp/err0" "$tmp/err1"; then
		echo "FAIL: $* differs under the shim (status $rc0 vs $rc1)" >&2
		diff "$tmp/out0" "$tmp/out1" >&2
		diff "$tmp/err0" "$tmp/err1" >&2
		fail=1
	else
		echo "ok: $* (status $rc0)"
	fi
}

compare sh -c 'echo hello; echo to-stderr >&2; exit 3'
compare ls -l /usr/lib/postgresql/15/bin
compare ls /nonexistent-dir
compare sh -c 'ls / | sort | head -3'
compare /usr/bin/python3 -c 'import ctypes, sys; libc = ctypes.CDLL(None); print(libc.strlen(b"abc")); sys.exit(4)'
compare /usr/bin/python3 -c 'import ctypes.util; print(ctypes.util.find_library("m") is not None)'

if [ -e "/dev/shm$seg" ]; then
	echo "FAIL: a program without libpq created segment $seg" >&2
	rm -f "/dev/shm$seg"
	fail=1
fi
exit $fail
