"""A chaos bucket: a loopback HTTP/1.1 proxy in front of fake-gcs-server that injects the
faults a real bucket shows (DESIGN.md, "What a real bucket does") and counts them.

    chaos = ChaosBucket(emulator_url).start()       # .url: set STORAGE_EMULATOR_HOST to it
    chaos.add(lose(name="*/ready.json", create_only=True, times=1))
    chaos.add(shape(bandwidth=25e6, latency=0.02))  # every request, every connection
    ...; chaos.counts()  # {"lose": 1, "fail": 0, "forbid": 0, "stall": 0, "shape": 57}
    chaos.stop()

A rule selects requests by method, object name (fnmatch glob, `*` also matches `/`) and
create-only (an upload with ifGenerationMatch=0), and fires on every selected request, at most
`times` times, only within `window` = (start, end) seconds after it was added, and/or once per
object name (all given conditions must hold). Actions:
  lose   forward, let the server commit, read its whole answer, then answer 503 (`status`) or,
         with reset=True, reset the connection;
  fail   answer `status` (429 or 503) without forwarding (the request body is read and dropped);
  forbid answer 403 as GCS does to an identity without the IAM role (`forbid()` selects writes:
         POST, PUT, DELETE), without forwarding; with window=(0, 30), a grant that lands after 30 s;
  stall  read the request head, answer nothing for `seconds`, then close the connection (the
         request never reaches the server);
  shape  pace this request's bodies on its connection to `bandwidth` bytes/s in each direction
         and wait `latency` s before forwarding it (a connection carries one request at a time).
The first firing lose/fail/forbid/stall rule applies; the first firing shape rule applies as well.

The object name of a request (`describe`): the path of the JSON API, media download and upload
URLs, `name=` of an upload, the JSON metadata part of a multipart upload's body, the init request
of a resumable upload for its later chunks (upload_id; they inherit create-only too), `prefix=`
of a listing ("" for none); None for anything else (bucket calls), which no name rule selects.
Location headers that point at the emulator are rewritten to the proxy, so resumable chunks come
back through it.

Why hand-written rather than a mitmproxy addon: mitmproxy has no bandwidth throttling
(mitmproxy/mitmproxy#5208, open) and its body stream hooks are synchronous, so an addon cannot
pace a body without stalling every connection; while streaming it also cannot read a multipart
upload's object name before forwarding. Measured on this 2-core machine (bench/chaos_proxy.py,
16 concurrent 8 MiB objects via gcsfs, MB/s up/down): direct 240-330 / 1000-2200, this proxy
240-305 / 800-980, shaped at 25 MB/s per connection 155-212 / 345-365 (cap 400), mitmdump
(streamed bodies) 255-280 / 460-580.

The proxy runs in a daemon thread with its own asyncio loop in the process that creates it (a
test, or a bench; both import it from the testkit package), so rules change at run time through this
object (thread-safe), while the processes under test reach it over HTTP: pass `env()` to them.
`python -m testkit.chaos_bucket --upstream URL` runs one (optionally shaped) in the foreground.
Not handled: Expect: 100-continue, HTTPS, HTTP/2 (gcsfs uses none of them).
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

ACTIONS = ("lose", "fail", "forbid", "stall", "shape")
WRITES = ("POST", "PUT", "DELETE")
# Who the chaos bucket says was refused (GCS names the caller in its 403 message).
PRINCIPAL = "ncf-tandem@chaos-project.iam.gserviceaccount.com"
CHUNK = 256 * 1024
_OBJECT_PATH = re.compile(r"^(?:/download|/upload)?/storage/v1/b/([^/]+)/o(?:/(.+))?$")


@dataclass
class Rule:
    action: str
    method: str | tuple[str, ...] | None = None
    name: str | None = None
    create_only: bool | None = None
    times: int | None = None
    window: tuple[float, float] | None = None
    once_per_object: bool = False
    status: int = 503
    reset: bool = False
    seconds: float = 0.0
    bandwidth: float | None = None
    latency: float = 0.0
    message: str | None = None  # the error message of an injected answer (default: names the status)
    fired: int = field(default=0, init=False)
    added: float = field(default=0.0, init=False, repr=False)
    seen: set = field(default_factory=set, init=False, repr=False)

    def __post_init__(self):
        assert self.action in ACTIONS, self.action
        if isinstance(self.method, str):
            self.method = (self.method,)

    def selects(self, method: str, name: str | None, create_only: bool) -> bool:
        return ((self.method is None or method in self.method)
                and (self.name is None or (name is not None and fnmatch.fnmatchcase(name, self.name)))
                and (self.create_only is None or self.create_only == create_only))

    def fire(self, name: str | None, now: float) -> bool:
        """Whether it fires now (and records that it did)."""
        if self.window and not self.window[0] <= now - self.added < self.window[1]:
            return False
        if (self.times is not None and self.fired >= self.times) or (self.once_per_object and name in self.seen):
            return False
        self.fired += 1
        if self.once_per_object:
            self.seen.add(name)
        return True


def lose(*, status: int = 503, reset: bool = False, **select) -> Rule:
    return Rule("lose", status=status, reset=reset, **select)


def fail(status: int = 503, **select) -> Rule:
    return Rule("fail", status=status, **select)


def forbid(principal: str = PRINCIPAL, **select) -> Rule:
    """403 in GCS's words for a write by an identity that lacks roles/storage.objectUser."""
    select.setdefault("method", WRITES)
    return Rule("forbid", status=403, message=f"{principal} does not have storage.objects.create access to the "
                "Google Cloud Storage object. Permission 'storage.objects.create' denied on resource "
                "(or it may not exist).", **select)


def stall(seconds: float, **select) -> Rule:
    return Rule("stall", seconds=seconds, **select)


def shape(bandwidth: float | None = None, latency: float = 0.0, **select) -> Rule:
    return Rule("shape", bandwidth=bandwidth, latency=latency, **select)


def describe(method: str, target: str, content_type: str = "", body: bytes = b"") -> tuple[str | None, bool]:
    """(object name or None, create-only) of a request; `body` is the start of its body."""
    path, query = urlsplit(target)[2:4]
    q = parse_qs(query)
    create_only = q.get("ifGenerationMatch") == ["0"]
    match = _OBJECT_PATH.match(path)
    if not match:
        return None, create_only
    if match.group(2):
        return unquote(match.group(2)), create_only
    if "name" in q:
        return q["name"][0], create_only
    if method == "POST" and q.get("uploadType") == ["multipart"]:
        boundary = re.search(r'boundary="?([^";]+)', content_type)
        parts = body.split(b"--" + boundary.group(1).encode()) if boundary else []
        part = parts[1] if len(parts) > 1 else b""
        meta = re.search(rb'"name"\s*:\s*("(?:[^"\\]|\\.)*")', part)
        return (json.loads(meta.group(1)) if meta else None), create_only
    if method == "GET":
        return q.get("prefix", [""])[0], create_only
    return None, create_only


class _Pacer:
    """Paces one direction of one request to `rate` bytes/s from its first byte."""

    def __init__(self, rate: float | None):
        self.rate, self.start, self.sent = rate, None, 0

    async def __call__(self, n: int):
        if self.rate:
            now = time.monotonic()
            self.start = self.start or now
            self.sent += n
            delay = self.start + self.sent / self.rate - now
            if delay > 0:
                await asyncio.sleep(delay)

    @property
    def chunk(self) -> int:
        return min(CHUNK, max(16384, int(self.rate / 50))) if self.rate else CHUNK


class _Head:
    def __init__(self, raw: bytes):
        lines = raw.decode("latin-1").split("\r\n")[:-2]
        self.first = lines[0].split(" ", 2)
        self.headers = [tuple(s.strip() for s in line.split(":", 1)) for line in lines[1:] if ":" in line]

    def get(self, key: str) -> str:
        return next((v for k, v in self.headers if k.lower() == key), "")

    def set(self, key: str, value: str):
        self.headers = [(k, v) for k, v in self.headers if k.lower() != key.lower()] + [(key, value)]

    def encode(self) -> bytes:
        return ("\r\n".join([" ".join(self.first)] + [f"{k}: {v}" for k, v in self.headers]) + "\r\n\r\n").encode("latin-1")


async def _relay(reader, writer, head: _Head, pace: _Pacer, prefix: bytes = b"", to_eof: bool = False):
    """Copy the body that follows `head` (of which `prefix` was already read) to writer (None: drop)."""
    async def send(data: bytes):
        if writer is not None and data:
            await pace(len(data))
            writer.write(data)
            await writer.drain()

    async def copy(n: int):
        while n > 0:
            data = await reader.read(min(n, pace.chunk))
            if not data:
                raise ConnectionError("peer closed mid-body")
            n -= len(data)
            await send(data)

    await send(prefix)
    if "chunked" in head.get("transfer-encoding").lower():
        while True:
            line = await reader.readuntil(b"\r\n")
            await send(line)
            size = int(line.split(b";")[0], 16)
            if size == 0:
                while line != b"\r\n":  # trailers
                    line = await reader.readuntil(b"\r\n")
                    await send(line)
                return
            await copy(size + 2)
    elif head.get("content-length"):
        await copy(int(head.get("content-length")) - len(prefix))
    elif to_eof:
        while data := await reader.read(pace.chunk):
            await send(data)


class ChaosBucket:
    def __init__(self, upstream: str, host: str = "127.0.0.1", port: int = 0):
        self.upstream = upstream.rstrip("/")
        self._up_host, up_port = urlsplit(self.upstream).netloc.rsplit(":", 1)
        self._up_port = int(up_port)
        self._bind = (host, port)
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._counts = dict.fromkeys(ACTIONS, 0)
        self._uploads: dict[str, tuple[str | None, bool]] = {}  # upload_id -> (name, create-only)
        self.events: list[tuple[str, str, str | None]] = []  # (action, method, name) per injection
        self._tasks: set[asyncio.Task] = set()
        self.url = ""

    # ---- control (any thread) ----
    def start(self) -> ChaosBucket:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=lambda: (self._loop.run_forever(), self._loop.close()),
                                        name="chaos-bucket", daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, *self._bind, limit=4 * CHUNK), self._loop).result(10)
        self.url = "http://%s:%d" % self._server.sockets[0].getsockname()[:2]
        return self

    def stop(self):
        async def close():
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> ChaosBucket:
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def add(self, *rules: Rule) -> Rule:
        """Adds rules (after those already there); returns the last, whose .fired counts."""
        with self._lock:
            for rule in rules:
                rule.added = time.monotonic()
                self._rules.append(rule)
        return rules[-1]

    def clear(self):
        """Removes every rule; counts and events stay."""
        with self._lock:
            self._rules.clear()

    def counts(self) -> dict[str, int]:
        """Injections so far, per action (a shaped request counts once)."""
        with self._lock:
            return dict(self._counts)

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for a process under test: `base` (default os.environ) pointed at the proxy."""
        return {**(os.environ if base is None else base), "STORAGE_EMULATOR_HOST": self.url,
                "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}

    # ---- the proxy (its own thread) ----
    def _choose(self, method: str, name: str | None, create_only: bool) -> tuple[Rule | None, Rule | None]:
        now, chosen = time.monotonic(), {"fault": None, "shape": None}
        with self._lock:
            for rule in self._rules:
                slot = "shape" if rule.action == "shape" else "fault"
                if chosen[slot] is None and rule.selects(method, name, create_only) and rule.fire(name, now):
                    chosen[slot] = rule
                    self._counts[rule.action] += 1
                    self.events.append((rule.action, method, name))
        return chosen["fault"], chosen["shape"]

    async def _serve(self, creader, cwriter):
        """One client connection: its requests in turn, over one upstream connection (opened lazily)."""
        self._tasks.add(asyncio.current_task())
        upstream = [None, None]
        try:
            cwriter.transport.set_write_buffer_limits(high=4 * CHUNK)
            while await self._exchange(creader, cwriter, upstream):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError,
                asyncio.CancelledError):
            pass  # a peer went away, or stop(); ending quietly also keeps asyncio from logging it
        finally:
            for writer in (cwriter, upstream[1]):
                if writer is not None:
                    writer.close()
            self._tasks.discard(asyncio.current_task())

    async def _exchange(self, creader, cwriter, upstream: list) -> bool:
        """Handles one request; False when the client connection is done."""
        try:
            head = _Head(await creader.readuntil(b"\r\n\r\n"))
        except asyncio.IncompleteReadError:
            return False
        method, target = head.first[0], head.first[1]
        prefix, length = b"", int(head.get("content-length") or 0)
        if "uploadType=multipart" in target and length:
            prefix = await creader.readexactly(min(length, 65536))  # the JSON part names the object
        upload_id = parse_qs(urlsplit(target).query).get("upload_id", [None])[0]
        name, create_only = self._uploads.get(upload_id) or describe(method, target, head.get("content-type"), prefix)
        fault, shaper = self._choose(method, name, create_only)
        action = fault.action if fault else None
        if action == "stall":
            await asyncio.sleep(fault.seconds)
            return False
        if action in ("fail", "forbid"):
            await _relay(creader, None, head, _Pacer(None), prefix)
            await self._answer(cwriter, fault.status, fault.message)
            return True
        rate = shaper.bandwidth if shaper else None
        if shaper and shaper.latency:
            await asyncio.sleep(shaper.latency)
        if upstream[1] is None or upstream[1].is_closing():
            upstream[:] = await asyncio.open_connection(self._up_host, self._up_port, limit=4 * CHUNK)
            upstream[1].transport.set_write_buffer_limits(high=4 * CHUNK)
        ureader, uwriter = upstream
        head.set("Host", f"{self._up_host}:{self._up_port}")
        uwriter.write(head.encode())
        await _relay(creader, uwriter, head, _Pacer(rate), prefix)
        rhead = _Head(await ureader.readuntil(b"\r\n\r\n"))
        location = rhead.get("location")
        if location.startswith(self.upstream):  # a resumable upload's session URL: keep it on the proxy
            rhead.set("Location", self.url + location[len(self.upstream):])
            new_id = parse_qs(urlsplit(location).query).get("upload_id", [None])[0]
            if new_id:
                self._uploads[new_id] = (name, create_only)
        no_body = method == "HEAD" or rhead.first[1] in ("204", "304")
        to_eof = not (no_body or rhead.get("content-length") or "chunked" in rhead.get("transfer-encoding"))
        if action == "lose":
            if not no_body:
                await _relay(ureader, None, rhead, _Pacer(None), to_eof=to_eof)  # the server committed
            if fault.reset:
                cwriter.transport.get_extra_info("socket").setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                cwriter.transport.abort()  # linger 0: the client gets a RST
                return False
            await self._answer(cwriter, fault.status)
        else:
            cwriter.write(rhead.encode())
            if not no_body:
                await _relay(ureader, cwriter, rhead, _Pacer(rate), to_eof=to_eof)
            await cwriter.drain()
        if to_eof or "close" in rhead.get("connection").lower():
            uwriter.close()
            return action == "lose"  # the client got our complete 503; otherwise it got the close
        return True

    @staticmethod
    async def _answer(writer, status: int, message: str | None = None):
        reason = {403: "Forbidden", 429: "Too Many Requests", 503: "Service Unavailable"}.get(status, "Error")
        message = message or f"chaos bucket: injected {status}"
        body = json.dumps({"error": {"code": status, "message": message}}).encode()
        writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()


def start_process(upstream: str, bandwidth: float | None = None, latency: float = 0.0) -> tuple[subprocess.Popen, str]:
    """A shaping chaos bucket in a process of its own (its asyncio loop then competes with nobody's
    GIL: the benches); returns the process and its URL."""
    command = [sys.executable, "-m", "testkit.chaos_bucket", "--upstream", upstream, "--latency", str(latency)]
    process = subprocess.Popen(command + (["--bandwidth", str(bandwidth)] if bandwidth else []),
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    url = process.stdout.readline().strip()
    if not url.startswith("http"):
        process.kill()
        raise RuntimeError("the chaos bucket proxy did not start")
    return process, url


if __name__ == "__main__":  # python -m testkit.chaos_bucket --upstream URL [--port N] [--bandwidth B] [--latency S]
    import argparse

    parser = argparse.ArgumentParser(description="Run a chaos bucket proxy in the foreground (Ctrl-C ends it).")
    parser.add_argument("--upstream", required=True, help="emulator URL, e.g. http://127.0.0.1:4443")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--bandwidth", type=float, help="bytes/s per connection and direction")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added per request")
    args = parser.parse_args()
    with ChaosBucket(args.upstream, port=args.port) as chaos:
        if args.bandwidth or args.latency:
            chaos.add(shape(args.bandwidth, args.latency))
        print(chaos.url, flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print(json.dumps(chaos.counts()))
