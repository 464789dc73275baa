"""The scraper scenario of scripts/bench: three scrapers A, B and C
(scenario_scraper.py) of 15 threads each, in four phases, for each client
shape, in a static and a dynamic configuration, on one server.

    scenario.py run OUT.json      the full run (PG* variables name the server;
                                  DYNSHIM_BENCH_SHIM and DYNSHIM_BENCH_DYNCOORD
                                  the shim and dyncoord)
    scenario.py quick OUT.json    one shape (BENCH_SCENARIO_SHAPES, default
                                  queuepool-overflow), one round, short phases
    scenario.py report OUT.json PLOT.png PLOT_LINK
                                  print the Markdown report, draw the plots
                                  (PLOT and PLOT_LINK contain %d: the shape)
    scenario.py smoke             quick, then the report (no plot); exit 1
                                  unless the dynamic run had no error, no
                                  scraper failed and the server never saw
                                  more than the pool: a CI smoke test

Phases: A alone; A+B; A+B+C; A alone again while B and C have stopped
working (their processes stay, holding whatever their client pools hold, as
real scrapers do). A sampler thread counts the server's client backends per
scraper (application_name bench-NAME) in pg_stat_activity every SAMPLE_S.

Configurations, interleaved round by round (the order alternates):
- static: the same programs without the shim; the server has connections
  enough for every shape's own maximum (15 per scraper);
- dynamic: LD_PRELOAD=libdynshim.so, pool 20, the default limits (soft 10,
  max 15) and wait_timeout (30 s); idle_timeout and realloc_interval scaled
  down so that the last phase fits.

Environment: BENCH_SCENARIO_SHAPES (default: every shape), _ROUNDS (3),
_PHASE (15 s), _IDLE_TIMEOUT (5 s), _REALLOC (5 s), _WINDOW (10 s),
_QUERY (1.0 s), _HOLD (0.4 s), _THINK (0.1 s); see P."""
import bisect
import json
import os
import statistics as st
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration", "clients"))
import client_shapes  # noqa: E402

SHAPE_TITLES = {
    "queuepool-overflow": "SQLAlchemy QueuePool(pool_size=5, max_overflow=10)",
    "queuepool-fixed": "SQLAlchemy QueuePool(pool_size=15, max_overflow=0)",
    "threaded-pool": "psycopg2 ThreadedConnectionPool(5, 15)",
    "per-thread": "one psycopg2 connection per thread, kept",
    "per-item": "a new psycopg2 connection per workflow",
}


def _env(key, default):
    return float(os.environ.get("BENCH_SCENARIO_" + key, default))


P = {
    "shapes": os.environ.get("BENCH_SCENARIO_SHAPES", " ".join(client_shapes.NAMES)).split(),
    "rounds": int(_env("ROUNDS", 3)),
    "threads": 15,
    "query_s": _env("QUERY", 1.0),     # pg_sleep inside the workflow's transaction
    "hold_s": _env("HOLD", 0.4),       # connection out, between calls, after the commit
    "think_s": _env("THINK", 0.1),     # without a connection
    "phase_s": _env("PHASE", 15),      # phases 1 to 3
    "settle_s": 5.0,                   # of phases 1 to 3, not measured
    "idle_timeout_s": _env("IDLE_TIMEOUT", 5),
    "realloc_s": _env("REALLOC", 5),
    "window_s": _env("WINDOW", 10),    # of the last phase, measured, after the release
    "sample_s": 0.01,
    "pool_size": 20,
    "static_conns": 30,                # the replaced system's connections: 20/30 is the cap
}
QUICK = {"shapes": os.environ.get("BENCH_SCENARIO_SHAPES", "queuepool-overflow").split(),
         "rounds": 1, "phase_s": 8, "settle_s": 3, "idle_timeout_s": 2, "realloc_s": 2,
         "window_s": 4}
NAMES = ("A", "B", "C")
PHASES = (("A alone", "A", ""), ("A+B", "AB", ""), ("A+B+C", "ABC", ""),
          ("A alone, B and C stopped", "A", "BC"))


class Scraper:
    def __init__(self, name, shape, env):
        self.name, self.events = name, []
        self.proc = subprocess.Popen(
            ["/usr/bin/python3", os.path.join(HERE, "scenario_scraper.py"), name, shape,
             str(P["threads"]), str(P["query_s"]), str(P["hold_s"]), str(P["think_s"])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.reader = threading.Thread(target=self.read, daemon=True)
        self.reader.start()

    def read(self):
        for line in self.proc.stdout:
            self.events.append(line.rstrip("\n"))

    def send(self, cmd):
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()

    def stop(self):
        self.send("quit")
        self.proc.stdin.close()
        try:
            rc = self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.reader.join(10)
        return rc


def sampler(samples, stop):
    import psycopg2
    conn = psycopg2.connect("application_name=bench-sampler")
    conn.autocommit = True
    cur = conn.cursor()
    q = ("SELECT application_name, count(*) FROM pg_stat_activity "
         "WHERE backend_type = 'client backend' AND datname = current_database() "
         "AND pid <> pg_backend_pid() AND application_name LIKE 'bench-%' GROUP BY 1")
    while not stop.is_set():
        t0 = time.monotonic()
        cur.execute(q)
        rows = dict(cur.fetchall())
        t1 = time.monotonic()
        samples.append([round((t0 + t1) / 2, 4)] + [rows.get("bench-" + n, 0) for n in NAMES])
        time.sleep(max(0.0, P["sample_s"] - (time.monotonic() - t0)))
    conn.close()


def wait_no_backends():
    import psycopg2
    conn = psycopg2.connect("application_name=bench-sampler")
    conn.autocommit = True
    cur = conn.cursor()
    for _ in range(300):
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name "
                    "LIKE 'bench-%' AND application_name <> 'bench-sampler'")
        if cur.fetchone()[0] == 0:
            break
        time.sleep(0.1)
    conn.close()


def dyncoord(seg, *args, **kw):
    return subprocess.run([os.environ["DYNSHIM_BENCH_DYNCOORD"], "--segment", seg, *args],
                          check=True, text=True, **kw)


def last_phase_s():
    return P["idle_timeout_s"] + P["realloc_s"] + 2.0 + P["window_s"]


def run_config(conf, shape):
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    seg = None
    if conf == "dynamic":
        seg = "/dynshim-bench-scenario-%d" % os.getpid()
        dyncoord(seg, "--init", "--force", "--pool-size", str(P["pool_size"]),
                 "--idle-timeout", "%g" % P["idle_timeout_s"],
                 "--realloc-interval", "%g" % P["realloc_s"], stdout=subprocess.DEVNULL)
        env.update(LD_PRELOAD=os.environ["DYNSHIM_BENCH_SHIM"], DYNSHIM_SEGMENT=seg)
    samples, stop = [], threading.Event()
    th = threading.Thread(target=sampler, args=(samples, stop))
    th.start()
    scrapers, phases = {}, []
    for label, act, idle in PHASES:
        t0 = time.monotonic()
        for n in act:
            if n not in scrapers:
                e = dict(env)
                if conf == "dynamic":
                    e["DYNSHIM_SCRAPER"] = n
                scrapers[n] = Scraper(n, shape, e)
        for n in act:
            scrapers[n].send("active")
        for n in idle:
            scrapers[n].send("idle")
        time.sleep(last_phase_s() if idle else P["phase_s"])
        phases.append({"label": label, "active": act, "idle": idle, "t0": t0,
                       "t1": time.monotonic()})
        print("bench: scenario %s, %s: %s done" % (shape, conf, label), file=sys.stderr)
    rcs = {n: s.stop() for n, s in scrapers.items()}
    stop.set()
    th.join()
    stats = None
    if seg:
        stats = json.loads(dyncoord(seg, "--stats", "--json", stdout=subprocess.PIPE).stdout)
        subprocess.run([os.environ["DYNSHIM_BENCH_DYNCOORD"], "--segment", seg, "--destroy"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_no_backends()
    return {"conf": conf, "shape": shape, "phases": phases, "samples": samples, "exit": rcs,
            "events": {n: s.events for n, s in scrapers.items()}, "stats": stats}


def prepare_server():
    import psycopg2
    conn = psycopg2.connect("application_name=bench-setup")
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("SHOW max_connections")
    need = len(NAMES) * P["threads"] + 5
    have = int(cur.fetchone()[0])
    if have < need:
        sys.exit("scenario.py: the server allows %d connections; the static configuration "
                 "needs %d (%d scrapers x %d)" % (have, need, len(NAMES), P["threads"]))
    cur.execute("CREATE TABLE IF NOT EXISTS pages (id bigserial PRIMARY KEY, "
                "scraper text, worker int, at timestamptz DEFAULT now())")
    conn.close()


def run(out):
    prepare_server()
    res = {"params": P, "runs": []}
    for r in range(P["rounds"]):
        for shape in P["shapes"]:
            for conf in (("static", "dynamic") if r % 2 == 0 else ("dynamic", "static")):
                x = run_config(conf, shape)
                x["round"] = r
                res["runs"].append(x)
    with open(out, "w") as f:
        json.dump(res, f)


# ---- report ----

def window(ph):
    """The measured part of a phase: after the settling time, or in the last
    phase from idle_timeout + realloc_interval + 2 s after B and C stopped."""
    if ph["idle"]:
        return ph["t0"] + P["idle_timeout_s"] + P["realloc_s"] + 2.0, ph["t1"]
    return ph["t0"] + P["settle_s"], ph["t1"]


def completions(events):
    """Per thread: the time it began its first workflow, then the times it
    finished each one, sorted."""
    by = {}
    for e in events:
        if e.startswith("done ") or e.startswith("start "):
            f = e.split()
            by.setdefault(f[2], []).append(float(f[1]))
    return [sorted(v) for v in by.values()]


def work_done(times, t):
    """Workflows a thread (times: completions()) finished by time t, counted
    linearly between its start and completions, so that a window counts
    neither whole bursts nor the part of a workflow done before it."""
    i = bisect.bisect_right(times, t)
    if i == 0 or i == len(times):
        return float(max(i - 1, 0))
    return i - 1 + (t - times[i - 1]) / (times[i] - times[i - 1])


def phase_metrics(run, ph):
    a0, a1 = window(ph)
    s = [x for x in run["samples"] if a0 <= x[0] < a1]
    whole = [x for x in run["samples"] if ph["t0"] <= x[0] < ph["t1"]]
    m = {"backends": {n: st.mean(x[1 + i] for x in s) if s else 0.0
                      for i, n in enumerate(NAMES)},
         "peak_total": max((sum(x[1:]) for x in whole), default=0),
         "max_gap_ms": 1000 * max((b[0] - a[0] for a, b in zip(whole, whole[1:])), default=0),
         "wpm": {}, "errors": {}, "error_text": []}
    for n, ev in run["events"].items():
        m["wpm"][n] = 60.0 * sum(work_done(c, a1) - work_done(c, a0)
                                 for c in completions(ev)) / (a1 - a0)
        errs = [e for e in ev if e.startswith("error ")
                and ph["t0"] <= float(e.split()[1]) < ph["t1"]]
        m["errors"][n] = len(errs)
        m["error_text"] += [e.split(" ", 2)[2] for e in errs[:2]]
    return m


def run_metrics(run):
    ms = [phase_metrics(run, ph) for ph in run["phases"]]
    # errors outside the phases (before the first, after the last) count too
    t_first, t_last = run["phases"][0]["t0"], run["phases"][-1]["t1"]
    ms[-1]["errors_outside"] = sum(
        1 for ev in run["events"].values() for e in ev
        if e.startswith("error ") and not t_first <= float(e.split()[1]) < t_last)
    return ms


def spread(xs, fmt="%.1f"):
    """mean (min-max) of the rounds' values."""
    if len(xs) == 1:
        return fmt % xs[0]
    return (fmt + " (" + fmt + "–" + fmt + ")") % (st.mean(xs), min(xs), max(xs))


def verdict(oks):
    return "**PASS**" if all(oks) else "**FAIL** (%d of %d rounds)" % (
        sum(1 for o in oks if not o), len(oks))


def shape_report(shape, runs):
    """Prints one shape's tables; returns (targets passed, targets)."""
    rounds = sorted({r["round"] for r in runs})
    by = {(r["conf"], r["round"]): r for r in runs}
    met = {k: run_metrics(v) for k, v in by.items()}
    pr = print
    pr("### %s: %s\n" % (shape, SHAPE_TITLES.get(shape, shape)))
    pr("Per phase, over %d round%s (mean, and min–max when more than one): errors; server "
       "backends per scraper (mean over the measured part of the phase); workflows per minute; "
       "A's rate against its rate alone in the same run; all scrapers' work, dynamic against "
       "static in the same round and phase (with the default workload the static scrapers are "
       "in a query on 30 connections on average when all three work: the pool of 20 caps that "
       "ratio at 20/30 = 0.67 in A+B+C).\n" % (
           len(rounds), "" if len(rounds) == 1 else "s"))
    pr("| phase | config | errors | backends A | B | C | peak total | workflows/min A | B | C "
       "| A / A alone | all, dynamic / static |")
    pr("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for i, (label, act, idle) in enumerate(PHASES):
        for conf in ("static", "dynamic"):
            ms = [met[(conf, r)][i] for r in rounds]
            solo = [met[(conf, r)][0]["wpm"]["A"] for r in rounds]
            errs = [sum(m["errors"].values()) for m in ms]
            cells = []
            for n in NAMES:
                cells.append(spread([m["backends"][n] for m in ms]) if n in act + idle else "")
            rates = [spread([m["wpm"][n] for m in ms], "%.0f") if n in act else "" for n in NAMES]
            a_rel = spread([m["wpm"]["A"] / s if s else 0 for m, s in zip(ms, solo)], "%.2f")
            tot = ""
            if conf == "dynamic":
                tot = spread([sum(met[("dynamic", r)][i]["wpm"][n] for n in act) /
                              sum(met[("static", r)][i]["wpm"][n] for n in act)
                              for r in rounds], "%.2f")
            pr("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                label if conf == "static" else "", conf, spread(errs, "%.0f"), *cells,
                spread([m["peak_total"] for m in ms], "%.0f"), *rates, a_rel, tot))
    # the targets, judged on the dynamic run of every round
    D = [met[("dynamic", r)] for r in rounds]
    S = [met[("static", r)] for r in rounds]
    rows = []

    def target(name, values, oks, fmt="%.1f"):
        rows.append((name, spread(values, fmt), verdict(oks)))

    errs = [sum(sum(m["errors"].values()) for m in d) + d[-1]["errors_outside"] for d in D]
    target("zero errors in every phase (dynamic, all scrapers)", errs, [e == 0 for e in errs],
           "%.0f")
    peaks = [max(m["peak_total"] for m in d) for d in D]
    target("server backends never above the pool (%d)" % P["pool_size"], peaks,
           [p <= P["pool_size"] for p in peaks], "%.0f")
    x = [d[0]["backends"]["A"] for d in D]
    target("A alone holds ≥ 13", x, [v >= 13 for v in x])
    for n in "AB":
        x = [d[1]["backends"][n] for d in D]
        target("A+B: %s holds 10 ± 1" % n, x, [9 <= v <= 11 for v in x])
    x = [min(d[2]["backends"][n] for n in NAMES) for d in D]
    target("A+B+C: each holds ≥ 6 (the least of the three)", x, [v >= 6 for v in x])
    for n in "BC":
        x = [d[3]["backends"][n] for d in D]
        target("after B and C stop: %s's backends ≤ 1 on average (from idle_timeout + "
               "realloc_interval + 2 s)" % n, x, [v <= 1 for v in x], "%.2f")
    x = [d[3]["backends"]["A"] for d in D]
    target("after B and C stop: A holds ≥ 13", x, [v >= 13 for v in x])
    x = [d[3]["wpm"]["A"] / d[0]["wpm"]["A"] if d[0]["wpm"]["A"] else 0 for d in D]
    target("after B and C stop: A ≥ 95 % of its rate alone", x, [v >= 0.95 for v in x], "%.3f")
    x = [sum(d[2]["wpm"].values()) / (P["pool_size"] / P["static_conns"] *
                                      sum(s[2]["wpm"].values())) for d, s in zip(D, S)]
    target("A+B+C together ≥ 90 % of (20/30) × static", x, [v >= 0.9 for v in x], "%.3f")
    pr("\nTargets (dynamic configuration, every round):\n")
    pr("| target | measured | verdict |")
    pr("|---|---:|---|")
    for row in rows:
        pr("| %s | %s | %s |" % row)
    texts = [t for d in D for m in d for t in m["error_text"]]
    if texts:
        pr("\nFirst errors (dynamic): " + "; ".join("`%s`" % t for t in texts[:3]))
    gaps = [max(m["max_gap_ms"] for m in d) for d in D + S]
    exits = sorted({"%s %s" % kv for r in runs for kv in r["exit"].items()})
    pr("\nLongest gap between two samples of pg_stat_activity: %.0f ms. Scraper exit "
       "statuses: %s." % (max(gaps), ", ".join(exits)))
    stats = [r["stats"] for r in runs if r["stats"]]
    if stats:
        pr("\nThe dynamic pool's counters after the last round (`dyncoord --stats --json`):\n")
        pr("| scraper | connects | waits | mean wait ms | max wait ms | timeouts "
           "| idle releases | surplus releases | reconnects |")
        pr("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for s in sorted(stats[-1]["scrapers"], key=lambda s: s["name"]):
            if s["name"] in NAMES:
                pr("| %s | %d | %d | %.0f | %.0f | %d | %d | %d | %d |" % (
                    s["name"], s["connects"], s.get("waits", 0), s.get("wait_ms_mean", 0),
                    s.get("wait_ms_max", 0), s.get("timeouts", 0), s.get("idle_releases", 0),
                    s.get("surplus_releases", 0), s.get("reconnects", 0)))
    pr()
    ok = sum(1 for _, _, v in rows if v == "**PASS**")
    smoke = errs and max(errs) == 0 and max(peaks) <= P["pool_size"] and all(
        rc == 0 for r in runs for rc in r["exit"].values())
    return ok, len(rows), smoke


def plot(runs, png):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    first = {r["conf"]: r for r in sorted(runs, key=lambda r: -r["round"])}
    fig, axes = plt.subplots(2, 1, figsize=(12, 7.5), sharex=True)
    colors = ("#1f77b4", "#ff7f0e", "#2ca02c")
    titles = {"static": "static: no shim, each scraper's client pool as it is",
              "dynamic": "dynamic: dynshim, pool %d, default limits, idle release after %g s" % (
                  P["pool_size"], P["idle_timeout_s"])}
    for ax, conf in zip(axes, ("static", "dynamic")):
        r = first[conf]
        tb = r["phases"][0]["t0"]
        t = [x[0] - tb for x in r["samples"]]
        ys = [[x[1 + i] for x in r["samples"]] for i in range(len(NAMES))]
        ax.stackplot(t, *ys, labels=["scraper " + n for n in NAMES], colors=colors, alpha=0.85,
                     step="post")
        for ph in r["phases"]:
            ax.axvline(ph["t0"] - tb, color="black", lw=0.8, ls=":")
            ax.text(ph["t0"] - tb + 0.4, 47, ph["label"], fontsize=9, va="top")
        ax.axhline(P["pool_size"], color="red", lw=0.8, ls="--")
        ax.set_ylim(0, 48)
        ax.set_xlim(0, r["phases"][-1]["t1"] - tb)
        ax.set_ylabel("server connections")
        ax.set_title(titles[conf], fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=9)
    axes[1].set_xlabel("seconds (pg_stat_activity sampled every %d ms)" % (1000 * P["sample_s"]))
    fig.suptitle("%s: server connections per scraper (stacked), first round; red line: %d" % (
        SHAPE_TITLES.get(runs[0]["shape"], runs[0]["shape"]), P["pool_size"]), fontsize=11)
    fig.tight_layout()
    fig.savefig(png, dpi=100)


def report(path, png=None, link=None):
    """Prints the report; returns True when every shape passed the smoke checks."""
    res = json.load(open(path))
    P.update(res["params"])
    pr = print
    pr("%d threads per scraper; a workflow: connection out, `SELECT 1`, `SELECT pg_sleep(%g)`, "
       "an `INSERT`, `SELECT count(*) FROM pg_class`, commit, %g s more with the connection out "
       "(no call, no transaction), connection back; then %g s without one. Phases of %g s (the "
       "first %g s not measured); the last phase %g s (measured from %g s on). dynamic: pool %d, "
       "default limits and wait_timeout, idle_timeout %g s, realloc_interval %g s. %d round%s, "
       "static and dynamic interleaved.\n" % (
           P["threads"], P["query_s"], P["hold_s"], P["think_s"], P["phase_s"], P["settle_s"],
           last_phase_s(), last_phase_s() - P["window_s"], P["pool_size"], P["idle_timeout_s"],
           P["realloc_s"], P["rounds"], "" if P["rounds"] == 1 else "s"))
    summary, smoke_ok = [], True
    for i, shape in enumerate(P["shapes"]):
        runs = [r for r in res["runs"] if r["shape"] == shape]
        if png:
            plot(runs, png % (i + 1))
            pr("![%s: server connections per scraper, static above, dynamic below](%s)\n" % (
                shape, link % (i + 1)))
        ok, n, smoke = shape_report(shape, runs)
        summary.append((shape, ok, n))
        smoke_ok = smoke_ok and smoke
    pr("Targets met: " + "; ".join("%s %d of %d" % s for s in summary) + ".")
    return smoke_ok


def main():
    cmd = sys.argv[1:2]
    if cmd == ["run"] and len(sys.argv) == 3:
        run(sys.argv[2])
    elif cmd == ["quick"] and len(sys.argv) == 3:
        P.update(QUICK)
        run(sys.argv[2])
    elif cmd == ["report"] and len(sys.argv) == 5:
        report(sys.argv[2], sys.argv[3], sys.argv[4])
    elif cmd == ["smoke"] and len(sys.argv) == 2:
        import tempfile
        P.update(QUICK)
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            run(f.name)
            ok = report(f.name)
        print("smoke: %s" % ("passed" if ok else "FAILED"), file=sys.stderr)
        sys.exit(0 if ok else 1)
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
