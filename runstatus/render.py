"""The status screen: plain text, at most ~100 columns, no colour (reads the same in
`kubectl exec`, a log file or a terminal)."""

from __future__ import annotations

import time

from protocol import Status

from protocol.cli import duration

from .snapshot import Snapshot

MAX_METRIC_ROWS = 20  # older epochs are summarised: the screen must fit a terminal


def age(seconds: float) -> str:
    return f"{duration(seconds)} ago"


def render(snapshot: Snapshot, kube_lines: list[str] | None = None) -> str:
    lines = [_title(snapshot), ""]
    lines += _command_lines(snapshot)
    lines += [_side_line(snapshot, side) for side in snapshot.status]
    lines += _progress_lines(snapshot)
    lines += _result_lines(snapshot)
    lines += _metric_lines(snapshot)
    if kube_lines:
        lines += [""] + kube_lines
    if snapshot.problems:
        lines += ["", "Problems (these files could not be read):"]
        lines += [f"  {p}" for p in snapshot.problems]
    return "\n".join(lines) + "\n"


def _title(snapshot: Snapshot) -> str:
    read_at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(snapshot.read_at))
    return f"ncf-tandem run {snapshot.url}: {snapshot.phase.upper()}   (read {read_at})"


def _command_lines(snapshot: Snapshot) -> list[str]:
    command = snapshot.command
    if command is None:
        return ["Run        no command.json yet (the trainer writes it when it starts)"]
    dataset = command.dataset.name + (f" ({command.dataset.ratings})" if command.dataset.ratings else "")
    lines = [
        f"Run        {command.run_id}   dataset {dataset}",
        f"           {command.epochs} epochs, batch {command.train_batch_size}, num_neg {command.num_neg}, "
        f"eval {command.eval_mode} with {command.eval_negatives} negatives, seed {command.seed}",
    ]
    if snapshot.meta is not None:
        meta = snapshot.meta
        lines.append(f"Dataset    {meta.num_users:,} users, {meta.num_items:,} items, "
                     f"{meta.num_train:,} training positives")
    return lines


def _side_line(snapshot: Snapshot, side: str) -> str:
    status: Status | None = snapshot.status[side]
    label = (side.capitalize() + " ").ljust(11)
    if status is None:
        return f"{label}no heartbeat yet"
    epoch = f" epoch {status.epoch}" if status.epoch is not None else ""
    where = f" on {status.host}" if status.host else ""
    beat = f"heartbeat {age(snapshot.heartbeat_age(side))}"
    if snapshot.is_stale(side):
        beat += f" (STALE: it should beat every {status.heartbeat_interval:g} s)"
    speed = f", {status.examples_per_s:,.0f} examples/s" if status.examples_per_s else ""
    line = f"{label}{status.state.upper()}{epoch}{where}, {beat}{speed}"
    if status.message:
        line += f"\n           {status.message}"
    return line


def _progress_lines(snapshot: Snapshot) -> list[str]:
    total = snapshot.epochs_total
    of_total = f"/{total}" if total is not None else ""
    ready, in_progress = snapshot.epochs.ready, snapshot.epochs.in_progress
    lines = [
        f"Epochs     generated {snapshot.epochs_generated}{of_total}, "
        f"ready {len(ready)}{_epoch_list(ready)}, "
        f"consumed {snapshot.epochs_consumed}{of_total}"
        + (f", being written {_epoch_list(in_progress).strip()}" if in_progress else ""),
    ]
    if snapshot.command is not None:
        buffered, capacity = len(snapshot.buffered), snapshot.command.buffer_epochs
        note = ""
        if snapshot.phase == "running":
            if buffered >= capacity:
                note = " (full: the generator is ahead)"
            elif buffered == 0 and snapshot.epochs_consumed < (total or 0):
                note = " (empty: the trainer may wait for data)"
        lines.append(f"Buffer     {buffered}/{capacity} epochs ready and not yet consumed{note}")
    lines.append(f"ETA        {_eta(snapshot)}")
    return lines


def _epoch_list(epochs: list[int]) -> str:
    if not epochs:
        return ""
    if len(epochs) > 6:
        return f" ({epochs[0]}..{epochs[-1]})"
    return " (" + ", ".join(map(str, epochs)) + ")"


def _eta(snapshot: Snapshot) -> str:
    if snapshot.phase == "done":
        return "done"
    if snapshot.phase == "failed":
        return "none: the run failed"
    if snapshot.eta_s is None:
        return "unknown until the first epoch is trained"
    return (f"about {duration(snapshot.eta_s)} ({snapshot.epochs_left} epochs left at "
            f"{duration(snapshot.mean_epoch_s)} per epoch; sooner if --target-hr stops early)")


def _result_lines(snapshot: Snapshot) -> list[str]:
    report = [f"Report     {snapshot.report}"] if snapshot.report else []
    result = snapshot.result
    if result is None:
        return report
    best = f" at epoch {result.best_epoch}" if result.best_epoch is not None else ""
    target = ""
    if result.target_hr is not None:
        target = f", target HR@10 {result.target_hr:.3f} {'reached' if result.reached_target else 'NOT reached'}"
    return [
        f"Result     best HR@10 {result.best_hr_at_10:.4f}, NDCG@10 {result.best_ndcg_at_10:.4f}{best}; "
        f"last HR@10 {result.last_hr_at_10:.4f}, NDCG@10 {result.last_ndcg_at_10:.4f}",
        f"           {result.epochs_trained} epochs in {duration(result.wall_s)}{target}",
    ] + report


def _metric_lines(snapshot: Snapshot) -> list[str]:
    if not snapshot.metrics:
        return ["", "No epoch trained yet (metrics.jsonl is empty or missing)."]
    rows = snapshot.metrics[-MAX_METRIC_ROWS:]
    lines = ["", f"{'epoch':>5}  {'HR@10':>6}  {'NDCG@10':>7}  {'loss':>7}  {'examples/s':>11}  {'data wait s':>11}  {'ckpt wait s':>11}"]
    hidden = len(snapshot.metrics) - len(rows)
    if hidden:
        lines.append(f"{'...':>5}  ({hidden} earlier epochs not shown)")
    best = max(snapshot.metrics, key=lambda m: m.hr_at_10)
    for m in rows:
        mark = "  <- best HR@10" if m is best and len(snapshot.metrics) > 1 else ""
        lines.append(f"{m.epoch:>5}  {m.hr_at_10:>6.4f}  {m.ndcg_at_10:>7.4f}  {m.loss:>7.4f}  "
                     f"{m.examples_per_s:>11,.0f}  {m.data_wait_s:>11.1f}  {m.checkpoint_wait_s:>11.1f}{mark}")
    return lines
