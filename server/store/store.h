/* store.h: the table store. RocksDB is the source of truth; two RAM tiers
 * sit in front of it: the resident tier holds active tables that fit the
 * budget as dense arrays (resident.h), and every other table is read
 * through the hot-row cache (hotcache.h: S3-FIFO over row slots), whose
 * misses go to RocksDB in one MultiGet. store_read_rows picks the tier.
 *
 * Layout in RocksDB (one database, two column families):
 *   "default": 'm' name 0x00 version(u64 BE) -> u32 BE table id, u8 state,
 *                                               packed TableInfo
 *              'n'                          -> u32 BE next table id
 *              'M' name                     -> a manifest document
 *              'p'                          -> u32 BE shard index, u32 BE
 *                                              shard count (the placement)
 *   "rows":    id(u32 BE) version(u64 BE) local row(u64 BE) -> row bytes
 * Rows live in their own column family so their options differ from the
 * metadata's: no compression (embeddings do not compress and decompression
 * would sit on the lookup path), block checksums, a bloom filter for point
 * lookups. Big-endian keys sort each version's rows in row order, which is
 * what SstFileWriter needs and what a resident load scans.
 *
 * Sharding: a server of shard I of S holds rows r with r % S == I, densely,
 * as local rows r / S. `rows` of a table is always the global count. The
 * directory records its placement (I, S) at its first open, and an open
 * as any other shard, or with another shard count, is refused: its local
 * rows would be served as another shard's. An unclustered store is shard
 * 0 of 1, the same layout as a one-shard cluster's, so those two may take
 * each other's directories. A directory written before placements were
 * recorded takes the placement of its first open since (nothing in it
 * tells which it was).
 *
 * Versions: a table has one ACTIVE version (served when a lookup names
 * none), RETAINED previous ones (served by explicit version, so a cluster
 * client pinned to a version keeps reading it while shards switch) and
 * STAGED ones (imported, not yet activated). Each is an immutable,
 * reference-counted table_version; state changes swap in new objects, so a
 * lookup never sees a version change under it. A dropped version's rows are
 * deleted when the last reader lets go, by a background thread (the
 * reclaimer), never on the thread that let go.
 *
 * Errors, one convention: a call that can fail returns an engram status
 * (status.h: ES_OK, or the gRPC code the caller answers with) and writes a
 * message naming the problem into msg (msglen bytes). Lookups that find
 * nothing return NULL or 0 (store_acquire, store_doc_get, store_list). */
#ifndef ENGRAM_SERVER_STORE_H
#define ENGRAM_SERVER_STORE_H

#include <rocksdb/c.h>
#include <stddef.h>
#include <stdint.h>

#include "hotcache.h"
#include "resident.h"
#include "status.h"

#define TABLE_NAME_MAX 128
#define ROW_KEY_LEN 20
/* The most versions (active, retained and staged together) a table may
 * hold: an import that would make more is refused RESOURCE_EXHAUSTED at its
 * header. Retained versions are bounded by keep_versions, staged ones only
 * by this. */
#define STORE_MAX_VERSIONS 16

typedef struct store store;
typedef struct version_rows version_rows;

typedef enum { VS_ACTIVE = 1, VS_RETAINED = 2, VS_STAGED = 3 } version_state;

typedef struct table_version {
    int refs;                    /* atomic */
    store *s;
    version_rows *vr;            /* shared by every object of this version */
    char name[TABLE_NAME_MAX + 1];
    uint32_t table_id;
    uint64_t version;
    uint64_t rows;               /* global rows */
    uint64_t local_rows;         /* this shard's */
    uint32_t row_bytes;
    uint32_t dim;
    char dtype[16];
    uint32_t checksum;           /* CRC-32 of the local rows in order */
    uint64_t xxh3;               /* XXH3-64 of the same bytes; 0: unknown */
    uint64_t created_unix_ms;
    int state;                   /* version_state */
    uint8_t *resident;           /* dense local rows, or NULL: RocksDB */
} table_version;

typedef struct store_options {
    const char *dir;
    uint64_t resident_budget;    /* bytes of RAM for dense arrays */
    uint64_t block_cache_bytes;  /* RocksDB block cache */
    uint32_t shard_count;        /* 1 for a single server */
    uint32_t shard_index;
    uint32_t keep_versions;      /* non-staged versions kept per table (>= 2) */
    uint64_t hot_cache_bytes;    /* hot-row tier for RocksDB-served tables; 0: off */
    /* Free space kept on the data directory's filesystem (disk.c); below
     * 0: max(64 MiB, 1% of the filesystem). */
    int64_t disk_reserve_bytes;
} store_options;

/* The store's figures. The first are read, not bumped: store_setup
 * registers them with a refresh that reads RocksDB's statistics, the hot
 * cache's state, the disk and the placement when a reader collects. The
 * tiers' own counters follow (resident.h, hotcache.h). Rows served per
 * tier are counted by whoever is told the tier (store_tiers). */
#define STORE_METRIC(ACTION)                                                          \
    ACTION(shard_index, METRIC_GAUGE, "engram_shard_index", "shard_index",             \
           "This server's shard.")                                                    \
    ACTION(shard_count, METRIC_GAUGE, "engram_shard_count", "shard_count",             \
           "Shards of the cluster.")                                                  \
    ACTION(block_cache_usage, METRIC_GAUGE, "engram_rocksdb_block_cache_usage_bytes",  \
           "rocksdb.block_cache_usage", "Bytes in RocksDB's block cache.")            \
    ACTION(block_cache_capacity, METRIC_GAUGE,                                         \
           "engram_rocksdb_block_cache_capacity_bytes", "rocksdb.block_cache_capacity", \
           "RocksDB's block cache capacity.")                                         \
    ACTION(block_cache_hits, METRIC_COUNTER, "engram_rocksdb_block_cache_hits_total",  \
           "rocksdb.block_cache_hits", "RocksDB block cache hits.")                   \
    ACTION(block_cache_misses, METRIC_COUNTER, "engram_rocksdb_block_cache_misses_total", \
           "rocksdb.block_cache_misses", "RocksDB block cache misses.")               \
    ACTION(bytes_read, METRIC_COUNTER, "engram_rocksdb_read_bytes_total",              \
           "rocksdb.bytes_read", "Bytes RocksDB read (rocksdb.bytes.read).")          \
    ACTION(get_calls, METRIC_COUNTER, "engram_rocksdb_get_calls_total",                \
           "rocksdb.get_calls", "RocksDB point reads (rocksdb.number.keys.read).")    \
    ACTION(multiget_calls, METRIC_COUNTER, "engram_rocksdb_multiget_calls_total",      \
           "rocksdb.multiget_calls", "RocksDB MultiGet calls.")                        \
    ACTION(hot_budget, METRIC_GAUGE, "engram_hot_cache_budget_bytes",                  \
           "hot_cache.budget_bytes", "The hot-row cache's budget (--hot-cache-bytes); 0: off.") \
    ACTION(hot_row_bytes, METRIC_GAUGE, "engram_hot_cache_row_bytes", "hot_cache.row_bytes", \
           "The row size the hot-row cache was made for (0 until made).")             \
    ACTION(hot_capacity, METRIC_GAUGE, "engram_hot_cache_capacity_rows",               \
           "hot_cache.capacity_rows", "Rows the hot-row cache can hold.")              \
    ACTION(hot_rows, METRIC_GAUGE, "engram_hot_cache_rows", "hot_cache.rows_held",     \
           "Rows the hot-row cache holds now.")                                       \
    ACTION(disk_free, METRIC_GAUGE, "engram_disk_free_bytes", NULL,                    \
           "Bytes free to the server on its data directory's filesystem.")            \
    ACTION(disk_reserve, METRIC_GAUGE, "engram_disk_reserve_bytes", NULL,              \
           "Bytes the server keeps free there (--disk-reserve-bytes); writes stop under it.")
typedef struct store_metrics {
    STORE_METRIC(METRIC_DECLARE)
    resident_metrics resident;
    hotcache_metrics hot;
} store_metrics;

/* Which rows a data directory holds: those of shard `index` of `count`. */
typedef struct store_placement {
    uint32_t index, count;
} store_placement;

/* Opens (or creates) the store in opts->dir into *out and brings every
 * table back, loading active versions that fit the budget into RAM.
 * metrics (may be NULL) is initialized and registered until teardown.
 * ES_FAILED_PRECONDITION: the directory holds another placement than opts
 * asks for; *held (may be NULL) gets it and msg reads "data dir DIR holds
 * shard I of S; opened as shard J of T" (otherwise held->count is 0).
 * ES_INTERNAL: anything else (RocksDB's reason in msg). */
int store_setup(const store_options *opts, store_metrics *metrics, store **out,
                store_placement *held, char *msg, size_t msglen);
void store_teardown(store *s);

void store_shard(const store *s, uint32_t *count, uint32_t *index);

/* A version of table `name` with a reference held: the active one when
 * version is 0. NULL when there is no such table or version. */
table_version *store_acquire(store *s, const char *name, uint64_t version);
void table_version_release(table_version *tv);

/* One entry per table (its active version, or its newest when none is
 * active), sorted by name, each with a reference held. The caller releases
 * each and frees the array. */
size_t store_list(store *s, table_version ***out);
/* Every live version of `name`, oldest first, references held. */
size_t store_versions(store *s, const char *name, table_version ***out);

/* Gathers local rows local[0..n) of tv into out (n * row_bytes bytes). The
 * rows must already be checked against tv->local_rows. ES_DATA_LOSS: a
 * storage failure (a row missing, of the wrong length, or unreadable);
 * ES_RESOURCE_EXHAUSTED: out of memory. */
int store_read_rows(table_version *tv, const uint64_t *local, size_t n,
                    uint8_t *out, char *msg, size_t msglen);
/* Rows of one read by the tier that served them. */
typedef struct store_tiers {
    uint64_t resident;           /* the version's dense RAM array */
    uint64_t hot;                /* the hot-row cache */
    uint64_t rocksdb;            /* RocksDB (then put into the hot cache) */
} store_tiers;
/* The same, telling which tier served the rows (tiers may be NULL): the
 * store decides the tier, so callers never re-derive it. Misses of the hot
 * cache are read in one MultiGet with sorted keys and then enter it. */
int store_read_rows_tiered(table_version *tv, const uint64_t *local, size_t n, uint8_t *out,
                           store_tiers *tiers, char *msg, size_t msglen);

/* A cursor over the rows of a version as RocksDB stores them, in local
 * row order, bypassing the resident array and every cache (the block cache
 * is not filled either): what Admin.Verify checks is what is on disk. It
 * holds a reference to tv until closed. (store_scan.c) */
typedef struct store_scan store_scan;
store_scan *store_scan_open(table_version *tv);
/* Reads the next rows (at most max) into out (max * row_bytes bytes) and
 * sets *got to how many (0 once every local row was read). ES_DATA_LOSS
 * names the first row that is missing, of the wrong length, beyond the
 * version's rows, or unreadable (RocksDB's error); the rows before such a
 * row come first, in an ES_OK call. */
int store_scan_next(store_scan *sc, uint8_t *out, size_t max, size_t *got, char *msg,
                    size_t msglen);
void store_scan_close(store_scan *sc);

/* ---- documents ---------------------------------------------------------- */

/* Small named documents kept in the metadata family under a one-byte kind
 * ('M': manifests), written synced: put returns ES_OK or a status with msg
 * (ES_RESOURCE_EXHAUSTED: free space under the reserve). get returns a malloc'd copy or NULL;
 * list returns malloc'd names (sorted) the caller frees. */
#define STORE_DOC_MANIFEST 'M'
int store_doc_put(store *s, char kind, const char *name, const void *val, size_t len,
                  char *msg, size_t msglen);
char *store_doc_get(store *s, char kind, const char *name, size_t *len);
size_t store_doc_list(store *s, char kind, char ***names);

/* ---- imports and version changes ---------------------------------------- */

/* Claims `name` for an import of `version` (0: one past the newest live
 * version), to be staged when `stage` is set. Gives the table id to write
 * keys with and the version. Returns ES_OK or a status (ES_ABORTED: an
 * import of the table is running; ES_ALREADY_EXISTS: that version is live;
 * ES_FAILED_PRECONDITION: it is older than a live one;
 * ES_RESOURCE_EXHAUSTED: the table would hold more than STORE_MAX_VERSIONS
 * versions) with msg. */
int store_import_claim(store *s, const char *name, uint64_t version, int stage,
                       uint32_t *table_id, uint64_t *out_version, char *msg, size_t msglen);
/* Ends a claim that did not activate (abort, error). */
void store_import_unclaim(store *s, const char *name);

/* Ingests the SST files (moved into the database) and registers `tv_new`
 * (filled by the caller: name, id, version, geometry, checksum) as STAGED,
 * or as ACTIVE unless `stage`; ends the claim. Returns ES_OK, or a status
 * with msg (ES_RESOURCE_EXHAUSTED: the version does not fit, checked again
 * before anything is ingested, or free space is under the reserve, checked
 * before anything is written; ES_INTERNAL: a storage failure), in which
 * case nothing changed for readers. */
int store_commit_import(store *s, const table_version *tv_new, int stage,
                        const char *const *sst_files, size_t nfiles,
                        char *msg, size_t msglen);

/* Makes a live version the active one (the previous active one becomes
 * RETAINED; retained versions beyond keep_versions are dropped, oldest
 * first). Idempotent. Returns ES_OK or a status with msg. */
int store_activate(store *s, const char *name, uint64_t version, char *msg, size_t msglen);
/* Drops a version that is not active. Returns ES_OK or a status with msg. */
int store_drop(store *s, const char *name, uint64_t version, char *msg, size_t msglen);

/* ---- disk space (disk.c) ------------------------------------------------ */

/* Free bytes on the data directory's filesystem (statvfs f_bavail) and the
 * reserve kept free there. */
void store_disk_read(store *s, uint64_t *free_bytes, uint64_t *reserve);
/* ES_OK when free space is at least the reserve (half of it with `half`:
 * for a drop, which frees space), else ES_RESOURCE_EXHAUSTED with msg:
 * "<what>: data dir D has F bytes free, under its reserve of R bytes
 * (--disk-reserve-bytes); free space and retry". */
int store_disk_check(store *s, int half, const char *what, char *msg, size_t msglen);
/* The data directory, as given. */
const char *store_data_dir(store *s);

/* Options SstFileWriter must be created with (those of the rows family). */
const rocksdb_options_t *store_rows_options(store *s);
/* A directory inside the store for temporary import files. */
const char *store_tmp_dir(store *s);

/* Encodes the key of local row `row` of (table_id, version). */
void store_row_key(uint8_t key[ROW_KEY_LEN], uint32_t table_id,
                   uint64_t version, uint64_t row);

/* Valid table names: 1..128 of [A-Za-z0-9._-]. */
int table_name_valid(const char *name);

#endif
