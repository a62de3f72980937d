/* prefetch_bench.c: engram-prefetch-bench, libengram prefetch latency and
 * throughput against one engram-server, on the real token workload.
 *
 *   engram-prefetch-bench --server HOST:PORT --model NAME --tokens FILE
 *                         [--seconds S (10)] [--warmup S (1)]
 *                         [--inflight K (4)] [--verify-seed S] [--no-gather]
 *                         [--deadline-ms MS (10000)]
 *                         [--decode-steps N] [--prefill-steps N]
 *
 * What: the model's manifest (all its layers, every head) is opened with
 * engram_model_open; FILE is int32 little-endian token ids (the workload in
 * tests/data/workload/tokens.bin). Two request shapes, both covering
 * every layer of the model in one engram_prefetch_start:
 *   decode   B = 256 sequences, T = 1, at 256 evenly spaced offsets of the
 *            workload; history = the max_ngram - 1 tokens before each; step
 *            s moves every offset on by s tokens;
 *   prefill  B = 1, T = 4096 consecutive tokens; chunk s starts 4096 * s
 *            tokens further on; history = the tokens before the chunk.
 * Each shape is timed twice for --seconds after --warmup: 1 prefetch in
 * flight with hashing on the caller's thread (latency = just before start
 * to wait's return), then K in flight with ENGRAM_PREFETCH_HASH_ASYNC (the
 * waiter waits on the oldest, round robin; a new one starts in its slot).
 *
 * How the figures are made comparable on a shared, noisy machine: between
 * the two timed runs of a shape, in the same process and for the same time,
 *   hash    engram_model_hash of every layer for the same batches, alone;
 *   gather  a one-thread memcpy of the same number of rows (of the tables'
 *           row size), at random indices, from dense in-memory arrays of
 *           the tables' size;
 * and prefetch latency is reported over (hash + gather) per step. The
 * dense arrays are a full RAM copy of every table: --no-gather skips the
 * gather (and the ratios, printed as nan), and so does a model whose tables
 * are more than half of physical memory, with a note, so the bench runs
 * against tables that only the server's disk holds.
 * De-duplication (prefetch.c de-dups each layer's rows within a call) is
 * measured outside every timed path: up to 64 of the steps a run made are
 * hashed again and counted with a hash set, per layer.
 *
 * --verify-seed S: after all timed runs, one decode step and one prefill
 * chunk (each with and without HASH_ASYNC) are checked byte for byte: each
 * layer's rows from engram_model_hash, bytes from synthetic_row_typed(
 * manifest_synthetic_seed(S, layer_id), row) (tables imported with
 * engramctl import-synthetic --manifest NAME --seed S).
 *
 * --decode-steps N / --prefill-steps N: that shape's runs make exactly N
 * steps each instead of running for --seconds, with no warm-up, the first
 * run steps [0, N) and the second [N, 2N): the second does not re-read the
 * first's rows, and a second invocation with the same counts repeats the
 * same steps (a cold pass then a hot pass over the same rows). N at most
 * half the steps before the shape's offsets wrap.
 *
 * --deadline-ms: the client's deadline per call (engram_client_options);
 * a prefill chunk of 98,304 rows read cold from a slow disk takes longer
 * than the library's default 10 s.
 *
 * Output: per scenario a human-readable block and one `bench: key=value`
 * line. Exit status: 0 ok, 1 verification mismatch, 2 usage or RPC error.
 * The setup, workload shapes and verification are prefetch_common.c's,
 * shared with engram-decode-loop-bench. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engram/engram.h"
#include "manifest.h"
#include "synthetic.h"
#include "bench_util.h"
#include "prefetch_common.h"

const char bench_prog[] = "engram-prefetch-bench";

#define DEDUP_SAMPLES 64
#define GATHER_INDEX_SETS 8

typedef struct bench_opts {
    const char *server, *model, *tokens;
    double seconds, warmup;
    size_t inflight;
    int verify, no_gather;
    uint64_t verify_seed;
    int64_t deadline_ms;
    uint64_t decode_steps, prefill_steps;  /* 0: time-bound runs */
} bench_opts;

/* One request shape and how many steps a run of it makes. */
typedef struct shape {
    pf_shape w;
    uint64_t count;  /* steps per run (--decode-steps ...); 0: --seconds */
} shape;

typedef struct bench {
    const bench_opts *o;
    pf_bench p;
    uint64_t table_rows[ENGRAM_MAX_LAYERS];
    uint8_t *dense[ENGRAM_MAX_LAYERS];  /* local gather baseline's tables */
    int gather;      /* run the gather baseline (dense tables allocated) */
} bench;

/* One prefetch in flight. */
typedef struct slot {
    pf_buf buf;
    engram_prefetch *h;
    uint64_t t0;
} slot;

typedef struct run_result {
    size_t k;
    unsigned flags;
    uint64_t steps;      /* counted (after warm-up) */
    uint64_t first;      /* first step made */
    uint64_t steps_made; /* all, warm-up included: the de-dup sample range */
    double elapsed_s;
    lat_log lat;
    double uniq_per_step;
    uint64_t dedup_samples;  /* steps the de-dup ratio was counted over */
} run_result;

typedef struct baseline {
    double hash_ns, gather_ns;  /* per step */
} baseline;

/* ---- options -------------------------------------------------------------- */

static int usage(const char *why)
{
    if (why)
        fprintf(stderr, "engram-prefetch-bench: %s\n", why);
    fprintf(stderr,
"usage: engram-prefetch-bench --server HOST:PORT --model NAME --tokens FILE\n"
"                             [--seconds S] [--warmup S] [--inflight K]\n"
"                             [--verify-seed S] [--no-gather] [--deadline-ms MS]\n"
"                             [--decode-steps N] [--prefill-steps N]\n");
    return 2;
}

static int apply_opt(void *ctx, int c, const char *arg)
{
    bench_opts *o = ctx;
    uint64_t u = 0;
    switch (c) {
    case 's': o->server = arg; return 0;
    case 'm': o->model = arg; return 0;
    case 't': o->tokens = arg; return 0;
    case 'S': return parse_num(arg, &o->seconds);
    case 'w': return parse_num(arg, &o->warmup);
    case 'v': o->verify = 1; return parse_u64(arg, &o->verify_seed);
    case 'G': o->no_gather = 1; return 0;
    case 'D': return parse_u64(arg, &o->decode_steps);
    case 'P': return parse_u64(arg, &o->prefill_steps);
    case 'd':
        if (parse_u64(arg, &u) || u == 0 || u > INT64_MAX)
            return -1;
        o->deadline_ms = (int64_t)u;
        return 0;
    case 'k':
        if (parse_u64(arg, &u) || u == 0 || u > 64)
            return -1;
        o->inflight = u;
        return 0;
    }
    return -1;
}

static int parse_args(int argc, char **argv, bench_opts *o)
{
    static const struct option lo[] = {
        {"server", 1, 0, 's'}, {"model", 1, 0, 'm'}, {"tokens", 1, 0, 't'},
        {"seconds", 1, 0, 'S'}, {"warmup", 1, 0, 'w'}, {"inflight", 1, 0, 'k'},
        {"verify-seed", 1, 0, 'v'}, {"no-gather", 0, 0, 'G'}, {"deadline-ms", 1, 0, 'd'},
        {"decode-steps", 1, 0, 'D'}, {"prefill-steps", 1, 0, 'P'},
        {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    *o = (bench_opts){.seconds = 10, .warmup = 1, .inflight = 4, .deadline_ms = 10000};
    int rc = bench_getopt(argc, argv, lo, apply_opt, o, usage);
    if (rc)
        return rc;
    if (!o->server || !o->model || !o->tokens)
        return usage("--server, --model and --tokens are required");
    if (o->seconds <= 0)
        return usage("--seconds must be positive");
    return 0;
}

/* ---- setup ------------------------------------------------------------------ */

/* Each layer's table rows, from the manifest as stored on the server. */
static int load_table_rows(bench *b)
{
    char *json = NULL, why[512];
    engram_error err = {0};
    int rc = engram_manifest_get(b->p.client, b->o->model, &json, NULL, &err);
    if (rc)
        return rpc_fail("manifest", rc, &err);
    engram_manifest *m = manifest_parse(json, strlen(json), why, sizeof why);
    engram_free(json);
    if (!m) {
        fprintf(stderr, "engram-prefetch-bench: stored manifest: %s\n", why);
        return 2;
    }
    for (uint32_t i = 0; i < b->p.info.n_layers; i++)
        b->table_rows[i] = m->model->layers[i].total_rows;
    manifest_free(m);
    return 0;
}

static int open_bench(bench *b)
{
    engram_client_options co;
    engram_client_options_init(&co);
    co.deadline_ms = b->o->deadline_ms;
    int rc = pf_open(&b->p, b->o->server, &co, b->o->model);
    return rc ? rc : load_table_rows(b);
}

static size_t rows_per_step(const bench *b, const shape *s)
{
    return pf_rows_per_step(&b->p, &s->w);
}

/* ---- slots -------------------------------------------------------------------- */

static slot *slots_new(const bench *b, const shape *s, size_t k)
{
    slot *v = calloc(k, sizeof *v);
    if (!v)
        exit(2);
    for (size_t i = 0; i < k; i++)
        pf_buf_init(&b->p, &s->w, b->p.info.row_bytes, &v[i].buf);
    return v;
}

static void slots_free(slot *v, size_t k)
{
    for (size_t i = 0; i < k; i++) {
        engram_prefetch_free(v[i].h);
        pf_buf_free(&v[i].buf);
    }
    free(v);
}

/* ---- the timed prefetch runs ------------------------------------------------- */

static int slot_start(const bench *b, const shape *s, slot *sl, uint64_t step,
                      unsigned flags)
{
    engram_error err = {0};
    pf_fill_batch(&b->p, &s->w, step, &sl->buf);
    engram_prefetch_request r = pf_request(&b->p, &s->w, &sl->buf, flags);
    sl->t0 = bench_now_ns();
    int rc = engram_prefetch_start(b->p.model, &r, &sl->h, &err);
    return rc ? rpc_fail("prefetch start", rc, &err) : 0;
}

/* Waits for a slot's prefetch and frees its handle; *lat_ns receives
 * start-to-wait-returned time. */
static int slot_finish(slot *sl, uint64_t *lat_ns)
{
    engram_error err = {0};
    int rc = engram_prefetch_wait(sl->h, -1, &err);
    *lat_ns = bench_now_ns() - sl->t0;
    engram_prefetch_free(sl->h);
    sl->h = NULL;
    return rc ? rpc_fail("prefetch", rc, &err) : 0;
}

static void drain(slot *v, size_t k)
{
    uint64_t ns;
    for (size_t i = 0; i < k; i++)
        if (v[i].h)
            slot_finish(&v[i], &ns);
}

/* Warm-up, then `seconds` of r->k prefetches in flight. Prefetches that
 * complete after the deadline are drained and not counted. */
static int run_timed(const bench *b, const shape *s, slot *v, run_result *r)
{
    uint64_t step = 0, now = 0, ns;
    for (size_t i = 0; i < r->k; i++)
        if (slot_start(b, s, &v[i], step++, r->flags))
            return 2;
    uint64_t t_start = bench_now_ns() + (uint64_t)(b->o->warmup * 1e9);
    uint64_t t_end = t_start + (uint64_t)(b->o->seconds * 1e9);
    for (size_t i = 0;; i = (i + 1) % r->k) {
        if (slot_finish(&v[i], &ns))
            return 2;
        now = bench_now_ns();
        if (now >= t_end)
            break;
        if (now >= t_start) {
            r->steps++;
            lat_push(&r->lat, ns);
        }
        if (slot_start(b, s, &v[i], step++, r->flags))
            return 2;
    }
    r->elapsed_s = (double)(now - t_start) / 1e9;
    r->steps_made = step;
    drain(v, r->k);
    return 0;
}

/* Steps [r->first, r->first + s->count) with up to r->k in flight, every
 * one counted (no warm-up, no clock but the elapsed time). */
static int run_counted(const bench *b, const shape *s, slot *v, run_result *r)
{
    uint64_t next = r->first, end = r->first + s->count, ns, t0 = bench_now_ns();
    size_t k = r->k < s->count ? r->k : (size_t)s->count;
    for (size_t i = 0; i < k; i++)
        if (slot_start(b, s, &v[i], next++, r->flags))
            return 2;
    /* Slots start and finish in the same round-robin order, so a slot
     * without a handle is one the last steps no longer needed. */
    for (size_t i = 0; r->steps < s->count; i = (i + 1) % k) {
        if (!v[i].h)
            continue;
        if (slot_finish(&v[i], &ns))
            return 2;
        r->steps++;
        lat_push(&r->lat, ns);
        if (next < end && slot_start(b, s, &v[i], next++, r->flags))
            return 2;
    }
    r->elapsed_s = (double)(bench_now_ns() - t0) / 1e9;
    r->steps_made = s->count;
    return 0;
}

/* ---- de-dup ratio (untimed) --------------------------------------------------- */

/* Distinct values among rows[0..n), with an open-addressing set of `cap`
 * (a power of two > n) slots; value + 1 is stored so 0 means empty. */
static size_t count_unique(const uint64_t *rows, size_t n, uint64_t *set, size_t cap)
{
    memset(set, 0, cap * sizeof *set);
    size_t uniq = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t key = rows[i] + 1;
        size_t h = (size_t)(splitmix64(key) & (cap - 1));
        while (set[h] && set[h] != key)
            h = (h + 1) & (cap - 1);
        if (!set[h]) {
            set[h] = key;
            uniq++;
        }
    }
    return uniq;
}

static size_t set_cap(size_t n)
{
    size_t cap = 1;
    while (cap < 2 * n)
        cap <<= 1;
    return cap;
}

/* Unique rows of one step, summed over layers (prefetch de-dups per
 * layer, since each layer is its own table); 0 on a hashing error. in's
 * output holds one layer's row ids. */
static size_t step_unique(const bench *b, const shape *s, uint64_t step, pf_buf *in,
                          uint64_t *set)
{
    size_t per = s->w.B * s->w.T * b->p.info.heads, uniq = 0;
    uint64_t *rows = (uint64_t *)(void *)in->out;
    pf_fill_batch(&b->p, &s->w, step, in);
    for (uint32_t l = 0; l < b->p.info.n_layers; l++) {
        engram_error err = {0};
        int rc = engram_model_hash(b->p.model, b->p.info.layer_ids[l], in->tokens, s->w.B,
                                   s->w.T, in->history, rows, &err);
        if (rc) {
            rpc_fail("hash", rc, &err);
            return 0;
        }
        uniq += count_unique(rows, per, set, set_cap(per));
    }
    return uniq;
}

/* Average unique rows per step over up to DEDUP_SAMPLES of the steps made;
 * r->dedup_samples receives how many. */
static void dedup_unique(const bench *b, const shape *s, run_result *r)
{
    size_t per = s->w.B * s->w.T * b->p.info.heads;
    pf_buf in;
    pf_buf_init(&b->p, &s->w, sizeof(uint64_t), &in);   /* row ids: all layers fit */
    uint64_t *set = xmalloc(set_cap(per) * sizeof *set);
    uint64_t made = r->steps_made, n = made < DEDUP_SAMPLES ? made : DEDUP_SAMPLES;
    double sum = 0;
    for (uint64_t i = 0; i < n; i++)
        sum += (double)step_unique(b, s, r->first + i * made / n, &in, set);
    pf_buf_free(&in);
    free(set);
    r->uniq_per_step = n ? sum / (double)n : 0.0;
    r->dedup_samples = n;
}

/* ---- baselines ------------------------------------------------------------------ */

/* Hashes every layer of one step into rows (layer after layer). */
static int hash_step(const bench *b, const shape *s, const pf_buf *in)
{
    size_t per = s->w.B * s->w.T * b->p.info.heads;
    uint64_t *rows = (uint64_t *)(void *)in->out;
    for (uint32_t l = 0; l < b->p.info.n_layers; l++) {
        engram_error err = {0};
        int rc = engram_model_hash(b->p.model, b->p.info.layer_ids[l], in->tokens, s->w.B,
                                   s->w.T, in->history, rows + l * per, &err);
        if (rc)
            return rpc_fail("hash", rc, &err);
    }
    return 0;
}

/* ns per step of engram_model_hash alone over the same batches as the
 * prefetch runs (batch filling included, as it is in theirs); -1 on error. */
static double baseline_hash(const bench *b, const shape *s)
{
    pf_buf in;
    pf_buf_init(&b->p, &s->w, sizeof(uint64_t), &in);   /* output: the row ids */
    uint64_t step = 0, t0 = 0, t_end = 0, now = 0;
    int rc = 0;
    pf_fill_batch(&b->p, &s->w, step, &in);
    rc = hash_step(b, s, &in);                   /* warm-up, untimed */
    t0 = bench_now_ns();
    t_end = t0 + (uint64_t)(b->o->seconds * 1e9);
    for (step = 0; !rc && (now = bench_now_ns()) < t_end; step++) {
        pf_fill_batch(&b->p, &s->w, step, &in);
        rc = hash_step(b, s, &in);
    }
    pf_buf_free(&in);
    return rc ? -1.0 : (double)(now - t0) / (double)step;
}

/* Dense local tables of each layer's size, filled (so every page is real),
 * unless --no-gather or they would take more than half of physical memory
 * (a copy of a disk-sized table cannot be made: the gather is skipped). */
static void dense_alloc(bench *b)
{
    double total = 0, ram = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
    for (uint32_t l = 0; l < b->p.info.n_layers; l++)
        total += (double)b->table_rows[l] * b->p.info.row_bytes;
    if (b->o->no_gather)
        return;
    if (ram > 0 && total > ram / 2) {
        printf("note: memcpy gather baseline skipped: the tables' %.1f GB would not fit "
               "half of the %.1f GB of RAM (as with --no-gather)\n\n", total / 1e9, ram / 1e9);
        return;
    }
    b->gather = 1;
    for (uint32_t l = 0; l < b->p.info.n_layers; l++) {
        size_t bytes = b->table_rows[l] * b->p.info.row_bytes;
        b->dense[l] = xmalloc(bytes);
        synthetic_rows(l, 0, b->table_rows[l], b->dense[l], b->p.info.row_bytes);
    }
}

static volatile uint8_t gather_sink;

/* Random row indices for GATHER_INDEX_SETS steps, [set][layer][per]. */
static uint64_t *gather_indices(const bench *b, size_t per)
{
    size_t L = b->p.info.n_layers;
    uint64_t *idx = xmalloc(GATHER_INDEX_SETS * L * per * sizeof *idx), rng = 1;
    for (size_t i = 0; i < GATHER_INDEX_SETS * L * per; i++) {
        uint64_t rows = b->table_rows[(i / per) % L];
        idx[i] = (uint64_t)(((unsigned __int128)splitmix64(++rng) * rows) >> 64);
    }
    return idx;
}

/* One step's gather: every layer's rows memcpy'd into out, back to back. */
static void gather_step(const bench *b, const uint64_t *idx, size_t per, uint8_t *out)
{
    size_t rb = b->p.info.row_bytes;
    for (uint32_t l = 0; l < b->p.info.n_layers; l++) {
        const uint8_t *t = b->dense[l];
        const uint64_t *ix = idx + l * per;
        uint8_t *o = out + l * per * rb;
        for (size_t i = 0; i < per; i++)
            memcpy(o + i * rb, t + ix[i] * rb, rb);
    }
}

/* ns per step of a one-thread gather of the step's number of rows at
 * random indices (precomputed, outside the clock) from the dense tables. */
static double baseline_gather(const bench *b, const shape *s)
{
    size_t per = s->w.B * s->w.T * b->p.info.heads, L = b->p.info.n_layers;
    uint64_t *idx = gather_indices(b, per);
    uint8_t *out = xmalloc(L * per * b->p.info.row_bytes);
    gather_step(b, idx, per, out);              /* warm-up, untimed */
    uint64_t steps = 0, now, t0 = bench_now_ns();
    uint64_t t_end = t0 + (uint64_t)(b->o->seconds * 1e9);
    do {
        gather_step(b, idx + (steps % GATHER_INDEX_SETS) * L * per, per, out);
        gather_sink ^= out[steps % (L * per * b->p.info.row_bytes)];
        steps++;
    } while ((now = bench_now_ns()) < t_end);
    free(idx);
    free(out);
    return (double)(now - t0) / (double)steps;
}

/* ---- report ---------------------------------------------------------------------- */

static void print_human(const bench *b, const shape *s, const run_result *r,
                        const baseline *bl)
{
    const lat_log *l = &r->lat;
    double steps_s = (double)r->steps / r->elapsed_s, rows = (double)rows_per_step(b, s);
    double local_ms = (bl->hash_ns + bl->gather_ns) / 1e6;
    char layers[256];
    printf("%s: B %zu x T %zu, layers %s, %u heads, %.0f rows/step; %zu in flight, "
           "hashing %s\n", s->w.name, s->w.B, s->w.T, pf_layer_list(&b->p, layers, sizeof layers),
           b->p.info.heads, rows, r->k,
           r->flags & ENGRAM_PREFETCH_HASH_ASYNC ? "async (HASH_ASYNC)" : "on the caller's thread");
    if (s->count)
        printf("  steps %" PRIu64 "..%" PRIu64 ", no warm-up: %.2f s, %.1f steps/s, "
               "%.0f tokens/s\n", r->first, r->first + r->steps - 1, r->elapsed_s,
               steps_s, steps_s * (double)(s->w.B * s->w.T));
    else
        printf("  timed %.2f s after %.1f s warm-up: %" PRIu64 " steps, %.1f steps/s, "
               "%.0f tokens/s\n", r->elapsed_s, b->o->warmup, r->steps, steps_s,
               steps_s * (double)(s->w.B * s->w.T));
    printf("  latency ms  p50 %.3f  p90 %.3f  p99 %.3f  max %.3f\n", pct_ms(l, 50),
           pct_ms(l, 90), pct_ms(l, 99), pct_ms(l, 100));
    printf("  de-dup      %.1f unique of %.0f rows/step (ratio %.3f; %" PRIu64 " sampled "
           "steps, per layer, untimed)\n", r->uniq_per_step, rows, r->uniq_per_step / rows,
           r->dedup_samples);
    if (!b->gather) {
        printf("  local       hash %.3f ms/step (1 thread); memcpy gather skipped\n",
               bl->hash_ns / 1e6);
        return;
    }
    printf("  local       hash %.3f ms + memcpy gather %.3f ms = %.3f ms/step (1 thread)\n",
           bl->hash_ns / 1e6, bl->gather_ns / 1e6, local_ms);
    printf("  ratios      prefetch p50 / local %.2f; prefetch time per step at "
           "throughput (1/steps_s) / local %.2f\n", pct_ms(l, 50) / local_ms,
           1e3 / steps_s / local_ms);
}

static void print_machine(const bench *b, const shape *s, const run_result *r,
                          const baseline *bl)
{
    const lat_log *l = &r->lat;
    double steps_s = (double)r->steps / r->elapsed_s, rows = (double)rows_per_step(b, s);
    double local_ms = (bl->hash_ns + bl->gather_ns) / 1e6;
    printf("bench: scenario=%s%s model=%s batch=%zu seq=%zu layers=%u heads=%u "
           "inflight=%zu hash_async=%d seconds=%.2f steps=%" PRIu64 " first_step=%" PRIu64
           " steps_per_s=%.1f "
           "tokens_per_s=%.0f rows_per_step=%.0f unique_rows_per_step=%.1f "
           "dedup_ratio=%.4f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f "
           "hash_ms=%.4f gather_ms=%.4f local_ms=%.4f ratio_p50=%.3f ratio_tput=%.3f\n",
           s->w.name, r->k > 1 ? "_inflight" : "", b->p.info.name, s->w.B, s->w.T,
           b->p.info.n_layers, b->p.info.heads, r->k,
           (r->flags & ENGRAM_PREFETCH_HASH_ASYNC) != 0, r->elapsed_s, r->steps,
           r->first, steps_s, steps_s * (double)(s->w.B * s->w.T), rows, r->uniq_per_step,
           r->uniq_per_step / rows, pct_ms(l, 50), pct_ms(l, 90), pct_ms(l, 99),
           pct_ms(l, 100), bl->hash_ns / 1e6, bl->gather_ns / 1e6, local_ms,
           pct_ms(l, 50) / local_ms, 1e3 / steps_s / local_ms);
}

static void print_result(const bench *b, const shape *s, run_result *r,
                         const baseline *bl)
{
    lat_sort(&r->lat);
    if (r->elapsed_s <= 0)
        r->elapsed_s = 1e-9;
    print_human(b, s, r, bl);
    print_machine(b, s, r, bl);
    printf("\n");
    fflush(stdout);
}

/* ---- one shape: two timed runs around the baselines --------------------------- */

static int timed_prefetch(const bench *b, const shape *s, run_result *r)
{
    slot *v = slots_new(b, s, r->k);
    int rc = s->count ? run_counted(b, s, v, r) : run_timed(b, s, v, r);
    slots_free(v, r->k);
    if (rc == 0)
        dedup_unique(b, s, r);
    return rc;
}

static int bench_shape(const bench *b, const shape *s)
{
    run_result one = {.k = 1, .flags = 0};
    run_result many = {.k = b->o->inflight, .flags = ENGRAM_PREFETCH_HASH_ASYNC,
                       .first = s->count};
    baseline bl = {0};
    int rc = timed_prefetch(b, s, &one);
    if (rc == 0 && (bl.hash_ns = baseline_hash(b, s)) < 0)
        rc = 2;
    if (rc == 0) {
        bl.gather_ns = b->gather ? baseline_gather(b, s) : NAN;
        rc = timed_prefetch(b, s, &many);
    }
    if (rc == 0) {
        print_result(b, s, &one, &bl);
        print_result(b, s, &many, &bl);
    }
    free(one.lat.ns);
    free(many.lat.ns);
    return rc;
}

/* ---- verification (untimed) ----------------------------------------------------- */

/* Prefetches step 0 of shape s with `flags` and checks every byte; returns
 * mismatching rows (adds checked rows to *checked), or -1 on an error. */
static long verify_shape(const bench *b, const shape *s, unsigned flags,
                         uint64_t *checked)
{
    slot *v = slots_new(b, s, 1);
    uint64_t ns;
    long bad = -1;
    if (slot_start(b, s, v, 0, flags) == 0 && slot_finish(v, &ns) == 0)
        bad = pf_verify(&b->p, &s->w, &v->buf, b->o->verify_seed, 0, checked);
    slots_free(v, 1);
    return bad;
}

static int run_verify(const bench *b, const shape *shapes, size_t n)
{
    uint64_t checked = 0;
    long bad = 0;
    for (size_t i = 0; i < 2 * n && bad >= 0; i++) {
        long m = verify_shape(b, &shapes[i / 2], i % 2 ? ENGRAM_PREFETCH_HASH_ASYNC : 0,
                              &checked);
        bad = m < 0 ? -1 : bad + m;
    }
    if (bad < 0)
        return 2;
    printf("verify: step 0 of each shape, with and without HASH_ASYNC, after the "
           "timed runs: %" PRIu64 " rows checked byte for byte against seed %" PRIu64
           ": %ld mismatches\n", checked, b->o->verify_seed, bad);
    printf("bench: scenario=verify seed=%" PRIu64 " verified_rows=%" PRIu64
           " mismatches=%ld\n", b->o->verify_seed, checked, bad);
    return bad ? 1 : 0;
}

/* ---- main ------------------------------------------------------------------------- */

static int check_workload(const bench *b, const shape *s)
{
    if (pf_check_workload(&b->p, &s->w, b->o->tokens))
        return 2;
    if (s->count > s->w.nsteps / 2) {
        fprintf(stderr, "engram-prefetch-bench: --%s-steps %" PRIu64 ": at most %zu (two "
                "runs of distinct steps in %zu)\n", s->w.name, s->count, s->w.nsteps / 2,
                s->w.nsteps);
        return 2;
    }
    return 0;
}

static void print_header(const bench *b)
{
    char layers[256];
    printf("engram-prefetch-bench: server %s, model %s (manifest version %" PRIu64
           "), layers %s, %u heads x %u-byte rows (%s, D %u)\n", b->o->server,
           b->p.info.name, b->p.info.manifest_version, pf_layer_list(&b->p, layers, sizeof layers),
           b->p.info.heads, b->p.info.row_bytes, b->p.info.dtype, b->p.info.dim);
    printf("  tokens %s: %zu; each prefetch run %.1f s after %.1f s warm-up; "
           "baselines %.1f s each\n\n", b->o->tokens, b->p.ntok, b->o->seconds,
           b->o->warmup, b->o->seconds);
    fflush(stdout);
}

static int run_all(bench *b)
{
    shape shapes[2] = {{pf_shape_make(&b->p, "decode", 256, 1), b->o->decode_steps},
                       {pf_shape_make(&b->p, "prefill", 1, 4096), b->o->prefill_steps}};
    int rc = check_workload(b, &shapes[0]) || check_workload(b, &shapes[1]) ? 2 : 0;
    if (rc)
        return rc;
    print_header(b);
    dense_alloc(b);
    for (size_t i = 0; i < 2 && rc == 0; i++)
        rc = bench_shape(b, &shapes[i]);
    if (rc == 0 && b->o->verify)
        rc = run_verify(b, shapes, 2);
    return rc;
}

int main(int argc, char **argv)
{
    bench_opts o;
    if (parse_args(argc, argv, &o))
        return 2;
    bench b = {.o = &o};
    int rc = load_tokens_file(o.tokens, &b.p.tok, &b.p.ntok);
    if (rc == 0)
        rc = open_bench(&b);
    if (rc == 0)
        rc = run_all(&b);
    for (size_t l = 0; l < ENGRAM_MAX_LAYERS; l++)
        free(b.dense[l]);
    pf_close(&b.p);
    return rc;
}
