"""Threads that each connect, run one query, and close, with psycopg2.

usage: psycopg2_threads.py THREADS ITERATIONS SLEEP_S
Prints {"ok": N, "errors": [...], "backends": distinct backend pids}."""
import json
import sys
import threading

import psycopg2

threads, iterations, sleep_s = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
lock = threading.Lock()
ok, errors, pids = 0, [], set()


def work():
    global ok
    for _ in range(iterations):
        try:
            conn = psycopg2.connect("")
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_backend_pid(), pg_sleep(%s)", (sleep_s,))
                    pid = cur.fetchone()[0]
            finally:
                conn.close()
            with lock:
                ok += 1
                pids.add(pid)
        except Exception as e:
            with lock:
                errors.append(str(e).strip())


ts = [threading.Thread(target=work) for _ in range(threads)]
for t in ts:
    t.start()
for t in ts:
    t.join()
print(json.dumps({"ok": ok, "errors": errors[:5], "backends": len(pids)}))
