/* metrics_http.c: GET /metrics in Prometheus' text exposition format
 * (version 0.0.4): the metrics registry as metric_render_prometheus
 * renders it (common/metric.c); this file is the HTTP side.
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

#include "log.h"
#include "metric.h"

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
    char *body = metric_render_prometheus(&len);
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
