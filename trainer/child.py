"""The generator as a child process of the trainer (--spawn-generator, the laptop default)."""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import signal
import subprocess
import sys

from protocol import EXIT_INVALID, MessageError, PeerError, RunDir, Status, flags, storage
from protocol.errors import PeerFailedFinally

from .config import GENERATOR_PREFIX, Config, generator_rows

log = logging.getLogger("ncf.trainer")


def _die_with_parent() -> None:
    # In the child, before exec: SIGTERM when the trainer dies, even by kill -9 (Linux).
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def spawn_generator(config: Config) -> subprocess.Popen:
    argv = [sys.executable, "-m", "generator", *generator_args(config)]
    log.info("starting the generator: %s", " ".join(argv))
    # stdout/stderr inherited: the child's log lines go to the same stderr.
    child = subprocess.Popen(argv, preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    child.status_url = RunDir(config.data_dir).status("generator")  # where its own last words are
    return child


def generator_args(config: Config) -> list[str]:
    """The generator's flags from the trainer's: the ones both have (--data-dir, the timeouts),
    every --generator-NAME given as --NAME, and --shard 0 --shards 1: the child is the run's
    only pod, even where the trainer runs in an Indexed Job whose JOB_COMPLETION_INDEX it inherits."""
    args = ["--shard=0", "--shards=1"]
    for row in generator_rows():
        name = row.name.removeprefix(GENERATOR_PREFIX)
        value = config.generator.get(name) if row.name.startswith(GENERATOR_PREFIX) else getattr(config, name)
        args += flags.to_argv(dataclasses.replace(row, name=name), value)
    return args


def check_alive(child: subprocess.Popen | None) -> None:
    """Raises PeerError once a spawned generator has exited with an error; the message ends
    with the generator's own (its status/generator.json, when that is this child's). Its exit 2
    (invalid input) is the trainer's too: PeerFailedFinally."""
    if child is not None and child.poll() is not None and child.returncode != 0:
        why = _last_words(child)
        if child.returncode == EXIT_INVALID:
            raise PeerFailedFinally("generator (child process)", child.returncode, why)
        raise PeerError(f"the generator (child process) exited with code {child.returncode}"
                        + (f": {why}" if why else ""))


def _last_words(child: subprocess.Popen) -> str | None:
    """The failure message the child left in its heartbeat, if the heartbeat is its (same pid)."""
    url = getattr(child, "status_url", None)
    if url is None:
        return None
    try:
        status = storage.read_message(url, Status)
    except (OSError, MessageError):
        return None
    if status.pid != child.pid or status.state != "failed" or not status.message:
        return None
    return status.message


def stop_child(child: subprocess.Popen | None, grace: float = 30.0) -> None:
    if child is None:
        return
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            log.warning("the generator did not stop within %.0f s of SIGTERM; killing it", grace)
            child.kill()
    child.wait()
    log.info("the generator child exited with code %s", child.returncode)
