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
        uint32_t reuse;               /* 1: finished healthy connections are parked for reuse */
        uint32_t reuse_timeout_ms;    /* a parked connection is closed after this long */
        /* Cluster mode (docs/cluster.md): 1 + the process record of the
         * agent whose share pool_size is, and that agent's pid; 0: none.
         * While set, slots are granted only while that process lives. Set
         * by ds_cluster_gate alone, never by a configuration change. */
        uint32_t agent_proc;
        int32_t agent_pid;
        /* While a connect waits, a connection unused this long is handed
         * over to a waiter (released, reconnected on its next use). */
        uint32_t handover_delay_ms;
        /* Waiters that hold the only slots they could get (hold-and-wait)
         * this long: the newest of them fails with a deadlock error. */
        uint32_t deadlock_timeout_ms;
        uint32_t reserved[2]; /* zero; room for later keys */
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

/* ---- per-scraper overrides (dyncoord --set scraper.NAME.KEY=VALUE) ---- */

#define DS_OV_MAX          (1u << 0) /* `max` is set */
#define DS_OV_RESERVE      (1u << 1) /* `reserve` is set */
#define DS_OV_WEIGHT       (1u << 2) /* `weight` is set */
#define DS_OV_IDLE_RELEASE (1u << 3) /* `idle_release` is set */
#define DS_OV_ALL          (DS_OV_MAX | DS_OV_RESERVE | DS_OV_WEIGHT | DS_OV_IDLE_RELEASE)

/* A weight is kept in thousandths: 1000 is the default weight 1. */
#define DS_WEIGHT_ONE 1000u
#define DS_WEIGHT_MIN 1u       /* 0.001 */
#define DS_WEIGHT_MAX 1000000u /* 1000 */

/* The overrides of one scraper. A field counts only when its flag is set;
 * unset fields are 0. Validated (ds_override_validate) before written. */
struct ds_override {
        uint32_t flags;        /* DS_OV_* */
        uint32_t max;          /* hard cap on slots held, >= 1 */
        uint32_t reserve;      /* slots guaranteed whenever it asks */
        uint32_t weight_milli; /* relative share, in thousandths */
        uint32_t idle_release; /* 0/1: replaces the pool's idle_release */
};

/* The effective values of an override (defaults where unset). */
uint32_t ds_override_weight(const struct ds_override *ov);
uint32_t ds_override_reserve(const struct ds_override *ov);
uint32_t ds_override_cap(const struct ds_override *ov); /* UINT32_MAX: none */
uint32_t ds_override_idle_release(const struct ds_override *ov, const struct ds_config *cfg);

/* Splits "scraper.NAME.FIELD" into the scraper name (copied into name, at
 * most DS_NAME_MAX-1 bytes) and the field's DS_OV_* flag. With allow_all,
 * "scraper.NAME" (no known field last) gives DS_OV_ALL. The field is the
 * last dot-separated part, so a name may itself contain dots. 0, -ENOENT if
 * key does not start with "scraper.", or -EINVAL with the reason. */
int ds_override_parse_key(const char *key, size_t keylen, int allow_all, char *name,
                          uint32_t *field, char *why, size_t whylen);

/* Applies "scraper.NAME.FIELD=VALUE" to ov (name is checked by the caller
 * through ds_override_parse_key). 0 or -EINVAL with the reason. */
int ds_override_set(struct ds_override *ov, uint32_t field, const char *name, const char *value,
                    char *why, size_t whylen);

/* 0 if the override of scraper name is consistent in itself (reserve <= max
 * when both are set, max >= 1, weight in range), else -EINVAL. The sum of
 * all reserves is checked against pool_size by the pool. */
int ds_override_validate(const struct ds_override *ov, const char *name, char *why, size_t whylen);

/* Writes the set fields as "max=5 reserve=2 weight=0.5 idle_release=off"
 * ("" when none). Returns the length snprintf would have written. */
int ds_override_format(const struct ds_override *ov, char *buf, size_t len);

/* Writes "key=value" lines for cfg (for --stats and docs). Returns the length
 * snprintf would have written. */
int ds_config_format(const struct ds_config *cfg, char *buf, size_t len);

#endif
