/* tables.c: engramctl tables, table, lookup and verify-synthetic: reading
 * tables back, as hex or checked against the synthetic rule. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ctl.h"
#include "grpc_util.h"
#include "synthetic.h"

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
    if (t->xxh3)
        printf("xxh3: %016llx\n", (unsigned long long)t->xxh3);
    else
        printf("xxh3: unknown\n");
    printf("resident: %s\n", t->resident ? "yes" : "no");
    printf("created_unix_ms: %llu\n", (unsigned long long)t->created_unix_ms);
    if (t->shard_count > 1)
        printf("shard: %u of %u (%llu local rows; the checksums cover them)\n", t->shard_index,
               t->shard_count, (unsigned long long)t->local_rows);
    static const char *const states[] = {"?", "active", "retained", "staged"};
    for (uint32_t i = 0; i < t->n_versions; i++)
        printf("version %llu: %s, checksum %08x, xxh3 %016llx, %llu local rows\n",
               (unsigned long long)t->versions[i].version,
               states[t->versions[i].state >= 1 && t->versions[i].state <= 3 ? t->versions[i].state : 0],
               t->versions[i].checksum, (unsigned long long)t->versions[i].xxh3,
               (unsigned long long)t->versions[i].local_rows);
}

int cmd_tables(engram_client *cl, int argc, char **argv)
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

int cmd_table(engram_client *cl, int argc, char **argv)
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

int cmd_lookup(engram_client *cl, int argc, char **argv)
{
    opts o = {.names = {"--table"}, .n = 1};
    if (parse_opts(&o, argc, argv, "lookup"))
        return EXIT_USAGE;
    const char *table = ctl_need(&o, "--table", "lookup");
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
        return ctl_fail(ENGRAM_RESOURCE_EXHAUSTED, "out of memory");
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
static int check_batch(const char *table, const char *dtype, uint64_t ver, uint64_t seed,
                       const uint64_t *rows, size_t n, const uint8_t *got,
                       uint32_t rb, uint8_t *want)
{
    for (size_t i = 0; i < n; i++) {
        synthetic_row_typed(seed, rows[i], want, rb, dtype);
        const uint8_t *g = got + i * rb;
        if (memcmp(g, want, rb) == 0)
            continue;
        uint32_t b = 0;
        while (g[b] == want[b])
            b++;
        return ctl_fail(ENGRAM_DATA_LOSS,
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
    size_t per = ctl_rows_per_reply(rb);
    uint8_t *out = malloc(per * rb + 1);
    uint8_t *want = malloc((size_t)rb + 1);
    int rc = 0;
    if (!out || !want)
        rc = ctl_fail(ENGRAM_RESOURCE_EXHAUSTED, "out of memory");
    for (size_t i = 0; i < n && !rc; i += per) {
        size_t k = n - i < per ? n - i : per;
        uint32_t got_rb;
        engram_error e;
        if (engram_lookup_sync(cl, t->name, rows + i, k, out,
                               per * rb, &got_rb, ver,
                               &e)) {
            rc = report(&e);
        } else if (got_rb != rb) {
            rc = ctl_fail(ENGRAM_DATA_LOSS,
                      "%s: lookup returned %u-byte rows, table info says %u",
                      t->name, got_rb, rb);
        } else {
            rc = check_batch(t->name, t->dtype, *ver, seed, rows + i, k, out, rb, want);
        }
    }
    free(out);
    free(want);
    return rc;
}

int cmd_verify_synthetic(engram_client *cl, int argc, char **argv)
{
    opts o = {.names = {"--table", "--seed", "--samples", "--rng-seed"},
              .n = 4};
    const char *c = "verify-synthetic";
    if (parse_opts(&o, argc, argv, c))
        return EXIT_USAGE;
    if (o.npos)
        return die_usage("%s: unexpected argument '%s'", c, o.pos[0]);
    const char *table = ctl_need(&o, "--table", c);
    const char *sseed = ctl_need(&o, "--seed", c);
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
        return ctl_fail(ENGRAM_RESOURCE_EXHAUSTED, "out of memory");
    uint64_t ver = t.version;
    int rc = verify_batches(cl, &t, seed, rows, n, &ver);
    free(rows);
    if (rc == 0)
        printf("verified %zu rows of %s v%llu: all match\n", n, table,
               (unsigned long long)ver);
    return rc;
}
