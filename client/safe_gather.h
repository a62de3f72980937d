/* safe_gather.h: gathering rows from a file mapping that another process
 * may shorten under us, without the fault reaching the caller.
 *
 * A same-node client maps the files a server publishes (issue 16). The
 * server never truncates a mapped file, but anyone with write access to
 * its directory can; a read beyond a file's new end raises SIGBUS, which
 * would kill the inference worker. Every read of such a mapping goes
 * through safe_gather: a fault inside it returns -1 (the caller falls back
 * to gRPC and forgets the mapping) instead of killing the process.
 *
 * How: a SIGBUS handler, installed once per process and chained to
 * whatever handler was there before (and put back on top, chained to the
 * newcomer, when a guarded copy finds another one installed since). While a thread is inside safe_gather
 * it publishes the guarded address range in thread-local storage; the
 * handler jumps back (siglongjmp) only for a fault of that thread inside
 * that range, and hands every other fault to the previous handler (or to
 * the default action, which ends the process as before). Internal to
 * libengram: not part of the public API. */
#ifndef ENGRAM_CLIENT_SAFE_GATHER_H
#define ENGRAM_CLIENT_SAFE_GATHER_H

#include <stddef.h>
#include <stdint.h>

/* Installs the handler (once; later calls do nothing). 0, or -1 when
 * sigaction failed (errno set); safe_gather refuses to run without it. */
int safe_gather_setup(void);

/* Runs fn(ctx) with its reads of [base, base + len) guarded: 0, or -1
 * when one faulted (fn was stopped there, so it must hold no lock and own
 * no allocation while it reads the range) or the handler is not
 * installed. fn must not call safe_run. Thread-safe;
 * async-signal-unsafe. */
int safe_run(const uint8_t *base, size_t len, void (*fn)(void *ctx), void *ctx);

/* A gather of random rows is bound by memory latency: a row this many
 * ahead is prefetched while the current one is copied, enough to cover a
 * DRAM miss at the rate rows are copied and few enough to stay within the
 * line fill buffers. */
#define SAFE_GATHER_AHEAD 8

/* Prefetches a row's first cache lines (up to 256 bytes; the hardware's
 * next-line prefetcher follows longer rows). */
static inline void safe_gather_prefetch(const uint8_t *row, size_t row_bytes)
{
    for (size_t o = 0; o < row_bytes && o < 256; o += 64)
        __builtin_prefetch(row + o);
}

/* Copies n rows of row_bytes bytes: row rows[i] of the array at base into
 * out + at[i] * row_bytes (at NULL: out + i * row_bytes). [base, base +
 * len) is the guarded mapping; every rows[i] must already be checked to
 * lie inside it. Rows a few ahead are prefetched, since a gather of random
 * rows is bound by memory latency. Returns 0, or -1 when the mapping
 * faulted (out is then partly written) or the handler is not installed.
 * Thread-safe; async-signal-unsafe. */
int safe_gather(const uint8_t *base, size_t len, const uint64_t *rows, size_t n,
                size_t row_bytes, const uint32_t *at, uint8_t *out);

#endif
