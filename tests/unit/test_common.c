/* test_common.c: the synthetic row rule, status names, dtypes. The expected
 * synthetic bytes were computed independently (Python, arbitrary-precision
 * integers masked to 64 bits) from the rule's text. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "dtype.h"
#include "status.h"
#include "synthetic.h"

static void test_splitmix64_known_values(void **state)
{
    assert_true(splitmix64(0) == 0xe220a8397b1dcdafULL);
    assert_true(splitmix64(1) == 0x910a2dec89025cc1ULL);
}

static void test_synthetic_row_bytes(void **state)
{
    /* seed 5, row 3, 12 bytes: words splitmix64(5 + (3 << 20) + k), LE, cut */
    const uint8_t want[12] = {0xb5, 0x2f, 0xfc, 0xa8, 0x96, 0xd4, 0xb3, 0x46,
                              0xce, 0x3b, 0x71, 0x45};
    uint8_t got[12];
    synthetic_row(5, 3, got, sizeof got);
    assert_memory_equal(got, want, sizeof want);
}

static void test_synthetic_rows_is_rows(void **state)
{
    uint8_t many[5 * 24], one[24];
    synthetic_rows(9, 100, 5, many, 24);
    for (int i = 0; i < 5; i++) {
        synthetic_row(9, 100 + (uint64_t)i, one, 24);
        assert_memory_equal(many + i * 24, one, 24);
    }
}

static void test_status_names(void **state)
{
    assert_string_equal(es_code_name(ES_OK), "OK");
    assert_string_equal(es_code_name(ES_OUT_OF_RANGE), "OUT_OF_RANGE");
    assert_string_equal(es_code_name(ES_UNAUTHENTICATED), "UNAUTHENTICATED");
    assert_string_equal(es_code_name(17), "UNKNOWN_CODE");
    assert_string_equal(es_code_name(-1), "UNKNOWN_CODE");
    assert_int_equal(es_code_parse("NOT_FOUND"), ES_NOT_FOUND);
    assert_int_equal(es_code_parse("nope"), -1);
}

static void test_dtypes(void **state)
{
    assert_int_equal(dtype_size("bf16"), 2);
    assert_int_equal(dtype_size("f32"), 4);
    assert_int_equal(dtype_size("fp8_e4m3"), 1);
    assert_int_equal(dtype_size("u8"), 1);
    assert_int_equal(dtype_size("float32"), 0);
    assert_int_equal(dtype_size(NULL), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_splitmix64_known_values),
        cmocka_unit_test(test_synthetic_row_bytes),
        cmocka_unit_test(test_synthetic_rows_is_rows),
        cmocka_unit_test(test_status_names),
        cmocka_unit_test(test_dtypes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
