/* policy.h - the pool's rules as pure functions: limits, activity, and who
 * gets a freed slot. No shared memory, no system calls: unit tested alone. */
#ifndef DYNSHIM_POLICY_H
#define DYNSHIM_POLICY_H

#include <stddef.h>
#include <stdint.h>

#include "dynshim/config.h"

/* The limit of an active scraper when n_active scrapers are active:
 * max_limit alone, soft_limit with two or more; never above
 * pool_size. n_active of 0 is treated as 1 (the asker is active). */
uint32_t ds_policy_limit(const struct ds_config *cfg, uint32_t n_active);

/* What a scraper's state depends on. */
struct ds_activity {
        uint32_t waiting;          /* connects waiting for a slot */
        uint32_t inflight;         /* libpq calls in flight */
        uint32_t procs;            /* live processes registered under it */
        uint32_t held;             /* slots it holds */
        uint64_t last_activity_ns; /* its newest libpq activity; 0: never */
};

/* 1 if a scraper is active at now_ns, for computing limits: a connect
 * waiting (demand), a call in flight, or activity within idle_timeout. A
 * scraper with no process, nothing held and nothing waiting is idle at
 * once, whatever its last activity. */
int ds_policy_is_active(const struct ds_config *cfg, const struct ds_activity *a, uint64_t now_ns);

/* 1 if a scraper's connections are idle at now_ns, for idle release: no
 * call in flight and no activity within idle_timeout. A connect waiting is
 * demand, not activity: it never keeps the scraper's unused connections
 * from being released. */
int ds_policy_is_idle(const struct ds_config *cfg, const struct ds_activity *a, uint64_t now_ns);

/* What the grant decision needs to know of one scraper. */
struct ds_pick_entry {
        uint32_t held;          /* slots it holds */
        uint32_t limit;         /* its current limit */
        uint32_t waiting;       /* connects it has waiting */
        uint64_t oldest_ticket; /* arrival order of its oldest waiter */
};

/* 1 if one more slot may be granted to a scraper holding scraper_held of
 * limit, with held_total of pool_size in use, when other scrapers' claimed
 * reserves are still unfilled_others slots short: the grant may not take a
 * slot set aside for them: below pool_size with them counted, and below
 * its own limit. */
int ds_policy_may_grant_reserved(uint32_t pool_size, uint32_t held_total, uint32_t unfilled_others,
                                 uint32_t scraper_held, uint32_t limit);

/* 1 if a should be served before b: a smaller share of its limit
 * (held/limit), or an equal share and an older waiter. */
int ds_policy_prefer(const struct ds_pick_entry *a, const struct ds_pick_entry *b);

/* ds_policy_prefer with the reserves a and b claim (ra, rb; 0: none): a
 * scraper below its reserve goes first (the smaller share of its reserve,
 * then the older waiter); between others, ds_policy_prefer. */
int ds_policy_prefer_reserved(const struct ds_pick_entry *a, uint32_t ra,
                              const struct ds_pick_entry *b, uint32_t rb);

/* The scraper that gets the next free slot, of the n entries at e, with
 * held_total of cap slots in use (cap: pool_size, or what a cluster host may
 * hold) and reserve[i] the reserve entry i claims (NULL: none). With prefer
 * >= 0 and that entry eligible, prefer (a handover goes first to a waiter
 * of the releasing scraper, whose share it does not change). Else, among
 * the entries with a waiter, below their limit and not taking a slot set
 * aside for another's unfilled reserve (ds_policy_may_grant_reserved), the
 * first by ds_policy_prefer_reserved: the one holding the smallest share
 * of its limit, ties to the oldest waiter. Returns its index, or -1 when no
 * slot may be granted (pool full or nobody eligible). */
long ds_policy_pick(const struct ds_pick_entry *e, const uint32_t *reserve, size_t n, uint32_t cap,
                    uint32_t held_total, long prefer);

/* Handover: while connects wait, a connection its process has not used for
 * handover_delay is capacity. How many of entry self's slots (at most max)
 * would each go to a waiter if released now, one after the other, by
 * ds_policy_pick preferring self. e is scratch: its held and waiting are
 * left as those grants would leave them. */
uint32_t ds_policy_handover(struct ds_pick_entry *e, const uint32_t *reserve, size_t n, size_t self,
                            uint32_t cap, uint32_t held_total, uint32_t max);

/* Of two waiting connects of one scraper, 1 if a (ticket, holds) goes
 * before b: first come first served, except that a connect whose thread
 * holds a connection it cannot give back (an open transaction) goes before
 * one whose thread holds none, since serving it lets it finish and free
 * both. */
int ds_policy_lease_first(uint64_t a_ticket, int a_holds, uint64_t b_ticket, int b_holds);

/* Hold-and-wait. One attached process, for ds_policy_deadlock. */
struct ds_wait_proc {
        uint32_t scraper; /* index of its scraper entry */
        uint32_t held;    /* slots it holds */
        uint32_t holders; /* its waiting connects whose thread holds one of
                             those slots and cannot give it back */
};

#define DS_DEADLOCK_NONE (-2L)
#define DS_DEADLOCK_POOL (-1L)

/* Whether the waiters are deadlocked: every slot they could be granted is
 * held by threads that are themselves waiting and cannot give theirs back,
 * so no release can come. DS_DEADLOCK_POOL: the pool is full (held_total
 * >= cap, nothing draining) and every process that holds a slot holds only
 * slots of waiting threads. i >= 0: scraper entry s[i] has a waiter, is at
 * its limit, and every one of its processes that holds a slot holds only
 * slots of waiting threads. Else DS_DEADLOCK_NONE. The caller breaks a
 * deadlock that lasts deadlock_timeout by failing the newest waiting
 * connect whose thread holds a slot in the deadlocked set. */
long ds_policy_deadlock(const struct ds_wait_proc *p, size_t np, const struct ds_pick_entry *s,
                        size_t ns, uint32_t cap, uint32_t held_total, uint32_t draining);

enum ds_release_reason {
        DS_RELEASE_NORMAL = 0,   /* the program finished the connection */
        DS_RELEASE_IDLE = 1,     /* the scraper was idle for idle_timeout */
        DS_RELEASE_SURPLUS = 2,  /* above its limit while others wait */
        DS_RELEASE_HANDOVER = 3, /* unused while a connect waits: goes to a waiter */
};

/* A scraper's fair share of a full pool: pool_size split by weight among
 * the active scrapers (weight_sum, its own weight included), rounded up. */
uint32_t ds_policy_fair_share(uint32_t pool_size, uint32_t weight, uint64_t weight_sum);

/* How many of a scraper's waiting connects are starved: with the pool
 * full, those its limit leaves room for (they could be served but for the
 * full pool); with slots free, those its unfilled claimed reserve leaves
 * room for (only others' slots can serve them). */
uint32_t ds_policy_starved(int pool_full, uint32_t held, uint32_t limit, uint32_t claimed,
                           uint32_t waiting);

/* How many of an active scraper's waiting connects wait below its fair
 * share (fair, at most its limit), with the pool full. */
uint32_t ds_policy_below_fair(uint32_t held, uint32_t limit, uint32_t fair, uint32_t waiting);

/* 1 if a scraper holding held (with pending slots already promised) owes
 * the pool slots now and should be asked at once: above its limit while
 * connects starve, or, active, above its fair share while connects wait
 * below theirs. */
int ds_policy_owes(uint32_t held, uint32_t limit, uint32_t fair, uint32_t pending, int active,
                   int starved, int below_fair);

/* When limits add up to more than the pool (three active scrapers with
 * soft_limit 10 in a pool of 20), scrapers that reached their limits
 * first could keep a late one out for good, the pool being full. So an
 * active scraper above its fair share gives back what it holds beyond it,
 * at most as many as the waiting connects of scrapers below their fair
 * shares (below), less the surplus already promised (pending). */
uint32_t ds_policy_give_back_fair(uint32_t held, uint32_t fair, uint32_t pending, uint32_t below);

/* How many slots a scraper should give back now, and why: everything it
 * holds when idle release is on and it is idle (ds_policy_is_idle); else its
 * surplus above its limit, but no more than other scrapers' connects are
 * starved (waiting, below their limit, with the pool full), less what its
 * processes already promised; else 0. Nothing with idle release off. */
uint32_t ds_policy_give_back(const struct ds_config *cfg, int idle, uint32_t held, uint32_t limit,
                             uint32_t pending, uint32_t starved, enum ds_release_reason *reason);

/* How long a connection must have gone without a call before a release
 * for reason may take it: half of idle_timeout for an idle release (the
 * scraper's activity reaches the pool up to a period late), handover_delay
 * for a handover and for a surplus. */
uint64_t ds_policy_min_unused_ns(const struct ds_config *cfg, enum ds_release_reason reason);

/* 1 if a release may take a connection unused for unused_ns when the
 * release wants min_unused_ns. A connection just (re)connected, with no
 * call seen since (fresh), is never taken before it has gone a second
 * without a call, whatever is owed: the program is about to use it, and
 * its first calls may be ones it makes holding a lock of its own (psycopg2
 * reads the server's parameters under Python's GIL right after
 * connecting). A reconnect there would wait for a slot with that lock
 * held, while the program's other threads, which hold the slots that could
 * free one, wait for the lock. */
int ds_policy_may_take(uint64_t unused_ns, int fresh, uint64_t min_unused_ns);

/* The unused time a surplus release wants once it has been owed for
 * owed_ns: min_unused_ns at first; after a second, any connection no call
 * is inside, however recently used (0). A client-side pool that keeps all
 * its connections busy would otherwise never give one back, and the other
 * scrapers would wait until they time out; the connection's next use then
 * reconnects, and waits for a slot like any connect of a scraper above its
 * limit. */
uint64_t ds_policy_surplus_unused_ns(uint64_t min_unused_ns, uint64_t owed_ns);

/* How often a process that holds slots asks the pool for advice, in ms: a
 * quarter of idle_timeout (and of reuse_timeout with reuse on), at most a
 * second; half the handover delay while a connect of the pool waits that
 * its connections could serve (busy); never below 20 ms. */
uint32_t ds_policy_advice_period_ms(const struct ds_config *cfg, int busy);

/* ---- limits with per-scraper overrides (docs/configuration.md) ---- */

/* What a scraper's limit depends on, of the whole pool. */
struct ds_limit_ctx {
        uint32_t n_active;   /* active scrapers */
        uint64_t weight_sum; /* sum of the weights (thousandths) of the active ones */
        uint64_t claimed;    /* sum of the reserves claimed now */
};

/* 1 if a scraper with override ov claims its reserve now: it has one and is
 * active, or it has one and its idle release is off (a static allocation,
 * whose connections are never taken back, keeps its slots set aside). */
int ds_policy_claims_reserve(const struct ds_config *cfg, const struct ds_override *ov, int active);

/* The nominal limit of a scraper with override ov. An active one must be
 * counted in ctx (its weight in weight_sum, its claimed reserve in
 * claimed); an idle one is shown the limit it would get on waking, as if
 * counted (claimed_now: its reserve is already in ctx->claimed).
 *   base  = max_limit with one active scraper, soft_limit with two or more
 *   limit = round(base * w * n_active / weight_sum), at least 1
 *   then at most pool_size minus the reserves claimed by the others,
 *   at most its max, and at least its reserve.
 * Without overrides this is ds_policy_limit. */
uint32_t ds_policy_limit_for(const struct ds_config *cfg, const struct ds_limit_ctx *ctx,
                             const struct ds_override *ov, int active, int claimed_now);

/* 1 if a scraper is reserve-starved: it claims a reserve, holds less and
 * has a connect waiting. While any is, limits are strict (ds_policy_fill). */
int ds_policy_reserve_starved(uint32_t held, uint32_t waiting, uint32_t claimed);

/* One scraper in a strict division of the pool. */
struct ds_share {
        uint32_t floor;  /* at least this: its claimed reserve, and 1 */
        uint32_t cap;    /* at most this: its nominal limit */
        uint32_t weight; /* thousandths; 0: not part of the division */
        uint32_t alloc;  /* out: its strict limit (0 when weight is 0) */
};

/* Divides pool slots among the n entries (at e, e + stride bytes, ...) by
 * weight, each between its floor and its cap (water-filling: the largest
 * level t such that the sum of clamp(w * t, floor, cap) fits, the slots
 * left over going one each in entry order). The sum of alloc is at most
 * pool, unless the floors alone exceed it (then alloc = floor). */
void ds_policy_fill(struct ds_share *e, size_t n, size_t stride, uint32_t pool);

/* One scraper record for ds_policy_limits. */
struct ds_policy_scraper {
        struct ds_override ov; /* in: its overrides */
        uint32_t used;         /* in: 0 for a free record (ignored) */
        uint32_t active;       /* in: its state */
        uint32_t held;         /* in: slots it holds */
        uint32_t waiting;      /* in: connects it has waiting */
        uint32_t limit;        /* out: its limit */
        uint32_t claimed;      /* out: the reserve it claims (0: none) */
        struct ds_share share; /* scratch */
};

/* Every limit of a pool whose scrapers may have overrides, for the n
 * records at e, e + stride bytes, ... (docs/configuration.md):
 *  1. a scraper claims its reserve (at most its max) by
 *     ds_policy_claims_reserve;
 *  2. each gets ds_policy_limit_for;
 *  3. while one is reserve-starved (ds_policy_reserve_starved), the
 *     limits of the active ones become ds_policy_fill's strict division of
 *     pool_size (floors: claimed reserve and 1; caps: the limits of step 2;
 *     a claiming idle scraper takes its reserve out of the division).
 * Returns the claimed reserves still unfilled (sum of claimed - held where
 * positive): slots ds_policy_may_grant_reserved keeps for them. *pressure
 * (if not NULL) is set to 1 in case 3, else 0. Without overrides the limits
 * are ds_policy_limit's. */
uint32_t ds_policy_limits(const struct ds_config *cfg, struct ds_policy_scraper *e, size_t n,
                          size_t stride, int *pressure);

/* ---- a cluster of hosts sharing one connection budget (docs/cluster.md) ----
 *
 * Units: one unit is one server connection. A host's claim is its local
 * pool_size, whose slots its clients and its agent (one slot, for its own
 * connection to the server) hold. */

/* The least a live host is given: its agent's slot and one for a client. */
#define DS_CLUSTER_FLOOR 2u

/* One host of a cluster, as the agents see it in the server's table. */
struct ds_cluster_host {
        uint32_t live;         /* in: 1 if its agent holds its liveness lock */
        uint32_t claim;        /* in: units it holds in the budget now */
        uint32_t demand;       /* in: slots held + connects waiting (live hosts) */
        uint32_t target;       /* out: the claim it should have */
        struct ds_share share; /* scratch */
};

/* The claim each host should have, for the n hosts at h:
 *  - a host whose agent is gone keeps its claim (it is freed elsewhere,
 *    once the server shows its backends gone);
 *  - the live hosts divide what is left of budget max-min fairly by
 *    demand: each gets min(demand, level), at least DS_CLUSTER_FLOOR;
 *  - what is left when every demand is met is spread max-min over the live
 *    hosts as well (an idle host's share flows to busy ones on demand).
 * The targets of the live hosts plus the claims of the others add up to at
 * most budget, unless the floors alone exceed it (then target = floor).
 * A target may be below what a host holds now: the host lowers its pool
 * to it and gives the units back as its usage falls. */
void ds_policy_cluster_targets(struct ds_cluster_host *h, size_t n, uint32_t budget);

/* The claim a host may take now, towards target, in the transaction that
 * saw claimed_total units claimed by the whole cluster (its own included):
 * it grows only into unclaimed units; it never lowers its claim here (a
 * host gives units back only once its usage is below the new share). */
uint32_t ds_policy_cluster_grow(uint32_t budget, uint64_t claimed_total, uint32_t claim,
                                uint32_t target);

#endif
