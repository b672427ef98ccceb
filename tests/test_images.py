"""The container images, built from the real Dockerfiles and run the way the chart runs them.

Builds Dockerfile.gen and Dockerfile.train (TRAIN_EXTRA=train-cpu, as kind and
CI use), checks what the images are (non-root, no TensorFlow in the generator,
no installers), then runs both containers with the arguments and environment
of the chart's kind profile against a real fake-gcs-server: as uid 10001, with
a read-only root filesystem and a tmpfs where the chart mounts its emptyDir.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

import pytest

from testkit import docker_support as ds
from testkit import emulator
from testkit.k8s_support import CHART_DIR, by_kind, env, job, load_values, main_container, render

# A cold machine builds the base image and downloads TensorFlow first.
pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1800)]

KIND_VALUES = load_values(CHART_DIR / "ci" / "kind-values.yaml")
GENERATOR_IMAGE = "{repository}:{tag}".format(**KIND_VALUES["generator"]["image"])
TRAINER_IMAGE = "{repository}:{tag}".format(**KIND_VALUES["trainer"]["image"])
TIMINGS: dict[str, float] = {}


def report(msg: str) -> None:
    print(f"[test_images] {msg}", file=sys.stderr, flush=True)


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    assert ds.docker_ready(), "the Docker engine does not answer (scripts/test.sh starts it)"
    started = time.monotonic()
    TIMINGS["base image (" + ds.ensure_base_image() + ")"] = time.monotonic() - started
    started = time.monotonic()
    house = ds.fill_wheelhouse("train-cpu,k8s")  # the generator image carries ncf-status's kubernetes client
    TIMINGS["wheelhouse"] = time.monotonic() - started
    builds_started = time.time()
    with ds.serve_directory(house) as url:
        TIMINGS["build generator"] = ds.build_image("Dockerfile.gen", GENERATOR_IMAGE, wheelhouse_url=url)
        TIMINGS["build trainer"] = ds.build_image("Dockerfile.train", TRAINER_IMAGE,
                                                  build_args={"TRAIN_EXTRA": "train-cpu"},
                                                  wheelhouse_url=url)
    ds.prune_superseded_builds(before=builds_started)
    for ref in (GENERATOR_IMAGE, TRAINER_IMAGE):
        report(f"{ref}: {ds.image_size_bytes(ref) / 1e6:.0f} MB")
    report("timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in TIMINGS.items()))
    return {"generator": GENERATOR_IMAGE, "trainer": TRAINER_IMAGE}


def run_in(image: str, *args: str, entrypoint: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = ["docker", "run", "--rm", "--network", "none", "--read-only", "--tmpfs", "/tmp:rw,exec,mode=1777"]
    if entrypoint:
        cmd += ["--entrypoint", entrypoint]
    return subprocess.run([*cmd, image, *args], capture_output=True, text=True, timeout=timeout)


# --- what the images are ------------------------------------------------------------

def test_base_image_is_python_3_11(images):
    out = run_in(ds.BASE_IMAGE, "-c", "python3.11 --version && python --version && python3 --version",
                 entrypoint="sh")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("Python 3.11.") == 3, out.stdout


@pytest.mark.parametrize("component,entrypoint", [("generator", "ncf-generator"), ("trainer", "ncf-trainer")])
def test_image_config(images, component, entrypoint):
    config = json.loads(subprocess.run(["docker", "image", "inspect", "--format", "{{json .Config}}",
                                        images[component]], check=True, capture_output=True).stdout)
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == [entrypoint]
    assert "HOME=/tmp" in config["Env"]
    assert any(e.startswith("PATH=/opt/venv/bin:") for e in config["Env"])


@pytest.mark.parametrize("component", ["generator", "trainer"])
def test_no_installers_or_compilers(images, component):
    out = run_in(images[component], "-c",
                 "id -u; for t in gcc cc g++ make pip pip3; do command -v $t || true; done; "
                 "python -c 'import pip' 2>/dev/null && echo pip-importable || true",
                 entrypoint="sh")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["10001"], out.stdout


def test_generator_image_has_no_tensorflow(images):
    out = run_in(images["generator"], "-c",
                 "import importlib.util as u, numpy, gcsfs, fsspec, google_crc32c; "
                 "print(u.find_spec('tensorflow') is None, u.find_spec('keras') is None)",
                 entrypoint="python")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True"]


def test_trainer_image_has_tensorflow_cpu(images):
    out = run_in(images["trainer"], "-c",
                 "import tensorflow as tf, keras; print(tf.__version__, keras.__version__)",
                 entrypoint="python", timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0].startswith("2.")


def test_trainer_image_refuses_an_absent_gpu_and_leaves_pjrt_to_the_tpu_image(images):
    """--accelerator gpu in the CPU image: exit 2 in one line, before any bucket (issue 18 item 3);
    the PJRT environment is the train-tpu image's alone (Dockerfile.train's runtime-train-tpu)."""
    out = run_in(images["trainer"], "--data-dir", "/tmp/run", "--dataset", "synthetic-small",
                 "--accelerator", "gpu", timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "expected a GPU, found only the CPU: this TensorFlow" in out.stderr.strip().splitlines()[-1]
    config = json.loads(subprocess.run(["docker", "image", "inspect", "--format", "{{json .Config}}",
                                        images["trainer"]], check=True, capture_output=True).stdout)
    assert not [e for e in config["Env"] if e.startswith(("PJRT_DEVICE=", "TF_PLUGGABLE_DEVICE_LIBRARY_PATH="))]


def test_generator_image_is_small(images):
    size = ds.image_size_bytes(images["generator"])
    # The base image plus numpy, numba (its LLVM is 175 MB of it), gcsfs and the kubernetes
    # client that the helm test pod's ncf-status needs: about 500 MB. TensorFlow alone would
    # add over 1 GB.
    assert size < ds.image_size_bytes(ds.BASE_IMAGE) + 560e6, size


@pytest.mark.parametrize("component,flag", [("generator", "--data-dir"), ("trainer", "--dataset")])
def test_entrypoints_answer_help(images, component, flag):
    out = run_in(images[component], "--help", timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert flag in out.stdout


# --- both Jobs, as the chart runs them, against fake-gcs-server ------------------------------

@pytest.fixture
def gcs_server():
    """fake-gcs-server on all interfaces: the containers reach it through the host."""
    process, url = emulator.start(host="0.0.0.0")
    try:
        yield url
    finally:
        emulator.stop(process)


def object_names(url: str, bucket: str, prefix: str) -> list[str]:
    q = urllib.parse.urlencode({"prefix": prefix})
    with urllib.request.urlopen(f"{url}/storage/v1/b/{bucket}/o?{q}", timeout=10) as r:
        return [item["name"] for item in json.load(r).get("items", [])]


def read_object(url: str, bucket: str, name: str) -> bytes:
    quoted = urllib.parse.quote(name, safe="")
    with urllib.request.urlopen(f"{url}/storage/v1/b/{bucket}/o/{quoted}?alt=media", timeout=10) as r:
        return r.read()


def docker_command(container: dict, pod: dict, *, emulator: str, chart_emulator: str, name: str,
                   command: list[str] | None = None) -> list[str]:
    """`docker run` for one rendered container: the pod's user, read-only root, /tmp tmpfs."""
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"] == {"drop": ["ALL"]}
    cmd = ["docker", "run", "--rm", "--name", name, "--network", "host",
           "--user", f"{sc['runAsUser']}:{sc['runAsGroup']}", "--read-only",
           "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
    scratch = {v["name"]: v for v in pod["volumes"]}
    for mount in container.get("volumeMounts", []):
        size = scratch[mount["name"]]["emptyDir"].get("sizeLimit", "1Gi").replace("Gi", "g").replace("Mi", "m")
        cmd += ["--tmpfs", f"{mount['mountPath']}:rw,exec,mode=1777,size={size}"]
    memory = container.get("resources", {}).get("limits", {}).get("memory")
    if memory:
        cmd += ["--memory", memory.replace("Gi", "g").replace("Mi", "m")]
    for key, value in env(container).items():
        cmd += ["-e", f"{key}={value.replace(chart_emulator, emulator) if value else value}"]
    args = [a.replace(chart_emulator, emulator) for a in container.get("args", [])]
    if command:
        cmd += ["--entrypoint", command[0]]
        args = command[1:] + args
    return [*cmd, container["image"], *args]


def docker_run_as_the_chart(container: dict, pod: dict, *, timeout: float, **kw) -> subprocess.CompletedProcess:
    cmd = docker_command(container, pod, **kw)
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        subprocess.run(["docker", "rm", "-f", kw["name"]], capture_output=True)
        raise AssertionError(f"{kw['name']} ran past {timeout} s:\n{e.stdout}\n{e.stderr}") from None


def run_together(commands: dict[str, list[str]], timeout: float) -> dict[str, tuple[int, str]]:
    """Run containers side by side, like two Jobs; when one fails, stop the others at once.

    Returns {key: (exit code, output)}; a stopped container reports "stopped".
    """
    logs = {k: tempfile.TemporaryFile("w+") for k in commands}
    procs = {k: subprocess.Popen(cmd, stdout=logs[k], stderr=subprocess.STDOUT) for k, cmd in commands.items()}
    names = {k: cmd[cmd.index("--name") + 1] for k, cmd in commands.items()}
    deadline = time.monotonic() + timeout
    stopped: set[str] = set()
    try:
        while any(p.poll() is None for p in procs.values()):
            failed = [k for k, p in procs.items() if p.poll() not in (None, 0) and k not in stopped]
            if failed or time.monotonic() > deadline:
                for k, p in procs.items():
                    if p.poll() is None:
                        stopped.add(k)
                        subprocess.run(["docker", "rm", "-f", names[k]], capture_output=True)
                        p.wait(timeout=60)
            time.sleep(1)
    finally:
        for k, p in procs.items():
            if p.poll() is None:
                subprocess.run(["docker", "rm", "-f", names[k]], capture_output=True)
                p.kill()
    results = {}
    for k, f in logs.items():
        f.seek(0)
        output = f.read()
        f.close()
        results[k] = ("stopped" if k in stopped else procs[k].returncode, output)
    return results


def test_generator_and_trainer_run_as_the_chart_runs_them(images, gcs_server):
    bucket, prefix = "ncf-image-test", f"runs/{os.getpid()}-{int(time.time())}"
    emulator.make_bucket(gcs_server, bucket)
    values = dict(KIND_VALUES, dataDir=f"gs://{bucket}/{prefix}")
    objects = render(values)
    chart_emulator = env(main_container(job(objects, "trainer")))["STORAGE_EMULATOR_HOST"]
    suffix = f"{os.getpid()}-{int(time.time())}"

    commands = {}
    for component in ("generator", "trainer"):
        j = job(objects, component)
        pod = j["spec"]["template"]["spec"]
        # The init container first (it waits for the emulator and its bucket), then the job.
        for init in pod.get("initContainers", []):
            out = docker_run_as_the_chart(init, pod, emulator=gcs_server, chart_emulator=chart_emulator,
                                          name=f"ncf-{component}-init-{suffix}", timeout=120,
                                          command=init["command"])
            assert out.returncode == 0, f"{component} init container:\n{out.stdout}\n{out.stderr}"
        commands[component] = docker_command(main_container(j), pod, emulator=gcs_server,
                                             chart_emulator=chart_emulator, name=f"ncf-{component}-{suffix}")

    started = time.monotonic()
    results = run_together(commands, timeout=900)
    TIMINGS["both jobs"] = time.monotonic() - started
    report(f"both jobs ran in {TIMINGS['both jobs']:.0f} s")
    for component, (code, output) in results.items():
        assert code == 0, f"{component} exited {code}:\n{output[-6000:]}"

    names = object_names(gcs_server, bucket, prefix + "/")
    assert f"{prefix}/result.json" in names, names
    result = json.loads(read_object(gcs_server, bucket, f"{prefix}/result.json"))
    assert any("hr_at_10" in k for k in result), result

    # The chart's `helm test` hook passes on this run.
    (hook,) = by_kind(objects, "Pod")
    out = docker_run_as_the_chart(hook["spec"]["containers"][0], hook["spec"], emulator=gcs_server,
                                  chart_emulator=chart_emulator, name=f"ncf-helm-test-{suffix}",
                                  timeout=120, command=hook["spec"]["containers"][0]["command"])
    assert out.returncode == 0 and ": DONE" in out.stdout.splitlines()[0], out.stdout + out.stderr


def test_helm_test_hook_fails_without_result_json(images, gcs_server):
    bucket = "ncf-image-test-empty"
    emulator.make_bucket(gcs_server, bucket)
    values = dict(KIND_VALUES)
    values["dataDir"] = f"gs://{bucket}/never-ran"
    objects = render(values)
    (hook,) = by_kind(objects, "Pod")
    container = hook["spec"]["containers"][0]
    chart_emulator = env(container)["STORAGE_EMULATOR_HOST"]
    out = docker_run_as_the_chart(container, hook["spec"], emulator=gcs_server, chart_emulator=chart_emulator,
                                  name=f"ncf-helm-test-empty-{os.getpid()}", timeout=120,
                                  command=container["command"])
    assert out.returncode == 2
    assert "never-ran: no such run directory" in out.stdout + out.stderr, out.stdout + out.stderr
