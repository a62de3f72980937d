/* fuzz_lookup_request.c: libFuzzer target for lookup_request_parse, the
 * server's in-place LookupRequest parser (common/wire.c), on the bytes of
 * one gRPC message as a client sent them.
 *
 * Beyond "no crash", an accepted request must round-trip: written back with
 * the client's encoder (lookup_request_put) and parsed again, it gives the
 * same table, rows and version, since both sides claim protobuf's wire
 * format. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "wire.h"

/* Reused across runs, as the server reuses its per-thread buffer. */
static uint64_t *rows_buf, *rows_buf2;
static size_t rows_cap, rows_cap2;

static void check_round_trip(const lookup_request_view *v)
{
    size_t rows_len;
    size_t len = lookup_request_len(v->table_len, v->rows, v->n_rows, v->version, &rows_len);
    uint8_t *enc = malloc(len ? len : 1);
    if (lookup_request_put(enc, (const char *)v->table, v->table_len, v->rows, v->n_rows,
                           rows_len, v->version) != len)
        abort();
    lookup_request_view w;
    const char *err;
    size_t at;
    if (lookup_request_parse(enc, len, SIZE_MAX, &w, &rows_buf2, &rows_cap2, &err, &at) != 0)
        abort();
    if (w.table_len != v->table_len || memcmp(w.table, v->table, v->table_len) ||
        w.n_rows != v->n_rows || w.version != v->version ||
        (v->n_rows && memcmp(w.rows, v->rows, v->n_rows * sizeof *v->rows)))
        abort();
    free(enc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lookup_request_view v;
    const char *err;
    size_t at;
    /* Under a limit of 4096 rows the scratch never grows past 8192
     * entries (reserves round up to powers of two), whatever the input. */
    int rc = lookup_request_parse(data, size, 4096, &v, &rows_buf, &rows_cap, &err, &at);
    if (rows_cap > 8192)
        abort();
    if (rc == 1) {
        if (v.n_rows <= 4096 || v.n_rows > size)
            abort();
        return 0;
    }
    if (rc != 0) {
        if (!err || at >= size)
            abort();             /* an error must say what and where */
        return 0;
    }
    /* The table points into the message; each row costs at least a byte. */
    if (v.table_len && (v.table < data || v.table + v.table_len > data + size))
        abort();
    if (v.n_rows > size)
        abort();
    check_round_trip(&v);
    return 0;
}
