/* reply_budget.c: caps on the reply bytes held for clients (see
 * reply_budget.h for why).
 *
 * How: one mutex over a small chained hash of the connections that hold
 * charges, keyed by gRPC's peer string. An entry lives while its
 * connection has a charged call and is freed with the last one, so the
 * table holds at most one entry per call in flight. The cost per charged
 * call is one peer-string copy (gRPC's), a hash and two short critical
 * sections; a Lookup of 4096 rows takes tens of microseconds, so this is
 * noise (measured in tests/bench/results/lookup.md, issue 11). */
#include "reply_budget.h"

#include <grpc/grpc.h>
#include <grpc/support/alloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hooks.h"
#include "status.h"

#define BUCKETS 1024

typedef struct conn {
    struct conn *next;
    uint64_t bytes;
    uint32_t calls;
    char peer[];
} conn;

static struct {
    reply_budget_options o;
    pthread_mutex_t lock;
    uint64_t total;              /* the ledger; the metric copies it */
    conn *bucket[BUCKETS];
} B = {.lock = PTHREAD_MUTEX_INITIALIZER};

#define REPLY_BUDGET_METRIC(ACTION)                                              \
    ACTION(held, METRIC_GAUGE, "engram_reply_bytes_held", NULL,                   \
           "Reply bytes held for clients that have not read them yet (--max-reply-bytes caps them).")
typedef struct reply_budget_metrics {
    REPLY_BUDGET_METRIC(METRIC_DECLARE)
} reply_budget_metrics;
static reply_budget_metrics M = {REPLY_BUDGET_METRIC(METRIC_INIT)};

static void refresh(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&B.lock);
    METRIC_SET(&M, held, B.total);
    pthread_mutex_unlock(&B.lock);
}

void reply_budget_setup(const reply_budget_options *o)
{
    B.o = *o;
    metric_register((metric *)&M, METRIC_CARDINALITY(M), refresh, NULL);
}

void reply_budget_teardown(void)
{
    metric_deregister(&M);
    /* Every call is freed before teardown, so the table is empty; free any
     * entry all the same rather than leak it. */
    for (size_t i = 0; i < BUCKETS; i++)
        while (B.bucket[i]) {
            conn *n = B.bucket[i]->next;
            free(B.bucket[i]);
            B.bucket[i] = n;
        }
    B.total = 0;
}

static size_t hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;          /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return (size_t)(h % BUCKETS);
}

static conn **find(const char *peer)
{
    conn **p = &B.bucket[hash(peer)];
    while (*p && strcmp((*p)->peer, peer) != 0)
        p = &(*p)->next;
    return p;
}

static void release(server_call *c)
{
    conn *e = c->charge;
    pthread_mutex_lock(&B.lock);
    B.total -= c->charged_bytes;
    e->bytes -= c->charged_bytes;
    if (--e->calls == 0) {
        conn **p = find(e->peer);
        *p = e->next;
        free(e);
    }
    pthread_mutex_unlock(&B.lock);
    c->charge = NULL;
    c->charged_bytes = 0;
}

static void fmt_mib(char *out, size_t n, uint64_t bytes)
{
    snprintf(out, n, "%.1f MiB", (double)bytes / (1 << 20));
}

int reply_budget_take(server_call *c, uint64_t bytes, char *msg, size_t msglen)
{
    if (!bytes || c->charge || (!B.o.max_bytes && !B.o.max_bytes_per_conn))
        return ES_OK;
    char *peer = grpc_call_get_peer(c->call);
    char held[32], cap[32];
    int code = ES_OK;
    pthread_mutex_lock(&B.lock);
    conn **p = find(peer);
    uint64_t on_conn = *p ? (*p)->bytes : 0;
    if (B.o.max_bytes && B.total && B.total + bytes > B.o.max_bytes) {
        fmt_mib(held, sizeof held, B.total);
        fmt_mib(cap, sizeof cap, B.o.max_bytes);
        snprintf(msg, msglen,
                 "replies not yet read by their clients hold %s; a reply of %llu bytes would pass "
                 "the server's %s (--max-reply-bytes); retry once clients have read them",
                 held, (unsigned long long)bytes, cap);
        code = ES_RESOURCE_EXHAUSTED;
        hooks_refused(REFUSAL_REPLY_BYTES);
    } else if (B.o.max_bytes_per_conn && on_conn && on_conn + bytes > B.o.max_bytes_per_conn) {
        fmt_mib(held, sizeof held, on_conn);
        fmt_mib(cap, sizeof cap, B.o.max_bytes_per_conn);
        snprintf(msg, msglen,
                 "replies not yet read on this connection hold %s; a reply of %llu bytes would "
                 "pass the %s per connection (--max-reply-bytes-per-conn); read the replies "
                 "in flight first",
                 held, (unsigned long long)bytes, cap);
        code = ES_RESOURCE_EXHAUSTED;
        hooks_refused(REFUSAL_REPLY_BYTES_PER_CONN);
    } else {
        conn *e = *p;
        if (!e && (e = malloc(sizeof *e + strlen(peer) + 1)) != NULL) {
            e->next = NULL;
            e->bytes = 0;
            e->calls = 0;
            strcpy(e->peer, peer);
            *p = e;
        }
        if (e) {
            e->bytes += bytes;
            e->calls++;
            B.total += bytes;
            c->charge = e;
            c->charged_bytes = bytes;
            c->release = release;
        } else {
            snprintf(msg, msglen, "out of memory accounting a reply of %llu bytes",
                     (unsigned long long)bytes);
            code = ES_RESOURCE_EXHAUSTED;
        }
    }
    pthread_mutex_unlock(&B.lock);
    gpr_free(peer);
    return code;
}
