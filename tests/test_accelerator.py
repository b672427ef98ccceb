"""`ncf-trainer --accelerator auto|cpu|gpu|tpu` (GitHub issue 18 item 3): asked for a GPU or a
TPU it cannot find, the trainer exits 2 at once, in one line naming what it expected, what it
found and why, before it touches the bucket; it never trains on the CPU instead. auto and cpu
train. The chart's accelerator presets ask for the device they schedule on. Real TensorFlow
(a CPU-only build here) and real processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from protocol import InvalidInput, Result, storage
from testkit.builders import REPO
from testkit.k8s_support import job, load_values, main_container, render
from testkit.trainer_support import command, run_cli, trainer_args, write_run
from trainer import strategy

# What GKE injects into a container given google.com/tpu.
GKE_TPU_ENV = {"TPU_WORKER_ID": "0", "TPU_WORKER_HOSTNAMES": "localhost", "TPU_ACCELERATOR_TYPE": "v5litepod-4"}
PROFILES = REPO / "charts" / "ncf-tandem" / "ci"


@pytest.fixture
def no_tpu_env(monkeypatch):
    for name in strategy.TPU_ENV:
        monkeypatch.delenv(name, raising=False)


def test_gpu_asked_for_without_one_names_what_it_found(no_tpu_env):
    hardware = strategy.detect("gpu")
    assert hardware.gpus == ()  # the premise: no GPU on this machine
    with pytest.raises(InvalidInput) as error:
        strategy.require("gpu", hardware)
    message = str(error.value)
    assert message.startswith("--accelerator gpu: expected a GPU, found only the CPU: ")
    assert "CUDA" in message and "\n" not in message


def test_tpu_asked_for_where_none_is_announced_names_gke_variables(no_tpu_env):
    hardware = strategy.detect("tpu")
    with pytest.raises(InvalidInput) as error:
        strategy.require("tpu", hardware)
    message = str(error.value)
    assert message.startswith("--accelerator tpu: expected a TPU, found only the CPU: no TPU announced")
    assert all(name in message for name in GKE_TPU_ENV)


def test_auto_and_cpu_need_no_accelerator(no_tpu_env):
    for accelerator in ("auto", "cpu"):
        strategy.require(accelerator, strategy.Hardware())  # no error
    assert strategy.choose(strategy.detect("cpu")).kind == "cpu"


def trainer_process(tmp_path: Path, accelerator: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    url = str(tmp_path / "run")
    return subprocess.run([sys.executable, "-m", "trainer", "--data-dir", url, "--dataset", "synthetic-small",
                           "--accelerator", accelerator], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow  # a real trainer process (TensorFlow's import)
@pytest.mark.parametrize("accelerator, extra_env, expected", [
    ("gpu", {}, "--accelerator gpu: expected a GPU, found only the CPU: "),
    ("tpu", {}, "--accelerator tpu: expected a TPU, found only the CPU: no TPU announced"),
    # GKE's variables set, but no TPU behind them: TensorFlow's initialisation error is named.
    ("tpu", GKE_TPU_ENV, "--accelerator tpu: expected a TPU, found only the CPU: NotFoundError: "),
])
def test_a_trainer_without_the_device_exits_2_before_the_bucket(tmp_path, cli_env, accelerator, extra_env,
                                                               expected):
    env = {k: v for k, v in cli_env.items() if k not in strategy.TPU_ENV} | extra_env
    done = trainer_process(tmp_path, accelerator, env)
    assert done.returncode == 2, done.stderr[-3000:]
    assert expected in done.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "run").exists()  # nothing written, nothing waited for


@pytest.mark.slow  # trains two epochs in process
@pytest.mark.parametrize("accelerator", ["auto", "cpu"])
def test_auto_and_cpu_train(tmp_path, no_tpu_env, accelerator, capsys):
    cmd = command(epochs=2)
    run = write_run(str(tmp_path / "run"), cmd)
    assert run_cli(trainer_args(run.url, cmd, "--accelerator", accelerator)) == 0
    assert storage.read_message(run.result, Result).epochs_trained == 2
    assert "hardware: cpu (1 replica(s))" in capsys.readouterr().err


def trainer_accelerator_flag(values: dict) -> list[str]:
    return [arg for arg in main_container(job(render(values), "trainer"))["args"] if arg.startswith("--accelerator")]


@pytest.mark.parametrize("profile, flag", [
    ("gke-l4-values.yaml", "--accelerator=gpu"),
    ("gke-l4-jobset-values.yaml", "--accelerator=gpu"),
    ("gke-tpu-v5e-values.yaml", "--accelerator=tpu"),
])
def test_gke_profiles_ask_for_the_device_they_schedule_on(profile, flag):
    assert trainer_accelerator_flag(load_values(PROFILES / profile)) == [flag]


def test_the_chart_value_overrides_the_preset_and_no_preset_leaves_auto():
    assert trainer_accelerator_flag({"dataDir": "gs://b/p"}) == []  # the trainer's default: auto
    values = {"dataDir": "gs://b/p", "trainer": {"accelerator": {"preset": "nvidia", "require": "auto"}}}
    assert trainer_accelerator_flag(values) == ["--accelerator=auto"]
