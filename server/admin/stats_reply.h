/* stats_reply.h: the Admin.Stats handler, rendered from the metrics
 * registry (metric.h) into StatsResponse by each metric's Stats path. */
#ifndef ENGRAM_SERVER_STATS_REPLY_H
#define ENGRAM_SERVER_STATS_REPLY_H

#include <stddef.h>

#include "server.h"

int stats_handle(server_call *c, grpc_byte_buffer *req, grpc_byte_buffer **reply,
                 char *msg, size_t msglen);

#endif
