"""Heartbeats and judging the other side alive, failed, silent or absent."""

import time

import pytest

from protocol import PeerError, RunDir, Status, storage
from protocol.peer import Heartbeat, PeerWatch


def test_heartbeat_is_written_on_state_change_and_records_failure(run_url):
    run = RunDir(run_url)
    with pytest.raises(ValueError):
        with Heartbeat(run, "generator", interval=60) as beat:
            assert storage.read_message(run.status("generator"), Status).state == "starting"
            beat.update(state="generating", epoch=3, run_id="r1")
            assert storage.read_message(run.status("generator"), Status).epoch == 3
            raise ValueError("num_neg too large\nsecond line")
    status = storage.read_message(run.status("generator"), Status)
    assert status.state == "failed" and status.message == "ValueError: num_neg too large"


def test_heartbeat_refreshes_its_time_while_idle(run_url):
    run = RunDir(run_url)
    with Heartbeat(run, "trainer", interval=0.2):
        first = storage.read_message(run.status("trainer"), Status).time
        time.sleep(1.0)
        assert storage.read_message(run.status("trainer"), Status).time > first


def test_peer_that_never_starts_times_out(run_url):
    watch = PeerWatch(RunDir(run_url), "trainer", start_timeout=0.5, peer_timeout=60, min_poll=0.05)
    assert watch.check() is None
    time.sleep(0.6)
    with pytest.raises(PeerError, match="the trainer never started.*--start-timeout"):
        watch.check()


def test_failed_peer_is_reported_with_its_message(run_url):
    run = RunDir(run_url)
    storage.overwrite(run.status("generator"), Status(side="generator", state="failed", run_id="r", epoch=None,
                                                      epochs_done=0, message="command.json: field 'num_neg'"))
    watch = PeerWatch(run, "generator", start_timeout=60, peer_timeout=60, min_poll=0)
    with pytest.raises(PeerError, match="the generator failed: command.json: field 'num_neg'"):
        watch.check()


def test_silent_peer_is_judged_by_the_watchers_clock(run_url):
    run = RunDir(run_url)
    # A heartbeat stamped far in the future (clock skew) still goes stale once it stops changing.
    frozen = Status(side="generator", state="generating", run_id="r", epoch=1, epochs_done=1, time=time.time() + 9999)
    storage.overwrite(run.status("generator"), frozen)
    watch = PeerWatch(run, "generator", start_timeout=60, peer_timeout=0.5, min_poll=0)
    assert watch.check() == frozen
    time.sleep(0.7)
    with pytest.raises(PeerError, match="the generator went silent.*--peer-timeout"):
        watch.check()


def test_live_and_done_peers_pass(run_url):
    run = RunDir(run_url)
    watch = PeerWatch(run, "trainer", start_timeout=60, peer_timeout=0.3, min_poll=0)
    with Heartbeat(run, "trainer", interval=0.05):
        for _ in range(5):
            time.sleep(0.15)
            assert watch.check().state == "starting"
    storage.overwrite(run.status("trainer"), Status(side="trainer", state="done", run_id="r", epoch=None, epochs_done=3))
    watch.check()
    time.sleep(0.5)
    assert watch.check().state == "done", "a finished peer is not silent"


def test_heartbeat_writes_are_spaced_for_gcs_rate_limits(run_url):
    run = RunDir(run_url)
    times = []
    with Heartbeat(run, "trainer", interval=10) as beat:
        for state in ("waiting", "training", "waiting"):
            beat.update(state=state)
            times.append(storage.read_message(run.status("trainer"), Status).time)
    assert storage.read_message(run.status("trainer"), Status).state == "waiting", "the last state wins"
    assert all(later - earlier >= 0.99 for earlier, later in zip(times, times[1:])), times
