"""What the console scripts share: log format, argument parsing, and the mapping of errors to exit codes."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass

from .errors import EXIT_OK, exit_code_for, first_line

log = logging.getLogger("ncf")


def duration(seconds: float) -> str:
    """A duration as a person reads it in logs and on the status screen: 42 s, 3 min 05 s, 2 h 10 min."""
    seconds = max(seconds, 0.0)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes} min {rest:02d} s"
    hours, rest = divmod(round(seconds) // 60, 60)
    return f"{hours} h {rest:02d} min"


@dataclass(frozen=True)
class Bounds:
    """The numbers a flag accepts: minimum (excluded when exclusive_minimum) up to maximum."""
    minimum: float
    maximum: float | None = None
    exclusive_minimum: bool = False

    def __contains__(self, value: float) -> bool:
        above = value > self.minimum if self.exclusive_minimum else value >= self.minimum
        return above and (self.maximum is None or value <= self.maximum)

    def describe(self, kind: type) -> str:
        """What a message says was expected: "a positive integer", "a number >= 0", "a number in (0, 1]"."""
        noun = "integer" if kind is int else "number"
        if self.minimum == 0 and self.maximum is None:
            return f"a {'positive' if self.exclusive_minimum else 'non-negative'} {noun}"
        a_noun = "an integer" if kind is int else "a number"
        if self.maximum is not None:
            return f"{a_noun} in {'(' if self.exclusive_minimum else '['}{self.minimum:g}, {self.maximum:g}]"
        return f"{a_noun} {'>' if self.exclusive_minimum else '>='} {self.minimum:g}"


POSITIVE = Bounds(0, exclusive_minimum=True)
NON_NEGATIVE = Bounds(0)


def number(kind: type, bounds: Bounds | None = None) -> Callable[[str], float]:
    """An argparse type: text -> kind (int or float), refused unless within bounds."""
    expected = bounds.describe(kind) if bounds else "an integer" if kind is int else "a number"

    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if bounds is not None and value not in bounds:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value
    convert.__name__ = kind.__name__
    return convert


def positive(kind: type) -> Callable[[str], float]:
    """The argparse type of every count, size and duration flag: int or float > 0."""
    return number(kind, POSITIVE)


class Parser(argparse.ArgumentParser):
    """argparse with the console scripts' one error style: one line `PROG: --FLAG: what was
    expected, got what`, on stderr, exit 2 (invalid input), no usage block."""

    def error(self, message: str):
        message = re.sub(r"^argument ([^:]+): ", r"\1: ", message)  # "argument --k: ..." -> "--k: ..."
        self.exit(2, f"{self.prog}: {message}\n")


def configure_logging(side: str) -> None:
    # One line per event, timestamped, no colour: reads well in `kubectl logs`.
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s {side} %(levelname)s %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
        force=True,
    )


def run(side: str, main: Callable[[], None]) -> None:
    """Runs main and exits with the documented code: 0 done, 2 invalid input, 3 peer, 1 other."""
    configure_logging(side)
    try:
        main()
    except KeyboardInterrupt:
        log.error("interrupted")
        sys.exit(130)
    except Exception as error:
        code = exit_code_for(error)
        if code == 1:  # unexpected: the traceback is what a person needs
            log.exception("failed: %s", error)
        else:
            log.error("%s", first_line(error, limit=None))
        sys.exit(code)
    sys.exit(EXIT_OK)
