"""A finish does not wait for its backend to exit: PQfinish returns at
libpq's speed while the slot stays counted (draining) until the server no
longer has the backend, then goes to a waiting connect at once. A process
killed with slots draining leaves them draining until their backends are
gone."""
import json
import os
import signal
import subprocess
import time

import psycopg2

from harness import Case, check, collect, log, main, read_line

SLEEP = 3  # seconds each finished connection's backend stays busy


def wait_until_waiting(c, waiter):
    end = time.monotonic() + 10
    while (st := c.stats())["waiting"] < 1:
        check(time.monotonic() < end and waiter.poll() is None,
              f"the waiter never waited for a slot (stats {st}, exit {waiter.poll()})")
        time.sleep(0.02)


def watch_backends(c, pids, what):
    """Polls the pool, then the server, until none of pids is a backend any
    more; fails if the pool ever counted fewer draining slots than the server
    still had backends. Returns the last time (epoch s) all of them were
    there: the start of the last query that saw them all."""
    conn = psycopg2.connect(c.admin_dsn())
    conn.autocommit = True
    all_there = None
    end = time.monotonic() + SLEEP + 15
    try:
        with conn.cursor() as cur:
            while True:
                st = c.stats()
                asked = time.time()
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)",
                            (list(pids),))
                left = cur.fetchone()[0]
                if left == len(pids):
                    all_there = asked
                if left == 0:
                    check(all_there is not None, f"{what}: the backends were gone already")
                    return all_there
                check(st["draining"] >= left and st["held"] >= left,
                      f"{what}: the pool counted {st['draining']} draining ({st['held']} held) "
                      f"while the server still had {left} of the finished backends")
                check(time.monotonic() < end, f"{what}: the backends outlived their queries")
                time.sleep(0.002)
    finally:
        conn.close()


def finish_returns_before_busy_backend_exits_and_waiter_gets_slot_once_gone():
    with Case("finish_busy", pool_size=1) as c:
        c.start_sampler()
        client = c.spawn_python("finish_busy.py", 1, SLEEP, scraper="finisher",
                                stdin=subprocess.PIPE)
        res = json.loads(read_line(client, 30, "finish_busy.py"))
        log(f"finish_busy.py: {res}")
        backend = res["pids"][0]
        check(c.admin(f"SELECT 1 FROM pg_stat_activity WHERE pid = {backend}"),
              "the finished connection's backend was already gone: this test proves nothing")
        check(res["close_s"] < 0.1,
              f"PQfinish took {res['close_s'] * 1000:.0f} ms: it waited for the busy backend")
        st = c.stats()
        check(st["held"] == 1 and st["draining"] == 1,
              f"the finished connection's slot is not draining: {st}")

        waiter = c.spawn_python("connect_once.py", env=c.env("waiter", DYNSHIM_WAIT_TIMEOUT=30))
        wait_until_waiting(c, waiter)
        last_seen = watch_backends(c, [backend], "one finished connection")
        res = collect(waiter, "connect_once.py (waiter)", timeout=60)
        log(f"waiter: {res}; backend {backend} gone, "
            f"waiter connected {(res['connected_at'] - last_seen) * 1000:.0f} ms after it was last "
            f"seen")
        check(res["ok"], f"the waiter failed: {res['error']}")
        check(res["connected_at"] >= last_seen,
              f"the waiter connected {last_seen - res['connected_at']:.3f} s before the finished "
              f"connection's backend was gone")
        check(res["connected_at"] - last_seen <= 1.0,
              f"the waiter connected {res['connected_at'] - last_seen:.2f} s after the backend "
              f"was last seen, not right after it was gone")
        client.stdin.write("exit\n")
        client.stdin.flush()
        client.wait(30)
        check(client.returncode == 0, f"finish_busy.py exited {client.returncode}")
        c.check_server_view()
        st = c.stats()
        check(st["held"] == 0 and st["draining"] == 0, f"slots left: {st}")


def killed_process_draining_slots_drain_until_backends_gone():
    with Case("finish_killed", pool_size=2) as c:
        c.start_sampler()
        client = c.spawn_python("finish_busy.py", 2, SLEEP, scraper="finisher",
                                stdin=subprocess.PIPE)
        res = json.loads(read_line(client, 30, "finish_busy.py"))
        log(f"finish_busy.py: {res}")
        os.kill(client.pid, signal.SIGKILL)
        client.wait()
        st = c.stats()
        left = c.admin(f"SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(ARRAY{res['pids']})")
        check(left[0][0] == 2, f"the finished backends were gone before the kill: {left}")
        check(st["held"] == 2 and st["draining"] == 2,
              f"the killed process's finished connections are not draining: {st}")

        waiter = c.spawn_python("connect_once.py", env=c.env("waiter", DYNSHIM_WAIT_TIMEOUT=30))
        wait_until_waiting(c, waiter)
        last_seen = watch_backends(c, res["pids"], "a killed process's finished connections")
        res = collect(waiter, "connect_once.py (waiter)", timeout=60)
        log(f"waiter: {res}; connected {(res['connected_at'] - last_seen) * 1000:.0f} ms after "
            f"the backends were last all seen")
        check(res["ok"], f"the waiter failed: {res['error']}")
        check(res["connected_at"] >= last_seen,
              f"the waiter connected {last_seen - res['connected_at']:.3f} s before a drained "
              f"backend was gone")
        check(res["connected_at"] - last_seen <= 1.0,
              f"the waiter connected {res['connected_at'] - last_seen:.2f} s after the backends "
              f"were last all seen, not right after they were gone")
        c.check_server_view()
        st = c.stats()
        check(st["held"] == 0 and st["draining"] == 0, f"slots left: {st}")


if __name__ == "__main__":
    main({f.__name__: f for f in (
        finish_returns_before_busy_backend_exits_and_waiter_gets_slot_once_gone,
        killed_process_draining_slots_drain_until_backends_gone)})
