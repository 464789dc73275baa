/* fuzz_config.c - the configuration parsers and KEY=VALUE pairs.
 *
 * The input is text: as one value for each strict parser, and as lines of
 * KEY=VALUE pairs applied in turn. Beyond not crashing, what is accepted
 * must make sense:
 * - ds_parse_u32 accepts exactly the decimal numbers within [min, max];
 * - ds_parse_duration_ms gives at most one day, and the value printed the
 *   way ds_config_format prints it parses back to the same value;
 * - ds_parse_onoff gives 0 or 1;
 * - a configuration that ds_config_set_kv produced is printed by
 *   ds_config_format and read back by ds_config_set_kv identically, and one
 *   that ds_config_validate accepts against the largest capacity too. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dynshim/config.h"

static void require(int cond, const char *what, const char *input)
{
        if (!cond) {
                fprintf(stderr, "config fuzz: %s (input '%s')\n", what, input);
                abort();
        }
}

/* The keys of a configuration that a KEY=VALUE can set and
 * ds_config_format prints. */
static int same_keys(const struct ds_config *a, const struct ds_config *b)
{
        return a->pool_size == b->pool_size && a->soft_limit == b->soft_limit &&
               a->max_limit == b->max_limit && a->idle_timeout_ms == b->idle_timeout_ms &&
               a->realloc_interval_ms == b->realloc_interval_ms &&
               a->wait_timeout_ms == b->wait_timeout_ms && a->warn_usage_pct == b->warn_usage_pct &&
               a->idle_release == b->idle_release && a->reuse == b->reuse &&
               a->reuse_timeout_ms == b->reuse_timeout_ms &&
               a->handover_delay_ms == b->handover_delay_ms &&
               a->deadlock_timeout_ms == b->deadlock_timeout_ms;
}

/* Prints cfg and reads every line back into a default configuration. */
static void round_trip(const struct ds_config *cfg, const char *input)
{
        char text[1024], why[300];
        int n = ds_config_format(cfg, text, sizeof(text));
        require(n > 0 && (size_t)n < sizeof(text), "format output does not fit", input);
        require(strlen(text) == (size_t)n, "format returned a wrong length", input);
        struct ds_config back;
        ds_config_defaults(&back);
        char *save = NULL;
        int lines = 0;
        for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
                require(ds_config_set_kv(&back, line, why, sizeof(why)) == 0,
                        "a line printed by ds_config_format is refused by ds_config_set_kv", input);
                lines++;
        }
        require(lines == 12, "ds_config_format printed other than 12 keys", input);
        require(same_keys(cfg, &back), "the configuration read back differs", input);
}

static void fuzz_value(const char *s)
{
        uint32_t v = 12345;
        char why[300];
        if (ds_parse_u32(s, 0, UINT32_MAX, &v) == 0) {
                size_t i = strspn(s, "0");
                char back[16];
                snprintf(back, sizeof(back), "%u", v);
                require(strspn(s, "0123456789") == strlen(s), "u32 took a non-digit", s);
                require(strcmp(s[i] ? s + i : "0", back) == 0, "u32 value differs from its text",
                        s);
        }
        uint32_t r = 0;
        if (ds_parse_u32(s, 1, 100, &r) == 0)
                require(r >= 1 && r <= 100, "u32 out of [1, 100]", s);
        if (ds_parse_duration_ms(s, &v) == 0) {
                require(v <= DS_DURATION_MAX_MS, "a duration above one day", s);
                struct ds_config c;
                ds_config_defaults(&c);
                c.wait_timeout_ms = v;
                round_trip(&c, s);
        }
        if (ds_parse_onoff(s, &v) == 0)
                require(v == 0 || v == 1, "on/off other than 0 or 1", s);

        /* As one pair on the defaults: accepted means it prints and reads back. */
        struct ds_config cfg, before;
        ds_config_defaults(&cfg);
        before = cfg;
        why[0] = '\0';
        if (ds_config_set_kv(&cfg, s, why, sizeof(why)) == 0) {
                round_trip(&cfg, s);
        } else {
                require(why[0] != '\0', "a refused pair without a reason", s);
                require(memcmp(&cfg, &before, sizeof(cfg)) == 0, "a refused pair changed cfg", s);
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        if (size > 4096)
                return 0;
        char *s = malloc(size + 1);
        if (!s)
                return 0;
        memcpy(s, data, size);
        s[size] = '\0';
        fuzz_value(s);

        /* As lines of pairs applied in turn, then validated as a whole. */
        struct ds_config cfg;
        ds_config_defaults(&cfg);
        char why[300];
        char *save = NULL;
        for (char *line = strtok_r(s, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
                (void)ds_config_set_kv(&cfg, line, why, sizeof(why));
        round_trip(&cfg, "(lines)");
        struct ds_capacity big = {DS_CAP_PROCS_MAX, DS_CAP_LEASES_MAX, DS_CAP_SCRAPERS_MAX};
        if (ds_config_validate(&cfg, &big, why, sizeof(why)) != 0)
                require(why[0] != '\0', "an invalid configuration without a reason", "(lines)");
        free(s);

        /* The raw bytes as a configuration: whatever validates against a
         * capacity prints and reads back. */
        if (size >= sizeof(struct ds_config)) {
                struct ds_config raw;
                memcpy(&raw, data, sizeof(raw));
                why[0] = '\0';
                if (ds_config_validate(&raw, &big, why, sizeof(why)) == 0)
                        round_trip(&raw, "(raw bytes)");
                else
                        require(why[0] != '\0', "an invalid configuration without a reason",
                                "(raw bytes)");
        }
        return 0;
}
