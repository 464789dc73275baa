"""memcheck.py - valgrind memcheck on real libpq clients under the shim.

    memcheck.py DYNCOORD SHIM psql|psycopg2

Runs against the server of with-pg.sh (PG* variables). Initialises a pool
of 2 in its own segment, then runs the client under valgrind with the shim
preloaded. The psql run connects and queries, then connects to a database
that does not exist (a failed connect gives its slot back); the psycopg2
run opens a connection, fails a connect (a free slot taken and given
back), opens a second one and queries both, closes one and exits holding
the other (the exit path), plus a third connect that waits
for a slot while both are held until one is closed by another thread.

Fails on any memory error (invalid read or write, use of uninitialised
values, bad free...) anywhere in the process, and on any leak (definitely,
indirectly or possibly lost) whose allocation stack passes through
libdynshim.so (its own code or the coordinator it links). Leaks of the host
program or its other libraries are not the shim's and are only counted.
tests/shim/memcheck.supp holds the few suppressions, each explained. Fails
too unless the segment's counters show that the shim took part (grants,
peak held, every slot back at the end). Exit 0: clean."""
import json
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
# The shim's code: frames in libdynshim.so without debug information, or
# (with --fullpath-after=, full source paths) in its sources, which include
# the coordinator it links statically.
SHIM_CODE = ("libdynshim", os.path.join(ROOT, "shim") + "/",
             os.path.join(ROOT, "coordinator") + "/")
PSQL = "/usr/lib/postgresql/15/bin/psql"  # not the pg_wrapper script

PSYCOPG2_PROG = r"""
import threading, time, psycopg2
a = psycopg2.connect("")
try:  # with a slot free: the failed connect takes it and gives it back
    psycopg2.connect("dbname=dynshim_no_such_db")
    raise SystemExit("connect to a missing database succeeded")
except psycopg2.OperationalError as e:
    assert "does not exist" in str(e), str(e)
b = psycopg2.connect("")
for c in (a, b):
    cur = c.cursor(); cur.execute("select 1"); assert cur.fetchall() == [(1,)]
threading.Timer(0.5, a.close).start()
c = psycopg2.connect("")   # waits for a's slot
cur = c.cursor(); cur.execute("select 2"); assert cur.fetchall() == [(2,)]
c.close()
# b stays open: the process exits holding it
"""


def blocks(log):
    """The log's records: lists of lines, without the ==PID== prefix."""
    out, cur = [], []
    for line in log.splitlines():
        m = re.match(r"==\d+== ?(.*)$", line)
        if not m:
            continue
        text = m.group(1)
        if text.strip() == "":
            if cur:
                out.append(cur)
            cur = []
        else:
            cur.append(text)
    if cur:
        out.append(cur)
    return out


LEAK = re.compile(r"are (definitely|indirectly|possibly) lost in loss record")
FRAME = re.compile(r"^\s+(at|by) 0x")


# What the runs must leave in the segment's counters: the connects they
# made (each takes a slot, the failed one too), the most held at once (the
# psycopg2 run holds both slots while its third connect waits), and every
# slot back at the end (the exit path included).
EXPECTED = {"psql": {"grants": 2, "peak_held": 1}, "psycopg2": {"grants": 4, "peak_held": 2}}


def shim_took_part(dyncoord, segment, client, env):
    """0 when the segment's counters show the shim under valgrind took and
    gave back the slots of the client's connects, else 1 (a run where the
    shim was not loaded, or passed through, proves nothing)."""
    r = subprocess.run([dyncoord, "--segment", segment, "--stats", "--json"], env=env,
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        print("FAIL: dyncoord --stats: " + r.stderr)
        return 1
    st = json.loads(r.stdout)
    want = EXPECTED[client]
    print("segment counters: %d grants, peak %d held, %d held and %d waiting at the end"
          % (st["grants"], st["peak_held"], st["held"], st["waiting"]))
    if st["grants"] < want["grants"] or st["peak_held"] != want["peak_held"] or st["held"] \
            or st["waiting"]:
        print("FAIL: the shim did not take part as expected: want at least %d grants and a "
              "peak of %d held, nothing held or waiting at the end" % (want["grants"],
                                                                      want["peak_held"]))
        return 1
    return 0


def main():
    dyncoord, shim, client = sys.argv[1:4]
    segment = "/dynshim-t-memcheck-%s-%d" % (client, os.getpid())
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    subprocess.run([dyncoord, "--segment", segment, "--init", "--force", "--pool-size", "2",
                    "--soft-limit", "2", "--max-limit", "2"], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            log = os.path.join(tmp, "memcheck.log")
            if client == "psql":
                runs = [[PSQL, "-XAtc", "select 1"],
                        [PSQL, "-XAtc", "select 1", "dbname=dynshim_no_such_db"]]
            else:
                prog = os.path.join(tmp, "client.py")
                with open(prog, "w") as f:
                    f.write(PSYCOPG2_PROG)
                runs = [["/usr/bin/python3", prog]]
            failures = 0
            for i, argv in enumerate(runs):
                run_env = dict(env, LD_PRELOAD=shim, DYNSHIM_SEGMENT=segment,
                               PYTHONMALLOC="malloc")
                vg = ["valgrind", "--tool=memcheck", "--leak-check=full",
                      "--show-leak-kinds=definite,indirect,possible", "--num-callers=30", "--fullpath-after=",
                      "--suppressions=" + os.path.join(HERE, "memcheck.supp"),
                      "--log-file=" + log]
                p = subprocess.run(vg + argv, env=run_env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, timeout=300)
                want_ok = not (client == "psql" and i == 1)
                if (p.returncode == 0) != want_ok:
                    print("FAIL: %s exited %d:\n%s" % (argv, p.returncode, p.stderr))
                    failures += 1
                text = open(log).read()
                errors, shim_leaks, other_leaks = [], [], 0
                for b in blocks(text):
                    if not any(FRAME.match(x) for x in b):
                        continue
                    if LEAK.search(b[0]):
                        if any(FRAME.match(x) and any(k in x for k in SHIM_CODE) for x in b):
                            shim_leaks.append(b)
                        else:
                            other_leaks += 1
                    else:
                        errors.append(b)
                print("%s: %d memory errors, %d leaks through the shim, %d other leaks "
                      "(not the shim's)" % (" ".join(argv[:2]), len(errors), len(shim_leaks),
                                            other_leaks))
                for b in errors + shim_leaks:
                    print("\n".join(b) + "\n")
                failures += len(errors) + len(shim_leaks)
                if "ERROR SUMMARY" not in text:
                    print("FAIL: valgrind did not finish:\n" + text[-2000:])
                    failures += 1
            failures += shim_took_part(dyncoord, segment, client, env)
            return 1 if failures else 0
    finally:
        subprocess.run([dyncoord, "--segment", segment, "--destroy"], env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    sys.exit(main())
