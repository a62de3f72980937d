/* test_common.c: the synthetic row rule, status names, dtypes, the
 * cluster map's parser with each of its refusals (exact messages), and the
 * event log: log_allow's rate limit (with threads) and the key=value line, and
 * the --shm-dir file header field by field. The expected
 * synthetic bytes were computed independently (Python, arbitrary-precision
 * integers masked to 64 bits) from the rule's text. */
#include <pthread.h>
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

#include "cluster.h"
#include "dtype.h"
#include "log.h"
#include "shm_format.h"
#include "status.h"
#include "synthetic.h"

static void test_splitmix64_known_values(void **state)
{
    assert_true(splitmix64(0) == 0xe220a8397b1dcdafULL);
    assert_true(splitmix64(1) == 0x910a2dec89025cc1ULL);
}

static void test_synthetic_row_bytes(void **state)
{
    /* seed 5, row 3, 12 bytes: words splitmix64(5 + (3 << 20) + k), LE, cut */
    const uint8_t want[12] = {0xb5, 0x2f, 0xfc, 0xa8, 0x96, 0xd4, 0xb3, 0x46,
                              0xce, 0x3b, 0x71, 0x45};
    uint8_t got[12];
    synthetic_row(5, 3, got, sizeof got);
    assert_memory_equal(got, want, sizeof want);
}

static void test_synthetic_rows_is_rows(void **state)
{
    uint8_t many[5 * 24], one[24];
    synthetic_rows(9, 100, 5, many, 24);
    for (int i = 0; i < 5; i++) {
        synthetic_row(9, 100 + (uint64_t)i, one, 24);
        assert_memory_equal(many + i * 24, one, 24);
    }
}

static void test_status_names(void **state)
{
    assert_string_equal(es_code_name(ES_OK), "OK");
    assert_string_equal(es_code_name(ES_OUT_OF_RANGE), "OUT_OF_RANGE");
    assert_string_equal(es_code_name(ES_UNAUTHENTICATED), "UNAUTHENTICATED");
    assert_string_equal(es_code_name(17), "UNKNOWN_CODE");
    assert_string_equal(es_code_name(-1), "UNKNOWN_CODE");
    assert_int_equal(es_code_parse("NOT_FOUND"), ES_NOT_FOUND);
    assert_int_equal(es_code_parse("nope"), -1);
}

static void test_dtypes(void **state)
{
    assert_int_equal(dtype_size("bf16"), 2);
    assert_int_equal(dtype_size("f32"), 4);
    assert_int_equal(dtype_size("fp8_e4m3"), 1);
    assert_int_equal(dtype_size("u8"), 1);
    assert_int_equal(dtype_size("float32"), 0);
    assert_int_equal(dtype_size(NULL), 0);
    /* row sizes: plain types dim x size; mxfp8_e4m3 codes plus one scale
     * per 32 (DeepSeek-V4.1's 264-byte rows), whole blocks only */
    assert_int_equal(dtype_row_bytes("bf16", 64), 128);
    assert_int_equal(dtype_row_bytes("mxfp8_e4m3", 256), 264);
    assert_int_equal(dtype_row_bytes("mxfp8_e4m3", 32), 33);
    assert_int_equal(dtype_row_bytes("mxfp8_e4m3", 48), 0);
    assert_int_equal(dtype_row_bytes("mxfp8_e4m3", 0), 0);
    assert_int_equal(dtype_row_bytes("nope", 8), 0);
    assert_non_null(strstr(dtype_list(), "mxfp8_e4m3"));

    /* invalid values: NaN codes 0x7f / 0xff, scale 255; everything else,
     * 0x80 (-0) and 0xfe (-448) included, is valid */
    uint8_t rows[3][264];
    for (int r = 0; r < 3; r++)
        for (int i = 0; i < 264; i++)
            rows[r][i] = (uint8_t)(i < 256 ? (i * 37 + r) % 256 : 120 + i - 256);
    for (int r = 0; r < 3; r++)
        for (int i = 0; i < 256; i++)
            if ((rows[r][i] & 0x7f) == 0x7f)
                rows[r][i] = 0x7e;
    rows[1][5] = 0x80;
    rows[1][6] = 0xfe;
    rows[2][263] = 254;
    uint64_t row;
    uint32_t byte;
    uint8_t v;
    assert_int_equal(dtype_find_invalid("mxfp8_e4m3", 256, rows[0], 3, &row, &byte, &v), 0);
    rows[1][200] = 0xff;
    rows[1][100] = 0x7f;
    assert_int_equal(dtype_find_invalid("mxfp8_e4m3", 256, rows[0], 3, &row, &byte, &v), 1);
    assert_int_equal(row, 1);
    assert_int_equal(byte, 100);
    assert_int_equal(v, 0x7f);
    rows[1][100] = rows[1][200] = 0;
    rows[2][259] = 255;
    assert_int_equal(dtype_find_invalid("mxfp8_e4m3", 256, rows[0], 3, &row, &byte, &v), 1);
    assert_int_equal(row, 2);
    assert_int_equal(byte, 259);
    assert_int_equal(v, 255);
    /* other types hold any byte */
    assert_int_equal(dtype_find_invalid("u8", 264, rows[0], 3, &row, &byte, &v), 0);
}

/* ---- cluster map (common/cluster.c) ------------------------------------------- */

static void test_cluster_parse_valid(void **state)
{
    const char *j = "{\"name\": \"c-1.x_y\", \"shards\": [{\"replicas\": [\"a:1\", \"b:2\"]},"
                    " {\"replicas\": [\"[::1]:7070\"]}]}";
    char err[512] = "";
    engram_cluster *c = cluster_parse(j, strlen(j), err, sizeof err);
    assert_non_null(c);     /* "placement" may be left out: "mod" */
    assert_string_equal(c->name, "c-1.x_y");
    assert_int_equal(c->shards, 2);
    assert_int_equal(c->replicas[0], 2);
    assert_int_equal(c->replicas[1], 1);
    assert_string_equal(c->addr[0][0], "a:1");
    assert_string_equal(c->addr[0][1], "b:2");
    assert_string_equal(c->addr[1][0], "[::1]:7070");
    char *out = cluster_to_json(c);
    assert_string_equal(out, "{\n  \"name\": \"c-1.x_y\",\n  \"placement\": \"mod\",\n  \"shards\": [\n"
                             "    {\n      \"replicas\": [\n        \"a:1\",\n        \"b:2\"\n      ]\n"
                             "    },\n    {\n      \"replicas\": [\n        \"[::1]:7070\"\n      ]\n"
                             "    }\n  ]\n}");
    engram_cluster *back = cluster_parse(out, strlen(out), err, sizeof err);
    assert_non_null(back);
    assert_memory_equal(back, c, sizeof *c);
    free(out);
    cluster_free(back);
    cluster_free(c);
    assert_int_equal(cluster_local_rows(10, 3, 0), 4);   /* rows 0 3 6 9 */
    assert_int_equal(cluster_local_rows(10, 3, 1), 3);   /* rows 1 4 7 */
    assert_int_equal(cluster_local_rows(10, 3, 2), 3);   /* rows 2 5 8 */
    assert_int_equal(cluster_local_rows(2, 3, 2), 0);
}

/* cluster_parse refuses json with exactly `want`. */
static void refuses(const char *json, const char *want)
{
    char err[512] = "";
    engram_cluster *c = cluster_parse(json, strlen(json), err, sizeof err);
    if (c)
        fail_msg("accepted: %s", json);
    assert_string_equal(err, want);
}

/* A map of `shards` shards of `reps` replicas "h:1". */
static char *map_of(int shards, int reps)
{
    size_t cap = 64 + (size_t)shards * (24 + (size_t)reps * 8);
    char *j = malloc(cap), *p = j;
    p += sprintf(p, "{\"name\": \"m\", \"shards\": [");
    for (int s = 0; s < shards; s++) {
        p += sprintf(p, "%s{\"replicas\": [", s ? ", " : "");
        for (int r = 0; r < reps; r++)
            p += sprintf(p, "%s\"h:1\"", r ? ", " : "");
        p += sprintf(p, "]}");
    }
    sprintf(p, "]}");
    return j;
}

static void test_cluster_parse_refusals(void **state)
{
    const char *name = "cluster map: \"name\" must be 1-128 characters of [A-Za-z0-9._-]";
    const char *place = "cluster map: \"placement\" must be \"mod\" (row r on shard r mod S)";
    const char *shards = "cluster map: \"shards\" must be an array of 1..256 shards";
    const char *reps1 = "cluster map: shards[1] needs \"replicas\": an array of 1..8 addresses";
    const char *addr01 = "cluster map: shards[0].replicas[1] must be a \"host:port\" string";
    refuses("[]", "cluster map: the document must be a JSON object");
    refuses("{\"name\": \"m\",", "cluster map: invalid JSON at line 1 column 13: "
                                 "string or '}' expected near end of file");
    refuses("{\"name\": \"m\", \"name\": \"n\"}",
            "cluster map: invalid JSON at line 1 column 20: duplicate object key near '\"name\"'");
    refuses("{\"shards\": [{\"replicas\": [\"h:1\"]}]}", name);
    refuses("{\"name\": 7, \"shards\": [{\"replicas\": [\"h:1\"]}]}", name);
    refuses("{\"name\": \"a b\", \"shards\": [{\"replicas\": [\"h:1\"]}]}", name);
    char long_name[300];
    snprintf(long_name, sizeof long_name, "{\"name\": \"%0129d\", \"shards\": [{\"replicas\": [\"h:1\"]}]}", 0);
    refuses(long_name, name);
    refuses("{\"name\": \"m\", \"placement\": \"hash\", \"shards\": [{\"replicas\": [\"h:1\"]}]}", place);
    refuses("{\"name\": \"m\", \"placement\": null, \"shards\": [{\"replicas\": [\"h:1\"]}]}", place);
    refuses("{\"name\": \"m\"}", shards);
    refuses("{\"name\": \"m\", \"shards\": []}", shards);
    refuses("{\"name\": \"m\", \"shards\": {\"replicas\": [\"h:1\"]}}", shards);
    char *big = map_of(257, 1);
    refuses(big, shards);
    free(big);
    big = map_of(256, 8);   /* the limits themselves are fine */
    char err[512];
    engram_cluster *c = cluster_parse(big, strlen(big), err, sizeof err);
    assert_non_null(c);
    assert_int_equal(c->shards, 256);
    assert_int_equal(c->replicas[255], 8);
    cluster_free(c);
    free(big);
    refuses("{\"name\": \"m\", \"shards\": [{\"replicas\": [\"h:1\"]}, 5]}", reps1);
    refuses("{\"name\": \"m\", \"shards\": [{\"replicas\": [\"h:1\"]}, {}]}", reps1);
    refuses("{\"name\": \"m\", \"shards\": [{\"replicas\": [\"h:1\"]}, {\"replicas\": []}]}", reps1);
    refuses("{\"name\": \"m\", \"shards\": [{\"replicas\": [\"h:1\"]}, {\"replicas\": \"h:1\"}]}", reps1);
    big = map_of(2, 9);
    refuses(big, "cluster map: shards[0] needs \"replicas\": an array of 1..8 addresses");
    free(big);
    refuses("{\"name\": \"m\", \"shards\": [{\"replicas\": [\"h:1\", 7]}]}", addr01);
    refuses("{\"name\": \"m\", \"shards\": [{\"replicas\": [\"h:1\", \"\"]}]}", addr01);
    refuses("{\"name\": \"m\", \"shards\": [{\"replicas\": [\"h:1\", \"host\"]}]}", addr01);
    char long_addr[400];
    snprintf(long_addr, sizeof long_addr,
             "{\"name\": \"m\", \"shards\": [{\"replicas\": [\"h:1\", \"h:%0254d\"]}]}", 1);
    refuses(long_addr, addr01);    /* 256 characters, one past CLUSTER_ADDR_MAX */
    long_addr[strlen(long_addr) - 6] = '\0';
    strcat(long_addr, "\"]}]}");   /* 255: accepted */
    c = cluster_parse(long_addr, strlen(long_addr), err, sizeof err);
    assert_non_null(c);
    assert_int_equal(strlen(c->addr[0][1]), 255);
    cluster_free(c);
}

static void test_cluster_load_errors(void **state)
{
    char err[512];
    assert_null(cluster_load("/nonexistent/engram-map.json", err, sizeof err));
    assert_string_equal(err, "cluster map /nonexistent/engram-map.json: unable to open "
                             "/nonexistent/engram-map.json: No such file or directory (line -1)");
    char path[] = "/tmp/engram-map-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fputs("{\"name\": \"m\",\n \"placement\": \"mod\",\n \"shards\": [{\"replicas\": [\"h:1\"]}],\n}\n", f);
    fclose(f);
    assert_null(cluster_load(path, err, sizeof err));
    char want[600];
    snprintf(want, sizeof want, "cluster map %s: string or '}' expected near '}' (line 4)", path);
    assert_string_equal(err, want);
    f = fopen(path, "w");
    fputs("{\"name\": \"m\", \"shards\": [{\"replicas\": [\"h:1\", \"h\"]}]}\n", f);
    fclose(f);
    assert_null(cluster_load(path, err, sizeof err));
    assert_string_equal(err, "cluster map: shards[0].replicas[1] must be a \"host:port\" string");
    unlink(path);
}

/* ---- the event log (common/log.c) ---------------------------------------------- */

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The hot-path limiter: the first call of a slot passes, then nothing
 * until interval_ns has gone by, then one call again. */
static void test_log_allow_limits(void **state)
{
    uint64_t slot = 0;
    assert_int_equal(log_allow(&slot, 10000000000ull), 1);
    int passed = 0;
    for (int i = 0; i < 100000; i++)     /* a storm inside one 10 s interval */
        passed += log_allow(&slot, 10000000000ull);
    assert_int_equal(passed, 0);
    /* The slot holds when the last line went out: 2 s ago passes a 1 s
     * interval (once), not a 3 s one. */
    slot = mono_ns() - 2000000000ull;
    assert_int_equal(log_allow(&slot, 3000000000ull), 0);
    assert_int_equal(log_allow(&slot, 1000000000ull), 1);
    assert_int_equal(log_allow(&slot, 1000000000ull), 0);
    /* A short interval, really waited out. */
    slot = 0;
    assert_int_equal(log_allow(&slot, 20000000ull), 1);
    assert_int_equal(log_allow(&slot, 20000000ull), 0);
    usleep(30000);
    assert_int_equal(log_allow(&slot, 20000000ull), 1);
    assert_int_equal(log_allow(&slot, 20000000ull), 0);
}

typedef struct allow_race {
    uint64_t *slot;
    int passed;
} allow_race;

static void *allow_main(void *arg)
{
    allow_race *r = arg;
    for (int i = 0; i < 20000; i++)
        r->passed += log_allow(r->slot, 10000000000ull);
    return NULL;
}

/* Threads hammering one slot: exactly one line among them all. */
static void test_log_allow_threads(void **state)
{
    uint64_t slot = 0;
    enum { N = 4 };
    allow_race r[N];
    pthread_t th[N];
    for (int i = 0; i < N; i++) {
        r[i] = (allow_race){&slot, 0};
        pthread_create(&th[i], NULL, allow_main, &r[i]);
    }
    int passed = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        passed += r[i].passed;
    }
    assert_int_equal(passed, 1);
}

/* Logs into a memory stream; returns what was written (static buffer). */
static const char *logged(void (*emit)(void))
{
    static char buf[4096];
    char *mem = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&mem, &len);
    assert_non_null(f);
    log_setup(f, LOG_INFO);
    emit();
    fclose(f);
    log_setup(NULL, LOG_INFO);
    snprintf(buf, sizeof buf, "%s", mem);
    free(mem);
    return buf;
}

static void emit_lines(void)
{
    log_error("lookup_read_failed", "table=%s status=DATA_LOSS error=\"%s\"", "t1", "bad block");
    log_debug("hidden", "n=%d", 1);          /* below the level: nothing */
    log_info("bare", NULL);
    log_set_level(LOG_ERROR);
    log_warn("hidden_too", "n=%d", 2);
    log_error("shown", "n=%d", 3);
}

static void emit_long(void)
{
    char v[2000];
    memset(v, 'x', sizeof v - 1);
    v[sizeof v - 1] = '\0';
    log_warn("long", "v=%s", v);
}

/* "ts=YYYY-MM-DDTHH:MM:SS.mmmZ " at p; returns what follows. */
static const char *after_ts(const char *p)
{
    const char *shape = "ts=0000-00-00T00:00:00.000Z ";
    for (size_t i = 0; shape[i]; i++, p++) {
        if (shape[i] == '0')
            assert_true(*p >= '0' && *p <= '9');
        else
            assert_int_equal(*p, shape[i]);
    }
    return p;
}

/* One key=value line per event: ts first, then level, event and the
 * caller's pairs; levels below the minimum write nothing; a line is cut
 * at 1023 bytes and still ends with a newline. */
static void test_log_line_format(void **state)
{
    const char *out = logged(emit_lines);
    const char *p = after_ts(out);
    const char *want1 = "level=error event=lookup_read_failed table=t1 status=DATA_LOSS "
                        "error=\"bad block\"\n";
    assert_memory_equal(p, want1, strlen(want1));
    p = after_ts(p + strlen(want1));
    const char *want2 = "level=info event=bare\n";
    assert_memory_equal(p, want2, strlen(want2));
    p = after_ts(p + strlen(want2));
    assert_string_equal(p, "level=error event=shown n=3\n");

    out = logged(emit_long);
    assert_int_equal(strlen(out), 1023);
    assert_int_equal(out[1022], '\n');
    assert_int_equal(out[1021], 'x');
    p = after_ts(out);
    assert_memory_equal(p, "level=warn event=long v=xxx", 27);

    assert_int_equal(log_level_parse("warn"), LOG_WARN);
    assert_int_equal(log_level_parse("verbose"), -1);
}

/* The --shm-dir header: each field at the offset shm_format.h lists,
 * little-endian, strings NUL-padded, and decoded back as written. */
static void test_shm_header(void **state)
{
    (void)state;
    shm_header x = {.data_offset = 4096, .data_bytes = 0x0102030405060708ULL, .version = 7,
                    .rows = 1000, .local_rows = 334, .row_bytes = 264, .dim = 256,
                    .shard_index = 2, .shard_count = 3, .xxh3 = 0xA1B2C3D4E5F60718ULL,
                    .crc32 = 0xDEADBEEF, .created_unix_ms = 1765000000123ULL,
                    .format_version = 99, .header_bytes = 99};
    for (int i = 0; i < 16; i++)
        x.nonce[i] = (uint8_t)(0xF0 + i);
    snprintf(x.dtype, sizeof x.dtype, "mxfp8_e4m3");
    snprintf(x.table, sizeof x.table, "layer14.embed");
    uint8_t h[SHM_HEADER_BYTES];
    memset(h, 0xEE, sizeof h);
    shm_header_encode(h, &x);
    assert_memory_equal(h, "ENGRSHM1", 8);
    assert_int_equal(h[8], 1);          /* the format's, not x's */
    assert_int_equal(h[13], 0x10);      /* 4096 */
    const uint8_t bytes24[8] = {8, 7, 6, 5, 4, 3, 2, 1};
    assert_memory_equal(h + 24, bytes24, 8);
    assert_int_equal(h[32], 7);
    assert_int_equal(h[56] | h[57] << 8, 264);
    assert_int_equal(h[64], 2);
    assert_int_equal(h[68], 3);
    assert_int_equal(h[72], 0x18);
    assert_int_equal(h[80], 0xEF);
    assert_int_equal(h[88], 0xF0);
    assert_string_equal((const char *)h + 112, "mxfp8_e4m3");
    assert_string_equal((const char *)h + 128, "layer14.embed");
    for (int i = 128 + 13; i < SHM_HEADER_BYTES; i++)   /* padding, the CRC left to the writer */
        assert_int_equal(h[i], 0);
    shm_put_le32(h + SHM_HEADER_CRC_AT, 0x11223344);

    shm_header y;
    shm_header_decode(h, &y);
    assert_string_equal(y.magic, SHM_MAGIC);
    assert_int_equal(y.format_version, SHM_FORMAT_VERSION);
    assert_int_equal(y.header_bytes, SHM_HEADER_BYTES);
    assert_int_equal(y.data_offset, x.data_offset);
    assert_int_equal(y.data_bytes, x.data_bytes);
    assert_int_equal(y.version, 7);
    assert_int_equal(y.rows, 1000);
    assert_int_equal(y.local_rows, 334);
    assert_int_equal(y.row_bytes, 264);
    assert_int_equal(y.dim, 256);
    assert_int_equal(y.shard_index, 2);
    assert_int_equal(y.shard_count, 3);
    assert_int_equal(y.xxh3, x.xxh3);
    assert_int_equal(y.crc32, 0xDEADBEEF);
    assert_memory_equal(y.nonce, x.nonce, 16);
    assert_int_equal(y.created_unix_ms, x.created_unix_ms);
    assert_string_equal(y.dtype, "mxfp8_e4m3");
    assert_string_equal(y.table, "layer14.embed");
    assert_int_equal(y.header_crc, 0x11223344);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_splitmix64_known_values),
        cmocka_unit_test(test_synthetic_row_bytes),
        cmocka_unit_test(test_synthetic_rows_is_rows),
        cmocka_unit_test(test_status_names),
        cmocka_unit_test(test_dtypes),
        cmocka_unit_test(test_cluster_parse_valid),
        cmocka_unit_test(test_cluster_parse_refusals),
        cmocka_unit_test(test_cluster_load_errors),
        cmocka_unit_test(test_log_allow_limits),
        cmocka_unit_test(test_log_allow_threads),
        cmocka_unit_test(test_log_line_format),
        cmocka_unit_test(test_shm_header),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
