/* stats_reply.c: Admin.Stats, rendered from the metrics registry.
 *
 * The reply names no metric. It collects the registry (metric.h) and
 * follows each metric's Stats path into a StatsResponse, walking
 * protobuf-c's descriptors: sub-messages and keyed elements of repeated
 * fields are made on first use, numbers are added, strings copied. So a
 * metric a module adds with a Stats path shows up here with no edit, and a
 * path that names no field fails the call (INTERNAL, naming the path)
 * rather than being dropped: the integration tests then catch it.
 *
 * Everything in the reply is malloc'd (strings strdup'd, messages made with
 * their descriptor's init), so protobuf_c_message_free_unpacked frees it
 * all with the default allocator. */
#include "stats_reply.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engram/v1/engram.pb-c.h"
#include "grpc_util.h"
#include "metric.h"
#include "status.h"

#define PATH_MAX_LEN 192

typedef struct reply {
    metric_sink sink;
    ProtobufCMessage *root;
    int oom;
    char bad[PATH_MAX_LEN + 64];       /* why the first path failed */
} reply;

static ProtobufCMessage *message_new(const ProtobufCMessageDescriptor *d)
{
    ProtobufCMessage *m = calloc(1, d->sizeof_message);
    if (m)
        d->message_init(m);
    return m;
}

static void *field_at(ProtobufCMessage *m, const ProtobufCFieldDescriptor *f)
{
    return (char *)m + f->offset;
}

static const char *label(const metric_sample *x, const char *name, size_t len)
{
    for (size_t i = 0; i < x->nlabels; i++)
        if (strlen(x->labels[i].name) == len && memcmp(x->labels[i].name, name, len) == 0)
            return x->labels[i].value;
    return NULL;
}

/* [p, p+n) with every $label replaced by its value, into out. -1: a label
 * the sample lacks, or too long. */
static int expand(const char *p, size_t n, const metric_sample *x, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        const char *add = p + i;
        size_t len = 1;
        if (p[i] == '$') {
            size_t j = i + 1;
            while (j < n && (p[j] == '_' || (p[j] >= 'a' && p[j] <= 'z') ||
                             (p[j] >= '0' && p[j] <= '9')))
                j++;
            if (!(add = label(x, p + i + 1, j - i - 1)))
                return -1;
            len = strlen(add);
            i = j;
        } else {
            i++;
        }
        if (o + len >= cap)
            return -1;
        memcpy(out + o, add, len);
        o += len;
    }
    out[o] = 0;
    return 0;
}

static int set_string(ProtobufCMessage *m, const ProtobufCFieldDescriptor *f, const char *v)
{
    char **at = field_at(m, f);
    char *copy = strdup(v);
    if (!copy)
        return -1;
    if (*at && *at != f->default_value)
        free(*at);
    *at = copy;
    return 0;
}

/* Adds a value to a number field (or sets a bool when it is not 0): u to
 * an integer, so counters past 2^53 stay exact, v to a real. -1: not a
 * number. */
static int add_number(ProtobufCMessage *m, const ProtobufCFieldDescriptor *f, uint64_t u,
                      double v)
{
    if (f->label == PROTOBUF_C_LABEL_REPEATED)
        return -1;
    void *at = field_at(m, f);
    switch (f->type) {
    case PROTOBUF_C_TYPE_UINT64: case PROTOBUF_C_TYPE_FIXED64:
        *(uint64_t *)at += u;
        return 0;
    case PROTOBUF_C_TYPE_INT64: case PROTOBUF_C_TYPE_SINT64: case PROTOBUF_C_TYPE_SFIXED64:
        *(int64_t *)at += (int64_t)u;
        return 0;
    case PROTOBUF_C_TYPE_UINT32: case PROTOBUF_C_TYPE_FIXED32:
        *(uint32_t *)at += (uint32_t)u;
        return 0;
    case PROTOBUF_C_TYPE_INT32: case PROTOBUF_C_TYPE_SINT32: case PROTOBUF_C_TYPE_SFIXED32:
        *(int32_t *)at += (int32_t)u;
        return 0;
    case PROTOBUF_C_TYPE_DOUBLE:
        *(double *)at += v;
        return 0;
    case PROTOBUF_C_TYPE_FLOAT:
        *(float *)at += (float)v;
        return 0;
    case PROTOBUF_C_TYPE_BOOL:
        *(protobuf_c_boolean *)at = *(protobuf_c_boolean *)at || u != 0;
        return 0;
    default:
        return -1;
    }
}

/* The sub-message in field f of m, made when absent. */
static ProtobufCMessage *sub_message(ProtobufCMessage *m, const ProtobufCFieldDescriptor *f)
{
    ProtobufCMessage **at = field_at(m, f);
    if (!*at)
        *at = message_new(f->descriptor);
    return *at;
}

/* The element of repeated message field f whose string field `key` is
 * `value`, added when absent (its string fields named like the sample's
 * labels take their values). NULL: out of memory or no such key field. */
static ProtobufCMessage *keyed_element(ProtobufCMessage *m, const ProtobufCFieldDescriptor *f,
                                       const char *key, const char *value,
                                       const metric_sample *x, int *oom)
{
    const ProtobufCMessageDescriptor *d = f->descriptor;
    const ProtobufCFieldDescriptor *kf = protobuf_c_message_descriptor_get_field_by_name(d, key);
    if (!kf || kf->type != PROTOBUF_C_TYPE_STRING)
        return NULL;
    size_t *n = (size_t *)((char *)m + f->quantifier_offset);
    ProtobufCMessage ***arr = field_at(m, f);
    for (size_t i = 0; i < *n; i++)
        if (strcmp(*(char **)field_at((*arr)[i], kf), value) == 0)
            return (*arr)[i];
    ProtobufCMessage **grown = realloc(*arr, (*n + 1) * sizeof *grown);
    ProtobufCMessage *e = grown ? message_new(d) : NULL;
    if (grown)
        *arr = grown;
    if (!e || set_string(e, kf, value) < 0) {
        free(e);   /* not yet in the array; its strings are unset */
        *oom = 1;
        return NULL;
    }
    grown[(*n)++] = e;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *sf = &d->fields[i];
        const char *v;
        if (sf != kf && sf->type == PROTOBUF_C_TYPE_STRING &&
            sf->label != PROTOBUF_C_LABEL_REPEATED &&
            (v = label(x, sf->name, strlen(sf->name))) != NULL && set_string(e, sf, v) < 0)
            *oom = 1;
    }
    return e;
}

/* A histogram's summaries into m's `window` and `total`. */
static int put_summaries(ProtobufCMessage *m, const metric_histogram *h, int *oom)
{
    static const char *const which[2] = {"window", "total"};
    for (int w = 0; w < 2; w++) {
        const metric_summary *s = w ? &h->total : &h->window;
        const ProtobufCFieldDescriptor *f =
            protobuf_c_message_descriptor_get_field_by_name(m->descriptor, which[w]);
        if (!f || f->type != PROTOBUF_C_TYPE_MESSAGE)
            return -1;
        ProtobufCMessage *sm = sub_message(m, f);
        if (!sm) {
            *oom = 1;
            return 0;
        }
        const struct {
            const char *name;
            uint64_t u;
            double v;
        } parts[] = {{"count", s->count, (double)s->count}, {"p50_ms", 0, s->p50_ms},
                     {"p90_ms", 0, s->p90_ms}, {"p99_ms", 0, s->p99_ms},
                     {"p999_ms", 0, s->p999_ms}, {"max_ms", 0, s->max_ms}};
        for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
            const ProtobufCFieldDescriptor *pf =
                protobuf_c_message_descriptor_get_field_by_name(sm->descriptor, parts[i].name);
            if (!pf || add_number(sm, pf, parts[i].u, parts[i].v) < 0)
                return -1;
        }
    }
    return 0;
}

/* The end of the path segment starting at p: the next '.' outside [...]. */
static const char *segment_end(const char *p)
{
    int depth = 0;
    for (; *p; p++) {
        if (*p == '[')
            depth++;
        else if (*p == ']')
            depth--;
        else if (*p == '.' && depth == 0)
            break;
    }
    return p;
}

/* Follows `path` from the root for sample x. 0: applied or skipped; -1:
 * the path names nothing in StatsResponse (r->bad says why). */
static int apply(reply *r, const char *path, const metric_family *fam, const metric_sample *x)
{
    const char *p = path;
    if (*p == '?') {
        if (x->value == 0 && !x->hist)
            return 0;
        p++;
    }
    ProtobufCMessage *m = r->root;
    char name[PATH_MAX_LEN], key[PATH_MAX_LEN], val[PATH_MAX_LEN];
    for (;;) {
        const char *end = segment_end(p);
        int last = *end == 0;
        const char *br = memchr(p, '[', (size_t)(end - p));
        const char *eq = br ? NULL : memchr(p, '=', (size_t)(end - p));
        const char *name_end = br ? br : eq ? eq : end;
        if (expand(p, (size_t)(name_end - p), x, name, sizeof name) < 0)
            goto bad;
        const ProtobufCFieldDescriptor *f =
            protobuf_c_message_descriptor_get_field_by_name(m->descriptor, name);
        if (!f)
            goto bad;
        if (br) {
            /* [key=value] or [key=$label!=skip] */
            const char *close = end - 1, *keq = memchr(br, '=', (size_t)(close - br));
            if (*close != ']' || !keq || f->type != PROTOBUF_C_TYPE_MESSAGE ||
                f->label != PROTOBUF_C_LABEL_REPEATED)
                goto bad;
            const char *ne = strstr(keq, "!=");
            const char *vend = ne && ne < close ? ne : close;
            if (expand(br + 1, (size_t)(keq - br - 1), x, key, sizeof key) < 0 ||
                expand(keq + 1, (size_t)(vend - keq - 1), x, val, sizeof val) < 0)
                goto bad;
            if (vend == ne) {
                size_t sl = (size_t)(close - ne - 2);
                if (strlen(val) == sl && memcmp(val, ne + 2, sl) == 0)
                    return 0;   /* the excluded value */
            }
            m = keyed_element(m, f, key, val, x, &r->oom);
            if (!m)
                return r->oom ? 0 : (snprintf(r->bad, sizeof r->bad, "%s: no string key %s",
                                              path, key), -1);
        } else if (eq) {
            if (!last || f->type != PROTOBUF_C_TYPE_STRING ||
                expand(eq + 1, (size_t)(end - eq - 1), x, val, sizeof val) < 0)
                goto bad;
            if (set_string(m, f, val) < 0)
                r->oom = 1;
            return 0;
        } else if (f->type == PROTOBUF_C_TYPE_MESSAGE && f->label != PROTOBUF_C_LABEL_REPEATED) {
            if (!(m = sub_message(m, f))) {
                r->oom = 1;
                return 0;
            }
        } else {
            if (!last || x->hist)
                goto bad;
            /* scale is Prometheus' unit; Stats keeps the value's own. */
            if (add_number(m, f, x->value, (double)x->value) < 0)
                goto bad;
            return 0;
        }
        if (last) {
            if (!x->hist || put_summaries(m, x->hist, &r->oom) < 0)
                goto bad;
            return 0;
        }
        p = end + 1;
    }
bad:
    snprintf(r->bad, sizeof r->bad, "Stats path %s of %s names no field", path,
             fam->name ? fam->name : "(stats only)");
    return -1;
}

static void on_family(metric_sink *s, const metric_family *f)
{
    (void)s;
    (void)f;
}

static void on_sample(metric_sink *s, const metric_family *f, const metric_sample *x)
{
    reply *r = (reply *)s;
    for (int i = 0; i < 3 && f->stats[i] && !r->bad[0]; i++)
        apply(r, f->stats[i], f, x);
}

int stats_handle(server_call *c, grpc_byte_buffer *req, grpc_byte_buffer **reply_out,
                 char *msg, size_t msglen)
{
    (void)c;
    char why[160] = "no message";
    ProtobufCMessage *rq = pb_unpack(&engram__v1__stats_request__descriptor, req, why, sizeof why);
    if (!rq) {
        snprintf(msg, msglen, "malformed StatsRequest: %s", why);
        return ES_INVALID_ARGUMENT;
    }
    protobuf_c_message_free_unpacked(rq, NULL);
    reply r = {.sink = {on_family, on_sample}};
    if (!(r.root = message_new(&engram__v1__stats_response__descriptor))) {
        snprintf(msg, msglen, "out of memory while building the StatsResponse");
        return ES_RESOURCE_EXHAUSTED;
    }
    metric_collect(&r.sink);
    int code = ES_OK;
    if (r.bad[0]) {
        snprintf(msg, msglen, "%s", r.bad);
        code = ES_INTERNAL;
    } else if (r.oom) {
        snprintf(msg, msglen, "out of memory while building the StatsResponse");
        code = ES_RESOURCE_EXHAUSTED;
    } else {
        *reply_out = pb_to_byte_buffer(r.root);
    }
    protobuf_c_message_free_unpacked(r.root, NULL);
    return code;
}
