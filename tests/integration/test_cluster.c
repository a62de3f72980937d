/* test_cluster.c: a 3-shard x 2-replica cluster of real engram-server
 * processes on loopback, driven through engramctl and libengram.
 *
 * Covers: import into the cluster from one address and byte-exact lookups
 * and prefetches through the client's routing; kill -9 of one replica per
 * shard under steady load with zero failed lookups and zero wrong bytes,
 * p99 printed for the whole load and for the kill-to-restart intervals; a
 * version cutover under load where every batch is all-v1 or all-v2; a
 * shard with every replica down reported by name within the deadline; a
 * server refusing rows of another shard; an import whose replica dies
 * mid-stream activating nothing, and its re-run (after a half-done
 * activation) converging on the new version; the server's start-up
 * refusals of --cluster/--shard mistakes (exit 2, exact message); a data
 * directory refusing to start as another shard, with another shard count
 * or unclustered, and serving its old rows when started as itself; and
 * engramctl cluster-map and drop-version across the cluster. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>
#include <xxhash.h>

#include "engram/engram.h"
#include "grpc_util.h"
#include "harness.h"
#include "manifest.h"
#include "synthetic.h"

#define S 3
#define R 2
#define ROWS 30000
#define RB 64

static test_server srv[S][R];
static char dirs[S][R][300];
static int ports[S][R];
static char tmp[256], mapfile[300];
static const char *const *server_args(int s);

/* ---- cluster life cycle ----------------------------------------------------- */

static void write_map(void)
{
    snprintf(mapfile, sizeof mapfile, "%s/cluster.json", tmp);
    FILE *f = fopen(mapfile, "w");
    fprintf(f, "{\"name\": \"it3x2\", \"placement\": \"mod\", \"shards\": [");
    for (int s = 0; s < S; s++)
        fprintf(f, "%s{\"replicas\": [\"127.0.0.1:%d\", \"127.0.0.1:%d\"]}", s ? ", " : "",
                ports[s][0], ports[s][1]);
    fprintf(f, "]}\n");
    fclose(f);
}

static const char *const *server_args(int s)
{
    static char shard[S][8];
    static const char *args[S][8];
    snprintf(shard[s], sizeof shard[s], "%d", s);
    const char *a[] = {"--cluster", mapfile, "--shard", shard[s], "--threads", "1", NULL};
    memcpy(args[s], a, sizeof a);
    return args[s];
}

static int start(int s, int r)
{
    return server_start_port(&srv[s][r], dirs[s][r], ports[s][r], server_args(s));
}

static int group_setup(void **state)
{
    harness_tmpdir(tmp, sizeof tmp);
    for (int s = 0; s < S; s++)
        for (int r = 0; r < R; r++) {
            ports[s][r] = harness_free_port();
            snprintf(dirs[s][r], sizeof dirs[s][r], "%s/s%dr%d", tmp, s, r);
            mkdir(dirs[s][r], 0755);
        }
    write_map();
    for (int s = 0; s < S; s++)
        for (int r = 0; r < R; r++)
            if (start(s, r))
                return -1;
    return harness_import_ct(srv[1][1].addr, &srv[0][0], S * R);
}

static int group_teardown(void **state)
{
    int rc = 0;
    for (int s = 0; s < S; s++)
        for (int r = 0; r < R; r++)
            rc |= server_stop(&srv[s][r]);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    return rc || system(cmd);
}

static engram_client *connect_to(const char *addr, int64_t deadline_ms, int hedge)
{
    engram_client_options o;
    engram_client_options_init(&o);
    o.deadline_ms = deadline_ms;
    o.hedge_percentile = hedge;
    engram_client *c;
    assert_int_equal(engram_client_open(addr, &o, &c, NULL), ENGRAM_OK);
    return c;
}

/* ---- checks ------------------------------------------------------------------- */

static void make_rows(uint64_t *rows, size_t n, uint64_t seed)
{
    for (size_t i = 0; i < n; i++)
        rows[i] = splitmix64(seed + i) % ROWS;
    rows[0] = 0;
    if (n > 2) {
        rows[n - 1] = ROWS - 1;
        rows[1] = rows[n - 1];
    }
}

/* The seed whose bytes the reply holds: 11 (v1) or 12 (v2); -1 if neither
 * or a mix. */
static int seed_of(const uint8_t *out, const uint64_t *rows, size_t n)
{
    uint8_t want[RB];
    int seed = -1;
    for (size_t i = 0; i < n; i++) {
        int got = -1;
        for (int sd = 11; sd <= 12 && got < 0; sd++) {
            synthetic_row((uint64_t)sd, rows[i], want, RB);
            if (!memcmp(out + i * RB, want, RB))
                got = sd;
        }
        if (got < 0 || (seed >= 0 && got != seed))
            return -1;
        seed = got;
    }
    return seed;
}

static void test_lookups_every_byte(void **state)
{
    engram_client *c = connect_to(srv[0][0].addr, 10000, 0);
    const size_t sizes[] = {1, 2, 100, 4096};
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        size_t n = sizes[k];
        uint64_t *rows = malloc(n * sizeof *rows);
        uint8_t *out = malloc(n * RB);
        make_rows(rows, n, 100 + k);
        engram_error e;
        uint64_t ver = 0;
        int rc = engram_lookup_sync(c, "ct", rows, n, out, n * RB, NULL, &ver, &e);
        if (rc)
            fail_msg("lookup %zu: %s %s", n, engram_status_name(rc), e.message);
        assert_int_equal(ver, 1);
        assert_int_equal(seed_of(out, rows, n), 11);
        free(rows);
        free(out);
    }
    engram_client_counters ct;
    engram_client_get_counters(c, &ct);
    assert_true(ct.subrequests >= 3);   /* routed per shard, not to one server */
    engram_client_close(c);
}

static void test_foreign_rows_refused(void **state)
{
    char msg[512];
    const uint64_t rows[] = {3, 1};
    assert_int_equal(raw_lookup(srv[0][0].addr, "ct", rows, 2, 0, msg, sizeof msg),
                     ENGRAM_FAILED_PRECONDITION);
    assert_string_equal(msg, "row 1 (index 1 in the request) belongs to shard 1 of 3; this server is shard 0");
}

/* XXH3 of the synthetic table `seed`'s rows of shard `s`, in local order. */
static uint64_t shard_xxh3(uint64_t seed, int s)
{
    XXH3_state_t *st = XXH3_createState();
    XXH3_64bits_reset(st);
    uint8_t row[RB];
    for (uint64_t r = (uint64_t)s; r < ROWS; r += S) {
        synthetic_row(seed, r, row, RB);
        XXH3_64bits_update(st, row, RB);
    }
    uint64_t x = XXH3_64bits_digest(st);
    XXH3_freeState(st);
    return x;
}

/* The synthetic table `seed` as a raw file, with row `bad` (if < ROWS)
 * changed in one byte. */
static void write_rows_file(const char *path, uint64_t seed, uint64_t bad)
{
    uint8_t *buf = malloc((size_t)ROWS * RB);
    synthetic_rows(seed, 0, ROWS, buf, RB);
    if (bad < ROWS)
        buf[bad * RB] ^= 1;
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(buf, RB, ROWS, f), ROWS);
    fclose(f);
    free(buf);
}

static void test_checksums_per_shard(void **state)
{
    for (int s = 0; s < S; s++) {
        for (int r = 0; r < R; r++) {
            engram_client *c = connect_to(srv[s][r].addr, 10000, 0);
            engram_table_info ti;
            engram_verify_result v;
            engram_error e;
            assert_int_equal(engram_table_get(c, "ct", &ti, &e), ENGRAM_OK);
            assert_true(ti.xxh3 == shard_xxh3(11, s));
            assert_int_equal(engram_table_verify(c, "ct", 0, NULL, NULL, &v, &e), ENGRAM_OK);
            if (!v.match)
                fail_msg("shard %d replica %d: %s", s, r, v.problem);
            assert_true(v.xxh3 == ti.xxh3 && v.stored_xxh3 == ti.xxh3);
            assert_int_equal(v.crc32, ti.checksum);
            assert_int_equal(v.rows_checked, ti.local_rows);
            assert_int_equal(v.shard_index, s);
            assert_int_equal(v.shard_count, S);
            engram_client_close(c);
        }
    }
    char good[320], bad[320];
    snprintf(good, sizeof good, "%s/ct.raw", tmp);
    snprintf(bad, sizeof bad, "%s/ct-row4.raw", tmp);
    write_rows_file(good, 11, ROWS);
    write_rows_file(bad, 11, 4);       /* row 4: shard 1 */
    assert_int_equal(engramctl(srv[2][1].addr, "verify", "--table", "ct", NULL), 0);
    assert_int_equal(engramctl(srv[2][1].addr, "verify", "--table", "ct", "--file", good, NULL), 0);
    assert_int_equal(engramctl(srv[0][0].addr, "verify", "--table", "ct", "--file", bad, NULL), 1);
}

static void test_prefetch_through_cluster(void **state)
{
    char path[400];
    snprintf(path, sizeof path, "%s/../deploy/examples/tiny-model.json", SOURCE_DIR);
    assert_int_equal(engramctl(srv[2][0].addr, "put-manifest", path, NULL), 0);
    assert_int_equal(engramctl(srv[2][0].addr, "import-synthetic", "--manifest", "tiny", "--seed", "7",
                               NULL), 0);
    engram_client *c = connect_to(srv[0][1].addr, 10000, 0);
    engram_model *m;
    engram_error e;
    if (engram_model_open(c, "tiny", &m, &e))
        fail_msg("%s", e.message);
    engram_model_info mi;
    engram_model_get_info(m, &mi);
    int64_t tok[2 * 9] = {1, 5, 9, 300, 44, 17, 17, 17, 511, 0, 2, 4, 6, 8, 10, 12, 14, 16};
    const int64_t layers[2] = {1, 15};
    size_t per = 2 * 9 * mi.heads, bytes = 2 * per * mi.row_bytes;
    uint8_t *out = malloc(bytes), *want = malloc(mi.row_bytes);
    engram_prefetch_request r = {.layer_ids = layers, .n_layers = 2, .tokens = tok, .batch = 2,
                                 .seq_len = 9, .out = out, .out_cap = bytes};
    engram_prefetch *h;
    assert_int_equal(engram_prefetch_start(m, &r, &h, NULL), ENGRAM_OK);
    if (engram_prefetch_wait(h, -1, &e))
        fail_msg("%s", e.message);
    engram_prefetch_free(h);
    uint64_t *rows = malloc(per * sizeof *rows);
    for (int l = 0; l < 2; l++) {
        assert_int_equal(engram_model_hash(m, layers[l], tok, 2, 9, NULL, rows, NULL), ENGRAM_OK);
        for (size_t i = 0; i < per; i++) {
            synthetic_row(manifest_synthetic_seed(7, layers[l]), rows[i], want, mi.row_bytes);
            assert_memory_equal(out + ((size_t)l * per + i) * mi.row_bytes, want, mi.row_bytes);
        }
    }
    free(rows);
    free(out);
    free(want);
    engram_model_close(m);
    engram_client_close(c);
}

/* ---- load ------------------------------------------------------------------------ */

typedef struct load {
    int stop;
    int id;
    uint64_t calls, failures, wrong;
    int saw[13];                 /* seeds seen */
    uint64_t lat_ns[200000];
    uint64_t at_ns[200000];      /* when each of those lookups started */
    size_t nlat;
    char first_error[600];
} load;

static void *load_main(void *p)
{
    load *L = p;
    engram_client *c = connect_to(srv[L->id % S][L->id % R].addr, 5000, 0);
    enum { N = 512 };
    uint64_t rows[N];
    uint8_t out[N * RB];
    for (uint64_t it = 0; !__atomic_load_n(&L->stop, __ATOMIC_ACQUIRE); it++) {
        make_rows(rows, N, (uint64_t)L->id * 1000003 + it);
        engram_error e;
        uint64_t t0 = now_ns();
        int rc = engram_lookup_sync(c, "ct", rows, N, out, sizeof out, NULL, NULL, &e);
        if (L->nlat < sizeof L->lat_ns / sizeof L->lat_ns[0]) {
            L->at_ns[L->nlat] = t0;
            L->lat_ns[L->nlat++] = now_ns() - t0;
        }
        L->calls++;
        if (rc) {
            if (!L->failures++)
                snprintf(L->first_error, sizeof L->first_error, "%s: %s", engram_status_name(rc), e.message);
            continue;
        }
        int sd = seed_of(out, rows, N);
        if (sd < 0)
            L->wrong++;
        else
            L->saw[sd] = 1;
    }
    engram_client_close(c);
    return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* A time interval [from, to] in now_ns() time. */
typedef struct span {
    uint64_t from, to;
} span;

/* 1 when the lookup [at, at + lat] overlaps one of the spans (none: all count). */
static int in_spans(uint64_t at, uint64_t lat, const span *sp, int nsp)
{
    for (int i = 0; i < nsp; i++)
        if (at <= sp[i].to && at + lat >= sp[i].from)
            return 1;
    return nsp == 0;
}

/* Prints p50/p99/max of the lookups that overlap the spans (nsp 0: all). */
static void report_p99_in(const char *what, load *L, int n, const span *sp, int nsp)
{
    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += L[i].nlat;
    uint64_t *all = malloc((total + 1) * sizeof *all);
    size_t k = 0;
    for (int i = 0; i < n; i++)
        for (size_t j = 0; j < L[i].nlat; j++)
            if (in_spans(L[i].at_ns[j], L[i].lat_ns[j], sp, nsp))
                all[k++] = L[i].lat_ns[j];
    qsort(all, k, sizeof *all, cmp_u64);
    if (k)
        printf("%s: %zu lookups of 512 rows, p50 %.2f ms, p99 %.2f ms, max %.2f ms\n", what, k,
               all[k / 2] / 1e6, all[k * 99 / 100] / 1e6, all[k - 1] / 1e6);
    free(all);
}

static void report_p99(const char *what, load *L, int n)
{
    report_p99_in(what, L, n, NULL, 0);
}

enum { THREADS = 3 };

static void start_load(load *L, pthread_t *th)
{
    for (int i = 0; i < THREADS; i++) {
        memset(&L[i], 0, sizeof L[i]);
        L[i].id = i;
        pthread_create(&th[i], NULL, load_main, &L[i]);
    }
}

static void stop_load(load *L, pthread_t *th)
{
    for (int i = 0; i < THREADS; i++)
        __atomic_store_n(&L[i].stop, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
}

static void test_kill_one_replica_per_shard_under_load(void **state)
{
    static load L[THREADS];
    pthread_t th[THREADS];
    span down[S];                /* each replica's kill to its restart serving */
    start_load(L, th);
    usleep(300000);
    for (int s = 0; s < S; s++) {
        down[s].from = now_ns();
        server_kill(&srv[s][1]);
        usleep(400000);
        assert_int_equal(start(s, 1), 0);
        down[s].to = now_ns();
        usleep(200000);
    }
    usleep(300000);
    stop_load(L, th);
    double down_ms = 0;
    for (int s = 0; s < S; s++)
        down_ms += (double)(down[s].to - down[s].from) / 1e6;
    report_p99("kill -9 of one replica per shard, whole load window", L, THREADS);
    char what[160];
    snprintf(what, sizeof what, "kill -9 of one replica per shard, kill to restart only (%d spans, %.0f ms)",
             S, down_ms);
    report_p99_in(what, L, THREADS, down, S);
    for (int i = 0; i < THREADS; i++) {
        if (L[i].failures)
            fail_msg("thread %d: %llu of %llu lookups failed; first: %s", i,
                     (unsigned long long)L[i].failures, (unsigned long long)L[i].calls, L[i].first_error);
        assert_int_equal(L[i].wrong, 0);
        assert_true(L[i].calls > 10);
    }
}

static void test_cutover_never_mixes_versions(void **state)
{
    static load L[THREADS];
    pthread_t th[THREADS];
    start_load(L, th);
    usleep(200000);
    assert_int_equal(engramctl(srv[0][0].addr, "import-synthetic", "--table", "ct", "--rows", "30000",
                               "--row-bytes", "64", "--seed", "12", NULL), 0);
    int all_v2 = 0;
    for (int i = 0; i < 60 && !all_v2; i++) {   /* clients re-resolve the version */
        usleep(100000);
        all_v2 = 1;
        for (int t = 0; t < THREADS; t++)
            all_v2 &= __atomic_load_n(&L[t].saw[12], __ATOMIC_ACQUIRE);
    }
    stop_load(L, th);
    report_p99("cutover", L, THREADS);
    for (int t = 0; t < THREADS; t++) {
        assert_int_equal(L[t].failures, 0);
        assert_int_equal(L[t].wrong, 0);    /* every batch all-v1 or all-v2 */
        assert_int_equal(L[t].saw[12], 1);
    }
}

static void test_shard_down_is_named(void **state)
{
    engram_client *c = connect_to(srv[0][0].addr, 2000, 0);
    server_kill(&srv[2][0]);
    server_kill(&srv[2][1]);
    uint64_t rows[6] = {0, 1, 2, 3, 4, 5};
    uint8_t out[6 * RB];
    engram_error e;
    uint64_t t0 = now_ns();
    int rc = engram_lookup_sync(c, "ct", rows, 6, out, sizeof out, NULL, NULL, &e);
    double ms = (double)(now_ns() - t0) / 1e6;
    printf("shard 2 down: %s after %.0f ms: %s\n", engram_status_name(rc), ms, e.message);
    assert_true(rc == ENGRAM_UNAVAILABLE || rc == ENGRAM_DEADLINE_EXCEEDED);
    assert_non_null(strstr(e.message, "shard 2 of 3"));
    assert_true(ms < 2000 + 500);
    /* rows of the other shards still work */
    uint64_t ok_rows[2] = {0, 1};
    assert_int_equal(engram_lookup_sync(c, "ct", ok_rows, 2, out, sizeof out, NULL, NULL, &e), ENGRAM_OK);
    engram_client_close(c);
    assert_int_equal(start(2, 0), 0);
    assert_int_equal(start(2, 1), 0);
}

/* ---- a failed import and its re-run --------------------------------------------- */

#define FROWS 300000             /* table "cf": 6.4 MB per shard, two chunks */

/* 1 when out holds rows[0..n) of the synthetic table `seed`. */
static int rows_are(uint64_t seed, const uint8_t *out, const uint64_t *rows, size_t n)
{
    uint8_t want[RB];
    for (size_t i = 0; i < n; i++) {
        synthetic_row(seed, rows[i], want, RB);
        if (memcmp(out + i * RB, want, RB))
            return 0;
    }
    return 1;
}

/* Asks replica (s, r) itself, no routing: its active version of "cf" must
 * be `active`, its version `staged` (0: none) staged, and a lookup naming
 * version `ask` (0: the active one) must return `seed`'s bytes from
 * version `served`. */
static void expect_replica(int s, int r, uint64_t active, uint64_t staged, uint64_t ask,
                           uint64_t served, uint64_t seed)
{
    engram_client *c = connect_to(srv[s][r].addr, 10000, 0);
    engram_table_info ti;
    engram_error e;
    if (engram_table_get(c, "cf", &ti, &e))
        fail_msg("replica %d/%d: %s", s, r, e.message);
    engram_client_close(c);
    uint64_t got_active = 0;
    int has_staged = 0;
    for (uint32_t i = 0; i < ti.n_versions; i++) {
        if (ti.versions[i].state == ENGRAM_VERSION_ACTIVE)
            got_active = ti.versions[i].version;
        has_staged |= ti.versions[i].state == ENGRAM_VERSION_STAGED && ti.versions[i].version == staged;
    }
    if (got_active != active || (staged && !has_staged))
        fail_msg("replica %d/%d: active version %llu (want %llu), version %llu staged: %d", s, r,
                 (unsigned long long)got_active, (unsigned long long)active,
                 (unsigned long long)staged, has_staged);
    const uint64_t rows[4] = {(uint64_t)s, (uint64_t)s + 3, (uint64_t)s + 3 * 4321, FROWS - 3 + (uint64_t)s};
    uint8_t out[4 * RB];
    uint64_t v = 0;
    char msg[512];
    int rc = raw_lookup_data(srv[s][r].addr, "cf", rows, 4, ask, out, sizeof out, &v, msg, sizeof msg);
    if (rc)
        fail_msg("replica %d/%d, lookup of version %llu: %d %s", s, r, (unsigned long long)ask, rc, msg);
    assert_int_equal(v, served);
    if (!rows_are(seed, out, rows, 4))
        fail_msg("replica %d/%d: version %llu does not hold seed %llu's bytes", s, r,
                 (unsigned long long)served, (unsigned long long)seed);
}

/* 1 when the file contains `needle`. */
static int file_has(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    char line[4096];
    int found = 0;
    while (!found && fgets(line, sizeof line, f))
        found = strstr(line, needle) != NULL;
    fclose(f);
    return found;
}

typedef struct ctl_run {
    const char *seed;
    int rc, done;
    char out[2048], err[4096];
} ctl_run;

static void *import_cf(void *p)
{
    ctl_run *x = p;
    x->rc = engramctl_capture(x->out, sizeof x->out, x->err, sizeof x->err, srv[0][0].addr,
                              "import-synthetic", "--table", "cf", "--rows", "300000", "--row-bytes",
                              "64", "--seed", x->seed, NULL);
    __atomic_store_n(&x->done, 1, __ATOMIC_RELEASE);
    return NULL;
}

static void test_failed_import_activates_nothing_and_rerun_completes(void **state)
{
    static ctl_run first = {.seed = "21"}, failing = {.seed = "22"}, rerun = {.seed = "22"};
    pthread_t th;
    import_cf(&first);
    if (first.rc)
        fail_msg("import of cf v1: %d %s", first.rc, first.err);
    for (int s = 0; s < S; s++)
        for (int r = 0; r < R; r++)
            expect_replica(s, r, 1, 0, 0, 1, 21);

    /* Version 2: replica 1/1 is frozen once its stream has begun; the other
     * five finish theirs and hold v2 staged, nothing is active. */
    char log[400];
    snprintf(log, sizeof log, "%s/server.log", dirs[1][1]);
    pthread_create(&th, NULL, import_cf, &failing);
    int seen = 0;
    for (int i = 0; i < 30000 && !seen && !__atomic_load_n(&failing.done, __ATOMIC_ACQUIRE); i++) {
        seen = file_has(log, "event=import_started table=cf version=2 ");
        if (!seen)
            usleep(1000);
    }
    if (!seen)
        fail_msg("replica 1/1 never logged the start of the v2 import; engramctl: %d %s", failing.rc,
                 failing.err);
    assert_int_equal(server_signal(&srv[1][1], SIGSTOP), 0);
    assert_false(file_has(log, "event=import_done table=cf version=2 "));
    int staged = 0;
    for (int i = 0; i < 600 && staged < S * R - 1; i++) {
        usleep(50000);
        staged = 0;
        for (int s = 0; s < S; s++)
            for (int r = 0; r < R; r++) {
                if (s == 1 && r == 1)
                    continue;
                engram_client *c = connect_to(srv[s][r].addr, 10000, 0);
                engram_table_info ti;
                assert_int_equal(engram_table_get(c, "cf", &ti, NULL), ENGRAM_OK);
                engram_client_close(c);
                for (uint32_t k = 0; k < ti.n_versions; k++)
                    staged += ti.versions[k].version == 2;
            }
    }
    assert_int_equal(staged, S * R - 1);
    assert_false(__atomic_load_n(&failing.done, __ATOMIC_ACQUIRE));   /* waits on 1/1 */
    server_kill(&srv[1][1]);                                          /* dies mid-stream */
    pthread_join(th, NULL);
    printf("import with replica 1/1 killed mid-stream: exit %d\n%s", failing.rc, failing.err);
    assert_int_equal(failing.rc, 1);
    assert_string_equal(failing.out, "");
    char want[400];
    snprintf(want, sizeof want, "engramctl: UNAVAILABLE: replica %s of shard 1: ", srv[1][1].addr);
    /* Before the failure engramctl may print notices of connections it
     * retried (on a loaded machine, a replica the previous test restarted
     * can still refuse the first connect): they are not the verdict. */
    const char *err = failing.err;
    for (const char *nl1; (nl1 = strchr(err, '\n')) != NULL && strncmp(err, want, strlen(want));) {
        const char *retry = strstr(err, "; trying again in ");
        if (!retry || retry > nl1)
            break;
        err = nl1 + 1;
    }
    if (strncmp(err, want, strlen(want)))
        fail_msg("stderr does not start with \"%s\": %s", want, failing.err);
    const char *tail = "\nengramctl: nothing was activated; version 2 stays staged where it was written, "
                       "and re-running the import completes it\n";
    const char *nl = strchr(err, '\n');
    assert_non_null(nl);
    assert_string_equal(nl, tail);
    for (int s = 0; s < S; s++)
        for (int r = 0; r < R; r++)
            if (s != 1 || r != 1) {
                expect_replica(s, r, 1, 2, 0, 1, 21);   /* v1 still serves, ... */
                expect_replica(s, r, 1, 2, 2, 2, 22);   /* ... v2 is staged, not active */
            }

    /* The replica comes back with v1 only (a partial stream leaves nothing).
     * Then what a failed activation leaves: v2 active on 0/0 alone. Lookups
     * that name v1 still get v1 there, so no batch mixes versions. */
    assert_int_equal(start(1, 1), 0);
    expect_replica(1, 1, 1, 0, 0, 1, 21);
    assert_int_equal(raw_lookup(srv[1][1].addr, "cf", (const uint64_t[]){1}, 1, 2, log, sizeof log),
                     ENGRAM_NOT_FOUND);
    engram_client *c = connect_to(srv[0][0].addr, 10000, 0);
    assert_int_equal(engram_table_activate(c, "cf", 2, NULL, NULL), ENGRAM_OK);
    engram_client_close(c);
    expect_replica(0, 0, 2, 0, 0, 2, 22);
    expect_replica(0, 0, 2, 0, 1, 1, 21);
    expect_replica(0, 1, 1, 2, 0, 1, 21);

    /* The re-run converges on v2: five replicas already hold it, 1/1 gets
     * its stream, every replica activates it. */
    import_cf(&rerun);
    printf("re-run: exit %d\n%s%s", rerun.rc, rerun.out, rerun.err);
    assert_int_equal(rerun.rc, 0);
    assert_string_equal(rerun.err, "");
    const char *head = "imported cf into cluster it3x2: 300000 rows of 64 bytes, version 2, 3 shards x 6 "
                       "streams (5 already held it), ";
    if (strncmp(rerun.out, head, strlen(head)))
        fail_msg("stdout does not start with \"%s\": %s", head, rerun.out);
    for (int s = 0; s < S; s++)
        for (int r = 0; r < R; r++) {
            expect_replica(s, r, 2, 0, 0, 2, 22);
            expect_replica(s, r, 2, 0, 1, 1, 21);   /* v1 retained */
        }
    c = connect_to(srv[2][1].addr, 10000, 0);
    uint64_t rows[300], v = 0;
    uint8_t out[300 * RB];
    for (size_t i = 0; i < 300; i++)
        rows[i] = splitmix64(77 + i) % FROWS;
    engram_error e;
    if (engram_lookup_sync(c, "cf", rows, 300, out, sizeof out, NULL, &v, &e))
        fail_msg("%s", e.message);
    assert_int_equal(v, 2);
    assert_true(rows_are(22, out, rows, 300));
    engram_client_close(c);
}

/* ---- start-up refusals -------------------------------------------------------------- */

/* Runs engram-server on data directory `data` with args (NULL-terminated)
 * and a log file, so that stderr holds only what it refuses with; returns
 * the exit status, or -1 if it did not exit within 30 s. */
static int server_refuses_va(const char *data, char *err, size_t cap, va_list ap)
{
    const char *argv[24];
    int n = 0;
    char logf[320];
    snprintf(logf, sizeof logf, "%s/refused.log", tmp);
    argv[n++] = ENGRAM_SERVER_BIN;
    argv[n++] = "--data";
    argv[n++] = data;
    argv[n++] = "--listen";
    argv[n++] = "127.0.0.1:0";
    argv[n++] = "--log-file";
    argv[n++] = logf;
    const char *a;
    while ((a = va_arg(ap, const char *)) && n < 23)
        argv[n++] = a;
    argv[n] = NULL;
    char path[] = "/tmp/engram-refusal-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fd, 2);
        execv(ENGRAM_SERVER_BIN, (char *const *)argv);
        _exit(127);
    }
    assert_true(pid > 0);   /* waitpid and test_signal below need a child */
    /* A server that does not refuse would serve until stopped: after 30 s
     * it is killed and the refusal counts as missing (-1). */
    int st = 0, waited = 0;
    while (waitpid(pid, &st, WNOHANG) == 0) {
        if (++waited > 3000) {
            test_signal(pid, SIGKILL);
            waitpid(pid, &st, 0);
            close(fd);
            unlink(path);
            return -1;
        }
        usleep(10000);
    }
    ssize_t k = pread(fd, err, cap - 1, 0);
    err[k > 0 ? k : 0] = '\0';
    close(fd);
    unlink(path);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* server_refuses_va on a data directory of its own. */
static int server_refuses(char *err, size_t cap, ...)
{
    char data[320];
    snprintf(data, sizeof data, "%s/refused-data", tmp);
    va_list ap;
    va_start(ap, cap);
    int rc = server_refuses_va(data, err, cap, ap);
    va_end(ap);
    return rc;
}

/* server_refuses_va on `data`. */
static int server_refuses_on(const char *data, char *err, size_t cap, ...)
{
    va_list ap;
    va_start(ap, cap);
    int rc = server_refuses_va(data, err, cap, ap);
    va_end(ap);
    return rc;
}

static void test_startup_refusals(void **state)
{
    char err[1024], want[1024], bad[320];
    assert_int_equal(server_refuses(err, sizeof err, "--cluster", mapfile, NULL), 2);
    assert_string_equal(err, "engram-server: --cluster and --shard go together\n");
    assert_int_equal(server_refuses(err, sizeof err, "--shard", "1", NULL), 2);
    assert_string_equal(err, "engram-server: --cluster and --shard go together\n");
    assert_int_equal(server_refuses(err, sizeof err, "--cluster", mapfile, "--shard", "3", NULL), 2);
    assert_string_equal(err, "engram-server: --shard 3 is outside the map's 3 shards\n");
    assert_int_equal(server_refuses(err, sizeof err, "--cluster", mapfile, "--shard", "256", NULL), 2);
    assert_string_equal(err, "engram-server: invalid value \"256\" for --shard\n");
    assert_int_equal(server_refuses(err, sizeof err, "--cluster", mapfile, "--shard", "-1", NULL), 2);
    assert_string_equal(err, "engram-server: invalid value \"-1\" for --shard\n");
    snprintf(bad, sizeof bad, "%s/missing.json", tmp);
    assert_int_equal(server_refuses(err, sizeof err, "--cluster", bad, "--shard", "0", NULL), 2);
    snprintf(want, sizeof want,
             "engram-server: cluster map %s: unable to open %s: No such file or directory (line -1)\n", bad,
             bad);
    assert_string_equal(err, want);
    snprintf(bad, sizeof bad, "%s/hash-map.json", tmp);
    FILE *f = fopen(bad, "w");
    fprintf(f, "{\"name\": \"x\", \"placement\": \"hash\", \"shards\": [{\"replicas\": [\"127.0.0.1:1\"]}]}\n");
    fclose(f);
    assert_int_equal(server_refuses(err, sizeof err, "--cluster", bad, "--shard", "0", NULL), 2);
    assert_string_equal(err, "engram-server: cluster map: \"placement\" must be \"mod\" (row r on shard r mod S)\n");
}

/* ---- a data directory keeps its shard ----------------------------------------- */

/* Replica 0/1's directory was started as shard 0 of 3. Restarted as shard
 * 1, with a 2-shard map, or unclustered, the server exits 2 naming both
 * placements (its rows would be served as another shard's); restarted as
 * itself it serves the rows it served before, byte for byte. */
static void test_data_dir_keeps_its_shard(void **state)
{
    enum { N = 64 };
    uint64_t rows[N];
    for (size_t i = 0; i < N; i++)
        rows[i] = (uint64_t)(i * 467 % (ROWS / S)) * S;     /* shard 0's */
    uint8_t before[N * RB], after[N * RB];
    uint64_t vb = 0, va = 0;
    char msg[512], err[1024], want[1024], map2[320];
    assert_int_equal(raw_lookup_data(srv[0][1].addr, "ct", rows, N, 0, before, sizeof before, &vb, msg,
                                     sizeof msg), ENGRAM_OK);
    assert_true(seed_of(before, rows, N) > 0);
    assert_int_equal(server_stop(&srv[0][1]), 0);

    char d[320];
    snprintf(d, sizeof d, "%s/data", dirs[0][1]);      /* the harness's --data */
    assert_int_equal(server_refuses_on(d, err, sizeof err, "--cluster", mapfile, "--shard", "1", NULL), 2);
    snprintf(want, sizeof want, "engram-server: data dir %s holds shard 0 of 3; started with --shard 1 of 3\n", d);
    assert_string_equal(err, want);
    snprintf(map2, sizeof map2, "%s/two-shards.json", tmp);
    FILE *f = fopen(map2, "w");
    fprintf(f, "{\"name\": \"two\", \"placement\": \"mod\", \"shards\": [{\"replicas\": [\"127.0.0.1:%d\"]}, "
               "{\"replicas\": [\"127.0.0.1:%d\"]}]}\n", ports[0][1], ports[1][1]);
    fclose(f);
    assert_int_equal(server_refuses_on(d, err, sizeof err, "--cluster", map2, "--shard", "0", NULL), 2);
    snprintf(want, sizeof want, "engram-server: data dir %s holds shard 0 of 3; started with --shard 0 of 2\n", d);
    assert_string_equal(err, want);
    assert_int_equal(server_refuses_on(d, err, sizeof err, NULL), 2);
    snprintf(want, sizeof want,
             "engram-server: data dir %s holds shard 0 of 3; started without --cluster (shard 0 of 1)\n", d);
    assert_string_equal(err, want);

    assert_int_equal(start(0, 1), 0);
    assert_int_equal(raw_lookup_data(srv[0][1].addr, "ct", rows, N, 0, after, sizeof after, &va, msg,
                                     sizeof msg), ENGRAM_OK);
    assert_int_equal(va, vb);
    assert_memory_equal(after, before, sizeof before);
    expect_replica(0, 1, 2, 0, 0, 2, 22);

    /* a fresh directory started unclustered refuses the cluster's shard 0 */
    char fresh[320];
    snprintf(fresh, sizeof fresh, "%s/unclustered", tmp);
    mkdir(fresh, 0755);
    test_server u;
    assert_int_equal(server_start(&u, fresh, NULL), 0);
    assert_int_equal(server_stop(&u), 0);
    strcat(fresh, "/data");
    assert_int_equal(server_refuses_on(fresh, err, sizeof err, "--cluster", mapfile, "--shard", "0", NULL), 2);
    snprintf(want, sizeof want, "engram-server: data dir %s holds shard 0 of 1; started with --shard 0 of 3\n",
             fresh);
    assert_string_equal(err, want);
}

/* ---- engramctl cluster-map and drop-version ----------------------------------- */

static void test_ctl_cluster_map_and_drop_version(void **state)
{
    char out[4096], err[4096], want[4096], *p = want;
    assert_int_equal(engramctl_capture(out, sizeof out, err, sizeof err, srv[1][0].addr, "cluster-map", NULL), 0);
    p += sprintf(p, "{\n  \"name\": \"it3x2\",\n  \"placement\": \"mod\",\n  \"shards\": [\n");
    for (int s = 0; s < S; s++)
        p += sprintf(p, "    {\n      \"replicas\": [\n        \"127.0.0.1:%d\",\n        \"127.0.0.1:%d\"\n"
                        "      ]\n    }%s\n", ports[s][0], ports[s][1], s < S - 1 ? "," : "");
    sprintf(p, "  ]\n}\n");
    assert_string_equal(out, want);
    assert_string_equal(err, "");
    assert_int_equal(engramctl_capture(out, sizeof out, err, sizeof err, srv[1][0].addr, "cluster-map", "x", NULL), 2);
    assert_string_equal(err, "engramctl: INVALID_ARGUMENT: cluster-map: unexpected argument 'x' (see engramctl --help)\n");

    /* "cf" has v2 active and v1 retained everywhere (the import test). */
    assert_int_equal(engramctl_capture(out, sizeof out, err, sizeof err, srv[2][0].addr, "drop-version", "--table",
                                       "cf", "--version", "1", NULL), 0);
    p = want;
    for (int s = 0; s < S; s++)
        for (int r = 0; r < R; r++)
            p += sprintf(p, "127.0.0.1:%d (shard %d): dropped version 1 of table \"cf\"\n", ports[s][r], s);
    assert_string_equal(out, want);
    assert_string_equal(err, "");
    char msg[512];
    for (int s = 0; s < S; s++)
        for (int r = 0; r < R; r++) {
            expect_replica(s, r, 2, 0, 0, 2, 22);
            assert_int_equal(raw_lookup(srv[s][r].addr, "cf", (const uint64_t[]){(uint64_t)s}, 1, 1, msg,
                                        sizeof msg),
                             ENGRAM_NOT_FOUND);
        }
    /* again: no replica holds it */
    assert_int_equal(engramctl_capture(out, sizeof out, err, sizeof err, srv[2][0].addr, "drop-version", "--table",
                                       "cf", "--version", "1", NULL), 1);
    p = want;
    for (int s = 0; s < S; s++)
        for (int r = 0; r < R; r++)
            p += sprintf(p, "127.0.0.1:%d (shard %d): table \"cf\" has no version 1 on this server\n", ports[s][r], s);
    assert_string_equal(out, want);
    assert_string_equal(err, "engramctl: NOT_FOUND: no replica of the 6 holds version 1 of table \"cf\"\n");
    /* the active version: every replica refuses */
    assert_int_equal(engramctl_capture(out, sizeof out, err, sizeof err, srv[2][0].addr, "drop-version", "--table",
                                       "cf", "--version", "2", NULL), 1);
    assert_string_equal(out, "");
    p = want;
    for (int s = 0; s < S; s++)
        for (int r = 0; r < R; r++)
            p += sprintf(p, "engramctl: FAILED_PRECONDITION: 127.0.0.1:%d (shard %d): version 2 of table \"cf\" is "
                            "active; activate another version first\n", ports[s][r], s);
    sprintf(p, "engramctl: version 2 of table \"cf\" dropped on 0 of 6 replicas, failed on 6 (above); re-running "
               "the command finishes it\n");
    assert_string_equal(err, want);
    /* usage */
    assert_int_equal(engramctl_capture(out, sizeof out, err, sizeof err, srv[2][0].addr, "drop-version", "--table",
                                       "cf", NULL), 2);
    assert_string_equal(err, "engramctl: INVALID_ARGUMENT: drop-version: --version is required (see engramctl --help)\n");
    assert_int_equal(engramctl_capture(out, sizeof out, err, sizeof err, srv[2][0].addr, "drop-version", "--table",
                                       "cf", "--version", "0", NULL), 2);
    assert_string_equal(err, "engramctl: INVALID_ARGUMENT: drop-version: --version must be 1 or more (see engramctl --help)\n");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lookups_every_byte),
        cmocka_unit_test(test_foreign_rows_refused),
        cmocka_unit_test(test_checksums_per_shard),
        cmocka_unit_test(test_prefetch_through_cluster),
        cmocka_unit_test(test_kill_one_replica_per_shard_under_load),
        cmocka_unit_test(test_cutover_never_mixes_versions),
        cmocka_unit_test(test_shard_down_is_named),
        cmocka_unit_test(test_failed_import_activates_nothing_and_rerun_completes),
        cmocka_unit_test(test_startup_refusals),
        cmocka_unit_test(test_data_dir_keeps_its_shard),
        cmocka_unit_test(test_ctl_cluster_map_and_drop_version),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
