"""The shim in processes that never use libpq, and with a segment it cannot
use: it stays out of the way, or fails connects clearly when told to."""
import os
import subprocess

from harness import (PYTHON, Case, check, destroy_pool, dynshim_lines, log, main,
                     native_clients_usable, pool_stats, preload_value, result_of)

PROGRAMS = [
    ["sh", "-c", "echo hello; echo $((6 * 7)); ls / | wc -l; exit 3"],
    ["ls", "-l", "/usr/lib/postgresql/15/bin"],
    [PYTHON, "-c", "import json, sys, threading, subprocess\n"
     "print(json.dumps(sys.argv))\n"
     "print(subprocess.run(['echo', 'child'], capture_output=True, text=True).stdout)\n"
     "sys.exit(5)", "arg"],
]


def _env(preload, segment):
    env = {k: v for k, v in os.environ.items()
           if k != "LD_PRELOAD" and not k.startswith("DYNSHIM_")}
    env["DYNSHIM_SEGMENT"] = segment
    env["ASAN_OPTIONS"] = "detect_leaks=0"
    if preload:
        env["LD_PRELOAD"] = preload_value()
    return env


def preload_into_programs_without_libpq_changes_nothing():
    segment = f"/dynshim-it-passthrough-{os.getpid()}"
    destroy_pool(segment)
    for args in PROGRAMS:
        plain = subprocess.run(args, env=_env(False, segment), capture_output=True, text=True,
                               timeout=30)
        shim = subprocess.run(args, env=_env(True, segment), capture_output=True, text=True,
                              timeout=30)
        what = args[0] if args[0] != PYTHON else "python3 without a driver"
        check(shim.stdout == plain.stdout,
              f"{what}: stdout differs under the shim: {shim.stdout!r} vs {plain.stdout!r}")
        check(shim.returncode == plain.returncode,
              f"{what}: exit {shim.returncode} under the shim, {plain.returncode} without")
        check(shim.stderr == "", f"{what}: stderr under the shim: {shim.stderr!r}")
        log(f"{what}: same stdout ({len(plain.stdout)} bytes), exit {plain.returncode}, "
            f"no stderr")
    check(not os.path.exists("/dev/shm" + segment),
          f"a program that never used libpq created the segment {segment}")


def missing_segment_is_created_with_defaults_on_first_connect():
    with Case("nosegment", pool_size=20, init=False) as c:
        check(not os.path.exists("/dev/shm" + c.segment), "the segment exists before the test")
        r = c.python("connect_once.py")
        res = result_of(r, "connect_once.py without a segment")
        check(res["ok"], f"a connect without a segment failed: {res['error']}")
        check(r.stderr == "", f"a connect without a segment printed {r.stderr!r}")
        st = pool_stats(c.segment)
        check(st["pool_size"] == 20, f"the created segment has pool_size {st['pool_size']}")
        check(st["held"] == 0, f"{st['held']} slots held after the client exited")


def _corrupt(segment, how):
    path = "/dev/shm" + segment
    if how == "bad magic":
        with open(path, "r+b") as f:
            f.write(b"NOTMAGIC")
    elif how == "truncated":
        os.truncate(path, 4096)


def corrupt_segment_open_passes_through_with_one_warning():
    for how in ("bad magic", "truncated"):
        with Case("corrupt_open", pool_size=2, sample=False) as c:
            _corrupt(c.segment, how)
            env = c.env(DYNSHIM_ON_ERROR="open")
            r = c.python("psycopg2_threads.py", 4, 3, 0.0, env=env)
            res = result_of(r, f"psycopg2 threads with a {how} segment")
            check(res["ok"] == 12 and not res["errors"],
                  f"{how}: {res['ok']} of 12 connections succeeded: {res['errors']}")
            warnings = dynshim_lines(r.stderr)
            check(len(warnings) == 1,
                  f"{how}: a process with 12 connects printed {len(warnings)} dynshim "
                  f"warnings, not 1: {r.stderr!r}")
            log(f"{how}: psycopg2 warned once: {warnings[0]}")
            if not native_clients_usable():
                continue
            r = c.run(["psql", "-X", "-Atc", "SELECT 7"], env=env)
            check(r.returncode == 0 and r.stdout.strip() == "7",
                  f"{how}: psql exited {r.returncode}: {r.stdout!r} {r.stderr!r}")
            check(len(dynshim_lines(r.stderr)) == 1,
                  f"{how}: psql printed {len(dynshim_lines(r.stderr))} dynshim warnings: "
                  f"{r.stderr!r}")


def corrupt_segment_closed_fails_connects_with_dynshim_error():
    with Case("corrupt_closed", pool_size=2) as c:
        c.start_sampler()
        _corrupt(c.segment, "bad magic")
        env = c.env(DYNSHIM_ON_ERROR="closed")
        res = result_of(c.python("connect_once.py", env=env), "connect_once.py")
        log(f"closed: {res}")
        check(not res["ok"], "a client connected through an unusable segment with "
                             "DYNSHIM_ON_ERROR=closed")
        check(res["error"].startswith("dynshim:") and c.segment in res["error"],
              f"the error does not start with 'dynshim:' and name {c.segment}: "
              f"{res['error']!r}")
        if native_clients_usable():
            r = c.run(["psql", "-X", "-Atc", "SELECT 1"], env=env)
            check(r.returncode == 2 and "dynshim:" in r.stderr,
                  f"psql exited {r.returncode} with {r.stderr!r}, not a dynshim error")
        c.check_server_view()
        check(c.sampler.peak == 0,
              f"the server saw {c.sampler.peak} backends though every connect was refused")


if __name__ == "__main__":
    main({f.__name__: f for f in (preload_into_programs_without_libpq_changes_nothing,
                                  missing_segment_is_created_with_defaults_on_first_connect,
                                  corrupt_segment_open_passes_through_with_one_warning,
                                  corrupt_segment_closed_fails_connects_with_dynshim_error)})
