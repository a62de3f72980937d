"""The PyTorch Engram layer (python/examples/engram_layer.py) over the store.

Each test creates a demo-sized model on a real engram-server: every layer's
table from seeded torch values, imported with Client.import_array, and a
manifest naming them. Then the same DemoLM runs over the same token batch
twice, once with the tables in nn.Embedding (MemoryRows, indexed by
Model.hash) and once with rows from the store (StoreRows: one prefetch,
wait_layer per Engram layer), and the logits must be equal bit for bit
(torch.equal). Prefill (no history) and a decode step (T = 1 with
history) both. BF16 tables and DeepSeek-V4.1's mxfp8_e4m3 rows, which the
in-memory side dequantises once with engram.dequantize and the store side
gets dequantised by the prefetch (dtype="bf16").
"""
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import engram  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
import engram_layer as el  # noqa: E402

DIM_V41 = 256
RB_V41 = DIM_V41 + DIM_V41 // 32


def bf16_model(client, cfg):
    """Imports seeded BF16 tables and the manifest; returns the tables."""
    gen = torch.Generator().manual_seed(1234)
    tables = {lid: torch.randn(n, cfg.head_dim, generator=gen).to(torch.bfloat16)
              for lid, n in el.layer_rows(cfg).items()}
    for lid, t in tables.items():
        info = client.import_array(cfg.table(lid), t)
        assert (info.rows, info.dim, info.dtype) == (t.shape[0], cfg.head_dim, "bf16")
    assert client.put_manifest(cfg.manifest()).n_missing == 0
    return tables


def mxfp8_rows(n, seed):
    """n valid mxfp8_e4m3 rows: codes without the NaNs (0x7F, 0xFF), block
    scales 120..134 (2^-7 .. 2^7)."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, size=(n, DIM_V41), dtype=np.uint8)
    codes[(codes & 0x7F) == 0x7F] = 0x7E
    scales = rng.integers(120, 135, size=(n, DIM_V41 // 32), dtype=np.uint8)
    return np.concatenate([codes, scales], axis=1)


def run_both(cfg, tables, model, ids, history=None, row_ids=None):
    """Logits of the same DemoLM over the same batch from memory and store."""
    torch.manual_seed(7)
    lm = el.DemoLM(cfg).eval()
    mem = el.MemoryRows(tables, row_ids or el.store_hash(model))
    store = el.StoreRows(model)
    try:
        with torch.no_grad():
            a = lm(ids, mem, history)
            b = lm(ids, store, history)
    finally:
        store.close()
    return a, b


def test_store_hash_is_the_reference_hash(client):
    cfg = el.EngramConfig(name="ref-hash")
    bf16_model(client, cfg)
    model = client.model(cfg.name)
    ref = el.NgramHash(cfg)
    ids = torch.randint(0, cfg.vocab_size, (3, 11), generator=torch.Generator().manual_seed(5))
    rows = el.layer_rows(cfg)
    for lid in cfg.layer_ids:
        got = model.hash(ids, layer=lid)
        np.testing.assert_array_equal(got, ref(ids.numpy(), lid))
        assert got.min() >= 0 and got.max() < rows[lid]


def test_bf16_memory_and_store_identical(client):
    cfg = el.EngramConfig(name="demo-bf16")
    tables = bf16_model(client, cfg)
    model = client.model(cfg.name)
    assert (model.dtype, model.heads, model.dim) == ("bf16", cfg.heads, cfg.head_dim)
    ids = torch.randint(0, cfg.vocab_size, (4, 24), generator=torch.Generator().manual_seed(9))

    a, b = run_both(cfg, tables, model, ids)
    assert a.shape == (4, 24, cfg.vocab_size) and a.dtype == torch.float32
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)

    # The in-memory side indexed by the reference's own hashing gives the
    # same logits too.
    ref = el.NgramHash(cfg)
    c, _ = run_both(cfg, tables, model, ids, row_ids=lambda t, h, lid: ref(t.numpy(), lid))
    assert torch.equal(a, c)

    # The rows really matter: another table gives other logits.
    other = {lid: t.flip(0) for lid, t in tables.items()}
    d, _ = run_both(cfg, other, model, ids)
    assert not torch.equal(a, d)


def test_bf16_decode_step_identical(client):
    cfg = el.EngramConfig(name="demo-bf16-decode")
    tables = bf16_model(client, cfg)
    model = client.model(cfg.name)
    g = torch.Generator().manual_seed(11)
    ids = torch.randint(0, cfg.vocab_size, (6, 1), generator=g)
    hist = torch.randint(0, cfg.vocab_size, (6, cfg.max_ngram_size - 1), generator=g)
    a, b = run_both(cfg, tables, model, ids, hist)
    assert torch.equal(a, b)
    # The history changes the rows (and so the logits) of a decode step.
    c, _ = run_both(cfg, tables, model, ids)
    assert not torch.equal(a, c)


def test_v41_fp8_rows_dequantized_identical(client):
    # V4.1's row type: 256-dim mxfp8_e4m3 rows (264 bytes), 4-grams, DEAD
    # tokens; 2 heads per order keeps it CPU-sized.
    cfg = el.EngramConfig(name="demo-v41", engram_vocab_size=(500, 500, 500),
                          max_ngram_size=4, n_embed_per_ngram=2 * DIM_V41,
                          n_head_per_ngram=2, layer_ids=(1, 2), dtype="mxfp8_e4m3",
                          dead_tokens=True)
    assert cfg.head_dim == DIM_V41
    tables = {}
    for lid, n in el.layer_rows(cfg).items():
        raw = mxfp8_rows(n, seed=lid)
        info = client.import_array(cfg.table(lid), raw, dtype="mxfp8_e4m3")
        assert (info.rows, info.row_bytes, info.dim) == (n, RB_V41, DIM_V41)
        # Dequantised once, whole table, as a serving engine holding the
        # table in memory would.
        bf = engram.dequantize(raw, DIM_V41, "bf16")
        tables[lid] = torch.from_numpy(bf.view(np.int16)).view(torch.bfloat16)
        assert torch.isfinite(tables[lid].float()).all()
    assert client.put_manifest(cfg.manifest()).n_missing == 0
    model = client.model(cfg.name)
    assert (model.dtype, model.heads, model.dim) == ("mxfp8_e4m3", cfg.heads, DIM_V41)

    g = torch.Generator().manual_seed(13)
    ids = torch.randint(0, cfg.vocab_size, (3, 20), generator=g)
    # Without DEAD tokens V4.1 hashes by the reference's rule.
    ref = el.NgramHash(cfg)
    for lid in cfg.layer_ids:
        np.testing.assert_array_equal(model.hash(ids, layer=lid), ref(ids.numpy(), lid))
    a, b = run_both(cfg, tables, model, ids)
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)

    # A decode step with history, one DEAD (-1, an image token) in it.
    step = torch.randint(0, cfg.vocab_size, (3, 1), generator=g)
    hist = torch.randint(0, cfg.vocab_size, (3, cfg.max_ngram_size - 1), generator=g)
    hist[1, 0] = -1
    a, b = run_both(cfg, tables, model, step, hist)
    assert torch.equal(a, b)

    # The store's dequantised rows are the in-memory table's rows exactly.
    p = model.prefetch(ids, dtype="bf16", as_torch=True)
    got = p.wait()
    p.close()
    for i, lid in enumerate(cfg.layer_ids):
        want = tables[lid][torch.from_numpy(model.hash(ids, layer=lid))]
        assert torch.equal(got[i], want)
