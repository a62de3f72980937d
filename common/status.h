/* status.h: the one status convention of engram-store.
 *
 * Codes are the gRPC status codes, numerically equal, so a status travels
 * from server to client unchanged and the client library returns exactly
 * what the server said. ES_OK is 0. */
#ifndef ENGRAM_COMMON_STATUS_H
#define ENGRAM_COMMON_STATUS_H

typedef enum es_code {
    ES_OK = 0,
    ES_CANCELLED = 1,
    ES_UNKNOWN = 2,
    ES_INVALID_ARGUMENT = 3,
    ES_DEADLINE_EXCEEDED = 4,
    ES_NOT_FOUND = 5,
    ES_ALREADY_EXISTS = 6,
    ES_PERMISSION_DENIED = 7,
    ES_RESOURCE_EXHAUSTED = 8,
    ES_FAILED_PRECONDITION = 9,
    ES_ABORTED = 10,
    ES_OUT_OF_RANGE = 11,
    ES_UNIMPLEMENTED = 12,
    ES_INTERNAL = 13,
    ES_UNAVAILABLE = 14,
    ES_DATA_LOSS = 15,
    ES_UNAUTHENTICATED = 16,
} es_code;

/* "OK", "NOT_FOUND", ...; "UNKNOWN_CODE" for values outside 0..16. */
const char *es_code_name(int code);

/* Parses a name as es_code_name prints it; returns -1 when unknown. */
int es_code_parse(const char *name);

#endif
