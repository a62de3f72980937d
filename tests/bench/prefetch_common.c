/* prefetch_common.c: the prefetch benchmarks' shared setup, workload and
 * verification (see prefetch_common.h). */
#include "prefetch_common.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"
#include "manifest.h"
#include "synthetic.h"

int pf_open(pf_bench *p, const char *server, const engram_client_options *co,
            const char *model)
{
    engram_error err = {0};
    int rc = engram_client_open(server, co, &p->client, &err);
    if (rc)
        return rpc_fail("connect", rc, &err);
    rc = engram_model_open(p->client, model, &p->model, &err);
    if (rc)
        return rpc_fail("model open", rc, &err);
    engram_model_get_info(p->model, &p->info);
    p->hist = p->info.max_ngram - 1;
    return 0;
}

void pf_close(pf_bench *p)
{
    if (p->model)
        engram_model_close(p->model);
    if (p->client)
        engram_client_close(p->client);
    free(p->tok);
    p->model = NULL;
    p->client = NULL;
    p->tok = NULL;
}

pf_shape pf_shape_make(const pf_bench *p, const char *name, size_t B, size_t T)
{
    pf_shape s = {.name = name, .B = B, .T = T};
    s.span = p->ntok > p->hist ? (p->ntok - p->hist) / B : 0;
    s.nsteps = s.span / T;
    return s;
}

int pf_check_workload(const pf_bench *p, const pf_shape *s, const char *tokens_path)
{
    if (s->nsteps)
        return 0;
    fprintf(stderr, "%s: %s needs at least %zu tokens; %s has %zu\n", bench_prog,
            s->name, p->hist + s->B * s->T, tokens_path, p->ntok);
    return 2;
}

size_t pf_rows_per_step(const pf_bench *p, const pf_shape *s)
{
    return s->B * s->T * p->info.heads * p->info.n_layers;
}

const char *pf_layer_list(const pf_bench *p, char *buf, size_t cap)
{
    size_t off = 0;
    buf[0] = 0;
    for (uint32_t l = 0; l < p->info.n_layers && off < cap; l++)
        off += (size_t)snprintf(buf + off, cap - off, "%s%" PRId64, l ? "," : "",
                                p->info.layer_ids[l]);
    return buf;
}

void pf_buf_init(const pf_bench *p, const pf_shape *s, size_t out_row_bytes, pf_buf *b)
{
    b->tokens = xmalloc(s->B * s->T * sizeof(int64_t));
    b->history = xmalloc(s->B * p->hist * sizeof(int64_t));
    b->out_bytes = pf_rows_per_step(p, s) * out_row_bytes;
    b->out = xmalloc(b->out_bytes);
}

void pf_buf_free(pf_buf *b)
{
    free(b->tokens);
    free(b->history);
    free(b->out);
}

void pf_fill_batch(const pf_bench *p, const pf_shape *s, uint64_t step, pf_buf *b)
{
    size_t within = (size_t)(step % s->nsteps) * s->T;
    for (size_t j = 0; j < s->B; j++) {
        size_t start = p->hist + j * s->span + within;
        memcpy(b->tokens + j * s->T, p->tok + start, s->T * sizeof(int64_t));
        memcpy(b->history + j * p->hist, p->tok + start - p->hist,
               p->hist * sizeof(int64_t));
    }
}

engram_prefetch_request pf_request(const pf_bench *p, const pf_shape *s, pf_buf *b,
                                   unsigned flags)
{
    return (engram_prefetch_request){
        .layer_ids = p->info.layer_ids, .n_layers = p->info.n_layers,
        .tokens = b->tokens, .batch = s->B, .seq_len = s->T,
        .history = b->history, .out = b->out, .out_cap = b->out_bytes,
        .flags = flags};
}

/* Mismatching rows of layer index l, or -1 on a hashing error. want holds
 * row_bytes + orb: the stored row, then (bf16) its dequantised values,
 * which is what the output must hold. */
static long verify_layer(const pf_bench *p, const pf_shape *s, const pf_buf *b,
                         uint64_t seed, int bf16, uint32_t l, uint64_t *rows, uint8_t *want)
{
    size_t per = s->B * s->T * p->info.heads, rb = p->info.row_bytes;
    size_t orb = bf16 ? (size_t)p->info.dim * 2 : rb;
    uint8_t *expect = bf16 ? want + rb : want;
    int64_t id = p->info.layer_ids[l];
    engram_error err = {0};
    int rc = engram_model_hash(p->model, id, b->tokens, s->B, s->T, b->history, rows, &err);
    if (rc) {
        rpc_fail("hash", rc, &err);
        return -1;
    }
    uint64_t lseed = manifest_synthetic_seed(seed, id);
    long bad = 0;
    for (size_t i = 0; i < per; i++) {
        synthetic_row_typed(lseed, rows[i], want, rb, p->info.dtype);
        if (bf16)
            engram_dequant_bf16(want, 1, p->info.dim, (uint16_t *)(void *)expect, NULL);
        if (memcmp(b->out + (l * per + i) * orb, expect, orb) == 0)
            continue;
        if (bad++ < 5)
            fprintf(stderr, "%s: mismatch: %s layer %" PRId64 " row %" PRIu64
                    " (index %zu)\n", bench_prog, s->name, id, rows[i], i);
    }
    return bad;
}

long pf_verify(const pf_bench *p, const pf_shape *s, const pf_buf *b, uint64_t seed,
               int bf16, uint64_t *checked)
{
    size_t per = s->B * s->T * p->info.heads;
    uint64_t *rows = xmalloc(per * sizeof *rows);
    uint8_t *want = xmalloc(p->info.row_bytes + (size_t)p->info.dim * 2);
    long bad = 0;
    for (uint32_t l = 0; l < p->info.n_layers && bad >= 0; l++) {
        long m = verify_layer(p, s, b, seed, bf16, l, rows, want);
        bad = m < 0 ? -1 : bad + m;
    }
    *checked += per * p->info.n_layers;
    free(rows);
    free(want);
    return bad;
}

/* ---- step loops ---------------------------------------------------------- */

double pf_loop_tokens_per_s(const pf_shape *s, const pf_loop *r)
{
    return r->total_ns ? (double)(r->steps * s->B * s->T) / ((double)r->total_ns / 1e9) : 0;
}

double pf_loop_overhead_pct(const pf_shape *s, const pf_loop *on, const pf_loop *off)
{
    double t_on = pf_loop_tokens_per_s(s, on), t_off = pf_loop_tokens_per_s(s, off);
    return t_off > 0 ? (1 - t_on / t_off) * 100 : 0;
}

uint64_t pf_loop_blocked_steps(const pf_loop *r)
{
    uint64_t n = 0;
    for (size_t i = 0; i < r->wait.len; i++)
        n += r->wait.ns[i] > 50000;
    return n;
}

void pf_loop_sort(pf_loop *r)
{
    lat_sort(&r->step);
    lat_sort(&r->wait);
    lat_sort(&r->start);
    lat_sort(&r->copy);
}

void pf_loop_free(pf_loop *r)
{
    free(r->step.ns);
    free(r->wait.ns);
    free(r->start.ns);
    free(r->copy.ns);
}

void pf_loop_print(const pf_shape *s, const pf_loop *on, const pf_loop *off, uint64_t warmup,
                   const char *wait_note)
{
    printf("  %" PRIu64 " timed steps per mode (after %" PRIu64 " untimed), alternating\n",
           on->steps, warmup);
    printf("  without Engram: %.0f tokens/s, step ms p50 %.3f  p99 %.3f  max %.3f\n",
           pf_loop_tokens_per_s(s, off), pct_ms(&off->step, 50), pct_ms(&off->step, 99),
           pct_ms(&off->step, 100));
    printf("  with Engram:    %.0f tokens/s, step ms p50 %.3f  p99 %.3f  max %.3f\n",
           pf_loop_tokens_per_s(s, on), pct_ms(&on->step, 50), pct_ms(&on->step, 99),
           pct_ms(&on->step, 100));
    printf("  overhead        %.2f%% (1 - with / without)\n", pf_loop_overhead_pct(s, on, off));
    printf("  wait ms         p50 %.3f  p90 %.3f  p99 %.3f  max %.3f  mean %.3f; "
           "blocked > 50 us in %" PRIu64 " of %" PRIu64 " steps%s\n",
           pct_ms(&on->wait, 50), pct_ms(&on->wait, 90), pct_ms(&on->wait, 99),
           pct_ms(&on->wait, 100), lat_mean_ms(&on->wait), pf_loop_blocked_steps(on), on->steps,
           wait_note);
}
