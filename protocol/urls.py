"""Where a URL points: a local path or gs://bucket/prefix, its scheme read in one place.

`split` is the only code that looks for "://"; everything else (the backends, the storage
facade, the run layout) asks it. Pure string algebra: nothing here touches a disk or a bucket.
"""

from __future__ import annotations

import os
import posixpath

from .errors import InvalidInput

SCHEMES = ("file", "gs")


def split(url: str) -> tuple[str, str]:
    """(scheme, the rest); the scheme is "" for a plain local path."""
    scheme, separator, rest = url.partition("://")
    return (scheme, rest) if separator else ("", url)


def location(url: str) -> tuple[str, str]:
    """(scheme, path) as a backend addresses it: ("file", an absolute path) or ("gs", bucket/prefix)."""
    scheme, rest = split(url)
    scheme = scheme or "file"
    if scheme not in SCHEMES:
        raise InvalidInput(f"{url}: expected a local path or a gs://bucket/prefix URL")
    return (scheme, os.path.abspath(rest)) if scheme == "file" else (scheme, rest)


def bucket(url: str) -> str:
    """gs://bucket/prefix -> bucket."""
    return split(url)[1].split("/", 1)[0]


def join(url: str, *names: str) -> str:
    return os.path.join(url, *names) if _plain_path(url) else posixpath.join(url.rstrip("/"), *names)


def absolute(url: str) -> str:
    """The URL with a local path made absolute (a child process may run elsewhere)."""
    return os.path.abspath(url) if _plain_path(url) else url


def parent(url: str) -> str:
    """The folder that holds url: gs://b/runs/x -> gs://b/runs; a bucket's root is its own parent."""
    if _plain_path(url):
        return os.path.dirname(os.path.abspath(url))
    scheme, path = split(url)
    path = path.rstrip("/")
    return f"{scheme}://{posixpath.dirname(path) or path}"


def sibling(url: str, name: str) -> str:
    """`name` in the folder that holds url."""
    return join(parent(url), name)


def _plain_path(url: str) -> bool:
    return split(url)[0] == ""
