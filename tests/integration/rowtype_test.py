#!/usr/bin/env python3
"""rowtype_test.py: the mxfp8_e4m3 row type (DeepSeek-V4.1's 264-byte
Engram rows: 256 E4M3 codes, then one E8M0 scale per 32 codes) through a
real engram-server: imports of valid rows are stored and served byte for
byte with their geometry; NaN codes (0x7F, 0xFF), NaN scales (255) and a
dim that is not whole blocks are refused, naming the row and column, and
nothing is stored. `engramctl import-synthetic --dtype mxfp8_e4m3` makes
valid rows by the typed synthetic rule (synthetic.py), which the server
stores and `verify-synthetic` checks; `prefetch --dequant bf16` delivers
and checks BF16 values of a V4.1-shaped model."""
import os
import random
import shutil
import subprocess
import tempfile
import unittest

import grpc

import abuse_test as h   # the harness: Server, statuses, raw messages
from abuse_test import A, IA, L, NF, OK, lookup_req
from synthetic import layer_seed, synthetic_row, synthetic_row_typed  # beside this file

DIM, RB = 256, 264


def e4m3(c):
    """An E4M3 code's value (OCP FP8: bias 7, no infinities)."""
    sign = -1.0 if c & 0x80 else 1.0
    e, m = (c >> 3) & 0xF, c & 7
    return sign * (m / 8.0 * 2.0 ** -6 if e == 0 else (1 + m / 8.0) * 2.0 ** (e - 7))


def valid_rows(n, seed):
    """n rows a V4.1 table could hold: any code but the two NaNs, scales
    around 2^-7 .. 2^7 (bytes 120..134)."""
    rnd = random.Random(seed)
    out = bytearray()
    for _ in range(n):
        codes = bytes(c if c & 0x7F != 0x7F else 0x7E for c in rnd.randbytes(DIM))
        out += codes + bytes(rnd.randrange(120, 135) for _ in range(DIM // 32))
    return bytes(out)


class Mxfp8RowsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="engram-rowtype-")
        cls.srv = h.Server(os.path.join(cls.tmp, "data")).start()

    @classmethod
    def tearDownClass(cls):
        try:
            assert cls.srv.stop() == 0, cls.srv.log_tail()
        finally:
            cls.srv.cleanup()
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def imp(self, table, rows, data, dim=DIM, dtype="mxfp8_e4m3", per=100):
        msgs = [h.pb.ImportRequest(header=h.pb.ImportHeader(
            table=table, rows=rows, dim=dim, dtype=dtype)).SerializeToString()]
        rb = len(data) // rows if rows else RB
        for start in range(0, rows, per):
            msgs.append(h.pb.ImportRequest(chunk=h.pb.ImportChunk(
                start_row=start, data=data[start * rb:(start + per) * rb])).SerializeToString())
        return self.srv.stream_unary(A + "Import", msgs)

    def assert_absent(self, table):
        code, details, _ = self.srv.unary(
            A + "GetTable", h.pb.GetTableRequest(name=table).SerializeToString())
        self.assertEqual((code, details), (NF, 'table "%s" not found' % table))

    def test_valid_rows_stored_and_served(self):
        data = valid_rows(1000, 1)
        code, details, _ = self.imp("v41", 1000, data)
        self.assertEqual((code, details), (OK, ""))
        info = self.srv.table_info("v41")
        self.assertEqual((info.rows, info.dim, info.row_bytes, info.dtype),
                         (1000, DIM, RB, "mxfp8_e4m3"))
        rows = [0, 999, 17, 17, 500]
        code, details, reply = self.srv.unary(L, lookup_req("v41", rows))
        self.assertEqual(code, OK, details)
        resp = h.pb.LookupResponse.FromString(reply)
        self.assertEqual(resp.row_bytes, RB)
        self.assertEqual(resp.data, b"".join(data[r * RB:(r + 1) * RB] for r in rows))

    def test_nan_code_refused(self):
        data = bytearray(valid_rows(300, 2))
        data[237 * RB + 100] = 0x7F
        data[250 * RB + 3] = 0xFF
        code, details, _ = self.imp("nan-code", 300, bytes(data))
        self.assertEqual((code, details), (IA, 'row 237 column 100 of table "nan-code" is 0x7f, '
                                               'a NaN E4M3 code; mxfp8_e4m3 rows hold no NaN'))
        self.assert_absent("nan-code")
        data[237 * RB + 100] = 0x80           # -0: a value like any other
        code, details, _ = self.imp("nan-code", 300, bytes(data))
        self.assertEqual((code, details), (IA, 'row 250 column 3 of table "nan-code" is 0xff, '
                                               'a NaN E4M3 code; mxfp8_e4m3 rows hold no NaN'))

    def test_nan_scale_refused(self):
        data = bytearray(valid_rows(10, 3))
        data[5 * RB + DIM + 3] = 255
        code, details, _ = self.imp("nan-scale", 10, bytes(data))
        self.assertEqual((code, details), (IA, 'row 5 scale 3 (columns 96..127) of table '
                                               '"nan-scale" is 255, a NaN E8M0 scale; mxfp8_e4m3 '
                                               'rows hold no NaN'))
        self.assert_absent("nan-scale")

    def test_partial_blocks_refused(self):
        code, details, _ = self.imp("odd", 1, b"\0" * 50, dim=48)
        self.assertEqual((code, details), (IA, "dim 48 is not a multiple of 32, the scale block "
                                               "of dtype mxfp8_e4m3"))
        self.assert_absent("odd")

    def ctl(self, *args, stdin=None):
        return subprocess.run([h.ARGS.engramctl, "--server", self.srv.address] + list(args),
                              input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)

    def test_import_synthetic_typed_rows(self):
        r = self.ctl("import-synthetic", "--table", "syn", "--rows", "3000", "--row-bytes",
                     str(RB), "--dtype", "mxfp8_e4m3", "--seed", "5")
        self.assertEqual(r.returncode, 0, r.stderr)
        info = self.srv.table_info("syn")
        self.assertEqual((info.rows, info.dim, info.row_bytes, info.dtype),
                         (3000, DIM, RB, "mxfp8_e4m3"))
        rows = [0, 1, 2999, 1234, 77]
        code, details, reply = self.srv.unary(L, lookup_req("syn", rows))
        self.assertEqual(code, OK, details)
        want = b"".join(synthetic_row_typed(5, r, RB, "mxfp8_e4m3") for r in rows)
        self.assertEqual(h.pb.LookupResponse.FromString(reply).data, want)
        # The rule changed bytes (random bytes hold NaN codes), and the
        # checker applies the same rule: verify-synthetic passes, and fails
        # for another seed.
        self.assertTrue(any(c & 0x7F == 0x7F for c in b"".join(
            synthetic_row(5, r, RB)[:DIM] for r in rows)))
        r = self.ctl("verify-synthetic", "--table", "syn", "--seed", "5", "--samples", "500")
        self.assertEqual(r.returncode, 0, r.stderr)
        r = self.ctl("verify-synthetic", "--table", "syn", "--seed", "6", "--samples", "10")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("differs from synthetic seed 6", r.stderr)
        # A row size that is not whole 32-value blocks is a usage error.
        r = self.ctl("import-synthetic", "--table", "odd", "--rows", "10", "--row-bytes", "100",
                     "--dtype", "mxfp8_e4m3", "--seed", "5")
        self.assertEqual(r.returncode, 2)
        self.assertIn("a row of 96 mxfp8_e4m3 values is 99 bytes, not --row-bytes 100", r.stderr)

    def test_model_prefetch_bf16_verified(self):
        manifest = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "deploy", "examples", "tiny-deepseek-v4.1.json")
        for args in (("put-manifest", manifest),
                     ("import-synthetic", "--manifest", "tiny-v41", "--seed", "3")):
            r = self.ctl(*args)
            self.assertEqual(r.returncode, 0, r.stderr)
        seqs = "1 5 -1 9 300\n7 7 7\n"
        for dq in ((), ("--dequant", "bf16")):
            r = self.ctl("prefetch", "--model", "tiny-v41", "--layer", "1,14", "--verify-seed",
                         "3", *dq, stdin=seqs)
            self.assertEqual(r.returncode, 0, r.stderr)
            per = 2 * 24 * (512 if dq else RB)   # layers x heads x output row bytes
            lines = r.stdout.splitlines()
            self.assertEqual(len(lines), 2)
            self.assertRegex(lines[0], r"^seq 1: 5 tokens, %d bytes%s, crc32 [0-9a-f]{8}, verified$"
                             % (5 * per, " of bf16" if dq else ""))
            self.assertRegex(lines[1], r"^seq 2: 3 tokens, %d bytes%s, crc32 [0-9a-f]{8}, verified$"
                             % (3 * per, " of bf16" if dq else ""))
        # Another seed's rows differ, dequantized or not.
        r = self.ctl("prefetch", "--model", "tiny-v41", "--layer", "14", "--verify-seed", "4",
                     "--dequant", "bf16", stdin="1 2\n")
        self.assertEqual(r.returncode, 1)
        self.assertIn("row 0 of the output differs from the synthetic rule", r.stderr)
        # --show: the first values of layer 14's first row, as numbers:
        # e4m3(code) x 2^(scale - 127) of the typed rule's row (exact in BF16
        # at these scales), printed as C's %g prints them.
        r = self.ctl("prefetch", "--model", "tiny-v41", "--layer", "14", "--dequant", "bf16",
                     "--show", "3", stdin="1 2\n")
        self.assertEqual(r.returncode, 0, r.stderr)
        show = r.stdout.splitlines()[1]
        self.assertTrue(show.startswith("  layer 14, token 0, column 0: "), show)
        r = subprocess.run([h.ARGS.engramctl, "hash", "--manifest", manifest, "--layer", "14"],
                           input="1 2\n", stdout=subprocess.PIPE, text=True)
        row0 = int(r.stdout.split()[0])
        data = synthetic_row_typed(layer_seed(3, 14), row0, RB, "mxfp8_e4m3")
        want = " ".join("%g" % (e4m3(c) * 2.0 ** (data[DIM] - 127)) for c in data[:3])
        self.assertEqual(show, "  layer 14, token 0, column 0: " + want)
        r = self.ctl("prefetch", "--model", "tiny-v41", "--layer", "1", "--dequant", "f16")
        self.assertEqual((r.returncode, r.stderr),
                         (2, "engramctl: INVALID_ARGUMENT: prefetch: --dequant 'f16': expected bf16 (see engramctl --help)\n"))

    def test_other_types_take_any_byte(self):
        data = bytes([0x7F, 0xFF]) * (RB // 2) * 4
        code, details, _ = self.imp("raw", 4, data, dim=RB, dtype="u8")
        self.assertEqual((code, details), (OK, ""))


if __name__ == "__main__":
    h.run(("--engramctl",))
