/* wire.c: varints, the LookupResponse head and tail the server writes by
 * hand, a chunked decoder for the client, and the server's LookupRequest
 * parser. See wire.h for why. */
#include "wire.h"

#include <stdlib.h>
#include <string.h>

/* Protobuf field numbers are 29 bits; a larger tag must not alias a small
 * field once cut to 32 bits (field 2^32+1 would read as field 1). */
#define FIELD_MAX ((1u << 29) - 1)

/* Inline here so the request encoder's per-row loop has no calls: ceil(bits
 * / 7) from the highest set bit, without a loop. */
static inline size_t varint_len(uint64_t v)
{
    unsigned bits = 64 - (unsigned)__builtin_clzll(v | 1);
    return (bits * 9 + 64) / 64;
}

static inline size_t put_varint(uint8_t *p, uint64_t v)
{
    size_t n = 0;
    while (v >= 0x80) {
        p[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (uint8_t)v;
    return n;
}

size_t wire_varint_len(uint64_t v)
{
    return varint_len(v);
}

size_t wire_put_varint(uint8_t *p, uint64_t v)
{
    return put_varint(p, v);
}

/* Field 1, wire type 2 (length-delimited): tag byte 0x0a. */
size_t lookup_response_head_len(uint64_t data_len)
{
    return data_len ? 1 + wire_varint_len(data_len) : 0;
}

size_t lookup_response_put_head(uint8_t *p, uint64_t data_len)
{
    if (!data_len)
        return 0;
    p[0] = 0x0a;
    return 1 + wire_put_varint(p + 1, data_len);
}

size_t lookup_response_tail_len(uint32_t row_bytes, uint64_t version)
{
    size_t n = 0;
    if (row_bytes)
        n += 1 + wire_varint_len(row_bytes);
    if (version)
        n += 1 + wire_varint_len(version);
    return n;
}

size_t lookup_response_put_tail(uint8_t *p, uint32_t row_bytes, uint64_t version)
{
    size_t n = 0;
    if (row_bytes) {
        p[n++] = 0x10; /* field 2, varint */
        n += wire_put_varint(p + n, row_bytes);
    }
    if (version) {
        p[n++] = 0x18; /* field 3, varint */
        n += wire_put_varint(p + n, version);
    }
    return n;
}

enum { D_TAG, D_VARINT, D_LEN, D_DATA, D_SKIP, D_FIXED };

void lookup_decoder_init(lookup_decoder *d, uint8_t *dst, uint64_t dst_cap)
{
    memset(d, 0, sizeof *d);
    d->dst = dst;
    d->dst_cap = dst_cap;
    d->state = D_TAG;
}

void lookup_decoder_init_sink(lookup_decoder *d, const lookup_sink *sink, uint64_t dst_cap)
{
    lookup_decoder_init(d, NULL, dst_cap);
    d->sink = sink;
}

static int fail(lookup_decoder *d, const char *why)
{
    d->error = why;
    return -1;
}

/* A whole varint has been read into d->acc: act on it per state. */
static int varint_done(lookup_decoder *d, int was)
{
    uint64_t v = d->acc;
    d->acc = 0;
    d->shift = 0;
    if (was == D_TAG) {
        if ((v >> 3) > FIELD_MAX)
            return fail(d, "field number above 2^29-1");
        d->field = (uint32_t)(v >> 3);
        d->wiretype = (uint32_t)(v & 7);
        if (d->field == 0)
            return fail(d, "field number 0");
        switch (d->wiretype) {
        case 0: d->state = D_VARINT; return 0;
        case 1: d->skip = 8; d->state = D_SKIP; return 0;
        case 2: d->state = D_LEN; return 0;
        case 5: d->skip = 4; d->state = D_SKIP; return 0;
        default: return fail(d, "unsupported wire type");
        }
    }
    if (was == D_VARINT) {
        if (d->field == 2 && v > UINT32_MAX)
            return fail(d, "row_bytes out of range");
        if (d->field == 2)
            d->row_bytes = (uint32_t)v;
        else if (d->field == 3)
            d->version = v;
        d->state = D_TAG;
        return 0;
    }
    /* D_LEN */
    if (d->field == 1) {
        if (d->seen_data)
            return fail(d, "data field repeated");
        if (v > d->dst_cap)
            return fail(d, "data longer than the caller's buffer");
        if (d->sink) {
            const char *why = "refused by the sink";
            int rc = d->sink->open(d->sink->ctx, v, &why);
            if (rc < 0)
                return fail(d, why);
            d->drop = rc == 1;
        }
        d->seen_data = 1;
        d->data_len = v;
        d->data_got = 0;
        d->state = v ? D_DATA : D_TAG;
        return 0;
    }
    if ((d->field == 2 || d->field == 3))
        return fail(d, "scalar field sent length-delimited");
    d->skip = v;
    d->state = v ? D_SKIP : D_TAG;
    return 0;
}

int lookup_decoder_feed(lookup_decoder *d, const uint8_t *p, size_t n)
{
    if (d->error)
        return -1;
    size_t i = 0;
    while (i < n) {
        if (d->state == D_DATA) {
            uint64_t want = d->data_len - d->data_got;
            size_t take = n - i < want ? n - i : (size_t)want;
            if (!d->sink)
                memcpy(d->dst + d->data_got, p + i, take);
            else if (!d->drop && take)
                d->sink->put(d->sink->ctx, d->data_got, p + i, take);
            d->data_got += take;
            i += take;
            if (d->data_got == d->data_len)
                d->state = D_TAG;
            continue;
        }
        if (d->state == D_SKIP) {
            size_t take = n - i < d->skip ? n - i : (size_t)d->skip;
            d->skip -= take;
            i += take;
            if (!d->skip)
                d->state = D_TAG;
            continue;
        }
        /* D_TAG, D_VARINT, D_LEN: one varint byte at a time */
        uint8_t b = p[i++];
        if (d->shift >= 64)
            return fail(d, "varint too long");
        d->acc |= (uint64_t)(b & 0x7f) << d->shift;
        d->shift += 7;
        if (!(b & 0x80) && varint_done(d, d->state) < 0)
            return -1;
    }
    return 0;
}

int lookup_decoder_finish(lookup_decoder *d)
{
    if (d->error)
        return -1;
    if (d->state != D_TAG || d->shift)
        return fail(d, "message truncated");
    return 0;
}

/* ---- LookupRequest encoder ----------------------------------------------- */

size_t lookup_request_len(size_t table_len, const uint64_t *rows, size_t n, uint64_t version,
                          size_t *rows_len)
{
    size_t r = 0;
    for (size_t i = 0; i < n; i++)
        r += varint_len(rows[i]);
    *rows_len = r;
    size_t len = 0;
    if (table_len)
        len += 1 + wire_varint_len(table_len) + table_len;
    if (n)
        len += 1 + wire_varint_len(r) + r;
    if (version)
        len += 1 + wire_varint_len(version);
    return len;
}

size_t lookup_request_put(uint8_t *p, const char *table, size_t table_len, const uint64_t *rows,
                          size_t n, size_t rows_len, uint64_t version)
{
    uint8_t *q = p;
    if (table_len) {
        *q++ = 0x0a;
        q += wire_put_varint(q, table_len);
        memcpy(q, table, table_len);
        q += table_len;
    }
    if (n) {
        *q++ = 0x12;
        q += wire_put_varint(q, rows_len);
        for (size_t i = 0; i < n; i++)
            q += put_varint(q, rows[i]);
    }
    if (version) {
        *q++ = 0x18;
        q += wire_put_varint(q, version);
    }
    return (size_t)(q - p);
}

/* ---- LookupRequest parser ------------------------------------------------ */

typedef struct rd {
    const uint8_t *p;
    size_t i, n;
    const char *error;
    size_t max_rows;        /* past this many, rows are counted, not stored */
    size_t counted;         /* rows seen in all (== n_rows until the limit) */
} rd;



static int rd_varint(rd *r, uint64_t *v)
{
    uint64_t x = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (r->i >= r->n) {
            r->error = "truncated varint";
            return -1;
        }
        uint8_t b = r->p[r->i++];
        x |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = x;
            return 0;
        }
    }
    r->error = "varint longer than 10 bytes";
    return -1;
}

static int rd_len(rd *r, uint64_t *len)
{
    if (rd_varint(r, len) < 0)
        return -1;
    if (*len > r->n - r->i) {
        r->error = "length runs past the end of the message";
        return -1;
    }
    return 0;
}

static int rows_reserve(uint64_t **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : 1024;
    while (c < need)
        c *= 2;
    uint64_t *b = realloc(*buf, c * sizeof *b);
    if (!b)
        return -1;
    *buf = b;
    *cap = c;
    return 0;
}

/* Varints in a packed run: one per byte with the high bit clear. A plain
 * byte loop the compiler vectorises, run before anything is reserved, so a
 * 64 MiB run of rows costs a count and a refusal, not 512 MiB of rows. */
static size_t count_varints(const uint8_t *p, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += p[i] < 0x80;
    return k;
}

/* A packed run of `len` bytes of varints: counted first, so rows past the
 * limit are never stored and one exact reserve covers the run; then a
 * plain varint decode. */
static int rd_packed_rows(rd *r, uint64_t len, lookup_request_view *out, uint64_t **buf,
                          size_t *cap)
{
    size_t k = count_varints(r->p + r->i, len);
    if (len && r->p[r->i + len - 1] >= 0x80) {
        r->i += len;
        r->error = "truncated varint";
        return -1;
    }
    r->counted += k;
    if (r->counted > r->max_rows) {      /* over: count on, store nothing */
        r->i += len;
        return 0;
    }
    if (rows_reserve(buf, cap, out->n_rows + k) < 0) {
        r->error = "out of memory for rows";
        return -1;
    }
    rd sub = {r->p, r->i, r->i + len, NULL, 0, 0};
    uint64_t *rows = *buf;
    k = out->n_rows;
    while (sub.i < sub.n) {
        if (rd_varint(&sub, &rows[k++]) < 0) {
            r->i = sub.i;
            r->error = sub.error;
            return -1;
        }
    }
    out->n_rows = k;
    r->i = sub.n;
    return 0;
}

static int rd_skip(rd *r, uint32_t wt)
{
    uint64_t v;
    switch (wt) {
    case 0:
        return rd_varint(r, &v);
    case 1:
    case 5:
        if (r->n - r->i < (wt == 1 ? 8u : 4u)) {
            r->error = "truncated fixed-width field";
            return -1;
        }
        r->i += wt == 1 ? 8 : 4;
        return 0;
    case 2:
        if (rd_len(r, &v) < 0)
            return -1;
        r->i += v;
        return 0;
    default:
        r->error = "unsupported wire type (groups are not valid here)";
        return -1;
    }
}

static int rd_field(rd *r, uint64_t tag, lookup_request_view *out, uint64_t **buf, size_t *cap)
{
    if ((tag >> 3) > FIELD_MAX) {
        r->error = "field number above 2^29-1";
        return -1;
    }
    uint32_t field = (uint32_t)(tag >> 3), wt = tag & 7;
    uint64_t v;
    if (field == 1 && wt == 2) {
        if (rd_len(r, &v) < 0)
            return -1;
        out->table = r->p + r->i;
        out->table_len = v;
        r->i += v;
        return 0;
    }
    if (field == 2 && wt == 2)
        return rd_len(r, &v) < 0 ? -1 : rd_packed_rows(r, v, out, buf, cap);
    if (field == 2 && wt == 0) {
        if (rd_varint(r, &v) < 0)
            return -1;
        if (++r->counted > r->max_rows)
            return 0;
        if (rows_reserve(buf, cap, out->n_rows + 1) < 0) {
            r->error = "out of memory for rows";
            return -1;
        }
        (*buf)[out->n_rows++] = v;
        return 0;
    }
    if (field == 3 && wt == 0)
        return rd_varint(r, &out->version);
    if (field <= 3) {
        r->error = "known field with the wrong wire type";
        return -1;
    }
    return rd_skip(r, wt);
}

int lookup_request_parse(const uint8_t *p, size_t n, size_t max_rows, lookup_request_view *out,
                         uint64_t **rows_buf, size_t *rows_cap, const char **error,
                         size_t *error_at)
{
    rd r = {p, 0, n, NULL, max_rows, 0};
    *out = (lookup_request_view){0};
    out->table = (const uint8_t *)"";
    while (r.i < r.n) {
        size_t at = r.i;
        uint64_t tag;
        if (rd_varint(&r, &tag) < 0 || ((tag >> 3) == 0 && (r.error = "field number 0")) ||
            rd_field(&r, tag, out, rows_buf, rows_cap) < 0) {
            *error = r.error;
            *error_at = at;
            return -1;
        }
    }
    out->rows = *rows_buf;
    if (r.counted > max_rows) {
        out->n_rows = r.counted;
        return 1;
    }
    return 0;
}
