"""Opens N psycopg2 connections (asynchronous ones), starts SELECT pg_sleep(S)
on each without waiting for it, then closes them all: a backend busy with a
query reads the client's Terminate only when the query ends, so it lives on
for S seconds after the close.

usage: finish_busy.py N S
Prints {"pids": [backend pids], "close_s": the longest close, "closed_at":
epoch s after the last close}, then waits for "exit" on stdin (or a kill)."""
import json
import select
import sys
import time

import psycopg2
import psycopg2.extensions as ext


def wait(conn):
    while True:
        state = conn.poll()
        if state == ext.POLL_OK:
            return
        if state == ext.POLL_READ:
            select.select([conn.fileno()], [], [], 10)
        elif state == ext.POLL_WRITE:
            select.select([], [conn.fileno()], [], 10)


n, secs = int(sys.argv[1]), float(sys.argv[2])
conns, pids = [], []
for _ in range(n):
    conn = psycopg2.connect("", async_=1)
    wait(conn)
    cur = conn.cursor()
    cur.execute("SELECT pg_backend_pid()")
    wait(conn)
    pids.append(cur.fetchone()[0])
    conns.append(conn)
for conn in conns:
    conn.cursor().execute("SELECT pg_sleep(%s)", (secs,))
    conn.poll()  # the query is on its way
longest = 0.0
for conn in conns:
    t0 = time.monotonic()
    conn.close()
    longest = max(longest, time.monotonic() - t0)
print(json.dumps({"pids": pids, "close_s": longest, "closed_at": time.time()}), flush=True)
for line in sys.stdin:
    if line.strip() == "exit":
        break
