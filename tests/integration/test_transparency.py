"""A release may lose nothing a program can observe: minimal psycopg2
programs (clients/transparency.py) behave under the shim as they do against
the server directly, across the idle periods in which the shim releases
what it can. Each waits on the pool's and the server's own view (the
connection released, or kept) before the program goes on. idle_timeout
1 s, realloc_interval 1 s."""
import json
import subprocess
import time

from harness import Case, _binary, check, log, main, read_line, scraper_stats

# idle_timeout + realloc_interval + the advice period, with room for a loaded machine
RELEASE_S = 1 + 1 + 1 + 3


def until(what, cond, limit):
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if cond():
            return time.monotonic() - t0
        time.sleep(0.1)
    check(False, f"{what} not reached within {limit} s")


class Program:
    """One scenario of transparency.py under the shim, in case c."""

    def __init__(self, c, scenario):
        self.c, self.scenario = c, scenario
        self.p = c.spawn_python("transparency.py", scenario, scraper=scenario,
                                stdin=subprocess.PIPE)

    def ready(self):
        line = read_line(self.p, 30, self.scenario)
        check(line.startswith("ready "), f"{self.scenario} said {line!r}")
        return json.loads(line[len("ready "):])

    def go(self):
        self.p.stdin.write("go\n")
        self.p.stdin.flush()

    def result(self):
        out, err = self.p.communicate(timeout=60)
        check(self.p.returncode == 0,
              f"{self.scenario} exited {self.p.returncode}: {out[-2000:]} {err[-2000:]}")
        return json.loads(out.strip().splitlines()[-1])

    def held(self):
        return scraper_stats(self.c.stats(), self.scenario)["held"]


def backends(c, app=None):
    where = f" AND application_name = '{app}'" if app else ""
    return c.admin("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
                   f" AND datname = '{c.db}'{where}")[0][0]


def ended_by_server(error):
    """What libpq reports, without the shim, on the first use of a connection
    whose backend was terminated while it was idle (the FATAL message when
    libpq reads it before it sees the end of the connection)."""
    return bool(error) and ("server closed the connection unexpectedly" in error
                            or "terminating connection due to administrator command" in error)


def case(name, pool_size=4, **kw):
    c = Case(name, pool_size=pool_size, idle_timeout=kw.pop("idle_timeout", 1), **kw)
    return c


def fast_realloc(c):
    r = subprocess.run([_binary("DYNSHIM_IT_DYNCOORD", "dyncoord"), "--segment", c.segment,
                        "--set", "realloc_interval=1"], capture_output=True, text=True)
    check(r.returncode == 0, f"dyncoord --set: {r.stderr}")


def kept_through_idle(c, prog, held, what):
    """The program's other connections are released (so the release has
    looked at every one) while its pinned ones stay, in the pool and on the
    server, a while longer."""
    until(f"{what}: down to the {held} kept connection(s)",
          lambda: prog.held() == held and backends(c) == held, RELEASE_S)
    time.sleep(1.5)
    check(prog.held() == held and backends(c) == held and backends(c, "transp") == held,
          f"{what}: held {prog.held()}, on the server {backends(c)} (want {held} kept)")


def custom_settings_survive_idle_periods():
    with case("transp_guc") as c:
        fast_realloc(c)
        prog = Program(c, "custom_setting")
        prog.ready()
        # the connection with SET app.tenant is kept; the one whose
        # settings ended with their transaction is released
        kept_through_idle(c, prog, 1, "custom setting")
        prog.go()
        res = prog.result()
        log(f"custom settings: {res}")
        check(res["tenant"] == "42", f"app.tenant is {res['tenant']!r} after the pause, not '42'")
        # as on a new session: the placeholder is empty or unknown
        check(res["other_tenant"] in ("", None), f"other: {res['other_tenant']!r}")
        st = scraper_stats(c.stats(), "custom_setting")
        check(st["idle_releases"] == 1 and st["reconnects"] == 1,
              f"idle releases {st['idle_releases']}, reconnects {st['reconnects']} (want 1, 1)")


def sequence_state_survives_idle_periods():
    with case("transp_seq") as c:
        c.admin("CREATE SEQUENCE s START 41", db=c.db)
        fast_realloc(c)
        prog = Program(c, "sequence")
        first = prog.ready()["first"]
        kept_through_idle(c, prog, 1, "sequence state")
        prog.go()
        res = prog.result()
        log(f"sequence: {res}")
        check(res["lastval"] == first == res["currval"] == 41,
              f"lastval {res['lastval']}, currval {res['currval']} after nextval gave {first}")


def cancel_reaches_the_reconnected_session():
    with case("transp_cancel") as c:
        fast_realloc(c)
        prog = Program(c, "cancel")
        prog.ready()
        t = until("the idle connection released", lambda: prog.held() == 0 and backends(c) == 0,
                  RELEASE_S)
        log(f"released after {t:.1f} s")
        prog.go()
        res = prog.result()
        log(f"cancel: {res}")
        check(res["error"] == "QueryCanceled",
              f"pg_sleep(5) ended with {res['error']!r}, not cancelled")
        check(res["elapsed"] < 3, f"the cancel took {res['elapsed']:.1f} s to act")
        check(scraper_stats(c.stats(), "cancel")["reconnects"] == 1, "no reconnect counted")


def backend_pid_read_keeps_the_session():
    with case("transp_pid") as c:
        fast_realloc(c)
        prog = Program(c, "backend_pid")
        pid = prog.ready()["pid"]
        kept_through_idle(c, prog, 1, "backend PID read")
        alive = c.admin(f"SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}")[0][0]
        check(alive == 1, f"backend {pid}, whose PID the program read, is gone")
        # another connection acts on the PID: it names the program's session
        c.admin(f"SELECT pg_terminate_backend({pid})")
        until("the backend terminated", lambda: backends(c) == 0, 5)
        prog.go()
        res = prog.result()
        log(f"backend pid: {res}")
        check(ended_by_server(res["error"]),
              f"the program's next query after its backend was terminated: {res['error']!r}")
        check(res["closed"] == 2, f"conn.closed is {res['closed']}, not 2")


def dead_idle_connection_is_left_for_the_program():
    with case("transp_dead") as c:
        fast_realloc(c)
        prog = Program(c, "dead_idle")
        prog.ready()
        c.admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE datname = '{c.db}' AND application_name = 'transp'")
        # its slot comes back although the program has not touched it
        t = until("the dead connection's slot given back", lambda: prog.held() == 0, RELEASE_S)
        log(f"dead connection's slot back after {t:.1f} s")
        time.sleep(1)
        st = scraper_stats(c.stats(), "dead_idle")
        check(st["reconnects"] == 0, f"the dead connection was reconnected ({st['reconnects']})")
        prog.go()
        res = prog.result()
        log(f"dead idle: {res}")
        check(ended_by_server(res["error"]),
              f"the program's next query got {res['error']!r}, not the server's end")
        check(res["closed"] == 2, f"conn.closed is {res['closed']}, not 2")


def libpq_server_calls_reconnect_first():
    with case("transp_calls") as c:
        fast_realloc(c)
        prog = Program(c, "server_calls")
        for what in ("encrypt_password", "lobject"):
            prog.ready()
            until(f"released before {what}", lambda: prog.held() == 0 and backends(c) == 0,
                  RELEASE_S)
            prog.go()
        res = prog.result()
        log(f"server calls: {res}")
        check(res["password"].startswith("SCRAM-SHA-256$"),
              f"encrypt_password after a release gave {res['password']!r}")
        check(res["lobject"] == "dynshim", f"large object read back {res['lobject']!r}")
        check(scraper_stats(c.stats(), "server_calls")["reconnects"] == 2, "reconnects")


def terminated_connection_gives_its_slot_back():
    with case("transp_close", pool_size=2, wait_timeout=5, idle_timeout=60) as c:
        prog = Program(c, "external_close")
        prog.ready()
        check(backends(c) == 2, f"{backends(c)} backends for a and c")
        prog.go()
        res = prog.result()
        log(f"external close: {res}")
        check(ended_by_server(res["error"]),
              f"the killed connection's query got {res['error']!r}")
        check(res["closed"] == 2, f"conn.closed is {res['closed']}, not 2")
        check(res["c"] == 2 and res["connect_s"] < 2,
              f"a new connection beside the dead one took {res['connect_s']:.1f} s")


def ordinary_connections_are_still_released():
    with case("transp_plain") as c:
        fast_realloc(c)
        prog = Program(c, "ordinary")
        prog.ready()
        t = until("psycopg2's and SQLAlchemy's idle connections released",
                  lambda: prog.held() == 0 and backends(c) == 0, RELEASE_S)
        log(f"both released after {t:.1f} s")
        prog.go()
        res = prog.result()
        log(f"ordinary: {res}")
        check(res["x"] == 1 and res["sa"] == 1, f"results after the release: {res}")
        check(res["encoding"] == "LATIN1", f"client encoding {res['encoding']}")
        st = scraper_stats(c.stats(), "ordinary")
        check(st["idle_releases"] == 2 and st["reconnects"] == 2,
              f"idle releases {st['idle_releases']}, reconnects {st['reconnects']} (want 2, 2)")


if __name__ == "__main__":
    main({f.__name__: f for f in (custom_settings_survive_idle_periods,
                                  sequence_state_survives_idle_periods,
                                  cancel_reaches_the_reconnected_session,
                                  backend_pid_read_keeps_the_session,
                                  dead_idle_connection_is_left_for_the_program,
                                  libpq_server_calls_reconnect_first,
                                  terminated_connection_gives_its_slot_back,
                                  ordinary_connections_are_still_released)})
