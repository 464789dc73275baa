/* threads_test.c - the shim's threaded paths, many application threads at
 * once and the shim's life thread among them, against a real server
 * (with-pg.sh) with the shim preloaded by ctest; libpq linked directly.
 * Built in every build; the ThreadSanitizer build (DYNSHIM_TSAN) runs it
 * to find data races in the shim (shim/).
 *
 *   threads_test CASE
 *
 * connect_query_finish: 8 threads connect, query and finish 15 times each
 *   over a pool of 3 (acquire, wait and release race), some through the
 *   asynchronous API, some with PQreset.
 * idle_release_races_app_threads: 6 threads each keep a connection and
 *   pause at random, and all together now and then, while the life thread
 *   releases idle connections and the threads revive them; 2 more threads
 *   connect and finish meanwhile (and pause with the others, so that the
 *   whole process is idle then, however slow the build). Every query must succeed; releases and
 *   transparent reconnects must have happened.
 * coordinator_threads: no libpq; the coordinator's API from many threads
 *   of one process on one handle, as the shim uses it: acquire (waiting),
 *   release, advice, activity marks, stats, check, reclaim and a live
 *   configuration change, over a pool of 2.
 * Exit 0: passed. */
#include "dynshim/coord.h"

#include <libpq-fe.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dstest.h"

#define APP "application_name=dsthreads"

static const char *segment;
static atomic_int failures;

/* In a thread: counts the failure and says what it was. */
#define EXPECT(cond, ...)                                                                          \
        do {                                                                                       \
                if (!(cond)) {                                                                     \
                        fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);            \
                        fprintf(stderr, __VA_ARGS__);                                              \
                        fprintf(stderr, "\n");                                                     \
                        atomic_fetch_add(&failures, 1);                                            \
                }                                                                                  \
        } while (0)

static void sleep_ms(unsigned ms)
{
        struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
}

static void make_pool(uint32_t size, uint32_t idle_ms, uint32_t realloc_ms)
{
        struct ds_config cfg;
        ds_config_defaults(&cfg);
        cfg.pool_size = cfg.soft_limit = cfg.max_limit = size;
        cfg.limits_set = DS_LIMIT_SET_ALL;
        cfg.idle_timeout_ms = idle_ms;
        cfg.realloc_interval_ms = realloc_ms;
        cfg.wait_timeout_ms = 60000;
        cfg.idle_release = 1;
        dstest_create_pool(segment, &cfg);
}

static struct ds_stats stats(void)
{
        ds_handle *h;
        char err[256];
        CHECK(ds_attach(segment, 0, &h, err, sizeof(err)) == 0, "attach %s: %s", segment, err);
        struct ds_stats st;
        CHECK(ds_stats_get(h, &st) == 0, "stats of %s", segment);
        ds_detach(h);
        return st;
}

/* stats() once finished connections have drained (a finish returns before
 * its backend exits), or after 3 s. */
static struct ds_stats stats_drained(void)
{
        struct ds_stats st = stats();
        for (int i = 0; i < 1500 && st.draining; i++) {
                ds_stats_free(&st);
                usleep(2000);
                st = stats();
        }
        return st;
}

static int query_ok(PGconn *c, const char *sql, int want)
{
        PGresult *r = PQexec(c, sql);
        int ok = r && PQresultStatus(r) == PGRES_TUPLES_OK && atoi(PQgetvalue(r, 0, 0)) == want;
        EXPECT(ok, "%s: %s", sql, PQerrorMessage(c));
        PQclear(r);
        return ok;
}

static PGconn *connect_async(void)
{
        PGconn *c = PQconnectStart(APP);
        if (!c)
                return NULL;
        PostgresPollingStatusType st = PGRES_POLLING_WRITING;
        while (st != PGRES_POLLING_OK && st != PGRES_POLLING_FAILED) {
                sleep_ms(1);
                st = PQconnectPoll(c);
        }
        return c;
}

/* ---- connect_query_finish ---- */

#define CQF_THREADS 8
#define CQF_ROUNDS  15

static void *cqf_worker(void *arg)
{
        int id = (int)(intptr_t)arg;
        for (int i = 0; i < CQF_ROUNDS; i++) {
                PGconn *c = (id + i) % 3 == 0 ? connect_async() : PQconnectdb(APP);
                EXPECT(c && PQstatus(c) == CONNECTION_OK, "connect: %s",
                       c ? PQerrorMessage(c) : "NULL");
                if (c && PQstatus(c) == CONNECTION_OK) {
                        query_ok(c, "SELECT 1", 1);
                        if (i % 5 == 4) {
                                PQreset(c);
                                EXPECT(PQstatus(c) == CONNECTION_OK, "reset: %s",
                                       PQerrorMessage(c));
                                query_ok(c, "SELECT 2", 2);
                        }
                }
                PQfinish(c);
        }
        return NULL;
}

static void connect_query_finish(void)
{
        make_pool(3, 60000, 30000);
        pthread_t t[CQF_THREADS];
        for (int i = 0; i < CQF_THREADS; i++)
                CHECK(pthread_create(&t[i], NULL, cqf_worker, (void *)(intptr_t)i) == 0, "thread");
        for (int i = 0; i < CQF_THREADS; i++)
                pthread_join(t[i], NULL);
        struct ds_stats st = stats_drained();
        CHECK(failures == 0, "%d failures", (int)failures);
        CHECK(st.held == 0 && st.peak_held <= 3, "held %u, peak %llu over a pool of 3", st.held,
              (unsigned long long)st.peak_held);
        ds_stats_free(&st);
}

/* ---- idle_release_races_app_threads ---- */

#define IR_KEEPERS 6
#define IR_CYCLERS 2
#define IR_ROUNDS  8

static pthread_barrier_t together;

static unsigned next_rand(unsigned *s)
{
        *s = *s * 1103515245u + 12345u;
        return (*s >> 16) & 0x7fff;
}

static void *ir_keeper(void *arg)
{
        unsigned seed = (unsigned)(intptr_t)arg * 7919u + 1;
        PGconn *c = PQconnectdb(APP);
        EXPECT(c && PQstatus(c) == CONNECTION_OK, "connect: %s", c ? PQerrorMessage(c) : "NULL");
        for (int i = 0; i < IR_ROUNDS; i++) {
                query_ok(c, "SELECT 3", 3);
                if (i % 3 == 2) {
                        /* everyone idle at once: the life thread releases */
                        pthread_barrier_wait(&together);
                        sleep_ms(700);
                } else {
                        sleep_ms(next_rand(&seed) % 400);
                }
                query_ok(c, "SELECT 4", 4);
        }
        PQfinish(c);
        return NULL;
}

static void *ir_cycler(void *arg)
{
        (void)arg;
        for (int i = 0; i < IR_ROUNDS; i++) {
                PGconn *c = PQconnectdb(APP);
                EXPECT(c && PQstatus(c) == CONNECTION_OK, "connect: %s",
                       c ? PQerrorMessage(c) : "NULL");
                query_ok(c, "SELECT 5", 5);
                sleep_ms(150);
                PQfinish(c);
                if (i % 3 == 2) {
                        /* with the keepers: no connect may keep the
                         * scraper active while they pause */
                        pthread_barrier_wait(&together);
                        sleep_ms(700);
                }
        }
        return NULL;
}

static void idle_release_races_app_threads(void)
{
        make_pool(10, 200, 100);
        CHECK(pthread_barrier_init(&together, NULL, IR_KEEPERS + IR_CYCLERS) == 0, "barrier");
        pthread_t t[IR_KEEPERS + IR_CYCLERS];
        for (int i = 0; i < IR_KEEPERS; i++)
                CHECK(pthread_create(&t[i], NULL, ir_keeper, (void *)(intptr_t)i) == 0, "thread");
        for (int i = 0; i < IR_CYCLERS; i++)
                CHECK(pthread_create(&t[IR_KEEPERS + i], NULL, ir_cycler, NULL) == 0, "thread");
        for (int i = 0; i < IR_KEEPERS + IR_CYCLERS; i++)
                pthread_join(t[i], NULL);
        struct ds_stats st = stats_drained();
        uint64_t released = 0, reconnects = 0;
        for (size_t i = 0; i < st.n_scrapers; i++)
                if (!strcmp(st.scrapers[i].name, "dsthreads")) {
                        released = st.scrapers[i].idle_releases;
                        reconnects = st.scrapers[i].reconnects;
                }
        fprintf(stderr, "idle releases %llu, transparent reconnects %llu\n",
                (unsigned long long)released, (unsigned long long)reconnects);
        CHECK(failures == 0, "%d failures", (int)failures);
        CHECK(st.held == 0 && st.peak_held <= 10, "held %u, peak %llu", st.held,
              (unsigned long long)st.peak_held);
        CHECK(released > 0 && reconnects > 0,
              "no release or no reconnect happened: the test proves nothing");
        ds_stats_free(&st);
}

/* ---- coordinator_threads ---- */

#define CT_THREADS 6
#define CT_ROUNDS  200

static ds_handle *shared;
static atomic_int ct_done;

static void *ct_worker(void *arg)
{
        (void)arg;
        for (int i = 0; i < CT_ROUNDS; i++) {
                struct ds_lease_ref ref;
                char why[256];
                int rc = ds_acquire(shared, 10000, &ref, why, sizeof(why));
                EXPECT(rc == 0, "acquire: %d %s", rc, why);
                if (rc)
                        continue;
                ds_inflight_add(shared, 1);
                ds_touch(shared, ds_now_ns());
                ds_inflight_add(shared, -1);
                struct ds_advice adv;
                ds_advise(shared, &adv);
                EXPECT(ds_release(shared, &ref) == 0, "release");
        }
        atomic_fetch_add(&ct_done, 1);
        return NULL;
}

static void *ct_observer(void *arg)
{
        (void)arg;
        for (int i = 0; atomic_load(&ct_done) < CT_THREADS; i++) {
                struct ds_stats st;
                EXPECT(ds_stats_get(shared, &st) == 0, "stats");
                EXPECT(st.held <= 2, "held %u over a pool of 2", st.held);
                ds_stats_free(&st);
                char why[256];
                EXPECT(ds_check(shared, why, sizeof(why)) == 0, "check: %s", why);
                ds_reclaim(shared);
                if (i % 50 == 0) {
                        const char *pair[] = {i % 100 ? "idle_timeout=30" : "idle_timeout=20"};
                        struct ds_config cfg;
                        EXPECT(ds_update_config(shared, pair, 1, &cfg, why, sizeof(why)) == 0,
                               "update: %s", why);
                }
                sleep_ms(1);
        }
        return NULL;
}

static void coordinator_threads(void)
{
        make_pool(2, 60000, 30000);
        char err[256];
        CHECK(ds_attach(segment, 0, &shared, err, sizeof(err)) == 0, "attach: %s", err);
        CHECK(ds_set_scraper(shared, "dsthreads") == 0, "scraper");
        pthread_t t[CT_THREADS + 1];
        for (int i = 0; i < CT_THREADS; i++)
                CHECK(pthread_create(&t[i], NULL, ct_worker, NULL) == 0, "thread");
        CHECK(pthread_create(&t[CT_THREADS], NULL, ct_observer, NULL) == 0, "thread");
        for (int i = 0; i <= CT_THREADS; i++)
                pthread_join(t[i], NULL);
        ds_detach(shared);
        struct ds_stats st = stats();
        CHECK(failures == 0, "%d failures", (int)failures);
        CHECK(st.held == 0 && st.peak_held <= 2 && st.grants == CT_THREADS * CT_ROUNDS,
              "held %u, peak %llu, grants %llu", st.held, (unsigned long long)st.peak_held,
              (unsigned long long)st.grants);
        ds_stats_free(&st);
}

int main(int argc, char **argv)
{
        segment = dstest_start(argc, argv);
        if (!strcmp(argv[1], "connect_query_finish"))
                connect_query_finish();
        else if (!strcmp(argv[1], "coordinator_threads"))
                coordinator_threads();
        else if (!strcmp(argv[1], "idle_release_races_app_threads"))
                idle_release_races_app_threads();
        else
                CHECK(0, "unknown case %s", argv[1]);
        ds_segment_destroy(segment, NULL, 0);
        return 0;
}
