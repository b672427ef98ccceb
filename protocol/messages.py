"""The messages of the run directory as typed, versioned records.

Every message is a frozen dataclass. `from_json` checks the document strictly: JSON
syntax, every field present, no unknown field, each field's type, then the bounds of
`validate`. Any failure raises MessageError naming the file, the field and what was
expected, so both Jobs fail the same way (exit code 2) on the same bad input.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from .defaults import HEARTBEAT_INTERVAL_S
from .errors import EXIT_INVALID, ForeignRun, MessageError

PROTOCOL_VERSION = 1
# synthetic-20mx16x32's smallest scale: 86 items, enough for its users' minimum of ratings.
SYNTHETIC_SCALE_MIN = 1e-4
# Each set of names is written once, as a type; the tuples, flags and checks derive from it.
DatasetName = Literal["ml-100k", "ml-1m", "ml-20m", "ml-20mx16x32", "synthetic-small", "synthetic-20m",
                      "synthetic-20mx16x32"]
EvalMode = Literal["mlperf", "paper"]
ExportMode = Literal["best", "last"]  # which epoch's weights model/ holds
Side = Literal["generator", "trainer"]
State = Literal["starting", "waiting", "preprocessing", "generating", "training", "done", "failed"]
DATASETS: tuple[str, ...] = typing.get_args(DatasetName)
EVAL_MODES: tuple[str, ...] = typing.get_args(EvalMode)
SIDES: tuple[str, ...] = typing.get_args(Side)
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def at_least(minimum: float, **kwargs: Any) -> Any:
    """A dataclass field whose value must be >= minimum (checked by from_json and __post_init__)."""
    return field(metadata={"min": minimum}, **kwargs)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """A message class's resolved annotations: typing.get_type_hints evaluates them on every call
    (18-43 ms for a 100-part ready.json), and they never change."""
    return typing.get_type_hints(cls)


@dataclass(frozen=True)
class Message:
    """Base of all records: strict JSON round trip plus per-class bounds."""

    source_name: ClassVar[str] = "message"
    # Fields added later with a default: documents written before them still read (every
    # other field is required).
    optional_fields: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        self._check_bounds(self.source_name)
        self.validate(self.source_name)

    def validate(self, source: str) -> None:
        """Cross-field checks; subclasses raise MessageError(source, field, expected)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, text: bytes | str, source: str | None = None) -> typing.Self:
        source = source or cls.source_name
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as error:
            raise MessageError(source, None, f"valid JSON ({error})") from None
        return cls.from_dict(data, source)

    @classmethod
    def from_dict(cls, data: Any, source: str, prefix: str = "") -> typing.Self:
        if not isinstance(data, dict):
            raise MessageError(source, prefix.rstrip(".") or None, "a JSON object", type(data).__name__)
        hints = _hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise MessageError(source, prefix + unknown[0], f"only known fields ({', '.join(names)})")
        values = {}
        defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.name in cls.optional_fields}
        for name in names:
            if name not in data and name in defaults:
                values[name] = defaults[name]
                continue
            if name not in data:
                raise MessageError(source, prefix + name, "a value (the field is required)")
            values[name] = _convert(data[name], hints[name], source, prefix + name)
        record = object.__new__(cls)
        for name, value in values.items():
            object.__setattr__(record, name, value)
        record._check_bounds(source, prefix)
        record.validate(source)
        return record

    def _check_bounds(self, source: str, prefix: str = "") -> None:
        """Ranges and Literal choices; run when a message is built as well as when it is read."""
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            minimum = f.metadata.get("min")
            value = getattr(self, f.name)
            if minimum is not None and value is not None and value < minimum:
                raise MessageError(source, prefix + f.name, f"a number >= {minimum}", value)
            choices = _literal_choices(hints[f.name])
            if choices and value not in choices and not (value is None and _optional(hints[f.name])):
                raise MessageError(source, prefix + f.name, "one of " + ", ".join(map(repr, choices)), value)

    def belongs_to(self, run_id: str, source: str) -> typing.Self:
        """This message, if it is of run `run_id`; else ForeignRun (never mix two runs' data)."""
        theirs = getattr(self, "run_id")
        if theirs != run_id:
            raise ForeignRun(source, describe_differences({"run_id": run_id}, {"run_id": theirs}, ["run_id"],
                                                          "this run", "the file"))
        return self


def differences(ours: dict[str, Any], theirs: dict[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    """The keys (sorted) whose values differ between two documents, except `ignore`."""
    return sorted(k for k in ours.keys() | theirs.keys() if k not in ignore and ours.get(k) != theirs.get(k))


def describe_differences(ours: dict[str, Any], theirs: dict[str, Any], names: list[str],
                         ours_as: str, theirs_as: str) -> str:
    """`name: theirs in <theirs_as>, ours from <ours_as>; ...` for a one-line error."""
    return "; ".join(f"{k}: {theirs.get(k)!r} in {theirs_as}, {ours.get(k)!r} from {ours_as}" for k in names)


def _optional(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)


def _literal_choices(hint: Any) -> tuple[Any, ...]:
    """The allowed values of a Literal (or Literal | None) hint; () for any other hint."""
    if _optional(hint):
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else ()


def _convert(value: Any, hint: Any, source: str, name: str) -> Any:
    """Checks one JSON value against a type hint and returns it in its Python form."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, source, name)
    if origin is list:
        if not isinstance(value, list):
            raise MessageError(source, name, "a list", value)
        return [_convert(v, args[0], source, f"{name}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise MessageError(source, name, "a JSON object", value)
        return dict(value)
    if isinstance(hint, type) and issubclass(hint, Message):
        return hint.from_dict(value, source, name + ".")
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MessageError(source, name, "a number", value)
        return float(value)
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise MessageError(source, name, "an integer", value)
    if hint in (str, bool) and not isinstance(value, hint):
        raise MessageError(source, name, f"a {'string' if hint is str else 'boolean'}", value)
    return value


def _check_protocol(version: int, source: str) -> None:
    if version != PROTOCOL_VERSION:
        raise MessageError(source, "protocol", f"version {PROTOCOL_VERSION}", version)


def _check_run_id(run_id: str, source: str) -> None:
    if not _RUN_ID.match(run_id):
        raise MessageError(source, "run_id", "letters, digits, '.', '_' or '-' (1 to 128)", run_id)


@dataclass(frozen=True)
class DatasetSpec(Message):
    """Which ratings to train on: a known dataset and optionally where its raw file lies."""

    source_name: ClassVar[str] = "dataset"
    name: DatasetName
    ratings: str | None = None  # local path or gs:// URL; None: download (MovieLens) or synthesize
    # synthetic-20mx16x32 alone: its users and items times this (tests, benches); None: full size.
    # Added later: a dataset without it is at full size.
    scale: float | None = at_least(SYNTHETIC_SCALE_MIN, default=None)
    optional_fields: ClassVar[tuple[str, ...]] = ("scale",)

    def validate(self, source: str) -> None:
        if self.scale is not None and self.name != "synthetic-20mx16x32":
            raise MessageError(source, "dataset.scale", "null: only synthetic-20mx16x32 has a scale "
                               "(the trainer's --synthetic-scale)", self.scale)
        if self.scale is not None and self.scale > 1:
            raise MessageError(source, "dataset.scale", "at most 1 (full size)", self.scale)
        if self.name.startswith("synthetic") and self.ratings is not None:
            raise MessageError(source, "dataset.ratings", "null for a synthetic dataset", self.ratings)
        if self.name == "ml-20mx16x32" and self.ratings is None:
            raise MessageError(source, "dataset.ratings", "the folder of ml-20mx16x32's shards (it cannot be "
                               "downloaded here: GroupLens' ml-20mx16x32.tar, unpacked)", self.ratings)


@dataclass(frozen=True)
class Command(Message):
    """command.json: what the trainer asks the generator to produce. Written once."""

    source_name: ClassVar[str] = "command.json"
    run_id: str
    dataset: DatasetSpec
    epochs: int = at_least(1, default=20)
    num_neg: int = at_least(1, default=4)
    train_batch_size: int = at_least(1, default=2048)
    eval_negatives: int = at_least(1, default=999)
    eval_mode: EvalMode = "mlperf"
    seed: int = at_least(0, default=0)
    buffer_epochs: int = at_least(1, default=3)
    protocol: int = PROTOCOL_VERSION
    # Epochs are cut into this many slices of users (DESIGN.md "Past one pod"); fixed for the
    # run. Added later: a command.json without it is of one slice.
    slices: int = at_least(1, default=1)
    optional_fields: ClassVar[tuple[str, ...]] = ("slices",)

    def validate(self, source: str) -> None:
        _check_protocol(self.protocol, source)
        _check_run_id(self.run_id, source)

    def check_against(self, meta: DatasetMeta, source: str | None = None) -> None:
        """Bounds that need the dataset: negatives must fit in the item catalogue."""
        source = source or self.source_name
        for name in ("num_neg", "eval_negatives"):
            value = getattr(self, name)
            if value >= meta.num_items:
                raise MessageError(
                    source, name, f"fewer than the {meta.num_items} items of {meta.dataset}", value
                )

    def differences(self, other: Command) -> list[str]:
        """Names of the settings (everything but run_id) in which two commands differ."""
        return differences(self.to_dict(), other.to_dict(), ignore=("run_id",))


@dataclass(frozen=True)
class PartInfo(Message):
    """One part file as listed in a ready.json."""

    source_name: ClassVar[str] = "part"
    name: str
    num_examples: int = at_least(0)
    size: int = at_least(0)
    crc32c: int = at_least(0)

    def validate(self, source: str) -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise MessageError(source, "parts.name", "a plain file name in the same folder", self.name)


@dataclass(frozen=True)
class Ready(Message):
    """ready.json of one epoch (kind 'train') or of the eval data (kind 'eval', epoch null).

    Written last and create-only: a folder without it is unfinished and ignored. The same
    record with `slice` set is one slice's manifest (slices/ready-<slice>.json in the same
    folder), published by the pod that made the slice; the folder's ready.json then lists
    every slice's parts in slice order and, in `slices`, each slice's number of examples.
    """

    source_name: ClassVar[str] = "ready.json"
    run_id: str
    kind: Literal["train", "eval"]
    epoch: int | None
    num_examples: int = at_least(0)
    parts: list[PartInfo] = field(default_factory=list)
    record_format: int = 1
    protocol: int = PROTOCOL_VERSION
    slice: int | None = at_least(0, default=None)  # a slice's manifest: which slice
    slices: list[int] = field(default_factory=list)  # examples per slice; [] (older files): one slice
    optional_fields: ClassVar[tuple[str, ...]] = ("slice", "slices")

    def validate(self, source: str) -> None:
        _check_protocol(self.protocol, source)
        _check_run_id(self.run_id, source)
        if (self.kind == "eval") != (self.epoch is None):
            raise MessageError(source, "epoch", "null for eval data and an epoch number for training data", self.epoch)
        if self.epoch is not None and self.epoch < 0:
            raise MessageError(source, "epoch", "a number >= 0", self.epoch)
        if sum(p.num_examples for p in self.parts) != self.num_examples:
            raise MessageError(source, "num_examples", "the sum of the parts' num_examples", self.num_examples)
        if len({p.name for p in self.parts}) != len(self.parts):
            raise MessageError(source, "parts", "distinct part names")
        if self.slices and not set(_cumsum(self.slices)) <= set(_cumsum(p.num_examples for p in self.parts)):
            raise MessageError(source, "slices", "slice sizes that end on part boundaries and add up to "
                               "num_examples", self.slices)

    def slice_sizes(self) -> list[int]:
        """Examples per slice, in the order of the parts."""
        return self.slices or [self.num_examples]


def _cumsum(values) -> list[int]:
    total, out = 0, [0]
    for value in values:
        total += value
        out.append(total)
    return out


@dataclass(frozen=True)
class DatasetMeta(Message):
    """dataset/meta.json: the preprocessed dataset's shape, for the trainer to build its model."""

    source_name: ClassVar[str] = "meta.json"
    run_id: str
    dataset: str
    fingerprint: str  # of the raw ratings (or the synthetic recipe): keys the preprocessing cache
    num_users: int = at_least(1)
    num_items: int = at_least(2)
    num_ratings: int = at_least(0)  # raw rows read
    num_train: int = at_least(0)  # training positives after the split
    protocol: int = PROTOCOL_VERSION

    def validate(self, source: str) -> None:
        _check_protocol(self.protocol, source)
        _check_run_id(self.run_id, source)


@dataclass(frozen=True)
class Status(Message):
    """status/<side>.json: a heartbeat with the side's state, rewritten while it runs."""

    source_name: ClassVar[str] = "status.json"
    side: Side
    state: State
    run_id: str | None
    epoch: int | None  # the epoch being worked on, if any
    epochs_done: int = at_least(0)  # generator: epochs made ready; trainer: epochs consumed
    time: float = 0.0  # writer's wall clock; readers judge staleness by their own clock
    host: str = ""
    pid: int = 0
    examples_per_s: float | None = None
    message: str | None = None  # what it is doing or, when failed, why
    # The writer's promise: readers (ncf-status, the peer) judge staleness against it.
    heartbeat_interval: float = at_least(0.0, default=HEARTBEAT_INTERVAL_S)
    protocol: int = PROTOCOL_VERSION
    # A generator of N pods: which one wrote this (0..shards-1). Added later, hence optional.
    shard: int = at_least(0, default=0)
    shards: int = at_least(1, default=1)
    # When failed: the exit code the writer ends with. 2 (invalid input) is final: Kubernetes
    # never retries it, so the other side stops at once. Added later, hence optional.
    exit_code: int | None = None
    optional_fields: ClassVar[tuple[str, ...]] = ("shard", "shards", "exit_code")

    @property
    def final(self) -> bool:
        """A failure no new attempt will follow (DESIGN.md "Exit codes")."""
        return self.state == "failed" and self.exit_code == EXIT_INVALID

    def validate(self, source: str) -> None:
        _check_protocol(self.protocol, source)
        if self.run_id is not None:
            _check_run_id(self.run_id, source)
        if self.shard >= self.shards:
            raise MessageError(source, "shard", f"a number below shards ({self.shards})", self.shard)


@dataclass(frozen=True)
class EpochMetrics(Message):
    """One line of metrics.jsonl, appended by the trainer after each epoch."""

    source_name: ClassVar[str] = "metrics.jsonl"
    epoch: int = at_least(0)
    hr_at_10: float = at_least(0.0)
    ndcg_at_10: float = at_least(0.0)
    loss: float
    examples_per_s: float = at_least(0.0)  # training examples per second of training time
    data_wait_s: float = at_least(0.0)  # seconds the trainer waited for this epoch's data
    train_s: float = at_least(0.0)
    eval_s: float = at_least(0.0)
    time: float  # wall clock when the epoch finished
    # Seconds the loop waited for the previous checkpoint's upload before this epoch's
    # checkpoint could start (0 when uploads keep up); added later, so optional.
    checkpoint_wait_s: float = at_least(0.0, default=0.0)
    # Examples of the epoch not trained: with several trainer hosts, what is left after the
    # last step every host can take in full (trainer/multihost.py); added later, so optional.
    dropped_examples: int = at_least(0, default=0)
    optional_fields: ClassVar[tuple[str, ...]] = ("checkpoint_wait_s", "dropped_examples")

    def to_line(self) -> bytes:
        return (json.dumps(self.to_dict(), sort_keys=True) + "\n").encode()


@dataclass(frozen=True)
class ArrayLayout(Message):
    """One array of a checkpoint: bytes offset:offset + nbytes of its arrays laid end to end."""

    source_name: ClassVar[str] = "array"
    key: str  # w<index> a model weight, o<index> an optimizer slot (checkpoint order)
    dtype: str  # numpy's dtype.str, e.g. '<f4'
    shape: list[int]
    offset: int = at_least(0)
    nbytes: int = at_least(0)


@dataclass(frozen=True)
class CheckpointPiece(Message):
    """One object of a checkpoint's folder: the next `size` bytes of its arrays laid end to end."""

    source_name: ClassVar[str] = "piece"
    name: str
    size: int = at_least(0)
    crc32c: int = at_least(0)


@dataclass(frozen=True)
class CheckpointPointer(Message):
    """checkpoints/latest.json: the last checkpoint whose pieces have all landed.

    Overwritten (one atomic object write) by the trainer only after every piece of
    checkpoints/<folder>/ is written, so a reader finds the previous checkpoint or this one,
    never a mix. Besides the pieces and the arrays' layout it holds what a restart needs:
    the metrics of every epoch trained so far, whether training finished, and the model
    settings the weights were trained with.
    """

    source_name: ClassVar[str] = "latest.json"
    run_id: str
    epochs_done: int = at_least(1)
    finished: bool  # no more epochs to train (all done, or the target HR@10 was reached)
    started: float  # wall clock when the run first trained
    model_config: dict[str, Any]
    folder: str  # ckpt-<epochs_done:06d>, beside latest.json
    size: int = at_least(0)  # bytes of all arrays laid end to end
    arrays: list[ArrayLayout]
    pieces: list[CheckpointPiece]
    history: list[EpochMetrics]
    protocol: int = PROTOCOL_VERSION
    # Pointers written before latest.json became a message carry no version.
    optional_fields: ClassVar[tuple[str, ...]] = ("protocol",)

    def validate(self, source: str) -> None:
        _check_protocol(self.protocol, source)
        _check_run_id(self.run_id, source)
        if not self.folder or "/" in self.folder or self.folder.startswith("."):
            raise MessageError(source, "folder", "a plain folder name beside latest.json", self.folder)
        epochs = [m.epoch for m in self.history]
        if epochs != list(range(self.epochs_done)):
            raise MessageError(source, "history", f"the metrics of epochs 0..{self.epochs_done - 1}", epochs)
        if sum(p.size for p in self.pieces) != self.size:
            raise MessageError(source, "pieces", f"sizes adding up to size ({self.size})",
                               sum(p.size for p in self.pieces))
        if len({p.name for p in self.pieces}) != len(self.pieces) or any("/" in p.name for p in self.pieces):
            raise MessageError(source, "pieces", "distinct plain file names")
        for entry in self.arrays:
            if entry.offset + entry.nbytes > self.size:
                raise MessageError(source, "arrays", f"byte ranges within size ({self.size})", entry.key)


@dataclass(frozen=True)
class Result(Message):
    """result.json: the run's outcome, written once by the trainer at the end."""

    source_name: ClassVar[str] = "result.json"
    run_id: str
    dataset: str
    epochs_trained: int = at_least(0)
    best_epoch: int | None = None
    best_hr_at_10: float = at_least(0.0, default=0.0)
    best_ndcg_at_10: float = at_least(0.0, default=0.0)
    last_hr_at_10: float = at_least(0.0, default=0.0)
    last_ndcg_at_10: float = at_least(0.0, default=0.0)
    target_hr: float | None = None
    reached_target: bool = False
    wall_s: float = at_least(0.0, default=0.0)
    protocol: int = PROTOCOL_VERSION
    # The model in model/: which epoch's weights (--export best|last), and their HR@10 / NDCG@10.
    exported: ExportMode | None = None
    exported_epoch: int | None = None
    exported_hr_at_10: float = at_least(0.0, default=0.0)
    exported_ndcg_at_10: float = at_least(0.0, default=0.0)
    exported_reason: str | None = None  # why, when it is not what --export asked for

    def validate(self, source: str) -> None:
        _check_protocol(self.protocol, source)
        _check_run_id(self.run_id, source)


@dataclass(frozen=True)
class IdMaps(Message):
    """dataset/ids/ids.json: the raw ids behind the dense ones, and the training items per user.

    Published once by the generator, create-only, before dataset/meta.json (so a reader
    that sees meta.json finds it). Up to three parts beside it, each listed with size and
    CRC32C: `users` (columns raw_id int64 [num_users]: dense user u is raw user raw_id[u];
    with `train`, also train_count int64 [num_users]), `items` (column raw_id int64
    [num_items]) and `train` (column train_item [num_train]: user u's training items are
    train_item[indptr[u]:indptr[u + 1]], indptr the cumulative train_count). The trainer
    builds the served model's id lookups and its "already rated" exclusions from them.

    A set held whole by one pod (ml-100k to ml-20m, synthetic-small, synthetic-20m: at most
    about 20M training positives) lists all three. A set too large for one pod (ml-20mx16x32,
    synthetic-20mx16x32, at any scale) lists `users` (raw_id only) and null `items` and
    `train`: its item ids are already dense (raw = dense, 0..num_items-1), and its training
    items (1.2 billion, 4.9 GB at 32 bits) are no pod's to publish and would not fit a
    SavedModel, so its served model excludes nothing. Both forms are protocol 1: a document
    of the first form is the same bytes as before the second existed.
    """

    source_name: ClassVar[str] = "ids.json"
    run_id: str
    num_users: int = at_least(1)
    num_items: int = at_least(1)
    num_train: int = at_least(0)
    users: PartInfo
    items: PartInfo | None = None  # None: raw item id = dense item id
    train: PartInfo | None = None  # None: no training items per user (nothing excluded when serving)
    protocol: int = PROTOCOL_VERSION

    def validate(self, source: str) -> None:
        _check_protocol(self.protocol, source)
        _check_run_id(self.run_id, source)
        for name, count in (("users", self.num_users), ("items", self.num_items), ("train", self.num_train)):
            part = getattr(self, name)
            if part is not None and part.num_examples != count:
                raise MessageError(source, f"{name}.num_examples", f"{count}", part.num_examples)
