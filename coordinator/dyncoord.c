/* dyncoord.c - the command-line tool: parses the options; creates,
 * configures, inspects (table, JSON, Prometheus, live view), checks and
 * removes a pool's shared-memory segment. --run is in dyncoord_run.c,
 * --watchdog and the server check in dyncoord_watchdog.c.
 *
 * Every cmd_* function prints its own error and returns 0, a negative errno
 * value, or (--run, --watchdog) a positive exit status; main alone turns
 * that into the exit status:
 *   0   success
 *   1   failure at run time (segment missing or unusable, lock failure)
 *   2   usage or configuration error (-EINVAL)
 *   75  --run/--watchdog: another live instance holds the lock
 *   N   --run: the supervised program's status (128+signal if killed) */
#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "dynshim/config.h"
#include "dynshim/coord.h"
#include "dyncoord.h"

static const char *const command_names[] = {
    [CMD_NONE] = "",
    [CMD_INIT] = "--init",
    [CMD_SET] = "--set",
    [CMD_STATS] = "--stats",
    [CMD_HEALTH] = "--health",
    [CMD_DESTROY] = "--destroy",
    [CMD_VERSION] = "--version",
    [CMD_RUN] = "--run",
    [CMD_WATCHDOG] = "--watchdog",
    [CMD_UNSET] = "--unset",
};

enum option_id {
        OPT_HELP = 'h',
        OPT_VERSION = 'V',
        OPT_SEGMENT = 256,
        OPT_INIT,
        OPT_SET,
        OPT_UNSET,
        OPT_STATS,
        OPT_HEALTH,
        OPT_DESTROY,
        OPT_JSON,
        OPT_FORCE,
        OPT_MODE,
        OPT_GROUP,
        /* options that set one value of the configuration or capacity */
        OPT_POOL_SIZE,
        OPT_SOFT_LIMIT,
        OPT_MAX_LIMIT,
        OPT_IDLE_TIMEOUT,
        OPT_REALLOC_INTERVAL,
        OPT_WAIT_TIMEOUT,
        OPT_WARN_USAGE,
        OPT_IDLE_RELEASE,
        OPT_REUSE,
        OPT_REUSE_TIMEOUT,
        OPT_HANDOVER_DELAY,
        OPT_DEADLOCK_TIMEOUT,
        OPT_MAX_PROCESSES,
        OPT_MAX_LEASES,
        OPT_MAX_SCRAPERS,
        OPT_RUN,
        OPT_REPLACE,
        OPT_RESTART,
        OPT_MAX_RESTARTS,
        OPT_GRACE,
        OPT_WATCHDOG,
        OPT_INTERVAL,
        OPT_PING_INTERVAL,
        OPT_CONNINFO,
        OPT_LOG,
        OPT_WATCH,
        OPT_PROMETHEUS,
        OPT_CLUSTER,
        OPT_CLUSTER_BUDGET,
        OPT_CLUSTER_HOST,
};

static const struct option long_options[] = {
    {"segment", required_argument, NULL, OPT_SEGMENT},
    {"init", no_argument, NULL, OPT_INIT},
    {"set", optional_argument, NULL, OPT_SET},
    {"unset", optional_argument, NULL, OPT_UNSET},
    {"stats", no_argument, NULL, OPT_STATS},
    {"health", no_argument, NULL, OPT_HEALTH},
    {"destroy", no_argument, NULL, OPT_DESTROY},
    {"help", no_argument, NULL, OPT_HELP},
    {"version", no_argument, NULL, OPT_VERSION},
    {"json", no_argument, NULL, OPT_JSON},
    {"force", no_argument, NULL, OPT_FORCE},
    {"mode", required_argument, NULL, OPT_MODE},
    {"group", required_argument, NULL, OPT_GROUP},
    {"pool-size", required_argument, NULL, OPT_POOL_SIZE},
    {"soft-limit", required_argument, NULL, OPT_SOFT_LIMIT},
    {"max-limit", required_argument, NULL, OPT_MAX_LIMIT},
    {"idle-timeout", required_argument, NULL, OPT_IDLE_TIMEOUT},
    {"realloc-interval", required_argument, NULL, OPT_REALLOC_INTERVAL},
    {"wait-timeout", required_argument, NULL, OPT_WAIT_TIMEOUT},
    {"warn-usage", required_argument, NULL, OPT_WARN_USAGE},
    {"idle-release", required_argument, NULL, OPT_IDLE_RELEASE},
    {"reuse", required_argument, NULL, OPT_REUSE},
    {"reuse-timeout", required_argument, NULL, OPT_REUSE_TIMEOUT},
    {"handover-delay", required_argument, NULL, OPT_HANDOVER_DELAY},
    {"deadlock-timeout", required_argument, NULL, OPT_DEADLOCK_TIMEOUT},
    {"max-processes", required_argument, NULL, OPT_MAX_PROCESSES},
    {"max-leases", required_argument, NULL, OPT_MAX_LEASES},
    {"max-scrapers", required_argument, NULL, OPT_MAX_SCRAPERS},
    {"run", required_argument, NULL, OPT_RUN},
    {"replace", no_argument, NULL, OPT_REPLACE},
    {"restart", required_argument, NULL, OPT_RESTART},
    {"max-restarts", required_argument, NULL, OPT_MAX_RESTARTS},
    {"grace", required_argument, NULL, OPT_GRACE},
    {"watchdog", no_argument, NULL, OPT_WATCHDOG},
    {"interval", required_argument, NULL, OPT_INTERVAL},
    {"ping-interval", required_argument, NULL, OPT_PING_INTERVAL},
    {"conninfo", required_argument, NULL, OPT_CONNINFO},
    {"log", required_argument, NULL, OPT_LOG},
    {"watch", required_argument, NULL, OPT_WATCH},
    {"prometheus", no_argument, NULL, OPT_PROMETHEUS},
    {"cluster", required_argument, NULL, OPT_CLUSTER},
    {"cluster-budget", required_argument, NULL, OPT_CLUSTER_BUDGET},
    {"cluster-host", required_argument, NULL, OPT_CLUSTER_HOST},
    {NULL, 0, NULL, 0},
};

enum value_kind { V_COUNT, V_PERCENT, V_DURATION, V_ONOFF };

/* One option that sets one uint32_t of the configuration or the capacity. */
static const struct value_option {
        int id;
        const char *name;
        enum value_kind kind;
        int in_capacity; /* 1: off is into struct ds_capacity, else ds_config */
        size_t off;
        uint32_t max; /* for V_COUNT */
} value_options[] = {
    {OPT_POOL_SIZE, "--pool-size", V_COUNT, 0, offsetof(struct ds_config, pool_size),
     DS_CAP_LEASES_MAX},
    {OPT_SOFT_LIMIT, "--soft-limit", V_COUNT, 0, offsetof(struct ds_config, soft_limit),
     DS_CAP_LEASES_MAX},
    {OPT_MAX_LIMIT, "--max-limit", V_COUNT, 0, offsetof(struct ds_config, max_limit),
     DS_CAP_LEASES_MAX},
    {OPT_IDLE_TIMEOUT, "--idle-timeout", V_DURATION, 0, offsetof(struct ds_config, idle_timeout_ms),
     0},
    {OPT_REALLOC_INTERVAL, "--realloc-interval", V_DURATION, 0,
     offsetof(struct ds_config, realloc_interval_ms), 0},
    {OPT_WAIT_TIMEOUT, "--wait-timeout", V_DURATION, 0, offsetof(struct ds_config, wait_timeout_ms),
     0},
    {OPT_WARN_USAGE, "--warn-usage", V_PERCENT, 0, offsetof(struct ds_config, warn_usage_pct), 100},
    {OPT_IDLE_RELEASE, "--idle-release", V_ONOFF, 0, offsetof(struct ds_config, idle_release), 0},
    {OPT_REUSE, "--reuse", V_ONOFF, 0, offsetof(struct ds_config, reuse), 0},
    {OPT_REUSE_TIMEOUT, "--reuse-timeout", V_DURATION, 0,
     offsetof(struct ds_config, reuse_timeout_ms), 0},
    {OPT_HANDOVER_DELAY, "--handover-delay", V_DURATION, 0,
     offsetof(struct ds_config, handover_delay_ms), 0},
    {OPT_DEADLOCK_TIMEOUT, "--deadlock-timeout", V_DURATION, 0,
     offsetof(struct ds_config, deadlock_timeout_ms), 0},
    {OPT_MAX_PROCESSES, "--max-processes", V_COUNT, 1, offsetof(struct ds_capacity, max_procs),
     DS_CAP_PROCS_MAX},
    {OPT_MAX_LEASES, "--max-leases", V_COUNT, 1, offsetof(struct ds_capacity, max_leases),
     DS_CAP_LEASES_MAX},
    {OPT_MAX_SCRAPERS, "--max-scrapers", V_COUNT, 1, offsetof(struct ds_capacity, max_scrapers),
     DS_CAP_SCRAPERS_MAX},
};

#define N_VALUE_OPTIONS (sizeof(value_options) / sizeof(value_options[0]))

/* ---- messages ---- */

static void vprint_error(const char *fmt, va_list ap)
{
        fputs(PROG ": ", stderr);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
}

/* Prints "dyncoord: " and one sentence on stderr. */
void print_error(const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        vprint_error(fmt, ap);
        va_end(ap);
}

/* Prints "dyncoord: warning: " and one sentence on stderr. */
void print_warning(const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        fputs(PROG ": warning: ", stderr);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        va_end(ap);
}

/* Prints a usage or configuration error; returns -EINVAL, which main turns
 * into exit status 2 and a hint to --help. */
int usage_error(const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        vprint_error(fmt, ap);
        va_end(ap);
        return -EINVAL;
}

static void print_usage(FILE *f)
{
        fputs("Usage: " PROG " [--segment NAME] COMMAND [OPTIONS]\n"
              "\n"
              "Manages the shared pool of PostgreSQL connection slots used by libdynshim.so.\n"
              "\n"
              "Commands:\n"
              "  --init                 create the pool's segment\n"
              "  --set KEY=VALUE...     change the live configuration (keys: pool_size,\n"
              "                         soft_limit, max_limit, idle_timeout, realloc_interval,\n"
              "                         wait_timeout, warn_usage, idle_release, reuse,\n"
              "                         reuse_timeout, handover_delay, deadlock_timeout;\n"
              "                         and per scraper\n"
              "                         scraper.NAME.max, .reserve, .weight, .idle_release)\n"
              "  --unset KEY...         remove scraper overrides (scraper.NAME.KEY, or\n"
              "                         scraper.NAME for all of them)\n"
              "  --stats [--json|--prometheus] [--watch S]\n"
              "                         show the pool and every scraper (--watch: live view)\n"
              "  --health [--conninfo STR]\n"
              "                         check the segment, its invariants and the server\n"
              "  --run NAME [--replace] [--restart on-failure [--max-restarts N]] [--grace S]\n"
              "        -- CMD [ARGS...] run a scraper under the shim and supervise it\n"
              "  --watchdog [--interval S] [--ping-interval S] [--conninfo STR] [--log FILE]\n"
              "             [--cluster NAME --cluster-budget N [--cluster-host NAME]]\n"
              "                         reclaim dead processes' slots, watch usage, zombies\n"
              "                         and the server, in the foreground\n"
              "  --destroy              remove the segment\n"
              "  --help                 show this help\n"
              "  --version              show the version\n"
              "\n"
              "Options of every command:\n"
              "  --segment NAME         segment to use (default $DYNSHIM_SEGMENT, "
              "else " DS_DEFAULT_SEGMENT ")\n"
              "\n"
              "Options of --init:\n"
              "  --pool-size N          slots held by all processes together (20)\n"
              "  --soft-limit N         per-scraper limit with 2 or more active scrapers (10)\n"
              "  --max-limit N          per-scraper limit with 1 active scraper (15)\n"
              "  --idle-timeout S       a scraper without libpq activity this long is idle (60)\n"
              "  --realloc-interval S   limits are recomputed at least this often (30)\n"
              "  --wait-timeout S       a connect waits at most this long for a slot (30)\n"
              "  --warn-usage PCT       usage above this percentage is a warning (80)\n"
              "  --idle-release on|off  release the connections of idle scrapers (on)\n"
              "  --reuse on|off         park finished connections for the process's next\n"
              "                         connect with the same parameters (off)\n"
              "  --reuse-timeout S      a parked connection is closed after this long (5)\n"
              "  --handover-delay S     while a connect waits, a connection unused this long\n"
              "                         is handed over to it (0.1)\n"
              "  --deadlock-timeout S   connects that wait while holding the only slots they\n"
              "                         could get: the newest fails after this long (1)\n"
              "  --max-processes N      processes attached at once (1024)\n"
              "  --max-leases N         slots held plus connects waiting, at once (4096)\n"
              "  --max-scrapers N       distinct scraper names remembered (256)\n"
              "  --mode OCTAL           permissions of the segment (0600)\n"
              "  --group NAME           group of the segment (name or number)\n"
              "  --force                replace an existing segment\n"
              "\n"
              "Options of --run:\n"
              "  --replace              stop a running instance of NAME first (TERM, then KILL\n"
              "                         after the grace period)\n"
              "  --restart on-failure   restart CMD when it fails (non-zero status or signal)\n"
              "  --max-restarts N       at most N restarts (5)\n"
              "  --grace S              time between TERM and KILL (10)\n"
              "  The library is $DYNSHIM_LIBRARY, else ../lib/libdynshim.so (or the library\n"
              "  directory it was installed with) next to the dyncoord binary, else the build\n"
              "  tree's shim/libdynshim.so.\n"
              "\n"
              "Options of --watchdog:\n"
              "  --interval S           reclaim and check this often (5)\n"
              "  --ping-interval S      ping the server this often (300)\n"
              "  --conninfo STR         the server to ping (also --health); no ping without it\n"
              "  --log FILE             append the log to FILE instead of stderr\n"
              "  --cluster NAME         share one connection budget with the other hosts of\n"
              "                         cluster NAME through the server of --conninfo: this\n"
              "                         host's pool_size becomes its share (docs/cluster.md)\n"
              "  --cluster-budget N     the connections the cluster may use in all\n"
              "  --cluster-host NAME    this host's name in the cluster (hostname+segment)\n"
              "\n"
              "Durations S are seconds (\"60\", \"0.5\") or carry a unit (\"500ms\", \"2s\").\n"
              "\n"
              "Exit status: 0 success, 1 failure at run time, 2 usage or configuration error,\n"
              "75 another instance is running (--run, --watchdog); --run exits with CMD's\n"
              "status (128+N when killed by signal N), 126/127 when CMD cannot be run.\n",
              f);
}

/* ---- parsing ---- */

static int parse_value(const struct value_option *v, const char *arg, uint32_t *out)
{
        uint32_t n;
        switch (v->kind) {
        case V_COUNT:
                if (ds_parse_u32(arg, 0, UINT32_MAX, &n) != 0)
                        return usage_error("%s: '%s' is not a whole number", v->name, arg);
                if (ds_parse_u32(arg, 1, v->max, out) != 0)
                        return usage_error("%s: '%s' is out of range (1 to %u)", v->name, arg,
                                           v->max);
                return 0;
        case V_PERCENT:
                if (ds_parse_u32(arg, 1, 100, out) != 0)
                        return usage_error("%s: '%s' is not a percentage from 1 to 100", v->name,
                                           arg);
                return 0;
        case V_DURATION:
                if (ds_parse_duration_ms(arg, out) != 0)
                        return usage_error("%s: '%s' is not a duration in seconds up to one day "
                                           "(e.g. 60, 0.5, 500ms)",
                                           v->name, arg);
                return 0;
        case V_ONOFF:
                if (ds_parse_onoff(arg, out) != 0)
                        return usage_error("%s: '%s' is not on or off", v->name, arg);
                return 0;
        }
        return -EINVAL;
}

static int apply_value_option(struct options *o, int id, const char *arg)
{
        for (size_t i = 0; i < N_VALUE_OPTIONS; i++) {
                const struct value_option *v = &value_options[i];
                if (v->id != id)
                        continue;
                uint32_t n;
                int rc = parse_value(v, arg, &n);
                if (rc)
                        return rc;
                char *base = v->in_capacity ? (char *)&o->cap : (char *)&o->cfg;
                memcpy(base + v->off, &n, sizeof(n));
                if (!o->init_only) {
                        o->init_only = v->name;
                        o->init_only_is_live = !v->in_capacity;
                }
                return 0;
        }
        return usage_error("internal error: option %d has no handler", id);
}

static int parse_mode(const char *arg, mode_t *out)
{
        uint32_t mode = 0;
        size_t n = strlen(arg);
        if (n == 0 || strspn(arg, "01234567") != n)
                return usage_error("--mode: '%s' is not an octal permission mode (e.g. 0660)", arg);
        for (const char *p = arg; *p && mode <= 07777; p++)
                mode = mode * 8 + (uint32_t)(*p - '0');
        if (mode > 0777)
                return usage_error("--mode: '%s' has bits beyond 0777", arg);
        if ((mode & 0600) != 0600)
                return usage_error("--mode: '%s' does not let the owner read and write the segment",
                                   arg);
        *out = (mode_t)mode;
        return 0;
}

static int parse_group(const char *arg, gid_t *out)
{
        struct group *g = *arg ? getgrnam(arg) : NULL;
        uint32_t gid;
        if (g) {
                *out = g->gr_gid;
                return 0;
        }
        if (ds_parse_u32(arg, 0, UINT32_MAX - 1, &gid) == 0) {
                *out = (gid_t)gid;
                return 0;
        }
        return usage_error("--group: there is no group named '%s'", arg);
}

static int set_command(struct options *o, enum command cmd)
{
        if (o->cmd != CMD_NONE && o->cmd != cmd)
                return usage_error("two commands given: %s and %s", command_names[o->cmd],
                                   command_names[cmd]);
        o->cmd = cmd;
        return 0;
}

/* Reports the option getopt_long refused (it prints nothing: opterr = 0). */
static int bad_option(int c, char *const argv[])
{
        const char *arg = argv[optind - 1];
        if (c == ':') {
                for (const struct option *l = long_options; l->name; l++)
                        if (l->val == optopt)
                                return usage_error("--%s needs a value", l->name);
                return usage_error("'%s' needs a value", arg);
        }
        if (strncmp(arg, "--", 2) == 0) {
                const char *name = arg + 2;
                size_t len = strcspn(name, "=");
                int matches = 0;
                for (const struct option *l = long_options; l->name; l++)
                        matches += strncmp(l->name, name, len) == 0;
                if (matches > 1)
                        return usage_error("option '%.*s' is ambiguous", (int)(len + 2), arg);
                for (const struct option *l = long_options; l->name; l++)
                        if (strlen(l->name) == len && strncmp(l->name, name, len) == 0)
                                return usage_error("option '--%s' takes no value", l->name);
                return usage_error("unknown option '%.*s'", (int)(len + 2), arg);
        }
        if (optopt)
                return usage_error("unknown option '-%c'", optopt);
        return usage_error("unknown option '%s'", arg);
}

static int parse_duration_option(const char *name, const char *arg, uint32_t min_ms, uint32_t *out)
{
        if (ds_parse_duration_ms(arg, out) != 0)
                return usage_error("%s: '%s' is not a duration in seconds up to one day "
                                   "(e.g. 60, 0.5, 500ms)",
                                   name, arg);
        if (*out < min_ms)
                return usage_error("%s: '%s' is below the minimum of %u ms", name, arg, min_ms);
        return 0;
}

/* Remembers the first option given that only one command takes. */
static void note_only(const char **slot, const char *name)
{
        if (!*slot)
                *slot = name;
}

/* A cluster or host name: 1 to 127 printable bytes, no spaces. */
static int check_cluster_name(const char *opt, const char *v)
{
        size_t n = strlen(v);
        if (n == 0 || n > 127)
                return usage_error("%s: the name must have 1 to 127 bytes", opt);
        for (const unsigned char *p = (const unsigned char *)v; *p; p++)
                if (*p <= 0x20 || *p == 0x7f)
                        return usage_error("%s: '%s' contains a space or a control character", opt,
                                           v);
        return 0;
}

static int parse_option(int c, struct options *o, char *const argv[])
{
        switch (c) {
        case OPT_HELP:
                o->help = 1;
                return 0;
        case OPT_VERSION:
                return set_command(o, CMD_VERSION);
        case OPT_SEGMENT:
                o->segment = optarg;
                return 0;
        case OPT_INIT:
                return set_command(o, CMD_INIT);
        case OPT_SET:
        case OPT_UNSET: {
                int rc = set_command(o, c == OPT_SET ? CMD_SET : CMD_UNSET);
                if (!rc && optarg)
                        o->pairs[o->n_pairs++] = optarg;
                return rc;
        }
        case OPT_STATS:
                return set_command(o, CMD_STATS);
        case OPT_HEALTH:
                return set_command(o, CMD_HEALTH);
        case OPT_DESTROY:
                return set_command(o, CMD_DESTROY);
        case OPT_WATCHDOG:
                return set_command(o, CMD_WATCHDOG);
        case OPT_RUN: {
                int rc = set_command(o, CMD_RUN);
                if (rc)
                        return rc;
                if (!optarg[0])
                        return usage_error("--run: the scraper name is empty");
                if (strlen(optarg) >= DS_NAME_MAX)
                        return usage_error("--run: the scraper name '%s' is longer than %d bytes",
                                           optarg, DS_NAME_MAX - 1);
                o->run_name = optarg;
                return 0;
        }
        case OPT_JSON:
                o->json = 1;
                note_only(&o->stats_only, "--json");
                return 0;
        case OPT_PROMETHEUS:
                o->prometheus = 1;
                note_only(&o->stats_only, "--prometheus");
                return 0;
        case OPT_WATCH:
                note_only(&o->stats_only, "--watch");
                return parse_duration_option("--watch", optarg, 100, &o->watch_ms);
        case OPT_FORCE:
                o->create.force = 1;
                note_only(&o->init_only, "--force");
                return 0;
        case OPT_MODE:
                note_only(&o->init_only, "--mode");
                return parse_mode(optarg, &o->create.mode);
        case OPT_GROUP:
                note_only(&o->init_only, "--group");
                return parse_group(optarg, &o->create.group);
        case OPT_REPLACE:
                o->replace = 1;
                note_only(&o->run_only, "--replace");
                return 0;
        case OPT_RESTART:
                note_only(&o->run_only, "--restart");
                if (strcmp(optarg, "on-failure") == 0)
                        o->restart_on_failure = 1;
                else if (strcmp(optarg, "no") == 0)
                        o->restart_on_failure = 0;
                else
                        return usage_error("--restart: '%s' is not a restart policy (on-failure "
                                           "or no)",
                                           optarg);
                return 0;
        case OPT_MAX_RESTARTS:
                note_only(&o->run_only, "--max-restarts");
                if (ds_parse_u32(optarg, 0, 1000000, &o->max_restarts) != 0)
                        return usage_error("--max-restarts: '%s' is not a whole number from 0 to "
                                           "1000000",
                                           optarg);
                return 0;
        case OPT_GRACE:
                note_only(&o->run_only, "--grace");
                return parse_duration_option("--grace", optarg, 0, &o->grace_ms);
        case OPT_INTERVAL:
                note_only(&o->watchdog_only, "--interval");
                return parse_duration_option("--interval", optarg, 50, &o->interval_ms);
        case OPT_PING_INTERVAL:
                note_only(&o->watchdog_only, "--ping-interval");
                return parse_duration_option("--ping-interval", optarg, 50, &o->ping_interval_ms);
        case OPT_LOG:
                note_only(&o->watchdog_only, "--log");
                if (!optarg[0])
                        return usage_error("--log: the file name is empty");
                o->log_path = optarg;
                return 0;
        case OPT_CLUSTER:
                note_only(&o->watchdog_only, "--cluster");
                o->cluster = optarg;
                return check_cluster_name("--cluster", optarg);
        case OPT_CLUSTER_HOST:
                note_only(&o->watchdog_only, "--cluster-host");
                note_only(&o->cluster_only, "--cluster-host");
                o->cluster_host = optarg;
                return check_cluster_name("--cluster-host", optarg);
        case OPT_CLUSTER_BUDGET:
                note_only(&o->watchdog_only, "--cluster-budget");
                note_only(&o->cluster_only, "--cluster-budget");
                if (ds_parse_u32(optarg, 2, 1000000, &o->cluster_budget) != 0)
                        return usage_error("--cluster-budget: '%s' is not a whole number from 2 "
                                           "to 1000000",
                                           optarg);
                return 0;
        case OPT_CONNINFO:
                o->conninfo_opt = "--conninfo";
                o->conninfo = optarg;
                return validate_conninfo(optarg);
        case ':':
        case '?':
                return bad_option(c, argv);
        default:
                return apply_value_option(o, c, optarg);
        }
}

static int check_command_options(struct options *o)
{
        if (o->cmd == CMD_NONE)
                return usage_error("no command given (one of --init, --set, --stats, --health, "
                                   "--run, --watchdog, --destroy, --help, --version)");
        if (o->stray)
                return usage_error(
                    o->cmd == CMD_RUN ? "unexpected argument '%s' for %s (put the command after --)"
                                      : "unexpected argument '%s' for %s",
                    o->stray, command_names[o->cmd]);
        if (o->init_only && o->cmd != CMD_INIT)
                return usage_error(
                    "%s only applies to --init%s", o->init_only,
                    o->init_only_is_live ? " (change a live pool with --set KEY=VALUE)" : "");
        if (o->stats_only && o->cmd != CMD_STATS)
                return usage_error("%s only applies to --stats", o->stats_only);
        if (o->run_only && o->cmd != CMD_RUN)
                return usage_error("%s only applies to --run", o->run_only);
        if (o->watchdog_only && o->cmd != CMD_WATCHDOG)
                return usage_error("%s only applies to --watchdog", o->watchdog_only);
        if (o->cluster_only && !o->cluster)
                return usage_error("%s only applies with --cluster", o->cluster_only);
        if (o->cluster && (!o->cluster_budget || !o->conninfo))
                return usage_error("--cluster needs --cluster-budget N and --conninfo STR (the "
                                   "server that holds the cluster's table, over TCP/IP)");
        if (o->conninfo_opt && o->cmd != CMD_HEALTH && o->cmd != CMD_WATCHDOG)
                return usage_error("--conninfo only applies to --health and --watchdog");
        if (o->json && o->prometheus)
                return usage_error("--json and --prometheus are two output formats: choose one");
        if (o->cmd == CMD_SET && o->n_pairs == 0)
                return usage_error("--set needs at least one KEY=VALUE pair");
        if (o->cmd == CMD_UNSET && o->n_pairs == 0)
                return usage_error("--unset needs at least one scraper.NAME or scraper.NAME.KEY");
        if (o->cmd == CMD_RUN && (!o->command || !o->command[0]))
                return usage_error("--run needs a command after -- (dyncoord --run NAME -- CMD "
                                   "[ARGS...])");
        if (o->cmd != CMD_RUN && o->command)
                return usage_error("unexpected '--' for %s (only --run takes a command)",
                                   command_names[o->cmd]);
        return 0;
}

int parse_args(int argc, char *argv[], struct options *o)
{
        int rc = 0;
        memset(o, 0, sizeof(*o));
        ds_config_defaults(&o->cfg);
        ds_capacity_defaults(&o->cap);
        o->create.mode = 0600;
        o->create.group = (gid_t)-1;
        o->max_restarts = 5;
        o->grace_ms = 10000;
        o->interval_ms = 5000;
        o->ping_interval_ms = 300000;
        o->pairs = calloc((size_t)argc, sizeof(*o->pairs));
        if (!o->pairs) {
                print_error("out of memory");
                return -ENOMEM;
        }
        /* Everything after the first "--" is the command of --run: it is
         * never parsed as options of ours. */
        for (int i = 1; i < argc; i++)
                if (strcmp(argv[i], "--") == 0) {
                        o->command = &argv[i + 1];
                        argv[i] = NULL;
                        argc = i;
                        break;
                }
        opterr = 0;
        for (;;) {
                int c = getopt_long(argc, argv, ":hV", long_options, NULL);
                if (c == -1)
                        break;
                if ((rc = parse_option(c, o, argv)))
                        return rc;
        }
        for (int i = optind; i < argc; i++) {
                if (o->cmd == CMD_SET || o->cmd == CMD_UNSET)
                        o->pairs[o->n_pairs++] = argv[i];
                else if (!o->stray)
                        o->stray = argv[i];
        }
        if (o->help)
                return 0;
        return check_command_options(o);
}

/* ---- output helpers ---- */

/* Length of the valid UTF-8 sequence at p (at most n bytes), 0 if invalid. */
static size_t utf8_sequence(const unsigned char *p, size_t n)
{
        unsigned c = p[0];
        size_t len;
        uint32_t cp, min;
        if (c < 0x80)
                return 1;
        if ((c & 0xe0) == 0xc0)
                len = 2, cp = c & 0x1f, min = 0x80;
        else if ((c & 0xf0) == 0xe0)
                len = 3, cp = c & 0x0f, min = 0x800;
        else if ((c & 0xf8) == 0xf0)
                len = 4, cp = c & 0x07, min = 0x10000;
        else
                return 0;
        if (len > n)
                return 0;
        for (size_t i = 1; i < len; i++) {
                if ((p[i] & 0xc0) != 0x80)
                        return 0;
                cp = cp << 6 | (p[i] & 0x3fu);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
                return 0;
        return len;
}

void write_escaped(FILE *f, const char *s, int json)
{
        const unsigned char *p = (const unsigned char *)s;
        size_t n = strlen(s);
        while (n > 0) {
                unsigned c = *p;
                size_t len = 1;
                if (c == '"' || c == '\\')
                        fprintf(f, "\\%c", c);
                else if (c == '\n')
                        fputs("\\n", f);
                else if (json && c == '\t')
                        fputs("\\t", f);
                else if (json && c == '\r')
                        fputs("\\r", f);
                else if (json && (c < 0x20 || c == 0x7f))
                        fprintf(f, "\\u%04x", c);
                else if (c < 0x80)
                        fputc((int)c, f);
                else if ((len = utf8_sequence(p, n)) > 0)
                        fwrite(p, 1, len, f);
                else
                        fputs(json ? "\\ufffd" : "\xef\xbf\xbd", f), len = 1;
                p += len;
                n -= len;
        }
}

/* Writes s as a JSON string. */
static void json_string(FILE *f, const char *s)
{
        fputc('"', f);
        write_escaped(f, s, 1);
        fputc('"', f);
}

/* Makes a name safe for a terminal: control characters, backslashes and
 * invalid UTF-8 become \xNN escapes. Returns the width in characters. */
static size_t display_name(const char *s, char *out, size_t outlen)
{
        const unsigned char *p = (const unsigned char *)s;
        size_t n = strlen(s), o = 0, width = 0;
        while (n > 0 && o + 5 < outlen) {
                size_t len = utf8_sequence(p, n);
                if (len == 0 || *p < 0x20 || *p == 0x7f || *p == '\\') {
                        o += (size_t)snprintf(out + o, outlen - o, "\\x%02x", *p);
                        width += 4;
                        len = 1;
                } else {
                        memcpy(out + o, p, len);
                        o += len;
                        width++;
                }
                p += len;
                n -= len;
        }
        out[o] = '\0';
        return width;
}

static double ms_of_ns(uint64_t ns)
{
        return (double)ns / 1e6;
}

static double wait_ms_mean(const struct ds_scraper_stats *s)
{
        return s->waits ? ms_of_ns(s->wait_ns_total / s->waits) : 0.0;
}

static unsigned usage_pct(const struct ds_stats *st)
{
        return st->cfg.pool_size ? (unsigned)((uint64_t)st->held * 100 / st->cfg.pool_size) : 0;
}

static int usage_above_warning(const struct ds_stats *st)
{
        return (uint64_t)st->held * 100 > (uint64_t)st->cfg.warn_usage_pct * st->cfg.pool_size;
}

static void format_seconds(char *buf, size_t len, uint32_t ms)
{
        if (ms % 1000 == 0)
                snprintf(buf, len, "%u s", ms / 1000);
        else
                snprintf(buf, len, "%u.%03u s", ms / 1000, ms % 1000);
}

static const char *plural(uint64_t n, const char *one, const char *many)
{
        return n == 1 ? one : many;
}

/* ---- commands ---- */

static int attach(const struct options *o, ds_handle **h)
{
        char err[512] = "";
        int rc = ds_attach(o->segment, 0, h, err, sizeof(err));
        if (rc)
                print_error("%s", err[0] ? err : strerror(-rc));
        return rc;
}

static int cmd_init(const struct options *o)
{
        char why[512] = "";
        int rc = ds_capacity_validate(&o->cap, why, sizeof(why));
        if (!rc)
                rc = ds_config_validate(&o->cfg, &o->cap, why, sizeof(why));
        if (rc)
                return usage_error("%s", why);
        rc = ds_segment_create(o->segment, &o->cfg, &o->cap, &o->create, why, sizeof(why));
        if (rc) {
                print_error("%s", why[0] ? why : strerror(-rc));
                return rc;
        }
        printf("created segment %s (mode %04o): pool_size=%u soft_limit=%u max_limit=%u, "
               "capacity %u processes, %u leases, %u scrapers\n",
               ds_segment_name(o->segment), (unsigned)o->create.mode, o->cfg.pool_size,
               o->cfg.soft_limit, o->cfg.max_limit, o->cap.max_procs, o->cap.max_leases,
               o->cap.max_scrapers);
        return 0;
}

/* Checks every KEY=VALUE of --set (or KEY of --unset) before the segment
 * is touched. */
static int check_pairs(const struct options *o)
{
        char why[512] = "", name[DS_NAME_MAX];
        struct ds_config cfg;
        struct ds_override ov;
        uint32_t field;
        ds_config_defaults(&cfg);
        for (size_t i = 0; i < o->n_pairs; i++) {
                const char *kv = o->pairs[i];
                if (o->cmd == CMD_UNSET) {
                        int rc = ds_override_parse_key(kv, strlen(kv), 1, name, &field, why,
                                                       sizeof(why));
                        if (rc == -ENOENT)
                                return usage_error("--unset: '%s' cannot be unset: only scraper "
                                                   "settings can (scraper.NAME or "
                                                   "scraper.NAME.KEY)",
                                                   kv);
                        if (rc)
                                return usage_error("--unset: %s", why);
                        continue;
                }
                const char *eq = strchr(kv, '=');
                int rc = eq ? ds_override_parse_key(kv, (size_t)(eq - kv), 0, name, &field, why,
                                                    sizeof(why))
                            : -ENOENT;
                if (rc == 0) {
                        memset(&ov, 0, sizeof(ov));
                        rc = ds_override_set(&ov, field, name, eq + 1, why, sizeof(why));
                } else if (rc == -ENOENT) {
                        rc = ds_config_set_kv(&cfg, kv, why, sizeof(why));
                }
                if (rc)
                        return usage_error("--set: %s", why);
        }
        return 0;
}

/* Prints every scraper's overrides after a change. */
static void print_overrides(ds_handle *h, const char *segment)
{
        struct ds_stats st;
        if (ds_stats_get(h, &st) != 0)
                return;
        char text[256], name[DS_NAME_MAX * 4 + 8];
        for (size_t i = 0; i < st.n_scrapers; i++) {
                const struct ds_scraper_stats *s = &st.scrapers[i];
                if (!s->ov.flags)
                        continue;
                ds_override_format(&s->ov, text, sizeof(text));
                display_name(s->name, name, sizeof(name));
                printf("segment %s: scraper %s: %s (limit now %u)\n", segment, name, text,
                       s->limit);
        }
        ds_stats_free(&st);
}

static int cmd_set(const struct options *o)
{
        char why[512] = "";
        struct ds_config cfg;
        ds_handle *h = NULL;
        int rc;
        const char *cmd = command_names[o->cmd];
        /* Every pair must parse before the segment is touched. */
        if ((rc = check_pairs(o)))
                return rc;
        if ((rc = attach(o, &h)))
                return rc;
        /* One change under the lock: validated as a whole, nothing written
         * unless valid, and no concurrent --set is lost. */
        if (o->cmd == CMD_UNSET)
                rc = ds_update(h, NULL, 0, o->pairs, o->n_pairs, &cfg, why, sizeof(why));
        else
                rc = ds_update(h, o->pairs, o->n_pairs, NULL, 0, &cfg, why, sizeof(why));
        if (rc != 0) {
                if (rc == -EINVAL)
                        usage_error("%s: %s; nothing was changed", cmd, why);
                else
                        print_error("%s: %s; nothing was changed", cmd,
                                    why[0] ? why : strerror(-rc));
                goto out;
        }
        char text[512];
        ds_config_format(&cfg, text, sizeof(text));
        for (char *nl = strchr(text, '\n'); nl; nl = strchr(nl, '\n'))
                *nl = nl[1] ? ' ' : '\0';
        printf("segment %s: %s\n", ds_segment_name(o->segment), text);
        print_overrides(h, ds_segment_name(o->segment));
out:
        ds_detach(h);
        return rc;
}

static void print_scraper_table(const struct ds_stats *st);
static void print_cluster_table(const char *segment);

static void print_stats_table(const char *segment, const struct ds_stats *st)
{
        char it[32], ri[32], wt[32];
        format_seconds(it, sizeof(it), st->cfg.idle_timeout_ms);
        format_seconds(ri, sizeof(ri), st->cfg.realloc_interval_ms);
        format_seconds(wt, sizeof(wt), st->cfg.wait_timeout_ms);
        printf("segment %s: pool %u/%u in use (%u%%), %u waiting, %u %s, %u active %s\n", segment,
               st->held, st->cfg.pool_size, usage_pct(st), st->waiting, st->procs,
               plural(st->procs, "process", "processes"), st->n_active,
               plural(st->n_active, "scraper", "scrapers"));
        if (usage_above_warning(st))
                printf("warning: usage %u%% is above warn_usage %u%%\n", usage_pct(st),
                       st->cfg.warn_usage_pct);
        if (st->draining)
                printf("draining: %u of the slots in use wait for the server backends of dead "
                       "processes to end\n",
                       st->draining);
        if (st->agent_state == 1)
                printf("cluster: pool_size is this host's share, kept by agent pid %d\n",
                       (int)st->cfg.agent_pid);
        else if (st->agent_state == 2)
                printf("warning: the cluster agent (pid %d) is gone: no new slots until it is "
                       "back\n",
                       (int)st->cfg.agent_pid);
        printf("config: soft_limit %u, max_limit %u, idle_timeout %s, realloc_interval %s, "
               "wait_timeout %s, warn_usage %u%%, idle_release %s, reuse %s (timeout %.3gs)\n",
               st->cfg.soft_limit, st->cfg.max_limit, it, ri, wt, st->cfg.warn_usage_pct,
               st->cfg.idle_release ? "on" : "off", st->cfg.reuse ? "on" : "off",
               st->cfg.reuse_timeout_ms / 1000.0);
        printf("totals: %llu grants, peak %llu held, %llu dead processes reclaimed, %llu lock "
               "repairs; capacity %u processes, %u leases, %u scrapers (%zu bytes)\n",
               (unsigned long long)st->grants, (unsigned long long)st->peak_held,
               (unsigned long long)st->reclaimed_procs, (unsigned long long)st->repairs,
               st->cap.max_procs, st->cap.max_leases, st->cap.max_scrapers, st->segment_size);
        putchar('\n');
        if (st->n_scrapers == 0)
                printf("no scrapers yet\n");
        else
                print_scraper_table(st);
        print_cluster_table(segment);
}

static void print_scraper_table(const struct ds_stats *st)
{
        char name[DS_NAME_MAX * 4 + 8];
        size_t col = strlen("SCRAPER");
        for (size_t i = 0; i < st->n_scrapers; i++) {
                size_t w = display_name(st->scrapers[i].name, name, sizeof(name));
                if (w > col)
                        col = w;
        }
        printf("%-*s  %-6s %5s %5s %7s %5s %9s %9s %9s %9s %10s %9s %13s %12s %6s %9s  %s\n",
               (int)col, "SCRAPER", "STATE", "HELD", "LIMIT", "WAITING", "PROCS", "CONNECTS",
               "RELEASES", "IDLE_REL", "SURPL_REL", "RECONNECTS", "TIMEOUTS", "WAIT_MEAN_MS",
               "WAIT_MAX_MS", "PARKED", "REUSES", "OVERRIDES");
        for (size_t i = 0; i < st->n_scrapers; i++) {
                const struct ds_scraper_stats *s = &st->scrapers[i];
                size_t w = display_name(s->name, name, sizeof(name));
                char ov[128];
                if (!s->ov.flags || ds_override_format(&s->ov, ov, sizeof(ov)) <= 0)
                        snprintf(ov, sizeof(ov), "-");
                printf("%s%*s  %-6s %5u %5u %7u %5u %9llu %9llu %9llu %9llu %10llu %9llu %13.3f "
                       "%12.3f %6u %9llu  %s\n",
                       name, (int)(col - w), "", s->active ? "active" : "idle", s->held, s->limit,
                       s->waiting, s->procs, (unsigned long long)s->connects,
                       (unsigned long long)s->releases, (unsigned long long)s->idle_releases,
                       (unsigned long long)s->surplus_releases, (unsigned long long)s->reconnects,
                       (unsigned long long)s->timeouts, wait_ms_mean(s), ms_of_ns(s->wait_ns_max),
                       s->parked, (unsigned long long)s->reuses, ov);
        }
}

/* The cluster this segment's agent belongs to, as it last saw it. */
static void print_cluster_table(const char *segment)
{
        struct cluster_view *v = calloc(1, sizeof(*v));
        if (!v || cluster_read_state(segment, v) != 0) {
                free(v);
                return;
        }
        printf("\ncluster %s: budget %u, %u claimed; this host %s is %s (as of %llds ago)\n",
               v->name, v->budget, v->claimed, v->host, v->state,
               (long long)(time(NULL) - v->updated));
        printf("%-32s %-11s %5s %5s %6s %5s %6s %8s\n", "HOST", "STATE", "SHARE", "CLAIM", "DEMAND",
               "HELD", "TARGET", "BACKENDS");
        for (size_t i = 0; i < v->n_hosts; i++) {
                const struct cluster_view_host *x = &v->hosts[i];
                printf("%-32s %-11s %5u %5u %6u %5u %6u %8u\n", x->name, x->state, x->share,
                       x->claim, x->demand, x->held, x->target, x->backends);
        }
        free(v);
}

static void print_cluster_json(const char *segment)
{
        struct cluster_view *v = calloc(1, sizeof(*v));
        if (!v || cluster_read_state(segment, v) != 0) {
                free(v);
                return;
        }
        printf(", \"cluster\": {\"name\": ");
        json_string(stdout, v->name);
        printf(", \"budget\": %u, \"claimed\": %u, \"host\": ", v->budget, v->claimed);
        json_string(stdout, v->host);
        printf(", \"state\": ");
        json_string(stdout, v->state);
        printf(", \"updated\": %lld, \"hosts\": [", (long long)v->updated);
        for (size_t i = 0; i < v->n_hosts; i++) {
                const struct cluster_view_host *x = &v->hosts[i];
                printf("%s{\"host\": ", i ? ", " : "");
                json_string(stdout, x->name);
                printf(", \"state\": ");
                json_string(stdout, x->state);
                printf(", \"share\": %u, \"claim\": %u, \"demand\": %u, \"held\": %u, "
                       "\"target\": %u, \"backends\": %u}",
                       x->share, x->claim, x->demand, x->held, x->target, x->backends);
        }
        printf("]}");
        free(v);
}

/* A scraper's overrides in --json: "overrides" holds only the keys set;
 * "weight", "reserve_claimed" and "scraper_idle_release" are the effective
 * values. */
static void print_overrides_json(const struct ds_scraper_stats *s)
{
        const struct ds_override *ov = &s->ov;
        const char *sep = "";
        printf(", \"overrides\": {");
        if (ov->flags & DS_OV_MAX)
                printf("%s\"max\": %u", sep, ov->max), sep = ", ";
        if (ov->flags & DS_OV_RESERVE)
                printf("%s\"reserve\": %u", sep, ov->reserve), sep = ", ";
        if (ov->flags & DS_OV_WEIGHT)
                printf("%s\"weight\": %.3f", sep, ov->weight_milli / 1000.0), sep = ", ";
        if (ov->flags & DS_OV_IDLE_RELEASE)
                printf("%s\"idle_release\": %s", sep, ov->idle_release ? "true" : "false");
        printf("}, \"weight\": %.3f, \"reserve_claimed\": %u, \"scraper_idle_release\": %s",
               ds_override_weight(ov) / 1000.0, s->claimed, s->idle_release ? "true" : "false");
}

static void print_stats_json(const char *segment, const struct ds_stats *st)
{
        const struct ds_config *c = &st->cfg;
        printf("{\"segment\": ");
        json_string(stdout, segment);
        printf(", \"version\": \"%s\"", DS_VERSION_STRING);
        printf(", \"pool_size\": %u, \"held\": %u, \"draining\": %u, \"waiting\": %u, "
               "\"usage_pct\": %u, \"usage_warning\": %s",
               c->pool_size, st->held, st->draining, st->waiting, usage_pct(st),
               usage_above_warning(st) ? "true" : "false");
        printf(", \"soft_limit\": %u, \"max_limit\": %u, \"idle_timeout_ms\": %u, "
               "\"realloc_interval_ms\": %u, \"wait_timeout_ms\": %u, \"warn_usage_pct\": %u, "
               "\"idle_release\": %s, \"reuse\": %s, \"reuse_timeout_ms\": %u, "
               "\"handover_delay_ms\": %u, \"deadlock_timeout_ms\": %u",
               c->soft_limit, c->max_limit, c->idle_timeout_ms, c->realloc_interval_ms,
               c->wait_timeout_ms, c->warn_usage_pct, c->idle_release ? "true" : "false",
               c->reuse ? "true" : "false", c->reuse_timeout_ms, c->handover_delay_ms,
               c->deadlock_timeout_ms);
        printf(", \"processes\": %u, \"active_scrapers\": %u, \"grants\": %llu, "
               "\"peak_held\": %llu, \"reclaimed_processes\": %llu, \"repairs\": %llu",
               st->procs, st->n_active, (unsigned long long)st->grants,
               (unsigned long long)st->peak_held, (unsigned long long)st->reclaimed_procs,
               (unsigned long long)st->repairs);
        printf(", \"capacity\": {\"max_processes\": %u, \"max_leases\": %u, \"max_scrapers\": %u}"
               ", \"segment_size\": %zu, \"generation\": \"%016llx\"",
               st->cap.max_procs, st->cap.max_leases, st->cap.max_scrapers, st->segment_size,
               (unsigned long long)st->generation);
        printf(", \"scrapers\": [");
        for (size_t i = 0; i < st->n_scrapers; i++) {
                const struct ds_scraper_stats *s = &st->scrapers[i];
                printf("%s{\"name\": ", i ? ", " : "");
                json_string(stdout, s->name);
                printf(", \"state\": \"%s\", \"held\": %u, \"limit\": %u, \"waiting\": %u, "
                       "\"processes\": %u",
                       s->active ? "active" : "idle", s->held, s->limit, s->waiting, s->procs);
                printf(", \"connects\": %llu, \"releases\": %llu, \"idle_releases\": %llu, "
                       "\"surplus_releases\": %llu, \"reconnects\": %llu, \"reclaimed\": %llu, "
                       "\"timeouts\": %llu, \"waits\": %llu, \"handovers\": %llu, "
                       "\"deadlocks\": %llu",
                       (unsigned long long)s->connects, (unsigned long long)s->releases,
                       (unsigned long long)s->idle_releases,
                       (unsigned long long)s->surplus_releases, (unsigned long long)s->reconnects,
                       (unsigned long long)s->reclaimed, (unsigned long long)s->timeouts,
                       (unsigned long long)s->waits, (unsigned long long)s->handovers,
                       (unsigned long long)s->deadlocks);
                printf(", \"wait_ms_mean\": %.3f, \"wait_ms_max\": %.3f", wait_ms_mean(s),
                       ms_of_ns(s->wait_ns_max));
                printf(", \"parked\": %u, \"reuses\": %llu", s->parked,
                       (unsigned long long)s->reuses);
                print_overrides_json(s);
                printf("}");
        }
        printf("], \"cluster_agent\": \"%s\"", st->agent_state == 1   ? "live"
                                               : st->agent_state == 2 ? "gone"
                                                                      : "none");
        print_cluster_json(segment);
        printf("}\n");
}

/* ---- Prometheus text exposition format ---- */

/* One family: its HELP and TYPE lines. */
static void prom_family(FILE *f, const char *name, const char *type, const char *help)
{
        fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void prom_labels(FILE *f, const char *segment, const char *scraper)
{
        fputs("{segment=\"", f);
        write_escaped(f, segment, 0);
        if (scraper) {
                fputs("\",scraper=\"", f);
                write_escaped(f, scraper, 0);
        }
        fputs("\"}", f);
}

static void prom_sample(FILE *f, const char *name, const char *segment, const char *scraper,
                        double value)
{
        fputs(name, f);
        prom_labels(f, segment, scraper);
        fprintf(f, " %.15g\n", value);
}

/* One per-scraper family: which field of ds_scraper_stats it shows. */
struct prom_scraper_metric {
        const char *name, *type, *help;
        double (*value)(const struct ds_scraper_stats *s);
};

#define PROM_FIELD(field)                                                                          \
        static double prom_##field(const struct ds_scraper_stats *s)                               \
        {                                                                                          \
                return (double)s->field;                                                           \
        }
PROM_FIELD(active)
PROM_FIELD(held)
PROM_FIELD(limit)
PROM_FIELD(waiting)
PROM_FIELD(procs)
PROM_FIELD(connects)
PROM_FIELD(releases)
PROM_FIELD(idle_releases)
PROM_FIELD(surplus_releases)
PROM_FIELD(reconnects)
PROM_FIELD(reclaimed)
PROM_FIELD(timeouts)
PROM_FIELD(handovers)
PROM_FIELD(deadlocks)
PROM_FIELD(parked)
PROM_FIELD(reuses)

PROM_FIELD(claimed)
PROM_FIELD(idle_release)

static double prom_reserve(const struct ds_scraper_stats *s)
{
        return (double)ds_override_reserve(&s->ov);
}

static double prom_weight(const struct ds_scraper_stats *s)
{
        return ds_override_weight(&s->ov) / 1000.0;
}

static double prom_wait_max(const struct ds_scraper_stats *s)
{
        return (double)s->wait_ns_max / 1e9;
}

static const struct prom_scraper_metric prom_scraper_metrics[] = {
    {"dynshim_scraper_active", "gauge", "1 if the scraper is active, 0 if idle.", prom_active},
    {"dynshim_scraper_held", "gauge", "Connection slots the scraper holds.", prom_held},
    {"dynshim_scraper_limit", "gauge", "The scraper's current limit.", prom_limit},
    {"dynshim_scraper_waiting", "gauge", "Connects of the scraper waiting for a slot.",
     prom_waiting},
    {"dynshim_scraper_processes", "gauge", "Live processes of the scraper.", prom_procs},
    {"dynshim_scraper_connects_total", "counter", "Slots granted to the scraper.", prom_connects},
    {"dynshim_scraper_releases_total", "counter", "Slots the scraper gave back itself.",
     prom_releases},
    {"dynshim_scraper_idle_releases_total", "counter",
     "Slots taken back because the scraper was idle.", prom_idle_releases},
    {"dynshim_scraper_surplus_releases_total", "counter",
     "Slots given back above the scraper's limit while others waited.", prom_surplus_releases},
    {"dynshim_scraper_reconnects_total", "counter",
     "Transparent reconnects after a released connection was used again.", prom_reconnects},
    {"dynshim_scraper_reclaimed_total", "counter",
     "Slots reclaimed from dead processes of the scraper.", prom_reclaimed},
    {"dynshim_scraper_timeouts_total", "counter",
     "Connects that waited wait_timeout for a slot in vain.", prom_timeouts},
    {"dynshim_scraper_handovers_total", "counter",
     "Slots of unused connections handed over to waiting connects.", prom_handovers},
    {"dynshim_scraper_deadlocks_total", "counter",
     "Connects failed to break a hold-and-wait deadlock.", prom_deadlocks},
    {"dynshim_scraper_parked", "gauge",
     "Finished connections parked for reuse by the scraper's processes (each holds a slot).",
     prom_parked},
    {"dynshim_scraper_reuses_total", "counter",
     "Connects served with a parked connection instead of a new one.", prom_reuses},
    {"dynshim_scraper_wait_seconds_max", "gauge", "Longest wait for a slot so far.", prom_wait_max},
    {"dynshim_scraper_reserve", "gauge", "Slots guaranteed to the scraper (its reserve; 0: none).",
     prom_reserve},
    {"dynshim_scraper_reserve_claimed", "gauge",
     "Slots set aside for the scraper now (its reserve while it claims it).", prom_claimed},
    {"dynshim_scraper_weight", "gauge", "The scraper's relative share (default 1).", prom_weight},
    {"dynshim_scraper_idle_release", "gauge",
     "1 if the scraper's idle and surplus connections are released.", prom_idle_release},
};

/* Wait times: the segment keeps a count, a sum and a maximum per scraper,
 * so they are exposed as a summary without quantiles (_count, _sum) plus a
 * gauge for the maximum. */
/* One sample of a cluster metric: labels segment, cluster and (if not
 * NULL) host. */
static void prom_cluster_sample(FILE *f, const char *name, const char *segment, const char *cluster,
                                const char *host, double value)
{
        fprintf(f, "%s{segment=\"", name);
        write_escaped(f, segment, 0);
        fputs("\",cluster=\"", f);
        write_escaped(f, cluster, 0);
        if (host) {
                fputs("\",host=\"", f);
                write_escaped(f, host, 0);
        }
        fprintf(f, "\"} %.17g\n", value);
}

/* The cluster as the segment's agent last saw it (docs/cluster.md). */
static void print_cluster_prometheus(FILE *f, const char *segment)
{
        struct cluster_view *v = calloc(1, sizeof(*v));
        if (!v || cluster_read_state(segment, v) != 0) {
                free(v);
                return;
        }
        prom_family(f, "dynshim_cluster_budget", "gauge",
                    "The connections the whole cluster may use.");
        prom_cluster_sample(f, "dynshim_cluster_budget", segment, v->name, NULL, v->budget);
        prom_family(f, "dynshim_cluster_claimed", "gauge", "Units claimed by all hosts.");
        prom_cluster_sample(f, "dynshim_cluster_claimed", segment, v->name, NULL, v->claimed);
        prom_family(f, "dynshim_cluster_live", "gauge",
                    "1 if this host's agent is joined to the cluster.");
        prom_cluster_sample(f, "dynshim_cluster_live", segment, v->name, NULL,
                            strcmp(v->state, "live") == 0);
        static const char *const names[] = {"dynshim_cluster_host_claim",
                                            "dynshim_cluster_host_demand",
                                            "dynshim_cluster_host_held"};
        static const char *const helps[] = {"Units the host claims (its pool_size when live).",
                                            "Slots the host holds plus connects waiting.",
                                            "Slots the host holds."};
        for (size_t m = 0; m < 3; m++) {
                prom_family(f, names[m], "gauge", helps[m]);
                for (size_t i = 0; i < v->n_hosts; i++) {
                        const struct cluster_view_host *x = &v->hosts[i];
                        uint32_t val = m == 0 ? x->claim : m == 1 ? x->demand : x->held;
                        prom_cluster_sample(f, names[m], segment, v->name, x->name, val);
                }
        }
        free(v);
}

static void print_stats_prometheus(const char *segment, const struct ds_stats *st)
{
        FILE *f = stdout;
        const struct {
                const char *name, *type, *help;
                double value;
        } pool[] = {
            {"dynshim_pool_size", "gauge", "Slots all processes may hold together (pool_size).",
             st->cfg.pool_size},
            {"dynshim_pool_held", "gauge", "Slots held now.", st->held},
            {"dynshim_pool_draining", "gauge",
             "Slots held now for backends whose client died (in dynshim_pool_held).", st->draining},
            {"dynshim_pool_waiting", "gauge", "Connects waiting for a slot now.", st->waiting},
            {"dynshim_pool_warn_usage_ratio", "gauge",
             "Usage above this fraction of pool_size is a warning.",
             st->cfg.warn_usage_pct / 100.0},
            {"dynshim_pool_soft_limit", "gauge", "Per-scraper limit with 2 or more active.",
             st->cfg.soft_limit},
            {"dynshim_pool_max_limit", "gauge", "Per-scraper limit with 1 active.",
             st->cfg.max_limit},
            {"dynshim_processes", "gauge", "Processes attached to the pool.", st->procs},
            {"dynshim_active_scrapers", "gauge", "Scrapers active now.", st->n_active},
            {"dynshim_peak_held", "gauge", "Highest number of slots ever held at once.",
             (double)st->peak_held},
            {"dynshim_grants_total", "counter", "Slots granted.", (double)st->grants},
            {"dynshim_reclaimed_processes_total", "counter",
             "Dead processes whose slots were reclaimed.", (double)st->reclaimed_procs},
            {"dynshim_lock_repairs_total", "counter",
             "Times the pool's lock was recovered from a dead owner.", (double)st->repairs},
        };
        prom_family(f, "dynshim_info", "gauge", "The segment and the version of dyncoord.");
        fputs("dynshim_info{segment=\"", f);
        write_escaped(f, segment, 0);
        fprintf(f, "\",version=\"%s\"} 1\n", DS_VERSION_STRING);
        for (size_t i = 0; i < sizeof(pool) / sizeof(pool[0]); i++) {
                prom_family(f, pool[i].name, pool[i].type, pool[i].help);
                prom_sample(f, pool[i].name, segment, NULL, pool[i].value);
        }
        for (size_t m = 0; m < sizeof(prom_scraper_metrics) / sizeof(prom_scraper_metrics[0]);
             m++) {
                const struct prom_scraper_metric *pm = &prom_scraper_metrics[m];
                prom_family(f, pm->name, pm->type, pm->help);
                for (size_t i = 0; i < st->n_scrapers; i++)
                        prom_sample(f, pm->name, segment, st->scrapers[i].name,
                                    pm->value(&st->scrapers[i]));
        }
        /* a cap exists only for the scrapers that have one */
        prom_family(f, "dynshim_scraper_max", "gauge",
                    "The scraper's hard cap on slots (only scrapers with one).");
        for (size_t i = 0; i < st->n_scrapers; i++)
                if (st->scrapers[i].ov.flags & DS_OV_MAX)
                        prom_sample(f, "dynshim_scraper_max", segment, st->scrapers[i].name,
                                    (double)st->scrapers[i].ov.max);
        prom_family(f, "dynshim_scraper_wait_seconds", "summary",
                    "Time connects waited for a slot (granted or timed out).");
        for (size_t i = 0; i < st->n_scrapers; i++) {
                const struct ds_scraper_stats *s = &st->scrapers[i];
                prom_sample(f, "dynshim_scraper_wait_seconds_count", segment, s->name,
                            (double)s->waits);
                prom_sample(f, "dynshim_scraper_wait_seconds_sum", segment, s->name,
                            (double)s->wait_ns_total / 1e9);
        }
        print_cluster_prometheus(f, segment);
}

/* ---- --stats ---- */

static void print_stats(const struct options *o, const struct ds_stats *st)
{
        const char *name = ds_segment_name(o->segment);
        if (o->json)
                print_stats_json(name, st);
        else if (o->prometheus)
                print_stats_prometheus(name, st);
        else
                print_stats_table(name, st);
}

/* Reads a snapshot of the pool; prints the reason on failure. */
static int read_stats(const struct options *o, struct ds_stats *st)
{
        ds_handle *h = NULL;
        int rc = attach(o, &h);
        if (rc)
                return rc;
        if ((rc = ds_stats_get(h, st)))
                print_error("could not read the statistics of segment %s: %s",
                            ds_segment_name(o->segment), strerror(-rc));
        ds_detach(h);
        return rc;
}

/* ---- --stats --watch ---- */

#define ANSI_ALT_SCREEN_ON  "\033[?1049h"
#define ANSI_ALT_SCREEN_OFF "\033[?1049l"
#define ANSI_CURSOR_HIDE    "\033[?25l"
#define ANSI_CURSOR_SHOW    "\033[?25h"
#define ANSI_HOME           "\033[H"
#define ANSI_CLEAR_EOL      "\033[K"
#define ANSI_CLEAR_BELOW    "\033[J"

static void draw_bar(FILE *f, uint32_t held, uint32_t waiting, uint32_t limit, int width)
{
        uint32_t scale = limit > held ? limit : held;
        int fill = scale ? (int)((uint64_t)held * (uint64_t)width / scale) : 0;
        int over = limit < held && scale ? (int)((uint64_t)(held - limit) * width / scale) : 0;
        fputc('[', f);
        for (int i = 0; i < width; i++)
                fputc(i < fill - over ? '#' : i < fill ? '!' : '.', f);
        fputc(']', f);
        fprintf(f, " %u/%u", held, limit);
        if (waiting)
                fprintf(f, " +%u waiting", waiting);
}

/* Renders one frame of the live view into f: a header, a bar for the pool
 * and one per scraper (held of limit, waiting). */
static void render_frame(FILE *f, const struct options *o, const struct ds_stats *st,
                         const char *error, int cols)
{
        char when[32];
        time_t now = time(NULL);
        struct tm tm;
        strftime(when, sizeof(when), "%H:%M:%S", localtime_r(&now, &tm));
        fprintf(f, "dyncoord %s  segment %s  every %.1f s  %s (Ctrl-C quits)\n", DS_VERSION_STRING,
                ds_segment_name(o->segment), o->watch_ms / 1000.0, when);
        if (error) {
                fprintf(f, "\n%s\n", error);
                return;
        }
        int bar = cols - 50;
        bar = bar < 10 ? 10 : bar > 60 ? 60 : bar;
        fprintf(f, "pool %u/%u in use (%u%%), %u waiting, %u %s, %u active%s\n", st->held,
                st->cfg.pool_size, usage_pct(st), st->waiting, st->procs,
                plural(st->procs, "process", "processes"), st->n_active,
                usage_above_warning(st) ? "  WARNING: above warn_usage" : "");
        fprintf(f, "%-24s ", "POOL");
        draw_bar(f, st->held, st->waiting, st->cfg.pool_size, bar);
        fputs("\n\n", f);
        fprintf(f, "%-24s %-6s %s\n", "SCRAPER", "STATE", "HELD OF LIMIT");
        if (st->n_scrapers == 0)
                fputs("no scrapers yet\n", f);
        char name[DS_NAME_MAX * 4 + 8];
        for (size_t i = 0; i < st->n_scrapers; i++) {
                const struct ds_scraper_stats *s = &st->scrapers[i];
                size_t w = display_name(s->name, name, sizeof(name));
                fprintf(f, "%s%*s %-6s ", name, w < 24 ? (int)(24 - w) : 0, "",
                        s->active ? "active" : "idle");
                draw_bar(f, s->held, s->waiting, s->limit, bar);
                fprintf(f, "  %llu connects, %llu timeouts", (unsigned long long)s->connects,
                        (unsigned long long)s->timeouts);
                char ov[128];
                if (s->ov.flags && ds_override_format(&s->ov, ov, sizeof(ov)) > 0)
                        fprintf(f, "  [%s]", ov);
                fputc('\n', f);
        }
}

static int terminal_columns(void)
{
        struct winsize ws;
        if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
                return ws.ws_col;
        return 80;
}

/* Writes a frame on a terminal: home, each line cleared to its end, the
 * rest of the screen cleared, in one write so it never flickers. */
static void show_frame_on_tty(const char *frame, size_t len)
{
        char *buf = NULL;
        size_t blen = 0;
        FILE *f = open_memstream(&buf, &blen);
        if (!f)
                return;
        fputs(ANSI_HOME, f);
        for (const char *p = frame, *end = frame + len; p < end;) {
                const char *nl = memchr(p, '\n', (size_t)(end - p));
                size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
                fwrite(p, 1, n, f);
                fputs(ANSI_CLEAR_EOL, f);
                if (nl)
                        fputs("\r\n", f);
                p += n + (nl != NULL);
        }
        fputs(ANSI_CLEAR_BELOW, f);
        fclose(f);
        fwrite(buf, 1, blen, stdout);
        fflush(stdout);
        free(buf);
}

/* Redraws every watch_ms until SIGINT, SIGTERM or SIGHUP; a terminal gets
 * the alternate screen and its state back on exit. Other outputs (a pipe,
 * a file, --json, --prometheus) get one document per interval. */
static int cmd_stats_watch(const struct options *o)
{
        int tty = isatty(STDOUT_FILENO) && !o->json && !o->prometheus;
        sigset_t set, old;
        sigemptyset(&set);
        sigaddset(&set, SIGINT);
        sigaddset(&set, SIGTERM);
        sigaddset(&set, SIGHUP);
        sigaddset(&set, SIGWINCH);
        sigprocmask(SIG_BLOCK, &set, &old);
        if (tty) {
                fputs(ANSI_ALT_SCREEN_ON ANSI_CURSOR_HIDE, stdout);
                fflush(stdout);
        }
        int stop = 0;
        while (!stop) {
                struct ds_stats st;
                ds_handle *h = NULL;
                char err[512] = "";
                int rc = ds_attach(o->segment, 0, &h, err, sizeof(err));
                if (rc == 0) {
                        rc = ds_stats_get(h, &st);
                        if (rc)
                                snprintf(err, sizeof(err), "could not read segment %s: %s",
                                         ds_segment_name(o->segment), strerror(-rc));
                        ds_detach(h);
                } else if (!err[0]) {
                        snprintf(err, sizeof(err), "%s", strerror(-rc));
                }
                if (rc && !tty) {
                        print_error("%s", err);
                } else if (o->json || o->prometheus) {
                        print_stats(o, &st);
                        fflush(stdout);
                } else {
                        char *buf = NULL;
                        size_t len = 0;
                        FILE *f = open_memstream(&buf, &len);
                        if (f) {
                                render_frame(f, o, rc ? NULL : &st, rc ? err : NULL,
                                             terminal_columns());
                                fclose(f);
                                if (tty) {
                                        show_frame_on_tty(buf, len);
                                } else {
                                        fwrite(buf, 1, len, stdout);
                                        fputc('\n', stdout);
                                        fflush(stdout);
                                }
                                free(buf);
                        }
                }
                if (rc == 0)
                        ds_stats_free(&st);
                struct timespec ts = {o->watch_ms / 1000, (long)(o->watch_ms % 1000) * 1000000L};
                uint64_t deadline = ds_now_ns() + (uint64_t)o->watch_ms * 1000000u;
                for (;;) {
                        int sig = sigtimedwait(&set, NULL, &ts);
                        if (sig == SIGWINCH)
                                break;
                        if (sig > 0) {
                                stop = 1;
                                break;
                        }
                        if (errno == EAGAIN)
                                break;
                        uint64_t now = ds_now_ns();
                        if (now >= deadline)
                                break;
                        ts.tv_sec = (time_t)((deadline - now) / 1000000000u);
                        ts.tv_nsec = (long)((deadline - now) % 1000000000u);
                }
        }
        if (tty) {
                fputs(ANSI_CURSOR_SHOW ANSI_ALT_SCREEN_OFF, stdout);
                fflush(stdout);
        }
        sigprocmask(SIG_SETMASK, &old, NULL);
        return 0;
}

static int cmd_stats(const struct options *o)
{
        struct ds_stats st;
        if (o->watch_ms)
                return cmd_stats_watch(o);
        int rc = read_stats(o, &st);
        if (rc)
                return rc;
        print_stats(o, &st);
        ds_stats_free(&st);
        return 0;
}

/* ---- --health ---- */

/* Prints what is wrong with the segment on stderr, or its state on stdout. */
static int check_segment(const struct options *o)
{
        ds_handle *h = NULL;
        struct ds_stats st;
        char why[512] = "";
        const char *name = ds_segment_name(o->segment);
        int rc = ds_attach(o->segment, 0, &h, why, sizeof(why));
        if (rc) {
                print_error("unhealthy: %s", why[0] ? why : strerror(-rc));
                return rc;
        }
        if ((rc = ds_check(h, why, sizeof(why)))) {
                if (rc == -EPROTO && why[0])
                        print_error("unhealthy: segment %s: %s", name, why);
                else
                        print_error("unhealthy: could not check segment %s: %s", name,
                                    strerror(-rc));
                goto out;
        }
        if ((rc = ds_stats_get(h, &st))) {
                print_error("unhealthy: could not read segment %s: %s", name, strerror(-rc));
                goto out;
        }
        if (st.agent_state == 2) {
                print_error("unhealthy: segment %s: its cluster agent (pid %d) is gone: the pool "
                            "grants no new slots until an agent runs again",
                            name, (int)st.cfg.agent_pid);
                ds_stats_free(&st);
                rc = -ESRCH;
                goto out;
        }
        printf("segment %s is healthy: pool %u/%u in use, %u waiting, %u %s", name, st.held,
               st.cfg.pool_size, st.waiting, st.procs, plural(st.procs, "process", "processes"));
        if (usage_above_warning(&st))
                printf(" (warning: usage %u%% is above warn_usage %u%%)", usage_pct(&st),
                       st.cfg.warn_usage_pct);
        putchar('\n');
        ds_stats_free(&st);
out:
        ds_detach(h);
        return rc;
}

/* The segment, then (with --conninfo) the server: both are checked and
 * every problem is reported. */
static int cmd_health(const struct options *o)
{
        int rc = check_segment(o);
        if (o->conninfo) {
                char what[256], why[512];
                uint64_t t0 = ds_now_ns();
                int src = check_server(o->conninfo, what, sizeof(what), why, sizeof(why));
                if (src) {
                        print_error("unhealthy: server %s: %s", what, why);
                        if (!rc)
                                rc = src;
                } else {
                        printf("server %s is healthy: SELECT 1 answered in %.1f ms\n", what,
                               (double)(ds_now_ns() - t0) / 1e6);
                }
        }
        return rc;
}

static int cmd_destroy(const struct options *o)
{
        char why[512] = "";
        int rc = ds_segment_destroy(o->segment, why, sizeof(why));
        if (rc) {
                print_error("%s", why[0] ? why : strerror(-rc));
                return rc;
        }
        printf("destroyed segment %s\n", ds_segment_name(o->segment));
        return 0;
}

static int cmd_version(void)
{
        printf(PROG " " DS_VERSION_STRING "\n");
        return 0;
}

static int run_command(const struct options *o)
{
        switch (o->cmd) {
        case CMD_INIT:
                return cmd_init(o);
        case CMD_SET:
        case CMD_UNSET:
                return cmd_set(o);
        case CMD_STATS:
                return cmd_stats(o);
        case CMD_HEALTH:
                return cmd_health(o);
        case CMD_DESTROY:
                return cmd_destroy(o);
        case CMD_RUN:
                return cmd_run(o);
        case CMD_WATCHDOG:
                return cmd_watchdog(o);
        case CMD_VERSION:
                return cmd_version();
        case CMD_NONE:
                break;
        }
        return -EINVAL;
}

#ifndef DYNCOORD_NO_MAIN /* the option fuzz harness (tests/fuzz) has its own */
int main(int argc, char *argv[])
{
        struct options o;
        int rc = parse_args(argc, argv, &o);
        if (rc == 0 && o.help)
                print_usage(stdout);
        else if (rc == 0)
                rc = run_command(&o);
        free(o.pairs);
        if (fflush(stdout) != 0 && rc == 0) {
                print_error("could not write the output: %s", strerror(errno));
                rc = -EIO;
        }
        if (rc >= 0)
                return rc;
        if (rc == -EINVAL) {
                fputs("Try '" PROG " --help' for more information.\n", stderr);
                return 2;
        }
        return 1;
}
#endif
