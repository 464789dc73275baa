"""asyncio clients (psycopg 3) beside a ticker task that measures the event
loop's lag: every TICK_MS the ticker sleeps and records how late it woke.

usage: async_clients.py conn|pool TASKS ITERATIONS SLEEP_S [POOL_MAX]
  conn: each task opens psycopg.AsyncConnection ITERATIONS times, runs
        SELECT pg_sleep(SLEEP_S) and closes it;
  pool: one psycopg_pool.AsyncConnectionPool (min 0, max POOL_MAX); each
        task takes a connection ITERATIONS times.
Prints one JSON line: ok, errors, elapsed_s, lag_ms (p50, p99, max), ticks;
blocked_ms: the longest single callback the loop ran (asyncio's debug mode
times every callback; one that blocked the loop shows here whatever else
the machine was doing, while the ticker's lag also counts time the process
was not scheduled); connect_call_ms: the longest libpq connect call
(PQconnectStart, PQconnectPoll, PQsocket, PQstatus as psycopg calls them
while connecting); connect_slept_ms: the longest of those in which the
thread went to sleep (a voluntary context switch: a wait, where a call only
preempted by a loaded machine has involuntary ones); close_ms: the longest
close (PQfinish)."""
import asyncio
import json
import logging
import re
import resource
import sys
import time

import psycopg

TICK_MS = 5


async def ticker(stop, lags):
    period = TICK_MS / 1000
    while not stop.is_set():
        t = time.monotonic()
        await asyncio.sleep(period)
        lags.append((time.monotonic() - t - period) * 1000)


def pct(xs, q):
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 2) if xs else None


class SlowCallbacks(logging.Handler):
    """Collects the durations asyncio's debug mode reports for slow callbacks."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.ms = []
        self.worst = ""

    def emit(self, record):
        msg = record.getMessage()
        m = re.search(r"took ([0-9.]+) seconds", msg)
        if m:
            ms = float(m.group(1)) * 1000
            if not self.ms or ms > max(self.ms):
                self.worst = msg[:300]
            self.ms.append(ms)


class CallTimes:
    """Times psycopg's calls of libpq while connecting, and its closes."""

    def __init__(self):
        self.connect_ms = 0.0
        self.connect_slept_ms = 0.0
        self.close_ms = 0.0

    def timed(self, orig, close=False):
        def call(*a, **kw):
            r0 = resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw
            t = time.monotonic()
            try:
                return orig(*a, **kw)
            finally:
                ms = (time.monotonic() - t) * 1000
                slept = resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw > r0
                if close:
                    self.close_ms = max(self.close_ms, ms)
                else:
                    self.connect_ms = max(self.connect_ms, ms)
                    if slept:
                        self.connect_slept_ms = max(self.connect_slept_ms, ms)
        return call

    def install(self):
        pg = psycopg.pq.PGconn
        if psycopg.pq.__impl__ != "python":
            return  # the C implementation's methods cannot be wrapped
        pg.connect_start = staticmethod(self.timed(pg.connect_start))
        pg.connect_poll = self.timed(pg.connect_poll)
        pg.finish = self.timed(pg.finish, close=True)
        for prop in ("socket", "status"):
            setattr(pg, prop, property(self.timed(getattr(pg, prop).fget)))


calls = CallTimes()
calls.install()
slow = SlowCallbacks()
logging.getLogger("asyncio").addHandler(slow)
logging.getLogger("asyncio").propagate = False


async def main():
    asyncio.get_running_loop().slow_callback_duration = 0.01
    mode, tasks, iterations, sleep_s = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \
        float(sys.argv[4])
    pool_max = int(sys.argv[5]) if len(sys.argv) > 5 else tasks
    res = {"ok": 0, "errors": []}
    stop, lags = asyncio.Event(), []
    tick = asyncio.create_task(ticker(stop, lags))
    await asyncio.sleep(0.05)
    t0 = time.monotonic()

    async def one(get_conn):
        for _ in range(iterations):
            try:
                async with get_conn() as conn:
                    cur = await conn.execute("SELECT pg_sleep(%s)", (sleep_s,))
                    await cur.fetchone()
                res["ok"] += 1
            except Exception as e:  # reported, not raised: the count tells
                res["errors"].append(f"{type(e).__name__}: {str(e).strip()}")

    if mode == "conn":
        class Opened:
            async def __aenter__(self):
                self.c = await psycopg.AsyncConnection.connect("")
                return self.c

            async def __aexit__(self, *a):
                await self.c.close()
        await asyncio.gather(*(one(Opened) for _ in range(tasks)))
    else:
        from psycopg_pool import AsyncConnectionPool
        pool = AsyncConnectionPool("", min_size=0, max_size=pool_max, open=False, timeout=120)
        await pool.open()
        await asyncio.gather(*(one(pool.connection) for _ in range(tasks)))
        await pool.close()
    elapsed = time.monotonic() - t0
    stop.set()
    await tick
    res["errors"] = res["errors"][:5]
    res.update(elapsed_s=round(elapsed, 3), ticks=len(lags),
               lag_ms={"p50": pct(lags, 0.5), "p99": pct(lags, 0.99),
                       "max": round(max(lags), 2) if lags else None},
               blocked_ms=round(max(slow.ms), 2) if slow.ms else 0.0, blocked_by=slow.worst,
               connect_call_ms=round(calls.connect_ms, 2),
               connect_slept_ms=round(calls.connect_slept_ms, 2), close_ms=round(calls.close_ms, 2),
               impl=psycopg.pq.__impl__)
    print(json.dumps(res))


asyncio.run(main(), debug=True)
