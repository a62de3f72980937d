/* health.c: grpc.health.v1.Health, Check and Watch (see health.h).
 *
 * A service's status is computed from two flags, `draining` and
 * `shutting_down`, so there is no per-service table to keep in step.
 *
 * Watch keeps a list of open watchers. A change (Drain on the admin worker,
 * shutdown on the main thread) must reach watchers whose calls live on other
 * threads' queues, and gRPC core allows one outstanding batch per call, so
 * each watcher has a `sending` flag: a change that finds it sending only
 * records the newest status in `pending`, and the send's completion sends
 * that one next (intermediate statuses are skipped; the latest wins, as
 * gRPC's own health service does). One mutex guards the list and every
 * watcher's fields: watchers are few (probes, balancers) and changes rare,
 * so a lock per watcher would buy nothing. Batches are always started with
 * the lock released, because a batch that fails to start frees the call
 * inline, and freeing a watcher takes the lock.
 *
 * gRPC core reports a client that cancels an idle Watch only through
 * RECV_CLOSE_ON_SERVER, so each Watch posts it when it starts
 * (call_watch_close) and on_closed ends a cancelled watcher at once:
 * otherwise it would keep its slot until the next status change, and 1,024
 * cancelled Watches would refuse every new one until a Drain. A watcher
 * whose send is in flight is left to that send, which fails and ends it.
 *
 * Bounds: HEALTH_MAX_WATCHERS in all, HEALTH_MAX_WATCHERS_PER_PEER from one
 * connection (gRPC's peer string, "ipv4:10.0.0.5:41234", names it), so one
 * client cannot take every slot while it keeps its Watches open; a prober
 * or balancer needs one per service. */
#include "health.h"

#include <grpc/support/alloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grpc/health/v1/health.pb-c.h"
#include "grpc_util.h"
#include "log.h"
#include "status.h"

#define HEALTH_MAX_WATCHERS 1024
#define HEALTH_MAX_WATCHERS_PER_PEER 64
#define ST_SERVING GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
#define ST_NOT_SERVING GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING
#define ST_UNKNOWN_SERVICE GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN
#define ST_NONE (-1)

typedef struct watcher {
    server_call *c;
    char *service;
    char *peer;                  /* gpr_malloc'd by grpc_call_get_peer */
    int last_sent;               /* ST_NONE before the first send completes */
    int in_send;                 /* the status of the send in flight */
    int pending;                 /* newest status not sent yet, or ST_NONE */
    int sending;                 /* a send is in flight (owned by its starter) */
    int finishing;               /* shutdown: end the call after the next send */
    int linked;
    struct watcher *prev, *next;
    struct watcher *work;        /* the starter's private to-do list */
} watcher;

static struct {
    pthread_mutex_t mu;
    watcher *head;
    int n;
    int draining;
    int shutting_down;
} H = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* ---- status ------------------------------------------------------------- */

static int known_service(const char *s)
{
    return !strcmp(s, "") || !strcmp(s, "engram.v1.Lookup") || !strcmp(s, "engram.v1.Admin");
}

/* Under H.mu. Draining stops the data plane only: Admin stays SERVING so
 * operators can still reach a drained server (to undrain it, for one). */
static int status_of(const char *service)
{
    if (!known_service(service))
        return ST_UNKNOWN_SERVICE;
    if (H.shutting_down)
        return ST_NOT_SERVING;
    if (H.draining && strcmp(service, "engram.v1.Admin") != 0)
        return ST_NOT_SERVING;
    return ST_SERVING;
}

static grpc_byte_buffer *response(int status)
{
    Grpc__Health__V1__HealthCheckResponse r = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    r.status = (Grpc__Health__V1__HealthCheckResponse__ServingStatus)status;
    return pb_to_byte_buffer(&r.base);
}

/* The service named by a request; NULL (with msg) when it is malformed. */
static char *parse_service(grpc_byte_buffer *req, char *msg, size_t msglen)
{
    char why[160] = "no message";
    Grpc__Health__V1__HealthCheckRequest *rq = req ? (Grpc__Health__V1__HealthCheckRequest *)
        pb_unpack(&grpc__health__v1__health_check_request__descriptor, req, why, sizeof why) : NULL;
    if (!rq) {
        snprintf(msg, msglen, "malformed HealthCheckRequest: %s", why);
        return NULL;
    }
    char *s = strdup(rq->service ? rq->service : "");
    protobuf_c_message_free_unpacked(&rq->base, NULL);
    return s;
}

int health_check(server_call *c, grpc_byte_buffer *req, grpc_byte_buffer **reply,
                 char *msg, size_t msglen)
{
    char *service = parse_service(req, msg, msglen);
    if (!service)
        return ES_INVALID_ARGUMENT;
    int code = ES_OK;
    if (!known_service(service)) {
        /* gRPC's convention: Check of an unknown service is NOT_FOUND. */
        snprintf(msg, msglen, "unknown service \"%.200s\" (known: \"\", engram.v1.Lookup, "
                 "engram.v1.Admin)", service);
        code = ES_NOT_FOUND;
    } else {
        pthread_mutex_lock(&H.mu);
        int st = status_of(service);
        pthread_mutex_unlock(&H.mu);
        *reply = response(st);
    }
    free(service);
    return code;
}

/* ---- watchers ------------------------------------------------------------- */

/* Under H.mu. */
static void unlink_watcher(watcher *w)
{
    if (!w->linked)
        return;
    if (w->prev)
        w->prev->next = w->next;
    else
        H.head = w->next;
    if (w->next)
        w->next->prev = w->prev;
    w->linked = 0;
    H.n--;
}

static void end_watch(watcher *w, int code, const char *msg);

/* The call's state_free: runs when the server core frees the call. */
static void watcher_free(void *p)
{
    watcher *w = p;
    pthread_mutex_lock(&H.mu);
    unlink_watcher(w);
    pthread_mutex_unlock(&H.mu);
    free(w->service);
    gpr_free(w->peer);
    free(w);
}

/* The client cancelled or went away (ok 0 or c->cancelled), or the call
 * ended (then w is unlinked already and there is nothing to do). */
static void on_closed(server_call *c, int ok)
{
    watcher *w = c->state;
    pthread_mutex_lock(&H.mu);
    int end = (!ok || c->cancelled) && w->linked && !w->sending;
    if (end)
        unlink_watcher(w);
    pthread_mutex_unlock(&H.mu);
    if (end)
        end_watch(w, ES_CANCELLED, "the health watcher went away");
}

static void on_sent(server_call *c, int ok);

/* Starts the send of w->in_send; the caller set w->sending under H.mu. */
static void start_send(watcher *w)
{
    call_send(w->c, response(w->in_send), on_sent);
}

/* Ends the call; the caller unlinked w and no send is in flight. */
static void end_watch(watcher *w, int code, const char *msg)
{
    call_finish(w->c, code, msg, NULL);
}

static void on_sent(server_call *c, int ok)
{
    watcher *w = c->state;
    pthread_mutex_lock(&H.mu);
    w->sending = 0;
    if (!ok) {                   /* the client went away */
        unlink_watcher(w);
        pthread_mutex_unlock(&H.mu);
        end_watch(w, ES_CANCELLED, "the health watcher went away");
        return;
    }
    w->last_sent = w->in_send;
    int next = w->pending;
    w->pending = ST_NONE;
    if (next != ST_NONE && next != w->last_sent) {
        w->sending = 1;
        w->in_send = next;
        pthread_mutex_unlock(&H.mu);
        start_send(w);
    } else if (w->finishing) {
        unlink_watcher(w);
        pthread_mutex_unlock(&H.mu);
        end_watch(w, ES_OK, NULL);
    } else {
        pthread_mutex_unlock(&H.mu);
    }
}

/* Under H.mu: brings w up to date, or records what to do on the caller's
 * list (sends and ends are started after the lock is released). */
static void refresh(watcher *w, watcher **work)
{
    int st = status_of(w->service);
    if (w->sending) {
        w->pending = st;         /* the send's completion takes it from here */
        return;
    }
    if (st != w->last_sent) {
        w->sending = 1;
        w->in_send = st;
    } else if (w->finishing) {
        unlink_watcher(w);       /* nothing left to tell: end it */
    } else {
        return;
    }
    w->work = *work;
    *work = w;
}

/* Runs what refresh queued, with H.mu released. */
static void run_work(watcher *work)
{
    while (work) {
        watcher *w = work;
        work = w->work;
        if (w->sending)
            start_send(w);
        else
            end_watch(w, ES_OK, NULL);
    }
}

static void notify_all(void)
{
    watcher *work = NULL;
    for (watcher *w = H.head; w; w = w->next)
        refresh(w, &work);
    pthread_mutex_unlock(&H.mu);
    run_work(work);
}

void health_watch(server_call *c)
{
    char msg[256];
    char *service = parse_service(c->payload, msg, sizeof msg);
    if (!service) {
        call_finish(c, ES_INVALID_ARGUMENT, msg, NULL);
        return;
    }
    watcher *w = calloc(1, sizeof *w);
    w->c = c;
    w->service = service;
    w->last_sent = w->pending = ST_NONE;
    c->state = w;
    c->state_free = watcher_free;
    w->peer = grpc_call_get_peer(c->call);
    pthread_mutex_lock(&H.mu);
    int from_peer = 0;
    for (watcher *o = H.head; o && H.n < HEALTH_MAX_WATCHERS; o = o->next)
        from_peer += o->peer && w->peer && !strcmp(o->peer, w->peer);
    if (H.n >= HEALTH_MAX_WATCHERS || from_peer >= HEALTH_MAX_WATCHERS_PER_PEER) {
        pthread_mutex_unlock(&H.mu);
        if (from_peer >= HEALTH_MAX_WATCHERS_PER_PEER)
            snprintf(msg, sizeof msg, "too many health watchers from this connection "
                     "(the limit is %d per connection)", HEALTH_MAX_WATCHERS_PER_PEER);
        else
            snprintf(msg, sizeof msg, "too many health watchers (the limit is %d)",
                     HEALTH_MAX_WATCHERS);
        call_finish(c, ES_RESOURCE_EXHAUSTED, msg, NULL);
        return;
    }
    w->next = H.head;
    if (H.head)
        H.head->prev = w;
    H.head = w;
    w->linked = 1;
    H.n++;
    /* After shutdown began: tell it NOT_SERVING, then end. */
    w->finishing = H.shutting_down;
    w->sending = 1;              /* the first message: the status now */
    w->in_send = status_of(service);
    pthread_mutex_unlock(&H.mu);
    /* Runs on this call's queue, so not before this handler returns. If
     * gRPC refuses it, the watcher is found out by its next send instead. */
    if (call_watch_close(c, on_closed) != 0)
        log_warn("health_watch_close_failed", "peer=%s", w->peer ? w->peer : "?");
    start_send(w);
}

int health_watchers(void)
{
    pthread_mutex_lock(&H.mu);
    int n = H.n;
    pthread_mutex_unlock(&H.mu);
    return n;
}

/* ---- changes ------------------------------------------------------------- */

void health_setup(void)
{
    pthread_mutex_lock(&H.mu);
    H.draining = 0;
    H.shutting_down = 0;
    pthread_mutex_unlock(&H.mu);
}

void health_set_draining(int draining)
{
    pthread_mutex_lock(&H.mu);
    H.draining = draining != 0;
    int watchers = H.n;
    notify_all();                /* releases H.mu */
    log_info("health_changed", "draining=%d watchers=%d", draining != 0, watchers);
}

int health_serving(void)
{
    pthread_mutex_lock(&H.mu);
    int serving = status_of("") == ST_SERVING;
    pthread_mutex_unlock(&H.mu);
    return serving;
}

void health_shutdown(void)
{
    pthread_mutex_lock(&H.mu);
    H.shutting_down = 1;
    for (watcher *w = H.head; w; w = w->next)
        w->finishing = 1;
    notify_all();                /* releases H.mu */
}
