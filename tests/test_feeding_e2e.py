"""Issue 12 end to end: the two Jobs as processes through the chaos bucket shaped like a real
one (25 MB/s and 20 ms per connection). After epoch 0 the trainer never waits for data, no
checkpoint waits for the previous one, and ncf-status shows both waits."""

from __future__ import annotations

import subprocess
import sys

import pytest

from testkit.builders import REPO, metrics
from testkit.jobs import generator, trainer
from protocol import RunDir, storage

pytestmark = pytest.mark.slow


def test_shaped_bucket_keeps_the_trainer_fed(chaos_bucket, chaos_env, tmp_path):
    from testkit.chaos_bucket import shape

    chaos, bucket = chaos_bucket
    chaos.add(shape(bandwidth=25e6, latency=0.02))
    url = bucket + "/runs/fed"
    jobs = [generator(url, tmp_path, chaos_env),
            trainer(url, tmp_path, chaos_env, epochs=4)]
    codes = {job.module: job.wait(240) for job in jobs}
    assert codes == {"generator": 0, "trainer": 0}, "\n".join(j.log[-3000:] for j in jobs)
    lines = metrics(url)
    assert [m.epoch for m in lines] == [0, 1, 2, 3]
    assert all(m.data_wait_s < 0.01 for m in lines[1:]), [m.data_wait_s for m in lines]
    assert all(m.checkpoint_wait_s < 0.01 for m in lines), [m.checkpoint_wait_s for m in lines]
    assert chaos.counts()["shape"] > 20
    assert storage.listdir(storage.join(url, "tensorboard")) and storage.listdir(RunDir(url).epochs_dir) == []
    shown = subprocess.run([sys.executable, "-m", "runstatus", url], cwd=REPO, env=chaos_env,
                           capture_output=True, text=True, timeout=60)
    assert "data wait s" in shown.stdout and "ckpt wait s" in shown.stdout, shown.stdout + shown.stderr
