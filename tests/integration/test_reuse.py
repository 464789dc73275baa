"""Connection reuse under the shim (pool key reuse=on): a program's reused
connection is indistinguishable from a fresh one, with psycopg2 and
psycopg 3 (libpq directly: tests/shim/idle_test.c), and pgbench -C runs
with reuse on and off, the server never seeing more than pool_size."""
import re

from harness import (Case, Skip, _binary, _tool_run, check, log, main, require_native_clients,
                     result_of, scraper_stats, segment_tool)


def set_pool(c, *pairs):
    if segment_tool() != "dyncoord":
        raise Skip("changing the pool needs a working dyncoord")
    _tool_run([_binary("DYNSHIM_IT_DYNCOORD", "dyncoord"), "--segment", c.segment, "--set",
               *pairs], "changing the pool")


def reused_session_is_fresh(driver):
    with Case(f"reuse_{driver}", pool_size=3) as c:
        set_pool(c, "reuse=on", "reuse_timeout=30")
        c.start_sampler()
        res = result_of(c.python("reuse_state.py", driver), f"{driver} reuse")
        log(f"{driver}: {res}")
        for kind, r in res["kinds"].items():
            check(r["reused"], f"{driver}, {kind}: the second connect was not a reused one")
            check(r["fresh"], f"{driver}, {kind}: the reused session kept state: {r['detail']}")
        sc = scraper_stats(c.stats(), f"reuse_{driver}")
        n = len(res["kinds"])
        check(sc["reuses"] >= n, f"{sc['reuses']} reuse hits counted for {n} kinds")


def psycopg2_reused_connection_is_fresh():
    reused_session_is_fresh("psycopg2")


def psycopg3_reused_connection_is_fresh():
    reused_session_is_fresh("psycopg3")


def pgbench_connect_per_transaction_with_reuse_on_and_off():
    require_native_clients()
    with Case("pgbench_reuse", pool_size=4) as c:
        r = c.run(["pgbench", "-i", "-s", "1", "-q", c.db], env=c.plain_env(), timeout=120)
        check(r.returncode == 0, f"pgbench -i failed: {r.stderr}")
        c.start_sampler()
        for mode in ("on", "off"):
            set_pool(c, f"reuse={mode}")
            before = sum(s["reuses"] for s in c.stats()["scrapers"] if s["name"] == "pgbench_reuse")
            r = c.run(["pgbench", "-n", "-C", "-S", "-c", "4", "-j", "4", "-t", "150", c.db],
                      timeout=150)
            log(f"reuse {mode}: " + " | ".join(
                ln for ln in r.stdout.splitlines() if re.match(r"(number of trans|tps)", ln)))
            check(r.returncode == 0, f"pgbench (reuse {mode}) exited {r.returncode}\n"
                  f"{r.stdout}\n{r.stderr}")
            m = re.search(r"number of transactions actually processed: (\d+)/(\d+)", r.stdout)
            check(m and m.group(1) == m.group(2) == "600",
                  f"reuse {mode}: {m.group(0) if m else r.stdout}")
            sc = scraper_stats(c.stats(), "pgbench_reuse")
            hits = sc["reuses"] - before
            check(hits > 0 if mode == "on" else hits == 0, f"reuse {mode}: {hits} reuse hits")
            check(sc["parked"] == 0, f"reuse {mode}: {sc['parked']} parked after pgbench exited")
        c.check_server_view()


if __name__ == "__main__":
    main({f.__name__: f for f in (psycopg2_reused_connection_is_fresh,
                                  psycopg3_reused_connection_is_fresh,
                                  pgbench_connect_per_transaction_with_reuse_on_and_off)})
