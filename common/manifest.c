/* manifest.c: parses and validates model manifests with jansson (see
 * manifest.h), then derives the hashing state with eh_model_create.
 *
 * Every error names the key and, where there is one, the bad value, since
 * the person reading it is editing a JSON file by hand. Optional "primes"
 * and "offsets" are checked against the derived values, never used. */
#include "manifest.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dtype.h"
#include "names.h"
#include "synthetic.h"

typedef struct parse_ctx {
    json_t *root;
    char *err;
    size_t errlen;
    eh_config cfg;
    int64_t *lookup;
    engram_manifest *m;
} parse_ctx;

static int perr(parse_ctx *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int perr(parse_ctx *p, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err, p->errlen, fmt, ap);
    va_end(ap);
    return -1;
}

/* An integer member in [lo, hi]. */
static int get_int(parse_ctx *p, json_t *obj, const char *key, long long lo, long long hi,
                   long long *out)
{
    json_t *v = json_object_get(obj, key);
    if (!v)
        return perr(p, "manifest: missing key \"%s\"", key);
    if (!json_is_integer(v))
        return perr(p, "manifest: \"%s\" must be an integer", key);
    long long x = json_integer_value(v);
    if (x < lo || x > hi)
        return perr(p, "manifest: \"%s\" is %lld; allowed %lld..%lld", key, x, lo, hi);
    *out = x;
    return 0;
}

static const char *get_str(parse_ctx *p, json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    if (!v) {
        perr(p, "manifest: missing key \"%s\"", key);
        return NULL;
    }
    if (!json_is_string(v)) {
        perr(p, "manifest: \"%s\" must be a string", key);
        return NULL;
    }
    return json_string_value(v);
}

static json_t *get_array(parse_ctx *p, json_t *obj, const char *key, size_t min, size_t max)
{
    json_t *v = json_object_get(obj, key);
    if (!v) {
        perr(p, "manifest: missing key \"%s\"", key);
        return NULL;
    }
    if (!json_is_array(v) || json_array_size(v) < min || json_array_size(v) > max) {
        perr(p, "manifest: \"%s\" must be an array of %zu..%zu entries", key, min, max);
        return NULL;
    }
    return v;
}

static int parse_shape(parse_ctx *p)
{
    long long v;
    if (get_int(p, p->root, "max_ngram_size", 2, EH_MAX_NGRAM, &v))
        return -1;
    p->cfg.max_ngram = (int)v;
    if (get_int(p, p->root, "n_head_per_ngram", 1, EH_MAX_HEADS, &v))
        return -1;
    p->cfg.n_head_per_ngram = (int)v;
    if (get_int(p, p->root, "n_embed_per_ngram", 1, 1 << 20, &v))
        return -1;
    p->m->n_embed_per_ngram = (uint32_t)v;
    if (v % p->cfg.n_head_per_ngram)
        return perr(p, "manifest: n_embed_per_ngram %lld is not a multiple of n_head_per_ngram %d",
                    v, p->cfg.n_head_per_ngram);
    p->m->dim = (uint32_t)(v / p->cfg.n_head_per_ngram);
    if (get_int(p, p->root, "pad_id", INT64_MIN, INT64_MAX, &v))
        return -1;
    p->cfg.pad_id = v;
    p->m->pad_id = v;
    if (get_int(p, p->root, "seed", 0, INT64_MAX, &v))
        return -1;
    p->cfg.seed = (uint64_t)v;
    /* Optional (DeepSeek-V4.1): a negative token id is DEAD, see eh_config. */
    json_t *dead = json_object_get(p->root, "dead_tokens");
    if (dead && !json_is_boolean(dead))
        return perr(p, "manifest: \"dead_tokens\" must be true or false");
    p->cfg.dead_tokens = dead && json_is_true(dead);
    return 0;
}

static int parse_vocab_sizes(parse_ctx *p)
{
    size_t want = (size_t)p->cfg.max_ngram - 1;
    json_t *a = get_array(p, p->root, "engram_vocab_size", want, want);
    if (!a)
        return perr(p, "manifest: \"engram_vocab_size\" must be an array of %zu integers "
                       "(one per N-gram order 2..%d)", want, p->cfg.max_ngram);
    for (size_t i = 0; i < want; i++) {
        json_t *x = json_array_get(a, i);
        if (!json_is_integer(x) || json_integer_value(x) < 2)
            return perr(p, "manifest: engram_vocab_size[%zu] must be an integer >= 2", i);
        p->cfg.vocab_sizes[i] = (uint64_t)json_integer_value(x);
    }
    return 0;
}

static int parse_layers(parse_ctx *p)
{
    json_t *a = get_array(p, p->root, "layer_ids", 1, EH_MAX_LAYERS);
    if (!a)
        return -1;
    p->cfg.n_layers = (int)json_array_size(a);
    for (size_t i = 0; i < json_array_size(a); i++) {
        json_t *x = json_array_get(a, i);
        if (!json_is_integer(x) || json_integer_value(x) < 0)
            return perr(p, "manifest: layer_ids[%zu] must be a non-negative integer", i);
        p->cfg.layer_ids[i] = json_integer_value(x);
        for (size_t j = 0; j < i; j++)
            if (p->cfg.layer_ids[j] == p->cfg.layer_ids[i])
                return perr(p, "manifest: layer id %lld appears twice in layer_ids",
                            (long long)p->cfg.layer_ids[i]);
    }
    return 0;
}

/* Optional "compressed_vocab_size": the number of compressed ids the model
 * was trained with. Every hash multiplier derives from it, so a table built
 * from another tokenizer (or by another rule) would silently address other
 * rows; the reference engines assert it, and so does this. */
static int check_compressed_size(parse_ctx *p, size_t n)
{
    json_t *v = json_object_get(p->root, "compressed_vocab_size");
    if (!v)
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < 1)
        return perr(p, "manifest: \"compressed_vocab_size\" must be a positive integer");
    int64_t maxc = -1;
    for (size_t i = 0; i < n; i++)
        if (p->lookup[i] > maxc)
            maxc = p->lookup[i];
    if (maxc + 1 != json_integer_value(v))
        return perr(p, "manifest: compression.lookup_table maps %zu ids onto %lld compressed "
                       "ids, but \"compressed_vocab_size\" is %lld (a table from another "
                       "tokenizer or rule; every hash multiplier derives from this size)",
                    n, (long long)(maxc + 1), (long long)json_integer_value(v));
    return 0;
}

static int parse_compression(parse_ctx *p)
{
    json_t *c = json_object_get(p->root, "compression");
    if (!c && json_object_get(p->root, "compressed_vocab_size"))
        return perr(p, "manifest: missing key \"compression\": this is a template whose table "
                       "comes from the model's tokenizer; complete it with engramctl "
                       "compress-vocab --tokenizer tokenizer.json --manifest TEMPLATE --out "
                       "MANIFEST");
    if (!c)
        return perr(p, "manifest: missing key \"compression\"");
    if (!json_is_object(c))
        return perr(p, "manifest: \"compression\" must be an object with \"lookup_table\"");
    json_t *a = get_array(p, c, "lookup_table", 1, SIZE_MAX);
    if (!a)
        return -1;
    size_t n = json_array_size(a);
    p->lookup = malloc(n * sizeof *p->lookup);
    if (!p->lookup)
        return perr(p, "manifest: out of memory for a compression table of %zu ids", n);
    for (size_t i = 0; i < n; i++) {
        json_t *x = json_array_get(a, i);
        if (!json_is_integer(x) || json_integer_value(x) < 0)
            return perr(p, "manifest: compression.lookup_table[%zu] must be a non-negative integer", i);
        p->lookup[i] = json_integer_value(x);
    }
    p->cfg.lookup = p->lookup;
    p->cfg.lookup_len = n;
    return check_compressed_size(p, n);
}

static int layer_index_of_key(parse_ctx *p, const char *key, const char *what)
{
    char *end;
    errno = 0;
    long long id = strtoll(key, &end, 10);
    if (errno || end == key || *end)
        return perr(p, "manifest: %s key \"%s\" is not a layer id", what, key);
    for (int i = 0; i < p->cfg.n_layers; i++)
        if (p->cfg.layer_ids[i] == id)
            return i;
    return perr(p, "manifest: %s names layer %lld, which is not in layer_ids", what, id);
}

static int parse_multiplier(parse_ctx *p, json_t *x, const char *layer, size_t k, int64_t *out)
{
    unsigned long long v = 0;
    if (json_is_string(x)) {
        const char *s = json_string_value(x);
        char *end;
        errno = 0;
        v = strtoull(s, &end, 10);
        if (errno || end == s || *end || *s == '-')
            return perr(p, "manifest: multipliers[\"%s\"][%zu] \"%s\" is not a decimal integer",
                        layer, k, s);
    } else if (json_is_integer(x) && json_integer_value(x) > 0) {
        v = (unsigned long long)json_integer_value(x);
    } else {
        return perr(p, "manifest: multipliers[\"%s\"][%zu] must be a decimal string", layer, k);
    }
    if (v == 0 || v > (unsigned long long)INT64_MAX)
        return perr(p, "manifest: multipliers[\"%s\"][%zu] = %llu is outside 1..2^63-1", layer, k, v);
    if (!(v & 1))
        return perr(p, "manifest: multipliers[\"%s\"][%zu] = %llu is not odd", layer, k, v);
    *out = (int64_t)v;
    return 0;
}

static int parse_multipliers(parse_ctx *p)
{
    json_t *o = json_object_get(p->root, "multipliers");
    if (!o)
        return 0;
    if (!json_is_object(o))
        return perr(p, "manifest: \"multipliers\" must be an object keyed by layer id");
    const char *key;
    json_t *a;
    json_object_foreach(o, key, a) {
        int li = layer_index_of_key(p, key, "multipliers");
        if (li < 0)
            return -1;
        if (!json_is_array(a) || json_array_size(a) != (size_t)p->cfg.max_ngram)
            return perr(p, "manifest: multipliers[\"%s\"] must hold max_ngram_size = %d values",
                        key, p->cfg.max_ngram);
        for (size_t k = 0; k < json_array_size(a); k++)
            if (parse_multiplier(p, json_array_get(a, k), key, k, &p->cfg.multipliers[li][k]))
                return -1;
        p->cfg.has_multipliers[li] = 1;
    }
    return 0;
}

static int parse_tables(parse_ctx *p)
{
    json_t *o = json_object_get(p->root, "tables");
    if (!o)
        return perr(p, "manifest: missing key \"tables\"");
    if (!json_is_object(o))
        return perr(p, "manifest: \"tables\" must be an object mapping layer id to table name");
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v) {
        int li = layer_index_of_key(p, key, "tables");
        if (li < 0)
            return -1;
        if (!json_is_string(v) || !engram_name_valid(json_string_value(v)))
            return perr(p, "manifest: tables[\"%s\"] must be a table name of 1-128 characters of [A-Za-z0-9._-]", key);
        snprintf(p->m->tables[li], sizeof p->m->tables[li], "%s", json_string_value(v));
    }
    for (int i = 0; i < p->cfg.n_layers; i++)
        if (!p->m->tables[i][0])
            return perr(p, "manifest: layer %lld has no table in \"tables\"", (long long)p->cfg.layer_ids[i]);
    return 0;
}

/* ---- primes and offsets: derived, and checked when given ------------------ */

/* A manifest may carry the derived primes and head offsets (as the
 * reference vectors list them). They follow from engram_vocab_size,
 * n_head_per_ngram and layer_ids and cannot be set: a manifest that gives
 * them must give exactly the derived values, so it can never be used with
 * other primes than the ones it was written for. */
#define DERIVED_WHY "(primes and offsets follow from engram_vocab_size, n_head_per_ngram and " \
                    "layer_ids; they cannot be set)"

/* A non-negative integer or a decimal string; `what` names it in errors. */
static int parse_u64_value(parse_ctx *p, json_t *x, const char *what, uint64_t *out)
{
    if (json_is_integer(x) && json_integer_value(x) >= 0) {
        *out = (uint64_t)json_integer_value(x);
        return 0;
    }
    if (json_is_string(x)) {
        const char *s = json_string_value(x);
        char *end;
        errno = 0;
        unsigned long long v = strtoull(s, &end, 10);
        if (!errno && end != s && !*end && *s != '-' && *s != '+' && *s != ' ') {
            *out = v;
            return 0;
        }
    }
    return perr(p, "manifest: %s must be a non-negative integer or a decimal string", what);
}

/* Maps the keys of an object keyed by layer id to layer indexes: by_li[li]
 * is that layer's value (NULL when not given), keys[li] its key. */
static int by_layer(parse_ctx *p, json_t *o, const char *what, json_t **by_li, const char **keys)
{
    if (!json_is_object(o))
        return perr(p, "manifest: \"%s\" must be an object keyed by layer id", what);
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v) {
        int li = layer_index_of_key(p, key, what);
        if (li < 0)
            return -1;
        if (by_li[li])
            return perr(p, "manifest: %s names layer %lld twice (\"%s\" and \"%s\")", what,
                        (long long)p->cfg.layer_ids[li], keys[li], key);
        by_li[li] = v;
        keys[li] = key;
    }
    return 0;
}

/* One layer's given values against the derived ones, head by head. */
static int check_values(parse_ctx *p, json_t *a, size_t n, const uint64_t *derived,
                        const char *what, const char *noun)
{
    char item[96];
    if (!json_is_array(a) || json_array_size(a) != n)
        return perr(p, "manifest: %s must be an array of %zu values", what, n);
    for (size_t i = 0; i < n; i++) {
        uint64_t v = 0;
        snprintf(item, sizeof item, "%s[%zu]", what, i);
        if (parse_u64_value(p, json_array_get(a, i), item, &v))
            return -1;
        if (v != derived[i])
            return perr(p, "manifest: %s = %llu differs from the derived %s %llu " DERIVED_WHY,
                        item, (unsigned long long)v, noun, (unsigned long long)derived[i]);
    }
    return 0;
}

/* "primes": {"<layer id>": {"2": [one per head of order 2], ..., "<max_ngram_size>": [...]}} */
static int check_layer_primes(parse_ctx *p, json_t *o, const char *key, const eh_layer *l)
{
    char what[96];
    snprintf(what, sizeof what, "primes[\"%s\"]", key);
    int nmax = p->cfg.max_ngram, nh = p->cfg.n_head_per_ngram;
    if (!json_is_object(o))
        return perr(p, "manifest: %s must be an object keyed by N-gram order 2..%d", what, nmax);
    const char *ok;
    json_t *v;
    json_object_foreach(o, ok, v) {
        char canon[16];
        long n = strtol(ok, NULL, 10);
        snprintf(canon, sizeof canon, "%ld", n);
        if (n < 2 || n > nmax || strcmp(canon, ok) != 0)
            return perr(p, "manifest: %s key \"%s\" is not an N-gram order 2..%d", what, ok, nmax);
    }
    for (int n = 2; n <= nmax; n++) {
        char order[16], item[112];
        snprintf(order, sizeof order, "%d", n);
        snprintf(item, sizeof item, "%s[\"%d\"]", what, n);
        json_t *a = json_object_get(o, order);
        if (!a)
            return perr(p, "manifest: %s lacks order \"%d\"", what, n);
        if (check_values(p, a, (size_t)nh, l->primes + (size_t)(n - 2) * nh, item, "prime"))
            return -1;
    }
    return 0;
}

static int check_derived(parse_ctx *p)
{
    const eh_model *m = p->m->model;
    json_t *primes = json_object_get(p->root, "primes"), *offsets = json_object_get(p->root, "offsets");
    json_t *pl[EH_MAX_LAYERS] = {0}, *ol[EH_MAX_LAYERS] = {0};
    const char *pk[EH_MAX_LAYERS], *okeys[EH_MAX_LAYERS];
    if ((primes && by_layer(p, primes, "primes", pl, pk)) ||
        (offsets && by_layer(p, offsets, "offsets", ol, okeys)))
        return -1;
    for (int li = 0; li < m->n_layers; li++)
        if (pl[li] && check_layer_primes(p, pl[li], pk[li], &m->layers[li]))
            return -1;
    for (int li = 0; li < m->n_layers; li++) {
        char what[96];
        if (!ol[li])
            continue;
        snprintf(what, sizeof what, "offsets[\"%s\"]", okeys[li]);
        if (check_values(p, ol[li], (size_t)m->heads, m->layers[li].offsets, what, "offset"))
            return -1;
    }
    return 0;
}

static int parse_identity(parse_ctx *p)
{
    const char *name = get_str(p, p->root, "name");
    if (!name)
        return -1;
    if (!engram_name_valid(name))
        return perr(p, "manifest: name \"%.140s\" must be 1-128 characters of [A-Za-z0-9._-]", name);
    snprintf(p->m->name, sizeof p->m->name, "%s", name);
    const char *dtype = get_str(p, p->root, "dtype");
    if (!dtype)
        return -1;
    size_t es = dtype_size(dtype);
    if (!es)
        return perr(p, "manifest: unknown dtype \"%.32s\"; expected one of %s", dtype, dtype_list());
    snprintf(p->m->dtype, sizeof p->m->dtype, "%s", dtype);
    uint64_t rb = dtype_row_bytes(dtype, p->m->dim);
    if (!rb || rb > UINT32_MAX)
        return perr(p, "manifest: a row of %u %s values has no valid size (mxfp8_e4m3 needs a "
                       "multiple of %d)", p->m->dim, dtype, DTYPE_MX_BLOCK);
    p->m->row_bytes = (uint32_t)rb;
    return 0;
}

static int parse_all(parse_ctx *p)
{
    if (parse_shape(p) || parse_identity(p) || parse_vocab_sizes(p) || parse_layers(p) ||
        parse_compression(p) || parse_multipliers(p) || parse_tables(p))
        return -1;
    char why[400];
    p->m->model = eh_model_create(&p->cfg, why, sizeof why);
    if (!p->m->model)
        return perr(p, "manifest: %s", why);
    return check_derived(p);
}

engram_manifest *manifest_parse(const char *json, size_t len, char *err, size_t errlen)
{
    json_error_t je;
    parse_ctx p = {.err = err, .errlen = errlen};
    p.root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je);
    if (!p.root) {
        snprintf(err, errlen, "manifest: invalid JSON at line %d column %d: %s", je.line, je.column, je.text);
        return NULL;
    }
    p.m = calloc(1, sizeof *p.m);
    int rc = json_is_object(p.root) ? parse_all(&p) : perr(&p, "manifest: the document must be a JSON object");
    json_decref(p.root);
    free(p.lookup);              /* eh_model_create keeps its own copy */
    if (rc) {
        manifest_free(p.m);
        return NULL;
    }
    return p.m;
}

engram_manifest *manifest_load(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot open manifest %s: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = NULL;
    size_t len = 0, cap = 0, n;
    do {
        if (len == cap)
            buf = realloc(buf, cap = cap ? cap * 2 : 1 << 16);
        n = fread(buf + len, 1, cap - len, f);
        len += n;
    } while (n > 0);
    fclose(f);
    engram_manifest *m = manifest_parse(buf, len, err, errlen);
    free(buf);
    return m;
}

void manifest_free(engram_manifest *m)
{
    if (!m)
        return;
    eh_model_free(m->model);
    free(m);
}

int manifest_check_table(const engram_manifest *m, int li, uint64_t rows, uint32_t row_bytes,
                         uint32_t dim, const char *dtype, char *err, size_t errlen)
{
    const eh_layer *l = &m->model->layers[li];
    const char *t = m->tables[li];
    if (rows != l->total_rows)
        snprintf(err, errlen, "table \"%s\" of layer %lld has %llu rows; the manifest needs %llu (the sum of the layer's primes)",
                 t, (long long)l->layer_id, (unsigned long long)rows, (unsigned long long)l->total_rows);
    else if (strcmp(dtype, m->dtype) != 0)
        snprintf(err, errlen, "table \"%s\" of layer %lld has dtype %s; the manifest says %s",
                 t, (long long)l->layer_id, dtype, m->dtype);
    else if (dim != m->dim || row_bytes != m->row_bytes)
        snprintf(err, errlen, "table \"%s\" of layer %lld has dim %u (%u-byte rows); the manifest needs dim %u (%u-byte rows)",
                 t, (long long)l->layer_id, dim, row_bytes, m->dim, m->row_bytes);
    else
        return 0;
    return -1;
}

uint64_t manifest_synthetic_seed(uint64_t seed, int64_t layer_id)
{
    return splitmix64(seed ^ ((uint64_t)layer_id * 0xD1B54A32D192ED03ULL));
}
