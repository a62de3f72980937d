/* manifests.h: the admin plane's model manifests (PutManifest, GetManifest,
 * ListManifests). Documents are validated with common/manifest.c and kept
 * in the store's metadata family, so they survive restarts with the tables
 * they describe. */
#ifndef ENGRAM_SERVER_MANIFESTS_H
#define ENGRAM_SERVER_MANIFESTS_H

#include <stdint.h>

#include "server.h"
#include "store.h"

/* Parses every stored manifest once (ListManifests answers from what it
 * keeps). max_manifest_bytes: the largest document PutManifest takes (0:
 * no limit but the message size). */
void manifests_setup(store *s, uint64_t max_manifest_bytes);
void manifests_teardown(void);

int manifests_put(server_call *c, grpc_byte_buffer *req, grpc_byte_buffer **reply,
                  char *msg, size_t msglen);
int manifests_get(server_call *c, grpc_byte_buffer *req, grpc_byte_buffer **reply,
                  char *msg, size_t msglen);
int manifests_list(server_call *c, grpc_byte_buffer *req, grpc_byte_buffer **reply,
                   char *msg, size_t msglen);

#endif
