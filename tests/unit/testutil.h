/* testutil.h - helpers shared by the coordinator's unit tests. */
#ifndef DYNSHIM_TESTUTIL_H
#define DYNSHIM_TESTUTIL_H

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
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

/* ---- "no secrets": what the bytes of a segment may contain ---- */

/* Maps the whole segment `name` read-only, bypassing validation; NULL if it
 * cannot. */
static inline const unsigned char *tu_map_segment(const char *name, size_t *size)
{
        char path[300];
        snprintf(path, sizeof(path), "/dev/shm%s", name);
        int fd = open(path, O_RDONLY);
        if (fd < 0)
                return NULL;
        struct stat st;
        void *m = MAP_FAILED;
        if (fstat(fd, &st) == 0 && st.st_size > 0)
                m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
        close(fd);
        if (m == MAP_FAILED)
                return NULL;
        *size = (size_t)st.st_size;
        return m;
}

/* The offset of the first occurrence of marker in any byte of segment
 * `name`, or -1 if there is none. Fails the test if it cannot read it. */
static inline long tu_segment_find(const char *name, const char *marker)
{
        size_t size = 0;
        const unsigned char *m = tu_map_segment(name, &size);
        cr_assert_not_null(m, "cannot map segment %s", name);
        const void *at = memmem(m, size, marker, strlen(marker));
        long off = at ? (long)((const unsigned char *)at - m) : -1;
        munmap((void *)m, size);
        return off;
}

/* Counts the runs of at least min_len printable bytes in segment `name` that
 * are not a scraper's name (the only text a segment holds); the header's
 * magic (which reads "DDNYSHM1"), its random generation and runs inside a
 * lock (thread ids, list pointers) are skipped. The first such run is
 * described in what. */
static inline int tu_segment_foreign_strings(const char *name, size_t min_len, char *what,
                                             size_t whatlen)
{
        size_t size = 0;
        const unsigned char *m = tu_map_segment(name, &size);
        cr_assert_not_null(m, "cannot map segment %s", name);
        const struct ds_header *H = (const struct ds_header *)m;
        struct ds_capacity cap = H->cap;
        size_t names_lo = ds_layout_scrapers_off(&cap);
        size_t gen_lo = offsetof(struct ds_header, generation);
        size_t gen_hi = gen_lo + sizeof(H->generation);
        int n = 0;
        if (what && whatlen)
                what[0] = '\0';
        for (size_t i = 0; i < size;) {
                size_t j = i;
                while (j < size && m[j] >= 0x20 && m[j] < 0x7f)
                        j++;
                if (j - i >= min_len) {
                        int in_name = 0;
                        if (i >= names_lo && ds_capacity_validate(&cap, NULL, 0) == 0) {
                                size_t rec = (i - names_lo) / sizeof(struct ds_scraper);
                                size_t field = names_lo + rec * sizeof(struct ds_scraper) +
                                               offsetof(struct ds_scraper, name);
                                in_name = rec < cap.max_scrapers && i >= field &&
                                          j <= field + DS_NAME_MAX;
                        }
                        int in_gen = i < gen_hi && j > gen_lo; /* random bytes */
                        /* a robust mutex holds thread ids and list pointers,
                         * whose bytes may happen to be printable */
                        size_t lock_lo = offsetof(struct ds_header, lock);
                        int in_lock = i < lock_lo + sizeof(pthread_mutex_t) && j > lock_lo;
                        size_t procs_lo = ds_layout_procs_off();
                        size_t procs_hi = procs_lo + (size_t)cap.max_procs * sizeof(struct ds_proc);
                        if (i >= procs_lo && i < procs_hi) {
                                size_t rel = (i - procs_lo) % sizeof(struct ds_proc);
                                in_lock |= rel < sizeof(pthread_mutex_t) &&
                                           j - i <= sizeof(pthread_mutex_t) - rel;
                        }
                        int in_magic = i < sizeof(H->magic); /* "DDNYSHM1" */
                        /* a run inside one aligned 8-byte word is a number's
                         * bytes (a timestamp's low bytes may all be
                         * printable); text leaks are looked for by content
                         * above, and a longer run still counts */
                        int in_word = i / 8 == (j - 1) / 8;
                        if (!in_name && !in_gen && !in_magic && !in_lock && !in_word) {
                                if (n == 0 && what)
                                        snprintf(what, whatlen, "'%.*s' at offset %zu",
                                                 (int)(j - i > 80 ? 80 : j - i),
                                                 (const char *)m + i, i);
                                n++;
                        }
                }
                i = j + 1;
        }
        munmap((void *)m, size);
        return n;
}

#endif
