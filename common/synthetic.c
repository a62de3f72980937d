/* synthetic.c: generates rows of the synthetic table rule (see synthetic.h).
 * Words are stored little-endian explicitly so the bytes are the same on any
 * host. */
#include "synthetic.h"

#include <string.h>

#include "dtype.h"

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

/* mxfp8_e4m3: row_bytes = dim + dim / 32, so dim = row_bytes * 32 / 33. */
static void make_mxfp8_valid(uint8_t *out, size_t row_bytes)
{
    size_t dim = row_bytes / (DTYPE_MX_BLOCK + 1) * DTYPE_MX_BLOCK;
    for (size_t i = 0; i < dim; i++)
        if ((out[i] & 0x7f) == 0x7f)
            out[i] ^= 1;
    for (size_t i = dim; i < row_bytes; i++)
        out[i] = (uint8_t)(120 + out[i] % 15);
}

void synthetic_row_typed(uint64_t seed, uint64_t row, uint8_t *out, size_t row_bytes,
                         const char *dtype)
{
    synthetic_row(seed, row, out, row_bytes);
    if (dtype != NULL && strcmp(dtype, DTYPE_MXFP8_E4M3) == 0)
        make_mxfp8_valid(out, row_bytes);
}

void synthetic_rows_typed(uint64_t seed, uint64_t first, uint64_t count, uint8_t *out,
                          size_t row_bytes, const char *dtype)
{
    for (uint64_t i = 0; i < count; i++)
        synthetic_row_typed(seed, first + i, out + i * row_bytes, row_bytes, dtype);
}
