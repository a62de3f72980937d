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

/* Which router a client's lookups take, decided on the first one
 * (cluster.c). */
#define EC_MODE_UNKNOWN 0
#define EC_MODE_SINGLE 1   /* the single-server router: bootstrap channel, version 0 */
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

    /* Routers: `mode` is read with an acquire load on every lookup;
     * discovery runs once under disc_mu. `cluster` is set before mode
     * becomes EC_MODE_CLUSTER and lives until close; `single` (one shard,
     * one replica: the bootstrap channel) is made at open. */
    int mode;
    pthread_mutex_t disc_mu;
    ec_cluster *cluster;
    ec_cluster *single;
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

/* ---- lookups: one path (lookup.c, rows.c, cluster.c, routed_lookup.c) ---- */

/* Where a lookup's rows go, all of it borrowed until the lookup is freed.
 * engram_lookup_*: out/out_cap only, rows back to back in request order at
 * the reply's row size. A prefetch layer: every output row idx[t] for t in
 * [first[i], first[i+1]) gets request row i, out_rb bytes apart, checked to
 * be row_bytes long (and dequantised from mxfp8_e4m3 of dequant_dim values
 * to BF16 when dequant_dim > 0). */
typedef struct ec_dest {
    uint8_t *out;
    size_t out_cap;
    size_t out_rb;           /* bytes between output rows; 0: the reply's row size */
    uint32_t row_bytes;      /* the row size replies must have; 0: any */
    const uint32_t *first;   /* NULL: request row i goes to output row i */
    const uint32_t *idx;
    uint32_t dequant_dim;
} ec_dest;

/* Decodes one LookupResponse answering n rows of a lookup of lookup_n rows
 * (pos[j]: the request index of reply row j; NULL: j) straight into d: the
 * one copy of every row (rows.c). Returns an engram code; on error msg
 * says why and the destination rows of this reply are unspecified. */
int ec_rows_decode(const ec_dest *d, const uint32_t *pos, size_t n, size_t lookup_n,
                   grpc_byte_buffer *reply, uint32_t *row_bytes, uint64_t *version, char *msg,
                   size_t msg_cap);

/* The local path's copy (local.c): request rows pos[j] (NULL: j) of a
 * lookup into d, as ec_rows_decode places a reply's, each read straight
 * from row rows[j] of the rb-byte rows at base (a mapped file), with the
 * rows a few ahead prefetched: one copy from the file to every place a row
 * goes, dequantised on the way when d asks. rb must equal d->row_bytes
 * when that is set. Run it under safe_run (safe_gather.h): it holds no
 * lock and owns no memory. */
void ec_rows_gather(const ec_dest *d, const uint32_t *pos, size_t n, uint32_t rb,
                    const uint8_t *base, const uint64_t *rows);

/* The router this client's lookups go through now (cluster.c): on the
 * first lookup the server is asked for its cluster map; a cluster gets a
 * router of its own, anything else the client's single-server router. */
int ec_router_get(engram_client *cl, ec_cluster **cs, engram_error *err);
/* The client's single-server router, made at open (NULL: out of memory). */
ec_cluster *ec_router_single(engram_client *cl);

/* Close, in two steps: stop_begin (before every call is cancelled) makes
 * the router's thread stop hedging; free (after the completion thread has
 * exited) joins that thread, fails queued work and destroys the channels
 * the router owns. */
void ec_cluster_stop_begin(ec_cluster *cs);
void ec_cluster_free(ec_cluster *cs);

/* A lookup through a router into dest (routed_lookup.c): the contract of
 * engram_lookup_start/wait/poll/result/free. rows are read before start
 * returns; dest's pointers are borrowed until free. */
int ec_route_start(ec_cluster *cs, const char *table, const uint64_t *rows, size_t n,
                   const ec_dest *dest, engram_lookup **out_lk, engram_error *err);
int ec_route_wait(engram_lookup *lk, int64_t timeout_ms, engram_error *err);
int ec_route_poll(engram_lookup *lk);
void ec_route_result(const engram_lookup *lk, uint32_t *row_bytes, uint64_t *version);
void ec_route_free(engram_lookup *lk);

/* engram_lookup_start with a destination of the caller's choosing
 * (lookup.c; prefetch.c scatters to its layer output with it). */
int ec_lookup_start_dest(engram_client *client, const char *table, const uint64_t *rows,
                         size_t n, const ec_dest *dest, engram_lookup **handle,
                         engram_error *err);

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
