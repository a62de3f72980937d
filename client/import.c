/* import.c: Admin.Import, a client-streaming call.
 *
 * Each import has its own pluck completion queue and runs every batch
 * synchronously on the caller's thread (an engram_import belongs to one
 * thread), one batch outstanding at a time:
 *   begin:  SEND_INITIAL_METADATA + SEND_MESSAGE(header)
 *   write:  SEND_MESSAGE(chunk) per <= 4 MiB of whole rows
 *   finish: SEND_MESSAGE(trailer), then SEND_CLOSE_FROM_CLIENT
 *           + RECV_INITIAL_METADATA + RECV_MESSAGE + RECV_STATUS_ON_CLIENT
 *           (the trailer alone first: a send the server already refused
 *           then reports the server's status, as a chunk's would)
 * A send that fails means the server (or the transport) ended the stream;
 * RECV_STATUS_ON_CLIENT then says why, and that status sticks: every later
 * write and the finish return it.
 *
 * Every chunk is hashed (XXH3-64) as it is sent and the trailer carries the
 * digest, so the server can refuse rows that changed on the way (DATA_LOSS)
 * instead of activating them. Hashing costs far less than the transfer.
 *
 * Imports of big tables take long, so an import has no deadline, unlike
 * every other call. An import must be finished or aborted before its client
 * is closed (it uses the client's channel). */
#include "client_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/support/time.h>
#include <xxhash.h>

#include "cluster.h"
#include "dtype.h"
#include "grpc_util.h"
#include "methods.h"

/* Largest chunk payload: well under the default 64 MiB message limit and
 * big enough to amortise per-message costs. A client with a smaller
 * message limit gets smaller chunks (minus room for the framing). */
#define CHUNK_MAX_BYTES (4u << 20)
#define CHUNK_FRAMING_BYTES 64

struct engram_import {
    engram_client *client;
    grpc_completion_queue *cq;
    grpc_call *call;
    grpc_metadata md[1];          /* the admin token, sent with the header */
    char table[129];
    uint64_t rows;
    uint64_t next_row;
    uint32_t row_bytes;
    size_t chunk_max;             /* payload bytes per chunk message */
    XXH3_state_t *xxh;            /* of every row sent, for the trailer */
    int failed;                   /* sticky status once the stream broke */
    char failed_msg[sizeof(((engram_error *)0)->message)];
};

/* Runs one batch and waits for it; returns the batch's success flag. */
static int run_batch(engram_import *imp, const grpc_op *ops, size_t n)
{
    if (grpc_call_start_batch(imp->call, ops, n, imp, NULL) != GRPC_CALL_OK)
        return 0;
    grpc_event ev = grpc_completion_queue_pluck(
        imp->cq, imp, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    return ev.type == GRPC_OP_COMPLETE && ev.success;
}

/* Records a sticky failure and reports it. */
static int set_failed(engram_import *imp, int code, const char *msg,
                      engram_error *err)
{
    imp->failed = code;
    snprintf(imp->failed_msg, sizeof imp->failed_msg, "%s", msg);
    return ec_error(err, code, "%s", imp->failed_msg);
}

/* A send failed: the stream is over; fetch the status that ended it. The
 * initial metadata is received in the same batch: gRPC core holds the
 * status back until the initial metadata the server sent was consumed, so
 * asking for the status alone can wait forever. */
static int stream_failed(engram_import *imp, engram_error *err)
{
    grpc_metadata_array trailing, initial;
    grpc_metadata_array_init(&trailing);
    grpc_metadata_array_init(&initial);
    grpc_status_code status = GRPC_STATUS_UNKNOWN;
    grpc_slice details = grpc_empty_slice();
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[0].data.recv_initial_metadata.recv_initial_metadata = &initial;
    ops[1].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[1].data.recv_status_on_client.trailing_metadata = &trailing;
    ops[1].data.recv_status_on_client.status = &status;
    ops[1].data.recv_status_on_client.status_details = &details;
    char msg[sizeof imp->failed_msg];
    int code;
    if (!run_batch(imp, ops, 2)) {
        code = ENGRAM_UNKNOWN;
        snprintf(msg, sizeof msg, "import stream of %s broke, no status",
                 imp->table);
    } else if (status == GRPC_STATUS_OK) {
        code = ENGRAM_INTERNAL;
        snprintf(msg, sizeof msg,
                 "server ended the import stream of %s early with OK",
                 imp->table);
    } else {
        code = ec_status_to_error(status, details, msg, sizeof msg);
    }
    grpc_slice_unref(details);
    grpc_metadata_array_destroy(&trailing);
    grpc_metadata_array_destroy(&initial);
    return set_failed(imp, code, msg, err);
}

/* Sends one message; on failure returns the stream's final status. */
static int send_msg(engram_import *imp, const Engram__V1__ImportRequest *m,
                    int with_initial_metadata, engram_error *err)
{
    grpc_byte_buffer *bb = pb_to_byte_buffer(&m->base);
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    if (with_initial_metadata) {
        ec_admin_metadata(imp->client, imp->md, &ops[n].data.send_initial_metadata.count);
        ops[n].data.send_initial_metadata.metadata = imp->md;
        ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
    }
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n++].data.send_message.send_message = bb;
    int ok = run_batch(imp, ops, n);
    grpc_byte_buffer_destroy(bb);
    return ok ? ENGRAM_OK : stream_failed(imp, err);
}

static void import_free(engram_import *imp)
{
    if (imp->call)
        grpc_call_unref(imp->call);
    if (imp->xxh)
        XXH3_freeState(imp->xxh);
    /* No batch is ever left outstanding, so the queue is already empty. */
    grpc_completion_queue_shutdown(imp->cq);
    grpc_completion_queue_destroy(imp->cq);
    free(imp);
}

static int check_begin_args(engram_client *client, const char *table,
                            uint32_t dim, const char *dtype,
                            engram_import **out, engram_error *err)
{
    if (!out)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "out is NULL");
    if (!client)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "client is NULL");
    if (!table || !*table)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "table name is empty");
    if (strlen(table) > 128)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT,
                        "table name of %zu bytes is longer than 128",
                        strlen(table));
    size_t es = dtype_size(dtype);
    if (!es)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT,
                        "unknown dtype '%s' (known: %s)",
                        dtype ? dtype : "(null)", dtype_list());
    uint64_t rb = dtype_row_bytes(dtype, dim);
    if (rb == 0 || rb > UINT32_MAX)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT,
                        "dim %u of %s gives no valid row size", dim, dtype);
    return ENGRAM_OK;
}

static engram_import *import_new(engram_client *client, const char *table,
                                 uint64_t rows, uint32_t row_bytes)
{
    engram_import *imp = calloc(1, sizeof *imp);
    if (!imp)
        return NULL;
    snprintf(imp->table, sizeof imp->table, "%s", table);
    imp->client = client;
    imp->rows = rows;
    imp->row_bytes = row_bytes;
    imp->chunk_max = CHUNK_MAX_BYTES;
    if (client->max_message_bytes > CHUNK_FRAMING_BYTES &&
        (size_t)client->max_message_bytes - CHUNK_FRAMING_BYTES <
            imp->chunk_max)
        imp->chunk_max =
            (size_t)client->max_message_bytes - CHUNK_FRAMING_BYTES;
    if (!(imp->xxh = XXH3_createState())) {
        free(imp);
        return NULL;
    }
    XXH3_64bits_reset(imp->xxh);
    imp->cq = grpc_completion_queue_create_for_pluck(NULL);
    grpc_slice method = grpc_slice_from_static_string(METHOD_IMPORT);
    imp->call = grpc_channel_create_call(
        client->channel, NULL, GRPC_PROPAGATE_DEFAULTS, imp->cq, method, NULL,
        gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    return imp;
}

int engram_import_begin(engram_client *client, const char *table,
                        uint64_t rows, uint32_t dim, const char *dtype,
                        engram_import **out, engram_error *err)
{
    return engram_import_begin_target(client, table, rows, dim, dtype, NULL, out, err);
}

void engram_import_target_init(engram_import_target *target)
{
    memset(target, 0, sizeof *target);
    target->struct_size = sizeof *target;
}

int engram_import_begin_target(engram_client *client, const char *table,
                               uint64_t rows, uint32_t dim, const char *dtype,
                               const engram_import_target *target,
                               engram_import **out, engram_error *err)
{
    engram_import_target tg, *t = &tg;
    engram_import_target_init(&tg);
    int rc = target ? ec_struct_read(&tg, sizeof tg, ec_import_target_v1, target,
                                     "engram_import_target", err) : ENGRAM_OK;
    if (!rc)
        rc = check_begin_args(client, table, dim, dtype, out, err);
    if (rc)
        return rc;
    if (t->shard_count && t->shard_index >= t->shard_count)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "shard_index %u is outside %u shards",
                        t->shard_index, t->shard_count);
    *out = NULL;
    uint64_t local = t->shard_count ? cluster_local_rows(rows, t->shard_count, t->shard_index) : rows;
    engram_import *imp =
        import_new(client, table, local, (uint32_t)dtype_row_bytes(dtype, dim));
    if (!imp)
        return ec_error(err, ENGRAM_RESOURCE_EXHAUSTED, "out of memory");
    if (!imp->call) {
        import_free(imp);
        return ec_error(err, ENGRAM_INTERNAL, "grpc could not create a call");
    }
    Engram__V1__ImportHeader h = ENGRAM__V1__IMPORT_HEADER__INIT;
    h.table = (char *)table; /* only read by pack */
    h.rows = rows;
    h.dim = dim;
    h.dtype = (char *)dtype;
    h.version = t->version;
    h.stage = t->stage != 0;
    h.shard_count = t->shard_count;
    h.shard_index = t->shard_index;
    h.trailer_follows = 1;   /* finish always sends it: a dead client's stream is never taken */
    Engram__V1__ImportRequest m = ENGRAM__V1__IMPORT_REQUEST__INIT;
    m.kind_case = ENGRAM__V1__IMPORT_REQUEST__KIND_HEADER;
    m.header = &h;
    rc = send_msg(imp, &m, 1, err);
    if (rc) {
        import_free(imp);
        return rc;
    }
    *out = imp;
    return ec_ok(err);
}

static int check_write_args(engram_import *imp, uint64_t start_row,
                            const void *data, size_t len, engram_error *err)
{
    if (len > 0 && !data)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT,
                        "data is NULL but len is %zu", len);
    if (len % imp->row_bytes)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT,
                        "write of %zu bytes is not a whole number of "
                        "%u-byte rows", len, imp->row_bytes);
    if (start_row != imp->next_row)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT,
                        "write starts at row %llu, next row of %s is %llu",
                        (unsigned long long)start_row, imp->table,
                        (unsigned long long)imp->next_row);
    uint64_t n = len / imp->row_bytes;
    if (n > imp->rows - imp->next_row)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT,
                        "write of rows [%llu, %llu) exceeds the %llu rows "
                        "declared for %s", (unsigned long long)start_row,
                        (unsigned long long)(start_row + n),
                        (unsigned long long)imp->rows, imp->table);
    return ENGRAM_OK;
}

int engram_import_write(engram_import *imp, uint64_t start_row,
                        const void *data, size_t len, engram_error *err)
{
    if (!imp)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "import is NULL");
    if (imp->failed)
        return ec_error(err, imp->failed, "%s", imp->failed_msg);
    int rc = check_write_args(imp, start_row, data, len, err);
    if (rc)
        return rc;
    size_t per_msg = imp->chunk_max / imp->row_bytes;
    if (per_msg == 0)
        per_msg = 1; /* a row wider than a chunk goes alone */
    per_msg *= imp->row_bytes;
    const uint8_t *p = data;
    for (size_t off = 0; off < len; off += per_msg) {
        size_t take = len - off < per_msg ? len - off : per_msg;
        Engram__V1__ImportChunk ch = ENGRAM__V1__IMPORT_CHUNK__INIT;
        ch.start_row = imp->next_row;
        ch.data.len = take;
        ch.data.data = (uint8_t *)(p + off); /* only read by pack */
        Engram__V1__ImportRequest m = ENGRAM__V1__IMPORT_REQUEST__INIT;
        m.kind_case = ENGRAM__V1__IMPORT_REQUEST__KIND_CHUNK;
        m.chunk = &ch;
        rc = send_msg(imp, &m, 0, err);
        if (rc)
            return rc;
        XXH3_64bits_update(imp->xxh, p + off, take);
        imp->next_row += take / imp->row_bytes;
    }
    return ec_ok(err);
}

/* The trailer: the XXH3 of every row sent. */
static int send_trailer(engram_import *imp, engram_error *err)
{
    Engram__V1__ImportTrailer t = ENGRAM__V1__IMPORT_TRAILER__INIT;
    t.xxh3 = XXH3_64bits_digest(imp->xxh);
    Engram__V1__ImportRequest m = ENGRAM__V1__IMPORT_REQUEST__INIT;
    m.kind_case = ENGRAM__V1__IMPORT_REQUEST__KIND_TRAILER;
    m.trailer = &t;
    return send_msg(imp, &m, 0, err);
}

/* The finishing batch; on OK fills info from the ImportResponse. */
static int close_and_receive(engram_import *imp, engram_table_info *info,
                             engram_error *err)
{
    grpc_metadata_array initial, trailing;
    grpc_metadata_array_init(&initial);
    grpc_metadata_array_init(&trailing);
    grpc_byte_buffer *reply = NULL;
    grpc_status_code status = GRPC_STATUS_UNKNOWN;
    grpc_slice details = grpc_empty_slice();
    grpc_op ops[4];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[1].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[1].data.recv_initial_metadata.recv_initial_metadata = &initial;
    ops[2].op = GRPC_OP_RECV_MESSAGE;
    ops[2].data.recv_message.recv_message = &reply;
    ops[3].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[3].data.recv_status_on_client.trailing_metadata = &trailing;
    ops[3].data.recv_status_on_client.status = &status;
    ops[3].data.recv_status_on_client.status_details = &details;

    int rc;
    if (!run_batch(imp, ops, 4)) {
        rc = ec_error(err, ENGRAM_UNKNOWN,
                      "import of %s: the final batch failed", imp->table);
    } else if (status != GRPC_STATUS_OK) {
        char msg[sizeof imp->failed_msg];
        rc = ec_status_to_error(status, details, msg, sizeof msg);
        ec_error(err, rc, "%s", msg);
    } else {
        Engram__V1__ImportResponse *r =
            (Engram__V1__ImportResponse *)pb_from_byte_buffer(
                &engram__v1__import_response__descriptor, reply);
        if (!r) {
            rc = ec_error(err, ENGRAM_INTERNAL,
                          "import of %s: malformed ImportResponse", imp->table);
        } else {
            if (info)
                ec_table_info_from_pb(info, r->table);
            protobuf_c_message_free_unpacked(&r->base, NULL);
            rc = ec_ok(err);
        }
    }
    if (reply)
        grpc_byte_buffer_destroy(reply);
    grpc_slice_unref(details);
    grpc_metadata_array_destroy(&initial);
    grpc_metadata_array_destroy(&trailing);
    return rc;
}

int engram_import_finish(engram_import *imp, engram_table_info *info,
                         engram_error *err)
{
    if (!imp)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "import is NULL");
    int rc;
    if (imp->failed) {
        rc = ec_error(err, imp->failed, "%s", imp->failed_msg);
    } else if (imp->next_row != imp->rows) {
        /* The server would refuse a short stream too; saying so here
         * names the numbers. Cancelling guarantees nothing is kept. */
        grpc_call_cancel(imp->call, NULL);
        rc = ec_error(err, ENGRAM_INVALID_ARGUMENT,
                      "import of %s finished after %llu of %llu rows; "
                      "nothing changed", imp->table,
                      (unsigned long long)imp->next_row,
                      (unsigned long long)imp->rows);
    } else if (!(rc = send_trailer(imp, err))) {
        rc = close_and_receive(imp, info, err);
    }
    import_free(imp);
    return rc;
}

void engram_import_abort(engram_import *imp)
{
    if (!imp)
        return;
    grpc_call_cancel(imp->call, NULL);
    import_free(imp);
}
