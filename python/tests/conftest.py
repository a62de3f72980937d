"""pytest fixtures: a real engram-server per test module, started on a
free loopback port in a temporary data directory, and an engram.Client.

The binaries come from the environment ctest sets (ENGRAM_SERVER_BIN,
ENGRAM_CTL); run by hand from the repository root:

    PYTHONPATH=build/python ENGRAM_SERVER_BIN=build/server/engram-server \\
    ENGRAM_CTL=build/client/engramctl python3 -m pytest -q python/tests
"""
import os
import signal
import subprocess
import time

import pytest

import engram

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def _bin(var, default):
    path = os.environ.get(var) or os.path.join(ROOT, "build", default)
    if not os.access(path, os.X_OK):
        pytest.skip("%s not built (set %s)" % (path, var))
    return path


class Server:
    """One engram-server process this test run started (and only it is
    ever signalled)."""

    def __init__(self, tmp, *extra):
        self.tmp = str(tmp)
        self.port_file = os.path.join(self.tmp, "port")
        self.log = os.path.join(self.tmp, "server.log")
        self.proc = subprocess.Popen(
            [_bin("ENGRAM_SERVER_BIN", "server/engram-server"), "--data",
             os.path.join(self.tmp, "data"), "--listen", "127.0.0.1:0", "--port-file",
             self.port_file, "--threads", "2", "--log-file", self.log] + list(extra))
        deadline = time.monotonic() + 20
        while not (os.path.exists(self.port_file) and os.path.getsize(self.port_file)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("engram-server did not start: %s" % self.log_tail())
            time.sleep(0.02)
        with open(self.port_file) as f:
            self.address = "127.0.0.1:%s" % f.read().strip()

    def ctl(self, *args, stdin=None):
        """engramctl against this server; returns the CompletedProcess."""
        return subprocess.run([_bin("ENGRAM_CTL", "client/engramctl"), "--server", self.address]
                              + list(args), input=stdin, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)

    def log_tail(self):
        try:
            with open(self.log) as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None and self.proc.pid > 0:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return -9
        return self.proc.returncode


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("engram-server"))
    yield s
    rc = s.stop()
    assert rc == 0, "engram-server exited with %s: %s" % (rc, s.log_tail())


@pytest.fixture
def client(server):
    with engram.Client(server.address) as c:
        yield c
