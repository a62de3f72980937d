"""raw_wire.py: request bytes written by hand, so the server's own decoding
is what a test exercises (shared by bad_input_test.py and abuse_test.py)."""

L = "/engram.v1.Lookup/Lookup"
A = "/engram.v1.Admin/"


def varint(v):
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def field_bytes(num, payload):
    return varint(num << 3 | 2) + varint(len(payload)) + payload


def field_varint(num, v):
    return varint(num << 3) + varint(v)


def lookup_req(table, rows, version=0):
    body = field_bytes(1, table.encode()) + field_bytes(2, b"".join(varint(r) for r in rows))
    return body + (field_varint(3, version) if version else b"")
