/* server.c: completion queues, threads, call dispatch and shutdown on the
 * gRPC core C API. See server.h for the threading model.
 *
 * Re-arming and shutdown race: a request posted to a queue that has been
 * shut down crashes gRPC, so every post happens under `arm_lock` after
 * checking `stopping`, and teardown sets `stopping` under the same lock
 * before it shuts anything down. */
#include "server.h"

#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "grpc_util.h"
#include "log.h"
#include "status.h"

struct method_slot {
    const method_def *def;
    void *handle;                /* from grpc_server_register_method */
};

typedef struct worker {
    grpc_completion_queue *cq;
    pthread_t thread;
    plane plane;
} worker;

/* The shutdown notification is a tag like any call's. */
typedef struct shutdown_tag {
    call_step step;
} shutdown_tag;

static struct {
    grpc_server *server;
    worker *workers;             /* data workers, then the admin worker */
    int nworkers;
    struct method_slot *slots;
    size_t nslots;
    server_metrics *m;
    server_metrics m_none;
    pthread_mutex_t arm_lock;
    int stopping;
    pthread_mutex_t done_lock;
    pthread_cond_t done_cond;
    int shutdown_done;
    shutdown_tag stag;
} S = {.arm_lock = PTHREAD_MUTEX_INITIALIZER,
       .done_lock = PTHREAD_MUTEX_INITIALIZER,
       .done_cond = PTHREAD_COND_INITIALIZER};

static void on_new_call(server_call *c, int ok);

/* ---- call life cycle ---------------------------------------------------- */

static void call_free(server_call *c)
{
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
        __atomic_sub_fetch(&S.m->calls_in_flight, 1, __ATOMIC_RELAXED);
        __atomic_add_fetch(&S.m->calls_finished, 1, __ATOMIC_RELAXED);
    }
    free(c);
}

static void arm(worker *w, const struct method_slot *slot)
{
    server_call *c = calloc(1, sizeof *c);
    c->step = on_new_call;
    c->slot = slot;
    c->details = grpc_empty_slice();
    grpc_metadata_array_init(&c->md);
    pthread_mutex_lock(&S.arm_lock);
    grpc_call_error e = GRPC_CALL_ERROR;
    if (!S.stopping)
        e = grpc_server_request_registered_call(
            S.server, slot->handle, &c->call, &c->deadline, &c->md,
            slot->def->unary ? &c->payload : NULL, w->cq, w->cq, c);
    pthread_mutex_unlock(&S.arm_lock);
    if (e != GRPC_CALL_OK) {
        c->call = NULL;
        call_free(c);
    }
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
    __atomic_add_fetch(&S.m->calls_in_flight, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&S.m->calls_started, 1, __ATOMIC_RELAXED);
    c->step = NULL;
    if (c->slot->def->unary)
        run_unary(c);
    else
        c->slot->def->stream(c);
}

static void on_finished(server_call *c, int ok)
{
    call_free(c);
}

void call_finish(server_call *c, int code, const char *msg, grpc_byte_buffer *reply)
{
    grpc_op ops[4];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
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
    ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    ops[n++].data.recv_close_on_server.cancelled = &c->cancelled;
    c->step = on_finished;
    if (grpc_call_start_batch(c->call, ops, n, c, NULL) != GRPC_CALL_OK) {
        log_error("start_batch_failed", "method=%s", c->slot->def->path);
        call_free(c);
    }
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

int64_t call_ms_left(const server_call *c)
{
    return ms_until(c->deadline);
}

/* ---- threads ------------------------------------------------------------ */

static void *worker_main(void *arg)
{
    worker *w = arg;
    for (const struct method_slot *s = S.slots; s < S.slots + S.nslots; s++)
        if (s->def->plane == w->plane)
            for (int i = 0; i < s->def->preposted; i++)
                arm(w, s);
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
        step(c, ev.success);
    }
    return NULL;
}

static void on_shutdown(server_call *c, int ok)
{
    pthread_mutex_lock(&S.done_lock);
    S.shutdown_done = 1;
    pthread_cond_broadcast(&S.done_cond);
    pthread_mutex_unlock(&S.done_lock);
}

static int bind_port(const char *listen)
{
    grpc_server_credentials *creds = grpc_insecure_server_credentials_create();
    int port = grpc_server_add_http2_port(S.server, listen, creds);
    grpc_server_credentials_release(creds);
    return port;
}

int server_setup(const server_options *o, const method_def *methods,
                 size_t nmethods, server_metrics *metrics)
{
    S.m = metrics ? metrics : &S.m_none;
    grpc_arg args[2];
    message_size_args(args, o->max_message_bytes);
    grpc_channel_args cargs = {2, args};
    S.server = grpc_server_create(&cargs, NULL);
    S.nworkers = o->threads + 1;
    S.workers = calloc((size_t)S.nworkers, sizeof *S.workers);
    for (int i = 0; i < S.nworkers; i++) {
        S.workers[i].plane = i < o->threads ? PLANE_DATA : PLANE_ADMIN;
        S.workers[i].cq = grpc_completion_queue_create_for_next(NULL);
        grpc_server_register_completion_queue(S.server, S.workers[i].cq, NULL);
    }
    S.slots = calloc(nmethods, sizeof *S.slots);
    S.nslots = nmethods;
    for (size_t i = 0; i < nmethods; i++) {
        S.slots[i].def = &methods[i];
        S.slots[i].handle = grpc_server_register_method(
            S.server, methods[i].path, NULL,
            methods[i].unary ? GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER
                             : GRPC_SRM_PAYLOAD_NONE, 0);
    }
    int port = bind_port(o->listen);
    if (port == 0) {
        log_error("listen_failed", "listen=%s", o->listen);
        return 0;
    }
    grpc_server_start(S.server);
    for (int i = 0; i < S.nworkers; i++)
        pthread_create(&S.workers[i].thread, NULL, worker_main, &S.workers[i]);
    return port;
}

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
    while (!S.shutdown_done)
        if (pthread_cond_timedwait(&S.done_cond, &S.done_lock, &ts) != 0)
            break;
    int done = S.shutdown_done;
    pthread_mutex_unlock(&S.done_lock);
    return done;
}

void server_teardown(int64_t grace_ms)
{
    if (!S.server)
        return;
    pthread_mutex_lock(&S.arm_lock);
    S.stopping = 1;
    pthread_mutex_unlock(&S.arm_lock);
    S.stag.step = on_shutdown;
    grpc_server_shutdown_and_notify(S.server, S.workers[S.nworkers - 1].cq, &S.stag);
    if (!wait_shutdown(grace_ms)) {
        log_warn("shutdown_cancel_calls", "grace_ms=%lld", (long long)grace_ms);
        grpc_server_cancel_all_calls(S.server);
        wait_shutdown(INT32_MAX);
    }
    grpc_server_destroy(S.server);
    S.server = NULL;
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
