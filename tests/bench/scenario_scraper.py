"""One scraper of the benchmark scenario: plain psycopg2, nothing of dynshim.

    scenario_scraper.py NAME THREADS POOL_MAX SLEEP_S THINK_S

THREADS worker threads share a client-side pool of at most POOL_MAX
connections, opened on demand and kept open once opened (the way
SQLAlchemy's QueuePool or a hand-written pool behaves). A workflow: check a
connection out (waiting while POOL_MAX are out), run a few queries including
pg_sleep(SLEEP_S), commit, check it back in; then THINK_S without a
connection (the scraper's own work) before the next one.

Commands on stdin, one a line: "active" (workers run workflows), "idle"
(workers stop after their current workflow; the pool keeps its
connections), "quit". Writes "done T" on stdout for every finished workflow
(T: CLOCK_MONOTONIC seconds, the same clock in every process), "error T
MESSAGE" for a failed one, and "closed N" when it quits."""
import sys
import threading
import time

import psycopg2


class Pool:
    """LIFO pool, at most cap connections, opened lazily, never closed."""

    def __init__(self, cap, dsn):
        self.cap, self.dsn = cap, dsn
        self.free, self.opened = [], 0
        self.cond = threading.Condition()

    def get(self):
        with self.cond:
            while not self.free and self.opened >= self.cap:
                self.cond.wait()
            if self.free:
                return self.free.pop()
            self.opened += 1
        try:
            return psycopg2.connect(self.dsn)
        except BaseException:
            with self.cond:
                self.opened -= 1
                self.cond.notify()
            raise

    def put(self, conn, broken=False):
        with self.cond:
            if broken:
                self.opened -= 1
            else:
                self.free.append(conn)
            self.cond.notify()
        if broken:
            conn.close()

    def close_all(self):
        with self.cond:
            n = len(self.free)
            for c in self.free:
                c.close()
            self.free = []
        return n


def main():
    name, threads, cap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    sleep_s, think_s = float(sys.argv[4]), float(sys.argv[5])
    pool = Pool(cap, "application_name=bench-" + name)
    active, quit_ = threading.Event(), threading.Event()
    out = threading.Lock()

    def say(line):
        with out:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def worker(k):
        while not quit_.is_set():
            if not active.wait(0.1):
                continue
            try:
                conn = pool.get()
            except psycopg2.Error as e:
                say("error %.6f %s" % (time.monotonic(), str(e).strip().replace("\n", " ")))
                time.sleep(0.2)
                continue
            broken = False
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT 1")
                    cur.execute("SELECT pg_sleep(%s)", (sleep_s,))
                    cur.execute("INSERT INTO pages (scraper, worker) VALUES (%s, %s)", (name, k))
                    cur.execute("SELECT count(*) FROM pg_class")
                    cur.fetchone()
                conn.commit()
                say("done %.6f" % time.monotonic())
            except psycopg2.Error as e:
                broken = conn.closed != 0
                try:
                    conn.rollback()
                except psycopg2.Error:
                    broken = True
                say("error %.6f %s" % (time.monotonic(), str(e).strip().replace("\n", " ")))
                time.sleep(0.2)
            finally:
                pool.put(conn, broken)
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
    say("closed %d" % pool.close_all())


if __name__ == "__main__":
    main()
