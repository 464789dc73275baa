/* dyncoord.h - what the files of the dyncoord command share: the parsed
 * options, the message printers and the commands implemented outside
 * dyncoord.c (--run in dyncoord_run.c, --watchdog and the server check in
 * dyncoord_watchdog.c). */
#ifndef DYNCOORD_H
#define DYNCOORD_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "dynshim/config.h"
#include "dynshim/coord.h"

#define PROG "dyncoord"

/* Exit status of --run and --watchdog when another live instance holds the
 * lock (sysexits.h EX_TEMPFAIL): distinct from 1 and 2, which a supervised
 * program may return itself. */
#define DS_EXIT_RUNNING 75
/* Exit status of --run when the command could not be found / executed. */
#define DS_EXIT_NOT_FOUND 127
#define DS_EXIT_NOT_EXEC  126

enum command {
        CMD_NONE = 0,
        CMD_INIT,
        CMD_SET,
        CMD_STATS,
        CMD_HEALTH,
        CMD_DESTROY,
        CMD_VERSION,
        CMD_RUN,
        CMD_WATCHDOG,
        CMD_UNSET,
};

struct options {
        enum command cmd;
        int help;
        const char *segment; /* NULL: $DYNSHIM_SEGMENT, else the default */
        struct ds_config cfg;
        struct ds_capacity cap;
        struct ds_create_opts create;
        int json;
        int prometheus;
        uint32_t watch_ms;     /* --stats --watch; 0: once */
        const char *init_only; /* first option given that only --init takes */
        int init_only_is_live; /* ... and it is a key --set can change */
        const char *stats_only;
        const char *run_only;      /* first option only --run takes */
        const char *watchdog_only; /* first option only --watchdog takes */
        const char *conninfo_opt;  /* "--conninfo" if given (health, watchdog) */
        const char **pairs;        /* KEY=VALUE arguments of --set, keys of --unset */
        size_t n_pairs;
        const char *stray; /* first other non-option argument */
        /* --run */
        const char *run_name;
        int replace;
        int restart_on_failure;
        uint32_t max_restarts;
        uint32_t grace_ms;
        char **command; /* NULL-terminated, after "--" */
        /* --watchdog, --health */
        uint32_t interval_ms;
        uint32_t ping_interval_ms;
        const char *conninfo; /* NULL: no server check */
        const char *log_path; /* NULL: stderr */
        /* --watchdog --cluster */
        const char *cluster;      /* NULL: no cluster */
        const char *cluster_host; /* NULL: hostname + segment */
        uint32_t cluster_budget;
        const char *cluster_only; /* first option only --cluster takes */
        /* --stats --wide: every column (the default view fits 100) */
        int wide;
        /* --watchdog --metrics-listen ADDR:PORT: NULL, no HTTP server */
        const char *metrics_listen;
};

/* Parses dyncoord's command line into *o (getopt_long: argv may be
 * permuted, and the first "--" becomes NULL). 0, or -EINVAL after a
 * message on stderr (exit status 2), or -ENOMEM. o->pairs is allocated
 * even on error; the caller frees it. */
int parse_args(int argc, char *argv[], struct options *o);

void print_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void print_warning(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Writes s as the body of a quoted string (without the quotes) for JSON
 * (json != 0) or for a Prometheus label value: quotes, backslashes and
 * control characters escaped, invalid UTF-8 replaced by U+FFFD. */
void write_escaped(FILE *f, const char *s, int json);

/* The directory for lock files: $DYNSHIM_RUN_DIR, else /run/dynshim as
 * root, else $XDG_RUNTIME_DIR/dynshim, else /tmp/dynshim-UID; created if
 * missing, refused if another user owns it or others may write to it. */
int runtime_dir(char *out, size_t len);
/* The path runtime_dir uses, without creating or checking it. */
void runtime_dir_path(char *out, size_t len);

/* Takes the exclusive flock on path (created 0644), writing our pid in it.
 * 0 when taken (*fd holds it, close-on-exec); -EBUSY when a live process
 * holds it (*holder is its pid, 0 if unknown); other -errno on failure. */
int take_instance_lock(const char *path, int *fd, pid_t *holder);

/* Appends name to buf in a form safe for a file name (%XX escapes). */
void file_name_part(char *buf, size_t len, const char *name);

/* A process as /proc shows it. */
struct proc_entry {
        pid_t pid, ppid;
        char state;
        char comm[32];
};

/* Every process of the PID namespace (malloc'd). 0 or -errno. */
int proc_list(struct proc_entry **out, size_t *n);

int cmd_run(const struct options *o);
int cmd_watchdog(const struct options *o);

/* Checks that the server behind conninfo answers (connect + SELECT 1).
 * 0, or -EHOSTDOWN with the reason in why. what gets the server's
 * description (host and port, never a password). */
int check_server(const char *conninfo, char *what, size_t whatlen, char *why, size_t whylen);

/* Drops trailing newlines and spaces of a libpq message and joins its
 * lines with spaces. */
void trim_message(char *s);

/* 0 if conninfo parses, else a usage error (printed) and -EINVAL. */
int validate_conninfo(const char *conninfo);

/* Writes the Prometheus text exposition of st (as --stats --prometheus). */
void print_stats_prometheus(FILE *f, const char *segment, const struct ds_stats *st);

/* ---- the metrics server of --watchdog --metrics-listen (dyncoord_metrics.c) ---- */

struct metrics_server;

/* Parses "ADDR:PORT" ("127.0.0.1:9432", "[::1]:9432", "localhost:0"; port 0:
 * any free port; a numeric address or localhost, never looked up in DNS)
 * into *ss (NULL: only checks). 0, or a usage error printed
 * and -EINVAL. */
struct sockaddr_storage;
int metrics_parse_listen(const char *spec, struct sockaddr_storage *ss);

/* Listens on spec and serves GET /metrics from its own thread, attaching to
 * segment for every request. 0 and *out, or -errno with the reason in why.
 * bound gets the address actually listened on ("127.0.0.1:40123"). */
int metrics_start(const char *spec, const char *segment, struct metrics_server **out, char *bound,
                  size_t boundlen, char *why, size_t whylen);
void metrics_stop(struct metrics_server *m);

/* ---- the cluster agent (dyncoord_cluster.c, docs/cluster.md) ---- */

typedef void (*cluster_log_fn)(void *ctx, const char *level, const char *msg);
struct cluster_agent;

/* The agent of --watchdog --cluster; logs through fn. NULL: out of memory. */
struct cluster_agent *cluster_open(const struct options *o, const char *segment, cluster_log_fn fn,
                                   void *ctx);
/* One round: report, free the claims of dead hosts whose backends are gone,
 * grow or give back, set the local pool_size. h NULL: nothing to do. */
void cluster_step(struct cluster_agent *a, ds_handle *h, const char *segment);
/* The segment handle given to cluster_step is about to be detached. */
void cluster_segment_gone(struct cluster_agent *a);
void cluster_close(struct cluster_agent *a);

/* The host name an agent uses by default: the hostname, then the segment. */
int cluster_default_host(const char *segment, char *out, size_t len);

/* What the agent of a segment last saw (its state file), for --stats. */
#define CLUSTER_VIEW_HOSTS 64
struct cluster_view_host {
        char name[128];
        char state[32];
        uint32_t share, claim, demand, held, target, backends;
};
struct cluster_view {
        int present;
        char name[128], host[128], state[32];
        uint32_t budget, claimed;
        int64_t updated; /* Unix time of the agent's last round */
        size_t n_hosts;
        struct cluster_view_host hosts[CLUSTER_VIEW_HOSTS];
};
/* 0, or -ENOENT when the segment has no cluster agent's state. */
int cluster_read_state(const char *segment, struct cluster_view *v);

#endif
