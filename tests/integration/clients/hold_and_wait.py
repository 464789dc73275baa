"""Holds one connection in an open transaction, then opens a second one: the
shape of a thread that holds a connection while it waits for another.

usage: hold_and_wait.py [--gate]
Connects, runs SELECT txid_current() (a transaction with an id is open) and
prints "holding"; with --gate it then waits for a line on stdin. Then it
opens the second connection. On success it queries it, commits both, closes
both and prints {"ok": true, "waited_s": S}; when the second connect fails it
rolls back and closes the first and prints {"ok": false, "error": MESSAGE,
"waited_s": S} (S: how long the second connect took)."""
import json
import sys
import time

import psycopg2

first = psycopg2.connect("application_name=hold_and_wait")
with first.cursor() as cur:
    cur.execute("SELECT txid_current()")
print("holding", flush=True)
if sys.argv[1:2] == ["--gate"]:
    sys.stdin.readline()
t0 = time.monotonic()
try:
    second = psycopg2.connect("application_name=hold_and_wait")
except psycopg2.Error as e:
    waited = time.monotonic() - t0
    first.rollback()
    first.close()
    print(json.dumps({"ok": False, "error": " ".join(str(e).split()), "waited_s": waited}),
          flush=True)
    sys.exit(0)
waited = time.monotonic() - t0
with second.cursor() as cur:
    cur.execute("SELECT 1")
second.commit()
first.commit()
second.close()
first.close()
print(json.dumps({"ok": True, "waited_s": waited}), flush=True)
