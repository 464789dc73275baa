"""Cluster mode (docs/cluster.md): three hosts, each in its own network
namespace with its own address, segment and agent (dyncoord --watchdog
--cluster), share one budget on one real server. A sampler on the server
counts every client backend of the cluster's database (the agents' own
connections included) and fails the test if the count ever exceeds the
budget.

Needs root and working network namespaces (ip netns); skipped otherwise.
The server of the fixture listens on every address and trusts
10.231.0.0/16, the namespaces' addresses."""
import json
import os
import shutil
import signal
import subprocess
import time

from harness import (CLIENTS, PYTHON, Case, Skip, _binary, check, collect, log, main,
                     preload_value, read_line)

BUDGET = 14
HOSTS = 3
INTERVAL = "0.3"


def sh(*args, check_rc=True):
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    if check_rc:
        check(r.returncode == 0, f"{' '.join(args)} failed: {r.stderr.strip()}")
    return r


class Net:
    """HOSTS network namespaces, each joined to this one by a veth pair:
    host i is 10.231.i.2 in namespace ns[i], the server side 10.231.i.1."""

    def __init__(self, hosts=HOSTS):
        tag = os.getpid() % 100000
        self.ns = [f"dsc{tag}h{i}" for i in range(1, hosts + 1)]
        self.outer = [f"dsc{tag}a{i}" for i in range(1, hosts + 1)]
        self.inner = [f"dsc{tag}b{i}" for i in range(1, hosts + 1)]

    def server_addr(self, i):
        return f"10.231.{i + 1}.1"

    def __enter__(self):
        if os.geteuid() != 0:
            raise Skip("network namespaces need root")
        if not shutil.which("ip"):
            raise Skip("no ip command (iproute2)")
        r = sh("ip", "netns", "add", self.ns[0], check_rc=False)
        if r.returncode != 0:
            raise Skip(f"ip netns add does not work here: {r.stderr.strip()}")
        try:
            for i, ns in enumerate(self.ns):
                if i:
                    sh("ip", "netns", "add", ns)
                sh("ip", "link", "add", self.outer[i], "type", "veth", "peer", "name",
                   self.inner[i])
                sh("ip", "link", "set", self.inner[i], "netns", ns)
                sh("ip", "addr", "add", f"{self.server_addr(i)}/24", "dev", self.outer[i])
                sh("ip", "link", "set", self.outer[i], "up")
                sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"10.231.{i + 1}.2/24", "dev",
                   self.inner[i])
                sh("ip", "netns", "exec", ns, "ip", "link", "set", self.inner[i], "up")
                sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def cut(self, i, up):
        sh("ip", "netns", "exec", self.ns[i], "ip", "link", "set", self.inner[i],
           "up" if up else "down")

    def __exit__(self, *exc):
        for i, ns in enumerate(self.ns):
            sh("ip", "netns", "del", ns, check_rc=False)
            sh("ip", "link", "del", self.outer[i], check_rc=False)
        return False


class Cluster:
    """The hosts' segments, agents and clients."""

    def __init__(self, c, net, budget=BUDGET, agent_user="postgres", client_user=None):
        self.c, self.net = c, net
        self.hosts, self.budget = len(net.ns), budget
        self.agent_user, self.client_user = agent_user, client_user
        self.dyncoord = _binary("DYNSHIM_IT_DYNCOORD", "dyncoord")
        self.seg = [f"{c.segment}-h{i + 1}" for i in range(self.hosts)]
        self.rundir = [os.path.join(c.tmpdir(), f"run-h{i + 1}") for i in range(self.hosts)]
        self.agents = [None] * self.hosts
        for d in self.rundir:
            os.mkdir(d, 0o700)

    def local_env(self, i):
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
        env["DYNSHIM_RUN_DIR"] = self.rundir[i]
        return env

    def conninfo(self, i):
        return (f"host={self.net.server_addr(i)} port={self.c.pg['PGPORT']} user={self.agent_user} "
                f"dbname={self.c.db}")

    def init(self):
        for i in range(self.hosts):
            # a host starts with one slot; its agent raises pool_size to its share
            sh(self.dyncoord, "--segment", self.seg[i], "--init", "--force", "--pool-size", "1",
               "--soft-limit", "1", "--max-limit", "1", "--wait-timeout", "60",
               "--idle-timeout", "60")

    def start_agent(self, i):
        log_path = os.path.join(self.c.tmpdir(), f"agent-h{i + 1}.log")
        self.agents[i] = subprocess.Popen(
            ["ip", "netns", "exec", self.net.ns[i], self.dyncoord, "--segment", self.seg[i],
             "--watchdog", "--interval", INTERVAL, "--cluster", "it", "--cluster-budget",
             str(self.budget), "--cluster-host", f"h{i + 1}", "--conninfo", self.conninfo(i),
             "--log", log_path], env=self.local_env(i), stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True)
        self.c.procs.append(self.agents[i])

    def kill_agent(self, i):
        self.agents[i].send_signal(signal.SIGKILL)
        self.agents[i].wait(10)

    def stats(self, i):
        r = subprocess.run([self.dyncoord, "--segment", self.seg[i], "--stats", "--json"],
                           env=self.local_env(i), capture_output=True, text=True, timeout=30)
        check(r.returncode == 0, f"--stats of host {i + 1}: {r.stderr}")
        return json.loads(r.stdout)

    def pool(self, i):
        return self.stats(i)["pool_size"]

    def client_env(self, i, scraper):
        env = self.c.env(scraper)
        env.update(PGHOST=self.net.server_addr(i), DYNSHIM_SEGMENT=self.seg[i])
        if self.client_user:
            env["PGUSER"] = self.client_user
        return env

    def cycler(self, i, threads, hold=0.2):
        env = self.client_env(i, f"cycler{i + 1}")
        p = self.c.spawn(["ip", "netns", "exec", self.net.ns[i], PYTHON, "-u",
                          os.path.join(CLIENTS, "cycler.py"), str(threads), str(hold)],
                         env=env, stdin=subprocess.PIPE)
        check(read_line(p, 30, f"cycler on host {i + 1}") == "started", "cycler did not start")
        return p

    def holder(self, i, n):
        env = self.client_env(i, f"holder{i + 1}")
        p = self.c.spawn(["ip", "netns", "exec", self.net.ns[i], PYTHON, "-u",
                          os.path.join(CLIENTS, "holder.py"), str(n)], env=env,
                         stdin=subprocess.PIPE)
        check(read_line(p, 30, f"holder on host {i + 1}").startswith("ready"),
              "holder did not start")
        return p

    def stop(self, p, what):
        p.stdin.write("quit\n")
        p.stdin.flush()
        return collect(p, what, timeout=30)

    def agent_log(self, i):
        path = os.path.join(self.c.tmpdir(), f"agent-h{i + 1}.log")
        if not os.path.exists(path):
            return ""
        with open(path) as f:
            return f.read()

    def agent_logs(self):
        out = []
        for i in range(self.hosts):
            path = os.path.join(self.c.tmpdir(), f"agent-h{i + 1}.log")
            if os.path.exists(path):
                with open(path) as f:
                    out.append(f"--- agent h{i + 1}\n" + f.read()[-3000:])
        return "\n".join(out)

    def destroy(self):
        for s in self.seg:
            sh(self.dyncoord, "--segment", s, "--destroy", check_rc=False)


def until(cl, what, cond, limit):
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if cond():
            return time.monotonic() - t0
        time.sleep(0.1)
    views = []
    for i in range(cl.hosts):
        st = cl.stats(i)
        views.append(f"host {i + 1}: pool {st['pool_size']}, held {st['held']}, waiting "
                     f"{st['waiting']}, agent {st.get('cluster_agent')}, cluster "
                     f"{st.get('cluster', {}).get('hosts')}")
    check(False, f"{what} not reached within {limit} s\n" + "\n".join(views) + "\n"
          + cl.agent_logs())


# What a client sees while its host is cut off from the server.
NETWORK_ERRORS = ("timeout expired", "timed out", "could not connect", "server closed the "
                  "connection", "no route to host", "network is unreachable",
                  "connection to server", "SSL SYSCALL", "could not receive data",
                  "could not send data", "terminating connection")
# The server refusing a connection: the budget was overshot.
REFUSALS = ("too many connections", "remaining connection slots")


def no_errors(result, what, allowed=()):
    """Fails on any error of a cycler's result but those matching allowed;
    never on a refusal by the server."""
    bad = [e for e in result["errors"]
           if any(r in e for r in REFUSALS) or not any(a.lower() in e.lower() for a in allowed)]
    check(not bad, f"{what}: {result['n_errors']} errors, {len(bad)} of them not expected: {bad[:5]}")


def hosts_of(stats):
    return {h["host"]: h for h in stats["cluster"]["hosts"]}


def backends_of(c, i):
    return c.admin(f"SELECT count(*) FROM pg_stat_activity WHERE client_addr = "
                   f"'10.231.{i + 1}.2' AND backend_type = 'client backend'")[0][0]


def three_hosts_share_one_budget_through_the_server():
    with Net() as net, Case("cluster", pool_size=BUDGET, init=False) as c:
        cl = Cluster(c, net)
        try:
            run_scenarios(c, net, cl)
        except BaseException:
            log(cl.agent_logs())
            raise
        finally:
            for p in c.procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            cl.destroy()


def agent_moves_derived_limits_with_pool_size():
    """The agent sets pool_size to the host's share: limits the operator did
    not set follow it (75 % and 50 %), limits set keep their proportion.
    One host per cluster, over 127.0.0.1: no network namespaces needed."""
    with Case("cluster_limits", pool_size=8, init=False) as c:
        dyncoord = _binary("DYNSHIM_IT_DYNCOORD", "dyncoord")
        conninfo = (f"host=127.0.0.1 port={c.pg['PGPORT']} user={c.pg['PGUSER']} "
                    f"dbname={c.db}")
        hosts = {"derived": [], "explicit": ["--soft-limit", "1", "--max-limit", "1"]}
        agents, env = [], {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
        rundir = os.path.join(c.tmpdir(), "run")
        os.mkdir(rundir, 0o700)
        env["DYNSHIM_RUN_DIR"] = rundir
        try:
            for name, limits in hosts.items():
                seg = f"{c.segment}-{name}"
                sh(dyncoord, "--segment", seg, "--init", "--force", "--pool-size", "1", *limits)
                agents.append(subprocess.Popen(
                    [dyncoord, "--segment", seg, "--watchdog", "--interval", INTERVAL,
                     "--cluster", f"limits-{name}", "--cluster-budget", "8", "--conninfo",
                     conninfo, "--log", os.path.join(c.tmpdir(), f"agent-{name}.log")],
                    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
                c.procs.append(agents[-1])

            def stats(name):
                r = subprocess.run([dyncoord, "--segment", f"{c.segment}-{name}", "--stats",
                                    "--json"], env=env, capture_output=True, text=True,
                                   timeout=30)
                check(r.returncode == 0, f"--stats of {name}: {r.stderr}")
                return json.loads(r.stdout)

            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if all(stats(n)["pool_size"] == 8 for n in hosts):
                    break
                time.sleep(0.1)
            d, e = stats("derived"), stats("explicit")
            log(f"derived: pool {d['pool_size']} soft {d['soft_limit']} max {d['max_limit']}; "
                f"explicit: pool {e['pool_size']} soft {e['soft_limit']} max {e['max_limit']}")
            check(d["pool_size"] == 8 and e["pool_size"] == 8,
                  f"the agents did not raise the pools to the budget: {d['pool_size']}, "
                  f"{e['pool_size']}")
            check((d["soft_limit"], d["max_limit"], d["soft_limit_derived"],
                   d["max_limit_derived"]) == (4, 6, True, True),
                  f"derived limits of a pool of 8 are not 4 and 6: {d}")
            check((e["soft_limit"], e["max_limit"]) == (8, 8),
                  f"limits set to the whole pool did not keep their proportion: {e}")
            for a in agents:
                a.send_signal(signal.SIGTERM)
                out, err = a.communicate(timeout=10)
                check(a.returncode == 0, f"an agent exited {a.returncode}: {err}")
        finally:
            for name in hosts:
                sh(dyncoord, "--segment", f"{c.segment}-{name}", "--destroy", check_rc=False)


def run_scenarios(c, net, cl):
    cl.init()
    c.start_sampler()
    for i in range(HOSTS):
        cl.start_agent(i)
    # every host joins with a slot for its agent, then the idle cluster's
    # budget is spread over the pools (each pool includes its agent's slot)
    until(cl, "three hosts joined", lambda: len(cl.stats(0).get("cluster", {}).get("hosts", []))
          == HOSTS and sum(cl.pool(i) for i in range(HOSTS)) == BUDGET, 10)
    log(f"joined: pools {[cl.pool(i) for i in range(HOSTS)]}")

    # 1. demand on host 1, then on host 2: the share follows
    a = cl.cycler(0, 12)
    t = until(cl, "host 1 at its max-min share (14 - 2 - 2 = 10)",
              lambda: cl.pool(0) == 10 and cl.stats(0)["held"] == 10, 10)
    log(f"host 1 reached a pool of 10 in {t:.2f} s; pools {[cl.pool(i) for i in range(HOSTS)]}")
    no_errors(cl.stop(a, "cycler on host 1"), "cycler on host 1")
    b = cl.cycler(1, 12)
    t = until(cl, "host 2 at 10 and host 1 back to 2",
              lambda: cl.pool(1) == 10 and cl.pool(0) == 2 and cl.stats(1)["held"] == 10, 10)
    log(f"demand moved to host 2 in {t:.2f} s")
    c.check_server_view()

    # 2. host 2's agent is killed while its clients keep their connections:
    # host 2 grants nothing new, and nobody gains its claim until the server
    # shows its backends gone
    no_errors(cl.stop(b, "cycler on host 2"), "cycler on host 2")
    holder = cl.holder(1, 6)
    # (while host 2's share shrinks the holder may get fewer backends than
    # connections: the shim releases one of its idle ones to connect another)
    until(cl, "host 2's claim reported with its agent's slot and the holder's",
          lambda: hosts_of(cl.stats(0))["h2"]["held"] >= 5, 10)
    before = cl.stats(1)["held"]
    cl.kill_agent(1)
    e = cl.cycler(0, 2)  # host 1 wants its agent's slot and 2 more
    d = cl.cycler(2, 12)
    time.sleep(3)
    st = cl.stats(2)
    h2 = hosts_of(st)["h2"]
    n2 = backends_of(c, 1)
    check(h2["state"] == "agent gone" and h2["claim"] >= n2 >= 4,
          f"host 2 shows as {h2} with {n2} backends")
    check(st["pool_size"] + cl.pool(0) + h2["claim"] <= BUDGET,
          f"host 3 grew to {st['pool_size']} while host 2 claims {h2['claim']} with "
          f"{backends_of(c, 1)} backends\n{cl.agent_logs()}")
    s2 = cl.stats(1)
    check(s2["cluster_agent"] == "gone" and s2["held"] < before,
          f"host 2 without its agent: {s2['cluster_agent']}, held {s2['held']} (was {before})")
    r = subprocess.run([cl.dyncoord, "--segment", cl.seg[1], "--health"],
                       env=cl.local_env(1), capture_output=True, text=True, timeout=30)
    check(r.returncode == 1 and "cluster agent" in r.stderr,
          f"--health of host 2 without its agent: exit {r.returncode}: {r.stderr}")
    log(f"with host 2's agent dead and {backends_of(c, 1)} of its backends left, host 3 "
        f"stays at {st['pool_size']} (host 2 claims {h2['claim']})")
    holder.stdin.write("exit\n")
    holder.stdin.flush()
    holder.wait(10)
    t = until(cl, "host 3 growing into host 2's freed share (14 - 3 - 1 seat = 10)",
              lambda: cl.pool(2) == 10 and cl.pool(0) == 3, 10)
    log(f"host 2's backends gone: host 3 at 10 after {t:.2f} s")
    c.check_server_view()

    # 3. host 2's agent restarts, its scrapers already waiting: they get
    # nothing until the agent is back in the cluster, then its share comes
    # from host 3 as host 3's usage falls
    b = cl.cycler(1, 12)
    time.sleep(1)
    check(cl.stats(1)["held"] == 0, "host 2 granted slots with its agent gone")
    cl.start_agent(1)
    t = until(cl, "hosts 2 and 3 sharing the rest (pools 5 and 6)",
              lambda: sorted([cl.pool(1), cl.pool(2)]) == [5, 6] and cl.pool(0) == 3, 15)
    log(f"restarted agent of host 2 got its share in {t:.2f} s")
    c.check_server_view()

    # 4. host 3 is cut off from the server: it grants nothing new beyond
    # what it holds, and the others do not gain its share
    net.cut(2, up=False)
    t = until(cl, "host 3 unreachable with pool_size at most what it holds",
              lambda: cl.stats(2)["cluster"]["state"] == "unreachable"
              and cl.pool(2) <= max(1, cl.stats(2)["held"]), 15)
    log(f"host 3 cut off: state unreachable, pool {cl.pool(2)} after {t:.2f} s")
    time.sleep(1)
    check(cl.pool(1) <= 6, f"host 2 grew to {cl.pool(1)} while host 3's backends remain")
    net.cut(2, up=True)
    until(cl, "host 3 back in the cluster", lambda: cl.stats(2)["cluster"]["state"] == "live", 20)
    for p, what in ((e, "host 1"), (b, "host 2"), (d, "host 3")):
        r = cl.stop(p, f"cycler on {what}")
        log(f"cycler on {what}: {r['ok']} cycles, {r['n_errors']} errors")
        # host 3's clients lose the server while it is cut off, and only then
        no_errors(r, f"cycler on {what}", NETWORK_ERRORS if what == "host 3" else ())
    c.check_pool_filled("the three hosts")
    check_stats_formats(cl)
    # agents stop cleanly on SIGTERM
    for i in range(HOSTS):
        cl.agents[i].send_signal(signal.SIGTERM)
        rc = cl.agents[i].wait(10)
        check(rc == 0, f"agent of host {i + 1} exited {rc} on SIGTERM: "
              f"{cl.agents[i].stderr.read()}")
    log(c.sampler.summary())


def check_stats_formats(cl):
    """--stats shows the cluster in every format."""
    r = subprocess.run([cl.dyncoord, "--segment", cl.seg[0], "--stats"], env=cl.local_env(0),
                       capture_output=True, text=True, timeout=30)
    check(r.returncode == 0 and f"cluster it: budget {BUDGET}" in r.stdout
          and all(f"h{i + 1} " in r.stdout for i in range(HOSTS)),
          f"--stats does not show the cluster:\n{r.stdout}{r.stderr}")
    r = subprocess.run([cl.dyncoord, "--segment", cl.seg[0], "--stats", "--prometheus"],
                       env=cl.local_env(0), capture_output=True, text=True, timeout=30)
    from prometheus_client.parser import text_string_to_metric_families
    got = {s.name: s for f in text_string_to_metric_families(r.stdout) for s in f.samples}
    check(got.get("dynshim_cluster_budget") and got["dynshim_cluster_budget"].value == BUDGET,
          f"--prometheus has no cluster budget of {BUDGET}:\n{r.stdout[-1500:]}")


AGENT_ROLE = "dynshim_it_agent"
SCRAPER_ROLE = "dynshim_it_scr"


def agent_without_pg_read_all_stats_frees_no_claim_the_server_would_refuse():
    """Two hosts, budget 8, and a server that admits exactly 8 ordinary
    connections to the cluster's database. The agents' role is not a
    member of pg_read_all_stats, so the client addresses of the scrapers'
    sessions (another role) are hidden from it. Host 1's agent is killed
    while its clients sit in long queries; host 2 then asks for the whole
    budget. Host 1's claim must stand (the server must refuse nothing),
    the agent must say which privilege it lacks; once granted it, the
    claim is freed as soon as host 1's backends are gone."""
    budget = 8
    with Net(hosts=2) as net, Case("clusterpriv", pool_size=budget, init=False) as c:
        for role in (AGENT_ROLE, SCRAPER_ROLE):
            c.admin(f"DO $$ BEGIN CREATE ROLE {role} LOGIN; "
                    f"EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        c.admin(f"REVOKE pg_read_all_stats FROM {AGENT_ROLE}")
        c.admin(f"GRANT CREATE ON DATABASE {c.db} TO {AGENT_ROLE}")
        # the server's own backstop: ordinary roles get 8 connections
        c.admin(f"ALTER DATABASE {c.db} CONNECTION LIMIT {budget}")
        cl = Cluster(c, net, budget=budget, agent_user=AGENT_ROLE, client_user=SCRAPER_ROLE)
        try:
            hidden_backends_keep_a_dead_hosts_claim(c, cl, budget)
        except BaseException:
            log(cl.agent_logs())
            raise
        finally:
            for p in c.procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            cl.destroy()
            c.admin(f"REVOKE pg_read_all_stats FROM {AGENT_ROLE}")
            c.admin(f"DROP DATABASE IF EXISTS {c.db} WITH (FORCE)")
            for role in (AGENT_ROLE, SCRAPER_ROLE):
                c.admin(f"DROP OWNED BY {role}")
                c.admin(f"DROP ROLE IF EXISTS {role}")


def sleeping_backends(c, i):
    return c.admin(f"SELECT count(*) FROM pg_stat_activity WHERE client_addr = "
                   f"'10.231.{i + 1}.2' AND backend_type = 'client backend' AND state = 'active' "
                   f"AND query LIKE 'SELECT pg_sleep%'")[0][0]


def hidden_backends_keep_a_dead_hosts_claim(c, cl, budget):
    cl.init()
    c.start_sampler()
    for i in range(cl.hosts):
        cl.start_agent(i)
    until(cl, "two hosts joined", lambda: len(cl.stats(0).get("cluster", {}).get("hosts", []))
          == 2 and cl.pool(0) + cl.pool(1) == budget, 10)
    for i in range(cl.hosts):
        log_text = cl.agent_log(i)
        check("pg_read_all_stats" in log_text and AGENT_ROLE in log_text,
              f"agent of host {i + 1} did not name the privilege its role lacks:\n{log_text}")
    # host 1 takes all but host 2's floor (its agent and one client): its
    # agent and 5 clients, which then sit in long queries
    holder = cl.holder(0, 5)
    holder.stdin.write("sleepall 600\n")
    holder.stdin.flush()
    check(read_line(holder, 30, "holder on host 1") == "sleeping", "holder did not sleep")
    until(cl, "host 1's 5 clients in long queries", lambda: sleeping_backends(c, 0) == 5, 10)
    claim1 = budget - 2
    until(cl, f"host 2's agent seeing host 1's claim of {claim1}",
          lambda: hosts_of(cl.stats(1))["h1"]["claim"] == claim1, 10)
    cl.kill_agent(0)
    # host 2 asks for the whole budget for 10 rounds of its agent
    cyc = cl.cycler(1, budget)
    t0 = time.monotonic()
    peak = 0
    while time.monotonic() - t0 < 10 * float(INTERVAL) + 1:
        peak = max(peak, cl.pool(1))
        time.sleep(0.05)
    h1 = hosts_of(cl.stats(1))["h1"]
    check(h1["state"] == "agent gone" and h1["claim"] == claim1,
          f"with host 1's agent dead and its backends hidden, host 2's agent shows it as {h1}")
    check(peak <= budget - claim1,
          f"host 2 grew to {peak} while host 1 claims {claim1} of {budget}\n{cl.agent_log(1)}")
    check(sleeping_backends(c, 0) == 5, "host 1's long queries ended early")
    c.check_server_view()
    log(f"hidden backends: host 2 stayed at {peak}, host 1 keeps its claim of {claim1}")

    # with the privilege, host 1's claim stays while its backends run and
    # is freed once they are gone
    c.admin(f"GRANT pg_read_all_stats TO {AGENT_ROLE}")
    time.sleep(5 * float(INTERVAL))
    check(cl.pool(1) <= budget - claim1 and hosts_of(cl.stats(1))["h1"]["claim"] == claim1,
          f"host 2's agent freed host 1's claim while its backends run: {cl.stats(1)}")
    c.admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE client_addr = "
            "'10.231.1.2' AND backend_type = 'client backend'")
    t = until(cl, f"host 2 growing into host 1's freed claim ({budget} - 1 seat)",
              lambda: cl.pool(1) == budget - 1, 10)
    log(f"host 1's backends gone: host 2 at {budget - 1} after {t:.2f} s")
    no_errors(cl.stop(cyc, "cycler on host 2"), "cycler on host 2")
    c.check_server_view()
    check("sees every session's client address again" in cl.agent_log(1),
          f"agent of host 2 did not log that it sees every session again:\n{cl.agent_log(1)}")


if __name__ == "__main__":
    main({f.__name__: f for f in (three_hosts_share_one_budget_through_the_server,
                                  agent_moves_derived_limits_with_pool_size,
                                  agent_without_pg_read_all_stats_frees_no_claim_the_server_would_refuse)})
