"""The trainer's configuration: plain values, per-dataset presets, and the command line.

Model settings depend on the dataset: MLPerf's reference settings for the ml-20m-sized
sets, the NCF paper's untuned settings for the small ones (DESIGN.md "Reference
numbers"). Every one can be overridden by its flag. What the command says (negatives,
eval protocol, seed, buffer) defaults to `protocol.messages.Command`'s values, and the
timeouts to `protocol.defaults`: each default is written once.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

from protocol import Command, DatasetSpec, InvalidInput, storage
from protocol.defaults import HEARTBEAT_INTERVAL_S, PEER_TIMEOUT_S, START_TIMEOUT_S
from protocol.messages import DATASETS, EVAL_MODES

LARGE = dict(batch_size=2048, eval_batch_size=1_000_000, learning_rate=0.0005, mf_dim=64,
             layers=[256, 256, 128, 64], epochs=20, l2=0.0)
SMALL = dict(batch_size=256, eval_batch_size=200_000, learning_rate=0.001, mf_dim=16,
             layers=[64, 32, 16, 8], epochs=20, l2=0.0)
# ml-100k (GitHub issue 4: HR@10 >= 0.20 within 20 epochs, 999 eval negatives): SMALL
# peaks at 0.185-0.189 in paper mode (epoch ~8) and then overfits. Batch 1024 with lr 0.002
# (same model) peaks at 0.2025 / 0.196 / 0.202 for seeds 0 / 1 / 2 (epochs 16 / 14 / 11) in
# paper mode and at 0.237 in mlperf mode, through the real pipeline on CPU. Tried and no
# better: l2 1e-6..1e-4, lr 0.0005, 8 or 16 negatives, mf_dim 32 + layers 128,64,32,16,
# batch 512 or 2048, per-epoch lr decay. For scale: EASE (a strong linear baseline) scores
# 0.196 on this split, most-popular 0.109.
ML_100K = dict(SMALL, batch_size=1024, learning_rate=0.002)
# The one table of presets: a dataset name of protocol.messages.DATASETS -> model settings.
PRESETS = {"ml-20m": LARGE, "synthetic-20m": LARGE, "ml-1m": SMALL, "ml-100k": ML_100K, "synthetic-small": SMALL}
assert set(PRESETS) == set(DATASETS), "every dataset needs a preset"


def _command_default(name: str):
    return next(f.default for f in dataclasses.fields(Command) if f.name == name)


@dataclass
class Config:
    data_dir: str
    dataset: str
    ratings: str | None = None
    epochs: int = LARGE["epochs"]
    batch_size: int = LARGE["batch_size"]
    eval_batch_size: int = LARGE["eval_batch_size"]  # candidate scores per evaluation step (whole users)
    num_neg: int = _command_default("num_neg")
    eval_negatives: int = _command_default("eval_negatives")
    eval_mode: str = _command_default("eval_mode")
    learning_rate: float = LARGE["learning_rate"]
    mf_dim: int = LARGE["mf_dim"]
    layers: list[int] = dataclasses.field(default_factory=lambda: list(LARGE["layers"]))
    l2: float = LARGE["l2"]  # L2 penalty on the embeddings per batch
    seed: int = _command_default("seed")
    target_hr: float | None = None
    buffer_epochs: int = _command_default("buffer_epochs")
    mixed_precision: bool = False
    xla: bool = False
    export: str = "best"  # which epoch's weights go to model/: the best HR@10 or the last (trainer/train.py)
    spawn_generator: bool = False
    generator_workers: int | None = None
    start_timeout: float = START_TIMEOUT_S
    peer_timeout: float = PEER_TIMEOUT_S
    heartbeat_interval: float = HEARTBEAT_INTERVAL_S
    steps_per_execution: int = 16  # batches per tf.data element and per compiled call (less overhead per step)
    read_concurrency: int = 16  # part reads in flight (one GCS connection moves 60-200 MB/s)
    checkpoint_every: int = 1  # epochs between checkpoints (the last epoch always checkpoints)
    checkpoint_every_minutes: float | None = None  # or: at most this often, by the clock

    def model_config(self) -> dict:
        """What a checkpoint must have been trained with to be resumed by these flags."""
        return {"mf_dim": self.mf_dim, "layers": list(self.layers), "learning_rate": self.learning_rate,
                "l2": self.l2}

    def command(self, run_id: str) -> Command:
        """The command.json these flags ask the generator for."""
        return Command(run_id=run_id, dataset=DatasetSpec(name=self.dataset, ratings=self.ratings),
                       epochs=self.epochs, num_neg=self.num_neg, train_batch_size=self.batch_size,
                       eval_negatives=self.eval_negatives, eval_mode=self.eval_mode, seed=self.seed,
                       buffer_epochs=self.buffer_epochs)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ncf-trainer", description="The trainer Job: NeuMF over the generator's epochs.")
    p.add_argument("--data-dir", required=True, help="run directory: local path or gs://bucket/prefix")
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--ratings", help="raw ratings file (local or gs://) for MovieLens sets; default: download")
    # Flags whose default is the dataset's preset (None here, filled in by parse_args).
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--eval-batch-size", type=int, help="candidate scores per evaluation step")
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--mf-dim", type=int)
    p.add_argument("--layers", help="MLP widths, e.g. 64,32,16,8 (the first is the concatenated embedding)")
    p.add_argument("--l2", type=float, help="L2 penalty on the embeddings")
    defaults = Config(data_dir="", dataset="")
    p.add_argument("--num-neg", type=int, default=defaults.num_neg)
    p.add_argument("--eval-negatives", type=int, default=defaults.eval_negatives)
    p.add_argument("--eval-mode", choices=EVAL_MODES, default=defaults.eval_mode)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--target-hr", type=float, help="stop once HR@10 reaches this")
    p.add_argument("--buffer-epochs", type=int, default=defaults.buffer_epochs)
    p.add_argument("--mixed-precision", action="store_true", help="mixed_float16 on GPU, mixed_bfloat16 on TPU")
    p.add_argument("--xla", action="store_true", help="compile train and eval steps with XLA")
    p.add_argument("--export", choices=("best", "last"), default=defaults.export,
                   help="export the best epoch's weights (highest HR@10, the default) or the last epoch's")
    p.add_argument("--spawn-generator", action="store_true", help="run the generator as a child process")
    p.add_argument("--generator-workers", type=int)
    p.add_argument("--start-timeout", type=float, default=defaults.start_timeout)
    p.add_argument("--peer-timeout", type=float, default=defaults.peer_timeout)
    p.add_argument("--heartbeat-interval", type=float, default=defaults.heartbeat_interval)
    p.add_argument("--steps-per-execution", type=int, default=defaults.steps_per_execution,
                   help="batches per input element and per compiled train call")
    p.add_argument("--read-concurrency", type=int, default=defaults.read_concurrency,
                   help="epoch part reads in flight (default %(default)s)")
    p.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every,
                   help="checkpoint every N epochs (default %(default)s; the last epoch always checkpoints, and "
                        "so does an epoch after which the generator's buffer would be full of epochs no "
                        "checkpoint covers yet)")
    p.add_argument("--checkpoint-every-minutes", type=float, default=None,
                   help="checkpoint when this many minutes passed since the last one (instead of "
                        "--checkpoint-every)")
    return p


def parse_args(argv: list[str]) -> Config:
    values = vars(_parser().parse_args(argv))
    preset = PRESETS[values["dataset"]]
    try:
        values["layers"] = [int(x) for x in values["layers"].split(",")] if values["layers"] else None
    except ValueError:
        raise InvalidInput(f"--layers: expected comma-separated integers, got {values['layers']!r}") from None
    for name, default in preset.items():
        if values[name] is None:
            values[name] = list(default) if isinstance(default, list) else default
    if values["ratings"] is not None:
        values["ratings"] = storage.absolute(values["ratings"])
    config = Config(**values)
    _check(config)
    return config


def _check(config: Config) -> None:
    for name in ("epochs", "batch_size", "eval_batch_size", "num_neg", "eval_negatives", "mf_dim",
                 "buffer_epochs", "steps_per_execution", "read_concurrency", "checkpoint_every"):
        if getattr(config, name) < 1:
            raise InvalidInput(f"--{name.replace('_', '-')}: expected a positive number, got {getattr(config, name)}")
    if config.checkpoint_every_minutes is not None and config.checkpoint_every_minutes <= 0:
        raise InvalidInput(f"--checkpoint-every-minutes: expected a positive number, got "
                           f"{config.checkpoint_every_minutes}")
    layers = config.layers
    if config.learning_rate <= 0 or config.l2 < 0 or any(w < 1 for w in layers) or layers[0] % 2:
        raise InvalidInput(f"expected a positive learning rate and positive layer widths starting with an even one, "
                           f"got --learning-rate {config.learning_rate} --layers {layers}")
