/* dtype.c: the table of element types. fp8 types are one byte; u8 is the
 * type of an untyped byte row (dim = row_bytes). */
#include "dtype.h"

#include <string.h>

static const struct { const char *name; size_t size; } dtypes[] = {
    {"bf16", 2}, {"f16", 2}, {"f32", 4}, {"f64", 8}, {"i8", 1}, {"u8", 1},
    {"i16", 2}, {"i32", 4}, {"fp8_e4m3", 1}, {"fp8_e5m2", 1},
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
    return "bf16, f16, f32, f64, i8, u8, i16, i32, fp8_e4m3, fp8_e5m2";
}
