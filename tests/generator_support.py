"""Helpers for the generator tests: commands, running the CLI, reading what it wrote."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from protocol import Command, DatasetSpec, Ready, RunDir, Status, parts, storage

REPO = Path(__file__).resolve().parent.parent


def make_command(dataset: str = "ml-100k", ratings: str | None = None, **settings) -> Command:
    defaults = dict(run_id="test-run", epochs=2, num_neg=4, eval_negatives=99, eval_mode="mlperf", seed=7,
                    buffer_epochs=10)
    return Command(dataset=DatasetSpec(name=dataset, ratings=ratings), **{**defaults, **settings})


def publish_command(run_url: str, command: Command) -> None:
    storage.publish_once(RunDir(run_url).command, command)


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
    return storage.read_message(RunDir(run_url).status(side), Status)


def write_trainer_status(run_url: str, state: str, epochs_done: int = 0, message: str | None = None,
                         run_id: str = "test-run") -> None:
    storage.overwrite(RunDir(run_url).status("trainer"),
                      Status(side="trainer", state=state, run_id=run_id, epoch=None, epochs_done=epochs_done,
                             time=time.time(), message=message))

