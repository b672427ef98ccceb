"""The epochs' ready.json part listings of a run, as the fault tests and bench/chaos.py compare
them with a fault-free run's (the trainer deletes consumed epochs, so they are watched)."""

from __future__ import annotations

import threading

from protocol import Ready, RunDir, storage


def listings(run_url: str) -> dict[int, list[dict]]:
    """Every epoch's ready.json part listing present now."""
    run, found = RunDir(run_url), {}
    for name in storage.listdir(run.epochs_dir):
        if not name.isdigit():
            continue
        try:
            ready = storage.read_message(RunDir.ready(run.epoch_dir(int(name))), Ready)
        except FileNotFoundError:  # deleted by the trainer since the listing
            continue
        found[ready.epoch] = [p.to_dict() for p in ready.parts]
    return found


class Watcher:
    """Records the epochs' listings in the background while the Jobs run."""

    def __init__(self, run_url: str, interval: float = 0.05):
        self.run_url, self.interval = run_url, interval
        self.seen: dict[int, list[list[dict]]] = {}  # per epoch, each different listing seen, in order
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                now = listings(self.run_url)
            except OSError:  # the bucket's faults are the point: read again next time
                continue
            for epoch, parts in now.items():
                if parts not in self.seen.setdefault(epoch, []):
                    self.seen[epoch].append(parts)

    def stop(self) -> dict[int, list[list[dict]]]:
        self._stop.set()
        self._thread.join()
        return self.seen
