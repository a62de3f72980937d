/* test_v41.c: a DeepSeek-V4.1-shaped model end to end on a real server
 * (issue 13): deploy/examples/tiny-deepseek-v4.1.json (4-grams, 8 heads,
 * DEAD tokens, mxfp8_e4m3 rows of 264 bytes, layers [1, 14], a 640 -> 512
 * compression table) with both tables imported through libengram; a
 * prefetch of token ids with DEAD tokens delivers the hashed rows byte for
 * byte, and with ENGRAM_PREFETCH_DEQUANT_BF16 their BF16 values, also for a
 * tensor-parallel rank's columns. */
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
#include "manifest.h"
#include "synthetic.h"

#define MANIFEST SOURCE_DIR "/../deploy/examples/tiny-deepseek-v4.1.json"
enum { HEADS = 24, DIM = 256, RB = 264, B = 2, T = 37 };

static test_server srv;
static char tmp[256];
static engram_client *client;
static engram_model *model;
static engram_manifest *man;

/* Row r of layer L's table: the typed synthetic rule (valid mxfp8_e4m3, no
 * NaN code, scales 120..134), so the test can recompute any row. */
static void v41_row(int64_t layer, uint64_t r, uint8_t *out)
{
    synthetic_row_typed(manifest_synthetic_seed(41, layer), r, out, RB, "mxfp8_e4m3");
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
    if (server_start(&srv, tmp, NULL) || engram_client_open(srv.addr, NULL, &client, NULL))
        return -1;
    if (harness_put_manifest(client, MANIFEST) || harness_import_layer(client, man, 0, 41) ||
        harness_import_layer(client, man, 1, 41))
        return -1;
    engram_error e;
    return engram_model_open(client, "tiny-v41", &model, &e);
}

static int group_teardown(void **state)
{
    (void)state;
    engram_model_close(model);
    engram_client_close(client);
    manifest_free(man);
    int rc = server_stop(&srv);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    return rc || system(cmd);
}

/* Tokens of a batch: ids of the 640-id vocabulary with DEAD (-1) tokens,
 * one at the start of the second sequence and a run of two in the first. */
static void tokens(int64_t *tok)
{
    for (int i = 0; i < B * T; i++)
        tok[i] = (int64_t)((i * 131 + 7) % 640);
    tok[5] = tok[6] = -1;
    tok[T] = -1;
    tok[T + 20] = -1;
}

static void test_model_shape(void **state)
{
    (void)state;
    engram_model_info mi;
    engram_model_get_info(model, &mi);
    assert_string_equal(mi.dtype, "mxfp8_e4m3");
    assert_int_equal(mi.row_bytes, RB);
    assert_int_equal(mi.dim, DIM);
    assert_int_equal(mi.heads, HEADS);
    assert_int_equal(mi.max_ngram, 4);
    assert_int_equal(mi.n_layers, 2);
    assert_int_equal(mi.layer_ids[1], 14);
}

/* Raw rows, then BF16, then a tp = 4 rank's BF16 columns. */
static void test_prefetch_raw_and_bf16(void **state)
{
    (void)state;
    int64_t tok[B * T];
    tokens(tok);
    const int64_t layers[2] = {14, 1};
    engram_prefetch_request r;
    engram_prefetch_request_init(&r);
    r.layer_ids = layers;
    r.n_layers = 2;
    r.tokens = tok;
    r.batch = B;
    r.seq_len = T;
    const size_t n = 2 * (size_t)B * T * HEADS;
    assert_int_equal(engram_prefetch_out_bytes(model, &r), n * RB);
    uint8_t *raw = malloc(n * RB);
    r.out = raw;
    r.out_cap = n * RB;
    engram_prefetch *h;
    engram_error e;
    assert_int_equal(engram_prefetch_start(model, &r, &h, &e), ENGRAM_OK);
    assert_int_equal(engram_prefetch_wait(h, -1, &e), ENGRAM_OK);
    engram_prefetch_free(h);

    /* every row is the one the hashing names, as stored */
    uint64_t *rows = malloc((size_t)B * T * HEADS * sizeof *rows);
    uint8_t want[RB];
    for (int l = 0; l < 2; l++) {
        assert_int_equal(engram_model_hash(model, layers[l], tok, B, T, NULL, rows, &e), ENGRAM_OK);
        for (size_t i = 0; i < (size_t)B * T * HEADS; i++) {
            v41_row(layers[l], rows[i], want);
            assert_memory_equal(raw + ((size_t)l * B * T * HEADS + i) * RB, want, RB);
        }
    }
    /* a DEAD token pads every id of its position: its rows are the pad's,
     * the same in both sequences (positions 5 and T) */
    assert_memory_equal(raw + (size_t)5 * HEADS * RB, raw + (size_t)T * HEADS * RB, HEADS * RB);

    /* BF16: the same rows, dequantised */
    r.flags = ENGRAM_PREFETCH_DEQUANT_BF16;
    assert_int_equal(engram_prefetch_out_bytes(model, &r), n * DIM * 2);
    uint16_t *bf = malloc(n * DIM * 2), *ref = malloc(n * DIM * 2);
    r.out = bf;
    r.out_cap = n * DIM * 2;
    assert_int_equal(engram_prefetch_start(model, &r, &h, &e), ENGRAM_OK);
    assert_int_equal(engram_prefetch_wait(h, -1, &e), ENGRAM_OK);
    engram_prefetch_free(h);
    assert_int_equal(engram_dequant_bf16(raw, n, DIM, ref, &e), ENGRAM_OK);
    assert_memory_equal(bf, ref, n * DIM * 2);

    /* tp = 4, rank 2: columns 12..17, BF16, with async hashing */
    uint32_t heads[HEADS];
    size_t nh = engram_model_tp_heads(model, 4, 2, heads, HEADS);
    assert_int_equal(nh, 6);
    assert_int_equal(heads[0], 12);
    r.heads = heads;
    r.n_heads = nh;
    r.flags = ENGRAM_PREFETCH_DEQUANT_BF16 | ENGRAM_PREFETCH_HASH_ASYNC;
    uint16_t *part = malloc(2 * (size_t)B * T * nh * DIM * 2);
    r.out = part;
    r.out_cap = 2 * (size_t)B * T * nh * DIM * 2;
    assert_int_equal(engram_prefetch_start(model, &r, &h, &e), ENGRAM_OK);
    assert_int_equal(engram_prefetch_wait(h, -1, &e), ENGRAM_OK);
    engram_prefetch_free(h);
    for (size_t i = 0; i < 2 * (size_t)B * T; i++)
        assert_memory_equal(part + i * nh * DIM, ref + (i * HEADS + 12) * DIM, nh * DIM * 2);
    free(part);
    free(bf);
    free(ref);
    free(rows);
    free(raw);
}

/* Refusals: BF16 of a model whose rows are not mxfp8_e4m3; NaN rows. */
static void test_refusals(void **state)
{
    (void)state;
    engram_error e;
    engram_import *imp;
    uint8_t row[RB];
    v41_row(1, 0, row);
    row[100] = 0xff;
    assert_int_equal(engram_import_begin(client, "nan", 1, DIM, "mxfp8_e4m3", &imp, &e), ENGRAM_OK);
    int rc = engram_import_write(imp, 0, row, RB, &e);
    if (rc == ENGRAM_OK)
        rc = engram_import_finish(imp, NULL, &e);
    else
        engram_import_abort(imp);
    assert_int_equal(rc, ENGRAM_INVALID_ARGUMENT);
    assert_string_equal(e.message, "row 0 column 100 of table \"nan\" is 0xff, a NaN E4M3 code; "
                                   "mxfp8_e4m3 rows hold no NaN");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_model_shape),
        cmocka_unit_test(test_prefetch_raw_and_bf16),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
