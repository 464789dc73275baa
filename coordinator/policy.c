/* policy.c - the pool's rules as pure functions (see policy.h). */
#include "dynshim/policy.h"

uint32_t ds_policy_limit(const struct ds_config *cfg, uint32_t n_active)
{
        uint32_t limit = n_active <= 1 ? cfg->max_limit : cfg->soft_limit;
        return limit < cfg->pool_size ? limit : cfg->pool_size;
}

static int recently_used(const struct ds_config *cfg, const struct ds_activity *a, uint64_t now_ns)
{
        if (a->inflight > 0)
                return 1;
        if (a->last_activity_ns == 0)
                return 0;
        if (now_ns <= a->last_activity_ns)
                return 1;
        return now_ns - a->last_activity_ns < (uint64_t)cfg->idle_timeout_ms * 1000000u;
}

int ds_policy_is_active(const struct ds_config *cfg, const struct ds_activity *a, uint64_t now_ns)
{
        if (a->waiting > 0)
                return 1;
        if (a->procs == 0 && a->held == 0)
                return 0; /* nobody left to use it: idle at once */
        return recently_used(cfg, a, now_ns);
}

int ds_policy_is_idle(const struct ds_config *cfg, const struct ds_activity *a, uint64_t now_ns)
{
        return !recently_used(cfg, a, now_ns);
}

int ds_policy_may_grant_reserved(uint32_t pool_size, uint32_t held_total, uint32_t unfilled_others,
                                 uint32_t scraper_held, uint32_t limit)
{
        return (uint64_t)held_total + unfilled_others < pool_size && scraper_held < limit;
}

int ds_policy_prefer_reserved(const struct ds_pick_entry *a, uint32_t ra,
                              const struct ds_pick_entry *b, uint32_t rb)
{
        int a_short = a->held < ra, b_short = b->held < rb;
        if (a_short != b_short)
                return a_short;
        if (a_short) {
                uint64_t l = (uint64_t)a->held * rb, r = (uint64_t)b->held * ra;
                if (l != r)
                        return l < r;
                return a->oldest_ticket < b->oldest_ticket;
        }
        return ds_policy_prefer(a, b);
}

int ds_policy_prefer(const struct ds_pick_entry *a, const struct ds_pick_entry *b)
{
        uint64_t lhs = (uint64_t)a->held * b->limit;
        uint64_t rhs = (uint64_t)b->held * a->limit;
        if (lhs != rhs)
                return lhs < rhs;
        return a->oldest_ticket < b->oldest_ticket;
}

uint32_t ds_policy_give_back(const struct ds_config *cfg, int idle, uint32_t held, uint32_t limit,
                             uint32_t pending, uint32_t starved, enum ds_release_reason *reason)
{
        *reason = DS_RELEASE_NORMAL;
        if (!cfg->idle_release || held == 0)
                return 0;
        if (idle) {
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

uint64_t ds_policy_min_unused_ns(const struct ds_config *cfg, enum ds_release_reason reason)
{
        if (reason == DS_RELEASE_IDLE)
                return (uint64_t)cfg->idle_timeout_ms * 1000000ull / 2;
        if (reason == DS_RELEASE_HANDOVER || reason == DS_RELEASE_SURPLUS)
                return (uint64_t)cfg->handover_delay_ms * 1000000ull;
        return 0;
}

#define FRESH_UNUSED_NS      (1000ull * 1000 * 1000)
#define SURPLUS_ANY_AFTER_NS (1000ull * 1000 * 1000)

int ds_policy_may_take(uint64_t unused_ns, int fresh, uint64_t min_unused_ns)
{
        return unused_ns >= min_unused_ns && (!fresh || unused_ns >= FRESH_UNUSED_NS);
}

uint64_t ds_policy_surplus_unused_ns(uint64_t min_unused_ns, uint64_t owed_ns)
{
        return owed_ns >= SURPLUS_ANY_AFTER_NS ? 0 : min_unused_ns;
}

uint32_t ds_policy_advice_period_ms(const struct ds_config *cfg, int busy)
{
        uint32_t p = 1000;
        if (cfg->idle_timeout_ms / 4 < p)
                p = cfg->idle_timeout_ms / 4;
        if (cfg->reuse && cfg->reuse_timeout_ms / 4 < p)
                p = cfg->reuse_timeout_ms / 4;
        if (busy && cfg->handover_delay_ms / 2 < p)
                p = cfg->handover_delay_ms / 2;
        return p < 20 ? 20 : p;
}

uint32_t ds_policy_starved(int pool_full, uint32_t held, uint32_t limit, uint32_t claimed,
                           uint32_t waiting)
{
        uint32_t room = 0;
        if (pool_full && held < limit)
                room = limit - held;
        else if (!pool_full && held < claimed)
                room = claimed - held;
        return waiting < room ? waiting : room;
}

uint32_t ds_policy_below_fair(uint32_t held, uint32_t limit, uint32_t fair, uint32_t waiting)
{
        uint32_t cap = fair < limit ? fair : limit;
        if (held >= cap)
                return 0;
        return waiting < cap - held ? waiting : cap - held;
}

int ds_policy_owes(uint32_t held, uint32_t limit, uint32_t fair, uint32_t pending, int active,
                   int starved, int below_fair)
{
        return (starved && held > (uint64_t)limit + pending) ||
               (below_fair && active && held > (uint64_t)fair + pending);
}

uint32_t ds_policy_fair_share(uint32_t pool_size, uint32_t weight, uint64_t weight_sum)
{
        if (weight_sum == 0 || weight == 0)
                return pool_size;
        uint64_t f = ((uint64_t)pool_size * weight + weight_sum - 1) / weight_sum;
        return f > pool_size ? pool_size : (uint32_t)f;
}

uint32_t ds_policy_give_back_fair(uint32_t held, uint32_t fair, uint32_t pending, uint32_t below)
{
        if (held <= fair || below == 0)
                return 0;
        uint32_t want = held - fair < below ? held - fair : below;
        return want > pending ? want - pending : 0;
}

long ds_policy_pick(const struct ds_pick_entry *e, const uint32_t *reserve, size_t n, uint32_t cap,
                    uint32_t held_total, long prefer)
{
        long best = -1;
        uint64_t unfilled = 0;
#define R(i) (reserve ? reserve[i] : 0u)
        if (held_total >= cap)
                return -1;
        for (size_t i = 0; i < n; i++)
                if (e[i].held < R(i))
                        unfilled += R(i) - e[i].held;
        for (size_t i = 0; i < n; i++) {
                uint64_t own = e[i].held < R(i) ? R(i) - e[i].held : 0;
                uint64_t others = unfilled - own;
                if (e[i].waiting == 0 ||
                    !ds_policy_may_grant_reserved(
                        cap, held_total, others > UINT32_MAX ? UINT32_MAX : (uint32_t)others,
                        e[i].held, e[i].limit))
                        continue;
                if ((long)i == prefer)
                        return prefer;
                if (best < 0 || ds_policy_prefer_reserved(&e[i], R(i), &e[best], R(best)))
                        best = (long)i;
        }
        return best;
#undef R
}

uint32_t ds_policy_handover(struct ds_pick_entry *e, const uint32_t *reserve, size_t n, size_t self,
                            uint32_t cap, uint32_t held_total, uint32_t max)
{
        uint32_t k = 0;
        if (self >= n || held_total > cap)
                return 0;
        while (k < max && e[self].held > 0 && held_total > 0) {
                e[self].held--;
                long who = ds_policy_pick(e, reserve, n, cap, held_total - 1, (long)self);
                if (who < 0) {
                        e[self].held++;
                        break;
                }
                e[who].held++;
                e[who].waiting--;
                k++;
        }
        return k;
}

int ds_policy_lease_first(uint64_t a_ticket, int a_holds, uint64_t b_ticket, int b_holds)
{
        if (!a_holds != !b_holds)
                return a_holds != 0;
        return a_ticket < b_ticket;
}

/* 1 if every process of scraper entry `only` (or of any, with only < 0)
 * that holds a slot holds only slots of waiting threads; 0 if one holds a
 * slot that can still come back, or none holds any. */
static int all_held_by_waiters(const struct ds_wait_proc *p, size_t np, long only)
{
        int any = 0;
        for (size_t i = 0; i < np; i++) {
                if (p[i].held == 0 || (only >= 0 && p[i].scraper != (uint32_t)only))
                        continue;
                if (p[i].holders < p[i].held)
                        return 0;
                any = 1;
        }
        return any;
}

long ds_policy_deadlock(const struct ds_wait_proc *p, size_t np, const struct ds_pick_entry *s,
                        size_t ns, uint32_t cap, uint32_t held_total, uint32_t draining)
{
        int waiting = 0;
        for (size_t i = 0; i < ns; i++)
                waiting |= s[i].waiting > 0;
        if (!waiting || draining > 0)
                return DS_DEADLOCK_NONE;
        if (held_total >= cap && all_held_by_waiters(p, np, -1))
                return DS_DEADLOCK_POOL;
        for (size_t i = 0; i < ns; i++)
                if (s[i].waiting > 0 && s[i].held > 0 && s[i].held >= s[i].limit &&
                    all_held_by_waiters(p, np, (long)i))
                        return (long)i;
        return DS_DEADLOCK_NONE;
}

int ds_policy_claims_reserve(const struct ds_config *cfg, const struct ds_override *ov, int active)
{
        if (ds_override_reserve(ov) == 0)
                return 0;
        return active || !ds_override_idle_release(ov, cfg);
}

static uint64_t min64(uint64_t a, uint64_t b)
{
        return a < b ? a : b;
}

uint32_t ds_policy_limit_for(const struct ds_config *cfg, const struct ds_limit_ctx *ctx,
                             const struct ds_override *ov, int active, int claimed_now)
{
        uint64_t n = ctx->n_active, wsum = ctx->weight_sum, claimed = ctx->claimed;
        uint64_t w = ds_override_weight(ov), r = ds_override_reserve(ov), cap = ds_override_cap(ov);
        uint64_t pool = cfg->pool_size;
        if (!active) {
                n++;
                wsum += w;
                if (!claimed_now)
                        claimed += r;
        }
        if (n == 0)
                n = 1;
        if (wsum == 0)
                wsum = w;
        uint64_t base = min64(n <= 1 ? cfg->max_limit : cfg->soft_limit, pool);
        uint64_t limit = w * n == wsum ? base : (2 * base * w * n + wsum) / (2 * wsum);
        if (limit < 1)
                limit = 1;
        limit = min64(limit, pool);
        /* the reserves the others claim are not part of this scraper's room */
        uint64_t others = claimed > r ? claimed - r : 0;
        limit = min64(limit, others < pool ? pool - others : 1);
        limit = min64(limit, cap);
        uint64_t floor = min64(min64(r, cap), pool);
        if (limit < floor)
                limit = floor;
        return (uint32_t)limit;
}

int ds_policy_reserve_starved(uint32_t held, uint32_t waiting, uint32_t claimed)
{
        return waiting > 0 && held < claimed;
}

#define AT(e, i) ((struct ds_share *)((char *)(e) + (i)*stride))
#define PS(e, i) ((struct ds_policy_scraper *)((char *)(e) + (i)*stride))

static uint64_t share_at(const struct ds_share *s, uint64_t level)
{
        uint64_t floor = s->floor < s->cap ? s->floor : s->cap;
        uint64_t v = (uint64_t)s->weight * level / DS_WEIGHT_ONE;
        return v < floor ? floor : v > s->cap ? s->cap : v;
}

static uint64_t fill_sum(struct ds_share *e, size_t n, size_t stride, uint64_t level)
{
        uint64_t sum = 0;
        for (size_t i = 0; i < n; i++)
                if (AT(e, i)->weight)
                        sum += share_at(AT(e, i), level);
        return sum;
}

void ds_policy_fill(struct ds_share *e, size_t n, size_t stride, uint32_t pool)
{
        uint64_t hi = 0;
        for (size_t i = 0; i < n; i++) {
                struct ds_share *s = AT(e, i);
                s->alloc = 0;
                if (!s->weight)
                        continue;
                /* at this level every entry is at its cap */
                uint64_t top = ((uint64_t)s->cap + 1) * DS_WEIGHT_ONE / s->weight + 1;
                if (top > hi)
                        hi = top;
        }
        uint64_t lo = 0;
        if (fill_sum(e, n, stride, 0) >= pool) {
                hi = 0; /* the floors alone use the pool: floors */
        } else if (fill_sum(e, n, stride, hi) <= pool) {
                lo = hi; /* everyone fits at the cap */
        } else {
                /* invariant: sum(lo) <= pool < sum(hi) */
                while (hi - lo > 1) {
                        uint64_t mid = lo + (hi - lo) / 2;
                        if (fill_sum(e, n, stride, mid) <= pool)
                                lo = mid;
                        else
                                hi = mid;
                }
        }
        uint64_t sum = 0;
        for (size_t i = 0; i < n; i++)
                if (AT(e, i)->weight) {
                        AT(e, i)->alloc = (uint32_t)share_at(AT(e, i), lo);
                        sum += AT(e, i)->alloc;
                }
        /* the slots left over go one each, in entry order, to the entries
         * that grow at the next level (sum(lo + 1) > pool: it ends) */
        int grew = 1;
        while (sum < pool && lo != hi && grew) {
                grew = 0;
                for (size_t i = 0; i < n && sum < pool; i++) {
                        struct ds_share *s = AT(e, i);
                        if (s->weight && share_at(s, lo + 1) > s->alloc) {
                                s->alloc++;
                                sum++;
                                grew = 1;
                        }
                }
        }
}

uint32_t ds_policy_limits(const struct ds_config *cfg, struct ds_policy_scraper *e, size_t n,
                          size_t stride, int *pressure)
{
        struct ds_limit_ctx ctx = {0, 0, 0};
        for (size_t i = 0; i < n; i++) {
                struct ds_policy_scraper *s = PS(e, i);
                s->claimed = 0;
                if (!s->used)
                        continue;
                if (ds_policy_claims_reserve(cfg, &s->ov, (int)s->active)) {
                        uint32_t r = ds_override_reserve(&s->ov), cap = ds_override_cap(&s->ov);
                        s->claimed = r < cap ? r : cap;
                }
                ctx.claimed += s->claimed;
                if (s->active) {
                        ctx.n_active++;
                        ctx.weight_sum += ds_override_weight(&s->ov);
                }
        }
        uint64_t unfilled = 0;
        int starved = 0;
        for (size_t i = 0; i < n; i++) {
                struct ds_policy_scraper *s = PS(e, i);
                if (!s->used)
                        continue;
                s->limit = ds_policy_limit_for(cfg, &ctx, &s->ov, (int)s->active, s->claimed != 0);
                if (s->held < s->claimed) {
                        unfilled += s->claimed - s->held;
                        starved |= ds_policy_reserve_starved(s->held, s->waiting, s->claimed);
                }
        }
        if (starved) {
                for (size_t i = 0; i < n; i++) {
                        struct ds_policy_scraper *s = PS(e, i);
                        int part = s->used && (s->active || s->claimed);
                        s->share.weight = part ? ds_override_weight(&s->ov) : 0;
                        s->share.floor = s->active ? (s->claimed > 1 ? s->claimed : 1) : s->claimed;
                        s->share.cap = s->active ? s->limit : s->claimed;
                }
                ds_policy_fill(&e->share, n, stride, cfg->pool_size);
                for (size_t i = 0; i < n; i++)
                        if (PS(e, i)->used && PS(e, i)->active)
                                PS(e, i)->limit = PS(e, i)->share.alloc;
        }
        if (pressure)
                *pressure = starved;
        return unfilled > UINT32_MAX ? UINT32_MAX : (uint32_t)unfilled;
}

void ds_policy_cluster_targets(struct ds_cluster_host *h, size_t n, uint32_t budget)
{
        uint64_t fixed = 0;
        for (size_t i = 0; i < n; i++)
                if (!h[i].live)
                        fixed += h[i].claim;
        uint32_t avail = fixed < budget ? budget - (uint32_t)fixed : 0;
        /* first the demands, max-min; then the rest, max-min over totals */
        for (size_t i = 0; i < n; i++) {
                struct ds_share *s = &h[i].share;
                s->weight = h[i].live ? DS_WEIGHT_ONE : 0;
                s->floor = DS_CLUSTER_FLOOR;
                s->cap = h[i].demand > DS_CLUSTER_FLOOR ? h[i].demand : DS_CLUSTER_FLOOR;
        }
        ds_policy_fill(&h->share, n, sizeof(*h), avail);
        for (size_t i = 0; i < n; i++) {
                struct ds_share *s = &h[i].share;
                s->floor = s->alloc;
                s->cap = avail > s->alloc ? avail : s->alloc;
        }
        ds_policy_fill(&h->share, n, sizeof(*h), avail);
        for (size_t i = 0; i < n; i++)
                h[i].target = h[i].live ? h[i].share.alloc : h[i].claim;
}

uint32_t ds_policy_cluster_grow(uint32_t budget, uint64_t claimed_total, uint32_t claim,
                                uint32_t target)
{
        if (target <= claim || claimed_total >= budget)
                return claim;
        uint64_t room = budget - claimed_total;
        return target - claim < room ? target : claim + (uint32_t)room;
}
