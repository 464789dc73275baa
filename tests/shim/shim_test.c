/* shim_test.c - behaviour tests of libdynshim.so, run with the shim
 * preloaded (by ctest, per test) against a real server (with-pg.sh).
 *
 *   shim_test WAY CASE
 *
 * WAY is how this process loads libpq: direct (linked into the program;
 * only in the shim_test_direct build), local (a dependency of a module
 * opened RTLD_LOCAL), ctypes (dlopen("libpq.so.5") + dlsym(handle, ...)),
 * deepbind (a module opened RTLD_DEEPBIND by path), deepbind_bare (the same
 * module opened RTLD_DEEPBIND by bare name along the program's RUNPATH), copy (a module linked
 * against a renamed copy of libpq, beside a module linked against the system one). Assertions read
 * the coordinator (ds_stats_get) and the server (pg_stat_activity, through psql run without the
 * shim). Exit 0: passed. */
#include "pqapi.h"
#include "dynshim/coord.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define APP "application_name=dstest"

static const struct pq_api *pq;     /* the API under test */
static const struct pq_api *pq_sys; /* copy way: the system libpq's module */
static const char *segment;
static ds_handle *coord;
static FILE *errout; /* the original stderr, also when a test captures fd 2 */

#define CHECK(cond, ...)                                                                           \
        do {                                                                                       \
                if (!(cond)) {                                                                     \
                        fprintf(errout, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);            \
                        fprintf(errout, __VA_ARGS__);                                              \
                        fprintf(errout, "\n");                                                     \
                        exit(1);                                                                   \
                }                                                                                  \
        } while (0)

static double now_s(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void destroy_segment(void)
{
        if (coord)
                ds_detach(coord);
        coord = NULL;
        ds_segment_destroy(segment, NULL, 0);
}

/* ---- loading libpq ---- */

#ifdef DSTEST_DIRECT
PQAPI_DEFINE(direct_api)
#endif

static const struct pq_api *module_api(const char *path, int mode)
{
        void *h = dlopen(path, mode);
        CHECK(h, "dlopen %s: %s", path, dlerror());
        const struct pq_api *(*get)(void) = (const struct pq_api *(*)(void))dlsym(h, "pqmod_api");
        CHECK(get, "dlsym pqmod_api: %s", dlerror());
        return get();
}

static const struct pq_api *ctypes_api(void)
{
        static struct pq_api api;
        void *h = dlopen("libpq.so.5", RTLD_NOW | RTLD_LOCAL);
        CHECK(h, "dlopen libpq.so.5: %s", dlerror());
#define SYM(field, name)                                                                           \
        do {                                                                                       \
                *(void **)&api.field = dlsym(h, name);                                             \
                CHECK(api.field, "dlsym %s: %s", name, dlerror());                                 \
        } while (0)
        SYM(connectdb, "PQconnectdb");
        SYM(connectdb_params, "PQconnectdbParams");
        SYM(connect_start, "PQconnectStart");
        SYM(connect_poll, "PQconnectPoll");
        SYM(finish, "PQfinish");
        SYM(reset, "PQreset");
        SYM(ping, "PQping");
        SYM(status, "PQstatus");
        SYM(error_message, "PQerrorMessage");
        SYM(exec, "PQexec");
        SYM(result_status, "PQresultStatus");
        SYM(getvalue, "PQgetvalue");
        SYM(clear, "PQclear");
        SYM(socket, "PQsocket");
        SYM(backend_pid, "PQbackendPID");
        SYM(setdb_login, "PQsetdbLogin");
        SYM(connect_start_params, "PQconnectStartParams");
        SYM(reset_start, "PQresetStart");
        SYM(reset_poll, "PQresetPoll");
#undef SYM
        return &api;
}

static void load(const char *way)
{
        if (!strcmp(way, "direct")) {
#ifdef DSTEST_DIRECT
                pq = direct_api();
                return;
#endif
        } else if (!strcmp(way, "local")) {
                pq = module_api(PQMOD_SYS, RTLD_NOW | RTLD_LOCAL);
                return;
        } else if (!strcmp(way, "ctypes")) {
                pq = ctypes_api();
                return;
        } else if (!strcmp(way, "deepbind")) {
                pq = module_api(PQMOD_SYS, RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
                return;
        } else if (!strcmp(way, "deepbind_bare")) {
                /* found along this program's own RUNPATH, as only the caller's
                 * dlopen can find it */
                pq = module_api("libpqmod_sys.so", RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
                return;
        } else if (!strcmp(way, "copy")) {
                pq_sys = module_api(PQMOD_SYS, RTLD_NOW | RTLD_LOCAL);
                pq = module_api(PQMOD_COPY, RTLD_NOW | RTLD_LOCAL);
                return;
        }
        CHECK(0, "unknown way \"%s\" for this build", way);
}

/* ---- observing the pool and the server ---- */

static ds_handle *pool(void)
{
        if (!coord) {
                char err[256];
                int rc = ds_attach(segment, 0, &coord, err, sizeof(err));
                CHECK(rc == 0, "attach %s: %s", segment, err);
        }
        return coord;
}

struct pool_view {
        uint32_t held, waiting, pool_size, draining;
        uint64_t connects, timeouts, peak;
        char first_scraper[DS_NAME_MAX];
        int first_active;
};

static struct pool_view view(void)
{
        struct ds_stats st;
        struct pool_view v = {0};
        CHECK(ds_stats_get(pool(), &st) == 0, "stats of %s", segment);
        v.held = st.held;
        v.draining = st.draining;
        v.waiting = st.waiting;
        v.pool_size = st.cfg.pool_size;
        v.peak = st.peak_held;
        for (size_t i = 0; i < st.n_scrapers; i++) {
                v.connects += st.scrapers[i].connects;
                v.timeouts += st.scrapers[i].timeouts;
                if (i == 0)
                        v.first_active = st.scrapers[i].active;
                if (i == 0)
                        snprintf(v.first_scraper, sizeof(v.first_scraper), "%s",
                                 st.scrapers[i].name);
        }
        ds_stats_free(&st);
        return v;
}

/* Client backends of this test (application_name dstest), counted by a
 * psql that runs without the shim. */
static int server_count(void)
{
        FILE *f = popen("env -u LD_PRELOAD psql -XAtqc \"SELECT count(*) FROM pg_stat_activity "
                        "WHERE backend_type = 'client backend' AND application_name = 'dstest'\"",
                        "r");
        CHECK(f, "popen psql: %s", strerror(errno));
        int n = -1;
        if (fscanf(f, "%d", &n) != 1)
                n = -1;
        CHECK(pclose(f) == 0 && n >= 0, "psql could not count the server's sessions");
        return n;
}

/* The pool's view once the slots of finished connections have drained
 * (a finish returns before its backend exits), or after 3 s. */
static struct pool_view view_drained(void)
{
        struct pool_view v = view();
        for (double end = now_s() + 3; v.draining && now_s() < end; usleep(2000))
                v = view();
        return v;
}

/* The server's count once it settles at want (backends exit
 * asynchronously after a Terminate), or the last count after 3 s. */
static int server_count_settled(int want)
{
        int n = -1;
        for (double end = now_s() + 3; now_s() < end; usleep(20000))
                if ((n = server_count()) == want)
                        break;
        return n;
}

/* Creates the segment with a small pool before the shim's first connect. */
static void make_pool_idle(uint32_t size, uint32_t wait_ms, uint32_t idle_ms)
{
        struct ds_config cfg;
        struct ds_capacity cap;
        ds_config_defaults(&cfg);
        ds_capacity_defaults(&cap);
        cfg.pool_size = cfg.soft_limit = cfg.max_limit = size;
        cfg.limits_set = DS_LIMIT_SET_ALL;
        if (wait_ms)
                cfg.wait_timeout_ms = wait_ms;
        if (idle_ms)
                cfg.idle_timeout_ms = idle_ms;
        struct ds_create_opts o = {.mode = 0600, .group = (gid_t)-1, .force = 1};
        char err[256];
        int rc = ds_segment_create(segment, &cfg, &cap, &o, err, sizeof(err));
        CHECK(rc == 0, "create %s: %s", segment, err);
}

static void make_pool(uint32_t size, uint32_t wait_ms)
{
        make_pool_idle(size, wait_ms, 0);
}

/* ---- helpers on connections ---- */

static PGconn *connect_ok(void)
{
        PGconn *c = pq->connectdb(APP);
        CHECK(c && pq->status(c) == CONNECTION_OK, "connect: %s",
              c ? pq->error_message(c) : "NULL");
        return c;
}

static int query_int(PGconn *c, const char *sql)
{
        PGresult *r = pq->exec(c, sql);
        CHECK(r && pq->result_status(r) == PGRES_TUPLES_OK, "%s: %s", sql, pq->error_message(c));
        int v = atoi(pq->getvalue(r, 0, 0));
        pq->clear(r);
        return v;
}

/* Opens a transaction on c: the connection is in use, so a connect of
 * this process waiting for a slot cannot free c's slot. */
static void hold_in_transaction(PGconn *c)
{
        PGresult *r = pq->exec(c, "BEGIN");
        CHECK(r && pq->result_status(r) == PGRES_COMMAND_OK, "BEGIN: %s", pq->error_message(c));
        pq->clear(r);
}

/* Points fd 2 at a fresh file so a test can read what the shim wrote. */
static char stderr_path[64];
static void capture_stderr(void)
{
        snprintf(stderr_path, sizeof(stderr_path), "/tmp/dstest-stderr.%d", (int)getpid());
        int fd = open(stderr_path, O_RDWR | O_CREAT | O_TRUNC, 0600);
        CHECK(fd >= 0, "open %s", stderr_path);
        fflush(stderr);
        dup2(fd, 2);
        close(fd);
}

static char *read_file(const char *path)
{
        static char buf[65536];
        int fd = open(path, O_RDONLY);
        CHECK(fd >= 0, "open %s", path);
        ssize_t n = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        buf[n > 0 ? n : 0] = '\0';
        unlink(path);
        return buf;
}

static int count_substr(const char *hay, const char *needle)
{
        int n = 0;
        for (const char *p = hay; (p = strstr(p, needle)) != NULL; p += strlen(needle))
                n++;
        return n;
}

/* ---- cases ---- */

static void finish_returns_slot(void)
{
        PGconn *c[3];
        for (int i = 0; i < 3; i++)
                c[i] = connect_ok();
        struct pool_view v = view();
        CHECK(v.held == 3, "held %u after 3 connects", v.held);
        CHECK(v.connects == 3, "connects %llu", (unsigned long long)v.connects);
        CHECK(server_count() == 3, "server sessions %d", server_count());
        for (int i = 0; i < 3; i++)
                CHECK(query_int(c[i], "SELECT 41 + 1") == 42, "query on connection %d", i);
        for (int i = 0; i < 3; i++)
                pq->finish(c[i]);
        /* the finish does not wait for the backends to exit: their slots
         * drain, still counted, until the server no longer has them */
        int n = -1;
        for (double end = now_s() + 3; now_s() < end && n != 0; usleep(1000)) {
                v = view();
                n = server_count();
                CHECK(v.held >= (uint32_t)n, "held %u while the server has %d sessions", v.held, n);
        }
        CHECK(n == 0, "server sessions %d after finishing all", n);
        v = view_drained();
        CHECK(v.held == 0, "held %u after finishing all", v.held);
}

static void failed_connect_returns_slot(void)
{
        PGconn *c = pq->connectdb("port=1 " APP);
        CHECK(c && pq->status(c) == CONNECTION_BAD, "a connect to port 1 did not fail");
        CHECK(strncmp(pq->error_message(c), "dynshim", 7) != 0, "libpq's own error expected: %s",
              pq->error_message(c));
        struct pool_view v = view();
        CHECK(v.connects == 1, "the failed connect was granted a slot once (connects %llu)",
              (unsigned long long)v.connects);
        CHECK(v.held == 0, "held %u after a failed connect", v.held);
        pq->finish(c);
        CHECK(view().held == 0, "held after finishing a failed connection");
}

/* The server rejects the startup packet (no such database): the failure
 * is seen by the program's own PQconnectPoll, after PQconnectStart. */
static void async_failure_in_poll_returns_slot(void)
{
        PGconn *c = pq->connect_start("dbname=dstest_no_such_db " APP);
        CHECK(c && pq->status(c) != CONNECTION_BAD, "PQconnectStart failed at once: %s",
              c ? pq->error_message(c) : "NULL");
        CHECK(view().held == 1, "held %u while connecting", view().held);
        PostgresPollingStatusType st = PGRES_POLLING_WRITING;
        for (double end = now_s() + 10; st != PGRES_POLLING_FAILED && st != PGRES_POLLING_OK;) {
                CHECK(now_s() < end, "connect did not finish");
                usleep(1000);
                st = pq->connect_poll(c);
        }
        CHECK(st == PGRES_POLLING_FAILED, "connect to a missing database succeeded");
        CHECK(strstr(pq->error_message(c), "dstest_no_such_db"), "error: %s", pq->error_message(c));
        CHECK(view().held == 0, "held %u after PQconnectPoll failed, before PQfinish", view().held);
        pq->finish(c);
        CHECK(view().held == 0, "held after PQfinish");
        CHECK(view().connects == 1, "connects %llu", (unsigned long long)view().connects);
}

static void nested_connect_counted_once(void)
{
        /* PQconnectdb calls PQconnectStart and PQconnectPoll through the PLT. */
        PGconn *a = connect_ok();
        const char *k[] = {"application_name", NULL}, *v[] = {"dstest", NULL};
        PGconn *b = pq->connectdb_params(k, v, 0);
        CHECK(b && pq->status(b) == CONNECTION_OK, "PQconnectdbParams: %s", pq->error_message(b));
        struct pool_view pv = view();
        CHECK(pv.connects == 2, "2 connects counted as %llu", (unsigned long long)pv.connects);
        CHECK(pv.held == 2, "held %u", pv.held);
        pq->finish(a);
        pq->finish(b);
        CHECK(view_drained().held == 0, "held after finish");
}

/* Pings are admitted like connections: each takes a slot for its duration,
 * and a ping that finds no slot reports PQPING_REJECT. */
static void ping_takes_slot_while_pinging(void)
{
        make_pool(1, 0);
        CHECK(pq->ping(APP) == PQPING_OK, "ping");
        struct pool_view v = view();
        CHECK(v.connects == 1 && v.held == 0, "after a ping: connects %llu held %u",
              (unsigned long long)v.connects, v.held);
        PGconn *c = connect_ok();
        hold_in_transaction(c);
        double t0 = now_s();
        PGPing p = pq->ping(APP);
        double dt = now_s() - t0;
        CHECK(p == PQPING_REJECT, "ping with the pool full returned %d", (int)p);
        CHECK(dt > 0.8 && dt < 5, "ping waited %.2f s for DYNSHIM_WAIT_TIMEOUT=1", dt);
        pq->finish(c);
        CHECK(view_drained().held == 0, "held after finish");
}

static void timeout_error_names_scraper_and_pool(void)
{
        make_pool(1, 0);
        PGconn *a = connect_ok();
        hold_in_transaction(a);
        double t0 = now_s();
        PGconn *b = pq->connectdb(APP);
        double dt = now_s() - t0;
        CHECK(b, "PQconnectdb returned NULL when no slot came");
        CHECK(pq->status(b) == CONNECTION_BAD, "second connect over a pool of 1 succeeded");
        const char *msg = pq->error_message(b);
        const char *want = "dynshim: no connection slot for scraper \"a\" within 1 s (pool 1/1 in "
                           "use, limit 1";
        CHECK(!strncmp(msg, want, strlen(want)), "message: %s", msg);
        CHECK(dt > 0.8 && dt < 5, "waited %.2f s for DYNSHIM_WAIT_TIMEOUT=1", dt);
        struct pool_view v = view();
        CHECK(v.held == 1 && v.timeouts == 1, "held %u timeouts %llu", v.held,
              (unsigned long long)v.timeouts);
        CHECK(server_count() == 1, "server sessions %d", server_count());
        pq->finish(b);
        CHECK(view().held == 1, "finishing the refused connection released a slot");
        pq->finish(a);
        CHECK(view_drained().held == 0, "held after finish");
}

static void fork_child_finish_keeps_parent_session(void)
{
        PGconn *c = connect_ok();
        int pid = query_int(c, "SELECT pg_backend_pid()");
        fflush(NULL);
        pid_t child = fork();
        CHECK(child >= 0, "fork");
        if (child == 0) {
                pq->finish(c); /* a child closing an inherited connection */
                _exit(0);
        }
        int status;
        CHECK(waitpid(child, &status, 0) == child && WIFEXITED(status) && !WEXITSTATUS(status),
              "child failed");
        usleep(200000);
        CHECK(query_int(c, "SELECT pg_backend_pid()") == pid, "parent's session changed");
        struct pool_view v = view();
        CHECK(v.held == 1, "held %u after the child's PQfinish", v.held);
        CHECK(server_count() == 1, "server sessions %d", server_count());
        pq->finish(c);
        CHECK(view_drained().held == 0, "held after the parent's finish");
        CHECK(server_count_settled(0) == 0, "session left after the parent's finish");
}

/* Drives an asynchronous connect or reset to its end. */
static PostgresPollingStatusType poll_until_done(PGconn *c,
                                                 PostgresPollingStatusType (*poll)(PGconn *))
{
        PostgresPollingStatusType st = PGRES_POLLING_WRITING;
        for (double end = now_s() + 10; st != PGRES_POLLING_FAILED && st != PGRES_POLLING_OK;) {
                CHECK(now_s() < end, "asynchronous connect did not finish");
                usleep(500);
                st = poll(c);
        }
        return st;
}

/* PQconnectdb, PQconnectdbParams, PQsetdbLogin, PQconnectStart and
 * PQconnectStartParams each hold one slot until PQfinish. */
static void every_connect_entry_point_holds_one_slot(void)
{
        const char *k[] = {"application_name", NULL}, *v[] = {"dstest", NULL};
        PGconn *c[5];
        c[0] = pq->connectdb(APP);
        c[1] = pq->connectdb_params(k, v, 0);
        c[2] = pq->setdb_login(NULL, NULL, NULL, NULL, APP, NULL, NULL);
        c[3] = pq->connect_start(APP);
        c[4] = pq->connect_start_params(k, v, 0);
        CHECK(poll_until_done(c[3], pq->connect_poll) == PGRES_POLLING_OK, "PQconnectStart: %s",
              pq->error_message(c[3]));
        CHECK(poll_until_done(c[4], pq->connect_poll) == PGRES_POLLING_OK,
              "PQconnectStartParams: %s", pq->error_message(c[4]));
        for (int i = 0; i < 5; i++)
                CHECK(c[i] && pq->status(c[i]) == CONNECTION_OK, "entry point %d: %s", i,
                      c[i] ? pq->error_message(c[i]) : "NULL");
        struct pool_view pv = view();
        CHECK(pv.held == 5 && pv.connects == 5, "held %u connects %llu after 5 connects", pv.held,
              (unsigned long long)pv.connects);
        CHECK(server_count() == 5, "server sessions %d", server_count());
        for (int i = 0; i < 5; i++) {
                pq->finish(c[i]);
                CHECK(view_drained().held == (uint32_t)(4 - i), "held %u after %d finishes",
                      view().held, i + 1);
        }
        CHECK(server_count_settled(0) == 0, "sessions left after finishing");
}

/* An asynchronous reset keeps the slot; one that fails gives it back. */
static void async_reset_keeps_slot_and_failure_returns_it(void)
{
        PGconn *c = connect_ok();
        int before = pq->backend_pid(c);
        CHECK(pq->reset_start(c) == 1, "PQresetStart: %s", pq->error_message(c));
        CHECK(poll_until_done(c, pq->reset_poll) == PGRES_POLLING_OK, "PQresetPoll: %s",
              pq->error_message(c));
        CHECK(pq->backend_pid(c) != before, "reset kept backend %d", before);
        struct pool_view v = view();
        CHECK(v.held == 1 && v.connects == 1, "after reset: held %u connects %llu", v.held,
              (unsigned long long)v.connects);
        /* The database goes away: the next reset fails in PQresetPoll. */
        PGconn *admin = pq->connectdb(APP);
        CHECK(pq->status(admin) == CONNECTION_OK, "admin connect");
        PGresult *r = pq->exec(admin, "CREATE DATABASE dstest_gone");
        CHECK(pq->result_status(r) == PGRES_COMMAND_OK, "create: %s", pq->error_message(admin));
        pq->clear(r);
        const char *k[] = {"application_name", "dbname", NULL},
                   *vals[] = {"dstest", "dstest_gone", NULL};
        PGconn *g = pq->connectdb_params(k, vals, 0);
        CHECK(pq->status(g) == CONNECTION_OK, "connect to dstest_gone: %s", pq->error_message(g));
        CHECK(view().held == 3, "held %u", view().held);
        r = pq->exec(admin, "DROP DATABASE dstest_gone WITH (FORCE)");
        CHECK(pq->result_status(r) == PGRES_COMMAND_OK, "drop: %s", pq->error_message(admin));
        pq->clear(r);
        if (pq->reset_start(g) == 1)
                CHECK(poll_until_done(g, pq->reset_poll) == PGRES_POLLING_FAILED,
                      "reset to a dropped database succeeded");
        CHECK(view().held == 2, "held %u after a failed reset (want 2)", view().held);
        pq->finish(g);
        pq->finish(admin);
        pq->finish(c);
        CHECK(view_drained().held == 0, "held %u after finish", view_drained().held);
}

static void reset_keeps_slot(void)
{
        PGconn *c = connect_ok();
        int before = pq->backend_pid(c);
        pq->reset(c);
        CHECK(pq->status(c) == CONNECTION_OK, "reset: %s", pq->error_message(c));
        CHECK(pq->backend_pid(c) != before, "reset kept backend %d", before);
        struct pool_view v = view();
        CHECK(v.held == 1 && v.connects == 1, "after reset: held %u connects %llu", v.held,
              (unsigned long long)v.connects);
        CHECK(query_int(c, "SELECT 7") == 7, "query after reset");
        pq->finish(c);
        CHECK(view_drained().held == 0, "held after finish");
}

struct long_query {
        PGconn *conn;
        _Atomic int finished;
        _Atomic double returned_at;
};

static void *long_query(void *arg)
{
        struct long_query *q = arg;
        PGresult *r = pq->exec(q->conn, "SELECT pg_sleep(2)");
        atomic_store(&q->returned_at, now_s());
        atomic_store(&q->finished, 1);
        int ok = r && pq->result_status(r) == PGRES_TUPLES_OK;
        pq->clear(r);
        return ok ? arg : NULL;
}

/* A scraper with a libpq call in flight is active, however long
 * the call lasts; idle_timeout after its last call it is idle. Each view
 * counts only when the moment it was taken is known to prove something,
 * whatever the load: during the call (started before, not finished after)
 * and more than twice idle_timeout after it began; within idle_timeout of a
 * call's return; later than idle_timeout after the last call. */
static void call_in_flight_keeps_scraper_active(void)
{
        make_pool_idle(20, 0, 300);
        PGconn *c = connect_ok();
        pthread_t t;
        struct long_query q = {.conn = c};
        CHECK(pthread_create(&t, NULL, long_query, &q) == 0, "pthread_create");
        /* the call is in flight at least over [returned - 2 s, returned]
         * (the server sleeps 2 s inside it): a view taken wholly inside
         * that, 0.6 s or more after its start, counts */
        struct {
                double from, to;
                int active;
        } seen[200];
        int n = 0;
        while (!atomic_load(&q.finished) && n < 200) {
                seen[n].from = now_s();
                seen[n].active = view().first_active;
                seen[n].to = now_s();
                n++;
                usleep(50000);
        }
        void *ok;
        pthread_join(t, &ok);
        CHECK(ok, "the long query failed: %s", pq->error_message(c));
        double returned = atomic_load(&q.returned_at);
        int during = 0;
        for (int i = 0; i < n; i++) {
                if (seen[i].from < returned - 2.0 + 0.6 || seen[i].to > returned)
                        continue;
                CHECK(seen[i].active, "idle %.2f s before a 2 s query in flight returned",
                      returned - seen[i].to);
                during++;
        }
        CHECK(during > 0, "no view was taken while the query ran past 0.6 s (twice idle_timeout)");
        int right_after = 0;
        for (int i = 0; i < 50 && !right_after; i++) {
                PGresult *r = pq->exec(c, "SELECT 1");
                double returned = now_s();
                pq->clear(r);
                int active = view().first_active;
                if (now_s() - returned < 0.3) { /* the view is within idle_timeout */
                        CHECK(active, "idle right after a call returned");
                        right_after = 1;
                }
        }
        CHECK(right_after, "no view within idle_timeout (0.3 s) of a call's return in 50 tries");
        double last = now_s();
        usleep(800000);
        CHECK(now_s() - last >= 0.3 && !view().first_active,
              "still active 0.8 s after the last call (idle_timeout 0.3 s)");
        pq->finish(c);
}

#define N_THREADS 16
#define N_ROUNDS  3
static _Atomic int threads_failed, threads_done;

static void *worker(void *arg)
{
        (void)arg;
        for (int i = 0; i < N_ROUNDS; i++) {
                PGconn *c = pq->connectdb(APP);
                if (!c || pq->status(c) != CONNECTION_OK) {
                        fprintf(stderr, "thread connect: %s\n", c ? pq->error_message(c) : "NULL");
                        threads_failed++;
                } else {
                        PGresult *r = pq->exec(c, "SELECT pg_sleep(0.02)");
                        if (!r || pq->result_status(r) != PGRES_TUPLES_OK)
                                threads_failed++;
                        pq->clear(r);
                }
                pq->finish(c);
        }
        threads_done++;
        return NULL;
}

static void threads_never_exceed_pool(void)
{
        make_pool(4, 60000);
        pthread_t t[N_THREADS];
        for (int i = 0; i < N_THREADS; i++)
                CHECK(pthread_create(&t[i], NULL, worker, NULL) == 0, "pthread_create");
        uint32_t max_held = 0;
        int max_server = 0, samples = 0;
        while (threads_done < N_THREADS) {
                struct pool_view v = view();
                if (v.held > max_held)
                        max_held = v.held;
                if (samples++ % 20 == 0) {
                        int n = server_count();
                        if (n > max_server)
                                max_server = n;
                }
                usleep(1000);
        }
        for (int i = 0; i < N_THREADS; i++)
                pthread_join(t[i], NULL);
        struct pool_view v = view_drained();
        CHECK(threads_failed == 0, "%d thread connects or queries failed", (int)threads_failed);
        CHECK(v.connects == N_THREADS * N_ROUNDS, "connects %llu", (unsigned long long)v.connects);
        CHECK(max_held <= 4 && v.peak <= 4, "held reached %u (peak %llu) over a pool of 4",
              max_held, (unsigned long long)v.peak);
        CHECK(max_held >= 2, "threads never overlapped (max held %u): the test proves nothing",
              max_held);
        CHECK(max_server <= 4, "the server saw %d sessions over a pool of 4", max_server);
        CHECK(v.held == 0, "held %u at the end", v.held);
        fprintf(stderr, "max held %u, max server sessions %d, %d samples\n", max_held, max_server,
                samples);
}

/* A segment that is not one (garbage where the header should be). */
static void make_corrupt_segment(void)
{
        ds_segment_destroy(segment, NULL, 0);
        int fd = shm_open(segment, O_RDWR | O_CREAT | O_TRUNC, 0600);
        CHECK(fd >= 0, "shm_open %s", segment);
        char junk[8192];
        memset(junk, 'x', sizeof(junk));
        CHECK(write(fd, junk, sizeof(junk)) == (ssize_t)sizeof(junk), "write junk");
        close(fd);
}

static void corrupt_segment_passes_through_and_warns_once(void)
{
        make_corrupt_segment();
        capture_stderr();
        PGconn *a = connect_ok(), *b = connect_ok();
        CHECK(server_count() == 2, "server sessions %d", server_count());
        pq->finish(a);
        pq->finish(b);
        const char *err = read_file(stderr_path);
        CHECK(count_substr(err, "dynshim[") == 1, "want one warning, stderr was: %s", err);
        CHECK(strstr(err, "unusable") && strstr(err, segment), "warning: %s", err);
        shm_unlink(segment);
}

static void corrupt_segment_closed_refuses_connects(void)
{
        make_corrupt_segment();
        PGconn *a = pq->connectdb(APP);
        CHECK(a && pq->status(a) == CONNECTION_BAD, "connect passed with DYNSHIM_ON_ERROR=closed");
        const char *msg = pq->error_message(a);
        CHECK(!strncmp(msg, "dynshim: segment \"", 18) && strstr(msg, "unusable"), "message: %s",
              msg);
        pq->finish(a);
        CHECK(server_count() == 0, "server sessions %d", server_count());
        shm_unlink(segment);
}

/* dyncoord --init --force while clients run: the next connect goes to the
 * new segment; a connection opened before gives its slot to the old one. */
static void recreated_segment_is_used_by_next_connect(void)
{
        PGconn *a = connect_ok();
        CHECK(view().held == 1, "held %u", view().held);
        ds_detach(coord);
        coord = NULL;
        make_pool(5, 0); /* force: the old segment is marked destroyed */
        PGconn *b = connect_ok();
        struct pool_view v = view();
        CHECK(v.pool_size == 5 && v.held == 1 && v.connects == 1,
              "new segment: pool %u held %u connects %llu", v.pool_size, v.held,
              (unsigned long long)v.connects);
        pq->finish(a);
        CHECK(view().held == 1, "the old connection's finish released a slot of the new pool");
        pq->finish(b);
        CHECK(view_drained().held == 0, "held %u after finish", view_drained().held);
}

/* A segment that was unusable and is then repaired is picked up within a
 * second, without restarting the client. */
static void repaired_segment_is_picked_up(void)
{
        make_corrupt_segment();
        capture_stderr();
        PGconn *a = connect_ok(); /* passes through, uncounted */
        shm_unlink(segment);
        make_pool(3, 0);
        CHECK(view().held == 0, "held %u in the repaired segment", view().held);
        usleep(1100000);
        PGconn *b = connect_ok();
        struct pool_view v = view();
        CHECK(v.held == 1 && v.connects == 1 && v.pool_size == 3,
              "repaired segment: held %u connects %llu pool %u", v.held,
              (unsigned long long)v.connects, v.pool_size);
        pq->finish(a);
        pq->finish(b);
        CHECK(view_drained().held == 0, "held %u after finish", view_drained().held);
        const char *err = read_file(stderr_path);
        CHECK(count_substr(err, "dynshim[") == 1, "want one warning, stderr was: %s", err);
}

/* The dlsym hook hands RTLD_NEXT on with this program as the caller:
 * after the program in the global scope comes the preloaded shim, whose
 * PQconnectdb is what this program's own calls reach. Were the shim seen as
 * the caller, RTLD_NEXT would skip it and find libpq's. */
static void dlsym_hook_keeps_caller_for_rtld_next(void)
{
        void *p = dlsym(RTLD_NEXT, "PQconnectdb");
        Dl_info info;
        CHECK(p && dladdr(p, &info) && info.dli_fname, "dlsym(RTLD_NEXT) found nothing");
        CHECK(strstr(info.dli_fname, "libdynshim"), "RTLD_NEXT from the program found %s",
              info.dli_fname);
        CHECK(dlsym(RTLD_DEFAULT, "pqmod_api") == NULL, "RTLD_DEFAULT sees a local module");
}

/* The dlopen hook hands a bare name on with this program as the caller:
 * the module is found only along this program's RUNPATH. */
static void dlopen_hook_keeps_caller_for_runpath(void)
{
        void *h = dlopen("libpqmod_sys.so", RTLD_NOW | RTLD_LOCAL);
        CHECK(h, "dlopen along the program's RUNPATH: %s", dlerror());
        dlclose(h);
}

/* python layer1_5_production_scraper.py --all ->
 * layer1_5_production_scraper. Run through a symlink named python-dstest. */
static void scraper_name_from_command_line(void)
{
        const char *want = getenv("DSTEST_SCRAPER");
        PGconn *c = connect_ok();
        struct pool_view v = view();
        CHECK(!strcmp(v.first_scraper, want), "scraper \"%s\", want \"%s\"", v.first_scraper, want);
        pq->finish(c);
}

static void invalid_env_warns_once_and_uses_defaults(void)
{
        capture_stderr();
        PGconn *a = connect_ok(), *b = connect_ok();
        pq->finish(a);
        pq->finish(b);
        const char *err = read_file(stderr_path);
        CHECK(count_substr(err, "DYNSHIM_WAIT_TIMEOUT=\"soon\"") == 1, "stderr: %s", err);
        CHECK(count_substr(err, "DYNSHIM_ON_ERROR=\"maybe\"") == 1, "stderr: %s", err);
        CHECK(count_substr(err, "DYNSHIM_LOG=\"loud\"") == 1, "stderr: %s", err);
        CHECK(count_substr(err, "dynshim[") == 3, "stderr: %s", err);
        struct pool_view v = view_drained();
        CHECK(v.connects == 2 && v.held == 0, "connects %llu held %u",
              (unsigned long long)v.connects, v.held);
}

/* Two libpq copies: each PGconn is created and finished by its own copy. */
static void two_copies_route_to_creator(void)
{
        CHECK(pq_sys, "the copy way loads both copies");
        char log[64];
        snprintf(log, sizeof(log), "/tmp/dstest-log.%d", (int)getpid());
        setenv("DYNSHIM_LOG", "debug", 1);
        setenv("DYNSHIM_LOG_FILE", log, 1);
        PGconn *c_copy = connect_ok();
        PGconn *c_sys = pq_sys->connectdb(APP);
        CHECK(pq_sys->status(c_sys) == CONNECTION_OK, "system copy: %s",
              pq_sys->error_message(c_sys));
        CHECK(view().held == 2, "held %u", view().held);
        CHECK(server_count() == 2, "server sessions %d", server_count());
        pq->finish(c_copy);
        pq_sys->finish(c_sys);
        CHECK(view_drained().held == 0, "held after finish");
        const char *txt = read_file(log);
        CHECK(count_substr(txt, "PQconnectdb via ") == 2, "log: %s", txt);
        CHECK(count_substr(txt, "/libpqcopy.so.5: slot held") == 1, "log: %s", txt);
        CHECK(count_substr(txt, "/libpq.so.5: slot held") == 1, "log: %s", txt);
        CHECK(count_substr(txt, "PQfinish via ") == 2, "log: %s", txt);
        CHECK(strstr(txt, "PQfinish via " PQCOPY_DIR "/libpqcopy.so.5"), "log: %s", txt);
        CHECK(count_substr(txt, "/libpq.so.5\n") >= 1, "log: %s", txt);
}

static const struct {
        const char *name;
        void (*run)(void);
} cases[] = {
    {"finish_returns_slot", finish_returns_slot},
    {"failed_connect_returns_slot", failed_connect_returns_slot},
    {"async_failure_in_poll_returns_slot", async_failure_in_poll_returns_slot},
    {"nested_connect_counted_once", nested_connect_counted_once},
    {"ping_takes_slot_while_pinging", ping_takes_slot_while_pinging},
    {"timeout_error_names_scraper_and_pool", timeout_error_names_scraper_and_pool},
    {"fork_child_finish_keeps_parent_session", fork_child_finish_keeps_parent_session},
    {"reset_keeps_slot", reset_keeps_slot},
    {"dlsym_hook_keeps_caller_for_rtld_next", dlsym_hook_keeps_caller_for_rtld_next},
    {"dlopen_hook_keeps_caller_for_runpath", dlopen_hook_keeps_caller_for_runpath},
    {"recreated_segment_is_used_by_next_connect", recreated_segment_is_used_by_next_connect},
    {"repaired_segment_is_picked_up", repaired_segment_is_picked_up},
    {"call_in_flight_keeps_scraper_active", call_in_flight_keeps_scraper_active},
    {"every_connect_entry_point_holds_one_slot", every_connect_entry_point_holds_one_slot},
    {"async_reset_keeps_slot_and_failure_returns_it",
     async_reset_keeps_slot_and_failure_returns_it},
    {"threads_never_exceed_pool", threads_never_exceed_pool},
    {"corrupt_segment_passes_through_and_warns_once",
     corrupt_segment_passes_through_and_warns_once},
    {"corrupt_segment_closed_refuses_connects", corrupt_segment_closed_refuses_connects},
    {"scraper_name_from_command_line", scraper_name_from_command_line},
    {"invalid_env_warns_once_and_uses_defaults", invalid_env_warns_once_and_uses_defaults},
    {"two_copies_route_to_creator", two_copies_route_to_creator},
};

int main(int argc, char **argv)
{
        const char *way = getenv("DSTEST_WAY"), *name = getenv("DSTEST_CASE");
        if (!way || !name) {
                if (argc != 3) {
                        fprintf(stderr, "usage: %s WAY CASE\n", argv[0]);
                        return 2;
                }
                way = argv[1];
                name = argv[2];
        }
        errout = fdopen(dup(2), "w");
        if (!errout)
                return 1;
        setvbuf(errout, NULL, _IONBF, 0);
        segment = getenv("DYNSHIM_SEGMENT");
        CHECK(segment && *segment, "DYNSHIM_SEGMENT must name the test's segment");
        CHECK(getenv("LD_PRELOAD") && strstr(getenv("LD_PRELOAD"), "libdynshim"),
              "the shim must be preloaded");
        ds_segment_destroy(segment, NULL, 0); /* a leftover of an earlier run */
        atexit(destroy_segment);
        load(way);
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                if (!strcmp(cases[i].name, name)) {
                        cases[i].run();
                        printf("ok %s %s\n", way, name);
                        return 0;
                }
        }
        fprintf(stderr, "unknown case \"%s\"\n", name);
        return 2;
}
