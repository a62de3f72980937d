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

static struct sigaction previous;
static int installed;
static pthread_once_t once = PTHREAD_ONCE_INIT;

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
    if (previous.sa_flags & SA_SIGINFO) {
        previous.sa_sigaction(sig, si, ctx);
    } else if (previous.sa_handler == SIG_IGN) {
        return;   /* the fault repeats; ignoring it was the owner's choice */
    } else if (previous.sa_handler != SIG_DFL) {
        previous.sa_handler(sig);
    } else {
        /* Back to the default action: returning re-runs the faulting
         * access, which now ends the process with SIGBUS as before. */
        signal(SIGBUS, SIG_DFL);
    }
}

static void install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    installed = sigaction(SIGBUS, &sa, &previous) == 0;
}

int safe_gather_setup(void)
{
    pthread_once(&once, install);
    return installed ? 0 : -1;
}

int safe_run(const uint8_t *base, size_t len, void (*fn)(void *ctx), void *ctx)
{
    if (!installed)
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
