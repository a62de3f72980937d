/* test_wire.c: the hand-written LookupResponse framing against protobuf-c.
 *
 * The server's head/tail must be byte-identical to what protobuf-c packs for
 * the same message, and the client's chunked decoder must read what
 * protobuf-c packs however the bytes are split into slices. The server's
 * LookupRequest parser must read whatever protobuf-c packs, in any encoding
 * a peer may choose, and name what is wrong with a bad message. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "engram/v1/engram.pb-c.h"
#include "wire.h"

static uint8_t *packed_response(const uint8_t *data, size_t len, uint32_t rb,
                                uint64_t ver, size_t *out_len)
{
    Engram__V1__LookupResponse r = ENGRAM__V1__LOOKUP_RESPONSE__INIT;
    r.data.data = (uint8_t *)data;
    r.data.len = len;
    r.row_bytes = rb;
    r.version = ver;
    *out_len = engram__v1__lookup_response__get_packed_size(&r);
    uint8_t *buf = malloc(*out_len);
    engram__v1__lookup_response__pack(&r, buf);
    return buf;
}

static void fill(uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(i * 31 + 7);
}

static void test_varint(void **state)
{
    uint8_t b[WIRE_VARINT_MAX];
    assert_int_equal(wire_put_varint(b, 0), 1);
    assert_int_equal(b[0], 0);
    assert_int_equal(wire_put_varint(b, 300), 2);
    assert_int_equal(b[0], 0xac);
    assert_int_equal(b[1], 0x02);
    assert_int_equal(wire_varint_len(UINT64_MAX), 10);
    assert_int_equal(wire_put_varint(b, UINT64_MAX), 10);
    assert_int_equal(b[9], 0x01);
}

static void test_head_tail_match_protobuf_c(void **state)
{
    const size_t sizes[] = {0, 1, 127, 128, 16383, 16384, 8u << 20};
    const uint64_t versions[] = {0, 1, 300, UINT64_MAX};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        for (size_t v = 0; v < 4; v++) {
            size_t n = sizes[i], plen;
            uint8_t *data = malloc(n + 1);
            fill(data, n);
            uint8_t *ref = packed_response(data, n, 128, versions[v], &plen);
            size_t head = lookup_response_head_len(n);
            size_t tail = lookup_response_tail_len(128, versions[v]);
            assert_int_equal(head + n + tail, plen);
            uint8_t *mine = malloc(plen + 1);
            assert_int_equal(lookup_response_put_head(mine, n), head);
            memcpy(mine + head, data, n);
            assert_int_equal(lookup_response_put_tail(mine + head + n, 128, versions[v]), tail);
            assert_memory_equal(mine, ref, plen);
            free(mine);
            free(ref);
            free(data);
        }
    }
}

/* Decodes `buf` fed in pieces of `step` bytes. */
static int decode_split(const uint8_t *buf, size_t len, size_t step, uint8_t *dst,
                        size_t cap, lookup_decoder *d)
{
    lookup_decoder_init(d, dst, cap);
    for (size_t off = 0; off < len; off += step) {
        size_t k = len - off < step ? len - off : step;
        if (lookup_decoder_feed(d, buf + off, k) < 0)
            return -1;
    }
    return lookup_decoder_finish(d);
}

static void test_decoder_any_split(void **state)
{
    size_t n = 4096 + 13, plen;
    uint8_t *data = malloc(n);
    fill(data, n);
    uint8_t *buf = packed_response(data, n, 77, 123456789, &plen);
    uint8_t *dst = malloc(n);
    const size_t steps[] = {1, 2, 3, 7, 64, 4099, 1u << 20};
    for (size_t i = 0; i < sizeof steps / sizeof *steps; i++) {
        lookup_decoder d;
        memset(dst, 0, n);
        assert_int_equal(decode_split(buf, plen, steps[i], dst, n, &d), 0);
        assert_int_equal(d.data_len, n);
        assert_int_equal(d.row_bytes, 77);
        assert_int_equal(d.version, 123456789);
        assert_memory_equal(dst, data, n);
    }
    free(dst);
    free(buf);
    free(data);
}

static void test_decoder_skips_unknown_fields(void **state)
{
    /* field 9 varint, field 10 length-delimited, field 11 fixed64, then data */
    const uint8_t msg[] = {0x48, 0x96, 0x01, 0x52, 0x02, 'h', 'i',
                           0x59, 1, 2, 3, 4, 5, 6, 7, 8,
                           0x0a, 0x03, 'a', 'b', 'c', 0x10, 0x03, 0x18, 0x05};
    uint8_t dst[3];
    lookup_decoder d;
    assert_int_equal(decode_split(msg, sizeof msg, 1, dst, 3, &d), 0);
    assert_memory_equal(dst, "abc", 3);
    assert_int_equal(d.row_bytes, 3);
    assert_int_equal(d.version, 5);
}

static void test_decoder_rejects_bad_input(void **state)
{
    uint8_t dst[4];
    lookup_decoder d;
    /* data longer than the caller's buffer: never written past dst */
    const uint8_t too_long[] = {0x0a, 0x05, 1, 2, 3, 4, 5};
    assert_int_equal(decode_split(too_long, sizeof too_long, 1, dst, 4, &d), -1);
    assert_string_equal(d.error, "data longer than the caller's buffer");
    /* truncated inside the data */
    const uint8_t trunc[] = {0x0a, 0x04, 1, 2};
    assert_int_equal(decode_split(trunc, sizeof trunc, 2, dst, 4, &d), -1);
    assert_string_equal(d.error, "message truncated");
    /* wire type 3 (groups) is not supported */
    const uint8_t group[] = {0x0b};
    assert_int_equal(decode_split(group, 1, 1, dst, 4, &d), -1);
    /* an 11-byte varint */
    const uint8_t longv[] = {0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01};
    assert_int_equal(decode_split(longv, sizeof longv, 3, dst, 4, &d), -1);
    assert_string_equal(d.error, "varint too long");
}

/* ---- LookupRequest parser ---------------------------------------------- */

static int parse(const uint8_t *p, size_t n, lookup_request_view *v, uint64_t **buf, size_t *cap,
                 const char **err, size_t *at)
{
    return lookup_request_parse(p, n, SIZE_MAX, v, buf, cap, err, at);
}

/* Rows past max_rows are counted, never stored: a huge packed run costs no
 * memory (issue 11: one 64 MiB request reserved rows x 8 bytes before the
 * limit was checked, and the scratch never shrank). */
static void test_request_parse_counts_past_the_limit(void **state)
{
    (void)state;
    size_t n = 1 << 20;                      /* 1 Mi one-byte rows, packed */
    size_t len = 1 + 1 + 3 + 4 + n + 2 * 3;  /* table "t", rows, then 3 unpacked */
    uint8_t *p = malloc(len), *q = p;
    *q++ = 0x0a; *q++ = 1; *q++ = 't';
    *q++ = 0x12;
    q += wire_put_varint(q, n);
    memset(q, 0x05, n);
    q += n;
    for (int i = 0; i < 3; i++) {
        *q++ = 0x10;                          /* field 2, varint: one unpacked row */
        *q++ = 0x07;
    }
    uint64_t *buf = NULL;
    size_t cap = 0, at = 0;
    const char *err = NULL;
    lookup_request_view v;
    assert_int_equal(lookup_request_parse(p, (size_t)(q - p), 1000, &v, &buf, &cap, &err, &at), 1);
    assert_int_equal(v.n_rows, n + 3);
    assert_true(cap <= 1024);                 /* nothing past the limit was reserved */
    /* The same request under a limit it fits decodes every row. */
    assert_int_equal(lookup_request_parse(p, (size_t)(q - p), n + 3, &v, &buf, &cap, &err, &at), 0);
    assert_int_equal(v.n_rows, n + 3);
    assert_int_equal(v.rows[0], 5);
    assert_int_equal(v.rows[n + 2], 7);
    /* One row over the limit: refused again. */
    assert_int_equal(lookup_request_parse(p, (size_t)(q - p), n + 2, &v, &buf, &cap, &err, &at), 1);
    free(buf);
    free(p);
}

/* A tag whose field number needs more than 29 bits is refused, not cut to
 * 32 bits: field 2^32+1 (length-delimited) would otherwise read as field 1,
 * the table name. */
static void test_request_parse_refuses_huge_field_numbers(void **state)
{
    (void)state;
    uint8_t m[32], *q = m;
    q += wire_put_varint(q, ((1ull << 32) + 1) << 3 | 2);
    *q++ = 1;
    *q++ = 'x';
    uint64_t *buf = NULL;
    size_t cap = 0, at = 99;
    const char *err = NULL;
    lookup_request_view v;
    assert_int_equal(lookup_request_parse(m, (size_t)(q - m), 10, &v, &buf, &cap, &err, &at), -1);
    assert_string_equal(err, "field number above 2^29-1");
    assert_int_equal(at, 0);
    /* 2^29-1 itself is a valid (unknown) field and is skipped. */
    q = m;
    q += wire_put_varint(q, ((1ull << 29) - 1) << 3 | 2);
    *q++ = 1;
    *q++ = 'x';
    assert_int_equal(lookup_request_parse(m, (size_t)(q - m), 10, &v, &buf, &cap, &err, &at), 0);
    /* The client's response decoder refuses it too. */
    q = m;
    q += wire_put_varint(q, ((1ull << 32) + 1) << 3 | 2);
    *q++ = 1;
    *q++ = 'x';
    uint8_t dst[4];
    lookup_decoder d;
    lookup_decoder_init(&d, dst, sizeof dst);
    assert_int_equal(lookup_decoder_feed(&d, m, (size_t)(q - m)), -1);
    assert_string_equal(d.error, "field number above 2^29-1");
    free(buf);
}

/* Whatever protobuf-c packs (packed rows, as every proto3 peer sends) reads
 * back exactly, for sizes across the varint and buffer-growth boundaries. */
static void test_request_parse_matches_protobuf_c(void **state)
{
    const size_t counts[] = {0, 1, 2, 1023, 1024, 1025, 4096, 70000};
    uint64_t *buf = NULL;
    size_t cap = 0;
    for (size_t c = 0; c < sizeof counts / sizeof *counts; c++) {
        size_t n = counts[c];
        uint64_t *rows = malloc((n + 1) * sizeof *rows);
        for (size_t i = 0; i < n; i++)
            rows[i] = i % 3 == 0 ? i : (i % 3 == 1 ? UINT64_MAX - i : (uint64_t)i << 35);
        Engram__V1__LookupRequest rq = ENGRAM__V1__LOOKUP_REQUEST__INIT;
        rq.table = "demo.l1";
        rq.rows = rows;
        rq.n_rows = n;
        rq.version = c * 1000;
        size_t len = engram__v1__lookup_request__get_packed_size(&rq);
        uint8_t *wire = malloc(len + 1);
        engram__v1__lookup_request__pack(&rq, wire);
        /* The client's hand encoder writes exactly protobuf-c's bytes. */
        size_t rows_len, hlen = lookup_request_len(7, rows, n, rq.version, &rows_len);
        assert_int_equal(hlen, len);
        uint8_t *mine = malloc(hlen + 1);
        assert_int_equal(lookup_request_put(mine, "demo.l1", 7, rows, n, rows_len, rq.version), len);
        assert_memory_equal(mine, wire, len);
        free(mine);
        lookup_request_view v;
        const char *err = NULL;
        size_t at = 0;
        assert_int_equal(parse(wire, len, &v, &buf, &cap, &err, &at), 0);
        assert_int_equal(v.table_len, 7);
        assert_memory_equal(v.table, "demo.l1", 7);
        assert_int_equal(v.version, c * 1000);
        assert_int_equal(v.n_rows, n);
        if (n)
            assert_memory_equal(v.rows, rows, n * sizeof *rows);
        free(wire);
        free(rows);
    }
    free(buf);
}

/* Unpacked rows, both encodings mixed, fields out of order, a repeated
 * singular field (the last wins) and unknown fields of every wire type. */
static void test_request_parse_any_encoding(void **state)
{
    const uint8_t msg[] = {
        0x10, 0x05,                          /* rows: 5 (unpacked) */
        0x18, 0x07,                          /* version 7 */
        0x0a, 0x01, 'x',                     /* table "x" */
        0x12, 0x03, 0x01, 0xac, 0x02,        /* rows: packed [1, 300] */
        0x20, 0x01,                          /* field 4 varint: unknown */
        0x29, 1, 2, 3, 4, 5, 6, 7, 8,        /* field 5 fixed64 */
        0x35, 1, 2, 3, 4,                    /* field 6 fixed32 */
        0x3a, 0x02, 0xff, 0xff,              /* field 7 bytes */
        0x10, 0x09,                          /* rows: 9 */
        0x0a, 0x02, 't', '1',                /* table "t1": the last wins */
        0x18, 0x08,                          /* version 8 */
    };
    uint64_t *buf = NULL;
    size_t cap = 0, at = 0;
    const char *err = NULL;
    lookup_request_view v;
    assert_int_equal(parse(msg, sizeof msg, &v, &buf, &cap, &err, &at), 0);
    const uint64_t want[] = {5, 1, 300, 9};
    assert_int_equal(v.n_rows, 4);
    assert_memory_equal(v.rows, want, sizeof want);
    assert_int_equal(v.table_len, 2);
    assert_memory_equal(v.table, "t1", 2);
    assert_int_equal(v.version, 8);
    /* The empty message: no table, no rows. */
    assert_int_equal(parse(msg, 0, &v, &buf, &cap, &err, &at), 0);
    assert_int_equal(v.table_len, 0);
    assert_int_equal(v.n_rows, 0);
    free(buf);
}

static void expect_error(const uint8_t *msg, size_t n, const char *want, size_t want_at)
{
    uint64_t *buf = NULL;
    size_t cap = 0, at = 99;
    const char *err = NULL;
    lookup_request_view v;
    assert_int_equal(parse(msg, n, &v, &buf, &cap, &err, &at), -1);
    assert_string_equal(err, want);
    assert_int_equal(at, want_at);
    free(buf);
}

static void test_request_parse_rejects_bad_input(void **state)
{
    const uint8_t trunc_tag[] = {0x0a, 0x01, 'x', 0x80};
    expect_error(trunc_tag, sizeof trunc_tag, "truncated varint", 3);
    const uint8_t long_name[] = {0x0a, 0x05, 'x'};
    expect_error(long_name, sizeof long_name, "length runs past the end of the message", 0);
    const uint8_t trunc_packed[] = {0x12, 0x02, 0x01, 0x80};
    expect_error(trunc_packed, sizeof trunc_packed, "truncated varint", 0);
    const uint8_t eleven[] = {0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01};
    expect_error(eleven, sizeof eleven, "varint longer than 10 bytes", 0);
    const uint8_t group[] = {0x23, 0x24};
    expect_error(group, sizeof group, "unsupported wire type (groups are not valid here)", 0);
    const uint8_t field0[] = {0x00, 0x01};
    expect_error(field0, sizeof field0, "field number 0", 0);
    const uint8_t wrong_type[] = {0x0d, 1, 2, 3, 4};
    expect_error(wrong_type, sizeof wrong_type, "known field with the wrong wire type", 0);
    const uint8_t trunc_fixed[] = {0x29, 1, 2, 3};
    expect_error(trunc_fixed, sizeof trunc_fixed, "truncated fixed-width field", 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_varint),
        cmocka_unit_test(test_head_tail_match_protobuf_c),
        cmocka_unit_test(test_decoder_any_split),
        cmocka_unit_test(test_decoder_skips_unknown_fields),
        cmocka_unit_test(test_decoder_rejects_bad_input),
        cmocka_unit_test(test_request_parse_matches_protobuf_c),
        cmocka_unit_test(test_request_parse_counts_past_the_limit),
        cmocka_unit_test(test_request_parse_refuses_huge_field_numbers),
        cmocka_unit_test(test_request_parse_any_encoding),
        cmocka_unit_test(test_request_parse_rejects_bad_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
