/* conns.c - the per-process table PGconn* -> what the shim knows about it
 * (owning library, lease, owner pid, open parameters).
 *
 * Every intercepted call looks its connection up, so a lookup takes no lock
 * and writes nothing shared: the table is open addressing with linear
 * probing, each slot a key (the PGconn address, EMPTY or TOMB) and the
 * record. Writers (connect, finish) hold conns_mutex.
 *
 * Why a reader without a lock is safe. A thread looks up only a connection
 * it holds, so its key was stored before the lookup began and is not taken
 * out while it runs (using a connection during its own PQfinish is the
 * application's bug). Keys never move: a removed key becomes TOMB, which a
 * probe passes over; a later insert may reuse a TOMB, and a probe compares
 * keys, so it passes over that too. A run of TOMBs is turned back into
 * EMPTY only when an EMPTY follows it, and no live key's probe path crosses
 * such a run (its path has no EMPTY before the key). A table is never
 * rehashed or freed: when one is three quarters used (live keys and TOMBs)
 * a larger one is chained after it, and a probe that ends at an EMPTY goes
 * on into the next table. The first table is static, so nothing is
 * allocated before the first connect, and at most 3/4 of the slots are in
 * use, so every probe meets an EMPTY. */
#include "shim.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct conn_slot {
        _Atomic(const void *) key;
        _Atomic(struct ds_conn *) rec;
};

struct conn_table {
        struct conn_table *_Atomic next; /* the larger table chained after this one */
        size_t mask;                     /* slots - 1, a power of two minus one */
        size_t used;                     /* live keys and TOMBs (under conns_mutex) */
        struct conn_slot *slot;
};

#define FIRST_SLOTS 256
#define EMPTY       ((const void *)0)
#define TOMB        ((const void *)1)

static pthread_mutex_t conns_mutex = PTHREAD_MUTEX_INITIALIZER;
static struct conn_slot first_slots[FIRST_SLOTS];
static struct conn_table first = {.mask = FIRST_SLOTS - 1, .slot = first_slots};

/* Each thread remembers the last connection it looked up: a program calls
 * on one connection many times in a row. The memory is good while no key
 * has been added or removed since (ds_hot.conns_gen, bumped under conns_mutex by
 * both), so it never names a record that has been freed, except one whose
 * connection the application finishes while using it (its own bug, and
 * the table's lookup has the same window). */
__thread struct ds_tls ds_tls __attribute__((tls_model("initial-exec")));
struct ds_hot ds_hot; /* shim.h */

static size_t home_of(const void *conn)
{
        uintptr_t v = (uintptr_t)conn;
        v ^= v >> 17;
        v *= 0x9e3779b97f4a7c15ull;
        return (size_t)(v >> 32);
}

void ds_conns_lock(void)
{
        pthread_mutex_lock(&conns_mutex);
}

void ds_conns_unlock(void)
{
        pthread_mutex_unlock(&conns_mutex);
}

/* The slot holding conn, or NULL; *in is its table. */
static struct conn_slot *locate(const void *conn, struct conn_table **in)
{
        size_t h = home_of(conn);
        for (struct conn_table *t = &first; t;
             t = atomic_load_explicit(&t->next, memory_order_acquire)) {
                for (size_t i = h & t->mask;; i = (i + 1) & t->mask) {
                        const void *k = atomic_load_explicit(&t->slot[i].key, memory_order_acquire);
                        if (k == conn) {
                                *in = t;
                                return &t->slot[i];
                        }
                        if (k == EMPTY)
                                break;
                }
        }
        return NULL;
}

static int room_for_one_more(const struct conn_table *t)
{
        return (t->used + 1) * 4 <= (t->mask + 1) * 3;
}

/* Puts conn into t from its home slot on: the first TOMB or EMPTY (an
 * EMPTY only while the table stays under 3/4). 0, or -1 if t is full. */
static int put(struct conn_table *t, struct ds_conn *c)
{
        for (size_t i = home_of(c->conn) & t->mask;; i = (i + 1) & t->mask) {
                const void *k = atomic_load_explicit(&t->slot[i].key, memory_order_relaxed);
                if (k == EMPTY && !room_for_one_more(t))
                        return -1;
                if (k == EMPTY || k == TOMB) {
                        if (k == EMPTY)
                                t->used++;
                        atomic_store_explicit(&t->slot[i].rec, c, memory_order_relaxed);
                        atomic_store_explicit(&t->slot[i].key, c->conn, memory_order_release);
                        return 0;
                }
        }
}

int ds_conn_add(struct ds_conn *c)
{
        int rc = -ENOMEM;
        pthread_mutex_lock(&conns_mutex);
        atomic_fetch_add_explicit(&ds_hot.conns_gen, 1, memory_order_release);
        struct conn_table *t = &first, *last = t;
        for (; t; t = atomic_load_explicit(&t->next, memory_order_relaxed)) {
                last = t;
                if (put(t, c) == 0) {
                        rc = 0;
                        goto out;
                }
        }
        size_t slots = (last->mask + 1) * 4;
        t = calloc(1, sizeof(*t));
        struct conn_slot *slot = t ? calloc(slots, sizeof(*slot)) : NULL;
        if (!slot) {
                free(t);
        } else {
                t->mask = slots - 1;
                t->slot = slot;
                put(t, c);
                atomic_store_explicit(&last->next, t, memory_order_release);
                rc = 0;
        }
out:
        pthread_mutex_unlock(&conns_mutex);
        return rc;
}

struct ds_conn *ds_conn_find(const void *conn)
{
        if (!conn)
                return NULL;
        unsigned long gen = atomic_load_explicit(&ds_hot.conns_gen, memory_order_acquire);
        if (conn == ds_tls.hot_key && gen == ds_tls.hot_gen)
                return ds_tls.hot_rec;
        struct conn_table *t;
        struct conn_slot *s = locate(conn, &t);
        struct ds_conn *rec = s ? atomic_load_explicit(&s->rec, memory_order_relaxed) : NULL;
        if (rec) {
                ds_tls.hot_key = conn;
                ds_tls.hot_rec = rec;
                ds_tls.hot_gen = gen;
        }
        return rec;
}

struct ds_conn *ds_conn_remove(const void *conn)
{
        if (!conn)
                return NULL;
        pthread_mutex_lock(&conns_mutex);
        struct conn_table *t;
        struct conn_slot *s = locate(conn, &t);
        struct ds_conn *c = NULL;
        if (s) {
                atomic_fetch_add_explicit(&ds_hot.conns_gen, 1, memory_order_release);
                c = atomic_load_explicit(&s->rec, memory_order_relaxed);
                atomic_store_explicit(&s->key, TOMB, memory_order_release);
                /* A run of TOMBs that ends at an EMPTY is EMPTY again. */
                size_t i = (size_t)(s - t->slot);
                if (atomic_load_explicit(&t->slot[(i + 1) & t->mask].key, memory_order_relaxed) ==
                    EMPTY) {
                        while (atomic_load_explicit(&t->slot[i].key, memory_order_relaxed) ==
                               TOMB) {
                                atomic_store_explicit(&t->slot[i].key, EMPTY, memory_order_release);
                                t->used--;
                                i = (i - 1) & t->mask;
                        }
                }
        }
        pthread_mutex_unlock(&conns_mutex);
        return c;
}

void ds_conn_free(struct ds_conn *c)
{
        if (!c)
                return;
        free(c->error);
        free(c->gucs);
        /* values[i] may be NULL: the keyword list is the terminator. */
        for (size_t i = 0; c->keywords && c->keywords[i]; i++) {
                free(c->keywords[i]);
                if (c->values)
                        free(c->values[i]);
        }
        free(c->keywords);
        free(c->values);
        free(c);
}

void ds_conns_each(void (*fn)(struct ds_conn *e, void *arg), void *arg)
{
        pthread_mutex_lock(&conns_mutex);
        for (struct conn_table *t = &first; t;
             t = atomic_load_explicit(&t->next, memory_order_relaxed))
                for (size_t i = 0; i <= t->mask; i++) {
                        const void *k = atomic_load_explicit(&t->slot[i].key, memory_order_relaxed);
                        if (k != EMPTY && k != TOMB)
                                fn(atomic_load_explicit(&t->slot[i].rec, memory_order_relaxed),
                                   arg);
                }
        pthread_mutex_unlock(&conns_mutex);
}

/* ---- which connection each thread is inside ----
 *
 * A call on a connection must not overlap the life thread's idle release
 * of it. Each thread publishes the connection its outermost call is inside
 * in a record of its own (a plain store, no read-modify-write), and the
 * releaser, after moving a connection to RELEASING, makes every thread of
 * the process pass a full barrier (membarrier, private expedited) before
 * it reads the records: either the thread's store is visible to it, or the
 * thread's later read of the state sees RELEASING. Where the kernel has no
 * such barrier, the thread publishes with a sequentially consistent
 * exchange, and every access on both sides is sequentially consistent.
 * Nested calls, and threads without a record, count on the connection's
 * own busy counter instead. Records are never freed: a thread's record is
 * reused by a later thread once it has exited. */

#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>

/* One cache line each: a thread stores into its own record on every call,
 * and records side by side would bounce one line between the cores. */
struct ds_thread {
        _Alignas(64) _Atomic(struct ds_conn *) in; /* the connection its outermost call is on */
        _Atomic int live;
        struct ds_thread *next;
};

static pthread_mutex_t threads_mutex = PTHREAD_MUTEX_INITIALIZER;
static struct ds_thread *threads; /* every record (under threads_mutex) */
static pthread_key_t thread_key;
static pthread_once_t threads_once = PTHREAD_ONCE_INIT;

static int membarrier(int cmd)
{
        return (int)syscall(SYS_membarrier, cmd, 0, 0);
}

static void register_barrier(void)
{
        int cmds = membarrier(MEMBARRIER_CMD_QUERY);
        atomic_store(&ds_hot.asymmetric,
                     cmds > 0 && (cmds & MEMBARRIER_CMD_PRIVATE_EXPEDITED) &&
                         membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0);
}

static void thread_gone(void *rec)
{
        struct ds_thread *t = rec;
        atomic_store(&t->in, NULL);
        atomic_store(&t->live, 0);
}

static void threads_init(void)
{
        if (pthread_key_create(&thread_key, thread_gone) != 0)
                return;
        register_barrier();
}

void ds_conns_without_membarrier(void)
{
        pthread_once(&threads_once, threads_init);
        atomic_store(&ds_hot.asymmetric, 0);
}

/* The calling thread's record, made on its first call; NULL if none can be. */
static struct ds_thread *thread_record(void)
{
        struct ds_thread *t = ds_tls.self;
        if (t)
                return t;
        pthread_once(&threads_once, threads_init);
        pthread_mutex_lock(&threads_mutex);
        for (t = threads; t && atomic_load(&t->live); t = t->next)
                ;
        if (!t && (t = aligned_alloc(_Alignof(struct ds_thread), sizeof(*t))) != NULL) {
                memset(t, 0, sizeof(*t));
                t->next = threads;
                threads = t;
        }
        if (t) {
                atomic_store(&t->live, 1);
                if (pthread_setspecific(thread_key, t) != 0) {
                        atomic_store(&t->live, 0);
                        t = NULL;
                }
        }
        pthread_mutex_unlock(&threads_mutex);
        ds_tls.self = t;
        return t;
}

/* Marks e in thread t's free record; the reader's half of the barrier:
 * a compiler barrier where the releaser's membarrier fences this thread,
 * else a sequentially consistent exchange, which with the releaser's
 * sequentially consistent state change and loads orders the two sides. */
static void mark(struct ds_thread *t, struct ds_conn *e)
{
        if (atomic_load_explicit(&ds_hot.asymmetric, memory_order_relaxed)) {
                atomic_store_explicit(&t->in, e, memory_order_relaxed);
                atomic_signal_fence(memory_order_seq_cst);
        } else {
                atomic_exchange_explicit(&t->in, e, memory_order_seq_cst);
        }
}

int ds_conn_try_enter(struct ds_conn *e)
{
        struct ds_thread *t = ds_tls.self;
        if (!t || atomic_load_explicit(&t->in, memory_order_relaxed))
                return 0;
        mark(t, e);
        if (atomic_load_explicit(&e->rstate, memory_order_seq_cst) == DS_CONN_OPEN)
                return 1;
        atomic_store_explicit(&t->in, NULL, memory_order_release);
        return 0;
}

int ds_conn_enter(struct ds_conn *e)
{
        struct ds_thread *t = thread_record();
        if (t && !atomic_load_explicit(&t->in, memory_order_relaxed)) {
                mark(t, e);
                return DS_IN_RECORD;
        }
        atomic_fetch_add(&e->busy, 1);
        return DS_IN_COUNTER;
}

void ds_conn_leave(struct ds_conn *e, int how)
{
        if (how == DS_IN_RECORD)
                atomic_store_explicit(&ds_tls.self->in, NULL, memory_order_release);
        else if (how == DS_IN_COUNTER)
                atomic_fetch_sub(&e->busy, 1);
}

int ds_conns_unused(struct ds_conn **e, int n)
{
        int ok = 1;
        if (atomic_load(&ds_hot.asymmetric))
                ok = membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0;
        int kept = 0;
        pthread_mutex_lock(&threads_mutex);
        for (int i = 0; i < n; i++) {
                int used = !ok || atomic_load(&e[i]->busy) > 0;
                for (struct ds_thread *t = threads; t && !used; t = t->next)
                        used = atomic_load_explicit(&t->in, memory_order_seq_cst) == e[i];
                if (used)
                        atomic_store(&e[i]->rstate, DS_CONN_OPEN);
                else
                        e[kept++] = e[i];
        }
        pthread_mutex_unlock(&threads_mutex);
        return kept;
}

int ds_conns_any_inside(void)
{
        int any = 0;
        pthread_mutex_lock(&threads_mutex);
        for (struct ds_thread *t = threads; t && !any; t = t->next)
                any = atomic_load_explicit(&t->in, memory_order_relaxed) != NULL;
        pthread_mutex_unlock(&threads_mutex);
        return any;
}

void ds_conns_fork_prepare(void)
{
        pthread_mutex_lock(&conns_mutex);
        pthread_mutex_lock(&threads_mutex);
}

void ds_conns_fork_parent(void)
{
        pthread_mutex_unlock(&threads_mutex);
        pthread_mutex_unlock(&conns_mutex);
}

/* In a child only the forking thread exists: the other records are free,
 * and the barrier is registered for the new process. */
void ds_conns_fork_child(void)
{
        for (struct ds_thread *t = threads; t; t = t->next)
                if (t != ds_tls.self)
                        thread_gone(t);
        if (atomic_load(&ds_hot.asymmetric))
                register_barrier();
        ds_conns_fork_parent();
}
