/* security.c: the admin auth check, the call limits, and the reload of
 * the secrets on SIGHUP or when their files change (see security.h); the
 * TLS files are tls.c's.
 *
 * A reload reads and checks every file first and replaces nothing unless
 * all of them are good, so a half-written rotation never leaves the server
 * with a certificate from one rotation and a token from another, or with
 * none. The token is swapped under a mutex: admin calls are rare, so the
 * lock costs nothing a reader would notice.
 *
 * The token is compared in constant time over equal lengths, with the
 * length compared separately: a timing difference may reveal the token's
 * length, never its bytes. It is never logged, and refusals name only
 * which kind of credential failed. */
#include "security.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "grpc_util.h"
#include "hooks.h"
#include "log.h"
#include "methods.h"
#include "metric.h"
#include "status.h"
#include "tls.h"

#define MAX_ADMIN_NAMES 32

/* What stat() says of one file: a change in any field is a new file (a
 * Kubernetes Secret update swaps a symlink, so the inode changes; an edit
 * in place changes the mtime or size). */
typedef struct file_stamp {
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
    int missing;
} file_stamp;

static struct {
    security_options o;          /* the paths, for reloads */
    pthread_mutex_t mu;          /* guards token and token_len */
    char *token;
    size_t token_len;
    char *names_buf;                   /* the list, split in place */
    const char *names[MAX_ADMIN_NAMES];
    int nnames;
    const server_metrics *m;
    uint64_t max_calls;
    int64_t default_deadline_ms;
    uint64_t reloads[2];         /* ok, failed */
    file_stamp stamps[4];        /* the files as of the last load or attempt */
} S = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* ---- the token ---------------------------------------------------------- */

/* The token file's first line, trimmed: a fresh string, or NULL with err
 * naming the file. The line read from disk is scrubbed before it is freed. */
static char *read_token(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "cannot read admin token file %s: %s", path, strerror(errno));
        return NULL;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n = getline(&line, &cap, f);
    int bad = n < 0 && ferror(f);
    fclose(f);
    if (bad) {
        snprintf(err, errlen, "cannot read admin token file %s: read error", path);
        free(line);
        return NULL;
    }
    char *s = line ? line : "";
    while (isspace((unsigned char)*s))
        s++;
    size_t len = strlen(s);
    while (len && isspace((unsigned char)s[len - 1]))
        len--;
    char *token = len ? strndup(s, len) : NULL;
    if (line) {
        explicit_bzero(line, cap);
        free(line);
    }
    if (!len)
        snprintf(err, errlen, "admin token file %s has an empty first line", path);
    return token;
}

static void free_secret(char *s)
{
    if (s) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

/* Installs a token read by read_token; the old one is scrubbed. */
static void set_token(char *token)
{
    pthread_mutex_lock(&S.mu);
    char *old = S.token;
    S.token = token;
    S.token_len = token ? strlen(token) : 0;
    pthread_mutex_unlock(&S.mu);
    free_secret(old);
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
    if (len < 7 || strncasecmp(p, "Bearer ", 7) != 0)
        return 0;
    pthread_mutex_lock(&S.mu);
    int ok = S.token && security_equal_ct(p + 7, len - 7, S.token, S.token_len);
    pthread_mutex_unlock(&S.mu);
    return ok;
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
    if (m->plane != PLANE_ADMIN || (!S.o.admin_token_file && S.nnames == 0))
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
    if (!S.max_calls || strncmp(m->path, METHOD_HEALTH_PREFIX, sizeof METHOD_HEALTH_PREFIX - 1) == 0)
        return ES_OK;
    uint64_t others = METRIC_GET(S.m, calls_in_flight) - 1;
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

int security_listen_is_local(const char *listen)
{
    if (!strncmp(listen, "unix:", 5) || !strncmp(listen, "unix-abstract:", 14))
        return 1;
    char host[256];
    const char *end = listen[0] == '[' ? strchr(listen, ']') : strrchr(listen, ':');
    const char *start = listen + (listen[0] == '[');
    if (!end || end <= start || (size_t)(end - start) >= sizeof host)
        return 0;
    memcpy(host, start, (size_t)(end - start));
    host[end - start] = 0;
    if (!strcmp(host, "localhost"))
        return 1;
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, host, &a6) == 1)
        return IN6_IS_ADDR_LOOPBACK(&a6) ||
               (IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127);
    return 0;
}

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
    /* A bearer token in the clear can be read off the network and replayed:
     * refused unless it never leaves this host or the operator says so.
     * Loopback stays allowed so local use and tests need no certificate. */
    if (o->admin_token_file && !o->tls_cert && !o->allow_plaintext_token &&
        o->admin_plane_listen && !security_listen_is_local(o->admin_plane_listen)) {
        snprintf(err, errlen, "--admin-token-file on plaintext %s would send the admin token "
                 "in the clear: add --tls-cert/--tls-key, serve the admin plane on loopback "
                 "(--admin-listen 127.0.0.1:PORT), or pass --allow-plaintext-token",
                 o->admin_plane_listen);
        return -1;
    }
    return 0;
}

/* Stamps of the files reloads read (unused slots stay zero). */
static void stamp_files(file_stamp out[4])
{
    const char *paths[4] = {S.o.tls_cert, S.o.tls_key, S.o.tls_client_ca, S.o.admin_token_file};
    memset(out, 0, 4 * sizeof *out);
    for (int i = 0; i < 4; i++) {
        struct stat st;
        if (!paths[i])
            continue;
        if (stat(paths[i], &st) != 0) {
            out[i].missing = 1;
            continue;
        }
        out[i] = (file_stamp){st.st_dev, st.st_ino, st.st_size, st.st_mtim, 0};
    }
}

/* Clears everything but the mutex (setup may run again in unit tests). */
static void reset(void)
{
    free_secret(S.token);
    free(S.names_buf);
    pthread_mutex_t mu = S.mu;
    memset(&S, 0, sizeof S);
    S.mu = mu;
}

static void metrics_register(void);

int security_setup(const security_options *o, const server_metrics *m, char *err, size_t errlen)
{
    reset();
    S.o = *o;
    S.m = m;
    S.max_calls = o->max_calls;
    S.default_deadline_ms = o->default_deadline_ms;
    metrics_register();
    if (check_combination(o, err, errlen))
        return -1;
    tls_files *f = NULL;
    if (o->tls_cert && !(f = tls_load(o->tls_cert, o->tls_key, o->tls_client_ca, err, errlen)))
        return -1;
    char *token = NULL;
    if (o->admin_token_file && !(token = read_token(o->admin_token_file, err, errlen))) {
        tls_files_free(f);
        return -1;
    }
    if (o->admin_names && parse_names(o->admin_names, err, errlen)) {
        tls_files_free(f);
        free_secret(token);
        return -1;
    }
    if (f)
        tls_commit(f);
    set_token(token);
    stamp_files(S.stamps);
    /* Authentication first: a refused caller learns nothing about load. */
    hooks_add_admit(auth_admit);
    hooks_add_admit(limits_admit);
    hooks_add_admit(deadline_admit);
    return 0;
}

grpc_server_credentials *security_server_creds(void)
{
    return tls_server_creds();
}

const char *security_transport_name(void)
{
    return !tls_enabled() ? "insecure" : tls_mutual() ? "mtls" : "tls";
}

/* The certificate's subject and expiry, at start-up and after a reload. */
static void log_certificate(const char *event)
{
    char subject[256];
    int64_t not_after;
    tls_cert_info(subject, sizeof subject, &not_after);
    time_t t = (time_t)not_after;
    struct tm tm;
    char when[32] = "unknown";
    if (not_after && gmtime_r(&t, &tm))
        strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    int64_t left = not_after - (int64_t)time(NULL);
    if (not_after && left < 0)
        log_warn(event, "subject=\"%s\" not_after=%s detail=\"the certificate has expired\"",
                 subject, when);
    else
        log_info(event, "subject=\"%s\" not_after=%s days_left=%lld", subject, when,
                 (long long)(left / 86400));
}

void security_log_startup(void)
{
    if (!tls_enabled())
        log_warn("transport_insecure", "transport=insecure detail=\"plaintext gRPC: use "
                 "--tls-cert/--tls-key beyond local use\"");
    else
        log_certificate("tls_certificate");
    if (S.o.admin_token_file && !tls_enabled() && S.o.admin_plane_listen &&
        !security_listen_is_local(S.o.admin_plane_listen))
        log_warn("token_plaintext", "listen=%s detail=\"--allow-plaintext-token: the admin "
                 "token crosses the network in the clear\"", S.o.admin_plane_listen);
    if (!S.o.admin_token_file && S.nnames == 0)
        log_warn("admin_open", "detail=\"the admin plane is open to every client: use "
                 "--admin-token-file or --admin-names beyond local use\"");
    else
        log_info("admin_auth", "token=%s names=%d", S.o.admin_token_file ? "set" : "none",
                 S.nnames);
    if (S.max_calls || S.default_deadline_ms)
        log_info("call_limits", "max_calls=%llu default_deadline_ms=%lld",
                 (unsigned long long)S.max_calls, (long long)S.default_deadline_ms);
}

/* ---- reload ------------------------------------------------------------------ */

void security_reload_if_changed(void)
{
    if (!S.o.tls_cert && !S.o.admin_token_file)
        return;
    file_stamp now[4];
    stamp_files(now);
    /* Compared field by field: the struct has padding. */
    for (int i = 0; i < 4; i++) {
        const file_stamp *a = &now[i], *b = &S.stamps[i];
        if (a->dev != b->dev || a->ino != b->ino || a->size != b->size ||
            a->mtime.tv_sec != b->mtime.tv_sec || a->mtime.tv_nsec != b->mtime.tv_nsec ||
            a->missing != b->missing) {
            /* A failed attempt is not repeated until the files change again. */
            security_reload("files_changed");
            return;
        }
    }
}

int security_reload(const char *trigger)
{
    stamp_files(S.stamps);
    const security_options *o = &S.o;
    char err[600] = "";
    tls_files *f = NULL;
    char *token = NULL;
    int ok = (!o->tls_cert || (f = tls_load(o->tls_cert, o->tls_key, o->tls_client_ca, err,
                                            sizeof err))) &&
             (!o->admin_token_file || (token = read_token(o->admin_token_file, err, sizeof err)));
    if (!ok) {
        tls_files_free(f);
        __atomic_add_fetch(&S.reloads[1], 1, __ATOMIC_RELAXED);
        log_error("reload_failed", "detail=\"%s; nothing was changed\" trigger=%s", err, trigger);
        return -1;
    }
    if (f)
        tls_commit(f);
    if (token)
        set_token(token);
    __atomic_add_fetch(&S.reloads[0], 1, __ATOMIC_RELAXED);
    log_info("reloaded", "tls=%s token=%s trigger=%s", f ? "reloaded" : "off",
             token ? "reloaded" : "off", trigger);
    if (f)
        log_certificate("tls_certificate");
    return 0;
}

/* ---- metrics ------------------------------------------------------------------
 *
 * Reloads by result and the certificate's expiry, for alerts on both: a
 * rotation that keeps failing, or a certificate about to run out. */

static void collect_reloads(const metric_family *f, metric_sink *s)
{
    static const char *const results[2] = {"ok", "failed"};
    for (int i = 0; i < 2; i++) {
        metric_label l = {"result", results[i]};
        metric_sample x = {.labels = &l, .nlabels = 1,
                           .value = __atomic_load_n(&S.reloads[i], __ATOMIC_RELAXED)};
        s->sample(s, f, &x);
    }
}

/* Registered only with TLS: an expiry of 0 would look like an expired
 * certificate. */
static void collect_not_after(const metric_family *f, metric_sink *s)
{
    int64_t t;
    tls_cert_info(NULL, 0, &t);
    if (t) {
        metric_sample x = {.value = (uint64_t)t};
        s->sample(s, f, &x);
    }
}

static const metric_family reloads_family = {
    "engram_reloads_total", METRIC_COUNTER,
    "SIGHUP reloads of the TLS and token files, by result.", {NULL}, 0, collect_reloads};
static const metric_family not_after_family = {
    "engram_tls_cert_not_after_seconds", METRIC_GAUGE,
    "When the serving TLS certificate expires (Unix time).", {NULL}, 0, collect_not_after};

/* Once, however often setup runs (tests set up again without teardown). */
static void metrics_register(void)
{
    metric_deregister(&reloads_family);
    metric_deregister(&not_after_family);
    metric_register_family(&reloads_family);
    if (S.o.tls_cert)
        metric_register_family(&not_after_family);
}

void security_teardown(void)
{
    metric_deregister(&reloads_family);
    metric_deregister(&not_after_family);
    reset();
    tls_teardown();
}
