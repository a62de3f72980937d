#!/usr/bin/python3
"""engramctl's model commands against the reference vectors.

Builds a manifest from tests/data/engram-hash/config2_small.json, feeds
every batch (and the negative-id edge batches) through `engramctl hash`, one
sequence per line, and compares each output line with the vectors'
global_row_ids, [T, heads] order. Also checks the CLI's refusals.

Then, against a real engram-server: `put-manifest` (exact report, missing
tables named), `manifests` (exact listing, before and after the tables are
imported, two models sorted by name), `manifest NAME` (the document put,
compared as JSON; an unknown name refused), and `prefetch --model --layer
--verify-seed` on two sequences, whose CRC-32 per line must equal the one
computed here from the synthetic rule at the vectors' rows; a wrong seed
exits 1 naming the first differing row.

usage: hash_cli_test.py ENGRAMCTL TESTDATA_DIR SERVER_BIN
"""
import json
import os
import subprocess
import sys
import tempfile
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from synthetic import layer_seed, synthetic_row  # noqa: E402

SEED = 5
ROW_BYTES = 32  # dim 16 x bf16


class Checks:
    """Counts passed and failed checks; a failure prints what differed."""

    def __init__(self):
        self.passed = self.failed = 0

    def check(self, ok, what, detail=""):
        if ok:
            self.passed += 1
        else:
            self.failed += 1
            print("FAIL %s%s" % (what, ("\n" + detail) if detail else ""))


def start_server(server_bin, tmp):
    port_file = os.path.join(tmp, "port")
    log = open(os.path.join(tmp, "server.log"), "w")
    proc = subprocess.Popen([server_bin, "--data", os.path.join(tmp, "data"), "--listen",
                             "127.0.0.1:0", "--port-file", port_file, "--threads", "2"],
                            stdout=log, stderr=log)
    log.close()
    deadline = time.time() + 20
    while True:
        try:
            with open(port_file) as f:
                return proc, "127.0.0.1:%d" % int(f.read())
        except (OSError, ValueError):
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("engram-server did not start; see " + log.name)
            time.sleep(0.05)


def listing(rows):
    """`engramctl manifests` output for (name, version, layers, dim, dtype, missing)."""
    lines = ["%-24s %8s %6s %5s %-8s %s" % ("NAME", "VERSION", "LAYERS", "DIM", "DTYPE",
                                             "MISSING_TABLES")]
    lines += ["%-24s %8d %6d %5d %-8s %s" % r for r in rows]
    return "".join(l + "\n" for l in lines)


def expected_crc(rows, layers):
    """CRC-32 of a prefetch of one sequence: [layers][T, heads] rows of the
    synthetic tables, each layer made with manifest_synthetic_seed."""
    data = b""
    for layer in layers:
        seed = layer_seed(SEED, layer)
        data += b"".join(synthetic_row(seed, r, ROW_BYTES) for t in rows[layer] for r in t)
    return len(data), zlib.crc32(data)


def server_commands(ctl, server_bin, manifest, vec, c):
    b = next(x for x in vec["batches"] if x["name"] == "random_B2_T3")
    with tempfile.TemporaryDirectory() as tmp:
        proc, addr = start_server(server_bin, tmp)
        try:
            def run(*args, stdin=None):
                return subprocess.run([ctl, "--server", addr] + list(args), input=stdin,
                                      capture_output=True, text=True, timeout=60)

            def expect(r, rc, stdout, what):
                c.check(r.returncode == rc and r.stdout == stdout, what,
                        "rc %d (want %d)\nstdout:\n%s\nwant:\n%s\nstderr: %s"
                        % (r.returncode, rc, r.stdout, stdout, r.stderr))

            expect(run("manifests"), 0, listing([]), "manifests with none stored")
            path = os.path.join(tmp, "cfg2.json")
            with open(path, "w") as f:
                json.dump(manifest, f, indent=1)
            expect(run("put-manifest", path), 0,
                   "stored manifest cfg2 version 1: 2 layers, dim 16, bf16, 32-byte rows\n"
                   "tables not on the server yet: cfg2.l0,cfg2.l3\n", "put-manifest cfg2")
            expect(run("manifests"), 0, listing([("cfg2", 1, 2, 16, "bf16", "cfg2.l0,cfg2.l3")]),
                   "manifests before the import")
            r = run("import-synthetic", "--manifest", "cfg2", "--seed", str(SEED))
            c.check(r.returncode == 0, "import-synthetic --manifest cfg2", r.stderr)
            alpha = dict(manifest, name="alpha")
            apath = os.path.join(tmp, "alpha.json")
            with open(apath, "w") as f:
                json.dump(alpha, f)
            expect(run("put-manifest", apath), 0,
                   "stored manifest alpha version 1: 2 layers, dim 16, bf16, 32-byte rows\n",
                   "put-manifest alpha (its tables exist)")
            expect(run("put-manifest", path), 0,
                   "stored manifest cfg2 version 2: 2 layers, dim 16, bf16, 32-byte rows\n",
                   "put-manifest cfg2 again")
            expect(run("manifests"), 0, listing([("alpha", 1, 2, 16, "bf16", "-"),
                                                 ("cfg2", 2, 2, 16, "bf16", "-")]),
                   "manifests after the import")
            for name, doc in (("cfg2", manifest), ("alpha", alpha)):
                r = run("manifest", name)
                try:
                    got = json.loads(r.stdout)
                except ValueError as e:
                    got = "not JSON: %s" % e
                c.check(r.returncode == 0 and got == doc, "manifest %s equals the put" % name,
                        "rc %d: %s" % (r.returncode, r.stderr))
            r = run("manifest", "nope")
            c.check(r.returncode == 1 and r.stdout == "" and r.stderr ==
                    "engramctl: NOT_FOUND: model \"nope\" not found: no manifest of that name\n",
                    "manifest nope", "rc %d stderr %r" % (r.returncode, r.stderr))

            seqs = b["input_ids"]
            stdin = "".join(" ".join(str(x) for x in s) + "\n" for s in seqs)
            want = ""
            for i in range(len(seqs)):
                rows = {l: b["global_row_ids"][str(l)][i] for l in (0, 3)}
                nbytes, crc = expected_crc(rows, (0, 3))
                want += "seq %d: %d tokens, %d bytes, crc32 %08x, verified\n" % (
                    i + 1, len(seqs[i]), nbytes, crc)
            r = run("prefetch", "--model", "cfg2", "--layer", "0,3", "--verify-seed", str(SEED),
                    stdin=stdin)
            expect(r, 0, want, "prefetch --verify-seed %d" % SEED)
            r = run("prefetch", "--model", "cfg2", "--layer", "0,3", "--verify-seed",
                    str(SEED + 1), stdin=stdin)
            c.check(r.returncode == 1 and r.stdout == want.split(", verified")[0] + "\n" and
                    r.stderr == "engramctl: DATA_LOSS: line 1: row 0 of the output differs "
                                "from the synthetic rule\n",
                    "prefetch --verify-seed %d (wrong seed)" % (SEED + 1),
                    "rc %d\nstdout %r\nstderr %r" % (r.returncode, r.stdout, r.stderr))
        finally:
            proc.terminate()
            c.check(proc.wait(timeout=30) == 0, "engram-server exits 0 on SIGTERM")


def main():
    ctl, testdata, server_bin = sys.argv[1], sys.argv[2], sys.argv[3]
    with open(os.path.join(testdata, "engram-hash", "config2_small.json")) as f:
        vec = json.load(f)
    cfg = vec["config"]
    manifest = {k: cfg[k] for k in ("engram_vocab_size", "max_ngram_size", "n_embed_per_ngram",
                                    "n_head_per_ngram", "layer_ids", "pad_id", "seed")}
    manifest.update(name="cfg2", dtype="bf16",
                    compression={"lookup_table": vec["compression"]["lookup_table"]},
                    tables={str(l): "cfg2.l%d" % l for l in cfg["layer_ids"]})
    batches = vec["batches"] + vec["edge_batches_negative_ids"]["batches"]
    passed = failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "cfg2.json")
        with open(path, "w") as f:
            json.dump(manifest, f)
        for b in batches:
            ids = b.get("input_ids_str", b["input_ids"])
            stdin = "".join(" ".join(str(x) for x in seq) + "\n" for seq in ids)
            for layer in cfg["layer_ids"]:
                out = subprocess.run([ctl, "hash", "--manifest", path, "--layer", str(layer)],
                                     input=stdin, capture_output=True, text=True)
                want = [" ".join(str(r) for t in seq for r in t)
                        for seq in b["global_row_ids"][str(layer)]]
                if out.returncode == 0 and out.stdout.splitlines() == want:
                    passed += 1
                else:
                    failed += 1
                    print("FAIL %s layer %d: rc %d %s" % (b["name"], layer, out.returncode,
                                                           out.stderr.strip()))
        refusals = [
            (["--layer", "1"], "1 2 3\n", 2, "layer 1 is not in the manifest's layer_ids"),
            (["--layer", "0"], "1 1000\n", 1, "token id 1000 at [0, 1] is beyond the compression table"),
            (["--layer", "0"], "1 x2\n", 2, "line 1: \"x2\" is not a token id"),
        ]
        for args, stdin, rc, msg in refusals:
            out = subprocess.run([ctl, "hash", "--manifest", path] + args, input=stdin,
                                 capture_output=True, text=True)
            if out.returncode == rc and msg in out.stderr:
                passed += 1
            else:
                failed += 1
                print("FAIL refusal %r: rc %d %s" % (args, out.returncode, out.stderr.strip()))
    c = Checks()
    server_commands(ctl, server_bin, manifest, vec, c)
    passed += c.passed
    failed += c.failed
    print("%d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
