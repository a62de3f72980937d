/* version_pin.c: which table version a cluster's lookups name. Every
 * sub-request of one lookup asks for the same version, so a batch never
 * mixes versions while shards switch: the version is resolved with a
 * GetTable on a healthy replica (any shard, failing over on transport
 * errors) and cached per table for version_refresh_ms. A stale pin is
 * refreshed by an asynchronous GetTable whose completion (refresh_done, on
 * the completion thread) updates it or asks the next replica, while lookups
 * keep using the pinned one; only the first resolve of a table (and every
 * one with version_refresh_ms 0) is waited for. A lookup whose version was
 * dropped under it re-pins through ec_resolve (routed_lookup.c).
 *
 * Locking: cs->mu guards the pins (router.h); the blocking GetTable runs
 * without it, with `resolving` set so concurrent callers wait on cs->vcv.
 * The single-server router pins nothing and never comes here. */
#include "router.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engram/v1/engram.pb-c.h"

/* ---- resolving ------------------------------------------------------------------ */

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
            if (rp_usable(&r->h, now) == !pass)
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
int ec_resolve(ec_cluster *cs, const char *table, vpin *res, int64_t deadline,
                   engram_error *err)
{
    replica *order[CLUSTER_MAX_SHARDS * CLUSTER_MAX_REPLICAS];
    pthread_mutex_lock(&cs->mu);
    size_t n = resolve_order(cs, order);
    pthread_mutex_unlock(&cs->mu);

    char last[300] = "";
    int last_code = ENGRAM_UNAVAILABLE;
    for (size_t k = 0; k < n; k++) {
        int64_t tmo = cs->attempt_timeout_ms > 0 ? cs->attempt_timeout_ms : 0;
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
            count(&cs->cl->counters.version_resolves, 1);
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

vpin *ec_find_pin(ec_cluster *cs, const char *table)
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
        int64_t tmo = cs->attempt_timeout_ms > 0 ? cs->attempt_timeout_ms : 0;
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
        count(&rf->cs->cl->counters.version_resolves, 1);
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
    int again = ec_retryable(c->code, c->transport_failed);
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
int ec_pin_version(ec_cluster *cs, const char *table, vpin *out, int64_t deadline,
                       engram_error *err)
{
    pthread_mutex_lock(&cs->mu);
    vpin *p = ec_find_pin(cs, table);
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
    int rc = ec_resolve(cs, table, &r, deadline, err);
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

void ec_pins_free(ec_cluster *cs)
{
    while (cs->pins) {
        vpin *p = cs->pins;
        cs->pins = p->next;
        free(p->table);
        free(p);
    }
}
