/* policy.c - the pool's rules as pure functions (see policy.h). */
#include "dynshim/policy.h"

uint32_t ds_policy_limit(const struct ds_config *cfg, uint32_t n_active)
{
        uint32_t limit = n_active <= 1 ? cfg->max_limit : cfg->soft_limit;
        return limit < cfg->pool_size ? limit : cfg->pool_size;
}

int ds_policy_is_active(const struct ds_config *cfg, uint32_t waiting, uint32_t inflight,
                        uint64_t last_activity_ns, uint64_t now_ns)
{
        if (waiting > 0 || inflight > 0)
                return 1;
        if (last_activity_ns == 0)
                return 0;
        if (now_ns <= last_activity_ns)
                return 1;
        return now_ns - last_activity_ns < (uint64_t)cfg->idle_timeout_ms * 1000000u;
}

int ds_policy_may_grant(uint32_t pool_size, uint32_t held_total, uint32_t scraper_held,
                        uint32_t limit)
{
        return held_total < pool_size && scraper_held < limit;
}

int ds_policy_prefer(const struct ds_pick_entry *a, const struct ds_pick_entry *b)
{
        uint64_t lhs = (uint64_t)a->held * b->limit;
        uint64_t rhs = (uint64_t)b->held * a->limit;
        if (lhs != rhs)
                return lhs < rhs;
        return a->oldest_ticket < b->oldest_ticket;
}

uint32_t ds_policy_give_back(const struct ds_config *cfg, int active, uint32_t held, uint32_t limit,
                             uint32_t pending, uint32_t starved, enum ds_release_reason *reason)
{
        *reason = DS_RELEASE_NORMAL;
        if (!cfg->idle_release || held == 0)
                return 0;
        if (!active) {
                *reason = DS_RELEASE_IDLE;
                return held;
        }
                if (held <= limit || starved == 0)
                return 0;
        /* the promised slots already go to starved connects */
        uint32_t want = held - limit < starved ? held - limit : starved;
        if (want <= pending)
                return 0;
        *reason = DS_RELEASE_SURPLUS;
        return want - pending;
}

long ds_policy_pick(const struct ds_pick_entry *e, size_t n, uint32_t pool_size,
                    uint32_t held_total)
{
        long best = -1;
        if (held_total >= pool_size)
                return -1;
        for (size_t i = 0; i < n; i++) {
                if (e[i].waiting == 0 ||
                    !ds_policy_may_grant(pool_size, held_total, e[i].held, e[i].limit))
                        continue;
                if (best < 0 || ds_policy_prefer(&e[i], &e[best]))
                        best = (long)i;
        }
        return best;
}
