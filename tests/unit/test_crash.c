/* test_crash.c - a process that dies while it holds the segment's lock
 * does not wedge or corrupt the pool: the next locker repairs it. */
#include "testutil.h"

#include <signal.h>
#include <stdlib.h>

static const char *seg;

static void setup(void)
{
        seg = tu_segname("crash");
}

static void teardown(void)
{
        ds_segment_destroy(seg, NULL, 0);
}

TestSuite(crash, .init = setup, .fini = teardown, .timeout = 120);

/* A child that takes the lock, scribbles half an update over the
 * counters (as if killed between two stores), reports, and waits to die. */
static pid_t spawn_dying_locker(int fd)
{
        pid_t c = fork();
        cr_assert_neq(c, -1);
        if (c)
                return c;
        ds_handle *h = NULL;
        if (ds_attach(seg, 0, &h, NULL, 0) || ds_set_scraper(h, "doomed"))
                _exit(1);
        struct ds_lease_ref l;
        if (ds_acquire(h, 0, &l, NULL, 0))
                _exit(2);
        if (ds_lock(h))
                _exit(3);
        struct ds_header *H = ds_handle_header(h);
        H->held = 999;
        H->waiting = 42;
        int one = 1;
        if (write(fd, &one, sizeof(one)) < 0)
                _exit(4);
        for (;;)
                pause();
}

Test(crash, killed_lock_holder_is_repaired_by_the_next_locker)
{
        tu_create(seg, 20, 10, 15);
        ds_handle *h = tu_attach(seg, "alpha");
        struct ds_lease_ref mine[3];
        for (int i = 0; i < 3; i++)
                cr_assert_eq(ds_acquire(h, 0, &mine[i], NULL, 0), 0);
        int p[2];
        cr_assert_eq(pipe(p), 0);
        pid_t c = spawn_dying_locker(p[1]);
        int one;
        cr_assert_eq(read(p[0], &one, sizeof(one)), (ssize_t)sizeof(one));
        kill(c, SIGKILL);
        waitpid(c, NULL, 0);

        struct ds_header *H = ds_handle_header(h);
        uint64_t repairs = H->repairs;
        /* the next locker finds EOWNERDEAD and rebuilds from the lease table */
        tu_assert_consistent(h);
        cr_assert_eq(H->repairs, repairs + 1);
        cr_assert_eq(H->held, 4, "3 of alpha + 1 of the dead (not yet reclaimed)");
        cr_assert_eq(H->waiting, 0);
        cr_assert_eq(ds_reclaim(h), 1);
        cr_assert_eq(tu_held(h), 3);
        cr_assert_eq(tu_scraper(h, "alpha").held, 3);
        cr_assert_eq(tu_scraper(h, "doomed").held, 0);
        /* and the pool works on */
        struct ds_lease_ref x;
        cr_assert_eq(ds_acquire(h, 0, &x, NULL, 0), 0);
        cr_assert_eq(ds_release(h, &x), 0);
        for (int i = 0; i < 3; i++)
                cr_assert_eq(ds_release(h, &mine[i]), 0);
        cr_assert_eq(tu_held(h), 0);
        tu_assert_consistent(h);
        ds_detach(h);
}

Test(crash, a_waiter_is_not_wedged_by_a_dead_lock_holder)
{
        tu_create(seg, 1, 1, 1);
        ds_handle *h = tu_attach(seg, "alpha");
        int p[2];
        cr_assert_eq(pipe(p), 0);
        pid_t c = spawn_dying_locker(p[1]); /* holds the only slot and the lock */
        int one;
        cr_assert_eq(read(p[0], &one, sizeof(one)), (ssize_t)sizeof(one));
        kill(c, SIGKILL);
        waitpid(c, NULL, 0);
        struct ds_lease_ref l;
        uint64_t t0 = ds_now_ns();
        cr_assert_eq(ds_acquire(h, 5000, &l, NULL, 0), 0);
        cr_assert_lt(ds_now_ns() - t0, 1000000000ull);
        tu_assert_consistent(h);
        ds_detach(h);
}

/* Kills a process at random moments of a tight acquire/release loop, many
 * times: whatever instruction it died at, the pool is exact afterwards. */
Test(crash, kills_at_random_instructions_leave_exact_counters)
{
        tu_create(seg, 20, 10, 15);
        ds_handle *h = tu_attach(seg, "observer");
        struct ds_lease_ref keep;
        cr_assert_eq(ds_acquire(h, 0, &keep, NULL, 0), 0);
        srand((unsigned)getpid());
        for (int iter = 0; iter < 150; iter++) {
                int p[2];
                cr_assert_eq(pipe(p), 0);
                pid_t c = fork();
                if (c == 0) {
                        ds_handle *k = NULL;
                        if (ds_attach(seg, 0, &k, NULL, 0) || ds_set_scraper(k, "churn"))
                                _exit(1);
                        struct ds_lease_ref l[3];
                        int n = 0, one = 1;
                        if (write(p[1], &one, sizeof(one)) < 0)
                                _exit(1);
                        for (unsigned i = 0;; i++) {
                                if (n < 3 && ds_acquire(k, 0, &l[n], NULL, 0) == 0)
                                        n++;
                                if (n && (i & 1)) {
                                        ds_release(k, &l[n - 1]);
                                        n--;
                                }
                                struct ds_stats st; /* takes the lock too */
                                if (ds_stats_get(k, &st) == 0)
                                        ds_stats_free(&st);
                        }
                }
                int one;
                cr_assert_eq(read(p[0], &one, sizeof(one)), (ssize_t)sizeof(one));
                close(p[0]);
                close(p[1]);
                struct timespec ts = {0, (1000 + rand() % 9000) * 1000L};
                nanosleep(&ts, NULL);
                kill(c, SIGKILL);
                waitpid(c, NULL, 0);
                ds_reclaim(h);
                tu_assert_consistent(h);
                cr_assert_eq(tu_held(h), 1, "iteration %d: only the observer's slot is left", iter);
        }
        /* most kills land inside the lock (the loop lives there) */
        uint64_t repairs = ds_handle_header(h)->repairs;
        cr_log_info("repairs after 150 random kills: %llu", (unsigned long long)repairs);
        cr_assert_gt(repairs, 0, "no kill landed while the lock was held");
        ds_release(h, &keep);
        ds_detach(h);
}
