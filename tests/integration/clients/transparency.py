"""Minimal psycopg2 programs whose behaviour must not change when the shim
releases an idle connection and reconnects it (or keeps it because it
cannot). The test drives each through stdin: the program does its first
part, prints "ready {json}", waits for "go" while the test watches the pool
and the server, then does its second part and prints its result as JSON.

usage: transparency.py SCENARIO"""
import json
import sys
import threading
import time

import psycopg2
import psycopg2.extensions
import psycopg2.errors


def connect(app="transp", autocommit=True):
    conn = psycopg2.connect(application_name=app)
    conn.autocommit = autocommit
    return conn


def one(conn, sql, args=None):
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()[0] if cur.description else None


def ready(**info):
    print("ready " + json.dumps(info), flush=True)
    line = sys.stdin.readline().strip()
    if line != "go":
        sys.exit(f"expected go, got {line!r}")


def custom_setting():
    conn = connect()
    one(conn, "SET app.tenant = '42'")
    other = connect("transp_tx", autocommit=False)
    # settings that end with their transaction: nothing to keep
    one(other, "SET LOCAL app.tenant = '7'")
    one(other, "SELECT set_config('app.user', 'bob', true)")
    other.commit()
    ready()
    return {"tenant": one(conn, "SELECT current_setting('app.tenant', true)"),
            "other_tenant": one(other, "SELECT current_setting('app.tenant', true)")}


def sequence():
    conn = connect()
    first = one(conn, "SELECT nextval('s')")
    plain = connect("transp_plain")  # noqa: F841 - released beside it
    one(plain, "SELECT 1")
    ready(first=first)
    return {"lastval": one(conn, "SELECT lastval()"), "currval": one(conn, "SELECT currval('s')"),
            "first": first}


def cancel():
    conn = connect()
    one(conn, "SELECT 1")
    ready()
    box = {}

    def run():
        t0 = time.monotonic()
        try:
            one(conn, "SELECT pg_sleep(5)")
            box["error"] = None
        except psycopg2.Error as e:
            box["error"] = type(e).__name__
        box["elapsed"] = time.monotonic() - t0

    t = threading.Thread(target=run)
    t.start()
    time.sleep(0.5)
    conn.cancel()
    t.join()
    return box


def backend_pid():
    conn = connect()
    pid = conn.get_backend_pid()
    plain = connect("transp_plain")  # noqa: F841 - released beside it
    one(plain, "SELECT 1")
    ready(pid=pid)
    out = {"pid": pid}
    try:
        one(conn, "SELECT 1")
        out["error"] = None
    except psycopg2.OperationalError as e:
        out["error"] = str(e).strip()
    out["closed"] = conn.closed
    return out


def dead_idle():
    conn = connect()
    one(conn, "SELECT 1")
    ready()
    out = {}
    try:
        one(conn, "SELECT 1")
        out["error"] = None
    except psycopg2.OperationalError as e:
        out["error"] = str(e).strip()
    out["closed"] = conn.closed
    return out


def server_calls():
    conn = connect(autocommit=False)
    one(conn, "SELECT 1")
    conn.commit()
    ready()
    out = {"password": psycopg2.extensions.encrypt_password("secret", "someone", conn)}
    ready()
    lo = conn.lobject(0, "wb")
    lo.write(b"dynshim")
    oid = lo.oid
    lo.close()
    conn.commit()
    out["lobject"] = conn.lobject(oid, "rb").read().decode()
    conn.commit()
    return out


def external_close():
    a, b = connect("transp_a"), connect("transp_b")
    one(a, "SELECT pg_terminate_backend(%s)", (b.get_backend_pid(),))
    out = {}
    try:
        one(b, "SELECT 1")
        out["error"] = None
    except psycopg2.OperationalError as e:
        out["error"] = str(e).strip()
    out["closed"] = b.closed
    # b is never closed: its slot must come back all the same
    t0 = time.monotonic()
    c = connect("transp_c")
    out["connect_s"] = time.monotonic() - t0
    out["c"] = one(c, "SELECT 2")
    ready()
    return out


def ordinary():
    import sqlalchemy
    from sqlalchemy import text
    conn = connect(autocommit=False)
    conn.set_client_encoding("LATIN1")
    one(conn, "CREATE TABLE t (id int PRIMARY KEY, x int)")
    one(conn, "INSERT INTO t VALUES (1, 0)")
    one(conn, "UPDATE t SET x = t.x + 1 WHERE t.id = 1")
    one(conn, "SELECT c.relname FROM pg_catalog.pg_class c WHERE c.relname = 't'")
    one(conn, "SET LOCAL app.tenant = '1'")
    one(conn, "SELECT set_config('app.tenant', '2', true)")
    conn.commit()
    engine = sqlalchemy.create_engine("postgresql+psycopg2://", pool_size=2, max_overflow=0)
    with engine.begin() as sa:
        sa.execute(text("SELECT t.x FROM t WHERE t.id = :i"), {"i": 1}).scalar()
    ready()
    out = {"x": one(conn, "SELECT x FROM t")}
    conn.commit()
    with engine.connect() as sa:
        out["sa"] = sa.execute(text("SELECT count(*) FROM t")).scalar()
    out["encoding"] = conn.encoding
    return out


if __name__ == "__main__":
    result = globals()[sys.argv[1]]()
    print(json.dumps(result), flush=True)
