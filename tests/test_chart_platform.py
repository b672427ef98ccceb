"""The chart as platform teams run it: Kueue, the helm test pod's RBAC (NetworkPolicies:
test_chart_network.py).

All by rendering with Helm's engine (no cluster); test_chart.py validates every object
strictly against Kubernetes' schemas, test_jobset.py the JobSet against its CRD.
"""

from __future__ import annotations

import pytest

from testkit.k8s_support import (
    CHART_DIR,
    all_pod_specs,
    by_kind,
    job,
    load_values,
    render,
    workload_jobs,
)

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
WORKLOADS = ["jobs", "jobset"]
KIND = load_values(CHART_DIR / "ci" / "kind-values.yaml")


# --- Kueue -----------------------------------------------------------------------------

def test_no_kueue_by_default():
    for workload in WORKLOADS:
        objects = render({"workload": workload})
        for obj in objects:
            assert QUEUE_LABEL not in obj["metadata"]["labels"], obj["metadata"]["name"]
        for j in workload_jobs(objects):
            assert "suspend" not in j["spec"]
        for js in by_kind(objects, "JobSet"):
            assert "suspend" not in js["spec"]


def test_kueue_queues_both_jobs_suspended():
    objects = render({"kueue": {"queueName": "team-a"}})
    for component in ("generator", "trainer"):
        j = job(objects, component)
        assert j["metadata"]["labels"][QUEUE_LABEL] == "team-a"
        assert j["spec"]["suspend"] is True
    # Only the Jobs are Kueue workloads.
    others = [o for o in objects if o["kind"] != "Job" and QUEUE_LABEL in o["metadata"]["labels"]]
    assert not others


def test_kueue_queues_the_jobset_as_one_suspended_workload():
    objects = render({"workload": "jobset", "kueue": {"queueName": "team-a"}})
    (jobset,) = by_kind(objects, "JobSet")
    assert jobset["metadata"]["labels"][QUEUE_LABEL] == "team-a"
    assert jobset["spec"]["suspend"] is True
    for child in workload_jobs(objects):
        # Kueue suspends and admits the JobSet; labelled or suspended Jobs would be
        # queued (or held) a second time on their own.
        assert QUEUE_LABEL not in child["metadata"]["labels"]
        assert "suspend" not in child["spec"]


@pytest.mark.parametrize("workload", WORKLOADS)
def test_what_kueue_admits_on_is_exact(workload):
    values = {"workload": workload, "kueue": {"queueName": "q"},
              "trainer": {"accelerator": {"preset": "nvidia", "nvidia": {"count": 2}}}}
    for name, spec in all_pod_specs(render(values)):
        for c in spec["containers"] + spec.get("initContainers", []):
            requests = {k: v for k, v in c["resources"]["requests"].items() if k != "ephemeral-storage"}
            assert requests == c["resources"]["limits"], (name, c["name"])
    trainer = job(render(values), "trainer")["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert trainer["requests"]["nvidia.com/gpu"] == trainer["limits"]["nvidia.com/gpu"] == 2


def test_queue_name_is_checked():
    import helm_python

    with pytest.raises(helm_python.HelmValuesError, match=r"at '/kueue/queueName'"):
        render({"kueue": {"queueName": "Team A"}})


# --- helm test: its own ServiceAccount, token and Role ---------------------------------

@pytest.mark.parametrize("workload", WORKLOADS)
def test_only_the_test_pod_mounts_a_token_and_it_may_only_read(workload):
    objects = render({**KIND, "workload": workload, "serviceAccount": {"gcpServiceAccount": "runner@proj.iam.gserviceaccount.com"}})
    (pod,) = by_kind(objects, "Pod")
    sa_name = pod["spec"]["serviceAccountName"]
    assert sa_name == "ncf-ncf-tandem-test"
    assert pod["spec"]["automountServiceAccountToken"] is True
    for name, spec in all_pod_specs(objects):
        if name != pod["metadata"]["name"]:
            assert spec["automountServiceAccountToken"] is False, name
            assert spec.get("serviceAccountName") != sa_name, name
    sas = {sa["metadata"]["name"]: sa for sa in by_kind(objects, "ServiceAccount")}
    assert sas[sa_name]["automountServiceAccountToken"] is False  # mounted by the test pod alone
    # It reads the bucket as the Jobs do (Workload Identity).
    assert sas[sa_name]["metadata"]["annotations"] == {"iam.gke.io/gcp-service-account": "runner@proj.iam.gserviceaccount.com"}
    (binding,) = by_kind(objects, "RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa_name, "namespace": "ncf"}]
    (role,) = by_kind(objects, "Role")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
    assert not by_kind(objects, "ClusterRole") and not by_kind(objects, "ClusterRoleBinding")
    for rule in role["rules"]:
        assert rule["verbs"] == ["get", "list", "watch"], rule
        assert "*" not in rule["resources"] and "secrets" not in rule["resources"]
    readable = {(g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    # What runstatus/kube.py lists: Jobs and pods.
    assert {("batch", "jobs"), ("", "pods")} <= readable


def test_without_tests_no_rbac_and_no_token_anywhere():
    objects = render({"tests": {"enabled": False}})
    for kind in ("Pod", "Role", "RoleBinding"):
        assert not by_kind(objects, kind)
    assert [sa["metadata"]["name"] for sa in by_kind(objects, "ServiceAccount")] == ["ncf-ncf-tandem"]
    for name, spec in all_pod_specs(objects):
        assert spec["automountServiceAccountToken"] is False, name


def test_test_service_account_name_and_deadline_are_values():
    objects = render({"tests": {"serviceAccount": {"name": "ncf-checker"}, "timeoutSeconds": 1200}})
    (pod,) = by_kind(objects, "Pod")
    assert pod["spec"]["serviceAccountName"] == "ncf-checker"
    assert pod["spec"]["activeDeadlineSeconds"] == 1200
    (binding,) = by_kind(objects, "RoleBinding")
    assert binding["subjects"][0]["name"] == "ncf-checker"
    assert sorted(sa["metadata"]["name"] for sa in by_kind(objects, "ServiceAccount")) == ["ncf-checker", "ncf-ncf-tandem"]
    # A pre-made one (shared by the namespace's releases) is bound, not created; the Role
    # and RoleBinding stay the release's own.
    premade = render({"tests": {"serviceAccount": {"create": False, "name": "ncf-checker"}}})
    assert [sa["metadata"]["name"] for sa in by_kind(premade, "ServiceAccount")] == ["ncf-ncf-tandem"]
    (binding,) = by_kind(premade, "RoleBinding")
    assert binding["subjects"][0]["name"] == "ncf-checker"
    assert binding["metadata"]["name"] == binding["roleRef"]["name"] == "ncf-ncf-tandem-test"
