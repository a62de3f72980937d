#!/usr/bin/env python3
"""make_v41_checkpoint.py: a small checkpoint laid out as DeepSeek-V4.1-Flash's
is, for the tiny V4.1 model (deploy/examples/tiny-deepseek-v4.1.json):

  model.safetensors.index.json   {"metadata": {...}, "weight_map": {name: file}}
  model-00001-of-00002.safetensors  layers.1.engram.embed.weight (F8_E4M3 [rows, 256])
                                    and an unrelated BF16 tensor
  model-00002-of-00002.safetensors  layers.1.engram.embed.scale (F8_E8M0 [rows, 8]),
                                    layers.14.engram.embed.weight and .scale

(layer 1's two tensors are in different shard files on purpose). Row counts
are the layers' tables: the sum of each layer's 24 primes, derived here by
the model card's rule (for each layer and order, the search restarts at
vocab - 1 and takes the next 8 primes above it that no earlier layer or order
took). Codes are random bytes without the NaN codes 0x7F/0xFF, scales
120..134, from Python's random with --seed: the test re-reads the files to
know the expected rows, so only the layout matters.

  make_v41_checkpoint.py OUT_DIR [--seed S] [--vocab V] [--layers 1,14]
"""
import argparse
import json
import os
import random
import struct

DIM, NSCALE, HEADS_PER_ORDER, ORDERS = 256, 8, 8, 3
NAN_FREE = bytes(c ^ 1 if c & 0x7F == 0x7F else c for c in range(256))


def is_prime(n):
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True


def table_rows(vocab, layers):
    seen, rows = set(), {}
    for layer in layers:
        total = 0
        for _ in range(ORDERS):
            p = vocab - 1
            for _ in range(HEADS_PER_ORDER):
                p += 1
                while not is_prime(p) or p in seen:
                    p += 1
                seen.add(p)
                total += p
        rows[layer] = total
    return rows


def write_safetensors(path, tensors):
    """tensors: list of (name, dtype, shape, bytes), written in that order."""
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(data)]}
        off += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for _, _, _, data in tensors:
            f.write(data)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=41)
    ap.add_argument("--vocab", type=int, default=1000)
    ap.add_argument("--layers", default="1,14")
    a = ap.parse_args()
    layers = [int(x) for x in a.layers.split(",")]
    rows = table_rows(a.vocab, layers)
    rnd = random.Random(a.seed)
    weight, scale = {}, {}
    for layer in layers:
        weight[layer] = rnd.randbytes(rows[layer] * DIM).translate(NAN_FREE)
        scale[layer] = bytes(120 + b % 15 for b in rnd.randbytes(rows[layer] * NSCALE))
    os.makedirs(a.out, exist_ok=True)
    f1, f2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    first, rest = layers[0], layers[1:]
    w = lambda l: ("layers.%d.engram.embed.weight" % l, "F8_E4M3", [rows[l], DIM], weight[l])
    s = lambda l: ("layers.%d.engram.embed.scale" % l, "F8_E8M0", [rows[l], NSCALE], scale[l])
    other = ("layers.0.attn.wq.weight", "BF16", [4, 8], bytes(64))
    write_safetensors(os.path.join(a.out, f1), [other, w(first)])
    write_safetensors(os.path.join(a.out, f2), [s(first)] + [t for l in rest for t in (w(l), s(l))])
    weight_map = {other[0]: f1, w(first)[0]: f1, s(first)[0]: f2}
    for l in rest:
        weight_map[w(l)[0]] = f2
        weight_map[s(l)[0]] = f2
    total = sum(len(weight[l]) + len(scale[l]) for l in layers) + 64
    with open(os.path.join(a.out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
    print(json.dumps({str(l): rows[l] for l in layers}))


if __name__ == "__main__":
    main()
