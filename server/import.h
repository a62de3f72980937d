/* import.h: Admin.Import, the client-streaming bulk load.
 *
 * Rows arrive in order and are written straight into SST files (no
 * memtable, no WAL); when the stream ends with every row present (and a
 * trailer, if the client sent one, states their XXH3), the files are
 * ingested into RocksDB and the table's new version is activated
 * atomically (store_activate). Any error, cancellation or short stream
 * deletes the files and changes nothing. */
#ifndef ENGRAM_SERVER_IMPORT_H
#define ENGRAM_SERVER_IMPORT_H

#include "server.h"
#include "store.h"

typedef struct import_options {
    uint32_t max_row_bytes;
    uint64_t sst_file_bytes;     /* roll to a new SST file past this size */
    /* Largest import this server takes (its rows x row bytes); 0: no
     * limit. Checked on the header, before anything is written. */
    uint64_t max_import_bytes;
} import_options;

typedef struct import_metrics {
    uint64_t started;
    uint64_t completed;
    uint64_t failed;
    uint64_t rows;
    uint64_t bytes;
} import_metrics;

void import_setup(store *s, const import_options *opts, import_metrics *metrics);
void import_teardown(void);

void import_stream(server_call *c);

#endif
