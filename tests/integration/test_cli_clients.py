"""psql and pgbench under the shim: the server never sees more than pool_size
of their backends, and every one of their connections still succeeds."""
import os
import re
import subprocess
import time

from harness import Case, check, log, main, require_native_clients


def psql_clients_beyond_pool_wait_and_all_succeed():
    require_native_clients()
    with Case("psql", pool_size=5) as c:
        c.start_sampler()
        t0 = time.monotonic()
        procs = [c.spawn(["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c",
                          f"SELECT 'done {i}' FROM pg_sleep(0.5)"]) for i in range(15)]
        for i, p in enumerate(procs):
            out, err = p.communicate(timeout=90)
            check(p.returncode == 0 and out.strip() == f"done {i}",
                  f"psql #{i} exited {p.returncode} with {out!r}, stderr {err!r}")
        elapsed = time.monotonic() - t0
        log(f"15 psql clients x 0.5 s over pool 5 took {elapsed:.2f} s")
        c.check_pool_filled("15 psql clients")
        s = c.stats()
        sc = [x for x in s["scrapers"] if x["name"] == "psql"]
        check(sc and sc[0]["connects"] == 15,
              f"the pool counted {sc[0]['connects'] if sc else 0} connects for 15 psql runs")
        check(sc[0]["waits"] >= 1, "no psql connect waited for a slot, so nothing contended")
        check(s["held"] == 0, f"{s['held']} slots are still held after every psql exited")


def pgbench_connect_per_transaction_30_clients_over_pool_10():
    require_native_clients()
    with Case("pgbench", pool_size=10) as c:
        r = subprocess.run(["pgbench", "-i", "-s", "1", "-q", c.db], env=c.plain_env(),
                           capture_output=True, text=True, timeout=120)
        check(r.returncode == 0, f"pgbench -i failed: {r.stderr}")
        c.start_sampler()
        # Select-only, plus 20 ms think time with the connection open so that
        # the 30 clients would really overlap without a pool. One thread per
        # client (-j 30): pgbench's connect blocks its thread, so a thread
        # that also drives other clients' open transactions would wait on
        # slots that only it can give back.
        script = os.path.join(c.tmpdir(), "select_think.sql")
        with open(script, "w") as f:
            f.write("\\set aid random(1, 100000 * :scale)\n"
                    "SELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n"
                    "\\sleep 20 ms\n")
        r = c.run(["pgbench", "-n", "-C", "-f", script, "-c", "30", "-j", "30", "-t", "20",
                   c.db], timeout=150)
        log("pgbench: " + " | ".join(ln for ln in r.stdout.splitlines()
                                     if re.match(r"(number of|latency|tps)", ln)))
        check(r.returncode == 0, f"pgbench exited {r.returncode}\n{r.stdout}\n{r.stderr}")
        m = re.search(r"number of transactions actually processed: (\d+)/(\d+)", r.stdout)
        check(m and m.group(1) == m.group(2) == "600",
              f"not every transaction completed: {m.group(0) if m else r.stdout}")
        m = re.search(r"number of failed transactions: (\d+)", r.stdout)
        check(m is None or m.group(1) == "0", f"pgbench reports {m and m.group(0)}")
        c.check_pool_filled("30 pgbench clients")
        check(c.stats()["held"] == 0, "slots are still held after pgbench exited")


if __name__ == "__main__":
    main({f.__name__: f for f in (psql_clients_beyond_pool_wait_and_all_succeed,
                                  pgbench_connect_per_transaction_30_clients_over_pool_10)})
