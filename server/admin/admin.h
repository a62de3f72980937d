/* admin.h: the admin plane's unary table RPCs: ListTables, GetTable,
 * ActivateVersion, DropVersion, GetClusterMap. Import, the admin plane's
 * streaming RPC, lives in import.c; manifests in manifests.c. */
#ifndef ENGRAM_SERVER_ADMIN_H
#define ENGRAM_SERVER_ADMIN_H

#include "engram/v1/engram.pb-c.h"
#include "server.h"
#include "store.h"

/* cluster_json: the map this server was started with (kept by reference). */
void admin_setup(store *s, const char *cluster_json);
/* Replaces the map (kept by reference; the old one stays valid: the
 * caller frees both after admin_teardown). Any thread. */
void admin_set_cluster_map(const char *cluster_json);
void admin_teardown(void);

int admin_list_tables(server_call *c, grpc_byte_buffer *req, grpc_byte_buffer **reply,
                      char *msg, size_t msglen);
int admin_get_table(server_call *c, grpc_byte_buffer *req, grpc_byte_buffer **reply,
                    char *msg, size_t msglen);
int admin_activate_version(server_call *c, grpc_byte_buffer *req, grpc_byte_buffer **reply,
                           char *msg, size_t msglen);
int admin_drop_version(server_call *c, grpc_byte_buffer *req, grpc_byte_buffer **reply,
                       char *msg, size_t msglen);
int admin_get_cluster_map(server_call *c, grpc_byte_buffer *req, grpc_byte_buffer **reply,
                          char *msg, size_t msglen);
/* SetLogLevel: the process's log level (common/log.h), answered with the
 * level it replaced. */
int admin_set_log_level(server_call *c, grpc_byte_buffer *req, grpc_byte_buffer **reply,
                        char *msg, size_t msglen);

/* A TableInfo of one version plus the list of every live version of its
 * table; strings point into the versions, which the buffer holds
 * references to until table_info_release. The list is allocated to the
 * count the registry gives (a directory written before the version limit
 * may hold more than STORE_MAX_VERSIONS). */
typedef struct table_info_buf {
    Engram__V1__TableInfo ti;
    Engram__V1__VersionInfo *vi;
    Engram__V1__VersionInfo **vp;
    table_version **vs;
    size_t nvs;
} table_info_buf;

/* Returns 0, or -1 when memory ran out: the TableInfo is filled then but
 * lists no versions (release it all the same). */
int table_info_fill(table_info_buf *b, store *s, const table_version *tv);
void table_info_release(table_info_buf *b);

#endif
