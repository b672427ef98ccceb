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
import threading
import time

from testkit.builders import REPO
from testkit.chaos_bucket import PRINCIPAL, forbid


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
    chaos.add(forbid(window=(0, 3)))  # the grant lands 3 s after the first write
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


def test_a_403_after_a_write_landed_is_final_at_once(chaos_bucket):
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
    chaos.add(forbid())  # the grant is revoked: waiting cannot help
    _, err = process.communicate("\n", timeout=60)  # well within --permission-wait's 600 s
    assert process.returncode == 2, err
    assert f"{PRINCIPAL} needs roles/storage.objectUser" in err and "--permission-wait" not in err


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
    threading.Timer(2.0, authorized_user, [path]).start()  # like a metadata server that comes up late
    started = time.monotonic()
    out = python(CONNECT, env=google_env(path, "60"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["google.oauth2.credentials", "Credentials"], "never anonymous"
    assert "no Google credentials yet" in out.stderr and time.monotonic() - started >= 2.0


def test_missing_credentials_end_in_a_clear_error_after_the_wait(tmp_path):
    out = python(CONNECT, env=google_env(str(tmp_path / "none.json"), "1"))
    assert out.returncode == 2, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert "no Google credentials after 1 s" in last and "none.json" in last
    assert "Workload Identity" in last and "GOOGLE_APPLICATION_CREDENTIALS" in last
