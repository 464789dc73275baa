/* test_cli.c - dyncoord driven as a black box: the real binary is run with a
 * segment of its own per test, and its exit status, stdout and stderr are
 * checked, together with the segment as the coordinator API sees it. */
#include <criterion/criterion.h>
#include <errno.h>
#include <grp.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "dynshim/config.h"
#include "dynshim/coord.h"
#include "dynshim/segment.h"
#include "cliutil.h"

static char segment[64];

static void setup(void)
{
        snprintf(segment, sizeof(segment), "/dynshim-cli-%d", (int)getpid());
        setenv("DYNSHIM_SEGMENT", segment, 1);
        ds_segment_destroy(segment, NULL, 0);
}

static void teardown(void)
{
        ds_segment_destroy(segment, NULL, 0);
}

TestSuite(cli, .init = setup, .fini = teardown, .timeout = 60);

/* ---- the segment through the C API ---- */

static ds_handle *attach_or_fail(void)
{
        ds_handle *h = NULL;
        char err[256] = "";
        int rc = ds_attach(segment, 0, &h, err, sizeof(err));
        cr_assert_eq(rc, 0, "attach: %s", err);
        return h;
}

static void read_stats(struct ds_stats *st)
{
        ds_handle *h = attach_or_fail();
        cr_assert_eq(ds_stats_get(h, st), 0);
        ds_detach(h);
}

static struct ds_config read_config(void)
{
        struct ds_config cfg;
        ds_handle *h = attach_or_fail();
        cr_assert_eq(ds_get_config(h, &cfg), 0);
        ds_detach(h);
        return cfg;
}

static int segment_exists(void)
{
        ds_handle *h = NULL;
        int rc = ds_attach(segment, 0, &h, NULL, 0);
        ds_detach(rc == 0 ? h : NULL);
        return rc != -ENOENT;
}

static void shm_path(char *buf, size_t len, const char *name)
{
        snprintf(buf, len, "/dev/shm/%s", name + 1);
}

/* ---- --init ---- */

Test(cli, init_without_options_creates_a_pool_with_the_documented_defaults)
{
        struct result r;
        DYNCOORD(r, "--init");
        assert_exit(&r, 0);
        assert_contains(r.out, segment);
        struct ds_stats st;
        read_stats(&st);
        struct ds_config d;
        struct ds_capacity cap;
        ds_config_defaults(&d);
        ds_capacity_defaults(&cap);
        cr_assert_eq(memcmp(&st.cfg, &d, sizeof(d)), 0);
        cr_assert_eq(memcmp(&st.cap, &cap, sizeof(cap)), 0);
        ds_stats_free(&st);
        char path[128];
        struct stat sb;
        shm_path(path, sizeof(path), segment);
        cr_assert_eq(stat(path, &sb), 0);
        cr_assert_eq(sb.st_mode & 07777, 0600);
}

Test(cli, every_init_option_takes_effect)
{
        struct result r;
        DYNCOORD(r, "--init", "--pool-size", "30", "--soft-limit", "4", "--max-limit", "12",
                 "--idle-timeout", "90", "--realloc-interval", "0.5", "--wait-timeout", "250ms",
                 "--warn-usage", "70", "--idle-release", "off", "--max-processes", "50",
                 "--max-leases", "100", "--max-scrapers", "10");
        assert_exit(&r, 0);
        struct ds_stats st;
        read_stats(&st);
        cr_assert_eq(st.cfg.pool_size, 30);
        cr_assert_eq(st.cfg.soft_limit, 4);
        cr_assert_eq(st.cfg.max_limit, 12);
        cr_assert_eq(st.cfg.idle_timeout_ms, 90000);
        cr_assert_eq(st.cfg.realloc_interval_ms, 500);
        cr_assert_eq(st.cfg.wait_timeout_ms, 250);
        cr_assert_eq(st.cfg.warn_usage_pct, 70);
        cr_assert_eq(st.cfg.idle_release, 0);
        cr_assert_eq(st.cap.max_procs, 50);
        cr_assert_eq(st.cap.max_leases, 100);
        cr_assert_eq(st.cap.max_scrapers, 10);
        ds_stats_free(&st);

        /* and --stats --json reports the same */
        DYNCOORD(r, "--stats", "--json");
        assert_exit(&r, 0);
        assert_json(r.out,
                    "[d[k] for k in ('pool_size', 'soft_limit', 'max_limit', 'idle_timeout_ms', "
                    "'realloc_interval_ms', 'wait_timeout_ms', 'warn_usage_pct', 'idle_release')]",
                    "[30, 4, 12, 90000, 500, 250, 70, False]");
        assert_json(r.out, "d['capacity']",
                    "{'max_processes': 50, 'max_leases': 100, 'max_scrapers': 10}");
}

Test(cli, idle_release_accepts_on_and_off_spellings)
{
        struct result r;
        DYNCOORD(r, "--init", "--idle-release", "yes");
        assert_exit(&r, 0);
        cr_assert_eq(read_config().idle_release, 1);
        DYNCOORD(r, "--init", "--force", "--idle-release", "false");
        assert_exit(&r, 0);
        cr_assert_eq(read_config().idle_release, 0);
}

Test(cli, mode_0640_gives_the_shm_file_mode_0640)
{
        struct result r;
        DYNCOORD(r, "--init", "--mode", "0640");
        assert_exit(&r, 0);
        char path[128];
        struct stat sb;
        shm_path(path, sizeof(path), segment);
        cr_assert_eq(stat(path, &sb), 0);
        cr_assert_eq(sb.st_mode & 07777, 0640, "mode %o", sb.st_mode & 07777);
        /* the umask does not narrow it */
        mode_t old = umask(077);
        DYNCOORD(r, "--init", "--force", "--mode", "660");
        umask(old);
        assert_exit(&r, 0);
        cr_assert_eq(stat(path, &sb), 0);
        cr_assert_eq(sb.st_mode & 07777, 0660, "mode %o", sb.st_mode & 07777);
}

Test(cli, group_by_name_or_number_owns_the_shm_file)
{
        struct group *g = getgrgid(1);
        cr_assert_not_null(g, "this host has no group 1");
        char name[64];
        snprintf(name, sizeof(name), "%s", g->gr_name);
        struct result r;
        DYNCOORD(r, "--init", "--group", name);
        assert_exit(&r, 0);
        char path[128];
        struct stat sb;
        shm_path(path, sizeof(path), segment);
        cr_assert_eq(stat(path, &sb), 0);
        cr_assert_eq(sb.st_gid, 1);
        DYNCOORD(r, "--init", "--force", "--group", "2");
        assert_exit(&r, 0);
        cr_assert_eq(stat(path, &sb), 0);
        cr_assert_eq(sb.st_gid, 2);
}

Test(cli, init_refuses_an_existing_segment_without_force_and_leaves_it_alone)
{
        struct result r;
        DYNCOORD(r, "--init", "--pool-size", "30");
        assert_exit(&r, 0);
        DYNCOORD(r, "--init", "--pool-size", "25");
        assert_exit(&r, 1);
        assert_contains(r.err, "already exists");
        assert_contains(r.err, "--force");
        cr_assert_eq(read_config().pool_size, 30);
}

Test(cli, init_force_recreates_the_segment)
{
        struct result r;
        DYNCOORD(r, "--init", "--pool-size", "30");
        assert_exit(&r, 0);
        struct ds_stats before, after;
        read_stats(&before);
        DYNCOORD(r, "--init", "--force", "--pool-size", "25", "--max-leases", "64");
        assert_exit(&r, 0);
        read_stats(&after);
        cr_assert_neq(before.generation, after.generation);
        cr_assert_eq(after.cfg.pool_size, 25);
        cr_assert_eq(after.cap.max_leases, 64);
        ds_stats_free(&before);
        ds_stats_free(&after);
}

struct refusal {
        const char *args[8];
        const char *message;
};

static void expect_refusals(const struct refusal *cases, size_t n, int code)
{
        for (size_t i = 0; i < n; i++) {
                struct result r;
                run_dyncoord(&r, cases[i].args);
                cr_assert_eq(r.code, code, "%s %s %s: exit %d, expected %d\n%s", cases[i].args[0],
                             cases[i].args[1] ? cases[i].args[1] : "",
                             cases[i].args[1] && cases[i].args[2] ? cases[i].args[2] : "", r.code,
                             code, r.err);
                assert_contains(r.err, cases[i].message);
                cr_assert(strncmp(r.err, "dyncoord: ", 10) == 0, "unprefixed: %s", r.err);
                if (code == 2)
                        assert_contains(r.err, "Try 'dyncoord --help'");
                cr_assert_str_eq(r.out, "", "refusal printed on stdout: %s", r.out);
        }
}

Test(cli, invalid_init_options_exit_2_naming_the_value_and_create_nothing)
{
        static const struct refusal cases[] = {
            {{"--init", "--pool-size", "abc"}, "--pool-size: 'abc' is not a whole number"},
            {{"--init", "--pool-size", "-5"}, "--pool-size: '-5' is not a whole number"},
            {{"--init", "--pool-size", ""}, "--pool-size: '' is not a whole number"},
            {{"--init", "--pool-size", "12x"}, "--pool-size: '12x' is not a whole number"},
            {{"--init", "--pool-size", "0"}, "--pool-size: '0' is out of range"},
            {{"--init", "--pool-size", "99999999999"}, "'99999999999' is not a whole number"},
            {{"--init", "--soft-limit", "0"}, "--soft-limit: '0' is out of range"},
            {{"--init", "--max-limit", "-1"}, "--max-limit: '-1' is not a whole number"},
            {{"--init", "--soft-limit", "16"}, "soft_limit 16 is above max_limit 15"},
            {{"--init", "--max-limit", "25"}, "max_limit 25 is above pool_size 20"},
            {{"--init", "--pool-size", "5", "--max-limit", "15"},
             "max_limit 15 is above pool_size 5 (max_limit was set explicitly"},
            {{"--init", "--pool-size", "200", "--max-leases", "100"},
             "pool_size 200 is above the segment's capacity of 100 leases"},
            {{"--init", "--idle-timeout", "0"}, "idle_timeout must be above 0"},
            {{"--init", "--idle-timeout", "soon"}, "--idle-timeout: 'soon' is not a duration"},
            {{"--init", "--realloc-interval", "1.2345"},
             "--realloc-interval: '1.2345' is not a duration"},
            {{"--init", "--wait-timeout", "5m"}, "--wait-timeout: '5m' is not a duration"},
            {{"--init", "--wait-timeout", "-1"}, "--wait-timeout: '-1' is not a duration"},
            {{"--init", "--warn-usage", "101"}, "--warn-usage: '101' is not a percentage"},
            {{"--init", "--warn-usage", "0"}, "--warn-usage: '0' is not a percentage"},
            {{"--init", "--idle-release", "maybe"}, "--idle-release: 'maybe' is not on or off"},
            {{"--init", "--mode", "999"}, "--mode: '999' is not an octal"},
            {{"--init", "--mode", "rw"}, "--mode: 'rw' is not an octal"},
            {{"--init", "--mode", "4755"}, "--mode: '4755' has bits beyond 0777"},
            {{"--init", "--mode", "77777777777777777777"}, "has bits beyond 0777"},
            {{"--init", "--mode", "0400"}, "--mode: '0400' does not let the owner"},
            {{"--init", "--group", "no-such-group-dynshim"},
             "--group: there is no group named 'no-such-group-dynshim'"},
            {{"--init", "--max-processes", "0"}, "--max-processes: '0' is out of range"},
            {{"--init", "--max-leases", "70000"}, "--max-leases: '70000' is out of range"},
            {{"--init", "--max-scrapers", "5000"}, "--max-scrapers: '5000' is out of range"},
            {{"--init", "--max-scrapers", "many"}, "--max-scrapers: 'many' is not a whole"},
            {{"--init", "--pool-size"}, "--pool-size needs a value"},
        };
        expect_refusals(cases, sizeof(cases) / sizeof(cases[0]), 2);
        cr_assert(!segment_exists(), "a refused --init created the segment");
}

Test(cli, usage_errors_exit_2_with_the_reason_and_a_hint)
{
        static const struct refusal cases[] = {
            {{NULL}, "no command given"},
            {{"--segment", "/dynshim-cli-unused"}, "no command given"},
            {{"--init", "--stats"}, "two commands given: --init and --stats"},
            {{"--stats", "--health"}, "two commands given"},
            {{"--bogus"}, "unknown option '--bogus'"},
            {{"--stats", "-x"}, "unknown option '-x'"},
            {{"--max", "3", "--init"}, "option '--max' is ambiguous"},
            {{"--stats=now"}, "option '--stats' takes no value"},
            {{"--stats", "extra"}, "unexpected argument 'extra' for --stats"},
            {{"--init", "--json"}, "--json only applies to --stats"},
            {{"--stats", "--force"}, "--force only applies to --init"},
            {{"--stats", "--pool-size", "30"}, "--pool-size only applies to --init"},
            {{"--set", "pool_size=30", "--mode", "0600"}, "--mode only applies to --init"},
            {{"--set"}, "--set needs at least one KEY=VALUE pair"},
            {{"--stats", "--segment"}, "--segment needs a value"},
            {{"--stats", "--segment", "no-slash"}, "segment name 'no-slash' is invalid"},
            {{"--init", "--segment", "/a/b"}, "segment name '/a/b' is invalid"},
        };
        expect_refusals(cases, sizeof(cases) / sizeof(cases[0]), 2);
        cr_assert(!segment_exists());
}

Test(cli, help_prints_usage_on_stdout_and_exits_0)
{
        struct result r;
        DYNCOORD(r, "--help");
        assert_exit(&r, 0);
        cr_assert_str_eq(r.err, "");
        static const char *const documented[] = {"--segment",
                                                 "--init",
                                                 "--set",
                                                 "--stats",
                                                 "--json",
                                                 "--health",
                                                 "--destroy",
                                                 "--version",
                                                 "--pool-size",
                                                 "--soft-limit",
                                                 "--max-limit",
                                                 "--idle-timeout",
                                                 "--realloc-interval",
                                                 "--wait-timeout",
                                                 "--warn-usage",
                                                 "--idle-release",
                                                 "--mode",
                                                 "--group",
                                                 "--force",
                                                 "--max-processes",
                                                 "--max-leases",
                                                 "--max-scrapers"};
        for (size_t i = 0; i < sizeof(documented) / sizeof(documented[0]); i++)
                assert_contains(r.out, documented[i]);
        DYNCOORD(r, "-h");
        assert_exit(&r, 0);
        assert_contains(r.out, "Usage: dyncoord");
}

Test(cli, version_prints_the_version_and_exits_0)
{
        struct result r;
        DYNCOORD(r, "--version");
        assert_exit(&r, 0);
        assert_contains(r.out, DS_VERSION_STRING);
        cr_assert_str_eq(r.err, "");
}

Test(cli, segment_option_overrides_the_environment)
{
        char other[80], path[128];
        struct stat sb;
        snprintf(other, sizeof(other), "%s-other", segment);
        struct result r;
        DYNCOORD(r, "--segment", other, "--init", "--pool-size", "33");
        assert_exit(&r, 0);
        shm_path(path, sizeof(path), other);
        cr_assert_eq(stat(path, &sb), 0);
        cr_assert(!segment_exists(), "$DYNSHIM_SEGMENT was used instead of --segment");
        DYNCOORD(r, "--stats", "--json", "--segment", other);
        assert_exit(&r, 0);
        assert_json(r.out, "d['pool_size']", "33");
        DYNCOORD(r, "--destroy", "--segment", other);
        assert_exit(&r, 0);
        cr_assert_neq(stat(path, &sb), 0);
}

/* ---- --set ---- */

Test(cli, set_changes_a_live_pool_seen_by_an_attached_process)
{
        init_or_fail(NULL);
        ds_handle *h = attach_or_fail();
        struct result r;
        DYNCOORD(r, "--set", "pool_size=30", "max_limit=20", "soft_limit=5", "idle_timeout=2.5",
                 "realloc_interval=10", "wait_timeout=500ms", "warn_usage=90", "idle_release=off",
                 "reuse=on", "reuse_timeout=2");
        assert_exit(&r, 0);
        assert_contains(r.out, "pool_size=30");
        struct ds_config cfg;
        cr_assert_eq(ds_get_config(h, &cfg), 0);
        cr_assert_eq(cfg.pool_size, 30);
        cr_assert_eq(cfg.max_limit, 20);
        cr_assert_eq(cfg.soft_limit, 5);
        cr_assert_eq(cfg.idle_timeout_ms, 2500);
        cr_assert_eq(cfg.realloc_interval_ms, 10000);
        cr_assert_eq(cfg.wait_timeout_ms, 500);
        cr_assert_eq(cfg.warn_usage_pct, 90);
        cr_assert_eq(cfg.idle_release, 0);
        cr_assert_eq(cfg.reuse, 1);
        cr_assert_eq(cfg.reuse_timeout_ms, 2000);
        /* keys not named keep their value; --set=KEY=VALUE works too */
        DYNCOORD(r, "--set=warn_usage=60");
        assert_exit(&r, 0);
        cr_assert_eq(ds_get_config(h, &cfg), 0);
        cr_assert_eq(cfg.warn_usage_pct, 60);
        cr_assert_eq(cfg.pool_size, 30);
        cr_assert_eq(cfg.idle_timeout_ms, 2500);
        ds_detach(h);
}

Test(cli, refused_set_changes_nothing_and_exits_2_with_the_reason)
{
        init_or_fail((const char *const[]){"--max-leases", "100", NULL});
        struct ds_config before = read_config();
        static const struct refusal cases[] = {
            {{"--set", "pool_size=abc"}, "pool_size: 'abc' is not a whole number"},
            {{"--set", "pool_size=0"}, "pool_size: '0' is not a whole number from 1"},
            {{"--set", "pool_size=-3"}, "pool_size: '-3' is not a whole number"},
            {{"--set", "soft_limit=16"}, "soft_limit 16 is above max_limit 15"},
            {{"--set", "max_limit=25"}, "max_limit 25 is above pool_size 20"},
            {{"--set", "pool_size=200", "max_limit=20"},
             "pool_size 200 is above the segment's capacity of 100 leases"},
            {{"--set", "colour=blue"}, "unknown key 'colour'"},
            {{"--set", "pool_size"}, "'pool_size' is not KEY=VALUE"},
            {{"--set", "=5"}, "'=5' is not KEY=VALUE"},
            {{"--set", "pool_size=30", "soft_limit=x"}, "soft_limit: 'x' is not a whole number"},
            {{"--set", "pool_size=30", "max_limit=30", "soft_limit=31"},
             "soft_limit 31 is above max_limit 30"},
            {{"--set", "idle_timeout=0"}, "idle_timeout must be above 0"},
            {{"--set", "wait_timeout=forever"}, "wait_timeout: 'forever' is not a duration"},
            {{"--set", "warn_usage=150"}, "warn_usage: '150' is not a percentage"},
            {{"--set", "idle_release=maybe"}, "idle_release: 'maybe' is not on or off"},
            {{"--set", "reuse_timeout=0"}, "reuse_timeout must be above 0"},
        };
        expect_refusals(cases, sizeof(cases) / sizeof(cases[0]), 2);
        struct ds_config after = read_config();
        cr_assert_eq(memcmp(&before, &after, sizeof(before)), 0,
                     "a refused --set changed the configuration");
}

Test(cli, set_on_a_missing_segment_exits_1)
{
        struct result r;
        DYNCOORD(r, "--set", "pool_size=30");
        assert_exit(&r, 1);
        assert_contains(r.err, "does not exist");
        cr_assert(!segment_exists(), "--set created a segment");
}

Test(cli, set_shrinking_below_usage_keeps_slots_and_stops_new_grants)
{
        init_or_fail(NULL);
        struct client a = client_start("shrink", 3, 1000);
        for (int i = 0; i < 3; i++)
                cr_assert_eq(client_result(&a), 'y');
        struct result r;
        DYNCOORD(r, "--set", "pool_size=2", "max_limit=2", "soft_limit=1");
        assert_exit(&r, 0);
        DYNCOORD(r, "--stats", "--json");
        assert_exit(&r, 0);
        assert_json(r.out, "(d['pool_size'], d['held'])", "(2, 3)");
        DYNCOORD(r, "--health");
        assert_exit(&r, 0);
        /* a new connect of another scraper is not granted over the new cap */
        struct client b = client_start("late", 1, 200);
        cr_assert_eq(client_result(&b), 't');
        client_stop(&b);
        client_stop(&a);
}

/* ---- --stats ---- */

/* Finds the row of scraper `name` in the --wide table and reads its columns. */
struct row {
        char state[16];
        unsigned held, limit, waiting, procs;
        unsigned long long connects, releases, idle_releases, surplus_releases, reconnects,
            timeouts;
        double wait_mean, wait_max;
};

static int find_row(const char *table, const char *name, struct row *row)
{
        size_t n = strlen(name);
        for (const char *line = table; line && *line; line = strchr(line, '\n'), line += !!line) {
                if (strncmp(line, name, n) != 0 || line[n] != ' ')
                        continue;
                return sscanf(line + n, "%15s %u %u %u %u %llu %llu %llu %llu %llu %llu %lf %lf",
                              row->state, &row->held, &row->limit, &row->waiting, &row->procs,
                              &row->connects, &row->releases, &row->idle_releases,
                              &row->surplus_releases, &row->reconnects, &row->timeouts,
                              &row->wait_mean, &row->wait_max) == 13;
        }
        return 0;
}

Test(cli, stats_shows_a_scraper_after_a_child_acquired_slots)
{
        init_or_fail(NULL);
        struct result r;
        DYNCOORD(r, "--stats");
        assert_exit(&r, 0);
        assert_contains(r.out, "pool 0/20 in use");
        assert_contains(r.out, "no scrapers yet");

        struct client c = client_start("crawler", 2, 1000);
        cr_assert_eq(client_result(&c), 'y');
        cr_assert_eq(client_result(&c), 'y');
        DYNCOORD(r, "--stats", "--wide");
        assert_exit(&r, 0);
        assert_contains(r.out, "pool 2/20 in use (10%), 0 waiting, 1 process, 1 active scraper");
        assert_contains(r.out, "SCRAPER");
        struct row row;
        cr_assert(find_row(r.out, "crawler", &row), "no row for crawler in:\n%s", r.out);
        cr_assert_str_eq(row.state, "active");
        cr_assert_eq(row.held, 2);
        cr_assert_eq(row.limit, 15);
        cr_assert_eq(row.waiting, 0);
        cr_assert_eq(row.procs, 1);
        cr_assert_eq(row.connects, 2);
        cr_assert_eq(row.releases, 0);
        cr_assert_eq(row.timeouts, 0);

        DYNCOORD(r, "--stats", "--json");
        assert_exit(&r, 0);
        assert_json(
            r.out,
            "[(s['name'], s['state'], s['held'], s['limit'], s['connects'], s['processes']) "
            "for s in d['scrapers']]",
            "[('crawler', 'active', 2, 15, 2, 1)]");
        assert_json(r.out, "(d['held'], d['processes'], d['active_scrapers'])", "(2, 1, 1)");

        client_stop(&c);
        DYNCOORD(r, "--stats", "--json");
        assert_exit(&r, 0);
        assert_json(r.out, "(d['held'], d['scrapers'][0]['releases'])", "(0, 2)");
}

Test(cli, stats_json_has_every_documented_key_with_its_type)
{
        init_or_fail(NULL);
        struct client c = client_start("keys", 1, 1000);
        cr_assert_eq(client_result(&c), 'y');
        struct result r;
        DYNCOORD(r, "--stats", "--json");
        assert_exit(&r, 0);
        cr_assert_eq(strchr(r.out, '\n'), r.out + strlen(r.out) - 1, "not one line: %s", r.out);
        assert_json(
            r.out,
            "sorted(k for k, t in {'pool_size': int, 'held': int, 'waiting': int, "
            "'scrapers': list, 'soft_limit': int, 'max_limit': int, 'idle_timeout_ms': int, "
            "'realloc_interval_ms': int, 'wait_timeout_ms': int, 'warn_usage_pct': int, "
            "'idle_release': bool, 'processes': int, 'active_scrapers': int, "
            "'capacity': dict, 'segment_size': int, 'grants': int, 'peak_held': int, "
            "'reclaimed_processes': int, 'repairs': int, 'usage_pct': int, "
            "'usage_warning': bool, 'segment': str, 'version': str}.items() "
            "if not isinstance(d.get(k), t))",
            "[]");
        assert_json(r.out,
                    "sorted(k for k, t in {'name': str, 'state': str, 'held': int, 'limit': int, "
                    "'waiting': int, 'connects': int, 'timeouts': int, 'idle_releases': int, "
                    "'releases': int, 'surplus_releases': int, 'reclaimed': int, 'processes': int, "
                    "'waits': int, 'wait_ms_mean': float, 'wait_ms_max': float}.items() "
                    "if not isinstance(d['scrapers'][0].get(k), t))",
                    "[]");
        assert_json(r.out, "d['segment']", segment);
        client_stop(&c);
}

Test(cli, stats_json_escapes_quotes_backslashes_control_characters_and_keeps_utf8)
{
        init_or_fail(NULL);
        /* quote, backslash, tab, newline, 0x01, DEL, e-acute, check mark */
        struct client c = client_start("we\"ird\\ na\tme\n\x01\x7f\xc3\xa9\xe2\x9c\x93", 1, 1000);
        cr_assert_eq(client_result(&c), 'y');
        /* 62 bytes + a two-byte character: truncation to 63 cuts it in half */
        char longname[80];
        memset(longname, 'a', 62);
        memcpy(longname + 62, "\xc3\xa9", 3);
        struct client d = client_start(longname, 1, 1000);
        cr_assert_eq(client_result(&d), 'y');
        struct result r;
        DYNCOORD(r, "--stats", "--json");
        assert_exit(&r, 0);
        assert_json(r.out, "ascii(sorted(s['name'] for s in d['scrapers']))",
                    "['aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\\ufffd', "
                    "'we\"ird\\\\ na\\tme\\n\\x01\\x7f\\xe9\\u2713']");
        /* the table shows the control characters escaped, never raw */
        DYNCOORD(r, "--stats");
        assert_exit(&r, 0);
        assert_contains(r.out, "we\"ird\\x5c na\\x09me\\x0a\\x01\\x7f\xc3\xa9\xe2\x9c\x93 ");
        cr_assert_null(strchr(r.out, '\x01'));
        cr_assert_null(strchr(r.out, '\t'));
        client_stop(&d);
        client_stop(&c);
}

Test(cli, stats_reports_waiters_timeouts_and_wait_times)
{
        init_or_fail((const char *const[]){"--pool-size", "1", "--soft-limit", "1", "--max-limit",
                                           "1", "--wait-timeout", "0.3", NULL});
        struct client a = client_start("holder", 1, 1000);
        cr_assert_eq(client_result(&a), 'y');
        /* b waits up to 5 s: visible as waiting while it does */
        struct client b = client_start("waiter", 1, 5000);
        struct result r;
        int seen = 0;
        for (int i = 0; i < 200 && !seen; i++) {
                DYNCOORD(r, "--stats", "--json");
                assert_exit(&r, 0);
                char got[64];
                json_eval(r.out, "d['waiting']", got, sizeof(got));
                seen = strcmp(got, "1") == 0;
                if (!seen)
                        sleep_ms(10);
        }
        cr_assert(seen, "the waiter never showed up in --stats");
        assert_json(r.out, "[(s['name'], s['state'], s['waiting']) for s in d['scrapers']]",
                    "[('holder', 'active', 0), ('waiter', 'active', 1)]");
        sleep_ms(100);
        client_stop(&a); /* frees the slot: b gets it */
        cr_assert_eq(client_result(&b), 'y');
        /* c gives up after the pool's wait_timeout (0.3 s) */
        struct client c = client_start("quitter", 1, UINT32_MAX);
        cr_assert_eq(client_result(&c), 't');
        DYNCOORD(r, "--stats", "--wide");
        assert_exit(&r, 0);
        struct row row;
        cr_assert(find_row(r.out, "quitter", &row), "no row for quitter in:\n%s", r.out);
        cr_assert_eq(row.timeouts, 1);
        cr_assert_eq(row.connects, 0);
        cr_assert_geq(row.wait_max, 250.0, "wait max %.3f ms", row.wait_max);
        cr_assert_lt(row.wait_max, 2000.0, "wait max %.3f ms", row.wait_max);
        cr_assert(find_row(r.out, "waiter", &row), "no row for waiter in:\n%s", r.out);
        cr_assert_eq(row.connects, 1);
        cr_assert_geq(row.wait_mean, 90.0, "wait mean %.3f ms", row.wait_mean);
        cr_assert_eq(row.wait_mean, row.wait_max); /* one wait: mean is max */
        client_stop(&c);
        client_stop(&b);
}

Test(cli, stats_shows_a_scraper_idle_after_idle_timeout)
{
        init_or_fail((const char *const[]){"--idle-timeout", "1", NULL});
        struct client c = client_start("sleepy", 1, 1000);
        cr_assert_eq(client_result(&c), 'y');
        struct result r;
        DYNCOORD(r, "--stats", "--json");
        assert_json(r.out, "d['scrapers'][0]['state']", "active");
        sleep_ms(1300);
        DYNCOORD(r, "--stats", "--json");
        assert_exit(&r, 0);
        assert_json(r.out, "(d['scrapers'][0]['state'], d['active_scrapers'])", "('idle', 0)");
        client_stop(&c);
}

Test(cli, stats_warns_when_usage_is_above_warn_usage)
{
        init_or_fail((const char *const[]){"--pool-size", "4", "--soft-limit", "4", "--max-limit",
                                           "4", "--warn-usage", "50", NULL});
        struct client c = client_start("busy", 3, 1000);
        for (int i = 0; i < 3; i++)
                cr_assert_eq(client_result(&c), 'y');
        struct result r;
        DYNCOORD(r, "--stats");
        assert_exit(&r, 0);
        assert_contains(r.out, "warning: usage 75% is above warn_usage 50%");
        DYNCOORD(r, "--stats", "--json");
        assert_json(r.out, "(d['usage_pct'], d['usage_warning'])", "(75, True)");
        client_stop(&c);
}

/* ---- per-scraper overrides: --set scraper.NAME.KEY=VALUE, --unset ---- */

/* Every scraper's overrides as --stats --json shows them: {name: overrides}. */
#define OVERRIDES_OF "{s['name']: s['overrides'] for s in d['scrapers']}"

Test(cli, set_applies_scraper_overrides_with_pool_keys_in_one_change)
{
        init_or_fail(NULL);
        struct result r;
        DYNCOORD(r, "--set", "pool_size=30", "scraper.viewer.max=5", "scraper.viewer.reserve=2",
                 "scraper.batch.weight=0.5", "scraper.viewer.idle_release=off");
        assert_exit(&r, 0);
        assert_contains(r.out, "pool_size=30");
        assert_contains(r.out, "scraper viewer: max=5 reserve=2 idle_release=off (limit now 5)");
        assert_contains(r.out, "scraper batch: weight=0.5");
        cr_assert_eq(read_config().pool_size, 30);
        DYNCOORD(r, "--stats", "--json");
        assert_exit(&r, 0);
        assert_json(r.out, OVERRIDES_OF,
                    "{'batch': {'weight': 0.5}, "
                    "'viewer': {'max': 5, 'reserve': 2, 'idle_release': False}}");
        assert_json(r.out,
                    "[(s['name'], s['limit'], s['weight'], s['reserve_claimed'], "
                    "s['scraper_idle_release']) for s in d['scrapers']]",
                    "[('batch', 22, 0.5, 0, True), ('viewer', 5, 1.0, 2, False)]");
        /* the existing keys are still there */
        assert_json(r.out,
                    "sorted(k for k in d['scrapers'][0] "
                    "if k in ('connects', 'held', 'idle_releases', 'limit'))",
                    "['connects', 'held', 'idle_releases', 'limit']");
        /* a scraper named this way keeps its settings when it runs */
        struct client c = client_start("viewer", 6, 200);
        for (int i = 0; i < 5; i++)
                cr_assert_eq(client_result(&c), 'y');
        cr_assert_eq(client_result(&c), 't', "a sixth slot above max=5");
        DYNCOORD(r, "--stats", "--wide");
        assert_exit(&r, 0);
        assert_contains(r.out, "OVERRIDES");
        struct row row;
        cr_assert(find_row(r.out, "viewer", &row), "no row for viewer in:\n%s", r.out);
        cr_assert_eq(row.held, 5);
        cr_assert_eq(row.limit, 5);
        assert_contains(r.out, "max=5 reserve=2 idle_release=off\n");
        DYNCOORD(r, "--stats", "--prometheus");
        assert_exit(&r, 0);
        char line[256];
        snprintf(line, sizeof(line), "dynshim_scraper_max{segment=\"%s\",scraper=\"viewer\"} 5\n",
                 segment);
        assert_contains(r.out, line);
        snprintf(line, sizeof(line),
                 "dynshim_scraper_weight{segment=\"%s\",scraper=\"batch\"} 0.5\n", segment);
        assert_contains(r.out, line);
        snprintf(line, sizeof(line),
                 "dynshim_scraper_reserve{segment=\"%s\",scraper=\"viewer\"} 2\n", segment);
        assert_contains(r.out, line);
        snprintf(line, sizeof(line),
                 "dynshim_scraper_idle_release{segment=\"%s\",scraper=\"viewer\"} 0\n", segment);
        assert_contains(r.out, line);
        snprintf(line, sizeof(line), "dynshim_scraper_max{segment=\"%s\",scraper=\"batch\"}",
                 segment);
        cr_assert_null(strstr(r.out, line), "batch has no cap:\n%s", r.out);
        client_stop(&c);
}

Test(cli, unset_removes_one_override_or_all_of_a_scrapers)
{
        init_or_fail(NULL);
        struct result r;
        DYNCOORD(r, "--set", "scraper.viewer.max=5", "scraper.viewer.reserve=2",
                 "scraper.viewer.weight=3");
        assert_exit(&r, 0);
        DYNCOORD(r, "--unset", "scraper.viewer.max");
        assert_exit(&r, 0);
        assert_contains(r.out, "scraper viewer: reserve=2 weight=3");
        DYNCOORD(r, "--stats", "--json");
        assert_json(r.out, OVERRIDES_OF, "{'viewer': {'reserve': 2, 'weight': 3.0}}");
        /* --unset=KEY works too; a name with dots is everything before the last one */
        DYNCOORD(r, "--set", "scraper.app.v2.weight=0.25");
        assert_exit(&r, 0);
        DYNCOORD(r, "--unset=scraper.viewer");
        assert_exit(&r, 0);
        DYNCOORD(r, "--stats", "--json");
        assert_json(r.out, OVERRIDES_OF, "{'app.v2': {'weight': 0.25}, 'viewer': {}}");
        DYNCOORD(r, "--unset", "scraper.app.v2.weight", "scraper.nobody");
        assert_exit(&r, 0);
        DYNCOORD(r, "--stats", "--json");
        assert_json(r.out, OVERRIDES_OF, "{'app.v2': {}, 'viewer': {}}");
}

Test(cli, refused_scraper_overrides_change_nothing_and_exit_2_with_the_reason)
{
        init_or_fail(NULL);
        struct result r;
        DYNCOORD(r, "--set", "scraper.viewer.reserve=4", "scraper.viewer.max=6");
        assert_exit(&r, 0);
        struct ds_config before = read_config();
        static const struct refusal cases[] = {
            {{"--set", "scraper.batch.reserve=16"},
             "the reserves of all scrapers would add up to 20, which must stay below pool_size 20"},
            {{"--set", "pool_size=12", "max_limit=12", "soft_limit=4", "scraper.b.reserve=8"},
             "would add up to 12, which must stay below pool_size 12"},
            {{"--set", "scraper.viewer.max=3"}, "scraper \"viewer\": reserve 4 is above its max 3"},
            {{"--set", "scraper.viewer.max=0"},
             "scraper.viewer.max: '0' is not a whole number from 1"},
            {{"--set", "scraper.viewer.reserve=-1"},
             "scraper.viewer.reserve: '-1' is not a whole number"},
            {{"--set", "scraper.viewer.weight=0"},
             "scraper.viewer.weight: '0' is not a number from 0.001 to 1000"},
            {{"--set", "scraper.viewer.weight=heavy"}, "'heavy' is not a number from 0.001"},
            {{"--set", "scraper.viewer.weight=0.0005"}, "'0.0005' is not a number from 0.001"},
            {{"--set", "scraper.viewer.idle_release=sometimes"}, "'sometimes' is not on or off"},
            {{"--set", "scraper.viewer.colour=red"},
             "'scraper.viewer.colour' does not end in a scraper setting"},
            {{"--set", "scraper.viewer=5"}, "'scraper.viewer' does not end in a scraper setting"},
            {{"--set", "scraper..max=5"}, "'scraper..max' names no scraper"},
            {{"--set",
              "scraper.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.max=1"},
             "is longer than 63 bytes"},
            {{"--unset", "pool_size"}, "'pool_size' cannot be unset"},
            {{"--unset"}, "--unset needs at least one scraper.NAME"},
            {{"--unset", "scraper."}, "names no scraper"},
            {{"--unset", "scraper.viewer.max", "--set", "pool_size=5"}, "two commands given"},
        };
        expect_refusals(cases, sizeof(cases) / sizeof(cases[0]), 2);
        struct ds_config after = read_config();
        cr_assert_eq(memcmp(&before, &after, sizeof(before)), 0,
                     "a refused --set changed the configuration");
        DYNCOORD(r, "--stats", "--json");
        assert_json(r.out, OVERRIDES_OF, "{'viewer': {'max': 6, 'reserve': 4}}");
}

Test(cli, set_of_a_scraper_on_a_missing_segment_exits_1)
{
        struct result r;
        DYNCOORD(r, "--set", "scraper.viewer.max=5");
        assert_exit(&r, 1);
        assert_contains(r.err, "does not exist");
        DYNCOORD(r, "--unset", "scraper.viewer");
        assert_exit(&r, 1);
        cr_assert(!segment_exists(), "--set created a segment");
}

/* ---- --health, --destroy and unusable segments ---- */

Test(cli, health_of_a_good_segment_exits_0)
{
        init_or_fail(NULL);
        struct client c = client_start("fine", 2, 1000);
        cr_assert_eq(client_result(&c), 'y');
        cr_assert_eq(client_result(&c), 'y');
        struct result r;
        DYNCOORD(r, "--health");
        assert_exit(&r, 0);
        assert_contains(r.out, "healthy");
        assert_contains(r.out, "pool 2/20 in use");
        cr_assert_str_eq(r.err, "");
        client_stop(&c);
}

static void corrupt_header(void (*corrupt)(struct ds_header *))
{
        ds_handle *h = attach_or_fail();
        corrupt(ds_handle_header(h));
        ds_detach(h);
}

static void bad_magic(struct ds_header *hdr)
{
        hdr->magic = UINT64_C(0x0badc0de0badc0de);
}

static void bad_version(struct ds_header *hdr)
{
        hdr->layout_version = 99;
}

static void other_pid_namespace(struct ds_header *hdr)
{
        hdr->pidns_ino += 1;
}

static void bad_counter(struct ds_header *hdr)
{
        hdr->held = 7;
}

static void expect_unhealthy(void (*corrupt)(struct ds_header *), const char *message)
{
        init_or_fail(NULL);
        corrupt_header(corrupt);
        struct result r;
        DYNCOORD(r, "--health");
        assert_exit(&r, 1);
        assert_contains(r.err, "unhealthy");
        assert_contains(r.err, message);
        cr_assert_null(strstr(r.out, "healthy"), "%s", r.out);
}

Test(cli, health_names_a_bad_magic_and_exits_1)
{
        expect_unhealthy(bad_magic, "bad magic 0x0badc0de0badc0de");
}

Test(cli, health_names_another_layout_version_and_exits_1)
{
        expect_unhealthy(bad_version, "layout version 99");
}

Test(cli, health_refuses_a_segment_of_another_pid_namespace)
{
        expect_unhealthy(other_pid_namespace, "another PID namespace");
}

Test(cli, health_reports_a_counter_that_disagrees_with_the_lease_table)
{
        expect_unhealthy(bad_counter, "pool counters say 7 held/0 waiting, the lease table 0/0");
}

Test(cli, health_refuses_a_segment_owned_by_another_user)
{
        init_or_fail(NULL);
        char path[128];
        shm_path(path, sizeof(path), segment);
        cr_assert_eq(chown(path, 65534, (gid_t)-1), 0, "chown: %s", strerror(errno));
        struct result r;
        DYNCOORD(r, "--health");
        assert_exit(&r, 1);
        assert_contains(r.err, "is owned by uid 65534");
        DYNCOORD(r, "--stats");
        assert_exit(&r, 1);
        assert_contains(r.err, "is owned by uid 65534");
}

Test(cli, health_names_a_segment_of_the_wrong_size)
{
        init_or_fail(NULL);
        struct ds_stats st;
        read_stats(&st);
        char path[128];
        shm_path(path, sizeof(path), segment);
        cr_assert_eq(truncate(path, (off_t)st.segment_size + 4096), 0);
        struct result r;
        DYNCOORD(r, "--health");
        assert_exit(&r, 1);
        char expected[128];
        snprintf(expected, sizeof(expected), "is %zu bytes and says %zu", st.segment_size + 4096,
                 st.segment_size);
        assert_contains(r.err, expected);
        ds_stats_free(&st);
}

Test(cli, health_of_a_missing_segment_exits_1)
{
        struct result r;
        DYNCOORD(r, "--health");
        assert_exit(&r, 1);
        assert_contains(r.err, "does not exist");
        cr_assert(!segment_exists(), "--health created a segment");
}

Test(cli, stats_and_set_of_a_corrupt_segment_exit_1_and_force_recreates_it)
{
        init_or_fail(NULL);
        corrupt_header(bad_magic);
        struct result r;
        DYNCOORD(r, "--stats");
        assert_exit(&r, 1);
        assert_contains(r.err, "bad magic");
        DYNCOORD(r, "--stats", "--json");
        assert_exit(&r, 1);
        cr_assert_str_eq(r.out, "");
        DYNCOORD(r, "--set", "pool_size=30", "max_limit=20");
        assert_exit(&r, 1);
        assert_contains(r.err, "bad magic");
        DYNCOORD(r, "--init");
        assert_exit(&r, 1);
        assert_contains(r.err, "already exists");
        DYNCOORD(r, "--init", "--force", "--pool-size", "22");
        assert_exit(&r, 0);
        DYNCOORD(r, "--health");
        assert_exit(&r, 0);
        cr_assert_eq(read_config().pool_size, 22);
}

Test(cli, destroy_removes_the_segment_and_stats_then_exits_1)
{
        init_or_fail(NULL);
        char path[128];
        struct stat sb;
        shm_path(path, sizeof(path), segment);
        struct result r;
        DYNCOORD(r, "--destroy");
        assert_exit(&r, 0);
        cr_assert_neq(stat(path, &sb), 0);
        DYNCOORD(r, "--stats");
        assert_exit(&r, 1);
        assert_contains(r.err, "does not exist");
        DYNCOORD(r, "--destroy");
        assert_exit(&r, 1);
        assert_contains(r.err, "does not exist");
}

Test(cli, destroy_removes_a_corrupt_segment)
{
        init_or_fail(NULL);
        corrupt_header(bad_version);
        struct result r;
        DYNCOORD(r, "--destroy");
        assert_exit(&r, 0);
        cr_assert(!segment_exists());
}

/* ---- limits that follow pool_size ---- */

Test(cli, init_with_only_a_pool_size_derives_the_limits_and_set_moves_them)
{
        struct result r;
        DYNCOORD(r, "--init", "--pool-size", "6");
        assert_exit(&r, 0);
        assert_contains(r.out, "soft_limit=3 (follows pool_size) max_limit=4 (follows pool_size)");
        struct ds_config c = read_config();
        cr_assert_eq(c.soft_limit, 3);
        cr_assert_eq(c.max_limit, 4);
        cr_assert_eq(c.limits_set, 0);
        DYNCOORD(r, "--stats");
        assert_exit(&r, 0);
        assert_contains(r.out, "soft_limit 3 (50 % of pool_size), max_limit 4 (75 % of pool_size)");
        DYNCOORD(r, "--stats", "--json");
        assert_json(r.out,
                    "(d['soft_limit'], d['max_limit'], d['soft_limit_derived'], "
                    "d['max_limit_derived'])",
                    "(3, 4, True, True)");
        /* a new pool_size carries them along */
        DYNCOORD(r, "--set", "pool_size=12");
        assert_exit(&r, 0);
        assert_contains(r.out, "pool_size=12 soft_limit=6 (follows pool_size) max_limit=9 "
                               "(follows pool_size)");
        c = read_config();
        cr_assert_eq(c.soft_limit, 6);
        cr_assert_eq(c.max_limit, 9);
        /* 20 keeps the documented 15 and 10 */
        DYNCOORD(r, "--set", "pool_size=20");
        assert_exit(&r, 0);
        c = read_config();
        cr_assert_eq(c.soft_limit, 10);
        cr_assert_eq(c.max_limit, 15);
}

Test(cli, explicit_limits_stay_and_a_pool_below_them_is_refused_naming_them)
{
        struct result r;
        DYNCOORD(r, "--init", "--pool-size", "6", "--max-limit", "5");
        assert_exit(&r, 0);
        struct ds_config c = read_config();
        cr_assert_eq(c.max_limit, 5);
        cr_assert_eq(c.soft_limit, 3);
        cr_assert_eq(c.limits_set, DS_LIMIT_MAX_SET);
        DYNCOORD(r, "--set", "pool_size=30");
        assert_exit(&r, 0);
        assert_contains(r.out, "soft_limit=5 (follows max_limit) max_limit=5 ");
        c = read_config();
        cr_assert_eq(c.max_limit, 5, "an explicit max_limit stays as set");
        cr_assert_eq(c.soft_limit, 5, "the derived soft_limit stays within max_limit");
        DYNCOORD(r, "--stats");
        assert_contains(r.out, "soft_limit 5 (follows max_limit), max_limit 5 (set)");
        struct ds_config before = read_config();
        DYNCOORD(r, "--set", "pool_size=4");
        assert_exit(&r, 2);
        assert_contains(r.err, "max_limit 5 is above pool_size 4 (max_limit was set explicitly: "
                               "lower it too, or set max_limit=auto");
        struct ds_config after = read_config();
        cr_assert_eq(memcmp(&before, &after, sizeof(before)), 0);
        /* handed back to pool_size, the same change goes through */
        DYNCOORD(r, "--set", "pool_size=4", "max_limit=auto");
        assert_exit(&r, 0);
        c = read_config();
        cr_assert_eq(c.max_limit, 3);
        cr_assert_eq(c.soft_limit, 2);
        cr_assert_eq(c.limits_set, 0);
        DYNCOORD(r, "--unset", "max_limit");
        assert_exit(&r, 2);
        assert_contains(r.err, "--set max_limit=auto lets it follow pool_size again");
        /* --init refuses an explicit limit above the pool, naming it */
        DYNCOORD(r, "--init", "--force", "--pool-size", "6", "--soft-limit", "5");
        assert_exit(&r, 2);
        assert_contains(r.err, "soft_limit 5 is above max_limit 4 (max_limit follows pool_size");
}

/* ---- the default --stats view ---- */

Test(cli, stats_default_view_fits_100_columns_with_the_main_columns_and_wide_has_all)
{
        init_or_fail(NULL);
        /* a long name with escapes and a two-byte character, three scrapers */
        char longname[64];
        memset(longname, 'n', 60);
        memcpy(longname + 60, "\xc3\xa9", 3);
        struct client a = client_start("crawler", 2, 1000);
        struct client b = client_start(longname, 1, 1000);
        struct client c = client_start("tab\there", 1, 1000);
        cr_assert_eq(client_result(&a), 'y');
        cr_assert_eq(client_result(&a), 'y');
        cr_assert_eq(client_result(&b), 'y');
        cr_assert_eq(client_result(&c), 'y');
        inflate_counters(segment, "crawler");
        struct result r;
        DYNCOORD(r, "--set", "scraper.crawler.max=6", "scraper.crawler.reserve=1");
        assert_exit(&r, 0);
        DYNCOORD(r, "--stats");
        assert_exit(&r, 0);
        int at;
        size_t w = widest_line(r.out, &at);
        cr_assert_leq(w, 100, "line %d is %zu columns wide:\n%s", at, w, r.out);
        assert_contains(r.out, "SCRAPER");
        const char *hdr = strstr(r.out, "SCRAPER");
        cr_assert_not_null(hdr);
        char cols[7][16];
        cr_assert_eq(sscanf(hdr, "SCRAPER %15s %15s %15s %15s %15s %15s %15s", cols[0], cols[1],
                            cols[2], cols[3], cols[4], cols[5], cols[6]),
                     7);
        const char *want[] = {"STATE",    "HELD/LIMIT", "WAITING",     "PROCS",
                              "CONNECTS", "TIMEOUTS",   "WAIT_MEAN_MS"};
        for (int i = 0; i < 7; i++)
                cr_assert_str_eq(cols[i], want[i]);
        const char *row = strstr(r.out, "\ncrawler ");
        cr_assert_not_null(row, "no crawler row:\n%s", r.out);
        char state[16], hl[32];
        unsigned waiting, procs;
        unsigned long long connects, timeouts;
        double wait_mean;
        cr_assert_eq(sscanf(row + 8, "%15s %31s %u %u %llu %llu %lf", state, hl, &waiting, &procs,
                            &connects, &timeouts, &wait_mean),
                     7, "%s", row);
        cr_assert_str_eq(state, "active");
        cr_assert_str_eq(hl, "2/6");
        cr_assert_eq(waiting, 0);
        cr_assert_eq(procs, 1);
        cr_assert_eq(connects, 123456789012ull);
        cr_assert_eq(timeouts, 9876543ull);
        cr_assert_float_eq(wait_mean, 12345.7, 0.05);
        /* the long name is cut with a '~', the tab escaped, never raw */
        assert_contains(r.out, "nnnnnnnnnn~ ");
        assert_contains(r.out, "tab\\x09here ");
        cr_assert_null(strchr(r.out, '\t'));
        assert_contains(r.out, "crawler: max=6 reserve=1\n");
        /* --wide keeps every column */
        DYNCOORD(r, "--stats", "--wide");
        assert_exit(&r, 0);
        assert_contains(r.out, "RELEASES");
        assert_contains(r.out, "WAIT_MAX_MS");
        assert_contains(r.out, "REUSES");
        assert_contains(r.out, longname);
        cr_assert_gt(widest_line(r.out, NULL), 100);
        DYNCOORD(r, "--stats", "--wide", "--json");
        assert_exit(&r, 2);
        assert_contains(r.err, "--wide is a view of the table");
        client_stop(&c);
        client_stop(&b);
        client_stop(&a);
}
