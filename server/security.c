/* security.c: TLS credentials, the admin auth check and the call limits
 * (see security.h).
 *
 * Files are read once at start-up: a certificate rotation is a restart
 * (the servers of a cluster restart one by one anyway). The PEM text is
 * kept until teardown because each listener needs its own credentials
 * object (gRPC takes ownership of the one bound to a port).
 *
 * The token is compared in constant time over equal lengths, with the
 * length compared separately: a timing difference may reveal the token's
 * length, never its bytes. It is never logged, and refusals name only
 * which kind of credential failed. */
#include "security.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grpc_util.h"
#include "hooks.h"
#include "log.h"
#include "status.h"

#define MAX_ADMIN_NAMES 32
#define MAX_PEM_BYTES (1u << 20)

static struct {
    char *cert_pem, *key_pem, *ca_pem;
    char *token;
    size_t token_len;
    char *names_buf;                   /* the list, split in place */
    const char *names[MAX_ADMIN_NAMES];
    int nnames;
    const server_metrics *m;
    uint64_t max_calls;
    int64_t default_deadline_ms;
} S;

/* ---- files -------------------------------------------------------------- */

/* The whole file as a string; NULL with err naming the file. */
static char *read_file(const char *path, const char *what, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot read %s file %s: %s", what, path, strerror(errno));
        return NULL;
    }
    char *buf = malloc(MAX_PEM_BYTES + 1);
    size_t n = buf ? fread(buf, 1, MAX_PEM_BYTES + 1, f) : 0;
    int bad = !buf || ferror(f);
    fclose(f);
    if (bad || n > MAX_PEM_BYTES) {
        snprintf(err, errlen, "cannot read %s file %s: %s", what, path,
                 bad ? "read error" : "larger than 1 MiB");
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    return buf;
}

/* A PEM file: also checked for a PEM block, so a swapped or empty file is
 * named here rather than as an opaque TLS failure at bind time. */
static char *read_pem(const char *path, const char *what, char *err, size_t errlen)
{
    char *pem = read_file(path, what, err, errlen);
    if (pem && !strstr(pem, "-----BEGIN ")) {
        snprintf(err, errlen, "%s file %s holds no PEM block (-----BEGIN ...)", what, path);
        free(pem);
        return NULL;
    }
    return pem;
}

static int read_token(const char *path, char *err, size_t errlen)
{
    char *text = read_file(path, "admin token", err, errlen);
    if (!text)
        return -1;
    size_t end = strcspn(text, "\r\n");
    text[end] = '\0';
    char *s = text;
    while (isspace((unsigned char)*s))
        s++;
    size_t len = strlen(s);
    while (len && isspace((unsigned char)s[len - 1]))
        s[--len] = '\0';
    if (len == 0) {
        snprintf(err, errlen, "admin token file %s has an empty first line", path);
        free(text);
        return -1;
    }
    S.token = strdup(s);
    S.token_len = len;
    /* Scrub the copy read from disk before freeing it. */
    explicit_bzero(text, strlen(text));
    free(text);
    return 0;
}

static int parse_names(const char *list, char *err, size_t errlen)
{
    S.names_buf = strdup(list);
    for (char *save = NULL, *tok = strtok_r(S.names_buf, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        if (S.nnames == MAX_ADMIN_NAMES) {
            snprintf(err, errlen, "--admin-names lists more than %d names", MAX_ADMIN_NAMES);
            return -1;
        }
        S.names[S.nnames++] = tok;
    }
    if (S.nnames == 0) {
        snprintf(err, errlen, "--admin-names \"%s\" names no certificate", list);
        return -1;
    }
    return 0;
}

/* ---- admin auth ------------------------------------------------------------ */

int security_equal_ct(const void *a, size_t alen, const void *b, size_t blen)
{
    if (alen != blen)
        return 0;
    const volatile unsigned char *x = a, *y = b;
    unsigned char diff = 0;
    for (size_t i = 0; i < alen; i++)
        diff |= x[i] ^ y[i];
    return diff == 0;
}

/* The value of the call's `authorization` metadata, or NULL. */
static const grpc_slice *authorization(const server_call *c)
{
    for (size_t i = 0; i < c->md.count; i++)
        if (grpc_slice_str_cmp(c->md.metadata[i].key, "authorization") == 0)
            return &c->md.metadata[i].value;
    return NULL;
}

/* 1 when the header carries the token ("Bearer" is case-insensitive, as
 * in RFC 6750). */
static int token_matches(const grpc_slice *v)
{
    size_t len = GRPC_SLICE_LENGTH(*v);
    const char *p = (const char *)GRPC_SLICE_START_PTR(*v);
    if (!S.token || len < 7 || strncasecmp(p, "Bearer ", 7) != 0)
        return 0;
    return security_equal_ct(p + 7, len - 7, S.token, S.token_len);
}

static int on_admin_list(const char *name, size_t len)
{
    for (int i = 0; i < S.nnames; i++)
        if (strlen(S.names[i]) == len && memcmp(S.names[i], name, len) == 0)
            return 1;
    return 0;
}

/* Checks the peer's certificate names against the list: 1 admitted, 0 an
 * authenticated certificate not on it (its name in `who`), -1 no
 * authenticated certificate. */
static int check_peer(server_call *c, char *who, size_t wholen)
{
    grpc_auth_context *ctx = grpc_call_auth_context(c->call);
    if (!ctx)
        return -1;
    int verdict = -1;
    if (grpc_auth_context_peer_is_authenticated(ctx)) {
        static const char *const props[] = {"x509_common_name", "x509_subject_alternative_name"};
        verdict = 0;
        for (size_t k = 0; k < 2 && verdict == 0; k++) {
            grpc_auth_property_iterator it = grpc_auth_context_find_properties_by_name(ctx, props[k]);
            for (const grpc_auth_property *p; verdict == 0 && (p = grpc_auth_property_iterator_next(&it));) {
                if (on_admin_list(p->value, p->value_length))
                    verdict = 1;
                else if (!*who)
                    snprintf(who, wholen, "%.*s", (int)(p->value_length > 128 ? 128 : p->value_length),
                             p->value);
            }
        }
    }
    grpc_auth_context_release(ctx);
    return verdict;
}

/* Admission: the admin plane needs a token or a listed certificate. A
 * valid credential of either kind admits; a certificate is checked first
 * because it is free of secrets. */
static int auth_admit(server_call *c, const method_def *m, char *msg, size_t msglen)
{
    if (m->plane != PLANE_ADMIN || (!S.token && S.nnames == 0))
        return ES_OK;
    char who[132] = "";
    int peer = S.nnames ? check_peer(c, who, sizeof who) : -1;
    if (peer == 1)
        return ES_OK;
    const grpc_slice *bearer = authorization(c);
    if (bearer && token_matches(bearer))
        return ES_OK;
    if (bearer) {
        snprintf(msg, msglen, "admin token rejected");
        return ES_UNAUTHENTICATED;
    }
    if (peer == 0) {
        snprintf(msg, msglen, "client certificate \"%s\" is not on the admin list (--admin-names)",
                 who[0] ? who : "(no name)");
        return ES_PERMISSION_DENIED;
    }
    snprintf(msg, msglen, "admin call without credentials: send authorization: Bearer <token> "
             "or a client certificate on the admin list");
    return ES_UNAUTHENTICATED;
}

/* ---- limits ---------------------------------------------------------------- */

/* Admission: the cap on calls in flight. calls_in_flight already counts
 * this call, so the others are one less. Health checks are exempt: a
 * saturated server must still answer its probes, or it looks dead and is
 * restarted exactly when it is busiest. */
static int limits_admit(server_call *c, const method_def *m, char *msg, size_t msglen)
{
    if (!S.max_calls || strncmp(m->path, "/grpc.health.v1.", 16) == 0)
        return ES_OK;
    uint64_t others = __atomic_load_n(&S.m->calls_in_flight, __ATOMIC_RELAXED) - 1;
    if (others < S.max_calls)
        return ES_OK;
    snprintf(msg, msglen, "%llu calls in flight; the limit is %llu (--max-calls)",
             (unsigned long long)others, (unsigned long long)S.max_calls);
    return ES_RESOURCE_EXHAUSTED;
}

/* Admission: a call without a deadline gets the default one, so a client
 * that never sets one cannot hold a handler (or an import claim) forever.
 * Never refuses. */
static int deadline_admit(server_call *c, const method_def *m, char *msg, size_t msglen)
{
    if (S.default_deadline_ms > 0 && call_ms_left(c) == INT64_MAX)
        c->deadline = deadline_in_ms(S.default_deadline_ms);
    return ES_OK;
}

/* ---- setup ----------------------------------------------------------------- */

static int check_combination(const security_options *o, char *err, size_t errlen)
{
    if (!o->tls_cert != !o->tls_key) {
        snprintf(err, errlen, "--tls-cert and --tls-key go together");
        return -1;
    }
    if (o->tls_client_ca && !o->tls_cert) {
        snprintf(err, errlen, "--tls-client-ca needs --tls-cert and --tls-key (client "
                 "certificates are only sent over TLS)");
        return -1;
    }
    if (o->admin_names && !o->tls_client_ca) {
        snprintf(err, errlen, "--admin-names needs --tls-client-ca: without it no client "
                 "certificate is verified, so none could be admitted");
        return -1;
    }
    return 0;
}

int security_setup(const security_options *o, const server_metrics *m, char *err, size_t errlen)
{
    memset(&S, 0, sizeof S);
    S.m = m;
    S.max_calls = o->max_calls;
    S.default_deadline_ms = o->default_deadline_ms;
    if (check_combination(o, err, errlen))
        return -1;
    if (o->tls_cert && (!(S.cert_pem = read_pem(o->tls_cert, "TLS certificate", err, errlen)) ||
                        !(S.key_pem = read_pem(o->tls_key, "TLS key", err, errlen))))
        return -1;
    if (o->tls_client_ca && !(S.ca_pem = read_pem(o->tls_client_ca, "TLS client CA", err, errlen)))
        return -1;
    if (o->admin_token_file && read_token(o->admin_token_file, err, errlen))
        return -1;
    if (o->admin_names && parse_names(o->admin_names, err, errlen))
        return -1;
    /* Authentication first: a refused caller learns nothing about load. */
    hooks_add_admit(auth_admit);
    hooks_add_admit(limits_admit);
    hooks_add_admit(deadline_admit);
    return 0;
}

grpc_server_credentials *security_server_creds(void)
{
    if (!S.cert_pem)
        return NULL;
    grpc_ssl_pem_key_cert_pair pair = {S.key_pem, S.cert_pem};
    return grpc_ssl_server_credentials_create_ex(
        S.ca_pem, &pair, 1,
        S.ca_pem ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                 : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE,
        NULL);
}

const char *security_transport_name(void)
{
    return !S.cert_pem ? "insecure" : S.ca_pem ? "mtls" : "tls";
}

void security_log_startup(void)
{
    if (!S.cert_pem)
        log_warn("transport_insecure", "transport=insecure detail=\"plaintext gRPC: use "
                 "--tls-cert/--tls-key beyond local use\"");
    if (!S.token && S.nnames == 0)
        log_warn("admin_open", "detail=\"the admin plane is open to every client: use "
                 "--admin-token-file or --admin-names beyond local use\"");
    else
        log_info("admin_auth", "token=%s names=%d", S.token ? "set" : "none", S.nnames);
    if (S.max_calls || S.default_deadline_ms)
        log_info("call_limits", "max_calls=%llu default_deadline_ms=%lld",
                 (unsigned long long)S.max_calls, (long long)S.default_deadline_ms);
}

static void free_secret(char *s)
{
    if (s) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

void security_teardown(void)
{
    free(S.cert_pem);
    free_secret(S.key_pem);
    free(S.ca_pem);
    free_secret(S.token);
    free(S.names_buf);
    memset(&S, 0, sizeof S);
}
