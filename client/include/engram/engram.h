/* engram.h: libengram, the client library of engram-store.
 *
 * This header is the contract. Conventions, for every function:
 *
 *  - Return value: an engram status code (0 = ENGRAM_OK), numerically equal
 *    to the gRPC status code the server or the transport produced. Local
 *    argument errors are ENGRAM_INVALID_ARGUMENT.
 *  - Error detail: every call that can fail takes `engram_error *err`; when
 *    non-NULL it is filled with the code and a message naming the bad value
 *    (the server's message when the server refused). NULL is allowed.
 *  - Ownership: the caller owns every buffer it passes in; the library never
 *    keeps a pointer to caller memory past the call, except the output
 *    buffer of an asynchronous lookup, which must stay valid until the
 *    lookup is finished (wait returned non-TIMEOUT, poll returned done, or
 *    it was freed).
 *  - Thread safety: an engram_client may be used from any number of threads
 *    at once. An engram_lookup (async handle) and an engram_import belong to
 *    one thread at a time.
 *
 * The library calls grpc_init() in engram_client_open and grpc_shutdown()
 * in engram_client_close; it keeps no other global state. */
#ifndef ENGRAM_ENGRAM_H
#define ENGRAM_ENGRAM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes: the gRPC codes. */
#define ENGRAM_OK 0
#define ENGRAM_CANCELLED 1
#define ENGRAM_UNKNOWN 2
#define ENGRAM_INVALID_ARGUMENT 3
#define ENGRAM_DEADLINE_EXCEEDED 4
#define ENGRAM_NOT_FOUND 5
#define ENGRAM_ALREADY_EXISTS 6
#define ENGRAM_PERMISSION_DENIED 7
#define ENGRAM_RESOURCE_EXHAUSTED 8
#define ENGRAM_FAILED_PRECONDITION 9
#define ENGRAM_ABORTED 10
#define ENGRAM_OUT_OF_RANGE 11
#define ENGRAM_UNIMPLEMENTED 12
#define ENGRAM_INTERNAL 13
#define ENGRAM_UNAVAILABLE 14
#define ENGRAM_DATA_LOSS 15
#define ENGRAM_UNAUTHENTICATED 16
/* Not a gRPC code: engram_lookup_wait's timeout passed, the call goes on. */
#define ENGRAM_TIMEOUT 100

typedef struct engram_error {
    int code;
    char message[512];
} engram_error;

/* "OK", "NOT_FOUND", ..., "TIMEOUT". Static string; thread-safe. */
const char *engram_status_name(int code);

/* ---- client ------------------------------------------------------------ */

typedef struct engram_client engram_client;

typedef struct engram_client_options {
    /* Deadline of every call, in milliseconds; <= 0: none. Default 10000. */
    int64_t deadline_ms;
    /* Max message size sent and received, bytes. Default 64 MiB. */
    int32_t max_message_bytes;
} engram_client_options;

/* Fills `opts` with the defaults. */
void engram_client_options_init(engram_client_options *opts);

/* Opens a client to `address` ("host:port"). No network traffic happens
 * until the first call; a server that is down shows as ENGRAM_UNAVAILABLE
 * then. `opts` may be NULL (defaults). On success *out owns a client the
 * caller frees with engram_client_close. */
int engram_client_open(const char *address, const engram_client_options *opts,
                       engram_client **out, engram_error *err);

/* Closes the client. Asynchronous lookups still in flight are cancelled and
 * must still be freed with engram_lookup_free (before or after this call).
 * Not to be called while another thread uses the client. */
void engram_client_close(engram_client *client);

/* ---- tables ------------------------------------------------------------ */

typedef struct engram_table_info {
    char name[129];
    uint64_t rows;
    uint32_t row_bytes;
    uint32_t dim;
    char dtype[16];
    uint64_t version;
    uint32_t checksum;   /* CRC-32 (zlib) of all rows in order */
    int resident;        /* 1 when the server holds it as a dense RAM array */
    uint64_t created_unix_ms;
} engram_table_info;

/* Info of one table: ENGRAM_NOT_FOUND when it does not exist. */
int engram_table_get(engram_client *client, const char *name,
                     engram_table_info *out, engram_error *err);

/* All tables, sorted by name. On success *out is an array of *count
 * entries the caller frees with engram_free (NULL when count is 0). */
int engram_table_list(engram_client *client, engram_table_info **out,
                      size_t *count, engram_error *err);

/* Frees memory the library handed to the caller. NULL is a no-op. */
void engram_free(void *p);

/* ---- lookup ------------------------------------------------------------ */

/* Synchronous lookup: copies rows rows[0..n) of `table` into out, back to
 * back, in request order (duplicates included). out_cap is out's size in
 * bytes; the reply must fit (n * row_bytes) or the call fails with
 * ENGRAM_INVALID_ARGUMENT and out is left unspecified. *row_bytes and
 * *version (either may be NULL) receive the reply's row size and the table
 * version all rows came from. */
int engram_lookup_sync(engram_client *client, const char *table,
                       const uint64_t *rows, size_t n, void *out,
                       size_t out_cap, uint32_t *row_bytes, uint64_t *version,
                       engram_error *err);

/* Asynchronous lookup. Start returns at once with a handle; many lookups
 * may be in flight over the client's one channel. `rows` is copied before
 * start returns; `out` must stay valid until the lookup is finished. */
typedef struct engram_lookup engram_lookup;

int engram_lookup_start(engram_client *client, const char *table,
                        const uint64_t *rows, size_t n, void *out,
                        size_t out_cap, engram_lookup **handle,
                        engram_error *err);

/* Waits up to timeout_ms (< 0: forever) for the lookup to finish. Returns
 * ENGRAM_TIMEOUT if it has not, else the lookup's final status (the same
 * on every later call). */
int engram_lookup_wait(engram_lookup *handle, int64_t timeout_ms,
                       engram_error *err);

/* Non-blocking: 0 while in flight, 1 when finished (then wait(…, 0) gives
 * the status). */
int engram_lookup_poll(engram_lookup *handle);

/* After the lookup finished OK: the reply's row size and version. */
void engram_lookup_result(const engram_lookup *handle, uint32_t *row_bytes,
                          uint64_t *version);

/* Frees the handle. A lookup still in flight is cancelled first and this
 * call waits for gRPC to let go of `out`. NULL is a no-op. */
void engram_lookup_free(engram_lookup *handle);

/* ---- import ------------------------------------------------------------ */

/* A streamed import (Admin.Import): begin declares the table, write sends
 * whole rows in order from row 0 with no gap, finish commits. The new
 * version becomes visible atomically at finish; abort (or free without
 * finish, or any error) changes nothing on the server. */
typedef struct engram_import engram_import;

int engram_import_begin(engram_client *client, const char *table,
                        uint64_t rows, uint32_t dim, const char *dtype,
                        engram_import **out, engram_error *err);

/* Sends rows [start_row, start_row + len / row_bytes). len must be a whole
 * number of rows; large writes are split into messages by the library. */
int engram_import_write(engram_import *imp, uint64_t start_row,
                        const void *data, size_t len, engram_error *err);

/* Ends the stream and waits for the server's verdict. On success `info`
 * (may be NULL) receives the table as activated. Frees imp. */
int engram_import_finish(engram_import *imp, engram_table_info *info,
                         engram_error *err);

/* Cancels the stream; the server discards everything. Frees imp. */
void engram_import_abort(engram_import *imp);

#ifdef __cplusplus
}
#endif
#endif
