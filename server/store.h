/* store.h: the table store. RocksDB is the source of truth; the resident
 * tier holds tables that fit the budget as dense arrays in front of it.
 *
 * Layout in RocksDB (one database, two column families):
 *   "default": 'm' + name          -> u32 BE table id + packed TableInfo
 *              'n'                 -> u32 BE next table id
 *              'M' + name          -> a manifest document (JSON)
 *   "rows":    id(u32 BE) version(u64 BE) row(u64 BE) -> row bytes
 * Rows live in their own column family so their options differ from the
 * metadata's: no compression (embeddings do not compress and decompression
 * would sit on the lookup path), block checksums, a bloom filter for point
 * lookups. Big-endian keys sort each version's rows in row order, which is
 * what SstFileWriter needs and what a resident load scans.
 *
 * A table's served state is an immutable, reference-counted table_version.
 * Lookups acquire the current one and release it when done; an import
 * activates a new one with a pointer swap, so a lookup never mixes rows of
 * two versions. When the last reference to a superseded version drops, its
 * rows are deleted (DeleteRange) and its resident array is freed. */
#ifndef ENGRAM_SERVER_STORE_H
#define ENGRAM_SERVER_STORE_H

#include <rocksdb/c.h>
#include <stddef.h>
#include <stdint.h>

#include "resident.h"

#define TABLE_NAME_MAX 128
#define ROW_KEY_LEN 20

typedef struct store store;

typedef struct table_version {
    int refs;                    /* atomic */
    store *s;
    char name[TABLE_NAME_MAX + 1];
    uint32_t table_id;
    uint64_t version;
    uint64_t rows;
    uint32_t row_bytes;
    uint32_t dim;
    char dtype[16];
    uint32_t checksum;
    uint64_t created_unix_ms;
    uint8_t *resident;           /* dense array, or NULL: served by RocksDB */
    int superseded;              /* delete rows when the last ref drops */
} table_version;

typedef struct store_options {
    const char *dir;
    uint64_t resident_budget;    /* bytes of RAM for dense arrays */
    uint64_t block_cache_bytes;  /* RocksDB block cache */
} store_options;

typedef struct store_metrics {
    uint64_t rows_resident;      /* rows served from dense arrays */
    uint64_t rows_rocksdb;       /* rows served by MultiGet */
    uint64_t multiget_calls;
    uint64_t imports_done;
    uint64_t imports_failed;
    resident_metrics resident;
} store_metrics;

/* Opens (or creates) the store in opts->dir and brings every table back,
 * loading those that fit the budget into RAM. On failure returns NULL and
 * *err (malloc'd) says why. */
store *store_setup(const store_options *opts, store_metrics *metrics, char **err);
void store_teardown(store *s);

/* The current version of table `name` with a reference held, or NULL. */
table_version *store_acquire(store *s, const char *name);
void table_version_release(table_version *tv);

/* All current versions, sorted by name, each with a reference held. The
 * caller releases each and frees the array. */
size_t store_list(store *s, table_version ***out);

/* Gathers rows[0..n) of tv into out (n * row_bytes bytes). The rows must
 * already be checked against tv->rows. Returns 0, or -1 with msg filled
 * (a storage failure: the caller answers INTERNAL/DATA_LOSS). */
int store_read_rows(table_version *tv, const uint64_t *rows, size_t n,
                    uint8_t *out, char *msg, size_t msglen);

/* ---- documents ---------------------------------------------------------- */

/* Small named documents kept in the metadata family under a one-byte kind
 * ('M': manifests), written synced. get returns a malloc'd copy or NULL;
 * list returns malloc'd names (sorted) the caller frees. */
#define STORE_DOC_MANIFEST 'M'
int store_doc_put(store *s, char kind, const char *name, const void *val, size_t len,
                  char *msg, size_t msglen);
char *store_doc_get(store *s, char kind, const char *name, size_t *len);
size_t store_doc_list(store *s, char kind, char ***names);

/* ---- import support ---------------------------------------------------- */

/* Claims `name` for an import: fails (-1, msg) when one is running for it.
 * Gives the table id to write keys with and the version being written. */
int store_import_claim(store *s, const char *name, uint32_t *table_id,
                       uint64_t *version, char *msg, size_t msglen);
/* Ends a claim that did not activate (abort, error). */
void store_import_unclaim(store *s, const char *name);

/* Ingests the SST files (moved into the database) and activates `tv_new`
 * (filled by the caller: name, id, version, geometry, checksum) as the
 * table's current version; ends the claim. Returns 0, or -1 with msg, in
 * which case nothing changed for readers. */
int store_activate(store *s, const table_version *tv_new,
                   const char *const *sst_files, size_t nfiles,
                   char *msg, size_t msglen);

/* Options SstFileWriter must be created with (those of the rows family). */
const rocksdb_options_t *store_rows_options(store *s);
/* A directory inside the store for temporary import files. */
const char *store_tmp_dir(store *s);

/* Encodes the key of `row` of (table_id, version). */
void store_row_key(uint8_t key[ROW_KEY_LEN], uint32_t table_id,
                   uint64_t version, uint64_t row);

/* Valid table names: 1..128 of [A-Za-z0-9._-]. */
int table_name_valid(const char *name);

#endif
