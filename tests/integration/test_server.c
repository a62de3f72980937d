/* test_server.c: end to end against a real engram-server process.
 *
 * One server is started for the group with --max-rows 65536 and a resident
 * budget that holds table a_res but not b_disk, so both tiers are exercised
 * (names sort so that a restart loads them in the same order and the tiers
 * stay the same). Tables are imported with engramctl; rows are read with
 * libengram, sync and async, and compared byte for byte with the synthetic
 * rule. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "engram/engram.h"
#include "harness.h"
#include "synthetic.h"

#define RES_ROWS 200000ull   /* x 128 B = 25.6 MB: resident */
#define DISK_ROWS 50000ull   /* x 256 B = 12.8 MB: over the rest of the budget */
#define BUDGET "30000000"

static test_server srv;
static char tmp[256];
static const char *const server_args[] = {"--max-rows", "65536", "--resident-budget", BUDGET,
                                          "--threads", "2", NULL};

static engram_client *connect_client(void)
{
    engram_client *c = NULL;
    engram_error err;
    assert_int_equal(engram_client_open(srv.addr, NULL, &c, &err), ENGRAM_OK);
    return c;
}

/* Random rows in [0, rows) plus the edges and a duplicate. */
static void make_rows(uint64_t *rows, size_t n, uint64_t nrows, uint64_t seed)
{
    uint64_t x = seed;
    for (size_t i = 0; i < n; i++)
        rows[i] = splitmix64(x++) % nrows;
    rows[0] = 0;
    if (n > 1)
        rows[n - 1] = nrows - 1;
    if (n > 3)
        rows[2] = rows[1];
}

static void check_bytes(const uint8_t *got, const uint64_t *rows, size_t n, uint32_t rb,
                        uint64_t seed)
{
    uint8_t want[512];
    for (size_t i = 0; i < n; i++) {
        synthetic_row(seed, rows[i], want, rb);
        if (memcmp(got + i * rb, want, rb) != 0)
            fail_msg("row %llu (index %zu) differs", (unsigned long long)rows[i], i);
    }
}

static void lookup_and_check(engram_client *c, const char *table, uint64_t nrows,
                             uint32_t rb, uint64_t seed, size_t n)
{
    uint64_t *rows = malloc(n * sizeof *rows);
    uint8_t *out = malloc(n * rb);
    make_rows(rows, n, nrows, n * 7 + 1);
    uint32_t got_rb = 0;
    uint64_t ver = 0;
    engram_error err;
    int rc = engram_lookup_sync(c, table, rows, n, out, n * rb, &got_rb, &ver, &err);
    if (rc != ENGRAM_OK)
        fail_msg("lookup %s x%zu: %s: %s", table, n, engram_status_name(rc), err.message);
    assert_int_equal(got_rb, rb);
    assert_true(ver >= 1);
    check_bytes(out, rows, n, rb, seed);
    free(rows);
    free(out);
}

static int group_setup(void **state)
{
    harness_tmpdir(tmp, sizeof tmp);
    if (server_start(&srv, tmp, server_args) != 0)
        return -1;
    if (engramctl(srv.addr, "import-synthetic", "--table", "a_res", "--rows", "200000",
                  "--row-bytes", "128", "--seed", "7", "--dtype", "bf16", "--dim", "64", NULL) != 0)
        return -1;
    return engramctl(srv.addr, "import-synthetic", "--table", "b_disk", "--rows", "50000",
                     "--row-bytes", "256", "--seed", "8", NULL);
}

static int group_teardown(void **state)
{
    int rc = server_stop(&srv);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    if (system(cmd) != 0)
        return -1;
    return rc;
}

static void test_tables_listed(void **state)
{
    engram_client *c = connect_client();
    engram_table_info *t = NULL;
    size_t n = 0;
    assert_int_equal(engram_table_list(c, &t, &n, NULL), ENGRAM_OK);
    assert_int_equal(n, 2);
    assert_string_equal(t[0].name, "a_res");
    assert_int_equal(t[0].rows, RES_ROWS);
    assert_int_equal(t[0].row_bytes, 128);
    assert_int_equal(t[0].dim, 64);
    assert_string_equal(t[0].dtype, "bf16");
    assert_int_equal(t[0].version, 1);
    assert_int_equal(t[0].resident, 1);
    assert_string_equal(t[1].name, "b_disk");
    assert_int_equal(t[1].row_bytes, 256);
    assert_string_equal(t[1].dtype, "u8");
    assert_int_equal(t[1].resident, 0);
    engram_free(t);
    engram_table_info one;
    assert_int_equal(engram_table_get(c, "b_disk", &one, NULL), ENGRAM_OK);
    assert_int_equal(one.rows, DISK_ROWS);
    engram_client_close(c);
}

static void test_sync_lookups_1_to_65536_rows(void **state)
{
    engram_client *c = connect_client();
    const size_t sizes[] = {1, 2, 3, 100, 4096, 65536};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        lookup_and_check(c, "a_res", RES_ROWS, 128, 7, sizes[i]);
        lookup_and_check(c, "b_disk", DISK_ROWS, 256, 8, sizes[i]);
    }
    engram_client_close(c);
}

static void test_async_8_in_flight(void **state)
{
    engram_client *c = connect_client();
    enum { K = 8, N = 4096, ROUNDS = 6 };
    uint64_t *rows = malloc(K * N * sizeof *rows);
    uint8_t *out = malloc((size_t)K * N * 128);
    for (int round = 0; round < ROUNDS; round++) {
        engram_lookup *h[K];
        for (int k = 0; k < K; k++) {
            make_rows(rows + k * N, N, RES_ROWS, (uint64_t)(round * K + k));
            assert_int_equal(engram_lookup_start(c, "a_res", rows + k * N, N,
                                                 out + (size_t)k * N * 128, N * 128, &h[k], NULL),
                             ENGRAM_OK);
        }
        for (int k = K - 1; k >= 0; k--) {   /* out of order on purpose */
            if (k % 2)
                while (!engram_lookup_poll(h[k]))
                    ;
            engram_error err;
            int rc = engram_lookup_wait(h[k], -1, &err);
            if (rc != ENGRAM_OK)
                fail_msg("async %d: %s %s", k, engram_status_name(rc), err.message);
            uint32_t rb;
            uint64_t ver;
            engram_lookup_result(h[k], &rb, &ver);
            assert_int_equal(rb, 128);
            assert_int_equal(ver, 1);
            check_bytes(out + (size_t)k * N * 128, rows + k * N, N, 128, 7);
            engram_lookup_free(h[k]);
        }
    }
    free(rows);
    free(out);
    engram_client_close(c);
}

static void expect_error(engram_client *c, const char *table, const uint64_t *rows, size_t n,
                         size_t cap, int code, const char *message)
{
    static uint8_t out[65537 * 128];
    engram_error err;
    int rc = engram_lookup_sync(c, table, rows, n, out, cap, NULL, NULL, &err);
    if (rc != code)
        fail_msg("want %s got %s: %s", engram_status_name(code), engram_status_name(rc), err.message);
    assert_int_equal(err.code, code);
    if (!strstr(err.message, message))
        fail_msg("message \"%s\" lacks \"%s\"", err.message, message);
    /* the server still answers */
    lookup_and_check(c, "a_res", RES_ROWS, 128, 7, 16);
}

static void test_bad_lookups(void **state)
{
    engram_client *c = connect_client();
    static uint64_t rows[65537];
    for (size_t i = 0; i < 65537; i++)
        rows[i] = i;
    expect_error(c, "nope", rows, 1, 128, ENGRAM_NOT_FOUND, "table \"nope\" not found");
    uint64_t bad[] = {3, 200000, 5};
    expect_error(c, "a_res", bad, 3, 3 * 128, ENGRAM_OUT_OF_RANGE,
                 "row 200000 (index 1 in the request) is out of range: table \"a_res\" has 200000 rows");
    expect_error(c, "a_res", rows, 65537, sizeof rows * 16, ENGRAM_INVALID_ARGUMENT,
                 "request has 65537 rows; the maximum per request is 65536");
    expect_error(c, "", rows, 1, 128, ENGRAM_INVALID_ARGUMENT, "table name is empty");
    expect_error(c, "a_res", rows, 4, 3 * 128, ENGRAM_INVALID_ARGUMENT, "does not fit");
    engram_client_close(c);
}

/* Readers hammer a table while a new version is imported: every reply must
 * be wholly of one version (checked against that version's seed). */
typedef struct reader_arg {
    int stop;
    int saw_v2;
    int bad;
} reader_arg;

static void *reader(void *p)
{
    reader_arg *a = p;
    engram_client *c = connect_client();
    enum { N = 512 };
    uint64_t rows[N];
    uint8_t out[N * 64], want[64];
    for (uint64_t it = 0; !__atomic_load_n(&a->stop, __ATOMIC_ACQUIRE); it++) {
        make_rows(rows, N, 20000, it);
        uint64_t ver = 0;
        if (engram_lookup_sync(c, "c_swap", rows, N, out, sizeof out, NULL, &ver, NULL) != ENGRAM_OK) {
            a->bad++;
            continue;
        }
        for (size_t i = 0; i < N; i++) {
            synthetic_row(ver == 1 ? 100 : 200, rows[i], want, 64);
            if (memcmp(out + i * 64, want, 64) != 0)
                a->bad++;
        }
        if (ver == 2)
            a->saw_v2 = 1;
    }
    engram_client_close(c);
    return NULL;
}

static void test_new_version_is_atomic(void **state)
{
    assert_int_equal(engramctl(srv.addr, "import-synthetic", "--table", "c_swap", "--rows", "20000",
                               "--row-bytes", "64", "--seed", "100", NULL), 0);
    reader_arg a = {0};
    pthread_t th;
    pthread_create(&th, NULL, reader, &a);
    assert_int_equal(engramctl(srv.addr, "import-synthetic", "--table", "c_swap", "--rows", "20000",
                               "--row-bytes", "64", "--seed", "200", NULL), 0);
    engram_client *c = connect_client();
    engram_table_info ti;
    assert_int_equal(engram_table_get(c, "c_swap", &ti, NULL), ENGRAM_OK);
    assert_int_equal(ti.version, 2);
    /* let the reader see the new version before stopping it */
    for (int i = 0; i < 200 && !__atomic_load_n(&a.saw_v2, __ATOMIC_ACQUIRE); i++)
        lookup_and_check(c, "c_swap", 20000, 64, 200, 8);
    __atomic_store_n(&a.stop, 1, __ATOMIC_RELEASE);
    pthread_join(th, NULL);
    assert_int_equal(a.bad, 0);
    assert_int_equal(a.saw_v2, 1);
    engram_client_close(c);
}

static void test_restart_keeps_everything(void **state)
{
    engram_client *c = connect_client();
    engram_table_info before[3], after[3];
    const char *names[3] = {"a_res", "b_disk", "c_swap"};
    for (int i = 0; i < 3; i++)
        assert_int_equal(engram_table_get(c, names[i], &before[i], NULL), ENGRAM_OK);
    engram_client_close(c);

    char data[300];
    snprintf(data, sizeof data, "%s", tmp);
    assert_int_equal(server_stop(&srv), 0);
    assert_int_equal(server_start(&srv, data, server_args), 0);

    c = connect_client();
    for (int i = 0; i < 3; i++) {
        assert_int_equal(engram_table_get(c, names[i], &after[i], NULL), ENGRAM_OK);
        assert_int_equal(after[i].version, before[i].version);
        assert_int_equal(after[i].checksum, before[i].checksum);
        assert_int_equal(after[i].rows, before[i].rows);
        assert_int_equal(after[i].resident, before[i].resident);
    }
    lookup_and_check(c, "a_res", RES_ROWS, 128, 7, 4096);
    lookup_and_check(c, "b_disk", DISK_ROWS, 256, 8, 4096);
    lookup_and_check(c, "c_swap", 20000, 64, 200, 4096);
    engram_client_close(c);
    assert_int_equal(engramctl(srv.addr, "verify-synthetic", "--table", "b_disk", "--seed", "8", NULL), 0);
    assert_int_equal(engramctl(srv.addr, "verify-synthetic", "--table", "b_disk", "--seed", "9", NULL), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tables_listed),
        cmocka_unit_test(test_sync_lookups_1_to_65536_rows),
        cmocka_unit_test(test_async_8_in_flight),
        cmocka_unit_test(test_bad_lookups),
        cmocka_unit_test(test_new_version_is_atomic),
        cmocka_unit_test(test_restart_keeps_everything),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
