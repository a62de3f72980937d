#!/usr/bin/python3
"""--shm-dir end to end (issue 16, the server half): resident table versions
as files a client on the same host can map, against real engram-server
processes.

One server (a temporary RocksDB directory, a free loopback port, --shm-dir
in a temporary directory on /dev/shm when there is one, a resident budget
of 40 MiB) holds "t" (3000 rows of 64 bytes), "rss" (32 MiB) and "zbig"
(10 MiB, past what the budget has left, so served from RocksDB), all
imported with engramctl import-synthetic; the rows expected are computed
here (common/synthetic.h's rule, in numpy). Then:

  - each resident version has exactly one file, named
    "<table>@v<version>@s0of1.engram", mode 0600, whose header (common/shm_format.h)
    holds exactly the version's fields, checksums and a CRC-32 of itself,
    and whose rows, mapped from this test, equal the synthetic rows byte
    for byte; zbig has no file; nothing else is in the directory but the
    lock file (with the server's pid);
  - Admin.ListLocalTables returns exactly each file's path, size, layout,
    checksums, nonce, st_dev and st_ino, this host's boot_id and hostname;
    a table filter, an unknown table (empty) and a bad name
    (INVALID_ARGUMENT, exact message); Stats and /metrics count the files;
  - Lookup returns the same bytes as the mapping;
  - the server's memory holds one copy: /proc/PID/smaps shows the file's
    mapping resident, and anonymous memory grew by less than half the
    32 MiB table while it was imported;
  - a cutover (an import that activates, a staged import then
    ActivateVersion, a rollback to a retained version) publishes the new
    version's file and unlinks the old one, while a mapping of the old
    file made before the cutover still reads the old rows; a drop of the
    previous version leaves no file of it;
  - SIGKILL leaves the files; the restart removes them (and planted
    leftovers of ours: a final name, a temporary one) but not a stranger's
    file, and republishes every resident version with a new nonce;
    SIGTERM unlinks every file;
  - a second server on the same directory exits 2 naming it;
  - --shm-group: mode 0640 and that group; an unknown group, a directory
    that cannot be made and a file in its place exit 2 with the reason;
  - without --shm-dir, ListLocalTables answers an empty list;
  - engramctl verify --local: one OK line per published file and exit 0;
    a byte of a file's rows flipped (through the file, as root: the
    server's mapping sees it too, so it is flipped back after) exits 1
    naming that file and the listed and recomputed XXH3-64 and CRC-32; a
    byte of the nonce flipped exits 1 naming the nonce and the header CRC;
    a file renamed away exits 2 (unreadable), another file put under its
    name exits 1 (another inode);
    --table and --version select the files checked; a filter matching no
    file, a server without --shm-dir (said in a line) and a bad --version
    exit 2 with their exact messages.

usage: shm_test.py --server-bin PATH --engramctl PATH --pydir DIR
"""
import grp
import mmap
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import unittest
import urllib.request
import zlib

import xxhash

from synthetic import synthetic_rows as synthetic  # beside this file
import abuse_test  # beside this file: its Server (starts and stops only its own process)
from abuse_test import A, L, OK, IA, Server
from raw_wire import lookup_req

ARGS = None
pb = None

ROW_BYTES = 64
T_ROWS = 3000
RSS_ROWS, RSS_ROW_BYTES = 131072, 256          # 32 MiB
BIG_ROWS = 40960                               # 10 MiB of 256-byte rows
BUDGET = 40 << 20
HEADER = 4096
# common/shm_format.h's header, version 1: magic, format, header bytes, data offset, data
# bytes, version, rows, local rows, row bytes, dim, shard index, shard
# count, xxh3, crc32, reserved, nonce, created, dtype, table.
HEADER_FMT = "<8sIIQQQQQIIIIQII16sQ16s136s"


def tmp_base():
    """A tmpfs when the host has one (as a deployment would), else /tmp."""
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        return tempfile.mkdtemp(prefix="engram-shm-test-", dir="/dev/shm")
    return tempfile.mkdtemp(prefix="engram-shm-test-")


def parse_header(h):
    f = struct.unpack_from(HEADER_FMT, h)
    keys = ("magic", "format", "header_bytes", "data_offset", "data_bytes", "version", "rows",
            "local_rows", "row_bytes", "dim", "shard_index", "shard_count", "xxh3", "crc32",
            "reserved", "nonce", "created", "dtype", "table")
    d = dict(zip(keys, f))
    d["dtype"] = d["dtype"].rstrip(b"\0").decode()
    d["table"] = d["table"].rstrip(b"\0").decode()
    d["rest_zero"] = h[264:4092] == bytes(4092 - 264)
    d["header_crc_ok"] = struct.unpack_from("<I", h, 4092)[0] == zlib.crc32(h[:4092])
    return d


def map_file(path):
    """The whole file mapped read-only, as a client would (fd closed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        return mmap.mmap(fd, st.st_size, prot=mmap.PROT_READ), st
    finally:
        os.close(fd)


def import_rows(srv, table, seed, rows, row_bytes, stage=False):
    """Imports synthetic rows (numpy-made, 1 MiB chunks) through a raw
    Admin.Import stream; returns the rows' bytes."""
    data = synthetic(seed, rows, row_bytes)

    def msgs():
        yield pb.ImportRequest(header=pb.ImportHeader(
            table=table, rows=rows, dim=row_bytes, dtype="u8", stage=stage)).SerializeToString()
        step = (1 << 20) // row_bytes
        for start in range(0, rows, step):
            n = min(step, rows - start)
            yield pb.ImportRequest(chunk=pb.ImportChunk(
                start_row=start,
                data=data[start * row_bytes:(start + n) * row_bytes])).SerializeToString()
    code, details, _ = srv.stream_unary(A + "Import", msgs(), timeout=120)
    if (code, details) != (OK, ""):
        raise AssertionError("import of %s: %s %s" % (table, code, details))
    return data


def activate(srv, table, version):
    code, details, _ = srv.unary(A + "ActivateVersion", pb.VersionRequest(
        table=table, version=version).SerializeToString(), timeout=60)
    if (code, details) != (OK, ""):
        raise AssertionError("activate %s %d: %s %s" % (table, version, code, details))


def anon_growth_of_activation(srv, table, rows, row_bytes):
    """Imports `table` staged, then activates it (a resident load: no
    import buffers, RocksDB read without its block cache): how much the
    server's anonymous resident memory grew meanwhile, in bytes."""
    import_rows(srv, table, 5, rows, row_bytes, stage=True)
    before = anon_kb(srv.proc.pid)
    activate(srv, table, 1)
    return (anon_kb(srv.proc.pid) - before) * 1024


def run_server_expect_exit(args, timeout=30):
    """A server that must refuse to start: (exit status, stderr)."""
    p = subprocess.run([ARGS.server_bin, "--listen", "127.0.0.1:0"] + args,
                       capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stderr


def run_ctl(address, *args):
    """engramctl against `address`: (exit status, stdout, stderr)."""
    p = subprocess.run([ARGS.engramctl, "--server", address] + list(args),
                       capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout, p.stderr


def flip_byte(path, offset, mask):
    """XORs one byte of a published file in place (never resizing it: the
    server maps the file, and a shortened one would fault it)."""
    fd = os.open(path, os.O_RDWR)
    try:
        b = os.pread(fd, 1, offset)
        os.pwrite(fd, bytes([b[0] ^ mask]), offset)
    finally:
        os.close(fd)


def local_summary(ok, bad, here=1, no_dir=0):
    checked = ok + bad
    return ("verify --local: %d file%s checked: %d OK, %d MISMATCH, 0 unreadable; servers: %d on "
            "this host (%d without --shm-dir), 0 on another host, 0 failed\n"
            % (checked, "" if checked == 1 else "s", ok, bad, here, no_dir))


def anon_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        return int(re.search(r"^RssAnon:\s+(\d+) kB", f.read(), re.M).group(1))


class ShmTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="engram-shm-data-")
        cls.base = tmp_base()
        cls.shm = os.path.join(cls.base, "shm")
        cls.rows = {("t", 1): synthetic(1, T_ROWS, ROW_BYTES)}
        cls.srv = Server(os.path.join(cls.tmp, "data"),
                         ["--shm-dir", cls.shm, "--resident-budget", str(BUDGET),
                          "--threads", "2", "--metrics-listen", "127.0.0.1:0"],
                         log=os.path.join(cls.tmp, "server.log")).start()
        cls.ctl_ok("import-synthetic", "--table", "t", "--rows", str(T_ROWS), "--row-bytes",
                   str(ROW_BYTES), "--seed", "1")
        cls.anon_growth = anon_growth_of_activation(cls.srv, "rss", RSS_ROWS, RSS_ROW_BYTES)
        cls.rows[("rss", 1)] = synthetic(5, RSS_ROWS, RSS_ROW_BYTES)
        cls.ctl_ok("import-synthetic", "--table", "zbig", "--rows", str(BIG_ROWS),
                   "--row-bytes", str(RSS_ROW_BYTES), "--seed", "9")

    @classmethod
    def tearDownClass(cls):
        try:
            if cls.srv.proc is not None:
                rc = cls.srv.stop()
                if rc != 0:
                    raise AssertionError("engram-server exited with %s: %s"
                                         % (rc, cls.srv.log_tail()))
        finally:
            cls.srv.cleanup()
            shutil.rmtree(cls.tmp, ignore_errors=True)
            shutil.rmtree(cls.base, ignore_errors=True)

    @classmethod
    def ctl_ok(cls, *args):
        p = subprocess.run([ARGS.engramctl, "--server", cls.srv.address] + list(args),
                           capture_output=True, text=True, timeout=120)
        if p.returncode:
            raise AssertionError("engramctl %s: %s" % (" ".join(args), p.stderr))
        return p.stdout

    # ---- helpers ---------------------------------------------------------------

    def call(self, method, req, resp_type, code=OK, details=""):
        c, d, reply = self.srv.unary(A + method, req.SerializeToString())
        self.assertEqual((c, d), (code, details))
        return resp_type.FromString(reply) if reply is not None else None

    def local(self, table=""):
        return self.call("ListLocalTables", pb.ListLocalTablesRequest(table=table),
                         pb.ListLocalTablesResponse)

    def info(self, table):
        return self.srv.table_info(table)

    def name(self, table, version):
        return "%s@v%d@s0of1.engram" % (table, version)

    def path(self, table, version):
        return os.path.join(os.path.realpath(self.shm), self.name(table, version))

    def dir_files(self):
        return sorted(os.listdir(self.shm))

    def expect_files(self, versions):
        """The directory holds exactly the lock file and the files of
        `versions` [(table, version)], and ListLocalTables lists exactly
        them, each checked against its file and the synthetic rows."""
        self.assertEqual(self.dir_files(),
                         sorted([".engram-shm.lock"] + [self.name(t, v) for t, v in versions]))
        r = self.local()
        self.assertEqual([(f.table, f.version) for f in r.files], sorted(versions))
        for f in r.files:
            self.check_file(f)
        return r

    def check_file(self, f):
        """One ListLocalTables entry against its file: stat, header, rows."""
        ti = self.info(f.table)
        row_bytes = ti.row_bytes
        rows = self.rows[(f.table, f.version)]
        self.assertEqual(f.path, self.path(f.table, f.version))
        m, st = map_file(f.path)
        try:
            self.assertEqual((f.st_dev, f.st_ino, f.file_bytes), (st.st_dev, st.st_ino, st.st_size))
            self.assertEqual(st.st_mode & 0o777, 0o600)
            self.assertEqual(st.st_nlink, 1)
            self.assertEqual((f.data_offset, f.data_bytes, f.file_bytes),
                             (HEADER, len(rows), HEADER + len(rows)))
            self.assertEqual((f.rows, f.local_rows, f.row_bytes, f.dim, f.dtype, f.shard_index,
                              f.shard_count), (len(rows) // row_bytes, len(rows) // row_bytes,
                                               row_bytes, row_bytes, "u8", 0, 1))
            self.assertEqual((f.xxh3, f.crc32), (xxhash.xxh3_64_intdigest(rows), zlib.crc32(rows)))
            self.assertEqual(len(f.nonce), 16)
            self.assertEqual(f.active, ti.version == f.version)
            h = parse_header(m[:HEADER])
            created = [v.created_unix_ms for v in ti.versions if v.version == f.version][0]
            self.assertEqual(h, {
                "magic": b"ENGRSHM1", "format": 1, "header_bytes": HEADER, "data_offset": HEADER,
                "data_bytes": len(rows), "version": f.version, "rows": f.rows,
                "local_rows": f.local_rows, "row_bytes": row_bytes, "dim": row_bytes,
                "shard_index": 0, "shard_count": 1, "xxh3": f.xxh3, "crc32": f.crc32,
                "reserved": 0, "nonce": f.nonce, "created": created, "dtype": "u8",
                "table": f.table, "rest_zero": True, "header_crc_ok": True})
            self.assertTrue(m[HEADER:] == rows, "%s: rows differ" % f.path)
        finally:
            m.close()

    def lookup(self, table, rows, version=0):
        c, d, reply = self.srv.unary(L, lookup_req(table, rows, version))
        self.assertEqual((c, d), (OK, ""))
        return pb.LookupResponse.FromString(reply)

    def stats_memory(self):
        return self.call("Stats", pb.StatsRequest(), pb.StatsResponse).memory

    def metrics_text(self):
        # the last start's port (the log spans restarts)
        port = re.findall(r"event=metrics_listening .*?port=(\d+)", self.srv.log_tail(10 ** 7))[-1]
        with urllib.request.urlopen("http://127.0.0.1:%s/metrics" % port, timeout=10) as r:
            return r.read().decode()

    def assert_counted(self, r):
        total = sum(f.file_bytes for f in r.files)
        m = self.stats_memory()
        self.assertEqual((m.shm_files, m.shm_bytes, m.shm_failures), (len(r.files), total, 0))
        text = self.metrics_text()
        self.assertIn("\nengram_shm_files %d\n" % len(r.files), text)
        self.assertIn("\nengram_shm_bytes %d\n" % total, text)
        self.assertIn("\nengram_shm_failures_total 0\n", text)

    # ---- the tests ---------------------------------------------------------------

    def test_1_files_and_listing(self):
        r = self.expect_files([("t", 1), ("rss", 1)])
        self.assertEqual(r.shm_dir, os.path.realpath(self.shm))
        self.assertEqual(r.format_version, 1)
        with open("/proc/sys/kernel/random/boot_id") as f:
            self.assertEqual(r.boot_id, f.read().strip())
        self.assertEqual(r.hostname, socket.gethostname())
        self.assertTrue(all(f.active for f in r.files))
        self.assertEqual(len({f.nonce for f in r.files}), 2)
        with open(os.path.join(self.shm, ".engram-shm.lock")) as f:
            self.assertEqual(f.read(), "%d\n" % self.srv.proc.pid)
        # zbig did not fit the budget: served from RocksDB, no file
        self.assertEqual((self.info("zbig").resident, self.info("rss").resident), (False, True))
        self.assertEqual(list(self.local("zbig").files), [])
        self.assertEqual([(f.table, f.version) for f in self.local("t").files], [("t", 1)])
        self.assertEqual(list(self.local("nope").files), [])
        self.call("ListLocalTables", pb.ListLocalTablesRequest(table="bad/name"), None, IA,
                  'invalid table name "bad/name": use 1-128 characters of [A-Za-z0-9._-]')
        self.assert_counted(r)

    def test_2_lookups_read_the_same_bytes(self):
        rows = [0, 1, 2999, 17, 17, 1500]
        resp = self.lookup("t", rows)
        m, _ = map_file(self.path("t", 1))
        try:
            want = b"".join(m[HEADER + r * ROW_BYTES:HEADER + (r + 1) * ROW_BYTES] for r in rows)
        finally:
            m.close()
        self.assertEqual((resp.version, resp.data), (1, want))
        data = self.rows[("t", 1)]
        self.assertEqual(want, b"".join(data[r * ROW_BYTES:(r + 1) * ROW_BYTES] for r in rows))

    def test_3_one_copy_in_memory(self):
        size = RSS_ROWS * RSS_ROW_BYTES
        path = self.path("rss", 1)
        with open("/proc/%d/smaps" % self.srv.proc.pid) as f:
            smaps = f.read()
        # One mapping of the file, all of it resident (the server filled it).
        blocks = re.split(r"\n(?=[0-9a-f]+-[0-9a-f]+ )", smaps)
        mine = [b for b in blocks if b.split("\n", 1)[0].endswith(" " + path)]
        self.assertEqual(len(mine), 1, [b.split("\n", 1)[0] for b in blocks if "engram" in b])
        lo, hi = (int(x, 16) for x in mine[0].split()[0].split("-"))
        self.assertEqual(hi - lo, HEADER + size)
        rss_kb = int(re.search(r"^Rss:\s+(\d+) kB", mine[0], re.M).group(1))
        self.assertGreaterEqual(rss_kb * 1024, size)
        # No second copy: no other mapping as large with half of it resident
        # (an anonymous resident array would be one mapping of exactly the
        # table's size), and anonymous memory grew by less than half the
        # table while it was loaded (without --shm-dir it grows by the
        # table: ShmOptionsTest.test_off_by_default).
        for b in blocks:
            first = b.split("\n", 1)[0]
            lo, hi = (int(x, 16) for x in first.split()[0].split("-"))
            rss = re.search(r"^Rss:\s+(\d+) kB", b, re.M)
            if b is not mine[0] and hi - lo >= size and rss and int(rss.group(1)) * 1024 >= size // 2:
                self.fail("a second mapping holds the table's bytes: " + first)
        self.assertLess(self.anon_growth, size // 2)

    def test_4_cutovers_unlink_old_files(self):
        # a mapping of version 1 made before the cutover
        old, old_st = map_file(self.path("t", 1))
        fd = os.open(self.path("t", 1), os.O_RDONLY)
        try:
            self.ctl_ok("import-synthetic", "--table", "t", "--rows", str(T_ROWS), "--row-bytes",
                        str(ROW_BYTES), "--seed", "2")
            self.rows[("t", 2)] = synthetic(2, T_ROWS, ROW_BYTES)
            r = self.expect_files([("t", 2), ("rss", 1)])
            self.assertEqual(os.fstat(fd).st_nlink, 0)     # unlinked, never truncated
            self.assertEqual(os.fstat(fd).st_size, HEADER + T_ROWS * ROW_BYTES)
            self.assertTrue(old[HEADER:] == self.rows[("t", 1)])
            self.assertEqual(parse_header(old[:HEADER])["version"], 1)
            new = [f for f in r.files if f.table == "t"][0]
            self.assertNotEqual((new.st_dev, new.st_ino), (old_st.st_dev, old_st.st_ino))
            self.assertEqual(self.lookup("t", [5]).data, self.rows[("t", 2)][5 * 64:6 * 64])
            # retained version 1 is still served, from RocksDB
            self.assertEqual(self.lookup("t", [5], 1).data, self.rows[("t", 1)][5 * 64:6 * 64])
        finally:
            os.close(fd)
            old.close()
        # a staged import publishes nothing until it is activated
        self.rows[("t", 3)] = import_rows(self.srv, "t", 3, T_ROWS, ROW_BYTES, stage=True)
        self.expect_files([("t", 2), ("rss", 1)])
        self.call("ActivateVersion", pb.VersionRequest(table="t", version=3), pb.TableInfo)
        self.expect_files([("t", 3), ("rss", 1)])
        # a rollback to a retained version: a new file (new nonce) for it
        nonce3 = self.local("t").files[0].nonce
        self.call("ActivateVersion", pb.VersionRequest(table="t", version=2), pb.TableInfo)
        r = self.expect_files([("t", 2), ("rss", 1)])
        self.assertNotEqual(self.local("t").files[0].nonce, nonce3)
        # activating 3 dropped 1 (--keep-versions 2); a drop of 3 (retained
        # now) leaves no file of it either
        self.assertEqual([v.version for v in self.info("t").versions], [2, 3])
        self.call("DropVersion", pb.VersionRequest(table="t", version=3), pb.TableInfo)
        self.assertEqual([v.version for v in self.info("t").versions], [2])
        self.expect_files([("t", 2), ("rss", 1)])
        self.assert_counted(self.local())

    def test_5_restart_removes_stale_files(self):
        before = {(f.table, f.version): f for f in self.local().files}
        self.assertEqual(self.srv.stop(signal.SIGKILL), -signal.SIGKILL)
        # a crash leaves the files; plant more leftovers of ours and a stranger's
        self.assertEqual(self.dir_files(), sorted([".engram-shm.lock", self.name("t", 2),
                                                   self.name("rss", 1)]))
        for name in ("old@v7@s0of1.engram", ".tmp@0123456789abcdef0123456789abcdef.engram",
                     "keep.txt"):
            with open(os.path.join(self.shm, name), "wb") as f:
                f.write(b"x" * 100)
        self.srv.start()
        self.assertEqual(self.dir_files(), sorted([".engram-shm.lock", "keep.txt",
                                                   self.name("t", 2), self.name("rss", 1)]))
        os.unlink(os.path.join(self.shm, "keep.txt"))
        r = self.expect_files([("t", 2), ("rss", 1)])
        for f in r.files:
            self.assertNotEqual(f.nonce, before[(f.table, f.version)].nonce)
        self.assertIn("event=shm_stale_removed dir=%s files=4" % os.path.realpath(self.shm),
                      self.srv.log_tail(10 ** 7))
        self.assert_counted(r)
        # a clean stop unlinks every file; the next start republishes
        self.assertEqual(self.srv.stop(), 0)
        self.assertEqual(self.dir_files(), [".engram-shm.lock"])
        self.srv.start()
        self.expect_files([("t", 2), ("rss", 1)])

    def test_6_second_server_on_the_dir_exits_2(self):
        d = os.path.join(self.tmp, "other-data")
        rc, err = run_server_expect_exit(["--data", d, "--shm-dir", self.shm])
        lock = os.path.join(os.path.realpath(self.shm), ".engram-shm.lock")
        self.assertEqual((rc, err), (2, "engram-server: --shm-dir %s is in use by another "
                                        "engram-server (pid %d holds %s); each server needs a "
                                        "directory of its own\n" % (self.shm, self.srv.proc.pid,
                                                                    lock)))
        # and the running server's files are untouched
        self.expect_files([("t", 2), ("rss", 1)])

    def file_line(self, f, verdict):
        return "%s: table %s version %d shard 0 of 1: %s\n" % (f.path, f.table, f.version, verdict)

    def ok_line(self, f):
        return self.file_line(f, "OK (xxh3 %016x crc32 %08x)" % (f.xxh3, f.crc32))

    def verify_local(self, *args):
        return run_ctl(self.srv.address, "verify", "--local", *args)

    def test_7_verify_local(self):
        r = self.local()
        files = {f.table: f for f in r.files}
        self.assertEqual(sorted(files), ["rss", "t"])
        head = "server %s: 2 files in %s\n" % (self.srv.address, r.shm_dir)
        clean = (0, head + "".join(self.ok_line(f) for f in r.files) + local_summary(2, 0), "")
        self.assertEqual(self.verify_local(), clean)

        # one byte of t's rows: the file is named with the listed checksums
        # and those of what it holds now
        t = files["t"]
        rows = bytearray(self.rows[("t", t.version)])
        self.assertEqual((t.xxh3, t.crc32), (xxhash.xxh3_64_intdigest(bytes(rows)),
                                             zlib.crc32(rows)))
        rows[100] ^= 0x01
        flip_byte(t.path, HEADER + 100, 0x01)
        try:
            got = self.verify_local()
        finally:
            flip_byte(t.path, HEADER + 100, 0x01)
        bad = self.file_line(t, "MISMATCH: data xxh3: expected %016x, got %016x; data crc32: "
                             "expected %08x, got %08x" % (t.xxh3, xxhash.xxh3_64_intdigest(
                                 bytes(rows)), t.crc32, zlib.crc32(rows)))
        self.assertEqual(got, (1, head + self.ok_line(files["rss"]) + bad + local_summary(1, 1),
                               "engramctl: verify --local: 1 file differs\n"))
        self.assertEqual(self.verify_local(), clean)

        # one byte of rss's nonce: the nonce and the header's own CRC differ
        f = files["rss"]
        with open(f.path, "rb") as fh:
            h = bytearray(fh.read(HEADER))
        h[88 + 5] ^= 0x80
        flip_byte(f.path, 88 + 5, 0x80)
        try:
            got = self.verify_local()
        finally:
            flip_byte(f.path, 88 + 5, 0x80)
        bad = self.file_line(f, "MISMATCH: header nonce: expected %s, got %s; header crc32 of "
                             "bytes 0-4091: expected %08x (stored at byte 4092), got %08x"
                             % (f.nonce.hex(), bytes(h[88:104]).hex(),
                                struct.unpack_from("<I", h, 4092)[0], zlib.crc32(h[:4092])))
        self.assertEqual(got, (1, head + bad + self.ok_line(files["t"]) + local_summary(1, 1),
                               "engramctl: verify --local: 1 file differs\n"))
        self.assertEqual(self.verify_local(), clean)

        # t's file renamed away (its inode, the server's mapping, untouched
        # and put back after): unreadable, exit 2; then another file under
        # its name: not the file listed, a mismatch
        away = os.path.join(r.shm_dir, "moved-away")
        os.rename(t.path, away)
        try:
            got_missing = self.verify_local()
            shutil.copyfile(away, t.path)
            try:
                st = os.stat(t.path)
                got_other = self.verify_local()
            finally:
                os.unlink(t.path)
        finally:
            os.rename(away, t.path)
        rss_ok = self.ok_line(files["rss"])
        summary = local_summary(1, 0).replace("1 file checked: 1 OK, 0 MISMATCH, 0 unreadable",
                                              "2 files checked: 1 OK, 0 MISMATCH, 1 unreadable")
        self.assertEqual(got_missing, (2, head + rss_ok + self.file_line(
            t, "ERROR: open: No such file or directory (unpublished since it was listed?)")
            + summary, ""))
        self.assertEqual(got_other, (1, head + rss_ok + self.file_line(
            t, "MISMATCH: st_dev:st_ino: expected %d:%d, got %d:%d (not the file listed)"
            % (t.st_dev, t.st_ino, st.st_dev, st.st_ino)) + local_summary(1, 1),
            "engramctl: verify --local: 1 file differs\n"))
        self.assertEqual(self.verify_local(), clean)

        # filters
        self.assertEqual(self.verify_local("--table", "t"), (
            0, "server %s: 1 file of table t in %s\n" % (self.srv.address, r.shm_dir)
            + self.ok_line(t) + local_summary(1, 0), ""))
        self.assertEqual(self.verify_local("--version", str(f.version), "--table", "rss"), (
            0, "server %s: 1 file of table rss version %d in %s\n"
            % (self.srv.address, f.version, r.shm_dir) + self.ok_line(f) + local_summary(1, 0),
            ""))
        self.assertEqual(self.verify_local("--table", "nope"), (
            2, "server %s: 0 files of table nope in %s\n" % (self.srv.address, r.shm_dir)
            + local_summary(0, 0), "engramctl: NOT_FOUND: verify --local: no file was checked: "
            "no server on this host publishes one of table nope\n"))
        self.assertEqual(self.verify_local("--version", "99"), (
            2, "server %s: 0 files of version 99 in %s\n" % (self.srv.address, r.shm_dir)
            + local_summary(0, 0), "engramctl: NOT_FOUND: verify --local: no file was checked: "
            "no server on this host publishes one of version 99\n"))
        # usage errors: nothing is asked of the server
        usage = " (see engramctl --help)\n"
        for args, err in (
                (("--version", "v2"), "--version: 'v2' is not a non-negative integer"),
                (("--version", "-1"), "--version: '-1' is not a non-negative integer"),
                (("--version", "0"), "verify --local: --version 0 is not a table version "
                                     "(versions start at 1)"),
                (("--version", "18446744073709551616"),
                 "--version: '18446744073709551616' is out of range"),
                (("--file", "x.npy"), "verify --local: --file does not go with --local (it "
                                      "checks the files the servers publish on this host "
                                      "against their recorded checksums)")):
            self.assertEqual(self.verify_local(*args),
                             (2, "", "engramctl: INVALID_ARGUMENT: " + err + usage), args)
        self.assertEqual(run_ctl(self.srv.address, "verify", "--local=yes"),
                         (2, "", "engramctl: INVALID_ARGUMENT: verify: --local takes no value "
                                 "(got '--local=yes')" + usage))
        # "--local" as the value of --table is a table name, not the flag
        self.assertEqual(run_ctl(self.srv.address, "verify", "--table", "--local"),
                         (2, "", 'engramctl: NOT_FOUND: verify on %s: table "--local" not '
                                 'found\n' % self.srv.address))


class ShmOptionsTest(unittest.TestCase):
    """--shm-group, start-up refusals, and a server without --shm-dir."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="engram-shm-opt-")
        self.base = tmp_base()
        self.servers = []

    def tearDown(self):
        for s in self.servers:
            s.cleanup()
        shutil.rmtree(self.tmp, ignore_errors=True)
        shutil.rmtree(self.base, ignore_errors=True)

    def server(self, extra):
        s = Server(os.path.join(self.tmp, "data%d" % len(self.servers)), extra)
        self.servers.append(s)
        return s.start()

    def other_group(self):
        """A group this process may give files: another of its groups, any
        group as root, else its own."""
        mine = [g for g in os.getgroups() if g != os.getegid()]
        if mine:
            return grp.getgrgid(mine[0])
        if os.geteuid() == 0:
            for g in grp.getgrall():
                if g.gr_gid != os.getegid():
                    return g
        return grp.getgrgid(os.getegid())

    def test_group_and_mode(self):
        g = self.other_group()
        for spec in (g.gr_name, str(g.gr_gid)):
            shm = os.path.join(self.base, "g" + spec)
            s = self.server(["--shm-dir", shm, "--shm-group", spec])
            code, details, _ = s.import_rows("t", 100, 3)
            self.assertEqual((code, details), (OK, ""))
            st = os.stat(os.path.join(shm, "t@v1@s0of1.engram"))
            self.assertEqual((st.st_mode & 0o777, st.st_gid), (0o640, g.gr_gid))
            self.assertEqual(s.stop(), 0)

    def test_group_tried_on_a_fresh_file(self):
        """The start-up check of --shm-group G tries G on a new file: the
        lock file an earlier run left may carry G already, and Linux lets
        its owner "give" it the group it has, member or not, so a server
        outside G passed and then failed every file. Here a lock file of
        group 0 owned by nobody (65534), who is not in group 0, and a
        server run as nobody: exit 2 naming the group."""
        if os.geteuid() != 0:
            self.skipTest("needs root, to run the server as another user")
        nobody = 65534   # run with no supplementary groups: never in group 0
        # Everything nobody needs, readable by it: the binary (a copy, as
        # the build may sit under a mode-0700 directory), the data and DIR.
        home = tempfile.mkdtemp(prefix="engram-shm-nobody-")
        self.addCleanup(shutil.rmtree, home, True)
        os.chmod(home, 0o755)
        binary = os.path.join(home, "engram-server")
        shutil.copy(ARGS.server_bin, binary)
        shm, data = os.path.join(home, "shm"), os.path.join(home, "data")
        os.mkdir(shm)
        lock = os.path.join(shm, ".engram-shm.lock")
        with open(lock, "w") as f:
            f.write("1\n")
        for path in (shm, lock):
            os.chown(path, nobody, 0)
        os.mkdir(data)
        os.chown(data, nobody, nobody)

        def as_nobody():
            os.setgroups([])
            os.setgid(nobody)
            os.setuid(nobody)

        p = subprocess.run([binary, "--listen", "127.0.0.1:0", "--data", data, "--shm-dir", shm,
                            "--shm-group", "0"], capture_output=True, text=True, timeout=30,
                           preexec_fn=as_nobody)
        self.assertEqual((p.returncode, p.stderr), (
            2, "engram-server: --shm-group 0: cannot give files in %s that group: Operation not "
               "permitted\n" % shm))
        self.assertEqual(sorted(os.listdir(shm)), [".engram-shm.lock"])

    def test_refusals(self):
        rc, err = run_server_expect_exit(["--data", os.path.join(self.tmp, "d"), "--shm-dir",
                                          os.path.join(self.base, "x"), "--shm-group",
                                          "no-such-group-engram"])
        self.assertEqual((rc, err), (2, 'engram-server: --shm-group: unknown group '
                                        '"no-such-group-engram"\n'))
        rc, err = run_server_expect_exit(["--data", os.path.join(self.tmp, "d"), "--shm-group",
                                          "0"])
        self.assertEqual((rc, err), (2, "engram-server: --shm-group needs --shm-dir\n"))
        afile = os.path.join(self.base, "afile")
        with open(afile, "w") as f:
            f.write("x")
        rc, err = run_server_expect_exit(["--data", os.path.join(self.tmp, "d"),
                                          "--shm-dir", afile])
        self.assertEqual((rc, err), (2, "engram-server: --shm-dir %s is not a directory\n" % afile))
        under = os.path.join(afile, "sub")
        rc, err = run_server_expect_exit(["--data", os.path.join(self.tmp, "d"),
                                          "--shm-dir", under])
        self.assertEqual((rc, err), (2, "engram-server: --shm-dir %s: cannot create it: Not a "
                                        "directory\n" % under))
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "d")))

    def test_verify_local_without_shm_dir(self):
        s = self.server([])
        self.assertEqual(s.import_rows("t", 100, 3)[:2], (OK, ""))
        self.assertEqual(run_ctl(s.address, "verify", "--local"), (
            2, "server %s: publishes no files (started without --shm-dir)\n" % s.address
            + local_summary(0, 0, no_dir=1), "engramctl: NOT_FOUND: verify --local: no file was "
            "checked: no server on this host publishes one\n"))
        self.assertEqual(s.stop(), 0)

    def test_off_by_default(self):
        s = self.server([])
        self.assertEqual(s.import_rows("t", 100, 3)[:2], (OK, ""))
        code, details, reply = s.unary(A + "ListLocalTables",
                                       pb.ListLocalTablesRequest().SerializeToString())
        self.assertEqual((code, details), (OK, ""))
        r = pb.ListLocalTablesResponse.FromString(reply)
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot_id = f.read().strip()
        self.assertEqual((list(r.files), r.shm_dir, r.boot_id, r.hostname, r.format_version),
                         ([], "", boot_id, socket.gethostname(), 1))
        self.assertTrue(s.table_info("t").resident)
        # the control of ShmTest.test_3: here the resident array is
        # anonymous memory, and loading it grows that by about the table
        # (less what the process gave back meanwhile)
        size = RSS_ROWS * RSS_ROW_BYTES
        self.assertGreater(anon_growth_of_activation(s, "rss", RSS_ROWS, RSS_ROW_BYTES),
                           size - size // 8)
        self.assertEqual(s.stop(), 0)


def setUpModule():
    """abuse_test.run parsed the command line and loaded the messages."""
    global ARGS, pb
    ARGS, pb = abuse_test.ARGS, abuse_test.pb


if __name__ == "__main__":
    abuse_test.run(("--engramctl",))
