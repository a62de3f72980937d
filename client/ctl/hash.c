/* hash.c: engramctl hash, the reference hashing from the command line, no
 * server needed:
 *
 *   engramctl hash --manifest FILE.json --layer L < sequences
 *
 * Each input line is one sequence of token ids; each output line holds the
 * global row ids of every position and head of that sequence, [T, heads]
 * order, space separated: exactly the rows the reference model reads from
 * layer L's table. */
#include <stdio.h>
#include <stdlib.h>

#include "ctl.h"
#include "manifest.h"

static int hash_lines(const engram_manifest *m, int li, int64_t layer)
{
    int64_t *tok = NULL;
    uint64_t *rows = NULL;
    size_t n, cap = 0, rcap = 0, lineno = 0;
    int heads = m->model->heads, rc = 0, got;
    char why[400];
    while (!rc && (got = read_token_line(stdin, &tok, &n, &cap, ++lineno)) == 1) {
        if (n * (size_t)heads > rcap)
            rows = realloc(rows, (rcap = n * (size_t)heads) * sizeof *rows);
        if (eh_hash(m->model, li, tok, 1, n, NULL, rows, why, sizeof why)) {
            rc = ctl_fail(ENGRAM_INVALID_ARGUMENT, "line %zu, layer %lld: %s", lineno, (long long)layer, why);
            break;
        }
        for (size_t i = 0; i < n * (size_t)heads; i++)
            printf(i ? " %llu" : "%llu", (unsigned long long)rows[i]);
        putchar('\n');
    }
    if (got > 1)
        rc = got;
    free(tok);
    free(rows);
    return rc;
}

int cmd_hash(engram_client *cl, int argc, char **argv)
{
    opts o = {.names = {"--manifest", "--layer"}, .n = 2};
    const char *c = "hash";
    if (parse_opts(&o, argc, argv, c))
        return EXIT_USAGE;
    const char *file = ctl_need(&o, "--manifest", c), *sl = ctl_need(&o, "--layer", c);
    if (!file || !sl)
        return EXIT_USAGE;
    if (o.npos)
        return die_usage("%s: unexpected argument '%s'", c, o.pos[0]);
    uint64_t layer;
    if (parse_u64(sl, "--layer", &layer))
        return EXIT_USAGE;
    char why[512];
    engram_manifest *m = manifest_load(file, why, sizeof why);
    if (!m)
        return ctl_fail(ENGRAM_INVALID_ARGUMENT, "%s", why);
    int li = eh_layer_index(m->model, (int64_t)layer);
    int rc = li < 0 ? die_usage("%s: layer %llu is not in the manifest's layer_ids", c,
                                (unsigned long long)layer)
                    : hash_lines(m, li, (int64_t)layer);
    manifest_free(m);
    return rc;
}
