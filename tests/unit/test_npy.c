/* test_npy.c: engramctl's .npy header parser (client/ctl/npy.c): the
 * headers NumPy writes are read right, bad ones are refused with a reason,
 * and the inputs the fuzzer (tests/fuzz/fuzz_npy.c) crashed on stay fixed.
 * Those are byte arrays copied from its crash files; run under
 * ENGRAM_SANITIZE=1, an overrun fails the test. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "npy.h"

static int parse(const char *bytes, size_t len, npy_info *ni, char *err)
{
    memset(ni, 0, sizeof *ni);
    return npy_parse((const uint8_t *)bytes, len, ni, err, 256);
}

static void test_v1_and_v2(void **state)
{
    static const char v1[] = "\x93NUMPY\x01\x00\x3e\x00"
                             "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }  \n";
    static const char v2[] = "\x93NUMPY\x02\x00\x39\x00\x00\x00"
                             "{'descr': \"|V2\", 'fortran_order': False, 'shape': (7,), }";
    npy_info ni;
    char err[256];
    assert_int_equal(parse(v1, sizeof v1 - 1, &ni, err), 0);
    assert_string_equal(ni.descr, "<f4");
    assert_int_equal(ni.ndim, 2);
    assert_int_equal(ni.shape[0], 3);
    assert_int_equal(ni.shape[1], 4);
    assert_int_equal(ni.data_off, 72);
    assert_int_equal(parse(v2, sizeof v2 - 1, &ni, err), 0);
    assert_string_equal(ni.descr, "|V2");
    assert_int_equal(ni.ndim, 1);
    assert_int_equal(ni.shape[0], 7);
    assert_int_equal(ni.data_off, 12 + 57);
}

static void test_refusals(void **state)
{
    npy_info ni;
    char err[256];
    assert_int_equal(parse("\x93NUMPY\x01", 7, &ni, err), -1);
    assert_string_equal(err, ".npy header truncated");
    assert_int_equal(parse("\x93NUMPY\x04\x00\x00\x00", 10, &ni, err), -1);
    assert_string_equal(err, ".npy version 4 is not 1, 2 or 3");
    assert_int_equal(parse("\x93NUMPY\x01\x00\xff\x00{}", 12, &ni, err), -1);
    assert_string_equal(err, ".npy header truncated");
    static const char fortran[] = "\x93NUMPY\x01\x00\x32\x00"
                                  "{'descr':'<f4','fortran_order':True,'shape':(2,),}";
    assert_int_equal(parse(fortran, sizeof fortran - 1, &ni, err), -1);
    assert_string_equal(err, ".npy array is fortran_order; want C order");
}

/* fuzz_npy crash-badee849: the dict ends right after "'descr': ", so the
 * value is the terminating NUL; stepping past it as if it were a quote
 * made strchr read beyond the header (heap-buffer-overflow). */
static void test_fuzz_descr_at_end(void **state)
{
    static const uint8_t crash[] = {
        0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 0x02, 0x00, 0x3c, 0x00, 0x00, 0x00,
        0x7b, 0x50, 0x27, 0x64, 0x65, 0x73, 0x63, 0xff, 0x72, 0x27, 0x3a, 0x20,
        0x22, 0x32, 0x22, 0x2c, 0x20, 0x27, 0x66, 0x6f, 0x72, 0x74, 0x72, 0x61,
        0x6e, 0x5f, 0x6f, 0x72, 0x64, 0x65, 0x72, 0x27, 0x3a, 0x20, 0x46, 0x61,
        0x6c, 0x73, 0x65, 0x2c, 0x27, 0x73, 0x68, 0x61, 0x70, 0x65, 0x27, 0x3a,
        0x20, 0x28, 0x31, 0x27, 0x64, 0x65, 0x73, 0x63, 0x72, 0x27, 0x3a, 0x20,
        0x22, 0x32, 0x22, 0x2c, 0x20, 0x27, 0x66, 0x6f, 0x3c, 0x74, 0x72, 0x61,
        0x6e, 0x5f, 0x6f, 0x72, 0x64, 0x65, 0x72, 0x27, 0x3a, 0x20, 0x46, 0x2c,
        0x20, 0x73, 0x68, 0x61, 0x70, 0x65, 0x00, 0x3c, 0x00, 0x00,
    };
    npy_info ni;
    char err[256];
    assert_int_equal(parse((const char *)crash, sizeof crash, &ni, err), -1);
    assert_string_equal(err, ".npy descr is not a simple type string");
}

/* npy_read (the file path engramctl takes) refuses the same bytes. */
static void test_read_file(void **state)
{
    static const char bad[] = "\x93NUMPY\x01\x00\x2c\x00"
                              "{'fortran_order':False,'shape':(1,),'descr':";
    FILE *fp = tmpfile();
    assert_non_null(fp);
    assert_int_equal(fwrite(bad, 1, sizeof bad - 1, fp), sizeof bad - 1);
    rewind(fp);
    npy_info ni;
    char err[256];
    assert_int_equal(npy_read(fp, &ni, err, sizeof err), -1);
    assert_string_equal(err, ".npy descr is not a simple type string");
    fclose(fp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_v1_and_v2),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_fuzz_descr_at_end),
        cmocka_unit_test(test_read_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
