/* shm_format.c: the --shm-dir file header, encoded and decoded field by
 * field at the offsets shm_format.h lists (never a struct written as is:
 * the file is little-endian and padded whatever the compiler does). */
#include "shm_format.h"

#include <string.h>

void shm_header_encode(uint8_t *h, const shm_header *x)
{
    memset(h, 0, SHM_HEADER_BYTES);
    memcpy(h, SHM_MAGIC, 8);
    shm_put_le32(h + 8, SHM_FORMAT_VERSION);
    shm_put_le32(h + 12, SHM_HEADER_BYTES);
    shm_put_le64(h + 16, x->data_offset);
    shm_put_le64(h + 24, x->data_bytes);
    shm_put_le64(h + 32, x->version);
    shm_put_le64(h + 40, x->rows);
    shm_put_le64(h + 48, x->local_rows);
    shm_put_le32(h + 56, x->row_bytes);
    shm_put_le32(h + 60, x->dim);
    shm_put_le32(h + 64, x->shard_index);
    shm_put_le32(h + 68, x->shard_count);
    shm_put_le64(h + 72, x->xxh3);
    shm_put_le32(h + 80, x->crc32);
    memcpy(h + 88, x->nonce, 16);
    shm_put_le64(h + 104, x->created_unix_ms);
    memcpy(h + 112, x->dtype, strnlen(x->dtype, SHM_DTYPE_BYTES - 1));
    memcpy(h + 128, x->table, strnlen(x->table, SHM_TABLE_BYTES - 1));
}

void shm_header_decode(const uint8_t *h, shm_header *x)
{
    memcpy(x->magic, h, 8);
    x->magic[8] = '\0';
    x->format_version = shm_le32(h + 8);
    x->header_bytes = shm_le32(h + 12);
    x->data_offset = shm_le64(h + 16);
    x->data_bytes = shm_le64(h + 24);
    x->version = shm_le64(h + 32);
    x->rows = shm_le64(h + 40);
    x->local_rows = shm_le64(h + 48);
    x->row_bytes = shm_le32(h + 56);
    x->dim = shm_le32(h + 60);
    x->shard_index = shm_le32(h + 64);
    x->shard_count = shm_le32(h + 68);
    x->xxh3 = shm_le64(h + 72);
    x->crc32 = shm_le32(h + 80);
    memcpy(x->nonce, h + 88, 16);
    x->created_unix_ms = shm_le64(h + 104);
    memcpy(x->dtype, h + 112, SHM_DTYPE_BYTES);
    x->dtype[SHM_DTYPE_BYTES] = '\0';
    memcpy(x->table, h + 128, SHM_TABLE_BYTES);
    x->table[SHM_TABLE_BYTES] = '\0';
    x->header_crc = shm_le32(h + SHM_HEADER_CRC_AT);
}
