"""The client's same-node path (issue 16, engram_client_options.local)
against real engram-server processes started with --shm-dir (a temporary
directory on /dev/shm when it is writable, else under /tmp).

"Served locally" is proven by the server's own count of Lookup calls
(Admin.Stats) staying flat while the client's lookups succeed, and "over
gRPC" by it growing by one per lookup. The first lookup of an AUTO client
asks for the listing in the background and goes over gRPC, so every
client is warmed up (lookups until one leaves the count flat) first.

  - AUTO: byte-exact rows, served locally; the rows a lookup names out of
    range are answered by the server (its exact OUT_OF_RANGE message);
  - a cutover (a new version imported and activated) is served within
    version_refresh_ms, locally, from the new file;
  - OFF: every lookup over gRPC;
  - REQUIRE: a server without --shm-dir, a table that is not resident and
    a file the client may not open (another user, 0600) fail with
    FAILED_PRECONDITION and the exact reason; AUTO falls back silently;
  - a file shortened under the client: REQUIRE fails with the exact reason
    (the client survives: the fault never reaches it), then re-lists and
    names the size mismatch; rows before the cut are still read locally;
  - a prefetch (raw and dequantised to BF16) through the local path equals
    the one over gRPC byte for byte;
  - engramctl --local;
  - a cluster of two shards where only shard 0's server has --shm-dir:
    shard 0 is read locally, shard 1 over gRPC, rows exact; REQUIRE names
    shard 1's server.
"""
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

import engram
from conftest import Server

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
# The synthetic rule's numpy form lives with the integration tests.
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from synthetic import synthetic_rows  # noqa: E402
V41 = os.path.join(ROOT, "deploy", "examples", "tiny-deepseek-v4.1.json")
REFRESH_MS = 200


def shm_base():
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        return tempfile.mkdtemp(prefix="engram-local-test-", dir="/dev/shm")
    return tempfile.mkdtemp(prefix="engram-local-test-")


def rand_bytes(rows, row_bytes, seed):
    return np.random.default_rng(seed).integers(0, 256, (rows, row_bytes), dtype=np.uint8)


@pytest.fixture(scope="module")
def shm_server(tmp_path_factory):
    base = shm_base()
    shm = os.path.join(base, "shm")
    # 24 MiB of resident budget: "big" (25 MiB) is served from RocksDB.
    s = Server(tmp_path_factory.mktemp("engram-local"), "--shm-dir", shm,
               "--resident-budget", str(24 << 20))
    s.shm = shm
    s.tables = {}
    try:
        with engram.Client(s.address, local="off") as c:
            s.tables["u8"] = rand_bytes(5000, 64, 1)
            c.import_array("u8", s.tables["u8"])
            s.tables["big"] = rand_bytes(102400, 256, 2)
            c.import_array("big", s.tables["big"])
        r = s.ctl("put-manifest", V41)
        assert r.returncode == 0, r.stderr
        r = s.ctl("import-synthetic", "--manifest", "tiny-v41", "--seed", "9")
        assert r.returncode == 0, r.stderr
        names = sorted(os.listdir(shm))
        assert names == [".engram-shm.lock", "tiny-v41.l14@v1@s0of1.engram",
                         "tiny-v41.l1@v1@s0of1.engram", "u8@v1@s0of1.engram"], names
        yield s
    finally:
        rc = s.stop()
        subprocess.run(["rm", "-rf", base])
    assert rc == 0, "engram-server exited with %s: %s" % (rc, s.log_tail())


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("engram-plain"))
    with engram.Client(s.address) as c:
        c.import_array("u8", rand_bytes(100, 64, 3))
    yield s
    rc = s.stop()
    assert rc == 0, "engram-server exited with %s: %s" % (rc, s.log_tail())


def lookup_calls(address):
    """The server's count of Lookup calls (from a client of its own)."""
    with engram.Client(address, local="off") as c:
        st = c.stats()
    return sum(r["calls"] for r in st["rpcs"] if r["method"] == "/engram.v1.Lookup/Lookup")


def warm(c, address, table, rows):
    """Lookups until one is served without a Lookup call (the listing is
    in); fails after 5 s."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        before = lookup_calls(address)
        c.lookup(table, rows)
        if lookup_calls(address) == before:
            return
        time.sleep(0.02)
    pytest.fail("lookups of %s never served locally" % table)


def test_auto_serves_locally_byte_exact(shm_server):
    want = shm_server.tables["u8"]
    rng = np.random.default_rng(7)
    with engram.Client(shm_server.address, version_refresh_ms=REFRESH_MS) as c:
        warm(c, shm_server.address, "u8", [0])
        before = lookup_calls(shm_server.address)
        for _ in range(50):
            rows = rng.integers(0, 5000, 300)
            assert np.array_equal(c.lookup("u8", rows), want[rows])
        rows = [4999, 0, 17, 17, 2500]
        assert np.array_equal(c.lookup("u8", rows), want[rows])
        out = np.zeros((5, 64), dtype=np.uint8)
        c.lookup("u8", rows, out=out)
        assert np.array_equal(out, want[rows])
        assert lookup_calls(shm_server.address) == before
        # Out of range: sent to the server, which answers as it always did.
        with pytest.raises(engram.OutOfRange) as e:
            c.lookup("u8", [3, 5000])
        assert e.value.message == ('row 5000 (index 1 in the request) is out of range: '
                                   'table "u8" has 5000 rows')
        assert lookup_calls(shm_server.address) == before + 1


def test_off_goes_over_grpc(shm_server):
    want = shm_server.tables["u8"]
    with engram.Client(shm_server.address, local="off") as c:
        before = lookup_calls(shm_server.address)
        for k in range(10):
            assert np.array_equal(c.lookup("u8", [k, 4000 + k]), want[[k, 4000 + k]])
        assert lookup_calls(shm_server.address) == before + 10
    with pytest.raises(ValueError, match="local must be 'auto', 'off' or 'require'"):
        engram.Client(shm_server.address, local="sometimes")


def test_not_resident_goes_over_grpc(shm_server):
    want = shm_server.tables["big"]
    with engram.Client(shm_server.address) as c:
        warm(c, shm_server.address, "u8", [0])
        before = lookup_calls(shm_server.address)
        assert np.array_equal(c.lookup("big", [1, 102399]), want[[1, 102399]])
        assert lookup_calls(shm_server.address) == before + 1
    with engram.Client(shm_server.address, local="require") as c:
        with pytest.raises(engram.FailedPrecondition) as e:
            c.lookup("big", [1])
        assert e.value.message == 'table "big" has no usable local file: no file is listed for it'


def test_require_without_shm_dir(plain_server):
    with engram.Client(plain_server.address, local="require") as c:
        with pytest.raises(engram.FailedPrecondition) as e:
            c.lookup("u8", [1])
        assert e.value.message == ('table "u8" has no usable local file: the server '
                                   'publishes no local files (no --shm-dir)')
    with engram.Client(plain_server.address) as c:   # AUTO: silently gRPC
        before = lookup_calls(plain_server.address)
        for _ in range(3):
            assert c.lookup("u8", [1, 99]).shape == (2, 64)
            time.sleep(0.05)
        assert lookup_calls(plain_server.address) == before + 3


def test_cutover_seen_within_refresh(shm_server):
    want1 = shm_server.tables["u8"]
    with engram.Client(shm_server.address, version_refresh_ms=REFRESH_MS) as c:
        warm(c, shm_server.address, "u8", [0])
        assert np.array_equal(c.lookup("u8", [1, 2]), want1[[1, 2]])
        want2 = rand_bytes(5000, 64, 11)
        with engram.Client(shm_server.address, local="off") as admin:
            admin.import_array("u8", want2)
        shm_server.tables["u8"] = want2
        t0 = time.monotonic()
        while not np.array_equal(c.lookup("u8", [1, 2]), want2[[1, 2]]):
            assert time.monotonic() - t0 < (REFRESH_MS + 1000) / 1000.0
            time.sleep(0.01)
        seen_ms = (time.monotonic() - t0) * 1000
        assert seen_ms < REFRESH_MS + 1000
        # And from the new file, locally.
        warm(c, shm_server.address, "u8", [0])
        before = lookup_calls(shm_server.address)
        rows = np.arange(0, 5000, 7)
        assert np.array_equal(c.lookup("u8", rows), want2[rows])
        assert lookup_calls(shm_server.address) == before
        names = sorted(os.listdir(shm_server.shm))
        assert "u8@v2@s0of1.engram" in names and "u8@v1@s0of1.engram" not in names


def test_prefetch_local_equals_grpc(shm_server):
    seqs = [[1, 5, -1, 9, 300, 17, 17], [7, 7, 7, 7, 7, 7, 7]]
    outs = {}
    for mode in ("off", "auto"):
        with engram.Client(shm_server.address, local=mode) as c:
            with c.model("tiny-v41") as m:
                if mode == "auto":
                    deadline = time.monotonic() + 5
                    while True:   # warm: until a prefetch costs no Lookup call
                        before = lookup_calls(shm_server.address)
                        m.prefetch(seqs).wait()
                        if lookup_calls(shm_server.address) == before:
                            break
                        assert time.monotonic() < deadline, "prefetch never served locally"
                        time.sleep(0.02)
                before = lookup_calls(shm_server.address)
                raw = m.prefetch(seqs).wait()
                bf = m.prefetch(seqs, dtype="bf16").wait()
                calls = lookup_calls(shm_server.address) - before
                outs[mode] = (raw.tobytes(), bf.tobytes(), calls)
    assert outs["auto"][0] == outs["off"][0]
    assert outs["auto"][1] == outs["off"][1]
    assert outs["off"][2] > 0 and outs["auto"][2] == 0


def test_file_shortened_under_the_client(tmp_path):
    base = shm_base()
    shm = os.path.join(base, "shm")
    s = Server(tmp_path, "--shm-dir", shm)
    try:
        want = rand_bytes(4096, 256, 5)   # 1 MiB of rows after the 4 KiB header
        with engram.Client(s.address, local="off") as c:
            c.import_array("t", want)
        path = os.path.join(os.path.realpath(shm), "t@v1@s0of1.engram")
        with engram.Client(s.address, local="require", version_refresh_ms=-1) as c:
            assert np.array_equal(c.lookup("t", [0, 4095]), want[[0, 4095]])
            # Cut the file after row 1023 (the server never reads past it
            # here: REQUIRE sends nothing over gRPC).
            os.truncate(path, 4096 + 1024 * 256)
            assert np.array_equal(c.lookup("t", [5, 1023]), want[[5, 1023]])
            with pytest.raises(engram.FailedPrecondition) as e:
                c.lookup("t", [5, 3000])
            assert e.value.message == ('table "t" has no usable local file: its file of '
                                       'version 1 was shortened while mapped')
            with pytest.raises(engram.FailedPrecondition) as e:
                c.lookup("t", [5])
            assert e.value.message == ('table "t" has no usable local file: %s is not the '
                                       'file listed (device, inode or size differ)' % path)
    finally:
        # The server maps the shortened file too; it never reads the cut
        # rows on this path, and unlinks the file at exit.
        rc = s.stop()
        subprocess.run(["rm", "-rf", base])
    assert rc == 0, s.log_tail()


CHILD = r"""
import sys, numpy as np, engram
addr, mode = sys.argv[1], sys.argv[2]
with engram.Client(addr, local=mode) as c:
    try:
        got = c.lookup("u8", [3, 4])
        print("ok", got.tobytes().hex())
    except engram.EngramError as e:
        print("err", e.code, e.message)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
def test_file_the_client_may_not_open(shm_server):
    """The files are the server's user's, mode 0600: a client of another
    user cannot open them. AUTO: gRPC, silently; REQUIRE: why."""
    want = shm_server.tables["u8"]
    env = dict(os.environ, PYTHONPATH=os.environ.get("PYTHONPATH", ""))

    def run(mode):
        return subprocess.run([sys.executable, "-c", CHILD, shm_server.address, mode],
                              capture_output=True, text=True, env=env, timeout=60,
                              preexec_fn=lambda: (os.setgid(65534), os.setuid(65534)))

    def as_nobody(mode):
        p = run(mode)
        assert p.returncode == 0, p.stderr
        return p.stdout.split(" ", 2)

    # CI's clone lives under a mode-0700 temp dir: uid 65534 cannot even
    # import the package there, which says nothing about the local path.
    probe = run("off")
    if probe.returncode != 0 or not probe.stdout.startswith("ok"):
        pytest.skip("the build tree is not readable by uid 65534: " +
                    (probe.stderr.strip().splitlines() or ["?"])[-1])
    before = lookup_calls(shm_server.address)
    r = as_nobody("auto")
    assert r == ["ok", want[[3, 4]].tobytes().hex() + "\n"]
    assert lookup_calls(shm_server.address) > before
    with engram.Client(shm_server.address, local="off") as c:
        version = c.table("u8").version
    path = os.path.join(os.path.realpath(shm_server.shm), "u8@v%d@s0of1.engram" % version)
    r = as_nobody("require")
    assert r == ["err", "FAILED_PRECONDITION",
                 'table "u8" has no usable local file: open %s: Permission denied\n' % path]


def test_engramctl_local(shm_server):
    want = shm_server.tables["u8"]
    r = shm_server.ctl("--local", "require", "lookup", "--table", "u8", "3")
    assert r.returncode == 0, r.stderr
    assert want[3].tobytes().hex() in r.stdout.replace(" ", "")
    r = shm_server.ctl("--local", "require", "lookup", "--table", "big", "1")
    assert (r.returncode, r.stderr) == (1, 'engramctl: FAILED_PRECONDITION: table "big" has no '
                                           'usable local file: no file is listed for it\n')
    r = shm_server.ctl("--local", "sometimes", "tables")
    assert r.returncode == 2 and "--local: 'sometimes' is not auto, off or require" in r.stderr


def synthetic(seed, rows, row_bytes):
    """common/synthetic.h's rows as a [rows, row_bytes] uint8 array."""
    return np.frombuffer(synthetic_rows(seed, rows, row_bytes),
                         dtype=np.uint8).reshape(rows, row_bytes)


def free_ports(k):
    import socket
    socks = [socket.socket() for _ in range(k)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_cluster_local_shard_read_locally(tmp_path):
    """Two shards of one replica each; only shard 0's server has
    --shm-dir: its rows are read locally (its Lookup count stays flat),
    shard 1's go over gRPC, and the rows are exact."""
    base = shm_base()
    ports = free_ports(2)
    addrs = ["127.0.0.1:%d" % p for p in ports]
    mp = tmp_path / "cluster.json"
    mp.write_text('{"name": "lc", "placement": "mod", "shards": [{"replicas": ["%s"]}, '
                  '{"replicas": ["%s"]}]}\n' % tuple(addrs))
    servers = []
    try:
        for s in range(2):
            extra = ["--listen", addrs[s], "--cluster", str(mp), "--shard", str(s)]
            if s == 0:
                extra += ["--shm-dir", os.path.join(base, "shm")]
            d = tmp_path / ("s%d" % s)
            d.mkdir()
            servers.append(Server(d, *extra))
        r = servers[0].ctl("import-synthetic", "--table", "lc", "--rows", "6000", "--row-bytes",
                           "64", "--seed", "4")
        assert r.returncode == 0, r.stderr
        want = synthetic(4, 6000, 64)
        rows = np.random.default_rng(3).integers(0, 6000, 500)
        with engram.Client(addrs[0], version_refresh_ms=REFRESH_MS) as c:
            deadline = time.monotonic() + 5
            while True:   # warm: until shard 0 costs no Lookup call
                before = lookup_calls(addrs[0])
                assert np.array_equal(c.lookup("lc", rows), want[rows])
                if lookup_calls(addrs[0]) == before:
                    break
                assert time.monotonic() < deadline, "shard 0 never read locally"
                time.sleep(0.02)
            b0, b1 = lookup_calls(addrs[0]), lookup_calls(addrs[1])
            for k in range(5):
                rows = np.random.default_rng(10 + k).integers(0, 6000, 300)
                assert np.array_equal(c.lookup("lc", rows), want[rows])
            assert lookup_calls(addrs[0]) == b0
            assert lookup_calls(addrs[1]) == b1 + 5
        with engram.Client(addrs[0], local="require") as c:
            # Shard 1's server is on this host without files: REQUIRE names it.
            with pytest.raises(engram.FailedPrecondition) as e:
                c.lookup("lc", [0, 1])
            assert e.value.message == ('table "lc" has no usable local file: %s publishes no '
                                       'local files (no --shm-dir)' % addrs[1])
            assert np.array_equal(c.lookup("lc", [0, 2, 4]), want[[0, 2, 4]])
    finally:
        rcs = [s.stop() for s in servers]
        subprocess.run(["rm", "-rf", base])
    assert rcs == [0, 0]
