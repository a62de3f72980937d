/* test_hash.c: Engram N-gram hashing (common/engram_hash.h).
 *
 * Reference vectors (tests/data/engram-hash, produced by DeepSeek's
 * engram_demo_v1.py with numpy 1.24): numpy default_rng().integers with its
 * SeedSequence/PCG64 traces, and config2_small (multipliers, primes,
 * offsets, compressed ids, mixes, hash ids and global row ids of every
 * batch, negative-id edge batches included). Then a second config checked
 * against a naive re-implementation written here (trial-division primes, a
 * plain list for `seen`, __int128 % for the floor-mod), history
 * equivalence, the division-free floor-mod against %, and the exact error
 * messages. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <jansson.h>

#include "engram_hash.h"

#ifndef ENGRAM_TESTDATA_DIR
#error "ENGRAM_TESTDATA_DIR must name tests/data"
#endif

typedef unsigned __int128 u128;

/* ---- JSON helpers ---- */

static json_t *load(const char *name)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/engram-hash/%s", ENGRAM_TESTDATA_DIR, name);
    json_error_t e;
    json_t *j = json_load_file(path, 0, &e);
    if (!j)
        fail_msg("cannot load %s: %s (line %d)", path, e.text, e.line);
    return j;
}

static json_t *get(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    if (!v)
        fail_msg("missing JSON key %s", key);
    return v;
}

static int64_t jint(json_t *v)
{
    if (json_is_string(v))
        return strtoll(json_string_value(v), NULL, 10);
    assert_true(json_is_integer(v));
    return (int64_t)json_integer_value(v);
}

static uint64_t ju64(json_t *v)
{
    if (json_is_string(v))
        return strtoull(json_string_value(v), NULL, 10);
    assert_true(json_is_integer(v));
    return (uint64_t)json_integer_value(v);
}

static u128 ju128(json_t *v)
{
    const char *s = json_string_value(v);
    assert_non_null(s);
    u128 r = 0;
    for (; *s; s++)
        r = r * 10 + (u128)(*s - '0');
    return r;
}

/* Decimal string -> little-endian base-2^32 digits. */
static size_t dec_to_words(const char *s, uint32_t *w, size_t cap)
{
    size_t n = 1;
    w[0] = 0;
    for (; *s; s++) {
        uint64_t carry = (uint64_t)(*s - '0');
        for (size_t i = 0; i < n; i++) {
            uint64_t x = (uint64_t)w[i] * 10 + carry;
            w[i] = (uint32_t)x;
            carry = x >> 32;
        }
        if (carry) {
            assert_true(n < cap);
            w[n++] = (uint32_t)carry;
        }
    }
    return n;
}

/* ---- numpy default_rng ---- */

static void test_np_default_rng_vectors(void **state)
{
    json_t *root = load("numpy_default_rng_integers.json");
    json_t *cases = get(root, "cases");
    assert_int_equal(json_array_size(cases), 10);
    size_t i;
    json_t *c;
    int bigseed = 0;
    json_array_foreach(cases, i, c) {
        const char *seed = json_string_value(get(c, "seed"));
        uint64_t high = ju64(get(c, "high"));
        size_t size = (size_t)json_integer_value(get(c, "size"));
        json_t *want = get(c, "output_str");
        json_t *tr = get(c, "trace");
        assert_int_equal(json_array_size(want), size);

        uint32_t words[16];
        size_t nw = dec_to_words(seed, words, 16);
        json_t *ent = get(tr, "entropy_uint32_words");
        assert_int_equal(json_array_size(ent), nw);
        for (size_t k = 0; k < nw; k++)
            assert_true(words[k] == (uint32_t)ju64(json_array_get(ent, k)));

        int64_t out[64];
        np_rng_trace t;
        np_default_rng_integers_words(words, nw, high, size, out, &t);
        for (size_t k = 0; k < size; k++)
            if (out[k] != jint(json_array_get(want, k)))
                fail_msg("case %zu (seed %s, high %llu): output[%zu] = %lld, want %s", i, seed,
                         (unsigned long long)high, k, (long long)out[k],
                         json_string_value(json_array_get(want, k)));

        /* The plain uint64-seed entry point, where the seed fits. */
        if (nw <= 2) {
            uint64_t s64 = words[0] | (nw > 1 ? (uint64_t)words[1] << 32 : 0);
            int64_t out2[64];
            np_default_rng_integers(s64, high, size, out2);
            assert_memory_equal(out, out2, size * sizeof out[0]);
        } else {
            bigseed = 1;
        }

        json_t *pool = get(tr, "seedseq_pool_uint32");
        for (size_t k = 0; k < 4; k++)
            assert_true(t.pool[k] == (uint32_t)ju64(json_array_get(pool, k)));
        json_t *gs32 = get(tr, "generate_state_uint32x8");
        for (size_t k = 0; k < 8; k++)
            assert_true(t.state_u32[k] == (uint32_t)ju64(json_array_get(gs32, k)));
        json_t *gs64 = get(tr, "generate_state_uint64x4");
        for (size_t k = 0; k < 4; k++)
            assert_true(t.state_u64[k] == ju64(json_array_get(gs64, k)));
        u128 st = ju128(get(tr, "pcg64_initial_state_u128"));
        u128 inc = ju128(get(tr, "pcg64_initial_inc_u128"));
        assert_true(t.pcg_state_hi == (uint64_t)(st >> 64));
        assert_true(t.pcg_state_lo == (uint64_t)st);
        assert_true(t.pcg_inc_hi == (uint64_t)(inc >> 64));
        assert_true(t.pcg_inc_lo == (uint64_t)inc);
        json_t *f4 = get(c, "first_4_next64_str");
        for (size_t k = 0; k < 4; k++)
            assert_true(t.first_next64[k] == ju64(json_array_get(f4, k)));
    }
    assert_true(bigseed); /* the > 64-bit seed (SeedSequence's src >= 4 loop) was covered */
    json_decref(root);
}

/* ---- config2_small ---- */

typedef struct c2 {
    json_t *root;
    eh_config cfg;
    int64_t *lookup;
    eh_model *m;
} c2;

static void c2_load(c2 *c)
{
    memset(c, 0, sizeof *c);
    c->root = load("config2_small.json");
    json_t *cf = get(c->root, "config");
    c->cfg.max_ngram = (int)json_integer_value(get(cf, "max_ngram_size"));
    c->cfg.n_head_per_ngram = (int)json_integer_value(get(cf, "n_head_per_ngram"));
    json_t *vs = get(cf, "engram_vocab_size");
    for (size_t i = 0; i < json_array_size(vs); i++)
        c->cfg.vocab_sizes[i] = ju64(json_array_get(vs, i));
    json_t *li = get(cf, "layer_ids");
    c->cfg.n_layers = (int)json_array_size(li);
    for (int i = 0; i < c->cfg.n_layers; i++)
        c->cfg.layer_ids[i] = jint(json_array_get(li, (size_t)i));
    c->cfg.pad_id = jint(get(cf, "pad_id"));
    c->cfg.seed = ju64(get(cf, "seed"));
    json_t *lt = get(get(c->root, "compression"), "lookup_table");
    c->cfg.lookup_len = json_array_size(lt);
    c->lookup = malloc(c->cfg.lookup_len * sizeof *c->lookup);
    for (size_t i = 0; i < c->cfg.lookup_len; i++)
        c->lookup[i] = jint(json_array_get(lt, i));
    c->cfg.lookup = c->lookup;
    char err[256] = "";
    c->m = eh_model_create(&c->cfg, err, sizeof err);
    if (!c->m)
        fail_msg("eh_model_create: %s", err);
}

static void c2_free(c2 *c)
{
    eh_model_free(c->m);
    free(c->lookup);
    json_decref(c->root);
}

static void test_config2_derived(void **state)
{
    c2 c;
    c2_load(&c);
    const eh_model *m = c.m;
    json_t *d = get(c.root, "derived");
    assert_int_equal(m->compressed_pad, jint(get(d, "compressed_pad_id")));
    assert_int_equal(m->compressed_vocab, ju64(get(d, "tokenizer_vocab_size")));
    assert_int_equal(m->compressed_vocab, 600);
    assert_true(m->half_bound == ju64(get(d, "half_bound_str")));
    assert_int_equal(m->heads, jint(get(d, "heads_total")));
    json_t *layers = get(d, "layers");
    for (int i = 0; i < m->n_layers; i++) {
        const eh_layer *L = &m->layers[i];
        char key[32];
        snprintf(key, sizeof key, "%lld", (long long)L->layer_id);
        json_t *jl = get(layers, key);
        json_t *ms = get(jl, "multipliers_str");
        assert_int_equal(json_array_size(ms), m->max_ngram);
        for (int k = 0; k < m->max_ngram; k++)
            assert_true(L->multipliers[k] == jint(json_array_get(ms, (size_t)k)));
        json_t *pf = get(jl, "primes_flat");
        json_t *ho = get(jl, "head_offsets");
        assert_int_equal(json_array_size(pf), m->heads);
        for (int h = 0; h < m->heads; h++) {
            assert_true(L->primes[h] == ju64(json_array_get(pf, (size_t)h)));
            assert_true(L->offsets[h] == ju64(json_array_get(ho, (size_t)h)));
        }
        assert_true(L->total_rows == ju64(get(jl, "total_rows")));
        assert_int_equal(eh_layer_index(m, L->layer_id), i);
    }
    assert_int_equal(eh_layer_index(m, 99), -1);
    c2_free(&c);
}

/* Checks one batch (main or edge) for every layer: mixes, hash ids (rows
 * minus offsets) and global row ids, all B*T*heads values. */
static void check_batch(const c2 *c, json_t *batch, int *negative_mixes)
{
    const eh_model *m = c->m;
    const char *name = json_string_value(get(batch, "name"));
    size_t B = (size_t)json_integer_value(get(batch, "B"));
    size_t T = (size_t)json_integer_value(get(batch, "T"));
    json_t *in = json_object_get(batch, "input_ids_str");
    if (!in)
        in = get(batch, "input_ids");
    int64_t *tok = malloc(B * T * sizeof *tok);
    for (size_t b = 0; b < B; b++)
        for (size_t t = 0; t < T; t++)
            tok[b * T + t] = jint(json_array_get(json_array_get(in, b), t));
    const size_t H = (size_t)m->heads, O = (size_t)(m->max_ngram - 1);
    uint64_t *rows = malloc(B * T * H * sizeof *rows);
    int64_t *mix = malloc(B * T * O * sizeof *mix);
    for (int li = 0; li < m->n_layers; li++) {
        const eh_layer *L = &m->layers[li];
        char key[32];
        snprintf(key, sizeof key, "%lld", (long long)L->layer_id);
        char err[256] = "";
        if (eh_hash(m, li, tok, B, T, NULL, rows, err, sizeof err) != 0)
            fail_msg("%s layer %s: eh_hash: %s", name, key, err);
        assert_int_equal(eh_mixes(m, li, tok, B, T, NULL, mix, err, sizeof err), 0);
        json_t *jh = get(get(batch, "hash_ids"), key);
        json_t *jg = get(get(batch, "global_row_ids"), key);
        json_t *jm = get(get(batch, "mix_by_order_str"), key);
        for (size_t b = 0; b < B; b++)
            for (size_t t = 0; t < T; t++) {
                for (size_t h = 0; h < H; h++) {
                    uint64_t g = rows[(b * T + t) * H + h];
                    uint64_t wg = ju64(json_array_get(json_array_get(json_array_get(jg, b), t), h));
                    uint64_t wh = ju64(json_array_get(json_array_get(json_array_get(jh, b), t), h));
                    if (g != wg || g - L->offsets[h] != wh)
                        fail_msg("%s layer %s [%zu, %zu, head %zu]: row %llu (hash %llu), want "
                                 "row %llu (hash %llu)",
                                 name, key, b, t, h, (unsigned long long)g,
                                 (unsigned long long)(g - L->offsets[h]), (unsigned long long)wg,
                                 (unsigned long long)wh);
                    assert_true(g - L->offsets[h] < L->primes[h]);
                }
                for (size_t o = 0; o < O; o++) {
                    char nk[24];
                    snprintf(nk, sizeof nk, "%zu", o + 2);
                    int64_t want = jint(json_array_get(json_array_get(get(jm, nk), b), t));
                    int64_t got = mix[(b * T + t) * O + o];
                    if (got != want)
                        fail_msg("%s layer %s [%zu, %zu] order %zu: mix %lld, want %lld", name,
                                 key, b, t, o + 2, (long long)got, (long long)want);
                    if (got < 0)
                        (*negative_mixes)++;
                }
            }
    }
    free(tok);
    free(rows);
    free(mix);
}

static void test_config2_batches(void **state)
{
    c2 c;
    c2_load(&c);
    json_t *batches = get(c.root, "batches");
    assert_int_equal(json_array_size(batches), 21);
    size_t i;
    json_t *bt;
    int neg = 0;
    json_array_foreach(batches, i, bt) check_batch(&c, bt, &neg);
    assert_int_equal(neg, 0); /* valid ids never give a negative mix */
    json_t *edge = get(get(c.root, "edge_batches_negative_ids"), "batches");
    assert_int_equal(json_array_size(edge), 2);
    json_array_foreach(edge, i, bt) check_batch(&c, bt, &neg);
    assert_true(neg > 0); /* the floor-mod of negative mixes was exercised */
    c2_free(&c);
}

/* Multipliers given in the config instead of derived give the same rows. */
/* The batches' compressed_ids, through the code's own compression: a
 * 2-gram model on the same table with multipliers [1, 1] mixes
 * c[t] XOR c[t-1] (c[-1] the compressed pad), so the compressed ids unfold
 * from eh_mixes in one pass along each sequence. Negative ids of the edge
 * batches must pass through unchanged. */
static void test_config2_compressed_ids(void **state)
{
    c2 c;
    c2_load(&c);
    eh_config cfg = c.cfg;
    cfg.max_ngram = 2;
    cfg.n_layers = 1;
    cfg.has_multipliers[0] = 1;
    cfg.multipliers[0][0] = cfg.multipliers[0][1] = 1;
    char err[256] = "";
    eh_model *m = eh_model_create(&cfg, err, sizeof err);
    if (!m)
        fail_msg("eh_model_create: %s", err);
    json_t *sets[2] = {get(c.root, "batches"),
                       get(get(c.root, "edge_batches_negative_ids"), "batches")}, *batch;
    size_t i, checked = 0, negative = 0;
    for (int s = 0; s < 2; s++)
        json_array_foreach(sets[s], i, batch) {
            const char *name = json_string_value(get(batch, "name"));
            size_t B = (size_t)json_integer_value(get(batch, "B"));
            size_t T = (size_t)json_integer_value(get(batch, "T"));
            json_t *in = json_object_get(batch, "input_ids_str");
            json_t *want = json_object_get(batch, "compressed_ids_str");
            if (!in)
                in = get(batch, "input_ids");
            if (!want)
                want = get(batch, "compressed_ids");
            int64_t *tok = malloc(B * T * sizeof *tok), *mix = malloc(B * T * sizeof *mix);
            for (size_t b = 0; b < B; b++)
                for (size_t t = 0; t < T; t++)
                    tok[b * T + t] = jint(json_array_get(json_array_get(in, b), t));
            assert_int_equal(eh_mixes(m, 0, tok, B, T, NULL, mix, err, sizeof err), 0);
            for (size_t b = 0; b < B; b++) {
                int64_t prev = m->compressed_pad;
                for (size_t t = 0; t < T; t++) {
                    int64_t got = mix[b * T + t] ^ prev;
                    int64_t w = jint(json_array_get(json_array_get(want, b), t));
                    if (got != w)
                        fail_msg("%s [%zu, %zu]: id %lld compressed to %lld, want %lld", name, b, t,
                                 (long long)tok[b * T + t], (long long)got, (long long)w);
                    negative += got < 0;
                    checked++;
                    prev = got;
                }
            }
            free(tok);
            free(mix);
        }
    assert_int_equal(checked, 1046); /* sum of B * T over the 23 batches */
    assert_true(negative > 0); /* the pass-through of negative ids was exercised */
    eh_model_free(m);
    c2_free(&c);
}

static void test_config2_given_multipliers(void **state)
{
    c2 c;
    c2_load(&c);
    eh_config cfg = c.cfg;
    for (int i = 0; i < cfg.n_layers; i++) {
        cfg.has_multipliers[i] = 1;
        memcpy(cfg.multipliers[i], c.m->layers[i].multipliers, sizeof cfg.multipliers[i]);
    }
    cfg.seed = 999; /* ignored for layers with given multipliers */
    char err[256] = "";
    eh_model *m2 = eh_model_create(&cfg, err, sizeof err);
    assert_non_null(m2);
    int64_t tok[40];
    for (int t = 0; t < 40; t++)
        tok[t] = (t * 37) % 1000;
    uint64_t r1[40 * 8], r2[40 * 8];
    for (int li = 0; li < 2; li++) {
        assert_int_equal(eh_hash(c.m, li, tok, 2, 20, NULL, r1, err, sizeof err), 0);
        assert_int_equal(eh_hash(m2, li, tok, 2, 20, NULL, r2, err, sizeof err), 0);
        assert_memory_equal(r1, r2, sizeof r1);
    }
    eh_model_free(m2);
    c2_free(&c);
}

/* ---- history ---- */

static void test_history_equivalence(void **state)
{
    c2 c;
    c2_load(&c);
    const eh_model *m = c.m;
    const size_t H = (size_t)m->heads;
    /* Two rows of ten tokens, hashed whole ... */
    int64_t tok[2][10];
    for (int b = 0; b < 2; b++)
        for (int t = 0; t < 10; t++)
            tok[b][t] = (b * 389 + t * 613 + 5) % 1000;
    uint64_t whole[2 * 10 * 8];
    char err[256];
    /* ... and their last five with the two tokens before as history. */
    int64_t tail[2][5], hist[2][2];
    for (int b = 0; b < 2; b++) {
        memcpy(tail[b], &tok[b][5], sizeof tail[b]);
        hist[b][0] = tok[b][3];
        hist[b][1] = tok[b][4];
    }
    uint64_t part[2 * 5 * 8];
    for (int li = 0; li < m->n_layers; li++) {
        assert_int_equal(eh_hash(m, li, &tok[0][0], 2, 10, NULL, whole, err, sizeof err), 0);
        assert_int_equal(eh_hash(m, li, &tail[0][0], 2, 5, &hist[0][0], part, err, sizeof err),
                         0);
        for (int b = 0; b < 2; b++)
            assert_memory_equal(&part[(size_t)b * 5 * H], &whole[((size_t)b * 10 + 5) * H],
                                5 * H * sizeof part[0]);
    }
    /* A history of pads is the same as no history. */
    int64_t pads[2][2] = {{2, 2}, {2, 2}};
    uint64_t a[2 * 10 * 8], b2[2 * 10 * 8];
    assert_int_equal(eh_hash(m, 0, &tok[0][0], 2, 10, NULL, a, err, sizeof err), 0);
    assert_int_equal(eh_hash(m, 0, &tok[0][0], 2, 10, &pads[0][0], b2, err, sizeof err), 0);
    assert_memory_equal(a, b2, sizeof a);
    c2_free(&c);
}

/* ---- a second config, against a naive re-implementation ---- */

static int naive_is_prime(uint64_t n)
{
    if (n < 2)
        return 0;
    for (uint64_t d = 2; d * d <= n; d++)
        if (n % d == 0)
            return 0;
    return 1;
}

static uint64_t naive_floor_mod(int64_t a, uint64_t d)
{
    __int128 r = (__int128)a % (__int128)d;
    if (r < 0)
        r += d;
    return (uint64_t)r;
}

static uint64_t lcg_state = 88172645463325252ull;
static uint64_t rnd(void)
{
    lcg_state ^= lcg_state << 13;
    lcg_state ^= lcg_state >> 7;
    lcg_state ^= lcg_state << 17;
    return lcg_state;
}

static void test_other_config_naive(void **state)
{
    enum { N = 4, NH = 5, NL = 3, LUT = 5000, B = 3, T = 57 };
    static int64_t lut[LUT];
    for (int i = 0; i < LUT; i++)
        lut[i] = (int64_t)(rnd() % 3001); /* compressed vocab <= 3001 */
    lut[17] = 3000;                      /* make max(lookup) + 1 = 3001 exactly */
    eh_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.max_ngram = N;
    cfg.n_head_per_ngram = NH;
    /* Overlapping ranges, so that `seen` decides some primes. */
    cfg.vocab_sizes[0] = 10000;
    cfg.vocab_sizes[1] = 10007;
    cfg.vocab_sizes[2] = 9990;
    cfg.n_layers = NL;
    cfg.layer_ids[0] = 11;
    cfg.layer_ids[1] = 2;
    cfg.layer_ids[2] = 7;
    cfg.pad_id = 4999;
    cfg.seed = 12345;
    cfg.lookup = lut;
    cfg.lookup_len = LUT;
    char err[256] = "";
    eh_model *m = eh_model_create(&cfg, err, sizeof err);
    if (!m)
        fail_msg("%s", err);
    assert_int_equal(m->heads, (N - 1) * NH);
    assert_int_equal(m->compressed_vocab, 3001);
    assert_int_equal(m->compressed_pad, lut[4999]);
    uint64_t hb = ((uint64_t)INT64_MAX / 3001) / 2;
    assert_true(m->half_bound == hb);

    /* Primes: naive search with a plain list as `seen`. */
    uint64_t seen[NL * (N - 1) * NH];
    int nseen = 0;
    for (int i = 0; i < NL; i++) {
        const eh_layer *L = &m->layers[i];
        assert_int_equal(L->layer_id, cfg.layer_ids[i]);
        uint64_t off = 0;
        for (int n = 2; n <= N; n++) {
            uint64_t c = cfg.vocab_sizes[n - 2];
            for (int j = 0; j < NH; j++) {
                for (;; c++) {
                    int dup = 0;
                    for (int s = 0; s < nseen; s++)
                        dup |= seen[s] == c;
                    if (!dup && naive_is_prime(c))
                        break;
                }
                int h = (n - 2) * NH + j;
                assert_true(L->primes[h] == c);
                assert_true(L->primes[h] >= cfg.vocab_sizes[n - 2]);
                if (j > 0)
                    assert_true(L->primes[h] > L->primes[h - 1]);
                assert_true(L->offsets[h] == off);
                off += c;
                seen[nseen++] = c++;
            }
        }
        assert_true(L->total_rows == off);
        /* Multipliers: odd, 2 * r + 1 with r < half_bound, from
         * default_rng(seed + 10007 * layer_id). */
        int64_t r[N];
        np_default_rng_integers(cfg.seed + 10007 * (uint64_t)L->layer_id, hb, N, r);
        for (int k = 0; k < N; k++) {
            assert_true(L->multipliers[k] & 1);
            assert_true((uint64_t)L->multipliers[k] < 2 * hb + 1);
            assert_true(L->multipliers[k] == 2 * r[k] + 1);
        }
    }
    for (int a = 0; a < nseen; a++)
        for (int b = a + 1; b < nseen; b++)
            assert_true(seen[a] != seen[b]);

    /* Rows on random tokens (some negative, some huge negative), with and
     * without history, against naive loops. */
    static int64_t tok[B * T], hist[B * (N - 1)];
    static uint64_t rows[B * T * (N - 1) * NH];
    for (int rep = 0; rep < 20; rep++) {
        for (int i = 0; i < B * T; i++) {
            uint64_t x = rnd();
            tok[i] = (x & 15) == 0 ? -(int64_t)(x >> 20) : (x & 15) == 1 ? -1 : (int64_t)(x % LUT);
        }
        for (int i = 0; i < B * (N - 1); i++)
            hist[i] = (int64_t)(rnd() % LUT);
        int use_hist = rep & 1;
        for (int li = 0; li < NL; li++) {
            const eh_layer *L = &m->layers[li];
            assert_int_equal(
                eh_hash(m, li, tok, B, T, use_hist ? hist : NULL, rows, err, sizeof err), 0);
            for (int b = 0; b < B; b++)
                for (int t = 0; t < T; t++) {
                    uint64_t off = 0;
                    for (int n = 2; n <= N; n++) {
                        int64_t mix = 0;
                        for (int k = 0; k < n; k++) {
                            int64_t raw;
                            if (t - k >= 0)
                                raw = tok[b * T + t - k];
                            else if (use_hist)
                                raw = hist[b * (N - 1) + (N - 1) + (t - k)];
                            else
                                raw = cfg.pad_id;
                            int64_t cid = raw < 0 ? raw : lut[raw];
                            mix ^= (int64_t)((uint64_t)cid * (uint64_t)L->multipliers[k]);
                        }
                        for (int j = 0; j < NH; j++) {
                            int h = (n - 2) * NH + j;
                            uint64_t want = naive_floor_mod(mix, L->primes[h]) + off;
                            uint64_t got = rows[((size_t)b * T + t) * (N - 1) * NH + h];
                            if (got != want)
                                fail_msg("rep %d layer %d [%d, %d] head %d: %llu want %llu", rep,
                                         li, b, t, h, (unsigned long long)got,
                                         (unsigned long long)want);
                            assert_true(got >= L->offsets[h] && got < L->offsets[h] + L->primes[h]);
                            off += L->primes[h];
                        }
                    }
                }
        }
    }

    /* History with N = 4: [t0..t19] whole == [t7..t19] with [t4, t5, t6]. */
    int64_t whole_tok[20], tail_tok[13], h3[3] = {0};
    for (int t = 0; t < 20; t++)
        whole_tok[t] = (int64_t)(rnd() % LUT);
    memcpy(tail_tok, whole_tok + 7, sizeof tail_tok);
    memcpy(h3, whole_tok + 4, sizeof h3);
    uint64_t w[20 * 15], p[13 * 15];
    assert_int_equal(eh_hash(m, 1, whole_tok, 1, 20, NULL, w, err, sizeof err), 0);
    assert_int_equal(eh_hash(m, 1, tail_tok, 1, 13, h3, p, err, sizeof err), 0);
    assert_memory_equal(p, w + 7 * 15, sizeof p);
    eh_model_free(m);
}

/* Rows of eh_hash for random tokens (extreme negative ids included) and
 * random history, against naive loops; with both eh_hash paths (AVX-512
 * where the CPU and the primes allow it, scalar reciprocal otherwise). */
static void naive_rows_check(eh_config cfg, int reps)
{
    const size_t B = 3, T = 41;
    const int N = cfg.max_ngram;
    int64_t *tok = malloc(B * T * sizeof *tok), hist[3 * EH_MAX_NGRAM];
    for (int simd_off = 0; simd_off < 2; simd_off++) {
        setenv("ENGRAM_HASH_NO_SIMD", simd_off ? "1" : "0", 1);
        char err[256] = "";
        eh_model *m = eh_model_create(&cfg, err, sizeof err);
        if (!m)
            fail_msg("%s", err);
        if (simd_off)
            assert_int_equal(eh_simd_active(m), 0);
        else
            print_message("    max_ngram %d, %d heads/order, first prime %llu: simd path %s\n",
                          N, cfg.n_head_per_ngram, (unsigned long long)m->layers[0].primes[0],
                          eh_simd_active(m) ? "on" : "off (CPU or primes < 4096)");
        const size_t heads = (size_t)m->heads;
        uint64_t *rows = malloc(B * T * heads * sizeof *rows);
        for (int rep = 0; rep < reps; rep++) {
            static const int64_t extreme[] = {INT64_MIN, INT64_MIN + 1, -1, -2,
                                              -(INT64_C(1) << 62), -(INT64_C(1) << 31)};
            for (size_t i = 0; i < B * T; i++) {
                uint64_t x = rnd();
                tok[i] = (x & 15) == 0   ? -(int64_t)(x >> 20)
                         : (x & 15) == 1 ? extreme[(x >> 8) % 6]
                                         : (int64_t)((x >> 8) % cfg.lookup_len);
            }
            for (size_t i = 0; i < B * (size_t)(N - 1); i++)
                hist[i] = (int64_t)(rnd() % cfg.lookup_len);
            int use_hist = rep & 1;
            for (int li = 0; li < m->n_layers; li++) {
                const eh_layer *L = &m->layers[li];
                if (eh_hash(m, li, tok, B, T, use_hist ? hist : NULL, rows, err, sizeof err) != 0)
                    fail_msg("eh_hash: %s", err);
                for (size_t b = 0; b < B; b++)
                    for (size_t t = 0; t < T; t++)
                        for (int n = 2; n <= N; n++) {
                            int64_t mix = 0;
                            for (int k = 0; k < n; k++) {
                                long pos = (long)t - k;
                                int64_t raw = pos >= 0 ? tok[b * T + (size_t)pos]
                                              : use_hist ? hist[b * (size_t)(N - 1) + (size_t)(N - 1 + pos)]
                                                         : cfg.pad_id;
                                int64_t cid = raw < 0 ? raw : cfg.lookup[raw];
                                mix ^= (int64_t)((uint64_t)cid * (uint64_t)L->multipliers[k]);
                            }
                            for (int j = 0; j < cfg.n_head_per_ngram; j++) {
                                size_t h = (size_t)(n - 2) * (size_t)cfg.n_head_per_ngram + (size_t)j;
                                uint64_t want = naive_floor_mod(mix, L->primes[h]) + L->offsets[h];
                                uint64_t got = rows[(b * T + t) * heads + h];
                                if (got != want)
                                    fail_msg("simd_off %d layer %d [%zu, %zu] head %zu (mix %lld): "
                                             "%llu want %llu",
                                             simd_off, li, b, t, h, (long long)mix,
                                             (unsigned long long)got, (unsigned long long)want);
                            }
                        }
            }
        }
        free(rows);
        eh_model_free(m);
    }
    unsetenv("ENGRAM_HASH_NO_SIMD");
    free(tok);
}

static void test_naive_rows_shapes(void **state)
{
    static int64_t lut[129280];
    for (int i = 0; i < 129280; i++)
        lut[i] = i;
    eh_config c;
    memset(&c, 0, sizeof c);
    /* The reference demo's shape: 3-grams x 8 heads, full 8-lane vectors. */
    c.max_ngram = 3;
    c.n_head_per_ngram = 8;
    c.vocab_sizes[0] = c.vocab_sizes[1] = 646400;
    c.n_layers = 2;
    c.layer_ids[0] = 1;
    c.layer_ids[1] = 15;
    c.pad_id = 2;
    c.lookup = lut;
    c.lookup_len = 129280;
    naive_rows_check(c, 6);
    /* Masked tails (3 and 11 heads), primes from 4096 to beyond 2^61. */
    c.max_ngram = 4;
    c.n_head_per_ngram = 3;
    c.vocab_sizes[0] = 4096;
    c.vocab_sizes[1] = UINT64_C(1) << 40;
    c.vocab_sizes[2] = (UINT64_C(1) << 61) + 12345;
    c.n_layers = 1;
    c.seed = 77;
    naive_rows_check(c, 6);
    c.n_head_per_ngram = 11;
    c.vocab_sizes[1] = 70000;
    c.vocab_sizes[2] = 1u << 30;
    naive_rows_check(c, 4);
    /* Small primes (scalar path only). */
    c.max_ngram = 2;
    c.n_head_per_ngram = 8;
    c.vocab_sizes[0] = 2;
    naive_rows_check(c, 4);
}

/* ---- floor-mod and primality ---- */

static void test_floor_mod_exact(void **state)
{
    uint64_t ds[64];
    int nd = 0;
    ds[nd++] = 2;
    ds[nd++] = 3;
    ds[nd++] = 646403;
    ds[nd++] = 1ull << 32;
    ds[nd++] = (1ull << 62);
    ds[nd++] = (uint64_t)INT64_MAX; /* 2^63 - 1 */
    ds[nd++] = 4294967291ull;       /* largest 32-bit prime */
    ds[nd++] = 2305843009213693951ull; /* 2^61 - 1 */
    while (nd < 64) {
        uint64_t x = rnd();
        int bits = 2 + (int)(rnd() % 62); /* 2..63 bits */
        x >>= 64 - bits;
        ds[nd++] = x < 2 ? 2 : x;
    }
    for (int i = 0; i < nd; i++) {
        eh_divisor dv;
        eh_divisor_init(&dv, ds[i]);
        int64_t edge[] = {0, 1, -1, INT64_MAX, INT64_MIN, INT64_MIN + 1,
                          (int64_t)ds[i], -(int64_t)ds[i], (int64_t)ds[i] - 1,
                          1 - (int64_t)ds[i], (int64_t)(ds[i] + 1)};
        for (size_t e = 0; e < sizeof edge / sizeof edge[0]; e++)
            assert_true(eh_floor_mod(edge[e], &dv) == naive_floor_mod(edge[e], ds[i]));
        for (int k = 0; k < 20000; k++) {
            uint64_t x = rnd();
            int64_t a = (int64_t)(x >> (rnd() % 64));
            if (k & 1)
                a = -a;
            uint64_t got = eh_floor_mod(a, &dv), want = naive_floor_mod(a, ds[i]);
            if (got != want)
                fail_msg("floor_mod(%lld, %llu) = %llu, want %llu", (long long)a,
                         (unsigned long long)ds[i], (unsigned long long)got,
                         (unsigned long long)want);
            /* and the unsigned form on the whole 64-bit range */
            assert_true(eh_mod_u64(x, &dv) == x % ds[i]);
        }
    }
}

static void test_is_prime(void **state)
{
    for (uint64_t n = 0; n < 200000; n++)
        if (eh_is_prime(n) != naive_is_prime(n))
            fail_msg("eh_is_prime(%llu)", (unsigned long long)n);
    assert_true(eh_is_prime(2305843009213693951ull));  /* 2^61 - 1 */
    assert_true(eh_is_prime(18446744073709551557ull)); /* 2^64 - 59 */
    assert_true(eh_is_prime(4294967291ull));
    assert_false(eh_is_prime(3215031751ull));          /* strong pseudoprime to 2, 3, 5, 7 */
    assert_false(eh_is_prime(3825123056546413051ull)); /* ... to bases up to 23 */
    assert_false(eh_is_prime(4294967291ull * 4294967279ull));
    assert_false(eh_is_prime(UINT64_MAX));
    for (int k = 0; k < 300; k++) { /* random 32-bit-ish candidates against trial division */
        uint64_t n = rnd() >> 34;
        assert_int_equal(eh_is_prime(n), naive_is_prime(n));
    }
}

/* ---- errors ---- */

static void test_bad_tokens(void **state)
{
    c2 c;
    c2_load(&c);
    char err[256] = "";
    int64_t tok[2][4] = {{1, 2, 3, 1000}, {4, 5, 6, 7}};
    uint64_t rows[2 * 4 * 8];
    assert_int_equal(eh_hash(c.m, 0, &tok[0][0], 2, 4, NULL, rows, err, sizeof err), -1);
    assert_string_equal(err, "token id 1000 at [0, 3] is beyond the compression table (1000 ids)");
    tok[0][3] = 999;
    tok[1][1] = INT64_MAX;
    assert_int_equal(eh_hash(c.m, 1, &tok[0][0], 2, 4, NULL, rows, err, sizeof err), -1);
    assert_string_equal(err, "token id 9223372036854775807 at [1, 1] is beyond the compression "
                             "table (1000 ids)");
    int64_t mix[2 * 4 * 2];
    err[0] = 0;
    assert_int_equal(eh_mixes(c.m, 1, &tok[0][0], 2, 4, NULL, mix, err, sizeof err), -1);
    assert_string_equal(err, "token id 9223372036854775807 at [1, 1] is beyond the compression "
                             "table (1000 ids)");
    tok[1][1] = 5;
    int64_t hist[2][2] = {{0, 1}, {2, 5000}};
    assert_int_equal(eh_hash(c.m, 0, &tok[0][0], 2, 4, &hist[0][0], rows, err, sizeof err), -1);
    assert_string_equal(err,
                        "history token id 5000 at [1, 1] is beyond the compression table (1000 ids)");
    hist[1][1] = -7; /* negative ids pass through, in history too */
    assert_int_equal(eh_hash(c.m, 0, &tok[0][0], 2, 4, &hist[0][0], rows, err, sizeof err), 0);
    assert_int_equal(eh_hash(c.m, 2, &tok[0][0], 2, 4, NULL, rows, err, sizeof err), -1);
    assert_string_equal(err, "layer index 2 is out of range 0..1");
    /* Empty input is fine. */
    assert_int_equal(eh_hash(c.m, 0, &tok[0][0], 0, 4, NULL, rows, err, sizeof err), 0);
    assert_int_equal(eh_hash(c.m, 0, &tok[0][0], 2, 0, NULL, rows, err, sizeof err), 0);
    c2_free(&c);
}

static void expect_create_error(const eh_config *cfg, const char *want)
{
    char err[256] = "";
    eh_model *m = eh_model_create(cfg, err, sizeof err);
    if (m) {
        eh_model_free(m);
        fail_msg("created a model, want error \"%s\"", want);
    }
    assert_string_equal(err, want);
}

static void test_create_errors(void **state)
{
    static const int64_t lut[4] = {0, 1, 1, 2};
    static const int64_t badlut[3] = {0, -1, 2};
    eh_config good;
    memset(&good, 0, sizeof good);
    good.max_ngram = 3;
    good.n_head_per_ngram = 2;
    good.vocab_sizes[0] = 100;
    good.vocab_sizes[1] = 200;
    good.n_layers = 2;
    good.layer_ids[0] = 1;
    good.layer_ids[1] = 15;
    good.pad_id = 2;
    good.lookup = lut;
    good.lookup_len = 4;
    char err[256];
    eh_model *m = eh_model_create(&good, err, sizeof err);
    assert_non_null(m);
    assert_int_equal(m->compressed_vocab, 3);
    assert_int_equal(m->compressed_pad, 1);
    eh_model_free(m);

    eh_config c = good;
    c.max_ngram = 1;
    expect_create_error(&c, "max_ngram 1 is out of range 2..8");
    c.max_ngram = 9;
    expect_create_error(&c, "max_ngram 9 is out of range 2..8");
    c = good;
    c.n_head_per_ngram = 0;
    expect_create_error(&c, "n_head_per_ngram 0 must be at least 1");
    c.n_head_per_ngram = 129;
    expect_create_error(&c, "(max_ngram - 1) * n_head_per_ngram = 258 heads exceeds the limit of 256");
    c = good;
    c.n_layers = 0;
    expect_create_error(&c, "n_layers 0 is out of range 1..64");
    c.n_layers = 65;
    expect_create_error(&c, "n_layers 65 is out of range 1..64");
    c = good;
    c.n_layers = 3;
    c.layer_ids[2] = 1;
    expect_create_error(&c, "layer id 1 appears twice (layer_ids[0] and layer_ids[2])");
    c = good;
    c.layer_ids[1] = -3;
    expect_create_error(&c, "layer id -3 (layer_ids[1]) is negative; the multiplier seed seed + "
                            "10007 * layer_id must not be");
    c = good;
    c.vocab_sizes[1] = 1;
    expect_create_error(&c, "engram_vocab_size[1] (order 3) = 1 is out of range 2..2^62");
    c = good;
    c.lookup_len = 0;
    expect_create_error(&c, "the compression table is empty");
    c = good;
    c.pad_id = 4;
    expect_create_error(&c, "pad_id 4 is outside the compression table (4 ids)");
    c.pad_id = -1;
    expect_create_error(&c, "pad_id -1 is outside the compression table (4 ids)");
    c = good;
    c.lookup = badlut;
    c.lookup_len = 3;
    expect_create_error(&c, "compression table maps id 1 to -1; values must be >= 0");
    c = good;
    c.has_multipliers[1] = 1;
    c.multipliers[1][0] = 3;
    c.multipliers[1][1] = 4;
    c.multipliers[1][2] = 5;
    expect_create_error(&c, "multipliers[1][1] (layer 15) = 4 must be odd and in (0, 2^63)");
    c.multipliers[1][1] = -5;
    expect_create_error(&c, "multipliers[1][1] (layer 15) = -5 must be odd and in (0, 2^63)");
    /* A huge vocab still works (primes near 2^62), and an overflow of the
     * rows is reported. */
    c = good;
    c.vocab_sizes[0] = 1ull << 62;
    c.vocab_sizes[1] = 1000;
    c.n_head_per_ngram = 1;
    c.n_layers = 1;
    m = eh_model_create(&c, err, sizeof err);
    assert_non_null(m);
    assert_true(m->layers[0].primes[0] >= (1ull << 62) && eh_is_prime(m->layers[0].primes[0]));
    eh_model_free(m);
    c.n_head_per_ngram = 2;
    expect_create_error(&c, "layer 1: the table's rows (sum of the primes) exceed 2^63");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_np_default_rng_vectors),
        cmocka_unit_test(test_config2_derived),
        cmocka_unit_test(test_config2_batches),
        cmocka_unit_test(test_config2_compressed_ids),
        cmocka_unit_test(test_config2_given_multipliers),
        cmocka_unit_test(test_history_equivalence),
        cmocka_unit_test(test_other_config_naive),
        cmocka_unit_test(test_naive_rows_shapes),
        cmocka_unit_test(test_floor_mod_exact),
        cmocka_unit_test(test_is_prime),
        cmocka_unit_test(test_bad_tokens),
        cmocka_unit_test(test_create_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
