/* manifest.c: Admin.PutManifest, GetManifest and ListManifests for
 * libengram. Thin wrappers over ec_admin_run that copy replies into the
 * public structs. */
#include "client_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void info_from_pb(engram_manifest_info *out, const Engram__V1__ManifestInfo *in)
{
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "%s", in->name ? in->name : "");
    snprintf(out->dtype, sizeof out->dtype, "%s", in->dtype ? in->dtype : "");
    out->version = in->version;
    out->n_layers = (uint32_t)in->n_layer_ids;
    out->dim = in->dim;
    out->row_bytes = in->row_bytes;
    out->updated_unix_ms = in->updated_unix_ms;
    out->n_missing = (uint32_t)in->n_missing_tables;
    size_t len = 0;
    for (size_t i = 0; i < in->n_missing_tables && len < sizeof out->missing_tables; i++)
        len += (size_t)snprintf(out->missing_tables + len, sizeof out->missing_tables - len,
                                "%s%s", i ? "," : "", in->missing_tables[i]);
}

int engram_manifest_put(engram_client *client, const char *json, size_t len,
                        engram_manifest_info *info, engram_error *err)
{
    if (!client || !json)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "client or json is NULL");
    Engram__V1__PutManifestRequest req = ENGRAM__V1__PUT_MANIFEST_REQUEST__INIT;
    req.json = strndup(json, len);   /* protobuf strings are NUL-terminated */
    admin_call a;
    int rc = ec_admin_run(client, client->m_put_manifest, &req.base,
                          &engram__v1__manifest_info__descriptor, &a, err);
    free(req.json);
    if (rc)
        return rc;
    if (info)
        info_from_pb(info, (Engram__V1__ManifestInfo *)a.reply);
    protobuf_c_message_free_unpacked(a.reply, NULL);
    return ENGRAM_OK;
}

int engram_manifest_get(engram_client *client, const char *name, char **json,
                        uint64_t *version, engram_error *err)
{
    if (!client || !name || !json)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "client, name or json is NULL");
    Engram__V1__GetManifestRequest req = ENGRAM__V1__GET_MANIFEST_REQUEST__INIT;
    req.name = (char *)name;
    admin_call a;
    int rc = ec_admin_run(client, client->m_get_manifest, &req.base,
                          &engram__v1__manifest__descriptor, &a, err);
    if (rc)
        return rc;
    Engram__V1__Manifest *m = (Engram__V1__Manifest *)a.reply;
    *json = strdup(m->json);
    if (version)
        *version = m->version;
    protobuf_c_message_free_unpacked(a.reply, NULL);
    return ENGRAM_OK;
}

int engram_manifest_list(engram_client *client, engram_manifest_info **out,
                         size_t *count, engram_error *err)
{
    if (!client || !out || !count)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "client, out or count is NULL");
    *out = NULL;
    *count = 0;
    Engram__V1__ListManifestsRequest req = ENGRAM__V1__LIST_MANIFESTS_REQUEST__INIT;
    admin_call a;
    int rc = ec_admin_run(client, client->m_list_manifests, &req.base,
                          &engram__v1__list_manifests_response__descriptor, &a, err);
    if (rc)
        return rc;
    Engram__V1__ListManifestsResponse *r = (Engram__V1__ListManifestsResponse *)a.reply;
    if (r->n_manifests) {
        *out = calloc(r->n_manifests, sizeof **out);
        for (size_t i = 0; i < r->n_manifests; i++)
            info_from_pb(&(*out)[i], r->manifests[i]);
        *count = r->n_manifests;
    }
    protobuf_c_message_free_unpacked(a.reply, NULL);
    return ENGRAM_OK;
}
