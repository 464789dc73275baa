"""A scraper in one of the client shapes of client_shapes.py: THREADS threads
run workflows for SECONDS s. A workflow: check a connection out (the shape
decides whether that connects), SELECT pg_backend_pid(), HOLD_S s holding the
connection outside a query, SELECT count(*) FROM pg_class, commit, give the
connection back; then THINK_S s of the thread's own work.

usage: shape_scraper.py SHAPE THREADS SECONDS HOLD_S THINK_S
Prints {"shape", "ok", "n_errors", "errors": [first 5], "per_thread": [ok
per thread], "longest_s": the longest workflow, waits included}."""
import json
import os
import sys
import threading
import time

import client_shapes

shape_name, threads = sys.argv[1], int(sys.argv[2])
seconds, hold_s, think_s = float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
lock = threading.Lock()
per_thread, errors, longest = [0] * threads, [], [0.0]


def error(e):
    with lock:
        errors.append(" ".join(str(e).split())[:400])


try:
    shape = client_shapes.make(shape_name, os.environ.get("DYNSHIM_SCRAPER", "shape"))
except Exception as e:  # ThreadedConnectionPool connects when created
    error(e)
    shape = None
start = threading.Barrier(threads)


def work(k):
    start.wait()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.monotonic()
        try:
            with shape.connection() as db:
                db.query("SELECT pg_backend_pid()")
                time.sleep(hold_s)
                db.query("SELECT count(*) FROM pg_class")
                db.commit()
            with lock:
                per_thread[k] += 1
                longest[0] = max(longest[0], time.monotonic() - t0)
        except Exception as e:
            error(e)
            time.sleep(0.2)
            continue
        time.sleep(think_s)


if shape is not None:
    ts = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    shape.close()
print(json.dumps({"shape": shape_name, "ok": sum(per_thread), "n_errors": len(errors),
                  "errors": errors[:5], "per_thread": per_thread,
                  "longest_s": round(longest[0], 3)}))
