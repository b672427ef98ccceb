"""Identity and IAM on GCS (DESIGN.md "Past one pod", what GKE does on first contact): Google's
default credentials and never anonymous, missing credentials waited for a bounded time, and a
write's 403 waited out while a fresh IAM grant spreads (--permission-wait), then exit 2 naming the
URL, the principal and the role. The 403s come from the chaos bucket in front of the real
fake-gcs-server; the credentials from a real credentials file that google.auth reads (no mocks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from testkit.builders import REPO
from testkit.chaos_bucket import PRINCIPAL, forbid
from testkit.jobs import generator, trainer

pytestmark = pytest.mark.slow  # subprocesses that wait out faults: the full suite, not the fast loop


def python(code: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


# The run directory checked and written as a Job starts (cli.run maps errors to exit codes).
START = """
    import sys
    from protocol import cli, storage
    def main():
        storage.configure(permission=float(sys.argv[2]))
        storage.ensure_writable(sys.argv[1])
        storage.publish_once(storage.join(sys.argv[1], "command.json"), b"{}")
        print("started")
    cli.run("test", main)
"""


def test_a_403_while_the_grant_spreads_is_waited_out(chaos_bucket):
    chaos, bucket = chaos_bucket
    chaos.add(forbid(window=(0, 30)))  # the case: the grant lands 30 s after the first write
    out = python(START, f"{bucket}/run", "60", env=chaos.env())
    assert out.returncode == 0 and out.stdout.strip() == "started", out.stderr
    assert "no permission yet" in out.stderr and chaos.counts()["forbid"] >= 1


def test_a_403_past_the_permission_wait_exits_2_naming_the_url_principal_and_role(chaos_bucket):
    chaos, bucket = chaos_bucket
    chaos.add(forbid())
    out = python(START, f"{bucket}/run", "2", env=chaos.env())
    assert out.returncode == 2, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert f"{bucket}/run/.write-probe-" in last and "permission denied (HTTP 403) for " in last
    assert f"(--permission-wait 2 s): {PRINCIPAL} needs roles/storage.objectUser on {bucket}" in last


def test_a_403_after_a_write_landed_is_not_waited_out(chaos_bucket):
    chaos, bucket = chaos_bucket
    code = """
        import sys
        from protocol import cli, storage
        def main():
            storage.configure(permission=600)
            storage.ensure_writable(sys.argv[1])
            print("written", flush=True)
            sys.stdin.readline()
            storage.overwrite(storage.join(sys.argv[1], "status", "trainer.json"), b"{}")
        cli.run("test", main)
    """
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), f"{bucket}/run"], cwd=REPO,
                               env=chaos.env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "written"
    chaos.add(forbid())  # the grant is revoked: not a grant still spreading
    _, err = process.communicate("\n", timeout=60)  # well within --permission-wait's 600 s
    assert process.returncode == 1, err  # an unexpected error: Kubernetes restarts the Job
    assert "Forbidden: " in err and "no permission yet" not in err


def test_the_jobs_wait_out_a_grant_that_lands_after_they_start(chaos_bucket, chaos_env, tmp_path):
    chaos, bucket = chaos_bucket
    # 8 s rather than the 30 s above: both Jobs and a training run take 90 s with 30.
    chaos.add(forbid(window=(0, 8)))
    run_url = f"{bucket}/run"
    gen = generator(run_url, tmp_path, chaos_env, "--permission-wait", "120")
    train = trainer(run_url, tmp_path, chaos_env, "--permission-wait", "120", epochs=1)
    assert train.wait(240) == 0, train.log[-3000:]
    assert gen.wait(60) == 0, gen.log[-3000:]
    assert "no permission yet" in gen.log and "no permission yet" in train.log
    assert chaos.counts()["forbid"] >= 2


def test_a_job_past_its_permission_wait_exits_2_with_the_principal_and_role(chaos_bucket, chaos_env, tmp_path):
    chaos, bucket = chaos_bucket
    chaos.add(forbid())
    gen = generator(f"{bucket}/run", tmp_path, chaos_env, "--permission-wait", "2")
    assert gen.wait(60) == 2, gen.log[-3000:]
    last = gen.log.strip().splitlines()[-1]
    assert f"(--permission-wait 2 s): {PRINCIPAL} needs roles/storage.objectUser on {bucket}" in last


# ---- credentials

CONNECT = """
    from protocol import backends, cli
    def main():
        credentials = backends.GCSBackend().fs.credentials.credentials
        print(type(credentials).__module__, type(credentials).__name__)
    cli.run("test", main)
"""


def google_env(credentials_file: str, wait_s: str) -> dict[str, str]:
    """No emulator (so the backend asks google.auth, as on GKE), credentials from a file."""
    env = {k: v for k, v in os.environ.items() if k != "STORAGE_EMULATOR_HOST"}
    return {**env, "GOOGLE_APPLICATION_CREDENTIALS": credentials_file, "NCF_CREDENTIALS_WAIT_S": wait_s}


def authorized_user(path: str) -> None:
    """A user credentials file, as `gcloud auth application-default login` writes it."""
    with open(path + ".tmp", "w") as f:
        json.dump({"type": "authorized_user", "client_id": "id.apps.googleusercontent.com",
                   "client_secret": "secret", "refresh_token": "refresh"}, f)
    os.replace(path + ".tmp", path)


def test_credentials_that_appear_late_are_waited_for_and_used(tmp_path):
    path = str(tmp_path / "adc.json")
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(CONNECT)], cwd=REPO, env=google_env(path, "60"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in process.stderr:  # the credential source fails first (or the process ends)...
        lines.append(line)
        if "no Google credentials yet" in line:
            break
    assert "no Google credentials yet" in lines[-1], lines
    authorized_user(path)  # ...then succeeds, like a metadata server that comes up late
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert out.split() == ["google.oauth2.credentials", "Credentials"], "never anonymous"


def test_missing_credentials_end_in_a_clear_error_after_the_wait(tmp_path):
    out = python(CONNECT, env=google_env(str(tmp_path / "none.json"), "1"))
    assert out.returncode == 2, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert "no Google credentials after 1 s" in last and "none.json" in last
    assert "Workload Identity" in last and "GOOGLE_APPLICATION_CREDENTIALS" in last
