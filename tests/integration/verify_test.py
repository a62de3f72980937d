#!/usr/bin/python3
"""Table checksums end to end: XXH3-64 recorded at import, the import
trailer, Admin.Verify and engramctl verify, against a real engram-server.

One server (temporary directory, a free loopback port, a resident budget
that holds the small tables but not "big", so both the RAM copy and the
RocksDB-only path are verified) gets a raw file, one tensor of a
.safetensors file and an .npy file through engramctl import. The xxh3 each
version records must equal python3-xxhash's XXH3-64 of the file's bytes
(an implementation independent of the server's). Then:

  - engramctl verify, with and without --file (raw, .npy, safetensors),
    prints the exact lines and exits 0 on a match, 1 on a mismatch (wrong
    file contents, wrong shape), 2 on an RPC or file error;
  - Admin.Verify spoken from Python streams progress and a final result;
  - an import whose trailer states a wrong checksum is refused with
    DATA_LOSS naming both values, nothing is activated, the previous
    version still serves and no temporary file is left; a trailer before
    the last row or a chunk after it is INVALID_ARGUMENT;
  - after a restart every recorded checksum is the same and verify passes;
  - a row flipped or deleted in the RocksDB directory of the stopped
    server (corrupt_rows) is found by verify, with the checksums the
    damaged rows must hash to computed here;
  - metadata written before xxh3 existed (corrupt_rows forget-xxh3) still
    loads: xxh3 0 is "unknown", and verify checks the CRC-32 alone.

usage: verify_test.py --server-bin PATH --engramctl PATH --corrupt-bin PATH --pydir DIR
"""
import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import zlib

import grpc
import numpy as np
import xxhash

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_safetensors as mk  # noqa: E402

ARGS = None
BIG_ROWS, ST_ROWS, NPY_ROWS = 4000, 1000, 500


def hx(x):
    return "%016x" % x


def xxh3(data):
    return xxhash.xxh3_64_intdigest(data)


def random_bytes(seed, n):
    return random.Random(seed).randbytes(n)


class VerifyTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        sys.path.insert(0, ARGS.pydir)
        from engram.v1 import engram_pb2
        cls.pb = engram_pb2
        cls.tmp = tempfile.mkdtemp(prefix="engram-verify-")
        cls.data = os.path.join(cls.tmp, "data")
        cls.make_files()
        cls.start_server()
        for args in (["--table", "big", "--file", cls.big_file, "--dim", "64", "--dtype", "u8"],
                     ["--table", "st", "--file", cls.st_file, "--tensor", "good"],
                     ["--table", "npy", "--file", cls.npy_file, "--dim", "64", "--dtype", "u8"]):
            out = subprocess.run([ARGS.engramctl, "--server", cls.addr, "import"] + args,
                                 capture_output=True, text=True, timeout=60)
            if out.returncode:
                raise RuntimeError("import failed: " + out.stderr)

    @classmethod
    def make_files(cls):
        """big: raw u8 rows; st: two BF16 tensors of one shape; npy."""
        cls.big = random_bytes(1, BIG_ROWS * 64)
        cls.big_file = os.path.join(cls.tmp, "big.raw")
        cls.big2 = bytearray(cls.big)
        cls.big2[1234] ^= 0x10           # one bit of row 19
        cls.big2_file = os.path.join(cls.tmp, "big2.raw")
        for path, data in ((cls.big_file, cls.big), (cls.big2_file, cls.big2)):
            with open(path, "wb") as f:
                f.write(data)
        cls.good = mk.tensor_for("bf16", ST_ROWS, 32, 1).tobytes()
        other = mk.tensor_for("bf16", ST_ROWS, 32, 2).tobytes()
        cls.st_file = os.path.join(cls.tmp, "two.safetensors")
        mk.write_safetensors(cls.st_file, [("good", "BF16", (ST_ROWS, 32), cls.good),
                                           ("other", "BF16", (ST_ROWS, 32), other)])
        arr = np.frombuffer(random_bytes(3, NPY_ROWS * 64), dtype="|u1").reshape(NPY_ROWS, 64)
        cls.npy = arr.tobytes()
        cls.npy_file = os.path.join(cls.tmp, "small.npy")
        np.save(cls.npy_file, arr)

    @classmethod
    def start_server(cls):
        port_file = os.path.join(cls.tmp, "port")
        if os.path.exists(port_file):
            os.unlink(port_file)
        cls.log = open(os.path.join(cls.tmp, "server.log"), "a")
        cls.proc = subprocess.Popen(
            [ARGS.server_bin, "--data", cls.data, "--listen", "127.0.0.1:0", "--port-file",
             port_file, "--threads", "1", "--resident-budget", "200000"],
            stdout=cls.log, stderr=cls.log)
        deadline = time.time() + 20
        port = ""
        while not port:
            if time.time() > deadline or cls.proc.poll() is not None:
                raise RuntimeError("engram-server did not start")
            time.sleep(0.05)
            if os.path.exists(port_file):
                with open(port_file) as f:
                    port = f.read().strip()
        cls.addr = "127.0.0.1:" + port
        cls.channel = grpc.insecure_channel(cls.addr)
        pb = cls.pb
        cls.get_table = cls.channel.unary_unary(
            "/engram.v1.Admin/GetTable", request_serializer=pb.GetTableRequest.SerializeToString,
            response_deserializer=pb.TableInfo.FromString)
        cls.lookup = cls.channel.unary_unary(
            "/engram.v1.Lookup/Lookup", request_serializer=pb.LookupRequest.SerializeToString,
            response_deserializer=pb.LookupResponse.FromString)
        cls.import_rpc = cls.channel.stream_unary(
            "/engram.v1.Admin/Import", request_serializer=pb.ImportRequest.SerializeToString,
            response_deserializer=pb.ImportResponse.FromString)
        cls.verify_rpc = cls.channel.unary_stream(
            "/engram.v1.Admin/Verify", request_serializer=pb.VerifyRequest.SerializeToString,
            response_deserializer=pb.VerifyProgress.FromString)

    @classmethod
    def stop_server(cls):
        cls.channel.close()
        cls.proc.send_signal(signal.SIGTERM)
        rc = cls.proc.wait(timeout=30)
        cls.log.close()
        if rc != 0:
            raise RuntimeError("engram-server exited with %d" % rc)

    @classmethod
    def tearDownClass(cls):
        cls.stop_server()
        shutil.rmtree(cls.tmp)

    def ctl(self, *args):
        return subprocess.run([ARGS.engramctl, "--server", self.addr] + list(args),
                              capture_output=True, text=True, timeout=60)

    def info(self, table):
        return self.get_table(self.pb.GetTableRequest(name=table))

    def verify_line(self, table, version, data, rows, resident=False, stored=None, end="match"):
        """engramctl verify's line for a server whose rows are `data`."""
        sx, sc = stored if stored else (xxh3(data), zlib.crc32(data))
        return ("table %s version %d on %s: %d of %d rows read, xxh3 %s crc32 %08x; recorded "
                "xxh3 %s crc32 %08x%s: %s\n" % (table, version, self.addr, rows, rows,
                                               hx(xxh3(data)), zlib.crc32(data), hx(sx), sc,
                                               "; RAM copy compared" if resident else "", end))

    # ---- recorded at import --------------------------------------------------

    def test_1_xxh3_recorded_at_import(self):
        for table, data, resident in (("big", self.big, False), ("st", self.good, True),
                                      ("npy", self.npy, True)):
            info = self.info(table)
            self.assertEqual(info.xxh3, xxh3(data), table)
            self.assertEqual(info.checksum, zlib.crc32(data), table)
            self.assertEqual(info.resident, resident, table)
            self.assertEqual([v.xxh3 for v in info.versions], [xxh3(data)], table)
        out = self.ctl("table", "big")
        self.assertIn("xxh3: %s\n" % hx(xxh3(self.big)), out.stdout)

    # ---- engramctl verify ------------------------------------------------------

    def test_2_verify_matches(self):
        out = self.ctl("verify", "--table", "big")
        self.assertEqual((out.returncode, out.stdout), (0, self.verify_line("big", 1, self.big,
                                                                            BIG_ROWS)))
        out = self.ctl("verify", "--table", "st")
        self.assertEqual((out.returncode, out.stdout),
                         (0, self.verify_line("st", 1, self.good, ST_ROWS, resident=True)))
        out = self.ctl("verify", "--table", "big", "--version", "1", "--file", self.big_file)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertTrue(out.stdout.endswith("file %s: %d rows, xxh3 %s crc32 %08x\n  %s: match\n" % (
            self.big_file, BIG_ROWS, hx(xxh3(self.big)), zlib.crc32(self.big), self.addr)),
            out.stdout)
        out = self.ctl("verify", "--table", "st", "--file", self.st_file, "--tensor", "good")
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        out = self.ctl("verify", "--table", "npy", "--file", self.npy_file)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)

    def test_3_verify_finds_other_files(self):
        out = self.ctl("verify", "--table", "big", "--file", self.big2_file)
        self.assertEqual(out.returncode, 1, out.stdout + out.stderr)
        self.assertIn("file %s: %d rows, xxh3 %s crc32 %08x\n  %s: MISMATCH: its stored rows hash "
                      "to xxh3 %s crc32 %08x (%d rows)\n" % (
                          self.big2_file, BIG_ROWS, hx(xxh3(bytes(self.big2))),
                          zlib.crc32(self.big2), self.addr, hx(xxh3(self.big)),
                          zlib.crc32(self.big), BIG_ROWS), out.stdout)
        self.assertEqual(out.stderr, "engramctl: verify: 1 mismatch found\n")
        out = self.ctl("verify", "--table", "st", "--file", self.st_file, "--tensor", "other")
        self.assertEqual(out.returncode, 1, out.stdout + out.stderr)
        self.assertIn("MISMATCH: its stored rows hash to xxh3 %s" % hx(xxh3(self.good)), out.stdout)
        out = self.ctl("verify", "--table", "big", "--file", self.npy_file)
        self.assertEqual(out.returncode, 1, out.stdout + out.stderr)
        self.assertIn("file %s: %d rows of dim 64 u8; table big version 1 has %d rows of dim 64 "
                      "u8: MISMATCH\n" % (self.npy_file, NPY_ROWS, BIG_ROWS), out.stdout)

    def test_4_verify_errors(self):
        cases = [
            (["--table", "nope"],
             "engramctl: NOT_FOUND: verify on %s: table \"nope\" not found\n" % self.addr),
            (["--table", "big", "--version", "9"],
             "engramctl: NOT_FOUND: verify on %s: table \"big\" has no version 9 on this "
             "server\n" % self.addr),
            (["--table", "big", "--tensor", "good"],
             "engramctl: INVALID_ARGUMENT: verify: --tensor goes with --file (see engramctl "
             "--help)\n"),
            (["--table", "st", "--file", self.st_file],
             "engramctl: INVALID_ARGUMENT: verify: %s is a safetensors file; name the tensor "
             "with --tensor (see engramctl --help)\n" % self.st_file),
            (["--table", "big", "--file", "/nonexistent.raw"],
             "engramctl: NOT_FOUND: /nonexistent.raw: No such file or directory\n"),
        ]
        for args, err in cases:
            out = self.ctl("verify", *args)
            self.assertEqual(out.returncode, 2, args)
            self.assertTrue(out.stderr.endswith(err), (args, out.stderr))

    # ---- Admin.Verify on the wire ---------------------------------------------------

    def test_5_verify_rpc(self):
        msgs = list(self.verify_rpc(self.pb.VerifyRequest(table="big"), timeout=30))
        self.assertGreaterEqual(len(msgs), 2)
        for m in msgs[:-1]:
            self.assertFalse(m.done)
            self.assertEqual((m.table, m.version, m.rows_total, m.row_bytes),
                             ("big", 1, BIG_ROWS, 64))
        last = msgs[-1]
        self.assertTrue(last.done and last.match, last)
        self.assertEqual((last.rows_done, last.xxh3, last.crc32, last.stored_xxh3,
                          last.stored_crc32, last.resident, last.problem, last.rows, last.dim,
                          last.dtype, last.shard_count),
                         (BIG_ROWS, xxh3(self.big), zlib.crc32(self.big), xxh3(self.big),
                          zlib.crc32(self.big), False, "", BIG_ROWS, 64, "u8", 1))
        for req, code, msg in ((self.pb.VerifyRequest(table=""), grpc.StatusCode.INVALID_ARGUMENT,
                                "table name is empty"),
                               (self.pb.VerifyRequest(table="big", version=5),
                                grpc.StatusCode.NOT_FOUND,
                                "table \"big\" has no version 5 on this server")):
            with self.assertRaises(grpc.RpcError) as cm:
                list(self.verify_rpc(req, timeout=30))
            self.assertEqual((cm.exception.code(), cm.exception.details()), (code, msg))

    # ---- the import trailer -------------------------------------------------------------

    def import_stream(self, data, trailer=None, trailer_after=None, chunk_after=False):
        pb = self.pb
        yield pb.ImportRequest(header=pb.ImportHeader(table="big", rows=BIG_ROWS, dim=64,
                                                      dtype="u8"))
        half = BIG_ROWS // 2
        for start, end in ((0, half), (half, BIG_ROWS)):
            if trailer_after == start:
                yield pb.ImportRequest(trailer=pb.ImportTrailer(xxh3=trailer))
            yield pb.ImportRequest(chunk=pb.ImportChunk(start_row=start,
                                                        data=data[start * 64:end * 64]))
        if trailer is not None and trailer_after is None:
            yield pb.ImportRequest(trailer=pb.ImportTrailer(xxh3=trailer))
        if chunk_after:
            yield pb.ImportRequest(chunk=pb.ImportChunk(start_row=BIG_ROWS, data=data[:64]))

    def assert_v1_serving(self):
        info = self.info("big")
        self.assertEqual((info.version, info.xxh3, len(info.versions)), (1, xxh3(self.big), 1))
        resp = self.lookup(self.pb.LookupRequest(table="big", rows=[0, 19]))
        self.assertEqual(resp.data, self.big[:64] + self.big[19 * 64:20 * 64])
        for _ in range(50):      # the server removes its files as the call ends
            if not os.listdir(os.path.join(self.data, "import-tmp")):
                break
            time.sleep(0.05)
        self.assertEqual(os.listdir(os.path.join(self.data, "import-tmp")), [])

    def refused(self, requests, code, message):
        with self.assertRaises(grpc.RpcError) as cm:
            self.import_rpc(requests, timeout=30)
        self.assertEqual((cm.exception.code(), cm.exception.details()), (code, message))
        self.assert_v1_serving()

    def test_6_import_trailer(self):
        new = random_bytes(2, BIG_ROWS * 64)
        wrong = xxh3(new) ^ 1
        self.refused(self.import_stream(new, trailer=wrong), grpc.StatusCode.DATA_LOSS,
                     "import of table \"big\": the %d rows received hash to xxh3 %s, the client "
                     "sent xxh3 %s for them; nothing was activated" % (BIG_ROWS, hx(xxh3(new)),
                                                                         hx(wrong)))
        self.refused(self.import_stream(new, trailer=xxh3(new), trailer_after=BIG_ROWS // 2),
                     grpc.StatusCode.INVALID_ARGUMENT,
                     "trailer arrived after %d of %d rows; send it after the last chunk"
                     % (BIG_ROWS // 2, BIG_ROWS))
        self.refused(self.import_stream(new, trailer=xxh3(new), chunk_after=True),
                     grpc.StatusCode.INVALID_ARGUMENT,
                     "chunk at row %d arrived after the trailer; the trailer comes last" % BIG_ROWS)
        resp = self.import_rpc(self.import_stream(new, trailer=xxh3(new)), timeout=30)
        self.assertEqual((resp.table.version, resp.table.xxh3), (2, xxh3(new)))
        type(self).big_v2 = new
        out = self.ctl("verify", "--table", "big", "--version", "1", "--file", self.big_file)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)   # retained v1 still intact

    # ---- restart and corruption -------------------------------------------------------

    def restart(self, *damage):
        type(self).stop_server()
        for d in damage:
            subprocess.run([ARGS.corrupt_bin, self.data] + list(d), check=True, timeout=60)
        type(self).start_server()

    def test_7_restart_keeps_checksums(self):
        before = {t: self.info(t) for t in ("big", "st", "npy")}
        self.restart()
        for t, b in before.items():
            a = self.info(t)
            self.assertEqual((a.version, a.xxh3, a.checksum, [v.xxh3 for v in a.versions]),
                             (b.version, b.xxh3, b.checksum, [v.xxh3 for v in b.versions]), t)
        out = self.ctl("verify", "--table", "big")
        self.assertEqual((out.returncode, out.stdout),
                         (0, self.verify_line("big", 2, self.big_v2, BIG_ROWS)))
        out = self.ctl("verify", "--table", "st", "--file", self.st_file, "--tensor", "good")
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)

    def test_8_verify_finds_damaged_rows(self):
        self.restart(["big", "2", "5", "flip"], ["npy", "1", "9", "delete"],
                     ["st", "1", "0", "forget-xxh3"])
        damaged = bytearray(self.big_v2)
        damaged[5 * 64] ^= 0xff
        damaged = bytes(damaged)
        stored = (xxh3(self.big_v2), zlib.crc32(self.big_v2))
        out = self.ctl("verify", "--table", "big")
        self.assertEqual(out.returncode, 1, out.stdout + out.stderr)
        self.assertEqual(out.stdout, self.verify_line(
            "big", 2, damaged, BIG_ROWS, stored=stored,
            end="MISMATCH: the stored rows hash to xxh3 %s crc32 %08x; recorded at import: xxh3 "
                "%s crc32 %08x" % (hx(xxh3(damaged)), zlib.crc32(damaged), hx(stored[0]),
                                   stored[1])))
        self.assertEqual(out.stderr, "engramctl: verify: 1 mismatch found\n")
        # A lookup still serves the damaged row: verify is how an operator finds out.
        resp = self.lookup(self.pb.LookupRequest(table="big", rows=[5]))
        self.assertEqual(resp.data, damaged[5 * 64:6 * 64])
        out = self.ctl("verify", "--table", "npy", "--file", self.npy_file)
        self.assertEqual(out.returncode, 1, out.stdout + out.stderr)
        self.assertIn(": 9 of %d rows read, " % NPY_ROWS, out.stdout)
        self.assertIn(": MISMATCH: row 9 is missing (the next stored row is 10)\n", out.stdout)
        self.assertIn("  %s: MISMATCH: its stored rows hash to xxh3 %s crc32 %08x (9 rows)\n" % (
            self.addr, hx(xxh3(self.npy[:9 * 64])), zlib.crc32(self.npy[:9 * 64])), out.stdout)
        self.assertEqual(out.stderr, "engramctl: verify: 2 mismatches found\n")
        # Metadata without xxh3 loads; the CRC-32 alone is compared.
        info = self.info("st")
        self.assertEqual((info.xxh3, info.checksum, info.resident),
                         (0, zlib.crc32(self.good), True))
        out = self.ctl("verify", "--table", "st", "--file", self.st_file, "--tensor", "good")
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertIn("; recorded xxh3 unknown crc32 %08x; RAM copy compared: match\n"
                      % zlib.crc32(self.good), out.stdout)


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--server-bin", required=True)
    ap.add_argument("--engramctl", required=True)
    ap.add_argument("--corrupt-bin", required=True)
    ap.add_argument("--pydir", required=True)
    ARGS, rest = ap.parse_known_args()
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)


if __name__ == "__main__":
    main()
