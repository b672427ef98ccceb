"""Runs the trainer's console entry in this process and returns its exit code."""

from __future__ import annotations

from protocol.cli import run


def run_cli(args: list[str]) -> int:
    from trainer import train

    try:
        run("trainer", lambda: train.main(args))
    except SystemExit as done:
        return done.code
    raise AssertionError("protocol.cli.run returned without exiting")
