/* test_store.c: the table store, the resident tier, and the Lookup error
 * mapping, on real RocksDB directories (no gRPC server), and the refusal
 * of a directory opened as another shard than it holds.
 *
 * Tables are written the way import.c writes them: SstFileWriter files with
 * the rows family's options, then store_activate. */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>
#include <grpc/byte_buffer.h>
#include <grpc/grpc.h>
#include <zlib.h>

#include "admin.h"
#include "engram/v1/engram.pb-c.h"
#include "grpc_util.h"
#include "lookup.h"
#include "status.h"
#include "store.h"
#include "shm.h"
#include "store_internal.h"
#include "synthetic.h"

static char dir[256];

static store *open_store_hot(uint64_t budget, uint64_t hot)
{
    store_options o = {dir, budget, 8 << 20, 1, 0, 2, hot};
    char err[600];
    store *s;
    if (store_setup(&o, NULL, &s, NULL, err, sizeof err) != ES_OK)
        fail_msg("store_setup: %s", err);
    return s;
}

static store *open_store(uint64_t budget)
{
    return open_store_hot(budget, 0);
}

/* Writes the rows of tv (synthetic, `seed`) into SST files of at most 300
 * rows each, filling tv's checksum; returns the files (*nfiles of them). */
static char **write_ssts(store *s, table_version *tv, uint64_t seed, size_t *nfiles_out)
{
    uint64_t rows = tv->rows;
    uint32_t rb = tv->row_bytes;
    size_t nfiles = (rows + 299) / 300;
    char **files = calloc(nfiles, sizeof *files);
    uint8_t *row = malloc(rb);
    rocksdb_envoptions_t *eo = rocksdb_envoptions_create();
    for (size_t f = 0; f < nfiles; f++) {
        files[f] = malloc(512);
        snprintf(files[f], 512, "%s/t%zu.sst", store_tmp_dir(s), f);
        rocksdb_sstfilewriter_t *w = rocksdb_sstfilewriter_create(eo, store_rows_options(s));
        char *err = NULL;
        rocksdb_sstfilewriter_open(w, files[f], &err);
        assert_null(err);
        for (uint64_t r = f * 300; r < rows && r < (f + 1) * 300; r++) {
            uint8_t key[ROW_KEY_LEN];
            store_row_key(key, tv->table_id, tv->version, r);
            synthetic_row(seed, r, row, rb);
            tv->checksum = (uint32_t)crc32_z(tv->checksum, row, rb);
            rocksdb_sstfilewriter_put(w, (char *)key, sizeof key, (char *)row, rb, &err);
            assert_null(err);
        }
        rocksdb_sstfilewriter_finish(w, &err);
        assert_null(err);
        rocksdb_sstfilewriter_destroy(w);
    }
    rocksdb_envoptions_destroy(eo);
    free(row);
    *nfiles_out = nfiles;
    return files;
}

static void free_files(char **files, size_t n)
{
    for (size_t f = 0; f < n; f++)
        free(files[f]);
    free(files);
}

/* Imports `rows` synthetic rows as the table's next version, activated or
 * staged, the way import.c does: claim, SST files, commit. */
static uint64_t import_version(store *s, const char *name, uint64_t rows, uint32_t rb,
                               uint64_t seed, int stage)
{
    table_version tv = {0};
    char msg[512];
    snprintf(tv.name, sizeof tv.name, "%s", name);
    snprintf(tv.dtype, sizeof tv.dtype, "u8");
    tv.rows = rows;
    tv.row_bytes = rb;
    tv.dim = rb;
    if (store_import_claim(s, name, 0, stage, &tv.table_id, &tv.version, msg, sizeof msg) != ES_OK)
        fail_msg("store_import_claim: %s", msg);
    tv.local_rows = rows;
    size_t nfiles;
    char **files = write_ssts(s, &tv, seed, &nfiles);
    int rc = store_commit_import(s, &tv, stage, (const char *const *)files, nfiles, msg, sizeof msg);
    if (rc != ES_OK)
        fail_msg("store_commit_import: %s", msg);
    free_files(files, nfiles);
    return tv.version;
}

static uint64_t import_table(store *s, const char *name, uint64_t rows, uint32_t rb,
                             uint64_t seed)
{
    return import_version(s, name, rows, rb, seed, 0);
}

static void check_rows(store *s, const char *name, uint64_t seed, const uint64_t *rows, size_t n)
{
    table_version *tv = store_acquire(s, name, 0);
    assert_non_null(tv);
    uint8_t *got = malloc(n * tv->row_bytes), *want = malloc(tv->row_bytes);
    char msg[256];
    assert_int_equal(store_read_rows(tv, rows, n, got, msg, sizeof msg), 0);
    for (size_t i = 0; i < n; i++) {
        synthetic_row(seed, rows[i], want, tv->row_bytes);
        assert_memory_equal(got + i * tv->row_bytes, want, tv->row_bytes);
    }
    free(got);
    free(want);
    table_version_release(tv);
}

static int setup_dir(void **state)
{
    snprintf(dir, sizeof dir, "/tmp/engram-test-store-XXXXXX");
    assert_non_null(mkdtemp(dir));
    return 0;
}

static int remove_dir(void **state)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd);
}

static const uint64_t probe[] = {0, 1, 999, 500, 500, 7, 998};

static void test_resident_and_rocksdb_tiers(void **state)
{
    store *s = open_store(100000); /* fits 1000 x 64 B, not 3000 x 64 B */
    assert_int_equal(import_table(s, "small", 1000, 64, 11), 1);
    assert_int_equal(import_table(s, "large", 3000, 64, 12), 1);
    table_version *a = store_acquire(s, "small", 0), *b = store_acquire(s, "large", 0);
    assert_non_null(a->resident);
    assert_null(b->resident);
    /* The store says which tier served a read. */
    uint8_t got[7 * 64];
    char msg[256];
    store_tiers t = {99, 99, 99};
    assert_int_equal(store_read_rows_tiered(a, probe, 7, got, &t, msg, sizeof msg), 0);
    assert_true(t.resident == 7 && t.hot == 0 && t.rocksdb == 0);
    assert_int_equal(store_read_rows_tiered(b, probe, 7, got, &t, msg, sizeof msg), 0);
    assert_true(t.resident == 0 && t.hot + t.rocksdb == 7);
    table_version_release(a);
    table_version_release(b);
    check_rows(s, "small", 11, probe, 7);
    check_rows(s, "large", 12, probe, 7);
    const uint64_t tail[] = {2999, 2998, 1500};
    check_rows(s, "large", 12, tail, 3);
    assert_null(store_acquire(s, "missing", 0));
    store_teardown(s);
}

static void test_new_version_does_not_disturb_readers(void **state)
{
    store *s = open_store(1 << 20);
    import_table(s, "t", 1000, 32, 1);
    table_version *old = store_acquire(s, "t", 0);
    assert_int_equal(import_table(s, "t", 1000, 32, 2), 2);
    /* a reader holding v1 still reads v1's bytes */
    uint8_t got[32], want[32];
    char msg[128];
    uint64_t r = 123;
    assert_int_equal(store_read_rows(old, &r, 1, got, msg, sizeof msg), 0);
    synthetic_row(1, 123, want, 32);
    assert_memory_equal(got, want, 32);
    assert_int_equal(old->version, 1);
    table_version_release(old);
    check_rows(s, "t", 2, probe, 7);
    store_teardown(s);
}

static void test_tables_survive_restart(void **state)
{
    store *s = open_store(1 << 20);
    table_version **all;
    size_t n = store_list(s, &all);
    assert_int_equal(n, 3); /* large, small, t: sorted by name */
    assert_string_equal(all[0]->name, "large");
    assert_string_equal(all[1]->name, "small");
    assert_string_equal(all[2]->name, "t");
    assert_int_equal(all[2]->version, 2);
    for (size_t i = 0; i < n; i++)
        table_version_release(all[i]);
    free(all);
    check_rows(s, "t", 2, probe, 7);
    check_rows(s, "large", 12, probe, 7);
    store_teardown(s);
}

/* SST files in the store's directory. */
static int count_sst(void)
{
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d)) != NULL;) {
        size_t l = strlen(e->d_name);
        n += l > 4 && strcmp(e->d_name + l - 4, ".sst") == 0;
    }
    if (d)
        closedir(d);
    return n;
}

static void test_one_import_per_table(void **state)
{
    store *s = open_store(1 << 20);
    uint32_t id;
    uint64_t v;
    char msg[256];
    assert_int_equal(store_import_claim(s, "t", 0, 0, &id, &v, msg, sizeof msg), ES_OK);
    assert_int_equal(v, 3);
    assert_int_equal(store_import_claim(s, "t", 0, 0, &id, &v, msg, sizeof msg), ES_ABORTED);
    assert_string_equal(msg, "an import of table \"t\" is already running");
    store_import_unclaim(s, "t");
    assert_int_equal(store_import_claim(s, "t", 2, 0, &id, &v, msg, sizeof msg), ES_ALREADY_EXISTS);
    assert_string_equal(msg, "version 2 of table \"t\" already exists on this server");
    /* v1 is retained (keep_versions 2); the active one cannot be dropped */
    assert_int_equal(store_drop(s, "t", 2, msg, sizeof msg), ES_FAILED_PRECONDITION);
    assert_string_equal(msg, "version 2 of table \"t\" is active; activate another version first");
    int files = count_sst();
    assert_int_equal(store_drop(s, "t", 1, msg, sizeof msg), ES_OK);
    assert_null(store_acquire(s, "t", 1));
    store_reclaim_wait(s);                       /* the reclaimer deletes them */
    /* the dropped version's ingested files are gone, not just tombstoned,
     * and the active version's rows are all still there */
    assert_true(count_sst() < files);
    table_version *tv = store_acquire(s, "t", 2);
    assert_non_null(tv);
    uint64_t n = tv->rows;
    uint32_t rb = tv->row_bytes;
    uint8_t *all = malloc(n * rb), want[64];
    store_scan *sc = store_scan_open(tv);        /* RocksDB's copy, not the RAM one */
    size_t got = 0, k;
    int code;
    while ((code = store_scan_next(sc, all + got * rb, n - got, &k, msg, sizeof msg)) == ES_OK &&
           k > 0)
        got += k;
    assert_int_equal(code, ES_OK);
    assert_int_equal(got, n);
    store_scan_close(sc);
    for (uint64_t r = 0; r < n; r++) {
        synthetic_row(2, r, want, rb);
        assert_memory_equal(all + r * rb, want, rb);
    }
    free(all);
    table_version_release(tv);
    assert_int_equal(store_drop(s, "t", 1, msg, sizeof msg), ES_NOT_FOUND);
    assert_int_equal(store_import_claim(s, "t", 1, 0, &id, &v, msg, sizeof msg), ES_FAILED_PRECONDITION);
    assert_string_equal(msg, "version 1 of table \"t\" is not newer than version 2 on this server");
    assert_int_equal(store_import_claim(s, "t", 7, 0, &id, &v, msg, sizeof msg), ES_OK);
    assert_int_equal(v, 7);
    store_import_unclaim(s, "t");
    store_teardown(s);
}

static void test_table_names(void **state)
{
    assert_true(table_name_valid("demo.l1"));
    assert_true(table_name_valid("A-b_c.9"));
    assert_false(table_name_valid(""));
    assert_false(table_name_valid("a/b"));
    assert_false(table_name_valid("a b"));
    char longname[130];
    memset(longname, 'x', 129);
    longname[129] = 0;
    assert_false(table_name_valid(longname));
    longname[128] = 0;
    assert_true(table_name_valid(longname));
}

/* The hot-row tier: a RocksDB-served table's second read of the same rows
 * comes from the cache, byte-exact; a new version never sees the old
 * version's cached rows. */
static void test_hot_tier(void **state)
{
    store *s = open_store_hot(0, 1 << 20);        /* nothing resident */
    import_table(s, "hot", 2000, 64, 31);
    const uint64_t rows[] = {5, 1999, 5, 700, 0};
    table_version *tv = store_acquire(s, "hot", 0);
    assert_null(tv->resident);
    uint8_t got[5 * 64], want[64];
    char msg[256];
    store_tiers t = {99, 99, 99};
    assert_int_equal(store_read_rows_tiered(tv, rows, 5, got, &t, msg, sizeof msg), 0);
    assert_int_equal(t.hot, 0);
    assert_int_equal(t.rocksdb, 5);
    assert_int_equal(t.resident, 0);
    for (int i = 0; i < 5; i++) {                 /* row 5 twice, read once */
        synthetic_row(31, rows[i], want, 64);
        assert_memory_equal(got + i * 64, want, 64);
    }
    assert_int_equal(store_read_rows_tiered(tv, rows, 5, got, &t, msg, sizeof msg), 0);
    assert_int_equal(t.hot, 5);
    assert_int_equal(t.rocksdb, 0);
    for (int i = 0; i < 5; i++) {
        synthetic_row(31, rows[i], want, 64);
        assert_memory_equal(got + i * 64, want, 64);
    }
    table_version_release(tv);
    import_table(s, "hot", 2000, 64, 32);          /* version 2, other bytes */
    tv = store_acquire(s, "hot", 0);
    assert_int_equal(store_read_rows_tiered(tv, rows, 5, got, &t, msg, sizeof msg), 0);
    assert_int_equal(t.hot, 0);
    synthetic_row(32, 1999, want, 64);
    assert_memory_equal(got + 64, want, 64);
    table_version_release(tv);
    store_teardown(s);
}

/* Misses with many duplicates, more distinct rows than one MultiGet batch
 * (512) and runs of one row crossing batch boundaries: every position gets
 * its row's bytes. */
static void test_cold_duplicates(void **state)
{
    store *s = open_store_hot(0, 0);              /* no resident tier, no hot cache */
    import_table(s, "dups", 3000, 64, 41);
    enum { N = 5000 };
    uint64_t *rows = malloc(N * sizeof *rows);
    for (size_t i = 0; i < N; i++)
        rows[i] = i % 7 == 0 ? 511 : (i * 2654435761u) % 1500;
    uint8_t *got = malloc(N * 64), want[64];
    char msg[256];
    table_version *tv = store_acquire(s, "dups", 0);
    assert_int_equal(store_read_rows_tiered(tv, rows, N, got, NULL, msg, sizeof msg), 0);
    for (size_t i = 0; i < N; i++) {
        synthetic_row(41, rows[i], want, 64);
        if (memcmp(got + i * 64, want, 64) != 0)
            fail_msg("position %zu (row %llu) differs", i, (unsigned long long)rows[i]);
    }
    table_version_release(tv);
    free(rows);
    free(got);
    store_teardown(s);
}

/* ---- placement ---------------------------------------------------------- */

/* The store, or NULL with *code and err (512 bytes) saying why. */
static store *open_placed(const char *d, uint32_t count, uint32_t index, store_placement *held,
                          int *code, char *err)
{
    store_options o = {d, 1 << 20, 8 << 20, count, index, 2, 0};
    store *s = NULL;
    *code = store_setup(&o, NULL, &s, held, err, 512);
    return *code == ES_OK ? s : NULL;
}

/* Refuses an open of `d` as shard `index` of `count`, with exactly `want`
 * and the held placement: FAILED_PRECONDITION when another placement is
 * held, INTERNAL when the record cannot be read. */
static void expect_refused(const char *d, uint32_t count, uint32_t index, uint32_t held_index,
                           uint32_t held_count, const char *want)
{
    store_placement held = {99, 99};
    char err[512];
    int code;
    assert_null(open_placed(d, count, index, &held, &code, err));
    assert_int_equal(code, held_count ? ES_FAILED_PRECONDITION : ES_INTERNAL);
    assert_string_equal(err, want);
    assert_int_equal(held.index, held_index);
    assert_int_equal(held.count, held_count);
}

/* Replaces (len > 0) or deletes (val NULL) the placement record of `d`
 * with RocksDB directly: a directory from before the record, or a
 * damaged one. */
static void poke_placement(const char *d, const char *val, size_t len)
{
    const char *names[2] = {"default", "rows"};
    rocksdb_options_t *opt = rocksdb_options_create();
    const rocksdb_options_t *cfo[2] = {opt, opt};
    rocksdb_column_family_handle_t *cf[2];
    char *err = NULL;
    rocksdb_t *db = rocksdb_open_column_families(opt, d, 2, names, cfo, cf, &err);
    assert_null(err);
    rocksdb_writeoptions_t *wo = rocksdb_writeoptions_create();
    if (val)
        rocksdb_put_cf(db, wo, cf[0], "p", 1, val, len, &err);
    else
        rocksdb_delete_cf(db, wo, cf[0], "p", 1, &err);
    assert_null(err);
    rocksdb_writeoptions_destroy(wo);
    rocksdb_column_family_handle_destroy(cf[0]);
    rocksdb_column_family_handle_destroy(cf[1]);
    rocksdb_close(db);
    rocksdb_options_destroy(opt);
}

/* A directory keeps the placement of its first open: any other shard or
 * shard count is refused with both named, and nothing in it changes (the
 * right open still reads its rows). One without the record takes the
 * next open's; a damaged record is refused. */
static void test_placement(void **state)
{
    char d[300], want[512];
    snprintf(d, sizeof d, "%s/placed", dir);
    store_placement held = {99, 99};
    char err[512];
    int code;
    store *s = open_placed(d, 3, 0, &held, &code, err);
    assert_non_null(s);
    assert_int_equal(held.count, 0);
    import_table(s, "p", 1000, 32, 51);
    store_teardown(s);

    snprintf(want, sizeof want, "data dir %s holds shard 0 of 3; opened as shard 1 of 3", d);
    expect_refused(d, 3, 1, 0, 3, want);
    snprintf(want, sizeof want, "data dir %s holds shard 0 of 3; opened as shard 0 of 2", d);
    expect_refused(d, 2, 0, 0, 3, want);
    /* unclustered: shard 0 of 1, through store_setup as well */
    snprintf(want, sizeof want, "data dir %s holds shard 0 of 3; opened as shard 0 of 1", d);
    expect_refused(d, 1, 0, 0, 3, want);
    store_options o = {d, 1 << 20, 8 << 20, 1, 0, 2, 0};
    assert_int_equal(store_setup(&o, NULL, &s, NULL, err, sizeof err), ES_FAILED_PRECONDITION);
    assert_string_equal(err, want);

    s = open_placed(d, 3, 0, &held, &code, err);
    assert_non_null(s);
    assert_int_equal(held.count, 0);
    check_rows(s, "p", 51, probe, 7);
    store_teardown(s);

    /* no record (written before placements were): adopted, then kept */
    poke_placement(d, NULL, 0);
    s = open_placed(d, 4, 2, &held, &code, err);
    assert_non_null(s);
    assert_int_equal(held.count, 0);
    check_rows(s, "p", 51, probe, 7);
    store_teardown(s);
    snprintf(want, sizeof want, "data dir %s holds shard 2 of 4; opened as shard 0 of 3", d);
    expect_refused(d, 3, 0, 2, 4, want);

    /* damaged: the wrong length, or a shard outside its count */
    poke_placement(d, "\0\0\0\0\0", 5);
    expect_refused(d, 4, 2, 0, 0, "corrupt placement record in the data directory");
    poke_placement(d, "\0\0\0\3\0\0\0\3", 8);
    expect_refused(d, 3, 0, 0, 0, "corrupt placement record in the data directory");
}

/* ---- Lookup status mapping ---------------------------------------------- */

static int call_lookup(const char *table, const uint64_t *rows, size_t n,
                       Engram__V1__LookupResponse **out, char *msg)
{
    Engram__V1__LookupRequest rq = ENGRAM__V1__LOOKUP_REQUEST__INIT;
    rq.table = (char *)table;
    rq.rows = (uint64_t *)rows;
    rq.n_rows = n;
    grpc_byte_buffer *req = pb_to_byte_buffer(&rq.base), *reply = NULL;
    int code = lookup_handle(NULL, req, &reply, msg, 512);
    grpc_byte_buffer_destroy(req);
    if (reply) {
        *out = (Engram__V1__LookupResponse *)pb_from_byte_buffer(
            &engram__v1__lookup_response__descriptor, reply);
        grpc_byte_buffer_destroy(reply);
    }
    return code;
}

static void test_lookup_statuses(void **state)
{
    store *s = open_store(1 << 20);
    lookup_options lo = {4, 1 << 20};
    lookup_setup(s, &lo);
    char msg[512];
    Engram__V1__LookupResponse *resp = NULL;

    const uint64_t ok_rows[] = {999, 0, 0};
    assert_int_equal(call_lookup("t", ok_rows, 3, &resp, msg), ES_OK);
    assert_non_null(resp);
    assert_int_equal(resp->data.len, 96);
    assert_int_equal(resp->row_bytes, 32);
    assert_int_equal(resp->version, 2);
    uint8_t want[32];
    synthetic_row(2, 999, want, 32);
    assert_memory_equal(resp->data.data, want, 32);
    synthetic_row(2, 0, want, 32);
    assert_memory_equal(resp->data.data + 64, want, 32);
    protobuf_c_message_free_unpacked(&resp->base, NULL);

    assert_int_equal(call_lookup("nope", ok_rows, 3, &resp, msg), ES_NOT_FOUND);
    assert_string_equal(msg, "table \"nope\" not found");
    assert_int_equal(call_lookup("", ok_rows, 3, &resp, msg), ES_INVALID_ARGUMENT);
    assert_string_equal(msg, "table name is empty");

    const uint64_t bad_rows[] = {5, 1000, 5000};
    assert_int_equal(call_lookup("t", bad_rows, 3, &resp, msg), ES_OUT_OF_RANGE);
    assert_string_equal(msg, "row 1000 (index 1 in the request) is out of range: table \"t\" has 1000 rows");

    const uint64_t five[] = {1, 2, 3, 4, 5};
    assert_int_equal(call_lookup("t", five, 5, &resp, msg), ES_INVALID_ARGUMENT);
    assert_string_equal(msg, "request has 5 rows; the maximum per request is 4");

    grpc_slice junk = grpc_slice_from_static_string("\xff\xff\xff");
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&junk, 1), *reply = NULL;
    assert_int_equal(lookup_handle(NULL, bb, &reply, msg, sizeof msg), ES_INVALID_ARGUMENT);
    assert_null(reply);
    grpc_byte_buffer_destroy(bb);

    lookup_teardown();
    store_teardown(s);
}

static void check_version_rows(store *s, const char *name, uint64_t version, uint64_t seed)
{
    table_version *tv = store_acquire(s, name, version);
    assert_non_null(tv);
    uint64_t rows[] = {0, tv->local_rows / 2, tv->local_rows - 1};
    uint8_t got[3 * 64], want[64];
    char msg[256];
    assert_true(tv->row_bytes <= 64);
    assert_int_equal(store_read_rows(tv, rows, 3, got, msg, sizeof msg), 0);
    for (int i = 0; i < 3; i++) {
        synthetic_row(seed, rows[i], want, tv->row_bytes);
        assert_memory_equal(got + i * tv->row_bytes, want, tv->row_bytes);
    }
    table_version_release(tv);
}

/* What a server without the version limit left behind: a staged version
 * ingested and recorded past the limit (it then crashed registering it). */
static void write_legacy_staged(store *s, const char *name, uint64_t version)
{
    table_version *cur = store_acquire(s, name, 0);
    assert_non_null(cur);
    table_version tv = *cur;
    table_version_release(cur);
    tv.version = version;
    tv.state = VS_STAGED;
    tv.checksum = 0;
    tv.resident = NULL;
    size_t nfiles;
    char **files = write_ssts(s, &tv, version, &nfiles);
    char msg[256];
    if (store_ingest(s, (const char *const *)files, nfiles, msg, sizeof msg))
        fail_msg("store_ingest: %s", msg);
    table_version *put = &tv;
    if (store_write_meta(s, &put, 1, NULL, msg, sizeof msg))
        fail_msg("store_write_meta: %s", msg);
    free_files(files, nfiles);
}

#define FULL_MSG(n, staged) "table \"many\" holds " #n " versions (1 active, 0 retained, " #staged \
    " staged), the most a table can hold is 16; drop a version that is not active first " \
    "(engramctl drop-version --table many --version V)"

/* Issue 11, finding 1: staged versions are not bounded by keep_versions,
 * and the 17th was written past the registry's 16 slots (SIGSEGV, and
 * again after a restart). A version that does not fit is refused at the
 * claim (before any row is written) and again at the commit (before
 * anything is ingested); a directory that already holds more opens with
 * every version, serves them, and takes imports again once versions are
 * dropped. */
static void test_version_limit(void **state)
{
    char saved[sizeof dir - 16];
    snprintf(saved, sizeof saved, "%.200s", dir);
    snprintf(dir, sizeof dir, "%s/limit", saved);
    store *s = open_store(1 << 20);
    assert_int_equal(import_version(s, "many", 50, 16, 1, 0), 1);
    for (uint64_t v = 2; v <= STORE_MAX_VERSIONS; v++)
        assert_int_equal(import_version(s, "many", 50, 16, v, 1), v);
    uint32_t id;
    uint64_t v;
    char msg[512];
    assert_int_equal(store_import_claim(s, "many", 0, 1, &id, &v, msg, sizeof msg),
                     ES_RESOURCE_EXHAUSTED);
    assert_string_equal(msg, FULL_MSG(16, 15));
    /* Activated: the active one would be retained next to 15 staged. */
    assert_int_equal(store_import_claim(s, "many", 0, 0, &id, &v, msg, sizeof msg),
                     ES_RESOURCE_EXHAUSTED);
    assert_string_equal(msg, FULL_MSG(16, 15));

    /* The commit's own check: its files are never ingested. */
    table_version tv = {0};
    snprintf(tv.name, sizeof tv.name, "many");
    snprintf(tv.dtype, sizeof tv.dtype, "u8");
    tv.rows = tv.local_rows = 50;
    tv.row_bytes = tv.dim = 16;
    tv.table_id = id;
    tv.version = 40;
    size_t nfiles;
    char **files = write_ssts(s, &tv, 40, &nfiles);
    assert_int_equal(store_commit_import(s, &tv, 1, (const char *const *)files, nfiles, msg,
                                         sizeof msg), ES_RESOURCE_EXHAUSTED);
    assert_string_equal(msg, FULL_MSG(16, 15));
    assert_int_equal(access(files[0], F_OK), 0);
    unlink(files[0]);
    free_files(files, nfiles);
    assert_null(store_acquire(s, "many", 40));

    /* An activated import fits when a retained version makes way. */
    assert_int_equal(store_drop(s, "many", 2, msg, sizeof msg), ES_OK);
    assert_int_equal(store_activate(s, "many", 3, msg, sizeof msg), ES_OK);  /* 1 retained */
    assert_int_equal(import_version(s, "many", 50, 16, 17, 0), 17);  /* v1 dropped by keep */
    assert_null(store_acquire(s, "many", 1));

    /* A directory that holds more than the limit. */
    write_legacy_staged(s, "many", 30);
    write_legacy_staged(s, "many", 31);
    store_teardown(s);
    s = open_store(1 << 20);
    table_version **vs;
    size_t n = store_versions(s, "many", &vs);
    assert_int_equal(n, 17);
    assert_int_equal(vs[15]->version, 30);
    assert_int_equal(vs[16]->version, 31);
    for (size_t i = 0; i < n; i++)
        table_version_release(vs[i]);
    free(vs);
    check_version_rows(s, "many", 0, 17);
    check_version_rows(s, "many", 31, 31);
    check_version_rows(s, "many", 5, 5);
    table_version *act = store_acquire(s, "many", 0);
    table_info_buf b;
    assert_int_equal(table_info_fill(&b, s, act), 0);
    assert_int_equal(b.ti.n_versions, 17);
    assert_int_equal(b.ti.versions[16]->version, 31);
    table_info_release(&b);
    table_version_release(act);
    assert_int_equal(store_import_claim(s, "many", 0, 1, &id, &v, msg, sizeof msg),
                     ES_RESOURCE_EXHAUSTED);
    /* 17 held from the data directory: the active one, a retained one, 15 staged */
    assert_string_equal(msg, "table \"many\" holds 17 versions (1 active, 1 retained, 15 staged), "
                        "the most a table can hold is 16; drop a version that is not active first "
                        "(engramctl drop-version --table many --version V)");
    assert_int_equal(store_drop(s, "many", 30, msg, sizeof msg), ES_OK);
    assert_int_equal(store_import_claim(s, "many", 0, 1, &id, &v, msg, sizeof msg),
                     ES_RESOURCE_EXHAUSTED);
    assert_string_equal(msg, "table \"many\" holds 16 versions (1 active, 1 retained, 14 staged), "
                        "the most a table can hold is 16; drop a version that is not active first "
                        "(engramctl drop-version --table many --version V)");
    assert_int_equal(store_drop(s, "many", 4, msg, sizeof msg), ES_OK);
    assert_int_equal(import_version(s, "many", 50, 16, 32, 1), 32);
    check_version_rows(s, "many", 32, 32);
    check_version_rows(s, "many", 31, 31);
    store_teardown(s);
    snprintf(dir, sizeof dir, "%s", saved);
}

/* Whether RocksDB holds local row `row` of (id, version), read directly. */
static int row_on_disk(store *s, uint32_t id, uint64_t version, uint64_t row)
{
    uint8_t key[ROW_KEY_LEN];
    store_row_key(key, id, version, row);
    size_t len;
    char *err = NULL;
    char *v = rocksdb_get_cf(s->db, s->ropts, s->cf[CF_ROWS], (char *)key, sizeof key, &len, &err);
    assert_null(err);
    free(v);
    return v != NULL;
}

/* Issue 11, finding 10: a dropped version's rows were deleted (a range
 * delete, file deletions, a synced write) on the thread that let go of it
 * last, often a Lookup's. The reclaimer does it now: with the reclaimer
 * held busy, the last release returns and the rows are still on disk; once
 * it may run they are gone, and the active version is untouched. */
static void test_drop_reclaimed_off_the_releasing_thread(void **state)
{
    char saved[sizeof dir - 16];
    snprintf(saved, sizeof saved, "%.200s", dir);
    snprintf(dir, sizeof dir, "%s/reclaim", saved);
    store *s = open_store(0);
    assert_int_equal(import_table(s, "r", 600, 32, 1), 1);
    assert_int_equal(import_table(s, "r", 600, 32, 2), 2);
    table_version *old = store_acquire(s, "r", 1);   /* a reader of v1 */
    assert_non_null(old);
    uint32_t id = old->table_id;
    char msg[256];
    pthread_mutex_lock(&s->reclaim_busy);
    assert_int_equal(store_drop(s, "r", 1, msg, sizeof msg), ES_OK);
    assert_true(row_on_disk(s, id, 1, 599));          /* still read by `old` */
    table_version_release(old);                        /* the last reference */
    /* The release queued the work: nothing was deleted on this thread. */
    assert_true(row_on_disk(s, id, 1, 0));
    assert_true(row_on_disk(s, id, 1, 599));
    pthread_mutex_unlock(&s->reclaim_busy);
    store_reclaim_wait(s);
    assert_false(row_on_disk(s, id, 1, 0));
    assert_false(row_on_disk(s, id, 1, 599));
    const uint64_t rows[] = {0, 300, 599};
    check_rows(s, "r", 2, rows, 3);
    store_teardown(s);
    snprintf(dir, sizeof dir, "%s", saved);
}

/* --shm-dir: the resident array is the file's rows; a version activated
 * again while a reader still holds its previous array gets a new file
 * under the same name, and that reader letting go must not unlink it. */
static int shm_nonce(const char *path, uint8_t nonce[16])
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    int ok = fseek(f, 88, SEEK_SET) == 0 && fread(nonce, 1, 16, f) == 16;
    fclose(f);
    return ok ? 0 : -1;
}

static void test_shm_files(void **state)
{
    char saved[256], shm[300], v1[400], v2[400];
    snprintf(saved, sizeof saved, "%s", dir);
    snprintf(shm, sizeof shm, "%s/shm", saved);
    snprintf(dir, sizeof dir, "%.200s/shmdata", saved);
    shm_options so = {shm, 0, 0};
    shm_metrics m;
    char msg[600];
    assert_int_equal(shm_setup(&so, &m, msg, sizeof msg), ES_OK);
    snprintf(v1, sizeof v1, "%s/t@v1@s0of1.engram", shm_dir());
    snprintf(v2, sizeof v2, "%s/t@v2@s0of1.engram", shm_dir());
    store *s = open_store(1 << 20);
    assert_int_equal(import_table(s, "t", 1000, 32, 1), 1);
    table_version *held = store_acquire(s, "t", 1);
    struct stat st;
    assert_int_equal(stat(v1, &st), 0);
    assert_int_equal(st.st_size, 4096 + 1000 * 32);
    assert_int_equal(st.st_mode & 0777, 0600);
    /* the array served is the file's rows */
    FILE *f = fopen(v1, "rb");
    uint8_t row[32];
    assert_int_equal(fseek(f, 4096 + 7 * 32, SEEK_SET), 0);
    assert_int_equal(fread(row, 1, 32, f), 32);
    fclose(f);
    assert_memory_equal(row, held->resident + 7 * 32, 32);
    uint8_t first[16], again[16];
    assert_int_equal(shm_nonce(v1, first), 0);

    assert_int_equal(import_table(s, "t", 1000, 32, 2), 2);
    assert_int_equal(stat(v2, &st), 0);
    assert_int_equal(stat(v1, &st), 0);           /* held: still served */
    assert_int_equal(store_activate(s, "t", 1, msg, sizeof msg), ES_OK);
    assert_int_equal(stat(v2, &st), -1);          /* nobody holds v2's array */
    assert_int_equal(shm_nonce(v1, again), 0);
    assert_memory_not_equal(first, again, 16);    /* a new file, renamed over */
    assert_int_equal(METRIC_GET(&m, files), 1);
    table_version_release(held);                  /* must not unlink the new v1 */
    assert_int_equal(stat(v1, &st), 0);
    assert_int_equal(shm_nonce(v1, first), 0);
    assert_memory_equal(first, again, 16);
    shm_file_info *files;
    size_t n;
    assert_int_equal(shm_list(&files, &n, msg, sizeof msg), ES_OK);
    assert_int_equal(n, 1);
    assert_string_equal(files[0].path, v1);
    assert_memory_equal(files[0].nonce, again, 16);
    assert_int_equal(files[0].ino, st.st_ino);
    free(files);
    assert_int_equal(METRIC_GET(&m, files), 1);
    assert_int_equal(METRIC_GET(&m, bytes), 4096 + 1000 * 32);
    store_teardown(s);
    assert_int_equal(stat(v1, &st), -1);          /* a clean stop unlinks */
    assert_int_equal(METRIC_GET(&m, files), 0);
    shm_teardown();
    snprintf(dir, sizeof dir, "%s", saved);
}

int main(void)
{
    grpc_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_resident_and_rocksdb_tiers),
        cmocka_unit_test(test_new_version_does_not_disturb_readers),
        cmocka_unit_test(test_tables_survive_restart),
        cmocka_unit_test(test_one_import_per_table),
        cmocka_unit_test(test_table_names),
        cmocka_unit_test(test_lookup_statuses),
        cmocka_unit_test(test_hot_tier),
        cmocka_unit_test(test_cold_duplicates),
        cmocka_unit_test(test_placement),
        cmocka_unit_test(test_version_limit),
        cmocka_unit_test(test_drop_reclaimed_off_the_releasing_thread),
        cmocka_unit_test(test_shm_files),
    };
    int rc = cmocka_run_group_tests(tests, setup_dir, remove_dir);
    grpc_shutdown();
    return rc;
}
