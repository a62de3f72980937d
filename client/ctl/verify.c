/* verify.c: engramctl verify: are a table's stored rows still the rows
 * that were imported, and are they the rows of a given file?
 *
 *   verify --table T [--version V] [--file F [--tensor NAME]]
 *   verify --table T [--version V] --checkpoint DIR --layer L
 *   verify --local [--table T] [--version V]     (verify_local.c)
 *
 * Every server holding the table (each replica of each shard of the
 * cluster map the server returns; a lone server is a map of one) runs
 * Admin.Verify: it re-reads its stored rows of version V (default: its
 * active one) and compares their XXH3-64 and CRC-32 with the values
 * recorded at import. With --file the file's rows (raw, .npy, or one
 * tensor of a .safetensors checkpoint, read with import's readers) are
 * hashed the same way, split by shard (row r is shard r mod S's local row
 * r / S), and each server's recomputed checksums must equal its shard's.
 * The file is read once, whatever the number of shards. --checkpoint reads
 * layer L of a DeepSeek-V4.1 checkpoint (its weight and scale tensors,
 * packed into rows as import --checkpoint packs them) the same way.
 *
 * Exit codes: 0 everything matches; 1 a mismatch (each is printed, saying
 * which server or which shard of the file); 2 a usage error, a call that
 * failed or a file that could not be read. A mismatch wins over a failed
 * call: it is a finding, and the failure is printed too.
 *
 * --local checks the files the servers publish on this host (--shm-dir)
 * against the listed checksums instead; verify_local.c has it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>
#include <zlib.h>

#include "cluster.h"
#include "ctl.h"
#include "dtype.h"
#include "progress.h"

/* One server's verify. */
typedef struct check {
    const char *addr;
    uint32_t shard;
    int rc;                      /* the call's status */
    engram_verify_result r;
} check;

/* The file's checksums, per shard. */
typedef struct file_sums {
    uint32_t shards;
    XXH3_state_t **xxh;
    uint32_t *crc;
    uint64_t *rows;
} file_sums;

/* ---- the servers ------------------------------------------------------------ */

/* The bar learns the total and the row size from the first message. */
static void on_progress(void *ctx, uint64_t done, uint64_t total, uint32_t row_bytes)
{
    progress *pg = ctx;
    pg->total_rows = total;
    pg->row_bytes = row_bytes;
    progress_update(pg, done);
}

static void print_result(const check *c, int sharded)
{
    const engram_verify_result *r = &c->r;
    char where[200] = "";
    if (sharded)
        snprintf(where, sizeof where, " (shard %u of %u)", r->shard_index, r->shard_count);
    char stored_xxh[20] = "unknown";
    if (r->stored_xxh3)
        snprintf(stored_xxh, sizeof stored_xxh, "%016llx", (unsigned long long)r->stored_xxh3);
    printf("table %s version %llu on %s%s: %llu of %llu rows read, xxh3 %016llx crc32 %08x; "
           "recorded xxh3 %s crc32 %08x%s: %s%s\n", r->table, (unsigned long long)r->version,
           c->addr, where, (unsigned long long)r->rows_checked, (unsigned long long)r->local_rows,
           (unsigned long long)r->xxh3, r->crc32, stored_xxh, r->stored_crc32,
           r->resident ? "; RAM copy compared" : "", r->match ? "match" : "MISMATCH: ",
           r->match ? "" : r->problem);
}

static void verify_one(engram_client *cl, check *c, const char *table, uint64_t version,
                       int sharded)
{
    char what[300];
    snprintf(what, sizeof what, "verify %s on %s", table, c->addr);
    progress pg;
    progress_start(&pg, what, 0, 1);
    engram_error e;
    c->rc = engram_table_verify(cl, table, version, on_progress, &pg, &c->r, &e);
    if (!c->rc)
        progress_end(&pg, c->r.rows_checked);
    if (c->rc && sharded)
        ctl_fail(c->rc, "verify on %s (shard %u): %s", c->addr, c->shard, e.message);
    else if (c->rc)
        ctl_fail(c->rc, "verify on %s: %s", c->addr, e.message);
}

/* Every replica of every shard, one after another. */
static void verify_servers(engram_client *cl, const engram_cluster *map, check *checks,
                           const char *table, uint64_t version, const char *self)
{
    size_t n = 0;
    for (uint32_t s = 0; s < map->shards; s++) {
        for (uint32_t r = 0; r < map->replicas[s]; r++) {
            check *c = &checks[n++];
            c->shard = s;
            c->addr = cluster_is_single(map) ? self : map->addr[s][r];
            if (cluster_is_single(map)) {
                verify_one(cl, c, table, version, 0);
                continue;
            }
            engram_client *one;
            engram_error e;
            if ((c->rc = engram_client_open(c->addr, ctl_client_options(), &one, &e))) {
                ctl_fail(c->rc, "verify on %s (shard %u): %s", c->addr, s, e.message);
                continue;
            }
            verify_one(one, c, table, version, 1);
            engram_client_close(one);
        }
    }
}

/* ---- the file ---------------------------------------------------------------- */

/* Hashes every row of fp into its shard's sums (one pass over the file). */
static int hash_file(FILE *fp, const char *file, uint64_t rows, uint32_t row_bytes,
                     file_sums *fs)
{
    size_t per = IMPORT_BATCH_BYTES / row_bytes ? IMPORT_BATCH_BYTES / row_bytes : 1;
    uint8_t *buf = malloc(per * row_bytes);
    char what[300];
    snprintf(what, sizeof what, "hash %s", file);
    progress pg;
    progress_start(&pg, what, rows, row_bytes);
    uint64_t r = 0;
    for (; r < rows; r += per) {
        size_t n = rows - r < per ? (size_t)(rows - r) : per;
        if (fread(buf, row_bytes, n, fp) != n)
            break;
        for (size_t i = 0; i < n; i++) {
            uint32_t s = (uint32_t)((r + i) % fs->shards);
            const uint8_t *row = buf + i * row_bytes;
            XXH3_64bits_update(fs->xxh[s], row, row_bytes);
            fs->crc[s] = (uint32_t)crc32_z(fs->crc[s], row, row_bytes);
            fs->rows[s]++;
        }
        progress_update(&pg, r + n);
    }
    progress_end(&pg, r < rows ? r : rows);
    free(buf);
    if (r < rows)
        return ctl_fail(ENGRAM_DATA_LOSS, "%s: short read at row %llu", file, (unsigned long long)r);
    return 0;
}

static void sums_init(file_sums *fs, uint32_t shards)
{
    fs->shards = shards;
    fs->xxh = calloc(shards, sizeof *fs->xxh);
    fs->crc = calloc(shards, sizeof *fs->crc);
    fs->rows = calloc(shards, sizeof *fs->rows);
    for (uint32_t s = 0; s < shards; s++) {
        fs->xxh[s] = XXH3_createState();
        XXH3_64bits_reset(fs->xxh[s]);
    }
}

static void sums_free(file_sums *fs)
{
    for (uint32_t s = 0; s < fs->shards; s++)
        XXH3_freeState(fs->xxh[s]);
    free(fs->xxh);
    free(fs->crc);
    free(fs->rows);
}

/* The file's shape against the table's (as the server reported it);
 * 1 after printing the difference, else 0. */
static int shape_differs(const char *file, const import_spec *s, const engram_verify_result *r)
{
    if (strcmp(s->dtype, r->dtype) || s->dim != r->dim || s->rows != r->rows) {
        printf("file %s: %llu rows of dim %u %s; table %s version %llu has %llu rows of dim %u "
               "%s: MISMATCH\n", file, (unsigned long long)s->rows, s->dim, s->dtype, r->table,
               (unsigned long long)r->version, (unsigned long long)r->rows, r->dim, r->dtype);
        return 1;
    }
    return 0;
}

/* Compares each server's recomputed checksums with its shard of the file;
 * returns the number of mismatches. */
static int compare_file(const char *file, const file_sums *fs, const check *checks, size_t n)
{
    int bad = 0;
    for (uint32_t s = 0; s < fs->shards; s++) {
        uint64_t x = XXH3_64bits_digest(fs->xxh[s]);
        char where[64] = "";
        if (fs->shards > 1)
            snprintf(where, sizeof where, " shard %u of %u", s, fs->shards);
        printf("file %s%s: %llu rows, xxh3 %016llx crc32 %08x\n", file, where,
               (unsigned long long)fs->rows[s], (unsigned long long)x, fs->crc[s]);
        for (size_t i = 0; i < n; i++) {
            const check *c = &checks[i];
            if (c->shard != s || c->rc)
                continue;
            int same = c->r.xxh3 == x && c->r.crc32 == fs->crc[s] && c->r.rows_checked == fs->rows[s];
            bad += !same;
            if (!same)
                printf("  %s: MISMATCH: its stored rows hash to xxh3 %016llx crc32 %08x (%llu rows)\n",
                       c->addr, (unsigned long long)c->r.xxh3, c->r.crc32,
                       (unsigned long long)c->r.rows_checked);
            else
                printf("  %s: match\n", c->addr);
        }
    }
    return bad;
}

/* Hashes the file for the shape the first answering server reported and
 * compares; returns the number of mismatches, or -1 when the file could
 * not be read (after a message). */
static int check_file(const char *file, const char *tensor, int64_t ckpt_layer,
                      const check *checks, size_t n, uint32_t shards)
{
    const engram_verify_result *r = NULL;
    for (size_t i = 0; i < n && !r; i++)
        if (!checks[i].rc)
            r = &checks[i].r;
    if (!r)
        return 0;                /* every call failed: already reported */
    import_spec s = {{0}};
    snprintf(s.table, sizeof s.table, "%s", r->table);
    snprintf(s.by, sizeof s.by, "table %s", r->table);
    if (!tensor && ckpt_layer < 0) {  /* a tensor brings its own shape, compared below */
        snprintf(s.dtype, sizeof s.dtype, "%s", r->dtype);
        s.dim = r->dim;
    }
    FILE *fp = NULL;
    if (ckpt_layer >= 0 ? open_checkpoint(file, ckpt_layer, &s, &fp)
                        : open_import_file(file, tensor, &s, &fp))
        return -1;
    int bad = shape_differs(file, &s, r);
    if (!bad) {
        file_sums fs;
        sums_init(&fs, shards);
        bad = hash_file(fp, file, s.rows, r->row_bytes, &fs) ? -1
                                                           : compare_file(file, &fs, checks, n);
        sums_free(&fs);
    }
    fclose(fp);
    return bad;
}

/* ---- the command --------------------------------------------------------------- */

static int verify_all(engram_client *cl, const engram_cluster *map, const char *table,
                      uint64_t version, const char *file, const char *tensor,
                      int64_t ckpt_layer, const char *self)
{
    size_t n = 0;
    for (uint32_t s = 0; s < map->shards; s++)
        n += map->replicas[s];
    check *checks = calloc(n, sizeof *checks);
    verify_servers(cl, map, checks, table, version, self);
    int mismatches = 0, failed = 0;
    for (size_t i = 0; i < n; i++) {
        failed += checks[i].rc != 0;
        if (!checks[i].rc) {
            print_result(&checks[i], map->shards > 1);
            mismatches += !checks[i].r.match;
        }
    }
    int fbad = file ? check_file(file, tensor, ckpt_layer, checks, n, map->shards) : 0;
    free(checks);
    if (fbad < 0)
        failed++;
    else
        mismatches += fbad;
    if (mismatches)
        fprintf(stderr, "engramctl: verify: %d mismatch%s found\n", mismatches,
                mismatches == 1 ? "" : "es");
    return mismatches ? 1 : failed ? EXIT_USAGE : 0;
}

int cmd_verify(engram_client *cl, int argc, char **argv)
{
    int local = verify_take_local(&argc, argv);
    if (local < 0)
        return EXIT_USAGE;
    if (local)
        return verify_local(cl, argc, argv);
    opts o = {.names = {"--table", "--version", "--file", "--tensor", "--checkpoint", "--layer"},
              .n = 6};
    const char *c = "verify";
    if (parse_opts(&o, argc, argv, c))
        return EXIT_USAGE;
    if (o.npos)
        return die_usage("%s: unexpected argument '%s'", c, o.pos[0]);
    const char *table = ctl_need(&o, "--table", c), *sv = opt(&o, "--version");
    const char *file = opt(&o, "--file"), *tensor = opt(&o, "--tensor");
    uint64_t version = 0;
    if (!table || (sv && parse_u64(sv, "--version", &version)))
        return EXIT_USAGE;
    if (tensor && !file)
        return die_usage("%s: --tensor goes with --file", c);
    const char *ckpt = opt(&o, "--checkpoint"), *slayer = opt(&o, "--layer");
    uint64_t layer = 0;
    if (ckpt && file)
        return die_usage("%s: give --file or --checkpoint, not both", c);
    if (!ckpt != !slayer)
        return die_usage("%s: --checkpoint DIR and --layer L go together", c);
    if (slayer && (parse_u64(slayer, "--layer", &layer) || layer > INT64_MAX))
        return EXIT_USAGE;
    if (file && !tensor && strlen(file) > 12 && !strcmp(file + strlen(file) - 12, ".safetensors"))
        return die_usage("%s: %s is a safetensors file; name the tensor with --tensor", c, file);
    int rc;
    engram_cluster *map = cluster_of(cl, &rc);
    if (!map)
        return EXIT_USAGE;
    rc = verify_all(cl, map, table, version, ckpt ? ckpt : file, tensor,
                    ckpt ? (int64_t)layer : -1, ctl_server_address());
    cluster_free(map);
    return rc;
}
