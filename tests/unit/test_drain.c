/* test_drain.c - a slot whose process died while its server backend may
 * still run drains: counted against pool_size, owned by nobody, and freed
 * only once the backend is gone. Stand-in backends are child processes
 * named "postgres" (what a server backend is called in /proc). */
#include "testutil.h"

#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>

/* A process of this host named like a server backend, until killed. */
static pid_t fake_backend(void)
{
        pid_t pid = fork();
        cr_assert_neq(pid, -1);
        if (pid == 0) {
                prctl(PR_SET_NAME, "postgres");
                for (;;)
                        pause();
        }
        /* wait until the name is visible */
        for (int i = 0; i < 500 && ds_local_backend_start(pid) == 0; i++)
                tu_sleep_ms(2);
        cr_assert_neq(ds_local_backend_start(pid), 0);
        return pid;
}

static void end_process(pid_t pid)
{
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
}

/* A client that takes one slot, records backend as its backend (if > 0),
 * reports the lease and waits to be killed. */
static pid_t client(const char *seg, int32_t backend, struct ds_lease_ref *ref)
{
        int p[2];
        cr_assert_eq(pipe(p), 0);
        pid_t pid = fork();
        cr_assert_neq(pid, -1);
        if (pid == 0) {
                ds_handle *k = NULL;
                struct ds_lease_ref l;
                if (ds_attach(seg, 0, &k, NULL, 0) || ds_set_scraper(k, "client") ||
                    ds_acquire(k, 5000, &l, NULL, 0))
                        _exit(1);
                if (backend > 0 && ds_lease_set_backend(k, &l, backend))
                        _exit(2);
                if (write(p[1], &l, sizeof(l)) != sizeof(l))
                        _exit(3);
                for (;;)
                        pause();
        }
        close(p[1]);
        cr_assert_eq(read(p[0], ref, sizeof(*ref)), (ssize_t)sizeof(*ref), "client failed");
        close(p[0]);
        return pid;
}

static struct ds_stats stats(ds_handle *h)
{
        struct ds_stats st;
        cr_assert_eq(ds_stats_get(h, &st), 0);
        ds_stats_free(&st);
        return st;
}

/* The pool holds `held` slots, `draining` of them draining, and its
 * counters agree with the lease table. */
static void expect(ds_handle *h, uint32_t held, uint32_t draining)
{
        struct ds_stats st = stats(h);
        cr_assert_eq(st.held, held);
        cr_assert_eq(st.draining, draining);
        tu_assert_consistent(h);
}

/* A fresh pool of `size` slots (every limit the same), attached as "waiter". */
static ds_handle *pool(const char *seg, uint32_t size)
{
        tu_create(seg, size, size, size);
        return tu_attach(seg, "waiter");
}

static void done(ds_handle *h, const char *seg)
{
        ds_detach(h);
        ds_segment_destroy(seg, NULL, 0);
}

static int try_acquire(ds_handle *h, uint32_t ms, struct ds_lease_ref *l)
{
        return ds_acquire(h, ms, l, NULL, 0);
}

Test(drain, parses_proc_stat)
{
        int pg;
        char st;
        uint64_t start;
        const char *line = "4242 (postgres) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 "
                           "0 987654 123456789 1000 18446744073709551615\n";
        cr_assert_eq(ds_parse_proc_stat(line, &pg, &st, &start), 0);
        cr_assert_eq(pg, 1);
        cr_assert_eq(st, 'S');
        cr_assert_eq(start, 987654);
        /* a command name with spaces and a parenthesis ends at the last ')' */
        const char *odd = "7 (post) gres) Z 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 55 0 0\n";
        cr_assert_eq(ds_parse_proc_stat(odd, &pg, &st, &start), 0);
        cr_assert_eq(pg, 0);
        cr_assert_eq(st, 'Z');
        cr_assert_eq(start, 55);
        cr_assert_eq(ds_parse_proc_stat("7 (postgres) S 1 2 3", &pg, &st, &start), -EINVAL);
        cr_assert_eq(ds_parse_proc_stat("garbage", &pg, &st, &start), -EINVAL);
        cr_assert_eq(ds_parse_proc_stat("7 (postgres) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 "
                                        "17 18 x",
                                        &pg, &st, &start),
                     -EINVAL);
        /* this process is no server backend; a fake one is */
        cr_assert_eq(ds_local_backend_start(getpid()), 0);
        cr_assert_eq(ds_local_backend_start(0), 0);
        pid_t b = fake_backend();
        cr_assert_neq(ds_local_backend_start(b), 0);
        end_process(b);
        cr_assert_eq(ds_local_backend_start(b), 0);
}

/* The state machine with a local backend: HELD -> (owner dies) DRAINING ->
 * (backend gone) FREE, and the slot goes to the waiter right then. */
Test(drain, local_backend_holds_the_slot_until_it_is_gone)
{
        const char *seg = tu_segname("drain-local");
        ds_handle *h = pool(seg, 1);
        pid_t b = fake_backend();
        struct ds_lease_ref ref, l;
        pid_t c = client(seg, b, &ref);
        end_process(c);
        cr_assert_eq(ds_reclaim(h), 1);
        expect(h, 1, 1);
        cr_assert_eq(try_acquire(h, 150, &l), -ETIMEDOUT, "granted while the backend runs");
        /* the waiter gets the slot right after the backend is gone */
        int p[2];
        cr_assert_eq(pipe(p), 0);
        pid_t killer = fork();
        if (killer == 0) {
                tu_sleep_ms(200);
                kill(b, SIGKILL);
                uint64_t t = ds_now_ns();
                _exit(write(p[1], &t, sizeof(t)) == sizeof(t) ? 0 : 1);
        }
        cr_assert_eq(try_acquire(h, 5000, &l), 0);
        uint64_t got = ds_now_ns(), killed = 0;
        cr_assert_eq(read(p[0], &killed, sizeof(killed)), (ssize_t)sizeof(killed));
        waitpid(killer, NULL, 0);
        waitpid(b, NULL, 0);
        cr_assert_gt(got, killed);
        cr_assert_lt(got - killed, 500ull * 1000 * 1000, "granted %llu ms after the backend died",
                     (unsigned long long)((got - killed) / 1000000));
        expect(h, 1, 0);
        cr_assert_eq(ds_release(h, &l), 0);
        expect(h, 0, 0);
        done(h, seg);
}

/* No backend recorded (the connect had not finished) or one already gone:
 * the slot is free at once, as before. */
Test(drain, no_live_backend_frees_at_once)
{
        const char *seg = tu_segname("drain-none");
        ds_handle *h = pool(seg, 2);
        struct ds_lease_ref r1, r2;
        pid_t b = fake_backend();
        pid_t c1 = client(seg, 0, &r1);
        pid_t c2 = client(seg, b, &r2);
        end_process(b);
        end_process(c1);
        end_process(c2);
        cr_assert_eq(ds_reclaim(h), 2);
        expect(h, 0, 0);
        done(h, seg);
}

/* A reused PID: the process now behind the recorded PID started at another
 * time, so the recorded backend is gone. */
Test(drain, reused_pid_is_not_the_backend)
{
        const char *seg = tu_segname("drain-reuse");
        ds_handle *h = pool(seg, 1);
        pid_t b = fake_backend();
        struct ds_lease_ref ref, l;
        pid_t c = client(seg, b, &ref);
        struct ds_header *H = ds_handle_header(h);
        struct ds_lease *leases = (struct ds_lease *)((char *)H + ds_layout_leases_off(&H->cap));
        cr_assert_eq(atomic_load(&leases[ref.idx].backend_pid), b);
        atomic_fetch_add(&leases[ref.idx].backend_start, 1);
        end_process(c);
        cr_assert_eq(ds_reclaim(h), 1);
        cr_assert_eq(stats(h).draining, 0);
        cr_assert_eq(try_acquire(h, 100, &l), 0);
        end_process(b);
        done(h, seg);
}

/* A backend not visible here (a remote server) drains until the server
 * says it is gone (ds_drain_gone, from the watchdog). */
Test(drain, remote_backend_waits_for_the_server)
{
        const char *seg = tu_segname("drain-remote");
        ds_handle *h = pool(seg, 1);
        struct ds_lease_ref ref, l;
        /* this test's own PID is no "postgres" process: remote */
        pid_t c = client(seg, getpid(), &ref);
        end_process(c);
        cr_assert_eq(ds_reclaim(h), 1);
        cr_assert_eq(stats(h).draining, 1);
        int32_t pids[4];
        size_t n = 0;
        cr_assert_eq(ds_drain_list(h, pids, 4, &n), 0);
        cr_assert_eq(n, 1);
        cr_assert_eq(pids[0], getpid());
        cr_assert_eq(try_acquire(h, 150, &l), -ETIMEDOUT);
        int32_t other = getpid() + 1;
        cr_assert_eq(ds_drain_gone(h, &other, 1), 0, "another backend's end frees nothing");
        cr_assert_eq(ds_drain_gone(h, pids, 1), 1);
        tu_assert_consistent(h);
        cr_assert_eq(try_acquire(h, 100, &l), 0);
        cr_assert_eq(stats(h).draining, 0);
        done(h, seg);
}

/* The lease table is the truth: a repair after a death inside the lock
 * counts draining slots again from it. */
Test(drain, repair_rebuilds_draining_counts)
{
        const char *seg = tu_segname("drain-repair");
        ds_handle *h = pool(seg, 2);
        pid_t b = fake_backend();
        struct ds_lease_ref ref;
        pid_t c = client(seg, b, &ref);
        end_process(c);
        cr_assert_eq(ds_reclaim(h), 1);
        /* die holding the lock with the caches wrong */
        pid_t k = fork();
        if (k == 0) {
                ds_handle *x = NULL;
                if (ds_attach(seg, 0, &x, NULL, 0) || ds_lock(x))
                        _exit(1);
                ds_handle_header(x)->held = 0;
                ds_handle_header(x)->draining = 7;
                _exit(0);
        }
        int status;
        waitpid(k, &status, 0);
        cr_assert_eq(WEXITSTATUS(status), 0);
        cr_assert_eq(stats(h).repairs, 1);
        expect(h, 1, 1);
        end_process(b);
        cr_assert_eq(ds_reclaim(h), 0);
        expect(h, 0, 0);
        done(h, seg);
}

/* A process that detaches (or exits) while a backend of its own still runs
 * leaves that slot draining too. */
Test(drain, detach_with_a_running_backend_drains)
{
        const char *seg = tu_segname("drain-detach");
        ds_handle *h = pool(seg, 1);
        ds_handle *k = tu_attach(seg, "client");
        pid_t b = fake_backend();
        struct ds_lease_ref l, w;
        cr_assert_eq(try_acquire(k, 100, &l), 0);
        cr_assert_eq(ds_lease_set_backend(k, &l, b), 0);
        struct ds_lease_ref bogus = {l.idx, l.id + 1};
        cr_assert_eq(ds_lease_set_backend(k, &bogus, b), -ENOENT);
        ds_detach(k);
        cr_assert_eq(stats(h).draining, 1);
        cr_assert_eq(try_acquire(h, 100, &w), -ETIMEDOUT);
        end_process(b);
        cr_assert_eq(try_acquire(h, 1000, &w), 0);
        tu_assert_consistent(h);
        done(h, seg);
}

/* A release whose caller could not see the backend end (an idle release
 * that waited in vain) drains while that backend runs; with the backend
 * gone, or none recorded, it frees the slot at once. */
Test(drain, release_of_a_running_backend_drains)
{
        const char *seg = tu_segname("drain-release");
        ds_handle *h = pool(seg, 1);
        pid_t b = fake_backend();
        struct ds_lease_ref l, w;
        cr_assert_eq(try_acquire(h, 100, &l), 0);
        cr_assert_eq(ds_lease_set_backend(h, &l, b), 0);
        cr_assert_eq(ds_release_for(h, &l, DS_RELEASE_IDLE | DS_RELEASE_MAY_RUN), 0);
        expect(h, 1, 1);
        cr_assert_eq(tu_scraper(h, "waiter").idle_releases, 1);
        cr_assert_eq(tu_scraper(h, "waiter").held, 0);
        cr_assert_eq(try_acquire(h, 100, &w), -ETIMEDOUT);
        end_process(b);
        cr_assert_eq(try_acquire(h, 1000, &w), 0);
        expect(h, 1, 0);
        /* nothing recorded: freed at once */
        cr_assert_eq(ds_release_for(h, &w, DS_RELEASE_NORMAL | DS_RELEASE_MAY_RUN), 0);
        expect(h, 0, 0);
        done(h, seg);
}

struct waiter_arg {
        ds_handle *h;
        int rc;
};

static void *wait_for_slot(void *arg)
{
        struct waiter_arg *a = arg;
        struct ds_lease_ref l;
        a->rc = try_acquire(a->h, 5000, &l);
        return NULL;
}

/* A finished connection whose backend is still exiting: its slot drains
 * (counted, no longer its scraper's) until the finisher says the backend is
 * gone, and then goes to the waiting connect at once: the backend here
 * never ends, so nothing but ds_drain_done can have freed it. */
Test(drain, finished_connection_drains_until_done_and_waiter_gets_it)
{
        const char *seg = tu_segname("drain-finish");
        ds_handle *h = pool(seg, 1);
        ds_handle *k = tu_attach(seg, "finisher");
        pid_t b = fake_backend();
        struct ds_lease_ref l, w;
        cr_assert_eq(try_acquire(k, 100, &l), 0);
        cr_assert_eq(ds_lease_set_backend(k, &l, b), 0);
        cr_assert_eq(ds_release_drain(k, &l, DS_RELEASE_NORMAL), 1);
        expect(h, 1, 1);
        cr_assert_eq(tu_scraper(h, "finisher").held, 0);
        cr_assert_eq(tu_scraper(h, "finisher").releases, 1);
        cr_assert_eq(try_acquire(h, 100, &w), -ETIMEDOUT);
        struct waiter_arg a = {h, 1};
        pthread_t t;
        cr_assert_eq(pthread_create(&t, NULL, wait_for_slot, &a), 0);
        for (int i = 0; i < 500 && stats(h).waiting == 0; i++)
                tu_sleep_ms(2);
        cr_assert_eq(stats(h).waiting, 1);
        struct ds_lease_ref other = {l.idx, l.id + 1};
        cr_assert_eq(ds_drain_done(k, &other), -ENOENT, "another grant's end frees nothing");
        cr_assert_eq(ds_drain_done(k, &l), 0);
        pthread_join(t, NULL);
        cr_assert_eq(a.rc, 0, "the waiter got no slot: %d", a.rc);
        expect(h, 1, 0);
        cr_assert_eq(ds_drain_done(k, &l), -ENOENT, "a slot drains once");
        ds_detach(k);
        end_process(b);
        done(h, seg);
}

/* With no backend recorded nothing could prove the backend gone: the slot
 * stays held by its process, which must see the end itself. */
Test(drain, finished_connection_without_backend_keeps_its_slot)
{
        const char *seg = tu_segname("drain-nobackend");
        ds_handle *h = pool(seg, 1);
        struct ds_lease_ref l;
        cr_assert_eq(try_acquire(h, 100, &l), 0);
        cr_assert_eq(ds_release_drain(h, &l, DS_RELEASE_NORMAL), -ENODATA);
        expect(h, 1, 0);
        cr_assert_eq(tu_scraper(h, "waiter").held, 1);
        cr_assert_eq(ds_release(h, &l), 0);
        expect(h, 0, 0);
        done(h, seg);
}

/* A process killed after finishing: its draining slot outlives it until the
 * backend is gone. */
Test(drain, finished_slot_of_a_killed_process_drains_until_backend_gone)
{
        const char *seg = tu_segname("drain-finkill");
        ds_handle *h = pool(seg, 1);
        pid_t b = fake_backend();
        int p[2];
        cr_assert_eq(pipe(p), 0);
        pid_t c = fork();
        cr_assert_neq(c, -1);
        if (c == 0) {
                ds_handle *k = NULL;
                struct ds_lease_ref l;
                if (ds_attach(seg, 0, &k, NULL, 0) || ds_set_scraper(k, "client") ||
                    ds_acquire(k, 5000, &l, NULL, 0) || ds_lease_set_backend(k, &l, b) ||
                    ds_release_drain(k, &l, DS_RELEASE_NORMAL) != 1)
                        _exit(1);
                if (write(p[1], "x", 1) != 1)
                        _exit(2);
                for (;;)
                        pause();
        }
        close(p[1]);
        char x;
        cr_assert_eq(read(p[0], &x, 1), 1, "client failed");
        close(p[0]);
        end_process(c);
        cr_assert_eq(ds_reclaim(h), 1);
        expect(h, 1, 1);
        struct ds_lease_ref w;
        cr_assert_eq(try_acquire(h, 150, &w), -ETIMEDOUT);
        end_process(b);
        cr_assert_eq(try_acquire(h, 1000, &w), 0);
        expect(h, 1, 0);
        done(h, seg);
}
