/* cluster.c: the routers lookups go through (router.h): discovery of a
 * cluster on the first lookup, building a cluster's router (a channel per
 * replica, the replica policy, the router thread), the client's
 * single-server router, and their teardown at close.
 *
 * Discovery asks the server the client was opened on for its cluster map
 * (Admin.GetClusterMap) once. A map of one shard with one replica, a
 * server without that call, or one whose admin plane this client may not
 * use keeps the client on its single-server router: one shard, one
 * replica, the bootstrap channel, requests for the active version and the
 * server's errors as it sends them. Either way every lookup then runs the
 * same code (routed_lookup.c). */
#include "router.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/grpc_security.h>

#include "methods.h"

/* Settings of a cluster's replica policy, from the client's options. */
static rp_config policy_config(const engram_client_options *o)
{
    rp_config c = {
        .eject_after_failures = o->eject_after_failures,
        .eject_after_hedge_losses = o->eject_after_hedge_losses,
        .eject_backoff_ms = o->eject_backoff_ms,
        .hedge_percentile = o->hedge_percentile,
        .hedge_min_ms = o->hedge_min_ms,
    };
    return c;
}

/* The parts of a router both kinds share; shards and replicas laid out,
 * channels not yet made. NULL: out of memory. */
static ec_cluster *router_alloc(engram_client *cl, uint32_t nshards, size_t nreps,
                                const rp_config *pc)
{
    ec_cluster *cs = calloc(1, sizeof *cs);
    if (cs) {
        cs->shards = calloc(nshards, sizeof *cs->shards);
        cs->reps = calloc(nreps, sizeof *cs->reps);
    }
    if (!cs || !cs->shards || !cs->reps) {
        if (cs) {
            free(cs->shards);
            free(cs->reps);
        }
        free(cs);
        return NULL;
    }
    cs->cl = cl;
    cs->o = &cl->opts;
    cs->nshards = nshards;
    cs->nreps = nreps;
    rp_init(&cs->policy, pc);
    /* (Out of memory for it: no local path, as with ENGRAM_LOCAL_OFF.) */
    if (cl->opts.local != ENGRAM_LOCAL_OFF)
        cs->local = ec_local_new(cs, cl->opts.local);
    pthread_mutex_init(&cs->mu, NULL);
    ec_cond_init_mono(&cs->cv);
    pthread_cond_init(&cs->vcv, NULL);
    return cs;
}

static void router_release(ec_cluster *cs)
{
    ec_local_free(cs->local);   /* its lister uses the channels */
    if (!cs->single)
        for (size_t j = 0; j < cs->nreps; j++)
            grpc_channel_destroy(cs->reps[j].ch);
    ec_pins_free(cs);
    pthread_cond_destroy(&cs->vcv);
    pthread_cond_destroy(&cs->cv);
    pthread_mutex_destroy(&cs->mu);
    free(cs->shards);
    free(cs->reps);
    free(cs);
}

ec_cluster *ec_router_single(engram_client *cl)
{
    /* No ejection (nowhere else to go), no hedging (nothing to hedge to),
     * no attempt timeout beyond the client's deadline. */
    rp_config pc = {0};
    ec_cluster *cs = router_alloc(cl, 1, 1, &pc);
    if (!cs)
        return NULL;
    cs->single = 1;
    replica *r = &cs->reps[0];
    snprintf(r->addr, sizeof r->addr, "%s", "the server");
    r->ch = cl->channel;
    r->m_lookup = cl->m_lookup;
    r->m_get_table = cl->m_get_table;
    r->m_list_local = grpc_channel_register_call(cl->channel, METHOD_LIST_LOCAL_TABLES, NULL, NULL);
    rp_replica_init(&cs->policy, &r->h);
    cs->shards[0].n = 1;
    cs->shards[0].rep[0] = r;
    cs->shards[0].health[0] = &r->h;
    return cs;
}

/* ---- discovery, start and stop ------------------------------------------------- */

static ec_cluster *cluster_new(engram_client *cl, const engram_cluster *map, engram_error *err)
{
    size_t nreps = 0;
    for (uint32_t s = 0; s < map->shards; s++)
        nreps += map->replicas[s];
    rp_config pc = policy_config(&cl->opts);
    ec_cluster *cs = router_alloc(cl, map->shards, nreps, &pc);
    if (!cs) {
        ec_error(err, ENGRAM_RESOURCE_EXHAUSTED, "out of memory for the cluster");
        return NULL;
    }
    cs->attempt_timeout_ms = cl->opts.attempt_timeout_ms;

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
            rp_replica_init(&cs->policy, &r->h);
            /* The bootstrap channel's credentials (TLS, server name). */
            r->ch = ec_channel_create(cl, r->addr, &chargs);
            r->m_lookup = grpc_channel_register_call(r->ch, METHOD_LOOKUP, NULL, NULL);
            r->m_get_table = grpc_channel_register_call(r->ch, METHOD_GET_TABLE, NULL, NULL);
            r->m_list_local =
                grpc_channel_register_call(r->ch, METHOD_LIST_LOCAL_TABLES, NULL, NULL);
            cs->shards[s].rep[i] = r;
            cs->shards[s].health[i] = &r->h;
        }
    }
    int rc = pthread_create(&cs->thread, NULL, ec_router_thread, cs);
    if (rc) {
        router_release(cs);
        ec_error(err, ENGRAM_RESOURCE_EXHAUSTED, "cannot start the cluster thread: %s", strerror(rc));
        return NULL;
    }
    cs->has_thread = 1;
    return cs;
}

static int discover(engram_client *cl, int *mode, engram_error *err)
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
    ec_local_stop(cs->local);
}

void ec_cluster_free(ec_cluster *cs)
{
    if (cs->has_thread)
        pthread_join(cs->thread, NULL);
    /* Every call has completed and the thread is gone: only re-pins queued
     * after it stopped can be left. */
    ec_router_fail_queued(cs);
    router_release(cs);
}

int ec_router_get(engram_client *cl, ec_cluster **cs, engram_error *err)
{
    int mode = __atomic_load_n(&cl->mode, __ATOMIC_ACQUIRE);
    int rc;
    if (mode == EC_MODE_UNKNOWN && (rc = discover(cl, &mode, err)))
        return rc;
    *cs = mode == EC_MODE_CLUSTER ? cl->cluster : cl->single;
    return ENGRAM_OK;
}
