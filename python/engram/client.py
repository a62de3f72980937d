"""engram.Client: lookups, tables, imports and admin calls over libengram.

A Client wraps one engram_client (a single server or, given any address of
a cluster, the whole cluster, as the C client does). It is thread-safe: any
number of threads may call it at once, and every call that blocks releases
the GIL. Rows land once, straight into the output: a numpy array the call
allocates, or the caller's numpy array or CPU torch tensor.

Asynchronous lookups (lookup_async) are libengram's asynchronous lookups;
one waiter thread per client (started on first use) waits for them in
order and completes their futures, so callbacks run on that thread.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import os
import sys
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np

from . import _arrays, _engram, errors

_engram._set_error_classes(errors.BY_CODE, errors.EngramError)

# How often the waiter thread looks for cancelled futures while a lookup
# is outstanding: the wait returns at once when the lookup finishes, so this
# bounds only how late a cancel is noticed when nobody else frees it.
_WAIT_SLICE_MS = 50
# Rows per import write: a few MB per call, which the library splits into
# messages.
_IMPORT_CHUNK_BYTES = 8 << 20
_U64 = np.dtype(np.uint64)
_U8 = np.dtype(np.uint8)


@dataclasses.dataclass(frozen=True)
class TableVersion:
    version: int
    state: str          # "active", "retained" or "staged"
    checksum: int
    local_rows: int
    xxh3: int


@dataclasses.dataclass(frozen=True)
class Table:
    """A table as the server describes it (engram_table_info)."""
    name: str
    rows: int
    row_bytes: int
    dim: int
    dtype: str
    version: int
    checksum: int
    xxh3: int
    resident: bool
    created_unix_ms: int
    local_rows: int
    shard_index: int
    shard_count: int
    versions: Tuple[TableVersion, ...]

    @classmethod
    def _from(cls, d: Dict[str, Any]) -> "Table":
        d = dict(d)
        d["versions"] = tuple(TableVersion(**v) for v in d["versions"])
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class VerifyResult:
    """What Admin.Verify found on the server (engram_verify_result)."""
    table: str
    version: int
    rows_checked: int
    local_rows: int
    rows: int
    row_bytes: int
    dim: int
    dtype: str
    shard_index: int
    shard_count: int
    xxh3: int
    crc32: int
    stored_xxh3: int
    stored_crc32: int
    resident: bool
    match: bool
    problem: str


@dataclasses.dataclass(frozen=True)
class ManifestInfo:
    name: str
    version: int
    n_layers: int
    dim: int
    row_bytes: int
    dtype: str
    n_missing: int
    missing_tables: str
    updated_unix_ms: int


class LookupFuture(concurrent.futures.Future):
    """A lookup in flight: a concurrent.futures.Future whose result is the
    output array. cancel() cancels the RPC; once it returns True the output
    is no longer written."""

    def __init__(self, handle: Any, out: Any) -> None:
        super().__init__()
        self._handle = handle
        self._out = out

    def cancel(self) -> bool:
        if self.done():
            return False
        # Free first (it waits out the waiter's current wait slice, then
        # cancels the RPC), so no callback of the cancel sees `out` written
        # to afterwards.
        self._handle.free()
        return super().cancel()


class _Waiter:
    """One thread completing a client's lookup futures, oldest first."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._queue: "collections.deque[LookupFuture]" = collections.deque()
        self._thread: Optional[threading.Thread] = None
        self._stop = False

    def add(self, fut: LookupFuture) -> None:
        with self._cv:
            if self._stop:
                raise ValueError("the client is closed")
            self._queue.append(fut)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="engram-lookup-waiter",
                                                daemon=True)
                self._thread.start()
            self._cv.notify()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._stop:
                    self._cv.wait()
                if not self._queue:
                    return
                fut = self._queue[0]
            self._complete(fut)
            with self._cv:
                self._queue.popleft()

    @staticmethod
    def _complete(fut: LookupFuture) -> None:
        while not fut.cancelled():
            try:
                got = fut._handle.wait(_WAIT_SLICE_MS)
            except ValueError:      # freed by cancel()
                return
            except errors.EngramError as e:
                fut._handle.free()
                if not fut.cancelled():
                    _set(fut.set_exception, e)
                return
            if got is not None:
                fut._handle.free()
                if not fut.cancelled():
                    _set(fut.set_result, fut._out)
                return

    def close(self) -> None:
        """Cancels what is queued and stops the thread."""
        with self._cv:
            self._stop = True
            pending = list(self._queue)
            self._cv.notify()
        for fut in pending:
            fut.cancel()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()


def _set(setter: Callable[[Any], None], value: Any) -> None:
    try:
        setter(value)
    except concurrent.futures.InvalidStateError:   # cancelled meanwhile
        pass


class Client:
    """A client of one engram-server or cluster.

    ``Client("host:7070")``; keyword options follow engram_client_options
    (deadline_ms, max_message_bytes, version_refresh_ms, attempt_timeout_ms,
    hedge_percentile, hedge_min_ms, eject_after_failures, eject_backoff_ms,
    prefetch_chunk_rows, max_prefetch_tokens), TLS files (tls_ca, tls_cert,
    tls_key, tls_server_name), the admin bearer token (token_file: a
    file holding it) and the same-node path (local: "auto", the default,
    "off" or "require"; see engram_client_options.local). A context
    manager; close() closes it and the models it opened."""

    _LOCAL = {"auto": 0, "off": 1, "require": 2}   # ENGRAM_LOCAL_*

    def __init__(self, address: str, *, deadline_ms: Optional[int] = None,
                 tls_ca: Optional[str] = None, tls_cert: Optional[str] = None,
                 tls_key: Optional[str] = None, tls_server_name: Optional[str] = None,
                 token_file: Optional[str] = None, local: str = "auto",
                 **options: Optional[int]) -> None:
        if local not in self._LOCAL:
            raise ValueError("local must be 'auto', 'off' or 'require', not %r" % (local,))
        known = {"max_message_bytes", "max_prefetch_tokens", "version_refresh_ms",
                 "attempt_timeout_ms", "eject_after_failures", "eject_backoff_ms",
                 "hedge_percentile", "hedge_min_ms", "eject_after_hedge_losses",
                 "tls_refresh_s", "prefetch_chunk_rows"}
        for k in options:
            if k not in known:
                raise TypeError("Client() got an unexpected keyword argument %r" % k)
        opts: Dict[str, Any] = dict(options, deadline_ms=deadline_ms, tls_ca_file=tls_ca,
                                    tls_cert_file=tls_cert, tls_key_file=tls_key,
                                    tls_server_name=tls_server_name,
                                    local=self._LOCAL[local])
        if token_file is not None:
            with open(token_file) as f:
                opts["admin_token"] = f.read().strip()
        self.address = address
        self._c = _engram.Client(address, {k: v for k, v in opts.items() if v is not None})
        self._waiter = _Waiter()
        # table -> (row_bytes, dtype, the numpy dtype of its elements)
        self._row_bytes: Dict[str, Tuple[int, str, np.dtype]] = {}
        self._models: "List[Any]" = []
        self._lock = threading.Lock()

    # ---- lifetime ----

    def close(self) -> None:
        """Closes the models this client opened, cancels lookups in flight,
        then closes the client. A model with an open Prefetch, or an open
        import, raises RuntimeError and leaves the client open and usable.
        Not while other threads still use the client."""
        with self._lock:
            models = list(self._models)
        for m in models:
            m.close()                 # removes itself from _models
        self._waiter.close()
        try:
            self._c.close()
        except RuntimeError:
            self._waiter = _Waiter()  # still open: async lookups work again
            raise

    @property
    def closed(self) -> bool:
        return bool(self._c.closed)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- lookups ----

    def _shape(self, table: str) -> Tuple[int, str, np.dtype]:
        got = self._row_bytes.get(table)
        if got is None:
            t = self._c.table(table)
            got = self._row_bytes[table] = (t["row_bytes"], t["dtype"],
                                            _arrays.NUMPY_DTYPE.get(t["dtype"], _U8))
        return got

    def _direct(self, table: str, rows: Any, out: Any) -> int:
        """The row size when rows and out can go to the extension as they
        are (uint64 ids, a numpy out of bytes or the table's element type;
        the extension checks contiguity, writability and size before it
        writes anything), else 0. Identity checks only: right after a wait
        the caches are cold and every line of Python here costs
        microseconds; the general path (_prepare) cost 125 us a call so."""
        known = self._row_bytes.get(table)
        if known is None or type(rows) is not np.ndarray or type(out) is not np.ndarray:
            return 0
        if rows.dtype is not _U64:
            return 0
        od = out.dtype
        return known[0] if od is _U8 or od is known[2] else 0

    def _prepare(self, table: str, rows: Any, out: Any) -> Tuple[np.ndarray, Any, np.ndarray, int]:
        ids = _arrays.int_array(rows, "rows", signed=False).reshape(-1)
        rb, dtype, _ = self._shape(table)
        if out is None:
            arr, view = _arrays.new_out((len(ids), rb), np.dtype(np.uint8), False)
        else:
            arr, view = _arrays.out_buffer(out, (len(ids), rb), 1,
                                           _arrays.allowed_names(dtype))
        return ids, arr, view, rb

    def lookup(self, table: str, rows: Any, out: Any = None) -> Any:
        """Rows `rows` (any integer array-like, any shape, flattened) of
        `table`, in order, duplicates included: a uint8 numpy array
        [n, row_bytes], or `out` filled in place (a C-contiguous writable
        numpy array or CPU torch tensor of exactly n * row_bytes bytes, of
        dtype uint8 or the table's element type). The rows all come from
        one version of the table."""
        rb = self._direct(table, rows, out)
        if rb:
            try:
                self._c.lookup_into(table, rows, out, rb)
                return out
            except (ValueError, BufferError):
                pass    # not contiguous, read-only, mis-sized: the general path says which
            except errors.InvalidArgument:
                self._row_bytes.pop(table, None)
                raise
        ids, arr, view, rb = self._prepare(table, rows, out)
        try:
            self._c.lookup_into(table, ids, view, rb)
        except errors.InvalidArgument:
            # The table may have a new version of another row size.
            self._row_bytes.pop(table, None)
            raise
        return arr

    def lookup_async(self, table: str, rows: Any, out: Any = None) -> LookupFuture:
        """As lookup, without waiting: a future whose result() is the output.
        `out` must not be touched until the future is done."""
        rb = self._direct(table, rows, out)
        handle = None
        if rb:
            try:
                handle, arr = self._c.lookup_start(table, rows, out, rb), out
            except (ValueError, BufferError):
                pass    # as in lookup: the general path says what is wrong
        if handle is None:
            ids, arr, view, rb = self._prepare(table, rows, out)
            handle = self._c.lookup_start(table, ids, view, rb)
        fut = LookupFuture(handle, arr)
        self._waiter.add(fut)
        return fut

    async def alookup(self, table: str, rows: Any, out: Any = None) -> Any:
        """The asyncio form of lookup: ``rows = await client.alookup(...)``;
        cancelling the task cancels the lookup."""
        import asyncio
        return await asyncio.wrap_future(self.lookup_async(table, rows, out))

    # ---- tables ----

    def tables(self) -> List[Table]:
        """Every table on the server, sorted by name."""
        return [Table._from(d) for d in self._c.tables()]

    def table(self, name: str) -> Table:
        """One table; NotFound when it does not exist."""
        return Table._from(self._c.table(name))

    def verify(self, table: str, version: int = 0) -> VerifyResult:
        """Admin.Verify on the server the client was opened with: re-reads
        every stored row of `version` (0: the active one) and compares the
        checksums with the ones recorded at import (see .match)."""
        return VerifyResult(**self._c.verify(table, version))

    def import_array(self, table: str, array: Any, dtype: Optional[str] = None,
                     progress: Union[bool, Callable[[int, int], None]] = False) -> Table:
        """Imports a 2-D array [rows, dim] (numpy or torch, bf16 included)
        as a new version of `table`. dtype is the engram element type; by
        default the array's (uint16 needs dtype="bf16"; a uint8 array of
        264-byte rows with dtype="mxfp8_e4m3" is V4.1's row type).
        progress: True prints a line to stderr as rows go, or a callable
        progress(rows_done, rows_total). Returns the table as activated."""
        a, dtype = _import_source(array, dtype)
        rows = a.shape[0]
        rb = a.shape[1] * a.dtype.itemsize if a.ndim == 2 else 0
        dim = (rb * 32 // 33) if dtype == "mxfp8_e4m3" else (a.shape[1] if a.ndim == 2 else 0)
        imp = self._c.import_begin(table, rows, dim, dtype, rb)
        report = _progress_fn(progress, table)
        try:
            per = max(1, _IMPORT_CHUNK_BYTES // max(rb, 1))
            for start in range(0, rows, per):
                imp.write(start, a[start:start + per].reshape(-1).view(np.uint8))
                report(min(start + per, rows), rows)
            info = imp.finish()
        except BaseException:
            imp.abort()
            raise
        self._row_bytes.pop(table, None)
        return Table._from(info)

    # ---- operations ----

    def stats(self) -> Dict[str, Any]:
        """The server's Admin.Stats as a dict (engram.v1.StatsResponse)."""
        return json.loads(self._c.stats_json())

    def health(self, service: Optional[str] = None) -> bool:
        """True when the server (or `service`: "engram.v1.Lookup",
        "engram.v1.Admin") is SERVING."""
        return self._c.health(service)

    # ---- manifests and models ----

    def put_manifest(self, manifest: Union[str, bytes, Dict[str, Any], "os.PathLike[str]"]
                     ) -> ManifestInfo:
        """Stores a model manifest: a dict, a JSON string, or a file path."""
        if isinstance(manifest, dict):
            doc = json.dumps(manifest)
        elif isinstance(manifest, os.PathLike) or (
                isinstance(manifest, str) and not manifest.lstrip().startswith("{")):
            with open(manifest) as f:
                doc = f.read()
        elif isinstance(manifest, bytes):
            doc = manifest.decode()
        else:
            doc = manifest
        return ManifestInfo(**self._c.manifest_put(doc))

    def manifest(self, name: str) -> Dict[str, Any]:
        """The stored manifest document of model `name`."""
        doc, _version = self._c.manifest_get(name)
        return json.loads(doc)

    def manifests(self) -> List[ManifestInfo]:
        return [ManifestInfo(**d) for d in self._c.manifests()]

    def model(self, name: str) -> "Any":
        """Opens model `name` (its manifest, hashing and tables checked):
        an engram.Model, closed with the client or by its close()."""
        from .model import Model
        m = Model(self, self._c.model_open(name))
        with self._lock:
            self._models.append(m)
        return m

    def _forget_model(self, m: Any) -> None:
        with self._lock:
            if m in self._models:
                self._models.remove(m)


def _import_source(array: Any, dtype: Optional[str]) -> Tuple[np.ndarray, str]:
    """The array as a C-contiguous numpy array and its engram dtype."""
    if _arrays.is_torch(array):
        import torch
        t = array.detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:
            if dtype not in (None, "bf16"):
                raise TypeError("a bfloat16 tensor imports as bf16, not %s" % dtype)
            return t.view(torch.int16).numpy().view(np.uint16), "bf16"
        array = t.numpy()
    a = np.ascontiguousarray(array)
    if a.ndim != 2:
        raise ValueError("import_array takes a 2-D array [rows, dim]; got shape %s"
                         % (a.shape,))
    by_numpy = {v.name: k for k, v in _arrays.NUMPY_DTYPE.items()
                if k in ("f16", "f32", "f64", "i8", "u8", "i16", "i32")}
    if dtype is None:
        if a.dtype.name not in by_numpy:
            raise TypeError("cannot tell the engram dtype of a %s array; pass dtype= (for "
                            "uint16 bf16 patterns, dtype=\"bf16\")" % a.dtype)
        return a, by_numpy[a.dtype.name]
    want = _arrays.NUMPY_DTYPE.get(dtype)
    if want is None:
        raise ValueError("unknown dtype %r; expected one of %s"
                         % (dtype, ", ".join(sorted(_arrays.NUMPY_DTYPE))))
    if a.dtype.itemsize != want.itemsize or a.dtype.kind not in ("u", "i", "f"):
        raise TypeError("a %s array cannot hold %s values (%d-byte elements)"
                        % (a.dtype, dtype, want.itemsize))
    return a, dtype


def _progress_fn(progress: Union[bool, Callable[[int, int], None]], table: str
                 ) -> Callable[[int, int], None]:
    if callable(progress):
        return progress
    if not progress:
        return lambda done, total: None

    def show(done: int, total: int) -> None:
        end = "\n" if done >= total else ""
        sys.stderr.write("\rimport %s: %d of %d rows (%.0f%%)%s"
                         % (table, done, total, 100.0 * done / max(total, 1), end))
        sys.stderr.flush()
    return show
