"""SQLAlchemy with psycopg2 and its QueuePool (pool_size 5, max_overflow 20):
threads that check a connection out, run one query and return it.

usage: sqlalchemy_pool.py THREADS ITERATIONS SLEEP_S
Prints {"ok": N, "errors": [...]}."""
import json
import os
import sys
import threading

import sqlalchemy
from sqlalchemy import text

threads, iterations, sleep_s = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
url = sqlalchemy.engine.URL.create(
    "postgresql+psycopg2", username=os.environ["PGUSER"], database=os.environ["PGDATABASE"],
    query={"host": os.environ["PGHOST"], "port": os.environ["PGPORT"]})
engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.QueuePool, pool_size=5,
                                  max_overflow=20, pool_timeout=60)
lock = threading.Lock()
ok, errors = 0, []


def work():
    global ok
    for _ in range(iterations):
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT pg_sleep(:s)"), {"s": sleep_s})
            with lock:
                ok += 1
        except Exception as e:
            with lock:
                errors.append(str(e).strip()[:300])


ts = [threading.Thread(target=work) for _ in range(threads)]
for t in ts:
    t.start()
for t in ts:
    t.join()
engine.dispose()
print(json.dumps({"ok": ok, "errors": errors[:5]}))
