/* drain.h: Admin.Drain and Admin.Undrain, taking one server out of the
 * data plane without stopping it.
 *
 * While draining, new data-plane calls (Lookup) are refused at admission
 * with UNAVAILABLE, which cluster clients treat as "fail over to another
 * replica"; admin and health calls are still served. Health turns
 * NOT_SERVING for "" and engram.v1.Lookup so balancers and probes move
 * traffic too. Drain then waits up to its timeout for the lookups already
 * running to finish, so an operator knows when stopping the server can no
 * longer fail a request. */
#ifndef ENGRAM_SERVER_DRAIN_H
#define ENGRAM_SERVER_DRAIN_H

#include "lookup.h"
#include "server.h"

/* Registers the admission check (call after any authentication module's
 * setup, so an unauthenticated caller learns that first) and the
 * engram_draining metric. */
void drain_setup(void);
void drain_teardown(void);

/* 1 while draining. */
int drain_is_draining(void);

/* The admission check (registered by drain_setup). */
int drain_admit(server_call *c, const method_def *m, char *msg, size_t msglen);

int drain_handle(server_call *c, grpc_byte_buffer *req, grpc_byte_buffer **reply,
                 char *msg, size_t msglen);
int undrain_handle(server_call *c, grpc_byte_buffer *req, grpc_byte_buffer **reply,
                   char *msg, size_t msglen);

#endif
