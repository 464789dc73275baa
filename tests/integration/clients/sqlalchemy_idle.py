"""SQLAlchemy's QueuePool across an idle release: THREADS threads each check
a connection out and run a query (filling the pool), the program rests
REST_S seconds with its pool full of idle connections, then does it again.

usage: sqlalchemy_idle.py THREADS REST_S
Prints a line {"phase": "resting", "fds": [...]} before resting, then
{"ok": N, "errors": [...], "fds_before": [...], "fds_after": [...]}."""
import json
import os
import sys
import threading
import time

import sqlalchemy
from sqlalchemy import text

threads, rest_s = int(sys.argv[1]), float(sys.argv[2])
url = sqlalchemy.engine.URL.create(
    "postgresql+psycopg2", username=os.environ["PGUSER"], database=os.environ["PGDATABASE"],
    query={"host": os.environ["PGHOST"], "port": os.environ["PGPORT"]})
engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.QueuePool, pool_size=threads,
                                  max_overflow=0, pool_timeout=60)
lock = threading.Lock()
ok, errors = 0, []
barrier = threading.Barrier(threads)


def work(fds):
    global ok
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_sleep(0.05)"))
            fds.append(conn.connection.dbapi_connection.fileno())
            barrier.wait(timeout=30)  # every thread holds one: the pool fills
        with lock:
            ok += 1
    except Exception as e:  # noqa: BLE001 - reported to the test
        with lock:
            errors.append(str(e).strip()[:300])


def round_of_work():
    fds = []
    ts = [threading.Thread(target=work, args=(fds,)) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sorted(fds)


before = round_of_work()
print(json.dumps({"phase": "resting", "fds": before}), flush=True)
time.sleep(rest_s)
after = round_of_work()
engine.dispose()
print(json.dumps({"ok": ok, "errors": errors[:5], "fds_before": before, "fds_after": after}))
