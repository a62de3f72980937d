/* store.c: the RocksDB side of the table store: options, keys, version
 * metadata, documents, SST ingest, resident loads, orphan collection and
 * the reclaimer thread that deletes dropped versions' rows (row reads, with
 * the hot-row tier, are store_read.c's). Free space is checked (disk.c) before a document
 * write and a row deletion. The registry and the version life cycle built
 * on these are in tables.c; store.h has the layout. Allocation failures are
 * answered (an error naming what ran out), never dereferenced. */
#include "store_internal.h"
#include "store_tuning.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "engram/v1/engram.pb-c.h"
#include "fsutil.h"
#include "log.h"
#include "status.h"


/* ---- keys and metadata -------------------------------------------------- */

static void put_be32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (24 - 8 * i));
}

static void put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (56 - 8 * i));
}

static uint32_t get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t get_be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

void store_row_key(uint8_t key[ROW_KEY_LEN], uint32_t table_id,
                   uint64_t version, uint64_t row)
{
    put_be32(key, table_id);
    put_be64(key + 4, version);
    put_be64(key + 12, row);
}

uint64_t store_unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* 'm' name 0x00 version: a table's versions sort together, oldest first. */
static size_t meta_key(char *key, const char *name, uint64_t version)
{
    size_t n = strlen(name);
    key[0] = 'm';
    memcpy(key + 1, name, n);
    key[n + 1] = 0;
    put_be64((uint8_t *)key + n + 2, version);
    return n + 10;
}

/* Value: table id, state, then the TableInfo as the wire knows it. */
static char *meta_encode(const table_version *tv, size_t *len)
{
    Engram__V1__TableInfo ti = ENGRAM__V1__TABLE_INFO__INIT;
    ti.name = (char *)tv->name;
    ti.rows = tv->rows;
    ti.local_rows = tv->local_rows;
    ti.row_bytes = tv->row_bytes;
    ti.dim = tv->dim;
    ti.dtype = (char *)tv->dtype;
    ti.version = tv->version;
    ti.checksum = tv->checksum;
    ti.xxh3 = tv->xxh3;
    ti.created_unix_ms = tv->created_unix_ms;
    size_t n = engram__v1__table_info__get_packed_size(&ti);
    char *buf = malloc(5 + n);
    if (!buf)
        return NULL;
    put_be32((uint8_t *)buf, tv->table_id);
    buf[4] = (char)tv->state;
    engram__v1__table_info__pack(&ti, (uint8_t *)buf + 5);
    *len = 5 + n;
    return buf;
}

/* NULL with *nomem clear: corrupt metadata; set: out of memory. */
static table_version *meta_decode(store *s, const char *val, size_t len, int *nomem)
{
    *nomem = 0;
    if (len < 5 || val[4] < VS_ACTIVE || val[4] > VS_STAGED)
        return NULL;
    table_version *tv = calloc(1, sizeof *tv);
    if (!tv) {
        *nomem = 1;
        return NULL;
    }
    Engram__V1__TableInfo *ti = engram__v1__table_info__unpack(NULL, len - 5, (const uint8_t *)val + 5);
    if (!ti) {
        free(tv);
        return NULL;
    }
    tv->refs = 1;
    tv->s = s;
    tv->table_id = get_be32((const uint8_t *)val);
    tv->state = val[4];
    snprintf(tv->name, sizeof tv->name, "%s", ti->name);
    snprintf(tv->dtype, sizeof tv->dtype, "%s", ti->dtype);
    tv->version = ti->version;
    tv->rows = ti->rows;
    tv->local_rows = ti->local_rows;
    tv->row_bytes = ti->row_bytes;
    tv->dim = ti->dim;
    tv->checksum = ti->checksum;
    tv->xxh3 = ti->xxh3;         /* 0 in metadata written before it existed */
    tv->created_unix_ms = ti->created_unix_ms;
    engram__v1__table_info__free_unpacked(ti, NULL);
    return tv;
}

int store_write_meta(store *s, table_version *const *put, size_t nput, const table_version *del,
                     char *msg, size_t msglen)
{
    rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
    char key[TABLE_NAME_MAX + 10];
    for (size_t i = 0; i < nput; i++) {
        size_t kl = meta_key(key, put[i]->name, put[i]->version), vl;
        char *val = meta_encode(put[i], &vl);
        if (!val) {
            rocksdb_writebatch_destroy(wb);
            snprintf(msg, msglen, "out of memory encoding the metadata of version %llu of table \"%s\"",
                     (unsigned long long)put[i]->version, put[i]->name);
            return -1;
        }
        rocksdb_writebatch_put_cf(wb, s->cf[CF_META], key, kl, val, vl);
        free(val);
    }
    if (del)
        rocksdb_writebatch_delete_cf(wb, s->cf[CF_META], key, meta_key(key, del->name, del->version));
    char *rerr = NULL;
    rocksdb_write(s->db, s->wopts_sync, wb, &rerr);
    rocksdb_writebatch_destroy(wb);
    if (rerr) {
        snprintf(msg, msglen, "writing table metadata failed: %s", rerr);
        free(rerr);
        return -1;
    }
    return 0;
}

/* ---- RocksDB options ---------------------------------------------------- */

static void set_err(char **err, const char *what, const char *detail)
{
    size_t n = strlen(what) + (detail ? strlen(detail) : 0) + 8;
    *err = malloc(n);
    snprintf(*err, n, "%s%s%s", what, detail ? ": " : "", detail ? detail : "");
}

static void make_options(store *s, const store_options *o)
{
    s->db_opts = rocksdb_options_create();
    rocksdb_options_set_create_if_missing(s->db_opts, 1);
    rocksdb_options_set_create_missing_column_families(s->db_opts, 1);
    rocksdb_options_increase_parallelism(s->db_opts, 2);
    /* Tickers for Stats (block cache hits, bytes read). Costs a few atomic
     * adds per read; the C API of RocksDB 7.8 cannot lower the level to
     * drop the timers. */
    rocksdb_options_enable_statistics(s->db_opts);

    s->meta_opts = rocksdb_options_create();

    s->rows_opts = rocksdb_options_create();
    store_tuning t = store_tuning_default();
    s->block_cache = store_tuning_cache(&t, o->block_cache_bytes);
    s->rows_bbto = store_tuning_apply(&t, s->rows_opts, s->block_cache);
    s->ropts = store_tuning_readoptions(&t);
    s->wopts_sync = rocksdb_writeoptions_create();
    rocksdb_writeoptions_set_sync(s->wopts_sync, 1);
}

static int open_db(store *s, char **err)
{
    const char *names[2] = {"default", "rows"};
    const rocksdb_options_t *cfo[2] = {s->meta_opts, s->rows_opts};
    char *rerr = NULL;
    s->db = rocksdb_open_column_families(s->db_opts, s->dir, 2, names, cfo,
                                         s->cf, &rerr);
    if (rerr) {
        set_err(err, "cannot open RocksDB", rerr);
        free(rerr);
        return -1;
    }
    return 0;
}

/* ---- resident loading --------------------------------------------------- */

/* Scans the version's rows in key order into a dense array and checks the
 * checksum, so a table is only served from RAM when every row is there and
 * intact. Tables that do not fit stay on RocksDB. With --shm-dir the array
 * is a file's mapping (shm.h), published only once it passed the check. */
void store_resident_load(store *s, table_version *tv)
{
    size_t bytes = (size_t)tv->local_rows * tv->row_bytes;
    shm_ident id = {.version = tv->version, .rows = tv->rows, .local_rows = tv->local_rows,
                    .created_unix_ms = tv->created_unix_ms, .xxh3 = tv->xxh3,
                    .row_bytes = tv->row_bytes, .dim = tv->dim, .shard_index = s->shard_index,
                    .shard_count = s->shard_count, .crc32 = tv->checksum};
    snprintf(id.table, sizeof id.table, "%s", tv->name);
    snprintf(id.dtype, sizeof id.dtype, "%s", tv->dtype);
    uint8_t *arr = resident_alloc(bytes, &id);
    if (!arr) {
        log_info("resident_skip", "table=%s bytes=%zu reason=budget", tv->name, bytes);
        return;
    }
    uint8_t from[ROW_KEY_LEN], to[ROW_KEY_LEN];
    store_row_key(from, tv->table_id, tv->version, 0);
    store_row_key(to, tv->table_id, tv->version + 1, 0);
    rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
    rocksdb_readoptions_set_fill_cache(ro, 0);
    rocksdb_readoptions_set_iterate_upper_bound(ro, (char *)to, sizeof to);
    rocksdb_iterator_t *it = rocksdb_create_iterator_cf(s->db, ro, s->cf[CF_ROWS]);
    uint64_t expect = 0;
    const char *bad = NULL;
    for (rocksdb_iter_seek(it, (char *)from, sizeof from);
         rocksdb_iter_valid(it) && !bad; rocksdb_iter_next(it), expect++) {
        size_t kl, vl;
        const uint8_t *k = (const uint8_t *)rocksdb_iter_key(it, &kl);
        const char *v = rocksdb_iter_value(it, &vl);
        if (kl != ROW_KEY_LEN || get_be64(k + 12) != expect)
            bad = "row missing";
        else if (vl != tv->row_bytes)
            bad = "row of wrong length";
        else
            memcpy(arr + expect * tv->row_bytes, v, vl);
    }
    char *rerr = NULL;
    rocksdb_iter_get_error(it, &rerr);
    rocksdb_iter_destroy(it);
    rocksdb_readoptions_destroy(ro);
    if (!bad && rerr)
        bad = rerr;
    if (!bad && expect != tv->local_rows)
        bad = "rows missing at the end";
    if (!bad && (uint32_t)crc32_z(0, arr, bytes) != tv->checksum)
        bad = "checksum mismatch";
    if (bad) {
        log_error("resident_load_failed", "table=%s version=%llu row=%llu error=\"%s\"",
                  tv->name, (unsigned long long)tv->version,
                  (unsigned long long)expect, bad);
        resident_free(arr, bytes);
    } else {
        resident_publish(arr);   /* complete and checked: clients may map it */
        tv->resident = arr;
    }
    free(rerr);
}

/* ---- opening and closing ------------------------------------------------ */

static int is_dot(const char *name)
{
    return strcmp(name, ".") == 0 || strcmp(name, "..") == 0;
}

/* Empties import-tmp. An import removes its directory when its call ends,
 * so whatever is there at start-up was left by a process killed
 * mid-import: SST files never ingested (or the originals of ones ingested
 * by hard link, which RocksDB keeps its own link to). Nothing reads them
 * again, and a restarted server with the same pid (PID 1 in a container)
 * would find its first import's directory name taken. Called once RocksDB
 * holds its LOCK, so a second server started on a directory in use stops
 * at the lock instead of deleting the running one's files. */
static void clear_import_tmp(store *s)
{
    DIR *d = opendir(s->tmp_dir);
    if (!d)
        return;
    unsigned removed = 0, failed = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (is_dot(e->d_name))
            continue;
        char path[4352];
        snprintf(path, sizeof path, "%s/%s", s->tmp_dir, e->d_name);
        /* lstat: a symbolic link is removed, never followed. */
        struct stat st;
        int is_dir = lstat(path, &st) == 0 && S_ISDIR(st.st_mode);
        DIR *sub = is_dir ? opendir(path) : NULL;
        if (sub) {
            struct dirent *f;
            while ((f = readdir(sub)) != NULL) {
                char file[4608];
                snprintf(file, sizeof file, "%s/%s", path, f->d_name);
                if (!is_dot(f->d_name))
                    unlink(file);
            }
            closedir(sub);
        }
        if ((is_dir ? rmdir(path) : unlink(path)) == 0)
            removed++;
        else
            failed++;
    }
    closedir(d);
    if (removed)
        log_info("import_tmp_cleared", "dir=%s entries=%u", s->tmp_dir, removed);
    if (failed)
        log_warn("import_tmp_clear_failed", "dir=%s entries=%u", s->tmp_dir, failed);
}

/* ---- placement ---------------------------------------------------------- */

/* 'p' -> u32 BE shard index, u32 BE shard count. Checked right after the
 * open, before anything is read or changed: a directory of another shard
 * would otherwise serve its rows as this shard's local rows (wrong bytes),
 * and no table's metadata can tell every such mix-up apart (a table whose
 * rows divide evenly has the same local row count on every shard). */
static int check_placement(store *s, store_placement *held, char **err)
{
    size_t vl;
    char *rerr = NULL;
    char *v = rocksdb_get_cf(s->db, s->ropts, s->cf[CF_META], "p", 1, &vl, &rerr);
    if (rerr) {
        set_err(err, "cannot read the data directory's placement", rerr);
        free(rerr);
        return -1;
    }
    if (!v) {
        /* A new directory, or one written before placements were recorded:
         * it takes this start's (see store.h). */
        uint8_t w[8];
        put_be32(w, s->shard_index);
        put_be32(w + 4, s->shard_count);
        rocksdb_put_cf(s->db, s->wopts_sync, s->cf[CF_META], "p", 1, (char *)w, sizeof w, &rerr);
        if (rerr) {
            set_err(err, "cannot record the data directory's placement", rerr);
            free(rerr);
            return -1;
        }
        log_info("placement_recorded", "data=%s shard=%u shards=%u", s->dir, s->shard_index,
                 s->shard_count);
        return 0;
    }
    uint32_t index = vl == 8 ? get_be32((uint8_t *)v) : 0;
    uint32_t count = vl == 8 ? get_be32((uint8_t *)v + 4) : 0;
    free(v);
    if (index >= count) {
        set_err(err, "corrupt placement record in the data directory", NULL);
        return -1;
    }
    if (index == s->shard_index && count == s->shard_count)
        return 0;
    held->index = index;
    held->count = count;
    size_t n = strlen(s->dir) + 96;
    *err = malloc(n);
    snprintf(*err, n, "data dir %s holds shard %u of %u; opened as shard %u of %u", s->dir, index,
             count, s->shard_index, s->shard_count);
    return -1;
}

static void *reclaimer_main(void *arg);

int store_open_db(store *s, const store_options *o, store_placement *held, char **err)
{
    s->dir = strdup(o->dir);
    s->disk_reserve = o->disk_reserve_bytes;
    size_t tl = strlen(o->dir) + 16;
    s->tmp_dir = malloc(tl);
    if (!s->dir || !s->tmp_dir) {
        set_err(err, "out of memory opening the store", NULL);
        return -1;
    }
    snprintf(s->tmp_dir, tl, "%s/import-tmp", o->dir);
    if (fs_mkdir_p(s->dir) < 0 || fs_mkdir_p(s->tmp_dir) < 0) {
        set_err(err, "cannot create data directory", strerror(errno));
        return -1;
    }
    make_options(s, o);
    if (open_db(s, err) < 0 || check_placement(s, held, err) < 0)
        return -1;
    clear_import_tmp(s);
    pthread_mutex_init(&s->reclaim_lock, NULL);
    pthread_mutex_init(&s->reclaim_busy, NULL);
    pthread_cond_init(&s->reclaim_cond, NULL);
    int rc = pthread_create(&s->reclaimer, NULL, reclaimer_main, s);
    if (rc) {
        pthread_mutex_destroy(&s->reclaim_lock);
        pthread_mutex_destroy(&s->reclaim_busy);
        pthread_cond_destroy(&s->reclaim_cond);
        set_err(err, "cannot start the reclaimer thread", strerror(rc));
        return -1;
    }
    s->reclaimer_started = 1;
    return 0;
}

void store_close_db(store *s)
{
    if (s->reclaimer_started) {  /* it drains the queue before it ends */
        pthread_mutex_lock(&s->reclaim_lock);
        s->reclaim_stop = 1;
        pthread_cond_broadcast(&s->reclaim_cond);
        pthread_mutex_unlock(&s->reclaim_lock);
        pthread_join(s->reclaimer, NULL);
        s->reclaimer_started = 0;
        pthread_mutex_destroy(&s->reclaim_lock);
        pthread_mutex_destroy(&s->reclaim_busy);
        pthread_cond_destroy(&s->reclaim_cond);
    }
    if (s->db) {
        rocksdb_column_family_handle_destroy(s->cf[0]);
        rocksdb_column_family_handle_destroy(s->cf[1]);
        rocksdb_close(s->db);
    }
    if (s->db_opts) {
        rocksdb_options_destroy(s->db_opts);
        rocksdb_options_destroy(s->meta_opts);
        rocksdb_options_destroy(s->rows_opts);
        rocksdb_block_based_options_destroy(s->rows_bbto);
        rocksdb_cache_destroy(s->block_cache);
        rocksdb_readoptions_destroy(s->ropts);
        rocksdb_writeoptions_destroy(s->wopts_sync);
    }
    free(s->dir);
    free(s->tmp_dir);
}

int store_scan_meta(store *s, void (*cb)(store *, table_version *), char **err)
{
    rocksdb_iterator_t *it = rocksdb_create_iterator_cf(s->db, s->ropts, s->cf[CF_META]);
    int rc = 0;
    for (rocksdb_iter_seek(it, "m", 1); rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
        size_t kl, vl;
        const char *k = rocksdb_iter_key(it, &kl);
        if (kl < 1 || k[0] != 'm')
            break;
        const char *v = rocksdb_iter_value(it, &vl);
        int nomem;
        table_version *tv = meta_decode(s, v, vl, &nomem);
        if (!tv) {
            set_err(err, nomem ? "out of memory reading table metadata" : "corrupt table metadata",
                    NULL);
            rc = -1;
            break;
        }
        cb(s, tv);
    }
    rocksdb_iter_destroy(it);
    return rc;
}

int store_read_next_id(store *s, uint32_t *next, char **err)
{
    size_t vl;
    char *rerr = NULL;
    char *v = rocksdb_get_cf(s->db, s->ropts, s->cf[CF_META], "n", 1, &vl, &rerr);
    if (rerr) {
        set_err(err, "cannot read next table id", rerr);
        free(rerr);
        return -1;
    }
    *next = (v && vl == 4) ? get_be32((uint8_t *)v) : 1;
    free(v);
    return 0;
}

int store_persist_next_id(store *s, uint32_t next, char *msg, size_t msglen)
{
    uint8_t v[4];
    put_be32(v, next);
    char *rerr = NULL;
    rocksdb_put_cf(s->db, s->wopts_sync, s->cf[CF_META], "n", 1, (char *)v, 4, &rerr);
    if (rerr) {
        snprintf(msg, msglen, "cannot persist table id: %s", rerr);
        free(rerr);
        return -1;
    }
    return 0;
}

/* Removes the rows in [from, to): a range tombstone hides them at once,
 * then the SST files lying wholly inside the range are deleted. The
 * tombstone alone would keep those files on disk, and their table readers
 * in memory, until a compaction that an ingest-only store never runs: a
 * soak with a re-import a minute grew each server by ~2.6 MB per import. */
static void delete_rows_range(store *s, const uint8_t *from, const uint8_t *to, char **err)
{
    /* The tombstone is a synced WAL write: not on a nearly full disk (see
     * disk.c). The rows stay as orphans, which start-up deletes. */
    char msg[600];
    if (store_disk_check(s, 1, "deleting rows of a dropped version", msg, sizeof msg) != ES_OK) {
        *err = strdup(msg);
        return;
    }
    rocksdb_delete_range_cf(s->db, s->wopts_sync, s->cf[CF_ROWS], (const char *)from,
                            ROW_KEY_LEN, (const char *)to, ROW_KEY_LEN, err);
    if (*err)
        return;
    uint8_t last[ROW_KEY_LEN];               /* to - 1: the file range is inclusive */
    memcpy(last, to, ROW_KEY_LEN);
    for (int i = ROW_KEY_LEN - 1; i >= 0 && last[i]-- == 0; i--)
        ;
    rocksdb_delete_file_in_range_cf(s->db, s->cf[CF_ROWS], (const char *)from, ROW_KEY_LEN,
                                    (const char *)last, ROW_KEY_LEN, err);
}

/* Deletes rows that belong to no live version: left by a crash between an
 * ingest and its metadata write, or by a version dropped while the process
 * died. Only gaps that hold a key get a range tombstone. */
void store_collect_orphans(store *s, uint64_t (*live)[2], size_t n)
{
    rocksdb_iterator_t *it = rocksdb_create_iterator_cf(s->db, s->ropts, s->cf[CF_ROWS]);
    uint8_t from[ROW_KEY_LEN] = {0}, to[ROW_KEY_LEN];
    for (size_t i = 0; i <= n; i++) {
        if (i < n)
            store_row_key(to, (uint32_t)live[i][0], live[i][1], 0);
        else
            memset(to, 0xff, sizeof to);
        rocksdb_iter_seek(it, (char *)from, sizeof from);
        size_t kl;
        const char *k = rocksdb_iter_valid(it) ? rocksdb_iter_key(it, &kl) : NULL;
        if (k && memcmp(k, to, ROW_KEY_LEN) < 0) {
            char *rerr = NULL;
            delete_rows_range(s, from, to, &rerr);
            log_info("orphan_rows_deleted", "from_table_id=%u", get_be32(from));
            free(rerr);
        }
        if (i < n)
            store_row_key(from, (uint32_t)live[i][0], live[i][1] + 1, 0);
    }
    rocksdb_iter_destroy(it);
}

void store_delete_rows(store *s, uint32_t id, uint64_t version)
{
    uint8_t from[ROW_KEY_LEN], to[ROW_KEY_LEN];
    store_row_key(from, id, version, 0);
    store_row_key(to, id, version + 1, 0);
    char *rerr = NULL;
    delete_rows_range(s, from, to, &rerr);
    if (rerr) {
        log_error("version_delete_failed", "table_id=%u version=%llu error=\"%s\"",
                  id, (unsigned long long)version, rerr);
        free(rerr);
    }
}

/* ---- the reclaimer ---------------------------------------------------------- */

struct reclaim_item {
    struct reclaim_item *next;
    uint32_t table_id;
    uint64_t version;
};

static void *reclaimer_main(void *arg)
{
    store *s = arg;
    pthread_mutex_lock(&s->reclaim_lock);
    for (;;) {
        while (!s->reclaim_head && !s->reclaim_stop)
            pthread_cond_wait(&s->reclaim_cond, &s->reclaim_lock);
        struct reclaim_item *it = s->reclaim_head;
        if (!it)
            break;               /* stopping, and nothing is left */
        if (!(s->reclaim_head = it->next))
            s->reclaim_tail = NULL;
        pthread_mutex_unlock(&s->reclaim_lock);
        pthread_mutex_lock(&s->reclaim_busy);
        store_delete_rows(s, it->table_id, it->version);
        pthread_mutex_unlock(&s->reclaim_busy);
        log_info("version_rows_deleted", "table_id=%u version=%llu", it->table_id,
                 (unsigned long long)it->version);
        free(it);
        pthread_mutex_lock(&s->reclaim_lock);
        s->reclaim_pending--;
        pthread_cond_broadcast(&s->reclaim_cond);
    }
    pthread_mutex_unlock(&s->reclaim_lock);
    return NULL;
}

void store_delete_rows_later(store *s, uint32_t id, uint64_t version)
{
    if (!s->reclaimer_started) { /* never after setup; kept correct all the same */
        store_delete_rows(s, id, version);
        return;
    }
    struct reclaim_item *it = malloc(sizeof *it);
    if (!it) {
        log_error("version_delete_deferred", "table_id=%u version=%llu error=\"out of memory\" "
                  "rows are deleted as orphans at the next start", id, (unsigned long long)version);
        return;
    }
    it->next = NULL;
    it->table_id = id;
    it->version = version;
    pthread_mutex_lock(&s->reclaim_lock);
    if (s->reclaim_tail)
        s->reclaim_tail->next = it;
    else
        s->reclaim_head = it;
    s->reclaim_tail = it;
    s->reclaim_pending++;
    pthread_cond_broadcast(&s->reclaim_cond);
    pthread_mutex_unlock(&s->reclaim_lock);
}

void store_reclaim_wait(store *s)
{
    if (!s->reclaimer_started)
        return;
    pthread_mutex_lock(&s->reclaim_lock);
    while (s->reclaim_pending)
        pthread_cond_wait(&s->reclaim_cond, &s->reclaim_lock);
    pthread_mutex_unlock(&s->reclaim_lock);
}

/* ---- statistics --------------------------------------------------------- */

/* The value of ticker `name` in RocksDB's statistics dump, whose ticker
 * lines read "rocksdb.block.cache.hit COUNT : 42". 0 when absent. */
static uint64_t ticker(const char *dump, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = dump; (p = strstr(p, name)) != NULL; p += n) {
        if ((p == dump || p[-1] == '\n') && strncmp(p + n, " COUNT : ", 9) == 0)
            return strtoull(p + n + 9, NULL, 10);
    }
    return 0;
}

/* RocksDB's own figures (DB-wide statistics are enabled at open): the
 * block cache's bytes, and tickers since start. */
static void rocksdb_refresh(store *s)
{
    store_metrics *m = s->m;
    METRIC_SET(m, block_cache_usage, rocksdb_cache_get_usage(s->block_cache));
    METRIC_SET(m, block_cache_capacity, rocksdb_cache_get_capacity(s->block_cache));
    char *dump = rocksdb_options_statistics_get_string(s->db_opts);
    if (!dump)
        return;
    METRIC_SET(m, block_cache_hits, ticker(dump, "rocksdb.block.cache.hit"));
    METRIC_SET(m, block_cache_misses, ticker(dump, "rocksdb.block.cache.miss"));
    /* Get's bytes and MultiGet's are separate tickers; lookups use both. */
    METRIC_SET(m, bytes_read, ticker(dump, "rocksdb.bytes.read") +
                                  ticker(dump, "rocksdb.number.multiget.bytes.read"));
    METRIC_SET(m, get_calls, ticker(dump, "rocksdb.number.keys.read"));
    METRIC_SET(m, multiget_calls, ticker(dump, "rocksdb.number.multiget.get"));
    rocksdb_free(dump);
}

void store_metrics_refresh(void *arg)
{
    store *s = arg;
    uint64_t free_bytes, reserve;
    METRIC_SET(s->m, shard_index, s->shard_index);
    METRIC_SET(s->m, shard_count, s->shard_count);
    rocksdb_refresh(s);
    store_hot_refresh(s);
    store_disk_read(s, &free_bytes, &reserve);
    METRIC_SET(s->m, disk_free, free_bytes);
    METRIC_SET(s->m, disk_reserve, reserve);
}

/* ---- documents ---------------------------------------------------------- */

static size_t doc_key(char *key, char kind, const char *name)
{
    size_t n = strlen(name);
    key[0] = kind;
    memcpy(key + 1, name, n);
    return n + 1;
}

int store_doc_put(store *s, char kind, const char *name, const void *val, size_t len,
                  char *msg, size_t msglen)
{
    char key[TABLE_NAME_MAX + 2], what[200];
    snprintf(what, sizeof what, "cannot store %s \"%s\"", kind == STORE_DOC_MANIFEST ? "manifest" : "document", name);
    int code = store_disk_check(s, 0, what, msg, msglen);
    if (code != ES_OK)
        return code;
    size_t kl = doc_key(key, kind, name);
    char *rerr = NULL;
    rocksdb_put_cf(s->db, s->wopts_sync, s->cf[CF_META], key, kl, val, len, &rerr);
    if (rerr) {
        snprintf(msg, msglen, "writing document \"%s\" failed: %s", name, rerr);
        free(rerr);
        return ES_INTERNAL;
    }
    return ES_OK;
}

char *store_doc_get(store *s, char kind, const char *name, size_t *len)
{
    char key[TABLE_NAME_MAX + 2];
    size_t kl = doc_key(key, kind, name);
    char *rerr = NULL;
    char *v = rocksdb_get_cf(s->db, s->ropts, s->cf[CF_META], key, kl, len, &rerr);
    if (rerr) {
        log_error("document_read_failed", "name=%s error=\"%s\"", name, rerr);
        free(rerr);
        free(v);
        return NULL;
    }
    return v;
}

size_t store_doc_list(store *s, char kind, char ***names)
{
    size_t n = 0, cap = 0;
    char **v = NULL;
    rocksdb_iterator_t *it = rocksdb_create_iterator_cf(s->db, s->ropts, s->cf[CF_META]);
    for (rocksdb_iter_seek(it, &kind, 1); rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
        size_t kl;
        const char *k = rocksdb_iter_key(it, &kl);
        if (kl < 1 || k[0] != kind)
            break;
        char **nv = n == cap ? realloc(v, (cap ? cap * 2 : 8) * sizeof *v) : v;
        char *name = nv ? strndup(k + 1, kl - 1) : NULL;
        if (!name) {             /* out of memory: the names so far */
            log_error("document_list_failed", "kind=%c listed=%zu error=\"out of memory\"", kind, n);
            v = nv ? nv : v;
            break;
        }
        if (n == cap)
            cap = cap ? cap * 2 : 8;
        v = nv;
        v[n++] = name;
    }
    rocksdb_iter_destroy(it);
    *names = v;
    return n;
}

/* ---- ingest ------------------------------------------------------------------ */

int store_ingest(store *s, const char *const *files, size_t n, char *msg, size_t msglen)
{
    rocksdb_ingestexternalfileoptions_t *io = rocksdb_ingestexternalfileoptions_create();
    rocksdb_ingestexternalfileoptions_set_move_files(io, 1);
    char *rerr = NULL;
    rocksdb_ingest_external_file_cf(s->db, s->cf[CF_ROWS], files, n, io, &rerr);
    rocksdb_ingestexternalfileoptions_destroy(io);
    if (rerr) {
        snprintf(msg, msglen, "ingesting SST files failed: %s", rerr);
        free(rerr);
        return -1;
    }
    return 0;
}

const rocksdb_options_t *store_rows_options(store *s)
{
    return s->rows_opts;
}

const char *store_tmp_dir(store *s)
{
    return s->tmp_dir;
}

const char *store_data_dir(store *s)
{
    return s->dir;
}
