"""Connects once with psycopg2 and runs one query.

Prints {"ok": bool, "error": message or null, "elapsed": s, "connected_at": epoch s}."""
import json
import time

import psycopg2

t0 = time.monotonic()
try:
    conn = psycopg2.connect("")
    connected_at = time.time()
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        cur.fetchone()
    conn.close()
    print(json.dumps({"ok": True, "error": None, "elapsed": time.monotonic() - t0,
                      "connected_at": connected_at}))
except psycopg2.OperationalError as e:
    print(json.dumps({"ok": False, "error": str(e), "elapsed": time.monotonic() - t0,
                      "connected_at": None}))
