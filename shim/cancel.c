/* cancel.c - cancel objects that follow their connection across transparent
 * reconnects.
 *
 * A program takes a connection's cancel object once (psycopg2 does at
 * connect: PQgetCancel) and keeps it. The object holds the backend's PID
 * and secret key, so after an idle release and reconnect it would name a
 * backend that is gone, and a cancel would reach nobody. Each object
 * PQgetCancel hands out is recorded here with its connection; when the
 * connection is reconnected transparently, the record gets a cancel object
 * of the new session (libpq's own, so its layout is never looked into), and
 * PQcancel sends the current one. The program's object itself is never
 * changed, and freeing it frees the later ones.
 *
 * PQcancel may run in a signal handler (psql's SIGINT): its lookup takes no
 * lock and writes nothing. The table is open addressing with linear probing
 * like the connection table (conns.c): keys never move, a removed key
 * becomes TOMB, a run of TOMBs before an EMPTY becomes EMPTY again. The
 * object a record replaced is kept until the next replacement, so that a
 * cancel that has just read it still sends from valid memory. */
#include "shim.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>

#define CANCEL_SLOTS 4096 /* a power of two; at most 3/4 used */
#define EMPTY        ((PGcancel *)0)
#define TOMB         ((PGcancel *)1)

struct cancel_rec {
        _Atomic(PGcancel *) key;    /* the object the program holds */
        _Atomic(PGcancel *) cur;    /* the one of the connection's session now */
        PGcancel *old;              /* the one cur replaced (under cancel_mutex) */
        const PGconn *_Atomic conn; /* the connection, until it is closed */
        struct ds_lib *_Atomic lib; /* the libpq copy that made them */
};

static struct cancel_rec recs[CANCEL_SLOTS];
static size_t used; /* live keys and TOMBs (under cancel_mutex) */
static pthread_mutex_t cancel_mutex = PTHREAD_MUTEX_INITIALIZER;
static _Atomic int live; /* records in the table: 0 lets the common paths skip it */

static size_t home_of(const void *p)
{
        uintptr_t v = (uintptr_t)p;
        v ^= v >> 17;
        v *= 0x9e3779b97f4a7c15ull;
        return (size_t)(v >> 32) & (CANCEL_SLOTS - 1);
}

static struct cancel_rec *find(const PGcancel *key)
{
        if (!key || atomic_load_explicit(&live, memory_order_acquire) == 0)
                return NULL;
        for (size_t i = home_of(key), n = 0; n < CANCEL_SLOTS;
             i = (i + 1) & (CANCEL_SLOTS - 1), n++) {
                PGcancel *k = atomic_load_explicit(&recs[i].key, memory_order_acquire);
                if (k == key)
                        return &recs[i];
                if (k == EMPTY)
                        return NULL;
        }
        return NULL;
}

static void free_cancel(struct ds_lib *lib, PGcancel *c)
{
        void (*fr)(PGcancel *) = lib ? lib->fn[DS_ID_PQfreeCancel] : NULL;
        if (c && fr)
                fr(c);
}

int ds_cancel_note(PGcancel *cancel, struct ds_conn *e)
{
        if (!cancel || cancel == TOMB)
                return 0;
        int rc = -ENOSPC;
        pthread_mutex_lock(&cancel_mutex);
        for (size_t i = home_of(cancel);; i = (i + 1) & (CANCEL_SLOTS - 1)) {
                PGcancel *k = atomic_load_explicit(&recs[i].key, memory_order_relaxed);
                if (k == cancel) { /* freed behind the shim's back and handed out again */
                        atomic_store(&recs[i].conn, e->conn);
                        atomic_store(&recs[i].lib, e->lib);
                        atomic_store(&recs[i].cur, cancel);
                        rc = 0;
                        break;
                }
                if (k == EMPTY && (used + 1) * 4 > CANCEL_SLOTS * 3)
                        break;
                if (k == EMPTY || k == TOMB) {
                        if (k == EMPTY)
                                used++;
                        recs[i].old = NULL;
                        atomic_store_explicit(&recs[i].cur, cancel, memory_order_relaxed);
                        atomic_store_explicit(&recs[i].conn, e->conn, memory_order_relaxed);
                        atomic_store_explicit(&recs[i].lib, e->lib, memory_order_relaxed);
                        atomic_store_explicit(&recs[i].key, cancel, memory_order_release);
                        atomic_fetch_add(&live, 1);
                        rc = 0;
                        break;
                }
        }
        pthread_mutex_unlock(&cancel_mutex);
        if (rc) {
                e->pinned = 1;
                ds_debug("too many cancel objects to follow; connection %p is pinned",
                         (void *)e->conn);
        }
        return rc;
}

void ds_cancel_refresh(struct ds_conn *e)
{
        if (atomic_load(&live) == 0)
                return;
        PGcancel *(*get)(PGconn *) = e->lib->fn[DS_ID_PQgetCancel];
        if (!get)
                return;
        pthread_mutex_lock(&cancel_mutex);
        for (size_t i = 0; i < CANCEL_SLOTS; i++) {
                PGcancel *k = atomic_load_explicit(&recs[i].key, memory_order_relaxed);
                if (k == EMPTY || k == TOMB ||
                    atomic_load_explicit(&recs[i].conn, memory_order_relaxed) != e->conn)
                        continue;
                PGcancel *now = get((PGconn *)e->conn);
                if (!now)
                        continue;
                PGcancel *prev = atomic_exchange(&recs[i].cur, now);
                if (recs[i].old)
                        free_cancel(recs[i].lib, recs[i].old);
                recs[i].old = prev != k ? prev : NULL;
        }
        pthread_mutex_unlock(&cancel_mutex);
}

void ds_cancel_forget(const PGconn *conn)
{
        if (!conn || atomic_load(&live) == 0)
                return;
        pthread_mutex_lock(&cancel_mutex);
        for (size_t i = 0; i < CANCEL_SLOTS; i++) {
                PGcancel *k = atomic_load_explicit(&recs[i].key, memory_order_relaxed);
                if (k != EMPTY && k != TOMB &&
                    atomic_load_explicit(&recs[i].conn, memory_order_relaxed) == conn)
                        atomic_store(&recs[i].conn, NULL);
        }
        pthread_mutex_unlock(&cancel_mutex);
}

/* Takes the record of key out of the table; frees the objects of later
 * sessions. */
static void drop(PGcancel *key)
{
        pthread_mutex_lock(&cancel_mutex);
        struct cancel_rec *r = find(key);
        if (r) {
                struct ds_lib *lib = atomic_load(&r->lib);
                PGcancel *cur = atomic_load(&r->cur);
                if (cur != key)
                        free_cancel(lib, cur);
                free_cancel(lib, r->old);
                r->old = NULL;
                atomic_store(&r->conn, NULL);
                atomic_store_explicit(&r->key, TOMB, memory_order_release);
                atomic_fetch_sub(&live, 1);
                size_t i = (size_t)(r - recs);
                if (atomic_load_explicit(&recs[(i + 1) & (CANCEL_SLOTS - 1)].key,
                                         memory_order_relaxed) == EMPTY) {
                        while (atomic_load_explicit(&recs[i].key, memory_order_relaxed) == TOMB) {
                                atomic_store_explicit(&recs[i].key, EMPTY, memory_order_release);
                                used--;
                                i = (i - 1) & (CANCEL_SLOTS - 1);
                        }
                }
        }
        pthread_mutex_unlock(&cancel_mutex);
}

static long no_function(void)
{
        return 0;
}

void *ds_cancel_route(int id, int slot, const void *ra, PGcancel **cancel)
{
        struct cancel_rec *r = find(*cancel);
        struct ds_lib *lib = r ? atomic_load_explicit(&r->lib, memory_order_relaxed) : NULL;
        if (!lib)
                lib = slot >= 0 ? ds_lib_slot(slot) : ds_lib_at(ra);
        if (!lib)
                lib = ds_lib_for_caller(ra);
        void *real = lib ? lib->fn[id] : NULL;
        if (!real)
                return (void *)no_function;
        if (r && id == DS_ID_PQcancel)
                *cancel = atomic_load_explicit(&r->cur, memory_order_acquire);
        else if (r && id == DS_ID_PQfreeCancel)
                drop(*cancel);
        return real;
}

/* Fork handlers (shim.c): a child must not inherit the table mid-change. */
void ds_cancel_lock(void)
{
        pthread_mutex_lock(&cancel_mutex);
}

void ds_cancel_unlock(void)
{
        pthread_mutex_unlock(&cancel_mutex);
}
