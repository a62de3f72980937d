#!/usr/bin/env python3
"""shipped_model_test.py: the shipped DeepSeek-V4.1-Flash manifest
(deploy/models/deepseek-v4.1-flash.json) through `engramctl compress-vocab
--manifest` and `engramctl hash`, and against a real engram-server.

The real compression table comes from the V4.1 tokenizer, which cannot be
fetched here. So the test writes a tokenizer.json of the same size (129,280
ids) whose keys collapse to exactly 99,092 compressed ids, with raw id c
keeping compressed id c below 99,092. Completing the template with it gives
a manifest with V4.1's real primes and multipliers; hashing the public
vectors' compressed sequences (F1, and F2 with its DEAD token) as raw ids
through it must give the public rows (tests/unit/dsv41_hash_vectors.h),
and the server must take it as a model of 264-byte rows whose layer 1
needs 384,006,168 rows. A tokenizer one key short is refused with
nothing written; the template itself is refused by `hash` with the command
that completes it; a table of the wrong size inlined by hand is refused by
the server's manifest parser.

usage: shipped_model_test.py --engramctl BIN --server-bin BIN --pydir DIR
"""
import json
import os
import re
import shutil
import subprocess
import tempfile
import unittest

import abuse_test as h   # the harness: Server

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
TEMPLATE = os.path.join(ROOT, "deploy", "models", "deepseek-v4.1-flash.json")
VECTORS = os.path.join(ROOT, "tests", "unit", "dsv41_hash_vectors.h")
IDS, COMPRESSED = 129280, 99092


def c_array(text, name):
    body = re.search(r"%s\[\d+\] = \{([^}]*)\}" % name, text).group(1)
    return [int(x) for x in body.replace("\n", " ").split(",") if x.strip()]


def write_tokenizer(path, keys):
    """A BPE tokenizer.json of IDS ids with `keys` distinct keys: id i < keys
    is "w<i>", every later id "W<i - keys>", which lowercases onto one of
    them, so compressed ids are numbered 0..keys-1 with id c -> c."""
    vocab = {("w%d" % i if i < keys else "W%d" % (i - keys)): i for i in range(IDS)}
    with open(path, "w") as f:
        json.dump({"model": {"type": "BPE", "vocab": vocab, "merges": []}}, f)


class ShippedModelTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="engram-shipped-")
        cls.tok = os.path.join(cls.tmp, "tokenizer.json")
        write_tokenizer(cls.tok, COMPRESSED)
        cls.full = os.path.join(cls.tmp, "deepseek-v4.1-flash.json")
        r = cls.ctl("compress-vocab", "--tokenizer", cls.tok, "--manifest", TEMPLATE,
                    "--out", cls.full)
        assert r.returncode == 0, r.stderr
        cls.compress_out = r.stdout
        text = open(VECTORS).read()
        cls.vec = {n: c_array(text, "dsv41_" + n) for n in
                   ("token_map", "f1_tokens", "f2_tokens", "f1_rows", "f2_rows")}

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    @staticmethod
    def ctl(*args, stdin=None, server=None):
        pre = ["--server", server] if server else []
        return subprocess.run([h.ARGS.engramctl] + pre + list(args), input=stdin,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def test_completed_manifest(self):
        self.assertEqual(self.compress_out,
                         "129280 token ids -> 99092 compressed ids (23.35%% fewer), rule v4.1; "
                         "wrote %s (a complete manifest)\n" % self.full)
        full, tmpl = json.load(open(self.full)), json.load(open(TEMPLATE))
        table = full.pop("compression")["lookup_table"]
        self.assertEqual(full, tmpl)   # everything else as shipped
        self.assertEqual(table, [i if i < COMPRESSED else i - COMPRESSED for i in range(IDS)])

    def hash_rows(self, layer, tokens):
        r = self.ctl("hash", "--manifest", self.full, "--layer", str(layer),
                     stdin=" ".join(map(str, tokens)) + "\n")
        self.assertEqual(r.returncode, 0, r.stderr)
        return [int(x) for x in r.stdout.split()]

    def check_vector(self, tokens, rows):
        # The vectors' compressed sequence, given as raw ids of this
        # tokenizer (raw c -> compressed c); DEAD (-1) stays DEAD.
        m = self.vec["token_map"]
        raw = [t if t < 0 else m[t] for t in tokens]
        want = {1: [], 14: []}
        for t in range(len(tokens)):           # layout [token][layer 1, 14][col]
            want[1] += rows[t * 48:t * 48 + 24]
            want[14] += rows[t * 48 + 24:t * 48 + 48]
        for layer in (1, 14):
            self.assertEqual(self.hash_rows(layer, raw), want[layer], "layer %d" % layer)

    def test_public_vectors_through_the_shipped_manifest(self):
        self.assertEqual(self.hash_rows(1, [self.vec["token_map"][0]])[0], 5702652)
        self.check_vector(self.vec["f1_tokens"], self.vec["f1_rows"])
        self.check_vector(self.vec["f2_tokens"], self.vec["f2_rows"])

    def test_wrong_size_refused_nothing_written(self):
        tok = os.path.join(self.tmp, "short.json")
        write_tokenizer(tok, COMPRESSED - 1)
        out = os.path.join(self.tmp, "short-manifest.json")
        r = self.ctl("compress-vocab", "--tokenizer", tok, "--manifest", TEMPLATE, "--out", out)
        self.assertEqual(r.returncode, 1)
        self.assertEqual(r.stderr,
                         "engramctl: INVALID_ARGUMENT: %s gives 99091 compressed ids under the "
                         "v4.1 rule, but %s states \"compressed_vocab_size\": 99092; this is not "
                         "the model's tokenizer (or not its rule), and hashing with it would "
                         "address other rows (every multiplier derives from that size); nothing "
                         "written\n" % (tok, TEMPLATE))
        self.assertFalse(os.path.exists(out))
        self.assertFalse(os.path.exists(out + ".tmp"))

    def test_template_alone_refused(self):
        r = self.ctl("hash", "--manifest", TEMPLATE, "--layer", "1", stdin="1 2 3\n")
        self.assertEqual(r.returncode, 1)
        self.assertIn('manifest: missing key "compression": this is a template whose table '
                      'comes from the model\'s tokenizer; complete it with engramctl '
                      'compress-vocab --tokenizer tokenizer.json --manifest TEMPLATE --out '
                      'MANIFEST', r.stderr)

    def test_server_geometry_and_size_check(self):
        srv = h.Server(os.path.join(self.tmp, "data")).start()
        try:
            r = self.ctl("put-manifest", self.full, server=srv.address)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(r.stdout.splitlines()[0],
                             "stored manifest deepseek-v4.1-flash version 1: 2 layers, dim 256, "
                             "mxfp8_e4m3, 264-byte rows")
            self.assertEqual(r.stdout.splitlines()[1], "tables not on the server yet: "
                             "deepseek-v4.1-flash.l1,deepseek-v4.1-flash.l14")
            # The geometry the model needs, as the client reports it against
            # a table of another size (layer 14's: unit_test_hash_v41).
            r = self.ctl("import-synthetic", "--table", "deepseek-v4.1-flash.l1", "--rows",
                         "10", "--row-bytes", "264", "--dtype", "mxfp8_e4m3", "--seed", "1",
                         server=srv.address)
            self.assertEqual(r.returncode, 0, r.stderr)
            r = self.ctl("prefetch", "--model", "deepseek-v4.1-flash", "--layer", "1",
                         stdin="1 2\n", server=srv.address)
            self.assertEqual((r.returncode, r.stderr), (1,
                             "engramctl: FAILED_PRECONDITION: model deepseek-v4.1-flash: table "
                             "\"deepseek-v4.1-flash.l1\" of layer 1 has 10 rows; the manifest "
                             "needs 384006168 (the sum of the layer's primes)\n"))
            # A table inlined by hand that is one id short of the stated size.
            bad = json.load(open(self.full))
            bad["name"] = "v41-bad"
            bad["compression"]["lookup_table"] = list(range(COMPRESSED - 1))
            path = os.path.join(self.tmp, "bad.json")
            json.dump(bad, open(path, "w"))
            r = self.ctl("put-manifest", path, server=srv.address)
            self.assertEqual(r.returncode, 1)
            self.assertIn("manifest: compression.lookup_table maps 99091 ids onto 99091 "
                          "compressed ids, but \"compressed_vocab_size\" is 99092", r.stderr)
            r = self.ctl("manifests", server=srv.address)
            self.assertNotIn("v41-bad", r.stdout)
        finally:
            self.assertEqual(srv.stop(), 0, srv.log_tail())
            srv.cleanup()


if __name__ == "__main__":
    h.run(("--engramctl",))
