/* test_wire.c: the hand-written LookupResponse framing against protobuf-c.
 *
 * The server's head/tail must be byte-identical to what protobuf-c packs for
 * the same message, and the client's chunked decoder must read what
 * protobuf-c packs however the bytes are split into slices. */
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_varint),
        cmocka_unit_test(test_head_tail_match_protobuf_c),
        cmocka_unit_test(test_decoder_any_split),
        cmocka_unit_test(test_decoder_skips_unknown_fields),
        cmocka_unit_test(test_decoder_rejects_bad_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
