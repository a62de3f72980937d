/* lookup.c: the Lookup RPC, the hot path.
 *
 * Neither the request nor the reply goes through protobuf-c. The request is
 * parsed in place by common/wire.c (packed or unpacked `rows`, as any peer
 * may send) into a row buffer each worker thread keeps and reuses; the
 * reply's field header is written by hand and rows are gathered directly
 * into the one slice that gRPC sends. Per call: one slice allocation; per
 * row: a varint decode, a bounds check and a memcpy (resident) or a
 * MultiGet slot. Every row is checked before any is read, so a bad request
 * costs no I/O. */
#include "lookup.h"

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/slice.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "names.h"
#include "reply_budget.h"
#include "stats.h"
#include "status.h"
#include "grpc_util.h"
#include "hooks.h"
#include "wire.h"

static struct {
    store *s;
    lookup_options o;
    uint64_t in_flight;          /* handlers running now, for Drain */
    uint32_t shards, shard;
    pthread_key_t scratch_key;
} L;

/* What one worker thread reuses from call to call: the decoded rows and the
 * table name as a C string. Freed when the thread exits. The rows buffer
 * never holds more than --max-rows entries (the parser counts before it
 * reserves), and one over SCRATCH_KEEP_ROWS is given back after its call:
 * a rare huge request pays one malloc rather than every thread keeping its
 * high-water mark for good. */
#define SCRATCH_KEEP_ROWS 65536
typedef struct scratch {
    uint64_t *rows;
    size_t cap;
    char table[ENGRAM_NAME_MAX + 1];
} scratch;

static void scratch_free(void *p)
{
    scratch *sc = p;
    free(sc->rows);
    free(sc);
}

static scratch *scratch_get(void)
{
    scratch *sc = pthread_getspecific(L.scratch_key);
    if (!sc && (sc = calloc(1, sizeof *sc)) != NULL)
        pthread_setspecific(L.scratch_key, sc);
    return sc;
}

/* The request as parsed: the name as a C string, rows in the scratch. */
typedef struct request {
    const char *table;
    uint64_t *rows;
    size_t n_rows;
    uint64_t version;
} request;

void lookup_setup(store *s, const lookup_options *opts)
{
    L.s = s;
    L.o = *opts;
    store_shard(s, &L.shards, &L.shard);
    pthread_key_create(&L.scratch_key, scratch_free);
}

void lookup_teardown(void)
{
    /* The calling thread's scratch; workers freed theirs when they ended. */
    scratch *sc = pthread_getspecific(L.scratch_key);
    if (sc)
        scratch_free(sc);
    pthread_key_delete(L.scratch_key);
    L.s = NULL;
}

/* Turns global rows into this shard's local rows, in place. A row of
 * another shard is refused: a misconfigured client must get an error, not
 * another row's bytes. */
static int to_local(uint64_t *rows, size_t n, char *msg, size_t msglen)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t r = rows[i], q = r / L.shards;
        if (r - q * L.shards != L.shard) {
            snprintf(msg, msglen,
                     "row %llu (index %zu in the request) belongs to shard %llu of %u; this server is shard %u",
                     (unsigned long long)r, i, (unsigned long long)(r % L.shards), L.shards, L.shard);
            return ES_FAILED_PRECONDITION;
        }
        rows[i] = q;
    }
    return ES_OK;
}

/* The parser counts rows before it stores any, so this is answered before
 * a byte is reserved for them. */
static int refuse_max_rows(size_t n, char *msg, size_t msglen)
{
    hooks_refused(REFUSAL_MAX_ROWS);
    snprintf(msg, msglen, "request has %zu rows; the maximum per request is %llu", n,
             (unsigned long long)L.o.max_rows);
    return ES_INVALID_ARGUMENT;
}

/* Checks everything about the request against the table before any row is
 * read; returns ES_OK or the status to answer with. */
static int validate(request *rq, const table_version *tv,
                    char *msg, size_t msglen)
{
    uint64_t data = (uint64_t)rq->n_rows * tv->row_bytes;
    uint64_t total = data + 32;
    if (total > L.o.max_message_bytes) {
        snprintf(msg, msglen,
                 "reply would be %llu bytes (%zu rows x %u bytes); the maximum message is %llu bytes",
                 (unsigned long long)data, rq->n_rows, tv->row_bytes,
                 (unsigned long long)L.o.max_message_bytes);
        return ES_INVALID_ARGUMENT;
    }
    for (size_t i = 0; i < rq->n_rows; i++) {
        if (rq->rows[i] >= tv->rows) {
            snprintf(msg, msglen,
                     "row %llu (index %zu in the request) is out of range: table \"%s\" has %llu rows",
                     (unsigned long long)rq->rows[i], i, tv->name,
                     (unsigned long long)tv->rows);
            return ES_OUT_OF_RANGE;
        }
    }
    return L.shards == 1 ? ES_OK : to_local(rq->rows, rq->n_rows, msg, msglen);
}

/* What stats.c is told about a lookup of a table the server knows. */
typedef struct outcome {
    int known;                   /* the table exists (maybe not the version) */
    uint64_t bytes;
    uint64_t tier_rows[STATS_TIERS];
} outcome;

static int gather(const request *rq, table_version *tv,
                  grpc_byte_buffer **reply, store_tiers *tiers, char *msg, size_t msglen)
{
    uint64_t data = (uint64_t)rq->n_rows * tv->row_bytes;
    size_t head = lookup_response_head_len(data);
    size_t tail = lookup_response_tail_len(tv->row_bytes, tv->version);
    grpc_slice s = grpc_slice_malloc(head + data + tail);
    uint8_t *p = GRPC_SLICE_START_PTR(s);
    lookup_response_put_head(p, data);
    int code = store_read_rows_tiered(tv, rq->rows, rq->n_rows, p + head, tiers, msg, msglen);
    if (code != ES_OK) {
        grpc_slice_unref(s);
        static uint64_t last_log;   /* one line a second, whatever the storm */
        if (log_allow(&last_log, 1000000000ull))
            log_error("lookup_read_failed", "table=%s status=%s error=\"%s\"", tv->name,
                      es_code_name(code), msg);
        return code;
    }
    lookup_response_put_tail(p + head + data, tv->row_bytes, tv->version);
    *reply = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return ES_OK;
}

static int lookup_request(server_call *c, request *rq, grpc_byte_buffer **reply,
                          outcome *oc, char *msg, size_t msglen)
{
    if (!rq->table || !*rq->table) {
        snprintf(msg, msglen, "table name is empty");
        return ES_INVALID_ARGUMENT;
    }
    table_version *tv = store_acquire(L.s, rq->table, rq->version);
    if (!tv && rq->version && (tv = store_acquire(L.s, rq->table, 0))) {
        snprintf(msg, msglen, "table \"%.128s\" has no version %llu on this server (active: %llu)",
                 rq->table, (unsigned long long)rq->version, (unsigned long long)tv->version);
        table_version_release(tv);
        oc->known = 1;
        return ES_NOT_FOUND;
    }
    if (!tv) {
        snprintf(msg, msglen, "table \"%.128s\" not found", rq->table);
        return ES_NOT_FOUND;
    }
    int code = validate(rq, tv, msg, msglen);
    store_tiers tiers = {0};
    /* Charged before the reply is built, so a refusal costs no memory. */
    if (code == ES_OK && c)
        code = reply_budget_take(c, (uint64_t)rq->n_rows * tv->row_bytes, msg, msglen);
    if (code == ES_OK)
        code = gather(rq, tv, reply, &tiers, msg, msglen);
    oc->known = 1;
    if (code == ES_OK) {
        oc->bytes = (uint64_t)rq->n_rows * tv->row_bytes;
        oc->tier_rows[STATS_TIER_RESIDENT] = tiers.resident;
        oc->tier_rows[STATS_TIER_HOT] = tiers.hot;
        oc->tier_rows[STATS_TIER_ROCKSDB] = tiers.rocksdb;
    }
    table_version_release(tv);
    return code;
}

uint64_t lookup_in_flight(void)
{
    return __atomic_load_n(&L.in_flight, __ATOMIC_ACQUIRE);
}

/* The request's bytes in one piece: the message's only slice when gRPC
 * delivered it so (no copy), else a flattened copy in *owned. */
static int request_bytes(grpc_byte_buffer *req, grpc_slice *owned, const uint8_t **p, size_t *n)
{
    if (req->type == GRPC_BB_RAW && req->data.raw.compression == GRPC_COMPRESS_NONE &&
        req->data.raw.slice_buffer.count == 1) {
        /* By address: a small slice keeps its bytes inline in the struct. */
        grpc_slice *one = &req->data.raw.slice_buffer.slices[0];
        *p = GRPC_SLICE_START_PTR(*one);
        *n = GRPC_SLICE_LENGTH(*one);
        *owned = grpc_empty_slice();
        return 0;
    }
    grpc_byte_buffer_reader r;
    if (!grpc_byte_buffer_reader_init(&r, req))
        return -1;
    *owned = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    *p = GRPC_SLICE_START_PTR(*owned);
    *n = GRPC_SLICE_LENGTH(*owned);
    return 0;
}

/* Parses req into rq (rows and name in the thread's scratch). */
static int request_parse(grpc_byte_buffer *req, scratch *sc, request *rq, char *msg,
                         size_t msglen)
{
    grpc_slice owned;
    const uint8_t *p;
    size_t n, at;
    const char *err;
    lookup_request_view v;
    if (request_bytes(req, &owned, &p, &n) < 0) {
        snprintf(msg, msglen, "malformed LookupRequest: the message cannot be decompressed");
        return ES_INVALID_ARGUMENT;
    }
    int code = ES_OK;
    int rc = lookup_request_parse(p, n, L.o.max_rows, &v, &sc->rows, &sc->cap, &err, &at);
    if (rc < 0) {
        snprintf(msg, msglen, "malformed LookupRequest: %s (field at byte %zu of %zu)", err, at, n);
        code = ES_INVALID_ARGUMENT;
    } else if (rc > 0) {
        code = refuse_max_rows(v.n_rows, msg, msglen);
    } else if (v.table_len > ENGRAM_NAME_MAX) {
        snprintf(msg, msglen, "table name of %zu bytes is longer than the maximum %d",
                 v.table_len, ENGRAM_NAME_MAX);
        code = ES_INVALID_ARGUMENT;
    } else if (memchr(v.table, 0, v.table_len)) {
        snprintf(msg, msglen, "table name contains a NUL byte");
        code = ES_INVALID_ARGUMENT;
    } else {
        memcpy(sc->table, v.table, v.table_len);
        sc->table[v.table_len] = 0;
        *rq = (request){sc->table, v.rows, v.n_rows, v.version};
    }
    grpc_slice_unref(owned);
    return code;
}

int lookup_handle(server_call *c, grpc_byte_buffer *req, grpc_byte_buffer **reply,
                  char *msg, size_t msglen)
{
    __atomic_add_fetch(&L.in_flight, 1, __ATOMIC_ACQ_REL);
    scratch *sc = scratch_get();
    request rq;
    int code;
    if (!sc) {
        snprintf(msg, msglen, "out of memory");
        code = ES_RESOURCE_EXHAUSTED;
    } else if ((code = request_parse(req, sc, &rq, msg, msglen)) == ES_OK) {
        outcome oc = {0};
        code = lookup_request(c, &rq, reply, &oc, msg, msglen);
        if (oc.known)
            stats_lookup(rq.table, code, oc.bytes, oc.tier_rows, c ? now_ns() - c->start_ns : 0);
    }
    if (sc && sc->cap > SCRATCH_KEEP_ROWS) {
        free(sc->rows);
        sc->rows = NULL;
        sc->cap = 0;
    }
    __atomic_sub_fetch(&L.in_flight, 1, __ATOMIC_ACQ_REL);
    return code;
}
