/* test_manifest.c: manifest parsing and validation (common/manifest.c):
 * derived values, the multipliers override, and the message of every
 * refusal. */
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_manifest),
        cmocka_unit_test(test_multiplier_override),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
