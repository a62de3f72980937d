/* store_tuning.h: the RocksDB options of the rows column family, in one
 * place, so the server (store.c), the in-process RocksDB baseline of the
 * comparison benchmark and the tuning study all open rows the same way.
 *
 * Rows are written once (SST ingest) and then only read by point lookups,
 * so every knob here is about one MultiGet of scattered keys: how big a
 * block is read for one row, whether the index and filter of a file must be
 * fetched through the block cache, whether a bloom filter saves a block
 * read for a key that is not there. The study behind the defaults is in
 * tests/bench/results/rocksdb_tuning.md. */
#ifndef ENGRAM_STORE_TUNING_H
#define ENGRAM_STORE_TUNING_H

#include <stddef.h>
#include <stdint.h>

#include <rocksdb/c.h>

typedef struct store_tuning {
    size_t block_size;            /* data block bytes */
    int bloom_bits;               /* bits per key of a full bloom filter; 0 = none */
    int cache_index_and_filter;   /* index/filter blocks live in the block cache */
    int pin_l0_index_and_filter;  /* ... and stay pinned there for L0 files */
    int compression;              /* a rocksdb_*_compression value */
    int checksum;                 /* 4 = XXH3 */
    int verify_checksums;         /* on every read */
    int data_block_hash;          /* hash index inside data blocks */
    int partitioned;              /* two-level index, partitioned filters, top level pinned */
    size_t cache_min_shard;       /* fewest bytes per block cache shard; 0: RocksDB's choice */
} store_tuning;

/* The settings the server uses. */
store_tuning store_tuning_default(void);

/* Applies t to the rows column family's options and a fresh block-based
 * table options object, with `cache` as its block cache (borrowed: the
 * caller destroys it after the options). Returns the table options, which
 * the caller destroys after rows_opts. */
rocksdb_block_based_table_options_t *store_tuning_apply(const store_tuning *t,
                                                         rocksdb_options_t *rows_opts,
                                                         rocksdb_cache_t *cache);

/* The block cache of `bytes` for t (the caller destroys it). */
rocksdb_cache_t *store_tuning_cache(const store_tuning *t, size_t bytes);

/* Read options for row lookups under t (the caller destroys them). */
rocksdb_readoptions_t *store_tuning_readoptions(const store_tuning *t);

#endif
