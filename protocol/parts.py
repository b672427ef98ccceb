"""The part (shard) format for training and eval examples: numpy only, self-describing.

A part is a set of named columns that share their first dimension (the examples):

    b"NCFPART1" | u32 little-endian header length | header (JSON, utf-8) | columns

The header gives the format version, the number of examples, and per column its name,
dtype, shape and byte offset. Columns start on 64-byte boundaries, so decoding is
np.frombuffer on the bytes as read: no copy, no parsing per example. Every part is listed
in its ready.json with its byte size and CRC32C (the checksum GCS itself keeps), and
reading verifies both before anything is decoded.
"""

from __future__ import annotations

import ctypes
import json
import struct
from dataclasses import dataclass

import google_crc32c
import numpy as np

from . import storage
from .errors import CorruptData
from .messages import PartInfo

FORMAT_VERSION = 1
MAGIC = b"NCFPART1"
_ALIGN = 64
_DTYPES = {"<u1", "<u2", "<u4", "<i4", "<i8", "|b1", "|u1", "<f4"}


def id_dtype(count: int) -> np.dtype:
    """The smallest unsigned type that holds ids 0..count-1 (uint16 up to 65,536 ids)."""
    return np.dtype(np.uint16) if count <= 1 << 16 else np.dtype(np.uint32)


def checksum(data: bytes | ctypes.Array) -> int:
    return google_crc32c.value(data)


@dataclass(frozen=True)
class Encoded:
    """A part's bytes, with its columns as writable arrays over them: fill in place, then write."""

    # A ctypes array rather than a bytearray: google_crc32c takes bytes or a buffer that
    # needs no release (which a bytearray or memoryview does), so this one is checksummed
    # and written as it is, with no copy.
    data: ctypes.Array
    columns: dict[str, np.ndarray]
    num_examples: int


def empty(num_examples: int, dtypes: dict[str, np.dtype], trailing: dict[str, tuple[int, ...]] | None = None) -> Encoded:
    """A part of num_examples examples, header written, columns to be filled, every element
    of them (shape: num_examples then trailing[name], if any). Filling its columns in place
    saves a copy of every byte; leaving them unset until then saves zeroing them (a tenth of
    the time of writing an epoch to local disk, bench/epoch_writer.py)."""
    num_examples = int(num_examples)
    shapes = {name: (num_examples, *(trailing or {}).get(name, ())) for name in dtypes}
    specs, ends, offset = [], [], 0
    for name, dtype in dtypes.items():
        dtype = np.dtype(dtype)
        specs.append({"name": name, "dtype": dtype.str, "shape": list(shapes[name]), "offset": offset})
        ends.append(offset + dtype.itemsize * int(np.prod(shapes[name])))
        offset = _aligned(ends[-1])
    header = json.dumps({"format": FORMAT_VERSION, "num_examples": num_examples, "columns": specs}).encode()
    start = _aligned(len(MAGIC) + 4 + len(header))
    memory = np.empty(start + offset, np.uint8)  # not zeroed: the columns get filled
    memory[:start] = 0
    memory[:len(MAGIC) + 4 + len(header)] = np.frombuffer(MAGIC + struct.pack("<I", len(header)) + header, np.uint8)
    for end, spec in zip(ends, [*specs[1:], {"offset": offset}]):  # the padding between columns: zero, as bytes are the checksum's
        memory[start + end:start + spec["offset"]] = 0
    data = (ctypes.c_char * len(memory)).from_buffer(memory)
    columns = {spec["name"]: np.frombuffer(data, spec["dtype"], int(np.prod(spec["shape"])), start + spec["offset"])
               .reshape(spec["shape"]) for spec in specs}
    return Encoded(data, columns, num_examples)


def encode(columns: dict[str, np.ndarray]) -> Encoded:
    """Serializes columns (same length along axis 0) into one part."""
    lengths = {len(a) for a in columns.values()}
    if len(lengths) != 1:
        raise ValueError(f"columns differ in length: { {k: len(a) for k, a in columns.items()} }")
    part = empty(lengths.pop(), {name: a.dtype for name, a in columns.items()},
                 {name: a.shape[1:] for name, a in columns.items()})
    for name, array in columns.items():
        part.columns[name][...] = array
    return part


def decode(data: bytes | memoryview, source: str = "part") -> dict[str, np.ndarray]:
    """Columns of a part as read-only arrays over `data` (no copy). Checks the layout."""
    view = memoryview(data)
    if len(view) < len(MAGIC) + 4 or bytes(view[: len(MAGIC)]) != MAGIC:
        raise CorruptData(f"{source}: not an ncf-tandem part (expected it to start with {MAGIC!r})")
    (header_len,) = struct.unpack_from("<I", view, len(MAGIC))
    try:
        header = json.loads(bytes(view[len(MAGIC) + 4 : len(MAGIC) + 4 + header_len]))
        if header["format"] != FORMAT_VERSION:
            raise CorruptData(f"{source}: part format {header['format']}, expected {FORMAT_VERSION}")
        start = _aligned(len(MAGIC) + 4 + header_len)
        columns = {}
        for spec in header["columns"]:
            dtype = np.dtype(spec["dtype"])
            if dtype.str not in _DTYPES or spec["shape"][0] != header["num_examples"]:
                raise ValueError(f"column {spec['name']!r}")
            count = int(np.prod(spec["shape"]))
            end = start + spec["offset"] + count * dtype.itemsize
            if end > len(view):
                raise CorruptData(f"{source}: truncated: column {spec['name']!r} ends at byte {end}, part has {len(view)}")
            array = np.frombuffer(view, dtype=dtype, count=count, offset=start + spec["offset"])
            columns[spec["name"]] = array.reshape(spec["shape"])
    except (ValueError, KeyError, TypeError, IndexError) as error:
        raise CorruptData(f"{source}: malformed part header ({error})") from None
    return columns


def write(url: str, columns: dict[str, np.ndarray]) -> PartInfo:
    """Writes one part to url and returns its listing for the ready.json."""
    return write_encoded(url, encode(columns))


def write_encoded(url: str, part: Encoded) -> PartInfo:
    """Writes a part; on GCS its CRC32C as the server computed it must equal ours (rewritten if not)."""
    crc32c = checksum(part.data)
    storage.write_bytes(url, part.data, crc32c=crc32c)
    return PartInfo(name=url.rstrip("/").rsplit("/", 1)[-1], num_examples=part.num_examples,
                    size=len(part.data), crc32c=crc32c)


def verify(data: bytes | memoryview, info: PartInfo, source: str) -> None:
    """Raises CorruptData unless data has the size and checksum its ready.json lists."""
    if len(data) != info.size:
        raise CorruptData(f"{source}: {len(data)} bytes, but ready.json lists {info.size} (truncated or rewritten part)")
    actual = checksum(data)
    if actual != info.crc32c:
        raise CorruptData(f"{source}: CRC32C {actual:#010x}, but ready.json lists {info.crc32c:#010x} (corrupted part)")


def read(url: str, info: PartInfo) -> dict[str, np.ndarray]:
    """Reads, verifies and decodes one listed part."""
    data = storage.read_bytes(url)
    verify(data, info, url)
    columns = decode(data, url)
    if len(next(iter(columns.values()))) != info.num_examples:
        raise CorruptData(f"{url}: holds a different number of examples than ready.json lists ({info.num_examples})")
    return columns


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN
