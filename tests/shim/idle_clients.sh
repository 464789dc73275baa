#!/bin/sh
# idle_clients.sh DYNCOORD CASE - creates the test's pool (idle_timeout 1 s)
# without the shim, then runs idle_clients.py CASE with it.
set -eu
dyncoord=$1
case=$2
saved=${LD_PRELOAD:-}
unset LD_PRELOAD
"$dyncoord" --init --force --idle-timeout 1 --realloc-interval 1 >/dev/null
trap '"$dyncoord" --destroy >/dev/null 2>&1 || true' EXIT
LD_PRELOAD=$saved /usr/bin/python3 "$(dirname "$0")/idle_clients.py" "$case"
if grep -E 'unexpected EOF|could not receive data|connection reset|ERROR:|FATAL:' "$DS_PG_LOG"; then
	echo "FAIL: error lines in the server log" >&2
	exit 1
fi
