"""Running the two Jobs as separate OS processes, as Kubernetes runs them, for e2e tests."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from protocol import RunDir, storage
from protocol.runfiles import epoch_folders
from testkit.builders import REPO

# Small timings so failures surface in seconds; the defaults are minutes.
FAST = ["--heartbeat-interval", "0.5", "--peer-timeout", "8", "--start-timeout", "60"]


class Job:
    """One `python -m generator|trainer` process with its log captured to a file."""

    def __init__(self, module: str, args: list[str], log_dir: Path, env: dict[str, str]):
        self.module = module
        self.log_path = log_dir / f"{module}-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                                        stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.module} still running after {timeout} s; log:\n{self.log[-3000:]}")
        finally:
            self._log.close()

    def kill(self) -> None:
        """kill -9, as a node loss or OOM kill does."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)


def generator(run_url: str, log_dir: Path, env: dict[str, str], *extra: str) -> Job:
    return Job("generator", ["--data-dir", run_url, "--workers", "1", *FAST, *extra], log_dir, env)


def trainer(run_url: str, log_dir: Path, env: dict[str, str], *extra: str, epochs: int = 2) -> Job:
    args = ["--data-dir", run_url, "--dataset", "synthetic-small", "--epochs", str(epochs),
            "--eval-negatives", "99", *FAST, *extra]
    return Job("trainer", args, log_dir, env)


def wait_until(predicate: Callable[[], object], timeout: float, describe: str, poll: float = 0.2) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {describe}")


def ready_epochs(run_url: str) -> list[int]:
    return sorted(epoch for epoch, ready in epoch_folders(RunDir(run_url)).items() if ready)


def snapshot(run_url: str) -> dict[str, bytes]:
    """Every file under the run directory and its bytes (to prove something was left untouched)."""
    files = {}
    pending = [""]
    while pending:
        prefix = pending.pop()
        for name in storage.listdir(storage.join(run_url, prefix) if prefix else run_url):
            relative = f"{prefix}/{name}" if prefix else name
            url = storage.join(run_url, relative)
            try:
                files[relative] = storage.read_bytes(url)
            except (IsADirectoryError, FileNotFoundError, OSError):
                pending.append(relative)
    return files
