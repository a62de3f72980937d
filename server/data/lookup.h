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

typedef struct lookup_metrics {
    uint64_t calls;
    uint64_t rows;
    uint64_t bytes;
    uint64_t errors;
    uint64_t in_flight;          /* handlers running now */
} lookup_metrics;

void lookup_setup(store *s, const lookup_options *opts, lookup_metrics *metrics);
void lookup_teardown(void);

/* Lookups being served right now (for Drain). */
uint64_t lookup_in_flight(void);

int lookup_handle(server_call *c, grpc_byte_buffer *req, grpc_byte_buffer **reply,
                  char *msg, size_t msglen);

#endif
