#!/usr/bin/python3
"""The worst client, against a default-configured engram-server.

Every probe of issue 11's outside review, each as a bounded loop against a
real server started with no limit flags at all (only --data, --listen and
--port-file): the exact status it must answer, that the process stays
alive, an RSS bound (read from /proc) where memory was the finding, and
that the stored rows still verify byte for byte afterwards.

Requests are built by hand (grpcio with identity serializers, raw HTTP/2
with python3-h2, raw sockets), so the server's own defences are tested,
not a client library's checks. The rows are listed in tests/README.md.

usage: abuse_test.py --server-bin PATH --pydir DIR [unittest args]
"""
import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import grpc

from synthetic import rows_bytes, synthetic_row  # beside this file

ARGS = None
pb = None          # engram.v1 messages, generated at build time (--pydir)

OK = grpc.StatusCode.OK
IA = grpc.StatusCode.INVALID_ARGUMENT
NF = grpc.StatusCode.NOT_FOUND
RE = grpc.StatusCode.RESOURCE_EXHAUSTED
L = "/engram.v1.Lookup/Lookup"
A = "/engram.v1.Admin/"


def varint(v):
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def field_bytes(num, payload):
    return varint(num << 3 | 2) + varint(len(payload)) + payload


def field_varint(num, v):
    return varint(num << 3) + varint(v)


def lookup_req(table, rows, version=0):
    body = field_bytes(1, table.encode()) + field_bytes(2, b"".join(varint(r) for r in rows))
    return body + (field_varint(3, version) if version else b"")


class Server:
    """One engram-server process on a loopback port, with its own data
    directory and log; started with its defaults plus `extra` flags."""

    def __init__(self, data, extra=(), log=None):
        self.data = data
        self.tmp = tempfile.mkdtemp(prefix="engram-abuse-srv-")
        self.port_file = os.path.join(self.tmp, "port")
        self.log_path = log or os.path.join(self.tmp, "server.log")
        self.extra = list(extra)
        self.proc = None
        self.channel = None

    def start(self, timeout=20):
        if os.path.exists(self.port_file):
            os.unlink(self.port_file)
        self.logf = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            [ARGS.server_bin, "--data", self.data, "--listen", "127.0.0.1:0",
             "--port-file", self.port_file] + self.extra,
            stdout=self.logf, stderr=self.logf)
        deadline = time.time() + timeout
        while not os.path.exists(self.port_file):
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError("engram-server did not start (rc %s): %s"
                                   % (self.proc.poll(), self.log_tail()))
            time.sleep(0.05)
        with open(self.port_file) as f:
            self.port = int(f.read().strip())
        self.address = "127.0.0.1:%d" % self.port
        self.channel = grpc.insecure_channel(
            self.address, options=[("grpc.max_receive_message_length", 256 << 20),
                                   ("grpc.max_send_message_length", 256 << 20)])
        return self

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Stops the process this object started (never any other pid) and
        returns its exit status."""
        if self.channel:
            self.channel.close()
            self.channel = None
        rc = None
        if self.proc is not None and self.proc.pid > 0:
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
            rc = self.proc.wait(timeout=timeout)
            self.proc = None
            self.logf.close()
        return rc

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def rss(self):
        """Resident set size in bytes, from /proc."""
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def fds(self):
        return len(os.listdir("/proc/%d/fd" % self.proc.pid))

    def log_tail(self, n=4000):
        try:
            with open(self.log_path) as f:
                return f.read()[-n:]
        except OSError:
            return ""

    def log_count(self, needle):
        with open(self.log_path) as f:
            return f.read().count(needle)

    # -- calls ---------------------------------------------------------------
    def unary(self, method, req, timeout=10):
        """A raw unary call; returns (code, details, reply bytes)."""
        rpc = self.channel.unary_unary(method, request_serializer=lambda b: b,
                                       response_deserializer=lambda b: b)
        try:
            reply = rpc(req, timeout=timeout)
            return OK, "", reply
        except grpc.RpcError as e:
            return e.code(), e.details(), None

    def stream_unary(self, method, reqs, timeout=30):
        rpc = self.channel.stream_unary(method, request_serializer=lambda b: b,
                                        response_deserializer=lambda b: b)
        try:
            reply = rpc(iter(reqs), timeout=timeout)
            return OK, "", reply
        except grpc.RpcError as e:
            return e.code(), e.details(), None

    def import_rows(self, table, rows, seed, row_bytes=64, stage=False, timeout=60):
        """Imports `rows` synthetic rows (seed) as one stream; (code, details, ImportResponse)."""
        def msgs():
            yield pb.ImportRequest(header=pb.ImportHeader(
                table=table, rows=rows, dim=row_bytes, dtype="u8",
                stage=stage)).SerializeToString()
            step = max(1, (1 << 20) // row_bytes)
            for start in range(0, rows, step):
                n = min(step, rows - start)
                yield pb.ImportRequest(chunk=pb.ImportChunk(
                    start_row=start, data=rows_bytes(seed, start, n, row_bytes))).SerializeToString()
        code, details, reply = self.stream_unary(A + "Import", msgs(), timeout=timeout)
        return code, details, pb.ImportResponse.FromString(reply) if reply is not None else None

    def table_info(self, name):
        code, details, reply = self.unary(
            A + "GetTable", pb.GetTableRequest(name=name).SerializeToString())
        if code != OK:
            raise AssertionError("GetTable %s: %s %s" % (name, code, details))
        return pb.TableInfo.FromString(reply)

    def verify_rows(self, table, rows, seed, row_bytes=64):
        """Looks `rows` up and returns True when every byte is the synthetic row."""
        code, details, reply = self.unary(L, lookup_req(table, rows))
        if code != OK:
            raise AssertionError("Lookup %s: %s %s" % (table, code, details))
        resp = pb.LookupResponse.FromString(reply)
        return resp.data == b"".join(synthetic_row(seed, r, row_bytes) for r in rows)


def wait_until(pred, timeout, step=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


class AbuseBase(unittest.TestCase):
    """One default-configured server per class holding table "t" (1000 rows
    of 64 bytes, seed 1). After the class the server must still be alive,
    serve "t" byte for byte and stop cleanly (exit 0)."""
    ROWS, ROW_BYTES, SEED = 1000, 64, 1
    EXTRA = ()

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="engram-abuse-")
        cls.srv = Server(os.path.join(cls.tmp, "data"), cls.EXTRA).start()
        code, details, _ = cls.srv.import_rows("t", cls.ROWS, cls.SEED, cls.ROW_BYTES)
        if code != OK:
            raise RuntimeError("import of t: %s %s" % (code, details))

    @classmethod
    def tearDownClass(cls):
        srv = cls.srv
        try:
            if not srv.alive():
                raise AssertionError("engram-server died: " + srv.log_tail())
            rows = list(range(0, cls.ROWS, 7)) + [cls.ROWS - 1]
            if not srv.verify_rows("t", rows, cls.SEED, cls.ROW_BYTES):
                raise AssertionError("table t no longer verifies")
            rc = srv.stop()
            if rc != 0:
                raise AssertionError("engram-server exited with %s: %s" % (rc, srv.log_tail()))
        finally:
            srv.cleanup()
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def assert_alive_and_intact(self):
        self.assertTrue(self.srv.alive(), self.srv.log_tail())
        self.assertTrue(self.srv.verify_rows("t", [0, 1, self.ROWS - 1], self.SEED, self.ROW_BYTES))

# ==== Versions and a full disk (findings 1 and 4) ==========================


# ==== Import streams and names from the wire (findings 5 and 6) ============


# ==== Health Watch, /metrics and manifests (findings 7, 8 and 9) ===========

HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
SERVING = b"\x08\x01"            # HealthCheckResponse{status: SERVING}


class MetricsBase(AbuseBase):
    """AbuseBase with /metrics on a free loopback port (read from the log)."""
    EXTRA = ("--metrics-listen", "127.0.0.1:0")

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        import re
        m = re.search(r"metrics_listening .*port=(\d+)", cls.srv.log_tail(100000))
        if not m:
            raise RuntimeError("no metrics port in the log: " + cls.srv.log_tail())
        cls.metrics_port = int(m.group(1))

    def scrape(self, timeout=2.0, source="127.0.0.1"):
        """One GET /metrics on a new connection; the body, or None when it
        did not answer 200 within `timeout`."""
        s = socket.socket()
        s.settimeout(timeout)
        deadline = time.time() + timeout
        try:
            s.bind((source, 0))
            s.connect(("127.0.0.1", self.metrics_port))
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while time.time() < deadline:
                s.settimeout(max(0.01, deadline - time.time()))
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError:
            return None
        finally:
            s.close()
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200") or b"engram_build_info" not in body:
            return None
        return body.decode()

    def gauge(self, name):
        for _ in range(20):
            body = self.scrape()
            if body is not None:
                for line in body.splitlines():
                    if line.startswith(name + " "):
                        return int(float(line.split()[1]))
                raise AssertionError("no %s in /metrics" % name)
            time.sleep(0.2)
        raise AssertionError("/metrics did not answer")


class HealthWatchSlots(MetricsBase):
    """Finding 7: Watch calls their clients cancelled kept their slots until
    the next status change, so after 1,024 of them every new Watch got
    RESOURCE_EXHAUSTED until a Drain/Undrain. Now a cancelled Watch frees
    its slot at once, and one connection holds 64 at most."""
    PER_CONN, LIMIT = 64, 1024

    def channels(self, n):
        # A local subchannel pool: one HTTP/2 connection per channel.
        return [grpc.insecure_channel(self.srv.address,
                                      options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(n)]

    def watch(self, ch):
        rpc = ch.unary_stream(HEALTH_WATCH, request_serializer=lambda b: b,
                              response_deserializer=lambda b: b)
        return rpc(b"", timeout=60)

    def first(self, call):
        """The Watch's first message, or its (code, details) when it ended."""
        try:
            return next(call)
        except grpc.RpcError as e:
            return (e.code(), e.details())

    def test_cancelled_watches_release_their_slots(self):
        chans = self.channels(self.LIMIT // self.PER_CONN)
        calls = []
        try:
            for ch in chans:
                for _ in range(self.PER_CONN):
                    calls.append(self.watch(ch))
            for c in calls:
                self.assertEqual(self.first(c), SERVING)
            self.assertEqual(self.gauge("engram_health_watchers"), self.LIMIT)
            extra = self.channels(1)
            try:
                self.assertEqual(self.first(self.watch(extra[0])),
                                 (RE, "too many health watchers (the limit is 1024)"))
            finally:
                extra[0].close()
            # Half cancelled call by call (RST_STREAM), half by closing the
            # connection under them.
            half = len(calls) // 2
            for c in calls[:half]:
                c.cancel()
            for ch in chans[len(chans) // 2:]:
                ch.close()
            # A new Watch is admitted and hears SERVING (within 10 s: the
            # server hears of the cancels asynchronously).
            fresh = self.channels(1)[0]
            got = []

            def admitted():
                c = self.watch(fresh)
                got.append(self.first(c))
                c.cancel()
                return got[-1] == SERVING
            try:
                self.assertTrue(wait_until(admitted, 10, step=0.2), got[-1:])
            finally:
                fresh.close()
            # Every slot came back, not just one.
            self.assertTrue(wait_until(lambda: self.gauge("engram_health_watchers") == 0, 10),
                            "watchers left: %d" % self.gauge("engram_health_watchers"))
        finally:
            for c in calls:
                c.cancel()
            for ch in chans:
                ch.close()
        self.assert_alive_and_intact()

    def test_watches_per_connection_are_bounded(self):
        ch = self.channels(1)[0]
        calls = []
        try:
            for _ in range(self.PER_CONN):
                calls.append(self.watch(ch))
            for c in calls:
                self.assertEqual(self.first(c), SERVING)
            self.assertEqual(self.first(self.watch(ch)),
                             (RE, "too many health watchers from this connection "
                                  "(the limit is 64 per connection)"))
            # Another connection is not held to this one's count.
            other = self.channels(1)[0]
            try:
                c = self.watch(other)
                self.assertEqual(self.first(c), SERVING)
                c.cancel()
            finally:
                other.close()
            calls[0].cancel()
            # The cancelled one's slot is this connection's again.
            self.assertTrue(wait_until(
                lambda: self.gauge("engram_health_watchers") == self.PER_CONN - 1, 10))
            c = self.watch(ch)
            calls.append(c)
            self.assertEqual(self.first(c), SERVING)
        finally:
            for c in calls:
                c.cancel()
            ch.close()
        self.assertTrue(wait_until(lambda: self.gauge("engram_health_watchers") == 0, 10))
        self.assert_alive_and_intact()


class Trickler:
    """`n` raw connections to /metrics from `source`, each sending one byte
    of a request line every `interval` seconds and never finishing it; with
    `reconnect` one the server closed is opened again (after 0.2 s), like a
    persistent attacker. A thread runs it until stop(); it closes every
    socket it opened. `closed` counts connections the server ended."""
    REQ = b"GET /metrics HTTP/1.1\r\nHost: x\r\nUser-Agent: slow" + b"w" * 4000

    def __init__(self, port, n, interval, source="127.0.0.1", reconnect=False):
        self.port, self.n, self.interval = port, n, interval
        self.source, self.reconnect = source, reconnect
        self.socks = {}              # slot -> [sock, bytes sent, next send, opened at]
        self.closed = 0
        self.lifetimes = []          # seconds each closed connection lasted
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def open(self, i):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.bind((self.source, 0))
            s.connect_ex(("127.0.0.1", self.port))
        except OSError:
            s.close()
            return
        self.socks[i] = [s, 0, time.time(), time.time()]

    def start(self):
        for i in range(self.n):
            self.open(i)
        self.thread.start()
        return self

    def run(self):
        import select
        reopen = {}
        while not self.stopping.is_set():
            now = time.time()
            for i, st in list(self.socks.items()):
                s = st[0]
                gone = False
                r, _, _ = select.select([s], [], [], 0)
                if r:
                    try:
                        gone = s.recv(4096) == b""
                    except BlockingIOError:
                        pass
                    except OSError:
                        gone = True
                if not gone and now >= st[2]:
                    try:
                        st[1] += s.send(self.REQ[st[1] % len(self.REQ):][:1])
                        st[2] = now + self.interval
                    except BlockingIOError:
                        pass
                    except OSError:
                        gone = True
                if gone:
                    s.close()
                    del self.socks[i]
                    self.closed += 1
                    self.lifetimes.append(now - st[3])
                    if self.reconnect:
                        reopen[i] = now + 0.2
            for i, when in list(reopen.items()):
                if now >= when:
                    del reopen[i]
                    self.open(i)
            self.stopping.wait(0.05)

    def stop(self):
        self.stopping.set()
        self.thread.join(timeout=10)
        for st in self.socks.values():
            st[0].close()
        self.socks.clear()


class MetricsSlowClients(MetricsBase):
    """Finding 8: 16 connections trickling a byte every 5 s held every
    /metrics slot (16 in all, 10 s idle timeout), so every scrape timed
    out. Now: 64 connections, 8 per address, 3 s idle, and 5 s for a whole
    request; every scrape here must answer within 2 s (one retry after
    a refused connection within the first seconds is allowed only where
    the attacker shares the scraper's address)."""

    def scrape_loop(self, seconds, must_after=0.0):
        """Scrapes every 0.5 s for `seconds`; returns (ok, failed) counts of
        the scrapes started `must_after` seconds in or later, and whether
        any scrape at all succeeded before then."""
        t0 = time.time()
        ok = failed = 0
        early_ok = False
        while time.time() - t0 < seconds:
            started = time.time() - t0
            body = self.scrape(timeout=2.0)
            if started >= must_after:
                ok, failed = ok + (body is not None), failed + (body is None)
            else:
                early_ok = early_ok or body is not None
            time.sleep(0.5)
        return ok, failed, early_ok

    def test_trickle_from_another_address_cannot_starve_scrapes(self):
        # 64 connections from 127.0.0.2, a byte a second (faster than any
        # idle timeout), reopened as soon as the server closes one.
        t = Trickler(self.metrics_port, 64, 1.0, source="127.0.0.2", reconnect=True).start()
        try:
            time.sleep(0.5)
            ok, failed, _ = self.scrape_loop(12)
        finally:
            t.stop()
        self.assertEqual(failed, 0, "%d of %d scrapes failed" % (failed, ok + failed))
        self.assertGreaterEqual(ok, 10)
        # The per-address limit refused most of them, the request deadline
        # cut the ones admitted (a byte a second never goes idle).
        self.assertGreater(t.closed, 64)
        self.assertTrue(self.srv.alive())

    def test_trickle_from_the_scrapers_address(self):
        # 16, then 64, connections from 127.0.0.1 itself, a byte every 5 s:
        # the 8 admitted go idle past 3 s and are closed, the rest are
        # refused at once; then every scrape answers.
        for n in (16, 64):
            t = Trickler(self.metrics_port, n, 5.0).start()
            try:
                ok, failed, _ = self.scrape_loop(10, must_after=4.0)
                self.assertTrue(wait_until(lambda: not t.socks, 5), "%d still open" % len(t.socks))
            finally:
                t.stop()
            self.assertEqual(failed, 0, "n=%d: %d of %d scrapes failed" % (n, failed, ok + failed))
            self.assertGreaterEqual(ok, 6)
            self.assertEqual(t.closed, n)
        self.assertTrue(self.srv.alive())

    def test_whole_request_deadline(self):
        # A byte every 0.5 s is never idle: the 5 s request deadline ends
        # each connection (between 5 s and 5.25 s plus the polling step).
        t = Trickler(self.metrics_port, 8, 0.5).start()
        try:
            self.assertTrue(wait_until(lambda: t.closed == 8, 10),
                            "closed %d of 8" % t.closed)
        finally:
            t.stop()
        self.assertTrue(all(4.5 <= s <= 7.0 for s in t.lifetimes), t.lifetimes)
        self.assertIsNotNone(self.scrape())
        self.assertTrue(self.srv.alive())



# ==== Lookup requests and replies nobody reads (findings 2, 3 and 10) ======


def main():
    global ARGS, pb
    ap = argparse.ArgumentParser()
    ap.add_argument("--server-bin", required=True)
    ap.add_argument("--pydir", required=True)
    ARGS, rest = ap.parse_known_args()
    sys.path.insert(0, ARGS.pydir)
    from engram.v1 import engram_pb2
    pb = engram_pb2
    result = unittest.main(argv=[sys.argv[0]] + rest, exit=False, verbosity=2).result
    failed = len(result.failures) + len(result.errors)
    print("%d passed, %d failed" % (result.testsRun - failed, failed))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
