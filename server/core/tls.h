/* tls.h: engram-server's TLS certificate, key and client CA: read,
 * checked, handed to gRPC, and replaced while the server runs.
 *
 * The files are checked with OpenSSL when they are read (each parses, the
 * key belongs to the certificate), so a bad file is named at start-up or
 * at reload instead of surfacing as a failed handshake later. Listeners
 * get credentials whose certificate gRPC fetches from this module at each
 * new handshake: after tls_reload_commit, new connections use the new
 * files and open ones keep theirs, as TLS itself works.
 *
 * Whether TLS and mTLS are on is fixed at start-up; a reload replaces
 * contents only. */
#ifndef ENGRAM_SERVER_TLS_H
#define ENGRAM_SERVER_TLS_H

#include <grpc/grpc_security.h>
#include <stddef.h>
#include <stdint.h>

/* The files as read and checked. Opaque; from tls_load. */
typedef struct tls_files tls_files;

/* Reads and checks the files (client_ca may be NULL: no mTLS). Returns
 * them, or NULL with a message naming the file in err. Any thread. */
tls_files *tls_load(const char *cert, const char *key, const char *client_ca, char *err,
                    size_t errlen);

/* Makes f the files every listener's next handshake uses, and takes it
 * (the previous one is freed). The first call turns TLS on; later calls
 * must come from one thread at a time (the main thread's signal loop). */
void tls_commit(tls_files *f);

/* Frees files that were not committed (their key is scrubbed). */
void tls_files_free(tls_files *f);

/* Fresh credentials for one listener, or NULL when TLS is off. The server
 * owns them; the fetch state they point at lives until tls_teardown. */
grpc_server_credentials *tls_server_creds(void);

int tls_enabled(void);
int tls_mutual(void);

/* The committed certificate: subject (for logs) and the end of its
 * validity in Unix seconds; 0 when TLS is off. */
void tls_cert_info(char *subject, size_t len, int64_t *not_after);

/* After the servers are destroyed: frees the files and fetch states. */
void tls_teardown(void);

#endif
