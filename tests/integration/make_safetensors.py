#!/usr/bin/python3
"""Writes .safetensors and .npy test files by hand, for engramctl import.

The safetensors format is simple enough to write without the safetensors
package (not in Debian): an 8-byte little-endian header length, the JSON
header (padded with spaces to a multiple of 8, as the reference writer
does), then each tensor's raw little-endian bytes at its data_offsets.
Writing it here also lets the tests build broken files on purpose
(write_raw), which no library would produce.

Files are generated at test time, never committed. Data is deterministic
(numpy's PCG64 with a fixed seed) so a failure reproduces.

usage: make_safetensors.py OUTDIR [--rows N] [--dim D]
  writes OUTDIR/all.safetensors (one tensor "emb.<dtype>" per supported
  dtype, plus a 3-D "cube" and an I64 "steps" for refusals) and
  OUTDIR/<dtype>.npy for each dtype numpy can hold or carry as raw bits.
"""
import argparse
import json
import os
import struct

import numpy as np

# engram dtype -> (safetensors dtype, numpy dtype of the bytes written).
# bf16 and fp8 have no numpy type: their bits are carried as u16 / u8.
DTYPES = {
    "bf16": ("BF16", "<u2"),
    "f16": ("F16", "<f2"),
    "f32": ("F32", "<f4"),
    "f64": ("F64", "<f8"),
    "i8": ("I8", "|i1"),
    "u8": ("U8", "|u1"),
    "i16": ("I16", "<i2"),
    "i32": ("I32", "<i4"),
    "fp8_e4m3": ("F8_E4M3", "|u1"),
    "fp8_e5m2": ("F8_E5M2", "|u1"),
}


def tensor_for(dtype, rows, dim, seed):
    """A [rows, dim] array whose bytes are the tensor of `dtype`: real
    floats for float types (bf16 as the top half of f32), full-range
    integers otherwise, so every byte position varies."""
    rng = np.random.default_rng(seed)
    npt = np.dtype(DTYPES[dtype][1])
    if dtype == "bf16":
        f = rng.standard_normal((rows, dim)).astype("<f4")
        return (f.view("<u4") >> 16).astype("<u2")
    if npt.kind == "f":
        return rng.standard_normal((rows, dim)).astype(npt)
    info = np.iinfo(npt)
    return rng.integers(info.min, info.max, size=(rows, dim), endpoint=True, dtype=npt)


def write_raw(path, header_bytes, data, length=None):
    """Writes a file as given: the length field (len(header_bytes) unless
    overridden), the header bytes and the data, for broken files."""
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes) if length is None else length))
        f.write(header_bytes)
        f.write(data)


def write_safetensors(path, tensors, metadata=None):
    """tensors: [(name, safetensors dtype, shape, bytes)], laid out in
    order. Returns the header dict written."""
    header, offset = {}, 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, st_dtype, shape, data in tensors:
        header[name] = {"dtype": st_dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    write_raw(path, text, b"".join(t[3] for t in tensors))
    return header


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("outdir")
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=64)
    a = ap.parse_args()
    os.makedirs(a.outdir, exist_ok=True)
    tensors = []
    for seed, dtype in enumerate(DTYPES):
        arr = tensor_for(dtype, a.rows, a.dim, seed)
        tensors.append(("emb." + dtype, DTYPES[dtype][0], arr.shape, arr.tobytes()))
        np.save(os.path.join(a.outdir, dtype + ".npy"), arr)
    cube = np.arange(4 * 5 * 6, dtype="<f4").reshape(4, 5, 6)
    tensors.append(("cube", "F32", cube.shape, cube.tobytes()))
    tensors.append(("steps", "I64", (a.rows, 2), bytes(16 * a.rows)))
    write_safetensors(os.path.join(a.outdir, "all.safetensors"), tensors, {"format": "pt"})


if __name__ == "__main__":
    main()
