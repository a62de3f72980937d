/* hooks.h: the per-call hooks of the server core, composed from modules.
 *
 * Modules register admission checks (drain, auth, limits) and completion
 * observers (stats, metrics) at setup; the core calls hooks_admit before a
 * handler runs and hooks_done when a call ends. Checks run in registration
 * order and the first refusal answers the call, so the cheapest and most
 * fundamental checks (authentication) go first.
 *
 * Refusals are also counted here by reason, for Stats and /metrics: the
 * admission ones by hooks_admit itself, the others (--max-rows,
 * --max-import-bytes, the reply caps) by the module that refuses, through
 * hooks_refused. */
#ifndef ENGRAM_SERVER_HOOKS_H
#define ENGRAM_SERVER_HOOKS_H

#include "server.h"

typedef int (*admit_fn)(server_call *c, const method_def *m, char *msg, size_t msglen);
typedef void (*done_fn)(server_call *c, const method_def *m, int code, uint64_t duration_ns);

/* Registration happens before server_setup, from one thread. */
void hooks_add_admit(admit_fn fn);
void hooks_add_done(done_fn fn);
void hooks_reset(void);

/* Calls refused at admission, by status code (counted here, for Stats). */
uint64_t hooks_refusals(int code);

/* Why a call was refused, each with the one status such a call gets.
 * --max-calls-per-conn has no reason: it is HTTP/2's
 * SETTINGS_MAX_CONCURRENT_STREAMS, enforced by the transports (a client
 * queues its extra streams, the server resets a stream over the limit
 * before any call exists), so the server never sees a refusal to count. */
typedef enum refusal_reason {
    REFUSAL_UNAUTHENTICATED,    /* admin call, no or wrong token (UNAUTHENTICATED) */
    REFUSAL_PERMISSION_DENIED,  /* certificate not on --admin-names (PERMISSION_DENIED) */
    REFUSAL_DRAINING,           /* data-plane call while draining (UNAVAILABLE) */
    REFUSAL_MAX_CALLS,          /* --max-calls (RESOURCE_EXHAUSTED) */
    REFUSAL_MAX_ROWS,           /* --max-rows, in lookup.c (INVALID_ARGUMENT) */
    REFUSAL_MAX_IMPORT_BYTES,   /* --max-import-bytes, in import.c (RESOURCE_EXHAUSTED) */
    /* A call that arrived without a deadline, was given --default-deadline-ms
     * and ended DEADLINE_EXCEEDED: the server, not the client, cut it off. */
    REFUSAL_DEFAULT_DEADLINE,
    /* Replies held for clients that have not read them, in reply_budget.c
     * (RESOURCE_EXHAUSTED): --max-reply-bytes, --max-reply-bytes-per-conn. */
    REFUSAL_REPLY_BYTES,
    REFUSAL_REPLY_BYTES_PER_CONN,
    REFUSAL_REASONS
} refusal_reason;

/* Counts one refusal. Thread-safe (a relaxed atomic add). */
void hooks_refused(refusal_reason r);
uint64_t hooks_refusals_by_reason(refusal_reason r);
/* "max_rows", ...: the label Stats and /metrics show. */
const char *hooks_refusal_name(refusal_reason r);
/* The status code a call refused for r gets. */
int hooks_refusal_code(refusal_reason r);

/* The server_hooks to pass to server_setup. */
const server_hooks *hooks_get(void);

#endif
