/* harness.c: process control for the integration tests (see harness.h).
 * The server is told to write its bound port to a file, so tests never race
 * for a port number. */
#include "harness.h"

#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

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

static void exec_server(const char *dir, const char *portfile, const char *const *extra)
{
    const char *argv[32];
    int n = 0;
    char data[300], log[300];
    snprintf(data, sizeof data, "%s/data", dir);
    snprintf(log, sizeof log, "%s/server.log", dir);
    argv[n++] = ENGRAM_SERVER_BIN;
    argv[n++] = "--data";
    argv[n++] = data;
    argv[n++] = "--listen";
    argv[n++] = "127.0.0.1:0";
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

int server_start(test_server *s, const char *dir, const char *const *extra)
{
    char portfile[300];
    snprintf(s->dir, sizeof s->dir, "%s", dir);
    snprintf(portfile, sizeof portfile, "%s/port", dir);
    unlink(portfile);
    s->pid = fork();
    if (s->pid == 0)
        exec_server(dir, portfile, extra);
    for (int i = 0; i < 400; i++) {   /* up to 20 s */
        if ((s->port = read_port(portfile)) > 0) {
            snprintf(s->addr, sizeof s->addr, "127.0.0.1:%d", s->port);
            return 0;
        }
        int st;
        if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
            fprintf(stderr, "engram-server exited during start-up (see %s/server.log)\n", dir);
            return -1;
        }
        usleep(50000);
    }
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
    return -1;
}

int server_stop(test_server *s)
{
    int st;
    if (kill(s->pid, SIGTERM) < 0 || waitpid(s->pid, &st, 0) != s->pid)
        return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int engramctl(const char *addr, ...)
{
    const char *argv[64];
    int n = 0;
    argv[n++] = ENGRAMCTL_BIN;
    argv[n++] = "--server";
    argv[n++] = addr;
    va_list ap;
    va_start(ap, addr);
    const char *a;
    while ((a = va_arg(ap, const char *)) && n < 63)
        argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        execv(ENGRAMCTL_BIN, (char *const *)argv);
        _exit(127);
    }
    int st;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}
