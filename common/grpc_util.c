/* grpc_util.c: see grpc_util.h. */
#include "grpc_util.h"

#include <stdio.h>
#include <string.h>

#include <grpc/byte_buffer_reader.h>
#include <grpc/slice.h>
#include <grpc/support/time.h>
#include <time.h>

grpc_byte_buffer *pb_to_byte_buffer(const ProtobufCMessage *msg)
{
    size_t len = protobuf_c_message_get_packed_size(msg);
    grpc_slice s = grpc_slice_malloc(len);
    protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(s));
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

/* protobuf-c copies a string field and ends it with a NUL, so a name sent
 * as "a\0evil" would read as "a" everywhere after unpacking. The wire
 * bytes are walked once more with the descriptor to find such strings, in
 * nested messages too; anything the walk does not understand was already
 * accepted by protobuf-c and is left to it. Returns 0, or -1 with why. */
static int nul_free(const ProtobufCMessageDescriptor *d, const uint8_t *p, size_t n, int depth,
                    char *why, size_t whylen)
{
    size_t i = 0;
    while (i < n) {
        uint64_t tag = 0, len = 0;
        int shift = 0;
        for (;; shift += 7) {          /* the tag */
            if (i >= n || shift > 63)
                return 0;
            tag |= (uint64_t)(p[i] & 0x7f) << shift;
            if (!(p[i++] & 0x80))
                break;
        }
        switch (tag & 7) {
        case 0:
            while (i < n && (p[i] & 0x80))
                i++;
            i++;
            continue;
        case 1: i += 8; continue;
        case 5: i += 4; continue;
        case 2: break;
        default: return 0;             /* groups: not in proto3 */
        }
        for (shift = 0;; shift += 7) {  /* the length */
            if (i >= n || shift > 63)
                return 0;
            len |= (uint64_t)(p[i] & 0x7f) << shift;
            if (!(p[i++] & 0x80))
                break;
        }
        if (len > n - i)
            return 0;
        const ProtobufCFieldDescriptor *f = tag >> 3 <= UINT32_MAX
            ? protobuf_c_message_descriptor_get_field(d, (unsigned)(tag >> 3)) : NULL;
        if (f && f->type == PROTOBUF_C_TYPE_STRING) {
            const uint8_t *z = memchr(p + i, 0, len);
            if (z) {
                if (why)
                    snprintf(why, whylen, "string field %s.%s contains a NUL byte at offset %zu",
                             d->short_name, f->name, (size_t)(z - (p + i)));
                return -1;
            }
        } else if (f && f->type == PROTOBUF_C_TYPE_MESSAGE && depth < 32 &&
                   nul_free(f->descriptor, p + i, len, depth + 1, why, whylen)) {
            return -1;
        }
        i += len;
    }
    return 0;
}

ProtobufCMessage *pb_unpack(const ProtobufCMessageDescriptor *desc, grpc_byte_buffer *bb,
                            char *why, size_t whylen)
{
    grpc_byte_buffer_reader r;
    if (why && whylen)
        why[0] = 0;
    if (!bb || !grpc_byte_buffer_reader_init(&r, bb)) {
        if (why)
            snprintf(why, whylen, "no %s message", desc->name);
        return NULL;
    }
    grpc_slice all = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    const uint8_t *p = GRPC_SLICE_START_PTR(all);
    size_t n = GRPC_SLICE_LENGTH(all);
    ProtobufCMessage *m = protobuf_c_message_unpack(desc, NULL, n, p);
    if (!m) {
        if (why)
            snprintf(why, whylen, "not a valid %s message", desc->name);
    } else if (nul_free(desc, p, n, 0, why, whylen)) {
        protobuf_c_message_free_unpacked(m, NULL);
        m = NULL;
    }
    grpc_slice_unref(all);
    return m;
}

ProtobufCMessage *pb_from_byte_buffer(const ProtobufCMessageDescriptor *desc,
                                      grpc_byte_buffer *bb)
{
    return pb_unpack(desc, bb, NULL, 0);
}

gpr_timespec deadline_in_ms(int64_t ms)
{
    if (ms <= 0)
        return gpr_inf_future(GPR_CLOCK_REALTIME);
    return gpr_time_add(gpr_now(GPR_CLOCK_REALTIME),
                        gpr_time_from_millis(ms, GPR_TIMESPAN));
}

int64_t ms_until(gpr_timespec deadline)
{
    gpr_timespec d = gpr_convert_clock_type(deadline, GPR_CLOCK_REALTIME);
    if (gpr_time_cmp(d, gpr_inf_future(GPR_CLOCK_REALTIME)) == 0)
        return INT64_MAX;
    gpr_timespec left = gpr_time_sub(d, gpr_now(GPR_CLOCK_REALTIME));
    return gpr_time_to_millis(left);
}

void message_size_args(grpc_arg args[2], int max_message_bytes)
{
    args[0].type = GRPC_ARG_INTEGER;
    args[0].key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    args[0].value.integer = max_message_bytes;
    args[1].type = GRPC_ARG_INTEGER;
    args[1].key = GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
    args[1].value.integer = max_message_bytes;
}

uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
