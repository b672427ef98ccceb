"""The trainer's configuration: the one table of its flags (`Config`), per-dataset presets, parse_args.

Model settings depend on the dataset: MLPerf's reference settings for the ml-20m-sized
sets, the NCF paper's untuned settings for the small ones (DESIGN.md "Reference
numbers"). Every one can be overridden by its flag. What the command says (negatives,
eval protocol, seed, buffer) defaults to `protocol.messages.Command`'s values and bounds,
and the timeouts to `protocol.defaults`: each default is written once.

How to add a flag (here, or in generator/config.py for ncf-generator; protocol/flags.py
says how a field becomes a flag):
1. One row: a field of `Config` declared with `flag(default, help=..., bounds=..., chart=...)`.
   Its annotation is its type (bool, int, float, str, list[int], a Literal of choices,
   `X | None` for unset). The default is written there only.
2. The chart value: `chart="training.someFlag"` names it under trainer: (under generator: for
   the generator). Add that key to charts/ncf-tandem/values.yaml (null, or "" for a string: the
   program's default), a row for it at the same place in the chart README's values table
   (`| `trainer.training.someFlag` | `null` | x |`: the script writes the description) and a
   value to testkit/chart_values.py (EVERY_TRAINING_VALUE and the flag it renders in
   EVERY_TRAINING_FLAG, or EVERY_GENERATOR_VALUE). Where the chart must not set the flag, say
   why instead: `not_in_chart="why"` (the chart README lists these).
3. Run `python scripts/chart_flags.py`: it writes the Jobs' rows (templates/_flag_table.tpl),
   the value's values.schema.json entry (type, bounds, choices) and its README description.
   tests/test_chart_flags.py renders a value for every flag through this parser: it fails for
   a flag without a chart value, a rendered flag the parser does not know, or stale files.
A generator flag the trainer lacks reaches it as --generator-NAME (for --spawn-generator): nothing to do
(unless it is `per_pod`, one pod's place among several: the spawned child is the only pod, it is not passed on).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from generator.config import Options as GeneratorOptions
from protocol import Command, DatasetSpec, flags, storage
from protocol.cli import NON_NEGATIVE, POSITIVE, Bounds, Parser
from protocol.defaults import (HEARTBEAT_INTERVAL_S, PEER_TIMEOUT_S, PERMISSION_WAIT_HELP, PERMISSION_WAIT_S,
                               START_TIMEOUT_S, default_slices)
from protocol.flags import flag
from protocol.messages import DATASETS, SYNTHETIC_SCALE_MIN, DatasetName, EvalMode, ExportMode

from .hosts import COORDINATOR_PORT, default_coordinator, default_count, default_index, split_address
from .strategy import Accelerator

MLPERF_ADAM = dict(adam_beta_1=0.9, adam_beta_2=0.999, adam_epsilon=1e-8)  # the MLPerf reference's Adam
LARGE = dict(batch_size=2048, eval_batch_size=1_000_000, learning_rate=0.0005, mf_dim=64,
             layers=[256, 256, 128, 64], epochs=20, l2=0.0, **MLPERF_ADAM)
SMALL = dict(batch_size=256, eval_batch_size=200_000, learning_rate=0.001, mf_dim=16,
             layers=[64, 32, 16, 8], epochs=20, l2=0.0, **MLPERF_ADAM)
# ml-100k (GitHub issue 4: HR@10 >= 0.20 within 20 epochs, 999 eval negatives): SMALL
# peaks at 0.185-0.189 in paper mode (epoch ~8) and then overfits. Batch 1024 with lr 0.002
# (same model) peaks at 0.2025 / 0.196 / 0.202 for seeds 0 / 1 / 2 (epochs 16 / 14 / 11) in
# paper mode and at 0.237 in mlperf mode, through the real pipeline on CPU. Tried and no
# better: l2 1e-6..1e-4, lr 0.0005, 8 or 16 negatives, mf_dim 32 + layers 128,64,32,16,
# batch 512 or 2048, per-epoch lr decay. For scale: EASE (a strong linear baseline) scores
# 0.196 on this split, most-popular 0.109.
ML_100K = dict(SMALL, batch_size=1024, learning_rate=0.002)
# MLPerf v0.6 reference for ml-20mx16x32 (target HR@10 0.51 with 999 eval negatives).
ML_1B = dict(LARGE, batch_size=65536, learning_rate=0.0002)
# The one table of presets: a dataset name of protocol.messages.DATASETS -> model settings.
PRESETS = {"ml-20m": LARGE, "synthetic-20m": LARGE, "ml-1m": SMALL, "ml-100k": ML_100K, "synthetic-small": SMALL,
           "ml-20mx16x32": ML_1B, "synthetic-20mx16x32": ML_1B}
assert set(PRESETS) == set(DATASETS), "every dataset needs a preset"
# --recipe: published large-batch settings that replace the dataset's preset (flags still
# override them). The batch is global: with several hosts each takes batch / hosts.
RECIPES = {
    # NVIDIA's MLPerf v0.5 NCF runs (ml-20m): HR@10 0.635 in 13-20 epochs, median 16.
    "mlperf-v0.5-large-batch": dict(batch_size=1_048_576, learning_rate=0.0045, adam_beta_1=0.25, adam_beta_2=0.5),
    # MLPerf v0.6's ml-20mx16x32 reference (target HR@10 0.51).
    "ml-20mx16x32-reference": dict(batch_size=65536, learning_rate=0.0002),
}
Recipe = Literal["mlperf-v0.5-large-batch", "ml-20mx16x32-reference"]
assert set(RECIPES) == set(Recipe.__args__), "every recipe is a choice of --recipe"


# Part reads in flight: one GCS connection moves 60-200 MB/s.
DEFAULT_READ_CONCURRENCY = 16
PRESET = "the dataset's preset"
CHART_RUNS_THE_GENERATOR = "the chart runs the generator as its own Job (values under generator:)"


def _command_field(name: str) -> dataclasses.Field:
    (field,) = [f for f in dataclasses.fields(Command) if f.name == name]
    return field


def _from_command(name: str, **kwargs: Any) -> Any:
    """A flag that sets a field of command.json: its default and its minimum are the Command's."""
    field = _command_field(name)
    return flag(field.default, bounds=Bounds(field.metadata["min"]), **kwargs)


@dataclass
class Config:
    data_dir: str = flag(help="run directory: local path or gs://bucket/prefix",
                         not_in_chart="set from dataDir, the run directory both Jobs share")
    dataset: DatasetName = flag(help="which dataset to train on", chart="training.dataset")
    ratings: str | None = flag(None, help="the MovieLens ratings file, local or gs:// (MovieLens may not be "
                                          "redistributed)", default_text="downloaded from GroupLens, checksum-checked",
                               chart="training.ratings")
    synthetic_scale: float | None = flag(None, help="synthetic-20mx16x32 only: its users and items times this, "
                                                    "e.g. 0.001 for a laptop (dataset.scale in command.json)",
                                         bounds=Bounds(SYNTHETIC_SCALE_MIN, 1), default_text="1, full size",
                                         chart="training.syntheticScale")
    # Preset flags: None here, the dataset's value filled in by parse_args.
    epochs: int = flag(None, help="passes over the training data", bounds=POSITIVE, default_text=PRESET,
                       chart="training.epochs")
    batch_size: int = flag(None, help="training examples per step", bounds=POSITIVE, default_text=PRESET,
                           chart="training.batchSize")
    eval_batch_size: int = flag(None, help="candidate scores per evaluation step (whole users)", bounds=POSITIVE,
                                default_text=PRESET, chart="training.evalBatchSize")
    num_neg: int = _from_command("num_neg", help="training negatives per positive", chart="training.numNeg")
    eval_negatives: int = _from_command("eval_negatives", help="negatives ranked against each held-out item",
                                        chart="training.evalNegatives")
    eval_mode: EvalMode = flag(_command_field("eval_mode").default,
                               help="mlperf (negatives may repeat) or paper (distinct, unrated)",
                               chart="training.evalMode")
    learning_rate: float = flag(None, help="Adam's learning rate", bounds=POSITIVE, default_text=PRESET,
                                chart="training.learningRate")
    recipe: Recipe | None = flag(None, help="a published large-batch recipe: its batch size, learning rate and "
                                            "Adam settings replace the dataset's preset (other flags still win)",
                                 default_text="none", chart="training.recipe")
    adam_beta_1: float = flag(None, help="Adam's beta_1 (MLPerf's 1M-batch runs: 0.25)", bounds=Bounds(0, 1),
                              default_text=PRESET + ": 0.9", chart="training.adamBeta1")
    adam_beta_2: float = flag(None, help="Adam's beta_2 (MLPerf's 1M-batch runs: 0.5)", bounds=Bounds(0, 1),
                              default_text=PRESET + ": 0.999", chart="training.adamBeta2")
    adam_epsilon: float = flag(None, help="Adam's epsilon", bounds=POSITIVE, default_text=PRESET + ": 1e-8",
                               chart="training.adamEpsilon")
    warmup_steps: int = flag(0, help="steps over which the learning rate rises linearly to --learning-rate "
                                     "(0: none)", bounds=NON_NEGATIVE, chart="training.warmupSteps")
    mf_dim: int = flag(None, help="GMF embedding size", bounds=POSITIVE, default_text=PRESET, chart="training.mfDim")
    layers: list[int] = flag(None, help="MLP widths, e.g. 64,32,16,8 (the first is the concatenated embedding, "
                                        "so even)", bounds=POSITIVE, default_text=PRESET, chart="training.layers")
    l2: float = flag(None, help="L2 penalty on the embeddings per batch", bounds=NON_NEGATIVE, default_text=PRESET,
                     chart="training.l2")
    seed: int = _from_command("seed", help="seed of the split, the sampling and the initial weights",
                              chart="training.seed")
    target_hr: float | None = flag(None, help="stop once HR@10 reaches this (MLPerf: 0.635)", default_text="never",
                                   bounds=Bounds(0, 1, exclusive_minimum=True), chart="training.targetHr")
    buffer_epochs: int = _from_command("buffer_epochs", help="epochs the generator may write ahead of the trainer",
                                       chart="training.bufferEpochs")
    slices: int | None = flag(None, help="slices of users each epoch is cut into (DESIGN.md 'Past one pod'): the "
                                         "generator's pods share them out, each batch draws from all", bounds=POSITIVE,
                              default_text="by the dataset's size: 16 for ml-20mx16x32, else 1",
                              chart="training.slices")
    accelerator: Accelerator = flag("auto", help="what to train on: auto (what the trainer finds), cpu, gpu or tpu; "
                                                 "with gpu or tpu a trainer that finds no such device exits 2 at "
                                                 "once, never training on the CPU", chart="accelerator.require")
    mixed_precision: bool = flag(False, help="mixed_float16 on GPU, mixed_bfloat16 on TPU",
                                 chart="training.mixedPrecision")
    xla: bool = flag(False, help="compile train and eval steps with XLA", chart="training.xla")
    export: ExportMode = flag("best", help="which epoch's weights go to model/: the best HR@10 or the last "
                                           "(trainer/train.py)", chart="training.export")
    spawn_generator: bool = flag(False, help="run the generator as a child process (the laptop way)",
                                 not_in_chart=CHART_RUNS_THE_GENERATOR)
    start_timeout: float = flag(START_TIMEOUT_S, help="seconds to wait for the generator to appear",
                                bounds=POSITIVE, chart="timeouts.start")
    peer_timeout: float = flag(PEER_TIMEOUT_S, help="seconds the generator's heartbeat may stay unchanged",
                               bounds=POSITIVE, chart="timeouts.peer")
    heartbeat_interval: float = flag(HEARTBEAT_INTERVAL_S, help="seconds between rewrites of status/trainer.json",
                                     bounds=POSITIVE, chart="timeouts.heartbeatInterval")
    permission_wait: float = flag(PERMISSION_WAIT_S, bounds=NON_NEGATIVE, chart="timeouts.permissionWait",
                                  help=PERMISSION_WAIT_HELP)
    steps_per_execution: int = flag(16, help="batches per input element and per compiled train call "
                                             "(less overhead per step)", bounds=POSITIVE,
                                    chart="training.stepsPerExecution")
    read_concurrency: int = flag(DEFAULT_READ_CONCURRENCY, help="epoch part reads in flight", bounds=POSITIVE,
                                 chart="training.readConcurrency")
    checkpoint_every: int = flag(1, help="checkpoint every N epochs (the last epoch always checkpoints, and so "
                                         "does an epoch after which the generator's buffer would be full of "
                                         "epochs no checkpoint covers yet)", bounds=POSITIVE,
                                 chart="training.checkpointEvery")
    checkpoint_every_minutes: float | None = flag(None, help="checkpoint when this many minutes passed since the "
                                                             "last one (instead of --checkpoint-every)",
                                                  default_text="by epochs", bounds=POSITIVE,
                                                  chart="training.checkpointEveryMinutes")
    hosts: int = flag(default_factory=default_count, bounds=POSITIVE, chart="hosts",
                      default_text="the number of $TPU_WORKER_HOSTNAMES (a GKE TPU slice), else 1",
                      help="trainer processes that train together, synchronous data parallel (Keras on JAX): "
                           "one per GPU node or TPU worker; the batch is global, each host takes batch / hosts")
    host_index: int | None = flag(None, bounds=NON_NEGATIVE,
                                  default_text="with --hosts > 1: $JOB_COMPLETION_INDEX (an Indexed Job's pod index), "
                                               "else $TPU_WORKER_ID; else 0",
                           not_in_chart="each trainer pod takes its index from JOB_COMPLETION_INDEX or TPU_WORKER_ID",
                           help="which of the --hosts processes this is; host 0 alone writes to the run directory")
    coordinator: str | None = flag(default_factory=default_coordinator,
                                   default_text=f"the first of $TPU_WORKER_HOSTNAMES, port {COORDINATOR_PORT}",
                                   not_in_chart="the chart wires host 0's stable JobSet hostname (trainer.hosts > 1)",
                                   help="HOST:PORT where host 0 runs JAX's coordination service (--hosts > 1)")
    # --generator-NAME: the generator's flags this table lacks, passed on by --spawn-generator.
    generator: dict[str, Any] = dataclasses.field(default_factory=dict)

    def model_config(self) -> dict:
        """What a checkpoint must have been trained with to be resumed by these flags."""
        return {"mf_dim": self.mf_dim, "layers": list(self.layers), "learning_rate": self.learning_rate,
                "l2": self.l2, **self.adam(), "warmup_steps": self.warmup_steps}

    def adam(self) -> dict[str, float]:
        """Adam's beta_1, beta_2 and epsilon, keyed as MLPERF_ADAM."""
        return {name: getattr(self, name) for name in MLPERF_ADAM}

    def command(self, run_id: str) -> Command:
        """The command.json these flags ask the generator for."""
        dataset = DatasetSpec(name=self.dataset, ratings=self.ratings, scale=self.synthetic_scale)
        return Command(run_id=run_id, dataset=dataset,
                       epochs=self.epochs, num_neg=self.num_neg, train_batch_size=self.batch_size,
                       eval_negatives=self.eval_negatives, eval_mode=self.eval_mode, seed=self.seed,
                       buffer_epochs=self.buffer_epochs, slices=self.slices or default_slices(self.dataset))


def generator_rows() -> list[flags.Row]:
    """The generator's flags as the trainer takes them: shared ones (--data-dir, the timeouts) under
    their own names, the others as --generator-NAME (unset: the generator's default); per-pod ones
    (--shard, --shards) not at all, since the spawned child is the run's only generator pod."""
    own = {row.name for row in flags.rows(Config)}
    return [row if row.name in own else
            row.passed_on(GENERATOR_PREFIX + row.name, "with --spawn-generator, the generator", CHART_RUNS_THE_GENERATOR)
            for row in flags.rows(GeneratorOptions) if not row.flag.per_pod]


GENERATOR_PREFIX = "generator_"


def table() -> list[flags.Row]:
    """Every flag of ncf-trainer: Config's, then the generator's it passes on."""
    return flags.rows(Config) + [row for row in generator_rows() if row.name.startswith(GENERATOR_PREFIX)]


def parser() -> Parser:
    return flags.build_parser(table(), prog="ncf-trainer",
                              description="The trainer Job: NeuMF over the generator's epochs.")


def check_hosts(p: Parser, values: dict[str, Any]) -> None:
    """--hosts, --host-index and --coordinator agree, and the global batch splits evenly."""
    count = values["hosts"]
    if values["host_index"] is None:  # one host may run in any Job, Indexed or not
        values["host_index"] = default_index() if count > 1 else 0
    if values["host_index"] >= count:
        p.error(f"--host-index: expected 0..{count - 1} (--hosts {count}), got {values['host_index']}")
    if count > 1 and not values["coordinator"]:
        p.error("--coordinator: expected HOST:PORT of host 0's coordination service with --hosts > 1, got none")
    if values["coordinator"] and not split_address(values["coordinator"]):
        p.error(f"--coordinator: expected HOST:PORT, got {values['coordinator']!r}")
    if values["batch_size"] % count:
        p.error(f"--batch-size: expected a multiple of --hosts {count} (the batch is global), "
                f"got {values['batch_size']}")


def parse_args(argv: list[str]) -> Config:
    p = parser()
    values = vars(p.parse_args(argv))
    generator = {name.removeprefix(GENERATOR_PREFIX): values.pop(name)
                 for name in list(values) if name.startswith(GENERATOR_PREFIX)}
    recipe = RECIPES[values["recipe"]] if values["recipe"] else {}
    for name, default in {**PRESETS[values["dataset"]], **recipe}.items():
        if values[name] is None:
            values[name] = list(default) if isinstance(default, list) else default
    if values["layers"][0] % 2:
        p.error(f"--layers: expected the first width to be even (the user and the item embedding side by "
                f"side), got {values['layers'][0]}")
    for name in ("adam_beta_1", "adam_beta_2"):
        if values[name] == 1:  # Adam divides by 1 - beta ** step
            p.error(f"--{name.replace('_', '-')}: expected a number in [0, 1), got 1")
    check_hosts(p, values)
    if values["ratings"] is not None:
        values["ratings"] = storage.absolute(values["ratings"])
    return Config(**values, generator={k: v for k, v in generator.items() if v is not None})
