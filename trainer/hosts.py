"""Several trainer hosts, one run: who is who, and what share of the data each takes.

One trainer process per GPU node or TPU worker; together they train synchronously, data
parallel, on Keras 3's JAX backend (docs/multihost-spike.md says why not TensorFlow's
MultiWorkerMirroredStrategy). Host 0 runs JAX's coordination service and alone writes to the
run directory; every host reads its share of each epoch and of the eval users.

The defaults come from what Kubernetes and GKE put in a pod's environment: an Indexed Job's
JOB_COMPLETION_INDEX, and on a multi-host TPU slice TPU_WORKER_ID and TPU_WORKER_HOSTNAMES.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time

from protocol.errors import PeerError

log = logging.getLogger("ncf.trainer")

COORDINATOR_PORT = 8476  # JAX's customary coordinator port (jax.distributed's own examples)


def _tpu_workers() -> list[str]:
    return [name for name in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if name]


def default_count() -> int:
    return len(_tpu_workers()) or 1


def default_index() -> int:
    for name in ("JOB_COMPLETION_INDEX", "TPU_WORKER_ID"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def default_coordinator() -> str | None:
    workers = _tpu_workers()
    return f"{workers[0]}:{COORDINATOR_PORT}" if workers else None


def share(size: int, index: int, count: int) -> tuple[int, int]:
    """Host `index`'s contiguous range [start, stop) of `size` things: the hosts' ranges
    cover them in order and differ in length by at most one."""
    return size * index // count, size * (index + 1) // count


def split_address(address: str) -> tuple[str, int] | None:
    """(host, port) of HOST:PORT (an IPv6 host in brackets), or None if it is not that."""
    host, _, port = address.rpartition(":")
    return (host.strip("[]"), int(port)) if host and port.isdigit() else None


def join(count: int, index: int, coordinator: str, timeout: float) -> None:
    """Every host checks in with host 0 at the coordinator's address before JAX starts there:
    JAX aborts the process (no exception, no names) when a host never registers, while this
    says which hosts are missing, as a PeerError (exit 3) on every host that did join.
    Host 0 answers once all have joined, then frees the port for JAX's coordination service."""
    address = split_address(coordinator)
    deadline = time.monotonic() + timeout
    if index == 0:
        _gather(count, address[1], deadline, coordinator, timeout)
    else:
        _check_in(count, index, address, deadline, coordinator, timeout)
    log.info("trainer host %d of %d: all %d hosts joined at %s", index, count, count, coordinator)


def _gather(count: int, port: int, deadline: float, coordinator: str, timeout: float) -> None:
    joined: dict[int, socket.socket] = {}
    dual = socket.has_dualstack_ipv6()  # IPv4-only pods have no AF_INET6
    family = socket.AF_INET6 if dual else socket.AF_INET
    with socket.create_server(("", port), family=family, dualstack_ipv6=dual) as server:
        while len(joined) < count - 1 and time.monotonic() < deadline:
            server.settimeout(max(0.01, min(1.0, deadline - time.monotonic())))
            try:
                peer, _ = server.accept()
            except TimeoutError:
                continue
            peer.settimeout(5)
            try:
                hello = _read_line(peer).split()
            except OSError:  # a stranger that says nothing, or hangs up
                peer.close()
                continue
            if len(hello) == 3 and hello[0] == HELLO and hello[2] == str(count) and hello[1].isdigit():
                joined[int(hello[1])] = peer
            else:  # a host started with other --hosts, or a stranger on the port
                peer.sendall(f"{REFUSED} expected '{HELLO} <index> {count}', got {' '.join(hello)!r}\n".encode())
                peer.close()
    missing = sorted(set(range(1, count)) - set(joined))
    reply = f"{GO}\n" if not missing else f"{MISSING} {','.join(map(str, missing))}\n"
    for peer in joined.values():
        with contextlib.suppress(OSError):
            peer.sendall(reply.encode())
        peer.close()
    if missing:
        raise PeerError(f"trainer host(s) {_names(missing)} of {count} never joined host 0 at {coordinator} "
                        f"within --start-timeout {timeout:g} s")


def _check_in(count: int, index: int, address: tuple[str, int], deadline: float, coordinator: str,
              timeout: float) -> None:
    while True:
        word, _, rest = _ask(address, f"{HELLO} {index} {count}\n", deadline).partition(" ")
        if word == GO:
            return
        if word == MISSING:
            raise PeerError(f"trainer host(s) {_names(rest.split(','))} of {count} never joined host 0 at "
                            f"{coordinator} within --start-timeout {timeout:g} s")
        if word == REFUSED:
            raise PeerError(f"trainer host 0 at {coordinator} refused host {index}: {rest}")
        # No answer of ours: host 0 is not listening yet (DNS, the pod still starting), or an earlier
        # attempt's JAX service still holds the port until its own host 0 fails and restarts.
        if time.monotonic() >= deadline:
            raise PeerError(f"trainer host 0 did not answer at {coordinator} within --start-timeout "
                            f"{timeout:g} s (this is host {index} of {count})")
        time.sleep(0.5)


def _ask(address: tuple[str, int], hello: str, deadline: float) -> str:
    """Host 0's one-line answer to hello ("" if none came)."""
    try:
        with socket.create_connection(address, timeout=max(0.01, deadline - time.monotonic())) as host0:
            host0.sendall(hello.encode())
            host0.settimeout(max(0.01, deadline - time.monotonic()) + 5)  # host 0 answers at its deadline
            return _read_line(host0)
    except OSError:
        return ""


def _read_line(peer: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n") and len(data) < 1024:
        chunk = peer.recv(1024)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()


def _names(indices) -> str:
    return ", ".join(str(i) for i in indices)


HELLO, GO, MISSING, REFUSED = "ncf-trainer-host", "go", "missing", "refused"
