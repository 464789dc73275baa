"""psycopg 3 clients: threads with the sync API, or tasks with asyncio.

usage: psycopg3_clients.py threads|asyncio CONCURRENCY ITERATIONS SLEEP_S
Prints {"ok": N, "errors": [...], "impl": psycopg.pq.__impl__}."""
import asyncio
import json
import sys
import threading

import psycopg

mode, conc, iterations, sleep_s = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
ok, errors = 0, []


def sync_work(lock):
    global ok
    for _ in range(iterations):
        try:
            with psycopg.connect("") as conn:
                conn.execute("SELECT pg_sleep(%s)", (sleep_s,)).fetchone()
            with lock:
                ok += 1
        except Exception as e:
            with lock:
                errors.append(str(e).strip())


async def async_work():
    global ok
    for _ in range(iterations):
        try:
            async with await psycopg.AsyncConnection.connect("") as conn:
                cur = await conn.execute("SELECT pg_sleep(%s)", (sleep_s,))
                await cur.fetchone()
            ok += 1
        except Exception as e:
            errors.append(str(e).strip())


if mode == "threads":
    lock = threading.Lock()
    ts = [threading.Thread(target=sync_work, args=(lock,)) for _ in range(conc)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
else:
    async def run_all():
        await asyncio.gather(*(async_work() for _ in range(conc)))
    asyncio.run(run_all())
print(json.dumps({"ok": ok, "errors": errors[:5], "impl": psycopg.pq.__impl__}))
