/* engram.h: libengram, the client library of engram-store.
 *
 * This header is the contract. Conventions, for every function:
 *
 *  - Return value: an engram status code (0 = ENGRAM_OK), numerically equal
 *    to the gRPC status code the server or the transport produced. Local
 *    argument errors are ENGRAM_INVALID_ARGUMENT.
 *  - Error detail: every call that can fail takes `engram_error *err`; when
 *    non-NULL it is filled with the code and a message naming the bad value
 *    (the server's message when the server refused). NULL is allowed.
 *  - Ownership: the caller owns every buffer it passes in; the library never
 *    keeps a pointer to caller memory past the call, except the output
 *    buffer of an asynchronous lookup, which must stay valid until the
 *    lookup is finished (wait returned non-TIMEOUT, poll returned done, or
 *    it was freed).
 *  - Thread safety: an engram_client may be used from any number of threads
 *    at once. An engram_lookup (async handle), an engram_import and an
 *    engram_prefetch belong to one thread at a time. Each function below
 *    says so in its own "Thread-safe:" line, and its "Owns:" line says who
 *    frees what it hands out.
 *  - Cancelling from another thread: not allowed. Neither
 *    engram_lookup_free (the only way to cancel a lookup) nor
 *    engram_prefetch_cancel / _free may run while another thread is inside
 *    a wait, poll or result call on the same handle: they free what that
 *    call blocks on. To stop waiting early, wait with a finite timeout in a
 *    loop and cancel or free from that same thread.
 *
 * The library calls grpc_init() in engram_client_open and grpc_shutdown()
 * in engram_client_close; it keeps no other global state. */
#ifndef ENGRAM_ENGRAM_H
#define ENGRAM_ENGRAM_H

#include <stddef.h>
#include <stdint.h>

/* ---- version and symbol visibility -------------------------------------- */

/* The version of this header (zstd-style number: MAJOR * 10000 + MINOR * 100
 * + PATCH). CMakeLists.txt refuses to configure when these three differ from
 * its project() version, so the header, the library and the packages agree. */
#define ENGRAM_VERSION_MAJOR 0
#define ENGRAM_VERSION_MINOR 1
#define ENGRAM_VERSION_PATCH 0
#define ENGRAM_VERSION_NUMBER \
    (ENGRAM_VERSION_MAJOR * 10000 + ENGRAM_VERSION_MINOR * 100 + ENGRAM_VERSION_PATCH)
#define ENGRAM_QUOTE_(x) #x
#define ENGRAM_EXPAND_AND_QUOTE_(x) ENGRAM_QUOTE_(x)
#define ENGRAM_VERSION_STRING                       \
    ENGRAM_EXPAND_AND_QUOTE_(ENGRAM_VERSION_MAJOR) "." \
    ENGRAM_EXPAND_AND_QUOTE_(ENGRAM_VERSION_MINOR) "." \
    ENGRAM_EXPAND_AND_QUOTE_(ENGRAM_VERSION_PATCH)

/* ENGRAM_API marks the functions libengram.so exports; the library is built
 * with -fvisibility=hidden, so nothing else leaves it. libengram.a is built
 * with ENGRAM_STATIC defined: its symbols are hidden, so a shared object that
 * links it does not re-export the API. Programs that link libengram.a may
 * define it too (pkg-config --static and engram::engram_static do), which
 * drops the attribute from these declarations; linking works either way. */
#ifndef ENGRAM_API
#  if defined(ENGRAM_STATIC)
#    define ENGRAM_API
#  elif defined(__GNUC__) && __GNUC__ >= 4
#    define ENGRAM_API __attribute__((visibility("default")))
#  else
#    define ENGRAM_API
#  endif
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* The library's version, ENGRAM_VERSION_STRING as it was built: compare
 * them to see that the library loaded at run time is the one the program
 * was compiled against. Static string; thread-safe. */
ENGRAM_API const char *engram_version(void);
/* The library's ENGRAM_VERSION_NUMBER. Thread-safe. */
ENGRAM_API unsigned engram_version_number(void);

/* Status codes: the gRPC codes. */
#define ENGRAM_OK 0
#define ENGRAM_CANCELLED 1
#define ENGRAM_UNKNOWN 2
#define ENGRAM_INVALID_ARGUMENT 3
#define ENGRAM_DEADLINE_EXCEEDED 4
#define ENGRAM_NOT_FOUND 5
#define ENGRAM_ALREADY_EXISTS 6
#define ENGRAM_PERMISSION_DENIED 7
#define ENGRAM_RESOURCE_EXHAUSTED 8
#define ENGRAM_FAILED_PRECONDITION 9
#define ENGRAM_ABORTED 10
#define ENGRAM_OUT_OF_RANGE 11
#define ENGRAM_UNIMPLEMENTED 12
#define ENGRAM_INTERNAL 13
#define ENGRAM_UNAVAILABLE 14
#define ENGRAM_DATA_LOSS 15
#define ENGRAM_UNAUTHENTICATED 16
/* Not a gRPC code: engram_lookup_wait's timeout passed, the call goes on. */
#define ENGRAM_TIMEOUT 100

/* The longest table or model name, in bytes, without its NUL: name
 * buffers below are ENGRAM_NAME_MAX + 1 bytes. */
#define ENGRAM_NAME_MAX 128
/* The most versions of one table a server holds (active, retained and
 * staged together): the size of engram_table_info.versions. */
#define ENGRAM_MAX_VERSIONS 16

/* Growing structs. Every struct the caller fills in and passes to the
 * library (options and requests) starts with `struct_size`: its _init
 * function sets it to sizeof the struct as this header declares it, and
 * the library reads only that many bytes, so a program built against an
 * older header keeps working with a newer library (fields it does not
 * know keep their defaults), and a newer program with an older library
 * works unless it set a field that library lacks (ENGRAM_INVALID_ARGUMENT
 * then names the struct). 0 means the struct's first layout, so a request
 * written with designated initializers and no _init stays valid; new
 * fields are only ever added at the end. Structs the library fills in
 * (table info, results) are caller-allocated and keep their layout within
 * a major version (ENGRAM_VERSION_MAJOR). */

typedef struct engram_error {
    int code;
    char message[512];
} engram_error;

/* "OK", "NOT_FOUND", ..., "TIMEOUT". Static string; thread-safe. */
ENGRAM_API const char *engram_status_name(int code);

/* ---- client ------------------------------------------------------------ */

typedef struct engram_client engram_client;

typedef struct engram_client_options {
    size_t struct_size;   /* sizeof(engram_client_options): set by _init */
    /* Deadline of every call, in milliseconds; <= 0: none. Default 10000. */
    int64_t deadline_ms;
    /* Max message size sent and received, bytes. Default 64 MiB. */
    int32_t max_message_bytes;
    /* Most tokens (batch x seq_len) one prefetch may cover. Default 1 Mi. */
    int64_t max_prefetch_tokens;

    /* ---- cluster mode (see "cluster" below); ignored for a single server
     * (except version_refresh_ms, which also bounds how long a single
     * server's local file listing is trusted: see `local`) */
    /* How long a table's pinned version is reused before one GetTable
     * re-resolves it. The re-resolve runs in the background: the lookup
     * that finds the pin stale, and those after it until the answer is
     * in, use the pinned version (so a newly activated version is served
     * one round trip later, and no lookup waits on a GetTable). 0: a
     * blocking GetTable before every lookup; < 0: never again (a lookup
     * whose version was dropped still re-pins). Default 1000. */
    int64_t version_refresh_ms;
    /* Deadline of one attempt of a sub-request (one shard's rows on one
     * replica), capped by what is left of deadline_ms; a replica that hangs
     * costs at most this before the next replica is tried. <= 0: only
     * deadline_ms. Default 1000. */
    int64_t attempt_timeout_ms;
    /* Consecutive failures (UNAVAILABLE, DEADLINE_EXCEEDED, transport)
     * after which a replica is ejected. 0: never eject. Default 3. */
    int32_t eject_after_failures;
    /* First ejection's length; doubles (up to 30000) while the replica
     * keeps failing its probes; a success resets it. Default 1000. */
    int64_t eject_backoff_ms;
    /* Hedging: when a sub-request has been outstanding longer than this
     * percentile (1..99) of the client's recent sub-request latencies, and
     * at least hedge_min_ms, a duplicate goes to another usable replica of
     * its shard; the first answer wins. 0: off (default). */
    int32_t hedge_percentile;
    int64_t hedge_min_ms;   /* default 2 */
    /* A replica that stalls without failing (a paused process, a saturated
     * disk) never fails an attempt while hedges answer for it, so it would
     * keep costing every sub-request sent to it first the hedge delay.
     * After this many consecutive sub-requests in which it was tried first
     * and another replica's hedge answered first, it is ejected as a failing
     * one is (eject_backoff_ms, doubling; an answer it gives first resets
     * the count). 0: never. Default 5. Only with hedging. */
    int32_t eject_after_hedge_losses;

    /* ---- security (every channel: the bootstrap one and each replica's) */
    /* PEM file of the CA that signed the servers' certificates; set: TLS,
     * NULL: plaintext (default). Read and checked by engram_client_open;
     * with tls_refresh_s, re-read as it changes. */
    const char *tls_ca_file;
    /* PEM client certificate and key, for servers that require one (mTLS);
     * both or neither, and only with tls_ca_file. */
    const char *tls_cert_file;
    const char *tls_key_file;
    /* The name the server certificate must carry, when it differs from the
     * host in the address (e.g. "localhost" for 127.0.0.1). NULL: the host. */
    const char *tls_server_name;
    /* How often (seconds) the three TLS files above are re-read, so a
     * long-running worker takes a rotated client certificate or CA for its
     * next connections without reopening the client (gRPC's file watcher;
     * a file that fails to load keeps the previous contents). 0: read once
     * at open. Default 60. */
    int32_t tls_refresh_s;
    /* Sent as `authorization: Bearer <admin_token>` on admin calls (tables,
     * imports, manifests, versions, cluster map and other operations);
     * never on lookups. NULL: none. Copied by engram_client_open. */
    const char *admin_token;

    /* Rows per lookup call of a prefetch (a layer's unique rows are sent as
     * calls of at most this many, all at once). Smaller calls spread one
     * layer over the server's threads and overlap gather, transfer and
     * decode; larger ones cost fewer calls. Default 8192. */
    int32_t prefetch_chunk_rows;

    /* ---- same-node path (issue 16): ENGRAM_LOCAL_* ------------------------
     * A server started with --shm-dir keeps every resident table version as
     * a file on its host. With ENGRAM_LOCAL_AUTO (default) a client on that
     * host (same boot_id) asks each server it routes to for its files
     * (Admin.ListLocalTables), maps the ones it may open read-only after
     * proving them the files the server meant (device, inode, size, the
     * header's nonce and layout; every page is mapped in then, on a
     * thread of the library's), and serves a shard's rows of a lookup or
     * prefetch by copying them from the mapping on the thread that starts
     * the lookup (a prefetch's hashing thread with
     * ENGRAM_PREFETCH_HASH_ASYNC) straight to where they go,
     * when the mapped file is the version the lookup reads (the pinned one
     * in a cluster; on a single server the one its listing marks active,
     * the listing being refreshed in the background once it is
     * version_refresh_ms old, or 1000 ms when that is negative). Anything
     * else, including out-of-range rows and a file found shortened, goes
     * over gRPC, silently; so do a client's first lookups while its first
     * listing is fetched (on a thread of the library's, so no lookup waits
     * for a slow server). The SIGBUS of a file shortened under the client
     * never reaches the caller: the first file mapped installs a SIGBUS
     * handler, chained to the one the process had, that only ever catches
     * the library's own copies.
     * ENGRAM_LOCAL_OFF: never. ENGRAM_LOCAL_REQUIRE: as AUTO, but a lookup
     * of a shard whose server is on this host (a single server: always)
     * that cannot be served locally fails with ENGRAM_FAILED_PRECONDITION
     * naming the table and why (it waits for the listing it needs). */
    int32_t local;
} engram_client_options;

#define ENGRAM_LOCAL_AUTO 0
#define ENGRAM_LOCAL_OFF 1
#define ENGRAM_LOCAL_REQUIRE 2

/* Fills `opts` with the defaults (and struct_size).
 * Thread-safe: yes (touches only opts). */
ENGRAM_API void engram_client_options_init(engram_client_options *opts);

/* Opens a client to `address` ("host:port"). No network traffic happens
 * until the first call; a server that is down shows as ENGRAM_UNAVAILABLE
 * then. `opts` may be NULL (defaults).
 * Owns: on success the caller owns *out; free with engram_client_close.
 * opts and the strings it names are copied (PEM files read) before return.
 * Thread-safe: yes, any thread (grpc_init is reference-counted). */
ENGRAM_API int engram_client_open(const char *address, const engram_client_options *opts,
                                  engram_client **out, engram_error *err);

/* Cluster mode. On its first lookup (or prefetch) a client asks the server
 * it was opened on for the cluster map (Admin.GetClusterMap). A map of one
 * shard with one replica, or a server without that call, keeps the client
 * on that one server exactly as before. Otherwise lookups are routed: the
 * rows are split by shard (row r lives on shard r mod S), one sub-request
 * per shard goes out at once to a replica chosen round-robin among the
 * healthy ones, and the replies are scattered back into `out` in request
 * order. Every sub-request of one lookup names the same table version,
 * resolved with GetTable and cached for version_refresh_ms, so a batch
 * never mixes versions while shards switch; engram_lookup_result reports
 * it. A sub-request that fails with UNAVAILABLE, DEADLINE_EXCEEDED or a
 * transport failure is re-sent to another replica of its shard while the
 * deadline allows (each replica once); the lookup fails only when every
 * replica of a shard failed, with a message naming the shard and its
 * replicas. Other errors (NOT_FOUND, OUT_OF_RANGE, ...) come back as the
 * server sent them, except a "has no version" NOT_FOUND, after which the
 * version is re-resolved once and the lookup re-sent. Admin calls (tables,
 * imports, manifests, versions) always go to the server the client was
 * opened on. */

/* What the cluster machinery did since the client was opened. In single
 * mode only `subrequests` moves (one per lookup). */
typedef struct engram_client_counters {
    uint64_t subrequests;      /* per-shard requests (not counting retries) */
    uint64_t retries;          /* attempts re-sent to another replica */
    uint64_t hedges;           /* duplicate attempts sent by hedging */
    uint64_t hedge_wins;       /* hedges that answered first */
    uint64_t ejections;        /* times a replica was ejected */
    uint64_t slow_ejections;   /* of those, for lost hedges (a stalled replica) */
    uint64_t version_resolves; /* GetTable calls that pinned a version */
} engram_client_counters;

/* Copies the counters (each read atomically).
 * Thread-safe: yes, any thread, also while lookups run. */
ENGRAM_API void engram_client_get_counters(engram_client *client, engram_client_counters *out);

/* Closes the client. Asynchronous lookups still in flight are cancelled and
 * must still be freed with engram_lookup_free (before or after this call).
 * Imports, verifies and warms are not cancelled: finish or abort them
 * first; close every engram_model of the client first too.
 * Owns: frees the client; NULL is a no-op.
 * Thread-safe: no; not while any other thread uses the client. */
ENGRAM_API void engram_client_close(engram_client *client);

/* ---- tables ------------------------------------------------------------ */

typedef struct engram_table_info {
    char name[ENGRAM_NAME_MAX + 1];
    uint64_t rows;
    uint32_t row_bytes;
    uint32_t dim;
    char dtype[16];
    uint64_t version;
    uint32_t checksum;   /* CRC-32 (zlib) of all rows in order */
    uint64_t xxh3;       /* XXH3-64 (seed 0) of the same bytes; 0: unknown
                          * (a version imported before it was recorded) */
    int resident;        /* 1 when the server holds it as a dense RAM array */
    uint64_t created_unix_ms;
    /* On a sharded server: its part of the table (checksum covers it). */
    uint64_t local_rows;
    uint32_t shard_index;
    uint32_t shard_count;
    /* Every version on that server, oldest first. */
    uint32_t n_versions;
    struct {
        uint64_t version;
        int state;       /* ENGRAM_VERSION_* */
        uint32_t checksum;
        uint64_t local_rows;
        uint64_t xxh3;
    } versions[ENGRAM_MAX_VERSIONS];
} engram_table_info;

#define ENGRAM_VERSION_ACTIVE 1    /* served when a lookup names no version */
#define ENGRAM_VERSION_RETAINED 2  /* a previous active one, until dropped */
#define ENGRAM_VERSION_STAGED 3    /* imported, not activated yet */

/* Makes `version` of `table` the active one on the server the client talks
 * to (the previous one is retained). Idempotent. info may be NULL.
 * Thread-safe: yes, any number of threads on one client. */
ENGRAM_API int engram_table_activate(engram_client *client, const char *table, uint64_t version,
                                     engram_table_info *info, engram_error *err);

/* Drops a version that is not active; its rows are deleted once no lookup
 * uses them.
 * Thread-safe: yes, any number of threads on one client. */
ENGRAM_API int engram_table_drop_version(engram_client *client, const char *table, uint64_t version,
                                         engram_error *err);

/* The cluster map of the server the client talks to (JSON, see
 * common/cluster.h; a single server reports a one-shard map) and that
 * server's shard.
 * Owns: the caller owns *json; free with engram_free.
 * Thread-safe: yes, any number of threads on one client. */
ENGRAM_API int engram_cluster_map_get(engram_client *client, char **json, uint32_t *shard_count,
                                      uint32_t *shard_index, engram_error *err);

/* Info of one table: ENGRAM_NOT_FOUND when it does not exist.
 * Owns: *out is the caller's struct, filled in; nothing to free.
 * Thread-safe: yes, any number of threads on one client. */
ENGRAM_API int engram_table_get(engram_client *client, const char *name,
                                engram_table_info *out, engram_error *err);

/* All tables, sorted by name. On success *out is an array of *count
 * entries (NULL when count is 0).
 * Owns: the caller owns *out; free with engram_free.
 * Thread-safe: yes, any number of threads on one client. */
ENGRAM_API int engram_table_list(engram_client *client, engram_table_info **out,
                                 size_t *count, engram_error *err);

/* Frees memory the library handed to the caller. NULL is a no-op.
 * Thread-safe: yes, any thread (it is free()). */
ENGRAM_API void engram_free(void *p);

/* ---- operations: statistics and log level -------------------------------- */

/* The server's Admin.Stats as one JSON object whose keys are the proto
 * field names of engram.v1.StatsResponse (uptime_ms, build_version,
 * in_flight, rpcs, tables, rocksdb, memory, refusals, draining,
 * shard_index, shard_count; rpcs[].window / .total are LatencySummary
 * objects with count, p50_ms, ..., max_ms). Nested messages are objects,
 * repeated fields arrays (empty when none), counters JSON integers, every
 * field present even at its default. On success *json is a NUL-terminated
 * string.
 * Owns: the caller owns *json; free with engram_free.
 * Thread-safe: yes, any number of threads on one client. */
ENGRAM_API int engram_stats_json(engram_client *client, char **json, engram_error *err);

/* Sets the server's log level: "debug", "info", "warn" or "error" (another
 * name is the server's ENGRAM_INVALID_ARGUMENT naming it). On success the
 * level it replaced is copied into previous (prev_cap bytes, truncated and
 * NUL-terminated; previous may be NULL when prev_cap is 0).
 * Thread-safe: yes, any number of threads on one client. */
ENGRAM_API int engram_set_log_level(engram_client *client, const char *level, char *previous,
                                    size_t prev_cap, engram_error *err);

/* ---- lookup ------------------------------------------------------------ */

/* Synchronous lookup: copies rows rows[0..n) of `table` into out, back to
 * back, in request order (duplicates included). out_cap is out's size in
 * bytes; the reply must fit (n * row_bytes) or the call fails with
 * ENGRAM_INVALID_ARGUMENT and out is left unspecified. *row_bytes and
 * *version (either may be NULL) receive the reply's row size and the table
 * version all rows came from.
 * Owns: rows and out stay the caller's; nothing is kept after return.
 * Thread-safe: yes, any number of threads on one client. */
ENGRAM_API int engram_lookup_sync(engram_client *client, const char *table,
                                  const uint64_t *rows, size_t n, void *out,
                                  size_t out_cap, uint32_t *row_bytes, uint64_t *version,
                                  engram_error *err);

/* Asynchronous lookup. Start returns at once with a handle (in cluster
 * mode, after one GetTable when the table's pinned version is stale); many
 * lookups may be in flight over the client's channels. `rows` is copied before
 * start returns; `out` must stay valid until the lookup is finished. */
typedef struct engram_lookup engram_lookup;

/* Owns: on success the caller owns *handle (NULL on failure); free it with
 * engram_lookup_free, whatever the outcome. out is borrowed until then.
 * Thread-safe: yes, any number of threads on one client; the handle then
 * belongs to one thread at a time. */
ENGRAM_API int engram_lookup_start(engram_client *client, const char *table,
                                   const uint64_t *rows, size_t n, void *out,
                                   size_t out_cap, engram_lookup **handle,
                                   engram_error *err);

/* Waits up to timeout_ms (< 0: forever) for the lookup to finish. Returns
 * ENGRAM_TIMEOUT if it has not (the lookup goes on), else the lookup's
 * final status (the same on every later call).
 * Thread-safe: one thread at a time per handle; engram_lookup_free must
 * not run on the handle from another thread meanwhile. */
ENGRAM_API int engram_lookup_wait(engram_lookup *handle, int64_t timeout_ms,
                                  engram_error *err);

/* Non-blocking: 0 while in flight, 1 when finished (then wait(…, 0) gives
 * the status).
 * Thread-safe: one thread at a time per handle, as wait. */
ENGRAM_API int engram_lookup_poll(engram_lookup *handle);

/* After the lookup finished OK: the reply's row size and version.
 * Thread-safe: one thread at a time per handle, as wait. */
ENGRAM_API void engram_lookup_result(const engram_lookup *handle, uint32_t *row_bytes,
                                     uint64_t *version);

/* Frees the handle. A lookup still in flight is cancelled first and this
 * call waits for gRPC to let go of `out`. NULL is a no-op. This is the
 * only way to cancel a lookup. Allowed before or after engram_client_close.
 * Owns: frees the handle; out is the caller's again on return.
 * Thread-safe: only by the thread that owns the handle; never while another
 * thread is in wait, poll or result on it (the handle is destroyed). */
ENGRAM_API void engram_lookup_free(engram_lookup *handle);

/* ---- import ------------------------------------------------------------ */

/* A streamed import (Admin.Import): begin declares the table, write sends
 * whole rows in order from row 0 with no gap, finish commits. The new
 * version becomes visible atomically at finish; abort (or free without
 * finish, or any error) changes nothing on the server. */
typedef struct engram_import engram_import;

/* Owns: on success the caller owns *out; engram_import_finish or
 * engram_import_abort frees it, and one of them must run before
 * engram_client_close (close does not cancel imports).
 * Thread-safe: yes, any number of threads on one client (each import has
 * its own stream); the import then belongs to one thread at a time. */
ENGRAM_API int engram_import_begin(engram_client *client, const char *table,
                                   uint64_t rows, uint32_t dim, const char *dtype,
                                   engram_import **out, engram_error *err);

/* Where an import goes: the version it writes, whether it stays staged
 * until engram_table_activate, and the shard it is cut for. */
typedef struct engram_import_target {
    size_t struct_size;    /* sizeof(engram_import_target), or 0 */
    uint64_t version;      /* 0: one past the server's newest */
    int stage;             /* 1: keep inactive until activated */
    uint32_t shard_count;  /* 0: an unsharded server */
    uint32_t shard_index;
} engram_import_target;

/* Fills `target` with the defaults: version 0, not staged, unsharded.
 * Thread-safe: yes (touches only target). */
ENGRAM_API void engram_import_target_init(engram_import_target *target);

/* As engram_import_begin, for a target. With shard_count > 0 the writes
 * carry the shard's rows in local order (local row i is global row
 * i * shard_count + shard_index), and there are
 * ceil((rows - shard_index) / shard_count) of them.
 * Owns and thread-safe: as engram_import_begin. */
ENGRAM_API int engram_import_begin_target(engram_client *client, const char *table,
                                          uint64_t rows, uint32_t dim, const char *dtype,
                                          const engram_import_target *target,
                                          engram_import **out, engram_error *err);

/* Sends rows [start_row, start_row + len / row_bytes). len must be a whole
 * number of rows; large writes are split into messages by the library,
 * which hashes them (XXH3-64) on the way: finish sends that checksum, and
 * the server refuses the import with ENGRAM_DATA_LOSS, naming both values,
 * when the rows it received hash otherwise.
 * Owns: data stays the caller's; it is sent before return.
 * Thread-safe: one thread at a time per import. */
ENGRAM_API int engram_import_write(engram_import *imp, uint64_t start_row,
                                   const void *data, size_t len, engram_error *err);

/* Ends the stream and waits for the server's verdict. On success `info`
 * (may be NULL) receives the table as activated.
 * Owns: frees imp, whatever the outcome.
 * Thread-safe: one thread at a time per import. */
ENGRAM_API int engram_import_finish(engram_import *imp, engram_table_info *info,
                                    engram_error *err);

/* Cancels the stream; the server discards everything. NULL is a no-op.
 * Owns: frees imp.
 * Thread-safe: one thread at a time per import. */
ENGRAM_API void engram_import_abort(engram_import *imp);

/* ---- verify -------------------------------------------------------------- */

/* What Admin.Verify found on one server: the checksums of a version's rows
 * as stored there (its shard's rows, in local order), recomputed, against
 * the ones recorded at import. */
typedef struct engram_verify_result {
    char table[ENGRAM_NAME_MAX + 1];
    uint64_t version;
    uint64_t rows_checked;     /* local rows read back */
    uint64_t local_rows;       /* local rows of the version */
    uint64_t rows;             /* the table's global rows */
    uint32_t row_bytes;
    uint32_t dim;
    char dtype[16];
    uint32_t shard_index;
    uint32_t shard_count;
    uint64_t xxh3;             /* recomputed over the stored rows */
    uint32_t crc32;
    uint64_t stored_xxh3;      /* recorded at import; 0: unknown, not compared */
    uint32_t stored_crc32;
    int resident;              /* 1: the RAM copy lookups read was compared too */
    /* 1 when every row is there and both checksums (xxh3 when recorded)
     * equal the recorded ones and the RAM copy equals the stored rows. */
    int match;
    char problem[512];         /* when match is 0: the first thing found wrong */
} engram_verify_result;

/* Progress of engram_table_verify: local rows read of total, and the row
 * size (to show bytes per second). */
typedef void (*engram_verify_progress_fn)(void *ctx, uint64_t done, uint64_t total,
                                          uint32_t row_bytes);

/* Admin.Verify on the server the client was opened with (not routed: in a
 * cluster, call it on each replica): reads every stored row of `version`
 * of `table` (0: the active version), recomputes the checksums and fills
 * *out. Returns ENGRAM_OK when the check ran, whatever it found: look at
 * out->match. Errors: unknown table or version ENGRAM_NOT_FOUND, admin
 * credentials missing ENGRAM_UNAUTHENTICATED. `progress` (may be NULL)
 * runs on the calling thread. No deadline, like an import: reading a big
 * table takes long and the progress shows it is alive. Not cancelled by
 * engram_client_close: let it return first.
 * Owns: *out is the caller's struct, filled in; nothing to free.
 * Thread-safe: yes, any number of threads on one client (each call has its
 * own stream); the progress callback runs on the calling thread. */
ENGRAM_API int engram_table_verify(engram_client *client, const char *table, uint64_t version,
                                   engram_verify_progress_fn progress, void *ctx,
                                   engram_verify_result *out, engram_error *err);

/* ---- manifests ---------------------------------------------------------- */

/* A model manifest (JSON, see README "Models") names a model's hashing
 * parameters and the table of each Engram layer. */
typedef struct engram_manifest_info {
    char name[ENGRAM_NAME_MAX + 1];
    uint64_t version;          /* increases by one with every put */
    uint32_t n_layers;
    uint32_t dim;              /* elements per head row */
    uint32_t row_bytes;
    char dtype[16];
    uint32_t n_missing;        /* tables named but not on the server */
    char missing_tables[1024]; /* their names, comma separated (truncated) */
    uint64_t updated_unix_ms;
} engram_manifest_info;

/* Stores (or replaces) a manifest. The server refuses an invalid document
 * (ENGRAM_INVALID_ARGUMENT) or one naming an existing table of the wrong
 * shape (ENGRAM_FAILED_PRECONDITION); tables not imported yet are allowed
 * and listed in info->missing_tables. info may be NULL.
 * Owns: json stays the caller's; nothing is kept after return.
 * Thread-safe: yes, any number of threads on one client. */
ENGRAM_API int engram_manifest_put(engram_client *client, const char *json, size_t len,
                                   engram_manifest_info *info, engram_error *err);

/* The stored document of model `name`: *json is a NUL-terminated copy;
 * *version (may be NULL) its version.
 * Owns: the caller owns *json; free with engram_free.
 * Thread-safe: yes, any number of threads on one client. */
ENGRAM_API int engram_manifest_get(engram_client *client, const char *name, char **json,
                                   uint64_t *version, engram_error *err);

/* All manifests, sorted by name.
 * Owns: the caller owns *out (*count entries); free with engram_free.
 * Thread-safe: yes, any number of threads on one client. */
ENGRAM_API int engram_manifest_list(engram_client *client, engram_manifest_info **out,
                                    size_t *count, engram_error *err);

/* ---- models: hashing and prefetch --------------------------------------- */

/* An opened model: its manifest fetched from the server, its hashing state
 * derived, and every layer's table checked to exist with the right shape.
 * A model is immutable and may be used by any number of threads; it must be
 * closed before its client. */
typedef struct engram_model engram_model;

#define ENGRAM_MAX_LAYERS 64

typedef struct engram_model_info {
    char name[ENGRAM_NAME_MAX + 1];
    uint64_t manifest_version;
    uint32_t n_layers;
    int64_t layer_ids[ENGRAM_MAX_LAYERS];
    uint32_t max_ngram;
    uint32_t heads;            /* (max_ngram - 1) * n_head_per_ngram */
    uint32_t dim;
    uint32_t row_bytes;
    char dtype[16];
    int64_t pad_id;
} engram_model_info;

/* Opens model `name`: ENGRAM_NOT_FOUND without a manifest of that name,
 * ENGRAM_FAILED_PRECONDITION when a layer's table is missing or of the
 * wrong shape (the message names it).
 * Owns: on success the caller owns *out; free with engram_model_close,
 * before engram_client_close.
 * Thread-safe: yes, any number of threads on one client. */
ENGRAM_API int engram_model_open(engram_client *client, const char *name,
                                 engram_model **out, engram_error *err);
/* Copies the model's info into *out.
 * Thread-safe: yes, any thread (the model is immutable). */
ENGRAM_API void engram_model_get_info(const engram_model *model, engram_model_info *out);
/* Tensor parallelism: the columns (heads) rank `rank` of `tp` ranks takes,
 * as vLLM shards Engram: ceil(heads / tp) consecutive columns each, so the
 * last ranks may take fewer or none. Writes the head indices to
 * heads[0..cap) (heads may be NULL to count) for engram_prefetch_request's
 * heads, and returns how many the rank takes: 0 for a rank with none (it
 * prefetches nothing) or when tp is 0 or rank >= tp. DeepSeek-V4.1 at
 * tp 8: 3 of its 24 columns per rank.
 * Thread-safe: yes, any thread (the model is immutable). */
ENGRAM_API size_t engram_model_tp_heads(const engram_model *model, uint32_t tp, uint32_t rank,
                                        uint32_t *heads, size_t cap);
/* Waits for the model's background hashing (if any was used) to finish,
 * then frees the model. NULL is a no-op. Free every prefetch of the model
 * first: a prefetch handle reads the model until it is freed.
 * Owns: frees the model.
 * Thread-safe: no; not while any other thread uses the model. */
ENGRAM_API void engram_model_close(engram_model *model);

/* Hashes tokens [batch, seq_len] (raw token ids) for one layer into
 * rows_out[batch, seq_len, heads]: the global row ids the reference model
 * reads from that layer's table. history: NULL, or [batch, max_ngram - 1]
 * ids preceding each sequence, oldest first (decode steps). A token beyond
 * the compression table is ENGRAM_INVALID_ARGUMENT naming it. Under a
 * manifest with "dead_tokens" (DeepSeek-V4.1), a negative id is DEAD: it
 * blocks the look-back from its position on (see README "Models"). Thread-safe;
 * no server call. */
ENGRAM_API int engram_model_hash(const engram_model *model, int64_t layer_id,
                                 const int64_t *tokens, size_t batch, size_t seq_len,
                                 const int64_t *history, uint64_t *rows_out,
                                 engram_error *err);

/* Hash and send on the model's background thread instead of the caller's:
 * start returns at once (tokens and history are copied first). */
#define ENGRAM_PREFETCH_HASH_ASYNC 0x1u
/* Deliver BF16 values instead of the stored rows, for a model of dtype
 * "mxfp8_e4m3" (DeepSeek-V4.1): out is [n_layers][batch, seq_len, heads,
 * dim] uint16 BF16 patterns (what vLLM's Engram gather produces),
 * dequantised as engram_dequant_bf16 does, straight into out. */
#define ENGRAM_PREFETCH_DEQUANT_BF16 0x2u

typedef struct engram_prefetch_request {
    size_t struct_size;        /* sizeof(engram_prefetch_request), or 0 */
    const int64_t *layer_ids;  /* n_layers layers; one call may cover a step */
    size_t n_layers;
    const int64_t *tokens;     /* [batch, seq_len] raw token ids */
    size_t batch;
    size_t seq_len;
    const int64_t *history;    /* NULL or [batch, max_ngram - 1], oldest first */
    const uint32_t *heads;     /* NULL (all heads) or n_heads head indices */
    size_t n_heads;
    void *out;                 /* [n_layers][batch, seq_len, heads, row_bytes]
                                * (BF16 [..., heads, dim] with ..._DEQUANT_BF16) */
    size_t out_cap;
    unsigned flags;            /* ENGRAM_PREFETCH_* */
} engram_prefetch_request;

/* Zeroes `req` and sets its struct_size.
 * Thread-safe: yes (touches only req). */
ENGRAM_API void engram_prefetch_request_init(engram_prefetch_request *req);

typedef struct engram_prefetch engram_prefetch;

/* Bytes the output of `req` takes (0 when req is invalid).
 * Thread-safe: yes, any thread; no server call. */
ENGRAM_API size_t engram_prefetch_out_bytes(const engram_model *model,
                                            const engram_prefetch_request *req);

/* Starts a prefetch: hashes every layer's rows, de-duplicates them within
 * the call, and sends every table's lookups at once; the rows are scattered
 * into req->out, laid out [n_layers][batch, seq_len, heads, D] in the order
 * of req->layer_ids and req->heads. req->out must stay valid until the
 * prefetch is finished or freed; everything else in req is read (or copied)
 * before start returns. Many prefetches may be in flight at once. Errors in
 * the request are returned here; errors found while hashing in the
 * background, or from the server, come from wait.
 * Owns: on success the caller owns *handle; free with engram_prefetch_free
 * (before engram_model_close). req->out is borrowed until then.
 * Thread-safe: yes, any number of threads on one model; the handle then
 * belongs to one thread at a time. */
ENGRAM_API int engram_prefetch_start(engram_model *model,
                                     const engram_prefetch_request *req,
                                     engram_prefetch **handle, engram_error *err);

/* Waits up to timeout_ms (< 0: forever). ENGRAM_TIMEOUT if not finished;
 * else the final status, the same on every later call. On ENGRAM_OK every
 * byte of out is written; on any error out must not be used (a row that did
 * not arrive is never left as zeros behind an OK).
 * Thread-safe: one thread at a time per handle (with wait_layer, poll,
 * cancel and free); see engram_prefetch_cancel. */
ENGRAM_API int engram_prefetch_wait(engram_prefetch *handle, int64_t timeout_ms,
                                    engram_error *err);

/* Waits up to timeout_ms (< 0: forever) for one layer of the prefetch:
 * on ENGRAM_OK that layer's part of out, [batch, seq_len, heads, D] at its
 * position in req->layer_ids, is written (every entry, should the id be
 * listed twice); the other layers may still be in flight. A worker calls it
 * just before each Engram layer, so it blocks only for that layer's rows.
 * ENGRAM_INVALID_ARGUMENT when layer_id was not asked for; ENGRAM_TIMEOUT
 * if not there yet; any other error fails the whole prefetch, as wait
 * would report it. Call engram_prefetch_wait (or free) afterwards as usual;
 * layers already waited for are not copied again.
 * Thread-safe: one thread at a time per handle, like wait. */
ENGRAM_API int engram_prefetch_wait_layer(engram_prefetch *handle, int64_t layer_id,
                                          int64_t timeout_ms, engram_error *err);

/* Non-blocking: 1 when every row has arrived or the prefetch failed (wait
 * then returns at once), else 0.
 * Thread-safe: one thread at a time per handle, like wait. */
ENGRAM_API int engram_prefetch_poll(engram_prefetch *handle);

/* Cancels what is still in flight; wait then gives ENGRAM_CANCELLED (or
 * the error that had already failed the prefetch). A prefetch that already
 * finished (wait returned its final status) stays as it was. With ENGRAM_PREFETCH_HASH_ASYNC this first waits until the
 * model's worker has hashed and sent this prefetch, so it may block. NULL
 * is a no-op.
 * Thread-safe: only by the thread that owns the handle. Calling it from
 * another thread while wait, wait_layer or poll runs on the handle is not
 * allowed: it frees the lookups they wait on. */
ENGRAM_API void engram_prefetch_cancel(engram_prefetch *handle);

/* Frees the handle, cancelling first if still in flight. NULL is a no-op.
 * Owns: frees the handle; req->out is the caller's again on return.
 * Thread-safe: as engram_prefetch_cancel. */
ENGRAM_API void engram_prefetch_free(engram_prefetch *handle);

/* ---- dequantization (dequant.c) ------------------------------------------ */

/* Rows of dtype "mxfp8_e4m3" (DeepSeek-V4.1's Engram rows: dim E4M3 codes,
 * then one E8M0 scale per 32 codes, dim + dim / 32 bytes a row; 264 for
 * dim 256) to BF16 or F32 [n, dim]: value = e4m3(code) x 2^(scale - 127),
 * rounded to nearest even where it is not exact (only results below the
 * smallest normal or above the largest finite value are not), infinity
 * past the largest finite value, NaN for a NaN code (0x7F, 0xFF) or the
 * NaN scale (255). BF16 values are their 16-bit patterns. dim must be a
 * positive multiple of 32, else ENGRAM_INVALID_ARGUMENT.
 * Owns: rows and out are the caller's (n * dim outputs).
 * Thread-safe: yes, any thread; no server call. */
ENGRAM_API int engram_dequant_bf16(const void *rows, size_t n, uint32_t dim, uint16_t *out,
                                   engram_error *err);
ENGRAM_API int engram_dequant_f32(const void *rows, size_t n, uint32_t dim, float *out,
                                  engram_error *err);

/* ---- operations (ops.c) -------------------------------------------------- */
/* Each goes to the server the client was opened with (not routed through
 * a cluster): an operator checks, drains or warms one node. */

#define ENGRAM_HEALTH_NOT_SERVING 0
#define ENGRAM_HEALTH_SERVING 1

/* grpc.health.v1 Check of `service` ("" or NULL: the server; or
 * "engram.v1.Lookup", "engram.v1.Admin"). *serving is ENGRAM_HEALTH_SERVING
 * or ENGRAM_HEALTH_NOT_SERVING (drained, shutting down). An unknown service
 * is ENGRAM_NOT_FOUND.
 * Thread-safe: yes, any number of threads on one client. */
ENGRAM_API int engram_health_check(engram_client *client, const char *service, int *serving,
                                   engram_error *err);

/* Drains the server: new lookups are refused with ENGRAM_UNAVAILABLE (a
 * cluster client fails over to another replica) and health turns
 * NOT_SERVING; then waits up to timeout_ms for lookups in flight. *drained
 * is 1 when none is left, and *in_flight says how many are (either may be
 * NULL). The call's deadline is the client's plus timeout_ms.
 * Thread-safe: yes, any number of threads on one client. */
ENGRAM_API int engram_drain(engram_client *client, uint32_t timeout_ms, int *drained,
                            uint64_t *in_flight, engram_error *err);

/* Ends a drain: lookups are served again, health turns SERVING.
 * Thread-safe: yes, any number of threads on one client. */
ENGRAM_API int engram_undrain(engram_client *client, engram_error *err);

/* Progress of engram_warm: after each batch, the table's rows done of
 * total (this server's distinct rows of it) and how many were read from
 * RocksDB into its block cache (0 for a table held resident in RAM).
 * The last call has table "" and the totals over every table. */
typedef void (*engram_warm_progress_fn)(void *ctx, const char *table, uint64_t done,
                                        uint64_t total, uint64_t loaded);

/* What engram_warm reads: either rows[0..n_rows) (global ids) of `table`,
 * or the rows token ids tokens[0..n_tokens) (one sequence from its start)
 * touch in model `model`'s layers layer_ids[0..n_layers) (n_layers 0:
 * every layer). Leave the other form NULL/0. */
typedef struct engram_warm_request {
    size_t struct_size;        /* sizeof(engram_warm_request), or 0 */
    const char *table;
    const uint64_t *rows;
    size_t n_rows;
    const char *model;
    const int64_t *tokens;
    size_t n_tokens;
    const int64_t *layer_ids;
    size_t n_layers;
    engram_warm_progress_fn progress;  /* may be NULL; runs on the calling thread */
    void *progress_ctx;
} engram_warm_request;

/* Zeroes `req` and sets its struct_size.
 * Thread-safe: yes (touches only req). */
ENGRAM_API void engram_warm_request_init(engram_warm_request *req);

/* Warms the server's RAM tiers with the rows `req` names. Only this
 * server's shard's rows are read. No deadline: a warm runs until done
 * (like an import). Errors: unknown table or model ENGRAM_NOT_FOUND, a row
 * outside the table ENGRAM_OUT_OF_RANGE, a token outside the model's
 * vocabulary ENGRAM_INVALID_ARGUMENT (the message names it), neither form
 * or both ENGRAM_INVALID_ARGUMENT. Not cancelled by engram_client_close:
 * let it return first.
 * Owns: req and what it points to stay the caller's; nothing is kept.
 * Thread-safe: yes, any number of threads on one client (each call has its
 * own stream); the progress callback runs on the calling thread. */
ENGRAM_API int engram_warm(engram_client *client, const engram_warm_request *req,
                           engram_error *err);

#ifdef __cplusplus
}
#endif
#endif
