/* test_policy.c - the pool's rules as pure functions (SPEC 3, 4.2). */
#include <criterion/criterion.h>

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
                long w = ds_policy_pick(e, 3, cfg.pool_size, held_total);
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

Test(policy, activity_window_and_waiters_make_a_scraper_active)
{
        uint64_t s = 1000000000ull;
        cr_assert_eq(ds_policy_is_active(&cfg, 0, 0, 0, 100 * s), 0, "never active");
        cr_assert_eq(ds_policy_is_active(&cfg, 0, 0, 50 * s, 100 * s), 1, "50 s ago");
        cr_assert_eq(ds_policy_is_active(&cfg, 0, 0, 40 * s, 100 * s), 0, "60 s ago is idle");
        cr_assert_eq(ds_policy_is_active(&cfg, 1, 0, 0, 100 * s), 1, "a waiter");
        cr_assert_eq(ds_policy_is_active(&cfg, 0, 1, 0, 100 * s), 1, "a call in flight");
}

Test(policy, full_pool_grants_nothing)
{
        struct ds_pick_entry e[1] = {{0, 10, 1, 1}};
        cr_assert_eq(ds_policy_pick(e, 1, 20, 20), -1);
        cr_assert_eq(ds_policy_pick(e, 1, 20, 19), 0);
}

Test(policy, scraper_at_its_limit_is_skipped)
{
        struct ds_pick_entry e[2] = {{10, 10, 3, 1}, {4, 10, 1, 9}};
        cr_assert_eq(ds_policy_pick(e, 2, 20, 14), 1);
        e[1].waiting = 0;
        cr_assert_eq(ds_policy_pick(e, 2, 20, 14), -1, "only waiter is at its limit");
}

Test(policy, smallest_share_of_limit_goes_first)
{
        /* a holds 2 of 10 (20 %), b holds 3 of 15 (20 %), c holds 1 of 10 (10 %) */
        struct ds_pick_entry e[3] = {{2, 10, 1, 1}, {3, 15, 1, 2}, {1, 10, 1, 3}};
        cr_assert_eq(ds_policy_pick(e, 3, 20, 6), 2);
        e[2].waiting = 0;
        cr_assert_eq(ds_policy_pick(e, 3, 20, 6), 0, "equal shares: the older waiter");
}

Test(policy, small_share_scraper_is_not_starved_by_a_busy_one)
{
        /* A has 100 queued waiters arriving first, B has one later: as slots
         * free up one by one, B is served at the first hand-off. */
        struct ds_pick_entry e[2] = {{9, 10, 100, 1}, {0, 10, 1, 500}};
        cr_assert_eq(ds_policy_pick(e, 2, 20, 19), 1);
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
                long w = ds_policy_pick(e, 4, 20, total);
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
        cr_assert(ds_policy_may_grant(20, 19, 9, 10));
        cr_assert_not(ds_policy_may_grant(20, 20, 0, 10));
        cr_assert_not(ds_policy_may_grant(20, 5, 10, 10));
}

Test(policy, idle_scraper_gives_back_everything_it_holds)
{
        enum ds_release_reason why;
        cr_assert_eq(ds_policy_give_back(&cfg, 0, 7, 15, 0, 0, &why), 7);
        cr_assert_eq(why, DS_RELEASE_IDLE);
        cr_assert_eq(ds_policy_give_back(&cfg, 0, 0, 15, 0, 0, &why), 0, "holds nothing");
}

Test(policy, active_scraper_gives_back_only_surplus_that_others_starve_for)
{
        enum ds_release_reason why;
        cr_assert_eq(ds_policy_give_back(&cfg, 1, 15, 10, 0, 0, &why), 0, "nobody starves");
        cr_assert_eq(ds_policy_give_back(&cfg, 1, 15, 10, 0, 3, &why), 3);
        cr_assert_eq(why, DS_RELEASE_SURPLUS);
        cr_assert_eq(ds_policy_give_back(&cfg, 1, 15, 10, 0, 9, &why), 5, "at most the surplus");
        cr_assert_eq(ds_policy_give_back(&cfg, 1, 15, 10, 4, 9, &why), 1, "less what is promised");
        cr_assert_eq(ds_policy_give_back(&cfg, 1, 15, 10, 5, 9, &why), 0);
        cr_assert_eq(ds_policy_give_back(&cfg, 1, 10, 10, 0, 9, &why), 0, "at its limit");
}

Test(policy, idle_release_off_gives_back_nothing)
{
        enum ds_release_reason why;
        cfg.idle_release = 0;
        cr_assert_eq(ds_policy_give_back(&cfg, 0, 7, 15, 0, 0, &why), 0);
        cr_assert_eq(ds_policy_give_back(&cfg, 1, 15, 10, 0, 5, &why), 0);
        cr_assert_eq(why, DS_RELEASE_NORMAL);
}
