/* dyncoord_cluster.c - the cluster agent of dyncoord --watchdog --cluster:
 * several hosts share one connection budget, coordinated through the
 * PostgreSQL server itself (docs/cluster.md).
 *
 * The server holds a table dynshim.cluster_hosts with each host's claim
 * (units of the budget: its local pool_size, one slot of which the agent
 * holds for its own connection), demand and usage, and the agent of each
 * live host holds a session-level advisory lock on its row: the server
 * drops it the instant the agent's session ends. Every interval the agent, in one transaction
 * under a table lock, reports its usage, frees the claims of hosts whose
 * agent is gone once the server shows none of their client backends, and
 * grows its own claim only into unclaimed units (ds_policy_cluster_targets
 * and ds_policy_cluster_grow decide). The local pool grows only after the
 * claim is committed and shrinks before the claim is lowered; the claim is
 * never below max(pool_size, held). A host that cannot reach the server
 * lowers its pool_size to what it holds (at least 1): it grants no new
 * slots beyond that. */
#include <errno.h>
#include <libpq-fe.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dynshim/coord.h"
#include "dynshim/policy.h"
#include "dyncoord.h"

/* The first key of every advisory lock of the agents ('dyns'); the second
 * is the row id of a host (0: the schema's creation). */
#define LOCK_SPACE "1685679731"
#define MAX_HOSTS  256

struct cluster_agent {
        const struct options *o;
        cluster_log_fn log;
        void *log_ctx;
        char host[128];
        PGconn *conn;
        long id;         /* our row, once joined; 0: not joined */
        uint32_t claim;  /* our claim as committed */
        uint32_t target; /* the last target computed */
        const char *state;
        int cfg_known;                  /* the proportions below are the user's */
        uint64_t soft_ppm, max_ppm;     /* soft_limit and max_limit per pool_size, 1e-6 */
        uint32_t wrote_soft, wrote_max; /* what we last wrote */
        char last_error[512];
        struct ds_cluster_host hosts[MAX_HOSTS];
        char names[MAX_HOSTS][128];
        const char *states[MAX_HOSTS];
        uint32_t backends[MAX_HOSTS];
        uint32_t held[MAX_HOSTS];
        ds_handle *h;              /* the segment handle the lease is from */
        struct ds_lease_ref lease; /* the agent's own slot */
        int have_lease;
        size_t n_hosts;
        uint32_t budget;
        long hidden;    /* client backends whose address the agent cannot see; -1: unknown */
        int privileged; /* the role sees every session's address (pg_read_all_stats) */
        char role[128]; /* the agent's role on the server */
};

static void alog(struct cluster_agent *a, const char *level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void alog(struct cluster_agent *a, const char *level, const char *fmt, ...)
{
        char msg[1024];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        a->log(a->log_ctx, level, msg);
}

/* Logs an error once per distinct message (a flapping server logs once). */
static void error_once(struct cluster_agent *a, const char *what, const char *why)
{
        char msg[512];
        snprintf(msg, sizeof(msg), "%s: %s", what, why);
        trim_message(msg);
        if (strcmp(msg, a->last_error) != 0)
                alog(a, "error", "cluster %s: %s", a->o->cluster, msg);
        snprintf(a->last_error, sizeof(a->last_error), "%s", msg);
}

int cluster_default_host(const char *segment, char *out, size_t len)
{
        char hn[HOST_NAME_MAX + 1] = "";
        if (gethostname(hn, sizeof(hn)) != 0 || !hn[0])
                snprintf(hn, sizeof(hn), "localhost");
        hn[HOST_NAME_MAX] = '\0';
        int n = snprintf(out, len, "%s%s", hn, segment);
        return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

/* ---- the server ---- */

static PGresult *run(struct cluster_agent *a, const char *what, const char *sql, int n,
                     const char *const *params)
{
        PGresult *r = PQexecParams(a->conn, sql, n, NULL, params, NULL, NULL, 0);
        ExecStatusType s = PQresultStatus(r);
        if (s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK)
                return r;
        error_once(a, what, PQerrorMessage(a->conn));
        PQclear(r);
        return NULL;
}

static int exec_ok(struct cluster_agent *a, const char *what, const char *sql, int n,
                   const char *const *params)
{
        PGresult *r = run(a, what, sql, n, params);
        PQclear(r);
        return r ? 0 : -EIO;
}

static void rollback(struct cluster_agent *a)
{
        if (a->conn && PQstatus(a->conn) == CONNECTION_OK &&
            PQtransactionStatus(a->conn) != PQTRANS_IDLE)
                PQclear(PQexec(a->conn, "ROLLBACK"));
}

static const char schema_sql[] =
    "BEGIN;"
    "SELECT pg_advisory_xact_lock(" LOCK_SPACE ", 0);"
    "CREATE SCHEMA IF NOT EXISTS dynshim;"
    "CREATE TABLE IF NOT EXISTS dynshim.clusters ("
    " cluster text PRIMARY KEY, budget integer NOT NULL CHECK (budget > 0));"
    "CREATE TABLE IF NOT EXISTS dynshim.cluster_hosts ("
    " id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    " cluster text NOT NULL REFERENCES dynshim.clusters ON DELETE CASCADE,"
    " host text NOT NULL,"
    " claim integer NOT NULL DEFAULT 0 CHECK (claim >= 0),"
    " held integer NOT NULL DEFAULT 0, demand integer NOT NULL DEFAULT 0,"
    " addr inet, backend_pid integer, updated timestamptz NOT NULL DEFAULT now(),"
    " UNIQUE (cluster, host));"
    "COMMIT";

/* The user's conninfo with our timeouts and keepalives (the user's own
 * settings win): a cut-off server is noticed within seconds on both sides. */
static PGconn *connect_server(struct cluster_agent *a)
{
        char tut[32], opts[256];
        uint32_t t = a->o->interval_ms * 3 > 3000 ? a->o->interval_ms * 3 : 3000;
        snprintf(tut, sizeof(tut), "%u", t);
        snprintf(opts, sizeof(opts),
                 "-c tcp_keepalives_idle=2 -c tcp_keepalives_interval=1 "
                 "-c tcp_keepalives_count=2 -c tcp_user_timeout=%u -c statement_timeout=%u "
                 "-c lock_timeout=%u",
                 t, t, t);
        const char *keys[] = {"connect_timeout",  "keepalives",
                              "keepalives_idle",  "keepalives_interval",
                              "keepalives_count", "tcp_user_timeout",
                              "application_name", "options",
                              "dbname",           NULL};
        const char *vals[] = {
            "3", "1", "2", "1", "2", tut, "dyncoord cluster agent", opts, a->o->conninfo, NULL};
        return PQconnectdbParams(keys, vals, 1);
}

/* ---- the local pool ---- */

struct local {
        uint32_t pool, held, waiting;
};

static int read_local(ds_handle *h, struct local *l, struct cluster_agent *a)
{
        struct ds_stats st;
        int rc = ds_stats_get(h, &st);
        if (rc)
                return rc;
        l->pool = st.cfg.pool_size;
        l->held = st.held;
        l->waiting = st.waiting;
        /* the limits keep the proportion to pool_size the user gave them
         * (at the agent's start, or by a later --set) */
        if (!a->cfg_known || st.cfg.soft_limit != a->wrote_soft ||
            st.cfg.max_limit != a->wrote_max) {
                a->soft_ppm = (uint64_t)st.cfg.soft_limit * 1000000u / st.cfg.pool_size;
                a->max_ppm = (uint64_t)st.cfg.max_limit * 1000000u / st.cfg.pool_size;
                a->wrote_soft = st.cfg.soft_limit;
                a->wrote_max = st.cfg.max_limit;
        }
        a->cfg_known = 1;
        ds_stats_free(&st);
        return 0;
}

/* round(share * ppm / 1e6), between 1 and share. */
static uint32_t scale(uint64_t ppm, uint32_t share)
{
        uint64_t v = (share * ppm + 500000u) / 1000000u;
        return v < 1 ? 1 : v > share ? share : (uint32_t)v;
}

/* Sets the local pool_size to share. The limits that follow pool_size are
 * derived from it (ds_policy_follow_pool); the ones set explicitly keep
 * their proportion to it. */
static int set_pool(struct cluster_agent *a, ds_handle *h, uint32_t share, const char *why)
{
        char p[40], s[40], m[40], err[300];
        struct ds_config cfg, want;
        if (ds_get_config(h, &cfg) != 0)
                return -EIO;
        want = cfg;
        want.pool_size = share;
        const char *pairs[3];
        size_t n = 0;
        snprintf(p, sizeof(p), "pool_size=%u", share);
        pairs[n++] = p;
        if (cfg.limits_set & DS_LIMIT_SOFT_SET) {
                want.soft_limit = scale(a->soft_ppm, share);
                snprintf(s, sizeof(s), "soft_limit=%u", want.soft_limit);
                pairs[n++] = s;
        }
        if (cfg.limits_set & DS_LIMIT_MAX_SET) {
                want.max_limit = scale(a->max_ppm, share);
                snprintf(m, sizeof(m), "max_limit=%u", want.max_limit);
                pairs[n++] = m;
        }
        ds_policy_follow_pool(&want);
        if (cfg.pool_size == want.pool_size && cfg.soft_limit == want.soft_limit &&
            cfg.max_limit == want.max_limit)
                return 0;
        /* the order of validation does not matter: one change as a whole */
        int rc = ds_update_config(h, pairs, n, NULL, err, sizeof(err));
        if (rc) {
                error_once(a, "could not set the local pool_size", err);
                return rc;
        }
        a->wrote_soft = want.soft_limit;
        a->wrote_max = want.max_limit;
        if (cfg.pool_size != share)
                alog(a, "info", "cluster %s: local pool_size %u -> %u (%s)", a->o->cluster,
                     cfg.pool_size, share, why);
        return 0;
}

/* Grants nothing beyond what is held (pool_size is at least 1). */
static void hold_to_held(struct cluster_agent *a, ds_handle *h, const char *why)
{
        struct local l;
        if (h && read_local(h, &l, a) == 0) {
                uint32_t keep = l.held > 1 ? l.held : 1;
                if (l.pool > keep)
                        set_pool(a, h, keep, why);
        }
}

/* The server is out of reach: grant nothing beyond what is held. */
static void cut_off(struct cluster_agent *a, ds_handle *h)
{
        if (a->conn) {
                PQfinish(a->conn);
                a->conn = NULL;
        }
        if (strcmp(a->state, "unreachable") != 0)
                alog(a, "warning",
                     "cluster %s: the server is out of reach; no new slots beyond "
                     "those held until it is back",
                     a->o->cluster);
        a->state = "unreachable";
        a->id = 0;
        hold_to_held(a, h, "server out of reach");
}

/* ---- seeing every client backend ---- */

/* A session of another role shows in pg_stat_activity without its client
 * address (and without a backend_type) unless the agent's role is a
 * superuser or a member of pg_read_all_stats. Such a session may belong to
 * a host whose agent is gone: while any exists, the agent cannot prove that
 * host's backends are gone, so no claim is freed (HIDDEN is part of the
 * rule that frees them, free_sql below). Background processes (no
 * database) are not sessions. */
#define HIDDEN                                                                                     \
        "(SELECT count(*) FROM pg_stat_activity s WHERE s.backend_type IS NULL AND s.datid IS "    \
        "NOT NULL)"

/* At the join: logs, once, when the agent's role cannot see other roles'
 * client addresses. Not a refusal: an agent of the scrapers' own role sees
 * them all; the rounds check what is actually hidden. */
static int check_visibility(struct cluster_agent *a)
{
        PGresult *r = run(a, "privileges",
                          "SELECT current_user, (SELECT rolsuper FROM pg_roles WHERE rolname = "
                          "current_user) OR pg_has_role('pg_read_all_stats', 'USAGE'), " HIDDEN,
                          0, NULL);
        if (!r)
                return -EIO;
        snprintf(a->role, sizeof(a->role), "%s", PQgetvalue(r, 0, 0));
        int privileged = strcmp(PQgetvalue(r, 0, 1), "t") == 0;
        long hidden = strtol(PQgetvalue(r, 0, 2), NULL, 10);
        PQclear(r);
        if (!privileged)
                alog(a, "warning",
                     "cluster %s: the agent's role %s is neither a superuser nor a member of "
                     "pg_read_all_stats, so it cannot see the client address of other roles' "
                     "sessions; while the server has such sessions (%ld now), no host's claim "
                     "is freed after its agent is gone (GRANT pg_read_all_stats TO %s)",
                     a->o->cluster, a->role, hidden, a->role);
        a->privileged = privileged;
        return 0;
}

/* Every round: the sessions the agent cannot see, logged when they appear
 * and when they are gone. */
static int count_hidden(struct cluster_agent *a)
{
        PGresult *r = run(a, "hidden sessions", "SELECT " HIDDEN, 0, NULL);
        if (!r)
                return -EIO;
        long hidden = strtol(PQgetvalue(r, 0, 0), NULL, 10);
        PQclear(r);
        if (hidden > 0 && a->hidden <= 0)
                alog(a, "warning",
                     "cluster %s: the server has %ld session(s) whose client address the "
                     "agent's role %s cannot see (it needs pg_read_all_stats: GRANT "
                     "pg_read_all_stats TO %s); no claim of a host without its agent is "
                     "freed until they are gone",
                     a->o->cluster, hidden, a->role, a->role);
        else if (hidden == 0 && a->hidden > 0)
                alog(a, "info", "cluster %s: the agent sees every session's client address again",
                     a->o->cluster);
        a->hidden = hidden;
        return 0;
}

/* ---- joining ---- */

static long one_long(PGresult *r)
{
        return strtol(PQgetvalue(r, 0, 0), NULL, 10);
}

/* Joins the cluster as host a->host: creates the schema and the rows when
 * missing, takes the host's liveness lock and a claim that covers what the
 * local pool may use now. The agent already holds its own slot. */
static int join(struct cluster_agent *a, ds_handle *h)
{
        char budget[16], ids[24], cs[16];
        snprintf(budget, sizeof(budget), "%u", a->o->cluster_budget);
        const char *p2[] = {a->o->cluster, budget};
        const char *p3[] = {a->o->cluster, a->host};
        PGresult *r = run(a, "address", "SELECT inet_client_addr() IS NULL", 0, NULL);
        if (!r)
                return -EIO;
        int unix_socket = strcmp(PQgetvalue(r, 0, 0), "t") == 0;
        PQclear(r);
        if (unix_socket) {
                error_once(a, "cannot join",
                           "the agent's connection is not over TCP/IP; a host's backends are "
                           "told apart by client address, so --conninfo must name a TCP host");
                a->state = "not joined";
                return -EPROTO;
        }
        if (check_visibility(a))
                return -EIO;
        r = PQexec(a->conn, schema_sql);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
                error_once(a, "could not create the dynshim schema", PQerrorMessage(a->conn));
                PQclear(r);
                rollback(a);
                return -EIO;
        }
        PQclear(r);
        if (exec_ok(a, "begin", "BEGIN", 0, NULL) ||
            exec_ok(a, "lock", "LOCK TABLE dynshim.cluster_hosts IN SHARE ROW EXCLUSIVE MODE", 0,
                    NULL))
                goto fail;
        r = run(a, "budget",
                "WITH old AS (SELECT budget FROM dynshim.clusters WHERE cluster = $1) "
                "INSERT INTO dynshim.clusters AS c VALUES ($1, $2) ON CONFLICT (cluster) DO "
                "UPDATE SET budget = excluded.budget RETURNING (SELECT budget FROM old)",
                2, p2);
        if (!r)
                goto fail;
        if (!PQgetisnull(r, 0, 0) && strcmp(PQgetvalue(r, 0, 0), budget) != 0)
                alog(a, "warning", "cluster %s: budget changed from %s to %s", a->o->cluster,
                     PQgetvalue(r, 0, 0), budget);
        PQclear(r);
        r = run(a, "row",
                "INSERT INTO dynshim.cluster_hosts (cluster, host) VALUES ($1, $2) "
                "ON CONFLICT (cluster, host) DO UPDATE SET host = excluded.host "
                "RETURNING id, claim",
                2, p3);
        if (!r)
                goto fail;
        long id = one_long(r);
        uint32_t claim0 = (uint32_t)strtoul(PQgetvalue(r, 0, 1), NULL, 10);
        PQclear(r);
        snprintf(ids, sizeof(ids), "%ld", id);
        const char *pid[] = {ids};
        r = run(a, "liveness lock", "SELECT pg_try_advisory_lock(" LOCK_SPACE ", $1::int)", 1, pid);
        if (!r)
                goto fail;
        int locked = strcmp(PQgetvalue(r, 0, 0), "t") == 0;
        PQclear(r);
        if (!locked) {
                if (strcmp(a->state, "standby") != 0)
                        alog(a, "warning",
                             "cluster %s: host %s is held by another live agent session; "
                             "waiting for it to end",
                             a->o->cluster, a->host);
                a->state = "standby";
                rollback(a);
                return -EAGAIN;
        }
        /* the claim must cover what the pool may use now: it was lowered to
         * what is held before the agent connected */
        struct local l;
        if (read_local(h, &l, a))
                goto fail;
        uint32_t need = l.pool > l.held ? l.pool : l.held, claim = claim0;
        if (need > claim0) {
                r = run(a, "sum",
                        "SELECT coalesce(sum(claim), 0) FROM dynshim.cluster_hosts "
                        "WHERE cluster = $1",
                        1, p2);
                if (!r)
                        goto fail;
                uint64_t total = strtoull(PQgetvalue(r, 0, 0), NULL, 10);
                PQclear(r);
                claim = ds_policy_cluster_grow(a->o->cluster_budget, total, claim0, need);
                if (claim < need) {
                        alog(a, "warning",
                             "cluster %s: host %s joins using %u slots with only %u of the "
                             "budget free: the cluster is above its budget until others give "
                             "back",
                             a->o->cluster, a->host, need, claim);
                        claim = need;
                }
        }
        snprintf(cs, sizeof(cs), "%u", claim);
        const char *pu[] = {ids, cs};
        if (exec_ok(a, "join",
                    "UPDATE dynshim.cluster_hosts SET claim = $2, addr = inet_client_addr(), "
                    "backend_pid = pg_backend_pid(), updated = now() WHERE id = $1",
                    2, pu) ||
            exec_ok(a, "commit", "COMMIT", 0, NULL)) {
                PQclear(PQexecParams(a->conn, "SELECT pg_advisory_unlock(" LOCK_SPACE ", $1::int)",
                                     1, NULL, pid, NULL, NULL, 0));
                goto fail;
        }
        a->id = id;
        a->claim = claim;
        a->state = "live";
        a->last_error[0] = '\0';
        alog(a, "info", "cluster %s: host %s joined with a claim of %u (budget %u)", a->o->cluster,
             a->host, claim, a->o->cluster_budget);
        return 0;
fail:
        rollback(a);
        return -EIO;
}

/* ---- one round ---- */

/* A host whose agent is gone (its lock is free) whose client backends the
 * server no longer shows keeps only a seat for its agent's return; after
 * DOWN_FORGET it is forgotten. */
#define DEAD                                                                                       \
        "NOT EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' "                      \
        "AND l.granted AND l.classid = " LOCK_SPACE "::oid AND l.objid = h.id::oid "               \
        "AND l.objsubid = 2)"
#define NO_BACKENDS                                                                                \
        "NOT EXISTS (SELECT 1 FROM pg_stat_activity s WHERE s.client_addr = h.addr AND "           \
        "s.backend_type = 'client backend') AND " HIDDEN " = 0"
#define DOWN_FORGET "interval '10 minutes'"

static const char free_sql[] =
    "UPDATE dynshim.cluster_hosts h SET claim = 1 WHERE h.cluster = $1 AND h.id <> $2::int"
    " AND h.claim > 1 AND " DEAD " AND " NO_BACKENDS " RETURNING h.host, h.claim";
static const char forget_sql[] =
    "DELETE FROM dynshim.cluster_hosts h WHERE h.cluster = $1 AND h.id <> $2::int"
    " AND h.claim <= 1 AND h.updated < now() - " DOWN_FORGET " AND " DEAD " AND " NO_BACKENDS
    " RETURNING h.host";

static const char hosts_sql[] =
    "SELECT h.id, h.host, h.claim, h.held, h.demand, NOT " DEAD ","
    " (SELECT count(*) FROM pg_stat_activity s WHERE s.client_addr = h.addr"
    "  AND s.backend_type = 'client backend')"
    " FROM dynshim.cluster_hosts h WHERE h.cluster = $1 ORDER BY h.id";

/* Reads the cluster's rows (the first MAX_HOSTS for the policy) and
 * *total, the sum of every row's claim. */
static int load_hosts(struct cluster_agent *a, long *self, uint64_t *total)
{
        const char *p[] = {a->o->cluster};
        PGresult *r = run(a, "hosts", hosts_sql, 1, p);
        if (!r)
                return -EIO;
        int n = PQntuples(r);
        a->n_hosts = 0;
        *self = -1;
        *total = 0;
        for (int i = 0; i < n; i++)
                *total += strtoul(PQgetvalue(r, i, 2), NULL, 10);
        for (int i = 0; i < n && a->n_hosts < MAX_HOSTS; i++) {
                size_t k = a->n_hosts++;
                struct ds_cluster_host *x = &a->hosts[k];
                memset(x, 0, sizeof(*x));
                if (strtol(PQgetvalue(r, i, 0), NULL, 10) == a->id)
                        *self = (long)k;
                snprintf(a->names[k], sizeof(a->names[k]), "%s", PQgetvalue(r, i, 1));
                x->claim = (uint32_t)strtoul(PQgetvalue(r, i, 2), NULL, 10);
                a->held[k] = (uint32_t)strtoul(PQgetvalue(r, i, 3), NULL, 10);
                x->demand = (uint32_t)strtoul(PQgetvalue(r, i, 4), NULL, 10);
                x->live = strcmp(PQgetvalue(r, i, 5), "t") == 0;
                a->backends[k] = (uint32_t)strtoul(PQgetvalue(r, i, 6), NULL, 10);
                /* with sessions it cannot see, the agent cannot tell a host's
                 * backends gone: its claim stands */
                a->states[k] = x->live                           ? "live"
                               : a->backends[k] || a->hidden > 0 ? "agent gone"
                                                                 : "down";
        }
        PQclear(r);
        return 0;
}

static void log_rows(struct cluster_agent *a, PGresult *r, const char *what)
{
        for (int i = 0; i < PQntuples(r); i++)
                alog(a, "info", "cluster %s: host %s %s", a->o->cluster, PQgetvalue(r, i, 0), what);
}

static int round_trip(struct cluster_agent *a, ds_handle *h)
{
        struct local l;
        if (read_local(h, &l, a))
                return -EIO;
        char ids[24], cs[16], hs[16], ds[16];
        snprintf(ids, sizeof(ids), "%ld", a->id);
        /* what the pool may use now; never above the committed claim */
        uint32_t honest = l.pool > l.held ? l.pool : l.held;
        if (honest > a->claim)
                honest = a->claim;
        snprintf(cs, sizeof(cs), "%u", honest);
        snprintf(hs, sizeof(hs), "%u", l.held);
        snprintf(ds, sizeof(ds), "%u", l.held + l.waiting);
        const char *pu[] = {ids, cs, hs, ds};
        const char *pc[] = {a->o->cluster, ids};
        long self;
        if (exec_ok(a, "begin", "BEGIN", 0, NULL) ||
            exec_ok(a, "lock", "LOCK TABLE dynshim.cluster_hosts IN SHARE ROW EXCLUSIVE MODE", 0,
                    NULL) ||
            exec_ok(a, "report",
                    "UPDATE dynshim.cluster_hosts SET claim = $2, held = $3, demand = $4, "
                    "updated = now() WHERE id = $1",
                    4, pu))
                goto fail;
        a->claim = honest;
        /* in this transaction, the same snapshot of pg_stat_activity as the
         * free below */
        if (count_hidden(a))
                goto fail;
        PGresult *r = run(a, "free", free_sql, 2, pc);
        if (!r)
                goto fail;
        log_rows(a, r,
                 "has no agent and the server shows none of its backends: its claim is "
                 "free but for its agent's seat");
        PQclear(r);
        if (!(r = run(a, "forget", forget_sql, 2, pc)))
                goto fail;
        log_rows(a, r, "was down for " DOWN_FORGET ": forgotten");
        PQclear(r);
        r = run(a, "budget", "SELECT budget FROM dynshim.clusters WHERE cluster = $1", 1, pc);
        if (!r || PQntuples(r) != 1) {
                PQclear(r);
                goto fail;
        }
        a->budget = (uint32_t)one_long(r);
        PQclear(r);
        uint64_t total;
        if (load_hosts(a, &self, &total))
                goto fail;
        if (self < 0) {
                error_once(a, "lost its row", "our host's row is gone; joining again");
                goto fail;
        }
        ds_policy_cluster_targets(a->hosts, a->n_hosts, a->budget);
        a->target = a->hosts[self].target;
        uint32_t grown = ds_policy_cluster_grow(a->budget, total, a->claim, a->target);
        if (grown > a->claim) {
                snprintf(cs, sizeof(cs), "%u", grown);
                if (exec_ok(a, "grow", "UPDATE dynshim.cluster_hosts SET claim = $2 WHERE id = $1",
                            2, pu))
                        goto fail;
        }
        if (exec_ok(a, "commit", "COMMIT", 0, NULL))
                return -EIO; /* outcome unknown: the pool does not grow */
        if (grown > a->claim) {
                /* committed: now the pool may grow */
                a->claim = a->hosts[self].claim = grown;
                set_pool(a, h, grown, "claim grown");
        } else if (a->target < a->claim) {
                /* the pool first; then the claim comes down to what is used */
                set_pool(a, h, a->target, "giving back");
                if (read_local(h, &l, a) == 0) {
                        honest = l.pool > l.held ? l.pool : l.held;
                        snprintf(cs, sizeof(cs), "%u", honest);
                        if (honest < a->claim &&
                            exec_ok(a, "give back",
                                    "UPDATE dynshim.cluster_hosts SET claim = $2 WHERE id = $1", 2,
                                    pu) == 0)
                                a->claim = a->hosts[self].claim = honest;
                }
        } else if (l.pool != a->claim) {
                /* the whole claim is usable, and no more (a pool_size set by
                 * hand is put back) */
                set_pool(a, h, a->claim, "the host's claim");
        }
        a->last_error[0] = '\0';
        return 0;
fail:
        rollback(a);
        return -EIO;
}

/* ---- the state file for --stats ---- */

static int state_path(const char *segment, int create, char *out, size_t len)
{
        char dir[PATH_MAX];
        if (create && runtime_dir(dir, sizeof(dir)))
                return -EIO;
        if (!create)
                runtime_dir_path(dir, sizeof(dir));
        snprintf(out, len, "%s/cluster.", dir);
        file_name_part(out, len, segment + 1);
        return 0;
}

static void write_state(struct cluster_agent *a, const char *segment)
{
        char path[PATH_MAX + 64], tmp[PATH_MAX + 80];
        if (state_path(segment, 1, path, sizeof(path)))
                return;
        snprintf(tmp, sizeof(tmp), "%s.tmp", path);
        FILE *f = fopen(tmp, "we");
        if (!f)
                return;
        uint64_t claimed = 0;
        for (size_t i = 0; i < a->n_hosts; i++)
                claimed += a->hosts[i].claim;
        fprintf(f, "cluster\t%s\t%u\t%llu\t%s\t%s\t%lld\n", a->o->cluster,
                a->budget ? a->budget : a->o->cluster_budget, (unsigned long long)claimed, a->host,
                a->state, (long long)time(NULL));
        for (size_t i = 0; i < a->n_hosts; i++) {
                const struct ds_cluster_host *x = &a->hosts[i];
                fprintf(f, "host\t%s\t%u\t%u\t%u\t%u\t%u\t%s\t%u\n", a->names[i],
                        x->live ? x->claim : 0, x->claim, x->demand, a->held[i], x->target,
                        a->states[i], a->backends[i]);
        }
        if (fclose(f) == 0)
                rename(tmp, path);
        else
                unlink(tmp);
}

int cluster_read_state(const char *segment, struct cluster_view *v)
{
        char path[PATH_MAX + 64], line[512];
        memset(v, 0, sizeof(*v));
        if (state_path(segment, 0, path, sizeof(path)))
                return -ENOENT;
        FILE *f = fopen(path, "re");
        if (!f)
                return -ENOENT;
        while (fgets(line, sizeof(line), f)) {
                line[strcspn(line, "\n")] = '\0';
                char *save = NULL, *kind = strtok_r(line, "\t", &save);
                if (!kind)
                        continue;
                if (strcmp(kind, "cluster") == 0) {
                        char *name = strtok_r(NULL, "\t", &save);
                        char *budget = strtok_r(NULL, "\t", &save);
                        char *claimed = strtok_r(NULL, "\t", &save);
                        char *host = strtok_r(NULL, "\t", &save);
                        char *state = strtok_r(NULL, "\t", &save);
                        char *when = strtok_r(NULL, "\t", &save);
                        if (!when)
                                continue;
                        snprintf(v->name, sizeof(v->name), "%s", name);
                        snprintf(v->host, sizeof(v->host), "%s", host);
                        snprintf(v->state, sizeof(v->state), "%s", state);
                        v->budget = (uint32_t)strtoul(budget, NULL, 10);
                        v->claimed = (uint32_t)strtoul(claimed, NULL, 10);
                        v->updated = (int64_t)strtoll(when, NULL, 10);
                        v->present = 1;
                } else if (strcmp(kind, "host") == 0 && v->n_hosts < CLUSTER_VIEW_HOSTS) {
                        struct cluster_view_host *x = &v->hosts[v->n_hosts];
                        char *f1[8];
                        int k = 0;
                        while (k < 8 && (f1[k] = strtok_r(NULL, "\t", &save)))
                                k++;
                        if (k < 8)
                                continue;
                        snprintf(x->name, sizeof(x->name), "%s", f1[0]);
                        x->share = (uint32_t)strtoul(f1[1], NULL, 10);
                        x->claim = (uint32_t)strtoul(f1[2], NULL, 10);
                        x->demand = (uint32_t)strtoul(f1[3], NULL, 10);
                        x->held = (uint32_t)strtoul(f1[4], NULL, 10);
                        x->target = (uint32_t)strtoul(f1[5], NULL, 10);
                        snprintf(x->state, sizeof(x->state), "%s", f1[6]);
                        x->backends = (uint32_t)strtoul(f1[7], NULL, 10);
                        v->n_hosts++;
                }
        }
        fclose(f);
        return v->present ? 0 : -ENOENT;
}

/* ---- the agent ---- */

struct cluster_agent *cluster_open(const struct options *o, const char *segment, cluster_log_fn fn,
                                   void *ctx)
{
        struct cluster_agent *a = calloc(1, sizeof(*a));
        if (!a)
                return NULL;
        a->o = o;
        a->log = fn;
        a->log_ctx = ctx;
        a->state = "starting";
        a->hidden = -1;
        if (o->cluster_host)
                snprintf(a->host, sizeof(a->host), "%s", o->cluster_host);
        else
                cluster_default_host(segment, a->host, sizeof(a->host));
        alog(a, "info", "cluster %s: this host is %s, budget %u", o->cluster, a->host,
             o->cluster_budget);
        return a;
}

/* The agent's own slot in the local pool, for its connection to the
 * server: taken before it connects, so that connection is always inside
 * the host's claim. 0, or -EAGAIN while the pool has none free. */
static int take_own_slot(struct cluster_agent *a, ds_handle *h)
{
        char why[256] = "";
        if (a->h != h) {
                /* a new handle (segment recreated): start over */
                if (a->conn)
                        PQfinish(a->conn);
                a->conn = NULL;
                a->id = 0;
                a->have_lease = 0;
                a->cfg_known = 0;
                a->h = h;
                ds_set_scraper(h, "dyncoord-cluster-agent");
                /* nothing beyond what is held; then the gate (from now on the
                 * pool grants only while this agent lives) with the agent's
                 * own slot, ahead of waiting connects */
                hold_to_held(a, h, "not joined yet");
                int rc = ds_cluster_gate(h, 1, &a->lease);
                if (rc == 0) {
                        a->have_lease = 1;
                } else if (rc != -EAGAIN) {
                        error_once(a, "could not make this process the pool's cluster agent",
                                   strerror(-rc));
                        a->h = NULL;
                        return -EAGAIN;
                }
        }
        if (a->have_lease)
                return 0;
        hold_to_held(a, h, "not joined yet");
        int rc = ds_acquire(h, a->o->interval_ms, &a->lease, why, sizeof(why));
        if (rc) {
                error_once(a,
                           "waiting for a slot of the local pool for the agent's own "
                           "connection",
                           rc == -ETIMEDOUT ? why : strerror(-rc));
                return -EAGAIN;
        }
        a->have_lease = 1;
        return 0;
}

void cluster_step(struct cluster_agent *a, ds_handle *h, const char *segment)
{
        if (!h || take_own_slot(a, h))
                return;
        if (a->conn && PQstatus(a->conn) != CONNECTION_OK)
                cut_off(a, h);
        if (!a->conn) {
                a->conn = connect_server(a);
                if (!a->conn || PQstatus(a->conn) != CONNECTION_OK) {
                        error_once(a, "could not connect",
                                   a->conn ? PQerrorMessage(a->conn) : "out of memory");
                        cut_off(a, h);
                        write_state(a, segment);
                        return;
                }
                /* the agent's slot, like a client's, outlives the agent
                 * until its backend is gone: a killed agent's session may
                 * still be on the server when its successor connects */
                int rc = ds_lease_set_backend(h, &a->lease, PQbackendPID(a->conn));
                if (rc)
                        error_once(a, "could not record the agent's backend with its slot",
                                   strerror(-rc));
        }
        if (!a->id && join(a, h)) {
                if (PQstatus(a->conn) != CONNECTION_OK)
                        cut_off(a, h);
                else
                        hold_to_held(a, h, "not joined yet");
                write_state(a, segment);
                return;
        }
        if (round_trip(a, h)) {
                if (PQstatus(a->conn) != CONNECTION_OK)
                        cut_off(a, h);
                else if (strstr(a->last_error, "lost its row"))
                        a->id = 0;
        }
        write_state(a, segment);
}

void cluster_segment_gone(struct cluster_agent *a)
{
        if (a)
                a->h = NULL;
}

void cluster_close(struct cluster_agent *a)
{
        if (!a)
                return;
        if (a->conn)
                PQfinish(a->conn);
        free(a);
}
