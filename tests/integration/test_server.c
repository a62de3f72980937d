/* test_server.c: end to end against a real engram-server process.
 *
 * One server is started for the group with --max-rows 65536 and a resident
 * budget that holds table a_res but not b_disk, so both tiers are exercised
 * (names sort so that a restart loads them in the same order and the tiers
 * stay the same). Tables are imported with engramctl; rows are read with
 * libengram, sync and async, and compared byte for byte with the synthetic
 * rule. A wait that times out is made certain by stopping the server with
 * SIGSTOP (a stopped process cannot answer); the reply-size limit gets a
 * second server of its own with a small --max-message-bytes, which
 * engramctl is also run against. engramctl's outputs are captured and
 * compared exactly. */
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
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
    server_signal(&srv, SIGCONT);   /* a failed pause test may have left it stopped */
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

/* Appends "ROW: HEX\n", engramctl lookup's line for a synthetic row. */
static size_t hex_line(char *dst, uint64_t seed, uint64_t row, uint32_t rb)
{
    uint8_t b[256];
    synthetic_row(seed, row, b, rb);
    size_t n = (size_t)sprintf(dst, "%llu: ", (unsigned long long)row);
    for (uint32_t i = 0; i < rb; i++)
        n += (size_t)sprintf(dst + n, "%02x", b[i]);
    dst[n++] = '\n';
    dst[n] = '\0';
    return n;
}

/* engramctl verify-synthetic's message for a wrong seed: edge row 0 is
 * checked first, and the message names its first differing byte. */
static void wrong_seed_message(char *dst, size_t cap, const char *table, uint64_t seed,
                               uint64_t wrong, uint32_t rb)
{
    uint8_t got[256], want[256];
    synthetic_row(seed, 0, got, rb);
    synthetic_row(wrong, 0, want, rb);
    uint32_t i = 0;
    while (got[i] == want[i])
        i++;
    snprintf(dst, cap,
             "engramctl: DATA_LOSS: row 0 of %s v1 differs from synthetic seed %llu at byte %u "
             "(got %02x, want %02x)\n",
             table, (unsigned long long)wrong, i, got[i], want[i]);
}

/* engramctl's outputs, exactly: tables, table, lookup (hex equal to the
 * synthetic rule) and verify-synthetic (exit 0 with the table's seed, 1
 * with another, and what each prints). Checksums and times come from
 * libengram's GetTable: the CLI must print what the server reports. */
static void test_engramctl_outputs(void **state)
{
    engram_client *c = connect_client();
    engram_table_info a, b;
    assert_int_equal(engram_table_get(c, "a_res", &a, NULL), ENGRAM_OK);
    assert_int_equal(engram_table_get(c, "b_disk", &b, NULL), ENGRAM_OK);
    engram_client_close(c);
    static char out[65536], err[4096], want[65536];

    assert_int_equal(engramctl_capture(out, sizeof out, err, sizeof err, srv.addr, "tables", NULL), 0);
    snprintf(want, sizeof want,
             "NAME                             ROWS ROW_BYTES    DIM DTYPE     VERSION CHECKSUM RESIDENT\n"
             "a_res                          200000       128     64 bf16            1 %08x yes\n"
             "b_disk                          50000       256    256 u8              1 %08x no\n",
             a.checksum, b.checksum);
    assert_string_equal(out, want);
    assert_string_equal(err, "");

    assert_int_equal(engramctl_capture(out, sizeof out, err, sizeof err, srv.addr, "table",
                                       "b_disk", NULL), 0);
    assert_true(b.xxh3 != 0);
    snprintf(want, sizeof want,
             "name: b_disk\nrows: 50000\nrow_bytes: 256\ndim: 256\ndtype: u8\nversion: 1\n"
             "checksum: %08x\nxxh3: %016llx\nresident: no\ncreated_unix_ms: %llu\n"
             "version 1: active, checksum %08x, xxh3 %016llx, 50000 local rows\n",
             b.checksum, (unsigned long long)b.xxh3, (unsigned long long)b.created_unix_ms,
             b.checksum, (unsigned long long)b.xxh3);
    assert_string_equal(out, want);
    assert_string_equal(err, "");

    assert_int_equal(engramctl_capture(out, sizeof out, err, sizeof err, srv.addr, "lookup",
                                       "--table", "a_res", "0", "1", "199999", "1", NULL), 0);
    size_t n = (size_t)sprintf(want, "table a_res version 1 row_bytes 128\n");
    const uint64_t rows[] = {0, 1, 199999, 1};
    for (int i = 0; i < 4; i++)
        n += hex_line(want + n, 7, rows[i], 128);
    assert_string_equal(out, want);
    assert_string_equal(err, "");
    assert_int_equal(engramctl_capture(out, sizeof out, err, sizeof err, srv.addr, "lookup",
                                       "--table", "b_disk", "49999", NULL), 0);
    n = (size_t)sprintf(want, "table b_disk version 1 row_bytes 256\n");
    hex_line(want + n, 8, 49999, 256);
    assert_string_equal(out, want);

    /* verify-synthetic: the two first and two last rows plus K samples */
    assert_int_equal(engramctl_capture(out, sizeof out, err, sizeof err, srv.addr,
                                       "verify-synthetic", "--table", "a_res", "--seed", "7",
                                       "--samples", "100", NULL), 0);
    assert_string_equal(out, "verified 104 rows of a_res v1: all match\n");
    assert_string_equal(err, "");
    assert_int_equal(engramctl_capture(out, sizeof out, err, sizeof err, srv.addr,
                                       "verify-synthetic", "--table", "b_disk", "--seed", "8",
                                       "--samples", "5000", NULL), 0);
    assert_string_equal(out, "verified 5004 rows of b_disk v1: all match\n");
    assert_int_equal(engramctl_capture(out, sizeof out, err, sizeof err, srv.addr,
                                       "verify-synthetic", "--table", "a_res", "--seed", "8",
                                       "--samples", "100", NULL), 1);
    assert_string_equal(out, "");
    wrong_seed_message(want, sizeof want, "a_res", 7, 8, 128);
    assert_string_equal(err, want);
    assert_int_equal(engramctl_capture(out, sizeof out, err, sizeof err, srv.addr,
                                       "verify-synthetic", "--table", "b_disk", "--seed", "7",
                                       "--samples", "10", NULL), 1);
    assert_string_equal(out, "");
    wrong_seed_message(want, sizeof want, "b_disk", 8, 7, 256);
    assert_string_equal(err, want);
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

/* K async lookups of n rows each in flight at once over one client, waited
 * for out of order (odd ones polled to done first), every byte checked. */
static void async_in_flight(engram_client *c, const char *table, uint64_t nrows, uint32_t rb,
                            uint64_t seed, size_t n, int rounds)
{
    enum { K = 8 };
    uint64_t *rows = malloc(K * n * sizeof *rows);
    uint8_t *out = malloc(K * n * rb);
    assert_non_null(rows);
    assert_non_null(out);
    for (int round = 0; round < rounds; round++) {
        engram_lookup *h[K];
        for (int k = 0; k < K; k++) {
            make_rows(rows + k * n, n, nrows, n * 1000 + (uint64_t)(round * K + k));
            assert_int_equal(engram_lookup_start(c, table, rows + k * n, n, out + k * n * rb,
                                                 n * rb, &h[k], NULL),
                             ENGRAM_OK);
        }
        for (int k = K - 1; k >= 0; k--) {   /* out of order on purpose */
            if (k % 2)
                while (!engram_lookup_poll(h[k]))
                    ;
            engram_error err;
            int rc = engram_lookup_wait(h[k], -1, &err);
            if (rc != ENGRAM_OK)
                fail_msg("async %s x%zu #%d: %s %s", table, n, k, engram_status_name(rc),
                         err.message);
            uint32_t got_rb;
            uint64_t ver;
            engram_lookup_result(h[k], &got_rb, &ver);
            assert_int_equal(got_rb, rb);
            assert_int_equal(ver, 1);
            check_bytes(out + k * n * rb, rows + k * n, n, rb, seed);
            engram_lookup_free(h[k]);
        }
    }
    free(rows);
    free(out);
}

/* The same sizes as the sync test, on both tiers, 8 in flight. */
static void test_async_8_in_flight_1_to_65536_rows(void **state)
{
    engram_client *c = connect_client();
    const size_t sizes[] = {1, 2, 3, 100, 4096, 65536};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        int rounds = sizes[i] > 4096 ? 1 : 3;
        async_in_flight(c, "a_res", RES_ROWS, 128, 7, sizes[i], rounds);
        async_in_flight(c, "b_disk", DISK_ROWS, 256, 8, sizes[i], rounds);
    }
    engram_client_close(c);
}

/* From here on no reply can come (see server_pause). */
static void pause_server(void)
{
    assert_int_equal(server_pause(&srv), 0);
}

static void resume_server(void)
{
    int st;
    assert_int_equal(server_signal(&srv, SIGCONT), 0);
    assert_int_equal(waitpid(srv.pid, &st, WCONTINUED), srv.pid);
    assert_true(WIFCONTINUED(st));
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A finite wait on a lookup the stopped server cannot answer returns
 * ENGRAM_TIMEOUT after at least the timeout, and the lookup goes on: once
 * the server runs again it completes with the right bytes; another one is
 * freed while in flight (cancelled) and the client still works. */
static void test_wait_times_out_then_completes_or_frees(void **state)
{
    engram_client *c = connect_client();
    lookup_and_check(c, "a_res", RES_ROWS, 128, 7, 16);   /* channel connected */
    enum { N = 4096 };
    static uint64_t rows_a[N], rows_b[N];
    static uint8_t out_a[N * 128], out_b[N * 256];
    make_rows(rows_a, N, RES_ROWS, 501);
    make_rows(rows_b, N, DISK_ROWS, 502);

    pause_server();
    engram_lookup *a, *b;
    assert_int_equal(engram_lookup_start(c, "a_res", rows_a, N, out_a, sizeof out_a, &a, NULL),
                     ENGRAM_OK);
    assert_int_equal(engram_lookup_start(c, "b_disk", rows_b, N, out_b, sizeof out_b, &b, NULL),
                     ENGRAM_OK);
    engram_error err;
    assert_int_equal(engram_lookup_wait(a, 0, &err), ENGRAM_TIMEOUT);
    assert_int_equal(err.code, ENGRAM_TIMEOUT);
    assert_string_equal(err.message, "not finished after 0 ms");
    int64_t t0 = mono_ms();
    assert_int_equal(engram_lookup_wait(a, 50, &err), ENGRAM_TIMEOUT);
    assert_true(mono_ms() - t0 >= 50);
    assert_int_equal(err.code, ENGRAM_TIMEOUT);
    assert_string_equal(err.message, "not finished after 50 ms");
    assert_string_equal(engram_status_name(ENGRAM_TIMEOUT), "TIMEOUT");
    assert_int_equal(engram_lookup_poll(a), 0);
    assert_int_equal(engram_lookup_wait(b, 1, &err), ENGRAM_TIMEOUT);
    engram_lookup_free(b);   /* cancels; returns while the server is stopped */
    resume_server();

    int rc = engram_lookup_wait(a, -1, &err);
    if (rc != ENGRAM_OK)
        fail_msg("after resume: %s %s", engram_status_name(rc), err.message);
    assert_int_equal(engram_lookup_poll(a), 1);
    assert_int_equal(engram_lookup_wait(a, 0, &err), ENGRAM_OK);   /* the same every time */
    uint32_t rb;
    uint64_t ver;
    engram_lookup_result(a, &rb, &ver);
    assert_int_equal(rb, 128);
    assert_int_equal(ver, 1);
    check_bytes(out_a, rows_a, N, 128, 7);
    engram_lookup_free(a);
    lookup_and_check(c, "b_disk", DISK_ROWS, 256, 8, N);
    engram_client_close(c);
}

/* The lookup fails with `code` and a message holding `message` (exactly
 * `message` when exact); then the server still answers. */
static void expect_status(engram_client *c, const char *table, const uint64_t *rows, size_t n,
                          size_t cap, int code, const char *message, int exact)
{
    static uint8_t out[65537 * 128];
    engram_error err;
    int rc = engram_lookup_sync(c, table, rows, n, out, cap, NULL, NULL, &err);
    if (rc != code)
        fail_msg("want %s got %s: %s", engram_status_name(code), engram_status_name(rc), err.message);
    assert_int_equal(err.code, code);
    if (exact ? strcmp(err.message, message) != 0 : !strstr(err.message, message))
        fail_msg("message \"%s\" %s \"%s\"", err.message, exact ? "is not" : "lacks", message);
    lookup_and_check(c, "a_res", RES_ROWS, 128, 7, 16);
}

static void expect_error(engram_client *c, const char *table, const uint64_t *rows, size_t n,
                         size_t cap, int code, const char *message)
{
    expect_status(c, table, rows, n, cap, code, message, 0);
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

/* Several rows out of range in one request: the message names the first
 * (by position in the request, not the smallest or largest). */
static void test_out_of_range_names_the_first_bad_row(void **state)
{
    engram_client *c = connect_client();
    const uint64_t res[] = {5, 199999, 200001, 3, 200000, UINT64_MAX, 0};
    expect_status(c, "a_res", res, 7, 7 * 128, ENGRAM_OUT_OF_RANGE,
                  "row 200001 (index 2 in the request) is out of range: table \"a_res\" has 200000 rows",
                  1);
    const uint64_t disk[] = {49999, UINT64_MAX, 50000, 7};
    expect_status(c, "b_disk", disk, 4, 4 * 256, ENGRAM_OUT_OF_RANGE,
                  "row 18446744073709551615 (index 1 in the request) is out of range: "
                  "table \"b_disk\" has 50000 rows",
                  1);
    engram_client_close(c);
}

/* A reply over the server's message limit is refused before any row is
 * read, with the message the README promises. The limit needs a server of
 * its own (--max-message-bytes 65536); its table is imported through
 * libengram with a client limit as small, so the chunks fit. With 128-byte
 * rows and 32 bytes of framing allowed for, 511 rows fit and 512 do not. */
static void test_reply_over_message_limit(void **state)
{
    char dir[256];
    test_server small;
    harness_tmpdir(dir, sizeof dir);
    const char *const args[] = {"--max-message-bytes", "65536", "--threads", "1", NULL};
    assert_int_equal(server_start(&small, dir, args), 0);
    enum { ROWS = 2000, RB = 128 };
    static uint8_t table[ROWS * RB];
    synthetic_rows(21, 0, ROWS, table, RB);
    engram_client_options o;
    engram_client_options_init(&o);
    o.max_message_bytes = 65536;
    engram_client *c = NULL;
    engram_import *imp = NULL;
    engram_error err;
    assert_int_equal(engram_client_open(small.addr, &o, &c, &err), ENGRAM_OK);
    assert_int_equal(engram_import_begin(c, "m", ROWS, RB, "u8", &imp, &err), ENGRAM_OK);
    assert_int_equal(engram_import_write(imp, 0, table, sizeof table, &err), ENGRAM_OK);
    if (engram_import_finish(imp, NULL, &err) != ENGRAM_OK)
        fail_msg("import: %s", err.message);
    engram_client_close(c);

    assert_int_equal(engram_client_open(small.addr, NULL, &c, &err), ENGRAM_OK);   /* 64 MiB */
    static uint64_t rows[512];
    static uint8_t out[512 * RB];
    make_rows(rows, 512, ROWS, 99);
    uint32_t rb = 0;
    assert_int_equal(engram_lookup_sync(c, "m", rows, 511, out, sizeof out, &rb, NULL, &err),
                     ENGRAM_OK);
    assert_int_equal(rb, RB);
    check_bytes(out, rows, 511, RB, 21);
    assert_int_equal(engram_lookup_sync(c, "m", rows, 512, out, sizeof out, NULL, NULL, &err),
                     ENGRAM_INVALID_ARGUMENT);
    assert_string_equal(err.message, "reply would be 65536 bytes (512 rows x 128 bytes); "
                                     "the maximum message is 65536 bytes");
    assert_int_equal(engram_lookup_sync(c, "m", rows, 3, out, sizeof out, NULL, NULL, &err),
                     ENGRAM_OK);   /* still answers */
    check_bytes(out, rows, 3, RB, 21);
    engram_client_close(c);

    /* engramctl: its import chunk (the whole 250 KiB table) is refused, with the option
     * named; --max-message-bytes makes the chunks fit, and verify-synthetic
     * sizes its lookups to the limit (511 rows of 128 B per reply). */
    char sout[512], errs[512];
    assert_int_equal(engramctl_capture(sout, sizeof sout, errs, sizeof errs, small.addr,
                                       "import-synthetic", "--table", "m2", "--rows", "2000",
                                       "--row-bytes", "128", "--seed", "22", NULL), 1);
    assert_string_equal(sout, "");
    assert_string_equal(errs, "engramctl: RESOURCE_EXHAUSTED: Received message larger than max "
                              "(256008 vs. 65536) (set --max-message-bytes to the server's "
                              "limit)\n");
    assert_int_equal(engramctl(small.addr, "--max-message-bytes", "64K", "import-synthetic",
                               "--table", "m2", "--rows", "2000", "--row-bytes", "128",
                               "--seed", "22", NULL), 0);
    assert_int_equal(engramctl_capture(sout, sizeof sout, errs, sizeof errs, small.addr,
                                       "--max-message-bytes", "65536", "verify-synthetic",
                                       "--table", "m2", "--seed", "22", "--samples", "2000",
                                       NULL), 0);
    assert_string_equal(sout, "verified 2004 rows of m2 v1: all match\n");
    assert_string_equal(errs, "");
    assert_int_equal(engramctl_capture(sout, sizeof sout, errs, sizeof errs, small.addr,
                                       "--max-message-bytes", "4000", "tables", NULL), 2);
    assert_string_equal(errs, "engramctl: INVALID_ARGUMENT: --max-message-bytes: '4000' is "
                              "outside 4096..2000000000 (see engramctl --help)\n");
    assert_int_equal(engramctl_capture(sout, sizeof sout, errs, sizeof errs, small.addr,
                                       "--max-message-bytes", "64X", "tables", NULL), 2);
    assert_string_equal(errs, "engramctl: INVALID_ARGUMENT: --max-message-bytes: '64X' is not "
                              "a size (digits, then optionally K, M, G or T) (see engramctl "
                              "--help)\n");
    assert_int_equal(server_stop(&small), 0);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
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
        cmocka_unit_test(test_engramctl_outputs),
        cmocka_unit_test(test_sync_lookups_1_to_65536_rows),
        cmocka_unit_test(test_async_8_in_flight_1_to_65536_rows),
        cmocka_unit_test(test_wait_times_out_then_completes_or_frees),
        cmocka_unit_test(test_bad_lookups),
        cmocka_unit_test(test_out_of_range_names_the_first_bad_row),
        cmocka_unit_test(test_reply_over_message_limit),
        cmocka_unit_test(test_new_version_is_atomic),
        cmocka_unit_test(test_restart_keeps_everything),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
