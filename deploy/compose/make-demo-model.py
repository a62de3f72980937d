#!/usr/bin/env python3
"""Writes deploy/compose/demo-model.json, the model the compose stack and the
Kubernetes import job load, and prints its table sizes (the numbers the
resource limits in docker-compose.yml and deploy/k8s/statefulset.yaml are
sized from).

The shape is the reference EngramConfig's (2 layers x orders 2..3 x 8 heads,
n_embed_per_ngram 512 -> D = 64 bf16 = 128-byte rows), with the vocabulary
cut from 646400 to about 100 k so that a laptop can hold the whole cluster:
each layer's table has sum(primes) ~ 1.6 M rows (~205 MB), not ~10.3 M.
The compression table is the identity over 1024 token ids.

    python3 deploy/compose/make-demo-model.py            # rewrite the file
    python3 deploy/compose/make-demo-model.py --sizes    # only print sizes
"""
import json
import os
import sys

MODEL = {
    "name": "demo",
    "engram_vocab_size": [100003, 100019],
    "max_ngram_size": 3,
    "n_embed_per_ngram": 512,
    "n_head_per_ngram": 8,
    "layer_ids": [1, 15],
    "pad_id": 2,
    "seed": 0,
    "dtype": "bf16",
    "compression": {"lookup_table": list(range(1024))},
    "tables": {"1": "demo.l1", "15": "demo.l15"},
}
SHARDS = 3  # deploy/compose/cluster.json


def is_prime(n):
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True


def layer_rows(m):
    """Rows of each layer's table: the sum of its heads' primes. Same rule as
    common/engram_hash.c: head j of order n takes the smallest prime >=
    vocab[n-2] not taken by any earlier head of any layer."""
    seen, out = set(), {}
    for layer in m["layer_ids"]:
        total = 0
        for n in range(2, m["max_ngram_size"] + 1):
            for _ in range(m["n_head_per_ngram"]):
                p = m["engram_vocab_size"][n - 2]
                while not is_prime(p) or p in seen:
                    p += 1
                seen.add(p)
                total += p
        out[layer] = total
    return out


def main():
    rows = layer_rows(MODEL)
    row_bytes = MODEL["n_embed_per_ngram"] // MODEL["n_head_per_ngram"] * 2
    total = sum(rows.values())
    for layer, r in rows.items():
        print(f"layer {layer}: {r} rows x {row_bytes} B = {r * row_bytes} B")
    per_shard = sum(-(-r // SHARDS) for r in rows.values()) * row_bytes
    print(f"all layers: {total} rows, {total * row_bytes} B; "
          f"per shard (S={SHARDS}, row r on shard r mod S): at most {per_shard} B")
    if "--sizes" in sys.argv[1:]:
        return
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo-model.json")
    with open(path, "w") as f:
        json.dump(MODEL, f, separators=(", ", ": "))
        f.write("\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
