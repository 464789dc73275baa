"""Idle release and live reallocation with real psycopg2 processes (the
replaced system's scenario): three scrapers share a pool of 20 with limits
10/15; short timings (idle_timeout 2 s, realloc_interval 1 s)."""
import subprocess
import time

from harness import (Case, _binary, check, collect, count_backends, log, main, read_line,
                     scraper_stats)


def until(what, cond, limit):
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        v = cond()
        if v:
            return time.monotonic() - t0
        time.sleep(0.1)
    check(False, f"{what} not reached within {limit} s")


def held(c, name):
    return scraper_stats(c.stats(), name)["held"]


def say(p, cmd, name):
    p.stdin.write(cmd + "\n")
    p.stdin.flush()
    check(read_line(p, 30, name) == "done " + cmd, f"{name} did not acknowledge {cmd}")


def idle_scraper_gives_back_and_busy_one_gets_more():
    with Case("idle_abc", pool_size=20, soft_limit=10, max_limit=15, wait_timeout=30,
              idle_timeout=2) as c:
        r = subprocess.run([_binary("DYNSHIM_IT_DYNCOORD", "dyncoord"), "--segment", c.segment,
                            "--set", "realloc_interval=1"], capture_output=True, text=True)
        check(r.returncode == 0, f"dyncoord --set: {r.stderr}")
        c.start_sampler()
        a = c.spawn_python("burst_scraper.py", 15, 2.0, scraper="a", stdin=subprocess.PIPE)
        say(a, "work", "a")
        t = until("a holding 15", lambda: held(c, "a") == 15, 20)
        log(f"a alone reached 15 in {t:.2f} s")
        # b starts: a gives back its surplus as its connections fall idle
        b = c.spawn_python("burst_scraper.py", 10, 1.5, scraper="b", stdin=subprocess.PIPE)
        say(b, "work", "b")
        t = until("a at 10 and b at 10", lambda: held(c, "a") <= 10 and held(c, "b") == 10, 15)
        log(f"b reached 10 and a came down to 10 in {t:.2f} s")
        # a rests but stays alive: its connections are released, each by
        # the idle release (the pool counts them); how soon after
        # idle_timeout is a latency of the machine, logged, not a bound
        before = scraper_stats(c.stats(), "a")
        say(a, "rest", "a")
        t0 = time.monotonic()
        t = until("a holding 0", lambda: held(c, "a") == 0, 60)
        log(f"a resting: held 0 after {t:.2f} s (idle_timeout 2 s, realloc_interval 1 s)")
        st = c.stats()
        sa = scraper_stats(st, "a")
        released = sa["idle_releases"] + sa["surplus_releases"] - before["idle_releases"] \
            - before["surplus_releases"]
        check(sa["idle_releases"] > before["idle_releases"] and released >= before["held"],
              f"a held {before['held']} when it rested, but only {released} left through the "
              f"idle or surplus release: {sa}")
        check(scraper_stats(st, "b")["limit"] == 15,
              f"b's limit is {scraper_stats(st, 'b')['limit']} with a idle")
        check(scraper_stats(st, "a")["idle_releases"] > 0, "no idle release counted for a")
        until("a's backends gone", lambda: count_backends(c.admin_dsn(), c.db) <= 10, 30)
        log(f"a's backends gone after {time.monotonic() - t0:.2f} s")
        # a resumes: no error, slots again
        say(a, "work", "a")
        until("a holding slots again", lambda: held(c, "a") > 0, 10)
        time.sleep(2)
        for p in (a, b):
            p.stdin.write("quit\n")
            p.stdin.flush()
        ra = collect(a, "a")
        rb = collect(b, "b")
        log(f"a: {ra}; b: {rb}")
        check(not ra["errors"] and not rb["errors"], f"errors: a {ra['errors']} b {rb['errors']}")
        check(ra["fds_changed"] == 0, f"a's fds changed {ra['fds_changed']} times")
        st = c.stats()
        sa = scraper_stats(st, "a")
        check(sa["reconnects"] > 0, "a counted no reconnect")
        log(f"a: idle releases {sa['idle_releases']}, surplus releases "
            f"{sa['surplus_releases']}, reconnects {sa['reconnects']}")


def sqlalchemy_pool_keeps_working_across_an_idle_release():
    with Case("idle_sqla", pool_size=10, soft_limit=5, max_limit=8, idle_timeout=1.5) as c:
        r = subprocess.run([_binary("DYNSHIM_IT_DYNCOORD", "dyncoord"), "--segment", c.segment,
                            "--set", "realloc_interval=1"], capture_output=True, text=True)
        check(r.returncode == 0, f"dyncoord --set: {r.stderr}")
        c.start_sampler()
        p = c.spawn_python("sqlalchemy_idle.py", 5, 6, scraper="sqla")
        first = read_line(p, 60, "sqlalchemy client")
        check('"resting"' in first, f"unexpected first line {first!r}")
        check(held(c, "sqla") == 5, f"the pool of 5 holds {held(c, 'sqla')} slots")
        # resting with 5 idle connections in its QueuePool: they go back
        t = until("the resting pool's slots released", lambda: held(c, "sqla") == 0, 5)
        until("its backends gone", lambda: count_backends(c.admin_dsn(), c.db) == 0, 3)
        log(f"QueuePool's idle connections released after {t:.2f} s")
        res = collect(p, "sqlalchemy client")
        check(not res["errors"] and res["ok"] == 10,
              f"{res['ok']} of 10 checkouts worked: {res['errors']}")
        check(res["fds_before"] == res["fds_after"],
              f"fds changed across the release: {res['fds_before']} -> {res['fds_after']}")
        sa = scraper_stats(c.stats(), "sqla")
        check(sa["idle_releases"] == 5 and sa["reconnects"] == 5,
              f"idle releases {sa['idle_releases']}, reconnects {sa['reconnects']} (want 5, 5)")
        c.check_server_view()



def busy_pool_gives_surplus_to_two_newcomers():
    """A scraper whose client-side pool keeps all 15 of its connections busy
    (never unused for a second) still gives back its surplus when two more
    busy scrapers come, and the pool ends up shared evenly (7 / 7 / 6 of 20):
    the limits of three (soft_limit 10 each) add up to more than the pool,
    so the two that came first must not keep the third out; nobody times
    out."""
    with Case("busy_surplus", pool_size=20, soft_limit=10, max_limit=15, wait_timeout=30,
              idle_timeout=60) as c:
        c.start_sampler()
        a = c.spawn_python("busy_pool.py", 15, 16, 0.05, 0.01, scraper="a")

        def held():
            st = {s["name"]: s for s in c.stats().get("scrapers", [])}
            return {n: st[n]["held"] if n in st else 0 for n in ("a", "b", "c")}

        t = until("a holding 15", lambda: held()["a"] == 15, 20)
        log(f"a reached 15 in {t:.2f} s")
        bc = [c.spawn_python("busy_pool.py", 10, 10, 0.05, 0.01, scraper=n) for n in ("b", "c")]
        seen = []

        def even():
            h = held()
            seen.append(h)
            return sum(h.values()) == 20 and max(h.values()) - min(h.values()) <= 1

        try:
            t = until("the pool shared evenly by a, b and c", even, 8)
        finally:
            log(f"held every 0.5 s: {seen[::5]}")
        log(f"shared evenly {t:.2f} s after b and c came: {seen[-1]}")
        res = {n: collect(p, n, timeout=60) for n, p in zip(("b", "c"), bc)}
        res["a"] = collect(a, "a", timeout=60)
        for n, r in res.items():
            check(not r["errors"], f"scraper {n} had errors: {r['errors']}")
        for n in ("b", "c"):
            check(len(res[n]["first_s"]) >= 6 and res[n]["first_s"][5] < 6,
                  f"scraper {n}'s first queries took {res[n]['first_s'][:6]} s")
        c.check_server_view()

if __name__ == "__main__":
    main({f.__name__: f for f in (idle_scraper_gives_back_and_busy_one_gets_more,
                                  sqlalchemy_pool_keeps_working_across_an_idle_release,
                                  busy_pool_gives_surplus_to_two_newcomers)})
