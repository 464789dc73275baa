"""psycopg2 under the shim: threads beyond the pool, fork children while the
parent holds a connection, and a child closing an inherited connection."""
import subprocess
import time

from harness import Case, check, log, main, read_line, result_of, scraper_stats


def psycopg2_40_threads_share_pool_of_10():
    with Case("psycopg2_threads", pool_size=10) as c:
        c.start_sampler()
        t0 = time.monotonic()
        res = result_of(c.python("psycopg2_threads.py", 40, 1, 0.2), "psycopg2_threads.py")
        elapsed = time.monotonic() - t0
        log(f"40 threads x pg_sleep(0.2) over pool 10: {elapsed:.2f} s, {res}")
        check(res["ok"] == 40 and not res["errors"],
              f"{res['ok']} of 40 threads succeeded; errors: {res['errors']}")
        c.check_pool_filled("40 threads")
        st = c.stats()
        sc = scraper_stats(st, "psycopg2_threads")
        check(sc["connects"] == 40,
              f"the pool counted {sc['connects']} connects for 40 connections (once each)")
        check(st["held"] == 0, f"{st['held']} slots still held after the process exited")


def psycopg2_fork_children_leave_parent_connection_working():
    with Case("psycopg2_fork", pool_size=4) as c:
        c.start_sampler()
        res = result_of(c.python("psycopg2_fork.py", 6, 12, 0.1), "psycopg2_fork.py")
        log(f"fork pool: {res}")
        check(res["child_ok"] == 12 and not res["child_errors"],
              f"{res['child_ok']} of 12 child tasks succeeded: {res['child_errors']}")
        check(res["child_processes"] > 1,
              f"the tasks ran in {res['child_processes']} child process(es), not several")
        check(res["parent_pid_before"] == res["parent_pid_after"],
              f"the parent's session changed from backend {res['parent_pid_before']} to "
              f"{res['parent_pid_after']} while children connected")
        st = c.stats()
        check(st["held"] == 0, f"{st['held']} slots still held after every process exited")


def fork_child_closing_inherited_connection_returns_no_parent_slot():
    with Case("fork_inherited", pool_size=2) as c:
        c.start_sampler()
        p = c.spawn_python("fork_close_inherited.py", stdin=subprocess.PIPE)
        check(read_line(p, 30, "fork_close_inherited.py") == "forked", "unexpected output")
        sc = scraper_stats(c.stats(), "fork_inherited")
        check(sc["held"] == 1,
              f"after a child closed its inherited copy the parent's scraper holds "
              f"{sc['held']} slots, not 1")
        p.stdin.write("\n")
        p.stdin.flush()
        check(read_line(p, 30, "fork_close_inherited.py") == "closed", "unexpected output")
        p.wait(30)
        check(p.returncode == 0, f"the parent exited {p.returncode}: {p.stderr.read()}")
        check(c.stats()["held"] == 0, "the parent's slot was not returned by its own close")


if __name__ == "__main__":
    main({f.__name__: f for f in (psycopg2_40_threads_share_pool_of_10,
                                  psycopg2_fork_children_leave_parent_connection_working,
                                  fork_child_closing_inherited_connection_returns_no_parent_slot)})
