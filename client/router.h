/* router.h: what the parts of the lookup router share (cluster.c builds
 * it, version_pin.c pins table versions on it, routed_lookup.c runs
 * lookups through it). Callers outside those files see only the functions
 * in client_internal.h.
 *
 * A router is a set of shards, each with its replicas' channels and
 * health (replica_policy.h). Every lookup goes through one: a cluster found
 * by discovery, or the client's own router of one shard with one replica,
 * the server the client was opened on (`single`). The single router talks
 * over the bootstrap channel, pins no version (requests ask for the active
 * one, as a client always did without a cluster), never hedges or ejects
 * and hands the server's errors back verbatim; it has no thread.
 *
 * Lock order: cs->mu, then an attempt's ec_call mu (cancel) or client->mu
 * (ec_call_start links the call), or a lookup's own mu (which only
 * publishes `done` to waiters). client.c never calls in here while holding
 * one of its locks, so there is no cycle. */
#ifndef ENGRAM_CLIENT_ROUTER_H
#define ENGRAM_CLIENT_ROUTER_H

#include "client_internal.h"

#include "cluster.h"
#include "grpc_util.h"
#include "local.h"
#include "replica_policy.h"

#define MS 1000000LL            /* ns per ms */

typedef struct replica {
    char addr[CLUSTER_ADDR_MAX + 1];
    uint32_t shard, idx;         /* idx: position in its shard */
    grpc_channel *ch;            /* owned unless the router is single */
    void *m_lookup, *m_get_table, *m_list_local;
    rp_replica h;                /* health, under cs->mu */
} replica;

typedef struct shard {
    uint32_t n;
    replica *rep[CLUSTER_MAX_REPLICAS];
    rp_replica *health[CLUSTER_MAX_REPLICAS];   /* &rep[i]->h, for rp_pick */
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
    int single;                  /* the client's own one-server router */
    int64_t attempt_timeout_ms;  /* per attempt; 0: only the deadline */
    uint32_t nshards;
    shard *shards;
    replica *reps;
    size_t nreps;
    uint32_t resolve_rr;

    pthread_mutex_t mu;
    pthread_cond_t cv;           /* wakes the router thread */
    pthread_cond_t vcv;          /* a version resolve ended */
    pthread_t thread;
    int has_thread;
    int stopping;
    vpin *pins;
    rp_policy policy;            /* health settings and latency window */
    engram_lookup *active;       /* unfinished lookups */
    engram_lookup *jobs;         /* lookups waiting for a re-pin */
    ec_local *local;             /* the same-node path; NULL: local off */
};

static inline int64_t mono_now(void)
{
    return (int64_t)now_ns();
}

static inline void count(uint64_t *field, uint64_t k)
{
    __atomic_add_fetch(field, k, __ATOMIC_RELAXED);
}

static inline int ec_retryable(int code, int transport_failed)
{
    return code == ENGRAM_UNAVAILABLE || code == ENGRAM_DEADLINE_EXCEEDED || transport_failed;
}

/* Health verdicts with the client's counters (cs->mu held). */
static inline void health_ok(ec_cluster *cs, replica *r)
{
    rp_ok(&cs->policy, &r->h);
}

static inline void health_fail(ec_cluster *cs, replica *r, int probe)
{
    if (rp_fail(&cs->policy, &r->h, probe, mono_now()))
        count(&cs->cl->counters.ejections, 1);
}

static inline void health_hedge_lost(ec_cluster *cs, replica *r, int probe)
{
    if (rp_hedge_lost(&cs->policy, &r->h, probe, mono_now())) {
        count(&cs->cl->counters.ejections, 1);
        count(&cs->cl->counters.slow_ejections, 1);
    }
}

/* ---- version_pin.c ---- */

/* The version lookups of `table` use now (blocking on the first resolve);
 * see version_pin.c. No lock held. */
int ec_pin_version(ec_cluster *cs, const char *table, vpin *out, int64_t deadline,
                   engram_error *err);
/* One blocking resolve of the table's active version; no lock held. */
int ec_resolve(ec_cluster *cs, const char *table, vpin *res, int64_t deadline, engram_error *err);
/* The table's pin entry, created empty when missing (NULL: out of
 * memory). cs->mu held. */
vpin *ec_find_pin(ec_cluster *cs, const char *table);
/* Frees every pin (at close). */
void ec_pins_free(ec_cluster *cs);

/* ---- routed_lookup.c ---- */

/* The router's thread: hedges and re-pins (started by cluster.c). */
void *ec_router_thread(void *arg);
/* At close, after the thread stopped: fails the re-pins still queued. */
void ec_router_fail_queued(ec_cluster *cs);

#endif
