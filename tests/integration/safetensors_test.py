#!/usr/bin/python3
"""engramctl import of .safetensors tensors and .npy files, end to end.

One engram-server (temporary directory, a free loopback port) gets one
table per supported dtype from a safetensors file generated at test time
(make_safetensors.py) and one per dtype from .npy files; every table is
read back whole with a raw grpcio Lookup (rows in a shuffled order) and
must equal the file's bytes, and its checksum must be the CRC-32 of them.
The manifest form (--manifest/--layer) replaces a model's layer table.
Bad inputs (missing tensor, 3-D tensor, unsupported dtype, dtype against
--dtype or the manifest, rows against the manifest, header length past the
end of the file or over the limit, malformed JSON, a header that is not an
object, data_offsets inconsistent with the shape or past the data) must
fail with their exact message and exit code and change nothing on the
server. A terminal gets a progress bar.

usage: safetensors_test.py --server-bin PATH --engramctl PATH --pydir DIR
"""
import argparse
import json
import os
import pty
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import unittest
import zlib

import grpc
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_safetensors as mk  # noqa: E402

ARGS = None
ROWS, DIM = 1000, 64
MANIFEST = {"name": "stm", "engram_vocab_size": [50, 50], "max_ngram_size": 3,
            "n_embed_per_ngram": 2 * DIM, "n_head_per_ngram": 2, "layer_ids": [1, 4],
            "pad_id": 2, "seed": 0, "dtype": "bf16",
            "compression": {"lookup_table": list(range(10))},
            "tables": {"1": "stm.l1", "4": "stm.l4"}}


class SafetensorsImportTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        sys.path.insert(0, ARGS.pydir)
        from engram.v1 import engram_pb2
        cls.pb = engram_pb2
        cls.tmp = tempfile.mkdtemp(prefix="engram-safetensors-")
        cls.files = os.path.join(cls.tmp, "files")
        subprocess.run(["/usr/bin/python3", mk.__file__, cls.files, "--rows", str(ROWS),
                        "--dim", str(DIM)], check=True)
        cls.start_server()
        cls.channel = grpc.insecure_channel("127.0.0.1:" + cls.port)
        cls.lookup = cls.channel.unary_unary(
            "/engram.v1.Lookup/Lookup",
            request_serializer=cls.pb.LookupRequest.SerializeToString,
            response_deserializer=cls.pb.LookupResponse.FromString)
        cls.get_table = cls.channel.unary_unary(
            "/engram.v1.Admin/GetTable",
            request_serializer=cls.pb.GetTableRequest.SerializeToString,
            response_deserializer=cls.pb.TableInfo.FromString)
        cls.list_tables = cls.channel.unary_unary(
            "/engram.v1.Admin/ListTables",
            request_serializer=cls.pb.ListTablesRequest.SerializeToString,
            response_deserializer=cls.pb.ListTablesResponse.FromString)

    @classmethod
    def start_server(cls):
        port_file = os.path.join(cls.tmp, "port")
        cls.log = open(os.path.join(cls.tmp, "server.log"), "w")
        cls.proc = subprocess.Popen(
            [ARGS.server_bin, "--data", os.path.join(cls.tmp, "data"), "--listen",
             "127.0.0.1:0", "--port-file", port_file, "--threads", "1"],
            stdout=cls.log, stderr=cls.log)
        deadline = time.time() + 20
        cls.port = ""
        while not cls.port:
            if time.time() > deadline or cls.proc.poll() is not None:
                raise RuntimeError("engram-server did not start")
            time.sleep(0.05)
            if os.path.exists(port_file):
                with open(port_file) as f:
                    cls.port = f.read().strip()

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        cls.proc.send_signal(signal.SIGTERM)
        rc = cls.proc.wait(timeout=30)
        cls.log.close()
        shutil.rmtree(cls.tmp)
        if rc != 0:
            raise RuntimeError("engram-server exited with %d" % rc)

    def ctl(self, *args, **kw):
        return subprocess.run([ARGS.engramctl, "--server", "127.0.0.1:" + self.port] +
                              list(args), capture_output=True, text=True, timeout=60, **kw)

    def path(self, name):
        return os.path.join(self.files, name)

    def assert_table_holds(self, table, data, dtype, dim, version=1):
        """The table is exactly `data` (read back whole, rows shuffled)."""
        info = self.get_table(self.pb.GetTableRequest(name=table))
        self.assertEqual((info.dtype, info.dim, info.version), (dtype, dim, version))
        self.assertEqual(info.checksum, zlib.crc32(data))
        rb = info.row_bytes
        self.assertEqual(info.rows * rb, len(data))
        rows = list(range(info.rows))
        random.Random(table).shuffle(rows)
        resp = self.lookup(self.pb.LookupRequest(table=table, rows=rows))
        want = b"".join(data[r * rb:(r + 1) * rb] for r in rows)
        self.assertEqual(resp.data, want)

    def snapshot(self):
        """Every table's name, version and checksum: what a refusal must
        leave as it was."""
        tables = self.list_tables(self.pb.ListTablesRequest()).tables
        return sorted((t.name, t.version, t.checksum) for t in tables)

    # ---- imports that succeed ----------------------------------------------

    def test_every_dtype_from_safetensors(self):
        for seed, dtype in enumerate(mk.DTYPES):
            data = mk.tensor_for(dtype, ROWS, DIM, seed).tobytes()
            out = self.ctl("import", "--file", self.path("all.safetensors"), "--tensor",
                           "emb." + dtype, "--table", "st." + dtype)
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertIn("imported st.%s: %d rows of %d bytes, version 1, checksum %08x"
                          % (dtype, ROWS, len(data) // ROWS, zlib.crc32(data)), out.stdout)
            self.assert_table_holds("st." + dtype, data, dtype, DIM)

    def test_every_dtype_from_npy(self):
        for seed, dtype in enumerate(mk.DTYPES):
            data = mk.tensor_for(dtype, ROWS, DIM, seed).tobytes()
            out = self.ctl("import", "--file", self.path(dtype + ".npy"), "--table",
                           "npy." + dtype, "--dim", str(DIM), "--dtype", dtype)
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assert_table_holds("npy." + dtype, data, dtype, DIM)

    def test_tensor_with_matching_dim_and_dtype(self):
        data = mk.tensor_for("f16", ROWS, DIM, 1).tobytes()
        out = self.ctl("import", "--file", self.path("all.safetensors"), "--tensor",
                       "emb.f16", "--table", "st.checked", "--dim", str(DIM), "--dtype", "f16")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assert_table_holds("st.checked", data, "f16", DIM)

    def manifest_setup(self):
        """The model stm with synthetic tables; returns layer 1's rows."""
        if not hasattr(type(self), "stm_rows"):
            path = os.path.join(self.tmp, "stm.json")
            with open(path, "w") as f:
                json.dump(MANIFEST, f)
            for args in (["put-manifest", path],
                         ["import-synthetic", "--manifest", "stm", "--seed", "7"]):
                out = self.ctl(*args)
                self.assertEqual(out.returncode, 0, out.stderr)
            type(self).stm_rows = self.get_table(self.pb.GetTableRequest(name="stm.l1")).rows
            rows = type(self).stm_rows
            good = mk.tensor_for("bf16", rows, DIM, 42)
            tensors = [("emb", "BF16", good.shape, good.tobytes()),
                       ("emb_f32", "F32", (rows, DIM), bytes(4 * rows * DIM)),
                       ("emb_short", "BF16", (rows - 1, DIM), bytes(2 * (rows - 1) * DIM)),
                       ("emb_wide", "BF16", (rows, 2 * DIM), bytes(4 * rows * DIM))]
            mk.write_safetensors(self.path("stm.safetensors"), tensors)
        return type(self).stm_rows

    def test_manifest_form(self):
        rows = self.manifest_setup()
        before = self.get_table(self.pb.GetTableRequest(name="stm.l1"))
        out = self.ctl("import", "--file", self.path("stm.safetensors"), "--tensor", "emb",
                       "--manifest", "stm", "--layer", "1")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("imported stm.l1: %d rows of %d bytes, version %d"
                      % (rows, 2 * DIM, before.version + 1), out.stdout)
        data = mk.tensor_for("bf16", rows, DIM, 42).tobytes()
        self.assert_table_holds("stm.l1", data, "bf16", DIM, before.version + 1)

    def test_manifest_refusals(self):
        rows = self.manifest_setup()
        f = self.path("stm.safetensors")
        by = "model stm's manifest (layer 1)"
        rows4 = self.get_table(self.pb.GetTableRequest(name="stm.l4")).rows
        cases = [
            ("emb_f32", "1", 1, "engramctl: INVALID_ARGUMENT: %s: tensor \"emb_f32\" is F32 "
             "(f32); %s says bf16" % (f, by)),
            ("emb_short", "1", 1, "engramctl: INVALID_ARGUMENT: %s: tensor \"emb_short\" has "
             "%d rows; %s says %d" % (f, rows - 1, by, rows)),
            ("emb_wide", "1", 1, "engramctl: INVALID_ARGUMENT: %s: tensor \"emb_wide\" has "
             "dim %d; %s says %d" % (f, 2 * DIM, by, DIM)),
            ("emb", "4", 1, "engramctl: INVALID_ARGUMENT: %s: tensor \"emb\" has %d rows; "
             "model stm's manifest (layer 4) says %d" % (f, rows, rows4)),
            ("emb", "2", 2, "engramctl: INVALID_ARGUMENT: import: layer 2 is not in model "
             "stm's layer_ids (see engramctl --help)"),
        ]
        before = self.snapshot()
        for tensor, layer, rc, msg in cases:
            out = self.ctl("import", "--file", f, "--tensor", tensor, "--manifest", "stm",
                           "--layer", layer)
            self.assertEqual((out.returncode, out.stderr.strip()), (rc, msg))
            self.assertEqual(self.snapshot(), before)
        npy = self.path("bf16.npy")      # the manifest form takes .npy files too
        out = self.ctl("import", "--file", npy, "--manifest", "stm", "--layer", "1")
        self.assertEqual((out.returncode, out.stderr.strip()),
                         (1, "engramctl: INVALID_ARGUMENT: %s: holds %d rows; %s says %d"
                          % (npy, ROWS, by, rows)))
        self.assertEqual(self.snapshot(), before)
        out = self.ctl("import", "--file", f, "--tensor", "emb", "--manifest", "stm",
                       "--layer", "4", "--table", "x")
        self.assertEqual(out.returncode, 2)
        self.assertIn("--manifest takes the table, dim and dtype from the manifest",
                      out.stderr)

    def test_progress_bar_on_a_terminal(self):
        master, slave = pty.openpty()
        proc = subprocess.Popen(
            [ARGS.engramctl, "--server", "127.0.0.1:" + self.port, "import", "--file",
             self.path("all.safetensors"), "--tensor", "emb.u8", "--table", "st.pty"],
            stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        proc.communicate(timeout=60)
        text = b""
        try:
            while True:
                chunk = os.read(master, 4096)
                if not chunk:
                    break
                text += chunk
        except OSError:      # EIO once the writer has gone
            pass
        os.close(master)
        self.assertEqual(proc.returncode, 0)
        self.assertIn(b"\rimport st.pty [" + b"#" * 30 + b"] 1000/1000 rows 100%", text)

    # ---- refusals ----------------------------------------------------------

    def refuse(self, file, tensor, rc, message, *extra):
        before = self.snapshot()
        args = ["import", "--file", file, "--table", "st.refused"]
        args += ["--tensor", tensor] if tensor else []
        out = self.ctl(*(args + list(extra)))
        self.assertEqual((out.returncode, out.stderr.strip()), (rc, message))
        self.assertEqual(self.snapshot(), before)

    def bad_file(self, name, header, data=b"", length=None):
        path = os.path.join(self.tmp, name)
        mk.write_raw(path, header if isinstance(header, bytes) else json.dumps(header).encode(),
                     data, length)
        return path

    def test_refusals_of_the_tensor(self):
        f = self.path("all.safetensors")
        names = ", ".join(["emb." + d for d in mk.DTYPES] + ["cube", "steps"])
        self.refuse(f, "nope", 1, "engramctl: NOT_FOUND: %s: no tensor \"nope\"; the file "
                    "holds 12: %s" % (f, names))
        self.refuse(f, "cube", 1, "engramctl: INVALID_ARGUMENT: %s: tensor \"cube\" has "
                    "shape [4, 5, 6]; want a non-empty 2-D [rows, dim]" % f)
        self.refuse(f, "steps", 1, "engramctl: INVALID_ARGUMENT: %s: tensor \"steps\" has "
                    "dtype I64, which engram does not store (supported: BF16, F16, F32, F64, "
                    "I8, U8, I16, I32, F8_E4M3, F8_E5M2)" % f)
        self.refuse(f, "emb.f32", 1, "engramctl: INVALID_ARGUMENT: %s: tensor \"emb.f32\" is "
                    "F32 (f32); --dtype says bf16" % f, "--dtype", "bf16")
        self.refuse(f, "emb.f32", 1, "engramctl: INVALID_ARGUMENT: %s: tensor \"emb.f32\" has "
                    "dim 64; --dim says 32" % f, "--dim", "32")
        self.refuse(f, None, 2, "engramctl: INVALID_ARGUMENT: import: %s is a safetensors "
                    "file; name the tensor with --tensor (see engramctl --help)" % f)
        self.refuse(f, "emb.u8", 2, "engramctl: INVALID_ARGUMENT: --progress-every: 'x' is "
                    "not a non-negative integer (see engramctl --help)", "--progress-every", "x")

    def test_refusals_of_the_header(self):
        good = {"w": {"dtype": "F32", "shape": [10, 4], "data_offsets": [0, 160]}}
        data = bytes(160)
        cases = [
            ("past_end.safetensors", json.dumps(good).encode(), data, 1000000,
             "header length 1000000 runs past the end of the file (%d bytes follow the "
             "length)" % (len(json.dumps(good)) + 160)),
            ("huge.safetensors", b"{}", b"", 1 << 40,
             "header length 1099511627776 is over the 100000000-byte limit (not a "
             "safetensors file?)"),
            ("malformed.safetensors", b'{"w": {"dtype": "F32",', data, None,
             "header is not valid JSON: string or '}' expected near end of file (at "
             "header byte 22)"),
            ("array.safetensors", b"[1, 2]", b"", None, "header is not a JSON object"),
            ("offsets.safetensors",
             {"w": {"dtype": "F32", "shape": [10, 4], "data_offsets": [0, 100]}}, data, None,
             'tensor "w": data_offsets [0, 100) hold 100 bytes; shape [10, 4] of F32 needs 160'),
            ("beyond.safetensors",
             {"w": {"dtype": "F32", "shape": [10, 4], "data_offsets": [40, 200]}}, data, None,
             'tensor "w": data_offsets end 200 is past the end of the data section (160 '
             'bytes)'),
            ("reversed.safetensors",
             {"w": {"dtype": "F32", "shape": [10, 4], "data_offsets": [160, 0]}}, data, None,
             'tensor "w": data_offsets [160, 0) end before they begin'),
            ("noshape.safetensors", {"w": {"dtype": "F32", "data_offsets": [0, 160]}}, data,
             None, 'tensor "w": "shape" is missing or not an array'),
            ("negative.safetensors",
             {"w": {"dtype": "F32", "shape": [-10, 4], "data_offsets": [0, 160]}}, data, None,
             'tensor "w": shape[0] is not a non-negative integer'),
            ("dup.safetensors", b'{"w": {}, "w": {}}', b"", None,
             "header is not valid JSON: duplicate object key near '\"w\"' (at header byte 13)"),
        ]
        for name, header, body, length, message in cases:
            with self.subTest(name):
                path = self.bad_file(name, header, body, length)
                self.refuse(path, "w", 1, "engramctl: INVALID_ARGUMENT: %s: %s"
                            % (path, message))
        short = os.path.join(self.tmp, "short.safetensors")
        with open(short, "wb") as f:
            f.write(b"\x02\x00\x00")
        self.refuse(short, "w", 1, "engramctl: INVALID_ARGUMENT: %s: 3 bytes is too short "
                    "for a safetensors file (the header length alone is 8 bytes)" % short)


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--server-bin", required=True)
    ap.add_argument("--engramctl", required=True)
    ap.add_argument("--pydir", required=True)
    ARGS, rest = ap.parse_known_args()
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)


if __name__ == "__main__":
    main()
