/* testutil.h - helpers shared by the coordinator's unit tests. */
#ifndef DYNSHIM_TESTUTIL_H
#define DYNSHIM_TESTUTIL_H

#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "dynshim/coord.h"
#include "dynshim/segment.h"

/* A segment name unique to this test process. */
static inline const char *tu_segname(const char *tag)
{
        static char name[96];
        snprintf(name, sizeof(name), "/dynshim-ut-%s-%d", tag, (int)getpid());
        return name;
}

/* Creates a segment with the given pool rules (others default). */
static inline void tu_create(const char *name, uint32_t pool, uint32_t soft, uint32_t max)
{
        struct ds_config cfg;
        struct ds_capacity cap;
        char err[256] = "";
        ds_config_defaults(&cfg);
        ds_capacity_defaults(&cap);
        cfg.pool_size = pool;
        cfg.soft_limit = soft;
        cfg.max_limit = max;
        struct ds_create_opts o = {.mode = 0600, .group = (gid_t)-1, .force = 1};
        int rc = ds_segment_create(name, &cfg, &cap, &o, err, sizeof(err));
        cr_assert_eq(rc, 0, "create %s: %s", name, err);
}

static inline ds_handle *tu_attach(const char *name, const char *scraper)
{
        ds_handle *h = NULL;
        char err[256] = "";
        int rc = ds_attach(name, 0, &h, err, sizeof(err));
        cr_assert_eq(rc, 0, "attach %s: %s", name, err);
        if (scraper)
                cr_assert_eq(ds_set_scraper(h, scraper), 0);
        return h;
}

static inline void tu_sleep_ms(unsigned ms)
{
        struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
                ;
}

/* Per-scraper numbers from a fresh snapshot; fails the test if absent. */
static inline struct ds_scraper_stats tu_scraper(ds_handle *h, const char *name)
{
        struct ds_stats st;
        struct ds_scraper_stats out;
        memset(&out, 0, sizeof(out));
        cr_assert_eq(ds_stats_get(h, &st), 0);
        int found = 0;
        for (size_t i = 0; i < st.n_scrapers; i++)
                if (strcmp(st.scrapers[i].name, name) == 0) {
                        out = st.scrapers[i];
                        found = 1;
                }
        ds_stats_free(&st);
        cr_assert(found, "scraper %s not in stats", name);
        return out;
}

/* Waiting count of a scraper, 0 while it does not exist yet. */
static inline uint32_t tu_waiting(ds_handle *h, const char *name)
{
        struct ds_stats st;
        uint32_t w = 0;
        cr_assert_eq(ds_stats_get(h, &st), 0);
        for (size_t i = 0; i < st.n_scrapers; i++)
                if (strcmp(st.scrapers[i].name, name) == 0)
                        w = st.scrapers[i].waiting;
        ds_stats_free(&st);
        return w;
}

/* Polls until name has n connects waiting (5 s at most). */
static inline void tu_wait_for_waiters(ds_handle *h, const char *name, uint32_t n)
{
        for (int t = 0; t < 500 && tu_waiting(h, name) != n; t++)
                tu_sleep_ms(10);
        cr_assert_eq(tu_waiting(h, name), n, "scraper %s never had %u waiting", name, n);
}

static inline uint32_t tu_held(ds_handle *h)
{
        struct ds_stats st;
        cr_assert_eq(ds_stats_get(h, &st), 0);
        uint32_t held = st.held;
        ds_stats_free(&st);
        return held;
}

static inline void tu_assert_consistent(ds_handle *h)
{
        char why[256] = "";
        cr_assert_eq(ds_check(h, why, sizeof(why)), 0, "invariant: %s", why);
}

#endif
