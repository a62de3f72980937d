/* rocksdb_tuning_bench.c: engram-rocksdb-tuning-bench, the RocksDB tuning
 * study for row lookups (a tool built with the project, never run by ctest).
 *
 * In one process, with no server: for every table layout that needs its own
 * files (block size, compression, filter, data block index, partitioning) it
 * writes the same synthetic table once, as the server's import does (keys
 * from store_row_key, rows from synthetic_rows, SstFileWriter with the rows
 * options, then ingest with move), into DIR/<layout>. Then it opens those
 * databases with each variant's options (store_tuning_apply plus what the
 * variant adds) and times MultiGet the way store.c reads misses: batches of
 * --batch sorted rows split into sorted calls of --chunk keys, values copied
 * out. Two row distributions: uniform and Zipf(1.0) (hot rows scattered over
 * the table by a multiplicative permutation). Every measurement opens the
 * database afresh with a new block cache, warms it for at least --warm
 * seconds (and until the cache is full), then times --seconds per
 * distribution with the same row sequence for every variant. Before each
 * measurement its database files are read once (untimed) so that it runs
 * from the page cache: the study measures CPU per lookup, not the disk.
 *
 * Fairness on a shared machine: each repetition measures the current default
 * every --every variants, each variant's ratio is against the mean of the two
 * default measurements around it, repetitions alternate the variants' order,
 * and the table shows the median ratio over repetitions. Only the MultiGet
 * calls and the copy are timed (key generation and sorting are not).
 * Output: a table, then one `tune: key=value ...` line per variant. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <rocksdb/c.h>

#include "bench_util.h"
#include "store.h"
#include "store_tuning.h"
#include "synthetic.h"

const char bench_prog[] = "engram-rocksdb-tuning-bench";

#define MIB ((size_t)1024 * 1024)

/* What a variant changes. Fields of the layout need their own files; the
 * rest are open/read options. */
typedef struct variant {
    const char *name;
    store_tuning t;
    size_t cache_bytes;
    int filters_for_hits;  /* optimize_filters_for_hits: skip last-level filters */
    size_t chunk;          /* keys per MultiGet call; 0: --chunk */
} variant;

typedef struct result {
    double rps[2], p50[2], p99[2];   /* [uniform, zipf]; latency in us */
} result;

static struct {
    const char *dir;
    uint64_t rows;
    size_t row_bytes, batch, chunk;
    size_t cache_bytes;
    double seconds, warm;
    int reps, every;
    uint64_t seed;
    const char *only;
    int keep;
} O = {NULL, 8000000, 128, 4096, 512, 128 * MIB, 1.5, 0.5, 3, 4, 7, NULL, 0};

static void die(const char *what, char *err)
{
    fprintf(stderr, "%s: %s: %s\n", bench_prog, what, err ? err : "failed");
    exit(2);
}

/* ---- layouts ------------------------------------------------------------ */

static int same_layout(const variant *a, const variant *b)
{
    return a->t.block_size == b->t.block_size && a->t.bloom_bits == b->t.bloom_bits &&
           a->t.compression == b->t.compression && a->t.checksum == b->t.checksum &&
           a->t.data_block_hash == b->t.data_block_hash && a->t.partitioned == b->t.partitioned;
}

static void layout_dir(const variant *v, char *out, size_t len)
{
    snprintf(out, len, "%s/b%zu-f%d-c%d-k%d-h%d-p%d", O.dir, v->t.block_size, v->t.bloom_bits,
             v->t.compression, v->t.checksum, v->t.data_block_hash, v->t.partitioned);
}

/* Options for v: the server's (store_tuning_apply, store_tuning_cache),
 * plus what only the bench varies. */
typedef struct opened {
    rocksdb_options_t *opts;
    rocksdb_block_based_table_options_t *bbto;
    rocksdb_cache_t *cache;
    rocksdb_readoptions_t *ro;
    rocksdb_t *db;
    rocksdb_column_family_handle_t *cf;
} opened;

static void make_options(const variant *v, opened *o)
{
    o->opts = rocksdb_options_create();
    rocksdb_options_set_create_if_missing(o->opts, 1);
    o->cache = store_tuning_cache(&v->t, v->cache_bytes ? v->cache_bytes : O.cache_bytes);
    o->bbto = store_tuning_apply(&v->t, o->opts, o->cache);
    if (v->filters_for_hits)
        rocksdb_options_set_optimize_filters_for_hits(o->opts, 1);
    o->ro = store_tuning_readoptions(&v->t);
}

static void open_db(const variant *v, opened *o)
{
    char dir[4096];
    layout_dir(v, dir, sizeof dir);
    make_options(v, o);
    const char *names[1] = {"default"};
    const rocksdb_options_t *cfo[1] = {o->opts};
    char *err = NULL;
    o->db = rocksdb_open_column_families(o->opts, dir, 1, names, cfo, &o->cf, &err);
    if (err)
        die("opening the database", err);
}

static void close_db(opened *o)
{
    rocksdb_column_family_handle_destroy(o->cf);
    rocksdb_close(o->db);
    rocksdb_options_destroy(o->opts);
    rocksdb_block_based_options_destroy(o->bbto);
    rocksdb_cache_destroy(o->cache);
    rocksdb_readoptions_destroy(o->ro);
}

/* Writes the table into v's layout directory unless it is there: SST files
 * of at most 256 MiB of rows in key order, ingested with move. */
static void build_layout(const variant *v)
{
    char dir[4096], mark[4200];
    layout_dir(v, dir, sizeof dir);
    snprintf(mark, sizeof mark, "%s/ENGRAM_TUNING_ROWS_%llu_%zu", dir,
             (unsigned long long)O.rows, O.row_bytes);
    if (access(mark, F_OK) == 0)
        return;
    uint64_t t0 = bench_now_ns();
    opened o;
    open_db(v, &o);
    rocksdb_envoptions_t *envo = rocksdb_envoptions_create();
    const uint64_t per_file = (256 * MIB) / (O.row_bytes + ROW_KEY_LEN);
    const uint64_t chunk = 65536;
    uint8_t *rows = xmalloc(chunk * O.row_bytes);
    char **files = NULL;
    size_t nfiles = 0;
    char *err = NULL;
    for (uint64_t first = 0; first < O.rows; first += per_file) {
        char path[4200];
        snprintf(path, sizeof path, "%s/ingest-%06zu.sst", dir, nfiles);
        files = realloc(files, (nfiles + 1) * sizeof *files);
        files[nfiles++] = strdup(path);
        rocksdb_sstfilewriter_t *w = rocksdb_sstfilewriter_create(envo, o.opts);
        rocksdb_sstfilewriter_open(w, path, &err);
        if (err)
            die("opening an SST file", err);
        uint64_t end = first + per_file < O.rows ? first + per_file : O.rows;
        for (uint64_t r = first; r < end; r += chunk) {
            uint64_t n = end - r < chunk ? end - r : chunk;
            synthetic_rows(O.seed, r, n, rows, O.row_bytes);
            for (uint64_t i = 0; i < n; i++) {
                uint8_t key[ROW_KEY_LEN];
                store_row_key(key, 1, 1, r + i);
                rocksdb_sstfilewriter_put(w, (char *)key, sizeof key,
                                          (char *)rows + i * O.row_bytes, O.row_bytes, &err);
                if (err)
                    die("writing a row", err);
            }
        }
        rocksdb_sstfilewriter_finish(w, &err);
        if (err)
            die("finishing an SST file", err);
        rocksdb_sstfilewriter_destroy(w);
    }
    rocksdb_ingestexternalfileoptions_t *io = rocksdb_ingestexternalfileoptions_create();
    rocksdb_ingestexternalfileoptions_set_move_files(io, 1);
    rocksdb_ingest_external_file_cf(o.db, o.cf, (const char *const *)files, nfiles, io, &err);
    if (err)
        die("ingesting", err);
    rocksdb_ingestexternalfileoptions_destroy(io);
    rocksdb_envoptions_destroy(envo);
    for (size_t i = 0; i < nfiles; i++)
        free(files[i]);
    free(files);
    free(rows);
    close_db(&o);
    FILE *f = fopen(mark, "w");
    if (f)
        fclose(f);
    char cmd[4400];
    snprintf(cmd, sizeof cmd, "du -sm '%s' | cut -f1", dir);
    FILE *p = popen(cmd, "r");
    char mb[32] = "?";
    if (p) {
        if (!fgets(mb, sizeof mb, p))
            strcpy(mb, "?");
        mb[strcspn(mb, "\n")] = 0;
        pclose(p);
    }
    printf("layout %s: %llu rows written and ingested in %.1f s, %s MB on disk\n", dir,
           (unsigned long long)O.rows, (bench_now_ns() - t0) / 1e9, mb);
    fflush(stdout);
}

/* ---- row streams -------------------------------------------------------- */

typedef struct rng {
    uint64_t s;
} rng;

static uint64_t next64(rng *r)
{
    r->s += 0x9E3779B97F4A7C15ULL;
    return splitmix64(r->s);
}

/* Zipf(1.0) over N rows by the continuous inverse: rank = (N+1)^u - 1, so
 * P(rank <= x) = ln(x+1)/ln(N+1). Ranks are scattered over the table by
 * multiplying with a prime mod N, as hashed n-gram ids are. */
static uint64_t zipf_row(rng *r, double logn1)
{
    double u = (next64(r) >> 11) * (1.0 / 9007199254740992.0);
    uint64_t rank = (uint64_t)exp(u * logn1) - 1;
    if (rank >= O.rows)
        rank = O.rows - 1;
    return (uint64_t)(((unsigned __int128)rank * 2654435761ull) % O.rows);
}

/* ---- measuring ---------------------------------------------------------- */

typedef struct reader {
    uint64_t *rows;
    uint8_t (*keys)[ROW_KEY_LEN];
    const char **kp;
    size_t *ks;
    rocksdb_pinnableslice_t **vals;
    char **errs;
    uint8_t *out, *check;
    uint64_t checked, mismatches;
} reader;

static void fill_batch(reader *rd, rng *r, int zipf, double logn1)
{
    for (size_t i = 0; i < O.batch; i++)
        rd->rows[i] = zipf ? zipf_row(r, logn1) : next64(r) % O.rows;
    qsort(rd->rows, O.batch, sizeof *rd->rows, cmp_u64);
    for (size_t i = 0; i < O.batch; i++) {
        store_row_key(rd->keys[i], 1, 1, rd->rows[i]);
        rd->kp[i] = (const char *)rd->keys[i];
        rd->ks[i] = ROW_KEY_LEN;
    }
}

/* The timed part: sorted MultiGet calls of `chunk` keys, values copied out
 * and released, as store.c's multiget_batch does. */
static void read_batch(reader *rd, opened *o, size_t chunk)
{
    for (size_t off = 0; off < O.batch; off += chunk) {
        size_t n = O.batch - off < chunk ? O.batch - off : chunk;
        rocksdb_batched_multi_get_cf(o->db, o->ro, o->cf, n, rd->kp + off, rd->ks + off,
                                     rd->vals + off, rd->errs + off, 1);
        for (size_t i = off; i < off + n; i++) {
            size_t vl = 0;
            const char *v = rd->vals[i] ? rocksdb_pinnableslice_value(rd->vals[i], &vl) : NULL;
            if (rd->errs[i] || !v || vl != O.row_bytes)
                die("a row read failed", rd->errs[i]);
            memcpy(rd->out + i * O.row_bytes, v, vl);
            rocksdb_pinnableslice_destroy(rd->vals[i]);
        }
    }
}

/* Untimed: one row of the batch against the synthetic rule. */
static void check_batch(reader *rd, rng *r)
{
    size_t i = next64(r) % O.batch;
    synthetic_row(O.seed, rd->rows[i], rd->check, O.row_bytes);
    rd->checked++;
    if (memcmp(rd->check, rd->out + i * O.row_bytes, O.row_bytes) != 0)
        rd->mismatches++;
}

/* Reads every file of v's layout once, untimed, so that each measurement
 * starts with its database in the page cache: with a dozen 1.1 GB layouts
 * the kernel keeps only some, and a variant read partly from disk would
 * measure the disk, not the setting. */
static void page_in(const variant *v)
{
    char dir[4096], path[4400];
    layout_dir(v, dir, sizeof dir);
    DIR *d = opendir(dir);
    if (!d)
        return;
    static char buf[1 << 20];
    for (struct dirent *e; (e = readdir(d));) {
        if (!strstr(e->d_name, ".sst"))
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        int fd = open(path, O_RDONLY);
        if (fd < 0)
            continue;
        while (read(fd, buf, sizeof buf) > 0)
            ;
        close(fd);
    }
    closedir(d);
}

static void measure(const variant *v, reader *rd, result *res)
{
    page_in(v);
    opened o;
    open_db(v, &o);
    size_t chunk = v->chunk ? v->chunk : O.chunk;
    const double logn1 = log((double)O.rows + 1.0);
    for (int zipf = 0; zipf < 2; zipf++) {
        rng r = {O.seed * 1000003 + (uint64_t)zipf}, rc = {99};
        /* Warm-up: --warm seconds and until the cache is full (at most 3x). */
        uint64_t t0 = bench_now_ns();
        size_t cap = rocksdb_cache_get_capacity(o.cache);
        for (;;) {
            double el = (bench_now_ns() - t0) / 1e9;
            if (el >= O.warm * 3 ||
                (el >= O.warm && rocksdb_cache_get_usage(o.cache) >= cap * 0.95))
                break;
            fill_batch(rd, &r, zipf, logn1);
            read_batch(rd, &o, chunk);
        }
        lat_log l = {0};
        uint64_t timed = 0, rows = 0;
        while (timed < (uint64_t)(O.seconds * 1e9)) {
            fill_batch(rd, &r, zipf, logn1);
            uint64_t a = bench_now_ns();
            read_batch(rd, &o, chunk);
            uint64_t d = bench_now_ns() - a;
            timed += d;
            rows += O.batch;
            lat_push(&l, d);
            check_batch(rd, &rc);
        }
        lat_sort(&l);
        res->rps[zipf] = rows / (timed / 1e9);
        res->p50[zipf] = pct_ms(&l, 50) * 1000;
        res->p99[zipf] = pct_ms(&l, 99) * 1000;
        free(l.ns);
    }
    close_db(&o);
}

/* ---- the study ---------------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *x, int n)
{
    qsort(x, n, sizeof *x, cmp_double);
    return n % 2 ? x[n / 2] : (x[n / 2 - 1] + x[n / 2]) / 2;
}

static size_t parse_bytes(const char *s)
{
    char *end;
    double v = strtod(s, &end);
    if (*end == 'K' || *end == 'k')
        v *= 1024;
    else if (*end == 'M' || *end == 'm')
        v *= MIB;
    else if (*end == 'G' || *end == 'g')
        v *= 1024 * MIB;
    return (size_t)v;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: %s --dir DIR [--rows N] [--row-bytes B] [--cache BYTES] [--batch N]\n"
            "          [--chunk N] [--seconds S] [--warm S] [--reps R] [--every K] [--seed S]\n"
            "          [--only NAME,NAME] [--list]\n",
            bench_prog);
    exit(2);
}

static int wanted(const char *name)
{
    if (!O.only || strcmp(name, "default") == 0)
        return 1;
    size_t n = strlen(name);
    for (const char *p = O.only; (p = strstr(p, name)); p += n)
        if ((p == O.only || p[-1] == ',') && (p[n] == ',' || p[n] == 0))
            return 1;
    return 0;
}

int main(int argc, char **argv)
{
    int list = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--list")) { list = 1; continue; }
        if (!v)
            usage();
        if (!strcmp(a, "--dir")) O.dir = v;
        else if (!strcmp(a, "--rows")) O.rows = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--row-bytes")) O.row_bytes = strtoul(v, NULL, 10);
        else if (!strcmp(a, "--cache")) O.cache_bytes = parse_bytes(v);
        else if (!strcmp(a, "--batch")) O.batch = strtoul(v, NULL, 10);
        else if (!strcmp(a, "--chunk")) O.chunk = strtoul(v, NULL, 10);
        else if (!strcmp(a, "--seconds")) O.seconds = atof(v);
        else if (!strcmp(a, "--warm")) O.warm = atof(v);
        else if (!strcmp(a, "--reps")) O.reps = atoi(v);
        else if (!strcmp(a, "--every")) O.every = atoi(v);
        else if (!strcmp(a, "--seed")) O.seed = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--only")) O.only = v;
        else usage();
        i++;
    }

    /* The variants: each changes one thing from the current default, except
     * "before_study", the settings the server had before this study. Cache
     * sizes are absolute. */
    const store_tuning d = store_tuning_default();
    const size_t c = O.cache_bytes;
    store_tuning t;
    /* Each V starts from the default and overrides fields (later wins). */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Woverride-init"
#define V(NAME, ...) {.name = NAME, .t = d, .cache_bytes = c, __VA_ARGS__}
#define T(FIELD, VAL) (t = d, t.FIELD = (VAL), t)
    variant all[] = {
        V("default"),
        V("cache_32M", .cache_bytes = 32 * MIB),
        V("cache_512M", .cache_bytes = 512 * MIB),
        V("block_1K", .t = T(block_size, 1024)),
        V("block_2K", .t = T(block_size, 2048)),
        V("block_8K", .t = T(block_size, 8192)),
        V("block_16K", .t = T(block_size, 16384)),
        V("bloom_0", .t = T(bloom_bits, 0)),
        V("filters_for_hits", .filters_for_hits = 1),
        V("index_filter_in_heap", .t = T(cache_index_and_filter, 0)),
        V("pin_l0", .t = T(pin_l0_index_and_filter, 1)),
        V("partitioned", .t = T(partitioned, 1)),
        V("shard_32M", .t = T(cache_min_shard, 32 * MIB)),
        V("verify_off", .t = T(verify_checksums, 0)),
        V("lz4", .t = T(compression, rocksdb_lz4_compression)),
        V("zstd", .t = T(compression, rocksdb_zstd_compression)),
        V("hash_index", .t = T(data_block_hash, 1)),
        V("chunk_4096", .chunk = 4096),
        V("shard_rocksdb", .t = T(cache_min_shard, 0)),
        V("shard_8M", .t = T(cache_min_shard, 8 * MIB)),
        V("shard_128M", .t = T(cache_min_shard, 128 * MIB)),
        /* The settings before this study (commit a2b5f5b). */
        V("before_study", .t = (t = d, t.block_size = 4096, t.bloom_bits = 10,
                                 t.cache_index_and_filter = 1, t.pin_l0_index_and_filter = 0,
                                 t.compression = rocksdb_no_compression, t.checksum = 4,
                                 t.verify_checksums = 1, t.data_block_hash = 0,
                                 t.partitioned = 0, t.cache_min_shard = 0, t)),
    };
#undef V
#undef T
#pragma GCC diagnostic pop
    const size_t nall = sizeof all / sizeof all[0];
    if (list) {
        for (size_t i = 0; i < nall; i++)
            printf("%s\n", all[i].name);
        return 0;
    }
    if (!O.dir || O.rows == 0 || O.row_bytes == 0 || O.batch == 0 || O.chunk == 0 ||
        O.reps < 1 || O.every < 1)
        usage();
    mkdir(O.dir, 0755);

    variant *vs[64];
    size_t nv = 0;
    for (size_t i = 1; i < nall; i++)
        if (wanted(all[i].name))
            vs[nv++] = &all[i];
    const variant *def = &all[0];

    printf("%s: %llu rows x %zu B (%.0f MiB of rows), cache %zu MiB unless the variant says, "
           "batches of %zu sorted rows in MultiGet calls of %zu keys, %.1f s per distribution "
           "after >= %.1f s warm-up, %d repetitions, default re-measured every %d variants\n",
           bench_prog, (unsigned long long)O.rows, O.row_bytes,
           O.rows * (double)O.row_bytes / MIB, O.cache_bytes / MIB, O.batch, O.chunk, O.seconds,
           O.warm, O.reps, O.every);
    printf("default: block %zu, bloom %d, cache_index_and_filter %d, pin_l0 %d, compression %d, "
           "checksum %d, verify %d, data_block_hash %d, partitioned %d, cache_min_shard %zu\n",
           d.block_size, d.bloom_bits, d.cache_index_and_filter, d.pin_l0_index_and_filter,
           d.compression, d.checksum, d.verify_checksums, d.data_block_hash, d.partitioned,
           d.cache_min_shard);
    fflush(stdout);

    build_layout(def);
    for (size_t i = 0; i < nv; i++) {
        int done = same_layout(vs[i], def);
        for (size_t j = 0; j < i && !done; j++)
            done = same_layout(vs[i], vs[j]);
        if (!done)
            build_layout(vs[i]);
    }

    reader rd = {0};
    rd.rows = xmalloc(O.batch * sizeof *rd.rows);
    rd.keys = xmalloc(O.batch * ROW_KEY_LEN);
    rd.kp = xmalloc(O.batch * sizeof *rd.kp);
    rd.ks = xmalloc(O.batch * sizeof *rd.ks);
    rd.vals = xmalloc(O.batch * sizeof *rd.vals);
    rd.errs = xmalloc(O.batch * sizeof *rd.errs);
    rd.out = xmalloc(O.batch * O.row_bytes);
    rd.check = xmalloc(O.row_bytes);

    /* ratio[v][rep][metric]: metric 0/1 rows/s uniform/zipf, 2/3 p50, 4/5 p99 */
    double (*ratio)[16][6] = calloc(nv, sizeof *ratio);
    result *sum = calloc(nv + 1, sizeof *sum);   /* absolute, summed over reps; [nv] = default */
    int ndef = 0;
    if (O.reps > 16)
        O.reps = 16;
    for (int rep = 0; rep < O.reps; rep++) {
        size_t order[64];
        for (size_t i = 0; i < nv; i++)
            order[i] = rep % 2 ? nv - 1 - i : i;
        result before, after, cur[64];
        measure(def, &rd, &before);
        for (size_t g = 0; g < nv; g += O.every) {
            size_t ge = g + O.every < nv ? g + O.every : nv;
            for (size_t k = g; k < ge; k++) {
                measure(vs[order[k]], &rd, &cur[k]);
                printf("rep %d %-22s uniform %9.0f rows/s  zipf %9.0f rows/s\n", rep + 1,
                       vs[order[k]]->name, cur[k].rps[0], cur[k].rps[1]);
                fflush(stdout);
            }
            measure(def, &rd, &after);
            printf("rep %d %-22s uniform %9.0f rows/s  zipf %9.0f rows/s\n", rep + 1, "default",
                   after.rps[0], after.rps[1]);
            fflush(stdout);
            for (size_t k = g; k < ge; k++) {
                size_t vi = order[k];
                for (int z = 0; z < 2; z++) {
                    double br = (before.rps[z] + after.rps[z]) / 2;
                    double b50 = (before.p50[z] + after.p50[z]) / 2;
                    double b99 = (before.p99[z] + after.p99[z]) / 2;
                    ratio[vi][rep][z] = cur[k].rps[z] / br;
                    ratio[vi][rep][2 + z] = cur[k].p50[z] / b50;
                    ratio[vi][rep][4 + z] = cur[k].p99[z] / b99;
                    sum[vi].rps[z] += cur[k].rps[z];
                    sum[vi].p50[z] += cur[k].p50[z];
                    sum[vi].p99[z] += cur[k].p99[z];
                }
            }
            for (int z = 0; z < 2; z++) {
                sum[nv].rps[z] += after.rps[z];
                sum[nv].p50[z] += after.p50[z];
                sum[nv].p99[z] += after.p99[z];
            }
            ndef++;
            before = after;
        }
    }

    printf("\nmedian over %d repetitions of variant / default (interleaved); rows/s ratio > 1 "
           "is faster, latency ratio < 1 is faster; absolute figures are means\n", O.reps);
    printf("%-22s %8s %8s %8s %8s %8s %8s | %10s %10s %8s %8s\n", "variant", "uni_tput",
           "zipf_tput", "uni_p50", "uni_p99", "zipf_p50", "zipf_p99", "uni_rows/s",
           "zipf_rows/s", "uni_p50us", "zipf_p50us");
    printf("%-22s %8.3f %8.3f %8.3f %8.3f %8.3f %8.3f | %10.0f %10.0f %8.0f %8.0f\n", "default",
           1.0, 1.0, 1.0, 1.0, 1.0, 1.0, sum[nv].rps[0] / ndef, sum[nv].rps[1] / ndef,
           sum[nv].p50[0] / ndef, sum[nv].p50[1] / ndef);
    for (size_t i = 0; i < nv; i++) {
        double m[6];
        for (int k = 0; k < 6; k++) {
            double x[16];
            for (int r = 0; r < O.reps; r++)
                x[r] = ratio[i][r][k];
            m[k] = median(x, O.reps);
        }
        printf("%-22s %8.3f %8.3f %8.3f %8.3f %8.3f %8.3f | %10.0f %10.0f %8.0f %8.0f\n",
               vs[i]->name, m[0], m[1], m[2], m[4], m[3], m[5], sum[i].rps[0] / O.reps,
               sum[i].rps[1] / O.reps, sum[i].p50[0] / O.reps, sum[i].p50[1] / O.reps);
    }
    printf("\n");
    for (size_t i = 0; i < nv; i++) {
        double m[6];
        for (int k = 0; k < 6; k++) {
            double x[16];
            for (int r = 0; r < O.reps; r++)
                x[r] = ratio[i][r][k];
            m[k] = median(x, O.reps);
        }
        printf("tune: variant=%s rows=%llu cache_mib=%zu uniform_ratio=%.3f zipf_ratio=%.3f "
               "uniform_p50_ratio=%.3f uniform_p99_ratio=%.3f zipf_p50_ratio=%.3f "
               "zipf_p99_ratio=%.3f uniform_rows_per_s=%.0f zipf_rows_per_s=%.0f\n",
               vs[i]->name, (unsigned long long)O.rows,
               (vs[i]->cache_bytes ? vs[i]->cache_bytes : O.cache_bytes) / MIB, m[0], m[1], m[2],
               m[4], m[3], m[5], sum[i].rps[0] / O.reps, sum[i].rps[1] / O.reps);
    }
    printf("verify: %llu rows checked against the synthetic rule (one per timed batch): "
           "%llu mismatches\n",
           (unsigned long long)rd.checked, (unsigned long long)rd.mismatches);
    return rd.mismatches ? 1 : 0;
}
