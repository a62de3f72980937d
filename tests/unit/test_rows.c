/* test_rows.c: client/rows.c, the one copy of a lookup's rows from the
 * reply straight to their final places, on LookupResponse messages cut
 * into slices at every awkward point (1, 3, 7, 64 bytes, whole): flat into
 * a caller's buffer, scattered to caller positions (a cluster's
 * sub-request), to every output row that asked for a row (a prefetch's
 * de-duplicated rows), dequantised to BF16 on the way (rows split across
 * slices included), and refused without writing a byte when the reply's
 * length or row size does not match. Bytes are compared exactly. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "client_internal.h"
#include "wire.h"

enum { N = 9, RB = 40, DIM = 64, QRB = DIM + DIM / 32 };

/* A LookupResponse of `len` data bytes, row_bytes rb, version 7, cut into
 * slices of `cut` bytes (0: one slice). */
static grpc_byte_buffer *reply(const uint8_t *data, size_t len, uint32_t rb, size_t cut)
{
    size_t head = lookup_response_head_len(len), tail = lookup_response_tail_len(rb, 7);
    size_t total = head + len + tail;
    uint8_t *msg = malloc(total);
    lookup_response_put_head(msg, len);
    memcpy(msg + head, data, len);
    lookup_response_put_tail(msg + head + len, rb, 7);
    if (!cut)
        cut = total;
    size_t ns = (total + cut - 1) / cut;
    grpc_slice *sl = malloc(ns * sizeof *sl);
    for (size_t i = 0; i < ns; i++) {
        size_t k = total - i * cut < cut ? total - i * cut : cut;
        sl[i] = grpc_slice_from_copied_buffer((const char *)msg + i * cut, k);
    }
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(sl, ns);
    for (size_t i = 0; i < ns; i++)
        grpc_slice_unref(sl[i]);
    free(sl);
    free(msg);
    return bb;
}

static const size_t cuts[] = {1, 3, 7, 64, 0};

static void fill(uint8_t *data, size_t rows, size_t rb)
{
    for (size_t i = 0; i < rows * rb; i++)
        data[i] = (uint8_t)(i * 131 + 17);
}

static int decode(const ec_dest *d, const uint32_t *pos, size_t n, size_t lookup_n,
                  grpc_byte_buffer *bb, char *msg)
{
    uint32_t rb;
    uint64_t v;
    int rc = ec_rows_decode(d, pos, n, lookup_n, bb, &rb, &v, msg, 256);
    grpc_byte_buffer_destroy(bb);
    if (rc == ENGRAM_OK)
        assert_int_equal(v, 7);
    return rc;
}

static void test_flat(void **state)
{
    (void)state;
    uint8_t data[N * RB], out[N * RB + 8];
    char msg[256];
    fill(data, N, RB);
    for (size_t c = 0; c < sizeof cuts / sizeof cuts[0]; c++) {
        memset(out, 0xEE, sizeof out);
        ec_dest d = {.out = out, .out_cap = sizeof out};
        assert_int_equal(decode(&d, NULL, N, N, reply(data, sizeof data, RB, cuts[c]), msg), ENGRAM_OK);
        assert_memory_equal(out, data, sizeof data);
        assert_int_equal(out[sizeof data], 0xEE);
    }
    /* too long for out_cap: refused before a byte is written */
    memset(out, 0xEE, sizeof out);
    ec_dest small = {.out = out, .out_cap = N * RB - 1};
    assert_int_equal(decode(&small, NULL, N, N, reply(data, sizeof data, RB, 0), msg),
                     ENGRAM_INVALID_ARGUMENT);
    assert_string_equal(msg, "reply of 360 bytes does not fit out_cap 359");
    assert_int_equal(out[0], 0xEE);
}

/* A sub-request's rows go to the caller's positions. */
static void test_scatter_positions(void **state)
{
    (void)state;
    const uint32_t pos[4] = {7, 0, 8, 3};   /* 4 of a 9-row lookup */
    uint8_t data[4 * RB], out[N * RB];
    char msg[256];
    fill(data, 4, RB);
    for (size_t c = 0; c < sizeof cuts / sizeof cuts[0]; c++) {
        memset(out, 0xEE, sizeof out);
        ec_dest d = {.out = out, .out_cap = sizeof out};
        assert_int_equal(decode(&d, pos, 4, N, reply(data, sizeof data, RB, cuts[c]), msg), ENGRAM_OK);
        for (size_t i = 0; i < N; i++) {
            int j = -1;
            for (int k = 0; k < 4; k++)
                if (pos[k] == i)
                    j = k;
            for (size_t b = 0; b < RB; b++)
                assert_int_equal(out[i * RB + b], j < 0 ? 0xEE : data[j * RB + b]);
        }
    }
    /* a length that is no whole number of rows: nothing written, then
     * reported with the exact sizes */
    memset(out, 0xEE, sizeof out);
    ec_dest d = {.out = out, .out_cap = sizeof out};
    assert_int_equal(decode(&d, pos, 4, N, reply(data, 4 * RB - 2, RB, 7), msg), ENGRAM_DATA_LOSS);
    assert_string_equal(msg, "reply carries 158 bytes, want 4 rows of 40 bytes");
    for (size_t i = 0; i < sizeof out; i++)
        assert_int_equal(out[i], 0xEE);
    /* rows larger than the caller's share of out_cap */
    ec_dest tight = {.out = out, .out_cap = N * RB - N};
    assert_int_equal(decode(&tight, pos, 4, N, reply(data, sizeof data, RB, 0), msg),
                     ENGRAM_INVALID_ARGUMENT);
    assert_string_equal(msg, "reply of 160 bytes for 4 rows does not fit out_cap 351 (9 rows)");
}

/* De-duplicated rows: request row u goes to output rows idx[first[u]..first[u+1]). */
static void test_every_output_row_of_a_unique_row(void **state)
{
    (void)state;
    /* 3 unique rows, 7 output rows: out row r holds unique slot[r] */
    const uint32_t slot[7] = {2, 0, 2, 1, 0, 2, 2};
    const uint32_t first[4] = {0, 2, 3, 7}, idx[7] = {1, 4, 3, 0, 2, 5, 6};
    const size_t orb = RB + 8;               /* output rows further apart than stored rows */
    uint8_t data[3 * RB], out[7 * orb];
    char msg[256];
    fill(data, 3, RB);
    for (size_t c = 0; c < sizeof cuts / sizeof cuts[0]; c++) {
        memset(out, 0xEE, sizeof out);
        ec_dest d = {.out = out, .out_cap = sizeof out, .out_rb = orb, .row_bytes = RB,
                     .first = first, .idx = idx};
        assert_int_equal(decode(&d, NULL, 3, 3, reply(data, sizeof data, RB, cuts[c]), msg), ENGRAM_OK);
        for (size_t r = 0; r < 7; r++) {
            assert_memory_equal(out + r * orb, data + slot[r] * RB, RB);
            assert_int_equal(out[r * orb + RB], 0xEE);
        }
    }
    /* the table's rows must be row_bytes long: a reply of another row size
     * (a whole number of rows all the same) is refused unwritten */
    memset(out, 0xEE, sizeof out);
    ec_dest d = {.out = out, .out_cap = sizeof out, .out_rb = orb, .row_bytes = RB + 4,
                 .first = first, .idx = idx};
    assert_int_equal(decode(&d, NULL, 3, 3, reply(data, sizeof data, RB, 0), msg), ENGRAM_DATA_LOSS);
    assert_string_equal(msg, "reply has 40-byte rows; the table's rows are 44 bytes");
    for (size_t i = 0; i < sizeof out; i++)
        assert_int_equal(out[i], 0xEE);
}

/* mxfp8_e4m3 rows dequantised to BF16 on the way, whole or split. */
static void test_dequant(void **state)
{
    (void)state;
    const uint32_t first[3] = {0, 1, 3}, idx[3] = {2, 0, 1};
    uint8_t data[2 * QRB];
    fill(data, 2, QRB);
    for (size_t r = 0; r < 2; r++)               /* scales a table would use */
        for (size_t b = 0; b < DIM / 32; b++)
            data[r * QRB + DIM + b] = (uint8_t)(120 + r + b);
    uint16_t want[2][DIM], out[3][DIM];
    for (size_t r = 0; r < 2; r++)
        assert_int_equal(engram_dequant_bf16(data + r * QRB, 1, DIM, want[r], NULL), ENGRAM_OK);
    char msg[256];
    for (size_t c = 0; c < sizeof cuts / sizeof cuts[0]; c++) {
        memset(out, 0xEE, sizeof out);
        ec_dest d = {.out = (uint8_t *)out, .out_cap = sizeof out, .out_rb = DIM * 2,
                     .row_bytes = QRB, .first = first, .idx = idx, .dequant_dim = DIM};
        assert_int_equal(decode(&d, NULL, 2, 2, reply(data, sizeof data, QRB, cuts[c]), msg), ENGRAM_OK);
        assert_memory_equal(out[2], want[0], sizeof want[0]);
        assert_memory_equal(out[0], want[1], sizeof want[1]);
        assert_memory_equal(out[1], want[1], sizeof want[1]);
    }
}

int main(void)
{
    grpc_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_flat),
        cmocka_unit_test(test_scatter_positions),
        cmocka_unit_test(test_every_output_row_of_a_unique_row),
        cmocka_unit_test(test_dequant),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    grpc_shutdown();
    return rc;
}
