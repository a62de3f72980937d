/* reply_budget.h: the bytes of replies the server holds for its clients.
 *
 * A reply stays in memory until the client has read it: gRPC keeps the
 * slice until HTTP/2 flow control lets the last byte out. A client that asks
 * and never reads would pin every reply it asks for (issue 11: 32 lookups of
 * 63 MiB took a server from 111 MB to 2.1 GB). So each reply is charged here
 * before it is built, against a cap per connection and a cap for the whole
 * server, and the charge is released when the call is freed: when its last
 * byte left or its stream died. A call over either cap is refused
 * RESOURCE_EXHAUSTED before a byte is gathered.
 *
 * A connection is told apart by its peer address (ip:port), which names
 * one TCP connection for as long as it is open. */
#ifndef ENGRAM_SERVER_REPLY_BUDGET_H
#define ENGRAM_SERVER_REPLY_BUDGET_H

#include <stddef.h>
#include <stdint.h>

#include "server.h"

typedef struct reply_budget_options {
    uint64_t max_bytes;            /* all connections together; 0: no cap */
    uint64_t max_bytes_per_conn;   /* one connection; 0: no cap */
} reply_budget_options;

/* Registers engram_reply_bytes_held (the bytes charged and not yet
 * released). Refusals are counted by reason in hooks.c (reply_bytes,
 * reply_bytes_per_conn), with the others. */
void reply_budget_setup(const reply_budget_options *o);
void reply_budget_teardown(void);

/* Charges `bytes` of reply to call c (once per call). ES_OK, or
 * ES_RESOURCE_EXHAUSTED with a message naming the held bytes, the cap and
 * the option that raises it. A reply of any size is admitted when nothing
 * else is held on its connection (or in the server), so a cap below the
 * message limit slows a client down but never locks it out. The charge is
 * released by the server core when the call is freed. Thread-safe. */
int reply_budget_take(server_call *c, uint64_t bytes, char *msg, size_t msglen);

#endif
