#!/usr/bin/env python3
"""async_bench.py - one asyncio program (psycopg 3) opening many connections
at once, directly against a server with room for all of them, and under
libdynshim.so with a pool far smaller than the program's concurrency. Each
task connects, runs SELECT pg_sleep(HOLD), and closes. Reports completion
time and the event loop's lag (a 5 ms ticker task) as medians over rounds,
and the server's peak of the program's backends under the shim.

  tests/bench/async_bench.py [--build DIR] [--rounds N] [--tasks N]
                             [--limit N] [--hold S] [--smoke]

Without PGHOST it runs itself inside scripts/pg-sandbox (max_connections
above the task count). --smoke: one short round (20 tasks, limit 4), and
fails unless every connection succeeded and the server never went above the
limit; it asserts no timing. Prints a Markdown table."""
import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLIENT = os.path.join(ROOT, "tests", "integration", "clients", "async_clients.py")
PY = "/usr/bin/python3"


def args_():
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("--build", default=os.path.join(ROOT, "build"))
    a.add_argument("--rounds", type=int, default=5)
    a.add_argument("--tasks", type=int, default=100)
    a.add_argument("--limit", type=int, default=10)
    a.add_argument("--hold", type=float, default=0.2)
    a.add_argument("--smoke", action="store_true")
    o = a.parse_args()
    if o.smoke:
        o.rounds, o.tasks, o.limit, o.hold = 1, 20, 4, 0.05
    return o


def backends(db):
    r = subprocess.run(["psql", "-XAtqd", "postgres", "-c",
                        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = "
                        f"'client backend' AND datname = '{db}'"],
                       capture_output=True, text=True, env=plain_env())
    return int(r.stdout.strip() or -1)


def plain_env():
    return {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}


def run_client(o, env, db):
    """One run of the program; returns its result and the server's peak."""
    peak, stop = [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], backends(db))
            time.sleep(0.02)
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    env = dict(env, PGDATABASE=db)
    r = subprocess.run([PY, CLIENT, "conn", str(o.tasks), "1", str(o.hold)], env=env,
                       capture_output=True, text=True, timeout=600)
    stop.set()
    t.join()
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode or not lines:
        sys.exit(f"async_clients.py failed ({r.returncode}): {r.stderr[-2000:]}")
    return json.loads(lines[-1]), peak[0]


def main():
    o = args_()
    if not os.environ.get("PGHOST"):
        sandbox = os.path.join(ROOT, "scripts", "pg-sandbox")
        os.execv(sandbox, [sandbox, "--max-connections", str(o.tasks + 20), "run", "--",
                           PY, *sys.argv])
    shim = os.path.join(o.build, "shim", "libdynshim.so")
    dyncoord = os.path.join(o.build, "coordinator", "dyncoord")
    segment = f"/dynshim-async-bench-{os.getpid()}"
    db = "async_bench"
    subprocess.run(["psql", "-XAtqd", "postgres", "-c", f"DROP DATABASE IF EXISTS {db}"],
                   env=plain_env(), check=True, capture_output=True)
    subprocess.run(["psql", "-XAtqd", "postgres", "-c", f"CREATE DATABASE {db}"],
                   env=plain_env(), check=True, capture_output=True)
    rows = {"direct": [], "shim": []}
    peaks = {"direct": 0, "shim": 0}
    try:
        for _ in range(o.rounds):
            for how in ("direct", "shim"):
                env = plain_env()
                if how == "shim":
                    subprocess.run([dyncoord, "--segment", segment, "--init", "--force",
                                    "--pool-size", str(o.limit), "--soft-limit", str(o.limit),
                                    "--max-limit", str(o.limit), "--wait-timeout", "300"],
                                   check=True, capture_output=True)
                    env.update(LD_PRELOAD=shim, DYNSHIM_SEGMENT=segment,
                               DYNSHIM_SCRAPER="async_bench")
                res, peak = run_client(o, env, db)
                if res["ok"] != o.tasks or res["errors"]:
                    sys.exit(f"{how}: {res['ok']} of {o.tasks} succeeded: {res['errors']}")
                rows[how].append(res)
                peaks[how] = max(peaks[how], peak)
    finally:
        subprocess.run([dyncoord, "--segment", segment, "--destroy"], capture_output=True)
    if o.smoke and peaks["shim"] > o.limit:
        sys.exit(f"the server saw {peaks['shim']} backends of the program, above the limit "
                 f"{o.limit}")

    def med(how, f):
        return statistics.median(f(r) for r in rows[how])
    print(f"{o.tasks} asyncio tasks, each connect + SELECT pg_sleep({o.hold}) + close; "
          f"shim: pool {o.limit}; median of {o.rounds} round(s)\n")
    print("| run | completion s | loop lag p50 ms | p99 ms | max ms | longest callback ms "
          "| longest connect call that slept ms | server peak |")
    print("|---|---|---|---|---|---|---|---|")
    for how in ("direct", "shim"):
        print(f"| {how} | {med(how, lambda r: r['elapsed_s']):.2f} "
              f"| {med(how, lambda r: r['lag_ms']['p50']):.1f} "
              f"| {med(how, lambda r: r['lag_ms']['p99']):.1f} "
              f"| {med(how, lambda r: r['lag_ms']['max']):.1f} "
              f"| {med(how, lambda r: r['blocked_ms']):.1f} "
              f"| {med(how, lambda r: r['connect_slept_ms']):.1f} | {peaks[how]} |")
    ideal = o.tasks * o.hold / o.limit
    print(f"\nWith {o.limit} slots the {o.tasks} holds of {o.hold} s take at least "
          f"{ideal:.1f} s under the shim.")


if __name__ == "__main__":
    main()
