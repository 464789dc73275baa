"""SQLAlchemy with psycopg2 and QueuePool (pool_size 5, max_overflow 20) in
three processes over a dynshim pool of 12."""
import time

from harness import Case, check, collect, log, main


def sqlalchemy_queuepool_three_processes_over_pool_12():
    with Case("sqlalchemy", pool_size=12) as c:
        c.start_sampler()
        t0 = time.monotonic()
        procs = [c.spawn_python("sqlalchemy_pool.py", 15, 5, 0.1) for _ in range(3)]
        for i, p in enumerate(procs):
            res = collect(p, f"sqlalchemy process {i}")
            check(res["ok"] == 75 and not res["errors"],
                  f"process {i}: {res['ok']} of 75 queries succeeded: {res['errors']}")
        log(f"3 processes x 15 threads x 5 queries: {time.monotonic() - t0:.2f} s")
        c.check_server_view()
        check(c.sampler.peak >= 6,
              f"the three processes never ran more than {c.sampler.peak} connections at once")
        check(c.stats()["held"] == 0, "slots are still held after the processes exited")


if __name__ == "__main__":
    main({f.__name__: f for f in (sqlalchemy_queuepool_three_processes_over_pool_12,)})
