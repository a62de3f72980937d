/* verify_local.c: engramctl verify --local: are the files the servers
 * publish on this host (--shm-dir; server/store/shm.h) the files they
 * listed, holding the rows that were imported?
 *
 *   verify --local [--table T] [--version V]
 *
 * Every server of the cluster map the server returns (each replica of
 * each shard; a lone server is a map of one) is asked Admin.ListLocalTables
 * (for table T when given). A server whose boot_id is not this host's
 * (/proc/sys/kernel/random/boot_id) lists files on another machine: it is
 * skipped, with a line saying so. A server without --shm-dir lists none,
 * also said in a line. Every listed file (of version V when given) is then
 * checked, one line each:
 *   - open O_RDONLY|O_NOFOLLOW and fstat: the device, inode and size must
 *     be the listed ones (another device or inode is another file, and
 *     nothing more of it is compared);
 *   - the 4096-byte header against the listing: magic, format version,
 *     header bytes, data offset and bytes, version, rows, local rows, row
 *     bytes, dim, shard index and count, xxh3, crc32, nonce, dtype, table
 *     name, and the header's own CRC-32 (zlib, of bytes [0, 4092), stored
 *     at 4092);
 *   - the data region (listed data bytes from the listed data offset)
 *     hashed as the server hashed the rows at import (server/admin/
 *     import.c: one XXH3-64 stream, seed 0, and one zlib crc32 from 0 over
 *     the local rows in order, which are exactly this region) and compared
 *     with the listed xxh3 and crc32. A listed xxh3 of 0 means "not
 *     recorded" (a version imported before xxh3 was): judged on CRC-32.
 * The file is read with pread in 4 MiB chunks, never mapped: a file
 * shortened under us is a short read (an error), not a SIGBUS.
 *
 * Lines: "PATH: table T version V shard I of S: " then "OK (xxh3 X crc32
 * C)", "MISMATCH: " and each difference as "WHAT: expected E, got G"
 * (checksums and the nonce in hex; expected is the listing's value, or the
 * stored header CRC), joined by "; ", or "ERROR: " and why it could not be
 * read. Then a summary line.
 *
 * Exit codes, as verify's: 0 every checked file matches; 1 a mismatch
 * (a finding; it wins over any error); 2 a usage error, a ListLocalTables
 * that failed, a file that could not be read, or no file checked at all:
 * --local asked for the published files to be proven, and finding none to
 * prove (no server on this host, none with --shm-dir, a filter matching
 * nothing) must not read as "all good".
 *
 * ListLocalTables is a protocol between the server and libengram's
 * same-node path, with no public call; engramctl is built from this tree
 * and links libengram statically, so it makes the call with the library's
 * internal admin call (client_internal.h), as client/local.c does. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>
#include <zlib.h>

#include "client_internal.h"
#include "cluster.h"
#include "ctl.h"
#include "methods.h"
#include "shm_format.h"

#define READ_CHUNK (4u << 20)
#define BOOT_ID_PATH "/proc/sys/kernel/random/boot_id"

typedef struct tally {
    int ok, mismatched, unreadable;      /* files */
    int here, elsewhere, no_dir, failed; /* servers */
} tally;

/* The differences found in one file, "WHAT: expected E, got G; ...". */
typedef struct diffs {
    char text[4096];
    size_t len;
    int n;
} diffs;

static void add_diff(diffs *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add_diff(diffs *d, const char *fmt, ...)
{
    if (d->len < sizeof d->text)
        d->len += (size_t)snprintf(d->text + d->len, sizeof d->text - d->len, "%s",
                                   d->n ? "; " : "");
    if (d->len < sizeof d->text) {
        va_list ap;
        va_start(ap, fmt);
        d->len += (size_t)vsnprintf(d->text + d->len, sizeof d->text - d->len, fmt, ap);
        va_end(ap);
    }
    d->n++;
}

static void hex(char *out, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", p[i]);
    out[2 * n] = '\0';
}

/* Reads len bytes at off into buf; 0, or -1 with why (a short read is
 * the file shortened since fstat). */
static int read_at(int fd, uint8_t *buf, size_t len, uint64_t off, char *why, size_t cap)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = pread(fd, buf + got, len - got, (off_t)(off + got));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(why, cap, "read at offset %llu: %s", (unsigned long long)(off + got),
                     strerror(errno));
            return -1;
        }
        if (n == 0) {
            snprintf(why, cap, "short read: the file ends at offset %llu, %llu bytes early "
                     "(shortened since it was listed)", (unsigned long long)(off + got),
                     (unsigned long long)(len - got));
            return -1;
        }
        got += (size_t)n;
    }
    return 0;
}

/* A numeric header field against the listing. */
static void cmp_u64(diffs *d, const char *what, uint64_t want, uint64_t got)
{
    if (want != got)
        add_diff(d, "header %s: expected %llu, got %llu", what, (unsigned long long)want,
                 (unsigned long long)got);
}

/* The header h against the listing t, field by field (shm_format.h). */
static void check_header(diffs *d, const uint8_t *h, const Engram__V1__LocalTableFile *t)
{
    char want[64], got[64];
    shm_header x;
    shm_header_decode(h, &x);
    if (memcmp(x.magic, SHM_MAGIC, 8) != 0) {
        hex(want, (const uint8_t *)SHM_MAGIC, 8);
        hex(got, h, 8);
        add_diff(d, "header magic: expected %s, got %s", want, got);
    }
    cmp_u64(d, "format version", SHM_FORMAT_VERSION, x.format_version);
    cmp_u64(d, "header bytes", SHM_HEADER_BYTES, x.header_bytes);
    cmp_u64(d, "data offset", t->data_offset, x.data_offset);
    cmp_u64(d, "data bytes", t->data_bytes, x.data_bytes);
    cmp_u64(d, "version", t->version, x.version);
    cmp_u64(d, "rows", t->rows, x.rows);
    cmp_u64(d, "local rows", t->local_rows, x.local_rows);
    cmp_u64(d, "row bytes", t->row_bytes, x.row_bytes);
    cmp_u64(d, "dim", t->dim, x.dim);
    cmp_u64(d, "shard index", t->shard_index, x.shard_index);
    cmp_u64(d, "shard count", t->shard_count, x.shard_count);
    if (x.xxh3 != t->xxh3)
        add_diff(d, "header xxh3: expected %016llx, got %016llx", (unsigned long long)t->xxh3,
                 (unsigned long long)x.xxh3);
    if (x.crc32 != t->crc32)
        add_diff(d, "header crc32: expected %08x, got %08x", t->crc32, x.crc32);
    if (t->nonce.len != 16 || memcmp(x.nonce, t->nonce.data, 16) != 0) {
        hex(want, t->nonce.data, t->nonce.len <= 16 ? t->nonce.len : 16);
        hex(got, x.nonce, 16);
        add_diff(d, "header nonce: expected %s, got %s", want, got);
    }
    /* NUL-padded fields: the bytes after the string count too (the header
     * CRC covers them, but naming the field is the better message). */
    if (strcmp(x.dtype, t->dtype) != 0)
        add_diff(d, "header dtype: expected \"%s\", got \"%.16s\"", t->dtype, x.dtype);
    if (strcmp(x.table, t->table) != 0)
        add_diff(d, "header table: expected \"%s\", got \"%.136s\"", t->table, x.table);
    uint32_t computed = (uint32_t)crc32_z(0, h, SHM_HEADER_CRC_AT);
    if (x.header_crc != computed)
        add_diff(d, "header crc32 of bytes 0-4091: expected %08x (stored at byte 4092), got %08x",
                 x.header_crc, computed);
}

/* XXH3-64 and CRC-32 of the data region, read in chunks; 0 or -1 with why. */
static int hash_data(int fd, const Engram__V1__LocalTableFile *t, uint64_t *xxh, uint32_t *crc,
                     char *why, size_t cap)
{
    uint8_t *buf = malloc(READ_CHUNK);
    XXH3_state_t *st = XXH3_createState();
    if (!buf || !st) {
        free(buf);
        XXH3_freeState(st);
        snprintf(why, cap, "out of memory for a %u-byte read buffer", READ_CHUNK);
        return -1;
    }
    XXH3_64bits_reset(st);
    uint32_t c = 0;
    int rc = 0;
    for (uint64_t done = 0; done < t->data_bytes && !rc;) {
        size_t n = t->data_bytes - done < READ_CHUNK ? (size_t)(t->data_bytes - done) : READ_CHUNK;
        rc = read_at(fd, buf, n, t->data_offset + done, why, cap);
        if (!rc) {
            XXH3_64bits_update(st, buf, n);
            c = (uint32_t)crc32_z(c, buf, n);
            done += n;
        }
    }
    *xxh = XXH3_64bits_digest(st);
    *crc = c;
    XXH3_freeState(st);
    free(buf);
    return rc;
}

/* Checks one listed file and prints its line; counts it in *ty. */
static void check_file(const Engram__V1__LocalTableFile *t, tally *ty)
{
    char why[512] = "";
    diffs d = {.len = 0};
    uint64_t xxh = 0;
    uint32_t crc = 0;
    int fd = -1, hashed = 0;
    if (t->data_offset < SHM_HEADER_BYTES || t->file_bytes != t->data_offset + t->data_bytes) {
        snprintf(why, sizeof why, "the listing is inconsistent: %llu file bytes, data offset "
                 "%llu, %llu data bytes", (unsigned long long)t->file_bytes,
                 (unsigned long long)t->data_offset, (unsigned long long)t->data_bytes);
        goto done;
    }
    fd = open(t->path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        snprintf(why, sizeof why, "open: %s%s", strerror(errno),
                 errno == ENOENT ? " (unpublished since it was listed?)" : "");
        goto done;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        snprintf(why, sizeof why, "fstat: %s", strerror(errno));
        goto done;
    }
    if ((uint64_t)st.st_dev != t->st_dev || (uint64_t)st.st_ino != t->st_ino) {
        /* Another file under the listed name: comparing its bytes with
         * the listing would say nothing about the listed one. */
        add_diff(&d, "st_dev:st_ino: expected %llu:%llu, got %llu:%llu (not the file listed)",
                 (unsigned long long)t->st_dev, (unsigned long long)t->st_ino,
                 (unsigned long long)st.st_dev, (unsigned long long)st.st_ino);
        goto done;
    }
    if ((uint64_t)st.st_size != t->file_bytes) {
        add_diff(&d, "size: expected %llu bytes, got %llu", (unsigned long long)t->file_bytes,
                 (unsigned long long)st.st_size);
        if ((uint64_t)st.st_size < SHM_HEADER_BYTES)
            goto done;
    }
    uint8_t h[SHM_HEADER_BYTES];
    if (read_at(fd, h, sizeof h, 0, why, sizeof why))
        goto done;
    check_header(&d, h, t);
    if ((uint64_t)st.st_size != t->file_bytes)
        goto done;               /* the rows are not all there (or more are): nothing to hash */
    if (hash_data(fd, t, &xxh, &crc, why, sizeof why))
        goto done;
    hashed = 1;
    if (t->xxh3 && xxh != t->xxh3)
        add_diff(&d, "data xxh3: expected %016llx, got %016llx", (unsigned long long)t->xxh3,
                 (unsigned long long)xxh);
    if (crc != t->crc32)
        add_diff(&d, "data crc32: expected %08x, got %08x", t->crc32, crc);
done:
    if (fd >= 0)
        close(fd);
    printf("%s: table %s version %llu shard %u of %u: ", t->path, t->table,
           (unsigned long long)t->version, t->shard_index, t->shard_count);
    if (d.n) {
        /* A difference is a finding even when the file then failed to read. */
        printf("MISMATCH: %s%s%s\n", d.text, *why ? "; ERROR: " : "", why);
        ty->mismatched++;
    } else if (*why) {
        printf("ERROR: %s\n", why);
        ty->unreadable++;
    } else if (hashed && t->xxh3) {
        printf("OK (xxh3 %016llx crc32 %08x)\n", (unsigned long long)xxh, crc);
        ty->ok++;
    } else {
        printf("OK (xxh3 not recorded, crc32 %08x)\n", crc);
        ty->ok++;
    }
}

/* ListLocalTables on cl (the server at addr), its files checked; filter
 * is " of table T version V" (or part of it, or "") for messages. */
static void check_server(engram_client *cl, const char *addr, const char *boot_id,
                         const char *table, uint64_t version, const char *filter, tally *ty)
{
    Engram__V1__ListLocalTablesRequest req = ENGRAM__V1__LIST_LOCAL_TABLES_REQUEST__INIT;
    req.table = (char *)(table ? table : "");
    /* Registered on this client's channel, which frees it at close. */
    void *method = grpc_channel_register_call(cl->channel, METHOD_LIST_LOCAL_TABLES, NULL, NULL);
    admin_call a;
    engram_error e;
    int rc = ec_admin_run(cl, method, &req.base,
                          &engram__v1__list_local_tables_response__descriptor, &a, &e);
    if (rc) {
        ctl_fail(rc, "ListLocalTables on %s: %s", addr, e.message);
        ty->failed++;
        return;
    }
    Engram__V1__ListLocalTablesResponse *r = (Engram__V1__ListLocalTablesResponse *)a.reply;
    if (strcmp(r->boot_id, boot_id) != 0) {
        printf("server %s: skipped: on another host (%s, boot_id %s; this host's boot_id is %s)\n",
               addr, *r->hostname ? r->hostname : "hostname unknown",
               *r->boot_id ? r->boot_id : "unknown", boot_id);
        ty->elsewhere++;
    } else if (!*r->shm_dir) {
        printf("server %s: publishes no files (started without --shm-dir)\n", addr);
        ty->here++;
        ty->no_dir++;
    } else if (r->format_version != SHM_FORMAT_VERSION) {
        ctl_fail(ENGRAM_FAILED_PRECONDITION, "server %s publishes files of format version %u; "
                 "this engramctl reads format version %d", addr, r->format_version,
                 SHM_FORMAT_VERSION);
        ty->here++;
        ty->failed++;
    } else {
        ty->here++;
        size_t n = 0;
        for (size_t i = 0; i < r->n_files; i++)
            n += !version || r->files[i]->version == version;
        printf("server %s: %zu file%s%s in %s\n", addr, n, n == 1 ? "" : "s", filter, r->shm_dir);
        for (size_t i = 0; i < r->n_files; i++)
            if (!version || r->files[i]->version == version)
                check_file(r->files[i], ty);
    }
    protobuf_c_message_free_unpacked(a.reply, NULL);
}

/* This host's boot_id; 0, or -1 with why. */
static int read_boot_id(char *buf, size_t cap, char *why, size_t whycap)
{
    FILE *f = fopen(BOOT_ID_PATH, "re");
    if (!f) {
        snprintf(why, whycap, "cannot read %s: %s", BOOT_ID_PATH, strerror(errno));
        return -1;
    }
    int ok = fgets(buf, (int)cap, f) != NULL;
    fclose(f);
    buf[ok ? strcspn(buf, "\r\n") : 0] = '\0';
    if (!*buf) {
        snprintf(why, whycap, "%s is empty", BOOT_ID_PATH);
        return -1;
    }
    return 0;
}

int verify_take_local(int *argc, char **argv)
{
    int found = 0, k = 0;
    for (int i = 0; i < *argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--local")) {
            found = 1;
            continue;
        }
        if (!strncmp(a, "--local=", 8)) {
            die_usage("verify: --local takes no value (got '%s')", a);
            return -1;
        }
        argv[k++] = argv[i];
        /* The next argument is this option's value, even one spelled
         * "--local" (a valid table name). */
        if (!strncmp(a, "--", 2) && a[2] && !strchr(a, '=') && i + 1 < *argc)
            argv[k++] = argv[++i];
    }
    *argc = k;
    return found;
}

int verify_local(engram_client *cl, int argc, char **argv)
{
    opts o = {.names = {"--table", "--version", "--file", "--tensor", "--checkpoint", "--layer"},
              .n = 6};
    const char *c = "verify --local";
    if (parse_opts(&o, argc, argv, c))
        return EXIT_USAGE;
    if (o.npos)
        return die_usage("%s: unexpected argument '%s'", c, o.pos[0]);
    for (int k = 2; k < o.n; k++)
        if (o.values[k])
            return die_usage("%s: %s does not go with --local (it checks the files the servers "
                             "publish on this host against their recorded checksums)", c,
                             o.names[k]);
    const char *table = opt(&o, "--table"), *sv = opt(&o, "--version");
    uint64_t version = 0;
    if (sv && parse_u64(sv, "--version", &version))
        return EXIT_USAGE;
    if (sv && !version)
        return die_usage("%s: --version 0 is not a table version (versions start at 1)", c);
    char boot_id[64], why[300];
    if (read_boot_id(boot_id, sizeof boot_id, why, sizeof why)) {
        ctl_fail(ENGRAM_FAILED_PRECONDITION, "%s: %s", c, why);
        return EXIT_USAGE;
    }
    char filter[300] = "", vs[32] = "";
    if (version)
        snprintf(vs, sizeof vs, " version %llu", (unsigned long long)version);
    if (table || version)
        snprintf(filter, sizeof filter, " of%s%.200s%s", table ? " table " : "",
                 table ? table : "", vs);
    int rc;
    engram_cluster *map = cluster_of(cl, &rc);
    if (!map)
        return EXIT_USAGE;
    tally ty = {0};
    for (uint32_t s = 0; s < map->shards; s++) {
        for (uint32_t r = 0; r < map->replicas[s]; r++) {
            if (cluster_is_single(map)) {
                check_server(cl, ctl_server_address(), boot_id, table, version, filter, &ty);
                continue;
            }
            const char *addr = map->addr[s][r];
            engram_client *one;
            engram_error e;
            if ((rc = engram_client_open(addr, ctl_client_options(), &one, &e))) {
                ctl_fail(rc, "ListLocalTables on %s (shard %u): %s", addr, s, e.message);
                ty.failed++;
                continue;
            }
            check_server(one, addr, boot_id, table, version, filter, &ty);
            engram_client_close(one);
        }
    }
    cluster_free(map);
    int checked = ty.ok + ty.mismatched + ty.unreadable;
    printf("verify --local: %d file%s checked: %d OK, %d MISMATCH, %d unreadable; servers: %d "
           "on this host (%d without --shm-dir), %d on another host, %d failed\n", checked,
           checked == 1 ? "" : "s", ty.ok, ty.mismatched, ty.unreadable, ty.here, ty.no_dir,
           ty.elsewhere, ty.failed);
    if (ty.mismatched) {
        fprintf(stderr, "engramctl: verify --local: %d file%s differ%s\n", ty.mismatched,
                ty.mismatched == 1 ? "" : "s", ty.mismatched == 1 ? "s" : "");
        return 1;
    }
    if (!checked && !ty.failed) {
        ctl_fail(ENGRAM_NOT_FOUND, "verify --local: no file was checked: no server on this host "
                 "publishes one%s", filter);
        return EXIT_USAGE;
    }
    return ty.failed || ty.unreadable ? EXIT_USAGE : 0;
}
