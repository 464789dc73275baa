"""A scraper with worker threads, each with its own psycopg2 connection,
working in bursts (a short query, then a pause) while told to work.

usage: burst_scraper.py THREADS PAUSE_S
stdin lines: "work", "rest" (threads stop querying but keep their
connections), "quit" (prints {"ok": N, "errors": [...], "fds_changed": N}).
A thread connects when the scraper first works."""
import json
import random
import sys
import threading
import time

import psycopg2

n, pause = int(sys.argv[1]), float(sys.argv[2])
working = threading.Event()
stop = threading.Event()
lock = threading.Lock()
ok, errors, fds_changed = [0], [], [0]


def worker(i):
    conn = None
    fd = None
    while not stop.is_set():
        if not working.wait(0.1):
            continue
        try:
            if conn is None:
                conn = psycopg2.connect("application_name=burst")
                conn.autocommit = True
                fd = conn.fileno()
            with conn.cursor() as cur:
                cur.execute("SELECT %s", (i,))
                assert cur.fetchone()[0] == i
            with lock:
                ok[0] += 1
                if conn.fileno() != fd:
                    fds_changed[0] += 1
        except Exception as e:  # every error is a failure of the test
            with lock:
                errors.append(f"{type(e).__name__}: {e}".strip())
        time.sleep(pause * random.uniform(0.5, 1.5))
    if conn is not None:
        conn.close()


threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
for t in threads:
    t.start()
for line in sys.stdin:
    cmd = line.strip()
    if cmd == "work":
        working.set()
    elif cmd == "rest":
        working.clear()
    elif cmd == "quit":
        break
    print("done " + cmd, flush=True)
working.clear()
stop.set()
for t in threads:
    t.join()
print(json.dumps({"ok": ok[0], "errors": errors[:20], "fds_changed": fds_changed[0]}),
      flush=True)
