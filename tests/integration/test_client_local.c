/* test_client_local.c: libengram's same-node path (issue 16) against a real
 * engram-server started with --shm-dir, in C so that the ASan suite and
 * valgrind (tests/valgrind/run_unit_memcheck.sh) run the client's mapping,
 * gather and fallback code too (python/tests/test_local.py covers the same
 * path through the Python binding).
 *
 * The model is deploy/examples/tiny-deepseek-v4.1.json (mxfp8_e4m3 rows of
 * 264 bytes, layers [1, 14]); its tables are imported through libengram
 * with the typed synthetic rule, so every byte a test reads is recomputed
 * here. Two clients look at the one server: `local` with
 * ENGRAM_LOCAL_REQUIRE (so a row that was not copied from the file fails
 * the call instead of silently taking gRPC) and `remote` with
 * ENGRAM_LOCAL_OFF. The tests, in order (later ones change the server):
 *   - lookups (sync, async, duplicates, unsorted) read the rule's bytes
 *     from the file, the client maps the table's file, and an out-of-range
 *     row still gets the server's own OUT_OF_RANGE message;
 *   - a prefetch of both layers (raw, BF16, a head subset, wait_layer in
 *     either order) is byte for byte the prefetch over gRPC, and one freed
 *     right after its last layer arrived is freed safely;
 *   - a cutover (a second import of layer 1's table, new rule seed) is
 *     read from the new version's file within version_refresh_ms;
 *   - a server without --shm-dir: REQUIRE fails with FAILED_PRECONDITION
 *     naming the table and why;
 *   - the server SIGKILLed (its files stay), a file shortened under the
 *     client's mapping: REQUIRE fails naming the shortened file and no
 *     SIGBUS reaches the test; a server restarted on the same port and
 *     directory republishes, and the client reads the new files. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "engram/engram.h"
#include "harness.h"
#include "manifest.h"
#include "synthetic.h"

#define MANIFEST SOURCE_DIR "/../deploy/examples/tiny-deepseek-v4.1.json"
enum { HEADS = 24, DIM = 256, RB = 264, B = 2, T = 29, REFRESH_MS = 50 };

static test_server srv, plain;   /* plain: without --shm-dir */
static char tmp[256], shm[300], plain_dir[256];
static engram_client *local, *remote;
static engram_manifest *man;
/* The synthetic seed base each table was last imported with (41, then 42
 * for layer 1's second version). */
static uint64_t seed_base[2] = {41, 41};

static void rule_row(int li, uint64_t r, uint8_t *out)
{
    synthetic_row_typed(manifest_synthetic_seed(seed_base[li], man->model->layers[li].layer_id), r,
                        out, RB, "mxfp8_e4m3");
}

static int import_layer(engram_client *c, int li)
{
    return harness_import_layer(c, man, li, seed_base[li]);
}

static int open_client(const char *addr, int mode, engram_client **out)
{
    engram_client_options o;
    engram_client_options_init(&o);
    o.local = mode;
    o.version_refresh_ms = REFRESH_MS;
    engram_error e;
    if (engram_client_open(addr, &o, out, &e)) {
        fprintf(stderr, "open %s: %s\n", addr, e.message);
        return -1;
    }
    return 0;
}

static int group_setup(void **state)
{
    (void)state;
    char err[256];
    if (!(man = manifest_load(MANIFEST, err, sizeof err))) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    harness_tmpdir(tmp, sizeof tmp);
    /* The files go to a tmpfs when there is one, as deployed. */
    snprintf(shm, sizeof shm, "%s/shm", tmp);
    if (access("/dev/shm", W_OK) == 0) {
        snprintf(shm, sizeof shm, "/dev/shm/engram-test-local.XXXXXX");
        if (!mkdtemp(shm))
            return -1;
    }
    const char *args[] = {"--shm-dir", shm, NULL};
    if (server_start(&srv, tmp, args) || open_client(srv.addr, ENGRAM_LOCAL_OFF, &remote) ||
        open_client(srv.addr, ENGRAM_LOCAL_REQUIRE, &local))
        return -1;
    if (harness_put_manifest(remote, MANIFEST) || import_layer(remote, 0) || import_layer(remote, 1))
        return -1;
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    engram_client_close(local);
    engram_client_close(remote);
    manifest_free(man);
    int rc = srv.pid ? server_stop(&srv) : 0;
    if (plain.pid)
        server_stop(&plain);   /* a failed test left it running */
    char cmd[1000];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s'%s%s%s", tmp, shm, plain_dir[0] ? " '" : "",
             plain_dir, plain_dir[0] ? "'" : "");
    return rc || system(cmd);
}

/* Lines of /proc/self/maps naming needle (and also and, when not NULL):
 * which files this process maps. */
static int maps_count(const char *needle, const char *and)
{
    FILE *f = fopen("/proc/self/maps", "r");
    char line[1024];
    int n = 0;
    while (f && fgets(line, sizeof line, f))
        n += strstr(line, needle) && (!and || strstr(line, and));
    if (f)
        fclose(f);
    return n;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* ---- lookups ------------------------------------------------------------- */

static void test_lookup_reads_the_file(void **state)
{
    (void)state;
    const eh_layer *L = &man->model->layers[0];
    const uint64_t rows[] = {0, L->total_rows - 1, 17, 17, 4242 % L->total_rows, 3, 0};
    enum { N = sizeof rows / sizeof rows[0] };
    uint8_t out[N * RB], want[RB];
    uint32_t rb = 0;
    uint64_t v = 0;
    engram_error e;
    assert_int_equal(engram_lookup_sync(local, man->tables[0], rows, N, out, sizeof out, &rb, &v, &e),
                     ENGRAM_OK);
    assert_int_equal(rb, RB);
    assert_int_equal(v, 1);
    for (size_t i = 0; i < N; i++) {
        rule_row(0, rows[i], want);
        assert_memory_equal(out + i * RB, want, RB);
    }
    /* REQUIRE answered, so the rows came from the mapped file. */
    char name[300];
    snprintf(name, sizeof name, "%s@v1@s0of1.engram", man->tables[0]);
    assert_int_equal(maps_count(name, NULL), 1);

    /* Async, into a buffer with room to spare. */
    uint8_t big[(N + 3) * RB];
    memset(big, 0xA5, sizeof big);
    engram_lookup *h;
    assert_int_equal(engram_lookup_start(local, man->tables[0], rows, N, big, sizeof big, &h, &e),
                     ENGRAM_OK);
    assert_int_equal(engram_lookup_wait(h, 10000, &e), ENGRAM_OK);
    engram_lookup_result(h, &rb, &v);
    assert_int_equal(rb, RB);
    assert_int_equal(v, 1);
    engram_lookup_free(h);
    assert_memory_equal(big, out, sizeof out);
    for (size_t i = sizeof out; i < sizeof big; i++)
        assert_int_equal(big[i], 0xA5);
}

static void test_lookup_errors_are_the_servers(void **state)
{
    (void)state;
    const eh_layer *L = &man->model->layers[0];
    uint64_t rows[] = {1, L->total_rows};
    uint8_t out[2 * RB];
    engram_error e;
    /* A row outside the file goes to the server, which names it. */
    assert_int_equal(engram_lookup_sync(local, man->tables[0], rows, 2, out, sizeof out, NULL, NULL, &e),
                     ENGRAM_OUT_OF_RANGE);
    char want[300];
    snprintf(want, sizeof want, "row %llu (index 1 in the request) is out of range",
             (unsigned long long)L->total_rows);
    assert_non_null(strstr(e.message, want));
    /* A buffer too small: the same INVALID_ARGUMENT as over gRPC. */
    engram_error e2;
    assert_int_equal(engram_lookup_sync(local, man->tables[0], rows, 1, out, RB - 1, NULL, NULL, &e),
                     ENGRAM_INVALID_ARGUMENT);
    assert_int_equal(engram_lookup_sync(remote, man->tables[0], rows, 1, out, RB - 1, NULL, NULL, &e2),
                     ENGRAM_INVALID_ARGUMENT);
}

/* ---- prefetch ------------------------------------------------------------ */

static void tokens(int64_t *tok)
{
    for (int i = 0; i < B * T; i++)
        tok[i] = (int64_t)((i * 131 + 7) % 640);
    tok[4] = -1;   /* a DEAD token */
}

/* One prefetch of both layers through client c; returns its output. */
static uint8_t *prefetch(engram_client *c, unsigned flags, const uint32_t *heads, size_t nh,
                         int layer14_first, size_t *len)
{
    engram_model *m;
    engram_error e;
    assert_int_equal(engram_model_open(c, "tiny-v41", &m, &e), ENGRAM_OK);
    int64_t tok[B * T];
    tokens(tok);
    const int64_t layers[2] = {1, 14};
    engram_prefetch_request r;
    engram_prefetch_request_init(&r);
    r.layer_ids = layers;
    r.n_layers = 2;
    r.tokens = tok;
    r.batch = B;
    r.seq_len = T;
    r.heads = heads;
    r.n_heads = nh;
    r.flags = flags;
    *len = engram_prefetch_out_bytes(m, &r);
    uint8_t *out = malloc(*len);
    memset(out, 0x5A, *len);
    r.out = out;
    r.out_cap = *len;
    engram_prefetch *p;
    assert_int_equal(engram_prefetch_start(m, &r, &p, &e), ENGRAM_OK);
    if (layer14_first)
        assert_int_equal(engram_prefetch_wait_layer(p, 14, 10000, &e), ENGRAM_OK);
    assert_int_equal(engram_prefetch_wait_layer(p, 1, 10000, &e), ENGRAM_OK);
    assert_int_equal(engram_prefetch_wait(p, 10000, &e), ENGRAM_OK);
    engram_prefetch_free(p);
    engram_model_close(m);
    return out;
}

static void test_prefetch_equals_grpc(void **state)
{
    (void)state;
    const uint32_t sub[] = {23, 0, 7, 8};
    struct {
        unsigned flags;
        const uint32_t *heads;
        size_t nh;
    } cases[] = {
        {0, NULL, 0},
        {ENGRAM_PREFETCH_HASH_ASYNC, NULL, 0},
        {ENGRAM_PREFETCH_DEQUANT_BF16, NULL, 0},
        {ENGRAM_PREFETCH_DEQUANT_BF16 | ENGRAM_PREFETCH_HASH_ASYNC, sub, 4},
        {0, sub, 4},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        size_t n1, n2;
        uint8_t *a = prefetch(local, cases[k].flags, cases[k].heads, cases[k].nh, (int)(k & 1), &n1);
        uint8_t *b = prefetch(remote, cases[k].flags, cases[k].heads, cases[k].nh, 0, &n2);
        assert_int_equal(n1, n2);
        assert_memory_equal(a, b, n1);
        free(a);
        free(b);
    }
}

/* A worker that frees its prefetch as soon as its last layer is in: the
 * hashing thread may still be finishing with the prefetch then (it marks
 * the last layer sent a moment before it lets go), and free must wait for
 * that. Many small HASH_ASYNC prefetches, so ASan or valgrind see a free
 * that did not. */
static void test_free_right_after_the_last_layer(void **state)
{
    (void)state;
    engram_model *m;
    engram_error e;
    assert_int_equal(engram_model_open(local, "tiny-v41", &m, &e), ENGRAM_OK);
    const int64_t layers[2] = {1, 14};
    int64_t tok[4] = {11, 12, 13, 14};
    uint8_t out[2 * 4 * HEADS * RB];
    for (int k = 0; k < 300; k++) {
        tok[k % 4] = (int64_t)(k % 640);
        engram_prefetch_request r;
        engram_prefetch_request_init(&r);
        r.layer_ids = layers;
        r.n_layers = 2;
        r.tokens = tok;
        r.batch = 1;
        r.seq_len = 4;
        r.out = out;
        r.out_cap = sizeof out;
        r.flags = ENGRAM_PREFETCH_HASH_ASYNC;
        engram_prefetch *p;
        assert_int_equal(engram_prefetch_start(m, &r, &p, &e), ENGRAM_OK);
        assert_int_equal(engram_prefetch_wait_layer(p, 14, 10000, &e), ENGRAM_OK);
        engram_prefetch_free(p);
    }
    engram_model_close(m);
}

/* ---- versions ------------------------------------------------------------ */

static void test_cutover_reads_the_new_file(void **state)
{
    (void)state;
    seed_base[0] = 42;
    assert_int_equal(import_layer(remote, 0), 0);
    const uint64_t rows[] = {5, 6, 5};
    uint8_t out[3 * RB], want[RB];
    uint64_t v = 0;
    engram_error e;
    /* Within version_refresh_ms (and the listing's round trip), the new
     * version; until then the old one, whole. */
    for (int i = 0; i < 200 && v != 2; i++) {
        assert_int_equal(engram_lookup_sync(local, man->tables[0], rows, 3, out, sizeof out, NULL, &v, &e),
                         ENGRAM_OK);
        assert_true(v == 1 || v == 2);
        if (v == 1)
            sleep_ms(REFRESH_MS / 2);
    }
    assert_int_equal(v, 2);
    for (size_t i = 0; i < 3; i++) {
        rule_row(0, rows[i], want);
        assert_memory_equal(out + i * RB, want, RB);
    }
    char name[300];
    snprintf(name, sizeof name, "%s@v2@s0of1.engram", man->tables[0]);
    assert_int_equal(maps_count(name, NULL), 1);
}

/* ---- no file ------------------------------------------------------------- */

static void test_require_without_shm_dir(void **state)
{
    (void)state;
    harness_tmpdir(plain_dir, sizeof plain_dir);
    engram_client *c = NULL, *r = NULL;
    assert_int_equal(server_start(&plain, plain_dir, NULL), 0);
    assert_int_equal(open_client(plain.addr, ENGRAM_LOCAL_REQUIRE, &c), 0);
    assert_int_equal(open_client(plain.addr, ENGRAM_LOCAL_OFF, &r), 0);
    assert_int_equal(harness_put_manifest(r, MANIFEST), 0);
    assert_int_equal(import_layer(r, 1), 0);
    uint64_t row = 3;
    uint8_t out[RB];
    engram_error e;
    assert_int_equal(engram_lookup_sync(c, man->tables[1], &row, 1, out, sizeof out, NULL, NULL, &e),
                     ENGRAM_FAILED_PRECONDITION);
    char want[400];
    snprintf(want, sizeof want,
             "table \"%s\" has no usable local file: the server publishes no local files (no "
             "--shm-dir)", man->tables[1]);
    assert_string_equal(e.message, want);
    /* The same lookup over gRPC works. */
    assert_int_equal(engram_lookup_sync(r, man->tables[1], &row, 1, out, sizeof out, NULL, NULL, &e),
                     ENGRAM_OK);
    engram_client_close(c);
    engram_client_close(r);
    assert_int_equal(server_stop(&plain), 0);
}

/* ---- a crash and a shortened file ------------------------------------------- */

/* Retries a REQUIRE lookup of rows {1, 2} of layer 14's table until it
 * is OK (the restarted server loads and publishes, the client re-lists),
 * then checks the bytes. */
static void read_until_ok(engram_client *c)
{
    const uint64_t rows[] = {1, 2};
    uint8_t out[2 * RB], want[RB];
    engram_error e;
    int rc = ENGRAM_UNAVAILABLE;
    for (int i = 0; i < 200 && rc != ENGRAM_OK; i++) {
        rc = engram_lookup_sync(c, man->tables[1], rows, 2, out, sizeof out, NULL, NULL, &e);
        if (rc != ENGRAM_OK)
            sleep_ms(REFRESH_MS);
    }
    assert_int_equal(rc, ENGRAM_OK);
    for (size_t i = 0; i < 2; i++) {
        rule_row(1, rows[i], want);
        assert_memory_equal(out + i * RB, want, RB);
    }
}

static void test_shortened_file_after_a_crash(void **state)
{
    (void)state;
    /* A client that re-lists only when it must, so that nothing but the
     * shortened file decides what the lookup after the crash reads. */
    engram_client *stable;
    engram_client_options o;
    engram_client_options_init(&o);
    o.local = ENGRAM_LOCAL_REQUIRE;
    o.version_refresh_ms = 600000;
    engram_error e;
    assert_int_equal(engram_client_open(srv.addr, &o, &stable, &e), ENGRAM_OK);
    const uint64_t rows[] = {1, 2};
    uint8_t out[2 * RB];
    assert_int_equal(engram_lookup_sync(stable, man->tables[1], rows, 2, out, sizeof out, NULL, NULL, &e),
                     ENGRAM_OK);
    char path[600];
    snprintf(path, sizeof path, "%s/%s@v1@s0of1.engram", shm, man->tables[1]);
    assert_true(maps_count(path, NULL) >= 1);

    /* A crash leaves the files; nothing serves them now, so shortening one
     * hurts only its readers: this process. */
    int port = srv.port;
    server_kill(&srv);
    assert_int_equal(truncate(path, 4096), 0);
    assert_int_equal(engram_lookup_sync(stable, man->tables[1], rows, 2, out, sizeof out, NULL, NULL, &e),
                     ENGRAM_FAILED_PRECONDITION);
    char msg[400];
    snprintf(msg, sizeof msg,
             "table \"%s\" has no usable local file: its file of version 1 was shortened while mapped",
             man->tables[1]);
    assert_string_equal(e.message, msg);

    /* The server restarts on its port and directory: it removes what the
     * crash left and publishes again (new nonces); both clients re-list
     * (`local` finds the shortening itself first) and read the new file. */
    const char *args[] = {"--shm-dir", shm, NULL};
    assert_int_equal(server_start_port(&srv, tmp, port, args), 0);
    read_until_ok(stable);
    read_until_ok(local);
    /* The shortened file was unmapped when the listings dropped it: what
     * this process maps of the table now are the republished files. */
    assert_int_equal(maps_count(man->tables[1], "(deleted)"), 0);
    assert_true(maps_count(path, NULL) >= 1);
    engram_client_close(stable);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lookup_reads_the_file),
        cmocka_unit_test(test_lookup_errors_are_the_servers),
        cmocka_unit_test(test_prefetch_equals_grpc),
        cmocka_unit_test(test_free_right_after_the_last_layer),
        cmocka_unit_test(test_cutover_reads_the_new_file),
        cmocka_unit_test(test_require_without_shm_dir),
        cmocka_unit_test(test_shortened_file_after_a_crash),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
