/* fuzz_tokenizer.c: libFuzzer target for the tokenizer.json reader behind
 * engramctl compress-vocab (client/vocab.c): the JSON as jansson loads it,
 * then vocab_build_lookup (model.vocab, added_tokens, byte-level decode and
 * normalisation of every token). An accepted table maps every id to a
 * compressed id below the count of distinct keys. */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>

#include "vocab.h"

/* vocab.c accepts ids below 2^24 by design, but a table that size takes
 * seconds to build per input (ASan: most of a minute): inputs with an id
 * in 2^16..2^24-1 are skipped, or the fuzzer would only measure that.
 * Larger ids still reach vocab.c's range check. */
#define FUZZ_MAX_ID 65535
#define VOCAB_MAX_ID ((1 << 24) - 1)

static int id_too_big(json_t *v)
{
    json_int_t id = json_is_integer(v) ? json_integer_value(v) : 0;
    return id > FUZZ_MAX_ID && id <= VOCAB_MAX_ID;
}

static int too_big(json_t *tok)
{
    const char *key;
    size_t i;
    json_t *v;
    json_object_foreach(json_object_get(json_object_get(tok, "model"), "vocab"), key, v)
        if (id_too_big(v))
            return 1;
    json_array_foreach(json_object_get(tok, "added_tokens"), i, v)
        if (id_too_big(json_object_get(v, "id")))
            return 1;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_error_t je;
    json_t *tok = json_loadb((const char *)data, size, 0, &je);
    if (!tok || too_big(tok)) {
        json_decref(tok);
        return 0;
    }
    char err[512];
    size_t n, compressed;
    int64_t *lookup = vocab_build_lookup(tok, NULL, &n, &compressed, err, sizeof err);
    for (size_t i = 0; lookup && i < n; i++)
        if (lookup[i] < 0 || (size_t)lookup[i] >= compressed)
            abort();
    free(lookup);
    json_decref(tok);
    return 0;
}
