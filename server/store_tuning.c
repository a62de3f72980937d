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
    rocksdb_options_set_block_based_table_factory(rows_opts, bbto);
    return bbto;
}

rocksdb_readoptions_t *store_tuning_readoptions(const store_tuning *t)
{
    rocksdb_readoptions_t *r = rocksdb_readoptions_create();
    rocksdb_readoptions_set_verify_checksums(r, t->verify_checksums);
    return r;
}
