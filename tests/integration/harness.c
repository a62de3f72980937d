/* harness.c: process control for the integration tests (see harness.h).
 * The server is told to write its bound port to a file, so tests never race
 * for a port number. */
#include "harness.h"
#include "synthetic.h"

#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "engram/v1/engram.pb-c.h"
#include "grpc_util.h"
#include "test_signal.h"

void harness_tmpdir(char *out, size_t cap)
{
    snprintf(out, cap, "/tmp/engram-it-XXXXXX");
    if (!mkdtemp(out)) {
        perror("mkdtemp");
        exit(1);
    }
}

static int read_port(const char *path)
{
    FILE *f = fopen(path, "r");
    int port = 0;
    if (f) {
        if (fscanf(f, "%d", &port) != 1)
            port = 0;
        fclose(f);
    }
    return port;
}

static void exec_server(const char *dir, const char *portfile, int port, const char *const *extra)
{
    const char *argv[32];
    int n = 0;
    char data[300], log[300], listen[64];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", port);
    snprintf(data, sizeof data, "%s/data", dir);
    snprintf(log, sizeof log, "%s/server.log", dir);
    argv[n++] = ENGRAM_SERVER_BIN;
    argv[n++] = "--data";
    argv[n++] = data;
    argv[n++] = "--listen";
    argv[n++] = listen;
    argv[n++] = "--port-file";
    argv[n++] = portfile;
    argv[n++] = "--log-file";
    argv[n++] = log;
    for (int i = 0; extra && extra[i] && n < 31; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    execv(ENGRAM_SERVER_BIN, (char *const *)argv);
    perror("execv engram-server");
    _exit(127);
}

/* The port file is written once the server serves; a connect proves that
 * the port is really this server's listener (a free port picked by
 * harness_free_port can be taken by another process in between). */
static int tcp_accepts(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int ok = fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

int server_signal(const test_server *s, int sig)
{
    return test_signal(s->pid, sig);
}

/* Waits for the server to exit and forgets its pid, which the kernel may
 * hand to another process from now on. */
static int server_reap(test_server *s, int *st)
{
    pid_t w = s->pid > 0 ? waitpid(s->pid, st, 0) : -1;
    s->pid = 0;
    return w > 0 ? 0 : -1;
}

void server_report(const test_server *s)
{
    int st;
    if (s->pid <= 0) {    /* waitpid(0) would reap any child of the group */
        fprintf(stderr, "no server running (never started, or already stopped) in %s\n", s->dir);
        return;
    }
    pid_t w = waitpid(s->pid, &st, WNOHANG);
    if (w == s->pid)
        fprintf(stderr, "server %s (pid %d) has exited: %s %d\n", s->addr, (int)s->pid,
                WIFEXITED(st) ? "status" : "signal", WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
    else
        fprintf(stderr, "server %s (pid %d) is running; %s\n", s->addr, (int)s->pid,
                tcp_accepts(s->port) ? "accepting" : "NOT accepting");
    char cmd[400];
    snprintf(cmd, sizeof cmd, "tail -n 15 '%s/server.log' >&2", s->dir);
    if (system(cmd) != 0)
        fprintf(stderr, "(no log in %s)\n", s->dir);
}

int server_start(test_server *s, const char *dir, const char *const *extra)
{
    return server_start_port(s, dir, 0, extra);
}

int server_start_port(test_server *s, const char *dir, int port, const char *const *extra)
{
    char portfile[300];
    snprintf(s->dir, sizeof s->dir, "%s", dir);
    snprintf(portfile, sizeof portfile, "%s/port", dir);
    unlink(portfile);
    s->pid = fork();
    if (s->pid == 0)
        exec_server(dir, portfile, port, extra);
    if (s->pid < 0) {
        perror("fork engram-server");
        s->pid = 0;
        return -1;
    }
    for (int i = 0; i < 400; i++) {   /* up to 20 s */
        if ((s->port = read_port(portfile)) > 0) {
            snprintf(s->addr, sizeof s->addr, "127.0.0.1:%d", s->port);
            if (tcp_accepts(s->port))
                return 0;
            fprintf(stderr, "engram-server wrote port %d but does not accept on it\n", s->port);
            server_report(s);
            server_kill(s);
            return -1;
        }
        int st;
        if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
            fprintf(stderr, "engram-server exited during start-up (see %s/server.log)\n", dir);
            s->pid = 0;   /* reaped: a later stop must not signal its reused pid */
            return -1;
        }
        usleep(50000);
    }
    fprintf(stderr, "engram-server wrote no port within 20 s\n");
    server_kill(s);
    return -1;
}

int server_log_count(const test_server *s, const char *needle)
{
    char path[300], line[4096];
    snprintf(path, sizeof path, "%s/server.log", s->dir);
    FILE *f = fopen(path, "r");
    int n = 0;
    while (f && fgets(line, sizeof line, f))
        n += strstr(line, needle) != NULL;
    if (f)
        fclose(f);
    return n;
}

int server_log_wait(const test_server *s, const char *needle, int count, int timeout_ms)
{
    for (int waited = 0; waited <= timeout_ms; waited += 20) {
        if (server_log_count(s, needle) >= count)
            return 0;
        usleep(20000);
    }
    fprintf(stderr, "no %d lines with \"%s\" in the log after %d ms\n", count, needle,
            timeout_ms);
    server_report(s);
    return -1;
}

int server_stop(test_server *s)
{
    int st;
    if (server_signal(s, SIGTERM) < 0 || server_reap(s, &st) < 0)
        return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* Runs engramctl --server addr ARGS... with stdout and stderr on ofd and
 * efd (-1: the test's own); returns its exit status. */
static int ctl_run(const char *addr, va_list ap, int ofd, int efd)
{
    const char *argv[64];
    int n = 0;
    argv[n++] = ENGRAMCTL_BIN;
    argv[n++] = "--server";
    argv[n++] = addr;
    const char *a;
    while ((a = va_arg(ap, const char *)) && n < 63)
        argv[n++] = a;
    argv[n] = NULL;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        if (ofd >= 0)
            dup2(ofd, 1);
        if (efd >= 0)
            dup2(efd, 2);
        execv(ENGRAMCTL_BIN, (char *const *)argv);
        _exit(127);
    }
    int st;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int engramctl(const char *addr, ...)
{
    va_list ap;
    va_start(ap, addr);
    int rc = ctl_run(addr, ap, -1, -1);
    va_end(ap);
    return rc;
}

/* A temporary file for one captured stream; its fd, or -1. */
static int capture_file(char *path, size_t cap)
{
    snprintf(path, cap, "/tmp/engram-ctl-out-XXXXXX");
    return mkstemp(path);
}

/* Reads what fd holds from its start into buf (cap bytes with the NUL);
 * closes and removes it. */
static void capture_read(int fd, const char *path, char *buf, size_t cap)
{
    ssize_t n = pread(fd, buf, cap - 1, 0);
    buf[n > 0 ? n : 0] = '\0';
    close(fd);
    unlink(path);
}

int engramctl_capture(char *out, size_t out_cap, char *err, size_t err_cap,
                      const char *addr, ...)
{
    char opath[64], epath[64];
    int ofd = capture_file(opath, sizeof opath);
    int efd = err ? capture_file(epath, sizeof epath) : -2;
    if (ofd < 0 || efd == -1) {
        perror("engramctl_capture: mkstemp");
        if (ofd >= 0)
            capture_read(ofd, opath, out, out_cap);
        if (efd >= 0)
            capture_read(efd, epath, err, err_cap);
        return -1;
    }
    va_list ap;
    va_start(ap, addr);
    int rc = ctl_run(addr, ap, ofd, err ? efd : -1);
    va_end(ap);
    capture_read(ofd, opath, out, out_cap);
    if (err)
        capture_read(efd, epath, err, err_cap);
    return rc;
}

int server_pause(test_server *s)
{
    int st;
    if (server_signal(s, SIGSTOP) < 0 || waitpid(s->pid, &st, WUNTRACED) != s->pid)
        return -1;
    return WIFSTOPPED(st) ? 0 : -1;
}

int harness_import_ct(const char *addr, const test_server *servers, size_t n)
{
    int rc = engramctl(addr, "import-synthetic", "--table", "ct", "--rows", "30000",
                       "--row-bytes", "64", "--seed", "11", NULL);
    if (rc == 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        server_report(&servers[i]);
    fprintf(stderr, "setup: the import failed (exit %d); re-running it once\n", rc);
    return engramctl(addr, "import-synthetic", "--table", "ct", "--rows", "30000",
                     "--row-bytes", "64", "--seed", "11", NULL);
}

void server_kill(test_server *s)
{
    int st;
    if (server_signal(s, SIGKILL) == 0)
        server_reap(s, &st);
}

/* Each probe socket is closed before the next, so the kernel may hand the
 * same port out twice: ports this process already chose are skipped, or
 * two servers of one test would share a port and one of them could not
 * start. */
int harness_free_port(void)
{
    static int chosen[256];
    static int nchosen;
    for (int attempt = 0; attempt < 100; attempt++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t len = sizeof a;
        int port = 0;
        if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
            getsockname(fd, (struct sockaddr *)&a, &len) == 0)
            port = ntohs(a.sin_port);
        if (fd >= 0)
            close(fd);
        if (!port)
            return 0;
        int dup = 0;
        for (int i = 0; i < nchosen; i++)
            dup |= chosen[i] == port;
        if (!dup) {
            if (nchosen < 256)
                chosen[nchosen++] = port;
            return port;
        }
    }
    return 0;
}

/* One Lookup call; the reply message, if any, goes to *keep (NULL: dropped). */
static int raw_call_keep(grpc_channel *ch, grpc_completion_queue *cq, grpc_byte_buffer *req,
                         char *msg, size_t msglen, grpc_byte_buffer **keep)
{
    grpc_call *call = grpc_channel_create_call(
        ch, NULL, GRPC_PROPAGATE_DEFAULTS, cq, grpc_slice_from_static_string("/engram.v1.Lookup/Lookup"),
        NULL, deadline_in_ms(10000), NULL);
    grpc_metadata_array md0, md1;
    grpc_metadata_array_init(&md0);
    grpc_metadata_array_init(&md1);
    grpc_byte_buffer *resp = NULL;
    grpc_status_code status = GRPC_STATUS_UNKNOWN;
    grpc_slice details = grpc_empty_slice();
    grpc_op ops[6];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = req;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &md0;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &resp;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &md1;
    ops[5].data.recv_status_on_client.status = &status;
    ops[5].data.recv_status_on_client.status_details = &details;
    grpc_call_start_batch(call, ops, 6, (void *)1, NULL);
    grpc_completion_queue_pluck(cq, (void *)1, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    snprintf(msg, msglen, "%.*s", (int)GRPC_SLICE_LENGTH(details), (const char *)GRPC_SLICE_START_PTR(details));
    grpc_slice_unref(details);
    if (keep)
        *keep = resp;
    else if (resp)
        grpc_byte_buffer_destroy(resp);
    grpc_metadata_array_destroy(&md0);
    grpc_metadata_array_destroy(&md1);
    grpc_call_unref(call);
    return (int)status;
}

int raw_lookup_data(const char *addr, const char *table, const uint64_t *rows, size_t n,
                    uint64_t version, uint8_t *out, size_t out_cap, uint64_t *served,
                    char *msg, size_t msglen)
{
    grpc_init();
    grpc_channel_credentials *creds = grpc_insecure_credentials_create();
    grpc_channel *ch = grpc_channel_create(addr, creds, NULL);
    grpc_channel_credentials_release(creds);
    grpc_completion_queue *cq = grpc_completion_queue_create_for_pluck(NULL);
    Engram__V1__LookupRequest rq = ENGRAM__V1__LOOKUP_REQUEST__INIT;
    rq.table = (char *)table;
    rq.rows = (uint64_t *)rows;
    rq.n_rows = n;
    rq.version = version;
    grpc_byte_buffer *req = pb_to_byte_buffer(&rq.base), *resp = NULL;
    int status = raw_call_keep(ch, cq, req, msg, msglen, out ? &resp : NULL);
    grpc_byte_buffer_destroy(req);
    if (status == 0 && out) {
        Engram__V1__LookupResponse *r = resp ? (Engram__V1__LookupResponse *)pb_from_byte_buffer(
                                                   &engram__v1__lookup_response__descriptor, resp)
                                             : NULL;
        if (!r || r->data.len > out_cap) {
            snprintf(msg, msglen, "%s", r ? "reply larger than out_cap" : "no reply message");
            status = -1;
        } else {
            memcpy(out, r->data.data, r->data.len);
            *served = r->version;
        }
        if (r)
            protobuf_c_message_free_unpacked(&r->base, NULL);
    }
    if (resp)
        grpc_byte_buffer_destroy(resp);
    grpc_completion_queue_shutdown(cq);
    while (grpc_completion_queue_pluck(cq, NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
           GRPC_QUEUE_SHUTDOWN)
        ;
    grpc_completion_queue_destroy(cq);
    grpc_channel_destroy(ch);
    grpc_shutdown();
    return status;
}

int raw_lookup(const char *addr, const char *table, const uint64_t *rows, size_t n,
               uint64_t version, char *msg, size_t msglen)
{
    return raw_lookup_data(addr, table, rows, n, version, NULL, 0, NULL, msg, msglen);
}

int harness_put_manifest(engram_client *c, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return -1;
    }
    char *json = malloc(1 << 20);
    size_t len = fread(json, 1, (1 << 20) - 1, f);
    fclose(f);
    engram_error e;
    int rc = engram_manifest_put(c, json, len, NULL, &e);
    free(json);
    if (rc)
        fprintf(stderr, "put manifest %s: %s\n", path, e.message);
    return rc ? -1 : 0;
}

int harness_import_layer(engram_client *c, const engram_manifest *man, int li, uint64_t seed_base)
{
    const eh_layer *L = &man->model->layers[li];
    uint64_t seed = manifest_synthetic_seed(seed_base, L->layer_id);
    size_t rb = man->row_bytes;
    engram_import *imp;
    engram_error e;
    if (engram_import_begin(c, man->tables[li], L->total_rows, man->dim, man->dtype, &imp, &e)) {
        fprintf(stderr, "import %s: %s\n", man->tables[li], e.message);
        return -1;
    }
    enum { PER = 4096 };
    uint8_t *buf = malloc(PER * rb);
    for (uint64_t r = 0; r < L->total_rows; r += PER) {
        uint64_t n = L->total_rows - r < PER ? L->total_rows - r : PER;
        for (uint64_t i = 0; i < n; i++)
            synthetic_row_typed(seed, r + i, buf + i * rb, rb, man->dtype);
        if (engram_import_write(imp, r, buf, n * rb, &e)) {
            fprintf(stderr, "import %s: write: %s\n", man->tables[li], e.message);
            free(buf);
            engram_import_abort(imp);
            return -1;
        }
    }
    free(buf);
    if (engram_import_finish(imp, NULL, &e)) {
        fprintf(stderr, "import %s: finish: %s\n", man->tables[li], e.message);
        return -1;
    }
    return 0;
}
