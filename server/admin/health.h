/* health.h: the standard gRPC health service (grpc.health.v1.Health), so
 * Kubernetes gRPC probes, load balancers and grpc_health_probe can ask
 * whether this server should get traffic.
 *
 * Services: "" (the server as a whole), "engram.v1.Lookup" and
 * "engram.v1.Admin". SERVING normally; "" and "engram.v1.Lookup" turn
 * NOT_SERVING while the server drains (drain.c calls health_set_draining),
 * and every service turns NOT_SERVING once shutdown begins. There is no
 * loading phase to report: store_setup loads every table before the server
 * listens at all. */
#ifndef ENGRAM_SERVER_HEALTH_H
#define ENGRAM_SERVER_HEALTH_H

#include "server.h"

void health_setup(void);
/* Ends every open Watch (after telling it NOT_SERVING) and makes every
 * service NOT_SERVING. Call before server_teardown: its graceful shutdown
 * waits for open calls, and a Watch would otherwise never end. */
void health_shutdown(void);

/* Drain state: "" and "engram.v1.Lookup" are NOT_SERVING while set.
 * Watchers hear of a change at once. Any thread. */
void health_set_draining(int draining);

/* Check (unary): the status of one service; unknown ones NOT_FOUND. */
int health_check(server_call *c, grpc_byte_buffer *req, grpc_byte_buffer **reply,
                 char *msg, size_t msglen);
/* Watch (server streaming): the status at once, then every change, until
 * the client goes away or the server shuts down. */
void health_watch(server_call *c);
/* Open Watch calls (each holds one of the server's 1,024 watcher slots;
 * 64 at most from one connection). For stats and /metrics. */
int health_watchers(void);
/* 1 while service "" is SERVING (not draining, not shutting down). */
int health_serving(void);

#endif
