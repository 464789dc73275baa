"""Hold-and-wait against a real server: processes that each hold a connection
in an open transaction and then open a second one, more of them than the
pool has slots. Waiting out wait_timeout would fail them all; the pool must
break the deadlock within about deadlock_timeout (default 1 s) by failing the
newest waiter with an error that says "deadlock", after which the others
finish.

Pool 4 (limits 4), wait_timeout 60 s. Four processes first each hold one
connection with a transaction open (all four slots); then all four open their
second connection: a deadlock, none of the held connections can be released.
While they wait, two more processes of the same kind start (they queue for
their first connection behind the four second connects). Checked: the run
ends within 10 s of the four second connects, far below wait_timeout, with
exactly one error, containing "deadlock", in one of the four; the five other
processes commit; the server never had more than 4 backends of the case."""
import json
import subprocess
import time

from harness import Case, Failure, check, log, main, read_line

POOL = 4
WAIT_TIMEOUT = 60
WITHIN_S = 10.0  # the whole run after the second connects, against a wait_timeout of 60 s


def result_line(p, deadline, what):
    while True:
        left = deadline - time.monotonic()
        check(left > 0, f"{what} had not finished {WITHIN_S:g} s after the four second "
                        f"connects: the hold-and-wait deadlock was not broken")
        try:
            line = read_line(p, left, what)
        except Failure:
            raise Failure(f"{what} had not finished {WITHIN_S:g} s after the four second "
                          f"connects: the hold-and-wait deadlock was not broken") from None
        if line.startswith("{"):
            return json.loads(line)


def hold_and_wait_deadlock_fails_newest_waiter_and_others_commit():
    with Case("deadlock", pool_size=POOL, wait_timeout=WAIT_TIMEOUT) as c:
        c.start_sampler()
        holders = [c.spawn_python("hold_and_wait.py", "--gate", stdin=subprocess.PIPE)
                   for _ in range(POOL)]
        for i, p in enumerate(holders):
            check(read_line(p, 30, f"holder {i}") == "holding",
                  f"holder {i} did not report its first connection")
        check(c.stats()["held"] == POOL, f"the four holders do not hold all {POOL} slots")
        t0 = time.monotonic()
        for p in holders:
            p.stdin.write("go\n")
            p.stdin.flush()
        # the two latecomers queue behind the four second connects
        end = time.monotonic() + 3.0
        while c.stats()["waiting"] < POOL and time.monotonic() < end:
            time.sleep(0.01)
        late = [c.spawn_python("hold_and_wait.py") for _ in range(2)]
        deadline = t0 + WITHIN_S
        res = [result_line(p, deadline, f"holder {i}") for i, p in enumerate(holders)]
        res += [result_line(p, deadline, f"latecomer {i}") for i, p in enumerate(late)]
        elapsed = time.monotonic() - t0
        for p in holders + late:
            p.wait(10)
        log(f"all six done {elapsed:.2f} s after the second connects: " +
            "; ".join(f"{'ok' if r['ok'] else 'error'} after {r['waited_s']:.2f} s" for r in res))
        failed = [r for r in res if not r["ok"]]
        for r in failed:
            log(f"error: {r['error']}")
        check(len(failed) == 1,
              f"{len(failed)} of 6 processes failed (one expected): "
              f"{[r['error'] for r in failed]}")
        check("deadlock" in failed[0]["error"],
              f"the failed connect does not say it was a deadlock: {failed[0]['error']!r}")
        check(res[POOL]["ok"] and res[POOL + 1]["ok"],
              "a latecomer failed: the deadlock was among the four holders")
        check(elapsed < WITHIN_S, f"the run took {elapsed:.1f} s")
        c.check_server_view()
        check(c.stats()["held"] == 0, "slots are still held after the processes exited")


if __name__ == "__main__":
    main({f.__name__: f for f in (hold_and_wait_deadlock_fails_newest_waiter_and_others_commit,)})
