/* compare_engram.c: the libengram system of engram-compare-bench, used for
 * engram-server and for engram-floor-server (both speak engram.v1.Lookup).
 *
 * How: one engram_client; K slots, each an asynchronous lookup
 * (engram_lookup_start) with its own output buffer. The loop waits on the
 * oldest slot (round robin) and restarts it with the next batch at once, so
 * K calls stay in flight, as an inference worker's prefetcher would keep
 * them. A call's latency runs from just before its start to the moment the
 * waiter sees it complete. Before the clock starts, r->verify_calls calls
 * go through the same slots and their bytes are checked. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compare.h"
#include "engram/engram.h"

typedef struct eng_ctx {
    engram_client *client;
    char table[129];
} eng_ctx;

typedef struct eng_slot {
    const uint64_t *rows;
    uint8_t *out;
    engram_lookup *h;
    uint64_t t0;
} eng_slot;

static int eng_fail(cmp_run *r, const char *what, int rc, const engram_error *e)
{
    snprintf(r->err, sizeof r->err, "%s: %s: %.200s", what, engram_status_name(rc), e->message);
    return -1;
}

static int slot_start(eng_ctx *x, cmp_run *r, eng_slot *s)
{
    engram_error e = {0};
    s->rows = cmp_next_batch(r);
    s->t0 = bench_now_ns();
    int rc = engram_lookup_start(x->client, x->table, s->rows, r->batch, s->out,
                                 r->batch * r->row_bytes, &s->h, &e);
    return rc ? eng_fail(r, "lookup start", rc, &e) : 0;
}

/* Waits for the slot's call, frees its handle, checks the row size. */
static int slot_finish(cmp_run *r, eng_slot *s)
{
    engram_error e = {0};
    int rc = engram_lookup_wait(s->h, -1, &e);
    uint32_t rb = 0;
    if (rc == ENGRAM_OK)
        engram_lookup_result(s->h, &rb, NULL);
    engram_lookup_free(s->h);
    s->h = NULL;
    if (rc)
        return eng_fail(r, "lookup", rc, &e);
    if (rb != r->row_bytes) {
        snprintf(r->err, sizeof r->err, "reply has %u-byte rows, want %u", rb, r->row_bytes);
        return -1;
    }
    return 0;
}

/* Waits for and frees what is still in flight once the cell is over (not
 * cancelled: a cancel storm would only add noise to the next cell). */
static void drain(eng_slot *sl, size_t k)
{
    for (size_t i = 0; i < k; i++) {
        if (sl[i].h)
            engram_lookup_wait(sl[i].h, -1, NULL);
        engram_lookup_free(sl[i].h);
        sl[i].h = NULL;
    }
}

static int verify(eng_ctx *x, cmp_run *r, eng_slot *s)
{
    for (size_t i = 0; i < r->verify_calls; i++)
        if (slot_start(x, r, s) || slot_finish(r, s) || cmp_verify(r, s->rows, r->batch, s->out))
            return -1;
    return 0;
}

static int timed(eng_ctx *x, cmp_run *r, eng_slot *sl, size_t k)
{
    cmp_clock c;
    cmp_clock_start(r, &c);
    for (size_t i = 0; i < k; i++)
        if (slot_start(x, r, &sl[i]))
            return -1;
    for (size_t i = 0;; i = (i + 1) % k) {
        if (slot_finish(r, &sl[i]))
            return -1;
        uint64_t now = bench_now_ns();
        if (!cmp_record(r, &c, now, now - sl[i].t0, r->batch))
            break;
        if (slot_start(x, r, &sl[i]))
            return -1;
    }
    cmp_clock_end(r, &c);
    return 0;
}

static int eng_run(void *ctx, cmp_run *r)
{
    eng_ctx *x = ctx;
    size_t k = r->inflight ? r->inflight : 1;
    eng_slot *sl = calloc(k, sizeof *sl);
    for (size_t i = 0; sl && i < k; i++)
        sl[i].out = xmalloc(r->batch * r->row_bytes);
    int rc = sl ? verify(x, r, &sl[0]) : -1;
    if (rc == 0)
        rc = timed(x, r, sl, k);
    if (sl)
        drain(sl, k);
    for (size_t i = 0; sl && i < k; i++)
        free(sl[i].out);
    free(sl);
    return rc;
}

static void eng_close(void *ctx)
{
    eng_ctx *x = ctx;
    engram_client_close(x->client);
    free(x);
}

int cmp_engram_open(const char *name, const char *addr, const char *table, cmp_system *out,
                    char *err, size_t errlen)
{
    eng_ctx *x = calloc(1, sizeof *x);
    engram_error e = {0};
    engram_client_options o;
    engram_client_options_init(&o);
    o.deadline_ms = 60000;   /* a 65536-row call on a busy 2-core machine */
    int rc = x ? engram_client_open(addr, &o, &x->client, &e) : ENGRAM_RESOURCE_EXHAUSTED;
    if (rc) {
        snprintf(err, errlen, "%s at %s: %s: %s", name, addr, engram_status_name(rc), e.message);
        free(x);
        return -1;
    }
    snprintf(x->table, sizeof x->table, "%s", table);
    *out = (cmp_system){.name = name, .ctx = x, .run = eng_run, .close = eng_close};
    return 0;
}
