/* import_tensor.c: what `engramctl import` checks before it streams a
 * file: the shape it expects (from --dim/--dtype, or from a model manifest
 * stored on the server with --manifest/--layer) and, for a .safetensors
 * checkpoint, the chosen tensor against that shape.
 *
 * Everything is checked before the import begins, because a refused file
 * must leave the server untouched and an operator should learn that the
 * tensor is the wrong one from its name and shape, not from the server
 * refusing row 0 of a half-sent stream. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "dtype.h"
#include "manifest.h"
#include "safetensors.h"

int spec_from_manifest(engram_client *cl, const char *model, const char *slayer,
                       import_spec *s)
{
    uint64_t layer;
    if (parse_u64(slayer, "--layer", &layer))
        return EXIT_USAGE;
    int rc = 0;
    engram_manifest *m = fetch_manifest(cl, model, &rc);
    if (!m)
        return rc;
    int li = layer > INT64_MAX ? -1 : eh_layer_index(m->model, (int64_t)layer);
    if (li < 0) {
        manifest_free(m);
        return die_usage("import: layer %llu is not in model %s's layer_ids",
                         (unsigned long long)layer, model);
    }
    snprintf(s->table, sizeof s->table, "%s", m->tables[li]);
    snprintf(s->dtype, sizeof s->dtype, "%s", m->dtype);
    s->dim = m->dim;
    s->rows = m->model->layers[li].total_rows;
    snprintf(s->by, sizeof s->by, "model %s's manifest (layer %llu)", model,
             (unsigned long long)layer);
    manifest_free(m);
    return 0;
}

/* Who asked for a value, for messages: the option, or the manifest. */
static const char *who(const import_spec *s, const char *option)
{
    return s->by[0] == '-' ? option : s->by;
}

/* The tensor's geometry against what the spec asks for; a spec field left
 * empty is taken from the tensor. */
static int tensor_fits(const char *file, const st_tensor *t, const char *dtype,
                       import_spec *s)
{
    uint64_t rows = t->shape[0], dim = t->shape[1];
    if (s->dtype[0] && strcmp(s->dtype, dtype))
        return ctl_fail(ENGRAM_INVALID_ARGUMENT, "%s: tensor \"%s\" is %s (%s); %s says %s", file,
                    t->name, t->dtype, dtype, who(s, "--dtype"), s->dtype);
    if (s->dim && dim != s->dim)
        return ctl_fail(ENGRAM_INVALID_ARGUMENT, "%s: tensor \"%s\" has dim %llu; %s says %u",
                    file, t->name, (unsigned long long)dim, who(s, "--dim"), s->dim);
    if (s->rows && rows != s->rows)
        return ctl_fail(ENGRAM_INVALID_ARGUMENT, "%s: tensor \"%s\" has %llu rows; %s says %llu",
                    file, t->name, (unsigned long long)rows, s->by,
                    (unsigned long long)s->rows);
    if (dtype_row_bytes(dtype, dim) == 0 || dtype_row_bytes(dtype, dim) > UINT32_MAX)
        return ctl_fail(ENGRAM_INVALID_ARGUMENT, "%s: tensor \"%s\": rows of %llu x %s are over "
                    "4 GiB", file, t->name, (unsigned long long)dim, dtype);
    snprintf(s->dtype, sizeof s->dtype, "%s", dtype);
    s->dim = (uint32_t)dim;
    s->rows = rows;
    return 0;
}

/* The tensor must exist, be 2-D and non-empty, and have a type engram
 * stores. */
static int tensor_usable(const char *file, const st_file *f, const char *name,
                         const st_tensor **out, const char **dtype)
{
    const st_tensor *t = st_find(f, name);
    if (!t) {
        char names[1024];
        st_list_names(f, 20, names, sizeof names);
        return ctl_fail(ENGRAM_NOT_FOUND, "%s: no tensor \"%s\"; the file holds %zu: %s", file,
                    name, f->n, f->n ? names : "(none)");
    }
    if (t->ndim != 2 || !t->shape[0] || !t->shape[1]) {
        char sh[200] = "";
        for (int i = 0, o = 0; i < t->ndim && o < (int)sizeof sh; i++)
            o += snprintf(sh + o, sizeof sh - (size_t)o, "%s%llu", i ? ", " : "",
                          (unsigned long long)t->shape[i]);
        return ctl_fail(ENGRAM_INVALID_ARGUMENT, "%s: tensor \"%s\" has shape [%s]; want a "
                    "non-empty 2-D [rows, dim]", file, name, sh);
    }
    if (!(*dtype = st_engram_dtype(t->dtype)))
        return ctl_fail(ENGRAM_INVALID_ARGUMENT, "%s: tensor \"%s\" has dtype %s, which engram "
                    "does not store (supported: %s)", file, name, t->dtype,
                    st_supported_list());
    *out = t;
    return 0;
}

int open_tensor(const char *file, const char *name, import_spec *s, FILE **fpo)
{
    st_file f;
    char err[1024];
    if (st_read_file(file, &f, err, sizeof err))
        return ctl_fail(ENGRAM_INVALID_ARGUMENT, "%s: %s", file, err);
    const st_tensor *t = NULL;
    const char *dtype = NULL;
    int rc = tensor_usable(file, &f, name, &t, &dtype);
    if (!rc)
        rc = tensor_fits(file, t, dtype, s);
    FILE *fp = NULL;
    if (!rc && !(fp = fopen(file, "rb")))
        rc = ctl_fail(ENGRAM_NOT_FOUND, "%s: %s", file, strerror(errno));
    if (!rc && fseeko(fp, (off_t)(f.data_start + t->begin), SEEK_SET) != 0) {
        rc = ctl_fail(ENGRAM_INTERNAL, "%s: %s", file, strerror(errno));
        fclose(fp);
    }
    st_free(&f);
    if (!rc)
        *fpo = fp;
    return rc;
}
