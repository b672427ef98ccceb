"""trainer/report.py: the PNG a person opens after (or during) a run."""

from __future__ import annotations

import io
import os
import subprocess
import sys

from PIL import Image

from testkit import fake_run
from protocol import RunDir
from protocol import storage
from trainer.report import DPI, FIGSIZE, write_report
from testkit.builders import REPO

SIZE = (round(FIGSIZE[0] * DPI), round(FIGSIZE[1] * DPI))


def decode(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()  # decodes every pixel: a truncated file fails here
    return image


def test_report_is_a_png_of_the_expected_size_on_both_backends(run_url):
    run = RunDir(run_url)
    fake_run.write_command(run, epochs=12)
    fake_run.write_metrics(run, fake_run.metrics(12))

    write_report(run)

    image = decode(storage.read_bytes(run.report))
    assert image.format == "PNG" and image.size == SIZE
    assert len(storage.read_bytes(run.report)) < 300_000  # small enough to open from a bucket
    # Not a blank canvas: the curves and bars put many colours on it.
    assert len(image.convert("RGB").getcolors(maxcolors=1 << 16) or []) > 50


def test_report_is_redrawn_as_the_run_goes_on(tmp_path):
    run = RunDir(str(tmp_path / "run"))
    fake_run.write_command(run)
    fake_run.write_metrics(run, fake_run.metrics(2))
    write_report(run)
    early = storage.read_bytes(run.report)

    fake_run.write_metrics(run, fake_run.metrics(6))
    write_report(run)

    assert storage.read_bytes(run.report) != early
    assert decode(storage.read_bytes(run.report)).size == SIZE


def test_report_without_metrics_or_command_is_still_a_picture(tmp_path):
    run = RunDir(str(tmp_path / "run"))
    (tmp_path / "run").mkdir()

    write_report(run)

    assert decode(storage.read_bytes(run.report)).size == SIZE


def test_a_bad_metrics_line_is_skipped_not_fatal(tmp_path):
    run = RunDir(str(tmp_path / "run"))
    fake_run.write_command(run)
    fake_run.write_metrics(run, fake_run.metrics(4), extra=b'{"epoch": 4, "hr_at')

    write_report(run)

    assert decode(storage.read_bytes(run.report)).size == SIZE


def test_report_needs_neither_tensorflow_nor_a_writable_home(tmp_path):
    """As in the trainer image: read-only root filesystem, HOME not writable, no display."""
    run = RunDir(str(tmp_path / "run"))
    fake_run.write_command(run)
    fake_run.write_metrics(run, fake_run.metrics(3))
    read_only = tmp_path / "home"
    read_only.mkdir()
    read_only.chmod(0o500)
    script = (
        "import sys\n"
        "sys.modules['tensorflow'] = None  # any import of TensorFlow now raises ImportError\n"
        "from protocol import RunDir\n"
        "from trainer.report import write_report\n"
        f"write_report(RunDir({run.url!r}))\n"
        "import matplotlib\n"
        "print(matplotlib.get_backend(), matplotlib.get_configdir())\n"
    )
    env = {k: v for k, v in os.environ.items() 
           if k not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME", "DISPLAY", "MPLBACKEND")}
    env["HOME"] = str(read_only)
    # As root, permissions do not stop writes; a non-existent folder under a file does.
    if os.geteuid() == 0:
        env["HOME"] = str(tmp_path / "a-file" / "home")
        (tmp_path / "a-file").write_text("not a folder")

    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)

    assert done.returncode == 0, done.stderr
    backend, config_dir = done.stdout.split()
    assert backend.lower() == "agg" and config_dir.startswith(("/tmp", os.environ.get("TMPDIR", "/tmp")))
    assert "Matplotlib created a temporary" not in done.stderr  # we chose the folder; no warning
    assert decode((tmp_path / "run" / "report.png").read_bytes()).size == SIZE
