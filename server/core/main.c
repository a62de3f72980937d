/* main.c: engram-server's entry point: options, module setup in dependency
 * order, signal handling, and teardown in reverse order.
 *
 * Signals are blocked in every thread and taken synchronously by main with
 * sigwait, so shutdown (SIGINT, SIGTERM) and the reload of secrets (SIGHUP)
 * run as ordinary code rather than in a handler. */
#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <grpc/grpc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "admin.h"
#include "cluster.h"
#include "drain.h"
#include "health.h"
#include "hooks.h"
#include "import.h"
#include "local_tables.h"
#include "log.h"
#include "lookup.h"
#include "manifests.h"
#include "methods.h"
#include "metrics_http.h"
#include "procinfo.h"
#include "reply_budget.h"
#include "security.h"
#include "server.h"
#include "shm.h"
#include "stats.h"
#include "stats_reply.h"
#include "store.h"
#include "verify.h"
#include "warm.h"

/* jemalloc's built-in options (read at its start; MALLOC_CONF still
 * overrides). By default jemalloc serves allocations of 8 MiB and more
 * from an arena that returns freed pages to the kernel at once, so every
 * 65536-row reply (8 MiB) page-faulted all its 2048 pages back in: 2000
 * faults per call. Without that arena, freed reply buffers are reused
 * (25 faults per call) and 65536-row lookups run 1.5x faster; idle pages
 * still go back after the normal 10 s decay. That decay needs the
 * background thread: without it jemalloc purges only when the arena is
 * used again, so a server left idle after a burst kept its peak RSS for
 * good (issue 11: 2.0 GiB resident with 6.6 MiB allocated). And decayed
 * pages are returned at once (muzzy_decay_ms:0, MADV_DONTNEED) rather than
 * lazily (MADV_FREE), which leaves them counted in RSS until the kernel is
 * short of memory. Unused without jemalloc. */
const char *malloc_conf = "oversize_threshold:0,background_thread:true,muzzy_decay_ms:0";

typedef struct options {
    const char *data;
    const char *listen;
    const char *port_file;
    const char *log_file;
    int threads;
    uint64_t resident_budget;
    uint64_t block_cache;
    uint64_t hot_cache;
    uint64_t max_rows;
    uint64_t max_message;
    int log_level;
    int64_t grace_ms;
    const char *cluster;
    int64_t shard;
    uint64_t keep_versions;
    const char *admin_listen;
    uint64_t max_calls_per_conn;
    uint64_t max_import_bytes;
    uint64_t max_reply_bytes;
    uint64_t max_reply_bytes_per_conn;
    int64_t keepalive_ms;
    int64_t keepalive_timeout_ms;
    int64_t conn_idle_ms;
    uint64_t max_manifest_bytes;
    security_options sec;
    const char *metrics_listen;
    int64_t reload_check_ms;
    int64_t import_idle_ms;
    uint64_t max_imports;
    int64_t disk_reserve;        /* < 0: max(64M, 1% of the filesystem) */
    shm_options shm;             /* --shm-dir, --shm-group */
} options;

/* Long-only options of the security module: values past any letter. */
enum { OPT_TLS_CERT = 256, OPT_TLS_KEY, OPT_TLS_CLIENT_CA, OPT_ADMIN_LISTEN,
       OPT_ADMIN_TOKEN_FILE, OPT_ADMIN_NAMES, OPT_MAX_CALLS, OPT_MAX_CALLS_PER_CONN,
       OPT_MAX_IMPORT_BYTES, OPT_DEFAULT_DEADLINE_MS };
/* --metrics-listen: long-only, numbered clear of the other modules' options. */
enum { OPT_METRICS_LISTEN = 400, OPT_RELOAD_CHECK_MS };
/* The transport's and the replies' bounds, numbered clear of the others. */
enum { OPT_MAX_REPLY_BYTES = 420, OPT_MAX_REPLY_BYTES_PER_CONN, OPT_KEEPALIVE_MS,
       OPT_KEEPALIVE_TIMEOUT_MS, OPT_CONN_IDLE_MS };
/* The admin plane's document bound. */
enum { OPT_MAX_MANIFEST_BYTES = 440 };
/* Import streams and the disk, numbered clear of the others. */
enum { OPT_IMPORT_IDLE_MS = 460, OPT_MAX_IMPORTS, OPT_DISK_RESERVE_BYTES };
/* --allow-plaintext-token: long-only, clear of the ranges above. */
enum { OPT_ALLOW_PLAINTEXT_TOKEN = 480 };
/* Same-host table files, clear of the ranges above. */
enum { OPT_SHM_DIR = 500, OPT_SHM_GROUP };

static void usage(FILE *f)
{
    fprintf(f,
"usage: engram-server [options]\n"
"Serves Engram embedding tables over gRPC (engram.v1.Lookup, engram.v1.Admin).\n"
"\n"
"  --data DIR               data directory (RocksDB), default ./engram-data\n"
"  --listen HOST:PORT       address to serve on, default 127.0.0.1:7070\n"
"                           (port 0 picks a free port; see --port-file)\n"
"  --threads N              data-plane worker threads, default: one per CPU\n"
"  --resident-budget BYTES  RAM for tables held as dense arrays,\n"
"                           default a quarter of physical memory\n"
"  --block-cache BYTES      RocksDB block cache, default 256M\n"
"  --hot-cache-bytes BYTES  hot-row cache (S3-FIFO) in front of RocksDB for\n"
"                           tables not held resident, default 256M; 0: off\n"
"  --max-rows N             rows per Lookup request, default 262144\n"
"  --max-message-bytes B    max gRPC message size, default 64M\n"
"  --grace-ms MS            shutdown wait for in-flight calls, default 5000\n"
"  --cluster FILE --shard I this server is shard I of the cluster map FILE\n"
"                           (JSON; it stores only rows r with r %% S == I);\n"
"                           the data directory keeps the I and S it was\n"
"                           first started with and refuses others (exit 2)\n"
"  --keep-versions N        activated versions kept per table, default 2\n"
"  --port-file FILE         write the bound port to FILE once serving\n"
"  --shm-dir DIR            keep each resident table version as a file in\n"
"                           DIR (a tmpfs such as /dev/shm/engram), mapped by\n"
"                           the server and by clients on this host instead\n"
"                           of calling Lookup (Admin.ListLocalTables lists\n"
"                           them); DIR is made if missing and locked: one\n"
"                           server per DIR. Default: off\n"
"  --shm-group GROUP        those files get mode 0640 and group GROUP (a name\n"
"                           or gid) instead of mode 0600\n"
"security (plaintext and an open admin plane by default, for local use):\n"
"  --tls-cert FILE --tls-key FILE  serve TLS with this PEM certificate and key\n"
"  --tls-client-ca FILE     require client certificates signed by this CA (mTLS)\n"
"  --admin-listen HOST:PORT serve the admin plane only here; --listen then\n"
"                           serves Lookup and health only\n"
"  --admin-token-file FILE  admin calls need authorization: Bearer <first line>\n"
"                           (refused over plaintext beyond loopback, exit 2)\n"
"  --allow-plaintext-token  accept --admin-token-file over plaintext on a\n"
"                           non-loopback admin address (the token is readable\n"
"                           on the network)\n"
"  --admin-names N[,N...]   client certificates (CN or SAN) admitted to admin\n"
"                           calls (needs --tls-client-ca)\n"
"  --reload-check-ms MS     re-read the TLS and token files when they change,\n"
"                           checked every MS; 0: only on SIGHUP; default 60000\n"
"limits (0 = none):\n"
"  --max-calls N            calls in flight in total, default 0\n"
"  --max-calls-per-conn N   concurrent calls per connection (HTTP/2\n"
"                           MAX_CONCURRENT_STREAMS), default 128\n"
"  --max-reply-bytes B      reply bytes held for clients that have not read\n"
"                           them yet, all connections together; a Lookup\n"
"                           past it gets RESOURCE_EXHAUSTED; default an\n"
"                           eighth of physical memory, at most 1G\n"
"  --max-reply-bytes-per-conn B\n"
"                           the same for one connection, default 256M\n"
"  --keepalive-ms MS        ping each connection with calls in flight every\n"
"                           MS, default 60000 ...\n"
"  --keepalive-timeout-ms MS\n"
"                           ... and close it when a ping goes unanswered\n"
"                           this long (a client that stopped reading and\n"
"                           so pins its replies), default 20000\n"
"  --conn-idle-ms MS        close connections with no call for MS,\n"
"                           default 3600000 (clients reconnect by themselves)\n"
"  --max-manifest-bytes B   largest manifest document (PutManifest), default 8M\n"
"  --max-import-bytes B     largest import (rows x row bytes), default 0: as\n"
"                           the disk allows (free space above the reserve)\n"
"  --max-imports N          import streams at once, default 4\n"
"  --import-idle-ms MS      cancel an import stream that sends nothing for MS,\n"
"                           default 30000\n"
"  --disk-reserve-bytes B   free space kept on the data dir's filesystem:\n"
"                           imports and metadata writes stop short of it,\n"
"                           default max(64M, 1%% of the filesystem)\n"
"  --default-deadline-ms N  deadline of calls that arrive without one, default 0\n"
"  fixed: 16 versions per table (active, retained and staged together);\n"
"  1024 health Watches, 64 per connection; /metrics: 64 connections, 8 per\n"
"  address, 3 s idle, 5 s per request\n"
"  --metrics-listen HOST:PORT\n"
"                           serve Prometheus metrics at http://HOST:PORT/metrics\n"
"  --log-level LEVEL        debug, info, warn, error; default info\n"
"  --log-file FILE          append logs to FILE instead of stderr\n"
"  --help                   this text\n"
"BYTES accept K, M, G, T suffixes (powers of 1024).\n"
"SIGINT or SIGTERM stops the server gracefully; SIGHUP re-reads the TLS\n"
"and admin token files (nothing changes unless all of them are good).\n");
}

static int parse_u64(const char *s, uint64_t *out, int suffixes)
{
    if (!s || !*s || *s == '-')
        return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s)
        return -1;
    uint64_t mul = 1;
    if (suffixes && *end) {
        const char *u = "KMGT";
        const char *p = strchr(u, *end);
        if (!p || end[1])
            return -1;
        mul = 1ull << (10 * (p - u + 1));
        end++;
    }
    if (*end || (v && mul > UINT64_MAX / v))
        return -1;
    *out = v * mul;
    return 0;
}

static void bad_value(const char *opt, const char *val)
{
    fprintf(stderr, "engram-server: invalid value \"%s\" for --%s\n", val, opt);
    exit(2);
}

/* A group name, or a number (a gid need not have a name: a container's
 * fsGroup often has none). */
static void parse_group(const char *val, shm_options *o)
{
    uint64_t v;
    struct group *g = getgrnam(val);
    if (g)
        o->gid = g->gr_gid;
    else if (parse_u64(val, &v, 0) == 0 && v < (gid_t)-1)
        o->gid = (gid_t)v;
    else {
        fprintf(stderr, "engram-server: --shm-group: unknown group \"%s\"\n", val);
        exit(2);
    }
    o->group_set = 1;
}

static void defaults(options *o)
{
    memset(o, 0, sizeof *o);
    long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGE_SIZE);
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    o->data = "./engram-data";
    o->listen = "127.0.0.1:7070";
    o->threads = cpus > 0 ? (int)cpus : 1;
    o->resident_budget = pages > 0 && psz > 0 ? (uint64_t)pages * (uint64_t)psz / 4 : 1ull << 30;
    o->block_cache = 256ull << 20;
    o->hot_cache = 256ull << 20;
    o->max_rows = 262144;
    o->max_message = 64ull << 20;
    o->log_level = LOG_INFO;
    o->grace_ms = 5000;
    o->shard = -1;
    o->keep_versions = 2;
    o->reload_check_ms = 60000;
    /* Transport and reply bounds a default server gets (issue 11): enough
     * for 8 lookups of the largest message in flight on one connection,
     * and for a server's whole fleet of workers, while one client that
     * never reads can pin no more than 256 MiB and all of them together no
     * more than 1 GiB (or an eighth of a small machine's memory). */
    o->max_calls_per_conn = 128;
    uint64_t phys = pages > 0 && psz > 0 ? (uint64_t)pages * (uint64_t)psz : 8ull << 30;
    o->max_reply_bytes = phys / 8 < (1ull << 30) ? phys / 8 : (1ull << 30);
    o->max_reply_bytes_per_conn = 256ull << 20;
    o->keepalive_ms = 60000;
    o->keepalive_timeout_ms = 20000;
    o->conn_idle_ms = 3600000;
    o->max_manifest_bytes = 8ull << 20;
    o->import_idle_ms = 30000;
    o->max_imports = 4;
    o->disk_reserve = -1;
}

static void parse_args(int argc, char **argv, options *o)
{
    static const struct option longopts[] = {
        {"data", 1, 0, 'd'}, {"listen", 1, 0, 'l'}, {"threads", 1, 0, 't'},
        {"resident-budget", 1, 0, 'r'}, {"block-cache", 1, 0, 'c'},
        {"hot-cache-bytes", 1, 0, 'H'},
        {"max-rows", 1, 0, 'm'}, {"max-message-bytes", 1, 0, 'M'},
        {"grace-ms", 1, 0, 'g'}, {"port-file", 1, 0, 'p'},
        {"log-level", 1, 0, 'L'}, {"log-file", 1, 0, 'F'}, {"help", 0, 0, 'h'},
        {"cluster", 1, 0, 'C'}, {"shard", 1, 0, 'S'}, {"keep-versions", 1, 0, 'K'},
        {"tls-cert", 1, 0, OPT_TLS_CERT}, {"tls-key", 1, 0, OPT_TLS_KEY},
        {"tls-client-ca", 1, 0, OPT_TLS_CLIENT_CA}, {"admin-listen", 1, 0, OPT_ADMIN_LISTEN},
        {"admin-token-file", 1, 0, OPT_ADMIN_TOKEN_FILE}, {"admin-names", 1, 0, OPT_ADMIN_NAMES},
        {"max-calls", 1, 0, OPT_MAX_CALLS}, {"max-calls-per-conn", 1, 0, OPT_MAX_CALLS_PER_CONN},
        {"max-import-bytes", 1, 0, OPT_MAX_IMPORT_BYTES},
        {"default-deadline-ms", 1, 0, OPT_DEFAULT_DEADLINE_MS},
        {"metrics-listen", 1, 0, OPT_METRICS_LISTEN},
        {"reload-check-ms", 1, 0, OPT_RELOAD_CHECK_MS},
        {"max-reply-bytes", 1, 0, OPT_MAX_REPLY_BYTES},
        {"max-reply-bytes-per-conn", 1, 0, OPT_MAX_REPLY_BYTES_PER_CONN},
        {"keepalive-ms", 1, 0, OPT_KEEPALIVE_MS}, {"conn-idle-ms", 1, 0, OPT_CONN_IDLE_MS},
        {"keepalive-timeout-ms", 1, 0, OPT_KEEPALIVE_TIMEOUT_MS},
        {"max-manifest-bytes", 1, 0, OPT_MAX_MANIFEST_BYTES},
        {"import-idle-ms", 1, 0, OPT_IMPORT_IDLE_MS}, {"max-imports", 1, 0, OPT_MAX_IMPORTS},
        {"disk-reserve-bytes", 1, 0, OPT_DISK_RESERVE_BYTES},
        {"allow-plaintext-token", 0, 0, OPT_ALLOW_PLAINTEXT_TOKEN},
        {"shm-dir", 1, 0, OPT_SHM_DIR}, {"shm-group", 1, 0, OPT_SHM_GROUP},
        {0, 0, 0, 0}};
    defaults(o);
    int ch;
    uint64_t v;
    while ((ch = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        const char *name = ch == '?' ? "" : longopts[0].name;
        for (const struct option *lo = longopts; lo->name; lo++)
            if (lo->val == ch)
                name = lo->name;
        switch (ch) {
        case 'd': o->data = optarg; break;
        case 'l': o->listen = optarg; break;
        case 'p': o->port_file = optarg; break;
        case 'F': o->log_file = optarg; break;
        case 't':
            if (parse_u64(optarg, &v, 0) || v < 1 || v > 256) bad_value(name, optarg);
            o->threads = (int)v; break;
        case 'r': if (parse_u64(optarg, &o->resident_budget, 1)) bad_value(name, optarg); break;
        case 'c': if (parse_u64(optarg, &o->block_cache, 1)) bad_value(name, optarg); break;
        case 'H': if (parse_u64(optarg, &o->hot_cache, 1)) bad_value(name, optarg); break;
        case 'm':
            if (parse_u64(optarg, &o->max_rows, 0) || o->max_rows < 1) bad_value(name, optarg);
            break;
        case 'M':
            if (parse_u64(optarg, &o->max_message, 1) || o->max_message < 4096 ||
                o->max_message > 2000000000ull) bad_value(name, optarg);
            break;
        case 'g': if (parse_u64(optarg, &v, 0)) bad_value(name, optarg); o->grace_ms = (int64_t)v; break;
        case 'L':
            if ((o->log_level = log_level_parse(optarg)) < 0) bad_value(name, optarg);
            break;
        case 'C': o->cluster = optarg; break;
        case 'S':
            if (parse_u64(optarg, &v, 0) || v >= CLUSTER_MAX_SHARDS) bad_value(name, optarg);
            o->shard = (int64_t)v; break;
        case 'K':
            if (parse_u64(optarg, &o->keep_versions, 0) || o->keep_versions < 2 ||
                o->keep_versions > STORE_MAX_VERSIONS - 2) bad_value(name, optarg);
            break;
        case OPT_METRICS_LISTEN: o->metrics_listen = optarg; break;
        case OPT_RELOAD_CHECK_MS:
            if (parse_u64(optarg, &v, 0) || v > 86400000) bad_value(name, optarg);
            o->reload_check_ms = (int64_t)v; break;
        case OPT_MAX_REPLY_BYTES:
            if (parse_u64(optarg, &o->max_reply_bytes, 1)) bad_value(name, optarg);
            break;
        case OPT_MAX_REPLY_BYTES_PER_CONN:
            if (parse_u64(optarg, &o->max_reply_bytes_per_conn, 1)) bad_value(name, optarg);
            break;
        case OPT_KEEPALIVE_MS:
            if (parse_u64(optarg, &v, 0) || (v && v < 1000) || v > INT32_MAX) bad_value(name, optarg);
            o->keepalive_ms = (int64_t)v; break;
        case OPT_KEEPALIVE_TIMEOUT_MS:
            if (parse_u64(optarg, &v, 0) || v < 1000 || v > INT32_MAX) bad_value(name, optarg);
            o->keepalive_timeout_ms = (int64_t)v; break;
        case OPT_CONN_IDLE_MS:
            if (parse_u64(optarg, &v, 0) || (v && v < 1000) || v > INT32_MAX) bad_value(name, optarg);
            o->conn_idle_ms = (int64_t)v; break;
        case OPT_ALLOW_PLAINTEXT_TOKEN: o->sec.allow_plaintext_token = 1; break;
        case OPT_TLS_CERT: o->sec.tls_cert = optarg; break;
        case OPT_TLS_KEY: o->sec.tls_key = optarg; break;
        case OPT_TLS_CLIENT_CA: o->sec.tls_client_ca = optarg; break;
        case OPT_ADMIN_LISTEN: o->admin_listen = optarg; break;
        case OPT_ADMIN_TOKEN_FILE: o->sec.admin_token_file = optarg; break;
        case OPT_ADMIN_NAMES: o->sec.admin_names = optarg; break;
        case OPT_MAX_CALLS: if (parse_u64(optarg, &o->sec.max_calls, 0)) bad_value(name, optarg); break;
        case OPT_MAX_CALLS_PER_CONN:
            if (parse_u64(optarg, &o->max_calls_per_conn, 0) || o->max_calls_per_conn > INT32_MAX)
                bad_value(name, optarg);
            break;
        case OPT_MAX_IMPORT_BYTES: if (parse_u64(optarg, &o->max_import_bytes, 1)) bad_value(name, optarg); break;
        case OPT_MAX_MANIFEST_BYTES:
            if (parse_u64(optarg, &o->max_manifest_bytes, 1)) bad_value(name, optarg);
            break;
        case OPT_DEFAULT_DEADLINE_MS:
            if (parse_u64(optarg, &v, 0) || v > INT32_MAX) bad_value(name, optarg);
            o->sec.default_deadline_ms = (int64_t)v; break;
        case OPT_IMPORT_IDLE_MS:
            if (parse_u64(optarg, &v, 0) || v > INT32_MAX) bad_value(name, optarg);
            o->import_idle_ms = (int64_t)v; break;
        case OPT_MAX_IMPORTS:
            if (parse_u64(optarg, &o->max_imports, 0) || o->max_imports > 100000) bad_value(name, optarg);
            break;
        case OPT_DISK_RESERVE_BYTES:
            if (parse_u64(optarg, &v, 1) || v > INT64_MAX) bad_value(name, optarg);
            o->disk_reserve = (int64_t)v; break;
        case OPT_SHM_DIR:
            if (!*optarg) bad_value(name, optarg);
            o->shm.dir = optarg; break;
        case OPT_SHM_GROUP: parse_group(optarg, &o->shm); break;
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); exit(2);
        }
    }
    if (optind < argc) {
        fprintf(stderr, "engram-server: unexpected argument \"%s\"\n", argv[optind]);
        exit(2);
    }
    o->sec.admin_plane_listen = o->admin_listen ? o->admin_listen : o->listen;
    if (o->shm.group_set && !o->shm.dir) {
        fprintf(stderr, "engram-server: --shm-group needs --shm-dir\n");
        exit(2);
    }
    if (!o->cluster != (o->shard < 0)) {
        fprintf(stderr, "engram-server: --cluster and --shard go together\n");
        exit(2);
    }
}

/* Waits for SIGINT or SIGTERM and returns it. Meanwhile SIGHUP reloads the
 * secrets, and every check_ms (0: never) they are reloaded if their files
 * changed: in Kubernetes a rotated Secret appears in the mounted files and
 * nothing sends a signal. */
static int wait_signals(const sigset_t *sigs, int64_t check_ms)
{
    for (;;) {
        int sig;
        if (check_ms > 0) {
            struct timespec ts = {check_ms / 1000, (check_ms % 1000) * 1000000};
            sig = sigtimedwait(sigs, NULL, &ts);
            if (sig < 0 && errno == EAGAIN) {
                security_reload_if_changed();
                continue;
            }
        } else if (sigwait(sigs, &sig) != 0) {
            sig = -1;
        }
        if (sig == SIGHUP)
            security_reload("sighup");
        else if (sig > 0)
            return sig;
    }
}

static void write_port_file(const char *path, int port)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f || fprintf(f, "%d\n", port) < 0 || fclose(f) != 0 || rename(tmp, path) != 0)
        log_error("port_file_failed", "path=%s error=\"%s\"", path, strerror(errno));
}

/* The cluster map, or the one-shard map of this server alone. */
static engram_cluster *load_cluster(const options *o)
{
    if (!o->cluster)
        return cluster_single(o->listen);
    char err[512];
    engram_cluster *c = cluster_load(o->cluster, err, sizeof err);
    if (!c) {
        fprintf(stderr, "engram-server: %s\n", err);
        return NULL;
    }
    if ((uint64_t)o->shard >= c->shards) {
        fprintf(stderr, "engram-server: --shard %lld is outside the map's %u shards\n",
                (long long)o->shard, c->shards);
        cluster_free(c);
        return NULL;
    }
    return c;
}

/* The one-shard map with the bound port, when --listen asked for port 0:
 * the map served until then would send clients (engramctl drop-version)
 * to HOST:0. NULL when the map already names the right port. */
static char *bound_single_map(const options *o, int port)
{
    const char *colon = strrchr(o->listen, ':');
    if (o->cluster || !colon || strcmp(colon + 1, "0") != 0)
        return NULL;
    char addr[CLUSTER_ADDR_MAX + 1];
    snprintf(addr, sizeof addr, "%.*s:%d", (int)(colon - o->listen), o->listen, port);
    engram_cluster *c = cluster_single(addr);
    char *json = cluster_to_json(c);
    cluster_free(c);
    return json;
}

/* The data directory holds another shard than the flags ask for: a
 * configuration mistake, named in the flags' own terms. */
static void refuse_placement(const options *o, const engram_cluster *cl, const store_placement *held)
{
    char asked[96];
    if (o->cluster)
        snprintf(asked, sizeof asked, "with --shard %lld of %u", (long long)o->shard, cl->shards);
    else
        snprintf(asked, sizeof asked, "without --cluster (shard 0 of 1)");
    fprintf(stderr, "engram-server: data dir %s holds shard %u of %u; started %s\n", o->data,
            held->index, held->count, asked);
}

int main(int argc, char **argv)
{
    options o;
    parse_args(argc, argv, &o);
    FILE *logf = o.log_file ? fopen(o.log_file, "a") : NULL;
    if (o.log_file && !logf) {
        fprintf(stderr, "engram-server: cannot open log file %s: %s\n", o.log_file, strerror(errno));
        return 1;
    }
    log_setup(logf, (log_level)o.log_level);

    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    /* Security before anything is opened: an unreadable certificate or
     * token exits 2 here. It also registers the first admission hooks
     * (auth, then limits): hooks run in registration order, so this stays
     * above every other module's setup, drain's in particular. */
    procinfo_setup();
    hooks_setup();
    static server_metrics svm;
    char serr[600];
    if (security_setup(&o.sec, &svm, serr, sizeof serr)) {
        fprintf(stderr, "engram-server: %s\n", serr);
        return 2;
    }
    engram_cluster *cl = load_cluster(&o);
    if (!cl)
        return 2;
    char *cluster_json = cluster_to_json(cl);
    /* Before the store: its start-up loads publish files there, and the
     * files a crashed run left must be gone first. */
    static shm_metrics shmm;
    char err[600];
    if (shm_setup(&o.shm, &shmm, err, sizeof err) != ES_OK) {
        fprintf(stderr, "engram-server: %s\n", err);
        free(cluster_json);
        cluster_free(cl);
        return 2;
    }
    grpc_init();
    static store_metrics sm;
    store_options so = {o.data, o.resident_budget, o.block_cache, cl->shards,
                        o.shard < 0 ? 0 : (uint32_t)o.shard, (uint32_t)o.keep_versions,
                        o.hot_cache, o.disk_reserve};
    store_placement held;
    store *st;
    int code = store_setup(&so, &sm, &st, &held, err, sizeof err);
    if (code != ES_OK) {
        if (code == ES_FAILED_PRECONDITION)
            refuse_placement(&o, cl, &held);
        else
            log_error("store_open_failed", "data=%s error=\"%s\"", o.data, err);
        grpc_shutdown();
        shm_teardown();
        free(cluster_json);
        cluster_free(cl);
        return code == ES_FAILED_PRECONDITION ? 2 : 1;
    }
    static import_metrics im;
    reply_budget_options rbo = {o.max_reply_bytes, o.max_reply_bytes_per_conn};
    reply_budget_setup(&rbo);
    lookup_options lo = {o.max_rows, o.max_message};
    lookup_setup(st, &lo);
    admin_setup(st, cluster_json);
    local_tables_setup(st);
    manifests_setup(st, o.max_manifest_bytes);
    import_options io = {(uint32_t)(o.max_message / 2 < (1u << 20) ? o.max_message / 2 : (1u << 20)),
                         256ull << 20, o.max_import_bytes, o.import_idle_ms,
                         (uint32_t)o.max_imports};
    import_setup(st, &io, &im);
    health_setup();
    drain_setup();               /* after security_setup: auth refuses first */
    warm_setup(st);
    verify_setup(st);

    /* The reads a worker needs to route and open models (table info,
     * manifests, the cluster map, the local table files) are PLANE_ANY:
     * served on every listener and admitted without admin credentials, like
     * Lookup itself. Writes and operations stay on the admin plane. */
    const method_def methods[] = {
        {METHOD_LOOKUP, PLANE_DATA, lookup_handle, NULL, 32},
        {METHOD_LIST_TABLES, PLANE_ANY, admin_list_tables, NULL, 2},
        {METHOD_GET_TABLE, PLANE_ANY, admin_get_table, NULL, 4},
        {METHOD_IMPORT, PLANE_ADMIN, NULL, import_stream, 2},
        {METHOD_PUT_MANIFEST, PLANE_ADMIN, manifests_put, NULL, 1},
        {METHOD_GET_MANIFEST, PLANE_ANY, manifests_get, NULL, 4},
        {METHOD_LIST_MANIFESTS, PLANE_ANY, manifests_list, NULL, 1},
        {METHOD_ACTIVATE_VERSION, PLANE_ADMIN, admin_activate_version, NULL, 2},
        {METHOD_DROP_VERSION, PLANE_ADMIN, admin_drop_version, NULL, 1},
        {METHOD_GET_CLUSTER_MAP, PLANE_ANY, admin_get_cluster_map, NULL, 4},
        {METHOD_HEALTH_CHECK, PLANE_ANY, health_check, NULL, 2},
        {METHOD_HEALTH_WATCH, PLANE_ANY, NULL, health_watch, 2, 1},
        {METHOD_DRAIN, PLANE_ADMIN, drain_handle, NULL, 1},
        {METHOD_UNDRAIN, PLANE_ADMIN, undrain_handle, NULL, 1},
        {METHOD_WARM, PLANE_ADMIN, NULL, warm_stream, 1, 1},
        {METHOD_VERIFY, PLANE_ADMIN, NULL, verify_stream, 1, 1},
        {METHOD_STATS, PLANE_ADMIN, stats_handle, NULL, 2},
        {METHOD_SET_LOG_LEVEL, PLANE_ADMIN, admin_set_log_level, NULL, 1},
        {METHOD_LIST_LOCAL_TABLES, PLANE_ANY, local_tables_list, NULL, 2},
    };
    server_options sopts = {.listen = o.listen, .admin_listen = o.admin_listen, .threads = o.threads,
                            .max_message_bytes = (int)o.max_message,
                            .max_streams_per_conn = (int)o.max_calls_per_conn,
                            .keepalive_ms = (int)o.keepalive_ms,
                            .keepalive_timeout_ms = (int)o.keepalive_timeout_ms,
                            .conn_idle_ms = (int)o.conn_idle_ms,
                            .creds = security_server_creds(),
                            .admin_creds = o.admin_listen ? security_server_creds() : NULL};
    /* Stats count from the first call; a metrics address that cannot be
     * bound stops the start (exit 2) rather than leaving it unscraped. */
    stats_setup();
    hooks_add_done(stats_done);
    char merr[512];
    int metrics_ok = !o.metrics_listen || metrics_http_setup(o.metrics_listen, merr, sizeof merr);
    if (!metrics_ok)
        fprintf(stderr, "engram-server: --metrics-listen: %s\n", merr);
    int port = metrics_ok ? server_setup(&sopts, methods, sizeof methods / sizeof methods[0],
                                         hooks_get(), &svm) : 0;
    int rc = 0;
    char *bound_json = port ? bound_single_map(&o, port) : NULL;
    if (bound_json)
        admin_set_cluster_map(bound_json);   /* before the port file tells anyone */
    if (port) {
        log_info("server_started", "listen=%s port=%d threads=%d data=%s shard=%lld shards=%u "
                 "resident_budget=%llu max_rows=%llu max_message_bytes=%llu version=%s transport=%s admin_port=%d",
                 o.listen, port, o.threads, o.data, o.shard < 0 ? 0LL : (long long)o.shard, cl->shards,
                 (unsigned long long)o.resident_budget,
                 (unsigned long long)o.max_rows, (unsigned long long)o.max_message, ENGRAM_VERSION,
                 security_transport_name(), server_admin_port());
        security_log_startup();
        if (o.port_file)
            write_port_file(o.port_file, port);
        int sig = wait_signals(&sigs, o.reload_check_ms);
        log_info("server_stopping", "signal=%s", sig == SIGINT ? "SIGINT" : "SIGTERM");
    } else {
        rc = 1;
    }
    if (!metrics_ok)
        rc = 2;
    health_shutdown();           /* ends open Watch calls, or shutdown would wait for them */
    server_teardown(o.grace_ms);
    verify_teardown();
    warm_teardown();
    drain_teardown();
    security_teardown();
    import_teardown();
    manifests_teardown();
    local_tables_teardown();
    admin_teardown();
    metrics_http_teardown();
    log_info("server_stopped", "lookups=%llu imports=%llu",
             (unsigned long long)stats_lookups(),
             (unsigned long long)METRIC_GET(&im, completed));
    stats_teardown();
    health_teardown();
    hooks_teardown();
    lookup_teardown();
    reply_budget_teardown();
    store_teardown(st);          /* unlinks every shm file it published */
    shm_teardown();
    procinfo_teardown();
    grpc_shutdown();
    free(cluster_json);
    free(bound_json);
    cluster_free(cl);
    if (logf)
        fclose(logf);
    return rc;
}
