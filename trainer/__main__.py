"""`ncf-trainer` / `python -m trainer`: exit 0 done, 2 invalid input, 3 generator failed, 1 other."""

import os
import sys

from protocol.cli import run


def main() -> None:
    # TensorFlow's C++ INFO lines (oneDNN notices and the like) drown the progress log.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    from trainer import train  # imported inside: TensorFlow loads after logging is set up

    run("trainer", lambda: train.main(sys.argv[1:]))


if __name__ == "__main__":
    main()
