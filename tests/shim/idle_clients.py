"""idle_clients.py - psycopg2 and psycopg 3 (asyncio) connections keep
working across idle releases: same fd, no exception, backends gone from
the server while released. Run by ctest under with-pg.sh with the shim
preloaded and a pool whose idle_timeout is 1 s (created here through
dyncoord, path in DYNCOORD)."""
import asyncio
import os
import subprocess
import sys
import time

import psycopg
import psycopg2


def count(app):
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    out = subprocess.run(
        ["psql", "-XAtqc",
         "SELECT count(*) FROM pg_stat_activity WHERE application_name = '%s'" % app],
        env=env, check=True, capture_output=True, text=True).stdout
    return int(out)


def wait_count(app, want, limit=3.5):
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if count(app) == want:
            return time.monotonic() - t0
        time.sleep(0.05)
    raise AssertionError("%s: %d backends, want %d" % (app, count(app), want))


def psycopg2_case():
    conns = [psycopg2.connect(application_name="dspy2") for _ in range(3)]
    fds = [c.fileno() for c in conns]
    for c in conns:
        with c.cursor() as cur:
            cur.execute("SELECT 1")
        c.commit()
    wait_count("dspy2", 0)
    for round_ in range(2):
        for c, fd in zip(conns, fds):
            with c.cursor() as cur:
                cur.execute("SELECT %s", (41 + round_,))
                assert cur.fetchone()[0] == 41 + round_
            c.commit()
            assert c.fileno() == fd, "fd %d became %d" % (fd, c.fileno())
        assert count("dspy2") == 3
        if round_ == 0:
            wait_count("dspy2", 0)
    for c in conns:
        c.close()


async def psycopg3_async_case():
    conns = [await psycopg.AsyncConnection.connect(application_name="dspy3", autocommit=True)
             for _ in range(3)]
    fds = [c.fileno() for c in conns]
    for c in conns:
        await c.execute("SELECT 1")
    await asyncio.to_thread(wait_count, "dspy3", 0)
    for c in conns:
        assert not c.closed and not c.broken
    for round_ in range(2):
        results = await asyncio.gather(*(c.execute("SELECT %s::int", (7 + round_,))
                                         for c in conns))
        for cur in results:
            assert (await cur.fetchone())[0] == 7 + round_
        for c, fd in zip(conns, fds):
            assert c.fileno() == fd, "fd %d became %d" % (fd, c.fileno())
        assert count("dspy3") == 3
        if round_ == 0:
            await asyncio.to_thread(wait_count, "dspy3", 0)
    for c in conns:
        await c.close()


def main():
    case = sys.argv[1]
    if case == "psycopg2":
        psycopg2_case()
    else:
        asyncio.run(psycopg3_async_case())
    print("ok", case)


if __name__ == "__main__":
    main()
