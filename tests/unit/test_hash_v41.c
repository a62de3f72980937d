/* test_hash_v41.c: DeepSeek-V4.1-Flash's hashing (issue 13): its derived
 * multipliers and primes, the public F1/F2/F3 row vectors, and the DEAD
 * token rule against a naive restatement of it, on random sequences with
 * DEAD tokens, whole and split into decode steps with history, on both
 * eh_hash paths (AVX-512 and scalar). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "dsv41_hash_vectors.h"
#include "engram_hash.h"

enum { N = 4, H = 8, HEADS = (N - 1) * H };

static eh_config v41_config(const int64_t *lut, size_t lut_len)
{
    eh_config c;
    memset(&c, 0, sizeof c);
    c.max_ngram = N;
    c.n_head_per_ngram = H;
    for (int i = 0; i < N - 1; i++)
        c.vocab_sizes[i] = 16000000;
    c.n_layers = 2;
    c.layer_ids[0] = 1;
    c.layer_ids[1] = 14;
    c.pad_id = 2;
    c.seed = 0;
    c.lookup = lut;
    c.lookup_len = lut_len;
    c.dead_tokens = 1;
    return c;
}

static eh_model *v41_model(void)
{
    eh_config c = v41_config(dsv41_token_map, 10);
    char err[256] = "";
    eh_model *m = eh_model_create(&c, err, sizeof err);
    if (!m)
        fail_msg("%s", err);
    return m;
}

/* rows of `tokens` in the vectors' layout [token][layer 1, 14][col] */
static void rows_v41(const eh_model *m, const int64_t *tokens, size_t T, uint32_t *out)
{
    uint64_t r[2][16 * HEADS];
    char err[256];
    assert_true(T <= 16);
    for (int li = 0; li < 2; li++)
        if (eh_hash(m, li, tokens, 1, T, NULL, r[li], err, sizeof err))
            fail_msg("eh_hash: %s", err);
    for (size_t t = 0; t < T; t++)
        for (int li = 0; li < 2; li++)
            for (int c = 0; c < HEADS; c++)
                out[(t * 2 + (size_t)li) * HEADS + (size_t)c] = (uint32_t)r[li][t * HEADS + (size_t)c];
}

static void test_derived_parameters(void **state)
{
    (void)state;
    eh_model *m = v41_model();
    assert_int_equal(m->compressed_vocab, 99092);
    assert_int_equal(m->half_bound, 46539438283891ull);
    static const int64_t mult[2][4] = {
        {76632096046245, 4839876093313, 35959672319349, 73987337458391},
        {67716810739261, 51510806800915, 30921347202721, 82619226485591}};
    for (int li = 0; li < 2; li++)
        assert_memory_equal(m->layers[li].multipliers, mult[li], sizeof mult[li]);
    assert_int_equal(m->layers[0].total_rows, 384006168);
    assert_int_equal(m->layers[1].total_rows, 384016682);
    assert_int_equal(m->layers[0].primes[0], 16000057);
    assert_int_equal(m->layers[1].primes[HEADS - 1], 16000889);
    eh_model_free(m);
}

static void test_public_vectors(void **state)
{
    (void)state;
    for (int simd_off = 0; simd_off < 2; simd_off++) {
        setenv("ENGRAM_HASH_NO_SIMD", simd_off ? "1" : "0", 1);
        eh_model *m = v41_model();
        uint32_t got[8 * 2 * HEADS];
        rows_v41(m, dsv41_f1_tokens, 8, got);
        assert_int_equal(got[0], 5702652);
        assert_memory_equal(got, dsv41_f1_rows, sizeof dsv41_f1_rows);
        rows_v41(m, dsv41_f2_tokens, 8, got);
        assert_memory_equal(got, dsv41_f2_rows, sizeof dsv41_f2_rows);
        rows_v41(m, dsv41_f3a_tokens, 4, got);
        assert_memory_equal(got, dsv41_f3_rows, sizeof dsv41_f3_rows);
        rows_v41(m, dsv41_f3b_tokens, 4, got);
        assert_memory_equal(got, dsv41_f3_rows, sizeof dsv41_f3_rows);
        eh_model_free(m);
    }
    unsetenv("ENGRAM_HASH_NO_SIMD");
}

/* F2 fed one token at a time, each step with the 3 tokens before it (DEAD
 * included) as history: the rows of the whole sequence. */
static void test_dead_across_decode_steps(void **state)
{
    (void)state;
    eh_model *m = v41_model();
    char err[256];
    uint64_t whole[8 * HEADS], step[HEADS];
    assert_int_equal(eh_hash(m, 0, dsv41_f2_tokens, 1, 8, NULL, whole, err, sizeof err), 0);
    for (int t = 0; t < 8; t++) {
        int64_t hist[N - 1];
        for (int k = 0; k < N - 1; k++) {
            int pos = t - (N - 1) + k;
            hist[k] = pos >= 0 ? dsv41_f2_tokens[pos] : 2;   /* raw pad before the start */
        }
        assert_int_equal(eh_hash(m, 0, &dsv41_f2_tokens[t], 1, 1, hist, step, err, sizeof err), 0);
        assert_memory_equal(step, whole + t * HEADS, sizeof step);
    }
    /* Without the rule (demo_v1), -1 is hashed as an id: other rows. */
    eh_config c = v41_config(dsv41_token_map, 10);
    c.dead_tokens = 0;
    eh_model *plain = eh_model_create(&c, err, sizeof err);
    assert_non_null(plain);
    uint64_t other[8 * HEADS];
    assert_int_equal(eh_hash(plain, 0, dsv41_f2_tokens, 1, 8, NULL, other, err, sizeof err), 0);
    assert_memory_not_equal(other + 3 * HEADS, whole + 3 * HEADS, HEADS * sizeof *whole);
    eh_model_free(plain);
    eh_model_free(m);
}

static uint64_t lcg = 0x9E3779B97F4A7C15ull;
static uint64_t rnd(void)
{
    lcg ^= lcg << 13;
    lcg ^= lcg >> 7;
    lcg ^= lcg << 17;
    return lcg;
}

static uint64_t naive_floor_mod(int64_t a, uint64_t d)
{
    __int128 r = (__int128)a % (__int128)d;
    return (uint64_t)(r < 0 ? r + (__int128)d : r);
}

/* The rule as the model card states it, position by position: walking back
 * from t, the first DEAD token (or, without history, the sequence start)
 * blocks, and every id from there on is the pad. */
static void naive_rows(const eh_model *m, int li, const int64_t *lut, const int64_t *tok, size_t T,
                       const int64_t *hist, uint64_t *out)
{
    const eh_layer *L = &m->layers[li];
    for (size_t t = 0; t < T; t++) {
        int64_t ids[N];
        int blocked = 0;
        for (int k = 0; k < N; k++) {
            long pos = (long)t - k;
            int64_t raw;
            if (pos >= 0)
                raw = tok[pos];
            else if (hist)
                raw = hist[N - 1 + pos];
            else
                blocked = 1, raw = 0;
            if (raw < 0)
                blocked = 1;
            ids[k] = blocked ? m->compressed_pad : lut[raw];
        }
        int64_t mix = 0;
        for (int n = 1; n <= N; n++) {
            mix ^= (int64_t)((uint64_t)ids[n - 1] * (uint64_t)L->multipliers[n - 1]);
            if (n < 2)
                continue;
            for (int j = 0; j < H; j++) {
                int h = (n - 2) * H + j;
                out[t * HEADS + (size_t)h] = naive_floor_mod(mix, L->primes[h]) + L->offsets[h];
            }
        }
    }
}

static void test_dead_rule_naive(void **state)
{
    (void)state;
    enum { LUT = 5000, T = 64 };
    static int64_t lut[LUT];
    for (int i = 0; i < LUT; i++)
        lut[i] = i % 3 == 0 ? i / 3 : (int64_t)(rnd() % 99092);   /* collisions, as a real map */
    lut[0] = 99091;
    for (int simd_off = 0; simd_off < 2; simd_off++) {
        setenv("ENGRAM_HASH_NO_SIMD", simd_off ? "1" : "0", 1);
        eh_config c = v41_config(lut, LUT);
        char err[256];
        eh_model *m = eh_model_create(&c, err, sizeof err);
        assert_non_null(m);
        for (int rep = 0; rep < 200; rep++) {
            int64_t tok[T];
            int dead_every = 2 + rep % 9;       /* from runs of DEADs to rare ones */
            for (int t = 0; t < T; t++)
                tok[t] = rnd() % (uint64_t)dead_every == 0 ? -1 - (int64_t)(rnd() % 3)
                                                           : (int64_t)(rnd() % LUT);
            int li = rep & 1;
            uint64_t got[T * HEADS], want[T * HEADS];
            assert_int_equal(eh_hash(m, li, tok, 1, T, NULL, got, err, sizeof err), 0);
            naive_rows(m, li, lut, tok, T, NULL, want);
            assert_memory_equal(got, want, sizeof got);
            /* split at s: the tail with the N - 1 tokens before it */
            size_t s = N - 1 + rnd() % (T - N);
            uint64_t tail[T * HEADS];
            assert_int_equal(eh_hash(m, li, tok + s, 1, T - s, tok + s - (N - 1), tail, err,
                                     sizeof err), 0);
            assert_memory_equal(tail, want + s * HEADS, (T - s) * HEADS * sizeof *tail);
            naive_rows(m, li, lut, tok + s, T - s, tok + s - (N - 1), got);
            assert_memory_equal(tail, got, (T - s) * HEADS * sizeof *tail);
        }
        eh_model_free(m);
    }
    unsetenv("ENGRAM_HASH_NO_SIMD");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_derived_parameters),
        cmocka_unit_test(test_public_vectors),
        cmocka_unit_test(test_dead_across_decode_steps),
        cmocka_unit_test(test_dead_rule_naive),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
