/* synthetic.h: the synthetic table rule shared by tests, demos and benchmarks.
 *
 * Row r of a synthetic table with seed s is the concatenation of the
 * little-endian 64-bit words splitmix64(s + (r << 20) + k), k = 0, 1, ...,
 * truncated to row_bytes. Any client can check served bytes without holding
 * the table.
 *
 * A typed table (synthetic_row_typed) takes those bytes and makes each one a
 * valid value of its row type, so a table of any dtype can be imported,
 * served, dequantized and checked the same way. Only mxfp8_e4m3 needs it:
 * every byte pattern of the other types is a value. For mxfp8_e4m3 a NaN
 * code (0x7F, 0xFF) loses its low bit (0x7E, 0xFE) and each scale byte b
 * becomes 120 + b % 15 (2^-7 .. 2^7), which keeps dequantized values
 * finite and readable. */
#ifndef ENGRAM_COMMON_SYNTHETIC_H
#define ENGRAM_COMMON_SYNTHETIC_H

#include <stddef.h>
#include <stdint.h>

static inline uint64_t splitmix64(uint64_t x)
{
    uint64_t z = x + 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* Writes row `row` of the synthetic table `seed` into out[0..row_bytes). */
void synthetic_row(uint64_t seed, uint64_t row, uint8_t *out, size_t row_bytes);

/* Writes rows [first, first + count) back to back into out. */
void synthetic_rows(uint64_t seed, uint64_t first, uint64_t count,
                    uint8_t *out, size_t row_bytes);

/* synthetic_row, then made valid for `dtype` (NULL: untyped) as above.
 * row_bytes must be dtype_row_bytes(dtype, dim) for some dim. */
void synthetic_row_typed(uint64_t seed, uint64_t row, uint8_t *out, size_t row_bytes,
                         const char *dtype);

/* Rows [first, first + count) of the typed rule, back to back. */
void synthetic_rows_typed(uint64_t seed, uint64_t first, uint64_t count, uint8_t *out,
                          size_t row_bytes, const char *dtype);

#endif
