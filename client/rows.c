/* rows.c: a LookupResponse's rows, copied once, from the reply's slices
 * straight to their final places (ec_dest): the caller's buffer of an
 * engram_lookup_*, at the caller's positions when a cluster split the
 * request by shard, or every output row of a prefetch layer that asked for
 * the row (de-duplicated requests), dequantised to BF16 on the way when
 * the prefetch asked for it. Nothing is staged: the one exception is a
 * row to dequantise that two slices of the reply cut in half, which is
 * assembled in a row-sized buffer first (the conversion needs the whole
 * row).
 *
 * The common case, a reply that answers a whole plain lookup, streams
 * field 1 into the caller's buffer with the flat decoder (one memcpy per
 * slice). Everything else goes through a sink (common/wire.h) that learns
 * the row size from field 1's length (it must be rows * row_bytes, and
 * the rows come before row_bytes on the wire) and drops the bytes of a
 * reply whose length does not divide, which the size checks after the
 * decode then report. The same-node path (local.c) places rows read from
 * a mapped file through the same placement (ec_rows_gather). Whoever calls this decides that only one reply is
 * ever written per destination at a time (routed_lookup.c). */
#include "client_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer_reader.h>

#include "safe_gather.h"
#include "wire.h"

/* Reads the length of field 1 when it opens the message (tag 0x0a, then a
 * varint), looking at no more than the first few bytes, which may be split
 * over several slices. Returns 1 and sets *len, or 0 when the message does
 * not start that way (then the decoder alone judges it). */
static int peek_len(grpc_byte_buffer *bb, uint64_t *len)
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
static int decode_slices(lookup_decoder *d, grpc_byte_buffer *bb)
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
            rc = lookup_decoder_feed(d, GRPC_SLICE_START_PTR(s), GRPC_SLICE_LENGTH(s));
        grpc_slice_unref(s);
    }
    grpc_byte_buffer_reader_destroy(&r);
    return rc ? rc : lookup_decoder_finish(d);
}

/* The sink's state for one reply. */
typedef struct scatter {
    const ec_dest *d;
    const uint32_t *pos;   /* reply row j is request row pos[j]; NULL: j */
    size_t n;
    uint32_t rb;           /* row size, from field 1's length */
    size_t stride;         /* bytes between output rows */
    uint8_t *stage;        /* a split row to dequantise, assembled */
    int oom;
} scatter;

static int sc_open(void *ctx, uint64_t len, const char **why)
{
    scatter *sc = ctx;
    (void)why;
    if (sc->n == 0 || len % sc->n || len / sc->n > UINT32_MAX)
        return len ? 1 : 0;  /* judged after the decode */
    sc->rb = (uint32_t)(len / sc->n);
    if (sc->d->row_bytes && sc->rb != sc->d->row_bytes)
        return 1;
    sc->stride = sc->d->out_rb ? sc->d->out_rb : sc->rb;
    return 0;
}

/* Bytes [o, o + k) of a row go to output row `to`. */
static void put_row(scatter *sc, size_t to, uint32_t o, const uint8_t *p, size_t k)
{
    const ec_dest *d = sc->d;
    uint8_t *dst = d->out + to * sc->stride;
    if (d->dequant_dim)   /* always a whole row (sc_put stages split ones) */
        engram_dequant_bf16(p, 1, d->dequant_dim, (uint16_t *)dst, NULL);
    else
        memcpy(dst + o, p, k);
}

/* Writes request row i (or its part [o, o + k)) to every place it goes. */
static void put_dests(scatter *sc, size_t i, uint32_t o, const uint8_t *row, size_t k)
{
    const ec_dest *d = sc->d;
    if (d->first)
        for (uint32_t t = d->first[i]; t < d->first[i + 1]; t++)
            put_row(sc, d->idx[t], o, row, k);
    else
        put_row(sc, i, o, row, k);
}

static void sc_put(void *ctx, uint64_t off, const uint8_t *p, size_t n)
{
    scatter *sc = ctx;
    size_t j = (size_t)(off / sc->rb);     /* reply row, and where in it */
    uint32_t o = (uint32_t)(off % sc->rb);
    for (; n; j++, o = 0) {
        size_t k = sc->rb - o < n ? sc->rb - o : n;
        size_t i = sc->pos ? sc->pos[j] : j;
        if (!sc->d->dequant_dim || k == sc->rb) {
            put_dests(sc, i, o, p, k);
        } else {
            /* Part of a row to dequantise: stage it; convert it whole. */
            if (!sc->stage && !(sc->stage = malloc(sc->rb))) {
                sc->oom = 1;
                return;
            }
            memcpy(sc->stage + o, p, k);
            if (o + k == sc->rb)
                put_dests(sc, i, 0, sc->stage, sc->rb);
        }
        p += k;
        n -= k;
    }
}

void ec_rows_gather(const ec_dest *d, const uint32_t *pos, size_t n, uint32_t rb,
                    const uint8_t *base, const uint64_t *rows)
{
    /* The sink's placement and dequantisation, one whole row at a time
     * (so nothing is ever staged). */
    scatter sc = {.d = d, .pos = pos, .n = n, .rb = rb, .stride = d->out_rb ? d->out_rb : rb};
    for (size_t j = 0; j < n; j++) {
        if (j + SAFE_GATHER_AHEAD < n)
            safe_gather_prefetch(base + rows[j + SAFE_GATHER_AHEAD] * rb, rb);
        put_dests(&sc, pos ? pos[j] : j, 0, base + rows[j] * rb, rb);
    }
}

int ec_rows_decode(const ec_dest *d, const uint32_t *pos, size_t n, size_t lookup_n,
                   grpc_byte_buffer *reply, uint32_t *row_bytes, uint64_t *version, char *msg,
                   size_t msg_cap)
{
    if (!reply) {
        snprintf(msg, msg_cap, "server sent OK but no reply message");
        return ENGRAM_INTERNAL;
    }
    int whole = n == lookup_n;
    int flat = !pos && !d->first && !d->out_rb && !d->dequant_dim;
    /* The most bytes this reply may carry. */
    uint64_t cap;
    if (flat)
        cap = d->out_cap;
    else if (d->row_bytes)
        cap = (uint64_t)n * d->row_bytes;
    else
        cap = (uint64_t)n * (lookup_n ? d->out_cap / lookup_n : 0);
    uint64_t len;
    if (peek_len(reply, &len) && len > cap) {
        if (whole)
            snprintf(msg, msg_cap, "reply of %llu bytes does not fit out_cap %zu",
                     (unsigned long long)len, d->out_cap);
        else
            snprintf(msg, msg_cap, "reply of %llu bytes for %zu rows does not fit out_cap %zu (%zu rows)",
                     (unsigned long long)len, n, d->out_cap, lookup_n);
        return ENGRAM_INVALID_ARGUMENT;
    }
    lookup_decoder dec;
    scatter sc = {.d = d, .pos = pos, .n = n};
    lookup_sink sink = {.open = sc_open, .put = sc_put, .ctx = &sc};
    if (flat)
        lookup_decoder_init(&dec, d->out, cap);
    else
        lookup_decoder_init_sink(&dec, &sink, cap);
    int rc = decode_slices(&dec, reply);
    free(sc.stage);
    if (sc.oom) {
        snprintf(msg, msg_cap, "out of memory for a %u-byte row", sc.rb);
        return ENGRAM_RESOURCE_EXHAUSTED;
    }
    if (rc < 0) {
        snprintf(msg, msg_cap, "malformed LookupResponse: %s", dec.error);
        return ENGRAM_INTERNAL;
    }
    /* The reply must carry exactly n rows of its declared row size. */
    uint32_t rb = dec.row_bytes;
    uint64_t got = dec.seen_data ? dec.data_len : 0;
    *row_bytes = rb;
    *version = dec.version;
    if (n > 0 && rb == 0) {
        snprintf(msg, msg_cap, "reply for %zu rows declares row_bytes 0", n);
        return ENGRAM_DATA_LOSS;
    }
    if ((rb && n > UINT64_MAX / rb) || (uint64_t)n * rb != got) {
        snprintf(msg, msg_cap, "reply carries %llu bytes, want %zu rows of %u bytes",
                 (unsigned long long)got, n, rb);
        return ENGRAM_DATA_LOSS;
    }
    if (d->row_bytes && rb != d->row_bytes) {
        snprintf(msg, msg_cap, "reply has %u-byte rows; the table's rows are %u bytes", rb,
                 d->row_bytes);
        return ENGRAM_DATA_LOSS;
    }
    return ENGRAM_OK;
}
