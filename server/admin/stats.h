/* stats.h: what the server counts about its calls, by method and by table.
 *
 * Two kinds of entries, each found by name in a fixed hash of slots that
 * are created on first use and never freed while serving (so a reader
 * never races a free):
 *   - one per RPC method, fed by the completion hook stats_done: calls by
 *     status code and a latency histogram (arrival to final status);
 *   - one per table, fed by lookup.c through stats_lookup: calls, bytes,
 *     errors by code, rows per serving tier (the store says which) and a
 *     latency histogram (arrival to the reply being ready).
 * Every latency is kept three ways: since start and over the last minute
 * (six 10 s slots of a log-linear histogram, for percentiles), and as
 * Prometheus' fixed cumulative buckets. Recording is a handful of relaxed
 * atomic adds; no lock and no allocation after an entry's first call.
 *
 * Readers get the entries through the metrics registry (metric.h): the
 * engram_calls_total, engram_lookup_* and engram_tier_rows_total families,
 * which Stats shows as its rpcs and tables. */
#ifndef ENGRAM_SERVER_STATS_H
#define ENGRAM_SERVER_STATS_H

#include <stddef.h>
#include <stdint.h>

#include "hooks.h"
#include "server.h"
#include "store.h"

#define STATS_CODES 17               /* gRPC codes 0..16; [0] is OK */

/* The tier a lookup's rows came from, as the store reports them
 * (store_tiers). */
typedef enum { STATS_TIER_RESIDENT, STATS_TIER_HOT, STATS_TIER_ROCKSDB, STATS_TIERS } stats_tier;

/* Prometheus buckets of every latency histogram, upper bounds in seconds
 * (le), +Inf excluded. */
#define STATS_PROM_BUCKETS 16
extern const double stats_prom_le[STATS_PROM_BUCKETS];

/* Registers the families; recording starts. */
void stats_setup(void);
/* After the server is torn down: deregisters and frees every entry. */
void stats_teardown(void);

/* The completion hook (hooks_add_done). */
void stats_done(server_call *c, const method_def *m, int code, uint64_t duration_ns);

/* One Lookup of a table the server knows: its final code, the bytes it
 * returned (0 on error) and how many rows each tier served (the rows
 * returned are their sum). A no-op before stats_setup. */
void stats_lookup(const char *table, int code, uint64_t bytes,
                  const uint64_t tier_rows[STATS_TIERS], uint64_t duration_ns);

/* Lookups of known tables so far, every code: the calls that reached a
 * table, so not those refused at admission (a drained server's). */
uint64_t stats_lookups(void);

#endif
