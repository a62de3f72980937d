#!/usr/bin/env python3
"""checkpoint_test.py: `engramctl import --checkpoint` and `verify
--checkpoint` on a small DeepSeek-V4.1-shaped checkpoint (made by
make_v41_checkpoint.py: index, two shard files, layer 1's weight and scale
in different files) against a real engram-server holding the tiny V4.1
manifest. Rows served must be the checkpoint's codes followed by its
scales, byte for byte; verify must match, and find a changed scale; a
checkpoint that is not right is refused before anything is imported."""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import unittest

import abuse_test as h   # the harness: Server, raw messages
from abuse_test import L, NF, OK, lookup_req

HERE = os.path.dirname(os.path.abspath(__file__))
MANIFEST = os.path.join(HERE, "..", "..", "deploy", "examples", "tiny-deepseek-v4.1.json")
DIM, NS, RB = 256, 8, 264


def read_tensor(path, name):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
        b, e = hdr[name]["data_offsets"]
        f.seek(8 + n + b)
        return f.read(e - b)


def packed_rows(ckpt, layer):
    with open(os.path.join(ckpt, "model.safetensors.index.json")) as f:
        wm = json.load(f)["weight_map"]
    wn, sn = "layers.%d.engram.embed.weight" % layer, "layers.%d.engram.embed.scale" % layer
    w = read_tensor(os.path.join(ckpt, wm[wn]), wn)
    s = read_tensor(os.path.join(ckpt, wm[sn]), sn)
    return lambda r: w[r * DIM:(r + 1) * DIM] + s[r * NS:(r + 1) * NS]


class CheckpointTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="engram-ckpt-")
        cls.ckpt = os.path.join(cls.tmp, "ckpt")
        out = subprocess.run([sys.executable, os.path.join(HERE, "make_v41_checkpoint.py"),
                              cls.ckpt], stdout=subprocess.PIPE, check=True).stdout
        cls.rows = {int(k): v for k, v in json.loads(out).items()}
        cls.srv = h.Server(os.path.join(cls.tmp, "data")).start()
        cls.ctl_ok("put-manifest", MANIFEST)

    @classmethod
    def tearDownClass(cls):
        try:
            assert cls.srv.stop() == 0, cls.srv.log_tail()
        finally:
            cls.srv.cleanup()
            shutil.rmtree(cls.tmp, ignore_errors=True)

    @classmethod
    def ctl(cls, *args):
        return subprocess.run([h.ARGS.engramctl, "--server", cls.srv.address] + list(args),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True)

    @classmethod
    def ctl_ok(cls, *args):
        r = cls.ctl(*args)
        if r.returncode != 0:
            raise AssertionError("engramctl %s: %d %s" % (args, r.returncode, r.stderr))
        return r

    def copy(self, name):
        dst = os.path.join(self.tmp, name)
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(self.ckpt, dst)
        return dst

    def test_1_import_and_serve_both_layers(self):
        for layer in (1, 14):
            r = self.ctl_ok("import", "--manifest", "tiny-v41", "--layer", str(layer),
                            "--checkpoint", self.ckpt)
            self.assertIn("imported tiny-v41.l%d: %d rows of 264 bytes" % (layer, self.rows[layer]),
                          r.stdout)
            row = packed_rows(self.ckpt, layer)
            want = [0, 1, self.rows[layer] - 1, 12345, 12345, 777]
            code, details, reply = self.srv.unary(L, lookup_req("tiny-v41.l%d" % layer, want))
            self.assertEqual(code, OK, details)
            self.assertEqual(h.pb.LookupResponse.FromString(reply).data,
                             b"".join(row(r) for r in want))
        info = self.srv.table_info("tiny-v41.l1")
        self.assertEqual((info.dtype, info.dim, info.row_bytes), ("mxfp8_e4m3", DIM, RB))

    def test_2_verify_against_the_checkpoint(self):
        r = self.ctl("verify", "--table", "tiny-v41.l14", "--checkpoint", self.ckpt, "--layer", "14")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("file %s: %d rows" % (self.ckpt, self.rows[14]), r.stdout)
        # one scale changed (to another valid scale): a mismatch, exit 1
        bad = self.copy("changed")
        path = os.path.join(bad, "model-00002-of-00002.safetensors")
        with open(path, "r+b") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            b = json.loads(f.read(n))["layers.14.engram.embed.scale"]["data_offsets"][0]
            f.seek(8 + n + b + 5)
            old = f.read(1)[0]
            f.seek(8 + n + b + 5)
            f.write(bytes([old + 1 if old < 134 else old - 1]))
        r = self.ctl("verify", "--table", "tiny-v41.l14", "--checkpoint", bad, "--layer", "14")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("verify: 1 mismatch found", r.stderr)

    def test_3_refusals_change_nothing(self):
        before = self.srv.table_info("tiny-v41.l1")
        # a layer whose tensors the index does not name
        r = self.ctl("verify", "--table", "tiny-v41.l1", "--checkpoint", self.ckpt, "--layer", "2")
        self.assertEqual(r.returncode, 2)
        self.assertIn('model.safetensors.index.json names no tensor "layers.2.engram.embed.weight"',
                      r.stderr)
        # an index that points outside the directory
        bad = self.copy("escape")
        idx = os.path.join(bad, "model.safetensors.index.json")
        with open(idx) as f:
            doc = json.load(f)
        doc["weight_map"]["layers.1.engram.embed.scale"] = "../../etc/passwd"
        with open(idx, "w") as f:
            json.dump(doc, f)
        r = self.ctl("import", "--manifest", "tiny-v41", "--layer", "1", "--checkpoint", bad)
        self.assertEqual(r.returncode, 1)         # a file error, as for import --file
        self.assertIn('the index maps "layers.1.engram.embed.scale" to ../../etc/passwd, not a '
                      "file name in the checkpoint's directory", r.stderr)
        # a NaN code in the weights: the server refuses it by row and column
        nan = self.copy("nan")
        path = os.path.join(nan, "model-00001-of-00002.safetensors")
        with open(path, "r+b") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            b = json.loads(f.read(n))["layers.1.engram.embed.weight"]["data_offsets"][0]
            f.seek(8 + n + b + 3000 * DIM + 17)
            f.write(b"\xff")
        r = self.ctl("import", "--manifest", "tiny-v41", "--layer", "1", "--checkpoint", nan)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn('row 3000 column 17 of table "tiny-v41.l1" is 0xff, a NaN E4M3 code', r.stderr)
        after = self.srv.table_info("tiny-v41.l1")
        self.assertEqual((after.version, after.checksum), (before.version, before.checksum))
        # --checkpoint without --manifest, or with --file
        r = self.ctl("import", "--table", "x", "--checkpoint", self.ckpt, "--layer", "1")
        self.assertEqual(r.returncode, 2)
        self.assertIn("--checkpoint goes with --manifest MODEL --layer L", r.stderr)


if __name__ == "__main__":
    h.run(("--engramctl",))
