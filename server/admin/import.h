/* import.h: Admin.Import, the client-streaming bulk load.
 *
 * Rows arrive in order and are written straight into SST files (no
 * memtable, no WAL); when the stream ends with every row present (and a
 * trailer, if the client sent one, states their XXH3), the files are
 * ingested into RocksDB and the table's new version is activated
 * atomically (store_activate). Any error, cancellation or short stream
 * deletes the files and changes nothing. Streams are bounded: at most
 * max_imports at once, each cancelled after idle_ms without a message or at
 * its deadline (a reaper thread), each within the free disk space above
 * the data dir's reserve. */
#ifndef ENGRAM_SERVER_IMPORT_H
#define ENGRAM_SERVER_IMPORT_H

#include "engram/v1/engram.pb-c.h"
#include "server.h"
#include "store.h"

typedef struct import_options {
    uint32_t max_row_bytes;
    uint64_t sst_file_bytes;     /* roll to a new SST file past this size */
    /* Largest import this server takes (its rows x row bytes); 0: no
     * limit but the disk's. Checked on the header, before anything is
     * written, as is free space: an import must fit above the data dir's
     * reserve (store_disk_check), less what running imports may write. */
    uint64_t max_import_bytes;
    /* A stream waiting longer than this for its next message is cancelled
     * (DEADLINE_EXCEEDED), as is one past its deadline; 0: never idle. */
    int64_t idle_ms;
    uint32_t max_imports;        /* streams at once; 0: no limit */
} import_options;

/* Imports since start. A stream refused before it starts (admission, too
 * large, too many at once) counts as failed and not as started. */
#define IMPORT_METRIC(ACTION)                                                      \
    ACTION(started, METRIC_COUNTER, "engram_imports_started_total", NULL,           \
           "Import streams admitted.")                                             \
    ACTION(completed, METRIC_COUNTER, "engram_imports_completed_total", NULL,       \
           "Imports that activated their table version.")                         \
    ACTION(failed, METRIC_COUNTER, "engram_imports_failed_total", NULL,             \
           "Import streams refused or failed (nothing of them is served).")       \
    ACTION(rows, METRIC_COUNTER, "engram_import_rows_total", NULL,                  \
           "Rows received by import streams.")                                     \
    ACTION(bytes, METRIC_COUNTER, "engram_import_bytes_total", NULL,                \
           "Row bytes received by import streams.")
typedef struct import_metrics {
    IMPORT_METRIC(METRIC_DECLARE)
} import_metrics;

/* metrics: the caller's storage (NULL: not counted), initialized and
 * registered here until import_teardown. */
void import_setup(store *s, const import_options *opts, import_metrics *metrics);
void import_teardown(void);

void import_stream(server_call *c);

/* One Import stream's state, and one received message applied to it
 * exactly as the stream applies it (rq NULL: the bytes did not unpack).
 * Returns ES_OK, or a status with msg naming the problem; the stream then
 * ends and import_state_free undoes everything. Exposed so tests/fuzz can
 * drive the per-message checks without a network. */
typedef struct import_state import_state;
import_state *import_state_new(void);
int import_message(import_state *st, const Engram__V1__ImportRequest *rq, char *msg,
                   size_t msglen);
void import_state_free(import_state *st);

#endif
