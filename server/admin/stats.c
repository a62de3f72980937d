/* stats.c: per-method and per-table call statistics (see stats.h for what
 * is counted), offered to the metrics registry as labeled families. Other
 * modules' figures are their own metrics; this one holds only what needs a
 * map by name and latency histograms.
 *
 * Entries live in two fixed open-addressing maps (methods, tables) of
 * pointers published with a release store and never removed, so the call
 * path finds its entry with a hash and acquire loads, no lock; only a
 * name's first call takes the map's mutex to create it. A table map is
 * capped: past STATS_MAX_ENTRIES tables a new table is not counted (logged
 * once) rather than growing without bound.
 *
 * Latency histograms are log-linear over nanoseconds: values below 16 are
 * exact, above that each power of two is split into 8 buckets (at most
 * 12.5% relative error); a percentile reports its bucket's upper bound,
 * clipped to the exact maximum. The last-minute window is six 10 s slots
 * stamped with their period; the first recorder of a new period claims a
 * slot with a CAS and clears it. A recorder racing that clear can lose its
 * sample or land it in the new period, which a one-minute latency summary
 * tolerates, in exchange for no lock on the lookup path. */
#include "stats.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grpc_util.h"
#include "log.h"
#include "metric.h"
#include "methods.h"
#include "status.h"

#define STATS_MAX_ENTRIES 768
#define MAP_SLOTS 1024                 /* power of two, > STATS_MAX_ENTRIES */
#define NAME_MAX_LEN 160

#define LL_SUB_BITS 3
#define LL_EXACT 16
#define LL_TOP_BIT 40                  /* values are capped below 2^41 ns (36 min) */
#define LL_BUCKETS (LL_EXACT + (LL_TOP_BIT - 3) * (1 << LL_SUB_BITS))
#define WINDOW_SLOTS 6
#define WINDOW_PERIOD_NS 10000000000ull

const double stats_prom_le[STATS_PROM_BUCKETS] = {
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
static const uint64_t prom_le_ns[STATS_PROM_BUCKETS] = {
    100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000, 25000000,
    50000000, 100000000, 250000000, 500000000, 1000000000, 2500000000ull,
    5000000000ull, 10000000000ull};

typedef struct window_slot {
    uint64_t period;                   /* now / WINDOW_PERIOD_NS when claimed */
    uint64_t max;
    uint64_t n[LL_BUCKETS];
} window_slot;

typedef struct entry {
    char name[NAME_MAX_LEN];
    uint64_t codes[STATS_CODES];
    uint64_t bytes;
    uint64_t tier_rows[STATS_TIERS];
    uint64_t prom[STATS_PROM_BUCKETS + 1];
    uint64_t sum_ns;
    uint64_t max;
    uint64_t total[LL_BUCKETS];
    window_slot window[WINDOW_SLOTS];
} entry;

typedef struct emap {
    const char *what;                  /* "method", "table": for the log */
    entry *slot[MAP_SLOTS];
    pthread_mutex_t mu;                /* serializes creation */
    int n;
    int full_logged;
} emap;

static struct {
    int ready;
    emap methods, tables;
} T = {.methods = {.what = "method", .mu = PTHREAD_MUTEX_INITIALIZER},
       .tables = {.what = "table", .mu = PTHREAD_MUTEX_INITIALIZER}};

/* ---- entries -------------------------------------------------------------- */

static uint32_t name_hash(const char *s)
{
    uint32_t h = 2166136261u;      /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

static entry *map_probe(emap *m, const char *name, uint32_t h, size_t *free_at)
{
    for (size_t i = 0; i < MAP_SLOTS; i++) {
        size_t at = (h + i) & (MAP_SLOTS - 1);
        entry *e = __atomic_load_n(&m->slot[at], __ATOMIC_ACQUIRE);
        if (!e) {
            *free_at = at;
            return NULL;
        }
        if (strcmp(e->name, name) == 0)
            return e;
    }
    *free_at = MAP_SLOTS;
    return NULL;
}

static entry *map_create(emap *m, const char *name, uint32_t h)
{
    pthread_mutex_lock(&m->mu);
    size_t at;
    entry *e = map_probe(m, name, h, &at);   /* another thread may have won */
    if (!e && m->n < STATS_MAX_ENTRIES && (e = calloc(1, sizeof *e)) != NULL) {
        snprintf(e->name, sizeof e->name, "%s", name);
        __atomic_store_n(&m->slot[at], e, __ATOMIC_RELEASE);
        m->n++;
    } else if (!e && !m->full_logged) {
        m->full_logged = 1;
        log_warn("stats_full", "kind=%s entries=%d name=%.128s", m->what, m->n, name);
    }
    pthread_mutex_unlock(&m->mu);
    return e;
}

/* The entry of `name`, created on first use; NULL when the map is full. */
static entry *map_get(emap *m, const char *name)
{
    uint32_t h = name_hash(name);
    size_t at;
    entry *e = map_probe(m, name, h, &at);
    return e ? e : map_create(m, name, h);
}

static void map_clear(emap *m)
{
    for (size_t i = 0; i < MAP_SLOTS; i++) {
        free(m->slot[i]);
        m->slot[i] = NULL;
    }
    m->n = 0;
    m->full_logged = 0;
}

/* ---- recording ------------------------------------------------------------ */

static size_t ll_index(uint64_t v)
{
    if (v < LL_EXACT)
        return (size_t)v;
    int p = 63 - __builtin_clzll(v);
    if (p > LL_TOP_BIT)
        return LL_BUCKETS - 1;
    size_t sub = (size_t)(v >> (p - LL_SUB_BITS)) & ((1u << LL_SUB_BITS) - 1);
    return LL_EXACT + (size_t)(p - 4) * (1u << LL_SUB_BITS) + sub;
}

/* The largest value bucket i holds. */
static uint64_t ll_upper(size_t i)
{
    if (i < LL_EXACT)
        return i;
    size_t k = i - LL_EXACT;
    int p = (int)(k >> LL_SUB_BITS) + 4;
    uint64_t sub = k & ((1u << LL_SUB_BITS) - 1);
    uint64_t width = 1ull << (p - LL_SUB_BITS);
    return (((1ull << LL_SUB_BITS) + sub) << (p - LL_SUB_BITS)) + width - 1;
}

static void atomic_max(uint64_t *at, uint64_t v)
{
    uint64_t cur = __atomic_load_n(at, __ATOMIC_RELAXED);
    while (v > cur && !__atomic_compare_exchange_n(at, &cur, v, 1, __ATOMIC_RELAXED,
                                                   __ATOMIC_RELAXED))
        ;
}

/* The window slot of the current period, claimed (and cleared) by the
 * first recorder that sees it stale. */
static window_slot *window_current(entry *e, uint64_t period)
{
    window_slot *w = &e->window[period % WINDOW_SLOTS];
    uint64_t seen = __atomic_load_n(&w->period, __ATOMIC_ACQUIRE);
    if (seen < period &&
        __atomic_compare_exchange_n(&w->period, &seen, period, 0, __ATOMIC_ACQ_REL,
                                    __ATOMIC_ACQUIRE)) {
        for (size_t i = 0; i < LL_BUCKETS; i++)
            __atomic_store_n(&w->n[i], 0, __ATOMIC_RELAXED);
        __atomic_store_n(&w->max, 0, __ATOMIC_RELAXED);
    }
    return w;
}

static void record_latency(entry *e, uint64_t ns)
{
    size_t i = ll_index(ns);
    __atomic_add_fetch(&e->total[i], 1, __ATOMIC_RELAXED);
    atomic_max(&e->max, ns);
    window_slot *w = window_current(e, now_ns() / WINDOW_PERIOD_NS);
    __atomic_add_fetch(&w->n[i], 1, __ATOMIC_RELAXED);
    atomic_max(&w->max, ns);
    size_t b = 0;
    while (b < STATS_PROM_BUCKETS && ns > prom_le_ns[b])
        b++;
    __atomic_add_fetch(&e->prom[b], 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&e->sum_ns, ns, __ATOMIC_RELAXED);
}

static int code_index(int code)
{
    return code >= 0 && code < STATS_CODES ? code : ES_UNKNOWN;
}

void stats_done(server_call *c, const method_def *m, int code, uint64_t duration_ns)
{
    entry *e;
    if (!__atomic_load_n(&T.ready, __ATOMIC_ACQUIRE) || !(e = map_get(&T.methods, m->path)))
        return;
    __atomic_add_fetch(&e->codes[code_index(code)], 1, __ATOMIC_RELAXED);
    record_latency(e, duration_ns);
}

void stats_lookup(const char *table, int code, uint64_t bytes,
                  const uint64_t tier_rows[STATS_TIERS], uint64_t duration_ns)
{
    entry *e;
    if (!__atomic_load_n(&T.ready, __ATOMIC_ACQUIRE) || !(e = map_get(&T.tables, table)))
        return;
    __atomic_add_fetch(&e->codes[code_index(code)], 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&e->bytes, bytes, __ATOMIC_RELAXED);
    for (int t = 0; t < STATS_TIERS; t++)
        if (tier_rows[t])
            __atomic_add_fetch(&e->tier_rows[t], tier_rows[t], __ATOMIC_RELAXED);
    record_latency(e, duration_ns);
}

/* ---- reading -------------------------------------------------------------- */

static void summarize(const uint64_t *n, uint64_t max_ns, metric_summary *out)
{
    static const double qs[4] = {0.5, 0.9, 0.99, 0.999};
    double *dst[4] = {&out->p50_ms, &out->p90_ms, &out->p99_ms, &out->p999_ms};
    memset(out, 0, sizeof *out);
    for (size_t i = 0; i < LL_BUCKETS; i++)
        out->count += n[i];
    if (!out->count)
        return;
    for (int q = 0; q < 4; q++) {
        uint64_t rank = (uint64_t)(qs[q] * (double)out->count + 0.999999);
        uint64_t seen = 0;
        size_t i = 0;
        while (i < LL_BUCKETS - 1 && (seen += n[i]) < rank)
            i++;
        uint64_t v = ll_upper(i) < max_ns ? ll_upper(i) : max_ns;
        *dst[q] = (double)v / 1e6;
    }
    out->max_ms = (double)max_ns / 1e6;
}

static void read_window(entry *e, metric_summary *out)
{
    uint64_t n[LL_BUCKETS] = {0}, max = 0;
    uint64_t period = now_ns() / WINDOW_PERIOD_NS;
    for (int s = 0; s < WINDOW_SLOTS; s++) {
        window_slot *w = &e->window[s];
        uint64_t p = __atomic_load_n(&w->period, __ATOMIC_ACQUIRE);
        if (p > period || p + WINDOW_SLOTS <= period)
            continue;
        for (size_t i = 0; i < LL_BUCKETS; i++)
            n[i] += __atomic_load_n(&w->n[i], __ATOMIC_RELAXED);
        uint64_t m = __atomic_load_n(&w->max, __ATOMIC_RELAXED);
        max = m > max ? m : max;
    }
    summarize(n, max, out);
}

/* A consistent-enough copy of one entry: each number is read atomically,
 * the whole is not one instant. hist.count is the sum of its buckets, so a
 * rendered histogram always adds up. */
typedef struct entry_view {
    const char *name;                  /* method path or table name */
    uint64_t codes[STATS_CODES];       /* calls by final code */
    uint64_t calls, rows, bytes;
    uint64_t tier_rows[STATS_TIERS];
    uint64_t buckets[STATS_PROM_BUCKETS + 1];   /* last: +Inf */
    metric_histogram hist;
} entry_view;

static void entry_read(entry *e, entry_view *v)
{
    memset(v, 0, sizeof *v);
    v->name = e->name;
    for (int c = 0; c < STATS_CODES; c++)
        v->calls += v->codes[c] = __atomic_load_n(&e->codes[c], __ATOMIC_RELAXED);
    v->bytes = __atomic_load_n(&e->bytes, __ATOMIC_RELAXED);
    for (int t = 0; t < STATS_TIERS; t++)
        v->rows += v->tier_rows[t] = __atomic_load_n(&e->tier_rows[t], __ATOMIC_RELAXED);
    uint64_t total[LL_BUCKETS];
    for (size_t i = 0; i < LL_BUCKETS; i++)
        total[i] = __atomic_load_n(&e->total[i], __ATOMIC_RELAXED);
    summarize(total, __atomic_load_n(&e->max, __ATOMIC_RELAXED), &v->hist.total);
    read_window(e, &v->hist.window);
    v->hist.nle = STATS_PROM_BUCKETS;
    v->hist.le = stats_prom_le;
    v->hist.buckets = v->buckets;
    for (int b = 0; b <= STATS_PROM_BUCKETS; b++)
        v->hist.count += v->buckets[b] = __atomic_load_n(&e->prom[b], __ATOMIC_RELAXED);
    v->hist.sum = (double)__atomic_load_n(&e->sum_ns, __ATOMIC_RELAXED) / 1e9;
}

static int by_name(const void *a, const void *b)
{
    return strcmp((*(entry *const *)a)->name, (*(entry *const *)b)->name);
}

/* Calls fn for every entry of m, sorted by name. */
static void map_each(emap *m, void (*fn)(const entry_view *v, const metric_family *f,
                                         metric_sink *s),
                     const metric_family *f, metric_sink *s)
{
    entry *list[MAP_SLOTS];
    size_t n = 0;
    for (size_t i = 0; i < MAP_SLOTS; i++)
        if ((list[n] = __atomic_load_n(&m->slot[i], __ATOMIC_ACQUIRE)) != NULL)
            n++;
    qsort(list, n, sizeof list[0], by_name);
    entry_view *v = malloc(sizeof *v);
    for (size_t i = 0; v && i < n; i++) {
        entry_read(list[i], v);
        fn(v, f, s);
    }
    free(v);
}

/* ---- the families ------------------------------------------------------------
 *
 * Each entry's figures, as labeled families of the metrics registry; Stats
 * paths put the same numbers into StatsResponse's rpcs and tables. The
 * Lookup method's rows and bytes are those of every table's lookups (the
 * table families add them in). */

static const char *const tier_names[STATS_TIERS] = {"resident", "hot", "rocksdb"};

static void emit(metric_sink *s, const metric_family *f, const char *key, const char *name,
                 const char *k2, const char *v2, uint64_t value, const metric_histogram *h)
{
    metric_label l[2] = {{key, name}, {k2, v2}};
    metric_sample x = {.labels = l, .nlabels = k2 ? 2 : 1, .value = value, .hist = h};
    s->sample(s, f, &x);
}

/* Every non-zero code (OK included when ok is set), as label `code`. */
static void emit_codes(const entry_view *v, const metric_family *f, metric_sink *s,
                       const char *key, int ok)
{
    for (int c = ok ? 0 : 1; c < STATS_CODES; c++)
        if (v->codes[c])
            emit(s, f, key, v->name, "code", es_code_name(c), v->codes[c], NULL);
}

static void rpc_calls(const entry_view *v, const metric_family *f, metric_sink *s)
{
    emit_codes(v, f, s, "method", 1);
}

static void rpc_latency(const entry_view *v, const metric_family *f, metric_sink *s)
{
    emit(s, f, "method", v->name, NULL, NULL, 0, &v->hist);
}

static void table_calls(const entry_view *v, const metric_family *f, metric_sink *s)
{
    emit(s, f, "table", v->name, NULL, NULL, v->calls, NULL);
}

static void table_rows(const entry_view *v, const metric_family *f, metric_sink *s)
{
    emit(s, f, "table", v->name, NULL, NULL, v->rows, NULL);
}

static void table_bytes(const entry_view *v, const metric_family *f, metric_sink *s)
{
    emit(s, f, "table", v->name, NULL, NULL, v->bytes, NULL);
}

static void table_errors(const entry_view *v, const metric_family *f, metric_sink *s)
{
    emit_codes(v, f, s, "table", 0);
}

static void table_tiers(const entry_view *v, const metric_family *f, metric_sink *s)
{
    for (int t = 0; t < STATS_TIERS; t++)
        emit(s, f, "table", v->name, "tier", tier_names[t], v->tier_rows[t], NULL);
}

static void table_latency(const entry_view *v, const metric_family *f, metric_sink *s)
{
    emit(s, f, "table", v->name, NULL, NULL, 0, &v->hist);
}

#define COLLECTOR(fn, map)                                                   \
    static void collect_##fn(const metric_family *f, metric_sink *s)        \
    {                                                                        \
        map_each(&T.map, fn, f, s);                                          \
    }
COLLECTOR(rpc_calls, methods)
COLLECTOR(rpc_latency, methods)
COLLECTOR(table_calls, tables)
COLLECTOR(table_rows, tables)
COLLECTOR(table_bytes, tables)
COLLECTOR(table_errors, tables)
COLLECTOR(table_tiers, tables)
COLLECTOR(table_latency, tables)

#define LOOKUP_RPC "rpcs[method=" METHOD_LOOKUP "]"
static const metric_family families[] = {
    {"engram_calls_total", METRIC_COUNTER, "gRPC calls finished, by method and status code.",
     {"rpcs[method=$method].calls", "rpcs[method=$method].errors[code=$code!=OK].count"},
     0, collect_rpc_calls},
    {"engram_call_duration_seconds", METRIC_HISTOGRAM,
     "gRPC call latency from arrival to final status, by method.",
     {"rpcs[method=$method]"}, 0, collect_rpc_latency},
    {"engram_lookup_calls_total", METRIC_COUNTER, "Lookup calls of a known table.",
     {"tables[table=$table].calls"}, 0, collect_table_calls},
    {"engram_lookup_rows_total", METRIC_COUNTER, "Rows returned by lookups.",
     {"tables[table=$table].rows", LOOKUP_RPC ".rows"}, 0, collect_table_rows},
    {"engram_lookup_bytes_total", METRIC_COUNTER, "Row bytes returned by lookups.",
     {"tables[table=$table].bytes", LOOKUP_RPC ".bytes"}, 0, collect_table_bytes},
    {"engram_lookup_errors_total", METRIC_COUNTER,
     "Failed lookups of a known table, by status code.",
     {"tables[table=$table].errors[code=$code].count"}, 0, collect_table_errors},
    {"engram_tier_rows_total", METRIC_COUNTER,
     "Rows served by each tier: resident arrays, the hot-row cache, RocksDB.",
     {"tables[table=$table].rows_$tier"}, 0, collect_table_tiers},
    {"engram_lookup_duration_seconds", METRIC_HISTOGRAM,
     "Lookup latency from arrival to the reply being ready, by table.",
     {"tables[table=$table]"}, 0, collect_table_latency},
};
#define NFAMILIES (sizeof families / sizeof families[0])

uint64_t stats_lookups(void)
{
    uint64_t n = 0;
    for (size_t i = 0; i < MAP_SLOTS; i++) {
        entry *e = __atomic_load_n(&T.tables.slot[i], __ATOMIC_ACQUIRE);
        for (int c = 0; e && c < STATS_CODES; c++)
            n += __atomic_load_n(&e->codes[c], __ATOMIC_RELAXED);
    }
    return n;
}

/* ---- setup ---------------------------------------------------------------- */

void stats_setup(void)
{
    for (size_t i = 0; i < NFAMILIES; i++)
        metric_register_family(&families[i]);
    __atomic_store_n(&T.ready, 1, __ATOMIC_RELEASE);
}

/* After the server is torn down: no call records any more. Deregistering
 * waits for a reader, so the entries are never freed under one. */
void stats_teardown(void)
{
    __atomic_store_n(&T.ready, 0, __ATOMIC_RELEASE);
    for (size_t i = 0; i < NFAMILIES; i++)
        metric_deregister(&families[i]);
    map_clear(&T.methods);
    map_clear(&T.tables);
}
