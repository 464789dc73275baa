/* test_async_wait.c - the pool's wait that does not block the caller
 * (ds_acquire_start / _wait / _poke / _end): queued and served exactly like
 * a blocking ds_acquire, withdrawn without leaking, freed with a dead
 * process. */
#include "testutil.h"

#include <pthread.h>
#include <stdlib.h>
#include <sys/wait.h>

static const char *seg;

static void setup(void)
{
        seg = tu_segname("await");
}

static void teardown(void)
{
        ds_segment_destroy(seg, NULL, 0);
}

TestSuite(async_wait, .init = setup, .fini = teardown, .timeout = 60);

/* Waits on w (as the shim's waiter thread does) until it is not in
 * progress; returns the last result. */
static int wait_out(ds_handle *h, struct ds_wait *w, unsigned max_ms)
{
        int rc = -EINPROGRESS;
        for (unsigned t = 0; rc == -EINPROGRESS && t < max_ms; t += 50)
                rc = ds_acquire_wait(h, w, 50);
        return rc;
}

Test(async_wait, a_free_slot_is_taken_at_once)
{
        tu_create(seg, 2, 2, 2);
        ds_handle *h = tu_attach(seg, "a");
        struct ds_wait w;
        struct ds_lease_ref l;
        cr_assert_eq(ds_acquire_start(h, 1000, &w, &l), 0);
        cr_assert_eq(tu_held(h), 1);
        cr_assert_eq(tu_scraper(h, "a").connects, 1);
        cr_assert_eq(ds_release(h, &l), 0);
        tu_assert_consistent(h);
        ds_detach(h);
}

Test(async_wait, queued_as_waiting_and_granted_by_a_release)
{
        tu_create(seg, 1, 1, 1);
        ds_handle *h = tu_attach(seg, "a");
        struct ds_lease_ref held, got;
        cr_assert_eq(ds_acquire(h, 0, &held, NULL, 0), 0);
        struct ds_wait w;
        cr_assert_eq(ds_acquire_start(h, 10000, &w, &got), -EINPROGRESS);
        cr_assert_eq(tu_waiting(h, "a"), 1, "the wait is counted like a blocking one");
        cr_assert_eq(ds_acquire_wait(h, &w, 20), -EINPROGRESS);
        cr_assert_eq(ds_acquire_end(h, &w, 0, &got, NULL, 0), -EINPROGRESS,
                     "ending before the grant or the deadline changes nothing");
        cr_assert_eq(tu_waiting(h, "a"), 1);
        cr_assert_eq(ds_release(h, &held), 0); /* handed to the waiter */
        cr_assert_eq(wait_out(h, &w, 2000), 0);
        cr_assert_eq(ds_acquire_end(h, &w, 0, &got, NULL, 0), 0);
        struct ds_scraper_stats s = tu_scraper(h, "a");
        cr_assert_eq(s.held, 1);
        cr_assert_eq(s.waiting, 0);
        cr_assert_eq(s.waits, 1);
        cr_assert_eq(s.connects, 2);
        cr_assert_eq(ds_release(h, &got), 0);
        cr_assert_eq(tu_held(h), 0);
        tu_assert_consistent(h);
        ds_detach(h);
}

/* A blocking connect that queued first is served first. */
Test(async_wait, served_in_order_with_blocking_waiters)
{
        tu_create(seg, 1, 1, 1);
        ds_handle *h = tu_attach(seg, "a");
        struct ds_lease_ref held, got;
        cr_assert_eq(ds_acquire(h, 0, &held, NULL, 0), 0);
        int p[2];
        cr_assert_eq(pipe(p), 0);
        pid_t kid = fork();
        cr_assert_neq(kid, -1);
        if (kid == 0) {
                ds_handle *k = NULL;
                struct ds_lease_ref l;
                if (ds_attach(seg, 0, &k, NULL, 0) || ds_set_scraper(k, "a") ||
                    ds_acquire(k, 10000, &l, NULL, 0))
                        _exit(90);
                char c = 1;
                if (write(p[1], &c, 1) != 1)
                        _exit(91);
                tu_sleep_ms(300);
                ds_detach(k);
                _exit(0);
        }
        tu_wait_for_waiters(h, "a", 1);
        struct ds_wait w;
        cr_assert_eq(ds_acquire_start(h, 10000, &w, &got), -EINPROGRESS);
        cr_assert_eq(ds_release(h, &held), 0);
        char c;
        cr_assert_eq(read(p[0], &c, 1), 1, "the blocking waiter was served first");
        cr_assert_eq(ds_acquire_wait(h, &w, 50), -EINPROGRESS,
                     "the later, non-blocking wait is still queued while the child holds");
        cr_assert_eq(wait_out(h, &w, 5000), 0, "granted once the child let go");
        cr_assert_eq(ds_acquire_end(h, &w, 0, &got, NULL, 0), 0);
        int st;
        cr_assert_eq(waitpid(kid, &st, 0), kid);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        cr_assert_eq(ds_release(h, &got), 0);
        tu_assert_consistent(h);
        ds_detach(h);
}

Test(async_wait, cancel_withdraws_the_wait)
{
        tu_create(seg, 1, 1, 1);
        ds_handle *h = tu_attach(seg, "a");
        struct ds_lease_ref held, got;
        cr_assert_eq(ds_acquire(h, 0, &held, NULL, 0), 0);
        struct ds_wait w;
        cr_assert_eq(ds_acquire_start(h, 10000, &w, &got), -EINPROGRESS);
        cr_assert_eq(ds_acquire_end(h, &w, 1, &got, NULL, 0), -ECANCELED);
        struct ds_scraper_stats s = tu_scraper(h, "a");
        cr_assert_eq(s.waiting, 0);
        cr_assert_eq(s.timeouts, 0, "a withdrawn wait is not a timeout");
        tu_assert_consistent(h);
        cr_assert_eq(ds_release(h, &held), 0);
        cr_assert_eq(tu_held(h), 0);
        ds_detach(h);
}

/* Withdrawn after the grant: the slot goes on (here: back to the pool). */
Test(async_wait, cancel_after_the_grant_gives_the_slot_back)
{
        tu_create(seg, 1, 1, 1);
        ds_handle *h = tu_attach(seg, "a");
        struct ds_lease_ref held, got;
        cr_assert_eq(ds_acquire(h, 0, &held, NULL, 0), 0);
        struct ds_wait w;
        cr_assert_eq(ds_acquire_start(h, 10000, &w, &got), -EINPROGRESS);
        cr_assert_eq(ds_release(h, &held), 0);
        cr_assert_eq(wait_out(h, &w, 2000), 0);
        cr_assert_eq(tu_held(h), 1);
        cr_assert_eq(ds_acquire_end(h, &w, 1, &got, NULL, 0), -ECANCELED);
        cr_assert_eq(tu_held(h), 0);
        tu_assert_consistent(h);
        ds_detach(h);
}

Test(async_wait, deadline_ends_in_a_timeout_with_the_reason)
{
        tu_create(seg, 1, 1, 1);
        ds_handle *h = tu_attach(seg, "a");
        struct ds_lease_ref held, got;
        cr_assert_eq(ds_acquire(h, 0, &held, NULL, 0), 0);
        struct ds_wait w;
        cr_assert_eq(ds_acquire_start(h, 200, &w, &got), -EINPROGRESS);
        cr_assert_eq(wait_out(h, &w, 3000), -ETIMEDOUT);
        char why[300] = "";
        cr_assert_eq(ds_acquire_end(h, &w, 0, &got, why, sizeof(why)), -ETIMEDOUT);
        cr_assert(strstr(why, "no connection slot for scraper \"a\" within 0.2 s"), "%s", why);
        struct ds_scraper_stats s = tu_scraper(h, "a");
        cr_assert_eq(s.timeouts, 1);
        cr_assert_eq(s.waiting, 0);
        cr_assert_eq(s.held, 1);
        tu_assert_consistent(h);
        cr_assert_eq(ds_release(h, &held), 0);
        ds_detach(h);
}

/* A process that dies while its wait is queued leaves nothing behind. */
Test(async_wait, a_dead_process_wait_is_freed)
{
        tu_create(seg, 1, 1, 1);
        ds_handle *h = tu_attach(seg, "a");
        struct ds_lease_ref held;
        cr_assert_eq(ds_acquire(h, 0, &held, NULL, 0), 0);
        int up[2], down[2];
        cr_assert_eq(pipe(up), 0);
        cr_assert_eq(pipe(down), 0);
        pid_t kid = fork();
        cr_assert_neq(kid, -1);
        if (kid == 0) {
                ds_handle *k = NULL;
                struct ds_wait w;
                struct ds_lease_ref l;
                char c = 1;
                close(down[1]);
                if (ds_attach(seg, 0, &k, NULL, 0) || ds_set_scraper(k, "b") ||
                    ds_acquire_start(k, 10000, &w, &l) != -EINPROGRESS ||
                    write(up[1], &c, 1) != 1 || read(down[0], &c, 1) < 0)
                        _exit(90);
                _exit(0); /* dies waiting */
        }
        char c;
        cr_assert_eq(read(up[0], &c, 1), 1);
        cr_assert_eq(tu_waiting(h, "b"), 1);
        close(down[1]); /* the child exits */
        int st;
        cr_assert_eq(waitpid(kid, &st, 0), kid);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        cr_assert_geq(ds_reclaim(h), 0);
        cr_assert_eq(tu_waiting(h, "b"), 0);
        cr_assert_eq(tu_held(h), 1);
        tu_assert_consistent(h);
        cr_assert_eq(ds_release(h, &held), 0);
        ds_detach(h);
}

struct sleeper {
        ds_handle *h;
        struct ds_wait *w;
        int rc;
};

static void *sleep_on(void *arg)
{
        struct sleeper *s = arg;
        s->rc = ds_acquire_wait(s->h, s->w, 5000);
        return NULL;
}

/* The shim stops its waiter thread this way when a connect is withdrawn. */
Test(async_wait, poke_wakes_a_sleeping_wait)
{
        tu_create(seg, 1, 1, 1);
        ds_handle *h = tu_attach(seg, "a");
        struct ds_lease_ref held, got;
        cr_assert_eq(ds_acquire(h, 0, &held, NULL, 0), 0);
        struct ds_wait w;
        cr_assert_eq(ds_acquire_start(h, 30000, &w, &got), -EINPROGRESS);
        struct sleeper s = {h, &w, 1};
        pthread_t t;
        cr_assert_eq(pthread_create(&t, NULL, sleep_on, &s), 0);
        tu_sleep_ms(100);
        uint64_t t0 = ds_now_ns();
        ds_acquire_poke(h, &w);
        pthread_join(t, NULL);
        cr_assert_eq(s.rc, -EINPROGRESS);
        cr_assert_lt(ds_now_ns() - t0, 1000000000ull, "the poke did not wake the wait");
        cr_assert_eq(ds_acquire_end(h, &w, 1, &got, NULL, 0), -ECANCELED);
        cr_assert_eq(ds_release(h, &held), 0);
        tu_assert_consistent(h);
        ds_detach(h);
}
