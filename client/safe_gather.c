/* safe_gather.c: row gathers that survive a shortened mapping (see
 * safe_gather.h).
 *
 * The guard is per thread: `guard` points at the sigjmp_buf of the gather
 * running on this thread, [guard_lo, guard_hi) at the mapping it reads.
 * The handler runs on the faulting thread (SIGBUS from a memory access is
 * synchronous), so it reads that thread's guard with no locking. Both are
 * volatile sig_atomic-style stores, set before the copy and cleared after,
 * so a handler never sees a half-set guard.
 *
 * sigsetjmp is called with savemask 0 (no sigprocmask system call per
 * gather), so the handler is installed with SA_NODEFER: otherwise SIGBUS
 * would stay blocked after the jump, and the next fault would kill. */
#include "safe_gather.h"

#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <string.h>

/* The handler that was there before ours, in one of two slots: a
 * re-install (below) writes the other slot, then flips `slot`, so a
 * handler running meanwhile reads a whole one. */
static struct sigaction previous[2];
static volatile sig_atomic_t slot;
static int installed;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static pthread_mutex_t reinstall_mu = PTHREAD_MUTEX_INITIALIZER;

/* initial-exec: the general-dynamic model of PIC code would reach them
 * through __tls_get_addr, making every program linked with libengram
 * need ld-linux by name (and it is not async-signal-safe on first use);
 * 24 bytes fit the static TLS that glibc keeps for libraries loaded
 * later, such as the Python extension's. */
#define TLS_IE __attribute__((tls_model("initial-exec")))
static __thread TLS_IE sigjmp_buf *volatile guard;
static __thread TLS_IE const uint8_t *volatile guard_lo, *volatile guard_hi;

static void on_sigbus(int sig, siginfo_t *si, void *ctx)
{
    const uint8_t *a = si ? (const uint8_t *)si->si_addr : NULL;
    sigjmp_buf *g = guard;
    if (g && a >= guard_lo && a < guard_hi) {
        guard = NULL;
        siglongjmp(*g, 1);
    }
    /* Not ours: what would have happened without us. */
    const struct sigaction *prev = &previous[slot];
    if (prev->sa_flags & SA_SIGINFO) {
        prev->sa_sigaction(sig, si, ctx);
    } else if (prev->sa_handler == SIG_IGN) {
        return;   /* the fault repeats; ignoring it was the owner's choice */
    } else if (prev->sa_handler != SIG_DFL) {
        prev->sa_handler(sig);
    } else {
        /* Back to the default action: returning re-runs the faulting
         * access, which now ends the process with SIGBUS as before. */
        signal(SIGBUS, SIG_DFL);
    }
}

static struct sigaction ours(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    return sa;
}

static void install(void)
{
    struct sigaction sa = ours();
    installed = sigaction(SIGBUS, &sa, &previous[0]) == 0;
}

/* Ours must be the handler while a copy runs. A program (or a test
 * framework, or Python's faulthandler) may install its own SIGBUS handler
 * after the library installed its: then ours goes back on top, chained to
 * that one. One rt_sigaction query per guarded copy (well under a
 * microsecond, against the tens of microseconds of a copy worth guarding)
 * is the price of never letting a fault of ours reach a handler that
 * cannot know what to do with it. 0, or -1. */
static int ensure_ours(void)
{
    struct sigaction now;
    if (sigaction(SIGBUS, NULL, &now) != 0)
        return -1;
    if ((now.sa_flags & SA_SIGINFO) && now.sa_sigaction == on_sigbus)
        return 0;
    pthread_mutex_lock(&reinstall_mu);
    int rc = 0;
    if (sigaction(SIGBUS, NULL, &now) != 0) {
        rc = -1;
    } else if (!((now.sa_flags & SA_SIGINFO) && now.sa_sigaction == on_sigbus)) {
        int other = !slot;
        previous[other] = now;
        slot = other;
        struct sigaction sa = ours();
        rc = sigaction(SIGBUS, &sa, NULL) == 0 ? 0 : -1;
    }
    pthread_mutex_unlock(&reinstall_mu);
    return rc;
}

int safe_gather_setup(void)
{
    pthread_once(&once, install);
    return installed ? 0 : -1;
}

int safe_run(const uint8_t *base, size_t len, void (*fn)(void *ctx), void *ctx)
{
    if (!installed || ensure_ours() != 0)
        return -1;
    sigjmp_buf jb;
    guard_lo = base;
    guard_hi = base + len;
    if (sigsetjmp(jb, 0)) {
        guard_lo = guard_hi = NULL;
        return -1;
    }
    guard = &jb;
    fn(ctx);
    guard = NULL;
    guard_lo = guard_hi = NULL;
    return 0;
}

typedef struct gather {
    const uint8_t *base;
    const uint64_t *rows;
    size_t n, row_bytes;
    const uint32_t *at;
    uint8_t *out;
} gather;

static void gather_rows(void *ctx)
{
    const gather *g = ctx;
    for (size_t i = 0; i < g->n; i++) {
        if (i + SAFE_GATHER_AHEAD < g->n)
            safe_gather_prefetch(g->base + g->rows[i + SAFE_GATHER_AHEAD] * g->row_bytes,
                                 g->row_bytes);
        uint8_t *dst = g->out + (g->at ? (size_t)g->at[i] : i) * g->row_bytes;
        memcpy(dst, g->base + g->rows[i] * g->row_bytes, g->row_bytes);
    }
}

int safe_gather(const uint8_t *base, size_t len, const uint64_t *rows, size_t n,
                size_t row_bytes, const uint32_t *at, uint8_t *out)
{
    gather g = {.base = base, .rows = rows, .n = n, .row_bytes = row_bytes, .at = at, .out = out};
    return safe_run(base, len, gather_rows, &g);
}
