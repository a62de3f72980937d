/* cluster_bench.c: engram-cluster-bench, what a sharded, replicated
 * deployment costs and buys through libengram's cluster client.
 *
 *   engram-cluster-bench throughput --model NAME --tokens FILE
 *       --target LABEL=HOST:PORT [--target ...] [--seconds S (3)]
 *       [--rounds N (2)] [--warmup S (1)] [--inflight K (2)] [--verify-seed S]
 *   engram-cluster-bench hedge --server HOST:PORT --table NAME --seed S
 *       [--stall-pid PID] [--stall-ms 50] [--stall-every-ms 1000]
 *       [--hedge-percentile 95] [--hedge-min-ms 2] [--threads 2]
 *       [--rows-per-call 512] [--seconds S (6)] [--warmup S (1)]
 *
 * throughput: for each target (one server or the first address of a
 * cluster; the client finds the map itself) it keeps K prefill prefetches
 * in flight (B = 1, T = 4096 consecutive tokens of FILE, int32 LE, history
 * = the tokens before, every layer of model NAME in one call, hashing on
 * the caller's thread) for --seconds after --warmup, and reports rows/s
 * (requested rows, duplicates included), tokens/s, latency and sub-requests
 * per prefetch. The targets run one after another, --rounds times in turn
 * (A B C A B C) so slow drift of a shared machine hits all of them, and
 * every target's throughput is printed over the first target's.
 * --verify-seed S then, untimed, prefetches two chunks on every target and
 * compares every byte with synthetic_row(manifest_synthetic_seed(S,
 * layer), row) at engram_model_hash's rows.
 *
 * hedge: --threads client threads issue engram_lookup_sync of
 * --rows-per-call uniform random rows of TABLE (imported with
 * import-synthetic --seed S) back to back, through one client, for
 * --seconds after --warmup. Seven scenarios, each with a fresh client:
 * baseline with hedging off and on, then with a thread of this tool sending
 * SIGSTOP to --stall-pid (one replica) for --stall-ms every
 * --stall-every-ms (then SIGCONT), with hedging off, on without ejection
 * for lost hedges (eject_after_hedge_losses 0) and on; then that replica
 * stopped for the whole timed window (after the warm-up), hedging on
 * without and with that ejection (hedge_percentile 0 / --hedge-percentile,
 * hedge_min_ms --hedge-min-ms, other options at their defaults). Latency is sync call to return; a call
 * counts when it started after the warm-up and returned before the end.
 * Client counters (hedges, hedge_wins, retries, ejections, slow ones) are the
 * difference over the timed window; the count of calls over 10 ms is
 * printed too. The load is a closed loop: a thread stuck on the stopped
 * replica sends nothing else meanwhile, so a stall delays about one call
 * per thread (the tail and that count show it more than p99 does). The
 * staller starts with the scenario (warm-up included), first stall after
 * half a period. Every 8th reply is compared byte for byte with
 * synthetic_row(S, row) after its latency was taken.
 *
 * Output: a human-readable block and one `bench: key=value` line per run.
 * Exit status: 0 ok, 1 a byte mismatch, 2 usage, RPC error or failed
 * lookups. */
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>

#include "engram/engram.h"
#include "manifest.h"
#include "synthetic.h"
#include "bench_util.h"

const char bench_prog[] = "engram-cluster-bench";

#define MAX_TARGETS 8
#define MAX_THREADS 16
#define MAX_INFLIGHT 16
#define PREFILL_T 4096
#define VERIFY_EVERY 8

typedef struct opts {
    int hedge_mode;
    double seconds, warmup;
    uint64_t seed;
    int verify;
    /* throughput */
    const char *model, *tokens;
    char *label[MAX_TARGETS];
    const char *addr[MAX_TARGETS];
    size_t ntargets, inflight, rounds;
    /* hedge */
    const char *server, *table;
    pid_t stall_pid;
    int64_t stall_ms, stall_every_ms, hedge_min_ms;
    int hedge_pct;
    size_t threads, rows_per_call;
} opts;

/* ---- small utilities ---------------------------------------------------------- */

/* Entries of a sorted log above ms milliseconds. */
static size_t over_ms(const lat_log *l, double ms)
{
    size_t n = 0;
    for (size_t i = l->len; i > 0 && (double)l->ns[i - 1] / 1e6 > ms; i--)
        n++;
    return n;
}

/* ---- options ------------------------------------------------------------------ */

static int usage(const char *why)
{
    if (why)
        fprintf(stderr, "engram-cluster-bench: %s\n", why);
    fprintf(stderr,
"usage: engram-cluster-bench throughput --model NAME --tokens FILE\n"
"           --target LABEL=HOST:PORT [--target ...] [--seconds S] [--rounds N]\n"
"           [--warmup S] [--inflight K] [--verify-seed S]\n"
"       engram-cluster-bench hedge --server HOST:PORT --table NAME --seed S\n"
"           [--stall-pid PID] [--stall-ms MS] [--stall-every-ms MS]\n"
"           [--hedge-percentile P] [--hedge-min-ms MS] [--threads N]\n"
"           [--rows-per-call N] [--seconds S] [--warmup S]\n");
    return 2;
}

/* Parses an integer option into *out when it is in [lo, hi]. */
static int parse_range(const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
    return parse_u64(s, out) || *out < lo || *out > hi ? -1 : 0;
}

/* LABEL=HOST:PORT, split at the last '='. */
static int add_target(opts *o, const char *arg)
{
    const char *eq = strrchr(arg, '=');
    if (!eq || eq == arg || !eq[1] || o->ntargets == MAX_TARGETS)
        return -1;
    o->label[o->ntargets] = strndup(arg, (size_t)(eq - arg));
    o->addr[o->ntargets++] = eq + 1;
    return 0;
}

static int apply_int_opt(opts *o, int c, const char *arg)
{
    uint64_t u = 0;
    int rc = 0;
    switch (c) {
    case 'k': rc = parse_range(arg, 1, MAX_INFLIGHT, &u); o->inflight = u; break;
    case 'n': rc = parse_range(arg, 1, 100, &u); o->rounds = u; break;
    case 'p': rc = parse_range(arg, 1, 1u << 30, &u); o->stall_pid = (pid_t)u; break;
    case 'L': rc = parse_range(arg, 1, 10000, &u); o->stall_ms = (int64_t)u; break;
    case 'E': rc = parse_range(arg, 1, 60000, &u); o->stall_every_ms = (int64_t)u; break;
    case 'P': rc = parse_range(arg, 1, 99, &u); o->hedge_pct = (int)u; break;
    case 'M': rc = parse_range(arg, 0, 60000, &u); o->hedge_min_ms = (int64_t)u; break;
    case 'j': rc = parse_range(arg, 1, MAX_THREADS, &u); o->threads = u; break;
    case 'r': rc = parse_range(arg, 1, 262144, &u); o->rows_per_call = u; break;
    default: return -1;
    }
    return rc;
}

static int apply_opt(void *ctx, int c, const char *arg)
{
    opts *o = ctx;
    switch (c) {
    case 'm': o->model = arg; return 0;
    case 't': o->tokens = arg; return 0;
    case 'T': return add_target(o, arg);
    case 's': o->server = arg; return 0;
    case 'b': o->table = arg; return 0;
    case 'S': return parse_num(arg, &o->seconds);
    case 'w': return parse_num(arg, &o->warmup);
    case 'v': o->verify = 1; return parse_u64(arg, &o->seed);
    }
    return apply_int_opt(o, c, arg);
}

static int check_opts(const opts *o)
{
    if (o->seconds <= 0)
        return usage("--seconds must be positive");
    if (o->hedge_mode && (!o->server || !o->table || !o->verify))
        return usage("hedge needs --server, --table and --seed");
    if (o->hedge_mode && o->stall_ms >= o->stall_every_ms)
        return usage("--stall-ms must be less than --stall-every-ms");
    if (!o->hedge_mode && (!o->model || !o->tokens || o->ntargets == 0))
        return usage("throughput needs --model, --tokens and at least one --target");
    return 0;
}

static int parse_args(int argc, char **argv, opts *o)
{
    static const struct option lo[] = {
        {"model", 1, 0, 'm'}, {"tokens", 1, 0, 't'}, {"target", 1, 0, 'T'},
        {"seconds", 1, 0, 'S'}, {"rounds", 1, 0, 'n'}, {"warmup", 1, 0, 'w'},
        {"inflight", 1, 0, 'k'}, {"verify-seed", 1, 0, 'v'}, {"seed", 1, 0, 'v'},
        {"server", 1, 0, 's'}, {"table", 1, 0, 'b'}, {"stall-pid", 1, 0, 'p'},
        {"stall-ms", 1, 0, 'L'}, {"stall-every-ms", 1, 0, 'E'},
        {"hedge-percentile", 1, 0, 'P'}, {"hedge-min-ms", 1, 0, 'M'},
        {"threads", 1, 0, 'j'}, {"rows-per-call", 1, 0, 'r'}, {"help", 0, 0, 'h'},
        {0, 0, 0, 0}};
    if (argc < 2 || (strcmp(argv[1], "throughput") && strcmp(argv[1], "hedge")))
        return usage("the first argument is the mode: throughput or hedge");
    *o = (opts){.hedge_mode = !strcmp(argv[1], "hedge"), .warmup = 1, .inflight = 2,
                .rounds = 2, .stall_ms = 50, .stall_every_ms = 1000, .hedge_pct = 95,
                .hedge_min_ms = 2, .threads = 2, .rows_per_call = 512};
    o->seconds = o->hedge_mode ? 6 : 3;
    optind = 2;   /* after the mode */
    int rc = bench_getopt(argc, argv, lo, apply_opt, o, usage);
    return rc ? rc : check_opts(o);
}

/* =============================== throughput ================================= */

typedef struct target {
    const char *label, *addr;
    engram_client *client;
    engram_model *model;
    engram_model_info info;
    uint64_t steps, subrequests;
    double elapsed_s;
    lat_log lat;
} target;

typedef struct tp_bench {
    const opts *o;
    int64_t *tok;
    size_t ntok, hist, nsteps;
    uint64_t next_step;   /* chunks move on across runs and rounds */
    target t[MAX_TARGETS];
} tp_bench;

/* One prefetch in flight. */
typedef struct slot {
    int64_t tokens[PREFILL_T];
    int64_t history[8];
    uint8_t *out;
    size_t out_bytes;
    engram_prefetch *h;
    uint64_t t0;
} slot;

static int open_target(tp_bench *b, target *t)
{
    engram_error err = {0};
    int rc = engram_client_open(t->addr, NULL, &t->client, &err);
    if (rc)
        return rpc_fail(t->addr, rc, &err);
    rc = engram_model_open(t->client, b->o->model, &t->model, &err);
    if (rc)
        return rpc_fail("model open", rc, &err);
    engram_model_get_info(t->model, &t->info);
    if (t->info.max_ngram - 1 > 8) {
        fprintf(stderr, "engram-cluster-bench: max_ngram %u is too large\n", t->info.max_ngram);
        return 2;
    }
    b->hist = t->info.max_ngram - 1;
    return 0;
}

static size_t rows_per_step(const target *t)
{
    return (size_t)PREFILL_T * t->info.heads * t->info.n_layers;
}

/* Chunk `step`: PREFILL_T tokens from hist + (step mod nsteps) * T. */
static void fill_chunk(const tp_bench *b, uint64_t step, slot *sl)
{
    size_t start = b->hist + (size_t)(step % b->nsteps) * PREFILL_T;
    memcpy(sl->tokens, b->tok + start, sizeof sl->tokens);
    memcpy(sl->history, b->tok + start - b->hist, b->hist * sizeof *sl->history);
}

static int slot_start(const tp_bench *b, const target *t, slot *sl, uint64_t step)
{
    engram_error err = {0};
    fill_chunk(b, step, sl);
    engram_prefetch_request r = {
        .layer_ids = t->info.layer_ids, .n_layers = t->info.n_layers,
        .tokens = sl->tokens, .batch = 1, .seq_len = PREFILL_T,
        .history = sl->history, .out = sl->out, .out_cap = sl->out_bytes};
    sl->t0 = bench_now_ns();
    int rc = engram_prefetch_start(t->model, &r, &sl->h, &err);
    return rc ? rpc_fail("prefetch start", rc, &err) : 0;
}

/* Waits for a slot's prefetch and frees its handle. */
static int slot_finish(slot *sl, uint64_t *lat_ns)
{
    engram_error err = {0};
    int rc = engram_prefetch_wait(sl->h, -1, &err);
    *lat_ns = bench_now_ns() - sl->t0;
    engram_prefetch_free(sl->h);
    sl->h = NULL;
    return rc ? rpc_fail("prefetch", rc, &err) : 0;
}

static slot *slots_new(const target *t, size_t k)
{
    slot *v = calloc(k, sizeof *v);
    if (!v)
        exit(2);
    for (size_t i = 0; i < k; i++) {
        v[i].out_bytes = rows_per_step(t) * t->info.row_bytes;
        v[i].out = xmalloc(v[i].out_bytes);
    }
    return v;
}

static void slots_free(slot *v, size_t k)
{
    uint64_t ns;
    for (size_t i = 0; i < k; i++) {
        if (v[i].h)
            slot_finish(&v[i], &ns);
        free(v[i].out);
    }
    free(v);
}

static uint64_t subrequests(engram_client *c)
{
    engram_client_counters ct;
    engram_client_get_counters(c, &ct);
    return ct.subrequests;
}

/* One run on target t: warm-up, then --seconds of K prefetches in flight
 * (round-robin wait on the oldest); adds to t's totals. */
static int run_target(tp_bench *b, target *t)
{
    size_t k = b->o->inflight;
    slot *v = slots_new(t, k);
    uint64_t ns, now = 0, sub0 = 0;
    int rc = 0, counting = 0;
    for (size_t i = 0; i < k && !rc; i++)
        rc = slot_start(b, t, &v[i], b->next_step++);
    uint64_t t_start = bench_now_ns() + (uint64_t)(b->o->warmup * 1e9);
    uint64_t t_end = t_start + (uint64_t)(b->o->seconds * 1e9);
    for (size_t i = 0; !rc; i = (i + 1) % k) {
        if ((rc = slot_finish(&v[i], &ns)) || (now = bench_now_ns()) >= t_end)
            break;
        if (now >= t_start && !counting++)
            sub0 = subrequests(t->client);
        if (counting) {
            t->steps++;
            lat_push(&t->lat, ns);
        }
        rc = slot_start(b, t, &v[i], b->next_step++);
    }
    t->elapsed_s += (double)(now - t_start) / 1e9;
    t->subrequests += subrequests(t->client) - sub0;
    slots_free(v, k);
    return rc;
}

static double rows_s(const target *t)
{
    return (double)t->steps * (double)rows_per_step(t) / t->elapsed_s;
}

static void print_target(const tp_bench *b, target *t, double ref_rows_s)
{
    lat_sort(&t->lat);
    double steps_s = (double)t->steps / t->elapsed_s;
    double sub = t->steps ? (double)t->subrequests / (double)t->steps : 0;
    printf("%s (%s): %" PRIu64 " prefetches in %.2f s, %.1f/s\n", t->label, t->addr,
           t->steps, t->elapsed_s, steps_s);
    printf("  rows/s %.0f  tokens/s %.0f  vs first target %.3f\n", rows_s(t),
           steps_s * PREFILL_T, rows_s(t) / ref_rows_s);
    printf("  latency ms p50 %.3f  p99 %.3f  max %.3f; %.1f sub-requests per prefetch\n",
           pct_ms(&t->lat, 50), pct_ms(&t->lat, 99), pct_ms(&t->lat, 100), sub);
    printf("bench: scenario=throughput target=%s batch=1 seq=%d layers=%u heads=%u "
           "inflight=%zu seconds=%.2f prefetches=%" PRIu64 " rows_per_s=%.0f "
           "tokens_per_s=%.0f ratio_to_first=%.4f p50_ms=%.3f p99_ms=%.3f max_ms=%.3f "
           "subrequests_per_prefetch=%.2f\n", t->label, PREFILL_T, t->info.n_layers,
           t->info.heads, b->o->inflight, t->elapsed_s, t->steps, rows_s(t),
           steps_s * PREFILL_T, rows_s(t) / ref_rows_s, pct_ms(&t->lat, 50),
           pct_ms(&t->lat, 99), pct_ms(&t->lat, 100), sub);
}

/* Compares one layer's block of a prefetch output with the synthetic rule;
 * returns mismatching rows, or -1 on a hashing error. */
static long verify_layer(const tp_bench *b, const target *t, const slot *sl,
                         uint32_t l, uint64_t *rows)
{
    size_t per = (size_t)PREFILL_T * t->info.heads, rb = t->info.row_bytes;
    uint8_t want[1024];
    engram_error err = {0};
    int rc = engram_model_hash(t->model, t->info.layer_ids[l], sl->tokens, 1,
                               PREFILL_T, sl->history, rows, &err);
    if (rc || rb > sizeof want)
        return rc ? (rpc_fail("hash", rc, &err), -1) : -1;
    uint64_t seed = manifest_synthetic_seed(b->o->seed, t->info.layer_ids[l]);
    long bad = 0;
    for (size_t i = 0; i < per; i++) {
        synthetic_row(seed, rows[i], want, rb);
        if (memcmp(sl->out + (l * per + i) * rb, want, rb) && bad++ < 5)
            fprintf(stderr, "engram-cluster-bench: mismatch: %s layer %" PRId64
                    " row %" PRIu64 "\n", t->label, t->info.layer_ids[l], rows[i]);
    }
    return bad;
}

/* Prefetches chunk `step` on t and checks every byte; -1 on an error. */
static long verify_chunk(const tp_bench *b, const target *t, uint64_t step,
                         uint64_t *checked)
{
    slot *v = slots_new(t, 1);
    uint64_t *rows = xmalloc((size_t)PREFILL_T * t->info.heads * sizeof *rows), ns;
    long bad = -1;
    if (slot_start(b, t, v, step) == 0 && slot_finish(v, &ns) == 0) {
        bad = 0;
        for (uint32_t l = 0; l < t->info.n_layers && bad >= 0; l++) {
            long m = verify_layer(b, t, v, l, rows);
            bad = m < 0 ? -1 : bad + m;
        }
        *checked += rows_per_step(t);
    }
    free(rows);
    slots_free(v, 1);
    return bad;
}

static int tp_verify(tp_bench *b)
{
    uint64_t checked = 0;
    long bad = 0;
    for (size_t i = 0; i < 2 * b->o->ntargets && bad >= 0; i++) {
        long m = verify_chunk(b, &b->t[i / 2], i % 2 ? b->nsteps / 2 : 0, &checked);
        bad = m < 0 ? -1 : bad + m;
    }
    if (bad < 0)
        return 2;
    printf("verify: 2 chunks per target, untimed, after the timed runs: %" PRIu64
           " rows checked byte for byte against seed %" PRIu64 ": %ld mismatches\n",
           checked, b->o->seed, bad);
    printf("bench: scenario=verify_throughput seed=%" PRIu64 " verified_rows=%" PRIu64
           " mismatches=%ld\n", b->o->seed, checked, bad);
    return bad ? 1 : 0;
}

static void tp_header(const tp_bench *b)
{
    const target *t = &b->t[0];
    printf("engram-cluster-bench throughput: model %s, %u layers x %u heads x %u-byte "
           "rows; prefill B 1 x T %d = %zu rows/prefetch, %zu in flight, hashing on the "
           "caller's thread\n", t->info.name, t->info.n_layers, t->info.heads,
           t->info.row_bytes, PREFILL_T, rows_per_step(t), b->o->inflight);
    printf("  tokens %s: %zu; %zu rounds x %zu targets, each run %.1f s after %.1f s "
           "warm-up\n\n", b->o->tokens, b->ntok, b->o->rounds, b->o->ntargets,
           b->o->seconds, b->o->warmup);
    fflush(stdout);
}

static int tp_run(tp_bench *b)
{
    int rc = 0;
    for (size_t i = 0; i < b->o->ntargets && !rc; i++) {
        b->t[i] = (target){.label = b->o->label[i], .addr = b->o->addr[i]};
        rc = open_target(b, &b->t[i]);
    }
    if (!rc && (b->ntok < b->hist + PREFILL_T))
        return usage("the token file is shorter than one chunk");
    if (rc)
        return rc;
    b->nsteps = (b->ntok - b->hist) / PREFILL_T;
    tp_header(b);
    for (size_t r = 0; r < b->o->rounds * b->o->ntargets && !rc; r++)
        rc = run_target(b, &b->t[r % b->o->ntargets]);
    for (size_t i = 0; i < b->o->ntargets && !rc; i++)
        print_target(b, &b->t[i], rows_s(&b->t[0]));
    return rc ? rc : b->o->verify ? tp_verify(b) : 0;
}

static int throughput_main(const opts *o)
{
    tp_bench *b = calloc(1, sizeof *b);
    if (!b)
        return 2;
    b->o = o;
    int rc = load_tokens_file(o->tokens, &b->tok, &b->ntok);
    if (!rc)
        rc = tp_run(b);
    for (size_t i = 0; i < o->ntargets; i++) {
        if (b->t[i].model)
            engram_model_close(b->t[i].model);
        if (b->t[i].client)
            engram_client_close(b->t[i].client);
        free(b->t[i].lat.ns);
    }
    free(b->tok);
    free(b);
    return rc;
}

/* ================================= hedge ==================================== */

/* stall: 0 none, STALL_PERIODIC the staller's pauses, STALL_WINDOW the
 * replica stopped for the whole timed window (after a healthy warm-up).
 * slow_eject: eject_after_hedge_losses, or -1 for the default. */
enum { STALL_PERIODIC = 1, STALL_WINDOW = 2 };
typedef struct scenario {
    const char *name;
    int stall, hedge_pct, slow_eject;
} scenario;

typedef struct staller {
    pid_t pid;
    int64_t ms, every_ms;
    int stop;
    uint64_t stalls, stopped_ns;
    pthread_t th;
} staller;

typedef struct hedge_run {
    const opts *o;
    engram_client *client;
    uint64_t table_rows;
    uint32_t row_bytes;
    uint64_t t_start, t_end;
} hedge_run;

typedef struct worker {
    hedge_run *run;
    int id;
    pthread_t th;
    lat_log lat;
    uint64_t calls, failures, verified, mismatches;
    char first_error[600];
} worker;

/* SIGSTOPs the replica for `ms` every `every_ms`, first after half a
 * period, until stop; always leaves it continued. */
static void *staller_main(void *p)
{
    staller *s = p;
    uint64_t next = bench_now_ns() + (uint64_t)s->every_ms * 500000ull;
    while (!__atomic_load_n(&s->stop, __ATOMIC_ACQUIRE)) {
        if (bench_now_ns() < next) {
            uint64_t t = bench_now_ns() + 10000000ull;   /* re-check stop every 10 ms */
            bench_sleep_until(t < next ? t : next);
            continue;
        }
        uint64_t t0 = bench_now_ns();
        if (kill(s->pid, SIGSTOP) == 0) {
            bench_sleep_until(t0 + (uint64_t)s->ms * 1000000ull);
            kill(s->pid, SIGCONT);
            s->stalls++;
            s->stopped_ns += bench_now_ns() - t0;
        }
        next += (uint64_t)s->every_ms * 1000000ull;
    }
    return NULL;
}

static void gen_rows(uint64_t *rows, size_t n, uint64_t key, uint64_t table_rows)
{
    for (size_t i = 0; i < n; i++)
        rows[i] = (uint64_t)(((unsigned __int128)splitmix64(key + i) * table_rows) >> 64);
}

/* Compares a reply with the synthetic rule; returns mismatching rows. */
static uint64_t check_reply(const hedge_run *r, const uint64_t *rows, size_t n,
                            const uint8_t *out)
{
    uint8_t want[1024];
    uint64_t bad = 0;
    for (size_t i = 0; i < n && r->row_bytes <= sizeof want; i++) {
        synthetic_row(r->o->seed, rows[i], want, r->row_bytes);
        if (memcmp(out + i * r->row_bytes, want, r->row_bytes) && bad++ < 3)
            fprintf(stderr, "engram-cluster-bench: mismatch: row %" PRIu64 "\n", rows[i]);
    }
    return bad;
}

static void note_failure(worker *w, int rc, const engram_error *err)
{
    if (w->failures++ == 0)
        snprintf(w->first_error, sizeof w->first_error, "%s: %s",
                 engram_status_name(rc), err->message);
}

/* One load thread: back-to-back sync lookups until t_end. */
static void *worker_main(void *p)
{
    worker *w = p;
    const hedge_run *r = w->run;
    size_t n = r->o->rows_per_call;
    uint64_t *rows = xmalloc(n * sizeof *rows), t0, t1 = 0;
    uint8_t *out = xmalloc(n * r->row_bytes);
    for (uint64_t it = 0; t1 < r->t_end; it++) {
        engram_error err = {0};
        gen_rows(rows, n, ((uint64_t)w->id << 48) + it * n, r->table_rows);
        t0 = bench_now_ns();
        int rc = engram_lookup_sync(r->client, r->o->table, rows, n, out,
                                    n * r->row_bytes, NULL, NULL, &err);
        t1 = bench_now_ns();
        if (rc)
            note_failure(w, rc, &err);
        else if (t0 >= r->t_start && t1 <= r->t_end)
            lat_push(&w->lat, t1 - t0);
        w->calls += t0 >= r->t_start && t1 <= r->t_end;
        if (!rc && it % VERIFY_EVERY == 0) {   /* after the clock stopped */
            w->mismatches += check_reply(r, rows, n, out);
            w->verified += n;
        }
    }
    free(rows);
    free(out);
    return NULL;
}

static int hedge_open(hedge_run *r, int hedge_pct, int slow_eject)
{
    engram_client_options co;
    engram_client_options_init(&co);
    co.hedge_percentile = hedge_pct;
    if (slow_eject >= 0)
        co.eject_after_hedge_losses = slow_eject;
    co.hedge_min_ms = r->o->hedge_min_ms;
    engram_error err = {0};
    int rc = engram_client_open(r->o->server, &co, &r->client, &err);
    if (rc)
        return rpc_fail(r->o->server, rc, &err);
    engram_table_info ti;
    rc = engram_table_get(r->client, r->o->table, &ti, &err);
    if (rc)
        return rpc_fail("table", rc, &err);
    r->table_rows = ti.rows;
    r->row_bytes = ti.row_bytes;
    return 0;
}

typedef struct hedge_result {
    lat_log lat;
    uint64_t calls, failures, verified, mismatches;
    engram_client_counters ct;
    uint64_t stalls;
    double stopped_ms;
    char first_error[600];
} hedge_result;

static void counters_diff(engram_client_counters *d, const engram_client_counters *a,
                          const engram_client_counters *b)
{
    d->subrequests = b->subrequests - a->subrequests;
    d->retries = b->retries - a->retries;
    d->hedges = b->hedges - a->hedges;
    d->hedge_wins = b->hedge_wins - a->hedge_wins;
    d->ejections = b->ejections - a->ejections;
    d->slow_ejections = b->slow_ejections - a->slow_ejections;
    d->version_resolves = b->version_resolves - a->version_resolves;
}

static void merge_worker(hedge_result *res, worker *w)
{
    for (size_t i = 0; i < w->lat.len; i++)
        lat_push(&res->lat, w->lat.ns[i]);
    res->calls += w->calls;
    res->failures += w->failures;
    res->verified += w->verified;
    res->mismatches += w->mismatches;
    if (w->failures && !res->first_error[0])
        snprintf(res->first_error, sizeof res->first_error, "%s", w->first_error);
    free(w->lat.ns);
}

/* Runs the load threads over [now, t_end) and the staller when asked;
 * samples the counters at t_start and t_end. */
static void hedge_window(hedge_run *r, const scenario *sc, hedge_result *res)
{
    worker w[MAX_THREADS];
    staller st = {.pid = r->o->stall_pid, .ms = r->o->stall_ms,
                  .every_ms = r->o->stall_every_ms};
    engram_client_counters c0, c1;
    r->t_start = bench_now_ns() + (uint64_t)(r->o->warmup * 1e9);
    r->t_end = r->t_start + (uint64_t)(r->o->seconds * 1e9);
    if (sc->stall == STALL_PERIODIC)
        pthread_create(&st.th, NULL, staller_main, &st);
    for (size_t i = 0; i < r->o->threads; i++) {
        w[i] = (worker){.run = r, .id = (int)i + 1};
        pthread_create(&w[i].th, NULL, worker_main, &w[i]);
    }
    bench_sleep_until(r->t_start);
    if (sc->stall == STALL_WINDOW && kill(r->o->stall_pid, SIGSTOP) == 0)
        res->stalls = 1;
    engram_client_get_counters(r->client, &c0);
    bench_sleep_until(r->t_end);
    engram_client_get_counters(r->client, &c1);
    if (res->stalls && sc->stall == STALL_WINDOW) {
        kill(r->o->stall_pid, SIGCONT);   /* the workers' last calls may wait on it */
        res->stopped_ms = (double)(bench_now_ns() - r->t_start) / 1e6;
    }
    for (size_t i = 0; i < r->o->threads; i++) {
        pthread_join(w[i].th, NULL);
        merge_worker(res, &w[i]);
    }
    if (sc->stall == STALL_PERIODIC) {
        __atomic_store_n(&st.stop, 1, __ATOMIC_RELEASE);
        pthread_join(st.th, NULL);
        res->stalls = st.stalls;
        res->stopped_ms = (double)st.stopped_ns / 1e6;
    }
    counters_diff(&res->ct, &c0, &c1);
}

static void hedge_print(const hedge_run *r, const scenario *sc, hedge_result *res)
{
    const lat_log *l = &res->lat;
    const engram_client_counters *c = &res->ct;
    lat_sort(&res->lat);
    printf("%s: hedge_percentile %d%s, eject_after_hedge_losses %s; stalls %" PRIu64
           " (%.0f ms stopped in all)\n", sc->name, sc->hedge_pct,
           sc->hedge_pct ? " (hedge_min_ms set)" : "", sc->slow_eject == 0 ? "0" : "default",
           res->stalls, res->stopped_ms);
    printf("  calls %" PRIu64 " (%.0f/s); failed lookups (warm-up included) %" PRIu64 "\n",
           res->calls, (double)res->calls / r->o->seconds, res->failures);
    printf("  latency ms p50 %.3f  p99 %.3f  p999 %.3f  max %.3f; calls over 10 ms: %zu\n",
           pct_ms(l, 50), pct_ms(l, 99), pct_ms(l, 99.9), pct_ms(l, 100), over_ms(l, 10));
    printf("  counters subrequests %" PRIu64 "  hedges %" PRIu64 "  hedge_wins %" PRIu64
           "  retries %" PRIu64 "  ejections %" PRIu64 " (slow %" PRIu64 ")\n", c->subrequests,
           c->hedges, c->hedge_wins, c->retries, c->ejections, c->slow_ejections);
    if (res->failures)
        printf("  first failure: %s\n", res->first_error);
    printf("bench: scenario=%s hedge_percentile=%d hedge_min_ms=%" PRId64 " threads=%zu "
           "rows_per_call=%zu seconds=%.2f calls=%" PRIu64 " failures=%" PRIu64
           " p50_ms=%.3f p99_ms=%.3f p999_ms=%.3f max_ms=%.3f subrequests=%" PRIu64
           " hedges=%" PRIu64 " hedge_wins=%" PRIu64 " retries=%" PRIu64
           " ejections=%" PRIu64 " slow_ejections=%" PRIu64 " stalls=%" PRIu64
           " verified_rows=%" PRIu64 " mismatches=%" PRIu64 " over_10ms=%zu\n\n", sc->name,
           sc->hedge_pct, r->o->hedge_min_ms,
           r->o->threads, r->o->rows_per_call, r->o->seconds, res->calls, res->failures,
           pct_ms(l, 50), pct_ms(l, 99), pct_ms(l, 99.9), pct_ms(l, 100), c->subrequests,
           c->hedges, c->hedge_wins, c->retries, c->ejections, c->slow_ejections, res->stalls,
           res->verified, res->mismatches, over_ms(l, 10));
    fflush(stdout);
}

/* One scenario with a fresh client; returns 0, 1 (mismatch) or 2. */
static int hedge_scenario(const opts *o, const scenario *sc, uint64_t *verified)
{
    hedge_run r = {.o = o};
    hedge_result res;
    memset(&res, 0, sizeof res);
    int rc = hedge_open(&r, sc->hedge_pct, sc->slow_eject);
    if (!rc) {
        hedge_window(&r, sc, &res);
        hedge_print(&r, sc, &res);
        *verified += res.verified;
        rc = res.mismatches ? 1 : res.failures ? 2 : 0;
    }
    if (r.client)
        engram_client_close(r.client);
    free(res.lat.ns);
    return rc;
}

static int hedge_main(const opts *o)
{
    const int p = o->hedge_pct;
    const scenario all[] = {
        {"baseline_hedge_off", 0, 0, -1}, {"baseline_hedge_on", 0, p, -1},
        {"stall_hedge_off", STALL_PERIODIC, 0, -1},
        {"stall_hedge_on_no_slow_eject", STALL_PERIODIC, p, 0},
        {"stall_hedge_on", STALL_PERIODIC, p, -1},
        {"stopped_hedge_on_no_slow_eject", STALL_WINDOW, p, 0},
        {"stopped_hedge_on", STALL_WINDOW, p, -1}};
    size_t n = o->stall_pid ? sizeof all / sizeof all[0] : 2;
    uint64_t verified = 0;
    int rc = 0, worst = 0;
    printf("engram-cluster-bench hedge: server %s, table %s, %zu threads x sync lookups "
           "of %zu rows, each scenario %.1f s after %.1f s warm-up, fresh client each\n",
           o->server, o->table, o->threads, o->rows_per_call, o->seconds, o->warmup);
    if (o->stall_pid)
        printf("  stall: SIGSTOP pid %d for %" PRId64 " ms every %" PRId64 " ms, then "
               "SIGCONT; hedge_min_ms %" PRId64 "\n", (int)o->stall_pid, o->stall_ms,
               o->stall_every_ms, o->hedge_min_ms);
    printf("\n");
    for (size_t i = 0; i < n && worst < 2; i++) {
        rc = hedge_scenario(o, &all[i], &verified);
        worst = rc > worst ? rc : worst;
    }
    printf("verify: every %dth reply of every scenario, after its latency was taken: "
           "%" PRIu64 " rows checked byte for byte against seed %" PRIu64 "%s\n",
           VERIFY_EVERY, verified, o->seed, worst == 1 ? ": MISMATCHES (see above)" : "");
    return worst;
}

int main(int argc, char **argv)
{
    opts o;
    if (parse_args(argc, argv, &o))
        return 2;
    int rc = o.hedge_mode ? hedge_main(&o) : throughput_main(&o);
    for (size_t i = 0; i < o.ntargets; i++)
        free(o.label[i]);
    return rc;
}
