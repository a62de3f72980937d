/* hotcache.c: S3-FIFO over fixed-size row slots, in mutex-guarded segments
 * (see hotcache.h for the policy and why).
 *
 * One detail differs from the paper's pseudo-code: a row leaves the small
 * FIFO for main when it was hit at least once after insertion (freq >= 1)
 * rather than twice, because here the insert itself follows a miss that
 * already counted as a use; with the stricter rule a row must be read three
 * times inside the small window, which starves main on short windows. */
#include "hotcache.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define SEGMENTS 16
#define FREQ_MAX 3

enum { FREE = 0, IN_SMALL = 1, IN_MAIN = 2 };

/* A ring of slot numbers (or keys): push at the head, pop at the tail. */
typedef struct ring {
    uint64_t *v;
    uint32_t cap, head, count;
} ring;

/* Open addressing, linear probing, backward-shift deletion; key 0 = empty
 * (keys are stored + 1). */
typedef struct map {
    uint64_t *keys;
    uint32_t *vals;
    uint32_t mask;
} map;

typedef struct segment {
    pthread_mutex_t mu;
    uint32_t nslots, small_cap;
    uint8_t *rows;
    uint64_t *keys;
    uint8_t *freq, *where;
    uint32_t *freelist, nfree;
    ring small, main, ghost;
    map index, ghosts;
} segment;

struct hotcache {
    uint32_t row_bytes;
    uint64_t capacity;
    hotcache_metrics *m;               /* NULL: not counted */
    segment seg[SEGMENTS];
};

/* ---- rings and maps ------------------------------------------------------------ */

static void ring_init(ring *r, uint32_t cap)
{
    r->v = calloc(cap ? cap : 1, sizeof *r->v);
    r->cap = cap ? cap : 1;
    r->head = r->count = 0;
}

static void ring_push(ring *r, uint64_t x)
{
    r->v[r->head] = x;
    r->head = (r->head + 1) % r->cap;
    r->count++;
}

static uint64_t ring_pop(ring *r)
{
    uint32_t tail = (r->head + r->cap - r->count) % r->cap;
    r->count--;
    return r->v[tail];
}

static uint32_t hash32(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return (uint32_t)k;
}

static uint32_t map_cap(uint32_t entries);

static void map_init(map *m, uint32_t entries)
{
    uint32_t cap = map_cap(entries);
    m->keys = calloc(cap, sizeof *m->keys);
    m->vals = calloc(cap, sizeof *m->vals);
    m->mask = cap - 1;
}

static int64_t map_find(const map *m, uint64_t key)
{
    uint64_t k = key + 1;
    for (uint32_t i = hash32(key) & m->mask;; i = (i + 1) & m->mask) {
        if (m->keys[i] == k)
            return m->vals[i];
        if (!m->keys[i])
            return -1;
    }
}

static void map_put(map *m, uint64_t key, uint32_t val)
{
    uint64_t k = key + 1;
    uint32_t i = hash32(key) & m->mask;
    while (m->keys[i] && m->keys[i] != k)
        i = (i + 1) & m->mask;
    m->keys[i] = k;
    m->vals[i] = val;
}

/* Backward-shift deletion keeps probe chains intact without tombstones. */
static void map_erase(map *m, uint64_t key)
{
    uint64_t k = key + 1;
    uint32_t i = hash32(key) & m->mask;
    while (m->keys[i] != k) {
        if (!m->keys[i])
            return;
        i = (i + 1) & m->mask;
    }
    for (uint32_t j = (i + 1) & m->mask; m->keys[j]; j = (j + 1) & m->mask) {
        uint32_t home = hash32(m->keys[j] - 1) & m->mask;
        /* move j back to i when its home is not in (i, j] cyclically */
        if (((j - home) & m->mask) >= ((j - i) & m->mask)) {
            m->keys[i] = m->keys[j];
            m->vals[i] = m->vals[j];
            i = j;
        }
    }
    m->keys[i] = 0;
}

/* ---- S3-FIFO ------------------------------------------------------------------------ */

static void ghost_add(segment *s, uint64_t key)
{
    if (s->ghost.count == s->ghost.cap)
        map_erase(&s->ghosts, ring_pop(&s->ghost));
    ring_push(&s->ghost, key);
    map_put(&s->ghosts, key, 1);
}

/* Evicts from main: rows hit since they last passed get another round. */
static uint32_t evict_main(segment *s)
{
    for (;;) {
        uint32_t t = (uint32_t)ring_pop(&s->main);
        if (s->freq[t] > 0) {
            s->freq[t]--;
            ring_push(&s->main, t);
            continue;
        }
        map_erase(&s->index, s->keys[t]);
        s->where[t] = FREE;
        return t;
    }
}

/* Evicts from small: rows hit again move to main, the others leave (their
 * keys go to the ghost FIFO). Returns a free slot. */
static uint32_t evict_small(segment *s, hotcache_metrics *m)
{
    while (s->small.count) {
        uint32_t t = (uint32_t)ring_pop(&s->small);
        if (s->freq[t] >= 1) {
            s->freq[t] = 0;
            s->where[t] = IN_MAIN;
            ring_push(&s->main, t);
            METRIC_INCR(m, promotions);
            if (s->main.count > s->nslots - s->small_cap)
                return evict_main(s);
            continue;
        }
        ghost_add(s, s->keys[t]);
        map_erase(&s->index, s->keys[t]);
        s->where[t] = FREE;
        return t;
    }
    return evict_main(s);
}

static uint32_t take_slot(segment *s, hotcache_metrics *m)
{
    if (s->nfree)
        return s->freelist[--s->nfree];
    METRIC_INCR(m, evictions);
    if (s->small.count >= s->small_cap || !s->main.count)
        return evict_small(s, m);
    return evict_main(s);
}

/* ---- segments and the public calls -------------------------------------------------- */

static void segment_init(segment *s, uint32_t nslots, uint32_t row_bytes)
{
    pthread_mutex_init(&s->mu, NULL);
    s->nslots = nslots;
    s->small_cap = nslots / 10 ? nslots / 10 : 1;
    s->rows = malloc((size_t)nslots * row_bytes);
    s->keys = calloc(nslots, sizeof *s->keys);
    s->freq = calloc(nslots, 1);
    s->where = calloc(nslots, 1);
    s->freelist = malloc(nslots * sizeof *s->freelist);
    for (uint32_t i = 0; i < nslots; i++)
        s->freelist[i] = nslots - 1 - i;
    s->nfree = nslots;
    ring_init(&s->small, nslots);
    ring_init(&s->main, nslots);
    ring_init(&s->ghost, nslots - s->small_cap);
    map_init(&s->index, nslots);
    map_init(&s->ghosts, nslots);
}

static void segment_free(segment *s)
{
    free(s->rows);
    free(s->keys);
    free(s->freq);
    free(s->where);
    free(s->freelist);
    free(s->small.v);
    free(s->main.v);
    free(s->ghost.v);
    free(s->index.keys);
    free(s->index.vals);
    free(s->ghosts.keys);
    free(s->ghosts.vals);
    pthread_mutex_destroy(&s->mu);
}

/* Table size for a map of up to `entries` keys: a power of two at load
 * <= 3/4. (At <= 1/2 the table could be 4x its entries, two maps of 12
 * bytes a slot then cost 96 bytes per 128-byte row.) */
static uint32_t map_cap(uint32_t entries)
{
    uint32_t cap = 16;
    while (cap < entries + entries / 3)
        cap <<= 1;
    return cap;
}

/* What segment_init allocates for n slots: the rows, key, freq, where and
 * free list per slot, the small, main and ghost rings, and the two maps;
 * counting the maps' power-of-two tables exactly keeps the cache inside its
 * budget (an estimate of twice their entries let a cache take 1.11x its
 * budget once full). */
static uint64_t segment_bytes(uint32_t n, uint32_t row_bytes)
{
    uint32_t small_cap = n / 10 ? n / 10 : 1;
    uint64_t b = (uint64_t)n * (row_bytes + 8 + 1 + 1 + 4);
    b += ((uint64_t)n + n + (n - small_cap)) * sizeof(uint64_t);
    b += 2 * (uint64_t)map_cap(n) * (sizeof(uint64_t) + sizeof(uint32_t));
    return b;
}

hotcache *hotcache_create(uint64_t budget, uint32_t row_bytes, hotcache_metrics *metrics)
{
    /* The most slots per segment that fit budget / SEGMENTS (segment_bytes
     * grows with n, so a binary search finds it). */
    uint64_t seg_budget = budget / SEGMENTS, lo = 0, hi = UINT32_MAX / 4;
    if (row_bytes && hi > seg_budget / row_bytes)
        hi = seg_budget / row_bytes;
    while (row_bytes && lo < hi) {
        uint64_t mid = lo + (hi - lo + 1) / 2;
        if (segment_bytes((uint32_t)mid, row_bytes) <= seg_budget)
            lo = mid;
        else
            hi = mid - 1;
    }
    uint64_t slots = lo * SEGMENTS;
    if (slots < 64 * SEGMENTS / 16 || slots / SEGMENTS > UINT32_MAX / 4)
        return NULL;
    hotcache *c = calloc(1, sizeof *c);
    c->row_bytes = row_bytes;
    c->m = metrics;
    uint32_t per = (uint32_t)(slots / SEGMENTS);
    c->capacity = (uint64_t)per * SEGMENTS;
    for (int i = 0; i < SEGMENTS; i++)
        segment_init(&c->seg[i], per, row_bytes);
    return c;
}

void hotcache_destroy(hotcache *c)
{
    if (!c)
        return;
    for (int i = 0; i < SEGMENTS; i++)
        segment_free(&c->seg[i]);
    free(c);
}

static segment *segment_of(hotcache *c, uint64_t key)
{
    return &c->seg[(hash32(key) >> 28) % SEGMENTS];
}

int hotcache_get(hotcache *c, uint64_t key, uint8_t *out)
{
    segment *s = segment_of(c, key);
    pthread_mutex_lock(&s->mu);
    int64_t t = map_find(&s->index, key);
    if (t >= 0) {
        memcpy(out, s->rows + (size_t)t * c->row_bytes, c->row_bytes);
        if (s->freq[t] < FREQ_MAX)
            s->freq[t]++;
    }
    pthread_mutex_unlock(&s->mu);
    if (t >= 0)
        METRIC_INCR(c->m, hits);
    else
        METRIC_INCR(c->m, misses);
    return t >= 0;
}

void hotcache_put(hotcache *c, uint64_t key, const uint8_t *row)
{
    segment *s = segment_of(c, key);
    pthread_mutex_lock(&s->mu);
    int64_t t = map_find(&s->index, key);
    if (t < 0) {
        t = take_slot(s, c->m);
        int ghost = map_find(&s->ghosts, key) >= 0;
        s->keys[t] = key;
        s->freq[t] = 0;
        s->where[t] = ghost ? IN_MAIN : IN_SMALL;
        if (ghost) {
            /* the ghost ring entry ages out on its own; membership goes now */
            map_erase(&s->ghosts, key);
            METRIC_INCR(c->m, ghost_hits);
        }
        ring_push(ghost ? &s->main : &s->small, (uint64_t)t);
        map_put(&s->index, key, (uint32_t)t);
        METRIC_INCR(c->m, inserts);
    }
    memcpy(s->rows + (size_t)t * c->row_bytes, row, c->row_bytes);
    pthread_mutex_unlock(&s->mu);
}

uint32_t hotcache_row_bytes(const hotcache *c)
{
    return c->row_bytes;
}

uint64_t hotcache_capacity(const hotcache *c)
{
    return c->capacity;
}

uint64_t hotcache_count(hotcache *c)
{
    uint64_t n = 0;
    for (int i = 0; i < SEGMENTS; i++) {
        pthread_mutex_lock(&c->seg[i].mu);
        n += c->seg[i].nslots - c->seg[i].nfree;
        pthread_mutex_unlock(&c->seg[i].mu);
    }
    return n;
}
