/* metric.h: the metrics registry, in the way Pelikan declares metrics.
 *
 * Each module lists its metrics once, next to the code that bumps them, as
 * an X-macro of (field, type, Prometheus name, Admin.Stats path, help):
 *
 *   #define HOTCACHE_METRIC(ACTION)                                         \
 *       ACTION(hits, METRIC_COUNTER, "engram_hot_cache_hits_total",         \
 *              "hot_cache.hits", "Hot-row cache lookups that found the row.")
 *   typedef struct { HOTCACHE_METRIC(METRIC_DECLARE) } hotcache_metrics;
 *   hotcache_metrics m = { HOTCACHE_METRIC(METRIC_INIT) };
 *
 * and registers the struct at setup (metric_register). Figures that are
 * read rather than bumped (RocksDB's properties, jemalloc's) are metrics too:
 * the module's refresh function stores them just before a reader collects.
 * Families with labels (per table, per method, by code) are registered as
 * a metric_family whose collect function emits its samples.
 *
 * Readers never name a metric: /metrics (metric_render_prometheus) and the
 * Admin.Stats reply (stats_reply.c, which follows each metric's Stats path
 * into StatsResponse) walk the registry with metric_collect. A metric added
 * to a module's list therefore shows up in both without another edit.
 *
 * Bumping is a relaxed atomic add on the metric's value; no lock. The
 * registry's lock is taken only to register, deregister and collect, so a
 * module's teardown (which deregisters) waits for a reader in progress. */
#ifndef ENGRAM_COMMON_METRIC_H
#define ENGRAM_COMMON_METRIC_H

#include <stddef.h>
#include <stdint.h>

typedef enum { METRIC_COUNTER, METRIC_GAUGE, METRIC_HISTOGRAM } metric_type;

/* One scalar metric. `stats` is its field in StatsResponse as a path
 * ("hot_cache.hits", see metric_family), NULL when Stats does not show it. */
typedef struct metric {
    const char *name;
    metric_type type;                  /* METRIC_COUNTER or METRIC_GAUGE */
    const char *stats;
    const char *help;
    uint64_t value;
} metric;

#define METRIC_DECLARE(field, type, name, stats, help) metric field;
#define METRIC_INIT(field, type, name, stats, help) .field = {name, type, stats, help, 0},
#define METRIC_CARDINALITY(st) (sizeof(st) / sizeof(metric))

/* Bumping; `m` is the module's metrics struct, NULL allowed (not counted). */
#define METRIC_INCR(m, f) METRIC_ADD(m, f, 1)
#define METRIC_ADD(m, f, n)                                                 \
    do {                                                                    \
        if ((m) != NULL)                                                    \
            __atomic_add_fetch(&(m)->f.value, (uint64_t)(n), __ATOMIC_RELAXED); \
    } while (0)
#define METRIC_SUB(m, f, n)                                                 \
    do {                                                                    \
        if ((m) != NULL)                                                    \
            __atomic_sub_fetch(&(m)->f.value, (uint64_t)(n), __ATOMIC_RELAXED); \
    } while (0)
#define METRIC_SET(m, f, v)                                                 \
    do {                                                                    \
        if ((m) != NULL)                                                    \
            __atomic_store_n(&(m)->f.value, (uint64_t)(v), __ATOMIC_RELAXED); \
    } while (0)
#define METRIC_GET(m, f) ((m) != NULL ? __atomic_load_n(&(m)->f.value, __ATOMIC_RELAXED) : 0)

/* ---- families with labels --------------------------------------------------- */

typedef struct metric_label {
    const char *name, *value;
} metric_label;

/* A latency summary for Stats (milliseconds; percentiles are upper bounds). */
typedef struct metric_summary {
    uint64_t count;
    double p50_ms, p90_ms, p99_ms, p999_ms, max_ms;
} metric_summary;

/* One histogram sample: Prometheus' fixed buckets (not cumulative; the last
 * one is +Inf; count is their sum), and the summaries Stats shows. */
typedef struct metric_histogram {
    size_t nle;
    const double *le;                  /* nle upper bounds, seconds */
    const uint64_t *buckets;           /* nle + 1 counts */
    uint64_t count;
    double sum;                        /* seconds */
    metric_summary window, total;      /* the last minute, since start */
} metric_histogram;

typedef struct metric_sample {
    const metric_label *labels;
    size_t nlabels;
    uint64_t value;                    /* counters and gauges */
    const metric_histogram *hist;      /* histograms */
} metric_sample;

typedef struct metric_family metric_family;
typedef struct metric_sink metric_sink;

/* What a reader does with the registry's contents. */
struct metric_sink {
    /* A family begins; every sample that follows until the next is its. */
    void (*family)(metric_sink *s, const metric_family *f);
    void (*sample)(metric_sink *s, const metric_family *f, const metric_sample *x);
};

/* A family of samples. name NULL: shown by Stats only (a view Prometheus
 * already has in another family). scale: Prometheus shows value * scale
 * (uptime kept in ms, shown in seconds); 0 means 1.
 *
 * A Stats path names a field of StatsResponse, through sub-messages:
 *   "hot_cache.hits"                      a field of a sub-message
 *   "tables[table=$table].rows_$tier"     an element of a repeated message
 *                                         field, found (or added) by its key
 *                                         field; $x is the sample's label x
 *   "rpcs[method=$method].errors[code=$code!=OK].count"
 *                                         skip samples whose code is OK
 *   "build_version=$version"              a string field set to a label
 *   "?refusals[code=$code].count"         "?": skip samples whose value is 0
 * A number is added to the field (so samples that share a field sum), a
 * bool is set when the value is not 0. A new element's string fields named
 * like one of the sample's labels take that label's value. A histogram's
 * path names the message whose `window` and `total` take its summaries. */
struct metric_family {
    const char *name;
    metric_type type;
    const char *help;
    const char *stats[3];              /* Stats paths, NULL-terminated */
    double scale;
    void (*collect)(const metric_family *f, metric_sink *s);
};

/* ---- the registry ------------------------------------------------------------ */

/* Registers n scalar metrics starting at m (a module's struct; it must
 * outlive its registration). refresh, when not NULL, is called with arg
 * before each collection to store figures that are read, not bumped.
 * Returns 0, or -1 when the registry is full (METRIC_MAX_REGISTRATIONS).
 * Thread-safe. */
#define METRIC_MAX_REGISTRATIONS 64
int metric_register(metric *m, size_t n, void (*refresh)(void *arg), void *arg);
/* Registers a labeled family (it must outlive its registration). */
int metric_register_family(const metric_family *f);
/* Removes the registration of m or f (whichever was registered); a no-op
 * when it is not registered. Waits for a collection in progress. */
void metric_deregister(const void *m_or_f);

/* Walks every registration in the order registered: refresh, then each
 * metric or family and its samples. Holds the registry's lock throughout,
 * so the sink must not register or deregister. */
void metric_collect(metric_sink *s);

/* The registry in Prometheus' text exposition format (version 0.0.4): HELP
 * and TYPE before each family, `le` buckets cumulative, label values
 * escaped. Families with no name are skipped. Returns a malloc'd buffer
 * (caller frees) and its length, or NULL when out of memory. */
char *metric_render_prometheus(size_t *len);

#endif
