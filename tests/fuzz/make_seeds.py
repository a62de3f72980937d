#!/usr/bin/env python3
"""make_seeds.py: writes the seed corpora in tests/fuzz/corpus/ (committed;
run once, re-run only to change the seeds). Each seed is a small valid or
nearly valid input, so the fuzzer starts past the first checks of its
parser; protobuf messages are encoded by hand here (a few lines) so the
script needs nothing beyond Python.

    python3 tests/fuzz/make_seeds.py
"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")
ROOT = os.path.dirname(os.path.dirname(HERE))


def varint(v):
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def field(num, wt, payload):
    """One protobuf field: payload is an int for varints, bytes otherwise."""
    tag = varint(num << 3 | wt)
    if wt == 0:
        return tag + varint(payload)
    if wt == 2:
        return tag + varint(len(payload)) + payload
    return tag + payload


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def lookup_request():
    rows = b"".join(varint(r) for r in (0, 1, 300, 1 << 40, (1 << 64) - 1))
    write("lookup_request", "packed", field(1, 2, b"demo.l1") + field(2, 2, rows) + field(3, 0, 7))
    write("lookup_request", "unpacked", field(2, 0, 5) + field(2, 0, 1 << 33) + field(1, 2, b"t"))
    write("lookup_request", "unknown_fields",
          field(9, 0, 1) + field(10, 1, b"\0" * 8) + field(11, 5, b"\0" * 4) +
          field(12, 2, b"xyz") + field(1, 2, b"a.b") + field(2, 2, varint(3)))
    write("lookup_request", "empty", b"")


def lookup_response():
    msg = field(1, 2, bytes(range(16))) + field(2, 0, 8) + field(3, 0, 42)
    write("lookup_response", "rows_16_chunk_3", bytes([32, 2]) + msg)
    write("lookup_response", "rows_16_chunk_256", bytes([16, 255]) + msg)
    write("lookup_response", "unknown_fields", bytes([8, 0]) + field(7, 2, b"zz") +
          field(8, 5, b"abcd") + field(9, 1, b"12345678") + field(1, 2, b"\1" * 8))
    write("lookup_response", "too_long", bytes([4, 7]) + field(1, 2, b"\0" * 8))


def import_stream():
    rows, dim = 6, 4
    header = field(1, 2, b"fz.t") + field(2, 0, rows) + field(3, 0, dim) + field(4, 2, b"u8")
    chunk0 = field(1, 0, 0) + field(2, 2, bytes(range(16)))
    chunk1 = field(1, 0, 4) + field(2, 2, bytes(range(8)))
    trailer = field(1, 0, 0x1234)
    msgs = [field(1, 2, header), field(2, 2, chunk0), field(2, 2, chunk1), field(3, 2, trailer)]
    frame = b"".join(struct.pack("<H", len(m)) + m for m in msgs)
    write("import", "header_chunks_trailer", frame)
    write("import", "header_only", struct.pack("<H", len(msgs[0])) + msgs[0])
    staged = field(1, 2, field(1, 2, b"fz.s") + field(2, 0, 3) + field(3, 0, 4) +
                   field(4, 2, b"bf16") + field(5, 0, 3) + field(6, 0, 1) + field(7, 0, 0) +
                   field(8, 0, 0))
    write("import", "staged_bf16", struct.pack("<H", len(staged)) + staged)
    write("import", "chunk_first", struct.pack("<H", len(msgs[1])) + msgs[1])


def manifest():
    with open(os.path.join(ROOT, "deploy/examples/tiny-model.json"), "rb") as f:
        write("manifest", "tiny_model", f.read())
    small = {"name": "m", "engram_vocab_size": [11, 13], "max_ngram_size": 3,
             "n_embed_per_ngram": 8, "n_head_per_ngram": 2, "layer_ids": [1, 4],
             "pad_id": 0, "seed": 5, "dtype": "f32",
             "compression": {"lookup_table": [0, 1, 1, 2]},
             "multipliers": {"4": ["3", "5", 7]},
             "tables": {"1": "m.l1", "4": "m.l4"}}
    write("manifest", "small", json.dumps(small))


def cluster():
    with open(os.path.join(ROOT, "deploy/compose/cluster.json"), "rb") as f:
        write("cluster", "compose", f.read())
    write("cluster", "one", json.dumps({"name": "c", "shards": [{"replicas": ["h:1"]}]}))


def tokenizer():
    vocab = {"a": 0, "\u0120the": 1, "The": 2, "\u00c3\u00a9": 3, "\u00c3": 4, "caf\u00e9": 5,
             "\u0120\u0120": 6, "\uff21": 7, "\u010a": 9}
    tok = {"model": {"type": "BPE", "vocab": vocab},
           "added_tokens": [{"id": 8, "content": "<|end|>"}, {"id": 2, "content": " X "}]}
    write("tokenizer", "byte_level", json.dumps(tok))
    write("tokenizer", "minimal", '{"model":{"vocab":{"x":0}}}')


def safetensors():
    hdr = {"__metadata__": {"format": "pt"},
           "w": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 12]},
           "b": {"dtype": "F32", "shape": [3], "data_offsets": [12, 24]},
           "s": {"dtype": "I64", "shape": [], "data_offsets": [24, 32]}}
    h = json.dumps(hdr, separators=(",", ":")).encode()
    write("safetensors", "three_tensors", struct.pack("<Q", len(h)) + h + bytes(32))
    e = b"{}"
    write("safetensors", "empty", struct.pack("<Q", len(e)) + e)


def npy():
    def v1(d):
        d = d.encode()
        pad = 64 - (10 + len(d) + 1) % 64
        d += b" " * pad + b"\n"
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(d)) + d

    write("npy", "f32_2d", v1("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }") + bytes(48))
    write("npy", "bf16_1d", v1("{'descr': '|V2', 'fortran_order': False, 'shape': (5,), }"))
    d = b"{'descr': \"<i2\", 'fortran_order': False, 'shape': (2, 2), }\n"
    write("npy", "v2_i16", b"\x93NUMPY\x02\x00" + struct.pack("<I", len(d)) + d + bytes(8))


for make in (lookup_request, lookup_response, import_stream, manifest, cluster, tokenizer,
             safetensors, npy):
    make()
