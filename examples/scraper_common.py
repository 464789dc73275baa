"""A stand-in for a web scraper's database side: a thread pool whose workers
each connect to PostgreSQL, record a "page" with a few queries and
disconnect. Plain psycopg2, nothing else; connection settings come from the
usual PG* environment variables.

run(name, workers, seconds, fetch_s) prints one JSON summary line at the end."""
import json
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg2


def scrape_one(name, fetch_s, stats, lock):
    t0 = time.monotonic()
    conn = psycopg2.connect("")
    t_connect = time.monotonic() - t0
    try:
        with conn, conn.cursor() as cur:
            url = f"https://example.org/{name}/{random.randrange(10**6)}"
            cur.execute("SELECT pg_sleep(%s)", (fetch_s * random.uniform(0.5, 1.5),))
            cur.execute("INSERT INTO pages (scraper, url) VALUES (%s, %s)", (name, url))
            cur.execute("SELECT count(*) FROM pages WHERE scraper = %s", (name,))
            cur.fetchone()
    finally:
        conn.close()
    with lock:
        stats["pages"] += 1
        stats["connect_s_total"] += t_connect
        stats["connect_s_max"] = max(stats["connect_s_max"], t_connect)


def run(name, workers, seconds, fetch_s):
    stats = {"pages": 0, "errors": 0, "connect_s_total": 0.0, "connect_s_max": 0.0}
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def worker():
        while time.monotonic() < end:
            try:
                scrape_one(name, fetch_s, stats, lock)
            except psycopg2.Error as e:
                with lock:
                    stats["errors"] += 1
                print(f"{name}: {str(e).strip()}", file=sys.stderr)
                time.sleep(0.5)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in range(workers):
            pool.submit(worker)
    mean = stats["connect_s_total"] / stats["pages"] if stats["pages"] else 0.0
    print(json.dumps({"scraper": name, "workers": workers, "pages": stats["pages"],
                      "errors": stats["errors"], "connect_ms_mean": round(mean * 1000, 1),
                      "connect_ms_max": round(stats["connect_s_max"] * 1000, 1)}), flush=True)
