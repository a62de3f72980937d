/* hooks.c: the lists of admission checks and completion observers (see
 * hooks.h). Fixed arrays: the set is decided at start-up and read-only
 * afterwards, so the call path takes no lock. */
#include "hooks.h"

#include <stdint.h>

#include "status.h"

#define MAX_HOOKS 8

static admit_fn admits[MAX_HOOKS];
static done_fn dones[MAX_HOOKS];
static int nadmits, ndones;
static uint64_t refused[17];

void hooks_add_admit(admit_fn fn)
{
    if (nadmits < MAX_HOOKS)
        admits[nadmits++] = fn;
}

void hooks_add_done(done_fn fn)
{
    if (ndones < MAX_HOOKS)
        dones[ndones++] = fn;
}

void hooks_reset(void)
{
    nadmits = ndones = 0;
}

static int admit_all(server_call *c, const method_def *m, char *msg, size_t msglen)
{
    for (int i = 0; i < nadmits; i++) {
        int code = admits[i](c, m, msg, msglen);
        if (code != ES_OK) {
            if (code > 0 && code < 17)
                __atomic_add_fetch(&refused[code], 1, __ATOMIC_RELAXED);
            return code;
        }
    }
    return ES_OK;
}

static void done_all(server_call *c, const method_def *m, int code, uint64_t duration_ns)
{
    for (int i = 0; i < ndones; i++)
        dones[i](c, m, code, duration_ns);
}

uint64_t hooks_refusals(int code)
{
    return code > 0 && code < 17 ? __atomic_load_n(&refused[code], __ATOMIC_RELAXED) : 0;
}

const server_hooks *hooks_get(void)
{
    static const server_hooks h = {admit_all, done_all};
    return &h;
}
