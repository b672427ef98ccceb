"""The part format: self-describing, verified against its ready.json listing on read."""

import numpy as np
import pytest

from protocol import CorruptData, parts, storage
from protocol.errors import EXIT_INVALID, exit_code_for


def train_columns(n=1000, num_items=26_744, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "user": rng.integers(0, 138_493, n).astype(parts.id_dtype(138_493)),
        "item": rng.integers(0, num_items, n).astype(parts.id_dtype(num_items)),
        "label": rng.integers(0, 2, n).astype(np.uint8),
    }


def test_round_trip_keeps_values_dtypes_and_shapes(run_url):
    columns = train_columns()
    columns["candidates"] = np.arange(1000 * 7, dtype=np.uint32).reshape(1000, 7)
    url = storage.join(run_url, "epochs", "000000", "part-00000")
    info = parts.write(url, columns)
    assert info.name == "part-00000" and info.num_examples == 1000
    read = parts.read(url, info)
    assert read.keys() == columns.keys()
    for name, array in columns.items():
        assert read[name].dtype == array.dtype and read[name].shape == array.shape
        np.testing.assert_array_equal(read[name], array)


def test_item_ids_beyond_65535_are_kept():
    assert parts.id_dtype(65_536) == np.uint16
    assert parts.id_dtype(65_537) == np.uint32
    items = np.array([0, 65_535, 65_536, 4_000_000_000], dtype=parts.id_dtype(5_000_000_000 // 2))
    decoded = parts.decode(parts.encode({"item": items}).data)
    assert decoded["item"].tolist() == [0, 65_535, 65_536, 4_000_000_000]


def test_bytes_outside_the_columns_are_zero_whatever_the_memory_held():
    for _ in range(20):  # leave freed memory full of ones for the next part to reuse
        np.full(1 << 16, 255, np.uint8)
    columns = {"label": np.ones(3, np.uint8), "item": np.full(3, 7, np.uint32)}
    part = parts.encode(columns)
    data = np.frombuffer(part.data, np.uint8)
    inside = np.zeros(len(data), bool)
    header_end = len(parts.MAGIC) + 4 + int.from_bytes(bytes(data[8:12]), "little")
    inside[:header_end] = True
    for column in part.columns.values():
        offset = column.__array_interface__["data"][0] - data.__array_interface__["data"][0]
        inside[offset:offset + column.nbytes] = True
    assert not data[~inside].any() and (~inside).sum() > 100
    assert bytes(part.data) == bytes(parts.encode(columns).data)


def test_header_describes_format_counts_and_dtypes():
    data = bytes(parts.encode(train_columns(n=3)).data)
    assert data.startswith(parts.MAGIC)
    assert b'"format": 1' in data and b'"num_examples": 3' in data and b'"<u4"' in data


@pytest.fixture
def written_part(run_url):
    url = storage.join(run_url, "part-00000")
    return url, parts.write(url, train_columns())


def test_truncated_part_is_rejected(written_part):
    url, info = written_part
    storage.write_bytes(url, storage.read_bytes(url)[:-100])
    with pytest.raises(CorruptData, match="truncated") as caught:
        parts.read(url, info)
    assert url in str(caught.value)
    assert exit_code_for(caught.value) == EXIT_INVALID


def test_one_flipped_byte_is_rejected(written_part):
    url, info = written_part
    data = bytearray(storage.read_bytes(url))
    data[len(data) // 2] ^= 0x01
    storage.write_bytes(url, bytes(data))
    with pytest.raises(CorruptData, match=r"CRC32C .* \(corrupted part\)"):
        parts.read(url, info)


def test_decode_rejects_bytes_that_are_not_a_part():
    with pytest.raises(CorruptData, match="not an ncf-tandem part"):
        parts.decode(b"PK\x03\x04 a zip file")
    data = bytearray(parts.encode(train_columns(n=10)).data)
    with pytest.raises(CorruptData, match="truncated"):
        parts.decode(bytes(data[:-64]))
    data[20] = ord("{") ^ 0xFF  # break the JSON header
    with pytest.raises(CorruptData, match="malformed part header"):
        parts.decode(bytes(data))


def test_columns_must_share_their_length():
    with pytest.raises(ValueError, match="differ in length"):
        parts.encode({"user": np.zeros(3, np.uint32), "item": np.zeros(4, np.uint16)})
