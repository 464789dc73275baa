"""Mixed workloads against a real server: a viewer capped at 5 slots with 2
reserved, beside two busy scrapers that push for every slot they can get."""
import subprocess
import threading
import time

from harness import Case, Failure, _binary, check, collect, log, main, scraper_stats


def dyncoord(case, *args):
    return subprocess.run([_binary("DYNSHIM_IT_DYNCOORD", "dyncoord"), "--segment", case.segment,
                           *args], capture_output=True, text=True, timeout=30)


def viewer_capped_with_reserve_beside_two_busy_scrapers():
    with Case("mixed", pool_size=20, soft_limit=10, max_limit=15, idle_timeout=3) as c:
        r = dyncoord(c, "--set", "scraper.viewer.max=5", "scraper.viewer.reserve=2")
        check(r.returncode == 0, f"dyncoord --set failed: {r.stderr}")
        c.start_sampler()
        # each busy scraper: 14 threads connecting and querying in a loop,
        # more than its limit of 10 and together more than the pool
        busy = [c.spawn_python("psycopg2_threads.py", 14, 60, 0.05, scraper=name)
                for name in ("busy_a", "busy_b")]
        time.sleep(1.0)
        # the viewer: 2 connections at once every 0.5 s; every fifth round 4
        # more (6 in all, one beyond its cap of 5), the last of which must
        # wait and time out
        viewer = c.spawn_python("viewer.py", 12, 2, 4, 0.3, 0.2, scraper="viewer",
                                env=c.env("viewer", DYNSHIM_WAIT_TIMEOUT="1.5"))
        peak_viewer, stop = [0], threading.Event()

        def watch():
            while not stop.is_set():
                try:
                    peak_viewer[0] = max(peak_viewer[0], scraper_stats(c.stats(), "viewer")["held"])
                except Failure:
                    pass  # not seen by the pool yet
                time.sleep(0.02)

        w = threading.Thread(target=watch, daemon=True)
        w.start()
        res = collect(viewer, "viewer", timeout=120)
        stop.set()
        w.join()
        for i, p in enumerate(busy):
            b = collect(p, f"busy scraper {i}", timeout=180)
            check(not b["errors"], f"busy scraper {i} had errors: {b['errors']}")
        log(f"viewer waits (s): {[round(x, 3) for x in res['waits']]}; extra ok "
            f"{res['extra_ok']}, refused {res['extra_refused']}; viewer peak {peak_viewer[0]}")
        check(not res["errors"], f"the viewer had errors: {res['errors']}")
        check(res["ok"] == 24, f"the viewer ran {res['ok']} of 24 queries")
        # every round within the viewer's own wait timeout (no refusal), and
        # typically in a fraction of a second (connect and query included)
        waits = sorted(res["waits"])
        check(waits[-1] < 1.5,
              f"the viewer waited {waits[-1]:.3f} s for its 2 reserved connections")
        check(waits[len(waits) // 2] < 0.2,
              f"the viewer's median wait for its 2 reserved connections was "
              f"{waits[len(waits) // 2]:.3f} s")
        check(peak_viewer[0] <= 5, f"the viewer held {peak_viewer[0]} slots, above its cap of 5")
        # two rounds of 4 extra beside its 2: at most 3 fit under the cap each time
        check(res["extra_ok"] <= 6 and res["extra_refused"] >= 2,
              f"beyond its cap the viewer got {res['extra_ok']} extra connections and "
              f"{res['extra_refused']} refusals")
        c.check_server_view()
        c.check_pool_filled("two busy scrapers and the viewer")


if __name__ == "__main__":
    main({f.__name__: f for f in (viewer_capped_with_reserve_beside_two_busy_scrapers,)})
