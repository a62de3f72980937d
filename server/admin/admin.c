/* admin.c: ListTables, GetTable, ActivateVersion, DropVersion,
 * GetClusterMap and SetLogLevel. The table calls answer from the registry's
 * in-memory metadata; only version changes write (through the store). */
#include "admin.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grpc_util.h"
#include "log.h"
#include "status.h"

static store *A;
static const char *A_cluster;

void admin_setup(store *s, const char *cluster_json)
{
    A = s;
    A_cluster = cluster_json;
}

/* Atomic: GetClusterMap may be reading it on a worker thread. */
void admin_set_cluster_map(const char *cluster_json)
{
    __atomic_store_n(&A_cluster, cluster_json, __ATOMIC_RELEASE);
}

void admin_teardown(void)
{
    A = NULL;
}

static void version_fill(Engram__V1__VersionInfo *vi, const table_version *tv)
{
    engram__v1__version_info__init(vi);
    vi->version = tv->version;
    vi->state = (Engram__V1__VersionInfo__State)tv->state;
    vi->checksum = tv->checksum;
    vi->xxh3 = tv->xxh3;
    vi->local_rows = tv->local_rows;
    vi->resident = tv->resident != NULL;
    vi->created_unix_ms = tv->created_unix_ms;
}

int table_info_fill(table_info_buf *b, store *s, const table_version *tv)
{
    Engram__V1__TableInfo *ti = &b->ti;
    engram__v1__table_info__init(ti);
    ti->name = (char *)tv->name;
    ti->rows = tv->rows;
    ti->local_rows = tv->local_rows;
    ti->row_bytes = tv->row_bytes;
    ti->dim = tv->dim;
    ti->dtype = (char *)tv->dtype;
    ti->version = tv->version;
    ti->checksum = tv->checksum;
    ti->xxh3 = tv->xxh3;
    ti->resident = tv->resident != NULL;
    ti->created_unix_ms = tv->created_unix_ms;
    store_shard(s, &ti->shard_count, &ti->shard_index);
    b->nvs = store_versions(s, tv->name, &b->vs);
    b->vi = malloc((b->nvs + 1) * sizeof *b->vi);
    b->vp = malloc((b->nvs + 1) * sizeof *b->vp);
    if (!b->vs || !b->vi || !b->vp) {
        table_info_release(b);
        b->nvs = 0;
        b->vs = NULL;
        b->vi = NULL;
        b->vp = NULL;
        return -1;
    }
    for (size_t i = 0; i < b->nvs; i++) {
        version_fill(&b->vi[i], b->vs[i]);
        b->vp[i] = &b->vi[i];
    }
    ti->n_versions = b->nvs;
    ti->versions = b->vp;
    return 0;
}

void table_info_release(table_info_buf *b)
{
    for (size_t i = 0; i < b->nvs && b->vs; i++)
        table_version_release(b->vs[i]);
    free(b->vs);
    free(b->vi);
    free(b->vp);
}

int admin_list_tables(server_call *c, grpc_byte_buffer *req, grpc_byte_buffer **reply,
                      char *msg, size_t msglen)
{
    char why[160] = "no message";
    ProtobufCMessage *rq = pb_unpack(&engram__v1__list_tables_request__descriptor, req, why, sizeof why);
    if (!rq) {
        snprintf(msg, msglen, "malformed ListTablesRequest: %s", why);
        return ES_INVALID_ARGUMENT;
    }
    protobuf_c_message_free_unpacked(rq, NULL);
    table_version **tvs;
    size_t n = store_list(A, &tvs);
    table_info_buf *bufs = calloc(n + 1, sizeof *bufs);
    Engram__V1__TableInfo **ptrs = calloc(n + 1, sizeof *ptrs);
    int failed = !bufs || !ptrs;
    size_t filled = 0;
    for (; !failed && filled < n; filled++) {
        failed = table_info_fill(&bufs[filled], A, tvs[filled]) != 0;
        ptrs[filled] = &bufs[filled].ti;
    }
    if (!failed) {
        Engram__V1__ListTablesResponse resp = ENGRAM__V1__LIST_TABLES_RESPONSE__INIT;
        resp.n_tables = n;
        resp.tables = ptrs;
        *reply = pb_to_byte_buffer(&resp.base);
    } else {
        snprintf(msg, msglen, "out of memory listing %zu tables", n);
    }
    for (size_t i = 0; i < filled; i++)
        table_info_release(&bufs[i]);
    for (size_t i = 0; i < n; i++)
        table_version_release(tvs[i]);
    free(tvs);
    free(bufs);
    free(ptrs);
    return failed ? ES_RESOURCE_EXHAUSTED : ES_OK;
}

static int reply_table(const char *name, uint64_t version, grpc_byte_buffer **reply,
                       char *msg, size_t msglen)
{
    table_version *tv = store_acquire(A, name, version);
    if (!tv && !version) {       /* only staged versions: show the newest */
        table_version **vs;
        size_t n = store_versions(A, name, &vs);
        for (size_t i = 0; i < n; i++) {
            if (i + 1 == n)
                tv = vs[i];
            else
                table_version_release(vs[i]);
        }
        free(vs);
    }
    if (!tv) {
        if (version)
            snprintf(msg, msglen, "table \"%.128s\" has no version %llu on this server", name,
                     (unsigned long long)version);
        else
            snprintf(msg, msglen, "table \"%.128s\" not found", name);
        return ES_NOT_FOUND;
    }
    table_info_buf b;
    int code = ES_OK;
    if (table_info_fill(&b, A, tv)) {
        snprintf(msg, msglen, "out of memory listing the versions of table \"%.128s\"", name);
        code = ES_RESOURCE_EXHAUSTED;
    } else {
        *reply = pb_to_byte_buffer(&b.ti.base);
    }
    table_info_release(&b);
    table_version_release(tv);
    return code;
}

int admin_get_table(server_call *c, grpc_byte_buffer *req, grpc_byte_buffer **reply,
                    char *msg, size_t msglen)
{
    char why[160] = "no message";
    Engram__V1__GetTableRequest *rq = (Engram__V1__GetTableRequest *)pb_unpack(
        &engram__v1__get_table_request__descriptor, req, why, sizeof why);
    if (!rq) {
        snprintf(msg, msglen, "malformed GetTableRequest: %s", why);
        return ES_INVALID_ARGUMENT;
    }
    int code;
    if (!*rq->name) {
        snprintf(msg, msglen, "table name is empty");
        code = ES_INVALID_ARGUMENT;
    } else {
        code = reply_table(rq->name, 0, reply, msg, msglen);
    }
    protobuf_c_message_free_unpacked(&rq->base, NULL);
    return code;
}

typedef int (*version_op)(store *s, const char *name, uint64_t version, char *msg, size_t msglen);

static int version_call(grpc_byte_buffer *req, grpc_byte_buffer **reply, char *msg, size_t msglen,
                        version_op op, int reply_version)
{
    char why[160] = "no message";
    Engram__V1__VersionRequest *rq = (Engram__V1__VersionRequest *)pb_unpack(
        &engram__v1__version_request__descriptor, req, why, sizeof why);
    if (!rq) {
        snprintf(msg, msglen, "malformed VersionRequest: %s", why);
        return ES_INVALID_ARGUMENT;
    }
    int code = ES_INVALID_ARGUMENT;
    if (!*rq->table)
        snprintf(msg, msglen, "table name is empty");
    else if (!rq->version)
        snprintf(msg, msglen, "version 0 is not a version; name one (see GetTable's versions)");
    else if ((code = op(A, rq->table, rq->version, msg, msglen)) == ES_OK)
        code = reply_table(rq->table, reply_version ? rq->version : 0, reply, msg, msglen);
    protobuf_c_message_free_unpacked(&rq->base, NULL);
    return code;
}

int admin_activate_version(server_call *c, grpc_byte_buffer *req, grpc_byte_buffer **reply,
                           char *msg, size_t msglen)
{
    return version_call(req, reply, msg, msglen, store_activate, 1);
}

/* After a drop the reply is the table's active version, if it has one. */
int admin_drop_version(server_call *c, grpc_byte_buffer *req, grpc_byte_buffer **reply,
                       char *msg, size_t msglen)
{
    int code = version_call(req, reply, msg, msglen, store_drop, 0);
    if (code == ES_NOT_FOUND && !*reply && strstr(msg, "not found")) {
        Engram__V1__TableInfo empty = ENGRAM__V1__TABLE_INFO__INIT;
        *reply = pb_to_byte_buffer(&empty.base);
        return ES_OK;
    }
    return code;
}

int admin_get_cluster_map(server_call *c, grpc_byte_buffer *req, grpc_byte_buffer **reply,
                          char *msg, size_t msglen)
{
    char why[160] = "no message";
    ProtobufCMessage *rq = pb_unpack(&engram__v1__get_cluster_map_request__descriptor, req, why, sizeof why);
    if (!rq) {
        snprintf(msg, msglen, "malformed GetClusterMapRequest: %s", why);
        return ES_INVALID_ARGUMENT;
    }
    protobuf_c_message_free_unpacked(rq, NULL);
    Engram__V1__ClusterMap cm = ENGRAM__V1__CLUSTER_MAP__INIT;
    cm.json = (char *)__atomic_load_n(&A_cluster, __ATOMIC_ACQUIRE);
    store_shard(A, &cm.shard_count, &cm.shard_index);
    *reply = pb_to_byte_buffer(&cm.base);
    return ES_OK;
}

/* ---- SetLogLevel ----------------------------------------------------------- */

int admin_set_log_level(server_call *c, grpc_byte_buffer *req, grpc_byte_buffer **reply,
                        char *msg, size_t msglen)
{
    char why[160] = "no message";
    Engram__V1__SetLogLevelRequest *rq = (Engram__V1__SetLogLevelRequest *)pb_unpack(
        &engram__v1__set_log_level_request__descriptor, req, why, sizeof why);
    if (!rq) {
        snprintf(msg, msglen, "malformed SetLogLevelRequest: %s", why);
        return ES_INVALID_ARGUMENT;
    }
    int level = log_level_parse(rq->level);
    if (level < 0) {
        snprintf(msg, msglen, "unknown log level \"%.64s\": want debug, info, warn or error",
                 rq->level);
        protobuf_c_message_free_unpacked(&rq->base, NULL);
        return ES_INVALID_ARGUMENT;
    }
    protobuf_c_message_free_unpacked(&rq->base, NULL);
    log_level previous = log_get_level();
    log_set_level((log_level)level);
    /* At warn so the change is on record whichever level it set (error
     * aside, which hides it by request). */
    log_warn("log_level_changed", "previous=%s level=%s", log_level_name(previous),
             log_level_name((log_level)level));
    Engram__V1__SetLogLevelResponse r = ENGRAM__V1__SET_LOG_LEVEL_RESPONSE__INIT;
    r.previous = (char *)log_level_name(previous);
    r.level = (char *)log_level_name((log_level)level);
    *reply = pb_to_byte_buffer(&r.base);
    return ES_OK;
}
