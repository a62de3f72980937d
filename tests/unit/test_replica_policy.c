/* test_replica_policy.c: client/replica_policy.c, the cluster client's
 * replica health and hedging decisions, on a fake clock (the policy takes
 * the time from its caller): ejection after consecutive failures or lost
 * hedges, the doubling backoff and its cap, re-admission through one probe
 * at a time, which replica a sub-request tries next, and the hedge delay
 * from the latency window. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "replica_policy.h"

#define MS 1000000LL

static const rp_config cfg3 = {
    .eject_after_failures = 3,
    .eject_after_hedge_losses = 2,
    .eject_backoff_ms = 1000,
    .hedge_percentile = 90,
    .hedge_min_ms = 2,
};

static void test_ejected_after_consecutive_failures(void **state)
{
    (void)state;
    rp_policy p;
    rp_replica r;
    rp_init(&p, &cfg3);
    rp_replica_init(&p, &r);
    int64_t now = 5000 * MS;
    assert_int_equal(rp_fail(&p, &r, 0, now), 0);
    assert_int_equal(rp_fail(&p, &r, 0, now), 0);
    rp_ok(&p, &r);                                  /* an answer breaks the run */
    assert_int_equal(rp_fail(&p, &r, 0, now), 0);
    assert_int_equal(rp_fail(&p, &r, 0, now), 0);
    assert_true(rp_usable(&r, now));
    assert_int_equal(rp_fail(&p, &r, 0, now), 1);   /* third in a row */
    assert_false(rp_usable(&r, now));
    assert_int_equal(r.eject_until, now + 1000 * MS);
    /* another attempt sent before the ejection fails: not ejected again,
     * the ejection is not extended */
    assert_int_equal(rp_fail(&p, &r, 0, now + 10 * MS), 0);
    assert_int_equal(r.eject_until, now + 1000 * MS);
    assert_false(rp_usable(&r, now + 999 * MS));
    assert_true(rp_usable(&r, now + 1000 * MS));
}

static void test_probe_readmits_or_reejects_with_doubled_backoff(void **state)
{
    (void)state;
    rp_policy p;
    rp_replica r;
    rp_init(&p, &cfg3);
    rp_replica_init(&p, &r);
    int64_t now = 0;
    for (int i = 0; i < 3; i++)
        rp_fail(&p, &r, 0, now);
    assert_true(r.ejected);
    /* not yet: no probe */
    assert_int_equal(rp_begin(&r, now + 500 * MS), 0);
    now += 1000 * MS;
    /* the backoff is over: one probe, and only one at a time */
    assert_int_equal(rp_begin(&r, now), 1);
    assert_false(rp_usable(&r, now));
    /* the probe fails: ejected again for twice as long */
    assert_int_equal(rp_fail(&p, &r, 1, now), 1);
    assert_false(r.probing);
    assert_int_equal(r.eject_until, now + 2000 * MS);
    now += 2000 * MS;
    assert_int_equal(rp_begin(&r, now), 1);
    /* a probe we cancelled says nothing: the next one may go */
    rp_abandon(&r, 1);
    assert_true(rp_usable(&r, now));
    assert_int_equal(rp_begin(&r, now), 1);
    /* it answers: healthy, backoff back to the first length */
    rp_ok(&p, &r);
    assert_false(r.ejected);
    assert_int_equal(rp_begin(&r, now), 0);
    assert_int_equal(r.backoff_ms, 1000);
    assert_int_equal(r.fails, 0);
}

static void test_backoff_doubles_up_to_the_cap(void **state)
{
    (void)state;
    rp_policy p;
    rp_replica r;
    rp_config c = cfg3;
    c.eject_after_failures = 1;
    rp_init(&p, &c);
    rp_replica_init(&p, &r);
    int64_t now = 0;
    const int64_t want[] = {1000, 2000, 4000, 8000, 16000, 30000, 30000};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        assert_int_equal(rp_fail(&p, &r, i > 0, now), 1);
        assert_int_equal(r.eject_until - now, want[i] * MS);
        now = r.eject_until;
        assert_int_equal(rp_begin(&r, now), 1);
    }
}

static void test_lost_hedges_eject_a_stalling_replica(void **state)
{
    (void)state;
    rp_policy p;
    rp_replica r;
    rp_init(&p, &cfg3);
    rp_replica_init(&p, &r);
    assert_int_equal(rp_hedge_lost(&p, &r, 0, 0), 0);
    rp_ok(&p, &r);                                   /* it answered first once */
    assert_int_equal(rp_hedge_lost(&p, &r, 0, 0), 0);
    assert_int_equal(rp_fail(&p, &r, 0, 0), 0);      /* a separate run */
    assert_int_equal(rp_hedge_lost(&p, &r, 0, 0), 1);
    assert_false(rp_usable(&r, 0));

    /* 0: never eject, however many */
    rp_config c = cfg3;
    c.eject_after_failures = c.eject_after_hedge_losses = 0;
    rp_init(&p, &c);
    rp_replica_init(&p, &r);
    for (int i = 0; i < 100; i++) {
        assert_int_equal(rp_fail(&p, &r, 0, 0), 0);
        assert_int_equal(rp_hedge_lost(&p, &r, 0, 0), 0);
    }
    assert_true(rp_usable(&r, 0));
}

static void test_pick(void **state)
{
    (void)state;
    rp_policy p;
    rp_replica r[3];
    rp_replica *reps[3] = {&r[0], &r[1], &r[2]};
    rp_init(&p, &cfg3);
    for (int i = 0; i < 3; i++)
        rp_replica_init(&p, &r[i]);
    uint32_t cur = 0;
    /* first picks go round-robin */
    assert_int_equal(rp_pick(reps, 3, 0, &cur, 1, 0, 0), 0);
    assert_int_equal(rp_pick(reps, 3, 0, &cur, 1, 0, 0), 1);
    assert_int_equal(rp_pick(reps, 3, 0, &cur, 1, 0, 0), 2);
    assert_int_equal(rp_pick(reps, 3, 0, &cur, 1, 0, 0), 0);
    assert_int_equal(cur, 4);
    /* failovers and hedges skip what was tried and leave the cursor */
    assert_int_equal(rp_pick(reps, 3, 1u << 1, &cur, 0, 0, 0), 2);
    assert_int_equal(rp_pick(reps, 3, 1u << 1 | 1u << 2, &cur, 0, 1, 0), 0);
    assert_int_equal(cur, 4);
    assert_int_equal(rp_pick(reps, 3, 7, &cur, 0, 0, 0), -1);
    /* an ejected replica is skipped while others are usable */
    for (int i = 0; i < 3; i++)
        rp_fail(&p, &r[1], 0, 100 * MS);
    cur = 1;
    assert_int_equal(rp_pick(reps, 3, 0, &cur, 1, 0, 200 * MS), 2);
    /* nothing usable left: a failover takes the least recently ejected
     * untried one, a hedge takes none */
    for (int i = 0; i < 3; i++)
        rp_fail(&p, &r[2], 0, 150 * MS);
    for (int i = 0; i < 3; i++)
        rp_fail(&p, &r[0], 0, 120 * MS);
    assert_int_equal(rp_pick(reps, 3, 0, &cur, 0, 0, 200 * MS), 1);
    assert_int_equal(rp_pick(reps, 3, 1u << 1, &cur, 0, 0, 200 * MS), 0);
    assert_int_equal(rp_pick(reps, 3, 0, &cur, 0, 1, 200 * MS), -1);
    /* r[1]'s backoff ends first: usable again (for its probe) */
    assert_int_equal(rp_pick(reps, 3, 0, &cur, 0, 1, 1100 * MS), 1);
    assert_int_equal(rp_begin(&r[1], 1100 * MS), 1);
    assert_int_equal(rp_pick(reps, 3, 0, &cur, 0, 1, 1100 * MS), -1);  /* probe out */
}

static void test_hedge_delay(void **state)
{
    (void)state;
    rp_policy p;
    rp_init(&p, &cfg3);
    /* too few samples */
    for (int i = 0; i < RP_HEDGE_MIN_SAMPLES - 1; i++)
        rp_record_latency(&p, 1000 * (int64_t)1000);     /* 1 ms */
    assert_int_equal(rp_hedge_delay(&p), -1);
    rp_record_latency(&p, 1000 * (int64_t)1000);
    assert_int_equal(rp_hedge_delay(&p), 2 * MS);        /* 1 ms, floored at hedge_min_ms */

    /* 100 samples 1..100 ms: the 90th percentile */
    rp_init(&p, &cfg3);
    for (int i = 1; i <= 100; i++)
        rp_record_latency(&p, i * MS);
    assert_int_equal(rp_hedge_delay(&p), 91 * MS);
    /* cached until 16 new samples */
    for (int i = 0; i < 15; i++)
        rp_record_latency(&p, 500 * MS);
    assert_int_equal(rp_hedge_delay(&p), 91 * MS);
    rp_record_latency(&p, 500 * MS);
    assert_true(rp_hedge_delay(&p) > 91 * MS);

    /* the window keeps the last RP_LAT_WINDOW samples */
    rp_init(&p, &cfg3);
    for (int i = 0; i < RP_LAT_WINDOW; i++)
        rp_record_latency(&p, 900 * MS);
    for (int i = 0; i < RP_LAT_WINDOW; i++)
        rp_record_latency(&p, 10 * MS);
    assert_int_equal(rp_hedge_delay(&p), 10 * MS);

    /* hedging off */
    rp_config c = cfg3;
    c.hedge_percentile = 0;
    rp_init(&p, &c);
    for (int i = 0; i < 100; i++)
        rp_record_latency(&p, MS);
    assert_int_equal(rp_hedge_delay(&p), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ejected_after_consecutive_failures),
        cmocka_unit_test(test_probe_readmits_or_reejects_with_doubled_backoff),
        cmocka_unit_test(test_backoff_doubles_up_to_the_cap),
        cmocka_unit_test(test_lost_hedges_eject_a_stalling_replica),
        cmocka_unit_test(test_pick),
        cmocka_unit_test(test_hedge_delay),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
