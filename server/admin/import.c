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
 * not the bytes that were sent, and sending them again may well work.
 *
 * Bounds: --max-imports streams at once (RESOURCE_EXHAUSTED at arrival);
 * a reaper thread cancels a stream idle for --import-idle-ms or past its
 * deadline (see "the reaper"); an import must fit the free disk space above
 * the data dir's reserve at its header, and each chunk is checked against
 * free space again (disk.c says why RocksDB must never see a full disk).
 * A full disk is RESOURCE_EXHAUSTED, never INTERNAL. */
#include "import.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
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
    uint64_t reserved;           /* disk bytes still promised to this import */
    uint64_t unchecked;          /* bytes written since free space was read */
    int disk_read;               /* free space was read at least once */
    /* Under I.lock: the reaper's list and what it needs. */
    server_call *c;              /* NULL: driven without a call (tests, fuzz) */
    import_state *prev, *next;
    int waiting;                 /* a receive is posted */
    uint64_t wait_since_ns;
    int reaped;                  /* the reaper cancelled the call with: */
    int reaped_code;
    char reaped_msg[320];
};

static struct {
    store *s;
    import_options o;
    import_metrics *m;           /* NULL: not counted */
    uint64_t seq;
    pthread_mutex_t lock;        /* guards what follows */
    pthread_cond_t wake;
    import_state *list;          /* streams with a call, for the reaper */
    uint32_t running;            /* streams admitted (--max-imports) */
    uint64_t reserved;           /* sum of the streams' `reserved` */
    pthread_t reaper;
    int reaper_started, stopping;
} I = {.lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER};

void import_setup(store *s, const import_options *opts, import_metrics *metrics)
{
    I.s = s;
    I.o = *opts;
    I.m = metrics;
    if (metrics) {
        *metrics = (import_metrics){IMPORT_METRIC(METRIC_INIT)};
        metric_register((metric *)metrics, METRIC_CARDINALITY(*metrics), NULL, NULL);
    }
    I.stopping = 0;
    uint64_t free_bytes, reserve;
    store_disk_read(s, &free_bytes, &reserve);
    log_info("import_limits", "idle_ms=%lld max_imports=%u max_import_bytes=%llu "
             "disk_reserve_bytes=%llu disk_free_bytes=%llu", (long long)I.o.idle_ms,
             I.o.max_imports, (unsigned long long)I.o.max_import_bytes,
             (unsigned long long)reserve, (unsigned long long)free_bytes);
}

void import_teardown(void)
{
    pthread_mutex_lock(&I.lock);
    I.stopping = 1;
    int started = I.reaper_started;
    I.reaper_started = 0;
    pthread_cond_broadcast(&I.wake);
    pthread_mutex_unlock(&I.lock);
    if (started)
        pthread_join(I.reaper, NULL);
    metric_deregister(I.m);
    I.s = NULL;
}

/* ---- the reaper ------------------------------------------------------------ */

/* gRPC core ends a server call only when a message or the client arrives:
 * a stream that sends a header and then nothing would hold its table's
 * claim, a temp directory and an open SST file forever, and a deadline
 * checked only as messages arrive never fires. One thread watches every
 * import stream that is waiting for a message and cancels the call
 * (grpc_call_cancel_with_status, callable from any thread) once it has
 * waited --import-idle-ms or passed its deadline. The pending receive then
 * completes with ok = 0 on the call's own thread, which finds `reaped` and
 * ends the stream as every failed import ends: files removed, claim
 * released, nothing activated.
 *
 * The reaper only touches streams with `waiting` set, under I.lock; a
 * stream clears it (under the same lock) as its message arrives, so a call
 * is never cancelled while the server works on it, and a message that
 * arrives just as the reaper cancels is dropped, not half-applied. A
 * stream leaves the list (state_free, under the lock) before its call is
 * released, so the reaper never sees a freed call. */

#define REAP_TICK_MAX_MS 250

static void reap_one(import_state *st, int code, const char *msg)
{
    st->reaped = 1;
    st->reaped_code = code;
    snprintf(st->reaped_msg, sizeof st->reaped_msg, "%s", msg);
    grpc_call_cancel_with_status(st->c->call, (grpc_status_code)code, st->reaped_msg, NULL);
}

static void reap_check(import_state *st, uint64_t now)
{
    char msg[320];
    if (!st->waiting || st->reaped)
        return;
    if (I.o.idle_ms > 0 && now - st->wait_since_ns >= (uint64_t)I.o.idle_ms * 1000000) {
        if (st->have_header)
            snprintf(msg, sizeof msg, "import of table \"%s\" sent no message for %lld ms "
                     "(--import-idle-ms) after %llu of %llu rows; nothing was activated",
                     st->tv.name, (long long)I.o.idle_ms, (unsigned long long)st->next_row,
                     (unsigned long long)st->tv.local_rows);
        else
            snprintf(msg, sizeof msg, "import stream sent no header for %lld ms (--import-idle-ms); "
                     "nothing was activated", (long long)I.o.idle_ms);
        reap_one(st, ES_DEADLINE_EXCEEDED, msg);
    } else if (call_ms_left(st->c) <= 0) {
        snprintf(msg, sizeof msg, "import stream passed its deadline after row %llu; nothing was activated",
                 (unsigned long long)st->next_row);
        reap_one(st, ES_DEADLINE_EXCEEDED, msg);
    }
}

static void *reaper_main(void *arg)
{
    (void)arg;
    int64_t tick = I.o.idle_ms > 0 && I.o.idle_ms / 10 < REAP_TICK_MAX_MS ? I.o.idle_ms / 10
                                                                        : REAP_TICK_MAX_MS;
    if (tick < 10)
        tick = 10;
    pthread_mutex_lock(&I.lock);
    while (!I.stopping) {
        uint64_t now = now_ns();
        for (import_state *st = I.list; st; st = st->next)
            reap_check(st, now);
        if (!I.list) {
            pthread_cond_wait(&I.wake, &I.lock);
            continue;
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += (long)(tick % 1000) * 1000000;
        ts.tv_sec += tick / 1000 + ts.tv_nsec / 1000000000;
        ts.tv_nsec %= 1000000000;
        pthread_cond_timedwait(&I.wake, &I.lock, &ts);
    }
    pthread_mutex_unlock(&I.lock);
    return NULL;
}

/* Posts the next receive, the stream waiting from now. */
static void recv_next(server_call *c, call_step next)
{
    import_state *st = c->state;
    pthread_mutex_lock(&I.lock);
    st->waiting = 1;
    st->wait_since_ns = now_ns();
    pthread_mutex_unlock(&I.lock);
    call_recv(c, next);
}

/* A message (or the end, or a failure) arrived: the stream is no longer
 * waiting. Returns 1 when the reaper had already cancelled the call. */
static int arrived(import_state *st)
{
    pthread_mutex_lock(&I.lock);
    st->waiting = 0;
    int reaped = st->reaped;
    pthread_mutex_unlock(&I.lock);
    return reaped;
}

/* Admits a stream under --max-imports and puts it on the reaper's list. */
static int admit_stream(import_state *st, server_call *c, char *msg, size_t msglen)
{
    pthread_mutex_lock(&I.lock);
    if (I.o.max_imports && I.running >= I.o.max_imports) {
        snprintf(msg, msglen, "%u imports are running, the most this server takes at once "
                 "(--max-imports %u); retry when one has ended", I.running, I.o.max_imports);
        pthread_mutex_unlock(&I.lock);
        return ES_RESOURCE_EXHAUSTED;
    }
    I.running++;
    st->c = c;
    st->next = I.list;
    if (I.list)
        I.list->prev = st;
    I.list = st;
    if (!I.reaper_started && !I.stopping)
        I.reaper_started = pthread_create(&I.reaper, NULL, reaper_main, NULL) == 0;
    pthread_cond_broadcast(&I.wake);
    pthread_mutex_unlock(&I.lock);
    return ES_OK;
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

/* Closes the writer and removes the stream's files and directory before
 * the call is answered, so a client that sees the status sees the disk
 * as it will stay. */
static void drop_files(import_state *st)
{
    if (st->w) {
        rocksdb_sstfilewriter_destroy(st->w);
        st->w = NULL;
    }
    remove_files(st);
}

void import_state_free(import_state *st)
{
    pthread_mutex_lock(&I.lock);
    if (st->c) {
        if (st->prev)
            st->prev->next = st->next;
        else
            I.list = st->next;
        if (st->next)
            st->next->prev = st->prev;
        I.running--;
    }
    I.reserved -= st->reserved;
    pthread_mutex_unlock(&I.lock);
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
    METRIC_INCR(I.m, failed);
    log_warn("import_failed", "table=%s status=%s rows_received=%llu error=\"%s\"",
             st->have_header ? st->tv.name : "-", es_code_name(code),
             (unsigned long long)st->next_row, msg);
    drop_files(st);
    call_finish(c, code, msg, NULL);
}

/* ---- header ------------------------------------------------------------- */

static int check_header(const Engram__V1__ImportHeader *h, char *msg, size_t msglen)
{
    uint64_t rb = dtype_row_bytes(h->dtype, h->dim);
    if (!table_name_valid(h->table)) {
        snprintf(msg, msglen, "invalid table name \"%.140s\": use 1-128 characters of [A-Za-z0-9._-]", h->table);
        return ES_INVALID_ARGUMENT;
    }
    if (h->rows == 0) {
        snprintf(msg, msglen, "table \"%s\" declares 0 rows; a table needs at least one", h->table);
        return ES_INVALID_ARGUMENT;
    }
    if (dtype_size(h->dtype) == 0) {
        snprintf(msg, msglen, "unknown dtype \"%.32s\"; expected one of %s", h->dtype, dtype_list());
        return ES_INVALID_ARGUMENT;
    }
    if (h->dim && !rb) {     /* a block-scaled type needs whole blocks */
        snprintf(msg, msglen, "dim %u is not a multiple of %d, the scale block of dtype %s",
                 h->dim, DTYPE_MX_BLOCK, h->dtype);
        return ES_INVALID_ARGUMENT;
    }
    if (h->dim == 0 || rb > I.o.max_row_bytes) {
        snprintf(msg, msglen, "dim %u of dtype %s gives rows of %llu bytes; allowed: 1..%u bytes",
                 h->dim, h->dtype, (unsigned long long)rb, I.o.max_row_bytes);
        return ES_INVALID_ARGUMENT;
    }
    if (h->rows > UINT64_MAX / rb) {
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
    uint64_t row_bytes = dtype_row_bytes(h->dtype, h->dim);
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

/* With the disk as the limit (always, and the only one when
 * --max-import-bytes is 0): what the import will write must fit in the free
 * space above the reserve, less what running imports may still write. The
 * estimate is the SST payload, each row with its key; block overhead is
 * small beside it, and the checks as chunks arrive catch the rest. The
 * amount is reserved until the stream ends, so concurrent imports cannot
 * each pass against the same free space: the staged bytes of all running
 * imports stay within free space less the reserve. */
static int reserve_disk(import_state *st, char *msg, size_t msglen)
{
    const table_version *tv = &st->tv;
    uint64_t per_row = (uint64_t)tv->row_bytes + ROW_KEY_LEN;
    uint64_t need = tv->local_rows > UINT64_MAX / per_row ? UINT64_MAX : tv->local_rows * per_row;
    uint64_t free_bytes, reserve;
    store_disk_read(I.s, &free_bytes, &reserve);
    pthread_mutex_lock(&I.lock);
    uint64_t others = I.reserved;
    uint64_t held = reserve > UINT64_MAX - others ? UINT64_MAX : reserve + others;
    uint64_t avail = free_bytes > held ? free_bytes - held : 0;
    if (need <= avail) {
        I.reserved += need;
        st->reserved = need;
    }
    pthread_mutex_unlock(&I.lock);
    if (need <= avail)
        return ES_OK;
    char run[96] = "";
    if (others)
        snprintf(run, sizeof run, ", less %llu bytes promised to running imports",
                 (unsigned long long)others);
    snprintf(msg, msglen, "import of table \"%s\" needs about %llu bytes on disk (%llu rows of %u "
             "bytes plus %d-byte keys); %llu bytes are available: data dir %s has %llu bytes "
             "free, less its reserve of %llu bytes (--disk-reserve-bytes)%s", tv->name,
             (unsigned long long)need, (unsigned long long)tv->local_rows, tv->row_bytes,
             ROW_KEY_LEN, (unsigned long long)avail, store_data_dir(I.s),
             (unsigned long long)free_bytes, (unsigned long long)reserve, run);
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
    tv->row_bytes = (uint32_t)dtype_row_bytes(h->dtype, h->dim);
    st->stage = h->stage;
    st->trailer_promised = h->trailer_follows;
    st->have_header = 1;
    if ((code = reserve_disk(st, msg, msglen)) != ES_OK)
        return code;
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

/* A failed SST write. A full disk (RocksDB's IO error carries strerror's
 * "No space left on device") is RESOURCE_EXHAUSTED with the disk's figures:
 * the request was fine and may work once space is freed. Takes rerr. */
static int write_failed(import_state *st, const char *what, char *rerr, char *msg, size_t msglen)
{
    int code = ES_INTERNAL;
    if (strstr(rerr, "No space left on device")) {
        uint64_t free_bytes, reserve;
        store_disk_read(I.s, &free_bytes, &reserve);
        snprintf(msg, msglen, "import of table \"%s\" stopped after %llu of %llu rows: %s failed: "
                 "%.200s (data dir %s has %llu bytes free, reserve %llu bytes, --disk-reserve-bytes); "
                 "nothing was activated", st->tv.name, (unsigned long long)st->next_row,
                 (unsigned long long)st->tv.local_rows, what, rerr, store_data_dir(I.s),
                 (unsigned long long)free_bytes, (unsigned long long)reserve);
        code = ES_RESOURCE_EXHAUSTED;
    } else {
        snprintf(msg, msglen, "%s failed: %s", what, rerr);
    }
    free(rerr);
    return code;
}

static int out_of_memory(const import_state *st, const char *what, char *msg, size_t msglen)
{
    snprintf(msg, msglen, "import of table \"%s\" stopped after %llu rows: out of memory for %s; "
             "nothing was activated", st->tv.name, (unsigned long long)st->next_row, what);
    return ES_RESOURCE_EXHAUSTED;
}

static int sst_roll(import_state *st, char *msg, size_t msglen)
{
    char *rerr = NULL;
    if (st->w) {
        rocksdb_sstfilewriter_finish(st->w, &rerr);
        rocksdb_sstfilewriter_destroy(st->w);
        st->w = NULL;
        if (rerr)
            return write_failed(st, "writing SST file", rerr, msg, msglen);
    }
    if (!st->envo && !(st->envo = rocksdb_envoptions_create()))
        return out_of_memory(st, "SST writer options", msg, msglen);
    char path[4200];
    snprintf(path, sizeof path, "%s/%06zu.sst", st->dir, st->nfiles);
    /* Grown before the name is added, so a failure leaves the list whole
     * for remove_files. */
    char **files = realloc(st->files, (st->nfiles + 1) * sizeof *st->files);
    if (!files)
        return out_of_memory(st, "the list of SST files", msg, msglen);
    st->files = files;
    if (!(st->files[st->nfiles] = strdup(path)))
        return out_of_memory(st, "an SST file name", msg, msglen);
    st->nfiles++;
    if (!(st->w = rocksdb_sstfilewriter_create(st->envo, store_rows_options(I.s))))
        return out_of_memory(st, "an SST writer", msg, msglen);
    st->file_bytes = 0;
    rocksdb_sstfilewriter_open(st->w, path, &rerr);
    if (rerr)
        return write_failed(st, "writing SST file", rerr, msg, msglen);
    return ES_OK;
}

/* Free space, read again once DISK_CHECK_BYTES were written: the chunk
 * must leave the reserve free. The header reserved room for the whole
 * import, but others may fill the disk meanwhile (another process, a
 * bigger file than estimated), and a write that hits ENOSPC is what must
 * not happen to RocksDB's own files. Reading free space costs a statvfs,
 * about a microsecond; chunks are usually about 1 MiB. */
#define DISK_CHECK_BYTES (1ull << 20)

static int chunk_disk_check(import_state *st, uint64_t bytes, char *msg, size_t msglen)
{
    if (st->disk_read && st->unchecked < DISK_CHECK_BYTES) {
        st->unchecked += bytes;
        return ES_OK;
    }
    uint64_t free_bytes, reserve;
    store_disk_read(I.s, &free_bytes, &reserve);
    /* What was written since is on disk now: no longer promised. */
    pthread_mutex_lock(&I.lock);
    uint64_t done = st->unchecked < st->reserved ? st->unchecked : st->reserved;
    st->reserved -= done;
    I.reserved -= done;
    pthread_mutex_unlock(&I.lock);
    st->unchecked = bytes;
    st->disk_read = 1;
    if (free_bytes >= reserve && free_bytes - reserve >= bytes)
        return ES_OK;
    snprintf(msg, msglen, "import of table \"%s\" stopped after %llu of %llu rows: data dir %s has "
             "%llu bytes free, too little for the next %llu bytes above its reserve of %llu bytes "
             "(--disk-reserve-bytes); nothing was activated", st->tv.name,
             (unsigned long long)st->next_row, (unsigned long long)st->tv.local_rows,
             store_data_dir(I.s), (unsigned long long)free_bytes, (unsigned long long)bytes,
             (unsigned long long)reserve);
    return ES_RESOURCE_EXHAUSTED;
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

/* Values the row type cannot hold (mxfp8_e4m3: NaN codes and scales) are
 * refused before anything of the chunk is written. The row is named as
 * the table's (global) row, the column as the value's index in the row. */
static int check_values(import_state *st, const Engram__V1__ImportChunk *ch, uint64_t n,
                        char *msg, size_t msglen)
{
    const table_version *tv = &st->tv;
    uint64_t r;
    uint32_t byte;
    uint8_t v;
    if (!dtype_find_invalid(tv->dtype, tv->dim, ch->data.data, n, &r, &byte, &v))
        return ES_OK;
    uint32_t shards, shard;
    store_shard(I.s, &shards, &shard);
    uint64_t global = (st->next_row + r) * shards + shard;
    if (byte < tv->dim)
        snprintf(msg, msglen, "row %llu column %u of table \"%s\" is 0x%02x, a NaN E4M3 code; "
                 "%s rows hold no NaN", (unsigned long long)global, byte, tv->name, v, tv->dtype);
    else
        snprintf(msg, msglen, "row %llu scale %u (columns %u..%u) of table \"%s\" is 255, a NaN "
                 "E8M0 scale; %s rows hold no NaN", (unsigned long long)global, byte - tv->dim,
                 (byte - tv->dim) * DTYPE_MX_BLOCK, (byte - tv->dim + 1) * DTYPE_MX_BLOCK - 1,
                 tv->name, tv->dtype);
    return ES_INVALID_ARGUMENT;
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
    if ((code = check_values(st, ch, n, msg, msglen)) != ES_OK)
        return code;
    if ((code = chunk_disk_check(st, n * ((uint64_t)tv->row_bytes + ROW_KEY_LEN), msg, msglen)) != ES_OK)
        return code;
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
            char what[64];
            snprintf(what, sizeof what, "writing row %llu", (unsigned long long)(st->next_row + i));
            return write_failed(st, what, rerr, msg, msglen);
        }
        st->file_bytes += tv->row_bytes + sizeof key;
    }
    st->crc = (uint32_t)crc32_z(st->crc, ch->data.data, ch->data.len);
    XXH3_64bits_update(st->xxh, ch->data.data, ch->data.len);
    st->next_row += n;
    METRIC_ADD(I.m, rows, n);
    METRIC_ADD(I.m, bytes, ch->data.len);
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
        int code = write_failed(st, "finishing SST file", rerr, msg, sizeof msg);
        return fail(c, code, msg);
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
    METRIC_INCR(I.m, completed);
    drop_files(st);              /* the ingest moved the files; the directory is left */
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
    if (arrived(st))
        return fail(c, st->reaped_code, st->reaped_msg);
    if (!ok)
        return fail(c, ES_CANCELLED, "import stream broken or cancelled; nothing was activated");
    /* The deadline (the client's, or --default-deadline-ms) is checked as
     * each message arrives, and by the reaper while the stream waits:
     * gRPC core gives a server no way to end a call at its deadline. */
    if (call_ms_left(c) <= 0) {
        snprintf(msg, sizeof msg, "import stream passed its deadline after row %llu; nothing was activated",
                 (unsigned long long)st->next_row);
        return fail(c, ES_DEADLINE_EXCEEDED, msg);
    }
    if (!c->payload)
        return on_end(c);
    char why[160] = "no message";
    Engram__V1__ImportRequest *rq = (Engram__V1__ImportRequest *)pb_unpack(
        &engram__v1__import_request__descriptor, c->payload, why, sizeof why);
    int code = ES_INVALID_ARGUMENT;
    if (rq)
        code = import_message(st, rq, msg, sizeof msg);
    else
        snprintf(msg, sizeof msg, "malformed ImportRequest after row %llu: %s",
                 (unsigned long long)st->next_row, why);
    if (rq)
        protobuf_c_message_free_unpacked(&rq->base, NULL);
    if (code != ES_OK)
        return fail(c, code, msg);
    recv_next(c, on_message);
}

import_state *import_state_new(void)
{
    import_state *st = calloc(1, sizeof *st);
    if (!st)
        return NULL;
    st->started_ns = now_ns();
    if (!(st->xxh = XXH3_createState())) {
        free(st);
        return NULL;
    }
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
    char msg[256];
    if (!st) {
        call_finish(c, ES_RESOURCE_EXHAUSTED, "out of memory for an import stream", NULL);
        return;
    }
    int code = admit_stream(st, c, msg, sizeof msg);
    if (code != ES_OK) {
        import_state_free(st);
        METRIC_INCR(I.m, failed);
        log_warn("import_refused", "status=%s error=\"%s\"", es_code_name(code), msg);
        call_finish(c, code, msg, NULL);
        return;
    }
    c->state = st;
    c->state_free = state_free;
    METRIC_INCR(I.m, started);
    recv_next(c, on_message);
}
