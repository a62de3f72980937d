/* test_security.c: TLS, mTLS, admin auth, the admin-only listener and the
 * call limits, against real engram-server processes.
 *
 * Certificates are made at test time by make_test_certs.sh in a temporary
 * directory (a CA, a server certificate for localhost/127.0.0.1, client
 * certificates CN=operator and CN=worker, and one from another CA); nothing
 * secret is committed. Each test starts its own server with the options it
 * checks and asserts the exact status (and message) of every refusal. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>
#include <jansson.h>

#include "engram/engram.h"
#include "harness.h"
#include "synthetic.h"

#define ROWS 64
#define ROW_BYTES 16
#define TOKEN "s3cret-admin-token"

static char certs[256];
static char path_buf[16][300];
static int path_next;

/* certs/NAME (a few live at once: a small ring of buffers). */
static const char *cert(const char *name)
{
    char *p = path_buf[path_next++ % 16];
    snprintf(p, 300, "%s/%s", certs, name);
    return p;
}

static int group_setup(void **state)
{
    harness_tmpdir(certs, sizeof certs);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "%s %s", MAKE_CERTS, certs);
    if (system(cmd) != 0)
        return -1;
    FILE *f = fopen(cert("token"), "w");
    fprintf(f, "  %s  \nsecond line is ignored\n", TOKEN);   /* trimmed */
    fclose(f);
    f = fopen(cert("wrong-token"), "w");
    fprintf(f, "not-the-token\n");
    fclose(f);
    return 0;
}

typedef struct client_sec {
    const char *ca, *cert, *key, *token, *server_name;
} client_sec;

static engram_client *open_client(const char *addr, const client_sec *s)
{
    engram_client_options o;
    engram_client_options_init(&o);
    o.deadline_ms = 5000;
    if (s) {
        o.tls_ca_file = s->ca;
        o.tls_cert_file = s->cert;
        o.tls_key_file = s->key;
        o.admin_token = s->token;
        o.tls_server_name = s->server_name;
    }
    engram_client *c = NULL;
    engram_error err;
    int rc = engram_client_open(addr, &o, &c, &err);
    if (rc)
        fail_msg("open %s: %s", addr, err.message);
    return c;
}

static void start(test_server *s, const char *const *extra)
{
    char dir[256];
    harness_tmpdir(dir, sizeof dir);
    assert_int_equal(server_start(s, dir, extra), 0);
}

static void import_table(engram_client *c, const char *name)
{
    uint8_t data[ROWS * ROW_BYTES];
    for (uint64_t r = 0; r < ROWS; r++)
        synthetic_row(7, r, data + r * ROW_BYTES, ROW_BYTES);
    engram_import *imp;
    engram_error err;
    int rc = engram_import_begin(c, name, ROWS, ROW_BYTES, "u8", &imp, &err);
    if (!rc && !(rc = engram_import_write(imp, 0, data, sizeof data, &err)))
        rc = engram_import_finish(imp, NULL, &err);
    else if (imp)
        engram_import_abort(imp);
    if (rc)
        fail_msg("import %s: %s %s", name, engram_status_name(rc), err.message);
}

/* A lookup of rows 0 and 63, checked byte for byte; returns its status. */
static int lookup(engram_client *c, const char *table, engram_error *err)
{
    uint64_t rows[2] = {0, ROWS - 1};
    uint8_t out[2 * ROW_BYTES], want[ROW_BYTES];
    int rc = engram_lookup_sync(c, table, rows, 2, out, sizeof out, NULL, NULL, err);
    if (rc == 0) {
        synthetic_row(7, ROWS - 1, want, ROW_BYTES);
        assert_memory_equal(out + ROW_BYTES, want, ROW_BYTES);
    }
    return rc;
}

static int table_get(engram_client *c, const char *table, engram_error *err)
{
    engram_table_info ti;
    return engram_table_get(c, table, &ti, err);
}

/* An admin-plane write that changes nothing: admitted, it answers
 * NOT_FOUND (there is no version 99); refused, the refusal. Table info is
 * a read every worker may do, so it is not the probe. */
static int admin_call(engram_client *c, const char *table, engram_error *err)
{
    return engram_table_drop_version(c, table, 99, err);
}

/* ---- refusal counts (Admin.Stats refusals_by_reason) ---------------------- */

/* The reasons in the order Stats lists them, and each one's status. */
enum { R_UNAUTH, R_PERM, R_DRAINING, R_MAX_CALLS, R_MAX_ROWS, R_IMPORT_BYTES, R_DEADLINE, R_REPLY_BYTES,
       R_REPLY_BYTES_PER_CONN, NREASONS };
static const char *const reason_names[NREASONS] = {
    "unauthenticated", "permission_denied", "draining", "max_calls",
    "max_rows", "max_import_bytes", "default_deadline", "reply_bytes", "reply_bytes_per_conn"};
static const char *const reason_codes[NREASONS] = {
    "UNAUTHENTICATED", "PERMISSION_DENIED", "UNAVAILABLE", "RESOURCE_EXHAUSTED",
    "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED",
    "RESOURCE_EXHAUSTED"};

/* Reads every reason's count through Admin.Stats. Under --max-calls the
 * Stats call itself can be refused while the server still frees earlier
 * calls; each such refusal is added to *stats_refused (a max_calls refusal
 * the caller must expect) and the call is retried. */
static void read_refusals(engram_client *c, uint64_t out[NREASONS], uint64_t *stats_refused)
{
    char *doc = NULL;
    engram_error err;
    int rc;
    for (int i = 0; (rc = engram_stats_json(c, &doc, &err)) == ENGRAM_RESOURCE_EXHAUSTED && i < 50; i++) {
        assert_non_null(stats_refused);
        ++*stats_refused;
        usleep(20000);
    }
    if (rc != ENGRAM_OK)
        fail_msg("Stats: %s %s", engram_status_name(rc), err.message);
    json_error_t je;
    json_t *r = json_loads(doc, 0, &je);
    engram_free(doc);
    assert_non_null(r);
    json_t *arr = json_object_get(r, "refusals_by_reason");
    assert_int_equal(json_array_size(arr), NREASONS);
    for (size_t i = 0; i < NREASONS; i++) {
        json_t *e = json_array_get(arr, i);
        assert_string_equal(json_string_value(json_object_get(e, "reason")), reason_names[i]);
        assert_string_equal(json_string_value(json_object_get(e, "code")), reason_codes[i]);
        out[i] = (uint64_t)json_integer_value(json_object_get(e, "count"));
    }
    json_decref(r);
}

/* Asserts the counts are exactly want[] (0 where not set), plus, for
 * max_calls, *stats_refused: every Stats call refused so far. */
static void expect_refusals(engram_client *c, const uint64_t want[NREASONS], uint64_t *stats_refused)
{
    uint64_t got[NREASONS];
    read_refusals(c, got, stats_refused);
    for (int i = 0; i < NREASONS; i++) {
        uint64_t w = want[i] + (i == R_MAX_CALLS && stats_refused ? *stats_refused : 0);
        if (got[i] != w)
            fail_msg("refusals %s: %llu, expected %llu", reason_names[i],
                     (unsigned long long)got[i], (unsigned long long)w);
    }
}

#define NO_CREDENTIALS "admin call without credentials: send authorization: Bearer <token> " \
                       "or a client certificate on the admin list"

/* TLS with an admin token: the token admits admin calls, lookups need
 * none, a wrong or missing token is UNAUTHENTICATED, and a plaintext client
 * cannot talk to the TLS port. */
static void test_tls_token(void **state)
{
    test_server s;
    const char *args[] = {"--tls-cert", cert("server.pem"), "--tls-key", cert("server.key"),
                          "--admin-token-file", cert("token"), NULL};
    start(&s, args);
    engram_error err;

    client_sec admin = {.ca = cert("ca.pem"), .token = TOKEN};
    engram_client *a = open_client(s.addr, &admin);
    import_table(a, "t");
    assert_int_equal(table_get(a, "t", &err), ENGRAM_OK);
    assert_int_equal(admin_call(a, "t", &err), ENGRAM_NOT_FOUND);
    assert_int_equal(lookup(a, "t", &err), ENGRAM_OK);
    engram_verify_result vr;
    assert_int_equal(engram_table_verify(a, "t", 0, NULL, NULL, &vr, &err), ENGRAM_OK);
    assert_int_equal(vr.match, 1);
    engram_client_close(a);

    /* The certificate names localhost too: the override is checked. */
    client_sec plain = {.ca = cert("ca.pem"), .server_name = "localhost"};
    engram_client *w = open_client(s.addr, &plain);
    assert_int_equal(lookup(w, "t", &err), ENGRAM_OK);
    assert_int_equal(table_get(w, "t", &err), ENGRAM_OK);       /* a read */
    assert_int_equal(admin_call(w, "t", &err), ENGRAM_UNAUTHENTICATED);
    assert_string_equal(err.message, NO_CREDENTIALS);
    /* Verify reads every row: an admin-plane operation. */
    assert_int_equal(engram_table_verify(w, "t", 0, NULL, NULL, &vr, &err), ENGRAM_UNAUTHENTICATED);
    assert_string_equal(err.message, NO_CREDENTIALS);
    engram_client_close(w);

    client_sec wrong = {.ca = cert("ca.pem"), .token = "not-the-token"};
    w = open_client(s.addr, &wrong);
    assert_int_equal(admin_call(w, "t", &err), ENGRAM_UNAUTHENTICATED);
    assert_string_equal(err.message, "admin token rejected");
    assert_int_equal(lookup(w, "t", &err), ENGRAM_OK);
    engram_client_close(w);

    /* Plaintext to the TLS port: the handshake never completes. */
    w = open_client(s.addr, NULL);
    assert_int_equal(lookup(w, "t", &err), ENGRAM_UNAVAILABLE);
    engram_client_close(w);

    /* A server name the certificate does not carry: refused. */
    client_sec badname = {.ca = cert("ca.pem"), .token = TOKEN, .server_name = "elsewhere"};
    w = open_client(s.addr, &badname);
    assert_int_equal(table_get(w, "t", &err), ENGRAM_UNAVAILABLE);
    engram_client_close(w);

    /* engramctl's global options. */
    assert_int_equal(engramctl(s.addr, "--tls-ca", cert("ca.pem"), "--token-file", cert("token"),
                               "tables", NULL), 0);
    assert_int_equal(engramctl(s.addr, "--tls-ca", cert("ca.pem"), "--token-file", cert("token"),
                               "undrain", NULL), 0);
    assert_int_equal(engramctl(s.addr, "--tls-ca", cert("ca.pem"), "--token-file",
                               cert("wrong-token"), "undrain", NULL), 1);
    assert_int_equal(engramctl(s.addr, "--tls-ca", cert("ca.pem"), "--token-file", cert("token"),
                               "lookup", "--table", "t", "1", NULL), 0);

    /* Stats counted each refusal above: DropVersion and Verify without a
     * token, DropVersion and engramctl undrain with the wrong one. */
    client_sec admin2 = {.ca = cert("ca.pem"), .token = TOKEN};   /* cert()'s ring moved on */
    a = open_client(s.addr, &admin2);
    expect_refusals(a, (uint64_t[NREASONS]){[R_UNAUTH] = 4}, NULL);
    engram_client_close(a);
    assert_int_equal(server_stop(&s), 0);
}

/* mTLS with an admin list: no certificate, or one from another CA, cannot
 * connect; the operator certificate (matched by its common name) is
 * admitted to admin calls; the worker certificate may only look up. */
static void test_mtls_names(void **state)
{
    test_server s;
    const char *args[] = {"--tls-cert", cert("server.pem"), "--tls-key", cert("server.key"),
                          "--tls-client-ca", cert("ca.pem"), "--admin-names", "admin,operator",
                          NULL};
    start(&s, args);
    engram_error err;

    client_sec op = {.ca = cert("ca.pem"), .cert = cert("operator.pem"), .key = cert("operator.key")};
    engram_client *a = open_client(s.addr, &op);
    import_table(a, "t");
    engram_table_info *list;
    size_t n;
    assert_int_equal(engram_table_list(a, &list, &n, &err), ENGRAM_OK);
    assert_int_equal(n, 1);
    free(list);
    assert_int_equal(lookup(a, "t", &err), ENGRAM_OK);
    engram_client_close(a);

    client_sec wk = {.ca = cert("ca.pem"), .cert = cert("worker.pem"), .key = cert("worker.key")};
    engram_client *w = open_client(s.addr, &wk);
    assert_int_equal(lookup(w, "t", &err), ENGRAM_OK);
    assert_int_equal(table_get(w, "t", &err), ENGRAM_OK);       /* a read */
    assert_int_equal(admin_call(w, "t", &err), ENGRAM_PERMISSION_DENIED);
    assert_string_equal(err.message,
                        "client certificate \"worker\" is not on the admin list (--admin-names)");
    engram_client_close(w);

    client_sec none = {.ca = cert("ca.pem")};
    w = open_client(s.addr, &none);
    assert_int_equal(lookup(w, "t", &err), ENGRAM_UNAVAILABLE);
    engram_client_close(w);

    client_sec rogue = {.ca = cert("ca.pem"), .cert = cert("rogue.pem"), .key = cert("rogue.key")};
    w = open_client(s.addr, &rogue);
    assert_int_equal(lookup(w, "t", &err), ENGRAM_UNAVAILABLE);
    engram_client_close(w);

    assert_int_equal(engramctl(s.addr, "--tls-ca", cert("ca.pem"), "--tls-cert", cert("operator.pem"),
                               "--tls-key", cert("operator.key"), "undrain", NULL), 0);
    assert_int_equal(engramctl(s.addr, "--tls-ca", cert("ca.pem"), "--tls-cert", cert("worker.pem"),
                               "--tls-key", cert("worker.key"), "undrain", NULL), 1);
    assert_int_equal(engramctl(s.addr, "--tls-ca", cert("ca.pem"), "--tls-cert", cert("worker.pem"),
                               "--tls-key", cert("worker.key"), "table", "t", NULL), 0);

    /* The lookup-only certificate cannot drain, through the library or
     * engramctl, and the server keeps serving its lookups. */
    client_sec wk2 = {.ca = cert("ca.pem"), .cert = cert("worker.pem"), .key = cert("worker.key")};
    w = open_client(s.addr, &wk2);      /* cert()'s ring of paths moved on: fresh ones */
    int drained = -1;
    uint64_t in_flight = 99;
    assert_int_equal(engram_drain(w, 100, &drained, &in_flight, &err), ENGRAM_PERMISSION_DENIED);
    assert_string_equal(err.message,
                        "client certificate \"worker\" is not on the admin list (--admin-names)");
    assert_int_equal(engramctl(s.addr, "--tls-ca", cert("ca.pem"), "--tls-cert", cert("worker.pem"),
                               "--tls-key", cert("worker.key"), "drain", "--timeout-ms", "100",
                               NULL), 1);
    assert_int_equal(lookup(w, "t", &err), ENGRAM_OK);
    engram_client_close(w);

    /* Refusals by reason: the worker's DropVersion, undrain and two drains. */
    client_sec op2 = {.ca = cert("ca.pem"), .cert = cert("operator.pem"), .key = cert("operator.key")};
    a = open_client(s.addr, &op2);
    expect_refusals(a, (uint64_t[NREASONS]){[R_PERM] = 4}, NULL);
    engram_client_close(a);
    assert_int_equal(server_stop(&s), 0);
}

/* --admin-listen with TLS and a token: the admin listener speaks TLS too;
 * there the token admits admin calls, its absence is UNAUTHENTICATED, and a
 * plaintext client cannot connect. */
static void test_admin_listen_tls(void **state)
{
    test_server s;
    char admin_addr[64];
    snprintf(admin_addr, sizeof admin_addr, "127.0.0.1:%d", harness_free_port());
    const char *args[] = {"--tls-cert", cert("server.pem"), "--tls-key", cert("server.key"),
                          "--admin-token-file", cert("token"), "--admin-listen", admin_addr, NULL};
    start(&s, args);
    engram_error err;

    client_sec admin = {.ca = cert("ca.pem"), .token = TOKEN};
    engram_client *a = open_client(admin_addr, &admin);
    import_table(a, "t");
    assert_int_equal(admin_call(a, "t", &err), ENGRAM_NOT_FOUND);
    engram_client_close(a);

    client_sec tls = {.ca = cert("ca.pem")};
    engram_client *w = open_client(admin_addr, &tls);
    assert_int_equal(admin_call(w, "t", &err), ENGRAM_UNAUTHENTICATED);
    assert_string_equal(err.message, NO_CREDENTIALS);
    engram_client_close(w);

    w = open_client(admin_addr, NULL);    /* plaintext to the TLS admin port */
    assert_int_equal(admin_call(w, "t", &err), ENGRAM_UNAVAILABLE);
    engram_client_close(w);

    /* The data plane on the main listener, over TLS. */
    w = open_client(s.addr, &tls);
    assert_int_equal(lookup(w, "t", &err), ENGRAM_OK);
    engram_client_close(w);

    assert_int_equal(engramctl(admin_addr, "--tls-ca", cert("ca.pem"), "--token-file",
                               cert("token"), "drain", "--timeout-ms", "100", NULL), 0);
    assert_int_equal(engramctl(admin_addr, "--tls-ca", cert("ca.pem"), "undrain", NULL), 1);
    assert_int_equal(engramctl(admin_addr, "--tls-ca", cert("ca.pem"), "--token-file",
                               cert("token"), "undrain", NULL), 0);
    assert_int_equal(engramctl(admin_addr, "--token-file", cert("token"), "undrain", NULL), 1);

    client_sec admin2 = {.ca = cert("ca.pem"), .token = TOKEN};   /* cert()'s ring moved on */
    a = open_client(admin_addr, &admin2);
    expect_refusals(a, (uint64_t[NREASONS]){[R_UNAUTH] = 2}, NULL);
    engram_client_close(a);
    assert_int_equal(server_stop(&s), 0);
}

/* --admin-listen: the admin plane is served only there. */
static void test_admin_listen(void **state)
{
    test_server s;
    char admin_addr[64];
    snprintf(admin_addr, sizeof admin_addr, "127.0.0.1:%d", harness_free_port());
    const char *args[] = {"--admin-listen", admin_addr, NULL};
    start(&s, args);
    engram_error err;

    engram_client *a = open_client(admin_addr, NULL);
    import_table(a, "t");
    assert_int_equal(table_get(a, "t", &err), ENGRAM_OK);
    assert_int_equal(lookup(a, "t", &err), ENGRAM_UNIMPLEMENTED);
    assert_string_equal(err.message, "method /engram.v1.Lookup/Lookup is not served on the admin "
                        "listener (it serves the admin plane only)");
    engram_client_close(a);

    engram_client *w = open_client(s.addr, NULL);
    assert_int_equal(lookup(w, "t", &err), ENGRAM_OK);
    assert_int_equal(table_get(w, "t", &err), ENGRAM_OK);       /* reads on every listener */
    assert_int_equal(admin_call(w, "t", &err), ENGRAM_UNIMPLEMENTED);
    assert_string_equal(err.message, "method /engram.v1.Admin/DropVersion is not served on this "
                        "listener (the admin plane has its own: --admin-listen)");
    engram_client_close(w);
    assert_int_equal(server_stop(&s), 0);
}

/* Opens an import stream and sends its first rows (the call is then
 * admitted and in flight on the server). */
static engram_import *open_import(engram_client *c, const char *table)
{
    uint8_t row[ROW_BYTES] = {0};
    engram_import *imp;
    engram_error err;
    assert_int_equal(engram_import_begin(c, table, ROWS, ROW_BYTES, "u8", &imp, &err), ENGRAM_OK);
    assert_int_equal(engram_import_write(imp, 0, row, sizeof row, &err), ENGRAM_OK);
    return imp;
}

/* Where test_limits is, for the watchdog: a hang there must fail fast and
 * say where, not run into ctest's timeout. */
static const char *volatile phase = "start";
static volatile pid_t limits_server;    /* killed too, or it holds ctest's pipe */

static void on_alarm(int sig)
{
    (void)sig;
    test_signal(limits_server, SIGKILL);   /* 0 before the server started */
    char line[200];
    int n = snprintf(line, sizeof line, "test_limits stuck at: %s\n", phase);
    if (write(2, line, (size_t)n) < 0)
        _exit(3);
    _exit(2);
}

/* --max-calls, --max-rows, --max-import-bytes, --default-deadline-ms and
 * draining: each refusal's exact status and message, and Stats counting
 * each reason exactly as often as the test caused it (`want`, checked
 * after every step, so a refusal counted under another reason fails). */
static void test_limits(void **state)
{
    signal(SIGALRM, on_alarm);
    alarm(60);
    test_server s;
    const char *args[] = {"--max-calls", "2", "--max-rows", "4", "--max-import-bytes", "1K",
                          "--default-deadline-ms", "1500", NULL};
    start(&s, args);
    limits_server = s.pid;
    engram_error err;
    engram_client *c = open_client(s.addr, NULL);
    uint64_t want[NREASONS] = {0}, stats_refused = 0;
    phase = "refusals all 0";
    expect_refusals(c, want, &stats_refused);

    /* 65 rows of 16 bytes = 1040 > 1024. */
    phase = "import over the size limit";
    engram_import *imp;
    uint8_t rows65[65 * ROW_BYTES] = {0};
    assert_int_equal(engram_import_begin(c, "big", 65, ROW_BYTES, "u8", &imp, &err), ENGRAM_OK);
    int rc = engram_import_write(imp, 0, rows65, sizeof rows65, &err);
    if (rc == ENGRAM_OK)
        rc = engram_import_finish(imp, NULL, &err);
    else
        engram_import_abort(imp);
    assert_int_equal(rc, ENGRAM_RESOURCE_EXHAUSTED);
    assert_string_equal(err.message, "import of table \"big\" is 1040 bytes (65 rows of 16 bytes); "
                        "the limit is 1024 bytes (--max-import-bytes)");
    want[R_IMPORT_BYTES] = 1;
    phase = "import at the size limit";
    import_table(c, "t");   /* 64 x 16 = 1024: at the limit, taken */
    phase = "refusals after the imports";
    expect_refusals(c, want, &stats_refused);

    /* --max-rows 4: 4 rows are served, 5 refused (twice, counted twice). */
    phase = "max rows";
    uint64_t rows5[5] = {0, 1, 2, 3, 4};
    uint8_t out5[5 * ROW_BYTES];
    assert_int_equal(engram_lookup_sync(c, "t", rows5, 4, out5, sizeof out5, NULL, NULL, &err),
                     ENGRAM_OK);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(engram_lookup_sync(c, "t", rows5, 5, out5, sizeof out5, NULL, NULL, &err),
                         ENGRAM_INVALID_ARGUMENT);
        assert_string_equal(err.message, "request has 5 rows; the maximum per request is 4");
    }
    want[R_MAX_ROWS] = 2;
    expect_refusals(c, want, &stats_refused);

    /* Two calls held open (import streams): a third is refused. The server
     * frees finished calls asynchronously, so let the earlier ones go first
     * (on a loaded machine that takes a moment). */
    usleep(500000);
    phase = "opening two import streams";
    engram_import *i1 = open_import(c, "s1"), *i2 = open_import(c, "s2");
    usleep(200000);
    phase = "third call refused";
    assert_int_equal(table_get(c, "t", &err), ENGRAM_RESOURCE_EXHAUSTED);
    assert_non_null(strstr(err.message, " calls in flight; the limit is 2 (--max-calls)"));
    assert_int_equal(lookup(c, "t", &err), ENGRAM_RESOURCE_EXHAUSTED);
    phase = "aborting the two streams";
    engram_import_abort(i1);
    engram_import_abort(i2);
    phase = "calls admitted again";
    want[R_MAX_CALLS] = 2;
    rc = ENGRAM_RESOURCE_EXHAUSTED;
    for (int i = 0; i < 50 && rc == ENGRAM_RESOURCE_EXHAUSTED; i++) {
        usleep(20000);   /* the server frees the aborted calls asynchronously */
        rc = table_get(c, "t", &err);
        want[R_MAX_CALLS] += rc == ENGRAM_RESOURCE_EXHAUSTED;
    }
    assert_int_equal(rc, ENGRAM_OK);
    phase = "refusals after max calls";
    expect_refusals(c, want, &stats_refused);

    /* Draining: a lookup is refused with UNAVAILABLE, once. */
    phase = "draining";
    int drained = 0;
    uint64_t in_flight = 99;
    assert_int_equal(engram_drain(c, 1000, &drained, &in_flight, &err), ENGRAM_OK);
    assert_int_equal(lookup(c, "t", &err), ENGRAM_UNAVAILABLE);
    assert_string_equal(err.message, "server is draining; retry on another replica");
    assert_int_equal(engram_undrain(c, &err), ENGRAM_OK);
    assert_int_equal(lookup(c, "t", &err), ENGRAM_OK);
    want[R_DRAINING] = 1;
    expect_refusals(c, want, &stats_refused);

    /* An import stream sent without a deadline gets the default one: a
     * message that arrives after it ends the stream. */
    phase = "slow import";
    imp = open_import(c, "slow");
    usleep(1800000);
    uint8_t rest[(ROWS - 1) * ROW_BYTES] = {0};
    rc = engram_import_write(imp, 1, rest, sizeof rest, &err);
    if (rc == ENGRAM_OK)
        rc = engram_import_finish(imp, NULL, &err);
    else
        engram_import_abort(imp);
    assert_int_equal(rc, ENGRAM_DEADLINE_EXCEEDED);
    assert_string_equal(err.message,
                        "import stream passed its deadline after row 1; nothing was activated");
    assert_int_equal(table_get(c, "slow", &err), ENGRAM_NOT_FOUND);
    /* Cut off by the server's default deadline: counted as such. The
     * server finishes the stream before its reply reaches the client, so
     * the count is there by now. */
    phase = "refusals after the deadline";
    want[R_DEADLINE] = 1;
    expect_refusals(c, want, &stats_refused);
    phase = "closing";
    engram_client_close(c);
    assert_int_equal(server_stop(&s), 0);
    alarm(0);
}

static void copy_file(const char *from, const char *to)
{
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    assert_non_null(in);
    assert_non_null(out);
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        assert_int_equal(fwrite(buf, 1, n, out), n);
    fclose(in);
    assert_int_equal(fclose(out), 0);
}

/* Written to a temporary name and renamed, as a Secret update or a careful
 * operator does: a reload check never sees the file half written. */
static void write_text(const char *path, const char *text)
{
    char tmp[400];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(rename(tmp, path), 0);
}

/* The files a reload test rotates: copies of server.pem/.key and a token
 * file holding TOKEN, in a directory of their own, and the CA paths the
 * clients use (cert()'s ring of buffers moves on, so they are copied). */
typedef struct live_files {
    char crt[300], key[300], tok[300], ca[300], rogue_ca[300];
} live_files;

static void live_files_make(live_files *l)
{
    char dir[256];
    harness_tmpdir(dir, sizeof dir);
    snprintf(l->crt, sizeof l->crt, "%s/tls.pem", dir);
    snprintf(l->key, sizeof l->key, "%s/tls.key", dir);
    snprintf(l->tok, sizeof l->tok, "%s/token", dir);
    copy_file(cert("server.pem"), l->crt);
    copy_file(cert("server.key"), l->key);
    write_text(l->tok, TOKEN "\n");
    snprintf(l->ca, sizeof l->ca, "%s", cert("ca.pem"));
    snprintf(l->rogue_ca, sizeof l->rogue_ca, "%s", cert("rogue-ca.pem"));
}

/* A fresh client's admin call: its status (NOT_FOUND once admitted). */
static int admin_call_as(const char *addr, const char *ca, const char *token, engram_error *err)
{
    client_sec sec = {.ca = ca, .token = token};
    engram_client *c = open_client(addr, &sec);
    int rc = admin_call(c, "t", err);
    engram_client_close(c);
    return rc;
}

/* SIGHUP rotates the certificate and the token without a restart: new
 * connections get the new certificate, every admin call is checked
 * against the new token, open connections keep working. A reload with a
 * bad file changes nothing, the good files included, and names the file. */
static void test_reload(void **state)
{
    live_files l;
    live_files_make(&l);
    const char *crt = l.crt, *key = l.key, *tok = l.tok, *ca = l.ca, *rogue_ca = l.rogue_ca;
    test_server s;
    const char *args[] = {"--tls-cert", crt, "--tls-key", key, "--admin-token-file", tok,
                          "--reload-check-ms", "0", NULL};
    start(&s, args);
    assert_int_equal(server_log_wait(&s, "event=tls_certificate subject=\"/CN=localhost\" not_after=", 1,
                                     5000), 0);
    engram_error err;
    client_sec before = {.ca = ca, .token = TOKEN};
    engram_client *open_before = open_client(s.addr, &before);
    import_table(open_before, "t");

    /* Rotate to a certificate of another CA and a new token. */
    copy_file(cert("rotated.pem"), crt);
    copy_file(cert("rotated.key"), key);
    write_text(tok, "rotated-token\n");
    assert_int_equal(server_signal(&s, SIGHUP), 0);
    assert_int_equal(server_log_wait(&s, "event=reloaded tls=reloaded token=reloaded", 1, 5000), 0);
    assert_int_equal(admin_call_as(s.addr, rogue_ca, "rotated-token", &err), ENGRAM_NOT_FOUND);
    assert_int_equal(admin_call_as(s.addr, rogue_ca, TOKEN, &err), ENGRAM_UNAUTHENTICATED);
    assert_string_equal(err.message, "admin token rejected");
    assert_int_equal(admin_call_as(s.addr, ca, "rotated-token", &err), ENGRAM_UNAVAILABLE);
    /* The connection opened before keeps its TLS session; its old token
     * is refused from now on. */
    assert_int_equal(lookup(open_before, "t", &err), ENGRAM_OK);
    assert_int_equal(admin_call(open_before, "t", &err), ENGRAM_UNAUTHENTICATED);
    engram_client_close(open_before);

    /* A key that is not the certificate's: refused, nothing changed. */
    copy_file(cert("operator.key"), key);
    write_text(tok, "third-token\n");
    assert_int_equal(server_signal(&s, SIGHUP), 0);
    char want[900];
    snprintf(want, sizeof want, "level=error event=reload_failed detail=\"TLS key file %s is not "
             "the key of the certificate in %s; nothing was changed\"", key, crt);
    assert_int_equal(server_log_wait(&s, want, 1, 5000), 0);
    assert_int_equal(admin_call_as(s.addr, rogue_ca, "rotated-token", &err), ENGRAM_NOT_FOUND);
    assert_int_equal(admin_call_as(s.addr, rogue_ca, "third-token", &err), ENGRAM_UNAUTHENTICATED);

    /* Good TLS files (back to the first CA) but an empty token line: the
     * TLS files are not taken either. */
    copy_file(cert("server.pem"), crt);
    copy_file(cert("server.key"), key);
    write_text(tok, "\n");
    assert_int_equal(server_signal(&s, SIGHUP), 0);
    snprintf(want, sizeof want, "level=error event=reload_failed detail=\"admin token file %s has "
             "an empty first line; nothing was changed\"", tok);
    assert_int_equal(server_log_wait(&s, want, 1, 5000), 0);
    assert_int_equal(admin_call_as(s.addr, rogue_ca, "rotated-token", &err), ENGRAM_NOT_FOUND);
    assert_int_equal(admin_call_as(s.addr, ca, "rotated-token", &err), ENGRAM_UNAVAILABLE);

    /* Fixed: the second good reload takes both. */
    write_text(tok, "fourth-token\n");
    assert_int_equal(server_signal(&s, SIGHUP), 0);
    assert_int_equal(server_log_wait(&s, "event=reloaded tls=reloaded token=reloaded", 2, 5000), 0);
    assert_int_equal(admin_call_as(s.addr, ca, "fourth-token", &err), ENGRAM_NOT_FOUND);
    assert_int_equal(admin_call_as(s.addr, rogue_ca, "fourth-token", &err), ENGRAM_UNAVAILABLE);
    assert_int_equal(server_stop(&s), 0);
}

/* Without any signal, --reload-check-ms picks up changed files: a rotated
 * certificate and key (written one after the other, so a check may see a
 * certificate with the old key: refused, then taken once the key is there
 * too), a new token, and a bad token file, refused once and not retried
 * until it changes again. */
static void test_reload_on_file_change(void **state)
{
    live_files l;
    live_files_make(&l);
    const char *crt = l.crt, *key = l.key, *tok = l.tok, *ca = l.ca, *rogue_ca = l.rogue_ca;
    test_server s;
    const char *args[] = {"--tls-cert", crt, "--tls-key", key, "--admin-token-file", tok,
                          "--reload-check-ms", "50", NULL};
    start(&s, args);
    engram_error err;
    assert_int_equal(admin_call_as(s.addr, ca, TOKEN, &err), ENGRAM_NOT_FOUND);
    usleep(200000);                          /* several checks: nothing changed */
    assert_int_equal(server_log_count(&s, "event=reload"), 0);

    copy_file(cert("rotated.pem"), crt);
    copy_file(cert("rotated.key"), key);
    assert_int_equal(server_log_wait(&s, "event=reloaded tls=reloaded token=reloaded "
                                         "trigger=files_changed", 1, 5000), 0);
    assert_int_equal(admin_call_as(s.addr, rogue_ca, TOKEN, &err), ENGRAM_NOT_FOUND);
    assert_int_equal(admin_call_as(s.addr, ca, TOKEN, &err), ENGRAM_UNAVAILABLE);

    write_text(tok, "\n");
    assert_int_equal(server_log_wait(&s, "has an empty first line; nothing was changed\" "
                                         "trigger=files_changed", 1, 5000), 0);
    int failed = server_log_count(&s, "event=reload_failed");
    usleep(300000);                          /* six more checks, files unchanged */
    assert_int_equal(server_log_count(&s, "event=reload_failed"), failed);
    assert_int_equal(admin_call_as(s.addr, rogue_ca, TOKEN, &err), ENGRAM_NOT_FOUND);

    write_text(tok, "new-token\n");
    assert_int_equal(server_log_wait(&s, "trigger=files_changed", failed + 2, 5000), 0);
    assert_int_equal(server_log_wait(&s, "event=reloaded tls=reloaded token=reloaded "
                                         "trigger=files_changed", 2, 5000), 0);
    assert_int_equal(admin_call_as(s.addr, rogue_ca, "new-token", &err), ENGRAM_NOT_FOUND);
    assert_int_equal(admin_call_as(s.addr, rogue_ca, TOKEN, &err), ENGRAM_UNAUTHENTICATED);
    assert_int_equal(server_stop(&s), 0);
}

static engram_client *open_refreshing(const char *addr, const char *crt, const char *key,
                                      int refresh_s)
{
    engram_client_options o;
    engram_client_options_init(&o);
    o.deadline_ms = 2000;
    o.tls_ca_file = cert("ca.pem");
    o.tls_cert_file = crt;
    o.tls_key_file = key;
    o.tls_refresh_s = refresh_s;
    engram_client *c = NULL;
    engram_error err;
    if (engram_client_open(addr, &o, &c, &err))
        fail_msg("open %s: %s", addr, err.message);
    return c;
}

/* A long-running client takes a rotated client certificate without being
 * reopened (tls_refresh_s): its certificate starts as one the server's CA
 * did not sign, so every handshake fails; once the files hold the
 * operator's, a later lookup connects. A client with tls_refresh_s 0 read
 * the files once and keeps failing. */
static void test_client_cert_refresh(void **state)
{
    test_server s;
    const char *args[] = {"--tls-cert", cert("server.pem"), "--tls-key", cert("server.key"),
                          "--tls-client-ca", cert("ca.pem"), "--admin-names", "operator", NULL};
    start(&s, args);
    char live[256], crt[300], key[300];
    harness_tmpdir(live, sizeof live);
    snprintf(crt, sizeof crt, "%s/client.pem", live);
    snprintf(key, sizeof key, "%s/client.key", live);
    copy_file(cert("rogue.pem"), crt);
    copy_file(cert("rogue.key"), key);
    engram_client *fresh = open_refreshing(s.addr, crt, key, 1);
    engram_client *once = open_refreshing(s.addr, crt, key, 0);
    engram_error err;
    assert_int_equal(table_get(fresh, "t", &err), ENGRAM_UNAVAILABLE);
    assert_int_equal(table_get(once, "t", &err), ENGRAM_UNAVAILABLE);

    /* Key first, then the certificate, each renamed into place. */
    char tmp[320];
    snprintf(tmp, sizeof tmp, "%s.tmp", key);
    copy_file(cert("operator.key"), tmp);
    assert_int_equal(rename(tmp, key), 0);
    snprintf(tmp, sizeof tmp, "%s.tmp", crt);
    copy_file(cert("operator.pem"), tmp);
    assert_int_equal(rename(tmp, crt), 0);
    int rc = ENGRAM_UNAVAILABLE;
    for (int i = 0; i < 60 && rc == ENGRAM_UNAVAILABLE; i++) {
        usleep(250000);          /* the watcher's second, then gRPC's reconnect back-off */
        rc = admin_call(fresh, "t", &err);
    }
    assert_int_equal(rc, ENGRAM_NOT_FOUND);  /* connected, and admitted as operator */
    assert_int_equal(table_get(once, "t", &err), ENGRAM_UNAVAILABLE);
    engram_client_close(once);
    engram_client_close(fresh);
    assert_int_equal(server_stop(&s), 0);
}

/* Runs engram-server with args; returns its exit status, stderr in out. */
static int run_server(const char *const *args, char *out, size_t cap)
{
    char errfile[300];
    snprintf(errfile, sizeof errfile, "%s/stderr", certs);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        const char *argv[32] = {ENGRAM_SERVER_BIN};
        int n = 1;
        for (int i = 0; args[i] && n < 31; i++)
            argv[n++] = args[i];
        if (!freopen(errfile, "w", stderr))
            _exit(127);
        execv(ENGRAM_SERVER_BIN, (char *const *)argv);
        _exit(127);
    }
    int st;
    waitpid(pid, &st, 0);
    FILE *f = fopen(errfile, "r");
    size_t k = f ? fread(out, 1, cap - 1, f) : 0;
    out[k] = '\0';
    if (f)
        fclose(f);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Start-up: unreadable files and bad combinations exit 2 naming the
 * problem; a plaintext, open server says so in warn lines. */
static void test_startup(void **state)
{
    char out[2048];
    const char *missing[] = {"--tls-cert", "/nonexistent/server.pem", "--tls-key", cert("server.key"),
                             NULL};
    assert_int_equal(run_server(missing, out, sizeof out), 2);
    assert_non_null(strstr(out, "cannot read TLS certificate file /nonexistent/server.pem"));
    const char *notpem[] = {"--tls-cert", cert("server.pem"), "--tls-key", cert("token"), NULL};
    assert_int_equal(run_server(notpem, out, sizeof out), 2);
    assert_non_null(strstr(out, "holds no PEM block"));
    const char *mismatch[] = {"--tls-cert", cert("server.pem"), "--tls-key", cert("operator.key"),
                              NULL};
    assert_int_equal(run_server(mismatch, out, sizeof out), 2);
    char want[700];
    snprintf(want, sizeof want, "engram-server: TLS key file %s is not the key of the "
             "certificate in %s\n", cert("operator.key"), cert("server.pem"));
    assert_string_equal(out, want);
    const char *notcert[] = {"--tls-cert", cert("server.key"), "--tls-key", cert("server.key"),
                             NULL};
    assert_int_equal(run_server(notcert, out, sizeof out), 2);
    snprintf(want, sizeof want, "engram-server: TLS certificate file %s: no start line\n",
             cert("server.key"));
    assert_string_equal(out, want);
    const char *token[] = {"--admin-token-file", "/nonexistent/token", NULL};
    assert_int_equal(run_server(token, out, sizeof out), 2);
    assert_non_null(strstr(out, "cannot read admin token file /nonexistent/token"));
    const char *names[] = {"--admin-names", "operator", NULL};
    assert_int_equal(run_server(names, out, sizeof out), 2);
    assert_non_null(strstr(out, "--admin-names needs --tls-client-ca"));
    /* A token over plaintext beyond loopback: refused, on either listener
     * that would carry the admin plane. */
    const char *clear[] = {"--listen", "0.0.0.0:0", "--admin-token-file", cert("token"), NULL};
    assert_int_equal(run_server(clear, out, sizeof out), 2);
    assert_string_equal(out, "engram-server: --admin-token-file on plaintext 0.0.0.0:0 would "
                        "send the admin token in the clear: add --tls-cert/--tls-key, serve the "
                        "admin plane on loopback (--admin-listen 127.0.0.1:PORT), or pass "
                        "--allow-plaintext-token\n");
    const char *clear_admin[] = {"--admin-listen", "[::]:0", "--admin-token-file", cert("token"),
                                 NULL};
    assert_int_equal(run_server(clear_admin, out, sizeof out), 2);
    assert_non_null(strstr(out, "--admin-token-file on plaintext [::]:0 would send"));

    test_server s;
    start(&s, NULL);
    assert_int_equal(server_stop(&s), 0);
    char logpath[300], log[8192];
    snprintf(logpath, sizeof logpath, "%s/server.log", s.dir);
    FILE *f = fopen(logpath, "r");
    assert_non_null(f);
    size_t k = fread(log, 1, sizeof log - 1, f);
    log[k] = '\0';
    fclose(f);
    assert_non_null(strstr(log, "level=warn event=transport_insecure transport=insecure"));
    assert_non_null(strstr(log, "level=warn event=admin_open"));
}

/* A token over plaintext starts where it stays on this host (the admin
 * plane on loopback) or where --allow-plaintext-token says so (with a warn
 * line), and the token still admits admin calls. */
static void test_plaintext_token(void **state)
{
    char admin_addr[64];
    snprintf(admin_addr, sizeof admin_addr, "127.0.0.1:%d", harness_free_port());
    const char *loop[] = {"--listen", "0.0.0.0:0", "--admin-listen", admin_addr,
                          "--admin-token-file", cert("token"), NULL};
    const char *opt_in[] = {"--listen", "0.0.0.0:0", "--admin-token-file", cert("token"),
                            "--allow-plaintext-token", NULL};
    const char *const *cases[] = {loop, opt_in};
    for (int i = 0; i < 2; i++) {
        test_server s;
        start(&s, cases[i]);
        client_sec good = {.token = TOKEN};
        engram_client *c = open_client(i == 0 ? admin_addr : s.addr, &good);
        engram_client *anon = open_client(i == 0 ? admin_addr : s.addr, NULL);
        engram_error err;
        assert_int_equal(admin_call(c, "t", &err), ENGRAM_NOT_FOUND);
        assert_int_equal(admin_call(anon, "t", &err), ENGRAM_UNAUTHENTICATED);
        engram_client_close(c);
        engram_client_close(anon);
        assert_int_equal(server_stop(&s), 0);
        assert_int_equal(server_log_count(&s, "level=warn event=token_plaintext listen=0.0.0.0:0"),
                         i == 1);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tls_token),
        cmocka_unit_test(test_mtls_names),
        cmocka_unit_test(test_admin_listen),
        cmocka_unit_test(test_admin_listen_tls),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_reload),
        cmocka_unit_test(test_reload_on_file_change),
        cmocka_unit_test(test_client_cert_refresh),
        cmocka_unit_test(test_startup),
        cmocka_unit_test(test_plaintext_token),
    };
    return cmocka_run_group_tests(tests, group_setup, NULL);
}
