/* config.c - pool configuration: defaults, validation and strict parsers. */
#include "dynshim/config.h"

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
        if (cfg->soft_limit > cfg->max_limit) {
                WHY("soft_limit %u is above max_limit %u", cfg->soft_limit, cfg->max_limit);
                return -EINVAL;
        }
        if (cfg->max_limit > cfg->pool_size) {
                WHY("max_limit %u is above pool_size %u", cfg->max_limit, cfg->pool_size);
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
                uint32_t v;
                int rc;
                switch (k->kind) {
                case KV_COUNT:
                        rc = ds_parse_u32(val, 1, DS_CAP_LEASES_MAX, &v);
                        if (rc)
                                WHY("%s: '%s' is not a whole number from 1 to %u", k->name, val,
                                    DS_CAP_LEASES_MAX);
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
                return 0;
        }
        WHY("unknown key '%.*s' (keys: pool_size, soft_limit, max_limit, idle_timeout, "
            "realloc_interval, wait_timeout, warn_usage, idle_release)",
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
        char it[24], ri[24], wt[24];
        fmt_ms(it, sizeof(it), cfg->idle_timeout_ms);
        fmt_ms(ri, sizeof(ri), cfg->realloc_interval_ms);
        fmt_ms(wt, sizeof(wt), cfg->wait_timeout_ms);
        return snprintf(buf, len,
                        "pool_size=%u\nsoft_limit=%u\nmax_limit=%u\nidle_timeout=%s\n"
                        "realloc_interval=%s\nwait_timeout=%s\nwarn_usage=%u\nidle_release=%s\n",
                        cfg->pool_size, cfg->soft_limit, cfg->max_limit, it, ri, wt,
                        cfg->warn_usage_pct, cfg->idle_release ? "on" : "off");
}
