"""ncf-generator: the CPU Job that writes eval data and training epochs for the trainer."""

from __future__ import annotations

import sys

from protocol import cli, flags

from .config import Options
from .job import generate


def parser() -> cli.Parser:
    return flags.build_parser(flags.rows(Options), prog="ncf-generator",
                              description="Waits for the trainer's command.json in the run directory, then writes "
                                          "the dataset metadata, the eval data and every training epoch (DESIGN.md).")


def parse_args(argv: list[str]) -> Options:
    return Options(**vars(parser().parse_args(argv)))


def main(argv: list[str] | None = None) -> None:
    options = parse_args(sys.argv[1:] if argv is None else argv)
    cli.run("generator", lambda: generate(options))


if __name__ == "__main__":
    main()
