/* stats.h: what the server counts about its calls and tables, and the
 * Admin.Stats / Admin.SetLogLevel handlers that report and steer it.
 *
 * Two kinds of entries, each found by name in a fixed hash of slots that
 * are created on first use and never freed (so a reader never races a
 * free):
 *   - one per RPC method, fed by the completion hook stats_done: calls by
 *     status code and a latency histogram (arrival to final status);
 *   - one per table, fed by lookup.c through stats_lookup: calls, rows,
 *     bytes, errors by code, rows per tier and a latency histogram (arrival
 *     to the reply being ready).
 * Every latency is kept three ways: since start and over the last minute
 * (six 10 s slots of a log-linear histogram, for percentiles), and as
 * Prometheus' fixed cumulative buckets (for metrics_http.c). Recording is
 * a handful of relaxed atomic adds; no lock and no allocation after an
 * entry's first call. */
#ifndef ENGRAM_SERVER_STATS_H
#define ENGRAM_SERVER_STATS_H

#include <stddef.h>
#include <stdint.h>

#include "hooks.h"
#include "server.h"
#include "store.h"

#define STATS_CODES 17               /* gRPC codes 0..16; [0] is OK */

/* The tier a lookup's rows came from. HOT is the hot-row cache in front of
 * RocksDB (its own figures are stats_process.hot). */
typedef enum { STATS_TIER_RESIDENT, STATS_TIER_HOT, STATS_TIER_ROCKSDB, STATS_TIERS } stats_tier;

/* Prometheus buckets of every latency histogram, upper bounds in seconds
 * (le), +Inf excluded. */
#define STATS_PROM_BUCKETS 16
extern const double stats_prom_le[STATS_PROM_BUCKETS];

typedef struct stats_options {
    store *store;                      /* RocksDB figures, shard */
    const store_metrics *store_metrics;   /* resident tier bytes/budget */
    const server_metrics *server_metrics; /* calls in flight */
    /* Figures other modules own, handed in by main (NULL: reported as 0)
     * so this module depends on none of them. */
    int (*draining)(void);             /* drain_is_draining */
    int (*health_watchers)(void);      /* open health Watch calls */
} stats_options;

void stats_setup(const stats_options *opts);
void stats_teardown(void);

/* The completion hook (hooks_add_done). */
void stats_done(server_call *c, const method_def *m, int code, uint64_t duration_ns);

/* One Lookup of a table the server knows: its final code, the bytes it
 * returned (0 on error) and how many rows each tier served (the rows
 * returned are their sum). A no-op before stats_setup. */
void stats_lookup(const char *table, int code, uint64_t bytes,
                  const uint64_t tier_rows[STATS_TIERS], uint64_t duration_ns);

/* ---- reading (Stats, metrics_http.c) ------------------------------------ */

typedef struct stats_latency {
    uint64_t count;
    double p50_ms, p90_ms, p99_ms, p999_ms, max_ms;
} stats_latency;

/* A consistent-enough copy of one entry: each number is read atomically,
 * the whole is not one instant. prom_count is the sum of prom_buckets (so
 * a rendered histogram always adds up); prom_buckets are not cumulative. */
typedef struct stats_entry_view {
    const char *name;                  /* method path or table name */
    uint64_t codes[STATS_CODES];       /* calls by final code */
    uint64_t calls, rows, bytes;
    uint64_t tier_rows[STATS_TIERS];
    stats_latency window, total;
    uint64_t prom_buckets[STATS_PROM_BUCKETS + 1];  /* last: +Inf */
    uint64_t prom_count;
    double prom_sum_s;
} stats_entry_view;

typedef void (*stats_entry_fn)(const stats_entry_view *v, void *ctx);
/* Calls fn for every method / table entry, sorted by name. */
void stats_each_rpc(stats_entry_fn fn, void *ctx);
void stats_each_table(stats_entry_fn fn, void *ctx);

typedef struct stats_process {
    uint64_t uptime_ms;
    uint64_t in_flight;
    int draining;
    uint64_t health_watchers;          /* open grpc.health.v1 Watch calls */
    uint32_t shard_index, shard_count;
    store_rocksdb_stats rocksdb;
    uint64_t mem_allocated, mem_resident, mem_mapped;  /* 0 without jemalloc */
    uint64_t resident_tier_bytes, resident_tier_budget;
    uint64_t disk_free_bytes, disk_reserve_bytes;  /* the data dir's (store_disk_read) */
    store_hot_stats hot;               /* the hot-row cache (zero without a store) */
    uint64_t refusals[STATS_CODES];    /* admission refusals by code */
    uint64_t refusals_by_reason[REFUSAL_REASONS];   /* every refusal (hooks.h) */
} stats_process;

void stats_process_read(stats_process *out);

/* ---- handlers ------------------------------------------------------------ */

int stats_handle(server_call *c, grpc_byte_buffer *req, grpc_byte_buffer **reply,
                 char *msg, size_t msglen);

#endif
