/* server.c: listeners, completion queues, threads, call dispatch and
 * shutdown on the gRPC core C API. See server.h for the threading model.
 *
 * Listeners: one gRPC server object serves every plane on --listen; with an
 * admin listener (--admin-listen) a second server object serves the admin
 * plane there and the first serves only the data plane, so the admin plane
 * can be kept off the network that inference workers reach. PLANE_ANY
 * methods (health) are served on both.
 *
 * Re-arming and shutdown race: a request posted to a queue that has been
 * shut down crashes gRPC, so every post happens under `arm_lock` after
 * checking `stopping`, and teardown sets `stopping` under the same lock
 * before it shuts anything down.
 *
 * Freeing a call: a started call holds one reference for call_finish's
 * batch, and call_watch_close adds one for its early RECV_CLOSE_ON_SERVER;
 * the call is freed when the last of them completes, so the close op is
 * posted exactly once (early, or with the final status) and the call is
 * freed exactly once, on whichever thread finishes last.
 *
 * Unknown methods: gRPC core queues a call for a method nobody registered
 * until the application asks for generic calls, so without an answer it
 * would hang until its deadline (forever without one, holding a stream).
 * Each server object keeps one generic request armed and answers such
 * calls UNIMPLEMENTED at once: an admin call on the data-only listener, or
 * a Lookup on the admin listener, fails fast and says why. */
#include "server.h"

#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <pthread.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

#include "grpc_util.h"
#include "log.h"
#include "status.h"

#define MAX_SERVERS 2

struct method_slot {
    const method_def *def;
    int srv;                     /* index of the server object */
    void *handle;                /* from grpc_server_register_method */
};

typedef struct worker {
    grpc_completion_queue *cq;
    pthread_t thread;
    plane plane;                 /* PLANE_DATA or PLANE_ADMIN */
    int srv;
} worker;

/* The shutdown notification is a tag like any call's. */
typedef struct shutdown_tag {
    call_step step;
    int srv;
} shutdown_tag;

static struct {
    grpc_server *server[MAX_SERVERS];
    int nservers;
    int admin_port;
    worker *workers;             /* data workers, then the admin worker */
    int nworkers;
    struct method_slot *slots;
    size_t nslots;
    server_hooks hooks;
    server_metrics *m;
    server_metrics m_none;
    pthread_mutex_t arm_lock;
    int stopping;
    pthread_mutex_t done_lock;
    pthread_cond_t done_cond;
    int shutdown_done;
    shutdown_tag stag[MAX_SERVERS];
} S = {.arm_lock = PTHREAD_MUTEX_INITIALIZER,
       .done_lock = PTHREAD_MUTEX_INITIALIZER,
       .done_cond = PTHREAD_COND_INITIALIZER};

static void on_new_call(server_call *c, int ok);
static void on_generic_call(server_call *c, int ok);
static grpc_completion_queue *queue_of(int srv);

/* What an unknown method's call is accounted as (no hooks see it). */
static const method_def unknown_method = {"(unknown method)", PLANE_ANY};
static struct method_slot generic_slot[MAX_SERVERS];

/* A call to an unregistered method: its details (the path) come with it. */
typedef struct generic_call {
    server_call c;               /* first: the tag is the call */
    grpc_call_details d;
} generic_call;

/* ---- call life cycle ---------------------------------------------------- */

static void call_free(server_call *c)
{
    if (c->release)
        c->release(c);
    if (c->state_free && c->state)
        c->state_free(c->state);
    if (c->payload)
        grpc_byte_buffer_destroy(c->payload);
    if (c->reply)
        grpc_byte_buffer_destroy(c->reply);
    grpc_slice_unref(c->details);
    grpc_metadata_array_destroy(&c->md);
    if (c->call) {
        grpc_call_unref(c->call);
        METRIC_SUB(S.m, calls_in_flight, 1);
    }
    free(c);
}

/* Drops one hold on a started call; the last one frees it. */
static void call_release(server_call *c)
{
    if (__atomic_sub_fetch(&c->holds, 1, __ATOMIC_ACQ_REL) == 0)
        call_free(c);
}

static int reads_payload(const method_def *d)
{
    return d->unary || d->server_streaming;
}

/* A slot that cannot be armed for want of memory stays unarmed: the other
 * queues and slots keep serving, and the next arrival re-arms it. */
static void arm(worker *w, const struct method_slot *slot)
{
    server_call *c = calloc(1, sizeof *c);
    if (!c) {
        log_error("arm_failed", "method=%s error=\"out of memory\"", slot->def->path);
        return;
    }
    c->step = on_new_call;
    c->slot = slot;
    c->details = grpc_empty_slice();
    c->admin_listener = S.nservers > 1 && slot->srv == 1;
    grpc_metadata_array_init(&c->md);
    pthread_mutex_lock(&S.arm_lock);
    grpc_call_error e = GRPC_CALL_ERROR;
    if (!S.stopping)
        e = grpc_server_request_registered_call(
            S.server[slot->srv], slot->handle, &c->call, &c->deadline, &c->md,
            reads_payload(slot->def) ? &c->payload : NULL, w->cq, w->cq, c);
    pthread_mutex_unlock(&S.arm_lock);
    if (e != GRPC_CALL_OK) {
        c->call = NULL;
        call_free(c);
    }
}

static void details_free(void *p)
{
    grpc_call_details_destroy(p);
}

static void arm_generic(worker *w)
{
    generic_call *g = calloc(1, sizeof *g);
    if (!g) {
        log_error("arm_failed", "method=(generic) error=\"out of memory\"");
        return;
    }
    server_call *c = &g->c;
    c->step = on_generic_call;
    c->slot = &generic_slot[w->srv];
    c->details = grpc_empty_slice();
    c->admin_listener = S.nservers > 1 && w->srv == 1;
    c->state = &g->d;
    c->state_free = details_free;
    grpc_metadata_array_init(&c->md);
    grpc_call_details_init(&g->d);
    pthread_mutex_lock(&S.arm_lock);
    grpc_call_error e = GRPC_CALL_ERROR;
    if (!S.stopping)
        e = grpc_server_request_call(S.server[w->srv], &c->call, &g->d, &c->md, w->cq, w->cq, c);
    pthread_mutex_unlock(&S.arm_lock);
    if (e != GRPC_CALL_OK) {
        c->call = NULL;
        call_free(c);
    }
}

static void on_generic_call(server_call *c, int ok)
{
    if (!ok) {
        c->call = NULL;
        call_free(c);
        return;
    }
    METRIC_INCR(S.m, calls_in_flight);
    c->start_ns = now_ns();
    c->holds = 1;                /* call_finish's */
    const grpc_call_details *d = c->state;
    char msg[512];
    snprintf(msg, sizeof msg, "method %.*s is not served %s",
             (int)(GRPC_SLICE_LENGTH(d->method) > 300 ? 300 : GRPC_SLICE_LENGTH(d->method)),
             (const char *)GRPC_SLICE_START_PTR(d->method),
             S.nservers == 1 ? "by this server"
             : c->admin_listener ? "on the admin listener (it serves the admin plane only)"
                                 : "on this listener (the admin plane has its own: --admin-listen)");
    call_finish(c, ES_UNIMPLEMENTED, msg, NULL);
}

static void run_unary(server_call *c)
{
    char msg[512] = "";
    grpc_byte_buffer *reply = NULL;
    int code;
    if (call_ms_left(c) <= 0) {
        code = ES_DEADLINE_EXCEEDED;
        snprintf(msg, sizeof msg, "deadline passed before the call was served");
    } else if (!c->payload) {
        code = ES_INVALID_ARGUMENT;
        snprintf(msg, sizeof msg, "request message missing");
    } else {
        code = c->slot->def->unary(c, c->payload, &reply, msg, sizeof msg);
    }
    call_finish(c, code, msg, reply);
}

static void on_new_call(server_call *c, int ok)
{
    if (!ok) {                   /* server shutting down: request withdrawn */
        c->call = NULL;
        call_free(c);
        return;
    }
    METRIC_INCR(S.m, calls_in_flight);
    c->start_ns = now_ns();
    c->holds = 1;                /* call_finish's */
    c->step = NULL;
    char msg[512] = "";
    int code = S.hooks.admit ? S.hooks.admit(c, c->slot->def, msg, sizeof msg) : ES_OK;
    if (code != ES_OK)
        call_finish(c, code, msg, NULL);
    else if (c->slot->def->unary)
        run_unary(c);
    else
        c->slot->def->stream(c);
}

static void on_finished(server_call *c, int ok)
{
    call_release(c);
}

/* The early RECV_CLOSE_ON_SERVER completed: the tag is c->close_tag. */
static void on_close_done(server_call *tag, int ok)
{
    struct close_tag *t = (struct close_tag *)tag;
    server_call *c = t->c;
    if (t->on_close)
        t->on_close(c, ok);
    call_release(c);
}

int call_watch_close(server_call *c, call_step on_close)
{
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    op.data.recv_close_on_server.cancelled = &c->cancelled;
    c->close_tag.step = on_close_done;
    c->close_tag.c = c;
    c->close_tag.on_close = on_close;
    c->close_posted = 1;
    __atomic_add_fetch(&c->holds, 1, __ATOMIC_ACQ_REL);
    if (grpc_call_start_batch(c->call, &op, 1, &c->close_tag, NULL) != GRPC_CALL_OK) {
        c->close_posted = 0;
        __atomic_sub_fetch(&c->holds, 1, __ATOMIC_ACQ_REL);
        return -1;
    }
    return 0;
}

void call_finish(server_call *c, int code, const char *msg, grpc_byte_buffer *reply)
{
    grpc_op ops[4];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    if (!c->sent_initial_md)
        ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
    c->sent_initial_md = 1;
    if (code == 0 && reply) {
        c->reply = reply;
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n++].data.send_message.send_message = reply;
    } else if (reply) {
        grpc_byte_buffer_destroy(reply);
    }
    grpc_slice_unref(c->details);
    c->details = grpc_slice_from_copied_string(msg ? msg : "");
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = (grpc_status_code)code;
    ops[n++].data.send_status_from_server.status_details =
        (msg && *msg) ? &c->details : NULL;
    if (!c->close_posted) {      /* else call_watch_close posted it */
        ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
        ops[n++].data.recv_close_on_server.cancelled = &c->cancelled;
    }
    c->step = on_finished;
    if (S.hooks.done && c->slot->def != &unknown_method)
        S.hooks.done(c, c->slot->def, code, now_ns() - c->start_ns);
    if (grpc_call_start_batch(c->call, ops, n, c, NULL) != GRPC_CALL_OK) {
        log_error("start_batch_failed", "method=%s", c->slot->def->path);
        /* An early close op completes only once the call ends: end it. */
        if (c->close_posted)
            grpc_call_cancel(c->call, NULL);
        call_release(c);
    }
}

void call_send(server_call *c, grpc_byte_buffer *msg, call_step next)
{
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    if (!c->sent_initial_md)
        ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
    c->sent_initial_md = 1;
    if (c->reply)
        grpc_byte_buffer_destroy(c->reply);
    c->reply = msg;
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n++].data.send_message.send_message = msg;
    c->step = next;
    if (grpc_call_start_batch(c->call, ops, n, c, NULL) != GRPC_CALL_OK)
        call_finish(c, ES_INTERNAL, "cannot send the next message", NULL);
}

void call_recv(server_call *c, call_step next)
{
    grpc_op op;
    memset(&op, 0, sizeof op);
    if (c->payload) {
        grpc_byte_buffer_destroy(c->payload);
        c->payload = NULL;
    }
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &c->payload;
    c->step = next;
    if (grpc_call_start_batch(c->call, &op, 1, c, NULL) != GRPC_CALL_OK)
        call_finish(c, ES_INTERNAL, "cannot receive the next message", NULL);
}

const method_def *call_method(const server_call *c)
{
    return c->slot->def;
}

int64_t call_ms_left(const server_call *c)
{
    return ms_until(c->deadline);
}

/* ---- threads ------------------------------------------------------------ */

static void *worker_main(void *arg)
{
    worker *w = arg;
    for (const struct method_slot *s = S.slots; s < S.slots + S.nslots; s++)
        if (s->srv == w->srv && (s->def->plane == w->plane || s->def->plane == PLANE_ANY))
            for (int i = 0; i < s->def->preposted; i++)
                arm(w, s);
    int generic = queue_of(w->srv) == w->cq;   /* one queue per server object */
    if (generic)
        arm_generic(w);
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(
            w->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (ev.type != GRPC_OP_COMPLETE)
            continue;
        server_call *c = ev.tag;
        call_step step = c->step;
        /* A new call frees its slot: keep one armed in its place. */
        if (step == on_new_call && ev.success)
            arm(w, c->slot);
        else if (step == on_generic_call && ev.success)
            arm_generic(w);
        step(c, ev.success);
    }
    return NULL;
}

static void on_shutdown(server_call *c, int ok)
{
    pthread_mutex_lock(&S.done_lock);
    S.shutdown_done++;
    pthread_cond_broadcast(&S.done_cond);
    pthread_mutex_unlock(&S.done_lock);
}

/* ---- setup ---------------------------------------------------------------- */

static int bind_port(int srv, const char *listen, grpc_server_credentials *creds)
{
    if (!creds)
        creds = grpc_insecure_server_credentials_create();
    int port = grpc_server_add_http2_port(S.server[srv], listen, creds);
    grpc_server_credentials_release(creds);
    return port;
}

static void int_arg(grpc_arg *a, const char *key, int v)
{
    a->type = GRPC_ARG_INTEGER;
    a->key = (char *)key;
    a->value.integer = v;
}

/* The transport's own limits: streams per connection (SETTINGS), and
 * keepalive, so a connection whose peer stopped reading (and so cannot
 * answer a PING) is closed, freeing every reply queued on it. */
static grpc_server *create_server(const server_options *o)
{
    grpc_arg args[8];
    message_size_args(args, o->max_message_bytes);
    int n = 2;
    if (o->max_streams_per_conn > 0)
        int_arg(&args[n++], GRPC_ARG_MAX_CONCURRENT_STREAMS, o->max_streams_per_conn);
    if (o->keepalive_ms > 0) {
        int_arg(&args[n++], GRPC_ARG_KEEPALIVE_TIME_MS, o->keepalive_ms);
        int_arg(&args[n++], GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
                o->keepalive_timeout_ms > 0 ? o->keepalive_timeout_ms : 20000);
        /* Pings on a connection with calls in flight but nothing to send
         * (a stalled reply is exactly that) must not be held back. */
        int_arg(&args[n++], GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
    }
    if (o->conn_idle_ms > 0)
        int_arg(&args[n++], GRPC_ARG_MAX_CONNECTION_IDLE_MS, o->conn_idle_ms);
    grpc_channel_args cargs = {(size_t)n, args};
    return grpc_server_create(&cargs, NULL);
}

/* Which server object serves a plane. */
static int server_of(plane p)
{
    return p == PLANE_ADMIN && S.nservers > 1 ? 1 : 0;
}

static void make_workers(int threads)
{
    S.nworkers = threads + 1;
    S.workers = calloc((size_t)S.nworkers, sizeof *S.workers);
    for (int i = 0; i < S.nworkers; i++) {
        worker *w = &S.workers[i];
        w->plane = i < threads ? PLANE_DATA : PLANE_ADMIN;
        w->srv = server_of(w->plane);
        /* One listener: the admin queue does not poll. A third poller on
         * two data queues only hands the lookup path's I/O from thread to
         * thread (~0.8 more context switches a call); the data workers
         * poll for it. An admin-only listener needs its queue to poll. */
        static const grpc_completion_queue_attributes quiet = {
            GRPC_CQ_CURRENT_VERSION, GRPC_CQ_NEXT, GRPC_CQ_NON_POLLING, NULL};
        w->cq = w->plane == PLANE_ADMIN && S.nservers == 1
                    ? grpc_completion_queue_create(grpc_completion_queue_factory_lookup(&quiet),
                                                   &quiet, NULL)
                    : grpc_completion_queue_create_for_next(NULL);
        grpc_server_register_completion_queue(S.server[w->srv], w->cq, NULL);
    }
}

static void add_slot(const method_def *d, int srv)
{
    struct method_slot *s = &S.slots[S.nslots++];
    s->def = d;
    s->srv = srv;
    s->handle = grpc_server_register_method(
        S.server[srv], d->path, NULL,
        reads_payload(d) ? GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER : GRPC_SRM_PAYLOAD_NONE, 0);
}

static void register_methods(const method_def *methods, size_t n)
{
    S.slots = calloc(n * MAX_SERVERS, sizeof *S.slots);
    for (size_t i = 0; i < n; i++) {
        if (methods[i].plane == PLANE_ANY)
            for (int srv = 0; srv < S.nservers; srv++)
                add_slot(&methods[i], srv);
        else
            add_slot(&methods[i], server_of(methods[i].plane));
    }
}

int server_setup(const server_options *o, const method_def *methods, size_t nmethods,
                 const server_hooks *hooks, server_metrics *metrics)
{
    S.m = metrics ? metrics : &S.m_none;
    if (metrics) {
        /* Before the first call: nothing is in flight to lose. */
        *metrics = (server_metrics){SERVER_METRIC(METRIC_INIT)};
        metric_register((metric *)metrics, METRIC_CARDINALITY(*metrics), NULL, NULL);
    }
    if (hooks)
        S.hooks = *hooks;
    S.nservers = o->admin_listen ? 2 : 1;
    for (int i = 0; i < S.nservers; i++)
        generic_slot[i] = (struct method_slot){&unknown_method, i, NULL};
    for (int i = 0; i < S.nservers; i++)
        S.server[i] = create_server(o);
    make_workers(o->threads);
    register_methods(methods, nmethods);
    int port = bind_port(0, o->listen, o->creds);
    if (port == 0) {
        log_error("listen_failed", "listen=%s", o->listen);
        return 0;
    }
    if (o->admin_listen && !(S.admin_port = bind_port(1, o->admin_listen, o->admin_creds))) {
        log_error("listen_failed", "admin_listen=%s", o->admin_listen);
        return 0;
    }
    for (int i = 0; i < S.nservers; i++)
        grpc_server_start(S.server[i]);
    for (int i = 0; i < S.nworkers; i++)
        pthread_create(&S.workers[i].thread, NULL, worker_main, &S.workers[i]);
    return port;
}

int server_admin_port(void)
{
    return S.admin_port;
}

/* ---- teardown ------------------------------------------------------------- */

static int wait_shutdown(int64_t ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (ms % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&S.done_lock);
    while (S.shutdown_done < S.nservers)
        if (pthread_cond_timedwait(&S.done_cond, &S.done_lock, &ts) != 0)
            break;
    int done = S.shutdown_done == S.nservers;
    pthread_mutex_unlock(&S.done_lock);
    return done;
}

/* A worker queue registered with server `srv`, for its shutdown tag. */
static grpc_completion_queue *queue_of(int srv)
{
    for (int i = 0; i < S.nworkers; i++)
        if (S.workers[i].srv == srv)
            return S.workers[i].cq;
    return NULL;
}

void server_teardown(int64_t grace_ms)
{
    if (!S.server[0])
        return;
    metric_deregister(S.m);
    pthread_mutex_lock(&S.arm_lock);
    S.stopping = 1;
    pthread_mutex_unlock(&S.arm_lock);
    for (int i = 0; i < S.nservers; i++) {
        S.stag[i].step = on_shutdown;
        S.stag[i].srv = i;
        grpc_server_shutdown_and_notify(S.server[i], queue_of(i), &S.stag[i]);
    }
    if (!wait_shutdown(grace_ms)) {
        log_warn("shutdown_cancel_calls", "grace_ms=%lld", (long long)grace_ms);
        for (int i = 0; i < S.nservers; i++)
            grpc_server_cancel_all_calls(S.server[i]);
        wait_shutdown(INT32_MAX);
    }
    /* A call can outlive its server's shutdown by a few events still queued
     * (a cancelled send, then the status a step sends after it). A queue
     * shut down under such a step aborts the process in grpc_cq_begin_op,
     * so the workers drain every call first. A call that some other thread
     * still holds past the bound is left to the exit, queues and all. */
    for (int waited = 0; METRIC_GET(S.m, calls_in_flight) > 0; waited++) {
        if (waited == 1000) {
            log_error("shutdown_calls_stuck", "calls=%llu waited_ms=10000",
                      (unsigned long long)METRIC_GET(S.m, calls_in_flight));
            return;
        }
        if (waited == 0)             /* harmless for calls already ended */
            for (int i = 0; i < S.nservers; i++)
                grpc_server_cancel_all_calls(S.server[i]);
        usleep(10000);
    }
    for (int i = 0; i < S.nservers; i++) {
        grpc_server_destroy(S.server[i]);
        S.server[i] = NULL;
    }
    for (int i = 0; i < S.nworkers; i++)
        grpc_completion_queue_shutdown(S.workers[i].cq);
    for (int i = 0; i < S.nworkers; i++) {
        pthread_join(S.workers[i].thread, NULL);
        grpc_completion_queue_destroy(S.workers[i].cq);
    }
    free(S.workers);
    free(S.slots);
    S.workers = NULL;
    S.slots = NULL;
}
