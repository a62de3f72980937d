/* versions.c: engramctl's cluster-map and drop-version commands.
 *
 *   cluster-map                          the map the server serves, as JSON
 *   drop-version --table T --version V   drop V of T on every replica
 *
 * cluster-map prints Admin.GetClusterMap's JSON as the server sent it (a
 * lone server reports a map of one shard), so a script can learn the whole
 * cluster from one address.
 *
 * drop-version goes to every replica of every shard of that map, one after
 * another, and carries on past a failure so that one unreachable replica
 * does not keep the version on all the others. A replica that does not
 * hold V is not an error (a re-run after a partial drop finds it gone
 * there), unless no replica holds it. The server refuses to drop its
 * active version (activate another one first). Exit 0 when every replica
 * that held V dropped it, 1 otherwise, 2 on a usage error. */
#include <stdio.h>
#include <stdlib.h>

#include "cluster.h"
#include "ctl.h"

int cmd_cluster_map(engram_client *cl, int argc, char **argv)
{
    if (argc)
        return die_usage("cluster-map: unexpected argument '%s'", argv[0]);
    char *json;
    uint32_t shards, shard;
    engram_error e;
    if (engram_cluster_map_get(cl, &json, &shards, &shard, &e))
        return report(&e);
    printf("%s\n", json);
    engram_free(json);
    return 0;
}

/* Drops the version on one replica: 0 dropped, 1 not there, -1 failed
 * (reported). */
static int drop_on(const char *addr, uint32_t shard, const char *table, uint64_t version)
{
    engram_client *c;
    engram_error e;
    int rc = engram_client_open(addr, ctl_client_options(), &c, &e);
    if (!rc) {
        rc = engram_table_drop_version(c, table, version, &e);
        engram_client_close(c);
    }
    if (rc == ENGRAM_NOT_FOUND) {
        printf("%s (shard %u): %s\n", addr, shard, e.message);
        return 1;
    }
    if (rc) {
        ctl_fail(rc, "%s (shard %u): %s", addr, shard, e.message);
        return -1;
    }
    printf("%s (shard %u): dropped version %llu of table \"%s\"\n", addr, shard,
           (unsigned long long)version, table);
    return 0;
}

int cmd_drop_version(engram_client *cl, int argc, char **argv)
{
    opts o = {.names = {"--table", "--version"}, .n = 2};
    if (parse_opts(&o, argc, argv, "drop-version"))
        return EXIT_USAGE;
    if (o.npos)
        return die_usage("drop-version: unexpected argument '%s'", o.pos[0]);
    const char *table = ctl_need(&o, "--table", "drop-version");
    const char *v = table ? ctl_need(&o, "--version", "drop-version") : NULL;
    uint64_t version;
    if (!v || parse_u64(v, "--version", &version))
        return EXIT_USAGE;
    if (version == 0)
        return die_usage("drop-version: --version must be 1 or more");
    int rc;
    engram_cluster *map = cluster_of(cl, &rc);
    if (!map)
        return rc;
    size_t dropped = 0, absent = 0, failed = 0, n = 0;
    for (uint32_t s = 0; s < map->shards; s++)
        for (uint32_t r = 0; r < map->replicas[s]; r++, n++) {
            int k = drop_on(map->addr[s][r], s, table, version);
            dropped += k == 0;
            absent += k == 1;
            failed += k < 0;
        }
    cluster_free(map);
    if (absent == n)
        return ctl_fail(ENGRAM_NOT_FOUND, "no replica of the %zu holds version %llu of table \"%s\"", n,
                    (unsigned long long)version, table);
    if (failed) {
        fprintf(stderr, "engramctl: version %llu of table \"%s\" dropped on %zu of %zu replicas, "
                        "failed on %zu (above); re-running the command finishes it\n",
                (unsigned long long)version, table, dropped, n, failed);
        return EXIT_RPC;
    }
    return 0;
}
