/* safetensors.c: the .safetensors header parser behind `engramctl import
 * --tensor` (format in safetensors.h). The JSON is parsed with jansson;
 * every entry is checked before anything is imported, because a checkpoint
 * is untrusted input and a bad offset would otherwise surface as a short
 * read halfway through an import (or as wrong rows, which is worse).
 *
 * Unknown dtypes are kept, not refused: a checkpoint may hold tensors of
 * types engram never stores (I64 step counters, packed F4) next to the one
 * being imported; only the chosen tensor's dtype must be supported. */
#include "safetensors.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const struct { const char *st, *engram; size_t size; } st_dtypes[] = {
    {"BF16", "bf16", 2}, {"F16", "f16", 2},   {"F32", "f32", 4},
    {"F64", "f64", 8},   {"I8", "i8", 1},     {"U8", "u8", 1},
    {"I16", "i16", 2},   {"I32", "i32", 4},   {"F8_E4M3", "fp8_e4m3", 1},
    {"F8_E5M2", "fp8_e5m2", 1},
    /* Known to safetensors, not storable by engram. */
    {"BOOL", NULL, 1},   {"U16", NULL, 2},    {"U32", NULL, 4},
    {"U64", NULL, 8},    {"I64", NULL, 8},    {"F8_E8M0", NULL, 1},
    {"C64", NULL, 8},
};

size_t st_dtype_size(const char *st_dtype)
{
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
        if (!strcmp(st_dtypes[i].st, st_dtype))
            return st_dtypes[i].size;
    return 0;
}

const char *st_engram_dtype(const char *st_dtype)
{
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
        if (!strcmp(st_dtypes[i].st, st_dtype))
            return st_dtypes[i].engram;
    return NULL;
}

const char *st_supported_list(void)
{
    return "BF16, F16, F32, F64, I8, U8, I16, I32, F8_E4M3, F8_E5M2";
}

static int st_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int st_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

/* A non-negative JSON integer, or -1. */
static int get_u64(const json_t *v, uint64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return -1;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

static int parse_shape(const char *name, const json_t *a, st_tensor *t, char *err,
                       size_t errlen)
{
    if (!json_is_array(a))
        return st_err(err, errlen, "tensor \"%s\": \"shape\" is missing or not an array",
                      name);
    if (json_array_size(a) > ST_MAX_DIMS)
        return st_err(err, errlen, "tensor \"%s\": shape has %zu dimensions, more than %d",
                      name, json_array_size(a), ST_MAX_DIMS);
    t->ndim = (int)json_array_size(a);
    for (int i = 0; i < t->ndim; i++)
        if (get_u64(json_array_get(a, (size_t)i), &t->shape[i]))
            return st_err(err, errlen,
                          "tensor \"%s\": shape[%d] is not a non-negative integer", name, i);
    return 0;
}

static int parse_offsets(const char *name, const json_t *a, st_tensor *t, char *err,
                         size_t errlen)
{
    if (!json_is_array(a) || json_array_size(a) != 2 ||
        get_u64(json_array_get(a, 0), &t->begin) || get_u64(json_array_get(a, 1), &t->end))
        return st_err(err, errlen, "tensor \"%s\": \"data_offsets\" is not "
                      "[begin, end] of two non-negative integers", name);
    if (t->begin > t->end)
        return st_err(err, errlen, "tensor \"%s\": data_offsets [%llu, %llu) end before "
                      "they begin", name, (unsigned long long)t->begin,
                      (unsigned long long)t->end);
    return 0;
}

/* Writes "[a, b, c]" into buf. */
static void shape_str(const st_tensor *t, char *buf, size_t len)
{
    size_t o = (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < t->ndim && o < len; i++)
        o += (size_t)snprintf(buf + o, len - o, "%s%llu", i ? ", " : "",
                              (unsigned long long)t->shape[i]);
    if (o < len)
        snprintf(buf + o, len - o, "]");
}

/* The offsets must span exactly shape x dtype bytes and lie inside the
 * data section. Unknown dtypes only get the bounds check. */
static int check_extent(const st_tensor *t, uint64_t data_len, char *err, size_t errlen)
{
    if (t->end > data_len)
        return st_err(err, errlen, "tensor \"%s\": data_offsets end %llu is past the end of "
                      "the data section (%llu bytes)", t->name,
                      (unsigned long long)t->end, (unsigned long long)data_len);
    uint64_t es = st_dtype_size(t->dtype), bytes = es;
    if (!es)
        return 0;
    char sh[200];
    shape_str(t, sh, sizeof sh);
    for (int i = 0; i < t->ndim; i++) {
        if (t->shape[i] && bytes > UINT64_MAX / t->shape[i])
            return st_err(err, errlen, "tensor \"%s\": shape %s overflows 64 bits",
                          t->name, sh);
        bytes *= t->shape[i];
    }
    if (t->end - t->begin != bytes)
        return st_err(err, errlen, "tensor \"%s\": data_offsets [%llu, %llu) hold %llu "
                      "bytes; shape %s of %s needs %llu", t->name,
                      (unsigned long long)t->begin, (unsigned long long)t->end,
                      (unsigned long long)(t->end - t->begin), sh, t->dtype,
                      (unsigned long long)bytes);
    return 0;
}

static int parse_entry(const char *name, const json_t *v, uint64_t data_len, st_tensor *t,
                       char *err, size_t errlen)
{
    if (!json_is_object(v))
        return st_err(err, errlen, "tensor \"%s\": entry is not a JSON object", name);
    const json_t *d = json_object_get(v, "dtype");
    if (!json_is_string(d) || json_string_length(d) >= sizeof t->dtype ||
        json_string_length(d) == 0)
        return st_err(err, errlen, "tensor \"%s\": \"dtype\" is missing or not a short "
                      "string", name);
    snprintf(t->dtype, sizeof t->dtype, "%s", json_string_value(d));
    if (parse_shape(name, json_object_get(v, "shape"), t, err, errlen) ||
        parse_offsets(name, json_object_get(v, "data_offsets"), t, err, errlen))
        return -1;
    if (!(t->name = strdup(name)))
        return st_err(err, errlen, "out of memory");
    return check_extent(t, data_len, err, errlen);
}

/* Every key but __metadata__ is a tensor. */
static int parse_entries(const json_t *root, uint64_t data_len, st_file *f, char *err,
                         size_t errlen)
{
    f->tensors = calloc(json_object_size(root) + 1, sizeof *f->tensors); /* +1: never 0 */
    if (!f->tensors)
        return st_err(err, errlen, "out of memory");
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)root, key, v) {
        if (!strcmp(key, "__metadata__")) {
            if (!json_is_object(v))
                return st_err(err, errlen, "\"__metadata__\" is not a JSON object");
            continue;
        }
        if (parse_entry(key, v, data_len, &f->tensors[f->n++], err, errlen))
            return -1;
    }
    return 0;
}

/* The 8-byte length and its bounds against the file. */
static int parse_length(const uint8_t *buf, size_t len, uint64_t file_size, uint64_t *hlen,
                        char *err, size_t errlen)
{
    if (file_size < 8 || len < 8)
        return st_err(err, errlen, "%llu bytes is too short for a safetensors file (the "
                      "header length alone is 8 bytes)", (unsigned long long)file_size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = n << 8 | buf[i];
    if (n > ST_MAX_HEADER)
        return st_err(err, errlen, "header length %llu is over the %u-byte limit (not a "
                      "safetensors file?)", (unsigned long long)n, ST_MAX_HEADER);
    if (n > file_size - 8)
        return st_err(err, errlen, "header length %llu runs past the end of the file "
                      "(%llu bytes follow the length)", (unsigned long long)n,
                      (unsigned long long)(file_size - 8));
    *hlen = n;
    return 0;
}

int st_parse_header(const uint8_t *buf, size_t len, uint64_t file_size, st_file *out,
                    char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    uint64_t hlen;
    if (parse_length(buf, len, file_size, &hlen, err, errlen))
        return -1;
    if (hlen > len - 8)
        return st_err(err, errlen, "header of %llu bytes, only %zu given",
                      (unsigned long long)hlen, len - 8);
    json_error_t je;
    json_t *root = json_loadb((const char *)buf + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return st_err(err, errlen, "header is not valid JSON: %s (at header byte %d)",
                      je.text, je.position);
    int rc = json_is_object(root) ? 0 : st_err(err, errlen, "header is not a JSON object");
    out->header_len = hlen;
    out->data_start = 8 + hlen;
    if (!rc)
        rc = parse_entries(root, file_size - out->data_start, out, err, errlen);
    json_decref(root);
    if (rc)
        st_free(out);
    return rc;
}

/* Reads the length field, then exactly the header it announces. */
int st_read_file(const char *path, st_file *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return st_err(err, errlen, "%s", strerror(errno));
    struct stat st = {0};
    uint8_t head[8] = {0};
    size_t got = fstat(fileno(fp), &st) == 0 ? fread(head, 1, 8, fp) : 0;
    uint64_t hlen, size = (uint64_t)st.st_size;
    int rc = parse_length(head, got, size, &hlen, err, errlen);
    uint8_t *buf = rc ? NULL : malloc(8 + hlen);
    if (!rc && !buf)
        rc = st_err(err, errlen, "out of memory for a %llu-byte header",
                    (unsigned long long)hlen);
    if (!rc) {
        memcpy(buf, head, 8);
        if (fread(buf + 8, 1, hlen, fp) != hlen)
            rc = st_err(err, errlen, "short read of the %llu-byte header",
                        (unsigned long long)hlen);
        else
            rc = st_parse_header(buf, 8 + hlen, size, out, err, errlen);
    }
    free(buf);
    fclose(fp);
    return rc;
}

void st_free(st_file *f)
{
    for (size_t i = 0; f->tensors && i < f->n; i++)
        free(f->tensors[i].name);
    free(f->tensors);
    memset(f, 0, sizeof *f);
}

const st_tensor *st_find(const st_file *f, const char *name)
{
    for (size_t i = 0; i < f->n; i++)
        if (!strcmp(f->tensors[i].name, name))
            return &f->tensors[i];
    return NULL;
}

void st_list_names(const st_file *f, size_t max, char *buf, size_t buflen)
{
    size_t o = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < f->n && i < max && o < buflen; i++)
        o += (size_t)snprintf(buf + o, buflen - o, "%s%s", i ? ", " : "", f->tensors[i].name);
    if (f->n > max && o < buflen)
        snprintf(buf + o, buflen - o, ", and %zu more", f->n - max);
}
