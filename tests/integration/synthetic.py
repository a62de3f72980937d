"""The synthetic row rule of common/synthetic.h, for the Python tests that
speak the wire themselves (bad_import_test.py, bad_input_test.py): row r of
a table made with seed S is splitmix64 words of (S + (r << 20) + k),
little-endian, cut to the row size; synthetic_row_typed makes those bytes
valid values of a row type as synthetic_row_typed in C does."""
import struct

M64 = (1 << 64) - 1


def splitmix64(x):
    z = (x + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def synthetic_row(seed, row, row_bytes):
    words = (row_bytes + 7) // 8
    data = b"".join(struct.pack("<Q", splitmix64((seed + (row << 20) + k) & M64))
                    for k in range(words))
    return data[:row_bytes]


def layer_seed(seed, layer_id):
    """manifest_synthetic_seed: the seed of a model's layer table when all
    its tables are imported with one seed (import-synthetic --manifest)."""
    return splitmix64(seed ^ ((layer_id * 0xD1B54A32D192ED03) & M64))


def synthetic_row_typed(seed, row, row_bytes, dtype):
    """mxfp8_e4m3: NaN codes (0x7F, 0xFF) lose their low bit and each scale
    byte b becomes 120 + b % 15; every other type keeps the bytes."""
    data = synthetic_row(seed, row, row_bytes)
    if dtype != "mxfp8_e4m3":
        return data
    dim = row_bytes // 33 * 32
    codes = bytes(c ^ 1 if c & 0x7F == 0x7F else c for c in data[:dim])
    return codes + bytes(120 + b % 15 for b in data[dim:])


def rows_bytes(seed, start, count, row_bytes=64):
    return b"".join(synthetic_row(seed, r, row_bytes) for r in range(start, start + count))


def synthetic_rows(seed, rows, row_bytes):
    """Rows [0, rows) of the rule at once, as bytes: numpy's uint64
    arithmetic wraps as the C code's does (row_bytes a multiple of 8;
    numpy is imported here so the per-row helpers above need none)."""
    import numpy as np
    words = row_bytes // 8
    z = (np.uint64(seed) + (np.arange(rows, dtype=np.uint64)[:, None] << np.uint64(20))
         + np.arange(words, dtype=np.uint64)[None, :])
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return z.astype("<u8").tobytes()
