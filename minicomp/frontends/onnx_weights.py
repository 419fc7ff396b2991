"""Reading an ONNX file's weights once, straight into their arrays.

``onnx.load`` parses the whole file into one protobuf message; the weights'
bytes then live in that message's memory (upb keeps it in one arena until
the whole message goes) while the importer copies them into the graph: for
a moment the weights are held twice. Here the file is scanned at the level
of the protobuf wire format instead: the model is parsed without the
``raw_data`` of its graph's initializers (a message of a few kilobytes), and
each weight is read from the file into its own array when the importer asks
for it. A BERT-base layer's import then peaks at the size of one copy of
its weights, not two.

The wire format is what ``protobuf`` encodes: a field is a varint key
(``number << 3 | wire type``) and a value, a varint (type 0), 8 bytes (1),
a varint length and that many bytes (2: messages, strings, packed arrays),
or 4 bytes (5). ModelProto's ``graph`` is field 7, GraphProto's
``initializer`` field 5, TensorProto's ``name`` field 8 and ``raw_data``
field 9. Anything unexpected (a truncated file, group fields) makes
:func:`scan_model` return None, and the caller reads the file the usual way.
"""

from __future__ import annotations

import mmap

import numpy as np

MODEL_GRAPH, GRAPH_INITIALIZER, TENSOR_NAME, TENSOR_RAW_DATA = 7, 5, 8, 9

# ONNX data types whose raw_data is the array's bytes as numpy lays them out
# (little-endian, one element after another): read with one readinto.
PLAIN_TYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64,
               9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64}


class WireError(ValueError):
    """The bytes are not the protobuf wire format this reader expects."""


def _varint(buf, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise WireError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _fields(buf, start: int, end: int):
    """Each field of the message in ``buf[start:end]``: (number, wire type,
    where the key starts, where the value starts, where the field ends)."""
    pos = start
    while pos < end:
        key_at = pos
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, after = _varint(buf, pos)
        elif wire == 1:
            after = pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            after = pos + length
        elif wire == 5:
            after = pos + 4
        else:
            raise WireError(f"wire type {wire} (groups) is not read here")
        if after > end:
            raise WireError("a field runs past the end of its message")
        yield number, wire, key_at, pos, after
        pos = after


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | 2) + _encode_varint(len(payload)) + payload


def _strip_tensor(buf, start: int, end: int, found: dict) -> bytes:
    out, name, raw = bytearray(), None, None
    for number, wire, key_at, at, after in _fields(buf, start, end):
        if number == TENSOR_RAW_DATA and wire == 2:
            raw = (at, after - at)
            continue
        if number == TENSOR_NAME and wire == 2:
            name = bytes(buf[at:after]).decode("utf-8")
        out += buf[key_at:after]
    if raw is not None:
        if name is None or name in found:
            raise WireError("an initializer with raw data has no name, or a name used twice")
        found[name] = raw
    return bytes(out)


def _strip_graph(buf, start: int, end: int, found: dict) -> bytes:
    out = bytearray()
    for number, wire, key_at, at, after in _fields(buf, start, end):
        if number == GRAPH_INITIALIZER and wire == 2:
            out += _length_delimited(GRAPH_INITIALIZER, _strip_tensor(buf, at, after, found))
        else:
            out += buf[key_at:after]
    return bytes(out)


def scan_model(path: str) -> tuple[bytes, dict] | None:
    """(the model's bytes without its graph's initializers' raw data, and
    where each such initializer's raw data lies in the file: ``{name:
    (offset, length)}``), or None when the file is not read this way."""
    with open(path, "rb") as f:
        try:
            view = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file
            return None
    try:
        out, found = bytearray(), {}
        for number, wire, key_at, at, after in _fields(view, 0, len(view)):
            if number == MODEL_GRAPH and wire == 2:
                out += _length_delimited(MODEL_GRAPH, _strip_graph(view, at, after, found))
            else:
                out += view[key_at:after]
        return bytes(out), found
    except WireError:
        return None
    finally:
        view.close()


class WeightReader:
    """Turns the initializers of a scanned model into numpy arrays, reading
    each one's raw data from the file into an array of its own."""

    def __init__(self, path: str | None = None, locations: dict | None = None):
        self.path = path
        self.locations = locations or {}
        self.file = None

    def __enter__(self):
        if self.path is not None:
            self.file = open(self.path, "rb")
        return self

    def __exit__(self, *exc):
        if self.file is not None:
            self.file.close()

    def array(self, tensor) -> np.ndarray:
        """The value of the TensorProto ``tensor`` (its raw data from the file
        when the scan took it out)."""
        from onnx import numpy_helper

        where = self.locations.get(tensor.name)
        if where is None:
            return numpy_helper.to_array(tensor)
        offset, length = where
        dtype = PLAIN_TYPES.get(tensor.data_type)
        shape = tuple(tensor.dims)
        count = int(np.prod(shape, dtype=np.int64))
        if dtype is not None and np.little_endian and np.dtype(dtype).itemsize * count == length:
            arr = np.empty(shape, dtype)
            self.file.seek(offset)
            if length and self.file.readinto(arr.reshape(-1).view(np.uint8)) != length:
                raise ValueError("the file ends inside the tensor's data")
            return arr
        # Packed or exotic types (bfloat16, float8, int4...): let onnx decode them.
        self.file.seek(offset)
        copy = type(tensor)()
        copy.CopyFrom(tensor)
        copy.raw_data = self.file.read(length)
        return numpy_helper.to_array(copy)
