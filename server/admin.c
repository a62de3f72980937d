/* admin.c: ListTables and GetTable. Both read the registry of current
 * versions (store_list / store_acquire) and answer from the in-memory
 * metadata; nothing here touches RocksDB. */
#include "admin.h"

#include <stdio.h>
#include <stdlib.h>

#include "grpc_util.h"
#include "status.h"

static store *A;

void admin_setup(store *s)
{
    A = s;
}

void admin_teardown(void)
{
    A = NULL;
}

void table_info_fill(Engram__V1__TableInfo *ti, const table_version *tv)
{
    engram__v1__table_info__init(ti);
    ti->name = (char *)tv->name;
    ti->rows = tv->rows;
    ti->row_bytes = tv->row_bytes;
    ti->dim = tv->dim;
    ti->dtype = (char *)tv->dtype;
    ti->version = tv->version;
    ti->checksum = tv->checksum;
    ti->resident = tv->resident != NULL;
    ti->created_unix_ms = tv->created_unix_ms;
}

int admin_list_tables(server_call *c, grpc_byte_buffer *req, grpc_byte_buffer **reply,
                      char *msg, size_t msglen)
{
    ProtobufCMessage *rq = pb_from_byte_buffer(&engram__v1__list_tables_request__descriptor, req);
    if (!rq) {
        snprintf(msg, msglen, "malformed ListTablesRequest");
        return ES_INVALID_ARGUMENT;
    }
    protobuf_c_message_free_unpacked(rq, NULL);
    table_version **tvs;
    size_t n = store_list(A, &tvs);
    Engram__V1__TableInfo *infos = calloc(n ? n : 1, sizeof *infos);
    Engram__V1__TableInfo **ptrs = calloc(n ? n : 1, sizeof *ptrs);
    for (size_t i = 0; i < n; i++) {
        table_info_fill(&infos[i], tvs[i]);
        ptrs[i] = &infos[i];
    }
    Engram__V1__ListTablesResponse resp = ENGRAM__V1__LIST_TABLES_RESPONSE__INIT;
    resp.n_tables = n;
    resp.tables = ptrs;
    *reply = pb_to_byte_buffer(&resp.base);
    for (size_t i = 0; i < n; i++)
        table_version_release(tvs[i]);
    free(tvs);
    free(infos);
    free(ptrs);
    return ES_OK;
}

int admin_get_table(server_call *c, grpc_byte_buffer *req, grpc_byte_buffer **reply,
                    char *msg, size_t msglen)
{
    Engram__V1__GetTableRequest *rq = (Engram__V1__GetTableRequest *)pb_from_byte_buffer(
        &engram__v1__get_table_request__descriptor, req);
    if (!rq) {
        snprintf(msg, msglen, "malformed GetTableRequest");
        return ES_INVALID_ARGUMENT;
    }
    int code = ES_OK;
    table_version *tv = NULL;
    if (!*rq->name) {
        snprintf(msg, msglen, "table name is empty");
        code = ES_INVALID_ARGUMENT;
    } else if (!(tv = store_acquire(A, rq->name))) {
        snprintf(msg, msglen, "table \"%.128s\" not found", rq->name);
        code = ES_NOT_FOUND;
    } else {
        Engram__V1__TableInfo ti;
        table_info_fill(&ti, tv);
        *reply = pb_to_byte_buffer(&ti.base);
        table_version_release(tv);
    }
    protobuf_c_message_free_unpacked(&rq->base, NULL);
    return code;
}
