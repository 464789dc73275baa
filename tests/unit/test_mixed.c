/* test_mixed.c - per-scraper overrides with real processes: a viewer
 * capped at 5 with a reserve of 2 beside two busy scrapers that push (many
 * connects waiting each) gets its reserve within a short wait, through the
 * busy ones' surplus releases, and never holds more than its cap; an
 * independent observer never sees more slots held than the pool has. */
#include "testutil.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/mman.h>

#define BUSY_THREADS 12

struct shared {
        _Atomic int stop;
        _Atomic uint32_t max_held;        /* most HELD leases seen at once */
        _Atomic uint32_t max_viewer_held; /* most HELD leases of the viewer */
        _Atomic uint32_t violations;      /* observations above pool_size */
        _Atomic uint64_t observations;
        _Atomic uint32_t errors;        /* unexpected failures in the busy processes */
        _Atomic uint32_t surplus_given; /* slots the busy processes gave back */
};

static const char *seg;
static struct shared *sh;
static pid_t children[8]; /* killed by teardown if a test failed early */
static int n_children;

static void setup(void)
{
        seg = tu_segname("mixed");
        sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        cr_assert_neq(sh, MAP_FAILED);
        memset(sh, 0, sizeof(*sh));
}

static void teardown(void)
{
        atomic_store(&sh->stop, 1);
        for (int i = 0; i < n_children; i++) {
                kill(children[i], SIGKILL);
                waitpid(children[i], NULL, 0);
        }
        n_children = 0;
        ds_segment_destroy(seg, NULL, 0);
}

static pid_t track(pid_t p)
{
        cr_assert_neq(p, -1);
        if (n_children < 8)
                children[n_children++] = p;
        return p;
}

/* Slots name holds, 0 while it does not exist yet. */
static uint32_t held_of(ds_handle *h, const char *name)
{
        struct ds_stats st;
        uint32_t n = 0;
        cr_assert_eq(ds_stats_get(h, &st), 0);
        for (size_t i = 0; i < st.n_scrapers; i++)
                if (strcmp(st.scrapers[i].name, name) == 0)
                        n = st.scrapers[i].held;
        ds_stats_free(&st);
        return n;
}

TestSuite(mixed, .init = setup, .fini = teardown, .timeout = 120);

static void set_or_fail(ds_handle *h, const char *const *kv, size_t n)
{
        char err[256] = "";
        cr_assert_eq(ds_update(h, kv, n, NULL, 0, NULL, err, sizeof(err)), 0, "%s", err);
}

/* ---- the observer: counts HELD leases in the table under the lock ---- */

static void observer_main(const char *viewer)
{
        ds_handle *h = NULL;
        if (ds_attach(seg, 0, &h, NULL, 0))
                _exit(1);
        struct ds_header *H = ds_handle_header(h);
        struct ds_lease *leases = (struct ds_lease *)((char *)H + ds_layout_leases_off(&H->cap));
        struct ds_scraper *scrapers =
            (struct ds_scraper *)((char *)H + ds_layout_scrapers_off(&H->cap));
        while (!atomic_load(&sh->stop)) {
                if (ds_lock(h) == 0) {
                        uint32_t vi = UINT32_MAX, held = 0, vheld = 0;
                        for (uint32_t i = 0; i < H->cap.max_scrapers; i++)
                                if (strcmp(scrapers[i].name, viewer) == 0)
                                        vi = i;
                        for (uint32_t i = 0; i < H->cap.max_leases; i++) {
                                if (atomic_load(&leases[i].state) != DS_LEASE_HELD)
                                        continue;
                                held++;
                                vheld += leases[i].scraper == vi;
                        }
                        uint32_t cap = H->cfg.pool_size;
                        ds_unlock(h);
                        if (held > cap)
                                atomic_fetch_add(&sh->violations, 1);
                        if (held > atomic_load(&sh->max_held))
                                atomic_store(&sh->max_held, held);
                        if (vheld > atomic_load(&sh->max_viewer_held))
                                atomic_store(&sh->max_viewer_held, vheld);
                        atomic_fetch_add(&sh->observations, 1);
                }
                struct timespec ts = {0, 200000};
                nanosleep(&ts, NULL);
        }
        ds_detach(h);
        _exit(0);
}

/* ---- a busy scraper: threads that always want a slot ---- */

struct busy {
        ds_handle *h;
        pthread_mutex_t m;
        struct ds_lease_ref held[BUSY_THREADS];
        int n;
        unsigned hold_min_ms, hold_max_ms;
};

/* Takes ref out of the held list; 1 if it was there (still ours to release). */
static int take_back(struct busy *b, const struct ds_lease_ref *ref)
{
        int mine = 0;
        pthread_mutex_lock(&b->m);
        for (int i = 0; i < b->n; i++)
                if (b->held[i].id == ref->id) {
                        b->held[i] = b->held[--b->n];
                        mine = 1;
                        break;
                }
        pthread_mutex_unlock(&b->m);
        return mine;
}

/* The advice handler: gives back the surplus the pool asks for, as the
 * shim's idle release will. */
static void give_back_surplus(void *arg)
{
        struct busy *b = arg;
        struct ds_advice a;
        if (ds_advise(b->h, &a) || !a.give_back || a.reason != DS_RELEASE_SURPLUS)
                return;
        uint32_t given = 0;
        pthread_mutex_lock(&b->m);
        while (given < a.give_back && b->n > 0) {
                struct ds_lease_ref ref = b->held[--b->n];
                if (ds_release_for(b->h, &ref, DS_RELEASE_SURPLUS) == 0)
                        given++;
                else
                        atomic_fetch_add(&sh->errors, 1);
        }
        pthread_mutex_unlock(&b->m);
        if (given < a.give_back)
                ds_advice_unused(b->h, a.give_back - given);
        atomic_fetch_add(&sh->surplus_given, given);
}

static void *busy_thread(void *arg)
{
        struct busy *b = arg;
        unsigned seed = (unsigned)pthread_self();
        while (!atomic_load(&sh->stop)) {
                struct ds_lease_ref ref;
                int rc = ds_acquire(b->h, 2000, &ref, NULL, 0);
                if (rc) {
                        if (rc != -ETIMEDOUT)
                                atomic_fetch_add(&sh->errors, 1);
                        continue;
                }
                pthread_mutex_lock(&b->m);
                b->held[b->n++] = ref;
                pthread_mutex_unlock(&b->m);
                unsigned span = b->hold_max_ms - b->hold_min_ms + 1;
                unsigned hold = b->hold_min_ms + (unsigned)rand_r(&seed) % span;
                /* hold it, until done, told to stop, or given back as surplus */
                for (unsigned t = 0; t < hold && !atomic_load(&sh->stop); t += 5) {
                        pthread_mutex_lock(&b->m);
                        int still = 0;
                        for (int i = 0; i < b->n; i++)
                                still |= b->held[i].id == ref.id;
                        pthread_mutex_unlock(&b->m);
                        if (!still)
                                break;
                        /* working on its connection: activity, as the shim
                         * reports a program's calls (a connect that waits is
                         * not activity) */
                        ds_touch(b->h, 0);
                        tu_sleep_ms(5);
                }
                if (take_back(b, &ref) && ds_release(b->h, &ref) != 0)
                        atomic_fetch_add(&sh->errors, 1);
        }
        return NULL;
}

static void busy_main(const char *name, unsigned hold_min_ms, unsigned hold_max_ms)
{
        static struct busy b;
        if (ds_attach(seg, 0, &b.h, NULL, 0) || ds_set_scraper(b.h, name))
                _exit(1);
        pthread_mutex_init(&b.m, NULL);
        b.hold_min_ms = hold_min_ms;
        b.hold_max_ms = hold_max_ms;
        ds_set_advice_handler(b.h, give_back_surplus, &b, 1000);
        pthread_t t[BUSY_THREADS];
        for (int i = 0; i < BUSY_THREADS; i++)
                if (pthread_create(&t[i], NULL, busy_thread, &b))
                        _exit(2);
        for (int i = 0; i < BUSY_THREADS; i++)
                pthread_join(t[i], NULL);
        ds_set_advice_handler(b.h, NULL, NULL, 0);
        ds_detach(b.h);
        _exit(0);
}

static pid_t spawn_busy(const char *name, unsigned hold_min_ms, unsigned hold_max_ms)
{
        fflush(NULL);
        pid_t p = fork();
        if (p == 0)
                busy_main(name, hold_min_ms, hold_max_ms);
        return track(p);
}

static pid_t spawn_observer(const char *viewer)
{
        fflush(NULL);
        pid_t p = fork();
        if (p == 0)
                observer_main(viewer);
        return track(p);
}

static void stop_all(pid_t *pids, int n)
{
        atomic_store(&sh->stop, 1);
        for (int i = 0; i < n; i++) {
                int st;
                cr_assert_eq(waitpid(pids[i], &st, 0), pids[i]);
                cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "process %d failed (status %d)", i,
                          st);
                for (int j = 0; j < n_children; j++)
                        if (children[j] == pids[i])
                                children[j] = children[--n_children];
        }
}

/* Polls until the pool is full (5 s at most). */
static void wait_full(ds_handle *h, uint32_t pool)
{
        for (int t = 0; t < 500 && tu_held(h) < pool; t++)
                tu_sleep_ms(10);
        cr_assert_eq(tu_held(h), pool, "the busy scrapers never filled the pool");
}

Test(mixed, viewer_gets_its_reserve_promptly_while_two_busy_scrapers_hold_the_whole_pool)
{
        tu_create(seg, 20, 10, 15);
        ds_handle *h = tu_attach(seg, "viewer");
        const char *kv[] = {"idle_timeout=0.3", "scraper.viewer.max=5", "scraper.viewer.reserve=2"};
        set_or_fail(h, kv, 3);
        pid_t pids[3];
        pids[0] = spawn_observer("viewer");
        /* the busy ones hold their slots for a minute: only surplus
         * releases can give the viewer anything */
        pids[1] = spawn_busy("busy_a", 60000, 60000);
        pids[2] = spawn_busy("busy_b", 60000, 60000);
        uint64_t worst = 0;
        for (int round = 0; round < 5; round++) {
                /* idle, the viewer's reserve is not set aside: the busy ones
                 * take every slot */
                wait_full(h, 20);
                struct ds_scraper_stats v = tu_scraper(h, "viewer");
                cr_assert_eq(v.active, 0, "round %d: the viewer should be idle", round);
                cr_assert_eq(v.held, 0);
                struct ds_lease_ref l[2];
                uint64_t t0 = ds_now_ns();
                for (int i = 0; i < 2; i++) {
                        char why[256] = "";
                        int rc = ds_acquire(h, 5000, &l[i], why, sizeof(why));
                        cr_assert_eq(rc, 0, "round %d slot %d: %s", round, i, why);
                }
                uint64_t dt = ds_now_ns() - t0;
                worst = dt > worst ? dt : worst;
                cr_assert_lt(dt, 1000000000ull, "round %d: the reserve took %llu ms", round,
                             (unsigned long long)(dt / 1000000));
                tu_assert_consistent(h);
                for (int i = 0; i < 2; i++)
                        cr_assert_eq(ds_release(h, &l[i]), 0);
                tu_sleep_ms(400); /* past idle_timeout */
        }
        struct ds_scraper_stats a = tu_scraper(h, "busy_a"), b = tu_scraper(h, "busy_b");
        cr_assert_geq(a.surplus_releases + b.surplus_releases, 10,
                      "the reserve came from surplus releases (%llu + %llu)",
                      (unsigned long long)a.surplus_releases,
                      (unsigned long long)b.surplus_releases);
        stop_all(pids + 1, 2);
        stop_all(pids, 1);
        cr_log_info("worst reserve wait %.1f ms, %u surplus slots given back, %llu observations",
                    (double)worst / 1e6, atomic_load(&sh->surplus_given),
                    (unsigned long long)atomic_load(&sh->observations));
        cr_assert_eq(atomic_load(&sh->errors), 0);
        cr_assert_eq(atomic_load(&sh->violations), 0, "the observer saw more than 20 held");
        cr_assert_gt(atomic_load(&sh->observations), 100);
        cr_assert_leq(atomic_load(&sh->max_viewer_held), 5);
        cr_assert_eq(tu_scraper(h, "viewer").connects, 10);
        tu_assert_consistent(h);
        ds_detach(h);
}

struct viewer_conn {
        ds_handle *h;
        int rc;
        struct ds_lease_ref l;
};

static void *viewer_connect(void *arg)
{
        struct viewer_conn *c = arg;
        c->rc = ds_acquire(c->h, 1500, &c->l, NULL, 0);
        return NULL;
}

Test(mixed, capped_viewer_never_holds_more_than_its_max_beside_busy_scrapers)
{
        tu_create(seg, 20, 10, 15);
        ds_handle *h = tu_attach(seg, "viewer");
        /* weight 2: its share (15 of soft_limit 10 among 3) is above the
         * cap, so the cap is what stops it; the busy ones get 8 each */
        const char *kv[] = {"scraper.viewer.max=5", "scraper.viewer.reserve=2",
                            "scraper.viewer.weight=2"};
        set_or_fail(h, kv, 3);
        pid_t pids[3];
        pids[0] = spawn_observer("viewer");
        /* busy ones churn: short holds, many connects waiting */
        pids[1] = spawn_busy("busy_a", 5, 40);
        pids[2] = spawn_busy("busy_b", 5, 40);
        wait_full(h, 20);
        /* 8 connects of the viewer at once: 5 are granted, 3 time out */
        struct viewer_conn c[8];
        pthread_t t[8];
        for (int i = 0; i < 8; i++) {
                c[i].h = h;
                cr_assert_eq(pthread_create(&t[i], NULL, viewer_connect, &c[i]), 0);
        }
        int granted = 0, timedout = 0;
        for (int i = 0; i < 8; i++) {
                pthread_join(t[i], NULL);
                granted += c[i].rc == 0;
                timedout += c[i].rc == -ETIMEDOUT;
        }
        cr_assert_eq(granted, 5, "the viewer got %d slots", granted);
        cr_assert_eq(timedout, 3);
        struct ds_scraper_stats v = tu_scraper(h, "viewer");
        cr_assert_eq(v.held, 5);
        cr_assert_eq(v.limit, 5);
        cr_assert_eq(tu_scraper(h, "busy_a").limit, 8);
        tu_sleep_ms(300); /* the busy ones keep pushing around it */
        stop_all(pids + 1, 2);
        stop_all(pids, 1);
        cr_assert_eq(atomic_load(&sh->errors), 0);
        cr_assert_eq(atomic_load(&sh->violations), 0, "the observer saw more than 20 held");
        cr_assert_eq(atomic_load(&sh->max_held), 20, "the pool was never full");
        cr_assert_eq(atomic_load(&sh->max_viewer_held), 5, "the observer saw the viewer above 5");
        for (int i = 0; i < 8; i++)
                if (c[i].rc == 0)
                        cr_assert_eq(ds_release(h, &c[i].l), 0);
        tu_assert_consistent(h);
        ds_detach(h);
}

Test(mixed, a_static_allocation_keeps_its_slots_free_while_it_is_idle)
{
        tu_create(seg, 10, 10, 10);
        ds_handle *h = tu_attach(seg, "static");
        const char *kv[] = {"scraper.static.max=3", "scraper.static.reserve=3",
                            "scraper.static.idle_release=off"};
        set_or_fail(h, kv, 3);
        pid_t pids[1];
        pids[0] = spawn_busy("busy", 60000, 60000);
        /* the busy scraper, alone active, gets 7 of 10: 3 stay set aside */
        for (int t = 0; t < 300 && held_of(h, "busy") < 7; t++)
                tu_sleep_ms(10);
        tu_sleep_ms(300);
        struct ds_scraper_stats b = tu_scraper(h, "busy"), s = tu_scraper(h, "static");
        cr_assert_eq(b.held, 7);
        cr_assert_eq(b.limit, 7);
        cr_assert_eq(s.active, 0);
        cr_assert_eq(s.claimed, 3, "set aside while idle");
        struct ds_lease_ref l[3], x;
        uint64_t t0 = ds_now_ns();
        for (int i = 0; i < 3; i++)
                cr_assert_eq(ds_acquire(h, 0, &l[i], NULL, 0), 0, "slot %d at once", i);
        cr_assert_lt(ds_now_ns() - t0, 100000000ull);
        cr_assert_eq(ds_acquire(h, 100, &x, NULL, 0), -ETIMEDOUT, "max 3");
        struct ds_advice a;
        cr_assert_eq(ds_advise(h, &a), 0);
        cr_assert_eq(a.give_back, 0, "idle release off: never asked to give back");
        stop_all(pids, 1);
        cr_assert_eq(atomic_load(&sh->errors), 0);
        ds_detach(h);
}

Test(mixed, overrides_may_name_a_scraper_before_it_runs_and_keep_its_record)
{
        struct ds_config cfg;
        struct ds_capacity cap;
        ds_config_defaults(&cfg);
        ds_capacity_defaults(&cap);
        cap.max_scrapers = 2;
        struct ds_create_opts o = {.mode = 0600, .group = (gid_t)-1, .force = 1};
        cr_assert_eq(ds_segment_create(seg, &cfg, &cap, &o, NULL, 0), 0);
        ds_handle *h = tu_attach(seg, NULL);
        const char *kv[] = {"scraper.later.weight=2"};
        set_or_fail(h, kv, 1);
        struct ds_scraper_stats s = tu_scraper(h, "later");
        cr_assert_eq(s.procs, 0);
        cr_assert_eq(s.ov.flags, DS_OV_WEIGHT);
        cr_assert_eq(s.ov.weight_milli, 2000);
        /* two short-lived scrapers pass through the other record; "later"
         * is never recycled for them */
        for (int i = 0; i < 2; i++) {
                char name[16];
                snprintf(name, sizeof(name), "once%d", i);
                ds_handle *k = tu_attach(seg, name);
                struct ds_lease_ref l;
                cr_assert_eq(ds_acquire(k, 0, &l, NULL, 0), 0, "%s", name);
                ds_detach(k);
        }
        cr_assert_eq(tu_scraper(h, "later").ov.weight_milli, 2000);
        /* a third name does not fit: refused, nothing changes */
        const char *more[] = {"scraper.later.max=4", "scraper.third.max=2", "scraper.fourth.max=2"};
        char err[256] = "";
        cr_assert_eq(ds_update(h, more, 3, NULL, 0, NULL, err, sizeof(err)), -ENOSPC);
        cr_assert(strstr(err, "no room for scraper"), "%s", err);
        cr_assert_eq(tu_scraper(h, "later").ov.flags, DS_OV_WEIGHT, "a refused update changed it");
        /* unset everything: the record becomes recyclable */
        const char *all[] = {"scraper.later"};
        cr_assert_eq(ds_update(h, NULL, 0, all, 1, NULL, err, sizeof(err)), 0, "%s", err);
        cr_assert_eq(tu_scraper(h, "later").ov.flags, 0);
        tu_assert_consistent(h);
        ds_detach(h);
}

Test(mixed, invalid_overrides_are_refused_with_the_reason_and_change_nothing)
{
        tu_create(seg, 20, 10, 15);
        ds_handle *h = tu_attach(seg, NULL);
        const char *ok[] = {"scraper.viewer.reserve=4", "scraper.batch.reserve=10"};
        set_or_fail(h, ok, 2);
        static const struct {
                const char *kv[3];
                const char *why;
        } cases[] = {
            {{"scraper.other.reserve=6"}, "would add up to 20, which must stay below pool_size 20"},
            {{"pool_size=14", "max_limit=14"},
             "would add up to 14, which must stay below pool_size 14"},
            {{"scraper.viewer.max=3"}, "reserve 4 is above its max 3"},
            {{"scraper.viewer.max=0"}, "scraper.viewer.max: '0' is not a whole number from 1"},
            {{"scraper.viewer.weight=0"}, "is not a number from 0.001 to 1000"},
            {{"scraper.viewer.weight=1000.5"}, "is not a number from 0.001 to 1000"},
            {{"scraper.viewer.weight=0.0001"}, "is not a number from 0.001 to 1000"},
            {{"scraper.viewer.idle_release=maybe"}, "is not on or off"},
            {{"scraper.viewer.colour=red"}, "does not end in a scraper setting"},
            {{"scraper..max=3"}, "names no scraper"},
            {{"warn_usage=50", "scraper.viewer.max=2"}, "reserve 4 is above its max 2"},
        };
        struct ds_config before, after;
        cr_assert_eq(ds_get_config(h, &before), 0);
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                size_t n = 0;
                while (n < 3 && cases[i].kv[n])
                        n++;
                char err[300] = "";
                cr_assert_eq(ds_update(h, cases[i].kv, n, NULL, 0, NULL, err, sizeof(err)), -EINVAL,
                             "%s was accepted", cases[i].kv[0]);
                cr_assert(strstr(err, cases[i].why), "%s: %s", cases[i].kv[0], err);
        }
        cr_assert_eq(ds_get_config(h, &after), 0);
        cr_assert_eq(memcmp(&before, &after, sizeof(before)), 0);
        struct ds_scraper_stats v = tu_scraper(h, "viewer");
        cr_assert_eq(v.ov.flags, DS_OV_RESERVE);
        cr_assert_eq(v.ov.reserve, 4);
        char err[300] = "";
        const char *bad_unset[] = {"pool_size"};
        cr_assert_eq(ds_update(h, NULL, 0, bad_unset, 1, NULL, err, sizeof(err)), -EINVAL);
        cr_assert(strstr(err, "'pool_size' cannot be unset"), "%s", err);
        /* the weight keeps 3 decimals */
        const char *w[] = {"scraper.viewer.weight=0.125"};
        set_or_fail(h, w, 1);
        cr_assert_eq(tu_scraper(h, "viewer").ov.weight_milli, 125);
        ds_detach(h);
}

Test(mixed, check_reports_overrides_that_no_update_could_have_written)
{
        tu_create(seg, 20, 10, 15);
        ds_handle *h = tu_attach(seg, NULL);
        const char *kv[] = {"scraper.viewer.max=5", "scraper.viewer.reserve=2"};
        set_or_fail(h, kv, 2);
        tu_assert_consistent(h);
        struct ds_header *H = ds_handle_header(h);
        struct ds_scraper *s = (struct ds_scraper *)((char *)H + ds_layout_scrapers_off(&H->cap));
        long vi = -1;
        for (uint32_t i = 0; i < H->cap.max_scrapers; i++)
                if (strcmp(s[i].name, "viewer") == 0)
                        vi = i;
        cr_assert_geq(vi, 0);
        char why[256] = "";
        s[vi].ov.reserve = 6;
        cr_assert_eq(ds_check(h, why, sizeof(why)), -EPROTO);
        cr_assert(strstr(why, "reserve 6 is above its max 5"), "%s", why);
        s[vi].ov.flags &= ~DS_OV_MAX;
        s[vi].ov.reserve = 25;
        cr_assert_eq(ds_check(h, why, sizeof(why)), -EPROTO);
        cr_assert(strstr(why, "add up to 25, not below pool_size 20"), "%s", why);
        /* the limits stay sane all the same: never above the pool */
        struct ds_lease_ref l;
        ds_handle *k = tu_attach(seg, "viewer");
        cr_assert_eq(ds_acquire(k, 0, &l, NULL, 0), 0);
        cr_assert_leq(tu_scraper(h, "viewer").limit, 20);
        ds_detach(k);
        s[vi].ov.reserve = 2;
        tu_assert_consistent(h);
        ds_detach(h);
}
