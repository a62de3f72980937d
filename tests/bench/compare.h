/* compare.h: the contract between engram-compare-bench's driver
 * (compare_bench.c) and its systems (compare_engram.c, compare_redis.c,
 * compare_rocksdb.c, compare_memcpy.c).
 *
 * Every system holds the same synthetic rows: row r of a table made with
 * seed S is synthetic_row(S, r, out, row_bytes) (common/synthetic.h). The
 * driver owns the workloads (uniform, Zipf(1.0), the real token workload);
 * a system owns its loop, because only it knows how to keep calls in flight
 * (gRPC async calls, Redis pipelining, a synchronous in-process MultiGet).
 *
 * One measured cell = one call of cmp_system.run: the system asks the driver
 * for batches with cmp_next_batch, keeps up to r->inflight calls outstanding
 * for r->warmup + r->seconds, and records, for every call that completed
 * after the warm-up, its latency (from just before it was issued to the
 * moment its result was in the caller's buffer) with lat_push(&r->lat, ns),
 * and adds its rows to r->rows. r->elapsed_s is the measured time (after
 * warm-up). Before the timed loop a system checks the bytes of
 * r->verify_calls batches (not timed) against synthetic_row and fails the
 * cell on the first mismatch, naming the row.
 *
 * The timed loop's bookkeeping is cmp_clock / cmp_record below, so every
 * system counts the same calls the same way.
 *
 * Errors: run returns 0, or -1 after writing a one-line reason into
 * r->err; the driver prints it in the table's place and goes on. */
#ifndef ENGRAM_BENCH_COMPARE_H
#define ENGRAM_BENCH_COMPARE_H

#include <stddef.h>
#include <stdint.h>

#include "bench_util.h"

typedef struct cmp_workload cmp_workload;   /* owned by the driver */

typedef struct cmp_run {
    /* set by the driver */
    const cmp_workload *wl;
    size_t next;            /* cursor into wl's stream, moved by cmp_next_batch */
    size_t batch;           /* rows per call */
    size_t inflight;        /* calls kept outstanding (1 = synchronous) */
    double seconds, warmup;
    uint64_t seed;          /* the synthetic seed of the table */
    uint32_t row_bytes;
    size_t verify_calls;
    /* filled by the system */
    lat_log lat;            /* ns per measured call */
    uint64_t rows;          /* rows of measured calls */
    double elapsed_s;
    char err[256];
} cmp_run;

/* The next batch of the workload, r->batch row ids: a pointer into the
 * driver's pre-generated stream, valid until the driver frees the workload.
 * Thread-compatible (one caller at a time); each call advances the stream,
 * wrapping at its end. */
const uint64_t *cmp_next_batch(cmp_run *r);

/* The clock of one cell. A system calls cmp_clock_start just before its
 * first timed call, cmp_record for every call that completes (it returns 0
 * once the cell's time is up: stop issuing, drain what is outstanding
 * without recording it) and cmp_clock_end with the time the last recorded
 * call completed. Calls that complete during the warm-up are not recorded. */
typedef struct cmp_clock {
    uint64_t t_start;       /* end of the warm-up (monotonic ns) */
    uint64_t t_end;
    uint64_t last;          /* completion time of the last recorded call */
} cmp_clock;

void cmp_clock_start(const cmp_run *r, cmp_clock *c);
/* Records a call of n rows that took lat_ns and completed at now (both
 * from bench_now_ns); 1 while the cell goes on, 0 when its time is up.
 * When no call has been recorded by the end of the cell's time, the first
 * one to complete after it still is, so a cell whose calls outlast it
 * reports a figure resting on one call rather than none. */
int cmp_record(cmp_run *r, cmp_clock *c, uint64_t now, uint64_t lat_ns, size_t n);
void cmp_clock_end(cmp_run *r, const cmp_clock *c);

/* Checks n rows of `got` (n * row_bytes bytes, in the order of `rows`)
 * against synthetic_row(seed, row); 0 equal, -1 after writing the first
 * bad row into r->err. */
int cmp_verify(cmp_run *r, const uint64_t *rows, size_t n, const uint8_t *got);

typedef struct cmp_system {
    const char *name;       /* column label, e.g. "engram", "redis" */
    void *ctx;
    int (*run)(void *ctx, cmp_run *r);
    void (*close)(void *ctx);
} cmp_system;

/* Each returns 0 and fills *out, or -1 with a reason in err. */

/* libengram against ADDR (engram-server or engram-floor-server, which speak
 * the same Lookup protocol), table TABLE; `name` labels the column. */
int cmp_engram_open(const char *name, const char *addr, const char *table, cmp_system *out,
                    char *err, size_t errlen);

/* Redis at HOST:PORT through hiredis; keys are "<prefix><row>" with row in
 * decimal, values the row bytes. cmp_redis_load fills the rows [0, rows) of
 * seed with pipelined MSETs (not timed; done once by the driver). MGET of a
 * batch, calls pipelined up to r->inflight. Built only when CMake found
 * hiredis (ENGRAM_HAVE_HIREDIS). */
int cmp_redis_open(const char *hostport, const char *prefix, cmp_system *out, char *err,
                   size_t errlen);
int cmp_redis_load(cmp_system *sys, uint64_t seed, uint64_t rows, uint32_t row_bytes, char *err,
                   size_t errlen);

/* In-process RocksDB at DIR, created (rows [0, rows) of seed, written as SST
 * files and ingested) when absent, with the options of the server's rows
 * column family (block size, bloom filter, no compression, index and
 * filter blocks in a cache of cache_bytes made by store_tuning_cache).
 * One rocksdb_batched_multi_get_cf with sorted keys per batch,
 * synchronous (r->inflight ignored). */
int cmp_rocksdb_open(const char *dir, uint64_t seed, uint64_t rows, uint32_t row_bytes,
                     uint64_t cache_bytes, cmp_system *out, char *err, size_t errlen);

/* In-process memcpy gather from a dense array of rows [0, rows) of seed:
 * the floor of the machine (r->inflight ignored). */
int cmp_memcpy_open(uint64_t seed, uint64_t rows, uint32_t row_bytes, cmp_system *out, char *err,
                    size_t errlen);

#endif
