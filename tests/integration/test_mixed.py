"""Mixed workloads against a real server: a viewer capped at 5 slots with 2
reserved, beside two busy scrapers that push for every slot they can get."""
import subprocess
import threading
import time

from harness import (Case, Failure, _binary, check, collect, log, main, read_line,
                     scraper_stats)


def dyncoord(case, *args):
    return subprocess.run([_binary("DYNSHIM_IT_DYNCOORD", "dyncoord"), "--segment", case.segment,
                           *args], capture_output=True, text=True, timeout=30)


def viewer_capped_with_reserve_beside_two_busy_scrapers():
    with Case("mixed", pool_size=20, soft_limit=10, max_limit=15, idle_timeout=3) as c:
        r = dyncoord(c, "--set", "scraper.viewer.max=5", "scraper.viewer.reserve=2")
        check(r.returncode == 0, f"dyncoord --set failed: {r.stderr}")
        c.start_sampler()
        # each busy scraper: 14 threads connecting and querying in a loop
        # until told to stop, more than its limit of 10 and together more
        # than the pool
        busy = [c.spawn_python("cycler.py", 14, 0.2, scraper=name, stdin=subprocess.PIPE)
                for name in ("busy_a", "busy_b")]
        for p in busy:
            check(read_line(p, 30, "busy scraper") == "started", "a busy scraper did not start")
        until_pool_full(c)
        peak_viewer, stop, kept, broken = [0], threading.Event(), [0], []
        after_first = threading.Event()

        def watch():
            # every snapshot of the pool (one consistent read under its
            # lock): once the viewer claims its reserve, the others hold at
            # most pool_size minus that reserve (or minus what it holds)
            while not stop.is_set():
                st = c.stats()
                v = next((x for x in st["scrapers"] if x["name"] == "viewer"), None)
                if v:
                    peak_viewer[0] = max(peak_viewer[0], v["held"])
                    # checked between the viewer's rounds (no connect of
                    # its waiting): a round's first connects find the
                    # others' limits being recomputed (a starved reserve
                    # makes them strict) and their surplus on its way back
                    if after_first.is_set() and v["reserve_claimed"] and v["waiting"] == 0:
                        kept[0] += 1
                        # slots held by the other scrapers themselves (a
                        # slot draining after a finish, the viewer's own
                        # included, is counted in the pool's held only)
                        others = sum(x["held"] for x in st["scrapers"] if x["name"] != "viewer")
                        room = st["pool_size"] - max(v["reserve_claimed"], v["held"])
                        if others > room and len(broken) < 5:
                            broken.append(f"others held {others} > {room}: {st}")
                time.sleep(0.02)

        w = threading.Thread(target=watch, daemon=True)
        w.start()
        # 1. the reserve: the viewer's 2 connections at once every 0.5 s. It
        # wakes up in a full pool (the busy scrapers give back for it); from
        # then on, while it is active, its reserve is kept from the others:
        # checked on every snapshot of the pool, and none of its connects
        # times out. How fast its rounds are is a latency, logged here (the
        # load of the machine decides it, not the pool)
        env = c.env("viewer", DYNSHIM_WAIT_TIMEOUT="1.5")
        viewer = c.spawn_python("viewer.py", 11, 2, 0, 0.3, 0.2, "--pause-after-first",
                                scraper="viewer", env=env, stdin=subprocess.PIPE)
        check(read_line(viewer, 60, "viewer") == "first round done",
              "the viewer's first round did not finish")
        after_first.set()
        viewer.stdin.write("go\n")
        viewer.stdin.flush()
        res = collect(viewer, "viewer", timeout=120)
        after = scraper_stats(c.stats(), "viewer")
        log(f"viewer: reserve kept in {kept[0]} snapshots; round times (s) "
            f"{[round(x, 3) for x in res['waits']]}; wait ms mean {after['wait_ms_mean']}, "
            f"max {after['wait_ms_max']}")
        check(not res["errors"] and res["ok"] == 22 and after["timeouts"] == 0,
              f"the viewer's reserved rounds: {res}; pool: {after}")
        check(kept[0] >= 5, f"only {kept[0]} snapshots saw the viewer claim its reserve")
        check(not broken, "the busy scrapers took the viewer's reserve: " + "; ".join(broken))
        # 2. the cap: every fifth round 4 more (6 in all, one beyond its
        # cap of 5), the last of which must wait and time out
        res = collect(c.spawn_python("viewer.py", 10, 2, 4, 0.3, 0.2, scraper="viewer",
                                     env=env), "viewer with extra connections", timeout=120)
        stop.set()
        w.join()
        check(not broken, "the busy scrapers took the viewer's reserve: " + "; ".join(broken))
        check(all(p.poll() is None for p in busy),
              "a busy scraper stopped before the viewer was done: no contention to prove")
        for i, p in enumerate(busy):
            p.stdin.write("quit\n")
            p.stdin.flush()
            b = collect(p, f"busy scraper {i}", timeout=60)
            check(not b["errors"] and b["ok"] > 0, f"busy scraper {i}: {b}")
        log(f"viewer with extras: extra ok {res['extra_ok']}, refused {res['extra_refused']}; "
            f"viewer peak {peak_viewer[0]}")
        check(not res["errors"], f"the viewer had errors: {res['errors']}")
        check(res["ok"] == 20, f"the viewer ran {res['ok']} of 20 queries")
        check(peak_viewer[0] <= 5, f"the viewer held {peak_viewer[0]} slots, above its cap of 5")
        # two rounds of 4 extra beside its 2: at most 3 fit under the cap each time
        check(res["extra_ok"] <= 6 and res["extra_refused"] >= 2,
              f"beyond its cap the viewer got {res['extra_ok']} extra connections and "
              f"{res['extra_refused']} refusals")
        c.check_server_view()
        c.check_pool_filled("two busy scrapers and the viewer")


def until_pool_full(c, timeout=30):
    """Waits until the busy scrapers hold the whole pool."""
    end = time.monotonic() + timeout
    while (st := c.stats())["held"] < st["pool_size"]:
        check(time.monotonic() < end, f"the busy scrapers never filled the pool: {st}")
        time.sleep(0.02)


if __name__ == "__main__":
    main({f.__name__: f for f in (viewer_capped_with_reserve_beside_two_busy_scrapers,)})
