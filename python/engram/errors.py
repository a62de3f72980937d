"""Errors: one exception class per gRPC status, all under EngramError.

Every failure libengram or the server reports is raised as the class of its
status code, carrying the server's message (which names the bad value):
``except engram.NotFound`` catches a missing table, ``except
engram.EngramError`` everything. ``.code`` is the status name
("NOT_FOUND", ...). Bad Python arguments (a read-only or mis-sized output,
a wrong dtype) are ValueError or TypeError, raised before any call."""
from __future__ import annotations

from typing import Dict, Type


class EngramError(Exception):
    """A libengram or server error: ``code`` is the gRPC status name,
    ``message`` what went wrong."""

    code: str = "UNKNOWN"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return "%s: %s" % (self.code, self.message)


def _make(name: str, code: str) -> Type[EngramError]:
    return type(name, (EngramError,), {"code": code, "__doc__": "Status %s." % code,
                                        "__module__": __name__})


Cancelled = _make("Cancelled", "CANCELLED")
Unknown = _make("Unknown", "UNKNOWN")
InvalidArgument = _make("InvalidArgument", "INVALID_ARGUMENT")
DeadlineExceeded = _make("DeadlineExceeded", "DEADLINE_EXCEEDED")
NotFound = _make("NotFound", "NOT_FOUND")
AlreadyExists = _make("AlreadyExists", "ALREADY_EXISTS")
PermissionDenied = _make("PermissionDenied", "PERMISSION_DENIED")
ResourceExhausted = _make("ResourceExhausted", "RESOURCE_EXHAUSTED")
FailedPrecondition = _make("FailedPrecondition", "FAILED_PRECONDITION")
Aborted = _make("Aborted", "ABORTED")
OutOfRange = _make("OutOfRange", "OUT_OF_RANGE")
Unimplemented = _make("Unimplemented", "UNIMPLEMENTED")
Internal = _make("Internal", "INTERNAL")
Unavailable = _make("Unavailable", "UNAVAILABLE")
DataLoss = _make("DataLoss", "DATA_LOSS")
Unauthenticated = _make("Unauthenticated", "UNAUTHENTICATED")

# The gRPC code numbers (engram.h ENGRAM_*), for the extension.
BY_CODE: Dict[int, Type[EngramError]] = {
    1: Cancelled, 2: Unknown, 3: InvalidArgument, 4: DeadlineExceeded, 5: NotFound,
    6: AlreadyExists, 7: PermissionDenied, 8: ResourceExhausted, 9: FailedPrecondition,
    10: Aborted, 11: OutOfRange, 12: Unimplemented, 13: Internal, 14: Unavailable,
    15: DataLoss, 16: Unauthenticated,
}
