/* fuzz_import.c: libFuzzer target for Admin.Import as the server handles
 * it (server/admin/import.c): each message is unpacked with protobuf-c exactly as
 * the stream unpacks it, then applied with import_message (header checks,
 * shard and size limits, the claim, chunk order and size checks, rows into
 * SST files, the trailer), stopping at the first refusal as the stream
 * does; import_state_free then undoes everything.
 *
 * Input: the stream's messages, each a 2-byte little-endian length then
 * that many bytes (the last takes what is left). A real store is opened
 * once, in a fresh directory under $TMPDIR, and removed at exit. */
#define _XOPEN_SOURCE 700
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "engram/v1/engram.pb-c.h"
#include "import.h"
#include "log.h"
#include "status.h"
#include "store.h"

static char dir[512];

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(path);
}

static void cleanup(void)
{
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Small limits, so the fuzzer reaches each of them with short inputs. */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/engram-fuzz-import.XXXXXX", tmp ? tmp : "/tmp");
    if (!mkdtemp(dir))
        abort();
    atexit(cleanup);
    log_setup(stderr, LOG_ERROR);        /* every refusal logs a warning */
    store_options so = {dir, 1 << 20, 8 << 20, 1, 0, 2, 0};
    char err[600];
    store *s;
    if (store_setup(&so, NULL, &s, NULL, err, sizeof err) != ES_OK) {
        fprintf(stderr, "store_setup: %s\n", err);
        abort();
    }
    import_options io = {.max_row_bytes = 64, .sst_file_bytes = 256, .max_import_bytes = 1 << 16};
    import_setup(s, &io, NULL);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    import_state *st = import_state_new();
    char msg[512];
    while (size >= 2) {
        size_t len = data[0] | (size_t)data[1] << 8;
        data += 2;
        size -= 2;
        if (len > size)
            len = size;
        Engram__V1__ImportRequest *rq = (Engram__V1__ImportRequest *)protobuf_c_message_unpack(
            &engram__v1__import_request__descriptor, NULL, len, data);
        int code = import_message(st, rq, msg, sizeof msg);
        if (rq)
            protobuf_c_message_free_unpacked(&rq->base, NULL);
        if (code != ES_OK)
            break;
        data += len;
        size -= len;
    }
    import_state_free(st);
    return 0;
}
