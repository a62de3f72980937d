/* store.c: RocksDB-backed table store with a resident tier in front.
 *
 * See store.h for the key layout and the version life cycle. The registry of
 * current versions is a small array under a rwlock: tables are few (a model
 * has a handful), lookups take the read lock only long enough to bump a
 * reference count, and imports take the write lock only for the swap. */
#include "store.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <zlib.h>

#include "engram/v1/engram.pb-c.h"
#include "log.h"
#include "names.h"

#define CF_META 0
#define CF_ROWS 1
#define MULTIGET_BATCH 512

struct store {
    rocksdb_t *db;
    rocksdb_column_family_handle_t *cf[2];
    rocksdb_options_t *db_opts, *meta_opts, *rows_opts;
    rocksdb_block_based_table_options_t *rows_bbto;
    rocksdb_cache_t *block_cache;
    rocksdb_readoptions_t *ropts;
    rocksdb_writeoptions_t *wopts_sync;
    store_metrics *m;

    pthread_rwlock_t lock;       /* guards tables/ntables */
    table_version **tables;
    size_t ntables, cap;

    pthread_mutex_t claim_lock;  /* guards claims and next_id */
    char **claims;
    size_t nclaims;
    uint32_t next_id;

    char *dir;
    char *tmp_dir;
};

static store_metrics metrics_none;

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

int table_name_valid(const char *name)
{
    return engram_name_valid(name);
}

static uint64_t unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static size_t meta_key(char *key, const char *name)
{
    key[0] = 'm';
    size_t n = strlen(name);
    memcpy(key + 1, name, n);
    return n + 1;
}

/* Value of 'm'+name: table id, then the TableInfo as the wire knows it. */
static char *meta_encode(const table_version *tv, size_t *len)
{
    Engram__V1__TableInfo ti = ENGRAM__V1__TABLE_INFO__INIT;
    ti.name = (char *)tv->name;
    ti.rows = tv->rows;
    ti.row_bytes = tv->row_bytes;
    ti.dim = tv->dim;
    ti.dtype = (char *)tv->dtype;
    ti.version = tv->version;
    ti.checksum = tv->checksum;
    ti.created_unix_ms = tv->created_unix_ms;
    size_t n = engram__v1__table_info__get_packed_size(&ti);
    char *buf = malloc(4 + n);
    put_be32((uint8_t *)buf, tv->table_id);
    engram__v1__table_info__pack(&ti, (uint8_t *)buf + 4);
    *len = 4 + n;
    return buf;
}

static table_version *meta_decode(store *s, const char *val, size_t len)
{
    if (len < 4)
        return NULL;
    Engram__V1__TableInfo *ti = engram__v1__table_info__unpack(
        NULL, len - 4, (const uint8_t *)val + 4);
    if (!ti)
        return NULL;
    table_version *tv = calloc(1, sizeof *tv);
    tv->refs = 1;
    tv->s = s;
    tv->table_id = get_be32((const uint8_t *)val);
    snprintf(tv->name, sizeof tv->name, "%s", ti->name);
    snprintf(tv->dtype, sizeof tv->dtype, "%s", ti->dtype);
    tv->version = ti->version;
    tv->rows = ti->rows;
    tv->row_bytes = ti->row_bytes;
    tv->dim = ti->dim;
    tv->checksum = ti->checksum;
    tv->created_unix_ms = ti->created_unix_ms;
    engram__v1__table_info__free_unpacked(ti, NULL);
    return tv;
}

/* ---- opening ------------------------------------------------------------ */

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

    s->meta_opts = rocksdb_options_create();

    s->rows_opts = rocksdb_options_create();
    rocksdb_options_set_compression(s->rows_opts, rocksdb_no_compression);
    s->rows_bbto = rocksdb_block_based_options_create();
    s->block_cache = rocksdb_cache_create_lru(o->block_cache_bytes);
    rocksdb_block_based_options_set_block_cache(s->rows_bbto, s->block_cache);
    rocksdb_block_based_options_set_checksum(s->rows_bbto, 4 /* XXH3 */);
    rocksdb_block_based_options_set_filter_policy(
        s->rows_bbto, rocksdb_filterpolicy_create_bloom_full(10));
    rocksdb_block_based_options_set_cache_index_and_filter_blocks(s->rows_bbto, 1);
    rocksdb_options_set_block_based_table_factory(s->rows_opts, s->rows_bbto);

    s->ropts = rocksdb_readoptions_create();
    rocksdb_readoptions_set_verify_checksums(s->ropts, 1);
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

static int mkdir_p(const char *path)
{
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = 0;
        if (mkdir(buf, 0755) < 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    return mkdir(buf, 0755) < 0 && errno != EEXIST ? -1 : 0;
}

/* ---- registry ----------------------------------------------------------- */

static void registry_put(store *s, table_version *tv, table_version **old)
{
    *old = NULL;
    for (size_t i = 0; i < s->ntables; i++) {
        if (strcmp(s->tables[i]->name, tv->name) == 0) {
            *old = s->tables[i];
            s->tables[i] = tv;
            return;
        }
    }
    if (s->ntables == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 8;
        s->tables = realloc(s->tables, s->cap * sizeof *s->tables);
    }
    s->tables[s->ntables++] = tv;
}

table_version *store_acquire(store *s, const char *name)
{
    table_version *tv = NULL;
    pthread_rwlock_rdlock(&s->lock);
    for (size_t i = 0; i < s->ntables; i++) {
        if (strcmp(s->tables[i]->name, name) == 0) {
            tv = s->tables[i];
            __atomic_add_fetch(&tv->refs, 1, __ATOMIC_RELAXED);
            break;
        }
    }
    pthread_rwlock_unlock(&s->lock);
    return tv;
}

static void delete_version_rows(store *s, uint32_t id, uint64_t version)
{
    uint8_t from[ROW_KEY_LEN], to[ROW_KEY_LEN];
    store_row_key(from, id, version, 0);
    store_row_key(to, id, version + 1, 0);
    char *rerr = NULL;
    rocksdb_delete_range_cf(s->db, s->wopts_sync, s->cf[CF_ROWS], (char *)from,
                            sizeof from, (char *)to, sizeof to, &rerr);
    if (rerr) {
        log_error("version_delete_failed", "table_id=%u version=%llu error=\"%s\"",
                  id, (unsigned long long)version, rerr);
        free(rerr);
    }
}

void table_version_release(table_version *tv)
{
    if (!tv || __atomic_sub_fetch(&tv->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    if (tv->superseded) {
        delete_version_rows(tv->s, tv->table_id, tv->version);
        log_info("version_dropped", "table=%s version=%llu", tv->name,
                 (unsigned long long)tv->version);
    }
    resident_free(tv->resident, (size_t)tv->rows * tv->row_bytes);
    free(tv);
}

static int by_name(const void *a, const void *b)
{
    return strcmp((*(table_version *const *)a)->name,
                  (*(table_version *const *)b)->name);
}

size_t store_list(store *s, table_version ***out)
{
    pthread_rwlock_rdlock(&s->lock);
    size_t n = s->ntables;
    table_version **v = malloc((n ? n : 1) * sizeof *v);
    for (size_t i = 0; i < n; i++) {
        v[i] = s->tables[i];
        __atomic_add_fetch(&v[i]->refs, 1, __ATOMIC_RELAXED);
    }
    pthread_rwlock_unlock(&s->lock);
    qsort(v, n, sizeof *v, by_name);
    *out = v;
    return n;
}

/* ---- resident loading --------------------------------------------------- */

/* Scans the version's rows in key order into a dense array and checks the
 * checksum, so a table is only served from RAM when every row is there and
 * intact. Tables that do not fit stay on RocksDB. */
static void resident_load(store *s, table_version *tv)
{
    size_t bytes = (size_t)tv->rows * tv->row_bytes;
    uint8_t *arr = resident_alloc(bytes);
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
    if (!bad && expect != tv->rows)
        bad = "rows missing at the end";
    if (!bad && (uint32_t)crc32_z(0, arr, bytes) != tv->checksum)
        bad = "checksum mismatch";
    if (bad) {
        log_error("resident_load_failed", "table=%s version=%llu row=%llu error=\"%s\"",
                  tv->name, (unsigned long long)tv->version,
                  (unsigned long long)expect, bad);
        resident_free(arr, bytes);
    } else {
        tv->resident = arr;
    }
    free(rerr);
}

/* ---- startup ------------------------------------------------------------ */

static int load_tables(store *s, char **err)
{
    rocksdb_iterator_t *it = rocksdb_create_iterator_cf(s->db, s->ropts, s->cf[CF_META]);
    for (rocksdb_iter_seek(it, "m", 1); rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
        size_t kl, vl;
        const char *k = rocksdb_iter_key(it, &kl);
        if (kl < 1 || k[0] != 'm')
            break;
        const char *v = rocksdb_iter_value(it, &vl);
        table_version *tv = meta_decode(s, v, vl);
        if (!tv) {
            rocksdb_iter_destroy(it);
            set_err(err, "corrupt table metadata", NULL);
            return -1;
        }
        resident_load(s, tv);
        table_version *old;
        registry_put(s, tv, &old);
        log_info("table_loaded", "table=%s version=%llu rows=%llu row_bytes=%u resident=%d",
                 tv->name, (unsigned long long)tv->version,
                 (unsigned long long)tv->rows, tv->row_bytes, tv->resident != NULL);
    }
    rocksdb_iter_destroy(it);
    char *v;
    size_t vl;
    char *rerr = NULL;
    v = rocksdb_get_cf(s->db, s->ropts, s->cf[CF_META], "n", 1, &vl, &rerr);
    if (rerr) {
        set_err(err, "cannot read next table id", rerr);
        free(rerr);
        return -1;
    }
    s->next_id = (v && vl == 4) ? get_be32((uint8_t *)v) : 1;
    free(v);
    return 0;
}

static int cmp_u64pair(const void *a, const void *b)
{
    const uint64_t *x = a, *y = b;
    if (x[0] != y[0])
        return x[0] < y[0] ? -1 : 1;
    return x[1] < y[1] ? -1 : x[1] > y[1];
}

/* Deletes rows that belong to no current version: left by a crash between
 * an ingest and its metadata write, or by a version dropped while the
 * process died. Only gaps that hold a key get a range tombstone. */
static void collect_orphans(store *s)
{
    size_t n = s->ntables;
    uint64_t (*live)[2] = malloc((n + 1) * sizeof *live);
    for (size_t i = 0; i < n; i++) {
        live[i][0] = s->tables[i]->table_id;
        live[i][1] = s->tables[i]->version;
    }
    qsort(live, n, sizeof *live, cmp_u64pair);
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
            rocksdb_delete_range_cf(s->db, s->wopts_sync, s->cf[CF_ROWS], (char *)from,
                                    sizeof from, (char *)to, sizeof to, &rerr);
            log_info("orphan_rows_deleted", "from_table_id=%u", get_be32(from));
            free(rerr);
        }
        if (i < n)
            store_row_key(from, (uint32_t)live[i][0], live[i][1] + 1, 0);
    }
    rocksdb_iter_destroy(it);
    free(live);
}

store *store_setup(const store_options *o, store_metrics *metrics, char **err)
{
    store *s = calloc(1, sizeof *s);
    s->m = metrics ? metrics : &metrics_none;
    memset(s->m, 0, sizeof *s->m);
    s->dir = strdup(o->dir);
    size_t tl = strlen(o->dir) + 16;
    s->tmp_dir = malloc(tl);
    snprintf(s->tmp_dir, tl, "%s/import-tmp", o->dir);
    pthread_rwlock_init(&s->lock, NULL);
    pthread_mutex_init(&s->claim_lock, NULL);
    resident_setup(o->resident_budget, &s->m->resident);
    if (mkdir_p(s->dir) < 0 || mkdir_p(s->tmp_dir) < 0) {
        set_err(err, "cannot create data directory", strerror(errno));
        store_teardown(s);
        return NULL;
    }
    make_options(s, o);
    if (open_db(s, err) < 0 || load_tables(s, err) < 0) {
        store_teardown(s);
        return NULL;
    }
    collect_orphans(s);
    return s;
}

void store_teardown(store *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->ntables; i++)
        table_version_release(s->tables[i]);
    free(s->tables);
    for (size_t i = 0; i < s->nclaims; i++)
        free(s->claims[i]);
    free(s->claims);
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
    resident_teardown();
    pthread_rwlock_destroy(&s->lock);
    pthread_mutex_destroy(&s->claim_lock);
    free(s->dir);
    free(s->tmp_dir);
    free(s);
}

/* ---- reads -------------------------------------------------------------- */

static int multiget_batch(table_version *tv, const uint64_t *rows, size_t n,
                          uint8_t *out, char *msg, size_t msglen)
{
    store *s = tv->s;
    uint8_t keys[MULTIGET_BATCH][ROW_KEY_LEN];
    const char *kp[MULTIGET_BATCH];
    size_t ks[MULTIGET_BATCH];
    rocksdb_pinnableslice_t *vals[MULTIGET_BATCH];
    char *errs[MULTIGET_BATCH];
    for (size_t i = 0; i < n; i++) {
        store_row_key(keys[i], tv->table_id, tv->version, rows[i]);
        kp[i] = (const char *)keys[i];
        ks[i] = ROW_KEY_LEN;
    }
    rocksdb_batched_multi_get_cf(s->db, s->ropts, s->cf[CF_ROWS], n, kp, ks,
                                 vals, errs, 0);
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        size_t vl = 0;
        const char *v = vals[i] ? rocksdb_pinnableslice_value(vals[i], &vl) : NULL;
        if (rc == 0 && (errs[i] || !v || vl != tv->row_bytes)) {
            snprintf(msg, msglen, "row %llu of table \"%s\" version %llu is %s%s",
                     (unsigned long long)rows[i], tv->name,
                     (unsigned long long)tv->version,
                     errs[i] ? "unreadable: " : (v ? "of the wrong length" : "missing from the store"),
                     errs[i] ? errs[i] : "");
            rc = -1;
        } else if (rc == 0) {
            memcpy(out + i * tv->row_bytes, v, vl);
        }
        free(errs[i]);
        if (vals[i])
            rocksdb_pinnableslice_destroy(vals[i]);
    }
    return rc;
}

int store_read_rows(table_version *tv, const uint64_t *rows, size_t n,
                    uint8_t *out, char *msg, size_t msglen)
{
    const size_t rb = tv->row_bytes;
    if (tv->resident) {
        const uint8_t *arr = tv->resident;
        for (size_t i = 0; i < n; i++)
            memcpy(out + i * rb, arr + rows[i] * rb, rb);
        __atomic_add_fetch(&tv->s->m->rows_resident, n, __ATOMIC_RELAXED);
        return 0;
    }
    for (size_t off = 0; off < n; off += MULTIGET_BATCH) {
        size_t k = n - off < MULTIGET_BATCH ? n - off : MULTIGET_BATCH;
        if (multiget_batch(tv, rows + off, k, out + off * rb, msg, msglen) < 0)
            return -1;
        __atomic_add_fetch(&tv->s->m->multiget_calls, 1, __ATOMIC_RELAXED);
    }
    __atomic_add_fetch(&tv->s->m->rows_rocksdb, n, __ATOMIC_RELAXED);
    return 0;
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
    char key[TABLE_NAME_MAX + 2];
    size_t kl = doc_key(key, kind, name);
    char *rerr = NULL;
    rocksdb_put_cf(s->db, s->wopts_sync, s->cf[CF_META], key, kl, val, len, &rerr);
    if (rerr) {
        snprintf(msg, msglen, "writing document \"%s\" failed: %s", name, rerr);
        free(rerr);
        return -1;
    }
    return 0;
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
        if (n == cap)
            v = realloc(v, (cap = cap ? cap * 2 : 8) * sizeof *v);
        v[n++] = strndup(k + 1, kl - 1);
    }
    rocksdb_iter_destroy(it);
    *names = v;
    return n;
}

/* ---- import claims and activation -------------------------------------- */

static int claimed(store *s, const char *name)
{
    for (size_t i = 0; i < s->nclaims; i++)
        if (strcmp(s->claims[i], name) == 0)
            return 1;
    return 0;
}

/* A new table's id is persisted before any of its rows are written, so two
 * tables can never share key space even across a crash. */
static int allocate_id(store *s, uint32_t *id, char *msg, size_t msglen)
{
    uint8_t v[4];
    put_be32(v, s->next_id + 1);
    char *rerr = NULL;
    rocksdb_put_cf(s->db, s->wopts_sync, s->cf[CF_META], "n", 1, (char *)v, 4, &rerr);
    if (rerr) {
        snprintf(msg, msglen, "cannot persist table id: %s", rerr);
        free(rerr);
        return -1;
    }
    *id = s->next_id++;
    return 0;
}

int store_import_claim(store *s, const char *name, uint32_t *table_id,
                       uint64_t *version, char *msg, size_t msglen)
{
    pthread_mutex_lock(&s->claim_lock);
    if (claimed(s, name)) {
        pthread_mutex_unlock(&s->claim_lock);
        snprintf(msg, msglen, "an import of table \"%s\" is already running", name);
        return -1;
    }
    table_version *cur = store_acquire(s, name);
    int rc = 0;
    if (cur) {
        *table_id = cur->table_id;
        *version = cur->version + 1;
        table_version_release(cur);
    } else {
        *version = 1;
        rc = allocate_id(s, table_id, msg, msglen);
    }
    if (rc == 0) {
        s->claims = realloc(s->claims, (s->nclaims + 1) * sizeof *s->claims);
        s->claims[s->nclaims++] = strdup(name);
    }
    pthread_mutex_unlock(&s->claim_lock);
    return rc;
}

void store_import_unclaim(store *s, const char *name)
{
    pthread_mutex_lock(&s->claim_lock);
    for (size_t i = 0; i < s->nclaims; i++) {
        if (strcmp(s->claims[i], name) == 0) {
            free(s->claims[i]);
            s->claims[i] = s->claims[--s->nclaims];
            break;
        }
    }
    pthread_mutex_unlock(&s->claim_lock);
}

static int ingest(store *s, const char *const *files, size_t n, char *msg, size_t msglen)
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

static int write_meta(store *s, const table_version *tv, char *msg, size_t msglen)
{
    char key[TABLE_NAME_MAX + 2];
    size_t kl = meta_key(key, tv->name), vl;
    char *val = meta_encode(tv, &vl);
    char *rerr = NULL;
    rocksdb_put_cf(s->db, s->wopts_sync, s->cf[CF_META], key, kl, val, vl, &rerr);
    free(val);
    if (rerr) {
        snprintf(msg, msglen, "writing table metadata failed: %s", rerr);
        free(rerr);
        return -1;
    }
    return 0;
}

/* Order matters for crash safety: rows are ingested first, then the
 * metadata that names the new version is written (synced), then readers are
 * switched. A crash before the metadata write leaves only orphan rows, which
 * collect_orphans deletes at the next start; the old version keeps serving. */
int store_activate(store *s, const table_version *proto, const char *const *files,
                   size_t nfiles, char *msg, size_t msglen)
{
    table_version *tv = calloc(1, sizeof *tv);
    *tv = *proto;
    tv->refs = 1;
    tv->s = s;
    tv->resident = NULL;
    tv->superseded = 0;
    tv->created_unix_ms = unix_ms();
    int rc = nfiles ? ingest(s, files, nfiles, msg, msglen) : 0;
    if (rc == 0) {
        resident_load(s, tv);
        rc = write_meta(s, tv, msg, msglen);
        if (rc < 0)
            delete_version_rows(s, tv->table_id, tv->version);
    }
    if (rc < 0) {
        resident_free(tv->resident, (size_t)tv->rows * tv->row_bytes);
        free(tv);
        __atomic_add_fetch(&s->m->imports_failed, 1, __ATOMIC_RELAXED);
        store_import_unclaim(s, proto->name);
        return -1;
    }
    table_version *old;
    pthread_rwlock_wrlock(&s->lock);
    registry_put(s, tv, &old);
    if (old)
        old->superseded = 1;
    pthread_rwlock_unlock(&s->lock);
    table_version_release(old);
    __atomic_add_fetch(&s->m->imports_done, 1, __ATOMIC_RELAXED);
    store_import_unclaim(s, proto->name);
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
