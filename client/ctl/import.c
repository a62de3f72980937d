/* import.c: engramctl import-synthetic and import: streams rows through
 * Admin.Import in batches (a synthetic table generated on the fly, or a raw
 * / .npy file or one tensor of a .safetensors checkpoint read in chunks,
 * never whole), with progress on stderr (progress.c). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cluster.h"
#include "ctl.h"
#include "dtype.h"
#include "grpc_util.h"
#include "npy.h"
#include "progress.h"
#include "synthetic.h"

/* ---- imports ------------------------------------------------------------ */

/* --progress-every S: seconds between progress lines off a terminal. */
static int set_progress_every(const opts *o)
{
    uint32_t s;
    const char *v = opt(o, "--progress-every");
    if (!v)
        return 0;
    if (parse_u32(v, "--progress-every", &s))
        return -1;
    progress_set_every(s);
    return 0;
}

/* Prints the activated table and the rate of an import. */
static void print_import_done(const engram_table_info *t, uint64_t t0_ns)
{
    double s = (double)(now_ns() - t0_ns) / 1e9;
    double rows_s = s > 0 ? (double)t->rows / s : 0;
    printf("imported %s: %llu rows of %u bytes, version %llu, checksum %08x, "
           "xxh3 %016llx, resident %s\n", t->name, (unsigned long long)t->rows,
           t->row_bytes, (unsigned long long)t->version, t->checksum,
           (unsigned long long)t->xxh3, t->resident ? "yes" : "no");
    printf("%.0f rows/s, %.1f MB/s, %.3f s\n", rows_s,
           rows_s * t->row_bytes / 1e6, s);
}

/* Rows per write batch: about IMPORT_BATCH_BYTES, at least one row. */
static size_t batch_rows_for(uint32_t row_bytes)
{
    size_t n = IMPORT_BATCH_BYTES / row_bytes;
    return n ? n : 1;
}

/* dtype defaults to u8; dim to what fills row_bytes (row_bytes / dtype
 * size, or row_bytes x 32 / 33 for mxfp8_e4m3); both must agree with
 * row_bytes. */
static int synthetic_shape(const opts *o, uint32_t row_bytes,
                           const char **dtype, uint32_t *dim)
{
    *dtype = opt(o, "--dtype") ? opt(o, "--dtype") : "u8";
    size_t es = dtype_size(*dtype);
    if (!es)
        return die_usage("import-synthetic: unknown dtype '%s' (known: %s)",
                         *dtype, dtype_list());
    if (opt(o, "--dim")) {
        if (parse_u32(opt(o, "--dim"), "--dim", dim))
            return EXIT_USAGE;
    } else if (strcmp(*dtype, DTYPE_MXFP8_E4M3) == 0) {
        *dim = (uint32_t)((uint64_t)row_bytes * DTYPE_MX_BLOCK / (DTYPE_MX_BLOCK + 1));
    } else {
        *dim = (uint32_t)(row_bytes / es);
    }
    uint64_t want = dtype_row_bytes(*dtype, *dim);
    if (want != row_bytes)
        return die_usage("import-synthetic: a row of %u %s values is %llu bytes, not "
                         "--row-bytes %u", *dim, *dtype, (unsigned long long)want, row_bytes);
    return 0;
}

/* Generates and streams rows [0, rows) of the synthetic table; returns 0
 * or EXIT_RPC after reporting. */
static int stream_synthetic(engram_import *imp, const char *table, uint64_t seed,
                            uint64_t rows, uint32_t row_bytes, const char *dtype,
                            engram_error *e)
{
    size_t per = batch_rows_for(row_bytes);
    uint8_t *buf = malloc(per * row_bytes);
    if (!buf)
        return ctl_fail(ENGRAM_RESOURCE_EXHAUSTED, "out of memory for %zu rows",
                    per);
    char what[300];
    snprintf(what, sizeof what, "import %s", table);
    progress pg;
    progress_start(&pg, what, rows, row_bytes);
    int rc = 0;
    uint64_t r = 0;
    for (; r < rows; r += per) {
        uint64_t n = rows - r < per ? rows - r : per;
        synthetic_rows_typed(seed, r, n, buf, row_bytes, dtype);
        if ((rc = engram_import_write(imp, r, buf, n * row_bytes, e)))
            break;
        progress_update(&pg, r + n);
    }
    /* The bar's line ends before any error is printed. */
    progress_end(&pg, r < rows ? r : rows);
    free(buf);
    return rc ? report(e) : 0;
}

static int synthetic_source(void *ctx, const uint64_t *rows, size_t n, uint8_t *out, char *err,
                            size_t errlen)
{
    const cluster_import *ci = ctx;
    uint64_t seed = *(const uint64_t *)((const char *)ctx + sizeof *ci);
    for (size_t i = 0; i < n; i++)
        synthetic_row_typed(seed, rows[i], out + i * ci->row_bytes, ci->row_bytes, ci->dtype);
    return 0;
}

/* The cluster path: every shard's part, on every replica. */
static int import_synthetic_cluster(const engram_cluster *map, const char *table, uint64_t rows,
                                    uint32_t dim, const char *dtype, uint32_t row_bytes,
                                    uint64_t seed)
{
    struct { cluster_import ci; uint64_t seed; } c = {
        {table, rows, dim, dtype, row_bytes, synthetic_source, NULL, 0, 0}, seed};
    c.ci.ctx = &c;
    return cluster_import_run(&c.ci, map);
}

int import_synthetic_table(engram_client *cl, const char *table, uint64_t rows,
                           uint32_t dim, const char *dtype, uint32_t row_bytes,
                           uint64_t seed)
{
    int rc;
    engram_cluster *map = cluster_of(cl, &rc);
    if (!map)
        return rc;
    if (!cluster_is_single(map)) {
        rc = import_synthetic_cluster(map, table, rows, dim, dtype, row_bytes, seed);
        cluster_free(map);
        return rc;
    }
    cluster_free(map);
    uint64_t t0 = now_ns();
    engram_import *imp;
    engram_error e;
    if (engram_import_begin(cl, table, rows, dim, dtype, &imp, &e))
        return report(&e);
    rc = stream_synthetic(imp, table, seed, rows, row_bytes, dtype, &e);
    if (rc) {
        engram_import_abort(imp);
        return rc;
    }
    engram_table_info info;
    if (engram_import_finish(imp, &info, &e))
        return report(&e);
    print_import_done(&info, t0);
    return 0;
}

int cmd_import_synthetic(engram_client *cl, int argc, char **argv)
{
    opts o = {.names = {"--table", "--rows", "--row-bytes", "--seed",
                        "--dim", "--dtype", "--manifest", "--progress-every"}, .n = 8};
    const char *c = "import-synthetic";
    if (parse_opts(&o, argc, argv, c))
        return EXIT_USAGE;
    if (o.npos)
        return die_usage("%s: unexpected argument '%s'", c, o.pos[0]);
    if (set_progress_every(&o))
        return EXIT_USAGE;
    if (opt(&o, "--manifest"))
        return import_synthetic_manifest(cl, &o);
    const char *table = ctl_need(&o, "--table", c);
    const char *srows = ctl_need(&o, "--rows", c);
    const char *srb = ctl_need(&o, "--row-bytes", c);
    const char *sseed = ctl_need(&o, "--seed", c);
    if (!table || !srows || !srb || !sseed)
        return EXIT_USAGE;
    uint64_t rows, seed;
    uint32_t row_bytes, dim = 0;
    const char *dtype = NULL;
    if (parse_u64(srows, "--rows", &rows) ||
        parse_u32(srb, "--row-bytes", &row_bytes) ||
        parse_u64(sseed, "--seed", &seed))
        return EXIT_USAGE;
    if (row_bytes == 0)
        return die_usage("%s: --row-bytes must be positive", c);
    if (synthetic_shape(&o, row_bytes, &dtype, &dim))
        return EXIT_USAGE;
    return import_synthetic_table(cl, table, rows, dim, dtype, row_bytes, seed);
}

/* ---- .npy headers (parsed by npy.c) ------------------------------------- */

/* numpy descr strings each dtype accepts. bf16 and fp8 have no numpy type:
 * they come as raw 2-/1-byte fields. */
static int descr_matches(const char *dtype, const char *descr)
{
    static const struct { const char *dtype, *descr; } m[] = {
        {"f32", "<f4"},  {"f16", "<f2"},  {"f64", "<f8"},   {"i8", "|i1"},
        {"u8", "|u1"},   {"i16", "<i2"},  {"i32", "<i4"},   {"bf16", "<V2"},
        {"bf16", "|V2"}, {"bf16", "<u2"}, {"fp8_e4m3", "|u1"},
        {"fp8_e4m3", "|V1"}, {"fp8_e5m2", "|u1"}, {"fp8_e5m2", "|V1"},
    };
    for (size_t i = 0; i < sizeof m / sizeof m[0]; i++)
        if (strcmp(m[i].dtype, dtype) == 0 && strcmp(m[i].descr, descr) == 0)
            return 1;
    return 0;
}

/* Checks an .npy header against --dim/--dtype; sets *rows. */
static int npy_check(const npy_info *ni, const char *file, uint32_t dim,
                     const char *dtype, uint64_t *rows)
{
    if (!descr_matches(dtype, ni->descr))
        return ctl_fail(ENGRAM_INVALID_ARGUMENT,
                    "%s: .npy descr '%s' does not match --dtype %s", file,
                    ni->descr, dtype);
    uint64_t fdim = ni->ndim == 2 ? ni->shape[1] : 1;
    if (fdim != dim)
        return ctl_fail(ENGRAM_INVALID_ARGUMENT,
                    "%s: .npy shape[1] is %llu, --dim is %u", file,
                    (unsigned long long)fdim, dim);
    *rows = ni->shape[0];
    return 0;
}

/* ---- file import ---------------------------------------------------------- */

/* Opens F and works out where its rows start and how many there are: an
 * .npy file (by its magic) or raw rows. */
static int open_rows(const char *file, uint32_t dim, const char *dtype,
                     uint32_t row_bytes, FILE **fpo, uint64_t *rows)
{
    FILE *fp = fopen(file, "rb");
    if (!fp)
        return ctl_fail(ENGRAM_NOT_FOUND, "%s: %s", file, strerror(errno));
    struct stat st;
    if (fstat(fileno(fp), &st) != 0) {
        fclose(fp);
        return ctl_fail(ENGRAM_INTERNAL, "%s: %s", file, strerror(errno));
    }
    uint64_t size = (uint64_t)st.st_size;
    char magic[6] = {0};
    size_t got = fread(magic, 1, 6, fp);
    rewind(fp);
    if (got == 6 && memcmp(magic, "\x93NUMPY", 6) == 0) {
        npy_info ni;
        char why[300];
        if (npy_read(fp, &ni, why, sizeof why)) {
            fclose(fp);
            return ctl_fail(ENGRAM_INVALID_ARGUMENT, "%s: %s", file, why);
        }
        if (npy_check(&ni, file, dim, dtype, rows)) {
            fclose(fp);
            return EXIT_RPC;
        }
        uint64_t have = size - (uint64_t)ni.data_off;
        if (have != *rows * row_bytes) {
            fclose(fp);
            return ctl_fail(ENGRAM_INVALID_ARGUMENT,
                        "%s: .npy holds %llu data bytes, shape needs %llu",
                        file, (unsigned long long)have,
                        (unsigned long long)(*rows * row_bytes));
        }
        fseek(fp, ni.data_off, SEEK_SET);
    } else if (size % row_bytes) {
        fclose(fp);
        return ctl_fail(ENGRAM_INVALID_ARGUMENT,
                    "%s: size %llu is not a multiple of row_bytes %u "
                    "(dim %u x %s)", file, (unsigned long long)size,
                    row_bytes, dim, dtype);
    } else {
        *rows = size / row_bytes;
    }
    *fpo = fp;
    return 0;
}

/* Reads the rows in batches and writes them to the import; returns 0 or
 * EXIT_RPC after reporting. */
static int stream_file(engram_import *imp, FILE *fp, const char *file,
                       const char *table, uint64_t rows, uint32_t row_bytes,
                       engram_error *e)
{
    size_t per = batch_rows_for(row_bytes);
    uint8_t *buf = malloc(per * row_bytes);
    if (!buf)
        return ctl_fail(ENGRAM_RESOURCE_EXHAUSTED, "out of memory for %zu rows",
                    per);
    char what[300];
    snprintf(what, sizeof what, "import %s", table);
    progress pg;
    progress_start(&pg, what, rows, row_bytes);
    int rc = 0, short_read = 0;
    uint64_t r = 0;
    for (; r < rows; r += per) {
        uint64_t n = rows - r < per ? rows - r : per;
        if ((short_read = fread(buf, row_bytes, n, fp) != n) ||
            (rc = engram_import_write(imp, r, buf, n * row_bytes, e)))
            break;
        progress_update(&pg, r + n);
    }
    /* The bar's line ends before any error is printed. */
    progress_end(&pg, r < rows ? r : rows);
    free(buf);
    if (short_read)
        return ctl_fail(ENGRAM_DATA_LOSS, "%s: short read at row %llu", file,
                    (unsigned long long)r);
    return rc ? report(e) : 0;
}

/* A file's rows for a cluster import: the rows a shard needs are every
 * S-th, so one pread covers a batch and the shard's rows are picked out. */
typedef struct file_source {
    cluster_import ci;
    int fd;
    long data_off;
} file_source;

static int file_rows(void *ctx, const uint64_t *rows, size_t n, uint8_t *out, char *err,
                     size_t errlen)
{
    const file_source *fs = ctx;
    size_t rb = fs->ci.row_bytes;
    if (n == 0)
        return 0;
    uint64_t first = rows[0], span = rows[n - 1] - first + 1;
    uint8_t *block = malloc(span * rb);
    ssize_t got = pread(fs->fd, block, span * rb, fs->data_off + (off_t)(first * rb));
    if (got != (ssize_t)(span * rb)) {
        snprintf(err, errlen, "reading rows %llu..%llu: %s", (unsigned long long)first,
                 (unsigned long long)rows[n - 1], got < 0 ? strerror(errno) : "short read");
        free(block);
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        memcpy(out + i * rb, block + (rows[i] - first) * rb, rb);
    free(block);
    return 0;
}

static int import_file_cluster(const engram_cluster *map, const char *table, FILE *fp,
                               uint64_t rows, uint32_t dim, const char *dtype, uint32_t row_bytes)
{
    file_source fs = {{table, rows, dim, dtype, row_bytes, file_rows, NULL, 0, 0},
                      fileno(fp), ftell(fp)};
    fs.ci.ctx = &fs;
    return cluster_import_run(&fs.ci, map);
}

/* Streams the opened file to the one server cl talks to. */
static int import_file_single(engram_client *cl, FILE *fp, const char *file,
                              const import_spec *s, uint32_t row_bytes)
{
    uint64_t t0 = now_ns();
    engram_import *imp;
    engram_error e;
    int rc;
    if (engram_import_begin(cl, s->table, s->rows, s->dim, s->dtype, &imp, &e))
        return report(&e);
    if ((rc = stream_file(imp, fp, file, s->table, s->rows, row_bytes, &e))) {
        engram_import_abort(imp);
        return rc;
    }
    engram_table_info info;
    if (engram_import_finish(imp, &info, &e))
        return report(&e);
    print_import_done(&info, t0);
    return 0;
}

/* Streams the opened file to the server or, when it is one of a cluster,
 * to every shard. */
static int import_opened(engram_client *cl, FILE *fp, const char *file,
                         const import_spec *s)
{
    uint32_t row_bytes = (uint32_t)dtype_row_bytes(s->dtype, s->dim);
    int crc;
    engram_cluster *map = cluster_of(cl, &crc);
    if (map && cluster_is_single(map))
        crc = import_file_single(cl, fp, file, s, row_bytes);
    else if (map)
        crc = import_file_cluster(map, s->table, fp, s->rows, s->dim, s->dtype, row_bytes);
    cluster_free(map);
    return crc;
}

/* --dim/--dtype into the spec (either may be left to a .safetensors
 * tensor); 0 or EXIT_USAGE. */
static int spec_from_options(const opts *o, int need_shape, import_spec *s)
{
    const char *c = "import", *table = ctl_need(o, "--table", c);
    const char *sdim = opt(o, "--dim"), *dtype = opt(o, "--dtype");
    if (!table)
        return EXIT_USAGE;
    if (strlen(table) >= sizeof s->table)
        return die_usage("%s: table name of %zu bytes is too long", c, strlen(table));
    if (need_shape && (!ctl_need(o, "--dim", c) || !ctl_need(o, "--dtype", c)))
        return EXIT_USAGE;
    snprintf(s->table, sizeof s->table, "%s", table);
    snprintf(s->by, sizeof s->by, "%s", "--dim/--dtype");
    if (sdim && parse_u32(sdim, "--dim", &s->dim))
        return EXIT_USAGE;
    if (dtype && !dtype_size(dtype))
        return die_usage("%s: unknown dtype '%s' (known: %s)", c, dtype, dtype_list());
    if (dtype)
        snprintf(s->dtype, sizeof s->dtype, "%s", dtype);
    if (sdim && (s->dim == 0 || (dtype && (dtype_row_bytes(dtype, s->dim) == 0 ||
                                           dtype_row_bytes(dtype, s->dim) > UINT32_MAX))))
        return die_usage("%s: --dim %u gives no valid row size", c, s->dim);
    return 0;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

/* The options of import, checked for the combination given: --manifest
 * (with --layer) replaces --table/--dim/--dtype. */
static int import_spec_of(engram_client *cl, const opts *o, import_spec *s)
{
    const char *c = "import", *model = opt(o, "--manifest");
    int tensor = opt(o, "--tensor") != NULL;
    if (opt(o, "--checkpoint")) {
        if (opt(o, "--file") || tensor)
            return die_usage("%s: --checkpoint reads the layer's tensors itself; drop "
                             "--file/--tensor", c);
        if (!model)
            return die_usage("%s: --checkpoint goes with --manifest MODEL --layer L", c);
    }
    const char *file = opt(o, "--checkpoint") ? opt(o, "--checkpoint") : ctl_need(o, "--file", c);
    if (!file)
        return EXIT_USAGE;
    if (!tensor && ends_with(file, ".safetensors"))
        return die_usage("%s: %s is a safetensors file; name the tensor with --tensor", c,
                         file);
    if (!model && opt(o, "--layer"))
        return die_usage("%s: --layer goes with --manifest", c);
    if (!model)
        return spec_from_options(o, !tensor, s);
    if (opt(o, "--table") || opt(o, "--dim") || opt(o, "--dtype"))
        return die_usage("%s: --manifest takes the table, dim and dtype from the manifest; "
                         "drop --table/--dim/--dtype", c);
    const char *layer = ctl_need(o, "--layer", c);
    return layer ? spec_from_manifest(cl, model, layer, s) : EXIT_USAGE;
}

/* Opens a raw / .npy file for the spec; the rows it holds must match a
 * manifest's. */
static int open_plain(const char *file, import_spec *s, FILE **fp)
{
    uint64_t rows = 0;
    uint32_t row_bytes = (uint32_t)dtype_row_bytes(s->dtype, s->dim);
    if (open_rows(file, s->dim, s->dtype, row_bytes, fp, &rows))
        return EXIT_RPC;
    if (s->rows && rows != s->rows) {
        fclose(*fp);
        return ctl_fail(ENGRAM_INVALID_ARGUMENT, "%s: holds %llu rows; %s says %llu", file,
                    (unsigned long long)rows, s->by, (unsigned long long)s->rows);
    }
    s->rows = rows;
    return 0;
}

int open_import_file(const char *file, const char *tensor, import_spec *s, FILE **fp)
{
    return tensor ? open_tensor(file, tensor, s, fp) : open_plain(file, s, fp);
}

int cmd_import(engram_client *cl, int argc, char **argv)
{
    opts o = {.names = {"--table", "--file", "--dim", "--dtype", "--tensor", "--manifest",
                        "--layer", "--progress-every", "--checkpoint"}, .n = 9};
    const char *c = "import";
    if (parse_opts(&o, argc, argv, c))
        return EXIT_USAGE;
    if (o.npos)
        return die_usage("%s: unexpected argument '%s'", c, o.pos[0]);
    import_spec s = {{0}};
    int rc = set_progress_every(&o) ? EXIT_USAGE : import_spec_of(cl, &o, &s);
    if (rc)
        return rc;
    const char *file = opt(&o, "--file"), *tensor = opt(&o, "--tensor");
    const char *ckpt = opt(&o, "--checkpoint");
    FILE *fp = NULL;
    if (ckpt) {
        uint64_t layer;
        rc = parse_u64(opt(&o, "--layer"), "--layer", &layer) ? EXIT_USAGE
             : open_checkpoint(ckpt, (int64_t)layer, &s, &fp);
        file = ckpt;
    } else {
        rc = open_import_file(file, tensor, &s, &fp);
    }
    if (rc)
        return rc;
    rc = import_opened(cl, fp, file, &s);
    fclose(fp);
    return rc;
}
