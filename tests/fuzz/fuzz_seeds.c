/* fuzz_seeds.c - writes the seed corpora of the segment harnesses:
 *   fuzz_seeds <corpus dir>   (writes <dir>/fuzz_segment/ and <dir>/fuzz_segment_body/)
 * Seeds are real segments of this build: fresh, with holders and a waiter
 * alive, and after those holders were killed (life locks owner-dead). The
 * creator's PID namespace is cleared so that any machine accepts them. */
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fuzz_common.h"

static const char *out_dir;

static void die(const char *what)
{
        fprintf(stderr, "fuzz_seeds: %s\n", what);
        exit(1);
}

static void write_seed(const char *harness, const char *seed, const void *buf, size_t size)
{
        char path[512];
        snprintf(path, sizeof(path), "%s/%s", out_dir, harness);
        mkdir(path, 0755);
        snprintf(path, sizeof(path), "%s/%s/%s", out_dir, harness, seed);
        FILE *f = fopen(path, "wb");
        if (!f || fwrite(buf, 1, size, f) != size || fclose(f) != 0)
                die(path);
}

/* With owner_died, the image asks the body harness to leave the lock as a
 * dead holder would (the low bit of the input's first lock byte). */
static void snapshot(const char *name, const char *harness, const char *seed, int owner_died)
{
        size_t size;
        void *m = fz_map(name, &size);
        if (!m)
                die("could not map the segment");
        void *c = fz_portable_copy(m, size);
        if (!c)
                die("out of memory");
        if (owner_died)
                ((unsigned char *)c)[offsetof(struct ds_header, lock)] |= 1;
        write_seed(harness, seed, c, size);
        free(c);
        munmap(m, size);
}

static void create(const char *name, const struct ds_config *cfg, const struct ds_capacity *cap)
{
        struct ds_create_opts o = {.mode = 0600, .group = (gid_t)-1, .force = 1};
        char err[256];
        if (ds_segment_create(name, cfg, cap, &o, err, sizeof(err)) != 0)
                die(err);
}

/* A child that takes `take` slots as scraper, then one more with a long
 * wait when `wait` is set, and then sleeps until killed. */
static pid_t spawn_client(const char *name, const char *scraper, int take, int wait)
{
        pid_t pid = fork();
        if (pid != 0)
                return pid;
        ds_handle *h;
        if (ds_attach(name, 0, &h, NULL, 0) != 0 || ds_set_scraper(h, scraper) != 0)
                _exit(1);
        struct ds_lease_ref l;
        for (int i = 0; i < take; i++)
                if (ds_acquire(h, 1000, &l, NULL, 0) != 0)
                        _exit(1);
        if (wait)
                ds_acquire(h, 60000, &l, NULL, 0);
        for (;;)
                pause();
}

static uint32_t waiting(const char *name)
{
        ds_handle *h;
        struct ds_stats st;
        uint32_t w = 0;
        if (ds_attach(name, 0, &h, NULL, 0) != 0)
                die("attach");
        if (ds_stats_get(h, &st) == 0) {
                w = st.waiting;
                ds_stats_free(&st);
        }
        ds_detach(h);
        return w;
}

int main(int argc, char **argv)
{
        if (argc != 2)
                die("usage: fuzz_seeds <corpus dir>");
        out_dir = argv[1];
        char name[64];
        snprintf(name, sizeof(name), "/dynshim-fuzz-seeds-%d", (int)getpid());
        struct ds_config cfg;
        struct ds_capacity cap;

        /* The validator: the smallest segment, and the body harness's shape. */
        ds_config_defaults(&cfg);
        cfg.pool_size = 1, cfg.soft_limit = 1, cfg.max_limit = 1;
        cap.max_procs = 1, cap.max_leases = 1, cap.max_scrapers = 1;
        create(name, &cfg, &cap);
        snapshot(name, "fuzz_segment", "smallest", 0);
        fz_body_shape(&cfg, &cap);
        create(name, &cfg, &cap);
        snapshot(name, "fuzz_segment", "small", 0);

        /* The body: fresh, then with clients alive, then with them killed. */
        snapshot(name, "fuzz_segment_body", "fresh", 0);
        pid_t a = spawn_client(name, "alpha", 2, 0);
        for (int t = 0; t < 500; t++) {
                ds_handle *h;
                struct ds_stats st;
                int held = 0;
                if (ds_attach(name, 0, &h, NULL, 0) == 0) {
                        if (ds_stats_get(h, &st) == 0)
                                held = (int)st.held, ds_stats_free(&st);
                        ds_detach(h);
                }
                if (held == 2)
                        break;
                usleep(10000);
        }
        pid_t b = spawn_client(name, "beta", 2, 1);
        for (int t = 0; t < 500 && waiting(name) != 1; t++)
                usleep(10000);
        if (waiting(name) != 1)
                die("the waiter never queued");
        snapshot(name, "fuzz_segment_body", "holders-and-waiter-alive", 0);
        kill(a, SIGKILL);
        kill(b, SIGKILL);
        waitpid(a, NULL, 0);
        waitpid(b, NULL, 0);
        snapshot(name, "fuzz_segment_body", "holders-and-waiter-killed", 0);
        snapshot(name, "fuzz_segment_body", "holders-and-waiter-killed-lock-owner-died", 1);
        ds_segment_destroy(name, NULL, 0);
        return 0;
}
