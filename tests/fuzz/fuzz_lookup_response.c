/* fuzz_lookup_response.c: libFuzzer target for the client's streaming
 * LookupResponse decoder (lookup_decoder_*, common/wire.c) on bytes a
 * server, or anything posing as one, sends back.
 *
 * Input: byte 0 sets the caller's buffer size (0..255 bytes) and byte 1
 * the chunk size the message is fed in (1..256), since gRPC may split a
 * message at any byte; the rest is the message. The decoder must never
 * write past the buffer (ASan sees the exact-size allocation) nor claim
 * more data than it holds. */
#include <stdint.h>
#include <stdlib.h>

#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    size_t cap = data[0], chunk = (size_t)data[1] + 1;
    data += 2;
    size -= 2;
    uint8_t *dst = malloc(cap ? cap : 1);
    lookup_decoder d;
    lookup_decoder_init(&d, dst, cap);
    int rc = 0;
    for (size_t i = 0; i < size && rc == 0; i += chunk)
        rc = lookup_decoder_feed(&d, data + i, size - i < chunk ? size - i : chunk);
    if (rc == 0)
        rc = lookup_decoder_finish(&d);
    if (rc != 0 && !d.error)
        abort();                 /* a failure must say why */
    if (d.data_got > d.data_len || d.data_len > cap)
        abort();
    free(dst);
    return 0;
}
