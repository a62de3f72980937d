/* bench_util.h: helpers shared by the benchmark tools in tests/bench
 * (engram-bench, engram-prefetch-bench, engram-decode-loop-bench,
 * engram-cluster-bench, engram-compare-bench, engram-rocksdb-tuning-bench):
 * a monotonic clock and a sleep until a point of it, allocation that exits
 * on failure, RPC error reporting, a growable latency log with nearest-rank
 * percentiles and its mean, number parsing, the long-option loop and the
 * int32 token-file loader. Messages are prefixed with bench_prog, which
 * each tool defines as its executable's name. */
#ifndef ENGRAM_BENCH_UTIL_H
#define ENGRAM_BENCH_UTIL_H

#include <getopt.h>
#include <stddef.h>
#include <stdint.h>

#include "engram/engram.h"

/* The tool's name, defined by each tool, e.g. "engram-bench". */
extern const char bench_prog[];

typedef struct lat_log {
    uint64_t *ns;
    size_t len, cap;
} lat_log;

uint64_t bench_now_ns(void);
/* Sleeps until bench_now_ns() reaches t (resumed after a signal). */
void bench_sleep_until(uint64_t t);
void *xmalloc(size_t n);
/* Prints "PROG: what: STATUS: message" to stderr; returns 2. */
int rpc_fail(const char *what, int rc, const engram_error *err);

void lat_push(lat_log *l, uint64_t ns);
int cmp_u64(const void *a, const void *b);
void lat_sort(lat_log *l);
/* Nearest-rank percentile of a sorted log, in ms. */
double pct_ms(const lat_log *l, double p);
/* Mean of a log, in ms; 0 when empty. */
double lat_mean_ms(const lat_log *l);

/* A non-negative decimal number; 0 ok, -1 bad. */
int parse_num(const char *s, double *out);
/* An unsigned decimal integer; 0 ok, -1 bad. */
int parse_u64(const char *s, uint64_t *out);

/* Applies one option c (optarg arg) to the tool's options o: 0 applied,
 * -1 a bad value, 1 stop parsing here (a one-shot query). */
typedef int (*bench_apply_fn)(void *o, int c, const char *arg);
/* The option loop every tool runs: getopt_long over the long options lo
 * from optind on. --help or an unknown option returns usage(NULL); a value
 * apply rejects returns usage("bad value 'V' for --NAME"); an argument left
 * over returns usage("unexpected argument"). Returns 0 when all applied,
 * 1 when apply asked to stop, else what usage returned. */
int bench_getopt(int argc, char **argv, const struct option *lo, bench_apply_fn apply,
                 void *o, int (*usage)(const char *why));

/* Reads int32 LE token ids from path into *tok (as int64); 0 ok, 2 on an
 * open error (reported). */
int load_tokens_file(const char *path, int64_t **tok, size_t *ntok);

#endif
