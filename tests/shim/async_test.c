/* async_test.c - event-loop programs under libdynshim.so: connects that wait
 * for a slot must not block the loop. Linked against libpq, run with the
 * shim preloaded against a real server (with-pg.sh).
 *
 *   async_test CASE
 *
 * The loops drive several PQconnectStart connects beyond the pool, then a
 * query on each, and time every libpq call: a call that waited for a slot
 * inside would sleep as long as the wait (the queries hold their slots
 * 0.3 s). A call counts as having slept when its thread switched out
 * voluntarily (RUSAGE_THREAD); one that only took long because a loaded
 * machine preempted it does not. PQfinish is timed apart: it waits for the
 * backend to exit before the slot goes back. Assertions read the
 * coordinator (ds_stats_get) and the server (pg_stat_activity, through psql
 * run without the shim). Exit 0: passed. */
#include "dstest.h"
#include "dynshim/coord.h"

#include <errno.h>
#include <libpq-fe.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define APP      "application_name=dstest"
#define N_CONNS  6
#define POOL     2
#define QUERY    "SELECT pg_sleep(0.3)"
#define MAX_CALL 0.05 /* s: the longest a libpq call may take */

static const char *segment;
static ds_handle *coord;

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

static void make_pool(uint32_t size, uint32_t wait_ms)
{
        struct ds_config cfg;
        struct ds_capacity cap;
        ds_config_defaults(&cfg);
        ds_capacity_defaults(&cap);
        cfg.pool_size = cfg.soft_limit = cfg.max_limit = size;
        if (wait_ms)
                cfg.wait_timeout_ms = wait_ms;
        struct ds_create_opts o = {.mode = 0600, .group = (gid_t)-1, .force = 1};
        char err[256];
        CHECK(ds_segment_create(segment, &cfg, &cap, &o, err, sizeof(err)) == 0, "create %s: %s",
              segment, err);
        CHECK(ds_attach(segment, 0, &coord, err, sizeof(err)) == 0, "attach %s: %s", segment, err);
}

struct pool_view {
        uint32_t held, waiting;
        uint64_t connects, timeouts;
};

static struct pool_view view(void)
{
        struct ds_stats st;
        struct pool_view v = {0};
        CHECK(ds_stats_get(coord, &st) == 0, "stats of %s", segment);
        v.held = st.held;
        v.waiting = st.waiting;
        for (size_t i = 0; i < st.n_scrapers; i++) {
                v.connects += st.scrapers[i].connects;
                v.timeouts += st.scrapers[i].timeouts;
        }
        ds_stats_free(&st);
        return v;
}

/* The pool once finished connections have drained (a finish returns
 * before its backend exits; 3 s at most). */
static struct pool_view view_drained(void)
{
        struct pool_view v = view();
        for (int i = 0; i < 300 && v.held > 0; i++) {
                usleep(10000);
                v = view();
        }
        return v;
}

/* Client backends of this test, counted by a psql that runs without the
 * shim: every backend, also one still in its startup. */
static int server_count(void)
{
        FILE *f = popen("env -u LD_PRELOAD psql -XAtqc \"SELECT count(*) FROM pg_stat_activity "
                        "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()\"",
                        "r");
        CHECK(f, "popen psql: %s", strerror(errno));
        int n = -1;
        if (fscanf(f, "%d", &n) != 1)
                n = -1;
        CHECK(pclose(f) == 0 && n >= 0, "psql could not count the server's sessions");
        return n;
}

/* ---- timing every libpq call ---- */

static double slowest;           /* s: the longest libpq call that slept, PQfinish aside */
static const char *slowest_name; /* and which */
static double longest;           /* s: the longest call of any kind */

static long voluntary_switches(void)
{
        struct rusage ru;
        getrusage(RUSAGE_THREAD, &ru);
        return ru.ru_nvcsw;
}

static void note_call(const char *name, double d, long nv0)
{
        if (d > longest)
                longest = d;
        if (d > slowest && strcmp(name, "PQfinish") && voluntary_switches() > nv0) {
                slowest = d;
                slowest_name = name;
        }
}

#define TIMED(name, expr)                                                                          \
        ({                                                                                         \
                long nv_ = voluntary_switches();                                                   \
                double t_ = now_s();                                                               \
                __auto_type r_ = (expr);                                                           \
                note_call(name, now_s() - t_, nv_);                                                \
                r_;                                                                                \
        })

/* ---- one connection's life in the loop ---- */

enum { C_CONNECTING, C_QUERY, C_DONE };

struct conn {
        PGconn *pg;
        int state;
        PostgresPollingStatusType ps; /* what the connect waits for */
        int reg_fd;                   /* epoll: the descriptor registered, or -1 */
        double started, connected;
};

static struct conn conns[N_CONNS];
static int max_held, max_server, waited;

static void start_all(void)
{
        for (int i = 0; i < N_CONNS; i++) {
                struct conn *c = &conns[i];
                c->pg = TIMED("PQconnectStart", PQconnectStart(APP));
                CHECK(c->pg, "PQconnectStart returned NULL");
                CHECK(PQstatus(c->pg) != CONNECTION_BAD, "connect %d: %s", i,
                      PQerrorMessage(c->pg));
                CHECK(PQsocket(c->pg) >= 0, "connect %d has no descriptor", i);
                c->state = C_CONNECTING;
                c->ps = PGRES_POLLING_WRITING; /* as libpq says: write first */
                c->reg_fd = -1;
                c->started = now_s();
        }
        struct pool_view v = view();
        CHECK(v.held == POOL && v.waiting == N_CONNS - POOL,
              "after %d connect starts on a pool of %d: %u held, %u waiting", N_CONNS, POOL, v.held,
              v.waiting);
        /* a waiting connect looks like one in progress, with nothing of libpq's to say */
        for (int i = 0; i < N_CONNS; i++)
                if (i >= POOL) {
                        CHECK(PQstatus(conns[i].pg) == CONNECTION_STARTED, "status %d",
                              (int)PQstatus(conns[i].pg));
                        CHECK(!strcmp(PQerrorMessage(conns[i].pg), ""), "message \"%s\"",
                              PQerrorMessage(conns[i].pg));
                }
}

/* The connection's descriptor is ready: advance it. */
static void step(struct conn *c)
{
        if (c->state == C_CONNECTING) {
                c->ps = TIMED("PQconnectPoll", PQconnectPoll(c->pg));
                CHECK(c->ps != PGRES_POLLING_FAILED, "connect failed: %s", PQerrorMessage(c->pg));
                if (c->ps == PGRES_POLLING_OK) {
                        c->connected = now_s();
                        if (c->connected - c->started > 0.2)
                                waited++;
                        CHECK(PQstatus(c->pg) == CONNECTION_OK, "status after OK");
                        CHECK(TIMED("PQsendQuery", PQsendQuery(c->pg, QUERY)), "send: %s",
                              PQerrorMessage(c->pg));
                        c->state = C_QUERY;
                }
                return;
        }
        CHECK(TIMED("PQconsumeInput", PQconsumeInput(c->pg)), "consume: %s", PQerrorMessage(c->pg));
        while (!TIMED("PQisBusy", PQisBusy(c->pg))) {
                PGresult *r = TIMED("PQgetResult", PQgetResult(c->pg));
                if (!r) {
                        TIMED("PQfinish", (PQfinish(c->pg), 0));
                        c->pg = NULL;
                        c->state = C_DONE;
                        return;
                }
                CHECK(PQresultStatus(r) == PGRES_TUPLES_OK, "query: %s", PQerrorMessage(c->pg));
                PQclear(r);
        }
}

static int all_done(void)
{
        for (int i = 0; i < N_CONNS; i++)
                if (conns[i].state != C_DONE)
                        return 0;
        return 1;
}

/* Samples the pool and the server while the loop runs (every 200 ms). */
static void observe(double *next)
{
        if (now_s() < *next)
                return;
        *next = now_s() + 0.2;
        struct pool_view v = view();
        if ((int)v.held > max_held)
                max_held = (int)v.held;
        int n = server_count();
        if (n > max_server)
                max_server = n;
}

static void check_outcome(const char *how)
{
        struct pool_view v = view();
        printf("%s: longest libpq call %.1f ms, longest that slept %.1f ms (%s), held at most %d, "
               "server at most %d, %d connects waited\n",
               how, longest * 1000, slowest * 1000, slowest_name ? slowest_name : "-", max_held,
               max_server, waited);
        CHECK(slowest < MAX_CALL, "%s: %s slept %.0f ms: the loop was blocked", how, slowest_name,
              slowest * 1000);
        CHECK(max_held <= POOL && max_server <= POOL, "above the pool: held %d, server %d",
              max_held, max_server);
        CHECK(waited >= N_CONNS - POOL - 1, "only %d connects waited for a slot", waited);
        CHECK(v.connects == N_CONNS && v.waiting == 0, "connects %llu waiting %u",
              (unsigned long long)v.connects, v.waiting);
}

/* ---- cases ---- */

/* A poll() loop that asks PQsocket before every wait. */
static void poll_loop_connects_beyond_pool_never_block(void)
{
        make_pool(POOL, 30000);
        start_all();
        double next = 0, end = now_s() + 60;
        while (!all_done()) {
                CHECK(now_s() < end, "the loop did not finish");
                observe(&next);
                struct pollfd p[N_CONNS];
                int idx[N_CONNS], n = 0;
                for (int i = 0; i < N_CONNS; i++) {
                        struct conn *c = &conns[i];
                        if (c->state == C_DONE)
                                continue;
                        short ev = c->state == C_QUERY || c->ps == PGRES_POLLING_READING ? POLLIN
                                                                                         : POLLOUT;
                        p[n] = (struct pollfd){TIMED("PQsocket", PQsocket(c->pg)), ev, 0};
                        idx[n++] = i;
                }
                int r = poll(p, (nfds_t)n, 100);
                CHECK(r >= 0 || errno == EINTR, "poll: %s", strerror(errno));
                for (int k = 0; k < n; k++)
                        if (p[k].revents)
                                step(&conns[idx[k]]);
        }
        check_outcome("poll loop");
}

/* An epoll loop that registers each connect's descriptor once and only
 * changes its interest (EPOLL_CTL_MOD) until the connect is over, as
 * libuv's poll handles do; the connected socket is registered then. */
static void epoll_loop_one_registration_per_connect(void)
{
        make_pool(POOL, 30000);
        start_all();
        int ep = epoll_create1(EPOLL_CLOEXEC);
        CHECK(ep >= 0, "epoll_create1");
        for (int i = 0; i < N_CONNS; i++) {
                struct conn *c = &conns[i];
                c->reg_fd = PQsocket(c->pg);
                struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = (uint32_t)i};
                CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, c->reg_fd, &ev) == 0, "add: %s",
                      strerror(errno));
        }
        double next = 0, end = now_s() + 60;
        while (!all_done()) {
                CHECK(now_s() < end, "the loop did not finish");
                observe(&next);
                struct epoll_event evs[N_CONNS];
                int r = epoll_wait(ep, evs, N_CONNS, 100);
                CHECK(r >= 0 || errno == EINTR, "epoll_wait: %s", strerror(errno));
                for (int k = 0; k < r; k++) {
                        struct conn *c = &conns[evs[k].data.u32];
                        int was = c->state;
                        step(c);
                        struct epoll_event ev = {.data.u32 = evs[k].data.u32};
                        if (was == C_CONNECTING && c->state == C_CONNECTING) {
                                ev.events = c->ps == PGRES_POLLING_READING ? EPOLLIN : EPOLLOUT;
                                CHECK(epoll_ctl(ep, EPOLL_CTL_MOD, c->reg_fd, &ev) == 0,
                                      "the connect's registration is gone (%s): a loop that "
                                      "keeps it would stall",
                                      strerror(errno));
                        } else if (was == C_CONNECTING) {
                                /* the connect is over: its registration is still there */
                                CHECK(epoll_ctl(ep, EPOLL_CTL_DEL, c->reg_fd, NULL) == 0,
                                      "the connect's registration was dropped: %s",
                                      strerror(errno));
                                c->reg_fd = PQsocket(c->pg);
                                ev.events = EPOLLIN;
                                CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, c->reg_fd, &ev) == 0,
                                      "add the connected socket: %s", strerror(errno));
                        } else if (c->state == C_DONE && was == C_QUERY) {
                                /* PQfinish closed it: epoll forgot it with the file */
                        }
                }
        }
        close(ep);
        check_outcome("epoll loop");
}

/* The pool is full: a PQconnectStart waits through its descriptor, and
 * PQfinish withdraws the wait; nothing reached the server meanwhile. */
static void finish_withdraws_waiting_connect(void)
{
        make_pool(1, 30000);
        PGconn *a = PQconnectdb(APP);
        CHECK(PQstatus(a) == CONNECTION_OK, "connect: %s", PQerrorMessage(a));
        PGconn *b = TIMED("PQconnectStart", PQconnectStart(APP));
        CHECK(slowest < MAX_CALL, "PQconnectStart slept %.0f ms", slowest * 1000);
        CHECK(b && PQstatus(b) == CONNECTION_STARTED, "waiting connect's status");
        int fd = PQsocket(b);
        CHECK(fd >= 0, "no descriptor");
        struct pollfd p = {fd, POLLIN, 0};
        CHECK(poll(&p, 1, 300) == 0, "the descriptor is ready before any grant");
        CHECK(PQconnectPoll(b) == PGRES_POLLING_READING, "poll while waiting");
        struct pool_view v = view();
        CHECK(v.held == 1 && v.waiting == 1, "held %u waiting %u", v.held, v.waiting);
        CHECK(server_count() == 1, "the waiting connect reached the server");
        PQfinish(b);
        v = view();
        CHECK(v.held == 1 && v.waiting == 0,
              "after PQfinish of the waiting connect: held %u "
              "waiting %u",
              v.held, v.waiting);
        PQfinish(a);
        v = view_drained();
        CHECK(v.held == 0 && v.waiting == 0 && v.connects == 1, "held %u waiting %u connects %llu",
              v.held, v.waiting, (unsigned long long)v.connects);
        char why[256];
        CHECK(ds_check(coord, why, sizeof(why)) == 0, "invariants: %s", why);
}

/* The wait for a slot times out: PQconnectPoll fails, with the shim's
 * sentence in PQerrorMessage, after the descriptor said so. */
static void waiting_connect_times_out_through_poll(void)
{
        make_pool(1, 700);
        PGconn *a = PQconnectdb(APP);
        CHECK(PQstatus(a) == CONNECTION_OK, "connect: %s", PQerrorMessage(a));
        double t0 = now_s();
        PGconn *b = PQconnectStart(APP);
        CHECK(b && PQstatus(b) == CONNECTION_STARTED, "waiting connect's status");
        PostgresPollingStatusType ps = PGRES_POLLING_WRITING;
        while (ps != PGRES_POLLING_FAILED && ps != PGRES_POLLING_OK) {
                CHECK(now_s() - t0 < 10, "no outcome");
                struct pollfd p = {PQsocket(b), ps == PGRES_POLLING_READING ? POLLIN : POLLOUT, 0};
                CHECK(poll(&p, 1, 5000) == 1, "the descriptor never became ready");
                ps = TIMED("PQconnectPoll", PQconnectPoll(b));
        }
        double waited = now_s() - t0;
        CHECK(ps == PGRES_POLLING_FAILED, "a connect beyond a full pool succeeded");
        CHECK(waited > 0.6 && waited < 3, "failed after %.2f s (wait_timeout 0.7 s)", waited);
        CHECK(slowest < MAX_CALL, "PQconnectPoll slept %.0f ms", slowest * 1000);
        CHECK(PQstatus(b) == CONNECTION_BAD, "status after the timeout");
        const char *m = PQerrorMessage(b);
        CHECK(!strncmp(m, "dynshim: no connection slot for scraper", 39), "message: %s", m);
        struct pool_view v = view();
        CHECK(v.held == 1 && v.waiting == 0 && v.timeouts == 1, "held %u waiting %u timeouts %llu",
              v.held, v.waiting, (unsigned long long)v.timeouts);
        PQfinish(b);
        PQfinish(a);
        CHECK(view_drained().held == 0, "held after finishing both");
}

/* PQresetStart of a connection without a slot (its connect failed) does
 * not wait either: it returns at once and the reset goes on through the
 * descriptor once the slot is free. */
static void reset_start_waits_through_descriptor(void)
{
        make_pool(1, 30000);
        PGconn *b = PQconnectdb(APP);
        CHECK(PQstatus(b) == CONNECTION_OK, "connect: %s", PQerrorMessage(b));
        PQfinish(b);
        /* a fails at the server: it holds no slot afterwards */
        PGconn *a = PQconnectdb("dbname=dstest_no_such_db " APP);
        CHECK(PQstatus(a) == CONNECTION_BAD, "connect to a missing database succeeded");
        b = PQconnectdb(APP); /* takes the only slot */
        CHECK(PQstatus(b) == CONNECTION_OK, "connect: %s", PQerrorMessage(b));
        CHECK(TIMED("PQresetStart", PQresetStart(a)) == 1, "PQresetStart: %s", PQerrorMessage(a));
        CHECK(slowest < MAX_CALL, "PQresetStart slept %.0f ms", slowest * 1000);
        CHECK(PQstatus(a) != CONNECTION_BAD, "a waiting reset reports itself failed");
        CHECK(PQresetPoll(a) == PGRES_POLLING_READING, "a waiting reset's poll");
        struct pool_view v = view();
        CHECK(v.held == 1 && v.waiting == 1, "held %u waiting %u", v.held, v.waiting);
        PQfinish(b); /* the slot goes to the reset */
        PostgresPollingStatusType ps = PGRES_POLLING_READING;
        for (double end = now_s() + 10; ps != PGRES_POLLING_FAILED && ps != PGRES_POLLING_OK;) {
                CHECK(now_s() < end, "no outcome");
                struct pollfd p = {PQsocket(a), ps == PGRES_POLLING_READING ? POLLIN : POLLOUT, 0};
                poll(&p, 1, 1000);
                ps = TIMED("PQresetPoll", PQresetPoll(a));
        }
        /* the database is still missing: the server's own refusal */
        CHECK(ps == PGRES_POLLING_FAILED, "the reset to a missing database succeeded");
        CHECK(strstr(PQerrorMessage(a), "dstest_no_such_db"), "message: %s", PQerrorMessage(a));
        CHECK(slowest < MAX_CALL, "%s slept %.0f ms", slowest_name, slowest * 1000);
        v = view();
        CHECK(v.held == 0 && v.waiting == 0 && v.connects == 4, "held %u waiting %u connects %llu",
              v.held, v.waiting, (unsigned long long)v.connects);
        PQfinish(a);
}

/* A forked child cannot carry on its parent's waiting connect: its poll
 * fails with the shim's message, and neither that nor its PQfinish
 * withdraws the parent's waits, which are then granted in order. */
static void fork_child_leaves_parents_waiting_connect(void)
{
        make_pool(1, 30000);
        PGconn *a = PQconnectdb(APP);
        CHECK(PQstatus(a) == CONNECTION_OK, "connect: %s", PQerrorMessage(a));
        PGconn *b = PQconnectStart(APP);
        CHECK(b && PQstatus(b) == CONNECTION_STARTED, "waiting connect's status");
        PGconn *b2 = PQconnectStart(APP);
        CHECK(b2 && PQstatus(b2) == CONNECTION_STARTED, "second waiting connect's status");
        CHECK(view().waiting == 2, "waiting %u", view().waiting);
        fflush(NULL);
        pid_t kid = fork();
        CHECK(kid >= 0, "fork");
        if (kid == 0) {
                int bad = PQconnectPoll(b) != PGRES_POLLING_FAILED ||
                          strncmp(PQerrorMessage(b), "dynshim: ", 9) != 0;
                PQfinish(b);
                PQfinish(b2);
                _exit(bad ? 3 : 0);
        }
        int st;
        CHECK(waitpid(kid, &st, 0) == kid && WIFEXITED(st), "child died");
        CHECK(WEXITSTATUS(st) == 0, "the child's poll of the parent's wait did not fail as the "
                                    "shim's");
        struct pool_view v = view();
        CHECK(v.held == 1 && v.waiting == 2, "after the child: held %u waiting %u", v.held,
              v.waiting);
        PQfinish(a); /* the slot goes to b, the oldest wait */
        PostgresPollingStatusType ps = PGRES_POLLING_WRITING;
        for (double end = now_s() + 20; ps != PGRES_POLLING_FAILED && ps != PGRES_POLLING_OK;) {
                CHECK(now_s() < end, "the parent's waiting connect got no slot");
                struct pollfd p = {PQsocket(b), ps == PGRES_POLLING_READING ? POLLIN : POLLOUT, 0};
                poll(&p, 1, 1000);
                ps = PQconnectPoll(b);
        }
        CHECK(ps == PGRES_POLLING_OK, "the parent's connect: %s", PQerrorMessage(b));
        v = view();
        CHECK(v.held == 1 && v.waiting == 1, "held %u waiting %u (b2 still waits)", v.held,
              v.waiting);
        PQfinish(b);  /* the slot goes to b2's wait */
        PQfinish(b2); /* withdrawn after its grant: the slot goes back */
        v = view_drained();
        CHECK(v.held == 0 && v.waiting == 0, "held %u waiting %u", v.held, v.waiting);
        char why[256];
        CHECK(ds_check(coord, why, sizeof(why)) == 0, "invariants: %s", why);
}

static const struct {
        const char *name;
        void (*run)(void);
} cases[] = {
    {"fork_child_leaves_parents_waiting_connect", fork_child_leaves_parents_waiting_connect},
    {"poll_loop_connects_beyond_pool_never_block", poll_loop_connects_beyond_pool_never_block},
    {"epoll_loop_one_registration_per_connect", epoll_loop_one_registration_per_connect},
    {"finish_withdraws_waiting_connect", finish_withdraws_waiting_connect},
    {"waiting_connect_times_out_through_poll", waiting_connect_times_out_through_poll},
    {"reset_start_waits_through_descriptor", reset_start_waits_through_descriptor},
};

int main(int argc, char **argv)
{
        if (argc != 3) {
                fprintf(stderr, "usage: %s direct CASE\n", argv[0]);
                return 2;
        }
        segment = getenv("DYNSHIM_SEGMENT");
        CHECK(segment && *segment, "DYNSHIM_SEGMENT must name the test's segment");
        CHECK(getenv("LD_PRELOAD") && strstr(getenv("LD_PRELOAD"), "libdynshim"),
              "the shim must be preloaded");
        ds_segment_destroy(segment, NULL, 0);
        atexit(destroy_segment);
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                if (!strcmp(cases[i].name, argv[2])) {
                        cases[i].run();
                        printf("ok %s\n", argv[2]);
                        return 0;
                }
        }
        fprintf(stderr, "unknown case \"%s\"\n", argv[2]);
        return 2;
}
