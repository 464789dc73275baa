"""The client-side connection shapes real scrapers use, behind one interface,
for the client-shape tests (shape_scraper.py) and the benchmark scenario
(tests/bench/scenario_scraper.py). Nothing of dynshim here: plain psycopg2
and SQLAlchemy, connecting through the PG* variables.

    shape = make(NAME, application_name)
    with shape.connection() as db:     # check a connection out (may connect)
        db.query("SELECT 1")           # rows
        db.commit()
    shape.close()                      # at exit: close what the shape keeps

Shapes (NAMES):
  queuepool-overflow  SQLAlchemy QueuePool(pool_size=5, max_overflow=10):
                      keeps 5 connections, opens up to 10 more on demand and
                      closes those when they come back to a full pool
  queuepool-fixed     SQLAlchemy QueuePool(pool_size=15, max_overflow=0):
                      opens up to 15 on demand and keeps every one
  threaded-pool       psycopg2.pool.ThreadedConnectionPool(5, 15): opens 5
                      when created, up to 15 on demand, keeps 5 idle
  per-thread          one psycopg2 connection per thread, opened on its first
                      workflow and kept (between workflows too) until the end
  per-item            a new psycopg2 connection for every workflow, closed at
                      its end
"""
import contextlib
import os
import threading

import psycopg2
import psycopg2.pool

NAMES = ("queuepool-overflow", "queuepool-fixed", "threaded-pool", "per-thread", "per-item")


class _Psycopg2Handle:
    def __init__(self, conn):
        self.conn = conn

    def query(self, sql, params=None):
        with self.conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else None

    def commit(self):
        self.conn.commit()


class _SQLAlchemyHandle:
    """A Connection in an explicit transaction (SQLAlchemy 1.4 and 2.0 alike)."""

    def __init__(self, conn):
        self.conn, self.trans = conn, conn.begin()

    def query(self, sql, params=None):
        r = self.conn.exec_driver_sql(sql, params or ())
        return r.fetchall() if r.returns_rows else None

    def commit(self):
        self.trans.commit()


class QueuePoolShape:
    def __init__(self, app, pool_size, max_overflow):
        import sqlalchemy
        url = sqlalchemy.engine.URL.create(
            "postgresql+psycopg2", username=os.environ.get("PGUSER"),
            database=os.environ.get("PGDATABASE"),
            query={"host": os.environ["PGHOST"], "port": os.environ.get("PGPORT", "5432")})
        # pool_timeout: a checkout waits for a connection of the client pool
        # this long once pool_size + max_overflow are out (never with at most
        # that many threads, which the tests and the benchmark keep to)
        self.engine = sqlalchemy.create_engine(
            url, poolclass=sqlalchemy.pool.QueuePool, pool_size=pool_size,
            max_overflow=max_overflow, pool_timeout=300,
            connect_args={"application_name": app})

    @contextlib.contextmanager
    def connection(self):
        with self.engine.connect() as conn:
            yield _SQLAlchemyHandle(conn)

    def close(self):
        self.engine.dispose()


class ThreadedPoolShape:
    def __init__(self, app, minconn, maxconn):
        # opens minconn connections now, in the calling thread
        self.pool = psycopg2.pool.ThreadedConnectionPool(minconn, maxconn,
                                                         f"application_name={app}")

    @contextlib.contextmanager
    def connection(self):
        conn = self.pool.getconn()
        broken = True
        try:
            yield _Psycopg2Handle(conn)
            broken = False
        finally:
            if broken:
                with contextlib.suppress(psycopg2.Error):
                    conn.rollback()
            self.pool.putconn(conn, close=bool(conn.closed))

    def close(self):
        self.pool.closeall()


class PerThreadShape:
    def __init__(self, app):
        self.dsn = f"application_name={app}"
        self.local = threading.local()
        self.lock = threading.Lock()
        self.all = []

    @contextlib.contextmanager
    def connection(self):
        conn = getattr(self.local, "conn", None)
        if conn is None or conn.closed:
            conn = self.local.conn = psycopg2.connect(self.dsn)
            with self.lock:
                self.all.append(conn)
        try:
            yield _Psycopg2Handle(conn)
        except BaseException:
            with contextlib.suppress(psycopg2.Error):
                conn.rollback()
            raise

    def close(self):
        with self.lock:
            for conn in self.all:
                conn.close()
            self.all = []


class PerItemShape:
    def __init__(self, app):
        self.dsn = f"application_name={app}"

    @contextlib.contextmanager
    def connection(self):
        conn = psycopg2.connect(self.dsn)
        try:
            yield _Psycopg2Handle(conn)
        finally:
            conn.close()

    def close(self):
        pass


def make(name, app):
    """The shape NAME (one of NAMES); its connections carry application_name app."""
    if name == "queuepool-overflow":
        return QueuePoolShape(app, 5, 10)
    if name == "queuepool-fixed":
        return QueuePoolShape(app, 15, 0)
    if name == "threaded-pool":
        return ThreadedPoolShape(app, 5, 15)
    if name == "per-thread":
        return PerThreadShape(app)
    if name == "per-item":
        return PerItemShape(app)
    raise ValueError(f"unknown client shape {name!r}; known: {', '.join(NAMES)}")
