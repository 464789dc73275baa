"""A client-side pool that keeps every connection busy, with psycopg2: each
thread opens one connection and runs queries back to back (a short sleep
between them) until the time is up, and never closes it early.

usage: busy_pool.py THREADS SECONDS QUERY_S GAP_S
Prints {"ok": N, "errors": [...], "first_s": [seconds until each thread's
first query was done, in order]}."""
import json
import sys
import threading
import time

import psycopg2

threads, seconds, query_s, gap_s = (int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]),
                                    float(sys.argv[4]))
lock = threading.Lock()
ok, errors, first = 0, [], []
t0 = time.monotonic()


def work():
    global ok
    try:
        conn = psycopg2.connect("")
        conn.autocommit = True
        done_first = False
        while time.monotonic() - t0 < seconds:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_sleep(%s)", (query_s,))
            with lock:
                ok += 1
                if not done_first:
                    first.append(time.monotonic() - t0)
                    done_first = True
            time.sleep(gap_s)
        conn.close()
    except Exception as e:
        with lock:
            errors.append(str(e).strip())


ts = [threading.Thread(target=work) for _ in range(threads)]
for t in ts:
    t.start()
for t in ts:
    t.join()
print(json.dumps({"ok": ok, "errors": errors[:5], "first_s": sorted(first)}))
