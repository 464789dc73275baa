"""psycopg 3 (Debian's, which calls libpq through ctypes) under the shim:
sync threads beyond the pool, and asyncio connects next to them."""
from harness import Case, check, collect, log, main, result_of, scraper_stats


def psycopg3_threads_beyond_pool_wait_for_slots():
    with Case("psycopg3_threads", pool_size=6) as c:
        c.start_sampler()
        res = result_of(c.python("psycopg3_clients.py", "threads", 20, 2, 0.1),
                        "psycopg3 threads")
        log(f"psycopg3 threads: {res}")
        check(res["ok"] == 40 and not res["errors"],
              f"{res['ok']} of 40 connections succeeded: {res['errors']}")
        c.check_pool_filled("20 threads")
        sc = scraper_stats(c.stats(), "psycopg3_threads")
        check(sc["connects"] == 40, f"the pool counted {sc['connects']} connects, not 40")


def psycopg3_asyncio_connects_share_pool_with_threads():
    # An asyncio process and a threads' process of the same scraper share
    # the pool; the threads keep it contended while the asyncio connects
    # wait through their loop (test_async.py goes beyond the limit in one
    # loop).
    with Case("psycopg3_async", pool_size=6) as c:
        c.start_sampler()
        pa = c.spawn_python("psycopg3_clients.py", "asyncio", 4, 4, 0.1)
        pt = c.spawn_python("psycopg3_clients.py", "threads", 12, 2, 0.1)
        results = {}
        for what, p, want in (("asyncio", pa, 16), ("threads", pt, 24)):
            res = collect(p, f"psycopg3 {what}")
            results[what] = res
            check(res["ok"] == want and not res["errors"],
                  f"psycopg3 {what}: {res['ok']} of {want} succeeded: {res['errors']}")
        log(f"psycopg3: {results}")
        c.check_server_view()
        sc = scraper_stats(c.stats(), "psycopg3_async")
        check(sc["connects"] == 40, f"the pool counted {sc['connects']} connects, not 40")


if __name__ == "__main__":
    main({f.__name__: f for f in (psycopg3_threads_beyond_pool_wait_for_slots,
                                  psycopg3_asyncio_connects_share_pool_with_threads)})
