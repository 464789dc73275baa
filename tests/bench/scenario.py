"""The scraper scenario of scripts/bench: three scrapers (scenario_scraper.py)
in four phases, in a static and a dynamic configuration, on one server.

    scenario.py run OUT.json     run both configurations (PG* variables name
                                 the server; DYNSHIM_BENCH_SHIM and
                                 DYNSHIM_BENCH_DYNCOORD the shim and dyncoord)
    scenario.py report OUT.json PLOT.png PLOT_LINK
                                 print the Markdown report, draw the plot

Phases: A alone; A+B; A+B+C; A alone while B and C sit idle (their
processes and pools stay, they run no workflow). A sampler thread counts the
server's client backends per scraper (application_name bench-NAME) in
pg_stat_activity every SAMPLE_S."""
import json
import os
import statistics as st
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# workloads "THREADS:THINK_S": threads per scraper, seconds between workflows
WORKLOADS = os.environ.get("BENCH_SCENARIO_WORKLOADS", "15:0.1 20:1.0").split()
P = {
    "sleep_s": float(os.environ.get("BENCH_SCENARIO_SLEEP", "1.0")),
    "phase_s": float(os.environ.get("BENCH_SCENARIO_PHASE", "15")),
    "idle_phase_s": float(os.environ.get("BENCH_SCENARIO_IDLE_PHASE", "20")),
    "settle_s": 5.0,
    "sample_s": 0.01,
    "static_cap": 10,
    "pool_size": 20,
    "soft_limit": 10,
    "max_limit": 15,
    "idle_timeout_s": float(os.environ.get("BENCH_SCENARIO_IDLE_TIMEOUT", "5")),
}
NAMES = ("A", "B", "C")
PHASES = (("A alone", "A", ""), ("A+B", "AB", ""), ("A+B+C", "ABC", ""),
          ("A alone, B and C idle", "A", "BC"))


class Scraper:
    def __init__(self, name, cap, env, threads, think_s):
        self.name, self.events = name, []
        self.proc = subprocess.Popen(
            ["/usr/bin/python3", os.path.join(HERE, "scenario_scraper.py"), name,
             str(threads), str(cap), str(P["sleep_s"]), str(think_s)],
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
        rc = self.proc.wait(timeout=120)
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
        samples.append([round((t0 + t1) / 2, 4)] +
                       [rows.get("bench-" + n, 0) for n in NAMES])
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


def run_config(conf, threads, think_s):
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    if conf == "static":
        cap = P["static_cap"]
    else:
        cap = P["max_limit"]
        seg = "/dynshim-bench-scenario-%d" % os.getpid()
        subprocess.run([os.environ["DYNSHIM_BENCH_DYNCOORD"], "--segment", seg, "--init",
                        "--force", "--pool-size", str(P["pool_size"]),
                        "--soft-limit", str(P["soft_limit"]), "--max-limit", str(P["max_limit"]),
                        "--idle-timeout", "%g" % P["idle_timeout_s"]],
                       check=True, stdout=subprocess.DEVNULL)
        env.update(LD_PRELOAD=os.environ["DYNSHIM_BENCH_SHIM"], DYNSHIM_SEGMENT=seg)
    samples, stop = [], threading.Event()
    th = threading.Thread(target=sampler, args=(samples, stop))
    th.start()
    scrapers, phases = {}, []
    t_begin = time.monotonic()
    for label, act, idle in PHASES:
        for n in act:
            if n not in scrapers:
                e = dict(env)
                if conf == "dynamic":
                    e["DYNSHIM_SCRAPER"] = n
                scrapers[n] = Scraper(n, cap, e, threads, think_s)
        t0 = time.monotonic()
        for n in act:
            scrapers[n].send("active")
        for n in idle:
            scrapers[n].send("idle")
        dur = P["idle_phase_s"] if idle else P["phase_s"]
        time.sleep(dur)
        phases.append({"label": label, "active": act, "idle": idle, "t0": t0,
                       "t1": time.monotonic()})
        print("bench: scenario %d threads, think %g s, %s: %s done" % (
            threads, think_s, conf, label), file=sys.stderr)
    rcs = {n: s.stop() for n, s in scrapers.items()}
    stop.set()
    th.join()
    stats = None
    if conf == "dynamic":
        stats = json.loads(subprocess.run(
            [os.environ["DYNSHIM_BENCH_DYNCOORD"], "--segment", seg, "--stats", "--json"],
            check=True, stdout=subprocess.PIPE, text=True).stdout)
        subprocess.run([os.environ["DYNSHIM_BENCH_DYNCOORD"], "--segment", seg, "--destroy"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_no_backends()
    return {"t_begin": t_begin, "phases": phases, "samples": samples, "exit": rcs,
            "events": {n: s.events for n, s in scrapers.items()}, "stats": stats}


def run(out):
    import psycopg2
    conn = psycopg2.connect("")
    conn.autocommit = True
    conn.cursor().execute("CREATE TABLE IF NOT EXISTS pages (id bigserial PRIMARY KEY, "
                          "scraper text, worker int, at timestamptz DEFAULT now())")
    conn.close()
    res = {"params": P, "workloads": []}
    for w in WORKLOADS:
        threads, think_s = int(w.split(":")[0]), float(w.split(":")[1])
        r = {"threads": threads, "think_s": think_s}
        for conf in ("static", "dynamic"):
            r[conf] = run_config(conf, threads, think_s)
        res["workloads"].append(r)
    with open(out, "w") as f:
        json.dump(res, f)


# ---- report ----

def phase_metrics(r, ph):
    t0, t1 = ph["t0"], ph["t1"]
    s = [x for x in r["samples"] if t0 <= x[0] < t1]
    tail = [x for x in s if x[0] >= t1 - 5.0]
    idle_idx = [1 + NAMES.index(n) for n in ph["idle"]]
    m = {
        "peak_total": max(sum(x[1:]) for x in s),
        "peak": {n: max(x[1 + i] for x in s) for i, n in enumerate(NAMES)},
        "samples": len(s),
        "max_gap_ms": 1000 * max((b[0] - a[0] for a, b in zip(s, s[1:])), default=0),
    }
    if idle_idx:
        wasted = [sum(x[i] for i in idle_idx) for x in s]
        m["wasted_peak"] = max(wasted)
        m["wasted_mean"] = st.mean(wasted)
        m["wasted_end"] = st.mean(sum(x[i] for i in idle_idx) for x in tail)
    a0 = t0 + P["settle_s"]
    m["wpm"], m["errors"] = {}, {}
    for n in ph["active"]:
        ev = r["events"][n]
        done = [float(e.split()[1]) for e in ev if e.startswith("done ")]
        m["wpm"][n] = 60.0 * sum(1 for t in done if a0 <= t < t1) / (t1 - a0)
    for n in r["events"]:
        errs = [float(e.split()[1]) for e in r["events"][n] if e.startswith("error ")]
        m["errors"][n] = sum(1 for t in errs if t0 <= t < t1)
    return m


def plot(res, png):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 1, figsize=(12, 7.5), sharex=True)
    colors = ("#1f77b4", "#ff7f0e", "#2ca02c")
    titles = {"static": "static: each scraper's own pool capped at %d, no shim" % P["static_cap"],
              "dynamic": "dynamic: dynshim, pool %d, soft %d, max %d, idle release after %g s" % (
                  P["pool_size"], P["soft_limit"], P["max_limit"], P["idle_timeout_s"])}
    for ax, conf in zip(axes, ("static", "dynamic")):
        r = res[conf]
        tb = r["phases"][0]["t0"]
        t = [x[0] - tb for x in r["samples"]]
        ys = [[x[1 + i] for x in r["samples"]] for i in range(len(NAMES))]
        ax.stackplot(t, *ys, labels=["scraper " + n for n in NAMES], colors=colors, alpha=0.85,
                     step="post")
        for ph in r["phases"]:
            ax.axvline(ph["t0"] - tb, color="black", lw=0.8, ls=":")
            ax.text(ph["t0"] - tb + 0.4, 31, ph["label"], fontsize=9, va="top")
        ax.axhline(20, color="red", lw=0.8, ls="--")
        ax.set_ylim(0, 32)
        ax.set_xlim(0, r["phases"][-1]["t1"] - tb)
        ax.set_ylabel("server connections")
        ax.set_title(titles[conf], fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=9)
    axes[1].set_xlabel("seconds (pg_stat_activity sampled every %d ms)" % (1000 * P["sample_s"]))
    fig.suptitle("Server connections per scraper (stacked), %d threads per scraper, "
                 "%g s between workflows; red line: 20" % (res["threads"], res["think_s"]),
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(png, dpi=100)


def report(path, png, link):
    res = json.load(open(path))
    P.update(res["params"])
    heads = []
    for i, w in enumerate(res["workloads"]):
        print("### Workload %d: %d threads per scraper, %g s between workflows\n" % (
            i + 1, w["threads"], w["think_s"]))
        heads.append(report_one(w, png % (i + 1), link % (i + 1)))
    return heads


def report_one(res, png, link):
    plot(res, png)
    met = {c: [phase_metrics(res[c], ph) for ph in res[c]["phases"]]
           for c in ("static", "dynamic")}
    pr = print
    pr("![server connections per scraper over time, static above, dynamic below](%s)\n" % link)
    pr("Per phase:\n")
    pr("Peak: the most client backends of the scrapers the server had at once (sampled); "
       "wasted: backends of the idle scrapers B and C (peak / mean over the phase / mean over "
       "its last 5 s); workflows per minute per active scraper, counted from %g s into the "
       "phase to its end.\n" % P["settle_s"])
    pr("| phase | config | peak backends | peak A / B / C | wasted (peak / mean / last 5 s) "
       "| workflows/min A | B | C | errors |")
    pr("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for i, ph in enumerate(res["static"]["phases"]):
        for c in ("static", "dynamic"):
            m = met[c][i]
            w = ("%d / %.1f / %.1f" % (m["wasted_peak"], m["wasted_mean"], m["wasted_end"])
                 if "wasted_peak" in m else "")
            pr("| %s | %s | %d | %s | %s | %s | %s | %s | %d |" % (
                ph["label"] if c == "static" else "", c, m["peak_total"],
                " / ".join(str(m["peak"][n]) for n in NAMES), w,
                *["%.0f" % m["wpm"][n] if n in m["wpm"] else "" for n in NAMES],
                sum(m["errors"].values())))
    pr("\nRatios, dynamic / static, same phase:\n")
    pr("| phase | peak backends | workflows/min A | B | C | all scrapers |")
    pr("|---|---:|---:|---:|---:|---:|")
    for i, ph in enumerate(res["static"]["phases"]):
        s, d = met["static"][i], met["dynamic"][i]
        cells = ["%.2f" % (d["wpm"][n] / s["wpm"][n]) if n in s["wpm"] and s["wpm"][n] else ""
                 for n in NAMES]
        pr("| %s | %.2f | %s | %s | %s | %.2f |" % (
            ph["label"], d["peak_total"] / s["peak_total"], *cells,
            sum(d["wpm"].values()) / sum(s["wpm"].values())))
    ns = [len(res[c]["samples"]) for c in ("static", "dynamic")]
    gaps = [max(m["max_gap_ms"] for m in met[c]) for c in ("static", "dynamic")]
    pr("\n%d and %d samples of pg_stat_activity (static, dynamic); the longest gap between two "
       "samples was %.0f ms (static) and %.0f ms (dynamic)." % (ns[0], ns[1], gaps[0], gaps[1]))
    stats = res["dynamic"]["stats"]
    if stats:
        pr("\nThe dynamic pool's counters afterwards (`dyncoord --stats --json`):\n")
        pr("| scraper | connects | waits | mean wait ms | max wait ms | timeouts "
           "| idle releases | surplus releases | reconnects |")
        pr("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for s in sorted(stats["scrapers"], key=lambda s: s["name"]):
            if s["name"] not in NAMES:
                continue
            pr("| %s | %d | %d | %.0f | %.0f | %d | %d | %d | %d |" % (
                s["name"], s["connects"], s.get("waits", 0), s.get("wait_ms_mean", 0),
                s.get("wait_ms_max", 0), s.get("timeouts", 0), s.get("idle_releases", 0),
                s.get("surplus_releases", 0), s.get("reconnects", 0)))
    exits = {c: res[c]["exit"] for c in ("static", "dynamic")}
    pr("\nScraper exit statuses: static %s, dynamic %s." % (
        ", ".join("%s %s" % kv for kv in sorted(exits["static"].items())),
        ", ".join("%s %s" % kv for kv in sorted(exits["dynamic"].items()))))
    # the claims
    S, D = met["static"], met["dynamic"]
    tot_s, tot_d = S[2]["peak_total"], D[2]["peak_total"]
    ws, wd = S[3]["wasted_end"], D[3]["wasted_end"]
    wps, wpd = S[3]["wasted_peak"], D[3]["wasted_peak"]
    a_s, a_d = S[0]["wpm"]["A"], D[0]["wpm"]["A"]
    a3s, a3d = S[3]["wpm"]["A"], D[3]["wpm"]["A"]
    pr("\nAgainst the replaced system's claims:\n")
    pr("| quantity | replaced system: static → dynamic | ours: static → dynamic |")
    pr("|---|---|---|")
    pr("| total connections (all three active, peak) | 30 → 20 (−33 %%) | %d → %d (%+.0f %%) |" % (
        tot_s, tot_d, 100.0 * (tot_d - tot_s) / tot_s))
    pr("| connections wasted by idle scrapers, one scraper active (last 5 s of the phase) "
       "| 20 → 5 (−75 %%) | %.1f → %.1f (%+.0f %%) |" % (ws, wd, 100.0 * (wd - ws) / ws if ws else 0))
    pr("| the same, peak over the whole phase | | %d → %d |" % (wps, wpd))
    pr("| single-scraper throughput, A alone (workflows/min) | 3.2 → 4.5 (+40 %%) "
       "| %.0f → %.0f (%+.0f %%) |" % (a_s, a_d, 100.0 * (a_d - a_s) / a_s))
    pr("| the same, A alone while B and C idle | | %.0f → %.0f (%+.0f %%) |" % (
        a3s, a3d, 100.0 * (a3d - a3s) / a3s))
    return {"total": (tot_s, tot_d), "wasted": (ws, wd), "alone": (a_s, a_d),
            "alone_idle": (a3s, a3d)}


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "run":
        run(sys.argv[2])
    elif len(sys.argv) == 5 and sys.argv[1] == "report":
        report(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
