"""Rendering helpers for the chart and kustomization tests (no cluster needed).

The chart is rendered by Helm's own engine (helm-python-sdk binds the Helm Go
SDK), so schema validation, template functions and value coalescing are
Helm's, not an imitation.
"""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any, Iterable

import helm_python
import yaml

REPO = Path(__file__).resolve().parent.parent
CHART_DIR = REPO / "charts" / "ncf-tandem"
CI_VALUES = sorted((CHART_DIR / "ci").glob("*-values.yaml"))
K8S_DIR = REPO / "k8s"
RELEASE = "ncf"
NAMESPACE = "ncf"

# Kubernetes minor versions the manifests must validate against.
KUBE_VERSIONS = [f"1.{minor}.0" for minor in range(29, 38)]

ACCELERATOR_RESOURCES = ("nvidia.com/gpu", "google.com/tpu")
ACCELERATOR_LABEL_PREFIXES = ("cloud.google.com/gke-accelerator", "cloud.google.com/gke-tpu")

_chart: helm_python.Chart | None = None


def chart() -> helm_python.Chart:
    global _chart
    if _chart is None:
        _chart = helm_python.Chart.load(CHART_DIR)
    return _chart


def load_values(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def render(values: dict[str, Any] | None = None, *, name: str = RELEASE,
           namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    """Every object the chart renders for `values`, hooks included."""
    manifests = chart().render(values=copy.deepcopy(values or {}), name=name, namespace=namespace)
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objects.append(doc)
    return objects


def notes(values: dict[str, Any] | None = None, *, name: str = RELEASE) -> str:
    manifests = chart().render(values=copy.deepcopy(values or {}), name=name, namespace=NAMESPACE)
    return next(text for path, text in manifests.items() if path.endswith("NOTES.txt"))


def kustomize(directory: Path = K8S_DIR) -> list[dict[str, Any]]:
    """`kubectl kustomize` output as objects."""
    out = subprocess.run(["kubectl", "kustomize", str(directory)], check=True,
                         capture_output=True, text=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(objects: Iterable[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def job(objects: Iterable[dict], component: str) -> dict:
    jobs = [o for o in objects if o["kind"] == "Job"
            and o["metadata"]["labels"].get("app.kubernetes.io/component") == component]
    assert len(jobs) == 1, f"expected one {component} Job, found {len(jobs)}"
    return jobs[0]


def pod_spec(job_obj: dict) -> dict:
    return job_obj["spec"]["template"]["spec"]


def main_container(job_obj: dict) -> dict:
    component = job_obj["metadata"]["labels"]["app.kubernetes.io/component"]
    (container,) = [c for c in pod_spec(job_obj)["containers"] if c["name"] == component]
    return container


def all_pod_specs(objects: Iterable[dict]) -> list[tuple[str, dict]]:
    """(object name, pod spec) of every workload and bare pod."""
    specs = []
    for o in objects:
        if o["kind"] in ("Job", "Deployment"):
            specs.append((o["metadata"]["name"], o["spec"]["template"]["spec"]))
        elif o["kind"] == "Pod":
            specs.append((o["metadata"]["name"], o["spec"]))
    return specs


def flags(container: dict) -> dict[str, str | bool]:
    """`--name=value` arguments as {"--name": "value"}, bare flags as True."""
    parsed: dict[str, str | bool] = {}
    for arg in container.get("args", []):
        assert arg.startswith("--"), f"unexpected positional argument {arg!r}"
        name, sep, value = arg.partition("=")
        assert name not in parsed, f"flag {name} given twice"
        parsed[name] = value if sep else True
    return parsed


def env(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def requests_accelerator(pod: dict) -> bool:
    for c in pod.get("containers", []) + pod.get("initContainers", []):
        res = c.get("resources", {})
        for section in ("limits", "requests"):
            if any(r in res.get(section, {}) for r in ACCELERATOR_RESOURCES):
                return True
    return False


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out
