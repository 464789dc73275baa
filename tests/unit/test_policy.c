/* test_policy.c - the pool's rules as pure functions (SPEC 3, 4.2). */
#include <criterion/criterion.h>

#include <stdlib.h>
#include <string.h>

#include "dynshim/policy.h"

static struct ds_config cfg;

static void setup(void)
{
        ds_config_defaults(&cfg);
}

TestSuite(policy, .init = setup);

Test(policy, one_active_scraper_may_use_max_limit)
{
        cr_assert_eq(ds_policy_limit(&cfg, 1), 15);
        cr_assert_eq(ds_policy_limit(&cfg, 0), 15, "the asker counts as active");
}

Test(policy, two_or_more_active_scrapers_get_soft_limit_each)
{
        for (uint32_t n = 2; n <= 8; n++)
                cr_assert_eq(ds_policy_limit(&cfg, n), 10, "n_active=%u", n);
}

Test(policy, limit_never_exceeds_pool_size)
{
        cfg.pool_size = 8;
        cfg.max_limit = 8;
        cfg.soft_limit = 8;
        cr_assert_eq(ds_policy_limit(&cfg, 1), 8);
        /* an inconsistent config (not accepted by validate) still never exceeds the pool */
        cfg.max_limit = 50;
        cr_assert_eq(ds_policy_limit(&cfg, 1), 8);
}

Test(policy, three_scrapers_at_limit_still_capped_by_pool)
{
        /* 3 active scrapers, 10 each would be 30: the pool of 20 is the cap. */
        uint32_t held_total = 0;
        uint32_t held[3] = {0};
        for (int round = 0; round < 100; round++) {
                struct ds_pick_entry e[3];
                for (int i = 0; i < 3; i++)
                        e[i] = (struct ds_pick_entry){held[i], ds_policy_limit(&cfg, 3), 5,
                                                      (uint64_t)(round * 3 + i)};
                long w = ds_policy_pick(e, NULL, 3, cfg.pool_size, held_total, -1);
                if (w < 0)
                        break;
                held[w]++;
                held_total++;
        }
        cr_assert_eq(held_total, 20);
        for (int i = 0; i < 3; i++)
                cr_assert_leq(held[i], 10);
        /* evenly shared: 7/7/6 in some order */
        for (int i = 0; i < 3; i++)
                cr_assert(held[i] == 6 || held[i] == 7, "scraper %d got %u", i, held[i]);
}

static int active(uint32_t waiting, uint32_t inflight, uint32_t procs, uint32_t held, uint64_t last,
                  uint64_t now)
{
        struct ds_activity a = {waiting, inflight, procs, held, last};
        return ds_policy_is_active(&cfg, &a, now);
}

static int idle(uint32_t waiting, uint32_t inflight, uint64_t last, uint64_t now)
{
        struct ds_activity a = {waiting, inflight, 1, 1, last};
        return ds_policy_is_idle(&cfg, &a, now);
}

Test(policy, activity_window_and_waiters_make_a_scraper_active)
{
        uint64_t s = 1000000000ull;
        cr_assert_eq(active(0, 0, 1, 0, 0, 100 * s), 0, "never active");
        cr_assert_eq(active(0, 0, 1, 0, 50 * s, 100 * s), 1, "50 s ago");
        cr_assert_eq(active(0, 0, 1, 0, 40 * s, 100 * s), 0, "60 s ago is idle");
        cr_assert_eq(active(1, 0, 1, 0, 0, 100 * s), 1, "a waiter");
        cr_assert_eq(active(0, 1, 1, 0, 0, 100 * s), 1, "a call in flight");
}

Test(policy, scraper_without_process_or_slot_is_idle_at_once)
{
        uint64_t s = 1000000000ull;
        cr_assert_eq(active(0, 0, 0, 0, 99 * s, 100 * s), 0, "its processes are gone");
        cr_assert_eq(active(0, 0, 0, 2, 99 * s, 100 * s), 1, "slots still draining for it");
        cr_assert_eq(active(0, 0, 1, 0, 99 * s, 100 * s), 1, "a live process, used 1 s ago");
        cr_assert_eq(active(1, 0, 0, 0, 0, 100 * s), 1, "a connect waiting");
}

Test(policy, waiting_connects_never_keep_unused_connections_from_idle_release)
{
        uint64_t s = 1000000000ull;
        cr_assert_eq(idle(3, 0, 30 * s, 100 * s), 1, "waiting, unused for 70 s: idle");
        cr_assert_eq(active(3, 0, 1, 5, 30 * s, 100 * s), 1, "yet active for its limit");
        cr_assert_eq(idle(3, 0, 50 * s, 100 * s), 0, "used 50 s ago");
        cr_assert_eq(idle(0, 1, 0, 100 * s), 0, "a call in flight");
}

Test(policy, full_pool_grants_nothing)
{
        struct ds_pick_entry e[1] = {{0, 10, 1, 1}};
        cr_assert_eq(ds_policy_pick(e, NULL, 1, 20, 20, -1), -1);
        cr_assert_eq(ds_policy_pick(e, NULL, 1, 20, 19, -1), 0);
}

Test(policy, scraper_at_its_limit_is_skipped)
{
        struct ds_pick_entry e[2] = {{10, 10, 3, 1}, {4, 10, 1, 9}};
        cr_assert_eq(ds_policy_pick(e, NULL, 2, 20, 14, -1), 1);
        e[1].waiting = 0;
        cr_assert_eq(ds_policy_pick(e, NULL, 2, 20, 14, -1), -1, "only waiter is at its limit");
}

Test(policy, smallest_share_of_limit_goes_first)
{
        /* a holds 2 of 10 (20 %), b holds 3 of 15 (20 %), c holds 1 of 10 (10 %) */
        struct ds_pick_entry e[3] = {{2, 10, 1, 1}, {3, 15, 1, 2}, {1, 10, 1, 3}};
        cr_assert_eq(ds_policy_pick(e, NULL, 3, 20, 6, -1), 2);
        e[2].waiting = 0;
        cr_assert_eq(ds_policy_pick(e, NULL, 3, 20, 6, -1), 0, "equal shares: the older waiter");
}

Test(policy, small_share_scraper_is_not_starved_by_a_busy_one)
{
        /* A has 100 queued waiters arriving first, B has one later: as slots
         * free up one by one, B is served at the first hand-off. */
        struct ds_pick_entry e[2] = {{9, 10, 100, 1}, {0, 10, 1, 500}};
        cr_assert_eq(ds_policy_pick(e, NULL, 2, 20, 19, -1), 1);
}

Test(policy, equal_demand_converges_to_equal_shares)
{
        uint32_t held[4] = {0};
        uint32_t total = 0;
        uint64_t ticket = 0;
        /* each scraper always has waiters; grant, then release the largest */
        for (int step = 0; step < 1000; step++) {
                struct ds_pick_entry e[4];
                for (int i = 0; i < 4; i++)
                        e[i] = (struct ds_pick_entry){held[i], 10, 3, ticket + (uint64_t)i};
                ticket += 4;
                long w = ds_policy_pick(e, NULL, 4, 20, total, -1);
                if (w >= 0) {
                        held[w]++;
                        total++;
                } else {
                        int j = step % 4;
                        if (held[j]) {
                                held[j]--;
                                total--;
                        }
                }
        }
        for (int i = 0; i < 4; i++)
                cr_assert(held[i] >= 4 && held[i] <= 6, "scraper %d holds %u", i, held[i]);
}

Test(policy, may_grant_checks_pool_and_limit)
{
        cr_assert(ds_policy_may_grant_reserved(20, 19, 0, 9, 10));
        cr_assert_not(ds_policy_may_grant_reserved(20, 20, 0, 0, 10));
        cr_assert_not(ds_policy_may_grant_reserved(20, 5, 0, 10, 10));
        cr_assert_not(ds_policy_may_grant_reserved(20, 15, 5, 0, 10), "set aside for others");
}

Test(policy, fair_share_splits_the_pool_by_weight_rounding_up)
{
        cr_assert_eq(ds_policy_fair_share(20, 1, 3), 7, "three equal scrapers: 7 / 7 / 7");
        cr_assert_eq(ds_policy_fair_share(20, 1, 2), 10);
        cr_assert_eq(ds_policy_fair_share(20, 1, 1), 20);
        cr_assert_eq(ds_policy_fair_share(20, 3, 4), 15, "weight 3 beside weight 1");
        cr_assert_eq(ds_policy_fair_share(20, 1, 4), 5);
        cr_assert_eq(ds_policy_fair_share(20, 1, 0), 20, "no active weight: the whole pool");
        cr_assert_eq(ds_policy_fair_share(1, 1, 1000), 1, "never 0 for an active scraper");
}

/* Three scrapers in a pool of 20, soft_limit 10: the two that came first
 * hold 10 each and the pool is full. The third must not wait for good. */
Test(policy, scraper_above_fair_share_gives_back_to_one_below_it)
{
        uint32_t fair = ds_policy_fair_share(20, 1, 3);
        cr_assert_eq(ds_policy_give_back_fair(10, fair, 0, 0), 0, "nobody below fair waits");
        cr_assert_eq(ds_policy_give_back_fair(10, fair, 0, 7), 3, "what it holds beyond 7");
        cr_assert_eq(ds_policy_give_back_fair(10, fair, 0, 2), 2, "no more than wait");
        cr_assert_eq(ds_policy_give_back_fair(10, fair, 2, 7), 1, "less what is promised");
        cr_assert_eq(ds_policy_give_back_fair(7, fair, 0, 7), 0, "at its fair share");
        /* settled at 7 / 7 / 6: nobody gives back any more */
        cr_assert_eq(ds_policy_give_back_fair(7, fair, 0, 1), 0);
        /* over any holdings, the total given back never exceeds the waiters */
        for (uint32_t held = 0; held <= 20; held++)
                for (uint32_t below = 0; below <= 20; below++)
                        for (uint32_t pend = 0; pend <= 5; pend++) {
                                uint32_t n = ds_policy_give_back_fair(held, fair, pend, below);
                                cr_assert_leq(n, below);
                                cr_assert(n == 0 || held - n >= fair, "below its own share");
                        }
}

Test(policy, idle_scraper_gives_back_everything_it_holds)
{
        enum ds_release_reason why;
        cr_assert_eq(ds_policy_give_back(&cfg, 1, 7, 15, 0, 0, &why), 7);
        cr_assert_eq(why, DS_RELEASE_IDLE);
        cr_assert_eq(ds_policy_give_back(&cfg, 1, 0, 15, 0, 0, &why), 0, "holds nothing");
}

Test(policy, active_scraper_gives_back_only_surplus_that_others_starve_for)
{
        enum ds_release_reason why;
        cr_assert_eq(ds_policy_give_back(&cfg, 0, 15, 10, 0, 0, &why), 0, "nobody starves");
        cr_assert_eq(ds_policy_give_back(&cfg, 0, 15, 10, 0, 3, &why), 3);
        cr_assert_eq(why, DS_RELEASE_SURPLUS);
        cr_assert_eq(ds_policy_give_back(&cfg, 0, 15, 10, 0, 9, &why), 5, "at most the surplus");
        cr_assert_eq(ds_policy_give_back(&cfg, 0, 15, 10, 4, 9, &why), 1, "less what is promised");
        cr_assert_eq(ds_policy_give_back(&cfg, 0, 15, 10, 5, 9, &why), 0);
        cr_assert_eq(ds_policy_give_back(&cfg, 0, 10, 10, 0, 9, &why), 0, "at its limit");
}

Test(policy, idle_release_off_gives_back_nothing)
{
        enum ds_release_reason why;
        cfg.idle_release = 0;
        cr_assert_eq(ds_policy_give_back(&cfg, 1, 7, 15, 0, 0, &why), 0);
        cr_assert_eq(ds_policy_give_back(&cfg, 0, 15, 10, 0, 5, &why), 0);
        cr_assert_eq(why, DS_RELEASE_NORMAL);
}

/* ---- per-scraper overrides: max, reserve, weight, idle_release ---- */

#define NS 8

/* A pool of scrapers for ds_policy_limits. */
struct pool_state {
        struct ds_policy_scraper s[NS];
        size_t n;
};

static void add(struct pool_state *p, int active, uint32_t held, uint32_t waiting)
{
        struct ds_policy_scraper *s = &p->s[p->n++];
        memset(s, 0, sizeof(*s));
        s->used = 1;
        s->active = (uint32_t)active;
        s->held = held;
        s->waiting = waiting;
}

static void ov_max(struct pool_state *p, size_t i, uint32_t v)
{
        p->s[i].ov.flags |= DS_OV_MAX;
        p->s[i].ov.max = v;
}

static void ov_reserve(struct pool_state *p, size_t i, uint32_t v)
{
        p->s[i].ov.flags |= DS_OV_RESERVE;
        p->s[i].ov.reserve = v;
}

static void ov_weight(struct pool_state *p, size_t i, uint32_t milli)
{
        p->s[i].ov.flags |= DS_OV_WEIGHT;
        p->s[i].ov.weight_milli = milli;
}

static void ov_idle_release(struct pool_state *p, size_t i, uint32_t on)
{
        p->s[i].ov.flags |= DS_OV_IDLE_RELEASE;
        p->s[i].ov.idle_release = on;
}

static uint32_t limits(struct pool_state *p, int *pressure)
{
        return ds_policy_limits(&cfg, p->s, p->n, sizeof(p->s[0]), pressure);
}

Test(policy, without_overrides_every_limit_is_the_spec_limit)
{
        srand(1);
        for (int round = 0; round < 2000; round++) {
                cfg.pool_size = 1 + (uint32_t)(rand() % 60);
                cfg.max_limit = 1 + (uint32_t)(rand() % (int)cfg.pool_size);
                cfg.soft_limit = 1 + (uint32_t)(rand() % (int)cfg.max_limit);
                struct pool_state p = {.n = 0};
                uint32_t n_active = 0;
                size_t n = 1 + (size_t)(rand() % NS);
                for (size_t i = 0; i < n; i++) {
                        int active = rand() % 2;
                        add(&p, active, (uint32_t)(rand() % 10), (uint32_t)(rand() % 3));
                        n_active += (uint32_t)active;
                }
                int pressure = -1;
                cr_assert_eq(limits(&p, &pressure), 0, "no reserve is unfilled");
                cr_assert_eq(pressure, 0);
                for (size_t i = 0; i < n; i++)
                        cr_assert_eq(p.s[i].limit,
                                     ds_policy_limit(&cfg, p.s[i].active ? n_active : n_active + 1),
                                     "round %d scraper %zu", round, i);
        }
}

Test(policy, a_cap_holds_alone_and_among_others)
{
        struct pool_state p = {.n = 0};
        add(&p, 1, 0, 0);
        ov_max(&p, 0, 5);
        limits(&p, NULL);
        cr_assert_eq(p.s[0].limit, 5, "alone: max_limit 15 capped at 5");
        add(&p, 1, 0, 0);
        limits(&p, NULL);
        cr_assert_eq(p.s[0].limit, 5);
        cr_assert_eq(p.s[1].limit, 10, "the other keeps soft_limit");
        ov_max(&p, 0, 12);
        limits(&p, NULL);
        cr_assert_eq(p.s[0].limit, 10, "a cap above the rule's limit changes nothing");
}

Test(policy, weights_divide_the_soft_limit_by_share)
{
        struct pool_state p = {.n = 0};
        add(&p, 1, 0, 0);
        add(&p, 1, 0, 0);
        ov_weight(&p, 1, 500);
        limits(&p, NULL);
        /* base 10, n 2, weights 1 and 0.5: 10*1*2/1.5 = 13.3 and 10*0.5*2/1.5 = 6.7 */
        cr_assert_eq(p.s[0].limit, 13);
        cr_assert_eq(p.s[1].limit, 7);
        p.s[0].active = 0;
        limits(&p, NULL);
        cr_assert_eq(p.s[1].limit, 15, "alone a weight changes nothing: max_limit");
        cr_assert_eq(p.s[0].limit, 13, "the idle one is shown its limit on waking");
        /* a weight of 3 against 1 with soft_limit 10: 15 and 5, the first capped by the pool */
        cfg.pool_size = 14, cfg.max_limit = 14;
        p.s[0].active = 1;
        ov_weight(&p, 1, 1000);
        ov_weight(&p, 0, 3000);
        limits(&p, NULL);
        cr_assert_eq(p.s[0].limit, 14);
        cr_assert_eq(p.s[1].limit, 5);
}

Test(policy, a_tiny_weight_still_gets_one_slot)
{
        struct pool_state p = {.n = 0};
        add(&p, 1, 0, 0);
        add(&p, 1, 0, 0);
        ov_weight(&p, 0, DS_WEIGHT_MIN);
        ov_weight(&p, 1, DS_WEIGHT_MAX);
        limits(&p, NULL);
        cr_assert_eq(p.s[0].limit, 1);
        cr_assert_eq(p.s[1].limit, 20, "20 by weight, capped by the pool");
}

Test(policy, an_active_scrapers_reserve_is_set_aside_and_an_idle_ones_is_not)
{
        cfg.max_limit = 20;
        struct pool_state p = {.n = 0};
        add(&p, 1, 0, 0); /* busy */
        add(&p, 0, 0, 0); /* viewer, idle */
        ov_reserve(&p, 1, 3);
        cr_assert_eq(limits(&p, NULL), 0);
        cr_assert_eq(p.s[1].claimed, 0, "idle with idle release on: nothing set aside");
        cr_assert_eq(p.s[0].limit, 20, "busy alone may use the whole pool");
        p.s[1].active = 1;
        cr_assert_eq(limits(&p, NULL), 3, "3 slots set aside");
        cr_assert_eq(p.s[1].claimed, 3);
        cr_assert_eq(p.s[0].limit, 10);
        cfg.soft_limit = 20;
        limits(&p, NULL);
        cr_assert_eq(p.s[0].limit, 17, "never reaches into the viewer's reserve");
        cr_assert_eq(p.s[1].limit, 20);
        p.s[1].held = 2;
        cr_assert_eq(limits(&p, NULL), 1, "one still unfilled");
}

Test(policy, a_static_allocation_keeps_its_slots_while_idle)
{
        cfg.max_limit = 20;
        cfg.soft_limit = 20;
        struct pool_state p = {.n = 0};
        add(&p, 1, 0, 0);
        add(&p, 0, 0, 0);
        ov_max(&p, 1, 5);
        ov_reserve(&p, 1, 5);
        ov_idle_release(&p, 1, 0);
        cr_assert_eq(limits(&p, NULL), 5);
        cr_assert_eq(p.s[1].claimed, 5, "idle release off: the reserve stays claimed");
        cr_assert_eq(p.s[1].limit, 5);
        cr_assert_eq(p.s[0].limit, 15);
        p.s[1].active = 1;
        limits(&p, NULL);
        cr_assert_eq(p.s[1].limit, 5, "active, exactly its allocation");
        cr_assert_eq(p.s[0].limit, 15);
        enum ds_release_reason why;
        struct ds_config c = cfg;
        c.idle_release = ds_override_idle_release(&p.s[1].ov, &cfg);
        cr_assert_eq(ds_policy_give_back(&c, 1, 5, 5, 0, 3, &why), 0, "never asked to give back");
}

Test(policy, a_starved_reserve_makes_the_limits_a_strict_division_of_the_pool)
{
        struct pool_state p = {.n = 0};
        add(&p, 1, 10, 5); /* busy a */
        add(&p, 1, 10, 5); /* busy b */
        add(&p, 1, 0, 1);  /* viewer, waiting */
        ov_max(&p, 2, 5);
        ov_reserve(&p, 2, 2);
        int pressure = 0;
        cr_assert_eq(limits(&p, &pressure), 2);
        cr_assert_eq(pressure, 1);
        uint32_t sum = p.s[0].limit + p.s[1].limit + p.s[2].limit;
        cr_assert_leq(sum, 20, "strict: %u", sum);
        cr_assert_geq(p.s[2].limit, 2);
        cr_assert_leq(p.s[2].limit, 5);
        cr_assert_lt(p.s[0].limit, 10, "a is above its new limit: asked for surplus");
        cr_assert_lt(p.s[1].limit, 10);
        /* the viewer is counted as starved: surplus advice for a */
        enum ds_release_reason why;
        cr_assert_eq(ds_policy_give_back(&cfg, 0, 10, p.s[0].limit, 0, 1, &why), 1);
        cr_assert_eq(why, DS_RELEASE_SURPLUS);
        /* with its reserve filled the pressure ends: the SPEC limits again */
        p.s[2].held = 2;
        cr_assert_eq(limits(&p, &pressure), 0);
        cr_assert_eq(pressure, 0);
        cr_assert_eq(p.s[0].limit, 10);
        cr_assert_eq(p.s[2].limit, 5);
}

Test(policy, fill_respects_floors_caps_and_weights)
{
        struct ds_share e[3] = {{1, 10, 1000, 0}, {1, 10, 1000, 0}, {2, 5, 1000, 0}};
        ds_policy_fill(e, 3, sizeof(e[0]), 20);
        cr_assert_eq(e[0].alloc + e[1].alloc + e[2].alloc, 20);
        cr_assert_eq(e[2].alloc, 5);
        cr_assert(e[0].alloc >= 7 && e[0].alloc <= 8 && e[1].alloc >= 7 && e[1].alloc <= 8);
        struct ds_share w[2] = {{1, 100, 2000, 0}, {1, 100, 1000, 0}};
        ds_policy_fill(w, 2, sizeof(w[0]), 30);
        cr_assert_eq(w[0].alloc, 20, "weight 2 against 1");
        cr_assert_eq(w[1].alloc, 10);
        struct ds_share f[2] = {{4, 10, 1000, 0}, {4, 10, 0, 0}};
        ds_policy_fill(f, 2, sizeof(f[0]), 3);
        cr_assert_eq(f[0].alloc, 4, "the floors alone exceed the pool: floors");
        cr_assert_eq(f[1].alloc, 0, "weight 0 takes no part");
        struct ds_share c[2] = {{1, 3, 1000, 0}, {1, 4, 1000, 0}};
        ds_policy_fill(c, 2, sizeof(c[0]), 20);
        cr_assert_eq(c[0].alloc + c[1].alloc, 7, "everyone fits at the cap");
}

Test(policy, fill_never_exceeds_the_pool_over_random_entries)
{
        srand(2);
        for (int round = 0; round < 5000; round++) {
                struct ds_share e[NS];
                size_t n = 1 + (size_t)(rand() % NS);
                uint32_t pool = 1 + (uint32_t)(rand() % 100), floors = 0;
                for (size_t i = 0; i < n; i++) {
                        e[i].cap = 1 + (uint32_t)(rand() % 60);
                        e[i].floor = (uint32_t)(rand() % 4);
                        if (e[i].floor > e[i].cap)
                                e[i].floor = e[i].cap;
                        e[i].weight = rand() % 5 ? 1 + (uint32_t)(rand() % 5000) : 0;
                        floors += e[i].weight ? e[i].floor : 0;
                }
                ds_policy_fill(e, n, sizeof(e[0]), pool);
                uint32_t sum = 0, caps = 0;
                for (size_t i = 0; i < n; i++) {
                        if (!e[i].weight) {
                                cr_assert_eq(e[i].alloc, 0);
                                continue;
                        }
                        cr_assert_leq(e[i].alloc, e[i].cap);
                        cr_assert_geq(e[i].alloc, e[i].floor);
                        sum += e[i].alloc;
                        caps += e[i].cap;
                }
                uint32_t want = caps < pool ? caps : pool;
                if (floors <= pool)
                        cr_assert_eq(sum, want, "round %d: %u of %u (caps %u)", round, sum, pool,
                                     caps);
                else
                        cr_assert_eq(sum, floors);
        }
}

Test(policy, a_scraper_below_its_reserve_is_served_first)
{
        /* viewer holds 0 of reserve 2 and waits after the busy one */
        struct ds_pick_entry e[2] = {{0, 10, 5, 1}, {0, 5, 1, 9}};
        uint32_t r[2] = {0, 2};
        cr_assert_eq(ds_policy_pick(e, r, 2, 20, 10, -1), 1);
        cr_assert_eq(ds_policy_pick(e, NULL, 2, 20, 10, -1), 0,
                     "without reserves: the older waiter");
        e[1].held = 2;
        cr_assert_eq(ds_policy_pick(e, r, 2, 20, 12, -1), 0, "reserve filled: by share");
}

Test(policy, a_grant_may_not_take_a_slot_set_aside_for_another)
{
        /* 18 of 20 held; the viewer (not waiting) claims 2 it does not hold */
        struct ds_pick_entry e[2] = {{18, 20, 3, 1}, {0, 5, 0, 0}};
        uint32_t r[2] = {0, 2};
        cr_assert_eq(ds_policy_pick(e, r, 2, 20, 18, -1), -1);
        e[1].held = 1;
        cr_assert_eq(ds_policy_pick(e, r, 2, 20, 19, -1), -1);
        cr_assert_eq(ds_policy_pick(e, NULL, 2, 20, 19, -1), 0);
        cr_assert(ds_policy_may_grant_reserved(20, 17, 2, 17, 20));
        cr_assert_not(ds_policy_may_grant_reserved(20, 18, 2, 18, 20));
        cr_assert(ds_policy_may_grant_reserved(20, 18, 0, 0, 5));
}

/* A random, valid set of overrides for n scrapers (reserves below the pool). */
static void random_overrides(struct pool_state *p)
{
        uint32_t reserves = 0;
        for (size_t i = 0; i < p->n; i++) {
                struct ds_override *ov = &p->s[i].ov;
                memset(ov, 0, sizeof(*ov));
                if (rand() % 3 == 0) {
                        ov->flags |= DS_OV_MAX;
                        ov->max = 1 + (uint32_t)(rand() % (int)cfg.pool_size);
                }
                if (rand() % 3 == 0) {
                        uint32_t r = (uint32_t)(rand() % 6);
                        if (ov->flags & DS_OV_MAX && r > ov->max)
                                r = ov->max;
                        if (reserves + r < cfg.pool_size) {
                                ov->flags |= DS_OV_RESERVE;
                                ov->reserve = r;
                                reserves += r;
                        }
                }
                if (rand() % 3 == 0) {
                        ov->flags |= DS_OV_WEIGHT;
                        ov->weight_milli = 1 + (uint32_t)(rand() % 4000);
                }
                if (rand() % 4 == 0) {
                        ov->flags |= DS_OV_IDLE_RELEASE;
                        ov->idle_release = (uint32_t)(rand() % 2);
                }
                cr_assert_eq(ds_override_validate(ov, "x", NULL, 0), 0);
        }
}

static void random_config(void)
{
        ds_config_defaults(&cfg);
        cfg.pool_size = 2 + (uint32_t)(rand() % 59);
        cfg.max_limit = 1 + (uint32_t)(rand() % (int)cfg.pool_size);
        cfg.soft_limit = 1 + (uint32_t)(rand() % (int)cfg.max_limit);
        cfg.idle_release = (uint32_t)(rand() % 4 != 0);
}

Test(policy, limits_hold_their_rules_over_random_configurations)
{
        srand(3);
        for (int round = 0; round < 20000; round++) {
                random_config();
                struct pool_state p = {.n = 0};
                size_t n = 1 + (size_t)(rand() % NS);
                for (size_t i = 0; i < n; i++)
                        add(&p, rand() % 3 != 0, (uint32_t)(rand() % 8), (uint32_t)(rand() % 3));
                random_overrides(&p);
                int pressure;
                uint32_t unfilled = limits(&p, &pressure);
                uint64_t claimed = 0, active_sum = 0, floors = 0, unf = 0;
                for (size_t i = 0; i < n; i++) {
                        claimed += p.s[i].claimed;
                        if (p.s[i].held < p.s[i].claimed)
                                unf += p.s[i].claimed - p.s[i].held;
                }
                cr_assert_eq(unfilled, unf);
                cr_assert_lt(claimed, cfg.pool_size, "claimed reserves stay below the pool");
                for (size_t i = 0; i < n; i++) {
                        const struct ds_policy_scraper *s = &p.s[i];
                        cr_assert_leq(s->limit, ds_override_cap(&s->ov), "round %d: cap", round);
                        cr_assert_leq(s->limit, cfg.pool_size);
                        cr_assert_geq(s->limit, 1, "round %d: nobody has a limit of 0", round);
                        cr_assert_geq(s->limit, s->claimed, "round %d: below its reserve", round);
                        cr_assert_leq(s->claimed, ds_override_reserve(&s->ov));
                        if (s->active && ds_override_reserve(&s->ov))
                                cr_assert_eq(s->claimed, ds_override_reserve(&s->ov));
                        if (!s->active && ds_override_idle_release(&s->ov, &cfg))
                                cr_assert_eq(s->claimed, 0, "an idle scraper's reserve is free");
                        if (s->active) {
                                active_sum += s->limit;
                                floors += s->claimed > 1 ? s->claimed : 1;
                        } else {
                                floors += s->claimed;
                        }
                        if (!pressure && s->active)
                                cr_assert_leq(s->limit + claimed - s->claimed, cfg.pool_size,
                                              "round %d: a limit reaches into others' reserves",
                                              round);
                }
                if (pressure && floors <= cfg.pool_size)
                        cr_assert_leq(active_sum + claimed, cfg.pool_size + claimed, "round %d",
                                      round);
                if (pressure && floors <= cfg.pool_size) {
                        uint64_t idle_claims = 0;
                        for (size_t i = 0; i < n; i++)
                                idle_claims += p.s[i].active ? 0 : p.s[i].claimed;
                        cr_assert_leq(active_sum + idle_claims, cfg.pool_size,
                                      "round %d: strict limits sum to %llu", round,
                                      (unsigned long long)(active_sum + idle_claims));
                }
        }
}

/* Simulates a busy pool: every scraper always has connects waiting; each
 * step either grants a slot by the policy, or (nothing grantable) the
 * scrapers above their limit give back what the advice says, or else one
 * random held slot is finished by its program. */
Test(policy, simulated_grants_keep_caps_and_the_pool_honour_reserves_and_starve_nobody)
{
        srand(4);
        for (int round = 0; round < 300; round++) {
                random_config();
                struct pool_state p = {.n = 0};
                size_t n = 1 + (size_t)(rand() % NS);
                for (size_t i = 0; i < n; i++)
                        add(&p, 1, 0, 3);
                random_overrides(&p);
                uint64_t ticket[NS], next = 1;
                uint32_t total = 0, since_grant[NS] = {0}, short_for[NS] = {0};
                uint32_t worst_wait = 0, worst_short = 0;
                for (size_t i = 0; i < n; i++)
                        ticket[i] = next++;
                for (int step = 0; step < 3000; step++) {
                        limits(&p, NULL);
                        struct ds_pick_entry e[NS];
                        uint32_t r[NS];
                        for (size_t i = 0; i < n; i++) {
                                e[i] = (struct ds_pick_entry){p.s[i].held, p.s[i].limit,
                                                              p.s[i].waiting, ticket[i]};
                                r[i] = p.s[i].claimed;
                        }
                        long w = ds_policy_pick(e, r, n, cfg.pool_size, total, -1);
                        for (size_t i = 0; i < n; i++) {
                                /* grants to others (other than filling a reserve, which
                                 * goes first) while a waiting scraper holds nothing */
                                if (w >= 0 && (long)i != w && p.s[i].held == 0 &&
                                    p.s[w].held >= p.s[w].claimed)
                                        since_grant[i]++;
                                else if (p.s[i].held)
                                        since_grant[i] = 0;
                                if (p.s[i].held < p.s[i].claimed)
                                        short_for[i]++;
                                else
                                        short_for[i] = 0;
                                worst_wait =
                                    since_grant[i] > worst_wait ? since_grant[i] : worst_wait;
                                worst_short =
                                    short_for[i] > worst_short ? short_for[i] : worst_short;
                        }
                        if (w >= 0) {
                                cr_assert_lt(p.s[w].held, ds_override_cap(&p.s[w].ov));
                                p.s[w].held++;
                                total++;
                                ticket[w] = next++;
                                cr_assert_leq(total, cfg.pool_size);
                                continue;
                        }
                        /* starved connects, as count_starved counts them */
                        uint32_t starved = 0;
                        for (size_t i = 0; i < n; i++) {
                                uint32_t room = 0;
                                if (total >= cfg.pool_size && p.s[i].held < p.s[i].limit)
                                        room = p.s[i].limit - p.s[i].held;
                                else if (total < cfg.pool_size && p.s[i].held < p.s[i].claimed)
                                        room = p.s[i].claimed - p.s[i].held;
                                starved += p.s[i].waiting < room ? p.s[i].waiting : room;
                        }
                        uint32_t given = 0;
                        for (size_t i = 0; i < n && starved; i++) {
                                struct ds_config c = cfg;
                                c.idle_release = ds_override_idle_release(&p.s[i].ov, &cfg);
                                enum ds_release_reason why;
                                uint32_t g = ds_policy_give_back(&c, 0, p.s[i].held, p.s[i].limit,
                                                                 0, starved, &why);
                                p.s[i].held -= g;
                                total -= g;
                                given += g;
                        }
                        if (given || total == 0)
                                continue;
                        /* a program finishes one of its connections */
                        uint32_t k = (uint32_t)(rand() % (int)total);
                        for (size_t i = 0; i < n; i++) {
                                if (k < p.s[i].held) {
                                        p.s[i].held--;
                                        total--;
                                        break;
                                }
                                k -= p.s[i].held;
                        }
                }
                int releases_on = 1;
                for (size_t i = 0; i < n; i++)
                        releases_on &= ds_override_idle_release(&p.s[i].ov, &cfg) != 0;
                uint32_t reserves = 0;
                for (size_t i = 0; i < n; i++)
                        reserves += ds_override_reserve(&p.s[i].ov);
                /* one holding nothing is passed over only by the others holding
                 * nothing (oldest first) */
                cr_assert_leq(worst_wait, (uint32_t)n - 1,
                              "round %d: %u grants went to others while a scraper held nothing",
                              round, worst_wait);
                /* the reserves are filled one grant per step, from the start */
                if (releases_on)
                        cr_assert_leq(worst_short, reserves + 2 * (uint32_t)n + 2,
                                      "round %d: a reserve stayed unfilled %u steps", round,
                                      worst_short);
        }
}

/* ---- cluster shares (docs/cluster.md) ---- */

static struct ds_cluster_host live_host(uint32_t claim, uint32_t demand)
{
        return (struct ds_cluster_host){.live = 1, .claim = claim, .demand = demand};
}

Test(policy, cluster_idle_hosts_split_the_budget_evenly)
{
        struct ds_cluster_host h[3] = {live_host(0, 1), live_host(0, 1), live_host(0, 1)};
        ds_policy_cluster_targets(h, 3, 30);
        for (int i = 0; i < 3; i++)
                cr_assert_eq(h[i].target, 10, "host %d: %u", i, h[i].target);
}

Test(policy, cluster_busy_host_takes_what_idle_hosts_do_not_need)
{
        /* budget 14: two idle hosts keep their agent's slot and one more */
        struct ds_cluster_host h[3] = {live_host(5, 13), live_host(5, 1), live_host(4, 1)};
        ds_policy_cluster_targets(h, 3, 14);
        cr_assert_eq(h[0].target, 10);
        cr_assert_eq(h[1].target, DS_CLUSTER_FLOOR);
        cr_assert_eq(h[2].target, DS_CLUSTER_FLOOR);
}

Test(policy, cluster_demands_below_the_budget_are_met_and_the_rest_spread)
{
        struct ds_cluster_host h[3] = {live_host(2, 7), live_host(2, 2), live_host(2, 3)};
        ds_policy_cluster_targets(h, 3, 30);
        uint32_t sum = 0;
        for (int i = 0; i < 3; i++) {
                cr_assert_geq(h[i].target, h[i].demand, "host %d", i);
                sum += h[i].target;
        }
        cr_assert_eq(sum, 30);
        cr_assert_leq(h[0].target - h[1].target, 1, "the rest is spread evenly");
}

Test(policy, cluster_contended_budget_is_divided_max_min_by_demand)
{
        /* demands 3, 21, 21 over 30: the small one gets its 3, the others 13 and 14 */
        struct ds_cluster_host h[3] = {live_host(2, 3), live_host(2, 21), live_host(2, 21)};
        ds_policy_cluster_targets(h, 3, 30);
        cr_assert_eq(h[0].target, 3);
        cr_assert_eq(h[1].target + h[2].target, 27);
        cr_assert_leq(
            h[1].target > h[2].target ? h[1].target - h[2].target : h[2].target - h[1].target, 1);
}

Test(policy, cluster_dead_host_keeps_its_claim_and_nobody_counts_on_it)
{
        struct ds_cluster_host h[3] = {
            live_host(2, 30), {.live = 0, .claim = 8, .demand = 7}, live_host(2, 30)};
        ds_policy_cluster_targets(h, 3, 20);
        cr_assert_eq(h[1].target, 8);
        cr_assert_eq(h[0].target + h[2].target, 12);
}

Test(policy, cluster_host_above_its_fair_share_is_targeted_down_to_it)
{
        /* it holds 10 of 12 while another host waits: its target is the fair 6 */
        struct ds_cluster_host h[2] = {live_host(10, 10), live_host(2, 30)};
        ds_policy_cluster_targets(h, 2, 12);
        cr_assert_eq(h[0].target, 6);
        cr_assert_eq(h[1].target, 6);
}

Test(policy, cluster_floors_above_the_budget_give_each_its_floor)
{
        struct ds_cluster_host h[3] = {live_host(2, 9), live_host(2, 9), live_host(2, 9)};
        ds_policy_cluster_targets(h, 3, 5);
        for (int i = 0; i < 3; i++)
                cr_assert_eq(h[i].target, DS_CLUSTER_FLOOR);
}

Test(policy, cluster_grow_takes_only_unclaimed_units)
{
        cr_assert_eq(ds_policy_cluster_grow(20, 20, 5, 10), 5, "nothing unclaimed");
        cr_assert_eq(ds_policy_cluster_grow(20, 17, 5, 10), 8, "three unclaimed");
        cr_assert_eq(ds_policy_cluster_grow(20, 10, 5, 10), 10, "up to the target");
        cr_assert_eq(ds_policy_cluster_grow(20, 10, 5, 3), 5, "never lowers the claim");
        cr_assert_eq(ds_policy_cluster_grow(20, 25, 5, 10), 5, "over budget: no growth");
}

/* Random clusters: every rule of ds_policy_cluster_targets holds. */
Test(policy, cluster_targets_hold_their_rules_over_random_clusters)
{
        enum { NH = 8 };
        srand(3);
        for (int round = 0; round < 20000; round++) {
                struct ds_cluster_host h[NH];
                size_t n = 1 + (size_t)(rand() % NH);
                uint32_t budget = (uint32_t)(rand() % 100);
                uint64_t fixed = 0, floors = 0;
                int any_live = 0;
                for (size_t i = 0; i < n; i++) {
                        h[i] = (struct ds_cluster_host){0};
                        h[i].live = rand() % 4 != 0;
                        h[i].demand = (uint32_t)(rand() % 25);
                        h[i].claim = (uint32_t)(rand() % 8);
                        if (!h[i].live)
                                fixed += h[i].claim;
                        else
                                floors += DS_CLUSTER_FLOOR, any_live = 1;
                }
                ds_policy_cluster_targets(h, n, budget);
                uint64_t sum = 0;
                int unmet = 0;
                for (size_t i = 0; i < n; i++) {
                        sum += h[i].target;
                        if (!h[i].live) {
                                cr_assert_eq(h[i].target, h[i].claim,
                                             "a dead host keeps its claim");
                                continue;
                        }
                        cr_assert_geq(h[i].target, DS_CLUSTER_FLOOR, "round %d host %zu", round, i);
                        if (h[i].target < h[i].demand)
                                unmet = 1;
                }
                if (fixed + floors > budget) {
                        for (size_t i = 0; i < n; i++)
                                if (h[i].live)
                                        cr_assert_eq(h[i].target, DS_CLUSTER_FLOOR,
                                                     "round %d: floors only", round);
                        continue;
                }
                cr_assert_leq(sum, budget, "round %d: targets %llu over budget %u", round,
                              (unsigned long long)sum, budget);
                if (any_live)
                        cr_assert_eq(sum, budget, "round %d: the whole budget is handed out",
                                     round);
                /* max-min: a host short of its demand has no less than any
                 * other live host, beyond one unit of rounding and the floor */
                for (size_t i = 0; unmet && i < n; i++) {
                        if (!h[i].live || h[i].target >= h[i].demand)
                                continue;
                        for (size_t j = 0; j < n; j++)
                                cr_assert(!h[j].live || h[j].target <= h[i].target + 1 ||
                                              h[j].target <= DS_CLUSTER_FLOOR,
                                          "round %d: host %zu short at %u while host %zu has %u",
                                          round, i, h[i].target, j, h[j].target);
                }
        }
}

/* The agents' protocol over random turns (dyncoord_cluster.c in miniature):
 * each host grows its claim only into unclaimed units, lowers its pool
 * first and its claim only to what it uses; clients take slots up to the
 * pool and demand moves at random. The claims never exceed the budget, no
 * host ever uses more than its claim, and under steady demand the shares
 * reach the targets within a few turns of each host. */
Test(policy, cluster_protocol_never_claims_beyond_the_budget_and_follows_demand)
{
        enum { NH = 5 };
        srand(4);
        for (int trial = 0; trial < 200; trial++) {
                uint32_t budget = DS_CLUSTER_FLOOR * NH + (uint32_t)(rand() % 40);
                /* every host joined with its floor: its agent's slot and one */
                uint32_t pool[NH], held[NH], claim[NH], want[NH];
                for (int k = 0; k < NH; k++)
                        pool[k] = claim[k] = DS_CLUSTER_FLOOR, held[k] = want[k] = 1;
                for (int step = 0; step < 600; step++) {
                        int steady = step >= 400;
                        int i = steady ? step % NH : rand() % NH;
                        if (step == 400)
                                for (int k = 0; k < NH; k++)
                                        want[k] = k == 0 ? 100 : 1;
                        else if (!steady && rand() % 10 == 0)
                                want[i] = 1 + (uint32_t)(rand() % 30);
                        /* the host's clients take slots up to the pool, give back at will */
                        while (held[i] < want[i] && held[i] < pool[i])
                                held[i]++;
                        if (held[i] > want[i])
                                held[i] = want[i];
                        /* its agent's round */
                        uint32_t honest = pool[i] > held[i] ? pool[i] : held[i];
                        cr_assert_leq(honest, claim[i]);
                        claim[i] = honest;
                        struct ds_cluster_host h[NH];
                        uint64_t total = 0;
                        for (int k = 0; k < NH; k++) {
                                h[k] = live_host(claim[k],
                                                 held[k] +
                                                     (want[k] > held[k] ? want[k] - held[k] : 0));
                                total += claim[k];
                        }
                        ds_policy_cluster_targets(h, NH, budget);
                        uint32_t grown =
                            ds_policy_cluster_grow(budget, total, claim[i], h[i].target);
                        if (grown > claim[i]) {
                                claim[i] = grown; /* committed, then the pool grows */
                                pool[i] = grown;
                        } else if (h[i].target < claim[i]) {
                                pool[i] = h[i].target; /* the pool first */
                                claim[i] = pool[i] > held[i] ? pool[i] : held[i];
                        } else {
                                pool[i] = claim[i]; /* the whole claim is usable */
                        }
                        uint64_t sum = 0;
                        for (int k = 0; k < NH; k++) {
                                sum += claim[k];
                                cr_assert_leq(held[k], claim[k], "a host above its claim");
                        }
                        cr_assert_leq(sum, budget, "trial %d step %d", trial, step);
                }
                cr_assert_eq(pool[0], budget - DS_CLUSTER_FLOOR * (NH - 1),
                             "trial %d: the busy host's pool is %u of budget %u", trial, pool[0],
                             budget);
        }
}

/* ---- handover and hold-and-wait ---- */

Test(policy, handover_goes_first_to_a_waiter_of_the_releasing_scraper)
{
        /* a holds 10 of 10 with 3 waiting; b holds 4 of 10 with 1 waiting
         * (older, smaller share): a release of a's goes to a's waiter */
        struct ds_pick_entry e[2] = {{9, 10, 3, 5}, {4, 10, 1, 1}};
        cr_assert_eq(ds_policy_pick(e, NULL, 2, 20, 13, 0), 0, "preferred: a's own waiter");
        cr_assert_eq(ds_policy_pick(e, NULL, 2, 20, 13, -1), 1, "by the policy: b");
        e[0].held = 10;
        cr_assert_eq(ds_policy_pick(e, NULL, 2, 20, 14, 0), 1, "a at its limit: not a");
}

Test(policy, handover_counts_only_releases_that_serve_a_waiter)
{
        /* pool 20 full: a 10/10 with 2 waiting, b 10/10 with none */
        struct ds_pick_entry e[2] = {{10, 10, 2, 1}, {10, 10, 0, UINT64_MAX}};
        cr_assert_eq(ds_policy_handover(e, NULL, 2, 0, 20, 20, 10), 2, "a's two waiters");
        cr_assert_eq(e[0].held, 10, "its share does not change");
        cr_assert_eq(e[0].waiting, 0);
        struct ds_pick_entry f[2] = {{10, 10, 2, 1}, {10, 10, 0, UINT64_MAX}};
        cr_assert_eq(ds_policy_handover(f, NULL, 2, 1, 20, 20, 10), 0,
                     "b's release serves nobody: a is at its limit");
        /* three scrapers, c holds nothing and waits: everyone's unused
         * connections serve it, up to what its limit allows */
        struct ds_pick_entry g[3] = {
            {10, 10, 0, UINT64_MAX}, {10, 10, 0, UINT64_MAX}, {0, 10, 4, 7}};
        cr_assert_eq(ds_policy_handover(g, NULL, 3, 0, 20, 20, 3), 3, "at most max");
        struct ds_pick_entry h[3] = {
            {10, 10, 0, UINT64_MAX}, {10, 10, 0, UINT64_MAX}, {0, 10, 4, 7}};
        cr_assert_eq(ds_policy_handover(h, NULL, 3, 0, 20, 20, 10), 4, "c's four waiters");
        struct ds_pick_entry none[1] = {{5, 10, 0, UINT64_MAX}};
        cr_assert_eq(ds_policy_handover(none, NULL, 1, 0, 20, 5, 5), 0, "nobody waits");
}

Test(policy, handover_respects_a_reserve_set_aside_for_another)
{
        /* b claims a reserve of 5 and holds 0: a's slot may go to b only */
        struct ds_pick_entry e[3] = {{10, 10, 0, UINT64_MAX}, {0, 5, 1, 3}, {10, 10, 2, 1}};
        uint32_t r[3] = {0, 5, 0};
        cr_assert_eq(ds_policy_pick(e, r, 3, 20, 19, 2), 1, "not c: the slot is b's reserve");
}

Test(policy, a_thread_holding_a_stuck_connection_goes_first_within_its_scraper)
{
        cr_assert(ds_policy_lease_first(9, 1, 3, 0), "holds: before an older one");
        cr_assert_not(ds_policy_lease_first(3, 0, 9, 1));
        cr_assert(ds_policy_lease_first(3, 1, 9, 1), "both hold: first come");
        cr_assert(ds_policy_lease_first(3, 0, 9, 0), "neither: first come");
}

Test(policy, hold_and_wait_over_the_whole_pool_is_a_deadlock)
{
        /* pool 4: four processes each hold 1 and wait for a second; two
         * more wait for their first */
        struct ds_pick_entry s[1] = {{4, 4, 6, 1}};
        struct ds_wait_proc p[6] = {{0, 1, 1}, {0, 1, 1}, {0, 1, 1},
                                    {0, 1, 1}, {0, 0, 0}, {0, 0, 0}};
        cr_assert_eq(ds_policy_deadlock(p, 6, s, 1, 4, 4, 0), DS_DEADLOCK_POOL, "pool full");
        s[0].limit = 10;
        cr_assert_eq(ds_policy_deadlock(p, 6, s, 1, 4, 4, 0), DS_DEADLOCK_POOL, "below its limit");
        cr_assert_eq(ds_policy_deadlock(p, 6, s, 1, 4, 4, 1), DS_DEADLOCK_NONE,
                     "a draining slot will come free");
        cr_assert_eq(ds_policy_deadlock(p, 6, s, 1, 5, 4, 0), DS_DEADLOCK_NONE, "a slot is free");
        p[3].holders = 0; /* its thread holds nothing: it will finish */
        cr_assert_eq(ds_policy_deadlock(p, 6, s, 1, 4, 4, 0), DS_DEADLOCK_NONE);
        p[3].holders = 1;
        p[2].held = 2; /* one of its slots is not held by a waiting thread */
        cr_assert_eq(ds_policy_deadlock(p, 6, s, 1, 5, 5, 0), DS_DEADLOCK_NONE);
}

Test(policy, hold_and_wait_within_a_scraper_at_its_limit_is_a_deadlock)
{
        /* a at its limit 2, both its slots held by waiting threads; b busy
         * beside it and the pool not full */
        struct ds_pick_entry s[2] = {{2, 2, 2, 1}, {3, 10, 0, UINT64_MAX}};
        struct ds_wait_proc p[3] = {{0, 1, 1}, {0, 1, 1}, {1, 3, 0}};
        cr_assert_eq(ds_policy_deadlock(p, 3, s, 2, 20, 5, 0), 0);
        s[0].limit = 3; /* b went idle: a may take one more */
        cr_assert_eq(ds_policy_deadlock(p, 3, s, 2, 20, 5, 0), DS_DEADLOCK_NONE);
        struct ds_pick_entry none[1] = {{0, 2, 0, UINT64_MAX}};
        struct ds_wait_proc q[1] = {{0, 0, 0}};
        cr_assert_eq(ds_policy_deadlock(q, 1, none, 1, 20, 0, 0), DS_DEADLOCK_NONE, "no waiter");
}

Test(policy, release_thresholds_and_advice_periods_follow_the_configuration)
{
        cr_assert_eq(ds_policy_min_unused_ns(&cfg, DS_RELEASE_IDLE), 30000000000ull);
        cr_assert_eq(ds_policy_min_unused_ns(&cfg, DS_RELEASE_HANDOVER), 100000000ull);
        cr_assert_eq(ds_policy_min_unused_ns(&cfg, DS_RELEASE_SURPLUS), 100000000ull);
        cr_assert_eq(ds_policy_advice_period_ms(&cfg, 0), 1000);
        cr_assert_eq(ds_policy_advice_period_ms(&cfg, 1), 50, "half the handover delay");
        struct ds_config c = cfg;
        c.idle_timeout_ms = 400;
        cr_assert_eq(ds_policy_advice_period_ms(&c, 0), 100);
        c.handover_delay_ms = 10;
        cr_assert_eq(ds_policy_advice_period_ms(&c, 1), 20, "never below 20 ms");
}

Test(policy, a_fresh_connection_is_kept_a_second_and_an_owed_surplus_takes_any)
{
        uint64_t ms = 1000000ull;
        cr_assert(ds_policy_may_take(200 * ms, 0, 100 * ms));
        cr_assert_not(ds_policy_may_take(50 * ms, 0, 100 * ms));
        cr_assert_not(ds_policy_may_take(200 * ms, 1, 100 * ms), "fresh: a second first");
        cr_assert(ds_policy_may_take(1000 * ms, 1, 100 * ms));
        cr_assert_eq(ds_policy_surplus_unused_ns(100 * ms, 500 * ms), 100 * ms);
        cr_assert_eq(ds_policy_surplus_unused_ns(100 * ms, 1000 * ms), 0, "owed a second");
}

Test(policy, starved_and_below_fair_connects_and_who_owes_the_pool)
{
        cr_assert_eq(ds_policy_starved(1, 4, 10, 0, 9), 6, "full pool: room to its limit");
        cr_assert_eq(ds_policy_starved(1, 10, 10, 0, 9), 0, "at its limit: not starved");
        cr_assert_eq(ds_policy_starved(0, 1, 10, 3, 9), 2, "free slots: its unfilled reserve");
        cr_assert_eq(ds_policy_starved(0, 4, 10, 3, 9), 0);
        cr_assert_eq(ds_policy_below_fair(3, 10, 7, 9), 4);
        cr_assert_eq(ds_policy_below_fair(3, 5, 7, 9), 2, "the limit caps the fair share");
        cr_assert_eq(ds_policy_below_fair(7, 10, 7, 9), 0);
        cr_assert(ds_policy_owes(15, 10, 7, 0, 1, 1, 0), "above its limit, connects starve");
        cr_assert_not(ds_policy_owes(15, 10, 7, 5, 1, 1, 0), "all of it promised already");
        cr_assert_not(ds_policy_owes(15, 10, 7, 0, 1, 0, 0), "nobody starves");
        cr_assert(ds_policy_owes(9, 10, 7, 0, 1, 0, 1), "above its fair share");
        cr_assert_not(ds_policy_owes(9, 10, 7, 0, 0, 0, 1), "an idle one is not asked for that");
}
