"""Rendering helpers for the chart and kustomization tests (no cluster needed).

The chart is rendered by Helm's own engine (helm-python-sdk binds the Helm Go
SDK), so schema validation, template functions and value coalescing are
Helm's, not an imitation.
"""

from __future__ import annotations

import copy
import functools
import json
import subprocess
from pathlib import Path
from typing import Any, Iterable

import helm_python
import kubernetes_validate
import yaml
from testkit.builders import REPO

CHART_DIR = REPO / "charts" / "ncf-tandem"
CI_VALUES = sorted((CHART_DIR / "ci").glob("*-values.yaml"))
K8S_DIR = REPO / "k8s"
RELEASE = "ncf"
NAMESPACE = "ncf"

# Kubernetes minor versions the manifests must validate against.
KUBE_VERSIONS = [f"1.{minor}.0" for minor in range(29, 38)]

ACCELERATOR_RESOURCES = ("nvidia.com/gpu", "google.com/tpu")
ACCELERATOR_LABEL_PREFIXES = ("cloud.google.com/gke-accelerator", "cloud.google.com/gke-tpu")

# libyaml's loader where PyYAML was built with it: the same documents, parsed about 8x faster.
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# kubernetes-validate re-reads and re-parses its JSON schemas (megabytes per Kubernetes version),
# and lists its schema folder twice, for every object it validates: most of the chart tests'
# time. Neither ever changes, so each is read once per process; the validation is the library's.
kubernetes_validate.utils.schema_contents = functools.cache(kubernetes_validate.utils.schema_contents)
kubernetes_validate.utils.all_versions = functools.cache(kubernetes_validate.utils.all_versions)

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
    """Every object the chart renders for `values`, hooks included: the caller's own copy."""
    return copy.deepcopy(_render(json.dumps(values or {}, sort_keys=True), name, namespace))


@functools.cache
def _render(values_json: str, name: str, namespace: str) -> list[dict[str, Any]]:
    """render's objects, once per distinct values, release and namespace: the chart tests render
    the same value sets many times over, and the chart does not change during a session."""
    manifests = chart().render(values=json.loads(values_json), name=name, namespace=namespace)
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.load_all(text, Loader=YAML_LOADER):
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
    return [doc for doc in yaml.load_all(out, Loader=YAML_LOADER) if doc]


def by_kind(objects: Iterable[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def jobset_jobs(jobset: dict) -> list[dict]:
    """The Jobs the JobSet controller creates from a JobSet: <name>-<replicatedJob>-<index>,
    with the replicatedJob's template as their metadata and spec."""
    jobs = []
    for rjob in jobset["spec"]["replicatedJobs"]:
        for index in range(rjob.get("replicas", 1)):
            template = copy.deepcopy(rjob["template"])
            metadata = template.get("metadata", {})
            metadata["name"] = f"{jobset['metadata']['name']}-{rjob['name']}-{index}"
            metadata["namespace"] = jobset["metadata"].get("namespace")
            jobs.append({"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": template["spec"]})
    return jobs


def workload_jobs(objects: Iterable[dict]) -> list[dict]:
    """Every Job of a rendering: the Jobs themselves (workload: jobs) or the JobSet's (workload: jobset)."""
    out = []
    for o in objects:
        if o["kind"] == "Job":
            out.append(o)
        elif o["kind"] == "JobSet":
            out.extend(jobset_jobs(o))
    return out


def job(objects: Iterable[dict], component: str) -> dict:
    """The component's Job, under either workload (a JobSet's as its controller creates it)."""
    jobs = [o for o in workload_jobs(objects)
            if o["metadata"]["labels"].get("app.kubernetes.io/component") == component]
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
        elif o["kind"] == "JobSet":
            for rjob in o["spec"]["replicatedJobs"]:
                specs.append((f"{o['metadata']['name']}-{rjob['name']}", rjob["template"]["spec"]["template"]["spec"]))
    return specs


def all_pod_templates(objects: Iterable[dict]) -> list[tuple[str, dict]]:
    """(object name, pod metadata) of every pod the chart makes, as all_pod_specs."""
    out = []
    for o in objects:
        if o["kind"] in ("Job", "Deployment"):
            out.append((o["metadata"]["name"], o["spec"]["template"]["metadata"]))
        elif o["kind"] == "Pod":
            out.append((o["metadata"]["name"], o["metadata"]))
        elif o["kind"] == "JobSet":
            for rjob in o["spec"]["replicatedJobs"]:
                out.append((f"{o['metadata']['name']}-{rjob['name']}",
                            rjob["template"]["spec"]["template"]["metadata"]))
    return out


def selects(selector: dict, labels: dict) -> bool:
    """Whether a Kubernetes LabelSelector (matchLabels, matchExpressions) selects `labels`."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {"In": key in labels and labels[key] in values,
              "NotIn": key not in labels or labels[key] not in values,
              "Exists": key in labels,
              "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


# --- the JobSet CRD (kubernetes-sigs/jobset, a pinned release) ---------------------------

JOBSET_VERSION = "v0.12.0"
JOBSET_CRD = REPO / "tests" / "data" / "jobset" / f"jobset.x-k8s.io_jobsets-{JOBSET_VERSION}.yaml"
_jobset_validator = None


def _strict(node: Any) -> Any:
    """An OpenAPI v3 schema of a CRD as JSON Schema that rejects unknown fields, as the API
    server's strict field validation does (`kubectl apply --validate=strict`)."""
    if isinstance(node, dict):
        node = {k: _strict(v) for k, v in node.items()}
        if ("properties" in node and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            node["additionalProperties"] = False
        if node.get("x-kubernetes-int-or-string"):
            node.pop("type", None)
            node.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
        return node
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


def jobset_validator():
    """A jsonschema validator for jobset.x-k8s.io/v1alpha2 JobSets, from the CRD's own schema."""
    global _jobset_validator
    if _jobset_validator is None:
        import jsonschema

        docs = [d for d in yaml.load_all(JOBSET_CRD.read_text(), Loader=YAML_LOADER) if d]
        (crd,) = docs
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha2"]
        schema = _strict(version["schema"]["openAPIV3Schema"])
        # metadata is Kubernetes' ObjectMeta, which a CRD schema leaves open.
        schema["properties"]["metadata"] = {"type": "object"}
        _jobset_validator = jsonschema.Draft7Validator(schema)
    return _jobset_validator


def jobset_errors(obj: dict) -> list[str]:
    """Every way `obj` breaks the JobSet CRD's schema, as 'path: message'."""
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in sorted(jobset_validator().iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))]


# GKE's FQDNNetworkPolicy (networking.gke.io/v1alpha1) has no published CRD: its fields as
# GKE's "Control Pod egress traffic using FQDN network policies" page documents them.
FQDN_POLICY_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "networking.gke.io/v1alpha1"}, "kind": {"const": "FQDNNetworkPolicy"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {"type": "object", "additionalProperties": False, "required": ["podSelector", "egress"], "properties": {
            "podSelector": {"type": "object", "additionalProperties": False, "properties": {
                "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
                "matchExpressions": {"type": "array"}}},
            "egress": {"type": "array", "items": {"type": "object", "additionalProperties": False, "properties": {
                "matches": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False, "minProperties": 1, "maxProperties": 1,
                    "properties": {"name": {"type": "string"}, "pattern": {"type": "string"}}}},
                "ports": {"type": "array", "items": {
                    "type": "object", "additionalProperties": False, "required": ["port"], "properties": {
                        "port": {"type": "integer"}, "endPort": {"type": "integer"},
                        "protocol": {"enum": ["TCP", "UDP", "SCTP"]}}}}}}}}},
    },
}


def validate(obj: dict, version: str) -> None:
    """Strict validation of one rendered object on Kubernetes `version`. A JobSet is checked
    against the JobSet CRD's schema, and each Job it makes against Kubernetes' Job schema; a
    GKE FQDNNetworkPolicy against FQDN_POLICY_SCHEMA."""
    if obj["kind"] == "FQDNNetworkPolicy":
        import jsonschema

        jsonschema.validate(obj, FQDN_POLICY_SCHEMA)
    elif obj["kind"] == "JobSet":
        errors = jobset_errors(obj)
        if errors:
            raise AssertionError(f"JobSet/{obj['metadata']['name']} breaks the JobSet CRD {JOBSET_VERSION}: " + "; ".join(errors[:10]))
        for child in jobset_jobs(obj):
            kubernetes_validate.validate(child, version, strict=True)
    else:
        kubernetes_validate.validate(obj, version, strict=True)


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
