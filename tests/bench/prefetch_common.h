/* prefetch_common.h: what the two benchmarks that drive libengram's
 * prefetch on the real token workload share (engram-prefetch-bench and
 * engram-decode-loop-bench): the client and model they open, the workload,
 * the request shapes cut from it, the buffers of one step, and the
 * byte-for-byte check of a prefetch's output against the synthetic rule.
 *
 * A shape is B sequences of T tokens. Step s of a shape: sequence j starts
 * at hist + j * span + (s mod nsteps) * T of the workload, its history is
 * the hist = max_ngram - 1 tokens before that. So decode (T = 1) reads B
 * evenly spaced places of the text, each moving on by one token a step,
 * and prefill (B = 1) reads consecutive chunks. Errors are reported with
 * bench_prog (bench_util.h). */
#ifndef ENGRAM_BENCH_PREFETCH_COMMON_H
#define ENGRAM_BENCH_PREFETCH_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "bench_util.h"
#include "engram/engram.h"

typedef struct pf_bench {
    engram_client *client;
    engram_model *model;
    engram_model_info info;
    int64_t *tok;   /* the workload, widened to int64 */
    size_t ntok;
    size_t hist;    /* max_ngram - 1 */
} pf_bench;

typedef struct pf_shape {
    const char *name;
    size_t B, T;
    size_t span;    /* workload tokens reserved per sequence */
    size_t nsteps;  /* steps before the offsets wrap */
} pf_shape;

/* One step's input and output. */
typedef struct pf_buf {
    int64_t *tokens, *history;
    uint8_t *out;
    size_t out_bytes;
} pf_buf;

/* Connects to server with co and opens model; 0 ok, 2 on an RPC error
 * (reported). */
int pf_open(pf_bench *p, const char *server, const engram_client_options *co,
            const char *model);
/* Closes what pf_open opened and frees the workload. */
void pf_close(pf_bench *p);

pf_shape pf_shape_make(const pf_bench *p, const char *name, size_t B, size_t T);
/* 0 when the workload holds at least one step of s, else 2 (reported). */
int pf_check_workload(const pf_bench *p, const pf_shape *s, const char *tokens_path);
/* Rows of one step: every sequence, token, head and layer. */
size_t pf_rows_per_step(const pf_bench *p, const pf_shape *s);
/* "1,15": the model's layer ids, into buf. */
const char *pf_layer_list(const pf_bench *p, char *buf, size_t cap);

/* Buffers for one step of s whose output rows take out_row_bytes each. */
void pf_buf_init(const pf_bench *p, const pf_shape *s, size_t out_row_bytes, pf_buf *b);
void pf_buf_free(pf_buf *b);
void pf_fill_batch(const pf_bench *p, const pf_shape *s, uint64_t step, pf_buf *b);
/* A prefetch of every layer of the model for b's batch into b's output. */
engram_prefetch_request pf_request(const pf_bench *p, const pf_shape *s, pf_buf *b,
                                   unsigned flags);

/* Checks every row of a prefetched step in b->out against
 * synthetic_row_typed(manifest_synthetic_seed(seed, layer), row) at
 * engram_model_hash's rows, passed through engram_dequant_bf16 when bf16
 * (the output of ENGRAM_PREFETCH_DEQUANT_BF16). Adds the rows checked to
 * *checked; returns the mismatching rows (the first 5 of each layer
 * reported), or -1 on a hashing error. */
long pf_verify(const pf_bench *p, const pf_shape *s, const pf_buf *b, uint64_t seed,
               int bf16, uint64_t *checked);

/* ---- step loops: engram-decode-loop-bench and tests/gpu's engram-gpu-decode-bench */

/* One mode of a worker's step loop, with or without Engram: the timed
 * steps, their summed time, and per step its time, the time blocked
 * waiting for rows, the prefetch's start and (GPU only) the device copy. */
typedef struct pf_loop {
    uint64_t steps, total_ns;
    lat_log step, wait, start, copy;
} pf_loop;

double pf_loop_tokens_per_s(const pf_shape *s, const pf_loop *r);
/* 1 - with / without, in percent. */
double pf_loop_overhead_pct(const pf_shape *s, const pf_loop *on, const pf_loop *off);
/* Steps whose wait blocked for more than 50 us. */
uint64_t pf_loop_blocked_steps(const pf_loop *r);
void pf_loop_sort(pf_loop *r);
void pf_loop_free(pf_loop *r);
/* The lines both benches print under a shape's header: steps, without and
 * with Engram, overhead, wait (wait_note appended to its line, "" for
 * none). */
void pf_loop_print(const pf_shape *s, const pf_loop *on, const pf_loop *off, uint64_t warmup,
                   const char *wait_note);

#endif
