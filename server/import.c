/* import.c: the Import stream's state machine (see import.h).
 *
 * Why rows must come in order: SstFileWriter needs keys in ascending order,
 * and requiring the client to send them that way lets the server stream
 * them to disk with O(1) memory and detect every overlap and gap the moment
 * it happens, instead of buffering a table to sort it. Both checksums
 * (CRC-32 and XXH3-64 of all rows in row order) are computed on the way
 * through, which in-order chunks make a plain streaming hash.
 *
 * The trailer: a client that sends one (libengram always does) states the
 * XXH3 of what it sent; it is compared before the files are ingested, so
 * rows damaged on the way are never activated. A header that announces it
 * (trailer_follows) makes it required: gRPC core ends a read on a dead
 * connection as it ends one on a half-close, so a client killed after its
 * last chunk would otherwise look like a finished import. A mismatch is DATA_LOSS, not
 * INVALID_ARGUMENT: the request was well formed, the bytes that arrived are
 * not the bytes that were sent, and sending them again may well work. */
#include "import.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>
#include <zlib.h>

#include "admin.h"
#include "cluster.h"
#include "dtype.h"
#include "engram/v1/engram.pb-c.h"
#include "grpc_util.h"
#include "hooks.h"
#include "log.h"
#include "status.h"

struct import_state {
    int have_header;
    int stage;
    int claimed;
    int activated;
    table_version tv;            /* the version being written */
    uint64_t next_row;
    uint32_t crc;
    XXH3_state_t *xxh;
    int have_trailer;
    int trailer_promised;        /* the header's trailer_follows */
    uint64_t client_xxh3;        /* the trailer's */
    uint64_t started_ns;
    char dir[4096];
    rocksdb_envoptions_t *envo;
    rocksdb_sstfilewriter_t *w;
    uint64_t file_bytes;
    char **files;
    size_t nfiles;
};

static struct {
    store *s;
    import_options o;
    import_metrics *m;
    import_metrics m_none;
    uint64_t seq;
} I;

void import_setup(store *s, const import_options *opts, import_metrics *metrics)
{
    I.s = s;
    I.o = *opts;
    I.m = metrics ? metrics : &I.m_none;
}

void import_teardown(void)
{
    I.s = NULL;
}

static void remove_files(import_state *st)
{
    for (size_t i = 0; i < st->nfiles; i++) {
        unlink(st->files[i]);
        free(st->files[i]);
    }
    free(st->files);
    st->files = NULL;
    st->nfiles = 0;
    if (st->dir[0])
        rmdir(st->dir);
}

void import_state_free(import_state *st)
{
    if (st->w)
        rocksdb_sstfilewriter_destroy(st->w);
    if (st->envo)
        rocksdb_envoptions_destroy(st->envo);
    if (st->xxh)
        XXH3_freeState(st->xxh);
    remove_files(st);
    if (st->claimed && !st->activated)
        store_import_unclaim(I.s, st->tv.name);
    free(st);
}

static void fail(server_call *c, int code, const char *msg)
{
    import_state *st = c->state;
    __atomic_add_fetch(&I.m->failed, 1, __ATOMIC_RELAXED);
    log_warn("import_failed", "table=%s status=%s rows_received=%llu error=\"%s\"",
             st->have_header ? st->tv.name : "-", es_code_name(code),
             (unsigned long long)st->next_row, msg);
    call_finish(c, code, msg, NULL);
}

/* ---- header ------------------------------------------------------------- */

static int check_header(const Engram__V1__ImportHeader *h, char *msg, size_t msglen)
{
    size_t es = dtype_size(h->dtype);
    if (!table_name_valid(h->table)) {
        snprintf(msg, msglen, "invalid table name \"%.140s\": use 1-128 characters of [A-Za-z0-9._-]", h->table);
        return ES_INVALID_ARGUMENT;
    }
    if (h->rows == 0) {
        snprintf(msg, msglen, "table \"%s\" declares 0 rows; a table needs at least one", h->table);
        return ES_INVALID_ARGUMENT;
    }
    if (es == 0) {
        snprintf(msg, msglen, "unknown dtype \"%.32s\"; expected one of %s", h->dtype, dtype_list());
        return ES_INVALID_ARGUMENT;
    }
    if (h->dim == 0 || (uint64_t)h->dim * es > I.o.max_row_bytes) {
        snprintf(msg, msglen, "dim %u of dtype %s gives rows of %llu bytes; allowed: 1..%u bytes",
                 h->dim, h->dtype, (unsigned long long)h->dim * es, I.o.max_row_bytes);
        return ES_INVALID_ARGUMENT;
    }
    if (h->rows > UINT64_MAX / ((uint64_t)h->dim * es)) {
        snprintf(msg, msglen, "table of %llu rows overflows 64 bits of bytes", (unsigned long long)h->rows);
        return ES_INVALID_ARGUMENT;
    }
    return ES_OK;
}

/* A sharded server takes only imports cut for its own shard: rows of
 * another shard under its keys would be served as wrong bytes. */
static int check_shard(const Engram__V1__ImportHeader *h, char *msg, size_t msglen)
{
    uint32_t shards, shard;
    store_shard(I.s, &shards, &shard);
    if (h->shard_count == 0 && shards == 1)
        return ES_OK;
    if (h->shard_count == shards && h->shard_index == shard)
        return ES_OK;
    snprintf(msg, msglen, "import is cut for shard %u of %u; this server is shard %u of %u",
             h->shard_index, h->shard_count, shard, shards);
    return ES_FAILED_PRECONDITION;
}

/* --max-import-bytes: what this server would store (its shard's rows),
 * refused before the claim so a too-large import costs nothing. */
static int check_size(const Engram__V1__ImportHeader *h, uint64_t local_rows, char *msg, size_t msglen)
{
    uint64_t row_bytes = (uint64_t)h->dim * dtype_size(h->dtype);
    uint64_t bytes = local_rows * row_bytes;   /* check_header ruled out overflow */
    if (!I.o.max_import_bytes || bytes <= I.o.max_import_bytes)
        return ES_OK;
    hooks_refused(REFUSAL_MAX_IMPORT_BYTES);
    snprintf(msg, msglen, "import of table \"%s\" is %llu bytes (%llu rows of %llu bytes); "
             "the limit is %llu bytes (--max-import-bytes)", h->table, (unsigned long long)bytes,
             (unsigned long long)local_rows, (unsigned long long)row_bytes,
             (unsigned long long)I.o.max_import_bytes);
    return ES_RESOURCE_EXHAUSTED;
}

static int on_header(import_state *st, const Engram__V1__ImportHeader *h, char *msg, size_t msglen)
{
    if (st->have_header) {
        snprintf(msg, msglen, "a second header arrived after row %llu; send one header, then chunks",
                 (unsigned long long)st->next_row);
        return ES_INVALID_ARGUMENT;
    }
    int code = check_header(h, msg, msglen);
    if (code != ES_OK)
        return code;
    if ((code = check_shard(h, msg, msglen)) != ES_OK)
        return code;
    table_version *tv = &st->tv;
    uint32_t shards, shard;
    store_shard(I.s, &shards, &shard);
    if ((code = check_size(h, cluster_local_rows(h->rows, shards, shard), msg, msglen)) != ES_OK)
        return code;
    snprintf(tv->name, sizeof tv->name, "%s", h->table);
    snprintf(tv->dtype, sizeof tv->dtype, "%s", h->dtype);
    tv->rows = h->rows;
    tv->local_rows = cluster_local_rows(h->rows, shards, shard);
    tv->dim = h->dim;
    tv->row_bytes = (uint32_t)(h->dim * dtype_size(h->dtype));
    st->stage = h->stage;
    st->trailer_promised = h->trailer_follows;
    st->have_header = 1;
    /* The claim refuses a version the table has no room for, before any
     * row is received or written. */
    code = store_import_claim(I.s, tv->name, h->version, st->stage, &tv->table_id, &tv->version,
                              msg, msglen);
    if (code != ES_OK)
        return code;
    st->claimed = 1;
    snprintf(st->dir, sizeof st->dir, "%s/%s.v%llu.%d.%llu", store_tmp_dir(I.s), tv->name,
             (unsigned long long)tv->version, (int)getpid(),
             (unsigned long long)__atomic_add_fetch(&I.seq, 1, __ATOMIC_RELAXED));
    if (mkdir(st->dir, 0755) < 0) {
        snprintf(msg, msglen, "cannot create import directory %.300s: %s", st->dir, strerror(errno));
        st->dir[0] = 0;
        return ES_INTERNAL;
    }
    log_info("import_started", "table=%s version=%llu rows=%llu local_rows=%llu row_bytes=%u dtype=%s stage=%d",
             tv->name, (unsigned long long)tv->version, (unsigned long long)tv->rows,
             (unsigned long long)tv->local_rows, tv->row_bytes, tv->dtype, st->stage);
    return ES_OK;
}

/* ---- chunks ------------------------------------------------------------- */

static int sst_roll(import_state *st, char *msg, size_t msglen)
{
    char *rerr = NULL;
    if (st->w) {
        rocksdb_sstfilewriter_finish(st->w, &rerr);
        rocksdb_sstfilewriter_destroy(st->w);
        st->w = NULL;
        if (rerr)
            goto err;
    }
    if (!st->envo)
        st->envo = rocksdb_envoptions_create();
    char path[4200];
    snprintf(path, sizeof path, "%s/%06zu.sst", st->dir, st->nfiles);
    st->files = realloc(st->files, (st->nfiles + 1) * sizeof *st->files);
    st->files[st->nfiles++] = strdup(path);
    st->w = rocksdb_sstfilewriter_create(st->envo, store_rows_options(I.s));
    st->file_bytes = 0;
    rocksdb_sstfilewriter_open(st->w, path, &rerr);
    if (!rerr)
        return ES_OK;
err:
    snprintf(msg, msglen, "writing SST file failed: %s", rerr);
    free(rerr);
    return ES_INTERNAL;
}

static int check_chunk(const import_state *st, const Engram__V1__ImportChunk *ch,
                       char *msg, size_t msglen)
{
    const table_version *tv = &st->tv;
    uint64_t start = ch->start_row, len = ch->data.len;
    if (start < st->next_row) {
        snprintf(msg, msglen, "chunk at row %llu overlaps rows already received (next expected row is %llu)",
                 (unsigned long long)start, (unsigned long long)st->next_row);
        return ES_INVALID_ARGUMENT;
    }
    if (start > st->next_row) {
        snprintf(msg, msglen, "chunk at row %llu leaves a gap: rows %llu..%llu were never sent",
                 (unsigned long long)start, (unsigned long long)st->next_row,
                 (unsigned long long)start - 1);
        return ES_INVALID_ARGUMENT;
    }
    if (len == 0 || len % tv->row_bytes) {
        snprintf(msg, msglen, "chunk at row %llu has %llu bytes, not a positive whole number of %u-byte rows",
                 (unsigned long long)start, (unsigned long long)len, tv->row_bytes);
        return ES_INVALID_ARGUMENT;
    }
    if (len / tv->row_bytes > tv->local_rows - start) {
        snprintf(msg, msglen, "chunk at row %llu carries %llu rows, past the %llu rows this server holds",
                 (unsigned long long)start, (unsigned long long)(len / tv->row_bytes),
                 (unsigned long long)tv->local_rows);
        return ES_INVALID_ARGUMENT;
    }
    return ES_OK;
}

static int on_chunk(import_state *st, const Engram__V1__ImportChunk *ch, char *msg, size_t msglen)
{
    if (!st->have_header) {
        snprintf(msg, msglen, "chunk at row %llu arrived before the header; the first message must carry the header",
                 (unsigned long long)ch->start_row);
        return ES_INVALID_ARGUMENT;
    }
    if (st->have_trailer) {
        snprintf(msg, msglen, "chunk at row %llu arrived after the trailer; the trailer comes last",
                 (unsigned long long)ch->start_row);
        return ES_INVALID_ARGUMENT;
    }
    int code = check_chunk(st, ch, msg, msglen);
    if (code != ES_OK)
        return code;
    table_version *tv = &st->tv;
    uint64_t n = ch->data.len / tv->row_bytes;
    for (uint64_t i = 0; i < n; i++) {
        if ((!st->w || st->file_bytes >= I.o.sst_file_bytes) &&
            (code = sst_roll(st, msg, msglen)) != ES_OK)
            return code;
        uint8_t key[ROW_KEY_LEN];
        store_row_key(key, tv->table_id, tv->version, st->next_row + i);
        char *rerr = NULL;
        rocksdb_sstfilewriter_put(st->w, (char *)key, sizeof key,
                                  (char *)ch->data.data + i * tv->row_bytes, tv->row_bytes, &rerr);
        if (rerr) {
            snprintf(msg, msglen, "writing row %llu failed: %s", (unsigned long long)(st->next_row + i), rerr);
            free(rerr);
            return ES_INTERNAL;
        }
        st->file_bytes += tv->row_bytes + sizeof key;
    }
    st->crc = (uint32_t)crc32_z(st->crc, ch->data.data, ch->data.len);
    XXH3_64bits_update(st->xxh, ch->data.data, ch->data.len);
    st->next_row += n;
    __atomic_add_fetch(&I.m->rows, n, __ATOMIC_RELAXED);
    __atomic_add_fetch(&I.m->bytes, ch->data.len, __ATOMIC_RELAXED);
    return ES_OK;
}

/* ---- trailer and end of stream ---------------------------------------------- */

/* Only once, and only after the last row: what it covers must be final. */
static int on_trailer(import_state *st, const Engram__V1__ImportTrailer *t, char *msg,
                      size_t msglen)
{
    if (!st->have_header) {
        snprintf(msg, msglen, "trailer arrived before the header; the first message must carry the header");
        return ES_INVALID_ARGUMENT;
    }
    if (st->have_trailer) {
        snprintf(msg, msglen, "a second trailer arrived; send one, after the last chunk");
        return ES_INVALID_ARGUMENT;
    }
    if (st->next_row != st->tv.local_rows) {
        snprintf(msg, msglen, "trailer arrived after %llu of %llu rows; send it after the last chunk",
                 (unsigned long long)st->next_row, (unsigned long long)st->tv.local_rows);
        return ES_INVALID_ARGUMENT;
    }
    st->have_trailer = 1;
    st->client_xxh3 = t->xxh3;
    return ES_OK;
}

/* The trailer the header promised, and the client's checksum against the
 * rows received (DATA_LOSS naming both). */
static int check_trailer(import_state *st, char *msg, size_t msglen)
{
    if (st->trailer_promised && !st->have_trailer) {
        /* How a client that died after its last chunk looks from here. */
        snprintf(msg, msglen, "import of table \"%s\" ended after all %llu rows but without "
                 "the trailer its header announced; nothing was activated", st->tv.name,
                 (unsigned long long)st->next_row);
        return ES_INVALID_ARGUMENT;
    }
    if (!st->have_trailer || st->client_xxh3 == st->tv.xxh3)
        return ES_OK;
    snprintf(msg, msglen, "import of table \"%s\": the %llu rows received hash to xxh3 %016llx, "
             "the client sent xxh3 %016llx for them; nothing was activated", st->tv.name,
             (unsigned long long)st->next_row, (unsigned long long)st->tv.xxh3,
             (unsigned long long)st->client_xxh3);
    return ES_DATA_LOSS;
}

static void on_end(server_call *c)
{
    import_state *st = c->state;
    char msg[512];
    if (!st->have_header)
        return fail(c, ES_INVALID_ARGUMENT, "import stream ended without a header; nothing was activated");
    if (st->next_row != st->tv.local_rows) {
        snprintf(msg, sizeof msg, "import of table \"%s\" ended after %llu of %llu rows; nothing was activated",
                 st->tv.name, (unsigned long long)st->next_row, (unsigned long long)st->tv.local_rows);
        return fail(c, ES_INVALID_ARGUMENT, msg);
    }
    char *rerr = NULL;
    if (st->w) {
        rocksdb_sstfilewriter_finish(st->w, &rerr);
        rocksdb_sstfilewriter_destroy(st->w);
        st->w = NULL;
    }
    if (rerr) {
        snprintf(msg, sizeof msg, "finishing SST file failed: %s", rerr);
        free(rerr);
        return fail(c, ES_INTERNAL, msg);
    }
    st->tv.checksum = st->crc;
    st->tv.xxh3 = XXH3_64bits_digest(st->xxh);
    int code = check_trailer(st, msg, sizeof msg);
    if (code != ES_OK)
        return fail(c, code, msg);
    code = store_commit_import(I.s, &st->tv, st->stage, (const char *const *)st->files,
                               st->nfiles, msg, sizeof msg);
    if (code != ES_OK) {
        st->claimed = 0;         /* store_commit_import ended the claim */
        return fail(c, code, msg);
    }
    st->activated = 1;
    table_version *tv = store_acquire(I.s, st->tv.name, st->tv.version);
    Engram__V1__ImportResponse resp = ENGRAM__V1__IMPORT_RESPONSE__INIT;
    table_info_buf tb;
    /* Out of memory here leaves the reply without its versions list; the
     * import itself is done and is not failed for it. */
    table_info_fill(&tb, I.s, tv ? tv : &st->tv);
    resp.table = &tb.ti;
    grpc_byte_buffer *reply = pb_to_byte_buffer(&resp.base);
    log_info("import_done", "table=%s version=%llu local_rows=%llu checksum=%08x xxh3=%016llx "
             "client_xxh3=%s staged=%d duration_ms=%llu", st->tv.name,
             (unsigned long long)st->tv.version, (unsigned long long)st->tv.local_rows, st->crc,
             (unsigned long long)st->tv.xxh3, st->have_trailer ? "match" : "none", st->stage,
             (unsigned long long)((now_ns() - st->started_ns) / 1000000));
    table_info_release(&tb);
    table_version_release(tv);
    __atomic_add_fetch(&I.m->completed, 1, __ATOMIC_RELAXED);
    call_finish(c, ES_OK, NULL, reply);
}

int import_message(import_state *st, const Engram__V1__ImportRequest *rq, char *msg,
                   size_t msglen)
{
    if (!rq) {
        snprintf(msg, msglen, "malformed ImportRequest after row %llu", (unsigned long long)st->next_row);
        return ES_INVALID_ARGUMENT;
    }
    if (rq->kind_case == ENGRAM__V1__IMPORT_REQUEST__KIND_HEADER)
        return on_header(st, rq->header, msg, msglen);
    if (rq->kind_case == ENGRAM__V1__IMPORT_REQUEST__KIND_CHUNK)
        return on_chunk(st, rq->chunk, msg, msglen);
    if (rq->kind_case == ENGRAM__V1__IMPORT_REQUEST__KIND_TRAILER)
        return on_trailer(st, rq->trailer, msg, msglen);
    snprintf(msg, msglen, "ImportRequest carries no header, chunk or trailer");
    return ES_INVALID_ARGUMENT;
}

static void on_message(server_call *c, int ok)
{
    import_state *st = c->state;
    char msg[512] = "";
    if (!ok)
        return fail(c, ES_CANCELLED, "import stream broken or cancelled; nothing was activated");
    /* A stream is checked against its deadline (the client's, or
     * --default-deadline-ms) as each message arrives: gRPC core gives a
     * server no way to end a call at its deadline by itself. */
    if (call_ms_left(c) <= 0) {
        snprintf(msg, sizeof msg, "import stream passed its deadline after row %llu; nothing was activated",
                 (unsigned long long)st->next_row);
        return fail(c, ES_DEADLINE_EXCEEDED, msg);
    }
    if (!c->payload)
        return on_end(c);
    Engram__V1__ImportRequest *rq = (Engram__V1__ImportRequest *)pb_from_byte_buffer(
        &engram__v1__import_request__descriptor, c->payload);
    int code = import_message(st, rq, msg, sizeof msg);
    if (rq)
        protobuf_c_message_free_unpacked(&rq->base, NULL);
    if (code != ES_OK)
        return fail(c, code, msg);
    call_recv(c, on_message);
}

import_state *import_state_new(void)
{
    import_state *st = calloc(1, sizeof *st);
    st->started_ns = now_ns();
    st->xxh = XXH3_createState();
    XXH3_64bits_reset(st->xxh);
    return st;
}

static void state_free(void *p)
{
    import_state_free(p);
}

void import_stream(server_call *c)
{
    import_state *st = import_state_new();
    c->state = st;
    c->state_free = state_free;
    __atomic_add_fetch(&I.m->started, 1, __ATOMIC_RELAXED);
    call_recv(c, on_message);
}
