/* test_dequant.c: engram_dequant_bf16 / _f32 on every E4M3 code under every
 * E8M0 scale (0..255), bit for bit against an integer-only reference: the
 * exact value as mantissa x 2^exponent, rounded to nearest even by integer
 * shifts, so it shares no code and no floating-point step with dequant.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "engram/engram.h"

/* Bits of sign x M x 2^P in a binary format with `mant` stored mantissa
 * bits and exponent bias `bias` (BF16: 7, 127; F32: 23, 127). */
static uint32_t ref_bits(int neg, uint32_t M, int P, int mant, int bias)
{
    const int ebits = 8;
    uint32_t sign = neg ? 1u << (mant + ebits) : 0;
    if (M == 0)
        return sign;
    int msb = 31 - __builtin_clz(M);
    int ue = msb + P;                              /* value in [2^ue, 2^(ue+1)) */
    if (ue > bias)                                 /* at most 4 significant bits: */
        return sign | (((1u << ebits) - 1) << mant);   /* no rounding into it: inf */
    if (ue >= 1 - bias) {                          /* normal: exact */
        uint32_t frac = (M << (mant - msb)) & ((1u << mant) - 1);
        return sign | (uint32_t)(ue + bias) << mant | frac;
    }
    int sh = P - (1 - bias - mant);                /* value / smallest subnormal = M x 2^sh */
    uint32_t q;
    if (sh >= 0) {
        q = M << sh;
    } else if (-sh >= 31) {
        q = 0;
    } else {
        int s = -sh;
        q = M >> s;
        uint32_t rem = M & ((1u << s) - 1), half = 1u << (s - 1);
        if (rem > half || (rem == half && (q & 1)))
            q++;
    }
    return sign | q;                               /* q == 2^mant is the smallest normal */
}

/* code -> sign, integer mantissa M and exponent so that e4m3 = M x 2^E */
static void e4m3_parts(unsigned c, int *neg, uint32_t *M, int *E)
{
    unsigned e = (c >> 3) & 15, m = c & 7;
    *neg = (c & 0x80) != 0;
    if (e) {
        *M = 8 + m;
        *E = (int)e - 7 - 3;
    } else {
        *M = m;
        *E = -6 - 3;
    }
}

static void test_every_code_and_scale(void **state)
{
    (void)state;
    uint8_t rows[8][33];
    uint16_t bf[8 * 32];
    float f32[8 * 32];
    engram_error e;
    for (unsigned scale = 0; scale < 256; scale++) {
        for (unsigned c = 0; c < 256; c++)
            rows[c / 32][c % 32] = (uint8_t)c;
        for (int r = 0; r < 8; r++)
            rows[r][32] = (uint8_t)scale;
        assert_int_equal(engram_dequant_bf16(rows, 8, 32, bf, &e), ENGRAM_OK);
        assert_int_equal(engram_dequant_f32(rows, 8, 32, f32, &e), ENGRAM_OK);
        for (unsigned c = 0; c < 256; c++) {
            uint32_t want_bf, want_f;
            if ((c & 0x7f) == 0x7f || scale == 255) {
                want_bf = (c & 0x80) << 8 | 0x7fc0;
                want_f = (uint32_t)(c & 0x80) << 24 | 0x7fc00000u;
            } else {
                int neg, E;
                uint32_t M;
                e4m3_parts(c, &neg, &M, &E);
                want_bf = ref_bits(neg, M, E + (int)scale - 127, 7, 127);
                want_f = ref_bits(neg, M, E + (int)scale - 127, 23, 127);
            }
            uint32_t got_f;
            memcpy(&got_f, &f32[c], sizeof got_f);
            if (bf[c] != want_bf || got_f != want_f)
                fail_msg("code 0x%02x scale %u: bf16 0x%04x want 0x%04x, f32 0x%08x want 0x%08x",
                         c, scale, bf[c], want_bf, got_f, want_f);
        }
    }
}

/* A V4.1-shaped row (256 codes, 8 scales): each block takes its own scale. */
static void test_blocks_take_their_scale(void **state)
{
    (void)state;
    uint8_t row[264];
    for (int i = 0; i < 256; i++)
        row[i] = 0x38;                     /* 1.0 */
    for (int b = 0; b < 8; b++)
        row[256 + b] = (uint8_t)(120 + b); /* 2^-7 .. 2^0 */
    float out[256];
    engram_error e;
    assert_int_equal(engram_dequant_f32(row, 1, 256, out, &e), ENGRAM_OK);
    for (int i = 0; i < 256; i++)
        assert_true(out[i] == (float)(1.0 / (1 << (7 - i / 32))));
    uint16_t bf[256];
    assert_int_equal(engram_dequant_bf16(row, 1, 256, bf, &e), ENGRAM_OK);
    assert_int_equal(bf[0], 0x3c00);       /* 2^-7 */
    assert_int_equal(bf[255], 0x3f80);     /* 1.0 */
    assert_int_equal(engram_dequant_bf16(row, 1, 48, bf, &e), ENGRAM_INVALID_ARGUMENT);
    assert_string_equal(e.message, "dim 48 is not a positive multiple of 32 (the scale block)");
    assert_int_equal(engram_dequant_f32(NULL, 1, 256, out, &e), ENGRAM_INVALID_ARGUMENT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_code_and_scale),
        cmocka_unit_test(test_blocks_take_their_scale),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
