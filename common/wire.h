/* wire.h: the hand-written parts of the protobuf wire format.
 *
 * LookupResponse carries up to tens of MiB in one `bytes` field. protobuf-c
 * would copy it twice (into a message, then into a buffer); instead the
 * server writes the field header itself and gathers rows straight into the
 * outgoing slice, and the client streams the field out of the received
 * slices into the caller's buffer. The bytes are wire-identical to what any
 * protobuf library produces, so every other client reads them unchanged.
 *
 * The decoder works on a stream of chunks with arbitrary boundaries (gRPC
 * hands a message over in slices that may split any varint). */
#ifndef ENGRAM_COMMON_WIRE_H
#define ENGRAM_COMMON_WIRE_H

#include <stddef.h>
#include <stdint.h>

#define WIRE_VARINT_MAX 10

size_t wire_varint_len(uint64_t v);
/* Writes v as a varint at p (room for WIRE_VARINT_MAX); returns bytes used. */
size_t wire_put_varint(uint8_t *p, uint64_t v);

/* Bytes before the row data in a LookupResponse carrying data_len bytes. */
size_t lookup_response_head_len(uint64_t data_len);
size_t lookup_response_put_head(uint8_t *p, uint64_t data_len);
/* Bytes after the row data: row_bytes (field 2) and version (field 3), each
 * omitted when zero as proto3 does. */
size_t lookup_response_tail_len(uint32_t row_bytes, uint64_t version);
size_t lookup_response_put_tail(uint8_t *p, uint32_t row_bytes, uint64_t version);

/* Where a decoder with a sink puts field 1 instead of a flat buffer (the
 * client scatters rows straight to their final places with it). `open` runs
 * once the field's length is known: 0 takes the bytes (then `put` gets
 * them in order, off counting from 0, in pieces as the reply's slices cut
 * them), 1 drops them (data_len still says how many there were), -1 fails
 * the decode with *why. */
typedef struct lookup_sink {
    int (*open)(void *ctx, uint64_t len, const char **why);
    void (*put)(void *ctx, uint64_t off, const uint8_t *p, size_t n);
    void *ctx;
} lookup_sink;

/* Streaming LookupResponse decoder. Field 1 is copied into `dst` (capacity
 * dst_cap), or handed to a sink; a field 1 longer than dst_cap is an error,
 * so a misbehaving server can never overrun the caller's buffer. Unknown
 * fields are skipped. */
typedef struct lookup_decoder {
    uint8_t *dst;
    uint64_t dst_cap;
    const lookup_sink *sink; /* instead of dst, when set */
    int drop;                /* the sink refused field 1's bytes */
    uint64_t data_len;   /* length of field 1 as declared */
    uint64_t data_got;
    uint32_t row_bytes;
    uint64_t version;
    int seen_data;
    /* internal state */
    int state;
    uint32_t field;
    uint32_t wiretype;
    uint64_t acc;
    int shift;
    uint64_t skip;
    const char *error;   /* set on malformed input */
} lookup_decoder;

void lookup_decoder_init(lookup_decoder *d, uint8_t *dst, uint64_t dst_cap);
/* The same with a sink (kept by pointer until the decode ends); dst_cap
 * still bounds field 1. */
void lookup_decoder_init_sink(lookup_decoder *d, const lookup_sink *sink, uint64_t dst_cap);
/* Feeds the next chunk; returns 0, or -1 with d->error set. */
int lookup_decoder_feed(lookup_decoder *d, const uint8_t *p, size_t n);
/* Ends the stream; returns 0 when the message was complete, else -1. */
int lookup_decoder_finish(lookup_decoder *d);

/* LookupRequest, written by hand by the client (byte-identical to what
 * protobuf-c packs: table, packed rows, version; empty fields omitted).
 * lookup_request_len also returns, in *rows_len, the packed rows' byte
 * count that lookup_request_put needs. */
size_t lookup_request_len(size_t table_len, const uint64_t *rows, size_t n, uint64_t version,
                          size_t *rows_len);
size_t lookup_request_put(uint8_t *p, const char *table, size_t table_len, const uint64_t *rows,
                          size_t n, size_t rows_len, uint64_t version);

/* LookupRequest, parsed in place without protobuf-c: the request of every
 * lookup is a name and up to 65536+ row ids, and protobuf-c's unpack (a
 * generic descriptor walk plus allocations) was 10% of the server's CPU at
 * 4096-row calls. Accepts what any protobuf peer may send: `rows` packed or
 * not (or both, concatenated), fields in any order, a repeated singular
 * field (the last wins), unknown fields of wire types 0, 1, 2 and 5
 * skipped. Rejects groups, truncated varints/lengths, over-long varints,
 * field number 0 and field numbers past protobuf's 2^29-1. */
typedef struct lookup_request_view {
    const uint8_t *table;   /* points into the message; not NUL-terminated */
    size_t table_len;
    uint64_t *rows;         /* == the caller's *rows_buf */
    size_t n_rows;
    uint64_t version;
} lookup_request_view;

/* Parses the n bytes at p. Rows are decoded into *rows_buf (capacity
 * *rows_cap entries), which is grown with realloc when needed and stays the
 * caller's to reuse and free; it never grows past max_rows entries (plus
 * rounding), whatever the message claims. Returns 0; 1 when the request
 * holds more than max_rows rows (out->n_rows is then their count and no row
 * is decoded); or -1 with *error set to a static description and *error_at
 * to the offending byte offset. */
int lookup_request_parse(const uint8_t *p, size_t n, size_t max_rows, lookup_request_view *out,
                         uint64_t **rows_buf, size_t *rows_cap, const char **error,
                         size_t *error_at);

#endif
