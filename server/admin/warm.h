/* warm.h: Admin.Warm, bringing the rows a workload will need into this
 * server's RAM tiers before the traffic arrives (after a restart, or on a
 * replica about to take over a drained one's load).
 *
 * The request names either a table and global rows, or a model and token
 * ids hashed through the model's stored manifest (every layer, or the
 * listed ones). Only rows of this server's shard are read. The reply is a
 * stream of WarmProgress, one per batch of rows and a last one with done
 * set (see warm.c for what rows_loaded counts). */
#ifndef ENGRAM_SERVER_WARM_H
#define ENGRAM_SERVER_WARM_H

#include "server.h"
#include "store.h"

void warm_setup(store *s);
void warm_teardown(void);

void warm_stream(server_call *c);

#endif
