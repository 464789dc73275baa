"""One scraper of the benchmark scenario: plain psycopg2 or SQLAlchemy in one
of the client shapes of tests/integration/clients/client_shapes.py, nothing
of dynshim.

    scenario_scraper.py NAME SHAPE THREADS QUERY_S HOLD_S THINK_S

THREADS worker threads run workflows. A workflow: check a connection out
(the shape decides whether that connects), SELECT 1, SELECT pg_sleep(QUERY_S),
an INSERT, SELECT count(*) FROM pg_class, commit; then HOLD_S s with the
connection still checked out but no call on it and no transaction open
(working on what the queries returned); then give it back. Then THINK_S s
without a connection (the thread's own work) before the next workflow.
Connections carry application_name bench-NAME. Each thread starts its first
workflow after a delay of its own, between 0 and one workflow and think time.

Commands on stdin, one a line: "active" (workers run workflows), "idle"
(workers stop after their current workflow; the shape keeps whatever
connections it keeps), "quit". Writes "ready" once the shape exists, "start
T K" when thread K begins its first workflow, "done T K" for every workflow
it finished (T: CLOCK_MONOTONIC
seconds, the same clock in every process), "error T MESSAGE" for a failed one (a failed
creation of the shape included), and "closed" when it quits."""
import os
import random
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration",
                                "clients"))
import client_shapes  # noqa: E402


def main():
    name, shape_name, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    query_s, hold_s, think_s = float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
    active, quit_ = threading.Event(), threading.Event()
    out = threading.Lock()

    def say(line):
        with out:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def error(e):
        say("error %.6f %s" % (time.monotonic(), " ".join(str(e).split())[:500]))

    shape = None
    while shape is None:  # ThreadedConnectionPool connects when created
        try:
            shape = client_shapes.make(shape_name, "bench-" + name)
        except Exception as e:
            error(e)
            time.sleep(0.2)
    say("ready")

    def worker(k):
        started = False
        while not quit_.is_set():
            if not active.wait(0.1):
                continue
            if not started:
                # threads start out of step, as real ones are: a rate counted
                # over a few seconds does not see bursts of THREADS at once
                started = True
                time.sleep(random.Random(k).uniform(0, query_s + hold_s + think_s))
                say("start %.6f %d" % (time.monotonic(), k))
            try:
                with shape.connection() as db:
                    db.query("SELECT 1")
                    db.query("SELECT pg_sleep(%s)", (query_s,))
                    db.query("INSERT INTO pages (scraper, worker) VALUES (%s, %s)", (name, k))
                    db.query("SELECT count(*) FROM pg_class")
                    db.commit()
                    time.sleep(hold_s)
                say("done %.6f %d" % (time.monotonic(), k))
            except Exception as e:
                error(e)
                time.sleep(0.2)
                continue
            time.sleep(think_s)

    ws = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(threads)]
    for w in ws:
        w.start()
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "active":
            active.set()
        elif cmd == "idle":
            active.clear()
        elif cmd == "quit":
            break
    active.clear()
    quit_.set()
    for w in ws:
        w.join()
    shape.close()
    say("closed")


if __name__ == "__main__":
    main()
