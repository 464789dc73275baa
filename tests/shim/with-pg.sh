#!/bin/sh
# with-pg.sh CMD... - runs CMD with PGHOST/PGPORT/PGUSER/PGDATABASE pointing at
# a throwaway PostgreSQL 15 server (unix socket only, in a temporary
# directory, run as an unprivileged user), then stops the server and removes
# the directory. If PGHOST is already set, CMD runs against that server.
# LD_PRELOAD is kept away from the server's own processes and restored for CMD.
set -eu

if [ -n "${PGHOST:-}" ]; then
	exec "$@"
fi

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
RUNAS=${DS_PG_USER:-nobody}
saved_preload=${LD_PRELOAD:-}
unset LD_PRELOAD

dir=$(mktemp -d /tmp/dynshim-pg.XXXXXX)
chmod 755 "$dir"
cleanup() {
	if [ -f "$dir/data/postmaster.pid" ]; then
		setpriv --reuid="$RUNAS" --regid="$(id -g "$RUNAS")" --clear-groups \
			"$PGBIN/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
	fi
	rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

as_user() {
	if [ "$(id -u)" = 0 ]; then
		setpriv --reuid="$RUNAS" --regid="$(id -g "$RUNAS")" --clear-groups "$@"
	else
		"$@"
	fi
}

[ "$(id -u)" = 0 ] && chown "$RUNAS" "$dir"
as_user "$PGBIN/initdb" -D "$dir/data" -U postgres -A trust --no-sync >"$dir/initdb.log" 2>&1 ||
	{ cat "$dir/initdb.log" >&2; exit 1; }

# Unix socket only: the port just names the socket file; pick one unused.
# DS_PG_SSL=1: TLS over TCP on 127.0.0.1 instead (a self-signed certificate).
port=$(( 20000 + $$ % 20000 ))
while [ -e "$dir/.s.PGSQL.$port" ]; do port=$((port + 1)); done
listen="''"
if [ "${DS_PG_SSL:-}" = 1 ]; then
	openssl req -new -x509 -days 2 -nodes -subj /CN=127.0.0.1 -out "$dir/data/server.crt" \
		-keyout "$dir/data/server.key" >/dev/null 2>&1
	chmod 600 "$dir/data/server.key"
	[ "$(id -u)" = 0 ] && chown "$RUNAS" "$dir/data/server.crt" "$dir/data/server.key"
	listen="'127.0.0.1' -c ssl=on"
fi
as_user "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
	-o "-c listen_addresses=$listen -c unix_socket_directories='$dir' -p $port -c max_connections=60 -c fsync=off" \
	start >/dev/null || { cat "$dir/server.log" >&2; exit 1; }

export PGHOST="$dir" PGPORT="$port" PGUSER=postgres PGDATABASE=postgres DS_PG_LOG="$dir/server.log"
if [ "${DS_PG_SSL:-}" = 1 ]; then
	export PGHOST=127.0.0.1 PGSSLMODE=require
fi
if [ -n "$saved_preload" ]; then
	export LD_PRELOAD="$saved_preload"
fi
set +e
"$@"
rc=$?
set -e
exit $rc
