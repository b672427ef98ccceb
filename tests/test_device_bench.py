"""bench/device.py --smoke: the device benchmark's own code, at tiny sizes on this CPU, so it
is known to run before an accelerator machine is lent (issue 20 item 6)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from testkit.builders import REPO


@pytest.mark.slow
def test_device_bench_smoke_prints_sane_figures():
    done = subprocess.run([sys.executable, str(REPO / "bench" / "device.py"), "--smoke"], capture_output=True,
                          text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["smoke"] is True and figures["device"] == "cpu"
    rates = figures["train_step_examples_per_s"]
    assert sorted(rates) == ["float32", "mixed", "mixed_xla"]
    assert all(sorted(by_batch, key=int) == ["256", "1024", "4096"] for by_batch in rates.values())
    assert all(rate > 0 for by_batch in rates.values() for rate in by_batch.values())
    assert figures["best_train_step_examples_per_s"] == max(r for b in rates.values() for r in b.values())
    assert figures["ratio_to_goal"] == pytest.approx(figures["best_train_step_examples_per_s"] / 30e6, rel=1e-3)
    assert sorted(figures["speedup_vs_float32"]) == ["mixed", "mixed_xla"]
    pipeline = figures["input"]
    assert pipeline["examples"] == 200_000 and pipeline["cold_examples_per_s"] > 0 and pipeline["warm_examples_per_s"] > 0
    assert pipeline["cold_startup_s"] > 0, "the fresh process's one-off startup is reported apart"
    assert pipeline["cold_to_warm"] == pytest.approx(pipeline["cold_examples_per_s"] / pipeline["warm_examples_per_s"],
                                                     rel=1e-2)
    e2e = figures["end_to_end"]
    assert (e2e["dataset"], e2e["batch_size"]) == ("synthetic-small", 4096)
    assert e2e["examples"] > 0 and e2e["train_examples_per_s"] > 0 and 0 <= e2e["hr_at_10"] <= 1
    assert e2e["wall_s"] <= figures["seconds"]
