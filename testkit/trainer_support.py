"""Helpers for the trainer tests: run directories written directly with protocol (no generator).

`write_run` publishes a command.json, meta.json, eval data and training epochs the way
the generator would, so the trainer suite does not depend on the generator's progress.
"""

from __future__ import annotations


import numpy as np

from testkit import builders
from protocol import Command, DatasetMeta, Ready, RunDir, parts, storage
from protocol.cli import run

def command(epochs=3, batch=256, eval_negatives=99, **settings) -> Command:
    """The trainer tests' usual command: synthetic-small, batch 256, 99 eval negatives."""
    return builders.command(epochs=epochs, train_batch_size=batch, eval_negatives=eval_negatives, **settings)


def trainer_args(url: str, cmd: Command, *extra: str) -> list[str]:
    args = ["--data-dir", url, "--dataset", cmd.dataset.name, "--epochs", str(cmd.epochs), "--batch-size",
            str(cmd.train_batch_size), "--num-neg", str(cmd.num_neg), "--eval-negatives", str(cmd.eval_negatives),
            "--eval-mode", cmd.eval_mode, "--seed", str(cmd.seed), "--heartbeat-interval", "0.5"]
    if cmd.dataset.ratings:
        args += ["--ratings", cmd.dataset.ratings]
    return args + list(extra)


def publish_eval(run: RunDir, run_id: str, user: np.ndarray, items: np.ndarray, mask: np.ndarray, num_parts=2) -> None:
    infos = []
    for i, idx in enumerate(np.array_split(np.arange(len(user)), num_parts)):
        infos.append(parts.write(storage.join(run.eval_dir, RunDir.part_name(i)),
                                 {"user": user[idx], "items": items[idx], "mask": mask[idx]}))
    storage.publish_once(RunDir.ready(run.eval_dir), Ready(run_id=run_id, kind="eval", epoch=None,
                                                           num_examples=len(user), parts=infos))


def publish_epoch(run: RunDir, run_id: str, epoch: int, user, item, label, num_parts=2) -> Ready:
    folder = run.epoch_dir(epoch)
    infos = []
    for i, idx in enumerate(np.array_split(np.arange(len(label)), num_parts)):
        infos.append(parts.write(storage.join(folder, RunDir.part_name(i)),
                                 {"user": user[idx], "item": item[idx], "label": label[idx]}))
    ready = Ready(run_id=run_id, kind="train", epoch=epoch, num_examples=len(label), parts=infos)
    storage.publish_once(RunDir.ready(folder), ready)
    return ready


def write_run(url: str, cmd: Command, num_users=60, num_items=120, positives_per_user=12, epochs=None,
              generator_state="generating") -> RunDir:
    """A small learnable data set: each user likes one of 6 item clusters."""
    run = RunDir(url)
    storage.ensure_writable(url)
    storage.publish_once(run.command, cmd)
    rng = np.random.default_rng(cmd.seed)
    cluster_of_user = rng.integers(0, 6, num_users)
    cluster_items = np.array_split(np.arange(num_items), 6)
    liked = [rng.choice(cluster_items[c], positives_per_user + 1, replace=False) for c in cluster_of_user]
    storage.publish_once(run.meta, DatasetMeta(run_id=cmd.run_id, dataset=cmd.dataset.name, fingerprint="test",
                                               num_users=num_users, num_items=num_items,
                                               num_ratings=num_users * (positives_per_user + 1),
                                               num_train=num_users * positives_per_user))
    width = 1 + cmd.eval_negatives
    items = np.empty((num_users, width), np.uint16)
    mask = np.ones((num_users, width), np.uint8)
    for u in range(num_users):
        items[u, 0] = liked[u][-1]
        items[u, 1:] = rng.integers(0, num_items, cmd.eval_negatives)
        _, first = np.unique(items[u], return_index=True)
        dup = np.ones(width, bool)
        dup[first] = False
        mask[u, dup] = 0
    publish_eval(run, cmd.run_id, np.arange(num_users, dtype=np.uint32), items, mask)
    for epoch in range(cmd.epochs if epochs is None else epochs):
        epoch_rng = np.random.default_rng([cmd.seed, epoch])
        pu = np.repeat(np.arange(num_users), positives_per_user)
        pi = np.concatenate([l[:-1] for l in liked])
        nu = np.repeat(pu, cmd.num_neg)
        ni = epoch_rng.integers(0, num_items, len(nu))
        user = np.concatenate([pu, nu]).astype(np.uint16)
        item = np.concatenate([pi, ni]).astype(np.uint16)
        label = np.concatenate([np.ones(len(pu), np.uint8), np.zeros(len(nu), np.uint8)])
        order = epoch_rng.permutation(len(label))
        publish_epoch(run, cmd.run_id, epoch, user[order], item[order], label[order])
    if generator_state:
        builders.write_status(url, "generator", generator_state, run_id=cmd.run_id)
    return run


def run_cli(args: list[str]) -> int:
    """Runs the trainer's console entry in this process and returns its exit code."""
    from trainer import train

    try:
        run("trainer", lambda: train.main(args))
    except SystemExit as done:
        return done.code
    raise AssertionError("protocol.cli.run returned without exiting")
