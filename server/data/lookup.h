/* lookup.h: the data plane. Answers Lookup with the rows' bytes gathered
 * straight into the outgoing slice. */
#ifndef ENGRAM_SERVER_LOOKUP_H
#define ENGRAM_SERVER_LOOKUP_H

#include "server.h"
#include "store.h"

typedef struct lookup_options {
    uint64_t max_rows;           /* rows per request */
    uint64_t max_message_bytes;  /* the reply must fit */
} lookup_options;

/* Lookups are counted by stats.c (stats_lookup, per table, with the tier
 * the store says served each row) and by the core's per-method figures. */
void lookup_setup(store *s, const lookup_options *opts);
void lookup_teardown(void);

/* Lookups being served right now (for Drain). */
uint64_t lookup_in_flight(void);

int lookup_handle(server_call *c, grpc_byte_buffer *req, grpc_byte_buffer **reply,
                  char *msg, size_t msglen);

#endif
