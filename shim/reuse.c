/* reuse.c - connection reuse: a finished healthy connection stays open,
 * parked in the process with its slot, and a later connect of the same
 * process with the same parameters through the same libpq copy gets it back
 * instead of a new server connection. Its server session is reset with
 * DISCARD ALL when it is parked (advisory locks and the rest are gone once
 * the program thinks it closed the connection, and nothing is left unread
 * should the process end without closing it) and its client-side state is
 * put back to what a fresh connection has. Parked
 * connections are the first to go: when any connect of the pool waits, when
 * the scraper gives slots back, after reuse_timeout, and at exit. A forked
 * child never takes (or closes on the server) a connection its parent
 * parked. */
#include "shim.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dynshim/segment.h"

/* At most this many connections parked per process. */
#define PARK_MAX 32

static pthread_mutex_t park_mutex = PTHREAD_MUTEX_INITIALIZER;
static struct ds_conn *parked; /* newest first */
static _Atomic int n_parked;
static pthread_once_t exit_once = PTHREAD_ONCE_INIT;

/* The notice hooks of a fresh connection, per libpq copy. */
static struct {
        _Atomic(PQnoticeProcessor) processor;
        _Atomic(PQnoticeReceiver) receiver;
} fresh[DS_MAX_LIBS];

void ds_reuse_lock(void)
{
        pthread_mutex_lock(&park_mutex);
}

void ds_reuse_unlock(void)
{
        pthread_mutex_unlock(&park_mutex);
}

int ds_reuse_any(void)
{
        return atomic_load_explicit(&n_parked, memory_order_relaxed) > 0;
}

static uint64_t mono_ns(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
        return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int usable(const struct ds_lib *lib)
{
        return lib->status && lib->socket && lib->re.set_processor && lib->re.set_receiver &&
               lib->re.set_verbosity && lib->re.set_context && lib->re.untrace &&
               lib->re.notifies && lib->re.freemem && lib->result_status && lib->clear &&
               lib->fn[DS_ID_PQexec] && lib->fn[DS_ID_PQtransactionStatus] &&
               lib->fn[DS_ID_PQisBusy] && lib->fn[DS_ID_PQsetnonblocking];
}

void ds_reuse_note_fresh(struct ds_conn *e)
{
        struct ds_lib *lib = e->lib;
        PGconn *conn = (PGconn *)e->conn;
        if (!lib->re.set_processor || !lib->re.set_receiver ||
            atomic_load_explicit(&fresh[lib->idx].receiver, memory_order_relaxed))
                return;
        /* a NULL hook changes nothing and returns the current one */
        atomic_store(&fresh[lib->idx].processor, lib->re.set_processor(conn, NULL, NULL));
        atomic_store(&fresh[lib->idx].receiver, lib->re.set_receiver(conn, NULL, NULL));
}

/* Notices of a parked connection (its DISCARD ALL) go nowhere. */
static void quiet_processor(void *arg, const char *message)
{
        (void)arg;
        (void)message;
}

/* Drops the notifications libpq queued for the connection. */
static void drop_notifies(struct ds_lib *lib, PGconn *conn)
{
        PGnotify *n;
        while ((n = lib->re.notifies(conn)) != NULL)
                lib->re.freemem(n);
}

/* Runs sql; 0 if it succeeded and left the connection healthy and idle. */
static int command(struct ds_lib *lib, PGresult *(*exec)(PGconn *, const char *), PGconn *conn,
                   const char *sql)
{
        PGTransactionStatusType (*tx)(const PGconn *) = lib->fn[DS_ID_PQtransactionStatus];
        PGresult *r = exec(conn, sql);
        int ok = r && lib->result_status(r) == PGRES_COMMAND_OK;
        if (r)
                lib->clear(r);
        return ok && lib->status(conn) == CONNECTION_OK && tx(conn) == PQTRANS_IDLE ? 0 : -1;
}

static int reuse_on(ds_handle *h)
{
        struct ds_header *H = ds_handle_header(h);
        return __atomic_load_n(&H->cfg.reuse, __ATOMIC_RELAXED) != 0;
}

static void close_all_at_exit(void)
{
        ds_reuse_close(NULL, 1, UINT32_MAX);
}

static void register_exit(void)
{
        atexit(close_all_at_exit);
}

int ds_reuse_park(struct ds_conn *e)
{
        struct ds_lib *lib = e->lib;
        PGconn *conn = (PGconn *)e->conn;
        ds_handle *h = e->lease.h;
        if (!e->leased || !h || e->events || e->fd >= 0 || !reuse_on(h) || !usable(lib) ||
            ds_waiting_now(h) > 0 || atomic_load(&n_parked) >= PARK_MAX ||
            !atomic_load(&fresh[lib->idx].receiver))
                return 0;
        PGTransactionStatusType (*tx)(const PGconn *) = lib->fn[DS_ID_PQtransactionStatus];
        int (*isbusy)(PGconn *) = lib->fn[DS_ID_PQisBusy];
        int (*setnb)(PGconn *, int) = lib->fn[DS_ID_PQsetnonblocking];
        PGresult *(*exec)(PGconn *, const char *) = lib->fn[DS_ID_PQexec];
        PGTransactionStatusType t = tx(conn);
        if (lib->status(conn) != CONNECTION_OK || lib->socket(conn) < 0 ||
            (t != PQTRANS_IDLE && t != PQTRANS_INTRANS && t != PQTRANS_INERROR) || isbusy(conn) ||
            (lib->pipeline && lib->pipeline(conn) != PQ_PIPELINE_OFF))
                return 0;
        /* client-side state back to a fresh connection's (the program's
         * hooks point into objects it is about to free) */
        lib->re.set_processor(conn, quiet_processor, NULL);
        lib->re.set_receiver(conn, atomic_load(&fresh[lib->idx].receiver), NULL);
        lib->re.set_verbosity(conn, PQERRORS_DEFAULT);
        lib->re.set_context(conn, PQSHOW_CONTEXT_ERRORS);
        lib->re.untrace(conn);
        if (setnb(conn, 0) != 0)
                return 0;
        /* an open transaction is rolled back, as the server does when a
         * client goes away (psycopg2 closes inside its implicit BEGIN) */
        if ((t != PQTRANS_IDLE && command(lib, exec, conn, "ROLLBACK") != 0) ||
            command(lib, exec, conn, "DISCARD ALL") != 0)
                return 0; /* finished normally: nothing was parked */
        drop_notifies(lib, conn);
        free(e->error);
        e->error = NULL;
        e->pinned = 0;
        e->gucs_len = 0; /* DISCARD ALL: no custom setting holds a value */
        e->parked_ns = mono_ns();
        pthread_once(&exit_once, register_exit);
        pthread_mutex_lock(&park_mutex);
        e->park = parked;
        parked = e;
        atomic_fetch_add(&n_parked, 1);
        pthread_mutex_unlock(&park_mutex);
        ds_note_parked(h, 1, 0);
        ds_debug("connection %p parked for reuse", (void *)conn);
        return 1;
}

static int same_str(const char *a, const char *b)
{
        return a == b || (a && b && strcmp(a, b) == 0);
}

static int same_params(const struct ds_conn *e, const struct ds_params *p)
{
        if (e->expand_dbname != p->expand || !e->keywords || !e->values)
                return 0;
        for (size_t i = 0; i < p->n; i++)
                if (!e->keywords[i] || strcmp(e->keywords[i], p->keys[i]) != 0 ||
                    !same_str(e->values[i], p->vals ? p->vals[i] : NULL))
                        return 0;
        return e->keywords[p->n] == NULL;
}

/* Takes every connection a parent parked out of the list (under the lock)
 * onto *out. */
static void take_inherited(pid_t me, struct ds_conn **out)
{
        for (struct ds_conn **pp = &parked; *pp;) {
                struct ds_conn *e = *pp;
                if (e->owner != me) {
                        *pp = e->park;
                        atomic_fetch_sub(&n_parked, 1);
                        e->park = *out;
                        *out = e;
                } else {
                        pp = &e->park;
                }
        }
}

static void forget_all(struct ds_conn *list)
{
        while (list) {
                struct ds_conn *next = list->park;
                ds_forget_inherited(list);
                list = next;
        }
}

/* Checks that a parked connection is still healthy and quiet and gives it
 * a fresh connection's notice processor (its client encoding came back with
 * DISCARD ALL's RESET ALL, which the server reported). 0 if it is ready for
 * use. */
static int finish_reset(struct ds_conn *e)
{
        struct ds_lib *lib = e->lib;
        PGconn *conn = (PGconn *)e->conn;
        /* anything from the server while parked is an end (a terminated
         * backend, a server shutting down) */
        struct pollfd p = {lib->socket(conn), POLLIN, 0};
        if (p.fd < 0 || poll(&p, 1, 0) != 0)
                return -1;
        drop_notifies(lib, conn);
        lib->re.set_processor(conn, atomic_load(&fresh[lib->idx].processor), NULL);
        return 0;
}

struct ds_conn *ds_reuse_take(struct ds_lib *lib, const struct ds_params *p)
{
        pid_t me = getpid();
        struct ds_conn *inherited = NULL, *e = NULL;
        pthread_mutex_lock(&park_mutex);
        take_inherited(me, &inherited);
        for (struct ds_conn **pp = &parked; *pp; pp = &(*pp)->park) {
                if ((*pp)->lib == lib && same_params(*pp, p)) {
                        e = *pp;
                        *pp = e->park;
                        atomic_fetch_sub(&n_parked, 1);
                        break;
                }
        }
        pthread_mutex_unlock(&park_mutex);
        forget_all(inherited);
        if (!e)
                return NULL;
        ds_handle *h = e->lease.h;
        e->park = NULL;
        if (finish_reset(e) != 0) {
                ds_debug("parked connection %p is not reusable; closed", (void *)e->conn);
                ds_note_parked(h, -1, 0);
                ds_finish_now(e);
                return NULL;
        }
        ds_note_parked(h, -1, 1);
        ds_debug("connection %p reused", (void *)e->conn);
        return e;
}

uint32_t ds_reuse_close(ds_handle *h, int all, uint32_t max)
{
        if (!ds_reuse_any())
                return 0;
        pid_t me = getpid();
        uint64_t now = mono_ns();
        struct ds_conn *inherited = NULL, *go = NULL;
        uint32_t n = 0;
        pthread_mutex_lock(&park_mutex);
        take_inherited(me, &inherited);
        for (struct ds_conn **pp = &parked; *pp && n < max;) {
                struct ds_conn *e = *pp;
                struct ds_header *H = ds_handle_header(e->lease.h);
                uint64_t timeout_ns =
                    (uint64_t)__atomic_load_n(&H->cfg.reuse_timeout_ms, __ATOMIC_RELAXED) *
                    1000000ull;
                if ((h && e->lease.h != h) ||
                    (!all && reuse_on(e->lease.h) && now - e->parked_ns < timeout_ns)) {
                        pp = &e->park;
                        continue;
                }
                *pp = e->park;
                atomic_fetch_sub(&n_parked, 1);
                e->park = go;
                go = e;
                n++;
        }
        pthread_mutex_unlock(&park_mutex);
        forget_all(inherited);
        while (go) {
                struct ds_conn *next = go->park;
                ds_note_parked(go->lease.h, -1, 0);
                ds_debug("parked connection %p closed", (void *)go->conn);
                ds_finish_now(go);
                go = next;
        }
        return n;
}
