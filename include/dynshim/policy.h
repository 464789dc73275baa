/* policy.h - the pool's rules as pure functions: limits, activity, and who
 * gets a freed slot. No shared memory, no system calls: unit tested alone. */
#ifndef DYNSHIM_POLICY_H
#define DYNSHIM_POLICY_H

#include <stddef.h>
#include <stdint.h>

#include "dynshim/config.h"

/* The limit of an active scraper when n_active scrapers are active
 * (SPEC 3): max_limit alone, soft_limit with two or more; never above
 * pool_size. n_active of 0 is treated as 1 (the asker is active). */
uint32_t ds_policy_limit(const struct ds_config *cfg, uint32_t n_active);

/* 1 if a scraper is active at now_ns: a call in flight, a connect waiting,
 * or activity within idle_timeout. last_activity_ns of 0 means never. */
int ds_policy_is_active(const struct ds_config *cfg, uint32_t waiting, uint32_t inflight,
                        uint64_t last_activity_ns, uint64_t now_ns);

/* What the grant decision needs to know of one scraper. */
struct ds_pick_entry {
        uint32_t held;          /* slots it holds */
        uint32_t limit;         /* its current limit */
        uint32_t waiting;       /* connects it has waiting */
        uint64_t oldest_ticket; /* arrival order of its oldest waiter */
};

/* 1 if one more slot may be granted to a scraper holding scraper_held of
 * limit, with held_total of pool_size in use (SPEC 4.2). */
int ds_policy_may_grant(uint32_t pool_size, uint32_t held_total, uint32_t scraper_held,
                        uint32_t limit);

/* 1 if a should be served before b: a smaller share of its limit
 * (held/limit), or an equal share and an older waiter. */
int ds_policy_prefer(const struct ds_pick_entry *a, const struct ds_pick_entry *b);

/* The scraper that gets the next free slot: among those with a waiter and
 * below their limit, the one holding the smallest share of its limit
 * (held/limit); ties go to the oldest waiter. Returns its index, or -1 when
 * no slot may be granted (pool full or nobody eligible). */
long ds_policy_pick(const struct ds_pick_entry *e, size_t n, uint32_t pool_size,
                    uint32_t held_total);

enum ds_release_reason {
        DS_RELEASE_NORMAL = 0,  /* the program finished the connection */
        DS_RELEASE_IDLE = 1,    /* the scraper was idle for idle_timeout */
        DS_RELEASE_SURPLUS = 2, /* above its limit while others wait */
};

/* How many slots a scraper should give back now (SPEC 4.5), and why:
 * everything it holds when idle release is on and it is idle; else its
  * surplus above its limit, but no more than other scrapers' connects are
 * starved (waiting, below their limit, with the pool full), less what its
 * processes already promised; else 0. Nothing with idle release off. */
uint32_t ds_policy_give_back(const struct ds_config *cfg, int active, uint32_t held, uint32_t limit,
                             uint32_t pending, uint32_t starved, enum ds_release_reason *reason);

#endif
