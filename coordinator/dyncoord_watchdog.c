/* dyncoord_watchdog.c - dyncoord --watchdog and the server check shared
 * with --health.
 *
 * The watchdog runs in the foreground (for systemd and containers). Every
 * interval it reclaims the slots of dead processes and recomputes limits
 * (ds_reclaim), compares usage with warn_usage, and counts the zombie
 * processes of the host; every ping interval it pings the server. It logs
 * changes, not repetitions: a warning when a condition starts and a line
 * when it ends. One watchdog per segment (an flock in the runtime
 * directory). SIGTERM and SIGINT stop it (exit 0); SIGHUP reopens the log
 * file (for logrotate). Signals are blocked and taken by sigtimedwait. */
#include <errno.h>
#include <libpq-fe.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "dynshim/segment.h"
#include "dyncoord.h"

#define CONNECT_TIMEOUT_S  "10"
#define MAX_ZOMBIE_PARENTS 10

/* ---- the server ---- */

int validate_conninfo(const char *conninfo)
{
        char *err = NULL;
        PQconninfoOption *opts = PQconninfoParse(conninfo, &err);
        if (!opts) {
                size_t n = err ? strlen(err) : 0;
                while (n && err[n - 1] == '\n')
                        err[--n] = '\0';
                int rc = usage_error("--conninfo: %s", err ? err : "out of memory");
                PQfreemem(err);
                return rc;
        }
        PQconninfoFree(opts);
        return 0;
}

/* "host:port" (or the socket directory) of conninfo, never its password. */
static void describe_server(const char *conninfo, char *out, size_t len)
{
        const char *host = NULL, *hostaddr = NULL, *port = NULL, *db = NULL;
        PQconninfoOption *opts = PQconninfoParse(conninfo, NULL);
        for (PQconninfoOption *p = opts; p && p->keyword; p++) {
                if (!p->val || !p->val[0])
                        continue;
                if (strcmp(p->keyword, "host") == 0)
                        host = p->val;
                else if (strcmp(p->keyword, "hostaddr") == 0)
                        hostaddr = p->val;
                else if (strcmp(p->keyword, "port") == 0)
                        port = p->val;
                else if (strcmp(p->keyword, "dbname") == 0)
                        db = p->val;
        }
        if (!host)
                host = hostaddr ? hostaddr : getenv("PGHOST");
        if (!port)
                port = getenv("PGPORT");
        snprintf(out, len, "%s:%s%s%s", host ? host : "(default socket)", port ? port : "5432",
                 db ? "/" : "", db ? db : "");
        PQconninfoFree(opts);
}

void trim_message(char *s)
{
        size_t n = strlen(s);
        while (n && (s[n - 1] == '\n' || s[n - 1] == ' '))
                s[--n] = '\0';
        for (char *p = s; *p; p++)
                if (*p == '\n')
                        *p = ' ';
}

/* The user's conninfo, with a connect_timeout unless it sets one. */
static const char *const conn_keywords[] = {"connect_timeout", "dbname", NULL};

int check_server(const char *conninfo, char *what, size_t whatlen, char *why, size_t whylen)
{
        const char *values[] = {CONNECT_TIMEOUT_S, conninfo, NULL};
        describe_server(conninfo, what, whatlen);
        PGconn *c = PQconnectdbParams(conn_keywords, values, 1);
        int rc = 0;
        if (!c) {
                snprintf(why, whylen, "out of memory");
                return -ENOMEM;
        }
        if (PQstatus(c) != CONNECTION_OK) {
                snprintf(why, whylen, "%s", PQerrorMessage(c));
                rc = -EHOSTDOWN;
        } else {
                PGresult *r = PQexec(c, "SELECT 1");
                if (PQresultStatus(r) != PGRES_TUPLES_OK ||
                    strcmp(PQgetvalue(r, 0, 0) ? PQgetvalue(r, 0, 0) : "", "1") != 0) {
                        snprintf(why, whylen, "SELECT 1 failed: %s", PQerrorMessage(c));
                        rc = -EHOSTDOWN;
                }
                PQclear(r);
        }
        trim_message(why);
        PQfinish(c);
        return rc;
}

/* ---- the log ---- */

struct watchdog {
        const struct options *o;
        FILE *log;
        const char *segment;
        char server[256];
        ds_handle *h;
        char attach_error[512]; /* last attach error logged, to log changes only */
        int usage_warned;
        int server_state; /* -1 unknown, else a PGPing value */
        uint64_t server_down_since_ns;
        uint64_t next_ping_ns;
        size_t zombies;
        char zombie_parents[512];
        struct cluster_agent *cluster;
};

static void wlog(struct watchdog *w, const char *level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void wlog(struct watchdog *w, const char *level, const char *fmt, ...)
{
        struct timeval tv;
        struct tm tm;
        char when[32];
        va_list ap;
        gettimeofday(&tv, NULL);
        gmtime_r(&tv.tv_sec, &tm);
        strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
        fprintf(w->log, "%s.%03ldZ " PROG "[%d] %s: ", when, (long)(tv.tv_usec / 1000),
                (int)getpid(), level);
        va_start(ap, fmt);
        vfprintf(w->log, fmt, ap);
        va_end(ap);
        fputc('\n', w->log);
        fflush(w->log);
}

static int open_log(struct watchdog *w)
{
        if (!w->o->log_path) {
                w->log = stderr;
                return 0;
        }
        FILE *f = fopen(w->o->log_path, "ae");
        if (!f) {
                int e = errno;
                print_error("could not open the log file %s: %s", w->o->log_path, strerror(e));
                return -e;
        }
        setvbuf(f, NULL, _IOLBF, 0);
        if (w->log && w->log != stderr)
                fclose(w->log);
        w->log = f;
        return 0;
}

static void cluster_log(void *ctx, const char *level, const char *msg)
{
        wlog(ctx, level, "%s", msg);
}

/* ---- one round ---- */

#define MAX_DRAIN_CHECK 256

/* Asks the server which backends of draining slots (their client died
 * while they ran; not visible on this host) are gone, and frees those
 * slots. A query that fails frees nothing. */
static void check_drains(struct watchdog *w)
{
        int32_t pids[MAX_DRAIN_CHECK], gone[MAX_DRAIN_CHECK];
        size_t n = 0, n_gone = 0;
        if (!w->h || ds_drain_list(w->h, pids, MAX_DRAIN_CHECK, &n) || n == 0)
                return;
        char list[MAX_DRAIN_CHECK * 12 + 4], *p = list;
        *p++ = '{';
        for (size_t i = 0; i < n; i++)
                p += sprintf(p, "%s%d", i ? "," : "", (int)pids[i]);
        *p++ = '}', *p = '\0';
        const char *values[] = {CONNECT_TIMEOUT_S, w->o->conninfo, NULL};
        PGconn *c = PQconnectdbParams(conn_keywords, values, 1);
        if (!c)
                return;
        const char *params[] = {list};
        PGresult *r =
            PQstatus(c) == CONNECTION_OK
                ? PQexecParams(c, "SELECT pid FROM pg_stat_activity WHERE pid = ANY($1::int[])", 1,
                               NULL, params, NULL, NULL, 0)
                : NULL;
        if (r && PQresultStatus(r) == PGRES_TUPLES_OK) {
                for (size_t i = 0; i < n; i++) {
                        int alive = 0;
                        for (int row = 0; row < PQntuples(r) && !alive; row++)
                                alive = atoi(PQgetvalue(r, row, 0)) == pids[i];
                        if (!alive)
                                gone[n_gone++] = pids[i];
                }
        }
        PQclear(r);
        PQfinish(c);
        int freed = n_gone ? ds_drain_gone(w->h, gone, n_gone) : 0;
        if (freed > 0)
                wlog(w, "info", "%d draining slot(s) freed: their backends left server %s", freed,
                     w->server);
}

static void check_segment(struct watchdog *w)
{
        char err[512] = "";
        if (w->h && atomic_load(&ds_handle_header(w->h)->destroyed)) {
                wlog(w, "warning", "segment %s was destroyed or recreated; attaching again",
                     w->segment);
                cluster_segment_gone(w->cluster);
                ds_detach(w->h);
                w->h = NULL;
                snprintf(w->attach_error, sizeof(w->attach_error), "(reattaching)");
        }
        if (!w->h) {
                int rc = ds_attach(w->o->segment, 0, &w->h, err, sizeof(err));
                if (rc) {
                        if (!err[0])
                                snprintf(err, sizeof(err), "%s", strerror(-rc));
                        if (strcmp(err, w->attach_error) != 0)
                                wlog(w, "error", "%s; retrying every %.1f s", err,
                                     w->o->interval_ms / 1000.0);
                        snprintf(w->attach_error, sizeof(w->attach_error), "%s", err);
                        w->h = NULL;
                        return;
                }
                wlog(w, "info", "attached to segment %s", w->segment);
                w->attach_error[0] = '\0';
        }
        int n = ds_reclaim(w->h);
        if (n < 0) {
                wlog(w, "error", "could not reclaim dead processes on segment %s: %s", w->segment,
                     strerror(-n));
                return;
        }
        if (n > 0)
                wlog(w, "info", "reclaimed the slots of %d dead process%s", n, n == 1 ? "" : "es");
        struct ds_stats st;
        int rc = ds_stats_get(w->h, &st);
        if (rc) {
                wlog(w, "error", "could not read segment %s: %s", w->segment, strerror(-rc));
                return;
        }
        unsigned pct =
            st.cfg.pool_size ? (unsigned)((uint64_t)st.held * 100 / st.cfg.pool_size) : 0;
        int above = (uint64_t)st.held * 100 > (uint64_t)st.cfg.warn_usage_pct * st.cfg.pool_size;
        if (above && !w->usage_warned)
                wlog(w, "warning",
                     "usage %u%% (%u/%u slots held, %u waiting) is above warn_usage %u%%", pct,
                     st.held, st.cfg.pool_size, st.waiting, st.cfg.warn_usage_pct);
        else if (!above && w->usage_warned)
                wlog(w, "info", "usage %u%% (%u/%u) is back at or below warn_usage %u%%", pct,
                     st.held, st.cfg.pool_size, st.cfg.warn_usage_pct);
        w->usage_warned = above;
        ds_stats_free(&st);
}

struct zombie_parent {
        pid_t pid;
        size_t count;
        char comm[32];
};

static int by_count(const void *a, const void *b)
{
        const struct zombie_parent *x = a, *y = b;
        if (x->count != y->count)
                return x->count < y->count ? 1 : -1;
        return (x->pid > y->pid) - (x->pid < y->pid);
}

/* Counts the zombies of the host (this PID namespace) and their parents;
 * logs when either changes. */
static void check_zombies(struct watchdog *w)
{
        struct proc_entry *v = NULL;
        size_t n = 0, zombies = 0, np = 0;
        if (proc_list(&v, &n) != 0)
                return;
        struct zombie_parent *parents = calloc(n ? n : 1, sizeof(*parents));
        if (!parents) {
                free(v);
                return;
        }
        for (size_t i = 0; i < n; i++) {
                if (v[i].state != 'Z')
                        continue;
                zombies++;
                size_t j = 0;
                while (j < np && parents[j].pid != v[i].ppid)
                        j++;
                if (j == np) {
                        parents[np].pid = v[i].ppid;
                        snprintf(parents[np].comm, sizeof(parents[np].comm), "?");
                        for (size_t k = 0; k < n; k++)
                                if (v[k].pid == v[i].ppid)
                                        snprintf(parents[np].comm, sizeof(parents[np].comm), "%s",
                                                 v[k].comm);
                        np++;
                }
                parents[j].count++;
        }
        qsort(parents, np, sizeof(*parents), by_count);
        char list[512] = "";
        size_t o = 0;
        for (size_t j = 0; j < np && j < MAX_ZOMBIE_PARENTS && o < sizeof(list); j++)
                o += (size_t)snprintf(list + o, sizeof(list) - o, "%s%d (%s): %zu", j ? ", " : "",
                                      (int)parents[j].pid, parents[j].comm, parents[j].count);
        if (np > MAX_ZOMBIE_PARENTS && o < sizeof(list))
                snprintf(list + o, sizeof(list) - o, ", and %zu more parents",
                         np - MAX_ZOMBIE_PARENTS);
        if (zombies != w->zombies || strcmp(list, w->zombie_parents) != 0) {
                if (zombies)
                        wlog(w, "warning", "%zu zombie process%s on the host; parents: %s", zombies,
                             zombies == 1 ? "" : "es", list);
                else
                        wlog(w, "info", "no zombie processes on the host any more");
        }
        w->zombies = zombies;
        snprintf(w->zombie_parents, sizeof(w->zombie_parents), "%s", list);
        free(parents);
        free(v);
}

static const char *ping_meaning(PGPing p)
{
        switch (p) {
        case PQPING_OK:
                return "accepts connections";
        case PQPING_REJECT:
                return "is running but rejects connections (starting up, shutting down or in "
                       "recovery)";
        case PQPING_NO_RESPONSE:
                return "is not responding";
        case PQPING_NO_ATTEMPT:
                return "could not be pinged (the connection parameters are unusable)";
        }
        return "is in an unknown state";
}

static void ping_server(struct watchdog *w)
{
        const char *values[] = {CONNECT_TIMEOUT_S, w->o->conninfo, NULL};
        PGPing p = PQpingParams(conn_keywords, values, 1);
        uint64_t now = ds_now_ns();
        if ((int)p == w->server_state)
                return;
        if (p == PQPING_OK && w->server_state != -1)
                wlog(w, "info", "server %s is up again (down for %.1f s)", w->server,
                     (double)(now - w->server_down_since_ns) / 1e9);
        else if (p == PQPING_OK)
                wlog(w, "info", "server %s accepts connections", w->server);
        else
                wlog(w, "warning", "server %s %s", w->server, ping_meaning(p));
        if (p != PQPING_OK && (w->server_state == PQPING_OK || w->server_state == -1))
                w->server_down_since_ns = now;
        w->server_state = (int)p;
}

/* ---- the loop ---- */

int cmd_watchdog(const struct options *o)
{
        struct watchdog w = {.o = o, .segment = ds_segment_name(o->segment), .server_state = -1};
        char dir[PATH_MAX], path[PATH_MAX + 256];
        int lock = -1, rc;
        pid_t holder;
        if (open_log(&w))
                return 1;
        if (runtime_dir(dir, sizeof(dir)))
                return 1;
        snprintf(path, sizeof(path), "%s/watchdog.", dir);
        file_name_part(path, sizeof(path), w.segment + 1);
        strncat(path, ".lock", sizeof(path) - strlen(path) - 1);
        rc = take_instance_lock(path, &lock, &holder);
        if (rc == -EBUSY) {
                print_error("a watchdog for segment %s is already running (pid %d)", w.segment,
                            (int)holder);
                return DS_EXIT_RUNNING;
        }
        if (rc) {
                print_error("could not lock %s: %s", path, strerror(-rc));
                return 1;
        }
        if (o->conninfo)
                describe_server(o->conninfo, w.server, sizeof(w.server));
        sigset_t set, old;
        sigemptyset(&set);
        sigaddset(&set, SIGTERM);
        sigaddset(&set, SIGINT);
        sigaddset(&set, SIGHUP);
        sigprocmask(SIG_BLOCK, &set, &old);
        /* the HTTP server's thread starts with these signals blocked too */
        struct metrics_server *metrics = NULL;
        char bound[128] = "";
        if (o->metrics_listen) {
                char why[512];
                rc = metrics_start(o->metrics_listen, w.segment, &metrics, bound, sizeof(bound),
                                   why, sizeof(why));
                if (rc) {
                        print_error("--metrics-listen: %s", why);
                        close(lock);
                        sigprocmask(SIG_SETMASK, &old, NULL);
                        return 1;
                }
        }
        wlog(&w, "info", "watchdog started for segment %s: checks every %.1f s%s", w.segment,
             o->interval_ms / 1000.0, o->conninfo ? "" : ", no server ping (no --conninfo)");
        if (o->conninfo)
                wlog(&w, "info", "pinging server %s every %.1f s", w.server,
                     o->ping_interval_ms / 1000.0);
        if (metrics)
                wlog(&w, "info", "serving metrics at http://%s/metrics", bound);
        if (o->cluster && !(w.cluster = cluster_open(o, w.segment, cluster_log, &w))) {
                metrics_stop(metrics);
                print_error("out of memory");
                close(lock);
                return 1;
        }
        for (;;) {
                check_segment(&w);
                if (o->conninfo)
                        check_drains(&w);
                if (w.cluster)
                        cluster_step(w.cluster, w.h, w.segment);
                check_zombies(&w);
                uint64_t now = ds_now_ns();
                if (o->conninfo && now >= w.next_ping_ns) {
                        ping_server(&w);
                        w.next_ping_ns = ds_now_ns() + (uint64_t)o->ping_interval_ms * 1000000ull;
                }
                uint64_t wait_ms = o->interval_ms;
                if (o->conninfo) {
                        now = ds_now_ns();
                        uint64_t to_ping =
                            w.next_ping_ns > now ? (w.next_ping_ns - now) / 1000000u : 0;
                        if (to_ping < wait_ms)
                                wait_ms = to_ping;
                }
                struct timespec ts = {(time_t)(wait_ms / 1000), (long)(wait_ms % 1000) * 1000000L};
                siginfo_t info;
                int sig = sigtimedwait(&set, &info, &ts);
                if (sig == SIGHUP) {
                        if (open_log(&w) == 0)
                                wlog(&w, "info", "log reopened");
                } else if (sig > 0) {
                        wlog(&w, "info", "stopping on %s", sig == SIGTERM ? "SIGTERM" : "SIGINT");
                        break;
                }
        }
        metrics_stop(metrics);
        cluster_close(w.cluster);
        ds_detach(w.h);
        if (w.log != stderr)
                fclose(w.log);
        close(lock);
        sigprocmask(SIG_SETMASK, &old, NULL);
        return 0;
}
