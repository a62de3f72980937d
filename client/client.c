/* client.c: the engram_client (one channel, one completion queue, one
 * background thread draining it) and the asynchronous unary call machinery
 * that lookup.c and admin.c build on. See client_internal.h for the life of
 * a call.
 *
 * Locking: client->mu guards the in-flight list; each call's own mu guards
 * its grpc_call pointer and its outcome. The two are never held together
 * except client->mu -> grpc_call_cancel in close, which takes no call mu:
 * a call stays in the in-flight list until the completion thread has
 * unlinked it, and only after that does the thread unref the grpc_call, so
 * close can cancel every listed call without a use-after-free.
 *
 * Lookups go through a router (cluster.c): the single-server one made at
 * open over this channel, or a cluster's, which adds per-replica channels
 * sharing this one completion queue and thread. Their calls finish through
 * an on_done hook instead of `done`, and close stops the routers first,
 * cancels and drains every call, joins the completion thread and only then
 * frees the routers (ec_cluster_free), so no hook can run on freed state.
 *
 * Security: TLS material and the admin token are read and copied at open,
 * so every channel (bootstrap and replicas, made by ec_channel_create)
 * uses the same credentials and the caller's strings are not kept. The
 * token goes only on admin calls: a Lookup never carries it, so a worker's
 * lookups do not spread the operator's secret to every data-plane hop. */
#include "client_internal.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <grpc/grpc_security.h>
#include <grpc/support/time.h>

#include "grpc_util.h"
#include "methods.h"
#include "status.h"

/* ---- errors ------------------------------------------------------------- */

const char *engram_status_name(int code)
{
    if (code == ENGRAM_TIMEOUT)
        return "TIMEOUT";
    return es_code_name(code);
}

int ec_error(engram_error *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        err->code = code;
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
    }
    return code;
}

int ec_ok(engram_error *err)
{
    if (err) {
        err->code = ENGRAM_OK;
        err->message[0] = '\0';
    }
    return ENGRAM_OK;
}

int ec_status_to_error(grpc_status_code status, grpc_slice details,
                       char *message, size_t cap)
{
    size_t len = GRPC_SLICE_LENGTH(details);
    if (status == GRPC_STATUS_OK) {
        message[0] = '\0';
    } else if (len == 0) {
        /* A status with no text (e.g. a proxy's) still gets a message. */
        snprintf(message, cap, "call failed with %s", es_code_name(status));
    } else {
        if (len >= cap)
            len = cap - 1;
        memcpy(message, GRPC_SLICE_START_PTR(details), len);
        message[len] = '\0';
    }
    return (int)status;
}

/* ---- options, open, close ------------------------------------------------ */

void engram_client_options_init(engram_client_options *opts)
{
    memset(opts, 0, sizeof *opts);
    opts->struct_size = sizeof *opts;
    opts->deadline_ms = 10000;
    opts->max_message_bytes = 64 << 20;
    opts->max_prefetch_tokens = 1 << 20;
    opts->prefetch_chunk_rows = 8192;
    opts->version_refresh_ms = 1000;
    opts->attempt_timeout_ms = 1000;
    opts->eject_after_failures = 3;
    opts->eject_backoff_ms = 1000;
    opts->hedge_percentile = 0;
    opts->hedge_min_ms = 2;
    opts->eject_after_hedge_losses = 5;
    opts->tls_ca_file = NULL;
    opts->tls_cert_file = NULL;
    opts->tls_key_file = NULL;
    opts->tls_server_name = NULL;
    opts->tls_refresh_s = 60;
    opts->admin_token = NULL;
    opts->local = ENGRAM_LOCAL_AUTO;
}

void engram_client_get_counters(engram_client *cl, engram_client_counters *out)
{
    if (!out)
        return;
    memset(out, 0, sizeof *out);
    if (!cl)
        return;
    out->subrequests = __atomic_load_n(&cl->counters.subrequests, __ATOMIC_RELAXED);
    out->retries = __atomic_load_n(&cl->counters.retries, __ATOMIC_RELAXED);
    out->hedges = __atomic_load_n(&cl->counters.hedges, __ATOMIC_RELAXED);
    out->hedge_wins = __atomic_load_n(&cl->counters.hedge_wins, __ATOMIC_RELAXED);
    out->ejections = __atomic_load_n(&cl->counters.ejections, __ATOMIC_RELAXED);
    out->slow_ejections = __atomic_load_n(&cl->counters.slow_ejections, __ATOMIC_RELAXED);
    out->version_resolves = __atomic_load_n(&cl->counters.version_resolves, __ATOMIC_RELAXED);
}

/* The completion thread: every event is the end of one unary batch. */
static void ec_call_complete(ec_call *c, int success);

static void *cq_thread(void *arg)
{
    engram_client *cl = arg;
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(
            cl->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (ev.type == GRPC_OP_COMPLETE)
            ec_call_complete(ev.tag, ev.success);
    }
    return NULL;
}

static void register_methods(engram_client *cl)
{
    cl->m_lookup = grpc_channel_register_call(
        cl->channel, METHOD_LOOKUP, NULL, NULL);
    cl->m_list_tables = grpc_channel_register_call(
        cl->channel, METHOD_LIST_TABLES, NULL, NULL);
    cl->m_get_table = grpc_channel_register_call(
        cl->channel, METHOD_GET_TABLE, NULL, NULL);
    cl->m_put_manifest = grpc_channel_register_call(
        cl->channel, METHOD_PUT_MANIFEST, NULL, NULL);
    cl->m_get_manifest = grpc_channel_register_call(
        cl->channel, METHOD_GET_MANIFEST, NULL, NULL);
    cl->m_list_manifests = grpc_channel_register_call(
        cl->channel, METHOD_LIST_MANIFESTS, NULL, NULL);
    cl->m_activate = grpc_channel_register_call(
        cl->channel, METHOD_ACTIVATE_VERSION, NULL, NULL);
    cl->m_drop_version = grpc_channel_register_call(
        cl->channel, METHOD_DROP_VERSION, NULL, NULL);
    cl->m_cluster_map = grpc_channel_register_call(
        cl->channel, METHOD_GET_CLUSTER_MAP, NULL, NULL);
    cl->m_health_check = grpc_channel_register_call(
        cl->channel, METHOD_HEALTH_CHECK, NULL, NULL);
    cl->m_drain = grpc_channel_register_call(
        cl->channel, METHOD_DRAIN, NULL, NULL);
    cl->m_undrain = grpc_channel_register_call(
        cl->channel, METHOD_UNDRAIN, NULL, NULL);
    cl->m_warm = grpc_channel_register_call(
        cl->channel, METHOD_WARM, NULL, NULL);
    cl->m_verify = grpc_channel_register_call(
        cl->channel, METHOD_VERIFY, NULL, NULL);
    cl->m_stats = grpc_channel_register_call(
        cl->channel, METHOD_STATS, NULL, NULL);
    cl->m_set_log_level = grpc_channel_register_call(
        cl->channel, METHOD_SET_LOG_LEVEL, NULL, NULL);
}

static int check_open_args(const char *address,
                           const engram_client_options *o,
                           engram_client **out, engram_error *err)
{
    if (!out)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "out is NULL");
    if (!address || !*address)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT,
                        "address is empty (want host:port)");
    if (o->max_message_bytes <= 0)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT,
                        "max_message_bytes %d is not positive",
                        (int)o->max_message_bytes);
    if (o->max_prefetch_tokens <= 0)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT,
                        "max_prefetch_tokens %lld is not positive",
                        (long long)o->max_prefetch_tokens);
    if (o->prefetch_chunk_rows <= 0)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "prefetch_chunk_rows %d is not positive",
                        (int)o->prefetch_chunk_rows);
    if (o->hedge_percentile < 0 || o->hedge_percentile > 99)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT,
                        "hedge_percentile %d is outside 0..99", (int)o->hedge_percentile);
    if (o->local != ENGRAM_LOCAL_AUTO && o->local != ENGRAM_LOCAL_OFF &&
        o->local != ENGRAM_LOCAL_REQUIRE)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT,
                        "local %d is not ENGRAM_LOCAL_AUTO, _OFF or _REQUIRE", (int)o->local);
    if (o->hedge_min_ms < 0)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "hedge_min_ms %lld is negative",
                        (long long)o->hedge_min_ms);
    if (o->eject_after_hedge_losses < 0)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "eject_after_hedge_losses %d is negative",
                        (int)o->eject_after_hedge_losses);
    if (o->eject_after_failures < 0)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "eject_after_failures %d is negative",
                        (int)o->eject_after_failures);
    if ((o->eject_after_failures > 0 ||
         (o->eject_after_hedge_losses > 0 && o->hedge_percentile > 0)) &&
        o->eject_backoff_ms <= 0)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "eject_backoff_ms %lld is not positive",
                        (long long)o->eject_backoff_ms);
    if (!o->tls_cert_file != !o->tls_key_file)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT,
                        "tls_cert_file and tls_key_file go together (one is set, the other NULL)");
    if (o->tls_refresh_s < 0)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "tls_refresh_s %d is negative",
                        (int)o->tls_refresh_s);
    if (o->tls_cert_file && !o->tls_ca_file)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT,
                        "tls_cert_file needs tls_ca_file: a client certificate is only sent over TLS");
    if (o->admin_token && (!*o->admin_token || strpbrk(o->admin_token, "\r\n")))
        return ec_error(err, ENGRAM_INVALID_ARGUMENT,
                        "admin_token is empty or holds a line break");
    return ENGRAM_OK;
}

/* ---- security -------------------------------------------------------------- */

/* A PEM file as a string (at most 1 MiB); NULL with err naming the file. */
static char *read_pem(const char *path, const char *what, engram_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        ec_error(err, ENGRAM_INVALID_ARGUMENT, "cannot read %s %s: %s", what, path, strerror(errno));
        return NULL;
    }
    size_t cap = 1u << 20;
    char *buf = malloc(cap + 1);
    size_t n = buf ? fread(buf, 1, cap + 1, f) : 0;
    int bad = !buf || ferror(f) || n > cap;
    fclose(f);
    if (!bad)
        buf[n] = '\0';
    if (bad || !strstr(buf, "-----BEGIN ")) {
        ec_error(err, ENGRAM_INVALID_ARGUMENT, "%s %s is not a readable PEM file of at most 1 MiB",
                 what, path);
        free(buf);
        return NULL;
    }
    return buf;
}

static void free_secret(char *s)
{
    if (s) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

static void security_free(engram_client *cl)
{
    if (cl->tls_watch)
        grpc_tls_certificate_provider_release(cl->tls_watch);
    free(cl->ca_pem);
    free(cl->cert_pem);
    free_secret(cl->key_pem);
    free(cl->server_name);
    free_secret(cl->auth_value);
}

/* Copies what the options name into cl and clears the option strings. */
static int security_load(engram_client *cl, engram_error *err)
{
    engram_client_options *o = &cl->opts;
    int rc = ENGRAM_OK;
    if (o->tls_ca_file && !(cl->ca_pem = read_pem(o->tls_ca_file, "tls_ca_file", err)))
        rc = ENGRAM_INVALID_ARGUMENT;
    else if (o->tls_cert_file &&
             (!(cl->cert_pem = read_pem(o->tls_cert_file, "tls_cert_file", err)) ||
              !(cl->key_pem = read_pem(o->tls_key_file, "tls_key_file", err))))
        rc = ENGRAM_INVALID_ARGUMENT;
    /* The files are read above either way, so a wrong path or a file that
     * is not PEM is reported by open, not as a failed handshake later. */
    if (!rc && o->tls_ca_file && o->tls_refresh_s > 0)
        cl->tls_watch = grpc_tls_certificate_provider_file_watcher_create(
            o->tls_key_file, o->tls_cert_file, o->tls_ca_file, (unsigned)o->tls_refresh_s);
    if (!rc && o->tls_server_name)
        cl->server_name = strdup(o->tls_server_name);
    if (!rc && o->admin_token) {
        size_t len = strlen(o->admin_token) + sizeof "Bearer ";
        cl->auth_value = malloc(len);
        snprintf(cl->auth_value, len, "Bearer %s", o->admin_token);
    }
    o->tls_ca_file = o->tls_cert_file = o->tls_key_file = NULL;
    o->tls_server_name = o->admin_token = NULL;
    return rc;
}

grpc_channel *ec_channel_create(engram_client *cl, const char *address,
                                const grpc_channel_args *args)
{
    grpc_channel_credentials *creds;
    if (cl->tls_watch) {
        /* gRPC's TLS credentials read the files through the watcher; the
         * server certificate and its name are checked as with SSL ones. */
        grpc_tls_credentials_options *to = grpc_tls_credentials_options_create();
        grpc_tls_credentials_options_set_certificate_provider(to, cl->tls_watch);
        grpc_tls_credentials_options_watch_root_certs(to);
        if (cl->cert_pem)
            grpc_tls_credentials_options_watch_identity_key_cert_pairs(to);
        creds = grpc_tls_credentials_create(to);
    } else if (cl->ca_pem) {
        grpc_ssl_pem_key_cert_pair pair = {cl->key_pem, cl->cert_pem};
        creds = grpc_ssl_credentials_create(cl->ca_pem, cl->cert_pem ? &pair : NULL, NULL, NULL);
    } else {
        creds = grpc_insecure_credentials_create();
    }
    /* The arguments plus the server name override, when there is one. */
    size_t n = args ? args->num_args : 0;
    grpc_arg all[16];
    if (n > 15)
        n = 15;
    for (size_t i = 0; i < n; i++)
        all[i] = args->args[i];
    if (cl->ca_pem && cl->server_name)
        all[n++] = (grpc_arg){.type = GRPC_ARG_STRING, .key = GRPC_SSL_TARGET_NAME_OVERRIDE_ARG,
                              .value.string = cl->server_name};
    grpc_channel_args chargs = {.num_args = n, .args = all};
    grpc_channel *ch = grpc_channel_create(address, creds, &chargs);
    grpc_channel_credentials_release(creds);
    return ch;
}

void ec_admin_metadata(engram_client *cl, grpc_metadata *md, size_t *count)
{
    *count = 0;
    if (!cl->auth_value)
        return;
    memset(md, 0, sizeof *md);
    md->key = grpc_slice_from_static_string("authorization");
    md->value = grpc_slice_from_static_string(cl->auth_value);
    *count = 1;
}

int engram_client_open(const char *address, const engram_client_options *opts,
                       engram_client **out, engram_error *err)
{
    engram_client_options o;
    engram_client_options_init(&o);
    if (out)
        *out = NULL;
    int rc = opts ? ec_struct_read(&o, sizeof o, ec_client_options_v1, opts,
                                   "engram_client_options", err) : ENGRAM_OK;
    if (!rc)
        rc = check_open_args(address, &o, out, err);
    if (rc)
        return rc;
    *out = NULL;

    engram_client *cl = calloc(1, sizeof *cl);
    if (!cl)
        return ec_error(err, ENGRAM_RESOURCE_EXHAUSTED, "out of memory");
    cl->deadline_ms = o.deadline_ms;
    cl->max_message_bytes = o.max_message_bytes;
    cl->max_prefetch_tokens = o.max_prefetch_tokens;
    cl->opts = o;
    pthread_mutex_init(&cl->mu, NULL);
    pthread_mutex_init(&cl->disc_mu, NULL);
    pthread_cond_init(&cl->idle, NULL);
    if ((rc = security_load(cl, err))) {
        security_free(cl);
        pthread_cond_destroy(&cl->idle);
        pthread_mutex_destroy(&cl->mu);
        pthread_mutex_destroy(&cl->disc_mu);
        free(cl);
        return rc;
    }

    grpc_init();
    grpc_arg args[2];
    message_size_args(args, o.max_message_bytes);
    grpc_channel_args chargs = {.num_args = 2, .args = args};
    cl->channel = ec_channel_create(cl, address, &chargs);
    register_methods(cl);
    cl->cq = grpc_completion_queue_create_for_next(NULL);

    cl->single = ec_router_single(cl);
    rc = cl->single ? pthread_create(&cl->thread, NULL, cq_thread, cl) : ENOMEM;
    if (rc) {
        if (cl->single)
            ec_cluster_free(cl->single);
        grpc_completion_queue_shutdown(cl->cq);
        grpc_completion_queue_destroy(cl->cq);
        grpc_channel_destroy(cl->channel);
        grpc_shutdown();
        security_free(cl);
        pthread_cond_destroy(&cl->idle);
        pthread_mutex_destroy(&cl->mu);
        pthread_mutex_destroy(&cl->disc_mu);
        free(cl);
        return ec_error(err, ENGRAM_RESOURCE_EXHAUSTED,
                        "cannot start the completion thread: %s", strerror(rc));
    }
    *out = cl;
    return ec_ok(err);
}

/* Cancels every in-flight call and waits until the completion thread has
 * finished them all (a cancelled batch still completes, with CANCELLED). */
static void cancel_and_drain(engram_client *cl)
{
    pthread_mutex_lock(&cl->mu);
    cl->closing = 1;
    for (ec_call *c = cl->inflight; c; c = c->next)
        grpc_call_cancel_with_status(c->call, GRPC_STATUS_CANCELLED,
                                     "cancelled by engram_client_close", NULL);
    while (cl->inflight)
        pthread_cond_wait(&cl->idle, &cl->mu);
    pthread_mutex_unlock(&cl->mu);
}

void engram_client_close(engram_client *cl)
{
    if (!cl)
        return;
    /* Cluster mode: no new hedges from here; a retry the completion thread
     * still starts is refused once `closing` is set below. */
    if (cl->cluster)
        ec_cluster_stop_begin(cl->cluster);
    ec_cluster_stop_begin(cl->single);
    cancel_and_drain(cl);
    /* Nothing is in flight: the queue drains at once and the thread sees
     * GRPC_QUEUE_SHUTDOWN. */
    grpc_completion_queue_shutdown(cl->cq);
    pthread_join(cl->thread, NULL);
    /* The completion thread ran its last done hook: the cluster's lookups
     * are all finished except queued re-pins, which free fails. */
    if (cl->cluster)
        ec_cluster_free(cl->cluster);
    ec_cluster_free(cl->single);
    grpc_completion_queue_destroy(cl->cq);
    grpc_channel_destroy(cl->channel);
    grpc_shutdown();
    security_free(cl);
    pthread_cond_destroy(&cl->idle);
    pthread_mutex_destroy(&cl->mu);
    pthread_mutex_destroy(&cl->disc_mu);
    free(cl);
}

/* ---- unary calls --------------------------------------------------------- */

void ec_cond_init_mono(pthread_cond_t *cv)
{
    /* Timed waits measure on the monotonic clock: immune to clock steps. */
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(cv, &ca);
    pthread_condattr_destroy(&ca);
}

void ec_call_init(ec_call *c, engram_client *client, ec_decode_fn decode)
{
    c->client = client;
    c->decode = decode;
    pthread_mutex_init(&c->mu, NULL);
    ec_cond_init_mono(&c->cv);
    grpc_metadata_array_init(&c->md_initial);
    grpc_metadata_array_init(&c->md_trailing);
    c->details = grpc_empty_slice();
}

/* Fills the six ops of a unary client call. */
static void fill_unary_ops(ec_call *c, grpc_op ops[6])
{
    memset(ops, 0, 6 * sizeof ops[0]);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = c->send_bb;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &c->md_initial;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &c->recv_bb;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &c->md_trailing;
    ops[5].data.recv_status_on_client.status = &c->status;
    ops[5].data.recv_status_on_client.status_details = &c->details;
}

static void unlink_call(engram_client *cl, ec_call *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        cl->inflight = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    if (!cl->inflight)
        pthread_cond_broadcast(&cl->idle);
}

/* Frees the gRPC resources a call holds besides the grpc_call itself. */
static void free_call_buffers(ec_call *c)
{
    if (c->send_bb)
        grpc_byte_buffer_destroy(c->send_bb);
    if (c->recv_bb)
        grpc_byte_buffer_destroy(c->recv_bb);
    c->send_bb = c->recv_bb = NULL;
    grpc_metadata_array_destroy(&c->md_initial);
    grpc_metadata_array_destroy(&c->md_trailing);
    grpc_slice_unref(c->details);
    c->details = grpc_empty_slice();
}

int ec_call_start(ec_call *c, void *method, const ProtobufCMessage *req,
                  engram_error *err)
{
    engram_client *cl = c->client;
    return ec_call_start_on(c, cl->channel, method, pb_to_byte_buffer(req),
                            cl->deadline_ms, err);
}

int ec_call_start_on(ec_call *c, grpc_channel *channel, void *method,
                     grpc_byte_buffer *bb, int64_t timeout_ms,
                     engram_error *err)
{
    engram_client *cl = c->client;
    c->send_bb = bb;
    grpc_call *call = grpc_channel_create_registered_call(
        channel, NULL, GRPC_PROPAGATE_DEFAULTS, cl->cq, method,
        deadline_in_ms(timeout_ms), NULL);
    if (!call) {
        free_call_buffers(c);
        c->done = 1;
        c->code = ENGRAM_INTERNAL;
        return ec_error(err, ENGRAM_INTERNAL, "grpc could not create a call");
    }
    c->call = call;

    /* Listed before the batch starts: the completion may come at once and
     * expects to find it there. */
    pthread_mutex_lock(&cl->mu);
    int closing = cl->closing;
    if (!closing) {
        c->next = cl->inflight;
        if (c->next)
            c->next->prev = c;
        cl->inflight = c;
    }
    pthread_mutex_unlock(&cl->mu);
    if (closing) {
        free_call_buffers(c);
        grpc_call_unref(call);
        c->call = NULL;
        c->done = 1;
        c->code = ENGRAM_CANCELLED;
        return ec_error(err, ENGRAM_CANCELLED, "the client is closing");
    }

    grpc_op ops[6];
    fill_unary_ops(c, ops);
    if (!c->data_plane && method != cl->m_lookup) {
        ec_admin_metadata(cl, c->send_md, &ops[0].data.send_initial_metadata.count);
        ops[0].data.send_initial_metadata.metadata = c->send_md;
    }
    grpc_call_error e = grpc_call_start_batch(call, ops, 6, c, NULL);
    if (e != GRPC_CALL_OK) {
        pthread_mutex_lock(&cl->mu);
        unlink_call(cl, c);
        pthread_mutex_unlock(&cl->mu);
        free_call_buffers(c);
        grpc_call_unref(call);
        c->call = NULL;
        c->done = 1;
        c->code = ENGRAM_INTERNAL;
        return ec_error(err, ENGRAM_INTERNAL,
                        "grpc_call_start_batch failed: error %d", (int)e);
    }
    return ec_ok(err);
}

/* Turns the finished batch into code/message; runs the decode hook. */
static void settle(ec_call *c, int success)
{
    if (!success) {
        /* A unary batch with RECV_STATUS normally succeeds even when the
         * RPC failed; failure here means gRPC itself gave up on the call. */
        c->code = ENGRAM_UNKNOWN;
        c->transport_failed = 1;
        snprintf(c->message, sizeof c->message,
                 "grpc reported the call batch as failed");
        return;
    }
    c->code = ec_status_to_error(c->status, c->details, c->message,
                                 sizeof c->message);
    if (c->code == ENGRAM_OK && c->decode)
        c->code = c->decode(c, c->recv_bb);
}

static void ec_call_complete(ec_call *c, int success)
{
    settle(c, success);
    free_call_buffers(c);

    engram_client *cl = c->client;
    pthread_mutex_lock(&cl->mu);
    unlink_call(cl, c);
    pthread_mutex_unlock(&cl->mu);

    pthread_mutex_lock(&c->mu);
    grpc_call *call = c->call;
    c->call = NULL;
    pthread_mutex_unlock(&c->mu);
    grpc_call_unref(call);

    if (c->on_done) {
        c->done = 1;
        c->on_done(c);   /* owns c now */
        return;
    }

    /* Last touch of c: after the unlock its owner may free it. */
    pthread_mutex_lock(&c->mu);
    c->done = 1;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

void ec_call_cancel(ec_call *c, const char *why)
{
    pthread_mutex_lock(&c->mu);
    if (c->call)
        grpc_call_cancel_with_status(c->call, GRPC_STATUS_CANCELLED, why, NULL);
    pthread_mutex_unlock(&c->mu);
}

struct timespec ec_mono_deadline(int64_t timeout_ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += timeout_ms / 1000;
    ts.tv_nsec += (timeout_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}


int ec_call_wait(ec_call *c, int64_t timeout_ms, engram_error *err)
{
    if (timeout_ms > EC_WAIT_FOREVER_MS)
        timeout_ms = -1;
    struct timespec until = ec_mono_deadline(timeout_ms < 0 ? 0 : timeout_ms);
    pthread_mutex_lock(&c->mu);
    while (!c->done) {
        if (timeout_ms < 0) {
            pthread_cond_wait(&c->cv, &c->mu);
        } else if (pthread_cond_timedwait(&c->cv, &c->mu, &until) ==
                   ETIMEDOUT) {
            break;
        }
    }
    int done = c->done;
    pthread_mutex_unlock(&c->mu);
    if (!done)
        return ec_error(err, ENGRAM_TIMEOUT,
                        "not finished after %lld ms", (long long)timeout_ms);
    /* code/message are final once done was seen under mu. */
    return ec_error(err, c->code, "%s", c->message);
}

int ec_call_poll(ec_call *c)
{
    pthread_mutex_lock(&c->mu);
    int done = c->done;
    pthread_mutex_unlock(&c->mu);
    return done;
}

void ec_call_release(ec_call *c)
{
    pthread_mutex_lock(&c->mu);
    if (c->call)
        grpc_call_cancel_with_status(c->call, GRPC_STATUS_CANCELLED,
                                     "cancelled: freed while in flight", NULL);
    while (!c->done)
        pthread_cond_wait(&c->cv, &c->mu);
    pthread_mutex_unlock(&c->mu);
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->mu);
}
