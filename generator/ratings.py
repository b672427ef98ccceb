"""Raw MovieLens ratings: read a local or gs:// copy, or download it from GroupLens.

Every reader returns RawRatings (original user ids, item ids and timestamps; the rating
value itself is ignored: NCF treats every rating as an implicit positive). Parsing uses
numpy's C reader (`np.loadtxt`), about 3 s for ml-20m's 540 MB CSV, no pandas.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import urllib.request
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from protocol import InvalidInput, storage
from protocol.errors import first_line

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RawRatings:
    user: np.ndarray  # int64, original ids
    item: np.ndarray  # int64, original ids
    timestamp: np.ndarray  # int64
    fingerprint: str  # of the source bytes (or the synthetic recipe): keys the preprocessing cache

    def __len__(self) -> int:
        return len(self.user)


@dataclass(frozen=True)
class Format:
    """How one MovieLens release lays out its ratings file."""

    member: str  # the file inside GroupLens' zip
    first_line: re.Pattern[bytes]  # recognizes the file (a header, or the first data row)
    expected: str  # for error messages: what the first line should look like
    header_lines: int  # lines to skip before the data
    separator: bytes


FORMATS = {
    "ml-100k": Format("ml-100k/u.data", re.compile(rb"^\d+\t\d+\t[\d.]+\t\d+\r?$"),
                      "tab-separated 'user item rating timestamp' rows (u.data)", 0, b"\t"),
    "ml-100k.inter": Format("", re.compile(rb"^user_id:token\titem_id:token\trating:float\ttimestamp:float\r?$"),
                            "the header 'user_id:token item_id:token rating:float timestamp:float'", 1, b"\t"),
    "ml-1m": Format("ml-1m/ratings.dat", re.compile(rb"^\d+::\d+::[\d.]+::\d+\r?$"),
                    "'user::item::rating::timestamp' rows (ratings.dat)", 0, b"::"),
    "ml-20m": Format("ml-20m/ratings.csv", re.compile(rb"^userId,movieId,rating,timestamp\r?$"),
                     "the header 'userId,movieId,rating,timestamp' (ratings.csv)", 1, b","),
}

# GroupLens publishes an MD5 per zip (ml-*.zip.md5); those are the digests pinned here.
# The download is also the cache key, so a warm cache needs no network at all.
GROUPLENS = "https://files.grouplens.org/datasets/movielens"
DOWNLOADS = {
    "ml-100k": (f"{GROUPLENS}/ml-100k.zip", "md5", "0e33842e24a9c977be4e0107933c0723"),
    "ml-1m": (f"{GROUPLENS}/ml-1m.zip", "md5", "c4d9eecfca2ab87c1945afe126590906"),
    "ml-20m": (f"{GROUPLENS}/ml-20m.zip", "md5", "cd245b17a1ae2cc31bb14903e1204af3"),
}


@dataclass(frozen=True)
class Source:
    """Where ratings come from: a cache key known up front, and how to load them on a miss."""

    name: str
    fingerprint: str
    load: Callable[[], RawRatings]


def movielens_source(name: str, url: str | None) -> Source:
    """A MovieLens release at url (its bytes are read once, to fingerprint them) or from GroupLens."""
    if url is None:
        download_url, algorithm, digest = DOWNLOADS[name]
        fingerprint = f"{algorithm}:{digest}"
        return Source(name, fingerprint, lambda: _ratings(name, download(name), download_url, fingerprint))
    data = read_source(url)
    fingerprint = "sha256:" + hashlib.sha256(data).hexdigest()
    return Source(name, fingerprint, lambda: _ratings(name, data, url, fingerprint))


def read_source(url: str) -> bytes:
    try:
        return storage.read_bytes(url)
    except FileNotFoundError:
        raise InvalidInput(f"{url}: ratings file not found (dataset.ratings in command.json)") from None
    except IsADirectoryError:
        raise InvalidInput(f"{url}: is a folder; dataset.ratings must name the ratings file itself") from None


def _ratings(name: str, data: bytes, source: str, fingerprint: str) -> RawRatings:
    return RawRatings(*parse(name, data, source), fingerprint=fingerprint)


def parse(name: str, data: bytes, source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parses one ratings file; a wrong file or a malformed row raises InvalidInput."""
    fmt = _recognize(name, data, source)
    if fmt.separator == b"::":  # loadtxt splits on one character only
        data = data.replace(b"::", b"\t")
    delimiter = "\t" if fmt.separator in (b"\t", b"::") else fmt.separator.decode()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # an empty file is an error, not a warning
            table = np.loadtxt(io.BytesIO(data), delimiter=delimiter, skiprows=fmt.header_lines,
                               usecols=(0, 1, 3), dtype=np.int64, ndmin=2)
    except (ValueError, UserWarning) as error:
        reason = first_line(error, limit=None)
        raise InvalidInput(f"{source}: malformed {name} ratings: {reason} "
                           f"(expected 4 columns: user, item, rating, timestamp)") from None
    if len(table) == 0:
        raise InvalidInput(f"{source}: no ratings in the file")
    return table[:, 0].copy(), table[:, 1].copy(), table[:, 2].copy()


def _recognize(name: str, data: bytes, source: str) -> Format:
    first = data[: data.find(b"\n")] if b"\n" in data else data
    candidates = [FORMATS[name]] + ([FORMATS["ml-100k.inter"]] if name == "ml-100k" else [])
    for fmt in candidates:
        if fmt.first_line.match(first):
            return fmt
    expected = " or ".join(f.expected for f in candidates)
    shown = first[:80].decode("utf-8", "replace")
    raise InvalidInput(f"{source}: not a {name} ratings file: expected {expected}, "
                       f"but the first line is {shown!r}")


def download(name: str) -> bytes:
    """Downloads a MovieLens zip from GroupLens, checks its pinned digest, returns the ratings."""
    url, algorithm, digest = DOWNLOADS[name]
    log.info("downloading %s from %s", name, url)
    archive = fetch_verified(url, algorithm, digest)
    member = FORMATS[name].member
    with zipfile.ZipFile(io.BytesIO(archive)) as zipped:
        return zipped.read(member)


def fetch_verified(url: str, algorithm: str, digest: str, timeout: float = 60.0) -> bytes:
    """The bytes at url, if their digest is the pinned one.

    A network failure raises OSError (exit code 1: a retry may help); a digest mismatch
    raises InvalidInput (exit code 2: the pinned file is not what the server has).
    """
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data = response.read()
    except OSError as error:
        raise OSError(f"could not download {url} ({error}); without network access, put the ratings "
                      f"file in a bucket or folder and name it in dataset.ratings") from None
    actual = hashlib.new(algorithm, data).hexdigest()
    if actual != digest:
        raise InvalidInput(f"{url}: {algorithm} is {actual}, expected the pinned {digest} "
                           f"(the file changed upstream or the download is corrupt)")
    return data
