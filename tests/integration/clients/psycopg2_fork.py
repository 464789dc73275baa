"""A parent that holds a psycopg2 connection while multiprocessing (fork)
children open, use and close their own.

usage: psycopg2_fork.py CHILDREN TASKS SLEEP_S
Prints {"parent_pid_before", "parent_pid_after", "child_ok", "child_errors",
"child_processes"}."""
import json
import multiprocessing as mp
import os
import sys

import psycopg2

children, tasks, sleep_s = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])


def task(_):
    try:
        conn = psycopg2.connect("")
        with conn.cursor() as cur:
            cur.execute("SELECT pg_sleep(%s), 1", (sleep_s,))
            cur.fetchone()
        conn.close()
        return (os.getpid(), None)
    except Exception as e:
        return (os.getpid(), str(e).strip())


parent = psycopg2.connect("")
# Its transaction stays open while the children work: an idle connection
# would be handed over to their waiting connects (and reconnected with a new
# backend), which is not what this program checks. A child's close of its
# inherited copy must not end this session.
parent.autocommit = False
cur = parent.cursor()
cur.execute("SELECT pg_backend_pid()")
before = cur.fetchone()[0]

with mp.get_context("fork").Pool(children) as pool:
    results = pool.map(task, range(tasks), chunksize=1)

cur.execute("SELECT pg_backend_pid()")
after = cur.fetchone()[0]
parent.commit()
print(json.dumps({
    "parent_pid_before": before,
    "parent_pid_after": after,
    "child_ok": sum(1 for _, e in results if e is None),
    "child_errors": [e for _, e in results if e][:5],
    "child_processes": len({p for p, _ in results}),
}))
parent.close()
