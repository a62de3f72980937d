/* tls.c: the TLS files of engram-server, checked with OpenSSL, and the
 * certificate fetcher that lets them be replaced at run time (see tls.h).
 *
 * gRPC core asks a credentials' fetcher for a new certificate config at
 * every handshake. Each listener's fetcher remembers the generation it
 * last handed out; a commit bumps the generation, so the next handshake on
 * every listener gets the new config and the rest get "unchanged" (a lock
 * and a compare, nothing re-read). The PEM text stays in memory because
 * each config is built from it; the key is scrubbed when freed. */
#include "tls.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#define MAX_PEM_BYTES (1u << 20)
#define MAX_LISTENERS 4

struct tls_files {
    char *cert_pem, *key_pem, *ca_pem;
    char subject[256];
    int64_t not_after;
};

typedef struct fetch_state {
    uint64_t seen;               /* generation last handed to gRPC */
} fetch_state;

static struct {
    pthread_mutex_t mu;
    tls_files *cur;
    uint64_t gen;
    int mutual;
    fetch_state fetch[MAX_LISTENERS];
    int nfetch;
} T = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* ---- reading and checking ------------------------------------------------ */

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
    if (!strstr(buf, "-----BEGIN ")) {
        /* A swapped or empty file, named here rather than at handshake. */
        snprintf(err, errlen, "%s file %s holds no PEM block (-----BEGIN ...)", what, path);
        free(buf);
        return NULL;
    }
    return buf;
}

/* OpenSSL's reason for the last failure, and its queue cleared (the queue
 * is per thread and gRPC's handshakes read it on theirs). */
static const char *ssl_reason(char *buf, size_t len)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    snprintf(buf, len, "%s", r ? r : "unknown error");
    ERR_clear_error();
    return buf;
}

/* Never prompts for a passphrase: an encrypted key is an error. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf, (void)size, (void)rwflag, (void)u;
    return -1;
}

static X509 *parse_cert(const char *pem)
{
    BIO *b = BIO_new_mem_buf(pem, -1);
    X509 *x = b ? PEM_read_bio_X509(b, NULL, no_passphrase, NULL) : NULL;
    BIO_free(b);
    return x;
}

static EVP_PKEY *parse_key(const char *pem)
{
    BIO *b = BIO_new_mem_buf(pem, -1);
    EVP_PKEY *k = b ? PEM_read_bio_PrivateKey(b, NULL, no_passphrase, NULL) : NULL;
    BIO_free(b);
    return k;
}

static int64_t not_after_of(const X509 *x)
{
    struct tm tm;
    if (ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) != 1)
        return 0;
    return (int64_t)timegm(&tm);
}

/* The certificate parses, the key parses and is the certificate's. */
static int check_pair(tls_files *f, const char *cert, const char *key, char *err, size_t errlen)
{
    char why[200];
    X509 *x = parse_cert(f->cert_pem);
    if (!x) {
        snprintf(err, errlen, "TLS certificate file %s: %s", cert, ssl_reason(why, sizeof why));
        return -1;
    }
    EVP_PKEY *k = parse_key(f->key_pem);
    int rc = 0;
    if (!k && strstr(f->key_pem, "ENCRYPTED")) {
        /* A server restarts unattended: nobody is there to type it. */
        ERR_clear_error();
        snprintf(err, errlen, "TLS key file %s is encrypted; engram-server needs the key "
                 "unencrypted (protect the file with its permissions)", key);
        rc = -1;
    } else if (!k) {
        snprintf(err, errlen, "TLS key file %s: %s", key, ssl_reason(why, sizeof why));
        rc = -1;
    } else if (X509_check_private_key(x, k) != 1) {
        ERR_clear_error();
        snprintf(err, errlen, "TLS key file %s is not the key of the certificate in %s", key,
                 cert);
        rc = -1;
    }
    X509_NAME_oneline(X509_get_subject_name(x), f->subject, sizeof f->subject);
    f->not_after = not_after_of(x);
    EVP_PKEY_free(k);
    X509_free(x);
    return rc;
}

static int check_ca(const char *pem, const char *path, char *err, size_t errlen)
{
    char why[200];
    X509 *x = parse_cert(pem);
    if (!x) {
        snprintf(err, errlen, "TLS client CA file %s: %s", path, ssl_reason(why, sizeof why));
        return -1;
    }
    X509_free(x);
    return 0;
}

tls_files *tls_load(const char *cert, const char *key, const char *client_ca, char *err,
                    size_t errlen)
{
    tls_files *f = calloc(1, sizeof *f);
    if (!f) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    int ok = (f->cert_pem = read_file(cert, "TLS certificate", err, errlen)) &&
             (f->key_pem = read_file(key, "TLS key", err, errlen)) &&
             (!client_ca || (f->ca_pem = read_file(client_ca, "TLS client CA", err, errlen))) &&
             check_pair(f, cert, key, err, errlen) == 0 &&
             (!client_ca || check_ca(f->ca_pem, client_ca, err, errlen) == 0);
    if (!ok) {
        tls_files_free(f);
        return NULL;
    }
    return f;
}

void tls_files_free(tls_files *f)
{
    if (!f)
        return;
    free(f->cert_pem);
    if (f->key_pem) {
        explicit_bzero(f->key_pem, strlen(f->key_pem));
        free(f->key_pem);
    }
    free(f->ca_pem);
    free(f);
}

/* ---- gRPC ------------------------------------------------------------------ */

void tls_commit(tls_files *f)
{
    pthread_mutex_lock(&T.mu);
    tls_files *old = T.cur;
    if (!old)
        T.mutual = f->ca_pem != NULL;
    T.cur = f;
    T.gen++;
    pthread_mutex_unlock(&T.mu);
    tls_files_free(old);
}

/* gRPC's fetcher, at every handshake on one listener. */
static grpc_ssl_certificate_config_reload_status fetch(void *user, grpc_ssl_server_certificate_config **config)
{
    fetch_state *st = user;
    pthread_mutex_lock(&T.mu);
    grpc_ssl_certificate_config_reload_status r = GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_UNCHANGED;
    if (st->seen != T.gen) {
        grpc_ssl_pem_key_cert_pair pair = {T.cur->key_pem, T.cur->cert_pem};
        /* gRPC 1.51 asserts that a fetched config has root certificates,
         * even when client certificates are never requested; the server's
         * own chain stands in then, and no handshake ever uses it. */
        const char *roots = T.cur->ca_pem ? T.cur->ca_pem : T.cur->cert_pem;
        *config = grpc_ssl_server_certificate_config_create(roots, &pair, 1);
        st->seen = T.gen;
        r = GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_NEW;
    }
    pthread_mutex_unlock(&T.mu);
    return r;
}

grpc_server_credentials *tls_server_creds(void)
{
    pthread_mutex_lock(&T.mu);
    fetch_state *st = T.cur && T.nfetch < MAX_LISTENERS ? &T.fetch[T.nfetch++] : NULL;
    int mutual = T.mutual;
    pthread_mutex_unlock(&T.mu);
    if (!st)
        return NULL;
    grpc_ssl_server_credentials_options *o =
        grpc_ssl_server_credentials_create_options_using_config_fetcher(
            mutual ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                   : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE,
            fetch, st);
    return grpc_ssl_server_credentials_create_with_options(o);
}

int tls_enabled(void)
{
    pthread_mutex_lock(&T.mu);
    int on = T.cur != NULL;
    pthread_mutex_unlock(&T.mu);
    return on;
}

int tls_mutual(void)
{
    pthread_mutex_lock(&T.mu);
    int m = T.cur && T.mutual;
    pthread_mutex_unlock(&T.mu);
    return m;
}

void tls_cert_info(char *subject, size_t len, int64_t *not_after)
{
    pthread_mutex_lock(&T.mu);
    if (subject)
        snprintf(subject, len, "%s", T.cur ? T.cur->subject : "");
    if (not_after)
        *not_after = T.cur ? T.cur->not_after : 0;
    pthread_mutex_unlock(&T.mu);
}

void tls_teardown(void)
{
    pthread_mutex_lock(&T.mu);
    tls_files *f = T.cur;
    T.cur = NULL;
    T.gen = 0;
    T.nfetch = 0;
    memset(T.fetch, 0, sizeof T.fetch);
    pthread_mutex_unlock(&T.mu);
    tls_files_free(f);
}
