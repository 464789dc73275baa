/* bench_coord.c - measures the coordinator against the kernel's own
 * semaphores: the cost of an uncontended slot acquire+release, and the
 * latency with which a freed slot reaches a waiting process (dynshim, a
 * SysV semaphore and a POSIX named semaphore, interleaved in one run).
 * Prints Markdown tables to stdout; progress and errors go to stderr.
 *
 * Usage: bench_coord [--pairs N] [--runs N] [--handoffs N] [--rounds N]
 *                    [--waiters N,N,...] [--only pairs|handoff]
 *                    [--mechanisms dynshim,crowd,sysv,posix] [--segment /name]
 * Exit status: 0 measured, 1 a measurement failed, 2 usage error. */
#include "dynshim/coord.h"
#include "dynshim/segment.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/sem.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_WAITERS   1000
#define MAX_ROUNDS    1000
#define SCRAPER       "bench"
#define IDLE_PROCS    100
#define WAIT_TIMEOUT  60000u                       /* ms, for ds_acquire */
#define ASLEEP_WAIT   (10ull * 1000 * 1000 * 1000) /* ns a holder waits for the others */
#define BATCH_TIMEOUT (120ull * 1000 * 1000 * 1000)

enum mech { M_DYNSHIM, M_SYSV, M_POSIX, M_COUNT };

static const char *const mech_name[M_COUNT] = {"dynshim", "SysV sem", "POSIX sem"};

/* The uncontended measurements; "crowd" is dynshim with IDLE_PROCS other
 * processes attached to its segment. */
enum pair_kind { P_DYNSHIM, P_DYNSHIM_CROWD, P_SYSV, P_POSIX, P_COUNT };

struct opts {
        unsigned pairs;    /* acquire+release pairs per run */
        unsigned runs;     /* uncontended runs per mechanism */
        unsigned handoffs; /* measured hand-offs per mechanism and N */
        unsigned rounds;   /* the hand-offs are split into this many interleaved rounds */
        unsigned waiters[16];
        unsigned n_waiters;
        int do_pairs, do_handoff; /* sections to run */
        unsigned pair_mask;       /* bit per enum pair_kind */
        unsigned mech_mask;       /* bit per enum mech (hand-off) */
        char segment[200];        /* base name; two segments are derived from it */
};

/* The kernel objects and segments of this run, for cleanup on any exit. */
static char seg_pairs[240], seg_ring[240], seg_idle[240], posix_name[240];
static int sysv_id = -1;
static volatile sig_atomic_t created_segs, created_posix;

static uint64_t now_ns(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static long futex(_Atomic uint32_t *w, int op, uint32_t val)
{
        return syscall(SYS_futex, (uint32_t *)w, op, val, NULL, NULL, 0);
}

static void cleanup_kernel_objects(void)
{
        if (created_segs) {
                ds_segment_destroy(seg_pairs, NULL, 0);
                ds_segment_destroy(seg_ring, NULL, 0);
                ds_segment_destroy(seg_idle, NULL, 0);
                created_segs = 0;
        }
        if (created_posix) {
                sem_unlink(posix_name);
                created_posix = 0;
        }
        if (sysv_id >= 0) {
                semctl(sysv_id, 0, IPC_RMID);
                sysv_id = -1;
        }
}

static void on_signal(int sig)
{
        /* shm_unlink, sem_unlink and semctl are system calls underneath */
        if (created_segs) {
                shm_unlink(seg_pairs);
                shm_unlink(seg_ring);
                shm_unlink(seg_idle);
        }
        if (created_posix)
                sem_unlink(posix_name);
        if (sysv_id >= 0)
                semctl(sysv_id, 0, IPC_RMID);
        signal(sig, SIG_DFL);
        raise(sig);
}

/* fork() for a measuring process: it dies with this one (whatever kills
 * it), and leaves the cleanup to it. Returns as fork() does. */
static pid_t spawn(void)
{
        pid_t parent = getpid();
        fflush(NULL);
        pid_t p = fork();
        if (p != 0)
                return p;
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        signal(SIGHUP, SIG_DFL);
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
                _exit(1);
        return 0;
}

/* ---- one mechanism, as seen from one process ---- */

struct client {
        enum mech m;
        ds_handle *h;
        struct ds_lease_ref lease;
        sem_t *sem;
        int semid;
};

static int client_open(struct client *c, enum mech m, const char *seg)
{
        memset(c, 0, sizeof(*c));
        c->m = m;
        c->semid = sysv_id;
        if (m != M_DYNSHIM)
                return 0;
        char err[256];
        int rc = ds_attach(seg, 0, &c->h, err, sizeof(err));
        if (rc) {
                fprintf(stderr, "bench_coord: %s\n", err);
                return rc;
        }
        rc = ds_set_scraper(c->h, SCRAPER);
        if (rc)
                fprintf(stderr, "bench_coord: could not set scraper \"%s\": %s\n", SCRAPER,
                        strerror(-rc));
        return rc;
}

static void client_close(struct client *c)
{
        if (c->h)
                ds_detach(c->h);
        c->h = NULL;
}

static int client_acquire(struct client *c)
{
        struct sembuf op = {0, -1, SEM_UNDO};
        int rc;
        switch (c->m) {
        case M_DYNSHIM: {
                char why[256] = "";
                rc = ds_acquire(c->h, WAIT_TIMEOUT, &c->lease, why, sizeof(why));
                if (rc)
                        fprintf(stderr, "bench_coord: ds_acquire failed: %s %s\n", strerror(-rc),
                                why);
                return rc;
        }
        case M_SYSV:
                while ((rc = semop(c->semid, &op, 1)) != 0 && errno == EINTR)
                        ;
                return rc ? -errno : 0;
        case M_POSIX:
                while ((rc = sem_wait(c->sem)) != 0 && errno == EINTR)
                        ;
                return rc ? -errno : 0;
        default:
                return -EINVAL;
        }
}

static int client_release(struct client *c)
{
        struct sembuf op = {0, 1, SEM_UNDO};
        int rc;
        switch (c->m) {
        case M_DYNSHIM:
                rc = ds_release(c->h, &c->lease);
                if (rc)
                        fprintf(stderr, "bench_coord: ds_release failed: %s\n", strerror(-rc));
                return rc;
        case M_SYSV:
                return semop(c->semid, &op, 1) ? -errno : 0;
        case M_POSIX:
                return sem_post(c->sem) ? -errno : 0;
        default:
                return -EINVAL;
        }
}

/* ---- statistics ---- */

static int cmp_u64(const void *a, const void *b)
{
        uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
        return x < y ? -1 : x > y;
}

/* The p-th percentile (nearest rank) of n sorted values. */
static uint64_t percentile(const uint64_t *v, size_t n, unsigned p)
{
        size_t rank = (n * p + 99) / 100;
        return v[rank ? rank - 1 : 0];
}

/* ---- 1. uncontended acquire + release ---- */

static const char *const pair_name[P_COUNT] = {
    "dynshim `ds_acquire` + `ds_release`",
    "dynshim, 100 other processes attached", /* IDLE_PROCS */
    "SysV `semop` -1/+1 (`SEM_UNDO`)",
    "POSIX `sem_wait` + `sem_post`",
};

/* ns per pair over pairs acquire+release pairs, or 0 on error. */
static double time_pairs(struct client *c, unsigned pairs)
{
        uint64_t t0 = now_ns();
        for (unsigned i = 0; i < pairs; i++) {
                if (client_acquire(c) || client_release(c))
                        return 0;
        }
        return (double)(now_ns() - t0) / pairs;
}

struct idle_gate {
        _Atomic uint32_t ready; /* idle processes registered */
        _Atomic uint32_t stop;  /* futex: 1 tells them to detach and exit */
        _Atomic int32_t failed;
};

/* A process that registers in seg (one acquire+release) and then sleeps
 * until told to stop, so that the pool has that many processes attached. */
static void idle_proc(struct idle_gate *g, const char *seg)
{
        struct client c;
        int rc = client_open(&c, M_DYNSHIM, seg);
        if (!rc)
                rc = client_acquire(&c);
        if (!rc)
                rc = client_release(&c);
        if (rc)
                atomic_store(&g->failed, 1);
        atomic_fetch_add(&g->ready, 1);
        while (atomic_load(&g->stop) == 0)
                futex(&g->stop, FUTEX_WAIT, 0);
        client_close(&c);
        _exit(rc ? 1 : 0);
}

static int reap(const pid_t *pids, unsigned n, uint64_t timeout_ns);

static int bench_pairs(const struct opts *o, double med[P_COUNT], double lo[P_COUNT],
                       double hi[P_COUNT])
{
        struct client c[P_COUNT];
        double *v = calloc((size_t)P_COUNT * o->runs, sizeof(double));
        pid_t idle[IDLE_PROCS];
        unsigned n_idle = 0;
        int rc = 0;
        struct idle_gate *g =
            mmap(NULL, sizeof(*g), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        memset(c, 0, sizeof(c));
        if (!v || g == MAP_FAILED) {
                rc = -ENOMEM;
                goto out;
        }
        const unsigned mask = o->pair_mask;
        if ((mask & 1u << P_DYNSHIM) && (rc = client_open(&c[P_DYNSHIM], M_DYNSHIM, seg_pairs)))
                goto out;
        if ((mask & 1u << P_DYNSHIM_CROWD) &&
            (rc = client_open(&c[P_DYNSHIM_CROWD], M_DYNSHIM, seg_idle)))
                goto out;
        client_open(&c[P_SYSV], M_SYSV, NULL);
        client_open(&c[P_POSIX], M_POSIX, NULL);
        if (mask & 1u << P_POSIX) {
                c[P_POSIX].sem = sem_open(posix_name, 0);
                if (c[P_POSIX].sem == SEM_FAILED) {
                        rc = -errno;
                        fprintf(stderr, "bench_coord: could not open semaphore %s: %s\n",
                                posix_name, strerror(errno));
                        goto out;
                }
        }
        for (; (mask & 1u << P_DYNSHIM_CROWD) && n_idle < IDLE_PROCS; n_idle++) {
                idle[n_idle] = spawn();
                if (idle[n_idle] < 0) {
                        rc = -errno;
                        goto out;
                }
                if (idle[n_idle] == 0)
                        idle_proc(g, seg_idle);
        }
        while (atomic_load(&g->ready) < n_idle)
                usleep(1000);
        if (atomic_load(&g->failed)) {
                fprintf(stderr, "bench_coord: an idle process could not register\n");
                rc = -EIO;
                goto out;
        }
        /* warm up: registers the process and faults in every page used */
        for (int k = 0; k < P_COUNT; k++)
                if ((mask & 1u << k) && time_pairs(&c[k], 1000) == 0) {
                        rc = -EIO;
                        goto out;
                }
        for (unsigned r = 0; r < o->runs; r++) {
                for (int j = 0; j < P_COUNT; j++) {
                        int k = (j + (int)r) % P_COUNT; /* rotate the order every run */
                        if (!(mask & 1u << k))
                                continue;
                        double ns = time_pairs(&c[k], o->pairs);
                        if (ns == 0) {
                                rc = -EIO;
                                goto out;
                        }
                        v[k * o->runs + r] = ns;
                }
        }
        for (int k = 0; k < P_COUNT; k++) {
                if (!(mask & 1u << k))
                        continue;
                double *x = &v[k * o->runs];
                for (unsigned i = 1; i < o->runs; i++) /* insertion sort: runs is small */
                        for (unsigned j = i; j > 0 && x[j - 1] > x[j]; j--) {
                                double t = x[j];
                                x[j] = x[j - 1];
                                x[j - 1] = t;
                        }
                med[k] = x[o->runs / 2];
                lo[k] = x[0];
                hi[k] = x[o->runs - 1];
        }
out:
        if (g != MAP_FAILED) {
                atomic_store(&g->stop, 1);
                futex(&g->stop, FUTEX_WAKE, INT_MAX);
                if (n_idle && reap(idle, n_idle, BATCH_TIMEOUT) && !rc)
                        rc = -EIO;
                munmap(g, sizeof(*g));
        }
        if (c[P_POSIX].sem && c[P_POSIX].sem != SEM_FAILED)
                sem_close(c[P_POSIX].sem);
        client_close(&c[P_DYNSHIM]);
        client_close(&c[P_DYNSHIM_CROWD]);
        free(v);
        return rc;
}

/* ---- 2./3. hand-off latency: a ring of processes passing one slot ---- */

enum wstate { W_START, W_WAITING, W_HOLDING, W_PARKED, W_DONE };

struct worker {
        _Atomic uint32_t state; /* enum wstate, written by the worker */
        uint32_t confirmed;     /* asleep in acquire; written by whoever holds the slot */
        int32_t pid;
        uint32_t pad[13];
};

/* Shared by the workers of one batch (MAP_SHARED|MAP_ANONYMOUS). Fields
 * without _Atomic are written only by the process holding the slot; the
 * mechanism's own acquire/release orders them. */
struct ring {
        _Atomic uint32_t seq;   /* futex: bumped by every new holder (and on stop) */
        _Atomic uint32_t stop;  /* 1: drain and exit */
        _Atomic uint32_t go;    /* futex: start gate */
        _Atomic uint32_t ready; /* workers past setup */
        _Atomic int32_t failed; /* first error (negative errno) */
        uint32_t nw;            /* workers: N waiters + 1 holder */
        uint32_t warm;          /* first hand-offs not recorded */
        uint32_t target;        /* hand-offs recorded */
        uint32_t count;         /* hand-offs seen */
        uint32_t have_rel;      /* t_rel is valid */
        uint64_t t_rel;         /* CLOCK_MONOTONIC just before the last release */
        struct worker w[MAX_WAITERS + 1];
        /* 2 * target, ns: hand-off latencies, then how long the release
         * call that started each hand-off took */
        uint64_t samples[];
};

/* The scheduler state of pid ('S' sleeping, 'R' running...), or '?'. */
static char proc_state(pid_t pid)
{
        char path[64], buf[512];
        snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return '?';
        ssize_t n = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        if (n <= 0)
                return '?';
        buf[n] = '\0';
        char *p = strrchr(buf, ')');
        return p && p[1] == ' ' ? p[2] : '?';
}

/* Waits until every other worker is asleep inside its acquire, so that a
 * release always hands the slot to a process that must be woken. */
static int wait_others_asleep(struct ring *r, uint32_t self)
{
        uint64_t deadline = now_ns() + ASLEEP_WAIT;
        for (uint32_t j = 0; j < r->nw; j++) {
                struct worker *w = &r->w[j];
                if (j == self || w->confirmed)
                        continue;
                for (;;) {
                        uint32_t st = atomic_load(&w->state);
                        if (st == W_DONE)
                                return -ECHILD;
                        if (st == W_WAITING && proc_state(w->pid) == 'S')
                                break;
                        if (now_ns() > deadline)
                                return -ETIMEDOUT;
                        sched_yield();
                }
                w->confirmed = 1;
        }
        return 0;
}

static void ring_stop(struct ring *r, int err)
{
        if (err) {
                int32_t zero = 0;
                atomic_compare_exchange_strong(&r->failed, &zero, err);
        }
        atomic_store(&r->stop, 1);
        atomic_fetch_add(&r->seq, 1);
        futex(&r->seq, FUTEX_WAKE, INT_MAX);
}

/* One member of the ring: take the slot, record how long it took to get
 * here since the previous holder released, wake the previous holder, wait
 * until all others are asleep waiting, stamp, release, and stay out of the
 * way until someone else has taken the slot. */
static int ring_worker(struct ring *r, uint32_t i, enum mech m)
{
        struct client c;
        struct worker *me = &r->w[i];
        int rc = client_open(&c, m, seg_ring);
        if (!rc && m == M_POSIX) {
                c.sem = sem_open(posix_name, 0);
                if (c.sem == SEM_FAILED)
                        rc = -errno;
        }
        me->pid = getpid();
        atomic_fetch_add(&r->ready, 1);
        if (rc) {
                ring_stop(r, rc);
                goto out;
        }
        while (atomic_load(&r->go) == 0)
                futex(&r->go, FUTEX_WAIT, 0);
        for (;;) {
                atomic_store(&me->state, W_WAITING);
                if ((rc = client_acquire(&c))) {
                        ring_stop(r, rc);
                        break;
                }
                uint64_t t = now_ns();
                atomic_store(&me->state, W_HOLDING);
                if (atomic_load(&r->stop)) {
                        client_release(&c);
                        break;
                }
                if (r->have_rel) {
                        uint32_t k = r->count++;
                        if (k >= r->warm && k - r->warm < r->target)
                                r->samples[k - r->warm] = t - r->t_rel;
                }
                me->confirmed = 0;
                atomic_fetch_add(&r->seq, 1);
                futex(&r->seq, FUTEX_WAKE, INT_MAX);
                if (r->count >= r->warm + r->target) {
                        ring_stop(r, 0);
                        client_release(&c);
                        break;
                }
                if ((rc = wait_others_asleep(r, i))) {
                        ring_stop(r, rc);
                        client_release(&c);
                        break;
                }
                uint32_t seq = atomic_load(&r->seq);
                r->have_rel = 1;
                atomic_store(&me->state, W_PARKED);
                uint32_t k = r->count;
                uint64_t t0 = now_ns();
                r->t_rel = t0;
                if ((rc = client_release(&c))) {
                        ring_stop(r, rc);
                        break;
                }
                uint64_t t1 = now_ns();
                if (k >= r->warm && k - r->warm < r->target) /* the next holder's index */
                        r->samples[r->target + k - r->warm] = t1 - t0;
                while (atomic_load(&r->seq) == seq)
                        futex(&r->seq, FUTEX_WAIT, seq);
                if (atomic_load(&r->stop))
                        break;
        }
out:
        atomic_store(&me->state, W_DONE);
        if (c.sem && c.sem != SEM_FAILED)
                sem_close(c.sem);
        client_close(&c);
        return rc;
}

/* Waits for every pid; kills them all (by pid) after timeout_ns. Returns 0
 * if all exited with status 0. */
static int reap(const pid_t *pids, unsigned n, uint64_t timeout_ns)
{
        uint64_t deadline = now_ns() + timeout_ns;
        unsigned left = n;
        int bad = 0, killed = 0;
        char *done = calloc(n, 1);
        if (!done)
                return -ENOMEM;
        while (left) {
                int st;
                pid_t p = waitpid(-1, &st, WNOHANG);
                if (p > 0) {
                        for (unsigned i = 0; i < n; i++)
                                if (pids[i] == p && !done[i]) {
                                        done[i] = 1;
                                        left--;
                                        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
                                                bad = 1;
                                }
                        continue;
                }
                if (p < 0 && errno != EINTR)
                        break;
                if (!killed && now_ns() > deadline) {
                        fprintf(stderr,
                                "bench_coord: %u processes did not finish in time; killing them\n",
                                left);
                        for (unsigned i = 0; i < n; i++)
                                if (!done[i])
                                        kill(pids[i], SIGKILL);
                        killed = 1;
                        bad = 1;
                }
                usleep(1000);
        }
        free(done);
        return bad || left ? -EIO : 0;
}

/* One batch: nw processes pass the slot target+warm times. Stores the
 * target latencies in lat and the durations of the release calls in rel. */
static int ring_batch(enum mech m, uint32_t waiters, uint32_t target, uint64_t *lat, uint64_t *rel)
{
        uint32_t nw = waiters + 1;
        size_t sz = sizeof(struct ring) + (size_t)target * 2 * sizeof(uint64_t);
        struct ring *r = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (r == MAP_FAILED)
                return -errno;
        r->nw = nw;
        r->warm = 2 * nw; /* every process has held the slot twice before we record */
        r->target = target;
        pid_t *pids = calloc(nw, sizeof(pid_t));
        int rc = 0;
        uint32_t started = 0;
        if (!pids) {
                rc = -ENOMEM;
                goto out;
        }
        for (; started < nw; started++) {
                pid_t p = spawn();
                if (p < 0) {
                        rc = -errno;
                        ring_stop(r, rc);
                        break;
                }
                if (p == 0)
                        _exit(ring_worker(r, started, m) ? 1 : 0);
                pids[started] = p;
        }
        while (atomic_load(&r->ready) < started)
                usleep(200);
        atomic_store(&r->go, 1);
        futex(&r->go, FUTEX_WAKE, INT_MAX);
        int rrc = started ? reap(pids, started, BATCH_TIMEOUT) : 0;
        if (!rc)
                rc = atomic_load(&r->failed);
        if (!rc)
                rc = rrc;
        if (!rc && r->count < r->warm + target)
                rc = -EIO;
        if (rc)
                fprintf(stderr, "bench_coord: %s hand-off batch with %u waiters failed: %s\n",
                        mech_name[m], waiters, strerror(-rc));
        else {
                memcpy(lat, r->samples, (size_t)target * sizeof(uint64_t));
                memcpy(rel, r->samples + target, (size_t)target * sizeof(uint64_t));
        }
out:
        free(pids);
        munmap(r, sz);
        return rc;
}

/* Checks that a dynshim batch left the pool empty and consistent. */
static int check_ring_segment(ds_handle *h)
{
        char why[256];
        struct ds_stats s;
        int rc = ds_check(h, why, sizeof(why));
        if (rc) {
                fprintf(stderr, "bench_coord: segment %s is inconsistent: %s\n", seg_ring, why);
                return rc;
        }
        if ((rc = ds_stats_get(h, &s)))
                return rc;
        if (s.held || s.waiting) {
                fprintf(stderr, "bench_coord: segment %s still has %u held and %u waiting\n",
                        seg_ring, s.held, s.waiting);
                rc = -EPROTO;
        }
        ds_stats_free(&s);
        return rc;
}

struct lat {
        uint64_t p50[M_COUNT], p99[M_COUNT], max[M_COUNT]; /* hand-off latency */
        uint64_t rel_p50[M_COUNT], rel_p99[M_COUNT];       /* release call duration */
};

static int bench_handoff(const struct opts *o, ds_handle *ring_h, uint32_t waiters, struct lat *res)
{
        unsigned per = (o->handoffs + o->rounds - 1) / o->rounds;
        size_t n = (size_t)per * o->rounds;
        uint64_t *v[M_COUNT] = {0}, *rel[M_COUNT] = {0};
        int rc = 0;
        for (int k = 0; k < M_COUNT; k++)
                if (!(v[k] = calloc(n, sizeof(uint64_t))) ||
                    !(rel[k] = calloc(n, sizeof(uint64_t))))
                        rc = -ENOMEM;
        for (unsigned r = 0; r < o->rounds && !rc; r++) {
                fprintf(stderr, "\rbench_coord: hand-off, %u waiters, round %u/%u ", waiters, r + 1,
                        o->rounds);
                for (int j = 0; j < M_COUNT && !rc; j++) {
                        enum mech k = (enum mech)((j + (int)r) % M_COUNT);
                        if (!(o->mech_mask & 1u << k))
                                continue;
                        size_t at = (size_t)r * per;
                        rc = ring_batch(k, waiters, per, v[k] + at, rel[k] + at);
                        if (!rc && k == M_DYNSHIM)
                                rc = check_ring_segment(ring_h);
                }
        }
        fprintf(stderr, "\n");
        for (int k = 0; k < M_COUNT && !rc; k++) {
                if (!(o->mech_mask & 1u << k))
                        continue;
                qsort(v[k], n, sizeof(uint64_t), cmp_u64);
                qsort(rel[k], n, sizeof(uint64_t), cmp_u64);
                res->p50[k] = percentile(v[k], n, 50);
                res->p99[k] = percentile(v[k], n, 99);
                res->max[k] = v[k][n - 1];
                res->rel_p50[k] = percentile(rel[k], n, 50);
                res->rel_p99[k] = percentile(rel[k], n, 99);
        }
        for (int k = 0; k < M_COUNT; k++) {
                free(v[k]);
                free(rel[k]);
        }
        return rc;
}

/* ---- setup, options, output ---- */

static int create_objects(const struct opts *o)
{
        char err[256];
        struct ds_config cfg;
        struct ds_capacity cap;
        struct ds_create_opts co = {0600, (gid_t)-1, 0};
        snprintf(seg_pairs, sizeof(seg_pairs), "%s-pairs", o->segment);
        snprintf(seg_ring, sizeof(seg_ring), "%s-ring", o->segment);
        snprintf(seg_idle, sizeof(seg_idle), "%s-crowd", o->segment);
        snprintf(posix_name, sizeof(posix_name), "%s-sem", o->segment);
        ds_config_defaults(&cfg);
        ds_capacity_defaults(&cap);
        created_segs = 1;
        int rc = ds_segment_create(seg_pairs, &cfg, &cap, &co, err, sizeof(err));
        if (!rc)
                rc = ds_segment_create(seg_idle, &cfg, &cap, &co, err, sizeof(err));
        cfg.pool_size = cfg.max_limit = cfg.soft_limit = 1; /* one slot, passed around */
        if (!rc)
                rc = ds_segment_create(seg_ring, &cfg, &cap, &co, err, sizeof(err));
        if (rc) {
                fprintf(stderr, "bench_coord: %s\n", err);
                return rc;
        }
        sysv_id = semget(IPC_PRIVATE, 1, IPC_CREAT | 0600);
        if (sysv_id < 0 || semctl(sysv_id, 0, SETVAL, 1) != 0) {
                fprintf(stderr, "bench_coord: could not create a SysV semaphore: %s\n",
                        strerror(errno));
                return -errno;
        }
        sem_t *s = sem_open(posix_name, O_CREAT | O_EXCL, 0600, 1);
        if (s == SEM_FAILED) {
                fprintf(stderr, "bench_coord: could not create semaphore %s: %s\n", posix_name,
                        strerror(errno));
                return -errno;
        }
        created_posix = 1;
        sem_close(s);
        return 0;
}

static void usage(FILE *f)
{
        fprintf(f,
                "usage: bench_coord [--pairs N] [--runs N] [--handoffs N] [--rounds N]\n"
                "                   [--waiters N,N,...] [--only pairs|handoff]\n"
                "                   [--mechanisms dynshim,crowd,sysv,posix] [--segment /name]\n"
                "  --pairs       uncontended acquire+release pairs per run (200000)\n"
                "  --runs        uncontended runs per mechanism; the median is reported (15)\n"
                "  --handoffs    hand-offs measured per mechanism and waiter count (2000)\n"
                "  --rounds      interleaved rounds the hand-offs are split into (20)\n"
                "  --waiters     waiting processes per ring (1,10,100)\n"
                "  --only        run one section: uncontended pairs or hand-off latency\n"
                "  --mechanisms  what to measure (all); crowd is dynshim with %d other\n"
                "                processes attached (uncontended pairs only)\n"
                "  --segment     base name of the segments created (/dynshim-bench-PID)\n",
                IDLE_PROCS);
}

static int parse_uint(const char *opt, const char *s, unsigned min, unsigned max, unsigned *out)
{
        char *end;
        errno = 0;
        unsigned long v = strtoul(s, &end, 10);
        if (!*s || *end || errno || v < min || v > max || *s == '-') {
                fprintf(stderr, "bench_coord: %s '%s' is not a number from %u to %u\n", opt, s, min,
                        max);
                return -EINVAL;
        }
        *out = (unsigned)v;
        return 0;
}

static int parse_waiters(const char *val, struct opts *o)
{
        char buf[256], *save = NULL;
        if (strlen(val) >= sizeof(buf)) {
                fprintf(stderr, "bench_coord: --waiters '%s' is too long\n", val);
                return -EINVAL;
        }
        snprintf(buf, sizeof(buf), "%s", val);
        o->n_waiters = 0;
        for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
                if (o->n_waiters == 16) {
                        fprintf(stderr, "bench_coord: --waiters takes at most 16 values\n");
                        return -EINVAL;
                }
                if (parse_uint("--waiters", t, 1, MAX_WAITERS, &o->waiters[o->n_waiters++]))
                        return -EINVAL;
        }
        if (o->n_waiters == 0) {
                fprintf(stderr, "bench_coord: --waiters '%s' names no waiter count\n", val);
                return -EINVAL;
        }
        return 0;
}

static int parse_mechanisms(const char *val, struct opts *o)
{
        char buf[256], *save = NULL;
        if (strlen(val) >= sizeof(buf)) {
                fprintf(stderr, "bench_coord: --mechanisms '%s' is too long\n", val);
                return -EINVAL;
        }
        snprintf(buf, sizeof(buf), "%s", val);
        o->pair_mask = o->mech_mask = 0;
        for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
                if (!strcmp(t, "dynshim")) {
                        o->pair_mask |= 1u << P_DYNSHIM;
                        o->mech_mask |= 1u << M_DYNSHIM;
                } else if (!strcmp(t, "crowd")) {
                        o->pair_mask |= 1u << P_DYNSHIM_CROWD;
                } else if (!strcmp(t, "sysv")) {
                        o->pair_mask |= 1u << P_SYSV;
                        o->mech_mask |= 1u << M_SYSV;
                } else if (!strcmp(t, "posix")) {
                        o->pair_mask |= 1u << P_POSIX;
                        o->mech_mask |= 1u << M_POSIX;
                } else {
                        fprintf(stderr,
                                "bench_coord: unknown mechanism '%s' (dynshim, crowd, sysv, "
                                "posix)\n",
                                t);
                        return -EINVAL;
                }
        }
        if (!o->pair_mask) {
                fprintf(stderr, "bench_coord: --mechanisms '%s' names no mechanism\n", val);
                return -EINVAL;
        }
        return 0;
}

static int parse_opts(int argc, char **argv, struct opts *o)
{
        *o = (struct opts){.pairs = 200000,
                           .runs = 15,
                           .handoffs = 2000,
                           .rounds = 20,
                           .waiters = {1, 10, 100},
                           .n_waiters = 3,
                           .do_pairs = 1,
                           .do_handoff = 1,
                           .pair_mask = (1u << P_COUNT) - 1,
                           .mech_mask = (1u << M_COUNT) - 1};
        snprintf(o->segment, sizeof(o->segment), "/dynshim-bench-%d", (int)getpid());
        for (int i = 1; i < argc; i++) {
                const char *a = argv[i];
                if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
                        usage(stdout);
                        exit(0);
                }
                if (i + 1 >= argc) {
                        fprintf(stderr, "bench_coord: unknown option or missing value: '%s'\n", a);
                        return -EINVAL;
                }
                const char *val = argv[++i];
                int rc = 0;
                if (!strcmp(a, "--pairs"))
                        rc = parse_uint(a, val, 1, 100000000, &o->pairs);
                else if (!strcmp(a, "--runs"))
                        rc = parse_uint(a, val, 1, 1000, &o->runs);
                else if (!strcmp(a, "--handoffs"))
                        rc = parse_uint(a, val, 1, 10000000, &o->handoffs);
                else if (!strcmp(a, "--rounds"))
                        rc = parse_uint(a, val, 1, MAX_ROUNDS, &o->rounds);
                else if (!strcmp(a, "--waiters"))
                        rc = parse_waiters(val, o);
                else if (!strcmp(a, "--mechanisms"))
                        rc = parse_mechanisms(val, o);
                else if (!strcmp(a, "--only")) {
                        o->do_pairs = !strcmp(val, "pairs");
                        o->do_handoff = !strcmp(val, "handoff");
                        if (!o->do_pairs && !o->do_handoff) {
                                fprintf(stderr,
                                        "bench_coord: --only '%s' is neither 'pairs' nor "
                                        "'handoff'\n",
                                        val);
                                rc = -EINVAL;
                        }
                } else if (!strcmp(a, "--segment")) {
                        if (val[0] != '/' || strlen(val) >= sizeof(o->segment) ||
                            strchr(val + 1, '/')) {
                                fprintf(stderr,
                                        "bench_coord: --segment '%s' must be '/' and a short name "
                                        "without '/'\n",
                                        val);
                                return -EINVAL;
                        }
                        snprintf(o->segment, sizeof(o->segment), "%s", val);
                } else {
                        fprintf(stderr, "bench_coord: unknown option '%s'\n", a);
                        return -EINVAL;
                }
                if (rc)
                        return rc;
        }
        if (o->do_handoff && !o->mech_mask) {
                fprintf(stderr, "bench_coord: the hand-off needs dynshim, sysv or posix\n");
                return -EINVAL;
        }
        if (o->rounds > o->handoffs)
                o->rounds = o->handoffs;
        return 0;
}

static double us(uint64_t ns)
{
        return (double)ns / 1000.0;
}

/* One table cell: the value in µs, or a dash when not measured. */
static const char *cell_us(char *buf, size_t len, int have, uint64_t ns, const char *fmt)
{
        if (!have)
                return "–";
        snprintf(buf, len, fmt, us(ns));
        return buf;
}

static const char *cell_ratio(char *buf, size_t len, int have, uint64_t a, uint64_t b)
{
        if (!have || b == 0)
                return "–";
        snprintf(buf, len, "%.2f", (double)a / (double)b);
        return buf;
}

/* Below this an acquire+release pair counts as "well under a microsecond". */
#define PAIR_TARGET_NS 500.0

static void print_pairs(const struct opts *o, const double med[P_COUNT], const double lo[P_COUNT],
                        const double hi[P_COUNT])
{
        printf("### Uncontended acquire + release\n\n");
        printf("ns per pair; median, fastest and slowest of %u runs of %u pairs, the mechanisms "
               "interleaved run by run.\n\n",
               o->runs, o->pairs);
        printf("| mechanism | median ns | min ns | max ns |\n|---|---:|---:|---:|\n");
        for (int k = 0; k < P_COUNT; k++)
                if (o->pair_mask & 1u << k)
                        printf("| %s | %.1f | %.1f | %.1f |\n", pair_name[k], med[k], lo[k], hi[k]);
        printf("\n");
}

static void print_handoff(const struct opts *o, const struct lat *lat)
{
        const unsigned per = (o->handoffs + o->rounds - 1) / o->rounds;
        const unsigned m = o->mech_mask;
        const int d = m & 1u << M_DYNSHIM, sv = m & 1u << M_SYSV, px = m & 1u << M_POSIX;
        char b[10][32];
        printf("### Hand-off latency\n\n");
        printf("µs from just before the holder's release until the granted process returns from "
               "its acquire; pool of one slot, N processes asleep waiting, %u hand-offs per cell "
               "in %u interleaved rounds.\n\n",
               per * o->rounds, o->rounds);
        printf("| N waiting | dynshim p50 | dynshim p99 | SysV p50 | SysV p99 | POSIX p50 | "
               "POSIX p99 | dynshim max | SysV max | POSIX max |\n"
               "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for (unsigned i = 0; i < o->n_waiters; i++) {
                const struct lat *l = &lat[i];
                printf("| %u | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", o->waiters[i],
                       cell_us(b[0], 32, d, l->p50[M_DYNSHIM], "%.1f"),
                       cell_us(b[1], 32, d, l->p99[M_DYNSHIM], "%.1f"),
                       cell_us(b[2], 32, sv, l->p50[M_SYSV], "%.1f"),
                       cell_us(b[3], 32, sv, l->p99[M_SYSV], "%.1f"),
                       cell_us(b[4], 32, px, l->p50[M_POSIX], "%.1f"),
                       cell_us(b[5], 32, px, l->p99[M_POSIX], "%.1f"),
                       cell_us(b[6], 32, d, l->max[M_DYNSHIM], "%.0f"),
                       cell_us(b[7], 32, sv, l->max[M_SYSV], "%.0f"),
                       cell_us(b[8], 32, px, l->max[M_POSIX], "%.0f"));
        }
        printf("\nThe release call itself (µs from the holder's stamp until its release returns, "
               "waking the next waiter):\n\n");
        printf("| N waiting | dynshim p50 | dynshim p99 | SysV p50 | SysV p99 | POSIX p50 | "
               "POSIX p99 |\n|---:|---:|---:|---:|---:|---:|---:|\n");
        for (unsigned i = 0; i < o->n_waiters; i++) {
                const struct lat *l = &lat[i];
                printf("| %u | %s | %s | %s | %s | %s | %s |\n", o->waiters[i],
                       cell_us(b[0], 32, d, l->rel_p50[M_DYNSHIM], "%.2f"),
                       cell_us(b[1], 32, d, l->rel_p99[M_DYNSHIM], "%.2f"),
                       cell_us(b[2], 32, sv, l->rel_p50[M_SYSV], "%.2f"),
                       cell_us(b[3], 32, sv, l->rel_p99[M_SYSV], "%.2f"),
                       cell_us(b[4], 32, px, l->rel_p50[M_POSIX], "%.2f"),
                       cell_us(b[5], 32, px, l->rel_p99[M_POSIX], "%.2f"));
        }
        if (!d || (!sv && !px)) {
                printf("\n");
                return;
        }
        printf("\n### Ratios (dynshim / raw semaphore; below 1 means dynshim is faster)\n\n");
        printf("| N waiting | dynshim/SysV p50 | dynshim/SysV p99 | dynshim/POSIX p50 | "
               "dynshim/POSIX p99 |\n|---:|---:|---:|---:|---:|\n");
        for (unsigned i = 0; i < o->n_waiters; i++) {
                const struct lat *l = &lat[i];
                printf("| %u | %s | %s | %s | %s |\n", o->waiters[i],
                       cell_ratio(b[0], 32, sv, l->p50[M_DYNSHIM], l->p50[M_SYSV]),
                       cell_ratio(b[1], 32, sv, l->p99[M_DYNSHIM], l->p99[M_SYSV]),
                       cell_ratio(b[2], 32, px, l->p50[M_DYNSHIM], l->p50[M_POSIX]),
                       cell_ratio(b[3], 32, px, l->p99[M_DYNSHIM], l->p99[M_POSIX]));
        }
        printf("\n");
}

static void print_targets(const struct opts *o, const double med[P_COUNT], const struct lat *lat)
{
        const unsigned m = o->mech_mask;
        const int pairs = o->do_pairs && (o->pair_mask & 1u << P_DYNSHIM);
        const int hand =
            o->do_handoff && (m & 1u << M_DYNSHIM) && (m & (1u << M_SYSV | 1u << M_POSIX));
        if (!pairs && !hand)
                return;
        printf("### Targets\n\n");
        printf("| target | measured | verdict |\n|---|---|---|\n");
        if (pairs)
                printf("| uncontended acquire+release well under 1 µs (at most %.0f ns) | %.0f ns "
                       "| %s |\n",
                       PAIR_TARGET_NS, med[P_DYNSHIM],
                       med[P_DYNSHIM] <= PAIR_TARGET_NS ? "met" : "missed");
        for (unsigned i = 0; hand && i < o->n_waiters; i++) {
                const struct lat *l = &lat[i];
                uint64_t raw = UINT64_MAX;
                if (m & 1u << M_SYSV)
                        raw = l->p50[M_SYSV];
                if ((m & 1u << M_POSIX) && l->p50[M_POSIX] < raw)
                        raw = l->p50[M_POSIX];
                double ratio = (double)l->p50[M_DYNSHIM] / (double)raw;
                printf("| hand-off p50 within 2x of the faster raw semaphore, N=%u | %.2fx | %s "
                       "|\n",
                       o->waiters[i], ratio, ratio <= 2.0 ? "met" : "missed");
        }
        printf("\n");
}

int main(int argc, char **argv)
{
        struct opts o;
        if (parse_opts(argc, argv, &o)) {
                usage(stderr);
                return 2;
        }
        signal(SIGINT, on_signal);
        signal(SIGTERM, on_signal);
        signal(SIGHUP, on_signal);
        int rc = create_objects(&o);
        double med[P_COUNT] = {0}, lo[P_COUNT] = {0}, hi[P_COUNT] = {0};
        struct lat lat[16];
        ds_handle *ring_h = NULL;
        memset(lat, 0, sizeof(lat));
        if (!rc && o.do_pairs) {
                fprintf(stderr, "bench_coord: uncontended acquire+release, %u runs of %u pairs\n",
                        o.runs, o.pairs);
                rc = bench_pairs(&o, med, lo, hi);
        }
        if (!rc && o.do_handoff) {
                char err[256];
                rc = ds_attach(seg_ring, 0, &ring_h, err, sizeof(err));
                if (rc)
                        fprintf(stderr, "bench_coord: %s\n", err);
                for (unsigned i = 0; i < o.n_waiters && !rc; i++)
                        rc = bench_handoff(&o, ring_h, o.waiters[i], &lat[i]);
        }
        ds_detach(ring_h);
        cleanup_kernel_objects();
        if (rc) {
                fprintf(stderr, "bench_coord: stopped after an error: %s\n", strerror(-rc));
                return 1;
        }
        if (o.do_pairs)
                print_pairs(&o, med, lo, hi);
        if (o.do_handoff)
                print_handoff(&o, lat);
        print_targets(&o, med, lat);
        return 0;
}
