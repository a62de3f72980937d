/* store_internal.h: what store.c (RocksDB: options, keys, metadata,
 * ingest, resident loads), store_read.c (row reads and the hot-row tier),
 * tables.c (the registry of tables and the version life cycle) and
 * store_scan.c (reading a version's rows in order for Admin.Verify) share.
 * Nothing outside those files includes it. */
#ifndef ENGRAM_SERVER_STORE_INTERNAL_H
#define ENGRAM_SERVER_STORE_INTERNAL_H

#include <pthread.h>

#include "store.h"

#define CF_META 0
#define CF_ROWS 1

/* The rows of one (table id, version) in RocksDB, shared by every
 * table_version object of that version; deleted when the last one lets go
 * after the version was dropped. */
struct version_rows {
    int refs;                    /* atomic */
    int drop;                    /* set under the store's change lock */
    store *s;
    uint32_t table_id;
    uint64_t version;
    uint64_t cache_id;           /* unique per process: the hot cache's key space */
};

/* A table's live versions, sorted by version. v[] grows as needed: a new
 * version is refused beyond STORE_MAX_VERSIONS (store_import_claim and
 * store_commit_import check), but a directory written by a server without
 * that check may hold more, and every version it holds is loaded (one left
 * out would have its rows deleted as orphans while its metadata stays). */
typedef struct table_entry {
    char name[TABLE_NAME_MAX + 1];
    uint32_t table_id;
    table_version **v;
    int nv, cap;
} table_entry;

struct store {
    rocksdb_t *db;
    rocksdb_column_family_handle_t *cf[2];
    rocksdb_options_t *db_opts, *meta_opts, *rows_opts;
    rocksdb_block_based_table_options_t *rows_bbto;
    rocksdb_cache_t *block_cache;
    rocksdb_readoptions_t *ropts;
    rocksdb_writeoptions_t *wopts_sync;
    store_metrics *m;
    store_metrics m_none;        /* m without the caller's storage */
    uint32_t shard_count, shard_index, keep_versions;

    pthread_rwlock_t lock;       /* guards tables/ntables and entries' v[] */
    table_entry **tables;
    size_t ntables, cap;

    /* Serializes every change of versions (commit, activate, drop) so each
     * is one consistent step on disk and in the registry. */
    pthread_mutex_t change_lock;
    pthread_mutex_t claim_lock;  /* guards claims and next_id */
    char **claims;
    size_t nclaims;
    uint32_t next_id;
    int load_failed;             /* start-up: a version could not be registered */

    char *dir;
    char *tmp_dir;
    int64_t disk_reserve;        /* store_options.disk_reserve_bytes */

    /* The reclaimer (store.c): deletes dropped versions' rows on its own
     * thread, so the thread that lets go of a version last (a Lookup,
     * often) never pays for a range delete and a file deletion. */
    pthread_t reclaimer;
    int reclaimer_started;
    pthread_mutex_t reclaim_lock;    /* guards the queue, reclaim_pending, reclaim_stop */
    pthread_cond_t reclaim_cond;     /* work queued, work done, stop */
    pthread_mutex_t reclaim_busy;    /* held while one version's rows are deleted */
    struct reclaim_item *reclaim_head, *reclaim_tail;
    uint64_t reclaim_pending;        /* queued or being deleted */
    int reclaim_stop;

    /* The hot-row tier (store_read.c), created at the first RocksDB read
     * with that read's row size; tables of another row size bypass it. */
    pthread_mutex_t hot_lock;
    hotcache *hot;
    uint64_t hot_budget;
    uint64_t next_cache_id;      /* atomic */
};

/* store.c */
/* Opens RocksDB and checks (or, the first time, records) the directory's
 * placement; a different one fills *held and fails. */
int store_open_db(store *s, const store_options *o, store_placement *held, char **err);
void store_close_db(store *s);
/* Iterates every version's metadata; cb gets a new object (refs 1, no vr,
 * no resident) it owns. Returns 0 or -1 with *err. */
int store_scan_meta(store *s, void (*cb)(store *, table_version *), char **err);
/* Writes (or with del set, deletes) the metadata of versions in one synced
 * batch. */
int store_write_meta(store *s, table_version *const *put, size_t nput,
                     const table_version *del, char *msg, size_t msglen);
void store_delete_rows(store *s, uint32_t table_id, uint64_t version);
/* Queues the deletion of a dropped version's rows for the reclaimer and
 * returns at once. If the queue cannot take it (out of memory) the rows
 * stay until the next start deletes them as orphans. */
void store_delete_rows_later(store *s, uint32_t table_id, uint64_t version);
/* Waits until every queued deletion is done (tests; teardown drains the
 * queue by itself). */
void store_reclaim_wait(store *s);
int store_ingest(store *s, const char *const *files, size_t n, char *msg, size_t msglen);
/* Loads tv's local rows into a dense array if the budget allows. */
void store_resident_load(store *s, table_version *tv);
/* Deletes rows of no live (id, version), given sorted pairs. */
void store_collect_orphans(store *s, uint64_t (*live)[2], size_t n);
int store_persist_next_id(store *s, uint32_t next, char *msg, size_t msglen);
int store_read_next_id(store *s, uint32_t *next, char **err);
uint64_t store_unix_ms(void);
/* The metrics' refresh (store_setup registers it with the store as arg),
 * and its hot-tier part (store_read.c). */
void store_metrics_refresh(void *arg);
void store_hot_refresh(store *s);

/* tables.c: store_drop with change_lock already held. */
int store_drop_locked(store *s, const char *name, uint64_t version, char *msg, size_t msglen);

#endif
