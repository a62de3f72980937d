/* ctl.h: what engramctl's command files share (util.c) and the commands
 * each file implements. A command gets the arguments after its name and
 * returns the process exit code. */
#ifndef ENGRAM_CTL_H
#define ENGRAM_CTL_H

#include <stdint.h>
#include <stdio.h>

#include "engram/engram.h"

#define EXIT_RPC 1
#define EXIT_USAGE 2

/* Bytes generated / read per import write (the library splits writes into
 * <= 4 MiB messages anyway; sizing by bytes keeps narrow rows from turning
 * into many tiny writes), and rows looked up per verify batch. */
#define IMPORT_BATCH_BYTES (4u << 20)
#define VERIFY_BATCH_ROWS 4096

/* Rows per lookup whose reply fits --max-message-bytes (and at most
 * VERIFY_BATCH_ROWS; at least 1): a server with a small limit refuses a
 * larger reply, and it should not take the operator a retry to learn it. */
size_t ctl_rows_per_reply(uint32_t row_bytes);

/* Prints `engramctl: INVALID_ARGUMENT: ...`; returns EXIT_USAGE. */
int die_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Prints `engramctl: STATUS: message`; returns EXIT_RPC. */
int report(const engram_error *e);
/* Prints `engramctl: STATUS: ...` for code; returns EXIT_RPC. */
int ctl_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Strict decimal parsing; a message naming `what` on failure. */
int parse_u64(const char *s, const char *what, uint64_t *out);
int parse_u32(const char *s, const char *what, uint32_t *out);
/* As parse_u64, with an optional K, M, G or T suffix (powers of 1024), the
 * form engram-server's size options take. */
int parse_size(const char *s, const char *what, uint64_t *out);

/* A command's `--name value` options (also `--name=value`) and its
 * positional arguments. Every option takes a value. */
typedef struct {
    const char *names[12];
    const char *values[12];
    int n;
    const char *pos[256];
    int npos;
} opts;

int parse_opts(opts *o, int argc, char **argv, const char *cmd);
const char *opt(const opts *o, const char *name);
const char *ctl_need(const opts *o, const char *name, const char *cmd);

/* Reads one line of whitespace-separated token ids from `in` into *tokens
 * (grown as needed; *cap is its capacity). Returns 1 with *n set, 0 at end
 * of input, or EXIT_USAGE after a message naming the bad token. */
int read_token_line(FILE *in, int64_t **tokens, size_t *n, size_t *cap, size_t lineno);

/* The client options of this run (deadline, TLS, admin token) as the
 * global options set them (main.c): every client a command opens, such as
 * the per-replica ones, uses them. */
const engram_client_options *ctl_client_options(void);
/* The address engramctl was given (--server, $ENGRAM_SERVER or the
 * default), for messages. */
const char *ctl_server_address(void);

/* Commands that talk to a server. */
typedef int (*ctl_cmd)(engram_client *cl, int argc, char **argv);
int cmd_tables(engram_client *cl, int argc, char **argv);
int cmd_table(engram_client *cl, int argc, char **argv);
int cmd_lookup(engram_client *cl, int argc, char **argv);
int cmd_verify_synthetic(engram_client *cl, int argc, char **argv);
int cmd_import_synthetic(engram_client *cl, int argc, char **argv);
int cmd_import(engram_client *cl, int argc, char **argv);
int cmd_put_manifest(engram_client *cl, int argc, char **argv);
int cmd_manifests(engram_client *cl, int argc, char **argv);
int cmd_manifest(engram_client *cl, int argc, char **argv);
int cmd_prefetch(engram_client *cl, int argc, char **argv);
/* Operations (ops.c). */
int cmd_health(engram_client *cl, int argc, char **argv);
int cmd_drain(engram_client *cl, int argc, char **argv);
int cmd_undrain(engram_client *cl, int argc, char **argv);
int cmd_warm(engram_client *cl, int argc, char **argv);
/* Table checksums, on the server and against a file (verify.c). */
int cmd_verify(engram_client *cl, int argc, char **argv);
/* verify --local, the files published on this host (verify_local.c):
 * verify_take_local removes the `--local` flag (the one verify option
 * without a value) from argv, returning 1 when it was there, 0 when not,
 * -1 after a usage message; verify_local runs the rest of the command. */
int verify_take_local(int *argc, char **argv);
int verify_local(engram_client *cl, int argc, char **argv);
/* Statistics and log level (stats.c). */
int cmd_stats(engram_client *cl, int argc, char **argv);
int cmd_log_level(engram_client *cl, int argc, char **argv);
/* The cluster map and dropping a version on every replica (versions.c). */
int cmd_cluster_map(engram_client *cl, int argc, char **argv);
int cmd_drop_version(engram_client *cl, int argc, char **argv);

/* Commands that need no server (cl is NULL). */
int cmd_hash(engram_client *cl, int argc, char **argv);
int cmd_compress_vocab(engram_client *cl, int argc, char **argv);

/* ---- cluster imports (cluster_import.c) ---- */

/* Fills out with the given global rows (n * row_bytes bytes). Called from
 * several threads at once. Returns 0, or -1 with err. */
typedef int (*row_source_fn)(void *ctx, const uint64_t *global_rows, size_t n, uint8_t *out,
                             char *err, size_t errlen);

typedef struct cluster_import {
    const char *table;
    uint64_t rows;               /* global */
    uint32_t dim;
    const char *dtype;
    uint32_t row_bytes;
    row_source_fn source;
    void *ctx;
    uint32_t shards;             /* set by cluster_import_run */
    uint64_t version;            /* chosen by cluster_import_run */
} cluster_import;

struct engram_cluster;
/* The cluster map of the server cl talks to; NULL after reporting (*rc). */
struct engram_cluster *cluster_of(engram_client *cl, int *rc);
/* 1 when the map is a lone server (imports go the plain way). */
int cluster_is_single(const struct engram_cluster *map);
/* Imports into every replica of every shard, then activates (see
 * cluster_import.c). Returns the exit code. */
int cluster_import_run(cluster_import *ci, const struct engram_cluster *map);

/* Streams the synthetic table `seed` of the given shape (import.c). */
int import_synthetic_table(engram_client *cl, const char *table, uint64_t rows,
                           uint32_t dim, const char *dtype, uint32_t row_bytes,
                           uint64_t seed);
/* import-synthetic --manifest NAME --seed S: every table of a model, each
 * with manifest_synthetic_seed(S, layer) (models.c). */
int import_synthetic_manifest(engram_client *cl, const opts *o);

struct engram_manifest;
/* The manifest of model `name` as stored on the server, parsed; NULL after
 * reporting (*rc) (models.c). */
struct engram_manifest *fetch_manifest(engram_client *cl, const char *name, int *rc);

/* ---- file imports (import.c, import_tensor.c) ---- */

/* What an import of a file expects; an empty field is taken from the
 * file. `by` names who asked, for messages ("--dim/--dtype", "model M's
 * manifest (layer L)"). */
typedef struct import_spec {
    char table[256];
    char dtype[16];
    uint32_t dim;
    uint64_t rows;               /* 0: as many as the file holds */
    char by[300];
} import_spec;

/* Fills the table, dtype, dim and rows of layer `layer` of model `model`
 * from its stored manifest. Returns 0 or the exit code after a message. */
int spec_from_manifest(engram_client *cl, const char *model, const char *layer,
                       import_spec *s);
/* Reads the header of the .safetensors `file`, checks tensor `name`
 * against *s, completes *s from it and leaves *fp at its first row.
 * Returns 0 or the exit code after a message naming the problem. */
int open_tensor(const char *file, const char *name, import_spec *s, FILE **fp);
/* open_tensor when tensor is set, else a raw / .npy file of rows of s's
 * dim and dtype (s->rows, when set, must match). The same return. */
int open_import_file(const char *file, const char *tensor, import_spec *s, FILE **fp);
/* checkpoint.c: layer `layer` of a DeepSeek-V4.1 checkpoint directory (its
 * weight and scale tensors, through model.safetensors.index.json) as a
 * stream of packed mxfp8_e4m3 rows; checks both tensors against each other
 * and *s, then completes *s. The same return. */
int open_checkpoint(const char *dir, int64_t layer, import_spec *s, FILE **fp);

#endif
