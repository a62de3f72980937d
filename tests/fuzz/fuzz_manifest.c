/* fuzz_manifest.c: libFuzzer target for manifest_parse (common/manifest.c),
 * a model manifest as a server stores it and a client reads it back: JSON
 * parsed with jansson, validated key by key, then the hashing state derived
 * (eh_model_create). An accepted manifest must have a table per layer. */
#include <stdint.h>
#include <stdlib.h>

#include "manifest.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512];
    engram_manifest *m = manifest_parse((const char *)data, size, err, sizeof err);
    if (!m)
        return 0;
    for (int i = 0; i < m->model->n_layers; i++)
        if (!m->tables[i][0])
            abort();
    manifest_free(m);
    return 0;
}
