"""ncf-status against run directories on local disk and on the real fake-gcs-server.

Each run directory is written message by message through protocol.storage (testkit/fake_run.py),
as the generator and trainer would, and the console tool is run as a subprocess, as a
person would run it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testkit import fake_run
from testkit.builders import write_status
from protocol import RunDir
from protocol import storage
from runstatus.render import duration
from testkit.builders import REPO



def ncf_status(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runstatus", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def status_json(env: dict[str, str], url: str) -> dict:
    done = ncf_status(env, url, "--json")
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()  # exactly one JSON object, nothing else on stdout
    return json.loads(line)


def compact(text: str) -> str:
    return re.sub(r"[ \t]+", " ", text)


# ---- a run in full swing ---------------------------------------------------------------


def test_mid_run_screen_shows_command_sides_epochs_buffer_metrics_and_eta(run_url, cli_env):
    run = RunDir(run_url)
    fake_run.mid_run(run, trained=5, epochs=20)

    done = ncf_status(cli_env, run_url)

    assert done.returncode == 0, done.stderr
    screen = compact(done.stdout)
    assert f"ncf-tandem run {run_url}: RUNNING" in screen
    assert fake_run.RUN_ID in screen and "dataset synthetic-small" in screen
    assert "20 epochs, batch 2048, num_neg 4, eval mlperf with 999 negatives" in screen
    assert "6,040 users, 3,706 items, 994,169 training positives" in screen
    assert re.search(r"Generator GENERATING epoch 8 on ncf-generator-0, heartbeat \d+ s ago", screen)
    assert "waiting for a free buffer slot" in screen  # the generator's own message
    assert re.search(r"Trainer TRAINING epoch 5 on ncf-trainer-0, heartbeat 1\d s ago, 2,450,000 examples/s",
                     screen)
    assert "generated 8/20, ready 3 (5, 6, 7), consumed 5/20, being written (8)" in screen
    assert "Buffer 3/3 epochs ready and not yet consumed (full" in screen
    # 15 epochs left, the metrics are 30 s apart: 450 s.
    assert "ETA about 7 min 30 s (15 epochs left at 30 s per epoch" in screen
    table = [line.split() for line in done.stdout.splitlines() if re.match(r"^\s+\d+\s+0\.\d{4}", line)]
    assert [row[0] for row in table] == ["0", "1", "2", "3", "4"]
    first = fake_run.metrics(5)[0]
    assert table[0][1:6] == [f"{first.hr_at_10:.4f}", f"{first.ndcg_at_10:.4f}", f"{first.loss:.4f}",
                             "2,400,000", "4.0"]
    assert "STALE" not in screen and "Problems" not in screen


def test_json_has_the_same_facts_for_scripts(run_url, cli_env):
    run = RunDir(run_url)
    fake_run.mid_run(run, trained=5, epochs=20)

    facts = status_json(cli_env, run_url)

    assert facts["phase"] == "running"
    assert facts["command"]["run_id"] == fake_run.RUN_ID and facts["command"]["epochs"] == 20
    assert facts["dataset"]["num_items"] == 3706
    assert facts["generator"]["state"] == "generating"
    assert 12 <= facts["trainer"]["heartbeat_age_s"] < 60 and not facts["trainer"]["stale"]
    assert facts["epochs"] == {"total": 20, "generated": 8, "ready": [5, 6, 7], "in_progress": [8],
                               "consumed": 5, "buffered": 3, "buffer_epochs": 3}
    assert [m["epoch"] for m in facts["metrics"]] == [0, 1, 2, 3, 4]
    assert facts["metrics"][0]["data_wait_s"] == 4.0
    assert facts["mean_epoch_s"] == pytest.approx(30.0)
    assert facts["eta_s"] == pytest.approx(450.0)
    assert facts["result"] is None and facts["problems"] == []


def test_empty_buffer_says_the_trainer_may_wait(tmp_path, cli_env):
    run = RunDir(str(tmp_path / "run"))
    fake_run.write_command(run, epochs=10)
    write_status(run.url, "generator", "generating", epochs_done=3, epoch=3)
    write_status(run.url, "trainer", "waiting", epochs_done=3, epoch=3,
                          message="waiting for epoch 3 (ready.json)")
    fake_run.write_metrics(run, fake_run.metrics(3))

    screen = compact(ncf_status(cli_env, run.url).stdout)

    assert "Buffer 0/3 epochs ready and not yet consumed (empty: the trainer may wait for data)" in screen
    assert "Trainer WAITING epoch 3" in screen and "waiting for epoch 3 (ready.json)" in screen


# ---- before anything is there ----------------------------------------------------------


def test_a_generator_waiting_for_the_command_is_shown_with_what_is_missing(run_url, cli_env):
    run = RunDir(run_url)
    write_status(run.url, "generator", "waiting", message="waiting for command.json")

    done = ncf_status(cli_env, run_url)

    assert done.returncode == 0, done.stderr
    screen = compact(done.stdout)
    assert "no command.json yet" in screen
    assert "Generator WAITING" in screen and "waiting for command.json" in screen
    assert "Trainer no heartbeat yet" in screen
    assert "ETA unknown until the first epoch is trained" in screen
    assert "No epoch trained yet" in screen
    facts = status_json(cli_env, run_url)
    assert facts["command"] is None and facts["trainer"] is None and facts["phase"] == "running"


def test_an_empty_local_run_dir_is_not_started_not_an_error(tmp_path, cli_env):
    (tmp_path / "run").mkdir()

    done = ncf_status(cli_env, str(tmp_path / "run"))

    assert done.returncode == 0, done.stderr
    screen = compact(done.stdout)
    assert ": NOT STARTED" in screen
    assert "Generator no heartbeat yet" in screen and "Trainer no heartbeat yet" in screen


def test_a_missing_local_dir_is_one_clear_line_and_exit_2(tmp_path, cli_env):
    missing = str(tmp_path / "no-such-run")

    done = ncf_status(cli_env, missing)

    assert done.returncode == 2
    assert done.stdout == ""
    (line,) = done.stderr.strip().splitlines()
    assert line.endswith(f"{missing}: no such run directory")


@pytest.mark.parametrize("where", ["empty prefix", "no such bucket"])
def test_a_missing_gcs_run_dir_is_one_clear_line_and_exit_2(gcs_bucket, cli_env, where):
    url = f"{gcs_bucket}/runs/never-written" if where == "empty prefix" else "gs://no-such-bucket-ncf/run"

    done = ncf_status(cli_env, url)

    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert url in line and "no such run directory" in line


# ---- the end of a run ------------------------------------------------------------------


def finished_run(run: RunDir, epochs: int = 8) -> None:
    fake_run.write_command(run, epochs=epochs)
    records = fake_run.metrics(epochs)
    fake_run.write_metrics(run, records)
    write_status(run.url, "generator", "done", epochs_done=epochs, age_s=400)
    write_status(run.url, "trainer", "done", epochs_done=epochs, age_s=300)
    fake_run.write_result(run, records, target_hr=0.62)
    storage.overwrite(run.report, b"\x89PNG not decoded by ncf-status")


def test_a_finished_run_shows_its_result(run_url, cli_env):
    run = RunDir(run_url)
    finished_run(run)

    done = ncf_status(cli_env, run_url)

    assert done.returncode == 0, done.stderr
    screen = compact(done.stdout)
    records = fake_run.metrics(8)
    assert ": DONE" in screen and "ETA done" in screen
    assert f"Result best HR@10 {records[-1].hr_at_10:.4f}" in screen and "at epoch 7" in screen
    assert "target HR@10 0.620 reached" in screen
    assert f"Report {run.report}" in screen
    assert "STALE" not in screen  # a finished side stops beating; that is not a problem
    assert "<- best HR@10" in screen


def test_a_failed_side_shows_failed_and_its_message(run_url, cli_env):
    run = RunDir(run_url)
    fake_run.mid_run(run)
    write_status(run.url, "trainer", "failed", epochs_done=5, epoch=5,
                          message="CorruptData: epochs/000005/part-00000: crc32c mismatch")

    done = ncf_status(cli_env, run_url)

    screen = compact(done.stdout)
    assert ": FAILED" in screen and "Trainer FAILED epoch 5" in screen
    assert "crc32c mismatch" in screen
    assert "ETA none: the run failed" in screen


def test_a_silent_side_is_flagged_stale(tmp_path, cli_env):
    run = RunDir(str(tmp_path / "run"))
    fake_run.mid_run(run)
    write_status(run.url, "generator", "generating", epochs_done=8, epoch=8, age_s=300)

    screen = compact(ncf_status(cli_env, run.url).stdout)

    assert "heartbeat 5 min 00 s ago (STALE" in screen or "heartbeat 5 min 01 s ago (STALE" in screen
    assert status_json(cli_env, run.url)["generator"]["stale"] is True


@pytest.mark.parametrize("interval, age_s, stale", [(10.0, 50, False), (10.0, 70, True), (60.0, 300, False),
                                                   (1.0, 7, True)])
def test_staleness_is_judged_by_the_writers_own_heartbeat_interval(tmp_path, cli_env, interval, age_s, stale):
    run = RunDir(str(tmp_path / "run"))
    fake_run.mid_run(run)
    write_status(run.url, "generator", "generating", epochs_done=8, epoch=8, age_s=age_s, heartbeat_interval=interval)

    assert status_json(cli_env, run.url)["generator"]["stale"] is stale
    screen = compact(ncf_status(cli_env, run.url).stdout)
    assert (f"(STALE: it should beat every {interval:g} s)" in screen) is stale


def test_unreadable_files_are_listed_and_the_rest_is_still_shown(run_url, cli_env):
    run = RunDir(run_url)
    fake_run.mid_run(run, trained=3)
    # A half-written last line and a heartbeat from a newer writer with an unknown field.
    fake_run.write_metrics(run, fake_run.metrics(3), extra=b'{"epoch": 3, "hr_at')
    heartbeat = json.loads(storage.read_bytes(run.status("generator")))
    storage.overwrite(run.status("generator"), json.dumps({**heartbeat, "gpu": "H100"}).encode())

    done = ncf_status(cli_env, run_url)

    assert done.returncode == 0, done.stderr
    screen = compact(done.stdout)
    assert "Problems (these files could not be read):" in screen
    assert "metrics.jsonl line 4" in screen and "generator.json: field 'gpu'" in screen
    assert "Generator no heartbeat yet" in screen and "Trainer TRAINING" in screen
    assert len([line for line in done.stdout.splitlines() if re.match(r"^\s+\d+\s+0\.\d{4}", line)]) == 3


def test_a_long_run_shows_the_last_20_epochs(tmp_path, cli_env):
    run = RunDir(str(tmp_path / "run"))
    fake_run.write_command(run, epochs=50)
    fake_run.write_metrics(run, fake_run.metrics(30))

    done = ncf_status(cli_env, run.url)

    rows = [line.split()[0] for line in done.stdout.splitlines() if re.match(r"^\s+\d+\s+0\.\d{4}", line)]
    assert rows == [str(e) for e in range(10, 30)]
    assert "(10 earlier epochs not shown)" in done.stdout


# ---- it never writes -------------------------------------------------------------------


def run_files(url: str) -> dict[str, tuple]:
    """Every file and folder under url with its content and version (mtime or generation)."""
    if url.startswith("gs://"):
        import gcsfs

        fs = gcsfs.GCSFileSystem(token="anon", use_listings_cache=False, skip_instance_cache=True)
        found = fs.find(url.removeprefix("gs://"), detail=True)
        return {path: (info["generation"], info["metageneration"], fs.cat_file(path))
                for path, info in found.items()}
    files = {}
    for folder, _, names in os.walk(url):
        files[folder] = (os.stat(folder).st_mtime_ns,)
        for name in names:
            path = os.path.join(folder, name)
            files[path] = (os.stat(path).st_mtime_ns, Path(path).read_bytes())
    return files


def test_status_never_writes_to_the_run(run_url, cli_env):
    run = RunDir(run_url)
    fake_run.mid_run(run)
    before = run_files(run_url)
    assert len(before) > 10

    for args in ([], ["--json"]):
        assert ncf_status(cli_env, run_url, *args).returncode == 0
    fake_run.write_result(run, fake_run.metrics(5))  # lets --watch finish on its own
    before = run_files(run_url)
    assert ncf_status(cli_env, run_url, "--watch", "0.1").returncode == 0
    assert ncf_status(cli_env, run_url, "--watch", "0.1", "--json").returncode == 0

    assert run_files(run_url) == before


# ---- --watch ---------------------------------------------------------------------------


def start_watch(env, url: str, output: Path, *args: str) -> subprocess.Popen:
    # Ctrl-C as in a terminal, even when the suite itself runs as a background job (whose
    # children inherit SIGINT ignored, which Python then keeps).
    return subprocess.Popen([sys.executable, "-m", "runstatus", url, "--watch", "0.2", *args],
                            cwd=REPO, env=env, stdout=output.open("w"), stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for_screens(output: Path, marker: str, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while output.read_text().count(marker) < count:
        assert time.monotonic() < deadline, f"fewer than {count} screens in {timeout} s"
        time.sleep(0.05)


def test_watch_redraws_until_the_run_is_done(run_url, cli_env, tmp_path):
    run = RunDir(run_url)
    fake_run.mid_run(run, trained=5, epochs=6)
    output = tmp_path / "screens.txt"
    watch = start_watch(cli_env, run_url, output)
    try:
        wait_for_screens(output, "ncf-tandem run", 2)
        fake_run.write_metrics(run, fake_run.metrics(6))
        write_status(run.url, "trainer", "done", epochs_done=6)
        fake_run.write_result(run, fake_run.metrics(6))
        assert watch.wait(timeout=30) == 0, watch.stderr.read()
    finally:
        watch.kill()
    screens = output.read_text().split("ncf-tandem run")[1:]
    assert len(screens) >= 3
    assert ": RUNNING" in screens[0] and ": DONE" in screens[-1] and "Result" in screens[-1]


def test_watch_json_prints_one_object_per_refresh_and_exits_1_when_the_run_fails(tmp_path, cli_env):
    run = RunDir(str(tmp_path / "run"))
    fake_run.mid_run(run)
    output = tmp_path / "lines.jsonl"
    watch = start_watch(cli_env, run.url, output, "--json")
    try:
        wait_for_screens(output, "\n", 2)
        write_status(run.url, "generator", "failed", message="MemoryError")
        assert watch.wait(timeout=30) == 1
    finally:
        watch.kill()
    phases = [json.loads(line)["phase"] for line in output.read_text().splitlines()]
    assert phases[0] == "running" and phases[-1] == "failed"


def test_ctrl_c_ends_a_watch_at_once_without_a_traceback(tmp_path, cli_env):
    run = RunDir(str(tmp_path / "run"))
    fake_run.mid_run(run)
    output = tmp_path / "screens.txt"
    watch = start_watch(cli_env, run.url, output)
    try:
        wait_for_screens(output, "ncf-tandem run", 1)
        watch.send_signal(signal.SIGINT)
        assert watch.wait(timeout=10) == 130
    finally:
        watch.kill()
    assert "Traceback" not in watch.stderr.read()


@pytest.mark.parametrize("args", [["--watch", "0"], ["--namespace", "ml"], ["--release", "demo"]])
def test_bad_arguments_exit_2(tmp_path, cli_env, args):
    done = ncf_status(cli_env, str(tmp_path), *args)
    assert done.returncode == 2 and done.stdout == ""


def test_durations_read_naturally():
    assert [duration(s) for s in (0.4, 12, 89, 250, 5399, 7500)] == [
        "0 s", "12 s", "89 s", "4 min 10 s", "89 min 59 s", "2 h 05 min"]
