/* wire.c: varints, the LookupResponse head and tail the server writes by
 * hand, and a chunked decoder for the client. See wire.h for why. */
#include "wire.h"

#include <string.h>

size_t wire_varint_len(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

size_t wire_put_varint(uint8_t *p, uint64_t v)
{
    size_t n = 0;
    while (v >= 0x80) {
        p[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (uint8_t)v;
    return n;
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
            memcpy(d->dst + d->data_got, p + i, take);
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
