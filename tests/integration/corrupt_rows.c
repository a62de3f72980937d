/* corrupt_rows.c: damages one stored row of a stopped engram-server's
 * RocksDB directory, so the tests can check that Admin.Verify finds it, or
 * makes a version's metadata look as written before xxh3 was recorded.
 *
 *   corrupt_rows DATA_DIR TABLE VERSION LOCAL_ROW flip|delete|forget-xxh3
 *
 * flip rewrites the row with its first byte inverted (a row that reads
 * fine but is not the row imported); delete removes it; forget-xxh3
 * rewrites the version's metadata without its xxh3 (LOCAL_ROW unused),
 * as an older server wrote it. The server must
 * not be running (RocksDB locks the directory). It finds the table's id in
 * the version's metadata and writes through RocksDB's own C API, so the
 * damage is exactly one row and every block checksum stays valid: only
 * engram's own checksums can notice. The key layout is store.h's. Test
 * code only; the server has no way to do this. */
#include <rocksdb/c.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engram/v1/engram.pb-c.h"

static void put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (56 - 8 * i));
}

static int die(const char *what, char *err)
{
    fprintf(stderr, "corrupt_rows: %s%s%s\n", what, err ? ": " : "", err ? err : "");
    free(err);
    return 1;
}

/* The metadata of (name, version): u32 table id, u8 state, a packed
 * TableInfo. Returns the value (malloc'd) and its key, or NULL. */
static char *get_meta(rocksdb_t *db, rocksdb_column_family_handle_t *meta, const char *name,
                      uint64_t version, char *key, size_t *kl, size_t *vl)
{
    size_t n = strlen(name);
    key[0] = 'm';
    memcpy(key + 1, name, n);
    key[n + 1] = 0;
    put_be64((uint8_t *)key + n + 2, version);
    *kl = n + 10;
    rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
    char *err = NULL;
    char *v = rocksdb_get_cf(db, ro, meta, key, *kl, vl, &err);
    rocksdb_readoptions_destroy(ro);
    if (err || !v || *vl < 5) {
        free(v);
        die("no metadata for that table and version", err);
        return NULL;
    }
    return v;
}

/* Rewrites the metadata with xxh3 0: what a server before it wrote. */
static int forget_xxh3(rocksdb_t *db, rocksdb_column_family_handle_t *meta, const char *key,
                       size_t kl, const char *v, size_t vl)
{
    Engram__V1__TableInfo *ti = engram__v1__table_info__unpack(NULL, vl - 5, (const uint8_t *)v + 5);
    if (!ti)
        return die("metadata does not parse", NULL);
    ti->xxh3 = 0;
    size_t n = engram__v1__table_info__get_packed_size(ti);
    char *nv = malloc(5 + n);
    memcpy(nv, v, 5);
    engram__v1__table_info__pack(ti, (uint8_t *)nv + 5);
    engram__v1__table_info__free_unpacked(ti, NULL);
    rocksdb_writeoptions_t *wo = rocksdb_writeoptions_create();
    rocksdb_writeoptions_set_sync(wo, 1);
    char *err = NULL;
    rocksdb_put_cf(db, wo, meta, key, kl, nv, 5 + n, &err);
    rocksdb_writeoptions_destroy(wo);
    free(nv);
    return err ? die("write failed", err) : 0;
}

static int damage(rocksdb_t *db, rocksdb_column_family_handle_t *rows, const uint8_t key[20],
                  int del)
{
    rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
    rocksdb_writeoptions_t *wo = rocksdb_writeoptions_create();
    rocksdb_writeoptions_set_sync(wo, 1);
    char *err = NULL;
    size_t vl = 0;
    char *v = rocksdb_get_cf(db, ro, rows, (const char *)key, 20, &vl, &err);
    int rc = 0;
    if (err || !v || vl == 0) {
        rc = die("no such row", err);
    } else if (del) {
        rocksdb_delete_cf(db, wo, rows, (const char *)key, 20, &err);
    } else {
        v[0] = (char)~v[0];
        rocksdb_put_cf(db, wo, rows, (const char *)key, 20, v, vl, &err);
    }
    if (!rc && err)
        rc = die("write failed", err);
    free(v);
    rocksdb_readoptions_destroy(ro);
    rocksdb_writeoptions_destroy(wo);
    return rc;
}

int main(int argc, char **argv)
{
    const char *mode = argc == 6 ? argv[5] : "";
    if (strcmp(mode, "flip") && strcmp(mode, "delete") && strcmp(mode, "forget-xxh3"))
        return die("usage: corrupt_rows DATA_DIR TABLE VERSION LOCAL_ROW flip|delete|forget-xxh3",
                   NULL);
    uint64_t version = strtoull(argv[3], NULL, 10), row = strtoull(argv[4], NULL, 10);
    rocksdb_options_t *o = rocksdb_options_create();
    const char *names[2] = {"default", "rows"};
    const rocksdb_options_t *cfo[2] = {o, o};
    rocksdb_column_family_handle_t *cf[2];
    char *err = NULL;
    rocksdb_t *db = rocksdb_open_column_families(o, argv[1], 2, names, cfo, cf, &err);
    if (err)
        return die("cannot open the database", err);
    char mkey[300];
    size_t kl, vl;
    char *meta = get_meta(db, cf[0], argv[2], version, mkey, &kl, &vl);
    int rc = meta ? 0 : 1;
    if (meta && !strcmp(mode, "forget-xxh3")) {
        rc = forget_xxh3(db, cf[0], mkey, kl, meta, vl);
    } else if (meta) {
        uint8_t key[20];
        memcpy(key, meta, 4);    /* the table id */
        put_be64(key + 4, version);
        put_be64(key + 12, row);
        rc = damage(db, cf[1], key, !strcmp(mode, "delete"));
    }
    free(meta);
    rocksdb_column_family_handle_destroy(cf[0]);
    rocksdb_column_family_handle_destroy(cf[1]);
    rocksdb_close(db);
    rocksdb_options_destroy(o);
    return rc;
}
