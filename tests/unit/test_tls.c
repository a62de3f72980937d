/* test_tls.c: the server's TLS file checks (tls.c) and the constant-time
 * token compare (security.c), without a server.
 *
 * Certificates come from tests/integration/make_test_certs.sh, run into a
 * temporary directory; the broken files are written here. Every refusal's
 * message is compared whole, since it is what an operator reads. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "security.h"
#include "tls.h"

static char dir[256];

static const char *path(const char *name)
{
    static char buf[8][400];
    static int next;
    char *p = buf[next++ % 8];
    snprintf(p, 400, "%s/%s", dir, name);
    return p;
}

static void write_text(const char *name, const char *text)
{
    FILE *f = fopen(path(name), "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
}

static int setup(void **state)
{
    snprintf(dir, sizeof dir, "/tmp/engram-test-tls-XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "sh %s %s && openssl pkey -in %s/server.key -aes256 -passout "
             "pass:x -out %s/encrypted.key 2>/dev/null", MAKE_CERTS, dir, dir, dir);
    if (system(cmd) != 0)
        return -1;
    write_text("bad-base64.pem", "-----BEGIN CERTIFICATE-----\nnot base64!\n"
                                 "-----END CERTIFICATE-----\n");
    write_text("empty.pem", "");
    return 0;
}

static int teardown(void **state)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* tls_load's message for cert/key/ca, or "ok". */
static const char *load(const char *cert, const char *key, const char *ca)
{
    static char err[700];
    tls_files *f = tls_load(path(cert), path(key), ca ? path(ca) : NULL, err, sizeof err);
    if (f) {
        tls_files_free(f);
        return "ok";
    }
    return err;
}

static void expect(const char *got, const char *fmt, ...)
{
    char want[800];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(want, sizeof want, fmt, ap);
    va_end(ap);
    assert_string_equal(got, want);
}

static void test_good_files(void **state)
{
    assert_string_equal(load("server.pem", "server.key", NULL), "ok");
    assert_string_equal(load("server.pem", "server.key", "ca.pem"), "ok");
    assert_string_equal(load("rotated.pem", "rotated.key", "rogue-ca.pem"), "ok");
}

static void test_bad_files(void **state)
{
    expect(load("server.pem", "operator.key", NULL),
           "TLS key file %s is not the key of the certificate in %s", path("operator.key"),
           path("server.pem"));
    expect(load("server.pem", "encrypted.key", NULL),
           "TLS key file %s is encrypted; engram-server needs the key unencrypted (protect "
           "the file with its permissions)", path("encrypted.key"));
    expect(load("server.key", "server.key", NULL), "TLS certificate file %s: no start line",
           path("server.key"));
    expect(load("bad-base64.pem", "server.key", NULL),
           "TLS certificate file %s: bad base64 decode", path("bad-base64.pem"));
    expect(load("server.pem", "server.key", "server.key"), "TLS client CA file %s: no start line",
           path("server.key"));
    expect(load("empty.pem", "server.key", NULL),
           "TLS certificate file %s holds no PEM block (-----BEGIN ...)", path("empty.pem"));
    expect(load("missing.pem", "server.key", NULL),
           "cannot read TLS certificate file %s: No such file or directory", path("missing.pem"));
    expect(load("server.pem", "missing.key", NULL),
           "cannot read TLS key file %s: No such file or directory", path("missing.key"));
}

/* Committed files are what the fetcher and the log see; a later commit
 * replaces them. */
static void test_commit_and_info(void **state)
{
    char err[600], subject[256];
    int64_t not_after = -1;
    assert_int_equal(tls_enabled(), 0);
    tls_cert_info(subject, sizeof subject, &not_after);
    assert_string_equal(subject, "");
    assert_int_equal(not_after, 0);

    tls_files *f = tls_load(path("server.pem"), path("server.key"), NULL, err, sizeof err);
    assert_non_null(f);
    tls_commit(f);
    assert_int_equal(tls_enabled(), 1);
    assert_int_equal(tls_mutual(), 0);
    tls_cert_info(subject, sizeof subject, &not_after);
    assert_string_equal(subject, "/CN=localhost");
    /* make_test_certs.sh signs for 2 days. */
    int64_t left = not_after - (int64_t)time(NULL);
    assert_true(left > 86400 && left <= 2 * 86400);

    f = tls_load(path("rotated.pem"), path("rotated.key"), path("ca.pem"), err, sizeof err);
    assert_non_null(f);
    tls_commit(f);
    assert_int_equal(tls_mutual(), 0);            /* fixed by the first commit */
    tls_teardown();
    assert_int_equal(tls_enabled(), 0);
}

static void test_equal_ct(void **state)
{
    assert_int_equal(security_equal_ct("abc", 3, "abc", 3), 1);
    assert_int_equal(security_equal_ct("abc", 3, "abd", 3), 0);
    assert_int_equal(security_equal_ct("abc", 3, "abcd", 4), 0);
    assert_int_equal(security_equal_ct("", 0, "", 0), 1);
    assert_int_equal(security_equal_ct("\0a", 2, "\0b", 2), 0);
}

/* Which admin addresses may carry a bearer token over plaintext. */
static void test_listen_is_local(void **state)
{
    static const char *const local[] = {"127.0.0.1:7070", "127.0.0.1:0", "127.1.2.3:1",
                                        "localhost:7070", "[::1]:7070", "[::ffff:127.0.0.1]:1",
                                        "unix:/run/engram.sock", "unix-abstract:engram"};
    static const char *const remote[] = {"0.0.0.0:7070", "[::]:7070", "10.0.0.5:7070",
                                         "128.0.0.1:7070", "engram.example:7070",
                                         "[::ffff:10.0.0.1]:1", "localhost.evil:1", ":7070",
                                         "127.0.0.1", "[::1:7070", ""};
    for (size_t i = 0; i < sizeof local / sizeof local[0]; i++)
        if (!security_listen_is_local(local[i]))
            fail_msg("%s should be local", local[i]);
    for (size_t i = 0; i < sizeof remote / sizeof remote[0]; i++)
        if (security_listen_is_local(remote[i]))
            fail_msg("%s should not be local", remote[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_listen_is_local),
        cmocka_unit_test(test_good_files),
        cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_commit_and_info),
        cmocka_unit_test(test_equal_ct),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
