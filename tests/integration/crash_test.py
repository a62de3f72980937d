#!/usr/bin/python3
"""Crash safety of imports: engram-server or engramctl killed with SIGKILL at
random moments of a streamed import, against real processes.

One server (temporary data directory, a free loopback port, a resident
budget that holds the table) serves table "crash" of ROWS synthetic rows
(common/synthetic.h). The seed-A and seed-B tables are generated here with
numpy, so their XXH3-64 and CRC-32 are known independently of the server.
Two complete reference imports (A as version 1, then B) must record exactly
those. Every import is timed as this test watches it: import_started in
the server's log, the SST bytes growing in import-tmp, the ingest (RocksDB
hard-links the file into the data directory, then drops the original),
import_done in the log (activated), engramctl's exit.

Then the roles alternate: each import is of the seed that is not active.
20 times the server is killed (SIGKILL) during one:

  - 12 kills at a moment drawn uniformly from [0, 1.2 x the median time
    of the complete imports so far] after engramctl starts (before the
    header arrives, while rows stream, during the commit, or after the
    import finished);
  - 4 once the ingest is seen, plus a random part of 1.2 x the median
    ingest-to-activation time (inside the ingest, the resident load, the
    metadata write);
  - 4 the moment the server logs import_done.

The moments are measured in this run, not fixed sleeps, so a slower build
(ASan) or a busier machine is killed at the same points of its import. After each kill the
server is restarted on the same directory and must: start and serve; have
the old version active (same number, the old seed's checksums) or the new
one (the next number, the new seed's), nothing else; list only versions
whose recorded checksums are those of their seed, none staged; serve the
old or new seed's bytes at the first, last and random rows of every
version; pass `engramctl verify` (every stored row re-read and hashed, so
no mix) on the active version, and on every version when start-up deleted
orphan rows; log no error; and have emptied its import-tmp directory
(import_tmp_cleared names what it removed). Re-running the import must then
complete, with the exact line engramctl prints, and verify.

Then engramctl is killed 5 times while its rows stream (once the server has
written a random 2-50% of the SST bytes): the server must end the call
(import_failed: CANCELLED, or INVALID_ARGUMENT for a stream short of rows,
which is how gRPC core shows it a dead client), keep serving the previous
version with no new or staged version, remove its temporary files, and
take the re-run. Only if every row and the trailer had left engramctl
before it died may the import complete (import_done with
client_xxh3=match); every row without the trailer is refused, since the
header announced one.

The server runs with --shm-dir (on /dev/shm when there is one), so every
check of the state also checks the same-host files (issue 16): after each
kill and restart, and after each import, the directory holds the lock
file and exactly one file, the active version's, whose rows (mapped here)
are that seed's rows and whose nonce, inode and version are the ones
Admin.ListLocalTables gives: a crash never leaves a stale or partial file
behind a restart, and never a file of the version that did not win.

ClientLocalCrashTest (its own server) kills the server under worker
processes that read through the client's same-node path (issue 16) and
restarts it: see its docstring. It needs --engram-python (the built engram
package) and is skipped without it.

The kill moments come from a seeded RNG; the seed is printed (--seed
replays a run). A summary of every kill and its outcome is printed at the
end.

usage: crash_test.py --server-bin PATH --engramctl PATH --pydir DIR
                     [--engram-python DIR] [--seed N]
"""
import argparse
import mmap
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import unittest
import zlib

import grpc
import xxhash

from synthetic import synthetic_rows  # beside this file

ARGS = None
TABLE = "crash"
ROWS, ROW_BYTES = 300000, 128      # 0.5-1 s to import in the plain build, 1.5 s in ASan
SEED_A, SEED_B = 11, 22
SERVER_KILLS = (["uniform"] * 12) + (["ingest"] * 4) + (["activated"] * 4)
CTL_KILLS = 5
SAMPLE_ROWS = 30


def synthetic_table(seed):
    """The whole table's rows under the synthetic rule (synthetic.py)."""
    return synthetic_rows(seed, ROWS, ROW_BYTES)


def hx(x):
    return "%016x" % x


class CrashTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        sys.path.insert(0, ARGS.pydir)
        from engram.v1 import engram_pb2
        cls.pb = engram_pb2
        cls.rng = random.Random(ARGS.seed)
        print("crash_test: RNG seed %d (replay with --seed %d)" % (ARGS.seed, ARGS.seed),
              flush=True)
        cls.t_start = time.monotonic()
        cls.data_of = {s: synthetic_table(s) for s in (SEED_A, SEED_B)}
        cls.sums = {s: (xxhash.xxh3_64_intdigest(d), zlib.crc32(d)) for s, d in cls.data_of.items()}
        cls.tmp = tempfile.mkdtemp(prefix="engram-crash-")
        cls.data = os.path.join(cls.tmp, "data")
        # tmpfs when the host has one, as deployments use
        shm_base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else cls.tmp
        cls.shm_dir = os.path.join(tempfile.mkdtemp(prefix="engram-crash-shm-", dir=shm_base),
                                   "shm")
        cls.tmp_dir = os.path.join(cls.data, "import-tmp")
        cls.log_path = os.path.join(cls.tmp, "server.log")
        cls.proc = None
        cls.channel = None
        cls.seed_of = {}           # version -> seed, for every completed version
        cls.active = None          # (version, seed)
        cls.summary = []
        cls.complete_runs = []     # watch()'s events of every complete import
        cls.start_server()

    @classmethod
    def tearDownClass(cls):
        if cls.proc and cls.proc.poll() is None:
            cls.channel.close()
            cls.proc.send_signal(signal.SIGTERM)
            rc = cls.proc.wait(timeout=60)
            if rc != 0:
                raise RuntimeError("engram-server exited with %d" % rc)
        for line in cls.summary:
            print(line)
        print("crash_test: %.1f s in all" % (time.monotonic() - cls.t_start))

    # ---- processes -------------------------------------------------------------

    @classmethod
    def start_server(cls):
        """Starts a server on the data directory; returns once its port is
        known. Its log is appended to one file across restarts."""
        port_file = os.path.join(cls.tmp, "port")
        if os.path.exists(port_file):
            os.unlink(port_file)
        with open(cls.log_path, "a") as log:
            cls.log_start = log.tell()
            cls.proc = subprocess.Popen(
                [ARGS.server_bin, "--data", cls.data, "--listen", "127.0.0.1:0", "--port-file",
                 port_file, "--threads", "2", "--resident-budget", str(128 << 20),
                 "--shm-dir", cls.shm_dir],
                stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        port = ""
        while not port:
            if time.monotonic() > deadline or cls.proc.poll() is not None:
                raise AssertionError("engram-server did not start (exit %s); log:\n%s"
                                     % (cls.proc.poll(), cls.log_since(cls.log_start)))
            time.sleep(0.01)
            if os.path.exists(port_file):
                with open(port_file) as f:
                    port = f.read().strip()
        cls.addr = "127.0.0.1:" + port
        if cls.channel:
            cls.channel.close()
        cls.channel = grpc.insecure_channel(cls.addr)
        pb = cls.pb
        cls.get_table = cls.channel.unary_unary(
            "/engram.v1.Admin/GetTable", request_serializer=pb.GetTableRequest.SerializeToString,
            response_deserializer=pb.TableInfo.FromString)
        cls.lookup = cls.channel.unary_unary(
            "/engram.v1.Lookup/Lookup", request_serializer=pb.LookupRequest.SerializeToString,
            response_deserializer=pb.LookupResponse.FromString)
        cls.stats = cls.channel.unary_unary(
            "/engram.v1.Admin/Stats", request_serializer=pb.StatsRequest.SerializeToString,
            response_deserializer=pb.StatsResponse.FromString)
        cls.list_local = cls.channel.unary_unary(
            "/engram.v1.Admin/ListLocalTables",
            request_serializer=pb.ListLocalTablesRequest.SerializeToString,
            response_deserializer=pb.ListLocalTablesResponse.FromString)

    @classmethod
    def log_since(cls, offset):
        with open(cls.log_path) as f:
            f.seek(offset)
            return f.read()

    def ctl(self, *args):
        return subprocess.run([ARGS.engramctl, "--server", self.addr] + list(args),
                              capture_output=True, text=True, timeout=300)

    def start_import(self, seed):
        return subprocess.Popen(
            [ARGS.engramctl, "--server", self.addr, "import-synthetic", "--table", TABLE,
             "--rows", str(ROWS), "--row-bytes", str(ROW_BYTES), "--seed", str(seed),
             "--progress-every", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def tmp_files(self):
        """{path: (bytes, links)} of the SST files imports are writing in
        import-tmp."""
        files = {}
        for d in os.listdir(self.tmp_dir):
            try:
                for f in os.scandir(os.path.join(self.tmp_dir, d)):
                    st = f.stat()
                    files[f.path] = (st.st_size, st.st_nlink)
            except FileNotFoundError:       # the server removed it meanwhile
                pass
        return files

    def watch(self, proc, kill=None, at=None, on=None, delay=0.0, at_bytes=None):
        """Follows an import started with start_import until engramctl exits
        or a kill fires: `kill` ("server" or "ctl") at `at` seconds after
        the start, `delay` seconds after event `on` was seen, or once the
        server has written `at_bytes` bytes of SST files. Returns the
        seconds at which each event was seen: started (the server's
        import_started), ingest (RocksDB hard-linked an SST file of
        import-tmp into the data directory, or took it away), activated
        (import_done), exit (engramctl), kill; and tmp_bytes, the most SST
        bytes seen in import-tmp."""
        t0 = time.monotonic()
        ev = {"tmp_bytes": 0}
        seen = set()
        with open(self.log_path) as log:
            log.seek(0, os.SEEK_END)
            text = ""
            while True:
                now = time.monotonic() - t0
                text += log.read()
                if "started" not in ev and "event=import_started table=%s " % TABLE in text:
                    ev["started"] = now
                files = self.tmp_files()
                ev["tmp_bytes"] = max(ev["tmp_bytes"], sum(b for b, _ in files.values()))
                if "ingest" not in ev and (any(n > 1 for _, n in files.values())
                                           or seen - set(files)):
                    ev["ingest"] = now
                seen |= set(files)
                if "activated" not in ev and "event=import_done table=%s " % TABLE in text:
                    ev["activated"] = now
                if "exit" not in ev and proc.poll() is not None:
                    ev["exit"] = now
                # A server kill planned after the import ended still
                # happens (then the new version must be complete); one
                # waiting for an event gives up a second after the exit.
                if kill and ((at is not None and now >= at) or (on in ev and now >= ev[on] + delay)
                             or (at_bytes is not None and ev["tmp_bytes"] >= at_bytes)
                             or (kill == "server" and at is None and "exit" in ev
                                 and now > ev["exit"] + 1)):
                    (self.proc if kill == "server" else proc).kill()
                    ev["kill"] = now
                    break
                if "exit" in ev and kill != "server":
                    break
                if now > 300:
                    proc.kill()
                    raise AssertionError("import did not end in 300 s")
                time.sleep(0.0005)
        return ev

    # ---- expectations ---------------------------------------------------------------

    def import_line(self, version, seed):
        x, c = self.sums[seed]
        return ("imported %s: %d rows of %d bytes, version %d, checksum %08x, xxh3 %s, "
                "resident yes\n" % (TABLE, ROWS, ROW_BYTES, version, c, hx(x)))

    def verify_line(self, version, seed, resident):
        x, c = self.sums[seed]
        return ("table %s version %d on %s: %d of %d rows read, xxh3 %s crc32 %08x; recorded "
                "xxh3 %s crc32 %08x%s: match\n" % (TABLE, version, self.addr, ROWS, ROWS, hx(x),
                                                   c, hx(x), c,
                                                   "; RAM copy compared" if resident else ""))

    def import_completes(self, seed):
        """A full import of `seed`: the exact line, the next version number,
        verify; it becomes the active state."""
        version = max(self.seed_of) + 1 if self.seed_of else 1
        proc = self.start_import(seed)
        ev = self.watch(proc)
        out, err = proc.communicate()
        self.assertEqual((proc.returncode, out.splitlines(True)[:1], err),
                         (0, [self.import_line(version, seed)], ""))
        self.seed_of[version] = seed
        type(self).active = (version, seed)
        self.check_state()
        self.complete_runs.append(ev)
        return ev

    def timing(self):
        """The median import time and ingest-to-activation time of the
        complete imports so far: kill moments follow the speed of this
        build on this machine as it is now, one slow import aside."""
        return (statistics.median(ev["exit"] for ev in self.complete_runs),
                statistics.median(ev["activated"] - ev["ingest"] for ev in self.complete_runs))

    def check_rows(self, version, seed):
        """The first, the last and SAMPLE_ROWS random rows of `version`
        (0: the active one) are exactly seed's rows."""
        rows = [0, ROWS - 1] + [self.rng.randrange(ROWS) for _ in range(SAMPLE_ROWS)]
        resp = self.lookup(self.pb.LookupRequest(table=TABLE, rows=rows, version=version),
                           timeout=30)
        data = self.data_of[seed]
        want = b"".join(data[r * ROW_BYTES:(r + 1) * ROW_BYTES] for r in rows)
        self.assertEqual((resp.version, resp.row_bytes), (version or self.active[0], ROW_BYTES))
        self.assertTrue(resp.data == want, "version %d: rows %s are not seed %d's" %
                        (version, rows, seed))

    def check_state(self, verify_all=False, verify=True):
        """The server serves exactly self.active; every version it lists is
        a complete version of a known seed (checksums recorded, rows
        sampled); the active one (with verify_all, every one; with verify
        false, none) passes engramctl verify; nothing is staged; import-tmp
        is empty."""
        version, seed = self.active
        info = self.get_table(self.pb.GetTableRequest(name=TABLE), timeout=30)
        x, c = self.sums[seed]
        self.assertEqual((info.version, info.xxh3, info.checksum, info.rows, info.local_rows,
                          info.row_bytes, info.resident), (version, x, c, ROWS, ROWS, ROW_BYTES,
                                                           True))
        VS = self.pb.VersionInfo
        listed = [(v.version, v.state) for v in info.versions]
        self.assertEqual([s for v, s in listed if s == VS.ACTIVE], [VS.ACTIVE], listed)
        for v in info.versions:
            self.assertIn(v.version, self.seed_of, listed)
            self.assertIn(v.state, (VS.ACTIVE, VS.RETAINED), listed)
            vx, vc = self.sums[self.seed_of[v.version]]
            self.assertEqual((v.xxh3, v.checksum, v.local_rows), (vx, vc, ROWS), v.version)
            # A crash may stop the drop of the oldest retained version
            # between its metadata and its rows; the next import ends it.
            self.assertGreaterEqual(v.version, version - 2, listed)
        self.check_rows(0, seed)
        for v in info.versions:
            if v.version != version:
                self.check_rows(v.version, self.seed_of[v.version])
            if not verify or (v.version != version and not verify_all):
                continue
            out = self.ctl("verify", "--table", TABLE, "--version", str(v.version))
            self.assertEqual((out.returncode, out.stdout, out.stderr),
                             (0, self.verify_line(v.version, self.seed_of[v.version],
                                                  v.version == version), ""))
        self.assertEqual(os.listdir(self.tmp_dir), [])
        self.check_shm_file(version, seed)

    def check_shm_file(self, version, seed):
        """--shm-dir holds the lock and the active version's file only: the
        one ListLocalTables names (inode, nonce), holding seed's rows."""
        name = "%s@v%d@s0of1.engram" % (TABLE, version)
        self.assertEqual(sorted(os.listdir(self.shm_dir)), [".engram-shm.lock", name])
        files = self.list_local(self.pb.ListLocalTablesRequest(), timeout=30).files
        self.assertEqual([(f.table, f.version, f.active) for f in files], [(TABLE, version, True)])
        fd = os.open(os.path.join(self.shm_dir, name), os.O_RDONLY)
        try:
            st = os.fstat(fd)
            self.assertEqual((st.st_ino, st.st_size), (files[0].st_ino, 4096 + ROWS * ROW_BYTES))
            with mmap.mmap(fd, st.st_size, prot=mmap.PROT_READ) as m:
                self.assertEqual((m[:8], m[88:104]), (b"ENGRSHM1", files[0].nonce))
                self.assertTrue(m[4096:] == self.data_of[seed], "%s: not seed %d's rows"
                                % (name, seed))
        finally:
            os.close(fd)

    def other(self, seed):
        return SEED_B if seed == SEED_A else SEED_A

    # ---- the tests -------------------------------------------------------------------

    def test_0_reference_imports(self):
        """Version 1 (seed A) and a complete seed-B import: the checksums
        computed here, and the time an import takes."""
        cls = type(self)
        evs = [self.import_completes(SEED_A), self.import_completes(SEED_B)]
        for ev in evs:
            self.assertEqual(sorted(ev), ["activated", "exit", "ingest", "started", "tmp_bytes"], ev)
            self.assertLessEqual(ev["ingest"], ev["activated"])
        cls.sst_bytes = min(ev["tmp_bytes"] for ev in evs)
        self.assertGreater(cls.sst_bytes, ROWS * ROW_BYTES)
        print("crash_test: reference imports %s, ingest to activation %s; %d SST bytes"
              % (", ".join("%.3f s" % ev["exit"] for ev in evs),
                 ", ".join("%.3f s" % (ev["activated"] - ev["ingest"]) for ev in evs),
                 cls.sst_bytes), flush=True)

    def test_1_server_killed(self):
        kinds = list(SERVER_KILLS)
        self.rng.shuffle(kinds)
        outcomes = {"old kept": 0, "new complete": 0}
        for i, kind in enumerate(kinds):
            old_version, old_seed = self.active
            new_seed = self.other(old_seed)
            duration, commit = self.timing()
            if kind == "uniform":
                plan = dict(at=self.rng.uniform(0, 1.2 * duration))
            elif kind == "ingest":
                plan = dict(on="ingest", delay=self.rng.uniform(0, 1.2 * commit))
            else:
                plan = dict(on="activated", delay=0.0)
            proc = self.start_import(new_seed)
            ev = self.watch(proc, kill="server", **plan)
            proc.communicate(timeout=60)
            self.proc.wait(timeout=60)
            left = sorted(os.listdir(self.tmp_dir))
            log_from = os.path.getsize(self.log_path)
            self.start_server()
            restart_log = self.log_since(log_from)
            info = self.get_table(self.pb.GetTableRequest(name=TABLE), timeout=30)
            if info.version == old_version:
                outcome = "old kept"
                self.assertNotIn("activated", ev, "import_done was logged, the old version is "
                                 "active after the restart")
            else:
                outcome = "new complete"
                self.assertEqual(info.version, max(self.seed_of) + 1)
                self.assertIn("started", ev)
                self.seed_of[info.version] = new_seed
                type(self).active = (info.version, new_seed)
            outcomes[outcome] += 1
            # Rows deleted at start-up must be only those of no version:
            # then every listed version is re-read in full.
            self.check_state(verify_all="orphan_rows_deleted" in restart_log)
            self.assertNotIn("level=error", restart_log)
            if left:
                self.assertIn("event=import_tmp_cleared dir=%s entries=%d\n" % (self.tmp_dir,
                                                                                len(left)),
                              restart_log)
            self.summary.append(
                "server kill %2d: %-9s at %6.3f s (%s), seen: %s; %s left in import-tmp; %s%s"
                % (i + 1, kind, ev["kill"], describe(plan), timeline(ev), len(left), outcome,
                   ", orphan rows deleted" if "orphan_rows_deleted" in restart_log else ""))
            # The interrupted import, run again to its end.
            self.import_completes(new_seed)
        self.summary.append("server kills: %d; old version kept %d, new version complete %d"
                            % (len(kinds), outcomes["old kept"], outcomes["new complete"]))

    def test_2_engramctl_killed(self):
        outcomes = {"old kept": 0, "new complete": 0}
        for i in range(CTL_KILLS):
            old_version, old_seed = self.active
            new_seed = self.other(old_seed)
            # While rows stream: once the server has written a random 2-50%
            # of the table's SST bytes. engramctl is ahead of the server by
            # what gRPC and the socket buffers hold, rarely past its end.
            at_bytes = int(self.rng.uniform(0.02, 0.5) * self.sst_bytes)
            log_from = os.path.getsize(self.log_path)
            proc = self.start_import(new_seed)
            ev = self.watch(proc, kill="ctl", at_bytes=at_bytes)
            proc.communicate(timeout=60)
            self.assertIn("kill", ev, "engramctl ended before it was killed: %s" % ev)
            # The server notices the broken stream on its own time: wait for
            # it to end the call (no call in flight but the Stats asking).
            deadline = time.monotonic() + 60
            while True:
                in_flight = self.stats(self.pb.StatsRequest(), timeout=30).in_flight
                text = self.log_since(log_from)
                started = text.count("event=import_started table=%s " % TABLE)
                failed = re.findall(r"event=import_failed table=%s (.*)" % TABLE, text)
                done = re.findall(r"event=import_done table=%s .* client_xxh3=(\w+) " % TABLE, text)
                if in_flight == 1:
                    self.assertEqual(started, len(failed) + len(done), text)
                    break
                self.assertLess(time.monotonic(), deadline,
                                "the server did not end the broken import:\n" + text)
                time.sleep(0.01)
            if done:
                # Every row and the trailer had left engramctl before it
                # died: the import it asked for, complete. Activating one
                # without its trailer would take a dead client's stream for
                # a finished one.
                self.assertEqual((done, failed), (["match"], []), text)
                outcome = "new complete"
                version = max(self.seed_of) + 1
                self.seed_of[version] = new_seed
                type(self).active = (version, new_seed)
            else:
                # gRPC core ends a message read on a dead connection as it
                # ends one on a half-close, so the server may see a short
                # stream rather than a cancelled one, or every row without
                # the trailer the header announced; it refuses each.
                for line in failed:
                    self.assertRegex(line, r'^status=(CANCELLED rows_received=\d+ error="import '
                                     r'stream broken or cancelled|INVALID_ARGUMENT rows_received='
                                     r'(\d+) error="import of table "%s" ended after (\2 of %d '
                                     r'rows|all \2 rows but without the trailer its header '
                                     r'announced)); nothing was activated"$' % (TABLE, ROWS))
                outcome = "old kept"
            outcomes[outcome] += 1
            # No restart, nothing written: the rows as served and the
            # versions listed show it; verify runs after the re-run.
            self.check_state(verify=outcome != "old kept")
            self.summary.append("engramctl kill %d: at %.3f s, %d SST bytes written, seen: %s; "
                                "server: %s; %s" % (
                                    i + 1, ev["kill"], ev["tmp_bytes"], timeline(ev),
                                    " ".join(f.split(" error=")[0] for f in failed)
                                    or ("import_done" if done else "no header yet"), outcome))
            self.import_completes(new_seed)
        self.summary.append("engramctl kills: %d; old version kept %d, new version complete %d"
                            % (CTL_KILLS, outcomes["old kept"], outcomes["new complete"]))



class ClientLocalCrashTest(unittest.TestCase):
    """The client's same-node path (client/local.c) across a server
    SIGKILL and restart. A server of its own (--shm-dir, a small table
    "loc" of synthetic rows, seed 3000 + version, and the tiny-v41 model
    imported with import-synthetic --manifest) and three worker processes
    (local_client.py: the engram Python package) that read locally: AUTO
    and REQUIRE with version_refresh_ms 200, looking rows up and
    prefetching in a loop, and a REQUIRE one with 60 s that only answers
    single lookups. The server is killed (SIGKILL: its files stay in the
    directory) while they read. What local.c promises, asserted exactly:

      - until a worker's next listing its mappings keep serving, the
        server dead: the 60 s worker reads every row right, locally;
      - the listing that fails drops every mapping (no listed file is kept
        when nothing can say it is still the server's): from then AUTO's
        lookups go over gRPC and fail with UNAVAILABLE, REQUIRE's with
        FAILED_PRECONDITION 'table "loc" has no usable local file:
        ListLocalTables on the server failed: UNAVAILABLE: ...', and
        /proc/PID/maps shows no file of the directory;
      - the stale file truncated to half under the 60 s worker (the server
        is dead, so only the worker maps it): rows before the cut still
        come from it, the first past it fails with "its file of version 1
        was shortened while mapped" (no SIGBUS), the next re-lists and
        fails as above;
      - restarted on the same port and directory, the server removes the
        stale files and publishes new ones (new inodes and nonces): AUTO
        and REQUIRE read right rows again within version_refresh_ms plus
        the channel's longest reconnect back-off (5 s, client/cluster.c),
        and map exactly the new files;
      - every row any worker got, in every phase, is the synthetic row of
        the version it reported, and every worker exits 0 (never a
        signal)."""
    TABLE, ROWS_L, RB_L, SEED_BASE = "loc", 8192, 64, 3000
    MODEL, MODEL_SEED = "tiny-v41", 9
    REFRESH_MS = 200
    BACKOFF_MS = 5000            # GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, client/cluster.c

    @classmethod
    def setUpClass(cls):
        if not ARGS.engram_python:
            raise unittest.SkipTest("needs --engram-python (the built engram package: not built "
                                    "with ENGRAM_SANITIZE or without python3-dev)")
        sys.path.insert(0, ARGS.pydir)
        from engram.v1 import engram_pb2
        cls.pb = engram_pb2
        cls.tmp = tempfile.mkdtemp(prefix="engram-crash-local-")
        shm_base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else cls.tmp
        cls.shm_base = tempfile.mkdtemp(prefix="engram-crash-local-shm-", dir=shm_base)
        cls.shm = os.path.join(os.path.realpath(cls.shm_base), "shm")
        cls.log_path = os.path.join(cls.tmp, "server.log")
        cls.proc = None
        try:
            cls.set_up_server()
        except BaseException:
            if cls.proc and cls.proc.poll() is None and cls.proc.pid > 0:
                cls.proc.kill()      # only the server this class started
                cls.proc.wait()
            shutil.rmtree(cls.tmp, ignore_errors=True)
            shutil.rmtree(cls.shm_base, ignore_errors=True)
            raise

    @classmethod
    def set_up_server(cls):
        cls.start_server("127.0.0.1:0")
        for args in (["import-synthetic", "--table", cls.TABLE, "--rows", str(cls.ROWS_L),
                      "--row-bytes", str(cls.RB_L), "--seed", str(cls.SEED_BASE + 1)],
                     ["put-manifest", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                   "..", "..", "deploy", "examples",
                                                   "tiny-deepseek-v4.1.json")],
                     ["import-synthetic", "--manifest", cls.MODEL, "--seed",
                      str(cls.MODEL_SEED)]):
            p = subprocess.run([ARGS.engramctl, "--server", cls.addr] + args,
                               capture_output=True, text=True, timeout=120)
            if p.returncode != 0:
                raise RuntimeError("engramctl %s: %s" % (args[0], p.stderr))

    @classmethod
    def tearDownClass(cls):
        rc = 0
        if cls.proc and cls.proc.poll() is None:
            cls.proc.send_signal(signal.SIGTERM)
            rc = cls.proc.wait(timeout=60)
        if rc != 0:
            raise RuntimeError("engram-server exited with %d" % rc)
        shutil.rmtree(cls.tmp, ignore_errors=True)
        shutil.rmtree(cls.shm_base, ignore_errors=True)

    @classmethod
    def start_server(cls, listen):
        """Starts the server on `listen` (a restart names the port the
        first start got, so workers find it where they left it)."""
        port_file = os.path.join(cls.tmp, "port")
        if os.path.exists(port_file):
            os.unlink(port_file)
        with open(cls.log_path, "a") as log:
            cls.log_start = log.tell()
            cls.proc = subprocess.Popen(
                [ARGS.server_bin, "--data", os.path.join(cls.tmp, "data"), "--listen", listen,
                 "--port-file", port_file, "--threads", "2", "--shm-dir", cls.shm],
                stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        port = ""
        while not port:
            if time.monotonic() > deadline or cls.proc.poll() is not None:
                with open(cls.log_path) as f:
                    raise AssertionError("engram-server did not start (exit %s); log:\n%s"
                                         % (cls.proc.poll(), f.read()[-4000:]))
            time.sleep(0.01)
            if os.path.exists(port_file):
                with open(port_file) as f:
                    port = f.read().strip()
        cls.addr = "127.0.0.1:" + port

    def setUp(self):
        self.workers = []

    def tearDown(self):
        for w in self.workers:     # only the workers this test started
            w.kill()

    def worker(self, local, refresh_ms):
        from local_client import LocalClient  # beside this file
        w = LocalClient(ARGS.engram_python, self.addr, local, refresh_ms, self.TABLE,
                        self.ROWS_L, self.RB_L, self.SEED_BASE, self.MODEL, self.MODEL_SEED)
        self.workers.append(w)
        return w

    def listed(self):
        """(inode, path) of every file the server lists."""
        import grpc
        with grpc.insecure_channel(self.addr) as ch:
            pb = self.pb
            rpc = ch.unary_unary("/engram.v1.Admin/ListLocalTables",
                                 request_serializer=pb.ListLocalTablesRequest.SerializeToString,
                                 response_deserializer=pb.ListLocalTablesResponse.FromString)
            files = rpc(self.pb.ListLocalTablesRequest(), timeout=30).files
        self.assertEqual(sorted((f.table, f.version) for f in files),
                         [(self.TABLE, 1), ("tiny-v41.l1", 1), ("tiny-v41.l14", 1)])
        return sorted((f.st_ino, f.path) for f in files)

    def ok(self, version=1):
        return {"status": "OK", "version": version, "right": True}

    def loc(self):
        return "%s/%s@v1@s0of1.engram" % (self.shm, self.TABLE)

    def test_server_killed_under_local_readers(self):
        last = self.ROWS_L - 1
        auto, req = self.worker("auto", self.REFRESH_MS), self.worker("require", self.REFRESH_MS)
        held = self.worker("require", 60000)
        files = self.listed()
        for w in (auto, req, held):
            self.assertEqual(w.lookup([0, last]), self.ok())
            self.assertEqual(w.cmd("prefetch"), {"status": "OK", "right": True})
            # AUTO's first lookups go over gRPC while it lists in the background.
            deadline = time.monotonic() + 10
            while w.maps(self.shm) != files and time.monotonic() < deadline:
                self.assertEqual(w.lookup([0, last]), self.ok())
                time.sleep(0.02)
            self.assertEqual(w.maps(self.shm), files)
        for w in (auto, req):
            w.cmd("start")
        time.sleep(0.3)
        self.assertGreater(self.proc.pid, 0)
        self.proc.kill()
        self.assertEqual(self.proc.wait(timeout=60), -signal.SIGKILL)
        # The files stay; the 60 s worker still reads them, the server dead.
        self.assertEqual(sorted(os.listdir(self.shm)), [".engram-shm.lock"] + sorted(
            os.path.basename(p) for _, p in files))
        self.assertEqual(held.lookup([0, last, 4000]), self.ok())
        self.assertEqual(held.cmd("prefetch"), {"status": "OK", "right": True})
        self.assertEqual(held.maps(self.shm), files)
        # The others' next listing fails and lets every mapping go.
        deadline = time.monotonic() + 10
        while auto.maps(self.shm) or req.maps(self.shm):
            self.assertLess(time.monotonic(), deadline, "mappings kept with the server dead")
            time.sleep(0.05)
        down = 'table "%s" has no usable local file: ListLocalTables on the server failed: ' \
               'UNAVAILABLE: ' % self.TABLE
        r = auto.lookup([0, last])
        self.assertEqual(r["status"], "UNAVAILABLE", r)
        r = req.lookup([0, last])
        self.assertEqual(r["status"], "FAILED_PRECONDITION", r)
        self.assertTrue(r["message"].startswith(down), r)
        # The stale file cut to half under the 60 s worker: only it maps it.
        os.truncate(self.loc(), 4096 + self.ROWS_L * self.RB_L // 2)
        self.assertEqual(held.lookup([0, 5, self.ROWS_L // 2 - 1]), self.ok())
        self.assertEqual(held.lookup([0, last]), {
            "status": "FAILED_PRECONDITION", "message": 'table "%s" has no usable local file: its '
            'file of version 1 was shortened while mapped' % self.TABLE})
        r = held.lookup([0, 5])
        self.assertEqual(r["status"], "FAILED_PRECONDITION", r)
        self.assertTrue(r["message"].startswith(down), r)
        self.assertEqual(held.maps(self.shm), [])
        held.close()

        # Restart: same port, same directory.
        time.sleep(0.5)
        self.start_server(self.addr)
        t_up = time.monotonic()
        with open(self.log_path) as f:
            f.seek(self.log_start)
            self.assertIn("event=shm_stale_removed dir=%s files=3" % self.shm, f.read())
        new = self.listed()
        self.assertEqual([p for _, p in new], [p for _, p in files])
        self.assertFalse({i for i, _ in new} & {i for i, _ in files}, (files, new))
        back = {}
        for w in (auto, req):
            deadline = time.monotonic() + 30
            while w.lookup([0, last]) != self.ok():
                self.assertLess(time.monotonic(), deadline, "%s never read again" % w.local)
                time.sleep(0.01)
            back[w.local] = time.monotonic() - t_up
        print("crash_test: local workers read again %s after the restart"
              % ", ".join("%s %.2f s" % kv for kv in sorted(back.items())), flush=True)
        for k, t in back.items():
            self.assertLess(t, (self.REFRESH_MS + self.BACKOFF_MS) / 1000.0 + 2.0, k)
        for w in (auto, req):     # the new files, by inode; no old one
            deadline = time.monotonic() + 10
            while w.maps(self.shm) != new:
                self.assertLess(time.monotonic(), deadline, (w.local, w.maps(self.shm), new))
                time.sleep(0.05)
                w.lookup([0, last])
        for w, lookups_down, prefetches_down in (
                (auto, r"UNAVAILABLE: .+", r"UNAVAILABLE: table tiny-v41\.l(1|14): .+"),
                (req, re.escape("FAILED_PRECONDITION: " + down) + ".+",
                 r"FAILED_PRECONDITION: table tiny-v41\.l(1|14): " + re.escape(
                     'table "tiny-v41.l') + r'(1|14)" has no usable local file: ' + re.escape(
                     "ListLocalTables on the server failed: UNAVAILABLE: ") + ".+")):
            self.assertTrue(w.wait_loop("OK v1"))
            s = w.cmd("stop")
            self.assertEqual(s["wrong"], [])
            for seq, ok, down_re in ((s["lookup_seq"], "OK v1", lookups_down),
                                     (s["prefetch_seq"], "OK", prefetches_down)):
                keys = [k for k, _, _ in seq]
                self.assertEqual((keys[0], keys[-1]), (ok, ok), keys)
                self.assertGreater(len(keys), 2, keys)
                for k in keys[1:-1]:
                    self.assertRegex(k, "^" + down_re + "$")
            self.assertEqual(w.lookup([0, last]), self.ok())
            self.assertEqual(w.cmd("prefetch"), {"status": "OK", "right": True})
            w.close()
        self.assertEqual(sorted(os.listdir(self.shm)), [".engram-shm.lock"] + sorted(
            os.path.basename(p) for _, p in new))

def timeline(ev):
    """The events seen, in order, with their seconds."""
    return " ".join("%s %.3f" % (k, v) for k, v in sorted(ev.items(), key=lambda e: e[1])
                    if k not in ("kill", "tmp_bytes")) or "nothing"


def describe(plan):
    if "at" in plan:
        return "uniform"
    return "%.3f s after %s" % (plan["delay"], plan["on"])


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--server-bin", required=True)
    ap.add_argument("--engramctl", required=True)
    ap.add_argument("--pydir", required=True)
    # ClientLocalCrashTest's workers (skipped without it): the built engram
    # Python package's directory (build/python).
    ap.add_argument("--engram-python")
    ap.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(4), "little"))
    ARGS, rest = ap.parse_known_args()
    result = unittest.main(argv=[sys.argv[0]] + rest, exit=False, verbosity=2).result
    # A failed run keeps the data directory and the server's log to look at.
    if not result.wasSuccessful():
        print("crash_test: kept %s (server.log: every start, import and kill); replay with "
              "--seed %d" % (getattr(CrashTest, "tmp", "nothing"), ARGS.seed))
        sys.exit(1)
    if hasattr(CrashTest, "tmp"):     # not when only ClientLocalCrashTest ran
        shutil.rmtree(CrashTest.tmp)
        shutil.rmtree(os.path.dirname(CrashTest.shm_dir))


if __name__ == "__main__":
    main()
