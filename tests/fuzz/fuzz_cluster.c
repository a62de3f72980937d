/* fuzz_cluster.c: libFuzzer target for cluster_parse (common/cluster.c),
 * the shard map a server is started with and a client reads from any
 * server. An accepted map must survive cluster_to_json and parse again to
 * the same shards and addresses, since servers hand the map out that way. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cluster.h"

static void check_round_trip(const engram_cluster *c)
{
    char err[512];
    char *json = cluster_to_json(c);
    engram_cluster *d = json ? cluster_parse(json, strlen(json), err, sizeof err) : NULL;
    if (!d || d->shards != c->shards || strcmp(d->name, c->name))
        abort();
    for (uint32_t i = 0; i < c->shards; i++) {
        if (d->replicas[i] != c->replicas[i])
            abort();
        for (uint32_t r = 0; r < c->replicas[i]; r++)
            if (strcmp(d->addr[i][r], c->addr[i][r]))
                abort();
    }
    cluster_free(d);
    free(json);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512];
    engram_cluster *c = cluster_parse((const char *)data, size, err, sizeof err);
    if (!c)
        return 0;
    check_round_trip(c);
    cluster_free(c);
    return 0;
}
