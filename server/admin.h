/* admin.h: the admin plane's unary RPCs (ListTables, GetTable). Import, the
 * admin plane's streaming RPC, lives in import.c. */
#ifndef ENGRAM_SERVER_ADMIN_H
#define ENGRAM_SERVER_ADMIN_H

#include "engram/v1/engram.pb-c.h"
#include "server.h"
#include "store.h"

void admin_setup(store *s);
void admin_teardown(void);

int admin_list_tables(server_call *c, grpc_byte_buffer *req, grpc_byte_buffer **reply,
                      char *msg, size_t msglen);
int admin_get_table(server_call *c, grpc_byte_buffer *req, grpc_byte_buffer **reply,
                    char *msg, size_t msglen);

/* Fills a TableInfo from a version; strings point into tv (keep tv alive
 * while ti is used). */
void table_info_fill(Engram__V1__TableInfo *ti, const table_version *tv);

#endif
