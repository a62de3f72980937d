/* manifest.h: the model manifest, everything a client needs to turn token
 * ids into row ids and to know which table serves which layer.
 *
 * A JSON document whose keys follow the reference's EngramConfig:
 *
 *   { "name": "demo",
 *     "engram_vocab_size": [646400, 646400], "max_ngram_size": 3,
 *     "n_embed_per_ngram": 512, "n_head_per_ngram": 8,
 *     "layer_ids": [1, 15], "pad_id": 2, "seed": 0, "dtype": "bf16",
 *     "compression": { "lookup_table": [0, 1, 2, ...] },
 *     "compressed_vocab_size": 98627,                   optional, checked
 *     "multipliers": { "1": ["...", "...", "..."] },    optional, decimal strings
 *     "tables": { "1": "demo.l1", "15": "demo.l15" } }
 *
 * "compressed_vocab_size", when given, must be max(lookup_table) + 1 (the
 * reference engines assert it). A manifest shipped without "compression"
 * (deploy/models/) is a template: `engramctl compress-vocab --manifest`
 * completes it from the tokenizer.
 * Multipliers, primes and offsets are derived (engram_hash.h); multipliers
 * may be overridden. Optional "primes" ({"<layer>": {"<order>": [per
 * head]}}) and "offsets" ({"<layer>": [per head]}) must equal the derived
 * values (README "Models").
 * Each layer's table has sum(primes) rows of D = n_embed_per_ngram /
 * n_head_per_ngram elements of `dtype`. Parsed with jansson. */
#ifndef ENGRAM_COMMON_MANIFEST_H
#define ENGRAM_COMMON_MANIFEST_H

#include <stddef.h>
#include <stdint.h>

#include "engram_hash.h"

#define MANIFEST_NAME_MAX 128

typedef struct engram_manifest {
    char name[MANIFEST_NAME_MAX + 1];
    char dtype[16];
    uint32_t n_embed_per_ngram;
    uint32_t dim;                  /* per head: n_embed_per_ngram / n_head */
    uint32_t row_bytes;            /* dim * sizeof(dtype) */
    int64_t pad_id;                /* raw pad id, for callers building history */
    eh_model *model;               /* derived hashing state */
    char tables[EH_MAX_LAYERS][MANIFEST_NAME_MAX + 1]; /* by layer index */
} engram_manifest;

/* Parses and validates a manifest. Returns NULL with a message naming the
 * bad key or value in err (missing key, wrong type, non-odd multiplier, a
 * layer without a table, ...). Free with manifest_free. */
engram_manifest *manifest_parse(const char *json, size_t len, char *err, size_t errlen);
/* Reads and parses a manifest file. */
engram_manifest *manifest_load(const char *path, char *err, size_t errlen);
void manifest_free(engram_manifest *m);

/* Checks that a table's geometry fits layer index `li` of the manifest:
 * rows == sum of the layer's primes, dim, dtype and row_bytes equal.
 * Returns 0, or -1 with a message naming the mismatch. */
int manifest_check_table(const engram_manifest *m, int li, uint64_t rows,
                         uint32_t row_bytes, uint32_t dim, const char *dtype,
                         char *err, size_t errlen);

/* The seed of layer `layer_id`'s synthetic table when a manifest's tables
 * are imported with one seed: distinct per layer, so a layer mix-up shows. */
uint64_t manifest_synthetic_seed(uint64_t seed, int64_t layer_id);

#endif
