"""engram: the Python client of engram-store, over libengram.

    import engram
    with engram.Client("127.0.0.1:7070") as client:
        rows = client.lookup("demo", [0, 17, 65535])     # uint8 [3, row_bytes]
        model = client.model("tiny-v41")
        p = model.prefetch([[1, 5, 9]], dtype="bf16", as_torch=True)
        layer1 = p.wait_layer(1)                        # torch.bfloat16 [1, 3, 24, 256]

Everything blocking releases the GIL; a Client serves many threads at once.
Errors are engram.EngramError subclasses, one per gRPC status (NotFound,
OutOfRange, InvalidArgument, Unavailable, DeadlineExceeded, ...)."""
from ._engram import version as _libversion
from .client import (Client, LookupFuture, ManifestInfo, Table, TableVersion,
                     VerifyResult)
from .errors import (Aborted, AlreadyExists, Cancelled, DataLoss, DeadlineExceeded,
                     EngramError, FailedPrecondition, Internal, InvalidArgument, NotFound,
                     OutOfRange, PermissionDenied, ResourceExhausted, Unauthenticated,
                     Unavailable, Unimplemented, Unknown)
from .model import Model, Prefetch

__version__ = _libversion()

__all__ = [
    "Client", "LookupFuture", "ManifestInfo", "Model", "Prefetch", "Table", "TableVersion",
    "VerifyResult", "EngramError", "Aborted", "AlreadyExists", "Cancelled", "DataLoss",
    "DeadlineExceeded", "FailedPrecondition", "Internal", "InvalidArgument", "NotFound",
    "OutOfRange", "PermissionDenied", "ResourceExhausted", "Unauthenticated", "Unavailable",
    "Unimplemented", "Unknown", "dequantize",
]


def dequantize(rows, dim: int = 256, dtype: str = "bf16", out=None):
    """mxfp8_e4m3 rows (uint8 [n, dim + dim / 32]) to BF16 (uint16 patterns,
    or torch.bfloat16 when `out` is such a tensor) or float32 [n, dim], as
    libengram's engram_dequant_bf16 / _f32 compute them."""
    import numpy as np
    from . import _arrays, _engram
    if _arrays.is_torch(rows):
        rows = rows.detach().cpu().numpy()
    r = np.ascontiguousarray(rows, dtype=np.uint8)
    rb = dim + dim // 32
    if r.size % rb:
        raise ValueError("rows hold %d bytes, not a whole number of %d-byte rows" % (r.size, rb))
    n = r.size // rb
    if dtype not in ("bf16", "float32"):
        raise ValueError("dtype must be 'bf16' or 'float32', not %r" % (dtype,))
    elem = np.dtype(np.uint16 if dtype == "bf16" else np.float32)
    if out is None:
        arr, view = _arrays.new_out((n, dim), elem, False)
    else:
        arr, view = _arrays.out_buffer(out, (n, dim), elem.itemsize,
                                       ("bfloat16", "uint16") if dtype == "bf16" else ("float32",))
    _engram.dequant(r.reshape(-1), n, dim, view, dtype == "bf16")
    return arr
