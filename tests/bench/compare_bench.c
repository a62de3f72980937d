/* compare_bench.c: engram-compare-bench, engram-server against Redis MGET,
 * in-process RocksDB MultiGet, a minimal gRPC server (the transport's
 * floor) and an in-process memcpy gather (the machine's floor), on the same
 * rows, workloads and batch sizes, in one run, printed as one table.
 *
 *   engram-compare-bench --engram ADDR [--floor ADDR] [--redis HOST:PORT]
 *       [--rocksdb-dir DIR] [--tokens FILE] [--seconds S (3)] [--warmup S (1)]
 *       [--inflight K (4)] [--batches 256,4096,65536] [--hot-table NAME]
 *       [--hot-rows N] [--hot-seed S] [--cold-table NAME] [--cold-seed S]
 *       [--cold-cache BYTES] [--stream-rows N] [--verify-calls N]
 *       [--cold-warmup S (the --warmup)]
 *   engram-compare-bench --demo-rows     the demo model's layer-1 rows
 *   engram-compare-bench --has-redis     exit 0 when built with hiredis
 *
 * How: the driver pre-generates every workload's row stream before any
 * clock runs: uniform (splitmix64), Zipf(1.0) (exact, by rejection-
 * inversion, ranks scattered over the table by a fixed random permutation)
 * and the real one (tokens.bin hashed for layer 1 of the demo manifest with
 * an identity compression table, 16 row ids per token, in order). Then, for
 * the hot table (resident) and the cold one (not resident), for every
 * workload and batch size, it runs every system's cell (compare.h), each
 * from the start of the same stream. A cell verifies a few batches against
 * synthetic_row before its clock starts; a failed cell prints its reason
 * in the table and makes the exit status 1. After the table come the
 * issue's targets, each PASS or MISS. Progress goes to stderr.
 *
 * --cold-warmup: the warm-up of the cold table's cells. What a cache tier
 * is worth shows only once it holds the workload's steady state; a cell
 * measured while its caches still fill from the previous workload's rows
 * measures the transition instead. Every system gets the same warm-up. */
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compare.h"
#include "engram_hash.h"
#include "synthetic.h"

const char bench_prog[] = "engram-compare-bench";

#define MAX_BATCHES 8
#define MAX_CELLS 256
#define MAX_SYS 4
#define DEMO_VOCAB 129280            /* DeepSeek-V3's token ids */
#define VERIFY_ROWS 16384

struct cmp_workload {
    const char *name;
    uint64_t *rows;
    size_t n;
};

typedef struct opts {
    const char *engram, *floor, *redis, *rocksdb_dir, *tokens;
    const char *hot_table, *cold_table;
    double seconds, warmup, cold_warmup;
    size_t inflight, verify_calls, nbatches;
    size_t batches[MAX_BATCHES];
    uint64_t hot_rows, hot_seed, cold_seed, cold_cache, stream_rows;
    uint32_t row_bytes;
    int one_shot;   /* 'D' (--demo-rows) or 'R' (--has-redis): answer and exit */
} opts;

typedef struct cell {
    const char *table, *workload, *system;
    size_t batch;
    int ok;
    size_t calls;
    double rows_s, p50, p99, p999;
    char err[256];
} cell;

static cell cells[MAX_CELLS];
static size_t ncells;

/* ---- the cell contract (compare.h) ---------------------------------------- */

const uint64_t *cmp_next_batch(cmp_run *r)
{
    if (r->next + r->batch > r->wl->n)
        r->next = 0;
    const uint64_t *p = r->wl->rows + r->next;
    r->next += r->batch;
    return p;
}

int cmp_verify(cmp_run *r, const uint64_t *rows, size_t n, const uint8_t *got)
{
    uint8_t want[4096];
    if (r->row_bytes > sizeof want) {
        snprintf(r->err, sizeof r->err, "cannot verify %u-byte rows", r->row_bytes);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        synthetic_row(r->seed, rows[i], want, r->row_bytes);
        if (memcmp(want, got + i * r->row_bytes, r->row_bytes) != 0) {
            snprintf(r->err, sizeof r->err, "verify: row %" PRIu64 " (index %zu) has wrong bytes",
                     rows[i], i);
            return -1;
        }
    }
    return 0;
}

void cmp_clock_start(const cmp_run *r, cmp_clock *c)
{
    c->t_start = bench_now_ns() + (uint64_t)(r->warmup * 1e9);
    c->t_end = c->t_start + (uint64_t)(r->seconds * 1e9);
    c->last = c->t_start;
}

/* A cell whose calls outlast its time still gets its first call recorded,
 * so a slow system shows a figure (resting on few calls) instead of none. */
int cmp_record(cmp_run *r, cmp_clock *c, uint64_t now, uint64_t lat_ns, size_t n)
{
    if (now >= c->t_end && r->lat.len > 0)
        return 0;
    if (now >= c->t_start) {
        lat_push(&r->lat, lat_ns);
        r->rows += n;
        c->last = now;
    }
    return now < c->t_end;
}

void cmp_clock_end(cmp_run *r, const cmp_clock *c)
{
    r->elapsed_s = (double)(c->last - c->t_start) / 1e9;
}

/* ---- workloads -------------------------------------------------------------- */

static uint64_t rng_next(uint64_t *state)
{
    return splitmix64(*state += 0x9E3779B97F4A7C15ULL);
}

static uint64_t rng_below(uint64_t *state, uint64_t n)
{
    return (uint64_t)(((unsigned __int128)rng_next(state) * n) >> 64);
}

static double rng_unit(uint64_t *state)
{
    return (double)(rng_next(state) >> 11) * 0x1.0p-53;
}

static cmp_workload *wl_new(const char *name, size_t n)
{
    cmp_workload *w = xmalloc(sizeof *w);
    *w = (cmp_workload){.name = name, .rows = xmalloc(n * sizeof(uint64_t)), .n = n};
    return w;
}

static void wl_free(cmp_workload *w)
{
    if (w)
        free(w->rows);
    free(w);
}

static cmp_workload *wl_uniform(uint64_t table_rows, size_t n, uint64_t seed)
{
    cmp_workload *w = wl_new("uniform", n);
    for (size_t i = 0; i < n; i++)
        w->rows[i] = rng_below(&seed, table_rows);
    return w;
}

/* Zipf(1.0) ranks 1..n by rejection-inversion (Hoermann and Derflinger,
 * 1996) with h(x) = 1/x and its integral H(x) = log x: exact, O(1) per draw
 * with no table, so it works for any n. */
typedef struct zipf {
    double n, h_lo, h_hi, squeeze;
} zipf;

static zipf zipf_init(uint64_t n)
{
    return (zipf){.n = (double)n, .h_lo = log(1.5) - 1.0, .h_hi = log((double)n + 0.5),
                  .squeeze = 2.0 - exp(log(2.5) - 0.5)};
}

static uint64_t zipf_draw(const zipf *z, uint64_t *rng)
{
    for (;;) {
        double y = z->h_hi + rng_unit(rng) * (z->h_lo - z->h_hi);
        double x = exp(y);
        double k = floor(x + 0.5);
        k = k < 1 ? 1 : k > z->n ? z->n : k;
        if (k - x <= z->squeeze || y >= log(k + 0.5) - 1.0 / k)
            return (uint64_t)k;
    }
}

/* Zipf ranks mapped through a fixed random permutation of the rows, so the
 * hot rows are scattered over the table rather than packed at its start. */
static cmp_workload *wl_zipf(uint64_t table_rows, size_t n, uint64_t seed)
{
    uint32_t *perm = xmalloc(table_rows * sizeof *perm);
    for (uint64_t i = 0; i < table_rows; i++)
        perm[i] = (uint32_t)i;
    for (uint64_t i = table_rows - 1; i > 0; i--) {
        uint64_t j = rng_below(&seed, i + 1);
        uint32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    zipf z = zipf_init(table_rows);
    cmp_workload *w = wl_new("zipf", n);
    for (size_t i = 0; i < n; i++)
        w->rows[i] = perm[zipf_draw(&z, &seed) - 1];
    free(perm);
    return w;
}

/* The demo manifest of tests/bench/demo_server.sh, identity compression. */
static eh_model *demo_model(void)
{
    static int64_t lut[DEMO_VOCAB];
    for (int i = 0; i < DEMO_VOCAB; i++)
        lut[i] = i;
    eh_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.max_ngram = 3;
    cfg.n_head_per_ngram = 8;
    cfg.vocab_sizes[0] = cfg.vocab_sizes[1] = 646400;
    cfg.n_layers = 2;
    cfg.layer_ids[0] = 1;
    cfg.layer_ids[1] = 15;
    cfg.pad_id = 2;
    cfg.lookup = lut;
    cfg.lookup_len = DEMO_VOCAB;
    char err[256];
    eh_model *m = eh_model_create(&cfg, err, sizeof err);
    if (!m)
        fprintf(stderr, "%s: demo model: %s\n", bench_prog, err);
    return m;
}

/* tokens.bin as one sequence hashed for layer 1: 16 row ids per token. */
static cmp_workload *wl_real(const char *path, const eh_model *m, size_t multiple)
{
    int64_t *tok;
    size_t ntok;
    if (load_tokens_file(path, &tok, &ntok))
        return NULL;
    size_t n = ntok * (size_t)m->heads;
    cmp_workload *w = wl_new("real", n);
    char err[256];
    if (eh_hash(m, 0, tok, 1, ntok, NULL, w->rows, err, sizeof err)) {
        fprintf(stderr, "%s: hashing %s: %s\n", bench_prog, path, err);
        wl_free(w);
        w = NULL;
    }
    free(tok);
    if (w)
        w->n -= w->n % multiple;   /* whole batches of every size */
    return w;
}

/* ---- options ------------------------------------------------------------------ */

static int usage(const char *why)
{
    if (why)
        fprintf(stderr, "%s: %s\n", bench_prog, why);
    fprintf(stderr,
"usage: engram-compare-bench --engram ADDR [--floor ADDR] [--redis HOST:PORT]\n"
"           [--rocksdb-dir DIR] [--tokens FILE] [--seconds S] [--warmup S]\n"
"           [--inflight K] [--batches 256,4096,65536] [--hot-table NAME] [--hot-rows N]\n"
"           [--hot-seed S] [--cold-table NAME] [--cold-seed S] [--cold-cache BYTES]\n"
"           [--stream-rows N] [--verify-calls N] [--cold-warmup S]\n"
"       engram-compare-bench --demo-rows | --has-redis\n");
    return 2;
}

static int parse_batches(const char *s, opts *o)
{
    o->nbatches = 0;
    for (const char *p = s; *p && o->nbatches < MAX_BATCHES;) {
        char *end;
        unsigned long long v = strtoull(p, &end, 10);
        if (end == p || v == 0 || v >= (1u << 24))
            return -1;
        o->batches[o->nbatches++] = (size_t)v;
        p = *end == ',' ? end + 1 : end;
        if (*end && *end != ',')
            return -1;
    }
    return o->nbatches ? 0 : -1;
}

static int parse_size(const char *arg, size_t *out)
{
    uint64_t v;
    if (parse_u64(arg, &v) || v == 0 || v > (1u << 30))
        return -1;
    *out = (size_t)v;
    return 0;
}

static int apply_opt(void *ctx, int c, const char *arg)
{
    opts *o = ctx;
    switch (c) {
    case 'D': case 'R': o->one_shot = c; return 1;   /* answered before anything runs */
    case 'e': o->engram = arg; return 0;
    case 'f': o->floor = arg; return 0;
    case 'r': o->redis = arg; return 0;
    case 'd': o->rocksdb_dir = arg; return 0;
    case 't': o->tokens = arg; return 0;
    case 'H': o->hot_table = arg; return 0;
    case 'C': o->cold_table = arg; return 0;
    case 'S': return parse_num(arg, &o->seconds);
    case 'w': return parse_num(arg, &o->warmup);
    case 'W': return parse_num(arg, &o->cold_warmup);
    case 'k': return parse_size(arg, &o->inflight);
    case 'v': return parse_size(arg, &o->verify_calls);
    case 'b': return parse_batches(arg, o);
    case 'n': return parse_u64(arg, &o->hot_rows);
    case 's': return parse_u64(arg, &o->hot_seed);
    case 'c': return parse_u64(arg, &o->cold_seed);
    case 'm': return parse_u64(arg, &o->cold_cache);
    case 'l': return parse_u64(arg, &o->stream_rows);
    }
    return -1;
}

static void defaults(opts *o)
{
    *o = (opts){.hot_table = "bench.hot", .cold_table = "demo.l1", .seconds = 3, .warmup = 1,
                .cold_warmup = -1,
                .inflight = 4, .verify_calls = 3, .nbatches = 3, .batches = {256, 4096, 65536},
                .hot_rows = 4u << 20, .hot_seed = 12345, .cold_seed = 1, .cold_cache = 160u << 20,
                .stream_rows = 16u << 20, .row_bytes = 128};
}

/* 0: run; 1: a one-shot query was answered (exit 0 / 1 in *rc); 2: usage. */
static int parse_args(int argc, char **argv, opts *o, int *rc)
{
    static const struct option lo[] = {
        {"engram", 1, 0, 'e'}, {"floor", 1, 0, 'f'}, {"redis", 1, 0, 'r'},
        {"rocksdb-dir", 1, 0, 'd'}, {"tokens", 1, 0, 't'}, {"seconds", 1, 0, 'S'},
        {"warmup", 1, 0, 'w'}, {"inflight", 1, 0, 'k'}, {"batches", 1, 0, 'b'},
        {"hot-table", 1, 0, 'H'}, {"hot-rows", 1, 0, 'n'}, {"hot-seed", 1, 0, 's'},
        {"cold-table", 1, 0, 'C'}, {"cold-seed", 1, 0, 'c'}, {"cold-cache", 1, 0, 'm'},
        {"stream-rows", 1, 0, 'l'}, {"verify-calls", 1, 0, 'v'}, {"demo-rows", 0, 0, 'D'},
        {"has-redis", 0, 0, 'R'}, {"cold-warmup", 1, 0, 'W'}, {"help", 0, 0, 'h'},
        {0, 0, 0, 0}};
    defaults(o);
    int r = bench_getopt(argc, argv, lo, apply_opt, o, usage);
    if (r == 1)
        *rc = o->one_shot;
    if (r)
        return r;
    if (!o->engram)
        return usage("--engram is required");
    if (o->seconds <= 0 || o->hot_rows == 0 || o->hot_rows > UINT32_MAX)
        return usage("--seconds and --hot-rows must be positive (rows < 2^32)");
    return 0;
}

/* ---- cells ---------------------------------------------------------------------- */

/* One table's half of the matrix: its workloads and systems. */
typedef struct side {
    const char *label;           /* "hot" or "cold" */
    const char *table;
    uint64_t rows, seed;
    cmp_workload *wl[3];
    size_t nwl;
    cmp_system sys[MAX_SYS];
    size_t nsys;
} side;

static void add_system(side *sd, int rc, const cmp_system *s, const char *err)
{
    if (rc) {
        fprintf(stderr, "%s: %s side: %s (its column is left out)\n", bench_prog, sd->label, err);
        return;
    }
    sd->sys[sd->nsys++] = *s;
}

static void close_side(side *sd)
{
    for (size_t i = 0; i < sd->nsys; i++)
        sd->sys[i].close(sd->sys[i].ctx);
    for (size_t i = 0; i < sd->nwl; i++)
        wl_free(sd->wl[i]);
    sd->nsys = sd->nwl = 0;
}

static void fill_cell(cell *c, cmp_run *r, int rc)
{
    c->ok = rc == 0 && r->rows > 0 && r->elapsed_s > 0;
    if (rc == 0 && !c->ok)
        snprintf(r->err, sizeof r->err, "no call completed in the timed window");
    snprintf(c->err, sizeof c->err, "%s", r->err);
    if (!c->ok)
        return;
    lat_sort(&r->lat);
    c->calls = r->lat.len;
    c->rows_s = (double)r->rows / r->elapsed_s;
    c->p50 = pct_ms(&r->lat, 50);
    c->p99 = pct_ms(&r->lat, 99);
    c->p999 = pct_ms(&r->lat, 99.9);
}

static void run_cell(const opts *o, const side *sd, const cmp_workload *wl, size_t batch,
                     const cmp_system *sys)
{
    if (ncells == MAX_CELLS)
        return;
    /* Verification of big batches is capped at VERIFY_ROWS (at least one
     * call): a cold 65536-row call can take seconds. */
    size_t vc = o->verify_calls;
    if (vc * batch > VERIFY_ROWS)
        vc = VERIFY_ROWS / batch ? VERIFY_ROWS / batch : 1;
    cmp_run r = {.wl = wl, .batch = batch, .inflight = o->inflight, .seconds = o->seconds,
                 .warmup = strcmp(sd->label, "cold") == 0 && o->cold_warmup >= 0 ? o->cold_warmup
                                                                                 : o->warmup,
                 .seed = sd->seed, .row_bytes = o->row_bytes,
                 .verify_calls = vc};
    int rc = sys->run(sys->ctx, &r);
    cell *c = &cells[ncells++];
    *c = (cell){.table = sd->label, .workload = wl->name, .system = sys->name, .batch = batch};
    fill_cell(c, &r, rc);
    if (c->ok)
        fprintf(stderr, "  %-4s %-7s %6zu %-7s %12.0f rows/s  p99 %.3f ms\n", c->table,
                c->workload, batch, c->system, c->rows_s, c->p99);
    else
        fprintf(stderr, "  %-4s %-7s %6zu %-7s FAILED: %s\n", c->table, c->workload, batch,
                c->system, c->err);
    free(r.lat.ns);
}

static void run_side(const opts *o, const side *sd)
{
    for (size_t w = 0; w < sd->nwl; w++)
        for (size_t b = 0; b < o->nbatches; b++)
            for (size_t s = 0; s < sd->nsys; s++)
                run_cell(o, sd, sd->wl[w], o->batches[b], &sd->sys[s]);
}

/* ---- the two tables ------------------------------------------------------------ */

/* The server's view of a table; 0, or -1 (reported). */
static int table_info(const char *addr, const char *table, engram_table_info *info)
{
    engram_client *c;
    engram_error e = {0};
    int rc = engram_client_open(addr, NULL, &c, &e);
    if (rc == 0) {
        rc = engram_table_get(c, table, info, &e);
        engram_client_close(c);
    }
    if (rc)
        fprintf(stderr, "%s: table %s at %s: %s: %s\n", bench_prog, table, addr,
                engram_status_name(rc), e.message);
    return rc ? -1 : 0;
}

static size_t largest_batch(const opts *o)
{
    size_t big = 0;
    for (size_t i = 0; i < o->nbatches; i++)
        big = o->batches[i] > big ? o->batches[i] : big;
    return big;
}

static size_t stream_len(const opts *o)
{
    size_t big = largest_batch(o);
    size_t n = o->stream_rows > big ? (size_t)o->stream_rows : big;
    return (n + big - 1) / big * big;
}

static void describe(const side *sd, const engram_table_info *in)
{
    printf("%s table: %s, %" PRIu64 " rows x %u B (%.0f MiB), seed %" PRIu64
           ", engram-server holds it %s\n", sd->label, in->name, in->rows, in->row_bytes,
           (double)in->rows * in->row_bytes / (1 << 20), sd->seed,
           in->resident ? "resident (dense array in RAM)" : "NOT resident (hot-row cache + RocksDB)");
    fflush(stdout);   /* before the progress lines on stderr */
}

static int hot_side(const opts *o, side *sd)
{
    engram_table_info in;
    *sd = (side){.label = "hot", .table = o->hot_table, .seed = o->hot_seed};
    if (table_info(o->engram, o->hot_table, &in))
        return -1;
    sd->rows = in.rows;
    describe(sd, &in);
    fprintf(stderr, "%s: hot side: generating workloads, filling arrays, loading Redis\n",
            bench_prog);
    size_t n = stream_len(o);
    sd->wl[sd->nwl++] = wl_uniform(sd->rows, n, 1);
    sd->wl[sd->nwl++] = wl_zipf(sd->rows, n, 2);
    char err[300];
    cmp_system s;
    add_system(sd, cmp_engram_open("engram", o->engram, o->hot_table, &s, err, sizeof err), &s, err);
    if (o->floor)
        add_system(sd, cmp_engram_open("floor", o->floor, o->hot_table, &s, err, sizeof err), &s, err);
#ifdef ENGRAM_HAVE_HIREDIS
    if (o->redis) {
        int rc = cmp_redis_open(o->redis, "r", &s, err, sizeof err);
        if (rc == 0 && (rc = cmp_redis_load(&s, sd->seed, sd->rows, o->row_bytes, err, sizeof err)))
            s.close(s.ctx);
        add_system(sd, rc, &s, err);
    }
#endif
    add_system(sd, cmp_memcpy_open(sd->seed, sd->rows, o->row_bytes, &s, err, sizeof err), &s, err);
    return 0;
}

static uint64_t max_row(const cmp_workload *w)
{
    uint64_t m = 0;
    for (size_t i = 0; i < w->n; i++)
        m = w->rows[i] > m ? w->rows[i] : m;
    return m;
}

static int cold_side(const opts *o, side *sd, const eh_model *m)
{
    engram_table_info in;
    *sd = (side){.label = "cold", .table = o->cold_table, .seed = o->cold_seed};
    if (table_info(o->engram, o->cold_table, &in))
        return -1;
    sd->rows = in.rows;
    describe(sd, &in);
    fprintf(stderr, "%s: cold side: generating workloads, building the RocksDB copy\n", bench_prog);
    size_t n = stream_len(o);
    sd->wl[sd->nwl++] = wl_uniform(sd->rows, n, 3);
    sd->wl[sd->nwl++] = wl_zipf(sd->rows, n, 4);
    if (o->tokens && m && (sd->wl[sd->nwl] = wl_real(o->tokens, m, largest_batch(o))))
        sd->nwl++;
    if (sd->nwl == 3 && max_row(sd->wl[2]) >= sd->rows) {
        fprintf(stderr, "%s: real workload reaches row %" PRIu64 " but %s has %" PRIu64
                " rows: not the demo model's layer-1 table; real left out\n", bench_prog,
                max_row(sd->wl[2]), sd->table, sd->rows);
        wl_free(sd->wl[--sd->nwl]);
    }
    char err[300];
    cmp_system s;
    add_system(sd, cmp_engram_open("engram", o->engram, o->cold_table, &s, err, sizeof err), &s, err);
    if (o->rocksdb_dir)
        add_system(sd, cmp_rocksdb_open(o->rocksdb_dir, sd->seed, sd->rows, o->row_bytes,
                                        o->cold_cache, &s, err, sizeof err), &s, err);
    add_system(sd, cmp_memcpy_open(sd->seed, sd->rows, o->row_bytes, &s, err, sizeof err), &s, err);
    return 0;
}

/* ---- the table and the targets --------------------------------------------------- */

static const cell *find(const char *table, const char *wl, size_t batch, const char *sys)
{
    for (size_t i = 0; i < ncells; i++) {
        const cell *c = &cells[i];
        if (c->ok && c->batch == batch && !strcmp(c->table, table) && !strcmp(c->workload, wl) &&
            !strcmp(c->system, sys))
            return c;
    }
    return NULL;
}

static void print_row(const cell *c, uint32_t row_bytes)
{
    printf("%-5s %-8s %6zu  %-8s", c->table, c->workload, c->batch, c->system);
    if (!c->ok) {
        printf("  FAILED: %s\n", c->err);
        return;
    }
    printf(" %12.0f %9.1f %7zu %8.3f %8.3f %8.3f", c->rows_s, c->rows_s * row_bytes / 1e6,
           c->calls, c->p50, c->p99, c->p999);
    const cell *e = find(c->table, c->workload, c->batch, "engram");
    if (e)
        printf(" %8.2fx", c->rows_s / e->rows_s);
    else
        printf(" %9s", "-");
    const cell *f = c->batch == 4096 ? find(c->table, c->workload, c->batch, "floor") : NULL;
    if (f)
        printf(" %8.2fx", c->p99 / f->p99);
    printf("\n");
}

static void print_table(const opts *o)
{
    printf("\n%-5s %-8s %6s  %-8s %12s %9s %7s %8s %8s %8s %9s %9s\n", "table", "workload",
           "batch", "system", "rows/s", "MB/s", "calls", "p50 ms", "p99 ms", "p999 ms", "/engram",
           "p99/floor");
    const char *prev = NULL;
    for (size_t i = 0; i < ncells; i++) {
        if (prev && strcmp(prev, cells[i].table))
            printf("\n");
        prev = cells[i].table;
        print_row(&cells[i], o->row_bytes);
    }
}

typedef struct tally {
    int pass, miss, missing;
} tally;

/* One target line: value = a / b of the named metric, compared with want. */
static void target(tally *t, const char *what, const cell *a, const cell *b, int p99, int at_most,
                   double want)
{
    printf("  %-46s ", what);
    if (!a || !b) {
        printf("n/a (a cell is missing or failed)\n");
        t->missing++;
        return;
    }
    double v = p99 ? a->p99 / b->p99 : a->rows_s / b->rows_s;
    int ok = at_most ? v <= want : v >= want;
    printf("%7.2fx  (%s %.1fx)  %s\n", v, at_most ? "<=" : ">=", want, ok ? "PASS" : "MISS");
    ok ? t->pass++ : t->miss++;
}

static void print_targets(const opts *o)
{
    tally t = {0};
    char what[128];
    printf("\ntargets (issue 6):\n");
    static const char *hot_wl[] = {"uniform", "zipf"};
    for (size_t w = 0; w < 2; w++)
        for (size_t b = 0; b < o->nbatches; b++) {
            size_t n = o->batches[b];
            const cell *e = find("hot", hot_wl[w], n, "engram");
            snprintf(what, sizeof what, "hot %s %zu: engram / redis rows/s", hot_wl[w], n);
            target(&t, what, e, find("hot", hot_wl[w], n, "redis"), 0, 0, 12.0);
            snprintf(what, sizeof what, "hot %s %zu: engram / floor rows/s", hot_wl[w], n);
            target(&t, what, e, find("hot", hot_wl[w], n, "floor"), 0, 0, 1.0);
            if (n != 4096)
                continue;
            snprintf(what, sizeof what, "hot %s %zu: engram p99 / floor p99", hot_wl[w], n);
            target(&t, what, e, find("hot", hot_wl[w], n, "floor"), 1, 1, 1.2);
        }
    static const struct { const char *wl; double want; } cold[] = {{"zipf", 0.8}, {"real", 3.0}};
    for (size_t w = 0; w < 2; w++)
        for (size_t b = 0; b < o->nbatches; b++) {
            size_t n = o->batches[b];
            snprintf(what, sizeof what, "cold %s %zu: engram / rocksdb rows/s", cold[w].wl, n);
            target(&t, what, find("cold", cold[w].wl, n, "engram"),
                   find("cold", cold[w].wl, n, "rocksdb"), 0, 0, cold[w].want);
        }
    printf("  %d PASS, %d MISS, %d not measured\n", t.pass, t.miss, t.missing);
}

static void print_header(const opts *o)
{
    printf("engram-compare-bench: %u-byte rows; %.1f s per cell after %.1f s warm-up (cold "
           "table: %.1f s) (a cell whose calls take longer records its first call); %u calls "
           "verified per cell before its clock (at most %d rows, at least 1 call)\n",
           o->row_bytes, o->seconds, o->warmup, o->cold_warmup >= 0 ? o->cold_warmup : o->warmup,
           (unsigned)o->verify_calls, VERIFY_ROWS);
    printf("in flight: engram and floor %zu async calls (libengram), redis %zu pipelined MGETs; "
           "rocksdb and memcpy synchronous, 1 thread\n", o->inflight, o->inflight);
    printf("workloads: uniform; zipf = Zipf(1.0) ranks through a fixed random permutation; real = "
           "tokens.bin hashed for layer 1 of the demo manifest (identity compression table), "
           "16 row ids per token, consecutive batches, no de-dup\n");
    printf("rocksdb = in-process rocksdb_batched_multi_get_cf, one per batch, sorted keys, the "
           "server's rows options, block cache %.0f MiB\n", (double)o->cold_cache / (1 << 20));
    printf("calls = timed calls the percentiles rest on; /engram = rows/s over engram's in the same "
           "row group; p99/floor = p99 over the floor server's (4096-row calls)\n");
}

/* ---- main -------------------------------------------------------------------------- */

static int one_shot(int what)
{
    if (what == 'R') {
#ifdef ENGRAM_HAVE_HIREDIS
        return 0;
#else
        return 1;
#endif
    }
    eh_model *m = demo_model();
    if (!m)
        return 2;
    printf("%" PRIu64 "\n", m->layers[0].total_rows);
    eh_model_free(m);
    return 0;
}

static int failed_cells(void)
{
    int n = 0;
    for (size_t i = 0; i < ncells; i++)
        n += !cells[i].ok;
    return n;
}

int main(int argc, char **argv)
{
    opts o;
    int what = 0;
    int prc = parse_args(argc, argv, &o, &what);
    if (prc == 1)
        return one_shot(what);
    if (prc)
        return 2;
    print_header(&o);
    side sd;
    int sides_failed = 0;
    if (hot_side(&o, &sd) == 0) {
        run_side(&o, &sd);
        close_side(&sd);
    } else {
        sides_failed++;
    }
    eh_model *m = o.tokens ? demo_model() : NULL;
    if (cold_side(&o, &sd, m) == 0) {
        run_side(&o, &sd);
        close_side(&sd);
    } else {
        sides_failed++;
    }
    if (m)
        eh_model_free(m);
    print_table(&o);
    print_targets(&o);
    int bad = failed_cells();
    if (bad)
        printf("\n%d cell(s) FAILED; see their reasons in the table\n", bad);
    return bad || sides_failed ? 1 : 0;
}
