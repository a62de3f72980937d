/* compare_redis.c: Redis through hiredis for engram-compare-bench (built
 * only when CMake finds hiredis).
 *
 * How: one blocking hiredis connection. A call is one MGET of the batch's
 * keys ("<prefix><row>", row in decimal); up to r->inflight MGETs are
 * pipelined: K are appended, then the loop reads the oldest reply (hiredis
 * writes everything appended so far before it reads), copies its values into
 * that slot's buffer and appends the slot's next MGET. A call's latency runs
 * from the append to the moment its reply is parsed and copied. Key
 * formatting, RESP encoding and reply parsing are all inside the timed path,
 * as the client's packing and decoding are for engram.
 *
 * Loading (cmp_redis_load, untimed) sends MSETs of 512 rows, 32 pipelined. */
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compare.h"
#include "synthetic.h"

#define KEY_MAX 48               /* prefix (<= 24) + 20 digits */
#define LOAD_CHUNK 512
#define LOAD_PIPELINE 32

typedef struct rd_ctx {
    redisContext *c;
    char prefix[25];
    int broken;                  /* a failed cell left replies unread */
} rd_ctx;

/* One pipelined MGET: its keys (argv[0] is "MGET"), rows and output. */
typedef struct rd_slot {
    const uint64_t *rows;
    char *keybuf;
    const char **argv;
    size_t *argl;
    uint8_t *out;
    uint64_t t0;
} rd_slot;

/* Writes prefix + decimal row into dst; returns its length. */
static size_t format_key(char *dst, const char *prefix, uint64_t row)
{
    size_t p = strlen(prefix), n = 0;
    char digits[20];
    memcpy(dst, prefix, p);
    do {
        digits[n++] = (char)('0' + row % 10);
        row /= 10;
    } while (row);
    for (size_t i = 0; i < n; i++)
        dst[p + i] = digits[n - 1 - i];
    return p + n;
}

static int rd_fail(char *err, size_t errlen, const redisContext *c, const char *what)
{
    snprintf(err, errlen, "redis: %s: %s", what, c->err ? c->errstr : "unexpected reply");
    return -1;
}

static void slot_init(rd_slot *s, size_t n, uint32_t row_bytes)
{
    s->keybuf = xmalloc(n * KEY_MAX);
    s->argv = xmalloc((n + 1) * sizeof *s->argv);
    s->argl = xmalloc((n + 1) * sizeof *s->argl);
    s->out = xmalloc(n * row_bytes);
    s->argv[0] = "MGET";
    s->argl[0] = 4;
}

static void slot_free(rd_slot *s)
{
    free(s->keybuf);
    free(s->argv);
    free(s->argl);
    free(s->out);
}

static int slot_send(rd_ctx *x, cmp_run *r, rd_slot *s)
{
    s->rows = cmp_next_batch(r);
    s->t0 = bench_now_ns();
    for (size_t i = 0; i < r->batch; i++) {
        char *k = s->keybuf + i * KEY_MAX;
        s->argv[i + 1] = k;
        s->argl[i + 1] = format_key(k, x->prefix, s->rows[i]);
    }
    if (redisAppendCommandArgv(x->c, (int)r->batch + 1, s->argv, s->argl) != REDIS_OK)
        return rd_fail(r->err, sizeof r->err, x->c, "MGET");
    return 0;
}

/* Reads the slot's reply and copies its values into s->out. */
static int slot_recv(rd_ctx *x, cmp_run *r, rd_slot *s)
{
    redisReply *rep = NULL;
    if (redisGetReply(x->c, (void **)&rep) != REDIS_OK || !rep)
        return rd_fail(r->err, sizeof r->err, x->c, "MGET reply");
    int rc = rep->type == REDIS_REPLY_ARRAY && rep->elements == r->batch ? 0 : -1;
    for (size_t i = 0; rc == 0 && i < r->batch; i++) {
        const redisReply *e = rep->element[i];
        if (e->type != REDIS_REPLY_STRING || e->len != r->row_bytes)
            rc = -1;
        else
            memcpy(s->out + i * r->row_bytes, e->str, r->row_bytes);
    }
    if (rc)
        snprintf(r->err, sizeof r->err, "redis: MGET reply is not %zu values of %u bytes", r->batch,
                 r->row_bytes);
    freeReplyObject(rep);
    return rc;
}

static int verify(rd_ctx *x, cmp_run *r, rd_slot *s)
{
    for (size_t i = 0; i < r->verify_calls; i++)
        if (slot_send(x, r, s) || slot_recv(x, r, s) || cmp_verify(r, s->rows, r->batch, s->out))
            return -1;
    return 0;
}

/* K MGETs in flight; after the clock runs out the rest are read unrecorded. */
static int timed(rd_ctx *x, cmp_run *r, rd_slot *sl, size_t k)
{
    cmp_clock c;
    cmp_clock_start(r, &c);
    for (size_t i = 0; i < k; i++)
        if (slot_send(x, r, &sl[i]))
            return -1;
    size_t i = 0, outstanding = k;
    for (int go = 1; outstanding; i = (i + 1) % k) {
        if (slot_recv(x, r, &sl[i]))
            return -1;
        outstanding--;
        uint64_t now = bench_now_ns();
        go = go && cmp_record(r, &c, now, now - sl[i].t0, r->batch);
        if (go && slot_send(x, r, &sl[i]))
            return -1;
        outstanding += go;
    }
    cmp_clock_end(r, &c);
    return 0;
}

static int rd_run(void *ctx, cmp_run *r)
{
    rd_ctx *x = ctx;
    size_t k = r->inflight ? r->inflight : 1;
    if (x->broken) {
        snprintf(r->err, sizeof r->err, "redis: connection unusable after an earlier failure");
        return -1;
    }
    rd_slot *sl = calloc(k, sizeof *sl);
    if (!sl)
        return -1;
    for (size_t i = 0; i < k; i++)
        slot_init(&sl[i], r->batch, r->row_bytes);
    int rc = verify(x, r, &sl[0]);
    if (rc == 0)
        rc = timed(x, r, sl, k);
    for (size_t i = 0; i < k; i++)
        slot_free(&sl[i]);
    free(sl);
    x->broken = rc != 0;
    return rc;
}

static void rd_close(void *ctx)
{
    rd_ctx *x = ctx;
    redisFree(x->c);
    free(x);
}

int cmp_redis_open(const char *hostport, const char *prefix, cmp_system *out, char *err,
                   size_t errlen)
{
    char host[256];
    const char *colon = strrchr(hostport, ':');
    if (!colon || (size_t)(colon - hostport) >= sizeof host || strlen(prefix) > 24) {
        snprintf(err, errlen, "redis: bad address '%s' or prefix", hostport);
        return -1;
    }
    memcpy(host, hostport, (size_t)(colon - hostport));
    host[colon - hostport] = '\0';
    rd_ctx *x = calloc(1, sizeof *x);
    x->c = redisConnect(host, atoi(colon + 1));
    if (!x->c || x->c->err) {
        snprintf(err, errlen, "redis at %s: %s", hostport, x->c ? x->c->errstr : "no memory");
        if (x->c)
            redisFree(x->c);
        free(x);
        return -1;
    }
    snprintf(x->prefix, sizeof x->prefix, "%s", prefix);
    *out = (cmp_system){.name = "redis", .ctx = x, .run = rd_run, .close = rd_close};
    return 0;
}

/* Appends one MSET of rows [first, first + n). */
static int append_mset(rd_ctx *x, rd_slot *s, uint64_t seed, uint64_t first, size_t n,
                       uint32_t row_bytes)
{
    s->argv[0] = "MSET";
    s->argl[0] = 4;
    for (size_t i = 0; i < n; i++) {
        char *k = s->keybuf + i * KEY_MAX;
        uint8_t *v = s->out + i * row_bytes;
        synthetic_row(seed, first + i, v, row_bytes);
        s->argv[1 + 2 * i] = k;
        s->argl[1 + 2 * i] = format_key(k, x->prefix, first + i);
        s->argv[2 + 2 * i] = (const char *)v;
        s->argl[2 + 2 * i] = row_bytes;
    }
    return redisAppendCommandArgv(x->c, (int)(1 + 2 * n), s->argv, s->argl) == REDIS_OK ? 0 : -1;
}

static int read_ok(rd_ctx *x)
{
    redisReply *rep = NULL;
    int rc = redisGetReply(x->c, (void **)&rep) == REDIS_OK && rep &&
             rep->type == REDIS_REPLY_STATUS ? 0 : -1;
    if (rep)
        freeReplyObject(rep);
    return rc;
}

int cmp_redis_load(cmp_system *sys, uint64_t seed, uint64_t rows, uint32_t row_bytes, char *err,
                   size_t errlen)
{
    rd_ctx *x = sys->ctx;
    rd_slot s;   /* hiredis copies a command when it is appended: one slot will do */
    slot_init(&s, 2 * LOAD_CHUNK, row_bytes);
    int rc = 0;
    size_t pending = 0;
    for (uint64_t first = 0; first < rows && rc == 0; first += LOAD_CHUNK) {
        size_t n = rows - first < LOAD_CHUNK ? (size_t)(rows - first) : LOAD_CHUNK;
        if (pending == LOAD_PIPELINE) {
            rc = read_ok(x);
            pending--;
        }
        if (rc == 0 && (rc = append_mset(x, &s, seed, first, n, row_bytes)) == 0)
            pending++;
    }
    while (rc == 0 && pending--)
        rc = read_ok(x);
    slot_free(&s);
    return rc ? rd_fail(err, errlen, x->c, "loading with MSET") : 0;
}
