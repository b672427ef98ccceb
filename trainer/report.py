"""report.png: the run's learning curves and data waits at a glance.

Drawn with matplotlib's Agg backend (no display, no TensorFlow) and written to the run
directory through protocol.storage, so it lands next to metrics.jsonl on local disk and
in a bucket alike.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import tempfile

from protocol import Command, EpochMetrics, MessageError, Result, RunDir
from protocol import runfiles, storage

log = logging.getLogger(__name__)

FIGSIZE = (12.0, 3.8)  # inches: three panels side by side
DPI = 100  # 1200 x 380 pixels, a few tens of KB


def write_report(run: RunDir, target_hr: float | None = None) -> None:
    """Draws HR@10 / NDCG@10, loss and data wait per epoch from metrics.jsonl into run.report,
    with a line at target_hr (default: result.json's, if the run has one)."""
    records = read_metrics(run)
    title = _title(run)
    storage.overwrite(run.report, draw(records, title, target_hr if target_hr is not None else _target_hr(run)))


def read_metrics(run: RunDir) -> list[EpochMetrics]:
    records, problems = runfiles.read_metrics(run.metrics)
    for problem in problems:  # one bad line should not cost the whole picture
        log.warning("report: skipping %s", problem)
    return records


def _title(run: RunDir) -> str:
    try:
        command = storage.read_message(run.command, Command)
    except (FileNotFoundError, MessageError):
        return f"ncf-tandem {run.url}"
    return (f"ncf-tandem {command.run_id}: {command.dataset.name}, batch {command.train_batch_size}, "
            f"num_neg {command.num_neg}, eval {command.eval_mode} ({command.eval_negatives} negatives)")


def _target_hr(run: RunDir) -> float | None:
    # A report redrawn after the run: result.json holds the target (the trainer passes its
    # own, as it draws the report before it writes result.json).
    try:
        return storage.read_message(run.result, Result).target_hr
    except (FileNotFoundError, MessageError):
        return None


def draw(records: list[EpochMetrics], title: str, target_hr: float | None = None) -> bytes:
    """The PNG bytes of the three panels."""
    pyplot = _pyplot()
    figure, (quality, loss, wait) = pyplot.subplots(1, 3, figsize=FIGSIZE, dpi=DPI, layout="constrained")
    figure.suptitle(title, fontsize=11)
    epochs = [r.epoch for r in records]

    hr_label = "HR@10"
    if records:
        best = max(records, key=lambda r: r.hr_at_10)
        hr_label = f"HR@10 (best {best.hr_at_10:.4f}, epoch {best.epoch})"
        quality.plot([best.epoch], [best.hr_at_10], "*", markersize=14, color="tab:blue")
    quality.plot(epochs, [r.hr_at_10 for r in records], "o-", label=hr_label, color="tab:blue")
    quality.plot(epochs, [r.ndcg_at_10 for r in records], "s-", label="NDCG@10", color="tab:orange")
    if target_hr is not None:
        quality.axhline(target_hr, linestyle="--", color="tab:gray", linewidth=1, label=f"target HR@10 {target_hr:g}")
    quality.set(title="Evaluation", xlabel="epoch", ylim=(0, 1))
    quality.legend(loc="lower right", fontsize=8)

    loss.plot(epochs, [r.loss for r in records], "o-", color="tab:red")
    loss.set(title="Training loss", xlabel="epoch")

    wait.bar(epochs, [r.data_wait_s for r in records], color="tab:purple")
    wait.set(title="Trainer waited for data", xlabel="epoch", ylabel="seconds")

    for axes in (quality, loss, wait):
        axes.grid(alpha=0.3)
        axes.xaxis.get_major_locator().set_params(integer=True)
        if not records:
            axes.text(0.5, 0.5, "no epoch trained yet", ha="center", va="center", transform=axes.transAxes)

    buffer = io.BytesIO()
    # No bbox_inches="tight": the image keeps exactly FIGSIZE x DPI pixels.
    figure.savefig(buffer, format="png", dpi=DPI)
    pyplot.close(figure)
    return buffer.getvalue()


def _pyplot():
    """matplotlib.pyplot on the Agg backend, with a writable config/cache folder.

    The trainer image has a read-only root filesystem and may run with a HOME that is
    not writable; matplotlib then warns on every import, so point it at a temp folder.
    """
    if "matplotlib" not in sys.modules and not _writable(_config_dir()):
        os.environ["MPLCONFIGDIR"] = tempfile.mkdtemp(prefix="matplotlib-")
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def _config_dir() -> str:
    if os.environ.get("MPLCONFIGDIR"):
        return os.environ["MPLCONFIGDIR"]
    config_home = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(config_home, "matplotlib")


def _writable(folder: str) -> bool:
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)
