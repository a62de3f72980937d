/* manifests.c: PutManifest, GetManifest, ListManifests (see manifests.h).
 *
 * A put is refused when the document is invalid (INVALID_ARGUMENT) or when a
 * table it names exists with the wrong geometry (FAILED_PRECONDITION): a
 * client must never hash into a table of another shape. A table that does
 * not exist yet is allowed, so the manifest can be put before its tables
 * are imported (engramctl import-synthetic --manifest works that way); the
 * reply lists it in missing_tables and clients refuse to open the model
 * until it exists. Stored value: a packed engram.v1.Manifest. Puts are
 * serialized so versions increase by exactly one. */
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
static pthread_mutex_t put_lock = PTHREAD_MUTEX_INITIALIZER;

void manifests_setup(store *s)
{
    MS = s;
}

void manifests_teardown(void)
{
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
    pthread_mutex_lock(&put_lock);
    int code = ES_OK;
    if (fill_info(&info, m, &doc, ids, tables, missing, msg, msglen))
        code = ES_FAILED_PRECONDITION;
    else
        code = store_new_version(m, &doc, msg, msglen);
    pthread_mutex_unlock(&put_lock);
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
    Engram__V1__PutManifestRequest *rq = (Engram__V1__PutManifestRequest *)pb_from_byte_buffer(
        &engram__v1__put_manifest_request__descriptor, req);
    if (!rq) {
        snprintf(msg, msglen, "malformed PutManifestRequest");
        return ES_INVALID_ARGUMENT;
    }
    int code = ES_INVALID_ARGUMENT;
    engram_manifest *m = manifest_parse(rq->json, strlen(rq->json), msg, msglen);
    if (m)
        code = put_parsed(m, rq->json, reply, msg, msglen);
    manifest_free(m);
    protobuf_c_message_free_unpacked(&rq->base, NULL);
    return code;
}

int manifests_get(server_call *c, grpc_byte_buffer *req, grpc_byte_buffer **reply,
                  char *msg, size_t msglen)
{
    Engram__V1__GetManifestRequest *rq = (Engram__V1__GetManifestRequest *)pb_from_byte_buffer(
        &engram__v1__get_manifest_request__descriptor, req);
    if (!rq) {
        snprintf(msg, msglen, "malformed GetManifestRequest");
        return ES_INVALID_ARGUMENT;
    }
    int code = ES_OK;
    Engram__V1__Manifest *doc = NULL;
    if (!engram_name_valid(rq->name)) {
        snprintf(msg, msglen, "invalid model name \"%.140s\"", rq->name);
        code = ES_INVALID_ARGUMENT;
    } else if (!(doc = load_doc(rq->name))) {
        snprintf(msg, msglen, "model \"%s\" not found: no manifest of that name", rq->name);
        code = ES_NOT_FOUND;
    } else {
        *reply = pb_to_byte_buffer(&doc->base);
        engram__v1__manifest__free_unpacked(doc, NULL);
    }
    protobuf_c_message_free_unpacked(&rq->base, NULL);
    return code;
}

/* One entry of ListManifests; a stored document that no longer parses or
 * fits its tables is still listed, with what is known and no layers. */
static void list_one(const char *name, Engram__V1__ManifestInfo *info, int64_t *ids,
                     char **tables, char **missing, engram_manifest **keep)
{
    char msg[512];
    Engram__V1__Manifest *doc = load_doc(name);
    engram_manifest *m = doc ? manifest_parse(doc->json, strlen(doc->json), msg, sizeof msg) : NULL;
    engram__v1__manifest_info__init(info);
    if (!m || fill_info(info, m, doc, ids, tables, missing, msg, sizeof msg)) {
        engram__v1__manifest_info__init(info);
        info->name = strdup(name);
        manifest_free(m);
        m = NULL;
    } else {
        info->name = strdup(info->name);
    }
    if (doc) {
        info->version = doc->version;
        info->updated_unix_ms = doc->updated_unix_ms;
        engram__v1__manifest__free_unpacked(doc, NULL);
    }
    *keep = m;
}

int manifests_list(server_call *c, grpc_byte_buffer *req, grpc_byte_buffer **reply,
                   char *msg, size_t msglen)
{
    char **names;
    size_t n = store_doc_list(MS, STORE_DOC_MANIFEST, &names);
    Engram__V1__ManifestInfo *infos = calloc(n + 1, sizeof *infos);
    Engram__V1__ManifestInfo **ptrs = calloc(n + 1, sizeof *ptrs);
    engram_manifest **parsed = calloc(n + 1, sizeof *parsed);
    int64_t (*ids)[EH_MAX_LAYERS] = calloc(n + 1, sizeof *ids);
    char *(*tables)[EH_MAX_LAYERS] = calloc(n + 1, sizeof *tables);
    char *(*missing)[EH_MAX_LAYERS] = calloc(n + 1, sizeof *missing);
    for (size_t i = 0; i < n; i++) {
        list_one(names[i], &infos[i], ids[i], tables[i], missing[i], &parsed[i]);
        ptrs[i] = &infos[i];
    }
    Engram__V1__ListManifestsResponse resp = ENGRAM__V1__LIST_MANIFESTS_RESPONSE__INIT;
    resp.n_manifests = n;
    resp.manifests = ptrs;
    *reply = pb_to_byte_buffer(&resp.base);
    for (size_t i = 0; i < n; i++) {
        free(infos[i].name);
        manifest_free(parsed[i]);
        free(names[i]);
    }
    free(names);
    free(infos);
    free(ptrs);
    free(parsed);
    free(ids);
    free(tables);
    free(missing);
    return ES_OK;
}
