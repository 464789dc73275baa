/* dyncoord.c - the command-line tool: creates, configures, inspects, checks
 * and removes a pool's shared-memory segment.
 *
 * Every cmd_* function prints its own error and returns 0 or a negative
 * errno value; main alone turns that into the exit status:
 *   0  success
 *   1  failure at run time (segment missing or unusable, lock failure)
 *   2  usage or configuration error (-EINVAL) */
#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include "dynshim/config.h"
#include "dynshim/coord.h"

#define PROG "dyncoord"

enum command {
        CMD_NONE = 0,
        CMD_INIT,
        CMD_SET,
        CMD_STATS,
        CMD_HEALTH,
        CMD_DESTROY,
        CMD_VERSION,
};

static const char *const command_names[] = {
    [CMD_NONE] = "",
    [CMD_INIT] = "--init",
    [CMD_SET] = "--set",
    [CMD_STATS] = "--stats",
    [CMD_HEALTH] = "--health",
    [CMD_DESTROY] = "--destroy",
    [CMD_VERSION] = "--version",
};

enum option_id {
        OPT_HELP = 'h',
        OPT_VERSION = 'V',
        OPT_SEGMENT = 256,
        OPT_INIT,
        OPT_SET,
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
        OPT_MAX_PROCESSES,
        OPT_MAX_LEASES,
        OPT_MAX_SCRAPERS,
};

static const struct option long_options[] = {
    {"segment", required_argument, NULL, OPT_SEGMENT},
    {"init", no_argument, NULL, OPT_INIT},
    {"set", optional_argument, NULL, OPT_SET},
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
    {"max-processes", required_argument, NULL, OPT_MAX_PROCESSES},
    {"max-leases", required_argument, NULL, OPT_MAX_LEASES},
    {"max-scrapers", required_argument, NULL, OPT_MAX_SCRAPERS},
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
    {OPT_MAX_PROCESSES, "--max-processes", V_COUNT, 1, offsetof(struct ds_capacity, max_procs),
     DS_CAP_PROCS_MAX},
    {OPT_MAX_LEASES, "--max-leases", V_COUNT, 1, offsetof(struct ds_capacity, max_leases),
     DS_CAP_LEASES_MAX},
    {OPT_MAX_SCRAPERS, "--max-scrapers", V_COUNT, 1, offsetof(struct ds_capacity, max_scrapers),
     DS_CAP_SCRAPERS_MAX},
};

#define N_VALUE_OPTIONS (sizeof(value_options) / sizeof(value_options[0]))

struct options {
        enum command cmd;
        int help;
        const char *segment; /* NULL: $DYNSHIM_SEGMENT, else the default */
        struct ds_config cfg;
        struct ds_capacity cap;
        struct ds_create_opts create;
        int json;
        const char *init_only; /* first option given that only --init takes */
        int init_only_is_live; /* ... and it is a key --set can change */
        const char *stats_only;
        const char **pairs; /* KEY=VALUE arguments of --set */
        size_t n_pairs;
        const char *stray; /* first other non-option argument */
};

/* ---- messages ---- */

static void vprint_error(const char *fmt, va_list ap)
{
        fputs(PROG ": ", stderr);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
}

/* Prints "dyncoord: " and one sentence on stderr. */
static void print_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void print_error(const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        vprint_error(fmt, ap);
        va_end(ap);
}

/* Prints a usage or configuration error; returns -EINVAL, which main turns
 * into exit status 2 and a hint to --help. */
static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
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
              "                         wait_timeout, warn_usage, idle_release)\n"
              "  --stats [--json]       show the pool and every scraper\n"
              "  --health               check the segment and its invariants\n"
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
              "  --max-processes N      processes attached at once (1024)\n"
              "  --max-leases N         slots held plus connects waiting, at once (4096)\n"
              "  --max-scrapers N       distinct scraper names remembered (256)\n"
              "  --mode OCTAL           permissions of the segment (0600)\n"
              "  --group NAME           group of the segment (name or number)\n"
              "  --force                replace an existing segment\n"
              "\n"
              "Durations S are seconds (\"60\", \"0.5\") or carry a unit (\"500ms\", \"2s\").\n"
              "\n"
              "Exit status: 0 success, 1 failure at run time, 2 usage or configuration error.\n",
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

static int parse_args(int argc, char *argv[], struct options *o)
{
        int rc = 0;
        memset(o, 0, sizeof(*o));
        ds_config_defaults(&o->cfg);
        ds_capacity_defaults(&o->cap);
        o->create.mode = 0600;
        o->create.group = (gid_t)-1;
        o->pairs = calloc((size_t)argc, sizeof(*o->pairs));
        if (!o->pairs) {
                print_error("out of memory");
                return -ENOMEM;
        }
        opterr = 0;
        for (;;) {
                int c = getopt_long(argc, argv, ":hV", long_options, NULL);
                if (c == -1)
                        break;
                switch (c) {
                case OPT_HELP:
                        o->help = 1;
                        break;
                case OPT_VERSION:
                        rc = set_command(o, CMD_VERSION);
                        break;
                case OPT_SEGMENT:
                        o->segment = optarg;
                        break;
                case OPT_INIT:
                        rc = set_command(o, CMD_INIT);
                        break;
                case OPT_SET:
                        rc = set_command(o, CMD_SET);
                        if (!rc && optarg)
                                o->pairs[o->n_pairs++] = optarg;
                        break;
                case OPT_STATS:
                        rc = set_command(o, CMD_STATS);
                        break;
                case OPT_HEALTH:
                        rc = set_command(o, CMD_HEALTH);
                        break;
                case OPT_DESTROY:
                        rc = set_command(o, CMD_DESTROY);
                        break;
                case OPT_JSON:
                        o->json = 1;
                        if (!o->stats_only)
                                o->stats_only = "--json";
                        break;
                case OPT_FORCE:
                        o->create.force = 1;
                        if (!o->init_only)
                                o->init_only = "--force";
                        break;
                case OPT_MODE:
                        rc = parse_mode(optarg, &o->create.mode);
                        if (!o->init_only)
                                o->init_only = "--mode";
                        break;
                case OPT_GROUP:
                        rc = parse_group(optarg, &o->create.group);
                        if (!o->init_only)
                                o->init_only = "--group";
                        break;
                case ':':
                case '?':
                        rc = bad_option(c, argv);
                        break;
                default:
                        rc = apply_value_option(o, c, optarg);
                        break;
                }
                if (rc)
                        return rc;
        }
        for (int i = optind; i < argc; i++) {
                if (o->cmd == CMD_SET)
                        o->pairs[o->n_pairs++] = argv[i];
                else if (!o->stray)
                        o->stray = argv[i];
        }
        if (o->help)
                return 0;
        if (o->cmd == CMD_NONE)
                return usage_error("no command given (one of --init, --set, --stats, --health, "
                                   "--destroy, --help, --version)");
        if (o->stray)
                return usage_error("unexpected argument '%s' for %s", o->stray,
                                   command_names[o->cmd]);
        if (o->init_only && o->cmd != CMD_INIT)
                return usage_error(
                    "%s only applies to --init%s", o->init_only,
                    o->init_only_is_live ? " (change a live pool with --set KEY=VALUE)" : "");
        if (o->stats_only && o->cmd != CMD_STATS)
                return usage_error("%s only applies to --stats", o->stats_only);
        if (o->cmd == CMD_SET && o->n_pairs == 0)
                return usage_error("--set needs at least one KEY=VALUE pair");
        return 0;
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

/* Writes s as a JSON string: quotes, backslashes and control characters
 * escaped, valid UTF-8 kept, invalid bytes replaced by U+FFFD. */
static void json_string(FILE *f, const char *s)
{
        const unsigned char *p = (const unsigned char *)s;
        size_t n = strlen(s);
        fputc('"', f);
        while (n > 0) {
                unsigned c = *p;
                size_t len = 1;
                if (c == '"' || c == '\\')
                        fprintf(f, "\\%c", c);
                else if (c == '\n')
                        fputs("\\n", f);
                else if (c == '\t')
                        fputs("\\t", f);
                else if (c == '\r')
                        fputs("\\r", f);
                else if (c < 0x20 || c == 0x7f)
                        fprintf(f, "\\u%04x", c);
                else if (c < 0x80)
                        fputc((int)c, f);
                else if ((len = utf8_sequence(p, n)) > 0)
                        fwrite(p, 1, len, f);
                else
                        fputs("\\ufffd", f), len = 1;
                p += len;
                n -= len;
        }
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

static int cmd_set(const struct options *o)
{
        char why[512] = "";
        struct ds_config cfg;
        ds_handle *h = NULL;
        int rc;
        /* Every pair must parse before the segment is touched. */
        ds_config_defaults(&cfg);
        for (size_t i = 0; i < o->n_pairs; i++)
                if (ds_config_set_kv(&cfg, o->pairs[i], why, sizeof(why)) != 0)
                        return usage_error("--set: %s", why);
        if ((rc = attach(o, &h)))
                return rc;
        /* One change under the lock: validated as a whole, nothing written
         * unless valid, and no concurrent --set is lost. */
        if ((rc = ds_update_config(h, o->pairs, o->n_pairs, &cfg, why, sizeof(why))) != 0) {
                if (rc == -EINVAL)
                        usage_error("--set: %s; nothing was changed", why);
                else
                        print_error("--set: %s; nothing was changed", why[0] ? why : strerror(-rc));
                goto out;
        }
        char text[512];
        ds_config_format(&cfg, text, sizeof(text));
        for (char *nl = strchr(text, '\n'); nl; nl = strchr(nl, '\n'))
                *nl = nl[1] ? ' ' : '\0';
        printf("segment %s: %s\n", ds_segment_name(o->segment), text);
out:
        ds_detach(h);
        return rc;
}

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
        printf("config: soft_limit %u, max_limit %u, idle_timeout %s, realloc_interval %s, "
               "wait_timeout %s, warn_usage %u%%, idle_release %s\n",
               st->cfg.soft_limit, st->cfg.max_limit, it, ri, wt, st->cfg.warn_usage_pct,
               st->cfg.idle_release ? "on" : "off");
        printf("totals: %llu grants, peak %llu held, %llu dead processes reclaimed, %llu lock "
               "repairs; capacity %u processes, %u leases, %u scrapers (%zu bytes)\n",
               (unsigned long long)st->grants, (unsigned long long)st->peak_held,
               (unsigned long long)st->reclaimed_procs, (unsigned long long)st->repairs,
               st->cap.max_procs, st->cap.max_leases, st->cap.max_scrapers, st->segment_size);
        putchar('\n');
        if (st->n_scrapers == 0) {
                printf("no scrapers yet\n");
                return;
        }
        char name[DS_NAME_MAX * 4 + 8];
        size_t col = strlen("SCRAPER");
        for (size_t i = 0; i < st->n_scrapers; i++) {
                size_t w = display_name(st->scrapers[i].name, name, sizeof(name));
                if (w > col)
                        col = w;
        }
        printf("%-*s  %-6s %5s %5s %7s %5s %9s %9s %9s %9s %13s %12s\n", (int)col, "SCRAPER",
               "STATE", "HELD", "LIMIT", "WAITING", "PROCS", "CONNECTS", "RELEASES", "IDLE_REL",
               "TIMEOUTS", "WAIT_MEAN_MS", "WAIT_MAX_MS");
        for (size_t i = 0; i < st->n_scrapers; i++) {
                const struct ds_scraper_stats *s = &st->scrapers[i];
                size_t w = display_name(s->name, name, sizeof(name));
                printf("%s%*s  %-6s %5u %5u %7u %5u %9llu %9llu %9llu %9llu %13.3f %12.3f\n", name,
                       (int)(col - w), "", s->active ? "active" : "idle", s->held, s->limit,
                       s->waiting, s->procs, (unsigned long long)s->connects,
                       (unsigned long long)s->releases, (unsigned long long)s->idle_releases,
                       (unsigned long long)s->timeouts, wait_ms_mean(s), ms_of_ns(s->wait_ns_max));
        }
}

static void print_stats_json(const char *segment, const struct ds_stats *st)
{
        const struct ds_config *c = &st->cfg;
        printf("{\"segment\": ");
        json_string(stdout, segment);
        printf(", \"version\": \"%s\"", DS_VERSION_STRING);
        printf(", \"pool_size\": %u, \"held\": %u, \"waiting\": %u, \"usage_pct\": %u, "
               "\"usage_warning\": %s",
               c->pool_size, st->held, st->waiting, usage_pct(st),
               usage_above_warning(st) ? "true" : "false");
        printf(", \"soft_limit\": %u, \"max_limit\": %u, \"idle_timeout_ms\": %u, "
               "\"realloc_interval_ms\": %u, \"wait_timeout_ms\": %u, \"warn_usage_pct\": %u, "
               "\"idle_release\": %s",
               c->soft_limit, c->max_limit, c->idle_timeout_ms, c->realloc_interval_ms,
               c->wait_timeout_ms, c->warn_usage_pct, c->idle_release ? "true" : "false");
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
                       "\"timeouts\": %llu, \"waits\": %llu",
                       (unsigned long long)s->connects, (unsigned long long)s->releases,
                       (unsigned long long)s->idle_releases,
                       (unsigned long long)s->surplus_releases, (unsigned long long)s->reconnects,
                       (unsigned long long)s->reclaimed, (unsigned long long)s->timeouts,
                       (unsigned long long)s->waits);
                printf(", \"wait_ms_mean\": %.3f, \"wait_ms_max\": %.3f}", wait_ms_mean(s),
                       ms_of_ns(s->wait_ns_max));
        }
        printf("]}\n");
}

static int cmd_stats(const struct options *o)
{
        ds_handle *h = NULL;
        struct ds_stats st;
        int rc = attach(o, &h);
        if (rc)
                return rc;
        if ((rc = ds_stats_get(h, &st))) {
                print_error("could not read the statistics of segment %s: %s",
                            ds_segment_name(o->segment), strerror(-rc));
                goto out;
        }
        if (o->json)
                print_stats_json(ds_segment_name(o->segment), &st);
        else
                print_stats_table(ds_segment_name(o->segment), &st);
        ds_stats_free(&st);
out:
        ds_detach(h);
        return rc;
}

static int cmd_health(const struct options *o)
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
                return cmd_set(o);
        case CMD_STATS:
                return cmd_stats(o);
        case CMD_HEALTH:
                return cmd_health(o);
        case CMD_DESTROY:
                return cmd_destroy(o);
        case CMD_VERSION:
                return cmd_version();
        case CMD_NONE:
                break;
        }
        return -EINVAL;
}

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
        if (rc == 0)
                return 0;
        if (rc == -EINVAL) {
                fputs("Try '" PROG " --help' for more information.\n", stderr);
                return 2;
        }
        return 1;
}
