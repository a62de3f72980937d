#!/usr/bin/python3
"""A worker process reading through the client's same-node path (issue 16),
for abuse_test.py and crash_test.py: they abuse the --shm-dir files or the
server under it and must see it never die of a signal and never return a
wrong byte.

Run as a child (`python3 local_client.py --address ...`, PYTHONPATH holding
the built engram package): one engram.Client (local=auto|off|require,
version_refresh_ms given) that takes JSON commands on stdin, one a line,
and answers each with one JSON line on stdout:

  {"op": "lookup", "rows": [...]}  one lookup of table --table:
      {"status": "OK", "version": V, "right": true|false} or
      {"status": CODE, "message": "..."}
  {"op": "prefetch"}               one raw prefetch of --model (fixed tokens)
  {"op": "start"}                  a loop on a thread of its own: a lookup of
      64 random rows plus the first and the last, then a prefetch, again and
      again (a reopen or stop ends it)
  {"op": "last"}                   {"last": the loop's latest lookup outcome}
  {"op": "stop"}                   ends the loop; its summary:
      {"lookups": n, "prefetches": n, "wrong": [...],
       "lookup_seq": [[outcome, first seen (time.monotonic()), count], ...],
       "prefetch_seq": [...]}
      where an outcome is "OK vV" (lookups), "OK" (prefetches) or
      "CODE: message", and a new entry starts whenever it changes
  {"op": "reopen", "local": MODE}  closes the client and opens a fresh one
  {"op": "now"}                    {"now": time.monotonic()} (one clock for
      every process on the host)
  {"op": "faulthandler"}           faulthandler.enable(): Python's own SIGBUS
      handler, installed after the client's

Every row a lookup returns is compared here with the synthetic rule
(synthetic.py) of the version the lookup reports: seed --seed-base + V.
A prefetch's rows are compared with the rule for the row ids the model's
own hashing gives (Model.hash), each layer table imported by
`engramctl import-synthetic --manifest M --seed S` (seed layer_seed(S,
layer), row type the manifest's). A wrong row is counted and described,
never raised: the test asserts there is none. EOF on stdin: exit 0.

The parent side is LocalClient below: it starts the child, sends commands,
waits for each answer with a timeout (a hang is a failure too) and, at the
end, requires exit status 0: a negative one (a signal, SIGBUS above all)
fails with the signal's name. It signals only the child it started.
"""
import argparse
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))


# ---- the child ----------------------------------------------------------------

def child_main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--address", required=True)
    ap.add_argument("--local", required=True)
    ap.add_argument("--refresh-ms", type=int, required=True)
    ap.add_argument("--table", required=True)
    ap.add_argument("--rows", type=int, required=True)
    ap.add_argument("--row-bytes", type=int, required=True)
    ap.add_argument("--seed-base", type=int, required=True)
    ap.add_argument("--model")
    ap.add_argument("--model-seed", type=int)
    a = ap.parse_args()

    import numpy as np
    import engram
    from synthetic import layer_seed, synthetic_row_typed, synthetic_rows

    rng = np.random.default_rng(os.getpid())
    tables = {}
    out_lock = threading.Lock()

    def want(version):
        if version not in tables:
            if len(tables) > 8:
                tables.clear()
            tables[version] = np.frombuffer(
                synthetic_rows(a.seed_base + version, a.rows, a.row_bytes),
                dtype=np.uint8).reshape(a.rows, a.row_bytes)
        return tables[version]

    state = {"client": None, "model": None, "mode": a.local}
    tokens = np.array([[5, 17, 300, 639, 0, 42, 42, 7], [1, 2, 3, 4, 5, 6, 7, 8]], dtype=np.int64)
    expect = {}

    def open_client(mode):
        c = engram.Client(a.address, local=mode, version_refresh_ms=a.refresh_ms)
        m = None
        if a.model:
            m = c.model(a.model)
            if "raw" not in expect:
                ids = m.hash(tokens)              # [layers, B, T, heads]
                rows = np.empty(ids.shape + (m.row_bytes,), dtype=np.uint8)
                for li, lid in enumerate(m.layer_ids):
                    seed = layer_seed(a.model_seed, lid)
                    for idx in np.ndindex(ids.shape[1:]):
                        rows[(li,) + idx] = np.frombuffer(synthetic_row_typed(
                            seed, int(ids[(li,) + idx]), m.row_bytes, m.dtype), dtype=np.uint8)
                expect["raw"] = rows
        state["client"], state["model"] = c, m

    def close_client():
        if state["model"] is not None:
            state["model"].close()
        if state["client"] is not None:
            state["client"].close()
        state["client"] = state["model"] = None

    def lookup(ids):
        ids = np.asarray(ids, dtype=np.uint64)
        out = np.empty((len(ids), a.row_bytes), dtype=np.uint8)
        try:
            rb, version = state["client"]._c.lookup_into(a.table, ids, out, a.row_bytes)
        except engram.EngramError as e:
            return {"status": e.code, "message": e.message}, None
        right = rb == a.row_bytes and np.array_equal(out, want(version)[ids.astype(np.int64)])
        wrong = None
        if not right:
            bad = [int(r) for r, ok in zip(ids, (out == want(version)[ids.astype(np.int64)])
                                          .all(axis=1)) if not ok]
            wrong = "lookup of version %d (row bytes %d): rows %s are not its rows" % (
                version, rb, bad[:8])
        return {"status": "OK", "version": int(version), "right": bool(right)}, wrong

    def prefetch():
        try:
            with state["model"].prefetch(tokens) as p:
                got = p.wait()
        except engram.EngramError as e:
            return {"status": e.code, "message": e.message}, None
        right = np.array_equal(got, expect["raw"])
        return {"status": "OK", "right": bool(right)}, (
            None if right else "prefetch: rows differ from the synthetic rule at %d places"
            % int((got != expect["raw"]).any(axis=-1).sum()))

    loop = {"thread": None, "stop": None, "summary": None}

    def run_loop(stop, summary):
        def note(seq, key):
            if seq and seq[-1][0] == key:
                seq[-1][2] += 1
            else:
                seq.append([key, time.monotonic(), 1])

        while not stop.is_set():
            ids = [0, a.rows - 1] + [int(x) for x in rng.integers(0, a.rows, 64)]
            r, wrong = lookup(ids)
            summary["lookups"] += 1
            if wrong:
                summary["wrong"].append(wrong)
            note(summary["lookup_seq"], "OK v%d" % r["version"] if r["status"] == "OK"
                 else "%s: %s" % (r["status"], r["message"]))
            if state["model"] is not None:
                r, wrong = prefetch()
                summary["prefetches"] += 1
                if wrong:
                    summary["wrong"].append(wrong)
                note(summary["prefetch_seq"], "OK" if r["status"] == "OK"
                     else "%s: %s" % (r["status"], r["message"]))
            time.sleep(0.002)

    def stop_loop():
        if loop["thread"] is None:
            return None
        loop["stop"].set()
        loop["thread"].join()
        loop["thread"] = None
        return loop["summary"]

    open_client(a.local)
    reply({"ready": True, "pid": os.getpid()}, out_lock)
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "lookup":
            r, wrong = lookup(cmd["rows"])
            if wrong:
                r["wrong"] = wrong
        elif op == "prefetch":
            r, wrong = prefetch()
            if wrong:
                r["wrong"] = wrong
        elif op == "start":
            assert loop["thread"] is None, "the loop is running"
            loop["stop"] = threading.Event()
            loop["summary"] = {"lookups": 0, "prefetches": 0, "wrong": [], "lookup_seq": [],
                               "prefetch_seq": []}
            loop["thread"] = threading.Thread(target=run_loop,
                                              args=(loop["stop"], loop["summary"]))
            loop["thread"].start()
            r = {"started": True}
        elif op == "last":
            seq = loop["summary"]["lookup_seq"] if loop["summary"] else []
            r = {"last": seq[-1][0] if seq else None}
        elif op == "stop":
            r = stop_loop()
        elif op == "reopen":
            stop_loop()
            close_client()
            open_client(cmd["local"])
            r = {"reopened": cmd["local"]}
        elif op == "now":
            r = {"now": time.monotonic()}
        elif op == "faulthandler":
            import faulthandler
            faulthandler.enable()
            r = {"faulthandler": True}
        else:
            r = {"error": "unknown op %r" % op}
        reply(r, out_lock)
    stop_loop()
    close_client()


def reply(obj, lock):
    with lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


# ---- the parent side ------------------------------------------------------------

class LocalClient:
    """One child process of this file (the parent's side): only its own pid
    is ever signalled, and only when it does not answer in time."""

    def __init__(self, python_dir, address, local, refresh_ms, table, rows, row_bytes, seed_base,
                 model=None, model_seed=None, timeout=60):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([python_dir, HERE])
        args = ["/usr/bin/python3", os.path.abspath(__file__), "--address", address,
                "--local", local, "--refresh-ms", str(refresh_ms), "--table", table,
                "--rows", str(rows), "--row-bytes", str(row_bytes), "--seed-base",
                str(seed_base)]
        if model:
            args += ["--model", model, "--model-seed", str(model_seed)]
        self.local = local
        self.err = tempfile.TemporaryFile(mode="w+")   # never a pipe that could fill
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.err, env=env, text=True, bufsize=1)
        self.pid = self.proc.pid
        self.buf = ""
        first = self.read(timeout)
        if first.get("pid") != self.pid:
            raise AssertionError("local client did not start: %s" % first)

    def read(self, timeout):
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while "\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise AssertionError("local client (%s) gave no answer in %d s; stderr: %s"
                                     % (self.local, timeout, self.stderr()))
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536).decode()
                if not chunk:
                    rc = self.proc.wait(30)
                    raise AssertionError("local client (%s) ended (%s); stderr: %s"
                                         % (self.local, describe_rc(rc), self.stderr()))
                self.buf += chunk
        line, self.buf = self.buf.split("\n", 1)
        return json.loads(line)

    def cmd(self, op, timeout=60, **kw):
        self.proc.stdin.write(json.dumps(dict(kw, op=op)) + "\n")
        self.proc.stdin.flush()
        return self.read(timeout)

    def lookup(self, rows):
        return self.cmd("lookup", rows=list(rows))

    def wait_loop(self, outcome, timeout=10):
        """Until the loop's latest lookup outcome is `outcome` (e.g. "OK
        v3"); False if it is not within timeout."""
        deadline = time.monotonic() + timeout
        while self.cmd("last")["last"] != outcome:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def maps(self, directory):
        """(inode, path) of every mapping of a file under `directory`, from
        /proc/PID/maps ("(deleted)" kept on a path whose name is gone)."""
        d = os.path.realpath(directory) + "/"
        found = set()
        with open("/proc/%d/maps" % self.pid) as f:
            for line in f:
                parts = line.split(None, 5)
                if len(parts) == 6 and parts[5].startswith(d):
                    found.add((int(parts[4]), parts[5].rstrip("\n")))
        return sorted(found)

    def stderr(self):
        self.err.seek(0)
        return self.err.read()[-3000:]

    def close(self, timeout=60):
        """Closes stdin; the child must exit 0 (not die of a signal)."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("local client (%s) did not exit" % self.local)
        self.proc.stdout.close()
        if rc != 0:
            raise AssertionError("local client (%s) ended (%s); stderr: %s"
                                 % (self.local, describe_rc(rc), self.stderr()))
        self.err.close()

    def kill(self):
        """Ends the child (a failed test's cleanup); no-op once it exited."""
        if self.proc.poll() is None and self.proc.pid > 0:
            self.proc.kill()
            self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self.err):
            try:
                f.close()
            except (OSError, ValueError):
                pass


def describe_rc(rc):
    if rc is not None and rc < 0:
        return "killed by %s" % signal.Signals(-rc).name
    return "exit status %s" % rc


if __name__ == "__main__":
    child_main()
