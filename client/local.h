/* local.h: the client's same-node path (issue 16): rows of a shard read
 * from the file its server publishes in --shm-dir on this host, instead
 * of over gRPC. routed_lookup.c offers every sub-request here first; see
 * local.c for discovery, trust and refresh. Internal to libengram. */
#ifndef ENGRAM_CLIENT_LOCAL_H
#define ENGRAM_CLIENT_LOCAL_H

#include <stddef.h>
#include <stdint.h>

#include "client_internal.h"

typedef struct ec_local ec_local;

/* cs's local state for mode ENGRAM_LOCAL_AUTO or _REQUIRE (NULL: out of
 * memory). Nothing is asked or mapped until the first lookup. */
ec_local *ec_local_new(ec_cluster *cs, int mode);
/* At close, before calls are cancelled: the lister starts no new listing
 * (one in flight ends with its cancelled call). NULL: no-op. */
void ec_local_stop(ec_local *l);
/* After every call completed: joins the lister, unmaps everything; no
 * lookup may run any more. Before cs's channels are destroyed. */
void ec_local_free(ec_local *l);

#define EC_LOCAL_SERVED 0   /* the rows are in d */
#define EC_LOCAL_REMOTE -1  /* send this sub-request over gRPC */

/* Offers one sub-request (the n rows `rows` of `shard`, going to request
 * positions pos, NULL: 0..n-1, of a lookup of lookup_n rows into d) to
 * the local path. *version: the version the lookup reads, 0 for "the
 * active one" (a single server); on EC_LOCAL_SERVED it is the version
 * served and *rb its row size. Any other return is an engram code with msg
 * filled: ENGRAM_FAILED_PRECONDITION under ENGRAM_LOCAL_REQUIRE when a
 * shard on this host cannot be served locally. Runs on the calling
 * thread, may block on one ListLocalTables per server; no lock held.
 * Thread-safe. */
int ec_local_serve(ec_cluster *cs, const char *table, uint64_t *version, uint32_t shard,
                   const uint64_t *rows, const uint32_t *pos, size_t n, size_t lookup_n,
                   const ec_dest *d, uint32_t *rb, char *msg, size_t cap);

#endif
