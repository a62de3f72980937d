/* replica_policy.h: replica health and hedging as plain data and pure
 * functions: which replica to try, when one is ejected and re-admitted,
 * and how long to wait before hedging. No gRPC, no locks, no clock: the
 * caller passes `now` (monotonic ns) and serialises calls (cluster code
 * holds its mutex), so tests/unit/test_replica_policy.c drives it on a
 * fake clock. */
#ifndef ENGRAM_CLIENT_REPLICA_POLICY_H
#define ENGRAM_CLIENT_REPLICA_POLICY_H

#include <stddef.h>
#include <stdint.h>

#define RP_LAT_WINDOW 1024        /* recent sub-request latencies kept */
#define RP_HEDGE_MIN_SAMPLES 20   /* no hedging on fewer samples than this */
#define RP_BACKOFF_MAX_MS 30000   /* an ejection never lasts longer */

typedef struct rp_config {
    int32_t eject_after_failures;     /* consecutive failures; 0: never eject */
    int32_t eject_after_hedge_losses; /* consecutive lost hedges; 0: never */
    int64_t eject_backoff_ms;         /* first ejection; doubles per re-ejection */
    int32_t hedge_percentile;         /* hedge at this latency percentile; 0: never */
    int64_t hedge_min_ms;             /* ... but never sooner than this */
} rp_config;

/* One replica's health. */
typedef struct rp_replica {
    uint32_t fails;            /* consecutive */
    uint32_t hedge_losses;     /* consecutive: tried first, a hedge answered */
    int ejected;               /* until eject_until; then one probe at a time */
    int probing;               /* a probe is in flight */
    int64_t eject_until, ejected_at;
    int64_t backoff_ms;        /* length of the next ejection */
} rp_replica;

/* The policy of one cluster: its settings and the latency window the
 * hedge delay comes from. */
typedef struct rp_policy {
    rp_config cfg;
    uint32_t lat_us[RP_LAT_WINDOW];
    size_t lat_n, lat_pos, lat_new;
    int64_t hedge_ns;          /* cached delay; < 0: not computed */
} rp_policy;

void rp_init(rp_policy *p, const rp_config *cfg);
void rp_replica_init(const rp_policy *p, rp_replica *r);

/* 1 when r may be sent a request now: healthy, or ejected with its backoff
 * over and no probe out yet. */
int rp_usable(const rp_replica *r, int64_t now);

/* An attempt is being sent to r: returns 1 when it is r's probe (r was
 * ejected and its backoff is over), which marks r probing until the probe's
 * verdict (rp_ok, rp_fail, rp_hedge_lost) or rp_abandon. */
int rp_begin(rp_replica *r, int64_t now);
/* The attempt ended with no verdict on r (we cancelled it, or it never
 * started): a probe frees the slot for the next one. */
void rp_abandon(rp_replica *r, int probe);

/* Verdicts. ok: r answered (any status but a transport failure): healthy
 * again, backoff reset. fail: a transport failure, UNAVAILABLE or a
 * deadline. hedge_lost: r was tried first and another replica's hedge
 * answered first. fail and hedge_lost return 1 when they ejected r (the
 * caller counts ejections); an attempt sent before an ejection that is
 * still running does not extend it. */
void rp_ok(const rp_policy *p, rp_replica *r);
int rp_fail(const rp_policy *p, rp_replica *r, int probe, int64_t now);
int rp_hedge_lost(const rp_policy *p, rp_replica *r, int probe, int64_t now);

/* The next replica of a shard (reps[0..n)) for a sub-request that has
 * tried the replicas whose bit (1 << index) is set in `tried`: round-robin
 * from *cursor among usable ones; for a failover with none usable, the
 * least recently ejected untried one; for a hedge, only a usable one.
 * Only a sub-request's first pick (first) advances the cursor: if hedges
 * and failovers moved it too, a replica that always needs a hedge would be
 * picked first by every other sub-request. Returns an index or -1. */
int rp_pick(rp_replica *const *reps, uint32_t n, uint32_t tried, uint32_t *cursor, int first,
            int hedge, int64_t now);

/* A sub-request answered after `ns`. */
void rp_record_latency(rp_policy *p, int64_t ns);
/* How long after its last attempt a lone sub-request gets a hedge, in ns;
 * -1 when hedging is off or too few latencies are known. Recomputed (a
 * sort of at most RP_LAT_WINDOW samples) every 16 new samples. */
int64_t rp_hedge_delay(rp_policy *p);

#endif
