/* structs.c: the growing structs of engram.h (options and requests).
 *
 * Each starts with size_t struct_size. The library reads a caller's struct
 * through ec_struct_read: only the bytes the caller declared are copied
 * over a copy holding this library's defaults, so an older caller gets
 * defaults for the fields it does not know, and a newer caller's extra
 * fields are accepted only while they are zero (unset), the way Linux's
 * copy_struct_from_user treats a larger struct. 0 stands for the first
 * layout, whose end is frozen below: when a field is added, these stay. */
#include "client_internal.h"

#include <stddef.h>
#include <string.h>

#define END_OF(type, field) (offsetof(type, field) + sizeof(((type *)0)->field))

/* The first layouts (struct_size 0). Never change these. */
const size_t ec_client_options_v1 = END_OF(engram_client_options, prefetch_chunk_rows);
const size_t ec_import_target_v1 = END_OF(engram_import_target, shard_index);
const size_t ec_prefetch_request_v1 = END_OF(engram_prefetch_request, flags);
const size_t ec_warm_request_v1 = END_OF(engram_warm_request, progress_ctx);

int ec_struct_read(void *dst, size_t dst_size, size_t v1_size, const void *src, const char *name,
                   engram_error *err)
{
    size_t n;
    memcpy(&n, src, sizeof n);
    if (n == 0)
        n = v1_size;
    if (n < v1_size)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT,
                        "%s.struct_size is %zu, less than its first layout (%zu bytes): set it "
                        "with %s_init", name, n, v1_size, name);
    if (n > dst_size) {
        const unsigned char *extra = (const unsigned char *)src + dst_size;
        for (size_t i = 0; i < n - dst_size; i++)
            if (extra[i])
                return ec_error(err, ENGRAM_INVALID_ARGUMENT,
                                "%s sets a field at byte %zu that this libengram's %s "
                                "(%zu bytes) does not have: a newer header than the library",
                                name, dst_size + i, name, dst_size);
        n = dst_size;
    }
    memcpy((char *)dst + sizeof n, (const char *)src + sizeof n, n - sizeof n);
    memcpy(dst, &dst_size, sizeof dst_size);
    return ENGRAM_OK;
}
