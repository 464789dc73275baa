/* test_pool.c - leases across real processes: limits, hand-off, order,
 * timeouts, live reconfiguration, fork and exec, dead holders. */
#include "testutil.h"

#include <signal.h>
#include <stdlib.h>

static const char *seg;

static void setup(void)
{
        seg = tu_segname("pool");
}

static void teardown(void)
{
        ds_segment_destroy(seg, NULL, 0);
}

TestSuite(pool, .init = setup, .fini = teardown, .timeout = 60);

/* Forks a child that attaches as `scraper`, takes n slots (waiting up to
 * wait_ms each), reports how many it got on fd, then sleeps hold_ms and
 * exits (releasing by detach). */
static pid_t spawn_holder(const char *scraper, int n, uint32_t wait_ms, unsigned hold_ms, int fd)
{
        pid_t pid = fork();
        cr_assert_neq(pid, -1);
        if (pid)
                return pid;
        ds_handle *h = NULL;
        if (ds_attach(seg, 0, &h, NULL, 0) || ds_set_scraper(h, scraper))
                _exit(90);
        int got = 0;
        for (int i = 0; i < n; i++) {
                struct ds_lease_ref l;
                if (ds_acquire(h, wait_ms, &l, NULL, 0) == 0)
                        got++;
        }
        if (fd >= 0 && write(fd, &got, sizeof(got)) != sizeof(got))
                _exit(91);
        tu_sleep_ms(hold_ms);
        ds_detach(h);
        _exit(0);
}

static int read_int(int fd)
{
        int v = -1;
        cr_assert_eq(read(fd, &v, sizeof(v)), (ssize_t)sizeof(v));
        return v;
}

static void reap(pid_t pid)
{
        int st;
        cr_assert_eq(waitpid(pid, &st, 0), pid);
}

Test(pool, acquire_and_release_update_held_and_connects)
{
        tu_create(seg, 20, 10, 15);
        ds_handle *h = tu_attach(seg, "alpha");
        struct ds_lease_ref l[3];
        for (int i = 0; i < 3; i++)
                cr_assert_eq(ds_acquire(h, 0, &l[i], NULL, 0), 0);
        struct ds_scraper_stats s = tu_scraper(h, "alpha");
        cr_assert_eq(s.held, 3);
        cr_assert_eq(s.connects, 3);
        cr_assert_eq(s.procs, 1);
        cr_assert_eq(tu_held(h), 3);
        for (int i = 0; i < 3; i++)
                cr_assert_eq(ds_release(h, &l[i]), 0);
        s = tu_scraper(h, "alpha");
        cr_assert_eq(s.held, 0);
        cr_assert_eq(s.releases, 3);
        tu_assert_consistent(h);
        ds_detach(h);
}

Test(pool, releasing_twice_is_refused)
{
        tu_create(seg, 20, 10, 15);
        ds_handle *h = tu_attach(seg, "alpha");
        struct ds_lease_ref l;
        cr_assert_eq(ds_acquire(h, 0, &l, NULL, 0), 0);
        cr_assert_eq(ds_release(h, &l), 0);
        cr_assert_eq(ds_release(h, &l), -ENOENT);
        struct ds_lease_ref bogus = {.idx = 999999, .id = 5};
        cr_assert_eq(ds_release(h, &bogus), -EINVAL);
        tu_assert_consistent(h);
        ds_detach(h);
}

Test(pool, lone_scraper_gets_max_limit_and_no_more)
{
        tu_create(seg, 20, 10, 15);
        ds_handle *h = tu_attach(seg, "alpha");
        struct ds_lease_ref l;
        for (int i = 0; i < 15; i++)
                cr_assert_eq(ds_acquire(h, 0, &l, NULL, 0), 0, "slot %d", i);
        char why[256] = "";
        uint64_t t0 = ds_now_ns();
        cr_assert_eq(ds_acquire(h, 200, &l, why, sizeof(why)), -ETIMEDOUT);
        uint64_t waited = ds_now_ns() - t0;
        cr_assert_geq(waited, 190000000ull, "gave up after %llu ns", (unsigned long long)waited);
        cr_assert(strstr(why, "no connection slot for scraper \"alpha\" within 0.2 s"), "%s", why);
        cr_assert(strstr(why, "pool 15/20 in use, limit 15"), "%s", why);
        struct ds_scraper_stats s = tu_scraper(h, "alpha");
        cr_assert_eq(s.timeouts, 1);
        cr_assert_eq(s.waiting, 0);
        tu_assert_consistent(h);
        ds_detach(h);
}

Test(pool, second_active_scraper_brings_limits_to_soft_limit)
{
        tu_create(seg, 20, 10, 15);
        ds_handle *h = tu_attach(seg, "alpha");
        struct ds_lease_ref l[15];
        for (int i = 0; i < 15; i++)
                cr_assert_eq(ds_acquire(h, 0, &l[i], NULL, 0), 0);
        int p[2];
        cr_assert_eq(pipe(p), 0);
        /* beta can only get the 5 free slots: the pool of 20 is the cap */
        pid_t b = spawn_holder("beta", 10, 300, 2000, p[1]);
        cr_assert_eq(read_int(p[0]), 5);
        struct ds_scraper_stats sa = tu_scraper(h, "alpha"), sb = tu_scraper(h, "beta");
        cr_assert_eq(sa.limit, 10);
        cr_assert_eq(sb.limit, 10);
        cr_assert_eq(sb.held, 5);
        cr_assert_eq(tu_held(h), 20);
        reap(b);
        for (int i = 0; i < 15; i++)
                ds_release(h, &l[i]);
        tu_assert_consistent(h);
        ds_detach(h);
}

Test(pool, waiter_is_handed_the_released_slot)
{
        tu_create(seg, 1, 1, 1);
        ds_handle *h = tu_attach(seg, "alpha");
        struct ds_lease_ref l;
        cr_assert_eq(ds_acquire(h, 0, &l, NULL, 0), 0);
        int p[2];
        cr_assert_eq(pipe(p), 0);
        pid_t c = spawn_holder("alpha", 1, 10000, 0, p[1]);
        tu_wait_for_waiters(h, "alpha", 1);
        uint64_t queued = ds_now_ns(); /* the child waits since before this */
        tu_sleep_ms(100);
        uint64_t t0 = ds_now_ns();
        cr_assert_eq(ds_release(h, &l), 0);
        cr_assert_eq(read_int(p[0]), 1);
        uint64_t dt = ds_now_ns() - t0;
        cr_assert_lt(dt, 1000000000ull, "hand-off took %llu ns", (unsigned long long)dt);
        reap(c);
        struct ds_scraper_stats s = tu_scraper(h, "alpha");
        cr_assert_eq(s.waits, 1);
        /* it waited from before queued until after t0 */
        cr_assert_geq(s.wait_ns_max, t0 - queued, "waited %llu ns, at least %llu seen",
                      (unsigned long long)s.wait_ns_max, (unsigned long long)(t0 - queued));
        ds_detach(h);
}

Test(pool, waiters_of_one_scraper_are_served_first_come_first_served)
{
        tu_create(seg, 1, 1, 1);
        ds_handle *h = tu_attach(seg, "alpha");
        struct ds_lease_ref l;
        cr_assert_eq(ds_acquire(h, 0, &l, NULL, 0), 0);
        int p[2];
        cr_assert_eq(pipe(p), 0);
        pid_t kids[5];
        for (int i = 0; i < 5; i++) {
                kids[i] = fork();
                cr_assert_neq(kids[i], -1);
                if (kids[i] == 0) {
                        ds_handle *k = NULL;
                        struct ds_lease_ref kl;
                        if (ds_attach(seg, 0, &k, NULL, 0) || ds_set_scraper(k, "alpha") ||
                            ds_acquire(k, 20000, &kl, NULL, 0))
                                _exit(1);
                        if (write(p[1], &i, sizeof(i)) != sizeof(i))
                                _exit(2);
                        tu_sleep_ms(20);
                        ds_release(k, &kl);
                        ds_detach(k);
                        _exit(0);
                }
                /* wait until this child is queued before starting the next */
                tu_wait_for_waiters(h, "alpha", (uint32_t)i + 1);
        }
        cr_assert_eq(ds_release(h, &l), 0);
        for (int i = 0; i < 5; i++)
                cr_assert_eq(read_int(p[0]), i, "grant order");
        for (int i = 0; i < 5; i++)
                reap(kids[i]);
        ds_detach(h);
}

Test(pool, freed_slot_goes_to_the_scraper_with_the_smallest_share)
{
        tu_create(seg, 3, 3, 3);
        ds_handle *h = tu_attach(seg, "alpha");
        struct ds_lease_ref l[3];
        for (int i = 0; i < 3; i++)
                cr_assert_eq(ds_acquire(h, 0, &l[i], NULL, 0), 0);
        int p[2];
        cr_assert_eq(pipe(p), 0);
        /* alpha queues first, beta (holding nothing) queues second */
        pid_t a = fork();
        if (a == 0) {
                ds_handle *k = NULL;
                struct ds_lease_ref kl;
                int tag = 'a';
                if (ds_attach(seg, 0, &k, NULL, 0) || ds_set_scraper(k, "alpha") ||
                    ds_acquire(k, 20000, &kl, NULL, 0) || write(p[1], &tag, sizeof(tag)) < 0)
                        _exit(1);
                tu_sleep_ms(500);
                _exit(0);
        }
        tu_wait_for_waiters(h, "alpha", 1);
        pid_t b = fork();
        if (b == 0) {
                ds_handle *k = NULL;
                struct ds_lease_ref kl;
                int tag = 'b';
                if (ds_attach(seg, 0, &k, NULL, 0) || ds_set_scraper(k, "beta") ||
                    ds_acquire(k, 20000, &kl, NULL, 0) || write(p[1], &tag, sizeof(tag)) < 0)
                        _exit(1);
                tu_sleep_ms(500);
                _exit(0);
        }
        tu_wait_for_waiters(h, "beta", 1);
        cr_assert_eq(ds_release(h, &l[0]), 0);
        cr_assert_eq(read_int(p[0]), 'b', "beta (0 of 3) goes before alpha (2 of 3)");
        cr_assert_eq(ds_release(h, &l[1]), 0);
        cr_assert_eq(read_int(p[0]), 'a');
        reap(a);
        reap(b);
        ds_detach(h);
}

Test(pool, killed_holder_slots_return_to_pool)
{
        tu_create(seg, 20, 10, 15);
        ds_handle *h = tu_attach(seg, "watcher");
        int p[2];
        cr_assert_eq(pipe(p), 0);
        pid_t c = spawn_holder("victim", 3, 0, 60000, p[1]);
        cr_assert_eq(read_int(p[0]), 3);
        cr_assert_eq(tu_scraper(h, "victim").held, 3);
        kill(c, SIGKILL);
        reap(c);
        cr_assert_eq(ds_reclaim(h), 1);
        struct ds_scraper_stats s = tu_scraper(h, "victim");
        cr_assert_eq(s.held, 0);
        cr_assert_eq(s.reclaimed, 3);
        cr_assert_eq(s.procs, 0);
        cr_assert_eq(tu_held(h), 0);
        tu_assert_consistent(h);
        ds_detach(h);
}

Test(pool, waiter_proceeds_when_the_holder_is_killed)
{
        tu_create(seg, 1, 1, 1);
        ds_handle *h = tu_attach(seg, "watcher");
        int p[2], q[2];
        cr_assert_eq(pipe(p), 0);
        cr_assert_eq(pipe(q), 0);
        pid_t holder = spawn_holder("alpha", 1, 0, 60000, p[1]);
        cr_assert_eq(read_int(p[0]), 1);
        pid_t waiter = spawn_holder("beta", 1, 20000, 0, q[1]);
        tu_wait_for_waiters(h, "beta", 1);
        uint64_t t0 = ds_now_ns();
        kill(holder, SIGKILL);
        reap(holder);
        cr_assert_eq(read_int(q[0]), 1, "the waiter got the dead holder's slot");
        uint64_t dt = ds_now_ns() - t0;
        cr_assert_lt(dt, 1000000000ull, "reclaim took %llu ns", (unsigned long long)dt);
        reap(waiter);
        ds_detach(h);
}

Test(pool, forked_child_cannot_release_its_parents_lease)
{
        tu_create(seg, 20, 10, 15);
        ds_handle *h = tu_attach(seg, "alpha");
        struct ds_lease_ref l;
        cr_assert_eq(ds_acquire(h, 0, &l, NULL, 0), 0);
        pid_t c = fork();
        if (c == 0) {
                int rc = ds_release(h, &l);
                _exit(rc == -EPERM ? 0 : 1);
        }
        int st;
        cr_assert_eq(waitpid(c, &st, 0), c);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child's release was not refused");
        cr_assert_eq(tu_scraper(h, "alpha").held, 1);
        cr_assert_eq(ds_release(h, &l), 0);
        ds_detach(h);
}

Test(pool, forked_child_registers_as_a_process_of_its_own)
{
        tu_create(seg, 20, 10, 15);
        ds_handle *h = tu_attach(seg, "alpha");
        struct ds_lease_ref l;
        cr_assert_eq(ds_acquire(h, 0, &l, NULL, 0), 0);
        int p[2];
        cr_assert_eq(pipe(p), 0);
        pid_t c = fork();
        if (c == 0) {
                struct ds_lease_ref cl;
                int got = ds_acquire(h, 0, &cl, NULL, 0) == 0;
                if (write(p[1], &got, sizeof(got)) < 0)
                        _exit(1);
                tu_sleep_ms(60000);
                _exit(0);
        }
        cr_assert_eq(read_int(p[0]), 1);
        struct ds_scraper_stats s = tu_scraper(h, "alpha");
        cr_assert_eq(s.procs, 2);
        cr_assert_eq(s.held, 2);
        kill(c, SIGKILL);
        reap(c);
        cr_assert_eq(ds_reclaim(h), 1);
        cr_assert_eq(tu_scraper(h, "alpha").held, 1, "only the child's slot was reclaimed");
        cr_assert_eq(ds_release(h, &l), 0);
        ds_detach(h);
}

Test(pool, exec_gives_the_old_images_leases_back)
{
        tu_create(seg, 20, 10, 15);
        ds_handle *h = tu_attach(seg, "watcher");
        int p[2];
        cr_assert_eq(pipe(p), 0);
        pid_t c = fork();
        if (c == 0) {
                ds_handle *k = NULL;
                struct ds_lease_ref kl;
                int got = 0;
                if (ds_attach(seg, 0, &k, NULL, 0) == 0 && ds_set_scraper(k, "execer") == 0 &&
                    ds_acquire(k, 0, &kl, NULL, 0) == 0)
                        got = 1;
                if (write(p[1], &got, sizeof(got)) < 0)
                        _exit(1);
                execl("/bin/sleep", "sleep", "30", (char *)NULL);
                _exit(127);
        }
        cr_assert_eq(read_int(p[0]), 1);
        /* until it has exec'd: its command is sleep */
        char path[64], comm[32] = "";
        snprintf(path, sizeof(path), "/proc/%d/comm", (int)c);
        for (int t = 0; t < 1000 && strcmp(comm, "sleep\n") != 0; t++) {
                FILE *f = fopen(path, "re");
                if (!f || !fgets(comm, sizeof(comm), f))
                        comm[0] = '\0';
                if (f)
                        fclose(f);
                if (strcmp(comm, "sleep\n") != 0)
                        tu_sleep_ms(10);
        }
        cr_assert_str_eq(comm, "sleep\n", "the child never exec'd sleep");
        cr_assert_eq(kill(c, 0), 0, "the process still lives");
        cr_assert_eq(ds_reclaim(h), 1);
        cr_assert_eq(tu_scraper(h, "execer").held, 0);
        kill(c, SIGKILL);
        reap(c);
        ds_detach(h);
}

Test(pool, shrinking_the_pool_stops_grants_until_usage_is_below_the_cap)
{
        tu_create(seg, 10, 10, 10);
        ds_handle *h = tu_attach(seg, "alpha");
        struct ds_lease_ref l[5], x;
        for (int i = 0; i < 5; i++)
                cr_assert_eq(ds_acquire(h, 0, &l[i], NULL, 0), 0);
        struct ds_config cfg;
        cr_assert_eq(ds_get_config(h, &cfg), 0);
        cfg.pool_size = cfg.soft_limit = cfg.max_limit = 3;
        cfg.limits_set = DS_LIMIT_SET_ALL;
        char err[200];
        cr_assert_eq(ds_set_config(h, &cfg, err, sizeof(err)), 0, "%s", err);
        cr_assert_eq(ds_acquire(h, 50, &x, NULL, 0), -ETIMEDOUT);
        ds_release(h, &l[0]);
        ds_release(h, &l[1]);
        cr_assert_eq(ds_acquire(h, 50, &x, NULL, 0), -ETIMEDOUT, "3 held, cap 3");
        ds_release(h, &l[2]);
        cr_assert_eq(ds_acquire(h, 50, &x, NULL, 0), 0, "2 held, cap 3");
        tu_assert_consistent(h);
        ds_detach(h);
}

Test(pool, growing_the_pool_wakes_a_waiter)
{
        tu_create(seg, 1, 1, 1);
        ds_handle *h = tu_attach(seg, "alpha");
        struct ds_lease_ref l;
        cr_assert_eq(ds_acquire(h, 0, &l, NULL, 0), 0);
        int p[2];
        cr_assert_eq(pipe(p), 0);
        pid_t c = spawn_holder("alpha", 1, 20000, 0, p[1]);
        tu_wait_for_waiters(h, "alpha", 1);
        struct ds_config cfg;
        cr_assert_eq(ds_get_config(h, &cfg), 0);
        cfg.pool_size = 2, cfg.soft_limit = 2, cfg.max_limit = 2;
        cfg.limits_set = DS_LIMIT_SET_ALL;
        cr_assert_eq(ds_set_config(h, &cfg, NULL, 0), 0);
        cr_assert_eq(read_int(p[0]), 1);
        reap(c);
        ds_detach(h);
}

Test(pool, invalid_live_configuration_is_refused_and_changes_nothing)
{
        tu_create(seg, 20, 10, 15);
        ds_handle *h = tu_attach(seg, "alpha");
        struct ds_config cfg, after;
        cr_assert_eq(ds_get_config(h, &cfg), 0);
        struct ds_config bad = cfg;
        bad.soft_limit = 16;
        char err[200] = "";
        cr_assert_eq(ds_set_config(h, &bad, err, sizeof(err)), -EINVAL);
        cr_assert(strstr(err, "soft_limit 16 is above max_limit 15"), "%s", err);
        bad = cfg;
        bad.pool_size = 100000;
        cr_assert_eq(ds_set_config(h, &bad, err, sizeof(err)), -EINVAL);
        cr_assert(strstr(err, "capacity"), "%s", err);
        cr_assert_eq(ds_get_config(h, &after), 0);
        cr_assert_eq(memcmp(&cfg, &after, sizeof(cfg)), 0);
        ds_detach(h);
}

Test(pool, an_idle_scraper_gives_its_share_back_to_the_active_one)
{
        tu_create(seg, 20, 10, 15);
        ds_handle *h = tu_attach(seg, "alpha");
        struct ds_config cfg;
        cr_assert_eq(ds_get_config(h, &cfg), 0);
        cfg.idle_timeout_ms = 300;
        cr_assert_eq(ds_set_config(h, &cfg, NULL, 0), 0);
        struct ds_lease_ref l;
        cr_assert_eq(ds_acquire(h, 0, &l, NULL, 0), 0);
        int p[2];
        cr_assert_eq(pipe(p), 0);
        pid_t b = spawn_holder("beta", 1, 0, 60000, p[1]);
        cr_assert_eq(read_int(p[0]), 1);
        cr_assert_eq(tu_scraper(h, "alpha").limit, 10);
        /* alpha: a call in flight keeps it active however slowly this runs;
         * beta makes no call: idle once idle_timeout has passed */
        ds_inflight_add(h, 1);
        for (int t = 0; t < 1000 && tu_scraper(h, "beta").active; t++)
                tu_sleep_ms(10);
        struct ds_scraper_stats a = tu_scraper(h, "alpha"), bs = tu_scraper(h, "beta");
        cr_assert_eq(bs.active, 0, "beta made no call for 10 s and is still active");
        cr_assert_eq(a.active, 1);
        cr_assert_eq(a.limit, 15);
        ds_inflight_add(h, -1);
        kill(b, SIGKILL);
        reap(b);
        ds_detach(h);
}

Test(pool, detach_gives_every_slot_back)
{
        tu_create(seg, 20, 10, 15);
        ds_handle *w = tu_attach(seg, "watcher");
        ds_handle *h = tu_attach(seg, "alpha");
        struct ds_lease_ref l;
        for (int i = 0; i < 4; i++)
                cr_assert_eq(ds_acquire(h, 0, &l, NULL, 0), 0);
        ds_detach(h);
        cr_assert_eq(tu_held(w), 0);
        cr_assert_eq(tu_scraper(w, "alpha").procs, 0);
        ds_detach(w);
}

Test(pool, destroyed_segment_is_noticed_by_attached_processes)
{
        tu_create(seg, 20, 10, 15);
        ds_handle *h = tu_attach(seg, "alpha");
        struct ds_lease_ref l;
        cr_assert_eq(ds_acquire(h, 0, &l, NULL, 0), 0);
        cr_assert_eq(ds_segment_destroy(seg, NULL, 0), 0);
        cr_assert_eq(ds_acquire(h, 0, &l, NULL, 0), -ESTALE);
        ds_detach(h);
}

Test(pool, concurrent_updates_of_different_keys_are_not_lost)
{
        tu_create(seg, 20, 10, 15);
        ds_handle *h = tu_attach(seg, NULL);
        pid_t c = fork();
        if (c == 0) {
                ds_handle *k = NULL;
                if (ds_attach(seg, 0, &k, NULL, 0))
                        _exit(1);
                for (int i = 0; i < 300; i++) {
                        const char *kv[] = {i % 2 ? "warn_usage=70" : "warn_usage=71"};
                        if (ds_update_config(k, kv, 1, NULL, NULL, 0))
                                _exit(2);
                }
                const char *last[] = {"warn_usage=55"};
                _exit(ds_update_config(k, last, 1, NULL, NULL, 0) ? 3 : 0);
        }
        for (int i = 0; i < 300; i++) {
                const char *kv[] = {i % 2 ? "idle_timeout=7" : "idle_timeout=8"};
                cr_assert_eq(ds_update_config(h, kv, 1, NULL, NULL, 0), 0);
        }
        const char *last[] = {"idle_timeout=9"};
        cr_assert_eq(ds_update_config(h, last, 1, NULL, NULL, 0), 0);
        int st;
        cr_assert_eq(waitpid(c, &st, 0), c);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        struct ds_config cfg;
        cr_assert_eq(ds_get_config(h, &cfg), 0);
        cr_assert_eq(cfg.warn_usage_pct, 55);
        cr_assert_eq(cfg.idle_timeout_ms, 9000);
        const char *bad[] = {"pool_size=30", "soft_limit=40"};
        char err[200] = "";
        cr_assert_eq(ds_update_config(h, bad, 2, NULL, err, sizeof(err)), -EINVAL);
        cr_assert(strstr(err, "soft_limit 40 is above max_limit 22"), "%s", err);
        cr_assert_eq(ds_get_config(h, &cfg), 0);
        cr_assert_eq(cfg.pool_size, 20, "a refused update changes nothing");
        ds_detach(h);
}

Test(pool, idle_scraper_is_advised_to_give_everything_back)
{
        tu_create(seg, 20, 10, 15);
        ds_handle *h = tu_attach(seg, "alpha");
        const char *kv[] = {"idle_timeout=0.3"};
        cr_assert_eq(ds_update_config(h, kv, 1, NULL, NULL, 0), 0);
        struct ds_lease_ref l[3];
        for (int i = 0; i < 3; i++)
                cr_assert_eq(ds_acquire(h, 0, &l[i], NULL, 0), 0);
        struct ds_advice a;
        cr_assert_eq(ds_advise(h, &a), 0);
        cr_assert_eq(a.give_back, 0, "just active");
        cr_assert_eq(a.active, 1);
        ds_inflight_add(h, 1); /* a long call in flight keeps it active */
        tu_sleep_ms(400);
        cr_assert_eq(ds_advise(h, &a), 0);
        cr_assert_eq(a.give_back, 0, "a call is in flight");
        ds_inflight_add(h, -1);
        ds_inflight_add(h, -1); /* an unmatched end does not underflow */
        cr_assert_eq(ds_advise(h, &a), 0);
        cr_assert_eq(a.give_back, 3);
        cr_assert_eq(a.reason, DS_RELEASE_IDLE);
        for (int i = 0; i < 3; i++)
                cr_assert_eq(ds_release_for(h, &l[i], DS_RELEASE_IDLE), 0);
        struct ds_scraper_stats s = tu_scraper(h, "alpha");
        cr_assert_eq(s.idle_releases, 3);
        cr_assert_eq(s.releases, 0);
        cr_assert_eq(s.active, 0, "an idle release is not activity");
        ds_note_reconnect(h);
        cr_assert_eq(tu_scraper(h, "alpha").reconnects, 1);
        ds_detach(h);
}

struct advice_box {
        ds_handle *h;
        int fd;
};

/* The advice handler of the test's holder: give back the surplus. */
static void give_back_surplus(void *arg)
{
        struct advice_box *b = arg;
        struct ds_advice a;
        if (ds_advise(b->h, &a) || a.reason != DS_RELEASE_SURPLUS || !a.give_back)
                return;
        /* the test releases the promised slot by hand */
        uint64_t now = ds_now_ns();
        if (write(b->fd, &now, sizeof(now)) != sizeof(now))
                b->fd = -1;
}

Test(pool, scraper_above_its_limit_is_asked_promptly_to_give_back_surplus)
{
        tu_create(seg, 20, 10, 15);
        ds_handle *h = tu_attach(seg, "alpha");
        struct ds_lease_ref l[15];
        for (int i = 0; i < 15; i++)
                cr_assert_eq(ds_acquire(h, 0, &l[i], NULL, 0), 0);
        int p[2], q[2];
        cr_assert_eq(pipe(p), 0);
        cr_assert_eq(pipe(q), 0);
        struct advice_box box = {h, q[1]};
        ds_set_advice_handler(h, give_back_surplus, &box, 60000); /* period: a minute */
        /* beta takes the 5 free slots and queues for a 6th: the pool is full */
        uint64_t t0 = ds_now_ns();
        pid_t b = spawn_holder("beta", 6, 20000, 0, p[1]);
        uint64_t asked;
        cr_assert_eq(read(q[0], &asked, sizeof(asked)), (ssize_t)sizeof(asked));
        cr_assert_lt(asked - t0, 2000000000ull, "asked after %llu ns, not on the starved connect",
                     (unsigned long long)(asked - t0));
        struct ds_scraper_stats sb = tu_scraper(h, "beta");
        cr_assert_eq(sb.held, 5);
        cr_assert_eq(sb.waiting, 1);
        ds_set_advice_handler(h, NULL, NULL, 0);
        struct ds_advice a;
        cr_assert_eq(ds_advise(h, &a), 0);
        cr_assert_eq(a.give_back, 0, "the handler's promise covers the one starved connect");
        cr_assert_eq(a.limit, 10);
        ds_advice_unused(h, 1); /* take the promise back: it is offered again */
        cr_assert_eq(ds_advise(h, &a), 0);
        cr_assert_eq(a.reason, DS_RELEASE_SURPLUS);
        cr_assert_eq(a.give_back, 1, "one starved connect, not the whole surplus of 5");
        cr_assert_eq(ds_release_for(h, &l[0], DS_RELEASE_SURPLUS), 0);
        cr_assert_eq(read_int(p[0]), 6, "beta got the surplus slot");
        reap(b);
        cr_assert_eq(tu_scraper(h, "alpha").surplus_releases, 1);
        ds_detach(h);
}

Test(pool, idle_release_off_never_advises_a_release)
{
        tu_create(seg, 20, 10, 15);
        ds_handle *h = tu_attach(seg, "alpha");
        const char *kv[] = {"idle_timeout=0.1", "idle_release=off"};
        cr_assert_eq(ds_update_config(h, kv, 2, NULL, NULL, 0), 0);
        struct ds_lease_ref l;
        cr_assert_eq(ds_acquire(h, 0, &l, NULL, 0), 0);
        tu_sleep_ms(200);
        struct ds_advice a;
        cr_assert_eq(ds_advise(h, &a), 0);
        cr_assert_eq(a.active, 0);
        cr_assert_eq(a.give_back, 0);
        ds_detach(h);
}

/* Cluster mode (docs/cluster.md): the pool grants only while its agent
 * lives; a waiter is then served at once when a new agent takes over. */
Test(pool, cluster_gate_stops_grants_when_the_agent_dies_and_reopens_with_a_new_one)
{
        tu_create(seg, 10, 10, 10);
        ds_handle *h = tu_attach(seg, "client");
        cr_assert_eq(ds_cluster_agent(h), 0, "no gate before an agent takes it");
        int fds[2];
        cr_assert_eq(pipe(fds), 0);
        pid_t agent = fork();
        cr_assert_neq(agent, -1);
        if (agent == 0) {
                ds_handle *ah = NULL;
                char ok = 1;
                if (ds_attach(seg, 0, &ah, NULL, 0) || ds_set_scraper(ah, "agent") ||
                    ds_cluster_gate(ah, 1, NULL))
                        ok = 0;
                if (write(fds[1], &ok, 1) != 1)
                        _exit(91);
                pause();
                _exit(0);
        }
        char ok = 0;
        cr_assert_eq(read(fds[0], &ok, 1), 1);
        cr_assert_eq(ok, 1, "the agent could not take the gate");
        cr_assert_eq(ds_cluster_agent(h), 1);
        struct ds_lease_ref l[3];
        cr_assert_eq(ds_acquire(h, 0, &l[0], NULL, 0), 0, "granted while the agent lives");
        kill(agent, SIGKILL);
        reap(agent);
        cr_assert_eq(ds_cluster_agent(h), 2);
        char why[300] = "";
        cr_assert_eq(ds_acquire(h, 100, &l[1], why, sizeof(why)), -ETIMEDOUT,
                     "a pool whose agent is gone grants nothing new");
        cr_assert(strstr(why, "cluster agent is gone"), "%s", why);
        /* a held slot is not revoked; a configuration change keeps the gate */
        cr_assert_eq(tu_held(h), 1);
        const char *pairs[] = {"pool_size=8", "soft_limit=8", "max_limit=8"};
        cr_assert_eq(ds_update_config(h, pairs, 3, NULL, NULL, 0), 0);
        cr_assert_eq(ds_cluster_agent(h), 2);
        cr_assert_eq(ds_acquire(h, 50, &l[1], NULL, 0), -ETIMEDOUT);
        /* a connect of another process waits; a new agent takes the gate
         * and its own slot goes first, before that waiter */
        int kfd[2];
        cr_assert_eq(pipe(kfd), 0);
        pid_t waiter = spawn_holder("waiter", 1, 5000, 0, kfd[1]);
        tu_wait_for_waiters(h, "waiter", 1);
        const char *one[] = {"pool_size=2", "soft_limit=2", "max_limit=2"};
        cr_assert_eq(ds_update_config(h, one, 3, NULL, NULL, 0), 0);
        cr_assert_eq(tu_waiting(h, "waiter"), 1, "no grant with the agent gone");
        ds_handle *agent2 = tu_attach(seg, "agent");
        struct ds_lease_ref own;
        cr_assert_eq(ds_cluster_gate(agent2, 1, &own), 0, "the agent's slot goes first");
        cr_assert_eq(ds_cluster_agent(h), 1);
        cr_assert_eq(tu_waiting(h, "waiter"), 1);
        cr_assert_eq(ds_release(h, &l[0]), 0);
        cr_assert_eq(read_int(kfd[0]), 1, "the waiter is served once a slot is free");
        reap(waiter);
        close(kfd[0]);
        close(kfd[1]);
        cr_assert_eq(ds_cluster_gate(agent2, 0, NULL), 0);
        ds_detach(agent2);
        cr_assert_eq(ds_acquire(h, 0, &l[1], NULL, 0), 0);
        cr_assert_eq(ds_cluster_gate(h, 0, NULL), 0);
        cr_assert_eq(ds_cluster_agent(h), 0);
        cr_assert_eq(ds_acquire(h, 0, &l[2], NULL, 0), 0);
        tu_assert_consistent(h);
        close(fds[0]);
        close(fds[1]);
        ds_detach(h);
}
