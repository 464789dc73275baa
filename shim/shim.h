/* shim.h - the internals of libdynshim.so shared by its files: the
 * intercepted-function ids, the registry of loaded libpq copies, the
 * connection table, the call record a wrapper passes through, and logging. */
#ifndef DYNSHIM_SHIM_H
#define DYNSHIM_SHIM_H

#include <libpq-fe.h>
#include <stdatomic.h>
#include <stdint.h>
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
        uintptr_t start, end; /* the object's mapped address range */
        void *handle;         /* a dlopen reference that keeps it loaded */
        char path[256];
        void *fn[DS_ID_COUNT]; /* its own definitions of the intercepted names */
        ConnStatusType (*status)(const PGconn *);
        int (*socket)(const PGconn *);
        int (*backend_pid)(const PGconn *);
        PGpipelineStatus (*pipeline)(const PGconn *);
        const char *(*encoding_name)(int);
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
struct ds_conn {
        struct ds_conn *next; /* hash chain */
        const PGconn *conn;
        struct ds_lib *lib; /* the library that created it: every call goes there */
        pid_t owner;        /* the process that opened it; a forked child is not it */
        int leased;         /* 1: lease is a slot held for this connection */
        struct ds_slot lease;
        char *error; /* dynshim's refusal, returned by PQerrorMessage; or NULL */
        /* The parameters it was opened with, for a later transparent reconnect:
         * keyword/value pairs (conninfo strings become dbname=<conninfo>
         * with expand_dbname). Process memory only, never the segment. */
        char **keywords, **values;
        int expand_dbname;
        _Atomic int busy; /* calls in flight on it (and state checks) */
        /* Idle release: rstate is DS_CONN_OPEN, or owned by one thread while
         * RELEASING / REVIVING, or RELEASED (closed on the server side, no
         * slot; the PGconn keeps its parameters). A thread using the
         * connection raises busy before it reads rstate; the releaser moves
         * OPEN -> RELEASING before it reads busy. */
        _Atomic int rstate;
        int pinned;                    /* holds session state a reconnect would lose */
        int fd;                        /* while released: the fd number kept for it, or -1 */
        int nonblocking;               /* while released: the mode to restore */
        int encoding;                  /* while released: the client encoding to restore */
        _Atomic uint64_t last_used_ns; /* coarse clock, end of its last call */
};

enum { DS_CONN_OPEN = 0, DS_CONN_RELEASING, DS_CONN_RELEASED, DS_CONN_REVIVING };

/* Calls fn(e, arg) for every connection record under the table lock. */
void ds_conns_each(void (*fn)(struct ds_conn *e, void *arg), void *arg);

/* ---- keeping fd numbers (fdhook.c) ---- */

/* Within begin/end, on the calling thread: close(fd) puts a placeholder on
 * fd instead of freeing the number; socket() fails with EMFILE (RELEASE)
 * or returns its new socket moved onto fd (RECONNECT). end returns 1 if the
 * number was kept by a close or taken over by a socket. */
enum { DS_FDHOOK_RELEASE = 1, DS_FDHOOK_RECONNECT = 2 };
void ds_fdhook_begin(int mode, int fd);
int ds_fdhook_end(void);
int ds_fd_placeholder(int fd);

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

/* ---- the call record (shim.c) ---- */

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
        ds_handle *coord; /* activity: the handle its in-flight mark went to */
        int busy;         /* entry->busy was raised for this call */
        int gone_fd;      /* finish: a duplicate of the socket, to see the backend go */
        /* A connect's arguments as the caller passed them (not copied; set
         * by the wrapper before ds_begin, copied into the record by ds_end). */
        struct {
                const char *conninfo;
                const char *const *keywords, *const *values;
                int expand_dbname;
                const char *setdb[7]; /* PQsetdbLogin's, in order */
                const char *query;    /* activity: SQL text, or NULL */
                const char *stmt;     /* PQprepare/PQsendPrepare: the name */
        } args;
        union {
                PGconn *conn;
                PostgresPollingStatusType poll;
                PGPing ping;
                int i;
                char *str;
        } out;
};

/* Every wrapper: ds_begin decides (and returns 1 if the real function must
 * be called through c->real), the wrapper calls it and stores the result in
 * c->out, then ds_end does the bookkeeping. slot < 0: route by caller. */
int ds_begin(struct ds_call *c, int id, int slot, const void *ra, const void *conn);
void ds_end(struct ds_call *c);

/* ---- logging (shim.c) ---- */

enum ds_log_level { DS_LOG_WARN = 0, DS_LOG_INFO = 1, DS_LOG_DEBUG = 2 };
extern int ds_log_level;
void ds_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define ds_debug(...) (ds_log_level >= DS_LOG_DEBUG ? ds_log(DS_LOG_DEBUG, __VA_ARGS__) : (void)0)

#endif
