/* compare_memcpy.c: the machine's floor for engram-compare-bench: one
 * thread gathers each batch's rows with memcpy from a dense in-process
 * array into the caller's buffer.
 *
 * How: the array is mmap'd with MADV_HUGEPAGE, as engram-server's resident
 * tables are (resident.c), so both pay the same TLB cost per random row,
 * and filled with synthetic_rows. Calls are synchronous (r->inflight is
 * ignored); a call's latency is the gather alone. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "compare.h"
#include "synthetic.h"

typedef struct mc_ctx {
    uint8_t *arr;
    size_t bytes;
    uint64_t rows;
    uint32_t row_bytes;
} mc_ctx;

static volatile uint8_t mc_sink;   /* keeps the gathers from being optimised away */

static void gather(const mc_ctx *x, const uint64_t *rows, size_t n, uint8_t *out)
{
    const size_t rb = x->row_bytes;
    for (size_t i = 0; i < n; i++)
        memcpy(out + i * rb, x->arr + rows[i] * rb, rb);
    mc_sink ^= out[(n - 1) * rb];
}

static int mc_run(void *ctx, cmp_run *r)
{
    mc_ctx *x = ctx;
    if (r->row_bytes != x->row_bytes) {
        snprintf(r->err, sizeof r->err, "array has %u-byte rows, the cell wants %u",
                 x->row_bytes, r->row_bytes);
        return -1;
    }
    uint8_t *out = xmalloc(r->batch * x->row_bytes);
    int rc = 0;
    for (size_t i = 0; i < r->verify_calls && rc == 0; i++) {
        const uint64_t *rows = cmp_next_batch(r);
        gather(x, rows, r->batch, out);
        rc = cmp_verify(r, rows, r->batch, out);
    }
    cmp_clock c;
    cmp_clock_start(r, &c);
    for (int go = rc == 0; go;) {
        const uint64_t *rows = cmp_next_batch(r);
        uint64_t t0 = bench_now_ns();
        gather(x, rows, r->batch, out);
        uint64_t now = bench_now_ns();
        go = cmp_record(r, &c, now, now - t0, r->batch);
    }
    if (rc == 0)
        cmp_clock_end(r, &c);
    free(out);
    return rc;
}

static void mc_close(void *ctx)
{
    mc_ctx *x = ctx;
    munmap(x->arr, x->bytes);
    free(x);
}

int cmp_memcpy_open(uint64_t seed, uint64_t rows, uint32_t row_bytes, cmp_system *out, char *err,
                    size_t errlen)
{
    mc_ctx *x = calloc(1, sizeof *x);
    size_t bytes = (size_t)rows * row_bytes;
    void *p = x && bytes ? mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                                -1, 0)
                         : MAP_FAILED;
    if (p == MAP_FAILED) {
        snprintf(err, errlen, "memcpy: cannot map %zu bytes", bytes);
        free(x);
        return -1;
    }
#ifdef MADV_HUGEPAGE
    madvise(p, bytes, MADV_HUGEPAGE);
#endif
    *x = (mc_ctx){.arr = p, .bytes = bytes, .rows = rows, .row_bytes = row_bytes};
    synthetic_rows(seed, 0, rows, x->arr, row_bytes);
    *out = (cmp_system){.name = "memcpy", .ctx = x, .run = mc_run, .close = mc_close};
    return 0;
}
