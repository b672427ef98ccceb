"""workload: jobset: both Jobs as the two replicatedJobs of one JobSet (jobset.x-k8s.io/v1alpha2).

The rendered JobSet is validated against the JobSet CRD's own OpenAPI schema, from
kubernetes-sigs/jobset at a pinned release (tests/data/jobset/), with unknown fields
rejected as the API server's strict field validation does; the Jobs it makes are
validated against Kubernetes' Job schema (kubernetes-validate, strict).
"""

from __future__ import annotations

import copy

import helm_python
import pytest

from testkit.chart_values import workloads
from testkit.k8s_support import (
    CHART_DIR,
    CI_VALUES,
    JOBSET_CRD,
    JOBSET_VERSION,
    KUBE_VERSIONS,
    by_kind,
    jobset_errors,
    jobset_jobs,
    load_values,
    render,
    validate,
)

JOBSET_PROFILES = [(p.name, load_values(p)) for p in CI_VALUES if load_values(p).get("workload") == "jobset"]
# Every ci profile as a JobSet too: the jobset profile as it is, the others switched over.
EVERY_PROFILE_AS_JOBSET = [(p.name, {**load_values(p), "workload": "jobset"}) for p in CI_VALUES]
# Those that render as two Jobs too (a multi-host trainer does not: tests/test_chart_hosts.py).
AS_JOBS_TOO = [(n, v) for n, v in EVERY_PROFILE_AS_JOBSET if "jobs" in workloads(v)]


def the_jobset(values: dict) -> dict:
    (jobset,) = by_kind(render(values), "JobSet")
    return jobset


def test_a_jobset_profile_exists_and_the_crd_is_pinned():
    assert [name for name, _ in JOBSET_PROFILES] == ["gke-a3-8gpu-values.yaml", "gke-l4-jobset-values.yaml"]
    head = JOBSET_CRD.read_text()[:600]
    assert f"kubernetes-sigs/jobset {JOBSET_VERSION}" in head and "jobset.x-k8s.io_jobsets.yaml" in head


@pytest.mark.parametrize("values", [v for _, v in EVERY_PROFILE_AS_JOBSET], ids=[n for n, _ in EVERY_PROFILE_AS_JOBSET])
def test_rendered_jobset_validates_against_the_jobset_crd(values):
    jobset = the_jobset(values)
    assert jobset["apiVersion"] == "jobset.x-k8s.io/v1alpha2"
    assert jobset_errors(jobset) == []
    for version in (KUBE_VERSIONS[0], KUBE_VERSIONS[-1]):
        validate(jobset, version)


def test_the_crd_schema_catches_what_the_api_server_would_refuse():
    jobset = the_jobset(JOBSET_PROFILES[0][1])
    bad = copy.deepcopy(jobset)
    bad["spec"]["failurePolicy"]["rules"][0]["action"] = "FailJob"  # a Job action, not a JobSet one
    bad["spec"]["successPolicy"]["operator"] = "Most"
    bad["spec"]["replicatedJobs"][1]["template"]["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1
    errors = "\n".join(jobset_errors(bad))
    assert "spec/failurePolicy/rules/0/action" in errors
    assert "spec/successPolicy/operator" in errors
    assert "'gpus' was unexpected" in errors


def test_done_when_the_trainer_is_done_failed_at_once_on_exit_code_2():
    spec = the_jobset({"workload": "jobset", "jobset": {"maxRestarts": 5}})["spec"]
    assert spec["successPolicy"] == {"operator": "All", "targetReplicatedJobs": ["trainer"]}
    # A Job failed by its podFailurePolicy (FailJob on exit code 2) or past its deadline
    # fails the JobSet; anything else falls through to the default action, restarting the pair.
    assert spec["failurePolicy"]["maxRestarts"] == 5
    rules = spec["failurePolicy"]["rules"]
    assert [(r["action"], r["onJobFailureReasons"]) for r in rules] == [
        ("FailJobSet", ["PodFailurePolicy"]), ("FailJobSet", ["DeadlineExceeded"])]
    assert all("targetReplicatedJobs" not in rule for rule in rules)  # either Job
    assert [r["name"] for r in spec["replicatedJobs"]] == ["generator", "trainer"]
    assert all(r["replicas"] == 1 for r in spec["replicatedJobs"])
    # No headless Service: the Jobs talk only through the bucket.
    assert spec["network"] == {"enableDNSHostnames": False}


@pytest.mark.parametrize("name,values", AS_JOBS_TOO, ids=[n for n, _ in AS_JOBS_TOO])
def test_each_replicated_job_is_the_jobs_workloads_job(name, values):
    as_jobs = {j["metadata"]["labels"]["app.kubernetes.io/component"]: j
               for j in by_kind(render({**values, "workload": "jobs"}), "Job")}
    jobset = the_jobset(values)
    for child in jobset_jobs(jobset):
        component = child["metadata"]["labels"]["app.kubernetes.io/component"]
        job = copy.deepcopy(as_jobs[component])
        # The same pod template, presets, podFailurePolicy and security context; the
        # JobSet's ttlSecondsAfterFinished and suspend (Kueue) replace the Job's.
        job["spec"].pop("ttlSecondsAfterFinished", None)
        assert jobset["spec"].get("suspend") == job["spec"].pop("suspend", None)
        assert child["spec"] == job["spec"], (name, component)
        # Kueue queues the JobSet as one workload: its Jobs must not carry the queue label.
        queue = job["metadata"]["labels"].pop("kueue.x-k8s.io/queue-name", None)
        assert jobset["metadata"]["labels"].get("kueue.x-k8s.io/queue-name") == queue
        assert child["metadata"]["labels"] == job["metadata"]["labels"]
        assert child["metadata"]["annotations"] == job["metadata"]["annotations"]
        assert child["metadata"]["name"] == f"{jobset['metadata']['name']}-{component}-0"
    assert jobset["spec"]["ttlSecondsAfterFinished"] == 604800
    assert not by_kind(render(values), "Job")


def test_jobset_job_names_fit_a_dns_label():
    long = {"workload": "jobset", "fullnameOverride": "x" * 60}
    jobset = the_jobset(long)
    for child in jobset_jobs(jobset):
        assert len(child["metadata"]["name"]) <= 63, child["metadata"]["name"]


def test_jobset_needs_both_components():
    for component in ("generator", "trainer"):
        with pytest.raises(helm_python.HelmError, match="workload: jobset runs both components"):
            render({"workload": "jobset", component: {"enabled": False}})


def test_workload_is_checked():
    with pytest.raises(helm_python.HelmValuesError, match=r"at '/workload'"):
        render({"workload": "deployment"})
    with pytest.raises(helm_python.HelmValuesError, match=r"at '/jobset/maxRestarts'"):
        render({"workload": "jobset", "jobset": {"maxRestarts": -1}})


def test_helm_test_role_reads_jobsets_only_under_jobset():
    def rules(values):
        (role,) = by_kind(render(values), "Role")
        return {(tuple(r["apiGroups"]), tuple(r["resources"])): r["verbs"] for r in role["rules"]}
    jobs = rules({})
    assert (("jobset.x-k8s.io",), ("jobsets",)) not in jobs
    jobset = rules({"workload": "jobset"})
    assert jobset[(("jobset.x-k8s.io",), ("jobsets",))] == ["get", "list", "watch"]
    assert jobset[(("batch",), ("jobs",))] == jobs[(("batch",), ("jobs",))] == ["get", "list", "watch"]


def test_notes_follow_the_jobset():
    from testkit.k8s_support import notes

    text = notes(load_values(CHART_DIR / "ci" / "gke-l4-jobset-values.yaml"))
    assert "logs -f job/ncf-ncf-tandem-trainer-0" in text
    assert "wait --for=condition=Completed --timeout=24h jobset/ncf-ncf-tandem" in text
    assert 'Kueue LocalQueue "ncf"' in text
