/* client_internal.h: what the parts of libengram share and callers never
 * see: the client struct, the asynchronous unary call ("ec_call") that
 * lookups and admin calls are built on, and error helpers.
 *
 * Every unary call is one 6-op batch on the client's completion queue. The
 * client's one background thread drains that queue: on completion it turns
 * the gRPC status into an engram status, runs the call's decode hook (which
 * reads the reply, e.g. straight into a lookup's output buffer), releases
 * every gRPC resource of the call and only then signals `done`. After the
 * signal the thread never touches the call again, so the owner may free it
 * as soon as it sees done. */
#ifndef ENGRAM_CLIENT_INTERNAL_H
#define ENGRAM_CLIENT_INTERNAL_H

#include "engram/engram.h"

#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <pthread.h>

#include "engram/v1/engram.pb-c.h"
#include "manifest.h"

typedef struct ec_call ec_call;
typedef struct ec_cluster ec_cluster;
typedef struct ec_clookup ec_clookup;

/* How a client serves lookups, decided on the first one (cluster.c). */
#define EC_MODE_UNKNOWN 0
#define EC_MODE_SINGLE 1   /* the bootstrap channel, version 0: as always */
#define EC_MODE_CLUSTER 2  /* routed by shard over per-replica channels */

struct engram_client {
    grpc_channel *channel;
    grpc_completion_queue *cq;
    pthread_t thread;
    /* Registered methods: gRPC parses the path once, not per call. */
    void *m_lookup;
    void *m_list_tables;
    void *m_get_table;
    void *m_put_manifest;
    void *m_get_manifest;
    void *m_list_manifests;
    void *m_activate;
    void *m_drop_version;
    void *m_cluster_map;
    void *m_health_check;         /* operations (ops.c) */
    void *m_drain;
    void *m_undrain;
    void *m_warm;
    void *m_verify;
    void *m_stats;
    void *m_set_log_level;
    int64_t deadline_ms;
    int32_t max_message_bytes;
    int64_t max_prefetch_tokens;
    engram_client_options opts;   /* as opened, for the cluster machinery
                                   * (its string fields are cleared: the
                                   * library keeps no caller pointers) */

    /* Security, read once at open: every channel is made with these
     * (ec_channel_create). NULL ca_pem: plaintext. auth_value is
     * "Bearer <token>" or NULL; it lives until close, so metadata slices
     * point at it without copying. */
    char *ca_pem, *cert_pem, *key_pem;
    char *server_name;
    char *auth_value;
    /* With tls_refresh_s: one file watcher for every channel of the
     * client (it has a thread of its own), released at close. */
    grpc_tls_certificate_provider *tls_watch;

    /* Cluster mode: `mode` is read with an acquire load on every lookup;
     * discovery runs once under disc_mu. `cluster` is set before mode
     * becomes EC_MODE_CLUSTER and lives until close. */
    int mode;
    pthread_mutex_t disc_mu;
    ec_cluster *cluster;
    engram_client_counters counters;  /* updated with __atomic adds */

    /* In-flight calls, so close can cancel them. Guarded by mu. */
    pthread_mutex_t mu;
    pthread_cond_t idle;   /* broadcast when the list becomes empty */
    ec_call *inflight;
    int closing;           /* set by close: no new calls */
};

/* Runs on the completion thread when the call ended with gRPC status OK.
 * `reply` is the received message (may be NULL). Returns an engram code and
 * fills c->message when not OK. */
typedef int (*ec_decode_fn)(ec_call *c, grpc_byte_buffer *reply);

/* Optional: runs on the completion thread after the call is settled and
 * every gRPC resource released, instead of signalling `done` (c->done is
 * already 1). The hook owns c from then on (ec_call_release frees its
 * mutex and condvar at once). */
typedef void (*ec_done_fn)(ec_call *c);

struct ec_call {
    engram_client *client;
    ec_decode_fn decode;
    ec_done_fn on_done;

    /* gRPC state; owned by the completion thread once the batch started. */
    grpc_call *call;                  /* guarded by mu once started */
    grpc_byte_buffer *send_bb;
    grpc_byte_buffer *recv_bb;
    grpc_metadata_array md_initial;
    grpc_metadata_array md_trailing;
    grpc_status_code status;
    grpc_slice details;

    /* Outcome, published under mu with done. */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    int code;
    int transport_failed;             /* the batch itself failed */
    char message[sizeof(((engram_error *)0)->message)];

    ec_call *prev, *next;             /* client->inflight, under client->mu */

    /* Set before starting a Lookup on a channel other than the bootstrap
     * one (cluster replicas): data-plane calls carry no admin token. */
    int data_plane;
    grpc_metadata send_md[1];         /* the admin metadata, alive until done */
};

/* Admin credentials: fills md (room for 1 entry) with the client's
 * `authorization: Bearer <token>` metadata and sets *count (0 without a
 * token). Every admin call sends it with SEND_INITIAL_METADATA: ec_call_start
 * and ec_admin_run do so for any method but Lookup; code that builds its
 * own batches (import.c, or operations calls such as health, warm, stats
 * and drain) must call this and keep md alive until the batch completes.
 * The slices point into the client: no unref needed. */
void ec_admin_metadata(engram_client *cl, grpc_metadata *md, size_t *count);

/* A channel to `address` with the client's credentials (TLS or plaintext,
 * the server name override) and the given arguments. Used for the
 * bootstrap channel and every replica channel. */
grpc_channel *ec_channel_create(engram_client *cl, const char *address,
                                const grpc_channel_args *args);

/* Prepares c (zeroed by the caller) for a call. */
void ec_call_init(ec_call *c, engram_client *client, ec_decode_fn decode);

/* Starts the unary call `method` (a registered handle) sending `req`
 * (packed here; the caller keeps ownership of the message). On failure
 * nothing is in flight, c counts as finished with that code (so
 * ec_call_release still works) and the error is in err. */
int ec_call_start(ec_call *c, void *method, const ProtobufCMessage *req,
                  engram_error *err);

/* As ec_call_start, on any channel, with a packed request (ownership of
 * `bb` passes to the call, also on failure) and a deadline of timeout_ms
 * from now (<= 0: none). */
int ec_call_start_on(ec_call *c, grpc_channel *channel, void *method,
                     grpc_byte_buffer *bb, int64_t timeout_ms,
                     engram_error *err);

/* Cancels the call if it is still in flight; returns at once. The caller
 * guarantees c is alive (not yet handed to on_done and freed). */
void ec_call_cancel(ec_call *c, const char *why);

/* Waits for the call (timeout_ms < 0: forever). Returns ENGRAM_TIMEOUT or
 * the final code; fills err either way. */
int ec_call_wait(ec_call *c, int64_t timeout_ms, engram_error *err);

/* 1 when the call has finished. */
int ec_call_poll(ec_call *c);

/* Cancels the call if still in flight and waits until the completion thread
 * let go of it; then destroys its mutex/condvar. c's memory stays the
 * caller's to free. */
void ec_call_release(ec_call *c);

/* Fills err (may be NULL) with code and a printf message; returns code. */
int ec_error(engram_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Clears err to OK with an empty message; returns ENGRAM_OK. */
int ec_ok(engram_error *err);

/* structs.c: reads the caller's growing struct `src` (struct_size first)
 * over dst, which holds the defaults and is dst_size bytes; v1_size is what
 * struct_size 0 means. Returns ENGRAM_OK or ENGRAM_INVALID_ARGUMENT naming
 * the struct. */
int ec_struct_read(void *dst, size_t dst_size, size_t v1_size, const void *src, const char *name,
                   engram_error *err);
extern const size_t ec_client_options_v1, ec_import_target_v1, ec_prefetch_request_v1,
    ec_warm_request_v1;

/* Copies a protobuf TableInfo into the public struct, truncating strings
 * safely. Defined in admin.c, also used by import.c. */
void ec_table_info_from_pb(engram_table_info *out,
                           const Engram__V1__TableInfo *in);

/* An opened model (model.c). Prefetches started with
 * ENGRAM_PREFETCH_HASH_ASYNC queue on `queue` and are hashed and sent by
 * the model's one worker thread, started on first use (prefetch.c). */
struct engram_model {
    engram_client *client;
    engram_manifest *man;
    uint64_t manifest_version;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t worker;
    int worker_started;
    int stopping;
    struct engram_prefetch *queue_head, *queue_tail;
};

/* Stops the model's prefetch worker after the prefetches queued on it
 * (prefetch.c, which runs the worker; engram_model_close calls it). */
void ec_model_stop_worker(engram_model *m);

/* An admin (small unary) call: its reply is unpacked with protobuf-c. */
typedef struct admin_call {
    ec_call c;                           /* first: hooks cast back */
    const ProtobufCMessageDescriptor *desc;
    ProtobufCMessage *reply;             /* unpacked on success */
} admin_call;

/* Runs one admin call to completion on the bootstrap channel, with the
 * client's deadline. On success a->reply is set and the caller frees it
 * with protobuf_c_message_free_unpacked. Defined in admin.c. */
int ec_admin_run(engram_client *cl, void *method, const ProtobufCMessage *req,
                 const ProtobufCMessageDescriptor *desc, admin_call *a,
                 engram_error *err);
/* The same with a deadline timeout_ms from now (<= 0: none). */
int ec_admin_run_deadline(engram_client *cl, void *method, const ProtobufCMessage *req,
                          const ProtobufCMessageDescriptor *desc, int64_t timeout_ms,
                          admin_call *a, engram_error *err);

/* ---- cluster mode (cluster.c) ---- */

/* Decides the client's mode on its first lookup: fetches the cluster map
 * over the bootstrap channel and, for a real cluster, builds the
 * per-replica channels and starts the cluster thread. Returns an engram
 * code; *mode is EC_MODE_SINGLE or EC_MODE_CLUSTER on success. */
int ec_cluster_discover(engram_client *cl, int *mode, engram_error *err);

/* Close, in two steps: stop_begin (before every call is cancelled) makes
 * the cluster thread stop hedging; free (after the completion thread has
 * exited) joins the cluster thread, fails queued work and destroys the
 * channels. */
void ec_cluster_stop_begin(ec_cluster *cs);
void ec_cluster_free(ec_cluster *cs);

/* A routed lookup: the same contract as engram_lookup_*. */
int ec_clookup_start(engram_client *cl, const char *table, const uint64_t *rows,
                     size_t n, void *out, size_t out_cap, ec_clookup **out_lk,
                     engram_error *err);
int ec_clookup_wait(ec_clookup *lk, int64_t timeout_ms, engram_error *err);
int ec_clookup_poll(ec_clookup *lk);
void ec_clookup_result(const ec_clookup *lk, uint32_t *row_bytes, uint64_t *version);
void ec_clookup_free(ec_clookup *lk);

/* LookupResponse reading (lookup.c), shared by the routed lookups: the
 * length of field 1 when the message opens with it (1) or 0; and streaming
 * every slice through a decoder (0, or -1 with d->error). */
struct lookup_decoder;
int ec_lookup_peek_len(grpc_byte_buffer *bb, uint64_t *len);
int ec_lookup_decode_slices(struct lookup_decoder *d, grpc_byte_buffer *bb);

/* Monotonic deadline timeout_ms from now, for pthread_cond_timedwait on a
 * condvar using CLOCK_MONOTONIC (client.c). */
struct timespec ec_mono_deadline(int64_t timeout_ms);
/* Timeouts beyond this (about 30 years) count as forever. */
#define EC_WAIT_FOREVER_MS (1000LL * 86400 * 365 * 30)
/* Initialises a condvar on CLOCK_MONOTONIC. */
void ec_cond_init_mono(pthread_cond_t *cv);

/* Copies a gRPC status (code + details slice) into code/message form. */
int ec_status_to_error(grpc_status_code status, grpc_slice details,
                       char *message, size_t cap);

#endif
