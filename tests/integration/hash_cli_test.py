#!/usr/bin/python3
"""engramctl hash against the reference vectors.

Builds a manifest from shared/testdata/engram-hash/config2_small.json, feeds
every batch (and the negative-id edge batches) through `engramctl hash`, one
sequence per line, and compares each output line with the vectors'
global_row_ids, [T, heads] order. Also checks the CLI's refusals.

usage: hash_cli_test.py ENGRAMCTL TESTDATA_DIR
"""
import json
import os
import subprocess
import sys
import tempfile


def main():
    ctl, testdata = sys.argv[1], sys.argv[2]
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
    print("%d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
