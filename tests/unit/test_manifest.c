/* test_manifest.c: manifest parsing and validation (common/manifest.c):
 * derived values, the multipliers override, given primes and offsets
 * checked against the derived ones, and the message of every refusal. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "manifest.h"

/* A small valid manifest; %s slots let tests replace one part. */
#define DOC(vocab, layers, mult, tables, extra)                                       \
    "{\"name\": \"m1\", \"engram_vocab_size\": " vocab ", \"max_ngram_size\": 3,"      \
    " \"n_embed_per_ngram\": 64, \"n_head_per_ngram\": 4, \"layer_ids\": " layers ","  \
    " \"pad_id\": 2, \"seed\": 7, \"dtype\": \"bf16\","                               \
    " \"compression\": {\"lookup_table\": [0, 1, 1, 2, 3, 4]}" mult ","               \
    " \"tables\": " tables extra "}"

#define GOOD DOC("[1009, 2003]", "[0, 3]", "", "{\"0\": \"t0\", \"3\": \"t3\"}", "")

static engram_manifest *parse(const char *doc, char *err)
{
    return manifest_parse(doc, strlen(doc), err, 512);
}

static void expect_error(const char *doc, const char *msg)
{
    char err[512] = "";
    engram_manifest *m = parse(doc, err);
    if (m) {
        manifest_free(m);
        fail_msg("accepted a bad manifest (wanted \"%s\")", msg);
    }
    if (!strstr(err, msg))
        fail_msg("message \"%s\" lacks \"%s\"", err, msg);
}

static void test_good_manifest(void **state)
{
    char err[512];
    engram_manifest *m = parse(GOOD, err);
    assert_non_null(m);
    assert_string_equal(m->name, "m1");
    assert_int_equal(m->dim, 16);
    assert_int_equal(m->row_bytes, 32);
    assert_int_equal(m->pad_id, 2);
    assert_string_equal(m->tables[1], "t3");
    assert_int_equal(m->model->n_layers, 2);
    assert_int_equal(m->model->heads, 8);
    /* the first prime of order 2 is the smallest prime >= 1009 */
    assert_int_equal(m->model->layers[0].primes[0], 1009);
    assert_int_equal(manifest_check_table(m, 0, m->model->layers[0].total_rows, 32, 16, "bf16",
                                          err, sizeof err), 0);
    assert_int_equal(manifest_check_table(m, 1, 5, 32, 16, "bf16", err, sizeof err), -1);
    assert_non_null(strstr(err, "table \"t3\" of layer 3 has 5 rows; the manifest needs"));
    assert_int_equal(manifest_check_table(m, 0, m->model->layers[0].total_rows, 64, 32, "bf16",
                                          err, sizeof err), -1);
    assert_non_null(strstr(err, "has dim 32 (64-byte rows); the manifest needs dim 16 (32-byte rows)"));
    manifest_free(m);
}

static void test_multiplier_override(void **state)
{
    char err[512];
    engram_manifest *m = parse(
        DOC("[1009, 2003]", "[0, 3]", ", \"multipliers\": {\"3\": [\"9223372036854775807\", \"3\", \"5\"]}",
            "{\"0\": \"t0\", \"3\": \"t3\"}", ""), err);
    if (!m)
        fail_msg("%s", err);
    assert_true(m->model->layers[1].multipliers[0] == INT64_MAX);
    assert_int_equal(m->model->layers[1].multipliers[2], 5);
    manifest_free(m);
}

static void test_refusals(void **state)
{
    expect_error("[1, 2]", "the document must be a JSON object");
    expect_error("{\"name\": ", "invalid JSON at line 1");
    expect_error("{\"name\": \"x\"}", "missing key \"max_ngram_size\"");
    expect_error(DOC("[1009]", "[0, 3]", "", "{\"0\": \"t0\", \"3\": \"t3\"}", ""),
                 "\"engram_vocab_size\" must be an array of 2 integers");
    expect_error(DOC("[1009, 2003]", "[0, 0]", "", "{\"0\": \"t0\"}", ""),
                 "layer id 0 appears twice in layer_ids");
    expect_error(DOC("[1009, 2003]", "[0, 3]", "", "{\"0\": \"t0\"}", ""),
                 "layer 3 has no table in \"tables\"");
    expect_error(DOC("[1009, 2003]", "[0, 3]", "", "{\"0\": \"t0\", \"3\": \"t3\", \"4\": \"t4\"}", ""),
                 "tables names layer 4, which is not in layer_ids");
    expect_error(DOC("[1009, 2003]", "[0, 3]", "", "{\"0\": \"t0\", \"3\": \"a b\"}", ""),
                 "tables[\"3\"] must be a table name");
    expect_error(DOC("[1009, 2003]", "[0, 3]", ", \"multipliers\": {\"3\": [\"4\", \"3\", \"5\"]}",
                     "{\"0\": \"t0\", \"3\": \"t3\"}", ""),
                 "multipliers[\"3\"][0] = 4 is not odd");
    expect_error(DOC("[1009, 2003]", "[0, 3]", ", \"multipliers\": {\"3\": [\"1\", \"3\"]}",
                     "{\"0\": \"t0\", \"3\": \"t3\"}", ""),
                 "multipliers[\"3\"] must hold max_ngram_size = 3 values");
    expect_error(DOC("[1009, 2003]", "[0, 3]", ", \"multipliers\": {\"3\": [\"x1\", \"3\", \"5\"]}",
                     "{\"0\": \"t0\", \"3\": \"t3\"}", ""),
                 "multipliers[\"3\"][0] \"x1\" is not a decimal integer");
    expect_error(DOC("[1009, 2003]", "[0, 3]", ", \"multipliers\": {\"3\": [\"9223372036854775809\", \"3\", \"5\"]}",
                     "{\"0\": \"t0\", \"3\": \"t3\"}", ""),
                 "is outside 1..2^63-1");
    expect_error(DOC("[1009, 2003]", "[0, 3]", "", "{\"0\": \"t0\", \"3\": \"t3\"}", ", \"name\": \"dup\""),
                 "invalid JSON");   /* duplicate keys are refused */
    const char *no_div = "{\"name\": \"m\", \"engram_vocab_size\": [10, 20], \"max_ngram_size\": 3,"
                         " \"n_embed_per_ngram\": 10, \"n_head_per_ngram\": 4}";
    expect_error(no_div, "n_embed_per_ngram 10 is not a multiple of n_head_per_ngram 4");
}

/* The primes and head offsets of config 2 of the reference vectors
 * (tests/data/engram-hash/config2_small.json, derived.layers: vocab
 * sizes [1009, 2003], 4 heads per order, layers [0, 3]), copied from there;
 * GOOD has the same shape, so they are its derived values. Layer 3's
 * primes continue after layer 0's (one `seen` set across layers). */
#define P0 "\"0\": {\"2\": [1009, 1013, 1019, 1021], \"3\": [2003, 2011, 2017, 2027]}"
#define P3 "\"3\": {\"2\": [1031, 1033, 1039, 1049], \"3\": [2029, 2039, 2053, 2063]}"
#define O0 "\"0\": [0, 1009, 2022, 3041, 4062, 6065, 8076, 10093]"
#define O3 "\"3\": [0, 1031, 2064, 3103, 4152, 6181, 8220, 10273]"
#define WITH(extra) DOC("[1009, 2003]", "[0, 3]", "", "{\"0\": \"t0\", \"3\": \"t3\"}", extra)
#define WHY " (primes and offsets follow from engram_vocab_size, n_head_per_ngram and layer_ids; they cannot be set)"

static void expect_accepted(const char *doc)
{
    char err[512];
    engram_manifest *m = parse(doc, err);
    if (!m)
        fail_msg("refused: %s", err);
    assert_int_equal(m->model->layers[1].primes[6], 2053);
    assert_int_equal(m->model->layers[1].offsets[7], 10273);
    manifest_free(m);
}

/* The exact message: a refusal names the first differing value. */
static void expect_exact(const char *doc, const char *msg)
{
    char err[512] = "";
    engram_manifest *m = parse(doc, err);
    if (m) {
        manifest_free(m);
        fail_msg("accepted a bad manifest (wanted \"%s\")", msg);
    }
    assert_string_equal(err, msg);
}

static void test_given_primes_and_offsets(void **state)
{
    expect_accepted(WITH(", \"primes\": {" P0 ", " P3 "}, \"offsets\": {" O0 ", " O3 "}"));
    expect_accepted(WITH(", \"primes\": {" P3 "}"));            /* any subset of layers */
    expect_accepted(WITH(", \"offsets\": {" O3 "}"));
    expect_accepted(WITH(", \"primes\": {\"3\": {\"3\": [\"2029\", \"2039\", \"2053\", \"2063\"],"
                         " \"2\": [1031, 1033, 1039, 1049]}}"));  /* strings, any key order */

    /* a different value: the first one is named, with the derived one */
    expect_exact(WITH(", \"primes\": {" P0 ", \"3\": {\"2\": [1031, 1033, 1039, 1049],"
                      " \"3\": [2029, 2039, 2054, 2063]}}"),
                 "manifest: primes[\"3\"][\"3\"][2] = 2054 differs from the derived prime 2053" WHY);
    /* layer 0's primes given for layer 3: the first head differs */
    expect_exact(WITH(", \"primes\": {\"3\": {\"2\": [1009, 1013, 1019, 1021],"
                      " \"3\": [2003, 2011, 2017, 2027]}}"),
                 "manifest: primes[\"3\"][\"2\"][0] = 1009 differs from the derived prime 1031" WHY);
    /* checked in layer_ids order, whatever the document's order */
    expect_exact(WITH(", \"primes\": {\"3\": {\"2\": [1, 1033, 1039, 1049], \"3\": [2029, 2039, 2053, 2063]},"
                      " \"0\": {\"2\": [1009, 1013, 1019, 1021], \"3\": [2003, 2011, 2017, 7]}}"),
                 "manifest: primes[\"0\"][\"3\"][3] = 7 differs from the derived prime 2027" WHY);
    expect_exact(WITH(", \"offsets\": {\"0\": [0, 1009, 2022, 3041, 4062, 6065, 8076, 10094]}"),
                 "manifest: offsets[\"0\"][7] = 10094 differs from the derived offset 10093" WHY);
    expect_exact(WITH(", \"offsets\": {\"3\": [\"0\", \"1031\", \"2063\", 3103, 4152, 6181, 8220, 10273]}"),
                 "manifest: offsets[\"3\"][2] = 2063 differs from the derived offset 2064" WHY);

    /* shapes */
    expect_exact(WITH(", \"primes\": [1009]"),
                 "manifest: \"primes\" must be an object keyed by layer id");
    expect_exact(WITH(", \"offsets\": {\"5\": []}"),
                 "manifest: offsets names layer 5, which is not in layer_ids");
    expect_exact(WITH(", \"primes\": {\"x\": {}}"),
                 "manifest: primes key \"x\" is not a layer id");
    expect_exact(WITH(", \"primes\": {" P3 ", \"03\": {}}"),
                 "manifest: primes names layer 3 twice (\"3\" and \"03\")");
    expect_exact(WITH(", \"primes\": {\"0\": [1009, 1013, 1019, 1021, 2003, 2011, 2017, 2027]}"),
                 "manifest: primes[\"0\"] must be an object keyed by N-gram order 2..3");
    expect_exact(WITH(", \"primes\": {\"0\": {\"2\": [1009, 1013, 1019, 1021]}}"),
                 "manifest: primes[\"0\"] lacks order \"3\"");
    expect_exact(WITH(", \"primes\": {\"0\": {\"2\": [1009, 1013, 1019, 1021],"
                      " \"3\": [2003, 2011, 2017, 2027], \"4\": []}}"),
                 "manifest: primes[\"0\"] key \"4\" is not an N-gram order 2..3");
    expect_exact(WITH(", \"primes\": {\"0\": {\"02\": [1009, 1013, 1019, 1021]}}"),
                 "manifest: primes[\"0\"] key \"02\" is not an N-gram order 2..3");
    expect_exact(WITH(", \"primes\": {\"0\": {\"2\": [1009, 1013, 1019], \"3\": [2003, 2011, 2017, 2027]}}"),
                 "manifest: primes[\"0\"][\"2\"] must be an array of 4 values");
    expect_exact(WITH(", \"offsets\": {\"0\": [0, 1009]}"),
                 "manifest: offsets[\"0\"] must be an array of 8 values");
    expect_exact(WITH(", \"primes\": {\"0\": {\"2\": [1009, -1013, 1019, 1021], \"3\": [2003, 2011, 2017, 2027]}}"),
                 "manifest: primes[\"0\"][\"2\"][1] must be a non-negative integer or a decimal string");
    expect_exact(WITH(", \"offsets\": {\"0\": [0, \"1009x\", 2022, 3041, 4062, 6065, 8076, 10093]}"),
                 "manifest: offsets[\"0\"][1] must be a non-negative integer or a decimal string");
    expect_exact(WITH(", \"offsets\": {\"0\": [0, 1009.0, 2022, 3041, 4062, 6065, 8076, 10093]}"),
                 "manifest: offsets[\"0\"][1] must be a non-negative integer or a decimal string");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_manifest),
        cmocka_unit_test(test_multiplier_override),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_given_primes_and_offsets),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
