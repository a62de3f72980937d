/* tables.c: the registry of tables and the version life cycle (see
 * store.h): acquire/release, listing, import claims, commit of an import,
 * activation and drop, and bringing everything back at start-up. Each
 * change that writes metadata checks free space first (disk.c).
 *
 * The registry is a small array under a rwlock: tables are few (a model has
 * a handful), lookups take the read lock only long enough to bump a
 * reference count. Version changes are serialized by change_lock and do
 * their I/O (metadata writes, resident loads) before taking the write lock,
 * which they hold only to swap pointers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "names.h"
#include "status.h"
#include "store_internal.h"

int table_name_valid(const char *name)
{
    return engram_name_valid(name);
}

static const char *state_name(int st)
{
    return st == VS_ACTIVE ? "active" : st == VS_RETAINED ? "retained" : "staged";
}

/* ---- objects ---------------------------------------------------------------- */

static version_rows *vr_new(store *s, uint32_t id, uint64_t version)
{
    version_rows *vr = calloc(1, sizeof *vr);
    if (!vr)
        return NULL;
    vr->refs = 1;
    vr->s = s;
    vr->table_id = id;
    vr->version = version;
    vr->cache_id = __atomic_add_fetch(&s->next_cache_id, 1, __ATOMIC_RELAXED);
    return vr;
}

static void vr_release(version_rows *vr)
{
    if (!vr || __atomic_sub_fetch(&vr->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    if (__atomic_load_n(&vr->drop, __ATOMIC_ACQUIRE))
        store_delete_rows_later(vr->s, vr->table_id, vr->version);
    free(vr);
}

/* A copy of tv in another state, sharing its rows, without its resident
 * array (the caller loads one if the new state wants it). */
static table_version *tv_clone(const table_version *tv, int state)
{
    table_version *c = malloc(sizeof *c);
    if (!c)
        return NULL;
    *c = *tv;
    c->refs = 1;
    c->state = state;
    c->resident = NULL;
    __atomic_add_fetch(&c->vr->refs, 1, __ATOMIC_RELAXED);
    return c;
}

void table_version_release(table_version *tv)
{
    if (!tv || __atomic_sub_fetch(&tv->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    resident_free(tv->resident, (size_t)tv->local_rows * tv->row_bytes);
    vr_release(tv->vr);
    free(tv);
}

/* ---- registry ---------------------------------------------------------------- */

static table_entry *entry_find(store *s, const char *name)
{
    for (size_t i = 0; i < s->ntables; i++)
        if (strcmp(s->tables[i]->name, name) == 0)
            return s->tables[i];
    return NULL;
}

/* The entry of `name`, made if missing, with room for one more version.
 * NULL when memory runs out (nothing changed then). Called with the write
 * lock held (or before any reader exists). */
static table_entry *entry_get(store *s, const char *name, uint32_t id)
{
    table_entry *e = entry_find(s, name);
    if (!e) {
        if (s->ntables == s->cap) {
            size_t cap = s->cap ? s->cap * 2 : 8;
            table_entry **t = realloc(s->tables, cap * sizeof *t);
            if (!t)
                return NULL;
            s->tables = t;
            s->cap = cap;
        }
        if (!(e = calloc(1, sizeof *e)))
            return NULL;
        snprintf(e->name, sizeof e->name, "%s", name);
        e->table_id = id;
        s->tables[s->ntables++] = e;
    }
    if (e->nv == e->cap) {
        int cap = e->cap ? e->cap * 2 : 4;
        table_version **v = realloc(e->v, (size_t)cap * sizeof *v);
        if (!v)
            return NULL;
        e->v = v;
        e->cap = cap;
    }
    return e;
}

static int slot_of(const table_entry *e, uint64_t version)
{
    for (int i = 0; i < e->nv; i++)
        if (e->v[i]->version == version)
            return i;
    return -1;
}

static int active_slot(const table_entry *e)
{
    for (int i = 0; i < e->nv; i++)
        if (e->v[i]->state == VS_ACTIVE)
            return i;
    return -1;
}

/* Inserts keeping v[] sorted by version; entry_get made room. */
static void entry_insert(table_entry *e, table_version *tv)
{
    int i = e->nv++;
    while (i > 0 && e->v[i - 1]->version > tv->version) {
        e->v[i] = e->v[i - 1];
        i--;
    }
    e->v[i] = tv;
}

static void entry_remove(table_entry *e, int slot)
{
    memmove(&e->v[slot], &e->v[slot + 1], (size_t)(e->nv - slot - 1) * sizeof e->v[0]);
    e->nv--;
}

table_version *store_acquire(store *s, const char *name, uint64_t version)
{
    table_version *tv = NULL;
    pthread_rwlock_rdlock(&s->lock);
    table_entry *e = entry_find(s, name);
    int i = !e ? -1 : version ? slot_of(e, version) : active_slot(e);
    if (i >= 0) {
        tv = e->v[i];
        __atomic_add_fetch(&tv->refs, 1, __ATOMIC_RELAXED);
    }
    pthread_rwlock_unlock(&s->lock);
    return tv;
}

static int by_name(const void *a, const void *b)
{
    return strcmp((*(table_version *const *)a)->name, (*(table_version *const *)b)->name);
}

size_t store_list(store *s, table_version ***out)
{
    pthread_rwlock_rdlock(&s->lock);
    table_version **v = malloc((s->ntables + 1) * sizeof *v);
    size_t n = 0;
    for (size_t i = 0; v && i < s->ntables; i++) {
        table_entry *e = s->tables[i];
        int a = active_slot(e);
        if (e->nv == 0)
            continue;
        v[n] = e->v[a >= 0 ? a : e->nv - 1];
        __atomic_add_fetch(&v[n++]->refs, 1, __ATOMIC_RELAXED);
    }
    pthread_rwlock_unlock(&s->lock);
    qsort(v, n, sizeof *v, by_name);
    *out = v;
    return n;
}

size_t store_versions(store *s, const char *name, table_version ***out)
{
    pthread_rwlock_rdlock(&s->lock);
    table_entry *e = entry_find(s, name);
    size_t n = e ? (size_t)e->nv : 0;
    table_version **v = malloc((n + 1) * sizeof *v);
    if (!v)
        n = 0;                   /* out of memory: *out is NULL */
    for (size_t i = 0; i < n; i++) {
        v[i] = e->v[i];
        __atomic_add_fetch(&v[i]->refs, 1, __ATOMIC_RELAXED);
    }
    pthread_rwlock_unlock(&s->lock);
    *out = v;
    return n;
}

/* ---- start-up ----------------------------------------------------------------- */

static void on_loaded(store *s, table_version *tv)
{
    tv->vr = vr_new(s, tv->table_id, tv->version);
    table_entry *e = tv->vr ? entry_get(s, tv->name, tv->table_id) : NULL;
    if (!e) {
        /* Start-up fails rather than go on without it: a version left out
         * of the registry would have its rows deleted as orphans. */
        log_error("table_load_failed", "table=%s version=%llu error=\"out of memory\"", tv->name,
                  (unsigned long long)tv->version);
        s->load_failed = 1;
        table_version_release(tv);
        return;
    }
    if (tv->state == VS_ACTIVE)
        store_resident_load(s, tv);
    entry_insert(e, tv);
    if (e->nv == STORE_MAX_VERSIONS + 1)  /* once per table; written before the limit */
        log_warn("too_many_versions", "table=%s max=%d: imports of it are refused until "
                 "versions are dropped", tv->name, STORE_MAX_VERSIONS);
    log_info("table_loaded", "table=%s version=%llu state=%s rows=%llu local_rows=%llu row_bytes=%u resident=%d",
             tv->name, (unsigned long long)tv->version, state_name(tv->state),
             (unsigned long long)tv->rows, (unsigned long long)tv->local_rows, tv->row_bytes,
             tv->resident != NULL);
}

static int cmp_pair(const void *a, const void *b)
{
    const uint64_t *x = a, *y = b;
    if (x[0] != y[0])
        return x[0] < y[0] ? -1 : 1;
    return x[1] < y[1] ? -1 : x[1] > y[1];
}

static void collect_orphans(store *s)
{
    size_t n = 0;
    for (size_t i = 0; i < s->ntables; i++)
        n += (size_t)s->tables[i]->nv;
    uint64_t (*live)[2] = malloc((n + 1) * sizeof *live);
    n = 0;
    for (size_t i = 0; i < s->ntables; i++)
        for (int j = 0; j < s->tables[i]->nv; j++) {
            live[n][0] = s->tables[i]->table_id;
            live[n++][1] = s->tables[i]->v[j]->version;
        }
    qsort(live, n, sizeof *live, cmp_pair);
    store_collect_orphans(s, live, n);
    free(live);
}

static store *store_open(const store_options *o, store_metrics *metrics, store_placement *held,
                         char **err);

/* The opening steps below report with a malloc'd *err (RocksDB's own
 * convention, which they pass on); the header's one convention is applied
 * here, at the boundary. */
int store_setup(const store_options *o, store_metrics *metrics, store **out,
                store_placement *held, char *msg, size_t msglen)
{
    store_placement none;
    char *err = NULL;
    held = held ? held : &none;
    *out = store_open(o, metrics, held, &err);
    if (*out)
        return ES_OK;
    snprintf(msg, msglen, "%s", err ? err : "out of memory opening the store");
    free(err);
    return held->count ? ES_FAILED_PRECONDITION : ES_INTERNAL;
}

static store *store_open(const store_options *o, store_metrics *metrics, store_placement *held,
                         char **err)
{
    held->index = held->count = 0;
    store *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    /* Without the caller's storage the figures are kept (and seen) nowhere. */
    s->m = metrics ? metrics : &s->m_none;
    *s->m = (store_metrics){STORE_METRIC(METRIC_INIT) .hot = {HOTCACHE_METRIC(METRIC_INIT)}};
    s->shard_count = o->shard_count ? o->shard_count : 1;
    s->shard_index = o->shard_index;
    s->keep_versions = o->keep_versions >= 2 ? o->keep_versions : 2;
    s->hot_budget = o->hot_cache_bytes;
    pthread_mutex_init(&s->hot_lock, NULL);
    pthread_rwlock_init(&s->lock, NULL);
    pthread_mutex_init(&s->change_lock, NULL);
    pthread_mutex_init(&s->claim_lock, NULL);
    resident_setup(o->resident_budget, &s->m->resident);
    if (store_open_db(s, o, held, err) < 0 || store_scan_meta(s, on_loaded, err) < 0 ||
        store_read_next_id(s, &s->next_id, err) < 0) {
        store_teardown(s);
        return NULL;
    }
    if (s->load_failed) {
        *err = strdup("out of memory registering table versions");
        store_teardown(s);
        return NULL;
    }
    collect_orphans(s);
    if (metrics)
        metric_register((metric *)metrics, METRIC_CARDINALITY(*metrics), store_metrics_refresh, s);
    return s;
}

void store_teardown(store *s)
{
    if (!s)
        return;
    metric_deregister(s->m);
    for (size_t i = 0; i < s->ntables; i++) {
        for (int j = 0; j < s->tables[i]->nv; j++)
            table_version_release(s->tables[i]->v[j]);
        free(s->tables[i]->v);
        free(s->tables[i]);
    }
    free(s->tables);
    for (size_t i = 0; i < s->nclaims; i++)
        free(s->claims[i]);
    free(s->claims);
    store_close_db(s);
    hotcache_destroy(s->hot);
    pthread_mutex_destroy(&s->hot_lock);
    resident_teardown();
    pthread_rwlock_destroy(&s->lock);
    pthread_mutex_destroy(&s->change_lock);
    pthread_mutex_destroy(&s->claim_lock);
    free(s);
}

void store_shard(const store *s, uint32_t *count, uint32_t *index)
{
    *count = s->shard_count;
    *index = s->shard_index;
}

/* ---- claims --------------------------------------------------------------------- */

/* Refuses one more version of e when the table would then hold more than
 * STORE_MAX_VERSIONS. A staged version adds one; an activated one adds one
 * and makes the active one retained, and enforce_keep then drops retained
 * ones beyond keep_versions, so only staged versions can pile up (nothing
 * drops them but DropVersion). Called with the lock held (read or write);
 * e may be NULL (a new table). */
static int check_room(const store *s, const table_entry *e, const char *name, int stage,
                      char *msg, size_t msglen)
{
    int counts[4] = {0};
    for (int i = 0; e && i < e->nv; i++)
        counts[e->v[i]->state & 3]++;
    int nv = e ? e->nv : 0, staged = counts[VS_STAGED];
    int kept = nv - staged + 1;          /* active and retained, with the new one */
    int after = stage ? nv + 1 : staged + (kept > (int)s->keep_versions ? (int)s->keep_versions : kept);
    if (after <= STORE_MAX_VERSIONS)
        return ES_OK;
    snprintf(msg, msglen, "table \"%s\" holds %d versions (%d active, %d retained, %d staged), the most "
             "a table can hold is %d; drop a version that is not active first (engramctl "
             "drop-version --table %s --version V)", name, nv, counts[VS_ACTIVE],
             counts[VS_RETAINED], staged, STORE_MAX_VERSIONS, name);
    return ES_RESOURCE_EXHAUSTED;
}

static int claimed(store *s, const char *name)
{
    for (size_t i = 0; i < s->nclaims; i++)
        if (strcmp(s->claims[i], name) == 0)
            return 1;
    return 0;
}

/* The id of the table and the newest live version (0: none); *room is
 * check_room's answer. */
static int table_state(store *s, const char *name, uint32_t *id, uint64_t *newest,
                       int *live_version, uint64_t want, int stage, int *room,
                       char *msg, size_t msglen)
{
    pthread_rwlock_rdlock(&s->lock);
    table_entry *e = entry_find(s, name);
    int found = e != NULL;
    if (e) {
        *id = e->table_id;
        *newest = e->nv ? e->v[e->nv - 1]->version : 0;
        *live_version = want && slot_of(e, want) >= 0;
    }
    *room = check_room(s, e, name, stage, msg, msglen);
    pthread_rwlock_unlock(&s->lock);
    return found;
}

static int choose_version(store *s, const char *name, uint64_t want, int stage, uint32_t *id,
                          uint64_t *version, char *msg, size_t msglen)
{
    uint64_t newest = 0;
    int live = 0, room;
    int found = table_state(s, name, id, &newest, &live, want, stage, &room, msg, msglen);
    if (room != ES_OK)
        return room;             /* before a new id is spent */
    if (!found) {
        /* A new table's id is persisted before any of its rows are written,
         * so two tables never share key space, even across a crash. */
        char what[200];
        snprintf(what, sizeof what, "cannot create table \"%s\"", name);
        int code = store_disk_check(s, 0, what, msg, msglen);
        if (code != ES_OK)
            return code;
        if (store_persist_next_id(s, s->next_id + 1, msg, msglen))
            return ES_INTERNAL;
        *id = s->next_id++;
    }
    if (live) {
        snprintf(msg, msglen, "version %llu of table \"%s\" already exists on this server",
                 (unsigned long long)want, name);
        return ES_ALREADY_EXISTS;
    }
    if (want && want <= newest) {
        snprintf(msg, msglen, "version %llu of table \"%s\" is not newer than version %llu on this server",
                 (unsigned long long)want, name, (unsigned long long)newest);
        return ES_FAILED_PRECONDITION;
    }
    *version = want ? want : newest + 1;
    return ES_OK;
}

int store_import_claim(store *s, const char *name, uint64_t want, int stage,
                       uint32_t *table_id, uint64_t *version, char *msg, size_t msglen)
{
    pthread_mutex_lock(&s->claim_lock);
    int rc = ES_ABORTED;
    if (claimed(s, name))
        snprintf(msg, msglen, "an import of table \"%s\" is already running", name);
    else
        rc = choose_version(s, name, want, stage, table_id, version, msg, msglen);
    if (rc == ES_OK) {
        char **v = realloc(s->claims, (s->nclaims + 1) * sizeof *s->claims);
        char *copy = v ? strdup(name) : NULL;
        if (v)
            s->claims = v;
        if (copy) {
            s->claims[s->nclaims++] = copy;
        } else {
            snprintf(msg, msglen, "out of memory claiming an import of table \"%s\"", name);
            rc = ES_RESOURCE_EXHAUSTED;
        }
    }
    pthread_mutex_unlock(&s->claim_lock);
    return rc;
}

void store_import_unclaim(store *s, const char *name)
{
    pthread_mutex_lock(&s->claim_lock);
    for (size_t i = 0; i < s->nclaims; i++) {
        if (strcmp(s->claims[i], name) == 0) {
            free(s->claims[i]);
            s->claims[i] = s->claims[--s->nclaims];
            break;
        }
    }
    pthread_mutex_unlock(&s->claim_lock);
}

/* ---- version changes ---------------------------------------------------------------- */

/* Drops retained versions beyond keep_versions, oldest first. Called with
 * change_lock held. */
static void enforce_keep(store *s, const char *name)
{
    for (;;) {
        table_version **v;
        size_t n = store_versions(s, name, &v), kept = 0;
        uint64_t oldest = 0;
        for (size_t i = 0; i < n; i++) {
            if (v[i]->state != VS_STAGED)
                kept++;
            if (v[i]->state == VS_RETAINED && !oldest)
                oldest = v[i]->version;
            table_version_release(v[i]);
        }
        free(v);
        char msg[256];
        if (kept <= s->keep_versions || !oldest || store_drop_locked(s, name, oldest, msg, sizeof msg))
            return;
    }
}

/* Swaps the registry's objects: `add` in (replacing the same version if
 * present), and the previous active one (if any, and not `add`'s version)
 * replaced by `retained`. Gives the objects taken out, to release after
 * unlocking. A new version's room was made by reserve_slot, so this only
 * fails (-1, nothing changed) if that was skipped and memory ran out. */
static int registry_swap(store *s, table_version *add, table_version *retained,
                         table_version **out1, table_version **out2)
{
    *out1 = *out2 = NULL;
    pthread_rwlock_wrlock(&s->lock);
    table_entry *e = entry_find(s, add->name);
    if (!e || slot_of(e, add->version) < 0)  /* a new version: needs a slot */
        e = entry_get(s, add->name, add->table_id);
    if (!e) {
        pthread_rwlock_unlock(&s->lock);
        table_version_release(retained);
        return -1;
    }
    int a = active_slot(e);
    if (retained && a >= 0 && e->v[a]->version != add->version) {
        *out1 = e->v[a];
        e->v[a] = retained;
        retained = NULL;
    }
    int i = slot_of(e, add->version);
    if (i >= 0) {
        *out2 = e->v[i];
        e->v[i] = add;
    } else {
        entry_insert(e, add);
    }
    pthread_rwlock_unlock(&s->lock);
    if (retained)
        table_version_release(retained);
    return 0;
}

/* Makes `tv` (a new object, ACTIVE) the active version on disk and in the
 * registry. Called with change_lock held. */
static int install_active(store *s, table_version *tv, char *msg, size_t msglen)
{
    table_version *old = store_acquire(s, tv->name, 0);
    table_version *ret = old && old->version != tv->version ? tv_clone(old, VS_RETAINED) : NULL;
    if (old && old->version != tv->version && !ret) {
        snprintf(msg, msglen, "out of memory retaining version %llu of table \"%s\"",
                 (unsigned long long)old->version, tv->name);
        table_version_release(old);
        return -1;
    }
    table_version *put[2] = {tv, ret};
    int rc = store_write_meta(s, put, ret ? 2 : 1, NULL, msg, msglen);
    table_version_release(old);
    if (rc) {
        table_version_release(ret);
        return -1;
    }
    table_version *o1, *o2;
    if (registry_swap(s, tv, ret, &o1, &o2)) {
        snprintf(msg, msglen, "out of memory registering version %llu of table \"%s\"",
                 (unsigned long long)tv->version, tv->name);
        return -1;
    }
    table_version_release(o1);
    table_version_release(o2);
    enforce_keep(s, tv->name);
    return 0;
}

/* Before anything of a new version is written: checks its room again (the
 * claim did, but the registry is the last word) and makes the slot it will
 * take, so registering it after the synced metadata write cannot fail.
 * Called with change_lock held. */
static int reserve_slot(store *s, const table_version *tv, int stage, char *msg, size_t msglen)
{
    pthread_rwlock_wrlock(&s->lock);
    int rc = check_room(s, entry_find(s, tv->name), tv->name, stage, msg, msglen);
    if (rc == ES_OK && !entry_get(s, tv->name, tv->table_id)) {
        snprintf(msg, msglen, "out of memory registering version %llu of table \"%s\"",
                 (unsigned long long)tv->version, tv->name);
        rc = ES_RESOURCE_EXHAUSTED;
    }
    pthread_rwlock_unlock(&s->lock);
    return rc;
}

/* Order matters for crash safety: rows are ingested first, then the
 * metadata that names the new version is written (synced), then readers are
 * switched. A crash before the metadata write leaves only orphan rows, which
 * start-up deletes; the old version keeps serving. */
int store_commit_import(store *s, const table_version *proto, int stage, const char *const *files,
                        size_t nfiles, char *msg, size_t msglen)
{
    table_version *tv = malloc(sizeof *tv);
    version_rows *vr = tv ? vr_new(s, proto->table_id, proto->version) : NULL;
    if (!vr) {
        free(tv);
        snprintf(msg, msglen, "out of memory registering version %llu of table \"%s\"",
                 (unsigned long long)proto->version, proto->name);
        store_import_unclaim(s, proto->name);
        return ES_RESOURCE_EXHAUSTED;
    }
    *tv = *proto;
    tv->refs = 1;
    tv->s = s;
    tv->resident = NULL;
    tv->state = stage ? VS_STAGED : VS_ACTIVE;
    tv->created_unix_ms = store_unix_ms();
    tv->vr = vr;
    pthread_mutex_lock(&s->change_lock);
    /* Refused here, the files are never ingested: nothing to delete. An
     * ingest edits the MANIFEST and the metadata goes through the WAL, so
     * free space is checked before either. */
    char what[200];
    snprintf(what, sizeof what, "import of table \"%s\" cannot be ingested", tv->name);
    int rc = reserve_slot(s, tv, stage, msg, msglen), ingested = 0;
    if (rc == ES_OK)
        rc = store_disk_check(s, 0, what, msg, msglen);
    if (rc == ES_OK && nfiles) {
        ingested = 1;
        rc = store_ingest(s, files, nfiles, msg, msglen) ? ES_INTERNAL : ES_OK;
    }
    if (rc == ES_OK && !stage)
        store_resident_load(s, tv);
    if (rc == ES_OK && stage) {
        rc = store_write_meta(s, &tv, 1, NULL, msg, msglen) ? ES_INTERNAL : ES_OK;
        table_version *o1, *o2;
        if (rc == ES_OK && registry_swap(s, tv, NULL, &o1, &o2)) {
            snprintf(msg, msglen, "out of memory registering version %llu of table \"%s\"",
                     (unsigned long long)tv->version, tv->name);
            rc = ES_INTERNAL;
        } else if (rc == ES_OK) {
            table_version_release(o1);
            table_version_release(o2);
        }
    } else if (rc == ES_OK) {
        rc = install_active(s, tv, msg, msglen) ? ES_INTERNAL : ES_OK;
    }
    if (rc != ES_OK) {
        __atomic_store_n(&tv->vr->drop, ingested, __ATOMIC_RELEASE);
        table_version_release(tv);
    }
    pthread_mutex_unlock(&s->change_lock);
    store_import_unclaim(s, proto->name);
    return rc;
}

int store_activate(store *s, const char *name, uint64_t version, char *msg, size_t msglen)
{
    pthread_mutex_lock(&s->change_lock);
    table_version *cur = store_acquire(s, name, version);
    int rc = ES_OK;
    if (!cur) {
        snprintf(msg, msglen, "table \"%s\" has no version %llu on this server", name,
                 (unsigned long long)version);
        rc = ES_NOT_FOUND;
    } else if (cur->state != VS_ACTIVE) {
        char what[200];
        snprintf(what, sizeof what, "cannot activate version %llu of table \"%s\"",
                 (unsigned long long)version, name);
        rc = store_disk_check(s, 0, what, msg, msglen);
    }
    if (rc == ES_OK && cur->state != VS_ACTIVE) {
        table_version *tv = tv_clone(cur, VS_ACTIVE);
        if (tv)
            store_resident_load(s, tv);
        if (!tv) {
            snprintf(msg, msglen, "out of memory activating version %llu of table \"%s\"",
                     (unsigned long long)version, name);
            rc = ES_RESOURCE_EXHAUSTED;
        } else if (install_active(s, tv, msg, msglen)) {
            table_version_release(tv);   /* never registered; shares cur's rows */
            rc = ES_INTERNAL;
        } else
            log_info("version_activated", "table=%s version=%llu", name, (unsigned long long)version);
    }
    table_version_release(cur);
    pthread_mutex_unlock(&s->change_lock);
    return rc;
}

/* Called with change_lock held. A drop frees space, so it is let through
 * down to half the reserve: an operator whose disk filled up can still
 * drop versions to make room. */
int store_drop_locked(store *s, const char *name, uint64_t version, char *msg, size_t msglen)
{
    table_version *tv = store_acquire(s, name, version);
    if (!tv) {
        snprintf(msg, msglen, "table \"%s\" has no version %llu on this server", name,
                 (unsigned long long)version);
        return ES_NOT_FOUND;
    }
    int rc = ES_OK;
    char what[200];
    snprintf(what, sizeof what, "cannot drop version %llu of table \"%s\"",
             (unsigned long long)version, name);
    if (tv->state == VS_ACTIVE) {
        snprintf(msg, msglen, "version %llu of table \"%s\" is active; activate another version first",
                 (unsigned long long)version, name);
        rc = ES_FAILED_PRECONDITION;
    } else if ((rc = store_disk_check(s, 1, what, msg, msglen)) != ES_OK) {
        /* msg says why */
    } else if (store_write_meta(s, NULL, 0, tv, msg, msglen)) {
        rc = ES_INTERNAL;
    } else {
        pthread_rwlock_wrlock(&s->lock);
        table_entry *e = entry_find(s, name);
        int i = slot_of(e, version);
        table_version *taken = e->v[i];
        entry_remove(e, i);
        pthread_rwlock_unlock(&s->lock);
        __atomic_store_n(&tv->vr->drop, 1, __ATOMIC_RELEASE);
        table_version_release(taken);
        log_info("version_dropped", "table=%s version=%llu", name, (unsigned long long)version);
    }
    table_version_release(tv);
    return rc;
}

int store_drop(store *s, const char *name, uint64_t version, char *msg, size_t msglen)
{
    pthread_mutex_lock(&s->change_lock);
    int rc = store_drop_locked(s, name, version, msg, msglen);
    pthread_mutex_unlock(&s->change_lock);
    return rc;
}
