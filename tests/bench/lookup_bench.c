/* lookup_bench.c: engram-bench, a Lookup throughput and latency benchmark.
 *
 *   engram-bench --server HOST:PORT --table NAME [--rows-per-call N (4096)]
 *                [--inflight K (8)] [--seconds S (10)] [--warmup S (1)]
 *                [--seed SEED --verify [--verify-calls N (256)]]
 *                [--baseline] [--rng-seed R] [--deadline-ms MS (10000)]
 *
 * How: reads the table's geometry with engram_table_get, then keeps K
 * asynchronous lookups (engram_lookup_start) in flight over one client for a
 * fixed time. Each call asks for N uniform random rows (splitmix64 stream,
 * mapped to [0, rows) by a 128-bit multiply). The waiter waits on the oldest
 * outstanding call (round robin over the K slots), so a call's latency is
 * from just before its start to the moment the waiter sees it complete; a
 * new call is started in its slot at once. Calls completing during the
 * warm-up are not counted. Throughput counts row bytes only (MB = 1e6 B).
 *
 * --verify runs a separate pass AFTER the timed run, with the same pipeline
 * and no clock: --verify-calls calls, every returned row compared with
 * synthetic_row(SEED, row). Verification never touches the timed figures.
 *
 * --baseline runs, in this process and for the same duration, a one-thread
 * memcpy gather of the same kind of random rows from a local dense array of
 * the same geometry (filled with synthetic_rows), and reports its rows/s and
 * the ratio server/baseline, so figures from a shared, noisy machine can be
 * compared as ratios.
 *
 * --deadline-ms: the client's deadline per call (engram_client_options);
 * K calls queued on a disk that reads a few thousand rows/s can take
 * longer than the library's default 10 s.
 *
 * Output: a human-readable block, then one line `bench: key=value ...`.
 * Exit status: 0 ok, 1 verification mismatch, 2 usage or RPC error. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engram/engram.h"
#include "synthetic.h"
#include "bench_util.h"

const char bench_prog[] = "engram-bench";

typedef struct bench_opts {
    const char *server;
    const char *table;
    size_t rows_per_call;
    size_t inflight;
    double seconds;
    double warmup;
    uint64_t seed;
    int have_seed;
    int verify;
    size_t verify_calls;
    int baseline;
    uint64_t rng_seed;
    int64_t deadline_ms;
} bench_opts;

/* One in-flight call: its rows, its output buffer, its handle. */
typedef struct slot {
    uint64_t *rows;
    uint8_t *out;
    engram_lookup *h;
    uint64_t t0;
} slot;

typedef struct pipeline {
    engram_client *client;
    const char *table;
    engram_table_info info;
    size_t n;           /* rows per call */
    size_t k;           /* calls in flight */
    slot *slots;
    uint64_t rng;
} pipeline;

typedef struct timed_result {
    uint64_t calls;
    double elapsed_s;
    lat_log lat;
} timed_result;

/* ---- small utilities ------------------------------------------------------ */

/* Uniform row in [0, rows): splitmix64 stream, multiply-shift reduction. */
static inline uint64_t rand_row(uint64_t *state, uint64_t rows)
{
    uint64_t x = splitmix64(*state += 1);
    return (uint64_t)(((unsigned __int128)x * rows) >> 64);
}

static void fill_rows(uint64_t *state, uint64_t *rows, size_t n, uint64_t table_rows)
{
    for (size_t i = 0; i < n; i++)
        rows[i] = rand_row(state, table_rows);
}

/* ---- options -------------------------------------------------------------- */

static int usage(const char *why)
{
    if (why)
        fprintf(stderr, "engram-bench: %s\n", why);
    fprintf(stderr,
"usage: engram-bench --server HOST:PORT --table NAME [--rows-per-call N]\n"
"                    [--inflight K] [--seconds S] [--warmup S]\n"
"                    [--seed SEED --verify [--verify-calls N]] [--baseline]\n"
"                    [--rng-seed R] [--deadline-ms MS]\n");
    return 2;
}

static int apply_opt(void *ctx, int c, const char *arg)
{
    bench_opts *o = ctx;
    uint64_t u = 0;
    switch (c) {
    case 's': o->server = arg; return 0;
    case 't': o->table = arg; return 0;
    case 'v': o->verify = 1; return 0;
    case 'b': o->baseline = 1; return 0;
    case 'S': return parse_num(arg, &o->seconds);
    case 'w': return parse_num(arg, &o->warmup);
    case 'e': o->have_seed = 1; return parse_u64(arg, &o->seed);
    case 'g': return parse_u64(arg, &o->rng_seed);
    case 'd':
        if (parse_u64(arg, &u) || u == 0 || u > INT64_MAX)
            return -1;
        o->deadline_ms = (int64_t)u;
        return 0;
    }
    if (parse_u64(arg, &u) || u == 0 || u > (1u << 24))
        return -1;
    if (c == 'n')
        o->rows_per_call = u;
    else if (c == 'k')
        o->inflight = u;
    else if (c == 'c')
        o->verify_calls = u;
    else
        return -1;
    return 0;
}

static int parse_args(int argc, char **argv, bench_opts *o)
{
    static const struct option lo[] = {
        {"server", 1, 0, 's'}, {"table", 1, 0, 't'},
        {"rows-per-call", 1, 0, 'n'}, {"inflight", 1, 0, 'k'},
        {"seconds", 1, 0, 'S'}, {"warmup", 1, 0, 'w'}, {"seed", 1, 0, 'e'},
        {"verify", 0, 0, 'v'}, {"verify-calls", 1, 0, 'c'},
        {"baseline", 0, 0, 'b'}, {"rng-seed", 1, 0, 'g'},
        {"deadline-ms", 1, 0, 'd'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    *o = (bench_opts){.rows_per_call = 4096, .inflight = 8, .seconds = 10,
                      .warmup = 1, .verify_calls = 256, .rng_seed = 1,
                      .deadline_ms = 10000};
    int rc = bench_getopt(argc, argv, lo, apply_opt, o, usage);
    if (rc)
        return rc;
    if (!o->server || !o->table)
        return usage("--server and --table are required");
    if (o->verify && !o->have_seed)
        return usage("--verify needs --seed");
    if (o->seconds <= 0)
        return usage("--seconds must be positive");
    return 0;
}

/* ---- the pipeline of in-flight calls ------------------------------------ */

static void pipeline_alloc(pipeline *p)
{
    p->slots = calloc(p->k, sizeof *p->slots);
    if (!p->slots)
        exit(2);
    for (size_t i = 0; i < p->k; i++) {
        p->slots[i].rows = xmalloc(p->n * sizeof(uint64_t));
        p->slots[i].out = xmalloc(p->n * p->info.row_bytes);
    }
}

static void pipeline_free(pipeline *p)
{
    for (size_t i = 0; i < p->k; i++) {
        engram_lookup_free(p->slots[i].h);
        free(p->slots[i].rows);
        free(p->slots[i].out);
    }
    free(p->slots);
}

/* Fills a slot with fresh random rows and starts its call. */
static int slot_start(pipeline *p, slot *s)
{
    engram_error err = {0};
    fill_rows(&p->rng, s->rows, p->n, p->info.rows);
    s->t0 = bench_now_ns();
    int rc = engram_lookup_start(p->client, p->table, s->rows, p->n, s->out,
                                 p->n * p->info.row_bytes, &s->h, &err);
    return rc ? rpc_fail("lookup start", rc, &err) : 0;
}

/* Waits for a slot's call; checks status and row size; frees the handle.
 * *lat_ns receives start-to-seen-complete time. */
static int slot_finish(pipeline *p, slot *s, uint64_t *lat_ns)
{
    engram_error err = {0};
    int rc = engram_lookup_wait(s->h, -1, &err);
    *lat_ns = bench_now_ns() - s->t0;
    uint32_t rb = 0;
    if (rc == ENGRAM_OK)
        engram_lookup_result(s->h, &rb, NULL);
    engram_lookup_free(s->h);
    s->h = NULL;
    if (rc)
        return rpc_fail("lookup", rc, &err);
    if (rb != p->info.row_bytes) {
        fprintf(stderr, "engram-bench: reply row_bytes %u, table says %u\n",
                rb, p->info.row_bytes);
        return 2;
    }
    return 0;
}

static int start_all(pipeline *p)
{
    for (size_t i = 0; i < p->k; i++)
        if (slot_start(p, &p->slots[i]))
            return 2;
    return 0;
}

/* Waits for every outstanding call (results discarded). */
static void drain(pipeline *p)
{
    uint64_t ns;
    for (size_t i = 0; i < p->k; i++)
        if (p->slots[i].h)
            slot_finish(p, &p->slots[i], &ns);
}

/* The timed run: warm-up, then `seconds` of K calls in flight. Calls that
 * complete after the deadline are drained and not counted. */
static int run_timed(pipeline *p, double warmup, double seconds, timed_result *r)
{
    memset(r, 0, sizeof *r);
    if (start_all(p))
        return 2;
    uint64_t t_start = bench_now_ns() + (uint64_t)(warmup * 1e9);
    uint64_t t_end = t_start + (uint64_t)(seconds * 1e9);
    uint64_t now = 0, ns;
    for (size_t i = 0;; i = (i + 1) % p->k) {
        if (slot_finish(p, &p->slots[i], &ns))
            return 2;
        now = bench_now_ns();
        if (now >= t_end)
            break;
        if (now >= t_start) {
            r->calls++;
            lat_push(&r->lat, ns);
        }
        if (slot_start(p, &p->slots[i]))
            return 2;
    }
    r->elapsed_s = (double)(now - t_start) / 1e9;
    drain(p);
    return 0;
}

/* ---- verification (untimed) --------------------------------------------- */

static uint64_t verify_slot(const pipeline *p, const slot *s, uint64_t seed)
{
    uint32_t rb = p->info.row_bytes;
    uint8_t *want = xmalloc(rb);
    uint64_t bad = 0;
    for (size_t i = 0; i < p->n; i++) {
        synthetic_row(seed, s->rows[i], want, rb);
        if (memcmp(want, s->out + i * rb, rb) != 0) {
            if (bad < 5)
                fprintf(stderr, "engram-bench: mismatch: row %" PRIu64
                        " (index %zu of its call)\n", s->rows[i], i);
            bad++;
        }
    }
    free(want);
    return bad;
}

/* `calls` calls through the same pipeline; every row of every reply is
 * compared with the synthetic rule. */
static int run_verify(pipeline *p, uint64_t seed, size_t calls,
                      uint64_t *rows_checked, uint64_t *mismatches)
{
    *rows_checked = *mismatches = 0;
    if (start_all(p))
        return 2;
    size_t started = p->k, i = 0;
    uint64_t ns;
    for (size_t done = 0; done < calls; done++, i = (i + 1) % p->k) {
        if (slot_finish(p, &p->slots[i], &ns))
            return 2;
        *mismatches += verify_slot(p, &p->slots[i], seed);
        *rows_checked += p->n;
        if (started < calls) {
            started++;
            if (slot_start(p, &p->slots[i]))
                return 2;
        }
    }
    drain(p);
    return 0;
}

/* ---- baseline: local memcpy gather ------------------------------------- */

static volatile uint8_t baseline_sink;

/* Rows gathered per second by one thread from a local dense copy of the
 * table's geometry, same rows per call, same PRNG; 0 when it cannot run. */
static double run_baseline(const pipeline *p, double seconds, uint64_t rng)
{
    uint64_t rows = p->info.rows, rb = p->info.row_bytes;
    if (rows > (8ull << 30) / rb) {
        fprintf(stderr, "engram-bench: table too big for a local baseline\n");
        return 0;
    }
    uint8_t *table = xmalloc(rows * rb);
    synthetic_rows(0, 0, rows, table, rb);
    uint64_t *idx = xmalloc(p->n * sizeof *idx);
    uint8_t *out = xmalloc(p->n * rb);
    uint64_t gathered = 0, t0 = bench_now_ns(), t_end = t0 + (uint64_t)(seconds * 1e9);
    uint64_t now;
    do {
        fill_rows(&rng, idx, p->n, rows);
        for (size_t i = 0; i < p->n; i++)
            memcpy(out + i * rb, table + idx[i] * rb, rb);
        baseline_sink ^= out[(gathered / p->n) % (p->n * rb)];
        gathered += p->n;
        now = bench_now_ns();
    } while (now < t_end);
    free(table);
    free(idx);
    free(out);
    return (double)gathered / ((double)(now - t0) / 1e9);
}

/* ---- report ---------------------------------------------------------------- */

typedef struct report {
    const bench_opts *o;
    const pipeline *p;
    timed_result *t;
    double base_rows_s;
    uint64_t verified, mismatches;
} report;

static void print_human(const report *r, double rows_s, double mb_s)
{
    const engram_table_info *in = &r->p->info;
    const lat_log *l = &r->t->lat;
    printf("engram-bench: server %s, table %s (%" PRIu64 " rows x %u B, "
           "version %" PRIu64 ", %s)\n", r->o->server, in->name, in->rows,
           in->row_bytes, in->version, in->resident ? "resident" : "not resident");
    printf("  rows/call %zu, in flight %zu, timed %.2f s after %.1f s warm-up\n",
           r->p->n, r->p->k, r->t->elapsed_s, r->o->warmup);
    printf("  calls      %" PRIu64 "\n", r->t->calls);
    printf("  rows/s     %.0f\n", rows_s);
    printf("  MB/s       %.1f (row bytes, 1 MB = 1e6 B)\n", mb_s);
    printf("  latency ms p50 %.3f  p99 %.3f  p999 %.3f  max %.3f\n",
           pct_ms(l, 50), pct_ms(l, 99), pct_ms(l, 99.9), pct_ms(l, 100));
    if (r->o->baseline)
        printf("  baseline   local memcpy gather, 1 thread: %.0f rows/s; "
               "server/baseline %.3f\n", r->base_rows_s,
               r->base_rows_s > 0 ? rows_s / r->base_rows_s : 0.0);
    if (r->o->verify)
        printf("  verify     %" PRIu64 " rows checked in an untimed pass after "
               "the timed run: %" PRIu64 " mismatches\n", r->verified,
               r->mismatches);
}

static void print_machine(const report *r, double rows_s, double mb_s)
{
    const lat_log *l = &r->t->lat;
    printf("bench: table=%s rows=%" PRIu64 " row_bytes=%u rows_per_call=%zu "
           "inflight=%zu seconds=%.2f calls=%" PRIu64 " rows_per_s=%.0f "
           "mb_per_s=%.1f p50_ms=%.3f p99_ms=%.3f p999_ms=%.3f max_ms=%.3f",
           r->p->info.name, r->p->info.rows, r->p->info.row_bytes, r->p->n,
           r->p->k, r->t->elapsed_s, r->t->calls, rows_s, mb_s, pct_ms(l, 50),
           pct_ms(l, 99), pct_ms(l, 99.9), pct_ms(l, 100));
    if (r->o->baseline)
        printf(" baseline_rows_per_s=%.0f ratio=%.4f", r->base_rows_s,
               r->base_rows_s > 0 ? rows_s / r->base_rows_s : 0.0);
    if (r->o->verify)
        printf(" verified_rows=%" PRIu64 " mismatches=%" PRIu64, r->verified,
               r->mismatches);
    printf("\n");
}

static void print_report(report *r)
{
    timed_result *t = r->t;
    lat_sort(&t->lat);
    double secs = t->elapsed_s > 0 ? t->elapsed_s : 1e-9;
    double rows_s = (double)t->calls * (double)r->p->n / secs;
    double mb_s = rows_s * r->p->info.row_bytes / 1e6;
    print_human(r, rows_s, mb_s);
    print_machine(r, rows_s, mb_s);
    fflush(stdout);
}

/* ---- main ------------------------------------------------------------------ */

static int open_pipeline(const bench_opts *o, pipeline *p)
{
    engram_error err = {0};
    memset(p, 0, sizeof *p);
    p->table = o->table;
    p->n = o->rows_per_call;
    p->k = o->inflight;
    p->rng = o->rng_seed;
    engram_client_options co;
    engram_client_options_init(&co);
    co.deadline_ms = o->deadline_ms;
    int rc = engram_client_open(o->server, &co, &p->client, &err);
    if (rc)
        return rpc_fail("connect", rc, &err);
    rc = engram_table_get(p->client, o->table, &p->info, &err);
    if (rc)
        return rpc_fail("table info", rc, &err);
    pipeline_alloc(p);
    return 0;
}

static int run_all(const bench_opts *o, pipeline *p, report *r)
{
    if (run_timed(p, o->warmup, o->seconds, r->t))
        return 2;
    if (o->verify &&
        run_verify(p, o->seed, o->verify_calls, &r->verified, &r->mismatches))
        return 2;
    if (o->baseline)
        r->base_rows_s = run_baseline(p, o->seconds, o->rng_seed);
    print_report(r);
    return r->mismatches ? 1 : 0;
}

int main(int argc, char **argv)
{
    bench_opts o;
    if (parse_args(argc, argv, &o))
        return 2;
    pipeline p;
    timed_result t = {0};
    report r = {.o = &o, .p = &p, .t = &t};
    int rc = open_pipeline(&o, &p);
    if (rc == 0)
        rc = run_all(&o, &p, &r);
    if (p.slots)
        pipeline_free(&p);
    if (p.client)
        engram_client_close(p.client);
    free(t.lat.ns);
    return rc;
}
