#!/usr/bin/python3
"""Admin.Stats, /metrics and SetLogLevel against a real engram-server.

One server (--metrics-listen on a free loopback port, a 64 KiB resident
budget) gets two tables: "res" fits the budget and is served from RAM,
"disk" does not and is served by RocksDB. A scripted workload of lookups,
spoken on the wire with grpcio so exactly these calls are made:

    5 x 7 rows of res          OK
    1 x res row 100            OUT_OF_RANGE (res has 100 rows)
    1 x res version 99         NOT_FOUND (the table exists, the version not)
    2 x table "nope"           NOT_FOUND (unknown: counted per method only)
    3 x 10 rows of disk        OK

must move the counters by exactly that, in `engramctl stats --json` (the
libengram JSON document) and in the Prometheus exposition, which is parsed
strictly: every sample line `name{labels} value`, every family declared by
HELP and TYPE before its samples and its samples contiguous, histogram
buckets cumulative and ending with le="+Inf" equal to _count. Also: the
readable `stats`, `stats --watch`, `log-level` round trips and a bad level,
usage errors, a metrics address already taken (exit 2), and jemalloc's
figures (allocated > 0, resident >= allocated) when the server links it.

The hot-row cache's figures (hot_cache in Stats, engram_hot_cache_* in
/metrics): on this server (the default 256 MiB cache) it is not made
before the first RocksDB-tier lookup, then holds disk's 30 rows. A third
server (HotCacheTest) serves a table from RocksDB only (--resident-budget
0) through a 64 KiB cache, and a scripted sequence of lookups must give
exact rows held, hits, misses, inserts, evictions and promotions, and a
capacity computed here with hotcache_create's own formula.

A second server (RefusalsTest) with --max-rows 4 and --max-import-bytes 1K
gets over-limit lookups and imports, and lookups while draining: Stats,
the readable `stats` and /metrics count each refusal under its reason,
exactly, and every other reason stays 0. Its hot cache is off
(--hot-cache-bytes 0), and says so.

usage: stats_test.py --server-bin PATH --engramctl PATH --pydir DIR --version V
"""
import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request

import grpc

ARGS = None
ROW_BYTES = 64
LOOKUP = "/engram.v1.Lookup/Lookup"

SAMPLE_RE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{((?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*",?)*)\})? '
    r'(\S+)$')
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unescape(v):
    return re.sub(r'\\(.)', lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), v)


def parse_exposition(text):
    """Strict text format 0.0.4 parse. Returns {family: {"type", "help",
    "samples": [(name, labels dict, float)]}}; raises AssertionError."""
    families, current = {}, None
    assert text.endswith("\n"), "exposition does not end with a newline"
    for n, line in enumerate(text.split("\n")[:-1], 1):
        where = "line %d: %r" % (n, line)
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert name not in families, "family declared twice: " + where
            families[name] = {"help": line.split(" ", 3)[3], "type": None, "samples": []}
            current = name
            continue
        if line.startswith("# TYPE "):
            parts = line.split(" ")
            assert len(parts) == 4 and parts[3] in TYPES, "bad TYPE: " + where
            assert parts[2] == current and families[current]["type"] is None, \
                "TYPE without its HELP just before: " + where
            families[current]["type"] = parts[3]
            continue
        assert not line.startswith("#"), "stray comment: " + where
        m = SAMPLE_RE.match(line)
        assert m, "not `name{labels} value`: " + where
        name, labels_text, value = m.groups()
        labels = {}
        if labels_text:
            for lm in LABEL_RE.finditer(labels_text):
                assert lm.group(1) not in labels, "repeated label: " + where
                labels[lm.group(1)] = unescape(lm.group(2))
        v = float(value)  # accepts +Inf/NaN spellings too; ours are plain
        assert current is not None and families[current]["type"], "sample before TYPE: " + where
        ftype = families[current]["type"]
        allowed = {current}
        if ftype == "histogram":
            allowed = {current + "_bucket", current + "_sum", current + "_count"}
        assert name in allowed, "sample %s outside its family %s: %s" % (name, current, where)
        families[current]["samples"].append((name, labels, v))
    for name, f in families.items():
        assert f["type"], "family without TYPE: " + name
        if f["type"] == "histogram":
            check_histogram(name, f["samples"])
    return families


def check_histogram(name, samples):
    series = {}
    for sname, labels, v in samples:
        key = tuple(sorted((k, x) for k, x in labels.items() if k != "le"))
        s = series.setdefault(key, {"buckets": [], "sum": None, "count": None})
        if sname.endswith("_bucket"):
            assert "le" in labels, "%s bucket without le" % name
            s["buckets"].append((labels["le"], v))
        elif sname.endswith("_sum"):
            s["sum"] = v
        else:
            s["count"] = v
    for key, s in series.items():
        b = s["buckets"]
        assert b and b[-1][0] == "+Inf", "%s%s: buckets do not end with +Inf" % (name, key)
        les = [float(le) for le, _ in b]
        assert les == sorted(les) and len(set(les)) == len(les), "%s%s: le not ascending" % (name, key)
        counts = [v for _, v in b]
        assert counts == sorted(counts), "%s%s: buckets not cumulative" % (name, key)
        assert s["count"] == counts[-1], "%s%s: +Inf %s != _count %s" % (name, key, counts[-1], s["count"])
        assert s["sum"] is not None and s["sum"] >= 0, "%s%s: no _sum" % (name, key)


# Admin.Stats' refusal reasons, in its order, and the status of each.
REASONS = [("unauthenticated", "UNAUTHENTICATED"), ("permission_denied", "PERMISSION_DENIED"),
           ("draining", "UNAVAILABLE"), ("max_calls", "RESOURCE_EXHAUSTED"),
           ("max_rows", "INVALID_ARGUMENT"), ("max_import_bytes", "RESOURCE_EXHAUSTED"),
           ("default_deadline", "DEADLINE_EXCEEDED"), ("reply_bytes", "RESOURCE_EXHAUSTED"),
           ("reply_bytes_per_conn", "RESOURCE_EXHAUSTED")]


def server_has_jemalloc():
    """Whether the engram-server under test links libjemalloc (the build
    decides: ENGRAM_SANITIZE turns it off), read from its dynamic section."""
    out = subprocess.run(["ldd", ARGS.server_bin], capture_output=True, text=True, check=True)
    return re.search(r"^\s*libjemalloc\.so", out.stdout, re.M) is not None


def hot_capacity(budget, row_bytes):
    """Rows a hot cache of `budget` bytes holds for rows of row_bytes:
    server/store/hotcache.c's hotcache_create, step by step (16 segments; the most
    slots per segment whose segment_bytes fit budget / 16; 0 below 64 rows,
    where it makes no cache)."""
    segments = 16

    def map_cap(entries):
        cap = 16
        while cap < entries + entries // 3:
            cap <<= 1
        return cap

    def segment_bytes(n):
        small = n // 10 or 1
        return (n * (row_bytes + 8 + 1 + 1 + 4) + (n + n + (n - small)) * 8
                + 2 * map_cap(n) * (8 + 4))

    seg_budget = budget // segments
    lo, hi = 0, min((2**32 - 1) // 4, seg_budget // row_bytes)
    while lo < hi:
        mid = lo + (hi - lo + 1) // 2
        if segment_bytes(mid) <= seg_budget:
            lo = mid
        else:
            hi = mid - 1
    return lo * segments if lo * segments >= 64 else 0


HOT_FIELDS = ["budget_bytes", "row_bytes", "capacity_rows", "rows_held", "hits", "misses",
              "inserts", "evictions", "promotions", "ghost_hits"]
# HotCacheStats field -> its /metrics family.
HOT_METRICS = {"budget_bytes": "engram_hot_cache_budget_bytes",
               "row_bytes": "engram_hot_cache_row_bytes",
               "capacity_rows": "engram_hot_cache_capacity_rows",
               "rows_held": "engram_hot_cache_rows",
               "hits": "engram_hot_cache_hits_total",
               "misses": "engram_hot_cache_misses_total",
               "inserts": "engram_hot_cache_inserts_total",
               "evictions": "engram_hot_cache_evictions_total",
               "promotions": "engram_hot_cache_promotions_total",
               "ghost_hits": "engram_hot_cache_ghost_hits_total"}


def hot(**fields):
    """A whole HotCacheStats document: the fields given, the others 0."""
    assert set(fields) <= set(HOT_FIELDS), fields
    return {f: fields.get(f, 0) for f in HOT_FIELDS}


def scrape(port):
    url = "http://127.0.0.1:%d/metrics" % port
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200, r.status
        return parse_exposition(r.read().decode("utf-8"))


def value(families, family, sample=None, **labels):
    matches = [v for n, l, v in families[family]["samples"]
               if (sample or family) == n and l == labels]
    assert len(matches) == 1, "%s %s: %d samples" % (sample or family, labels, len(matches))
    return matches[0]


class StatsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        sys.path.insert(0, ARGS.pydir)
        from engram.v1 import engram_pb2
        cls.pb = engram_pb2
        cls.tmp = tempfile.mkdtemp(prefix="engram-stats-")
        cls.metrics_port = free_port()
        cls.proc, cls.port = cls.start_server("data", cls.metrics_port)
        cls.addr = "127.0.0.1:%d" % cls.port
        cls.ctl("import-synthetic", "--table", "res", "--rows", "100", "--row-bytes", "64",
                "--seed", "1")
        cls.ctl("import-synthetic", "--table", "disk", "--rows", "2000", "--row-bytes", "64",
                "--seed", "2")
        cls.channel = grpc.insecure_channel(cls.addr)
        cls.lookup_rpc = cls.channel.unary_unary(
            LOOKUP, request_serializer=cls.pb.LookupRequest.SerializeToString,
            response_deserializer=cls.pb.LookupResponse.FromString)
        cls.stats_rpc = cls.channel.unary_unary(
            "/engram.v1.Admin/Stats", request_serializer=cls.pb.StatsRequest.SerializeToString,
            response_deserializer=cls.pb.StatsResponse.FromString)
        cls.before = cls.stats_json()
        cls.workload()

    @classmethod
    def start_server(cls, name, metrics_port, expect_fail=False, extra=()):
        port_file = os.path.join(cls.tmp, name + ".port")
        log = open(os.path.join(cls.tmp, name + ".log"), "w")
        proc = subprocess.Popen(
            [ARGS.server_bin, "--data", os.path.join(cls.tmp, name), "--listen", "127.0.0.1:0",
             "--port-file", port_file, "--threads", "2", "--resident-budget", "64K",
             "--block-cache", "8M", "--metrics-listen", "127.0.0.1:%d" % metrics_port]
            + list(extra),
            stdout=log, stderr=subprocess.PIPE if expect_fail else log, text=True)
        log.close()  # the server holds its own descriptor
        if expect_fail:
            return proc, None
        deadline = time.time() + 20
        while not os.path.exists(port_file):
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError("engram-server did not start; see " + log.name)
            time.sleep(0.05)
        with open(port_file) as f:
            return proc, int(f.read())

    @classmethod
    def ctl(cls, *args, rc=0):
        r = subprocess.run([ARGS.engramctl, "--server", cls.addr] + list(args),
                           capture_output=True, text=True, timeout=60)
        if r.returncode != rc:
            raise AssertionError("engramctl %s: rc %d (want %d)\nstdout: %s\nstderr: %s"
                                 % (" ".join(args), r.returncode, rc, r.stdout, r.stderr))
        return r

    @classmethod
    def stats_json(cls):
        return json.loads(cls.ctl("stats", "--json").stdout)

    @classmethod
    def lookup(cls, table, rows, version=0, code=grpc.StatusCode.OK):
        try:
            r = cls.lookup_rpc(cls.pb.LookupRequest(table=table, rows=rows, version=version),
                               timeout=10)
        except grpc.RpcError as e:
            assert e.code() == code, "%s %s: %s %s" % (table, rows, e.code(), e.details())
            return
        assert code == grpc.StatusCode.OK and len(r.data) == len(rows) * ROW_BYTES

    @classmethod
    def workload(cls):
        for i in range(5):
            cls.lookup("res", [i, 10 + i, 20, 30, 40, 50, 99])
        cls.lookup("res", [100], code=grpc.StatusCode.OUT_OF_RANGE)
        cls.lookup("res", [1], version=99, code=grpc.StatusCode.NOT_FOUND)
        for _ in range(2):
            cls.lookup("nope", [1], code=grpc.StatusCode.NOT_FOUND)
        for i in range(3):
            cls.lookup("disk", list(range(i * 100, i * 100 + 10)))

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        cls.proc.send_signal(signal.SIGTERM)
        rc = cls.proc.wait(timeout=30)
        shutil.rmtree(cls.tmp)
        if rc != 0:
            raise RuntimeError("engram-server exited with %d" % rc)

    def metrics(self):
        url = "http://127.0.0.1:%d/metrics" % self.metrics_port
        with urllib.request.urlopen(url, timeout=10) as r:
            self.assertEqual(r.status, 200)
            self.assertEqual(r.headers["Content-Type"], "text/plain; version=0.0.4; charset=utf-8")
            return parse_exposition(r.read().decode("utf-8"))

    # ---- Stats -------------------------------------------------------------

    def test_stats_before_workload(self):
        b = self.before
        self.assertEqual(b["tables"], [])
        self.assertNotIn(LOOKUP, [r["method"] for r in b["rpcs"]])
        self.assertEqual(b["memory"]["resident_tier_bytes"], 100 * ROW_BYTES)
        self.assertEqual(b["memory"]["resident_tier_budget"], 64 * 1024)
        # No lookup has reached RocksDB yet: the cache is not made, only
        # the default budget is known.
        self.assertEqual(b["hot_cache"], hot(budget_bytes=256 << 20))

    def test_stats_hot_cache(self):
        # disk's 3 x 10 distinct rows: each missed, read from RocksDB and
        # inserted; res is resident and never reaches the cache.
        self.assertEqual(self.stats_json()["hot_cache"],
                         hot(budget_bytes=256 << 20, row_bytes=ROW_BYTES,
                             capacity_rows=hot_capacity(256 << 20, ROW_BYTES),
                             rows_held=30, misses=30, inserts=30))
        self.assertEqual(hot_capacity(256 << 20, ROW_BYTES), 1657824)

    def test_stats_tables(self):
        s = self.stats_json()
        tables = {t["table"]: t for t in s["tables"]}
        self.assertEqual(sorted(tables), ["disk", "res"])  # "nope" is no table
        res, disk = tables["res"], tables["disk"]
        self.assertEqual((res["calls"], res["rows"], res["bytes"]), (7, 35, 35 * ROW_BYTES))
        self.assertEqual((res["rows_resident"], res["rows_hot"], res["rows_rocksdb"]), (35, 0, 0))
        self.assertEqual(res["errors"], [{"code": "NOT_FOUND", "count": 1},
                                         {"code": "OUT_OF_RANGE", "count": 1}])
        self.assertEqual((disk["calls"], disk["rows"], disk["bytes"]), (3, 30, 30 * ROW_BYTES))
        self.assertEqual((disk["rows_resident"], disk["rows_hot"], disk["rows_rocksdb"]), (0, 0, 30))
        self.assertEqual(disk["errors"], [])
        for t, calls in ((res, 7), (disk, 3)):
            for w in ("window", "total"):
                lat = t[w]
                self.assertEqual(lat["count"], calls)
                self.assertTrue(0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"]
                                <= lat["p999_ms"] <= lat["max_ms"], lat)

    def test_stats_rpcs(self):
        s = self.stats_json()
        rpcs = {r["method"]: r for r in s["rpcs"]}
        lk = rpcs[LOOKUP]
        self.assertEqual(lk["calls"], 12)
        self.assertEqual(lk["errors"], [{"code": "NOT_FOUND", "count": 3},
                                        {"code": "OUT_OF_RANGE", "count": 1}])
        self.assertEqual((lk["rows"], lk["bytes"]), (65, 65 * ROW_BYTES))
        self.assertEqual(lk["total"]["count"], 12)
        self.assertEqual(lk["window"]["count"], 12)
        self.assertEqual(rpcs["/engram.v1.Admin/Import"]["calls"], 2)
        # Every stats --json before this one finished before it started.
        self.assertGreaterEqual(rpcs["/engram.v1.Admin/Stats"]["calls"], 1)

    def test_stats_process(self):
        s = self.stats_json()
        self.assertEqual(s["build_version"], ARGS.version)
        self.assertGreater(s["uptime_ms"], 0)
        self.assertGreaterEqual(s["in_flight"], 1)  # this Stats call itself
        self.assertIs(s["draining"], False)
        self.assertEqual((s["shard_index"], s["shard_count"]), (0, 1))
        self.assertEqual(s["refusals"], [])
        self.assertEqual(s["refusals_by_reason"],
                         [{"reason": r, "code": c, "count": 0} for r, c in REASONS])
        self.assertEqual(s["memory"]["resident_tier_bytes"], 100 * ROW_BYTES)
        self.assertEqual(s["memory"]["resident_tier_budget"], 64 * 1024)
        rk = s["rocksdb"]
        self.assertEqual(rk["block_cache_capacity"], 8 << 20)
        self.assertEqual(rk["multiget_calls"], 3)  # one MultiGet per disk lookup
        self.assertGreater(rk["bytes_read"], 0)
        self.assertGreaterEqual(rk["block_cache_hits"] + rk["block_cache_misses"], 3)

    def test_memory_figures(self):
        if not server_has_jemalloc():
            self.skipTest("this engram-server is not linked with jemalloc (ENGRAM_SANITIZE "
                          "builds use ASan's allocator, and Stats reports 0)")
        # jemalloc's stats.allocated/resident/mapped, after two imports and
        # a workload: some bytes are allocated, and the resident pages hold
        # at least those bytes (jemalloc documents resident >= active >=
        # allocated). A weak mallctl without jemalloc would report 0.
        m = self.stats_json()["memory"]
        self.assertGreater(m["allocated"], 0, m)
        self.assertGreaterEqual(m["resident"], m["allocated"], m)
        self.assertGreater(m["mapped"], 0, m)
        f = self.metrics()
        self.assertGreater(value(f, "engram_memory_allocated_bytes"), 0)

    def test_json_keys_are_proto_field_names(self):
        s = self.stats_json()
        pb = self.pb
        def names(msg):
            return {f.name for f in msg.DESCRIPTOR.fields}
        self.assertEqual(set(s), names(pb.StatsResponse))
        self.assertEqual(set(s["rocksdb"]), names(pb.RocksdbStats))
        self.assertEqual(set(s["memory"]), names(pb.MemoryStats))
        self.assertEqual(list(s["hot_cache"]), HOT_FIELDS)
        self.assertEqual(set(HOT_FIELDS), names(pb.HotCacheStats))
        self.assertEqual(set(s["tables"][0]), names(pb.TableStats))
        self.assertEqual(set(s["rpcs"][0]), names(pb.RpcStats))
        self.assertEqual(set(s["rpcs"][0]["window"]), names(pb.LatencySummary))
        # And the wire message agrees with the document.
        r = self.stats_rpc(pb.StatsRequest(), timeout=10)
        res = [t for t in r.tables if t.table == "res"][0]
        self.assertEqual((res.calls, res.rows, res.rows_resident), (7, 35, 35))
        self.assertEqual((r.hot_cache.rows_held, r.hot_cache.inserts), (30, 30))

    # ---- /metrics ----------------------------------------------------------

    def test_metrics_counters(self):
        f = self.metrics()
        self.assertEqual(value(f, "engram_build_info", version=ARGS.version), 1)
        self.assertEqual(value(f, "engram_lookup_calls_total", table="res"), 7)
        self.assertEqual(value(f, "engram_lookup_calls_total", table="disk"), 3)
        self.assertEqual(value(f, "engram_lookup_rows_total", table="res"), 35)
        self.assertEqual(value(f, "engram_lookup_rows_total", table="disk"), 30)
        self.assertEqual(value(f, "engram_lookup_bytes_total", table="res"), 35 * ROW_BYTES)
        self.assertEqual(value(f, "engram_lookup_bytes_total", table="disk"), 30 * ROW_BYTES)
        self.assertEqual(value(f, "engram_lookup_errors_total", table="res", code="NOT_FOUND"), 1)
        self.assertEqual(value(f, "engram_lookup_errors_total", table="res", code="OUT_OF_RANGE"), 1)
        self.assertEqual(len([s for s in f["engram_lookup_errors_total"]["samples"]
                              if s[1]["table"] == "disk"]), 0)
        for table, tiers in (("res", (35, 0, 0)), ("disk", (0, 0, 30))):
            for tier, n in zip(("resident", "hot", "rocksdb"), tiers):
                self.assertEqual(value(f, "engram_tier_rows_total", table=table, tier=tier), n)
        self.assertEqual(value(f, "engram_calls_total", method=LOOKUP, code="OK"), 8)
        self.assertEqual(value(f, "engram_calls_total", method=LOOKUP, code="NOT_FOUND"), 3)
        self.assertEqual(value(f, "engram_calls_total", method=LOOKUP, code="OUT_OF_RANGE"), 1)
        self.assertEqual(value(f, "engram_call_duration_seconds",
                               "engram_call_duration_seconds_count", method=LOOKUP), 12)
        self.assertEqual(value(f, "engram_lookup_duration_seconds",
                               "engram_lookup_duration_seconds_count", table="res"), 7)
        self.assertEqual(value(f, "engram_lookup_duration_seconds",
                               "engram_lookup_duration_seconds_bucket", table="disk", le="+Inf"), 3)
        self.assertEqual(value(f, "engram_resident_bytes"), 100 * ROW_BYTES)
        self.assertEqual(value(f, "engram_resident_budget_bytes"), 64 * 1024)
        self.assertEqual(value(f, "engram_rocksdb_block_cache_capacity_bytes"), 8 << 20)
        self.assertEqual(value(f, "engram_rocksdb_multiget_calls_total"), 3)
        self.assertEqual(value(f, "engram_draining"), 0)
        self.assertEqual(value(f, "engram_shard_count"), 1)
        self.assertEqual(f["engram_refusals_total"]["samples"],
                         [("engram_refusals_total", {"reason": r, "code": c}, 0.0)
                          for r, c in REASONS])
        self.assertGreaterEqual(value(f, "engram_calls_in_flight"), 0)

    def test_metrics_families(self):
        f = self.metrics()
        want = {
            "engram_build_info": "gauge", "engram_uptime_seconds": "gauge",
            "engram_calls_total": "counter", "engram_call_duration_seconds": "histogram",
            "engram_lookup_rows_total": "counter", "engram_lookup_bytes_total": "counter",
            "engram_lookup_duration_seconds": "histogram", "engram_tier_rows_total": "counter",
            "engram_calls_in_flight": "gauge", "engram_refusals_total": "counter",
            "engram_rocksdb_block_cache_usage_bytes": "gauge",
            "engram_rocksdb_block_cache_hits_total": "counter",
            "engram_memory_allocated_bytes": "gauge", "engram_resident_bytes": "gauge",
            "engram_resident_budget_bytes": "gauge", "engram_draining": "gauge",
            "engram_hot_cache_budget_bytes": "gauge", "engram_hot_cache_row_bytes": "gauge",
            "engram_hot_cache_capacity_rows": "gauge", "engram_hot_cache_rows": "gauge",
            "engram_hot_cache_hits_total": "counter", "engram_hot_cache_misses_total": "counter",
            "engram_hot_cache_inserts_total": "counter",
            "engram_hot_cache_evictions_total": "counter",
            "engram_hot_cache_promotions_total": "counter",
            "engram_hot_cache_ghost_hits_total": "counter",
            "engram_reloads_total": "counter"}
        for name, t in want.items():
            self.assertEqual(f[name]["type"], t, name)
        for name, fam in f.items():
            self.assertTrue(name.startswith("engram_"), name)
            self.assertEqual(fam["type"] == "counter", name.endswith("_total"), name)
            self.assertTrue(fam["help"], name)

    def test_metrics_and_stats_agree(self):
        s = self.stats_json()
        f = self.metrics()
        for t in s["tables"]:
            self.assertEqual(value(f, "engram_lookup_rows_total", table=t["table"]), t["rows"])
            self.assertEqual(value(f, "engram_lookup_duration_seconds",
                                   "engram_lookup_duration_seconds_count", table=t["table"]),
                             t["total"]["count"])
        for field, family in HOT_METRICS.items():
            self.assertEqual(value(f, family), s["hot_cache"][field], family)

    def test_sighup_reload_counted(self):
        # A plaintext server without a token file has nothing to re-read:
        # the reload succeeds, is counted, and there is no certificate gauge.
        f = self.metrics()
        ok = value(f, "engram_reloads_total", result="ok")
        self.assertEqual(value(f, "engram_reloads_total", result="failed"), 0)
        self.assertNotIn("engram_tls_cert_not_after_seconds", f)
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while value(self.metrics(), "engram_reloads_total", result="ok") == ok:
            self.assertLess(time.monotonic(), deadline, "SIGHUP not counted")
            time.sleep(0.02)
        f = self.metrics()
        self.assertEqual(value(f, "engram_reloads_total", result="ok"), ok + 1)
        self.assertEqual(value(f, "engram_reloads_total", result="failed"), 0)
        self.assertIsNone(self.proc.poll())          # still serving

    def test_metrics_other_paths(self):
        base = "http://127.0.0.1:%d" % self.metrics_port
        for path in ("/", "/metricsx", "/metrics/"):
            with self.assertRaises(urllib.error.HTTPError) as cm:
                urllib.request.urlopen(base + path, timeout=10)
            self.assertEqual(cm.exception.code, 404, path)
        with self.assertRaises(urllib.error.HTTPError) as cm:
            urllib.request.urlopen(urllib.request.Request(base + "/metrics", data=b"x"), timeout=10)
        self.assertEqual(cm.exception.code, 405)

    def test_parser_rejects_bad_exposition(self):
        bad = [
            "engram_x 1\n",                                          # no TYPE
            "# HELP a h\n# TYPE a counter\na{l=\"v\"} 1\n# HELP b h\n# TYPE b gauge\na 2\n",
            "# HELP h h\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\n"
            "h_sum 1\nh_count 1\n",                                  # not cumulative
            "# HELP h h\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n",
            "# HELP a h\n# TYPE a gauge\na{l=\"unterminated} 1\n",
        ]
        for text in bad:
            with self.assertRaises(AssertionError, msg=text):
                parse_exposition(text)

    # ---- engramctl -------------------------------------------------------------

    def test_stats_readable(self):
        out = self.ctl("stats").stdout
        self.assertIn("engram-server %s " % ARGS.version, out)
        self.assertIn("draining no   shard 0 of 1", out)
        line = [l for l in out.splitlines() if l.startswith("res ")][0].split()
        # TABLE CALLS ROWS BYTES(2 words) RESIDENT HOT ROCKSDB ERRORS ...
        self.assertEqual(line[:9], ["res", "7", "35", "2.2", "KiB", "35", "0", "0", "2"])
        self.assertIn("NOT_FOUND=1 OUT_OF_RANGE=1", out)
        self.assertIn("refusals: none", out)
        self.assertRegex(out, r"rocksdb: block cache .* of 8\.0 MiB")
        self.assertIn("\nhot cache: 30 of 1657824 rows of 64 B, budget 256.0 MiB; 0 hits, "
                      "30 misses (0.0% hits); 30 inserts, 0 evictions, 0 promotions, "
                      "0 ghost hits\n", out)

    def test_stats_watch(self):
        p = subprocess.Popen([ARGS.engramctl, "--server", self.addr, "stats", "--watch", "1"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.6)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=10)
        self.assertEqual(p.returncode, 0, err)
        self.assertEqual(len(re.findall(r"^---- \d{4}-\d\d-\d\dT", out, re.M)), 2, out)
        self.assertEqual(out.count("engram-server %s " % ARGS.version), 2)

    def test_usage_errors(self):
        r = self.ctl("stats", "--watch", "0", rc=2)
        self.assertIn("--watch 0 is outside 1..86400 seconds", r.stderr)
        r = self.ctl("stats", "--bogus", rc=2)
        self.assertIn("unexpected argument '--bogus'", r.stderr)
        r = self.ctl("log-level", rc=2)
        self.assertIn("want exactly one LEVEL", r.stderr)

    def test_log_level(self):
        self.assertEqual(self.ctl("log-level", "debug").stdout, "log level: info -> debug\n")
        self.assertEqual(self.ctl("log-level", "warn").stdout, "log level: debug -> warn\n")
        r = self.ctl("log-level", "verbose", rc=1)
        self.assertEqual(r.stderr, 'engramctl: INVALID_ARGUMENT: unknown log level "verbose": '
                                   "want debug, info, warn or error\n")
        self.assertEqual(self.ctl("log-level", "info").stdout, "log level: warn -> info\n")
        f = self.metrics()
        self.assertEqual(value(f, "engram_calls_total", method="/engram.v1.Admin/SetLogLevel",
                               code="OK"), 3)
        self.assertEqual(value(f, "engram_calls_total", method="/engram.v1.Admin/SetLogLevel",
                               code="INVALID_ARGUMENT"), 1)

    def test_metrics_address_taken(self):
        proc, _ = self.start_server("second", self.metrics_port, expect_fail=True)
        _, err = proc.communicate(timeout=30)
        self.assertEqual(proc.returncode, 2)
        # The message is one line of its own; start-up (info) and stop log
        # lines may surround it on stderr.
        self.assertIn("engram-server: --metrics-listen: cannot listen on 127.0.0.1:%d: "
                      "Address already in use" % self.metrics_port, err.splitlines())


class HotCacheTest(unittest.TestCase):
    """The hot-row cache's figures, exactly, on a server whose table "cold"
    (4000 rows of 64 bytes) is served by RocksDB only (--resident-budget 0)
    through a 64 KiB cache: 400 rows, 25 in each of 16 segments. The
    lookups, in order:

        A  rows 0..39                   40 misses, 40 inserts
        B  rows 0..19 and 40..49        20 hits, 10 misses, 10 inserts
        C  row 5 three times            3 hits (each position is a lookup)
        -- snapshot: 50 rows held, below capacity: nothing evicted
        D  rows 1000..2199, 400 a call  1200 misses, 1200 inserts
        E  rows 0..19                   20 hits

    D overflows every segment (1250 rows inserted into 400 slots), so the
    cache is full and evictions = inserts - rows held. What S3-FIFO makes
    of D and E is exact too: the 20 rows hit in B and C while in the small
    FIFO move to main as D pushes them out of it (20 promotions); every
    row of D, seen once, leaves through the small FIFO and main keeps the
    20 (E hits them all); no row is asked again after its eviction (no
    ghost hits)."""
    start_server = classmethod(StatsTest.start_server.__func__)
    ctl = classmethod(StatsTest.ctl.__func__)
    stats_json = classmethod(StatsTest.stats_json.__func__)
    lookup = classmethod(StatsTest.lookup.__func__)
    BUDGET = 64 * 1024

    @classmethod
    def setUpClass(cls):
        sys.path.insert(0, ARGS.pydir)
        from engram.v1 import engram_pb2
        cls.pb = engram_pb2
        cls.tmp = tempfile.mkdtemp(prefix="engram-hot-")
        cls.metrics_port = free_port()
        # The later --resident-budget overrides start_server's 64K.
        cls.proc, cls.port = cls.start_server(
            "hot", cls.metrics_port, extra=["--resident-budget", "0", "--hot-cache-bytes", "64K"])
        cls.addr = "127.0.0.1:%d" % cls.port
        cls.ctl("import-synthetic", "--table", "cold", "--rows", "4000", "--row-bytes", "64",
                "--seed", "3")
        cls.channel = grpc.insecure_channel(cls.addr)
        cls.lookup_rpc = cls.channel.unary_unary(
            LOOKUP, request_serializer=cls.pb.LookupRequest.SerializeToString,
            response_deserializer=cls.pb.LookupResponse.FromString)
        cls.before = cls.stats_json()
        cls.before_text = cls.ctl("stats").stdout
        cls.lookup("cold", list(range(40)))
        cls.lookup("cold", list(range(20)) + list(range(40, 50)))
        cls.lookup("cold", [5, 5, 5])
        # Nothing runs between these two reads: the gauges cannot move.
        cls.below = cls.stats_json()
        cls.below_metrics = scrape(cls.metrics_port)
        for start in range(1000, 2200, 400):
            cls.lookup("cold", list(range(start, start + 400)))
        cls.lookup("cold", list(range(20)))
        cls.full = cls.stats_json()
        cls.full_metrics = scrape(cls.metrics_port)
        cls.full_text = cls.ctl("stats").stdout

    @classmethod
    def tearDownClass(cls):
        StatsTest.tearDownClass.__func__(cls)

    def test_capacity_formula(self):
        # The formula against figures worked out by hand from segment_bytes:
        # 25 slots a segment cost 25 * 78 + (25 + 25 + 23) * 8 + 2 * 64 * 12
        # = 4070 <= 65536 / 16 = 4096 bytes; 26 would cost 4172.
        self.assertEqual(hot_capacity(self.BUDGET, ROW_BYTES), 400)
        self.assertEqual(hot_capacity(1023, ROW_BYTES), 0)  # too small: no cache

    def test_before_any_lookup(self):
        self.assertEqual(self.before["hot_cache"], hot(budget_bytes=self.BUDGET))
        self.assertEqual(self.before["memory"]["resident_tier_budget"], 0)
        self.assertIn("\nhot cache: not made yet, budget 64.0 KiB\n", self.before_text)

    def test_below_capacity(self):
        self.assertEqual(self.below["hot_cache"],
                         hot(budget_bytes=self.BUDGET, row_bytes=ROW_BYTES, capacity_rows=400,
                             rows_held=50, hits=23, misses=50, inserts=50))
        cold = self.below["tables"][0]
        self.assertEqual((cold["table"], cold["rows"], cold["rows_resident"], cold["rows_hot"],
                          cold["rows_rocksdb"]), ("cold", 73, 0, 23, 50))

    def test_full(self):
        h = self.full["hot_cache"]
        self.assertEqual(h, hot(budget_bytes=self.BUDGET, row_bytes=ROW_BYTES, capacity_rows=400,
                                rows_held=400, hits=43, misses=1250, inserts=1250,
                                evictions=850, promotions=20))
        self.assertEqual(h["evictions"], h["inserts"] - h["rows_held"])
        cold = self.full["tables"][0]
        self.assertEqual((cold["rows"], cold["rows_hot"], cold["rows_rocksdb"]), (1293, 43, 1250))
        self.assertEqual(cold["rows_hot"], h["hits"])
        self.assertEqual(cold["rows_rocksdb"], h["misses"])

    def test_metrics_agree(self):
        for doc, fams in ((self.below, self.below_metrics), (self.full, self.full_metrics)):
            for field, family in HOT_METRICS.items():
                self.assertEqual(value(fams, family), doc["hot_cache"][field], family)

    def test_readable(self):
        self.assertIn("\nhot cache: 400 of 400 rows of 64 B, budget 64.0 KiB; 43 hits, "
                      "1250 misses (3.3% hits); 1250 inserts, 850 evictions, 20 promotions, "
                      "0 ghost hits\n", self.full_text)


class RefusalsTest(unittest.TestCase):
    """Refusals by reason, on a second server with --max-rows 4 and
    --max-import-bytes 1K: 3 lookups of 5 rows (max_rows), one import of
    17 x 64 = 1088 bytes (max_import_bytes) and 2 lookups while draining
    (draining) must show as exactly those counts, every other reason 0, in
    Stats JSON, the readable `stats` and /metrics. Its hot cache is off
    (--hot-cache-bytes 0)."""
    start_server = classmethod(StatsTest.start_server.__func__)
    ctl = classmethod(StatsTest.ctl.__func__)
    stats_json = classmethod(StatsTest.stats_json.__func__)
    metrics = StatsTest.metrics

    @classmethod
    def setUpClass(cls):
        sys.path.insert(0, ARGS.pydir)
        from engram.v1 import engram_pb2
        cls.pb = engram_pb2
        cls.tmp = tempfile.mkdtemp(prefix="engram-refusals-")
        cls.metrics_port = free_port()
        cls.proc, cls.port = cls.start_server(
            "limits", cls.metrics_port,
            extra=["--max-rows", "4", "--max-import-bytes", "1K", "--hot-cache-bytes", "0"])
        cls.addr = "127.0.0.1:%d" % cls.port
        cls.before = cls.stats_json()
        cls.ctl("import-synthetic", "--table", "res", "--rows", "16", "--row-bytes", "64",
                "--seed", "1")   # 1024 bytes: at the limit, taken
        cls.channel = grpc.insecure_channel(cls.addr)
        lookup = cls.channel.unary_unary(
            LOOKUP, request_serializer=cls.pb.LookupRequest.SerializeToString,
            response_deserializer=cls.pb.LookupResponse.FromString)
        cls.errors = []

        def refused(rows):
            try:
                lookup(cls.pb.LookupRequest(table="res", rows=rows), timeout=10)
                cls.errors.append(("OK", ""))
            except grpc.RpcError as e:
                cls.errors.append((e.code().name, e.details()))
        for _ in range(3):
            refused([0, 1, 2, 3, 4])
        refused([0, 1, 2, 3])     # at the limit: served
        cls.big = cls.ctl("import-synthetic", "--table", "big", "--rows", "17", "--row-bytes",
                          "64", "--seed", "1", rc=1)
        cls.ctl("drain", "--timeout-ms", "100")
        for _ in range(2):
            refused([1])
        cls.ctl("undrain")
        refused([1])

    @classmethod
    def tearDownClass(cls):
        StatsTest.tearDownClass.__func__(cls)

    def test_refusal_statuses(self):
        five = ("INVALID_ARGUMENT", "request has 5 rows; the maximum per request is 4")
        drained = ("UNAVAILABLE", "server is draining; retry on another replica")
        self.assertEqual(self.errors, [five] * 3 + [("OK", "")] + [drained] * 2 + [("OK", "")])
        self.assertEqual(self.big.stderr,
                         'engramctl: RESOURCE_EXHAUSTED: import of table "big" is 1088 bytes '
                         "(17 rows of 64 bytes); the limit is 1024 bytes (--max-import-bytes)\n")

    def want(self):
        counts = {"draining": 2, "max_rows": 3, "max_import_bytes": 1}
        return [(r, c, counts.get(r, 0)) for r, c in REASONS]

    def test_stats_json(self):
        self.assertEqual([x["count"] for x in self.before["refusals_by_reason"]], [0] * len(REASONS))
        s = self.stats_json()
        self.assertEqual([(x["reason"], x["code"], x["count"]) for x in s["refusals_by_reason"]],
                         self.want())
        # The admission refusals by code: only draining's.
        self.assertEqual(s["refusals"], [{"code": "UNAVAILABLE", "count": 2}])
        lk = {r["method"]: r for r in s["rpcs"]}[LOOKUP]
        self.assertEqual(lk["errors"], [{"code": "INVALID_ARGUMENT", "count": 3},
                                        {"code": "UNAVAILABLE", "count": 2}])

    def test_hot_cache_off(self):
        self.assertEqual(self.stats_json()["hot_cache"], hot())
        self.assertIn("\nhot cache: off\n", self.ctl("stats").stdout)
        self.assertEqual(value(self.metrics(), "engram_hot_cache_budget_bytes"), 0)

    def test_stats_readable(self):
        self.assertIn("\nrefusals: draining=2 (UNAVAILABLE) max_rows=3 (INVALID_ARGUMENT) "
                      "max_import_bytes=1 (RESOURCE_EXHAUSTED)\n", self.ctl("stats").stdout)

    def test_metrics(self):
        f = self.metrics()
        self.assertEqual(f["engram_refusals_total"]["samples"],
                         [("engram_refusals_total", {"reason": r, "code": c}, float(n))
                          for r, c, n in self.want()])


def main():
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--server-bin", required=True)
    p.add_argument("--engramctl", required=True)
    p.add_argument("--pydir", required=True)
    p.add_argument("--version", required=True)
    ARGS, rest = p.parse_known_args()
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)


if __name__ == "__main__":
    main()
