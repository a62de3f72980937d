/* drain.c: Drain and Undrain (see drain.h).
 *
 * The flag is one atomic int read by the admission check of every call.
 * Only data-plane methods are refused: that is what traffic to move off a
 * server means, and it keeps the admin plane (Undrain, Stats, Warm) usable
 * on a drained server.
 *
 * Drain waits by polling lookup_in_flight() every millisecond rather than
 * with a condition variable: a lookup would otherwise have to signal on
 * every return while nobody waits, and a millisecond is nothing next to an
 * operator's drain. The wait runs on the admin worker (Drain is a unary
 * admin call), so it is bounded by the request's timeout_ms, by
 * DRAIN_MAX_WAIT_MS, and by the call's own deadline; data-plane workers
 * keep serving the lookups it waits for.
 *
 * A lookup admitted an instant before the flag was set can still be about
 * to enter its handler when Drain looks; it is served normally, and the
 * shutdown grace period covers it, so `drained` is an operator's signal,
 * not a barrier. */
#include "drain.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "engram/v1/engram.pb-c.h"
#include "grpc_util.h"
#include "health.h"
#include "hooks.h"
#include "log.h"
#include "metric.h"
#include "stats.h"
#include "status.h"

/* Longest wait one Drain call does; a longer one can simply be repeated. */
#define DRAIN_MAX_WAIT_MS 600000u
/* Left of the call's deadline for the reply to get back. */
#define DRAIN_REPLY_MARGIN_MS 50

static int draining;

#define DRAIN_METRIC(ACTION)                                                    \
    ACTION(draining, METRIC_GAUGE, "engram_draining", "draining",                \
           "1 while the server is draining.")
typedef struct drain_metrics {
    DRAIN_METRIC(METRIC_DECLARE)
} drain_metrics;
static drain_metrics M = {DRAIN_METRIC(METRIC_INIT)};

/* The flag stays a plain int (admission reads it with one load); the
 * metric copies it when read. */
static void refresh(void *arg)
{
    (void)arg;
    METRIC_SET(&M, draining, __atomic_load_n(&draining, __ATOMIC_SEQ_CST));
}

void drain_setup(void)
{
    __atomic_store_n(&draining, 0, __ATOMIC_SEQ_CST);
    hooks_add_admit(drain_admit);
    metric_register((metric *)&M, METRIC_CARDINALITY(M), refresh, NULL);
}

void drain_teardown(void)
{
    metric_deregister(&M);
}

int drain_is_draining(void)
{
    return __atomic_load_n(&draining, __ATOMIC_SEQ_CST);
}

int drain_admit(server_call *c, const method_def *m, char *msg, size_t msglen)
{
    if (m->plane != PLANE_DATA || !drain_is_draining())
        return ES_OK;
    snprintf(msg, msglen, "server is draining; retry on another replica");
    return ES_UNAVAILABLE;
}

/* Lookups served so far, for the log lines: an operator sees the count
 * stop growing while drained. */
static unsigned long long lookups_so_far(void)
{
    return (unsigned long long)stats_lookups();
}

/* How long this call may wait: the request's timeout, capped. */
static uint64_t wait_budget_ms(server_call *c, uint32_t timeout_ms)
{
    uint64_t budget = timeout_ms < DRAIN_MAX_WAIT_MS ? timeout_ms : DRAIN_MAX_WAIT_MS;
    int64_t left = call_ms_left(c) - DRAIN_REPLY_MARGIN_MS;
    if (left < 0)
        left = 0;
    return (uint64_t)left < budget ? (uint64_t)left : budget;
}

/* Polls until no lookup is in flight or budget_ms passed; returns the
 * milliseconds waited. */
static uint64_t wait_idle(uint64_t budget_ms)
{
    uint64_t t0 = now_ns();
    const struct timespec ms = {0, 1000000};
    while (lookup_in_flight() > 0 && (now_ns() - t0) / 1000000 < budget_ms)
        nanosleep(&ms, NULL);
    return (now_ns() - t0) / 1000000;
}

static grpc_byte_buffer *drain_reply(int is_draining, int drained, uint64_t in_flight,
                                     uint64_t waited_ms)
{
    Engram__V1__DrainResponse r = ENGRAM__V1__DRAIN_RESPONSE__INIT;
    r.draining = is_draining != 0;
    r.drained = drained != 0;
    r.in_flight = in_flight;
    r.waited_ms = waited_ms;
    return pb_to_byte_buffer(&r.base);
}

int drain_handle(server_call *c, grpc_byte_buffer *req, grpc_byte_buffer **reply,
                 char *msg, size_t msglen)
{
    char why[160] = "no message";
    Engram__V1__DrainRequest *rq = (Engram__V1__DrainRequest *)pb_unpack(
        &engram__v1__drain_request__descriptor, req, why, sizeof why);
    if (!rq) {
        snprintf(msg, msglen, "malformed DrainRequest: %s", why);
        return ES_INVALID_ARGUMENT;
    }
    uint32_t timeout_ms = rq->timeout_ms;
    protobuf_c_message_free_unpacked(&rq->base, NULL);
    int was = __atomic_exchange_n(&draining, 1, __ATOMIC_SEQ_CST);
    health_set_draining(1);
    uint64_t waited = wait_idle(wait_budget_ms(c, timeout_ms));
    uint64_t in_flight = lookup_in_flight();
    log_info("drain", "timeout_ms=%u was_draining=%d drained=%d in_flight=%llu waited_ms=%llu "
             "lookups=%llu", timeout_ms, was, in_flight == 0, (unsigned long long)in_flight,
             (unsigned long long)waited, lookups_so_far());
    *reply = drain_reply(1, in_flight == 0, in_flight, waited);
    return ES_OK;
}

int undrain_handle(server_call *c, grpc_byte_buffer *req, grpc_byte_buffer **reply,
                   char *msg, size_t msglen)
{
    char why[160] = "no message";
    ProtobufCMessage *rq = pb_unpack(&engram__v1__undrain_request__descriptor, req, why, sizeof why);
    if (!rq) {
        snprintf(msg, msglen, "malformed UndrainRequest: %s", why);
        return ES_INVALID_ARGUMENT;
    }
    protobuf_c_message_free_unpacked(rq, NULL);
    int was = __atomic_exchange_n(&draining, 0, __ATOMIC_SEQ_CST);
    health_set_draining(0);
    uint64_t in_flight = lookup_in_flight();
    log_info("undrain", "was_draining=%d in_flight=%llu lookups=%llu", was,
             (unsigned long long)in_flight, lookups_so_far());
    *reply = drain_reply(0, 0, in_flight, 0);
    return ES_OK;
}
