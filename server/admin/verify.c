/* verify.c: Admin.Verify (see verify.h).
 *
 * Batches run as steps of the call on the admin worker, as Warm's do: read
 * about VERIFY_BATCH_BYTES of rows, hash them, send a progress message,
 * read the next batch when the send completes; other admin calls are
 * served between steps, and a client that goes away ends the call at its
 * next send. The version is pinned by a reference for the whole call, so
 * a drop meanwhile cannot delete its rows under the scan.
 *
 * The first problem found (a row missing or of the wrong length, a RocksDB
 * read error, the RAM copy differing) is kept and the scan goes on where
 * it can, so the final message still reports the checksums of what was
 * read; a structural problem ends the scan, since nothing after it could
 * hash to the recorded values anyway. */
#include "verify.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>
#include <zlib.h>

#include "engram/v1/engram.pb-c.h"
#include "grpc_util.h"
#include "log.h"
#include "status.h"

/* Rows per step: enough to amortise a message, small enough that other
 * admin calls wait little between steps. */
#define VERIFY_BATCH_BYTES (4u << 20)

static store *V;

void verify_setup(store *s)
{
    V = s;
}

void verify_teardown(void)
{
    V = NULL;
}

typedef struct verify_job {
    table_version *tv;
    store_scan *scan;
    uint8_t *buf;
    size_t batch_rows;
    uint64_t done;
    XXH3_state_t *xxh;
    uint32_t crc;
    char problem[512];
    uint64_t started_ns;
} verify_job;

static void job_free(void *p)
{
    verify_job *j = p;
    store_scan_close(j->scan);
    table_version_release(j->tv);
    if (j->xxh)
        XXH3_freeState(j->xxh);
    free(j->buf);
    free(j);
}

/* The version asked for, with a reference; NULL with msg and *code. */
static table_version *find_version(const Engram__V1__VerifyRequest *rq, int *code, char *msg,
                                   size_t msglen)
{
    *code = ES_NOT_FOUND;
    if (!*rq->table) {
        *code = ES_INVALID_ARGUMENT;
        snprintf(msg, msglen, "table name is empty");
        return NULL;
    }
    table_version *tv = store_acquire(V, rq->table, rq->version);
    if (tv)
        return tv;
    table_version **vs;
    size_t n = store_versions(V, rq->table, &vs);
    for (size_t i = 0; i < n; i++)
        table_version_release(vs[i]);
    free(vs);
    if (n == 0)
        snprintf(msg, msglen, "table \"%.128s\" not found", rq->table);
    else if (rq->version)
        snprintf(msg, msglen, "table \"%.128s\" has no version %llu on this server", rq->table,
                 (unsigned long long)rq->version);
    else
        snprintf(msg, msglen, "table \"%.128s\" has no active version on this server; name a "
                 "staged one", rq->table);
    return NULL;
}

static void keep_problem(verify_job *j, const char *what)
{
    if (!j->problem[0])
        snprintf(j->problem, sizeof j->problem, "%s", what);
}

/* Lookups of a resident version read its RAM copy: it must equal the
 * stored rows just read (rows [done, done + n)). */
static void check_resident(verify_job *j, size_t n)
{
    const size_t rb = j->tv->row_bytes;
    const uint8_t *ram = j->tv->resident + j->done * rb;
    if (j->problem[0] || memcmp(ram, j->buf, n * rb) == 0)
        return;
    size_t i = 0;
    while (memcmp(ram + i * rb, j->buf + i * rb, rb) == 0)
        i++;
    snprintf(j->problem, sizeof j->problem, "row %llu in RAM (what lookups read) differs from the "
             "stored row", (unsigned long long)(j->done + i));
}

/* ---- the result ------------------------------------------------------------ */

static void fill_geometry(Engram__V1__VerifyProgress *p, const table_version *tv)
{
    p->table = (char *)tv->name;
    p->version = tv->version;
    p->rows_total = tv->local_rows;
    p->rows = tv->rows;
    p->row_bytes = tv->row_bytes;
    p->dim = tv->dim;
    p->dtype = (char *)tv->dtype;
    store_shard(V, &p->shard_count, &p->shard_index);
}

/* The checksums against the recorded ones, unless a problem came first. */
static void judge(verify_job *j, uint64_t xxh3)
{
    const table_version *tv = j->tv;
    int xxh_bad = tv->xxh3 && xxh3 != tv->xxh3, crc_bad = j->crc != tv->checksum;
    if (j->problem[0] || (!xxh_bad && !crc_bad))
        return;
    snprintf(j->problem, sizeof j->problem, "the stored rows hash to xxh3 %016llx crc32 %08x; "
             "recorded at import: xxh3 %016llx crc32 %08x", (unsigned long long)xxh3, j->crc,
             (unsigned long long)tv->xxh3, tv->checksum);
}

static void on_last_sent(server_call *c, int ok)
{
    if (ok)
        call_finish(c, ES_OK, NULL, NULL);
    else
        call_finish(c, ES_CANCELLED, "the Verify client went away", NULL);
}

static void finish_job(server_call *c, verify_job *j)
{
    const table_version *tv = j->tv;
    uint64_t xxh3 = XXH3_64bits_digest(j->xxh);
    judge(j, xxh3);
    Engram__V1__VerifyProgress p = ENGRAM__V1__VERIFY_PROGRESS__INIT;
    fill_geometry(&p, tv);
    p.rows_done = j->done;
    p.done = 1;
    p.match = !j->problem[0];
    p.xxh3 = xxh3;
    p.crc32 = j->crc;
    p.stored_xxh3 = tv->xxh3;
    p.stored_crc32 = tv->checksum;
    p.resident = tv->resident != NULL;
    p.problem = j->problem;
    if (p.match)
        log_info("verify_done", "table=%s version=%llu rows=%llu xxh3=%016llx crc32=%08x "
                 "match=1 ms=%.1f", tv->name, (unsigned long long)tv->version,
                 (unsigned long long)j->done, (unsigned long long)xxh3, j->crc,
                 (double)(now_ns() - j->started_ns) / 1e6);
    else
        log_error("verify_mismatch", "table=%s version=%llu rows=%llu problem=\"%s\"", tv->name,
                  (unsigned long long)tv->version, (unsigned long long)j->done, j->problem);
    call_send(c, pb_to_byte_buffer(&p.base), on_last_sent);
}

/* ---- the batches ----------------------------------------------------------- */

/* Reads, hashes and reports the next batch (or sends the result). */
static void step(server_call *c, int ok)
{
    verify_job *j = c->state;
    if (!ok) {
        call_finish(c, ES_CANCELLED, "the Verify client went away", NULL);
        return;
    }
    char msg[512];
    size_t n;
    int code = store_scan_next(j->scan, j->buf, j->batch_rows, &n, msg, sizeof msg);
    if (code != ES_OK || n == 0) {
        if (code != ES_OK)
            keep_problem(j, msg);
        finish_job(c, j);
        return;
    }
    size_t bytes = (size_t)n * j->tv->row_bytes;
    XXH3_64bits_update(j->xxh, j->buf, bytes);
    j->crc = (uint32_t)crc32_z(j->crc, j->buf, bytes);
    if (j->tv->resident)
        check_resident(j, (size_t)n);
    j->done += (uint64_t)n;
    Engram__V1__VerifyProgress p = ENGRAM__V1__VERIFY_PROGRESS__INIT;
    p.table = (char *)j->tv->name;
    p.version = j->tv->version;
    p.rows_done = j->done;
    p.rows_total = j->tv->local_rows;
    p.row_bytes = j->tv->row_bytes;
    call_send(c, pb_to_byte_buffer(&p.base), step);
}

void verify_stream(server_call *c)
{
    char msg[512] = "";
    char why[160] = "no message";
    Engram__V1__VerifyRequest *rq = c->payload ? (Engram__V1__VerifyRequest *)pb_unpack(
        &engram__v1__verify_request__descriptor, c->payload, why, sizeof why) : NULL;
    if (!rq) {
        snprintf(msg, sizeof msg, "malformed VerifyRequest: %s", why);
        call_finish(c, ES_INVALID_ARGUMENT, msg, NULL);
        return;
    }
    int code;
    table_version *tv = find_version(rq, &code, msg, sizeof msg);
    protobuf_c_message_free_unpacked(&rq->base, NULL);
    if (!tv) {
        call_finish(c, code, msg, NULL);
        return;
    }
    verify_job *j = calloc(1, sizeof *j);
    j->started_ns = now_ns();
    j->tv = tv;
    j->batch_rows = VERIFY_BATCH_BYTES / tv->row_bytes ? VERIFY_BATCH_BYTES / tv->row_bytes : 1;
    j->buf = malloc(j->batch_rows * tv->row_bytes);
    j->xxh = XXH3_createState();
    XXH3_64bits_reset(j->xxh);
    j->scan = store_scan_open(tv);
    c->state = j;
    c->state_free = job_free;
    log_info("verify_started", "table=%s version=%llu local_rows=%llu resident=%d", tv->name,
             (unsigned long long)tv->version, (unsigned long long)tv->local_rows,
             tv->resident != NULL);
    step(c, 1);
}
