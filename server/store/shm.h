/* shm.h: resident table versions as files in a shared directory
 * (--shm-dir), so processes on the same host can map the rows the server
 * serves instead of asking for them over gRPC (issue 16).
 *
 * With --shm-dir DIR, the resident tier's array of a version IS a file in
 * DIR mapped MAP_SHARED (resident.c asks this module for it): one copy of
 * the rows in RAM, whoever maps them. Without it (the default) nothing
 * here is used and resident arrays are anonymous memory.
 *
 * Life of a file:
 *   - made when a version is loaded resident (start-up, an import that
 *     activates, ActivateVersion): created under a temporary name
 *     ".tmp@<nonce hex>.engram" (O_EXCL, mode 0600, or 0640 and group
 *     --shm-group), ftruncate'd once to its final size and its pages
 *     allocated (fallocate: a full tmpfs fails here, never as a SIGBUS
 *     while filling), mapped MAP_SHARED, filled by the store and checked
 *     against the version's CRC-32;
 *   - published: the header is written last and the file renamed to its
 *     final name, so a file found under a final name is always complete;
 *   - unlinked (never truncated) when the array is freed: the version is
 *     no longer served resident (a cutover, a drop, shutdown). A client
 *     that still maps it keeps valid memory until it unmaps.
 * A file that cannot be made (no space, an I/O error) leaves that version
 * resident in anonymous memory: logged, counted (engram_shm_failures_total)
 * and not listed. At start-up, with DIR locked (flock on DIR/.engram-shm.lock,
 * which also holds the owner's pid), every "*.engram" file in DIR whose
 * name has an '@' is a leftover of a crashed run and is removed; nothing
 * else in DIR is touched. A second server on the same DIR exits 2.
 *
 * Final names: "<table>@v<version>@s<index>of<count>.engram", e.g.
 * "layer2.embed@v3@s0of1.engram". Table names are [A-Za-z0-9._-] (no '@',
 * no '/'), so a name parses from either end and never collides with a
 * temporary one (".tmp@..." has no "@v").
 *
 * File format: common/shm_format.h (the rows at offset 4096, row r at
 * 4096 + r * row bytes: exactly the server's resident array).
 * A client trusts a file by: open, fstat (st_dev, st_ino equal to what
 * Admin.ListLocalTables said, size equal to file_bytes), map it, and
 * compare the header's nonce and layout with the reply's. The nonce is
 * random per file, so a file replaced under the same name (a restart, a
 * version re-activated) never passes for the one the reply named.
 *
 * Admin.ListLocalTables (engram.proto; PLANE_ANY: workers call it) answers
 * with the host's boot_id (/proc/sys/kernel/random/boot_id) and hostname,
 * the directory, and one LocalTableFile per published file: its table,
 * version, absolute path, size, layout, checksums, nonce, st_dev, st_ino
 * and whether it is the version the table serves by default now. Empty
 * (no files, no directory) without --shm-dir.
 *
 * Trust: the server maps its own files read-write and serves from them,
 * so DIR must be writable by the server's user alone (the files are its,
 * mode 0600/0640): a process of that user (or root) that truncated a file
 * would fault the server, as one that edited its RocksDB files would
 * corrupt it. Clients get read access through the group at most.
 *
 * Threads: every call is thread-safe (one mutex; file creation and rename
 * run under it, the filling of rows does not). One module per process, as
 * the resident tier. Errors follow store.h's convention. */
#ifndef ENGRAM_SERVER_SHM_H
#define ENGRAM_SERVER_SHM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "metric.h"
#include "shm_format.h"

#define SHM_NAME_MAX 128             /* TABLE_NAME_MAX */
#define SHM_LOCK_FILE ".engram-shm.lock"

#define SHM_METRIC(ACTION)                                                         \
    ACTION(files, METRIC_GAUGE, "engram_shm_files", "memory.shm_files",              \
           "Table version files published in --shm-dir.")                           \
    ACTION(bytes, METRIC_GAUGE, "engram_shm_bytes", "memory.shm_bytes",              \
           "Bytes of the files published in --shm-dir (headers and rows).")         \
    ACTION(failures, METRIC_COUNTER, "engram_shm_failures_total", "memory.shm_failures", \
           "Resident versions that could not get a file in --shm-dir and are held " \
           "in anonymous memory instead.")
typedef struct shm_metrics {
    SHM_METRIC(METRIC_DECLARE)
} shm_metrics;

typedef struct shm_options {
    const char *dir;             /* NULL: off */
    int group_set;               /* --shm-group given: files 0640 and group gid */
    gid_t gid;
} shm_options;

/* What a file's header says about its version. */
typedef struct shm_ident {
    char table[SHM_NAME_MAX + 1];
    char dtype[16];
    uint64_t version, rows, local_rows, created_unix_ms, xxh3;
    uint32_t row_bytes, dim, shard_index, shard_count, crc32;
} shm_ident;

/* One published file (shm_list). */
typedef struct shm_file_info {
    shm_ident id;
    char path[4200];
    uint64_t file_bytes, data_offset, data_bytes;
    uint8_t nonce[16];
    uint64_t dev, ino;
    const uint8_t *data;         /* the resident array it backs (to compare, never to read) */
} shm_file_info;

/* Registers the metrics (metrics: the caller's storage, may be NULL) and,
 * with o->dir, makes DIR if missing, locks it and removes the files a
 * previous run left. ES_FAILED_PRECONDITION with msg naming DIR: it cannot
 * be made or opened, another server holds it, or files cannot be given
 * the group (the caller exits 2). */
int shm_setup(const shm_options *o, shm_metrics *metrics, char *msg, size_t msglen);
/* Call after every array was freed (store_teardown): unlocks DIR. */
void shm_teardown(void);
/* The absolute directory, or NULL when off. */
const char *shm_dir(void);

/* A new file for `bytes` of rows of version id, mapped; returns the rows'
 * address (bytes long, zero-filled), or NULL when off or it failed (the
 * failure is logged and counted; the caller uses anonymous memory). */
uint8_t *shm_create(const shm_ident *id, size_t bytes);
/* Writes the header and renames the file into place. 0, or -1 when data
 * is not a file of this module (nothing done). A failed rename is logged,
 * counted and leaves the file unlisted (the rows still serve). */
int shm_publish(uint8_t *data);
/* Unmaps and unlinks the file whose rows are at data. 0, or -1 when data
 * is not one (the caller frees it as anonymous memory). */
int shm_release(uint8_t *data);

/* The published files, sorted by table and version, into a malloc'd array
 * *out of *count (NULL when none). ES_OK, or ES_RESOURCE_EXHAUSTED. */
int shm_list(shm_file_info **out, size_t *count, char *msg, size_t msglen);

/* The host's identity for clients: boot_id (36 characters, "" if
 * unreadable) and hostname. */
void shm_host(char *boot_id, size_t boot_len, char *host, size_t host_len);

#endif
