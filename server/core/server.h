/* server.h: the gRPC core machinery of engram-server.
 *
 * Threads and queues: the data plane (Lookup) runs on N worker threads, each
 * draining its own completion queue; the admin plane (tables, imports) runs
 * on one more thread with its own queue, so a long import never holds up a
 * lookup that gRPC matched to a busy queue. Every method is registered, and
 * requests are pre-posted on each queue so an arriving call is matched at
 * once; each call re-arms its slot as soon as it arrives.
 *
 * A call is a small state machine: the completion-queue tag is the
 * server_call itself, and its `step` says what to do with the next event. */
#ifndef ENGRAM_SERVER_SERVER_H
#define ENGRAM_SERVER_SERVER_H

#include <grpc/grpc.h>
#include <stddef.h>
#include <stdint.h>

#include "metric.h"

typedef struct server_call server_call;
typedef void (*call_step)(server_call *c, int ok);

/* A unary handler: parses `req` (never NULL), answers with a status code,
 * and on ES_OK sets *reply. On error it writes a message naming the bad
 * value into msg. */
typedef int (*unary_handler)(server_call *c, grpc_byte_buffer *req,
                             grpc_byte_buffer **reply, char *msg, size_t msglen);
/* A streaming handler takes over the call once it has arrived; it drives it
 * with call_recv and ends it with call_finish. */
typedef void (*stream_handler)(server_call *c);

/* PLANE_ANY methods (grpc.health.v1) are served on every listener. */
typedef enum { PLANE_DATA, PLANE_ADMIN, PLANE_ANY } plane;

typedef struct method_def {
    const char *path;            /* "/engram.v1.Lookup/Lookup" */
    plane plane;
    unary_handler unary;         /* exactly one of unary/stream */
    stream_handler stream;
    int preposted;               /* requests kept armed per queue */
    int server_streaming;        /* replies with call_send, ends with call_finish */
} method_def;

struct server_call {
    call_step step;              /* must stay first: the tag is the call */
    const struct method_slot *slot;
    grpc_call *call;
    gpr_timespec deadline;
    grpc_metadata_array md;
    grpc_byte_buffer *payload;   /* unary request / last streamed message */
    grpc_byte_buffer *reply;
    grpc_slice details;
    int cancelled;               /* RECV_CLOSE_ON_SERVER's answer */
    /* call_watch_close: RECV_CLOSE_ON_SERVER posted early, with this tag
     * (its step first, like the call's), and the holds that keep the call
     * alive until both it and call_finish's batch have completed. */
    struct close_tag {
        call_step step;
        server_call *c;
        call_step on_close;
    } close_tag;
    int close_posted;
    int holds;
    int sent_initial_md;
    int admin_listener;          /* arrived on the admin-only listener */
    uint64_t start_ns;
    void *state;                 /* per-method state of a streaming call */
    void (*state_free)(void *);  /* called when the call ends */
    /* Called when the call is freed, after its last byte left or its
     * stream died: reply_budget.c's release of what it charged. */
    void (*release)(server_call *c);
    void *charge;
    uint64_t charged_bytes;
};

typedef struct server_options {
    const char *listen;          /* host:port; port 0 picks a free one */
    /* When set, the admin plane is served only here (for example on
     * loopback) and the main listener serves only the data plane. */
    const char *admin_listen;
    int threads;                 /* data-plane workers */
    int max_message_bytes;
    int max_streams_per_conn;    /* concurrent calls per connection; 0: gRPC's */
    /* HTTP/2 keepalive: ping a connection every keepalive_ms and close it
     * when the ping is not answered within keepalive_timeout_ms (a peer
     * that stopped reading cannot answer); 0: gRPC's default (2 h). */
    int keepalive_ms;
    int keepalive_timeout_ms;    /* 0: 20000 */
    int conn_idle_ms;            /* close connections idle (no call) this long; 0: never */
    /* Transport credentials of each listener (taken); NULL: plaintext. */
    grpc_server_credentials *creds;
    grpc_server_credentials *admin_creds;
} server_options;

/* Called for every call before its handler runs (admission: drain, auth,
 * limits): ES_OK lets it run, anything else is answered with msg. And when
 * a call ends, with its status and duration. Either may be NULL. */
typedef struct server_hooks {
    int (*admit)(server_call *c, const method_def *m, char *msg, size_t msglen);
    void (*done)(server_call *c, const method_def *m, int code, uint64_t duration_ns);
} server_hooks;

/* Calls in flight: security.c's --max-calls and teardown's wait read it. */
#define SERVER_METRIC(ACTION)                                                  \
    ACTION(calls_in_flight, METRIC_GAUGE, "engram_calls_in_flight", "in_flight", \
           "gRPC calls being served now.")
typedef struct server_metrics {
    SERVER_METRIC(METRIC_DECLARE)
} server_metrics;

/* Creates and starts the server; returns the bound port, or 0 on failure
 * (with a log line). metrics (initialized with SERVER_METRIC(METRIC_INIT))
 * is registered until server_teardown. */
int server_setup(const server_options *opts, const method_def *methods,
                 size_t nmethods, const server_hooks *hooks, server_metrics *metrics);
/* The admin listener's bound port (0 when there is none). */
int server_admin_port(void);
/* Graceful stop, in the order gRPC core requires: stop re-arming, shut down
 * and wait (cancelling calls still running after grace_ms), destroy the
 * server, shut down and drain every queue, join the threads. */
void server_teardown(int64_t grace_ms);

/* Posts one RECV_MESSAGE; `next` runs when it completes with the message
 * (or NULL at the end of the stream) in c->payload. */
void call_recv(server_call *c, call_step next);
/* Sends the final status (and `reply` when code is ES_OK) in one batch and
 * frees the call when done (and, after call_watch_close, once on_close has
 * run too). Takes ownership of reply. Call it exactly once per call. */
void call_finish(server_call *c, int code, const char *msg, grpc_byte_buffer *reply);
/* Sends one message of a server-streaming reply (initial metadata with the
 * first); `next` runs when it is sent (ok = 0: the client went away).
 * Takes ownership of msg. */
void call_send(server_call *c, grpc_byte_buffer *msg, call_step next);
/* Posts RECV_CLOSE_ON_SERVER now rather than with the final status, so a
 * streaming handler hears at once of a client that cancels or goes away
 * while it sends nothing: `on_close(c, ok)` runs on the call's queue with
 * c->cancelled set (1: cancelled, or the connection broke), whether that
 * happens before or after the handler's call_finish. The call stays
 * allocated until on_close has run; the handler must still end it with
 * call_finish exactly once. Call at most once, before call_finish. Returns
 * 0, or -1 when gRPC refused the op (on_close will not run). */
int call_watch_close(server_call *c, call_step on_close);
/* The method a call is for. */
const method_def *call_method(const server_call *c);
/* Milliseconds left before the call's deadline. */
int64_t call_ms_left(const server_call *c);

#endif
