"""What both console scripts share: log format and the mapping of errors to exit codes."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

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
