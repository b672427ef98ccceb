"""Several trainer processes of one run on this machine's CPU, as a JobSet's Indexed trainer
Job runs them on several nodes: host 0's coordinator on a free local port."""

from __future__ import annotations

import re
from pathlib import Path

from testkit.emulator import free_port
from testkit.jobs import Job, trainer

# A global batch both hosts can split and that keeps an epoch of synthetic-small to ~230
# steps (gloo's CPU collectives cost tens of milliseconds per step here).
MULTIHOST = ["--accelerator", "cpu", "--batch-size", "2048", "--learning-rate", "0.005"]


def trainer_hosts(run_url: str, log_dir: Path, env: dict[str, str], count: int, *extra: str, epochs: int = 3,
                  indices: list[int] | None = None) -> list[Job]:
    """Trainer processes for hosts 0..count-1 of one run (or only those in `indices`)."""
    coordinator = f"localhost:{free_port()}"
    return [trainer(run_url, log_dir, env, *MULTIHOST, "--hosts", str(count), "--host-index", str(index),
                    "--coordinator", coordinator, *extra, epochs=epochs)
            for index in (range(count) if indices is None else indices)]


def weights_checksum(log: str) -> str:
    """The CRC32C of the trained weights a host logs at the end."""
    (found,) = re.findall(r"weights CRC32C ([0-9a-f]{8})", log)
    return found
