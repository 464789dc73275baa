/* shim.c - the shim's decisions: configuration from the environment, the
 * coordinator handle, and what happens around each kind of intercepted call
 * (acquire before a connect, release on finish or failure, fork ownership,
 * activity). Nothing runs at load time: state is built on the first libpq
 * call, so processes that never use libpq are untouched. */
#include "shim.h"

#include "env.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---- logging ---- */

int ds_log_level = DS_LOG_WARN;
static int log_fd = 2;

void ds_log(int level, const char *fmt, ...)
{
        if (level > ds_log_level)
                return;
        int saved = errno;
        static const char *const tag[] = {"warning", "info", "debug"};
        char buf[1024];
        int n = snprintf(buf, sizeof(buf), "dynshim[%d]: %s: ", (int)getpid(), tag[level]);
        va_list ap;
        va_start(ap, fmt);
        int m = vsnprintf(buf + n, sizeof(buf) - (size_t)n - 1, fmt, ap);
        va_end(ap);
        size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
        if (len > sizeof(buf) - 2)
                len = sizeof(buf) - 2;
        buf[len++] = '\n';
        ssize_t w = write(log_fd, buf, len);
        (void)w;
        errno = saved;
}

/* ---- configuration ---- */

static struct {
        const char *segment;
        uint32_t timeout_ms; /* UINT32_MAX: the pool's wait_timeout */
        int closed;          /* DYNSHIM_ON_ERROR=closed */
        char scraper[DS_NAME_MAX];
} cfg = {.timeout_ms = UINT32_MAX};

/* Every DYNSHIM_* variable is read with secure_getenv: in a process
 * running with AT_SECURE (setuid, setgid, file capabilities) the invoking
 * user's environment chooses nothing (no log file to append to, no
 * segment, no scraper name): the defaults apply. */
static void read_log_env(void)
{
        const char *file = secure_getenv("DYNSHIM_LOG_FILE");
        if (file && *file) {
                int fd = open(file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
                if (fd >= 0)
                        log_fd = fd;
                else
                        ds_log(DS_LOG_WARN,
                               "cannot open DYNSHIM_LOG_FILE \"%s\": %s; logging to stderr", file,
                               strerror(errno));
        }
        const char *v = secure_getenv("DYNSHIM_LOG");
        if (v && *v && ds_env_log_level(v, &ds_log_level) != 0)
                ds_log(
                    DS_LOG_WARN,
                    "DYNSHIM_LOG=\"%s\" is not one of warn, info, debug (or 0, 1, 2); using warn",
                    v);
}

static void derive_scraper(char *out, size_t len)
{
        static char buf[4096];
        ssize_t n = 0;
        int fd = open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
                n = read(fd, buf, sizeof(buf) - 1);
                close(fd);
        }
        if (n < 0)
                n = 0;
        buf[n] = '\0';
        ds_scraper_from_cmdline(buf, (size_t)n, out, len);
}

static pthread_mutex_t attach_mutex;

static void fork_prepare(void)
{
        pthread_mutex_lock(&attach_mutex);
        ds_libs_lock();
        ds_conns_fork_prepare();
        ds_reuse_lock();
}

static void fork_parent(void)
{
        ds_reuse_unlock();
        ds_conns_fork_parent();
        ds_libs_unlock();
        pthread_mutex_unlock(&attach_mutex);
}

static void fork_child(void)
{
        ds_reuse_unlock();
        ds_conns_fork_child();
        ds_libs_unlock();
        pthread_mutex_unlock(&attach_mutex);
}

static pthread_once_t env_once = PTHREAD_ONCE_INIT;

static void read_env(void)
{
        read_log_env();
        cfg.segment = ds_segment_name(NULL);
        const char *v = secure_getenv("DYNSHIM_WAIT_TIMEOUT");
        if (v && *v && ds_env_wait_timeout(v, &cfg.timeout_ms) != 0)
                ds_log(
                    DS_LOG_WARN,
                    "DYNSHIM_WAIT_TIMEOUT=\"%s\" is not a duration (seconds such as 30 or 0.5, or "
                    "500ms); using the pool's wait_timeout",
                    v);
        v = secure_getenv("DYNSHIM_ON_ERROR");
        if (v && *v && ds_env_on_error(v, &cfg.closed) != 0)
                ds_log(DS_LOG_WARN, "DYNSHIM_ON_ERROR=\"%s\" is not open or closed; using open", v);
        v = secure_getenv("DYNSHIM_SCRAPER");
        if (v && *v)
                snprintf(cfg.scraper, sizeof(cfg.scraper), "%s", v);
        else
                derive_scraper(cfg.scraper, sizeof(cfg.scraper));
        pthread_atfork(fork_prepare, fork_parent, fork_child);
}

/* ---- the coordinator ---- */

static pthread_mutex_t attach_mutex = PTHREAD_MUTEX_INITIALIZER;
static ds_handle *_Atomic coord; /* the segment connects go to; NULL: unusable */
static char unusable[400];       /* why there is none (under attach_mutex) */
static uint64_t next_attach_ns;  /* no new attempt before (under attach_mutex) */

/* How often a process without a usable segment looks again (a segment
 * repaired with dyncoord --init --force is picked up within this). */
#define REATTACH_NS (1000ull * 1000 * 1000)

static ds_handle *attach(void)
{
        char err[300] = "";
        ds_handle *h = NULL;
        int rc = ds_attach(cfg.segment, DS_ATTACH_CREATE, &h, err, sizeof(err));
        if (rc == 0)
                rc = ds_set_scraper(h, cfg.scraper);
        if (rc) {
                snprintf(unusable, sizeof(unusable), "segment \"%s\" is unusable: %s", cfg.segment,
                         err[0] ? err : strerror(-rc));
                if (h)
                        ds_detach(h);
                return NULL;
        }
        ds_debug("attached to segment \"%s\" as scraper \"%s\"", cfg.segment, cfg.scraper);
        return h;
}

/* The handle connects go to: attached on first use, looked for again at
 * most every REATTACH_NS while there is none, and at once when stale is the
 * current handle (its segment was destroyed or recreated). A replaced
 * handle stays mapped: leases granted by it are given back to it. NULL with
 * the reason in why. */
static ds_handle *current_coord(ds_handle *stale, char *why, size_t whylen)
{
        ds_handle *h = atomic_load(&coord);
        if (h && h != stale)
                return h;
        pthread_mutex_lock(&attach_mutex);
        h = atomic_load(&coord);
        uint64_t now = ds_now_ns();
        if ((h && h == stale) || (!h && now >= next_attach_ns)) {
                next_attach_ns = now + REATTACH_NS;
                ds_handle *fresh = attach();
                if (fresh || h == stale)
                        atomic_store(&coord, fresh);
                if (fresh && stale)
                        ds_log(DS_LOG_INFO, "segment \"%s\" was recreated; using the new one",
                               cfg.segment);
                h = fresh;
        }
        if (!h)
                snprintf(why, whylen, "%s", unusable);
        pthread_mutex_unlock(&attach_mutex);
        return h;
}

/* Warns once per process that connections pass through uncounted. */
static void warn_open(const char *why)
{
        static _Atomic pid_t warned;
        pid_t me = getpid();
        if (atomic_exchange(&warned, me) != me)
                ds_log(DS_LOG_WARN, "%s; passing connections through (DYNSHIM_ON_ERROR=open)", why);
}

enum { GRANTED = 0, PASS = 1, REFUSED = -1 };

/* 1 if the calling thread, about to wait for a slot, holds one that it
 * cannot give back meanwhile: the connection it made its last call on is
 * this process's, holds a slot and cannot be released (a transaction is
 * open, or it is pinned). A thread that holds a connection while it opens
 * another: its wait counts as hold-and-wait (ds_acquire_ex). */
static int holds_stuck_connection(void)
{
        const void *last = ds_tls.hot_key;
        struct ds_conn *e = last ? ds_conn_find(last) : NULL;
        if (!e || e->owner != getpid() || !e->leased || atomic_load(&e->rstate) != DS_CONN_OPEN)
                return 0;
        PGTransactionStatusType (*tx)(const PGconn *) = e->lib->fn[DS_ID_PQtransactionStatus];
        if (e->pinned || e->lib->no_release)
                return 1;
        return tx && tx(e->conn) != PQTRANS_IDLE && tx(e->conn) != PQTRANS_UNKNOWN;
}

/* Takes a slot for a connect. GRANTED (c->lease), PASS (no pool to ask,
 * DYNSHIM_ON_ERROR=open) or REFUSED with the message in msg. */
static int acquire(struct ds_call *c, char *msg, size_t len)
{
        char why[1024] = "";
        unsigned flags = holds_stuck_connection() ? DS_ACQUIRE_HOLDS : 0;
        ds_handle *h = current_coord(NULL, why, sizeof(why));
        int rc =
            h ? ds_acquire_ex(h, cfg.timeout_ms, flags, &c->lease.ref, why, sizeof(why)) : -ENOENT;
        if (rc == -ESTALE) {
                h = current_coord(h, why, sizeof(why));
                rc = h ? ds_acquire_ex(h, cfg.timeout_ms, flags, &c->lease.ref, why, sizeof(why))
                       : -ENOENT;
        }
        if (rc == 0) {
                c->lease.h = h;
                c->leased = 1;
                return GRANTED;
        }
        if (rc == -ETIMEDOUT || rc == -EDEADLK) {
                snprintf(msg, len, "dynshim: %s", why);
                if (rc == -EDEADLK)
                        ds_log(DS_LOG_WARN, "%s", msg);
                return REFUSED;
        }
        if (h)
                snprintf(why, sizeof(why), "cannot take a connection slot from segment \"%s\": %s",
                         cfg.segment, strerror(-rc));
        if (cfg.closed) {
                snprintf(msg, len, "dynshim: %s (DYNSHIM_ON_ERROR=closed)", why);
                return REFUSED;
        }
        warn_open(why);
        return PASS;
}

static void release(const struct ds_slot *lease)
{
        int rc = ds_release(lease->h, &lease->ref);
        if (rc)
                ds_debug("lease %u/%llu was not released: %s", lease->ref.idx,
                         (unsigned long long)lease->ref.id, strerror(-rc));
}

/* Records the connection's server backend with its slot, once connected:
 * if this process dies while that backend still runs (a query outlives its
 * client), the slot drains instead of going to the next client at once. */
static void note_backend(struct ds_lib *lib, const PGconn *conn, const struct ds_slot *lease)
{
        if (!lib || !lib->backend_pid || !lib->status || lib->status(conn) != CONNECTION_OK)
                return;
        int pid = lib->backend_pid(conn);
        int rc = pid > 0 ? ds_lease_set_backend(lease->h, &lease->ref, pid) : 0;
        if (rc)
                ds_debug("backend %d not recorded with lease %u: %s", pid, lease->ref.idx,
                         strerror(-rc));
}

/* Hands a lease held for a connection back, once. */
static void drop_lease(struct ds_conn *e)
{
        ds_conns_lock();
        int had = e->leased && e->owner == getpid();
        struct ds_slot l = e->lease;
        e->leased = 0;
        ds_conns_unlock();
        if (had)
                release(&l);
}

/* ---- a slot goes back only when its backend is gone ---- */

/* The server counts a backend until it exits, which can be after PQfinish
 * returns (and much later if it was running a query). A slot given back
 * earlier lets the next client's backend start beside it: more backends
 * than pool_size on the server. PostgreSQL removes a backend from
 * pg_stat_activity before its socket closes, so end-of-file on a duplicate
 * of the client's socket proves the backend is gone. A finish waits for that
 * briefly; a backend still busy then is left to drain, and its slot goes
 * back at a later connect (or with the process, through the pool's reclaim). */
#define GONE_WAIT_MS 200
#define MAX_DRAINS   64

static pthread_mutex_t drain_mutex = PTHREAD_MUTEX_INITIALIZER;
static struct drain {
        int fd;
        struct ds_slot lease;
} drains[MAX_DRAINS];
static int n_drains;

/* 1 once the peer of fd has closed (or the socket failed), else 0; waits up
 * to timeout_ms. Reads and discards whatever the backend still sends. */
static int backend_gone(int fd, int timeout_ms)
{
        char buf[512];
        for (;;) {
                struct pollfd p = {fd, POLLIN | POLLRDHUP, 0};
                int n = poll(&p, 1, timeout_ms);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        return n < 0;
                ssize_t r = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
                if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
                        return 1;
                if (r < 0)
                        return 0;
                timeout_ms = timeout_ms > 5 ? 5 : timeout_ms; /* drained some: look again */
        }
}

/* Gives back the slots of drained connections whose backend is gone. */
static void reap_drains(void)
{
        if (__atomic_load_n(&n_drains, __ATOMIC_RELAXED) == 0)
                return;
        struct ds_slot done[MAX_DRAINS];
        int n_done = 0;
        pthread_mutex_lock(&drain_mutex);
        for (int i = 0; i < n_drains;) {
                if (backend_gone(drains[i].fd, 0)) {
                        close(drains[i].fd);
                        done[n_done++] = drains[i].lease;
                        drains[i] = drains[--n_drains];
                } else {
                        i++;
                }
        }
        pthread_mutex_unlock(&drain_mutex);
        for (int i = 0; i < n_done; i++)
                release(&done[i]);
}

/* Releases lease once the backend behind fd (a duplicate of the finished
 * connection's socket) is gone; closes fd. */
static void release_when_gone(int fd, const struct ds_slot *lease)
{
        int save = errno;
        /* our duplicate must not keep the backend's read side open */
        shutdown(fd, SHUT_WR);
        if (backend_gone(fd, GONE_WAIT_MS)) {
                close(fd);
                release(lease);
                errno = save;
                return;
        }
        pthread_mutex_lock(&drain_mutex);
        if (n_drains < MAX_DRAINS) {
                drains[n_drains].fd = fd;
                drains[n_drains].lease = *lease;
                n_drains++;
                fd = -1;
        }
        pthread_mutex_unlock(&drain_mutex);
        if (fd >= 0) {
                /* too many draining at once: wait for this one */
                backend_gone(fd, -1);
                close(fd);
                release(lease);
        }
        ds_debug("a finished connection's backend is still running; its slot waits for it");
        errno = save;
}

static uint64_t coarse_now(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC_COARSE, &ts); /* vDSO: no system call */
        return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* e was (re)connected just now: its unused time starts, and it is fresh
 * until a call on it is seen (FRESH_UNUSED_NS). */
static void stamp_connected(struct ds_conn *e)
{
        atomic_store(&e->last_used_ns, coarse_now());
        atomic_store(&e->fresh, 1);
}

/* Activity: a coarse timestamp, published at most every 100 ms per
 * process. Returns the time read. */
static uint64_t touch(ds_handle *h)
{
        static _Atomic uint64_t last;
        uint64_t now = coarse_now();
        uint64_t prev = atomic_load_explicit(&last, memory_order_relaxed);
        if (now - prev < 100000000ull)
                return now;
        atomic_store_explicit(&last, now, memory_order_relaxed);
        ds_touch(h, now);
        return now;
}

/* ---- connections ---- */

static struct ds_conn *new_entry(struct ds_call *c, PGconn *conn)
{
        /* cache-line aligned: threads using neighbouring records would
         * otherwise share lines they write on every call */
        struct ds_conn *e = aligned_alloc(64, (sizeof(*e) + 63) / 64 * 64);
        if (!e)
                return NULL;
        memset(e, 0, sizeof(*e));
        e->conn = conn;
        e->lib = c->lib;
        e->owner = getpid();
        e->fd = -1;
        return e;
}

/* msg followed by a newline, as libpq ends its own messages; NULL when out
 * of memory. */
static char *error_text(const char *msg)
{
        size_t len = strlen(msg);
        char *err = malloc(len + 2);
        if (err) {
                memcpy(err, msg, len);
                memcpy(err + len, "\n", 2);
        }
        return err;
}

/* Makes msg the connection's PQerrorMessage until its next success. */
static void set_error(struct ds_conn *e, const char *msg)
{
        char *err = error_text(msg);
        ds_conns_lock();
        free(e->error);
        e->error = err;
        ds_conns_unlock();
}

/* A real PGconn of the caller's library that failed without touching the
 * network (an invalid option), whose PQerrorMessage is msg. */
static PGconn *refused_conn(struct ds_call *c, const char *msg)
{
        PGconn *(*start)(const char *) = c->lib ? c->lib->fn[DS_ID_PQconnectStart] : NULL;
        PGconn *conn = start ? start("dynshim_refused=1") : NULL;
        if (!conn)
                return NULL;
        struct ds_conn *e = new_entry(c, conn);
        char *err = error_text(msg);
        if (!e || !err) {
                free(e);
                free(err);
                return conn; /* still a failed connection, with libpq's message */
        }
        e->error = err;
        if (ds_conn_add(e) != 0)
                ds_conn_free(e); /* still a failed connection, with libpq's message */
        ds_log(DS_LOG_INFO, "%s", msg);
        return conn;
}

/* In a process that does not own conn (a forked child), makes the real
 * close act on /dev/null instead of the parent's server socket: libpq's
 * Terminate message would otherwise end the parent's session. */
static void neutralize_socket(struct ds_conn *e)
{
        int fd = e->lib->socket ? e->lib->socket(e->conn) : -1;
        if (fd < 0)
                return;
        int nul = open("/dev/null", O_RDWR | O_CLOEXEC);
        if (nul < 0 || dup3(nul, fd, O_CLOEXEC) < 0)
                ds_log(DS_LOG_WARN, "cannot detach an inherited connection's socket %d: %s", fd,
                       strerror(errno));
        if (nul >= 0)
                close(nul);
        ds_debug("inherited connection %p closed without touching the parent's session",
                 (void *)e->conn);
}

void ds_forget_inherited(struct ds_conn *e)
{
        void (*finish)(PGconn *) = e->lib->fn[DS_ID_PQfinish];
        neutralize_socket(e);
        if (finish)
                finish((PGconn *)e->conn);
        ds_conn_free(e);
}

void ds_finish_now(struct ds_conn *e)
{
        void (*finish)(PGconn *) = e->lib->fn[DS_ID_PQfinish];
        int fd = e->lib->socket ? e->lib->socket(e->conn) : -1;
        int gone_fd = fd >= 0 && e->leased ? fcntl(fd, F_DUPFD_CLOEXEC, 0) : -1;
        if (finish)
                finish((PGconn *)e->conn);
        if (e->leased) {
                if (gone_fd >= 0)
                        release_when_gone(gone_fd, &e->lease);
                else
                        release(&e->lease);
        }
        ds_conn_free(e);
}

static int status_bad(struct ds_call *c, const PGconn *conn)
{
        return !conn || (c->lib->status && c->lib->status(conn) == CONNECTION_BAD);
}

/* ---- idle and surplus release ---- */

static char empty_message[1];

/* How long the life thread waits for a released connection's idle backend
 * to exit; a slot whose backend has not gone by then drains in the pool
 * (counted against pool_size until the backend is gone). */
#define RELEASE_GONE_WAIT_MS 2000

/* Waits while another thread releases or reconnects e; OPEN or RELEASED. */
static int settle(struct ds_conn *e)
{
        int s;
        while ((s = atomic_load(&e->rstate)) == DS_CONN_RELEASING || s == DS_CONN_REVIVING) {
                struct timespec ts = {0, 1000000};
                nanosleep(&ts, NULL);
        }
        return s;
}

static void register_advice(ds_handle *h);
static void advice_handler(void *arg);

/* Reconnects a released connection in place (the calling thread owns it
 * in REVIVING): a slot first (may wait), then the real PQreset with the
 * socket moved onto the kept fd number, then the client-side state the
 * application set. 0, or -1 with the connection still released (no slot:
 * the message is its PQerrorMessage) or really broken (no server). */
static int revive(struct ds_call *c, struct ds_conn *e)
{
        PGconn *conn = (PGconn *)e->conn;
        struct ds_lib *lib = e->lib;
        char msg[1100];
        int a = acquire(c, msg, sizeof(msg));
        if (a == REFUSED) {
                set_error(e, msg);
                ds_log(DS_LOG_INFO, "%s", msg);
                atomic_store(&e->rstate, DS_CONN_RELEASED);
                return -1;
        }
        void (*reset)(PGconn *) = lib->fn[DS_ID_PQreset];
        int (*setnb)(PGconn *, int) = lib->fn[DS_ID_PQsetnonblocking];
        int (*enc)(const PGconn *) = lib->fn[DS_ID_PQclientEncoding];
        int (*setenc)(PGconn *, const char *) = lib->fn[DS_ID_PQsetClientEncoding];
        ds_fdhook_begin(DS_FDHOOK_RECONNECT, e->fd);
        reset(conn);
        int kept = ds_fdhook_end();
        int ok = lib->status(conn) == CONNECTION_OK;
        if (ok) {
                if (e->nonblocking && setnb)
                        setnb(conn, 1);
                if (enc && setenc && lib->encoding_name && enc(conn) != e->encoding)
                        setenc(conn, lib->encoding_name(e->encoding));
                if (!kept && e->fd >= 0) {
                        close(e->fd); /* the placeholder: the socket got another number */
                        e->fd = -1;
                }
        }
        ds_conns_lock();
        free(e->error);
        e->error = NULL;
        e->owner = getpid();
        if (ok && a == GRANTED) {
                e->leased = 1;
                e->lease = c->lease;
        }
        ds_conns_unlock();
        if (!ok && a == GRANTED)
                release(&c->lease);
        if (ok && a == GRANTED) {
                note_backend(lib, conn, &c->lease);
                ds_note_reconnect(c->lease.h);
                register_advice(c->lease.h);
        }
        ds_debug("released connection %p reconnected: %s, socket %d", (void *)conn,
                 ok ? "ok" : "failed", lib->socket ? lib->socket(conn) : -1);
        stamp_connected(e);
        atomic_store(&e->rstate, DS_CONN_OPEN);
        return ok ? 0 : -1;
}

/* Brings e (a call on it is starting; busy already raised) to a state the
 * call can use: OPEN, or RELEASED for kinds that report a released
 * connection as healthy, or for a reconnect that got no slot. */
static int enter_conn(struct ds_call *c, struct ds_conn *e)
{
        for (;;) {
                int s = settle(e);
                if (s == DS_CONN_OPEN || c->kind == DS_KIND_GETTER || c->kind == DS_KIND_ERRMSG)
                        return s;
                if (atomic_compare_exchange_strong(&e->rstate, &s, DS_CONN_REVIVING)) {
                        revive(c, e);
                        return atomic_load(&e->rstate);
                }
        }
}

/* ---- pins: session state a reconnect would lose ---- */

/* What a session holds that a reconnect would lose (SPEC 4.5), counted by
 * the server itself: named prepared statements (SQL PREPARE and the
 * protocol's), cursors WITH HOLD, LISTEN, session advisory locks (no
 * transaction is open, so any advisory lock held is a session's), settings
 * changed for the session (SET, set_config(..., false), SET ROLE; not the
 * client encoding, which a reconnect restores) and temporary tables.
 * Whatever statement made them (a DO block, a function, SELECT INTO TEMP),
 * and at no cost to the application's own calls. Names are qualified: the
 * session's search_path cannot redirect them. */
static const char session_state_sql[] =
    "SELECT (SELECT count(*) FROM pg_catalog.pg_prepared_statements)"
    " + (SELECT count(*) FROM pg_catalog.pg_cursors WHERE is_holdable)"
    " + (SELECT count(*) FROM pg_catalog.pg_listening_channels())"
    " + (SELECT count(*) FROM pg_catalog.pg_locks"
    " WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid())"
    " + (SELECT count(*) FROM pg_catalog.pg_settings"
    " WHERE source = 'session' AND name <> 'client_encoding')"
    " + (SELECT count(*) FROM pg_catalog.pg_class"
    " WHERE relnamespace = pg_catalog.pg_my_temp_schema())";

/* How long the release waits for the server's answer. */
#define SESSION_STATE_WAIT_MS 5000

enum { STATE_NONE, STATE_KEPT, STATE_UNKNOWN, STATE_NO_ANSWER };

/* Waits until conn has sent everything and a result (or the end) can be
 * taken without blocking. 0, or -1: the connection failed or the deadline
 * (coarse ns) passed. */
static int await_result(struct ds_lib *lib, PGconn *conn, uint64_t deadline)
{
        int (*flush)(PGconn *) = lib->fn[DS_ID_PQflush];
        int (*consume)(PGconn *) = lib->fn[DS_ID_PQconsumeInput];
        int (*isbusy)(PGconn *) = lib->fn[DS_ID_PQisBusy];
        for (;;) {
                int f = flush(conn);
                if (f < 0)
                        return -1;
                if (!f && !isbusy(conn))
                        return 0;
                uint64_t now = coarse_now();
                if (now >= deadline)
                        return -1;
                struct pollfd p = {lib->socket(conn), f ? POLLIN | POLLOUT : POLLIN, 0};
                int left = (int)((deadline - now) / 1000000) + 1;
                if (p.fd < 0 || (poll(&p, 1, left) < 0 && errno != EINTR))
                        return -1;
                if ((p.revents & (POLLIN | POLLERR | POLLHUP)) && !consume(conn))
                        return -1;
        }
}

/* Asks the server whether e's session holds state a reconnect would lose
 * (the advice thread owns e in RELEASING; it is idle, outside any
 * transaction and not in pipeline mode). STATE_NONE or STATE_KEPT; or
 * STATE_UNKNOWN: the check failed, and the connection is as it was (or
 * broken); or STATE_NO_ANSWER: no answer in time, and the query is still
 * out, so the connection cannot go back to the application as it is. */
static int session_state(struct ds_conn *e)
{
        struct ds_lib *lib = e->lib;
        PGconn *conn = (PGconn *)e->conn;
        int (*send)(PGconn *, const char *) = lib->fn[DS_ID_PQsendQuery];
        PGresult *(*get)(PGconn *) = lib->fn[DS_ID_PQgetResult];
        if (!send || !get || !lib->fn[DS_ID_PQflush] || !lib->fn[DS_ID_PQconsumeInput] ||
            !lib->fn[DS_ID_PQisBusy] || !lib->result_status || !lib->ntuples || !lib->getvalue ||
            !lib->clear)
                return STATE_UNKNOWN;
        if (!send(conn, session_state_sql))
                return STATE_UNKNOWN;
        uint64_t deadline = coarse_now() + SESSION_STATE_WAIT_MS * 1000000ull;
        long long held = -1;
        int failed = 0;
        for (;;) {
                if (await_result(lib, conn, deadline) != 0)
                        return lib->status(conn) == CONNECTION_BAD ? STATE_UNKNOWN
                                                                   : STATE_NO_ANSWER;
                PGresult *r = get(conn);
                if (!r)
                        break;
                if (lib->result_status(r) == PGRES_TUPLES_OK && lib->ntuples(r) == 1)
                        held = atoll(lib->getvalue(r, 0, 0));
                else
                        failed = 1;
                lib->clear(r);
        }
        if (failed || held < 0)
                return STATE_UNKNOWN;
        return held > 0 ? STATE_KEPT : STATE_NONE;
}

/* Closes e on the server side and gives its slot back (the advice thread
 * owns e in RELEASING). 1 if released; else e is OPEN again. */
static int release_conn(struct ds_conn *e, int reason)
{
        PGconn *conn = (PGconn *)e->conn;
        struct ds_lib *lib = e->lib;
        PGTransactionStatusType (*tx)(const PGconn *) = lib->fn[DS_ID_PQtransactionStatus];
        int (*isbusy)(PGconn *) = lib->fn[DS_ID_PQisBusy];
        int (*isnb)(const PGconn *) = lib->fn[DS_ID_PQisnonblocking];
        int (*enc)(const PGconn *) = lib->fn[DS_ID_PQclientEncoding];
        int (*start)(PGconn *) = lib->fn[DS_ID_PQresetStart];
        int fd = lib->socket ? lib->socket(conn) : -1;
        if (!lib->status || !tx || !isbusy || !isnb || !enc || !start || fd < 0 ||
            lib->status(conn) != CONNECTION_OK || tx(conn) != PQTRANS_IDLE || isbusy(conn) ||
            (lib->pipeline && lib->pipeline(conn) != PQ_PIPELINE_OFF)) {
                atomic_store(&e->rstate, DS_CONN_OPEN);
                return 0;
        }
        /* A connection with an event procedure is not asked: the check's
         * result would reach the procedure from this thread. */
        int state = e->events ? STATE_UNKNOWN : session_state(e);
        if (state == STATE_KEPT || state == STATE_UNKNOWN) {
                e->pinned = 1; /* never asked again (until reuse resets it) */
                ds_debug("connection %p is pinned: %s", (void *)conn,
                         state == STATE_KEPT ? "its session holds state a reconnect would lose"
                                             : "its session state could not be checked");
                atomic_store(&e->rstate, DS_CONN_OPEN);
                return 0;
        }
        if (state == STATE_NO_ANSWER)
                ds_log(DS_LOG_WARN,
                       "the server did not answer the session-state check of an idle connection "
                       "within %d ms; the connection is closed",
                       SESSION_STATE_WAIT_MS);
        e->nonblocking = isnb(conn);
        e->encoding = enc(conn);
        /* a duplicate of the socket shows when the backend is gone: only
         * then does the slot go back (the server never sees more backends
         * than pool_size) */
        int gone_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
        /* libpq sends Terminate (and TLS close_notify), closes the socket
         * (a placeholder takes its number) and fails its new attempt at
         * socket(): the PGconn stays, CONNECTION_BAD, with its parameters. */
        ds_fdhook_begin(DS_FDHOOK_RELEASE, fd);
        start(conn);
        int kept = ds_fdhook_end();
        if (lib->status(conn) != CONNECTION_BAD) {
                /* This libpq does not reach the hooks (RTLD_DEEPBIND): it is
                 * reconnecting for real. Finish that and never release its
                 * connections again. */
                PostgresPollingStatusType (*rpoll)(PGconn *) = lib->fn[DS_ID_PQresetPoll];
                PostgresPollingStatusType ps = PGRES_POLLING_WRITING;
                while (rpoll && ps != PGRES_POLLING_OK && ps != PGRES_POLLING_FAILED) {
                        struct pollfd pfd = {lib->socket(conn),
                                             ps == PGRES_POLLING_READING ? POLLIN : POLLOUT, 0};
                        if (pfd.fd < 0 || poll(&pfd, 1, 1000) < 0)
                                break;
                        ps = rpoll(conn);
                }
                int (*setnb)(PGconn *, int) = lib->fn[DS_ID_PQsetnonblocking];
                if (e->nonblocking && setnb)
                        setnb(conn, 1);
                if (gone_fd >= 0)
                        close(gone_fd);
                lib->no_release = 1;
                ds_log(DS_LOG_WARN,
                       "connections of %s cannot be released while idle (its socket calls do not "
                       "reach the shim); they keep their slots",
                       lib->path);
                atomic_store(&e->rstate, DS_CONN_OPEN);
                return 0;
        }
        e->fd = kept ? fd : -1;
        ds_conns_lock();
        struct ds_slot l = e->lease;
        e->leased = 0;
        ds_conns_unlock();
        atomic_store(&e->rstate, DS_CONN_RELEASED);
        int gone = 0;
        if (gone_fd >= 0) {
                shutdown(gone_fd, SHUT_WR);
                gone = backend_gone(gone_fd, RELEASE_GONE_WAIT_MS);
                if (!gone)
                        ds_debug("a released connection's backend is still there after %d ms; "
                                 "its slot drains",
                                 RELEASE_GONE_WAIT_MS);
                close(gone_fd);
        }
        /* not seen gone: the slot stays counted until the backend is */
        int rc = ds_release_for(l.h, &l.ref, gone ? reason : reason | DS_RELEASE_MAY_RUN);
        ds_debug("connection %p released (%s), fd %d %s: %s", (void *)conn,
                 reason == DS_RELEASE_IDLE      ? "idle"
                 : reason == DS_RELEASE_SURPLUS ? "surplus"
                                                : "handed over to a waiting connect",
                 fd, kept ? "kept" : "lost", rc ? strerror(-rc) : "slot returned");
        return 1;
}

#define PICK_MAX 64

struct pick {
        ds_handle *h;
        pid_t me;
        uint64_t now, min_unused_ns;
        struct ds_conn *got[PICK_MAX];
        int n, max;
};

/* Takes a releasable, unused connection of this process exclusively
 * (under the table lock, so it cannot be finished meanwhile). */
static void pick_cb(struct ds_conn *e, void *arg)
{
        struct pick *p = arg;
        if (p->n >= p->max || e->owner != p->me || !e->leased || (p->h && e->lease.h != p->h) ||
            e->pinned || e->lib->no_release || atomic_load(&e->busy))
                return;
        ds_conn_note_used(e, p->now);
        uint64_t unused = p->now - atomic_load(&e->last_used_ns);
        if (!ds_policy_may_take(unused, atomic_load(&e->fresh), p->min_unused_ns))
                return;
        int s = DS_CONN_OPEN;
        if (atomic_compare_exchange_strong(&e->rstate, &s, DS_CONN_RELEASING))
                p->got[p->n++] = e; /* unless a call is inside it (ds_conns_unused) */
}

/* Releases up to n releasable connections of this process unused for
 * min_unused_ns; returns how many. */
static uint32_t release_some(ds_handle *h, uint32_t n, int reason, uint64_t min_unused_ns)
{
        struct pick p = {.h = h,
                         .me = getpid(),
                         .now = coarse_now(),
                         .min_unused_ns = min_unused_ns,
                         .max = PICK_MAX};
        ds_conns_each(pick_cb, &p);
        p.n = ds_conns_unused(p.got, p.n); /* a call that started meanwhile wins */
        uint32_t done = 0;
        for (int i = 0; i < p.n; i++) {
                if (done < n)
                        done += (uint32_t)release_conn(p.got[i], reason);
                else
                        atomic_store(&p.got[i]->rstate, DS_CONN_OPEN);
        }
        return done;
}

static ds_handle *_Atomic advised;          /* the handle the advice handler runs for */
static _Atomic uint32_t advice_period_ms;   /* the life thread's period now */
static _Atomic uint64_t surplus_owed_since; /* coarse ns; 0: no surplus owed */

struct activity {
        uint64_t now;
        int any;
};

static void activity_cb(struct ds_conn *e, void *arg)
{
        struct activity *a = arg;
        a->any |= ds_conn_note_used(e, a->now);
}

static const char *reason_name(int reason)
{
        return reason == DS_RELEASE_IDLE       ? "idle"
               : reason == DS_RELEASE_SURPLUS  ? "surplus"
               : reason == DS_RELEASE_HANDOVER ? "handover"
                                               : "normal";
}

/* Runs on the process's life thread every advice period and when the pool
 * wants slots back: idle release, surplus, and handover to waiting
 * connects, each only of connections unused as long as the pool's policy
 * says (ds_policy_min_unused_ns, ds_policy_may_take). */
static void advice_handler(void *arg)
{
        ds_handle *h = arg;
        struct ds_advice a;
        /* The application's calls since the last look, or one in flight (a
         * long query): the scraper is active. Its calls only mark their
         * connection, so activity reaches the pool from here, before the
         * pool is asked whether anything is idle. */
        struct activity act = {coarse_now(), 0};
        ds_conns_each(activity_cb, &act);
        if (act.any || ds_conns_any_inside())
                touch(h);
        int advised_ok = ds_advise(h, &a) == 0;
        /* parked connections go first: expired ones, every one when a
         * connect waits, and before any connection in use is released */
        uint32_t closed = ds_reuse_close(h, advised_ok && a.waiting > 0, UINT32_MAX);
        if (advised_ok && a.give_back > 0 && ds_reuse_any()) {
                uint32_t more = ds_reuse_close(h, 1, a.give_back);
                closed += more;
                a.give_back -= more;
                if (a.reason == DS_RELEASE_SURPLUS)
                        ds_advice_unused(h, more); /* given back all the same */
        }
        if (closed)
                ds_debug("closed %u parked connection(s)", closed);
        int owed = 0;
        if (advised_ok && a.give_back) {
                uint64_t min_unused = a.min_unused_ns;
                if (a.reason == DS_RELEASE_SURPLUS) {
                        uint64_t now = coarse_now(), since = atomic_load(&surplus_owed_since);
                        if (!since)
                                atomic_store(&surplus_owed_since, since = now);
                        min_unused = ds_policy_surplus_unused_ns(min_unused, now - since);
                }
                uint32_t n = release_some(h, a.give_back, a.reason, min_unused);
                if (n)
                        ds_debug("released %u of %u connection(s) asked for (%s)", n, a.give_back,
                                 reason_name(a.reason));
                if (a.reason == DS_RELEASE_SURPLUS && n < a.give_back) {
                        ds_advice_unused(h, a.give_back - n);
                        owed = 1;
                }
        }
        if (!owed)
                atomic_store(&surplus_owed_since, 0);
        /* while a surplus is owed, look for a moment between calls often */
        uint32_t p = advised_ok ? a.period_ms : 1000;
        if (owed && p > 100)
                p = 100;
        if (p != atomic_load(&advice_period_ms)) {
                atomic_store(&advice_period_ms, p);
                ds_set_advice_handler(h, advice_handler, h, p);
        }
}

/* Asks the pool for release advice once this process holds a slot. */
static void register_advice(ds_handle *h)
{
        if (atomic_load_explicit(&advised, memory_order_relaxed) == h)
                return;
        atomic_store(&advised, h);
        atomic_store(&advice_period_ms, 1000);
        ds_set_advice_handler(h, advice_handler, h, 1000);
}

/* ---- begin / end ---- */

static long missing_function(void)
{
        errno = ENOSYS;
        return 0;
}

static void params_of(const struct ds_call *c, struct ds_params *p, const char *k[8],
                      const char *v[8]);

/* A parked connection opened with the same parameters, instead of a new
 * one: 1 if c->out is it. */
static int reuse_parked(struct ds_call *c)
{
        if ((c->kind != DS_KIND_CONNECT && c->kind != DS_KIND_START) || !ds_reuse_any())
                return 0;
        const char *k[8], *v[8];
        struct ds_params p;
        params_of(c, &p, k, v);
        struct ds_conn *e = ds_reuse_take(c->lib, &p);
        if (!e)
                return 0;
        atomic_store(&e->busy, 0);
        atomic_store(&e->rstate, DS_CONN_OPEN);
        stamp_connected(e);
        if (ds_conn_add(e) != 0) {
                ds_finish_now(e); /* cannot be tracked: a new connection instead */
                return 0;
        }
        c->out.conn = (PGconn *)e->conn;
        return 1;
}

static int begin_connect(struct ds_call *c)
{
        char msg[1100];
        reap_drains();
        if (reuse_parked(c)) {
                c->skip = 1;
                return 0;
        }
        int a = acquire(c, msg, sizeof(msg));
        if (a != REFUSED)
                return 1;
        if (c->kind == DS_KIND_PING) {
                c->out.ping = PQPING_REJECT;
                ds_log(DS_LOG_INFO, "%s", msg);
        } else {
                c->out.conn = refused_conn(c, msg);
        }
        c->skip = 1;
        return 0;
}

/* PQreset/PQresetStart: an inherited connection becomes this process's
 * own (on a new slot); a connection whose slot was given back takes one. */
static int begin_reset(struct ds_call *c)
{
        struct ds_conn *e = c->entry;
        if (!e)
                return 1;
        if (e->owner != getpid()) {
                neutralize_socket(e);
                ds_conns_lock();
                e->owner = getpid();
                e->leased = 0;
                ds_conns_unlock();
        }
        int st = settle(e);
        if (st == DS_CONN_RELEASED && e->owner == getpid() &&
            atomic_compare_exchange_strong(&e->rstate, &st, DS_CONN_REVIVING)) {
                /* a reset of a released connection is its reconnect */
                c->out.i = revive(c, e) == 0;
                c->skip = 1;
                return 0;
        }
        if (e->leased)
                return 1;
        char msg[1100];
        int a = acquire(c, msg, sizeof(msg));
        if (a == REFUSED) {
                set_error(e, msg);
                c->out.i = 0;
                c->skip = 1;
                return 0;
        }
        ds_conns_lock();
        free(e->error);
        e->error = NULL;
        if (a == GRANTED) {
                e->leased = 1;
                e->lease = c->lease;
        }
        ds_conns_unlock();
        return 1;
}

/* The fast paths run on every call an application makes on a connection:
 * flatten pulls the table lookup and the thread's mark (conns.c) into each
 * of them, where link-time optimisation allows. */
__attribute__((flatten)) struct ds_conn *ds_fast_enter(int id, int slot, const void *ra,
                                                       const void *conn, void **inner)
{
        *inner = NULL;
        /* libpq using its own exports is passed through as ds_begin would,
         * also outside any call of the application's: the shim's own work
         * on a connection (the life thread closing or releasing one) calls
         * into libpq, and must not count as the application's activity. */
        if (slot < 0) {
                struct ds_lib *caller = ds_lib_at(ra);
                if (caller) {
                        *inner = caller->fn[id];
                        return NULL;
                }
        }
        if (ds_tls.depth || !conn)
                return NULL;
        struct ds_conn *e = ds_conn_find(conn);
        if (!e || !e->lib->fn[id] || !ds_conn_try_enter(e))
                return NULL;
        ds_tls.depth++;
        return e;
}

__attribute__((flatten)) void ds_fast_leave(struct ds_conn *e)
{
        ds_tls.depth--;
        ds_conn_leave(e, DS_IN_RECORD);
}

__attribute__((flatten)) void ds_fast_activity_end(struct ds_conn *e)
{
        ds_conn_mark_used(e); /* the life thread makes it the scraper's activity */
        ds_fast_leave(e);
}

int ds_begin(struct ds_call *c, int id, int slot, const void *ra, const void *conn)
{
        c->id = id;
        c->kind = ds_fn_kinds[id];
        c->nested = ds_tls.depth++ > 0;
        c->skip = 0;
        c->ra = ra;
        c->conn = conn;
        c->entry = NULL;
        c->leased = 0;
        c->coord = NULL;
        c->busy = 0;
        c->gone_fd = -1;
        c->out.conn = NULL;
        /* A call made from inside a libpq copy is libpq using its own
         * exports: nested, also when the application's outer call reached
         * libpq without passing through the shim (then it is not counted
         * at all, rather than counted without a matching finish). */
        pthread_once(&env_once, read_env);
        /* A known connection names its library; the caller's object is
         * looked up only for calls without one. */
        struct ds_lib *caller = slot < 0 ? ds_lib_at(ra) : NULL;
        if (caller)
                c->nested = 1;
        else if (conn)
                c->entry = c->kind == DS_KIND_FINISH ? ds_conn_remove(conn) : ds_conn_find(conn);
        if (!c->entry && slot < 0 && !caller) {
                caller = ds_lib_for_caller(ra);
                if (caller && (uintptr_t)ra >= caller->start && (uintptr_t)ra < caller->end)
                        c->nested = 1;
        }
        if (c->entry)
                c->lib = c->entry->lib;
        else if (slot >= 0)
                c->lib = ds_lib_slot(slot);
        else
                c->lib = caller;
        c->real = c->lib ? c->lib->fn[id] : NULL;
        if (!c->real) {
                c->real = (void *)missing_function;
                ds_log(DS_LOG_WARN, "no libpq definition of %s reachable from the caller",
                       ds_fn_names[id]);
                if (c->kind != DS_KIND_ACTIVITY) {
                        c->skip = 1; /* no pool, no record: nothing to connect with */
                        return 0;
                }
        }
        if (c->nested)
                return 1;
        switch (c->kind) {
        case DS_KIND_CONNECT:
        case DS_KIND_START:
        case DS_KIND_PING:
                return begin_connect(c);
        case DS_KIND_RESET:
        case DS_KIND_RESET_START:
                return begin_reset(c);
        case DS_KIND_FINISH:
                c->out.i = -1;
                if (c->entry) {
                        /* out of the table: wait for a release or reconnect to end */
                        struct ds_conn *e = c->entry;
                        int st = settle(e);
                        /* calls the life thread has not seen yet: the
                         * scraper's activity, which must not go with them */
                        ds_handle *h = atomic_load_explicit(&coord, memory_order_relaxed);
                        if (ds_conn_note_used(e, coarse_now()) && h)
                                touch(h);
                        if (st == DS_CONN_OPEN && e->owner == getpid() && ds_reuse_park(e)) {
                                c->skip = 1; /* parked: stays open, keeps its slot */
                                return 0;
                        }
                        if (e->fd >= 0 && (st == DS_CONN_RELEASED || !e->lib->socket ||
                                           e->lib->socket(e->conn) != e->fd))
                                c->out.i = e->fd; /* the placeholder, closed after */
                        if (e->owner != getpid()) {
                                neutralize_socket(e);
                        } else if (e->leased && e->lib->socket) {
                                int fd = e->lib->socket(e->conn);
                                if (fd >= 0)
                                        c->gone_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
                        }
                }
                return 1;
        case DS_KIND_ACTIVITY:
                /* The return touches the clock; while the call runs, the
                 * life thread sees it in the thread's record and keeps the
                 * scraper active (advice_handler). */
                c->coord = atomic_load_explicit(&coord, memory_order_relaxed);
                if (c->entry) {
                        c->busy = ds_conn_enter(c->entry);
                        enter_conn(c, c->entry);
                }
                return 1;
        case DS_KIND_REVIVE:
                if (c->entry && c->id == DS_ID_PQregisterEventProc)
                        c->entry->events = 1; /* its state cannot be reset: never parked */
                if (c->entry) {
                        c->busy = ds_conn_enter(c->entry);
                        enter_conn(c, c->entry);
                }
                return 1;
        case DS_KIND_GETTER:
                if (!c->entry)
                        return 1;
                c->busy = ds_conn_enter(c->entry);
                if (enter_conn(c, c->entry) != DS_CONN_RELEASED)
                        return 1;
                /* released: what a healthy idle connection reports */
                switch (c->id) {
                case DS_ID_PQstatus:
                        c->out.i = CONNECTION_OK;
                        break;
                case DS_ID_PQtransactionStatus:
                        c->out.i = PQTRANS_IDLE;
                        break;
                case DS_ID_PQsocket:
                        c->out.i = c->entry->fd;
                        break;
                default: /* PQisBusy, PQflush */
                        c->out.i = 0;
                        break;
                }
                c->skip = 1;
                return 0;
        case DS_KIND_ERRMSG:
                if (!c->entry)
                        return 1;
                c->busy = ds_conn_enter(c->entry);
                if (c->entry->error) {
                        c->out.str = c->entry->error;
                        c->skip = 1;
                        return 0;
                }
                if (enter_conn(c, c->entry) == DS_CONN_RELEASED) {
                        c->out.str = empty_message;
                        c->skip = 1;
                        return 0;
                }
                return 1;
        case DS_KIND_POLL:
                return 1;
        }
        return 1;
}

/* The connect's parameters as keyword/value pairs: a conninfo string
 * becomes dbname=<conninfo> with expand_dbname, as libpq reads it; k and v
 * hold up to 8 pairs for the forms that are not arrays already. */
static void params_of(const struct ds_call *c, struct ds_params *p, const char *k[8],
                      const char *v[8])
{
        static const char *const setdb_keys[7] = {"host",   "port", "options", NULL,
                                                  "dbname", "user", "password"};
        p->keys = k, p->vals = v, p->n = 0, p->expand = 1;
        if (c->id == DS_ID_PQconnectdb || c->id == DS_ID_PQconnectStart) {
                k[0] = "dbname", v[0] = c->args.conninfo ? c->args.conninfo : "";
                p->n = 1;
        } else if (c->id == DS_ID_PQsetdbLogin) {
                for (int i = 0; i < 7; i++)
                        if (setdb_keys[i] && c->args.setdb[i])
                                k[p->n] = setdb_keys[i], v[p->n++] = c->args.setdb[i];
        } else if (c->args.keywords) {
                p->keys = c->args.keywords;
                p->vals = c->args.values;
                p->expand = c->args.expand_dbname;
                while (p->keys[p->n])
                        p->n++;
        }
}

/* Copies the connect's parameters into e: what a later transparent
 * reconnect passes to PQconnectdbParams, and what reuse matches. */
static int keep_params(struct ds_conn *e, const struct ds_call *c)
{
        const char *k[8], *v[8];
        struct ds_params p;
        params_of(c, &p, k, v);
        e->expand_dbname = p.expand;
        e->keywords = calloc(p.n + 1, sizeof(char *));
        e->values = calloc(p.n + 1, sizeof(char *));
        if (!e->keywords || !e->values)
                return -ENOMEM;
        for (size_t i = 0; i < p.n; i++) {
                e->keywords[i] = strdup(p.keys[i]);
                e->values[i] = p.vals && p.vals[i] ? strdup(p.vals[i]) : NULL;
                if (!e->keywords[i] || (p.vals && p.vals[i] && !e->values[i]))
                        return -ENOMEM;
        }
        return 0;
}

static void end_connect(struct ds_call *c)
{
        PGconn *conn = c->out.conn;
        int bad = status_bad(c, conn);
        if (conn) {
                struct ds_conn *e = new_entry(c, conn);
                if (e) {
                        if (keep_params(e, c))
                                ds_debug("out of memory keeping a connection's parameters");
                        e->leased = c->leased && !bad;
                        e->lease = c->lease;
                        e->fd = -1;
                        stamp_connected(e);
                        if (!bad)
                                ds_reuse_note_fresh(e);
                        if (ds_conn_add(e) != 0) {
                                /* untracked: its slot stays taken until exit */
                                ds_log(DS_LOG_WARN, "out of memory recording a connection");
                                ds_conn_free(e);
                        }
                }
        }
        if (bad && c->leased) {
                release(&c->lease);
        } else if (c->leased) {
                note_backend(c->lib, conn, &c->lease);
                register_advice(c->lease.h);
        }
        ds_debug("%s via %s: %s", ds_fn_names[c->id], c->lib ? c->lib->path : "nothing",
                 bad ? "failed" : (c->leased ? "slot held" : "not counted"));
}

/* note_backend for a connection of the table, if it holds a slot of this
 * process. */
static void note_own_backend(struct ds_conn *e)
{
        ds_conns_lock();
        int mine = e->leased && e->owner == getpid();
        struct ds_slot l = e->lease;
        ds_conns_unlock();
        if (mine)
                note_backend(e->lib, e->conn, &l);
}

void ds_end(struct ds_call *c)
{
        ds_tls.depth--;
        if (c->nested)
                return;
        struct ds_conn *e = c->entry;
        if (c->busy)
                ds_conn_leave(e, c->busy);
        if (c->skip)
                return;
        switch (c->kind) {
        case DS_KIND_CONNECT:
        case DS_KIND_START:
                end_connect(c);
                break;
        case DS_KIND_PING:
                if (c->leased)
                        release(&c->lease);
                break;
        case DS_KIND_POLL:
                if (e && c->out.poll == PGRES_POLLING_FAILED)
                        drop_lease(e);
                else if (e && c->out.poll == PGRES_POLLING_OK)
                        note_own_backend(e);
                break;
        case DS_KIND_RESET:
                if (e && status_bad(c, c->conn))
                        drop_lease(e);
                else if (e)
                        note_own_backend(e); /* a new backend */
                break;
        case DS_KIND_RESET_START:
                if (e && c->out.i == 0)
                        drop_lease(e);
                break;
        case DS_KIND_FINISH:
                if (e) {
                        if (e->leased && e->owner == getpid()) {
                                if (c->gone_fd >= 0)
                                        release_when_gone(c->gone_fd, &e->lease);
                                else
                                        release(&e->lease);
                        } else if (c->gone_fd >= 0) {
                                close(c->gone_fd);
                        }
                        ds_debug("PQfinish via %s", e->lib->path);
                        ds_conn_free(e);
                        if (c->out.i >= 0)
                                close(c->out.i);
                }
                break;
        case DS_KIND_ACTIVITY:
                if (c->coord) {
                        uint64_t now = touch(c->coord);
                        if (e)
                                atomic_store_explicit(&e->last_used_ns, now, memory_order_relaxed);
                } else if (e) {
                        atomic_store_explicit(&e->last_used_ns, coarse_now(), memory_order_relaxed);
                }
                break;
        case DS_KIND_ERRMSG:
        case DS_KIND_GETTER:
        case DS_KIND_REVIVE:
                break;
        }
}
