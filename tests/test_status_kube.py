"""ncf-status --namespace/--release: the Jobs and pods of a Helm release (and its JobSet).

A real cluster cannot run here. In its place a tiny HTTP server on 127.0.0.1 plays the
Kubernetes API: it answers the list calls for batch/v1 Jobs and v1 Pods, and the get of a
jobset.x-k8s.io/v1alpha2 JobSet, with recorded responses (tests/data/k8s/<scenario>/,
shaped exactly like the API's JobList, PodList and JobSet), and the real kubernetes client
reaches it through a kubeconfig written for the test. So the client's configuration
loading, authentication header, URL building, label selector and deserialization into its
own models are all exercised; what the API server and the JobSet controller would do is
not (the JobSet scenario's status is written by hand from the JobSet API's types).
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
JOBSETS = "/apis/jobset.x-k8s.io/v1alpha2/namespaces/ml/jobsets/"


class RecordedApi:
    """Serves recorded list responses for namespace 'ml'; remembers every request."""

    def __init__(self, scenario: str | None, status: int = 200):
        self.scenario, self.status = scenario, status
        self.requests: list[tuple[str, dict[str, list[str]], str | None]] = []
        # Answers to successive JobSet gets, the last one repeated (default: the scenario's
        # jobset.json); jobset_status 403 plays a Role without jobsets.
        self.jobsets: list[dict] = []
        self.jobset_status = 200
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
        # shutdown() waits for serve_forever's next poll: 0.5 s by default, on every test.
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def answer(self, path: str) -> tuple[int, bytes]:
        if path.startswith(JOBSETS):
            return self.jobset(path.removeprefix(JOBSETS))
        files = {"/apis/batch/v1/namespaces/ml/jobs": "jobs.json", "/api/v1/namespaces/ml/pods": "pods.json"}
        if self.status != 200:
            return self.status, self.api_status(self.status, "Forbidden",
                                                'jobs.batch is forbidden: User "system:serviceaccount:ml:default" '
                                                'cannot list resource "jobs" in API group "batch" '
                                                'in the namespace "ml"')
        if path not in files:
            return 404, self.api_status(404, "NotFound", "the server could not find the requested resource")
        return 200, (RECORDED / self.scenario / files[path]).read_bytes()

    def jobset(self, name: str) -> tuple[int, bytes]:
        if self.jobset_status != 200:
            return self.jobset_status, self.api_status(
                self.jobset_status, "Forbidden", f'jobsets.jobset.x-k8s.io "{name}" is forbidden: User '
                '"system:serviceaccount:ml:default" cannot get resource "jobsets" in API group "jobset.x-k8s.io"')
        recorded = RECORDED / self.scenario / "jobset.json"
        body = self.jobsets.pop(0) if len(self.jobsets) > 1 else (
            self.jobsets[0] if self.jobsets else json.loads(recorded.read_text()))
        if body["metadata"]["name"] != name:
            return 404, self.api_status(404, "NotFound", f'jobsets.jobset.x-k8s.io "{name}" not found')
        return 200, json.dumps(body).encode()

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


def ncf_status_mid_run(api: RecordedApi, tmp_path: Path, env, *args: str) -> subprocess.CompletedProcess:
    """ncf-status ARGS --namespace ml --release demo on a run in mid-flight, against `api`."""
    run = RunDir(str(tmp_path / "run"))
    fake_run.mid_run(run)
    config = write_kubeconfig(tmp_path / "kubeconfig", api.url)
    return ncf_status(env, run.url, *args, "--namespace", "ml", "--release", "demo", "--kubeconfig", str(config))


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
    done = ncf_status_mid_run(recorded_api, tmp_path, cli_env, "--watch", "0.2")

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
    done = ncf_status_mid_run(recorded_api, tmp_path, cli_env, "--json")

    kube = json.loads(done.stdout)["kubernetes"]
    assert kube["error"] is None
    jobs = {job["component"]: job for job in kube["jobs"]}
    assert jobs["trainer"]["state"] == "FAILED" and jobs["generator"]["failed"] == 1
    oom = jobs["generator"]["pods"][1]["containers"][0]
    assert oom["state"] == "terminated: OOMKilled (exit 137) at 02:18:51 UTC"


@pytest.mark.parametrize("recorded_api", [(None, 403)], indirect=True)
def test_missing_rbac_is_explained_and_the_bucket_is_still_shown(recorded_api, tmp_path, cli_env):
    done = ncf_status_mid_run(recorded_api, tmp_path, cli_env)

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


# --- a JobSet's restarts ---------------------------------------------------------------

def recorded_jobset(**changes) -> dict:
    """The jobset-restarting scenario's JobSet with `status` and `failurePolicy` changes."""
    jobset = json.loads((RECORDED / "jobset-restarting" / "jobset.json").read_text())
    jobset["status"].update(changes.get("status", {}))
    jobset["spec"]["failurePolicy"].update(changes.get("failurePolicy", {}))
    return jobset


EXHAUSTED = {"status": {"restarts": 3, "conditions": [{
    "type": "Failed", "status": "True", "reason": "ReachedMaxRestarts",
    "message": "jobset failed due to reaching max number of restarts", "lastTransitionTime": "2026-11-26T04:02:10Z"}]}}


@pytest.mark.parametrize("recorded_api", [("jobset-restarting",)], indirect=True)
def test_a_failed_job_that_the_jobset_recreates_is_restarting(recorded_api, tmp_path, cli_env):
    done = ncf_status_mid_run(recorded_api, tmp_path, cli_env)

    assert done.returncode == 0, done.stderr
    kube = done.stdout[done.stdout.index("Kubernetes namespace ml"):]
    assert "JobSet demo-ncf-tandem: RUNNING, 1 of 3 restarts used" in kube
    assert "trainer Job demo-ncf-tandem-trainer-0: RESTARTING" in kube
    assert "Failed: BackoffLimitExceeded: Job has reached the specified backoff limit" in kube
    assert "generator Job demo-ncf-tandem-generator-0: RUNNING" in kube
    # The JobSet named by the Jobs' label, read with the same credentials.
    gets = [(path, auth) for path, _, auth in recorded_api.requests if path.startswith(JOBSETS)]
    assert gets == [(JOBSETS + "demo-ncf-tandem", f"Bearer {TOKEN}")]


@pytest.mark.parametrize("recorded_api", [("jobset-restarting",)], indirect=True)
def test_watch_goes_on_while_the_jobset_restarts_and_ends_when_it_fails(recorded_api, tmp_path, cli_env):
    recorded_api.jobsets = [recorded_jobset(), recorded_jobset(status={"restarts": 2}), recorded_jobset(**EXHAUSTED)]
    done = ncf_status_mid_run(recorded_api, tmp_path, cli_env, "--watch", "0.2")

    assert done.returncode == 1
    screens = done.stdout.split("ncf-tandem run ")[1:]
    assert len(screens) == 3
    assert all("trainer Job demo-ncf-tandem-trainer-0: RESTARTING" in s for s in screens[:2])
    assert "1 of 3 restarts used" in screens[0] and "2 of 3 restarts used" in screens[1]
    assert "JobSet demo-ncf-tandem: FAILED, 3 of 3 restarts used" in screens[2]
    assert "Failed: ReachedMaxRestarts: jobset failed due to reaching max number of restarts" in screens[2]
    assert "trainer Job demo-ncf-tandem-trainer-0: FAILED" in screens[2]


@pytest.mark.parametrize("recorded_api", [("jobset-restarting",)], indirect=True)
@pytest.mark.parametrize("changes, trainer_state", [
    ({}, "RESTARTING"),
    # Every restart used, before the controller has marked the JobSet Failed.
    ({"status": {"restarts": 3}}, "FAILED"),
    # A FailJobSet rule for the Job's reason (the chart's rules name PodFailurePolicy and
    # DeadlineExceeded; here the recorded BackoffLimitExceeded).
    ({"failurePolicy": {"rules": [{"name": "r", "action": "FailJobSet", "onJobFailureReasons": ["BackoffLimitExceeded"]}]}},
     "FAILED"),
    # ... unless the rule is for the other replicatedJob.
    ({"failurePolicy": {"rules": [{"name": "r", "action": "FailJobSet", "onJobFailureReasons": ["BackoffLimitExceeded"],
                                   "targetReplicatedJobs": ["generator"]}]}}, "RESTARTING"),
    # Other actions restart (RestartJobSet) or do not count a restart (RestartJobSetAndIgnoreMaxRestarts).
    ({"failurePolicy": {"rules": [{"name": "r", "action": "RestartJobSet", "onJobFailureReasons": ["BackoffLimitExceeded"]}]}},
     "RESTARTING"),
])
def test_the_jobsets_failure_policy_decides(recorded_api, tmp_path, changes, trainer_state):
    recorded_api.jobsets = [recorded_jobset(**changes)]
    config = write_kubeconfig(tmp_path / "kubeconfig", recorded_api.url)

    # In process (what --json prints), through the real client: the screen is tested above.
    kube = read_release("ml", "demo", str(config)).to_dict()

    jobs = {job["component"]: job for job in kube["jobs"]}
    assert jobs["trainer"]["state"] == trainer_state
    assert (jobs["trainer"]["failure_reason"], jobs["trainer"]["replicated_job"]) == ("BackoffLimitExceeded", "trainer")
    assert kube["jobset"]["max_restarts"] == 3


@pytest.mark.parametrize("recorded_api", [("jobset-restarting",)], indirect=True)
def test_a_jobset_that_cannot_be_read_leaves_a_failed_job_final(recorded_api, tmp_path, cli_env):
    # A Role without jobsets (e.g. an older chart): better a false alarm than a watch that
    # never ends.
    recorded_api.jobset_status = 403
    done = ncf_status_mid_run(recorded_api, tmp_path, cli_env, "--watch", "0.2")

    assert done.returncode == 1
    assert ("JobSet demo-ncf-tandem: cannot read it (forbidden: this identity may not get JobSets "
            "(needs RBAC get on jobsets.jobset.x-k8s.io)); a failed Job counts as final") in done.stdout
    assert "trainer Job demo-ncf-tandem-trainer-0: FAILED" in done.stdout
