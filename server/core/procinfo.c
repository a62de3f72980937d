/* procinfo.c: the build, uptime and memory figures (see procinfo.h).
 *
 * jemalloc's figures are read at collection (the refresh function), after
 * writing its "epoch", which is what makes it take a fresh snapshot. */
#include "procinfo.h"

#include <stddef.h>
#include <stdint.h>

#include "grpc_util.h"
#include "metric.h"

/* jemalloc's control interface; weak so a sanitizer build (no jemalloc)
 * links and reports 0. */
int mallctl(const char *name, void *oldp, size_t *oldlenp, void *newp, size_t newlen)
    __attribute__((weak));

#define PROCINFO_METRIC(ACTION)                                                    \
    ACTION(allocated, METRIC_GAUGE, "engram_memory_allocated_bytes", "memory.allocated", \
           "jemalloc stats.allocated (0 without jemalloc).")                        \
    ACTION(resident, METRIC_GAUGE, "engram_memory_resident_bytes", "memory.resident", \
           "jemalloc stats.resident (0 without jemalloc).")                         \
    ACTION(mapped, METRIC_GAUGE, "engram_memory_mapped_bytes", "memory.mapped",     \
           "jemalloc stats.mapped (0 without jemalloc).")

typedef struct procinfo_metrics {
    PROCINFO_METRIC(METRIC_DECLARE)
} procinfo_metrics;

static procinfo_metrics M = {PROCINFO_METRIC(METRIC_INIT)};
static uint64_t start_ns;

static uint64_t mallctl_u64(const char *name)
{
    size_t v = 0, len = sizeof v;
    return mallctl(name, &v, &len, NULL, 0) == 0 ? (uint64_t)v : 0;
}

static void refresh(void *arg)
{
    (void)arg;
    if (!mallctl)
        return;
    uint64_t epoch = 1;
    size_t len = sizeof epoch;
    mallctl("epoch", &epoch, &len, &epoch, len);
    METRIC_SET(&M, allocated, mallctl_u64("stats.allocated"));
    METRIC_SET(&M, resident, mallctl_u64("stats.resident"));
    METRIC_SET(&M, mapped, mallctl_u64("stats.mapped"));
}

static void collect_build(const metric_family *f, metric_sink *s)
{
    metric_label l = {"version", ENGRAM_VERSION};
    metric_sample x = {.labels = &l, .nlabels = 1, .value = 1};
    s->sample(s, f, &x);
}

static void collect_uptime(const metric_family *f, metric_sink *s)
{
    metric_sample x = {.value = (now_ns() - start_ns) / 1000000};
    s->sample(s, f, &x);
}

static const metric_family build = {"engram_build_info", METRIC_GAUGE,
                                    "The running build; always 1.",
                                    {"build_version=$version"}, 0, collect_build};
/* Kept in ms for Stats' uptime_ms, shown in seconds to Prometheus. */
static const metric_family uptime = {"engram_uptime_seconds", METRIC_GAUGE,
                                     "Seconds since the server started.",
                                     {"uptime_ms"}, 0.001, collect_uptime};

void procinfo_setup(void)
{
    start_ns = now_ns();
    metric_register_family(&build);
    metric_register_family(&uptime);
    metric_register((metric *)&M, METRIC_CARDINALITY(M), refresh, NULL);
}

void procinfo_teardown(void)
{
    metric_deregister(&build);
    metric_deregister(&uptime);
    metric_deregister(&M);
}
