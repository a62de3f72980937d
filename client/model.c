/* model.c: opening a model (manifest fetched from the server, hashing state
 * derived, every layer's table checked) and hashing token ids into row
 * ids. The background worker of asynchronous prefetches is prefetch.c's.
 *
 * The tables are checked at open so that a client never hashes into a
 * table of another shape: a wrong row count would silently read the wrong
 * rows, which is worse than failing. */
#include "client_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int check_layer_table(engram_model *m, int li, engram_error *err)
{
    engram_table_info ti;
    engram_error e;
    const char *t = m->man->tables[li];
    long long lid = (long long)m->man->model->layers[li].layer_id;
    int rc = engram_table_get(m->client, t, &ti, &e);
    if (rc == ENGRAM_NOT_FOUND)
        return ec_error(err, ENGRAM_FAILED_PRECONDITION,
                        "model %s: table \"%s\" of layer %lld is missing on the server",
                        m->man->name, t, lid);
    if (rc)
        return ec_error(err, rc, "model %s: table \"%s\": %s", m->man->name, t, e.message);
    char why[400];
    if (manifest_check_table(m->man, li, ti.rows, ti.row_bytes, ti.dim, ti.dtype, why, sizeof why))
        return ec_error(err, ENGRAM_FAILED_PRECONDITION, "model %s: %s", m->man->name, why);
    return ENGRAM_OK;
}

static int load_manifest(engram_model *m, const char *name, engram_error *err)
{
    char *json = NULL;
    int rc = engram_manifest_get(m->client, name, &json, &m->manifest_version, err);
    if (rc)
        return rc;
    char why[512];
    m->man = manifest_parse(json, strlen(json), why, sizeof why);
    free(json);
    if (!m->man)
        return ec_error(err, ENGRAM_FAILED_PRECONDITION, "model %s: stored %s", name, why);
    return ENGRAM_OK;
}

int engram_model_open(engram_client *client, const char *name, engram_model **out,
                      engram_error *err)
{
    if (!client || !name || !out)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "client, name or out is NULL");
    engram_model *m = calloc(1, sizeof *m);
    m->client = client;
    pthread_mutex_init(&m->mu, NULL);
    pthread_cond_init(&m->cv, NULL);
    int rc = load_manifest(m, name, err);
    for (int li = 0; rc == ENGRAM_OK && li < m->man->model->n_layers; li++)
        rc = check_layer_table(m, li, err);
    if (rc) {
        engram_model_close(m);
        return rc;
    }
    *out = m;
    return ec_ok(err);
}

size_t engram_model_tp_heads(const engram_model *m, uint32_t tp, uint32_t rank, uint32_t *heads,
                             size_t cap)
{
    if (!m || tp == 0 || rank >= tp)
        return 0;
    uint32_t all = (uint32_t)m->man->model->heads;
    uint32_t per = (all + tp - 1) / tp;               /* cdiv, as vLLM shards */
    uint64_t first = (uint64_t)rank * per;
    if (first >= all)
        return 0;
    uint32_t n = all - (uint32_t)first < per ? all - (uint32_t)first : per;
    if (heads)
        for (uint32_t i = 0; i < n && i < cap; i++)
            heads[i] = (uint32_t)first + i;
    return n;
}

void engram_model_get_info(const engram_model *m, engram_model_info *out)
{
    const eh_model *h = m->man->model;
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "%s", m->man->name);
    snprintf(out->dtype, sizeof out->dtype, "%s", m->man->dtype);
    out->manifest_version = m->manifest_version;
    out->n_layers = (uint32_t)h->n_layers;
    for (int i = 0; i < h->n_layers; i++)
        out->layer_ids[i] = h->layers[i].layer_id;
    out->max_ngram = (uint32_t)h->max_ngram;
    out->heads = (uint32_t)h->heads;
    out->dim = m->man->dim;
    out->row_bytes = m->man->row_bytes;
    out->pad_id = m->man->pad_id;
}

int engram_model_hash(const engram_model *m, int64_t layer_id, const int64_t *tokens,
                      size_t batch, size_t seq_len, const int64_t *history,
                      uint64_t *rows_out, engram_error *err)
{
    if (!m || !tokens || !rows_out)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "model, tokens or rows_out is NULL");
    int li = eh_layer_index(m->man->model, layer_id);
    if (li < 0)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "layer %lld is not a layer of model %s",
                        (long long)layer_id, m->man->name);
    char why[400];
    if (eh_hash(m->man->model, li, tokens, batch, seq_len, history, rows_out, why, sizeof why))
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "%s", why);
    return ec_ok(err);
}

void engram_model_close(engram_model *m)
{
    if (!m)
        return;
    ec_model_stop_worker(m);
    manifest_free(m->man);
    pthread_cond_destroy(&m->cv);
    pthread_mutex_destroy(&m->mu);
    free(m);
}
