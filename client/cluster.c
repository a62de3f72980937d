/* cluster.c: libengram as a cluster client: discovery, version pinning,
 * per-shard fan-out, replica health, failover and hedging.
 *
 * Who does what (nothing depends on the caller calling wait):
 *
 *  - The caller's thread, in engram_lookup_start: discovery (once per
 *    client, over the bootstrap channel), the table's pinned version (one
 *    blocking GetTable when the cached one is older than
 *    version_refresh_ms), the split by shard, and the first attempt of
 *    every sub-request.
 *  - The client's completion thread (client.c), for every finished
 *    attempt: decode the reply into a scratch buffer and scatter its rows
 *    into the caller's `out` (attempt_decode), then decide (attempt_done):
 *    success (cancel the sub-request's other attempt, and count a lost
 *    hedge against the replica tried first), failover (start the
 *    next replica's attempt right there, a non-blocking call), a fatal
 *    error (cancel the lookup's other attempts), or a re-pin.
 *  - The cluster thread (one per cluster client, cluster_thread): hedging
 *    and re-pins. It sleeps in a timed wait until the earliest moment an
 *    outstanding sub-request becomes due for a hedge (or until a lookup
 *    starts or a re-pin is queued), and runs re-pins, which need a
 *    blocking GetTable the completion thread must not wait for.
 *  - A stale version pin is refreshed by an asynchronous GetTable whose
 *    completion (refresh_done, on the completion thread) updates the pin
 *    or sends the next replica's; lookups meanwhile use the pinned one.
 *  - Attempt deadlines need no timer: every attempt carries its own gRPC
 *    deadline, min(left of the caller's deadline_ms, attempt_timeout_ms),
 *    so a hung replica completes as DEADLINE_EXCEEDED on the completion
 *    thread and fails over like any other failure.
 *
 * A sub-request tries each replica of its shard at most once (hedges
 * included); the lookup fails when all of them failed or its deadline
 * passed, naming the shard and its replicas.
 *
 * Locking: one mutex per cluster, cs->mu, guards replica health and
 * round-robin cursors, the version cache, the latency window, the list of
 * active lookups, the re-pin queue and every routed lookup's sub-request
 * and attempt state. Lock order: cs->mu, then an attempt's ec_call mu
 * (cancel) or client->mu (ec_call_start links the call), or a lookup's
 * own mu (which only publishes `done` to waiters). client.c never calls
 * in here while holding one of its locks, so there is no cycle. A lookup
 * is finished (done) only when none of its attempts is in flight and no
 * re-pin is queued: after that nothing but its owner touches it or `out`.
 */
#include "client_internal.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <grpc/byte_buffer.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>

#include "cluster.h"
#include "grpc_util.h"
#include "methods.h"
#include "wire.h"

#define LAT_WINDOW 1024         /* recent sub-request latencies kept */
#define HEDGE_MIN_SAMPLES 20    /* no hedging on fewer samples than this */
#define BACKOFF_MAX_MS 30000
#define MS 1000000LL            /* ns per ms */

enum { SUB_PENDING = 0, SUB_OK = 1 };

typedef struct replica {
    char addr[CLUSTER_ADDR_MAX + 1];
    uint32_t shard, idx;         /* idx: position in its shard */
    grpc_channel *ch;
    void *m_lookup, *m_get_table;
    /* health, under cs->mu */
    uint32_t fails;              /* consecutive */
    uint32_t hedge_losses;       /* consecutive: tried first, a hedge answered */
    int ejected;                 /* until eject_until; then probed */
    int probing;                 /* a probe is in flight */
    int64_t eject_until, ejected_at;
    int64_t backoff_ms;          /* length of the next ejection */
} replica;

typedef struct shard {
    uint32_t n;
    replica *rep[CLUSTER_MAX_REPLICAS];
    uint32_t rr;                 /* round-robin cursor */
} shard;

/* A table's pinned version. */
typedef struct vpin {
    struct vpin *next;
    char *table;
    uint64_t version, rows;
    uint32_t row_bytes;
    int64_t at;                  /* when resolved (monotonic ns) */
    int valid, resolving;        /* resolving: a GetTable for it is out */
} vpin;

struct ec_cluster {
    engram_client *cl;
    const engram_client_options *o;
    uint32_t nshards;
    shard *shards;
    replica *reps;
    size_t nreps;
    uint32_t resolve_rr;

    pthread_mutex_t mu;
    pthread_cond_t cv;           /* wakes the cluster thread */
    pthread_cond_t vcv;          /* a version resolve ended */
    pthread_t thread;
    int stopping;
    vpin *pins;
    uint32_t lat_us[LAT_WINDOW];
    size_t lat_n, lat_pos, lat_new;
    int64_t hedge_ns;            /* cached threshold; < 0: not computed */
    ec_clookup *active;          /* unfinished lookups */
    ec_clookup *jobs;            /* lookups waiting for a re-pin */
};

typedef struct sub {
    ec_clookup *lk;
    uint32_t shard;
    size_t n;
    uint64_t *rows;              /* this shard's rows, request order */
    uint32_t *pos;               /* their indexes in the caller's request */
    grpc_slice req;              /* packed LookupRequest, shared by attempts */
    int state;
    uint32_t tried;              /* replicas (bit idx) tried this round */
    uint32_t inflight, attempts;
    int hedged;
    int64_t last_sent;
    int last_code;
    char last_msg[256];
} sub;

typedef struct attempt {
    ec_call c;                   /* first: the hooks cast back */
    sub *s;
    replica *r;
    int64_t sent;
    int hedge, probe;
    int cancelled;               /* by us: hedge lost, lookup failed or freed */
    int decoded;                 /* its rows were scattered into out */
    int superseded;              /* answered, but nobody wanted it any more */
    struct attempt *prev, *next; /* lk->attempts */
} attempt;

struct ec_clookup {
    ec_cluster *cs;
    char *table;
    uint8_t *out;
    size_t out_cap, n, rb_max;
    uint64_t version;
    uint32_t row_bytes;
    int64_t deadline, deadline_ms;   /* monotonic ns, 0: none */
    uint64_t *rows;
    uint32_t *pos;
    sub *subs;
    uint32_t nsubs, subs_left;
    attempt *attempts;               /* in flight */
    uint32_t outstanding;            /* attempts in flight + a queued re-pin */
    int failed, code;
    char message[sizeof(((engram_error *)0)->message)];
    int need_repin, repinned, queued;
    ec_clookup *prev, *next;         /* cs->active */
    ec_clookup *job_next;
    int listed;

    pthread_mutex_t mu;              /* publishes done */
    pthread_cond_t cv;
    int done;
};

static int64_t mono_now(void)
{
    return (int64_t)now_ns();
}

static void count(ec_cluster *cs, uint64_t *field, uint64_t k)
{
    (void)cs;
    __atomic_add_fetch(field, k, __ATOMIC_RELAXED);
}

static int retryable(const ec_call *c)
{
    return c->code == ENGRAM_UNAVAILABLE || c->code == ENGRAM_DEADLINE_EXCEEDED ||
           c->transport_failed;
}

/* ---- replica health (cs->mu held) ------------------------------------------ */

static int usable(const replica *r, int64_t now)
{
    return !r->ejected || (now >= r->eject_until && !r->probing);
}

static void health_ok(ec_cluster *cs, replica *r)
{
    r->fails = r->hedge_losses = 0;
    r->ejected = r->probing = 0;
    r->backoff_ms = cs->o->eject_backoff_ms;
}

static void eject(ec_cluster *cs, replica *r, int slow)
{
    int64_t now = mono_now();
    if (r->ejected && now < r->eject_until)
        return;              /* an attempt sent before the ejection */
    r->ejected = 1;
    r->ejected_at = now;
    r->eject_until = now + r->backoff_ms * MS;
    r->backoff_ms = r->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : r->backoff_ms * 2;
    count(cs, &cs->cl->counters.ejections, 1);
    if (slow)
        count(cs, &cs->cl->counters.slow_ejections, 1);
}

/* One more strike of a kind against r (a failure, or a lost hedge); at
 * `after` consecutive ones (0: never) r is ejected. A probe that strikes
 * ends its probe and, the run still standing, re-ejects. */
static void health_strike(ec_cluster *cs, replica *r, int probe, uint32_t *run, int32_t after,
                          int slow)
{
    ++*run;
    if (probe)
        r->probing = 0;
    if (after > 0 && *run >= (uint32_t)after)
        eject(cs, r, slow);
}

static void health_fail(ec_cluster *cs, replica *r, int probe)
{
    health_strike(cs, r, probe, &r->fails, cs->o->eject_after_failures, 0);
}

/* r was tried first for a sub-request and another replica's hedge answered
 * first. One loss says little (hedging fires at a high percentile, so a
 * healthy replica loses now and then); a run of them means r stalls. */
static void health_hedge_lost(ec_cluster *cs, replica *r, int probe)
{
    health_strike(cs, r, probe, &r->hedge_losses, cs->o->eject_after_hedge_losses, 1);
}

/* The next replica for s: round-robin among usable ones it has not tried;
 * for a failover with none usable, the least recently ejected untried one;
 * for a hedge, only a usable one. Only a sub-request's first pick moves
 * the cursor: if hedges and failovers moved it too, a replica that always
 * needs a hedge would be picked first by every other sub-request. */
static replica *pick(ec_cluster *cs, sub *s, int hedge)
{
    shard *sh = &cs->shards[s->shard];
    int64_t now = mono_now();
    uint32_t start = s->attempts == 0 && !hedge ? sh->rr++ : sh->rr;
    for (uint32_t k = 0; k < sh->n; k++) {
        replica *r = sh->rep[(start + k) % sh->n];
        if (!(s->tried & (1u << r->idx)) && usable(r, now))
            return r;
    }
    if (hedge)
        return NULL;
    replica *best = NULL;
    for (uint32_t k = 0; k < sh->n; k++) {
        replica *r = sh->rep[k];
        if (!(s->tried & (1u << r->idx)) && (!best || r->ejected_at < best->ejected_at))
            best = r;
    }
    return best;
}

/* ---- latency window and hedge threshold (cs->mu held) ----------------------- */

static void record_latency(ec_cluster *cs, int64_t ns)
{
    int64_t us = ns / 1000;
    cs->lat_us[cs->lat_pos] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
    cs->lat_pos = (cs->lat_pos + 1) % LAT_WINDOW;
    if (cs->lat_n < LAT_WINDOW)
        cs->lat_n++;
    cs->lat_new++;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* The hedge delay in ns, or -1 while too few latencies are known. */
static int64_t hedge_threshold(ec_cluster *cs)
{
    if (cs->lat_n < HEDGE_MIN_SAMPLES)
        return -1;
    if (cs->hedge_ns < 0 || cs->lat_new >= 16) {
        uint32_t tmp[LAT_WINDOW];
        memcpy(tmp, cs->lat_us, cs->lat_n * sizeof tmp[0]);
        qsort(tmp, cs->lat_n, sizeof tmp[0], cmp_u32);   /* 1024 at most, every 16 samples */
        size_t k = cs->lat_n * (size_t)cs->o->hedge_percentile / 100;
        if (k >= cs->lat_n)
            k = cs->lat_n - 1;
        int64_t ns = (int64_t)tmp[k] * 1000;
        int64_t min = cs->o->hedge_min_ms * MS;
        cs->hedge_ns = ns < min ? min : ns;
        cs->lat_new = 0;
    }
    return cs->hedge_ns;
}

/* ---- lookups: failing, finishing (cs->mu held) ------------------------------ */

static void cancel_attempt(attempt *a, const char *why)
{
    if (a->cancelled)
        return;
    a->cancelled = 1;
    ec_call_cancel(&a->c, why);
}

static void fail_lookup(ec_clookup *lk, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail_lookup(ec_clookup *lk, int code, const char *fmt, ...)
{
    if (!lk->failed) {
        lk->failed = 1;
        lk->code = code;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(lk->message, sizeof lk->message, fmt, ap);
        va_end(ap);
    }
    for (attempt *a = lk->attempts; a; a = a->next)
        cancel_attempt(a, "cancelled: the lookup failed elsewhere");
}

/* "127.0.0.1:7005, 127.0.0.1:7006" */
static void shard_replicas(const ec_cluster *cs, uint32_t sh, char *buf, size_t cap)
{
    size_t used = 0;
    buf[0] = '\0';
    for (uint32_t k = 0; k < cs->shards[sh].n && used < cap; k++) {
        int w = snprintf(buf + used, cap - used, "%s%s", k ? ", " : "", cs->shards[sh].rep[k]->addr);
        if (w < 0)
            break;
        used += (size_t)w;
    }
}

static void fail_sub(ec_clookup *lk, sub *s, int code, const char *what)
{
    ec_cluster *cs = lk->cs;
    char reps[200];
    shard_replicas(cs, s->shard, reps, sizeof reps);
    if (s->last_code)
        fail_lookup(lk, code, "shard %u of %u (%s): %s; last: %s", s->shard, cs->nshards, reps, what,
                    s->last_msg);
    else
        fail_lookup(lk, code, "shard %u of %u (%s): %s", s->shard, cs->nshards, reps, what);
}

static void enqueue_repin(ec_clookup *lk)
{
    ec_cluster *cs = lk->cs;
    lk->queued = 1;
    lk->outstanding++;
    lk->job_next = NULL;
    ec_clookup **p = &cs->jobs;
    while (*p)
        p = &(*p)->job_next;
    *p = lk;
    pthread_cond_broadcast(&cs->cv);
}

static void unlist(ec_clookup *lk)
{
    ec_cluster *cs = lk->cs;
    if (!lk->listed)
        return;
    if (lk->prev)
        lk->prev->next = lk->next;
    else
        cs->active = lk->next;
    if (lk->next)
        lk->next->prev = lk->prev;
    lk->prev = lk->next = NULL;
    lk->listed = 0;
}

static void publish_done(ec_clookup *lk)
{
    pthread_mutex_lock(&lk->mu);
    lk->done = 1;
    pthread_cond_broadcast(&lk->cv);
    pthread_mutex_unlock(&lk->mu);
}

/* Finishes lk when nothing of it is in flight any more. The last touch of
 * lk on the path that calls it: after done its owner may free it. */
static void maybe_finish(ec_clookup *lk)
{
    ec_cluster *cs = lk->cs;
    if (lk->outstanding)
        return;
    if (lk->need_repin && !lk->failed) {
        if (!cs->stopping) {
            enqueue_repin(lk);
            return;
        }
        fail_lookup(lk, ENGRAM_CANCELLED, "the client is closing");
    }
    if (!lk->failed && lk->subs_left)
        fail_lookup(lk, ENGRAM_INTERNAL, "internal: a sub-request of table %s was lost", lk->table);
    unlist(lk);
    publish_done(lk);
}

/* ---- attempts ---------------------------------------------------------------- */

static int attempt_decode(ec_call *c, grpc_byte_buffer *reply);
static void attempt_done(ec_call *c);

/* Sends s to r (cs->mu held). On failure nothing is in flight and s's
 * last_code/last_msg say why. */
static int start_attempt(ec_clookup *lk, sub *s, replica *r, int hedge)
{
    ec_cluster *cs = lk->cs;
    int64_t now = mono_now();
    int64_t tmo = cs->o->attempt_timeout_ms > 0 ? cs->o->attempt_timeout_ms : 0;
    if (lk->deadline) {
        int64_t left = (lk->deadline - now + MS - 1) / MS;
        if (left < 1)
            left = 1;
        if (!tmo || left < tmo)
            tmo = left;
    }
    attempt *a = calloc(1, sizeof *a);
    if (!a) {
        s->last_code = ENGRAM_RESOURCE_EXHAUSTED;
        snprintf(s->last_msg, sizeof s->last_msg, "RESOURCE_EXHAUSTED: out of memory");
        return s->last_code;
    }
    ec_call_init(&a->c, cs->cl, attempt_decode);
    a->c.on_done = attempt_done;
    a->s = s;
    a->r = r;
    a->sent = now;
    a->hedge = hedge;
    if (r->ejected && now >= r->eject_until) {
        r->probing = 1;
        a->probe = 1;
    }
    s->tried |= 1u << r->idx;
    s->inflight++;
    s->attempts++;
    s->last_sent = now;
    lk->outstanding++;
    a->next = lk->attempts;
    if (a->next)
        a->next->prev = a;
    lk->attempts = a;

    engram_error e;
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s->req, 1);
    a->c.data_plane = 1;   /* a Lookup: no admin token */
    int rc = ec_call_start_on(&a->c, r->ch, r->m_lookup, bb, tmo, &e);
    if (rc == ENGRAM_OK)
        return rc;
    if (a->prev)
        a->prev->next = a->next;
    else
        lk->attempts = a->next;
    if (a->next)
        a->next->prev = a->prev;
    s->inflight--;
    lk->outstanding--;
    if (a->probe)
        r->probing = 0;
    ec_call_release(&a->c);
    free(a);
    s->last_code = rc;
    snprintf(s->last_msg, sizeof s->last_msg, "%s: %.200s", engram_status_name(rc), e.message);
    return rc;
}

/* Sends s to its next replica, or fails the lookup when there is none or
 * the deadline passed (cs->mu held; s pending, nothing of it in flight). */
static void try_next(ec_clookup *lk, sub *s)
{
    ec_cluster *cs = lk->cs;
    if (lk->deadline && mono_now() >= lk->deadline) {
        char what[96];
        snprintf(what, sizeof what, "deadline of %lld ms exceeded after %u attempt%s",
                 (long long)lk->deadline_ms, s->attempts, s->attempts == 1 ? "" : "s");
        fail_sub(lk, s, ENGRAM_DEADLINE_EXCEEDED, what);
        return;
    }
    replica *r = pick(cs, s, 0);
    if (!r) {
        fail_sub(lk, s, s->last_code ? s->last_code : ENGRAM_UNAVAILABLE, "every replica failed");
        return;
    }
    if (s->attempts > 0)
        count(cs, &cs->cl->counters.retries, 1);
    int rc = start_attempt(lk, s, r, 0);
    if (rc)
        fail_lookup(lk, rc, "shard %u of %u: %s", s->shard, cs->nshards, s->last_msg);
}

static int attempt_fail(ec_call *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int attempt_fail(ec_call *c, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->message, sizeof c->message, fmt, ap);
    va_end(ap);
    return code;
}

/* On the completion thread, no lock held. Only this thread writes `out`,
 * and lk cannot finish while this attempt is in flight, so the scatter
 * needs no lock. */
static int attempt_decode(ec_call *c, grpc_byte_buffer *reply)
{
    attempt *a = (attempt *)c;
    sub *s = a->s;
    ec_clookup *lk = s->lk;
    ec_cluster *cs = lk->cs;
    pthread_mutex_lock(&cs->mu);
    int skip = a->cancelled || s->state != SUB_PENDING || lk->failed || lk->need_repin;
    pthread_mutex_unlock(&cs->mu);
    if (skip) {
        a->superseded = 1;
        return attempt_fail(c, ENGRAM_CANCELLED, "superseded");
    }
    if (!reply)
        return attempt_fail(c, ENGRAM_INTERNAL, "server sent OK but no reply message");
    uint64_t cap = (uint64_t)s->n * lk->rb_max, len;
    if (ec_lookup_peek_len(reply, &len)) {
        if (len > cap)
            return attempt_fail(c, ENGRAM_INVALID_ARGUMENT,
                                "reply of %llu bytes for %zu rows does not fit out_cap %zu (%zu rows)",
                                (unsigned long long)len, s->n, lk->out_cap, lk->n);
        cap = len;   /* the decoder refuses more than declared anyway */
    }
    uint8_t *tmp = malloc(cap ? cap : 1);
    if (!tmp)
        return attempt_fail(c, ENGRAM_RESOURCE_EXHAUSTED, "out of memory for %llu bytes",
                            (unsigned long long)cap);
    lookup_decoder d;
    lookup_decoder_init(&d, tmp, cap);
    int code = ENGRAM_OK;
    uint64_t got = 0;
    if (ec_lookup_decode_slices(&d, reply) < 0) {
        code = attempt_fail(c, ENGRAM_INTERNAL, "malformed LookupResponse: %s", d.error);
        goto out;
    }
    got = d.seen_data ? d.data_len : 0;
    uint32_t rb = d.row_bytes;
    if ((s->n > 0 && rb == 0) || (uint64_t)s->n * rb != got) {
        code = attempt_fail(c, ENGRAM_DATA_LOSS, "reply carries %llu bytes, want %zu rows of %u bytes",
                            (unsigned long long)got, s->n, rb);
        goto out;
    }
    if (d.version != lk->version || (lk->row_bytes && rb != lk->row_bytes)) {
        code = attempt_fail(c, ENGRAM_DATA_LOSS,
                            "reply is version %llu with %u-byte rows; asked for version %llu with %u-byte rows",
                            (unsigned long long)d.version, rb, (unsigned long long)lk->version,
                            lk->row_bytes);
        goto out;
    }
    lk->row_bytes = rb;
    for (size_t i = 0; i < s->n; i++)
        memcpy(lk->out + (size_t)s->pos[i] * rb, tmp + i * rb, rb);
    a->decoded = 1;
out:
    free(tmp);
    return code;
}

static void unlink_attempt(ec_clookup *lk, attempt *a)
{
    if (a->prev)
        a->prev->next = a->next;
    else
        lk->attempts = a->next;
    if (a->next)
        a->next->prev = a->prev;
}

/* On the completion thread after the call released everything; owns c. */
static void attempt_done(ec_call *c)
{
    attempt *a = (attempt *)c;
    sub *s = a->s;
    ec_clookup *lk = s->lk;
    ec_cluster *cs = lk->cs;
    replica *r = a->r;
    int64_t now = mono_now();

    pthread_mutex_lock(&cs->mu);
    unlink_attempt(lk, a);
    s->inflight--;
    lk->outstanding--;
    if (c->code == ENGRAM_OK && a->decoded) {
        health_ok(cs, r);
        record_latency(cs, now - a->sent);
        if (s->state == SUB_PENDING) {
            s->state = SUB_OK;
            lk->subs_left--;
            if (a->hedge)
                count(cs, &cs->cl->counters.hedge_wins, 1);
            for (attempt *o = lk->attempts; o; o = o->next) {
                if (o->s != s)
                    continue;
                if (a->hedge && !o->hedge && !o->cancelled)
                    health_hedge_lost(cs, o->r, o->probe);
                cancel_attempt(o, "cancelled: another replica answered first");
            }
        }
    } else if (a->superseded) {
        health_ok(cs, r);
    } else if (a->cancelled) {
        if (a->probe)
            r->probing = 0;     /* no verdict */
    } else if (retryable(c)) {
        health_fail(cs, r, a->probe);
        s->last_code = c->code;
        snprintf(s->last_msg, sizeof s->last_msg, "%s: %.160s from %.60s", engram_status_name(c->code),
                 c->message, r->addr);
        if (s->state == SUB_PENDING && !lk->failed && !lk->need_repin && s->inflight == 0)
            try_next(lk, s);
    } else if (c->code == ENGRAM_NOT_FOUND && strstr(c->message, "has no version")) {
        health_ok(cs, r);
        if (lk->repinned || lk->failed) {
            fail_lookup(lk, c->code, "%s", c->message);
        } else if (!lk->need_repin) {
            lk->need_repin = 1;
            for (attempt *o = lk->attempts; o; o = o->next)
                cancel_attempt(o, "cancelled: re-pinning the table version");
        }
    } else {
        if (c->code != ENGRAM_CANCELLED)
            health_ok(cs, r);   /* it answered */
        else if (a->probe)
            r->probing = 0;
        fail_lookup(lk, c->code, "%s", c->message);
    }
    ec_call_release(&a->c);
    free(a);
    maybe_finish(lk);
    pthread_mutex_unlock(&cs->mu);
}

/* ---- version pinning ------------------------------------------------------------ */

typedef struct gt_call {
    ec_call c;
    ProtobufCMessage *reply;
} gt_call;

static int gt_decode(ec_call *c, grpc_byte_buffer *reply)
{
    gt_call *g = (gt_call *)c;
    if (reply)
        g->reply = pb_from_byte_buffer(&engram__v1__table_info__descriptor, reply);
    if (!g->reply) {
        snprintf(c->message, sizeof c->message, "malformed TableInfo reply");
        return ENGRAM_INTERNAL;
    }
    return ENGRAM_OK;
}

/* The replicas a version resolve asks, in turn: every replica of every
 * shard, usable ones first, round-robin so resolves spread. cs->mu held. */
static size_t resolve_order(ec_cluster *cs, replica **order)
{
    size_t n = 0;
    int64_t now = mono_now();
    uint32_t start = cs->resolve_rr++;
    for (int pass = 0; pass < 2; pass++)
        for (size_t k = 0; k < cs->nreps; k++) {
            replica *r = &cs->reps[(start + k) % cs->nreps];
            if (usable(r, now) == !pass)
                order[n++] = r;
        }
    return n;
}

/* GetTable on one replica, waited for. *transport: a retryable failure. */
static int get_table_on(ec_cluster *cs, replica *r, const char *table, int64_t tmo,
                        Engram__V1__TableInfo **out, int *again, engram_error *err)
{
    gt_call g;
    memset(&g, 0, sizeof g);
    ec_call_init(&g.c, cs->cl, gt_decode);
    Engram__V1__GetTableRequest req = ENGRAM__V1__GET_TABLE_REQUEST__INIT;
    req.name = (char *)table;   /* only read by pack */
    int rc = ec_call_start_on(&g.c, r->ch, r->m_get_table, pb_to_byte_buffer(&req.base), tmo, err);
    if (rc == ENGRAM_OK)
        rc = ec_call_wait(&g.c, -1, err);
    *again = rc == ENGRAM_UNAVAILABLE || rc == ENGRAM_DEADLINE_EXCEEDED || g.c.transport_failed;
    ec_call_release(&g.c);
    if (rc && g.reply) {
        protobuf_c_message_free_unpacked(g.reply, NULL);
        g.reply = NULL;
    }
    *out = (Engram__V1__TableInfo *)g.reply;
    return rc;
}

/* The table's active version, from one GetTable on a healthy replica (any
 * shard), failing over to the others on a transport failure. Blocking; no
 * lock held. */
static int resolve(ec_cluster *cs, const char *table, vpin *res, int64_t deadline,
                   engram_error *err)
{
    replica *order[CLUSTER_MAX_SHARDS * CLUSTER_MAX_REPLICAS];
    pthread_mutex_lock(&cs->mu);
    size_t n = resolve_order(cs, order);
    pthread_mutex_unlock(&cs->mu);

    char last[300] = "";
    int last_code = ENGRAM_UNAVAILABLE;
    for (size_t k = 0; k < n; k++) {
        int64_t tmo = cs->o->attempt_timeout_ms > 0 ? cs->o->attempt_timeout_ms : 0;
        if (deadline) {
            int64_t left = (deadline - mono_now()) / MS;
            if (left <= 0) {
                return ec_error(err, ENGRAM_DEADLINE_EXCEEDED,
                                "resolving the version of table \"%s\": deadline exceeded; last: %s",
                                table, last[0] ? last : "none");
            }
            if (!tmo || left < tmo)
                tmo = left;
        }
        Engram__V1__TableInfo *ti;
        int again;
        engram_error e;
        int rc = get_table_on(cs, order[k], table, tmo, &ti, &again, &e);
        pthread_mutex_lock(&cs->mu);
        if (rc == ENGRAM_OK || !again)
            health_ok(cs, order[k]);
        else
            health_fail(cs, order[k], 0);
        pthread_mutex_unlock(&cs->mu);
        if (rc == ENGRAM_OK) {
            res->version = ti->version;
            res->rows = ti->rows;
            res->row_bytes = ti->row_bytes;
            protobuf_c_message_free_unpacked(&ti->base, NULL);
            count(cs, &cs->cl->counters.version_resolves, 1);
            return ec_ok(err);
        }
        if (!again)
            return ec_error(err, rc, "%s", e.message);
        last_code = rc;
        snprintf(last, sizeof last, "%s: %.200s from %.60s", engram_status_name(rc), e.message,
                 order[k]->addr);
    }
    return ec_error(err, last_code,
                    "resolving the version of table \"%s\": every replica failed; last: %s", table,
                    last);
}

static vpin *find_pin(ec_cluster *cs, const char *table)
{
    for (vpin *p = cs->pins; p; p = p->next)
        if (!strcmp(p->table, table))
            return p;
    vpin *p = calloc(1, sizeof *p);
    if (!p || !(p->table = strdup(table))) {
        free(p);
        return NULL;
    }
    p->next = cs->pins;
    cs->pins = p;
    return p;
}

static int pin_fresh(const ec_cluster *cs, const vpin *p, int64_t now)
{
    int64_t refresh = cs->o->version_refresh_ms;
    return p->valid && (refresh < 0 || now - p->at < refresh * MS);
}

/* ---- background refresh of a stale pin ------------------------------------------ */

typedef struct refresh_call {
    gt_call g;                   /* first: the ec_call the hooks get */
    ec_cluster *cs;
    vpin *p;
    replica *order[CLUSTER_MAX_SHARDS * CLUSTER_MAX_REPLICAS];
    size_t n, k;                 /* order[k] is being asked */
} refresh_call;

static void refresh_done(ec_call *c);

/* Asks order[k], order[k+1], ... until one call starts; 0, or -1 when none
 * did (the caller ends the refresh). cs->mu held. */
static int refresh_send(refresh_call *rf)
{
    ec_cluster *cs = rf->cs;
    for (; rf->k < rf->n && !cs->stopping; rf->k++) {
        memset(&rf->g, 0, sizeof rf->g);
        ec_call_init(&rf->g.c, cs->cl, gt_decode);
        rf->g.c.on_done = refresh_done;
        Engram__V1__GetTableRequest req = ENGRAM__V1__GET_TABLE_REQUEST__INIT;
        req.name = rf->p->table;   /* only read by pack */
        int64_t tmo = cs->o->attempt_timeout_ms > 0 ? cs->o->attempt_timeout_ms : 0;
        engram_error e;
        replica *r = rf->order[rf->k];
        if (ec_call_start_on(&rf->g.c, r->ch, r->m_get_table, pb_to_byte_buffer(&req.base), tmo,
                             &e) == ENGRAM_OK)
            return 0;
        ec_call_release(&rf->g.c);
        if (e.code == ENGRAM_CANCELLED)   /* the client is closing */
            break;
    }
    return -1;
}

/* Ends a refresh: the pin is current again (or, on failure, is kept and
 * retried after another interval; a lookup whose version was dropped
 * re-pins by itself). cs->mu held. */
static void refresh_end(refresh_call *rf, const Engram__V1__TableInfo *ti)
{
    vpin *p = rf->p;
    if (ti) {
        p->version = ti->version;
        p->rows = ti->rows;
        p->row_bytes = ti->row_bytes;
        count(rf->cs, &rf->cs->cl->counters.version_resolves, 1);
    }
    p->at = mono_now();
    p->resolving = 0;
    pthread_cond_broadcast(&rf->cs->vcv);
    free(rf);
}

/* On the completion thread; owns c. */
static void refresh_done(ec_call *c)
{
    refresh_call *rf = (refresh_call *)c;
    ec_cluster *cs = rf->cs;
    Engram__V1__TableInfo *ti = (Engram__V1__TableInfo *)rf->g.reply;
    int code = c->code;
    int again = retryable(c);
    ec_call_release(c);
    pthread_mutex_lock(&cs->mu);
    replica *r = rf->order[rf->k];
    if (code == ENGRAM_OK || !again)
        health_ok(cs, r);
    else
        health_fail(cs, r, 0);
    if (code == ENGRAM_OK && ti) {
        refresh_end(rf, ti);
    } else {
        rf->k++;
        if (!again || refresh_send(rf) != 0)
            refresh_end(rf, NULL);
    }
    pthread_mutex_unlock(&cs->mu);
    if (ti)
        protobuf_c_message_free_unpacked(&ti->base, NULL);
}

/* Starts refreshing p in the background, asking replicas in resolve's
 * order. cs->mu held; p->resolving set by the caller. */
static void refresh_start(ec_cluster *cs, vpin *p)
{
    refresh_call *rf = calloc(1, sizeof *rf);
    if (!rf) {
        p->resolving = 0;        /* tried again at the next lookup */
        return;
    }
    rf->cs = cs;
    rf->p = p;
    rf->n = resolve_order(cs, rf->order);
    if (refresh_send(rf) != 0)
        refresh_end(rf, NULL);
}

/* The version lookups of `table` use now: the cached one while fresh.
 * A stale one is re-resolved in the background (refresh_start) while this
 * lookup and the next use it: a GetTable on the lookup's path would cost every
 * refresh interval one lookup a round trip, and a whole attempt timeout
 * when it hits a stalled replica (seen as a 1 s max in the hedge bench).
 * Only the first resolve, and every one with version_refresh_ms 0 (the
 * caller asked for the newest version on every lookup), is waited for;
 * concurrent callers wait for that one. */
static int pin_version(ec_cluster *cs, const char *table, vpin *out, int64_t deadline,
                       engram_error *err)
{
    pthread_mutex_lock(&cs->mu);
    vpin *p = find_pin(cs, table);
    if (!p) {
        pthread_mutex_unlock(&cs->mu);
        return ec_error(err, ENGRAM_RESOURCE_EXHAUSTED, "out of memory");
    }
    for (;;) {
        int fresh = pin_fresh(cs, p, mono_now());
        int background = !fresh && p->valid && !p->resolving && cs->o->version_refresh_ms > 0;
        if (fresh || (p->resolving && p->valid) || background) {
            if (background) {
                p->resolving = 1;
                refresh_start(cs, p);
            }
            *out = *p;
            pthread_mutex_unlock(&cs->mu);
            return ec_ok(err);
        }
        if (!p->resolving)
            break;
        pthread_cond_wait(&cs->vcv, &cs->mu);
    }
    p->resolving = 1;
    pthread_mutex_unlock(&cs->mu);
    vpin r;
    int rc = resolve(cs, table, &r, deadline, err);
    pthread_mutex_lock(&cs->mu);
    p->resolving = 0;
    if (rc == ENGRAM_OK) {
        p->version = r.version;
        p->rows = r.rows;
        p->row_bytes = r.row_bytes;
        p->at = mono_now();
        p->valid = 1;
        *out = *p;
    }
    pthread_cond_broadcast(&cs->vcv);
    pthread_mutex_unlock(&cs->mu);
    return rc;
}

/* ---- request packing ------------------------------------------------------------- */

/* Written by hand (common/wire.c): protobuf-c's generic pack was the
 * largest user-space cost of a lookup on the client after the copy out. */
static int pack_sub(sub *s, const char *table, uint64_t version)
{
    size_t tlen = strlen(table), rows_len;
    size_t len = lookup_request_len(tlen, s->rows, s->n, version, &rows_len);
    grpc_slice sl = grpc_slice_malloc(len);
    lookup_request_put(GRPC_SLICE_START_PTR(sl), table, tlen, s->rows, s->n, rows_len, version);
    grpc_slice_unref(s->req);
    s->req = sl;
    return ENGRAM_OK;
}

/* ---- the cluster thread: hedges and re-pins ------------------------------------- */

/* Sends hedges that are due; returns when the next one will be (0: none).
 * cs->mu held. */
static int64_t hedge_scan(ec_cluster *cs)
{
    if (cs->o->hedge_percentile <= 0 || cs->stopping)
        return 0;
    int64_t thr = hedge_threshold(cs);
    if (thr < 0)
        return 0;
    int64_t now = mono_now(), next = 0;
    for (ec_clookup *lk = cs->active; lk; lk = lk->next) {
        if (lk->failed || lk->need_repin)
            continue;
        for (uint32_t i = 0; i < lk->nsubs; i++) {
            sub *s = &lk->subs[i];
            if (s->state != SUB_PENDING || s->inflight != 1 || s->hedged)
                continue;
            int64_t due = s->last_sent + thr;
            if (due > now) {
                if (!next || due < next)
                    next = due;
                continue;
            }
            s->hedged = 1;
            replica *r = pick(cs, s, 1);
            if (r && start_attempt(lk, s, r, 1) == ENGRAM_OK)
                count(cs, &cs->cl->counters.hedges, 1);
        }
    }
    return next;
}

/* Re-resolves lk's version and sends every sub-request again with it.
 * Called without cs->mu; lk is kept alive by its queued `outstanding`. */
static void run_repin(ec_cluster *cs, ec_clookup *lk)
{
    vpin r;
    engram_error e;
    int rc = ENGRAM_CANCELLED;
    pthread_mutex_lock(&cs->mu);
    int failed = lk->failed;
    pthread_mutex_unlock(&cs->mu);
    if (!failed)
        rc = resolve(cs, lk->table, &r, lk->deadline, &e);
    pthread_mutex_lock(&cs->mu);
    lk->outstanding--;
    if (rc == ENGRAM_OK) {
        vpin *p = find_pin(cs, lk->table);
        if (p) {
            p->version = r.version;
            p->rows = r.rows;
            p->row_bytes = r.row_bytes;
            p->at = mono_now();
            p->valid = 1;
        }
    }
    if (lk->failed) {
        /* freed or failed meanwhile */
    } else if (rc) {
        fail_lookup(lk, rc, "%s", e.message);
    } else {
        lk->need_repin = 0;
        lk->repinned = 1;
        lk->version = r.version;
        lk->row_bytes = r.row_bytes;
        lk->subs_left = lk->nsubs;
        for (uint32_t i = 0; i < lk->nsubs; i++) {
            sub *s = &lk->subs[i];
            pack_sub(s, lk->table, r.version);
            s->state = SUB_PENDING;
            s->tried = s->attempts = 0;
            s->hedged = 0;
            s->last_code = 0;
            s->last_msg[0] = '\0';
        }
        count(cs, &cs->cl->counters.subrequests, lk->nsubs);
        for (uint32_t i = 0; i < lk->nsubs && !lk->failed; i++)
            try_next(lk, &lk->subs[i]);
    }
    maybe_finish(lk);
    pthread_cond_broadcast(&cs->cv);
    pthread_mutex_unlock(&cs->mu);
}

static struct timespec ns_to_ts(int64_t ns)
{
    struct timespec ts = {.tv_sec = ns / 1000000000LL, .tv_nsec = ns % 1000000000LL};
    return ts;
}

static void *cluster_thread(void *arg)
{
    ec_cluster *cs = arg;
    pthread_mutex_lock(&cs->mu);
    for (;;) {
        if (cs->jobs) {
            ec_clookup *lk = cs->jobs;
            cs->jobs = lk->job_next;
            lk->queued = 0;     /* still counted in outstanding until run */
            pthread_mutex_unlock(&cs->mu);
            run_repin(cs, lk);
            pthread_mutex_lock(&cs->mu);
            continue;
        }
        if (cs->stopping)
            break;
        int64_t next = hedge_scan(cs);
        if (next) {
            struct timespec ts = ns_to_ts(next);
            pthread_cond_timedwait(&cs->cv, &cs->mu, &ts);
        } else {
            pthread_cond_wait(&cs->cv, &cs->mu);
        }
    }
    pthread_mutex_unlock(&cs->mu);
    return NULL;
}

/* ---- discovery, start and stop ------------------------------------------------- */

static ec_cluster *cluster_new(engram_client *cl, const engram_cluster *map, engram_error *err)
{
    ec_cluster *cs = calloc(1, sizeof *cs);
    size_t nreps = 0;
    for (uint32_t s = 0; s < map->shards; s++)
        nreps += map->replicas[s];
    if (cs) {
        cs->shards = calloc(map->shards, sizeof *cs->shards);
        cs->reps = calloc(nreps, sizeof *cs->reps);
    }
    if (!cs || !cs->shards || !cs->reps) {
        if (cs) {
            free(cs->shards);
            free(cs->reps);
        }
        free(cs);
        ec_error(err, ENGRAM_RESOURCE_EXHAUSTED, "out of memory for the cluster");
        return NULL;
    }
    cs->cl = cl;
    cs->o = &cl->opts;
    cs->nshards = map->shards;
    cs->nreps = nreps;
    cs->hedge_ns = -1;

    grpc_arg args[5];
    message_size_args(args, cl->max_message_bytes);
    /* A replica that comes back is reconnected within seconds, not the
     * default two minutes of back-off. */
    args[2] = (grpc_arg){.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS,
                         .value.integer = 200};
    /* (also gRPC's connect timeout: a replica that accepts TCP but never
     * answers, e.g. stopped, fails its connection after this) */
    args[3] = (grpc_arg){.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_MIN_RECONNECT_BACKOFF_MS,
                         .value.integer = 1000};
    args[4] = (grpc_arg){.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_MAX_RECONNECT_BACKOFF_MS,
                         .value.integer = 5000};
    grpc_channel_args chargs = {.num_args = 5, .args = args};
    size_t k = 0;
    for (uint32_t s = 0; s < map->shards; s++) {
        cs->shards[s].n = map->replicas[s];
        for (uint32_t i = 0; i < map->replicas[s]; i++, k++) {
            replica *r = &cs->reps[k];
            snprintf(r->addr, sizeof r->addr, "%s", map->addr[s][i]);
            r->shard = s;
            r->idx = i;
            r->backoff_ms = cl->opts.eject_backoff_ms;
            /* The bootstrap channel's credentials (TLS, server name). */
            r->ch = ec_channel_create(cl, r->addr, &chargs);
            r->m_lookup = grpc_channel_register_call(r->ch, METHOD_LOOKUP, NULL, NULL);
            r->m_get_table = grpc_channel_register_call(r->ch, METHOD_GET_TABLE, NULL, NULL);
            cs->shards[s].rep[i] = r;
        }
    }
    pthread_mutex_init(&cs->mu, NULL);
    ec_cond_init_mono(&cs->cv);
    pthread_cond_init(&cs->vcv, NULL);
    int rc = pthread_create(&cs->thread, NULL, cluster_thread, cs);
    if (rc) {
        for (size_t j = 0; j < nreps; j++)
            grpc_channel_destroy(cs->reps[j].ch);
        pthread_cond_destroy(&cs->vcv);
        pthread_cond_destroy(&cs->cv);
        pthread_mutex_destroy(&cs->mu);
        free(cs->shards);
        free(cs->reps);
        free(cs);
        ec_error(err, ENGRAM_RESOURCE_EXHAUSTED, "cannot start the cluster thread: %s", strerror(rc));
        return NULL;
    }
    return cs;
}

int ec_cluster_discover(engram_client *cl, int *mode, engram_error *err)
{
    pthread_mutex_lock(&cl->disc_mu);
    int m = cl->mode;
    if (m) {
        pthread_mutex_unlock(&cl->disc_mu);
        *mode = m;
        return ENGRAM_OK;
    }
    char *json = NULL;
    engram_error e;
    int rc = engram_cluster_map_get(cl, &json, NULL, NULL, &e);
    if (rc == ENGRAM_UNAVAILABLE) {
        /* The server is down: this lookup goes to it alone and fails the
         * way it always did; the next one asks again. */
        pthread_mutex_unlock(&cl->disc_mu);
        *mode = EC_MODE_SINGLE;
        return ENGRAM_OK;
    }
    if (rc == ENGRAM_UNIMPLEMENTED || rc == ENGRAM_UNAUTHENTICATED ||
        rc == ENGRAM_PERMISSION_DENIED) {
        /* A server from before clusters, or one whose admin plane this
         * client may not use (admin auth, or --admin-listen elsewhere):
         * a lookup-only worker still looks up, on this one server. */
        m = EC_MODE_SINGLE;
    } else if (rc) {
        pthread_mutex_unlock(&cl->disc_mu);
        return ec_error(err, rc, "reading the cluster map: %s", e.message);
    } else {
        char why[300];
        engram_cluster *map = cluster_parse(json, strlen(json), why, sizeof why);
        free(json);
        if (!map) {
            pthread_mutex_unlock(&cl->disc_mu);
            return ec_error(err, ENGRAM_FAILED_PRECONDITION, "the server's cluster map is invalid: %s",
                            why);
        }
        if (map->shards == 1 && map->replicas[0] == 1) {
            m = EC_MODE_SINGLE;
        } else {
            cl->cluster = cluster_new(cl, map, err);
            if (!cl->cluster) {
                cluster_free(map);
                pthread_mutex_unlock(&cl->disc_mu);
                return err ? err->code : ENGRAM_RESOURCE_EXHAUSTED;
            }
            m = EC_MODE_CLUSTER;
        }
        cluster_free(map);
    }
    __atomic_store_n(&cl->mode, m, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&cl->disc_mu);
    *mode = m;
    return ENGRAM_OK;
}

void ec_cluster_stop_begin(ec_cluster *cs)
{
    pthread_mutex_lock(&cs->mu);
    cs->stopping = 1;
    pthread_cond_broadcast(&cs->cv);
    pthread_mutex_unlock(&cs->mu);
}

void ec_cluster_free(ec_cluster *cs)
{
    pthread_join(cs->thread, NULL);
    /* Every call has completed and the thread is gone: only re-pins queued
     * after it stopped can be left. */
    pthread_mutex_lock(&cs->mu);
    while (cs->jobs) {
        ec_clookup *lk = cs->jobs;
        cs->jobs = lk->job_next;
        lk->queued = 0;
        lk->outstanding--;
        fail_lookup(lk, ENGRAM_CANCELLED, "cancelled by engram_client_close");
        maybe_finish(lk);
    }
    pthread_mutex_unlock(&cs->mu);
    for (size_t i = 0; i < cs->nreps; i++)
        grpc_channel_destroy(cs->reps[i].ch);
    while (cs->pins) {
        vpin *p = cs->pins;
        cs->pins = p->next;
        free(p->table);
        free(p);
    }
    pthread_cond_destroy(&cs->vcv);
    pthread_cond_destroy(&cs->cv);
    pthread_mutex_destroy(&cs->mu);
    free(cs->shards);
    free(cs->reps);
    free(cs);
}

/* ---- routed lookups --------------------------------------------------------------- */

/* A lookup that failed before anything was sent: finished at once, its
 * error reported by wait as a server's would be. */
static void prefail(ec_clookup *lk, int code, const char *msg)
{
    lk->failed = 1;
    lk->code = code;
    snprintf(lk->message, sizeof lk->message, "%s", msg);
    lk->done = 1;
}

static int split(ec_clookup *lk, const uint64_t *rows)
{
    ec_cluster *cs = lk->cs;
    uint32_t S = cs->nshards;
    size_t *cnt = calloc(S, sizeof *cnt);
    lk->rows = malloc((lk->n ? lk->n : 1) * sizeof *lk->rows);
    lk->pos = malloc((lk->n ? lk->n : 1) * sizeof *lk->pos);
    lk->subs = calloc(S, sizeof *lk->subs);
    if (!cnt || !lk->rows || !lk->pos || !lk->subs) {
        free(cnt);
        return ENGRAM_RESOURCE_EXHAUSTED;
    }
    for (size_t i = 0; i < lk->n; i++)
        cnt[rows[i] % S]++;
    size_t base = 0;
    for (uint32_t sh = 0; sh < S; sh++) {
        if (!cnt[sh])
            continue;
        sub *s = &lk->subs[lk->nsubs++];
        s->lk = lk;
        s->shard = sh;
        s->rows = lk->rows + base;
        s->pos = lk->pos + base;
        s->req = grpc_empty_slice();
        base += cnt[sh];
        cnt[sh] = lk->nsubs;     /* from here: 1 + index of its sub */
    }
    for (size_t i = 0; i < lk->n; i++) {
        sub *s = &lk->subs[cnt[rows[i] % S] - 1];
        s->rows[s->n] = rows[i];
        s->pos[s->n++] = (uint32_t)i;
    }
    free(cnt);
    for (uint32_t i = 0; i < lk->nsubs; i++)
        pack_sub(&lk->subs[i], lk->table, lk->version);
    return ENGRAM_OK;
}

int ec_clookup_start(engram_client *cl, const char *table, const uint64_t *rows, size_t n,
                     void *out, size_t out_cap, ec_clookup **out_lk, engram_error *err)
{
    ec_cluster *cs = cl->cluster;
    if (n > UINT32_MAX)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "%zu rows in one lookup; at most %u",
                        n, UINT32_MAX);
    ec_clookup *lk = calloc(1, sizeof *lk);
    if (!lk || !(lk->table = strdup(table))) {
        free(lk);
        return ec_error(err, ENGRAM_RESOURCE_EXHAUSTED, "out of memory");
    }
    lk->cs = cs;
    lk->out = out;
    lk->out_cap = out_cap;
    lk->n = n;
    lk->rb_max = n ? out_cap / n : 0;
    lk->deadline_ms = cl->deadline_ms;
    lk->deadline = cl->deadline_ms > 0 ? mono_now() + cl->deadline_ms * MS : 0;
    pthread_mutex_init(&lk->mu, NULL);
    ec_cond_init_mono(&lk->cv);
    *out_lk = lk;

    vpin pin = {0};
    engram_error e;
    int rc = pin_version(cs, table, &pin, lk->deadline, &e);
    if (rc) {
        prefail(lk, rc, e.message);
        return ec_ok(err);
    }
    lk->version = pin.version;
    lk->row_bytes = pin.row_bytes;
    /* Checked here, so the message names the caller's index, not the
     * index within a shard's sub-request. */
    for (size_t i = 0; i < n; i++)
        if (rows[i] >= pin.rows) {
            char msg[300];
            snprintf(msg, sizeof msg,
                     "row %llu (index %zu in the request) is out of range: table \"%.128s\" has %llu rows",
                     (unsigned long long)rows[i], i, table, (unsigned long long)pin.rows);
            prefail(lk, ENGRAM_OUT_OF_RANGE, msg);
            return ec_ok(err);
        }
    if (split(lk, rows)) {
        *out_lk = NULL;
        ec_clookup_free(lk);
        return ec_error(err, ENGRAM_RESOURCE_EXHAUSTED, "out of memory for %zu rows", n);
    }

    pthread_mutex_lock(&cs->mu);
    lk->next = cs->active;
    if (lk->next)
        lk->next->prev = lk;
    cs->active = lk;
    lk->listed = 1;
    lk->subs_left = lk->nsubs;
    count(cs, &cl->counters.subrequests, lk->nsubs);
    for (uint32_t i = 0; i < lk->nsubs && !lk->failed; i++)
        try_next(lk, &lk->subs[i]);
    maybe_finish(lk);
    if (cs->o->hedge_percentile > 0)
        pthread_cond_broadcast(&cs->cv);
    pthread_mutex_unlock(&cs->mu);
    return ec_ok(err);
}

int ec_clookup_wait(ec_clookup *lk, int64_t timeout_ms, engram_error *err)
{
    if (timeout_ms > EC_WAIT_FOREVER_MS)
        timeout_ms = -1;
    struct timespec until = ec_mono_deadline(timeout_ms < 0 ? 0 : timeout_ms);
    pthread_mutex_lock(&lk->mu);
    while (!lk->done) {
        if (timeout_ms < 0)
            pthread_cond_wait(&lk->cv, &lk->mu);
        else if (pthread_cond_timedwait(&lk->cv, &lk->mu, &until) == ETIMEDOUT)
            break;
    }
    int done = lk->done;
    pthread_mutex_unlock(&lk->mu);
    if (!done)
        return ec_error(err, ENGRAM_TIMEOUT, "not finished after %lld ms", (long long)timeout_ms);
    return lk->failed ? ec_error(err, lk->code, "%s", lk->message) : ec_ok(err);
}

int ec_clookup_poll(ec_clookup *lk)
{
    pthread_mutex_lock(&lk->mu);
    int done = lk->done;
    pthread_mutex_unlock(&lk->mu);
    return done;
}

void ec_clookup_result(const ec_clookup *lk, uint32_t *row_bytes, uint64_t *version)
{
    if (row_bytes)
        *row_bytes = lk->row_bytes;
    if (version)
        *version = lk->version;
}

void ec_clookup_free(ec_clookup *lk)
{
    if (!lk)
        return;
    if (!ec_clookup_poll(lk)) {
        /* Not finished, so the client is not closed: cs is alive. */
        ec_cluster *cs = lk->cs;
        pthread_mutex_lock(&cs->mu);
        if (lk->queued) {
            for (ec_clookup **p = &cs->jobs; *p; p = &(*p)->job_next)
                if (*p == lk) {
                    *p = lk->job_next;
                    break;
                }
            lk->queued = 0;
            lk->outstanding--;
        }
        fail_lookup(lk, ENGRAM_CANCELLED, "cancelled: freed while in flight");
        maybe_finish(lk);
        pthread_mutex_unlock(&cs->mu);
        pthread_mutex_lock(&lk->mu);
        while (!lk->done)
            pthread_cond_wait(&lk->cv, &lk->mu);
        pthread_mutex_unlock(&lk->mu);
    }
    for (uint32_t i = 0; i < lk->nsubs; i++)
        grpc_slice_unref(lk->subs[i].req);
    free(lk->subs);
    free(lk->rows);
    free(lk->pos);
    free(lk->table);
    pthread_cond_destroy(&lk->cv);
    pthread_mutex_destroy(&lk->mu);
    free(lk);
}
