/* gpu_decode_bench.cu: engram-gpu-decode-bench, what Engram prefetch costs
 * an inference worker's step loop whose layers run on a real GPU, against
 * one engram-server. The GPU counterpart of engram-decode-loop-bench
 * (tests/bench/decode_loop_bench.c): the same options, workload, shapes and
 * report, with each layer's compute a kernel and each Engram layer's rows
 * copied to the device before that layer runs.
 *
 *   engram-gpu-decode-bench --server HOST:PORT --model NAME --tokens FILE
 *       [--layers L (30)] [--tokens-per-s R (9000)]
 *       [--batch B (512)] [--chunk T (4096)]
 *       [--decode-layer-us U] [--prefill-layer-us U]
 *       [--steps N] [--prefill-steps N] [--warmup-steps W (3)]
 *       [--verify-seed S] [--chunk-rows N] [--dequant raw|bf16]
 *       [--local auto|off|require] [--device D (0)]
 *       [--sync auto|spin|yield|block]
 *   engram-gpu-decode-bench --check-only [OPTIONS]
 *
 * The worker: L layers, Engram at the manifest's layers (every id < L);
 * per-layer compute time B * T / R / L as in the CPU benchmark (decode
 * B = 512, T = 1: 1.896 ms; prefill B = 1, T = 4096: 15.17 ms). Each
 * layer's compute is a one-thread kernel spinning on clock64() for that
 * time on the compute stream; the cycles per nanosecond are measured once
 * at start (a kernel of a known cycle count timed with CUDA events), since
 * the SM clock under load is not the nominal one.
 *
 * Each step, with Engram: fill the batch (prefetch_common.c's shapes), start
 * ONE prefetch of every Engram layer (ENGRAM_PREFETCH_HASH_ASYNC) into a
 * pinned host buffer (page-aligned, cudaHostRegister'ed, so copies are
 * true DMA and asynchronous), then launch the layers in order. Before
 * launching Engram layer l the host calls engram_prefetch_wait_layer(l),
 * then cudaMemcpyAsync's that layer's rows to the device on a side (copy)
 * stream, records an event after the copy and makes the compute stream wait
 * on it, so layer l's kernel starts only once its rows are on the device
 * while the copy overlaps the layers before it. The step ends with
 * cudaStreamSynchronize of the compute stream (a decode step's output picks
 * the next tokens, so a worker cannot run further ahead than a step).
 * Without Engram: the same batch fill and kernels, no prefetch, no copies.
 * The modes alternate step by step, W untimed steps of each first, then N
 * timed of each; tokens/s = B * T * N / the sum of that mode's step times;
 * overhead = 1 - with / without.
 *
 * Unlike the CPU benchmark, kernel launches are asynchronous: the host runs
 * ahead of the GPU and reaches a wait_layer while earlier layers still run
 * there. So "wait" (host time blocked in wait_layer) is not a GPU stall by
 * itself; a stall happens only when the GPU drains its queue before the
 * rows are copied, and then it shows in the step time, which is what the
 * overhead is made of. "copy" is the device-timed sum of the step's
 * host-to-device copies.
 *
 * --local maps to engram_client_options.local: auto (the library's
 * default), off (always gRPC), require (the same-node mapping of a server
 * started with --shm-dir, else the prefetch fails). --sync sets how the
 * host waits in cudaStreamSynchronize (cudaDeviceSchedule*: auto, CUDA's
 * default; spin; yield; block on an OS primitive), which matters because a
 * spinning host thread takes a core from libengram's hashing thread.
 * --verify-seed S: after the timed steps, step 0 of each shape is
 * prefetched once more, every Engram layer copied to the device as in a
 * step (into device memory first filled with 0xA5), copied back into a
 * zeroed host buffer and checked byte for byte there by prefetch_common.c's
 * pf_verify (tables imported with engramctl import-synthetic --manifest
 * NAME --seed S). Untimed.
 * --check-only parses the options and prints the CUDA runtime it was built
 * with and the driver version, touching no GPU (the ctest
 * gpu_decode_bench_build runs it).
 *
 * Output: per shape a human-readable block and one `bench: key=value` line.
 * Exit status: 0 ok, 1 verification mismatch, 2 usage or RPC error,
 * 3 no CUDA device (or no usable driver) - printed as "no CUDA device: ...",
 * 4 a CUDA call failed.
 *
 * C-style code compiled as CUDA C++ by nvcc (the kernel needs it); the
 * project's C headers are included with C linkage and the setup, shapes
 * and verification are prefetch_common.c's and bench_util.c's, linked as
 * the CPU benchmark links them. */
#include <cuda_runtime.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engram/engram.h"  /* carries its own extern "C" */
extern "C" {
#include "bench_util.h"
#include "prefetch_common.h"
}

/* extern "C": bench_util.c and prefetch_common.c (C) refer to it by its C
 * name; a C++ const global would otherwise have internal linkage. */
extern "C" const char bench_prog[] = "engram-gpu-decode-bench";

enum { EXIT_MISMATCH = 1, EXIT_USAGE = 2, EXIT_NO_GPU = 3, EXIT_CUDA = 4 };

typedef struct bench_opts {
    const char *server, *model, *tokens;
    uint64_t layers, batch, chunk, steps, prefill_steps, warmup;
    double tok_per_s, decode_us, prefill_us;  /* 0: derived */
    int verify;
    uint64_t verify_seed;
    uint64_t chunk_rows;   /* 0: the client's default */
    int dequant;           /* --dequant bf16: ENGRAM_PREFETCH_DEQUANT_BF16 */
    int local;             /* ENGRAM_LOCAL_* */
    uint64_t device;
    unsigned sync;         /* cudaDeviceSchedule* */
    int check_only;
} bench_opts;

typedef struct shape {
    pf_shape w;
    uint64_t layer_ns;     /* compute per layer */
    long long layer_cycles;/* the same as clock64() cycles */
    uint64_t steps;        /* timed steps per mode */
} shape;

typedef struct gpu {
    int dev;
    char name[256];
    int clock_khz;          /* nominal peak SM clock */
    double cycles_per_ns;   /* measured */
    cudaStream_t compute, copy;
    /* per Engram layer (index into layer_ids): around its copy */
    cudaEvent_t *copy_begin, *copied;
    uint32_t n_events;      /* pairs created (what close_gpu destroys) */
} gpu;

typedef struct bench {
    const bench_opts *o;
    pf_bench p;
    gpu g;
    int *slot;              /* per layer 0..L-1: index into layer_ids, or -1 */
    size_t out_rb;          /* bytes a row takes in out: row_bytes, or 2 * dim */
} bench;

/* One shape's buffers: the step's host side (out pinned) and the device
 * copy of out. */
typedef struct gpu_buf {
    pf_buf sb;
    size_t pinned_bytes;    /* out's size rounded up to whole pages */
    uint8_t *dev;
} gpu_buf;

typedef pf_loop mode_result;

/* ---- CUDA errors -------------------------------------------------------------- */

static int cuda_fail(const char *what, cudaError_t e)
{
    fprintf(stderr, "%s: %s: %s (%s)\n", bench_prog, what, cudaGetErrorString(e),
            cudaGetErrorName(e));
    return EXIT_CUDA;
}

/* Evaluates a CUDA call; on failure reports it and returns EXIT_CUDA from
 * the enclosing function. */
#define CUDA_TRY(call)                                 \
    do {                                               \
        cudaError_t e_ = (call);                       \
        if (e_ != cudaSuccess)                         \
            return cuda_fail(#call, e_);               \
    } while (0)

/* ---- the layer kernel ----------------------------------------------------------- */

/* A layer's compute: spins until `cycles` SM clock cycles have passed. One
 * thread: it stands for the layer's time on the compute stream, not its
 * use of the GPU; the copy engine the prefetch's copies use is separate
 * hardware either way. */
__global__ void spin_kernel(long long cycles)
{
    long long start = clock64();
    while (clock64() - start < cycles)
        ;
}

/* ---- options -------------------------------------------------------------------- */

static int usage(const char *why)
{
    if (why)
        fprintf(stderr, "%s: %s\n", bench_prog, why);
    fprintf(stderr,
"usage: engram-gpu-decode-bench --server HOST:PORT --model NAME --tokens FILE\n"
"           [--layers L] [--tokens-per-s R] [--batch B] [--chunk T]\n"
"           [--decode-layer-us U] [--prefill-layer-us U] [--steps N]\n"
"           [--prefill-steps N] [--warmup-steps W] [--verify-seed S]\n"
"           [--chunk-rows N] [--dequant raw|bf16] [--local auto|off|require]\n"
"           [--device D] [--sync auto|spin|yield|block]\n"
"       engram-gpu-decode-bench --check-only [OPTIONS]   (touches no GPU)\n"
"exit status: 0 ok, 1 verification mismatch, 2 usage or RPC error,\n"
"             3 no CUDA device, 4 a CUDA call failed\n");
    return EXIT_USAGE;
}

static int parse_local(const char *arg, int *out)
{
    if (strcmp(arg, "auto") == 0)
        *out = ENGRAM_LOCAL_AUTO;
    else if (strcmp(arg, "off") == 0)
        *out = ENGRAM_LOCAL_OFF;
    else if (strcmp(arg, "require") == 0)
        *out = ENGRAM_LOCAL_REQUIRE;
    else
        return -1;
    return 0;
}

static int parse_sync(const char *arg, unsigned *out)
{
    if (strcmp(arg, "auto") == 0)
        *out = cudaDeviceScheduleAuto;
    else if (strcmp(arg, "spin") == 0)
        *out = cudaDeviceScheduleSpin;
    else if (strcmp(arg, "yield") == 0)
        *out = cudaDeviceScheduleYield;
    else if (strcmp(arg, "block") == 0)
        *out = cudaDeviceScheduleBlockingSync;
    else
        return -1;
    return 0;
}

static int apply_opt(void *ctx, int c, const char *arg)
{
    bench_opts *o = (bench_opts *)ctx;
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
    case 'C': return parse_u64(arg, &o->chunk_rows);
    case 'D':
        o->dequant = strcmp(arg, "bf16") == 0;
        return o->dequant || strcmp(arg, "raw") == 0 ? 0 : -1;
    case 'l': return parse_local(arg, &o->local);
    case 'g': return parse_u64(arg, &o->device);
    case 'y': return parse_sync(arg, &o->sync);
    case 'k': o->check_only = 1; return 0;
    }
    return -1;
}

static int check_opts(const bench_opts *o)
{
    if (!o->check_only && (!o->server || !o->model || !o->tokens))
        return usage("--server, --model and --tokens are required");
    if (o->layers == 0 || o->layers > 1000 || o->batch == 0 || o->chunk == 0)
        return usage("--layers, --batch and --chunk must be positive");
    if (o->tok_per_s <= 0)
        return usage("--tokens-per-s must be positive");
    if (o->device > 1024)
        return usage("--device is a CUDA device index");
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
        {"verify-seed", 1, 0, 'v'}, {"chunk-rows", 1, 0, 'C'},
        {"dequant", 1, 0, 'D'}, {"local", 1, 0, 'l'}, {"device", 1, 0, 'g'},
        {"sync", 1, 0, 'y'}, {"check-only", 0, 0, 'k'},
        {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    memset(o, 0, sizeof *o);
    o->layers = 30;
    o->batch = 512;
    o->chunk = 4096;
    o->warmup = 3;
    o->tok_per_s = 9000;
    o->local = ENGRAM_LOCAL_AUTO;
    o->sync = cudaDeviceScheduleAuto;
    int rc = bench_getopt(argc, argv, lo, apply_opt, o, usage);
    return rc ? rc : check_opts(o);
}

static const char *local_name(int local)
{
    return local == ENGRAM_LOCAL_OFF ? "off" : local == ENGRAM_LOCAL_REQUIRE ? "require" : "auto";
}

static const char *sync_name(unsigned sync)
{
    switch (sync) {
    case cudaDeviceScheduleSpin: return "spin";
    case cudaDeviceScheduleYield: return "yield";
    case cudaDeviceScheduleBlockingSync: return "block";
    }
    return "auto";
}

/* --check-only: what a machine without a GPU can say about this build. */
static int check_only(const bench_opts *o)
{
    int rt = 0, drv = 0;
    cudaRuntimeGetVersion(&rt);
    /* 0 with no driver installed; loads no context either way */
    cudaDriverGetVersion(&drv);
    printf("%s: check only: built with CUDA runtime %d.%d; driver %d.%d%s; options parsed "
           "(local %s, sync %s, device %" PRIu64 "); no GPU touched\n",
           bench_prog, rt / 1000, rt % 1000 / 10, drv / 1000, drv % 1000 / 10,
           drv ? "" : " (none installed)", local_name(o->local), sync_name(o->sync), o->device);
    return 0;
}

/* ---- the GPU ----------------------------------------------------------------------- */

/* Times one spin_kernel of `cycles` with events; ms into *ms. */
static int time_spin(const gpu *g, long long cycles, float *ms)
{
    cudaEvent_t a, b;
    CUDA_TRY(cudaEventCreate(&a));
    CUDA_TRY(cudaEventCreate(&b));
    CUDA_TRY(cudaEventRecord(a, g->compute));
    spin_kernel<<<1, 1, 0, g->compute>>>(cycles);
    CUDA_TRY(cudaGetLastError());
    CUDA_TRY(cudaEventRecord(b, g->compute));
    CUDA_TRY(cudaEventSynchronize(b));
    CUDA_TRY(cudaEventElapsedTime(ms, a, b));
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return 0;
}

/* Cycles per ns of clock64() under a busy kernel: the median of 5 runs of
 * a 20 ms (at the nominal clock) kernel, after one untimed run that loads
 * the module and lets the clock ramp up. */
static int calibrate(gpu *g)
{
    long long cycles = (long long)g->clock_khz * 20;  /* kHz * 20 ms */
    float ms[5], t;
    int rc = time_spin(g, cycles, &t);
    for (int i = 0; i < 5 && rc == 0; i++)
        rc = time_spin(g, cycles, &ms[i]);
    if (rc)
        return rc;
    for (int i = 1; i < 5; i++)  /* insertion sort of 5 */
        for (int j = i; j > 0 && ms[j] < ms[j - 1]; j--) {
            t = ms[j];
            ms[j] = ms[j - 1];
            ms[j - 1] = t;
        }
    if (ms[2] <= 0) {
        fprintf(stderr, "%s: calibration kernel took no time\n", bench_prog);
        return EXIT_CUDA;
    }
    g->cycles_per_ns = (double)cycles / ((double)ms[2] * 1e6);
    return 0;
}

/* Picks and initialises device o->device with o->sync; EXIT_NO_GPU when
 * there is none (or no usable driver), so a machine without a GPU gets a
 * message and an exit status rather than a crash later. */
static int open_gpu(const bench_opts *o, gpu *g)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        fprintf(stderr, "%s: no CUDA device: %s\n", bench_prog,
                e != cudaSuccess ? cudaGetErrorString(e) : "cudaGetDeviceCount found 0 devices");
        return EXIT_NO_GPU;
    }
    if (o->device >= (uint64_t)n) {
        fprintf(stderr, "%s: no CUDA device: --device %" PRIu64 " but this machine has %d\n",
                bench_prog, o->device, n);
        return EXIT_NO_GPU;
    }
    g->dev = (int)o->device;
    /* the flags must reach the primary context as it is created */
    CUDA_TRY(cudaInitDevice(g->dev, o->sync, cudaInitDeviceFlagsAreValid));
    CUDA_TRY(cudaSetDevice(g->dev));
    cudaDeviceProp prop;
    CUDA_TRY(cudaGetDeviceProperties(&prop, g->dev));
    snprintf(g->name, sizeof g->name, "%s", prop.name);
    CUDA_TRY(cudaDeviceGetAttribute(&g->clock_khz, cudaDevAttrClockRate, g->dev));
    if (g->clock_khz <= 0)
        g->clock_khz = 1000000;  /* unknown: 1 GHz; calibration measures the truth */
    CUDA_TRY(cudaStreamCreateWithFlags(&g->compute, cudaStreamNonBlocking));
    CUDA_TRY(cudaStreamCreateWithFlags(&g->copy, cudaStreamNonBlocking));
    return calibrate(g);
}

static void close_gpu(bench *b)
{
    gpu *g = &b->g;
    for (uint32_t i = 0; i < g->n_events; i++) {
        cudaEventDestroy(g->copy_begin[i]);
        cudaEventDestroy(g->copied[i]);
    }
    free(g->copy_begin);
    free(g->copied);
    if (g->compute)
        cudaStreamDestroy(g->compute);
    if (g->copy)
        cudaStreamDestroy(g->copy);
}

/* ---- setup -------------------------------------------------------------------------- */

static int open_bench(bench *b)
{
    engram_client_options co;
    engram_client_options_init(&co);
    co.local = b->o->local;
    if (b->o->chunk_rows)
        co.prefetch_chunk_rows = b->o->chunk_rows > INT32_MAX ? INT32_MAX : (int32_t)b->o->chunk_rows;
    int rc = pf_open(&b->p, b->o->server, &co, b->o->model);
    if (rc)
        return rc;
    if (b->o->dequant && strcmp(b->p.info.dtype, "mxfp8_e4m3") != 0) {
        fprintf(stderr, "%s: --dequant bf16 needs a model of dtype mxfp8_e4m3; %s holds %s\n",
                bench_prog, b->p.info.name, b->p.info.dtype);
        return EXIT_USAGE;
    }
    b->out_rb = b->o->dequant ? (size_t)b->p.info.dim * 2 : b->p.info.row_bytes;
    b->slot = (int *)xmalloc(b->o->layers * sizeof *b->slot);
    for (uint64_t l = 0; l < b->o->layers; l++)
        b->slot[l] = -1;
    for (uint32_t i = 0; i < b->p.info.n_layers; i++) {
        int64_t id = b->p.info.layer_ids[i];
        if (id < 0 || (uint64_t)id >= b->o->layers) {
            fprintf(stderr, "%s: Engram layer %" PRId64 " is outside the %" PRIu64
                    "-layer model\n", bench_prog, id, b->o->layers);
            return EXIT_USAGE;
        }
        b->slot[id] = (int)i;
    }
    gpu *g = &b->g;
    g->copy_begin = (cudaEvent_t *)xmalloc(b->p.info.n_layers * sizeof *g->copy_begin);
    g->copied = (cudaEvent_t *)xmalloc(b->p.info.n_layers * sizeof *g->copied);
    for (uint32_t i = 0; i < b->p.info.n_layers; i++) {
        CUDA_TRY(cudaEventCreate(&g->copy_begin[i]));
        cudaError_t e = cudaEventCreate(&g->copied[i]);
        if (e != cudaSuccess) {
            cudaEventDestroy(g->copy_begin[i]);
            return cuda_fail("cudaEventCreate", e);
        }
        g->n_events = i + 1;
    }
    return 0;
}

/* Per-layer compute: the option, else tokens per step / R / L; and its
 * clock64() cycles at the measured rate. */
static shape make_shape(const bench *b, const char *name, size_t B, size_t T,
                        double layer_us, uint64_t steps)
{
    const bench_opts *o = b->o;
    shape s;
    memset(&s, 0, sizeof s);
    s.w = pf_shape_make(&b->p, name, B, T);
    double step_s = (double)(B * T) / o->tok_per_s;
    if (layer_us <= 0)
        layer_us = step_s / (double)o->layers * 1e6;
    s.layer_ns = (uint64_t)(layer_us * 1e3 + 0.5);
    s.layer_cycles = (long long)((double)s.layer_ns * b->g.cycles_per_ns + 0.5);
    /* default: ~10 s of steps per mode at the nominal step time */
    s.steps = steps ? steps : (uint64_t)(10.0 / ((double)s.layer_ns * 1e-9 *
                                                 (double)o->layers)) + 1;
    return s;
}

static size_t layer_bytes(const bench *b, const shape *s)
{
    return s->w.B * s->w.T * b->p.info.heads * b->out_rb;
}

/* The step's host buffers, with out replaced by a page-aligned one that is
 * pinned (cudaHostRegister): whole pages, so the pinning covers exactly
 * this buffer and no heap neighbour; and the device copy of out. */
static int gpu_buf_init(const bench *b, const shape *s, gpu_buf *gb)
{
    memset(gb, 0, sizeof *gb);
    pf_buf_init(&b->p, &s->w, b->out_rb, &gb->sb);
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    gb->pinned_bytes = (gb->sb.out_bytes + page - 1) / page * page;
    free(gb->sb.out);
    void *p = NULL;
    if (posix_memalign(&p, page, gb->pinned_bytes) != 0) {
        fprintf(stderr, "%s: out of memory (%zu bytes)\n", bench_prog, gb->pinned_bytes);
        exit(EXIT_USAGE);
    }
    gb->sb.out = (uint8_t *)p;  /* pf_buf_free frees it: posix_memalign's is free()able */
    memset(gb->sb.out, 0, gb->pinned_bytes);  /* every page real before timing */
    CUDA_TRY(cudaHostRegister(gb->sb.out, gb->pinned_bytes, cudaHostRegisterDefault));
    CUDA_TRY(cudaMalloc((void **)&gb->dev, gb->sb.out_bytes));
    return 0;
}

static void gpu_buf_free(gpu_buf *gb)
{
    if (gb->dev)
        cudaFree(gb->dev);
    if (gb->sb.out)
        cudaHostUnregister(gb->sb.out);
    pf_buf_free(&gb->sb);
}

static int prefetch_start(const bench *b, const shape *s, pf_buf *sb, engram_prefetch **h)
{
    engram_error err;
    memset(&err, 0, sizeof err);
    engram_prefetch_request r = pf_request(
        &b->p, &s->w, sb, ENGRAM_PREFETCH_HASH_ASYNC |
                              (b->o->dequant ? ENGRAM_PREFETCH_DEQUANT_BF16 : 0));
    int rc = engram_prefetch_start(b->p.model, &r, h, &err);
    return rc ? rpc_fail("prefetch start", rc, &err) : 0;
}

static int prefetch_wait(engram_prefetch *h)
{
    engram_error err;
    memset(&err, 0, sizeof err);
    int rc = engram_prefetch_wait(h, -1, &err);
    return rc ? rpc_fail("prefetch wait", rc, &err) : 0;
}

static int wait_layer(engram_prefetch *h, size_t l)
{
    engram_error err;
    memset(&err, 0, sizeof err);
    int rc = engram_prefetch_wait_layer(h, (int64_t)l, -1, &err);
    return rc ? rpc_fail("prefetch wait_layer", rc, &err) : 0;
}

/* Queues Engram layer slot i's rows host -> device on the copy stream and
 * makes the compute stream wait for them. */
static int copy_layer(const bench *b, const shape *s, gpu_buf *gb, int i)
{
    const gpu *g = &b->g;
    size_t n = layer_bytes(b, s), off = (size_t)i * n;
    CUDA_TRY(cudaEventRecord(g->copy_begin[i], g->copy));
    CUDA_TRY(cudaMemcpyAsync(gb->dev + off, gb->sb.out + off, n, cudaMemcpyHostToDevice,
                             g->copy));
    CUDA_TRY(cudaEventRecord(g->copied[i], g->copy));
    CUDA_TRY(cudaStreamWaitEvent(g->compute, g->copied[i], 0));
    return 0;
}

/* ---- the step loop ------------------------------------------------------------------- */

/* One step; with_engram starts a prefetch first, and before each Engram
 * layer waits for its rows and queues their copy. Records into r when r is
 * non-NULL. */
static int one_step(const bench *b, const shape *s, gpu_buf *gb, uint64_t step,
                    int with_engram, mode_result *r)
{
    const gpu *g = &b->g;
    engram_prefetch *h = NULL;
    uint64_t t0 = bench_now_ns(), t_start, t_wait = 0, t1;
    int rc = 0;
    pf_fill_batch(&b->p, &s->w, step, &gb->sb);
    if (with_engram && prefetch_start(b, s, &gb->sb, &h))
        return EXIT_USAGE;
    t_start = bench_now_ns() - t0;
    for (size_t l = 0; l < b->o->layers && rc == 0; l++) {
        int i = b->slot[l];
        if (with_engram && i >= 0) {
            t1 = bench_now_ns();
            rc = wait_layer(h, l);
            t_wait += bench_now_ns() - t1;
            if (rc == 0)
                rc = copy_layer(b, s, gb, i);
            if (rc)
                break;
        }
        spin_kernel<<<1, 1, 0, g->compute>>>(s->layer_cycles);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess)
            rc = cuda_fail("spin_kernel launch", e);
    }
    /* also on an error: the copies read the pinned buffer, which must not
     * change under them */
    cudaError_t e = cudaStreamSynchronize(g->compute);
    if (rc == 0 && e != cudaSuccess)
        rc = cuda_fail("cudaStreamSynchronize", e);
    if (rc == 0 && with_engram)
        rc = prefetch_wait(h);  /* every layer is in: returns at once */
    engram_prefetch_free(h);
    if (rc || !r)
        return rc;
    uint64_t ns = bench_now_ns() - t0;
    float copy_ms = 0, ms;
    for (uint32_t i = 0; with_engram && i < b->p.info.n_layers; i++) {
        CUDA_TRY(cudaEventElapsedTime(&ms, g->copy_begin[i], g->copied[i]));
        copy_ms += ms;
    }
    r->steps++;
    r->total_ns += ns;
    lat_push(&r->step, ns);
    lat_push(&r->wait, t_wait);
    lat_push(&r->start, t_start);
    lat_push(&r->copy, (uint64_t)((double)copy_ms * 1e6));
    return 0;
}

/* W untimed steps of each mode, then N of each, alternating (with Engram
 * first); both modes walk the same batches. */
static int run_shape(const bench *b, const shape *s, mode_result *on, mode_result *off)
{
    gpu_buf gb;
    int rc = gpu_buf_init(b, s, &gb);
    uint64_t total = b->o->warmup + s->steps;
    for (uint64_t i = 0; i < total && rc == 0; i++) {
        int timed = i >= b->o->warmup;
        rc = one_step(b, s, &gb, i, 1, timed ? on : NULL);
        if (rc == 0)
            rc = one_step(b, s, &gb, i, 0, timed ? off : NULL);
    }
    gpu_buf_free(&gb);
    return rc;
}

/* ---- report ----------------------------------------------------------------------------- */

static const char *form_name(const bench *b)
{
    return b->o->dequant ? "bf16" : "raw";
}

static void print_human(const bench *b, const shape *s, const mode_result *on,
                        const mode_result *off)
{
    double nominal_ms = (double)s->layer_ns * (double)b->o->layers / 1e6;
    size_t rows = pf_rows_per_step(&b->p, &s->w);
    char layers[256];
    printf("%s: B %zu x T %zu, %" PRIu64 " layers x %.3f ms GPU spin kernel (%lld cycles; "
           "nominal %.2f ms/step), Engram at layers %s (each waited for, then copied on a "
           "side stream, before its kernel), %zu rows/prefetch, %.2f MiB as %s\n",
           s->w.name, s->w.B, s->w.T, b->o->layers, (double)s->layer_ns / 1e6,
           s->layer_cycles, nominal_ms, pf_layer_list(&b->p, layers, sizeof layers), rows,
           (double)(rows * b->out_rb) / (1 << 20), form_name(b));
    pf_loop_print(&s->w, on, off, b->o->warmup,
                  " (host time in wait_layer, the GPU running queued layers meanwhile)");
    printf("  copy ms         p50 %.3f  p99 %.3f  max %.3f (host -> device, every Engram "
           "layer of the step, device-timed)\n",
           pct_ms(&on->copy, 50), pct_ms(&on->copy, 99), pct_ms(&on->copy, 100));
    printf("  start ms        p50 %.3f  p99 %.3f  max %.3f (batch fill + "
           "engram_prefetch_start, HASH_ASYNC)\n", pct_ms(&on->start, 50),
           pct_ms(&on->start, 99), pct_ms(&on->start, 100));
}

/* The GPU's name with spaces as '_', for the key=value line. */
static const char *gpu_token(const gpu *g, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s", g->name);
    for (char *c = buf; *c; c++)
        if (*c == ' ' || *c == '=')
            *c = '_';
    return buf;
}

static void print_machine(const bench *b, const shape *s, const mode_result *on,
                          const mode_result *off)
{
    double t_on = pf_loop_tokens_per_s(&s->w, on), t_off = pf_loop_tokens_per_s(&s->w, off);
    size_t rows = pf_rows_per_step(&b->p, &s->w);
    char name[256];
    printf("bench: scenario=%s gpu=%s local=%s sync=%s model=%s form=%s dtype=%s heads=%u "
           "row_bytes=%u out_row_bytes=%zu rows_per_step=%zu out_bytes_per_step=%zu batch=%zu "
           "seq=%zu layers=%" PRIu64 " engram_layers=%u layer_ms=%.4f layer_cycles=%lld "
           "steps=%" PRIu64 " tokens_per_s_off=%.1f tokens_per_s_on=%.1f overhead_pct=%.3f "
           "step_p50_ms_off=%.3f step_p50_ms_on=%.3f wait_p50_ms=%.4f wait_p90_ms=%.4f "
           "wait_p99_ms=%.4f wait_max_ms=%.4f wait_mean_ms=%.4f blocked_steps=%" PRIu64
           " copy_p50_ms=%.4f copy_max_ms=%.4f start_p50_ms=%.4f start_max_ms=%.4f\n",
           s->w.name, gpu_token(&b->g, name, sizeof name), local_name(b->o->local),
           sync_name(b->o->sync), b->p.info.name, form_name(b), b->p.info.dtype,
           b->p.info.heads, b->p.info.row_bytes, b->out_rb, rows, rows * b->out_rb, s->w.B,
           s->w.T, b->o->layers, b->p.info.n_layers, (double)s->layer_ns / 1e6,
           s->layer_cycles, on->steps, t_off, t_on, t_off > 0 ? (1 - t_on / t_off) * 100 : 0,
           pct_ms(&off->step, 50), pct_ms(&on->step, 50), pct_ms(&on->wait, 50),
           pct_ms(&on->wait, 90), pct_ms(&on->wait, 99), pct_ms(&on->wait, 100),
           lat_mean_ms(&on->wait), pf_loop_blocked_steps(on), pct_ms(&on->copy, 50),
           pct_ms(&on->copy, 100), pct_ms(&on->start, 50), pct_ms(&on->start, 100));
}

static int bench_shape(const bench *b, const shape *s)
{
    mode_result on, off;
    memset(&on, 0, sizeof on);
    memset(&off, 0, sizeof off);
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

/* ---- verification (untimed) ----------------------------------------------------------- */

/* Prefetches step 0 of s, copies every Engram layer to the device as a
 * step does, back into a zeroed host buffer, and checks every row there.
 * Mismatching rows into *bad; returns 0, or an exit status on an error. */
static int verify_shape(const bench *b, const shape *s, uint64_t *checked, long *bad)
{
    gpu_buf gb;
    engram_prefetch *h = NULL;
    int rc = gpu_buf_init(b, s, &gb);
    pf_buf back = gb.sb;  /* the same tokens and history, out read back from the device */
    back.out = (uint8_t *)calloc(1, gb.sb.out_bytes ? gb.sb.out_bytes : 1);
    if (!back.out) {
        fprintf(stderr, "%s: out of memory (%zu bytes)\n", bench_prog, gb.sb.out_bytes);
        exit(EXIT_USAGE);
    }
    if (rc == 0) {
        /* a pattern, so a copy that never happened cannot pass as zeros */
        cudaError_t e = cudaMemset(gb.dev, 0xA5, gb.sb.out_bytes);
        rc = e == cudaSuccess ? 0 : cuda_fail("cudaMemset", e);
    }
    if (rc == 0) {
        pf_fill_batch(&b->p, &s->w, 0, &gb.sb);
        rc = prefetch_start(b, s, &gb.sb, &h);
    }
    for (size_t l = 0; l < b->o->layers && rc == 0; l++)
        if (b->slot[l] >= 0 && (rc = wait_layer(h, l)) == 0)
            rc = copy_layer(b, s, &gb, b->slot[l]);
    if (rc == 0) {
        cudaError_t e = cudaStreamSynchronize(b->g.compute);
        if (e == cudaSuccess)
            e = cudaMemcpy(back.out, gb.dev, gb.sb.out_bytes, cudaMemcpyDeviceToHost);
        rc = e == cudaSuccess ? 0 : cuda_fail("copy back from the device", e);
    }
    if (rc == 0)
        rc = prefetch_wait(h);
    if (rc == 0) {
        long m = pf_verify(&b->p, &s->w, &back, b->o->verify_seed, b->o->dequant, checked);
        if (m < 0)
            rc = EXIT_USAGE;
        else
            *bad += m;
    }
    cudaStreamSynchronize(b->g.copy);  /* no copy may still read what is freed */
    engram_prefetch_free(h);
    free(back.out);
    gpu_buf_free(&gb);
    return rc;
}

static int run_verify(const bench *b, const shape *shapes, size_t n)
{
    uint64_t checked = 0;
    long bad = 0;
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++)
        rc = verify_shape(b, &shapes[i], &checked, &bad);
    if (rc)
        return rc;
    printf("verify: step 0 of each shape (HASH_ASYNC), after the timed steps, copied to the "
           "device and back: %" PRIu64 " rows checked byte for byte against seed %" PRIu64
           "%s: %ld mismatches\n", checked, b->o->verify_seed,
           b->o->dequant ? " (as BF16, via engram_dequant_bf16)" : "", bad);
    printf("bench: scenario=verify local=%s form=%s seed=%" PRIu64 " verified_rows=%" PRIu64
           " mismatches=%ld\n", local_name(b->o->local), form_name(b), b->o->verify_seed,
           checked, bad);
    return bad ? EXIT_MISMATCH : 0;
}

/* ---- main ---------------------------------------------------------------------------------- */

static int run_all(bench *b)
{
    const bench_opts *o = b->o;
    shape shapes[2] = {
        make_shape(b, "decode", o->batch, 1, o->decode_us, o->steps),
        make_shape(b, "prefill", 1, o->chunk, o->prefill_us, o->prefill_steps)};
    if (pf_check_workload(&b->p, &shapes[0].w, o->tokens) ||
        pf_check_workload(&b->p, &shapes[1].w, o->tokens))
        return EXIT_USAGE;
    printf("%s: server %s (local %s), model %s (manifest version %" PRIu64 "), %u heads x "
           "%u-byte rows of %s, delivered %s (%zu bytes a row); tokens %s: %zu; compute "
           "model %.0f tokens/s over %" PRIu64 " layers\n",
           bench_prog, o->server, local_name(o->local), b->p.info.name,
           b->p.info.manifest_version, b->p.info.heads, b->p.info.row_bytes, b->p.info.dtype,
           o->dequant ? "as BF16 (--dequant bf16)" : "raw", b->out_rb, o->tokens, b->p.ntok,
           o->tok_per_s, o->layers);
    printf("gpu: device %d, %s; sync %s; clock64() %.1f MHz under the spin kernel (nominal "
           "peak %.1f MHz)\n\n", b->g.dev, b->g.name, sync_name(o->sync),
           b->g.cycles_per_ns * 1e3, b->g.clock_khz / 1e3);
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
    int rc = parse_args(argc, argv, &o);
    if (rc)
        return EXIT_USAGE;
    if (o.check_only)
        return check_only(&o);
    bench b;
    memset(&b, 0, sizeof b);
    b.o = &o;
    /* the GPU first: a machine without one says so before any server call */
    rc = open_gpu(&o, &b.g);
    if (rc == 0)
        rc = load_tokens_file(o.tokens, &b.p.tok, &b.p.ntok);
    if (rc == 0)
        rc = open_bench(&b);
    if (rc == 0)
        rc = run_all(&b);
    close_gpu(&b);
    free(b.slot);
    pf_close(&b.p);
    return rc;
}
