/* stats.c: per-method and per-table call statistics, the process figures
 * around them, and the Admin.Stats handler (see stats.h for what is
 * counted). Figures other modules own (draining, health watchers) come in
 * through stats_options, so this module depends on none of them.
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

#include "engram/v1/engram.pb-c.h"
#include "grpc_util.h"
#include "hooks.h"
#include "log.h"
#include "methods.h"
#include "status.h"

/* jemalloc's control interface; weak so a sanitizer build (no jemalloc)
 * links and reports 0. */
int mallctl(const char *name, void *oldp, size_t *oldlenp, void *newp, size_t newlen)
    __attribute__((weak));

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
    stats_options o;
    uint64_t start_ns;
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

static void summarize(const uint64_t *n, uint64_t max_ns, stats_latency *out)
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

static void read_window(entry *e, stats_latency *out)
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

static void entry_view(entry *e, stats_entry_view *v)
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
    summarize(total, __atomic_load_n(&e->max, __ATOMIC_RELAXED), &v->total);
    read_window(e, &v->window);
    for (int b = 0; b <= STATS_PROM_BUCKETS; b++)
        v->prom_count += v->prom_buckets[b] = __atomic_load_n(&e->prom[b], __ATOMIC_RELAXED);
    v->prom_sum_s = (double)__atomic_load_n(&e->sum_ns, __ATOMIC_RELAXED) / 1e9;
}

static int by_name(const void *a, const void *b)
{
    return strcmp((*(entry *const *)a)->name, (*(entry *const *)b)->name);
}

static void map_each(emap *m, stats_entry_fn fn, void *ctx)
{
    entry *list[MAP_SLOTS];
    size_t n = 0;
    for (size_t i = 0; i < MAP_SLOTS; i++)
        if ((list[n] = __atomic_load_n(&m->slot[i], __ATOMIC_ACQUIRE)) != NULL)
            n++;
    qsort(list, n, sizeof list[0], by_name);
    stats_entry_view *v = malloc(sizeof *v);
    for (size_t i = 0; v && i < n; i++) {
        entry_view(list[i], v);
        fn(v, ctx);
    }
    free(v);
}

void stats_each_rpc(stats_entry_fn fn, void *ctx)
{
    map_each(&T.methods, fn, ctx);
}

void stats_each_table(stats_entry_fn fn, void *ctx)
{
    map_each(&T.tables, fn, ctx);
}

static uint64_t mallctl_u64(const char *name)
{
    size_t v = 0, len = sizeof v;
    return mallctl(name, &v, &len, NULL, 0) == 0 ? (uint64_t)v : 0;
}

/* jemalloc's figures are a snapshot taken at the last "epoch" write. */
static void read_memory(stats_process *out)
{
    if (!mallctl)
        return;
    uint64_t epoch = 1;
    size_t len = sizeof epoch;
    mallctl("epoch", &epoch, &len, &epoch, len);
    out->mem_allocated = mallctl_u64("stats.allocated");
    out->mem_resident = mallctl_u64("stats.resident");
    out->mem_mapped = mallctl_u64("stats.mapped");
}

void stats_process_read(stats_process *out)
{
    memset(out, 0, sizeof *out);
    out->uptime_ms = (now_ns() - T.start_ns) / 1000000;
    if (T.o.server_metrics)
        out->in_flight = __atomic_load_n(&T.o.server_metrics->calls_in_flight, __ATOMIC_RELAXED);
    out->draining = T.o.draining ? T.o.draining() != 0 : 0;
    out->health_watchers = T.o.health_watchers ? (uint64_t)T.o.health_watchers() : 0;
    out->shard_count = 1;
    if (T.o.store) {
        store_shard(T.o.store, &out->shard_count, &out->shard_index);
        store_rocksdb_stats_read(T.o.store, &out->rocksdb);
        store_hot_stats_read(T.o.store, &out->hot);
        store_disk_read(T.o.store, &out->disk_free_bytes, &out->disk_reserve_bytes);
    }
    read_memory(out);
    if (T.o.store_metrics) {
        const resident_metrics *r = &T.o.store_metrics->resident;
        out->resident_tier_bytes = __atomic_load_n(&r->used_bytes, __ATOMIC_RELAXED);
        out->resident_tier_budget = r->budget_bytes;
    }
    for (int c = 1; c < STATS_CODES; c++)
        out->refusals[c] = hooks_refusals(c);
    for (int r = 0; r < REFUSAL_REASONS; r++)
        out->refusals_by_reason[r] = hooks_refusals_by_reason((refusal_reason)r);
}

/* ---- setup ---------------------------------------------------------------- */

void stats_setup(const stats_options *opts)
{
    T.o = *opts;
    T.start_ns = now_ns();
    __atomic_store_n(&T.ready, 1, __ATOMIC_RELEASE);
}

/* After the server is torn down: no call records any more. */
void stats_teardown(void)
{
    __atomic_store_n(&T.ready, 0, __ATOMIC_RELEASE);
    map_clear(&T.methods);
    map_clear(&T.tables);
    memset(&T.o, 0, sizeof T.o);
}

/* ---- Admin.Stats ---------------------------------------------------------- */

/* Everything a StatsResponse points into, freed in one place after packing. */
typedef struct reply_buf {
    Engram__V1__StatsResponse r;
    Engram__V1__RocksdbStats rocks;
    Engram__V1__MemoryStats mem;
    Engram__V1__HotCacheStats hot;
    Engram__V1__RpcStats **rpcs;
    Engram__V1__TableStats **tables;
    Engram__V1__RefusalCount reasons[REFUSAL_REASONS];
    Engram__V1__RefusalCount *reason_ptrs[REFUSAL_REASONS];
    size_t cap_rpcs, cap_tables;
    int oom;
} reply_buf;

/* StatusCounts of the non-zero codes 1..16 of codes[], in one allocation. */
static Engram__V1__StatusCount **status_counts(const uint64_t *codes, size_t *n)
{
    size_t k = 0;
    for (int c = 1; c < STATS_CODES; c++)
        k += codes[c] != 0;
    *n = k;
    if (!k)
        return NULL;
    Engram__V1__StatusCount **p = malloc(k * (sizeof *p + sizeof **p));
    if (!p) {
        *n = 0;
        return NULL;
    }
    Engram__V1__StatusCount *v = (Engram__V1__StatusCount *)(p + k);
    for (int c = 1, i = 0; c < STATS_CODES; c++) {
        if (!codes[c])
            continue;
        engram__v1__status_count__init(&v[i]);
        v[i].code = (char *)es_code_name(c);
        v[i].count = codes[c];
        p[i] = &v[i];
        i++;
    }
    return p;
}

static Engram__V1__LatencySummary *latency_msg(const stats_latency *l)
{
    Engram__V1__LatencySummary *m = malloc(sizeof *m);
    if (!m)
        return NULL;
    engram__v1__latency_summary__init(m);
    m->count = l->count;
    m->p50_ms = l->p50_ms;
    m->p90_ms = l->p90_ms;
    m->p99_ms = l->p99_ms;
    m->p999_ms = l->p999_ms;
    m->max_ms = l->max_ms;
    return m;
}

static int grow(void ***arr, size_t n, size_t *cap)
{
    if (n < *cap)
        return 0;
    size_t nc = *cap ? *cap * 2 : 16;
    void **p = realloc(*arr, nc * sizeof *p);
    if (!p)
        return -1;
    *arr = p;
    *cap = nc;
    return 0;
}

static void add_rpc(const stats_entry_view *v, void *ctx)
{
    reply_buf *b = ctx;
    Engram__V1__RpcStats *m = calloc(1, sizeof *m);
    if (!m || grow((void ***)&b->rpcs, b->r.n_rpcs, &b->cap_rpcs) < 0) {
        free(m);
        b->oom = 1;
        return;
    }
    engram__v1__rpc_stats__init(m);
    m->method = strdup(v->name);
    m->calls = v->calls;
    m->errors = status_counts(v->codes, &m->n_errors);
    m->window = latency_msg(&v->window);
    m->total = latency_msg(&v->total);
    b->rpcs[b->r.n_rpcs++] = m;
}

static void add_table(const stats_entry_view *v, void *ctx)
{
    reply_buf *b = ctx;
    Engram__V1__TableStats *m = calloc(1, sizeof *m);
    if (!m || grow((void ***)&b->tables, b->r.n_tables, &b->cap_tables) < 0) {
        free(m);
        b->oom = 1;
        return;
    }
    engram__v1__table_stats__init(m);
    m->table = strdup(v->name);
    m->calls = v->calls;
    m->rows = v->rows;
    m->bytes = v->bytes;
    m->errors = status_counts(v->codes, &m->n_errors);
    m->rows_resident = v->tier_rows[STATS_TIER_RESIDENT];
    m->rows_hot = v->tier_rows[STATS_TIER_HOT];
    m->rows_rocksdb = v->tier_rows[STATS_TIER_ROCKSDB];
    m->window = latency_msg(&v->window);
    m->total = latency_msg(&v->total);
    b->tables[b->r.n_tables++] = m;
}

/* The Lookup method's rows and bytes are those of every table's lookups. */
static void lookup_totals(reply_buf *b)
{
    for (size_t i = 0; i < b->r.n_rpcs; i++) {
        if (strcmp(b->rpcs[i]->method, METHOD_LOOKUP) != 0)
            continue;
        for (size_t t = 0; t < b->r.n_tables; t++) {
            b->rpcs[i]->rows += b->tables[t]->rows;
            b->rpcs[i]->bytes += b->tables[t]->bytes;
        }
    }
}

static void fill_hot(Engram__V1__HotCacheStats *m, const store_hot_stats *h)
{
    engram__v1__hot_cache_stats__init(m);
    m->budget_bytes = h->budget_bytes;
    m->row_bytes = h->row_bytes;
    m->capacity_rows = h->capacity_rows;
    m->rows_held = h->rows_held;
    m->hits = h->counters.hits;
    m->misses = h->counters.misses;
    m->inserts = h->counters.inserts;
    m->evictions = h->counters.evictions;
    m->promotions = h->counters.promotions;
    m->ghost_hits = h->counters.ghost_hits;
}

static void fill_process(reply_buf *b, const stats_process *p)
{
    Engram__V1__StatsResponse *r = &b->r;
    r->uptime_ms = p->uptime_ms;
    r->build_version = (char *)ENGRAM_VERSION;
    r->in_flight = p->in_flight;
    r->draining = p->draining;
    r->shard_index = p->shard_index;
    r->shard_count = p->shard_count;
    engram__v1__rocksdb_stats__init(&b->rocks);
    b->rocks.block_cache_usage = p->rocksdb.block_cache_usage;
    b->rocks.block_cache_capacity = p->rocksdb.block_cache_capacity;
    b->rocks.block_cache_hits = p->rocksdb.block_cache_hits;
    b->rocks.block_cache_misses = p->rocksdb.block_cache_misses;
    b->rocks.bytes_read = p->rocksdb.bytes_read;
    b->rocks.get_calls = p->rocksdb.get_calls;
    b->rocks.multiget_calls = p->rocksdb.multiget_calls;
    r->rocksdb = &b->rocks;
    engram__v1__memory_stats__init(&b->mem);
    b->mem.allocated = p->mem_allocated;
    b->mem.resident = p->mem_resident;
    b->mem.mapped = p->mem_mapped;
    b->mem.resident_tier_bytes = p->resident_tier_bytes;
    b->mem.resident_tier_budget = p->resident_tier_budget;
    r->memory = &b->mem;
    fill_hot(&b->hot, &p->hot);
    r->hot_cache = &b->hot;
    Engram__V1__StatusCount **refusals = status_counts(p->refusals, &r->n_refusals);
    r->refusals = refusals;
    for (int i = 0; i < REFUSAL_REASONS; i++) {
        engram__v1__refusal_count__init(&b->reasons[i]);
        b->reasons[i].reason = (char *)hooks_refusal_name((refusal_reason)i);
        b->reasons[i].code = (char *)es_code_name(hooks_refusal_code((refusal_reason)i));
        b->reasons[i].count = p->refusals_by_reason[i];
        b->reason_ptrs[i] = &b->reasons[i];
    }
    r->n_refusals_by_reason = REFUSAL_REASONS;
    r->refusals_by_reason = b->reason_ptrs;
}

static void reply_free(reply_buf *b)
{
    for (size_t i = 0; i < b->r.n_rpcs; i++) {
        free(b->rpcs[i]->method);
        free(b->rpcs[i]->errors);
        free(b->rpcs[i]->window);
        free(b->rpcs[i]->total);
        free(b->rpcs[i]);
    }
    for (size_t i = 0; i < b->r.n_tables; i++) {
        free(b->tables[i]->table);
        free(b->tables[i]->errors);
        free(b->tables[i]->window);
        free(b->tables[i]->total);
        free(b->tables[i]);
    }
    free(b->rpcs);
    free(b->tables);
    free(b->r.refusals);
}

int stats_handle(server_call *c, grpc_byte_buffer *req, grpc_byte_buffer **reply,
                 char *msg, size_t msglen)
{
    char why[160] = "no message";
    ProtobufCMessage *rq = pb_unpack(&engram__v1__stats_request__descriptor, req, why, sizeof why);
    if (!rq) {
        snprintf(msg, msglen, "malformed StatsRequest: %s", why);
        return ES_INVALID_ARGUMENT;
    }
    protobuf_c_message_free_unpacked(rq, NULL);
    reply_buf b;
    memset(&b, 0, sizeof b);
    engram__v1__stats_response__init(&b.r);
    stats_process p;
    stats_process_read(&p);
    fill_process(&b, &p);
    stats_each_rpc(add_rpc, &b);
    stats_each_table(add_table, &b);
    lookup_totals(&b);
    b.r.rpcs = b.rpcs;
    b.r.tables = b.tables;
    int code = ES_OK;
    if (b.oom) {
        snprintf(msg, msglen, "out of memory while building the StatsResponse");
        code = ES_RESOURCE_EXHAUSTED;
    } else {
        *reply = pb_to_byte_buffer(&b.r.base);
    }
    reply_free(&b);
    return code;
}
