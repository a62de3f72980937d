/* fuzz_safetensors.c: libFuzzer target for st_parse_header
 * (client/ctl/safetensors.c), the .safetensors header engramctl import
 * --tensor reads from a checkpoint: the input is the whole file. Every
 * accepted tensor must lie inside the file, as the importer relies on. */
#include <stdint.h>
#include <stdlib.h>

#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    st_file f;
    char err[512];
    if (st_parse_header(data, size, size, &f, err, sizeof err))
        return 0;
    for (size_t i = 0; i < f.n; i++) {
        const st_tensor *t = &f.tensors[i];
        if (t->begin > t->end || f.data_start + t->end > size || st_find(&f, t->name) == NULL)
            abort();
    }
    char names[256];
    st_list_names(&f, 4, names, sizeof names);
    st_free(&f);
    return 0;
}
