"""harness.py - what every integration test shares.

- The sandbox server (scripts/pg-sandbox): found through DYNSHIM_IT_SANDBOX
  (the directory of `pg-sandbox start`, as the ctest fixture sets it) or the
  PG* variables that `pg-sandbox run` exports.
- A case: its own database it_<name> and segment /dynshim-it-<name>-<pid>,
  a pool initialised with dyncoord --init (a dyncoord that does not work is
  an error; the it_segment helper only when DYNSHIM_IT_SEGMENT_TOOL asks for
  it), and a sampler that watches the server's own
  view (pg_stat_activity, from two connections NOT under the shim, to the
  database `postgres`, in turn) every 10 ms and fails the case if the
  number of client backends of the case's database ever exceeds pool_size,
  or if two samples are ever more than MAX_SAMPLE_GAP apart.
- The server's own backstop: clients connect as the role CLIENT_ROLE (not
  a superuser), and the case's database, which that role owns, has
  CONNECTION LIMIT pool_size, so the server itself refuses a client
  connection beyond the pool ("too many connections for database"). The
  sandbox is shared by every test (one at a time, each with its own
  database), so the limit is the database's rather than max_connections;
  start_sampler() proves it first (pool_size connections admitted, the
  next refused).
- Client environments: LD_PRELOAD with the shim's absolute path (after
  libasan when the shim was built with AddressSanitizer), DYNSHIM_SEGMENT,
  DYNSHIM_SCRAPER, PGUSER=CLIENT_ROLE, PGDATABASE. Only clients get it,
  never this process.
- main(): runs one named test function and exits 0/1, for ctest.
"""
import contextlib
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import psycopg2

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENTS = os.path.join(HERE, "clients")
PYTHON = "/usr/bin/python3"
SAMPLE_INTERVAL = 0.010  # seconds between two samples of pg_stat_activity
# The longest gap allowed between two samples: a longer one could hide an
# overshoot, so the case fails (the sampler runs SCHED_RR to keep it). With
# the sanitized shim its clients run several times slower and keep both
# cores busy, and one answer of the server to a sample took 74 ms there (a
# 53 ms gap, in CI's ASan build): 100 ms then. The database's CONNECTION
# LIMIT stays the exact backstop either way: the server itself refuses a
# connection beyond the pool at every instant.
MAX_SAMPLE_GAP = 0.050
MAX_SAMPLE_GAP_SANITIZED = 0.100
# The role the clients connect as: not a superuser, so that the case's
# database's CONNECTION LIMIT (pool_size) binds it and the server itself
# refuses a connection beyond the pool.
CLIENT_ROLE = "dynshim_it_client"

COUNT_BACKENDS = (
    "SELECT count(*) FROM pg_stat_activity"
    " WHERE datname = %s AND backend_type = 'client backend'"
)
LIST_BACKENDS = (
    "SELECT pid, application_name, state, backend_start, left(query, 60)"
    " FROM pg_stat_activity WHERE datname = %s AND backend_type = 'client backend'"
    " ORDER BY backend_start"
)


class Failure(AssertionError):
    pass


class Skip(Exception):
    """The test cannot run in this build; ctest reports it as skipped."""


SKIP_EXIT = 77


def check(cond, message):
    """Fails the test with message (a sentence with the values) unless cond."""
    if not cond:
        raise Failure(message)


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------
# The sandbox and the binaries under test

def _read_env_file(path):
    env = {}
    with open(path) as f:
        for line in f:
            m = re.match(r"^export (\w+)='([^']*)'$", line.strip())
            if m:
                env[m.group(1)] = m.group(2)
    return env


def sandbox_env():
    """PGHOST, PGPORT, PGUSER, PGDATABASE, DYNSHIM_PG_CONNINFO, DYNSHIM_PG_LOG."""
    d = os.environ.get("DYNSHIM_IT_SANDBOX")
    if d:
        path = os.path.join(d, "env")
        check(os.path.exists(path), f"the sandbox fixture did not start: no {path}")
        return _read_env_file(path)
    keys = ("PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "DYNSHIM_PG_CONNINFO", "DYNSHIM_PG_LOG")
    check("DYNSHIM_PG_CONNINFO" in os.environ,
          "no sandbox: set DYNSHIM_IT_SANDBOX or run under scripts/pg-sandbox run --")
    return {k: os.environ[k] for k in keys if k in os.environ}


def _binary(var, what):
    path = os.environ.get(var, "")
    check(os.path.isabs(path) and os.path.exists(path),
          f"{var} must be the absolute path of {what}, not {path!r}")
    return path


def shim_path():
    return _binary("DYNSHIM_IT_SHIM", "libdynshim.so")


@functools.lru_cache(maxsize=None)
def _sanitizer_runtime(lib):
    """The libasan a sanitized shim needs first in LD_PRELOAD, or None."""
    out = subprocess.run(["ldd", lib], capture_output=True, text=True).stdout
    m = re.search(r"libasan\.so\.\d+ => (\S+)", out)
    return m.group(1) if m else None


def sanitized():
    """True when the shim was built with AddressSanitizer."""
    return _sanitizer_runtime(shim_path()) is not None


def native_clients_usable():
    """psql and pgbench under the shim. Not with a sanitized shim: Debian 12's
    psql and pgbench (libpq -> libldap -> gnutls -> libp11-kit) hang at exit
    in p11-kit's destructor (freelocale waits on glibc's setlocale lock)
    whenever libasan is preloaded, with or without dynshim."""
    return not sanitized()


def require_native_clients():
    if not native_clients_usable():
        raise Skip("psql and pgbench hang at exit when libasan is preloaded (Debian 12, "
                   "libp11-kit); this test needs them")


def preload_value():
    lib = shim_path()
    asan = _sanitizer_runtime(lib)
    return f"{asan} {lib}" if asan else lib


_tool = None


def segment_tool():
    """'dyncoord' (DYNSHIM_IT_DYNCOORD, which must work: a dyncoord that
    fails `--version` is an error, never a reason to test less), or
    'it_segment' only when DYNSHIM_IT_SEGMENT_TOOL=it_segment asks for it."""
    global _tool
    if _tool is None:
        forced = os.environ.get("DYNSHIM_IT_SEGMENT_TOOL")
        if forced:
            check(forced in ("dyncoord", "it_segment"),
                  f"DYNSHIM_IT_SEGMENT_TOOL must be dyncoord or it_segment, not {forced!r}")
            tool = forced
        else:
            tool = "dyncoord"
        if tool == "dyncoord":
            dc = _binary("DYNSHIM_IT_DYNCOORD", "dyncoord")
            r = subprocess.run([dc, "--version"], capture_output=True, text=True, timeout=30)
            check(r.returncode == 0, f"{dc} --version failed (exit {r.returncode}): "
                  f"{r.stdout}{r.stderr}")
        _tool = tool
        log(f"segments are managed with {_tool}")
    return _tool


def _tool_run(args, what):
    r = subprocess.run(args, capture_output=True, text=True, timeout=30)
    check(r.returncode == 0,
          f"{what} failed (exit {r.returncode}): {' '.join(args)}\n{r.stdout}{r.stderr}")
    return r.stdout


def init_pool(segment, pool_size, soft_limit, max_limit, wait_timeout=None,
              idle_timeout=None):
    if segment_tool() == "dyncoord":
        args = [_binary("DYNSHIM_IT_DYNCOORD", "dyncoord"), "--segment", segment, "--init",
                "--force", "--pool-size", str(pool_size), "--soft-limit", str(soft_limit),
                "--max-limit", str(max_limit)]
        if wait_timeout is not None:
            args += ["--wait-timeout", str(wait_timeout)]
        if idle_timeout is not None:
            args += ["--idle-timeout", str(idle_timeout)]
    else:
        args = [_binary("DYNSHIM_IT_SEGTOOL", "it_segment"), "init", segment,
                f"pool_size={pool_size}", f"soft_limit={soft_limit}", f"max_limit={max_limit}"]
        if wait_timeout is not None:
            args.append(f"wait_timeout={wait_timeout}")
        if idle_timeout is not None:
            args.append(f"idle_timeout={idle_timeout}")
    _tool_run(args, "initialising the pool")


def pool_stats(segment):
    if segment_tool() == "dyncoord":
        args = [_binary("DYNSHIM_IT_DYNCOORD", "dyncoord"), "--segment", segment, "--stats",
                "--json"]
    else:
        args = [_binary("DYNSHIM_IT_SEGTOOL", "it_segment"), "stats", segment]
    return json.loads(_tool_run(args, "reading the pool's stats"))


def destroy_pool(segment):
    if segment_tool() == "dyncoord":
        args = [_binary("DYNSHIM_IT_DYNCOORD", "dyncoord"), "--segment", segment, "--destroy"]
    else:
        args = [_binary("DYNSHIM_IT_SEGTOOL", "it_segment"), "destroy", segment]
    subprocess.run(args, capture_output=True, timeout=30)
    with contextlib.suppress(FileNotFoundError):
        os.unlink("/dev/shm" + segment)


def scraper_stats(stats, name):
    for s in stats.get("scrapers", []):
        if s["name"] == name:
            return s
    raise Failure(f"scraper {name!r} is not in the pool's stats: {json.dumps(stats)}")


# --------------------------------------------------------------------------
# The sampler: the server's own view

def count_backends(admin_dsn, db):
    conn = psycopg2.connect(admin_dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(COUNT_BACKENDS, (db,))
            return cur.fetchone()[0]
    finally:
        conn.close()


def _sampler_main(admin_dsn, db, limit):
    """The sampling loop, in a process of its own (python -m harness
    --sampler ...) so that the test's own work (spawning clients, the GIL)
    never delays a sample. Two connections sample in turn, each every
    SAMPLE_INTERVAL, half an interval apart: a query that the server holds
    up (pg_stat_activity's read waits while a starting backend writes its
    entry) leaves the other to go on. The gap is between two consecutive
    sends of either. Commands on stdin: "report" prints the state as one
    JSON line; "stop" or EOF prints it and exits."""
    # this process samples on time (real-time); its backends keep the
    # default priority: pg_stat_activity's read spins while a starting
    # backend writes its entry, and a favoured reader (real-time or niced)
    # starves that writer (queries of 200 ms and more on 2 loaded cores)
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))
    except OSError:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, -10)
    conns = []
    for _ in range(2):
        conn = psycopg2.connect(admin_dsn)
        conn.autocommit = True
        conns.append(conn)
    st = {"samples": 0, "peak": 0, "max_gap": 0.0, "max_gap_at": 0.0, "max_query": 0.0,
          "histogram": {}, "violations": [], "error": None}
    lock = threading.Lock()
    last = [None]  # the last send of either connection
    stop = threading.Event()

    def loop(conn, offset):
        cur = conn.cursor()
        time.sleep(offset)
        while not stop.is_set():
            sent = time.monotonic()
            with lock:
                if last[0] is not None and sent - last[0] > st["max_gap"]:
                    st["max_gap"], st["max_gap_at"] = sent - last[0], time.time()
                last[0] = max(last[0] or 0.0, sent)
            try:
                cur.execute(COUNT_BACKENDS, (db,))
                n = cur.fetchone()[0]
                rows = None
                if limit >= 0 and n > limit:
                    cur.execute(LIST_BACKENDS, (db,))
                    rows = [list(map(str, r)) for r in cur.fetchall()]
                with lock:
                    st["max_query"] = max(st["max_query"], time.monotonic() - sent)
                    st["samples"] += 1
                    st["histogram"][n] = st["histogram"].get(n, 0) + 1
                    st["peak"] = max(st["peak"], n)
                    if rows is not None and len(st["violations"]) < 5:
                        st["violations"].append((time.time(), n, rows))
            except Exception as e:
                with lock:
                    st["error"] = repr(e)
            stop.wait(max(0.0, SAMPLE_INTERVAL - (time.monotonic() - sent)))

    threads = [threading.Thread(target=loop, args=(c, k * SAMPLE_INTERVAL / 2), daemon=True)
               for k, c in enumerate(conns)]
    for t in threads:
        t.start()
    print("ready", flush=True)
    while True:
        line = sys.stdin.readline().strip()
        with lock:
            out = json.dumps(st)
            if line != "report":
                stop.set()
        if line != "report":
            for t in threads:
                t.join(5)
            with lock:
                print(json.dumps(st), flush=True)
            return
        print(out, flush=True)


class Sampler:
    """Counts the client backends of one database every SAMPLE_INTERVAL s,
    from a process that is not under the shim, connected to `postgres`."""

    def __init__(self, admin_dsn, db, limit):
        self.admin_dsn, self.db, self.limit = admin_dsn, db, limit
        self.proc = None
        self.samples, self.peak, self.max_gap, self.max_gap_at = 0, 0, 0.0, 0.0
        self.max_query = 0.0
        self.histogram, self.violations, self.error = {}, [], None

    def wait_quiet(self, timeout=10.0):
        """Waits until no backend of the database is left (setup ones exit)."""
        end = time.monotonic() + timeout
        while (n := count_backends(self.admin_dsn, self.db)) != 0:
            check(time.monotonic() < end, f"database {self.db} still has {n} backends "
                                          f"before the test")
            time.sleep(0.02)

    def start(self):
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
        self.proc = subprocess.Popen(
            [PYTHON, os.path.abspath(__file__), "--sampler", self.admin_dsn, self.db,
             str(-1 if self.limit is None else self.limit)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        check(read_line(self.proc, 30, "the sampler") == "ready", "the sampler did not start")

    def _ask(self, command):
        if self.proc.poll() is not None:
            return  # stopped: the last report stands
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        st = json.loads(read_line(self.proc, 30, "the sampler's report"))
        self.samples, self.peak, self.max_gap = st["samples"], st["peak"], st["max_gap"]
        self.max_gap_at = st.get("max_gap_at", 0.0)
        self.max_query = st.get("max_query", 0.0)
        self.histogram = {int(k): v for k, v in st["histogram"].items()}
        self.violations, self.error = st["violations"], st["error"]

    def report(self):
        """Refreshes samples, peak, histogram and violations."""
        self._ask("report")

    def stop(self):
        self._ask("stop")
        self.proc.wait(10)

    def summary(self):
        return (f"peak {self.peak} client backends in {self.db} (pool {self.limit}) over "
                f"{self.samples} samples, longest gap {self.max_gap * 1000:.0f} ms (ending "
                f"{time.strftime('%H:%M:%S', time.localtime(self.max_gap_at))}."
                f"{int(self.max_gap_at % 1 * 1000):03d}), longest query "
                f"{self.max_query * 1000:.0f} ms; samples per "
                f"count: {dict(sorted(self.histogram.items()))}")


# --------------------------------------------------------------------------
# A test case: database, segment, pool, sampler, clients

class Case:
    def __init__(self, name, pool_size, soft_limit=None, max_limit=None, wait_timeout=None,
                 idle_timeout=None, sample=True, init=True, server_limit=None):
        """server_limit: the CONNECTION LIMIT of the case's database, which
        binds the clients' role (CLIENT_ROLE): the server itself refuses a
        client connection beyond it. Default pool_size when the case
        samples (sample=True), else none."""
        self.name = name
        self.db = "it_" + name
        self.segment = f"/dynshim-it-{name}-{os.getpid()}"
        self.pool_size = pool_size
        self.pg = sandbox_env()
        self.pool_args = (pool_size, soft_limit or pool_size, max_limit or pool_size,
                          wait_timeout, idle_timeout)
        self.sample = sample
        self.init = init
        self.server_limit = server_limit if server_limit is not None else (
            pool_size if sample else None)
        self.sampler = None
        self.procs = []

    # DSNs for this process (never under the shim).
    def admin_dsn(self, db="postgres"):
        return (f"host={self.pg['PGHOST']} port={self.pg['PGPORT']} user={self.pg['PGUSER']} "
                f"dbname={db}")

    def admin(self, sql, db="postgres"):
        conn = psycopg2.connect(self.admin_dsn(db))
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return cur.fetchall() if cur.description else None
        finally:
            conn.close()

    def __enter__(self):
        self.admin(f"DROP DATABASE IF EXISTS {self.db} WITH (FORCE)")
        self.admin(f"DO $$ BEGIN CREATE ROLE {CLIENT_ROLE} LOGIN; "
                   f"EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        limit = -1 if self.server_limit is None else self.server_limit
        self.admin(f"CREATE DATABASE {self.db} OWNER {CLIENT_ROLE} CONNECTION LIMIT {limit}")
        # what a setup command not under the shim creates (as the superuser)
        # the clients may use
        self.admin(f"ALTER DEFAULT PRIVILEGES FOR ROLE {self.pg['PGUSER']} IN SCHEMA public "
                   f"GRANT ALL ON TABLES TO {CLIENT_ROLE}; "
                   f"ALTER DEFAULT PRIVILEGES FOR ROLE {self.pg['PGUSER']} IN SCHEMA public "
                   f"GRANT ALL ON SEQUENCES TO {CLIENT_ROLE}", db=self.db)
        destroy_pool(self.segment)
        if self.init:
            init_pool(self.segment, *self.pool_args)
        return self

    def start_sampler(self):
        """Starts watching the server; call after any setup that is not under the shim.
        First proves the server's own limit: it admits server_limit
        connections of the clients' role to the case's database, not one more."""
        self.sampler = Sampler(self.admin_dsn(), self.db, self.pool_size if self.sample else None)
        self.sampler.wait_quiet()
        if self.server_limit is not None:
            self.check_server_limit()
            self.sampler.wait_quiet()
        self.sampler.start()

    def client_dsn(self):
        """A connection of the clients' role to the case's database, not under the shim."""
        return (f"host={self.pg['PGHOST']} port={self.pg['PGPORT']} user={CLIENT_ROLE} "
                f"dbname={self.db}")

    def check_server_limit(self):
        """The server admits exactly server_limit client connections."""
        conns = []
        try:
            for _ in range(self.server_limit):
                conns.append(psycopg2.connect(self.client_dsn()))
            try:
                psycopg2.connect(self.client_dsn()).close()
                raise Failure(f"the server admitted a client connection to {self.db} beyond "
                              f"its limit of {self.server_limit}")
            except psycopg2.OperationalError as e:
                check("too many connections" in str(e),
                      f"the server refused connection {self.server_limit + 1} with {e}")
        finally:
            for x in conns:
                x.close()

    def set_server_limit(self, n):
        """A new CONNECTION LIMIT for the case's database (a test that
        changes pool_size on the fly changes it too); None: no limit."""
        self.server_limit = n
        self.admin(f"ALTER DATABASE {self.db} CONNECTION LIMIT {-1 if n is None else n}")

    def check_server_view(self):
        """Fails if the server ever showed more than pool_size backends, or
        if two samples were ever more than MAX_SAMPLE_GAP apart (the view
        would have a hole)."""
        self.sampler.report()
        check(self.sampler.error is None, f"the sampler failed: {self.sampler.error}")
        gap = MAX_SAMPLE_GAP_SANITIZED if sanitized() else MAX_SAMPLE_GAP
        check(self.sampler.max_gap <= gap,
              f"two samples of the server's view were {self.sampler.max_gap * 1000:.0f} ms "
              f"apart (at most {gap * 1000:.0f} ms allowed): "
              f"{self.sampler.summary()}")
        v = self.sampler.violations
        check(not v, f"the server showed more than pool_size={self.pool_size} client backends "
              f"of {self.db}: " + "; ".join(
                  f"{n} at {time.strftime('%H:%M:%S', time.localtime(t))}.{int(t % 1 * 1000):03d}: "
                  f"{rows}"
                  for t, n, rows in v))

    def check_pool_filled(self, what):
        """The server's view never exceeded the pool, and the clients did
        contend for the slots: the server showed pool_size backends, or (on
        a machine too loaded for the samples to catch that instant: slots
        are held while backends start and end) the pool itself had every
        slot held at once and connects waiting for one."""
        self.check_server_view()
        if self.sampler.peak == self.pool_size:
            return
        st = self.stats()
        waits = sum(s.get("waits", 0) for s in st.get("scrapers", []))
        log(f"{what}: the server's peak was {self.sampler.peak} of {self.pool_size}; the "
            f"pool's peak held {st.get('peak_held')}, {waits} connects waited")
        check(st.get("peak_held") == self.pool_size and waits > 0,
              f"{what} never filled the pool of {self.pool_size} (server peak "
              f"{self.sampler.peak}, pool peak held {st.get('peak_held')}, {waits} waits)")

    def __exit__(self, exc_type, exc, tb):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        try:
            if self.sampler:
                time.sleep(0.2)  # backends of the last clients exit
                try:
                    self.sampler.stop()
                finally:
                    if self.sampler.proc.poll() is None:
                        self.sampler.proc.kill()
                        self.sampler.proc.wait()
                log(self.sampler.summary())
                if exc_type is None:
                    check(self.sampler.error is None,
                          f"the sampler failed: {self.sampler.error!r}")
                    check(self.sampler.samples >= 5,
                          f"the sampler took only {self.sampler.samples} samples")
                    if self.sample:
                        self.check_server_view()
        finally:
            destroy_pool(self.segment)
            if getattr(self, "_tmpdir", None):
                shutil.rmtree(self._tmpdir, ignore_errors=True)
            with contextlib.suppress(Exception):
                self.admin(f"DROP DATABASE IF EXISTS {self.db} WITH (FORCE)")
        return False

    def tmpdir(self):
        """A directory for the case's files, removed with the case."""
        if not getattr(self, "_tmpdir", None):
            self._tmpdir = tempfile.mkdtemp(prefix=f"dynshim-it-{self.name}-")
        return self._tmpdir

    def plain_env(self):
        """The environment of a setup command that is not under the shim."""
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
        env.update(self.pg)
        env["PGDATABASE"] = self.db
        return env

    # Clients, under the shim.
    def env(self, scraper=None, **extra):
        """The environment of a client: the sandbox, the case's database and segment,
        the shim preloaded by absolute path. extra=None removes a variable."""
        env = dict(os.environ)
        for k in list(env):
            if k.startswith("DYNSHIM_") and not k.startswith("DYNSHIM_PG_"):
                del env[k]
        env.update(self.pg)
        env["PGUSER"] = CLIENT_ROLE
        env["PGDATABASE"] = self.db
        env["LD_PRELOAD"] = preload_value()
        env["DYNSHIM_SEGMENT"] = self.segment
        env["DYNSHIM_SCRAPER"] = scraper or self.name
        env.setdefault("ASAN_OPTIONS", "detect_leaks=0")
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
        env["PYTHONUNBUFFERED"] = "1"
        for k, v in extra.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = str(v)
        return env

    def spawn(self, args, scraper=None, env=None, **popen):
        popen.setdefault("stdout", subprocess.PIPE)
        popen.setdefault("stderr", subprocess.PIPE)
        p = subprocess.Popen(args, env=env or self.env(scraper), text=True, **popen)
        self.procs.append(p)
        return p

    def run(self, args, scraper=None, env=None, timeout=90, input=None):
        r = subprocess.run(args, env=env or self.env(scraper), capture_output=True, text=True,
                           timeout=timeout, input=input)
        return r

    def python(self, client, *args, **kw):
        return self.run([PYTHON, os.path.join(CLIENTS, client), *map(str, args)], **kw)

    def spawn_python(self, client, *args, **kw):
        return self.spawn([PYTHON, "-u", os.path.join(CLIENTS, client), *map(str, args)], **kw)

    def stats(self):
        return pool_stats(self.segment)


def result_of(r, what):
    """The JSON object a client printed last on stdout; fails on a bad exit."""
    check(r.returncode == 0,
          f"{what} exited {r.returncode}\nstdout: {r.stdout[-3000:]}\nstderr: {r.stderr[-3000:]}")
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    check(lines, f"{what} printed no result\nstdout: {r.stdout[-2000:]}\nstderr: {r.stderr[-2000:]}")
    return json.loads(lines[-1])


def collect(p, what, timeout=120):
    """Waits for a spawned client and returns its result_of()."""
    out, err = p.communicate(timeout=timeout)
    return result_of(subprocess.CompletedProcess(p.args, p.returncode, out, err), what)


def read_line(p, timeout, what):
    """The next stdout line of a spawned client, within timeout seconds."""
    box = []
    t = threading.Thread(target=lambda: box.append(p.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    check(box and box[0], f"{what}: no line within {timeout} s (exit {p.poll()}); "
          f"stderr: {p.stderr.read() if p.stderr and p.poll() is not None else '(running)'}")
    return box[0].strip()


def dynshim_lines(stderr):
    return [ln for ln in stderr.splitlines() if "dynshim" in ln]


# --------------------------------------------------------------------------

def main(tests):
    """Runs the test named by argv[1] (or all of them) from the dict tests."""
    check("libdynshim" not in os.environ.get("LD_PRELOAD", ""),
          "the test runner itself must not be under the shim")
    names = sys.argv[1:] or list(tests)
    failed, skipped = [], []
    for name in names:
        if name not in tests:
            print(f"unknown test {name!r}; known: {', '.join(tests)}", file=sys.stderr)
            sys.exit(2)
        log(f"RUN  {name}")
        t0 = time.monotonic()
        try:
            tests[name]()
        except Skip as e:
            skipped.append(name)
            log(f"SKIP {name}: {e}")
        except Exception:
            traceback.print_exc()
            failed.append(name)
            log(f"FAIL {name} ({time.monotonic() - t0:.1f} s)")
        else:
            log(f"PASS {name} ({time.monotonic() - t0:.1f} s)")
    if failed:
        sys.exit(1)
    sys.exit(SKIP_EXIT if skipped and len(skipped) == len(names) else 0)


if __name__ == "__main__" and sys.argv[1:2] == ["--sampler"]:
    _sampler_main(sys.argv[2], sys.argv[3], int(sys.argv[4]))
