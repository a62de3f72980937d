/* dequant.c: mxfp8_e4m3 rows (DeepSeek-V4.1's Engram rows: dim E4M3 codes,
 * then one E8M0 scale per 32 codes) to BF16 or F32.
 *
 * value = e4m3(code) x 2^(scale - 127). An E4M3 value has at most 4
 * significant bits, so the product is exact in BF16 and F32 wherever the
 * result is a normal number there: its bits are the code's exponent and
 * mantissa bits moved into place with (scale - 127) added to the exponent.
 * For a block whose scale keeps every nonzero code normal (scale 10..246,
 * any scale a trained table uses) that is the whole work, done as
 * branch-free arithmetic the compiler vectorises over the block.
 * Other blocks, and zeros, NaN codes and the NaN scale, take the exact
 * slow path: rounding to nearest even into subnormals, infinity past the
 * largest finite value, NaN for NaN. */
#include "client_internal.h"
#include "dtype.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static double e4m3_value(unsigned c)
{
    unsigned e = (c >> 3) & 15, m = c & 7;
    double v = e ? ldexp(1.0 + m / 8.0, (int)e - 7) : ldexp(m / 8.0, -6);
    return c & 0x80 ? -v : v;
}

/* The exact value of one code under one scale, rounded to nearest even
 * into BF16 bits. Used where the fast path does not apply. */
static uint16_t bf16_slow(unsigned c, unsigned scale)
{
    if ((c & 0x7f) == 0x7f || scale == 255)
        return (uint16_t)((c & 0x80) << 8 | 0x7fc0);          /* NaN */
    double v = ldexp(e4m3_value(c), (int)scale - 127);    /* exact in double */
    uint16_t sign = (uint16_t)((c & 0x80) << 8);
    double a = fabs(v);
    if (a == 0)
        return sign;
    int ex;
    frexp(a, &ex);                                         /* a in [2^(ex-1), 2^ex) */
    /* The BF16 step at a's binade: 2^(ex - 8) for normals, 2^-133 below. */
    int step = ex - 8 < -133 ? -133 : ex - 8;
    double q = nearbyint(ldexp(a, -step));                 /* round to nearest even */
    double r = ldexp(q, step);
    if (r >= 0x1p128)
        return sign | 0x7f80;                              /* infinity */
    float f = (float)r;                                    /* exact: 8 significant bits */
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return sign | (uint16_t)(u >> 16);
}

static uint32_t f32_slow(unsigned c, unsigned scale)
{
    if ((c & 0x7f) == 0x7f || scale == 255)
        return (uint32_t)(c & 0x80) << 24 | 0x7fc00000u;
    double v = ldexp(e4m3_value(c), (int)scale - 127);
    float f = (float)v;           /* round to nearest even, to inf, to subnormals */
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* Whether every nonzero, non-NaN code of the block stays a normal number
 * under this scale: code exponents run 2^-9 .. 2^8 (biased 118..135). */
static int block_fast(unsigned scale)
{
    int k = (int)scale - 127;
    return scale != 255 && 118 + k >= 1 && 135 + k <= 254;
}

/* One block on the fast path, as arithmetic the compiler vectorises (no
 * table lookups, no branches). With em = code & 0x7f, e4m3's exponent
 * bias 7 and the scale adding scale - 127 to a bias of 127:
 *  - a normal code (exponent e > 0) is em + 8 x (scale - 7), shifted into
 *    place: exponent e + scale - 7, mantissa m moved up;
 *  - a subnormal code (e = 0, m = 1..7, value m x 2^-9) normalises to
 *    exponent scale - 9 + floor(log2 m) and mantissa m's bits below its
 *    top one: T(m) below is those two, m >= 4: 0x80 + 0x20 m, m >= 2:
 *    0x40 m, m = 1: 0 (BF16 layout; F32 is the same shifted by 16);
 *  - a zero keeps only its sign.
 * NaN codes (em = 0x7f) do not follow it: the return value says the block
 * holds one, and the caller redoes those. */
static inline __attribute__((always_inline)) int block_bf16(const uint8_t *restrict c, unsigned scale, uint16_t *restrict o)
{
    const uint16_t nbase = (uint16_t)(8 * ((int)scale - 7));
    const uint16_t sbase = (uint16_t)(((int)scale - 9) << 7);
    uint16_t nan = 0;
    for (int i = 0; i < DTYPE_MX_BLOCK; i++) {
        uint16_t x = c[i], em = x & 0x7f, m = x & 7, sign = (uint16_t)((x & 0x80) << 8);
        uint16_t normal = (uint16_t)((uint16_t)(em + nbase) << 4);
        uint16_t t = m >= 4 ? (uint16_t)(0x80 + 0x20 * m) : m >= 2 ? (uint16_t)(0x40 * m) : 0;
        uint16_t sub = (uint16_t)(t + sbase);
        o[i] = (uint16_t)(sign | (em >= 8 ? normal : em ? sub : 0));
        nan |= (uint16_t)(em == 0x7f);
    }
    return nan != 0;
}

static inline __attribute__((always_inline)) int block_f32(const uint8_t *restrict c, unsigned scale, uint32_t *restrict o)
{
    const uint32_t nbase = (uint32_t)(8 * ((int)scale - 7));
    const uint32_t sbase = (uint32_t)((int)scale - 9) << 23;
    uint32_t nan = 0;
    for (int i = 0; i < DTYPE_MX_BLOCK; i++) {
        uint32_t x = c[i], em = x & 0x7f, m = x & 7, sign = (x & 0x80) << 24;
        uint32_t t = m >= 4 ? 0x80 + 0x20 * m : m >= 2 ? 0x40 * m : 0;
        uint32_t sub = (t << 16) + sbase;
        o[i] = sign | (em >= 8 ? (em + nbase) << 20 : em ? sub : 0);
        nan |= (uint32_t)(em == 0x7f);
    }
    return nan != 0;
}

static int check_args(const void *rows, uint32_t dim, const void *out, engram_error *err)
{
    if (!rows || !out)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "rows or out is NULL");
    if (!dim || dim % DTYPE_MX_BLOCK)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT,
                        "dim %u is not a positive multiple of %d (the scale block)", dim,
                        DTYPE_MX_BLOCK);
    return ENGRAM_OK;
}

/* The row loops, inlined into an AVX2 build and a baseline build of each;
 * the public functions pick one by the CPU, once. (Not target_clones: its
 * ifunc resolvers would be exported and would ignore hidden visibility.) */
static inline __attribute__((always_inline)) void
rows_bf16(const uint8_t *p, size_t n, uint32_t dim, uint16_t *out)
{
    const size_t rb = (size_t)dim + dim / DTYPE_MX_BLOCK;
    for (size_t r = 0; r < n; r++, p += rb) {
        const uint8_t *codes = p, *scales = p + dim;
        for (uint32_t b = 0; b < dim / DTYPE_MX_BLOCK; b++) {
            const uint8_t *c = codes + b * DTYPE_MX_BLOCK;
            uint16_t *o = out + r * dim + b * DTYPE_MX_BLOCK;
            unsigned s = scales[b];
            if (block_fast(s)) {
                if (block_bf16(c, s, o))
                    for (int i = 0; i < DTYPE_MX_BLOCK; i++)
                        if ((c[i] & 0x7f) == 0x7f)
                            o[i] = bf16_slow(c[i], s);
            } else {
                for (int i = 0; i < DTYPE_MX_BLOCK; i++)
                    o[i] = bf16_slow(c[i], s);
            }
        }
    }
}

static inline __attribute__((always_inline)) void
rows_f32(const uint8_t *p, size_t n, uint32_t dim, float *out)
{
    const size_t rb = (size_t)dim + dim / DTYPE_MX_BLOCK;
    for (size_t r = 0; r < n; r++, p += rb) {
        const uint8_t *codes = p, *scales = p + dim;
        for (uint32_t b = 0; b < dim / DTYPE_MX_BLOCK; b++) {
            const uint8_t *c = codes + b * DTYPE_MX_BLOCK;
            uint32_t *o = (uint32_t *)(out + r * dim + b * DTYPE_MX_BLOCK);
            unsigned s = scales[b];
            if (block_fast(s)) {
                if (block_f32(c, s, o))
                    for (int i = 0; i < DTYPE_MX_BLOCK; i++)
                        if ((c[i] & 0x7f) == 0x7f)
                            o[i] = f32_slow(c[i], s);
            } else {
                for (int i = 0; i < DTYPE_MX_BLOCK; i++)
                    o[i] = f32_slow(c[i], s);
            }
        }
    }
}

#define VEC __attribute__((optimize("tree-vectorize")))
#if defined(__x86_64__)
#define HAVE_AVX2_BUILD 1
VEC __attribute__((target("avx2"))) static void
bf16_avx2(const uint8_t *p, size_t n, uint32_t dim, uint16_t *out)
{
    rows_bf16(p, n, dim, out);
}
VEC __attribute__((target("avx2"))) static void
f32_avx2(const uint8_t *p, size_t n, uint32_t dim, float *out)
{
    rows_f32(p, n, dim, out);
}
#endif
VEC static void bf16_base(const uint8_t *p, size_t n, uint32_t dim, uint16_t *out)
{
    rows_bf16(p, n, dim, out);
}
VEC static void f32_base(const uint8_t *p, size_t n, uint32_t dim, float *out)
{
    rows_f32(p, n, dim, out);
}

static int use_avx2(void)
{
#ifdef HAVE_AVX2_BUILD
    static int v = -1;           /* a benign race: every thread computes the same */
    if (__atomic_load_n(&v, __ATOMIC_RELAXED) < 0) {
        __builtin_cpu_init();
        /* ENGRAM_DEQUANT_NO_SIMD (not "0"): the baseline build, for tests */
        const char *off = getenv("ENGRAM_DEQUANT_NO_SIMD");
        int on = __builtin_cpu_supports("avx2") && !(off && strcmp(off, "0") != 0);
        __atomic_store_n(&v, on, __ATOMIC_RELAXED);
    }
    return __atomic_load_n(&v, __ATOMIC_RELAXED);
#else
    return 0;
#endif
}

int engram_dequant_bf16(const void *rows, size_t n, uint32_t dim, uint16_t *out,
                        engram_error *err)
{
    int rc = check_args(rows, dim, out, err);
    if (rc)
        return rc;
#ifdef HAVE_AVX2_BUILD
    if (use_avx2())
        bf16_avx2(rows, n, dim, out);
    else
#endif
        bf16_base(rows, n, dim, out);
    return ec_ok(err);
}

int engram_dequant_f32(const void *rows, size_t n, uint32_t dim, float *out, engram_error *err)
{
    int rc = check_args(rows, dim, out, err);
    if (rc)
        return rc;
#ifdef HAVE_AVX2_BUILD
    if (use_avx2())
        f32_avx2(rows, n, dim, out);
    else
#endif
        f32_base(rows, n, dim, out);
    return ec_ok(err);
}
