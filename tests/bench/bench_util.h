/* bench_util.h: helpers shared by the benchmark tools in tests/bench
 * (engram-bench, engram-prefetch-bench, engram-cluster-bench): a monotonic
 * clock, allocation that exits on failure, RPC error reporting, a growable
 * latency log with nearest-rank percentiles, number parsing and the int32
 * token-file loader. Messages are prefixed with bench_prog, which each tool
 * defines as its executable's name. */
#ifndef ENGRAM_BENCH_UTIL_H
#define ENGRAM_BENCH_UTIL_H

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
void *xmalloc(size_t n);
/* Prints "PROG: what: STATUS: message" to stderr; returns 2. */
int rpc_fail(const char *what, int rc, const engram_error *err);

void lat_push(lat_log *l, uint64_t ns);
int cmp_u64(const void *a, const void *b);
void lat_sort(lat_log *l);
/* Nearest-rank percentile of a sorted log, in ms. */
double pct_ms(const lat_log *l, double p);

/* A non-negative decimal number; 0 ok, -1 bad. */
int parse_num(const char *s, double *out);
/* An unsigned decimal integer; 0 ok, -1 bad. */
int parse_u64(const char *s, uint64_t *out);

/* Reads int32 LE token ids from path into *tok (as int64); 0 ok, 2 on an
 * open error (reported). */
int load_tokens_file(const char *path, int64_t **tok, size_t *ntok);

#endif
