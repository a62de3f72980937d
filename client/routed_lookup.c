/* routed_lookup.c: every lookup, through a router (router.h): the split by
 * shard, one attempt per sub-request, failover, hedging and re-pins. A
 * client without a cluster routes through its single-server router (one
 * shard, one replica, no pin), so there is one lookup path.
 *
 * Who does what (nothing depends on the caller calling wait):
 *
 *  - The caller's thread, in ec_route_start: the table's pinned version
 *    (version_pin.c; none on the single router), the split by shard, and
 *    the sub-requests the same-node path can serve from a mapped file
 *    (local.c: copied on this thread, finished before anything is sent),
 *    and the first attempt of every other sub-request, whose gRPC call is started
 *    outside cs->mu (an attempt finishing before its starter is back under
 *    the lock is settled by the starter: `landed`).
 *  - The client's completion thread (client.c), for every finished
 *    attempt: decode the reply's rows straight into the destination
 *    (attempt_decode, rows.c: the one copy), then decide (attempt_done):
 *    success (cancel the sub-request's other attempt, and count a lost
 *    hedge against the replica tried first), failover (start the next
 *    replica's attempt right there, a non-blocking call), a fatal error
 *    (cancel the lookup's other attempts), or a re-pin.
 *  - The router thread (one per cluster router, ec_router_thread): hedging
 *    and re-pins. It sleeps in a timed wait until the earliest moment an
 *    outstanding sub-request becomes due for a hedge (or until a lookup
 *    starts or a re-pin is queued), and runs re-pins, which need a
 *    blocking GetTable the completion thread must not wait for.
 *  - Attempt deadlines need no timer: every attempt carries its own gRPC
 *    deadline, min(left of the caller's deadline_ms, attempt_timeout_ms),
 *    so a hung replica completes as DEADLINE_EXCEEDED on the completion
 *    thread and fails over like any other failure.
 *
 * One writer per sub-request: a hedged sub-request has two attempts in
 * flight and both replies may arrive. The first reply to be decoded claims
 * the sub-request (s->writer, under cs->mu) and is the only one that writes
 * its rows; a reply that finds the claim taken, or its sub-request already
 * answered, is discarded unread (`superseded`). A claimant whose reply
 * turns out malformed gives the claim back, and the rows it wrote are
 * rewritten by whichever reply succeeds, or the lookup fails. The claim is
 * what makes this safe, not today's single completion thread.
 *
 * A sub-request tries each replica of its shard at most once (hedges
 * included); the lookup fails when all of them failed or its deadline
 * passed, naming the shard and its replicas (the single router hands the
 * server's own status back instead, as a one-server client always did).
 *
 * Locking: cs->mu guards replica health and round-robin cursors, the
 * latency window, the list of active lookups, the re-pin queue and every
 * lookup's sub-request and attempt state (lock order in router.h). A
 * lookup is finished (done) only when none of its attempts is in flight
 * and no re-pin is queued: after that nothing but its owner touches it or
 * its destination. */
#include "router.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <grpc/byte_buffer.h>
#include <grpc/slice.h>

#include "wire.h"

enum { SUB_PENDING = 0, SUB_OK = 1 };

typedef struct attempt attempt;

typedef struct sub {
    engram_lookup *lk;
    uint32_t shard;
    size_t n;
    uint64_t *rows;              /* this shard's rows (kept for a re-pin) */
    uint32_t *pos;               /* their indexes in the request; NULL: 0..n */
    grpc_slice req;              /* packed LookupRequest, shared by attempts */
    int state;
    attempt *writer;             /* the attempt whose reply is being written */
    uint32_t tried;              /* replicas (bit idx) tried this round */
    uint32_t inflight, attempts;
    int hedged;
    int64_t last_sent;
    int last_code;
    char last_msg[256];          /* "CODE: message from addr" */
    char last_raw[sizeof(((engram_error *)0)->message)];  /* the message alone */
} sub;

struct attempt {
    ec_call c;                   /* first: the hooks cast back */
    sub *s;
    replica *r;
    int64_t sent;
    int hedge, probe;
    int cancelled;               /* by us: hedge lost, lookup failed or freed */
    int launching;               /* being started outside cs->mu (ec_route_start) */
    int landed;                  /* finished while launching: its starter settles it */
    int64_t tmo;                 /* its gRPC deadline, ms from `sent` (0: none) */
    int decoded;                 /* its rows were written to the destination */
    int superseded;              /* answered, but nobody wanted it any more */
    struct attempt *prev, *next; /* lk->attempts */
};

struct engram_lookup {
    ec_cluster *cs;
    char *table;                     /* name_buf, or strdup'd when longer */
    char name_buf[ENGRAM_NAME_MAX + 1];
    ec_dest dest;
    size_t n;
    uint64_t version;
    uint32_t row_bytes;
    int pinned;                      /* version fixed before sending */
    int64_t deadline, deadline_ms;   /* monotonic ns, 0: none */
    uint64_t *rows;
    uint32_t *pos;
    sub *subs;                       /* &one on a router of one shard */
    sub one;
    uint32_t nsubs, subs_left;
    attempt *attempts;               /* in flight */
    uint32_t outstanding;            /* attempts in flight + a queued re-pin */
    int failed, code;
    char message[sizeof(((engram_error *)0)->message)];
    int need_repin, repinned, queued;
    engram_lookup *prev, *next;      /* cs->active */
    engram_lookup *job_next;
    int listed;

    pthread_mutex_t mu;              /* publishes done */
    pthread_cond_t cv;
    int done;
};

/* ---- lookups: failing, finishing (cs->mu held) ------------------------------ */

static void cancel_attempt(attempt *a, const char *why)
{
    if (a->cancelled)
        return;
    a->cancelled = 1;
    if (!a->launching)           /* else its starter cancels it once started */
        ec_call_cancel(&a->c, why);
}

static void fail_lookup(engram_lookup *lk, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail_lookup(engram_lookup *lk, int code, const char *fmt, ...)
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

/* Every replica of s's shard is used up, or the deadline passed. */
static void fail_sub(engram_lookup *lk, sub *s, int code, const char *what)
{
    ec_cluster *cs = lk->cs;
    if (cs->single && s->last_code) {
        /* One server: its own status, as a client without a cluster
         * always reported it. */
        fail_lookup(lk, s->last_code, "%s", s->last_raw);
        return;
    }
    char reps[200];
    shard_replicas(cs, s->shard, reps, sizeof reps);
    if (s->last_code)
        fail_lookup(lk, code, "shard %u of %u (%s): %s; last: %s", s->shard, cs->nshards, reps, what,
                    s->last_msg);
    else
        fail_lookup(lk, code, "shard %u of %u (%s): %s", s->shard, cs->nshards, reps, what);
}

static void enqueue_repin(engram_lookup *lk)
{
    ec_cluster *cs = lk->cs;
    lk->queued = 1;
    lk->outstanding++;
    lk->job_next = NULL;
    engram_lookup **p = &cs->jobs;
    while (*p)
        p = &(*p)->job_next;
    *p = lk;
    pthread_cond_broadcast(&cs->cv);
}

static void unlist(engram_lookup *lk)
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

static void publish_done(engram_lookup *lk)
{
    pthread_mutex_lock(&lk->mu);
    lk->done = 1;
    pthread_cond_broadcast(&lk->cv);
    pthread_mutex_unlock(&lk->mu);
}

/* Finishes lk when nothing of it is in flight any more. The last touch of
 * lk on the path that calls it: after done its owner may free it. */
static void maybe_finish(engram_lookup *lk)
{
    ec_cluster *cs = lk->cs;
    if (lk->outstanding)
        return;
    if (lk->need_repin && !lk->failed) {
        if (!cs->stopping && cs->has_thread) {
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

/* An attempt of s on r, counted in flight but not started yet (cs->mu
 * held); NULL, with s's last_code/last_msg/last_raw saying why. */
static attempt *prepare_attempt(engram_lookup *lk, sub *s, replica *r, int hedge)
{
    ec_cluster *cs = lk->cs;
    int64_t now = mono_now();
    int64_t tmo = cs->attempt_timeout_ms > 0 ? cs->attempt_timeout_ms : 0;
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
        snprintf(s->last_raw, sizeof s->last_raw, "out of memory");
        return NULL;
    }
    ec_call_init(&a->c, cs->cl, attempt_decode);
    a->c.on_done = attempt_done;
    a->c.data_plane = 1;   /* a Lookup: no admin token */
    a->s = s;
    a->r = r;
    a->sent = now;
    a->tmo = tmo;
    a->hedge = hedge;
    a->probe = rp_begin(&r->h, now);
    s->tried |= 1u << r->idx;
    s->inflight++;
    s->attempts++;
    s->last_sent = now;
    lk->outstanding++;
    a->next = lk->attempts;
    if (a->next)
        a->next->prev = a;
    lk->attempts = a;
    return a;
}

/* Starts a prepared attempt's call (cs->mu held or not). */
static int launch(attempt *a, engram_error *e)
{
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&a->s->req, 1);
    return ec_call_start_on(&a->c, a->r->ch, a->r->m_lookup, bb, a->tmo, e);
}

/* A prepared attempt whose call did not start: nothing of it is in flight
 * any more, and s's last_code/last_msg/last_raw say why (cs->mu held). */
static void unprepare(engram_lookup *lk, attempt *a, int rc, const char *why)
{
    sub *s = a->s;
    s->last_code = rc;
    snprintf(s->last_msg, sizeof s->last_msg, "%s: %.200s", engram_status_name(rc), why);
    snprintf(s->last_raw, sizeof s->last_raw, "%s", why);   /* (why may be in a) */
    if (a->prev)
        a->prev->next = a->next;
    else
        lk->attempts = a->next;
    if (a->next)
        a->next->prev = a->prev;
    s->inflight--;
    lk->outstanding--;
    rp_abandon(&a->r->h, a->probe);
    ec_call_release(&a->c);
    free(a);
}

/* Sends s to r (cs->mu held). On failure nothing is in flight and s's
 * last_code/last_msg/last_raw say why. */
static int start_attempt(engram_lookup *lk, sub *s, replica *r, int hedge)
{
    attempt *a = prepare_attempt(lk, s, r, hedge);
    if (!a)
        return s->last_code;
    engram_error e;
    int rc = launch(a, &e);
    if (rc)
        unprepare(lk, a, rc, e.message);
    return rc;
}

/* The next replica for s (NULL: none left); see rp_pick. cs->mu held. */
static replica *pick(ec_cluster *cs, sub *s, int hedge)
{
    shard *sh = &cs->shards[s->shard];
    int i = rp_pick(sh->health, sh->n, s->tried, &sh->rr, s->attempts == 0, hedge, mono_now());
    return i < 0 ? NULL : sh->rep[i];
}

/* The replica s goes to next, or NULL after failing the lookup: there is
 * none left, or the deadline passed (cs->mu held). */
static replica *next_replica(engram_lookup *lk, sub *s)
{
    ec_cluster *cs = lk->cs;
    /* (The single router's one attempt carries the deadline itself, and
     * its expiry comes back as the server-side status a one-server client
     * always saw.) */
    if (!cs->single && lk->deadline && mono_now() >= lk->deadline) {
        char what[96];
        snprintf(what, sizeof what, "deadline of %lld ms exceeded after %u attempt%s",
                 (long long)lk->deadline_ms, s->attempts, s->attempts == 1 ? "" : "s");
        fail_sub(lk, s, ENGRAM_DEADLINE_EXCEEDED, what);
        return NULL;
    }
    replica *r = pick(cs, s, 0);
    if (!r) {
        fail_sub(lk, s, s->last_code ? s->last_code : ENGRAM_UNAVAILABLE, "every replica failed");
        return NULL;
    }
    if (s->attempts > 0)
        count(&cs->cl->counters.retries, 1);
    return r;
}

/* s's attempt could not be sent: the lookup fails (cs->mu held). */
static void fail_unsent(engram_lookup *lk, sub *s)
{
    ec_cluster *cs = lk->cs;
    if (cs->single)
        fail_lookup(lk, s->last_code, "%s", s->last_raw);
    else
        fail_lookup(lk, s->last_code, "shard %u of %u: %s", s->shard, cs->nshards, s->last_msg);
}

/* Sends s to its next replica, or fails the lookup when there is none or
 * the deadline passed (cs->mu held; s pending, nothing of it in flight). */
static void try_next(engram_lookup *lk, sub *s)
{
    replica *r = next_replica(lk, s);
    if (r && start_attempt(lk, s, r, 0))
        fail_unsent(lk, s);
}

/* On the completion thread, no lock held. Writes the reply's rows to the
 * destination when this attempt claims its sub-request (see the top). */
static int attempt_decode(ec_call *c, grpc_byte_buffer *reply)
{
    attempt *a = (attempt *)c;
    sub *s = a->s;
    engram_lookup *lk = s->lk;
    ec_cluster *cs = lk->cs;
    pthread_mutex_lock(&cs->mu);
    int skip = a->cancelled || s->state != SUB_PENDING || s->writer || lk->failed ||
               lk->need_repin;
    if (!skip)
        s->writer = a;
    pthread_mutex_unlock(&cs->mu);
    if (skip) {
        a->superseded = 1;
        snprintf(c->message, sizeof c->message, "superseded");
        return ENGRAM_CANCELLED;
    }
    uint32_t rb;
    uint64_t version;
    int code = ec_rows_decode(&lk->dest, s->pos, s->n, lk->n, reply, &rb, &version, c->message,
                              sizeof c->message);
    pthread_mutex_lock(&cs->mu);
    if (code == ENGRAM_OK && lk->pinned &&
        (version != lk->version || (lk->row_bytes && rb != lk->row_bytes))) {
        snprintf(c->message, sizeof c->message,
                 "reply is version %llu with %u-byte rows; asked for version %llu with %u-byte rows",
                 (unsigned long long)version, rb, (unsigned long long)lk->version, lk->row_bytes);
        code = ENGRAM_DATA_LOSS;
    }
    if (code == ENGRAM_OK) {
        a->decoded = 1;
        lk->row_bytes = rb;
        if (!lk->pinned)
            lk->version = version;
    } else {
        s->writer = NULL;
    }
    pthread_mutex_unlock(&cs->mu);
    return code;
}

static void unlink_attempt(engram_lookup *lk, attempt *a)
{
    if (a->prev)
        a->prev->next = a->next;
    else
        lk->attempts = a->next;
    if (a->next)
        a->next->prev = a->prev;
}

/* A finished attempt's verdict (cs->mu held): the sub-request's state,
 * the replica's health, failover, a re-pin; frees a. */
static void attempt_settle(attempt *a)
{
    ec_call *c = &a->c;
    sub *s = a->s;
    engram_lookup *lk = s->lk;
    ec_cluster *cs = lk->cs;
    replica *r = a->r;
    int64_t now = mono_now();

    unlink_attempt(lk, a);
    s->inflight--;
    lk->outstanding--;
    if (s->writer == a)
        s->writer = NULL;
    if (c->code == ENGRAM_OK && a->decoded) {
        health_ok(cs, r);
        rp_record_latency(&cs->policy, now - a->sent);
        if (s->state == SUB_PENDING) {
            s->state = SUB_OK;
            lk->subs_left--;
            if (a->hedge)
                count(&cs->cl->counters.hedge_wins, 1);
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
        rp_abandon(&r->h, a->probe);     /* no verdict */
    } else if (ec_retryable(c->code, c->transport_failed)) {
        health_fail(cs, r, a->probe);
        s->last_code = c->code;
        snprintf(s->last_msg, sizeof s->last_msg, "%s: %.160s from %.60s", engram_status_name(c->code),
                 c->message, r->addr);
        snprintf(s->last_raw, sizeof s->last_raw, "%s", c->message);
        if (s->state == SUB_PENDING && !lk->failed && !lk->need_repin && s->inflight == 0)
            try_next(lk, s);
    } else if (lk->pinned && c->code == ENGRAM_NOT_FOUND && strstr(c->message, "has no version")) {
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
        else
            rp_abandon(&r->h, a->probe);
        fail_lookup(lk, c->code, "%s", c->message);
    }
    ec_call_release(&a->c);
    free(a);
    maybe_finish(lk);
}

/* On the completion thread after the call released everything; owns c
 * (and hands it to its starter while that is still launching it). */
static void attempt_done(ec_call *c)
{
    attempt *a = (attempt *)c;
    ec_cluster *cs = a->s->lk->cs;
    pthread_mutex_lock(&cs->mu);
    if (a->launching)
        a->landed = 1;
    else
        attempt_settle(a);
    pthread_mutex_unlock(&cs->mu);
}

/* ---- request packing ------------------------------------------------------------- */

/* Written by hand (common/wire.c): protobuf-c's generic pack was the
 * largest user-space cost of a lookup on the client after the copy out. */
static void pack_sub(sub *s, const uint64_t *rows, const char *table, uint64_t version)
{
    size_t tlen = strlen(table), rows_len;
    size_t len = lookup_request_len(tlen, rows, s->n, version, &rows_len);
    grpc_slice sl = grpc_slice_malloc(len);
    lookup_request_put(GRPC_SLICE_START_PTR(sl), table, tlen, rows, s->n, rows_len, version);
    grpc_slice_unref(s->req);
    s->req = sl;
}

/* ---- the router thread: hedges and re-pins ------------------------------------- */

/* Sends hedges that are due; returns when the next one will be (0: none).
 * cs->mu held. */
static int64_t hedge_scan(ec_cluster *cs)
{
    if (cs->stopping)
        return 0;
    int64_t thr = rp_hedge_delay(&cs->policy);
    if (thr < 0)
        return 0;
    int64_t now = mono_now(), next = 0;
    for (engram_lookup *lk = cs->active; lk; lk = lk->next) {
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
                count(&cs->cl->counters.hedges, 1);
        }
    }
    return next;
}

/* Re-resolves lk's version and sends every sub-request again with it.
 * Called without cs->mu; lk is kept alive by its queued `outstanding`. */
static void run_repin(ec_cluster *cs, engram_lookup *lk)
{
    vpin r;
    engram_error e;
    int rc = ENGRAM_CANCELLED;
    pthread_mutex_lock(&cs->mu);
    int failed = lk->failed;
    pthread_mutex_unlock(&cs->mu);
    if (!failed)
        rc = ec_resolve(cs, lk->table, &r, lk->deadline, &e);
    pthread_mutex_lock(&cs->mu);
    lk->outstanding--;
    if (rc == ENGRAM_OK) {
        vpin *p = ec_find_pin(cs, lk->table);
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
            pack_sub(s, s->rows, lk->table, r.version);
            s->state = SUB_PENDING;
            s->tried = s->attempts = 0;
            s->hedged = 0;
            s->last_code = 0;
            s->last_msg[0] = s->last_raw[0] = '\0';
        }
        count(&cs->cl->counters.subrequests, lk->nsubs);
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

void *ec_router_thread(void *arg)
{
    ec_cluster *cs = arg;
    pthread_mutex_lock(&cs->mu);
    for (;;) {
        if (cs->jobs) {
            engram_lookup *lk = cs->jobs;
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

void ec_router_fail_queued(ec_cluster *cs)
{
    pthread_mutex_lock(&cs->mu);
    while (cs->jobs) {
        engram_lookup *lk = cs->jobs;
        cs->jobs = lk->job_next;
        lk->queued = 0;
        lk->outstanding--;
        fail_lookup(lk, ENGRAM_CANCELLED, "cancelled by engram_client_close");
        maybe_finish(lk);
    }
    pthread_mutex_unlock(&cs->mu);
}

/* ---- start, wait, free ---------------------------------------------------------- */

/* A lookup that failed before anything was sent: finished at once, its
 * error reported by wait as a server's would be. */
static void prefail(engram_lookup *lk, int code, const char *msg)
{
    lk->failed = 1;
    lk->code = code;
    snprintf(lk->message, sizeof lk->message, "%s", msg);
    lk->done = 1;
}

/* One sub-request per shard holding rows, each with its rows in request
 * order. A router of one shard sends the request as it is: no positions
 * (the reply is the caller's rows, back to back), and on the single router
 * no copy of the rows either (nothing re-sends them) and a sub-request
 * even for no rows, so the server judges the table as it always did. */
static int split(engram_lookup *lk, const uint64_t *rows)
{
    ec_cluster *cs = lk->cs;
    uint32_t S = cs->nshards;
    if (S == 1) {
        if (lk->n == 0 && lk->pinned)
            return ENGRAM_OK;
        lk->subs = &lk->one;
        sub *s = &lk->subs[lk->nsubs++];
        s->lk = lk;
        s->n = lk->n;
        s->req = grpc_empty_slice();
        if (lk->pinned) {
            if (!(lk->rows = malloc((lk->n ? lk->n : 1) * sizeof *lk->rows)))
                return ENGRAM_RESOURCE_EXHAUSTED;
            memcpy(lk->rows, rows, lk->n * sizeof *rows);
            s->rows = lk->rows;
        }
        pack_sub(s, rows, lk->table, lk->version);
        return ENGRAM_OK;
    }
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
        pack_sub(&lk->subs[i], lk->subs[i].rows, lk->table, lk->version);
    return ENGRAM_OK;
}

int ec_route_start(ec_cluster *cs, const char *table, const uint64_t *rows, size_t n,
                   const ec_dest *dest, engram_lookup **out_lk, engram_error *err)
{
    engram_client *cl = cs->cl;
    *out_lk = NULL;
    if (cs->nshards > 1 && n > UINT32_MAX)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "%zu rows in one lookup; at most %u",
                        n, UINT32_MAX);
    /* (Allocations per lookup are few: the handle, with its name and a
     * one-shard lookup's sub-request inside, and one attempt.) */
    engram_lookup *lk = calloc(1, sizeof *lk);
    size_t tlen = strlen(table);
    if (lk)
        lk->table = tlen < sizeof lk->name_buf ? memcpy(lk->name_buf, table, tlen + 1)
                                                : strdup(table);
    if (!lk || !lk->table) {
        free(lk);
        return ec_error(err, ENGRAM_RESOURCE_EXHAUSTED, "out of memory");
    }
    lk->cs = cs;
    lk->dest = *dest;
    lk->n = n;
    lk->pinned = !cs->single;
    lk->deadline_ms = cl->deadline_ms;
    lk->deadline = cl->deadline_ms > 0 ? mono_now() + cl->deadline_ms * MS : 0;
    pthread_mutex_init(&lk->mu, NULL);
    ec_cond_init_mono(&lk->cv);

    if (lk->pinned) {
        vpin pin = {0};
        engram_error e;
        int rc = ec_pin_version(cs, table, &pin, lk->deadline, &e);
        *out_lk = lk;
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
    }
    if (split(lk, rows)) {
        *out_lk = NULL;
        ec_route_free(lk);
        return ec_error(err, ENGRAM_RESOURCE_EXHAUSTED, "out of memory for %zu rows", n);
    }

    /* The same-node path first (local.c), on this thread: a sub-request
     * served from a mapped file is answered before anything is sent, with
     * the version the lookup reads (a cluster's pin; on a single server the
     * file's, which the lookup then reports). Nothing else touches lk yet. */
    uint32_t served = 0;
    for (uint32_t i = 0; cs->local && i < lk->nsubs; i++) {
        sub *s = &lk->subs[i];
        uint64_t v = lk->pinned ? lk->version : 0;
        uint32_t rb = 0;
        char msg[sizeof lk->message];
        int rc = ec_local_serve(cs, lk->table, &v, s->shard, s->rows ? s->rows : rows, s->pos,
                                s->n, lk->n, &lk->dest, &rb, msg, sizeof msg);
        if (rc == EC_LOCAL_SERVED) {
            s->state = SUB_OK;
            served++;
            lk->row_bytes = rb;
            lk->version = v;
        } else if (rc != EC_LOCAL_REMOTE) {
            *out_lk = lk;
            prefail(lk, rc, msg);
            return ec_ok(err);
        }
    }

    /* The first attempts are prepared under cs->mu and started outside it:
     * starting a gRPC call is the longest step of a start, and the
     * completion thread needs cs->mu for every reply of every lookup
     * meanwhile. An attempt being started (`launching`) is never cancelled
     * by another thread; whoever fails the lookup meanwhile only marks it,
     * and it is cancelled here once its call exists. */
    attempt *first[CLUSTER_MAX_SHARDS];
    uint32_t nfirst = 0;
    pthread_mutex_lock(&cs->mu);
    lk->next = cs->active;
    if (lk->next)
        lk->next->prev = lk;
    cs->active = lk;
    lk->listed = 1;
    lk->subs_left = lk->nsubs - served;
    count(&cl->counters.subrequests, lk->nsubs);
    for (uint32_t i = 0; i < lk->nsubs && !lk->failed; i++) {
        sub *s = &lk->subs[i];
        if (s->state != SUB_PENDING)
            continue;   /* served locally */
        replica *r = next_replica(lk, s);
        if (!r)
            break;
        attempt *a = prepare_attempt(lk, s, r, 0);
        if (!a) {
            fail_unsent(lk, s);
            break;
        }
        a->launching = 1;
        first[nfirst++] = a;
    }
    pthread_mutex_unlock(&cs->mu);
    int launched[CLUSTER_MAX_SHARDS];
    for (uint32_t k = 0; k < nfirst; k++) {
        engram_error e;
        int rc = launch(first[k], &e);
        launched[k] = rc == ENGRAM_OK;
        if (rc) {   /* kept in the call until unprepare reads it */
            first[k]->c.code = rc;
            snprintf(first[k]->c.message, sizeof first[k]->c.message, "%s", e.message);
        }
    }
    pthread_mutex_lock(&cs->mu);
    uint32_t nlaunched = 0;
    for (uint32_t k = 0; k < nfirst; k++) {
        attempt *a = first[k];
        sub *s = a->s;
        a->launching = 0;
        if (!launched[k]) {
            unprepare(lk, a, a->c.code, a->c.message);
            fail_unsent(lk, s);
            continue;
        }
        nlaunched++;
        if (a->landed)
            attempt_settle(a);       /* it finished before we got back here */
        else if (a->cancelled)
            ec_call_cancel(&a->c, "cancelled: the lookup failed elsewhere");
    }
    int unsent = cs->single && lk->failed && !nlaunched && !lk->outstanding;
    maybe_finish(lk);
    if (cs->has_thread && cs->policy.cfg.hedge_percentile > 0)
        pthread_cond_broadcast(&cs->cv);
    pthread_mutex_unlock(&cs->mu);
    if (unsent) {
        /* The single router's call did not start: start reports it, as a
         * one-server client always did. */
        int rc = ec_error(err, lk->code, "%s", lk->message);
        ec_route_free(lk);
        return rc;
    }
    *out_lk = lk;
    return ec_ok(err);
}

int ec_route_wait(engram_lookup *lk, int64_t timeout_ms, engram_error *err)
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

int ec_route_poll(engram_lookup *lk)
{
    pthread_mutex_lock(&lk->mu);
    int done = lk->done;
    pthread_mutex_unlock(&lk->mu);
    return done;
}

void ec_route_result(const engram_lookup *lk, uint32_t *row_bytes, uint64_t *version)
{
    if (row_bytes)
        *row_bytes = lk->row_bytes;
    if (version)
        *version = lk->version;
}

void ec_route_free(engram_lookup *lk)
{
    if (!lk)
        return;
    if (!ec_route_poll(lk)) {
        /* Not finished, so the client is not closed: cs is alive. */
        ec_cluster *cs = lk->cs;
        pthread_mutex_lock(&cs->mu);
        if (lk->queued) {
            for (engram_lookup **p = &cs->jobs; *p; p = &(*p)->job_next)
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
    if (lk->subs != &lk->one)
        free(lk->subs);
    free(lk->rows);
    free(lk->pos);
    if (lk->table != lk->name_buf)
        free(lk->table);
    pthread_cond_destroy(&lk->cv);
    pthread_mutex_destroy(&lk->mu);
    free(lk);
}
