"""The best epoch's weights, kept for the export (`--export best`; trainer/train.py's docstring
tells the restart rule): a host copy whenever HR@10 improves, so the bucket is never read
back for them, and after a restart the checkpoint's history and a checkpoint still kept."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from protocol import EpochMetrics, RunDir

from . import checkpoint

log = logging.getLogger("ncf.trainer")


@dataclass
class BestWeights:
    """Which weights the run exports: the best epoch's (highest HR@10, the first on a tie), kept
    as a host copy whenever HR@10 improves so the bucket is never read back (mode "best"), or
    the last epoch's (mode "last"). See trainer/train.py's docstring for restarts."""

    mode: str
    best: EpochMetrics | None = None
    weights: list[np.ndarray] | None = None
    gone: EpochMetrics | None = None  # after a restart: a better epoch whose checkpoint is gone

    def note(self, record: EpochMetrics, model) -> None:
        if self.mode == "best" and (self.best is None or record.hr_at_10 > self.best.hr_at_10):
            self.best, self.weights = record, [np.array(w, copy=True) for w in model.get_weights()]

    def restore(self, run: RunDir, saved: checkpoint.Saved | None, model) -> None:
        """After a restart: the best epoch so far (from the checkpoint's history) and its weights,
        from the model just restored or from a checkpoint still kept; else none is held."""
        if self.mode != "best" or saved is None:
            return
        history = saved.pointer.history  # never empty: a checkpoint is taken after an epoch
        best = max(history, key=lambda m: m.hr_at_10)
        if best.epoch == history[-1].epoch:
            weights = [np.array(w, copy=True) for w in model.get_weights()]  # the checkpoint just restored
        else:
            weights = checkpoint.kept_weights(run, best.epoch + 1, saved)
        if weights is None:
            self.gone = best
            log.warning("the best epoch so far (%d, HR@10 %.4f) has no checkpoint any more: the exported model "
                        "will be the best of the epochs trained after this restart", best.epoch, best.hr_at_10)
            return
        self.best, self.weights = best, weights
        log.info("best epoch so far: %d (HR@10 %.4f), its weights taken from its checkpoint", best.epoch,
                 best.hr_at_10)

    def choose(self, model, history: list[EpochMetrics]) -> tuple[str | None, EpochMetrics | None, str | None]:
        """Sets the model's weights to the ones to export; returns (best|last, their epoch's
        metrics, why the choice is not what the mode asked for, if it is not)."""
        chosen, record, reason = "last", history[-1] if history else None, None
        if self.mode == "best" and self.best is not None:
            chosen, record = "best", self.best
            model.set_weights(self.weights)
            if self.gone is not None and self.gone.hr_at_10 > record.hr_at_10:
                reason = (f"epoch {self.gone.epoch} scored better, but its checkpoint was gone after a "
                          f"restart: exported the best of the epochs trained after it")
        elif self.mode == "best" and record is not None:
            gone = self.gone.epoch if self.gone is not None else "?"
            reason = (f"the best epoch ({gone})'s checkpoint was gone after a restart and no epoch was "
                      f"trained since: exported the last")
        if reason:
            log.warning("exporting epoch %s: %s", record.epoch if record else None, reason)
        return (chosen if record else None), record, reason
