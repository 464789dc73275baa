"""Chaos: 60 client processes (psycopg2, psycopg 3, psql, pgbench -C) under
the shim against a server whose max_connections is pool_size +
superuser_reserved_connections, while clients are SIGKILLed at random
(also in the middle of long queries, and helpers while they hold the
segment's lock), SIGSTOPped and continued, and pool_size moves up and down
with idle release on.

Passes when
- no sample of the server's view (client backends of the test database,
  taken every 10 ms by a process of its own) exceeds the cap allowed at
  that moment: allowed(t) is the cap in force at t, except that after the
  cap is lowered the old (higher) one stays allowed until dyncoord --stats
  --json shows held <= the new cap (connections granted under the old cap
  may still exist until then). A sample counts from the moment its query
  was sent, a change from the moment dyncoord returned: a sample sent after
  that moment saw a server state after it;
- no client ever got "too many clients", "too many connections for role" or
  "remaining connection slots are reserved" from the server, nor any other
  error (client stderr is empty): the clients' role's CONNECTION LIMIT
  follows the cap allowed at each moment (raised before pool_size is raised,
  lowered once held is within a lowered pool_size), so the server itself
  refuses a connect above it. The sampler's density (gaps between samples)
  is the machine's and is logged, not a pass condition;
- every death inside the segment's lock was repaired (lock repairs >= lock
  holders killed), and after everything stops: held = 0, no lease left
  (waiting = 0, draining = 0, no process registered), no client backend
  left on the server, dyncoord --health exits 0."""
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import psycopg2

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

from harness import (PYTHON, Case, Failure, Skip, check, log, main,  # noqa: E402
                     native_clients_usable)

CLIENTS = os.path.join(HERE, "clients")
POOL_SIZE = 10  # the server admits exactly this many client connections
# The test's own connections to the server (superuser, database postgres):
# the sampler's and one for everything else. They take ordinary slots, not
# reserved ones, so the server's max_connections is POOL_SIZE +
# superuser_reserved_connections + MONITORS (CMakeLists.txt passes 15).
MONITORS = 2
CAPS = range(4, POOL_SIZE + 1)
N_CLIENTS = 60
MIX = [("psycopg2", 17), ("psycopg3", 15), ("psql", 15), ("pgbench", 10), ("idler", 3)]
RUN_SECONDS = float(os.environ.get("CHAOS_SECONDS", "100"))
SAMPLE_INTERVAL = 0.005
ROLE = "chaos"
SERVER_REFUSALS = ("too many clients", "too many connections for role",
                   "remaining connection slots are reserved")

SAMPLER = r"""
import os, sys, time, psycopg2
dsn, db, out = sys.argv[1:4]
conn = psycopg2.connect(dsn)
conn.autocommit = True
cur = conn.cursor()
cur.execute("SELECT pg_backend_pid()")
backend = cur.fetchone()[0]
# this process samples on time (real-time), its backend is only niced: a
# real-time backend spins in pg_stat_activity's read of an entry that a
# preempted backend is writing, and starves that writer (200 ms stalls)
try:
    os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))
except OSError:
    try:
        os.setpriority(os.PRIO_PROCESS, 0, -10)
    except OSError:
        pass
try:
    os.setpriority(os.PRIO_PROCESS, backend, -10)
except OSError:
    pass
f = open(out, "w")
print("ready", flush=True)
q = ("SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
     " AND backend_type = 'client backend'")
while True:
    t = time.monotonic()
    cur.execute(q, (db,))
    f.write(f"{t:.6f} {cur.fetchone()[0]}\n")
    f.flush()
    d = SAMPLE - (time.monotonic() - t)
    if d > 0:
        time.sleep(d)
""".replace("SAMPLE", repr(SAMPLE_INTERVAL))


def dyncoord(c, *args, timeout=30):
    return subprocess.run([os.environ["DYNSHIM_IT_DYNCOORD"], "--segment", c.segment, *args],
                          capture_output=True, text=True, timeout=timeout)


def stats(c):
    r = dyncoord(c, "--stats", "--json")
    check(r.returncode == 0, f"dyncoord --stats failed: {r.stderr}")
    return json.loads(r.stdout)


def check_server_is_tight(c):
    """With the test's own connections open, the server admits exactly
    POOL_SIZE connections of the clients' role, not one more."""
    dsn = c.admin_dsn(c.db).replace(f"user={c.pg['PGUSER']}", f"user={ROLE}")
    conns = []
    try:
        for _ in range(POOL_SIZE):
            conns.append(psycopg2.connect(dsn))
        try:
            psycopg2.connect(dsn).close()
            raise Failure(f"the server admitted a client connection beyond {POOL_SIZE}")
        except psycopg2.OperationalError as e:
            check(any(s in str(e) for s in SERVER_REFUSALS), f"unexpected refusal: {e}")
    finally:
        for x in conns:
            x.close()
    end = time.monotonic() + 10
    while c.admin(f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{c.db}'")[0][0]:
        check(time.monotonic() < end, "the check's connections did not go away")
        time.sleep(0.02)


class Chaos:
    def __init__(self, c):
        self.c = c
        self.dir = c.tmpdir()
        self.clients = {}  # index -> (Popen, kind, stderr file)
        self.next_index = 0
        self.stderr_files = []
        # pid -> time to continue. A thread of its own continues them on
        # time: the main loop may wait (dyncoord --stats, a lock holder) for
        # the segment's lock, which a stopped client may hold.
        self.stopped = {}
        self.stopped_lock = threading.Lock()
        self.done = threading.Event()
        self.continuer = threading.Thread(target=self._continue_loop, daemon=True)
        self.continuer.start()
        self.counts = {"spawned": 0, "kills": 0, "kills_long_query": 0, "kills_in_lock": 0,
                       "stops": 0, "cap_changes": 0, "exited": 0}
        self.cap = POOL_SIZE
        self.allowed = [(0.0, POOL_SIZE)]  # (monotonic time from which, cap allowed)
        self.pending = None  # a lowered cap not yet reached by held
        self.limits_set = 0  # changes of the clients' role's CONNECTION LIMIT
        self.peak_held = 0
        self.end = time.time() + RUN_SECONDS
        self.conn = None
        self.script = os.path.join(self.dir, "pgbench.sql")
        with open(self.script, "w") as f:
            f.write("\\set ms random(0, 40)\nSELECT pg_sleep(:ms / 1000.0);\n")

    def admin(self, sql):
        """One connection for all of the test's own queries (see MONITORS)."""
        if self.conn is None:
            self.conn = psycopg2.connect(self.c.admin_dsn())
            self.conn.autocommit = True
        with self.conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall() if cur.description else None

    def env(self, kind, index):
        scraper = {"idler": f"idler-{index}"}.get(kind, kind)
        return self.c.env(scraper, PGUSER=ROLE, PGAPPNAME=f"chaos-{index}",
                          CHAOS_END=f"{self.end:.3f}", DYNSHIM_WAIT_TIMEOUT=None)

    def spawn(self, kind):
        i = self.next_index
        self.next_index += 1
        if kind in ("psycopg2", "psycopg3"):
            args = [PYTHON, os.path.join(CLIENTS, "pyclient.py"), kind]
        elif kind == "idler":
            args = [PYTHON, os.path.join(CLIENTS, "pyclient.py"), "psycopg2", "idler"]
        elif kind == "psql":
            long = random.random() < 0.3
            sleep = random.uniform(2, 5) if long else random.uniform(0, 0.3)
            mark = "/*long*/ " if long else ""
            args = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c",
                    f"SELECT {mark}pg_sleep({sleep:.2f})", "-c", "SELECT 1"]
        else:
            # a thread per client: one thread with two clients would hold
            # one connection while its connect for the other waits for a slot
            args = ["pgbench", "-n", "-C", "-c", "2", "-j", "2", "-T",
                    str(random.randint(3, 10)), "-f", self.script]
        path = os.path.join(self.dir, f"client-{i}-{kind}.err")
        err = open(path, "w")
        p = subprocess.Popen(args, env=self.env(kind, i), stdout=subprocess.DEVNULL,
                             stderr=err, stdin=subprocess.DEVNULL)
        err.close()
        self.stderr_files.append(path)
        self.clients[i] = (p, kind)
        self.counts["spawned"] += 1

    def reap(self, respawn):
        for i, (p, kind) in list(self.clients.items()):
            if p.poll() is not None:
                del self.clients[i]
                with self.stopped_lock:
                    self.stopped.pop(p.pid, None)
                self.counts["exited"] += 1
                if respawn:
                    self.spawn(kind)

    def kill(self, i, what):
        p, _ = self.clients[i]
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            self.counts["kills"] += 1
            if what:
                self.counts[what] += 1

    def kill_random(self):
        live = [i for i, (p, _) in self.clients.items() if p.poll() is None]
        if live:
            self.kill(random.choice(live), None)

    def kill_long_query(self):
        """Kills a client whose long query runs now (the server's view)."""
        rows = self.admin(
            "SELECT application_name FROM pg_stat_activity WHERE state = 'active' "
            f"AND datname = '{self.c.db}' AND query LIKE '%/*long*/%' "
            "AND now() - query_start > interval '300 ms'")
        ids = [int(r[0].split("-")[1]) for r in rows if r[0].startswith("chaos-")]
        ids = [i for i in ids if i in self.clients]
        if ids:
            self.kill(random.choice(ids), "kills_long_query")

    def kill_in_lock(self):
        mode = random.choice(["plain", "scribble"])
        p = subprocess.Popen([os.environ["CHAOS_LOCK_HOLDER"], self.c.segment, mode],
                             stdout=subprocess.PIPE, text=True)
        line = p.stdout.readline().strip()
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        check(line == "locked", f"lock_holder said {line!r} (exit {p.returncode})")
        self.counts["kills_in_lock"] += 1

    def stop_random(self):
        with self.stopped_lock:
            live = [p for p, _ in self.clients.values() if p.poll() is None and
                    p.pid not in self.stopped]
            if live:
                p = random.choice(live)
                os.kill(p.pid, signal.SIGSTOP)
                # shorter than the 5 s a locker waits for the segment's lock
                self.stopped[p.pid] = time.monotonic() + random.uniform(0.05, 1.5)
                self.counts["stops"] += 1

    def continue_due(self, everyone=False):
        with self.stopped_lock:
            now = time.monotonic()
            for pid, due in list(self.stopped.items()):
                if everyone or now >= due:
                    try:
                        os.kill(pid, signal.SIGCONT)
                    except ProcessLookupError:
                        pass
                    del self.stopped[pid]

    def _continue_loop(self):
        while not self.done.wait(0.005):
            self.continue_due()

    def stop_continuing(self):
        """Continues every stopped client and ends the continuing thread."""
        self.done.set()
        self.continuer.join()
        self.continue_due(everyone=True)

    def server_limit(self, n):
        """The server admits n connections of the clients' role: it refuses
        any connect above the cap allowed at that moment."""
        self.admin(f"ALTER ROLE {ROLE} CONNECTION LIMIT {n}")
        self.limits_set += 1

    def set_cap(self, new):
        soft = max(1, new // 2)
        if new > self.allowed[-1][1]:
            self.server_limit(new)  # the server admits more first
        t = time.monotonic()
        if new >= self.allowed[-1][1] and self.pending is None:
            self.allowed.append((t, new))  # nothing is granted above the old cap before
        r = dyncoord(self.c, "--set", f"pool_size={new}", f"max_limit={new}",
                     f"soft_limit={soft}")
        check(r.returncode == 0, f"dyncoord --set pool_size={new} failed: {r.stderr}")
        log(f"pool_size {self.cap} -> {new}")
        if new < self.allowed[-1][1] or self.pending is not None:
            self.pending = new
        self.cap = new
        self.counts["cap_changes"] += 1

    def poll_stats(self):
        st = stats(self.c)
        t = time.monotonic()  # the snapshot was taken before this
        self.peak_held = max(self.peak_held, st["held"])
        if self.pending is not None and st["held"] <= st["pool_size"]:
            self.allowed.append((t, st["pool_size"]))
            self.pending = None
            # held covers every backend of the clients (a slot is held until
            # its backend is gone), so the server may now refuse beyond it
            self.server_limit(st["pool_size"])
        return st

    def allowed_at(self, t):
        cap = self.allowed[0][1]
        for since, c in self.allowed:
            if since <= t:
                cap = c
            else:
                break
        return cap


def chaos_60_clients_kills_stops_and_cap_changes():
    if not native_clients_usable():
        raise Skip("psql and pgbench hang at exit with libasan preloaded")
    with Case("chaos", pool_size=POOL_SIZE, wait_timeout=120, idle_timeout=1,
              sample=False) as c:
        c.admin(f"DO $$ BEGIN CREATE ROLE {ROLE} LOGIN; "
                "EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        c.admin(f"ALTER ROLE {ROLE} CONNECTION LIMIT {POOL_SIZE}")  # follows the cap
        r = dyncoord(c, "--set", "idle_release=on")
        check(r.returncode == 0, f"dyncoord --set idle_release=on: {r.stderr}")
        (reserved,), = c.admin("SHOW superuser_reserved_connections")
        (max_conn,), = c.admin("SHOW max_connections")
        check(int(max_conn) == POOL_SIZE + int(reserved) + MONITORS,
              f"the server has max_connections {max_conn}, not pool_size {POOL_SIZE} + "
              f"{reserved} reserved + {MONITORS} for the test itself")
        ch = Chaos(c)
        ch.admin("SELECT 1")
        samples_path = os.path.join(ch.dir, "samples")
        sampler = subprocess.Popen([PYTHON, "-c", SAMPLER, c.admin_dsn(), c.db, samples_path],
                                   stdout=subprocess.PIPE, text=True,
                                   env={k: v for k, v in os.environ.items()
                                        if k != "LD_PRELOAD"})
        try:
            check(sampler.stdout.readline().strip() == "ready", "the sampler did not start")
            log("sampler started")
            check_server_is_tight(c)
            log("the server admits exactly pool_size client connections")
            t0 = time.monotonic()
            ch.end = time.time() + RUN_SECONDS
            kinds = [k for k, n in MIX for _ in range(n)]
            check(len(kinds) == N_CLIENTS, "the mix is not 60 clients")
            for k in kinds:
                ch.spawn(k)
            log(f"{N_CLIENTS} clients started; chaos for {RUN_SECONDS:.0f} s")
            # (action, first at, next after a random delay in this range, s)
            events = [
                (ch.kill_random, 1.0, (0.2, 0.8)),
                (ch.kill_long_query, 2.0, (0.5, 2.0)),
                (ch.kill_in_lock, 1.5, (0.5, 2.0)),
                (ch.stop_random, 0.5, (0.2, 0.8)),
                (lambda: ch.set_cap(random.choice([x for x in CAPS if x != ch.cap])), 5.0,
                 (4, 9)),
            ]
            due = [t0 + first for _, first, _ in events]
            next_stats = t0
            while time.time() < ch.end:
                now = time.monotonic()
                ch.reap(respawn=True)
                for k, (action, _, delay) in enumerate(events):
                    if now >= due[k]:
                        action()
                        due[k] = now + random.uniform(*delay)
                if now >= next_stats:
                    ch.poll_stats()  # closely while a lowered cap is not reached yet
                    next_stats = now + (0.03 if ch.pending is not None else 0.5)
                time.sleep(0.01)
            # wind down: everyone continues; clients stop at CHAOS_END
            ch.stop_continuing()
            if ch.cap != POOL_SIZE:
                ch.set_cap(POOL_SIZE)
            deadline = time.monotonic() + 60
            while ch.clients and time.monotonic() < deadline:
                ch.reap(respawn=False)
                ch.poll_stats()
                time.sleep(0.1)
            left = [(kind, p.pid) for p, kind in ch.clients.values()]
            for p, _ in ch.clients.values():
                p.kill()
                p.wait()
            check(not left, f"clients still running 60 s after the end: {left}")
            # slots of the last clients come back once their backends are gone
            deadline = time.monotonic() + 20
            while True:
                st = ch.poll_stats()
                backends = ch.admin(f"SELECT count(*) FROM pg_stat_activity WHERE datname = "
                                   f"'{c.db}' AND backend_type = 'client backend'")[0][0]
                if (st["held"] == 0 and st["waiting"] == 0 and st.get("draining", 0) == 0 and
                        st["processes"] == 0 and backends == 0) or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            time.sleep(0.1)
        finally:
            ch.stop_continuing()
            sampler.kill()
            sampler.wait()
            if ch.conn is not None:
                ch.conn.close()
            for p, _ in ch.clients.values():
                if p.poll() is None:
                    p.kill()
                    p.wait()
        runtime = time.monotonic() - t0

        # the server's view against the cap allowed at each sample
        samples = []
        with open(samples_path) as f:
            for line in f:
                t, n = line.split()
                samples.append((float(t), int(n)))
        check(len(samples) > 100, f"the sampler took only {len(samples)} samples")
        gaps = sorted(b[0] - a[0] for a, b in zip(samples, samples[1:]))
        over = [(t, n, ch.allowed_at(t)) for t, n in samples if n > ch.allowed_at(t)]
        peak = max(n for _, n in samples)
        at_cap = sum(1 for t, n in samples if n == ch.allowed_at(t))
        p99 = gaps[int(len(gaps) * 0.99)]
        log(f"{len(samples)} samples over {runtime:.1f} s: peak {peak} client backends, "
            f"{at_cap} samples at the allowed cap, gaps median {gaps[len(gaps) // 2] * 1000:.1f}"
            f" ms, p99 {p99 * 1000:.1f} ms, max {gaps[-1] * 1000:.1f} ms")
        log(f"cap history (s from start, allowed): "
            f"{[(round(t - t0, 2), cap) for t, cap in ch.allowed[1:]]}")
        log(f"counts: {ch.counts}; peak held {ch.peak_held}")

        refusals, other = [], []
        for path in ch.stderr_files:
            with open(path, errors="replace") as f:
                for line in f:
                    if any(s in line for s in SERVER_REFUSALS):
                        refusals.append(f"{os.path.basename(path)}: {line.strip()}")
                    elif line.strip():
                        other.append(f"{os.path.basename(path)}: {line.strip()}")
        log(f"client stderr: {len(refusals)} server refusals, {len(other)} other lines")

        st = stats(c)
        log("final stats: " + json.dumps({k: st.get(k) for k in (
            "pool_size", "held", "draining", "waiting", "processes", "grants", "peak_held",
            "reclaimed_processes", "repairs")}) + "; per scraper connects/idle/surplus "
            "releases/reclaimed: " + ", ".join(
                f"{s['name']} {s['connects']}/{s['idle_releases']}/"
                f"{s.get('surplus_releases', '?')}/{s.get('reclaimed', '?')}"
                for s in st["scrapers"] if not s["name"].startswith("idler-")) +
            "; idlers: %d idle releases, %d reconnects" % (
                sum(s["idle_releases"] for s in st["scrapers"] if s["name"].startswith("idler-")),
                sum(s.get("reconnects", 0) for s in st["scrapers"]
                    if s["name"].startswith("idler-"))))
        health = dyncoord(c, "--health")

        check(not over, f"{len(over)} samples saw more client backends than allowed, first: "
              + "; ".join(f"{n} > {a} at {t - t0:.3f} s" for t, n, a in over[:5]))
        check(not refusals, "clients got refused by the server: " + "; ".join(refusals[:5]))
        check(not other, "clients reported errors: " + "; ".join(other[:5]))
        # the sampler's density is the machine's (logged above); the cap
        # allowed at each moment is the server's own: the clients' role's
        # CONNECTION LIMIT follows it (raised before a raise, lowered once
        # held is within a lowered cap), so a connect above it would have
        # been refused, and none was
        check(ch.counts["cap_changes"] >= 3 and ch.limits_set >= 3,
              f"only {ch.counts['cap_changes']} cap changes and {ch.limits_set} server limits set")
        check(st["repairs"] >= ch.counts["kills_in_lock"],
              f"{ch.counts['kills_in_lock']} processes died holding the lock, but only "
              f"{st['repairs']} repairs")
        check(ch.counts["kills_long_query"] >= 5,
              f"only {ch.counts['kills_long_query']} kills in the middle of a long query")
        check(ch.counts["cap_changes"] >= 5, "pool_size moved too rarely")
        check(st["held"] == 0 and st["waiting"] == 0 and st.get("draining", 0) == 0,
              f"slots left after the end: held {st['held']}, waiting {st['waiting']}, "
              f"draining {st.get('draining')}")
        check(st["processes"] == 0, f"{st['processes']} processes still registered")
        check(health.returncode == 0,
              f"dyncoord --health exited {health.returncode}: {health.stdout}{health.stderr}")


if __name__ == "__main__":
    main({f.__name__: f for f in (chaos_60_clients_kills_stops_and_cap_changes,)})
