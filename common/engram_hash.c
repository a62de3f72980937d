/* engram_hash.c: DeepSeek Engram's N-gram hashing, reference-exact (see
 * engram_hash.h and tests/data/engram-hash/README.md).
 *
 * Speed: each token is compressed once (a sliding window of the last
 * max_ngram compressed ids, so no per-call allocation), the mixes are built
 * incrementally across orders (mix_n = mix_{n-1} ^ tok_{n-1} * m[n-1]), and
 * the floor-mod by each head's prime uses a reciprocal precomputed at model
 * creation (eh_divisor: one 64x64->128 multiply, one multiply, one
 * conditional subtract) instead of a 64-bit division. */
#include "engram_hash.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef unsigned __int128 u128;

/* The public eh_model plus what eh_hash needs and the header does not say.
 * eh_model_create hands out &priv->pub; eh_hash and eh_mixes need a model
 * that came from eh_model_create (not a by-value copy). */
typedef struct eh_model_priv {
    eh_model pub;
    eh_divisor div[EH_MAX_LAYERS][EH_MAX_HEADS];
    /* For the AVX-512 path: 1/p per head as a double, and whether every
     * prime is >= EH_SIMD_MIN_PRIME (where its quotient estimate is exact
     * to within one) and the CPU has AVX-512F/DQ. */
    double inv[EH_MAX_LAYERS][EH_MAX_HEADS];
    int simd;
} eh_model_priv;

#define EH_SIMD_MIN_PRIME 4096

#if defined(__x86_64__) && defined(__GNUC__) && !defined(EH_NO_SIMD)
#define EH_HAVE_AVX512 1
#include <immintrin.h>
#endif

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---- primes ---- */

static uint64_t mulmod(uint64_t a, uint64_t b, uint64_t n)
{
    return (uint64_t)((u128)a * b % n);
}

static uint64_t powmod(uint64_t a, uint64_t e, uint64_t n)
{
    uint64_t r = 1;
    a %= n;
    while (e) {
        if (e & 1)
            r = mulmod(r, a, n);
        a = mulmod(a, a, n);
        e >>= 1;
    }
    return r;
}

int eh_is_prime(uint64_t n)
{
    static const uint64_t small[] = {2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37};
    if (n < 2)
        return 0;
    for (size_t i = 0; i < sizeof small / sizeof small[0]; i++) {
        if (n == small[i])
            return 1;
        if (n % small[i] == 0)
            return 0;
    }
    if (n < 41 * 41)
        return 1;
    uint64_t d = n - 1;
    int s = 0;
    while ((d & 1) == 0) {
        d >>= 1;
        s++;
    }
    /* These 12 bases are a deterministic witness set for n < 3.3e24. */
    for (size_t i = 0; i < sizeof small / sizeof small[0]; i++) {
        uint64_t x = powmod(small[i], d, n);
        if (x == 1 || x == n - 1)
            continue;
        int composite = 1;
        for (int r = 1; r < s; r++) {
            x = mulmod(x, x, n);
            if (x == n - 1) {
                composite = 0;
                break;
            }
        }
        if (composite)
            return 0;
    }
    return 1;
}

/* The `seen` set: open addressing over at most EH_MAX_LAYERS * EH_MAX_HEADS
 * primes (0 marks an empty slot; 0 is never prime). */
#define SEEN_SLOTS (2 * EH_MAX_LAYERS * EH_MAX_HEADS)

static size_t seen_slot(const uint64_t *set, uint64_t p)
{
    size_t i = (size_t)((p * 0x9E3779B97F4A7C15ull) >> 49) & (SEEN_SLOTS - 1);
    while (set[i] != 0 && set[i] != p)
        i = (i + 1) & (SEEN_SLOTS - 1);
    return i;
}

/* Smallest prime >= from that is not in seen. */
static uint64_t next_prime(uint64_t from, const uint64_t *seen)
{
    uint64_t c = from;
    if (c <= 2) {
        if (seen[seen_slot(seen, 2)] != 2)
            return 2;
        c = 3;
    }
    if ((c & 1) == 0)
        c++;
    for (;; c += 2)
        if (eh_is_prime(c) && seen[seen_slot(seen, c)] != c)
            return c;
}

/* ---- divisors ---- */

void eh_divisor_init(eh_divisor *dv, uint64_t d)
{
    dv->d = d;
    /* floor(2^64 / d) for d >= 2: (2^64 - 1) / d, plus one when d divides
     * 2^64 exactly (powers of two). */
    uint64_t q = UINT64_MAX / d;
    uint64_t r = UINT64_MAX - q * d; /* (2^64 - 1) mod d */
    if (r == d - 1)
        q++, r = 0;
    else
        r++;
    dv->recip = q;
    dv->r64 = r; /* 2^64 mod d */
}

/* ---- model ---- */

eh_model *eh_model_create(const eh_config *cfg, char *err, size_t errlen)
{
    if (!cfg) {
        set_err(err, errlen, "no config");
        return NULL;
    }
    if (cfg->max_ngram < 2 || cfg->max_ngram > EH_MAX_NGRAM) {
        set_err(err, errlen, "max_ngram %d is out of range 2..%d", cfg->max_ngram, EH_MAX_NGRAM);
        return NULL;
    }
    if (cfg->n_head_per_ngram < 1) {
        set_err(err, errlen, "n_head_per_ngram %d must be at least 1", cfg->n_head_per_ngram);
        return NULL;
    }
    if ((int64_t)(cfg->max_ngram - 1) * cfg->n_head_per_ngram > EH_MAX_HEADS) {
        set_err(err, errlen,
                "(max_ngram - 1) * n_head_per_ngram = %lld heads exceeds the limit of %d",
                (long long)(cfg->max_ngram - 1) * cfg->n_head_per_ngram, EH_MAX_HEADS);
        return NULL;
    }
    if (cfg->n_layers < 1 || cfg->n_layers > EH_MAX_LAYERS) {
        set_err(err, errlen, "n_layers %d is out of range 1..%d", cfg->n_layers, EH_MAX_LAYERS);
        return NULL;
    }
    for (int i = 0; i < cfg->n_layers; i++) {
        if (cfg->layer_ids[i] < 0) {
            set_err(err, errlen,
                    "layer id %lld (layer_ids[%d]) is negative; the multiplier seed "
                    "seed + 10007 * layer_id must not be",
                    (long long)cfg->layer_ids[i], i);
            return NULL;
        }
        for (int j = 0; j < i; j++)
            if (cfg->layer_ids[j] == cfg->layer_ids[i]) {
                set_err(err, errlen, "layer id %lld appears twice (layer_ids[%d] and layer_ids[%d])",
                        (long long)cfg->layer_ids[i], j, i);
                return NULL;
            }
    }
    for (int n = 2; n <= cfg->max_ngram; n++) {
        uint64_t v = cfg->vocab_sizes[n - 2];
        if (v < 2 || v > (1ull << 62)) {
            set_err(err, errlen,
                    "engram_vocab_size[%d] (order %d) = %llu is out of range 2..2^62", n - 2, n,
                    (unsigned long long)v);
            return NULL;
        }
    }
    if (!cfg->lookup || cfg->lookup_len == 0) {
        set_err(err, errlen, "the compression table is empty");
        return NULL;
    }
    if (cfg->pad_id < 0 || (uint64_t)cfg->pad_id >= cfg->lookup_len) {
        set_err(err, errlen, "pad_id %lld is outside the compression table (%zu ids)",
                (long long)cfg->pad_id, cfg->lookup_len);
        return NULL;
    }
    int64_t maxc = 0;
    for (size_t i = 0; i < cfg->lookup_len; i++) {
        if (cfg->lookup[i] < 0) {
            set_err(err, errlen, "compression table maps id %zu to %lld; values must be >= 0", i,
                    (long long)cfg->lookup[i]);
            return NULL;
        }
        if (cfg->lookup[i] > maxc)
            maxc = cfg->lookup[i];
    }
    if (maxc == INT64_MAX) {
        set_err(err, errlen, "compression table value %lld leaves no room for max + 1",
                (long long)maxc);
        return NULL;
    }
    for (int i = 0; i < cfg->n_layers; i++) {
        if (!cfg->has_multipliers[i])
            continue;
        for (int k = 0; k < cfg->max_ngram; k++) {
            int64_t mk = cfg->multipliers[i][k];
            if (mk <= 0 || (mk & 1) == 0) {
                set_err(err, errlen,
                        "multipliers[%d][%d] (layer %lld) = %lld must be odd and in (0, 2^63)", i,
                        k, (long long)cfg->layer_ids[i], (long long)mk);
                return NULL;
            }
        }
    }

    eh_model_priv *p = calloc(1, sizeof *p);
    uint64_t *seen = calloc(SEEN_SLOTS, sizeof *seen);
    if (!p || !seen) {
        free(p);
        free(seen);
        set_err(err, errlen, "out of memory");
        return NULL;
    }
    eh_model *m = &p->pub;
    m->max_ngram = cfg->max_ngram;
    m->n_head_per_ngram = cfg->n_head_per_ngram;
    m->heads = (cfg->max_ngram - 1) * cfg->n_head_per_ngram;
    m->lookup_len = cfg->lookup_len;
    m->dead_tokens = cfg->dead_tokens != 0;
    m->lookup = malloc(cfg->lookup_len * sizeof *m->lookup);
    if (!m->lookup) {
        free(p);
        free(seen);
        set_err(err, errlen, "out of memory");
        return NULL;
    }
    memcpy(m->lookup, cfg->lookup, cfg->lookup_len * sizeof *m->lookup);
    m->compressed_pad = m->lookup[cfg->pad_id];
    m->compressed_vocab = (uint64_t)maxc + 1;
    uint64_t m_max = (uint64_t)INT64_MAX / m->compressed_vocab;
    m->half_bound = m_max / 2 > 1 ? m_max / 2 : 1;
    m->n_layers = cfg->n_layers;

    for (int i = 0; i < cfg->n_layers; i++) {
        eh_layer *L = &m->layers[i];
        L->layer_id = cfg->layer_ids[i];
        if (cfg->has_multipliers[i]) {
            memcpy(L->multipliers, cfg->multipliers[i], sizeof L->multipliers);
        } else {
            /* default_rng(seed + 10007 * layer_id): Python ints, so the sum
             * may exceed 64 bits; pass it as base-2^32 digits. */
            u128 s = (u128)cfg->seed + (u128)10007 * (uint64_t)L->layer_id;
            uint32_t words[4];
            size_t nw = 0;
            do {
                words[nw++] = (uint32_t)s;
                s >>= 32;
            } while (s);
            int64_t r[EH_MAX_NGRAM];
            np_default_rng_integers_words(words, nw, m->half_bound, (size_t)m->max_ngram, r, NULL);
            for (int k = 0; k < m->max_ngram; k++)
                L->multipliers[k] = (int64_t)(2 * (uint64_t)r[k] + 1);
        }

        uint64_t total = 0;
        for (int n = 2; n <= m->max_ngram; n++) {
            uint64_t from = cfg->vocab_sizes[n - 2];
            for (int j = 0; j < m->n_head_per_ngram; j++) {
                int h = (n - 2) * m->n_head_per_ngram + j;
                uint64_t pr = next_prime(from, seen);
                seen[seen_slot(seen, pr)] = pr;
                L->primes[h] = pr;
                L->offsets[h] = total;
                if (pr > (uint64_t)INT64_MAX - total) {
                    set_err(err, errlen, "layer %lld: the table's rows (sum of the primes) exceed 2^63",
                            (long long)L->layer_id);
                    free(seen);
                    eh_model_free(m);
                    return NULL;
                }
                total += pr;
                eh_divisor_init(&p->div[i][h], pr);
                p->inv[i][h] = 1.0 / (double)pr;
                from = pr + 1;
            }
        }
        L->total_rows = total;
    }
    free(seen);
    p->simd = 0;
#ifdef EH_HAVE_AVX512
    {
        const char *off = getenv("ENGRAM_HASH_NO_SIMD");
        int big = 1;
        for (int i = 0; i < m->n_layers; i++)
            for (int h = 0; h < m->heads; h++)
                big &= m->layers[i].primes[h] >= EH_SIMD_MIN_PRIME;
        __builtin_cpu_init();
        p->simd = big && !(off && *off && strcmp(off, "0") != 0) &&
                  __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
    }
#endif
    return m;
}

void eh_model_free(eh_model *m)
{
    if (!m)
        return;
    free(m->lookup);
    free((eh_model_priv *)m); /* pub is the first member */
}

int eh_layer_index(const eh_model *m, int64_t layer_id)
{
    for (int i = 0; i < m->n_layers; i++)
        if (m->layers[i].layer_id == layer_id)
            return i;
    return -1;
}

/* ---- hashing ---- */

/* One token through the compression table; 0, or -1 when id is beyond it. */
static inline int compress(const eh_model *m, int64_t id, int64_t *c)
{
    if ((uint64_t)id < m->lookup_len) {
        *c = m->lookup[id];
        return 0;
    }
    if (id < 0) {
        *c = id;
        return 0;
    }
    return -1;
}

/* The sliding window both hashing loops keep per sequence: win[k] is the
 * compressed id at t - k once position t is shifted in (before t = 0 it
 * holds positions -1 .. -(N-1), history index N - 2 - k, oldest first), and
 * dist is how far back the newest DEAD token is (N: none within reach). */
typedef struct eh_window {
    int64_t win[EH_MAX_NGRAM], eff[EH_MAX_NGRAM];
    int dist;
} eh_window;

/* Fills the window from sequence b's history row (or the pad without one).
 * Returns 0, or -1 with err naming a history id beyond the table. */
static inline int window_start(const eh_model *m, eh_window *w, const int64_t *history, size_t b,
                               int N, char *err, size_t errlen)
{
    w->win[N - 1] = 0;
    w->dist = N;
    for (int k = N - 2; k >= 0; k--) {       /* oldest first, so dist ends at the newest */
        if (!history) {
            w->win[k] = m->compressed_pad;
            continue;
        }
        int64_t id = history[b * (size_t)(N - 1) + (size_t)(N - 2 - k)];
        if (m->dead_tokens && id < 0) {
            w->win[k] = m->compressed_pad;
            w->dist = k;                     /* the loop adds one as it shifts t = 0 in */
        } else if (compress(m, id, &w->win[k]) < 0) {
            set_err(err, errlen,
                    "history token id %lld at [%zu, %d] is beyond the compression table "
                    "(%zu ids)", (long long)id, b, N - 2 - k, m->lookup_len);
            return -1;
        }
    }
    return 0;
}

/* Shifts token `id` (position [b, t]) in and returns the ids to mix: the
 * window itself, or, within reach of a DEAD token, a copy in which the ids
 * it blocks read as the pad. NULL with err when id is beyond the table. */
static inline const int64_t *window_push(const eh_model *m, eh_window *w, int64_t id, size_t b,
                                         size_t t, int N, char *err, size_t errlen)
{
    for (int k = N - 1; k > 0; k--)
        w->win[k] = w->win[k - 1];
    if (m->dead_tokens && id < 0) {
        w->win[0] = m->compressed_pad;
        w->dist = 0;
    } else if (compress(m, id, &w->win[0]) < 0) {
        set_err(err, errlen,
                "token id %lld at [%zu, %zu] is beyond the compression table (%zu ids)",
                (long long)id, b, t, m->lookup_len);
        return NULL;
    } else if (w->dist < N) {
        w->dist++;
    }
    if (w->dist == N)
        return w->win;
    for (int k = 0; k < N; k++)
        w->eff[k] = k >= w->dist ? m->compressed_pad : w->win[k];
    return w->eff;
}

/* The hashing loop. N (max_ngram) and H (n_head_per_ngram) are parameters
 * so that the dispatcher below can instantiate it with constants for the
 * common shapes; the generic instance passes the model's values. Exactly one
 * of out (row ids) and mix_out (mixes) is set. */
static inline __attribute__((always_inline)) int
hash_core(const eh_model_priv *p, int li, const int64_t *tokens, size_t B, size_t T,
          const int64_t *history, uint64_t *out, int64_t *mix_out, char *err, size_t errlen,
          const int N, const int H)
{
    const eh_model *m = &p->pub;
    const eh_layer *L = &m->layers[li];
    const eh_divisor *dv = p->div[li];
    const uint64_t *off = L->offsets;
    const int heads = (N - 1) * H;
    uint64_t mult[EH_MAX_NGRAM];
    for (int k = 0; k < N; k++)
        mult[k] = (uint64_t)L->multipliers[k];

    for (size_t b = 0; b < B; b++) {
        eh_window win;
        if (window_start(m, &win, history, b, N, err, errlen) < 0)
            return -1;
        const int64_t *row = tokens + b * T;
        for (size_t t = 0; t < T; t++) {
            const int64_t *w = window_push(m, &win, row[t], b, t, N, err, errlen);
            if (!w)
                return -1;
            uint64_t mix = (uint64_t)w[0] * mult[0];
            if (mix_out) {
                int64_t *mo = mix_out + (b * T + t) * (size_t)(N - 1);
                for (int n = 2; n <= N; n++) {
                    mix ^= (uint64_t)w[n - 1] * mult[n - 1];
                    mo[n - 2] = (int64_t)mix;
                }
                continue;
            }
            uint64_t *o = out + (b * T + t) * (size_t)heads;
            for (int n = 2; n <= N; n++) {
                mix ^= (uint64_t)w[n - 1] * mult[n - 1];
                const int h0 = (n - 2) * H;
                if ((int64_t)mix >= 0) {
                    /* Valid ids only ever give these: no sign fix-up. */
#pragma GCC unroll 8
                    for (int j = 0; j < H; j++)
                        o[h0 + j] = eh_mod_u64(mix, &dv[h0 + j]) + off[h0 + j];
                } else {
                    for (int j = 0; j < H; j++)
                        o[h0 + j] = eh_floor_mod((int64_t)mix, &dv[h0 + j]) + off[h0 + j];
                }
            }
        }
    }
    return 0;
}

#ifdef EH_HAVE_AVX512
/* Floor-mod of one mix by 8 primes at once. For |mix| <= 2^63 and
 * p >= 2^12, q = floor(double(mix) * double(1/p)) is within one of
 * floor(mix / p) (three roundings of 2^-53 relative error on a quotient
 * below 2^51: error < 0.75), so r = mix - q * p (exact in wrapping int64)
 * lies in (-p, 2p) and two corrections give [0, p). Signed conversions, so
 * negative mixes need nothing else. */
__attribute__((target("avx512f,avx512dq"))) static inline __m512i
mod8(__m512i mix, __m512d fmix, __m512i p, __m512d inv, __m512i off)
{
    __m512d qd = _mm512_mul_pd(fmix, inv);
    __m512i q = _mm512_cvt_roundpd_epi64(qd, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    __m512i r = _mm512_sub_epi64(mix, _mm512_mullo_epi64(q, p));
    __mmask8 neg = _mm512_cmplt_epi64_mask(r, _mm512_setzero_si512());
    r = _mm512_mask_add_epi64(r, neg, r, p);
    __mmask8 big = _mm512_cmpge_epi64_mask(r, p);
    r = _mm512_mask_sub_epi64(r, big, r, p);
    return _mm512_add_epi64(r, off);
}

__attribute__((target("avx512f,avx512dq"))) static int
hash_avx512(const eh_model_priv *p, int li, const int64_t *tokens, size_t B, size_t T,
            const int64_t *history, uint64_t *out, char *err, size_t errlen)
{
    const eh_model *m = &p->pub;
    const eh_layer *L = &m->layers[li];
    const int N = m->max_ngram, H = m->n_head_per_ngram, heads = m->heads;
    uint64_t mult[EH_MAX_NGRAM];
    for (int k = 0; k < N; k++)
        mult[k] = (uint64_t)L->multipliers[k];

    for (size_t b = 0; b < B; b++) {
        eh_window win;
        if (window_start(m, &win, history, b, N, err, errlen) < 0)
            return -1;
        const int64_t *row = tokens + b * T;
        for (size_t t = 0; t < T; t++) {
            const int64_t *w = window_push(m, &win, row[t], b, t, N, err, errlen);
            if (!w)
                return -1;
            uint64_t mix = (uint64_t)w[0] * mult[0];
            uint64_t *o = out + (b * T + t) * (size_t)heads;
            for (int n = 2; n <= N; n++) {
                mix ^= (uint64_t)w[n - 1] * mult[n - 1];
                const __m512i vm = _mm512_set1_epi64((int64_t)mix);
                const __m512d fm = _mm512_set1_pd((double)(int64_t)mix);
                const int h0 = (n - 2) * H;
                int j = 0;
                for (; j + 8 <= H; j += 8) {
                    const int h = h0 + j;
                    __m512i r = mod8(vm, fm, _mm512_loadu_si512(&L->primes[h]),
                                     _mm512_loadu_pd(&p->inv[li][h]),
                                     _mm512_loadu_si512(&L->offsets[h]));
                    _mm512_storeu_si512(&o[h], r);
                }
                if (j < H) {
                    const int h = h0 + j;
                    const __mmask8 k = (__mmask8)((1u << (H - j)) - 1);
                    /* Masked-off lanes load p = 1, inv = 1: harmless. */
                    __m512i r = mod8(vm, fm, _mm512_mask_loadu_epi64(_mm512_set1_epi64(1), k,
                                                                      &L->primes[h]),
                                     _mm512_mask_loadu_pd(_mm512_set1_pd(1.0), k, &p->inv[li][h]),
                                     _mm512_maskz_loadu_epi64(k, &L->offsets[h]));
                    _mm512_mask_storeu_epi64(&o[h], k, r);
                }
            }
        }
    }
    return 0;
}
#endif

int eh_simd_active(const eh_model *m)
{
    return m ? ((const eh_model_priv *)m)->simd : 0;
}

static int hash_generic(const eh_model_priv *p, int li, const int64_t *tokens, size_t B,
                        size_t T, const int64_t *history, uint64_t *out, int64_t *mix_out,
                        char *err, size_t errlen)
{
    return hash_core(p, li, tokens, B, T, history, out, mix_out, err, errlen, p->pub.max_ngram,
                     p->pub.n_head_per_ngram);
}

/* The reference config's shape (max_ngram 3, 8 heads), with constants. */
static int hash_3x8(const eh_model_priv *p, int li, const int64_t *tokens, size_t B, size_t T,
                    const int64_t *history, uint64_t *out, char *err, size_t errlen)
{
    return hash_core(p, li, tokens, B, T, history, out, NULL, err, errlen, 3, 8);
}

static int check_call(const eh_model *m, int li, char *err, size_t errlen)
{
    if (!m) {
        set_err(err, errlen, "no model");
        return -1;
    }
    if (li < 0 || li >= m->n_layers) {
        set_err(err, errlen, "layer index %d is out of range 0..%d", li, m->n_layers - 1);
        return -1;
    }
    return 0;
}

int eh_hash(const eh_model *m, int li, const int64_t *tokens, size_t B, size_t T,
            const int64_t *history, uint64_t *out, char *err, size_t errlen)
{
    if (check_call(m, li, err, errlen) < 0)
        return -1;
    const eh_model_priv *p = (const eh_model_priv *)m;
#ifdef EH_HAVE_AVX512
    if (p->simd)
        return hash_avx512(p, li, tokens, B, T, history, out, err, errlen);
#endif
    if (m->max_ngram == 3 && m->n_head_per_ngram == 8)
        return hash_3x8(p, li, tokens, B, T, history, out, err, errlen);
    return hash_generic(p, li, tokens, B, T, history, out, NULL, err, errlen);
}

int eh_mixes(const eh_model *m, int li, const int64_t *tokens, size_t B, size_t T,
             const int64_t *history, int64_t *out, char *err, size_t errlen)
{
    if (check_call(m, li, err, errlen) < 0)
        return -1;
    return hash_generic((const eh_model_priv *)m, li, tokens, B, T, history, NULL, out, err,
                        errlen);
}
