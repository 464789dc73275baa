/* test_stress.c - many processes churning through a small pool while some
 * are SIGKILLed at random moments: an independent observer never sees more
 * slots held than the pool has, and nothing leaks. */
#include "testutil.h"

#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/mman.h>

#define WORKERS  32
#define CYCLES   2000
#define POOL     20
#define SCRAPERS 4
#define KILLS    8 /* random SIGKILLs over the run, each worker replaced */

struct shared {
        _Atomic int stop;
        _Atomic uint64_t observations;
        _Atomic uint32_t max_seen;
        _Atomic uint32_t violations;
        _Atomic uint64_t cycles_done;
        _Atomic uint32_t errors;
};

static const char *seg;
static struct shared *sh;

static void setup(void)
{
        seg = tu_segname("stress");
        sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        cr_assert_neq(sh, MAP_FAILED);
        memset(sh, 0, sizeof(*sh));
}

static void teardown(void)
{
        ds_segment_destroy(seg, NULL, 0);
}

TestSuite(stress, .init = setup, .fini = teardown, .timeout = 300);

/* Counts HELD leases in the table itself (not the counters), under the lock. */
static void observer(void)
{
        ds_handle *h = NULL;
        if (ds_attach(seg, 0, &h, NULL, 0))
                _exit(1);
        struct ds_header *H = ds_handle_header(h);
        struct ds_lease *leases = (struct ds_lease *)((char *)H + ds_layout_leases_off(&H->cap));
        uint32_t n = H->cap.max_leases;
        while (!atomic_load(&sh->stop)) {
                if (ds_lock(h) == 0) {
                        uint32_t held = 0;
                        for (uint32_t i = 0; i < n; i++)
                                held += atomic_load(&leases[i].state) == DS_LEASE_HELD;
                        uint32_t cap = H->cfg.pool_size;
                        ds_unlock(h);
                        if (held > cap)
                                atomic_fetch_add(&sh->violations, 1);
                        if (held > atomic_load(&sh->max_seen))
                                atomic_store(&sh->max_seen, held);
                        atomic_fetch_add(&sh->observations, 1);
                }
                struct timespec ts = {0, 100000};
                nanosleep(&ts, NULL);
        }
        ds_detach(h);
        _exit(0);
}

static void worker(int id, int cycles)
{
        char name[32];
        snprintf(name, sizeof(name), "scraper%d", id % SCRAPERS);
        ds_handle *h = NULL;
        if (ds_attach(seg, 0, &h, NULL, 0) || ds_set_scraper(h, name))
                _exit(1);
        srand((unsigned)getpid());
        for (int i = 0; i < cycles; i++) {
                struct ds_lease_ref l;
                int rc = ds_acquire(h, 60000, &l, NULL, 0);
                if (rc) {
                        atomic_fetch_add(&sh->errors, 1);
                        continue;
                }
                struct timespec ts = {0, (rand() % 200) * 1000L};
                if (ts.tv_nsec)
                        nanosleep(&ts, NULL);
                if (ds_release(h, &l))
                        atomic_fetch_add(&sh->errors, 1);
                atomic_fetch_add(&sh->cycles_done, 1);
        }
        ds_detach(h);
        _exit(0);
}

static pid_t spawn(void (*fn)(int, int), int id, int cycles)
{
        pid_t p = fork();
        cr_assert_neq(p, -1);
        if (p == 0)
                fn(id, cycles);
        return p;
}

static void observer_entry(int id, int cycles)
{
        (void)id, (void)cycles;
        observer();
}

Test(stress, churn_with_random_kills_never_exceeds_the_pool_and_leaks_nothing)
{
        tu_create(seg, POOL, POOL / 2, POOL * 3 / 4);
        pid_t obs = spawn(observer_entry, 0, 0);
        pid_t w[WORKERS];
        for (int i = 0; i < WORKERS; i++)
                w[i] = spawn(worker, i, CYCLES);
        srand((unsigned)getpid());
        int alive = WORKERS, kills = 0;
        uint64_t t0 = ds_now_ns();
        while (alive > 0) {
                if (kills < KILLS) {
                        tu_sleep_ms(50 + (unsigned)(rand() % 400));
                        int v = rand() % WORKERS;
                        if (w[v] > 0 && kill(w[v], SIGKILL) == 0) {
                                int st;
                                waitpid(w[v], &st, 0);
                                kills++;
                                /* a replacement takes up the rest of the work */
                                w[v] = spawn(worker, v, CYCLES / 2);
                        }
                        continue;
                }
                int st;
                pid_t p = wait(&st);
                cr_assert_neq(p, -1);
                for (int i = 0; i < WORKERS; i++)
                        if (w[i] == p) {
                                cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "worker %d failed",
                                          i);
                                w[i] = 0;
                                alive--;
                        }
                cr_assert_lt(ds_now_ns() - t0, 240000000000ull, "stress run wedged");
        }
        atomic_store(&sh->stop, 1);
        waitpid(obs, NULL, 0);

        ds_handle *h = tu_attach(seg, NULL);
        ds_reclaim(h);
        struct ds_stats st;
        cr_assert_eq(ds_stats_get(h, &st), 0);
        cr_assert_eq(st.held, 0, "slots left held");
        cr_assert_eq(st.waiting, 0, "waits left behind");
        cr_assert_eq(st.procs, 0, "process records leaked");
        cr_assert_leq(st.peak_held, POOL);
        ds_stats_free(&st);
        struct ds_header *H = ds_handle_header(h);
        struct ds_lease *leases = (struct ds_lease *)((char *)H + ds_layout_leases_off(&H->cap));
        for (uint32_t i = 0; i < H->cap.max_leases; i++)
                cr_assert_eq(atomic_load(&leases[i].state), DS_LEASE_FREE, "lease %u leaked", i);
        tu_assert_consistent(h);
        ds_detach(h);

        cr_log_info("kills %d, cycles %llu, observations %llu, max held seen %u, errors %u, "
                    "%.1f s",
                    kills, (unsigned long long)atomic_load(&sh->cycles_done),
                    (unsigned long long)atomic_load(&sh->observations), atomic_load(&sh->max_seen),
                    atomic_load(&sh->errors), (double)(ds_now_ns() - t0) / 1e9);
        cr_assert_eq(kills, KILLS);
        cr_assert_eq(atomic_load(&sh->violations), 0, "observer saw more than %d held", POOL);
        cr_assert_gt(atomic_load(&sh->observations), 100);
        cr_assert_eq(atomic_load(&sh->max_seen), POOL, "the pool was never fully used");
        cr_assert_eq(atomic_load(&sh->errors), 0);
        cr_assert_geq(atomic_load(&sh->cycles_done), (uint64_t)(WORKERS - KILLS) * CYCLES);
}
