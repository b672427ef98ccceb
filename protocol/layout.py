"""Where everything of a run lives under --data-dir (DESIGN.md "The run directory")."""

from __future__ import annotations

from dataclasses import dataclass

from .storage import join


@dataclass(frozen=True)
class RunDir:
    url: str  # local path or gs://bucket/prefix

    @property
    def command(self) -> str:
        return join(self.url, "command.json")

    def status(self, side: str) -> str:
        return join(self.url, "status", f"{side}.json")

    @property
    def dataset(self) -> str:
        return join(self.url, "dataset")

    @property
    def meta(self) -> str:
        return join(self.dataset, "meta.json")

    @property
    def ids_dir(self) -> str:
        """dataset/ids/: raw id maps and training items per user (messages.IdMaps)."""
        return join(self.dataset, "ids")

    @property
    def ids(self) -> str:
        return join(self.ids_dir, "ids.json")

    @property
    def eval_dir(self) -> str:
        return join(self.dataset, "eval")

    @property
    def epochs_dir(self) -> str:
        return join(self.url, "epochs")

    def epoch_dir(self, epoch: int) -> str:
        return join(self.url, "epochs", f"{epoch:06d}")

    @staticmethod
    def ready(folder: str) -> str:
        return join(folder, "ready.json")

    @staticmethod
    def slices_dir(folder: str) -> str:
        """Where the slice manifests of an epoch (or of the eval data) go."""
        return join(folder, "slices")

    @staticmethod
    def slice_ready(folder: str, index: int) -> str:
        """Slice `index`'s manifest, published by the pod that made it once its parts landed."""
        return join(RunDir.slices_dir(folder), RunDir.slice_ready_name(index))

    @staticmethod
    def slice_ready_name(index: int) -> str:
        return f"ready-{index:05d}.json"

    def generator_status(self, shard: int, shards: int) -> str:
        """status/generator.json of a one-pod generator, status/generator-<shard>.json of N pods."""
        return self.status("generator" if shards == 1 else f"generator-{shard}")

    @staticmethod
    def part_name(index: int) -> str:
        return f"part-{index:05d}"

    @property
    def checkpoints(self) -> str:
        return join(self.url, "checkpoints")

    @property
    def metrics(self) -> str:
        return join(self.url, "metrics.jsonl")

    @property
    def result(self) -> str:
        return join(self.url, "result.json")

    @property
    def report(self) -> str:
        return join(self.url, "report.png")

    @property
    def model(self) -> str:
        return join(self.url, "model")
