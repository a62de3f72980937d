/* main.c: engramctl, the operator's command line for engram-store, on
 * libengram: global options and command dispatch.
 *
 *   engramctl [--server HOST:PORT] [--deadline-ms N] [--max-message-bytes B]
 *             [--tls-ca FILE
 *             [--tls-cert FILE --tls-key FILE] [--tls-server-name NAME]]
 *             [--token-file FILE] [--local auto|off|require] COMMAND ...
 *
 * Commands list and describe tables, import a synthetic table, a raw /
 * .npy file or one tensor of a .safetensors checkpoint (streamed in chunks,
 * never read whole), look rows up and verify a synthetic table against the
 * rule in common/synthetic.h, or re-read every stored row and check its
 * checksums (verify; verify --local checks the files published on this
 * host instead), print the cluster map and drop a version on every
 * replica (versions.c).
 *
 * Exit codes: 0 ok; 1 an RPC failed or verification found a mismatch;
 * 2 usage error. verify alone exits 2 when an RPC failed, so that its 1
 * always means a mismatch was found. Errors go to stderr as `engramctl: STATUS_NAME: message`. */
#include <ctype.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"


static const char usage_text[] =
    "usage: engramctl [--server HOST:PORT] [--deadline-ms N] [TLS and token options] COMMAND ...\n"
    "\n"
    "  --server HOST:PORT   server address (default $ENGRAM_SERVER or "
    "127.0.0.1:7070)\n"
    "  --deadline-ms N      deadline of each call in ms, 0 = none "
    "(default 10000)\n"
    "  --max-message-bytes B  largest gRPC message sent or received, with an\n"
    "                       optional K, M or G suffix (default 64M); imports\n"
    "                       send chunks under it, so match a server's limit\n"
    "  --tls-ca FILE        use TLS; FILE is the PEM CA of the servers\n"
    "  --tls-cert FILE --tls-key FILE   PEM client certificate and key (mTLS)\n"
    "  --tls-server-name NAME  the name the server certificate carries, when\n"
    "                       it is not the host of --server\n"
    "  --token-file FILE    admin token (its first line) for admin commands\n"
    "                       (default $ENGRAM_TOKEN_FILE)\n"
    "  --local MODE         lookups from a same-host server's --shm-dir files:\n"
    "                       auto (default: when they can be proven, else gRPC),\n"
    "                       off, or require (fail when they cannot be used)\n"
    "\n"
    "commands:\n"
    "  tables                               list tables\n"
    "  table NAME                           show one table\n"
    "  import-synthetic --table NAME --rows N --row-bytes B --seed S\n"
    "                   [--dim D --dtype T] import the synthetic table\n"
    "  import --table NAME --file F --dim D --dtype T\n"
    "                                       import a raw row file or .npy\n"
    "  import --table NAME --file F.safetensors --tensor NAME [--dim D --dtype T]\n"
    "                                       one 2-D tensor of a checkpoint; dim and\n"
    "                                       dtype from its header (or checked)\n"
    "  import --manifest MODEL --layer L --file F [--tensor NAME]\n"
    "                                       into layer L's table; table, rows, dim\n"
    "                                       and dtype from the stored manifest\n"
    "  import --manifest MODEL --layer L --checkpoint DIR\n"
    "                                       from a DeepSeek-V4.1 checkpoint: layer L's\n"
    "                                       weight (F8_E4M3) and scale (F8_E8M0)\n"
    "                                       tensors packed into mxfp8_e4m3 rows\n"
    "     imports take [--progress-every S]: a bar on a terminal, else a line\n"
    "     every S seconds (default 10, 0 none)\n"
    "  lookup --table NAME ROW...           print rows as hex\n"
    "  verify-synthetic --table NAME --seed S [--samples K] [--rng-seed R]\n"
    "                                       check rows against the rule\n"
    "  verify --table NAME [--version V] [--file F [--tensor NAME] |\n"
    "                                       --checkpoint DIR --layer L]\n"
    "                                       every server re-reads its stored rows\n"
    "                                       and checks their checksums; with --file,\n"
    "                                       against the file's rows too (exit 0 match,\n"
    "                                       1 mismatch, 2 usage, RPC or file error)\n"
    "  verify --local [--table NAME] [--version V]\n"
    "                                       the files the servers publish on this\n"
    "                                       host (--shm-dir): identity, header and\n"
    "                                       rows against the recorded checksums\n"
    "                                       (exit 0 match, 1 mismatch, 2 usage, RPC\n"
    "                                       or file error, or no file checked)\n"
    "\n"
    "statistics:\n"
    "  stats [--json] [--watch SECONDS]     the server's statistics; --watch\n"
    "                                       repeats every SECONDS until ^C\n"
    "  log-level LEVEL                      set the server's log level\n"
    "                                       (debug, info, warn, error)\n"
    "\n"
    "cluster:\n"
    "  cluster-map                          the cluster map the server serves, as JSON\n"
    "  drop-version --table T --version V   drop version V of T on every replica\n"
    "                                       (not the active one; exit 1 if any failed)\n"
    "\n"
    "models:\n"
    "  put-manifest FILE.json               store a model manifest\n"
    "  manifests                            list manifests\n"
    "  manifest NAME                        print a manifest\n"
    "  import-synthetic --manifest NAME --seed S\n"
    "                                       create every table of a model\n"
    "  prefetch --model NAME --layer L[,L..] [--verify-seed S] [--dequant bf16]\n"
    "           [--show N]                  prefetch each stdin line of token ids\n"
    "  hash --manifest FILE.json --layer L  row ids of each stdin line (no server)\n"
    "  compress-vocab --tokenizer tokenizer.json --out FILE.json [--rule v4.1|demo-v1]\n"
    "                 [--clean-up-spaces on|off] [--manifest TEMPLATE]\n"
    "                                       the compression table, or the template\n"
    "                                       completed with it (no server)\n"
    "\n"
    "operations (on the one server given):\n"
    "  health [--service NAME]              SERVING (exit 0) or NOT_SERVING (exit 1)\n"
    "  drain [--timeout-ms N]               refuse new lookups, wait for in-flight ones\n"
    "                                       (exit 0 drained, 1 lookups still running)\n"
    "  undrain                              serve lookups again\n"
    "  warm --table T ROW...                read rows into RAM on every replica\n"
    "  warm --model M --tokens FILE [--layer L[,L..]]\n"
    "                                       the rows FILE's token ids touch\n"
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
        {"health", cmd_health, 0},
        {"drain", cmd_drain, 0},
        {"undrain", cmd_undrain, 0},
        {"warm", cmd_warm, 0},
        {"verify", cmd_verify, 0},
        {"stats", cmd_stats, 0},
        {"log-level", cmd_log_level, 0},
        {"cluster-map", cmd_cluster_map, 0},
        {"drop-version", cmd_drop_version, 0},
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

/* The global options (each takes a value) and what they set. */
typedef struct globals {
    const char *server;
    const char *deadline;
    const char *max_message;
    const char *tls_ca, *tls_cert, *tls_key, *tls_server_name;
    const char *token_file;
    const char *local;
} globals;

static const char **global_slot(globals *g, const char *name)
{
    static const struct { const char *name; size_t off; } table[] = {
        {"--server", offsetof(globals, server)},
        {"--deadline-ms", offsetof(globals, deadline)},
        {"--max-message-bytes", offsetof(globals, max_message)},
        {"--tls-ca", offsetof(globals, tls_ca)},
        {"--tls-cert", offsetof(globals, tls_cert)},
        {"--tls-key", offsetof(globals, tls_key)},
        {"--tls-server-name", offsetof(globals, tls_server_name)},
        {"--token-file", offsetof(globals, token_file)},
        {"--local", offsetof(globals, local)},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (!strcmp(table[i].name, name))
            return (const char **)((char *)g + table[i].off);
    return NULL;
}

/* Global options before the command; returns the command's index, or -1
 * after printing usage/help (*rc set). */
static int parse_global(int argc, char **argv, globals *g, int *rc)
{
    int i = 1;
    for (; i < argc && strncmp(argv[i], "-", 1) == 0; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage_text, stdout);
            *rc = 0;
            return -1;
        }
        char name[32];
        size_t nlen = strcspn(a, "=");
        snprintf(name, sizeof name, "%.*s", (int)(nlen < 31 ? nlen : 31), a);
        const char **slot = global_slot(g, name);
        if (!slot) {
            *rc = die_usage("unknown option '%s'", a);
            return -1;
        }
        if (a[nlen] == '=') {
            *slot = a + nlen + 1;
        } else if (i + 1 < argc) {
            *slot = argv[++i];
        } else {
            *rc = die_usage("option %s needs a value", a);
            return -1;
        }
    }
    if (i == argc) {
        fputs(usage_text, stderr);
        *rc = EXIT_USAGE;
        return -1;
    }
    return i;
}

/* The admin token: the file's first line, trimmed. NULL after a message. */
static char *read_token(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        die_usage("cannot read token file %s: %s", path, strerror(errno));
        return NULL;
    }
    char line[4096];
    char *t = fgets(line, sizeof line, f) ? line : NULL;
    fclose(f);
    while (t && isspace((unsigned char)*t))
        t++;
    size_t len = t ? strlen(t) : 0;
    while (len && isspace((unsigned char)t[len - 1]))
        t[--len] = '\0';
    if (!len) {
        die_usage("token file %s has an empty first line", path);
        return NULL;
    }
    return strdup(t);
}

static engram_client_options client_opts;
static const char *server_address;

const engram_client_options *ctl_client_options(void)
{
    return &client_opts;
}

size_t ctl_rows_per_reply(uint32_t row_bytes)
{
    /* 64 bytes for the reply's fields and framing; the server allows 32. */
    size_t room = (size_t)client_opts.max_message_bytes - 64;
    size_t n = row_bytes ? room / row_bytes : VERIFY_BATCH_ROWS;
    return n < 1 ? 1 : n > VERIFY_BATCH_ROWS ? VERIFY_BATCH_ROWS : n;
}

const char *ctl_server_address(void)
{
    return server_address;
}

/* Fills the client options every command's clients use; EXIT_USAGE after
 * a message, or 0. */
static int fill_client_options(const globals *g)
{
    engram_client_options_init(&client_opts);
    if (g->deadline) {
        uint64_t v;
        if (parse_u64(g->deadline, "--deadline-ms", &v) || v > INT64_MAX)
            return EXIT_USAGE;
        client_opts.deadline_ms = (int64_t)v;
    }
    if (g->max_message) {
        /* The server's bounds, so one value fits both sides. */
        uint64_t v;
        if (parse_size(g->max_message, "--max-message-bytes", &v))
            return EXIT_USAGE;
        if (v < 4096 || v > 2000000000u)
            return die_usage("--max-message-bytes: '%s' is outside 4096..2000000000",
                             g->max_message);
        client_opts.max_message_bytes = (int32_t)v;
    }
    if (g->local) {
        static const char *const modes[] = {"auto", "off", "require"};   /* ENGRAM_LOCAL_* */
        int m = -1;
        for (int k = 0; k < 3; k++)
            if (!strcmp(g->local, modes[k]))
                m = k;
        if (m < 0)
            return die_usage("--local: '%s' is not auto, off or require", g->local);
        client_opts.local = m == 0 ? ENGRAM_LOCAL_AUTO : m == 1 ? ENGRAM_LOCAL_OFF
                                                                : ENGRAM_LOCAL_REQUIRE;
    }
    if ((g->tls_cert || g->tls_key || g->tls_server_name) && !g->tls_ca)
        return die_usage("--tls-cert, --tls-key and --tls-server-name need --tls-ca");
    client_opts.tls_ca_file = g->tls_ca;
    client_opts.tls_cert_file = g->tls_cert;
    client_opts.tls_key_file = g->tls_key;
    client_opts.tls_server_name = g->tls_server_name;
    const char *tf = g->token_file ? g->token_file : getenv("ENGRAM_TOKEN_FILE");
    if (tf && *tf && !(client_opts.admin_token = read_token(tf)))
        return EXIT_USAGE;
    return 0;
}

int main(int argc, char **argv)
{
    globals g = {.server = getenv("ENGRAM_SERVER")};
    if (!g.server || !*g.server)
        g.server = "127.0.0.1:7070";
    int rc = 0;
    int ci = parse_global(argc, argv, &g, &rc);
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

    if ((rc = fill_client_options(&g)))
        return rc;
    server_address = g.server;
    engram_client *cl;
    engram_error e;
    if (engram_client_open(g.server, &client_opts, &cl, &e))
        return report(&e);
    rc = fn(cl, argc - ci - 1, argv + ci + 1);
    engram_client_close(cl);
    return rc;
}
