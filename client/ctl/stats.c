/* stats.c: engramctl stats and log-level.
 *
 *   stats [--json] [--watch SECONDS]
 *   log-level LEVEL
 *
 * stats reads the server's Admin.Stats through engram_stats_json and
 * prints it as readable tables (or the JSON itself with --json), so the
 * command and a script see the same document. --watch repeats every
 * SECONDS until SIGINT/SIGTERM, then exits 0; on a terminal each round
 * clears the screen, elsewhere rounds are separated by a timestamped rule.
 * A failed round under --watch is printed and the watch goes on (a server
 * restarting is what one watches for); without --watch it exits 1. */
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ctl.h"

static volatile sig_atomic_t stop_watch;

static void on_stop(int sig)
{
    (void)sig;
    stop_watch = 1;
}

/* ---- reading the document ----------------------------------------------- */

static uint64_t u(const json_t *o, const char *key)
{
    const json_t *v = json_object_get(o, key);
    return json_is_integer(v) && json_integer_value(v) > 0 ? (uint64_t)json_integer_value(v) : 0;
}

static double d(const json_t *o, const char *key)
{
    return json_number_value(json_object_get(o, key));
}

static const char *s(const json_t *o, const char *key)
{
    const char *v = json_string_value(json_object_get(o, key));
    return v ? v : "";
}

/* "NOT_FOUND=2 OUT_OF_RANGE=1", or "-" for an empty StatusCount list. */
static void status_list(const json_t *arr, char *buf, size_t cap)
{
    size_t i, off = 0;
    json_t *e;
    buf[0] = 0;
    json_array_foreach(arr, i, e) {
        int n = snprintf(buf + off, cap - off, "%s%s=%llu", off ? " " : "", s(e, "code"),
                         (unsigned long long)u(e, "count"));
        if (n < 0 || (size_t)n >= cap - off)
            break;
        off += (size_t)n;
    }
    if (!off)
        snprintf(buf, cap, "-");
}

/* "max_rows=2 (INVALID_ARGUMENT) draining=1 (UNAVAILABLE)": the reasons
 * with a count, or "none". */
static void refusal_list(const json_t *arr, char *buf, size_t cap)
{
    size_t i, off = 0;
    json_t *e;
    json_array_foreach(arr, i, e) {
        if (!u(e, "count"))
            continue;
        int n = snprintf(buf + off, cap - off, "%s%s=%llu (%s)", off ? " " : "", s(e, "reason"),
                         (unsigned long long)u(e, "count"), s(e, "code"));
        if (n < 0 || (size_t)n >= cap - off)
            break;
        off += (size_t)n;
    }
    if (!off)
        snprintf(buf, cap, "none");
}

static uint64_t status_total(const json_t *arr)
{
    size_t i;
    json_t *e;
    uint64_t t = 0;
    json_array_foreach(arr, i, e)
        t += u(e, "count");
    return t;
}

/* ---- formatting ------------------------------------------------------------ */

static void fmt_duration(uint64_t ms, char *buf, size_t cap)
{
    uint64_t sec = ms / 1000, days = sec / 86400;
    if (days)
        snprintf(buf, cap, "%llud%02lluh%02llum", (unsigned long long)days,
                 (unsigned long long)(sec / 3600 % 24), (unsigned long long)(sec / 60 % 60));
    else
        snprintf(buf, cap, "%lluh%02llum%02llus", (unsigned long long)(sec / 3600),
                 (unsigned long long)(sec / 60 % 60), (unsigned long long)(sec % 60));
}

static void fmt_bytes(uint64_t b, char *buf, size_t cap)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)b;
    int i = 0;
    while (v >= 1024 && i < 4) {
        v /= 1024;
        i++;
    }
    if (i == 0)
        snprintf(buf, cap, "%llu B", (unsigned long long)b);
    else
        snprintf(buf, cap, "%.1f %s", v, units[i]);
}

/* ---- the readable view ------------------------------------------------------- */

static void print_header(const json_t *r)
{
    char up[32];
    fmt_duration(u(r, "uptime_ms"), up, sizeof up);
    printf("engram-server %s   uptime %s   in flight %llu   draining %s   shard %llu of %llu\n",
           s(r, "build_version"), up, (unsigned long long)u(r, "in_flight"),
           json_is_true(json_object_get(r, "draining")) ? "YES" : "no",
           (unsigned long long)u(r, "shard_index"), (unsigned long long)u(r, "shard_count"));
}

/* Latency columns: the last minute's p50/p99/max, and p99 since start. */
static void print_latency(const json_t *o)
{
    const json_t *w = json_object_get(o, "window"), *t = json_object_get(o, "total");
    printf(" %9.3f %9.3f %9.3f %9.3f", d(w, "p50_ms"), d(w, "p99_ms"), d(w, "max_ms"),
           d(t, "p99_ms"));
}

static void print_rpcs(const json_t *r)
{
    printf("\n%-38s %10s %8s %9s %9s %9s %9s  %s\n", "RPC", "CALLS", "ERRORS", "1m p50ms",
           "1m p99ms", "1m maxms", "p99ms", "ERRORS BY CODE");
    size_t i;
    json_t *e;
    char errs[256];
    json_array_foreach(json_object_get(r, "rpcs"), i, e) {
        const json_t *ev = json_object_get(e, "errors");
        status_list(ev, errs, sizeof errs);
        printf("%-38s %10llu %8llu", s(e, "method"), (unsigned long long)u(e, "calls"),
               (unsigned long long)status_total(ev));
        print_latency(e);
        printf("  %s\n", errs);
    }
}

static void print_tables(const json_t *r)
{
    const json_t *tables = json_object_get(r, "tables");
    if (!json_array_size(tables)) {
        printf("\ntables: no lookups yet\n");
        return;
    }
    printf("\n%-24s %9s %11s %10s %11s %9s %11s %8s %9s %9s %9s %9s  %s\n", "TABLE", "CALLS",
           "ROWS", "BYTES", "RESIDENT", "HOT", "ROCKSDB", "ERRORS", "1m p50ms", "1m p99ms",
           "1m maxms", "p99ms", "ERRORS BY CODE");
    size_t i;
    json_t *e;
    char errs[256], bytes[32];
    json_array_foreach(tables, i, e) {
        const json_t *ev = json_object_get(e, "errors");
        status_list(ev, errs, sizeof errs);
        fmt_bytes(u(e, "bytes"), bytes, sizeof bytes);
        printf("%-24s %9llu %11llu %10s %11llu %9llu %11llu %8llu", s(e, "table"),
               (unsigned long long)u(e, "calls"), (unsigned long long)u(e, "rows"), bytes,
               (unsigned long long)u(e, "rows_resident"), (unsigned long long)u(e, "rows_hot"),
               (unsigned long long)u(e, "rows_rocksdb"), (unsigned long long)status_total(ev));
        print_latency(e);
        printf("  %s\n", errs);
    }
}

/* One line: "hot cache: off", "hot cache: not made yet, budget 1.0 MiB"
 * (it is made at the first lookup served by RocksDB), or its rows and
 * counters. */
static void print_hot_cache(const json_t *h)
{
    char budget[32];
    fmt_bytes(u(h, "budget_bytes"), budget, sizeof budget);
    if (!u(h, "budget_bytes")) {
        printf("hot cache: off\n");
        return;
    }
    if (!u(h, "capacity_rows")) {
        printf("hot cache: not made yet, budget %s\n", budget);
        return;
    }
    uint64_t hits = u(h, "hits"), misses = u(h, "misses");
    printf("hot cache: %llu of %llu rows of %llu B, budget %s; %llu hits, %llu misses",
           (unsigned long long)u(h, "rows_held"), (unsigned long long)u(h, "capacity_rows"),
           (unsigned long long)u(h, "row_bytes"), budget, (unsigned long long)hits,
           (unsigned long long)misses);
    if (hits + misses)
        printf(" (%.1f%% hits)", 100.0 * (double)hits / (double)(hits + misses));
    printf("; %llu inserts, %llu evictions, %llu promotions, %llu ghost hits\n",
           (unsigned long long)u(h, "inserts"), (unsigned long long)u(h, "evictions"),
           (unsigned long long)u(h, "promotions"), (unsigned long long)u(h, "ghost_hits"));
}

static void print_process(const json_t *r)
{
    const json_t *k = json_object_get(r, "rocksdb"), *m = json_object_get(r, "memory");
    char a[32], b[32], c[32];
    fmt_bytes(u(k, "block_cache_usage"), a, sizeof a);
    fmt_bytes(u(k, "block_cache_capacity"), b, sizeof b);
    uint64_t hits = u(k, "block_cache_hits"), misses = u(k, "block_cache_misses");
    fmt_bytes(u(k, "bytes_read"), c, sizeof c);
    printf("\nrocksdb: block cache %s of %s, %llu hits, %llu misses", a, b,
           (unsigned long long)hits, (unsigned long long)misses);
    if (hits + misses)
        printf(" (%.1f%% hits)", 100.0 * (double)hits / (double)(hits + misses));
    printf("; %s read; %llu gets, %llu multigets\n", c, (unsigned long long)u(k, "get_calls"),
           (unsigned long long)u(k, "multiget_calls"));
    fmt_bytes(u(m, "allocated"), a, sizeof a);
    fmt_bytes(u(m, "resident"), b, sizeof b);
    fmt_bytes(u(m, "mapped"), c, sizeof c);
    printf("memory: allocated %s, resident %s, mapped %s", a, b, c);
    fmt_bytes(u(m, "resident_tier_bytes"), a, sizeof a);
    fmt_bytes(u(m, "resident_tier_budget"), b, sizeof b);
    printf("; resident tier %s of %s\n", a, b);
    print_hot_cache(json_object_get(r, "hot_cache"));
    char refusals[512];
    refusal_list(json_object_get(r, "refusals_by_reason"), refusals, sizeof refusals);
    printf("refusals: %s\n", refusals);
}

static int print_readable(const char *doc)
{
    json_error_t je;
    json_t *r = json_loads(doc, 0, &je);
    if (!r)
        return ctl_fail(ENGRAM_INTERNAL, "stats reply is not JSON: %s (line %d)", je.text, je.line);
    print_header(r);
    print_rpcs(r);
    print_tables(r);
    print_process(r);
    json_decref(r);
    return 0;
}

/* ---- commands ---------------------------------------------------------------- */

static int stats_once(engram_client *cl, int as_json)
{
    char *doc;
    engram_error e;
    if (engram_stats_json(cl, &doc, &e))
        return report(&e);
    int rc = 0;
    if (as_json)
        printf("%s\n", doc);
    else
        rc = print_readable(doc);
    engram_free(doc);
    fflush(stdout);
    return rc;
}

static void new_screen(int tty)
{
    if (tty) {
        fputs("\033[H\033[2J", stdout);
        return;
    }
    char ts[32];
    time_t now = time(NULL);
    struct tm tm;
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&now, &tm));
    printf("---- %s\n", ts);
}

static int stats_watch(engram_client *cl, int as_json, uint64_t seconds)
{
    struct sigaction sa = {.sa_handler = on_stop};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    int tty = isatty(STDOUT_FILENO) && !as_json;
    while (!stop_watch) {
        new_screen(tty);
        stats_once(cl, as_json);
        struct timespec ts = {(time_t)seconds, 0};
        while (!stop_watch && nanosleep(&ts, &ts) != 0)
            ;
    }
    return 0;
}

int cmd_stats(engram_client *cl, int argc, char **argv)
{
    int as_json = 0;
    uint64_t watch = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) {
            as_json = 1;
        } else if (!strcmp(argv[i], "--watch") || !strncmp(argv[i], "--watch=", 8)) {
            const char *v = argv[i][7] == '=' ? argv[i] + 8 : (i + 1 < argc ? argv[++i] : NULL);
            if (!v)
                return die_usage("stats: --watch needs SECONDS");
            if (parse_u64(v, "--watch", &watch))
                return EXIT_USAGE;
            if (watch < 1 || watch > 86400)
                return die_usage("stats: --watch %llu is outside 1..86400 seconds",
                                 (unsigned long long)watch);
        } else {
            return die_usage("stats: unexpected argument '%s' (want --json, --watch SECONDS)",
                             argv[i]);
        }
    }
    return watch ? stats_watch(cl, as_json, watch) : stats_once(cl, as_json);
}

int cmd_log_level(engram_client *cl, int argc, char **argv)
{
    if (argc != 1)
        return die_usage("log-level: want exactly one LEVEL (debug, info, warn, error), got %d "
                         "arguments", argc);
    char previous[32];
    engram_error e;
    if (engram_set_log_level(cl, argv[0], previous, sizeof previous, &e))
        return report(&e);
    printf("log level: %s -> %s\n", previous, argv[0]);
    return 0;
}
