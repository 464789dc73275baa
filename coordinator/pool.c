/* pool.c - the pool's mechanism: the robust lock and its repair, process
 * registration and liveness, leases (acquire, hand-off, release), dead
 * process reclaim, limits, statistics and the invariant check. The rules
 * themselves are in policy.c. */
#include "internal.h"
#include "dynshim/policy.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define ERR(...) (err ? (void)snprintf(err, errlen, __VA_ARGS__) : (void)0)

/* How long a lock may be held by someone else before we give up (only a
 * stopped or corrupt holder takes this long), and how often a waiter
 * wakes to look for dead processes and time-driven limit changes. */
#define LOCK_TIMEOUT_NS   (5ull * 1000 * 1000 * 1000)
#define SWEEP_INTERVAL_NS (100ull * 1000 * 1000)
/* How long a slot whose backend is not visible on this host (a remote
 * server) drains when nobody asks the server (dyncoord --watchdog
 * --conninfo does) whether the backend is gone. */
#define DRAIN_REMOTE_MAX_NS (60ull * 1000 * 1000 * 1000)
#define DRAIN_POLL_NS       (20ull * 1000 * 1000)

uint64_t ds_now_ns(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t now_coarse_ns(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
        return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static long futex(_Atomic uint32_t *w, int op, uint32_t val, const struct timespec *ts)
{
        return syscall(SYS_futex, (uint32_t *)w, op, val, ts, NULL, 0);
}

/* getpid() is a system call; the pid is cached in a page that the kernel
 * zeroes in every child made by fork, whichever way it was made
 * (MADV_WIPEONFORK), so a child never sees its parent's pid. Without that
 * page (old kernels) every call asks the kernel. */
static _Atomic(pid_t *) pid_page;
static pthread_once_t pid_once = PTHREAD_ONCE_INIT;

static void init_pid_page(void)
{
        void *pg = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (pg == MAP_FAILED)
                return;
        if (madvise(pg, 4096, MADV_WIPEONFORK) != 0) {
                munmap(pg, 4096);
                return;
        }
        atomic_store(&pid_page, (pid_t *)pg);
}

static pid_t self_pid(void)
{
        pid_t *pg = atomic_load_explicit(&pid_page, memory_order_acquire);
        if (!pg) {
                pthread_once(&pid_once, init_pid_page);
                if (!(pg = atomic_load(&pid_page)))
                        return getpid();
        }
        pid_t v = __atomic_load_n(pg, __ATOMIC_RELAXED);
        if (v == 0) {
                v = getpid();
                __atomic_store_n(pg, v, __ATOMIC_RELAXED);
        }
        return v;
}

/* ---- repair: the lease table is the truth, everything else is rebuilt ---- */

static void rebuild_caches(ds_handle *h)
{
        struct ds_header *H = h->hdr;
        const struct ds_capacity *c = &h->cap;
        H->held = H->waiting = 0;
        atomic_store(&H->draining, 0);
        uint32_t proc_hwm = 0, lease_hwm = 0, scraper_hwm = 0;
        for (uint32_t i = 0; i < c->max_scrapers; i++) {
                struct ds_scraper *s = &h->scrapers[i];
                s->name[DS_NAME_MAX - 1] = '\0';
                s->held = s->waiting = s->procs = 0;
                atomic_store(&s->inflight, 0);
                s->surplus_pending = 0;
                if (s->name[0])
                        scraper_hwm = i + 1;
        }
        for (uint32_t i = 0; i < c->max_procs; i++) {
                struct ds_proc *p = &h->procs[i];
                p->held = p->waiting = 0;
                atomic_store(&p->parked, 0);
                if (p->pid == 0)
                        continue;
                if (p->scraper >= c->max_scrapers || !h->scrapers[p->scraper].name[0]) {
                        p->pid = 0; /* unusable record; its life thread keeps a dead lock */
                        continue;
                }
                h->scrapers[p->scraper].procs++;
                atomic_fetch_add(&h->scrapers[p->scraper].inflight, atomic_load(&p->inflight));
                proc_hwm = i + 1;
        }
        for (uint32_t i = 0; i < c->max_leases; i++) {
                struct ds_lease *l = &h->leases[i];
                uint32_t st = atomic_load(&l->state);
                if (st == DS_LEASE_FREE)
                        continue;
                if (st == DS_LEASE_DRAINING && atomic_load(&l->backend_pid) > 0) {
                        /* owned by no process: counted against the pool only */
                        H->held++;
                        H->draining++;
                        lease_hwm = i + 1;
                        continue;
                }
                if ((st != DS_LEASE_HELD && st != DS_LEASE_WAITING) || l->proc >= c->max_procs ||
                    h->procs[l->proc].pid == 0 || l->scraper != h->procs[l->proc].scraper) {
                        atomic_store(&l->state, DS_LEASE_FREE);
                        l->id = 0;
                        continue;
                }
                struct ds_proc *p = &h->procs[l->proc];
                struct ds_scraper *s = &h->scrapers[l->scraper];
                if (st == DS_LEASE_HELD) {
                        /* a grant cut short: complete it, unless its waiter
                         * abandoned it */
                        uint32_t zero = 0;
                        if (!atomic_compare_exchange_strong(&l->wake, &zero, 1) &&
                            atomic_load(&l->wake) != 1) {
                                atomic_store(&l->state, DS_LEASE_FREE);
                                l->id = 0;
                                continue;
                        }
                        futex(&l->wake, FUTEX_WAKE, 1, NULL);
                        H->held++, p->held++, s->held++;
                } else {
                        H->waiting++, p->waiting++, s->waiting++;
                }
                lease_hwm = i + 1;
        }
        H->lease_hwm = lease_hwm;
        H->proc_hwm = proc_hwm;
        H->scraper_hwm = scraper_hwm;
        H->repairs++;
}

/* ThreadSanitizer does not intercept pthread_mutex_clocklock (GCC 12):
 * the build with DYNSHIM_TSAN tells it about that lock itself, else it
 * would take every access under the segment's lock for a race. */
#ifdef __SANITIZE_THREAD__
#include <sanitizer/tsan_interface.h>
static void tsan_pre_lock(void *m)
{
        __tsan_mutex_pre_lock(m, __tsan_mutex_try_lock);
}
static void tsan_post_lock(void *m, int locked)
{
        __tsan_mutex_post_lock(
            m, __tsan_mutex_try_lock | (locked ? 0 : __tsan_mutex_try_lock_failed), 0);
}
#else
static void tsan_pre_lock(void *m)
{
        (void)m;
}
static void tsan_post_lock(void *m, int locked)
{
        (void)m, (void)locked;
}
#endif

int ds_lock(ds_handle *h)
{
        pthread_mutex_t *m = &h->hdr->lock;
        if (m->__data.__kind != h->mutex_kind)
                return -EPROTO;
        int rc = pthread_mutex_trylock(m);
        if (rc == EBUSY) {
                uint64_t dl = ds_now_ns() + LOCK_TIMEOUT_NS;
                struct timespec ts = {(time_t)(dl / 1000000000ull), (long)(dl % 1000000000ull)};
                tsan_pre_lock(m);
                rc = pthread_mutex_clocklock(m, CLOCK_MONOTONIC, &ts);
                tsan_post_lock(m, rc == 0 || rc == EOWNERDEAD);
        }
        if (rc == EOWNERDEAD) {
                rebuild_caches(h);
                pthread_mutex_consistent(m);
                return 0;
        }
        if (rc == ETIMEDOUT)
                return -EDEADLK;
        return -rc;
}

/* Waiters granted under the lock are woken after it is released, so they
 * do not wake only to block on it (per thread: the lock is not recursive). */
static __thread struct {
        uint32_t n;
        _Atomic uint32_t *word[16];
} wakes;

static void queue_wake(_Atomic uint32_t *w)
{
        if (wakes.n < sizeof(wakes.word) / sizeof(wakes.word[0]))
                wakes.word[wakes.n++] = w;
        else
                futex(w, FUTEX_WAKE, 1, NULL);
}

void ds_unlock(ds_handle *h)
{
        pthread_mutex_unlock(&h->hdr->lock);
        /* A word may belong to a lease reused since: a spurious wake is
         * harmless, waiters check their word. */
        for (uint32_t i = 0; i < wakes.n; i++)
                futex(wakes.word[i], FUTEX_WAKE, 1, NULL);
        wakes.n = 0;
}

/* ---- liveness ---- */

/* Whether the backend of a lease may still be running, as far as this host
 * can tell: a local backend is checked in /proc (start time and all, so a
 * reused PID does not count); a remote one is assumed to run. */
static int backend_may_run(const struct ds_lease *l)
{
        int32_t pid = atomic_load(&l->backend_pid);
        if (pid <= 0)
                return 0;
        uint64_t start = atomic_load(&l->backend_start);
        return start == 0 || ds_local_backend_start(pid) == start;
}

static void free_lease(ds_handle *h, uint32_t i);

/* Turns HELD lease l into a DRAINING one, still counted in the pool's held
 * (under the lock; the caller uncounts it from its scraper and process). */
static void start_drain(ds_handle *h, struct ds_lease *l)
{
        l->since_ns = ds_now_ns();
        l->proc = UINT32_MAX;
        atomic_store(&l->state, DS_LEASE_DRAINING);
        h->hdr->draining++;
}

/* Frees DRAINING lease i (under the lock). */
static void end_drain(ds_handle *h, uint32_t i)
{
        struct ds_header *H = h->hdr;
        free_lease(h, i);
        H->held--;
        H->draining--;
}

/* Frees the DRAINING leases whose backend is gone (under the lock); a
 * remote one after DRAIN_REMOTE_MAX_NS. Returns how many. */
static uint32_t reap_draining(ds_handle *h, uint64_t now)
{
        struct ds_header *H = h->hdr;
        uint32_t n = 0, seen = 0, total = atomic_load(&H->draining);
        uint32_t hwm = H->lease_hwm <= h->cap.max_leases ? H->lease_hwm : h->cap.max_leases;
        for (uint32_t i = 0; i < hwm && seen < total; i++) {
                struct ds_lease *l = &h->leases[i];
                if (atomic_load(&l->state) != DS_LEASE_DRAINING)
                        continue;
                seen++;
                int remote = atomic_load(&l->backend_start) == 0;
                if (remote ? now - l->since_ns < DRAIN_REMOTE_MAX_NS : backend_may_run(l))
                        continue;
                end_drain(h, i);
                n++;
        }
        return n;
}

/* Frees every lease of process record pi and the record itself. A slot
 * whose backend may still run is not freed but DRAINING: it stays counted
 * against pool_size, owned by no process, until the backend is gone. */
static void drop_proc(ds_handle *h, uint32_t pi, int count_reclaimed)
{
        struct ds_header *H = h->hdr;
        struct ds_proc *p = &h->procs[pi];
        uint32_t hwm = H->lease_hwm <= h->cap.max_leases ? H->lease_hwm : h->cap.max_leases;
        for (uint32_t i = 0; i < hwm; i++) {
                struct ds_lease *l = &h->leases[i];
                uint32_t st = atomic_load(&l->state);
                if (st == DS_LEASE_FREE || st == DS_LEASE_DRAINING || l->proc != pi ||
                    l->scraper >= h->cap.max_scrapers)
                        continue;
                struct ds_scraper *s = &h->scrapers[l->scraper];
                if (st == DS_LEASE_HELD && backend_may_run(l)) {
                        start_drain(h, l);
                        s->held--;
                        if (count_reclaimed)
                                s->reclaimed++;
                        continue;
                }
                atomic_store(&l->state, DS_LEASE_FREE);
                l->id = 0;
                if (st == DS_LEASE_HELD) {
                        H->held--, s->held--;
                        if (count_reclaimed)
                                s->reclaimed++;
                } else if (st == DS_LEASE_WAITING) {
                        H->waiting--, s->waiting--;
                        atomic_store(&l->wake, 1);
                        futex(&l->wake, FUTEX_WAKE, INT_MAX, NULL);
                }
        }
        if (p->scraper < h->cap.max_scrapers) {
                struct ds_scraper *s = &h->scrapers[p->scraper];
                if (s->procs > 0)
                        s->procs--;
                uint32_t f = atomic_exchange(&p->inflight, 0);
                uint32_t cur = atomic_load(&s->inflight);
                atomic_store(&s->inflight, cur > f ? cur - f : 0);
        }
        p->held = p->waiting = 0;
        atomic_store(&p->parked, 0);
        p->pid = 0;
        while (H->proc_hwm > 0 && h->procs[H->proc_hwm - 1].pid == 0)
                H->proc_hwm--;
}

/* Reclaims dead processes (under the lock). Their life lock is owner-dead
 * once they died or exec'd; a free life lock under a live record is a
 * registration that never completed. Returns how many were reclaimed. */
static int sweep_dead(ds_handle *h)
{
        int n = 0;
        uint32_t hwm = h->hdr->proc_hwm <= h->cap.max_procs ? h->hdr->proc_hwm : h->cap.max_procs;
        for (uint32_t i = 0; i < hwm; i++) {
                struct ds_proc *p = &h->procs[i];
                if (p->pid == 0)
                        continue;
                if (p->life.__data.__kind != h->mutex_kind) {
                        /* corrupt lock: the record cannot prove a life */
                        ds_mutex_init_shared(&p->life);
                        drop_proc(h, i, 1);
                        n++;
                        continue;
                }
                int rc = pthread_mutex_trylock(&p->life);
                if (rc == EBUSY)
                        continue;
                if (rc == EOWNERDEAD || rc == 0) {
                        if (rc == EOWNERDEAD)
                                pthread_mutex_consistent(&p->life);
                        drop_proc(h, i, 1);
                        pthread_mutex_unlock(&p->life);
                        n++;
                }
        }
        if (n)
                h->hdr->reclaimed_procs += (uint64_t)n;
        uint64_t now = ds_now_ns();
        if (h->hdr->draining)
                reap_draining(h, now);
        atomic_store(&h->hdr->last_sweep_ns, now);
        return n;
}

/* ---- limits and grants (under the lock) ---- */

/* Limits when some scraper has overrides (ds_policy_limits). Returns the
 * claimed reserves still unfilled. */
static uint32_t recompute_custom(ds_handle *h, uint32_t shwm)
{
        struct ds_header *H = h->hdr;
        for (uint32_t i = 0; i < shwm; i++) {
                struct ds_scraper *s = &h->scrapers[i];
                s->pol.ov = s->ov;
                s->pol.used = s->name[0] != '\0';
                s->pol.active = s->active;
                s->pol.held = s->held;
                s->pol.waiting = s->waiting;
        }
        uint32_t unfilled = ds_policy_limits(&H->cfg, shwm ? &h->scrapers[0].pol : NULL, shwm,
                                             sizeof(struct ds_scraper), NULL);
        for (uint32_t i = 0; i < shwm; i++) {
                struct ds_scraper *s = &h->scrapers[i];
                if (s->pol.used) {
                        s->limit = s->pol.limit;
                        s->claimed = s->pol.claimed;
                } else {
                        s->claimed = 0;
                }
        }
        return unfilled;
}

/* What a scraper's state depends on (under the lock). */
static struct ds_activity activity_of(const struct ds_scraper *s)
{
        struct ds_activity a = {
            s->waiting, atomic_load_explicit(&s->inflight, memory_order_relaxed), s->procs, s->held,
            atomic_load_explicit(&s->last_activity_ns, memory_order_relaxed)};
        return a;
}

/* Recomputes every scraper's state and limit. Returns the reserves claimed
 * but not yet filled: slots no other scraper may be granted. */
static uint32_t recompute_limits(ds_handle *h, uint64_t now)
{
        struct ds_header *H = h->hdr;
        uint32_t shwm =
            H->scraper_hwm <= h->cap.max_scrapers ? H->scraper_hwm : h->cap.max_scrapers;
        uint32_t n_active = 0, custom = 0;
        for (uint32_t i = 0; i < shwm; i++) {
                struct ds_scraper *s = &h->scrapers[i];
                struct ds_activity a = activity_of(s);
                s->active = s->name[0] && ds_policy_is_active(&H->cfg, &a, now);
                n_active += s->active;
                custom |= s->ov.flags;
        }
        H->n_active = n_active;
        H->last_realloc_ns = now;
        if (custom)
                return recompute_custom(h, shwm);
        for (uint32_t i = 0; i < shwm; i++) {
                struct ds_scraper *s = &h->scrapers[i];
                /* an idle scraper is shown the limit it would get on waking */
                s->limit = ds_policy_limit(&H->cfg, s->active ? n_active : n_active + 1);
                if (s->claimed)
                        s->claimed = 0;
        }
        return 0;
}

/* Slots set aside for the unfilled reserves of others than s. */
static uint32_t unfilled_others(const struct ds_scraper *s, uint32_t unfilled)
{
        uint32_t own = s->held < s->claimed ? s->claimed - s->held : 0;
        return unfilled > own ? unfilled - own : 0;
}

/* 1 if the pool's cluster agent (cfg.agent_proc) lives. Its life lock is
 * held by its life thread; once it is free or owner-dead the agent is gone
 * (the record itself is left to sweep_dead). */
static int agent_alive(ds_handle *h)
{
        const struct ds_config *c = &h->hdr->cfg;
        uint32_t i = c->agent_proc - 1;
        if (i >= h->cap.max_procs || c->agent_pid == 0 || h->procs[i].pid != c->agent_pid)
                return 0;
        pthread_mutex_t *m = &h->procs[i].life;
        if (m->__data.__kind != h->mutex_kind)
                return 0;
        int rc = pthread_mutex_trylock(m);
        if (rc == EBUSY)
                return 1;
        if (rc == EOWNERDEAD)
                pthread_mutex_consistent(m);
        if (rc == 0 || rc == EOWNERDEAD)
                pthread_mutex_unlock(m);
        return 0;
}

/* The number of slots that may be held after a grant (under the lock):
 * pool_size, or, in cluster mode with the agent gone, what is held now: a
 * share that no agent keeps in the cluster's budget grants nothing new. */
static uint32_t grant_cap(ds_handle *h)
{
        const struct ds_header *H = h->hdr;
        if (H->cfg.agent_proc == 0 || agent_alive(h))
                return H->cfg.pool_size;
        return H->held < H->cfg.pool_size ? H->held : H->cfg.pool_size;
}

/* Fills the policy's scratch for the scrapers in use (under the lock):
 * h->pick[i] with scraper i's held, limit, waiting and its first waiting
 * lease by ds_policy_lease_first (scrapers[i].oldest_idx; leases failed to
 * break a deadlock are left out), h->reserve[i] with the reserve it claims.
 * Returns how many entries. */
static uint32_t fill_pick(ds_handle *h)
{
        struct ds_header *H = h->hdr;
        uint32_t shwm =
            H->scraper_hwm <= h->cap.max_scrapers ? H->scraper_hwm : h->cap.max_scrapers;
        for (uint32_t i = 0; i < shwm; i++)
                h->scrapers[i].oldest_ticket = UINT64_MAX;
        uint32_t lhwm = H->lease_hwm <= h->cap.max_leases ? H->lease_hwm : h->cap.max_leases;
        for (uint32_t i = 0; i < lhwm; i++) {
                struct ds_lease *l = &h->leases[i];
                if (atomic_load_explicit(&l->state, memory_order_relaxed) != DS_LEASE_WAITING ||
                    l->scraper >= shwm || atomic_load_explicit(&l->wake, memory_order_relaxed) == 3)
                        continue;
                struct ds_scraper *s = &h->scrapers[l->scraper];
                if (s->oldest_ticket == UINT64_MAX ||
                    ds_policy_lease_first(l->ticket, (int)l->holds, s->oldest_ticket,
                                          (int)h->leases[s->oldest_idx].holds)) {
                        s->oldest_ticket = l->ticket;
                        s->oldest_idx = i;
                }
        }
        for (uint32_t i = 0; i < shwm; i++) {
                const struct ds_scraper *s = &h->scrapers[i];
                h->pick[i].held = s->held;
                h->pick[i].limit = s->limit;
                h->pick[i].waiting = s->oldest_ticket == UINT64_MAX ? 0 : s->waiting;
                h->pick[i].oldest_ticket = s->oldest_ticket;
                h->reserve[i] = s->claimed;
        }
        return shwm;
}

/* Hands free slots to waiters by the policy (ds_policy_pick), waking each
 * one granted; the first to a waiter of scraper prefer if it may have it
 * (a handover; -1: none). */
static void grant_waiters(ds_handle *h, uint64_t now, long prefer)
{
        struct ds_header *H = h->hdr;
        uint32_t cap = grant_cap(h);
        while (H->waiting > 0 && H->held < cap) {
                uint32_t n = fill_pick(h);
                long best = ds_policy_pick(h->pick, h->reserve, n, cap, H->held, prefer);
                prefer = -1;
                if (best < 0)
                        return;
                struct ds_scraper *s = &h->scrapers[best];
                struct ds_lease *l = &h->leases[s->oldest_idx];
                struct ds_proc *p = &h->procs[l->proc < h->cap.max_procs ? l->proc : 0];
                uint64_t waited = now > l->since_ns ? now - l->since_ns : 0;
                l->since_ns = now;
                atomic_store(&l->state, DS_LEASE_HELD);
                H->waiting--, s->waiting--, p->waiting--;
                uint32_t zero = 0;
                if (!atomic_compare_exchange_strong(&l->wake, &zero, 1)) {
                        free_lease(h, s->oldest_idx); /* its waiter gave up */
                        continue;
                }
                H->held++, s->held++, p->held++;
                s->connects++, H->grants++;
                s->waits++;
                s->wait_ns_total += waited;
                if (waited > s->wait_ns_max)
                        s->wait_ns_max = waited;
                if (H->held > H->peak_held)
                        H->peak_held = H->held;
                queue_wake(&l->wake);
        }
}

/* Hold-and-wait (under the lock): when the waiters are deadlocked
 * (ds_policy_deadlock) and have been for deadlock_timeout, fails the newest
 * waiting connect whose thread holds a slot in the deadlocked set: its
 * wake word becomes 3 and its waiter withdraws it. The next one needs
 * another deadlock_timeout. */
static void check_deadlock(ds_handle *h, uint64_t now)
{
        struct ds_header *H = h->hdr;
        if (H->waiting == 0) {
                H->deadlock_since_ns = 0;
                return;
        }
        uint32_t ns = fill_pick(h);
        uint32_t np = H->proc_hwm <= h->cap.max_procs ? H->proc_hwm : h->cap.max_procs;
        for (uint32_t i = 0; i < np; i++) {
                const struct ds_proc *p = &h->procs[i];
                h->wproc[i].scraper = p->scraper;
                h->wproc[i].held = p->pid ? p->held : 0;
                h->wproc[i].holders = 0;
        }
        uint32_t lhwm = H->lease_hwm <= h->cap.max_leases ? H->lease_hwm : h->cap.max_leases;
        for (uint32_t i = 0; i < lhwm; i++) {
                const struct ds_lease *l = &h->leases[i];
                if (atomic_load_explicit(&l->state, memory_order_relaxed) == DS_LEASE_WAITING &&
                    l->holds && l->proc < np && atomic_load(&l->wake) == 0)
                        h->wproc[l->proc].holders++;
        }
        long d = ds_policy_deadlock(h->wproc, np, h->pick, ns, H->cfg.pool_size, H->held,
                                    atomic_load(&H->draining));
        if (d == DS_DEADLOCK_NONE) {
                H->deadlock_since_ns = 0;
                return;
        }
        if (H->deadlock_since_ns == 0 || now < H->deadlock_since_ns) {
                H->deadlock_since_ns = now;
                return;
        }
        if (now - H->deadlock_since_ns < (uint64_t)H->cfg.deadlock_timeout_ms * 1000000ull)
                return;
        long victim = -1;
        for (uint32_t i = 0; i < lhwm; i++) {
                const struct ds_lease *l = &h->leases[i];
                if (atomic_load_explicit(&l->state, memory_order_relaxed) != DS_LEASE_WAITING ||
                    !l->holds || l->proc >= np || atomic_load(&l->wake) != 0 ||
                    (d >= 0 && l->scraper != (uint32_t)d))
                        continue;
                if (victim < 0 || l->ticket > h->leases[victim].ticket)
                        victim = (long)i;
        }
        if (victim < 0)
                return;
        struct ds_lease *l = &h->leases[victim];
        uint32_t zero = 0;
        if (atomic_compare_exchange_strong(&l->wake, &zero, 3)) {
                if (l->scraper < h->cap.max_scrapers)
                        h->scrapers[l->scraper].deadlocks++;
                queue_wake(&l->wake);
        }
        H->deadlock_since_ns = now;
}

static void notify_surplus(ds_handle *h);
static void notify_parked(ds_handle *h);
static void notify_handover(ds_handle *h);

/* ---- registration ---- */

static void *life_main(void *arg)
{
        ds_handle *h = arg;
        pthread_mutex_t *m = &h->procs[h->proc_idx].life;
        /* The record was found free (register_proc): never wait here, under
         * the segment's lock, for a holder that may never let go. */
        int rc = pthread_mutex_trylock(m);
        if (rc == EOWNERDEAD) {
                pthread_mutex_consistent(m);
                rc = 0;
        }
        atomic_store(&h->life_state, rc == 0 ? 1 : 2);
        futex(&h->life_state, FUTEX_WAKE_PRIVATE, INT_MAX, NULL);
        if (rc)
                return NULL;
        /* Sleep on the record's notify word: bumped by the pool when it wants
         * slots back, by ds_set_advice_handler and by stop_life. The word is
         * read before life_stop: a stop_life that stores life_stop after our
         * check bumps the word after our read, so the wait returns at once
         * (read the other way round, its wake could fall between the two
         * reads and be lost, and ds_detach would join this thread forever). */
        _Atomic uint32_t *notify = &h->procs[h->proc_idx].notify;
        for (;;) {
                uint32_t seen = atomic_load(notify);
                if (atomic_load(&h->life_stop))
                        break;
                void (*fn)(void *) = atomic_load(&h->advice_fn);
                uint32_t period = atomic_load(&h->advice_period_ms);
                struct timespec ts = {(time_t)(period / 1000), (long)(period % 1000) * 1000000L};
                futex(notify, FUTEX_WAIT, seen, fn && period ? &ts : NULL);
                if (atomic_load(&h->life_stop))
                        break;
                if ((fn = atomic_load(&h->advice_fn)))
                        fn(atomic_load(&h->advice_arg));
        }
        pthread_mutex_unlock(m);
        return NULL;
}

/* Starts the life thread on procs[h->proc_idx] and waits until it holds
 * the record's life lock. */
static int start_life(ds_handle *h)
{
        pthread_attr_t a;
        sigset_t all, old;
        atomic_store(&h->life_state, 0);
        atomic_store(&h->life_stop, 0);
        pthread_attr_init(&a);
        pthread_attr_setstacksize(&a, 128 * 1024);
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        int rc = pthread_create(&h->life_tid, &a, life_main, h);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        pthread_attr_destroy(&a);
        if (rc)
                return -rc;
        uint32_t st;
        while ((st = atomic_load(&h->life_state)) == 0)
                futex(&h->life_state, FUTEX_WAIT_PRIVATE, 0, NULL);
        if (st != 1) {
                pthread_join(h->life_tid, NULL);
                return -EIO;
        }
        return 0;
}

static void poke_proc(struct ds_proc *p)
{
        atomic_fetch_add(&p->notify, 1);
        futex(&p->notify, FUTEX_WAKE, INT_MAX, NULL);
}

static void stop_life(ds_handle *h)
{
        atomic_store(&h->life_stop, 1);
        poke_proc(&h->procs[h->proc_idx]);
        pthread_join(h->life_tid, NULL);
}

/* The scraper record named name, created (or recycled) if need be. */
static long find_scraper(ds_handle *h, const char *name, uint64_t now)
{
        struct ds_header *H = h->hdr;
        long free_idx = -1, recycle = -1;
        for (uint32_t i = 0; i < h->cap.max_scrapers; i++) {
                struct ds_scraper *s = &h->scrapers[i];
                if (!s->name[0]) {
                        if (free_idx < 0)
                                free_idx = i;
                        if (i >= H->scraper_hwm)
                                break;
                        continue;
                }
                if (strncmp(s->name, name, DS_NAME_MAX) == 0)
                        return i;
                if (s->procs == 0 && s->held == 0 && s->waiting == 0 && s->ov.flags == 0 &&
                    (recycle < 0 || s->last_used_ns < h->scrapers[recycle].last_used_ns))
                        recycle = i;
        }
        long i = free_idx >= 0 ? free_idx : recycle;
        if (i < 0)
                return -ENOSPC;
        struct ds_scraper *s = &h->scrapers[i];
        memset(s, 0, sizeof(*s));
        snprintf(s->name, DS_NAME_MAX, "%s", name);
        s->last_used_ns = now;
        if ((uint32_t)i + 1 > H->scraper_hwm)
                H->scraper_hwm = (uint32_t)i + 1;
        return i;
}

/* Whether the life lock of a free process record is free too. A busy one
 * is still held by the life thread of a process that is leaving, or by a
 * thread id that a corrupt segment names: taking that record would wait,
 * under the segment's lock, for as long as that holder lives or forever. */
static int life_lock_free(ds_handle *h, struct ds_proc *p)
{
        if (p->life.__data.__kind != h->mutex_kind)
                return 1; /* reinitialised before use */
        int rc = pthread_mutex_trylock(&p->life);
        if (rc == EOWNERDEAD) {
                pthread_mutex_consistent(&p->life);
                rc = 0;
        }
        if (rc != 0)
                return 0;
        pthread_mutex_unlock(&p->life);
        return 1;
}

/* The process the handle is registered for (0: none). Read by any thread
 * without h->local; written by register_proc. */
static pid_t handle_pid(const ds_handle *h)
{
        return __atomic_load_n(&h->pid, __ATOMIC_ACQUIRE);
}

/* Registers this process (under the lock and h->local). */
static int register_proc(ds_handle *h, uint64_t now)
{
        struct ds_header *H = h->hdr;
        pid_t me = self_pid();
        long si = find_scraper(h, h->scraper, now);
        if (si < 0)
                return (int)si;
        long pi = -1;
        for (int pass = 0; pass < 2 && pi < 0; pass++) {
                for (uint32_t i = 0; i < h->cap.max_procs; i++) {
                        if (h->procs[i].pid == 0 && life_lock_free(h, &h->procs[i])) {
                                pi = i;
                                break;
                        }
                }
                if (pi < 0)
                        sweep_dead(h);
        }
        if (pi < 0)
                return -ENOSPC;
        struct ds_proc *p = &h->procs[pi];
        if (p->life.__data.__kind != h->mutex_kind)
                ds_mutex_init_shared(&p->life);
        h->proc_idx = (uint32_t)pi;
        int rc = start_life(h);
        if (rc)
                return rc;
        p->scraper = (uint32_t)si;
        p->since_ns = now;
        p->held = p->waiting = 0;
        atomic_store(&p->inflight, 0);
        atomic_store(&p->last_activity_ns, 0);
        __atomic_store_n(&p->pid, me, __ATOMIC_RELEASE);
        h->scrapers[si].procs++;
        if ((uint32_t)pi + 1 > H->proc_hwm)
                H->proc_hwm = (uint32_t)pi + 1;
        /* release: a thread that sees pid == me on the fast path of
         * lock_registered also sees proc_idx and the record */
        __atomic_store_n(&h->pid, me, __ATOMIC_RELEASE);
        return 0;
}

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static void atfork_child(void);

/* Every handle in this process, for the fork handler. */
static pthread_mutex_t handles_lock = PTHREAD_MUTEX_INITIALIZER;
static ds_handle *handles[64];

static void atfork_prepare(void)
{
        pthread_mutex_lock(&handles_lock);
        for (size_t i = 0; i < 64; i++)
                if (handles[i])
                        pthread_mutex_lock(&handles[i]->local);
}

static void atfork_parent(void)
{
        for (size_t i = 0; i < 64; i++)
                if (handles[i])
                        pthread_mutex_unlock(&handles[i]->local);
        pthread_mutex_unlock(&handles_lock);
}

/* In the child the handles' local locks were held by the forking thread
 * (now the only one): release them. The child registers afresh. */
static void atfork_child(void)
{
        atfork_parent();
}

static void install_atfork(void)
{
        pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

static void track_handle(ds_handle *h, int add)
{
        pthread_once(&atfork_once, install_atfork);
        pthread_mutex_lock(&handles_lock);
        for (size_t i = 0; i < 64; i++) {
                if (add && !handles[i]) {
                        handles[i] = h;
                        break;
                }
                if (!add && handles[i] == h)
                        handles[i] = NULL;
        }
        pthread_mutex_unlock(&handles_lock);
}

int ds_set_scraper(ds_handle *h, const char *scraper)
{
        if (!scraper || !*scraper)
                return -EINVAL;
        pthread_mutex_lock(&h->local);
        int rc = 0;
        if (handle_pid(h) == self_pid() && strncmp(h->scraper, scraper, DS_NAME_MAX - 1) != 0)
                rc = -EBUSY;
        else
                snprintf(h->scraper, sizeof(h->scraper), "%s", scraper);
        pthread_mutex_unlock(&h->local);
        if (rc == 0)
                track_handle(h, 1);
        return rc;
}

/* Takes the lock with this process registered. On success the lock is held. */
static int lock_registered(ds_handle *h, uint64_t now)
{
        if (atomic_load(&h->hdr->destroyed))
                return -ESTALE;
        if (handle_pid(h) == self_pid()) {
                int rc = ds_lock(h);
                return rc;
        }
        if (!h->scraper[0])
                return -EINVAL;
        pthread_mutex_lock(&h->local);
        int rc = ds_lock(h);
        if (rc == 0 && handle_pid(h) != self_pid()) {
                rc = register_proc(h, now);
                if (rc)
                        ds_unlock(h);
        }
        pthread_mutex_unlock(&h->local);
        return rc;
}

/* ---- leases ---- */

static long alloc_lease(ds_handle *h)
{
        struct ds_header *H = h->hdr;
        for (uint32_t i = 0; i < h->cap.max_leases; i++) {
                if (atomic_load_explicit(&h->leases[i].state, memory_order_relaxed) ==
                    DS_LEASE_FREE) {
                        if (i + 1 > H->lease_hwm)
                                H->lease_hwm = i + 1;
                        return i;
                }
        }
        return -ENOSPC;
}

static void free_lease(ds_handle *h, uint32_t i)
{
        struct ds_header *H = h->hdr;
        atomic_store(&h->leases[i].state, DS_LEASE_FREE);
        h->leases[i].id = 0;
        while (H->lease_hwm > 0 && atomic_load_explicit(&h->leases[H->lease_hwm - 1].state,
                                                        memory_order_relaxed) == DS_LEASE_FREE)
                H->lease_hwm--;
}

static void describe_full(ds_handle *h, const struct ds_scraper *s, uint32_t timeout_ms, char *why,
                          size_t whylen)
{
        if (!why)
                return;
        char t[32];
        if (timeout_ms % 1000 == 0)
                snprintf(t, sizeof(t), "%u s", timeout_ms / 1000);
        else
                snprintf(t, sizeof(t), "%.3g s", timeout_ms / 1000.0);
        snprintf(why, whylen,
                 "no connection slot for scraper \"%s\" within %s (pool %u/%u in use, limit %u, "
                 "%u held by this scraper, %u waiting%s)",
                 s->name, t, h->hdr->held, h->hdr->cfg.pool_size, s->limit, s->held,
                 h->hdr->waiting,
                 h->hdr->cfg.agent_proc && !agent_alive(h)
                     ? "; the pool's cluster agent is gone: no new slots until it is back"
                     : "");
}

/* A new lease of process p (under the lock), neither waiting nor held
 * yet: its index, or -ENOSPC when the table is full. */
static long new_lease(ds_handle *h, const struct ds_proc *p, uint64_t now)
{
        struct ds_header *H = h->hdr;
        long li = alloc_lease(h);
        if (li < 0) {
                sweep_dead(h);
                li = alloc_lease(h);
        }
        if (li < 0)
                return -ENOSPC;
        struct ds_lease *l = &h->leases[li];
        uint64_t id = H->next_lease_id++;
        if (id == 0) /* 0 means "no lease": a corrupt counter must not hand it out */
                id = H->next_lease_id++;
        l->proc = h->proc_idx;
        l->scraper = p->scraper;
        atomic_store_explicit(&l->backend_pid, 0, memory_order_relaxed);
        atomic_store_explicit(&l->backend_start, 0, memory_order_relaxed);
        l->id = id;
        l->since_ns = now;
        return li;
}

/* Grants lease l to its process at once (under the lock). */
static void mark_held(ds_handle *h, struct ds_proc *p, struct ds_scraper *s, struct ds_lease *l)
{
        struct ds_header *H = h->hdr;
        atomic_store(&l->wake, 1);
        atomic_store(&l->state, DS_LEASE_HELD);
        H->held++, s->held++, p->held++;
        s->connects++, H->grants++;
        if (H->held > H->peak_held)
                H->peak_held = H->held;
}

/* The error of a connect failed to break a hold-and-wait (under the lock). */
static void describe_deadlock(ds_handle *h, const struct ds_scraper *s, uint64_t waited_ns,
                              char *why, size_t whylen)
{
        if (!why)
                return;
        snprintf(why, whylen,
                 "deadlock: scraper \"%s\" waited %.1f s for a connection slot while the slots it "
                 "could get were all held by connections in open transactions whose threads were "
                 "themselves waiting for another (pool %u/%u in use, limit %u, %u held by this "
                 "scraper); this connect gave up so that the others can go on. A thread that "
                 "holds a connection while it opens another needs a limit of at least the number "
                 "of connections it holds at once: raise pool_size or the limits, or finish the "
                 "first connection's transaction before opening the next",
                 s->name, (double)waited_ns / 1e9, h->hdr->held, h->hdr->cfg.pool_size, s->limit,
                 s->held);
}

int ds_acquire(ds_handle *h, uint32_t timeout_ms, struct ds_lease_ref *out, char *why,
               size_t whylen)
{
        return ds_acquire_ex(h, timeout_ms, 0, out, why, whylen);
}

int ds_acquire_ex(ds_handle *h, uint32_t timeout_ms, unsigned flags, struct ds_lease_ref *out,
                  char *why, size_t whylen)
{
        /* The coarse clock is enough for activity; a wait takes a precise one. */
        uint64_t now = now_coarse_ns();
        int rc = lock_registered(h, now);
        if (rc)
                return rc;
        struct ds_header *H = h->hdr;
        struct ds_proc *p = &h->procs[h->proc_idx];
        if (p->scraper >= h->cap.max_scrapers) {
                ds_unlock(h);
                return -EPROTO;
        }
        struct ds_scraper *s = &h->scrapers[p->scraper];
        if (timeout_ms == UINT32_MAX)
                timeout_ms = H->cfg.wait_timeout_ms;
        atomic_store_explicit(&p->last_activity_ns, now, memory_order_relaxed);
        atomic_store_explicit(&s->last_activity_ns, now, memory_order_relaxed);
        s->last_used_ns = now;
        long li = new_lease(h, p, now);
        if (li < 0) {
                ds_unlock(h);
                return -ENOSPC;
        }
        struct ds_lease *l = &h->leases[li];
        uint64_t id = l->id;
        uint32_t unfilled = recompute_limits(h, now);
        if (H->waiting == 0 &&
            ds_policy_may_grant_reserved(grant_cap(h), H->held, unfilled_others(s, unfilled),
                                         s->held, s->limit)) {
                /* fast path: nobody waits, a slot is free */
                mark_held(h, p, s, l);
                ds_unlock(h);
                out->idx = (uint32_t)li;
                out->id = id;
                return 0;
        }
        uint64_t t0 = ds_now_ns();
        l->since_ns = t0;
        l->ticket = H->next_ticket++;
        l->holds = (flags & DS_ACQUIRE_HOLDS) ? 1 : 0;
        atomic_store(&l->wake, 0);
        atomic_store(&l->state, DS_LEASE_WAITING);
        H->waiting++, s->waiting++, p->waiting++;
        recompute_limits(h, now); /* waiting makes the scraper active */
        if (H->held >= H->cfg.pool_size &&
            t0 - atomic_load(&H->last_sweep_ns) >= SWEEP_INTERVAL_NS / 10)
                sweep_dead(h);
        grant_waiters(h, t0, -1);
        if (atomic_load(&l->wake) == 0) {
                notify_surplus(h);
                notify_parked(h);
                notify_handover(h);
                check_deadlock(h, t0);
        }
        ds_unlock(h);

        /* A granter stores HELD, then 1 into the wake word, then wakes us: a
         * 1 here means the slot is ours, with no need for the lock. A 3
         * means the wait was failed to break a deadlock. */
        uint64_t deadline = t0 + (uint64_t)timeout_ms * 1000000ull;
        uint32_t w;
        for (;;) {
                if ((w = atomic_load(&l->wake)) == 1)
                        goto granted;
                if (w == 3)
                        break;
                uint64_t t = ds_now_ns();
                if (t >= deadline)
                        break;
                /* a draining slot is looked at more often: it goes to a
                 * waiter right after its backend is gone */
                uint64_t every = atomic_load_explicit(&H->draining, memory_order_relaxed)
                                     ? DRAIN_POLL_NS
                                     : SWEEP_INTERVAL_NS;
                uint64_t slice = deadline - t < every ? deadline - t : every;
                struct timespec ts = {(time_t)(slice / 1000000000ull),
                                      (long)(slice % 1000000000ull)};
                futex(&l->wake, FUTEX_WAIT, 0, &ts);
                if ((w = atomic_load(&l->wake)) == 1)
                        goto granted;
                if (w == 3)
                        break;
                t = ds_now_ns();
                uint64_t last = atomic_load(&H->last_sweep_ns);
                if (t - last >= every &&
                    atomic_compare_exchange_strong(&H->last_sweep_ns, &last, t)) {
                        if (ds_lock(h) == 0) {
                                sweep_dead(h);
                                recompute_limits(h, t);
                                grant_waiters(h, t, -1);
                                notify_surplus(h);
                                notify_handover(h);
                                check_deadlock(h, t);
                                ds_unlock(h);
                        }
                }
        }
        /* Timed out, or failed to break a deadlock: withdraw under the
         * lock, unless granted meanwhile. */
        rc = ds_lock(h);
        if (rc) {
                /* No lock: give the wait up through its word; a granter (or
                 * the repair) frees an abandoned lease. */
                uint32_t seen = 0;
                if (!atomic_compare_exchange_strong(&l->wake, &seen, 2)) {
                        if (seen == 1)
                                goto granted;
                        if (seen == 3 && atomic_compare_exchange_strong(&l->wake, &seen, 2))
                                return -EDEADLK;
                }
                return rc;
        }
        if (l->id != id) {
                ds_unlock(h);
                return -ESTALE; /* dropped by a repair */
        }
        if ((w = atomic_load(&l->wake)) == 1) {
                ds_unlock(h);
                goto granted;
        }
        H->waiting--, s->waiting--, p->waiting--;
        free_lease(h, (uint32_t)li);
        uint64_t t = ds_now_ns();
        s->waits++;
        s->wait_ns_total += t - t0;
        if (t - t0 > s->wait_ns_max)
                s->wait_ns_max = t - t0;
        recompute_limits(h, t);
        if (w == 3) {
                describe_deadlock(h, s, t - t0, why, whylen);
                rc = -EDEADLK;
        } else {
                s->timeouts++;
                describe_full(h, s, timeout_ms, why, whylen);
                rc = -ETIMEDOUT;
        }
        grant_waiters(h, t, -1);
        ds_unlock(h);
        return rc;
granted:
        out->idx = (uint32_t)li;
        out->id = id;
        return 0;
}

int ds_release(ds_handle *h, const struct ds_lease_ref *ref)
{
        return ds_release_for(h, ref, DS_RELEASE_NORMAL);
}

int ds_release_for(ds_handle *h, const struct ds_lease_ref *ref, int reason)
{
        if (!ref || ref->idx >= h->cap.max_leases || ref->id == 0)
                return -EINVAL;
        if (handle_pid(h) != self_pid())
                return -EPERM; /* not registered in this process: not ours */
        int rc = ds_lock(h);
        if (rc)
                return rc;
        struct ds_header *H = h->hdr;
        struct ds_lease *l = &h->leases[ref->idx];
        if (l->id != ref->id || atomic_load(&l->state) != DS_LEASE_HELD) {
                rc = -ENOENT;
                goto out;
        }
        if (l->proc != h->proc_idx || h->procs[h->proc_idx].pid != self_pid() ||
            l->scraper >= h->cap.max_scrapers) {
                rc = -EPERM;
                goto out;
        }
        struct ds_scraper *s = &h->scrapers[l->scraper];
        struct ds_proc *p = &h->procs[l->proc];
        long scraper = (long)l->scraper;
        uint64_t now = ds_now_ns();
        if ((reason & DS_RELEASE_MAY_RUN) && backend_may_run(l)) {
                start_drain(h, l); /* still counted in the pool's held */
        } else {
                free_lease(h, ref->idx);
                H->held--;
        }
        s->held--, p->held--;
        s->last_used_ns = now;
        reason &= ~DS_RELEASE_MAY_RUN;
        if (reason == DS_RELEASE_IDLE) {
                s->idle_releases++;
        } else if (reason == DS_RELEASE_SURPLUS) {
                s->surplus_releases++;
                if (s->surplus_pending)
                        s->surplus_pending--;
        } else if (reason == DS_RELEASE_HANDOVER) {
                s->handovers++;
        } else {
                /* only the program's own finish is activity */
                s->releases++;
                atomic_store_explicit(&s->last_activity_ns, now, memory_order_relaxed);
                atomic_store_explicit(&p->last_activity_ns, now, memory_order_relaxed);
        }
        if (H->waiting) {
                recompute_limits(h, now);
                /* a handover goes first to a waiter of its own scraper */
                grant_waiters(h, now, reason == DS_RELEASE_HANDOVER ? scraper : -1);
        }
out:
        ds_unlock(h);
        return rc;
}

void ds_touch(ds_handle *h, uint64_t now_ns)
{
        if (handle_pid(h) != self_pid() || h->proc_idx >= h->cap.max_procs)
                return;
        if (!now_ns)
                now_ns = now_coarse_ns();
        struct ds_proc *p = &h->procs[h->proc_idx];
        atomic_store_explicit(&p->last_activity_ns, now_ns, memory_order_relaxed);
        uint32_t si = p->scraper;
        if (si < h->cap.max_scrapers)
                atomic_store_explicit(&h->scrapers[si].last_activity_ns, now_ns,
                                      memory_order_relaxed);
}

int ds_lease_set_backend(ds_handle *h, const struct ds_lease_ref *ref, int32_t backend_pid)
{
        if (!ref || ref->idx >= h->cap.max_leases || ref->id == 0 || backend_pid < 0)
                return -EINVAL;
        if (h->pid != self_pid())
                return -EPERM;
        /* /proc is read before the lock; the lease is this process's own */
        uint64_t start = ds_local_backend_start(backend_pid);
        int rc = ds_lock(h);
        if (rc)
                return rc;
        struct ds_lease *l = &h->leases[ref->idx];
        if (l->id != ref->id || atomic_load(&l->state) != DS_LEASE_HELD)
                rc = -ENOENT;
        else if (l->proc != h->proc_idx)
                rc = -EPERM;
        else {
                /* pid last: a lease never names a pid with another's start */
                atomic_store(&l->backend_pid, 0);
                atomic_store(&l->backend_start, start);
                atomic_store(&l->backend_pid, backend_pid);
        }
        ds_unlock(h);
        return rc;
}

int ds_drain_list(ds_handle *h, int32_t *pids, size_t max, size_t *n)
{
        *n = 0;
        int rc = ds_lock(h);
        if (rc)
                return rc;
        struct ds_header *H = h->hdr;
        uint32_t hwm = H->lease_hwm <= h->cap.max_leases ? H->lease_hwm : h->cap.max_leases;
        for (uint32_t i = 0; i < hwm && *n < max; i++) {
                struct ds_lease *l = &h->leases[i];
                if (atomic_load(&l->state) == DS_LEASE_DRAINING &&
                    atomic_load(&l->backend_start) == 0)
                        pids[(*n)++] = atomic_load(&l->backend_pid);
        }
        ds_unlock(h);
        return 0;
}

int ds_drain_gone(ds_handle *h, const int32_t *pids, size_t n)
{
        int rc = ds_lock(h);
        if (rc)
                return rc;
        struct ds_header *H = h->hdr;
        uint32_t hwm = H->lease_hwm <= h->cap.max_leases ? H->lease_hwm : h->cap.max_leases;
        int freed = 0;
        for (uint32_t i = 0; i < hwm; i++) {
                struct ds_lease *l = &h->leases[i];
                if (atomic_load(&l->state) != DS_LEASE_DRAINING ||
                    atomic_load(&l->backend_start) != 0)
                        continue;
                int32_t pid = atomic_load(&l->backend_pid);
                for (size_t k = 0; k < n; k++) {
                        if (pids[k] == pid) {
                                end_drain(h, i);
                                freed++;
                                break;
                        }
                }
        }
        if (freed) {
                uint64_t now = ds_now_ns();
                recompute_limits(h, now);
                grant_waiters(h, now, -1);
        }
        ds_unlock(h);
        return freed;
}

int ds_reclaim(ds_handle *h)
{
        int rc = ds_lock(h);
        if (rc)
                return rc;
        uint64_t now = ds_now_ns();
        int n = sweep_dead(h);
        recompute_limits(h, now);
        grant_waiters(h, now, -1);
        ds_unlock(h);
        return n;
}

void ds_detach(ds_handle *h)
{
        if (!h)
                return;
        track_handle(h, 0);
        if (handle_pid(h) != 0 && handle_pid(h) == self_pid()) {
                if (ds_lock(h) == 0) {
                        if (h->procs[h->proc_idx].pid == handle_pid(h)) {
                                drop_proc(h, h->proc_idx, 0);
                                uint64_t now = ds_now_ns();
                                recompute_limits(h, now);
                                grant_waiters(h, now, -1);
                        }
                        ds_unlock(h);
                }
                stop_life(h);
        }
        if (h->map)
                munmap(h->map, h->size);
        pthread_mutex_destroy(&h->local);
        free(h->pick);
        free(h);
}

int ds_get_config(ds_handle *h, struct ds_config *cfg)
{
        int rc = ds_lock(h);
        if (rc)
                return rc;
        *cfg = h->hdr->cfg;
        ds_unlock(h);
        return 0;
}

int ds_set_config(ds_handle *h, const struct ds_config *cfg, char *err, size_t errlen)
{
        char why[200];
        int rc = ds_config_validate(cfg, &h->cap, why, sizeof(why));
        if (rc) {
                ERR("%s", why);
                return rc;
        }
        if ((rc = ds_lock(h))) {
                ERR("could not lock segment %s: %s", h->name, strerror(-rc));
                return rc;
        }
        uint64_t now = ds_now_ns();
        struct ds_config c = *cfg;
        c.agent_proc = h->hdr->cfg.agent_proc; /* only ds_cluster_gate changes these */
        c.agent_pid = h->hdr->cfg.agent_pid;
        h->hdr->cfg = c;
        recompute_limits(h, now);
        grant_waiters(h, now, -1);
        ds_unlock(h);
        return 0;
}

int ds_cluster_gate(ds_handle *h, int on, struct ds_lease_ref *own)
{
        uint64_t now = now_coarse_ns();
        int rc = lock_registered(h, now);
        if (rc)
                return rc;
        struct ds_header *H = h->hdr;
        struct ds_config *c = &H->cfg;
        struct ds_proc *p = &h->procs[h->proc_idx];
        c->agent_proc = on ? h->proc_idx + 1 : 0;
        c->agent_pid = on ? handle_pid(h) : 0;
        if (on && own && p->scraper < h->cap.max_scrapers) {
                /* the agent's own slot, ahead of every waiter */
                long li = H->held < c->pool_size ? new_lease(h, p, now) : -EAGAIN;
                if (li >= 0) {
                        mark_held(h, p, &h->scrapers[p->scraper], &h->leases[li]);
                        own->idx = (uint32_t)li;
                        own->id = h->leases[li].id;
                }
                rc = li >= 0 ? 0 : (int)li;
        }
        recompute_limits(h, now);
        grant_waiters(h, ds_now_ns(), -1);
        ds_unlock(h);
        return rc;
}

int ds_cluster_agent(ds_handle *h)
{
        int rc = ds_lock(h);
        if (rc)
                return rc;
        int r = h->hdr->cfg.agent_proc == 0 ? 0 : agent_alive(h) ? 1 : 2;
        ds_unlock(h);
        return r;
}

/* The record named name, or -1 (under the lock). */
static long lookup_scraper(ds_handle *h, const char *name)
{
        uint32_t shwm =
            h->hdr->scraper_hwm <= h->cap.max_scrapers ? h->hdr->scraper_hwm : h->cap.max_scrapers;
        for (uint32_t i = 0; i < shwm; i++)
                if (h->scrapers[i].name[0] && strncmp(h->scrapers[i].name, name, DS_NAME_MAX) == 0)
                        return i;
        return -1;
}

/* One scraper's overrides as an update would leave them. */
struct staged {
        char name[DS_NAME_MAX];
        struct ds_override ov;
        long idx;    /* its record, -1 if none yet */
        int created; /* 1: its record was created by this update */
};

static struct staged *stage(ds_handle *h, struct staged *st, size_t *n, const char *name)
{
        for (size_t i = 0; i < *n; i++)
                if (strcmp(st[i].name, name) == 0)
                        return &st[i];
        struct staged *e = &st[(*n)++];
        snprintf(e->name, sizeof(e->name), "%s", name);
        e->idx = lookup_scraper(h, name);
        if (e->idx >= 0)
                e->ov = h->scrapers[e->idx].ov;
        else
                memset(&e->ov, 0, sizeof(e->ov));
        return e;
}

/* Parses and applies every pair to cfg and the staged overrides (under the
 * lock); validates the result as a whole. */
static int stage_update(ds_handle *h, const char *const *set, size_t nset, const char *const *unset,
                        size_t nunset, struct ds_config *cfg, struct staged *st, size_t *nst,
                        char *why, size_t whylen)
{
        char name[DS_NAME_MAX];
        uint32_t field;
        int rc;
        for (size_t i = 0; i < nset; i++) {
                const char *kv = set[i], *eq = kv ? strchr(kv, '=') : NULL;
                rc = eq ? ds_override_parse_key(kv, (size_t)(eq - kv), 0, name, &field, why, whylen)
                        : -ENOENT;
                if (rc == -ENOENT)
                        rc = ds_config_set_kv(cfg, kv, why, whylen);
                else if (rc == 0)
                        rc = ds_override_set(&stage(h, st, nst, name)->ov, field, name, eq + 1, why,
                                             whylen);
                if (rc)
                        return rc;
        }
        for (size_t i = 0; i < nunset; i++) {
                const char *k = unset[i] ? unset[i] : "";
                rc = ds_override_parse_key(k, strlen(k), 1, name, &field, why, whylen);
                if (rc == -ENOENT) {
                        snprintf(why, whylen,
                                 "'%s' cannot be unset: only scraper settings can "
                                 "(scraper.NAME or scraper.NAME.KEY)",
                                 k);
                        return -EINVAL;
                }
                if (rc)
                        return rc;
                struct ds_override *ov = &stage(h, st, nst, name)->ov;
                ov->flags &= ~field;
                if (field & DS_OV_MAX)
                        ov->max = 0;
                if (field & DS_OV_RESERVE)
                        ov->reserve = 0;
                if (field & DS_OV_WEIGHT)
                        ov->weight_milli = 0;
                if (field & DS_OV_IDLE_RELEASE)
                        ov->idle_release = 0;
        }
        if ((rc = ds_config_validate(cfg, &h->cap, why, whylen)))
                return rc;
        uint64_t reserves = 0;
        for (size_t i = 0; i < *nst; i++) {
                if ((rc = ds_override_validate(&st[i].ov, st[i].name, why, whylen)))
                        return rc;
                reserves += ds_override_reserve(&st[i].ov);
        }
        uint32_t shwm =
            h->hdr->scraper_hwm <= h->cap.max_scrapers ? h->hdr->scraper_hwm : h->cap.max_scrapers;
        for (uint32_t i = 0; i < shwm; i++) {
                int staged = 0;
                for (size_t j = 0; j < *nst; j++)
                        staged |= st[j].idx == (long)i;
                if (h->scrapers[i].name[0] && !staged)
                        reserves += ds_override_reserve(&h->scrapers[i].ov);
        }
        if (reserves >= cfg->pool_size) {
                snprintf(why, whylen,
                         "the reserves of all scrapers would add up to %llu, which must stay "
                         "below pool_size %u",
                         (unsigned long long)reserves, cfg->pool_size);
                return -EINVAL;
        }
        return 0;
}

int ds_update(ds_handle *h, const char *const *set, size_t nset, const char *const *unset,
              size_t nunset, struct ds_config *out, char *err, size_t errlen)
{
        char why[300] = "";
        struct staged *st = calloc(nset + nunset + 1, sizeof(*st));
        if (!st) {
                ERR("out of memory");
                return -ENOMEM;
        }
        size_t nst = 0;
        int rc = ds_lock(h);
        if (rc) {
                ERR("could not lock segment %s: %s", h->name, strerror(-rc));
                free(st);
                return rc;
        }
        struct ds_header *H = h->hdr;
        struct ds_config cfg = H->cfg;
        uint64_t now = ds_now_ns();
        rc = stage_update(h, set, nset, unset, nunset, &cfg, st, &nst, why, sizeof(why));
        /* create the records named for the first time; undone on failure */
        for (size_t i = 0; rc == 0 && i < nst; i++) {
                if (st[i].idx >= 0 || st[i].ov.flags == 0)
                        continue;
                long idx = find_scraper(h, st[i].name, now);
                if (idx < 0) {
                        snprintf(why, sizeof(why),
                                 "no room for scraper \"%s\": the segment remembers at most %u "
                                 "scrapers and every record is in use",
                                 st[i].name, h->cap.max_scrapers);
                        rc = -ENOSPC;
                        break;
                }
                st[i].idx = idx;
                st[i].created = 1;
                /* not recyclable by the next creation of this update */
                h->scrapers[idx].ov = st[i].ov;
        }
        if (rc) {
                for (size_t i = 0; i < nst; i++)
                        if (st[i].created)
                                memset(&h->scrapers[st[i].idx], 0, sizeof(struct ds_scraper));
                while (H->scraper_hwm > 0 && !h->scrapers[H->scraper_hwm - 1].name[0])
                        H->scraper_hwm--;
                ERR("%s", why);
                goto out;
        }
        H->cfg = cfg;
        for (size_t i = 0; i < nst; i++)
                if (st[i].idx >= 0)
                        h->scrapers[st[i].idx].ov = st[i].ov;
        recompute_limits(h, now);
        grant_waiters(h, now, -1);
        notify_surplus(h);
        if (out)
                *out = cfg;
out:
        ds_unlock(h);
        free(st);
        return rc;
}

int ds_update_config(ds_handle *h, const char *const *pairs, size_t n, struct ds_config *out,
                     char *err, size_t errlen)
{
        return ds_update(h, pairs, n, NULL, 0, out, err, errlen);
}

/* ---- statistics and checks ---- */

static int by_name(const void *a, const void *b)
{
        return strcmp(((const struct ds_scraper_stats *)a)->name,
                      ((const struct ds_scraper_stats *)b)->name);
}

int ds_stats_get(ds_handle *h, struct ds_stats *out)
{
        memset(out, 0, sizeof(*out));
        struct ds_scraper_stats *v = calloc(h->cap.max_scrapers, sizeof(*v));
        uint32_t *parked = calloc(h->cap.max_scrapers, sizeof(*parked));
        int rc = v && parked ? ds_lock(h) : -ENOMEM;
        if (rc) {
                free(v);
                free(parked);
                return rc;
        }
        struct ds_header *H = h->hdr;
        uint64_t now = ds_now_ns();
        sweep_dead(h);
        recompute_limits(h, now);
        grant_waiters(h, now, -1);
        out->cfg = H->cfg;
        out->agent_state = H->cfg.agent_proc == 0 ? 0 : agent_alive(h) ? 1 : 2;
        out->cap = h->cap;
        out->held = H->held;
        out->draining = H->draining;
        out->waiting = H->waiting;
        out->n_active = H->n_active;
        out->grants = H->grants;
        out->peak_held = H->peak_held;
        out->repairs = H->repairs;
        out->reclaimed_procs = H->reclaimed_procs;
        out->generation = H->generation;
        out->segment_size = h->size;
        uint32_t phwm = H->proc_hwm <= h->cap.max_procs ? H->proc_hwm : h->cap.max_procs;
        for (uint32_t i = 0; i < phwm; i++)
                out->procs += h->procs[i].pid != 0;
        for (uint32_t i = 0; i < phwm; i++) {
                const struct ds_proc *p = &h->procs[i];
                uint32_t n = atomic_load(&p->parked);
                if (p->pid != 0 && p->scraper < h->cap.max_scrapers)
                        parked[p->scraper] += n < p->held ? n : p->held;
        }
        size_t n = 0;
        uint32_t shwm =
            H->scraper_hwm <= h->cap.max_scrapers ? H->scraper_hwm : h->cap.max_scrapers;
        for (uint32_t i = 0; i < shwm; i++) {
                const struct ds_scraper *s = &h->scrapers[i];
                if (!s->name[0])
                        continue;
                struct ds_scraper_stats *o = &v[n++];
                memcpy(o->name, s->name, DS_NAME_MAX);
                o->name[DS_NAME_MAX - 1] = '\0';
                o->active = (int)s->active;
                o->held = s->held, o->limit = s->limit, o->waiting = s->waiting,
                o->procs = s->procs;
                o->connects = s->connects, o->releases = s->releases;
                o->idle_releases = s->idle_releases, o->surplus_releases = s->surplus_releases;
                o->reconnects = s->reconnects, o->reclaimed = s->reclaimed;
                o->reuses = s->reuses;
                o->timeouts = s->timeouts, o->waits = s->waits;
                o->wait_ns_total = s->wait_ns_total, o->wait_ns_max = s->wait_ns_max;
                o->handovers = s->handovers, o->deadlocks = s->deadlocks;
                o->ov = s->ov;
                o->claimed = s->claimed;
                o->idle_release = (int)ds_override_idle_release(&s->ov, &H->cfg);
                o->parked = parked[i];
        }
        free(parked);
        ds_unlock(h);
        qsort(v, n, sizeof(*v), by_name);
        out->scrapers = v;
        out->n_scrapers = n;
        return 0;
}

void ds_stats_free(struct ds_stats *s)
{
        free(s->scrapers);
        s->scrapers = NULL;
        s->n_scrapers = 0;
}

int ds_check(ds_handle *h, char *why, size_t whylen)
{
#define FAIL(...)                                                                                  \
        do {                                                                                       \
                if (why)                                                                           \
                        snprintf(why, whylen, __VA_ARGS__);                                        \
                rc = -EPROTO;                                                                      \
                goto out;                                                                          \
        } while (0)
        const struct ds_capacity *c = &h->cap;
        uint32_t *sh = calloc(c->max_scrapers, sizeof(uint32_t) * 2);
        uint32_t *ph = calloc(c->max_procs, sizeof(uint32_t) * 2);
        int rc = (!sh || !ph) ? -ENOMEM : ds_lock(h);
        if (rc) {
                free(sh);
                free(ph);
                return rc;
        }
        struct ds_header *H = h->hdr;
        uint32_t held = 0, waiting = 0, draining = 0;
        if (H->draining && reap_draining(h, ds_now_ns())) {
                uint64_t now = ds_now_ns();
                recompute_limits(h, now);
                grant_waiters(h, now, -1);
        }
        if (H->lease_hwm > c->max_leases || H->proc_hwm > c->max_procs ||
            H->scraper_hwm > c->max_scrapers)
                FAIL("table bounds out of range (%u/%u/%u)", H->lease_hwm, H->proc_hwm,
                     H->scraper_hwm);
        uint64_t reserves = 0;
        for (uint32_t i = 0; i < c->max_scrapers; i++) {
                if (memchr(h->scrapers[i].name, 0, DS_NAME_MAX) == NULL)
                        FAIL("scraper %u has an unterminated name", i);
                char ovwhy[160];
                if (ds_override_validate(&h->scrapers[i].ov, h->scrapers[i].name, ovwhy,
                                         sizeof(ovwhy)))
                        FAIL("%s", ovwhy);
                reserves += ds_override_reserve(&h->scrapers[i].ov);
        }
        if (reserves >= H->cfg.pool_size)
                FAIL("the reserves of all scrapers add up to %llu, not below pool_size %u",
                     (unsigned long long)reserves, H->cfg.pool_size);
        for (uint32_t i = 0; i < c->max_procs; i++) {
                const struct ds_proc *p = &h->procs[i];
                if (p->pid == 0)
                        continue;
                if (i >= H->proc_hwm)
                        FAIL("process %u (pid %d) is above the table bound %u", i, p->pid,
                             H->proc_hwm);
                if (p->scraper >= c->max_scrapers || !h->scrapers[p->scraper].name[0])
                        FAIL("process %u (pid %d) names scraper %u, which does not exist", i,
                             p->pid, p->scraper);
        }
        for (uint32_t i = 0; i < c->max_leases; i++) {
                const struct ds_lease *l = &h->leases[i];
                uint32_t st = atomic_load(&l->state);
                if (st == DS_LEASE_FREE)
                        continue;
                if (st != DS_LEASE_HELD && st != DS_LEASE_WAITING && st != DS_LEASE_DRAINING)
                        FAIL("lease %u has an invalid state %u", i, st);
                if (i >= H->lease_hwm)
                        FAIL("lease %u is above the table bound %u", i, H->lease_hwm);
                if (st == DS_LEASE_DRAINING) {
                        if (atomic_load(&l->backend_pid) <= 0)
                                FAIL("lease %u drains without a backend", i);
                        draining++, held++;
                        continue;
                }
                if (l->proc >= c->max_procs || h->procs[l->proc].pid == 0)
                        FAIL("lease %u belongs to process record %u, which is not in use", i,
                             l->proc);
                if (l->scraper >= c->max_scrapers || l->scraper != h->procs[l->proc].scraper)
                        FAIL("lease %u names scraper %u, not its process's", i, l->scraper);
                int w = st == DS_LEASE_WAITING;
                sh[l->scraper * 2 + w]++;
                ph[l->proc * 2 + w]++;
                if (w)
                        waiting++;
                else
                        held++;
        }
        if (held != H->held || waiting != H->waiting)
                FAIL("pool counters say %u held/%u waiting, the lease table %u/%u", H->held,
                     H->waiting, held, waiting);
        if (draining != H->draining)
                FAIL("the pool counts %u draining slots, the lease table %u", H->draining,
                     draining);
        for (uint32_t i = 0; i < c->max_scrapers; i++) {
                const struct ds_scraper *s = &h->scrapers[i];
                if (s->held != sh[i * 2] || s->waiting != sh[i * 2 + 1])
                        FAIL(
                            "scraper \"%s\" counters say %u held/%u waiting, the lease table %u/%u",
                            s->name, s->held, s->waiting, sh[i * 2], sh[i * 2 + 1]);
        }
        for (uint32_t i = 0; i < c->max_procs; i++) {
                const struct ds_proc *p = &h->procs[i];
                if (p->pid && (p->held != ph[i * 2] || p->waiting != ph[i * 2 + 1]))
                        FAIL("process %d counters say %u held/%u waiting, the lease table %u/%u",
                             p->pid, p->held, p->waiting, ph[i * 2], ph[i * 2 + 1]);
        }
        rc = 0;
out:
        ds_unlock(h);
        free(sh);
        free(ph);
        return rc;
#undef FAIL
}

/* ---- release advice (idle and surplus release) ---- */

/* Connects waiting that could be served but for a full pool, at most as
 * many per scraper as its limit leaves room for; with free slots, those of
 * scrapers short of their claimed reserve, which only others' slots can
 * serve (under the lock, after a grant pass). */
static uint32_t count_starved(ds_handle *h)
{
        struct ds_header *H = h->hdr;
        int full = H->held >= H->cfg.pool_size;
        uint32_t n = 0;
        uint32_t shwm =
            H->scraper_hwm <= h->cap.max_scrapers ? H->scraper_hwm : h->cap.max_scrapers;
        for (uint32_t i = 0; i < shwm; i++) {
                const struct ds_scraper *s = &h->scrapers[i];
                if (s->waiting)
                        n += ds_policy_starved(full, s->held, s->limit, s->claimed, s->waiting);
        }
        return n;
}

/* The sum of the active scrapers' weights (under the lock). */
static uint64_t active_weight_sum(ds_handle *h)
{
        struct ds_header *H = h->hdr;
        uint64_t w = 0;
        uint32_t shwm =
            H->scraper_hwm <= h->cap.max_scrapers ? H->scraper_hwm : h->cap.max_scrapers;
        for (uint32_t i = 0; i < shwm; i++)
                if (h->scrapers[i].name[0] && h->scrapers[i].active)
                        w += ds_override_weight(&h->scrapers[i].ov);
        return w;
}

/* With the pool full: connects waiting of active scrapers below their fair
 * share, at most as many per scraper as its share leaves room for (under
 * the lock). */
static uint32_t count_below_fair(ds_handle *h, uint64_t wsum)
{
        struct ds_header *H = h->hdr;
        if (H->held < H->cfg.pool_size)
                return 0;
        uint32_t n = 0;
        uint32_t shwm =
            H->scraper_hwm <= h->cap.max_scrapers ? H->scraper_hwm : h->cap.max_scrapers;
        for (uint32_t i = 0; i < shwm; i++) {
                const struct ds_scraper *s = &h->scrapers[i];
                if (!s->waiting || !s->active)
                        continue;
                uint32_t fair =
                    ds_policy_fair_share(H->cfg.pool_size, ds_override_weight(&s->ov), wsum);
                n += ds_policy_below_fair(s->held, s->limit, fair, s->waiting);
        }
        return n;
}

/* Asks the processes of scrapers above their limit (with idle release on)
 * to look at their advice now, when others starve (under the lock). */
static void notify_surplus(ds_handle *h)
{
        struct ds_header *H = h->hdr;
        int starved = count_starved(h) > 0;
        uint64_t wsum = active_weight_sum(h);
        int below_fair = count_below_fair(h, wsum) > 0;
        if (!starved && !below_fair)
                return;
        uint32_t phwm = H->proc_hwm <= h->cap.max_procs ? H->proc_hwm : h->cap.max_procs;
        for (uint32_t i = 0; i < phwm; i++) {
                struct ds_proc *p = &h->procs[i];
                if (p->pid == 0 || p->held == 0 || p->scraper >= h->cap.max_scrapers)
                        continue;
                const struct ds_scraper *s = &h->scrapers[p->scraper];
                if (!ds_override_idle_release(&s->ov, &H->cfg))
                        continue;
                uint32_t fair =
                    ds_policy_fair_share(H->cfg.pool_size, ds_override_weight(&s->ov), wsum);
                if (ds_policy_owes(s->held, s->limit, fair, s->surplus_pending, (int)s->active,
                                   starved, below_fair))
                        poke_proc(p);
        }
}

/* Asks every process with parked connections to look at its advice now:
 * a connect waits, and parked connections are the first to go (under the
 * lock). */
static void notify_parked(ds_handle *h)
{
        struct ds_header *H = h->hdr;
        uint32_t phwm = H->proc_hwm <= h->cap.max_procs ? H->proc_hwm : h->cap.max_procs;
        for (uint32_t i = 0; i < phwm; i++) {
                struct ds_proc *p = &h->procs[i];
                if (p->pid != 0 && p->held > 0 && atomic_load(&p->parked) > 0)
                        poke_proc(p);
        }
}

/* Asks the processes whose release would serve a waiting connect
 * (ds_policy_pick preferring their own scraper) to look at their advice
 * now: they hand over connections their threads are not using (under the
 * lock). */
static void notify_handover(ds_handle *h)
{
        struct ds_header *H = h->hdr;
        if (H->waiting == 0 || H->held == 0)
                return;
        uint32_t ns = fill_pick(h), cap = grant_cap(h), any = 0;
        for (uint32_t i = 0; i < ns; i++) {
                struct ds_pick_entry *e = &h->pick[i];
                h->scrapers[i].serves = 0;
                if (e->held == 0 || !ds_override_idle_release(&h->scrapers[i].ov, &H->cfg))
                        continue;
                e->held--;
                h->scrapers[i].serves =
                    ds_policy_pick(h->pick, h->reserve, ns, cap, H->held - 1, (long)i) >= 0;
                e->held++;
                any |= h->scrapers[i].serves;
        }
        if (!any)
                return;
        uint32_t phwm = H->proc_hwm <= h->cap.max_procs ? H->proc_hwm : h->cap.max_procs;
        for (uint32_t i = 0; i < phwm; i++) {
                struct ds_proc *p = &h->procs[i];
                if (p->pid != 0 && p->held > 0 && p->scraper < ns && h->scrapers[p->scraper].serves)
                        poke_proc(p);
        }
}

int ds_advise(ds_handle *h, struct ds_advice *out)
{
        memset(out, 0, sizeof(*out));
        if (handle_pid(h) != self_pid() || h->proc_idx >= h->cap.max_procs)
                return -EPERM;
        int rc = ds_lock(h);
        if (rc)
                return rc;
        struct ds_header *H = h->hdr;
        struct ds_proc *p = &h->procs[h->proc_idx];
        if (p->pid != handle_pid(h) || p->scraper >= h->cap.max_scrapers) {
                ds_unlock(h);
                return -ESTALE;
        }
        struct ds_scraper *s = &h->scrapers[p->scraper];
        uint64_t now = ds_now_ns();
        recompute_limits(h, now);
        enum ds_release_reason why;
        struct ds_config cfg = H->cfg;
        cfg.idle_release = ds_override_idle_release(&s->ov, &cfg);
        struct ds_activity act = activity_of(s);
        uint32_t n = ds_policy_give_back(&cfg, ds_policy_is_idle(&cfg, &act, now), s->held,
                                         s->limit, s->surplus_pending, count_starved(h), &why);
        if (n == 0 && s->active && cfg.idle_release) {
                uint64_t wsum = active_weight_sum(h);
                uint32_t fair =
                    ds_policy_fair_share(H->cfg.pool_size, ds_override_weight(&s->ov), wsum);
                n = ds_policy_give_back_fair(s->held, fair, s->surplus_pending,
                                             count_below_fair(h, wsum));
                if (n)
                        why = DS_RELEASE_SURPLUS;
        }
        if (n > p->held)
                n = p->held;
        if (why == DS_RELEASE_SURPLUS)
                s->surplus_pending += n;
        if (n == 0 && cfg.idle_release && H->waiting > 0 && p->held > 0) {
                uint32_t ns = fill_pick(h);
                n = ds_policy_handover(h->pick, h->reserve, ns, p->scraper, grant_cap(h), H->held,
                                       p->held);
                /* surplus slots promised already go to waiters too */
                uint32_t promised = 0;
                for (uint32_t i = 0; i < ns; i++)
                        promised += h->scrapers[i].surplus_pending;
                n = n > promised ? n - promised : 0;
                if (n)
                        why = DS_RELEASE_HANDOVER;
        }
        out->give_back = n;
        out->reason = n ? (int)why : DS_RELEASE_NORMAL;
        out->min_unused_ns = n ? ds_policy_min_unused_ns(&cfg, why) : 0;
        out->period_ms =
            ds_policy_advice_period_ms(&cfg, why == DS_RELEASE_HANDOVER || p->waiting > 0);
        out->active = (int)s->active;
        out->held = p->held;
        out->limit = s->limit;
        out->waiting = H->waiting;
        ds_unlock(h);
        return 0;
}

void ds_advice_unused(ds_handle *h, uint32_t n)
{
        if (n == 0 || handle_pid(h) != self_pid() || ds_lock(h) != 0)
                return;
        struct ds_proc *p = &h->procs[h->proc_idx];
        if (p->scraper < h->cap.max_scrapers) {
                struct ds_scraper *s = &h->scrapers[p->scraper];
                s->surplus_pending -= n < s->surplus_pending ? n : s->surplus_pending;
        }
        ds_unlock(h);
}

void ds_set_advice_handler(ds_handle *h, void (*fn)(void *), void *arg, uint32_t period_ms)
{
        atomic_store(&h->advice_arg, arg);
        atomic_store(&h->advice_period_ms, period_ms);
        atomic_store(&h->advice_fn, fn);
        if (handle_pid(h) == self_pid() && h->proc_idx < h->cap.max_procs)
                poke_proc(&h->procs[h->proc_idx]);
}

void ds_note_reconnect(ds_handle *h)
{
        if (handle_pid(h) != self_pid() || ds_lock(h) != 0)
                return;
        struct ds_proc *p = &h->procs[h->proc_idx];
        if (p->scraper < h->cap.max_scrapers)
                h->scrapers[p->scraper].reconnects++;
        ds_unlock(h);
}

void ds_note_parked(ds_handle *h, int delta, int reuse)
{
        if (handle_pid(h) != self_pid() || h->proc_idx >= h->cap.max_procs)
                return;
        struct ds_proc *p = &h->procs[h->proc_idx];
        if (delta > 0) {
                atomic_fetch_add(&p->parked, 1);
        } else {
                uint32_t v = atomic_load(&p->parked);
                while (v > 0 && !atomic_compare_exchange_weak(&p->parked, &v, v - 1))
                        ;
        }
        if (reuse && ds_lock(h) == 0) {
                if (p->scraper < h->cap.max_scrapers)
                        h->scrapers[p->scraper].reuses++;
                ds_unlock(h);
        }
}

uint32_t ds_waiting_now(ds_handle *h)
{
        return __atomic_load_n(&h->hdr->waiting, __ATOMIC_RELAXED);
}

void ds_inflight_add(ds_handle *h, int delta)
{
        if (handle_pid(h) != self_pid() || h->proc_idx >= h->cap.max_procs)
                return;
        struct ds_proc *p = &h->procs[h->proc_idx];
        if (p->scraper >= h->cap.max_scrapers)
                return;
        _Atomic uint32_t *c = &p->inflight, *sc = &h->scrapers[p->scraper].inflight;
        if (delta > 0) {
                atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
                atomic_fetch_add_explicit(sc, 1, memory_order_relaxed);
                return;
        }
        /* an unmatched end (a call begun before registration) is ignored */
        uint32_t v = atomic_load_explicit(c, memory_order_relaxed);
        while (v > 0) {
                if (atomic_compare_exchange_weak_explicit(c, &v, v - 1, memory_order_relaxed,
                                                          memory_order_relaxed)) {
                        atomic_fetch_sub_explicit(sc, 1, memory_order_relaxed);
                        break;
                }
        }
}
