/* store_tuning.c: the rows column family's RocksDB options (see
 * store_tuning.h for why they live apart from store.c). */
#include "store_tuning.h"

store_tuning store_tuning_default(void)
{
    return (store_tuning){
        .block_size = 4096,
        .bloom_bits = 10,
        .cache_index_and_filter = 1,
        .pin_l0_index_and_filter = 0,
        .compression = rocksdb_no_compression,
        .checksum = 4,
        .verify_checksums = 1,
        .data_block_hash = 0,
        .partitioned = 0,
        /* RocksDB's own choice gives a 128 MiB cache 64 shards of 2 MiB,
         * smaller than the index and filter blocks of a 256 MiB SST file
         * (about 1.5 and 2.6 MB): they were dropped on release and read
         * again for every MultiGet. 32 MiB shards keep them. */
        .cache_min_shard = 32 << 20,
    };
}

rocksdb_block_based_table_options_t *store_tuning_apply(const store_tuning *t,
                                                         rocksdb_options_t *rows_opts,
                                                         rocksdb_cache_t *cache)
{
    rocksdb_block_based_table_options_t *bbto = rocksdb_block_based_options_create();
    rocksdb_options_set_compression(rows_opts, t->compression);
    rocksdb_block_based_options_set_block_size(bbto, t->block_size);
    rocksdb_block_based_options_set_block_cache(bbto, cache);
    rocksdb_block_based_options_set_checksum(bbto, (char)t->checksum);
    if (t->bloom_bits > 0)
        rocksdb_block_based_options_set_filter_policy(
            bbto, rocksdb_filterpolicy_create_bloom_full(t->bloom_bits));
    rocksdb_block_based_options_set_cache_index_and_filter_blocks(bbto,
                                                                  t->cache_index_and_filter);
    rocksdb_block_based_options_set_pin_l0_filter_and_index_blocks_in_cache(
        bbto, t->pin_l0_index_and_filter);
    if (t->data_block_hash) {
        rocksdb_block_based_options_set_data_block_index_type(
            bbto, rocksdb_block_based_table_data_block_index_type_binary_search_and_hash);
        rocksdb_block_based_options_set_data_block_hash_ratio(bbto, 0.75);
    }
    if (t->partitioned) {
        rocksdb_block_based_options_set_index_type(
            bbto, rocksdb_block_based_table_index_type_two_level_index_search);
        rocksdb_block_based_options_set_partition_filters(bbto, 1);
        rocksdb_block_based_options_set_metadata_block_size(bbto, 4096);
        rocksdb_block_based_options_set_pin_top_level_index_and_filter(bbto, 1);
    }
    rocksdb_options_set_block_based_table_factory(rows_opts, bbto);
    return bbto;
}

rocksdb_cache_t *store_tuning_cache(const store_tuning *t, size_t bytes)
{
    if (!t->cache_min_shard)
        return rocksdb_cache_create_lru(bytes);
    /* A block bigger than its shard is dropped as soon as it is released,
     * so shards must hold the biggest index or filter block many times. */
    int bits = 0;
    while (bits < 6 && (bytes >> (bits + 1)) >= t->cache_min_shard)
        bits++;
    rocksdb_lru_cache_options_t *o = rocksdb_lru_cache_options_create();
    rocksdb_lru_cache_options_set_capacity(o, bytes);
    rocksdb_lru_cache_options_set_num_shard_bits(o, bits);
    rocksdb_cache_t *c = rocksdb_cache_create_lru_opts(o);
    rocksdb_lru_cache_options_destroy(o);
    return c;
}

rocksdb_readoptions_t *store_tuning_readoptions(const store_tuning *t)
{
    rocksdb_readoptions_t *r = rocksdb_readoptions_create();
    rocksdb_readoptions_set_verify_checksums(r, t->verify_checksums);
    return r;
}
