/* dtype.h: element types a table may hold, and their sizes.
 *
 * The store itself moves opaque rows; the dtype and dim are metadata a model
 * checks against (row_bytes must equal dim * dtype size). */
#ifndef ENGRAM_COMMON_DTYPE_H
#define ENGRAM_COMMON_DTYPE_H

#include <stddef.h>

/* Size in bytes of one element of `name` ("bf16" -> 2), or 0 if unknown. */
size_t dtype_size(const char *name);

/* The accepted names, comma separated, for error messages and --help. */
const char *dtype_list(void);

#endif
