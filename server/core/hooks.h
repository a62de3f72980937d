/* hooks.h: the per-call hooks of the server core, composed from modules.
 *
 * Modules register admission checks (drain, auth, limits) and completion
 * observers (stats, metrics) at setup; the core calls hooks_admit before a
 * handler runs and hooks_done when a call ends. Checks run in registration
 * order and the first refusal answers the call, so the cheapest and most
 * fundamental checks (authentication) go first.
 *
 * Refusals are also counted here, once each, by reason: the admission ones
 * by hooks_admit itself, the others (--max-rows, --max-import-bytes, the
 * reply caps) by the module that refuses, through hooks_refused. The
 * counts are the registry's engram_refusals_total family (hooks_setup). */
#ifndef ENGRAM_SERVER_HOOKS_H
#define ENGRAM_SERVER_HOOKS_H

#include "server.h"

typedef int (*admit_fn)(server_call *c, const method_def *m, char *msg, size_t msglen);
typedef void (*done_fn)(server_call *c, const method_def *m, int code, uint64_t duration_ns);

/* Registration happens before server_setup, from one thread. */
void hooks_add_admit(admit_fn fn);
void hooks_add_done(done_fn fn);

/* Registers the refusal counts with the metrics registry; teardown
 * deregisters them and forgets every hook. */
void hooks_setup(void);
void hooks_teardown(void);

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

/* The server_hooks to pass to server_setup. */
const server_hooks *hooks_get(void);

#endif
