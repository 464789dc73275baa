"""A chaos client: psycopg2 or psycopg 3 under the shim, until CHAOS_END.

usage: pyclient.py psycopg2|psycopg3 [idler]
Opens a connection, runs a few statements (short ones, long pg_sleep of
several seconds marked /*long*/, idle pauses that an idle release may take
the connection in), closes it, again. Errors go to stderr, one line each;
a failed connect is retried after 100 ms."""
import os
import random
import sys
import time

kind = sys.argv[1]
idler = sys.argv[2:3] == ["idler"]
end = float(os.environ["CHAOS_END"])

if kind == "psycopg2":
    import psycopg2 as driver
else:
    import psycopg as driver


def statement(cur, sql):
    cur.execute(sql)
    cur.fetchall()


while time.time() < end:
    try:
        conn = driver.connect("")
        conn.autocommit = True
        for _ in range(random.randint(1, 6)):
            if time.time() >= end:
                break
            r = random.random()
            with conn.cursor() as cur:
                if idler or r < 0.2:
                    # idle: long enough for an idle release (idle_timeout 1 s)
                    time.sleep(random.uniform(0.5, 3.0))
                    statement(cur, "SELECT 1")
                elif r < 0.35:
                    statement(cur, f"SELECT /*long*/ pg_sleep({random.uniform(2, 5):.2f})")
                else:
                    statement(cur, f"SELECT pg_sleep({random.uniform(0, 0.1):.3f})")
        conn.close()
    except Exception as e:  # noqa: BLE001 - every error is reported, none stops the loop
        print(f"error: {type(e).__name__}: {str(e).strip()}", file=sys.stderr, flush=True)
        time.sleep(0.1)
