/* config.h - pool configuration: defaults, validation and the parsers shared
 * by dyncoord's options, its KEY=VALUE pairs and the shim's environment. */
#ifndef DYNSHIM_CONFIG_H
#define DYNSHIM_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#define DS_VERSION_STRING "0.1.0"

/* Longest scraper name kept, NUL included; longer names are truncated. */
#define DS_NAME_MAX 64

/* Upper bounds accepted for any capacity or size (keeps the segment small
 * and every index arithmetic far from overflow). */
#define DS_CAP_PROCS_MAX    65536u
#define DS_CAP_LEASES_MAX   65536u
#define DS_CAP_SCRAPERS_MAX 4096u
#define DS_DURATION_MAX_MS  (86400u * 1000u) /* one day */

/* The live configuration of a pool. Every field is validated as a whole by
 * ds_config_validate() before it is written into a segment. */
struct ds_config {
        uint32_t pool_size;           /* hard cap on slots held by all processes */
        uint32_t soft_limit;          /* per-scraper limit with 2+ active scrapers */
        uint32_t max_limit;           /* per-scraper limit with 1 active scraper */
        uint32_t idle_timeout_ms;     /* no libpq activity this long: idle */
        uint32_t realloc_interval_ms; /* limits recomputed at least this often */
        uint32_t wait_timeout_ms;     /* a connect waits at most this long */
        uint32_t warn_usage_pct;      /* usage above this is a warning (1..100) */
        uint32_t idle_release;        /* 1: release idle scrapers' connections */
        uint32_t reserved[8];         /* zero; room for later keys */
};

/* Table sizes fixed when a segment is created. */
struct ds_capacity {
        uint32_t max_procs;    /* processes attached at once */
        uint32_t max_leases;   /* slots held plus connects waiting, at once */
        uint32_t max_scrapers; /* distinct scraper names remembered */
};

void ds_config_defaults(struct ds_config *cfg);
void ds_capacity_defaults(struct ds_capacity *cap);

/* 0 if cfg is usable with a segment of capacity cap (cap may be NULL), else
 * -EINVAL with the reason written to why (a sentence naming the values). */
int ds_config_validate(const struct ds_config *cfg, const struct ds_capacity *cap, char *why,
                       size_t whylen);
int ds_capacity_validate(const struct ds_capacity *cap, char *why, size_t whylen);

/* Applies one "key=value" (snake_case key, as dyncoord --set takes it) to
 * cfg. 0, or -EINVAL with the reason in why; cfg is untouched on error.
 * Does not validate the configuration as a whole. */
int ds_config_set_kv(struct ds_config *cfg, const char *kv, char *why, size_t whylen);

/* Strict parsers: the whole string must be the value; 0 or -EINVAL.
 * ds_parse_u32: decimal digits only, within [min, max].
 * ds_parse_duration_ms: seconds, optionally with up to 3 decimals ("2",
 *   "0.25") or with a unit suffix "ms" or "s" ("500ms"); at most one day.
 * ds_parse_onoff: on/off, true/false, yes/no, 1/0. */
int ds_parse_u32(const char *s, uint32_t min, uint32_t max, uint32_t *out);
int ds_parse_duration_ms(const char *s, uint32_t *out_ms);
int ds_parse_onoff(const char *s, uint32_t *out);

/* Writes "key=value" lines for cfg (for --stats and docs). Returns the length
 * snprintf would have written. */
int ds_config_format(const struct ds_config *cfg, char *buf, size_t len);

#endif
