/* ops.c: the operations calls of libengram: grpc.health.v1 Check,
 * Admin.Drain / Undrain, Admin.Warm and Admin.Verify.
 *
 * All of them go to the server the client was opened with (the bootstrap
 * channel), never through cluster routing: an operator drains, checks or
 * warms one node; engramctl fans Warm out to every replica itself.
 *
 * Check, Drain and Undrain are admin.c's unary calls (ec_admin_run). Drain's
 * deadline is the client's plus the drain's own timeout_ms, so a long wait
 * for in-flight lookups is not cut short by the default deadline (the
 * server bounds its wait by the call's deadline too).
 *
 * Warm and Verify are server streaming, so they run like import.c's client
 * stream: their own pluck completion queue, every batch synchronous on the
 * caller's thread, one outstanding at a time (the sstream_* helpers):
 *   start:   SEND_INITIAL_METADATA + SEND_MESSAGE + SEND_CLOSE_FROM_CLIENT
 *            + RECV_INITIAL_METADATA
 *   each:    RECV_MESSAGE (a progress message; NULL at the end of the stream)
 *   end:     RECV_STATUS_ON_CLIENT
 * Neither has a deadline, like Import: warming a long token list on a cold
 * RocksDB table, or reading every row of a big one, can take longer than
 * any per-call deadline, and the progress messages show it is alive. The
 * caller stops it by ending the process (engramctl) or not starting it. */
#include "client_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/support/time.h>

#include "grpc/health/v1/health.pb-c.h"
#include "grpc_util.h"

int engram_health_check(engram_client *client, const char *service, int *serving,
                        engram_error *err)
{
    if (!client || !serving)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "client or serving is NULL");
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    req.service = (char *)(service ? service : ""); /* only read by pack */
    admin_call a;
    int rc = ec_admin_run(client, client->m_health_check, &req.base,
                          &grpc__health__v1__health_check_response__descriptor, &a, err);
    if (rc)
        return rc;
    Grpc__Health__V1__HealthCheckResponse *r = (Grpc__Health__V1__HealthCheckResponse *)a.reply;
    *serving = r->status == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
                   ? ENGRAM_HEALTH_SERVING : ENGRAM_HEALTH_NOT_SERVING;
    protobuf_c_message_free_unpacked(a.reply, NULL);
    return ec_ok(err);
}

int engram_drain(engram_client *client, uint32_t timeout_ms, int *drained, uint64_t *in_flight,
                 engram_error *err)
{
    if (!client)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "client is NULL");
    Engram__V1__DrainRequest req = ENGRAM__V1__DRAIN_REQUEST__INIT;
    req.timeout_ms = timeout_ms;
    int64_t deadline = client->deadline_ms > 0 ? client->deadline_ms + (int64_t)timeout_ms : 0;
    admin_call a;
    int rc = ec_admin_run_deadline(client, client->m_drain, &req.base,
                                   &engram__v1__drain_response__descriptor, deadline, &a, err);
    if (rc)
        return rc;
    Engram__V1__DrainResponse *r = (Engram__V1__DrainResponse *)a.reply;
    if (drained)
        *drained = r->drained ? 1 : 0;
    if (in_flight)
        *in_flight = r->in_flight;
    protobuf_c_message_free_unpacked(a.reply, NULL);
    return ec_ok(err);
}

int engram_undrain(engram_client *client, engram_error *err)
{
    if (!client)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "client is NULL");
    Engram__V1__UndrainRequest req = ENGRAM__V1__UNDRAIN_REQUEST__INIT;
    admin_call a;
    int rc = ec_admin_run(client, client->m_undrain, &req.base,
                          &engram__v1__drain_response__descriptor, &a, err);
    if (rc)
        return rc;
    protobuf_c_message_free_unpacked(a.reply, NULL);
    return ec_ok(err);
}

/* ---- server streams (Warm, Verify) ------------------------------------------ */

typedef struct sstream {
    grpc_completion_queue *cq;
    grpc_call *call;
    grpc_metadata md[1];
    size_t nmd;
    grpc_metadata_array initial;
    const char *what;            /* "Warm", for messages */
} sstream;

/* Runs one batch and waits for it; returns the batch's success flag. */
static int sstream_batch(sstream *w, const grpc_op *ops, size_t n)
{
    if (grpc_call_start_batch(w->call, ops, n, w, NULL) != GRPC_CALL_OK)
        return 0;
    grpc_event ev = grpc_completion_queue_pluck(w->cq, w, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    return ev.type == GRPC_OP_COMPLETE && ev.success;
}

/* Creates the call of `method` (no deadline) and sends the request.
 * Returns ENGRAM_OK, or an error (with err) when the call could not be
 * created; a failed send shows in the status. sstream_end frees w either
 * way. */
static int sstream_start(sstream *w, engram_client *cl, void *method, const char *what,
                         const ProtobufCMessage *req, engram_error *err)
{
    memset(w, 0, sizeof *w);
    w->what = what;
    grpc_metadata_array_init(&w->initial);
    w->cq = grpc_completion_queue_create_for_pluck(NULL);
    w->call = grpc_channel_create_registered_call(cl->channel, NULL, GRPC_PROPAGATE_DEFAULTS,
                                                  w->cq, method,
                                                  gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    if (!w->call)
        return ec_error(err, ENGRAM_INTERNAL, "grpc could not create a call");
    ec_admin_metadata(cl, w->md, &w->nmd);
    grpc_byte_buffer *bb = pb_to_byte_buffer(req);
    grpc_op ops[4];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].data.send_initial_metadata.count = w->nmd;
    ops[0].data.send_initial_metadata.metadata = w->nmd ? w->md : NULL;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = bb;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &w->initial;
    sstream_batch(w, ops, 4);
    grpc_byte_buffer_destroy(bb);
    return ENGRAM_OK;
}

/* The next message, unpacked with desc; NULL at the end of the stream (or
 * when it broke). A malformed message cancels the call and sets *bad. */
static ProtobufCMessage *sstream_next(sstream *w, const ProtobufCMessageDescriptor *desc, int *bad)
{
    grpc_byte_buffer *bb = NULL;
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &bb;
    if (!sstream_batch(w, &op, 1) || !bb)
        return NULL;
    ProtobufCMessage *m = pb_from_byte_buffer(desc, bb);
    grpc_byte_buffer_destroy(bb);
    if (!m) {
        grpc_call_cancel(w->call, NULL);
        *bad = 1;
    }
    return m;
}

/* The stream's final status, as an engram code with err filled. */
static int sstream_status(sstream *w, engram_error *err)
{
    grpc_metadata_array trailing;
    grpc_metadata_array_init(&trailing);
    grpc_status_code status = GRPC_STATUS_UNKNOWN;
    grpc_slice details = grpc_empty_slice();
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    op.data.recv_status_on_client.trailing_metadata = &trailing;
    op.data.recv_status_on_client.status = &status;
    op.data.recv_status_on_client.status_details = &details;
    int rc;
    if (!sstream_batch(w, &op, 1)) {
        rc = ec_error(err, ENGRAM_UNKNOWN, "%s stream broke without a status", w->what);
    } else {
        char msg[sizeof err->message];
        rc = ec_status_to_error(status, details, msg, sizeof msg);
        if (rc)
            ec_error(err, rc, "%s", msg);
    }
    grpc_slice_unref(details);
    grpc_metadata_array_destroy(&trailing);
    return rc;
}

/* Ends the stream: rc is what reading found (0, or an error already in
 * err); when it was 0 the status decides, and a stream that ended without
 * its final (done) message is an error. Frees everything of w. */
static int sstream_end(sstream *w, int rc, int last, engram_error *err)
{
    if (w->call) {
        engram_error scratch;    /* keep the first error's message */
        int st = sstream_status(w, rc ? &scratch : err);
        if (!rc)
            rc = st;
        if (!rc && !last)
            rc = ec_error(err, ENGRAM_INTERNAL, "%s stream ended without its final message",
                          w->what);
        grpc_call_unref(w->call);
    }
    grpc_metadata_array_destroy(&w->initial);
    grpc_completion_queue_shutdown(w->cq);
    grpc_completion_queue_destroy(w->cq);
    return rc ? rc : ec_ok(err);
}

/* ---- Warm ------------------------------------------------------------------- */

/* Reads progress messages until the stream ends; *last is set when the
 * final one (done) arrived. Returns 0, or an error code (with err) for a
 * malformed message. */
static int warm_read_all(sstream *w, engram_warm_progress_fn progress, void *ctx, int *last,
                         engram_error *err)
{
    Engram__V1__WarmProgress *p;
    int bad = 0;
    while ((p = (Engram__V1__WarmProgress *)sstream_next(w, &engram__v1__warm_progress__descriptor,
                                                         &bad))) {
        if (progress)
            progress(ctx, p->table, p->rows_done, p->rows_total, p->rows_loaded);
        *last = p->done;
        protobuf_c_message_free_unpacked(&p->base, NULL);
    }
    return bad ? ec_error(err, ENGRAM_INTERNAL, "malformed WarmProgress message") : ENGRAM_OK;
}

static int check_warm_args(engram_client *client, const char *table, const uint64_t *rows,
                           size_t n, const char *model, const int64_t *tokens, size_t ntokens,
                           const int64_t *layer_ids, size_t nlayers, engram_error *err)
{
    int has_table = table && *table, has_model = model && *model;
    if (!client)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "client is NULL");
    if (has_table == has_model)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT,
                        has_table ? "give a table or a model, not both"
                                  : "give a table with rows or a model with tokens");
    if (has_table && (n == 0 || !rows || ntokens || nlayers))
        return ec_error(err, ENGRAM_INVALID_ARGUMENT,
                        "warming table \"%.128s\" takes rows (got %zu rows, %zu tokens, %zu layers)",
                        table, n, ntokens, nlayers);
    if (has_model && (ntokens == 0 || !tokens || n || (nlayers && !layer_ids)))
        return ec_error(err, ENGRAM_INVALID_ARGUMENT,
                        "warming model \"%.128s\" takes tokens (got %zu tokens, %zu rows)", model,
                        ntokens, n);
    return ENGRAM_OK;
}

void engram_warm_request_init(engram_warm_request *req)
{
    memset(req, 0, sizeof *req);
    req->struct_size = sizeof *req;
}

int engram_warm(engram_client *client, const engram_warm_request *request, engram_error *err)
{
    if (!request)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "the warm request is NULL");
    engram_warm_request wr;
    engram_warm_request_init(&wr);
    int rc = ec_struct_read(&wr, sizeof wr, ec_warm_request_v1, request, "engram_warm_request", err);
    if (rc)
        return rc;
    const char *table = wr.table, *model = wr.model;
    const uint64_t *rows = wr.rows;
    const int64_t *tokens = wr.tokens, *layer_ids = wr.layer_ids;
    size_t n = wr.n_rows, ntokens = wr.n_tokens, nlayers = wr.n_layers;
    engram_warm_progress_fn progress = wr.progress;
    void *ctx = wr.progress_ctx;
    rc = check_warm_args(client, table, rows, n, model, tokens, ntokens, layer_ids, nlayers, err);
    if (rc)
        return rc;
    Engram__V1__WarmRequest req = ENGRAM__V1__WARM_REQUEST__INIT;
    req.table = (char *)(table ? table : ""); /* all only read by pack */
    req.rows = (uint64_t *)rows;
    req.n_rows = n;
    req.model = (char *)(model ? model : "");
    req.tokens = (int64_t *)tokens;
    req.n_tokens = ntokens;
    req.layer_ids = (int64_t *)layer_ids;
    req.n_layer_ids = nlayers;

    sstream w;
    int last = 0;
    rc = sstream_start(&w, client, client->m_warm, "Warm", &req.base, err);
    if (!rc)
        rc = warm_read_all(&w, progress, ctx, &last, err);
    return sstream_end(&w, rc, last, err);
}

/* ---- Verify ----------------------------------------------------------------- */

static void copy_cstr(char *dst, size_t cap, const char *src)
{
    snprintf(dst, cap, "%s", src ? src : "");
}

static void verify_result_from_pb(engram_verify_result *out, const Engram__V1__VerifyProgress *p)
{
    memset(out, 0, sizeof *out);
    copy_cstr(out->table, sizeof out->table, p->table);
    out->version = p->version;
    out->rows_checked = p->rows_done;
    out->local_rows = p->rows_total;
    out->rows = p->rows;
    out->row_bytes = p->row_bytes;
    out->dim = p->dim;
    copy_cstr(out->dtype, sizeof out->dtype, p->dtype);
    out->shard_index = p->shard_index;
    out->shard_count = p->shard_count;
    out->xxh3 = p->xxh3;
    out->crc32 = p->crc32;
    out->stored_xxh3 = p->stored_xxh3;
    out->stored_crc32 = p->stored_crc32;
    out->resident = p->resident ? 1 : 0;
    out->match = p->match ? 1 : 0;
    copy_cstr(out->problem, sizeof out->problem, p->problem);
}

/* Reads progress messages until the stream ends; the last one (done) fills
 * out. Returns 0, or an error code (with err) for a malformed message. */
static int verify_read_all(sstream *w, engram_verify_progress_fn progress, void *ctx,
                           engram_verify_result *out, int *last, engram_error *err)
{
    Engram__V1__VerifyProgress *p;
    int bad = 0;
    while ((p = (Engram__V1__VerifyProgress *)sstream_next(
                w, &engram__v1__verify_progress__descriptor, &bad))) {
        if (p->done)
            verify_result_from_pb(out, p);
        else if (progress)
            progress(ctx, p->rows_done, p->rows_total, p->row_bytes);
        *last = p->done;
        protobuf_c_message_free_unpacked(&p->base, NULL);
    }
    return bad ? ec_error(err, ENGRAM_INTERNAL, "malformed VerifyProgress message") : ENGRAM_OK;
}

int engram_table_verify(engram_client *client, const char *table, uint64_t version,
                        engram_verify_progress_fn progress, void *ctx,
                        engram_verify_result *out, engram_error *err)
{
    if (!client || !out)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "client or out is NULL");
    if (!table || !*table)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "table name is empty");
    memset(out, 0, sizeof *out);
    Engram__V1__VerifyRequest req = ENGRAM__V1__VERIFY_REQUEST__INIT;
    req.table = (char *)table; /* only read by pack */
    req.version = version;
    sstream w;
    int last = 0, rc = sstream_start(&w, client, client->m_verify, "Verify", &req.base, err);
    if (!rc)
        rc = verify_read_all(&w, progress, ctx, out, &last, err);
    return sstream_end(&w, rc, last, err);
}
