"""Helpers for the generator tests: commands, running the CLI, reading what it wrote."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from protocol import Command, Ready, RunDir, Status, parts, storage
from testkit import builders
from testkit.builders import REPO



def make_command(dataset: str = "ml-100k", ratings: str | None = None, **settings) -> Command:
    """The generator tests' usual command: 2 epochs, 99 eval negatives, a buffer that never fills."""
    defaults = dict(epochs=2, eval_negatives=99, seed=7, buffer_epochs=10)
    return builders.command(dataset, ratings, **{**defaults, **settings})


def generator_args(run_url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "generator", "--data-dir", run_url, "--heartbeat-interval", "0.2", *extra]


def run_generator(run_url: str, env: dict, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(generator_args(run_url, *extra), cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def start_generator(run_url: str, env: dict, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(generator_args(run_url, *extra), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def read_ready(run_url: str, epoch: int | None) -> Ready:
    run = RunDir(run_url)
    folder = run.eval_dir if epoch is None else run.epoch_dir(epoch)
    return storage.read_message(RunDir.ready(folder), Ready)


def read_columns(run_url: str, epoch: int | None) -> dict[str, np.ndarray]:
    """All parts of an epoch (or of the eval data), checked against ready.json, concatenated."""
    run = RunDir(run_url)
    folder = run.eval_dir if epoch is None else run.epoch_dir(epoch)
    ready = read_ready(run_url, epoch)
    columns = [parts.read(storage.join(folder, p.name), p) for p in ready.parts]
    return {name: np.concatenate([c[name] for c in columns]) for name in columns[0]}


def part_bytes(run_url: str, epoch: int) -> list[bytes]:
    folder = RunDir(run_url).epoch_dir(epoch)
    return [storage.read_bytes(storage.join(folder, p.name)) for p in read_ready(run_url, epoch).parts]


def read_status(run_url: str, side: str = "generator") -> Status:
    status = builders.read_status(run_url, side)
    assert status is not None, f"no status/{side}.json"
    return status

