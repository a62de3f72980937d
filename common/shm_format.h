/* shm_format.h: the format of the files an engram-server publishes in
 * --shm-dir (issue 16), version 1, defined once for the server that
 * writes them (server/store/shm.c; shm.h has their life and trust rules)
 * and the readers that check them (client/local.c, engramctl verify
 * --local). Pure C, no I/O; the header's own CRC-32 is left to whoever
 * writes or checks it, since zlib is not a dependency of common/.
 *
 * File format, version 1 (all integers little-endian):
 *   offset size  field
 *        0    8  magic "ENGRSHM1"
 *        8    4  format version (1)
 *       12    4  header bytes (4096)
 *       16    8  data offset (4096): row r is at data offset + r * row bytes,
 *                exactly the server's resident array
 *       24    8  data bytes (local rows * row bytes)
 *       32    8  table version
 *       40    8  rows (the table's global row count)
 *       48    8  local rows (this shard's: global rows r with
 *                r % shard count == shard index, as local row r / count)
 *       56    4  row bytes
 *       60    4  dim
 *       64    4  shard index
 *       68    4  shard count
 *       72    8  XXH3-64 (seed 0) of the data bytes, as recorded at import;
 *                0: unknown (a version written before xxh3 was recorded)
 *       80    4  CRC-32 (zlib) of the data bytes, as recorded at import
 *       84    4  reserved (0)
 *       88   16  nonce: 128 random bits naming this file (and no other)
 *      104    8  the version's creation time, Unix milliseconds
 *      112   16  dtype, NUL-padded ("bf16", "mxfp8_e4m3", ...)
 *      128  136  table name, NUL-padded
 *      264 3828  zero
 *     4092    4  CRC-32 (zlib) of header bytes [0, 4092)
 *     4096       the rows; the file is exactly data offset + data bytes long
 * A client trusts a file by: open, fstat (st_dev, st_ino equal to what
 * Admin.ListLocalTables said, size equal to file_bytes), map it, and
 * compare the header's nonce and layout with the reply's. The nonce is
 * random per file, so a file replaced under the same name (a restart, a
 * version re-activated) never passes for the one the reply named.
 */
#ifndef ENGRAM_COMMON_SHM_FORMAT_H
#define ENGRAM_COMMON_SHM_FORMAT_H

#include <stdint.h>

#define SHM_MAGIC "ENGRSHM1"
#define SHM_FORMAT_VERSION 1
#define SHM_HEADER_BYTES 4096
#define SHM_HEADER_CRC_AT 4092       /* CRC-32 (zlib) of header bytes [0, 4092) */
#define SHM_DTYPE_BYTES 16
#define SHM_TABLE_BYTES 136

/* A header's fields, decoded. Strings are NUL-terminated here; in the file
 * they are NUL-padded to their field's size. */
typedef struct shm_header {
    char magic[9];
    uint32_t format_version, header_bytes;
    uint64_t data_offset, data_bytes;
    uint64_t version, rows, local_rows;
    uint32_t row_bytes, dim, shard_index, shard_count;
    uint64_t xxh3;
    uint32_t crc32;
    uint8_t nonce[16];
    uint64_t created_unix_ms;
    char dtype[SHM_DTYPE_BYTES + 1];
    char table[SHM_TABLE_BYTES + 1];
    uint32_t header_crc;         /* as stored at SHM_HEADER_CRC_AT */
} shm_header;

static inline uint32_t shm_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t shm_le64(const uint8_t *p)
{
    return (uint64_t)shm_le32(p) | (uint64_t)shm_le32(p + 4) << 32;
}

static inline void shm_put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static inline void shm_put_le64(uint8_t *p, uint64_t v)
{
    shm_put_le32(p, (uint32_t)v);
    shm_put_le32(p + 4, (uint32_t)(v >> 32));
}

/* Writes x into h (SHM_HEADER_BYTES bytes, zeroed first), with the magic,
 * SHM_FORMAT_VERSION and SHM_HEADER_BYTES whatever x says of them; dtype
 * and table are cut to their fields. The CRC-32 at SHM_HEADER_CRC_AT is the
 * writer's to put, last. */
void shm_header_encode(uint8_t *h, const shm_header *x);

/* Reads every field of h (SHM_HEADER_BYTES bytes) into x; checks nothing:
 * comparing them is the reader's. */
void shm_header_decode(const uint8_t *h, shm_header *x);

#endif
