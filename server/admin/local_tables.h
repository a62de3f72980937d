/* local_tables.h: Admin.ListLocalTables, the files in --shm-dir that hold
 * this server's resident table versions (common/shm_format.h has the file
 * format; proto/engram/v1/engram.proto the reply). */
#ifndef ENGRAM_SERVER_LOCAL_TABLES_H
#define ENGRAM_SERVER_LOCAL_TABLES_H

#include "server.h"
#include "store.h"

void local_tables_setup(store *s);
void local_tables_teardown(void);

int local_tables_list(server_call *c, grpc_byte_buffer *req, grpc_byte_buffer **reply,
                      char *msg, size_t msglen);

#endif
