/* idle_test.c - idle release, surplus release and transparent reconnect
 * of libdynshim.so against a real server (with-pg.sh), with the shim
 * preloaded by ctest. libpq is linked directly.
 *
 *   idle_test CASE
 *
 * Assertions read the coordinator (ds_stats_get), the server
 * (pg_stat_activity through a psql run without the shim) and the server's
 * log ($PGHOST/server.log, written by with-pg.sh's server). Exit 0: passed. */
#include "dynshim/coord.h"

#include <errno.h>
#include <fcntl.h>
#include <libpq-events.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "dstest.h"

#define APP "application_name=dsidle"

static const char *segment;
static ds_handle *coord;
static int is_child;

static double now_s(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sleep_s(double s)
{
        struct timespec ts = {(time_t)s, (long)((s - (time_t)s) * 1e9)};
        nanosleep(&ts, NULL);
}

static void destroy_segment(void)
{
        if (is_child)
                return;
        if (coord)
                ds_detach(coord);
        coord = NULL;
        ds_segment_destroy(segment, NULL, 0);
}

static ds_handle *pool(void)
{
        if (!coord) {
                char err[256];
                int rc = ds_attach(segment, 0, &coord, err, sizeof(err));
                CHECK(rc == 0, "attach %s: %s", segment, err);
        }
        return coord;
}

/* One scraper's counters (zero if it is not known). */
static struct ds_scraper_stats scraper(const char *name)
{
        struct ds_stats st;
        struct ds_scraper_stats out = {0};
        CHECK(ds_stats_get(pool(), &st) == 0, "stats of %s", segment);
        for (size_t i = 0; i < st.n_scrapers; i++)
                if (!strcmp(st.scrapers[i].name, name))
                        out = st.scrapers[i];
        ds_stats_free(&st);
        return out;
}

static uint32_t pool_held(void)
{
        struct ds_stats st;
        CHECK(ds_stats_get(pool(), &st) == 0, "stats of %s", segment);
        uint32_t h = st.held;
        ds_stats_free(&st);
        return h;
}

/* Client backends with application_name app, counted without the shim. */
static int server_count_app(const char *app)
{
        char cmd[512];
        snprintf(cmd, sizeof(cmd),
                 "env -u LD_PRELOAD psql -XAtqc \"SELECT count(*) FROM pg_stat_activity WHERE "
                 "backend_type = 'client backend' AND application_name = '%s'\"",
                 app);
        FILE *f = popen(cmd, "r");
        CHECK(f, "popen psql: %s", strerror(errno));
        int n = -1;
        if (fscanf(f, "%d", &n) != 1)
                n = -1;
        CHECK(pclose(f) == 0 && n >= 0, "psql could not count the server's sessions");
        return n;
}

static int server_count(void)
{
        return server_count_app("dsidle");
}

static void make_pool(uint32_t size, uint32_t soft, uint32_t max, uint32_t idle_ms,
                      uint32_t idle_release)
{
        struct ds_config cfg;
        ds_config_defaults(&cfg);
        cfg.pool_size = size;
        cfg.soft_limit = soft;
        cfg.max_limit = max;
        cfg.idle_timeout_ms = idle_ms;
        cfg.realloc_interval_ms = 1000;
        cfg.wait_timeout_ms = 10000;
        cfg.idle_release = idle_release;
        dstest_create_pool(segment, &cfg);
}

static PGconn *connect_ok(void)
{
        PGconn *c = PQconnectdb(APP);
        CHECK(c && PQstatus(c) == CONNECTION_OK, "connect: %s", c ? PQerrorMessage(c) : "NULL");
        return c;
}

static int query_int(PGconn *c, const char *sql)
{
        PGresult *r = PQexec(c, sql);
        CHECK(r && PQresultStatus(r) == PGRES_TUPLES_OK, "%s: %s", sql, PQerrorMessage(c));
        int v = atoi(PQgetvalue(r, 0, 0));
        PQclear(r);
        return v;
}

static void command_ok(PGconn *c, const char *sql)
{
        PGresult *r = PQexec(c, sql);
        CHECK(r && (PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK),
              "%s: %s", sql, PQerrorMessage(c));
        PQclear(r);
}

/* Waits until the pool and the server both show want of this test's
 * connections, up to limit_s; returns the time it took, or -1. */
static double wait_for(uint32_t want, double limit_s)
{
        double t0 = now_s();
        while (now_s() - t0 < limit_s) {
                if (pool_held() == want && server_count() == (int)want)
                        return now_s() - t0;
                sleep_s(0.05);
        }
        return -1;
}

/* The server log's lines that a release must never cause. */
static void server_log_is_clean(void)
{
        const char *path = getenv("DS_PG_LOG");
        CHECK(path, "DS_PG_LOG (set by with-pg.sh) names the server's log");
        FILE *f = fopen(path, "r");
        CHECK(f, "open %s: %s", path, strerror(errno));
        char line[1024];
        int bad = 0;
        while (fgets(line, sizeof(line), f)) {
                if (strstr(line, "unexpected EOF") || strstr(line, "could not receive data") ||
                    strstr(line, "connection reset") || strstr(line, "could not send data") ||
                    strstr(line, "ERROR:") || strstr(line, "FATAL:")) {
                        fprintf(stderr, "server log: %s", line);
                        bad++;
                }
        }
        fclose(f);
        CHECK(bad == 0, "%d error lines in the server log", bad);
}

/* ---- cases ---- */

/* With TLS: the backends really use it. */
static void connections_use_tls(void)
{
        PGconn *c = PQconnectdb(APP);
        CHECK(PQstatus(c) == CONNECTION_OK, "connect: %s", PQerrorMessage(c));
        int tls = PQsslInUse(c);
        PQfinish(c);
        CHECK(!getenv("DS_PG_SSL") || tls, "DS_PG_SSL is set and the connection is not TLS");
}

/* SPEC 4.5: an idle process's connections are closed on the server side
 * and their slots returned; the next use reconnects the same PGconn with
 * the same fd number and client state, with no error. */
static void idle_release_and_transparent_reconnect(void)
{
        /* idle_timeout 2.5 s: long enough that a slow (sanitized, loaded) run
         * checks its connections before they fall idle */
        make_pool(20, 10, 15, 2500, 1);
        connections_use_tls();
        PGconn *c[3];
        int fd[3], pid[3];
        for (int i = 0; i < 3; i++) {
                c[i] = connect_ok();
                fd[i] = PQsocket(c[i]);
                pid[i] = PQbackendPID(c[i]);
                CHECK(query_int(c[i], "SELECT 1") == 1, "query");
        }
        CHECK(PQsetnonblocking(c[1], 1) == 0, "nonblocking");
        CHECK(PQsetClientEncoding(c[2], "LATIN1") == 0, "encoding: %s", PQerrorMessage(c[2]));
        CHECK(pool_held() == 3 && server_count() == 3, "3 connections before idling");
        /* idle_timeout 2.5 s + realloc_interval 1 s + 1 s */
        double t = wait_for(0, 4.5);
        CHECK(t >= 0, "still held %u, on the server %d after 4.5 s idle", pool_held(),
              server_count());
        fprintf(stderr, "released after %.2f s idle\n", t);
        struct ds_scraper_stats s = scraper("dsidle");
        CHECK(s.idle_releases == 3, "idle releases %llu", (unsigned long long)s.idle_releases);
        for (int i = 0; i < 3; i++) {
                CHECK(PQstatus(c[i]) == CONNECTION_OK, "released connection %d reports bad", i);
                CHECK(PQtransactionStatus(c[i]) == PQTRANS_IDLE, "transaction status");
                CHECK(PQsocket(c[i]) == fd[i], "socket %d while released, was %d", PQsocket(c[i]),
                      fd[i]);
                CHECK(PQerrorMessage(c[i])[0] == '\0', "error message \"%s\"",
                      PQerrorMessage(c[i]));
                CHECK(PQisBusy(c[i]) == 0 && PQflush(c[i]) == 0, "busy or unflushed");
                CHECK(fcntl(fd[i], F_GETFD) >= 0, "fd %d is not kept open", fd[i]);
        }
        /* nonblocking: a query by the asynchronous API */
        CHECK(PQsendQuery(c[1], "SELECT 2") == 1, "send: %s", PQerrorMessage(c[1]));
        PGresult *r;
        int got = 0;
        while (PQflush(c[1]) > 0)
                sleep_s(0.001);
        for (;;) {
                CHECK(PQconsumeInput(c[1]) == 1, "consume: %s", PQerrorMessage(c[1]));
                if (PQisBusy(c[1])) {
                        sleep_s(0.001);
                        continue;
                }
                if (!(r = PQgetResult(c[1])))
                        break;
                CHECK(PQresultStatus(r) == PGRES_TUPLES_OK, "async: %s", PQerrorMessage(c[1]));
                got = atoi(PQgetvalue(r, 0, 0));
                PQclear(r);
        }
        CHECK(got == 2, "async result %d", got);
        CHECK(PQisnonblocking(c[1]) == 1, "non-blocking mode lost");
        CHECK(query_int(c[0], "SELECT 3") == 3, "query after release");
        CHECK(query_int(c[2], "SELECT 4") == 4, "query after release");
        CHECK(!strcmp(pg_encoding_to_char(PQclientEncoding(c[2])), "LATIN1"), "client encoding %s",
              pg_encoding_to_char(PQclientEncoding(c[2])));
        r = PQexec(c[2], "SHOW client_encoding");
        CHECK(r && !strcmp(PQgetvalue(r, 0, 0), "LATIN1"), "server encoding");
        PQclear(r);
        for (int i = 0; i < 3; i++) {
                CHECK(PQsocket(c[i]) == fd[i], "socket %d after reconnect, was %d", PQsocket(c[i]),
                      fd[i]);
                CHECK(PQbackendPID(c[i]) != pid[i], "backend %d was not replaced", pid[i]);
        }
        CHECK(pool_held() == 3 && server_count() == 3, "held %u, on the server %d after reuse",
              pool_held(), server_count());
        s = scraper("dsidle");
        CHECK(s.reconnects == 3, "reconnects %llu", (unsigned long long)s.reconnects);
        /* released again, then finished while released */
        CHECK(wait_for(0, 4.5) >= 0, "not released a second time");
        for (int i = 0; i < 3; i++)
                PQfinish(c[i]);
        for (int i = 0; i < 3; i++)
                CHECK(fcntl(fd[i], F_GETFD) < 0, "fd %d left open after PQfinish", fd[i]);
        CHECK(pool_held() == 0, "held %u after finishing", pool_held());
        server_log_is_clean();
}

/* A connection inside a transaction is never released; its idle sibling is. */
static void transaction_is_never_released(void)
{
        make_pool(20, 10, 15, 1000, 1);
        PGconn *in_tx = connect_ok(), *idle = connect_ok();
        command_ok(in_tx, "BEGIN");
        command_ok(in_tx, "CREATE TABLE kept_in_tx(x int)");
        command_ok(idle, "SELECT 1");
        sleep_s(3.5);
        CHECK(pool_held() == 1 && server_count() == 1, "held %u, on the server %d", pool_held(),
              server_count());
        command_ok(in_tx, "INSERT INTO kept_in_tx VALUES (1)");
        command_ok(in_tx, "COMMIT");
        CHECK(query_int(idle, "SELECT count(*) FROM kept_in_tx") == 1, "transaction lost");
        PQfinish(in_tx);
        PQfinish(idle);
        server_log_is_clean();
}

static void *run_long_query(void *arg)
{
        command_ok(arg, "SELECT pg_sleep(4)");
        return NULL;
}

/* A call in flight longer than idle_timeout keeps its scraper active: no
 * idle release meanwhile, of it or of the process's other connection;
 * once it has returned and the scraper rests, both are released. */
static void long_call_keeps_scraper_active(void)
{
        make_pool(20, 10, 15, 1000, 1);
        PGconn *busy = connect_ok(), *idle = connect_ok();
        command_ok(idle, "SELECT 1");
        pthread_t th;
        CHECK(pthread_create(&th, NULL, run_long_query, busy) == 0, "pthread_create");
        double t0 = now_s();
        int samples = 0;
        while (now_s() - t0 < 3.6) {
                struct ds_scraper_stats s = scraper("dsidle");
                if (now_s() - t0 > 0.3) {
                        CHECK(s.active, "%.1f s into a 4 s query the scraper is idle",
                              now_s() - t0);
                        CHECK(s.held == 2, "%.1f s into a 4 s query the scraper holds %u",
                              now_s() - t0, s.held);
                        samples++;
                }
                sleep_s(0.1);
        }
        CHECK(server_count() == 2, "the server shows %d sessions during the query", server_count());
        pthread_join(th, NULL);
        CHECK(samples > 20, "only %d samples", samples);
        CHECK(wait_for(0, 5.0) >= 0, "after the query the scraper's connections were kept");
        CHECK(query_int(busy, "SELECT 7") == 7 && query_int(idle, "SELECT 8") == 8,
              "the released connections do not come back");
        PQfinish(busy);
        PQfinish(idle);
        server_log_is_clean();
}

/* Short calls, one after another, keep their scraper active and their
 * connection in place for as long as they go on: the calls only mark the
 * connection, and the life thread must pass that on to the pool before it
 * asks what is idle. Once they stop, the connection is released. */
static void steady_calls_keep_scraper_active(void)
{
        make_pool(20, 10, 15, 1000, 1);
        PGconn *c = connect_ok();
        int pid = PQbackendPID(c);
        double t0 = now_s();
        int samples = 0;
        while (now_s() - t0 < 3.5) {
                CHECK(query_int(c, "SELECT 1") == 1, "query");
                struct ds_scraper_stats s = scraper("dsidle");
                if (now_s() - t0 > 0.3) {
                        CHECK(s.active, "%.1f s into steady queries the scraper is idle",
                              now_s() - t0);
                        CHECK(s.held == 1 && s.idle_releases == 0,
                              "%.1f s into steady queries: held %u, idle releases %llu",
                              now_s() - t0, s.held, (unsigned long long)s.idle_releases);
                        samples++;
                }
                sleep_s(0.05);
        }
        CHECK(samples > 40, "only %d samples", samples);
        CHECK(server_count() == 1, "the server shows %d sessions", server_count());
        CHECK(PQbackendPID(c) == pid, "the connection was replaced while in use");
        CHECK(wait_for(0, 5.0) >= 0, "once the queries stopped the connection was kept");
        CHECK(!scraper("dsidle").active, "idle, but still shown active");
        CHECK(query_int(c, "SELECT 2") == 2, "the released connection does not come back");
        PQfinish(c);
        server_log_is_clean();
}

static int event_proc(PGEventId id, void *info, void *pass)
{
        (void)id, (void)info, (void)pass;
        return 1;
}

/* Each kind of session state pins its connection (SPEC 4.5), however it
 * was made; state that is gone again does not. */
static void pinned_connections_are_never_released(void)
{
        make_pool(20, 10, 15, 1000, 1);
        static const char *const pins[] = {
            "PREPARE p1 AS SELECT 1",
            "LISTEN channel_one",
            "SET work_mem = '8MB'",
            "select set_config('work_mem', '8MB', false)",
            "CREATE TEMP TABLE tmp_one(x int)",
            "SELECT pg_advisory_lock(42)",
            "SELECT 1; set search_path = public",
            "/* comment */ Create Temporary Table tmp_two(x int)",
            "SELECT pg_try_advisory_lock(43)",
            /* state made where no statement's text shows it */
            "DO $$BEGIN PERFORM set_config('work_mem', '9MB', false); END$$",
            "SELECT 1 AS x INTO TEMP tmp_three",
        };
        enum { NP = sizeof(pins) / sizeof(pins[0]) };
        PGconn *c[NP + 4];
        for (int i = 0; i < NP; i++) {
                c[i] = connect_ok();
                command_ok(c[i], pins[i]);
        }
        c[NP] = connect_ok(); /* named prepared statement by the protocol */
        PGresult *r = PQprepare(c[NP], "named", "SELECT $1::int", 1, NULL);
        CHECK(r && PQresultStatus(r) == PGRES_COMMAND_OK, "prepare: %s", PQerrorMessage(c[NP]));
        PQclear(r);
        c[NP + 1] = connect_ok(); /* cursor WITH HOLD */
        command_ok(c[NP + 1], "BEGIN");
        command_ok(c[NP + 1], "DECLARE held_cur CURSOR WITH HOLD FOR SELECT 7");
        command_ok(c[NP + 1], "COMMIT");
        /* not pinned: transaction-scoped state only */
        c[NP + 2] = connect_ok();
        command_ok(c[NP + 2],
                   "BEGIN; SET LOCAL work_mem = '8MB'; SELECT "
                   "set_config('work_mem', '9MB', true); SELECT pg_advisory_xact_lock(44); "
                   "COMMIT");
        command_ok(c[NP + 2], "SELECT 'SET x = 1; LISTEN y'");
        /* state made and dropped again */
        command_ok(c[NP + 2], "CREATE TEMP TABLE tmp_gone(x int); DROP TABLE tmp_gone");
        command_ok(c[NP + 2], "PREPARE p_gone AS SELECT 1; DEALLOCATE p_gone");
        /* an event procedure: the session is not asked (the check's result
         * would reach the procedure from the shim's thread) */
        c[NP + 3] = connect_ok();
        CHECK(PQregisterEventProc(c[NP + 3], event_proc, "t", NULL), "register event procedure");
        int pinned = NP + 3;
        CHECK(pool_held() == (uint32_t)pinned + 1, "held %u", pool_held());
        double t = wait_for((uint32_t)pinned, 3.5);
        CHECK(t >= 0, "held %u, on the server %d (want %d pinned)", pool_held(), server_count(),
              pinned);
        sleep_s(1.0);
        CHECK(pool_held() == (uint32_t)pinned && server_count() == pinned,
              "held %u, on the server %d later", pool_held(), server_count());
        CHECK(query_int(c[0], "EXECUTE p1") == 1, "prepared statement lost");
        r = PQexecPrepared(c[NP], "named", 1, (const char *const[]){"5"}, NULL, NULL, 0);
        CHECK(r && PQresultStatus(r) == PGRES_TUPLES_OK && atoi(PQgetvalue(r, 0, 0)) == 5,
              "named statement lost: %s", PQerrorMessage(c[NP]));
        PQclear(r);
        CHECK(query_int(c[NP + 1], "FETCH held_cur") == 7, "cursor lost");
        CHECK(query_int(c[4], "SELECT count(*) FROM tmp_one") == 0, "temp table lost");
        CHECK(query_int(c[NP + 2], "SELECT 8") == 8, "unpinned connection after release");
        for (int i = 0; i < NP + 4; i++)
                PQfinish(c[i]);
        server_log_is_clean();
}

/* idle_release=off keeps every slot. */
static void idle_release_off_keeps_connections(void)
{
        make_pool(20, 10, 15, 1000, 0);
        PGconn *c[3];
        for (int i = 0; i < 3; i++) {
                c[i] = connect_ok();
                command_ok(c[i], "SELECT 1");
        }
        sleep_s(3.5);
        CHECK(pool_held() == 3 && server_count() == 3, "held %u, on the server %d", pool_held(),
              server_count());
        CHECK(scraper("dsidle").idle_releases == 0, "idle releases counted");
        for (int i = 0; i < 3; i++)
                PQfinish(c[i]);
}

/* Scraper b: opens n connections (each waits as long as it must) and
 * holds them for hold_s. Run as a separate program image. */
static void surplus_b_child(void)
{
        int n = atoi(getenv("DSIDLE_N"));
        PGconn *c[32];
        for (int i = 0; i < n; i++) {
                c[i] = PQconnectdb("application_name=dsidle_b");
                CHECK(PQstatus(c[i]) == CONNECTION_OK, "b connect %d: %s", i, PQerrorMessage(c[i]));
                command_ok(c[i], "SELECT 1");
        }
        sleep_s(atof(getenv("DSIDLE_HOLD")));
        for (int i = 0; i < n; i++)
                PQfinish(c[i]);
}

static pid_t spawn_b(const char *self, int n, double hold)
{
        pid_t p = fork();
        CHECK(p >= 0, "fork");
        if (p == 0) {
                char nb[16], hb[32];
                snprintf(nb, sizeof(nb), "%d", n);
                snprintf(hb, sizeof(hb), "%g", hold);
                setenv("DSIDLE_N", nb, 1);
                setenv("DSIDLE_HOLD", hb, 1);
                setenv("DYNSHIM_SCRAPER", "b", 1);
                execl(self, self, "surplus_b_child", (char *)NULL);
                _exit(127);
        }
        return p;
}

/* A scraper above its limit while another waits gives back its surplus
 * (connections unused for the handover delay, then any after a second);
 * the other reaches its limit. b's own idle release is off: b opens its
 * connections one after the other from one thread, so with it on, b's
 * waiting connect would take over b's own connections unused meanwhile
 * (a handover) and b would never hold all ten at once. */
static void surplus_goes_to_waiting_scraper(const char *self)
{
        make_pool(20, 10, 15, 60000, 1);
        char err[300] = "";
        const char *const off[] = {"scraper.b.idle_release=off"};
        CHECK(ds_update(pool(), off, 1, NULL, 0, NULL, err, sizeof(err)) == 0, "%s", err);
        setenv("DYNSHIM_SCRAPER", "a", 1); /* before the first libpq call */
        PGconn *c[15];
        for (int i = 0; i < 15; i++) {
                c[i] = connect_ok();
                command_ok(c[i], "SELECT 1");
        }
        CHECK(scraper("a").held == 15, "a holds %u", scraper("a").held);
        pid_t b = spawn_b(self, 10, 2.0);
        double t0 = now_s(), t = -1;
        while (now_s() - t0 < 8) {
                if (scraper("b").held == 10) {
                        t = now_s() - t0;
                        break;
                }
                sleep_s(0.05);
        }
        struct ds_scraper_stats sa = scraper("a");
        CHECK(t >= 0, "b holds %u, a holds %u after 8 s", scraper("b").held, sa.held);
        fprintf(stderr, "b reached 10 after %.2f s\n", t);
        CHECK(sa.held == 10 && sa.surplus_releases == 5, "a holds %u, surplus releases %llu",
              sa.held, (unsigned long long)sa.surplus_releases);
        CHECK(server_count() + server_count_app("dsidle_b") <= 20, "more than 20 backends");
        int st;
        CHECK(waitpid(b, &st, 0) == b && WIFEXITED(st) && WEXITSTATUS(st) == 0, "b failed");
        /* b left with nothing held or waiting: it is idle at once (not
         * after idle_timeout, a minute here), so a's limit is 15 again and
         * its released connections reconnect without an error */
        CHECK(scraper("b").active == 0, "b still counts as active after it exited");
        CHECK(scraper("a").limit == 15, "a's limit is %u", scraper("a").limit);
        for (int round = 0; round < 2; round++)
                for (int i = 0; i < 15; i++)
                        CHECK(query_int(c[i], "SELECT 5") == 5, "a's connection %d after surplus",
                              i);
        CHECK(scraper("a").held <= 15, "a holds %u above its limit", scraper("a").held);
        CHECK(server_count() <= 15, "a has %d backends", server_count());
        for (int i = 0; i < 15; i++)
                PQfinish(c[i]);
        server_log_is_clean();
}

/* ---- connection reuse ---- */

static void set_reuse(const char *on, const char *timeout)
{
        char a[32], b[48], err[256];
        snprintf(a, sizeof(a), "reuse=%s", on);
        snprintf(b, sizeof(b), "reuse_timeout=%s", timeout);
        const char *kv[] = {a, b};
        CHECK(ds_update_config(pool(), kv, 2, NULL, err, sizeof(err)) == 0, "%s", err);
}

static int notices_seen;
static void count_notice(void *arg, const char *msg)
{
        (void)arg;
        (void)msg;
        notices_seen++;
}

/* Opens a connection, leaves state of every kind in its session and on the
 * client side, finishes it (parked), and opens the same parameters again:
 * the same backend (reused), with a session and a PGconn like a fresh one. */
static void reuse_gives_a_fresh_session(void)
{
        make_pool(4, 4, 4, 60000, 1);
        set_reuse("on", "30");
        setenv("DYNSHIM_SCRAPER", "dsidle", 1);
        PGconn *c = connect_ok();
        int pid = PQbackendPID(c);
        int enc = PQclientEncoding(c);
        /* server-side state, one statement per kind */
        command_ok(c, "SET work_mem = '7MB'");
        command_ok(c, "SET application_name = 'changed'");
        command_ok(c, "PREPARE p1 AS SELECT 1");
        PQclear(PQprepare(c, "p2", "SELECT 2", 0, NULL));
        command_ok(c, "CREATE TEMP TABLE reuse_tmp (x int)");
        command_ok(c, "LISTEN reuse_chan");
        command_ok(c, "NOTIFY reuse_chan"); /* queued in libpq, never read */
        command_ok(c, "SELECT pg_advisory_lock(4242)");
        /* client-side state */
        PQsetNoticeProcessor(c, count_notice, NULL);
        PQsetErrorVerbosity(c, PQERRORS_VERBOSE);
        PQsetErrorContextVisibility(c, PQSHOW_CONTEXT_ALWAYS);
        CHECK(PQsetClientEncoding(c, "LATIN1") == 0, "set LATIN1");
        PQsetnonblocking(c, 1);
        FILE *trace = fopen("/dev/null", "w");
        PQtrace(c, trace);
        PQfinish(c);
        CHECK(scraper("dsidle").parked == 1, "parked %u", scraper("dsidle").parked);
        CHECK(pool_held() == 1, "held %u", pool_held());

        c = connect_ok();
        CHECK(PQbackendPID(c) == pid, "not reused: backend %d, was %d", PQbackendPID(c), pid);
        struct ds_scraper_stats s = scraper("dsidle");
        CHECK(s.parked == 0 && s.reuses == 1 && s.connects == 1,
              "parked %u reuses %llu connects %llu", s.parked, (unsigned long long)s.reuses,
              (unsigned long long)s.connects);
        CHECK(server_count() == 1, "server %d", server_count());
        PGresult *r = PQexec(c, "SHOW work_mem");
        CHECK(!strcmp(PQgetvalue(r, 0, 0), "4MB"), "SET: work_mem %s", PQgetvalue(r, 0, 0));
        PQclear(r);
        r = PQexec(c, "SHOW application_name");
        CHECK(!strcmp(PQgetvalue(r, 0, 0), "dsidle"), "SET: application_name %s",
              PQgetvalue(r, 0, 0));
        PQclear(r);
        CHECK(query_int(c, "SELECT count(*) FROM pg_prepared_statements") == 0,
              "prepared statements survived");
        CHECK(query_int(c, "SELECT count(*) FROM pg_class WHERE relname = 'reuse_tmp'") == 0,
              "temp table survived");
        CHECK(query_int(c, "SELECT count(*) FROM pg_listening_channels()") == 0, "LISTEN survived");
        PQconsumeInput(c);
        PGnotify *n = PQnotifies(c);
        CHECK(n == NULL, "a notification of the first use is seen: %s", n->relname);
        CHECK(query_int(c, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0,
              "advisory lock survived");
        CHECK(PQisnonblocking(c) == 0, "non-blocking mode survived");
        CHECK(PQclientEncoding(c) == enc, "client encoding %d, fresh %d", PQclientEncoding(c), enc);
        CHECK(PQsetErrorVerbosity(c, PQERRORS_DEFAULT) == PQERRORS_DEFAULT, "verbosity survived");
        CHECK(PQsetErrorContextVisibility(c, PQSHOW_CONTEXT_ERRORS) == PQSHOW_CONTEXT_ERRORS,
              "context visibility survived");
        CHECK(PQsetNoticeProcessor(c, NULL, NULL) != count_notice, "notice processor survived");
        notices_seen = 0;
        command_ok(c, "DO $$BEGIN RAISE NOTICE 'x'; END$$");
        CHECK(notices_seen == 0, "the first use's notice processor was called");
        fclose(trace);
        /* a connection finished inside a transaction: rolled back, as by the
         * server when a client goes away, then parked */
        command_ok(c, "CREATE TABLE IF NOT EXISTS reuse_rb (x int)");
        command_ok(c, "BEGIN");
        command_ok(c, "INSERT INTO reuse_rb VALUES (1)");
        PQfinish(c);
        CHECK(scraper("dsidle").parked == 1, "a connection in a transaction was not parked");
        c = connect_ok();
        CHECK(PQbackendPID(c) == pid && PQtransactionStatus(c) == PQTRANS_IDLE,
              "not reused idle after a transaction");
        CHECK(query_int(c, "SELECT count(*) FROM reuse_rb") == 0, "the transaction was kept");
        command_ok(c, "DROP TABLE reuse_rb");
        /* a connection in COPY is closed */
        PGresult *copy = PQexec(c, "COPY (SELECT 1) TO STDOUT");
        CHECK(PQresultStatus(copy) == PGRES_COPY_OUT, "COPY: %s", PQerrorMessage(c));
        PQclear(copy);
        PQfinish(c);
        CHECK(scraper("dsidle").parked == 0, "a connection in COPY was parked");
        server_log_is_clean();
}

/* Parked connections: closed after reuse_timeout; never parked with reuse
 * off or with an event procedure; closed at exit; a forked child never
 * takes its parent's; parameters must match exactly. */
static void parked_connections_lifecycle(void)
{
        make_pool(4, 4, 4, 60000, 1);
        set_reuse("off", "30");
        setenv("DYNSHIM_SCRAPER", "dsidle", 1);
        PQfinish(connect_ok());
        CHECK(scraper("dsidle").parked == 0 && pool_held() == 0, "reuse off parked a connection");
        CHECK(wait_for(0, 2) >= 0, "reuse off: backend left");
        set_reuse("on", "0.4");
        PGconn *c = connect_ok();
        PQregisterEventProc(c, event_proc, "t", NULL);
        PQfinish(c);
        CHECK(scraper("dsidle").parked == 0, "a connection with an event procedure was parked");
        PQfinish(connect_ok());
        CHECK(scraper("dsidle").parked == 1, "not parked");
        double t = wait_for(0, 3);
        CHECK(t >= 0.2, "parked connection not closed after reuse_timeout (%.2f s)", t);
        fprintf(stderr, "parked connection closed after %.2f s\n", t);

        set_reuse("on", "30");
        c = connect_ok();
        int pid = PQbackendPID(c);
        PQfinish(c);
        /* other parameters: a new connection */
        PGconn *o = PQconnectdb(APP " connect_timeout=5");
        CHECK(PQstatus(o) == CONNECTION_OK && PQbackendPID(o) != pid, "other parameters reused");
        PQfinish(o);
        pid_t child = fork();
        CHECK(child >= 0, "fork");
        if (child == 0) {
                is_child = 1;
                PGconn *k = PQconnectdb(APP);
                int ok = PQstatus(k) == CONNECTION_OK && PQbackendPID(k) != pid;
                PQfinish(k);
                _exit(ok ? 0 : 3);
        }
        int st;
        CHECK(waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0,
              "the child took its parent's parked connection (status %d)", st);
        c = connect_ok();
        CHECK(PQbackendPID(c) == pid && query_int(c, "SELECT 7") == 7,
              "the parent's parked connection after the child: backend %d, was %d", PQbackendPID(c),
              pid);
        PQfinish(c);
        /* at exit: a child that parks and exits leaves nothing behind */
        child = fork();
        CHECK(child >= 0, "fork");
        if (child == 0) {
                is_child = 1;
                PQfinish(connect_ok()); /* its own connection, parked, closed at exit */
                exit(0);
        }
        CHECK(waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0,
              "child failed");
        c = connect_ok();
        PQfinish(c);
        set_reuse("off", "30"); /* the parent's parked one is closed by its life thread */
        CHECK(wait_for(0, 3) >= 0, "held %u, server %d after exit and reuse off", pool_held(),
              server_count());
        server_log_is_clean();
}

/* Another scraper's connect waits: parked connections of a full pool are
 * closed at once for it, and the server never sees more than pool_size. */
static void parked_released_first_for_a_waiter(const char *self)
{
        make_pool(3, 3, 3, 60000, 1);
        set_reuse("on", "60");
        setenv("DYNSHIM_SCRAPER", "a", 1);
        PGconn *c[3];
        for (int i = 0; i < 3; i++)
                c[i] = connect_ok();
        for (int i = 0; i < 3; i++)
                PQfinish(c[i]);
        CHECK(scraper("a").parked == 3 && pool_held() == 3, "parked %u held %u",
              scraper("a").parked, pool_held());
        pid_t b = spawn_b(self, 2, 0.5);
        double t0 = now_s(), t = -1;
        int most = 0;
        while (now_s() - t0 < 5) {
                int n = server_count() + server_count_app("dsidle_b");
                most = n > most ? n : most;
                if (scraper("b").held == 2) {
                        t = now_s() - t0;
                        break;
                }
                sleep_s(0.02);
        }
        CHECK(t >= 0, "b holds %u after 5 s; a parked %u", scraper("b").held, scraper("a").parked);
        fprintf(stderr, "b got 2 slots after %.3f s\n", t);
        CHECK(most <= 3, "%d backends for a pool of 3", most);
        CHECK(scraper("a").parked <= 1, "a still parks %u", scraper("a").parked);
        int st;
        CHECK(waitpid(b, &st, 0) == b && WIFEXITED(st) && WEXITSTATUS(st) == 0, "b failed");
        CHECK(pool_held() <= 3, "held %u", pool_held());
        server_log_is_clean();
}

int main(int argc, char **argv)
{
        segment = dstest_start(argc, argv);
        const char *name = argv[1];
        if (!strcmp(name, "surplus_b_child")) {
                is_child = 1;
                surplus_b_child();
                return 0;
        }
        ds_segment_destroy(segment, NULL, 0);
        atexit(destroy_segment);
        if (!strcmp(name, "idle_release_and_transparent_reconnect"))
                idle_release_and_transparent_reconnect();
        else if (!strcmp(name, "transaction_is_never_released"))
                transaction_is_never_released();
        else if (!strcmp(name, "pinned_connections_are_never_released"))
                pinned_connections_are_never_released();
        else if (!strcmp(name, "long_call_keeps_scraper_active"))
                long_call_keeps_scraper_active();
        else if (!strcmp(name, "steady_calls_keep_scraper_active"))
                steady_calls_keep_scraper_active();
        else if (!strcmp(name, "idle_release_off_keeps_connections"))
                idle_release_off_keeps_connections();
        else if (!strcmp(name, "surplus_goes_to_waiting_scraper"))
                surplus_goes_to_waiting_scraper(argv[0]);
        else if (!strcmp(name, "reuse_gives_a_fresh_session"))
                reuse_gives_a_fresh_session();
        else if (!strcmp(name, "parked_connections_lifecycle"))
                parked_connections_lifecycle();
        else if (!strcmp(name, "parked_released_first_for_a_waiter"))
                parked_released_first_for_a_waiter(argv[0]);
        else {
                fprintf(stderr, "unknown case \"%s\"\n", name);
                return 2;
        }
        printf("ok %s\n", name);
        return 0;
}
