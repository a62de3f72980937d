/* admin.c: Admin.GetTable and Admin.ListTables, and the TableInfo copy
 * import.c shares.
 *
 * Both are unary ec_calls (client.c) started and waited for at once. Their
 * decode hook only unpacks the reply with protobuf-c (admin replies are
 * small, so the copy does not matter) and leaves the message for the
 * calling thread, which converts it to the public structs. */
#include "client_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grpc_util.h"

static int admin_decode(ec_call *c, grpc_byte_buffer *reply)
{
    admin_call *a = (admin_call *)c;
    if (reply)
        a->reply = pb_from_byte_buffer(a->desc, reply);
    if (!a->reply) {
        snprintf(c->message, sizeof c->message, "malformed %s reply",
                 a->desc->name);
        return ENGRAM_INTERNAL;
    }
    return ENGRAM_OK;
}

int ec_admin_run_deadline(engram_client *cl, void *method, const ProtobufCMessage *req,
                          const ProtobufCMessageDescriptor *desc, int64_t timeout_ms,
                          admin_call *a, engram_error *err)
{
    memset(a, 0, sizeof *a);
    a->desc = desc;
    ec_call_init(&a->c, cl, admin_decode);
    int rc = ec_call_start_on(&a->c, cl->channel, method, pb_to_byte_buffer(req), timeout_ms,
                              err);
    if (rc == ENGRAM_OK)
        rc = ec_call_wait(&a->c, -1, err);
    ec_call_release(&a->c);
    if (rc && a->reply) {
        protobuf_c_message_free_unpacked(a->reply, NULL);
        a->reply = NULL;
    }
    return rc;
}

int ec_admin_run(engram_client *cl, void *method,
                     const ProtobufCMessage *req,
                     const ProtobufCMessageDescriptor *desc, admin_call *a,
                     engram_error *err)
{
    return ec_admin_run_deadline(cl, method, req, desc, cl->deadline_ms, a, err);
}

/* snprintf truncates safely; a NULL string (never sent by protobuf-c, but
 * cheap to guard) becomes "". */
static void copy_str(char *dst, size_t cap, const char *src)
{
    snprintf(dst, cap, "%s", src ? src : "");
}

void ec_table_info_from_pb(engram_table_info *out,
                           const Engram__V1__TableInfo *in)
{
    memset(out, 0, sizeof *out);
    if (!in)
        return;
    copy_str(out->name, sizeof out->name, in->name);
    copy_str(out->dtype, sizeof out->dtype, in->dtype);
    out->rows = in->rows;
    out->row_bytes = in->row_bytes;
    out->dim = in->dim;
    out->version = in->version;
    out->checksum = in->checksum;
    out->xxh3 = in->xxh3;
    out->resident = in->resident ? 1 : 0;
    out->created_unix_ms = in->created_unix_ms;
    out->local_rows = in->local_rows;
    out->shard_index = in->shard_index;
    out->shard_count = in->shard_count;
    size_t nv = in->n_versions;
    if (nv > sizeof out->versions / sizeof out->versions[0])
        nv = sizeof out->versions / sizeof out->versions[0];
    out->n_versions = (uint32_t)nv;
    for (size_t i = 0; i < nv; i++) {
        out->versions[i].version = in->versions[i]->version;
        out->versions[i].state = (int)in->versions[i]->state;
        out->versions[i].checksum = in->versions[i]->checksum;
        out->versions[i].local_rows = in->versions[i]->local_rows;
        out->versions[i].xxh3 = in->versions[i]->xxh3;
    }
}

int engram_table_get(engram_client *client, const char *name,
                     engram_table_info *out, engram_error *err)
{
    if (!client)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "client is NULL");
    if (!name || !*name)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "table name is empty");
    if (!out)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "out is NULL");
    Engram__V1__GetTableRequest req = ENGRAM__V1__GET_TABLE_REQUEST__INIT;
    req.name = (char *)name; /* only read by pack */
    admin_call a;
    int rc = ec_admin_run(client, client->m_get_table, &req.base,
                       &engram__v1__table_info__descriptor, &a, err);
    if (rc)
        return rc;
    ec_table_info_from_pb(out, (Engram__V1__TableInfo *)a.reply);
    protobuf_c_message_free_unpacked(a.reply, NULL);
    return ENGRAM_OK;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(((const engram_table_info *)a)->name,
                  ((const engram_table_info *)b)->name);
}

/* Converts a ListTablesResponse into a sorted array the caller frees. */
static int list_to_array(const Engram__V1__ListTablesResponse *resp,
                         engram_table_info **out, size_t *count,
                         engram_error *err)
{
    size_t n = resp->n_tables;
    if (n == 0)
        return ec_ok(err);
    engram_table_info *v = calloc(n, sizeof *v);
    if (!v)
        return ec_error(err, ENGRAM_RESOURCE_EXHAUSTED,
                        "out of memory for %zu table infos", n);
    for (size_t i = 0; i < n; i++)
        ec_table_info_from_pb(&v[i], resp->tables[i]);
    /* The server sorts already; sorting here keeps the promise for any
     * server that does not. */
    qsort(v, n, sizeof *v, by_name);
    *out = v;
    *count = n;
    return ec_ok(err);
}

int engram_table_list(engram_client *client, engram_table_info **out,
                      size_t *count, engram_error *err)
{
    if (!client)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "client is NULL");
    if (!out || !count)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "out or count is NULL");
    *out = NULL;
    *count = 0;
    Engram__V1__ListTablesRequest req = ENGRAM__V1__LIST_TABLES_REQUEST__INIT;
    admin_call a;
    int rc = ec_admin_run(client, client->m_list_tables, &req.base,
                       &engram__v1__list_tables_response__descriptor, &a, err);
    if (rc)
        return rc;
    rc = list_to_array((Engram__V1__ListTablesResponse *)a.reply, out, count,
                       err);
    protobuf_c_message_free_unpacked(a.reply, NULL);
    return rc;
}

void engram_free(void *p)
{
    free(p);
}

static int version_call(engram_client *client, void *method, const char *table, uint64_t version,
                        engram_table_info *info, engram_error *err)
{
    if (!client || !table || !*table)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "client or table is missing");
    Engram__V1__VersionRequest req = ENGRAM__V1__VERSION_REQUEST__INIT;
    req.table = (char *)table;
    req.version = version;
    admin_call a;
    int rc = ec_admin_run(client, method, &req.base, &engram__v1__table_info__descriptor, &a, err);
    if (rc)
        return rc;
    if (info)
        ec_table_info_from_pb(info, (Engram__V1__TableInfo *)a.reply);
    protobuf_c_message_free_unpacked(a.reply, NULL);
    return ENGRAM_OK;
}

int engram_table_activate(engram_client *client, const char *table, uint64_t version,
                          engram_table_info *info, engram_error *err)
{
    return version_call(client, client ? client->m_activate : NULL, table, version, info, err);
}

int engram_table_drop_version(engram_client *client, const char *table, uint64_t version,
                              engram_error *err)
{
    return version_call(client, client ? client->m_drop_version : NULL, table, version, NULL, err);
}

int engram_cluster_map_get(engram_client *client, char **json, uint32_t *shard_count,
                           uint32_t *shard_index, engram_error *err)
{
    if (!client || !json)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "client or json is NULL");
    Engram__V1__GetClusterMapRequest req = ENGRAM__V1__GET_CLUSTER_MAP_REQUEST__INIT;
    admin_call a;
    int rc = ec_admin_run(client, client->m_cluster_map, &req.base,
                          &engram__v1__cluster_map__descriptor, &a, err);
    if (rc)
        return rc;
    Engram__V1__ClusterMap *m = (Engram__V1__ClusterMap *)a.reply;
    *json = strdup(m->json);
    if (shard_count)
        *shard_count = m->shard_count;
    if (shard_index)
        *shard_index = m->shard_index;
    protobuf_c_message_free_unpacked(a.reply, NULL);
    return ENGRAM_OK;
}
