/* test_metric.c: the metrics registry (common/metric.c) and the two
 * renderings of it: Prometheus' text, compared byte for byte, and the
 * Admin.Stats reply (server/admin/stats_reply.c), whose Stats paths are
 * followed into a real StatsResponse and read back field by field. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <grpc/grpc.h>

#include "engram/v1/engram.pb-c.h"
#include "grpc_util.h"
#include "metric.h"
#include "stats_reply.h"
#include "status.h"

#define TEST_METRIC(ACTION)                                                      \
    ACTION(hits, METRIC_COUNTER, "t_hits_total", "hot_cache.hits", "Hits.")       \
    ACTION(level, METRIC_GAUGE, "t_level", "shard_count", "A level.")             \
    ACTION(hidden, METRIC_GAUGE, "t_hidden", NULL, "Not in Stats.")
typedef struct test_metrics {
    TEST_METRIC(METRIC_DECLARE)
} test_metrics;

static int refreshed;

static void refresh(void *arg)
{
    test_metrics *m = arg;
    refreshed++;
    METRIC_SET(m, level, 42);
}

/* Two tables x two tiers, and codes OK / NOT_FOUND for one method. */
static void collect_tiers(const metric_family *f, metric_sink *s)
{
    static const char *const tables[2] = {"a\"b", "c"}, *const tiers[2] = {"resident", "hot"};
    for (int t = 0; t < 2; t++)
        for (int k = 0; k < 2; k++) {
            metric_label l[2] = {{"table", tables[t]}, {"tier", tiers[k]}};
            metric_sample x = {.labels = l, .nlabels = 2, .value = (uint64_t)(10 * t + k + 1)};
            s->sample(s, f, &x);
        }
}

static void collect_codes(const metric_family *f, metric_sink *s)
{
    static const char *const codes[2] = {"OK", "NOT_FOUND"};
    for (int c = 0; c < 2; c++) {
        metric_label l[2] = {{"method", "/m"}, {"code", codes[c]}};
        metric_sample x = {.labels = l, .nlabels = 2, .value = (uint64_t)(c ? 3 : 5)};
        s->sample(s, f, &x);
    }
}

static void collect_admission(const metric_family *f, metric_sink *s)
{
    static const char *const codes[2] = {"PERMISSION_DENIED", "UNAVAILABLE"};
    for (int c = 0; c < 2; c++) {
        metric_label l = {"code", codes[c]};
        metric_sample x = {.labels = &l, .nlabels = 1, .value = (uint64_t)c * 4};
        s->sample(s, f, &x);
    }
}

static const double le[2] = {0.001, 0.01};
static const uint64_t buckets[3] = {2, 1, 1};

static void collect_latency(const metric_family *f, metric_sink *s)
{
    metric_histogram h = {.nle = 2, .le = le, .buckets = buckets, .count = 4, .sum = 0.5,
                          .window = {4, 1, 2, 3, 4, 5}, .total = {9, 1.5, 0, 0, 0, 8}};
    metric_label l = {"method", "/m"};
    metric_sample x = {.labels = &l, .nlabels = 1, .hist = &h};
    s->sample(s, f, &x);
}

static void collect_version(const metric_family *f, metric_sink *s)
{
    metric_label l = {"version", "9.9"};
    metric_sample x = {.labels = &l, .nlabels = 1, .value = 1};
    s->sample(s, f, &x);
}

static const metric_family tiers = {"t_tier_rows_total", METRIC_COUNTER, "Rows by tier.",
                                    {"tables[table=$table].rows_$tier", "tables[table=$table].rows"},
                                    0, collect_tiers};
static const metric_family calls = {"t_calls_total", METRIC_COUNTER, "Calls.",
                                    {"rpcs[method=$method].calls",
                                     "rpcs[method=$method].errors[code=$code!=OK].count"},
                                    0, collect_codes};
static const metric_family admission = {NULL, METRIC_COUNTER, "Stats only.",
                                        {"?refusals[code=$code].count"}, 0, collect_admission};
static const metric_family latency = {"t_seconds", METRIC_HISTOGRAM, "Latency.",
                                      {"rpcs[method=$method]"}, 0, collect_latency};
static const metric_family version = {"t_build_info", METRIC_GAUGE, "Build.",
                                      {"build_version=$version", "uptime_ms"}, 0.001,
                                      collect_version};

static test_metrics M = {TEST_METRIC(METRIC_INIT)};
static const metric_family *const families[] = {&tiers, &calls, &admission, &latency, &version};

static void setup_all(void)
{
    M = (test_metrics){TEST_METRIC(METRIC_INIT)};
    METRIC_ADD(&M, hits, 7);
    assert_int_equal(metric_register((metric *)&M, METRIC_CARDINALITY(M), refresh, &M), 0);
    for (size_t i = 0; i < sizeof families / sizeof families[0]; i++)
        assert_int_equal(metric_register_family(families[i]), 0);
}

static void teardown_all(void)
{
    metric_deregister(&M);
    for (size_t i = 0; i < sizeof families / sizeof families[0]; i++)
        metric_deregister(families[i]);
}

static void test_prometheus_text(void **state)
{
    (void)state;
    setup_all();
    refreshed = 0;
    size_t len;
    char *text = metric_render_prometheus(&len);
    assert_non_null(text);
    assert_int_equal(refreshed, 1);
    const char *want =
        "# HELP t_hits_total Hits.\n# TYPE t_hits_total counter\nt_hits_total 7\n"
        "# HELP t_level A level.\n# TYPE t_level gauge\nt_level 42\n"
        "# HELP t_hidden Not in Stats.\n# TYPE t_hidden gauge\nt_hidden 0\n"
        "# HELP t_tier_rows_total Rows by tier.\n# TYPE t_tier_rows_total counter\n"
        "t_tier_rows_total{table=\"a\\\"b\",tier=\"resident\"} 1\n"
        "t_tier_rows_total{table=\"a\\\"b\",tier=\"hot\"} 2\n"
        "t_tier_rows_total{table=\"c\",tier=\"resident\"} 11\n"
        "t_tier_rows_total{table=\"c\",tier=\"hot\"} 12\n"
        "# HELP t_calls_total Calls.\n# TYPE t_calls_total counter\n"
        "t_calls_total{method=\"/m\",code=\"OK\"} 5\n"
        "t_calls_total{method=\"/m\",code=\"NOT_FOUND\"} 3\n"
        "# HELP t_seconds Latency.\n# TYPE t_seconds histogram\n"
        "t_seconds_bucket{method=\"/m\",le=\"0.001\"} 2\n"
        "t_seconds_bucket{method=\"/m\",le=\"0.01\"} 3\n"
        "t_seconds_bucket{method=\"/m\",le=\"+Inf\"} 4\n"
        "t_seconds_sum{method=\"/m\"} 0.500000000\n"
        "t_seconds_count{method=\"/m\"} 4\n"
        "# HELP t_build_info Build.\n# TYPE t_build_info gauge\n"
        "t_build_info{version=\"9.9\"} 0.001\n";
    assert_string_equal(text, want);
    assert_int_equal(len, strlen(want));
    free(text);

    /* Deregistered: gone from the next rendering. */
    teardown_all();
    text = metric_render_prometheus(&len);
    assert_non_null(text);
    assert_int_equal(len, 0);
    free(text);
}

static Engram__V1__StatsResponse *stats_call(int *code, char *msg, size_t msglen)
{
    Engram__V1__StatsRequest rq = ENGRAM__V1__STATS_REQUEST__INIT;
    grpc_byte_buffer *req = pb_to_byte_buffer(&rq.base), *reply = NULL;
    *code = stats_handle(NULL, req, &reply, msg, msglen);
    grpc_byte_buffer_destroy(req);
    if (*code != ES_OK)
        return NULL;
    assert_non_null(reply);
    ProtobufCMessage *m = pb_unpack(&engram__v1__stats_response__descriptor, reply, msg, msglen);
    grpc_byte_buffer_destroy(reply);
    return (Engram__V1__StatsResponse *)m;
}

static void test_stats_paths(void **state)
{
    (void)state;
    setup_all();
    int code;
    char msg[300];
    Engram__V1__StatsResponse *r = stats_call(&code, msg, sizeof msg);
    assert_int_equal(code, ES_OK);
    assert_non_null(r);
    assert_int_equal(r->hot_cache->hits, 7);
    assert_int_equal(r->shard_count, 42);
    assert_string_equal(r->build_version, "9.9");
    assert_int_equal(r->uptime_ms, 1);   /* Stats keeps the value's unit */

    /* Keyed elements, in first-seen order; numbers that share a field sum. */
    assert_int_equal(r->n_tables, 2);
    assert_string_equal(r->tables[0]->table, "a\"b");
    assert_int_equal(r->tables[0]->rows_resident, 1);
    assert_int_equal(r->tables[0]->rows_hot, 2);
    assert_int_equal(r->tables[0]->rows, 3);
    assert_string_equal(r->tables[1]->table, "c");
    assert_int_equal(r->tables[1]->rows, 23);

    /* != skips OK; the histogram's summaries land in window and total. */
    assert_int_equal(r->n_rpcs, 1);
    assert_string_equal(r->rpcs[0]->method, "/m");
    assert_int_equal(r->rpcs[0]->calls, 8);
    assert_int_equal(r->rpcs[0]->n_errors, 1);
    assert_string_equal(r->rpcs[0]->errors[0]->code, "NOT_FOUND");
    assert_int_equal(r->rpcs[0]->errors[0]->count, 3);
    assert_int_equal(r->rpcs[0]->window->count, 4);
    assert_true(r->rpcs[0]->window->p99_ms == 3.0);
    assert_int_equal(r->rpcs[0]->total->count, 9);
    assert_true(r->rpcs[0]->total->max_ms == 8.0);

    /* "?" leaves zero values out. */
    assert_int_equal(r->n_refusals, 1);
    assert_string_equal(r->refusals[0]->code, "UNAVAILABLE");
    assert_int_equal(r->refusals[0]->count, 4);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    teardown_all();
}

static void collect_one(const metric_family *f, metric_sink *s)
{
    metric_sample x = {.value = 1};
    s->sample(s, f, &x);
}

/* A path that names no field fails the call, naming the path. */
static void test_stats_bad_path(void **state)
{
    (void)state;
    static const metric_family bad = {"t_bad", METRIC_GAUGE, "Bad.", {"hot_cache.no_such"},
                                      0, collect_one};
    static const metric_family wrong_type = {"t_wrong", METRIC_GAUGE, "Wrong.",
                                             {"tables.rows"}, 0, collect_one};
    const metric_family *cases[2] = {&bad, &wrong_type};
    const char *names[2] = {"hot_cache.no_such", "tables.rows"};
    for (int i = 0; i < 2; i++) {
        metric_register_family(cases[i]);
        int code;
        char msg[300];
        assert_null(stats_call(&code, msg, sizeof msg));
        assert_int_equal(code, ES_INTERNAL);
        char want[200];
        snprintf(want, sizeof want, "Stats path %s of %s names no field", names[i],
                 cases[i]->name);
        assert_string_equal(msg, want);
        metric_deregister(cases[i]);
    }
}

static void test_registry_full(void **state)
{
    (void)state;
    static metric many[METRIC_MAX_REGISTRATIONS + 1];
    int ok = 0;
    for (int i = 0; i <= METRIC_MAX_REGISTRATIONS; i++)
        ok += metric_register(&many[i], 1, NULL, NULL) == 0;
    assert_int_equal(ok, METRIC_MAX_REGISTRATIONS);
    for (int i = 0; i <= METRIC_MAX_REGISTRATIONS; i++)
        metric_deregister(&many[i]);
    metric_deregister(NULL);   /* a no-op */
    assert_int_equal(metric_register(&many[0], 1, NULL, NULL), 0);
    metric_deregister(&many[0]);
}

int main(void)
{
    grpc_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prometheus_text),
        cmocka_unit_test(test_stats_paths),
        cmocka_unit_test(test_stats_bad_path),
        cmocka_unit_test(test_registry_full),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    grpc_shutdown();
    return rc;
}
