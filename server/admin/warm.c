/* warm.c: Admin.Warm (see warm.h).
 *
 * What warming does: a table that fits the resident budget is already a
 * dense array in RAM, so reading its rows touches memory that is there
 * (rows_loaded 0). A larger table is served from the hot-row cache
 * (store/hotcache.c) in front of RocksDB: reading the rows through
 * store_read_rows puts each row the cache misses into it, and brings its
 * blocks into RocksDB's block cache, so the lookups that follow are hits
 * instead of reads from disk. rows_loaded counts the rows read from
 * RocksDB; whether a row's block happened to be cached already is not
 * visible per row (the cache counters in Stats show the aggregate effect).
 *
 * Plan, then batches: the request is validated and turned into one target
 * per table (its version pinned, its local rows sorted and de-duplicated)
 * before anything is sent, so a bad row or token fails the call with no
 * progress message. The batches then run as steps of the call on the admin
 * worker: read WARM_BATCH_ROWS rows, send a progress message, and read the
 * next batch when the send completes; other admin calls are served between
 * steps. A client that goes away fails the next send and ends the call.
 *
 * Token mode hashes the tokens as one sequence [1, T] from its start (the
 * positions before it are the pad, as in a prefill), for each layer. */
#include "warm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engram/v1/engram.pb-c.h"
#include "grpc_util.h"
#include "log.h"
#include "manifest.h"
#include "status.h"

#define WARM_BATCH_ROWS 4096
/* Tokens per call: 1 Mi tokens x 256 heads of row ids is 2 GiB at most. */
#define WARM_MAX_TOKENS (1u << 20)

static store *W;

void warm_setup(store *s)
{
    W = s;
}

void warm_teardown(void)
{
    W = NULL;
}

/* ---- the plan ----------------------------------------------------------- */

typedef struct target {
    table_version *tv;
    uint64_t *local;             /* sorted, distinct local rows */
    size_t n;
    size_t done;
    uint64_t loaded;
} target;

typedef struct warm_job {
    target t[EH_MAX_LAYERS];
    int nt;
    int cur;
    uint8_t *buf;                /* one batch of rows */
    uint64_t started_ns;
} warm_job;

static void job_free(void *p)
{
    warm_job *j = p;
    for (int i = 0; i < j->nt; i++) {
        table_version_release(j->t[i].tv);
        free(j->t[i].local);
    }
    free(j->buf);
    free(j);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Adds tv with this shard's rows of the global rows g[0..n) (checked
 * against tv->rows already), as sorted distinct local rows. Takes tv. */
static void add_target(warm_job *j, table_version *tv, const uint64_t *g, size_t n)
{
    uint32_t shards, shard;
    store_shard(W, &shards, &shard);
    target *t = &j->t[j->nt++];
    t->tv = tv;
    t->local = malloc((n ? n : 1) * sizeof *t->local);
    for (size_t i = 0; i < n; i++)
        if (g[i] % shards == shard)
            t->local[t->n++] = g[i] / shards;
    qsort(t->local, t->n, sizeof *t->local, cmp_u64);
    size_t k = 0;
    for (size_t i = 0; i < t->n; i++)
        if (k == 0 || t->local[i] != t->local[k - 1])
            t->local[k++] = t->local[i];
    t->n = k;
}

static int plan_rows(warm_job *j, const Engram__V1__WarmRequest *rq, char *msg, size_t msglen)
{
    table_version *tv = store_acquire(W, rq->table, 0);
    if (!tv) {
        snprintf(msg, msglen, "table \"%.128s\" not found", rq->table);
        return ES_NOT_FOUND;
    }
    for (size_t i = 0; i < rq->n_rows; i++) {
        if (rq->rows[i] >= tv->rows) {
            snprintf(msg, msglen,
                     "row %llu (index %zu in the request) is out of range: table \"%s\" has %llu rows",
                     (unsigned long long)rq->rows[i], i, tv->name, (unsigned long long)tv->rows);
            table_version_release(tv);
            return ES_OUT_OF_RANGE;
        }
    }
    add_target(j, tv, rq->rows, rq->n_rows);
    return ES_OK;
}

/* The model's manifest as stored on this server; NULL with msg and *code. */
static engram_manifest *load_model(const char *name, int *code, char *msg, size_t msglen)
{
    size_t len;
    char *v = store_doc_get(W, STORE_DOC_MANIFEST, name, &len);
    Engram__V1__Manifest *doc = v ? engram__v1__manifest__unpack(NULL, len, (uint8_t *)v) : NULL;
    free(v);
    if (!doc) {
        snprintf(msg, msglen, "model \"%.128s\" not found (no manifest of that name on this server)",
                 name);
        *code = ES_NOT_FOUND;
        return NULL;
    }
    char err[400];
    engram_manifest *m = manifest_parse(doc->json, strlen(doc->json), err, sizeof err);
    engram__v1__manifest__free_unpacked(doc, NULL);
    if (!m) {
        snprintf(msg, msglen, "stored manifest of model \"%.128s\" does not parse: %.300s", name, err);
        *code = ES_INTERNAL;
    }
    return m;
}

/* The layer indexes to warm: the requested ones, or all. */
static int plan_layers(const engram_manifest *m, const Engram__V1__WarmRequest *rq, int *li,
                       int *nl, char *msg, size_t msglen)
{
    *nl = 0;
    if (rq->n_layer_ids == 0) {
        for (int i = 0; i < m->model->n_layers; i++)
            li[(*nl)++] = i;
        return ES_OK;
    }
    for (size_t i = 0; i < rq->n_layer_ids; i++) {
        int x = eh_layer_index(m->model, rq->layer_ids[i]);
        if (x < 0) {
            snprintf(msg, msglen, "layer %lld (index %zu in the request) is not a layer of model \"%s\"",
                     (long long)rq->layer_ids[i], i, m->name);
            return ES_INVALID_ARGUMENT;
        }
        int dup = 0;
        for (int k = 0; k < *nl; k++)
            dup |= li[k] == x;
        if (!dup)
            li[(*nl)++] = x;
    }
    return ES_OK;
}

/* Hashes the tokens for layer index li and adds its table. */
static int plan_layer(warm_job *j, const engram_manifest *m, int li,
                      const Engram__V1__WarmRequest *rq, uint64_t *ids, char *msg, size_t msglen)
{
    const char *table = m->tables[li];
    int64_t layer = m->model->layers[li].layer_id;
    table_version *tv = store_acquire(W, table, 0);
    if (!tv) {
        snprintf(msg, msglen, "table \"%s\" of model \"%s\" (layer %lld) not found", table, m->name,
                 (long long)layer);
        return ES_NOT_FOUND;
    }
    if (manifest_check_table(m, li, tv->rows, tv->row_bytes, tv->dim, tv->dtype, msg, msglen)) {
        table_version_release(tv);
        return ES_FAILED_PRECONDITION;
    }
    if (eh_hash(m->model, li, rq->tokens, 1, rq->n_tokens, NULL, ids, msg, msglen)) {
        table_version_release(tv);
        return ES_INVALID_ARGUMENT;
    }
    add_target(j, tv, ids, rq->n_tokens * (size_t)m->model->heads);
    return ES_OK;
}

static int plan_tokens(warm_job *j, const Engram__V1__WarmRequest *rq, char *msg, size_t msglen)
{
    if (rq->n_tokens > WARM_MAX_TOKENS) {
        snprintf(msg, msglen, "%zu tokens is more than the %u one Warm call takes", rq->n_tokens,
                 WARM_MAX_TOKENS);
        return ES_INVALID_ARGUMENT;
    }
    int code = ES_OK;
    engram_manifest *m = load_model(rq->model, &code, msg, msglen);
    if (!m)
        return code;
    int li[EH_MAX_LAYERS], nl;
    code = plan_layers(m, rq, li, &nl, msg, msglen);
    uint64_t *ids = malloc(rq->n_tokens * (size_t)m->model->heads * sizeof *ids);
    for (int i = 0; i < nl && code == ES_OK; i++)
        code = plan_layer(j, m, li[i], rq, ids, msg, msglen);
    free(ids);
    manifest_free(m);
    return code;
}

static int plan(warm_job *j, const Engram__V1__WarmRequest *rq, char *msg, size_t msglen)
{
    int has_table = *rq->table != 0, has_model = *rq->model != 0;
    if (has_table == has_model) {
        snprintf(msg, msglen, has_table ? "give a table or a model, not both (table \"%.128s\", "
                 "model \"%.128s\")" : "give a table with rows or a model with tokens",
                 rq->table, rq->model);
        return ES_INVALID_ARGUMENT;
    }
    if (has_table && (rq->n_rows == 0 || rq->n_tokens || rq->n_layer_ids)) {
        snprintf(msg, msglen, "warming table \"%.128s\" takes rows (got %zu rows, %zu tokens, "
                 "%zu layer ids)", rq->table, rq->n_rows, rq->n_tokens, rq->n_layer_ids);
        return ES_INVALID_ARGUMENT;
    }
    if (has_model && (rq->n_tokens == 0 || rq->n_rows)) {
        snprintf(msg, msglen, "warming model \"%.128s\" takes tokens (got %zu tokens, %zu rows)",
                 rq->model, rq->n_tokens, rq->n_rows);
        return ES_INVALID_ARGUMENT;
    }
    return has_table ? plan_rows(j, rq, msg, msglen) : plan_tokens(j, rq, msg, msglen);
}

/* ---- the batches ---------------------------------------------------------- */

static grpc_byte_buffer *progress(const char *table, uint64_t done, uint64_t total,
                                  uint64_t loaded, int last)
{
    Engram__V1__WarmProgress p = ENGRAM__V1__WARM_PROGRESS__INIT;
    p.table = (char *)table;
    p.rows_done = done;
    p.rows_total = total;
    p.rows_loaded = loaded;
    p.done = last != 0;
    return pb_to_byte_buffer(&p.base);
}

static void on_last_sent(server_call *c, int ok)
{
    if (ok)
        call_finish(c, ES_OK, NULL, NULL);
    else
        call_finish(c, ES_CANCELLED, "the Warm client went away", NULL);
}

/* The last message: every table's rows together, table "". */
static void finish_job(server_call *c, warm_job *j)
{
    uint64_t done = 0, loaded = 0;
    for (int i = 0; i < j->nt; i++) {
        done += j->t[i].done;
        loaded += j->t[i].loaded;
    }
    log_info("warm_done", "tables=%d rows=%llu rows_loaded=%llu ms=%.1f", j->nt,
             (unsigned long long)done, (unsigned long long)loaded,
             (double)(now_ns() - j->started_ns) / 1e6);
    call_send(c, progress("", done, done, loaded, 1), on_last_sent);
}

/* Reads the next batch and sends its progress (or the last message). */
static void step(server_call *c, int ok)
{
    warm_job *j = c->state;
    if (!ok) {
        call_finish(c, ES_CANCELLED, "the Warm client went away", NULL);
        return;
    }
    while (j->cur < j->nt && j->t[j->cur].done == j->t[j->cur].n)
        j->cur++;
    if (j->cur == j->nt) {
        finish_job(c, j);
        return;
    }
    target *t = &j->t[j->cur];
    size_t k = t->n - t->done < WARM_BATCH_ROWS ? t->n - t->done : WARM_BATCH_ROWS;
    char msg[512];
    int code = store_read_rows(t->tv, t->local + t->done, k, j->buf, msg, sizeof msg);
    if (code != ES_OK) {
        call_finish(c, code, msg, NULL);
        return;
    }
    t->done += k;
    t->loaded += t->tv->resident ? 0 : k;
    call_send(c, progress(t->tv->name, t->done, t->n, t->loaded, 0), step);
}

void warm_stream(server_call *c)
{
    char msg[512] = "";
    char why[160] = "no message";
    Engram__V1__WarmRequest *rq = c->payload ? (Engram__V1__WarmRequest *)pb_unpack(
        &engram__v1__warm_request__descriptor, c->payload, why, sizeof why) : NULL;
    if (!rq) {
        snprintf(msg, sizeof msg, "malformed WarmRequest: %s", why);
        call_finish(c, ES_INVALID_ARGUMENT, msg, NULL);
        return;
    }
    warm_job *j = calloc(1, sizeof *j);
    j->started_ns = now_ns();
    c->state = j;
    c->state_free = job_free;
    int code = plan(j, rq, msg, sizeof msg);
    protobuf_c_message_free_unpacked(&rq->base, NULL);
    if (code != ES_OK) {
        call_finish(c, code, msg, NULL);
        return;
    }
    uint32_t row_bytes = 1;
    for (int i = 0; i < j->nt; i++)
        if (j->t[i].tv->row_bytes > row_bytes)
            row_bytes = j->t[i].tv->row_bytes;
    j->buf = malloc((size_t)WARM_BATCH_ROWS * row_bytes);
    step(c, 1);
}
