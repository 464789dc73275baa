/* config.c - pool configuration: defaults, validation and strict parsers. */
#include "dynshim/config.h"
#include "dynshim/policy.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

void ds_config_defaults(struct ds_config *cfg)
{
        memset(cfg, 0, sizeof(*cfg));
        cfg->pool_size = 20;
        cfg->soft_limit = 10;
        cfg->max_limit = 15;
        cfg->idle_timeout_ms = 60000;
        cfg->realloc_interval_ms = 30000;
        cfg->wait_timeout_ms = 30000;
        cfg->warn_usage_pct = 80;
        cfg->idle_release = 1;
        cfg->reuse = 0;
        cfg->reuse_timeout_ms = 5000;
        cfg->handover_delay_ms = 100;
        cfg->deadlock_timeout_ms = 1000;
        cfg->limits_set = 0; /* the limits follow pool_size */
        ds_policy_follow_pool(cfg);
}

void ds_capacity_defaults(struct ds_capacity *cap)
{
        cap->max_procs = 1024;
        cap->max_leases = 4096;
        cap->max_scrapers = 256;
}

#define WHY(...) (why ? (void)snprintf(why, whylen, __VA_ARGS__) : (void)0)

int ds_capacity_validate(const struct ds_capacity *cap, char *why, size_t whylen)
{
        if (cap->max_procs < 1 || cap->max_procs > DS_CAP_PROCS_MAX) {
                WHY("max_processes %u is out of range (1..%u)", cap->max_procs, DS_CAP_PROCS_MAX);
                return -EINVAL;
        }
        if (cap->max_leases < 1 || cap->max_leases > DS_CAP_LEASES_MAX) {
                WHY("max_leases %u is out of range (1..%u)", cap->max_leases, DS_CAP_LEASES_MAX);
                return -EINVAL;
        }
        if (cap->max_scrapers < 1 || cap->max_scrapers > DS_CAP_SCRAPERS_MAX) {
                WHY("max_scrapers %u is out of range (1..%u)", cap->max_scrapers,
                    DS_CAP_SCRAPERS_MAX);
                return -EINVAL;
        }
        return 0;
}

int ds_config_validate(const struct ds_config *cfg, const struct ds_capacity *cap, char *why,
                       size_t whylen)
{
        if (cfg->pool_size == 0) {
                WHY("pool_size must be at least 1");
                return -EINVAL;
        }
        if (cfg->soft_limit == 0) {
                WHY("soft_limit must be at least 1");
                return -EINVAL;
        }
        if (cfg->max_limit == 0) {
                WHY("max_limit must be at least 1");
                return -EINVAL;
        }
        if (cfg->limits_set & ~DS_LIMIT_SET_ALL) {
                WHY("limits_set has unknown bits 0x%x", cfg->limits_set & ~DS_LIMIT_SET_ALL);
                return -EINVAL;
        }
        /* The limits the operator set are named as such: they do not follow
         * pool_size, so a smaller pool is refused until they are lowered too
         * (or handed back to pool_size with the value auto). */
        if (cfg->soft_limit > cfg->max_limit) {
                WHY("soft_limit %u is above max_limit %u%s", cfg->soft_limit, cfg->max_limit,
                    !(cfg->limits_set & DS_LIMIT_MAX_SET)
                        ? " (max_limit follows pool_size, 75 %: set max_limit as well)"
                        : "");
                return -EINVAL;
        }
        if (cfg->max_limit > cfg->pool_size) {
                WHY("max_limit %u is above pool_size %u%s", cfg->max_limit, cfg->pool_size,
                    cfg->limits_set & DS_LIMIT_MAX_SET
                        ? " (max_limit was set explicitly: lower it too, or set "
                          "max_limit=auto to let it follow pool_size)"
                        : "");
                return -EINVAL;
        }
        if (cap && cfg->agent_proc > cap->max_procs) {
                WHY("agent_proc %u is above the segment's capacity of %u processes",
                    cfg->agent_proc, cap->max_procs);
                return -EINVAL;
        }
        if (cap && cfg->pool_size > cap->max_leases) {
                WHY("pool_size %u is above the segment's capacity of %u leases", cfg->pool_size,
                    cap->max_leases);
                return -EINVAL;
        }
        if (cfg->idle_timeout_ms == 0 || cfg->idle_timeout_ms > DS_DURATION_MAX_MS) {
                WHY("idle_timeout must be above 0 and at most one day");
                return -EINVAL;
        }
        if (cfg->realloc_interval_ms == 0 || cfg->realloc_interval_ms > DS_DURATION_MAX_MS) {
                WHY("realloc_interval must be above 0 and at most one day");
                return -EINVAL;
        }
        if (cfg->wait_timeout_ms > DS_DURATION_MAX_MS) {
                WHY("wait_timeout must be at most one day");
                return -EINVAL;
        }
        if (cfg->warn_usage_pct < 1 || cfg->warn_usage_pct > 100) {
                WHY("warn_usage %u is out of range (1..100)", cfg->warn_usage_pct);
                return -EINVAL;
        }
        if (cfg->idle_release > 1) {
                WHY("idle_release must be on or off");
                return -EINVAL;
        }
        if (cfg->reuse > 1) {
                WHY("reuse must be on or off");
                return -EINVAL;
        }
        if (cfg->reuse_timeout_ms == 0 || cfg->reuse_timeout_ms > DS_DURATION_MAX_MS) {
                WHY("reuse_timeout must be above 0 and at most one day");
                return -EINVAL;
        }
        if (cfg->handover_delay_ms == 0 || cfg->handover_delay_ms > 60000) {
                WHY("handover_delay must be above 0 and at most 60 s");
                return -EINVAL;
        }
        if (cfg->deadlock_timeout_ms == 0 || cfg->deadlock_timeout_ms > DS_DURATION_MAX_MS) {
                WHY("deadlock_timeout must be above 0 and at most one day");
                return -EINVAL;
        }
        return 0;
}

int ds_parse_u32(const char *s, uint32_t min, uint32_t max, uint32_t *out)
{
        uint64_t v = 0;
        if (!s || !*s)
                return -EINVAL;
        for (const char *p = s; *p; p++) {
                if (*p < '0' || *p > '9')
                        return -EINVAL;
                v = v * 10 + (uint64_t)(*p - '0');
                if (v > UINT32_MAX)
                        return -EINVAL;
        }
        if (v < min || v > max)
                return -EINVAL;
        *out = (uint32_t)v;
        return 0;
}

int ds_parse_duration_ms(const char *s, uint32_t *out_ms)
{
        uint64_t whole = 0, frac = 0;
        int ndigits = 0, nfrac = 0, seen_dot = 0;
        const char *p = s;
        if (!s || !*s)
                return -EINVAL;
        for (; *p; p++) {
                if (*p >= '0' && *p <= '9') {
                        if (seen_dot) {
                                if (++nfrac > 3)
                                        return -EINVAL;
                                frac = frac * 10 + (uint64_t)(*p - '0');
                        } else {
                                whole = whole * 10 + (uint64_t)(*p - '0');
                                if (whole > DS_DURATION_MAX_MS)
                                        return -EINVAL;
                        }
                        ndigits++;
                } else if (*p == '.' && !seen_dot && ndigits > 0) {
                        seen_dot = 1;
                } else {
                        break;
                }
        }
        if (ndigits == 0 || (seen_dot && nfrac == 0))
                return -EINVAL;
        uint64_t ms;
        if (strcmp(p, "ms") == 0) {
                if (seen_dot)
                        return -EINVAL;
                ms = whole;
        } else if (*p == '\0' || strcmp(p, "s") == 0) {
                while (nfrac < 3) {
                        frac *= 10;
                        nfrac++;
                }
                ms = whole * 1000 + frac;
        } else {
                return -EINVAL;
        }
        if (ms > DS_DURATION_MAX_MS)
                return -EINVAL;
        *out_ms = (uint32_t)ms;
        return 0;
}

int ds_parse_onoff(const char *s, uint32_t *out)
{
        static const char *const on[] = {"on", "true", "yes", "1"};
        static const char *const off[] = {"off", "false", "no", "0"};
        if (!s)
                return -EINVAL;
        for (size_t i = 0; i < sizeof(on) / sizeof(on[0]); i++) {
                if (strcasecmp(s, on[i]) == 0) {
                        *out = 1;
                        return 0;
                }
                if (strcasecmp(s, off[i]) == 0) {
                        *out = 0;
                        return 0;
                }
        }
        return -EINVAL;
}

enum kv_kind { KV_COUNT, KV_PERCENT, KV_DURATION, KV_ONOFF };

static const struct kv_key {
        const char *name;
        enum kv_kind kind;
        size_t off;
} kv_keys[] = {
    {"pool_size", KV_COUNT, offsetof(struct ds_config, pool_size)},
    {"soft_limit", KV_COUNT, offsetof(struct ds_config, soft_limit)},
    {"max_limit", KV_COUNT, offsetof(struct ds_config, max_limit)},
    {"idle_timeout", KV_DURATION, offsetof(struct ds_config, idle_timeout_ms)},
    {"realloc_interval", KV_DURATION, offsetof(struct ds_config, realloc_interval_ms)},
    {"wait_timeout", KV_DURATION, offsetof(struct ds_config, wait_timeout_ms)},
    {"warn_usage", KV_PERCENT, offsetof(struct ds_config, warn_usage_pct)},
    {"idle_release", KV_ONOFF, offsetof(struct ds_config, idle_release)},
    {"reuse", KV_ONOFF, offsetof(struct ds_config, reuse)},
    {"reuse_timeout", KV_DURATION, offsetof(struct ds_config, reuse_timeout_ms)},
    {"handover_delay", KV_DURATION, offsetof(struct ds_config, handover_delay_ms)},
    {"deadlock_timeout", KV_DURATION, offsetof(struct ds_config, deadlock_timeout_ms)},
};

int ds_config_set_kv(struct ds_config *cfg, const char *kv, char *why, size_t whylen)
{
        const char *eq = kv ? strchr(kv, '=') : NULL;
        if (!eq || eq == kv) {
                WHY("'%s' is not KEY=VALUE", kv ? kv : "");
                return -EINVAL;
        }
        size_t klen = (size_t)(eq - kv);
        const char *val = eq + 1;
        for (size_t i = 0; i < sizeof(kv_keys) / sizeof(kv_keys[0]); i++) {
                const struct kv_key *k = &kv_keys[i];
                if (strlen(k->name) != klen || strncmp(k->name, kv, klen) != 0)
                        continue;
                uint32_t v, flag = 0;
                int rc;
                if (k->off == offsetof(struct ds_config, soft_limit))
                        flag = DS_LIMIT_SOFT_SET;
                else if (k->off == offsetof(struct ds_config, max_limit))
                        flag = DS_LIMIT_MAX_SET;
                if (flag && strcmp(val, "auto") == 0) {
                        cfg->limits_set &= ~flag;
                        ds_policy_follow_pool(cfg);
                        return 0;
                }
                switch (k->kind) {
                case KV_COUNT:
                        rc = ds_parse_u32(val, 1, DS_CAP_LEASES_MAX, &v);
                        if (rc)
                                WHY("%s: '%s' is not a whole number from 1 to %u%s", k->name, val,
                                    DS_CAP_LEASES_MAX, flag ? ", or auto (follow pool_size)" : "");
                        break;
                case KV_PERCENT:
                        rc = ds_parse_u32(val, 1, 100, &v);
                        if (rc)
                                WHY("%s: '%s' is not a percentage from 1 to 100", k->name, val);
                        break;
                case KV_DURATION:
                        rc = ds_parse_duration_ms(val, &v);
                        if (rc)
                                WHY("%s: '%s' is not a duration in seconds (e.g. 60, 0.5, 500ms)",
                                    k->name, val);
                        break;
                default:
                        rc = ds_parse_onoff(val, &v);
                        if (rc)
                                WHY("%s: '%s' is not on or off", k->name, val);
                        break;
                }
                if (rc)
                        return -EINVAL;
                memcpy((char *)cfg + k->off, &v, sizeof(v));
                cfg->limits_set |= flag;
                /* the limits move with pool_size (and a derived soft_limit
                 * with an explicit max_limit); other keys leave them alone */
                if (flag || k->off == offsetof(struct ds_config, pool_size))
                        ds_policy_follow_pool(cfg);
                return 0;
        }
        WHY("unknown key '%.*s' (keys: pool_size, soft_limit, max_limit, idle_timeout, "
            "realloc_interval, wait_timeout, warn_usage, idle_release, reuse, "
            "reuse_timeout, handover_delay, deadlock_timeout, and scraper.NAME.max, .reserve, "
            ".weight, .idle_release)",
            (int)klen, kv);
        return -EINVAL;
}

static void fmt_ms(char *b, size_t n, uint32_t ms)
{
        if (ms % 1000 == 0)
                snprintf(b, n, "%u", ms / 1000);
        else
                snprintf(b, n, "%u.%03u", ms / 1000, ms % 1000);
}

int ds_config_format(const struct ds_config *cfg, char *buf, size_t len)
{
        char it[24], ri[24], wt[24], rt[24], sl[24], ml[24], hd[24], dt[24];
        fmt_ms(hd, sizeof(hd), cfg->handover_delay_ms);
        fmt_ms(dt, sizeof(dt), cfg->deadlock_timeout_ms);
        fmt_ms(it, sizeof(it), cfg->idle_timeout_ms);
        fmt_ms(rt, sizeof(rt), cfg->reuse_timeout_ms);
        fmt_ms(ri, sizeof(ri), cfg->realloc_interval_ms);
        fmt_ms(wt, sizeof(wt), cfg->wait_timeout_ms);
        /* a limit that follows pool_size is printed as such, so that the
         * text read back gives the same configuration; one not marked as set
         * whose value is not its share (a configuration made by a program,
         * not by these keys) is printed as the number it is */
        struct ds_config d = *cfg;
        ds_policy_follow_pool(&d);
        if ((cfg->limits_set & DS_LIMIT_SOFT_SET) || cfg->soft_limit != d.soft_limit)
                snprintf(sl, sizeof(sl), "%u", cfg->soft_limit);
        else
                snprintf(sl, sizeof(sl), "auto");
        if ((cfg->limits_set & DS_LIMIT_MAX_SET) || cfg->max_limit != d.max_limit)
                snprintf(ml, sizeof(ml), "%u", cfg->max_limit);
        else
                snprintf(ml, sizeof(ml), "auto");
        return snprintf(buf, len,
                        "pool_size=%u\nsoft_limit=%s\nmax_limit=%s\nidle_timeout=%s\n"
                        "realloc_interval=%s\nwait_timeout=%s\nwarn_usage=%u\nidle_release=%s\n"
                        "reuse=%s\nreuse_timeout=%s\nhandover_delay=%s\ndeadlock_timeout=%s\n",
                        cfg->pool_size, sl, ml, it, ri, wt, cfg->warn_usage_pct,
                        cfg->idle_release ? "on" : "off", cfg->reuse ? "on" : "off", rt, hd, dt);
}

/* ---- per-scraper overrides ---- */

uint32_t ds_override_weight(const struct ds_override *ov)
{
        if (!(ov->flags & DS_OV_WEIGHT) || ov->weight_milli < DS_WEIGHT_MIN)
                return DS_WEIGHT_ONE;
        return ov->weight_milli > DS_WEIGHT_MAX ? DS_WEIGHT_MAX : ov->weight_milli;
}

uint32_t ds_override_reserve(const struct ds_override *ov)
{
        return ov->flags & DS_OV_RESERVE ? ov->reserve : 0;
}

uint32_t ds_override_cap(const struct ds_override *ov)
{
        if (!(ov->flags & DS_OV_MAX))
                return UINT32_MAX;
        return ov->max ? ov->max : 1;
}

uint32_t ds_override_idle_release(const struct ds_override *ov, const struct ds_config *cfg)
{
        return ov->flags & DS_OV_IDLE_RELEASE ? ov->idle_release != 0 : cfg->idle_release != 0;
}

static const struct {
        const char *name;
        uint32_t flag;
} ov_fields[] = {
    {"max", DS_OV_MAX},
    {"reserve", DS_OV_RESERVE},
    {"weight", DS_OV_WEIGHT},
    {"idle_release", DS_OV_IDLE_RELEASE},
};

#define OV_PREFIX "scraper."

int ds_override_parse_key(const char *key, size_t keylen, int allow_all, char *name,
                          uint32_t *field, char *why, size_t whylen)
{
        size_t plen = strlen(OV_PREFIX);
        if (keylen < plen || strncmp(key, OV_PREFIX, plen) != 0)
                return -ENOENT;
        const char *rest = key + plen;
        size_t rlen = keylen - plen;
        const char *dot = NULL;
        for (size_t i = 0; i < rlen; i++)
                if (rest[i] == '.')
                        dot = rest + i;
        size_t nlen = rlen;
        *field = 0;
        if (dot) {
                size_t flen = rlen - (size_t)(dot + 1 - rest);
                for (size_t i = 0; i < sizeof(ov_fields) / sizeof(ov_fields[0]); i++)
                        if (strlen(ov_fields[i].name) == flen &&
                            strncmp(ov_fields[i].name, dot + 1, flen) == 0) {
                                *field = ov_fields[i].flag;
                                nlen = (size_t)(dot - rest);
                        }
        }
        if (*field == 0) {
                if (!allow_all) {
                        WHY("'%.*s' does not end in a scraper setting (scraper.NAME.max, .reserve, "
                            ".weight or .idle_release)",
                            (int)keylen, key);
                        return -EINVAL;
                }
                *field = DS_OV_ALL;
        }
        if (nlen == 0) {
                WHY("'%.*s' names no scraper (scraper.NAME.KEY)", (int)keylen, key);
                return -EINVAL;
        }
        if (nlen >= DS_NAME_MAX) {
                WHY("scraper name '%.*s' is longer than %d bytes", (int)nlen, rest,
                    DS_NAME_MAX - 1);
                return -EINVAL;
        }
        memcpy(name, rest, nlen);
        name[nlen] = '\0';
        return 0;
}

/* A decimal with up to 3 decimals ("0.5", "2", "1.25") in thousandths. */
static int parse_milli(const char *s, uint32_t *out)
{
        uint64_t whole = 0, frac = 0;
        int nd = 0, nf = 0, dot = 0;
        if (!s || !*s)
                return -EINVAL;
        for (const char *p = s; *p; p++) {
                if (*p >= '0' && *p <= '9') {
                        if (dot) {
                                if (++nf > 3)
                                        return -EINVAL;
                                frac = frac * 10 + (uint64_t)(*p - '0');
                        } else {
                                whole = whole * 10 + (uint64_t)(*p - '0');
                                if (whole > DS_WEIGHT_MAX)
                                        return -EINVAL;
                                nd++;
                        }
                } else if (*p == '.' && !dot) {
                        dot = 1;
                } else {
                        return -EINVAL;
                }
        }
        if ((nd == 0 && nf == 0) || (dot && nf == 0))
                return -EINVAL;
        while (nf++ < 3)
                frac *= 10;
        uint64_t v = whole * 1000 + frac;
        if (v > UINT32_MAX)
                return -EINVAL;
        *out = (uint32_t)v;
        return 0;
}

int ds_override_set(struct ds_override *ov, uint32_t field, const char *name, const char *value,
                    char *why, size_t whylen)
{
        uint32_t v;
        switch (field) {
        case DS_OV_MAX:
                if (ds_parse_u32(value, 1, DS_CAP_LEASES_MAX, &v)) {
                        WHY("scraper.%s.max: '%s' is not a whole number from 1 to %u", name, value,
                            DS_CAP_LEASES_MAX);
                        return -EINVAL;
                }
                ov->max = v;
                break;
        case DS_OV_RESERVE:
                if (ds_parse_u32(value, 0, DS_CAP_LEASES_MAX, &v)) {
                        WHY("scraper.%s.reserve: '%s' is not a whole number from 0 to %u", name,
                            value, DS_CAP_LEASES_MAX);
                        return -EINVAL;
                }
                ov->reserve = v;
                break;
        case DS_OV_WEIGHT:
                if (parse_milli(value, &v) || v < DS_WEIGHT_MIN || v > DS_WEIGHT_MAX) {
                        WHY("scraper.%s.weight: '%s' is not a number from 0.001 to 1000 (at most "
                            "3 decimals)",
                            name, value);
                        return -EINVAL;
                }
                ov->weight_milli = v;
                break;
        case DS_OV_IDLE_RELEASE:
                if (ds_parse_onoff(value, &v)) {
                        WHY("scraper.%s.idle_release: '%s' is not on or off", name, value);
                        return -EINVAL;
                }
                ov->idle_release = v;
                break;
        default:
                WHY("scraper.%s: no such setting", name);
                return -EINVAL;
        }
        ov->flags |= field;
        return 0;
}

int ds_override_validate(const struct ds_override *ov, const char *name, char *why, size_t whylen)
{
        if (ov->flags & ~DS_OV_ALL) {
                WHY("scraper \"%s\" has unknown override flags 0x%x", name, ov->flags);
                return -EINVAL;
        }
        if ((ov->flags & DS_OV_MAX) && (ov->max < 1 || ov->max > DS_CAP_LEASES_MAX)) {
                WHY("scraper \"%s\": max %u is out of range (1..%u)", name, ov->max,
                    DS_CAP_LEASES_MAX);
                return -EINVAL;
        }
        if ((ov->flags & DS_OV_RESERVE) && ov->reserve > DS_CAP_LEASES_MAX) {
                WHY("scraper \"%s\": reserve %u is out of range (0..%u)", name, ov->reserve,
                    DS_CAP_LEASES_MAX);
                return -EINVAL;
        }
        if ((ov->flags & DS_OV_WEIGHT) &&
            (ov->weight_milli < DS_WEIGHT_MIN || ov->weight_milli > DS_WEIGHT_MAX)) {
                WHY("scraper \"%s\": weight %u.%03u is out of range (0.001..1000)", name,
                    ov->weight_milli / 1000, ov->weight_milli % 1000);
                return -EINVAL;
        }
        if ((ov->flags & DS_OV_IDLE_RELEASE) && ov->idle_release > 1) {
                WHY("scraper \"%s\": idle_release must be on or off", name);
                return -EINVAL;
        }
        if ((ov->flags & DS_OV_MAX) && (ov->flags & DS_OV_RESERVE) && ov->reserve > ov->max) {
                WHY("scraper \"%s\": reserve %u is above its max %u", name, ov->reserve, ov->max);
                return -EINVAL;
        }
        return 0;
}

int ds_override_format(const struct ds_override *ov, char *buf, size_t len)
{
        int n = 0;
        if (len)
                buf[0] = '\0';
#define APPEND(...)                                                                                \
        n += snprintf(buf + ((size_t)n < len ? (size_t)n : len),                                   \
                      (size_t)n < len ? len - (size_t)n : 0, __VA_ARGS__)
        if (ov->flags & DS_OV_MAX)
                APPEND("%smax=%u", n ? " " : "", ov->max);
        if (ov->flags & DS_OV_RESERVE)
                APPEND("%sreserve=%u", n ? " " : "", ov->reserve);
        if (ov->flags & DS_OV_WEIGHT) {
                char w[24];
                snprintf(w, sizeof(w), "%u.%03u", ov->weight_milli / 1000, ov->weight_milli % 1000);
                char *e = w + strlen(w) - 1;
                while (*e == '0')
                        *e-- = '\0';
                if (*e == '.')
                        *e = '\0';
                APPEND("%sweight=%s", n ? " " : "", w);
        }
        if (ov->flags & DS_OV_IDLE_RELEASE)
                APPEND("%sidle_release=%s", n ? " " : "", ov->idle_release ? "on" : "off");
#undef APPEND
        return n;
}
