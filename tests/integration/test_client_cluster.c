/* test_client_cluster.c: libengram's cluster client against 3 shards x 2
 * replicas of real engram-server processes on loopback: routed lookups,
 * failover after kill -9 and the killed replica's re-admission within the
 * back-off bound once it is back, hedging around a SIGSTOPped replica, a
 * shard fully down, and re-pinning after the pinned version is dropped. Data is
 * imported per shard with engram_import_begin_target (no engramctl).
 * ENGRAM_SERVER_BIN is set by the build. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <jansson.h>

#include "engram/engram.h"
#include "synthetic.h"
#include "test_signal.h"

#define S 3
#define R 2
#define ROWS 20000
#define RB 64
#define N 300

static pid_t pids[S][R];
static char addrs[S][R][64];
static char tmp[] = "/tmp/engram-cc-XXXXXX";
static char map_path[300];

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* A port nothing listens on, and not one this test already chose: each
 * probe socket is closed before the next bind, so the kernel may hand the
 * same port out twice, and two replicas on one port look like one server
 * answering for both (the second cannot bind and exits). */
static int free_port(void)
{
    static int chosen[64];
    static int nchosen;
    for (int attempt = 0; attempt < 100; attempt++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t len = sizeof a;
        if (bind(fd, (struct sockaddr *)&a, sizeof a) ||
            getsockname(fd, (struct sockaddr *)&a, &len)) {
            close(fd);
            return -1;
        }
        close(fd);
        int port = ntohs(a.sin_port), dup = 0;
        for (int i = 0; i < nchosen; i++)
            dup |= chosen[i] == port;
        if (!dup) {
            if (nchosen < 64)
                chosen[nchosen++] = port;
            return port;
        }
    }
    return -1;
}

static int start(int s, int r)
{
    char data[400], shard[16], log[400];
    snprintf(data, sizeof data, "%s/d%d%d", tmp, s, r);
    snprintf(log, sizeof log, "%s/log%d%d", tmp, s, r);
    snprintf(shard, sizeof shard, "%d", s);
    pid_t p = fork();
    if (p < 0)
        return -1;           /* pids[s][r] stays 0: nothing to signal later */
    if (p == 0) {
        execl(ENGRAM_SERVER_BIN, ENGRAM_SERVER_BIN, "--data", data, "--listen", addrs[s][r],
              "--cluster", map_path, "--shard", shard, "--threads", "2", "--resident-budget", "64M",
              "--block-cache", "8M", "--log-file", log, "--log-level", "warn", (char *)NULL);
        _exit(127);
    }
    pids[s][r] = p;
    /* Serving once a table list answers. */
    engram_client *c;
    if (engram_client_open(addrs[s][r], NULL, &c, NULL))
        return -1;
    int rc = -1;
    for (int i = 0; i < 200 && rc; i++) {
        engram_table_info *t = NULL;
        size_t n;
        rc = engram_table_list(c, &t, &n, NULL);
        engram_free(t);
        if (rc)
            usleep(25000);
    }
    engram_client_close(c);
    /* The answer must be ours: a server that could not bind its port has
     * exited while another process answered there. */
    if (rc == 0 && waitpid(p, NULL, WNOHANG) == p) {
        pids[s][r] = 0;
        fprintf(stderr, "replica %d/%d exited at start (port %s taken?)\n", s, r, addrs[s][r]);
        return -1;
    }
    return rc;
}

/* SIGKILL and SIGTERM wait for the exit. SIGSTOP waits until the whole
 * process has stopped: a group stop takes effect only once one of its
 * threads runs, so without the wait a server could still answer a lookup
 * sent right after kill() returns (seen: "shard 2 stopped: OK"). */
static void stop(int s, int r, int sig)
{
    if (pids[s][r] <= 0)     /* never started, or already reaped */
        return;
    test_signal(pids[s][r], sig);
    if (sig == SIGKILL || sig == SIGTERM) {
        waitpid(pids[s][r], NULL, 0);
        pids[s][r] = 0;
    } else if (sig == SIGSTOP) {
        int st = 0;
        while (waitpid(pids[s][r], &st, WUNTRACED) == pids[s][r] && !WIFSTOPPED(st))
            ;
    }
}

/* Imports version `version` (seed) of table t on one server, staged. */
static int import_shard(int s, int r, const char *t, uint64_t version, uint64_t seed)
{
    engram_client *c;
    engram_error e;
    if (engram_client_open(addrs[s][r], NULL, &c, &e))
        return -1;
    engram_import_target tg;
    engram_import_target_init(&tg);
    tg.version = version;
    tg.stage = 1;
    tg.shard_count = S;
    tg.shard_index = (uint32_t)s;
    engram_import *imp;
    int rc = engram_import_begin_target(c, t, ROWS, RB, "u8", &tg, &imp, &e);
    uint64_t local = ROWS > (uint64_t)s ? (ROWS - s - 1) / S + 1 : 0;
    uint8_t *buf = malloc(local * RB);
    for (uint64_t i = 0; i < local; i++)
        synthetic_row(seed, i * S + s, buf + i * RB, RB);
    if (!rc)
        rc = engram_import_write(imp, 0, buf, local * RB, &e);
    if (!rc)
        rc = engram_import_finish(imp, NULL, &e);
    else
        engram_import_abort(imp);
    free(buf);
    if (rc)
        fprintf(stderr, "import %d/%d: %s\n", s, r, e.message);
    engram_client_close(c);
    return rc;
}

static int on_all(int (*fn)(engram_client *, const char *, uint64_t), const char *t, uint64_t v)
{
    for (int s = 0; s < S; s++)
        for (int r = 0; r < R; r++) {
            if (!pids[s][r])
                continue;
            engram_client *c;
            if (engram_client_open(addrs[s][r], NULL, &c, NULL))
                return -1;
            int rc = fn(c, t, v);
            engram_client_close(c);
            if (rc)
                return rc;
        }
    return 0;
}

static int activate(engram_client *c, const char *t, uint64_t v)
{
    return engram_table_activate(c, t, v, NULL, NULL);
}

static int drop(engram_client *c, const char *t, uint64_t v)
{
    return engram_table_drop_version(c, t, v, NULL);
}

static int group_setup(void **state)
{
    (void)state;
    if (!mkdtemp(tmp))
        return -1;
    snprintf(map_path, sizeof map_path, "%s/cluster.json", tmp);
    FILE *f = fopen(map_path, "w");
    fprintf(f, "{\"name\": \"cc\", \"placement\": \"mod\", \"shards\": [");
    for (int s = 0; s < S; s++) {
        fprintf(f, "%s{\"replicas\": [", s ? ", " : "");
        for (int r = 0; r < R; r++) {
            snprintf(addrs[s][r], sizeof addrs[s][r], "127.0.0.1:%d", free_port());
            fprintf(f, "%s\"%s\"", r ? ", " : "", addrs[s][r]);
        }
        fprintf(f, "]}");
    }
    fprintf(f, "]}\n");
    fclose(f);
    for (int s = 0; s < S; s++)
        for (int r = 0; r < R; r++)
            if (start(s, r))
                return -1;
    for (int s = 0; s < S; s++)
        for (int r = 0; r < R; r++)
            if (import_shard(s, r, "cc", 1, 11))
                return -1;
    return on_all(activate, "cc", 1);
}

static int group_teardown(void **state)
{
    (void)state;
    for (int s = 0; s < S; s++)
        for (int r = 0; r < R; r++) {
            if (pids[s][r] > 0)
                test_signal(pids[s][r], SIGCONT);
            stop(s, r, SIGKILL);
        }
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    return system(cmd);
}

static engram_client *connect_opts(const char *addr, int64_t deadline_ms, int hedge)
{
    engram_client_options o;
    engram_client_options_init(&o);
    o.deadline_ms = deadline_ms;
    o.hedge_percentile = hedge;
    engram_client *c;
    assert_int_equal(engram_client_open(addr, &o, &c, NULL), ENGRAM_OK);
    return c;
}

static uint64_t rng = 1;

static void rand_rows(uint64_t *rows, size_t n)
{
    for (size_t i = 0; i < n; i++)
        rows[i] = splitmix64(rng++) % ROWS;
    rows[n / 2] = rows[0];   /* a duplicate */
}

/* One lookup of N random rows; checks every byte against seed. Returns the
 * status; *ms the time it took. */
static int lookup_check(engram_client *c, uint64_t seed, double *ms, engram_error *e)
{
    uint64_t rows[N];
    static uint8_t out[N * RB], want[RB];
    rand_rows(rows, N);
    double t0 = now_ms();
    uint64_t ver = 0;
    uint32_t rb = 0;
    int rc = engram_lookup_sync(c, "cc", rows, N, out, sizeof out, &rb, &ver, e);
    if (ms)
        *ms = now_ms() - t0;
    if (rc)
        return rc;
    assert_int_equal(rb, RB);
    for (size_t i = 0; i < N; i++) {
        synthetic_row(seed, rows[i], want, RB);
        assert_memory_equal(out + i * RB, want, RB);
    }
    return rc;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void report(const char *what, double *ms, int n, engram_client *c)
{
    qsort(ms, n, sizeof *ms, cmp_d);
    engram_client_counters k;
    engram_client_get_counters(c, &k);
    printf("%s: %d lookups of %d rows, p50 %.2f ms, p99 %.2f ms, max %.2f ms; subrequests %llu retries "
           "%llu hedges %llu wins %llu ejections %llu (slow %llu) resolves %llu\n",
           what, n, N, ms[n / 2], ms[n * 99 / 100], ms[n - 1], (unsigned long long)k.subrequests,
           (unsigned long long)k.retries, (unsigned long long)k.hedges,
           (unsigned long long)k.hedge_wins, (unsigned long long)k.ejections,
           (unsigned long long)k.slow_ejections, (unsigned long long)k.version_resolves);
}

static void test_routed_lookups(void **state)
{
    (void)state;
    double opened = now_ms();
    engram_client *c = connect_opts(addrs[1][1], 10000, 0);
    double ms[200];
    engram_error e;
    for (int i = 0; i < 200; i++)
        if (lookup_check(c, 11, &ms[i], &e))
            fail_msg("%s", e.message);
    /* async: several in flight, poll only */
    uint64_t rows[4][N];
    static uint8_t out[4][N * RB];
    engram_lookup *h[4];
    for (int k = 0; k < 4; k++) {
        rand_rows(rows[k], N);
        assert_int_equal(engram_lookup_start(c, "cc", rows[k], N, out[k], sizeof out[k], &h[k], NULL), 0);
    }
    for (int k = 0; k < 4; k++) {
        while (!engram_lookup_poll(h[k]))
            usleep(100);
        assert_int_equal(engram_lookup_wait(h[k], 0, NULL), ENGRAM_OK);
        uint64_t v;
        engram_lookup_result(h[k], NULL, &v);
        assert_int_equal(v, 1);
        uint8_t want[RB];
        for (size_t i = 0; i < N; i++) {
            synthetic_row(11, rows[k][i], want, RB);
            assert_memory_equal(out[k] + i * RB, want, RB);
        }
        engram_lookup_free(h[k]);
    }
    /* an out-of-range row names the caller's index */
    uint64_t bad[3] = {1, 2, ROWS + 5};
    uint8_t o3[3 * RB];
    assert_int_equal(engram_lookup_sync(c, "cc", bad, 3, o3, sizeof o3, NULL, NULL, &e), ENGRAM_OUT_OF_RANGE);
    assert_non_null(strstr(e.message, "index 2 in the request"));
    assert_int_equal(engram_lookup_sync(c, "nope", bad, 2, o3, sizeof o3, NULL, NULL, &e), ENGRAM_NOT_FOUND);
    /* free while in flight */
    engram_lookup *f;
    assert_int_equal(engram_lookup_start(c, "cc", rows[0], N, out[0], sizeof out[0], &f, NULL), 0);
    engram_lookup_free(f);
    engram_client_counters k;
    engram_client_get_counters(c, &k);
    assert_true(k.subrequests >= 600);
    /* One GetTable pins the version for version_refresh_ms (1 s): one
     * resolve, or one more per second the test took (valgrind is slow). */
    assert_true(k.version_resolves >= 1);
    assert_true(k.version_resolves <= 1 + (uint64_t)((now_ms() - opened) / 1000));
    report("routed", ms, 200, c);
    engram_client_close(c);
}

/* Lookup calls replica (s, r) has served since it started, from its own
 * Admin.Stats: the client's counters are not kept per replica. */
static uint64_t lookups_served(int s, int r)
{
    engram_client *c;
    engram_error e;
    char *json;
    assert_int_equal(engram_client_open(addrs[s][r], NULL, &c, &e), ENGRAM_OK);
    if (engram_stats_json(c, &json, &e))
        fail_msg("stats of %d/%d: %s", s, r, e.message);
    engram_client_close(c);
    json_t *root = json_loads(json, 0, NULL), *rpc;
    engram_free(json);
    assert_non_null(root);
    size_t i;
    uint64_t calls = 0;
    json_array_foreach(json_object_get(root, "rpcs"), i, rpc)
        if (!strcmp(json_string_value(json_object_get(rpc, "method")), "/engram.v1.Lookup/Lookup"))
            calls = (uint64_t)json_integer_value(json_object_get(rpc, "calls"));
    json_decref(root);
    return calls;
}

#define BACKOFF_MS 200

static void test_kill_one_replica(void **state)
{
    (void)state;
    engram_client_options o;
    engram_client_options_init(&o);
    o.eject_backoff_ms = BACKOFF_MS;
    engram_client *c;
    assert_int_equal(engram_client_open(addrs[0][0], &o, &c, NULL), ENGRAM_OK);
    engram_error e;
    for (int i = 0; i < 20; i++)
        assert_int_equal(lookup_check(c, 11, NULL, &e), 0);
    double killed = now_ms();
    stop(1, 0, SIGKILL);
    /* 1.5 s of lookups while it is down: its ejections (200, 400, 800 ms)
     * end in probes that fail and eject it again for twice as long. */
    static double ms[20000];
    int done = 0;
    while (done < 300 || (now_ms() - killed < 1500 && done < 20000))
        if (lookup_check(c, 11, &ms[done++], &e))
            fail_msg("after kill: %s", e.message);
    engram_client_counters k;
    engram_client_get_counters(c, &k);
    report("kill -9 of shard 1 replica 0", ms, done, c);
    assert_true(k.retries > 0);
    assert_true(k.ejections >= 3);

    /* Back: ejection i lasts BACKOFF_MS * 2^i and starts at least
     * BACKOFF_MS * (2^i - 1) after the first, so the one running when the
     * replica returns ends within 2 * down + BACKOFF_MS (capped at 30 s);
     * the next lookup then probes it, and its success re-admits it. */
    assert_int_equal(start(1, 0), 0);
    double back = now_ms(), down = back - killed;
    assert_int_equal(lookups_served(1, 0), 0);
    double bound = 2 * down + BACKOFF_MS;
    bound = (bound < 30000 ? bound : 30000) + 1000;   /* + scheduling on a loaded host */
    uint64_t served = 0;
    int n = 0;
    while (!served && now_ms() - back < bound) {
        if (lookup_check(c, 11, NULL, &e))
            fail_msg("after restart: %s", e.message);
        n++;
        served = lookups_served(1, 0);
    }
    double readmitted = now_ms() - back;
    printf("replica 1/0 down %.0f ms; served again %.0f ms after its restart (bound %.0f ms), %d lookups\n",
           down, readmitted, bound, n);
    assert_true(served > 0);
    /* Re-admitted, not just probed: it takes its round-robin share of
     * shard 1 again (100 lookups: one sub-request each to shard 1, about
     * half to each replica) and is not ejected again. */
    engram_client_counters k2, k3;
    engram_client_get_counters(c, &k2);
    for (int i = 0; i < 100; i++)
        if (lookup_check(c, 11, NULL, &e))
            fail_msg("after re-admission: %s", e.message);
    engram_client_get_counters(c, &k3);
    uint64_t share = lookups_served(1, 0) - served;
    printf("replica 1/0 served %llu of the next 100 lookups' shard-1 sub-requests\n",
           (unsigned long long)share);
    assert_true(share >= 30 && share <= 70);
    assert_int_equal(k3.ejections, k2.ejections);
    assert_int_equal(k3.retries, k2.retries);
    engram_client_close(c);
}

/* Hedging around a stopped replica, with and without ejecting it for lost
 * hedges. Both clients are warmed up first (hedging needs latency samples).
 * A stopped replica never fails an attempt, so only lost hedges can tell:
 * without slow ejection about half the shard's sub-requests go to it first
 * and each pays the hedge delay; with it, a few losses eject it and the
 * rest go straight to the live replica (probes aside). The counts are
 * compared within this run, not against fixed figures. */
static void test_hedge_around_stopped_replica(void **state)
{
    (void)state;
    engram_client *c = connect_opts(addrs[0][0], 10000, 95);
    engram_client_options o;
    engram_client_options_init(&o);
    o.deadline_ms = 10000;
    o.hedge_percentile = 95;
    o.eject_after_hedge_losses = 0;
    engram_client *keep;
    assert_int_equal(engram_client_open(addrs[0][0], &o, &keep, NULL), ENGRAM_OK);
    engram_error e;
    double ms[300];
    for (int i = 0; i < 100; i++)
        assert_int_equal(lookup_check(c, 11, &ms[i], &e), 0);
    report("hedging warm-up", ms, 100, c);
    for (int i = 0; i < 100; i++)
        assert_int_equal(lookup_check(keep, 11, &ms[i], &e), 0);
    engram_client_counters k0, keep0;
    engram_client_get_counters(c, &k0);
    engram_client_get_counters(keep, &keep0);
    stop(2, 0, SIGSTOP);
    for (int i = 0; i < 300; i++)
        if (lookup_check(c, 11, &ms[i], &e))
            fail_msg("with a stopped replica: %s", e.message);
    engram_client_counters k, kk;
    engram_client_get_counters(c, &k);
    report("SIGSTOP of shard 2 replica 0, hedging p95, slow ejection after 5", ms, 300, c);
    for (int i = 0; i < 300; i++)
        if (lookup_check(keep, 11, &ms[i], &e))
            fail_msg("with a stopped replica, no slow ejection: %s", e.message);
    engram_client_get_counters(keep, &kk);
    report("SIGSTOP of shard 2 replica 0, hedging p95, no slow ejection", ms, 300, keep);
    assert_true(k.hedge_wins > k0.hedge_wins);
    assert_true(k.slow_ejections >= 1);
    assert_int_equal(kk.slow_ejections, 0);
    assert_true(kk.hedges - keep0.hedges > 2 * (k.hedges - k0.hedges));
    engram_client_close(keep);
    engram_client_close(c);

    /* The same without hedging: failover after the attempt timeout. */
    c = connect_opts(addrs[0][0], 10000, 0);
    for (int i = 0; i < 40; i++)
        if (lookup_check(c, 11, &ms[i], &e))
            fail_msg("with a stopped replica, no hedging: %s", e.message);
    engram_client_get_counters(c, &k);
    report("SIGSTOP of shard 2 replica 0, no hedging", ms, 40, c);
    assert_true(k.retries > 0);
    engram_client_close(c);
    test_signal(pids[2][0], SIGCONT);
}

static void test_shard_down(void **state)
{
    (void)state;
    engram_client *c = connect_opts(addrs[0][0], 2000, 0);
    engram_error e;
    assert_int_equal(lookup_check(c, 11, NULL, &e), 0);
    stop(2, 0, SIGKILL);
    stop(2, 1, SIGKILL);
    double t0 = now_ms();
    int rc = lookup_check(c, 11, NULL, &e);
    double ms = now_ms() - t0;
    printf("shard 2 killed: %s after %.1f ms: %s\n", engram_status_name(rc), ms, e.message);
    assert_int_equal(rc, ENGRAM_UNAVAILABLE);
    assert_non_null(strstr(e.message, "shard 2 of 3 ("));
    assert_non_null(strstr(e.message, addrs[2][0]));
    assert_non_null(strstr(e.message, addrs[2][1]));
    assert_true(ms < 2000);
    engram_client_close(c);

    /* Both stopped instead of dead: the deadline ends it, naming the shard. */
    assert_int_equal(start(2, 0), 0);
    assert_int_equal(start(2, 1), 0);
    c = connect_opts(addrs[0][0], 1500, 0);
    assert_int_equal(lookup_check(c, 11, NULL, &e), 0);
    stop(2, 0, SIGSTOP);
    stop(2, 1, SIGSTOP);
    t0 = now_ms();
    rc = lookup_check(c, 11, NULL, &e);
    ms = now_ms() - t0;
    printf("shard 2 stopped: %s after %.1f ms: %s\n", engram_status_name(rc), ms, e.message);
    assert_true(rc == ENGRAM_DEADLINE_EXCEEDED || rc == ENGRAM_UNAVAILABLE);
    assert_non_null(strstr(e.message, "shard 2 of 3 ("));
    assert_true(ms < 1500 + 300);

    /* Freed, and closed, while stuck on the stopped shard: both return at
     * once and the handles still free cleanly. */
    uint64_t rows[N];
    static uint8_t out[2][N * RB];
    rand_rows(rows, N);
    engram_lookup *h[2];
    for (int k = 0; k < 2; k++)
        assert_int_equal(engram_lookup_start(c, "cc", rows, N, out[k], sizeof out[k], &h[k], NULL), 0);
    usleep(20000);
    assert_int_equal(engram_lookup_poll(h[0]), 0);
    t0 = now_ms();
    engram_lookup_free(h[0]);
    engram_client_close(c);
    assert_int_equal(engram_lookup_poll(h[1]), 1);
    assert_int_equal(engram_lookup_wait(h[1], 0, &e), ENGRAM_CANCELLED);
    engram_lookup_free(h[1]);
    printf("free + close of stuck lookups: %.1f ms (%s)\n", now_ms() - t0, e.message);
    assert_true(now_ms() - t0 < 200);
    test_signal(pids[2][0], SIGCONT);
    test_signal(pids[2][1], SIGCONT);
}

static void test_repin_after_drop(void **state)
{
    (void)state;
    engram_client_options o;
    engram_client_options_init(&o);
    o.version_refresh_ms = -1;     /* never refresh: only a re-pin moves it */
    engram_client *c;
    assert_int_equal(engram_client_open(addrs[1][0], &o, &c, NULL), 0);
    engram_error e;
    assert_int_equal(lookup_check(c, 11, NULL, &e), 0);
    for (int s = 0; s < S; s++)
        for (int r = 0; r < R; r++)
            assert_int_equal(import_shard(s, r, "cc", 2, 12), 0);
    assert_int_equal(on_all(activate, "cc", 2), 0);
    assert_int_equal(lookup_check(c, 11, NULL, &e), 0);   /* still pinned to 1 */
    assert_int_equal(on_all(drop, "cc", 1), 0);
    usleep(100000);
    if (lookup_check(c, 12, NULL, &e))
        fail_msg("after the drop: %s", e.message);
    engram_client_counters k;
    engram_client_get_counters(c, &k);
    assert_int_equal(k.version_resolves, 2);
    engram_client_close(c);
}

/* The version a routed lookup of a few rows was served from (0 on error). */
static uint64_t served_version(engram_client *c)
{
    uint64_t rows[3] = {0, 1, 2}, ver = 0;
    uint8_t out[3 * RB];
    engram_error e;
    if (engram_lookup_sync(c, "cc", rows, 3, out, sizeof out, NULL, &ver, &e))
        fail_msg("lookup: %s", e.message);
    return ver;
}

/* A stale pin is refreshed in the background: the lookup that finds it
 * stale is served from the pinned version without waiting for a GetTable,
 * and a later one gets the new version. (Runs after the re-pin test: v2 is
 * active, v1 dropped; this activates v3.) */
static void test_refresh_in_background(void **state)
{
    (void)state;
    engram_client_options o;
    engram_client_options_init(&o);
    o.version_refresh_ms = 100;
    engram_client *c;
    assert_int_equal(engram_client_open(addrs[2][1], &o, &c, NULL), 0);
    assert_int_equal(served_version(c), 2);
    for (int sh = 0; sh < S; sh++)
        for (int r = 0; r < R; r++)
            assert_int_equal(import_shard(sh, r, "cc", 3, 13), 0);
    assert_int_equal(on_all(activate, "cc", 3), 0);
    engram_client_counters k0, k1;
    engram_client_get_counters(c, &k0);
    usleep(150000);                          /* the pin is stale now */
    assert_int_equal(served_version(c), 2);  /* served from it; refresh sent */
    uint64_t v = 2;
    for (int i = 0; i < 200 && v == 2; i++) {
        usleep(10000);
        v = served_version(c);
    }
    assert_int_equal(v, 3);
    engram_client_get_counters(c, &k1);
    assert_true(k1.version_resolves > k0.version_resolves);
    engram_client_close(c);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_routed_lookups),
        cmocka_unit_test(test_kill_one_replica),
        cmocka_unit_test(test_hedge_around_stopped_replica),
        cmocka_unit_test(test_shard_down),
        cmocka_unit_test(test_repin_after_drop),
        cmocka_unit_test(test_refresh_in_background),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
