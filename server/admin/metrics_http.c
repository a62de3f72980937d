/* metrics_http.c: GET /metrics in Prometheus' text exposition format
 * (version 0.0.4), from stats.c's entries and process figures.
 *
 * The listening socket is bound here, not by libmicrohttpd, so a refused
 * address comes back with the system's reason (EADDRINUSE, ...) instead of
 * a NULL daemon; libmicrohttpd then runs the connections on its internal
 * polling thread (epoll, non-blocking: a slow client never blocks it).
 *
 * Slow clients (16 connections trickling a byte every 5 s used to hold
 * every slot, so every scrape timed out). Each connection is bounded four
 * ways: HTTP_MAX_CONNS in all and HTTP_MAX_CONNS_PER_IP from one address
 * (so a client elsewhere cannot take the slots a Prometheus needs),
 * HTTP_IDLE_S without a byte, and HTTP_REQUEST_S for a whole request:
 * libmicrohttpd's timeout is idle time only, so a byte every second would
 * hold a slot forever. The last is kept here: a connection's deadline is
 * set when it opens and again when each request completes (keep-alive),
 * and a reaper thread shuts a connection past it down (shutdown(2); the
 * polling thread then sees the end and closes it). The fd is shut down
 * only under R.mu while its slot is filled, and libmicrohttpd notifies the
 * close (which empties the slot under R.mu) before it closes the fd, so a
 * reused fd number is never touched. HTTP_MEMORY_PER_CONN bounds what one
 * connection's request may buffer (a GET's headers fit many times over).
 *
 * Names follow Prometheus conventions: base units (seconds, bytes), a
 * `_total` suffix on counters, HELP and TYPE before every family's
 * samples, label values escaped. A histogram's `_count` is the sum of its
 * buckets, read once, so `le="+Inf"` always equals it. */
#include "metrics_http.h"

#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "health.h"
#include "log.h"
#include "security.h"
#include "stats.h"
#include "status.h"

#define HTTP_MAX_CONNS 64
#define HTTP_MAX_CONNS_PER_IP 8
#define HTTP_IDLE_S 3
#define HTTP_REQUEST_S 5
#define HTTP_MEMORY_PER_CONN (16 * 1024)

static struct MHD_Daemon *D;

/* One open connection, for the reaper. */
typedef struct conn_slot {
    struct MHD_Connection *conn;     /* NULL: free */
    int fd;
    uint64_t deadline_ns;
    int cut;                         /* shut down already */
} conn_slot;

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stop;
    int started;
    pthread_t thread;
    conn_slot slots[HTTP_MAX_CONNS];
} R = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

/* ---- text buffer ------------------------------------------------------------ */

typedef struct sbuf {
    char *p;
    size_t len, cap;
    int oom;
} sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void sb_printf(sbuf *b, const char *fmt, ...)
{
    for (int tries = 0; tries < 2 && !b->oom; tries++) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = 1;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = (b->cap + (size_t)n + 1) * 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
}

/* A label value, escaped as the format requires: \\, \" and \n. */
static void sb_label(sbuf *b, const char *v)
{
    for (; *v; v++) {
        if (*v == '\\')
            sb_printf(b, "\\\\");
        else if (*v == '"')
            sb_printf(b, "\\\"");
        else if (*v == '\n')
            sb_printf(b, "\\n");
        else
            sb_printf(b, "%c", *v);
    }
}

static void family(sbuf *b, const char *name, const char *type, const char *help)
{
    sb_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void sample_u64(sbuf *b, const char *name, uint64_t v)
{
    sb_printf(b, "%s %llu\n", name, (unsigned long long)v);
}

/* ---- entries ---------------------------------------------------------------- */

typedef struct views {
    stats_entry_view *v;
    size_t n, cap;
    int oom;
} views;

static void collect(const stats_entry_view *v, void *ctx)
{
    views *vs = ctx;
    if (vs->n == vs->cap) {
        size_t cap = vs->cap ? vs->cap * 2 : 16;
        stats_entry_view *p = realloc(vs->v, cap * sizeof *p);
        if (!p) {
            vs->oom = 1;
            return;
        }
        vs->v = p;
        vs->cap = cap;
    }
    vs->v[vs->n++] = *v;
}

static void histogram(sbuf *b, const char *name, const char *label, const views *vs)
{
    for (size_t i = 0; i < vs->n; i++) {
        const stats_entry_view *v = &vs->v[i];
        uint64_t cum = 0;
        for (int k = 0; k <= STATS_PROM_BUCKETS; k++) {
            cum += v->prom_buckets[k];
            sb_printf(b, "%s_bucket{%s=\"", name, label);
            sb_label(b, v->name);
            if (k < STATS_PROM_BUCKETS)
                sb_printf(b, "\",le=\"%g\"} %llu\n", stats_prom_le[k], (unsigned long long)cum);
            else
                sb_printf(b, "\",le=\"+Inf\"} %llu\n", (unsigned long long)cum);
        }
        sb_printf(b, "%s_sum{%s=\"", name, label);
        sb_label(b, v->name);
        sb_printf(b, "\"} %.9f\n%s_count{%s=\"", v->prom_sum_s, name, label);
        sb_label(b, v->name);
        sb_printf(b, "\"} %llu\n", (unsigned long long)v->prom_count);
    }
}

static void rpc_families(sbuf *b, const views *vs)
{
    family(b, "engram_calls_total", "counter", "gRPC calls finished, by method and status code.");
    for (size_t i = 0; i < vs->n; i++) {
        for (int c = 0; c < STATS_CODES; c++) {
            if (!vs->v[i].codes[c])
                continue;
            sb_printf(b, "engram_calls_total{method=\"");
            sb_label(b, vs->v[i].name);
            sb_printf(b, "\",code=\"%s\"} %llu\n", es_code_name(c),
                      (unsigned long long)vs->v[i].codes[c]);
        }
    }
    family(b, "engram_call_duration_seconds", "histogram",
           "gRPC call latency from arrival to final status, by method.");
    histogram(b, "engram_call_duration_seconds", "method", vs);
}

/* One counter per table: the value at `off` bytes into its view. */
static void table_counter(sbuf *b, const char *name, const char *help, const views *vs,
                          size_t off)
{
    family(b, name, "counter", help);
    for (size_t i = 0; i < vs->n; i++) {
        sb_printf(b, "%s{table=\"", name);
        sb_label(b, vs->v[i].name);
        sb_printf(b, "\"} %llu\n", (unsigned long long)*(const uint64_t *)((const char *)&vs->v[i] + off));
    }
}

static void table_families(sbuf *b, const views *vs)
{
    static const char *const tiers[STATS_TIERS] = {"resident", "hot", "rocksdb"};
    table_counter(b, "engram_lookup_calls_total", "Lookup calls of a known table.", vs,
                  offsetof(stats_entry_view, calls));
    table_counter(b, "engram_lookup_rows_total", "Rows returned by lookups.", vs,
                  offsetof(stats_entry_view, rows));
    table_counter(b, "engram_lookup_bytes_total", "Row bytes returned by lookups.", vs,
                  offsetof(stats_entry_view, bytes));
    family(b, "engram_lookup_errors_total", "counter", "Failed lookups of a known table, by status code.");
    for (size_t i = 0; i < vs->n; i++) {
        for (int c = 1; c < STATS_CODES; c++) {
            if (!vs->v[i].codes[c])
                continue;
            sb_printf(b, "engram_lookup_errors_total{table=\"");
            sb_label(b, vs->v[i].name);
            sb_printf(b, "\",code=\"%s\"} %llu\n", es_code_name(c),
                      (unsigned long long)vs->v[i].codes[c]);
        }
    }
    family(b, "engram_tier_rows_total", "counter",
           "Rows served by each tier: resident arrays, the hot-row cache, RocksDB.");
    for (size_t i = 0; i < vs->n; i++) {
        for (int t = 0; t < STATS_TIERS; t++) {
            sb_printf(b, "engram_tier_rows_total{table=\"");
            sb_label(b, vs->v[i].name);
            sb_printf(b, "\",tier=\"%s\"} %llu\n", tiers[t],
                      (unsigned long long)vs->v[i].tier_rows[t]);
        }
    }
    family(b, "engram_lookup_duration_seconds", "histogram",
           "Lookup latency from arrival to the reply being ready, by table.");
    histogram(b, "engram_lookup_duration_seconds", "table", vs);
}

/* ---- process figures -------------------------------------------------------- */

static void gauge(sbuf *b, const char *name, const char *help, uint64_t v)
{
    family(b, name, "gauge", help);
    sample_u64(b, name, v);
}

static void counter(sbuf *b, const char *name, const char *help, uint64_t v)
{
    family(b, name, "counter", help);
    sample_u64(b, name, v);
}

/* The hot-row cache: made at the first RocksDB-tier lookup, so its row
 * size and capacity read 0 until then. */
static void hot_cache_families(sbuf *b, const store_hot_stats *h)
{
    gauge(b, "engram_hot_cache_budget_bytes",
          "The hot-row cache's budget (--hot-cache-bytes); 0: off.", h->budget_bytes);
    gauge(b, "engram_hot_cache_row_bytes",
          "The row size the hot-row cache was made for (0 until made).", h->row_bytes);
    gauge(b, "engram_hot_cache_capacity_rows", "Rows the hot-row cache can hold.",
          h->capacity_rows);
    gauge(b, "engram_hot_cache_rows", "Rows the hot-row cache holds now.", h->rows_held);
    counter(b, "engram_hot_cache_hits_total", "Hot-row cache lookups that found the row.",
            h->counters.hits);
    counter(b, "engram_hot_cache_misses_total", "Hot-row cache lookups that did not.",
            h->counters.misses);
    counter(b, "engram_hot_cache_inserts_total", "Rows put into the hot-row cache.",
            h->counters.inserts);
    counter(b, "engram_hot_cache_evictions_total", "Rows evicted from the hot-row cache.",
            h->counters.evictions);
    counter(b, "engram_hot_cache_promotions_total",
            "Rows moved from the hot-row cache's small FIFO to its main one.",
            h->counters.promotions);
    counter(b, "engram_hot_cache_ghost_hits_total",
            "Misses on rows recently evicted from the small FIFO (inserted into main).",
            h->counters.ghost_hits);
}

/* Reloads (SIGHUP) and the certificate's expiry, for alerts on both: a
 * rotation that keeps failing, or a certificate about to run out. */
static void security_families(sbuf *b)
{
    uint64_t ok, failed;
    security_reload_counts(&ok, &failed);
    family(b, "engram_reloads_total", "counter",
           "SIGHUP reloads of the TLS and token files, by result.");
    sb_printf(b, "engram_reloads_total{result=\"ok\"} %llu\n", (unsigned long long)ok);
    sb_printf(b, "engram_reloads_total{result=\"failed\"} %llu\n", (unsigned long long)failed);
    int64_t na = security_cert_not_after();
    if (na)
        gauge(b, "engram_tls_cert_not_after_seconds",
              "When the serving TLS certificate expires (Unix time).", (uint64_t)na);
}

static void process_families(sbuf *b, const stats_process *p)
{
    family(b, "engram_build_info", "gauge", "The running build; always 1.");
    sb_printf(b, "engram_build_info{version=\"");
    sb_label(b, ENGRAM_VERSION);
    sb_printf(b, "\"} 1\n");
    family(b, "engram_uptime_seconds", "gauge", "Seconds since the server started.");
    sb_printf(b, "engram_uptime_seconds %.3f\n", (double)p->uptime_ms / 1000.0);
    gauge(b, "engram_calls_in_flight", "gRPC calls being served now.", p->in_flight);
    gauge(b, "engram_draining", "1 while the server is draining.", (uint64_t)p->draining);
    /* Health's own answer, so shutdown's grace period reads 0 too: what
     * clients and balancers see, for alerts on ejected replicas. */
    gauge(b, "engram_serving", "1 while health service \"\" is SERVING (not draining or stopping).",
          (uint64_t)health_serving());
    gauge(b, "engram_disk_free_bytes", "Free bytes on the data directory's filesystem.",
          p->disk_free_bytes);
    gauge(b, "engram_disk_reserve_bytes",
          "Free bytes the server keeps on it (--disk-reserve-bytes); under it, writes are refused.",
          p->disk_reserve_bytes);
    gauge(b, "engram_health_watchers",
          "Open grpc.health.v1 Watch calls (1024 at most, 64 per connection).",
          p->health_watchers);
    gauge(b, "engram_shard_index", "This server's shard.", p->shard_index);
    gauge(b, "engram_shard_count", "Shards of the cluster.", p->shard_count);
    family(b, "engram_refusals_total", "counter",
           "Calls refused, by reason and the status they got (every reason, 0 included).");
    for (int r = 0; r < REFUSAL_REASONS; r++)
        sb_printf(b, "engram_refusals_total{reason=\"%s\",code=\"%s\"} %llu\n",
                  hooks_refusal_name((refusal_reason)r),
                  es_code_name(hooks_refusal_code((refusal_reason)r)),
                  (unsigned long long)p->refusals_by_reason[r]);
    const store_rocksdb_stats *r = &p->rocksdb;
    gauge(b, "engram_rocksdb_block_cache_usage_bytes", "Bytes in RocksDB's block cache.",
          r->block_cache_usage);
    gauge(b, "engram_rocksdb_block_cache_capacity_bytes", "RocksDB's block cache capacity.",
          r->block_cache_capacity);
    counter(b, "engram_rocksdb_block_cache_hits_total", "RocksDB block cache hits.",
            r->block_cache_hits);
    counter(b, "engram_rocksdb_block_cache_misses_total", "RocksDB block cache misses.",
            r->block_cache_misses);
    counter(b, "engram_rocksdb_read_bytes_total", "Bytes RocksDB read (rocksdb.bytes.read).",
            r->bytes_read);
    counter(b, "engram_rocksdb_get_calls_total", "RocksDB point reads (rocksdb.number.keys.read).",
            r->get_calls);
    counter(b, "engram_rocksdb_multiget_calls_total", "RocksDB MultiGet calls.",
            r->multiget_calls);
    gauge(b, "engram_memory_allocated_bytes", "jemalloc stats.allocated (0 without jemalloc).",
          p->mem_allocated);
    gauge(b, "engram_memory_resident_bytes", "jemalloc stats.resident (0 without jemalloc).",
          p->mem_resident);
    gauge(b, "engram_memory_mapped_bytes", "jemalloc stats.mapped (0 without jemalloc).",
          p->mem_mapped);
    gauge(b, "engram_resident_bytes", "Bytes of tables held as dense arrays in RAM.",
          p->resident_tier_bytes);
    gauge(b, "engram_resident_budget_bytes", "The resident tier's budget (--resident-budget).",
          p->resident_tier_budget);
    hot_cache_families(b, &p->hot);
    security_families(b);
}

char *metrics_render(size_t *len)
{
    sbuf b = {0};
    stats_process p;
    stats_process_read(&p);
    process_families(&b, &p);
    views rpcs = {0}, tables = {0};
    stats_each_rpc(collect, &rpcs);
    stats_each_table(collect, &tables);
    rpc_families(&b, &rpcs);
    table_families(&b, &tables);
    int oom = b.oom || rpcs.oom || tables.oom;
    free(rpcs.v);
    free(tables.v);
    if (oom) {
        free(b.p);
        return NULL;
    }
    *len = b.len;
    return b.p;
}

/* ---- HTTP ------------------------------------------------------------------- */

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, const char *type,
                             char *body, size_t len, enum MHD_ResponseMemoryMode mode)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, mode);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    enum MHD_Result rc = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *conn, const char *url,
                              const char *method, const char *version,
                              const char *upload_data, size_t *upload_data_size, void **con_cls)
{
    static const char text[] = "text/plain; charset=utf-8";
    if (strcmp(url, "/metrics") != 0)
        return reply(conn, MHD_HTTP_NOT_FOUND, text, "not found; metrics are at /metrics\n",
                     35, MHD_RESPMEM_PERSISTENT);
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, text, "method not allowed\n", 19,
                     MHD_RESPMEM_PERSISTENT);
    size_t len;
    char *body = metrics_render(&len);
    if (!body)
        return reply(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, text, "out of memory\n", 14,
                     MHD_RESPMEM_PERSISTENT);
    return reply(conn, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", body, len,
                 MHD_RESPMEM_MUST_FREE);
}

/* ---- connection deadlines --------------------------------------------------- */

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* libmicrohttpd's polling thread: a connection opened or closed. */
static void on_connection(void *cls, struct MHD_Connection *conn, void **ctx,
                          enum MHD_ConnectionNotificationCode toe)
{
    pthread_mutex_lock(&R.mu);
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        for (int i = 0; ci && i < HTTP_MAX_CONNS; i++) {
            if (!R.slots[i].conn) {
                R.slots[i] = (conn_slot){conn, ci->connect_fd,
                                         mono_ns() + HTTP_REQUEST_S * 1000000000ull, 0};
                *ctx = &R.slots[i];
                break;
            }
        }
    } else if (*ctx) {
        ((conn_slot *)*ctx)->conn = NULL;
        *ctx = NULL;
    }
    pthread_mutex_unlock(&R.mu);
}

/* A request was answered: a kept-alive connection gets a fresh deadline
 * for its next one. */
static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    pthread_mutex_lock(&R.mu);
    if (ci && ci->socket_context)
        ((conn_slot *)ci->socket_context)->deadline_ns =
            mono_ns() + HTTP_REQUEST_S * 1000000000ull;
    pthread_mutex_unlock(&R.mu);
}

static void *reaper_main(void *arg)
{
    pthread_mutex_lock(&R.mu);
    while (!R.stop) {
        uint64_t now = mono_ns();
        for (int i = 0; i < HTTP_MAX_CONNS; i++) {
            conn_slot *s = &R.slots[i];
            if (s->conn && !s->cut && now >= s->deadline_ns) {
                shutdown(s->fd, SHUT_RDWR);
                s->cut = 1;
            }
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 250000000;          /* 4 checks a second */
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&R.cv, &R.mu, &ts);
    }
    pthread_mutex_unlock(&R.mu);
    return NULL;
}

/* Splits "host:port" or "[v6]:port" into its parts (in buf). */
static int split_listen(const char *addr, char *buf, size_t cap, char **host, char **port)
{
    if (snprintf(buf, cap, "%s", addr) >= (int)cap)
        return -1;
    char *colon = strrchr(buf, ':');
    if (!colon || colon == buf || !colon[1])
        return -1;
    *colon = 0;
    *port = colon + 1;
    *host = buf;
    size_t hl = strlen(buf);
    if (buf[0] == '[') {
        if (buf[hl - 1] != ']' || hl < 3)
            return -1;
        buf[hl - 1] = 0;
        *host = buf + 1;
    }
    return 0;
}

/* A listening socket on `addr`, or -1 with err. *port_out: the bound port. */
static int bind_listen(const char *addr, int *port_out, char *err, size_t errlen)
{
    char buf[300], *host, *port;
    if (split_listen(addr, buf, sizeof buf, &host, &port) < 0) {
        snprintf(err, errlen, "\"%s\" is not HOST:PORT", addr);
        return -1;
    }
    struct addrinfo hints = {.ai_flags = AI_PASSIVE | AI_NUMERICSERV, .ai_socktype = SOCK_STREAM};
    struct addrinfo *ai;
    int grc = getaddrinfo(host, port, &hints, &ai);
    if (grc) {
        snprintf(err, errlen, "cannot resolve \"%s\": %s", addr, gai_strerror(grc));
        return -1;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, HTTP_MAX_CONNS) < 0) {
        snprintf(err, errlen, "cannot listen on %s: %s", addr, strerror(errno));
        if (fd >= 0)
            close(fd);
        freeaddrinfo(ai);
        return -1;
    }
    freeaddrinfo(ai);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    getsockname(fd, (struct sockaddr *)&ss, &sl);
    char hbuf[NI_MAXHOST], serv[NI_MAXSERV];
    getnameinfo((struct sockaddr *)&ss, sl, hbuf, sizeof hbuf, serv, sizeof serv,
                NI_NUMERICHOST | NI_NUMERICSERV);
    *port_out = atoi(serv);
    return fd;
}

int metrics_http_setup(const char *addr, char *err, size_t errlen)
{
    int port;
    int fd = bind_listen(addr, &port, err, errlen);
    if (fd < 0)
        return 0;
    /* epoll, not select(): select() would fail once the socket's number
     * passes FD_SETSIZE, which RocksDB's open files can make it. */
    D = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL, 0, NULL, NULL,
                         handle, NULL,
                         MHD_OPTION_LISTEN_SOCKET, fd,
                         MHD_OPTION_CONNECTION_LIMIT, (unsigned)HTTP_MAX_CONNS,
                         MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)HTTP_MAX_CONNS_PER_IP,
                         MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)HTTP_IDLE_S,
                         MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)HTTP_MEMORY_PER_CONN,
                         MHD_OPTION_NOTIFY_CONNECTION, on_connection, NULL,
                         MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
                         MHD_OPTION_END);
    if (!D) {
        snprintf(err, errlen, "cannot start the HTTP server on %s (libmicrohttpd refused)", addr);
        close(fd);
        return 0;
    }
    R.stop = 0;
    if (pthread_create(&R.thread, NULL, reaper_main, NULL) != 0) {
        snprintf(err, errlen, "cannot start the HTTP server on %s (no thread)", addr);
        MHD_stop_daemon(D);
        D = NULL;
        return 0;
    }
    R.started = 1;
    log_info("metrics_listening", "listen=%s port=%d path=/metrics", addr, port);
    return port;
}

void metrics_http_teardown(void)
{
    if (R.started) {              /* first: it must not shut down fds being closed */
        pthread_mutex_lock(&R.mu);
        R.stop = 1;
        pthread_cond_signal(&R.cv);
        pthread_mutex_unlock(&R.mu);
        pthread_join(R.thread, NULL);
        R.started = 0;
    }
    if (D)
        MHD_stop_daemon(D);   /* closes the listening socket too */
    D = NULL;
}
