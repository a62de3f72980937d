/* test_safe_gather.c: client/safe_gather.c against a real file mapping
 * that is shortened under it (ftruncate, as a careless operator would),
 * and the faults it must not swallow. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "safe_gather.h"

#define RB 64
#define ROWS 4096                      /* 256 KiB: 64 pages */

static char path[256];
static const char *self;               /* this program, re-run for the fault tests */
static int fd = -1;
static uint8_t *map;
static size_t len = (size_t)ROWS * RB;

static uint8_t pattern(uint64_t r, size_t b)
{
    return (uint8_t)(r * 131 + b * 7 + 1);
}

/* A fresh file of ROWS rows, mapped shared, as a server publishes them. */
static int setup(void **state)
{
    (void)state;
    const char *dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(path, sizeof path, "%s/test_safe_gather.XXXXXX", dir);
    fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)len), 0);
    map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    assert_true(map != MAP_FAILED);
    for (uint64_t r = 0; r < ROWS; r++)
        for (size_t b = 0; b < RB; b++)
            map[r * RB + b] = pattern(r, b);
    assert_int_equal(safe_gather_setup(), 0);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    munmap(map, len);
    close(fd);
    unlink(path);
    return 0;
}

static void check_rows(const uint8_t *out, const uint64_t *rows, const uint32_t *at, size_t n)
{
    for (size_t i = 0; i < n; i++)
        for (size_t b = 0; b < RB; b++)
            assert_int_equal(out[(at ? at[i] : i) * RB + b], pattern(rows[i], b));
}

static void test_gather(void **state)
{
    (void)state;
    uint64_t rows[300];
    for (size_t i = 0; i < 300; i++)
        rows[i] = (i * 2654435761u) % ROWS;
    uint8_t out[300 * RB];
    assert_int_equal(safe_gather(map, len, rows, 300, RB, NULL, out), 0);
    check_rows(out, rows, NULL, 300);
    /* scattered: row i lands at slot at[i] */
    uint32_t at[300];
    for (size_t i = 0; i < 300; i++)
        at[i] = (uint32_t)(299 - i);
    memset(out, 0, sizeof out);
    assert_int_equal(safe_gather(map, len, rows, 300, RB, at, out), 0);
    check_rows(out, rows, at, 300);
    assert_int_equal(safe_gather(map, len, rows, 0, RB, NULL, out), 0);
}

/* The fault tests run in a fresh process (this program re-run with a
 * mode): cmocka puts its own SIGBUS handler around every test, and a
 * process's first safe_gather_setup decides what ours chains to. */
static int run_mode(const char *mode)
{
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* argv[0], not /proc/self/exe: under valgrind that is the tool */
        execl(self, self, mode, path, (char *)NULL);
        _exit(127);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_int_equal(ftruncate(fd, (off_t)len), 0);   /* whatever the child did */
    for (uint64_t r = 0; r < ROWS; r++)
        for (size_t b = 0; b < RB; b++)
            map[r * RB + b] = pattern(r, b);
    return st;
}

/* file mapped read-only, as a client maps it, then shortened to one page
 * under the mapping; *f is its descriptor. NULL when any step failed. */
static const uint8_t *map_shortened(const char *file, int *f)
{
    *f = open(file, O_RDWR);
    uint8_t *m = *f < 0 ? MAP_FAILED : mmap(NULL, len, PROT_READ, MAP_SHARED, *f, 0);
    return m == MAP_FAILED || ftruncate(*f, 4096) != 0 ? NULL : m;
}

/* The file shortened to one page: rows in it still read, a row past it
 * returns -1 (no SIGBUS reaches us), again and again on one thread; grown
 * back, the rows past the page read as zeros. Exits 0 when all held. */
static int shortened_child(const char *file)
{
    if (safe_gather_setup() != 0)
        return 2;
    int f;
    const uint8_t *m = map_shortened(file, &f);
    if (!m)
        return 3;
    uint64_t ok[3] = {0, 5, 4096 / RB - 1}, past[3] = {1, ROWS - 1, 2};
    uint8_t out[3 * RB];
    for (int round = 0; round < 3; round++) {
        if (safe_gather(m, len, ok, 3, RB, NULL, out) != 0)
            return 4;
        for (size_t i = 0; i < 3; i++)
            for (size_t b = 0; b < RB; b++)
                if (out[i * RB + b] != pattern(ok[i], b))
                    return 5;
        if (safe_gather(m, len, past, 3, RB, NULL, out) != -1)
            return 6;
        for (size_t b = 0; b < RB; b++)   /* the row before the fault */
            if (out[b] != pattern(past[0], b))
                return 7;
    }
    if (ftruncate(f, (off_t)len) != 0 || safe_gather(m, len, past, 3, RB, NULL, out) != 0)
        return 8;
    for (size_t b = 0; b < RB; b++)
        if (out[RB + b] != 0)
            return 9;
    return 0;
}

/* A fault outside any gather: the default action, as without us. */
static int outside_child(const char *file)
{
    if (safe_gather_setup() != 0)
        return 2;
    int f;
    const uint8_t *m = map_shortened(file, &f);
    if (!m)
        return 3;
    volatile uint8_t v = m[len - 1];
    (void)v;
    return 4;   /* not reached */
}

static sigjmp_buf owner_jb;

static void owner_handler(int sig)
{
    (void)sig;
    siglongjmp(owner_jb, 1);
}

/* A program's own SIGBUS handler, installed before libengram's
 * (owner_first) or after it (a test framework's, Python's faulthandler:
 * libengram's next gather puts its own back on top, chained to the
 * newcomer), still gets the faults that are not libengram's, and
 * libengram's gathers still get theirs. Exits 7 when both held. */
static int owner_child(const char *file, int owner_first)
{
    if (owner_first)
        signal(SIGBUS, owner_handler);
    if (safe_gather_setup() != 0)
        return 2;
    if (!owner_first)
        signal(SIGBUS, owner_handler);
    int f;
    const uint8_t *m = map_shortened(file, &f);
    if (!m)
        return 3;
    uint64_t past = ROWS - 1;
    uint8_t out[RB];
    if (safe_gather(m, len, &past, 1, RB, NULL, out) != -1)
        return 4;
    if (sigsetjmp(owner_jb, 1) == 0) {
        volatile uint8_t v = m[len - 1];
        (void)v;
        return 5;
    }
    return 7;
}

static void test_shortened(void **state)
{
    (void)state;
    int st = run_mode("shortened");
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

static void test_other_faults(void **state)
{
    (void)state;
    int st = run_mode("outside");
#ifdef __SANITIZE_ADDRESS__
    /* ASan's handler was there first: it reports the fault and exits. */
    assert_true(WIFSIGNALED(st) || (WIFEXITED(st) && WEXITSTATUS(st) == 1));
#else
    assert_true(WIFSIGNALED(st));
    assert_int_equal(WTERMSIG(st), SIGBUS);
#endif
    st = run_mode("chain");
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 7);
    st = run_mode("late");
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 7);
}

int main(int argc, char **argv)
{
    self = argv[0];
    if (argc == 3 && strcmp(argv[1], "shortened") == 0)
        return shortened_child(argv[2]);
    if (argc == 3 && strcmp(argv[1], "outside") == 0)
        return outside_child(argv[2]);
    if (argc == 3 && (strcmp(argv[1], "chain") == 0 || strcmp(argv[1], "late") == 0))
        return owner_child(argv[2], strcmp(argv[1], "chain") == 0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gather),
        cmocka_unit_test(test_shortened),
        cmocka_unit_test(test_other_faults),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
