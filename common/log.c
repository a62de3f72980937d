/* log.c: key=value event lines (see log.h). The level is an atomic so a
 * later SetLogLevel can change it while threads log. */
#include "log.h"

#include <stdarg.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

static FILE *log_out;
static int log_min = LOG_INFO;
static const char *const level_names[] = {"debug", "info", "warn", "error"};

void log_setup(FILE *out, log_level min)
{
    log_out = out;
    __atomic_store_n(&log_min, (int)min, __ATOMIC_RELAXED);
}

void log_set_level(log_level min)
{
    __atomic_store_n(&log_min, (int)min, __ATOMIC_RELAXED);
}

int log_level_parse(const char *name)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(name, level_names[i]) == 0)
            return i;
    return -1;
}

log_level log_get_level(void)
{
    return (log_level)__atomic_load_n(&log_min, __ATOMIC_RELAXED);
}

const char *log_level_name(log_level lvl)
{
    return (unsigned)lvl < 4 ? level_names[lvl] : "unknown";
}

int log_enabled(log_level lvl)
{
    return (int)lvl >= __atomic_load_n(&log_min, __ATOMIC_RELAXED);
}

void log_event(log_level lvl, const char *event, const char *fmt, ...)
{
    if (!log_enabled(lvl))
        return;
    char line[1024];
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    int n = snprintf(line, sizeof line,
                     "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03dZ level=%s event=%s",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                     tm.tm_min, tm.tm_sec, (int)(tv.tv_usec / 1000),
                     level_names[lvl], event);
    if (fmt && *fmt && n < (int)sizeof line - 2) {
        line[n++] = ' ';
        va_list ap;
        va_start(ap, fmt);
        int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
        va_end(ap);
        n = m < 0 ? n : (n + m > (int)sizeof line - 2 ? (int)sizeof line - 2 : n + m);
    }
    line[n++] = '\n';
    fwrite(line, 1, (size_t)n, log_out ? log_out : stderr);
    fflush(log_out ? log_out : stderr);
}

int log_allow(uint64_t *slot, uint64_t interval_ns)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t now = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    uint64_t last = __atomic_load_n(slot, __ATOMIC_RELAXED);
    if (last && now - last < interval_ns)
        return 0;
    /* one thread wins the slot; the others stay quiet */
    return __atomic_compare_exchange_n(slot, &last, now, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
}
