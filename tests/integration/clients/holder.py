"""Opens N psycopg2 connections and holds them.

usage: holder.py N
Prints "ready PID..." (backend pids), then for each stdin line "query" runs
SELECT pg_backend_pid() on every connection and prints "pids PID...";
"sleep S" prints "sleeping" and runs SELECT pg_sleep(S) on the first one;
"exit" closes them and exits. With HOLDER_TX=1 in the environment each
connection keeps a transaction open (its slot cannot be handed over)."""
import os
import sys

import psycopg2

conns = [psycopg2.connect("") for _ in range(int(sys.argv[1]))]
for c in conns:
    c.autocommit = os.environ.get("HOLDER_TX") != "1"


def pids():
    out = []
    for c in conns:
        with c.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            out.append(str(cur.fetchone()[0]))
    return " ".join(out)


print("ready " + pids(), flush=True)
for line in sys.stdin:
    if line.strip() == "query":
        print("pids " + pids(), flush=True)
    elif line.startswith("sleep "):
        print("sleeping", flush=True)
        with conns[0].cursor() as cur:
            cur.execute("SELECT pg_sleep(%s)", (float(line.split()[1]),))
    elif line.strip() == "exit":
        break
for c in conns:
    c.close()
