/* models.c: engramctl's model commands: put-manifest, manifests, manifest,
 * import-synthetic --manifest and prefetch.
 *
 *   prefetch --model NAME --layer L[,L...] [--verify-seed S]
 *            [--dequant bf16] [--show N] < sequences
 *
 * prints, per input line, the CRC-32 of the prefetched [layers, T, heads, D]
 * bytes (BF16 values with --dequant bf16, for mxfp8_e4m3 models); with
 * --verify-seed it also checks every row against the synthetic rule at the
 * row ids the model's hashing gives (tables imported with import-synthetic
 * --manifest NAME --seed S); --show N prints the first N values of each
 * layer's first row. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zlib.h>

#include "cluster.h"
#include "ctl.h"
#include "manifest.h"
#include "synthetic.h"

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    size_t cap = 0, n;
    *len = 0;
    do {
        if (*len == cap)
            buf = realloc(buf, cap = cap ? cap * 2 : 1 << 16);
        n = fread(buf + *len, 1, cap - *len, f);
        *len += n;
    } while (n > 0);
    fclose(f);
    return buf;
}

/* In a cluster every server holds the manifest, so a client given any one
 * address can open the model: the put goes to every replica. */
static int put_everywhere(engram_client *cl, const char *json, size_t len,
                          engram_manifest_info *info, engram_error *e)
{
    int rc;
    engram_cluster *map = cluster_of(cl, &rc);
    if (!map)
        return -1;
    if (cluster_is_single(map)) {
        cluster_free(map);
        return engram_manifest_put(cl, json, len, info, e);
    }
    rc = 0;
    for (uint32_t s = 0; s < map->shards && !rc; s++)
        for (uint32_t r = 0; r < map->replicas[s] && !rc; r++) {
            engram_client *one;
            rc = engram_client_open(map->addr[s][r], ctl_client_options(), &one, e);
            if (!rc) {
                rc = engram_manifest_put(one, json, len, info, e);
                engram_client_close(one);
            }
            if (rc)
                snprintf(e->message + strlen(e->message), sizeof e->message - strlen(e->message),
                         " (replica %s of shard %u)", map->addr[s][r], s);
        }
    cluster_free(map);
    return rc;
}

int cmd_put_manifest(engram_client *cl, int argc, char **argv)
{
    if (argc != 1)
        return die_usage("put-manifest: expected one argument, the manifest file");
    size_t len;
    char *json = slurp(argv[0], &len);
    if (!json)
        return ctl_fail(ENGRAM_INVALID_ARGUMENT, "cannot read %s: %s", argv[0], strerror(errno));
    engram_manifest_info info;
    engram_error e;
    int rc = put_everywhere(cl, json, len, &info, &e);
    free(json);
    if (rc < 0)
        return EXIT_RPC;
    if (rc)
        return report(&e);
    printf("stored manifest %s version %llu: %u layers, dim %u, %s, %u-byte rows\n", info.name,
           (unsigned long long)info.version, info.n_layers, info.dim, info.dtype, info.row_bytes);
    if (info.n_missing)
        printf("tables not on the server yet: %s\n", info.missing_tables);
    return 0;
}

int cmd_manifests(engram_client *cl, int argc, char **argv)
{
    if (argc)
        return die_usage("manifests: unexpected argument '%s'", argv[0]);
    engram_manifest_info *v;
    size_t n;
    engram_error e;
    if (engram_manifest_list(cl, &v, &n, &e))
        return report(&e);
    printf("%-24s %8s %6s %5s %-8s %s\n", "NAME", "VERSION", "LAYERS", "DIM", "DTYPE", "MISSING_TABLES");
    for (size_t i = 0; i < n; i++)
        printf("%-24s %8llu %6u %5u %-8s %s\n", v[i].name, (unsigned long long)v[i].version,
               v[i].n_layers, v[i].dim, v[i].dtype, v[i].n_missing ? v[i].missing_tables : "-");
    engram_free(v);
    return 0;
}

int cmd_manifest(engram_client *cl, int argc, char **argv)
{
    if (argc != 1)
        return die_usage("manifest: expected one argument, the model name");
    char *json;
    uint64_t version;
    engram_error e;
    if (engram_manifest_get(cl, argv[0], &json, &version, &e))
        return report(&e);
    fputs(json, stdout);
    if (!*json || json[strlen(json) - 1] != '\n')
        putchar('\n');
    engram_free(json);
    return 0;
}

/* The manifest as stored on the server, parsed here. */
engram_manifest *fetch_manifest(engram_client *cl, const char *name, int *rc)
{
    char *json, why[512];
    engram_error e;
    if (engram_manifest_get(cl, name, &json, NULL, &e)) {
        *rc = report(&e);
        return NULL;
    }
    engram_manifest *m = manifest_parse(json, strlen(json), why, sizeof why);
    engram_free(json);
    if (!m)
        *rc = ctl_fail(ENGRAM_FAILED_PRECONDITION, "stored %s", why);
    return m;
}

int import_synthetic_manifest(engram_client *cl, const opts *o)
{
    const char *c = "import-synthetic";
    const char *name = opt(o, "--manifest"), *sseed = ctl_need(o, "--seed", c);
    if (!sseed)
        return EXIT_USAGE;
    if (opt(o, "--table") || opt(o, "--rows") || opt(o, "--row-bytes"))
        return die_usage("%s: --manifest takes the tables and their shapes from the manifest; "
                         "drop --table/--rows/--row-bytes", c);
    uint64_t seed;
    if (parse_u64(sseed, "--seed", &seed))
        return EXIT_USAGE;
    int rc = 0;
    engram_manifest *m = fetch_manifest(cl, name, &rc);
    for (int li = 0; m && li < m->model->n_layers && !rc; li++) {
        const eh_layer *l = &m->model->layers[li];
        rc = import_synthetic_table(cl, m->tables[li], l->total_rows, m->dim, m->dtype,
                                    m->row_bytes, manifest_synthetic_seed(seed, l->layer_id));
    }
    manifest_free(m);
    return rc;
}

/* ---- prefetch ---------------------------------------------------------------- */

typedef struct pf_cmd {
    engram_model *model;
    engram_model_info info;
    int64_t layers[ENGRAM_MAX_LAYERS];
    size_t nlayers;
    int verify;
    uint64_t seed;
    int bf16;       /* --dequant bf16: ENGRAM_PREFETCH_DEQUANT_BF16 */
    uint64_t show;  /* --show N: print N values of each layer's first row */
} pf_cmd;

static int parse_layers(const char *s, pf_cmd *p)
{
    char *copy = strdup(s), *save = NULL;
    int rc = 0;
    for (char *t = strtok_r(copy, ",", &save); t && !rc; t = strtok_r(NULL, ",", &save)) {
        uint64_t v;
        if (p->nlayers == ENGRAM_MAX_LAYERS || parse_u64(t, "--layer", &v))
            rc = EXIT_USAGE;
        else
            p->layers[p->nlayers++] = (int64_t)v;
    }
    free(copy);
    return rc ? rc : (p->nlayers ? 0 : die_usage("prefetch: --layer is empty"));
}

/* Checks every row of a prefetched sequence against the synthetic rule at
 * the rows the model's hashing gives (with --dequant bf16, against the rule's rows
 * dequantised by engram_dequant_bf16). Returns the first bad index or -1. */
static long verify_rows(const pf_cmd *p, const int64_t *tok, size_t n, const uint8_t *out)
{
    size_t h = p->info.heads, rb = p->info.row_bytes, per = n * h;
    size_t ob = p->bf16 ? (size_t)p->info.dim * 2 : rb;  /* bytes of one output row */
    uint64_t *rows = malloc(per * sizeof *rows);
    uint8_t *want = malloc(rb + ob);
    long bad = -1;
    for (size_t l = 0; l < p->nlayers && bad < 0; l++) {
        if (engram_model_hash(p->model, p->layers[l], tok, 1, n, NULL, rows, NULL)) {
            bad = 0;
            break;
        }
        uint64_t seed = manifest_synthetic_seed(p->seed, p->layers[l]);
        for (size_t i = 0; i < per && bad < 0; i++) {
            synthetic_row_typed(seed, rows[i], want, rb, p->info.dtype);
            const uint8_t *w = want;
            if (p->bf16) {
                if (engram_dequant_bf16(want, 1, p->info.dim, (uint16_t *)(want + rb), NULL)) {
                    bad = (long)(l * per + i);
                    break;
                }
                w = want + rb;
            }
            if (memcmp(out + (l * per + i) * ob, w, ob) != 0)
                bad = (long)(l * per + i);
        }
    }
    free(rows);
    free(want);
    return bad;
}

/* --show N: the first N values of each layer's first output row (token 0,
 * column 0), as numbers: BF16 widened to float, or the raw bytes in hex. */
static void show_values(const pf_cmd *p, size_t n, const uint8_t *out)
{
    size_t per = n * p->info.heads;
    size_t ob = p->bf16 ? (size_t)p->info.dim * 2 : p->info.row_bytes;
    size_t k = p->bf16 ? p->info.dim : p->info.row_bytes;
    if (p->show < k)
        k = (size_t)p->show;
    for (size_t l = 0; l < p->nlayers; l++) {
        const uint8_t *row = out + l * per * ob;
        printf("  layer %lld, token 0, column 0:", (long long)p->layers[l]);
        for (size_t i = 0; i < k; i++) {
            if (p->bf16) {
                uint16_t b;
                memcpy(&b, row + 2 * i, 2);
                uint32_t bits = (uint32_t)b << 16;
                float f;
                memcpy(&f, &bits, 4);
                printf(" %g", (double)f);
            } else {
                printf(" %02x", row[i]);
            }
        }
        printf("\n");
    }
}

static int prefetch_one(const pf_cmd *p, const int64_t *tok, size_t n, size_t lineno)
{
    engram_prefetch_request r = {.layer_ids = p->layers, .n_layers = p->nlayers,
                                 .tokens = tok, .batch = 1, .seq_len = n,
                                 .flags = p->bf16 ? ENGRAM_PREFETCH_DEQUANT_BF16 : 0};
    size_t bytes = engram_prefetch_out_bytes(p->model, &r);
    uint8_t *out = malloc(bytes ? bytes : 1);
    r.out = out;
    r.out_cap = bytes;
    engram_prefetch *h = NULL;
    engram_error e;
    int rc = engram_prefetch_start(p->model, &r, &h, &e);
    if (!rc)
        rc = engram_prefetch_wait(h, -1, &e);
    engram_prefetch_free(h);
    if (rc) {
        free(out);
        fprintf(stderr, "line %zu: ", lineno);
        return report(&e);
    }
    printf("seq %zu: %zu tokens, %zu bytes%s, crc32 %08lx", lineno, n, bytes,
           p->bf16 ? " of bf16" : "", crc32_z(0, out, bytes));
    long bad = p->verify ? verify_rows(p, tok, n, out) : -1;
    if (bad < 0 && p->show) {
        printf(p->verify ? ", verified\n" : "\n");
        show_values(p, n, out);
        free(out);
        return 0;
    }
    free(out);
    if (bad >= 0) {
        printf("\n");
        return ctl_fail(ENGRAM_DATA_LOSS, "line %zu: row %ld of the output differs from the synthetic rule",
                    lineno, bad);
    }
    printf(p->verify ? ", verified\n" : "\n");
    return 0;
}

static int prefetch_lines(pf_cmd *p)
{
    int64_t *tok = NULL;
    size_t n, cap = 0, lineno = 0;
    int rc = 0, got;
    while (!rc && (got = read_token_line(stdin, &tok, &n, &cap, ++lineno)) == 1)
        rc = n ? prefetch_one(p, tok, n, lineno) : 0;
    free(tok);
    return rc ? rc : (got > 1 ? got : 0);
}

int cmd_prefetch(engram_client *cl, int argc, char **argv)
{
    opts o = {.names = {"--model", "--layer", "--verify-seed", "--dequant", "--show"}, .n = 5};
    const char *c = "prefetch";
    if (parse_opts(&o, argc, argv, c))
        return EXIT_USAGE;
    const char *name = ctl_need(&o, "--model", c), *sl = ctl_need(&o, "--layer", c);
    if (!name || !sl)
        return EXIT_USAGE;
    pf_cmd p = {0};
    if (parse_layers(sl, &p))
        return EXIT_USAGE;
    const char *vs = opt(&o, "--verify-seed");
    if (vs && parse_u64(vs, "--verify-seed", &p.seed))
        return EXIT_USAGE;
    p.verify = vs != NULL;
    const char *dq = opt(&o, "--dequant");
    if (dq && strcmp(dq, "bf16") != 0)
        return die_usage("prefetch: --dequant '%s': expected bf16", dq);
    p.bf16 = dq != NULL;
    if (opt(&o, "--show") && parse_u64(opt(&o, "--show"), "--show", &p.show))
        return EXIT_USAGE;
    engram_error e;
    if (engram_model_open(cl, name, &p.model, &e))
        return report(&e);
    engram_model_get_info(p.model, &p.info);
    if (p.bf16 && strcmp(p.info.dtype, "mxfp8_e4m3") != 0) {
        engram_model_close(p.model);
        return die_usage("prefetch: --dequant bf16 takes mxfp8_e4m3 rows; model %s holds %s",
                         name, p.info.dtype);
    }
    int rc = prefetch_lines(&p);
    engram_model_close(p.model);
    return rc;
}
