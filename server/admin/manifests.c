/* manifests.c: PutManifest, GetManifest, ListManifests (see manifests.h).
 *
 * A put is refused when the document is invalid (INVALID_ARGUMENT) or when a
 * table it names exists with the wrong geometry (FAILED_PRECONDITION): a
 * client must never hash into a table of another shape. A table that does
 * not exist yet is allowed, so the manifest can be put before its tables
 * are imported (engramctl import-synthetic --manifest works that way); the
 * reply lists it in missing_tables and clients refuse to open the model
 * until it exists. Stored value: a packed engram.v1.Manifest. Puts are
 * serialized so versions increase by exactly one. A document over
 * --max-manifest-bytes (default 8 MiB; DeepSeek-V4.1's, with its ~129k-entry
 * compression lookup_table, is ~1 MB) is refused RESOURCE_EXHAUSTED.
 *
 * Cost on the data plane: GetManifest and ListManifests are PLANE_ANY
 * (workers open models with GetManifest on the data listener), so they run
 * on data-plane threads next to Lookups and must stay cheap whatever is
 * stored. GetManifest replies with the stored bytes as they are (they are
 * the packed reply): one RocksDB read, no parse, no re-pack. ListManifests
 * never reads or parses a document: it answers from summaries (name,
 * layers, tables, geometry, version) parsed once, at the put and at start-up,
 * and only checks the tables against the registry. It used to parse every
 * document on every call: one 45 MB manifest and 6 parallel calls took the
 * server to 2.38 GB RSS and a Lookup from 2 ms to 3.9 s. */
#include "manifests.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engram/v1/engram.pb-c.h"
#include "grpc_util.h"
#include "log.h"
#include "manifest.h"
#include "names.h"
#include "status.h"

static store *MS;
static uint64_t max_bytes;
static pthread_mutex_t put_lock = PTHREAD_MUTEX_INITIALIZER;

/* What ListManifests tells of a stored document. n_layers 0: the document
 * no longer parses (it is listed with its name and version only). */
typedef struct summary {
    char name[MANIFEST_NAME_MAX + 1];
    uint64_t version, updated_unix_ms;
    int n_layers;
    int64_t layer_ids[EH_MAX_LAYERS];
    uint64_t total_rows[EH_MAX_LAYERS];
    char tables[EH_MAX_LAYERS][MANIFEST_NAME_MAX + 1];
    uint32_t dim, row_bytes;
    char dtype[16];
} summary;

/* Sorted by name, like the store's document list. */
static pthread_rwlock_t sum_lock = PTHREAD_RWLOCK_INITIALIZER;
static summary **sums;
static size_t nsums, capsums;

static void summary_from(summary *sm, const char *name, const engram_manifest *m,
                         uint64_t version, uint64_t updated_unix_ms)
{
    memset(sm, 0, sizeof *sm);
    snprintf(sm->name, sizeof sm->name, "%s", name);
    sm->version = version;
    sm->updated_unix_ms = updated_unix_ms;
    if (!m)
        return;
    sm->n_layers = m->model->n_layers;
    for (int li = 0; li < sm->n_layers; li++) {
        sm->layer_ids[li] = m->model->layers[li].layer_id;
        sm->total_rows[li] = m->model->layers[li].total_rows;
        snprintf(sm->tables[li], sizeof sm->tables[li], "%s", m->tables[li]);
    }
    sm->dim = m->dim;
    sm->row_bytes = m->row_bytes;
    snprintf(sm->dtype, sizeof sm->dtype, "%s", m->dtype);
}

/* Puts sm (taken) in place of the summary of the same name, or inserts it.
 * Returns -1 when memory runs out (sm freed; the document is stored and
 * will be listed after a restart). */
static int summary_put(summary *sm)
{
    pthread_rwlock_wrlock(&sum_lock);
    size_t i = 0;
    while (i < nsums && strcmp(sums[i]->name, sm->name) < 0)
        i++;
    int rc = 0;
    if (i < nsums && strcmp(sums[i]->name, sm->name) == 0) {
        free(sums[i]);
        sums[i] = sm;
    } else {
        if (nsums == capsums) {
            size_t cap = capsums ? capsums * 2 : 8;
            summary **v = realloc(sums, cap * sizeof *v);
            if (v) {
                sums = v;
                capsums = cap;
            }
        }
        if (nsums < capsums) {
            memmove(&sums[i + 1], &sums[i], (nsums - i) * sizeof *sums);
            sums[i] = sm;
            nsums++;
        } else {
            free(sm);
            rc = -1;
        }
    }
    pthread_rwlock_unlock(&sum_lock);
    return rc;
}

static Engram__V1__Manifest *load_doc(const char *name);

/* Parses every stored document once, so no call has to. */
static void load_summaries(void)
{
    char **names;
    size_t n = store_doc_list(MS, STORE_DOC_MANIFEST, &names);
    for (size_t i = 0; i < n; i++) {
        char msg[512];
        Engram__V1__Manifest *doc = load_doc(names[i]);
        engram_manifest *m = doc ? manifest_parse(doc->json, strlen(doc->json), msg, sizeof msg) : NULL;
        if (doc && !m)
            log_warn("manifest_unparsable", "model=%s error=\"%s\"", names[i], msg);
        summary *sm = malloc(sizeof *sm);
        if (sm) {
            summary_from(sm, names[i], m, doc ? doc->version : 0, doc ? doc->updated_unix_ms : 0);
            sm = summary_put(sm) ? NULL : sm;
        }
        if (!sm)
            log_error("manifest_summary_failed", "model=%s error=\"out of memory\"", names[i]);
        manifest_free(m);
        if (doc)
            engram__v1__manifest__free_unpacked(doc, NULL);
        free(names[i]);
    }
    free(names);
}

void manifests_setup(store *s, uint64_t max_manifest_bytes)
{
    MS = s;
    max_bytes = max_manifest_bytes;
    load_summaries();
}

void manifests_teardown(void)
{
    pthread_rwlock_wrlock(&sum_lock);
    for (size_t i = 0; i < nsums; i++)
        free(sums[i]);
    free(sums);
    sums = NULL;
    nsums = capsums = 0;
    pthread_rwlock_unlock(&sum_lock);
    MS = NULL;
}

static Engram__V1__Manifest *load_doc(const char *name)
{
    size_t len;
    char *v = store_doc_get(MS, STORE_DOC_MANIFEST, name, &len);
    if (!v)
        return NULL;
    Engram__V1__Manifest *m = engram__v1__manifest__unpack(NULL, len, (uint8_t *)v);
    free(v);
    return m;
}

/* Checks every table the manifest names that exists; collects the others. */
static int check_tables(const engram_manifest *m, char **missing, size_t *nmissing,
                        char *msg, size_t msglen)
{
    *nmissing = 0;
    for (int li = 0; li < m->model->n_layers; li++) {
        table_version *tv = store_acquire(MS, m->tables[li], 0);
        if (!tv) {
            missing[(*nmissing)++] = (char *)m->tables[li];
            continue;
        }
        int rc = manifest_check_table(m, li, tv->rows, tv->row_bytes, tv->dim, tv->dtype,
                                      msg, msglen);
        table_version_release(tv);
        if (rc)
            return -1;
    }
    return 0;
}

/* Fills info from a parsed manifest; pointers borrow from m and the arrays
 * passed in (sized EH_MAX_LAYERS). */
static int fill_info(Engram__V1__ManifestInfo *info, const engram_manifest *m,
                     const Engram__V1__Manifest *doc, int64_t *ids, char **tables,
                     char **missing, char *msg, size_t msglen)
{
    engram__v1__manifest_info__init(info);
    size_t nmissing = 0;
    if (check_tables(m, missing, &nmissing, msg, msglen))
        return -1;
    for (int li = 0; li < m->model->n_layers; li++) {
        ids[li] = m->model->layers[li].layer_id;
        tables[li] = (char *)m->tables[li];
    }
    info->name = (char *)m->name;
    info->n_layer_ids = info->n_tables = (size_t)m->model->n_layers;
    info->layer_ids = ids;
    info->tables = tables;
    info->n_missing_tables = nmissing;
    info->missing_tables = missing;
    info->dim = m->dim;
    info->row_bytes = m->row_bytes;
    info->dtype = (char *)m->dtype;
    info->version = doc->version;
    info->updated_unix_ms = doc->updated_unix_ms;
    return 0;
}

static uint64_t unix_ms_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static int store_new_version(engram_manifest *m, Engram__V1__Manifest *doc,
                             char *msg, size_t msglen)
{
    Engram__V1__Manifest *old = load_doc(m->name);
    doc->version = old ? old->version + 1 : 1;
    if (old)
        engram__v1__manifest__free_unpacked(old, NULL);
    doc->updated_unix_ms = unix_ms_now();
    size_t len = engram__v1__manifest__get_packed_size(doc);
    uint8_t *buf = malloc(len);
    if (!buf) {
        snprintf(msg, msglen, "out of memory storing manifest \"%s\" (%zu bytes)", m->name, len);
        return ES_RESOURCE_EXHAUSTED;
    }
    engram__v1__manifest__pack(doc, buf);
    int rc = store_doc_put(MS, STORE_DOC_MANIFEST, m->name, buf, len, msg, msglen);
    free(buf);
    return rc;
}

static int put_parsed(engram_manifest *m, const char *json, grpc_byte_buffer **reply,
                      char *msg, size_t msglen)
{
    Engram__V1__Manifest doc = ENGRAM__V1__MANIFEST__INIT;
    doc.name = m->name;
    doc.json = (char *)json;
    Engram__V1__ManifestInfo info;
    int64_t ids[EH_MAX_LAYERS];
    char *tables[EH_MAX_LAYERS], *missing[EH_MAX_LAYERS];
    summary *sm = malloc(sizeof *sm);
    if (!sm) {
        snprintf(msg, msglen, "out of memory storing manifest \"%s\"", m->name);
        return ES_RESOURCE_EXHAUSTED;
    }
    pthread_mutex_lock(&put_lock);
    int code = ES_OK;
    if (fill_info(&info, m, &doc, ids, tables, missing, msg, msglen))
        code = ES_FAILED_PRECONDITION;
    else
        code = store_new_version(m, &doc, msg, msglen);
    if (code == ES_OK) {         /* under put_lock: summaries follow puts in order */
        summary_from(sm, m->name, m, doc.version, doc.updated_unix_ms);
        if (summary_put(sm))
            log_error("manifest_summary_failed", "model=%s error=\"out of memory\"", m->name);
        sm = NULL;
    }
    pthread_mutex_unlock(&put_lock);
    free(sm);
    if (code != ES_OK)
        return code;
    info.version = doc.version;
    info.updated_unix_ms = doc.updated_unix_ms;
    *reply = pb_to_byte_buffer(&info.base);
    log_info("manifest_put", "model=%s version=%llu layers=%d missing_tables=%zu", m->name,
             (unsigned long long)doc.version, m->model->n_layers, info.n_missing_tables);
    return ES_OK;
}

int manifests_put(server_call *c, grpc_byte_buffer *req, grpc_byte_buffer **reply,
                  char *msg, size_t msglen)
{
    char why[160] = "no message";
    Engram__V1__PutManifestRequest *rq = (Engram__V1__PutManifestRequest *)pb_unpack(
        &engram__v1__put_manifest_request__descriptor, req, why, sizeof why);
    if (!rq) {
        snprintf(msg, msglen, "malformed PutManifestRequest: %s", why);
        return ES_INVALID_ARGUMENT;
    }
    int code = ES_INVALID_ARGUMENT;
    size_t len = strlen(rq->json);
    engram_manifest *m = NULL;
    if (max_bytes && len > max_bytes) {
        snprintf(msg, msglen, "manifest of %zu bytes is over the limit of %llu bytes "
                 "(--max-manifest-bytes)", len, (unsigned long long)max_bytes);
        code = ES_RESOURCE_EXHAUSTED;
    } else if ((m = manifest_parse(rq->json, len, msg, msglen)) != NULL) {
        code = put_parsed(m, rq->json, reply, msg, msglen);
    }
    manifest_free(m);
    protobuf_c_message_free_unpacked(&rq->base, NULL);
    return code;
}

int manifests_get(server_call *c, grpc_byte_buffer *req, grpc_byte_buffer **reply,
                  char *msg, size_t msglen)
{
    char why[160] = "no message";
    Engram__V1__GetManifestRequest *rq = (Engram__V1__GetManifestRequest *)pb_unpack(
        &engram__v1__get_manifest_request__descriptor, req, why, sizeof why);
    if (!rq) {
        snprintf(msg, msglen, "malformed GetManifestRequest: %s", why);
        return ES_INVALID_ARGUMENT;
    }
    int code = ES_OK;
    size_t len;
    char *v = NULL;
    if (!engram_name_valid(rq->name)) {
        snprintf(msg, msglen, "invalid model name \"%.140s\"", rq->name);
        code = ES_INVALID_ARGUMENT;
    } else if (!(v = store_doc_get(MS, STORE_DOC_MANIFEST, rq->name, &len))) {
        snprintf(msg, msglen, "model \"%s\" not found: no manifest of that name", rq->name);
        code = ES_NOT_FOUND;
    } else {
        /* The stored value is the packed Manifest: sent as it is, the
         * slice taking the buffer RocksDB malloc'd (no copy). */
        grpc_slice sl = grpc_slice_new(v, len, free);
        *reply = grpc_raw_byte_buffer_create(&sl, 1);
        grpc_slice_unref(sl);
    }
    protobuf_c_message_free_unpacked(&rq->base, NULL);
    return code;
}

/* Checks the tables of a summary against the registry (as check_tables
 * does for a parsed manifest); collects the missing ones. */
static int check_summary(const summary *sm, char **missing, size_t *nmissing)
{
    *nmissing = 0;
    for (int li = 0; li < sm->n_layers; li++) {
        table_version *tv = store_acquire(MS, sm->tables[li], 0);
        if (!tv) {
            missing[(*nmissing)++] = (char *)sm->tables[li];
            continue;
        }
        int bad = tv->rows != sm->total_rows[li] || strcmp(tv->dtype, sm->dtype) != 0 ||
                  tv->dim != sm->dim || tv->row_bytes != sm->row_bytes;
        table_version_release(tv);
        if (bad)
            return -1;
    }
    return 0;
}

/* One entry of ListManifests; a stored document that no longer parses or
 * fits its tables is still listed, with what is known and no layers.
 * Strings borrow from the summary (sum_lock held until packed). */
static void list_one(const summary *sm, Engram__V1__ManifestInfo *info, int64_t *ids,
                     char **tables, char **missing)
{
    engram__v1__manifest_info__init(info);
    info->name = (char *)sm->name;
    info->version = sm->version;
    info->updated_unix_ms = sm->updated_unix_ms;
    size_t nmissing;
    if (sm->n_layers == 0 || check_summary(sm, missing, &nmissing))
        return;
    for (int li = 0; li < sm->n_layers; li++) {
        ids[li] = sm->layer_ids[li];
        tables[li] = (char *)sm->tables[li];
    }
    info->n_layer_ids = info->n_tables = (size_t)sm->n_layers;
    info->layer_ids = ids;
    info->tables = tables;
    info->n_missing_tables = nmissing;
    info->missing_tables = missing;
    info->dim = sm->dim;
    info->row_bytes = sm->row_bytes;
    info->dtype = (char *)sm->dtype;
}

int manifests_list(server_call *c, grpc_byte_buffer *req, grpc_byte_buffer **reply,
                   char *msg, size_t msglen)
{
    pthread_rwlock_rdlock(&sum_lock);
    size_t n = nsums;
    Engram__V1__ManifestInfo *infos = calloc(n + 1, sizeof *infos);
    Engram__V1__ManifestInfo **ptrs = calloc(n + 1, sizeof *ptrs);
    int64_t (*ids)[EH_MAX_LAYERS] = calloc(n + 1, sizeof *ids);
    char *(*tables)[EH_MAX_LAYERS] = calloc(n + 1, sizeof *tables);
    char *(*missing)[EH_MAX_LAYERS] = calloc(n + 1, sizeof *missing);
    int code = ES_OK;
    if (!infos || !ptrs || !ids || !tables || !missing) {
        snprintf(msg, msglen, "out of memory listing %zu manifests", n);
        code = ES_RESOURCE_EXHAUSTED;
    } else {
        for (size_t i = 0; i < n; i++) {
            list_one(sums[i], &infos[i], ids[i], tables[i], missing[i]);
            ptrs[i] = &infos[i];
        }
        Engram__V1__ListManifestsResponse resp = ENGRAM__V1__LIST_MANIFESTS_RESPONSE__INIT;
        resp.n_manifests = n;
        resp.manifests = ptrs;
        *reply = pb_to_byte_buffer(&resp.base);
    }
    pthread_rwlock_unlock(&sum_lock);
    free(infos);
    free(ptrs);
    free(ids);
    free(tables);
    free(missing);
    return code;
}
