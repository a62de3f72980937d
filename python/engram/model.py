"""engram.Model: token ids to row ids (hash) and to rows (prefetch).

A Model is an opened manifest (engram_model): immutable, usable from many
threads. prefetch() starts one libengram prefetch covering any of the
model's layers; its Prefetch handle gives each layer's rows as soon as they
are in (wait_layer, what a worker calls just before each Engram layer) or
all of them (wait). The output is one array [layers, B, T, cols, X]:

  dtype="raw"      X = row_bytes, uint8 (the stored rows)
  dtype="bf16"     X = dim, BF16 (torch.bfloat16, or uint16 bit patterns in
                   numpy), dequantised by libengram as rows arrive
                   (mxfp8_e4m3 models: DeepSeek-V4.1)
  dtype="float32"  X = dim, float32, dequantised after the rows arrive

written in place, once, into `out` when given (numpy or a CPU torch tensor,
pinned for a device copy) or into a fresh array (a torch tensor when
as_torch=True)."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from . import _arrays, _engram

_I64 = np.dtype(np.int64)


class Model:
    """An opened model; from Client.model(name)."""

    def __init__(self, client: Any, handle: Any) -> None:
        self._client = client
        self._m = handle
        info = handle.info()
        self.name: str = info["name"]
        self.manifest_version: int = info["manifest_version"]
        self.layer_ids: Tuple[int, ...] = tuple(info["layer_ids"])
        self.max_ngram: int = info["max_ngram"]
        self.heads: int = info["heads"]        # columns per layer
        self.dim: int = info["dim"]
        self.row_bytes: int = info["row_bytes"]
        self.dtype: str = info["dtype"]
        self.pad_id: int = info["pad_id"]
        # prefetch's per-shape derivations, by (B, T, dtype, layers, cols)
        self._plans: Dict[Tuple[Any, ...], Tuple[Any, ...]] = {}

    def close(self) -> None:
        """Closes the model (free its prefetches first)."""
        self._m.close()
        self._client._forget_model(self)

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return ("Model(%r, layers=%s, heads=%d, dim=%d, dtype=%r)"
                % (self.name, list(self.layer_ids), self.heads, self.dim, self.dtype))

    @staticmethod
    def _tokens(tokens: Any, history: Any, hist_len: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        tok = _arrays.int_array(tokens, "tokens", signed=True)
        if tok.ndim == 1:
            tok = tok.reshape(1, -1)
        if tok.ndim != 2:
            raise ValueError("tokens must be [B, T] or [T]; got shape %s" % (tok.shape,))
        hist = None
        if history is not None:
            hist = _arrays.int_array(history, "history", signed=True)
            if hist.ndim == 1:
                hist = hist.reshape(1, -1)
            if hist.shape != (tok.shape[0], hist_len):
                raise ValueError("history must be [B, max_ngram - 1] = [%d, %d]; got %s"
                                 % (tok.shape[0], hist_len, hist.shape))
        return tok, hist

    def hash(self, tokens: Any, history: Any = None, layer: Optional[int] = None) -> np.ndarray:
        """Row ids of tokens [B, T] (or [T]): int64 [B, T, cols] for one
        layer, or [layers, B, T, cols] for every layer when layer is None.
        history: [B, max_ngram - 1] ids before each sequence (decode)."""
        tok, hist = self._tokens(tokens, history, self.max_ngram - 1)
        B, T = tok.shape
        layers = self.layer_ids if layer is None else (layer,)
        out = np.empty((len(layers), B, T, self.heads), dtype=np.int64)
        for i, lid in enumerate(layers):
            self._m.hash(lid, tok, B, T, hist, out[i].view(np.uint64))
        return out if layer is None else out[0]

    def tp_cols(self, tp: int, rank: int) -> Tuple[int, ...]:
        """The columns tensor-parallel rank `rank` of `tp` takes, as vLLM
        shards Engram: ceil(heads / tp) consecutive columns each."""
        return self._m.tp_heads(tp, rank)

    def prefetch(self, tokens: Any, layers: Optional[Sequence[int]] = None,
                 cols: Optional[Sequence[int]] = None, out: Any = None, dtype: str = "raw",
                 history: Any = None, as_torch: bool = False,
                 hash_async: bool = False) -> "Prefetch":
        """Starts fetching the rows of tokens [B, T] for `layers` (default:
        all) and columns `cols` (default: all); see the module docstring
        for the output. hash_async hashes on the model's background thread
        (returns at once). Returns a Prefetch."""
        # A decode loop's call (C-contiguous int64 tokens [B, T] and history
        # [B, max_ngram - 1], the same shapes step after step, a preallocated
        # numpy out) takes a few attribute reads and one dict lookup: this
        # Python runs on caches the previous step's rows evicted, at several
        # times its warm cost, which was a few percent of a decode step.
        tok, hist = tokens, history
        if not (type(tok) is np.ndarray and tok.dtype is _I64 and tok.ndim == 2
                and tok.flags.c_contiguous
                and (hist is None or (type(hist) is np.ndarray and hist.dtype is _I64
                                      and hist.shape == (tok.shape[0], self.max_ngram - 1)
                                      and hist.flags.c_contiguous))):
            tok, hist = self._tokens(tokens, history, self.max_ngram - 1)
        B, T = tok.shape
        key = (B, T, dtype, None if layers is None else tuple(layers),
               None if cols is None else tuple(cols))
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plan(B, T, dtype, layers, cols)
            if len(self._plans) < 64:
                self._plans[key] = plan
        lays, col_list, shape, elem, itemsize, allowed, flags, nbytes = plan
        if hash_async:
            flags |= _engram.PREFETCH_HASH_ASYNC
        if out is None:
            arr, view = _arrays.new_out(shape, elem, as_torch)
        elif (dtype != "float32" and type(out) is np.ndarray and out.dtype == elem
              and out.nbytes == nbytes
              and out.flags.c_contiguous and out.flags.writeable):
            arr = view = out        # the extension writes it through its buffer
        else:
            arr, view = _arrays.out_buffer(out, shape, itemsize, allowed)
        raw = view
        if dtype == "float32":
            # The rows land in a raw buffer, then become float32 in `out`.
            raw = np.empty(shape[:-1] + (self.row_bytes,), dtype=np.uint8).reshape(-1)
        h = self._m.prefetch_start(lays, tok, B, T, hist, col_list, flags, raw)
        return Prefetch(self, h, arr, view, raw, lays, dtype)

    def _plan(self, B: int, T: int, dtype: str, layers: Optional[Sequence[int]],
              cols: Optional[Sequence[int]]) -> Tuple[Any, ...]:
        """What prefetch derives from a call's shape: (layers, cols, out
        shape, element dtype, itemsize, allowed out dtypes, flags, out
        bytes)."""
        if dtype not in ("raw", "bf16", "float32"):
            raise ValueError("dtype must be 'raw', 'bf16' or 'float32', not %r" % (dtype,))
        if dtype != "raw" and self.dtype != "mxfp8_e4m3":
            raise ValueError("dtype=%r dequantises mxfp8_e4m3 rows; model %s holds %s"
                             % (dtype, self.name, self.dtype))
        lays = list(self.layer_ids if layers is None else layers)
        ncols = self.heads if cols is None else len(cols)
        flags = _engram.PREFETCH_DEQUANT_BF16 if dtype == "bf16" else 0
        shape = (len(lays), B, T, ncols)
        if dtype == "raw":
            shape, elem, itemsize = shape + (self.row_bytes,), np.dtype(np.uint8), 1
            allowed: Tuple[str, ...] = ("uint8",)
        elif dtype == "bf16":
            shape, elem, itemsize = shape + (self.dim,), np.dtype(np.uint16), 2
            allowed = ("bfloat16", "uint16")
        else:
            shape, elem, itemsize = shape + (self.dim,), np.dtype(np.float32), 4
            allowed = ("float32",)
        nbytes = itemsize
        for d in shape:
            nbytes *= d
        return (lays, None if cols is None else list(cols), shape, elem, itemsize, allowed,
                flags, nbytes)


class Prefetch:
    """One prefetch in flight (engram_prefetch). wait_layer(layer) returns
    that layer's rows [B, T, cols, X] once they are in; wait() all of them
    [layers, B, T, cols, X]. Both return views of the one output array.
    cancel() stops it; close() (or the end of a with block) frees it.
    One thread at a time per Prefetch."""

    def __init__(self, model: Model, handle: Any, out: Any, view: np.ndarray, raw: np.ndarray,
                 layers: Sequence[int], dtype: str) -> None:
        self._model = model
        self._h = handle
        self.out = out
        self._view = view
        self._raw = raw
        self._layers = layers        # prefetch's own list, never changed
        self._dtype = dtype
        self._converted: set = set()

    def _convert(self, idx: Sequence[int]) -> None:
        """float32: dequantise the raw rows of these layers into out."""
        if self._dtype != "float32":
            return
        m = self._model
        per = self._raw.size // len(self._layers)          # raw bytes per layer
        rows = per // m.row_bytes
        for i in idx:
            if i in self._converted:
                continue
            dst = self._view[i * rows * m.dim * 4:(i + 1) * rows * m.dim * 4]
            _engram.dequant(self._raw[i * per:(i + 1) * per], rows, m.dim, dst, False)
            self._converted.add(i)

    def wait(self, timeout: Optional[float] = None) -> Any:
        """Waits (timeout in seconds, None: forever) for every layer; returns
        the output, or raises TimeoutError, or the prefetch's EngramError."""
        ms = -1 if timeout is None else int(timeout * 1000)
        if not self._h.wait(ms):
            raise TimeoutError("the prefetch is not done after %s s" % timeout)
        if self._dtype == "float32":
            self._convert(range(len(self._layers)))
        return self.out

    def wait_layer(self, layer: int, timeout: Optional[float] = None) -> Any:
        """Waits for one layer's rows only; returns out[index of layer]."""
        if layer not in self._layers:
            raise ValueError("layer %d was not asked for (layers %s)" % (layer, self._layers))
        ms = -1 if timeout is None else int(timeout * 1000)
        if not self._h.wait_layer(layer, ms):
            raise TimeoutError("layer %d is not in after %s s" % (layer, timeout))
        i = self._layers.index(layer)
        self._convert([i])
        return self.out[i]

    def done(self) -> bool:
        return bool(self._h.poll())

    def cancel(self) -> None:
        self._h.cancel()

    def close(self) -> None:
        """Frees the handle (cancelling what is in flight); out stays."""
        self._h.free()

    def __enter__(self) -> "Prefetch":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
