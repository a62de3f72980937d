/* cluster_import.c: importing a table into a whole cluster from any one of
 * its addresses.
 *
 * The map is read from the server engramctl was pointed at. Every replica
 * of every shard gets its shard's rows (local row i = global row i*S + I)
 * as version V, staged, all streams in parallel (one thread and one client
 * per replica). Only when every stream succeeded is V activated on every
 * replica; until then, and if anything fails, the previous version keeps
 * serving everywhere. V is one past the highest active version in the
 * cluster, so re-running a failed import targets the same V: a replica that
 * already holds V with the checksums of exactly the rows it should hold is
 * skipped, one that holds a different V gets it dropped and rewritten, and
 * the activation completes. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>
#include <zlib.h>

#include "cluster.h"
#include "ctl.h"
#include "grpc_util.h"

typedef struct job {
    const cluster_import *ci;
    const char *addr;
    uint32_t shard;
    engram_table_info before;    /* the replica's table, if any */
    int has_table;
    int skip;                    /* V already there with the right rows */
    int rc;
    char msg[600];
} job;

/* Rows per write: about 4 MiB. */
static size_t per_batch(const cluster_import *ci)
{
    size_t n = (4u << 20) / ci->row_bytes;
    return n ? n : 1;
}

/* Fills buf with local rows [first, first + n) of `shard`. */
static int read_local(const cluster_import *ci, uint32_t shard, uint64_t first, uint64_t n,
                      uint8_t *buf, char *err, size_t errlen)
{
    uint64_t *g = malloc(n * sizeof *g);
    for (uint64_t i = 0; i < n; i++)
        g[i] = (first + i) * ci->shards + shard;
    int rc = ci->source(ci->ctx, g, n, buf, err, errlen);
    free(g);
    return rc;
}

/* CRC-32 and XXH3-64 of the rows `shard` should hold: what the server
 * records as the checksums of a complete import of them. */
static int expected_sums(const cluster_import *ci, uint32_t shard, uint32_t *crc, uint64_t *xxh,
                         char *err, size_t errlen)
{
    uint64_t local = cluster_local_rows(ci->rows, ci->shards, shard);
    size_t per = per_batch(ci);
    uint8_t *buf = malloc(per * ci->row_bytes);
    XXH3_state_t *st = XXH3_createState();
    XXH3_64bits_reset(st);
    uLong c = crc32(0, NULL, 0);
    int rc = 0;
    for (uint64_t r = 0; r < local && !rc; r += per) {
        uint64_t n = local - r < per ? local - r : per;
        rc = read_local(ci, shard, r, n, buf, err, errlen);
        if (!rc) {
            c = crc32_z(c, buf, n * ci->row_bytes);
            XXH3_64bits_update(st, buf, n * ci->row_bytes);
        }
    }
    free(buf);
    *crc = (uint32_t)c;
    *xxh = XXH3_64bits_digest(st);
    XXH3_freeState(st);
    return rc;
}

static int stream_shard(job *j, engram_client *cl)
{
    const cluster_import *ci = j->ci;
    engram_import_target t = {ci->version, 1, ci->shards, j->shard};
    engram_import *imp;
    engram_error e;
    if (engram_import_begin_target(cl, ci->table, ci->rows, ci->dim, ci->dtype, &t, &imp, &e))
        return snprintf(j->msg, sizeof j->msg, "%s", e.message), e.code;
    uint64_t local = cluster_local_rows(ci->rows, ci->shards, j->shard);
    size_t per = per_batch(ci);
    uint8_t *buf = malloc(per * ci->row_bytes);
    int rc = 0;
    for (uint64_t r = 0; r < local && !rc; r += per) {
        uint64_t n = local - r < per ? local - r : per;
        if (read_local(ci, j->shard, r, n, buf, j->msg, sizeof j->msg))
            rc = ENGRAM_INVALID_ARGUMENT;
        else if (engram_import_write(imp, r, buf, n * ci->row_bytes, &e))
            rc = e.code, snprintf(j->msg, sizeof j->msg, "%s", e.message);
    }
    free(buf);
    if (rc) {
        engram_import_abort(imp);
        return rc;
    }
    if (engram_import_finish(imp, NULL, &e))
        return snprintf(j->msg, sizeof j->msg, "%s", e.message), e.code;
    return 0;
}

/* What the replica holds of version V: 0 nothing, 1 the right rows, -1 other rows. */
static int holds_version(job *j)
{
    const engram_table_info *t = &j->before;
    for (uint32_t i = 0; j->has_table && i < t->n_versions; i++) {
        if (t->versions[i].version != j->ci->version)
            continue;
        uint32_t crc;
        uint64_t xxh;
        if (expected_sums(j->ci, j->shard, &crc, &xxh, j->msg, sizeof j->msg))
            return -1;
        /* xxh3 0: a version recorded before xxh3; its CRC-32 decides. */
        return t->versions[i].checksum == crc &&
                       (!t->versions[i].xxh3 || t->versions[i].xxh3 == xxh) &&
                       t->versions[i].local_rows ==
                           cluster_local_rows(j->ci->rows, j->ci->shards, j->shard)
                   ? 1
                   : -1;
    }
    return 0;
}

static void *run_job(void *arg)
{
    job *j = arg;
    engram_client_options o = *ctl_client_options();
    o.deadline_ms = 0;
    engram_client *cl;
    engram_error e;
    if (engram_client_open(j->addr, &o, &cl, &e)) {
        j->rc = e.code;
        snprintf(j->msg, sizeof j->msg, "%s", e.message);
        return NULL;
    }
    int held = holds_version(j);
    if (held == 1) {
        j->skip = 1;
    } else {
        if (held == -1 && engram_table_drop_version(cl, j->ci->table, j->ci->version, &e) &&
            e.code != ENGRAM_NOT_FOUND) {
            j->rc = e.code;
            snprintf(j->msg, sizeof j->msg, "dropping a different version %llu: %s",
                     (unsigned long long)j->ci->version, e.message);
        } else {
            j->rc = stream_shard(j, cl);
        }
    }
    engram_client_close(cl);
    return NULL;
}

static uint64_t active_version(const engram_table_info *t);

/* Reads every replica's table info; picks V. */
static int survey(cluster_import *ci, job *jobs, size_t n)
{
    uint64_t newest_active = 0;
    for (size_t i = 0; i < n; i++) {
        engram_client *cl;
        engram_error e;
        if (engram_client_open(jobs[i].addr, ctl_client_options(), &cl, &e))
            return fail(e.code, "%s: %s", jobs[i].addr, e.message);
        int rc = engram_table_get(cl, ci->table, &jobs[i].before, &e);
        engram_client_close(cl);
        if (rc && rc != ENGRAM_NOT_FOUND)
            return fail(rc, "replica %s of shard %u: %s", jobs[i].addr, jobs[i].shard, e.message);
        jobs[i].has_table = rc == 0;
        if (!rc && active_version(&jobs[i].before) > newest_active)
            newest_active = active_version(&jobs[i].before);
    }
    ci->version = newest_active + 1;
    return 0;
}

static uint64_t active_version(const engram_table_info *t)
{
    for (uint32_t i = 0; i < t->n_versions; i++)
        if (t->versions[i].state == ENGRAM_VERSION_ACTIVE)
            return t->versions[i].version;
    return 0;
}

static int activate_all(const cluster_import *ci, job *jobs, size_t n)
{
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        engram_client *cl;
        engram_error e;
        int r = engram_client_open(jobs[i].addr, ctl_client_options(), &cl, &e);
        if (!r) {
            r = engram_table_activate(cl, ci->table, ci->version, NULL, &e);
            engram_client_close(cl);
        }
        if (r)
            rc = fail(r, "activating version %llu on replica %s of shard %u: %s",
                      (unsigned long long)ci->version, jobs[i].addr, jobs[i].shard, e.message);
    }
    return rc;
}

static size_t make_jobs(const cluster_import *ci, const engram_cluster *map, job *jobs)
{
    size_t n = 0;
    for (uint32_t s = 0; s < map->shards; s++)
        for (uint32_t r = 0; r < map->replicas[s]; r++) {
            memset(&jobs[n], 0, sizeof jobs[n]);
            jobs[n].ci = ci;
            jobs[n].addr = map->addr[s][r];
            jobs[n++].shard = s;
        }
    return n;
}

static int run_all(const cluster_import *ci, job *jobs, size_t n)
{
    pthread_t *th = calloc(n, sizeof *th);
    for (size_t i = 0; i < n; i++)
        pthread_create(&th[i], NULL, run_job, &jobs[i]);
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        pthread_join(th[i], NULL);
        if (jobs[i].rc)
            rc = fail(jobs[i].rc, "replica %s of shard %u: %s", jobs[i].addr, jobs[i].shard,
                      jobs[i].msg);
    }
    free(th);
    if (rc)
        fprintf(stderr, "engramctl: nothing was activated; version %llu stays staged where it was "
                        "written, and re-running the import completes it\n",
                (unsigned long long)ci->version);
    return rc;
}

int cluster_import_run(cluster_import *ci, const engram_cluster *map)
{
    size_t total = 0;
    for (uint32_t s = 0; s < map->shards; s++)
        total += map->replicas[s];
    job *jobs = calloc(total, sizeof *jobs);
    ci->shards = map->shards;
    size_t n = make_jobs(ci, map, jobs);
    uint64_t t0 = now_ns();
    int rc = survey(ci, jobs, n);
    if (!rc)
        rc = run_all(ci, jobs, n);
    if (!rc)
        rc = activate_all(ci, jobs, n);
    if (!rc) {
        size_t skipped = 0;
        for (size_t i = 0; i < n; i++)
            skipped += (size_t)jobs[i].skip;
        double s = (double)(now_ns() - t0) / 1e9;
        printf("imported %s into cluster %s: %llu rows of %u bytes, version %llu, %u shards x %zu "
               "streams (%zu already held it), %.0f rows/s, %.3f s\n",
               ci->table, map->name, (unsigned long long)ci->rows, ci->row_bytes,
               (unsigned long long)ci->version, map->shards, n, skipped,
               s > 0 ? (double)ci->rows / s : 0, s);
    }
    free(jobs);
    return rc;
}

int cluster_is_single(const engram_cluster *map)
{
    return map->shards == 1 && map->replicas[0] == 1;
}

engram_cluster *cluster_of(engram_client *cl, int *rc)
{
    char *json, why[512];
    uint32_t shards, shard;
    engram_error e;
    *rc = 0;
    if (engram_cluster_map_get(cl, &json, &shards, &shard, &e)) {
        *rc = report(&e);
        return NULL;
    }
    engram_cluster *map = cluster_parse(json, strlen(json), why, sizeof why);
    engram_free(json);
    if (!map)
        *rc = fail(ENGRAM_FAILED_PRECONDITION, "the server's %s", why);
    return map;
}
