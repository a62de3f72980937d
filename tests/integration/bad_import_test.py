#!/usr/bin/python3
"""Bad Admin.Import streams and bad Lookup bytes against a real engram-server.

libengram refuses malformed imports before they leave the client, so this
test speaks the wire directly (Python grpcio, messages generated from the
.proto) to check the server's own defences: every overlap, gap, wrong
length, short or aborted stream gets a precise status, nothing is
activated, the previous version keeps serving, no temporary file is left
behind, and a correct import still succeeds afterwards.

usage: bad_import_test.py --server-bin PATH --pydir DIR
"""
import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import zlib

import grpc

from synthetic import rows_bytes, synthetic_row  # beside this file

ARGS = None


class BadImportTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        sys.path.insert(0, ARGS.pydir)
        from engram.v1 import engram_pb2
        cls.pb = engram_pb2
        cls.tmp = tempfile.mkdtemp(prefix="engram-badimport-")
        cls.data = os.path.join(cls.tmp, "data")
        port_file = os.path.join(cls.tmp, "port")
        cls.log = open(os.path.join(cls.tmp, "server.log"), "w")
        cls.proc = subprocess.Popen(
            [ARGS.server_bin, "--data", cls.data, "--listen", "127.0.0.1:0",
             "--port-file", port_file, "--threads", "1"],
            stdout=cls.log, stderr=cls.log)
        deadline = time.time() + 20
        while not os.path.exists(port_file):
            if time.time() > deadline or cls.proc.poll() is not None:
                raise RuntimeError("engram-server did not start")
            time.sleep(0.05)
        with open(port_file) as f:
            port = f.read().strip()
        cls.channel = grpc.insecure_channel("127.0.0.1:" + port)
        pb = cls.pb
        cls.import_rpc = cls.channel.stream_unary(
            "/engram.v1.Admin/Import",
            request_serializer=pb.ImportRequest.SerializeToString,
            response_deserializer=pb.ImportResponse.FromString)
        cls.import_raw = cls.channel.stream_unary(
            "/engram.v1.Admin/Import",
            request_serializer=lambda b: b, response_deserializer=lambda b: b)
        cls.get_table = cls.channel.unary_unary(
            "/engram.v1.Admin/GetTable",
            request_serializer=pb.GetTableRequest.SerializeToString,
            response_deserializer=pb.TableInfo.FromString)
        cls.lookup = cls.channel.unary_unary(
            "/engram.v1.Lookup/Lookup",
            request_serializer=pb.LookupRequest.SerializeToString,
            response_deserializer=pb.LookupResponse.FromString)
        cls.lookup_raw = cls.channel.unary_unary(
            "/engram.v1.Lookup/Lookup",
            request_serializer=lambda b: b, response_deserializer=pb.LookupResponse.FromString)
        resp = cls.import_rpc(cls.stream("t", 1000, [(0, 1000)], seed=1), timeout=30)
        cls.v1 = resp.table

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        cls.proc.send_signal(signal.SIGTERM)
        rc = cls.proc.wait(timeout=30)
        cls.log.close()
        shutil.rmtree(cls.tmp)
        if rc != 0:
            raise RuntimeError("engram-server exited with %d" % rc)

    @classmethod
    def header(cls, table, rows, dim=64, dtype="u8"):
        return cls.pb.ImportRequest(header=cls.pb.ImportHeader(
            table=table, rows=rows, dim=dim, dtype=dtype))

    @classmethod
    def chunk(cls, start, count, seed=1, row_bytes=64, data=None):
        if data is None:
            data = rows_bytes(seed, start, count, row_bytes)
        return cls.pb.ImportRequest(chunk=cls.pb.ImportChunk(start_row=start, data=data))

    @classmethod
    def stream(cls, table, rows, spans, seed=2):
        yield cls.header(table, rows)
        for start, count in spans:
            yield cls.chunk(start, count, seed)

    def expect_refused(self, requests, code, message, raw=False):
        rpc = self.import_raw if raw else self.import_rpc
        with self.assertRaises(grpc.RpcError) as cm:
            rpc(iter(requests), timeout=30)
        self.assertEqual(cm.exception.code(), code, cm.exception.details())
        self.assertIn(message, cm.exception.details())
        self.assert_v1_serving()

    def assert_v1_serving(self):
        info = self.get_table(self.pb.GetTableRequest(name="t"))
        self.assertEqual(info.version, 1)
        self.assertEqual(info.checksum, self.v1.checksum)
        rows = [0, 999, 500, 500]
        resp = self.lookup(self.pb.LookupRequest(table="t", rows=rows))
        self.assertEqual(resp.version, 1)
        self.assertEqual(resp.data, b"".join(synthetic_row(1, r, 64) for r in rows))
        leftovers = []
        for _ in range(50):   # the server removes files as the call ends
            leftovers = os.listdir(os.path.join(self.data, "import-tmp"))
            if not leftovers:
                break
            time.sleep(0.05)
        self.assertEqual(leftovers, [])

    def test_v1_checksum_is_crc32_of_rows(self):
        self.assertEqual(self.v1.checksum, zlib.crc32(rows_bytes(1, 0, 1000)))

    def test_overlap(self):
        self.expect_refused(
            self.stream("t", 1000, [(0, 100), (50, 100)]), grpc.StatusCode.INVALID_ARGUMENT,
            "chunk at row 50 overlaps rows already received (next expected row is 100)")

    def test_gap(self):
        self.expect_refused(
            self.stream("t", 1000, [(0, 100), (200, 100)]), grpc.StatusCode.INVALID_ARGUMENT,
            "chunk at row 200 leaves a gap: rows 100..199 were never sent")

    def test_partial_row(self):
        self.expect_refused(
            [self.header("t", 1000), self.chunk(0, 0, data=b"x" * 100)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "chunk at row 0 has 100 bytes, not a positive whole number of 64-byte rows")

    def test_past_the_end(self):
        self.expect_refused(
            self.stream("t", 1000, [(0, 990), (990, 20)]), grpc.StatusCode.INVALID_ARGUMENT,
            "chunk at row 990 carries 20 rows, past the 1000 rows this server holds")

    def test_short_stream(self):
        self.expect_refused(
            self.stream("t", 1000, [(0, 500)]), grpc.StatusCode.INVALID_ARGUMENT,
            'import of table "t" ended after 500 of 1000 rows; nothing was activated')

    def test_announced_trailer_missing(self):
        # Every row, but not the trailer the header announced: how a client
        # killed after its last chunk looks to the server. Not activated.
        head = self.pb.ImportRequest(header=self.pb.ImportHeader(
            table="t", rows=1000, dim=64, dtype="u8", trailer_follows=True))
        self.expect_refused(
            [head, self.chunk(0, 600, seed=2), self.chunk(600, 400, seed=2)],
            grpc.StatusCode.INVALID_ARGUMENT,
            'import of table "t" ended after all 1000 rows but without the trailer its '
            'header announced; nothing was activated')

    def test_chunk_before_header(self):
        self.expect_refused(
            [self.chunk(0, 10)], grpc.StatusCode.INVALID_ARGUMENT,
            "chunk at row 0 arrived before the header")

    def test_second_header(self):
        self.expect_refused(
            [self.header("t", 1000), self.chunk(0, 10), self.header("t", 1000)],
            grpc.StatusCode.INVALID_ARGUMENT, "a second header arrived after row 10")

    def test_bad_headers(self):
        cases = [
            (self.header("t", 1000, dtype="float33"), 'unknown dtype "float33"'),
            (self.header("t", 0), 'table "t" declares 0 rows'),
            (self.header("a/b", 10), 'invalid table name "a/b"'),
            (self.header("t", 10, dim=0), "dim 0 of dtype u8"),
            (self.header("t", 10, dim=1 << 30, dtype="f32"), "dim 1073741824 of dtype f32"),
        ]
        for req, message in cases:
            self.expect_refused([req], grpc.StatusCode.INVALID_ARGUMENT, message)

    def test_malformed_message(self):
        first = self.header("t", 1000).SerializeToString()
        self.expect_refused([first, b"\xff\xff\xff"], grpc.StatusCode.INVALID_ARGUMENT,
                            "malformed ImportRequest after row 0", raw=True)

    def test_lookup_unpacked_rows(self):
        # Rows as unpacked varints (field 2, wire type 0), then a packed run,
        # then an unknown field: any protobuf peer may send this.
        raw = b"\x0a\x01t" + b"\x10\x05" + b"\x12\x03\x01\xe7\x07" + b"\x20\x01"
        resp = self.lookup_raw(raw, timeout=10)
        self.assertEqual(resp.data, b"".join(synthetic_row(1, r, 64) for r in [5, 1, 999]))

    def test_lookup_malformed(self):
        cases = [
            (b"\x0a\x01t\x12\x02\x01\x80",
             "malformed LookupRequest: truncated varint (field at byte 3 of 7)"),
            (b"\x0a\x09t", "malformed LookupRequest: length runs past the end of the message "
                           "(field at byte 0 of 3)"),
            (b"\x0a\x01t\x23", "malformed LookupRequest: unsupported wire type "
                                "(groups are not valid here) (field at byte 3 of 4)"),
            (b"\x0a\x03t\x00x\x10\x01", "table name contains a NUL byte"),
            (b"\x0a\x81\x01" + b"a" * 129 + b"\x10\x01",
             "table name of 129 bytes is longer than the maximum 128"),
        ]
        for raw, message in cases:
            with self.assertRaises(grpc.RpcError) as cm:
                self.lookup_raw(raw, timeout=10)
            self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
            self.assertEqual(cm.exception.details(), message)
        self.assert_v1_serving()

    def test_empty_stream(self):
        self.expect_refused([], grpc.StatusCode.INVALID_ARGUMENT,
                            "import stream ended without a header")

    def test_cancelled_stream_changes_nothing(self):
        def slow():
            yield self.header("t", 1000)
            yield self.chunk(0, 100)
            time.sleep(5)
            yield self.chunk(100, 900)
        fut = self.import_rpc.future(slow(), timeout=30)
        time.sleep(0.5)
        fut.cancel()
        with self.assertRaises(grpc.FutureCancelledError):
            fut.result()
        time.sleep(0.3)
        self.assert_v1_serving()

    def test_aborted_new_table_does_not_exist(self):
        self.expect_refused(self.stream("fresh", 100, [(0, 50)]),
                            grpc.StatusCode.INVALID_ARGUMENT, "ended after 50 of 100 rows")
        with self.assertRaises(grpc.RpcError) as cm:
            self.get_table(self.pb.GetTableRequest(name="fresh"))
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)

    def test_zz_good_import_after_failures(self):
        resp = self.import_rpc(self.stream("u", 300, [(0, 100), (100, 200)], seed=5), timeout=30)
        self.assertEqual(resp.table.version, 1)
        self.assertEqual(resp.table.checksum, zlib.crc32(rows_bytes(5, 0, 300)))
        self.assert_v1_serving()


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--server-bin", required=True)
    ap.add_argument("--pydir", required=True)
    ARGS, rest = ap.parse_known_args()
    result = unittest.main(argv=[sys.argv[0]] + rest, exit=False, verbosity=2).result
    failed = len(result.failures) + len(result.errors)
    print("%d passed, %d failed" % (result.testsRun - failed, failed))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
