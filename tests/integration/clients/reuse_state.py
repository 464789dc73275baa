"""Connection reuse as a program sees it: for each kind of session state,
connect, leave that state, close, connect again with the same parameters,
and look. Uses psycopg2 or psycopg (3), as argv[1] says.

Prints {"kinds": {kind: {"reused": bool, "fresh": bool, "detail": str}}}."""
import json
import sys

DRIVER = sys.argv[1]
if DRIVER == "psycopg2":
    import psycopg2 as pg

    def connect(dsn=""):
        conn = pg.connect(dsn)
        conn.autocommit = True
        return conn
else:
    import psycopg as pg

    def connect(dsn=""):
        return pg.connect(dsn, autocommit=True)


def one(conn, sql):
    cur = conn.cursor()
    cur.execute(sql)
    row = cur.fetchone()
    cur.close()
    return row[0]


def run(conn, sql):
    cur = conn.cursor()
    cur.execute(sql)
    cur.close()


def encoding(conn):
    if DRIVER == "psycopg2":
        return conn.encoding
    return conn.pgconn.parameter_status(b"client_encoding").decode()


def set_encoding(conn):
    if DRIVER == "psycopg2":
        conn.set_client_encoding("LATIN1")
    else:
        run(conn, "SET client_encoding TO 'LATIN1'")


def open_transaction(conn):
    # the drivers' default: statements inside a transaction the program
    # never ends before close (the server rolls it back)
    conn.autocommit = False
    run(conn, "CREATE TABLE reuse_tx (x int)")


def none_left(sql, what):
    """A look: sql counts what must be gone from a fresh session."""
    def look(conn):
        n = one(conn, sql)
        return n == 0, f"{n} {what}"
    return look


def backend_pid(conn):
    return conn.get_backend_pid() if DRIVER == "psycopg2" else conn.info.backend_pid


# kind: (leave the state, look at a fresh session: (fresh, detail))
KINDS = {
    "set": (lambda c: run(c, "SET work_mem = '7MB'"),
            lambda c: (lambda v: (v == "4MB", f"work_mem {v}"))(one(c, "SHOW work_mem"))),
    "prepared": (lambda c: run(c, "PREPARE st AS SELECT 1"),
                 none_left("SELECT count(*) FROM pg_prepared_statements", "prepared")),
    "temp_table": (lambda c: run(c, "CREATE TEMP TABLE reuse_t (x int)"),
                   none_left("SELECT count(*) FROM pg_class WHERE relname = 'reuse_t'",
                             "temp tables")),
    "listen": (lambda c: run(c, "LISTEN reuse_chan"),
               none_left("SELECT count(*) FROM pg_listening_channels()", "channels")),
    "advisory_lock": (lambda c: one(c, "SELECT pg_advisory_lock(77)"),
                      none_left("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'",
                                "advisory locks")),
    "open_transaction": (open_transaction,
                         none_left("SELECT count(*) FROM pg_class WHERE relname = 'reuse_tx'",
                                   "tables from the open transaction")),
    "client_encoding": (set_encoding,
                        lambda c: (lambda e: (e in ("UTF8", "UNICODE"), f"encoding {e}"))(
                            encoding(c))),
}

out = {}
for kind, (leave, look) in KINDS.items():
    conn = connect()
    pid = backend_pid(conn)
    leave(conn)
    conn.close()
    extra = ""
    if kind == "advisory_lock":
        # another connection (other parameters) gets the lock at once: the
        # program's close gave it up although the backend stayed
        other = connect("application_name=reuse_other")
        got = one(other, "SELECT pg_try_advisory_lock(77)")
        other.close()
        extra = f", lock free after close: {got}"
    conn = connect()
    pid2 = backend_pid(conn)
    fresh, detail = look(conn)
    if kind == "advisory_lock":
        fresh = fresh and got
    conn.close()
    out[kind] = {"reused": pid == pid2, "fresh": bool(fresh), "detail": detail + extra}
print(json.dumps({"kinds": out}))
