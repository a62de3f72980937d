"""A PyTorch Engram layer whose n-gram embeddings come from engram-store.

What: the Engram module of DeepSeek's reference forward (engram_demo_v1.py
in deepseek-ai/Engram), written afresh for this package: n-gram hashing of
the token ids into per-head row ids, one embedding row per (position,
head), the concatenated embeddings projected to a key per hyper-connection
branch and gated against the hidden state (RMSNorm both, scaled dot,
signed square root, sigmoid), the gated value projection, plus a short
depthwise causal convolution over the gated values. The demo backbone
around it (token embedding, blocks whose attention and MoE are identities,
hyper-connections mocked by copying the hidden state) is the reference's
too, shrunk so a CPU runs it in milliseconds.

Where the rows come from is the only thing that changes:

  MemoryRows  each layer's table held in an nn.Embedding, indexed with the
              row ids of Model.hash (the store's hashing; the reference's
              multi-head embedding adds each head's offset, which the store's
              row ids already include);
  StoreRows   one engram prefetch per forward covering every Engram layer,
              started before the backbone runs; each Engram layer waits for
              its own layer's rows only (Prefetch.wait_layer), as a serving
              engine overlaps the fetch with the layers before it.

Both give the same rows, so the forward is bit for bit the same
(python/tests/test_engram_layer.py checks it, for BF16 tables and for
DeepSeek-V4.1's mxfp8_e4m3 rows dequantised to BF16).

Run it against a server holding nothing yet (it creates the demo model):

    PYTHONPATH=build/python python3 python/examples/engram_layer.py 127.0.0.1:7070
"""
from __future__ import annotations

import dataclasses
import math
import sys
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

import engram


@dataclasses.dataclass
class EngramConfig:
    """The reference's EngramConfig and BackBoneConfig, demo-sized."""
    name: str = "engram-demo"
    engram_vocab_size: Sequence[int] = (1000, 1000)   # per n-gram order 2..max_ngram
    max_ngram_size: int = 3
    n_embed_per_ngram: int = 64
    n_head_per_ngram: int = 4
    layer_ids: Sequence[int] = (1, 3)
    pad_id: int = 2
    seed: int = 0
    kernel_size: int = 4
    dtype: str = "bf16"                  # the tables' row type on the store
    dead_tokens: bool = False
    lookup_table: Sequence[int] = tuple(i % 256 for i in range(512))  # compression
    hidden_size: int = 64
    hc_mult: int = 4
    vocab_size: int = 512
    num_layers: int = 4

    @property
    def head_dim(self) -> int:
        return self.n_embed_per_ngram // self.n_head_per_ngram

    @property
    def heads(self) -> int:
        """Columns per layer: one per head of every order."""
        return (self.max_ngram_size - 1) * self.n_head_per_ngram

    def table(self, layer: int) -> str:
        return "%s.l%d" % (self.name, layer)

    def manifest(self) -> Dict[str, object]:
        """The engram-store manifest of this model (common/manifest.h)."""
        return {
            "name": self.name, "engram_vocab_size": list(self.engram_vocab_size),
            "max_ngram_size": self.max_ngram_size,
            "n_embed_per_ngram": self.n_embed_per_ngram,
            "n_head_per_ngram": self.n_head_per_ngram, "layer_ids": list(self.layer_ids),
            "pad_id": self.pad_id, "seed": self.seed, "dtype": self.dtype,
            "dead_tokens": self.dead_tokens,
            "compression": {"lookup_table": list(self.lookup_table)},
            "tables": {str(lid): self.table(lid) for lid in self.layer_ids},
        }


# ---- hashing, by the reference's rule ------------------------------------

def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def layer_primes(cfg: EngramConfig) -> Dict[int, List[List[int]]]:
    """Each layer's table size per head, per order: the next primes at or
    above each order's vocabulary size, never reused across heads, orders
    or layers (walked in layer_ids order, as the reference does)."""
    seen = set()
    out: Dict[int, List[List[int]]] = {}
    for lid in cfg.layer_ids:
        orders = []
        for n in range(2, cfg.max_ngram_size + 1):
            p, heads = cfg.engram_vocab_size[n - 2] - 1, []
            for _ in range(cfg.n_head_per_ngram):
                p += 1
                while not _is_prime(p) or p in seen:
                    p += 1
                seen.add(p)
                heads.append(p)
            orders.append(heads)
        out[lid] = orders
    return out


def layer_rows(cfg: EngramConfig) -> Dict[int, int]:
    """Rows of each layer's table: the sum of its primes."""
    return {lid: sum(sum(o) for o in orders) for lid, orders in layer_primes(cfg).items()}


class NgramHash:
    """The reference's n-gram hashing in numpy (no DEAD tokens): token ids
    [B, T] to global row ids [B, T, heads] of one layer's table. Only used
    to check that the store hashes as the reference does."""

    def __init__(self, cfg: EngramConfig) -> None:
        self.cfg = cfg
        self.lut = np.asarray(cfg.lookup_table, dtype=np.int64)
        self.pad = int(self.lut[cfg.pad_id])
        # Multipliers: odd, below int64 max / compressed vocabulary, from
        # numpy's PCG64 seeded per layer.
        bound = max(1, (np.iinfo(np.int64).max // (int(self.lut.max()) + 1)) // 2)
        self.mult = {lid: np.random.default_rng(cfg.seed + 10007 * lid).integers(
            0, bound, size=(cfg.max_ngram_size,), dtype=np.int64) * 2 + 1
            for lid in cfg.layer_ids}
        self.primes = layer_primes(cfg)

    def __call__(self, tokens: np.ndarray, layer: int) -> np.ndarray:
        x = self.lut[np.asarray(tokens, dtype=np.int64)]
        B, T = x.shape
        # shifted[k][:, t] is the token k positions back (pad before the start)
        shifted = [np.concatenate([np.full((B, k), self.pad, np.int64), x[:, :T - k]], axis=1)
                   for k in range(self.cfg.max_ngram_size)]
        m, cols, offset = self.mult[layer], [], 0
        for n in range(2, self.cfg.max_ngram_size + 1):
            mix = shifted[0] * m[0]          # int64 products wrap, as in the reference
            for k in range(1, n):
                mix = np.bitwise_xor(mix, shifted[k] * m[k])
            for p in self.primes[layer][n - 2]:
                cols.append(mix % p + offset)   # offset: this head's first row
                offset += p
        return np.stack(cols, axis=2)


# ---- where the rows come from ----------------------------------------------

# A source is started once per forward with the token ids and returns a
# function giving a layer's rows [B, T, heads, head_dim] (torch.bfloat16).
RowsFn = Callable[[int], torch.Tensor]


class MemoryRows:
    """Every layer's table in memory (nn.Embedding), indexed by the row ids
    a hash function gives (Model.hash: the store's own hashing)."""

    def __init__(self, tables: Dict[int, torch.Tensor],
                 row_ids: Callable[[torch.Tensor, Optional[torch.Tensor], int], np.ndarray]
                 ) -> None:
        self.emb = {lid: nn.Embedding.from_pretrained(t, freeze=True)
                    for lid, t in tables.items()}
        self.row_ids = row_ids

    def start(self, input_ids: torch.Tensor, history: Optional[torch.Tensor] = None) -> RowsFn:
        def rows(layer: int) -> torch.Tensor:
            ids = torch.from_numpy(self.row_ids(input_ids, history, layer))
            return self.emb[layer](ids)
        return rows


class StoreRows:
    """Rows from engram-store: one prefetch of every layer per forward."""

    def __init__(self, model: "engram.Model") -> None:
        self.model = model
        self.prefetch: Optional[engram.Prefetch] = None

    def start(self, input_ids: torch.Tensor, history: Optional[torch.Tensor] = None) -> RowsFn:
        if self.prefetch is not None:
            self.prefetch.close()
        m = self.model
        # BF16 tables come back as their bytes (raw); mxfp8_e4m3 rows are
        # dequantised to BF16 by libengram as they arrive.
        dtype = "bf16" if m.dtype == "mxfp8_e4m3" else "raw"
        p = self.prefetch = m.prefetch(input_ids, dtype=dtype, history=history, as_torch=True)

        def rows(layer: int) -> torch.Tensor:
            got = p.wait_layer(layer)
            return got if dtype == "bf16" else got.view(torch.bfloat16)
        return rows

    def close(self) -> None:
        if self.prefetch is not None:
            self.prefetch.close()
            self.prefetch = None


# ---- the layer ---------------------------------------------------------------

class RMSNorm(nn.Module):
    """x / rms(x) * weight (torch 1.13 has no nn.RMSNorm)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class ShortConv(nn.Module):
    """Per-branch RMSNorm, then one depthwise causal convolution over time
    of every branch's channels (dilated by max_ngram), then SiLU.
    [B, T, hc, D] -> [B, T, hc, D]."""

    def __init__(self, hidden: int, kernel: int, dilation: int, hc_mult: int) -> None:
        super().__init__()
        ch = hidden * hc_mult
        self.hc_mult = hc_mult
        self.norms = nn.ModuleList(RMSNorm(hidden, eps=1e-5) for _ in range(hc_mult))
        self.conv = nn.Conv1d(ch, ch, kernel, groups=ch, bias=False,
                              padding=(kernel - 1) * dilation, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, G, D = x.shape
        normed = torch.cat([self.norms[g](x[:, :, g]) for g in range(G)], dim=-1)
        # Left padding only survives the cut to T: position t sees t and before.
        y = self.conv(normed.transpose(1, 2))[..., :T]
        return nn.functional.silu(y).transpose(1, 2).reshape(B, T, G, D)


class Engram(nn.Module):
    """One Engram layer: rows [B, T, heads, head_dim] and the hidden state
    [B, T, hc, hidden] in, the Engram branch's output [B, T, hc, hidden] out."""

    def __init__(self, cfg: EngramConfig, layer_id: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.layer_id = layer_id
        width = (cfg.max_ngram_size - 1) * cfg.n_embed_per_ngram   # concatenated heads
        self.value_proj = nn.Linear(width, cfg.hidden_size)
        self.key_projs = nn.ModuleList(nn.Linear(width, cfg.hidden_size)
                                       for _ in range(cfg.hc_mult))
        self.key_norms = nn.ModuleList(RMSNorm(cfg.hidden_size) for _ in range(cfg.hc_mult))
        self.query_norms = nn.ModuleList(RMSNorm(cfg.hidden_size) for _ in range(cfg.hc_mult))
        self.short_conv = ShortConv(cfg.hidden_size, cfg.kernel_size, cfg.max_ngram_size,
                                    cfg.hc_mult)

    def forward(self, hidden: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        # The tables hold BF16; the layer computes in its parameters' dtype.
        emb = rows.to(self.value_proj.weight.dtype).flatten(start_dim=-2)
        scale = math.sqrt(self.cfg.hidden_size)
        gates = []
        for g in range(self.cfg.hc_mult):
            key = self.key_norms[g](self.key_projs[g](emb))
            query = self.query_norms[g](hidden[:, :, g])
            s = (key * query).sum(dim=-1) / scale
            # signed square root keeps the gate's sign and tames its size
            s = s.abs().clamp_min(1e-6).sqrt() * s.sign()
            gates.append(s.sigmoid().unsqueeze(-1))
        value = torch.stack(gates, dim=2) * self.value_proj(emb).unsqueeze(2)
        return value + self.short_conv(value)


class DemoLM(nn.Module):
    """The reference's demo backbone: token embedding copied onto hc_mult
    branches, num_layers blocks (identity attention and MoE; an Engram
    residual in the blocks of layer_ids), the first branch to the logits."""

    def __init__(self, cfg: EngramConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.engrams = nn.ModuleDict({str(lid): Engram(cfg, lid) for lid in cfg.layer_ids})
        self.head = nn.Linear(cfg.hidden_size, cfg.vocab_size)

    def forward(self, input_ids: torch.Tensor, rows_source,
                history: Optional[torch.Tensor] = None) -> torch.Tensor:
        # Start the fetch first, so the rows travel while the layers before
        # each Engram layer run.
        rows = rows_source.start(input_ids, history)
        h = self.embed(input_ids).unsqueeze(2).expand(-1, -1, self.cfg.hc_mult, -1)
        for lid in range(self.cfg.num_layers):
            if str(lid) in self.engrams:
                h = self.engrams[str(lid)](h, rows(lid)) + h
            # attention and MoE are identities here: h + f(h) with f = id
            h = h + h
            h = h + h
        return self.head(h[:, :, 0])


def store_hash(model: "engram.Model"):
    """Model.hash as a MemoryRows row-id function."""
    def row_ids(input_ids, history, layer):
        return model.hash(input_ids, history=history, layer=layer)
    return row_ids


def main(argv: List[str]) -> int:
    address = argv[1] if len(argv) > 1 else "127.0.0.1:7070"
    cfg = EngramConfig()
    torch.manual_seed(0)
    tables = {lid: torch.randn(n, cfg.head_dim).to(torch.bfloat16)
              for lid, n in layer_rows(cfg).items()}
    with engram.Client(address) as client:
        for lid, t in tables.items():
            client.import_array(cfg.table(lid), t)
        client.put_manifest(cfg.manifest())
        model = client.model(cfg.name)
        lm = DemoLM(cfg).eval()
        ids = torch.randint(0, cfg.vocab_size, (2, 16))
        store = StoreRows(model)
        with torch.no_grad():
            a = lm(ids, MemoryRows(tables, store_hash(model)))
            b = lm(ids, store)
        store.close()
        print("logits %s; memory and store identical: %s" % (tuple(a.shape), torch.equal(a, b)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
