"""The segment never holds secrets: clients under the shim connect with a
real password (password authentication, scram-sha-256, over 127.0.0.1: the
sandbox's pg_hba.conf requires it for the role dynshim_password), and every
byte of the segment is scanned for the password, for the conninfo and for
any 8-byte piece of the password, while the connections are open, after
they are closed and after the processes exit. The shim's own output, even
at DYNSHIM_LOG=debug, must not contain them either."""
import os
import secrets
import subprocess

import psycopg2

from harness import PYTHON, Case, check, log, main, native_clients_usable, read_line

ROLE = "dynshim_password"

CLIENT = r"""
import sys, psycopg2
conninfo, host, port, user, password, db = sys.argv[1:7]
a = psycopg2.connect(conninfo)
b = psycopg2.connect(host=host, port=port, user=user, password=password, dbname=db,
                     application_name="dynshim_secret_app")
for c in (a, b):
    cur = c.cursor(); cur.execute("select current_user"); assert cur.fetchone()[0] == user
print("connected", flush=True)
sys.stdin.readline()
a.close(); b.close()
print("closed", flush=True)
sys.stdin.readline()
"""


def scan(segment, needles, when):
    with open("/dev/shm" + segment, "rb") as f:
        data = f.read()
    check(b"secrets_app" in data,
          f"{when}: the scan does not see the client's scraper name: not the live segment")
    for what, needle in needles:
        check(needle.encode() not in data,
              f"{when}: the segment holds {what} at byte {data.find(needle.encode())}")
    log(f"{when}: {len(data)} bytes of {segment} scanned, no secret")


def password_never_reaches_the_segment():
    secret = "Pw-" + secrets.token_hex(16)
    with Case("secrets", pool_size=4) as c:
        c.admin(f"DROP ROLE IF EXISTS {ROLE}")
        c.admin(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{secret}'")
        try:
            port = c.pg["PGPORT"]
            conninfo = (f"host=127.0.0.1 port={port} user={ROLE} password={secret} "
                        f"dbname={c.db} application_name=dynshim_secret_app")
            # The server really checks the password (not trust).
            try:
                psycopg2.connect(conninfo.replace(secret, secret + "x")).close()
                check(False, "a wrong password was accepted: the connections would not "
                      "carry a password at all")
            except psycopg2.OperationalError as e:
                check("password authentication failed" in str(e), f"wrong password: {e}")
            needles = [("the password", secret), ("the conninfo", conninfo),
                       ("a 'password=' keyword", "password=")]
            needles += [(f"bytes {i}-{i + 8} of the password", secret[i:i + 8])
                        for i in range(len(secret) - 7)]
            c.start_sampler()
            env = c.env("secrets_app", DYNSHIM_LOG="debug", PGPASSWORD=None)
            p = c.spawn([PYTHON, "-c", CLIENT, conninfo, "127.0.0.1", port, ROLE, secret,
                         c.db], env=env, stdin=subprocess.PIPE)
            check(read_line(p, 60, "the client's connects") == "connected",
                  "the client did not connect")
            rows = c.admin("SELECT usename, count(*) FROM pg_stat_activity WHERE "
                           "application_name = 'dynshim_secret_app' GROUP BY usename")
            check(rows == [(ROLE, 2)], f"the server shows {rows}, not 2 sessions of {ROLE}")
            check(c.stats()["held"] == 2, f"the pool holds {c.stats()['held']} slots, not 2")
            scan(c.segment, needles, "while connected")
            psql = None
            if native_clients_usable():
                penv = c.env("secrets_psql", DYNSHIM_LOG="debug", PGPASSWORD=secret,
                             PGHOST="127.0.0.1", PGUSER=ROLE)
                psql = c.spawn(["psql", "-XAtc", "select pg_sleep(1.5)"], env=penv)
                for _ in range(100):
                    n = c.admin("SELECT count(*) FROM pg_stat_activity WHERE usename = "
                                f"'{ROLE}' AND query LIKE 'select pg_sleep%'")[0][0]
                    if n:
                        break
                    subprocess.run(["sleep", "0.05"])
                check(n == 1, "psql with PGPASSWORD never connected")
                scan(c.segment, needles, "while psql is connected with PGPASSWORD")
            p.stdin.write("\n")
            p.stdin.flush()
            check(read_line(p, 60, "the client's close") == "closed", "the client did not close")
            scan(c.segment, needles, "after the connections closed")
            p.stdin.write("\n")
            p.stdin.flush()
            out, err = p.communicate(timeout=60)
            check(p.returncode == 0, f"the client failed: {err}")
            outputs = [("the psycopg2 client", err)]
            if psql:
                pout, perr = psql.communicate(timeout=60)
                check(psql.returncode == 0, f"psql failed: {perr}")
                outputs.append(("psql", perr))
            scan(c.segment, needles, "after the clients exited")
            for who, text in outputs:
                check("dynshim[" in text, f"{who}: no debug output from the shim: {text!r}")
                for what, needle in needles[:2]:
                    check(needle not in text, f"the shim's debug output in {who} holds {what}")
            check(c.stats()["held"] == 0, "slots still held after the clients exited")
        finally:
            c.admin(f"DROP ROLE IF EXISTS {ROLE}")


if __name__ == "__main__":
    main({f.__name__: f for f in (password_never_reaches_the_segment,)})
