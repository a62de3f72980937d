/* bench_util.c: helpers shared by the benchmark tools (see bench_util.h). */
#include "bench_util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

uint64_t bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void bench_sleep_until(uint64_t t)
{
    struct timespec ts = {(time_t)(t / 1000000000ull), (long)(t % 1000000000ull)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "%s: out of memory (%zu bytes)\n", bench_prog, n);
        exit(2);
    }
    return p;
}

int rpc_fail(const char *what, int rc, const engram_error *err)
{
    fprintf(stderr, "%s: %s: %s: %s\n", bench_prog, what,
            engram_status_name(rc), err->message);
    return 2;
}

void lat_push(lat_log *l, uint64_t ns)
{
    if (l->len == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 4096;
        uint64_t *p = realloc(l->ns, l->cap * sizeof *p);
        if (!p) {
            fprintf(stderr, "%s: out of memory\n", bench_prog);
            exit(2);
        }
        l->ns = p;
    }
    l->ns[l->len++] = ns;
}

int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

void lat_sort(lat_log *l)
{
    qsort(l->ns, l->len, sizeof *l->ns, cmp_u64);
}

double pct_ms(const lat_log *l, double p)
{
    if (l->len == 0)
        return 0.0;
    size_t rank = (size_t)(p / 100.0 * (double)l->len + 0.999999);
    rank = rank < 1 ? 1 : rank > l->len ? l->len : rank;
    return (double)l->ns[rank - 1] / 1e6;
}

double lat_mean_ms(const lat_log *l)
{
    double sum = 0;
    for (size_t i = 0; i < l->len; i++)
        sum += (double)l->ns[i];
    return l->len ? sum / (double)l->len / 1e6 : 0;
}

int parse_num(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || v < 0)
        return -1;
    *out = v;
    return 0;
}

int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    if (*s == '-')
        return -1;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end)
        return -1;
    *out = v;
    return 0;
}

int load_tokens_file(const char *path, int64_t **tok, size_t *ntok)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "%s: %s: %s\n", bench_prog, path, strerror(errno));
        return 2;
    }
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    size_t n = len > 0 ? (size_t)len / 4 : 0;
    uint8_t *raw = xmalloc(n * 4);
    size_t got = fread(raw, 4, n, f);
    fclose(f);
    int64_t *t = xmalloc(got * sizeof *t);
    for (size_t i = 0; i < got; i++) {
        const uint8_t *p = raw + 4 * i;
        t[i] = (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 |
                         (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
    }
    free(raw);
    *tok = t;
    *ntok = got;
    return 0;
}

int bench_getopt(int argc, char **argv, const struct option *lo, bench_apply_fn apply,
                 void *o, int (*usage)(const char *why))
{
    int c, li = 0;
    while ((c = getopt_long(argc, argv, "", lo, &li)) != -1) {
        if (c == 'h' || c == '?')
            return usage(NULL);
        int rc = apply(o, c, optarg);
        if (rc == 1)
            return 1;
        if (rc) {
            char msg[200];
            snprintf(msg, sizeof msg, "bad value '%s' for --%s", optarg, lo[li].name);
            return usage(msg);
        }
    }
    return optind < argc ? usage("unexpected argument") : 0;
}
