/* synthetic.c: generates rows of the synthetic table rule (see synthetic.h).
 * Words are stored little-endian explicitly so the bytes are the same on any
 * host. */
#include "synthetic.h"

#include <string.h>

void synthetic_row(uint64_t seed, uint64_t row, uint8_t *out, size_t row_bytes)
{
    uint64_t base = seed + (row << 20);
    for (size_t off = 0, k = 0; off < row_bytes; off += 8, k++) {
        uint64_t w = splitmix64(base + k);
        uint8_t le[8];
        for (int i = 0; i < 8; i++)
            le[i] = (uint8_t)(w >> (8 * i));
        size_t n = row_bytes - off < 8 ? row_bytes - off : 8;
        memcpy(out + off, le, n);
    }
}

void synthetic_rows(uint64_t seed, uint64_t first, uint64_t count,
                    uint8_t *out, size_t row_bytes)
{
    for (uint64_t i = 0; i < count; i++)
        synthetic_row(seed, first + i, out + i * row_bytes, row_bytes);
}
