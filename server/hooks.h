/* hooks.h: the per-call hooks of the server core, composed from modules.
 *
 * Modules register admission checks (drain, auth, limits) and completion
 * observers (stats, metrics) at setup; the core calls hooks_admit before a
 * handler runs and hooks_done when a call ends. Checks run in registration
 * order and the first refusal answers the call, so the cheapest and most
 * fundamental checks (authentication) go first. */
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

/* The server_hooks to pass to server_setup. */
const server_hooks *hooks_get(void);

#endif
