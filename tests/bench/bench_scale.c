/* bench_scale.c - many processes contending for few slots.
 *
 * PROCS processes in SCRAPERS scrapers of equal size (the same demand each)
 * loop: acquire a slot, hold it HOLD_US (nanosleep; 0: release at once),
 * release it. The coordinator's pool has SLOTS slots; as a baseline the same
 * loop runs on a POSIX semaphore of SLOTS. After a warm-up the parent
 * measures for SECONDS: grants per second, Jain's fairness index
 * (sum x)^2 / (n sum x^2) of the grants across scrapers and across
 * processes, and the wait of every acquire (p50, p99, max).
 *
 * Prints one line of key=value pairs per run. Exit status: 0 done, 1 a step
 * failed, 2 usage. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/futex.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "dynshim/coord.h"

#define MAX_SAMPLES     4096 /* waits kept per process */
#define WAIT_TIMEOUT_MS 120000u

struct proc_rec {
        uint64_t grants;   /* grants counted inside the window */
        uint32_t nsamples; /* waits kept (at most MAX_SAMPLES) */
        int failed;
};

struct shared {
        _Atomic uint32_t ready; /* processes attached and waiting to start */
        _Atomic uint32_t start; /* futex word: 1 = go */
        _Atomic int measuring;  /* inside the measured window */
        _Atomic int stop;       /* leave the loop */
        struct proc_rec rec[];  /* followed by the samples */
};

struct opts {
        unsigned procs, scrapers, slots, hold_us, seconds_ms, warm_ms;
        int posix;
        const char *segment;
};

static char seg_name[200], sem_name[200];
static volatile sig_atomic_t have_seg, have_sem;

static uint64_t now_ns(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void on_signal(int sig)
{
        if (have_seg)
                shm_unlink(seg_name);
        if (have_sem)
                sem_unlink(sem_name);
        signal(sig, SIG_DFL);
        raise(sig);
}

static uint64_t *samples_of(struct shared *s, const struct opts *o, unsigned i)
{
        uint64_t *base = (uint64_t *)(void *)&s->rec[o->procs];
        return base + (size_t)i * MAX_SAMPLES;
}

static void hold(unsigned us)
{
        if (!us)
                return;
        struct timespec ts = {us / 1000000u, (long)(us % 1000000u) * 1000};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
                ;
}

/* One contending process: i is its index, its scraper i % scrapers. */
static int worker(struct shared *s, const struct opts *o, unsigned i)
{
        struct proc_rec *r = &s->rec[i];
        uint64_t *smp = samples_of(s, o, i);
        ds_handle *h = NULL;
        sem_t *sem = NULL;
        char err[256] = "";
        if (o->posix) {
                sem = sem_open(sem_name, 0);
                if (sem == SEM_FAILED) {
                        fprintf(stderr, "bench_scale: sem_open: %s\n", strerror(errno));
                        return 1;
                }
        } else {
                char name[32];
                snprintf(name, sizeof(name), "scraper%02u", i % o->scrapers);
                int rc = ds_attach(o->segment, 0, &h, err, sizeof(err));
                if (!rc)
                        rc = ds_set_scraper(h, name);
                if (rc) {
                        fprintf(stderr, "bench_scale: attach: %s %s\n", strerror(-rc), err);
                        return 1;
                }
        }
        atomic_fetch_add(&s->ready, 1);
        while (!atomic_load(&s->start))
                syscall(SYS_futex, &s->start, FUTEX_WAIT, 0, NULL, NULL, 0);
        while (!atomic_load(&s->stop)) {
                struct ds_lease_ref lease;
                int measured = atomic_load(&s->measuring);
                uint64_t t0 = now_ns();
                int rc;
                if (o->posix) {
                        while ((rc = sem_wait(sem)) != 0 && errno == EINTR)
                                ;
                        rc = rc ? -errno : 0;
                } else {
                        rc = ds_acquire(h, WAIT_TIMEOUT_MS, &lease, err, sizeof(err));
                }
                uint64_t t1 = now_ns();
                if (rc) {
                        fprintf(stderr, "bench_scale: acquire: %s %s\n", strerror(-rc), err);
                        r->failed = 1;
                        break;
                }
                /* a grant counts when the whole acquire lay inside the window;
                 * its wait counts when it started there, also if it ended
                 * after the window: a process starved all along shows up */
                if (measured) {
                        if (!atomic_load(&s->stop))
                                r->grants++;
                        if (r->nsamples < MAX_SAMPLES)
                                smp[r->nsamples++] = t1 - t0;
                }
                hold(o->hold_us);
                rc = o->posix ? (sem_post(sem) ? -errno : 0) : ds_release(h, &lease);
                if (rc) {
                        fprintf(stderr, "bench_scale: release: %s\n", strerror(-rc));
                        r->failed = 1;
                        break;
                }
        }
        if (h)
                ds_detach(h);
        if (sem)
                sem_close(sem);
        return r->failed;
}

static int cmp_u64(const void *a, const void *b)
{
        uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
        return x < y ? -1 : x > y;
}

static double jain(const double *x, unsigned n)
{
        double sum = 0, sq = 0;
        for (unsigned i = 0; i < n; i++) {
                sum += x[i];
                sq += x[i] * x[i];
        }
        return sq > 0 ? sum * sum / (n * sq) : 0;
}

static void sleep_ms(unsigned ms)
{
        struct timespec ts = {ms / 1000u, (long)(ms % 1000u) * 1000000L};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
                ;
}

static int run(const struct opts *o)
{
        size_t sz = sizeof(struct shared) + o->procs * sizeof(struct proc_rec) +
                    (size_t)o->procs * MAX_SAMPLES * sizeof(uint64_t);
        struct shared *s =
            mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (s == MAP_FAILED) {
                perror("bench_scale: mmap");
                return 1;
        }
        char err[256] = "";
        if (o->posix) {
                snprintf(sem_name, sizeof(sem_name), "%s-sem", o->segment);
                sem_unlink(sem_name);
                sem_t *sem = sem_open(sem_name, O_CREAT | O_EXCL, 0600, o->slots);
                if (sem == SEM_FAILED) {
                        perror("bench_scale: sem_open");
                        return 1;
                }
                have_sem = 1;
                sem_close(sem);
        } else {
                struct ds_config cfg;
                struct ds_capacity cap;
                struct ds_create_opts co = {0600, (gid_t)-1, 1};
                ds_config_defaults(&cfg);
                ds_capacity_defaults(&cap);
                cfg.pool_size = o->slots;
                if (cfg.soft_limit > o->slots)
                        cfg.soft_limit = o->slots;
                if (cfg.max_limit > o->slots)
                        cfg.max_limit = o->slots;
                snprintf(seg_name, sizeof(seg_name), "%s", o->segment);
                have_seg = 1;
                int rc = ds_segment_create(seg_name, &cfg, &cap, &co, err, sizeof(err));
                if (rc) {
                        fprintf(stderr, "bench_scale: %s\n", err);
                        return 1;
                }
        }
        pid_t *pids = calloc(o->procs, sizeof(*pids));
        if (!pids)
                return 1;
        pid_t parent = getpid();
        int bad = 0;
        unsigned started = 0;
        fflush(NULL);
        for (unsigned i = 0; i < o->procs; i++) {
                pid_t p = fork();
                if (p == 0) {
                        signal(SIGINT, SIG_DFL);
                        signal(SIGTERM, SIG_DFL);
                        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
                                _exit(1);
                        _exit(worker(s, o, i));
                }
                if (p < 0) {
                        perror("bench_scale: fork");
                        bad = 1;
                        atomic_store(&s->stop, 1);
                        break;
                }
                pids[started++] = p;
        }
        while (!bad && atomic_load(&s->ready) < o->procs)
                sleep_ms(5);
        atomic_store(&s->start, 1);
        syscall(SYS_futex, &s->start, FUTEX_WAKE, INT32_MAX, NULL, NULL, 0);
        sleep_ms(o->warm_ms);
        uint64_t t0 = now_ns();
        atomic_store(&s->measuring, 1);
        sleep_ms(o->seconds_ms);
        atomic_store(&s->stop, 1);
        uint64_t t1 = now_ns();
        for (unsigned i = 0; i < started; i++) {
                int st;
                if (waitpid(pids[i], &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st))
                        bad = 1;
        }
        free(pids);

        char check[256] = "ok";
        if (!o->posix) {
                ds_handle *h;
                int rc = ds_attach(seg_name, 0, &h, err, sizeof(err));
                if (!rc) {
                        struct ds_stats st;
                        if (ds_check(h, check, sizeof(check)) != 0)
                                bad = 1;
                        else if (ds_stats_get(h, &st) == 0) {
                                if (st.held || st.waiting) {
                                        snprintf(check, sizeof(check),
                                                 "%u held, %u waiting after the run", st.held,
                                                 st.waiting);
                                        bad = 1;
                                }
                                ds_stats_free(&st);
                        }
                        ds_detach(h);
                } else {
                        bad = 1;
                }
                ds_segment_destroy(seg_name, err, sizeof(err));
                have_seg = 0;
        } else {
                sem_unlink(sem_name);
                have_sem = 0;
        }

        double *per_proc = calloc(o->procs, sizeof(double));
        double *per_scr = calloc(o->scrapers, sizeof(double));
        size_t nall = 0;
        for (unsigned i = 0; i < o->procs; i++)
                nall += s->rec[i].nsamples;
        uint64_t *all = malloc((nall ? nall : 1) * sizeof(uint64_t));
        if (!per_proc || !per_scr || !all)
                return 1;
        uint64_t grants = 0;
        size_t k = 0;
        for (unsigned i = 0; i < o->procs; i++) {
                per_proc[i] = (double)s->rec[i].grants;
                per_scr[i % o->scrapers] += (double)s->rec[i].grants;
                grants += s->rec[i].grants;
                memcpy(all + k, samples_of(s, o, i), s->rec[i].nsamples * sizeof(uint64_t));
                k += s->rec[i].nsamples;
        }
        qsort(all, nall, sizeof(*all), cmp_u64);
        unsigned starved = 0;
        for (unsigned i = 0; i < o->procs; i++)
                starved += s->rec[i].grants == 0;
        double smin = per_scr[0], smax = per_scr[0];
        for (unsigned j = 1; j < o->scrapers; j++) {
                smin = per_scr[j] < smin ? per_scr[j] : smin;
                smax = per_scr[j] > smax ? per_scr[j] : smax;
        }
        double secs = (double)(t1 - t0) / 1e9;
#define PCT(p) (nall ? (double)all[(nall - 1) * (p) / 100] / 1000.0 : 0.0)
        printf("mech=%s procs=%u scrapers=%u slots=%u hold_us=%u seconds=%.2f grants=%" PRIu64
               " grants_per_s=%.0f jain_scrapers=%.5f jain_procs=%.5f scraper_min=%.0f "
               "scraper_max=%.0f procs_without_grant=%u wait_samples=%zu wait_p50_us=%.1f "
               "wait_p99_us=%.1f "
               "wait_max_us=%.1f check=%s\n",
               o->posix ? "posix" : "dynshim", o->procs, o->scrapers, o->slots, o->hold_us, secs,
               grants, grants / secs, jain(per_scr, o->scrapers), jain(per_proc, o->procs), smin,
               smax, starved, nall, PCT(50), PCT(99), nall ? all[nall - 1] / 1000.0 : 0.0,
               bad ? "FAILED" : "ok");
#undef PCT
        if (bad)
                fprintf(stderr, "bench_scale: %s\n", check);
        free(all);
        free(per_proc);
        free(per_scr);
        munmap(s, sz);
        return bad;
}

static int parse(const char *s, unsigned min, unsigned max, unsigned *out)
{
        char *end;
        errno = 0;
        unsigned long v = strtoul(s, &end, 10);
        if (errno || end == s || *end || v < min || v > max) {
                fprintf(stderr, "bench_scale: '%s' is not a number in %u..%u\n", s, min, max);
                return -1;
        }
        *out = (unsigned)v;
        return 0;
}

int main(int argc, char **argv)
{
        struct opts o = {500, 10, 20, 0, 4000, 500, 0, NULL};
        static char seg[100];
        snprintf(seg, sizeof(seg), "/dynshim-bench-scale-%ld", (long)getpid());
        o.segment = seg;
        for (int i = 1; i < argc; i++) {
                const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
                int rc = 0;
                if (!strcmp(a, "--posix")) {
                        o.posix = 1;
                        continue;
                }
                if (!v) {
                        rc = -1;
                } else if (!strcmp(a, "--procs")) {
                        rc = parse(v, 1, 1000, &o.procs);
                } else if (!strcmp(a, "--scrapers")) {
                        rc = parse(v, 1, 200, &o.scrapers);
                } else if (!strcmp(a, "--slots")) {
                        rc = parse(v, 1, 1000, &o.slots);
                } else if (!strcmp(a, "--hold-us")) {
                        rc = parse(v, 0, 1000000, &o.hold_us);
                } else if (!strcmp(a, "--ms")) {
                        rc = parse(v, 100, 600000, &o.seconds_ms);
                } else if (!strcmp(a, "--warm-ms")) {
                        rc = parse(v, 0, 60000, &o.warm_ms);
                } else {
                        rc = -1;
                }
                if (rc) {
                        fprintf(stderr, "usage: bench_scale [--procs N] [--scrapers N] "
                                        "[--slots N] [--hold-us US] [--ms MS] [--warm-ms MS] "
                                        "[--posix]\n");
                        return 2;
                }
                i++;
        }
        if (o.scrapers > o.procs) {
                fprintf(stderr, "bench_scale: more scrapers than processes\n");
                return 2;
        }
        signal(SIGINT, on_signal);
        signal(SIGTERM, on_signal);
        return run(&o);
}
