/* dtype.h: element types a table may hold, and their sizes.
 *
 * The store itself moves opaque rows; the dtype and dim are metadata a model
 * checks against (row_bytes must equal dim * dtype size). */
#ifndef ENGRAM_COMMON_DTYPE_H
#define ENGRAM_COMMON_DTYPE_H

#include <stddef.h>

#include <stdint.h>

/* Size in bytes of one element of `name` ("bf16" -> 2), or 0 if unknown.
 * For a block-scaled type this is one code, without its share of a scale:
 * use dtype_row_bytes for the size of a row. */
size_t dtype_size(const char *name);

/* The block-scaled type (OCP MX "MXFP8 E4M3"): a row of dim values is dim
 * E4M3 codes followed by dim / 32 E8M0 scales, one per 32 consecutive
 * codes; value = e4m3(code) x 2^(scale - 127). DeepSeek-V4.1's Engram rows
 * are this type at dim 256: 264 bytes. */
#define DTYPE_MXFP8_E4M3 "mxfp8_e4m3"
#define DTYPE_MX_BLOCK 32

/* Bytes of one row of `dim` elements of `name`: dim x dtype_size for a
 * plain type, dim + dim / 32 for mxfp8_e4m3 (dim a multiple of 32). 0 when
 * the name is unknown, dim is 0, or dim does not fit the type. */
uint64_t dtype_row_bytes(const char *name, uint64_t dim);

/* Finds the first value a row type cannot hold in n rows of `dim`
 * elements: for mxfp8_e4m3 a NaN code (0x7F or 0xFF) or a NaN scale (255).
 * Returns 0 when every byte is valid (and for every other type), else 1
 * with *row, *byte (offset in the row: < dim a code, else scale
 * byte - dim) and *value set. */
int dtype_find_invalid(const char *name, uint32_t dim, const uint8_t *rows, uint64_t n,
                       uint64_t *row, uint32_t *byte, uint8_t *value);

/* The accepted names, comma separated, for error messages and --help. */
const char *dtype_list(void);

#endif
