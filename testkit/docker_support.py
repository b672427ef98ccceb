"""Docker helpers for the image test: a stand-in base image, a wheelhouse, image builds.

No registry is reachable from the test machines, so `python:3.11-slim` usually
cannot be pulled. When it is missing we build an equivalent from Debian bookworm
with debootstrap (the official image is Debian bookworm plus CPython 3.11) and tag
it `python:3.11-slim`, so the real Dockerfiles build unchanged. The stand-in is a
normal image in the Docker engine, so it is made once per machine.

TensorFlow is a ~250 MB wheel. To keep a cold CI run short the test fills a
wheelhouse on the host with `pip download` (which uses the host's pip config,
caches and local mirrors), serves it on 127.0.0.1 and hands it to the build
through the Dockerfiles' `PIP_EXTRA_ARGS` build argument (`--no-index
--find-links ...`). Without that argument the Dockerfiles build plainly from PyPI.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import re
import shutil
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator
from testkit.builders import REPO

BASE_IMAGE = "python:3.11-slim"
STANDIN_LABEL = "org.ncf-tandem.base-image-standin"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
CACHE_DIR = Path(os.environ.get("NCF_TANDEM_CACHE", Path.home() / ".cache" / "ncf-tandem"))
DEFAULT_DEBIAN_MIRROR = "http://deb.debian.org/debian"


def log(msg: str) -> None:
    print(f"[docker_support] {msg}", file=sys.stderr, flush=True)


def docker(*args: str, check: bool = True, capture: bool = True, timeout: float | None = None,
           input: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], check=check, capture_output=capture, timeout=timeout,
                          input=input)


def docker_ready() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return docker("info", check=False, timeout=30).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def image_exists(ref: str) -> bool:
    return docker("image", "inspect", ref, check=False).returncode == 0


def image_size_bytes(ref: str) -> int:
    return int(docker("image", "inspect", "--format", "{{.Size}}", ref).stdout.decode().strip())


def _as_root(cmd: list[str]) -> list[str]:
    return cmd if os.geteuid() == 0 else ["sudo", *cmd]


def debian_mirror() -> str:
    """The Debian archive the host's apt uses (deb822 or one-line sources)."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for src in sources:
        if not src.is_file() or not (src.name.endswith(".sources") or src.name.endswith(".list")):
            continue
        text = src.read_text(errors="replace")
        # deb822: "URIs: http://deb.debian.org/debian" in a stanza whose Suites include bookworm
        for stanza in re.split(r"\n\s*\n", text):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
            if uris and suites and "bookworm" in suites.group(1).split() and "security" not in uris.group(1):
                return uris.group(1).rstrip("/")
        # one-line: "deb http://mirror/debian bookworm main"
        for m in re.finditer(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+bookworm\s", text, re.M):
            if "security" not in m.group(1):
                return m.group(1).rstrip("/")
    return DEFAULT_DEBIAN_MIRROR


def ensure_base_image(ref: str = BASE_IMAGE) -> str:
    """Make `ref` (python:3.11-slim) exist: as it is, pulled, or built with debootstrap.

    Returns how it was obtained: "present", "pulled" or "debootstrap".
    """
    if image_exists(ref):
        return "present"
    try:
        if docker("pull", ref, check=False, timeout=120).returncode == 0:
            return "pulled"
    except subprocess.TimeoutExpired:
        pass
    log(f"{ref} is not available and cannot be pulled; building a stand-in with debootstrap")
    build_standin_base_image(ref)
    return "debootstrap"


def build_standin_base_image(ref: str = BASE_IMAGE) -> None:
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap is not installed (scripts/system.sh installs it)")
    mirror = debian_mirror()
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    # debootstrap needs a real directory it owns (device nodes, chroot); root makes it.
    rootfs = Path(tempfile.mkdtemp(prefix="ncf-base-rootfs-", dir=CACHE_DIR))
    try:
        started = time.monotonic()
        subprocess.run(_as_root([
            "debootstrap", "--variant=minbase",
            "--include=python3,python3-venv,ca-certificates",
            "bookworm", str(rootfs), mirror,
        ]), check=True, capture_output=True)
        # Shape it like the official image: python, python3 and python3.11 on PATH
        # (the official image has them in /usr/local/bin), apt lists and caches removed.
        script = r"""
set -e
cd "$1"
mkdir -p usr/local/bin
ln -sf /usr/bin/python3.11 usr/local/bin/python3.11
ln -sf /usr/bin/python3.11 usr/local/bin/python3
ln -sf /usr/bin/python3.11 usr/local/bin/python
rm -rf var/lib/apt/lists/* var/cache/apt/*.bin var/cache/apt/archives/*.deb var/log/* tmp/*
"""
        subprocess.run(_as_root(["sh", "-c", script, "sh", str(rootfs)]), check=True)
        tar = subprocess.Popen(_as_root(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."]),
                               stdout=subprocess.PIPE)
        subprocess.run(
            ["docker", "import",
             "--change", "ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
             "--change", "ENV LANG=C.UTF-8",
             "--change", f"LABEL {STANDIN_LABEL}=debootstrap-bookworm",
             "--change", 'CMD ["python3"]',
             "-", ref],
            stdin=tar.stdout, check=True, capture_output=True)
        if tar.wait() != 0:
            raise RuntimeError("tar of the debootstrap root failed")
        log(f"built {ref} from {mirror} in {time.monotonic() - started:.0f} s")
    finally:
        subprocess.run(_as_root(["rm", "-rf", str(rootfs)]), check=False)


# --- wheelhouse -------------------------------------------------------------------

def _requirements_for(extra: str | None) -> list[str]:
    """Everything `pip install .[extra]` needs (extra: one or several, comma-separated), plus the
    build backend, as requirement strings."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    name = project["project"]["name"]
    optional = project["project"].get("optional-dependencies", {})
    reqs: list[str] = list(project["build-system"]["requires"]) + ["wheel"]
    reqs += project["project"]["dependencies"]
    pending, seen = extra.split(",") if extra else [], set()
    while pending:
        e = pending.pop()
        if e in seen:
            continue
        seen.add(e)
        for req in optional[e]:
            m = re.match(rf"^{re.escape(name)}\[([^\]]+)\]$", req.replace(" ", ""))
            if m:
                pending += m.group(1).split(",")
            else:
                reqs.append(req)
    return reqs


def fill_wheelhouse(extra: str | None) -> Path:
    """Download (once; pip skips files already there) the wheels an image build needs."""
    house = CACHE_DIR / "wheelhouse"
    house.mkdir(parents=True, exist_ok=True)
    reqs = _requirements_for(extra)
    stamp = house / (".complete-" + re.sub(r"[^A-Za-z0-9]+", "_", " ".join(sorted(reqs)))[:200])
    if stamp.exists():
        return house
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
                    "--python-version", "3.11", "--platform", "manylinux2014_x86_64",
                    "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_27_x86_64",
                    "--platform", "manylinux_2_17_x86_64", "--implementation", "cp",
                    "--dest", str(house), *reqs], check=True)
    stamp.touch()
    log(f"wheelhouse for [{extra or 'base'}] ready in {time.monotonic() - started:.0f} s")
    return house


@contextlib.contextmanager
def serve_directory(path: Path) -> Iterator[str]:
    """Serve `path` over HTTP on 127.0.0.1 (a pip --find-links page); yields the URL."""
    handler = functools.partial(_QuietHandler, directory=str(path))
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/"
        finally:
            server.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        pass


# --- image builds -----------------------------------------------------------------

_PEM = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


@functools.lru_cache(maxsize=None)
def host_only_ca_certs(base: str = BASE_IMAGE) -> str:
    """The host bundle's certificates that the base image does not already trust, as PEM.

    The whole host bundle (~220 kB) is too long for one command-line argument
    (Linux caps a single argument at 128 kB), and the Dockerfiles append
    EXTRA_CA_CERTS to the image's own bundle anyway, so only the difference
    (here: the TLS-intercepting proxy's CAs) needs to travel.
    """
    if not HOST_CA_BUNDLE.is_file():
        return ""
    in_base = docker("run", "--rm", "--network", "none", "--entrypoint", "cat", base,
                     "/etc/ssl/certs/ca-certificates.crt", check=False).stdout.decode()
    known = {"".join(c.split()) for c in _PEM.findall(in_base)}
    extra = [c for c in _PEM.findall(HOST_CA_BUNDLE.read_text()) if "".join(c.split()) not in known]
    return "\n".join(extra)


def build_image(dockerfile: str, tag: str, *, build_args: dict[str, str] | None = None,
                wheelhouse_url: str | None = None) -> float:
    """`docker build` one of the repository's Dockerfiles; returns seconds taken."""
    args = dict(build_args or {})
    extra_ca = host_only_ca_certs()
    if extra_ca:
        # This machine's network may intercept TLS: give pip the host's CAs.
        args["EXTRA_CA_CERTS"] = extra_ca
    if wheelhouse_url:
        args["PIP_EXTRA_ARGS"] = f"--no-index --find-links {wheelhouse_url}"
    cmd = ["docker", "build", "--network", "host", "-f", str(REPO / dockerfile), "-t", tag]
    for k, v in args.items():
        cmd += ["--build-arg", f"{k}={v}"]
    cmd.append(str(REPO))
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"docker build -f {dockerfile} failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    return time.monotonic() - started


def prune_superseded_builds(before: float) -> None:
    """Removes this project's untagged images made before `before` (a Unix time).

    Every rebuild leaves the previous images untagged, a few GB each time; images of
    this build stay, and with them the layer cache the next build uses.
    """
    docker("image", "prune", "--force", "--filter", "label=org.opencontainers.image.title=ncf-tandem",
           "--filter", f"until={int(before)}")
