/* ops.c: engramctl's operations commands: health, drain, undrain, warm.
 *
 *   health [--service NAME]   prints SERVING or NOT_SERVING
 *   drain [--timeout-ms N]    prints the drain's outcome
 *   undrain
 *   warm --table T ROW...
 *   warm --model M --tokens FILE [--layer L[,L...]]
 *
 * health, drain and undrain act on the one server engramctl was given, even
 * in a cluster: an operator drains or probes a node, not the cluster.
 * Their exit codes make them usable in scripts and probes: health exits 0
 * when SERVING, 1 when NOT_SERVING or the call failed (unknown service,
 * server down), 2 on a usage error; drain exits 0 when no lookup was left
 * in flight, 1 when some still ran at the timeout (the server stays
 * draining either way) or the call failed.
 *
 * warm goes to every replica of every shard of the cluster map the server
 * returns (a lone server is a map of one), one server after another, each
 * reading only its shard's rows, so the whole cluster is warm. Each
 * server's progress is printed under its address; the exit code is 1 if
 * any server failed. The token FILE holds whitespace-separated token ids,
 * every line concatenated into one sequence. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster.h"
#include "ctl.h"

/* Drain's default wait for in-flight lookups. */
#define DRAIN_DEFAULT_TIMEOUT_MS 5000

int cmd_health(engram_client *cl, int argc, char **argv)
{
    opts o = {.names = {"--service"}, .n = 1};
    if (parse_opts(&o, argc, argv, "health"))
        return EXIT_USAGE;
    if (o.npos)
        return die_usage("health: unexpected argument '%s'", o.pos[0]);
    const char *service = opt(&o, "--service");
    int serving;
    engram_error e;
    if (engram_health_check(cl, service ? service : "", &serving, &e))
        return report(&e);
    puts(serving == ENGRAM_HEALTH_SERVING ? "SERVING" : "NOT_SERVING");
    return serving == ENGRAM_HEALTH_SERVING ? 0 : EXIT_RPC;
}

int cmd_drain(engram_client *cl, int argc, char **argv)
{
    opts o = {.names = {"--timeout-ms"}, .n = 1};
    if (parse_opts(&o, argc, argv, "drain"))
        return EXIT_USAGE;
    if (o.npos)
        return die_usage("drain: unexpected argument '%s'", o.pos[0]);
    uint32_t timeout_ms = DRAIN_DEFAULT_TIMEOUT_MS;
    const char *t = opt(&o, "--timeout-ms");
    if (t && parse_u32(t, "--timeout-ms", &timeout_ms))
        return EXIT_USAGE;
    int drained;
    uint64_t in_flight;
    engram_error e;
    if (engram_drain(cl, timeout_ms, &drained, &in_flight, &e))
        return report(&e);
    if (drained)
        printf("draining: drained, no lookup in flight\n");
    else
        printf("draining: %llu lookups still in flight after %u ms\n",
               (unsigned long long)in_flight, timeout_ms);
    return drained ? 0 : EXIT_RPC;
}

int cmd_undrain(engram_client *cl, int argc, char **argv)
{
    if (argc)
        return die_usage("undrain: unexpected argument '%s'", argv[0]);
    engram_error e;
    if (engram_undrain(cl, &e))
        return report(&e);
    printf("serving\n");
    return 0;
}

/* ---- warm ------------------------------------------------------------------ */

typedef struct warm_args {
    const char *table, *model;
    uint64_t rows[256];
    size_t nrows;
    int64_t *tokens;
    size_t ntokens;
    int64_t layers[ENGRAM_MAX_LAYERS];
    size_t nlayers;
} warm_args;

static void print_progress(void *ctx, const char *table, uint64_t done, uint64_t total,
                           uint64_t loaded)
{
    printf("warm %s: %llu/%llu rows (loaded %llu)\n", *table ? table : "total",
           (unsigned long long)done, (unsigned long long)total, (unsigned long long)loaded);
    fflush(stdout);
}

/* Every line of the file, as one sequence. */
static int read_tokens(const char *path, warm_args *w)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return die_usage("warm: cannot open --tokens file %s", path);
    int64_t *line = NULL;
    size_t n, cap = 0, tcap = 0;
    int rc = 0;
    for (size_t lineno = 1; (rc = read_token_line(f, &line, &n, &cap, lineno)) == 1; lineno++) {
        if (w->ntokens + n > tcap)
            w->tokens = realloc(w->tokens, (tcap = (w->ntokens + n) * 2) * sizeof *w->tokens);
        memcpy(w->tokens + w->ntokens, line, n * sizeof *line);
        w->ntokens += n;
    }
    free(line);
    fclose(f);
    if (rc)
        return rc;
    return w->ntokens ? 0 : die_usage("warm: --tokens file %s holds no token ids", path);
}

static int parse_layer_list(const char *s, warm_args *w)
{
    char *copy = strdup(s), *save = NULL;
    int rc = 0;
    for (char *t = strtok_r(copy, ",", &save); t && !rc; t = strtok_r(NULL, ",", &save)) {
        uint64_t v;
        if (w->nlayers == ENGRAM_MAX_LAYERS)
            rc = die_usage("warm: more than %d layers in --layer", ENGRAM_MAX_LAYERS);
        else if (!(rc = parse_u64(t, "--layer", &v)))
            w->layers[w->nlayers++] = (int64_t)v;
    }
    free(copy);
    return rc ? EXIT_USAGE : (w->nlayers ? 0 : die_usage("warm: --layer is empty"));
}

static int parse_warm(int argc, char **argv, warm_args *w)
{
    opts o = {.names = {"--table", "--model", "--tokens", "--layer"}, .n = 4};
    if (parse_opts(&o, argc, argv, "warm"))
        return EXIT_USAGE;
    w->table = opt(&o, "--table");
    w->model = opt(&o, "--model");
    const char *tokens = opt(&o, "--tokens"), *layers = opt(&o, "--layer");
    if (!w->table == !w->model)
        return die_usage("warm: give --table T ROW... or --model M --tokens FILE");
    if (w->table) {
        if (tokens || layers)
            return die_usage("warm: --tokens and --layer go with --model, not --table");
        if (!o.npos)
            return die_usage("warm: --table %s needs at least one ROW", w->table);
        for (int i = 0; i < o.npos; i++)
            if (parse_u64(o.pos[i], "ROW", &w->rows[w->nrows++]))
                return EXIT_USAGE;
        return 0;
    }
    if (o.npos)
        return die_usage("warm: unexpected argument '%s' (token ids go in --tokens FILE)", o.pos[0]);
    if (!tokens)
        return die_usage("warm: --model %s needs --tokens FILE", w->model);
    if (layers && parse_layer_list(layers, w))
        return EXIT_USAGE;
    return read_tokens(tokens, w);
}

static int warm_one(engram_client *cl, const warm_args *w, engram_error *e)
{
    engram_warm_request rq;
    engram_warm_request_init(&rq);
    rq.table = w->table;
    rq.rows = w->nrows ? w->rows : NULL;
    rq.n_rows = w->nrows;
    rq.model = w->model;
    rq.tokens = w->tokens;
    rq.n_tokens = w->ntokens;
    rq.layer_ids = w->nlayers ? w->layers : NULL;
    rq.n_layers = w->nlayers;
    rq.progress = print_progress;
    return engram_warm(cl, &rq, e);
}

/* Warms every replica of every shard, one after another. */
static int warm_cluster(const engram_cluster *map, const warm_args *w)
{
    int rc = 0;
    for (uint32_t s = 0; s < map->shards; s++) {
        for (uint32_t r = 0; r < map->replicas[s]; r++) {
            const char *addr = map->addr[s][r];
            printf("server %s (shard %u of %u):\n", addr, s, map->shards);
            engram_client *one;
            engram_error e;
            int r1 = engram_client_open(addr, ctl_client_options(), &one, &e);
            if (!r1) {
                r1 = warm_one(one, w, &e);
                engram_client_close(one);
            }
            if (r1)
                rc = ctl_fail(r1, "warm on %s (shard %u): %s", addr, s, e.message);
        }
    }
    return rc;
}

int cmd_warm(engram_client *cl, int argc, char **argv)
{
    warm_args *w = calloc(1, sizeof *w);
    int rc = parse_warm(argc, argv, w);
    if (!rc) {
        engram_cluster *map = cluster_of(cl, &rc);
        if (map && cluster_is_single(map)) {
            engram_error e;
            if (warm_one(cl, w, &e))
                rc = report(&e);
        } else if (map) {
            rc = warm_cluster(map, w);
        }
        if (map)
            cluster_free(map);
    }
    free(w->tokens);
    free(w);
    return rc;
}
