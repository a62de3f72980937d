/* prefetch.c: asynchronous Engram prefetch: token ids in, [B, T, heads, D]
 * rows out, ahead of the layer that needs them.
 *
 * A prefetch goes through three steps:
 *   1. hash (on the caller's thread, or the model's worker when asked):
 *      every layer's global row ids for [B, T, heads], keeping the heads
 *      asked for;
 *   2. de-duplicate within the call (on real text about a third of a
 *      batch's rows repeat) and send the unique rows of every layer at
 *      once, in chunks, as asynchronous lookups through the client's
 *      router, each told where its rows go in the caller's buffer (ec_dest:
 *      every output row that asked for a unique row, BF16 when
 *      dequantising): the replies are written there as they arrive, the one
 *      copy of every row (rows.c);
 *   3. on wait, collect the chunks and check each layer's rows all came
 *      from one table version. engram_prefetch_wait_layer does this for
 *      one layer, so a worker blocks before an Engram layer only for that
 *      layer's rows, while later layers are still being hashed and their
 *      rows are still arriving.
 * Steps 1-2 run layer by layer (nsent counts the layers done), so the
 * first Engram layer's rows are on their way, or already in out when the
 * same-node path (local.c) copied them on this thread, before the next
 * layer is hashed.
 * A layer is OK only when every chunk of it arrived OK from one version, so
 * an error can never hide behind rows of zeros; on an error the output is
 * not to be used (engram.h), whatever its rows hold. */
#include "client_internal.h"

#include "dtype.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct pf_layer {
    int li;                      /* index in the model */
    int64_t id;                  /* the layer id asked for */
    int ready;                   /* collected and scattered into out */
    uint64_t *uniq;              /* unique rows, in first-seen order */
    size_t nuniq;
    /* The output rows of unique row u: idx[first[u] .. first[u+1]). */
    uint32_t *first, *idx;
    engram_lookup **calls;
    size_t ncalls;
} pf_layer;

struct engram_prefetch {
    engram_model *m;
    size_t B, T, nheads;
    uint32_t heads[EH_MAX_HEADS];
    size_t nlayers;
    pf_layer *layers;
    int64_t *tokens, *history;   /* owned copies for async hashing */
    uint8_t *out;
    int dequant;                 /* ENGRAM_PREFETCH_DEQUANT_BF16: out holds BF16 */
    size_t out_rb;               /* bytes of one output row: row_bytes, or dim x 2 */
    struct engram_prefetch *next;

    pthread_mutex_t mu;          /* guards the fields below */
    pthread_cond_t cv;
    size_t nsent;                /* layers [0, nsent) are through steps 1-2 */
    int sent;                    /* steps 1-2 over for every layer (even if failed) */
    int cancelled;
    int finished;
    int code;
    char message[sizeof(((engram_error *)0)->message)];
};

static size_t rows_per_layer(const engram_prefetch *p)
{
    return p->B * p->T * p->nheads;
}

/* Records the first error; later ones keep the first's code and message.
 * Takes p->mu: the hashing thread and a waiter of an earlier layer may
 * both fail the prefetch. */
static void set_error(engram_prefetch *p, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_error(engram_prefetch *p, int code, const char *fmt, ...)
{
    pthread_mutex_lock(&p->mu);
    if (!p->code) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(p->message, sizeof p->message, fmt, ap);
        va_end(ap);
        p->code = code;
    }
    pthread_mutex_unlock(&p->mu);
}

static int error_code(engram_prefetch *p)
{
    pthread_mutex_lock(&p->mu);
    int code = p->code;
    pthread_mutex_unlock(&p->mu);
    return code;
}

/* ---- step 1 and 2: hash, de-duplicate, send -------------------------------- */

/* Open addressing over row + 1 (0 marks an empty slot); then each unique
 * row's output rows, grouped (a counting sort of slot[]). */
static void dedupe(pf_layer *l, const uint64_t *rows, size_t n)
{
    size_t cap = 16;
    while (cap < 2 * n)
        cap <<= 1;
    uint64_t *keys = calloc(cap, sizeof *keys);
    uint32_t *vals = malloc(cap * sizeof *vals);
    uint32_t *slot = malloc(n * sizeof *slot);
    l->uniq = malloc(n * sizeof *l->uniq);
    l->nuniq = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t k = rows[i] + 1;
        size_t h = (size_t)((k * 0x9E3779B97F4A7C15ULL) >> 20) & (cap - 1);
        while (keys[h] && keys[h] != k)
            h = (h + 1) & (cap - 1);
        if (!keys[h]) {
            keys[h] = k;
            vals[h] = (uint32_t)l->nuniq;
            l->uniq[l->nuniq++] = rows[i];
        }
        slot[i] = vals[h];
    }
    free(keys);
    free(vals);
    l->first = calloc(l->nuniq + 1, sizeof *l->first);
    l->idx = malloc(n * sizeof *l->idx);
    for (size_t i = 0; i < n; i++)
        l->first[slot[i] + 1]++;
    for (size_t u = 0; u < l->nuniq; u++)
        l->first[u + 1] += l->first[u];
    for (size_t i = 0; i < n; i++)    /* first[u] runs ahead, then is put back */
        l->idx[l->first[slot[i]]++] = (uint32_t)i;
    for (size_t u = l->nuniq; u > 0; u--)
        l->first[u] = l->first[u - 1];
    l->first[0] = 0;
    free(slot);
}

/* Keeps the requested heads of [B*T, heads] rows, in the order asked. */
static void select_heads(const engram_prefetch *p, const uint64_t *all, int heads, uint64_t *sel)
{
    size_t bt = p->B * p->T;
    for (size_t i = 0; i < bt; i++)
        for (size_t j = 0; j < p->nheads; j++)
            sel[i * p->nheads + j] = all[i * (size_t)heads + p->heads[j]];
}

static int hash_layer(engram_prefetch *p, pf_layer *l)
{
    const eh_model *h = p->m->man->model;
    size_t bt = p->B * p->T;
    uint64_t *all = malloc(bt * (size_t)h->heads * sizeof *all);
    uint64_t *sel = malloc(rows_per_layer(p) * sizeof *sel);
    char why[400];
    int rc = eh_hash(h, l->li, p->tokens, p->B, p->T, p->history, all, why, sizeof why);
    if (rc == 0) {
        select_heads(p, all, h->heads, sel);
        dedupe(l, sel, rows_per_layer(p));
    } else {
        set_error(p, ENGRAM_INVALID_ARGUMENT, "%s", why);
    }
    free(all);
    free(sel);
    return rc;
}

static size_t chunk_rows(const engram_prefetch *p)
{
    size_t rb = p->m->man->row_bytes;
    size_t by_msg = ((size_t)p->m->client->max_message_bytes - 64) / rb;
    size_t want = (size_t)p->m->client->opts.prefetch_chunk_rows;
    return by_msg < want ? (by_msg ? by_msg : 1) : want;
}

/* Layer i's lookups, each writing its rows straight to their places in
 * the layer's part of out. */
static void send_layer(engram_prefetch *p, size_t i)
{
    pf_layer *l = &p->layers[i];
    size_t per = chunk_rows(p), n_out = rows_per_layer(p);
    const char *table = p->m->man->tables[l->li];
    l->ncalls = (l->nuniq + per - 1) / per;
    l->calls = calloc(l->ncalls + 1, sizeof *l->calls);
    ec_dest dest = {
        .out = p->out + i * n_out * p->out_rb,
        .out_cap = n_out * p->out_rb,
        .out_rb = p->out_rb,
        .row_bytes = p->m->man->row_bytes,
        .idx = l->idx,
        .dequant_dim = p->dequant ? p->m->man->dim : 0,
    };
    for (size_t c = 0; c < l->ncalls; c++) {
        size_t off = c * per, n = l->nuniq - off < per ? l->nuniq - off : per;
        engram_error e;
        dest.first = l->first + off;   /* chunk row j is unique row off + j */
        int rc = ec_lookup_start_dest(p->m->client, table, l->uniq + off, n, &dest, &l->calls[c],
                                      &e);
        if (rc) {
            set_error(p, rc, "table %s: %s", table, e.message);
            return;
        }
    }
}

static void hash_and_send(engram_prefetch *p)
{
    for (size_t i = 0; i < p->nlayers; i++) {
        pthread_mutex_lock(&p->mu);
        int stop = p->cancelled || p->code;
        pthread_mutex_unlock(&p->mu);
        if (stop)
            break;
        if (hash_layer(p, &p->layers[i]) == 0)
            send_layer(p, i);
        pthread_mutex_lock(&p->mu);
        p->nsent = i + 1;   /* a waiter of layer i may go on */
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
    pthread_mutex_lock(&p->mu);
    p->nsent = p->nlayers;
    p->sent = 1;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

/* ---- the model's worker (ENGRAM_PREFETCH_HASH_ASYNC) ------------------------ */

/* Hashes and sends the model's queued prefetches in order, one thread per
 * model, started on first use; it lives here, with what it runs, and
 * model.c only stops it (ec_model_stop_worker). */
static void *worker_main(void *arg)
{
    engram_model *m = arg;
    pthread_mutex_lock(&m->mu);
    for (;;) {
        while (!m->queue_head && !m->stopping)
            pthread_cond_wait(&m->cv, &m->mu);
        engram_prefetch *p = m->queue_head;
        if (!p)
            break;               /* stopping and drained */
        m->queue_head = p->next;
        if (!m->queue_head)
            m->queue_tail = NULL;
        pthread_mutex_unlock(&m->mu);
        hash_and_send(p);
        pthread_mutex_lock(&m->mu);
    }
    pthread_mutex_unlock(&m->mu);
    return NULL;
}

static void enqueue(engram_model *m, engram_prefetch *p)
{
    pthread_mutex_lock(&m->mu);
    if (!m->worker_started) {
        pthread_create(&m->worker, NULL, worker_main, m);
        m->worker_started = 1;
    }
    p->next = NULL;
    if (m->queue_tail)
        m->queue_tail->next = p;
    else
        m->queue_head = p;
    m->queue_tail = p;
    pthread_cond_signal(&m->cv);
    pthread_mutex_unlock(&m->mu);
}

void ec_model_stop_worker(engram_model *m)
{
    pthread_mutex_lock(&m->mu);
    m->stopping = 1;
    pthread_cond_broadcast(&m->cv);
    pthread_mutex_unlock(&m->mu);
    if (m->worker_started)
        pthread_join(m->worker, NULL);
}

/* ---- start --------------------------------------------------------------- */

static int check_request(const engram_model *m, const engram_prefetch_request *r,
                         engram_error *err)
{
    const eh_model *h = m->man->model;
    if (!r->layer_ids || !r->n_layers || !r->tokens || !r->out)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "layer_ids, tokens and out are required");
    if (!r->batch || !r->seq_len)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "batch %zu x seq_len %zu is empty",
                        r->batch, r->seq_len);
    if (r->seq_len > (size_t)m->client->max_prefetch_tokens / r->batch)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT,
                        "batch %zu x seq_len %zu tokens exceeds the limit of %lld tokens per prefetch",
                        r->batch, r->seq_len, (long long)m->client->max_prefetch_tokens);
    for (size_t i = 0; i < r->n_layers; i++)
        if (eh_layer_index(h, r->layer_ids[i]) < 0)
            return ec_error(err, ENGRAM_INVALID_ARGUMENT, "layer %lld is not a layer of model %s",
                            (long long)r->layer_ids[i], m->man->name);
    if (r->heads && (r->n_heads == 0 || r->n_heads > EH_MAX_HEADS))
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "n_heads %zu outside 1..%d",
                        r->n_heads, EH_MAX_HEADS);
    for (size_t j = 0; r->heads && j < r->n_heads; j++)
        if (r->heads[j] >= (uint32_t)h->heads)
            return ec_error(err, ENGRAM_INVALID_ARGUMENT, "head %u is out of range: model %s has %d heads",
                            r->heads[j], m->man->name, h->heads);
    if ((r->flags & ENGRAM_PREFETCH_DEQUANT_BF16) && strcmp(m->man->dtype, DTYPE_MXFP8_E4M3) != 0)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT,
                        "ENGRAM_PREFETCH_DEQUANT_BF16 needs rows of dtype %s; model %s holds %s",
                        DTYPE_MXFP8_E4M3, m->man->name, m->man->dtype);
    size_t need = engram_prefetch_out_bytes(m, r);
    if (r->out_cap < need)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT,
                        "out_cap %zu is smaller than the %zu bytes the output needs", r->out_cap, need);
    return ENGRAM_OK;
}

void engram_prefetch_request_init(engram_prefetch_request *req)
{
    memset(req, 0, sizeof *req);
    req->struct_size = sizeof *req;
}

/* The caller's request as this library lays it out (see structs.c). */
static int read_request(engram_prefetch_request *dst, const engram_prefetch_request *req,
                        engram_error *err)
{
    engram_prefetch_request_init(dst);
    return ec_struct_read(dst, sizeof *dst, ec_prefetch_request_v1, req, "engram_prefetch_request",
                          err);
}

/* One output row: the stored row, or its dim values as BF16. */
static size_t out_row_bytes(const engram_model *m, unsigned flags)
{
    return flags & ENGRAM_PREFETCH_DEQUANT_BF16 ? (size_t)m->man->dim * 2 : m->man->row_bytes;
}

size_t engram_prefetch_out_bytes(const engram_model *m, const engram_prefetch_request *req)
{
    engram_prefetch_request rq, *r = &rq;
    if (!m || !req || read_request(&rq, req, NULL))
        return 0;
    size_t heads = r->heads ? r->n_heads : (size_t)m->man->model->heads;
    return r->n_layers * r->batch * r->seq_len * heads * out_row_bytes(m, r->flags);
}

static engram_prefetch *prefetch_new(engram_model *m, const engram_prefetch_request *r)
{
    engram_prefetch *p = calloc(1, sizeof *p);
    pf_layer *layers = p ? calloc(r->n_layers, sizeof *p->layers) : NULL;
    if (!layers) {
        free(p);
        return NULL;
    }
    p->m = m;
    p->dequant = (r->flags & ENGRAM_PREFETCH_DEQUANT_BF16) != 0;
    p->out_rb = out_row_bytes(m, r->flags);
    p->B = r->batch;
    p->T = r->seq_len;
    p->nheads = r->heads ? r->n_heads : (size_t)m->man->model->heads;
    for (size_t j = 0; j < p->nheads; j++)
        p->heads[j] = r->heads ? r->heads[j] : (uint32_t)j;
    p->nlayers = r->n_layers;
    p->layers = layers;
    for (size_t i = 0; i < r->n_layers; i++)
    {
        p->layers[i].li = eh_layer_index(m->man->model, r->layer_ids[i]);
        p->layers[i].id = r->layer_ids[i];
    }
    p->out = r->out;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    return p;
}

static int copy_tokens(engram_prefetch *p, const engram_prefetch_request *r)
{
    size_t bt = p->B * p->T, hl = p->B * (size_t)(p->m->man->model->max_ngram - 1);
    if (!(p->tokens = malloc(bt * sizeof *p->tokens)))
        return -1;
    memcpy(p->tokens, r->tokens, bt * sizeof *p->tokens);
    if (r->history) {
        if (!(p->history = malloc(hl * sizeof *p->history)))
            return -1;
        memcpy(p->history, r->history, hl * sizeof *p->history);
    }
    return 0;
}

int engram_prefetch_start(engram_model *m, const engram_prefetch_request *req,
                          engram_prefetch **handle, engram_error *err)
{
    if (!m || !req || !handle)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "model, request or handle is NULL");
    engram_prefetch_request rq, *r = &rq;
    int rc = read_request(&rq, req, err);
    if (!rc)
        rc = check_request(m, r, err);
    if (rc)
        return rc;
    engram_prefetch *p = prefetch_new(m, r);
    if (!p)
        return ec_error(err, ENGRAM_RESOURCE_EXHAUSTED, "out of memory starting a prefetch");
    if (r->flags & ENGRAM_PREFETCH_HASH_ASYNC) {
        if (copy_tokens(p, r)) {
            engram_prefetch_free(p);
            return ec_error(err, ENGRAM_RESOURCE_EXHAUSTED, "out of memory copying %zu tokens",
                            r->batch * r->seq_len);
        }
        enqueue(m, p);
        *handle = p;
        return ec_ok(err);
    }
    p->tokens = (int64_t *)r->tokens;    /* only read until hash_and_send returns */
    p->history = (int64_t *)r->history;
    hash_and_send(p);
    p->tokens = p->history = NULL;
    if (p->code == ENGRAM_INVALID_ARGUMENT) {   /* bad tokens: report at start (no other thread) */
        rc = ec_error(err, p->code, "%s", p->message);
        engram_prefetch_free(p);
        return rc;
    }
    *handle = p;
    return ec_ok(err);
}

/* ---- step 3: wait, check, scatter ------------------------------------------ */

static struct timespec deadline_after(int64_t ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (ms % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    return ts;
}

static int64_t ms_left(const struct timespec *dl)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    int64_t ms = (dl->tv_sec - now.tv_sec) * 1000 + (dl->tv_nsec - now.tv_nsec) / 1000000;
    return ms < 0 ? 0 : ms;
}

/* Layers [0, upto) are through steps 1-2; for all of them, the hashing
 * thread is also done with p (`sent`): nsent reaches nlayers a moment
 * before, and a waiter of every layer may free p next (p->mu held). */
static int sent_enough(const engram_prefetch *p, size_t upto)
{
    return p->nsent >= upto && (upto < p->nlayers || p->sent);
}

/* Waits until sent_enough; 0, or ENGRAM_TIMEOUT. */
static int wait_sent(engram_prefetch *p, size_t upto, int64_t timeout_ms)
{
    pthread_mutex_lock(&p->mu);
    while (!sent_enough(p, upto)) {
        if (timeout_ms < 0) {
            pthread_cond_wait(&p->cv, &p->mu);
            continue;
        }
        struct timespec rt;            /* cond uses the realtime clock */
        clock_gettime(CLOCK_REALTIME, &rt);
        int64_t ns = rt.tv_nsec + (timeout_ms % 1000) * 1000000;
        rt.tv_sec += timeout_ms / 1000 + ns / 1000000000;
        rt.tv_nsec = ns % 1000000000;
        if (pthread_cond_timedwait(&p->cv, &p->mu, &rt) != 0 && !sent_enough(p, upto)) {
            pthread_mutex_unlock(&p->mu);
            return ENGRAM_TIMEOUT;
        }
    }
    pthread_mutex_unlock(&p->mu);
    return ENGRAM_OK;
}

/* Waits for every chunk of one layer and checks they agree on the table
 * version: a prefetch never mixes rows of two versions. */
static int collect_layer(engram_prefetch *p, pf_layer *l, int64_t timeout_ms,
                         const struct timespec *dl)
{
    const char *table = p->m->man->tables[l->li];
    uint64_t version = 0;
    for (size_t c = 0; c < l->ncalls; c++) {
        engram_error e;
        int rc = engram_lookup_wait(l->calls[c], timeout_ms < 0 ? -1 : ms_left(dl), &e);
        if (rc == ENGRAM_TIMEOUT)
            return rc;
        if (rc) {
            set_error(p, rc, "table %s: %s", table, e.message);
            return rc;
        }
        uint32_t rb;
        uint64_t v;
        engram_lookup_result(l->calls[c], &rb, &v);
        if (c == 0)
            version = v;
        if (v != version) {
            set_error(p, ENGRAM_ABORTED, "table %s changed version (%llu -> %llu) during the prefetch; retry",
                      table, (unsigned long long)version, (unsigned long long)v);
            return ENGRAM_ABORTED;
        }
    }
    return ENGRAM_OK;
}

/* Layer i collected (once): its rows are in out. ENGRAM_OK, ENGRAM_TIMEOUT,
 * or the error that failed the prefetch. */
static int layer_ready(engram_prefetch *p, size_t i, int64_t timeout_ms, const struct timespec *dl)
{
    pf_layer *l = &p->layers[i];
    if (l->ready)
        return ENGRAM_OK;
    int rc = collect_layer(p, l, timeout_ms, dl);
    if (rc)
        return rc;
    l->ready = 1;
    return ENGRAM_OK;
}

static int finish(engram_prefetch *p, engram_error *err)
{
    pthread_mutex_lock(&p->mu);
    p->finished = 1;
    int code = p->code;
    pthread_mutex_unlock(&p->mu);
    return code ? ec_error(err, code, "%s", p->message) : ec_ok(err);
}

/* Waits for the layers whose id is `only` (all layers when want_all). */
static int wait_layers(engram_prefetch *p, int want_all, int64_t only, int64_t timeout_ms,
                       engram_error *err)
{
    struct timespec dl = deadline_after(timeout_ms < 0 ? 0 : timeout_ms);
    size_t upto = want_all ? p->nlayers : 0;   /* the layers that must be sent */
    for (size_t i = 0; !want_all && i < p->nlayers; i++)
        if (p->layers[i].id == only)
            upto = i + 1;
    if (wait_sent(p, upto, timeout_ms) == ENGRAM_TIMEOUT)
        return ec_error(err, ENGRAM_TIMEOUT, "prefetch still hashing");
    if (p->finished || error_code(p))
        return finish(p, err);
    for (size_t i = 0; i < p->nlayers; i++) {
        if (!want_all && p->layers[i].id != only)
            continue;
        int rc = layer_ready(p, i, timeout_ms, &dl);
        if (rc == ENGRAM_TIMEOUT)
            return ec_error(err, ENGRAM_TIMEOUT, "prefetch still in flight");
        if (rc)
            return finish(p, err);
    }
    return want_all ? finish(p, err) : ec_ok(err);
}

int engram_prefetch_wait(engram_prefetch *p, int64_t timeout_ms, engram_error *err)
{
    if (!p)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "handle is NULL");
    return wait_layers(p, 1, 0, timeout_ms, err);
}

int engram_prefetch_wait_layer(engram_prefetch *p, int64_t layer_id, int64_t timeout_ms,
                               engram_error *err)
{
    if (!p)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "handle is NULL");
    size_t i = 0;
    while (i < p->nlayers && p->layers[i].id != layer_id)
        i++;
    if (i == p->nlayers)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "layer %lld is not in this prefetch",
                        (long long)layer_id);
    return wait_layers(p, 0, layer_id, timeout_ms, err);
}

int engram_prefetch_poll(engram_prefetch *p)
{
    pthread_mutex_lock(&p->mu);
    int done = p->sent && (p->finished || p->code);
    int sent = p->sent;
    pthread_mutex_unlock(&p->mu);
    if (done || !sent)
        return done;
    for (size_t i = 0; i < p->nlayers; i++)
        for (size_t c = 0; c < p->layers[i].ncalls; c++)
            if (!engram_lookup_poll(p->layers[i].calls[c]))
                return 0;
    return 1;
}

static void free_calls(engram_prefetch *p)
{
    for (size_t i = 0; i < p->nlayers; i++) {
        pf_layer *l = &p->layers[i];
        for (size_t c = 0; c < l->ncalls; c++)
            engram_lookup_free(l->calls[c]);     /* cancels if in flight */
        free(l->calls);
        l->calls = NULL;
        l->ncalls = 0;
    }
}

void engram_prefetch_cancel(engram_prefetch *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->cancelled = 1;
    pthread_mutex_unlock(&p->mu);
    wait_sent(p, p->nlayers, -1);   /* the worker lets go of p */
    if (p->finished)
        return;
    free_calls(p);
    set_error(p, ENGRAM_CANCELLED, "prefetch cancelled");
    p->finished = 1;
}

void engram_prefetch_free(engram_prefetch *p)
{
    if (!p)
        return;
    engram_prefetch_cancel(p);
    free_calls(p);
    for (size_t i = 0; i < p->nlayers; i++) {
        free(p->layers[i].uniq);
        free(p->layers[i].first);
        free(p->layers[i].idx);
    }
    free(p->layers);
    free(p->tokens);
    free(p->history);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p);
}
