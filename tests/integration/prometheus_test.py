#!/usr/bin/python3
"""deploy/prometheus and deploy/grafana against a real Prometheus scraping
real engram-servers (issue 15).

Two servers on loopback, each with --metrics-listen: A holds table "t"
(100 rows of 64 bytes) and takes the lookups; B is started with a disk
reserve of 1 PiB, more than any disk has free. A Prometheus (the Debian
binary, a temporary TSDB) scrapes both every second as job "engram" and
loads deploy/prometheus/engram.rules.yml, evaluated every second.

    7 x engramctl lookup of 3 rows of t on A    OK
    1 x engramctl lookup of row 100 of t on A   OUT_OF_RANGE

Once Prometheus has scraped after each step, PromQL must return exactly
those counts (calls 7 then 8, rows 21, resident tier 21, errors 1) and the
recorded error ratio 0 (no error series yet: the rule's `or` branch).
Also: every rule loads and evaluates with health "ok"; every metric name
the rules and the dashboard use is in A's /metrics (parsed strictly with
stats_test's parser) and in what Prometheus stored, and every recorded
name the dashboard uses is recorded by the rules, so renaming a metric
breaks this test; every dashboard expression, its variables substituted,
is accepted by Prometheus' query API and returns data; B's disk alerts
are pending with their annotations rendered; draining A turns
engram_serving to 0 and makes EngramNotServing and EngramReplicaEjected
(A of shard 0, with B serving) pending, and undraining clears them.

Skipped (exit 77) only when the prometheus binary is missing: Debian's
prometheus package, which scripts/install-deps.sh installs.

usage: prometheus_test.py --server-bin PATH --engramctl PATH --rules FILE
                          --dashboard FILE [--prometheus PATH]
"""
import argparse
import json
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
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stats_test import parse_exposition  # noqa: E402  (the strict exposition parser)

import yaml  # noqa: E402

ARGS = None
N_LOOKUPS = 7
ROWS_PER_LOOKUP = 3
HUGE_RESERVE = 1 << 50          # 1 PiB: under it on any disk, so B's disk alerts trigger
# A name used by a PromQL expression: engram_..., not part of a recorded
# name (level:engram_metric:operation).
METRIC_RE = re.compile(r"(?<![\w:])(engram_[a-zA-Z0-9_]+)(?![\w:])")
RECORDED_RE = re.compile(r"(?<![\w:])([a-zA-Z_]+:engram_[a-zA-Z0-9_]+:[a-zA-Z0-9_]+)")


def free_ports(n):
    """n distinct free loopback ports: every probe socket stays open until
    all are bound, so the kernel cannot hand out one port twice."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def parse_rfc3339(ts):
    """Prometheus' timestamps ("2026-12-06T08:20:01.123456789Z") as Unix
    seconds; Python 3.11's fromisoformat takes at most 6 fraction digits."""
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", ts)
    assert m, ts
    import datetime
    base = datetime.datetime.fromisoformat(m.group(1) + ("+00:00" if m.group(3) == "Z" else m.group(3)))
    return base.timestamp() + float("0." + (m.group(2) or "0"))


class Procs:
    """Processes this test started, stopped (SIGTERM, then SIGKILL) in
    reverse order; only these pids are ever signalled."""

    def __init__(self):
        self.procs = []

    def start(self, name, argv, log_path):
        log = open(log_path, "w")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        assert p.pid > 0
        self.procs.append((name, p))
        return p

    def stop_all(self):
        bad = []
        for name, p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
                    bad.append("%s did not stop on SIGTERM" % name)
                    continue
            if p.returncode != 0:
                bad.append("%s exited with %d" % (name, p.returncode))
        self.procs = []
        return bad


class PrometheusTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="engram-prom-")
        cls.procs = Procs()
        try:
            cls.setup()
        except BaseException:
            cls.procs.stop_all()
            cls.dump_logs()
            shutil.rmtree(cls.tmp, ignore_errors=True)
            raise

    @classmethod
    def dump_logs(cls):
        for f in sorted(os.listdir(cls.tmp)):
            if f.endswith(".log"):
                with open(os.path.join(cls.tmp, f), errors="replace") as fh:
                    sys.stderr.write("---- %s (last 40 lines)\n%s\n" % (f, "".join(fh.readlines()[-40:])))

    @classmethod
    def setup(cls):
        t0 = time.monotonic()
        a_metrics, b_metrics, cls.prom_port = free_ports(3)
        cls.a_instance = "127.0.0.1:%d" % a_metrics
        cls.b_instance = "127.0.0.1:%d" % b_metrics
        cls.a_addr = cls.start_server("a", a_metrics)
        cls.b_addr = cls.start_server("b", b_metrics, "--disk-reserve-bytes", str(HUGE_RESERVE))
        cls.ctl(cls.a_addr, "import-synthetic", "--table", "t", "--rows", "100",
                "--row-bytes", "64", "--seed", "1")
        cls.start_prometheus()
        cls.wait_targets_up()

        # t's series appear at its first lookup, and rate() sees nothing
        # of a counter's first sample: one lookup, scraped, then the rest,
        # so the lookup rate (the error ratio's denominator) is not 0.
        for i in range(N_LOOKUPS):
            cls.ctl(cls.a_addr, "lookup", "--table", "t", str(i), str(i + 10), "99")
            if i == 0:
                cls.wait_scraped_and_evaluated()
        cls.wait_scraped_and_evaluated()
        cls.after_ok = {
            "calls": cls.query_scalar('engram_lookup_calls_total{instance="%s", table="t"}' % cls.a_instance),
            "rows": cls.query_scalar('engram_lookup_rows_total{instance="%s", table="t"}' % cls.a_instance),
            "errors": cls.query('engram_lookup_errors_total{instance="%s"}' % cls.a_instance),
            "ratio": cls.query_scalar('instance:engram_lookup_error_ratio:rate5m{instance="%s"}'
                                      % cls.a_instance),
        }

        r = cls.ctl(cls.a_addr, "lookup", "--table", "t", "100", rc=None)
        assert r.returncode != 0 and "OUT_OF_RANGE" in r.stderr, (r.returncode, r.stderr)
        cls.wait_scraped_and_evaluated()
        cls.setup_s = time.monotonic() - t0

    @classmethod
    def tearDownClass(cls):
        bad = cls.procs.stop_all()
        if bad:
            cls.dump_logs()
        shutil.rmtree(cls.tmp, ignore_errors=True)
        if bad:
            raise RuntimeError("; ".join(bad))

    # ---- processes ---------------------------------------------------------

    @classmethod
    def start_server(cls, name, metrics_port, *extra):
        port_file = os.path.join(cls.tmp, name + ".port")
        p = cls.procs.start("engram-server " + name, [
            ARGS.server_bin, "--data", os.path.join(cls.tmp, name), "--listen", "127.0.0.1:0",
            "--port-file", port_file, "--threads", "2", "--block-cache", "8M",
            "--metrics-listen", "127.0.0.1:%d" % metrics_port] + list(extra),
            os.path.join(cls.tmp, name + ".log"))
        deadline = time.monotonic() + 20
        while not os.path.exists(port_file):
            if time.monotonic() > deadline or p.poll() is not None:
                raise RuntimeError("engram-server %s did not start" % name)
            time.sleep(0.05)
        with open(port_file) as f:
            return "127.0.0.1:%d" % int(f.read())

    @classmethod
    def start_prometheus(cls):
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [os.path.abspath(ARGS.rules)],
            "scrape_configs": [{"job_name": "engram", "scrape_interval": "1s",
                                "scrape_timeout": "1s",
                                "static_configs": [{"targets": [cls.a_instance, cls.b_instance]}]}],
        }
        path = os.path.join(cls.tmp, "prometheus.yml")
        with open(path, "w") as f:
            yaml.safe_dump(config, f)
        p = cls.procs.start("prometheus", [
            ARGS.prometheus, "--config.file=" + path,
            "--storage.tsdb.path=" + os.path.join(cls.tmp, "tsdb"),
            "--web.listen-address=127.0.0.1:%d" % cls.prom_port, "--log.level=warn"],
            os.path.join(cls.tmp, "prometheus.log"))
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/-/ready" % cls.prom_port,
                                            timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("prometheus did not become ready (rc %s)" % p.poll())
            time.sleep(0.1)

    @classmethod
    def ctl(cls, addr, *args, rc=0):
        r = subprocess.run([ARGS.engramctl, "--server", addr] + list(args),
                           capture_output=True, text=True, timeout=60)
        if rc is not None and r.returncode != rc:
            raise AssertionError("engramctl %s: rc %d (want %d)\nstdout: %s\nstderr: %s"
                                 % (" ".join(args), r.returncode, rc, r.stdout, r.stderr))
        return r

    # ---- Prometheus' HTTP API ------------------------------------------------

    @classmethod
    def api(cls, path, **params):
        url = "http://127.0.0.1:%d/api/v1/%s" % (cls.prom_port, path)
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                status, body = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read()
        doc = json.loads(body)
        return status, doc

    @classmethod
    def query(cls, expr):
        status, doc = cls.api("query", query=expr)
        assert status == 200 and doc["status"] == "success", (expr, status, doc)
        return doc["data"]["result"]

    @classmethod
    def query_scalar(cls, expr):
        res = cls.query(expr)
        assert len(res) == 1, (expr, res)
        return float(res[0]["value"][1])

    @classmethod
    def targets(cls):
        status, doc = cls.api("targets")
        assert status == 200, doc
        return {t["labels"]["instance"]: t for t in doc["data"]["activeTargets"]}

    @classmethod
    def wait_targets_up(cls):
        deadline = time.monotonic() + 30
        while True:
            ts = cls.targets()
            if all(ts.get(i, {}).get("health") == "up" for i in (cls.a_instance, cls.b_instance)):
                return
            assert time.monotonic() < deadline, "targets not up: %s" % ts
            time.sleep(0.2)

    @classmethod
    def wait_scraped_and_evaluated(cls):
        """Until both targets were scraped twice after now (so the first
        scrape's samples are committed) and every rule group evaluated
        after that."""
        after = time.time()
        deadline = time.monotonic() + 30
        while True:
            ts = cls.targets()
            scraped = [parse_rfc3339(ts[i]["lastScrape"]) for i in (cls.a_instance, cls.b_instance)]
            if min(scraped) > after + 1.0:
                break
            assert time.monotonic() < deadline, "no scrape after %f: %s" % (after, scraped)
            time.sleep(0.2)
        scraped_at = max(scraped)
        while True:
            status, doc = cls.api("rules")
            evals = [parse_rfc3339(g["lastEvaluation"]) for g in doc["data"]["groups"]]
            if evals and min(evals) > scraped_at:
                return
            assert time.monotonic() < deadline, "rules not evaluated after %f" % scraped_at
            time.sleep(0.2)

    def scrape_families(self, instance):
        with urllib.request.urlopen("http://%s/metrics" % instance, timeout=10) as r:
            self.assertEqual(r.status, 200)
            return parse_exposition(r.read().decode("utf-8"))

    # ---- the files under test --------------------------------------------------

    @staticmethod
    def rules():
        with open(ARGS.rules) as f:
            return yaml.safe_load(f)

    @staticmethod
    def dashboard():
        with open(ARGS.dashboard) as f:
            return json.load(f)

    @classmethod
    def panel_exprs(cls, dash):
        out = []
        for p in dash["panels"]:
            for t in p.get("targets", []):
                out.append((p["title"], t["expr"]))
        return out

    @staticmethod
    def substitute(expr, instance=".+", table=".+"):
        # What Grafana sends with "All" selected (allValue .+) and its
        # rate interval at a 1 s scrape.
        return (expr.replace("$__rate_interval", "1m").replace("$instance", instance)
                .replace("$table", table))

    def all_exprs(self):
        rules = [(r.get("alert") or r.get("record"), r["expr"])
                 for g in self.rules()["groups"] for r in g["rules"]]
        dash = self.dashboard()
        variables = [(v["name"], v["definition"]) for v in dash["templating"]["list"]
                     if v["type"] == "query"]
        return rules, self.panel_exprs(dash), variables

    # ---- tests -------------------------------------------------------------

    def test_lookup_counts_exact(self):
        a = self.a_instance
        self.assertEqual(self.after_ok["calls"], N_LOOKUPS)
        self.assertEqual(self.after_ok["rows"], N_LOOKUPS * ROWS_PER_LOOKUP)
        self.assertEqual(self.after_ok["errors"], [])
        # No error series yet: the ratio is 0 through the rule's `or` branch.
        self.assertEqual(self.after_ok["ratio"], 0)
        self.assertEqual(self.query_scalar('engram_lookup_calls_total{instance="%s", table="t"}' % a),
                         N_LOOKUPS + 1)
        self.assertEqual(self.query_scalar('engram_lookup_rows_total{instance="%s", table="t"}' % a),
                         N_LOOKUPS * ROWS_PER_LOOKUP)
        errs = self.query('engram_lookup_errors_total{instance="%s"}' % a)
        self.assertEqual([(e["metric"]["table"], e["metric"]["code"], e["value"][1]) for e in errs],
                         [("t", "OUT_OF_RANGE", "1")])
        tiers = {r["metric"]["tier"]: r["value"][1]
                 for r in self.query('engram_tier_rows_total{instance="%s", table="t"}' % a)}
        self.assertEqual(tiers, {"resident": str(N_LOOKUPS * ROWS_PER_LOOKUP), "hot": "0",
                                 "rocksdb": "0"})
        self.assertEqual(self.query_scalar(
            'engram_lookup_duration_seconds_count{instance="%s", table="t"}' % a), N_LOOKUPS + 1)
        self.assertEqual(self.query_scalar('engram_calls_total{instance="%s", '
                                           'method="/engram.v1.Lookup/Lookup", code="OK"}' % a),
                         N_LOOKUPS)
        # The failed lookup's series started at 1 and stayed: rate 0.
        self.assertEqual(self.query_scalar(
            'instance:engram_lookup_error_ratio:rate5m{instance="%s"}' % a), 0)

    def test_rules_loaded_and_healthy(self):
        status, doc = self.api("rules")
        self.assertEqual((status, doc["status"]), (200, "success"))
        got = {}
        for g in doc["data"]["groups"]:
            for r in g["rules"]:
                got[r.get("name")] = (r["health"], r.get("lastError", ""))
        want = [r.get("alert") or r.get("record")
                for g in self.rules()["groups"] for r in g["rules"]]
        self.assertEqual(sorted(got), sorted(want))
        for name, (health, err) in got.items():
            self.assertEqual((health, err), ("ok", ""), name)

    def test_metric_names_exist(self):
        families = self.scrape_families(self.a_instance)
        exposed = set()
        for name, f in families.items():
            exposed |= ({name + s for s in ("_bucket", "_sum", "_count")}
                        if f["type"] == "histogram" else {name})
        stored = set(self.query_names())
        rules, panels, variables = self.all_exprs()
        used = {}
        for where, expr in rules + panels + variables:
            for name in METRIC_RE.findall(expr):
                used.setdefault(name, where)
        # Sanity: the scan finds what the rules and panels are built on.
        for name in ("engram_serving", "engram_disk_free_bytes", "engram_disk_reserve_bytes",
                     "engram_shard_index", "engram_lookup_duration_seconds_bucket",
                     "engram_tier_rows_total", "engram_refusals_total", "engram_build_info"):
            self.assertIn(name, used)
        for name, where in sorted(used.items()):
            self.assertTrue(name in exposed, "%s (used by %s) is not in /metrics" % (name, where))
            self.assertTrue(name in stored, "%s (used by %s) is not in Prometheus" % (name, where))
        recorded = {r["record"] for g in self.rules()["groups"] for r in g["rules"] if "record" in r}
        for where, expr in rules + panels:
            for name in RECORDED_RE.findall(expr):
                self.assertTrue(name in recorded, "%s (used by %s) is not recorded" % (name, where))
                self.assertTrue(name in stored, "%s (used by %s) has no series" % (name, where))

    def query_names(self):
        status, doc = self.api("label/__name__/values")
        self.assertEqual(status, 200)
        return doc["data"]

    def test_dashboard_structure(self):
        d = self.dashboard()
        self.assertEqual(d["uid"], "engram-store")
        variables = {v["name"]: v for v in d["templating"]["list"]}
        self.assertEqual(sorted(variables), ["datasource", "instance", "table"])
        self.assertEqual((variables["datasource"]["type"], variables["datasource"]["query"]),
                         ("datasource", "prometheus"))
        ids = [p["id"] for p in d["panels"]]
        self.assertEqual(len(ids), len(set(ids)), "panel ids repeat")
        titles = set()
        for p in d["panels"]:
            g = p["gridPos"]
            self.assertTrue(0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"])
            if p["type"] == "row":
                continue
            titles.add(p["title"])
            self.assertEqual(p["datasource"], {"type": "prometheus", "uid": "${datasource}"},
                             p["title"])
            self.assertTrue(p["targets"] and p["description"], p["title"])
            refs = [t["refId"] for t in p["targets"]]
            self.assertEqual(len(refs), len(set(refs)), p["title"])
            for t in p["targets"]:
                self.assertEqual(t["datasource"], p["datasource"], p["title"])
                if "[" in t["expr"]:
                    self.assertIn("[$__rate_interval]", t["expr"], p["title"])
        for v in ("instance", "table"):
            self.assertEqual(variables[v]["datasource"]["uid"], "${datasource}")
        # The list of views, each a panel.
        self.assertTrue({"Lookups/s by table", "Rows/s by table", "Failed lookups",
                         "Lookup latency p50 / p99 by table", "Rows/s by tier",
                         "Hot-row cache hit rate", "Resident tier vs budget",
                         "RocksDB block cache", "Memory (jemalloc)", "Calls in flight",
                         "Refusals/s by reason", "Disk free vs reserve", "Serving",
                         "Draining"} <= titles, titles)
        # Panels do not overlap.
        cells = set()
        for p in d["panels"]:
            g = p["gridPos"]
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    self.assertNotIn((x, y), cells, p["title"])
                    cells.add((x, y))

    def test_dashboard_queries_parse_and_return_data(self):
        _, panels, variables = self.all_exprs()
        self.assertGreaterEqual(len(panels), 20)
        # One instance as Grafana writes it into a regex matcher: regex
        # escapes, their backslashes escaped again for the PromQL string.
        one = re.escape(self.a_instance).replace("\\", "\\\\")
        for instance, table in ((".+", ".+"), (one, "t")):
            for title, expr in panels:
                q = self.substitute(expr, instance, table)
                status, doc = self.api("query", query=q)
                self.assertEqual((status, doc.get("status")), (200, "success"),
                                 "%s: %s: %s" % (title, q, doc))
                self.assertTrue(doc["data"]["result"], "%s: no data for %s" % (title, q))
        # Variables are Grafana's label_values(selector, label): the
        # selector must match series carrying the label.
        for name, definition in variables:
            m = re.match(r"^label_values\((.+), (\w+)\)$", definition)
            self.assertTrue(m, definition)
            status, doc = self.api("series", **{"match[]": self.substitute(m.group(1)),
                                                "start": str(time.time() - 60)})
            self.assertEqual(status, 200, doc)
            values = {s.get(m.group(2)) for s in doc["data"]}
            want = {"instance": {self.a_instance, self.b_instance}, "table": {"t"}}[name]
            self.assertEqual(values, want, name)

    def test_disk_alerts_pending_on_b(self):
        # B's reserve is over any free space: both disk alerts are active
        # (pending: their `for` is minutes).
        self.assertEqual(self.query_scalar('engram_disk_reserve_bytes{instance="%s"}'
                                           % self.b_instance), HUGE_RESERVE)
        free = self.query_scalar('engram_disk_free_bytes{instance="%s"}' % self.b_instance)
        st = os.statvfs(self.tmp)
        # Same filesystem, read a second or so apart: other writers move it a little.
        self.assertLess(abs(free - st.f_bavail * st.f_frsize), 256 << 20)
        alerts = self.alerts()
        for name in ("EngramDiskUnderReserve", "EngramDiskNearlyFull"):
            a = alerts.get((name, self.b_instance))
            self.assertIsNotNone(a, "%s not active for B: %s" % (name, sorted(alerts)))
            self.assertEqual(a["state"], "pending")
            self.assertIn(self.b_instance, a["annotations"]["summary"])
            self.assertTrue(a["annotations"]["runbook"])
        self.assertEqual(alerts[("EngramDiskUnderReserve", self.b_instance)]["labels"]["severity"],
                         "critical")

    def alerts(self):
        status, doc = self.api("alerts")
        self.assertEqual(status, 200)
        return {(a["labels"]["alertname"], a["labels"].get("instance")): a
                for a in doc["data"]["alerts"]}

    def test_drain_turns_serving_off(self):
        a = self.a_instance
        self.assertEqual(self.query_scalar('engram_serving{instance="%s"}' % a), 1)
        self.assertEqual(self.query_scalar('shard:engram_serving_replicas:sum{shard="0"}'), 2)
        self.ctl(self.a_addr, "drain")
        try:
            self.wait_scraped_and_evaluated()
            self.assertEqual(self.query_scalar('engram_serving{instance="%s"}' % a), 0)
            self.assertEqual(self.query_scalar('engram_draining{instance="%s"}' % a), 1)
            self.assertEqual(self.query_scalar(
                'instance:engram_replica_serving:bool{instance="%s", shard="0"}' % a), 0)
            self.assertEqual(self.query_scalar('shard:engram_serving_replicas:sum{shard="0"}'), 1)
            # Alerts are evaluated in their own group: wait for their state.
            deadline = time.monotonic() + 15
            while True:
                alerts = self.alerts()
                if (("EngramNotServing", a) in alerts and ("EngramReplicaEjected", a) in alerts):
                    break
                self.assertLess(time.monotonic(), deadline, sorted(alerts))
                time.sleep(0.2)
            ej = alerts[("EngramReplicaEjected", a)]
            self.assertEqual((ej["state"], ej["labels"]["shard"], float(ej["value"])),
                             ("pending", "0", 1.0))
            self.assertEqual(ej["annotations"]["summary"],
                             "replica %s of shard 0 is ejected" % a)
            self.assertNotIn(("EngramShardUnavailable", None), alerts)
        finally:
            self.ctl(self.a_addr, "undrain")
        self.wait_scraped_and_evaluated()
        self.assertEqual(self.query_scalar('engram_serving{instance="%s"}' % a), 1)
        self.assertEqual(self.query_scalar('shard:engram_serving_replicas:sum{shard="0"}'), 2)


def main():
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--server-bin", required=True)
    p.add_argument("--engramctl", required=True)
    p.add_argument("--rules", required=True)
    p.add_argument("--dashboard", required=True)
    p.add_argument("--prometheus", default=shutil.which("prometheus") or "/usr/bin/prometheus")
    ARGS, rest = p.parse_known_args()
    if not os.access(ARGS.prometheus, os.X_OK):
        print("SKIP: no prometheus binary at %s (Debian package prometheus; "
              "scripts/install-deps.sh installs it)" % ARGS.prometheus)
        return 77
    t0 = time.monotonic()

    # ctest's timeout sends SIGTERM: unwind, so the finally below stops
    # the servers and Prometheus instead of leaving them running.
    def on_term(signum, frame):
        raise KeyboardInterrupt("SIGTERM")
    signal.signal(signal.SIGTERM, on_term)
    try:
        r = unittest.main(argv=[sys.argv[0]] + rest, exit=False, verbosity=2).result
    finally:
        procs = getattr(PrometheusTest, "procs", None)
        if procs and procs.procs:
            procs.stop_all()
            shutil.rmtree(PrometheusTest.tmp, ignore_errors=True)
    print("prometheus_test: %.1f s (setup %.1f s)"
          % (time.monotonic() - t0, getattr(PrometheusTest, "setup_s", 0.0)))
    return 0 if r.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
