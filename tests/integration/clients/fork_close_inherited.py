"""A parent holds a psycopg2 connection; a forked child closes the inherited
connection object and exits. The parent then reports the pool's view through
stdout/stdin handshakes driven by the test.

Prints "forked" after the child has exited, waits for a line on stdin, then
closes its connection and prints "closed"."""
import os
import sys

import psycopg2

conn = psycopg2.connect("")
with conn.cursor() as cur:
    cur.execute("SELECT 1")
pid = os.fork()
if pid == 0:
    conn.close()  # PQfinish of an inherited PGconn
    os._exit(0)
os.waitpid(pid, 0)
print("forked", flush=True)
sys.stdin.readline()
conn.close()
print("closed", flush=True)
