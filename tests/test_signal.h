/* test_signal.h: the one way a test signals a process it started.
 *
 * kill(2) reads a pid of 0 as "every process in my process group" and -1
 * as "every process I may signal". A test runs in ctest's process group,
 * and ctest in that of scripts/test.sh. A test whose setup failed before
 * its server started holds pid 0 (a static test_server never filled in);
 * a failed fork() returns -1. Sending SIGTERM to such a pid once killed
 * ctest and test.sh themselves when a fresh clone lacked the test data
 * (issue 12): the run ended with no summary and no exit status.
 *
 * So a pid <= 0 is refused here: nothing is sent, stderr says so, and -1
 * with errno ESRCH comes back, which the caller's check turns into a
 * failed test. Every test and the integration harness signal through
 * test_signal, never kill() directly. It is async-signal-safe (kill and
 * write only), so a watchdog's signal handler may use it too. */
#ifndef ENGRAM_TEST_SIGNAL_H
#define ENGRAM_TEST_SIGNAL_H

#include <errno.h>
#include <signal.h>
#include <sys/types.h>
#include <unistd.h>

static inline int test_signal(pid_t pid, int sig)
{
    if (pid <= 0) {
        static const char msg[] = "test_signal: refused: no process was started (pid <= 0); "
                                  "kill() would signal the whole process group\n";
        if (write(2, msg, sizeof msg - 1) < 0) {
            /* nothing else to tell: the -1 below still fails the caller */
        }
        errno = ESRCH;
        return -1;
    }
    return kill(pid, sig);
}

#endif
