"""ncf-status DIR [--json] [--watch [SECONDS]] [--namespace NS --release NAME]"""

from __future__ import annotations

import argparse
import json
import sys
import time

from protocol import RunDir
from protocol.cli import Parser, positive, run

from .render import render
from .snapshot import FINAL_STATES, check_run_dir, read_snapshot

CLEAR_SCREEN = "\x1b[H\x1b[2J"
EXIT_RUN_FAILED = 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = Parser(
        prog="ncf-status",
        description="Shows the state of an ncf-tandem run: command, both sides' heartbeats, "
                    "epochs generated/ready/consumed, per-epoch metrics, ETA and result. "
                    "It only reads the run directory.",
        epilog="Exit codes: 0 shown (with --watch: the run is done); 1 with --watch: the run failed; "
               "2 no such run directory or bad arguments; 130 interrupted.",
    )
    parser.add_argument("run_dir", metavar="DIR", help="the run directory: a local path or gs://bucket/prefix")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (with --watch: one per line) instead of the screen")
    parser.add_argument("--watch", nargs="?", type=positive(float), const=5.0, default=None,
                        metavar="SECONDS", help="redraw every SECONDS (default 5) until the run is done or failed, "
                                                "or Ctrl-C; write DIR before --watch")
    parser.add_argument("--namespace", help="also show the release's Jobs and pods in this namespace")
    parser.add_argument("--release", help="the Helm release name (with --namespace)")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, "
                                             "then the pod's service account)")
    args = parser.parse_args(argv)
    if (args.namespace is None) != (args.release is None):
        parser.error("--namespace and --release go together")
    return args


def show_once(args: argparse.Namespace, run_dir: RunDir, clear: bool) -> str:
    """Prints one screen (or JSON object) and returns the run's phase."""
    snapshot = read_snapshot(run_dir)
    release = None
    if args.namespace:
        from .kube import read_release

        release = read_release(args.namespace, args.release, args.kubeconfig)
    if args.json:
        document = snapshot.to_dict()
        if release is not None:
            document["kubernetes"] = release.to_dict()
        print(json.dumps(document, sort_keys=True), flush=True)
    else:
        kube_lines = None
        if release is not None:
            from .kube import render_release

            kube_lines = render_release(release)
        sys.stdout.write((CLEAR_SCREEN if clear else "") + render(snapshot, kube_lines))
        sys.stdout.flush()
    # A Job out of retries (e.g. OOMKilled every time) never writes 'failed' to the
    # bucket: only Kubernetes can say that the run is over (a JobSet's restart is not).
    if release is not None and release.failed:
        return "failed"
    return snapshot.phase


def watch(args: argparse.Namespace, run_dir: RunDir) -> None:
    # Clearing only makes sense on a terminal; in a pipe or log each screen follows the last.
    clear = sys.stdout.isatty() and not args.json
    try:
        while True:
            try:
                phase = show_once(args, run_dir, clear)
            except OSError as error:  # a network blip must not end a watch of a long run
                print(f"could not read {run_dir.url} ({error}); trying again in {args.watch:g} s", file=sys.stderr,
                      flush=True)
                time.sleep(args.watch)
                continue
            if phase in FINAL_STATES:
                break
            if not (clear or args.json):
                print("-" * 40, flush=True)
            time.sleep(args.watch)
    except KeyboardInterrupt:
        sys.exit(130)  # Ctrl-C is how a person ends a watch: no traceback, no error line
    if phase == "failed":
        sys.exit(EXIT_RUN_FAILED)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    def status() -> None:
        run_dir = RunDir(args.run_dir)
        check_run_dir(run_dir)
        if args.watch:
            watch(args, run_dir)
        else:
            show_once(args, run_dir, clear=False)

    run("status", status)


if __name__ == "__main__":
    main()
