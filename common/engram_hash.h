/* engram_hash.h: DeepSeek Engram's N-gram hashing, reference-exact.
 *
 * Turns token ids into the global row ids a model trained with the
 * reference code (engram_demo_v1.py) reads, as specified step by step in
 * tests/data/engram-hash/README.md:
 *   compression (lookup table; negative ids pass through), per-layer odd
 *   multipliers drawn with numpy's default_rng(seed + 10007 * layer_id)
 *   .integers(0, half_bound, max_ngram), distinct primes from one `seen` set
 *   across layers and orders, XOR-of-products mixing in wrapping int64,
 *   floor-mod by each head's prime, plus the head's row offset.
 *
 * An eh_model is immutable after eh_model_create and may be shared by any
 * number of threads. */
#ifndef ENGRAM_COMMON_ENGRAM_HASH_H
#define ENGRAM_COMMON_ENGRAM_HASH_H

#include <stddef.h>
#include <stdint.h>

#define EH_MAX_NGRAM 8         /* max_ngram_size: 2..EH_MAX_NGRAM */
#define EH_MAX_HEADS 256       /* (max_ngram - 1) * n_head_per_ngram */
#define EH_MAX_LAYERS 64

/* What the reference's EngramConfig (plus the compression table) says. */
typedef struct eh_config {
    int max_ngram;                     /* >= 2 */
    int n_head_per_ngram;              /* >= 1 */
    uint64_t vocab_sizes[EH_MAX_NGRAM];/* engram_vocab_size, max_ngram - 1 entries */
    int n_layers;
    int64_t layer_ids[EH_MAX_LAYERS];
    int64_t pad_id;                    /* raw id; compressed like any other */
    uint64_t seed;
    const int64_t *lookup;             /* compression table: raw id -> compressed id */
    size_t lookup_len;                 /* number of raw ids it covers */
    /* Optional per-layer multipliers (index = position in layer_ids), used
     * instead of the derived ones when has_multipliers[i] is set: exactly
     * max_ngram odd values in (0, 2^63). */
    int has_multipliers[EH_MAX_LAYERS];
    int64_t multipliers[EH_MAX_LAYERS][EH_MAX_NGRAM];
    /* DeepSeek-V4.1's rule: a negative raw id is DEAD (an image token, -1)
     * instead of an id hashed as it is. A DEAD token blocks the look-back:
     * at position t, the id at t - j is the pad once any token at t - j'
     * (j' <= j) is DEAD, so a DEAD token at t pads every id of t. 0: the
     * demo_v1 rule (negative ids pass through compression). */
    int dead_tokens;
} eh_config;

typedef struct eh_layer {
    int64_t layer_id;
    int64_t multipliers[EH_MAX_NGRAM]; /* max_ngram values; order n uses [0, n) */
    uint64_t primes[EH_MAX_HEADS];     /* head h = (n - 2) * n_head + j */
    uint64_t offsets[EH_MAX_HEADS];    /* sum of the primes before head h */
    uint64_t total_rows;               /* sum of all primes: the table's rows */
} eh_layer;

typedef struct eh_model {
    int max_ngram;
    int n_head_per_ngram;
    int heads;                         /* (max_ngram - 1) * n_head_per_ngram */
    int64_t compressed_pad;
    uint64_t compressed_vocab;         /* max(lookup) + 1 */
    uint64_t half_bound;
    int64_t *lookup;                   /* owned copy */
    size_t lookup_len;
    int dead_tokens;                   /* eh_config.dead_tokens */
    int n_layers;
    eh_layer layers[EH_MAX_LAYERS];
} eh_model;

/* Derives multipliers, primes and offsets. Returns NULL and writes a
 * message naming the bad value into err when the config is invalid. Free
 * with eh_model_free. */
eh_model *eh_model_create(const eh_config *cfg, char *err, size_t errlen);
void eh_model_free(eh_model *m);

/* Index of layer_id in the model, or -1. */
int eh_layer_index(const eh_model *m, int64_t layer_id);

/* Hashes tokens [B, T] (raw ids, row-major) for layer index `li` into
 * out[B, T, heads] global row ids (row-major; hash + head offset).
 *
 * history: NULL, or [B, max_ngram - 1] raw ids that precede each sequence,
 * oldest first (a decode step passes the previous tokens; positions before
 * the start of a text hold pad_id). Without history, positions before t = 0
 * are the pad, as in the reference. With dead_tokens, a negative id in
 * tokens or history is DEAD (see eh_config).
 *
 * Returns 0, or -1 with err naming the first bad token (an id at or beyond
 * the compression table) and its [b, t] position. Thread-safe. */
int eh_hash(const eh_model *m, int li, const int64_t *tokens, size_t B, size_t T,
            const int64_t *history, uint64_t *out, char *err, size_t errlen);

/* numpy.random.default_rng(seed).integers(0, high, size=n, dtype=int64):
 * SeedSequence -> PCG64 -> Lemire, bit-exact with numpy >= 1.17. high >= 1. */
void np_default_rng_integers(uint64_t seed, uint64_t high, size_t n, int64_t *out);

/* ---- Added for tests and callers that need the pieces (declarations
 * above are the contract; these only expose its intermediate steps). ---- */

/* What numpy's SeedSequence/PCG64 computed on the way (for the test vectors'
 * traces). u128 values are split into hi/lo 64-bit halves. */
typedef struct np_rng_trace {
    uint32_t pool[4];          /* SeedSequence pool after mixing */
    uint32_t state_u32[8];     /* generate_state(8, uint32) */
    uint64_t state_u64[4];     /* the same as 4 x uint64 */
    uint64_t pcg_state_hi, pcg_state_lo; /* PCG64 state after seeding */
    uint64_t pcg_inc_hi, pcg_inc_lo;
    uint64_t first_next64[4];  /* the first four next64() of that state */
} np_rng_trace;

/* As np_default_rng_integers, for a seed of any size given as its
 * little-endian base-2^32 digits (n_words 0 means seed 0); fills *trace when
 * trace is not NULL. */
void np_default_rng_integers_words(const uint32_t *words, size_t n_words, uint64_t high,
                                   size_t n, int64_t *out, np_rng_trace *trace);

/* The mixes eh_hash reduces: out[B, T, max_ngram - 1], entry n - 2 holds
 * mix_n (wrapping int64). Same inputs, errors and messages as eh_hash. */
int eh_mixes(const eh_model *m, int li, const int64_t *tokens, size_t B, size_t T,
             const int64_t *history, int64_t *out, char *err, size_t errlen);

/* The division-free floor-mod eh_hash uses: a precomputed reciprocal per
 * divisor. eh_floor_mod(a, d) == ((a % d) + d) % d for every int64 a and
 * every d in [2, 2^63). */
typedef struct eh_divisor {
    uint64_t d;
    uint64_t recip;            /* floor(2^64 / d) */
    uint64_t r64;              /* 2^64 mod d */
} eh_divisor;

void eh_divisor_init(eh_divisor *dv, uint64_t d);

static inline uint64_t eh_mod_u64(uint64_t a, const eh_divisor *dv)
{
    /* q = floor(a * recip / 2^64) is floor(a / d) or one less. */
    uint64_t q = (uint64_t)(((unsigned __int128)a * dv->recip) >> 64);
    uint64_t r = a - q * dv->d;
    return r >= dv->d ? r - dv->d : r;
}

static inline uint64_t eh_floor_mod(int64_t a, const eh_divisor *dv)
{
    uint64_t r = eh_mod_u64((uint64_t)a, dv);
    if (a < 0) /* a = (uint64)a - 2^64 */
        r = r >= dv->r64 ? r - dv->r64 : r + dv->d - dv->r64;
    return r;
}

/* 1 when eh_hash uses its AVX-512 path for this model (x86-64 with
 * AVX-512F/DQ, every prime >= 4096, and ENGRAM_HASH_NO_SIMD unset or "0" at
 * eh_model_create); 0 when it uses the scalar reciprocal path. Both give
 * identical results. */
int eh_simd_active(const eh_model *m);

/* Deterministic Miller-Rabin, exact for every 64-bit n. */
int eh_is_prime(uint64_t n);

#endif
