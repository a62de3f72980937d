/* cluster_import.c: importing a table into a whole cluster from any one of
 * its addresses.
 *
 * The map is read from the server engramctl was pointed at. Every replica
 * of every shard gets its shard's rows (local row i = global row i*S + I)
 * as version V, staged, all streams in parallel (one thread and one client
 * per replica). A stream that fails fails the import before anything is
 * activated: the previous version keeps serving everywhere, V stays staged
 * on the replicas that finished.
 *
 * Then V is activated on every replica, one after another. Activation is
 * idempotent, and a failure on one replica does not stop the others: the
 * import exits non-zero naming each replica that failed, and for a while
 * some replicas serve V as their active version while others still serve
 * V-1. That window is safe: every lookup carries the version its client
 * pinned, and every replica serves both by number (V staged or active, V-1
 * active or retained, with the servers' default --keep-versions 2), so no
 * batch mixes the two. The streams all succeeded before any activation, so
 * every replica holds V.
 *
 * Re-running the same import converges on V. V is one past the highest
 * active version A in the cluster, except when A is not yet active on every
 * replica and every replica where it is active holds exactly the rows this
 * import would write (same CRC-32, XXH3-64, row count): that is the earlier
 * run's half-done activation, and V = A. Either way a replica that already
 * holds V with the right rows is skipped, one that holds a different V gets
 * it dropped and rewritten, and the activation completes. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
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
    int sums_ok;                 /* crc and xxh computed */
    uint32_t crc;                /* of the rows this replica should hold */
    uint64_t xxh;
    int held;                    /* holds() of V: 1 skip, -1 drop and rewrite */
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
    engram_import_target t;
    engram_import_target_init(&t);
    t.version = ci->version;
    t.stage = 1;
    t.shard_count = ci->shards;
    t.shard_index = j->shard;
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

/* Index of `version` in the replica's table info, or -1. */
static int version_index(const job *j, uint64_t version)
{
    for (uint32_t i = 0; j->has_table && i < j->before.n_versions; i++)
        if (j->before.versions[i].version == version)
            return (int)i;
    return -1;
}

/* Checksums of the rows the job's shard should hold, computed once and
 * shared with the other jobs of the same shard (they run later, in
 * parallel, so this runs before the threads start). */
static int job_sums(job *jobs, size_t n, size_t k)
{
    job *j = &jobs[k];
    for (size_t i = 0; i < n && !j->sums_ok; i++)
        if (jobs[i].sums_ok && jobs[i].shard == j->shard)
            j->crc = jobs[i].crc, j->xxh = jobs[i].xxh, j->sums_ok = 1;
    if (!j->sums_ok && !expected_sums(j->ci, j->shard, &j->crc, &j->xxh, j->msg, sizeof j->msg))
        j->sums_ok = 1;
    return j->sums_ok ? 0 : -1;
}

/* What the replica holds of `version`: 0 nothing, 1 the right rows, -1
 * other rows (or the rows could not be read to tell). */
static int holds(job *jobs, size_t n, size_t k, uint64_t version)
{
    job *j = &jobs[k];
    int i = version_index(j, version);
    if (i < 0)
        return 0;
    if (job_sums(jobs, n, k))
        return -1;
    uint32_t crc = j->before.versions[i].checksum;
    uint64_t xxh = j->before.versions[i].xxh3, local = j->before.versions[i].local_rows;
    /* xxh3 0: a version recorded before xxh3; its CRC-32 decides. */
    return crc == j->crc && (!xxh || xxh == j->xxh) &&
                   local == cluster_local_rows(j->ci->rows, j->ci->shards, j->shard)
               ? 1
               : -1;
}

/* A stream whose connection was never made reached no server, so it is
 * tried again on a new channel (a failed channel waits out its reconnect
 * back-off before it tries again). gRPC core 1.51 has been seen to fail a
 * first connect to a loopback replica that was accepting ("failed to
 * connect to all addresses ... No such file or directory") on a loaded
 * machine; the replica's log showed no call. */
static int never_connected(int rc, const char *msg)
{
    return rc == ENGRAM_UNAVAILABLE && strstr(msg, "failed to connect") != NULL;
}

static int run_job_once(job *j)
{
    engram_client_options o = *ctl_client_options();
    o.deadline_ms = 0;
    engram_client *cl;
    engram_error e;
    if (engram_client_open(j->addr, &o, &cl, &e)) {
        snprintf(j->msg, sizeof j->msg, "%s", e.message);
        return e.code;
    }
    int rc = 0;
    if (j->held == -1 && engram_table_drop_version(cl, j->ci->table, j->ci->version, &e) &&
        e.code != ENGRAM_NOT_FOUND) {
        rc = e.code;
        snprintf(j->msg, sizeof j->msg, "dropping a different version %llu: %s",
                 (unsigned long long)j->ci->version, e.message);
    } else {
        rc = stream_shard(j, cl);
    }
    engram_client_close(cl);
    return rc;
}

static void *run_job(void *arg)
{
    job *j = arg;
    static const unsigned wait_ms[] = {250, 1000};
    if (j->held == 1)
        return NULL;
    j->rc = run_job_once(j);
    for (size_t a = 0; a < 2 && never_connected(j->rc, j->msg); a++) {
        fprintf(stderr, "engramctl: replica %s of shard %u: %s; trying again in %u ms\n", j->addr,
                j->shard, j->msg, wait_ms[a]);
        struct timespec ts = {0, (long)wait_ms[a] % 1000 * 1000000L};
        ts.tv_sec = wait_ms[a] / 1000;
        nanosleep(&ts, NULL);
        j->rc = run_job_once(j);
    }
    return NULL;
}

static uint64_t active_version(const engram_table_info *t)
{
    for (uint32_t i = 0; i < t->n_versions; i++)
        if (t->versions[i].state == ENGRAM_VERSION_ACTIVE)
            return t->versions[i].version;
    return 0;
}

/* 1 when the newest active version `a` is this very import, activated on
 * some replicas only (an earlier run's activation failed partway): some
 * replica does not have it active, and each one that does holds exactly
 * the rows this import writes. */
static int resumes(job *jobs, size_t n, uint64_t a)
{
    int partial = 0;
    for (size_t i = 0; i < n; i++)
        partial |= !jobs[i].has_table || active_version(&jobs[i].before) != a;
    for (size_t i = 0; i < n && partial; i++)
        if (jobs[i].has_table && active_version(&jobs[i].before) == a && holds(jobs, n, i, a) != 1)
            return 0;
    return partial;
}

/* Reads every replica's table info; picks V (see the top of the file) and
 * what each replica already holds of it. */
static int survey(cluster_import *ci, job *jobs, size_t n)
{
    uint64_t newest_active = 0;
    for (size_t i = 0; i < n; i++) {
        engram_client *cl;
        engram_error e;
        if (engram_client_open(jobs[i].addr, ctl_client_options(), &cl, &e))
            return ctl_fail(e.code, "%s: %s", jobs[i].addr, e.message);
        int rc = engram_table_get(cl, ci->table, &jobs[i].before, &e);
        engram_client_close(cl);
        if (rc && rc != ENGRAM_NOT_FOUND)
            return ctl_fail(rc, "replica %s of shard %u: %s", jobs[i].addr, jobs[i].shard, e.message);
        jobs[i].has_table = rc == 0;
        if (!rc && active_version(&jobs[i].before) > newest_active)
            newest_active = active_version(&jobs[i].before);
    }
    ci->version = newest_active && resumes(jobs, n, newest_active) ? newest_active
                                                                   : newest_active + 1;
    for (size_t i = 0; i < n; i++)
        jobs[i].held = holds(jobs, n, i, ci->version);
    return 0;
}

/* Activates V on every replica (idempotent), carrying on past a failure so
 * that as many replicas as possible move on; names each one that failed. */
static int activate_all(const cluster_import *ci, job *jobs, size_t n)
{
    int rc = 0;
    size_t failed = 0;
    for (size_t i = 0; i < n; i++) {
        engram_client *cl;
        engram_error e;
        int r = engram_client_open(jobs[i].addr, ctl_client_options(), &cl, &e);
        if (!r) {
            r = engram_table_activate(cl, ci->table, ci->version, NULL, &e);
            engram_client_close(cl);
        }
        if (r) {
            failed++;
            rc = ctl_fail(r, "activating version %llu on replica %s of shard %u: %s",
                      (unsigned long long)ci->version, jobs[i].addr, jobs[i].shard, e.message);
        }
    }
    if (failed)
        fprintf(stderr,
                "engramctl: version %llu is active on %zu of %zu replicas; the others serve their "
                "previous version until re-running the import activates it on them\n",
                (unsigned long long)ci->version, n - failed, n);
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
            rc = ctl_fail(jobs[i].rc, "replica %s of shard %u: %s", jobs[i].addr, jobs[i].shard,
                      jobs[i].msg);
    }
    free(th);
    size_t active = 0;           /* an earlier run's half-done activation */
    for (size_t i = 0; i < n; i++)
        active += jobs[i].has_table && active_version(&jobs[i].before) == ci->version;
    if (rc && !active)
        fprintf(stderr, "engramctl: nothing was activated; version %llu stays staged where it was "
                        "written, and re-running the import completes it\n",
                (unsigned long long)ci->version);
    else if (rc)
        fprintf(stderr, "engramctl: nothing more was activated; version %llu stays active on the %zu "
                        "replicas an earlier run activated and staged where it was written, and "
                        "re-running the import completes it\n",
                (unsigned long long)ci->version, active);
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
            skipped += jobs[i].held == 1;
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
        *rc = ctl_fail(ENGRAM_FAILED_PRECONDITION, "the server's %s", why);
    return map;
}
