/* lookup.c: Lookup.Lookup, synchronous and asynchronous: the public
 * engram_lookup_* functions.
 *
 * There is one lookup path, whatever the client is connected to: the
 * arguments are checked here, and the lookup runs through the client's
 * router (cluster.c decides which on the first lookup: a cluster's, or
 * the single-server router of one shard and one replica) as a routed
 * lookup (routed_lookup.c) whose replies are decoded straight into the
 * caller's buffer (rows.c). The reply bytes are copied exactly once; the
 * decoder refuses to write past out_cap, and every reply must hold exactly
 * its rows * row_bytes bytes, so a caller never gets a silently short or
 * overrun buffer. */
#include "client_internal.h"

#include <stdlib.h>
#include <string.h>

static int check_args(engram_client *client, const char *table,
                      const uint64_t *rows, size_t n, void *out,
                      size_t out_cap, engram_error *err)
{
    if (!client)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "client is NULL");
    if (!table || !*table)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "table name is empty");
    if (n > 0 && !rows)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT,
                        "rows is NULL but n is %zu", n);
    if (out_cap > 0 && !out)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT,
                        "out is NULL but out_cap is %zu", out_cap);
    return ENGRAM_OK;
}

int ec_lookup_start_dest(engram_client *client, const char *table, const uint64_t *rows,
                         size_t n, const ec_dest *dest, engram_lookup **handle,
                         engram_error *err)
{
    ec_cluster *cs;
    int rc = ec_router_get(client, &cs, err);
    if (rc)
        return rc;
    return ec_route_start(cs, table, rows, n, dest, handle, err);
}

int engram_lookup_start(engram_client *client, const char *table,
                        const uint64_t *rows, size_t n, void *out,
                        size_t out_cap, engram_lookup **handle,
                        engram_error *err)
{
    if (!handle)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "handle is NULL");
    *handle = NULL;
    int rc = check_args(client, table, rows, n, out, out_cap, err);
    if (rc)
        return rc;
    ec_dest dest = {.out = out, .out_cap = out_cap};
    return ec_lookup_start_dest(client, table, rows, n, &dest, handle, err);
}

int engram_lookup_wait(engram_lookup *handle, int64_t timeout_ms,
                       engram_error *err)
{
    if (!handle)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "handle is NULL");
    return ec_route_wait(handle, timeout_ms, err);
}

int engram_lookup_poll(engram_lookup *handle)
{
    return handle ? ec_route_poll(handle) : 1;
}

void engram_lookup_result(const engram_lookup *handle, uint32_t *row_bytes,
                          uint64_t *version)
{
    if (handle) {
        ec_route_result(handle, row_bytes, version);
        return;
    }
    if (row_bytes)
        *row_bytes = 0;
    if (version)
        *version = 0;
}

void engram_lookup_free(engram_lookup *handle)
{
    ec_route_free(handle);
}

int engram_lookup_sync(engram_client *client, const char *table,
                       const uint64_t *rows, size_t n, void *out,
                       size_t out_cap, uint32_t *row_bytes, uint64_t *version,
                       engram_error *err)
{
    engram_lookup *lk;
    int rc = engram_lookup_start(client, table, rows, n, out, out_cap, &lk,
                                 err);
    if (rc)
        return rc;
    rc = engram_lookup_wait(lk, -1, err);
    if (rc == ENGRAM_OK)
        engram_lookup_result(lk, row_bytes, version);
    engram_lookup_free(lk);
    return rc;
}
