/* security.h: transport security, admin authentication and call limits of
 * engram-server.
 *
 * TLS: one certificate/key pair (PEM) serves every listener; with a client
 * CA, clients must present a certificate signed by it (mTLS). Without
 * --tls-cert the transport is plaintext, which start-up says in a warn line.
 * SIGHUP re-reads the TLS files and the token file (security_reload), as
 * does a change to them seen by the periodic check (--reload-check-ms), so
 * a rotation needs no restart.
 *
 * Admin auth is an admission hook on PLANE_ADMIN methods only (Lookup and
 * health never need it): a call is admitted by `authorization: Bearer
 * <token>` metadata matching the token file, or by an authenticated client
 * certificate whose common name or a subject alternative name is on the
 * admin list. With neither configured the admin plane is open. A token is
 * refused at start-up (exit 2) where it would cross a network in the
 * clear: plaintext with the admin plane on a non-loopback address, unless
 * --allow-plaintext-token says that is meant.
 *
 * Limits are admission hooks too: a cap on calls in flight in total, and a
 * default deadline for calls that arrive without one. The per-connection
 * stream cap and the import size cap are enforced by gRPC and import.c; this
 * module only parses them with the rest.
 *
 * security_setup registers its hooks; call it before any module whose
 * admission check must come after authentication (drain). */
#ifndef ENGRAM_SERVER_SECURITY_H
#define ENGRAM_SERVER_SECURITY_H

#include <grpc/grpc_security.h>
#include <stddef.h>
#include <stdint.h>

#include "server.h"

typedef struct security_options {
    const char *tls_cert;        /* PEM certificate chain; NULL: plaintext */
    const char *tls_key;         /* PEM private key (with tls_cert) */
    const char *tls_client_ca;   /* PEM CA bundle: require client certificates */
    const char *admin_token_file;/* first line, trimmed, is the admin token */
    const char *admin_names;     /* "NAME[,NAME...]": certificates admitted */
    /* The address serving the admin plane (--admin-listen, else --listen):
     * a token over plaintext is refused unless it is loopback (or a unix
     * socket) or allow_plaintext_token is set. */
    const char *admin_plane_listen;
    int allow_plaintext_token;   /* --allow-plaintext-token */
    uint64_t max_calls;          /* calls in flight in total; 0: no limit */
    int64_t default_deadline_ms; /* for calls without a deadline; 0: none */
} security_options;

/* Reads every file (the TLS pair must match, see tls.h), checks the combination, registers the admission hooks
 * (auth first, then limits). `m` is the server's metrics (calls in flight).
 * Returns 0, or -1 with a message naming the file or option in err (the
 * caller exits 2). */
int security_setup(const security_options *o, const server_metrics *m, char *err, size_t errlen);

/* Fresh server credentials for one listener (server_setup takes them), or
 * NULL for plaintext. */
grpc_server_credentials *security_server_creds(void);

/* Logs how the server is secured (warn lines for plaintext and an open
 * admin plane). Never logs the token. */
void security_log_startup(void);

/* "tls", "mtls" or "insecure", for the start-up line. */
const char *security_transport_name(void);

/* SIGHUP: reads the TLS files and the token file again (the paths given
 * at start-up) and checks them; only when every one is good are they put
 * in place, so new connections get the new certificate and the next admin
 * call is checked against the new token. On any error nothing changes and
 * an error line names the file. `trigger` ("sighup", "files_changed") is
 * logged. 0 or -1. Main thread only. */
int security_reload(const char *trigger);

/* Reloads when any of those files changed (inode, size or mtime) since
 * the last load or attempt; a failed attempt is retried only after the
 * files change again. Main thread only. */
void security_reload_if_changed(void);

/* After the servers are destroyed (gRPC may fetch certificates until then). */
void security_teardown(void);

/* Whether a listen address only takes connections from this host: a
 * loopback literal (127.0.0.0/8, ::1, [::1], ::ffff:127.x), "localhost",
 * or a unix socket. Exposed for unit tests. */
int security_listen_is_local(const char *listen);

/* Constant-time equality of two byte strings: the time depends only on the
 * lengths, never on where they differ. Exposed for unit tests. */
int security_equal_ct(const void *a, size_t alen, const void *b, size_t blen);

#endif
