#!/usr/bin/python3
"""hash_bench_numpy.py: the numpy baseline for engram-hash-bench.

    /usr/bin/python3 tests/bench/hash_bench_numpy.py [--tokens FILE]
        [--batch B (64)] [--seq T (4096)] [--seconds S (5)] [--check DUMP]

The reference formula vectorised in numpy the way engram_demo_v1.py does it
(NgramHashMapping.hash / _get_ngram_hashes): compress the batch once through
the lookup table (negative ids pass through), then per layer np.pad shifts,
int64 multiply, np.bitwise_xor, `%` per head, plus the head offsets that the
reference adds in MultiHeadEmbedding. Same config and batches as the C bench:
vocab [646400, 646400], max_ngram 3, 8 heads per order, layers [1, 15], pad 2,
seed 0, identity compression of 129280 ids, consecutive [B, T] batches of
tests/data/workload/tokens.bin. Multipliers come from numpy's own
default_rng, primes from a trial-division search with one `seen` set, both
independent of the C code.

A "token" is one position of one sequence hashed for all layers (B * T per
batch); token-layers = tokens x layers.

--check DUMP compares this script's row ids for the first batch with the
C bench's --dump file (uint64 LE [layers, B, T, 16]); exit status 1 on any
difference. Output: a human-readable block, then `bench: key=value ...`.
"""
import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_TOKENS = os.path.join(HERE, "..", "data", "workload", "tokens.bin")

VOCAB = [646400, 646400]
MAX_NGRAM = 3
N_HEAD = 8
LAYER_IDS = [1, 15]
PAD_ID = 2
SEED = 0
TOKENIZER_VOCAB = 129280


def is_prime(n):
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    d = 3
    while d * d <= n:
        if n % d == 0:
            return False
        d += 2
    return True


class Hasher:
    """The reference's NgramHashMapping, reduced to its numpy arithmetic."""

    def __init__(self):
        self.lookup_table = np.arange(TOKENIZER_VOCAB, dtype=np.int64)
        self.pad_id = int(self.lookup_table[PAD_ID])
        vocab = int(self.lookup_table.max()) + 1
        max_long = np.iinfo(np.int64).max
        half_bound = max(1, (max_long // vocab) // 2)
        self.multipliers = {}
        for layer_id in LAYER_IDS:
            g = np.random.default_rng(int(SEED + 10007 * layer_id))
            r = g.integers(low=0, high=half_bound, size=(MAX_NGRAM,), dtype=np.int64)
            self.multipliers[layer_id] = r * 2 + 1
        seen = set()
        self.primes = {}
        for layer_id in LAYER_IDS:
            per_order = []
            for n in range(2, MAX_NGRAM + 1):
                start = VOCAB[n - 2] - 1
                heads = []
                for _ in range(N_HEAD):
                    c = start + 1
                    while not (is_prime(c) and c not in seen):
                        c += 1
                    seen.add(c)
                    heads.append(c)
                    start = c
                per_order.append(heads)
            self.primes[layer_id] = per_order
        self.offsets = {}
        for layer_id in LAYER_IDS:
            flat = [p for order in self.primes[layer_id] for p in order]
            self.offsets[layer_id] = np.array([0] + list(np.cumsum(flat)[:-1]), dtype=np.int64)

    def compress(self, x):
        x = np.asarray(x, dtype=np.int64)
        out = x.copy()
        pos = x >= 0
        out[pos] = self.lookup_table[x[pos]]
        return out

    def ngram_hashes(self, x, layer_id):
        B, T = x.shape
        m = self.multipliers[layer_id]

        def shift_k(k):
            if k == 0:
                return x
            return np.pad(x, ((0, 0), (k, 0)), mode="constant",
                          constant_values=self.pad_id)[:, :T]

        base_shifts = [shift_k(k) for k in range(MAX_NGRAM)]
        all_hashes = []
        for n in range(2, MAX_NGRAM + 1):
            tokens = base_shifts[:n]
            mix = tokens[0] * m[0]
            for k in range(1, n):
                mix = np.bitwise_xor(mix, tokens[k] * m[k])
            for j in range(N_HEAD):
                all_hashes.append((mix % int(self.primes[layer_id][n - 2][j])).astype(
                    np.int64, copy=False))
        return np.stack(all_hashes, axis=2)

    def rows(self, input_ids):
        """{layer_id: [B, T, heads] global row ids} for one raw batch."""
        x = self.compress(input_ids)
        return {L: self.ngram_hashes(x, L) + self.offsets[L] for L in LAYER_IDS}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", default=DEFAULT_TOKENS)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--check")
    a = ap.parse_args()

    toks = np.fromfile(a.tokens, dtype="<i4").astype(np.int64)
    per = a.batch * a.seq
    nb = len(toks) // per
    if nb == 0:
        sys.exit("fewer tokens than one batch")
    batches = [toks[i * per:(i + 1) * per].reshape(a.batch, a.seq) for i in range(nb)]
    h = Hasher()
    print("numpy %s; primes L1 %d..%d, L15 %d..%d; multipliers L1 %s" % (
        np.__version__, h.primes[1][0][0], h.primes[1][-1][-1], h.primes[15][0][0],
        h.primes[15][-1][-1], " ".join(str(int(v)) for v in h.multipliers[1])))
    print("tokens: %s, %d tokens -> %d batches of [%d, %d]" % (a.tokens, len(toks), nb,
                                                              a.batch, a.seq))

    if a.check:
        want = np.fromfile(a.check, dtype="<u8").reshape(len(LAYER_IDS), a.batch, a.seq,
                                                        N_HEAD * (MAX_NGRAM - 1))
        got = h.rows(batches[0])
        bad = 0
        for li, L in enumerate(LAYER_IDS):
            diff = np.count_nonzero(got[L].astype(np.uint64) != want[li])
            bad += diff
            print("check layer %d: %d of %d row ids differ from the C dump" % (L, diff,
                                                                               want[li].size))
        if bad:
            sys.exit(1)

    h.rows(batches[0])  # warm-up
    n = 0
    t0 = time.perf_counter()
    while True:
        h.rows(batches[n % nb])
        n += 1
        el = time.perf_counter() - t0
        if el >= a.seconds:
            break
    tok_s = n * per / el
    tl_s = tok_s * len(LAYER_IDS)
    heads = N_HEAD * (MAX_NGRAM - 1)
    print("numpy: %d batches in %.2f s: %.3f M tokens/s (all %d layers), %.3f M token-layers/s, "
          "%.1f M row ids/s, %.2f ns per token-layer" % (n, el, tok_s / 1e6, len(LAYER_IDS),
                                                         tl_s / 1e6, tl_s * heads / 1e6,
                                                         1e9 / tl_s))
    print("bench: impl=numpy tokens_per_s=%.0f token_layers_per_s=%.0f row_ids_per_s=%.0f "
          "batch=%dx%d layers=%d heads=%d seconds=%.2f" % (tok_s, tl_s, tl_s * heads, a.batch,
                                                           a.seq, len(LAYER_IDS), heads, el))


if __name__ == "__main__":
    main()
