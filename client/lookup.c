/* lookup.c: Lookup.Lookup, synchronous and asynchronous.
 *
 * A lookup is an ec_call (client.c) whose decode hook runs on the client's
 * completion thread: it streams the reply's slices through lookup_decoder
 * (common/wire.h), which copies the `data` field straight into the caller's
 * buffer. No readall, no protobuf-c unpack: the reply bytes are copied
 * exactly once. The decoder refuses to write past out_cap, and after
 * decoding the reply must hold exactly n * row_bytes bytes, so a caller
 * never gets a silently short or overrun buffer.
 *
 * That is single mode. When the client found a cluster (cluster.c decides
 * on the first lookup), the handle only wraps a routed lookup of
 * cluster.c, and every call below hands over to it. */
#include "client_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer_reader.h>

#include "wire.h"

struct engram_lookup {
    ec_call c;          /* first: the decode hook casts back from it */
    uint8_t *out;
    size_t out_cap;
    size_t n;
    uint32_t row_bytes; /* from the reply, valid once finished OK */
    uint64_t version;
    ec_clookup *cluster;  /* cluster mode: the routed lookup; c is unused */
};

/* Reads the length of field 1 when it opens the message (tag 0x0a, then a
 * varint), looking at no more than the first few bytes, which may be split
 * over several slices. Returns 1 and sets *len, or 0 when the message does
 * not start that way (then the decoder alone judges it). Shared with
 * cluster.c. */
int ec_lookup_peek_len(grpc_byte_buffer *bb, uint64_t *len)
{
    grpc_byte_buffer_reader r;
    if (!grpc_byte_buffer_reader_init(&r, bb))
        return 0;
    uint8_t head[1 + WIRE_VARINT_MAX];
    size_t got = 0;
    grpc_slice s;
    while (got < sizeof head && grpc_byte_buffer_reader_next(&r, &s)) {
        size_t take = GRPC_SLICE_LENGTH(s);
        if (take > sizeof head - got)
            take = sizeof head - got;
        memcpy(head + got, GRPC_SLICE_START_PTR(s), take);
        got += take;
        grpc_slice_unref(s);
    }
    grpc_byte_buffer_reader_destroy(&r);
    if (got < 2 || head[0] != 0x0a)
        return 0;
    uint64_t v = 0;
    for (size_t i = 1; i < got && i <= WIRE_VARINT_MAX; i++) {
        v |= (uint64_t)(head[i] & 0x7f) << (7 * (i - 1));
        if (!(head[i] & 0x80)) {
            *len = v;
            return 1;
        }
    }
    return 0;
}

/* Streams every slice of bb through the decoder; 0 or -1 (d->error). */
int ec_lookup_decode_slices(lookup_decoder *d, grpc_byte_buffer *bb)
{
    grpc_byte_buffer_reader r;
    if (!grpc_byte_buffer_reader_init(&r, bb)) {
        d->error = "cannot read the reply buffer";
        return -1;
    }
    grpc_slice s;
    int rc = 0;
    while (grpc_byte_buffer_reader_next(&r, &s)) {
        if (rc == 0)
            rc = lookup_decoder_feed(d, GRPC_SLICE_START_PTR(s),
                                     GRPC_SLICE_LENGTH(s));
        grpc_slice_unref(s);
    }
    grpc_byte_buffer_reader_destroy(&r);
    return rc ? rc : lookup_decoder_finish(d);
}

static int fail(ec_call *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(ec_call *c, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->message, sizeof c->message, fmt, ap);
    va_end(ap);
    return code;
}

/* The reply must carry exactly n rows of its declared row size. */
static int check_reply_size(engram_lookup *lk, uint64_t data_len)
{
    uint32_t rb = lk->row_bytes;
    if (lk->n > 0 && rb == 0)
        return fail(&lk->c, ENGRAM_DATA_LOSS,
                    "reply for %zu rows declares row_bytes 0", lk->n);
    if ((rb && lk->n > UINT64_MAX / rb) || (uint64_t)lk->n * rb != data_len)
        return fail(&lk->c, ENGRAM_DATA_LOSS,
                    "reply carries %llu bytes, want %zu rows of %u bytes",
                    (unsigned long long)data_len, lk->n, rb);
    return ENGRAM_OK;
}

/* Decode hook, on the completion thread. */
static int lookup_decode(ec_call *c, grpc_byte_buffer *reply)
{
    engram_lookup *lk = (engram_lookup *)c;
    if (!reply)
        return fail(c, ENGRAM_INTERNAL, "server sent OK but no reply message");
    uint64_t len;
    if (ec_lookup_peek_len(reply, &len) && len > lk->out_cap)
        return fail(c, ENGRAM_INVALID_ARGUMENT,
                    "reply of %llu bytes does not fit out_cap %zu",
                    (unsigned long long)len, lk->out_cap);
    lookup_decoder d;
    lookup_decoder_init(&d, lk->out, lk->out_cap);
    if (ec_lookup_decode_slices(&d, reply) < 0)
        return fail(c, ENGRAM_INTERNAL, "malformed LookupResponse: %s",
                    d.error);
    lk->row_bytes = d.row_bytes;
    lk->version = d.version;
    return check_reply_size(lk, d.seen_data ? d.data_len : 0);
}

static int check_args(engram_client *client, const char *table,
                      const uint64_t *rows, size_t n, void *out,
                      size_t out_cap, engram_error *err)
{
    if (!client)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "client is NULL");
    if (!table || !*table)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "table name is empty");
    if (n > 0 && !rows)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT,
                        "rows is NULL but n is %zu", n);
    if (out_cap > 0 && !out)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT,
                        "out is NULL but out_cap is %zu", out_cap);
    return ENGRAM_OK;
}

int engram_lookup_start(engram_client *client, const char *table,
                        const uint64_t *rows, size_t n, void *out,
                        size_t out_cap, engram_lookup **handle,
                        engram_error *err)
{
    if (!handle)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "handle is NULL");
    *handle = NULL;
    int rc = check_args(client, table, rows, n, out, out_cap, err);
    if (rc)
        return rc;
    int mode = __atomic_load_n(&client->mode, __ATOMIC_ACQUIRE);
    if (mode == EC_MODE_UNKNOWN && (rc = ec_cluster_discover(client, &mode, err)))
        return rc;
    engram_lookup *lk = calloc(1, sizeof *lk);
    if (!lk)
        return ec_error(err, ENGRAM_RESOURCE_EXHAUSTED, "out of memory");
    if (mode == EC_MODE_CLUSTER) {
        rc = ec_clookup_start(client, table, rows, n, out, out_cap, &lk->cluster, err);
        if (rc) {
            free(lk);
            return rc;
        }
        *handle = lk;
        return ENGRAM_OK;
    }
    __atomic_add_fetch(&client->counters.subrequests, 1, __ATOMIC_RELAXED);
    lk->out = out;
    lk->out_cap = out_cap;
    lk->n = n;
    ec_call_init(&lk->c, client, lookup_decode);

    /* Packed by hand (common/wire.c), straight from the caller's array. */
    size_t tlen = strlen(table), rows_len;
    size_t len = lookup_request_len(tlen, rows, n, 0, &rows_len);
    grpc_slice sl = grpc_slice_malloc(len);
    lookup_request_put(GRPC_SLICE_START_PTR(sl), table, tlen, rows, n, rows_len, 0);
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&sl, 1);
    grpc_slice_unref(sl);
    rc = ec_call_start_on(&lk->c, client->channel, client->m_lookup, bb, client->deadline_ms, err);
    if (rc) {
        ec_call_release(&lk->c);
        free(lk);
        return rc;
    }
    *handle = lk;
    return ENGRAM_OK;
}

int engram_lookup_wait(engram_lookup *handle, int64_t timeout_ms,
                       engram_error *err)
{
    if (!handle)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "handle is NULL");
    if (handle->cluster)
        return ec_clookup_wait(handle->cluster, timeout_ms, err);
    return ec_call_wait(&handle->c, timeout_ms, err);
}

int engram_lookup_poll(engram_lookup *handle)
{
    if (handle && handle->cluster)
        return ec_clookup_poll(handle->cluster);
    return handle ? ec_call_poll(&handle->c) : 1;
}

void engram_lookup_result(const engram_lookup *handle, uint32_t *row_bytes,
                          uint64_t *version)
{
    if (handle && handle->cluster) {
        ec_clookup_result(handle->cluster, row_bytes, version);
        return;
    }
    if (row_bytes)
        *row_bytes = handle ? handle->row_bytes : 0;
    if (version)
        *version = handle ? handle->version : 0;
}

void engram_lookup_free(engram_lookup *handle)
{
    if (!handle)
        return;
    if (handle->cluster)
        ec_clookup_free(handle->cluster);
    else
        ec_call_release(&handle->c);
    free(handle);
}

int engram_lookup_sync(engram_client *client, const char *table,
                       const uint64_t *rows, size_t n, void *out,
                       size_t out_cap, uint32_t *row_bytes, uint64_t *version,
                       engram_error *err)
{
    engram_lookup *lk;
    int rc = engram_lookup_start(client, table, rows, n, out, out_cap, &lk,
                                 err);
    if (rc)
        return rc;
    rc = engram_lookup_wait(lk, -1, err);
    if (rc == ENGRAM_OK)
        engram_lookup_result(lk, row_bytes, version);
    engram_lookup_free(lk);
    return rc;
}
