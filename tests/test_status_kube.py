"""ncf-status --namespace/--release: the Jobs and pods of a Helm release.

A real cluster cannot run here. In its place a tiny HTTP server on 127.0.0.1 plays the
Kubernetes API: it answers the list calls for batch/v1 Jobs and v1 Pods with recorded
responses (tests/data/k8s/<scenario>/, shaped exactly like the API's JobList and PodList),
and the real kubernetes client reaches it through a kubeconfig written for the test. So
the client's configuration loading, authentication header, URL building, label selector
and deserialization into its own models are all exercised.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from testkit import fake_run
from testkit.builders import write_status
from protocol import RunDir
from runstatus.kube import describe_jobs, read_release
from testkit.builders import REPO

RECORDED = Path(__file__).resolve().parent / "data" / "k8s"
TOKEN = "test-token-7f3a"
SELECTOR = "app.kubernetes.io/instance=demo,app.kubernetes.io/component in (generator,trainer)"


class RecordedApi:
    """Serves recorded list responses for namespace 'ml'; remembers every request."""

    def __init__(self, scenario: str | None, status: int = 200):
        self.scenario, self.status = scenario, status
        self.requests: list[tuple[str, dict[str, list[str]], str | None]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                url = urllib.parse.urlsplit(self.path)
                api.requests.append((url.path, urllib.parse.parse_qs(url.query), self.headers.get("Authorization")))
                code, body = api.answer(url.path)
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, path: str) -> tuple[int, bytes]:
        files = {"/apis/batch/v1/namespaces/ml/jobs": "jobs.json", "/api/v1/namespaces/ml/pods": "pods.json"}
        if self.status != 200:
            return self.status, self.api_status(self.status, "Forbidden",
                                                'jobs.batch is forbidden: User "system:serviceaccount:ml:default" '
                                                'cannot list resource "jobs" in API group "batch" '
                                                'in the namespace "ml"')
        if path not in files:
            return 404, self.api_status(404, "NotFound", "the server could not find the requested resource")
        return 200, (RECORDED / self.scenario / files[path]).read_bytes()

    @staticmethod
    def api_status(code: int, reason: str, message: str) -> bytes:
        return json.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                           "message": message, "reason": reason, "details": {"kind": "jobs", "group": "batch"},
                           "code": code}).encode()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def write_kubeconfig(path: Path, server: str) -> Path:
    # JSON is YAML: the client reads this as any kubeconfig.
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "recorded",
        "clusters": [{"name": "recorded", "cluster": {"server": server}}],
        "users": [{"name": "viewer", "user": {"token": TOKEN}}],
        "contexts": [{"name": "recorded", "context": {"cluster": "recorded", "user": "viewer", "namespace": "ml"}}],
    }))
    return path


@pytest.fixture
def recorded_api(request):
    api = RecordedApi(*getattr(request, "param", ("failed",)))
    yield api
    api.close()


def ncf_status(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runstatus", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def test_status_shows_oom_killed_pods_and_a_failed_job(recorded_api, tmp_path, cli_env):
    run = RunDir(str(tmp_path / "run"))
    fake_run.mid_run(run)
    cli_env["KUBECONFIG"] = str(write_kubeconfig(tmp_path / "kubeconfig", recorded_api.url))

    done = ncf_status(cli_env, run.url, "--namespace", "ml", "--release", "demo")

    assert done.returncode == 0, done.stderr
    screen = done.stdout
    assert "Trainer    TRAINING" in screen  # the bucket's half is still there
    kube = screen[screen.index("Kubernetes namespace ml, release demo"):]
    assert "generator Job demo-ncf-tandem-generator: RUNNING, 1 active, 0 succeeded, 1 failed pods" in kube
    assert "pod demo-ncf-tandem-generator-q8v4m: Failed" in kube
    assert "generator: terminated: OOMKilled (exit 137) at 02:18:51 UTC" in kube
    assert "trainer Job demo-ncf-tandem-trainer: FAILED" in kube
    assert ("Failed: PodFailurePolicy: Container trainer for pod ml/demo-ncf-tandem-trainer-7xk2p "
            "failed with exit code 2 matching FailJob rule at index 0") in kube
    assert "FailureTarget" not in kube  # repeats Failed word for word
    assert "trainer: terminated: Error (exit 2)" in kube
    # Newest pod first: the generator's current attempt leads.
    assert kube.index("generator-h2m7d: Running") < kube.index("generator-q8v4m: Failed")
    # The real client asked for both lists with the release's labels, authenticated.
    paths = sorted(path for path, _, _ in recorded_api.requests)
    assert paths == ["/api/v1/namespaces/ml/pods", "/apis/batch/v1/namespaces/ml/jobs"]
    for _, query, auth in recorded_api.requests:
        assert query["labelSelector"] == [SELECTOR] and auth == f"Bearer {TOKEN}"


def test_watch_ends_with_exit_1_when_a_job_has_failed(recorded_api, tmp_path, cli_env):
    # The trainer's heartbeat still says 'training' (an OOMKilled process writes nothing),
    # but its Job is out of retries: the watch must not go on forever.
    run = RunDir(str(tmp_path / "run"))
    fake_run.mid_run(run)
    config = write_kubeconfig(tmp_path / "kubeconfig", recorded_api.url)

    done = ncf_status(cli_env, run.url, "--watch", "0.2", "--namespace", "ml", "--release", "demo",
                      "--kubeconfig", str(config))

    assert done.returncode == 1
    assert done.stdout.count("ncf-tandem run") == 1 and "trainer Job demo-ncf-tandem-trainer: FAILED" in done.stdout


@pytest.mark.parametrize("recorded_api", [("pending",)], indirect=True)
def test_status_says_why_the_trainer_pod_is_not_scheduled(recorded_api, tmp_path, cli_env):
    run = RunDir(str(tmp_path / "run"))
    write_status(run.url, "generator", "waiting", message="waiting for command.json")
    config = write_kubeconfig(tmp_path / "kubeconfig", recorded_api.url)

    done = ncf_status(cli_env, run.url, "--namespace", "ml", "--release", "demo", "--kubeconfig", str(config))

    assert done.returncode == 0, done.stderr
    assert "trainer Job demo-ncf-tandem-trainer: STARTING, 1 active" in done.stdout
    assert ("pod demo-ncf-tandem-trainer-b5n8w: Pending, Unschedulable: 0/3 nodes are available: "
            "3 Insufficient nvidia.com/gpu.") in done.stdout


def test_json_carries_the_jobs_and_pods(recorded_api, tmp_path, cli_env):
    run = RunDir(str(tmp_path / "run"))
    fake_run.mid_run(run)
    config = write_kubeconfig(tmp_path / "kubeconfig", recorded_api.url)

    done = ncf_status(cli_env, run.url, "--json", "--namespace", "ml", "--release", "demo", "--kubeconfig", str(config))

    kube = json.loads(done.stdout)["kubernetes"]
    assert kube["error"] is None
    jobs = {job["component"]: job for job in kube["jobs"]}
    assert jobs["trainer"]["state"] == "FAILED" and jobs["generator"]["failed"] == 1
    oom = jobs["generator"]["pods"][1]["containers"][0]
    assert oom["state"] == "terminated: OOMKilled (exit 137) at 02:18:51 UTC"


@pytest.mark.parametrize("recorded_api", [(None, 403)], indirect=True)
def test_missing_rbac_is_explained_and_the_bucket_is_still_shown(recorded_api, tmp_path, cli_env):
    run = RunDir(str(tmp_path / "run"))
    fake_run.mid_run(run)
    config = write_kubeconfig(tmp_path / "kubeconfig", recorded_api.url)

    done = ncf_status(cli_env, run.url, "--namespace", "ml", "--release", "demo", "--kubeconfig", str(config))

    assert done.returncode == 0, done.stderr
    assert "Epochs     generated 8/20" in done.stdout
    assert "forbidden: this identity may not list Jobs and pods" in done.stdout


def test_an_unreachable_api_is_reported_quickly(tmp_path, cli_env):
    closed = RecordedApi("failed")
    closed.close()  # nothing listens on that port any more
    run = RunDir(str(tmp_path / "run"))
    fake_run.mid_run(run)
    config = write_kubeconfig(tmp_path / "kubeconfig", closed.url)

    done = ncf_status(cli_env, run.url, "--namespace", "ml", "--release", "demo", "--kubeconfig", str(config))

    assert done.returncode == 0
    assert "cannot reach the Kubernetes API" in done.stdout


def test_no_kubeconfig_and_no_pod_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)

    facts = read_release("ml", "demo")

    assert facts.jobs == [] and "no kubeconfig" in facts.error and "no in-cluster access" in facts.error


def test_restarted_containers_show_count_and_last_termination():
    # restartPolicy OnFailure (e.g. an edited manifest) restarts in place: the reason of the
    # last crash is then only in lastState. Deserialized with the client's own ApiClient.
    from kubernetes import client

    api = client.ApiClient()
    jobs = api.deserialize((RECORDED / "failed" / "jobs.json").read_text(), "V1JobList", "application/json")
    pods = json.loads((RECORDED / "failed" / "pods.json").read_text())
    running = pods["items"][1]
    running["status"]["containerStatuses"][0].update(restartCount=2, lastState={"terminated": {
        "exitCode": 137, "reason": "OOMKilled", "startedAt": "2026-11-26T02:19:00Z",
        "finishedAt": "2026-11-26T02:25:13Z", "containerID": "containerd://77aa"}})
    pods = api.deserialize(json.dumps(pods), "V1PodList", "application/json")

    (generator, _) = describe_jobs(jobs.items, pods.items)

    container = generator.pods[0].containers[0]
    assert (container.restarts, container.state) == (2, "running")
    assert container.last_termination == "OOMKilled (exit 137) at 02:25:13 UTC"
