/* log.h: one line per event, key=value, to stderr or a file.
 *
 *   ts=2026-11-28T23:40:01.123Z level=info event=import_done table=demo ...
 *
 * Callers pass the event name and a printf format for the remaining
 * key=value pairs. Thread-safe: each line is written with one fwrite. */
#ifndef ENGRAM_COMMON_LOG_H
#define ENGRAM_COMMON_LOG_H

#include <stdint.h>
#include <stdio.h>

typedef enum { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR } log_level;

void log_setup(FILE *out, log_level min);
void log_set_level(log_level min);
int log_level_parse(const char *name); /* -1 when unknown */
log_level log_get_level(void);         /* the lowest level let through */
const char *log_level_name(log_level lvl); /* "debug", "info", "warn", "error" */
int log_enabled(log_level lvl);
void log_event(log_level lvl, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Rate limit for events on hot paths: returns 1 at most once per
 * interval_ns for the given slot (a static uint64_t per call site), so a
 * storm of identical errors costs one line per interval, not one per call. */
int log_allow(uint64_t *slot, uint64_t interval_ns);

#define log_info(ev, ...) log_event(LOG_INFO, ev, __VA_ARGS__)
#define log_warn(ev, ...) log_event(LOG_WARN, ev, __VA_ARGS__)
#define log_error(ev, ...) log_event(LOG_ERROR, ev, __VA_ARGS__)
#define log_debug(ev, ...) log_event(LOG_DEBUG, ev, __VA_ARGS__)

#endif
