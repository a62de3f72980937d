/* compare_rocksdb.c: in-process RocksDB MultiGet for engram-compare-bench,
 * the baseline the cold (not resident) engram-server is measured against.
 *
 * How: the database is laid out as engram-server's: a "rows" column family
 * opened with the server's own options (store_tuning_default /
 * store_tuning_cache / store_tuning_apply / store_tuning_readoptions from
 * server/store/store_tuning.h),
 * keys store_row_key(table 1, version 1, row) (20 bytes, big-endian, so
 * keys sort by row), values the row bytes. When DIR holds no database the
 * rows are written as SST files with rocksdb_sstfilewriter and ingested,
 * the way an engram import lands. The block cache gets the bytes the
 * server spends on its hot-row cache plus its block cache, so both have the
 * same RAM for the table.
 *
 * A call sorts its batch's rows (remembering each one's place), issues ONE
 * rocksdb_batched_multi_get_cf with sorted_input, and copies every value to
 * its place in the caller's buffer; synchronous, one thread. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "compare.h"
#include "store.h"
#include "store_tuning.h"
#include "synthetic.h"

#define RDB_TABLE_ID 1
#define RDB_VERSION 1
#define RDB_ROWS_PER_SST 2000000ull

typedef struct rdb_ctx {
    rocksdb_t *db;
    rocksdb_options_t *db_opts, *meta_opts, *rows_opts;
    rocksdb_block_based_table_options_t *bbto;
    rocksdb_cache_t *cache;
    rocksdb_readoptions_t *ro;
    rocksdb_column_family_handle_t *cf[2];   /* default, rows */
    uint64_t rows;
    uint32_t row_bytes;
} rdb_ctx;

/* One call's scratch: the batch sorted by row, keys and results. */
typedef struct rdb_scratch {
    uint64_t *sorted;            /* row << 24 | position, sorted */
    uint8_t (*keys)[ROW_KEY_LEN];
    const char **kp;
    size_t *ks;
    rocksdb_pinnableslice_t **vals;
    char **errs;
} rdb_scratch;

static int rdb_err(char *err, size_t errlen, const char *what, char *rerr)
{
    snprintf(err, errlen, "rocksdb: %s: %s", what, rerr ? rerr : "failed");
    free(rerr);
    return -1;
}

static void make_options(rdb_ctx *x, uint64_t cache_bytes)
{
    x->db_opts = rocksdb_options_create();
    rocksdb_options_set_create_if_missing(x->db_opts, 1);
    rocksdb_options_set_create_missing_column_families(x->db_opts, 1);
    x->meta_opts = rocksdb_options_create();
    x->rows_opts = rocksdb_options_create();
    store_tuning t = store_tuning_default();
    x->cache = store_tuning_cache(&t, cache_bytes);   /* the server's shard layout too */
    x->bbto = store_tuning_apply(&t, x->rows_opts, x->cache);
    x->ro = store_tuning_readoptions(&t);
}

/* Writes rows [first, first + n) into one SST file at path. */
static int write_sst(rdb_ctx *x, uint64_t seed, uint64_t first, uint64_t n, const char *path,
                     char *err, size_t errlen)
{
    rocksdb_envoptions_t *env = rocksdb_envoptions_create();
    rocksdb_sstfilewriter_t *w = rocksdb_sstfilewriter_create(env, x->rows_opts);
    char *rerr = NULL;
    rocksdb_sstfilewriter_open(w, path, &rerr);
    uint8_t *val = xmalloc(x->row_bytes);
    uint8_t key[ROW_KEY_LEN];
    for (uint64_t r = first; r < first + n && !rerr; r++) {
        store_row_key(key, RDB_TABLE_ID, RDB_VERSION, r);
        synthetic_row(seed, r, val, x->row_bytes);
        rocksdb_sstfilewriter_put(w, (char *)key, sizeof key, (char *)val, x->row_bytes, &rerr);
    }
    if (!rerr)
        rocksdb_sstfilewriter_finish(w, &rerr);
    rocksdb_sstfilewriter_destroy(w);
    rocksdb_envoptions_destroy(env);
    free(val);
    return rerr ? rdb_err(err, errlen, path, rerr) : 0;
}

/* Writes every row as SST files under dir and ingests them (moved). */
static int build(rdb_ctx *x, const char *dir, uint64_t seed, char *err, size_t errlen)
{
    size_t nf = (size_t)((x->rows + RDB_ROWS_PER_SST - 1) / RDB_ROWS_PER_SST);
    char **files = calloc(nf ? nf : 1, sizeof *files);
    int rc = 0;
    for (size_t i = 0; i < nf && rc == 0; i++) {
        uint64_t first = i * RDB_ROWS_PER_SST;
        uint64_t n = x->rows - first < RDB_ROWS_PER_SST ? x->rows - first : RDB_ROWS_PER_SST;
        files[i] = xmalloc(strlen(dir) + 32);
        sprintf(files[i], "%s/ingest-%04zu.sst", dir, i);
        rc = write_sst(x, seed, first, n, files[i], err, errlen);
    }
    if (rc == 0) {
        rocksdb_ingestexternalfileoptions_t *io = rocksdb_ingestexternalfileoptions_create();
        rocksdb_ingestexternalfileoptions_set_move_files(io, 1);
        char *rerr = NULL;
        rocksdb_ingest_external_file_cf(x->db, x->cf[1], (const char *const *)files, nf, io, &rerr);
        rocksdb_ingestexternalfileoptions_destroy(io);
        rc = rerr ? rdb_err(err, errlen, "ingest", rerr) : 0;
    }
    for (size_t i = 0; i < nf; i++)
        free(files[i]);
    free(files);
    return rc;
}

static int by_row(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* One batch: sort, one MultiGet, values placed in request order. */
static int multiget(rdb_ctx *x, rdb_scratch *s, const uint64_t *rows, size_t n, uint8_t *out,
                    cmp_run *r)
{
    for (size_t i = 0; i < n; i++)
        s->sorted[i] = rows[i] << 24 | i;   /* rows < 2^40, batches < 2^24 */
    qsort(s->sorted, n, sizeof *s->sorted, by_row);
    for (size_t i = 0; i < n; i++)
        store_row_key(s->keys[i], RDB_TABLE_ID, RDB_VERSION, s->sorted[i] >> 24);
    rocksdb_batched_multi_get_cf(x->db, x->ro, x->cf[1], n, s->kp, s->ks, s->vals, s->errs, 1);
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        size_t vl = 0;
        const char *v = s->vals[i] ? rocksdb_pinnableslice_value(s->vals[i], &vl) : NULL;
        if (rc == 0 && (s->errs[i] || !v || vl != x->row_bytes)) {
            snprintf(r->err, sizeof r->err, "row %llu: %s", (unsigned long long)(s->sorted[i] >> 24),
                     s->errs[i] ? s->errs[i] : v ? "wrong length" : "missing");
            rc = -1;
        } else if (rc == 0) {
            memcpy(out + (s->sorted[i] & 0xffffff) * x->row_bytes, v, vl);
        }
        free(s->errs[i]);
        if (s->vals[i])
            rocksdb_pinnableslice_destroy(s->vals[i]);
    }
    return rc;
}

static void scratch_init(rdb_scratch *s, size_t n)
{
    s->sorted = xmalloc(n * sizeof *s->sorted);
    s->keys = xmalloc(n * sizeof *s->keys);
    s->kp = xmalloc(n * sizeof *s->kp);
    s->ks = xmalloc(n * sizeof *s->ks);
    s->vals = xmalloc(n * sizeof *s->vals);
    s->errs = xmalloc(n * sizeof *s->errs);
    for (size_t i = 0; i < n; i++) {
        s->kp[i] = (const char *)s->keys[i];
        s->ks[i] = ROW_KEY_LEN;
    }
}

static void scratch_free(rdb_scratch *s)
{
    free(s->sorted);
    free(s->keys);
    free(s->kp);
    free(s->ks);
    free(s->vals);
    free(s->errs);
}

static int timed(rdb_ctx *x, rdb_scratch *s, uint8_t *out, cmp_run *r)
{
    cmp_clock c;
    cmp_clock_start(r, &c);
    for (int go = 1; go;) {
        const uint64_t *rows = cmp_next_batch(r);
        uint64_t t0 = bench_now_ns();
        if (multiget(x, s, rows, r->batch, out, r))
            return -1;
        uint64_t now = bench_now_ns();
        go = cmp_record(r, &c, now, now - t0, r->batch);
    }
    cmp_clock_end(r, &c);
    return 0;
}

static int rdb_run(void *ctx, cmp_run *r)
{
    rdb_ctx *x = ctx;
    if (r->row_bytes != x->row_bytes || r->batch >= (1u << 24)) {
        snprintf(r->err, sizeof r->err, "cell of %zu x %u-byte rows, database holds %u-byte rows",
                 r->batch, r->row_bytes, x->row_bytes);
        return -1;
    }
    rdb_scratch s;
    scratch_init(&s, r->batch);
    uint8_t *out = xmalloc(r->batch * x->row_bytes);
    int rc = 0;
    for (size_t i = 0; i < r->verify_calls && rc == 0; i++) {
        const uint64_t *rows = cmp_next_batch(r);
        rc = multiget(x, &s, rows, r->batch, out, r);
        if (rc == 0)
            rc = cmp_verify(r, rows, r->batch, out);
    }
    if (rc == 0)
        rc = timed(x, &s, out, r);
    free(out);
    scratch_free(&s);
    return rc;
}

static void rdb_close(void *ctx)
{
    rdb_ctx *x = ctx;
    for (int i = 0; i < 2; i++)
        if (x->cf[i])
            rocksdb_column_family_handle_destroy(x->cf[i]);
    if (x->db)
        rocksdb_close(x->db);
    rocksdb_readoptions_destroy(x->ro);
    rocksdb_options_destroy(x->rows_opts);
    rocksdb_block_based_options_destroy(x->bbto);
    rocksdb_cache_destroy(x->cache);
    rocksdb_options_destroy(x->meta_opts);
    rocksdb_options_destroy(x->db_opts);
    free(x);
}

static int open_db(rdb_ctx *x, const char *dir, char *err, size_t errlen)
{
    const char *names[2] = {"default", "rows"};
    const rocksdb_options_t *cfo[2] = {x->meta_opts, x->rows_opts};
    char *rerr = NULL;
    x->db = rocksdb_open_column_families(x->db_opts, dir, 2, names, cfo, x->cf, &rerr);
    return rerr ? rdb_err(err, errlen, dir, rerr) : 0;
}

int cmp_rocksdb_open(const char *dir, uint64_t seed, uint64_t rows, uint32_t row_bytes,
                     uint64_t cache_bytes, cmp_system *out, char *err, size_t errlen)
{
    char current[4096];
    snprintf(current, sizeof current, "%s/CURRENT", dir);
    struct stat st;
    int fresh = stat(current, &st) != 0;
    rdb_ctx *x = calloc(1, sizeof *x);
    if (!x || (mkdir(dir, 0755) != 0 && errno != EEXIST)) {
        snprintf(err, errlen, "rocksdb: cannot create %s: %s", dir, strerror(errno));
        free(x);
        return -1;
    }
    x->rows = rows;
    x->row_bytes = row_bytes;
    make_options(x, cache_bytes);
    if (open_db(x, dir, err, errlen) || (fresh && build(x, dir, seed, err, errlen))) {
        rdb_close(x);
        return -1;
    }
    *out = (cmp_system){.name = "rocksdb", .ctx = x, .run = rdb_run, .close = rdb_close};
    return 0;
}
