/* test_ops.c: the operations plane against real engram-server processes:
 * grpc.health.v1 Check and Watch, Drain/Undrain, and Warm.
 *
 * Covers: a lone server's health SERVING -> drain -> NOT_SERVING (Check,
 * and an open Watch stream sees the change) -> undrain -> SERVING; Check of
 * an unknown service NOT_FOUND; a drained server refusing lookups with
 * UNAVAILABLE; a Watch open at shutdown ending cleanly; warm from token ids through the tiny model's manifest on a
 * server whose tables live in RocksDB (--resident-budget 0), with the rows
 * read back byte-exact afterwards; and the drain of one replica of a 3x2
 * cluster under steady lookup load from libengram cluster clients: zero
 * failed lookups, and the drained server's lookup count (logged by drain
 * and undrain) does not grow while it is drained.
 *
 * Warm's effects are checked through Admin.Stats, always: the block cache
 * usage grows, and the lookups after the warm are all served by the hot
 * tier with no block cache miss. `engramctl warm` is run in both forms
 * (rows of a table; --model with a --tokens file hashed through the
 * manifest), its exit code and every progress line compared exactly.
 *
 * Drain's wait: with one lookup of 262144 rows read from RocksDB in flight
 * (no hot cache, so each takes a good part of a second), `engramctl drain
 * --timeout-ms 1` reports it still in flight and exits 1; a drain with a
 * long timeout then waits for it and exits 0, and the lookup itself
 * completes. The lookup is in flight most but not all of the time, so a
 * drain that happened to fall between two lookups is undone and tried
 * again (at most 20 times).
 *
 * The lone server listens on port 0: its one-shard map (cluster-map) names
 * the bound port, and `engramctl drop-version` drops through it. */
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>
#include <pthread.h>
#include <signal.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "engram/engram.h"
#include "engram/v1/engram.pb-c.h"
#include "grpc/health/v1/health.pb-c.h"
#include "grpc_util.h"
#include "harness.h"
#include "manifest.h"
#include "synthetic.h"

#define S 3
#define R 2
#define RB 64


/* engram_warm with designated fields: struct_size stays 0, the request's
 * first layout, as a caller that never calls engram_warm_request_init. */
#define WARM(c, e, ...) engram_warm((c), &(engram_warm_request){__VA_ARGS__}, (e))

static test_server lone;
static char lone_dir[300];
static test_server srv[S][R];
static char dirs[S][R][300];
static int ports[S][R];
static char tmp[256], mapfile[300];

/* ---- raw gRPC calls (health Watch and Stats are not in libengram) ---------- */

typedef struct stream {
    grpc_channel *ch;
    grpc_completion_queue *cq;
    grpc_call *call;
    grpc_metadata_array md;
} stream;

static int batch(stream *s, const grpc_op *ops, size_t n, int64_t timeout_ms)
{
    assert_int_equal(grpc_call_start_batch(s->call, ops, n, s, NULL), GRPC_CALL_OK);
    grpc_event ev = grpc_completion_queue_pluck(s->cq, s, deadline_in_ms(timeout_ms), NULL);
    return ev.type == GRPC_OP_COMPLETE ? ev.success : -1;   /* -1: timed out */
}

/* Opens a call and sends one request (client half-closed). */
static void stream_open(stream *s, const char *addr, const char *method, const ProtobufCMessage *rq)
{
    grpc_channel_credentials *cr = grpc_insecure_credentials_create();
    s->ch = grpc_channel_create(addr, cr, NULL);
    grpc_channel_credentials_release(cr);
    s->cq = grpc_completion_queue_create_for_pluck(NULL);
    s->call = grpc_channel_create_call(s->ch, NULL, GRPC_PROPAGATE_DEFAULTS, s->cq,
                                       grpc_slice_from_static_string(method), NULL,
                                       deadline_in_ms(20000), NULL);
    grpc_metadata_array_init(&s->md);
    grpc_byte_buffer *bb = pb_to_byte_buffer(rq);
    grpc_op ops[4];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = bb;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &s->md;
    assert_int_equal(batch(s, ops, 4, 5000), 1);
    grpc_byte_buffer_destroy(bb);
}

/* The next message unpacked with desc, or NULL at the end of the stream. */
static ProtobufCMessage *stream_next(stream *s, const ProtobufCMessageDescriptor *desc)
{
    grpc_byte_buffer *bb = NULL;
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &bb;
    assert_int_equal(batch(s, &op, 1, 5000), 1);
    if (!bb)
        return NULL;
    ProtobufCMessage *m = pb_from_byte_buffer(desc, bb);
    grpc_byte_buffer_destroy(bb);
    assert_non_null(m);
    return m;
}

/* Cancels (when cancel) and reads the final status; frees everything. */
static int stream_close(stream *s, int cancel, char *msg, size_t msglen)
{
    if (cancel)
        grpc_call_cancel(s->call, NULL);
    grpc_metadata_array trailing;
    grpc_metadata_array_init(&trailing);
    grpc_status_code status = GRPC_STATUS_UNKNOWN;
    grpc_slice details = grpc_empty_slice();
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    op.data.recv_status_on_client.trailing_metadata = &trailing;
    op.data.recv_status_on_client.status = &status;
    op.data.recv_status_on_client.status_details = &details;
    assert_int_equal(batch(s, &op, 1, 5000), 1);
    if (msg)
        snprintf(msg, msglen, "%.*s", (int)GRPC_SLICE_LENGTH(details),
                 (const char *)GRPC_SLICE_START_PTR(details));
    grpc_slice_unref(details);
    grpc_metadata_array_destroy(&trailing);
    grpc_metadata_array_destroy(&s->md);
    grpc_call_unref(s->call);
    grpc_completion_queue_shutdown(s->cq);
    while (grpc_completion_queue_pluck(s->cq, NULL, gpr_inf_past(GPR_CLOCK_REALTIME), NULL).type !=
           GRPC_QUEUE_SHUTDOWN)
        ;
    grpc_completion_queue_destroy(s->cq);
    grpc_channel_destroy(s->ch);
    return (int)status;
}

static stream watch_open(const char *addr, const char *service)
{
    stream s;
    Grpc__Health__V1__HealthCheckRequest rq = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    rq.service = (char *)service;
    stream_open(&s, addr, "/grpc.health.v1.Health/Watch", &rq.base);
    return s;
}

static int watch_next(stream *s)
{
    Grpc__Health__V1__HealthCheckResponse *r = (Grpc__Health__V1__HealthCheckResponse *)
        stream_next(s, &grpc__health__v1__health_check_response__descriptor);
    assert_non_null(r);
    int st = r->status;
    protobuf_c_message_free_unpacked(&r->base, NULL);
    return st;
}

/* Rows served by the hot tier, summed over tables, as of the last
 * rocksdb_stats call. */
static uint64_t stats_rows_hot;

/* Admin.Stats' RocksDB counters (and stats_rows_hot). The call must
 * succeed: the deadline is generous for a loaded machine. */
static void rocksdb_stats(const char *addr, Engram__V1__RocksdbStats *out)
{
    stream s;
    grpc_channel_credentials *cr = grpc_insecure_credentials_create();
    s.ch = grpc_channel_create(addr, cr, NULL);
    grpc_channel_credentials_release(cr);
    s.cq = grpc_completion_queue_create_for_pluck(NULL);
    s.call = grpc_channel_create_call(s.ch, NULL, GRPC_PROPAGATE_DEFAULTS, s.cq,
                                      grpc_slice_from_static_string("/engram.v1.Admin/Stats"),
                                      NULL, deadline_in_ms(15000), NULL);
    grpc_metadata_array_init(&s.md);
    Engram__V1__StatsRequest rq = ENGRAM__V1__STATS_REQUEST__INIT;
    grpc_byte_buffer *req = pb_to_byte_buffer(&rq.base), *bb = NULL;
    /* RECV_MESSAGE completes only once initial metadata was asked for too. */
    grpc_op ops[5];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = req;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &s.md;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &bb;
    assert_int_equal(batch(&s, ops, 5, 20000), 1);
    grpc_byte_buffer_destroy(req);
    char msg[300];
    int code = stream_close(&s, 0, msg, sizeof msg);
    if (code != GRPC_STATUS_OK)
        fail_msg("Admin.Stats: status %d: %s", code, msg);
    Engram__V1__StatsResponse *r = (Engram__V1__StatsResponse *)pb_from_byte_buffer(
        &engram__v1__stats_response__descriptor, bb);
    grpc_byte_buffer_destroy(bb);
    assert_non_null(r);
    assert_non_null(r->rocksdb);
    *out = *r->rocksdb;
    stats_rows_hot = 0;
    for (size_t i = 0; i < r->n_tables; i++)
        stats_rows_hot += r->tables[i]->rows_hot;
    protobuf_c_message_free_unpacked(&r->base, NULL);
}

/* ---- servers ----------------------------------------------------------------- */

static void write_map(void)
{
    snprintf(mapfile, sizeof mapfile, "%s/cluster.json", tmp);
    FILE *f = fopen(mapfile, "w");
    fprintf(f, "{\"name\": \"ops3x2\", \"placement\": \"mod\", \"shards\": [");
    for (int s = 0; s < S; s++)
        fprintf(f, "%s{\"replicas\": [\"127.0.0.1:%d\", \"127.0.0.1:%d\"]}", s ? ", " : "",
                ports[s][0], ports[s][1]);
    fprintf(f, "]}\n");
    fclose(f);
}

static int start_cluster(void)
{
    static char shard[S][8];
    for (int s = 0; s < S; s++)
        for (int r = 0; r < R; r++) {
            ports[s][r] = harness_free_port();
            snprintf(dirs[s][r], sizeof dirs[s][r], "%s/s%dr%d", tmp, s, r);
            mkdir(dirs[s][r], 0755);
        }
    write_map();
    for (int s = 0; s < S; s++) {
        snprintf(shard[s], sizeof shard[s], "%d", s);
        const char *args[] = {"--cluster", mapfile, "--shard", shard[s], "--threads", "1", NULL};
        for (int r = 0; r < R; r++)
            if (server_start_port(&srv[s][r], dirs[s][r], ports[s][r], args))
                return -1;
    }
    return harness_import_ct(srv[0][0].addr, &srv[0][0], S * R);
}

static int group_setup(void **state)
{
    grpc_init();
    harness_tmpdir(tmp, sizeof tmp);
    snprintf(lone_dir, sizeof lone_dir, "%s/lone", tmp);
    mkdir(lone_dir, 0755);
    const char *args[] = {"--resident-budget", "0", "--threads", "2", NULL};
    if (server_start(&lone, lone_dir, args))
        return -1;
    return start_cluster();
}

static int group_teardown(void **state)
{
    int rc = server_stop(&lone);
    for (int s = 0; s < S; s++)
        for (int r = 0; r < R; r++)
            rc |= server_stop(&srv[s][r]);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    grpc_shutdown();
    return rc || system(cmd);
}

static engram_client *connect_to(const char *addr, int64_t deadline_ms)
{
    engram_client_options o;
    engram_client_options_init(&o);
    o.deadline_ms = deadline_ms;
    engram_client *c;
    assert_int_equal(engram_client_open(addr, &o, &c, NULL), ENGRAM_OK);
    return c;
}

static int health(engram_client *c, const char *service)
{
    int serving = -1;
    engram_error e;
    int rc = engram_health_check(c, service, &serving, &e);
    if (rc)
        fail_msg("health check of \"%s\": %s %s", service, engram_status_name(rc), e.message);
    return serving;
}

/* ---- health and drain on a lone server ------------------------------------------ */

enum { SERVING = 1, NOT_SERVING = 2, SERVICE_UNKNOWN = 3 };

static void test_health_follows_drain(void **state)
{
    engram_client *c = connect_to(lone.addr, 5000);
    assert_int_equal(health(c, ""), ENGRAM_HEALTH_SERVING);
    assert_int_equal(health(c, "engram.v1.Lookup"), ENGRAM_HEALTH_SERVING);
    stream w = watch_open(lone.addr, "");
    assert_int_equal(watch_next(&w), SERVING);

    int drained = -1;
    uint64_t in_flight = 99;
    engram_error e;
    assert_int_equal(engram_drain(c, 1000, &drained, &in_flight, &e), ENGRAM_OK);
    assert_int_equal(drained, 1);
    assert_int_equal(in_flight, 0);
    assert_int_equal(watch_next(&w), NOT_SERVING);
    assert_int_equal(health(c, ""), ENGRAM_HEALTH_NOT_SERVING);
    assert_int_equal(health(c, "engram.v1.Lookup"), ENGRAM_HEALTH_NOT_SERVING);
    assert_int_equal(health(c, "engram.v1.Admin"), ENGRAM_HEALTH_SERVING);
    char msg[512];
    const uint64_t rows[] = {0};
    assert_int_equal(raw_lookup(lone.addr, "any", rows, 1, 0, msg, sizeof msg), ENGRAM_UNAVAILABLE);
    assert_string_equal(msg, "server is draining; retry on another replica");
    assert_int_equal(engramctl(lone.addr, "health", NULL), 1);

    assert_int_equal(engram_undrain(c, &e), ENGRAM_OK);
    assert_int_equal(watch_next(&w), SERVING);
    assert_int_equal(health(c, ""), ENGRAM_HEALTH_SERVING);
    assert_int_equal(raw_lookup(lone.addr, "any", rows, 1, 0, msg, sizeof msg), ENGRAM_NOT_FOUND);
    assert_int_equal(engramctl(lone.addr, "health", NULL), 0);
    assert_int_equal(stream_close(&w, 1, NULL, 0), GRPC_STATUS_CANCELLED);
    engram_client_close(c);
}

static void test_health_unknown_service(void **state)
{
    engram_client *c = connect_to(lone.addr, 5000);
    int serving = -1;
    engram_error e;
    assert_int_equal(engram_health_check(c, "engram.v1.Nope", &serving, &e), ENGRAM_NOT_FOUND);
    assert_string_equal(e.message, "unknown service \"engram.v1.Nope\" (known: \"\", "
                                   "engram.v1.Lookup, engram.v1.Admin)");
    assert_int_equal(serving, -1);
    stream w = watch_open(lone.addr, "engram.v1.Nope");
    assert_int_equal(watch_next(&w), SERVICE_UNKNOWN);
    assert_int_equal(stream_close(&w, 1, NULL, 0), GRPC_STATUS_CANCELLED);
    assert_int_equal(engramctl(lone.addr, "health", "--service", "engram.v1.Nope", NULL), 1);
    engram_client_close(c);
}

/* A Watch open at shutdown hears NOT_SERVING and ends with OK, so the
 * graceful stop never has to cancel it after its grace period.
 *
 * The watcher keeps reading while the server stops, as a balancer does.
 * That matters: the server's graceful GOAWAY waits for the client to
 * answer a PING, and a client that does not poll its channel answers only
 * when gRPC's backup poller runs, every 5 s. Stopping first and reading
 * afterwards made the stop take 5.00 s, a race with the 5 s grace that
 * CI once lost. */
static void test_watch_ends_at_shutdown(void **state)
{
    char dir[300];
    snprintf(dir, sizeof dir, "%s/short", tmp);
    mkdir(dir, 0755);
    test_server t;
    assert_int_equal(server_start(&t, dir, NULL), 0);
    stream w = watch_open(t.addr, "engram.v1.Admin");
    assert_int_equal(watch_next(&w), SERVING);
    assert_int_equal(server_signal(&t, SIGTERM), 0);
    assert_int_equal(watch_next(&w), NOT_SERVING);
    assert_null(stream_next(&w, &grpc__health__v1__health_check_response__descriptor));
    assert_int_equal(stream_close(&w, 0, NULL, 0), GRPC_STATUS_OK);
    int st;
    assert_int_equal(waitpid(t.pid, &st, 0), t.pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    /* Ended by health_shutdown, not cancelled after the grace period. */
    char path[400], line[1024];
    snprintf(path, sizeof path, "%s/server.log", dir);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    while (fgets(line, sizeof line, f))
        assert_null(strstr(line, "event=shutdown_cancel_calls"));
    fclose(f);
}

/* ---- warm ------------------------------------------------------------------------ */

typedef struct progress_log {
    char table[8][130];
    uint64_t done[8], total[8], loaded[8];
    int n;
} progress_log;

static void on_progress(void *ctx, const char *table, uint64_t done, uint64_t total, uint64_t loaded)
{
    progress_log *p = ctx;
    if (p->n == 8)
        return;
    snprintf(p->table[p->n], sizeof p->table[0], "%s", table);
    p->done[p->n] = done;
    p->total[p->n] = total;
    p->loaded[p->n++] = loaded;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static size_t dedupe(uint64_t *v, size_t n)
{
    qsort(v, n, sizeof *v, cmp_u64);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (!k || v[i] != v[k - 1])
            v[k++] = v[i];
    return k;
}

/* Looks rows of layer `layer` up and checks every byte. */
static void check_rows(engram_client *c, const char *table, int64_t layer, const uint64_t *rows,
                       size_t n)
{
    uint8_t *out = malloc(n * RB), want[RB];
    engram_error e;
    if (engram_lookup_sync(c, table, rows, n, out, n * RB, NULL, NULL, &e))
        fail_msg("lookup of %s: %s", table, e.message);
    for (size_t i = 0; i < n; i++) {
        synthetic_row(manifest_synthetic_seed(7, layer), rows[i], want, RB);
        assert_memory_equal(out + i * RB, want, RB);
    }
    free(out);
}

static void test_warm_tokens_through_manifest(void **state)
{
    char path[400];
    snprintf(path, sizeof path, "%s/../deploy/examples/tiny-model.json", SOURCE_DIR);
    assert_int_equal(engramctl(lone.addr, "put-manifest", path, NULL), 0);
    assert_int_equal(engramctl(lone.addr, "import-synthetic", "--manifest", "tiny", "--seed", "7",
                               NULL), 0);
    engram_client *c = connect_to(lone.addr, 5000);
    engram_model *m;
    engram_error e;
    assert_int_equal(engram_model_open(c, "tiny", &m, &e), ENGRAM_OK);
    engram_model_info mi;
    engram_model_get_info(m, &mi);
    assert_int_equal(mi.row_bytes, RB);
    const int64_t tok[12] = {1, 5, 9, 300, 44, 17, 17, 17, 511, 0, 2, 4};
    const size_t T = 12;
    uint64_t rows[2][12 * 8];
    size_t nrows[2];
    for (int l = 0; l < 2; l++) {
        assert_int_equal(engram_model_hash(m, mi.layer_ids[l], tok, 1, T, NULL, rows[l], NULL), 0);
        nrows[l] = dedupe(rows[l], T * mi.heads);
    }

    Engram__V1__RocksdbStats before, after, looked;
    rocksdb_stats(lone.addr, &before);
    progress_log p = {0};
    assert_int_equal(WARM(c, &e, .model = "tiny", .tokens = tok, .n_tokens = T,
                          .progress = on_progress, .progress_ctx = &p),
                     ENGRAM_OK);
    /* One batch per table (under 4096 rows), then the totals. */
    assert_int_equal(p.n, 3);
    assert_string_equal(p.table[0], "tiny.l1");
    assert_int_equal(p.done[0], nrows[0]);
    assert_int_equal(p.total[0], nrows[0]);
    assert_int_equal(p.loaded[0], nrows[0]);    /* RocksDB-served: every row read */
    assert_string_equal(p.table[1], "tiny.l15");
    assert_int_equal(p.done[1], nrows[1]);
    assert_string_equal(p.table[2], "");
    assert_int_equal(p.done[2], nrows[0] + nrows[1]);
    assert_int_equal(p.total[2], nrows[0] + nrows[1]);

    rocksdb_stats(lone.addr, &after);
    assert_true(after.block_cache_usage > before.block_cache_usage);
    uint64_t hot_after = stats_rows_hot;
    for (int l = 0; l < 2; l++) {
        char table[32];
        snprintf(table, sizeof table, "tiny.l%lld", (long long)mi.layer_ids[l]);
        check_rows(c, table, mi.layer_ids[l], rows[l], nrows[l]);
    }
    rocksdb_stats(lone.addr, &looked);
    /* warm filled the hot-row tier: every row looked up afterwards is
     * served from it, without touching RocksDB */
    assert_int_equal(stats_rows_hot - hot_after, nrows[0] + nrows[1]);
    assert_int_equal(looked.block_cache_misses, after.block_cache_misses);

    /* engramctl warm --model --tokens FILE: the same 12 tokens over two
     * lines (one sequence), hashed to the same rows. "loaded" counts rows
     * read from RocksDB, which a table not resident in RAM always is. */
    char tokfile[300], out[1024], want[1024];
    snprintf(tokfile, sizeof tokfile, "%s/tokens.txt", tmp);
    FILE *f = fopen(tokfile, "w");
    assert_non_null(f);
    fprintf(f, "1 5 9 300 44 17\n17 17 511 0 2 4\n");
    fclose(f);
    assert_int_equal(engramctl_capture(out, sizeof out, NULL, 0, lone.addr, "warm", "--model",
                                       "tiny", "--tokens", tokfile, NULL), 0);
    snprintf(want, sizeof want,
             "warm tiny.l1: %zu/%zu rows (loaded %zu)\nwarm tiny.l15: %zu/%zu rows (loaded %zu)\n"
             "warm total: %zu/%zu rows (loaded %zu)\n", nrows[0], nrows[0], nrows[0], nrows[1],
             nrows[1], nrows[1], nrows[0] + nrows[1], nrows[0] + nrows[1], nrows[0] + nrows[1]);
    assert_string_equal(out, want);
    /* --layer 15: that layer's table only. */
    assert_int_equal(engramctl_capture(out, sizeof out, NULL, 0, lone.addr, "warm", "--model",
                                       "tiny", "--tokens", tokfile, "--layer", "15", NULL), 0);
    snprintf(want, sizeof want, "warm tiny.l15: %zu/%zu rows (loaded %zu)\n"
             "warm total: %zu/%zu rows (loaded %zu)\n", nrows[1], nrows[1], nrows[1], nrows[1],
             nrows[1], nrows[1]);
    assert_string_equal(out, want);
    engram_model_close(m);
    engram_client_close(c);
}

static void test_warm_refusals(void **state)
{
    engram_client *c = connect_to(lone.addr, 5000);
    engram_error e;
    const uint64_t bad_rows[] = {0, 16242};
    assert_int_equal(WARM(c, &e, .table = "tiny.l1", .rows = bad_rows, .n_rows = 2),
                     ENGRAM_OUT_OF_RANGE);
    assert_string_equal(e.message, "row 16242 (index 1 in the request) is out of range: "
                                   "table \"tiny.l1\" has 16242 rows");
    assert_int_equal(WARM(c, &e, .table = "nope", .rows = bad_rows, .n_rows = 1),
                     ENGRAM_NOT_FOUND);
    assert_string_equal(e.message, "table \"nope\" not found");
    const int64_t bad_tok[] = {1, 99999};
    assert_int_equal(WARM(c, &e, .model = "tiny", .tokens = bad_tok, .n_tokens = 2),
                     ENGRAM_INVALID_ARGUMENT);
    assert_string_equal(e.message, "token id 99999 at [0, 1] is beyond the compression table (512 ids)");
    assert_int_equal(WARM(c, &e, .model = "nope", .tokens = bad_tok, .n_tokens = 1),
                     ENGRAM_NOT_FOUND);
    assert_string_equal(e.message, "model \"nope\" not found (no manifest of that name on this server)");
    assert_int_equal(WARM(c, &e, .struct_size = 0),
                     ENGRAM_INVALID_ARGUMENT);
    assert_string_equal(e.message, "give a table with rows or a model with tokens");
    /* rows of a resident-less table, with duplicates: counted once */
    const uint64_t dup[] = {7, 7, 8};
    progress_log p = {0};
    assert_int_equal(WARM(c, &e, .table = "tiny.l1", .rows = dup, .n_rows = 3,
                          .progress = on_progress, .progress_ctx = &p),
                     ENGRAM_OK);
    assert_int_equal(p.n, 2);
    assert_int_equal(p.total[0], 2);

    /* The request's struct_size: what an older or newer caller sends. */
    struct {
        engram_warm_request r;
        uint64_t later_field;    /* a field of some later header */
    } newer;
    memset(&newer, 0, sizeof newer);
    engram_warm_request_init(&newer.r);
    newer.r.table = "tiny.l1";
    newer.r.rows = dup;
    newer.r.n_rows = 3;
    newer.r.struct_size = sizeof newer;            /* its tail is 0: unset */
    assert_int_equal(engram_warm(c, &newer.r, &e), ENGRAM_OK);
    newer.later_field = 1;                         /* set: this library lacks it */
    assert_int_equal(engram_warm(c, &newer.r, &e), ENGRAM_INVALID_ARGUMENT);
    char want[256];
    snprintf(want, sizeof want, "engram_warm_request sets a field at byte %zu that this "
             "libengram's engram_warm_request (%zu bytes) does not have: a newer header than "
             "the library", offsetof(__typeof__(newer), later_field), sizeof(engram_warm_request));
    assert_string_equal(e.message, want);
    newer.r.struct_size = sizeof(size_t) + 4;      /* shorter than the first layout */
    assert_int_equal(engram_warm(c, &newer.r, &e), ENGRAM_INVALID_ARGUMENT);
    snprintf(want, sizeof want, "engram_warm_request.struct_size is %zu, less than its first "
             "layout (%zu bytes): set it with engram_warm_request_init", sizeof(size_t) + 4,
             offsetof(engram_warm_request, progress_ctx) + sizeof(void *));
    assert_string_equal(e.message, want);
    engram_client_close(c);
}

/* engramctl warm --table T ROW...: exit 0 and one progress line per table
 * then the total; duplicates count once; every row is read from RocksDB
 * (loaded), the table not being resident; a row out of range exits 1 with
 * the server's message; no ROW is a usage error (exit 2). */
static void test_ctl_warm_rows(void **state)
{
    assert_int_equal(engramctl(lone.addr, "import-synthetic", "--table", "warmrows", "--rows",
                               "1000", "--row-bytes", "64", "--seed", "3", NULL), 0);
    char out[1024], err[1024];
    assert_int_equal(engramctl_capture(out, sizeof out, err, sizeof err, lone.addr, "warm",
                                       "--table", "warmrows", "10", "11", "11", "999", NULL), 0);
    assert_string_equal(out, "warm warmrows: 3/3 rows (loaded 3)\nwarm total: 3/3 rows (loaded 3)\n");
    assert_int_equal(engramctl_capture(out, sizeof out, err, sizeof err, lone.addr, "warm",
                                       "--table", "warmrows", "10", "12", NULL), 0);
    assert_string_equal(out, "warm warmrows: 2/2 rows (loaded 2)\nwarm total: 2/2 rows (loaded 2)\n");
    assert_int_equal(engramctl_capture(out, sizeof out, err, sizeof err, lone.addr, "warm",
                                       "--table", "warmrows", "5", "1000", NULL), 1);
    assert_string_equal(out, "");
    assert_string_equal(err, "engramctl: OUT_OF_RANGE: row 1000 (index 1 in the request) is out "
                             "of range: table \"warmrows\" has 1000 rows\n");
    assert_int_equal(engramctl_capture(out, sizeof out, err, sizeof err, lone.addr, "warm",
                                       "--table", "warmrows", NULL), 2);
    assert_non_null(strstr(err, "warm: --table warmrows needs at least one ROW"));
}

/* ---- drain with a lookup in flight --------------------------------------------------- */

enum { BIG = 262144 };   /* the default --max-rows */

typedef struct big_load {
    const char *addr;
    int stop;
    uint64_t ok, refused, other;
    char first_other[600];
} big_load;

/* Looks every row of "big" up, again and again, until stop; counts the
 * lookups served (first and last row checked), refused for draining, and
 * anything else. */
static void *big_main(void *arg)
{
    big_load *B = arg;
    engram_client *c = connect_to(B->addr, 60000);
    uint64_t *rows = malloc(BIG * sizeof *rows);
    uint8_t *out = malloc((size_t)BIG * RB), want[RB];
    for (uint64_t i = 0; i < BIG; i++)
        rows[i] = i;
    while (!__atomic_load_n(&B->stop, __ATOMIC_ACQUIRE)) {
        engram_error e;
        int rc = engram_lookup_sync(c, "big", rows, BIG, out, (size_t)BIG * RB, NULL, NULL, &e);
        if (rc == ENGRAM_OK) {
            synthetic_row(5, BIG - 1, want, RB);
            if (memcmp(out + (size_t)(BIG - 1) * RB, want, RB) == 0)
                __atomic_add_fetch(&B->ok, 1, __ATOMIC_RELEASE);
            else if (!B->other++)
                snprintf(B->first_other, sizeof B->first_other, "wrong bytes in row %d", BIG - 1);
        } else if (rc == ENGRAM_UNAVAILABLE) {
            __atomic_add_fetch(&B->refused, 1, __ATOMIC_RELEASE);
            usleep(2000);
        } else if (!B->other++) {
            snprintf(B->first_other, sizeof B->first_other, "%s: %s", engram_status_name(rc),
                     e.message);
        }
    }
    free(rows);
    free(out);
    engram_client_close(c);
    return NULL;
}

static void test_drain_times_out_with_lookup_in_flight(void **state)
{
    test_server d;
    char dir[300];
    snprintf(dir, sizeof dir, "%s/slow", tmp);
    mkdir(dir, 0755);
    /* Nothing in RAM: every lookup reads its 262144 rows from RocksDB. */
    const char *args[] = {"--resident-budget", "0", "--hot-cache-bytes", "0", "--block-cache",
                          "1M", "--threads", "2", NULL};
    assert_int_equal(server_start(&d, dir, args), 0);
    char big[16];
    snprintf(big, sizeof big, "%d", BIG);
    assert_int_equal(engramctl(d.addr, "import-synthetic", "--table", "big", "--rows", big,
                               "--row-bytes", "64", "--seed", "5", NULL), 0);
    static big_load B;
    memset(&B, 0, sizeof B);
    B.addr = d.addr;
    pthread_t th;
    pthread_create(&th, NULL, big_main, &B);
    while (__atomic_load_n(&B.ok, __ATOMIC_ACQUIRE) == 0 && !B.other)
        usleep(10000);     /* the load runs: one lookup served */

    char out[512], err[512];
    int rc = 0, tries = 0;
    uint64_t ok_before = 0;
    while (rc != 1 && tries++ < 20) {
        ok_before = __atomic_load_n(&B.ok, __ATOMIC_ACQUIRE);
        rc = engramctl_capture(out, sizeof out, err, sizeof err, d.addr, "drain", "--timeout-ms",
                               "1", NULL);
        if (rc == 0) {     /* fell between two lookups: undo, let one start */
            assert_string_equal(out, "draining: drained, no lookup in flight\n");
            assert_int_equal(engramctl(d.addr, "undrain", NULL), 0);
            usleep(100000);
        }
    }
    printf("drain --timeout-ms 1 saw a lookup in flight after %d tries\n", tries);
    assert_int_equal(rc, 1);
    assert_string_equal(out, "draining: 1 lookups still in flight after 1 ms\n");
    assert_string_equal(err, "");

    /* A long timeout waits for that lookup (drain answers once it is
     * done); the thread's next lookup is refused. */
    assert_int_equal(engramctl_capture(out, sizeof out, err, sizeof err, d.addr, "drain",
                                       "--timeout-ms", "30000", NULL), 0);
    assert_string_equal(out, "draining: drained, no lookup in flight\n");
    for (int i = 0; i < 1000 && __atomic_load_n(&B.refused, __ATOMIC_ACQUIRE) == 0 && !B.other; i++)
        usleep(10000);
    assert_true(__atomic_load_n(&B.refused, __ATOMIC_ACQUIRE) > 0);
    /* The lookup in flight at the drain was served in full, not cut off
     * (one more may have ended just before the drain took effect). */
    uint64_t ok_after = __atomic_load_n(&B.ok, __ATOMIC_ACQUIRE);
    assert_true(ok_after >= ok_before + 1 && ok_after <= ok_before + 2);
    assert_int_equal(engramctl(d.addr, "undrain", NULL), 0);
    __atomic_store_n(&B.stop, 1, __ATOMIC_RELEASE);
    pthread_join(th, NULL);
    if (B.other)
        fail_msg("%llu lookups failed otherwise; first: %s", (unsigned long long)B.other,
                 B.first_other);
    printf("big lookups: %llu served, %llu refused while draining\n", (unsigned long long)B.ok,
           (unsigned long long)B.refused);
    assert_int_equal(server_stop(&d), 0);
}

/* ---- drain of a replica under load -------------------------------------------------- */

typedef struct load {
    int stop, id;
    uint64_t calls, failures, wrong;
    char first_error[600];
} load;

static void *load_main(void *arg)
{
    load *L = arg;
    engram_client *c = connect_to(srv[L->id % S][0].addr, 5000);
    enum { N = 256 };
    uint64_t rows[N];
    uint8_t out[N * RB], want[RB];
    for (uint64_t it = 0; !__atomic_load_n(&L->stop, __ATOMIC_ACQUIRE); it++) {
        for (size_t i = 0; i < N; i++)
            rows[i] = splitmix64((uint64_t)L->id * 1000003 + it * N + i) % 30000;
        engram_error e;
        L->calls++;
        if (engram_lookup_sync(c, "ct", rows, N, out, sizeof out, NULL, NULL, &e)) {
            if (!L->failures++)
                snprintf(L->first_error, sizeof L->first_error, "%s: %s", engram_status_name(e.code),
                         e.message);
            continue;
        }
        for (size_t i = 0; i < N; i++) {
            synthetic_row(11, rows[i], want, RB);
            L->wrong += memcmp(out + i * RB, want, RB) != 0;
        }
    }
    engram_client_close(c);
    return NULL;
}

/* The `lookups=` of the last log line of `event` in a server's log. */
static long long logged_lookups(const test_server *s, const char *event)
{
    char path[400], line[1024], key[64];
    snprintf(path, sizeof path, "%s/server.log", s->dir);
    snprintf(key, sizeof key, "event=%s ", event);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    long long v = -1;
    while (fgets(line, sizeof line, f)) {
        const char *p = strstr(line, key), *q = p ? strstr(p, " lookups=") : NULL;
        if (q)
            v = atoll(q + 9);
    }
    fclose(f);
    return v;
}

enum { THREADS = 3 };

static void test_drain_replica_under_load(void **state)
{
    static load L[THREADS];
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++) {
        memset(&L[i], 0, sizeof L[i]);
        L[i].id = i;
        pthread_create(&th[i], NULL, load_main, &L[i]);
    }
    usleep(300000);
    test_server *d = &srv[1][0];
    assert_int_equal(engramctl(d->addr, "drain", "--timeout-ms", "3000", NULL), 0);
    uint64_t calls_at_drain = 0;
    for (int i = 0; i < THREADS; i++)
        calls_at_drain += __atomic_load_n(&L[i].calls, __ATOMIC_RELAXED);
    usleep(800000);
    uint64_t calls_drained = 0;
    for (int i = 0; i < THREADS; i++)
        calls_drained += __atomic_load_n(&L[i].calls, __ATOMIC_RELAXED);
    assert_int_equal(engramctl(d->addr, "undrain", NULL), 0);
    usleep(200000);
    for (int i = 0; i < THREADS; i++)
        __atomic_store_n(&L[i].stop, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);

    for (int i = 0; i < THREADS; i++) {
        if (L[i].failures)
            fail_msg("thread %d: %llu of %llu lookups failed; first: %s", i,
                     (unsigned long long)L[i].failures, (unsigned long long)L[i].calls,
                     L[i].first_error);
        assert_int_equal(L[i].wrong, 0);
    }
    long long at_drain = logged_lookups(d, "drain"), at_undrain = logged_lookups(d, "undrain");
    printf("drained replica %s: %lld lookups at drain, %lld at undrain; load ran %llu lookups "
           "while it was drained\n", d->addr, at_drain, at_undrain,
           (unsigned long long)(calls_drained - calls_at_drain));
    assert_true(at_drain > 0);                   /* it served before the drain */
    assert_int_equal(at_undrain, at_drain);      /* and nothing while drained */
    assert_true(calls_drained - calls_at_drain > 10);   /* the load went on */
}

/* ---- the one-shard map of a server on port 0 ---------------------------------- */

static void import_version(engram_client *c, const char *table, uint64_t seed)
{
    uint8_t data[16 * RB];
    for (uint64_t r = 0; r < 16; r++)
        synthetic_row(seed, r, data + r * RB, RB);
    engram_import *imp;
    engram_error e;
    int rc = engram_import_begin(c, table, 16, RB, "u8", &imp, &e);
    if (!rc && !(rc = engram_import_write(imp, 0, data, sizeof data, &e)))
        rc = engram_import_finish(imp, NULL, &e);
    else if (imp)
        engram_import_abort(imp);
    if (rc)
        fail_msg("import %s: %s %s", table, engram_status_name(rc), e.message);
}

/* The lone server listens on 127.0.0.1:0 (server_start): its map must
 * name the bound port, or drop-version dials 127.0.0.1:0 and fails. */
static void test_ctl_drop_version_port_zero(void **state)
{
    engram_client *c = connect_to(lone.addr, 10000);
    import_version(c, "dv", 1);
    import_version(c, "dv", 2);              /* v2 active, v1 retained */
    engram_client_close(c);
    char out[2048], err[2048], want[2048];
    assert_int_equal(engramctl_capture(out, sizeof out, err, sizeof err, lone.addr, "cluster-map",
                                       NULL), 0);
    snprintf(want, sizeof want, "{\n  \"name\": \"single\",\n  \"placement\": \"mod\",\n"
             "  \"shards\": [\n    {\n      \"replicas\": [\n        \"%s\"\n      ]\n    }\n"
             "  ]\n}\n", lone.addr);
    assert_string_equal(out, want);
    assert_int_equal(engramctl_capture(out, sizeof out, err, sizeof err, lone.addr, "drop-version",
                                       "--table", "dv", "--version", "1", NULL), 0);
    snprintf(want, sizeof want, "%s (shard 0): dropped version 1 of table \"dv\"\n", lone.addr);
    assert_string_equal(out, want);
    assert_string_equal(err, "");
    char msg[512];
    assert_int_equal(raw_lookup(lone.addr, "dv", (const uint64_t[]){0}, 1, 1, msg, sizeof msg),
                     ENGRAM_NOT_FOUND);
    assert_int_equal(raw_lookup(lone.addr, "dv", (const uint64_t[]){0}, 1, 2, msg, sizeof msg),
                     ENGRAM_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ctl_drop_version_port_zero),
        cmocka_unit_test(test_health_follows_drain),
        cmocka_unit_test(test_health_unknown_service),
        cmocka_unit_test(test_watch_ends_at_shutdown),
        cmocka_unit_test(test_warm_tokens_through_manifest),
        cmocka_unit_test(test_warm_refusals),
        cmocka_unit_test(test_ctl_warm_rows),
        cmocka_unit_test(test_drain_times_out_with_lookup_in_flight),
        cmocka_unit_test(test_drain_replica_under_load),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
