/* test_hotcache.c: the S3-FIFO hot-row cache: exact contents, the byte
 * budget, scan resistance (a stream of one-hit rows cannot flush the hot
 * set), ghost re-admission, and concurrent readers/writers never seeing a
 * wrong row. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "hotcache.h"
#include "synthetic.h"

#define RB 64

static void row_of(uint64_t key, uint8_t *out)
{
    synthetic_row(99, key, out, RB);
}

/* A lookup as the store will do it: get, and put on a miss. */
static int use(hotcache *c, uint64_t key)
{
    uint8_t got[RB], want[RB];
    row_of(key, want);
    if (hotcache_get(c, key, got)) {
        assert_memory_equal(got, want, RB);
        return 1;
    }
    hotcache_put(c, key, want);
    return 0;
}

static void test_get_put_and_budget(void **state)
{
    hotcache_metrics m = {HOTCACHE_METRIC(METRIC_INIT)};
    assert_null(hotcache_create(1000, RB, NULL));        /* too small to be useful */
    hotcache *c = hotcache_create(1 << 20, RB, &m);
    assert_non_null(c);
    uint64_t cap = hotcache_capacity(c);
    assert_true(cap > 5000 && cap * RB <= (1 << 20));
    assert_int_equal(use(c, 7), 0);
    assert_int_equal(use(c, 7), 1);
    for (uint64_t k = 0; k < 10 * cap; k++)
        use(c, 1000 + k);
    assert_true(hotcache_count(c) <= cap);
    assert_int_equal(m.hits.value, 1);
    assert_true(m.evictions.value >= 9 * cap);
    hotcache_destroy(c);
}

static void test_scan_does_not_flush_hot_rows(void **state)
{
    hotcache_metrics m = {HOTCACHE_METRIC(METRIC_INIT)};
    hotcache *c = hotcache_create(1 << 20, RB, &m);
    uint64_t cap = hotcache_capacity(c), hot = cap / 5, hits = 0, tries = 0;
    for (int round = 0; round < 4; round++)      /* warm the hot set */
        for (uint64_t k = 0; k < hot; k++)
            use(c, k);
    uint64_t scan = 1ull << 40;
    for (int round = 0; round < 20; round++) {
        for (uint64_t k = 0; k < hot; k++, tries++)
            hits += (uint64_t)use(c, k);
        for (uint64_t i = 0; i < cap / 2; i++)   /* one-hit wonders */
            use(c, scan++);
    }
    /* an LRU of the same size would keep about 1 - (cap/2) / cap of it */
    assert_true(hits * 100 >= tries * 95);
    hotcache_destroy(c);
}

static void test_ghost_readmits_to_main(void **state)
{
    hotcache_metrics m = {HOTCACHE_METRIC(METRIC_INIT)};
    hotcache *c = hotcache_create(1 << 20, RB, &m);
    uint64_t cap = hotcache_capacity(c);
    use(c, 42);                                   /* into small, never hit */
    for (uint64_t k = 0; k < cap + cap / 4; k++)  /* fills up, pushes 42 to the ghost */
        use(c, 10000000 + k);
    assert_int_equal(use(c, 42), 0);
    assert_true(m.ghost_hits.value >= 1);
    for (uint64_t k = 0; k < cap / 2; k++)        /* main keeps it through a scan */
        use(c, 20000000 + k);
    assert_int_equal(use(c, 42), 1);
    hotcache_destroy(c);
}

static void *hammer(void *arg)
{
    hotcache *c = arg;
    uint64_t x = (uint64_t)(uintptr_t)&x;
    for (int i = 0; i < 200000; i++) {
        x = splitmix64(x);
        use(c, x % 50000);
    }
    return NULL;
}

static void test_concurrent_use(void **state)
{
    hotcache *c = hotcache_create(1 << 20, RB, NULL);
    pthread_t t[3];
    for (int i = 0; i < 3; i++)
        pthread_create(&t[i], NULL, hammer, c);
    for (int i = 0; i < 3; i++)
        pthread_join(t[i], NULL);
    assert_true(hotcache_count(c) <= hotcache_capacity(c));
    hotcache_destroy(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_put_and_budget),
        cmocka_unit_test(test_scan_does_not_flush_hot_rows),
        cmocka_unit_test(test_ghost_readmits_to_main),
        cmocka_unit_test(test_concurrent_use),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
