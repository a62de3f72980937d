/* np_random.c: numpy.random.default_rng(seed).integers(0, high, n, int64),
 * bit-exact with numpy >= 1.17 (SeedSequence -> PCG64 -> Lemire bounded
 * integers), as written out in tests/data/engram-hash/README.md.
 *
 * Only what Engram's multiplier derivation needs: one fresh generator per
 * call, low = 0, int64 output. */
#include "engram_hash.h"

#include <string.h>

typedef unsigned __int128 u128;

/* SeedSequence constants (numpy/random/bit_generator.pyx). */
#define SS_INIT_A 0x43b0d7e5u
#define SS_MULT_A 0x931e8875u
#define SS_INIT_B 0x8b51f9ddu
#define SS_MULT_B 0x58f38dedu
#define SS_MIX_MULT_L 0xca01f9ddu
#define SS_MIX_MULT_R 0x4973f715u
#define SS_XSHIFT 16
#define SS_POOL 4

static uint32_t ss_hashmix(uint32_t v, uint32_t *hc)
{
    v ^= *hc;
    *hc *= SS_MULT_A;
    v *= *hc;
    v ^= v >> SS_XSHIFT;
    return v;
}

static uint32_t ss_mix(uint32_t x, uint32_t y)
{
    uint32_t r = SS_MIX_MULT_L * x - SS_MIX_MULT_R * y;
    r ^= r >> SS_XSHIFT;
    return r;
}

typedef struct pcg64 {
    u128 state, inc;
    int has32;
    uint32_t buf32;
} pcg64;

static const u128 PCG_MULT =
    ((u128)0x2360ED051FC65DA4ull << 64) | (u128)0x4385DF649FCCF645ull;

static inline void pcg_step(pcg64 *g) { g->state = g->state * PCG_MULT + g->inc; }

static inline uint64_t pcg_next64(pcg64 *g)
{
    pcg_step(g);
    uint64_t x = (uint64_t)(g->state >> 64) ^ (uint64_t)g->state;
    unsigned rot = (unsigned)(g->state >> 122);
    return (x >> rot) | (x << ((64 - rot) & 63));
}

static inline uint32_t pcg_next32(pcg64 *g)
{
    if (g->has32) {
        g->has32 = 0;
        return g->buf32;
    }
    uint64_t n = pcg_next64(g);
    g->has32 = 1;
    g->buf32 = (uint32_t)(n >> 32);
    return (uint32_t)n;
}

/* words: the seed's little-endian base-2^32 digits ([0] for seed 0). */
static void seed_pcg(const uint32_t *words, size_t n_words, pcg64 *g, np_rng_trace *tr)
{
    uint32_t pool[SS_POOL];
    uint32_t hc = SS_INIT_A;
    for (size_t i = 0; i < SS_POOL; i++)
        pool[i] = ss_hashmix(i < n_words ? words[i] : 0, &hc);
    for (size_t s = 0; s < SS_POOL; s++)
        for (size_t d = 0; d < SS_POOL; d++)
            if (s != d)
                pool[d] = ss_mix(pool[d], ss_hashmix(pool[s], &hc));
    for (size_t s = SS_POOL; s < n_words; s++)
        for (size_t d = 0; d < SS_POOL; d++)
            pool[d] = ss_mix(pool[d], ss_hashmix(words[s], &hc));

    /* generate_state(4, uint64) */
    uint32_t w[8];
    uint32_t hb = SS_INIT_B;
    for (size_t i = 0; i < 8; i++) {
        uint32_t v = pool[i % SS_POOL];
        v ^= hb;
        hb *= SS_MULT_B;
        v *= hb;
        v ^= v >> SS_XSHIFT;
        w[i] = v;
    }
    uint64_t s[4];
    for (size_t j = 0; j < 4; j++)
        s[j] = (uint64_t)w[2 * j] | ((uint64_t)w[2 * j + 1] << 32);

    u128 initstate = ((u128)s[0] << 64) | s[1];
    u128 initseq = ((u128)s[2] << 64) | s[3];
    g->state = 0;
    g->inc = (initseq << 1) | 1;
    pcg_step(g);
    g->state += initstate;
    pcg_step(g);
    g->has32 = 0;
    g->buf32 = 0;

    if (tr) {
        memcpy(tr->pool, pool, sizeof pool);
        memcpy(tr->state_u32, w, sizeof w);
        memcpy(tr->state_u64, s, sizeof s);
        tr->pcg_state_hi = (uint64_t)(g->state >> 64);
        tr->pcg_state_lo = (uint64_t)g->state;
        tr->pcg_inc_hi = (uint64_t)(g->inc >> 64);
        tr->pcg_inc_lo = (uint64_t)g->inc;
        pcg64 copy = *g;
        for (int i = 0; i < 4; i++)
            tr->first_next64[i] = pcg_next64(&copy);
    }
}

static uint64_t lemire64(pcg64 *g, uint64_t rng)
{
    const uint64_t e = rng + 1;
    u128 m = (u128)pcg_next64(g) * e;
    uint64_t lo = (uint64_t)m;
    if (lo < e) {
        const uint64_t t = (UINT64_MAX - rng) % e;
        while (lo < t) {
            m = (u128)pcg_next64(g) * e;
            lo = (uint64_t)m;
        }
    }
    return (uint64_t)(m >> 64);
}

static uint32_t lemire32(pcg64 *g, uint32_t rng)
{
    const uint32_t e = rng + 1;
    uint64_t m = (uint64_t)pcg_next32(g) * e;
    uint32_t lo = (uint32_t)m;
    if (lo < e) {
        const uint32_t t = (UINT32_MAX - rng) % e;
        while (lo < t) {
            m = (uint64_t)pcg_next32(g) * e;
            lo = (uint32_t)m;
        }
    }
    return (uint32_t)(m >> 32);
}

void np_default_rng_integers_words(const uint32_t *words, size_t n_words, uint64_t high,
                                   size_t n, int64_t *out, np_rng_trace *trace)
{
    static const uint32_t zero = 0;
    if (n_words == 0) {
        words = &zero;
        n_words = 1;
    }
    pcg64 g;
    seed_pcg(words, n_words, &g, trace);
    const uint64_t rng = high ? high - 1 : 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t v;
        if (rng == 0)
            v = 0;
        else if (rng == 0xffffffffull)
            v = pcg_next32(&g);
        else if (rng < 0xffffffffull)
            v = lemire32(&g, (uint32_t)rng);
        else if (rng == UINT64_MAX)
            v = pcg_next64(&g);
        else
            v = lemire64(&g, rng);
        out[i] = (int64_t)v;
    }
}

void np_default_rng_integers(uint64_t seed, uint64_t high, size_t n, int64_t *out)
{
    uint32_t words[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    np_default_rng_integers_words(words, seed >> 32 ? 2 : 1, high, n, out, NULL);
}
