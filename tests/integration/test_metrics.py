"""Metrics over HTTP: dyncoord --watchdog --metrics-listen serves the
Prometheus text at /metrics; a real HTTP client scrapes it while real
psycopg2 clients hold connections under the shim, and what it reports is
what the server shows in pg_stat_activity. The Grafana dashboard shipped in
docs/ queries only metrics and labels the exporter emits."""
import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from harness import (HERE, Case, _binary, check, count_backends, log, main, read_line)

DASHBOARD = os.path.join(HERE, "..", "..", "docs", "grafana-dashboard.json")


class Watchdog:
    """dyncoord --watchdog --metrics-listen 127.0.0.1:0 for case c: the port
    the kernel chose is read from its log."""

    def __init__(self, c):
        self.c = c
        run_dir = os.path.join(c.tmpdir(), "run")
        os.makedirs(run_dir, mode=0o700, exist_ok=True)
        self.log_path = os.path.join(c.tmpdir(), "watchdog.log")
        env = c.plain_env()
        env["DYNSHIM_RUN_DIR"] = run_dir
        self.env = env
        self.proc = subprocess.Popen(
            [_binary("DYNSHIM_IT_DYNCOORD", "dyncoord"), "--segment", c.segment, "--watchdog",
             "--interval", "0.2", "--metrics-listen", "127.0.0.1:0", "--log", self.log_path],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        c.procs.append(self.proc)
        deadline = time.monotonic() + 20
        self.url = None
        while self.url is None:
            if self.proc.poll() is not None:
                out, err = self.proc.communicate(timeout=10)
                check(False, f"the watchdog exited {self.proc.returncode}: {out}{err}")
            check(time.monotonic() < deadline, f"no 'serving metrics' line in {self._log()}")
            m = re.search(r"serving metrics at (http://127\.0\.0\.1:\d+/metrics)", self._log())
            if m:
                self.url = m.group(1)
            else:
                time.sleep(0.05)
        log(f"watchdog serves {self.url}")

    def _log(self):
        try:
            with open(self.log_path) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def get(self, url=None, method="GET"):
        """(status, headers, body) of one request by urllib."""
        req = urllib.request.Request(url or self.url, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.headers, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read().decode()

    def scrape(self):
        """{(name, frozenset(labels)): value} of every sample, and the text."""
        status, headers, body = self.get()
        check(status == 200, f"GET /metrics answered {status}: {body}")
        ctype = headers.get("Content-Type", "")
        check(ctype.startswith("text/plain") and "version=0.0.4" in ctype,
              f"Content-Type is {ctype!r}, not the Prometheus text format")
        samples = {}
        for fam in text_string_to_metric_families(body):
            for s in fam.samples:
                samples[(s.name, frozenset(s.labels.items()))] = s.value
        return samples, body

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=10)
        check(self.proc.returncode == 0,
              f"the watchdog exited {self.proc.returncode} on SIGTERM: {out}{err}")


def value(samples, name, **labels):
    for (n, ls), v in samples.items():
        d = dict(ls)
        if n == name and all(d.get(k) == want for k, want in labels.items()):
            return v
    return None


def holders(c, counts):
    """Starts holder.py per scraper with the given number of connections;
    returns the processes once every one holds its connections."""
    procs = []
    for name, n in counts.items():
        p = c.spawn_python("holder.py", n, scraper=name, stdin=subprocess.PIPE)
        ready = read_line(p, 60, f"holder.py of {name}")
        check(ready.startswith("ready "), f"holder.py of {name} said {ready!r}")
        procs.append(p)
    return procs


def finish(p):
    p.stdin.write("exit\n")
    p.stdin.flush()
    p.wait(30)
    check(p.returncode == 0, f"holder.py exited {p.returncode}")


def init_derived(c, pool_size):
    """dyncoord --init with only a pool size: the limits follow it."""
    r = subprocess.run([_binary("DYNSHIM_IT_DYNCOORD", "dyncoord"), "--segment", c.segment,
                        "--init", "--force", "--pool-size", str(pool_size)],
                       env=c.plain_env(), capture_output=True, text=True, timeout=30)
    check(r.returncode == 0, f"--init failed: {r.stdout}{r.stderr}")


def metrics_endpoint_serves_what_the_server_shows():
    with Case("metrics", pool_size=6, init=False) as c:
        init_derived(c, 6)
        c.start_sampler()
        w = Watchdog(c)
        alpha, beta = holders(c, {"alpha": 2, "beta": 1})
        samples, body = w.scrape()
        backends = count_backends(c.admin_dsn(), c.db)
        log(f"server shows {backends} backends; /metrics says held "
            f"{value(samples, 'dynshim_pool_held')}")
        check(backends == 3, f"the server shows {backends} client backends, not 3")
        check(value(samples, "dynshim_pool_held", segment=c.segment) == backends,
              f"dynshim_pool_held is not the server's {backends}:\n{body[:2000]}")
        check(value(samples, "dynshim_pool_size", segment=c.segment) == 6, "pool_size is not 6")
        # limits derived from pool_size 6: max_limit 4, soft_limit 3
        check(value(samples, "dynshim_pool_max_limit") == 4, "max_limit is not 75 % of 6")
        check(value(samples, "dynshim_pool_soft_limit") == 3, "soft_limit is not 50 % of 6")
        for name, held in (("alpha", 2), ("beta", 1)):
            got = value(samples, "dynshim_scraper_held", segment=c.segment, scraper=name)
            check(got == held, f"dynshim_scraper_held of {name} is {got}, not {held}")
            got = value(samples, "dynshim_scraper_connects_total", scraper=name)
            check(got == held, f"dynshim_scraper_connects_total of {name} is {got}, not {held}")
            got = value(samples, "dynshim_scraper_limit", scraper=name)
            check(got == 3, f"{name}'s limit with two active scrapers is {got}, not soft_limit 3")
        check(value(samples, "dynshim_info", segment=c.segment) == 1, "no dynshim_info")

        # a finished client's slot is gone from the next scrape, as from the server
        finish(alpha)
        deadline = time.monotonic() + 10
        while True:
            samples, _ = w.scrape()
            held = value(samples, "dynshim_pool_held")
            if held == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        backends = count_backends(c.admin_dsn(), c.db)
        check(held == 1 and backends == 1,
              f"after alpha finished: /metrics held {held}, server {backends} backends")
        check(value(samples, "dynshim_scraper_releases_total", scraper="alpha") == 2,
              "alpha's two releases are not counted")

        # other paths and methods
        status, _, _ = w.get(w.url.replace("/metrics", "/nothing"))
        check(status == 404, f"/nothing answered {status}")
        status, headers, _ = w.get(method="POST")
        check(status == 405 and "GET" in headers.get("Allow", ""), f"POST answered {status}")
        status, headers, body = w.get(method="HEAD")
        check(status == 200 and body == "", f"HEAD answered {status} with {len(body)} bytes")

        # a second watchdog on the same port is refused with the reason
        port = w.url.split(":")[2].split("/")[0]
        r = subprocess.run([_binary("DYNSHIM_IT_DYNCOORD", "dyncoord"), "--segment",
                            c.segment + "-other", "--watchdog", "--metrics-listen",
                            f"127.0.0.1:{port}"],
                           env=w.env, capture_output=True, text=True, timeout=30)
        check(r.returncode == 1 and "Address already in use" in r.stderr,
              f"a busy port gave exit {r.returncode}: {r.stderr}")
        finish(beta)
        c.check_server_view()

        # no segment: the scrape fails visibly, with the reason
        subprocess.run([_binary("DYNSHIM_IT_DYNCOORD", "dyncoord"), "--segment", c.segment,
                        "--destroy"], env=c.plain_env(), capture_output=True, timeout=30)
        status, _, body = w.get()
        check(status == 503 and c.segment in body, f"without a segment: {status} {body!r}")
        w.stop()


# Words of PromQL that are not metric names.
PROMQL_WORDS = {"sum", "by", "rate", "increase", "label_values", "max", "min", "avg", "without",
                "on", "ignoring", "count"}


def dashboard_queries():
    """Every PromQL text of the dashboard: panel targets and variables."""
    with open(DASHBOARD) as f:
        d = json.load(f)
    check(d.get("__inputs") and d["__inputs"][0]["pluginId"] == "prometheus",
          "the dashboard does not ask for its Prometheus data source on import")
    check(d.get("title") and d.get("uid") and d.get("panels"), "title, uid or panels missing")
    out = []
    for p in d["panels"]:
        for t in p.get("targets", []):
            out.append((p["title"], t["expr"]))
    for v in d["templating"]["list"]:
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        out.append((f"variable {v['name']}", q))
    return out


def grafana_dashboard_queries_name_metrics_the_exporter_emits():
    with Case("dashboard", pool_size=8, init=False) as c:
        init_derived(c, 8)
        c.start_sampler()
        w = Watchdog(c)
        # one scraper with a cap and a reserve, so that every family has samples
        r = subprocess.run([_binary("DYNSHIM_IT_DYNCOORD", "dyncoord"), "--segment", c.segment,
                            "--set", "scraper.alpha.max=3", "scraper.alpha.reserve=1"],
                           env=c.plain_env(), capture_output=True, text=True, timeout=30)
        check(r.returncode == 0, f"--set failed: {r.stderr}")
        procs = holders(c, {"alpha": 1, "beta": 2})
        samples, body = w.scrape()
        names = {n for n, _ in samples}
        labels = {k for _, ls in samples for k, _ in ls}
        queries = dashboard_queries()
        check(len(queries) >= 15, f"only {len(queries)} queries in the dashboard")
        used = set()
        for title, q in queries:
            # label names inside {...} and by (...), values in quotes removed
            bare = re.sub(r'"[^"]*"', '""', q)
            bare = re.sub(r"\[[^\]]*\]", "", bare)
            metrics = set(re.findall(r"\bdynshim_[a-z_]+\b", bare))
            check(metrics, f"{title}: the query names no dynshim metric: {q}")
            for m in metrics:
                check(m in names, f"{title}: {m} is not emitted by the exporter "
                      f"(emitted: {sorted(names)})")
            used |= metrics
            for group in re.findall(r"\{([^}]*)\}", bare) + re.findall(r"\bby \(([^)]*)\)", bare):
                for lab in re.findall(r"([a-z_]+)\s*(?:=~|!=|!~|=|,|$)", group):
                    check(lab in labels, f"{title}: label {lab} is not emitted ({sorted(labels)})")
            words = set(re.findall(r"\b[a-z_]+(?=\s*\()", bare)) - PROMQL_WORDS
            check(not words, f"{title}: unknown functions {words}")
        log(f"{len(queries)} queries use {len(used)} metrics, all emitted: {sorted(used)}")
        for must in ("dynshim_pool_held", "dynshim_pool_size", "dynshim_scraper_held",
                     "dynshim_scraper_waiting", "dynshim_scraper_timeouts_total",
                     "dynshim_scraper_wait_seconds_sum"):
            check(must in used, f"the dashboard does not show {must}")
        for p in procs:
            finish(p)
        w.stop()


if __name__ == "__main__":
    main({f.__name__: f for f in (metrics_endpoint_serves_what_the_server_shows,
                                  grafana_dashboard_queries_name_metrics_the_exporter_emits)})
