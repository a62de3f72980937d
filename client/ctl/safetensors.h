/* safetensors.h: reading the header of a .safetensors file (the format
 * Hugging Face checkpoints ship in), so engramctl can import one tensor of
 * a checkpoint without loading the file.
 *
 * The format: an 8-byte little-endian header length N, N bytes of JSON
 * mapping each tensor name to {"dtype", "shape", "data_offsets": [begin,
 * end)} (offsets relative to the data section, which starts at 8 + N), and
 * an optional "__metadata__" object of strings; then the raw data.
 *
 * st_parse_header works on bytes in memory and checks everything against
 * the file's size, so a fuzz target can call it on arbitrary input. */
#ifndef ENGRAM_CTL_SAFETENSORS_H
#define ENGRAM_CTL_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

/* The most header bytes accepted (as the reference implementation): a
 * larger length is a corrupt or hostile file, not a checkpoint. */
#define ST_MAX_HEADER (100u * 1000 * 1000)
#define ST_MAX_DIMS 8

typedef struct st_tensor {
    char *name;
    char dtype[16];             /* as in the file: "BF16", "F32", ... */
    int ndim;
    uint64_t shape[ST_MAX_DIMS];
    uint64_t begin, end;        /* data_offsets, relative to data_start */
} st_tensor;

typedef struct st_file {
    uint64_t header_len;        /* N */
    uint64_t data_start;        /* 8 + N: where offset 0 lies in the file */
    size_t n;
    st_tensor *tensors;         /* in the header's order */
} st_file;

/* Parses buf, the first len bytes of a file of file_size bytes (len >= 8 +
 * N is needed): the length, the JSON, every tensor entry, and each entry's
 * offsets against its shape, dtype and the data section. Returns 0, or -1
 * with err naming the problem (nothing to free then). */
int st_parse_header(const uint8_t *buf, size_t len, uint64_t file_size, st_file *out,
                    char *err, size_t errlen);

/* Opens path, reads just its header and parses it. Returns 0, or -1 with
 * err (which does not repeat the path). */
int st_read_file(const char *path, st_file *out, char *err, size_t errlen);

void st_free(st_file *f);

/* The tensor called name, or NULL. */
const st_tensor *st_find(const st_file *f, const char *name);

/* Bytes per element of a safetensors dtype ("BF16" -> 2), 0 when unknown
 * or packed below a byte. */
size_t st_dtype_size(const char *st_dtype);

/* The engram dtype (common/dtype.c) a safetensors dtype is stored as
 * ("BF16" -> "bf16"), or NULL when engram has no such type. */
const char *st_engram_dtype(const char *st_dtype);

/* The safetensors dtypes st_engram_dtype maps, for messages. */
const char *st_supported_list(void);

/* Writes up to `max` tensor names, comma separated ("..., and N more"),
 * into buf. */
void st_list_names(const st_file *f, size_t max, char *buf, size_t buflen);

#endif
