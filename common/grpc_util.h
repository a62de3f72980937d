/* grpc_util.h: small helpers over the gRPC core C API used by both the
 * server and the client: byte buffers to and from protobuf-c messages,
 * deadlines, channel/server arguments. */
#ifndef ENGRAM_COMMON_GRPC_UTIL_H
#define ENGRAM_COMMON_GRPC_UTIL_H

#include <grpc/grpc.h>
#include <protobuf-c/protobuf-c.h>
#include <stdint.h>

/* Packs a protobuf-c message into a new byte buffer (one slice). */
grpc_byte_buffer *pb_to_byte_buffer(const ProtobufCMessage *msg);

/* Unpacks a received byte buffer. NULL when it is malformed or when a
 * string field (at any depth) holds a NUL byte, which the unpacked C string
 * would silently cut; then `why` (if not NULL) says which, e.g. "string
 * field ImportHeader.table contains a NUL byte at offset 1". Free with
 * protobuf_c_message_free_unpacked. The buffer is not consumed. */
ProtobufCMessage *pb_unpack(const ProtobufCMessageDescriptor *desc, grpc_byte_buffer *bb,
                            char *why, size_t whylen);
/* pb_unpack without the reason. */
ProtobufCMessage *pb_from_byte_buffer(const ProtobufCMessageDescriptor *desc,
                                      grpc_byte_buffer *bb);

/* Absolute realtime deadline `ms` from now; infinite when ms <= 0. */
gpr_timespec deadline_in_ms(int64_t ms);

/* Milliseconds from now until `deadline` (negative when past). */
int64_t ms_until(gpr_timespec deadline);

/* Channel/server arguments every engram endpoint sets explicitly: the
 * max send/receive message sizes (gRPC's 4 MiB default is too small for
 * one 65536-row batch). `args` must have room for 2 entries. */
void message_size_args(grpc_arg args[2], int max_message_bytes);

/* Monotonic clock in nanoseconds. */
uint64_t now_ns(void);

#endif
