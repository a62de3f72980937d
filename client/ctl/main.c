/* main.c: engramctl, the operator's command line for engram-store, on
 * libengram: global options and command dispatch.
 *
 *   engramctl [--server HOST:PORT] [--deadline-ms N] COMMAND ...
 *
 * Commands list and describe tables, import a synthetic table or a raw /
 * .npy file (streamed in chunks, never read whole), look rows up and verify
 * a synthetic table against the rule in common/synthetic.h.
 *
 * Exit codes: 0 ok; 1 an RPC failed or verification found a mismatch;
 * 2 usage error. Errors go to stderr as `engramctl: STATUS_NAME: message`. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"


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
    "\n"
    "statistics:\n"
    "  stats [--json] [--watch SECONDS]     the server's statistics; --watch\n"
    "                                       repeats every SECONDS until ^C\n"
    "  log-level LEVEL                      set the server's log level\n"
    "                                       (debug, info, warn, error)\n"
    "\n"
    "models:\n"
    "  put-manifest FILE.json               store a model manifest\n"
    "  manifests                            list manifests\n"
    "  manifest NAME                        print a manifest\n"
    "  import-synthetic --manifest NAME --seed S\n"
    "                                       create every table of a model\n"
    "  prefetch --model NAME --layer L[,L..] [--verify-seed S]\n"
    "                                       prefetch each stdin line of token ids\n"
    "  hash --manifest FILE.json --layer L  row ids of each stdin line (no server)\n"
    "  compress-vocab --tokenizer tokenizer.json --out FILE.json\n"
    "                                       the compression table (no server)\n"
    "  help                                 this text\n";

/* ---- main ------------------------------------------------------------------- */

/* Local commands run without a client (they get NULL). */
static ctl_cmd find_cmd(const char *name, int *local)
{
    static const struct { const char *name; ctl_cmd fn; int local; } cmds[] = {
        {"tables", cmd_tables, 0},
        {"table", cmd_table, 0},
        {"import-synthetic", cmd_import_synthetic, 0},
        {"import", cmd_import, 0},
        {"lookup", cmd_lookup, 0},
        {"verify-synthetic", cmd_verify_synthetic, 0},
        {"put-manifest", cmd_put_manifest, 0},
        {"manifests", cmd_manifests, 0},
        {"manifest", cmd_manifest, 0},
        {"prefetch", cmd_prefetch, 0},
        {"stats", cmd_stats, 0},
        {"log-level", cmd_log_level, 0},
        {"hash", cmd_hash, 1},
        {"compress-vocab", cmd_compress_vocab, 1},
    };
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        if (strcmp(cmds[i].name, name) == 0) {
            *local = cmds[i].local;
            return cmds[i].fn;
        }
    }
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
    int local = 0;
    ctl_cmd fn = find_cmd(argv[ci], &local);
    if (!fn)
        return die_usage("unknown command '%s'", argv[ci]);
    if (local)
        return fn(NULL, argc - ci - 1, argv + ci + 1);

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
