/* synthetic.h: the synthetic table rule shared by tests, demos and benchmarks.
 *
 * Row r of a synthetic table with seed s is the concatenation of the
 * little-endian 64-bit words splitmix64(s + (r << 20) + k), k = 0, 1, ...,
 * truncated to row_bytes. Any client can check served bytes without holding
 * the table. */
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

#endif
