"""The engram package against a real engram-server: byte-exact lookups into
numpy arrays and torch tensors, futures and asyncio, every error class a
server or the library can raise, import round trips of every dtype,
hashing and prefetch equal to engramctl's (the C client), 8 threads on one
client, and bad arguments refused before anything is written."""
import asyncio
import concurrent.futures
import json
import os
import random
import socket
import threading
import zlib

import numpy as np
import pytest

import engram

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
V41 = os.path.join(ROOT, "deploy", "examples", "tiny-deepseek-v4.1.json")
TINY = os.path.join(ROOT, "deploy", "examples", "tiny-model.json")


def rand_bytes(rows, row_bytes, seed):
    return np.random.default_rng(seed).integers(0, 256, (rows, row_bytes), dtype=np.uint8)


def valid_mxfp8(rows, seed):
    """rows of V4.1's type: no NaN code, scales 120..134."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, (rows, 256), dtype=np.uint8)
    codes[(codes & 0x7F) == 0x7F] ^= 1
    scales = rng.integers(120, 135, (rows, 8), dtype=np.uint8)
    return np.concatenate([codes, scales], axis=1)


@pytest.fixture(scope="module")
def tables(server):
    """A u8 table of 64-byte rows and a bf16 table, imported once."""
    with engram.Client(server.address) as c:
        u8 = rand_bytes(5000, 64, 1)
        c.import_array("u8", u8)
        bf = np.random.default_rng(2).integers(0, 1 << 16, (3000, 32), dtype=np.uint16)
        c.import_array("bf", bf, dtype="bf16")
    return {"u8": u8, "bf": bf}


# ---- lookups ------------------------------------------------------------------


def test_lookup_numpy_exact(client, tables):
    rows = [0, 4999, 17, 17, 2500]
    got = client.lookup("u8", rows)
    assert got.dtype == np.uint8 and got.shape == (5, 64)
    assert np.array_equal(got, tables["u8"][rows])
    # any integer array-like, any shape (flattened): int32, uint64, 2-D
    for ids in (np.array(rows, dtype=np.int32), np.array(rows, dtype=np.uint64),
                np.array([[0, 4999], [17, 2500]])):
        assert np.array_equal(client.lookup("u8", ids), tables["u8"][ids.reshape(-1)])
    assert client.lookup("u8", []).shape == (0, 64)


def test_lookup_into_out(client, tables):
    out = np.zeros((3, 64), dtype=np.uint8)
    assert client.lookup("u8", [3, 2, 1], out=out) is out
    assert np.array_equal(out, tables["u8"][[3, 2, 1]])
    # a bf16 table's rows straight into uint16 elements [n, dim]
    out16 = np.zeros((2, 32), dtype=np.uint16)
    client.lookup("bf", [7, 2999], out=out16)
    assert np.array_equal(out16, tables["bf"][[7, 2999]])


def test_lookup_into_torch(client, tables):
    torch = pytest.importorskip("torch")
    t = torch.zeros((4, 64), dtype=torch.uint8)
    assert client.lookup("u8", torch.tensor([9, 8, 7, 6]), out=t) is t
    assert np.array_equal(t.numpy(), tables["u8"][[9, 8, 7, 6]])
    # bf16 rows into a bfloat16 tensor: the same bits
    tb = torch.zeros((3, 32), dtype=torch.bfloat16)
    client.lookup("bf", [0, 1, 2], out=tb)
    assert np.array_equal(tb.view(torch.int16).numpy().view(np.uint16), tables["bf"][:3])
    if torch.cuda.is_available():
        pinned = torch.zeros((2, 64), dtype=torch.uint8, pin_memory=True)
        client.lookup("u8", [5, 6], out=pinned)
        assert np.array_equal(pinned.numpy(), tables["u8"][[5, 6]])


def test_lookup_async_and_callbacks(client, tables):
    seen = []
    done = threading.Event()
    futs = []
    for k in range(20):
        ids = np.arange(k * 100, k * 100 + 100)
        f = client.lookup_async("u8", ids)
        futs.append((f, ids))
    futs[-1][0].add_done_callback(lambda f: (seen.append(f.result().shape), done.set()))
    for f, ids in futs:
        assert isinstance(f, concurrent.futures.Future)
        assert np.array_equal(f.result(timeout=10), tables["u8"][ids])
        assert f.done() and not f.cancelled()
    assert done.wait(5) and seen == [(100, 64)]
    # errors come through the future
    f = client.lookup_async("u8", [5000])
    with pytest.raises(engram.OutOfRange):
        f.result(timeout=10)
    # cancel: a finished future refuses, an unfinished one is cancelled
    # and its result raises CancelledError
    many = [client.lookup_async("u8", np.arange(5000)) for _ in range(32)]
    cancelled = [f.cancel() for f in many]
    for f, c in zip(many, cancelled):
        if c:
            assert f.cancelled()
            with pytest.raises(concurrent.futures.CancelledError):
                f.result()
        else:
            assert np.array_equal(f.result(timeout=10), tables["u8"])


def test_asyncio(client, tables):
    async def main():
        ids = [[1, 2, 3], [4000, 4001], [0]]
        got = await asyncio.gather(*(client.alookup("u8", i) for i in ids))
        for i, g in zip(ids, got):
            assert np.array_equal(g, tables["u8"][i])
        with pytest.raises(engram.NotFound):
            await client.alookup("no-such-table", [1])
    asyncio.run(main())


def test_eight_threads_one_client(client, tables):
    errors = []

    def work(seed):
        rng = random.Random(seed)
        try:
            for _ in range(150):
                ids = [rng.randrange(5000) for _ in range(rng.randrange(1, 300))]
                got = client.lookup("u8", ids)
                if not np.array_equal(got, tables["u8"][ids]):
                    errors.append("thread %d: wrong bytes" % seed)
                    return
        except Exception as e:   # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# ---- bad arguments: refused, nothing written -------------------------------------


def test_bad_out_refused_untouched(client):
    torch = pytest.importorskip("torch")
    sentinel = np.full((3, 64), 0xAB, dtype=np.uint8)

    def refused(out, exc, msg):
        with pytest.raises(exc) as e:
            client.lookup("u8", [0, 1, 2], out=out)
        assert msg in str(e.value)

    out = sentinel.copy()
    refused(out[:2], ValueError, "out holds 128 bytes; this call writes 192")
    ro = sentinel.copy()
    ro.setflags(write=False)
    refused(ro, ValueError, "out is read-only")
    refused(np.zeros((3, 128), dtype=np.uint8)[:, ::2], ValueError, "not C-contiguous")
    refused(np.zeros((3, 16), dtype=np.float32), TypeError, "out has dtype float32")
    t = torch.full((64, 3), 0xAB, dtype=torch.uint8).t()
    refused(t, ValueError, "out is not contiguous")
    assert bool((t == 0xAB).all())
    refused(torch.zeros((3, 32), dtype=torch.float16), TypeError, "out has dtype torch.float16")
    refused([0] * 192, TypeError, "out must be a numpy array or a torch tensor")
    assert np.array_equal(out, sentinel) and np.array_equal(ro, sentinel)
    with pytest.raises(ValueError, match=r"rows\[1\] is -4: row ids are >= 0"):
        client.lookup("u8", [1, -4])
    with pytest.raises(TypeError, match="rows must be integers, not float64"):
        client.lookup("u8", [1.5])


# ---- every error class --------------------------------------------------------------


def test_errors(server, client, tables):
    with pytest.raises(engram.NotFound) as e:
        client.lookup("nope", [0])
    assert e.value.code == "NOT_FOUND" and e.value.message == 'table "nope" not found'
    assert isinstance(e.value, engram.EngramError)
    with pytest.raises(engram.OutOfRange) as e:
        client.lookup("u8", [0, 5000])
    assert e.value.message == ('row 5000 (index 1 in the request) is out of range: '
                               'table "u8" has 5000 rows')
    with pytest.raises(engram.NotFound):
        client.table("nope")
    with pytest.raises(engram.InvalidArgument) as e:
        client.put_manifest({"name": "bad"})
    assert e.value.code == "INVALID_ARGUMENT" and "manifest: missing key" in e.value.message
    # a model whose tables are not there
    doc = json.load(open(TINY))
    doc["name"] = "nomodel"
    doc["tables"] = {"1": "nomodel.a", "15": "nomodel.b"}
    client.put_manifest(doc)
    with pytest.raises(engram.FailedPrecondition) as e:
        client.model("nomodel")
    assert "nomodel.a" in e.value.message
    # nobody listening: UNAVAILABLE
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with engram.Client("127.0.0.1:%d" % port, deadline_ms=2000) as c:
        with pytest.raises(engram.Unavailable):
            c.lookup("u8", [0])
    # listening but never answering: DEADLINE_EXCEEDED
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    try:
        with engram.Client("127.0.0.1:%d" % s.getsockname()[1], deadline_ms=300) as c:
            with pytest.raises(engram.DeadlineExceeded):
                c.tables()
    finally:
        s.close()
    # unknown keyword
    with pytest.raises(TypeError, match="unexpected keyword argument 'dedline_ms'"):
        engram.Client(server.address, dedline_ms=5)


def test_admin_token_errors(tmp_path):
    from conftest import Server
    tok = tmp_path / "token"
    tok.write_text("s3cret\n")
    srv = Server(tmp_path, "--admin-token-file", str(tok))
    try:
        with engram.Client(srv.address) as c:
            with pytest.raises(engram.Unauthenticated):
                c.put_manifest(V41)
        bad = tmp_path / "bad"
        bad.write_text("wrong\n")
        with engram.Client(srv.address, token_file=str(bad)) as c:
            with pytest.raises(engram.Unauthenticated) as e:
                c.put_manifest(V41)
            assert e.value.message == "admin token rejected"
        with engram.Client(srv.address, token_file=str(tok)) as c:
            assert c.put_manifest(V41).name == "tiny-v41"
    finally:
        assert srv.stop() == 0, srv.log_tail()


# ---- imports of every dtype ---------------------------------------------------------------


@pytest.mark.parametrize("dtype,np_dtype", [
    ("u8", np.uint8), ("i8", np.int8), ("i16", np.int16), ("i32", np.int32),
    ("f16", np.float16), ("f32", np.float32), ("f64", np.float64),
    ("bf16", np.uint16), ("fp8_e4m3", np.uint8), ("fp8_e5m2", np.uint8)])
def test_import_round_trip(client, dtype, np_dtype):
    raw = rand_bytes(257, 48 if np.dtype(np_dtype).itemsize < 8 else 64, hash(dtype) & 0xFFFF)
    a = raw.view(np_dtype)
    if np.dtype(np_dtype).kind == "f":   # keep NaNs out so == compares
        a = np.nan_to_num(a)
    name = "rt-" + dtype
    kw = {} if dtype in ("u8", "i8", "i16", "i32", "f16", "f32", "f64") else {"dtype": dtype}
    t = client.import_array(name, a, **kw)
    assert (t.name, t.rows, t.dim, t.dtype, t.row_bytes) == (name, 257, a.shape[1], dtype,
                                                            a.nbytes // 257)
    assert t.checksum == zlib.crc32(a.tobytes())
    got = client.lookup(name, np.arange(257))
    assert got.tobytes() == a.tobytes()
    assert client.verify(name).match


def test_import_torch_bf16_and_mxfp8(client):
    torch = pytest.importorskip("torch")
    t = torch.randn(100, 16, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    info = client.import_array("rt-torch-bf16", t, progress=lambda d, n: None)
    assert (info.dtype, info.dim, info.row_bytes) == ("bf16", 16, 32)
    out = torch.empty((100, 16), dtype=torch.bfloat16)
    client.lookup("rt-torch-bf16", torch.arange(100), out=out)
    assert torch.equal(out, t)
    rows = valid_mxfp8(50, 4)
    info = client.import_array("rt-mx", rows, dtype="mxfp8_e4m3")
    assert (info.dtype, info.dim, info.row_bytes) == ("mxfp8_e4m3", 256, 264)
    assert np.array_equal(client.lookup("rt-mx", range(50)), rows)
    bad = rows.copy()
    bad[7, 3] = 0x7F
    with pytest.raises(engram.InvalidArgument) as e:
        client.import_array("rt-mx-bad", bad, dtype="mxfp8_e4m3")
    assert 'row 7 column 3 of table "rt-mx-bad" is 0x7f, a NaN E4M3 code' in e.value.message
    with pytest.raises(engram.NotFound):
        client.table("rt-mx-bad")
    with pytest.raises(TypeError, match="cannot tell the engram dtype of a uint16 array"):
        client.import_array("x", np.zeros((2, 2), dtype=np.uint16))
    with pytest.raises(ValueError, match="2-D array"):
        client.import_array("x", np.zeros(4, dtype=np.uint8))


# ---- tables, stats, health, manifests --------------------------------------------------------


def test_tables_stats_health_manifests(client, tables):
    names = [t.name for t in client.tables()]
    assert names == sorted(names) and "u8" in names
    t = client.table("u8")
    assert (t.rows, t.row_bytes, t.dtype, t.version, t.resident) == (5000, 64, "u8", 1, True)
    assert t.versions[0].state == "active"
    assert client.health() and client.health("engram.v1.Lookup")
    with pytest.raises(engram.NotFound):
        client.health("no.such.Service")
    st = client.stats()
    assert st["uptime_ms"] > 0 and isinstance(st["rpcs"], list)
    info = client.put_manifest(V41)
    assert (info.name, info.dtype, info.row_bytes, info.n_layers) == ("tiny-v41", "mxfp8_e4m3",
                                                                    264, 2)
    assert client.manifest("tiny-v41")["max_ngram_size"] == 4
    assert "tiny-v41" in [m.name for m in client.manifests()]


# ---- models: hash and prefetch equal to the C client -------------------------------------------


@pytest.fixture(scope="module")
def v41(server):
    r = server.ctl("put-manifest", V41)
    assert r.returncode == 0, r.stderr
    r = server.ctl("import-synthetic", "--manifest", "tiny-v41", "--seed", "9")
    assert r.returncode == 0, r.stderr
    return server


SEQS = [[1, 5, -1, 9, 300, 17, 17], [7, 7, 7, 7, 7, 7, 7]]


def test_hash_equals_engramctl(v41, client):
    with client.model("tiny-v41") as m:
        assert (m.layer_ids, m.heads, m.dim, m.row_bytes, m.dtype) == ((1, 14), 24, 256, 264,
                                                                       "mxfp8_e4m3")
        rows = m.hash(SEQS)
        assert rows.dtype == np.int64 and rows.shape == (2, 2, 7, 24)
        for li, layer in enumerate((1, 14)):
            r = v41.ctl("hash", "--manifest", V41, "--layer", str(layer),
                        stdin="\n".join(" ".join(map(str, s)) for s in SEQS) + "\n")
            want = [list(map(int, line.split())) for line in r.stdout.splitlines()]
            assert rows[li].reshape(2, -1).tolist() == want
            assert np.array_equal(m.hash(SEQS, layer=layer), rows[li])
        # history: a decode step equals the tail of the full sequence
        full = m.hash([SEQS[0]], layer=1)
        step = m.hash([[SEQS[0][6]]], history=[SEQS[0][3:6]], layer=1)
        assert np.array_equal(step[0, 0], full[0, 6])
        with pytest.raises(engram.InvalidArgument):
            m.hash([[5000]])
        with pytest.raises(ValueError, match=r"history must be \[B, max_ngram - 1\]"):
            m.hash([[1]], history=[[1, 2]])


def crc_line(server, args, seq):
    r = server.ctl("prefetch", "--model", "tiny-v41", *args, stdin=" ".join(map(str, seq)) + "\n")
    assert r.returncode == 0, r.stderr
    head = r.stdout.split(", crc32 ")
    return int(head[1].split(",")[0].split()[0], 16), int(head[0].split(", ")[1].split()[0])


def test_prefetch_equals_engramctl(v41, client):
    torch = pytest.importorskip("torch")
    with client.model("tiny-v41") as m:
        for seq in SEQS:
            for dq in ((), ("--dequant", "bf16")):
                crc, nbytes = crc_line(v41, ["--layer", "1,14"] + list(dq), seq)
                with m.prefetch([seq], dtype="bf16" if dq else "raw") as p:
                    out = p.wait()
                assert out.nbytes == nbytes and zlib.crc32(out.tobytes()) == crc
        # into a caller's torch tensor, as bfloat16; one layer as soon as it is in
        out = torch.empty((2, 2, 7, 24, 256), dtype=torch.bfloat16)
        with m.prefetch(SEQS, dtype="bf16", out=out, hash_async=True) as p:
            l14 = p.wait_layer(14)
            assert l14.data_ptr() == out[1].data_ptr()
            assert p.wait() is out
        raw = m.prefetch(SEQS).wait()
        want = engram.dequantize(raw.reshape(-1, 264), 256, "bf16").reshape(2, 2, 7, 24, 256)
        assert np.array_equal(out.view(torch.int16).numpy().view(np.uint16), want)
        f32 = m.prefetch(SEQS, dtype="float32").wait()
        assert np.array_equal(f32, engram.dequantize(raw.reshape(-1, 264), 256, "float32")
                              .reshape(f32.shape))
        # a column subset (a tensor-parallel rank) equals those columns of the whole
        cols = m.tp_cols(8, 3)
        assert cols == (9, 10, 11)
        part = m.prefetch(SEQS, layers=[14], cols=cols).wait()
        assert np.array_equal(part[0], raw[1][:, :, list(cols)])
        with pytest.raises(ValueError, match="layer 7 was not asked for"):
            m.prefetch(SEQS, layers=[1]).wait_layer(7)
        with pytest.raises(TypeError, match="out has dtype torch.float32"):
            m.prefetch(SEQS, dtype="bf16", out=torch.empty((2, 2, 7, 24, 256)))


@pytest.fixture(scope="module")
def tiny(server):
    """The bf16 tiny model (deploy/examples/tiny-model.json), imported."""
    r = server.ctl("put-manifest", TINY)
    assert r.returncode == 0, r.stderr
    r = server.ctl("import-synthetic", "--manifest", "tiny", "--seed", "1")
    assert r.returncode == 0, r.stderr
    return "tiny"


def test_prefetch_bf16_needs_mxfp8(tiny, client):
    with client.model("tiny") as m:
        with pytest.raises(ValueError, match="dequantises mxfp8_e4m3 rows; model tiny holds bf16"):
            m.prefetch([[1, 2]], dtype="bf16")
        out = m.prefetch([[1, 2]], as_torch=True).wait()
        assert type(out).__module__.startswith("torch") and tuple(out.shape) == (2, 1, 2, 8, 64)


def test_close_refused_while_a_prefetch_is_open(server, tiny, tables):
    c = engram.Client(server.address)
    m = c.model("tiny")
    p = m.prefetch([[1, 2, 3]])
    with pytest.raises(RuntimeError, match="free the model's 1 prefetches first"):
        c.close()
    assert not c.closed                     # still open and usable
    assert c.lookup_async("u8", [0]).result(10).shape == (1, 64)
    p.wait()
    p.close()
    c.close()
    assert c.closed


def test_close_with_open_model(server, tiny):
    c = engram.Client(server.address)
    m = c.model("tiny")
    p = m.prefetch([[1, 2, 3]])
    p.wait()
    p.close()
    c.close()          # closes the model it opened, then the client
    assert c.closed
    with pytest.raises(ValueError, match="the client is closed"):
        c.lookup("u8", [0])
