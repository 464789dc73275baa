/* test_conns.c - the shim's per-process connection table (shim/conns.c):
 * lookups without a lock while other threads connect and finish, tables
 * chained as the table fills, and the marks that keep the idle release
 * away from a connection a call is inside, tested with real threads and a
 * real fork. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "shim.h"

static struct ds_conn *record_for(const void *key)
{
        struct ds_conn *c = calloc(1, sizeof(*c));
        cr_assert_not_null(c);
        c->conn = key;
        return c;
}

static double now_s(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* 3000 live keys fill the static table and two chained ones. */
Test(conns, add_find_remove_across_chained_tables)
{
        enum { N = 3000 };
        static char keys[N];
        static struct ds_conn *rec[N];
        for (int i = 0; i < N; i++) {
                rec[i] = record_for(&keys[i]);
                cr_assert_eq(ds_conn_add(rec[i]), 0);
        }
        for (int i = 0; i < N; i++)
                cr_assert_eq(ds_conn_find(&keys[i]), rec[i], "key %d", i);
        cr_assert_null(ds_conn_find(&rec[0])); /* an address never added */
        for (int i = 0; i < N; i += 2)
                cr_assert_eq(ds_conn_remove(&keys[i]), rec[i]);
        for (int i = 0; i < N; i++)
                cr_assert_eq(ds_conn_find(&keys[i]), i % 2 ? rec[i] : NULL, "key %d", i);
        cr_assert_null(ds_conn_remove(&keys[0]), "a key is removed once");
        for (int i = 0; i < N; i += 2)
                cr_assert_eq(ds_conn_add(rec[i]), 0); /* into the TOMBs and EMPTYs left */
        for (int i = 0; i < N; i++) {
                cr_assert_eq(ds_conn_find(&keys[i]), rec[i], "key %d", i);
                cr_assert_eq(ds_conn_remove(&keys[i]), rec[i]);
                free(rec[i]);
        }
        for (int i = 0; i < N; i++)
                cr_assert_null(ds_conn_find(&keys[i]));
}

/* A thread's memory of its last lookup never outlives the key: finished
 * and connected again at the same address (malloc reuses it), the
 * connection is found with its new record, in this thread and another. */
static void *find_key(void *key)
{
        return ds_conn_find(key);
}

Test(conns, last_lookup_memory_follows_removal_and_reuse)
{
        static char key;
        struct ds_conn *a = record_for(&key), *b = record_for(&key);
        cr_assert_eq(ds_conn_add(a), 0);
        cr_assert_eq(ds_conn_find(&key), a);
        cr_assert_eq(ds_conn_find(&key), a, "found again, from memory");
        cr_assert_eq(ds_conn_remove(&key), a);
        cr_assert_null(ds_conn_find(&key), "removed: not remembered");
        cr_assert_eq(ds_conn_add(b), 0);
        cr_assert_eq(ds_conn_find(&key), b, "the new record, not the remembered one");
        pthread_t th;
        void *seen = NULL;
        cr_assert_eq(pthread_create(&th, NULL, find_key, &key), 0);
        pthread_join(th, &seen);
        cr_assert_eq(seen, b);
        cr_assert_eq(ds_conn_remove(&key), b);
        static char other;
        struct ds_conn *c = record_for(&other);
        cr_assert_eq(ds_conn_add(c), 0);
        cr_assert_null(ds_conn_find(&key), "another key's add does not bring it back");
        cr_assert_eq(ds_conn_remove(&other), c);
        free(a);
        free(b);
        free(c);
}

static void count_cb(struct ds_conn *e, void *arg)
{
        (void)e;
        ++*(int *)arg;
}

Test(conns, each_visits_every_live_record_once)
{
        static char keys[500];
        for (int i = 0; i < 500; i++)
                cr_assert_eq(ds_conn_add(record_for(&keys[i])), 0);
        for (int i = 0; i < 500; i += 5)
                free(ds_conn_remove(&keys[i]));
        int n = 0;
        ds_conns_each(count_cb, &n);
        cr_assert_eq(n, 400);
        for (int i = 0; i < 500; i++)
                free(ds_conn_remove(&keys[i]));
}

/* Each thread connects and finishes its own keys (malloc'd addresses,
 * which the allocator hands out again) and looks them up while the others
 * do the same: a lookup never misses a live key nor returns another's. */
struct churn {
        atomic_int *stop;
        long lookups, misses;
};

static void *churner(void *arg)
{
        struct churn *ch = arg;
        enum { LIVE = 40 };
        void *key[LIVE] = {0};
        struct ds_conn *rec[LIVE] = {0};
        unsigned seed = (unsigned)(uintptr_t)arg;
        while (!atomic_load(ch->stop)) {
                int i = (int)(rand_r(&seed) % LIVE);
                if (key[i] && rand_r(&seed) % 4 == 0) {
                        if (ds_conn_remove(key[i]) != rec[i])
                                ch->misses++;
                        free(rec[i]);
                        free(key[i]);
                        key[i] = NULL;
                } else if (!key[i]) {
                        key[i] = malloc(64);
                        rec[i] = record_for(key[i]);
                        if (ds_conn_add(rec[i]) != 0)
                                ch->misses++;
                } else {
                        for (int k = 0; k < 50; k++, ch->lookups++)
                                if (ds_conn_find(key[i]) != rec[i])
                                        ch->misses++;
                }
        }
        for (int i = 0; i < LIVE; i++)
                if (key[i]) {
                        free(ds_conn_remove(key[i]));
                        free(key[i]);
                }
        return NULL;
}

Test(conns, lookups_race_connects_and_finishes)
{
        enum { T = 4 };
        atomic_int stop = 0;
        pthread_t th[T];
        struct churn ch[T];
        for (int i = 0; i < T; i++) {
                ch[i] = (struct churn){.stop = &stop};
                cr_assert_eq(pthread_create(&th[i], NULL, churner, &ch[i]), 0);
        }
        double t0 = now_s();
        while (now_s() - t0 < 1.5)
                usleep(10000);
        atomic_store(&stop, 1);
        long lookups = 0;
        for (int i = 0; i < T; i++) {
                pthread_join(th[i], NULL);
                cr_expect_eq(ch[i].misses, 0, "thread %d: %ld wrong answers", i, ch[i].misses);
                lookups += ch[i].lookups;
        }
        cr_assert_gt(lookups, 10000, "only %ld lookups ran", lookups);
        int n = 0;
        ds_conns_each(count_cb, &n);
        cr_assert_eq(n, 0);
}

Test(conns, a_call_inside_keeps_the_releaser_away)
{
        static char key;
        struct ds_conn *e = record_for(&key);
        cr_assert_eq(ds_conns_any_inside(), 0);
        int how = ds_conn_enter(e);
        cr_assert_eq(how, DS_IN_RECORD);
        cr_assert_eq(ds_conns_any_inside(), 1, "the life thread sees the call in flight");
        atomic_store(&e->rstate, DS_CONN_RELEASING);
        struct ds_conn *got[1] = {e};
        cr_assert_eq(ds_conns_unused(got, 1), 0, "a call is inside: not released");
        cr_assert_eq(atomic_load(&e->rstate), DS_CONN_OPEN, "and it is OPEN again");
        /* nested: the thread's record is taken, the counter serves */
        int inner = ds_conn_enter(e);
        cr_assert_eq(inner, DS_IN_COUNTER);
        ds_conn_leave(e, how);
        atomic_store(&e->rstate, DS_CONN_RELEASING);
        cr_assert_eq(ds_conns_unused(got, 1), 0, "the nested call is still inside");
        ds_conn_leave(e, inner);
        atomic_store(&e->rstate, DS_CONN_RELEASING);
        cr_assert_eq(ds_conns_unused(got, 1), 1, "nothing inside: released");
        cr_assert_eq(atomic_load(&e->rstate), DS_CONN_RELEASING);
        cr_assert_eq(ds_conn_try_enter(e), 0, "no fast entry into a connection being released");
        atomic_store(&e->rstate, DS_CONN_OPEN);
        cr_assert_eq(ds_conn_try_enter(e), 1);
        ds_conn_leave(e, DS_IN_RECORD);
        free(e);
}

/* A user thread enters and leaves as fast as it can; the releaser takes
 * the connection whenever no call is inside. Whenever the releaser holds
 * it, the user must not be inside. */
struct duel {
        struct ds_conn *e;
        atomic_int stop, inside, overlaps;
        long entries;
};

static void *user(void *arg)
{
        struct duel *d = arg;
        while (!atomic_load(&d->stop)) {
                int how = ds_conn_enter(d->e);
                if (atomic_load(&d->e->rstate) == DS_CONN_OPEN) {
                        atomic_store(&d->inside, 1);
                        d->entries++;
                        atomic_store(&d->inside, 0);
                }
                ds_conn_leave(d->e, how);
                if (ds_conn_try_enter(d->e)) {
                        atomic_store(&d->inside, 1);
                        d->entries++;
                        atomic_store(&d->inside, 0);
                        ds_conn_leave(d->e, DS_IN_RECORD);
                }
        }
        return NULL;
}

static void duel_for_a_second(void)
{
        static char key;
        struct duel d = {.e = record_for(&key)};
        ds_conn_enter(d.e); /* this thread's record exists */
        ds_conn_leave(d.e, DS_IN_RECORD);
        pthread_t th;
        cr_assert_eq(pthread_create(&th, NULL, user, &d), 0);
        long taken = 0;
        double t0 = now_s();
        while (now_s() - t0 < 1.0) {
                int s = DS_CONN_OPEN;
                if (!atomic_compare_exchange_strong(&d.e->rstate, &s, DS_CONN_RELEASING))
                        continue;
                struct ds_conn *got[1] = {d.e};
                if (ds_conns_unused(got, 1) == 1) {
                        taken++;
                        for (int k = 0; k < 100; k++)
                                if (atomic_load(&d.inside))
                                        atomic_fetch_add(&d.overlaps, 1);
                        atomic_store(&d.e->rstate, DS_CONN_OPEN);
                }
        }
        atomic_store(&d.stop, 1);
        pthread_join(th, NULL);
        cr_assert_eq(atomic_load(&d.overlaps), 0, "a call ran inside a released connection");
        cr_assert_gt(taken, 10, "the releaser never got the connection (%ld)", taken);
        cr_assert_gt(d.entries, 1000, "the user never got in (%ld)", d.entries);
        free(d.e);
}

Test(conns, enter_and_release_exclude_each_other)
{
        duel_for_a_second();
}

/* The same with the fences a kernel without membarrier leaves. */
Test(conns, enter_and_release_exclude_each_other_without_membarrier)
{
        ds_conns_without_membarrier();
        duel_for_a_second();
}

struct parked {
        struct ds_conn *e;
        atomic_int in, leave;
};

static void *enter_and_park(void *arg)
{
        struct parked *p = arg;
        int how = ds_conn_enter(p->e);
        atomic_store(&p->in, 1);
        while (!atomic_load(&p->leave))
                usleep(1000);
        ds_conn_leave(p->e, how);
        return NULL;
}

/* A forked child has only the forking thread: a call another thread of
 * the parent was inside does not keep the child's releaser away, and the
 * parent's releaser still sees it. */
Test(conns, fork_child_forgets_other_threads)
{
        static char key;
        struct parked p = {.e = record_for(&key)};
        pthread_t th;
        cr_assert_eq(pthread_create(&th, NULL, enter_and_park, &p), 0);
        while (!atomic_load(&p.in))
                usleep(1000);
        struct ds_conn *got[1] = {p.e};
        ds_conns_fork_prepare();
        pid_t pid = fork();
        if (pid == 0) {
                ds_conns_fork_child();
                atomic_store(&p.e->rstate, DS_CONN_RELEASING);
                _exit(ds_conns_unused(got, 1) == 1 ? 0 : 1);
        }
        ds_conns_fork_parent();
        int st;
        cr_assert_eq(waitpid(pid, &st, 0), pid);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the child could not release");
        atomic_store(&p.e->rstate, DS_CONN_RELEASING);
        cr_assert_eq(ds_conns_unused(got, 1), 0, "in the parent the call is still inside");
        atomic_store(&p.leave, 1);
        pthread_join(th, NULL);
        atomic_store(&p.e->rstate, DS_CONN_RELEASING);
        cr_assert_eq(ds_conns_unused(got, 1), 1, "the thread has left");
        free(p.e);
}
