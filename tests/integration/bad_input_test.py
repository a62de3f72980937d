#!/usr/bin/python3
"""Bad input, as a table: every RPC of a real engram-server with malformed,
empty, oversized, wrong-typed and unknown-field requests, a deadline already
passed and a stream cancelled midway; each row states the exact status and
message the server must answer. After the whole table the server must still
be running and serve the right bytes, and the table must be unchanged.

Requests are raw bytes (grpcio with identity serializers), so the server's
own decoding is what is tested, not a client library's checks. The rows are
also printed as the markdown table in tests/README.md (--print-table).

usage: bad_input_test.py --server-bin PATH --pydir DIR [--print-table]
"""
import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import grpc

from synthetic import M64, synthetic_row  # beside this file
from raw_wire import A, L, field_bytes, field_varint, lookup_req, varint  # beside this file

ARGS = None
ROWS, ROW_BYTES, SEED = 1000, 64, 9
OK = grpc.StatusCode.OK
IA = grpc.StatusCode.INVALID_ARGUMENT
NF = grpc.StatusCode.NOT_FOUND




H = "/grpc.health.v1.Health/Check"

# (what, method, request bytes, expected code, expected message; None = OK)
CASES = [
    ("Lookup: empty message", L, b"", IA, "table name is empty"),
    ("Lookup: unknown table", L, lookup_req("nope", [1]), NF, 'table "nope" not found'),
    ("Lookup: row past the end", L, lookup_req("t", [0, 1000]), grpc.StatusCode.OUT_OF_RANGE,
     'row 1000 (index 1 in the request) is out of range: table "t" has 1000 rows'),
    ("Lookup: row 2^64-1", L, lookup_req("t", [M64]), grpc.StatusCode.OUT_OF_RANGE,
     'row 18446744073709551615 (index 0 in the request) is out of range: table "t" has 1000 rows'),
    ("Lookup: more rows than --max-rows", L, lookup_req("t", [1] * 2001), IA,
     "request has 2001 rows; the maximum per request is 2000"),
    ("Lookup: a version the server does not have", L, lookup_req("t", [1], version=7), NF,
     'table "t" has no version 7 on this server (active: 1)'),
    ("Lookup: truncated varint", L, b"\x0a\x01t\x12\x02\x01\x80", IA,
     "malformed LookupRequest: truncated varint (field at byte 3 of 7)"),
    ("Lookup: length past the end", L, b"\x0a\x09t", IA,
     "malformed LookupRequest: length runs past the end of the message (field at byte 0 of 3)"),
    ("Lookup: table sent as a varint (wrong wire type)", L, b"\x08\x01", IA,
     "malformed LookupRequest: known field with the wrong wire type (field at byte 0 of 2)"),
    ("Lookup: a group (wire type 3)", L, b"\x0a\x01t\x23", IA,
     "malformed LookupRequest: unsupported wire type (groups are not valid here) "
     "(field at byte 3 of 4)"),
    ("Lookup: field number 0", L, b"\x00\x01", IA,
     "malformed LookupRequest: field number 0 (field at byte 0 of 2)"),
    ("Lookup: NUL in the table name", L, b"\x0a\x03t\x00x\x10\x01", IA,
     "table name contains a NUL byte"),
    ("Lookup: unknown fields around a valid request", L,
     field_varint(9, 5) + lookup_req("t", [3, 3]) + field_bytes(12, b"zz"), OK, None),
    ("Lookup: message over --max-message-bytes", L, lookup_req("t", [M64] * 150000),
     grpc.StatusCode.RESOURCE_EXHAUSTED, 'Received message larger than max (1500007 vs. 1048576)'),
    ("GetTable: empty message", A + "GetTable", b"", IA, 'table name is empty'),
    ("GetTable: unknown table", A + "GetTable", field_bytes(1, b"nope"), NF, 'table "nope" not found'),
    ("GetTable: not a protobuf message", A + "GetTable", b"\xff\xff\xff", IA,
     'malformed GetTableRequest: not a valid engram.v1.GetTableRequest message'),
    ("GetTable: NUL in the table name", A + "GetTable", field_bytes(1, b"t\x00x"), IA,
     "malformed GetTableRequest: string field GetTableRequest.name contains a NUL byte at offset 1"),
    ("ActivateVersion: NUL in the table name", A + "ActivateVersion",
     field_bytes(1, b"t\x00") + field_varint(2, 1), IA,
     "malformed VersionRequest: string field VersionRequest.table contains a NUL byte at offset 1"),
    ("GetManifest: NUL in the model name", A + "GetManifest", field_bytes(1, b"\x00m"), IA,
     "malformed GetManifestRequest: string field GetManifestRequest.name contains a NUL byte at offset 0"),
    ("Warm: NUL in the model name", A + "Warm", field_bytes(3, b"m\x00m") + field_bytes(4, varint(5)), IA,
     "malformed WarmRequest: string field WarmRequest.model contains a NUL byte at offset 1"),
    ("Health: NUL in the service name", H, field_bytes(1, b"engram.v1.Lookup\x00x"), IA,
     "malformed HealthCheckRequest: string field HealthCheckRequest.service contains a NUL byte at offset 16"),
    ("ListTables: not a protobuf message", A + "ListTables", b"\xff\xff", IA,
     'malformed ListTablesRequest: not a valid engram.v1.ListTablesRequest message'),
    ("GetManifest: unknown model", A + "GetManifest", field_bytes(1, b"nope"), NF, 'model "nope" not found: no manifest of that name'),
    ("GetManifest: empty message", A + "GetManifest", b"", IA, 'invalid model name ""'),
    ("PutManifest: empty message", A + "PutManifest", b"", IA, "manifest: invalid JSON at line 1 column 0: '[' or '{' expected near end of file"),
    ("PutManifest: not JSON", A + "PutManifest", field_bytes(1, b"{not json"), IA, "manifest: invalid JSON at line 1 column 4: string or '}' expected near 'not'"),
    ("PutManifest: JSON that is not an object", A + "PutManifest", field_bytes(1, b"[1,2]"), IA,
     'manifest: the document must be a JSON object'),
    ("PutManifest: a key missing", A + "PutManifest", field_bytes(1, b'{"name": "m"}'), IA, 'manifest: missing key "max_ngram_size"'),
    ("PutManifest: NUL in the document", A + "PutManifest", field_bytes(1, b'{"name": "m"}\x00'), IA,
     "malformed PutManifestRequest: string field PutManifestRequest.json contains a NUL byte at offset 13"),
    ("PutManifest: an escaped NUL in the model name", A + "PutManifest",
     field_bytes(1, b'{"name": "a\\u0000b"}'), IA,
     "manifest: invalid JSON at line 1 column 19: \\u0000 is not allowed without JSON_ALLOW_NUL "
     "near '\"a\\u0000b\"'"),
    ("ActivateVersion: unknown table", A + "ActivateVersion",
     field_bytes(1, b"nope") + field_varint(2, 1), NF, 'table "nope" has no version 1 on this server'),
    ("ActivateVersion: a version that does not exist", A + "ActivateVersion",
     field_bytes(1, b"t") + field_varint(2, 99), NF, 'table "t" has no version 99 on this server'),
    ("DropVersion: the active version", A + "DropVersion",
     field_bytes(1, b"t") + field_varint(2, 1), grpc.StatusCode.FAILED_PRECONDITION, 'version 1 of table "t" is active; activate another version first'),
    ("DropVersion: version 0", A + "DropVersion", field_bytes(1, b"t"), IA, "version 0 is not a version; name one (see GetTable's versions)"),
    ("Warm: neither rows nor a model", A + "Warm", b"", IA, 'give a table with rows or a model with tokens'),
    ("Warm: unknown table", A + "Warm", field_bytes(1, b"nope") + field_bytes(2, varint(1)), NF,
     'table "nope" not found'),
    ("Warm: row past the end", A + "Warm", field_bytes(1, b"t") + field_bytes(2, varint(5000)),
     grpc.StatusCode.OUT_OF_RANGE, 'row 5000 (index 0 in the request) is out of range: table "t" has 1000 rows'),
    ("Warm: unknown model", A + "Warm", field_bytes(3, b"nope") + field_bytes(4, varint(5)), NF,
     'model "nope" not found (no manifest of that name on this server)'),
    ("Verify: unknown table", A + "Verify", field_bytes(1, b"nope"), NF, 'table "nope" not found'),
    ("Verify: not a protobuf message", A + "Verify", b"\xff\xff\xff", IA,
     'malformed VerifyRequest: not a valid engram.v1.VerifyRequest message'),
    ("SetLogLevel: unknown level", A + "SetLogLevel", field_bytes(1, b"loud"), IA, 'unknown log level "loud": want debug, info, warn or error'),
    ("Drain: not a protobuf message", A + "Drain", b"\xff\xff\xff", IA,
     'malformed DrainRequest: not a valid engram.v1.DrainRequest message'),
    ("Stats: not a protobuf message", A + "Stats", b"\xff\xff", IA, 'malformed StatsRequest: not a valid engram.v1.StatsRequest message'),
    ("GetClusterMap: not a protobuf message", A + "GetClusterMap", b"\xff\xff", IA,
     "malformed GetClusterMapRequest: not a valid engram.v1.GetClusterMapRequest message"),
    ("ListLocalTables: not a protobuf message", A + "ListLocalTables", b"\xff\xff", IA,
     "malformed ListLocalTablesRequest: not a valid engram.v1.ListLocalTablesRequest message"),
    ("ListLocalTables: a bad table name", A + "ListLocalTables", field_bytes(1, b"../x/y"), IA,
     'invalid table name "../x/y": use 1-128 characters of [A-Za-z0-9._-]'),
    ("Health: unknown service", H, field_bytes(1, b"no.such.Service"), NF, 'unknown service "no.such.Service" (known: "", engram.v1.Lookup, engram.v1.Admin)'),
    ("an RPC the server does not have", "/engram.v1.Admin/NoSuchMethod", b"",
     grpc.StatusCode.UNIMPLEMENTED, 'method /engram.v1.Admin/NoSuchMethod is not served by this server'),
]

STREAMING = {A + "Warm", A + "Verify"}


class BadInputTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        sys.path.insert(0, ARGS.pydir)
        from engram.v1 import engram_pb2
        cls.pb = engram_pb2
        cls.tmp = tempfile.mkdtemp(prefix="engram-badinput-")
        port_file = os.path.join(cls.tmp, "port")
        cls.log = open(os.path.join(cls.tmp, "server.log"), "w")
        cls.proc = subprocess.Popen(
            [ARGS.server_bin, "--data", os.path.join(cls.tmp, "data"), "--listen",
             "127.0.0.1:0", "--port-file", port_file, "--threads", "1", "--max-rows", "2000",
             "--max-message-bytes", "1M"], stdout=cls.log, stderr=cls.log)
        deadline = time.time() + 20
        while not os.path.exists(port_file):
            if time.time() > deadline or cls.proc.poll() is not None:
                raise RuntimeError("engram-server did not start")
            time.sleep(0.05)
        with open(port_file) as f:
            cls.addr = "127.0.0.1:" + f.read().strip()
        cls.channel = grpc.insecure_channel(cls.addr, options=[
            ("grpc.max_send_message_length", 64 << 20)])
        cls.import_(1)
        cls.info = cls.get_table()

    @classmethod
    def unary(cls, method):
        return cls.channel.unary_unary(method, request_serializer=lambda b: b,
                                       response_deserializer=lambda b: b)

    @classmethod
    def stream(cls, method):
        return cls.channel.unary_stream(method, request_serializer=lambda b: b,
                                        response_deserializer=lambda b: b)

    @classmethod
    def import_(cls, seed):
        pb = cls.pb
        data = b"".join(synthetic_row(seed, r, ROW_BYTES) for r in range(ROWS))

        def msgs():
            yield pb.ImportRequest(header=pb.ImportHeader(table="t", rows=ROWS, dim=ROW_BYTES,
                                                          dtype="u8")).SerializeToString()
            for start in range(0, ROWS, 100):
                yield pb.ImportRequest(chunk=pb.ImportChunk(
                    start_row=start, data=data[start * ROW_BYTES:(start + 100) * ROW_BYTES])
                ).SerializeToString()
        rpc = cls.channel.stream_unary(A + "Import", request_serializer=lambda b: b,
                                       response_deserializer=lambda b: b)
        return rpc(msgs(), timeout=30)

    @classmethod
    def get_table(cls):
        raw = cls.unary(A + "GetTable")(field_bytes(1, b"t"), timeout=10)
        return cls.pb.TableInfo.FromString(raw)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        cls.proc.send_signal(signal.SIGTERM)
        rc = cls.proc.wait(timeout=30)
        cls.log.close()
        shutil.rmtree(cls.tmp)
        if rc != 0:
            raise RuntimeError("engram-server exited with %d" % rc)

    def call(self, method, req, timeout=10):
        """(code, details) of one call; a streaming call is read to its end."""
        try:
            if method in STREAMING:
                for _ in self.stream(method)(req, timeout=timeout):
                    pass
            else:
                self.unary(method)(req, timeout=timeout)
            return OK, ""
        except grpc.RpcError as e:
            return e.code(), e.details()

    def assert_serving(self):
        self.assertIsNone(self.proc.poll(), "engram-server died")
        rows = [0, 999, 3, 3]
        raw = self.unary(L)(lookup_req("t", rows), timeout=10)
        resp = self.pb.LookupResponse.FromString(raw)
        self.assertEqual(resp.data, b"".join(synthetic_row(1, r, ROW_BYTES) for r in rows))
        info = self.get_table()
        self.assertEqual((info.version, info.checksum, info.xxh3),
                         (self.info.version, self.info.checksum, self.info.xxh3))

    def test_table(self):
        for what, method, req, code, message in CASES:
            with self.subTest(what):
                got_code, got_msg = self.call(method, req)
                self.assertEqual(got_code, code, "%s: %s" % (what, got_msg))
                if message is not None:
                    self.assertEqual(got_msg, message, what)
                elif code != OK:
                    self.assertTrue(got_msg, "%s: an error without a message" % what)
        self.assert_serving()

    def test_deadline_already_passed(self):
        code, _ = self.call(L, lookup_req("t", [1]), timeout=0.000001)
        self.assertEqual(code, grpc.StatusCode.DEADLINE_EXCEEDED)
        self.assert_serving()

    def test_import_cancelled_mid_stream(self):
        half = threading.Event()
        fut_holder = {}

        def run():
            try:
                pb = self.pb
                data = b"".join(synthetic_row(2, r, ROW_BYTES) for r in range(ROWS))

                def msgs():
                    yield pb.ImportRequest(header=pb.ImportHeader(
                        table="t", rows=ROWS, dim=ROW_BYTES, dtype="u8")).SerializeToString()
                    for start in range(0, ROWS // 2, 100):
                        yield pb.ImportRequest(chunk=pb.ImportChunk(
                            start_row=start,
                            data=data[start * ROW_BYTES:(start + 100) * ROW_BYTES])
                        ).SerializeToString()
                    half.set()
                    time.sleep(30)
                rpc = self.channel.stream_unary(A + "Import", request_serializer=lambda b: b,
                                                response_deserializer=lambda b: b)
                fut = rpc.future(msgs(), timeout=60)
                fut_holder["f"] = fut
                fut.result()
            except grpc.FutureCancelledError:
                pass
            except grpc.RpcError:
                pass
        t = threading.Thread(target=run, daemon=True)
        t.start()
        self.assertTrue(half.wait(20))
        while "f" not in fut_holder:
            time.sleep(0.01)
        fut_holder["f"].cancel()
        t.join(10)
        self.assert_serving()


def print_table():
    print("| # | request | expected status | expected message |")
    print("| --- | --- | --- | --- |")
    for i, (what, method, _, code, message) in enumerate(CASES, 1):
        msg = message if message is not None else ("(a message naming the value)"
                                                   if code != OK else "(the rows' bytes)")
        print("| %d | %s (`%s`) | %s | %s |" % (i, what, method.rsplit("/", 1)[-1], code.name,
                                               msg.replace("|", "\\|")))
    print("| %d | Lookup with a deadline already passed | DEADLINE_EXCEEDED | |" % (len(CASES) + 1))
    print("| %d | Import cancelled by the client mid-stream | (cancelled) | the previous "
          "version keeps serving |" % (len(CASES) + 2))


def main():
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--server-bin")
    p.add_argument("--pydir")
    p.add_argument("--print-table", action="store_true")
    ARGS, rest = p.parse_known_args()
    if ARGS.print_table:
        print_table()
        return
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)


if __name__ == "__main__":
    main()
