/* floor_server.c: engram-floor-server, the least a gRPC-core server can do
 * to answer engram.v1.Lookup, so engram-compare-bench can measure through
 * the same client (libengram) what engram-server costs above the transport.
 *
 *   engram-floor-server --listen HOST:PORT [--port-file F] [--threads N (2)]
 *       --table NAME --rows N [--row-bytes B (128)] [--seed S]
 *       [--max-message-bytes B (64M)]
 *
 * How: one table of synthetic rows (synthetic_rows(seed)) in one dense
 * array (mmap'd with MADV_HUGEPAGE, as engram-server's resident tables).
 * One completion queue per thread, each with requests pre-posted for three
 * registered methods: Lookup, and the two calls libengram makes around a
 * lookup, Admin.GetClusterMap (a one-shard map of this server, so the
 * client stays in single mode) and Admin.GetTable (the table's info). A
 * Lookup request is parsed by hand from its flattened bytes (table, packed
 * or unpacked rows, version); every row is checked (a row >= rows is
 * OUT_OF_RANGE naming it, as engram-server answers) before the rows are
 * gathered straight into one slice behind a hand-written LookupResponse
 * header (common/wire.h). No statistics, logging, versions or tiers: that
 * is what makes it a floor. Unregistered methods are not answered (the
 * bench calls none). SIGINT/SIGTERM stop it; exit 0. */
#include <errno.h>
#include <getopt.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <zlib.h>

#include "cluster.h"
#include "engram/v1/engram.pb-c.h"
#include "grpc_util.h"
#include "synthetic.h"
#include "wire.h"

#define FL_VERSION 1
#define FL_THREADS_MAX 64

enum { M_LOOKUP, M_TABLE, M_MAP, M_N };
static const char *const method_path[M_N] = {
    "/engram.v1.Lookup/Lookup", "/engram.v1.Admin/GetTable", "/engram.v1.Admin/GetClusterMap"};
/* Lookups a queue can take at once before gRPC has to wait for a re-post. */
static const int posts_per_cq[M_N] = {8, 1, 1};

typedef struct fl_cfg {
    const char *listen, *port_file, *table;
    int threads;
    uint64_t rows, seed, max_msg;
    uint32_t row_bytes;
} fl_cfg;

/* One pre-posted request and, once matched, its call. */
typedef struct fl_call {
    int method;
    int replying;                /* 0: waiting for a call; 1: reply batch sent */
    grpc_completion_queue *cq;
    grpc_call *call;
    gpr_timespec deadline;
    grpc_metadata_array md;
    grpc_byte_buffer *req, *reply;
    grpc_slice details;
    int cancelled;
    uint64_t *rows;              /* lookup scratch, kept between calls */
    size_t rows_cap, nrows;
} fl_call;

static struct {
    fl_cfg cfg;
    grpc_server *server;
    void *method[M_N];
    uint8_t *arr;
    uint32_t checksum;
    uint64_t created_ms;
    char addr[300];
    pthread_mutex_t arm_lock;
    int stopping;
    int started;
} F = {.arm_lock = PTHREAD_MUTEX_INITIALIZER};

/* ---- requests ----------------------------------------------------------------- */

/* Posts fc for its method's next call; frees it once the server stops (a
 * post to a shut-down server crashes gRPC, hence the lock). */
static void arm(fl_call *fc)
{
    pthread_mutex_lock(&F.arm_lock);
    if (F.stopping) {
        pthread_mutex_unlock(&F.arm_lock);
        free(fc->rows);
        free(fc);
        return;
    }
    fc->replying = 0;
    fc->call = NULL;
    fc->req = fc->reply = NULL;
    fc->details = grpc_empty_slice();
    grpc_metadata_array_init(&fc->md);
    grpc_server_request_registered_call(F.server, F.method[fc->method], &fc->call, &fc->deadline,
                                        &fc->md, &fc->req, fc->cq, fc->cq, fc);
    pthread_mutex_unlock(&F.arm_lock);
}

static void release(fl_call *fc)
{
    if (fc->call)
        grpc_call_unref(fc->call);
    grpc_byte_buffer_destroy(fc->req);
    grpc_byte_buffer_destroy(fc->reply);
    grpc_slice_unref(fc->details);
    grpc_metadata_array_destroy(&fc->md);
    fc->req = fc->reply = NULL;
    fc->call = NULL;
}

/* ---- Lookup ----------------------------------------------------------------------- */

static int get_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    uint64_t x = 0;
    for (int shift = 0; *p < end && shift < 64; shift += 7) {
        uint8_t b = *(*p)++;
        x |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = x;
            return 0;
        }
    }
    return -1;
}

static int push_row(fl_call *fc, uint64_t row)
{
    if (fc->nrows == fc->rows_cap) {
        size_t cap = fc->rows_cap ? 2 * fc->rows_cap : 4096;
        uint64_t *p = realloc(fc->rows, cap * sizeof *p);
        if (!p)
            return -1;
        fc->rows = p;
        fc->rows_cap = cap;
    }
    fc->rows[fc->nrows++] = row;
    return 0;
}

/* Skips a field of wire type wt; -1 when malformed. */
static int skip_field(const uint8_t **p, const uint8_t *end, uint32_t wt)
{
    uint64_t v;
    size_t n = wt == 1 ? 8 : wt == 5 ? 4 : 0;
    if (wt == 0)
        return get_varint(p, end, &v);
    if (wt == 2) {
        if (get_varint(p, end, &v) || v > (uint64_t)(end - *p))
            return -1;
        n = (size_t)v;
    }
    if (n == 0 || n > (size_t)(end - *p))
        return -1;
    *p += n;
    return 0;
}

/* One field of a LookupRequest: table (1), rows (2, packed or not),
 * version (3); anything else is skipped. */
static int parse_field(fl_call *fc, const uint8_t **p, const uint8_t *end, int *table_ok,
                       uint64_t *version)
{
    uint64_t tag, v;
    if (get_varint(p, end, &tag))
        return -1;
    uint32_t field = (uint32_t)(tag >> 3), wt = (uint32_t)(tag & 7);
    if (field == 2 && wt == 0)
        return get_varint(p, end, &v) || push_row(fc, v);
    if (field == 3 && wt == 0)
        return get_varint(p, end, version);
    if ((field != 1 && field != 2) || wt != 2)
        return skip_field(p, end, wt);
    if (get_varint(p, end, &v) || v > (uint64_t)(end - *p))
        return -1;
    const uint8_t *sub = *p, *sub_end = *p + v;
    *p = sub_end;
    if (field == 1) {
        *table_ok = v == strlen(F.cfg.table) && memcmp(sub, F.cfg.table, v) == 0;
        return 0;
    }
    while (sub < sub_end)
        if (get_varint(&sub, sub_end, &v) || push_row(fc, v))
            return -1;
    return 0;
}

static int parse_lookup(fl_call *fc, int *table_ok, uint64_t *version)
{
    grpc_byte_buffer_reader r;
    if (!fc->req || !grpc_byte_buffer_reader_init(&r, fc->req))
        return -1;
    grpc_slice s = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    const uint8_t *p = GRPC_SLICE_START_PTR(s), *end = p + GRPC_SLICE_LENGTH(s);
    int rc = 0;
    fc->nrows = 0;
    *table_ok = 0;
    *version = 0;
    while (p < end && rc == 0)
        rc = parse_field(fc, &p, end, table_ok, version);
    grpc_slice_unref(s);
    return rc;
}

/* Every row checked before any is read, as engram-server does. */
static grpc_status_code check_lookup(const fl_call *fc, int table_ok, uint64_t version,
                                     char *msg, size_t msglen)
{
    if (!table_ok || (version && version != FL_VERSION)) {
        snprintf(msg, msglen, "table not found (this floor server holds \"%s\" version %d)",
                 F.cfg.table, FL_VERSION);
        return GRPC_STATUS_NOT_FOUND;
    }
    for (size_t i = 0; i < fc->nrows; i++)
        if (fc->rows[i] >= F.cfg.rows) {
            snprintf(msg, msglen, "row %llu (index %zu in the request) is out of range: table "
                     "\"%s\" has %llu rows", (unsigned long long)fc->rows[i], i, F.cfg.table,
                     (unsigned long long)F.cfg.rows);
            return GRPC_STATUS_OUT_OF_RANGE;
        }
    if ((uint64_t)fc->nrows * F.cfg.row_bytes + 32 > F.cfg.max_msg) {
        snprintf(msg, msglen, "reply of %zu rows is over the message limit", fc->nrows);
        return GRPC_STATUS_INVALID_ARGUMENT;
    }
    return GRPC_STATUS_OK;
}

/* The rows gathered straight into the one slice gRPC sends. */
static grpc_byte_buffer *gather(const fl_call *fc)
{
    const size_t rb = F.cfg.row_bytes;
    uint64_t data = (uint64_t)fc->nrows * rb;
    size_t head = lookup_response_head_len(data);
    grpc_slice s = grpc_slice_malloc(head + data + lookup_response_tail_len(rb, FL_VERSION));
    uint8_t *p = GRPC_SLICE_START_PTR(s);
    lookup_response_put_head(p, data);
    for (size_t i = 0; i < fc->nrows; i++)
        memcpy(p + head + i * rb, F.arr + fc->rows[i] * rb, rb);
    lookup_response_put_tail(p + head + data, (uint32_t)rb, FL_VERSION);
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

static grpc_status_code do_lookup(fl_call *fc, char *msg, size_t msglen)
{
    int table_ok;
    uint64_t version;
    if (parse_lookup(fc, &table_ok, &version)) {
        snprintf(msg, msglen, "malformed LookupRequest");
        return GRPC_STATUS_INVALID_ARGUMENT;
    }
    grpc_status_code code = check_lookup(fc, table_ok, version, msg, msglen);
    if (code == GRPC_STATUS_OK)
        fc->reply = gather(fc);
    return code;
}

/* ---- GetTable, GetClusterMap (protobuf-c: small and rare) ------------------------ */

static grpc_status_code do_table(fl_call *fc, char *msg, size_t msglen)
{
    Engram__V1__GetTableRequest *rq = fc->req ? (Engram__V1__GetTableRequest *)pb_from_byte_buffer(
                                                    &engram__v1__get_table_request__descriptor, fc->req)
                                              : NULL;
    int found = rq && rq->name && strcmp(rq->name, F.cfg.table) == 0;
    if (rq)
        protobuf_c_message_free_unpacked(&rq->base, NULL);
    if (!found) {
        snprintf(msg, msglen, "table not found (this floor server holds \"%s\")", F.cfg.table);
        return GRPC_STATUS_NOT_FOUND;
    }
    Engram__V1__VersionInfo vi = ENGRAM__V1__VERSION_INFO__INIT, *vp = &vi;
    vi.version = FL_VERSION;
    vi.state = ENGRAM__V1__VERSION_INFO__STATE__ACTIVE;
    vi.checksum = F.checksum;
    vi.local_rows = F.cfg.rows;
    vi.resident = 1;
    vi.created_unix_ms = F.created_ms;
    Engram__V1__TableInfo ti = ENGRAM__V1__TABLE_INFO__INIT;
    ti.name = (char *)F.cfg.table;
    ti.rows = ti.local_rows = F.cfg.rows;
    ti.row_bytes = ti.dim = F.cfg.row_bytes;
    ti.dtype = "u8";
    ti.version = FL_VERSION;
    ti.checksum = F.checksum;
    ti.resident = 1;
    ti.created_unix_ms = F.created_ms;
    ti.shard_count = 1;
    ti.n_versions = 1;
    ti.versions = &vp;
    fc->reply = pb_to_byte_buffer(&ti.base);
    return GRPC_STATUS_OK;
}

static grpc_status_code do_map(fl_call *fc, char *msg, size_t msglen)
{
    engram_cluster *one = cluster_single(F.addr);
    char *json = one ? cluster_to_json(one) : NULL;
    cluster_free(one);
    if (!json) {
        snprintf(msg, msglen, "out of memory");
        return GRPC_STATUS_RESOURCE_EXHAUSTED;
    }
    Engram__V1__ClusterMap cm = ENGRAM__V1__CLUSTER_MAP__INIT;
    cm.json = json;
    cm.shard_count = 1;
    fc->reply = pb_to_byte_buffer(&cm.base);
    free(json);
    return GRPC_STATUS_OK;
}

/* ---- calls --------------------------------------------------------------------- */

/* A matched call: answers it in one batch (metadata, reply, status). */
static void answer(fl_call *fc)
{
    char msg[300] = "";
    grpc_status_code code = fc->method == M_LOOKUP  ? do_lookup(fc, msg, sizeof msg)
                            : fc->method == M_TABLE ? do_table(fc, msg, sizeof msg)
                                                    : do_map(fc, msg, sizeof msg);
    if (code != GRPC_STATUS_OK)
        fc->details = grpc_slice_from_copied_string(msg);
    grpc_op ops[4];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
    if (fc->reply) {
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n++].data.send_message.send_message = fc->reply;
    }
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = code;
    ops[n++].data.send_status_from_server.status_details = code ? &fc->details : NULL;
    ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    ops[n++].data.recv_close_on_server.cancelled = &fc->cancelled;
    fc->replying = 1;
    if (grpc_call_start_batch(fc->call, ops, n, fc, NULL) != GRPC_CALL_OK) {
        release(fc);
        arm(fc);
    }
}

static void *worker(void *arg)
{
    grpc_completion_queue *cq = arg;
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        fl_call *fc = ev.tag;
        if (!fc->replying && ev.success) {
            answer(fc);
            continue;
        }
        release(fc);            /* a reply sent, or a request the server dropped */
        if (ev.success || fc->replying)
            arm(fc);
        else {
            free(fc->rows);
            free(fc);
        }
    }
    return NULL;
}

/* ---- start and stop ---------------------------------------------------------------- */

static int usage(const char *why)
{
    if (why)
        fprintf(stderr, "engram-floor-server: %s\n", why);
    fprintf(stderr, "usage: engram-floor-server --listen HOST:PORT [--port-file F] [--threads N]\n"
                    "           --table NAME --rows N [--row-bytes B] [--seed S]\n"
                    "           [--max-message-bytes B]\n");
    return 2;
}

static int parse_u64_arg(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || *s == '-')
        return -1;
    *out = v;
    return 0;
}

static int parse_args(int argc, char **argv, fl_cfg *c)
{
    static const struct option lo[] = {
        {"listen", 1, 0, 'l'}, {"port-file", 1, 0, 'p'}, {"threads", 1, 0, 't'},
        {"table", 1, 0, 'T'}, {"rows", 1, 0, 'r'}, {"row-bytes", 1, 0, 'b'}, {"seed", 1, 0, 's'},
        {"max-message-bytes", 1, 0, 'm'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    *c = (fl_cfg){.threads = 2, .row_bytes = 128, .max_msg = 64u << 20};
    int o;
    uint64_t v = 0;
    while ((o = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        if (o == 'h' || o == '?')
            return usage(NULL);
        if (o == 'l' || o == 'p' || o == 'T') {
            *(o == 'l' ? &c->listen : o == 'p' ? &c->port_file : &c->table) = optarg;
            continue;
        }
        if (parse_u64_arg(optarg, &v))
            return usage("bad number");
        if (o == 't')
            c->threads = v >= 1 && v <= FL_THREADS_MAX ? (int)v : 0;
        else if (o == 'r')
            c->rows = v;
        else if (o == 'b')
            c->row_bytes = v <= 65536 ? (uint32_t)v : 0;
        else if (o == 's')
            c->seed = v;
        else
            c->max_msg = v <= INT32_MAX ? v : 0;
    }
    if (optind < argc || !c->listen || !c->table || !c->rows || !c->threads || !c->row_bytes ||
        !c->max_msg)
        return usage("--listen, --table and --rows are required; numbers must be in range");
    return 0;
}

/* The table: synthetic rows in one huge-page-backed array, and its CRC. */
static int fill_table(void)
{
    size_t bytes = (size_t)F.cfg.rows * F.cfg.row_bytes;
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        fprintf(stderr, "engram-floor-server: cannot map %zu bytes\n", bytes);
        return -1;
    }
#ifdef MADV_HUGEPAGE
    madvise(p, bytes, MADV_HUGEPAGE);
#endif
    F.arr = p;
    synthetic_rows(F.cfg.seed, 0, F.cfg.rows, F.arr, F.cfg.row_bytes);
    uLong crc = crc32(0L, Z_NULL, 0);
    for (size_t off = 0; off < bytes; off += 1u << 30) {
        size_t n = bytes - off < (1u << 30) ? bytes - off : (1u << 30);
        crc = crc32(crc, F.arr + off, (uInt)n);
    }
    F.checksum = (uint32_t)crc;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    F.created_ms = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
    return 0;
}

/* The address clients are told in the cluster map: the listen host and the
 * port actually bound. */
static void set_addr(int port)
{
    const char *colon = strrchr(F.cfg.listen, ':');
    int hl = colon ? (int)(colon - F.cfg.listen) : (int)strlen(F.cfg.listen);
    snprintf(F.addr, sizeof F.addr, "%.*s:%d", hl, F.cfg.listen, port);
}

static int write_port_file(int port)
{
    if (!F.cfg.port_file)
        return 0;
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", F.cfg.port_file);
    FILE *f = fopen(tmp, "w");
    if (!f || fprintf(f, "%d\n", port) < 0 || fclose(f) != 0 || rename(tmp, F.cfg.port_file)) {
        fprintf(stderr, "engram-floor-server: %s: %s\n", F.cfg.port_file, strerror(errno));
        return -1;
    }
    return 0;
}

/* Creates the server, its queues and methods, binds and starts it. */
static int start(grpc_completion_queue **cqs, grpc_completion_queue *shut_cq)
{
    grpc_arg args[2];
    message_size_args(args, (int)F.cfg.max_msg);
    grpc_channel_args chargs = {.num_args = 2, .args = args};
    F.server = grpc_server_create(&chargs, NULL);
    for (int m = 0; m < M_N; m++)
        F.method[m] = grpc_server_register_method(F.server, method_path[m], NULL,
                                                  GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
    for (int i = 0; i < F.cfg.threads; i++)
        grpc_server_register_completion_queue(F.server, cqs[i], NULL);
    grpc_server_register_completion_queue(F.server, shut_cq, NULL);
    grpc_server_credentials *cr = grpc_insecure_server_credentials_create();
    int port = grpc_server_add_http2_port(F.server, F.cfg.listen, cr);
    grpc_server_credentials_release(cr);
    if (port <= 0) {
        fprintf(stderr, "engram-floor-server: cannot listen on %s\n", F.cfg.listen);
        return -1;
    }
    set_addr(port);
    grpc_server_start(F.server);
    F.started = 1;
    for (int i = 0; i < F.cfg.threads; i++)
        for (int m = 0; m < M_N; m++)
            for (int k = 0; k < posts_per_cq[m]; k++) {
                fl_call *fc = calloc(1, sizeof *fc);
                fc->method = m;
                fc->cq = cqs[i];
                arm(fc);
            }
    return write_port_file(port);
}

static void drain_queue(grpc_completion_queue *cq)
{
    grpc_completion_queue_shutdown(cq);
    while (grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL).type !=
           GRPC_QUEUE_SHUTDOWN)
        ;
    grpc_completion_queue_destroy(cq);
}

/* The order gRPC needs: no more posts, shutdown and its tag, destroy the
 * server, then the queues (the workers drain theirs and exit). */
static void stop(grpc_completion_queue **cqs, pthread_t *th, int nth,
                 grpc_completion_queue *shut_cq)
{
    pthread_mutex_lock(&F.arm_lock);
    F.stopping = 1;
    pthread_mutex_unlock(&F.arm_lock);
    if (F.started) {
        static int shutdown_tag;
        grpc_server_shutdown_and_notify(F.server, shut_cq, &shutdown_tag);
        grpc_server_cancel_all_calls(F.server);
        grpc_completion_queue_next(shut_cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
    }
    if (F.server)
        grpc_server_destroy(F.server);
    for (int i = 0; i < F.cfg.threads; i++) {
        if (i >= nth) {
            drain_queue(cqs[i]);    /* no worker ever ran on it */
            continue;
        }
        grpc_completion_queue_shutdown(cqs[i]);
        pthread_join(th[i], NULL);
        grpc_completion_queue_destroy(cqs[i]);
    }
    drain_queue(shut_cq);
}

int main(int argc, char **argv)
{
    if (parse_args(argc, argv, &F.cfg))
        return 2;
    if (fill_table())
        return 1;
    /* Signals are taken by sigwait below, never by a gRPC thread. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    grpc_init();
    grpc_completion_queue *cqs[FL_THREADS_MAX];
    pthread_t th[FL_THREADS_MAX];
    for (int i = 0; i < F.cfg.threads; i++)
        cqs[i] = grpc_completion_queue_create_for_next(NULL);
    grpc_completion_queue *shut_cq = grpc_completion_queue_create_for_next(NULL);
    int rc = start(cqs, shut_cq), nth = 0;
    for (; rc == 0 && nth < F.cfg.threads; nth++)
        pthread_create(&th[nth], NULL, worker, cqs[nth]);
    if (rc == 0) {
        fprintf(stderr, "engram-floor-server: %s, table %s (%llu rows x %u B), %d threads\n",
                F.addr, F.cfg.table, (unsigned long long)F.cfg.rows, F.cfg.row_bytes,
                F.cfg.threads);
        int sig;
        sigwait(&sigs, &sig);
    }
    stop(cqs, th, nth, shut_cq);
    grpc_shutdown();
    munmap(F.arr, (size_t)F.cfg.rows * F.cfg.row_bytes);
    return rc ? 1 : 0;
}
