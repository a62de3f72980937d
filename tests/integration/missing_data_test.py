#!/usr/bin/python3
"""A test whose data is missing fails alone; ctest still prints its summary.

Issue 12: in a fresh clone without the test data, test_prefetch's group
setup failed before its server started, and the teardown's server_stop sent
SIGTERM to pid 0: the whole process group, which holds ctest and
scripts/test.sh. The run ended with no summary and no exit status. The
harness now signals only through test_signal (tests/test_signal.h), which
refuses a pid <= 0.

--test-bin is test_prefetch built to read its vectors from --testdata, a
folder that does not exist. Two checks, each in a process group of its own
so that a regression kills only what it checks, never this driver or the
ctest running it:

1. The program beside a sentinel process of the same group: it exits 1
   (cmocka's count of failed tests, not a signal), says which file it could
   not read and that the teardown's signal was refused, and the sentinel is
   still alive afterwards: nothing signalled the group.
2. A ctest of its own (a generated CTestTestfile.cmake: the program, then a
   test that passes): it exits 8 (tests failed) after running both, and
   prints the summary "50% tests passed, 1 tests failed out of 2" and the
   failed test's name.

usage: missing_data_test.py --test-bin PATH --testdata DIR --ctest PATH
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import unittest

ARGS = None


def new_group():
    """preexec_fn: the child leads a process group of its own."""
    os.setpgid(0, 0)


class MissingDataTest(unittest.TestCase):
    def test_program_fails_alone(self):
        self.assertFalse(os.path.exists(ARGS.testdata), ARGS.testdata)
        # The sentinel leads the group; the program joins it, as a test
        # shares ctest's group. Both are this driver's children.
        sentinel = subprocess.Popen(["/bin/sleep", "120"], preexec_fn=new_group)
        try:
            pgid = sentinel.pid
            prog = subprocess.run([ARGS.test_bin], preexec_fn=lambda: os.setpgid(0, pgid),
                                  capture_output=True, timeout=60)
            out = prog.stdout.decode(errors="replace")
            err = prog.stderr.decode(errors="replace")
            print(out + err)
            self.assertEqual(prog.returncode, 1,
                             "test_prefetch without its data: exit %d (negative: killed by "
                             "that signal)" % prog.returncode)
            lines = out.splitlines() + err.splitlines()
            self.assertIn("ERROR: cannot read config2_small.json: unable to open %s/engram-hash/"
                          "config2_small.json: No such file or directory" % ARGS.testdata, lines)
            self.assertIn("[  FAILED  ] GROUP SETUP", lines)
            self.assertIn("test_signal: refused: no process was started (pid <= 0); kill() "
                          "would signal the whole process group", lines)
            self.assertIn("[  FAILED  ] GROUP TEARDOWN", lines)
            self.assertIsNone(sentinel.poll(),
                              "the sentinel of the program's process group died: %s"
                              % sentinel.returncode)
        finally:
            # Popen.kill signals sentinel.pid only (> 0), never a group.
            sentinel.kill()
            sentinel.wait()
        self.assertEqual(sentinel.returncode, -signal.SIGKILL)

    def test_ctest_prints_its_summary(self):
        tmp = tempfile.mkdtemp(prefix="engram-missing-data-")
        try:
            # What add_test writes into a build tree, without a configure
            # step: ctest reads CTestTestfile.cmake in its working folder.
            with open(os.path.join(tmp, "CTestTestfile.cmake"), "w") as f:
                f.write('add_test(prefetch_without_data "%s")\n' % ARGS.test_bin)
                f.write('add_test(runs_after_it "/bin/true")\n')
            run = subprocess.run([ARGS.ctest, "--timeout", "60"], cwd=tmp,
                                 preexec_fn=new_group, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, timeout=100)
            out = run.stdout.decode(errors="replace")
            print(out)
            self.assertEqual(run.returncode, 8,
                             "ctest: exit %d (negative: killed by that signal)" % run.returncode)
            lines = [line.strip() for line in out.splitlines()]
            self.assertIn("50% tests passed, 1 tests failed out of 2", lines)
            self.assertIn("1 - prefetch_without_data (Failed)", lines)
            # ctest went on after the failed test (its time varies)
            passed = re.compile(r"2/2 Test #2: runs_after_it \.+ +Passed +[0-9.]+ sec")
            self.assertTrue(any(passed.fullmatch(line) for line in lines), out)
        finally:
            shutil.rmtree(tmp)


def main():
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--test-bin", required=True)
    p.add_argument("--testdata", required=True)
    p.add_argument("--ctest", required=True)
    ARGS, rest = p.parse_known_args()
    result = unittest.main(argv=[sys.argv[0]] + rest, exit=False, verbosity=2).result
    sys.exit(0 if result.wasSuccessful() else 1)


if __name__ == "__main__":
    main()
