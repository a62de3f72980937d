/* engramctl: the operator's command line for engram-store, on libengram.
 *
 *   engramctl [--server HOST:PORT] [--deadline-ms N] COMMAND ...
 *
 * Commands list and describe tables, import a synthetic table or a raw /
 * .npy file (streamed in chunks, never read whole), look rows up and verify
 * a synthetic table against the rule in common/synthetic.h.
 *
 * Exit codes: 0 ok; 1 an RPC failed or verification found a mismatch;
 * 2 usage error. Errors go to stderr as `engramctl: STATUS_NAME: message`. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "dtype.h"
#include "engram/engram.h"
#include "grpc_util.h"
#include "synthetic.h"

#define EXIT_RPC 1
#define EXIT_USAGE 2

/* Bytes generated / read per import write (the library splits writes into
 * <= 4 MiB messages anyway; sizing by bytes keeps narrow rows from turning
 * into many tiny writes), and rows looked up per verify batch. */
#define IMPORT_BATCH_BYTES (4u << 20)
#define VERIFY_BATCH_ROWS 4096

static const char usage_text[] =
    "usage: engramctl [--server HOST:PORT] [--deadline-ms N] COMMAND ...\n"
    "\n"
    "  --server HOST:PORT   server address (default $ENGRAM_SERVER or "
    "127.0.0.1:7070)\n"
    "  --deadline-ms N      deadline of each call in ms, 0 = none "
    "(default 10000)\n"
    "\n"
    "commands:\n"
    "  tables                               list tables\n"
    "  table NAME                           show one table\n"
    "  import-synthetic --table NAME --rows N --row-bytes B --seed S\n"
    "                   [--dim D --dtype T] import the synthetic table\n"
    "  import --table NAME --file F --dim D --dtype T\n"
    "                                       import a raw row file or .npy\n"
    "  lookup --table NAME ROW...           print rows as hex\n"
    "  verify-synthetic --table NAME --seed S [--samples K] [--rng-seed R]\n"
    "                                       check rows against the rule\n"
    "  help                                 this text\n";

/* ---- errors and number parsing ------------------------------------------ */

static int die_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Prints `engramctl: INVALID_ARGUMENT: ...` and returns the usage exit code. */
static int die_usage(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "engramctl: INVALID_ARGUMENT: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (see engramctl --help)\n");
    va_end(ap);
    return EXIT_USAGE;
}

static int report(const engram_error *e)
{
    fprintf(stderr, "engramctl: %s: %s\n", engram_status_name(e->code),
            e->message);
    return EXIT_RPC;
}

static int fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* An error that is not a usage error: prints it, returns EXIT_RPC. */
static int fail(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "engramctl: %s: ", engram_status_name(code));
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return EXIT_RPC;
}

/* Strict unsigned decimal: digits only (no sign, space or suffix), no
 * overflow. Returns 0 or -1 after printing a message naming `what`. */
static int parse_u64(const char *s, const char *what, uint64_t *out)
{
    if (!s || !*s || *s < '0' || *s > '9') {
        die_usage("%s: '%s' is not a non-negative integer", what, s ? s : "");
        return -1;
    }
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end) {
        die_usage("%s: '%s' is not a non-negative integer", what, s);
        return -1;
    }
    if (errno == ERANGE) {
        die_usage("%s: '%s' is out of range", what, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_u32(const char *s, const char *what, uint32_t *out)
{
    uint64_t v;
    if (parse_u64(s, what, &v))
        return -1;
    if (v > UINT32_MAX) {
        die_usage("%s: '%s' is larger than %u", what, s, UINT32_MAX);
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

/* ---- command options ---------------------------------------------------- */

/* A command's `--name value` options (also `--name=value`) and its
 * positional arguments. Every option takes a value. */
typedef struct {
    const char *names[8];
    const char *values[8];
    int n;
    const char *pos[256];
    int npos;
} opts;

/* Parses argv against the option names in o->names; returns 0 or the
 * usage exit code after a message. */
static int parse_opts(opts *o, int argc, char **argv, const char *cmd)
{
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0 || a[2] == '\0') {
            if (o->npos == (int)(sizeof o->pos / sizeof o->pos[0]))
                return die_usage("%s: more than %d arguments", cmd, o->npos);
            o->pos[o->npos++] = a;
            continue;
        }
        const char *eq = strchr(a, '=');
        size_t nlen = eq ? (size_t)(eq - a) : strlen(a);
        int k = 0;
        while (k < o->n && !(strlen(o->names[k]) == nlen &&
                             strncmp(o->names[k], a, nlen) == 0))
            k++;
        if (k == o->n)
            return die_usage("%s: unknown option '%.*s'", cmd, (int)nlen, a);
        if (eq) {
            o->values[k] = eq + 1;
        } else if (i + 1 < argc) {
            o->values[k] = argv[++i];
        } else {
            return die_usage("%s: option %s needs a value", cmd, a);
        }
    }
    return 0;
}

static const char *opt(const opts *o, const char *name)
{
    for (int k = 0; k < o->n; k++)
        if (strcmp(o->names[k], name) == 0)
            return o->values[k];
    return NULL;
}

/* Fetches a required option, printing a usage error when missing. */
static const char *need(const opts *o, const char *name, const char *cmd)
{
    const char *v = opt(o, name);
    if (!v)
        die_usage("%s: %s is required", cmd, name);
    return v;
}

/* ---- table info --------------------------------------------------------- */

static void print_table_header(void)
{
    printf("%-24s %12s %9s %6s %-8s %8s %-8s %s\n", "NAME", "ROWS",
           "ROW_BYTES", "DIM", "DTYPE", "VERSION", "CHECKSUM", "RESIDENT");
}

static void print_table_line(const engram_table_info *t)
{
    printf("%-24s %12llu %9u %6u %-8s %8llu %08x %s\n", t->name,
           (unsigned long long)t->rows, t->row_bytes, t->dim, t->dtype,
           (unsigned long long)t->version, t->checksum,
           t->resident ? "yes" : "no");
}

static void print_table_keys(const engram_table_info *t)
{
    printf("name: %s\n", t->name);
    printf("rows: %llu\n", (unsigned long long)t->rows);
    printf("row_bytes: %u\n", t->row_bytes);
    printf("dim: %u\n", t->dim);
    printf("dtype: %s\n", t->dtype);
    printf("version: %llu\n", (unsigned long long)t->version);
    printf("checksum: %08x\n", t->checksum);
    printf("resident: %s\n", t->resident ? "yes" : "no");
    printf("created_unix_ms: %llu\n", (unsigned long long)t->created_unix_ms);
}

static int cmd_tables(engram_client *cl, int argc, char **argv)
{
    if (argc > 0)
        return die_usage("tables: unexpected argument '%s'", argv[0]);
    engram_table_info *v;
    size_t n;
    engram_error e;
    if (engram_table_list(cl, &v, &n, &e))
        return report(&e);
    print_table_header();
    for (size_t i = 0; i < n; i++)
        print_table_line(&v[i]);
    engram_free(v);
    return 0;
}

static int cmd_table(engram_client *cl, int argc, char **argv)
{
    if (argc != 1)
        return die_usage("table: want exactly one NAME, got %d arguments",
                         argc);
    engram_table_info t;
    engram_error e;
    if (engram_table_get(cl, argv[0], &t, &e))
        return report(&e);
    print_table_keys(&t);
    return 0;
}

/* ---- imports ------------------------------------------------------------ */

/* Prints the activated table and the rate of an import. */
static void print_import_done(const engram_table_info *t, uint64_t t0_ns)
{
    double s = (double)(now_ns() - t0_ns) / 1e9;
    double rows_s = s > 0 ? (double)t->rows / s : 0;
    printf("imported %s: %llu rows of %u bytes, version %llu, checksum %08x, "
           "resident %s\n", t->name, (unsigned long long)t->rows,
           t->row_bytes, (unsigned long long)t->version, t->checksum,
           t->resident ? "yes" : "no");
    printf("%.0f rows/s, %.1f MB/s, %.3f s\n", rows_s,
           rows_s * t->row_bytes / 1e6, s);
}

/* Rows per write batch: about IMPORT_BATCH_BYTES, at least one row. */
static size_t batch_rows_for(uint32_t row_bytes)
{
    size_t n = IMPORT_BATCH_BYTES / row_bytes;
    return n ? n : 1;
}

/* dtype defaults to u8; dim to row_bytes / dtype size; both must agree
 * with row_bytes. */
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
    } else {
        *dim = (uint32_t)(row_bytes / es);
    }
    if ((uint64_t)*dim * es != row_bytes)
        return die_usage("import-synthetic: dim %u x %s (%zu bytes) is %llu "
                         "bytes, not --row-bytes %u", *dim, *dtype, es,
                         (unsigned long long)*dim * es, row_bytes);
    return 0;
}

/* Generates and streams rows [0, rows) of the synthetic table; returns 0
 * or EXIT_RPC after reporting. */
static int stream_synthetic(engram_import *imp, uint64_t seed, uint64_t rows,
                            uint32_t row_bytes, engram_error *e)
{
    size_t per = batch_rows_for(row_bytes);
    uint8_t *buf = malloc(per * row_bytes);
    if (!buf)
        return fail(ENGRAM_RESOURCE_EXHAUSTED, "out of memory for %zu rows",
                    per);
    int rc = 0;
    for (uint64_t r = 0; r < rows && !rc; r += per) {
        uint64_t n = rows - r < per ? rows - r : per;
        synthetic_rows(seed, r, n, buf, row_bytes);
        if (engram_import_write(imp, r, buf, n * row_bytes, e))
            rc = report(e);
    }
    free(buf);
    return rc;
}

static int cmd_import_synthetic(engram_client *cl, int argc, char **argv)
{
    opts o = {.names = {"--table", "--rows", "--row-bytes", "--seed",
                        "--dim", "--dtype"}, .n = 6};
    const char *c = "import-synthetic";
    if (parse_opts(&o, argc, argv, c))
        return EXIT_USAGE;
    if (o.npos)
        return die_usage("%s: unexpected argument '%s'", c, o.pos[0]);
    const char *table = need(&o, "--table", c);
    const char *srows = need(&o, "--rows", c);
    const char *srb = need(&o, "--row-bytes", c);
    const char *sseed = need(&o, "--seed", c);
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

    uint64_t t0 = now_ns();
    engram_import *imp;
    engram_error e;
    if (engram_import_begin(cl, table, rows, dim, dtype, &imp, &e))
        return report(&e);
    int rc = stream_synthetic(imp, seed, rows, row_bytes, &e);
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

/* ---- .npy headers --------------------------------------------------------- */

/* What an .npy file holds: data offset, element descr, shape. */
typedef struct {
    long data_off;
    char descr[16];
    uint64_t shape[2];
    int ndim;
} npy_info;

/* Finds `'key':` in the header dict and returns the text after it. */
static const char *npy_value(const char *hdr, const char *key)
{
    char pat[32];
    snprintf(pat, sizeof pat, "'%s'", key);
    const char *p = strstr(hdr, pat);
    if (!p)
        return NULL;
    p += strlen(pat);
    while (*p == ' ')
        p++;
    if (*p != ':')
        return NULL;
    p++;
    while (*p == ' ')
        p++;
    return p;
}

/* Parses "(a, b)" / "(a,)" / "(a)" into info->shape. */
static int npy_shape(const char *p, npy_info *info, const char *file)
{
    if (*p++ != '(')
        return fail(ENGRAM_INVALID_ARGUMENT, "%s: .npy shape is not a tuple",
                    file);
    info->ndim = 0;
    for (;;) {
        while (*p == ' ' || *p == ',')
            p++;
        if (*p == ')')
            break;
        if (*p < '0' || *p > '9' || info->ndim == 2)
            return fail(ENGRAM_INVALID_ARGUMENT,
                        "%s: .npy shape must be (rows,) or (rows, dim)", file);
        char *end;
        info->shape[info->ndim++] = strtoull(p, &end, 10);
        p = end;
    }
    if (info->ndim == 0)
        return fail(ENGRAM_INVALID_ARGUMENT,
                    "%s: .npy shape () is a scalar, want (rows, dim)", file);
    return 0;
}

/* Parses the header dict: descr, fortran_order, shape. */
static int npy_dict(const char *hdr, npy_info *info, const char *file)
{
    const char *d = npy_value(hdr, "descr");
    const char *f = npy_value(hdr, "fortran_order");
    const char *s = npy_value(hdr, "shape");
    if (!d || !f || !s)
        return fail(ENGRAM_INVALID_ARGUMENT,
                    "%s: .npy header lacks descr, fortran_order or shape",
                    file);
    if (strncmp(f, "False", 5) != 0)
        return fail(ENGRAM_INVALID_ARGUMENT,
                    "%s: .npy array is fortran_order; want C order", file);
    char q = *d++;
    const char *e = strchr(d, q);
    if ((q != '\'' && q != '"') || !e || (size_t)(e - d) >= sizeof info->descr)
        return fail(ENGRAM_INVALID_ARGUMENT,
                    "%s: .npy descr is not a simple type string", file);
    memcpy(info->descr, d, (size_t)(e - d));
    info->descr[e - d] = '\0';
    return npy_shape(s, info, file);
}

/* Reads the magic, version and header dict of an .npy file. */
static int npy_read_header(FILE *fp, npy_info *info, const char *file)
{
    uint8_t pre[12];
    if (fread(pre, 1, 10, fp) != 10)
        return fail(ENGRAM_INVALID_ARGUMENT, "%s: .npy header truncated",
                    file);
    uint8_t major = pre[6];
    uint32_t hlen;
    long off;
    if (major == 1) {
        hlen = pre[8] | (uint32_t)pre[9] << 8;
        off = 10;
    } else if (major == 2 || major == 3) {
        if (fread(pre + 10, 1, 2, fp) != 2)
            return fail(ENGRAM_INVALID_ARGUMENT, "%s: .npy header truncated",
                        file);
        hlen = pre[8] | (uint32_t)pre[9] << 8 | (uint32_t)pre[10] << 16 |
               (uint32_t)pre[11] << 24;
        off = 12;
    } else {
        return fail(ENGRAM_INVALID_ARGUMENT,
                    "%s: .npy version %u is not 1, 2 or 3", file, major);
    }
    if (hlen > (1u << 20))
        return fail(ENGRAM_INVALID_ARGUMENT,
                    "%s: .npy header of %u bytes is implausible", file, hlen);
    char *hdr = malloc(hlen + 1);
    if (!hdr || fread(hdr, 1, hlen, fp) != hlen) {
        free(hdr);
        return fail(ENGRAM_INVALID_ARGUMENT, "%s: .npy header truncated",
                    file);
    }
    hdr[hlen] = '\0';
    info->data_off = off + (long)hlen;
    int rc = npy_dict(hdr, info, file);
    free(hdr);
    return rc;
}

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
        return fail(ENGRAM_INVALID_ARGUMENT,
                    "%s: .npy descr '%s' does not match --dtype %s", file,
                    ni->descr, dtype);
    uint64_t fdim = ni->ndim == 2 ? ni->shape[1] : 1;
    if (fdim != dim)
        return fail(ENGRAM_INVALID_ARGUMENT,
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
        return fail(ENGRAM_NOT_FOUND, "%s: %s", file, strerror(errno));
    struct stat st;
    if (fstat(fileno(fp), &st) != 0) {
        fclose(fp);
        return fail(ENGRAM_INTERNAL, "%s: %s", file, strerror(errno));
    }
    uint64_t size = (uint64_t)st.st_size;
    char magic[6] = {0};
    size_t got = fread(magic, 1, 6, fp);
    rewind(fp);
    if (got == 6 && memcmp(magic, "\x93NUMPY", 6) == 0) {
        npy_info ni;
        if (npy_read_header(fp, &ni, file) ||
            npy_check(&ni, file, dim, dtype, rows)) {
            fclose(fp);
            return EXIT_RPC;
        }
        uint64_t have = size - (uint64_t)ni.data_off;
        if (have != *rows * row_bytes) {
            fclose(fp);
            return fail(ENGRAM_INVALID_ARGUMENT,
                        "%s: .npy holds %llu data bytes, shape needs %llu",
                        file, (unsigned long long)have,
                        (unsigned long long)(*rows * row_bytes));
        }
        fseek(fp, ni.data_off, SEEK_SET);
    } else if (size % row_bytes) {
        fclose(fp);
        return fail(ENGRAM_INVALID_ARGUMENT,
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
                       uint64_t rows, uint32_t row_bytes, engram_error *e)
{
    size_t per = batch_rows_for(row_bytes);
    uint8_t *buf = malloc(per * row_bytes);
    if (!buf)
        return fail(ENGRAM_RESOURCE_EXHAUSTED, "out of memory for %zu rows",
                    per);
    int rc = 0;
    for (uint64_t r = 0; r < rows && !rc; r += per) {
        uint64_t n = rows - r < per ? rows - r : per;
        if (fread(buf, row_bytes, n, fp) != n) {
            rc = fail(ENGRAM_DATA_LOSS, "%s: short read at row %llu", file,
                      (unsigned long long)r);
            break;
        }
        if (engram_import_write(imp, r, buf, n * row_bytes, e))
            rc = report(e);
    }
    free(buf);
    return rc;
}

static int cmd_import(engram_client *cl, int argc, char **argv)
{
    opts o = {.names = {"--table", "--file", "--dim", "--dtype"}, .n = 4};
    const char *c = "import";
    if (parse_opts(&o, argc, argv, c))
        return EXIT_USAGE;
    if (o.npos)
        return die_usage("%s: unexpected argument '%s'", c, o.pos[0]);
    const char *table = need(&o, "--table", c);
    const char *file = need(&o, "--file", c);
    const char *sdim = need(&o, "--dim", c);
    const char *dtype = need(&o, "--dtype", c);
    if (!table || !file || !sdim || !dtype)
        return EXIT_USAGE;
    uint32_t dim;
    if (parse_u32(sdim, "--dim", &dim))
        return EXIT_USAGE;
    size_t es = dtype_size(dtype);
    if (!es)
        return die_usage("%s: unknown dtype '%s' (known: %s)", c, dtype,
                         dtype_list());
    if (dim == 0 || (uint64_t)dim * es > UINT32_MAX)
        return die_usage("%s: --dim %u gives no valid row size", c, dim);
    uint32_t row_bytes = dim * (uint32_t)es;

    FILE *fp = NULL;
    uint64_t rows = 0;
    if (open_rows(file, dim, dtype, row_bytes, &fp, &rows))
        return EXIT_RPC;
    uint64_t t0 = now_ns();
    engram_import *imp;
    engram_error e;
    int rc;
    if (engram_import_begin(cl, table, rows, dim, dtype, &imp, &e)) {
        rc = report(&e);
    } else if ((rc = stream_file(imp, fp, file, rows, row_bytes, &e))) {
        engram_import_abort(imp);
    } else {
        engram_table_info info;
        if ((rc = engram_import_finish(imp, &info, &e)) != 0)
            rc = report(&e);
        else
            print_import_done(&info, t0);
    }
    fclose(fp);
    return rc;
}

/* ---- lookup and verify ---------------------------------------------------- */

static void print_hex_row(uint64_t row, const uint8_t *p, uint32_t n)
{
    static const char hx[] = "0123456789abcdef";
    printf("%llu: ", (unsigned long long)row);
    for (uint32_t i = 0; i < n; i++) {
        putchar(hx[p[i] >> 4]);
        putchar(hx[p[i] & 15]);
    }
    putchar('\n');
}

static int cmd_lookup(engram_client *cl, int argc, char **argv)
{
    opts o = {.names = {"--table"}, .n = 1};
    if (parse_opts(&o, argc, argv, "lookup"))
        return EXIT_USAGE;
    const char *table = need(&o, "--table", "lookup");
    if (!table)
        return EXIT_USAGE;
    if (o.npos == 0)
        return die_usage("lookup: no ROW given");
    uint64_t rows[256];
    for (int i = 0; i < o.npos; i++)
        if (parse_u64(o.pos[i], "ROW", &rows[i]))
            return EXIT_USAGE;
    engram_table_info t;
    engram_error e;
    if (engram_table_get(cl, table, &t, &e))
        return report(&e);
    size_t cap = (size_t)o.npos * t.row_bytes;
    uint8_t *out = malloc(cap ? cap : 1);
    uint32_t rb;
    uint64_t ver;
    if (!out)
        return fail(ENGRAM_RESOURCE_EXHAUSTED, "out of memory");
    if (engram_lookup_sync(cl, table, rows, (size_t)o.npos, out, cap, &rb,
                           &ver, &e)) {
        free(out);
        return report(&e);
    }
    printf("table %s version %llu row_bytes %u\n", table,
           (unsigned long long)ver, rb);
    for (int i = 0; i < o.npos; i++)
        print_hex_row(rows[i], out + (size_t)i * rb, rb);
    free(out);
    return 0;
}

/* The rows verify-synthetic checks: the two first and two last (those
 * that exist), then `samples` uniform random rows. */
static uint64_t *verify_rows(uint64_t rows, uint64_t samples,
                             uint64_t rng_seed, size_t *count)
{
    uint64_t *v = malloc((size_t)(samples + 4) * sizeof *v);
    size_t n = 0;
    if (!v || rows == 0) {
        *count = 0;
        return v;
    }
    uint64_t edge[4] = {0, 1, rows - 1, rows - 2};
    for (int i = 0; i < 4; i++)
        if (edge[i] < rows)
            v[n++] = edge[i];
    for (uint64_t i = 0; i < samples; i++)
        v[n++] = splitmix64(rng_seed + i) % rows;
    *count = n;
    return v;
}

/* Compares one batch against the rule; returns 0 or EXIT_RPC after
 * reporting the first mismatching row. */
static int check_batch(const char *table, uint64_t ver, uint64_t seed,
                       const uint64_t *rows, size_t n, const uint8_t *got,
                       uint32_t rb, uint8_t *want)
{
    for (size_t i = 0; i < n; i++) {
        synthetic_row(seed, rows[i], want, rb);
        const uint8_t *g = got + i * rb;
        if (memcmp(g, want, rb) == 0)
            continue;
        uint32_t b = 0;
        while (g[b] == want[b])
            b++;
        return fail(ENGRAM_DATA_LOSS,
                    "row %llu of %s v%llu differs from synthetic seed %llu "
                    "at byte %u (got %02x, want %02x)",
                    (unsigned long long)rows[i], table,
                    (unsigned long long)ver, (unsigned long long)seed, b,
                    g[b], want[b]);
    }
    return 0;
}

/* Looks the rows up in batches and checks each; *ver gets the version. */
static int verify_batches(engram_client *cl, const engram_table_info *t,
                          uint64_t seed, const uint64_t *rows, size_t n,
                          uint64_t *ver)
{
    uint32_t rb = t->row_bytes;
    uint8_t *out = malloc((size_t)VERIFY_BATCH_ROWS * rb + 1);
    uint8_t *want = malloc((size_t)rb + 1);
    int rc = 0;
    if (!out || !want)
        rc = fail(ENGRAM_RESOURCE_EXHAUSTED, "out of memory");
    for (size_t i = 0; i < n && !rc; i += VERIFY_BATCH_ROWS) {
        size_t k = n - i < VERIFY_BATCH_ROWS ? n - i : VERIFY_BATCH_ROWS;
        uint32_t got_rb;
        engram_error e;
        if (engram_lookup_sync(cl, t->name, rows + i, k, out,
                               (size_t)VERIFY_BATCH_ROWS * rb, &got_rb, ver,
                               &e)) {
            rc = report(&e);
        } else if (got_rb != rb) {
            rc = fail(ENGRAM_DATA_LOSS,
                      "%s: lookup returned %u-byte rows, table info says %u",
                      t->name, got_rb, rb);
        } else {
            rc = check_batch(t->name, *ver, seed, rows + i, k, out, rb, want);
        }
    }
    free(out);
    free(want);
    return rc;
}

static int cmd_verify_synthetic(engram_client *cl, int argc, char **argv)
{
    opts o = {.names = {"--table", "--seed", "--samples", "--rng-seed"},
              .n = 4};
    const char *c = "verify-synthetic";
    if (parse_opts(&o, argc, argv, c))
        return EXIT_USAGE;
    if (o.npos)
        return die_usage("%s: unexpected argument '%s'", c, o.pos[0]);
    const char *table = need(&o, "--table", c);
    const char *sseed = need(&o, "--seed", c);
    if (!table || !sseed)
        return EXIT_USAGE;
    uint64_t seed, samples = 4096, rng = now_ns() ^ (uint64_t)time(NULL);
    if (parse_u64(sseed, "--seed", &seed) ||
        (opt(&o, "--samples") &&
         parse_u64(opt(&o, "--samples"), "--samples", &samples)) ||
        (opt(&o, "--rng-seed") &&
         parse_u64(opt(&o, "--rng-seed"), "--rng-seed", &rng)))
        return EXIT_USAGE;
    if (samples > (1ull << 32))
        return die_usage("%s: --samples %llu is more than 2^32", c,
                         (unsigned long long)samples);

    engram_table_info t;
    engram_error e;
    if (engram_table_get(cl, table, &t, &e))
        return report(&e);
    size_t n;
    uint64_t *rows = verify_rows(t.rows, samples, rng, &n);
    if (!rows)
        return fail(ENGRAM_RESOURCE_EXHAUSTED, "out of memory");
    uint64_t ver = t.version;
    int rc = verify_batches(cl, &t, seed, rows, n, &ver);
    free(rows);
    if (rc == 0)
        printf("verified %zu rows of %s v%llu: all match\n", n, table,
               (unsigned long long)ver);
    return rc;
}

/* ---- main ------------------------------------------------------------------- */

typedef int (*cmd_fn)(engram_client *, int, char **);

static cmd_fn find_cmd(const char *name)
{
    static const struct { const char *name; cmd_fn fn; } cmds[] = {
        {"tables", cmd_tables},
        {"table", cmd_table},
        {"import-synthetic", cmd_import_synthetic},
        {"import", cmd_import},
        {"lookup", cmd_lookup},
        {"verify-synthetic", cmd_verify_synthetic},
    };
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        if (strcmp(cmds[i].name, name) == 0)
            return cmds[i].fn;
    return NULL;
}

/* Global options before the command; returns the command's index, or -1
 * after printing usage/help (*rc set). */
static int parse_global(int argc, char **argv, const char **server,
                        int64_t *deadline_ms, int *rc)
{
    int i = 1;
    for (; i < argc && strncmp(argv[i], "-", 1) == 0; i++) {
        const char *a = argv[i];
        const char *val = NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage_text, stdout);
            *rc = 0;
            return -1;
        }
        int is_server = !strncmp(a, "--server", 8) &&
                        (a[8] == '\0' || a[8] == '=');
        int is_deadline = !strncmp(a, "--deadline-ms", 13) &&
                          (a[13] == '\0' || a[13] == '=');
        if (!is_server && !is_deadline) {
            *rc = die_usage("unknown option '%s'", a);
            return -1;
        }
        size_t nlen = is_server ? 8 : 13;
        if (a[nlen] == '=') {
            val = a + nlen + 1;
        } else if (i + 1 < argc) {
            val = argv[++i];
        } else {
            *rc = die_usage("option %s needs a value", a);
            return -1;
        }
        if (is_server) {
            *server = val;
        } else {
            uint64_t v;
            if (parse_u64(val, "--deadline-ms", &v) || v > INT64_MAX) {
                *rc = EXIT_USAGE;
                return -1;
            }
            *deadline_ms = (int64_t)v;
        }
    }
    if (i == argc) {
        fputs(usage_text, stderr);
        *rc = EXIT_USAGE;
        return -1;
    }
    return i;
}

int main(int argc, char **argv)
{
    const char *server = getenv("ENGRAM_SERVER");
    if (!server || !*server)
        server = "127.0.0.1:7070";
    int64_t deadline_ms = 10000;
    int rc = 0;
    int ci = parse_global(argc, argv, &server, &deadline_ms, &rc);
    if (ci < 0)
        return rc;
    if (!strcmp(argv[ci], "help")) {
        fputs(usage_text, stdout);
        return 0;
    }
    cmd_fn fn = find_cmd(argv[ci]);
    if (!fn)
        return die_usage("unknown command '%s'", argv[ci]);

    engram_client_options opts;
    engram_client_options_init(&opts);
    opts.deadline_ms = deadline_ms;
    engram_client *cl;
    engram_error e;
    if (engram_client_open(server, &opts, &cl, &e))
        return report(&e);
    rc = fn(cl, argc - ci - 1, argv + ci + 1);
    engram_client_close(cl);
    return rc;
}
