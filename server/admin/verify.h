/* verify.h: Admin.Verify, checking that a version's rows as stored still
 * hash to the checksums recorded when they were imported.
 *
 * The request names a table and a version (0: the active one). Every row
 * of that version on this server is read back from RocksDB in local row
 * order (store_scan), hashed with XXH3-64 and CRC-32 and, for a resident
 * version, compared with the RAM copy lookups read. The reply is a stream
 * of VerifyProgress, one per batch, and a last one with done set carrying
 * the result. What is wrong with the data is part of the result (match
 * false, problem); statuses are for requests that cannot be answered (no
 * such table or version: NOT_FOUND). */
#ifndef ENGRAM_SERVER_VERIFY_H
#define ENGRAM_SERVER_VERIFY_H

#include "server.h"
#include "store.h"

void verify_setup(store *s);
void verify_teardown(void);

void verify_stream(server_call *c);

#endif
