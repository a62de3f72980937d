/* replica_policy.c: replica health and hedging decisions (see
 * replica_policy.h). Pure state machine: every function gets the time from
 * its caller, so the same code runs on the cluster's monotonic clock and on
 * the unit test's fake one.
 *
 * Health: consecutive failures (or consecutive lost hedges: a replica that
 * stalls without failing) eject a replica for a backoff that doubles, up to
 * RP_BACKOFF_MAX_MS, each time it is ejected again; after the backoff one
 * request at a time goes to it as a probe, and an answer re-admits it with
 * the backoff reset. Hedging: a sub-request still waiting on its only
 * attempt after the hedge_percentile latency of recent sub-requests (at
 * least hedge_min_ms) gets a duplicate on another usable replica. */
#include "replica_policy.h"

#include <stdlib.h>
#include <string.h>

#define MS 1000000LL

void rp_init(rp_policy *p, const rp_config *cfg)
{
    memset(p, 0, sizeof *p);
    p->cfg = *cfg;
    p->hedge_ns = -1;
}

void rp_replica_init(const rp_policy *p, rp_replica *r)
{
    memset(r, 0, sizeof *r);
    r->backoff_ms = p->cfg.eject_backoff_ms;
}

int rp_usable(const rp_replica *r, int64_t now)
{
    return !r->ejected || (now >= r->eject_until && !r->probing);
}

int rp_begin(rp_replica *r, int64_t now)
{
    if (r->ejected && now >= r->eject_until) {
        r->probing = 1;
        return 1;
    }
    return 0;
}

void rp_abandon(rp_replica *r, int probe)
{
    if (probe)
        r->probing = 0;
}

void rp_ok(const rp_policy *p, rp_replica *r)
{
    r->fails = r->hedge_losses = 0;
    r->ejected = r->probing = 0;
    r->backoff_ms = p->cfg.eject_backoff_ms;
}

static int eject(rp_replica *r, int64_t now)
{
    if (r->ejected && now < r->eject_until)
        return 0;              /* an attempt sent before the ejection */
    r->ejected = 1;
    r->ejected_at = now;
    r->eject_until = now + r->backoff_ms * MS;
    r->backoff_ms = r->backoff_ms * 2 > RP_BACKOFF_MAX_MS ? RP_BACKOFF_MAX_MS : r->backoff_ms * 2;
    return 1;
}

/* One more strike of a kind (*run); at `after` in a row (0: never) r is
 * ejected. A probe that strikes ends its probe and, the run still
 * standing, re-ejects. */
static int strike(rp_replica *r, int probe, uint32_t *run, int32_t after, int64_t now)
{
    ++*run;
    if (probe)
        r->probing = 0;
    return after > 0 && *run >= (uint32_t)after ? eject(r, now) : 0;
}

int rp_fail(const rp_policy *p, rp_replica *r, int probe, int64_t now)
{
    return strike(r, probe, &r->fails, p->cfg.eject_after_failures, now);
}

/* One loss says little (hedging fires at a high percentile, so a healthy
 * replica loses now and then); a run of them means r stalls. */
int rp_hedge_lost(const rp_policy *p, rp_replica *r, int probe, int64_t now)
{
    return strike(r, probe, &r->hedge_losses, p->cfg.eject_after_hedge_losses, now);
}

int rp_pick(rp_replica *const *reps, uint32_t n, uint32_t tried, uint32_t *cursor, int first,
            int hedge, int64_t now)
{
    if (!n)
        return -1;
    uint32_t start = first && !hedge ? (*cursor)++ : *cursor;
    for (uint32_t k = 0; k < n; k++) {
        uint32_t i = (start + k) % n;
        if (!(tried & (1u << i)) && rp_usable(reps[i], now))
            return (int)i;
    }
    if (hedge)
        return -1;
    int best = -1;
    for (uint32_t i = 0; i < n; i++)
        if (!(tried & (1u << i)) && (best < 0 || reps[i]->ejected_at < reps[best]->ejected_at))
            best = (int)i;
    return best;
}

void rp_record_latency(rp_policy *p, int64_t ns)
{
    int64_t us = ns / 1000;
    p->lat_us[p->lat_pos] = us > UINT32_MAX ? UINT32_MAX : us < 0 ? 0 : (uint32_t)us;
    p->lat_pos = (p->lat_pos + 1) % RP_LAT_WINDOW;
    if (p->lat_n < RP_LAT_WINDOW)
        p->lat_n++;
    p->lat_new++;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

int64_t rp_hedge_delay(rp_policy *p)
{
    if (p->cfg.hedge_percentile <= 0 || p->lat_n < RP_HEDGE_MIN_SAMPLES)
        return -1;
    if (p->hedge_ns < 0 || p->lat_new >= 16) {
        uint32_t tmp[RP_LAT_WINDOW];
        memcpy(tmp, p->lat_us, p->lat_n * sizeof tmp[0]);
        qsort(tmp, p->lat_n, sizeof tmp[0], cmp_u32);
        size_t k = p->lat_n * (size_t)p->cfg.hedge_percentile / 100;
        if (k >= p->lat_n)
            k = p->lat_n - 1;
        int64_t ns = (int64_t)tmp[k] * 1000;
        int64_t min = p->cfg.hedge_min_ms * MS;
        p->hedge_ns = ns < min ? min : ns;
        p->lat_new = 0;
    }
    return p->hedge_ns;
}
