"""A latency-sensitive reader: every PERIOD_S opens CONNS connections at once
(one thread each), runs a query on each (which leaves it in a transaction),
holds them HOLD_S, closes them.
Every fifth round it also tries EXTRA more connections beyond CONNS.

usage: viewer.py ROUNDS CONNS EXTRA HOLD_S PERIOD_S [--pause-after-first]
With --pause-after-first it prints "first round done" after the first
round and waits for a line on stdin before the next.
Prints {"ok": N, "errors": [...], "waits": [...], "extra_ok": N, "extra_refused": N}:
waits are the seconds each round took to have its CONNS connections."""
import json
import sys
import threading
import time

import psycopg2

rounds, conns, extra = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
hold_s, period_s = float(sys.argv[4]), float(sys.argv[5])
pause = sys.argv[6:7] == ["--pause-after-first"]
ok, errors, waits, extra_ok, extra_refused = 0, [], [], 0, 0
lock = threading.Lock()


def one(results, i):
    # query at once: psycopg2 then holds the connection in a transaction
    # until it closes, so the shim can never release it under the viewer
    try:
        c = psycopg2.connect("")
        with c.cursor() as cur:
            cur.execute("SELECT 1")
            cur.fetchone()
        results[i] = c
    except Exception as e:  # noqa: BLE001 - reported to the test
        results[i] = e


for r in range(rounds):
    t0 = time.monotonic()
    held = [None] * conns
    ts = [threading.Thread(target=one, args=(held, i)) for i in range(conns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    waits.append(time.monotonic() - t0)
    more = []
    if r % 5 == 4 and extra:
        more = [None] * extra
        ts = [threading.Thread(target=one, args=(more, i)) for i in range(extra)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    for c in held + more:
        if isinstance(c, Exception):
            if c in more and "dynshim:" in str(c):
                extra_refused += 1
            else:
                errors.append(str(c).strip())
            continue
        if c in more:
            extra_ok += 1
        else:
            ok += 1
    time.sleep(hold_s)
    for c in held + more:
        if not isinstance(c, Exception):
            c.close()
    time.sleep(period_s)
    if r == 0 and pause:
        print("first round done", flush=True)
        sys.stdin.readline()
print(json.dumps({"ok": ok, "errors": errors[:5], "waits": waits, "extra_ok": extra_ok,
                  "extra_refused": extra_refused}))
