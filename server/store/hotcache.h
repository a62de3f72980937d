/* hotcache.h: a concurrent cache of hot rows, sized in bytes, for tables
 * that do not fit the resident tier.
 *
 * Policy: S3-FIFO (Yang et al., SOSP 2023): a small FIFO (10% of the
 * slots) takes new rows, a main FIFO (90%) keeps rows that were hit again
 * while in the small one, and a ghost FIFO remembers keys recently evicted
 * from the small one so that their next miss goes straight to main. Why it
 * fits Engram lookups: N-gram access is Zipfian with a long tail of rows
 * seen once; S3-FIFO drops those one-hit wonders quickly (they never reach
 * main) while the head stays, it is scan-resistant (a warm-up or a cold
 * batch cannot flush the hot set), and a hit only bumps a 2-bit counter:
 * no list reordering, so a hit costs a hash probe, a memcpy and one store,
 * unlike LRU's pointer surgery under the lock.
 *
 * Layout: rows are fixed-size slots in one array per segment (no per-row
 * allocation); the FIFOs are rings of slot numbers; the index is open
 * addressing with linear probing. Keys are 64-bit (the caller packs table,
 * version and row). The cache is split into segments by key hash, each
 * with its own mutex, so concurrent lookups rarely contend. */
#ifndef ENGRAM_SERVER_HOTCACHE_H
#define ENGRAM_SERVER_HOTCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "metric.h"

typedef struct hotcache hotcache;

/* Since start; the store owns them (its cache may be made and remade). */
#define HOTCACHE_METRIC(ACTION)                                                       \
    ACTION(hits, METRIC_COUNTER, "engram_hot_cache_hits_total", "hot_cache.hits",       \
           "Hot-row cache lookups that found the row.")                                \
    ACTION(misses, METRIC_COUNTER, "engram_hot_cache_misses_total", "hot_cache.misses", \
           "Hot-row cache lookups that did not.")                                      \
    ACTION(inserts, METRIC_COUNTER, "engram_hot_cache_inserts_total", "hot_cache.inserts", \
           "Rows put into the hot-row cache.")                                         \
    ACTION(evictions, METRIC_COUNTER, "engram_hot_cache_evictions_total",              \
           "hot_cache.evictions", "Rows evicted from the hot-row cache.")              \
    ACTION(promotions, METRIC_COUNTER, "engram_hot_cache_promotions_total",            \
           "hot_cache.promotions",                                                      \
           "Rows moved from the hot-row cache's small FIFO to its main one.")          \
    ACTION(ghost_hits, METRIC_COUNTER, "engram_hot_cache_ghost_hits_total",            \
           "hot_cache.ghost_hits",                                                      \
           "Misses on rows recently evicted from the small FIFO (inserted into main).")
typedef struct hotcache_metrics {
    HOTCACHE_METRIC(METRIC_DECLARE)
} hotcache_metrics;

/* A cache of rows of row_bytes bytes using at most budget_bytes for rows
 * and their bookkeeping. NULL if the budget holds fewer than 64 rows. */
hotcache *hotcache_create(uint64_t budget_bytes, uint32_t row_bytes, hotcache_metrics *metrics);
void hotcache_destroy(hotcache *c);

/* Copies the row of `key` into out and returns 1, or returns 0. */
int hotcache_get(hotcache *c, uint64_t key, uint8_t *out);

/* Inserts (or refreshes) the row of `key`, evicting as the policy says. */
void hotcache_put(hotcache *c, uint64_t key, const uint8_t *row);

/* The row size the cache was made for. */
uint32_t hotcache_row_bytes(const hotcache *c);

/* Rows the cache can hold, and rows it holds now. */
uint64_t hotcache_capacity(const hotcache *c);
uint64_t hotcache_count(hotcache *c);

#endif
