/* hooks.c: the lists of admission checks and completion observers (see
 * hooks.h), and the refusal counters. Fixed arrays: the set is decided at
 * start-up and read-only afterwards, so the call path takes no lock.
 *
 * A refusal is counted once, by reason. Stats' `refusals` (admission
 * refusals by status code) is a view of the admission reasons' counts,
 * each of which has its own code, not a second counter.
 *
 * An admission refusal's reason is read from its status code: each check
 * answers with its own code (security.c: UNAUTHENTICATED, PERMISSION_DENIED,
 * RESOURCE_EXHAUSTED for --max-calls; drain.c: UNAVAILABLE), so the code
 * names the reason without widening the admit_fn signature.
 *
 * The default deadline: a call that arrives without a deadline and leaves
 * admission with one was given --default-deadline-ms (security.c). Such a
 * call is remembered in `marked`, a direct-mapped table of call pointers
 * (one relaxed load per call when nothing is marked), so that its end can
 * tell whether the server's deadline, not the client's, cut it off. Two
 * deadline-less calls in flight at once that map to the same slot leave the
 * second unmarked: a possible undercount, never a false count. */
#include "hooks.h"

#include <stdint.h>

#include "metric.h"
#include "status.h"

#define MAX_HOOKS 8
#define MARK_SLOTS 4096

static admit_fn admits[MAX_HOOKS];
static done_fn dones[MAX_HOOKS];
static int nadmits, ndones;
static uint64_t by_reason[REFUSAL_REASONS];
static server_call *marked[MARK_SLOTS];

static const struct {
    const char *name;
    int code;
} reasons[REFUSAL_REASONS] = {
    [REFUSAL_UNAUTHENTICATED] = {"unauthenticated", ES_UNAUTHENTICATED},
    [REFUSAL_PERMISSION_DENIED] = {"permission_denied", ES_PERMISSION_DENIED},
    [REFUSAL_DRAINING] = {"draining", ES_UNAVAILABLE},
    [REFUSAL_MAX_CALLS] = {"max_calls", ES_RESOURCE_EXHAUSTED},
    [REFUSAL_MAX_ROWS] = {"max_rows", ES_INVALID_ARGUMENT},
    [REFUSAL_MAX_IMPORT_BYTES] = {"max_import_bytes", ES_RESOURCE_EXHAUSTED},
    [REFUSAL_DEFAULT_DEADLINE] = {"default_deadline", ES_DEADLINE_EXCEEDED},
    [REFUSAL_REPLY_BYTES] = {"reply_bytes", ES_RESOURCE_EXHAUSTED},
    [REFUSAL_REPLY_BYTES_PER_CONN] = {"reply_bytes_per_conn", ES_RESOURCE_EXHAUSTED},
};

/* The admission reasons, in the order their codes are looked up. */
static const refusal_reason admission_reasons[] = {
    REFUSAL_UNAUTHENTICATED, REFUSAL_PERMISSION_DENIED, REFUSAL_DRAINING, REFUSAL_MAX_CALLS,
};

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

void hooks_refused(refusal_reason r)
{
    if ((unsigned)r < REFUSAL_REASONS)
        __atomic_add_fetch(&by_reason[r], 1, __ATOMIC_RELAXED);
}

static void count_admission(int code)
{
    for (size_t i = 0; i < sizeof admission_reasons / sizeof admission_reasons[0]; i++)
        if (reasons[admission_reasons[i]].code == code) {
            hooks_refused(admission_reasons[i]);
            return;
        }
}

/* ---- the default-deadline marks ---------------------------------------------- */

static size_t mark_slot(const server_call *c)
{
    uintptr_t p = (uintptr_t)c;
    return (size_t)((p >> 4) ^ (p >> 16)) % MARK_SLOTS;
}

/* gpr_inf_future's tv_sec, whatever the clock. */
static int no_deadline(const server_call *c)
{
    return c->deadline.tv_sec == INT64_MAX;
}

/* Removes c's mark; returns whether there was one. */
static int unmark(server_call *c)
{
    server_call **slot = &marked[mark_slot(c)];
    server_call *expect = c;
    return __atomic_load_n(slot, __ATOMIC_RELAXED) == c &&
           __atomic_compare_exchange_n(slot, &expect, NULL, 0, __ATOMIC_RELAXED,
                                       __ATOMIC_RELAXED);
}

static void mark(server_call *c)
{
    server_call *expect = NULL;
    __atomic_compare_exchange_n(&marked[mark_slot(c)], &expect, c, 0, __ATOMIC_RELAXED,
                                __ATOMIC_RELAXED);
}

/* ---- the hooks the core calls ------------------------------------------------- */

static int admit_all(server_call *c, const method_def *m, char *msg, size_t msglen)
{
    unmark(c);   /* a stale mark of a freed call at the same address */
    int had_none = no_deadline(c);
    for (int i = 0; i < nadmits; i++) {
        int code = admits[i](c, m, msg, msglen);
        if (code != ES_OK) {
            count_admission(code);
            return code;
        }
    }
    if (had_none && !no_deadline(c))
        mark(c);
    return ES_OK;
}

static void done_all(server_call *c, const method_def *m, int code, uint64_t duration_ns)
{
    if (unmark(c) && code == ES_DEADLINE_EXCEEDED)
        hooks_refused(REFUSAL_DEFAULT_DEADLINE);
    for (int i = 0; i < ndones; i++)
        dones[i](c, m, code, duration_ns);
}

const server_hooks *hooks_get(void)
{
    static const server_hooks h = {admit_all, done_all};
    return &h;
}

/* ---- metrics ------------------------------------------------------------------ */

/* Every reason, 0 included, so a dashboard sees the series before the
 * first refusal. */
static void collect_reasons(const metric_family *f, metric_sink *s)
{
    for (int r = 0; r < REFUSAL_REASONS; r++) {
        metric_label l[2] = {{"reason", reasons[r].name}, {"code", es_code_name(reasons[r].code)}};
        metric_sample x = {.labels = l, .nlabels = 2,
                           .value = __atomic_load_n(&by_reason[r], __ATOMIC_RELAXED)};
        s->sample(s, f, &x);
    }
}

/* The admission reasons by code, in code order (Stats only). */
static void collect_admission(const metric_family *f, metric_sink *s)
{
    for (int code = 1; code < 17; code++)
        for (size_t i = 0; i < sizeof admission_reasons / sizeof admission_reasons[0]; i++) {
            refusal_reason r = admission_reasons[i];
            if (reasons[r].code != code)
                continue;
            metric_label l = {"code", es_code_name(code)};
            metric_sample x = {.labels = &l, .nlabels = 1,
                               .value = __atomic_load_n(&by_reason[r], __ATOMIC_RELAXED)};
            s->sample(s, f, &x);
        }
}

static const metric_family refusal_families[] = {
    {"engram_refusals_total", METRIC_COUNTER,
     "Calls refused, by reason and the status they got (every reason, 0 included).",
     {"refusals_by_reason[reason=$reason].count"}, 0, collect_reasons},
    {NULL, METRIC_COUNTER, "Calls refused at admission, by status code.",
     {"?refusals[code=$code].count"}, 0, collect_admission},
};

void hooks_setup(void)
{
    for (size_t i = 0; i < sizeof refusal_families / sizeof refusal_families[0]; i++)
        metric_register_family(&refusal_families[i]);
}

void hooks_teardown(void)
{
    for (size_t i = 0; i < sizeof refusal_families / sizeof refusal_families[0]; i++)
        metric_deregister(&refusal_families[i]);
    nadmits = ndones = 0;
}
