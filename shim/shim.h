/* shim.h - the internals of libdynshim.so shared by its files: the
 * intercepted-function ids, the registry of loaded libpq copies, the
 * connection table, the call record a wrapper passes through, and logging. */
#ifndef DYNSHIM_SHIM_H
#define DYNSHIM_SHIM_H

#include <libpq-events.h>
#include <libpq-fe.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>

#include "dynshim/coord.h"

enum ds_kind {
        DS_KIND_CONNECT,
        DS_KIND_START,
        DS_KIND_POLL,
        DS_KIND_RESET,
        DS_KIND_RESET_START,
        DS_KIND_FINISH,
        DS_KIND_PING,
        DS_KIND_ACTIVITY,
        DS_KIND_ERRMSG,
        DS_KIND_GETTER,
        DS_KIND_REVIVE,
        DS_KIND_QUERY,
        DS_KIND_PID,
        DS_KIND_GETCANCEL,
        DS_KIND_CANCEL,
        DS_KIND_FREECANCEL,
};

enum ds_fn_id {
#define DS_FN(kind, ret, name, params, args) DS_ID_##name,
#include "intercept.def"
#undef DS_FN
        DS_ID_COUNT
};

extern const char *const ds_fn_names[DS_ID_COUNT];
extern const enum ds_kind ds_fn_kinds[DS_ID_COUNT];

/* The id of an intercepted function name, or -1. */
int ds_fn_id(const char *name);

/* ---- libpq copies (libs.c) ---- */

/* How many distinct libpq copies one process can route between. */
#define DS_MAX_LIBS 4

/* One loaded libpq copy. Filled completely before it is published; never
 * changes afterwards (the handle keeps the object mapped). */
struct ds_lib {
        /* its own definitions of the intercepted names; first and line
         * aligned, so that a query loop's few share a line (intercept.def) */
        _Alignas(64) void *fn[DS_ID_COUNT];
        uintptr_t start, end; /* the object's mapped address range */
        void *handle;         /* a dlopen reference that keeps it loaded */
        char path[256];
        ConnStatusType (*status)(const PGconn *);
        int (*socket)(const PGconn *);
        int (*backend_pid)(const PGconn *);
        PGpipelineStatus (*pipeline)(const PGconn *);
        const char *(*encoding_name)(int);
        /* reading a result: the session-state check, connection reuse */
        ExecStatusType (*result_status)(const PGresult *);
        int (*ntuples)(const PGresult *);
        char *(*getvalue)(const PGresult *, int, int);
        void (*clear)(PGresult *);
        /* what connection reuse needs beyond the intercepted names (any NULL:
         * its connections are never parked) */
        struct {
                PQnoticeProcessor (*set_processor)(PGconn *, PQnoticeProcessor, void *);
                PQnoticeReceiver (*set_receiver)(PGconn *, PQnoticeReceiver, void *);
                PGVerbosity (*set_verbosity)(PGconn *, PGVerbosity);
                PGContextVisibility (*set_context)(PGconn *, PGContextVisibility);
                void (*untrace)(PGconn *);
                PGnotify *(*notifies)(PGconn *);
                void (*freemem)(void *);
        } re;
        int no_release; /* a release of its connections could not keep them */
        int idx;        /* index in the registry and in ds_slot_fns */
};

/* The per-library wrappers: ds_slot_fns[lib][id] behaves like the exported
 * interposer of id but always forwards to library lib. */
extern void *const ds_slot_fns[DS_MAX_LIBS][DS_ID_COUNT];

/* The libpq copy that a call returning to ra must reach: the copy ra lies
 * in (libpq calling its own exports), else the one the calling object
 * resolves libpq names to. NULL if no libpq is loaded. */
struct ds_lib *ds_lib_for_caller(const void *ra);

/* The libpq copy that defines the code at addr, registered on first use.
 * NULL if addr is not in a libpq copy (or in this shim). */
struct ds_lib *ds_lib_containing(const void *addr);
/* The libpq copy known to contain addr, or NULL: no lookup, no lock. */
struct ds_lib *ds_lib_at(const void *addr);

/* What every call reads of the registry and of the connection table, in
 * one cache line: the table's generation (conns.c), how a thread marks the
 * connection it is in (conns.c), and how many libpq copies are registered
 * with the address ranges of the first three (libs.c; a copy of each
 * libs[i].start/end, written before n_libs grows). */
struct ds_hot {
        _Alignas(64) _Atomic unsigned long conns_gen;
        _Atomic int asymmetric; /* 1: the releaser's membarrier fences the readers */
        _Atomic int n_libs;
        struct {
                uintptr_t start, end;
        } lib_at[DS_MAX_LIBS];
};
extern struct ds_hot ds_hot;

/* The copy registered in slot k, or NULL. */
struct ds_lib *ds_lib_slot(int k);

/* The real dlsym/dlopen of the C library (never this shim's hooks). */
void *ds_real_dlsym(void *handle, const char *name);
void *ds_real_dlopen(const char *file, int mode);

/* Fork handlers: take / drop the registry locks in a fixed order. */
void ds_libs_lock(void);
void ds_libs_unlock(void);

/* ---- connections (conns.c) ---- */

/* A slot held: the lease and the segment handle it was granted by (a
 * segment recreated meanwhile has a new handle; the old one stays mapped so
 * the lease can still be given back to it). */
struct ds_slot {
        ds_handle *h;
        struct ds_lease_ref ref;
};

/* What the shim knows about one PGconn it has seen created. Owned by the
 * connection table; the fields below `conn` are changed only by the thread
 * that uses the connection (libpq connections are not shared between
 * threads without the application's own locking) or under the table lock. */
struct ds_pending;

struct ds_conn {
        const PGconn *conn;
        struct ds_lib *lib; /* the library that created it: every call goes there */
        /* What every call on it reads or writes comes first, in one cache
         * line with conn and lib (records are cache-line aligned).
         * Idle release: rstate is DS_CONN_OPEN, or owned by one thread while
         * RELEASING / REVIVING, or RELEASED (closed on the server side, no
         * slot; the PGconn keeps its parameters). A thread using the
         * connection enters it (ds_conn_enter) before it reads rstate; the
         * releaser moves OPEN -> RELEASING before it checks for calls inside. */
        _Atomic int rstate;
        _Atomic int pinned;            /* holds session state a reconnect would lose */
        _Atomic uint64_t last_used_ns; /* coarse clock: its last call seen (ds_conn_note_used) */
        _Atomic int used;              /* 1: called since last_used_ns was set */
        _Atomic int fresh;             /* (re)connected, no call seen since (FRESH_UNUSED_NS) */
        _Atomic int busy;              /* nested calls in flight on it (ds_conn_enter) */
        pid_t owner;                   /* the process that opened it; a forked child is not it */
        int leased;                    /* 1: lease is a slot held for this connection */
        struct ds_slot lease;
        char *error; /* dynshim's refusal, returned by PQerrorMessage; or NULL */
        /* The parameters it was opened with, for a later transparent reconnect:
         * keyword/value pairs (conninfo strings become dbname=<conninfo>
         * with expand_dbname). Process memory only, never the segment. */
        char **keywords, **values;
        int expand_dbname;
        int fd;          /* while released: the fd number kept for it, or -1 */
        int nonblocking; /* while released: the mode to restore */
        int encoding;    /* while released: the client encoding to restore */
        /* connection reuse (reuse.c) */
        int events;           /* an event procedure was registered: never parked */
        uint64_t parked_ns;   /* while parked: when */
        struct ds_conn *park; /* while parked: the next in the process's list */
        /* a non-blocking connect that waited for its slot (shim.c): NULL,
         * or its descriptor and wait until PQfinish */
        struct ds_pending *pend;
        /* Transparency (shim.c): the names of custom settings that the
         * program's SQL may have set, each ended by a NUL (ds_note_query),
         * for the session-state check; written by the thread in a call on
         * the connection, read by the releaser while it owns it. */
        char *gucs;
        uint32_t gucs_len;
};

/* PENDING: a non-blocking connect waiting for its slot or, granted,
 * connecting through the descriptor it was given (e->pend). */
enum { DS_CONN_OPEN = 0, DS_CONN_RELEASING, DS_CONN_RELEASED, DS_CONN_REVIVING, DS_CONN_PENDING };

/* Calls fn(e, arg) for every connection record under the table lock. */
void ds_conns_each(void (*fn)(struct ds_conn *e, void *arg), void *arg);

/* ---- keeping fd numbers (fdhook.c) ---- */

/* Within begin/end, on the calling thread: close(fd) puts a placeholder on
 * fd instead of freeing the number; socket() fails with EMFILE (RELEASE)
 * or returns its new socket moved onto fd (RECONNECT). end returns 1 if the
 * number was kept by a close or taken over by a socket. NOSOCKET: socket()
 * fails with EMFILE, and end returns 1 if it was called (a connect that
 * got as far as its socket, and sent nothing). */
enum { DS_FDHOOK_RELEASE = 1, DS_FDHOOK_RECONNECT = 2, DS_FDHOOK_NOSOCKET = 3 };
void ds_fdhook_begin(int mode, int fd);
int ds_fdhook_end(void);
int ds_fd_placeholder(int fd);

/* What a thread keeps for the fast path, in one thread-local block: one
 * GOT entry and one cache line for all of it. */
struct ds_thread;
struct ds_tls {
        int depth;               /* intercepted calls the thread is inside (shim.c) */
        struct ds_thread *self;  /* its record of the connection it is in (conns.c) */
        const void *hot_key;     /* the connection it looked up last (conns.c) */
        struct ds_conn *hot_rec; /* and its record */
        unsigned long hot_gen;   /* the table's generation then */
};
extern __thread struct ds_tls ds_tls __attribute__((tls_model("initial-exec")));

/* A call on e was made: marks it for the life thread, which turns the mark
 * into a time (ds_conn_note_used) before it looks at how long e has gone
 * unused. No clock is read on the application's calls, and the line is
 * written only when the mark is not already there. */
static inline void ds_conn_mark_used(struct ds_conn *e)
{
        if (!atomic_load_explicit(&e->used, memory_order_relaxed))
                atomic_store_explicit(&e->used, 1, memory_order_relaxed);
}
/* The releaser's side: a marked e was last used `now` (and is no longer
 * fresh). Returns 1 if e was marked. */
static inline int ds_conn_note_used(struct ds_conn *e, uint64_t now)
{
        if (!atomic_load_explicit(&e->used, memory_order_relaxed) ||
            !atomic_exchange_explicit(&e->used, 0, memory_order_relaxed))
                return 0;
        atomic_store_explicit(&e->last_used_ns, now, memory_order_relaxed);
        atomic_store_explicit(&e->fresh, 0, memory_order_relaxed);
        return 1;
}

/* Records a new connection (conn must not be in the table). 0 or -ENOMEM. */
int ds_conn_add(struct ds_conn *c);
/* The record of conn, or NULL. The record stays valid until removed by the
 * thread that uses the connection. */
struct ds_conn *ds_conn_find(const void *conn);
/* Takes the record of conn out of the table; the caller frees it. */
struct ds_conn *ds_conn_remove(const void *conn);
void ds_conn_free(struct ds_conn *c);
void ds_conns_lock(void);
void ds_conns_unlock(void);

/* A call is inside e from enter to leave: the idle release leaves it
 * alone. enter returns how (pass it to leave); the caller then reads the
 * state. try_enter takes the thread's own record only, and only if e is
 * OPEN: 1, or 0 with nothing taken. */
enum { DS_IN_NONE = 0, DS_IN_RECORD = 1, DS_IN_COUNTER = 2 };
int ds_conn_enter(struct ds_conn *e);
int ds_conn_try_enter(struct ds_conn *e);
void ds_conn_leave(struct ds_conn *e, int how);
/* The releaser's side: e[0..n) are in RELEASING; those a call is inside go
 * back to OPEN and leave the array. Returns how many remain. */
int ds_conns_unused(struct ds_conn **e, int n);
/* Whether any thread is inside a call on a connection now. */
int ds_conns_any_inside(void);
/* Both sides order themselves as on a kernel without membarrier
 * (private expedited); for the tests of that path. */
void ds_conns_without_membarrier(void);
void ds_conns_fork_prepare(void);
void ds_conns_fork_parent(void);
void ds_conns_fork_child(void);

/* ---- connection reuse (reuse.c) ---- */

/* Connect parameters as keyword/value pairs (a conninfo string is
 * dbname=<conninfo> with expand_dbname): what a connection was opened with. */
struct ds_params {
        const char *const *keys, *const *vals;
        size_t n;
        int expand;
};

/* Remembers what a fresh connection of e->lib looks like (its notice
 * hooks); at the end of every connect that did not fail. */
void ds_reuse_note_fresh(struct ds_conn *e);

/* At PQfinish of e (out of the table, owned by this process, holding a
 * slot, OPEN): parks it if the pool has reuse on and the connection can be
 * brought back to a fresh state. 1: parked (the record is kept), else 0. */
int ds_reuse_park(struct ds_conn *e);

/* Before a connect: a parked connection of this process from lib opened
 * with exactly p, reset and ready (back out of the parked list, not yet in
 * the table), or NULL. */
struct ds_conn *ds_reuse_take(struct ds_lib *lib, const struct ds_params *p);

/* Closes parked connections of this process: every one (all), else those
 * parked longer than the pool's reuse_timeout or all when reuse is off; at
 * most max. Returns how many slots went back. */
uint32_t ds_reuse_close(ds_handle *h, int all, uint32_t max);

/* 1 if this process has parked connections. */
int ds_reuse_any(void);

void ds_reuse_lock(void);
void ds_reuse_unlock(void);

/* Closes e for real (libpq's PQfinish) and gives its slot back once the
 * backend is gone; frees the record (shim.c). */
void ds_finish_now(struct ds_conn *e);

/* In a process that does not own e (a forked child): closes it without
 * touching the parent's session (shim.c). */
void ds_forget_inherited(struct ds_conn *e);

/* ---- the call record (shim.c) ---- */

/* The fast path of a state getter or an activity call: the record of
 * conn, entered, when the call needs nothing but the real function of the
 * connection's library (a known, OPEN connection; not nested); else NULL
 * and nothing done. A call libpq makes into its own exports (PQexec's
 * PQgetResult) needs no bookkeeping at all: then *inner is the caller's
 * copy's function (else NULL), for the wrapper to call as it is. */
struct ds_conn *ds_fast_enter(int id, int slot, const void *ra, const void *conn, void **inner);
void ds_fast_leave(struct ds_conn *e);

struct ds_call {
        int id;
        enum ds_kind kind;
        int nested; /* made by libpq itself inside an intercepted call */
        int skip;   /* the real function is not called; out is the result */
        const void *ra;
        const void *conn; /* the PGconn argument, for kinds that take one */
        struct ds_lib *lib;
        void *real; /* the function the wrapper calls */
        struct ds_conn *entry;
        int leased;
        struct ds_slot lease;
        ds_handle *coord;    /* activity: the handle whose clock the return touches */
        int busy;            /* how the call is inside entry (DS_IN_*), for ds_conn_leave */
        int gone_fd;         /* finish: a duplicate of the socket, to see the backend go */
        struct ds_wait wait; /* a non-blocking connect's queued wait */
        ds_handle *wait_h;   /* and the handle it waits on */
        /* A connect's arguments as the caller passed them (not copied; set
         * by the wrapper before ds_begin, copied into the record by ds_end). */
        struct {
                const char *conninfo;
                const char *const *keywords, *const *values;
                int expand_dbname;
                const char *setdb[7]; /* PQsetdbLogin's, in order */
        } args;
        union {
                PGconn *conn;
                PostgresPollingStatusType poll;
                PGPing ping;
                int i;
                char *str;
                void *ptr;
        } out;
};

/* The end of the fast path of a call that talks to the server (entered by
 * ds_fast_enter): also touches the activity clock. */
void ds_fast_activity_end(struct ds_conn *e);

/* Every wrapper: ds_begin decides (and returns 1 if the real function must
 * be called through c->real), the wrapper calls it and stores the result in
 * c->out, then ds_end does the bookkeeping. slot < 0: route by caller. */
int ds_begin(struct ds_call *c, int id, int slot, const void *ra, const void *conn);
void ds_end(struct ds_call *c);

/* ds_fast_activity_end of a call whose result may mean the connection
 * broke: its status is looked at (a broken connection gives its slot back). */
void ds_fast_activity_end_suspect(struct ds_conn *e);

/* The end of PQbackendPID's fast path: the connection is pinned (a PID the
 * program knows must keep naming its session). */
void ds_fast_pid_leave(struct ds_conn *e);

/* SQL text the program sends on e: a text with a dot may set a custom
 * setting (SET a.b, set_config('a.b', ...)); its names are noted in e for
 * the session-state check. Costs one strchr on other texts. */
void ds_scan_query(struct ds_conn *e, const char *sql);
static inline void ds_note_query(struct ds_conn *e, const char *sql)
{
        if (sql && __builtin_expect(strchr(sql, '.') != NULL, 0))
                ds_scan_query(e, sql);
}

/* ---- cancel objects (cancel.c) ---- */

/* PQgetCancel returned cancel for e's connection: follow it to later
 * sessions of that connection. 0, or -ENOSPC (the table is full: e is
 * pinned instead). */
int ds_cancel_note(PGcancel *cancel, struct ds_conn *e);
/* e was reconnected transparently: the cancel objects taken for it now
 * reach the new session. */
void ds_cancel_refresh(struct ds_conn *e);
/* e's connection is closed: its cancel objects are no longer followed. */
void ds_cancel_forget(const PGconn *conn);
/* PQcancel, PQfreeCancel: the real function to call (never NULL), with
 * *cancel replaced by the object of the session now behind it. Takes no
 * lock on PQcancel's path (a signal handler may call it). */
void *ds_cancel_route(int id, int slot, const void *ra, PGcancel **cancel);
void ds_cancel_lock(void);
void ds_cancel_unlock(void);

/* ---- logging (shim.c) ---- */

enum ds_log_level { DS_LOG_WARN = 0, DS_LOG_INFO = 1, DS_LOG_DEBUG = 2 };
extern int ds_log_level;
void ds_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define ds_debug(...) (ds_log_level >= DS_LOG_DEBUG ? ds_log(DS_LOG_DEBUG, __VA_ARGS__) : (void)0)

#endif
