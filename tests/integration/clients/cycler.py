"""Threads that each connect, run a short query, hold the connection a
while, close it, and start again, until told to stop.

usage: cycler.py THREADS HOLD_S
Prints "started"; the stdin line "quit" (or EOF) prints {"ok": N, "errors":
[up to 50 distinct messages], "n_errors": N} and exits at once (connects
still waiting for a slot are dropped with the process)."""
import json
import os
import sys
import threading
import time

import psycopg2

n, hold = int(sys.argv[1]), float(sys.argv[2])
stop = threading.Event()
lock = threading.Lock()
ok, errors, n_errors = [0], [], [0]


def worker():
    while not stop.is_set():
        try:
            conn = psycopg2.connect("application_name=cycler")
            try:
                conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute("SELECT 1")
                time.sleep(hold)
            finally:
                conn.close()
            with lock:
                ok[0] += 1
        except Exception as e:
            with lock:
                n_errors[0] += 1
                msg = f"{type(e).__name__}: {e}".strip()[:200]
                if msg not in errors and len(errors) < 50:
                    errors.append(msg)
            time.sleep(0.2)


for _ in range(n):
    threading.Thread(target=worker, daemon=True).start()
print("started", flush=True)
sys.stdin.readline()
stop.set()
with lock:
    print(json.dumps({"ok": ok[0], "errors": errors, "n_errors": n_errors[0]}), flush=True)
os._exit(0)
