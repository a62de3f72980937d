/* local.c: the same-node path (local.h). A server with --shm-dir keeps each
 * resident table version as a file on its host (common/shm_format.h has
 * the format, server/store/shm.h the trust rules); a client on the same host maps those files
 * and copies a shard's rows from them on the calling thread.
 *
 * Discovery: each replica of the router (the one server of a single
 * router) is asked Admin.ListLocalTables. A reply whose boot_id is not
 * this host's names files on another machine and is ignored (its shards
 * stay remote). Each listed file of the router's layout (its shard of
 * cs->nshards) is opened O_RDONLY, fstat'ed (device, inode and size must be
 * the listed ones), mapped PROT_READ/MAP_SHARED, and its header compared
 * with the listing (magic, format, nonce, layout, table, version, shard):
 * the random nonce proves it is the file the server meant, not one put in
 * its place. A file that fails any step is kept as a failure with its
 * reason, for ENGRAM_LOCAL_REQUIRE's message; under AUTO it only means gRPC.
 *
 * Which version: a cluster lookup reads its pinned version
 * (version_pin.c), served locally only when a mapped file holds exactly
 * that version of the shard; a single router pins nothing, so it reads the
 * file the listing marks active. The listing is refreshed at most once per
 * version_refresh_ms: on a single router whenever it is older than that
 * (so a cutover is seen within version_refresh_ms, as a cluster's pin
 * is), on a cluster only when a pin moved to a version that has no mapping.
 * The listing runs on a thread of its own (started on the first lookup,
 * stopped at close), asked for by the lookup that finds it due: a lookup
 * never waits for a server that is slow to list (a stopped replica would
 * cost it an attempt timeout) and meanwhile uses the current mappings or
 * gRPC. Only ENGRAM_LOCAL_REQUIRE waits for the listing it asked for,
 * since it must not fail for want of one.
 *
 * Lifetime: a mapping has a reference count: one for being listed, one per
 * gather using it. A file no longer listed, or found shortened (safe_gather
 * returned -1), is unmapped when its last gather ends. Rows are copied
 * with safe_gather, so a file shortened under us is a -1 here, never a
 * SIGBUS in the caller; the sub-request then goes over gRPC (REQUIRE:
 * fails) and the next lookup re-lists.
 *
 * Bounds: a sub-request with a row outside the file goes over gRPC, so
 * the server answers it with its own OUT_OF_RANGE status and message; so
 * does a destination the rows do not fit (the decoder's error).
 *
 * Locking: l->mu guards the list, its reference counts and the listing
 * state; the RPCs, opens, maps and copies run without it, and nothing
 * else is locked while it is held. */
#include "local.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engram/v1/engram.pb-c.h"
#include "router.h"
#include "safe_gather.h"
#include "shm_format.h"

#define WHY_MAX 300

/* A mapping, shared by the listings that name its file and the gathers
 * reading it (refs, under l->mu). */
typedef struct lmap {
    uint8_t *base;
    size_t len;
    const uint8_t *data;         /* base + data offset */
    int refs;
    int broken;                  /* shortened under us: never read again */
} lmap;

/* One listed file of the current listing (owned by l->files). */
typedef struct lfile {
    struct lfile *next;
    char table[ENGRAM_NAME_MAX + 1];
    uint64_t version, rows, local_rows;
    uint32_t row_bytes, shard;
    int active;
    uint8_t nonce[16];
    lmap *m;                     /* NULL: a failure, `why` says what */
    char why[WHY_MAX];
} lfile;

struct ec_local {
    ec_cluster *cs;
    pthread_mutex_t mu;
    pthread_cond_t cv;           /* a listing was asked for or ended; stop */
    pthread_t thread;            /* the lister */
    int has_thread, stopping;
    int requested;               /* a listing is wanted */
    uint64_t gen;                /* listings finished */
    int mode;
    char boot_id[64];            /* this host's */
    lfile *files;
    int64_t listed_at;           /* monotonic ns of the last listing; 0: never */
    int listing;
    uint8_t shard_here[CLUSTER_MAX_SHARDS];  /* a replica of it is on this host */
    char why[WHY_MAX];           /* why no server listed files ("": some did) */
};

static void read_boot_id(char *buf, size_t cap)
{
    buf[0] = '\0';
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "re");
    if (!f)
        return;
    if (!fgets(buf, (int)cap, f))
        buf[0] = '\0';
    fclose(f);
    buf[strcspn(buf, "\r\n")] = '\0';
}

ec_local *ec_local_new(ec_cluster *cs, int mode)
{
    ec_local *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    l->cs = cs;
    l->mode = mode;
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cv, NULL);
    read_boot_id(l->boot_id, sizeof l->boot_id);
    return l;
}

static void lmap_unref(lmap *m)
{
    if (!m || --m->refs > 0)
        return;
    munmap(m->base, m->len);
    free(m);
}

static void lfile_free(lfile *f)
{
    lmap_unref(f->m);
    free(f);
}

void ec_local_stop(ec_local *l)
{
    if (!l)
        return;
    pthread_mutex_lock(&l->mu);
    l->stopping = 1;
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
}

void ec_local_free(ec_local *l)
{
    if (!l)
        return;
    ec_local_stop(l);
    if (l->has_thread)
        pthread_join(l->thread, NULL);
    while (l->files) {
        lfile *f = l->files;
        l->files = f->next;
        lfile_free(f);
    }
    pthread_cond_destroy(&l->cv);
    pthread_mutex_destroy(&l->mu);
    free(l);
}

/* ---- listing ------------------------------------------------------------------- */

typedef struct ll_call {
    ec_call c;
    Engram__V1__ListLocalTablesResponse *reply;
} ll_call;

static int ll_decode(ec_call *c, grpc_byte_buffer *reply)
{
    ll_call *g = (ll_call *)c;
    if (reply)
        g->reply = (Engram__V1__ListLocalTablesResponse *)pb_from_byte_buffer(
            &engram__v1__list_local_tables_response__descriptor, reply);
    if (!g->reply) {
        snprintf(c->message, sizeof c->message, "malformed ListLocalTablesResponse");
        return ENGRAM_INTERNAL;
    }
    return ENGRAM_OK;
}

/* One ListLocalTables on r, waited for; NULL with why on failure. */
static Engram__V1__ListLocalTablesResponse *list_on(ec_cluster *cs, replica *r, char *why,
                                                    size_t cap)
{
    ll_call g;
    memset(&g, 0, sizeof g);
    ec_call_init(&g.c, cs->cl, ll_decode);
    Engram__V1__ListLocalTablesRequest req = ENGRAM__V1__LIST_LOCAL_TABLES_REQUEST__INIT;
    int64_t tmo = cs->attempt_timeout_ms > 0 ? cs->attempt_timeout_ms : cs->cl->deadline_ms;
    engram_error e;
    int rc = ec_call_start_on(&g.c, r->ch, r->m_list_local, pb_to_byte_buffer(&req.base), tmo, &e);
    if (rc == ENGRAM_OK)
        rc = ec_call_wait(&g.c, -1, &e);
    ec_call_release(&g.c);
    if (rc) {
        if (g.reply)
            protobuf_c_message_free_unpacked(&g.reply->base, NULL);
        snprintf(why, cap, "ListLocalTables on %.64s failed: %s: %.200s", r->addr,
                 engram_status_name(rc), e.message);
        return NULL;
    }
    return g.reply;
}

/* The header at h agrees with the listing of t. */
static int header_matches(const uint8_t *h, const Engram__V1__LocalTableFile *t)
{
    shm_header x;
    shm_header_decode(h, &x);
    return memcmp(x.magic, SHM_MAGIC, 8) == 0 && x.format_version == SHM_FORMAT_VERSION &&
           x.header_bytes == SHM_HEADER_BYTES && x.data_offset == t->data_offset &&
           x.data_bytes == t->data_bytes && x.version == t->version && x.rows == t->rows &&
           x.local_rows == t->local_rows && x.row_bytes == t->row_bytes &&
           x.shard_index == t->shard_index && x.shard_count == t->shard_count &&
           t->nonce.len == 16 && memcmp(x.nonce, t->nonce.data, 16) == 0 &&
           strcmp(x.table, t->table) == 0;
}

/* Maps every page of the file into this process now, on the lister's
 * thread, instead of one minor fault per page at a lookup's first touch:
 * with 4 KiB pages a worker would otherwise fault on most rows it reads for
 * hours (a 189 GiB table has 49 M pages), each fault on a decode step's
 * critical path. The page tables cost 2 MiB per GiB of table with 4 KiB
 * pages, 4 KiB per GiB with 2 MiB ones (a huge= tmpfs). A failure (an old
 * kernel without MADV_POPULATE_READ; a file shortened meanwhile, which
 * the guarded copies then find) leaves the faults to the lookups. */
static void populate(void *m, size_t len)
{
#ifdef MADV_POPULATE_READ
    (void)madvise(m, len, MADV_POPULATE_READ);
#else
    (void)m;
    (void)len;
#endif
}

/* Opens, checks and maps the listed file t into f (f->map NULL and f->why
 * set when it cannot be trusted or read). */
static void map_file(lfile *f, const Engram__V1__LocalTableFile *t)
{
    /* The SIGBUS guard, installed only by a process that maps a file:
     * without it nothing is read (safe_gather refuses). */
    if (safe_gather_setup() != 0) {
        snprintf(f->why, sizeof f->why, "cannot install a SIGBUS handler: %s", strerror(errno));
        return;
    }
    int fd = open(t->path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        snprintf(f->why, sizeof f->why, "open %.200s: %s", t->path, strerror(errno));
        return;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        snprintf(f->why, sizeof f->why, "fstat %.200s: %s", t->path, strerror(errno));
    } else if ((uint64_t)st.st_dev != t->st_dev || (uint64_t)st.st_ino != t->st_ino ||
               (uint64_t)st.st_size != t->file_bytes) {
        snprintf(f->why, sizeof f->why,
                 "%.200s is not the file listed (device, inode or size differ)", t->path);
    } else if (t->data_offset < SHM_HEADER_BYTES ||
               t->file_bytes != t->data_offset + t->data_bytes || !t->row_bytes || t->data_bytes / t->row_bytes != t->local_rows ||
               t->data_bytes % t->row_bytes || t->file_bytes > SIZE_MAX) {
        snprintf(f->why, sizeof f->why, "%.200s: the listed layout is inconsistent", t->path);
    } else {
        void *m = mmap(NULL, (size_t)t->file_bytes, PROT_READ, MAP_SHARED, fd, 0);
        if (m == MAP_FAILED) {
            snprintf(f->why, sizeof f->why, "mmap %.200s: %s", t->path, strerror(errno));
        } else {
            /* The header is read through the guard too: the file may be
             * shortened already. */
            uint8_t h[SHM_HEADER_BYTES];
            static const uint64_t zero = 0;
            if (safe_gather(m, (size_t)t->file_bytes, &zero, 1, SHM_HEADER_BYTES, NULL, h) != 0 ||
                !header_matches(h, t)) {
                snprintf(f->why, sizeof f->why,
                         "%.200s: its header does not match the listing (nonce, layout, table, "
                         "version or shard)", t->path);
                munmap(m, (size_t)t->file_bytes);
            } else if (!(f->m = calloc(1, sizeof *f->m))) {
                snprintf(f->why, sizeof f->why, "out of memory");
                munmap(m, (size_t)t->file_bytes);
            } else {
                populate(m, (size_t)t->file_bytes);
                f->m->base = m;
                f->m->len = (size_t)t->file_bytes;
                f->m->data = f->m->base + t->data_offset;
                f->m->refs = 1;
            }
        }
    }
    close(fd);
}

static lfile *find_mapped(lfile *list, const char *table, uint64_t version, uint32_t shard,
                          int want_active)
{
    for (lfile *f = list; f; f = f->next)
        if (f->m && !f->m->broken && f->shard == shard && strcmp(f->table, table) == 0 &&
            (want_active ? f->active : f->version == version))
            return f;
    return NULL;
}

/* Lists every replica's files and replaces l->files. Called with l->mu
 * held and l->listing set; drops the lock while it works. */
static void relist(ec_cluster *cs, ec_local *l)
{
    pthread_mutex_unlock(&l->mu);
    lfile *fresh = NULL;
    uint8_t here[CLUSTER_MAX_SHARDS];
    memset(here, 0, sizeof here);
    char why[WHY_MAX] = "";
    for (size_t k = 0; k < cs->nreps; k++) {
        replica *r = &cs->reps[k];
        char w[WHY_MAX];
        Engram__V1__ListLocalTablesResponse *rep = list_on(cs, r, w, sizeof w);
        if (!rep) {
            if (!why[0])
                snprintf(why, sizeof why, "%s", w);
            continue;
        }
        if (!l->boot_id[0] || strcmp(rep->boot_id, l->boot_id) != 0) {
            if (!why[0])
                snprintf(why, sizeof why, "%.64s is on another host (boot_id %.40s, this host's %.40s)",
                         r->addr, rep->boot_id, l->boot_id[0] ? l->boot_id : "unreadable");
        } else {
            here[r->shard] = 1;
            if (!rep->shm_dir || !rep->shm_dir[0]) {
                if (!why[0])
                    snprintf(why, sizeof why, "%.64s publishes no local files (no --shm-dir)", r->addr);
            }
            for (size_t i = 0; i < rep->n_files; i++) {
                const Engram__V1__LocalTableFile *t = rep->files[i];
                if (t->shard_index != r->shard || t->shard_count != cs->nshards ||
                    strlen(t->table) > ENGRAM_NAME_MAX)
                    continue;
                /* Another replica on this host may have listed it already. */
                if (find_mapped(fresh, t->table, t->version, t->shard_index, 0))
                    continue;
                lfile *f = calloc(1, sizeof *f);
                if (!f)
                    continue;
                snprintf(f->table, sizeof f->table, "%s", t->table);
                f->version = t->version;
                f->rows = t->rows;
                f->local_rows = t->local_rows;
                f->row_bytes = t->row_bytes;
                f->shard = t->shard_index;
                f->active = t->active;
                if (t->nonce.len == 16)
                    memcpy(f->nonce, t->nonce.data, 16);
                /* A file already mapped (same nonce) is kept, not remapped. */
                pthread_mutex_lock(&l->mu);
                lfile *old = NULL;
                for (lfile *o = l->files; o; o = o->next)
                    if (o->m && !o->m->broken && o->version == t->version &&
                        o->shard == t->shard_index && memcmp(o->nonce, f->nonce, 16) == 0 &&
                        strcmp(o->table, t->table) == 0) {
                        old = o;
                        break;
                    }
                if (old) {
                    f->m = old->m;
                    f->m->refs++;
                }
                pthread_mutex_unlock(&l->mu);
                if (!f->m)
                    map_file(f, t);
                f->next = fresh;
                fresh = f;
            }
        }
        protobuf_c_message_free_unpacked(&rep->base, NULL);
    }
    pthread_mutex_lock(&l->mu);
    lfile *old = l->files;
    l->files = fresh;
    memcpy(l->shard_here, here, sizeof here);
    snprintf(l->why, sizeof l->why, "%s", why);
    l->listed_at = mono_now();
    while (old) {
        lfile *o = old;
        old = o->next;
        lfile_free(o);
    }
}

static void *lister(void *arg)
{
    ec_local *l = arg;
    pthread_mutex_lock(&l->mu);
    while (!l->stopping) {
        if (l->requested) {
            l->requested = 0;
            l->listing = 1;
            relist(l->cs, l);
            l->listing = 0;
            l->gen++;
            pthread_cond_broadcast(&l->cv);
            continue;
        }
        pthread_cond_wait(&l->cv, &l->mu);
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

/* Asks the lister for a listing, starting it the first time (l->mu held).
 * 0, or -1 when no thread can be had (then nothing is ever listed). */
static int ask_listing(ec_local *l)
{
    if (l->stopping)
        return -1;
    if (!l->has_thread) {
        if (pthread_create(&l->thread, NULL, lister, l) != 0) {
            snprintf(l->why, sizeof l->why, "no thread for listing local files");
            return -1;
        }
        l->has_thread = 1;
    }
    l->requested = 1;
    pthread_cond_broadcast(&l->cv);
    return 0;
}

/* ---- serving ------------------------------------------------------------------- */

static int listing_due(const ec_local *l, int64_t refresh_ms, int64_t now)
{
    /* A single server's lookups name no version: its listing is all that
     * tells a cutover, so "never refresh" (< 0, meant for pins) would serve
     * an old file forever; it refreshes at the default rate instead. */
    if (refresh_ms < 0 && l->cs->single)
        refresh_ms = 1000;
    if (!l->listed_at || refresh_ms == 0)
        return 1;
    return refresh_ms > 0 && now - l->listed_at >= refresh_ms * MS;
}

/* Why table's shard cannot be served from a file (l->mu held). */
static void why_not(const ec_local *l, const char *table, uint64_t version, uint32_t shard,
                    char *out, size_t cap)
{
    const lfile *fail = NULL;
    int listed = 0;
    for (const lfile *f = l->files; f; f = f->next) {
        if (f->shard != shard || strcmp(f->table, table) != 0)
            continue;
        listed = 1;
        if (!f->m && (!fail || (version ? f->version == version : f->active)))
            fail = f;
    }
    if (fail)
        snprintf(out, cap, "%s", fail->why);
    else if (l->why[0] && !listed)
        snprintf(out, cap, "%s", l->why);
    else if (listed && version)
        snprintf(out, cap, "no file of version %llu of shard %u is listed",
                 (unsigned long long)version, shard);
    else if (listed)
        snprintf(out, cap, "no file of its active version is listed");
    else
        snprintf(out, cap, "no file is listed for it");
}

/* ec_rows_gather's arguments, for safe_run. */
typedef struct gather {
    const ec_dest *d;
    const uint32_t *pos;
    size_t n;
    uint32_t rb;
    const uint8_t *base;
    const uint64_t *rows;
} gather;

static void gather_rows(void *ctx)
{
    const gather *g = ctx;
    ec_rows_gather(g->d, g->pos, g->n, g->rb, g->base, g->rows);
}

int ec_local_serve(ec_cluster *cs, const char *table, uint64_t *version, uint32_t shard,
                   const uint64_t *rows, const uint32_t *pos, size_t n, size_t lookup_n,
                   const ec_dest *d, uint32_t *rb, char *msg, size_t cap)
{
    ec_local *l = cs->local;
    int64_t refresh = cs->o->version_refresh_ms;
    uint64_t want = *version;
    int require = l->mode == ENGRAM_LOCAL_REQUIRE;
    if (n == 0)
        return EC_LOCAL_REMOTE;   /* the server judges the table */

    pthread_mutex_lock(&l->mu);
    lfile *f = find_mapped(l->files, table, want, shard, want == 0);
    /* A single router always follows the listing's active file; a cluster
     * re-lists only when its pin moved to a version with no mapping. */
    int due = listing_due(l, refresh, mono_now()) && (want == 0 || !f);
    int asked = 0;
    if (due && !l->listing && !l->requested)
        asked = ask_listing(l) == 0;
    if (!f && require && (asked || l->requested || l->listing)) {
        /* REQUIRE fails only on a listing's word, so it waits for one. */
        uint64_t g = l->gen;
        while (l->gen == g && !l->stopping)
            pthread_cond_wait(&l->cv, &l->mu);
        f = find_mapped(l->files, table, want, shard, want == 0);
    }
    int here = cs->single || l->shard_here[shard];
    if (!f) {
        int rc = EC_LOCAL_REMOTE;
        if (require && here) {
            char why[WHY_MAX];
            why_not(l, table, want, shard, why, sizeof why);
            snprintf(msg, cap, "table \"%s\" has no usable local file: %s", table, why);
            rc = ENGRAM_FAILED_PRECONDITION;
        }
        pthread_mutex_unlock(&l->mu);
        return rc;
    }
    lmap *m = f->m;
    m->refs++;
    uint64_t ver = f->version, local_rows = f->local_rows;
    uint32_t frb = f->row_bytes;
    pthread_mutex_unlock(&l->mu);

    /* Anything the server would judge differently goes to it: rows
     * outside the file, a row size the destination does not take, rows
     * that do not fit the caller's buffer. */
    int rc = EC_LOCAL_REMOTE;
    uint32_t S = cs->nshards;
    int plain = !d->first && !d->out_rb && !d->dequant_dim;
    uint64_t *local = NULL;
    int ok = !d->row_bytes || d->row_bytes == frb;
    if (ok && plain)
        ok = lookup_n <= d->out_cap / frb;
    if (ok && S > 1)
        ok = (local = malloc(n * sizeof *local)) != NULL;
    for (size_t i = 0; ok && i < n; i++) {
        uint64_t lr = rows[i] / S;
        if (rows[i] % S != shard || lr >= local_rows)
            ok = 0;
        else if (local)
            local[i] = lr;
    }
    if (ok) {
        /* Straight from the mapping to every place a row goes. */
        gather g = {.d = d, .pos = pos, .n = n, .rb = frb, .base = m->data,
                    .rows = local ? local : rows};
        if (safe_run(m->data, local_rows * frb, gather_rows, &g) == 0) {
            *version = ver;
            *rb = frb;
            rc = EC_LOCAL_SERVED;
        } else {
            pthread_mutex_lock(&l->mu);
            m->broken = 1;
            l->listed_at = 0;   /* the next lookup re-lists */
            pthread_mutex_unlock(&l->mu);
            if (require) {
                snprintf(msg, cap,
                         "table \"%s\" has no usable local file: its file of version %llu was "
                         "shortened while mapped", table, (unsigned long long)ver);
                rc = ENGRAM_FAILED_PRECONDITION;
            }
        }
    }
    free(local);
    pthread_mutex_lock(&l->mu);
    lmap_unref(m);
    pthread_mutex_unlock(&l->mu);
    return rc;
}
