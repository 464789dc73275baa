"""Event-loop programs under the shim: asyncio connects beyond the pool
wait for their slots through the loop (psycopg 3's AsyncConnection and
psycopg_pool's AsyncConnectionPool), and a connect whose wait times out
fails through the loop with the shim's message; ruby-pg's asynchronous
connect API the same way."""
import os
import shutil
import subprocess

from harness import Case, Skip, check, log, main, read_line, result_of, scraper_stats

CLIENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "clients")

# How long a libpq call made on the loop may sleep while connecting: a
# connect that waited for its slot inside the call would sleep for the wait
# (the queries here hold their slots 0.3 s or more). A call counts as having
# slept when the thread switched out voluntarily during it; a call that only
# took long because the machine was loaded (preempted: involuntary switches)
# is reported, not failed. The ticker's lag and asyncio's timing of every
# callback are reported too; they also count the close (PQfinish waits for
# the backend to exit before it gives the slot back) and time the process
# was not scheduled (a run without the shim shows tens of ms there too).
MAX_CALL_MS = 50


def check_loop(res, what):
    log(f"{what}: {res}")
    check(res["impl"] == "python", f"psycopg's {res['impl']} implementation cannot be timed")
    check(res["connect_slept_ms"] < MAX_CALL_MS,
          f"{what}: a connect call slept {res['connect_slept_ms']} ms on the loop")


def asyncio_connects_beyond_limit_never_stall_the_loop():
    # 16 tasks, 2 connections each holding a slot 0.5 s, on a pool of 4:
    # a connect waits about 1.5 s for its slot.
    with Case("async_conn", pool_size=4) as c:
        c.start_sampler()
        res = result_of(c.python("async_clients.py", "conn", 16, 2, 0.5, timeout=120),
                        "async_clients.py conn")
        check(res["ok"] == 32 and not res["errors"],
              f"{res['ok']} of 32 connections succeeded: {res['errors']}")
        check_loop(res, "AsyncConnection tasks")
        c.check_pool_filled("16 asyncio tasks")
        sc = scraper_stats(c.stats(), "async_conn")
        check(sc["connects"] == 32 and sc["timeouts"] == 0,
              f"the pool counted {sc['connects']} connects and {sc['timeouts']} timeouts")
        check(sc["waits"] >= 20 and sc["wait_ms_max"] >= 1000,
              f"connects did not wait for seconds: {sc['waits']} waits, "
              f"longest {sc['wait_ms_max']} ms")


def async_connection_pool_beyond_limit_never_stalls_the_loop():
    # psycopg_pool grows to 10 connections in its own tasks; the limit is 4.
    with Case("async_pool", pool_size=4) as c:
        c.start_sampler()
        res = result_of(c.python("async_clients.py", "pool", 20, 2, 0.2, 10, timeout=120),
                        "async_clients.py pool")
        check(res["ok"] == 40 and not res["errors"],
              f"{res['ok']} of 40 pool checkouts succeeded: {res['errors']}")
        check_loop(res, "AsyncConnectionPool")
        c.check_pool_filled("an AsyncConnectionPool of 10")
        sc = scraper_stats(c.stats(), "async_pool")
        check(sc["timeouts"] == 0 and sc["waiting"] == 0,
              f"{sc['timeouts']} timeouts, {sc['waiting']} still waiting")


def asyncio_connect_timeout_fails_through_the_loop():
    # The only slot is held (in an open transaction: an idle connection
    # would be handed over); an asyncio connect with DYNSHIM_WAIT_TIMEOUT=1
    # fails after about a second with the shim's sentence, and the loop
    # ran meanwhile.
    with Case("async_timeout", pool_size=1) as c:
        c.start_sampler()
        holder = c.spawn_python("holder.py", 1, stdin=subprocess.PIPE,
                                env=c.env("holder", HOLDER_TX="1"))
        ready = read_line(holder, 30, "holder.py")
        check(ready.startswith("ready "), f"holder.py said {ready!r}")
        env = c.env("async_timeout", DYNSHIM_WAIT_TIMEOUT="1")
        res = result_of(c.python("async_clients.py", "conn", 2, 1, 0, env=env, timeout=60),
                        "async_clients.py waiting on a held pool")
        check(res["ok"] == 0 and len(res["errors"]) == 2,
              f"connects to a held pool of 1: {res}")
        # psycopg keeps what follows the first colon of PQerrorMessage (its
        # severity, for the server's messages): the "dynshim:" prefix goes
        for e in res["errors"]:
            check('no connection slot for scraper "async_timeout" within 1 s' in e,
                  f"the error is not the shim's timeout: {e!r}")
        check(0.9 <= res["elapsed_s"] <= 4.0,
              f"the connects failed after {res['elapsed_s']} s, not after 1 s")
        check_loop(res, "timed-out AsyncConnection")
        sc = scraper_stats(c.stats(), "async_timeout")
        check(sc["timeouts"] == 2 and sc["waiting"] == 0 and sc["held"] == 0,
              f"timeouts {sc['timeouts']}, waiting {sc['waiting']}, held {sc['held']}")
        holder.stdin.write("exit\n")
        holder.stdin.flush()
        holder.wait(30)


def ruby_pg_async_connects_beyond_limit():
    # ruby-pg's connect_start/connect_poll for 8 connections at once on a
    # pool of 3, from one thread over IO.select; then 8 threads in PG.connect,
    # whose own loop wraps the descriptor in a socket object.
    if not shutil.which("ruby"):
        raise Skip("ruby is not installed (Debian ruby-pg)")
    with Case("async_ruby", pool_size=3) as c:
        c.start_sampler()
        res = result_of(c.run(["ruby", os.path.join(CLIENTS, "ruby_async.rb"), "8", "0.3"],
                              timeout=120), "ruby_async.rb")
        log(f"ruby-pg: {res}")
        check(res["ok"] == 8 and res["threads_ok"] == 8 and not res["errors"], f"ruby-pg: {res}")
        check(res["connect_slept_ms"] < MAX_CALL_MS,
              f"a ruby-pg connect call slept {res['connect_slept_ms']} ms: the loop was blocked")
        c.check_pool_filled("8 ruby-pg connects")


if __name__ == "__main__":
    main({f.__name__: f for f in (asyncio_connects_beyond_limit_never_stall_the_loop,
                                  async_connection_pool_beyond_limit_never_stalls_the_loop,
                                  asyncio_connect_timeout_fails_through_the_loop,
                                  ruby_pg_async_connects_beyond_limit)})
