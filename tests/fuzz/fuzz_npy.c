/* fuzz_npy.c: libFuzzer target for npy_parse (client/ctl/npy.c), the .npy
 * header engramctl import reads: the input is the start of the file. An
 * accepted header must put the data after itself and fill 1 or 2 dims. */
#include <stdint.h>
#include <stdlib.h>

#include "npy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    npy_info ni;
    char err[512];
    if (npy_parse(data, size, &ni, err, sizeof err))
        return 0;
    if (ni.data_off < 10 || (size_t)ni.data_off > size || ni.ndim < 1 || ni.ndim > 2)
        abort();
    return 0;
}
