/* cluster.h: the cluster map, which servers hold which rows.
 *
 *   { "name": "engram-demo", "placement": "mod",
 *     "shards": [ { "replicas": ["10.0.0.1:7070", "10.0.0.2:7070"] },
 *                 { "replicas": ["10.0.0.3:7070", "10.0.0.4:7070"] } ] }
 *
 * Row r of every table lives on shard r mod S (hashed row ids are uniform,
 * so this balances load without a directory). A shard's rows are stored
 * densely in local order: local row i is global row i * S + shard. Every
 * replica of a shard holds the same rows. Parsed with jansson. */
#ifndef ENGRAM_COMMON_CLUSTER_H
#define ENGRAM_COMMON_CLUSTER_H

#include <stddef.h>
#include <stdint.h>

#define CLUSTER_MAX_SHARDS 256
#define CLUSTER_MAX_REPLICAS 8
#define CLUSTER_ADDR_MAX 255

typedef struct engram_cluster {
    char name[129];
    uint32_t shards;
    uint32_t replicas[CLUSTER_MAX_SHARDS];
    char addr[CLUSTER_MAX_SHARDS][CLUSTER_MAX_REPLICAS][CLUSTER_ADDR_MAX + 1];
} engram_cluster;

/* Parses and validates a map; NULL with a message naming the bad key or
 * value in err. Free with cluster_free. */
engram_cluster *cluster_parse(const char *json, size_t len, char *err, size_t errlen);
engram_cluster *cluster_load(const char *path, char *err, size_t errlen);
void cluster_free(engram_cluster *c);

/* The one-shard map of a single server at `addr`. */
engram_cluster *cluster_single(const char *addr);

/* The map as JSON (malloc'd). */
char *cluster_to_json(const engram_cluster *c);

/* Rows of a table of `rows` global rows that shard `shard` of `shards` holds. */
static inline uint64_t cluster_local_rows(uint64_t rows, uint32_t shards, uint32_t shard)
{
    return rows > shard ? (rows - shard - 1) / shards + 1 : 0;
}

#endif
