"""Array plumbing between callers' objects and the extension's buffers.

Inputs (row ids, token ids) may be anything integer and array-like: numpy
arrays of any integer dtype, torch tensors (any device: ids are small and
copied to the host), lists. They become C-contiguous uint64/int64 numpy
arrays, copied only when they are not already that.

Outputs are written in place, once: a numpy array or a CPU torch tensor
(pinned or not) the caller gives, checked first for size, dtype,
contiguity and writability, so a bad ``out`` is refused before anything is
written; or a fresh numpy array. A torch tensor is handed to the extension
as a uint8 numpy view of its storage (``tensor.view(torch.uint8).numpy()``),
which shares the memory, so torch is never imported here unless the caller
passed a tensor."""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import numpy as np

# Table element types (engram dtype names) -> numpy dtype of one element.
# bf16 has no numpy type: its 16-bit patterns are uint16 (torch.bfloat16 in
# torch). Byte-coded types (FP8, the MX block type) are uint8.
NUMPY_DTYPE = {
    "bf16": np.dtype(np.uint16), "f16": np.dtype(np.float16), "f32": np.dtype(np.float32),
    "f64": np.dtype(np.float64), "i8": np.dtype(np.int8), "u8": np.dtype(np.uint8),
    "i16": np.dtype(np.int16), "i32": np.dtype(np.int32), "fp8_e4m3": np.dtype(np.uint8),
    "fp8_e5m2": np.dtype(np.uint8), "mxfp8_e4m3": np.dtype(np.uint8),
}

TORCH_DTYPE_NAME = {
    "bf16": "bfloat16", "f16": "float16", "f32": "float32", "f64": "float64", "i8": "int8",
    "u8": "uint8", "i16": "int16", "i32": "int32", "fp8_e4m3": "uint8", "fp8_e5m2": "uint8",
    "mxfp8_e4m3": "uint8",
}


def is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "data_ptr")


def int_array(x: Any, what: str, signed: bool) -> np.ndarray:
    """x as a C-contiguous int64 (signed) or uint64 array, any shape."""
    if is_torch(x):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.size == 0 and a.dtype.kind not in "iu":
        a = a.astype(np.int64)
    if a.dtype.kind not in "iu":
        raise TypeError("%s must be integers, not %s" % (what, a.dtype))
    if signed:
        if a.dtype.kind == "u" and a.size and a.max() > np.iinfo(np.int64).max:
            raise ValueError("%s holds %d, above int64" % (what, int(a.max())))
        return np.ascontiguousarray(a, dtype=np.int64)
    if a.dtype.kind == "i" and a.size and a.min() < 0:
        i = int(np.argmax(a.reshape(-1) < 0))
        raise ValueError("%s[%d] is %d: row ids are >= 0" % (what, i, int(a.reshape(-1)[i])))
    return np.ascontiguousarray(a, dtype=np.uint64)


def _torch_dtype_name(t: Any) -> str:
    return str(t.dtype).replace("torch.", "")


def out_buffer(out: Any, shape: Tuple[int, ...], itemsize: int,
               allowed: Sequence[str]) -> Tuple[Any, np.ndarray]:
    """Checks a caller's `out` for an output of `shape` elements of
    `itemsize` bytes, whose dtype must be one of `allowed` (numpy/torch
    names). Returns (out, a writable uint8 numpy view of its memory)."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * itemsize
    if is_torch(out):
        if out.device.type != "cpu":
            raise ValueError("out is a tensor on %s; prefetch into a CPU (pinned) tensor and "
                             "copy it to the device" % out.device)
        if _torch_dtype_name(out) not in allowed:
            raise TypeError("out has dtype torch.%s; expected one of %s"
                            % (_torch_dtype_name(out), ", ".join(allowed)))
        if not out.is_contiguous():
            raise ValueError("out is not contiguous")
        if out.numel() * out.element_size() != nbytes:
            raise ValueError("out holds %d bytes; this call writes %d (shape %s x %d bytes)"
                             % (out.numel() * out.element_size(), nbytes, tuple(shape),
                                itemsize))
        import torch  # the caller passed a tensor, so torch is there
        flat = out.reshape(-1)
        return out, flat.view(torch.uint8).numpy()
    if not isinstance(out, np.ndarray):
        raise TypeError("out must be a numpy array or a torch tensor, not %s"
                        % type(out).__name__)
    if out.dtype.name not in allowed:
        raise TypeError("out has dtype %s; expected one of %s" % (out.dtype, ", ".join(allowed)))
    if not out.flags.c_contiguous:
        raise ValueError("out is not C-contiguous")
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    if out.nbytes != nbytes:
        raise ValueError("out holds %d bytes; this call writes %d (shape %s x %d bytes)"
                         % (out.nbytes, nbytes, tuple(shape), itemsize))
    return out, out.reshape(-1).view(np.uint8)


def new_out(shape: Tuple[int, ...], dtype: np.dtype, as_torch: bool) -> Tuple[Any, np.ndarray]:
    """A fresh output: numpy, or a torch tensor when as_torch (bf16 patterns
    as torch.bfloat16). Returns (array, uint8 view)."""
    if as_torch:
        import torch
        name = {"uint16": "bfloat16"}.get(dtype.name, dtype.name)
        t = torch.empty(shape, dtype=getattr(torch, name))
        return t, t.reshape(-1).view(torch.uint8).numpy()
    a = np.empty(shape, dtype=dtype)
    return a, a.reshape(-1).view(np.uint8)


def allowed_names(table_dtype: Optional[str]) -> Tuple[str, ...]:
    """Output dtypes accepted for rows of a table: bytes, or its element
    type (numpy and torch spellings)."""
    names = {"uint8"}
    if table_dtype in NUMPY_DTYPE:
        names.add(NUMPY_DTYPE[table_dtype].name)
        names.add(TORCH_DTYPE_NAME[table_dtype])
    return tuple(sorted(names))
