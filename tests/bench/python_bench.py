#!/usr/bin/env python3
"""python_bench.py: the Python client (engram package) against the C client
(libengram's own benchmarks), same server, same process tree, same run.

    python3 tests/bench/python_bench.py --server HOST:PORT --table demo.l1 \
        --model demo --tokens tests/data/workload/tokens.bin \
        --c-lookup-bench BUILD/tests/bench/engram-bench \
        --c-prefetch-bench BUILD/tests/bench/engram-prefetch-bench \
        [--seconds S (4)] [--warmup S (1)] [--rounds R (3)] \
        [--inflight K (8)] [--prefetch-inflight K (4)] [--leak-calls N (100000)]

(run_python_bench.sh starts the server, imports the demo model and runs
this.) What is timed, like for like with the C benchmarks' loops:

  lookup   4096 uniform random rows per call into a preallocated numpy
           array: client.lookup (1 in flight) against `engram-bench
           --inflight 1`, and lookup_async with K futures in flight, the
           oldest waited for, against `engram-bench --inflight K`. Both
           ask for the same rows: engram-bench's splitmix64 stream (same
           --rng-seed), its first 1024 calls drawn up front and cycled by
           Python (the C bench draws per call, a few microseconds).
  prefetch the decode step of engram-prefetch-bench (B = 256 sequences,
           T = 1, history = the max_ngram - 1 tokens before, every layer,
           the same workload offsets, step after step; the batches of the
           first 8192 steps built up front) into a preallocated output:
           model.prefetch(...).wait() with hashing on the caller's thread
           (1 in flight), and K in flight with hash_async, against that
           bench's `decode` and `decode_inflight` figures (run with
           --no-gather --prefill-steps 2 where it has them: this compares
           decode only).

Each round runs every C and Python measurement once, alternating which
goes first, so drift on this shared machine hits both; the figures are the
medians over rounds and ratio = Python median / C median.

Then the Python layer's own cost per call, robust to the machine's noise:
Client.lookup and Model.prefetch/wait/close against the bare extension
calls they make, alternating call by call in one loop (medians). Untimed:
a prefetch step is checked against lookups of Model.hash's rows, and the
heap allocated per call is measured with tracemalloc (16 and 4096 rows: it
must not grow with the rows, no per-row Python objects).
Last, the leak check: --leak-calls calls each of lookup (16 rows),
lookup_async and a one-sequence prefetch; VmRSS and tracemalloc's traced
bytes are read after the first 10% of the calls (warm-up) and at the end.

Output: a human-readable block and one `bench: key=value` line per
measurement. Exit status: 0 ok; 1 a leak (RSS up more than --leak-rss-kb,
default 4096, or traced heap up more than --leak-heap-kb, default 100) or a
mismatch; 2 usage or RPC error.
"""
import argparse
import gc
import statistics
import subprocess
import sys
import time
import tracemalloc

import numpy as np

import engram

POOL = 1024           # pre-drawn lookup calls, cycled
RNG_SEED = 1          # engram-bench --rng-seed: both sides ask for the same rows


def rss_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def parse_bench(text):
    """The `bench: key=value ...` lines of a C benchmark's output."""
    out = []
    for line in text.splitlines():
        if line.startswith("bench: "):
            out.append(dict(kv.split("=", 1) for kv in line[7:].split()))
    return out


def run_c(cmd):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        sys.stderr.write(r.stdout + r.stderr)
        raise SystemExit("python_bench: %s exited with %d" % (cmd[0], r.returncode))
    return parse_bench(r.stdout)


# ---- lookups ------------------------------------------------------------------

def bench_rows(seed, calls, n, table_rows):
    """The row ids engram-bench's first `calls` calls ask for: splitmix64
    of seed + 1, seed + 2, ..., mapped to [0, table_rows) by the high word
    of a 128-bit product (done here in 32-bit halves). [calls, n] uint64."""
    u = np.uint64
    with np.errstate(over="ignore"):
        z = np.arange(1, calls * n + 1, dtype=u) + u(seed) + u(0x9E3779B97F4A7C15)
        z = (z ^ (z >> u(30))) * u(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> u(27))) * u(0x94D049BB133111EB)
        z ^= z >> u(31)
        r = u(table_rows)           # < 2^32, so no partial product overflows
        hi = (z >> u(32)) * r
        lo = (z & u(0xFFFFFFFF)) * r
        rows = (hi + (lo >> u(32))) >> u(32)
    return rows.reshape(calls, n)


def c_lookup(a, k):
    got = run_c([a.c_lookup_bench, "--server", a.server, "--table", a.table,
                 "--rows-per-call", str(a.rows), "--inflight", str(k),
                 "--seconds", str(a.seconds), "--warmup", str(a.warmup),
                 "--rng-seed", str(RNG_SEED)])
    return float(got[0]["rows_per_s"])


# The loops below keep their own Python to a minimum (views made up front,
# locals for everything): at one call in flight each line of it lands on
# the latency path, on caches the reply just evicted, while the C benches'
# own per-call work (drawing ids, copying a batch) is a microsecond.

def py_lookup_sync(a, client, pool, out):
    """The C bench's loop with one call in flight: a call, then the clock."""
    views = list(pool)
    clock = time.perf_counter
    t_start = clock() + a.warmup
    t_end = t_start + a.seconds
    calls, i = 0, 0
    lookup, table = client.lookup, a.table
    while True:
        lookup(table, views[i], out)
        i = (i + 1) % POOL
        now = clock()
        if now >= t_end:
            break
        if now >= t_start:
            calls += 1
    return calls * a.rows / (now - t_start)


def py_lookup_async(a, client, pool, outs):
    """K futures in flight; the oldest is waited for, then its slot reused."""
    k = len(outs)
    views = list(pool)
    clock = time.perf_counter
    start, table = client.lookup_async, a.table
    futs = [start(table, views[j], outs[j]) for j in range(k)]
    t_start = clock() + a.warmup
    t_end = t_start + a.seconds
    calls, i, n = 0, 0, k
    while True:
        futs[i].result()
        now = clock()
        if now >= t_end:
            break
        if now >= t_start:
            calls += 1
        futs[i] = start(table, views[n % POOL], outs[i])
        n += 1
        i = (i + 1) % k
    for f in futs:
        f.result()
    return calls * a.rows / (now - t_start)


# ---- prefetch -------------------------------------------------------------------

def c_prefetch(a):
    got = run_c([a.c_prefetch_bench, "--server", a.server, "--model", a.model,
                 "--tokens", a.tokens, "--seconds", str(a.seconds), "--warmup",
                 str(a.warmup), "--inflight", str(a.prefetch_inflight)] + a.c_prefetch_extra)
    by = {d["scenario"]: d for d in got}
    return float(by["decode"]["steps_per_s"]), float(by["decode_inflight"]["steps_per_s"])


class DecodeSteps:
    """engram-prefetch-bench's decode batches: B sequences at evenly spaced
    offsets of the workload, T = 1, the hist tokens before as history;
    step s moves every offset on by s (mod the span). The first RING steps
    are built up front (step s >= RING reuses step s mod RING), as the
    lookup row ids are: the client is timed, not numpy's fancy indexing."""

    RING = 8192

    def __init__(self, tok, B, hist):
        self.B, self.hist = B, hist
        span = (len(tok) - hist) // B
        s = np.arange(self.RING, dtype=np.int64) % span
        starts = hist + np.arange(B, dtype=np.int64)[None, :] * span + s[:, None]
        self.tokens = np.ascontiguousarray(tok[starts][:, :, None])               # [R, B, 1]
        self.history = np.ascontiguousarray(
            tok[starts[:, :, None] + np.arange(-hist, 0, dtype=np.int64)])      # [R, B, hist]
        self.tok_views, self.hist_views = list(self.tokens), list(self.history)

    def step(self, s):
        s %= self.RING
        return self.tok_views[s], self.hist_views[s]


def py_prefetch(a, model, steps, outs, hash_async):
    """1 (hashing on this thread) or K (hash_async) prefetches in flight."""
    k = len(outs)
    pf, clock = model.prefetch, time.perf_counter
    toks, hists, ring = steps.tok_views, steps.hist_views, steps.RING
    ps = [pf(toks[j], history=hists[j], out=outs[j], hash_async=hash_async)
          for j in range(k)]
    t_start = clock() + a.warmup
    t_end = t_start + a.seconds
    done, i, s = 0, 0, k
    while True:
        p = ps[i]
        p.wait()
        p.close()
        now = clock()
        if now >= t_end:
            break
        if now >= t_start:
            done += 1
        r = s % ring
        ps[i] = pf(toks[r], history=hists[r], out=outs[i], hash_async=hash_async)
        s += 1
        i = (i + 1) % k
    for j, p in enumerate(ps):
        if j != i:
            p.wait()
            p.close()
    return done / (now - t_start)


def check_prefetch(client, model, steps, out):
    """One decode step's rows equal lookups of the rows Model.hash names."""
    tok, hist = steps.step(12345)
    tables = client.manifest(model.name)["tables"]
    with model.prefetch(tok, history=hist, out=out) as p:
        got = p.wait()
    for i, lid in enumerate(model.layer_ids):
        ids = model.hash(tok, history=hist, layer=lid)
        want = client.lookup(tables[str(lid)], ids)
        if not np.array_equal(got[i].reshape(-1, model.row_bytes), want):
            return False
    return True


# ---- the Python layer's own cost -------------------------------------------------

def layer_overhead(client, model, table, pool, out, steps, pout, calls=2000):
    """Per call, the engram package's Python layer (Client.lookup,
    Model.prefetch + Prefetch.wait + close) against the bare extension
    calls it makes (the private _c / _m handles: argument parsing, buffers
    and the GIL, then libengram), alternating call by call in one loop so
    that both see the same machine. Medians in microseconds:
    {kind: (package, bare)}. Far less noisy than the rows/s comparison."""
    pc = time.perf_counter
    rb = out.shape[1]
    lays = list(model.layer_ids)
    got = {"lookup": ([], []), "decode": ([], [])}
    for i in range(2 * calls):
        ids = pool[i % POOL]
        t0 = pc()
        if i & 1:
            client.lookup(table, ids, out)
        else:
            client._c.lookup_into(table, ids, out, rb)
        got["lookup"][i & 1 ^ 1].append(pc() - t0)
    for i in range(2 * calls):
        tok, hist = steps.step(i)
        t0 = pc()
        if i & 1:
            p = model.prefetch(tok, history=hist, out=pout)
            p.wait()
            p.close()
        else:
            h = model._m.prefetch_start(lays, tok, tok.shape[0], 1, hist, None, 0, pout)
            h.wait(-1)
            h.free()
        got["decode"][i & 1 ^ 1].append(pc() - t0)
    return {k: (statistics.median(v[0]) * 1e6, statistics.median(v[1]) * 1e6)
            for k, v in got.items()}


# ---- allocation and leaks ------------------------------------------------------

def heap_per_call(client, table, rows_per_call, table_rows, calls=200):
    """Peak traced heap bytes of one lookup into a preallocated out."""
    ids = np.random.default_rng(5).integers(0, table_rows, rows_per_call, dtype=np.uint64)
    out = np.empty((rows_per_call, client.table(table).row_bytes), np.uint8)
    for _ in range(10):
        client.lookup(table, ids, out)
    tracemalloc.start()
    peak = 0
    for _ in range(calls):
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        client.lookup(table, ids, out)
        peak = max(peak, tracemalloc.get_traced_memory()[1] - base)
    tracemalloc.stop()
    return peak


def leak_check(name, n, call):
    """Calls call(i) n times; RSS and traced heap after 10% and at the end."""
    tracemalloc.start()
    warm = n // 10
    t0 = time.perf_counter()
    for i in range(warm):
        call(i)
    gc.collect()
    rss0, heap0 = rss_kb(), tracemalloc.get_traced_memory()[0]
    snap0 = tracemalloc.take_snapshot()
    for i in range(warm, n):
        call(i)
    gc.collect()
    rss1, heap1 = rss_kb(), tracemalloc.get_traced_memory()[0]
    grew = tracemalloc.take_snapshot().compare_to(snap0, "lineno")[:3]
    tracemalloc.stop()
    secs = time.perf_counter() - t0
    return {"name": name, "calls": n, "rss0_kb": rss0, "rss1_kb": rss1,
            "heap0": heap0, "heap1": heap1, "secs": secs, "top": grew}


# ---- main -----------------------------------------------------------------------

def args_parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", required=True)
    p.add_argument("--table", default="demo.l1")
    p.add_argument("--model", default="demo")
    p.add_argument("--tokens", required=True)
    p.add_argument("--c-lookup-bench", required=True)
    p.add_argument("--c-prefetch-bench", required=True)
    p.add_argument("--seconds", type=float, default=4)
    p.add_argument("--warmup", type=float, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rows", type=int, default=4096)
    p.add_argument("--inflight", type=int, default=8)
    p.add_argument("--prefetch-inflight", type=int, default=4)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--leak-calls", type=int, default=100000)
    p.add_argument("--leak-rss-kb", type=int, default=4096)
    p.add_argument("--leak-heap-kb", type=int, default=100)
    p.add_argument("--skip", default="",
                   help="comma list of lookup,prefetch,overhead,leak to skip")
    a = p.parse_args(argv)
    # The C prefetch bench also times prefill and a memcpy gather from a
    # RAM copy of the tables (2.6 GB for demo), which this comparison does
    # not use: --no-gather skips the copy and --prefill-steps 2 makes the
    # prefill runs two chunks long, so its decode runs sit closer in time
    # to Python's (when the binary has those options).
    helptext = subprocess.run([a.c_prefetch_bench, "--help"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True).stdout
    a.c_prefetch_extra = ((["--no-gather"] if "--no-gather" in helptext else [])
                          + (["--prefill-steps", "2"] if "--prefill-steps" in helptext else []))
    return a


def median_ratio(py, c):
    mp, mc = statistics.median(py), statistics.median(c)
    return mp, mc, mp / mc


def main(argv):
    a = args_parse(argv)
    skip = set(filter(None, a.skip.split(",")))
    client = engram.Client(a.server)
    info = client.table(a.table)
    model = client.model(a.model)
    tok = np.fromfile(a.tokens, dtype="<i4").astype(np.int64)
    steps = DecodeSteps(tok, a.batch, model.max_ngram - 1)
    print("python_bench: server %s, table %s (%d rows x %d B), model %s (layers %s, %d "
          "columns), %d workload tokens; engram %s, numpy %s, Python %s"
          % (a.server, a.table, info.rows, info.row_bytes, a.model, list(model.layer_ids),
             model.heads, len(tok), engram.__version__, np.__version__,
             sys.version.split()[0]))
    print("  %d rounds; each: every measurement %.1f s after %.1f s warm-up, C and Python "
          "alternating first" % (a.rounds, a.seconds, a.warmup))

    if info.rows >= 1 << 32:
        raise SystemExit("python_bench: tables of 2^32 rows or more are not supported")
    pool = bench_rows(RNG_SEED, POOL, a.rows, info.rows)
    out1 = np.empty((a.rows, info.row_bytes), np.uint8)
    outk = [np.empty((a.rows, info.row_bytes), np.uint8) for _ in range(a.inflight)]
    pshape = (len(model.layer_ids), a.batch, 1, model.heads, model.row_bytes)
    pout1 = [np.empty(pshape, np.uint8)]
    poutk = [np.empty(pshape, np.uint8) for _ in range(a.prefetch_inflight)]
    res = {key: ([], []) for key in ("lookup1", "lookupk", "decode1", "decodek")}
    rc = 0

    for rnd in range(a.rounds):
        first_c = rnd % 2 == 0
        jobs = []
        if "lookup" not in skip:
            jobs.append(("lookup1", lambda: c_lookup(a, 1),
                         lambda: py_lookup_sync(a, client, pool, out1)))
            jobs.append(("lookupk", lambda: c_lookup(a, a.inflight),
                         lambda: py_lookup_async(a, client, pool, outk)))
        if "prefetch" not in skip:
            # one C invocation times both decode shapes (and prefill)
            jobs.append((("decode1", "decodek"), lambda: c_prefetch(a),
                         lambda: (py_prefetch(a, model, steps, pout1, False),
                                  py_prefetch(a, model, steps, poutk, True))))
        for key, cfn, pyfn in jobs:
            order = [(1, cfn), (0, pyfn)] if first_c else [(0, pyfn), (1, cfn)]
            for side, fn in order:
                v = fn()
                if isinstance(key, tuple):
                    for kk, vv in zip(key, v):
                        res[kk][side].append(vv)
                else:
                    res[key][side].append(v)
        print("  round %d done (%s first)" % (rnd + 1, "C" if first_c else "Python"))
        sys.stdout.flush()

    labels = {
        "lookup1": ("lookup 4096 rows, 1 in flight", "rows/s"),
        "lookupk": ("lookup 4096 rows, %d in flight" % a.inflight, "rows/s"),
        "decode1": ("prefetch decode B=%d T=1, 1 in flight" % a.batch, "steps/s"),
        "decodek": ("prefetch decode B=%d T=1, %d in flight (hash_async)"
                    % (a.batch, a.prefetch_inflight), "steps/s"),
    }
    print()
    for key, (py, c) in res.items():
        if not py:
            continue
        mp, mc, ratio = median_ratio(py, c)
        what, unit = labels[key]
        print("  %-50s Python %10.1f  C %10.1f %s  ratio %.3f" % (what, mp, mc, unit, ratio))
        print("    per round: Python %s; C %s" % (" ".join("%.1f" % v for v in py),
                                                  " ".join("%.1f" % v for v in c)))
        print("bench: python_vs_c=%s unit=%s python=%.1f c=%.1f ratio=%.4f rounds=%d"
              % (key, unit.replace("/", "_per_"), mp, mc, ratio, len(py)))

    if "overhead" not in skip:
        ov = layer_overhead(client, model, a.table, pool, out1, steps, pout1[0])
        for kind, (pkg, bare) in ov.items():
            what = ("lookup of %d rows" % a.rows if kind == "lookup"
                    else "prefetch of a decode step (B=%d)" % a.batch)
            print("  Python layer, %s: %.1f us a call, the bare extension call %.1f us: "
                  "%+.1f us (%+.1f%%), medians of alternating calls"
                  % (what, pkg, bare, pkg - bare, 100.0 * (pkg - bare) / bare))
            print("bench: layer_overhead=%s package_us=%.1f bare_us=%.1f" % (kind, pkg, bare))

    if "prefetch" not in skip:
        ok = check_prefetch(client, model, steps, pout1[0])
        print("  check: a decode step's prefetched rows %s the lookups of Model.hash's rows"
              % ("equal" if ok else "DIFFER FROM"))
        rc = rc or (0 if ok else 1)

    if "leak" not in skip:
        h16 = heap_per_call(client, a.table, 16, info.rows)
        h4k = heap_per_call(client, a.table, 4096, info.rows)
        print("  heap per lookup into a preallocated out (tracemalloc peak): 16 rows %d B, "
              "4096 rows %d B" % (h16, h4k))
        print("bench: heap_per_call_16=%d heap_per_call_4096=%d" % (h16, h4k))
        small = np.random.default_rng(2).integers(0, info.rows, (POOL, 16), dtype=np.uint64)
        sout = np.empty((16, info.row_bytes), np.uint8)
        one = steps.step(0)
        ptok, phist = one[0][:1], one[1][:1]
        psout = np.empty((len(model.layer_ids), 1, 1, model.heads, model.row_bytes), np.uint8)

        def do_lookup(i):
            client.lookup(a.table, small[i % POOL], sout)

        def do_async(i):
            client.lookup_async(a.table, small[i % POOL], sout).result()

        def do_prefetch(i):
            with model.prefetch(ptok, history=phist, out=psout) as p:
                p.wait()

        for name, fn in (("lookup", do_lookup), ("lookup_async", do_async),
                         ("prefetch", do_prefetch)):
            r = leak_check(name, a.leak_calls, fn)
            drss, dheap = r["rss1_kb"] - r["rss0_kb"], r["heap1"] - r["heap0"]
            bad = drss > a.leak_rss_kb or dheap > a.leak_heap_kb * 1024
            print("  leak %-13s %d calls in %.1f s: RSS %d -> %d KB (%+d KB), traced heap "
                  "%d -> %d B (%+d B) after the first %d: %s"
                  % (name, r["calls"], r["secs"], r["rss0_kb"], r["rss1_kb"], drss,
                     r["heap0"], r["heap1"], dheap, r["calls"] // 10,
                     "LEAK" if bad else "flat"))
            if bad:
                for st in r["top"]:
                    print("    %s" % st)
            print("bench: leak=%s calls=%d rss0_kb=%d rss1_kb=%d heap0=%d heap1=%d ok=%d"
                  % (name, r["calls"], r["rss0_kb"], r["rss1_kb"], r["heap0"], r["heap1"],
                     not bad))
            rc = rc or (1 if bad else 0)

    model.close()
    client.close()
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
