/* stats.c: Admin.Stats as JSON, and Admin.SetLogLevel.
 *
 * Stats is an ordinary admin call (ec_admin_run); its reply is turned into
 * JSON by walking protobuf-c's descriptors rather than by hand, so a field
 * added to StatsResponse shows up in the document without a change here.
 * Keys are the proto field names; 64-bit counters stay JSON integers (a
 * value past INT64_MAX, which no counter reaches, becomes a real). */
#include "client_internal.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static json_t *message_json(const ProtobufCMessage *m);

static json_t *u64_json(uint64_t v)
{
    return v <= (uint64_t)INT64_MAX ? json_integer((json_int_t)v) : json_real((double)v);
}

/* One value of field f stored at p (an element of a repeated field, or the
 * field itself). Bytes, which StatsResponse has none of, become null. */
static json_t *value_json(const ProtobufCFieldDescriptor *f, const void *p)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32: case PROTOBUF_C_TYPE_SINT32: case PROTOBUF_C_TYPE_SFIXED32:
        return json_integer(*(const int32_t *)p);
    case PROTOBUF_C_TYPE_UINT32: case PROTOBUF_C_TYPE_FIXED32:
        return json_integer(*(const uint32_t *)p);
    case PROTOBUF_C_TYPE_INT64: case PROTOBUF_C_TYPE_SINT64: case PROTOBUF_C_TYPE_SFIXED64:
        return json_integer((json_int_t)*(const int64_t *)p);
    case PROTOBUF_C_TYPE_UINT64: case PROTOBUF_C_TYPE_FIXED64:
        return u64_json(*(const uint64_t *)p);
    case PROTOBUF_C_TYPE_FLOAT:
        return json_real(*(const float *)p);
    case PROTOBUF_C_TYPE_DOUBLE:
        return json_real(*(const double *)p);
    case PROTOBUF_C_TYPE_BOOL:
        return json_boolean(*(const protobuf_c_boolean *)p);
    case PROTOBUF_C_TYPE_ENUM: {
        const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(
            f->descriptor, *(const int *)p);
        return ev ? json_string(ev->name) : json_integer(*(const int *)p);
    }
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(char *const *)p;
        json_t *j = json_string(s ? s : "");
        return j ? j : json_string("(invalid UTF-8)");
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *sub = *(const ProtobufCMessage *const *)p;
        return sub ? message_json(sub) : json_null();
    }
    default:
        return json_null();
    }
}

static size_t value_size(const ProtobufCFieldDescriptor *f)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT64: case PROTOBUF_C_TYPE_SINT64: case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64: case PROTOBUF_C_TYPE_FIXED64:
        return 8;
    case PROTOBUF_C_TYPE_DOUBLE:
        return sizeof(double);
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_STRING: case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(void *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    default:
        return 4;
    }
}

static json_t *field_json(const ProtobufCMessage *m, const ProtobufCFieldDescriptor *f)
{
    const char *base = (const char *)m;
    if (f->label != PROTOBUF_C_LABEL_REPEATED)
        return value_json(f, base + f->offset);
    size_t n = *(const size_t *)(base + f->quantifier_offset);
    const char *arr = *(const char *const *)(base + f->offset);
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++)
        json_array_append_new(a, value_json(f, arr + i * value_size(f)));
    return a;
}

static json_t *message_json(const ProtobufCMessage *m)
{
    const ProtobufCMessageDescriptor *d = m->descriptor;
    json_t *o = json_object();
    for (unsigned i = 0; o && i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
            *(const uint32_t *)((const char *)m + f->quantifier_offset) != f->id)
            continue;
        json_object_set_new(o, f->name, field_json(m, f));
    }
    return o;
}

int engram_stats_json(engram_client *client, char **json, engram_error *err)
{
    if (!client)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "client is NULL");
    if (!json)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "json is NULL");
    *json = NULL;
    Engram__V1__StatsRequest req = ENGRAM__V1__STATS_REQUEST__INIT;
    admin_call a;
    int rc = ec_admin_run(client, client->m_stats, &req.base,
                          &engram__v1__stats_response__descriptor, &a, err);
    if (rc)
        return rc;
    json_t *doc = message_json(a.reply);
    protobuf_c_message_free_unpacked(a.reply, NULL);
    char *s = doc ? json_dumps(doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10))
                  : NULL;
    json_decref(doc);
    if (!s)
        return ec_error(err, ENGRAM_RESOURCE_EXHAUSTED, "out of memory for the stats JSON document");
    *json = s;   /* jansson allocates with malloc: engram_free frees it */
    return ec_ok(err);
}

int engram_set_log_level(engram_client *client, const char *level, char *previous,
                         size_t prev_cap, engram_error *err)
{
    if (!client)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "client is NULL");
    if (!level || !*level)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT,
                        "log level is empty (want debug, info, warn or error)");
    if (!previous && prev_cap)
        return ec_error(err, ENGRAM_INVALID_ARGUMENT, "previous is NULL but prev_cap is %zu",
                        prev_cap);
    Engram__V1__SetLogLevelRequest req = ENGRAM__V1__SET_LOG_LEVEL_REQUEST__INIT;
    req.level = (char *)level; /* only read by pack */
    admin_call a;
    int rc = ec_admin_run(client, client->m_set_log_level, &req.base,
                          &engram__v1__set_log_level_response__descriptor, &a, err);
    if (rc)
        return rc;
    const Engram__V1__SetLogLevelResponse *r = (const Engram__V1__SetLogLevelResponse *)a.reply;
    if (prev_cap)
        snprintf(previous, prev_cap, "%s", r->previous ? r->previous : "");
    protobuf_c_message_free_unpacked(a.reply, NULL);
    return ec_ok(err);
}
