/* disk.c: free space on the data directory's filesystem, and the reserve
 * kept free on it (store.h: store_disk_read, store_disk_check).
 *
 * Why a reserve: RocksDB 7.8 does not survive a full disk. A synced WAL
 * append that hits ENOSPC puts the database into a background error that
 * it does not clear once space comes back (every later write fails until
 * a restart), and in builds with assertions the writable file writer
 * aborts the process (`sync_without_flush_called_`). So nothing that
 * writes RocksDB's WAL or MANIFEST (activate, drop, a manifest put, an
 * ingest, a new table's id) is started when free space is under the
 * reserve, and imports, the only large writers, never take the
 * filesystem under it. The check cannot be atomic with the write (another
 * process may fill the disk in between); the reserve is what makes that
 * window harmless: a metadata write is a few KiB.
 *
 * The default, max(64 MiB, 1% of the filesystem): 64 MiB covers RocksDB's
 * own small writes (WAL, a MANIFEST rewrite, OPTIONS and info LOG files)
 * many times over; 1% scales it with large disks, where other writers
 * (logs, a second server) fill space faster than an operator reacts.
 * Root is not held back by ext4's reserved blocks, so the server keeps its
 * own. Free space is f_bavail: what this process may use. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/statvfs.h>

#include "log.h"
#include "status.h"
#include "store_internal.h"

#define DISK_RESERVE_MIN (64ull << 20)

void store_disk_read(store *s, uint64_t *free_bytes, uint64_t *reserve)
{
    struct statvfs v;
    if (statvfs(s->dir, &v) != 0) {
        /* Fail open: refusing every write because statvfs failed would be
         * an outage of its own; the write itself still reports errors. */
        log_warn("disk_statvfs_failed", "data=%s error=\"%s\"", s->dir, strerror(errno));
        *free_bytes = UINT64_MAX;
        *reserve = 0;
        return;
    }
    uint64_t total = (uint64_t)v.f_blocks * v.f_frsize;
    *free_bytes = (uint64_t)v.f_bavail * v.f_frsize;
    if (s->disk_reserve >= 0)
        *reserve = (uint64_t)s->disk_reserve;
    else
        *reserve = total / 100 > DISK_RESERVE_MIN ? total / 100 : DISK_RESERVE_MIN;
}

int store_disk_check(store *s, int half, const char *what, char *msg, size_t msglen)
{
    uint64_t free_bytes, reserve;
    store_disk_read(s, &free_bytes, &reserve);
    uint64_t floor = half ? reserve / 2 : reserve;
    if (free_bytes >= floor)
        return ES_OK;
    if (half)
        snprintf(msg, msglen, "%s: data dir %s has %llu bytes free, under %llu bytes, half its "
                 "reserve of %llu bytes (--disk-reserve-bytes); free space and retry", what, s->dir,
                 (unsigned long long)free_bytes, (unsigned long long)floor,
                 (unsigned long long)reserve);
    else
        snprintf(msg, msglen, "%s: data dir %s has %llu bytes free, under its reserve of %llu "
                 "bytes (--disk-reserve-bytes); free space and retry", what, s->dir,
                 (unsigned long long)free_bytes, (unsigned long long)reserve);
    log_warn("disk_low", "data=%s free=%llu reserve=%llu refused=\"%s\"", s->dir,
             (unsigned long long)free_bytes, (unsigned long long)reserve, what);
    return ES_RESOURCE_EXHAUSTED;
}
