/* harness.h: starts and stops real engram-server processes, runs
 * engramctl and imports synthetic tables through libengram for the
 * integration tests. Paths to both binaries come from the
 * build (ENGRAM_SERVER_BIN, ENGRAMCTL_BIN). */
#ifndef ENGRAM_TESTS_HARNESS_H
#define ENGRAM_TESTS_HARNESS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "engram/engram.h"
#include "manifest.h"
#include "test_signal.h"   /* the only way tests signal a process */

typedef struct test_server {
    pid_t pid;           /* > 0 while started and not yet reaped; else 0 */
    char dir[256];       /* the server's: data in dir/data, log in dir/server.log */
    char addr[64];       /* 127.0.0.1:PORT */
    int port;
} test_server;

/* Makes a fresh temporary directory for a server's data. */
void harness_tmpdir(char *out, size_t cap);

/* Starts engram-server on a free loopback port with data dir `dir` and the
 * extra arguments (NULL-terminated); waits until it serves. 0 on success. */
int server_start(test_server *s, const char *dir, const char *const *extra);

/* As server_start, on a given loopback port (0: any). */
int server_start_port(test_server *s, const char *dir, int port, const char *const *extra);

/* A loopback port that was free a moment ago (bind to 0, read, close). */
int harness_free_port(void);

/* Prints to stderr whether the server still runs and accepts, and the tail
 * of its log: what a failing setup needs to say in CI. */
void server_report(const test_server *s);

/* `engramctl --server addr import-synthetic` of the cluster tests' table
 * "ct" (30000 rows x 64 B, seed 11). Seen twice in CI, not reproduced
 * here: one replica's first connect fails ("No such file or directory")
 * although it accepts. Re-running an import completes it (the documented
 * recovery), so on a failure this reports the n servers and runs it once
 * more, saying so. Returns engramctl's exit status. */
int harness_import_ct(const char *addr, const test_server *servers, size_t n);

/* Lines of the server's log that contain `needle`. */
int server_log_count(const test_server *s, const char *needle);

/* Waits until `needle` occurs in at least `count` lines of the server's
 * log (for events the server only logs, such as a SIGHUP reload).
 * 0, or -1 after timeout_ms with the log's tail on stderr. */
int server_log_wait(const test_server *s, const char *needle, int count, int timeout_ms);

/* Sends sig to the server through test_signal (test_signal.h): a server
 * that was never started, or was already reaped (pid 0), is not signalled,
 * since kill(0, sig) would hit ctest and scripts/test.sh too. 0, or -1.
 * Every function below that signals goes through it. */
int server_signal(const test_server *s, int sig);

/* SIGKILL, then waits (a crash, not a shutdown); pid 0 afterwards.
 * Nothing when no server runs. */
void server_kill(test_server *s);

/* One raw Lookup call over gRPC core, bypassing libengram's routing:
 * returns the gRPC status and copies its message into msg. */
int raw_lookup(const char *addr, const char *table, const uint64_t *rows, size_t n,
               uint64_t version, char *msg, size_t msglen);

/* As raw_lookup, and on OK copies the reply's rows into out (at most
 * out_cap bytes; more is an error, -1) and the version they came from into
 * *served: what one server itself answers, with no routing or failover.
 * out NULL: the status only (raw_lookup). */
int raw_lookup_data(const char *addr, const char *table, const uint64_t *rows, size_t n,
                    uint64_t version, uint8_t *out, size_t out_cap, uint64_t *served,
                    char *msg, size_t msglen);

/* SIGTERM, then waits; pid 0 afterwards. Returns the exit status (0 =
 * clean), or -1, also when no server was started (a failed setup's
 * teardown). */
int server_stop(test_server *s);

/* SIGSTOP, then waits until the whole process has stopped: a group stop
 * takes effect only once one of its threads runs, so on a loaded machine
 * another thread could still serve a request after kill() returns;
 * waitpid(WUNTRACED) reports the stop only when every thread has stopped.
 * From then on the server answers nothing. 0, or -1. */
int server_pause(test_server *s);

/* Runs engramctl --server addr ARGS... (NULL-terminated); returns its exit
 * status. Output goes to the test's stdout/stderr. */
int engramctl(const char *addr, ...);

/* As engramctl, but what it writes is captured: stdout into out, stderr
 * into err (each NUL-terminated, cut at its cap - 1 bytes; err may be NULL,
 * then stderr goes to the test's). Tests compare CLI output exactly with
 * it. Returns the exit status, or -1 when the output could not be
 * captured. */
int engramctl_capture(char *out, size_t out_cap, char *err, size_t err_cap,
                      const char *addr, ...);

/* Stores the manifest file at path on the server through c. 0, or -1
 * (reported). */
int harness_put_manifest(engram_client *c, const char *path);

/* Imports layer li's table of man through c, as one new active version:
 * row r is synthetic_row_typed(manifest_synthetic_seed(seed_base, layer
 * id), r) in the manifest's dtype. 0, or -1 (reported). */
int harness_import_layer(engram_client *c, const engram_manifest *man, int li, uint64_t seed_base);

#endif
