/* decode_loop_bench.c: engram-decode-loop-bench, what Engram prefetch costs
 * an inference worker's step loop, against one engram-server.
 *
 *   engram-decode-loop-bench --server HOST:PORT --model NAME --tokens FILE
 *       [--layers L (30)] [--tokens-per-s R (9000)]
 *       [--batch B (512)] [--chunk T (4096)]
 *       [--decode-layer-us U] [--prefill-layer-us U]
 *       [--steps N] [--prefill-steps N] [--warmup-steps W (3)]
 *       [--verify-seed S] [--wait-all-first] [--chunk-rows N]
 *       [--compute spin|sleep] [--dequant raw|bf16]
 *
 * The worker: a model of L layers, Engram at the manifest's layers (opened
 * with engram_model_open; every id must be < L). Each layer's compute is a
 * busy-wait on the monotonic clock for a fixed time. The default comes from
 * the Engram paper's setting, about R = 9000 tokens/s on a 4B model: a
 * decode step of B sequences takes B / R s for all L layers, so B / R / L per
 * layer (512 / 9000 / 30 = 1.896 ms); a prefill chunk of T tokens takes
 * T / R / L per layer (4096 / 9000 / 30 = 15.17 ms).
 *
 * Each step, with Engram: fill the batch (decode: B sequences at B evenly
 * spaced offsets of FILE, T = 1, history = the max_ngram - 1 tokens before
 * each, step s moving every offset on by s; prefill: B = 1, T tokens, chunk
 * s starting T * s further on), start ONE prefetch covering every Engram
 * layer with ENGRAM_PREFETCH_HASH_ASYNC, run the layers, and just before each
 * Engram layer call engram_prefetch_wait_layer for that layer (the time
 * these block, summed, is the "wait"; --wait-all-first instead waits for
 * every layer before the first Engram layer, as this benchmark did before
 * wait_layer existed); free the handle at step end. --chunk-rows sets the
 * client's prefetch_chunk_rows (rows per lookup call of a prefetch).
 * --compute sleep replaces the busy-wait by a sleep until the same
 * deadline: a worker whose compute runs on a GPU and leaves the host CPU
 * free; comparing it with spin shows what sharing the CPU costs.
 * --dequant bf16 (models of dtype mxfp8_e4m3 only, e.g. DeepSeek-V4.1)
 * adds ENGRAM_PREFETCH_DEQUANT_BF16: the worker receives BF16 [heads, dim]
 * (2 * dim bytes a row, 512 for V4.1 against 264 raw), dequantised by
 * libengram inside the wait, so the wait includes that cost; the default,
 * raw, receives the stored rows. The output lines name the form measured.
 * Without Engram: the same batch fill
 * and busy-waits, no prefetch. The two modes alternate step by step in the
 * same invocation (so machine noise hits both alike), W untimed steps of
 * each first, then N timed of each. tokens/s = B * T * N / the sum of that
 * mode's step times; overhead = 1 - with / without.
 *
 * --verify-seed S: after the timed steps, step 0 of each shape is prefetched
 * once more (HASH_ASYNC, in the form measured) and every row of every
 * Engram layer is compared byte for byte with
 * synthetic_row_typed(manifest_synthetic_seed(S, layer), row) at
 * engram_model_hash's rows (tables imported with engramctl
 * import-synthetic --manifest NAME --seed S); in BF16 form, with that row
 * passed through engram_dequant_bf16. Untimed.
 *
 * Output: per shape a human-readable block and one `bench: key=value` line.
 * Exit status: 0 ok, 1 verification mismatch, 2 usage or RPC error.
 * The setup, workload shapes and verification are prefetch_common.c's,
 * shared with engram-prefetch-bench. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engram/engram.h"
#include "bench_util.h"
#include "prefetch_common.h"

const char bench_prog[] = "engram-decode-loop-bench";

typedef struct bench_opts {
    const char *server, *model, *tokens;
    uint64_t layers, batch, chunk, steps, prefill_steps, warmup;
    double tok_per_s, decode_us, prefill_us;  /* 0: derived */
    int verify;
    uint64_t verify_seed;
    int wait_all_first;
    uint64_t chunk_rows;   /* 0: the client's default */
    int sleep_compute;
    int dequant;           /* --dequant bf16: ENGRAM_PREFETCH_DEQUANT_BF16 */
} bench_opts;

/* One request shape and the worker's compute for it. */
typedef struct shape {
    pf_shape w;
    uint64_t layer_ns;    /* compute per layer */
    uint64_t steps;       /* timed steps per mode */
} shape;

typedef struct bench {
    const bench_opts *o;
    pf_bench p;
    size_t first_engram;  /* the layer before which the worker waits */
    size_t out_rb;        /* bytes a row takes in out: row_bytes, or 2 * dim */
} bench;

typedef pf_loop mode_result;

/* ---- options -------------------------------------------------------------- */

static int usage(const char *why)
{
    if (why)
        fprintf(stderr, "engram-decode-loop-bench: %s\n", why);
    fprintf(stderr,
"usage: engram-decode-loop-bench --server HOST:PORT --model NAME --tokens FILE\n"
"           [--layers L] [--tokens-per-s R] [--batch B] [--chunk T]\n"
"           [--decode-layer-us U] [--prefill-layer-us U] [--steps N]\n"
"           [--prefill-steps N] [--warmup-steps W] [--verify-seed S]\n"
"           [--wait-all-first] [--chunk-rows N] [--compute spin|sleep]\n"
"           [--dequant raw|bf16]\n");
    return 2;
}

static int apply_opt(void *ctx, int c, const char *arg)
{
    bench_opts *o = ctx;
    switch (c) {
    case 's': o->server = arg; return 0;
    case 'm': o->model = arg; return 0;
    case 't': o->tokens = arg; return 0;
    case 'L': return parse_u64(arg, &o->layers);
    case 'r': return parse_num(arg, &o->tok_per_s);
    case 'b': return parse_u64(arg, &o->batch);
    case 'c': return parse_u64(arg, &o->chunk);
    case 'd': return parse_num(arg, &o->decode_us);
    case 'p': return parse_num(arg, &o->prefill_us);
    case 'n': return parse_u64(arg, &o->steps);
    case 'N': return parse_u64(arg, &o->prefill_steps);
    case 'w': return parse_u64(arg, &o->warmup);
    case 'v': o->verify = 1; return parse_u64(arg, &o->verify_seed);
    case 'A': o->wait_all_first = 1; return 0;
    case 'C': return parse_u64(arg, &o->chunk_rows);
    case 'P':
        o->sleep_compute = strcmp(arg, "sleep") == 0;
        return o->sleep_compute || strcmp(arg, "spin") == 0 ? 0 : -1;
    case 'D':
        o->dequant = strcmp(arg, "bf16") == 0;
        return o->dequant || strcmp(arg, "raw") == 0 ? 0 : -1;
    }
    return -1;
}

static int check_opts(const bench_opts *o)
{
    if (!o->server || !o->model || !o->tokens)
        return usage("--server, --model and --tokens are required");
    if (o->layers == 0 || o->layers > 1000 || o->batch == 0 || o->chunk == 0)
        return usage("--layers, --batch and --chunk must be positive");
    if (o->tok_per_s <= 0)
        return usage("--tokens-per-s must be positive");
    return 0;
}

static int parse_args(int argc, char **argv, bench_opts *o)
{
    static const struct option lo[] = {
        {"server", 1, 0, 's'}, {"model", 1, 0, 'm'}, {"tokens", 1, 0, 't'},
        {"layers", 1, 0, 'L'}, {"tokens-per-s", 1, 0, 'r'}, {"batch", 1, 0, 'b'},
        {"chunk", 1, 0, 'c'}, {"decode-layer-us", 1, 0, 'd'},
        {"prefill-layer-us", 1, 0, 'p'}, {"steps", 1, 0, 'n'},
        {"prefill-steps", 1, 0, 'N'}, {"warmup-steps", 1, 0, 'w'},
        {"verify-seed", 1, 0, 'v'}, {"wait-all-first", 0, 0, 'A'},
        {"chunk-rows", 1, 0, 'C'}, {"compute", 1, 0, 'P'}, {"dequant", 1, 0, 'D'},
        {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    *o = (bench_opts){.layers = 30, .batch = 512, .chunk = 4096, .warmup = 3,
                      .tok_per_s = 9000};
    int rc = bench_getopt(argc, argv, lo, apply_opt, o, usage);
    return rc ? rc : check_opts(o);
}

/* ---- setup ------------------------------------------------------------------ */

static int open_bench(bench *b)
{
    engram_client_options co;
    engram_client_options_init(&co);
    if (b->o->chunk_rows)
        co.prefetch_chunk_rows = b->o->chunk_rows > INT32_MAX ? INT32_MAX : (int32_t)b->o->chunk_rows;
    int rc = pf_open(&b->p, b->o->server, &co, b->o->model);
    if (rc)
        return rc;
    if (b->o->dequant && strcmp(b->p.info.dtype, "mxfp8_e4m3") != 0) {
        fprintf(stderr, "engram-decode-loop-bench: --dequant bf16 needs a model of "
                "dtype mxfp8_e4m3; %s holds %s\n", b->p.info.name, b->p.info.dtype);
        return 2;
    }
    b->out_rb = b->o->dequant ? (size_t)b->p.info.dim * 2 : b->p.info.row_bytes;
    b->first_engram = (size_t)-1;
    for (uint32_t l = 0; l < b->p.info.n_layers; l++) {
        int64_t id = b->p.info.layer_ids[l];
        if (id < 0 || (uint64_t)id >= b->o->layers) {
            fprintf(stderr, "engram-decode-loop-bench: Engram layer %" PRId64
                    " is outside the %" PRIu64 "-layer model\n", id, b->o->layers);
            return 2;
        }
        if ((size_t)id < b->first_engram)
            b->first_engram = (size_t)id;
    }
    return 0;
}

/* Per-layer compute: the option, else tokens per step / R / L. */
static shape make_shape(const bench *b, const char *name, size_t B, size_t T,
                        double layer_us, uint64_t steps)
{
    const bench_opts *o = b->o;
    shape s = {.w = pf_shape_make(&b->p, name, B, T)};
    double step_s = (double)(B * T) / o->tok_per_s;
    if (layer_us <= 0)
        layer_us = step_s / (double)o->layers * 1e6;
    s.layer_ns = (uint64_t)(layer_us * 1e3 + 0.5);
    /* default: ~10 s of steps per mode at the nominal step time */
    s.steps = steps ? steps : (uint64_t)(10.0 / ((double)s.layer_ns * 1e-9 *
                                                 (double)o->layers)) + 1;
    return s;
}

static size_t rows_per_step(const bench *b, const shape *s)
{
    return pf_rows_per_step(&b->p, &s->w);
}

static void stepbuf_init(const bench *b, const shape *s, pf_buf *sb)
{
    pf_buf_init(&b->p, &s->w, b->out_rb, sb);
    memset(sb->out, 0, sb->out_bytes);  /* every page real before timing */
}

static int prefetch_start(const bench *b, const shape *s, pf_buf *sb,
                          engram_prefetch **h)
{
    engram_error err = {0};
    engram_prefetch_request r = pf_request(
        &b->p, &s->w, sb, ENGRAM_PREFETCH_HASH_ASYNC |
                              (b->o->dequant ? ENGRAM_PREFETCH_DEQUANT_BF16 : 0));
    int rc = engram_prefetch_start(b->p.model, &r, h, &err);
    return rc ? rpc_fail("prefetch start", rc, &err) : 0;
}

static int prefetch_wait(engram_prefetch *h)
{
    engram_error err = {0};
    int rc = engram_prefetch_wait(h, -1, &err);
    return rc ? rpc_fail("prefetch wait", rc, &err) : 0;
}

static int is_engram_layer(const bench *b, size_t l)
{
    for (uint32_t i = 0; i < b->p.info.n_layers; i++)
        if ((size_t)b->p.info.layer_ids[i] == l)
            return 1;
    return 0;
}

/* Before layer l: the wait a worker does there (none when l is not an
 * Engram layer). */
static int wait_before(const bench *b, engram_prefetch *h, size_t l)
{
    if (b->o->wait_all_first)
        return l == b->first_engram ? prefetch_wait(h) : 0;
    if (!is_engram_layer(b, l))
        return 0;
    engram_error err = {0};
    int rc = engram_prefetch_wait_layer(h, (int64_t)l, -1, &err);
    return rc ? rpc_fail("prefetch wait_layer", rc, &err) : 0;
}

/* ---- the step loop ---------------------------------------------------------- */

static volatile uint64_t spin_sink;

/* A layer's compute: spins until `ns` of wall time have passed (or, with
 * --compute sleep, sleeps until then). */
static void busy_wait(uint64_t ns, int sleep_instead)
{
    if (sleep_instead) {
        bench_sleep_until(bench_now_ns() + ns);
        return;
    }
    uint64_t end = bench_now_ns() + ns, n = 0;
    while (bench_now_ns() < end)
        n++;
    spin_sink += n;
}

/* One step; with_engram starts a prefetch first and waits for each Engram
 * layer's rows just before it. Records into r when r is non-NULL. */
static int one_step(const bench *b, const shape *s, pf_buf *sb, uint64_t step,
                    int with_engram, mode_result *r)
{
    engram_prefetch *h = NULL;
    uint64_t t0 = bench_now_ns(), t_start = 0, t_wait = 0, t1;
    pf_fill_batch(&b->p, &s->w, step, sb);
    if (with_engram && prefetch_start(b, s, sb, &h))
        return 2;
    t_start = bench_now_ns() - t0;
    for (size_t l = 0; l < b->o->layers; l++) {
        if (with_engram) {
            t1 = bench_now_ns();
            int rc = wait_before(b, h, l);
            t_wait += bench_now_ns() - t1;
            if (rc) {
                engram_prefetch_free(h);
                return 2;
            }
        }
        busy_wait(s->layer_ns, b->o->sleep_compute);
    }
    if (with_engram && prefetch_wait(h)) {   /* every layer is in: returns at once */
        engram_prefetch_free(h);
        return 2;
    }
    engram_prefetch_free(h);
    if (r) {
        uint64_t ns = bench_now_ns() - t0;
        r->steps++;
        r->total_ns += ns;
        lat_push(&r->step, ns);
        lat_push(&r->wait, t_wait);
        lat_push(&r->start, t_start);
    }
    return 0;
}

/* W untimed steps of each mode, then N of each, alternating (with Engram
 * first); both modes walk the same batches. */
static int run_shape(const bench *b, const shape *s, mode_result *on, mode_result *off)
{
    pf_buf sb;
    stepbuf_init(b, s, &sb);
    int rc = 0;
    uint64_t total = b->o->warmup + s->steps;
    for (uint64_t i = 0; i < total && rc == 0; i++) {
        int timed = i >= b->o->warmup;
        rc = one_step(b, s, &sb, i, 1, timed ? on : NULL);
        if (rc == 0)
            rc = one_step(b, s, &sb, i, 0, timed ? off : NULL);
    }
    pf_buf_free(&sb);
    return rc;
}

/* ---- report ------------------------------------------------------------------ */

static const char *form_name(const bench *b)
{
    return b->o->dequant ? "bf16" : "raw";
}

static const char *compute_name(const bench *b)
{
    return b->o->sleep_compute ? "sleep" : "busy-wait";
}

static void print_human(const bench *b, const shape *s, const mode_result *on,
                        const mode_result *off)
{
    double nominal_ms = (double)s->layer_ns * (double)b->o->layers / 1e6;
    char layers[256];
    printf("%s: B %zu x T %zu, %" PRIu64 " layers x %.3f ms %s (nominal "
           "%.2f ms/step), Engram at layers %s (%s), %zu rows/prefetch, "
           "%.2f MiB as %s\n",
           s->w.name, s->w.B, s->w.T, b->o->layers, (double)s->layer_ns / 1e6,
           compute_name(b), nominal_ms,
           pf_layer_list(&b->p, layers, sizeof layers),
           b->o->wait_all_first ? "all waited for before the first" : "each waited for just before it",
           rows_per_step(b, s), (double)(rows_per_step(b, s) * b->out_rb) / (1 << 20),
           form_name(b));
    pf_loop_print(&s->w, on, off, b->o->warmup, "");
    printf("  start ms        p50 %.3f  p99 %.3f  max %.3f (batch fill + "
           "engram_prefetch_start, HASH_ASYNC)\n", pct_ms(&on->start, 50),
           pct_ms(&on->start, 99), pct_ms(&on->start, 100));
}

static void print_machine(const bench *b, const shape *s, const mode_result *on,
                          const mode_result *off)
{
    double t_on = pf_loop_tokens_per_s(&s->w, on), t_off = pf_loop_tokens_per_s(&s->w, off);
    printf("bench: scenario=%s model=%s form=%s dtype=%s heads=%u row_bytes=%u "
           "out_row_bytes=%zu rows_per_step=%zu out_bytes_per_step=%zu batch=%zu "
           "seq=%zu layers=%" PRIu64
           " engram_layers=%u layer_ms=%.4f steps=%" PRIu64 " tokens_per_s_off=%.1f "
           "tokens_per_s_on=%.1f overhead_pct=%.3f step_p50_ms_off=%.3f "
           "step_p50_ms_on=%.3f wait_p50_ms=%.4f wait_p90_ms=%.4f wait_p99_ms=%.4f "
           "wait_max_ms=%.4f wait_mean_ms=%.4f blocked_steps=%" PRIu64
           " start_p50_ms=%.4f start_max_ms=%.4f\n",
           s->w.name, b->p.info.name, form_name(b), b->p.info.dtype, b->p.info.heads,
           b->p.info.row_bytes, b->out_rb, rows_per_step(b, s),
           rows_per_step(b, s) * b->out_rb, s->w.B, s->w.T, b->o->layers, b->p.info.n_layers,
           (double)s->layer_ns / 1e6, on->steps, t_off, t_on,
           t_off > 0 ? (1 - t_on / t_off) * 100 : 0, pct_ms(&off->step, 50),
           pct_ms(&on->step, 50), pct_ms(&on->wait, 50), pct_ms(&on->wait, 90),
           pct_ms(&on->wait, 99), pct_ms(&on->wait, 100), lat_mean_ms(&on->wait),
           pf_loop_blocked_steps(on), pct_ms(&on->start, 50), pct_ms(&on->start, 100));
}

static int bench_shape(const bench *b, const shape *s)
{
    mode_result on = {0}, off = {0};
    int rc = run_shape(b, s, &on, &off);
    if (rc == 0) {
        pf_loop_sort(&on);
        pf_loop_sort(&off);
        print_human(b, s, &on, &off);
        print_machine(b, s, &on, &off);
        printf("\n");
        fflush(stdout);
    }
    pf_loop_free(&on);
    pf_loop_free(&off);
    return rc;
}

/* ---- verification (untimed) -------------------------------------------------- */

/* Prefetches step 0 of s and checks every row; -1 on an error. */
static long verify_shape(const bench *b, const shape *s, uint64_t *checked)
{
    pf_buf sb;
    engram_prefetch *h = NULL;
    long bad = -1;
    stepbuf_init(b, s, &sb);
    pf_fill_batch(&b->p, &s->w, 0, &sb);
    if (prefetch_start(b, s, &sb, &h) == 0 && prefetch_wait(h) == 0)
        bad = pf_verify(&b->p, &s->w, &sb, b->o->verify_seed, b->o->dequant, checked);
    engram_prefetch_free(h);
    pf_buf_free(&sb);
    return bad;
}

static int run_verify(const bench *b, const shape *shapes, size_t n)
{
    uint64_t checked = 0;
    long bad = 0;
    for (size_t i = 0; i < n && bad >= 0; i++) {
        long m = verify_shape(b, &shapes[i], &checked);
        bad = m < 0 ? -1 : bad + m;
    }
    if (bad < 0)
        return 2;
    printf("verify: step 0 of each shape (HASH_ASYNC), after the timed steps: %" PRIu64
           " rows checked byte for byte against seed %" PRIu64 "%s: %ld mismatches\n",
           checked, b->o->verify_seed,
           b->o->dequant ? " (as BF16, via engram_dequant_bf16)" : "", bad);
    printf("bench: scenario=verify form=%s seed=%" PRIu64 " verified_rows=%" PRIu64
           " mismatches=%ld\n", form_name(b), b->o->verify_seed, checked, bad);
    return bad ? 1 : 0;
}

/* ---- main --------------------------------------------------------------------- */

static int run_all(bench *b)
{
    const bench_opts *o = b->o;
    shape shapes[2] = {
        make_shape(b, "decode", o->batch, 1, o->decode_us, o->steps),
        make_shape(b, "prefill", 1, o->chunk, o->prefill_us, o->prefill_steps)};
    if (pf_check_workload(&b->p, &shapes[0].w, o->tokens) ||
        pf_check_workload(&b->p, &shapes[1].w, o->tokens))
        return 2;
    printf("engram-decode-loop-bench: server %s, model %s (manifest version %" PRIu64
           "), %u heads x %u-byte rows of %s, delivered %s (%zu bytes a row); "
           "tokens %s: %zu; compute model %.0f tokens/s over %" PRIu64 " layers (%s)\n\n",
           o->server, b->p.info.name, b->p.info.manifest_version, b->p.info.heads,
           b->p.info.row_bytes, b->p.info.dtype,
           o->dequant ? "as BF16 (--dequant bf16)" : "raw", b->out_rb, o->tokens,
           b->p.ntok, o->tok_per_s, o->layers, compute_name(b));
    fflush(stdout);
    int rc = 0;
    for (size_t i = 0; i < 2 && rc == 0; i++)
        rc = bench_shape(b, &shapes[i]);
    if (rc == 0 && o->verify)
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
    pf_close(&b.p);
    return rc;
}
