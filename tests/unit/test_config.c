/* test_config.c - configuration validation and the strict parsers. */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "dynshim/config.h"

Test(config, defaults_are_the_replaced_systems_and_valid)
{
        struct ds_config c;
        struct ds_capacity cap;
        ds_config_defaults(&c);
        ds_capacity_defaults(&cap);
        cr_assert_eq(c.pool_size, 20);
        cr_assert_eq(c.soft_limit, 10);
        cr_assert_eq(c.max_limit, 15);
        cr_assert_eq(c.idle_timeout_ms, 60000);
        cr_assert_eq(c.realloc_interval_ms, 30000);
        cr_assert_eq(c.wait_timeout_ms, 30000);
        cr_assert_eq(c.warn_usage_pct, 80);
        cr_assert_eq(c.idle_release, 1);
        cr_assert_eq(ds_config_validate(&c, &cap, NULL, 0), 0);
        cr_assert_eq(ds_capacity_validate(&cap, NULL, 0), 0);
}

static void expect_invalid(struct ds_config c, const char *needle)
{
        struct ds_capacity cap;
        char why[200] = "";
        ds_capacity_defaults(&cap);
        cap.max_leases = 100;
        cr_assert_eq(ds_config_validate(&c, &cap, why, sizeof(why)), -EINVAL);
        cr_assert(strstr(why, needle), "reason '%s' lacks '%s'", why, needle);
}

Test(config, invalid_configurations_are_refused_with_the_reason)
{
        struct ds_config d, c;
        ds_config_defaults(&d);
        c = d, c.soft_limit = 16;
        expect_invalid(c, "soft_limit 16 is above max_limit 15");
        c = d, c.max_limit = 21;
        expect_invalid(c, "max_limit 21 is above pool_size 20");
        c = d, c.pool_size = 0;
        expect_invalid(c, "pool_size must be at least 1");
        c = d, c.soft_limit = 0;
        expect_invalid(c, "soft_limit must be at least 1");
        c = d, c.pool_size = 101, c.max_limit = 15;
        expect_invalid(c, "above the segment's capacity of 100");
        c = d, c.idle_timeout_ms = 0;
        expect_invalid(c, "idle_timeout");
        c = d, c.realloc_interval_ms = 0;
        expect_invalid(c, "realloc_interval");
        c = d, c.warn_usage_pct = 0;
        expect_invalid(c, "warn_usage 0");
        c = d, c.warn_usage_pct = 101;
        expect_invalid(c, "warn_usage 101");
        c = d, c.idle_release = 2;
        expect_invalid(c, "idle_release");
}

Test(config, u32_parser_is_strict)
{
        uint32_t v = 7;
        cr_assert_eq(ds_parse_u32("42", 1, 100, &v), 0);
        cr_assert_eq(v, 42);
        const char *bad[] = {"", "-1", "+1", " 1", "1 ", "1x", "0x10", "4294967296", "101", "0"};
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                v = 7;
                cr_assert_eq(ds_parse_u32(bad[i], 1, 100, &v), -EINVAL, "'%s'", bad[i]);
                cr_assert_eq(v, 7, "'%s' changed the output", bad[i]);
        }
        cr_assert_eq(ds_parse_u32(NULL, 0, 1, &v), -EINVAL);
}

Test(config, durations_take_seconds_decimals_and_units)
{
        struct {
                const char *s;
                uint32_t ms;
        } ok[] = {{"60", 60000},  {"0.5", 500}, {"2.25", 2250}, {"1.001", 1001},
                  {"500ms", 500}, {"3s", 3000}, {"0", 0},       {"86400", 86400000}};
        for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
                uint32_t v = 0;
                cr_assert_eq(ds_parse_duration_ms(ok[i].s, &v), 0, "'%s'", ok[i].s);
                cr_assert_eq(v, ok[i].ms, "'%s' gave %u", ok[i].s, v);
        }
        const char *bad[] = {"",      ".",     "1.",          ".5",  "1.2345", "-1", "1m",
                             "1.5ms", "86401", "99999999999", "1 s", "s",      "ms", "1..2"};
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                uint32_t v = 123;
                cr_assert_eq(ds_parse_duration_ms(bad[i], &v), -EINVAL, "'%s'", bad[i]);
                cr_assert_eq(v, 123);
        }
}

Test(config, onoff_parser)
{
        uint32_t v = 9;
        cr_assert_eq(ds_parse_onoff("on", &v), 0);
        cr_assert_eq(v, 1);
        cr_assert_eq(ds_parse_onoff("OFF", &v), 0);
        cr_assert_eq(v, 0);
        cr_assert_eq(ds_parse_onoff("maybe", &v), -EINVAL);
        cr_assert_eq(ds_parse_onoff("", &v), -EINVAL);
}

Test(config, set_kv_applies_one_key_and_names_bad_input)
{
        struct ds_config c, before;
        char why[300];
        ds_config_defaults(&c);
        cr_assert_eq(ds_config_set_kv(&c, "pool_size=30", why, sizeof(why)), 0);
        cr_assert_eq(c.pool_size, 30);
        cr_assert_eq(ds_config_set_kv(&c, "idle_timeout=2.5", why, sizeof(why)), 0);
        cr_assert_eq(c.idle_timeout_ms, 2500);
        cr_assert_eq(ds_config_set_kv(&c, "idle_release=off", why, sizeof(why)), 0);
        cr_assert_eq(c.idle_release, 0);
        cr_assert_eq(ds_config_set_kv(&c, "warn_usage=90", why, sizeof(why)), 0);
        cr_assert_eq(c.warn_usage_pct, 90);
        cr_assert_eq(c.reuse, 0, "reuse is off by default");
        cr_assert_eq(c.reuse_timeout_ms, 5000);
        cr_assert_eq(ds_config_set_kv(&c, "reuse=on", why, sizeof(why)), 0);
        cr_assert_eq(c.reuse, 1);
        cr_assert_eq(ds_config_set_kv(&c, "reuse_timeout=500ms", why, sizeof(why)), 0);
        cr_assert_eq(c.reuse_timeout_ms, 500);
        before = c;
        struct {
                const char *kv, *needle;
        } bad[] = {{"pool_size", "not KEY=VALUE"},
                   {"=3", "not KEY=VALUE"},
                   {"pool=3", "unknown key 'pool'"},
                   {"pool_size=abc", "'abc' is not a whole number"},
                   {"pool_size=0", "'0' is not a whole number"},
                   {"pool_size=-3", "'-3' is not a whole number"},
                   {"idle_timeout=soon", "not a duration"},
                   {"idle_release=maybe", "not on or off"},
                   {"warn_usage=101", "not a percentage"},
                   {"reuse=sometimes", "not on or off"},
                   {"reuse_timeout=never", "not a duration"}};
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                why[0] = 0;
                cr_assert_eq(ds_config_set_kv(&c, bad[i].kv, why, sizeof(why)), -EINVAL, "%s",
                             bad[i].kv);
                cr_assert(strstr(why, bad[i].needle), "'%s' gave '%s'", bad[i].kv, why);
                cr_assert_eq(memcmp(&c, &before, sizeof(c)), 0, "'%s' changed the config",
                             bad[i].kv);
        }
}

Test(config, format_round_trips_through_set_kv)
{
        struct ds_config c, d;
        ds_config_defaults(&c);
        c.idle_timeout_ms = 2500;
        c.idle_release = 0;
        c.reuse = 1;
        c.reuse_timeout_ms = 1500;
        char buf[512];
        ds_config_format(&c, buf, sizeof(buf));
        ds_config_defaults(&d);
        for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n"))
                cr_assert_eq(ds_config_set_kv(&d, line, NULL, 0), 0, "%s", line);
        cr_assert_eq(memcmp(&c, &d, sizeof(c)), 0);
}

Test(config, limits_not_set_follow_pool_size_and_set_ones_stay)
{
        struct ds_config c;
        char why[300] = "";
        struct ds_capacity cap;
        ds_capacity_defaults(&cap);
        ds_config_defaults(&c);
        cr_assert_eq(ds_config_set_kv(&c, "pool_size=6", why, sizeof(why)), 0);
        cr_assert_eq(c.max_limit, 4);
        cr_assert_eq(c.soft_limit, 3);
        cr_assert_eq(ds_config_validate(&c, &cap, why, sizeof(why)), 0, "%s", why);
        cr_assert_eq(ds_config_set_kv(&c, "pool_size=20", why, sizeof(why)), 0);
        cr_assert_eq(c.max_limit, 15);
        cr_assert_eq(c.soft_limit, 10);
        /* set explicitly: kept across pool changes */
        cr_assert_eq(ds_config_set_kv(&c, "max_limit=12", why, sizeof(why)), 0);
        cr_assert_eq(c.limits_set, DS_LIMIT_MAX_SET);
        cr_assert_eq(ds_config_set_kv(&c, "pool_size=40", why, sizeof(why)), 0);
        cr_assert_eq(c.max_limit, 12);
        cr_assert_eq(c.soft_limit, 12, "the derived soft_limit stays at most max_limit");
        /* a pool below an explicit limit is refused, naming it as set */
        cr_assert_eq(ds_config_set_kv(&c, "pool_size=10", why, sizeof(why)), 0);
        cr_assert_eq(ds_config_validate(&c, &cap, why, sizeof(why)), -EINVAL);
        cr_assert(strstr(why, "max_limit 12 is above pool_size 10 (max_limit was set explicitly"),
                  "%s", why);
        /* auto hands it back to pool_size */
        cr_assert_eq(ds_config_set_kv(&c, "max_limit=auto", why, sizeof(why)), 0);
        cr_assert_eq(c.limits_set, 0);
        cr_assert_eq(c.max_limit, 7);
        cr_assert_eq(c.soft_limit, 5);
        cr_assert_eq(ds_config_validate(&c, &cap, why, sizeof(why)), 0, "%s", why);
        /* an explicit soft_limit above the derived max_limit is named */
        cr_assert_eq(ds_config_set_kv(&c, "soft_limit=9", why, sizeof(why)), 0);
        cr_assert_eq(ds_config_validate(&c, &cap, why, sizeof(why)), -EINVAL);
        cr_assert(strstr(why, "soft_limit 9 is above max_limit 7 (max_limit follows pool_size"),
                  "%s", why);
}

Test(config, format_writes_derived_limits_as_auto_and_reads_back_the_flags)
{
        struct ds_config c, d;
        char buf[512];
        ds_config_defaults(&c);
        cr_assert_eq(ds_config_set_kv(&c, "soft_limit=4", NULL, 0), 0);
        cr_assert_eq(ds_config_set_kv(&c, "pool_size=12", NULL, 0), 0);
        ds_config_format(&c, buf, sizeof(buf));
        cr_assert(strstr(buf, "soft_limit=4\nmax_limit=auto\n"), "%s", buf);
        ds_config_defaults(&d);
        for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n"))
                cr_assert_eq(ds_config_set_kv(&d, line, NULL, 0), 0, "%s", line);
        cr_assert_eq(memcmp(&c, &d, sizeof(c)), 0);
        cr_assert_eq(d.max_limit, 9);
}

Test(config, validate_refuses_unknown_limit_flags)
{
        struct ds_config c;
        char why[300] = "";
        ds_config_defaults(&c);
        c.limits_set = 4;
        cr_assert_eq(ds_config_validate(&c, NULL, why, sizeof(why)), -EINVAL);
        cr_assert(strstr(why, "limits_set"), "%s", why);
}

Test(config, keys_other_than_pool_size_and_the_limits_leave_the_limits_alone)
{
        struct ds_config cfg;
        ds_config_defaults(&cfg);
        cfg.pool_size = 3, cfg.soft_limit = 3, cfg.max_limit = 3; /* not marked as set */
        char why[256];
        cr_assert_eq(ds_config_set_kv(&cfg, "reuse=on", why, sizeof(why)), 0, "%s", why);
        cr_assert_eq(cfg.max_limit, 3, "an unrelated key re-derived max_limit");
        cr_assert_eq(cfg.soft_limit, 3);
        cr_assert_eq(ds_config_set_kv(&cfg, "pool_size=20", why, sizeof(why)), 0, "%s", why);
        cr_assert_eq(cfg.max_limit, 15, "pool_size moves the limits that follow it");
        cr_assert_eq(cfg.soft_limit, 10);
}

Test(config, format_prints_a_limit_that_is_not_its_share_as_its_number)
{
        struct ds_config cfg;
        ds_config_defaults(&cfg);
        cfg.pool_size = 3, cfg.soft_limit = 3, cfg.max_limit = 3; /* made by a program */
        char text[1024];
        ds_config_format(&cfg, text, sizeof(text));
        cr_assert(strstr(text, "soft_limit=3\n") && strstr(text, "max_limit=3\n"), "%s", text);
        ds_config_defaults(&cfg);
        ds_config_format(&cfg, text, sizeof(text));
        cr_assert(strstr(text, "soft_limit=auto\n") && strstr(text, "max_limit=auto\n"), "%s",
                  text);
}
