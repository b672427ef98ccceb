"""k8s/ (kubectl apply -k) renders the same Jobs and ServiceAccount as the chart.

`kubectl kustomize k8s/` is compared with Helm's rendering of
k8s/chart-values.yaml after dropping what only Helm adds (the helm.sh/chart and
managed-by labels, the release's namespace, the helm test pod's ServiceAccount)
and the run's instance label on the shared ServiceAccount.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from testkit.k8s_support import K8S_DIR, KUBE_VERSIONS, kustomize, load_values, render

HELM_ONLY_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")


def one_place(kustomization: dict) -> dict[str, str]:
    """The per-run settings of kustomization.yaml: its ncf-run literals and image tags."""
    (gen,) = [g for g in kustomization["configMapGenerator"] if g["name"] == "ncf-run"]
    settings = dict(lit.split("=", 1) for lit in gen["literals"])
    for image in kustomization["images"]:
        settings[image["name"]] = f"{image['newName']}:{image['newTag']}"
    return settings


def normalize(objects: list[dict]) -> dict[tuple[str, str], dict]:
    out = {}
    for obj in objects:
        if obj["kind"] not in ("Job", "ServiceAccount"):
            continue
        if obj["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "test":
            continue  # the helm test pod's ServiceAccount: `helm test` has no kubectl counterpart
        obj = copy.deepcopy(obj)
        # Helm names the release's namespace; `kubectl apply -k` uses the current one.
        obj["metadata"].pop("namespace", None)
        labels = obj["metadata"].get("labels", {})
        for key in HELM_ONLY_LABELS:
            labels.pop(key, None)
        if obj["kind"] == "ServiceAccount":
            # Shared by every run (Workload Identity binds its name): no run label.
            labels.pop("app.kubernetes.io/instance", None)
        out[(obj["kind"], obj["metadata"]["name"])] = obj
    return out


def chart_objects_for(settings: dict[str, str], chart_values: dict) -> list[dict]:
    values = copy.deepcopy(chart_values)
    values["fullnameOverride"] = settings["run-name"]
    values["dataDir"] = settings["data-dir"]
    values["serviceAccount"]["gcpServiceAccount"] = settings["gcp-service-account"]
    for component, image_name in (("generator", "ncf-tandem-generator"), ("trainer", "ncf-tandem-trainer")):
        repository, tag = settings[image_name].rsplit(":", 1)
        values[component]["image"].update(repository=repository, tag=tag)
    return render(values, name=settings["run-name"])


def test_kustomization_equals_the_chart():
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    chart_values = load_values(K8S_DIR / "chart-values.yaml")
    settings = one_place(kustomization)
    # chart-values.yaml itself says the same as the kustomization's one place.
    assert chart_values["fullnameOverride"] == settings["run-name"]
    assert chart_values["dataDir"] == settings["data-dir"]
    assert chart_values["serviceAccount"]["gcpServiceAccount"] == settings["gcp-service-account"]

    from_kustomize = normalize(kustomize())
    from_chart = normalize(render(chart_values, name=settings["run-name"]))
    assert sorted(from_kustomize) == sorted(from_chart) == [
        ("Job", f"{settings['run-name']}-generator"),
        ("Job", f"{settings['run-name']}-trainer"),
        ("ServiceAccount", "ncf-tandem"),
    ]
    for key in from_chart:
        assert from_kustomize[key] == from_chart[key], key


def test_kustomize_emits_only_the_jobs_and_service_account():
    kinds = sorted(o["kind"] for o in kustomize())
    # The ncf-run ConfigMap is local-config: a source for replacements only.
    assert kinds == ["Job", "Job", "ServiceAccount"]


def test_editing_the_one_place_changes_the_run(tmp_path: Path):
    work = tmp_path / "k8s"
    shutil.copytree(K8S_DIR, work)
    path = work / "kustomization.yaml"
    kustomization = yaml.safe_load(path.read_text())
    (gen,) = kustomization["configMapGenerator"]
    gen["literals"] = ["run-name=ml1m-try-7", "data-dir=gs://team-bucket/ncf/ml1m-try-7",
                       "gcp-service-account=trainer@team-proj.iam.gserviceaccount.com"]
    kustomization["images"] = [
        {"name": "ncf-tandem-generator", "newName": "europe-docker.pkg.dev/p/r/gen", "newTag": "0.2.0"},
        {"name": "ncf-tandem-trainer", "newName": "europe-docker.pkg.dev/p/r/train", "newTag": "0.2.0-cuda"},
    ]
    path.write_text(yaml.safe_dump(kustomization, sort_keys=False))

    objects = kustomize(work)
    settings = one_place(kustomization)
    from_kustomize = normalize(objects)
    from_chart = normalize(chart_objects_for(settings, load_values(K8S_DIR / "chart-values.yaml")))
    assert sorted(from_kustomize) == sorted(from_chart)
    assert from_kustomize == from_chart
    trainer = from_kustomize[("Job", "ml1m-try-7-trainer")]
    container = trainer["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][0] == "--data-dir=gs://team-bucket/ncf/ml1m-try-7"
    assert container["image"] == "europe-docker.pkg.dev/p/r/train:0.2.0-cuda"
    assert trainer["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/instance"] == "ml1m-try-7"


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_kustomize_output_validates_strictly(version):
    for obj in kustomize():
        kubernetes_validate.validate(obj, version, strict=True)
