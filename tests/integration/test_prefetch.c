/* test_prefetch.c: the Engram model layer end to end against a real
 * engram-server.
 *
 * A manifest shaped like the reference vectors' config 2 (vocab sizes
 * [1009, 2003], 3-grams, 4 heads, layers [0, 3], seed 7, the 1000 -> 600
 * compression table) is put on the server, its tables are imported with
 * engramctl import-synthetic --manifest, and every batch of
 * tests/data/engram-hash/config2_small.json is prefetched. The expected
 * rows come from the vectors' global_row_ids (computed by the reference
 * code, not by us), the expected bytes from the synthetic rule: so every
 * byte checked proves hashing, routing and scattering at once. */
#include <jansson.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <sys/wait.h>

#include "engram/engram.h"
#include "harness.h"
#include "manifest.h"
#include "synthetic.h"

#define SEED 5
#define HEADS 8
#define RB 32 /* dim 16 x bf16 */
#define POISON 0xA5

static test_server srv;
static char tmp[256];
static json_t *vectors;
static engram_client *client;
static engram_model *model;

typedef struct batch {
    size_t B, T;
    int64_t *tokens;
    uint64_t *rows[2];           /* expected global rows of layers 0 and 3 */
    const char *name;
} batch;

static batch batches[32];
static size_t nbatches;

/* ---- vectors ------------------------------------------------------------ */

static int64_t json_i64(json_t *v)
{
    return json_is_string(v) ? strtoll(json_string_value(v), NULL, 10) : json_integer_value(v);
}

static void load_batch(json_t *b, batch *out)
{
    out->name = json_string_value(json_object_get(b, "name"));
    out->B = (size_t)json_integer_value(json_object_get(b, "B"));
    out->T = (size_t)json_integer_value(json_object_get(b, "T"));
    json_t *ids = json_object_get(b, "input_ids_str");
    if (!ids)
        ids = json_object_get(b, "input_ids");
    out->tokens = malloc(out->B * out->T * sizeof *out->tokens);
    for (size_t i = 0; i < out->B; i++)
        for (size_t t = 0; t < out->T; t++)
            out->tokens[i * out->T + t] = json_i64(json_array_get(json_array_get(ids, i), t));
    const char *layers[2] = {"0", "3"};
    for (int l = 0; l < 2; l++) {
        json_t *g = json_object_get(json_object_get(b, "global_row_ids"), layers[l]);
        out->rows[l] = malloc(out->B * out->T * HEADS * sizeof(uint64_t));
        for (size_t i = 0; i < out->B; i++)
            for (size_t t = 0; t < out->T; t++)
                for (size_t h = 0; h < HEADS; h++)
                    out->rows[l][(i * out->T + t) * HEADS + h] = (uint64_t)json_integer_value(
                        json_array_get(json_array_get(json_array_get(g, i), t), h));
    }
}

static void load_vectors(void)
{
    json_error_t je;
    vectors = json_load_file(ENGRAM_TESTDATA_DIR "/engram-hash/config2_small.json", 0, &je);
    if (!vectors)
        fail_msg("cannot read config2_small.json: %s", je.text);
    json_t *arr = json_object_get(vectors, "batches"), *b;
    size_t i;
    json_array_foreach(arr, i, b) load_batch(b, &batches[nbatches++]);
    arr = json_object_get(json_object_get(vectors, "edge_batches_negative_ids"), "batches");
    json_array_foreach(arr, i, b) load_batch(b, &batches[nbatches++]);
}

/* The manifest: config 2 of the vectors, with `extra` keys merged in. */
static char *manifest_json(const char *name, json_t *extra)
{
    json_t *c = json_object_get(vectors, "config"), *m = json_object();
    json_object_set_new(m, "name", json_string(name));
    const char *keys[] = {"engram_vocab_size", "max_ngram_size", "n_embed_per_ngram",
                          "n_head_per_ngram", "layer_ids", "pad_id", "seed"};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
        json_object_set(m, keys[i], json_object_get(c, keys[i]));
    json_object_set_new(m, "dtype", json_string("bf16"));
    json_t *comp = json_object();
    json_object_set(comp, "lookup_table",
                    json_object_get(json_object_get(vectors, "compression"), "lookup_table"));
    json_object_set_new(m, "compression", comp);
    char t0[160], t3[160];
    snprintf(t0, sizeof t0, "%s.l0", name);
    snprintf(t3, sizeof t3, "%s.l3", name);
    json_object_set_new(m, "tables", json_pack("{s:s, s:s}", "0", t0, "3", t3));
    if (extra)
        json_object_update(m, extra);
    char *s = json_dumps(m, JSON_COMPACT);
    json_decref(m);
    json_decref(extra);
    return s;
}

/* ---- checks ------------------------------------------------------------- */

static uint64_t layer_seed(int l)
{
    return manifest_synthetic_seed(SEED, l == 0 ? 0 : 3);
}

/* out holds [layers][B*T, nheads, RB]; expected rows are [B*T, HEADS]. */
static void check_out(const uint8_t *out, const batch *b, const int *layers, size_t nlayers,
                      const uint32_t *heads, size_t nheads, size_t t0, size_t tn)
{
    uint8_t want[RB];
    size_t per = b->B * tn * nheads;
    for (size_t l = 0; l < nlayers; l++)
        for (size_t i = 0; i < b->B; i++)
            for (size_t t = 0; t < tn; t++)
                for (size_t h = 0; h < nheads; h++) {
                    uint64_t row = b->rows[layers[l]][(i * b->T + t0 + t) * HEADS + heads[h]];
                    synthetic_row(layer_seed(layers[l]), row, want, RB);
                    size_t at = l * per + ((i * tn + t) * nheads + h);
                    if (memcmp(out + at * RB, want, RB) != 0)
                        fail_msg("%s: layer %d [%zu,%zu] head %u (row %llu) differs", b->name,
                                 layers[l] ? 3 : 0, i, t0 + t, heads[h], (unsigned long long)row);
                }
}

static const uint32_t all_heads[HEADS] = {0, 1, 2, 3, 4, 5, 6, 7};
static const int64_t both_layers[2] = {0, 3};
static const int both_idx[2] = {0, 1};

static int prefetch(const engram_prefetch_request *r, engram_error *err)
{
    engram_prefetch *h;
    int rc = engram_prefetch_start(model, r, &h, err);
    if (rc)
        return rc;
    rc = engram_prefetch_wait(h, -1, err);
    assert_int_equal(engram_prefetch_poll(h), 1);
    engram_prefetch_free(h);
    return rc;
}

/* ---- setup -------------------------------------------------------------- */

static int group_setup(void **state)
{
    load_vectors();
    harness_tmpdir(tmp, sizeof tmp);
    if (server_start(&srv, tmp, NULL))
        return -1;
    if (engram_client_open(srv.addr, NULL, &client, NULL))
        return -1;
    char *json = manifest_json("cfg2", NULL);
    engram_manifest_info info;
    engram_error e;
    int rc = engram_manifest_put(client, json, strlen(json), &info, &e);
    free(json);
    if (rc || info.n_missing != 2 || strcmp(info.missing_tables, "cfg2.l0,cfg2.l3") != 0)
        return -1;
    /* before the tables exist the model cannot be opened */
    if (engram_model_open(client, "cfg2", &model, &e) != ENGRAM_FAILED_PRECONDITION ||
        !strstr(e.message, "table \"cfg2.l0\" of layer 0 is missing"))
        return -1;
    if (engramctl(srv.addr, "import-synthetic", "--manifest", "cfg2", "--seed", "5", NULL))
        return -1;
    return engram_model_open(client, "cfg2", &model, NULL);
}

static int group_teardown(void **state)
{
    engram_model_close(model);
    engram_client_close(client);
    for (size_t i = 0; i < nbatches; i++) {
        free(batches[i].tokens);
        free(batches[i].rows[0]);
        free(batches[i].rows[1]);
    }
    json_decref(vectors);
    int rc = server_stop(&srv);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    return rc || system(cmd);
}

/* ---- tests -------------------------------------------------------------- */

static void test_model_info(void **state)
{
    engram_model_info mi;
    engram_model_get_info(model, &mi);
    assert_string_equal(mi.name, "cfg2");
    assert_int_equal(mi.n_layers, 2);
    assert_int_equal(mi.layer_ids[1], 3);
    assert_int_equal(mi.heads, HEADS);
    assert_int_equal(mi.dim, 16);
    assert_int_equal(mi.row_bytes, RB);
    assert_int_equal(mi.max_ngram, 3);
    assert_int_equal(mi.pad_id, 2);
}

static void test_hash_matches_reference(void **state)
{
    for (size_t k = 0; k < nbatches; k++) {
        const batch *b = &batches[k];
        uint64_t *rows = malloc(b->B * b->T * HEADS * sizeof *rows);
        for (int l = 0; l < 2; l++) {
            assert_int_equal(engram_model_hash(model, both_layers[l], b->tokens, b->B, b->T, NULL,
                                               rows, NULL), ENGRAM_OK);
            assert_memory_equal(rows, b->rows[l], b->B * b->T * HEADS * sizeof *rows);
        }
        free(rows);
    }
}

/* Prefill: every batch, both layers in one call, all heads. */
static void test_prefill_every_batch(void **state)
{
    for (size_t k = 0; k < nbatches; k++) {
        const batch *b = &batches[k];
        engram_prefetch_request r = {.layer_ids = both_layers, .n_layers = 2, .tokens = b->tokens,
                                     .batch = b->B, .seq_len = b->T};
        size_t bytes = engram_prefetch_out_bytes(model, &r);
        assert_int_equal(bytes, 2 * b->B * b->T * HEADS * RB);
        uint8_t *out = malloc(bytes);
        r.out = out;
        r.out_cap = bytes;
        engram_error e;
        if (prefetch(&r, &e))
            fail_msg("%s: %s", b->name, e.message);
        check_out(out, b, both_idx, 2, all_heads, HEADS, 0, b->T);
        free(out);
    }
}

/* Tensor parallelism: each rank of tp = 1, 2, 4, 8 prefetches its columns
 * (engram_model_tp_heads: ceil(8 / tp) each); the ranks' outputs, put side
 * by side, are the full prefetch byte for byte. */
static void test_tensor_parallel_columns(void **state)
{
    const batch *b = &batches[0];
    engram_prefetch_request r = {.layer_ids = both_layers, .n_layers = 2, .tokens = b->tokens,
                                 .batch = b->B, .seq_len = b->T};
    size_t bytes = engram_prefetch_out_bytes(model, &r);
    uint8_t *full = malloc(bytes), *joined = malloc(bytes);
    r.out = full;
    r.out_cap = bytes;
    engram_error e;
    if (prefetch(&r, &e))
        fail_msg("%s", e.message);
    const size_t positions = b->B * b->T;
    for (uint32_t tp = 1; tp <= 8; tp *= 2) {
        memset(joined, 0xAB, bytes);
        uint32_t at = 0;
        for (uint32_t rank = 0; rank < tp; rank++) {
            uint32_t heads[HEADS];
            size_t nh = engram_model_tp_heads(model, tp, rank, heads, HEADS);
            assert_int_equal(nh, HEADS / tp);
            assert_int_equal(heads[0], at);
            engram_prefetch_request rr = r;
            rr.heads = heads;
            rr.n_heads = nh;
            size_t part_bytes = engram_prefetch_out_bytes(model, &rr);
            assert_int_equal(part_bytes, bytes / tp);
            uint8_t *part = malloc(part_bytes);
            rr.out = part;
            rr.out_cap = part_bytes;
            if (prefetch(&rr, &e))
                fail_msg("tp %u rank %u: %s", tp, rank, e.message);
            for (size_t l = 0; l < 2; l++)          /* [layer][position][head][RB] */
                for (size_t i = 0; i < positions; i++)
                    memcpy(joined + ((l * positions + i) * HEADS + at) * RB,
                           part + ((l * positions + i) * nh) * RB, nh * RB);
            free(part);
            at += (uint32_t)nh;
        }
        assert_int_equal(at, HEADS);
        assert_memory_equal(joined, full, bytes);
    }
    /* more ranks than columns: the last ones take none */
    assert_int_equal(engram_model_tp_heads(model, 16, 7, NULL, 0), 1);
    assert_int_equal(engram_model_tp_heads(model, 16, 8, NULL, 0), 0);
    assert_int_equal(engram_model_tp_heads(model, 3, 2, NULL, 0), 2);   /* 3 + 3 + 2 */
    assert_int_equal(engram_model_tp_heads(model, 0, 0, NULL, 0), 0);
    free(full);
    free(joined);
}

/* Decode: one token per step with the previous max_ngram - 1 = 2 tokens as
 * history (the pad before the start), must give the prefill's rows. */
static void test_decode_with_history(void **state)
{
    const int64_t pad = 2;
    for (size_t k = 0; k < nbatches; k++) {
        const batch *b = &batches[k];
        int64_t *tok = malloc(b->B * sizeof *tok), *hist = malloc(b->B * 2 * sizeof *hist);
        uint8_t *out = malloc(2 * b->B * HEADS * RB);
        for (size_t t = 0; t < b->T; t++) {
            for (size_t i = 0; i < b->B; i++) {
                tok[i] = b->tokens[i * b->T + t];
                hist[i * 2] = t >= 2 ? b->tokens[i * b->T + t - 2] : pad;
                hist[i * 2 + 1] = t >= 1 ? b->tokens[i * b->T + t - 1] : pad;
            }
            engram_prefetch_request r = {.layer_ids = both_layers, .n_layers = 2, .tokens = tok,
                                         .batch = b->B, .seq_len = 1, .history = hist,
                                         .out = out, .out_cap = 2 * b->B * HEADS * RB};
            engram_error e;
            if (prefetch(&r, &e))
                fail_msg("%s t=%zu: %s", b->name, t, e.message);
            check_out(out, b, both_idx, 2, all_heads, HEADS, t, 1);
        }
        free(tok);
        free(hist);
        free(out);
    }
}

static void test_head_subset_one_layer(void **state)
{
    const uint32_t heads[3] = {7, 0, 3};
    const int64_t layer3[1] = {3};
    const int idx3[1] = {1};
    for (size_t k = 0; k < nbatches; k++) {
        const batch *b = &batches[k];
        size_t bytes = b->B * b->T * 3 * RB;
        uint8_t *out = malloc(bytes);
        engram_prefetch_request r = {.layer_ids = layer3, .n_layers = 1, .tokens = b->tokens,
                                     .batch = b->B, .seq_len = b->T, .heads = heads, .n_heads = 3,
                                     .out = out, .out_cap = bytes};
        assert_int_equal(engram_prefetch_out_bytes(model, &r), bytes);
        engram_error e;
        if (prefetch(&r, &e))
            fail_msg("%s: %s", b->name, e.message);
        check_out(out, b, idx3, 1, heads, 3, 0, b->T);
        free(out);
    }
}

/* Many prefetches in flight at once, hashed on the model's worker. */
static void test_async_hashing_many_in_flight(void **state)
{
    enum { K = 12 };
    engram_prefetch *h[K];
    uint8_t *out[K];
    for (int k = 0; k < K; k++) {
        const batch *b = &batches[k % nbatches];
        size_t bytes = 2 * b->B * b->T * HEADS * RB;
        out[k] = malloc(bytes);
        engram_prefetch_request r = {.layer_ids = both_layers, .n_layers = 2, .tokens = b->tokens,
                                     .batch = b->B, .seq_len = b->T, .out = out[k],
                                     .out_cap = bytes, .flags = ENGRAM_PREFETCH_HASH_ASYNC};
        assert_int_equal(engram_prefetch_start(model, &r, &h[k], NULL), ENGRAM_OK);
    }
    for (int k = K - 1; k >= 0; k--) {
        engram_error e;
        int rc = engram_prefetch_wait(h[k], 30000, &e);
        if (rc)
            fail_msg("async %d: %s %s", k, engram_status_name(rc), e.message);
        check_out(out[k], &batches[k % nbatches], both_idx, 2, all_heads, HEADS, 0,
                  batches[k % nbatches].T);
        assert_int_equal(engram_prefetch_wait(h[k], 0, NULL), ENGRAM_OK); /* sticky */
        engram_prefetch_free(h[k]);
        free(out[k]);
    }
}

/* Layer by layer, as a worker waits before each Engram layer: the later
 * layer first, then the earlier; each wait returns with its layer's part
 * complete, and the final wait is OK without copying again. (Rows are
 * written to out as their replies arrive, the one copy: a layer not waited
 * for yet may already hold some or all of its rows, so its part is not
 * checked before its own wait.) */
static void test_wait_layer_by_layer(void **state)
{
    const batch *b = &batches[0];
    size_t bytes = 2 * b->B * b->T * HEADS * RB, half = bytes / 2;
    uint8_t *out = malloc(bytes);
    memset(out, 0xA5, bytes);
    engram_prefetch_request r = {.layer_ids = both_layers, .n_layers = 2, .tokens = b->tokens,
                                 .batch = b->B, .seq_len = b->T, .out = out, .out_cap = bytes,
                                 .flags = ENGRAM_PREFETCH_HASH_ASYNC};
    engram_prefetch *h;
    engram_error e;
    assert_int_equal(engram_prefetch_start(model, &r, &h, NULL), ENGRAM_OK);
    assert_int_equal(engram_prefetch_wait_layer(h, 3, 30000, &e), ENGRAM_OK);
    const int idx3[1] = {1}, idx0[1] = {0};
    check_out(out + half, b, idx3, 1, all_heads, HEADS, 0, b->T);
    assert_int_equal(engram_prefetch_wait_layer(h, 7, 0, &e), ENGRAM_INVALID_ARGUMENT);
    assert_string_equal(e.message, "layer 7 is not in this prefetch");
    assert_int_equal(engram_prefetch_wait_layer(h, 0, 30000, &e), ENGRAM_OK);
    check_out(out, b, idx0, 1, all_heads, HEADS, 0, b->T);
    assert_int_equal(engram_prefetch_wait(h, 0, &e), ENGRAM_OK);
    check_out(out, b, both_idx, 2, all_heads, HEADS, 0, b->T);
    engram_prefetch_free(h);
    free(out);
}

/* Tiny chunks: a layer's unique rows go as many calls (7 rows each), and the
 * output is still exact; a chunk size that is not positive is refused. */
static void test_small_chunks(void **state)
{
    engram_client_options o;
    engram_client_options_init(&o);
    o.prefetch_chunk_rows = 0;
    engram_client *c;
    engram_error e;
    assert_int_equal(engram_client_open(srv.addr, &o, &c, &e), ENGRAM_INVALID_ARGUMENT);
    assert_string_equal(e.message, "prefetch_chunk_rows 0 is not positive");
    o.prefetch_chunk_rows = 7;
    assert_int_equal(engram_client_open(srv.addr, &o, &c, NULL), ENGRAM_OK);
    engram_model *m;
    assert_int_equal(engram_model_open(c, "cfg2", &m, NULL), ENGRAM_OK);
    for (size_t k = 0; k < nbatches; k++) {
        const batch *b = &batches[k];
        size_t bytes = 2 * b->B * b->T * HEADS * RB;
        uint8_t *out = malloc(bytes);
        engram_prefetch_request r = {.layer_ids = both_layers, .n_layers = 2, .tokens = b->tokens,
                                     .batch = b->B, .seq_len = b->T, .out = out, .out_cap = bytes};
        engram_prefetch *h;
        assert_int_equal(engram_prefetch_start(m, &r, &h, NULL), ENGRAM_OK);
        if (engram_prefetch_wait(h, 30000, &e))
            fail_msg("%s: %s", b->name, e.message);
        check_out(out, b, both_idx, 2, all_heads, HEADS, 0, b->T);
        engram_prefetch_free(h);
        free(out);
    }
    engram_model_close(m);
    engram_client_close(c);
}

static void expect_start_error(const engram_prefetch_request *r, int code, const char *msg)
{
    engram_prefetch *h = NULL;
    engram_error e;
    int rc = engram_prefetch_start(model, r, &h, &e);
    if (rc == ENGRAM_OK) {
        rc = engram_prefetch_wait(h, -1, &e);
        engram_prefetch_free(h);
    }
    assert_int_equal(rc, code);
    if (!strstr(e.message, msg))
        fail_msg("message \"%s\" lacks \"%s\"", e.message, msg);
}

static void test_bad_prefetches(void **state)
{
    int64_t tok[4] = {5, 6, 1000, 7};
    uint8_t out[2 * 4 * HEADS * RB];
    engram_prefetch_request r = {.layer_ids = both_layers, .n_layers = 2, .tokens = tok,
                                 .batch = 1, .seq_len = 4, .out = out, .out_cap = sizeof out};
    expect_start_error(&r, ENGRAM_INVALID_ARGUMENT,
                       "token id 1000 at [0, 2] is beyond the compression table (1000 ids)");
    r.flags = ENGRAM_PREFETCH_HASH_ASYNC;     /* the same error, through wait */
    expect_start_error(&r, ENGRAM_INVALID_ARGUMENT, "token id 1000 at [0, 2]");
    tok[2] = 3;
    r.out_cap = sizeof out - 1;
    expect_start_error(&r, ENGRAM_INVALID_ARGUMENT, "out_cap 2047 is smaller than the 2048 bytes");
    r.out_cap = sizeof out;
    const int64_t bad_layer[1] = {1};
    r.layer_ids = bad_layer;
    r.n_layers = 1;
    expect_start_error(&r, ENGRAM_INVALID_ARGUMENT, "layer 1 is not a layer of model cfg2");
    r.layer_ids = both_layers;
    r.n_layers = 2;
    const uint32_t bad_head[1] = {8};
    r.heads = bad_head;
    r.n_heads = 1;
    expect_start_error(&r, ENGRAM_INVALID_ARGUMENT, "head 8 is out of range: model cfg2 has 8 heads");

    engram_client_options o;
    engram_client_options_init(&o);
    o.max_prefetch_tokens = 3;
    engram_client *small;
    engram_model *m;
    assert_int_equal(engram_client_open(srv.addr, &o, &small, NULL), ENGRAM_OK);
    assert_int_equal(engram_model_open(small, "cfg2", &m, NULL), ENGRAM_OK);
    r.heads = NULL;
    engram_prefetch *h;
    engram_error e;
    assert_int_equal(engram_prefetch_start(m, &r, &h, &e), ENGRAM_INVALID_ARGUMENT);
    assert_string_equal(e.message, "batch 1 x seq_len 4 tokens exceeds the limit of 3 tokens per prefetch");
    engram_model_close(m);
    assert_int_equal(engram_model_open(small, "nope", &m, &e), ENGRAM_NOT_FOUND);
    assert_string_equal(e.message, "model \"nope\" not found: no manifest of that name");
    engram_client_close(small);
}

static void expect_put_error(json_t *extra, int code, const char *msg)
{
    char *json = manifest_json("bad", extra);
    engram_error e;
    int rc = engram_manifest_put(client, json, strlen(json), NULL, &e);
    free(json);
    assert_int_equal(rc, code);
    if (!strstr(e.message, msg))
        fail_msg("message \"%s\" lacks \"%s\"", e.message, msg);
}

static void test_bad_manifests(void **state)
{
    expect_put_error(json_pack("{s:{s:[s,s,s]}}", "multipliers", "3", "7", "8", "9"),
                     ENGRAM_INVALID_ARGUMENT, "multipliers[\"3\"][1] = 8 is not odd");
    /* primes given (as the vectors list them) must be the derived ones */
    json_t *primes = json_pack("{s:{s:[i,i,i,i],s:[i,i,i,i]}}", "3", "2", 1031, 1033, 1039,
                               1049, "3", 2029, 2039, 2053, 2069);
    expect_put_error(json_pack("{s:o}", "primes", primes), ENGRAM_INVALID_ARGUMENT,
                     "manifest: primes[\"3\"][\"3\"][3] = 2069 differs from the derived prime 2063");
    expect_put_error(json_pack("{s:s}", "dtype", "bf17"), ENGRAM_INVALID_ARGUMENT,
                     "unknown dtype \"bf17\"");
    expect_put_error(json_pack("{s:{s:s}}", "tables", "0", "x"), ENGRAM_INVALID_ARGUMENT,
                     "layer 3 has no table in \"tables\"");
    /* existing tables of the wrong shape */
    expect_put_error(json_pack("{s:{s:s,s:s}}", "tables", "0", "cfg2.l3", "3", "cfg2.l0"),
                     ENGRAM_FAILED_PRECONDITION,
                     "table \"cfg2.l3\" of layer 0 has 12336 rows; the manifest needs 12120");
    expect_put_error(json_pack("{s:s,s:{s:s,s:s}}", "dtype", "f16", "tables", "0", "cfg2.l0", "3",
                               "cfg2.l3"),
                     ENGRAM_FAILED_PRECONDITION,
                     "table \"cfg2.l0\" of layer 0 has dtype bf16; the manifest says f16");
    char *bad = "{\"name\": \"x\",";
    engram_error e;
    assert_int_equal(engram_manifest_put(client, bad, strlen(bad), NULL, &e), ENGRAM_INVALID_ARGUMENT);
    assert_non_null(strstr(e.message, "invalid JSON"));
    /* nothing of the above was stored */
    engram_manifest_info *v;
    size_t n;
    assert_int_equal(engram_manifest_list(client, &v, &n, NULL), ENGRAM_OK);
    assert_int_equal(n, 1);
    assert_string_equal(v[0].name, "cfg2");
    assert_int_equal(v[0].version, 1);
    assert_int_equal(v[0].n_missing, 0);
    engram_free(v);
}

/* A head subset with several layers in one call, the layers asked for in
 * the opposite order of the manifest's: each layer's part sits at its
 * position in layer_ids and holds only the heads asked for, in their order. */
static void test_head_subset_several_layers(void **state)
{
    const uint32_t heads[3] = {6, 1, 4};
    const int64_t layers[2] = {3, 0};
    const int idx[2] = {1, 0};
    for (size_t k = 0; k < nbatches; k++) {
        const batch *b = &batches[k];
        size_t bytes = 2 * b->B * b->T * 3 * RB;
        uint8_t *out = malloc(bytes);
        engram_prefetch_request r = {.layer_ids = layers, .n_layers = 2, .tokens = b->tokens,
                                     .batch = b->B, .seq_len = b->T, .heads = heads, .n_heads = 3,
                                     .out = out, .out_cap = bytes};
        assert_int_equal(engram_prefetch_out_bytes(model, &r), bytes);
        engram_error e;
        if (prefetch(&r, &e))
            fail_msg("%s: %s", b->name, e.message);
        check_out(out, b, idx, 2, heads, 3, 0, b->T);
        free(out);
    }
}

/* ---- de-duplication, counted by the server --------------------------------- */

/* The Lookup rows and calls the server has counted for `table`
 * (Admin.Stats); 0 and 0 before its first lookup. */
static void table_counts(const char *table, uint64_t *rows, uint64_t *calls)
{
    char *js;
    engram_error e;
    if (engram_stats_json(client, &js, &e))
        fail_msg("stats: %s", e.message);
    json_error_t je;
    json_t *s = json_loads(js, 0, &je), *t;
    engram_free(js);
    assert_non_null(s);
    *rows = *calls = 0;
    size_t i;
    json_array_foreach(json_object_get(s, "tables"), i, t)
        if (strcmp(json_string_value(json_object_get(t, "table")), table) == 0) {
            *rows = (uint64_t)json_integer_value(json_object_get(t, "rows"));
            *calls = (uint64_t)json_integer_value(json_object_get(t, "calls"));
        }
    json_decref(s);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Distinct entries among the given heads of expected rows [n, HEADS]. */
static size_t distinct_rows(const uint64_t *rows, size_t n, const uint32_t *heads, size_t nheads)
{
    uint64_t *v = malloc(n * nheads * sizeof *v);
    for (size_t i = 0; i < n; i++)
        for (size_t h = 0; h < nheads; h++)
            v[i * nheads + h] = rows[i * HEADS + heads[h]];
    qsort(v, n * nheads, sizeof *v, cmp_u64);
    size_t d = n ? 1 : 0;
    for (size_t i = 1; i < n * nheads; i++)
        d += v[i] != v[i - 1];
    free(v);
    return d;
}

/* Every batch twice over (batch 2B: the B sequences, then the same B
 * again), all heads and a head subset: the server must count exactly the
 * distinct rows of each layer, in one call per layer (default chunk 8192
 * rows), and the output is still exact at every position. The distinct
 * counts come from the reference vectors' rows, counted here by sorting. */
static void test_dedup_counted_by_server(void **state)
{
    static const uint32_t subset[3] = {7, 0, 3};
    const char *tables[2] = {"cfg2.l0", "cfg2.l3"};
    for (size_t k = 0; k < nbatches; k++) {
        const batch *b = &batches[k];
        size_t bt = b->B * b->T;
        batch twice = {.B = 2 * b->B, .T = b->T, .name = b->name};
        twice.tokens = malloc(2 * bt * sizeof *twice.tokens);
        memcpy(twice.tokens, b->tokens, bt * sizeof *twice.tokens);
        memcpy(twice.tokens + bt, b->tokens, bt * sizeof *twice.tokens);
        for (int l = 0; l < 2; l++) {
            twice.rows[l] = malloc(2 * bt * HEADS * sizeof(uint64_t));
            memcpy(twice.rows[l], b->rows[l], bt * HEADS * sizeof(uint64_t));
            memcpy(twice.rows[l] + bt * HEADS, b->rows[l], bt * HEADS * sizeof(uint64_t));
        }
        for (int sub = 0; sub < 2; sub++) {
            const uint32_t *heads = sub ? subset : all_heads;
            size_t nheads = sub ? 3 : HEADS, bytes = 2 * 2 * bt * nheads * RB;
            uint64_t rows0[2], calls0[2], rows1[2], calls1[2];
            for (int l = 0; l < 2; l++)
                table_counts(tables[l], &rows0[l], &calls0[l]);
            uint8_t *out = malloc(bytes);
            engram_prefetch_request r = {.layer_ids = both_layers, .n_layers = 2,
                                         .tokens = twice.tokens, .batch = twice.B,
                                         .seq_len = twice.T, .heads = sub ? subset : NULL,
                                         .n_heads = sub ? 3 : 0, .out = out, .out_cap = bytes};
            engram_error e;
            if (prefetch(&r, &e))
                fail_msg("%s: %s", b->name, e.message);
            check_out(out, &twice, both_idx, 2, heads, nheads, 0, twice.T);
            free(out);
            for (int l = 0; l < 2; l++) {
                table_counts(tables[l], &rows1[l], &calls1[l]);
                size_t want = distinct_rows(b->rows[l], bt, heads, nheads);
                if (rows1[l] - rows0[l] != want || calls1[l] - calls0[l] != 1)
                    fail_msg("%s (%zu heads): %s got %llu rows in %llu calls; %zu distinct of %zu "
                             "in 1 call expected", b->name, nheads, tables[l],
                             (unsigned long long)(rows1[l] - rows0[l]),
                             (unsigned long long)(calls1[l] - calls0[l]), want, 2 * bt * nheads);
            }
        }
        free(twice.tokens);
        free(twice.rows[0]);
        free(twice.rows[1]);
    }
}

/* ---- timeouts, cancel, and errors after start ---------------------------- */

/* Every byte of out still holds the caller's poison: nothing was written. */
static void assert_untouched(const uint8_t *out, size_t bytes, const char *what)
{
    for (size_t i = 0; i < bytes; i++)
        if (out[i] != POISON)
            fail_msg("%s: byte %zu of out was written (0x%02x)", what, i, out[i]);
}

/* From here on no reply can come (see server_pause). */
static void pause_server(void)
{
    assert_int_equal(server_pause(&srv), 0);
}

/* Tests that stop the server resume it even when they fail. */
static int resume_server(void **state)
{
    return server_signal(&srv, SIGCONT);
}

static engram_prefetch_request poisoned_request(const batch *b, uint8_t **out, size_t *bytes,
                                                unsigned flags)
{
    *bytes = 2 * b->B * b->T * HEADS * RB;
    *out = malloc(*bytes);
    memset(*out, POISON, *bytes);
    return (engram_prefetch_request){.layer_ids = both_layers, .n_layers = 2,
                                     .tokens = b->tokens, .batch = b->B, .seq_len = b->T,
                                     .out = *out, .out_cap = *bytes, .flags = flags};
}

/* With the server stopped (SIGSTOP, all threads) no reply can come, so: a short wait
 * (and a short wait for one layer) is ENGRAM_TIMEOUT and writes nothing;
 * cancel then makes every wait ENGRAM_CANCELLED at once, out untouched, and
 * the handle frees (the lookups still queued at the stopped server are
 * cancelled). A second prefetch that timed out is not harmed by the
 * timeout: once the server runs again (SIGCONT) the same handle completes
 * with every byte exact. */
static void test_timeout_then_cancel(void **state)
{
    const batch *b = &batches[19];
    uint8_t *out;
    size_t bytes;
    engram_prefetch_request r = poisoned_request(b, &out, &bytes, 0);
    engram_prefetch *h;
    engram_error e;
    pause_server();
    assert_int_equal(engram_prefetch_start(model, &r, &h, &e), ENGRAM_OK);
    assert_int_equal(engram_prefetch_wait(h, 50, &e), ENGRAM_TIMEOUT);
    assert_string_equal(e.message, "prefetch still in flight");
    assert_int_equal(engram_prefetch_wait_layer(h, 3, 10, &e), ENGRAM_TIMEOUT);
    assert_string_equal(e.message, "prefetch still in flight");
    assert_int_equal(engram_prefetch_poll(h), 0);
    assert_untouched(out, bytes, "timed out");
    engram_prefetch_cancel(h);
    assert_int_equal(engram_prefetch_poll(h), 1);
    assert_int_equal(engram_prefetch_wait(h, 0, &e), ENGRAM_CANCELLED);
    assert_string_equal(e.message, "prefetch cancelled");
    assert_int_equal(engram_prefetch_wait_layer(h, 0, -1, &e), ENGRAM_CANCELLED);
    assert_string_equal(e.message, "prefetch cancelled");
    assert_int_equal(engram_prefetch_wait(h, -1, &e), ENGRAM_CANCELLED);   /* sticky */
    assert_untouched(out, bytes, "cancelled");
    engram_prefetch_free(h);

    assert_int_equal(engram_prefetch_start(model, &r, &h, &e), ENGRAM_OK);
    assert_int_equal(engram_prefetch_wait(h, 50, &e), ENGRAM_TIMEOUT);
    assert_untouched(out, bytes, "timed out");
    assert_int_equal(server_signal(&srv, SIGCONT), 0);
    if (engram_prefetch_wait(h, 30000, &e))
        fail_msg("after SIGCONT: %s %s", engram_status_name(e.code), e.message);
    check_out(out, b, both_idx, 2, all_heads, HEADS, 0, b->T);
    engram_prefetch_free(h);
    free(out);
}

/* An error from the server's side after start (here: the server stopped,
 * so every lookup runs into the client's 200 ms deadline) reaches the
 * caller through wait_layer and wait, names the table, is the same on
 * every later wait, and leaves out untouched: prefetch.c writes a layer
 * only when all its rows arrived, and stops at the first failed layer. Both
 * with hashing on the caller's thread and with HASH_ASYNC. */
static void test_server_error_through_wait(void **state)
{
    engram_client_options o;
    engram_client_options_init(&o);
    o.deadline_ms = 200;
    engram_client *c;
    engram_model *m;
    assert_int_equal(engram_client_open(srv.addr, &o, &c, NULL), ENGRAM_OK);
    assert_int_equal(engram_model_open(c, "cfg2", &m, NULL), ENGRAM_OK);
    const batch *b = &batches[18];
    for (int async = 0; async < 2; async++) {
        uint8_t *out;
        size_t bytes;
        engram_prefetch_request r =
            poisoned_request(b, &out, &bytes, async ? ENGRAM_PREFETCH_HASH_ASYNC : 0);
        engram_prefetch *h;
        engram_error e;
        /* one prefetch while the server runs: the client's first lookup
         * reads the cluster map, so the failures below are lookups in flight */
        assert_int_equal(engram_prefetch_start(m, &r, &h, &e), ENGRAM_OK);
        assert_int_equal(engram_prefetch_wait(h, -1, &e), ENGRAM_OK);
        engram_prefetch_free(h);
        memset(out, POISON, bytes);
        pause_server();
        assert_int_equal(engram_prefetch_start(m, &r, &h, &e), ENGRAM_OK);
        const char *want = async ? "table cfg2.l0: Deadline Exceeded"
                                 : "table cfg2.l3: Deadline Exceeded";
        if (async)    /* wait collects the layers in order: layer 0's fails first */
            assert_int_equal(engram_prefetch_wait(h, -1, &e), ENGRAM_DEADLINE_EXCEEDED);
        else
            assert_int_equal(engram_prefetch_wait_layer(h, 3, -1, &e), ENGRAM_DEADLINE_EXCEEDED);
        assert_string_equal(e.message, want);
        assert_int_equal(engram_prefetch_poll(h), 1);
        assert_int_equal(engram_prefetch_wait_layer(h, 0, 0, &e), ENGRAM_DEADLINE_EXCEEDED);
        assert_string_equal(e.message, want);
        assert_int_equal(engram_prefetch_wait(h, 0, &e), ENGRAM_DEADLINE_EXCEEDED);
        assert_string_equal(e.message, want);
        assert_untouched(out, bytes, want);
        assert_int_equal(server_signal(&srv, SIGCONT), 0);
        engram_prefetch_free(h);
        free(out);
    }
    engram_model_close(m);
    engram_client_close(c);
}

/* Runs last: the server is stopped (SIGTERM) and started again on the same
 * data. While it is down a prefetch fails with UNAVAILABLE through wait,
 * out untouched. After the restart the stored manifest is the same
 * document at the same version (and, as JSON, the one put), the list is
 * unchanged, and the model opens and prefetches exactly on a new client,
 * which replaces the group's client and model. */
static void test_manifest_survives_restart(void **state)
{
    char *before, *after, *put = manifest_json("cfg2", NULL);
    uint64_t v_before, v_after;
    assert_int_equal(engram_manifest_get(client, "cfg2", &before, &v_before, NULL), ENGRAM_OK);
    json_t *jb = json_loads(before, 0, NULL), *jp = json_loads(put, 0, NULL);
    assert_true(jb && jp && json_equal(jb, jp));
    json_decref(jb);
    json_decref(jp);
    free(put);
    assert_int_equal(server_stop(&srv), 0);

    const batch *b = &batches[12];
    uint8_t *out;
    size_t bytes;
    engram_prefetch_request r = poisoned_request(b, &out, &bytes, 0);
    engram_prefetch *h;
    engram_error e;
    assert_int_equal(engram_prefetch_start(model, &r, &h, &e), ENGRAM_OK);
    assert_int_equal(engram_prefetch_wait(h, 30000, &e), ENGRAM_UNAVAILABLE);
    if (strncmp(e.message, "table cfg2.l0: ", 15) != 0)
        fail_msg("message \"%s\" does not name table cfg2.l0", e.message);
    assert_untouched(out, bytes, "server down");
    engram_prefetch_free(h);

    assert_int_equal(server_start(&srv, tmp, NULL), 0);
    engram_client *c;
    engram_model *m;
    assert_int_equal(engram_client_open(srv.addr, NULL, &c, NULL), ENGRAM_OK);
    assert_int_equal(engram_manifest_get(c, "cfg2", &after, &v_after, NULL), ENGRAM_OK);
    assert_string_equal(after, before);
    assert_int_equal(v_after, v_before);
    engram_free(before);
    engram_free(after);
    engram_manifest_info *v;
    size_t n;
    assert_int_equal(engram_manifest_list(c, &v, &n, NULL), ENGRAM_OK);
    assert_int_equal(n, 1);
    assert_string_equal(v[0].name, "cfg2");
    assert_int_equal(v[0].version, v_before);
    assert_int_equal(v[0].n_missing, 0);
    engram_free(v);
    assert_int_equal(engram_model_open(c, "cfg2", &m, NULL), ENGRAM_OK);
    engram_model_close(model);
    engram_client_close(client);
    client = c;
    model = m;
    memset(out, POISON, bytes);
    if (prefetch(&r, &e))
        fail_msg("after restart: %s", e.message);
    check_out(out, b, both_idx, 2, all_heads, HEADS, 0, b->T);
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_model_info),
        cmocka_unit_test(test_hash_matches_reference),
        cmocka_unit_test(test_prefill_every_batch),
        cmocka_unit_test(test_tensor_parallel_columns),
        cmocka_unit_test(test_decode_with_history),
        cmocka_unit_test(test_head_subset_one_layer),
        cmocka_unit_test(test_async_hashing_many_in_flight),
        cmocka_unit_test(test_wait_layer_by_layer),
        cmocka_unit_test(test_small_chunks),
        cmocka_unit_test(test_bad_prefetches),
        cmocka_unit_test(test_bad_manifests),
        cmocka_unit_test(test_head_subset_several_layers),
        cmocka_unit_test(test_dedup_counted_by_server),
        cmocka_unit_test_teardown(test_timeout_then_cancel, resume_server),
        cmocka_unit_test_teardown(test_server_error_through_wait, resume_server),
        cmocka_unit_test(test_manifest_survives_restart),   /* last: restarts the server */
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
