/* dtype.c: the table of element types. fp8 types are one byte; u8 is the
 * type of an untyped byte row (dim = row_bytes); mxfp8_e4m3 rows carry
 * their block scales after the codes (dtype.h). */
#include "dtype.h"

#include <string.h>

static const struct { const char *name; size_t size; } dtypes[] = {
    {"bf16", 2}, {"f16", 2}, {"f32", 4}, {"f64", 8}, {"i8", 1}, {"u8", 1},
    {"i16", 2}, {"i32", 4}, {"fp8_e4m3", 1}, {"fp8_e5m2", 1}, {DTYPE_MXFP8_E4M3, 1},
};

size_t dtype_size(const char *name)
{
    if (!name)
        return 0;
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
        if (strcmp(dtypes[i].name, name) == 0)
            return dtypes[i].size;
    return 0;
}

const char *dtype_list(void)
{
    return "bf16, f16, f32, f64, i8, u8, i16, i32, fp8_e4m3, fp8_e5m2, mxfp8_e4m3";
}

static int is_mx(const char *name)
{
    return name && strcmp(name, DTYPE_MXFP8_E4M3) == 0;
}

uint64_t dtype_row_bytes(const char *name, uint64_t dim)
{
    size_t es = dtype_size(name);
    if (!es || !dim)
        return 0;
    if (is_mx(name))
        return dim % DTYPE_MX_BLOCK ? 0 : dim + dim / DTYPE_MX_BLOCK;
    return dim > UINT64_MAX / es ? 0 : dim * es;
}

/* Whether any byte of w is 0x7f or 0xff (a NaN code), eight at a time:
 * with the top bits cleared, adding 1 to each byte carries into its top
 * bit only from 0x7f, and never into the next byte. */
static inline uint64_t nan_codes(uint64_t w)
{
    const uint64_t low7 = 0x7f7f7f7f7f7f7f7full, ones = 0x0101010101010101ull;
    return ((w & low7) + ones) & ~low7;
}

/* The common case is a clean row: a word-at-a-time test says so, and only
 * a row that fails it is searched byte by byte. */
int dtype_find_invalid(const char *name, uint32_t dim, const uint8_t *rows, uint64_t n,
                       uint64_t *row, uint32_t *byte, uint8_t *value)
{
    if (!is_mx(name) || !dim || dim % DTYPE_MX_BLOCK)
        return 0;
    const uint32_t rb = dim + dim / DTYPE_MX_BLOCK;
    for (uint64_t r = 0; r < n; r++) {
        const uint8_t *p = rows + r * rb;
        uint64_t bad = 0;
        for (uint32_t i = 0; i + 8 <= dim; i += 8) {   /* dim is a multiple of 32 */
            uint64_t w;
            memcpy(&w, p + i, sizeof w);
            bad |= nan_codes(w);
        }
        for (uint32_t i = dim; i < rb; i++)
            bad |= (uint64_t)(p[i] == 0xff);
        if (!bad)
            continue;
        for (uint32_t i = 0; i < rb; i++)
            if (i < dim ? (p[i] & 0x7f) == 0x7f : p[i] == 0xff) {
                *row = r;
                *byte = i;
                *value = p[i];
                return 1;
            }
    }
    return 0;
}
