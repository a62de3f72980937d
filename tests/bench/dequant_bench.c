/* dequant_bench.c: engram-dequant-bench, libengram's mxfp8_e4m3 -> BF16 and
 * F32 dequantization on one core, in values per second, against a plain
 * 264-byte row copy (memcpy of the same rows) run in the same invocation.
 *
 *   engram-dequant-bench [--rows N] [--rounds R]
 *
 * Rows are V4.1-shaped (256 E4M3 codes, 8 scales), random codes without
 * NaNs and scales 120..134, 48 rows per token as a decode step reads them;
 * the buffer (default 16384 rows, 4.3 MB in, 8.4 MB BF16 out) is reused so
 * it measures the arithmetic, not DRAM. Prints the median of R rounds. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engram/engram.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    size_t n = 16384;
    int rounds = 9;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--rows"))
            n = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--rounds"))
            rounds = atoi(argv[i + 1]);
    }
    if (!n || rounds < 1 || rounds > 99) {
        fprintf(stderr, "usage: engram-dequant-bench [--rows N] [--rounds 1..99]\n");
        return 2;
    }
    const size_t rb = 264, dim = 256;
    uint8_t *rows = malloc(n * rb), *copy = malloc(n * rb);
    uint16_t *bf = malloc(n * dim * sizeof *bf);
    float *f32 = malloc(n * dim * sizeof *f32);
    if (!rows || !copy || !bf || !f32)
        return 1;
    uint64_t x = 88172645463325252ull;
    for (size_t r = 0; r < n; r++)
        for (size_t i = 0; i < rb; i++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            uint8_t c = (uint8_t)x;
            rows[r * rb + i] = i < dim ? ((c & 0x7f) == 0x7f ? 0x7e : c) : (uint8_t)(120 + x % 15);
        }
    double t[3][99];
    engram_error e;
    for (int k = 0; k < rounds; k++) {
        double t0 = now_s();
        if (engram_dequant_bf16(rows, n, dim, bf, &e))
            return fprintf(stderr, "%s\n", e.message), 1;
        double t1 = now_s();
        if (engram_dequant_f32(rows, n, dim, f32, &e))
            return fprintf(stderr, "%s\n", e.message), 1;
        double t2 = now_s();
        memcpy(copy, rows, n * rb);
        double t3 = now_s();
        t[0][k] = t1 - t0, t[1][k] = t2 - t1, t[2][k] = t3 - t2;
    }
    for (int j = 0; j < 3; j++)
        qsort(t[j], (size_t)rounds, sizeof t[j][0], cmp);
    double vals = (double)n * (double)dim;
    printf("rows %zu x 264 B, %d rounds, medians (one core)\n", n, rounds);
    printf("bf16: %.3g values/s (%.2f ns/row)\n", vals / t[0][rounds / 2], t[0][rounds / 2] / n * 1e9);
    printf("f32:  %.3g values/s (%.2f ns/row)\n", vals / t[1][rounds / 2], t[1][rounds / 2] / n * 1e9);
    printf("memcpy of the rows: %.3g rows/s (%.2f ns/row); bf16 / memcpy time: %.2f\n",
           n / t[2][rounds / 2], t[2][rounds / 2] / n * 1e9, t[0][rounds / 2] / t[2][rounds / 2]);
    volatile uint16_t sink = bf[n * dim / 2];
    (void)sink;
    free(rows), free(copy), free(bf), free(f32);
    return 0;
}
