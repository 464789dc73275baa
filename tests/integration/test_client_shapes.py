"""The client-side pool shapes of real scrapers, each wanting more connections
than its scraper's limit, against a real server: no connect may fail.

Pool 6, soft limit 3, max limit 4: two scrapers a and b, 8 threads each, in
one shape (clients/client_shapes.py). A workflow holds its connection 50 ms
between two queries, then the thread works 200 ms without one (longer than
the handover delay). Each scraper thus wants about 8 connections and gets 3:
its threads beyond those wait, inside connect or on their next use of a
released connection, while the connections their own scraper holds sit
unused between workflows. The wait_timeout of 4 s is shorter than the run, so
a thread left waiting behind its own scraper's unused connections fails.

Checked: zero errors in both scrapers; every thread finished workflows (none
starved); the server (pg_stat_activity) never showed more than 6 backends
and did reach 6; every slot back at the end."""
import time

from harness import Case, check, collect, log, main, scraper_stats

POOL, SOFT, MAX = 6, 3, 4
THREADS = 8
SECONDS = 6.0  # longer than WAIT_TIMEOUT: a connect left waiting fails within the run
WAIT_TIMEOUT = 4
HOLD_S, THINK_S = 0.05, 0.2
MIN_PER_THREAD = 3  # workflows every thread finishes at the least (about 10 unhindered)


def run_shape(shape):
    name = "shape_" + shape.replace("-", "_")
    with Case(name, pool_size=POOL, soft_limit=SOFT, max_limit=MAX,
              wait_timeout=WAIT_TIMEOUT) as c:
        c.start_sampler()
        t0 = time.monotonic()
        procs = {s: c.spawn_python("shape_scraper.py", shape, THREADS, SECONDS, HOLD_S, THINK_S,
                                   scraper=s) for s in ("a", "b")}
        res = {s: collect(p, f"scraper {s} ({shape})", timeout=60) for s, p in procs.items()}
        elapsed = time.monotonic() - t0
        for s, r in res.items():
            log(f"{shape} scraper {s}: {r['ok']} workflows, per thread {r['per_thread']}, "
                f"longest {r['longest_s']} s, {r['n_errors']} errors")
        log(f"both scrapers done in {elapsed:.1f} s")
        stats = c.stats()
        for s in ("a", "b"):
            st = scraper_stats(stats, s)
            log(f"pool's view of {s}: " + ", ".join(
                f"{k} {st.get(k)}" for k in ("held", "connects", "waits", "wait_ms_max", "timeouts",
                                               "idle_releases", "surplus_releases", "reconnects")))
        for s, r in res.items():
            check(r["n_errors"] == 0,
                  f"scraper {s} ({shape}, {THREADS} threads over a limit of {SOFT}) had "
                  f"{r['n_errors']} errors, e.g. {r['errors'][:3]}")
        for s, r in res.items():
            check(min(r["per_thread"]) >= MIN_PER_THREAD,
                  f"a thread of scraper {s} ({shape}) finished only {min(r['per_thread'])} "
                  f"workflows in {SECONDS:g} s (per thread: {r['per_thread']})")
        c.check_pool_filled(f"two {shape} scrapers of {THREADS} threads")
        check(c.stats()["held"] == 0, "slots are still held after the scrapers exited")


def queuepool_with_overflow_threads_beyond_limit_never_fail():
    run_shape("queuepool-overflow")


def queuepool_fixed_15_threads_beyond_limit_never_fail():
    run_shape("queuepool-fixed")


def threaded_connection_pool_threads_beyond_limit_never_fail():
    run_shape("threaded-pool")


def connection_per_thread_threads_beyond_limit_never_fail():
    run_shape("per-thread")


def connection_per_item_threads_beyond_limit_never_fail():
    run_shape("per-item")


if __name__ == "__main__":
    main({f.__name__: f for f in (queuepool_with_overflow_threads_beyond_limit_never_fail,
                                  queuepool_fixed_15_threads_beyond_limit_never_fail,
                                  threaded_connection_pool_threads_beyond_limit_never_fail,
                                  connection_per_thread_threads_beyond_limit_never_fail,
                                  connection_per_item_threads_beyond_limit_never_fail)})
