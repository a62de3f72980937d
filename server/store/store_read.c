/* store_read.c: the store's read path: a version's rows by local row id,
 * from the resident array (a memcpy per row) or, for a table on disk,
 * through the hot-row tier (hotcache.c, created at the first disk read)
 * whose misses go to RocksDB in one sorted MultiGet per batch and are put
 * into the tier. It also reports which tier served the rows
 * (store_read_rows_tiered), so callers never re-derive it. Shares the
 * store's internals (store_internal.h) with store.c. */
#include "store_internal.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hotcache.h"
#include "log.h"

#define MULTIGET_BATCH 512

/* ---- reads -------------------------------------------------------------- */

static int multiget_batch(table_version *tv, const uint64_t *rows, size_t n,
                          uint8_t *out, int sorted, char *msg, size_t msglen)
{
    store *s = tv->s;
    uint8_t keys[MULTIGET_BATCH][ROW_KEY_LEN];
    const char *kp[MULTIGET_BATCH];
    size_t ks[MULTIGET_BATCH];
    rocksdb_pinnableslice_t *vals[MULTIGET_BATCH];
    char *errs[MULTIGET_BATCH];
    for (size_t i = 0; i < n; i++) {
        store_row_key(keys[i], tv->table_id, tv->version, rows[i]);
        kp[i] = (const char *)keys[i];
        ks[i] = ROW_KEY_LEN;
    }
    rocksdb_batched_multi_get_cf(s->db, s->ropts, s->cf[CF_ROWS], n, kp, ks,
                                 vals, errs, sorted != 0);
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        size_t vl = 0;
        const char *v = vals[i] ? rocksdb_pinnableslice_value(vals[i], &vl) : NULL;
        if (rc == 0 && (errs[i] || !v || vl != tv->row_bytes)) {
            snprintf(msg, msglen, "row %llu of table \"%s\" version %llu is %s%s",
                     (unsigned long long)rows[i], tv->name,
                     (unsigned long long)tv->version,
                     errs[i] ? "unreadable: " : (v ? "of the wrong length" : "missing from the store"),
                     errs[i] ? errs[i] : "");
            rc = -1;
        } else if (rc == 0) {
            memcpy(out + i * tv->row_bytes, v, vl);
        }
        free(errs[i]);
        if (vals[i])
            rocksdb_pinnableslice_destroy(vals[i]);
    }
    return rc;
}

/* ---- the hot-row tier ----------------------------------------------------- */

/* Keys: the version's process-unique cache id above the local row, so rows
 * of a dropped or replaced version can never be hit again (they age out). */
#define HOT_ROW_BITS 40
#define HOT_ID_LIMIT (1ull << (64 - HOT_ROW_BITS))

static hotcache *hot_for(store *s, uint32_t row_bytes)
{
    hotcache *hc = __atomic_load_n(&s->hot, __ATOMIC_ACQUIRE);
    /* hot_budget is read outside the lock only to skip it once the cache
     * is off; it is written (turned off) only under hot_lock. */
    if (!hc && __atomic_load_n(&s->hot_budget, __ATOMIC_RELAXED)) {
        pthread_mutex_lock(&s->hot_lock);
        if (!s->hot && s->hot_budget) {
            hc = hotcache_create(s->hot_budget, row_bytes, &s->m->hot);
            if (!hc)
                __atomic_store_n(&s->hot_budget, 0, __ATOMIC_RELAXED); /* too small: off */
            else
                log_info("hot_cache_created", "budget=%llu row_bytes=%u rows=%llu",
                         (unsigned long long)s->hot_budget, row_bytes,
                         (unsigned long long)hotcache_capacity(hc));
            __atomic_store_n(&s->hot, hc, __ATOMIC_RELEASE);
        }
        hc = s->hot;
        pthread_mutex_unlock(&s->hot_lock);
    }
    return hc && hotcache_row_bytes(hc) == row_bytes ? hc : NULL;
}

/* The hot tier's gauges. Under hot_lock, which hot_for holds while it
 * makes the cache and turns a too-small budget off: budget and cache are
 * then read as one state. The cache is made at the first RocksDB-tier
 * read: before that its row size, capacity and rows read 0 and the budget
 * is the configured one (0: off, or too small for any rows). Counting rows
 * held takes every segment's lock, so this runs when a reader collects,
 * never on the lookup path. */
void store_hot_refresh(store *s)
{
    pthread_mutex_lock(&s->hot_lock);
    METRIC_SET(s->m, hot_budget, s->hot_budget);
    hotcache *hc = __atomic_load_n(&s->hot, __ATOMIC_ACQUIRE);
    pthread_mutex_unlock(&s->hot_lock);
    METRIC_SET(s->m, hot_row_bytes, hc ? hotcache_row_bytes(hc) : 0);
    METRIC_SET(s->m, hot_capacity, hc ? hotcache_capacity(hc) : 0);
    METRIC_SET(s->m, hot_rows, hc ? hotcache_count(hc) : 0);
}

typedef struct miss {
    uint64_t row;
    uint32_t at;                 /* position in the request */
} miss;

static int by_row(const void *a, const void *b)
{
    uint64_t x = ((const miss *)a)->row, y = ((const miss *)b)->row;
    return x < y ? -1 : x > y;
}

/* The next MultiGet batch: up to MULTIGET_BATCH distinct rows from the
 * sorted misses at *i, with first[j] the first miss of row j (a row asked
 * for twice in one request is read once). Returns the count. */
static size_t next_distinct(const miss *ms, size_t nm, size_t *i, uint64_t *rows, size_t *first)
{
    size_t k = 0;
    while (*i < nm && k < MULTIGET_BATCH) {
        first[k] = *i;
        rows[k] = ms[*i].row;
        while (++*i < nm && ms[*i].row == rows[k])
            ;
        k++;
    }
    first[k] = *i;
    return k;
}

/* Reads the misses in sorted batches of distinct rows (sorted keys let
 * MultiGet walk each block once), places them and lets them into the
 * cache. */
static int read_misses(table_version *tv, hotcache *hc, miss *ms, size_t nm, uint8_t *out,
                       char *msg, size_t msglen)
{
    const size_t rb = tv->row_bytes;
    qsort(ms, nm, sizeof *ms, by_row);
    uint64_t rows[MULTIGET_BATCH];
    size_t first[MULTIGET_BATCH + 1];
    uint8_t *tmp = malloc((nm < MULTIGET_BATCH ? nm : MULTIGET_BATCH) * rb + 1);
    if (!tmp) {
        snprintf(msg, msglen, "out of memory reading %zu rows of table \"%s\" from RocksDB",
                 nm, tv->name);
        return ES_RESOURCE_EXHAUSTED;
    }
    int rc = 0;
    for (size_t i = 0; i < nm && !rc;) {
        size_t k = next_distinct(ms, nm, &i, rows, first);
        rc = multiget_batch(tv, rows, k, tmp, 1, msg, msglen);
        for (size_t j = 0; j < k && !rc; j++) {
            for (size_t m = first[j]; m < first[j + 1]; m++)
                memcpy(out + (size_t)ms[m].at * rb, tmp + j * rb, rb);
            if (hc && rows[j] < (1ull << HOT_ROW_BITS))
                hotcache_put(hc, tv->vr->cache_id << HOT_ROW_BITS | rows[j], tmp + j * rb);
        }
    }
    free(tmp);
    return rc ? ES_DATA_LOSS : ES_OK;
}

static int read_rocksdb_tier(table_version *tv, const uint64_t *rows, size_t n, uint8_t *out,
                             store_tiers *tiers, char *msg, size_t msglen)
{
    const size_t rb = tv->row_bytes;
    hotcache *hc = tv->vr->cache_id < HOT_ID_LIMIT ? hot_for(tv->s, tv->row_bytes) : NULL;
    miss *ms = malloc((n ? n : 1) * sizeof *ms);
    if (!ms) {
        snprintf(msg, msglen, "out of memory reading %zu rows of table \"%s\"", n, tv->name);
        return ES_RESOURCE_EXHAUSTED;
    }
    size_t nm = 0;
    uint64_t hits = 0;
    for (size_t i = 0; i < n; i++) {
        if (hc && rows[i] < (1ull << HOT_ROW_BITS) &&
            hotcache_get(hc, tv->vr->cache_id << HOT_ROW_BITS | rows[i], out + i * rb))
            hits++;
        else
            ms[nm++] = (miss){rows[i], (uint32_t)i};
    }
    int rc = read_misses(tv, hc, ms, nm, out, msg, msglen);
    free(ms);
    if (rc == ES_RESOURCE_EXHAUSTED)
        return rc;
    if (tiers)
        *tiers = (store_tiers){.hot = hits, .rocksdb = n - hits};
    return rc;
}

int store_read_rows_tiered(table_version *tv, const uint64_t *rows, size_t n, uint8_t *out,
                           store_tiers *tiers, char *msg, size_t msglen)
{
    const size_t rb = tv->row_bytes;
    if (tiers)
        *tiers = (store_tiers){0};
    if (!tv->resident)
        return read_rocksdb_tier(tv, rows, n, out, tiers, msg, msglen);
    const uint8_t *arr = tv->resident;
    for (size_t i = 0; i < n; i++)
        memcpy(out + i * rb, arr + rows[i] * rb, rb);
    if (tiers)
        tiers->resident = n;
    return ES_OK;
}

int store_read_rows(table_version *tv, const uint64_t *rows, size_t n,
                    uint8_t *out, char *msg, size_t msglen)
{
    return store_read_rows_tiered(tv, rows, n, out, NULL, msg, msglen);
}

