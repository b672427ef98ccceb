"""Heartbeats and judging the other side alive, failed, silent or absent."""

import dataclasses
import time

import pytest

from protocol import EXIT_INVALID, InvalidInput, PeerError, RunDir, Status, storage
from protocol.errors import PeerFailedFinally, exit_code_for
from protocol.peer import Heartbeat, PeerWatch


@pytest.mark.slow
def test_heartbeat_is_written_on_state_change_and_records_failure(run_url):
    run = RunDir(run_url)
    with pytest.raises(ValueError):
        with Heartbeat(run, "generator", interval=60) as beat:
            assert storage.read_message(run.status("generator"), Status).state == "starting"
            beat.update(state="generating", epoch=3, run_id="r1")
            assert beat.flush(timeout=10)
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


def failed(side: str, at: float, pid: int = 1, message: str = "command.json: field 'num_neg'") -> Status:
    return Status(side=side, state="failed", run_id="r", epoch=None, epochs_done=0, time=at, pid=pid,
                  message=message)


def test_a_peer_that_failed_gets_peer_timeout_to_come_back_then_is_reported_with_its_message(run_url):
    run = RunDir(run_url)
    storage.overwrite(run.status("generator"), failed("generator", time.time()))
    watch = PeerWatch(run, "generator", start_timeout=60, peer_timeout=0.5, min_poll=0)
    assert watch.check().state == "failed"  # not final: Kubernetes may restart it
    time.sleep(0.6)
    with pytest.raises(PeerError, match=r"the generator failed: command.json: field 'num_neg' \(no new attempt"):
        watch.check()


def test_a_failed_peer_that_comes_back_is_alive(run_url):
    run = RunDir(run_url)
    storage.overwrite(run.status("generator"), failed("generator", time.time()))
    watch = PeerWatch(run, "generator", start_timeout=60, peer_timeout=0.5, min_poll=0)
    watch.check()
    time.sleep(0.3)
    with Heartbeat(run, "generator", interval=0.1):  # the new attempt (another pid)
        for _ in range(6):
            time.sleep(0.15)
            assert watch.check().state == "starting"


def test_a_failure_from_before_this_process_started_waits_for_start_timeout(run_url):
    run = RunDir(run_url)
    storage.overwrite(run.status("trainer"), failed("trainer", time.time() - 600, message="OOM"))
    watch = PeerWatch(run, "trainer", start_timeout=0.6, peer_timeout=0.1, min_poll=0,
                      process_started=time.time())
    assert watch.check() is None  # an earlier attempt's: as if not started yet
    time.sleep(0.3)
    assert watch.check() is None  # past --peer-timeout: still waiting
    time.sleep(0.4)
    with pytest.raises(PeerError, match="the trainer failed before this process started.*--start-timeout.*OOM"):
        watch.check()


def test_invalid_input_leaves_a_final_status_with_its_exit_code(run_url):
    run = RunDir(run_url)
    with pytest.raises(InvalidInput), Heartbeat(run, "generator", interval=60):
        raise InvalidInput("/data/u.data: ratings file not found (dataset.ratings in command.json)")
    status = storage.read_message(run.status("generator"), Status)
    assert (status.exit_code, status.final) == (EXIT_INVALID, True)
    assert status.message == "InvalidInput: /data/u.data: ratings file not found (dataset.ratings in command.json)"


def test_a_final_failure_seen_live_ends_the_watch_at_once_with_exit_2(run_url):
    run = RunDir(run_url)
    storage.overwrite(run.status("generator"), dataclasses.replace(failed("generator", time.time()), exit_code=2))
    watch = PeerWatch(run, "generator", start_timeout=60, peer_timeout=300, min_poll=0)
    with pytest.raises(PeerFailedFinally, match=r"^the generator failed with exit code 2 \(invalid input; it will not "
                                                r"be retried\): command.json: field 'num_neg'$") as caught:
        watch.check()  # at once: no --peer-timeout
    assert exit_code_for(caught.value) == EXIT_INVALID


def test_a_final_failure_from_before_this_process_started_is_an_earlier_attempts(run_url):
    # A rerun after the typo was fixed: the old generator's exit 2 must not end the new trainer.
    run = RunDir(run_url)
    old = dataclasses.replace(failed("generator", time.time() - 600), exit_code=2)
    storage.overwrite(run.status("generator"), old)
    watch = PeerWatch(run, "generator", start_timeout=60, peer_timeout=0.1, min_poll=0, process_started=time.time())
    assert watch.check() is None  # as if not started yet


def test_a_failure_within_the_clock_skew_allowance_counts_as_live(run_url):
    run = RunDir(run_url)
    now = time.time()
    storage.overwrite(run.status("trainer"), failed("trainer", now - 10))  # 10 s < CLOCK_SKEW_S before our start
    watch = PeerWatch(run, "trainer", start_timeout=60, peer_timeout=0.2, min_poll=0, process_started=now)
    assert watch.check().state == "failed"
    time.sleep(0.3)
    with pytest.raises(PeerError, match="the trainer failed"):
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


@pytest.mark.slow
def test_heartbeat_writes_are_spaced_for_gcs_rate_limits(run_url):
    run = RunDir(run_url)
    times = []
    with Heartbeat(run, "trainer", interval=10) as beat:
        for state in ("waiting", "training", "waiting"):
            started = time.monotonic()
            beat.update(state=state)
            assert time.monotonic() - started < 0.1, "update never waits for a write"
            assert beat.flush(timeout=10)
            times.append(storage.read_message(run.status("trainer"), Status).time)
    assert storage.read_message(run.status("trainer"), Status).state == "waiting", "the last state wins"
    assert all(later - earlier >= 0.99 for earlier, later in zip(times, times[1:])), times
